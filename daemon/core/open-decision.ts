// Whether an Open may be granted, and with which limit. The shell gathers the facts (peer
// credentials, whether the caller's process still lives and is the target — judged from pidfds,
// never pids —, the target's pid, uid and capabilities, the page size), asks decideOpen, and
// only on ok:true builds the lease record (ownerUid = request.peer.uid, limitBytes = the decided
// limit) and runs planGrant's plan (lease-plan.ts): reserve in the ledger in the same
// synchronous step as this decision, then journal, flush, set RLIMIT_MEMLOCK, watch the target.
//
// Invariants:
// - Pure: values in, a decision out. Nothing here changes the ledger.
// - Rules run in this fixed order and the first that fails is the answer, so a caller always
//   learns the most fundamental reason first:
//     1. open-users        PermissionDenied       the peer may not Open at all
//     2. target-not-self   PermissionDenied       a non-manager names a process other than itself
//        caller-exited     PermissionDenied       ... or its own process (pidfd taken at accept) exited
//     3. CAP_IPC_LOCK      TargetBypassesAccounting (unless policy.allowTargetsWithIpcLock)
//    3b. NoNewPrivs        TargetBypassesAccounting, set 'exec' (if policy.requireTargetNoNewPrivs)
//     4. requestId         DuplicateRequest       same owner uid, same requestId, live lease
//     5. one lease per pid TargetAlreadyLeased
//     6. VFIO devices      PermissionDenied 'device-not-allowed'  (device-decision.ts)
//     7. VFIO devices      DeviceBusy             another lease holds one
//     8. representable     LimitExceeded 'limit-representable'
//     9. per-VM max        LimitExceeded 'per-vm-max'
//    10. per-uid leases    LimitExceeded 'per-uid-leases'   (charged to the owner = peer uid)
//    11. per-uid bytes     LimitExceeded 'per-uid-bytes'
//    12. budget            BudgetExceeded
// - A granted Open always fits every cap and the budget at the moment of the decision, so as
//   long as the shell commits decisions in order, usedBytes never exceeds budgetBytes through
//   an Open.
import { BrokerError } from '../../protocol/errors.ts';
import { checkDevices } from './device-decision.ts';
import type { Ledger } from './ledger.ts';
import { describePeer, isManager, mayOpen, type Peer, type Policy } from './policy.ts';
import { checkBudget, checkOwnerBytes, checkOwnerLeaseCount, checkPerVmMax, limitFor } from './quota.ts';

export interface OpenRequest {
  readonly peer: Peer;
  /** The process whose RLIMIT_MEMLOCK will be set: the peer itself, or the pidfd's process. */
  readonly targetPid: number;
  /**
   * The process that connected (its pidfd, taken at accept) is still alive. When it is not, its
   * pid may already name someone else, and whoever holds the connection now is not that process.
   */
  readonly peerAlive: boolean;
  /**
   * The target is the caller's own process: the peer's pidfd and the target's are both alive and
   * name the same process, checked by the shell right before the decision. Never from pids alone.
   */
  readonly targetIsPeer: boolean;
  /** The target's real uid. */
  readonly targetUid: number;
  /**
   * The set from which the target holds or may gain CAP_IPC_LOCK in the initial user namespace
   * (effective, permitted, ambient, inheritable: see daemon/shell/target/caps.ts), or undefined.
   * iommufd never charges a mapping made with it.
   */
  readonly targetIpcLockSet: string | undefined;
  /** Whether the target has NoNewPrivs set, or (outside the initial user namespace) need not. */
  readonly targetNoNewPrivs: boolean;
  readonly name: string;
  readonly memoryBytes: number;
  readonly requestId?: string | undefined;
  /** VFIO devices asked for: canonical PCI addresses, distinct (absent or empty: none). */
  readonly devices?: readonly string[] | undefined;
  /** The machine's page size (a power of two); the limit is rounded up to it. */
  readonly pageSize: number;
}

