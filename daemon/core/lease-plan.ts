// What one change to a lease does, as a value: the plan a decision returns and the shell's
// runner (daemon/shell/lease-transaction.ts) carries out. This is where a lease's order of
// effects is DECIDED; the runner is where it is ENFORCED.
//
// Invariants:
// - Pure: records in, a plan out. No I/O, no clock (times come in), nothing here changes the ledger.
// - A plan names every effect of the change and nothing else: the ledger change, the journal
//   record (and whether the reply waits until it is on disk), the kernel limit to set (and the
//   old limit to put back if a later step fails), whether the target's exit is watched or no
//   longer watched, and the undo of the ledger and journal steps. No flags steer the shell.
// - The order is chosen here, in orderFor, by one rule: a change that lets the target pin more
//   (a grant, a raise) is 'journal-first' (journal and flush before the kernel limit), so the
//   journal on disk never claims less than the kernel enforces; a change that lets it pin less
//   (a lowering) is 'kernel-first' (the kernel before the ledger and the journal), so the
//   ledger and the journal never count less than the target may pin while the change is in
//   flight. Changes that touch no limit are 'journal-first'.
// - A kernel-first plan has no undo: once the kernel holds the lower limit the lowering is
//   true, and a later failure (the journal) only leaves the journal claiming more (safe).
// - The backend's steps are decided here too. On the 'per-fd' backend (the patched kernel's
//   per-FD limit; the simulated device models it) a grant also sets the limit on the lease's FD
//   (before it is handed out) and keeps a duplicate of that FD for later changes ('keep'); a
//   resize and a restore set the FD's limit as well as the target's RLIMIT_MEMLOCK (the FD's
//   first); a target's exit, or a restore that finds the target gone, closes the duplicate
//   ('drop': a kept duplicate would hold the VM's pinned pages after QEMU died). The 'memlock'
//   backend has none of these steps.
// - A plan's `after` is the record as the ledger will hold it once the plan ran (undefined
//   when the lease leaves the ledger), `before` as it holds it now (undefined for a grant).
import type { LeaseRecord, PreviousLimit } from './ledger.ts';

export interface Sizes {
  readonly memoryBytes: number;
  readonly limitBytes: number;
}

export type LedgerChange =
  | { readonly kind: 'grant'; readonly lease: LeaseRecord }
  | { readonly kind: 'resize'; readonly id: string; readonly to: Sizes }
  | { readonly kind: 'mark-released'; readonly id: string; readonly at: string }
  | { readonly kind: 'release'; readonly id: string };

export type JournalRecord =
  | { readonly kind: 'grant'; readonly lease: LeaseRecord }
  | { readonly kind: 'resize'; readonly id: string; readonly to: Sizes }
  | { readonly kind: 'mark-released'; readonly id: string; readonly at: string }
  | { readonly kind: 'release'; readonly id: string };

/** 'reply': the reply waits until the record is on disk; 'next-flush': it becomes durable with the next one. */
export type Durability = 'reply' | 'next-flush';

/** Which mechanism a plan acts on (see the module comment). */
export type PlanBackend = 'per-fd' | 'memlock';

export type KernelChange =
  /**
   * Set the limit (`fd`: on the lease's FD first, then the target's RLIMIT_MEMLOCK); if a later
   * step fails, put `restoreOnUndo` back on the target (undefined: nothing to put back) and
   * `restoreFdOnUndo` on the FD (a raise whose RLIMIT_MEMLOCK step fails after the FD's was
   * raised: the FD must not keep more than the journal will claim).
   */
  | {
    readonly kind: 'set'; readonly limitBytes: number; readonly restoreOnUndo: PreviousLimit | undefined; readonly fd: boolean;
    readonly restoreFdOnUndo: number | undefined;
  }
  /** Restore after a restart: make the kernel agree with the journal; a failure is logged and the lease kept. */
  | { readonly kind: 'reapply'; readonly limitBytes: number; readonly fd: boolean };

export type EffectOrder = 'journal-first' | 'kernel-first';

export interface LeasePlan {
  readonly id: string;
  readonly order: EffectOrder;
  readonly ledger: LedgerChange | undefined;
  readonly journal: { readonly record: JournalRecord; readonly durable: Durability } | undefined;
  readonly kernel: KernelChange | undefined;
  /** 'start': watch the target's exit (the lease's pidfd goes to the watch); 'stop': forget it. */
  readonly watch: 'start' | 'stop' | undefined;
  /** 'keep': the lease's FD duplicate goes to the table of kept FDs; 'drop': it is closed (per-fd backend). */
  readonly keptFd: 'keep' | 'drop' | undefined;
  readonly undo: { readonly ledger: LedgerChange | undefined; readonly journal: JournalRecord | undefined };
  readonly before: LeaseRecord | undefined;
  readonly after: LeaseRecord | undefined;
}

/** A plan that changes an existing lease and keeps it (resize, release). */
export type ChangePlan = LeasePlan & { readonly before: LeaseRecord; readonly after: LeaseRecord };

const NO_UNDO = Object.freeze({ ledger: undefined, journal: undefined });

/** THE ordering rule (see the module comment): more pinnable -> journal first; less -> kernel first. */
export function orderFor(beforeLimitBytes: number, afterLimitBytes: number): EffectOrder {
  return afterLimitBytes < beforeLimitBytes ? 'kernel-first' : 'journal-first';
}

