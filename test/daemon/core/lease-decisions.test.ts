import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BrokerError, brokerErrorParameters, type BrokerErrorName } from '../../../protocol/errors.ts';
import { Ledger } from '../../../daemon/core/ledger.ts';
import {
  decideRelease, decideResize, mayView, visibleLeases, type ReleaseDecision, type ResizeDecision,
} from '../../../daemon/core/lease-decisions.ts';
import { GiB, PAGE, lease, peer, policy } from './lease-fixtures.ts';

const root = peer(0);
const alice = peer(1000);
const bob = peer(1001);
const qemu = peer(107);
const AT = '2026-02-02T00:00:00.000Z';
const libvirtGroup = 64055;
const manager = peer(2000, 50, 2000, [libvirtGroup]);

/** Ledger: l-self (alice for herself), l-managed (root for a uid-107 QEMU), l-bob (bob for himself). */
function sample(): Ledger {
  return Ledger.replay([
    lease({ id: 'l-self', targetPid: alice.pid, targetUid: 1000, ownerUid: 1000, memoryBytes: 4 * GiB, limitBytes: 5 * GiB }),
    lease({ id: 'l-managed', targetPid: 700, targetUid: 107, ownerUid: 0, memoryBytes: 8 * GiB, limitBytes: 9 * GiB }),
    lease({ id: 'l-bob', targetPid: bob.pid, targetUid: 1001, ownerUid: 1001, memoryBytes: GiB, limitBytes: 2 * GiB }),
  ]);
}

function denied(decision: ResizeDecision | ReleaseDecision, name: BrokerErrorName): Record<string, unknown> {
  assert.equal(decision.ok, false, `expected ${name}, got ok`);
  if (decision.ok) return {};
  assert.ok(decision.error instanceof BrokerError);
  assert.equal(decision.error.errorName, name, decision.error.message);
  brokerErrorParameters[name].parse(decision.error.parameters);
  return decision.error.parameters;
}

describe('visibleLeases / mayView', () => {
  it('shows managers (by uid or by group) every lease', () => {
    const p = policy({ managerGroups: [libvirtGroup] });
    assert.deepEqual(visibleLeases(p, sample(), root).map((l) => l.id), ['l-self', 'l-managed', 'l-bob']);
    assert.deepEqual(visibleLeases(p, sample(), manager).map((l) => l.id), ['l-self', 'l-managed', 'l-bob']);
  });

  it('shows observers every lease, and lets them change none', () => {
    const p = policy({ observerUsers: [alice.uid] });
    assert.deepEqual(visibleLeases(p, sample(), alice).map((l) => l.id), ['l-self', 'l-managed', 'l-bob']);
    denied(decideResize(p, sample(), alice, 'l-bob', GiB / 2, PAGE), 'PermissionDenied');
    denied(decideRelease(p, sample(), alice, 'l-managed', AT), 'PermissionDenied');
  });

  it('shows others what they own and what targets their uid', () => {
    const p = policy();
    assert.deepEqual(visibleLeases(p, sample(), alice).map((l) => l.id), ['l-self']);
    assert.deepEqual(visibleLeases(p, sample(), qemu).map((l) => l.id), ['l-managed']);
    assert.deepEqual(visibleLeases(p, sample(), peer(5)).map((l) => l.id), []);
    const managed = sample().get('l-managed');
    assert.ok(managed !== undefined);
    assert.equal(mayView(p, qemu, managed), true);
    assert.equal(mayView(p, alice, managed), false);
  });
});

