// Re-adopting the journaled leases when the broker starts (BrokerService.restore).
//
// Invariants:
// - The leases it will re-adopt are validated first (journal/guard.ts checkRestorable); if they
//   are refused (RestoreRefused), no limit, lease or fd is touched and every stored fd is closed.
// - Each journaled lease's plan (core/lease-plan.ts planRestore) runs through runPlan
//   (lease-transaction.ts), synchronously (no flush is awaited): re-adopted if its target still
//   lives (same pid and start time), dropped and journaled if it is gone or was granted in
//   another boot. Caps are not checked: replay must accept leases over caps tightened since.
// - fd ownership: the fds systemd's fd store gave back (by name, lease-<id>) belong to
//   restoreLeases until each is adopted by its live journaled lease on the per-fd backend
//   (LeaseFds owns it from then on; a gone target's plan drops it at once) or closed here (and
//   removed from the store when the name is one of ours). A per-fd lease whose fd did not come
//   back is kept but cannot be resized (Status.backend.notResizable).
import type { LeaseRecord } from '../core/ledger.ts';
import { planRestore, type PlanBackend } from '../core/lease-plan.ts';
import { closeFd } from '../../native/sys.ts';
import { checkRestorable } from './journal/guard.ts';
import { fdStoreName, leaseIdOfStoreName, type LeaseFds } from './lease-fds.ts';
import { auditLease } from './lease-audit.ts';
import { runPlan, type PlanEffects } from './lease-transaction.ts';
import type { ServiceDeps } from './service.ts';
import { reacquireTarget, type Target } from './target/target.ts';

/** What restoreLeases acts on: the service's parts, and its effects of one lease's plans. */
export interface RestoreScope {
  readonly deps: ServiceDeps;
  readonly fds: LeaseFds;
  readonly backend: PlanBackend;
  effects(id: string, target: Target | undefined): PlanEffects;
}

/** What a restore did, for the start-up log. */
export interface RestoreCounts { adopted: number; dropped: number; fdsTakenBack: number; fdsClosed: number }

/**
 * Re-adopts journaled leases whose targets still live; drops (and journals) the rest and
 * those granted in another boot. Throws RestoreRefused, touching nothing, if the ledger
 * refuses the leases it would re-adopt.
 */
export function restoreLeases(
  scope: RestoreScope, journaled: readonly LeaseRecord[], earlierBoot: ReadonlySet<string>, stored: ReadonlyMap<string, number>,
): RestoreCounts {
  // Caps are not checked: replay must accept leases over caps tightened since.
  const unclaimed = new Map(stored); // owner of these fds: restoreLeases, until adopted or closed below
  try {
    checkRestorable(scope.deps.journal.file, journaled.filter((r) => !earlierBoot.has(r.id)));
  } catch (err) {
    for (const fd of unclaimed.values()) closeFd(fd);
    throw err;
  }
  let adopted = 0;
  let dropped = 0;
  let fdsTakenBack = 0;
  for (const record of journaled) {
    const target = earlierBoot.has(record.id) ? undefined : reacquireTarget(record.targetPid, record.targetStartTime);
    const name = fdStoreName(record.id);
    const fd = scope.backend === 'per-fd' ? unclaimed.get(name) : undefined;
    if (fd !== undefined) {
      unclaimed.delete(name);
      scope.fds.adopt(record.id, fd); // a gone target's plan drops (closes) it at once
      if (target !== undefined) fdsTakenBack++;
    }
    // No flush is awaited in a restore plan: runPlan runs it synchronously.
    void runPlan(planRestore(record, target !== undefined, scope.backend, fd !== undefined), scope.effects(record.id, target));
    if (target === undefined) {
      auditLease(scope.deps.log, 'release', undefined, record, {
        reason: earlierBoot.has(record.id) ? 'granted in an earlier boot' : 'target exited while the broker was down',
      });
      dropped++;
    } else {
      adopted++;
    }
  }
  // Stored fds no live lease claims (a lease that ended while the broker was down, or a
  // backend without kept fds): closed, and the store forgets them.
  for (const [name, fd] of unclaimed) {
    closeFd(fd);
    if (leaseIdOfStoreName(name) !== undefined) scope.deps.fdStore?.remove(name);
  }
  return { adopted, dropped, fdsTakenBack, fdsClosed: unclaimed.size };
}
