import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { BrokerError, brokerErrorParameters, type BrokerErrorName } from '../../../protocol/errors.ts';
import { Ledger } from '../../../daemon/core/ledger.ts';
import { decideOpen, type OpenDecision, type OpenRequest } from '../../../daemon/core/open-decision.ts';
import type { Peer, Policy } from '../../../daemon/core/policy.ts';
import { GiB, PAGE, lease, peer, policy, sameIds } from './lease-fixtures.ts';

const alice = peer(1000);
const root = peer(0);

/** A request; the target is the peer itself unless targetPid names another pid (or targetIsPeer says). */
function request(fields: Partial<OpenRequest> & { peer: Peer }): OpenRequest {
  return {
    targetPid: fields.peer.pid,
    peerAlive: true,
    targetIsPeer: fields.targetPid === undefined || fields.targetPid === fields.peer.pid,
    targetUid: fields.peer.uid,
    targetIds: sameIds(fields.peer),
    targetIpcLockSet: undefined,
    targetNoNewPrivs: false,
    name: 'vm1',
    memoryBytes: 4 * GiB,
    pageSize: PAGE,
    ...fields,
  };
}

/** The denial, checked against the wire schema of its name so every parameter is well-formed. */
function denied(decision: OpenDecision, name: BrokerErrorName): Record<string, unknown> {
  assert.equal(decision.ok, false, `expected ${name}, got a grant`);
  if (decision.ok) return {};
  assert.ok(decision.error instanceof BrokerError);
  assert.equal(decision.error.errorName, name, decision.error.message);
  brokerErrorParameters[name].parse(decision.error.parameters);
  return decision.error.parameters;
}

function granted(decision: OpenDecision): number {
  assert.ok(decision.ok, decision.ok ? '' : decision.error.message);
  return decision.limitBytes;
}

describe('decideOpen: grants', () => {
  it('grants a self-Open with memory + 1 GiB overhead, page-rounded', () => {
    assert.equal(granted(decideOpen(policy(), new Ledger(), request({ peer: alice }))), 5 * GiB);
    assert.equal(granted(decideOpen(policy(), new Ledger(), request({ peer: alice, memoryBytes: 1 }))), GiB + PAGE);
  });

  it('lets a manager open for another process and uid', () => {
    assert.equal(granted(decideOpen(policy(), new Ledger(), request({ peer: root, targetPid: 777, targetUid: 107 }))), 5 * GiB);
  });

  it('allows a CAP_IPC_LOCK target when the policy says so', () => {
    const p = policy({ allowTargetsWithIpcLock: true });
    assert.equal(granted(decideOpen(p, new Ledger(), request({ peer: alice, targetIpcLockSet: 'effective' }))), 5 * GiB);
  });

  it('lets another owner reuse a requestId, and the same owner reuse one after release', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', targetPid: 1, ownerUid: 0, requestId: 'r' }));
    granted(decideOpen(policy(), ledger, request({ peer: alice, requestId: 'r' })));
    ledger.release('l-a');
    granted(decideOpen(policy(), ledger, request({ peer: root, targetPid: 2, requestId: 'r' })));
  });
});

