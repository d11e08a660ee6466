import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  orderFor, planGrant, planRelease, planResize, planRestore, planTargetExit,
} from '../../../daemon/core/lease-plan.ts';
import { GiB, MiB, lease } from './lease-fixtures.ts';

const AT = '2026-03-03T00:00:00.000Z';

describe('orderFor: the one ordering rule', () => {
  it('journal first unless the limit goes down', () => {
    assert.equal(orderFor(5 * GiB, 9 * GiB), 'journal-first');
    assert.equal(orderFor(5 * GiB, 5 * GiB), 'journal-first');
    assert.equal(orderFor(9 * GiB, 5 * GiB), 'kernel-first');
  });

  it('a change that lets the target pin more is never kernel-first', () => {
    fc.assert(fc.property(fc.nat(), fc.nat(), (before, after) => {
      assert.equal(orderFor(before, after) === 'kernel-first', after < before);
    }));
  });
});

describe('planGrant', () => {
  it('reserves, journals durably, sets the limit (old one back on undo), watches', () => {
    const l = lease({ id: 'l-a' });
    const plan = planGrant(l);
    assert.equal(plan.order, 'journal-first');
    assert.deepEqual(plan.ledger, { kind: 'grant', lease: l });
    assert.deepEqual(plan.journal, { record: { kind: 'grant', lease: l }, durable: 'reply' });
    assert.deepEqual(plan.kernel, { kind: 'set', limitBytes: 5 * GiB, restoreOnUndo: { soft: 8 * MiB, hard: -1 }, fd: false, restoreFdOnUndo: undefined });
    assert.equal(plan.keptFd, undefined);
    assert.equal(plan.watch, 'start');
    assert.deepEqual(plan.undo, { ledger: { kind: 'release', id: 'l-a' }, journal: { kind: 'release', id: 'l-a' } });
    assert.equal(plan.before, undefined);
    assert.equal(plan.after, l);
  });
});

describe('planResize', () => {
  it('a raise: journal first, undo back to the old sizes, nothing to restore in the kernel', () => {
    const l = lease({ id: 'l-a' });
    const plan = planResize(l, { memoryBytes: 8 * GiB, limitBytes: 9 * GiB });
    assert.equal(plan.order, 'journal-first');
    assert.deepEqual(plan.kernel, { kind: 'set', limitBytes: 9 * GiB, restoreOnUndo: undefined, fd: false, restoreFdOnUndo: undefined });
    const from = { memoryBytes: 4 * GiB, limitBytes: 5 * GiB };
    assert.deepEqual(plan.undo, { ledger: { kind: 'resize', id: 'l-a', to: from }, journal: { kind: 'resize', id: 'l-a', to: from } });
    assert.equal(plan.before, l);
    assert.equal(plan.after.limitBytes, 9 * GiB);
    assert.equal(plan.after.memoryBytes, 8 * GiB);
    assert.equal(plan.journal?.durable, 'reply');
  });

  it('a lowering: kernel first and no undo (the kernel already holds the truth)', () => {
    const plan = planResize(lease({ id: 'l-a' }), { memoryBytes: 1 * GiB, limitBytes: 2 * GiB });
    assert.equal(plan.order, 'kernel-first');
    assert.deepEqual(plan.undo, { ledger: undefined, journal: undefined });
    assert.deepEqual(plan.ledger, { kind: 'resize', id: 'l-a', to: { memoryBytes: 1 * GiB, limitBytes: 2 * GiB } });
  });
});

describe('planRelease', () => {
  it('marks released in the ledger and the journal (durable before the reply): no kernel, no watch change', () => {
    // Before the Release was journaled this asserted journal === undefined; a restart then
    // forgot the release (the follow-up of #8).
    const l = lease({ id: 'l-a' });
    const plan = planRelease(l, AT);
    assert.deepEqual(plan.ledger, { kind: 'mark-released', id: 'l-a', at: AT });
    assert.deepEqual(plan.journal, { record: { kind: 'mark-released', id: 'l-a', at: AT }, durable: 'reply' });
    assert.deepEqual(plan.undo, { ledger: undefined, journal: undefined }, 'a released mark only takes control away: no undo');
    assert.equal(plan.order, 'journal-first');
    assert.equal(plan.kernel, undefined);
    assert.equal(plan.watch, undefined);
    assert.equal(plan.after.releasedAt, AT);
    assert.equal(plan.after.limitBytes, l.limitBytes, 'still charged');
  });

  it('releasing a released lease again changes nothing', () => {
    const l = lease({ id: 'l-a', releasedAt: AT });
    const plan = planRelease(l, '2027-01-01T00:00:00.000Z');
    assert.equal(plan.ledger, undefined);
    assert.equal(plan.after, l);
  });
});

