// Who may see, resize and release an existing lease, and whether a new size fits.
//
// Invariants:
// - Pure: values in, a decision out. Nothing here changes the ledger: an allowed Resize or
//   Release returns its plan (lease-plan.ts), which says in which order the shell's runner
//   (daemon/shell/lease-transaction.ts) changes the ledger, the journal and the kernel limit.
// - Visibility: a manager or an observer sees every lease; anyone else sees the leases they
//   own and those whose target runs as their uid (a QEMU can look at its own lease).
// - No existence oracle: an id that is unknown, or that names a lease the peer may not see,
//   gets the same NoSuchLease. Only a peer that can see the lease learns why it is refused.
// - No way out: only managers may Resize. A VM's own uid can never raise its limit, not even
//   for a lease it opened itself (it may Release that lease, which keeps its limit and gains it
//   nothing).
// - Release: the lease's owner uid or a manager. It ends the manager's control (a released
//   lease is never resized: PermissionDenied 'lease-released') but never the charge, which
//   lasts until the target exits (ledger.ts); it never changes the target's limit. Releasing a
//   released lease again is allowed and changes nothing (a retried Release). A target that is
//   not the owner may not release a lease a manager opened for it: that would take the lease
//   out of its manager's hands.
// - Per-fd backend: a lease whose FD the broker no longer holds (lost in a restart without
//   systemd's fd store) is never resized (LeaseNotResizable): neither a raise nor a lowering
//   could reach the FD's limit, and changing only the target's RLIMIT_MEMLOCK would make the
//   ledger claim a limit the FD does not have.
// - Resize checks caps on the delta: lowering (or keeping) the size is always allowed, even if
//   the lease is above a cap the operator tightened later; raising checks the per-VM max on the
//   new limit, and per-uid bytes (charged to the lease's owner, not to the manager resizing
//   it) and the budget on the increase.
import { BrokerError } from '../../protocol/errors.ts';
import type { Ledger, LeaseRecord } from './ledger.ts';
import { planRelease, planResize, type ChangePlan, type PlanBackend } from './lease-plan.ts';
import { describePeer, isManager, isObserver, type Peer, type Policy } from './policy.ts';
import { checkBudget, checkOwnerBytes, checkPerVmMax, limitFor } from './quota.ts';

/** An allowed Resize or Release: its plan (plan.before is the lease now, plan.after once done). */
export type LeaseDecision =
  | { readonly ok: true; readonly plan: ChangePlan }
  | { readonly ok: false; readonly error: BrokerError };

export type ResizeDecision = LeaseDecision;
export type ReleaseDecision = LeaseDecision;

/** May this peer see this lease (List, and learning why a Resize/Release is refused)? */
export function mayView(policy: Policy, peer: Peer, lease: LeaseRecord): boolean {
  return isObserver(policy, peer) || lease.ownerUid === peer.uid || lease.targetUid === peer.uid;
}

/** The leases List shows this peer, oldest first. */
export function visibleLeases(policy: Policy, ledger: Ledger, peer: Peer): LeaseRecord[] {
  return ledger.all().filter((lease) => mayView(policy, peer, lease));
}

/** The lease if this peer may see it; otherwise the NoSuchLease it gets for a missing one. */
function findVisible(policy: Policy, ledger: Ledger, peer: Peer, leaseId: string): LeaseRecord | BrokerError {
  const lease = ledger.get(leaseId);
  if (lease === undefined || !mayView(policy, peer, lease)) {
    return new BrokerError('NoSuchLease', { lease: leaseId });
  }
  return lease;
}

/** `backend`/`fdHeld`: the backend in force and whether the broker holds the lease's FD (per-fd only). */
export function decideResize(
  policy: Policy, ledger: Ledger, peer: Peer, leaseId: string, memoryBytes: number, pageSize: number,
  backend: PlanBackend = 'memlock', fdHeld = true,
): ResizeDecision {
  const lease = findVisible(policy, ledger, peer, leaseId);
  if (lease instanceof BrokerError) return { ok: false, error: lease };
  if (!isManager(policy, peer)) {
    return {
      ok: false,
      error: new BrokerError('PermissionDenied', {
        rule: 'resize-managers-only',
        reason: `${describePeer(peer)} is not a manager; only managers may resize lease ${leaseId} ` +
          '(a VM\'s own uid can never change its limit)',
      }),
    };
  }
  if (lease.releasedAt !== undefined) {
    return {
      ok: false,
      error: new BrokerError('PermissionDenied', {
        rule: 'lease-released',
        reason: `lease ${leaseId} was released at ${lease.releasedAt}; it stays charged until pid ${lease.targetPid} ` +
          'exits, but can no longer be resized',
      }),
    };
  }

  if (backend === 'per-fd' && !fdHeld) {
    return {
      ok: false,
      error: new BrokerError('LeaseNotResizable', {
        lease: leaseId,
        reason: `the broker no longer holds lease ${leaseId}'s FD (it restarted without systemd's fd store), so the FD's ` +
          `limit cannot change; the lease stays charged until pid ${lease.targetPid} exits`,
      }),
    };
  }
  const sized = limitFor(policy, memoryBytes, pageSize);
  if ('error' in sized) return { ok: false, error: sized.error };
  const { limitBytes } = sized;
  const delta = limitBytes - lease.limitBytes;

  const denial =
    checkPerVmMax(policy, limitBytes, delta, memoryBytes) ??
    checkOwnerBytes(policy, ledger, lease.ownerUid, delta) ??
    checkBudget(policy, ledger, delta);
  if (denial !== undefined) return { ok: false, error: denial };
  return { ok: true, plan: planResize(lease, { memoryBytes, limitBytes }, backend) };
}

/** `at`: the time the release is recorded with (the core has no clock). */
export function decideRelease(policy: Policy, ledger: Ledger, peer: Peer, leaseId: string, at: string): ReleaseDecision {
  const lease = findVisible(policy, ledger, peer, leaseId);
  if (lease instanceof BrokerError) return { ok: false, error: lease };
  if (lease.ownerUid !== peer.uid && !isManager(policy, peer)) {
    return {
      ok: false,
      error: new BrokerError('PermissionDenied', {
        rule: 'release-owner-or-manager',
        reason: `${describePeer(peer)} is neither the owner (uid ${lease.ownerUid}) of lease ${leaseId} nor a ` +
          'manager; releasing would take the lease out of its owner\'s hands',
      }),
    };
  }
  return { ok: true, plan: planRelease(lease, at) };
}