describe('decideOpen: each rule', () => {
  it('open-users: a peer not listed and not a manager', () => {
    const p = policy({ openUsers: [2000], openGroups: [36] });
    const params = denied(decideOpen(p, new Ledger(), request({ peer: alice })), 'PermissionDenied');
    assert.equal(params.rule, 'open-users');
    assert.match(String(params.reason), /uid 1000 .* is not among the policy's open users or open groups/);
  });

  it('target-not-self: a non-manager naming another pid', () => {
    const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, targetPid: 4242 })), 'PermissionDenied');
    assert.equal(params.rule, 'target-not-self');
    assert.match(String(params.reason), /not a manager, so it may Open only for itself, not for pid 4242/);
  });

  it('target-not-self: the target\'s pid equals the peer\'s, but it is not the peer\'s process (pid reuse)', () => {
    const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, targetIsPeer: false })), 'PermissionDenied');
    assert.equal(params.rule, 'target-not-self');
  });

  it('caller-exited: a non-manager whose own process (pidfd taken at accept) has exited', () => {
    const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, peerAlive: false, targetIsPeer: false })),
      'PermissionDenied');
    assert.equal(params.rule, 'caller-exited');
    assert.match(String(params.reason), /the process that opened this connection \(uid 1000 .*\) has exited/);
  });

  it('caller-ids-changed: a non-manager whose own process exec\'d a setgid program after connecting', () => {
    const setgid = { ...sameIds(alice), effectiveGid: 4242, savedGid: 4242 };
    const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, targetIds: setgid })), 'PermissionDenied');
    assert.equal(params.rule, 'caller-ids-changed');
    assert.match(String(params.reason), /connected as uid 1000 gid 1000, but its process \(pid 41000\) now runs with uids 1000\/1000\/1000 and gids 1000\/4242\/4242/);
  });

  it('caller-ids-changed: any one of the six ids differing is enough (a setuid exec, a saved id kept)', () => {
    for (const field of ['realUid', 'effectiveUid', 'savedUid', 'realGid', 'effectiveGid', 'savedGid'] as const) {
      const ids = { ...sameIds(alice), [field]: 4242 };
      const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, targetIds: ids })), 'PermissionDenied');
      assert.equal(params.rule, 'caller-ids-changed', field);
    }
  });

  it('a manager is judged by uid and groups alone: its own process may run with other ids', () => {
    const setgid = { ...sameIds(root), effectiveGid: 4242, savedGid: 4242 };
    assert.equal(granted(decideOpen(policy(), new Ledger(), request({ peer: root, targetIds: setgid }))), 5 * GiB);
  });

  it('a manager whose own process exited may still name a target (managers are judged by uid and groups)', () => {
    assert.equal(granted(decideOpen(policy(), new Ledger(),
      request({ peer: root, targetPid: 777, peerAlive: false, targetIsPeer: false }))), 5 * GiB);
  });

  it('CAP_IPC_LOCK: refused by default, with the pid and capability', () => {
    const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, targetIpcLockSet: 'effective' })),
      'TargetBypassesAccounting');
    assert.equal(params.pid, alice.pid);
    assert.equal(params.capability, 'CAP_IPC_LOCK');
    assert.match(String(params.reason), /never charges its pinned pages/);
  });

  it('CAP_IPC_LOCK in a set the target can raise from: refused, naming the set (issue #8 item 6)', () => {
    for (const set of ['permitted', 'ambient', 'inheritable']) {
      const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, targetIpcLockSet: set })), 'TargetBypassesAccounting');
      assert.equal(params.set, set);
      assert.equal(params.capability, 'CAP_IPC_LOCK');
      assert.match(String(params.reason), new RegExp(`in its ${set} capability set \\(it can gain it\\)`));
    }
  });

  it('requireTargetNoNewPrivs: a target without NoNewPrivs is refused (set "exec"); with it, granted', () => {
    const p = policy({ requireTargetNoNewPrivs: true });
    const params = denied(decideOpen(p, new Ledger(), request({ peer: alice })), 'TargetBypassesAccounting');
    assert.equal(params.set, 'exec');
    assert.match(String(params.reason), /does not have NoNewPrivs set.*setuid-root or file-capability/);
    assert.equal(granted(decideOpen(p, new Ledger(), request({ peer: alice, targetNoNewPrivs: true }))), 5 * GiB);
    assert.equal(granted(decideOpen(policy(), new Ledger(), request({ peer: alice }))), 5 * GiB, 'not required by default');
  });

  it('per-fd backend: a CAP_IPC_LOCK holder (any set) or a target without NoNewPrivs is granted, the FD\'s limit binds it', () => {
    for (const set of ['effective', 'permitted', 'ambient', 'inheritable']) {
      assert.equal(granted(decideOpen(policy(), new Ledger(), request({ peer: alice, targetIpcLockSet: set, perFdLimit: true }))), 5 * GiB);
    }
    const p = policy({ requireTargetNoNewPrivs: true });
    assert.equal(granted(decideOpen(p, new Ledger(), request({ peer: alice, perFdLimit: true }))), 5 * GiB);
    denied(decideOpen(policy(), new Ledger(), request({ peer: alice, targetIpcLockSet: 'effective', perFdLimit: false })),
      'TargetBypassesAccounting');
  });

  it('one lease per target pid, naming the lease that holds it', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-held', targetPid: alice.pid }));
    assert.deepEqual(denied(decideOpen(policy(), ledger, request({ peer: alice })), 'TargetAlreadyLeased'),
      { pid: alice.pid, lease: 'l-held' });
  });

  it('duplicate requestId for the same owner, naming the lease', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-first', targetPid: 1, ownerUid: 1000, requestId: 'req-1' }));
    assert.deepEqual(denied(decideOpen(policy(), ledger, request({ peer: alice, requestId: 'req-1' })), 'DuplicateRequest'),
      { requestId: 'req-1', lease: 'l-first' });
  });

  it('limit-representable: memory so large the limit cannot be exact', () => {
    const params = denied(decideOpen(policy(), new Ledger(), request({ peer: alice, memoryBytes: Number.MAX_SAFE_INTEGER })),
      'LimitExceeded');
    assert.equal(params.rule, 'limit-representable');
    assert.equal(params.requested, Number.MAX_SAFE_INTEGER);
    assert.equal(params.maximum, Number.MAX_SAFE_INTEGER - (PAGE - 1) - GiB);
  });

  it('per-vm-max: compares the limit (memory + overhead), not the memory', () => {
    const p = policy({ perVmMaxBytes: 5 * GiB });
    assert.equal(granted(decideOpen(p, new Ledger(), request({ peer: alice, memoryBytes: 4 * GiB }))), 5 * GiB);
    const params = denied(decideOpen(p, new Ledger(), request({ peer: alice, memoryBytes: 4 * GiB + 1 })), 'LimitExceeded');
    assert.equal(params.rule, 'per-vm-max');
    assert.equal(params.requested, 5 * GiB + PAGE);
    assert.equal(params.maximum, 5 * GiB);
    assert.match(String(params.reason), /exceeds the policy perVmMaxBytes 5368709120 bytes \(5 GiB\)/);
  });

  it('per-uid-leases: counts the owner (peer) uid', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-1', targetPid: 1, ownerUid: 1000, memoryBytes: 0, limitBytes: 0 }));
    ledger.grant(lease({ id: 'l-2', targetPid: 2, ownerUid: 1000, memoryBytes: 0, limitBytes: 0 }));
    ledger.grant(lease({ id: 'l-3', targetPid: 3, ownerUid: 0, targetUid: 1000, memoryBytes: 0, limitBytes: 0 }));
    const p = policy({ perUidMaxLeases: 2 });
    const params = denied(decideOpen(p, ledger, request({ peer: alice })), 'LimitExceeded');
    assert.equal(params.rule, 'per-uid-leases');
    assert.equal(params.reason, 'uid 1000 holds 2 leases, policy perUidMaxLeases is 2');
    assert.equal(params.requested, 3);
    assert.equal(params.maximum, 2);
    // root's one lease (whose target is uid 1000) is charged to root, not to the target's uid
    granted(decideOpen(p, ledger, request({ peer: root, targetPid: 9 })));
    assert.equal(denied(decideOpen(policy({ perUidMaxLeases: 1 }), ledger, request({ peer: root, targetPid: 9 })),
      'LimitExceeded').reason, 'uid 0 holds 1 lease, policy perUidMaxLeases is 1');
    assert.equal(denied(decideOpen(policy({ perUidMaxLeases: 0 }), new Ledger(), request({ peer: alice })),
      'LimitExceeded').reason, 'uid 1000 holds 0 leases, policy perUidMaxLeases is 0');
  });

  it('per-uid-bytes: the owner total after this lease', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-1', targetPid: 1, ownerUid: 1000, limitBytes: 5 * GiB }));
    const p = policy({ perUidMaxBytes: 10 * GiB });
    granted(decideOpen(p, ledger, request({ peer: alice, memoryBytes: 4 * GiB })));
    const params = denied(decideOpen(p, ledger, request({ peer: alice, memoryBytes: 4 * GiB + 1 })), 'LimitExceeded');
    assert.equal(params.rule, 'per-uid-bytes');
    assert.equal(params.requested, 10 * GiB + PAGE);
    assert.equal(params.maximum, 10 * GiB);
    assert.match(String(params.reason), /uid 1000 holds 5368709120 bytes \(5 GiB\) in 1 lease\(s\)/);
  });

  it('budget: requested vs available vs total', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-1', targetPid: 1, limitBytes: 6 * GiB }));
    const p = policy({ budgetBytes: 10 * GiB });
    assert.deepEqual(denied(decideOpen(p, ledger, request({ peer: alice })), 'BudgetExceeded'),
      { requestedBytes: 5 * GiB, availableBytes: 4 * GiB, budgetBytes: 10 * GiB });
    granted(decideOpen(p, ledger, request({ peer: alice, memoryBytes: 3 * GiB })));
  });

  it('budget: usage above a lowered budget (after replay) means 0 available, not negative', () => {
    const ledger = Ledger.replay([lease({ id: 'l-1', targetPid: 1, limitBytes: 6 * GiB })]);
    assert.deepEqual(denied(decideOpen(policy({ budgetBytes: 2 * GiB }), ledger, request({ peer: alice })), 'BudgetExceeded'),
      { requestedBytes: 5 * GiB, availableBytes: 0, budgetBytes: 2 * GiB });
  });
});

