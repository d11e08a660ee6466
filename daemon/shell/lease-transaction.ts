// The one runner that carries out a lease plan (daemon/core/lease-plan.ts): Open, Resize,
// Release, a target's exit and restore all change a lease through runPlan, and nothing else
// changes the ledger, the journal or a target's limit for a lease. This is where a lease's
// order of effects is ENFORCED; lease-plan.ts is where it is decided.
//
// THE ORDERING RULE (the broker's crash-safety promise, enforced by STEPS below):
//   journal-first (a grant, a raise, anything that touches no limit):
//       reserve -> journal -> flush -> apply -> watch -> fd
//   kernel-first (a lowering):
//       apply -> reserve -> journal -> flush -> watch -> fd
// so the journal on disk never claims less than the kernel enforces (nothing is raised before
// its record is durable; a crash in between leaves the journal claiming more, which restore
// re-applies), and the ledger never counts less than a live target may pin (a grant or a raise
// is reserved before the kernel allows it; a lowering is counted only once the kernel holds it).
//
// Invariants:
// - Steps run in STEPS[plan.order]; a step the plan has nothing for is skipped. Everything up
//   to the first flush the reply waits for runs synchronously, so a reservation is made in the
//   same tick as the decision that allowed it (two calls never both pass a budget check for the
//   same bytes). A plan with no awaited flush runs wholly synchronously and returns undefined.
// - Each step that succeeded registers its undo; when a later step fails, the undos run in
//   reverse and the failure is rethrown. Undo of a reservation: plan.undo.ledger; of a journal
//   record: plan.undo.journal (a failure to write it is logged, not thrown: the journal then
//   keeps claiming the larger, safe value); of a kernel limit: restoreOnUndo, and for the FD's
//   limit restoreFdOnUndo (a raise's FD limit, set before a target limit that then failed; a
//   grant's FD needs none: it is closed by the caller, never handed out). Flush,
//   watch and fd are last or have nothing to undo; 'fd' (keep or drop the lease's FD duplicate)
//   cannot fail. A kernel-first plan's undo is empty (lease-plan.ts).
// - 'apply' with kernel.fd sets the FD's limit before the target's RLIMIT_MEMLOCK.
// - A 'reapply' kernel change (restore) never fails the plan: the failure is logged and the
//   lease kept, as journaled.
// - The runner holds no state and owns no fd; the effects (the ledger, the journal, the
//   target's limit, the exit watch) are injected, so a model test drives it without a kernel.
import type { Ledger, PreviousLimit } from '../core/ledger.ts';
import type { EffectOrder, JournalRecord, LeasePlan, LedgerChange } from '../core/lease-plan.ts';

export type Step = 'reserve' | 'journal' | 'flush' | 'apply' | 'watch' | 'fd';

/** The ordering rule above, as the runner carries it out. */
export const STEPS: Readonly<Record<EffectOrder, readonly Step[]>> = Object.freeze({
  'journal-first': Object.freeze(['reserve', 'journal', 'flush', 'apply', 'watch', 'fd'] as const),
  'kernel-first': Object.freeze(['apply', 'reserve', 'journal', 'flush', 'watch', 'fd'] as const),
});

/** What a plan acts on, for one lease's target. */
export interface PlanEffects {
  readonly ledger: Ledger;
  readonly journal: { write(record: JournalRecord): void; flush(): Promise<void> };
  /** setFd: the limit on the lease's FD (per-fd backend); set: the target's RLIMIT_MEMLOCK. */
  readonly kernel: { setFd(limitBytes: number): void; set(limitBytes: number): void; restore(previous: PreviousLimit): void };
  readonly watch: { start(): void; stop(): void };
  /** keep: the table of kept FDs takes the lease's FD duplicate; drop: closes it (and the fd store forgets it). */
  readonly fd: { keep(): void; drop(): void };
  /** A failure that does not fail the plan (a journal undo, a restore's re-apply). */
  warn(err: unknown, what: string): void;
}

/** Carries out the plan in its order; see the module comment. */
export function runPlan(plan: LeasePlan, fx: PlanEffects): Promise<void> | undefined {
  return runSteps(plan, fx, STEPS[plan.order]);
}

/**
 * Carries out the plan in the given step order. Exported for the model test, which shows that
 * a wrong order breaks the promise; the daemon only calls runPlan.
 */
export function runSteps(plan: LeasePlan, fx: PlanEffects, steps: readonly Step[]): Promise<void> | undefined {
  const undos: (() => void)[] = [];
  const fail = (err: unknown): never => {
    for (const undo of undos.reverse()) undo();
    throw err;
  };
  const from = (i: number): Promise<void> | undefined => {
    for (let at = i; at < steps.length; at++) {
      const step = steps[at];
      try {
        if (step === 'flush' && plan.journal?.durable === 'reply') {
          return fx.journal.flush().then(() => from(at + 1), fail);
        }
        if (step !== undefined && step !== 'flush') doStep(step, plan, fx, undos);
      } catch (err) {
        return fail(err);
      }
    }
    return undefined;
  };
  return from(0);
}

function doStep(step: Exclude<Step, 'flush'>, plan: LeasePlan, fx: PlanEffects, undos: (() => void)[]): void {
  switch (step) {
    case 'reserve': {
      if (plan.ledger === undefined) return;
      commit(fx.ledger, plan.ledger);
      const undo = plan.undo.ledger;
      if (undo !== undefined) undos.push(() => commit(fx.ledger, undo));
      return;
    }
    case 'journal': {
      if (plan.journal === undefined) return;
      fx.journal.write(plan.journal.record);
      const undo = plan.undo.journal;
      if (undo !== undefined) {
        undos.push(() => {
          try {
            fx.journal.write(undo);
          } catch (err) {
            fx.warn(err, 'could not journal the undo of a failed change; the journal keeps claiming the larger limit');
          }
        });
      }
      return;
    }
    case 'apply': {
      const k = plan.kernel;
      if (k === undefined) return;
      if (k.kind === 'reapply') {
        if (k.fd) {
          try {
            fx.kernel.setFd(k.limitBytes);
          } catch (err) {
            fx.warn(err, 'could not re-apply the journaled limit on the lease\'s FD; keeping the lease');
          }
        }
        try {
          fx.kernel.set(k.limitBytes);
        } catch (err) {
          fx.warn(err, 'could not re-apply the journaled limit; keeping the lease');
        }
        return;
      }
      if (k.fd) {
        fx.kernel.setFd(k.limitBytes);
        const previousFd = k.restoreFdOnUndo;
        if (previousFd !== undefined) undos.push(() => fx.kernel.setFd(previousFd));
      }
      fx.kernel.set(k.limitBytes);
      const previous = k.restoreOnUndo;
      if (previous !== undefined) undos.push(() => fx.kernel.restore(previous));
      return;
    }
    case 'watch':
      if (plan.watch === 'start') fx.watch.start();
      else if (plan.watch === 'stop') fx.watch.stop();
      return;
    case 'fd':
      if (plan.keptFd === 'keep') fx.fd.keep();
      else if (plan.keptFd === 'drop') fx.fd.drop();
      return;
  }
}

function commit(ledger: Ledger, change: LedgerChange): void {
  switch (change.kind) {
    case 'grant': ledger.grant(change.lease); return;
    case 'resize': ledger.resize(change.id, change.to.memoryBytes, change.to.limitBytes); return;
    case 'mark-released': ledger.markReleased(change.id, change.at); return;
    case 'release': ledger.release(change.id); return;
  }
}
