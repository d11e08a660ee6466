// The effects a lease plan acts on (lease-transaction.ts PlanEffects), bound to one lease: its
// ledger entry, its journal records, its target's limit or its kept FD's, its exit watch.
//
// Invariants:
// - `target` is the process whose limit a plan sets and whose exit it watches (owner of its
//   pidfd: the caller until watch.start, then TargetWatch); a plan that touches a target it was
//   not given is a bug and throws before any effect.
// - `pendingFd` is a grant's FD duplicate, owned by the caller until fd.keep hands it to
//   LeaseFds; every other plan acts on the FD LeaseFds holds. Setting an FD limit without a kept
//   FD (or without the device's fdLimits) is a bug and throws.
import type { Ledger } from '../core/ledger.ts';
import type { JournalRecord } from '../core/lease-plan.ts';
import type { LeaseJournal } from './journal/journal.ts';
import { durable } from './journal/guard.ts';
import type { LeaseFds } from './lease-fds.ts';
import type { PlanEffects } from './lease-transaction.ts';
import type { ServiceDeps } from './service.ts';
import { applyLimit, restoreLimit, type Target } from './target/target.ts';
import type { TargetWatch } from './target/watch.ts';

/** What leaseEffects binds. */
export interface EffectsFor {
  id: string;
  target: Target | undefined;
  pendingFd: number | undefined;
  deps: ServiceDeps;
  ledger: Ledger;
  fds: LeaseFds;
  targets: TargetWatch;
}

/** The effects of lease `id`'s plans. */
export function leaseEffects({ id, target, pendingFd, deps, ledger, fds, targets }: EffectsFor): PlanEffects {
  const { journal, haveSysResource, log, device } = deps;
  const mustTarget = (): Target => {
    if (target === undefined) throw new Error(`lease ${id}: a plan touched a target the service did not give it (a bug)`);
    return target;
  };
  const mustFd = (): number => {
    const fd = pendingFd ?? fds.get(id);
    if (fd === undefined || device.fdLimits === undefined) throw new Error(`lease ${id}: a plan set an FD limit on no kept FD (a bug)`);
    return fd;
  };
  return {
    ledger: ledger,
    journal: { write: (record) => writeRecord(journal, record), flush: () => durable(journal) },
    kernel: {
      setFd: (limitBytes) => device.fdLimits?.set(mustFd(), limitBytes),
      set: (limitBytes) => applyLimit(mustTarget(), limitBytes, haveSysResource),
      restore: (previous) => restoreLimit(mustTarget(), previous),
    },
    watch: { start: () => targets.watch(id, mustTarget()), stop: () => targets.forget(id) },
    fd: { keep: () => fds.keep(id, mustFd()), drop: () => fds.drop(id) },
    warn: (err, what) => log.warn({ err, lease: id }, what),
  };
}

function writeRecord(journal: LeaseJournal, record: JournalRecord): void {
  switch (record.kind) {
    case 'grant': journal.recordGrant(record.lease); return;
    case 'resize': journal.recordResize(record.id, record.to.memoryBytes, record.to.limitBytes); return;
    case 'mark-released': journal.recordReleased(record.id, record.at); return;
    case 'release': journal.recordRelease(record.id); return;
  }
}
