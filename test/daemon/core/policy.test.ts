import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import {
  DEFAULT_OVERHEAD_BYTES, defaultPolicy, describePeer, isManager, isObserver, mayOpen, type Peer, type Policy,
} from '../../../daemon/core/policy.ts';

const peer = (uid: number, gid = uid, groups: number[] = [], pid = 4242): Peer => ({ pid, uid, gid, groups });

function policyWith(fields: Partial<Policy>): Policy {
  return { ...defaultPolicy(1 << 30), ...fields };
}

describe('defaultPolicy', () => {
  it('lets anyone open for itself, makes uid 0 the only manager, caps nothing', () => {
    const p = defaultPolicy(64 * 2 ** 30);
    assert.equal(p.openUsers, 'any');
    assert.deepEqual(p.openGroups, []);
    assert.deepEqual(p.managerUsers, [0]);
    assert.deepEqual(p.managerGroups, []);
    assert.deepEqual(p.observerUsers, []);
    assert.deepEqual(p.observerGroups, []);
    assert.equal(p.perVmMaxBytes, null);
    assert.equal(p.perUidMaxLeases, null);
    assert.equal(p.perUidMaxBytes, null);
    // 64 MiB since #12 item 4 (was libvirt's 1 GiB): see docs/CONFIG.md for why.
    assert.equal(p.overheadBytes, 64 * 2 ** 20);
    assert.equal(DEFAULT_OVERHEAD_BYTES, 67108864);
    assert.equal(p.budgetBytes, 64 * 2 ** 30);
    assert.equal(p.allowTargetsWithIpcLock, false);
  });

  it('is deeply frozen', () => {
    const p = defaultPolicy(0);
    assert.ok(Object.isFrozen(p));
    assert.ok(Object.isFrozen(p.managerUsers));
    assert.ok(Object.isFrozen(p.openGroups));
    assert.ok(Object.isFrozen(p.managerGroups));
    assert.ok(Object.isFrozen(p.observerUsers));
    assert.ok(Object.isFrozen(p.observerGroups));
    assert.throws(() => { (p.managerUsers as number[]).push(1000); }, TypeError);
    assert.throws(() => { (p as { budgetBytes: number }).budgetBytes = 1; }, TypeError);
  });

  it('rejects a budget that is not a non-negative safe integer, saying what it got', () => {
    for (const bad of [-1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 2 ** 53]) {
      assert.throws(() => defaultPolicy(bad), (e: unknown) =>
        e instanceof RangeError && e.message.includes('budgetBytes') && e.message.includes(String(bad)));
    }
    assert.equal(defaultPolicy(Number.MAX_SAFE_INTEGER).budgetBytes, Number.MAX_SAFE_INTEGER);
  });
});

describe('isManager', () => {
  it('recognises manager uids', () => {
    const p = defaultPolicy(0);
    assert.equal(isManager(p, peer(0)), true);
    assert.equal(isManager(p, peer(1000)), false);
  });

  it('recognises manager groups by primary gid and by supplementary group', () => {
    const p = policyWith({ managerUsers: [], managerGroups: [64055] });
    assert.equal(isManager(p, peer(1000, 64055)), true);
    assert.equal(isManager(p, peer(1000, 1000, [27, 64055])), true);
    assert.equal(isManager(p, peer(1000, 1000, [27])), false);
    assert.equal(isManager(p, peer(0)), false, 'uid 0 is a manager only if the policy says so');
  });
});

describe('isObserver', () => {
  it('recognises observer uids and groups (primary and supplementary), and every manager', () => {
    const p = policyWith({ managerUsers: [0], managerGroups: [64055], observerUsers: [998], observerGroups: [997] });
    assert.equal(isObserver(p, peer(998)), true, 'observer uid');
    assert.equal(isObserver(p, peer(1000, 997)), true, 'observer primary gid');
    assert.equal(isObserver(p, peer(1000, 1000, [27, 997])), true, 'observer supplementary group');
    assert.equal(isObserver(p, peer(0)), true, 'a manager uid is an observer');
    assert.equal(isObserver(p, peer(1000, 1000, [64055])), true, 'a manager group is an observer');
    assert.equal(isObserver(p, peer(1000, 1000, [27])), false);
    assert.equal(isManager(p, peer(998)), false, 'observing makes no one a manager');
  });

  it('is nobody but the managers under the default policy', () => {
    fc.assert(fc.property(fc.nat(), fc.nat(), (uid, gid) => isObserver(defaultPolicy(0), peer(uid, gid)) === isManager(defaultPolicy(0), peer(uid, gid))));
  });
});

describe('mayOpen', () => {
  it("lets anyone open when openUsers is 'any'", () => {
    fc.assert(fc.property(fc.nat(), fc.nat(), (uid, gid) => mayOpen(defaultPolicy(0), peer(uid, gid))));
  });

  it('restricts to listed users and groups otherwise', () => {
    const p = policyWith({ openUsers: [1000], openGroups: [36] });
    assert.equal(mayOpen(p, peer(1000)), true);
    assert.equal(mayOpen(p, peer(1001)), false);
    assert.equal(mayOpen(p, peer(1001, 36)), true, 'primary gid');
    assert.equal(mayOpen(p, peer(1001, 1001, [5, 36])), true, 'supplementary group');
    assert.equal(mayOpen(p, peer(1001, 1001, [5])), false);
  });

  it('always lets managers open, even when not listed as open users', () => {
    const p = policyWith({ openUsers: [], openGroups: [], managerUsers: [0], managerGroups: [64055] });
    assert.equal(mayOpen(p, peer(0)), true);
    assert.equal(mayOpen(p, peer(107, 107, [64055])), true);
    assert.equal(mayOpen(p, peer(107)), false);
  });
});

describe('describePeer', () => {
  it('names uid, pid, gid and groups', () => {
    assert.equal(describePeer(peer(1000, 1000, [27, 100], 42)), 'uid 1000 (pid 42, gid 1000, groups 27,100)');
    assert.equal(describePeer(peer(0, 0, [], 1)), 'uid 0 (pid 1, gid 0, groups none)');
  });
});