describe('decideOpen: rule order', () => {
  // A request that breaks every rule at once; relaxing them one by one must reveal each next rule.
  const ledger = new Ledger();
  ledger.grant(lease({ id: 'l-held', targetPid: 4242, ownerUid: 1000, requestId: 'dup', limitBytes: 5 * GiB }));
  const base = request({ peer: alice, targetPid: 4242, targetIpcLockSet: 'effective', requestId: 'dup', memoryBytes: Number.MAX_SAFE_INTEGER });
  const self = { targetPid: alice.pid, targetIsPeer: true } as const;
  const strict: Policy = policy({ openUsers: [], perVmMaxBytes: GiB, perUidMaxLeases: 1, perUidMaxBytes: GiB, budgetBytes: GiB });
  const steps: Array<[string, Policy, OpenRequest]> = [
    ['open-users', strict, base],
    ['target-not-self', { ...strict, openUsers: 'any' }, base],
    ['CAP_IPC_LOCK', { ...strict, openUsers: 'any' }, { ...base, ...self }],
    ['DuplicateRequest', { ...strict, openUsers: 'any', managerUsers: [1000] }, { ...base, targetIpcLockSet: undefined }],
    ['TargetAlreadyLeased', { ...strict, openUsers: 'any', managerUsers: [1000] }, { ...base, targetIpcLockSet: undefined, requestId: 'new' }],
    ['limit-representable', { ...strict, openUsers: 'any' }, { ...base, targetIpcLockSet: undefined, ...self, requestId: 'new' }],
    ['per-vm-max', { ...strict, openUsers: 'any' }, { ...base, targetIpcLockSet: undefined, ...self, requestId: 'new', memoryBytes: GiB }],
    ['per-uid-leases', { ...strict, openUsers: 'any', perVmMaxBytes: null }, { ...base, targetIpcLockSet: undefined, ...self, requestId: 'new', memoryBytes: GiB }],
    ['per-uid-bytes', { ...strict, openUsers: 'any', perVmMaxBytes: null, perUidMaxLeases: null }, { ...base, targetIpcLockSet: undefined, ...self, requestId: 'new', memoryBytes: GiB }],
    ['budget', { ...strict, openUsers: 'any', perVmMaxBytes: null, perUidMaxLeases: null, perUidMaxBytes: null }, { ...base, targetIpcLockSet: undefined, ...self, requestId: 'new', memoryBytes: GiB }],
  ];
  const expected: Record<string, [BrokerErrorName, string | undefined]> = {
    'open-users': ['PermissionDenied', 'open-users'],
    'target-not-self': ['PermissionDenied', 'target-not-self'],
    'CAP_IPC_LOCK': ['TargetBypassesAccounting', undefined],
    'TargetAlreadyLeased': ['TargetAlreadyLeased', undefined],
    'DuplicateRequest': ['DuplicateRequest', undefined],
    'limit-representable': ['LimitExceeded', 'limit-representable'],
    'per-vm-max': ['LimitExceeded', 'per-vm-max'],
    'per-uid-leases': ['LimitExceeded', 'per-uid-leases'],
    'per-uid-bytes': ['LimitExceeded', 'per-uid-bytes'],
    'budget': ['BudgetExceeded', undefined],
  };
  for (const [step, p, req] of steps) {
    it(`reports ${step} before every later rule`, () => {
      const want = expected[step];
      assert.ok(want !== undefined);
      const params = denied(decideOpen(p, ledger, req), want[0]);
      assert.equal(params.rule, want[1]);
    });
  }

  it('grants once every rule is relaxed', () => {
    const p: Policy = { ...strict, openUsers: 'any', perVmMaxBytes: null, perUidMaxLeases: null, perUidMaxBytes: null, budgetBytes: 100 * GiB };
    assert.equal(granted(decideOpen(p, ledger, { ...base, targetIpcLockSet: undefined, ...self, requestId: 'new', memoryBytes: GiB })), 2 * GiB);
  });

  it('throws (a caller bug, not a denial) for a page size that is not a power of two', () => {
    assert.throws(() => decideOpen(policy(), new Ledger(), request({ peer: alice, pageSize: 1000 })), RangeError);
  });
});