export type OpenDecision =
  | { readonly ok: true; readonly limitBytes: number }
  | { readonly ok: false; readonly error: BrokerError };

function deny(error: BrokerError): OpenDecision {
  return { ok: false, error };
}

/** The refusal for a caller whose own process has exited (see OpenRequest.peerAlive). */
export function callerExited(peer: Peer): BrokerError<'PermissionDenied'> {
  return new BrokerError('PermissionDenied', {
    rule: 'caller-exited',
    reason: `the process that opened this connection (${describePeer(peer)}) has exited; whoever holds the ` +
      'connection now is not that process, so it cannot Open for "itself": connect from the process to be limited',
  });
}

export function decideOpen(policy: Policy, ledger: Ledger, request: OpenRequest): OpenDecision {
  const { peer, targetPid } = request;
  const manager = isManager(policy, peer);

  if (!mayOpen(policy, peer)) {
    return deny(new BrokerError('PermissionDenied', {
      rule: 'open-users',
      reason: `${describePeer(peer)} is not among the policy's open users or open groups, and is not a manager`,
    }));
  }
  if (!request.targetIsPeer && !manager) {
    if (!request.peerAlive) return deny(callerExited(peer));
    return deny(new BrokerError('PermissionDenied', {
      rule: 'target-not-self',
      reason: `${describePeer(peer)} is not a manager, so it may Open only for itself, not for pid ${targetPid}`,
    }));
  }
  const set = request.targetIpcLockSet;
  if (set !== undefined && !policy.allowTargetsWithIpcLock) {
    return deny(new BrokerError('TargetBypassesAccounting', {
      pid: targetPid,
      capability: 'CAP_IPC_LOCK',
      set,
      reason: `pid ${targetPid} has CAP_IPC_LOCK in its ${set} capability set (${set === 'effective' ? 'it holds it' : 'it can gain it'}), ` +
        'and iommufd never charges its pinned pages while it holds it, so a memlock limit would not bind; the policy ' +
        'refuses such targets (allowTargetsWithIpcLock is false)',
    }));
  }
  if (policy.requireTargetNoNewPrivs && !request.targetNoNewPrivs) {
    return deny(new BrokerError('TargetBypassesAccounting', {
      pid: targetPid,
      capability: 'CAP_IPC_LOCK',
      set: 'exec',
      reason: `pid ${targetPid} does not have NoNewPrivs set, so a later exec of a setuid-root or file-capability ` +
        'program could give it CAP_IPC_LOCK; the policy requires NoNewPrivs of targets (requireNoNewPrivs is true)',
    }));
  }
  // A retried Open (same owner, same requestId) is recognised before "target already leased",
  // which a retry for the same target would otherwise hit first.
  if (request.requestId !== undefined) {
    const same = ledger.byRequestId(peer.uid, request.requestId);
    if (same !== undefined) {
      return deny(new BrokerError('DuplicateRequest', { requestId: request.requestId, lease: same.id }));
    }
  }
  const existing = ledger.byTargetPid(targetPid);
  if (existing !== undefined) {
    return deny(new BrokerError('TargetAlreadyLeased', { pid: targetPid, lease: existing.id }));
  }
  const devices = checkDevices(policy, ledger, { peer, manager, name: request.name, addresses: request.devices ?? [] });
  if (devices !== undefined) return deny(devices);

  const sized = limitFor(policy, request.memoryBytes, request.pageSize);
  if ('error' in sized) return deny(sized.error);
  const { limitBytes } = sized;

  const denial =
    checkPerVmMax(policy, limitBytes, limitBytes, request.memoryBytes) ??
    checkOwnerLeaseCount(policy, ledger, peer.uid) ??
    checkOwnerBytes(policy, ledger, peer.uid, limitBytes) ??
    checkBudget(policy, ledger, limitBytes);
  return denial === undefined ? { ok: true, limitBytes } : deny(denial);
}