describe('decideResize', () => {
  it('lets a manager raise and lower, returning the new and previous limit', () => {
    const ledger = sample();
    const up = decideResize(policy(), ledger, root, 'l-managed', 16 * GiB, PAGE);
    assert.ok(up.ok);
    assert.equal(up.plan.before.id, 'l-managed');
    assert.equal(up.plan.after.memoryBytes, 16 * GiB);
    assert.equal(up.plan.after.limitBytes, 17 * GiB);
    assert.equal(up.plan.before.limitBytes, 9 * GiB);
    assert.equal(up.plan.order, 'journal-first', 'a raise is journaled and flushed before the kernel');
    const down = decideResize(policy(), ledger, root, 'l-managed', 2 * GiB, PAGE);
    assert.ok(down.ok);
    assert.equal(down.plan.after.limitBytes, 3 * GiB);
    assert.equal(down.plan.order, 'kernel-first', 'a lowering reaches the kernel before the journal');
  });

  it('per-fd backend: a lease whose FD the broker lost is LeaseNotResizable, both ways; a held FD resizes with fd steps', () => {
    for (const memory of [16 * GiB, 2 * GiB]) {
      const params = denied(decideResize(policy(), sample(), root, 'l-managed', memory, PAGE, 'per-fd', false), 'LeaseNotResizable');
      assert.equal(params.lease, 'l-managed');
      assert.match(String(params.reason), /no longer holds lease l-managed's FD/);
    }
    const held = decideResize(policy(), sample(), root, 'l-managed', 16 * GiB, PAGE, 'per-fd', true);
    assert.ok(held.ok);
    assert.equal(held.plan.kernel?.kind === 'set' && held.plan.kernel.fd, true);
    assert.ok(decideResize(policy(), sample(), root, 'l-managed', 16 * GiB, PAGE, 'memlock', false).ok, 'memlock keeps no FD');
  });

  it('NoSuchLease for an unknown id, for managers and others alike', () => {
    assert.deepEqual(denied(decideResize(policy(), sample(), root, 'l-0000000000000000', GiB, PAGE), 'NoSuchLease'),
      { lease: 'l-0000000000000000' });
    assert.deepEqual(denied(decideResize(policy(), sample(), alice, 'l-0000000000000000', GiB, PAGE), 'NoSuchLease'),
      { lease: 'l-0000000000000000' });
  });

  it('NoSuchLease (no existence oracle) for a lease the peer cannot see', () => {
    assert.deepEqual(denied(decideResize(policy(), sample(), alice, 'l-bob', GiB, PAGE), 'NoSuchLease'), { lease: 'l-bob' });
  });

  it('PermissionDenied for a non-manager on a lease it can see: the VM may never raise its own limit', () => {
    for (const [who, id] of [[alice, 'l-self'], [qemu, 'l-managed']] as const) {
      for (const memory of [64 * GiB, GiB]) {
        const params = denied(decideResize(policy(), sample(), who, id, memory, PAGE), 'PermissionDenied');
        assert.equal(params.rule, 'resize-managers-only');
        assert.match(String(params.reason), /is not a manager; only managers may resize/);
      }
    }
  });

  it('limit-representable for an absurd size', () => {
    const params = denied(decideResize(policy(), sample(), root, 'l-managed', Number.MAX_SAFE_INTEGER, PAGE), 'LimitExceeded');
    assert.equal(params.rule, 'limit-representable');
  });

  it('per-vm-max on the new limit when raising; lowering is allowed even above the cap', () => {
    const p = policy({ perVmMaxBytes: 6 * GiB });
    const params = denied(decideResize(p, sample(), root, 'l-self', 5 * GiB + 1, PAGE), 'LimitExceeded');
    assert.equal(params.rule, 'per-vm-max');
    assert.equal(params.requested, 6 * GiB + PAGE);
    assert.equal(params.maximum, 6 * GiB);
    assert.ok(decideResize(p, sample(), root, 'l-self', 5 * GiB, PAGE).ok);
    // l-managed (9 GiB) is above the cap already: shrinking it to 7 GiB (still above) is allowed
    const shrink = decideResize(p, sample(), root, 'l-managed', 6 * GiB, PAGE);
    assert.ok(shrink.ok && shrink.plan.after.limitBytes === 7 * GiB);
    // ... keeping its size is allowed, growing it is not
    assert.ok(decideResize(p, sample(), root, 'l-managed', 8 * GiB, PAGE).ok);
    denied(decideResize(p, sample(), root, 'l-managed', 8 * GiB + 1, PAGE), 'LimitExceeded');
  });

  it('per-uid-bytes charged to the lease owner on the increase, not to the manager resizing it', () => {
    const ledger = sample();
    const p = policy({ perUidMaxBytes: 10 * GiB, managerUsers: [0, 3000] });
    const other = peer(3000);
    // alice owns 5 GiB; +5 GiB is exactly at her cap
    assert.ok(decideResize(p, ledger, other, 'l-self', 9 * GiB, PAGE).ok);
    const params = denied(decideResize(p, ledger, other, 'l-self', 9 * GiB + 1, PAGE), 'LimitExceeded');
    assert.equal(params.rule, 'per-uid-bytes');
    assert.equal(params.requested, 10 * GiB + PAGE);
    assert.match(String(params.reason), /^uid 1000 holds/);
  });

  it('budget checked on the increase only', () => {
    const ledger = sample(); // 16 GiB used
    const p = policy({ budgetBytes: 20 * GiB });
    assert.ok(decideResize(p, ledger, root, 'l-bob', 5 * GiB, PAGE).ok); // 2 -> 6 GiB: +4, exactly fits
    assert.deepEqual(denied(decideResize(p, ledger, root, 'l-bob', 5 * GiB + 1, PAGE), 'BudgetExceeded'),
      { requestedBytes: 4 * GiB + PAGE, availableBytes: 4 * GiB, budgetBytes: 20 * GiB });
    // over budget after a replay with a smaller budget: shrinking still works
    assert.ok(decideResize(policy({ budgetBytes: GiB }), ledger, root, 'l-managed', GiB, PAGE).ok);
  });
});

describe('decideRelease', () => {
  it('lets the owner release its lease, and a manager release any', () => {
    const own = decideRelease(policy(), sample(), alice, 'l-self', AT);
    assert.ok(own.ok && own.plan.before.id === 'l-self');
    assert.ok(decideRelease(policy(), sample(), root, 'l-bob', AT).ok);
    assert.ok(decideRelease(policy({ managerGroups: [libvirtGroup] }), sample(), manager, 'l-managed', AT).ok);
  });

  it('refuses the target uid of a lease a manager opened (it would take the lease out of its owner\'s hands)', () => {
    const params = denied(decideRelease(policy(), sample(), qemu, 'l-managed', AT), 'PermissionDenied');
    assert.equal(params.rule, 'release-owner-or-manager');
    assert.match(String(params.reason), /neither the owner \(uid 0\) of lease l-managed nor a manager/);
  });

  it('NoSuchLease for unknown or invisible leases', () => {
    assert.deepEqual(denied(decideRelease(policy(), sample(), alice, 'l-bob', AT), 'NoSuchLease'), { lease: 'l-bob' });
    assert.deepEqual(denied(decideRelease(policy(), sample(), root, 'l-gone', AT), 'NoSuchLease'), { lease: 'l-gone' });
  });
});

describe('released leases (issue #8 item 5)', () => {
  function released(): Ledger {
    const ledger = sample();
    ledger.markReleased('l-managed', '2026-01-01T00:00:00.000Z');
    return ledger;
  }

  it('a released lease can no longer be resized, not even lowered by a manager, and says why', () => {
    const params = denied(decideResize(policy(), released(), root, 'l-managed', GiB, PAGE), 'PermissionDenied');
    assert.equal(params.rule, 'lease-released');
    assert.match(String(params.reason), /released at 2026-01-01T00:00:00.000Z; it stays charged until pid 700 exits/);
    // a non-manager still learns the more fundamental reason first
    assert.equal(denied(decideResize(policy(), released(), qemu, 'l-managed', GiB, PAGE), 'PermissionDenied').rule, 'resize-managers-only');
  });

  it('releasing a released lease again is allowed (a retried Release) and names the released lease', () => {
    const again = decideRelease(policy(), released(), root, 'l-managed', AT);
    assert.ok(again.ok && again.plan.before.releasedAt === '2026-01-01T00:00:00.000Z');
  });
});