/** A granted Open: reserve, journal, flush, set the limit (restoring the old one on failure), watch. */
export function planGrant(lease: LeaseRecord, backend: PlanBackend = 'memlock'): LeasePlan {
  const perFd = backend === 'per-fd';
  return {
    id: lease.id, order: 'journal-first',
    ledger: { kind: 'grant', lease },
    journal: { record: { kind: 'grant', lease }, durable: 'reply' },
    // The FD is new and is closed, never handed out, if the grant fails: no FD limit to restore.
    kernel: { kind: 'set', limitBytes: lease.limitBytes, restoreOnUndo: lease.previousLimit, fd: perFd, restoreFdOnUndo: undefined },
    watch: 'start', keptFd: perFd ? 'keep' : undefined,
    undo: { ledger: { kind: 'release', id: lease.id }, journal: { kind: 'release', id: lease.id } },
    before: undefined, after: lease,
  };
}

/** A decided Resize: a raise is journaled and flushed before the kernel, a lowering after. */
export function planResize(lease: LeaseRecord, to: Sizes, backend: PlanBackend = 'memlock'): ChangePlan {
  const order = orderFor(lease.limitBytes, to.limitBytes);
  const from: Sizes = { memoryBytes: lease.memoryBytes, limitBytes: lease.limitBytes };
  return {
    id: lease.id, order,
    ledger: { kind: 'resize', id: lease.id, to },
    journal: { record: { kind: 'resize', id: lease.id, to }, durable: 'reply' },
    // A raise sets the kernel last, so nothing after it can fail and need the target's old limit
    // back; but on per-fd the FD's limit is set before the target's, which may still fail.
    kernel: {
      kind: 'set', limitBytes: to.limitBytes, restoreOnUndo: undefined, fd: backend === 'per-fd',
      restoreFdOnUndo: backend === 'per-fd' && order === 'journal-first' ? lease.limitBytes : undefined,
    },
    watch: undefined, keptFd: undefined,
    undo: order === 'kernel-first'
      ? NO_UNDO
      : { ledger: { kind: 'resize', id: lease.id, to: from }, journal: { kind: 'resize', id: lease.id, to: from } },
    before: lease, after: { ...lease, ...to },
  };
}

/**
 * A decided Release: marked released in the ledger and journaled (the reply waits for it), so
 * a restart keeps it released (no Resize, same releasedAt). No kernel change: the target keeps
 * its FD and may still pin up to its limit. No undo: a released mark only takes control away
 * (the safe side), so if the flush fails it stays, and the journal's recovery writes it.
 * Releasing a released lease again changes nothing.
 */
export function planRelease(lease: LeaseRecord, at: string): ChangePlan {
  if (lease.releasedAt !== undefined) {
    return {
      id: lease.id, order: 'journal-first', ledger: undefined, journal: undefined, kernel: undefined, watch: undefined,
      keptFd: undefined, undo: NO_UNDO, before: lease, after: lease,
    };
  }
  return {
    id: lease.id, order: 'journal-first',
    ledger: { kind: 'mark-released', id: lease.id, at },
    journal: { record: { kind: 'mark-released', id: lease.id, at }, durable: 'reply' },
    kernel: undefined, watch: undefined, keptFd: undefined, undo: NO_UNDO,
    before: lease, after: { ...lease, releasedAt: at },
  };
}

/** The target exited: journal the end (durable with the next flush), return the bytes, stop watching, close the kept FD. */
export function planTargetExit(lease: LeaseRecord, backend: PlanBackend = 'memlock'): LeasePlan {
  return {
    id: lease.id, order: 'journal-first',
    ledger: { kind: 'release', id: lease.id },
    journal: { record: { kind: 'release', id: lease.id }, durable: 'next-flush' },
    kernel: undefined, watch: 'stop', keptFd: backend === 'per-fd' ? 'drop' : undefined, undo: NO_UNDO,
    before: lease, after: undefined,
  };
}

/**
 * A journaled lease at start-up. A live target is re-adopted: the kernel is made to agree with
 * the journal (a crash may have come between a journaled raise and its prlimit), the ledger
 * holds it again, its exit is watched; nothing is journaled (it already is). A lease whose
 * target is gone, or that was granted in an earlier boot, is journaled as ended. On the per-fd
 * backend `fdHeld` says whether the lease's FD came back (systemd's fd store): if so its limit is
 * re-applied too; if not the lease is kept but cannot be resized (lease-decisions.ts). A gone
 * target's FD, if it came back, is closed.
 */
export function planRestore(lease: LeaseRecord, targetLives: boolean, backend: PlanBackend = 'memlock', fdHeld = false): LeasePlan {
  const perFd = backend === 'per-fd';
  if (!targetLives) {
    return {
      id: lease.id, order: 'journal-first', ledger: undefined,
      journal: { record: { kind: 'release', id: lease.id }, durable: 'next-flush' },
      kernel: undefined, watch: undefined, keptFd: perFd ? 'drop' : undefined, undo: NO_UNDO, before: undefined, after: undefined,
    };
  }
  return {
    id: lease.id, order: 'journal-first',
    ledger: { kind: 'grant', lease }, journal: undefined,
    kernel: { kind: 'reapply', limitBytes: lease.limitBytes, fd: perFd && fdHeld },
    watch: 'start', keptFd: undefined, undo: { ledger: { kind: 'release', id: lease.id }, journal: undefined },
    before: undefined, after: lease,
  };
}