describe('planTargetExit', () => {
  it('journals the end (next flush), returns the bytes, stops watching, never touches the kernel', () => {
    const plan = planTargetExit(lease({ id: 'l-a' }));
    assert.deepEqual(plan.ledger, { kind: 'release', id: 'l-a' });
    assert.deepEqual(plan.journal, { record: { kind: 'release', id: 'l-a' }, durable: 'next-flush' });
    assert.equal(plan.kernel, undefined);
    assert.equal(plan.watch, 'stop');
    assert.equal(plan.after, undefined);
  });
});

describe('planRestore', () => {
  it('a live target: re-apply the journaled limit, hold it in the ledger, watch; nothing journaled', () => {
    const l = lease({ id: 'l-a' });
    const plan = planRestore(l, true);
    assert.deepEqual(plan.ledger, { kind: 'grant', lease: l });
    assert.equal(plan.journal, undefined);
    assert.deepEqual(plan.kernel, { kind: 'reapply', limitBytes: 5 * GiB, fd: false });
    assert.equal(plan.watch, 'start');
  });

  it('a gone target: journal the end, nothing else', () => {
    const plan = planRestore(lease({ id: 'l-a' }), false);
    assert.equal(plan.ledger, undefined);
    assert.deepEqual(plan.journal, { record: { kind: 'release', id: 'l-a' }, durable: 'next-flush' });
    assert.equal(plan.kernel, undefined);
    assert.equal(plan.watch, undefined);
  });
});

describe('per-fd backend: the backend\'s steps', () => {
  it('a grant sets the FD\'s limit with the target\'s and keeps the FD', () => {
    const plan = planGrant(lease({ id: 'l-a' }), 'per-fd');
    assert.deepEqual(plan.kernel, {
      kind: 'set', limitBytes: 5 * GiB, restoreOnUndo: { soft: 8 * MiB, hard: -1 }, fd: true, restoreFdOnUndo: undefined,
    });
    assert.equal(plan.keptFd, 'keep');
    assert.equal(plan.watch, 'start');
  });

  it('a resize sets the FD\'s limit both ways, keeps the order rule, and touches no kept FD', () => {
    fc.assert(fc.property(fc.integer({ min: 1, max: 64 }), (gib) => {
      const plan = planResize(lease({ id: 'l-a' }), { memoryBytes: gib * GiB, limitBytes: gib * GiB }, 'per-fd');
      // A raise (or same) puts the FD's old limit back if the target's step fails; a lowering has no undo.
      const restoreFdOnUndo = plan.order === 'journal-first' ? 5 * GiB : undefined;
      assert.deepEqual(plan.kernel, { kind: 'set', limitBytes: gib * GiB, restoreOnUndo: undefined, fd: true, restoreFdOnUndo });
      assert.equal(plan.keptFd, undefined);
      assert.equal(plan.order, orderFor(5 * GiB, gib * GiB));
    }));
  });

  it('a target\'s exit closes the kept FD (a kept one would hold the pinned pages)', () => {
    assert.equal(planTargetExit(lease({ id: 'l-a' }), 'per-fd').keptFd, 'drop');
    assert.equal(planTargetExit(lease({ id: 'l-a' })).keptFd, undefined);
  });

  it('restore: the FD\'s limit is re-applied only when the FD came back; a gone target\'s FD is closed', () => {
    assert.deepEqual(planRestore(lease({ id: 'l-a' }), true, 'per-fd', true).kernel, { kind: 'reapply', limitBytes: 5 * GiB, fd: true });
    assert.deepEqual(planRestore(lease({ id: 'l-a' }), true, 'per-fd', false).kernel, { kind: 'reapply', limitBytes: 5 * GiB, fd: false });
    assert.equal(planRestore(lease({ id: 'l-a' }), true, 'per-fd', true).keptFd, undefined);
    assert.equal(planRestore(lease({ id: 'l-a' }), false, 'per-fd').keptFd, 'drop');
    assert.equal(planRestore(lease({ id: 'l-a' }), false).keptFd, undefined);
  });
});
