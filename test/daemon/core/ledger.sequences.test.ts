// Property tests over whole sequences: random policies, peers and targets; Open, Resize,
// Release, target exit, daemon restart (journal replay) and policy reload, each decided by the
// core and committed the way the shell does. After every step the invariants must hold, among
// them the budget's truth: usedBytes (and each owner's bytes) is never less than the limits of
// the leases whose targets live and may still pin, whoever released what.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { decideRelease, decideResize, visibleLeases } from '../../../daemon/core/lease-decisions.ts';
import { Ledger } from '../../../daemon/core/ledger.ts';
import { decideOpen } from '../../../daemon/core/open-decision.ts';
import { limitBytesFor } from '../../../daemon/core/limit.ts';
import { isManager, mayOpen, type Peer, type Policy } from '../../../daemon/core/policy.ts';
import { GiB } from './lease-fixtures.ts';

const KVM = 36;
const LIBVIRT = 64055;
const PEERS: readonly Peer[] = [
  { pid: 10, uid: 0, gid: 0, groups: [] },
  { pid: 11, uid: 2000, gid: 2000, groups: [LIBVIRT] },
  { pid: 12, uid: 1000, gid: 1000, groups: [KVM] },
  { pid: 13, uid: 1001, gid: 1001, groups: [] },
  { pid: 14, uid: 107, gid: 107, groups: [] },
];
/** Every process that may be named as a target: the peers themselves and some QEMUs. */
const TARGETS: ReadonlyArray<{ pid: number; uid: number; ipcLock: string | undefined; noNewPrivs: boolean }> = [
  ...PEERS.map((p) => ({ pid: p.pid, uid: p.uid, ipcLock: p.uid === 0 ? 'effective' : undefined, noNewPrivs: p.uid === 1000 })),
  { pid: 500, uid: 107, ipcLock: undefined, noNewPrivs: true },
  { pid: 501, uid: 107, ipcLock: undefined, noNewPrivs: false },
  { pid: 502, uid: 1000, ipcLock: 'inheritable', noNewPrivs: false },
  { pid: 503, uid: 107, ipcLock: 'permitted', noNewPrivs: true },
];

/** A cap: absent half the time, so that sequences also grow large enough to meet the others. */
function selfTarget(peer: Peer): { pid: number; uid: number; ipcLock: string | undefined; noNewPrivs: boolean } {
  const target = TARGETS.find((t) => t.pid === peer.pid);
  assert.ok(target !== undefined);
  return target;
}

const cap = (arb: fc.Arbitrary<number>): fc.Arbitrary<number | null> => fc.option(arb, { nil: null, freq: 2 });
const policyArb: fc.Arbitrary<Policy> = fc.record({
  openUsers: fc.oneof({ weight: 3, arbitrary: fc.constant('any' as const) }, { weight: 1, arbitrary: fc.subarray([1000, 1001, 107]) }),
  openGroups: fc.subarray([KVM]),
  managerUsers: fc.constant([0]),
  managerGroups: fc.subarray([LIBVIRT]),
  observerUsers: fc.subarray([1001]),
  observerGroups: fc.subarray([KVM]),
  perVmMaxBytes: cap(fc.integer({ min: 0, max: 40 * GiB })),
  perUidMaxLeases: cap(fc.integer({ min: 0, max: 6 })),
  perUidMaxBytes: cap(fc.integer({ min: 0, max: 60 * GiB })),
  overheadBytes: fc.constantFrom(0, 12345, GiB),
  budgetBytes: fc.integer({ min: 0, max: 200 * GiB }),
  allowTargetsWithIpcLock: fc.boolean(),
  requireTargetNoNewPrivs: fc.boolean(),
  devices: fc.constant([]),
});

const memoryArb = fc.oneof(
  { weight: 8, arbitrary: fc.integer({ min: 1, max: 8 * GiB }) },
  { weight: 2, arbitrary: fc.integer({ min: 1, max: 32 * GiB }) },
  { weight: 1, arbitrary: fc.constant(Number.MAX_SAFE_INTEGER) },
);
const pick = fc.nat();

type Step =
  /** target undefined: the peer opens for itself (the common case). */
  | { op: 'open'; peer: number; target: number | undefined; memory: number; requestId: string | undefined }
  | { op: 'resize'; peer: number; lease: number; memory: number }
  | { op: 'release'; peer: number; lease: number }
  | { op: 'exit'; lease: number }
  | { op: 'restart' }
  | { op: 'reload'; policy: Policy };

const stepArb: fc.Arbitrary<Step> = fc.oneof(
  { weight: 6, arbitrary: fc.record({ op: fc.constant('open' as const), peer: pick, target: fc.option(pick, { nil: undefined, freq: 2 }), memory: memoryArb, requestId: fc.option(fc.constantFrom('a', 'b'), { nil: undefined }) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('resize' as const), peer: pick, lease: pick, memory: memoryArb }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('release' as const), peer: pick, lease: pick }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('exit' as const), lease: pick }) },
  { weight: 1, arbitrary: fc.constant({ op: 'restart' as const }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('reload' as const), policy: policyArb }) },
);

function at<T>(items: readonly T[], index: number): T {
  const item = items[index % items.length];
  assert.ok(item !== undefined);
  return item;
}

/** The visibility rule, restated independently: managers and observers see all, others what they own or what runs as them. */
function hiddenFrom(policy: Policy, ledger: Ledger, peer: Peer, id: string): boolean {
  const lease = ledger.get(id);
  const gids = [peer.gid, ...peer.groups];
  const seesAll = policy.managerUsers.includes(peer.uid) || gids.some((g) => policy.managerGroups.includes(g))
    || policy.observerUsers.includes(peer.uid) || gids.some((g) => policy.observerGroups.includes(g));
  const hidden = lease === undefined || (!seesAll && lease.ownerUid !== peer.uid && lease.targetUid !== peer.uid);
  assert.equal(visibleLeases(policy, ledger, peer).some((l) => l.id === id), !hidden, 'List shows exactly the visible leases');
  return hidden;
}

interface Totals { used: number; owners: Map<number, { leases: number; bytes: number }> }
function totals(ledger: Ledger): Totals {
  const owners = new Map<number, { leases: number; bytes: number }>();
  let used = 0;
  for (const l of ledger.all()) {
    used += l.limitBytes;
    const o = owners.get(l.ownerUid) ?? { leases: 0, bytes: 0 };
    owners.set(l.ownerUid, { leases: o.leases + 1, bytes: o.bytes + l.limitBytes });
  }
  return { used, owners };
}

/** Runs one sequence; returns how many grants, raises and releases it made (for the coverage check). */
function run(initial: Policy, pageSize: number, steps: readonly Step[]): { grants: number; raises: number; releases: number } {
  let policy = initial;
  let ledger = new Ledger();
  let nextId = 0;
  let grants = 0;
  let raises = 0;
  let reloaded = false;
  let releases = 0;
  /** The model: what each leased target may still pin (the limit the broker last set), by target pid. */
  const pinning = new Map<number, { owner: number; limit: number }>();
  for (const step of steps) {
    const before = totals(ledger);
    const limitsBefore = new Map(ledger.all().map((l) => [l.id, l.limitBytes]));
    const live = ledger.all();
    const leaseId = (i: number): string => (live.length === 0 || i % 5 === 4 ? 'l-unknown' : at(live, i).id);

    if (step.op === 'open') {
      const peer = at(PEERS, step.peer);
      const target = step.target === undefined ? selfTarget(peer) : at(TARGETS, step.target);
      const decision = decideOpen(policy, ledger, {
        peer, targetPid: target.pid, targetUid: target.uid, targetIpcLockSet: target.ipcLock, targetNoNewPrivs: target.noNewPrivs,
        // In this model pids name processes for good: a target with the peer's pid is the peer.
        peerAlive: true, targetIsPeer: target.pid === peer.pid,
        name: 'vm', memoryBytes: step.memory, requestId: step.requestId, pageSize,
      });
      if (decision.ok) {
        assert.ok(mayOpen(policy, peer), 'only peers allowed to Open get a lease');
        assert.ok(target.pid === peer.pid || isManager(policy, peer), 'non-managers only lease themselves');
        assert.ok(target.ipcLock === undefined || policy.allowTargetsWithIpcLock, 'no CAP_IPC_LOCK target unless allowed');
        assert.ok(target.noNewPrivs || !policy.requireTargetNoNewPrivs, 'NoNewPrivs when the policy requires it');
        assert.equal(decision.limitBytes, limitBytesFor(step.memory, policy.overheadBytes, pageSize));
        ledger.grant({
          id: `l-${nextId++}`, name: 'vm', targetPid: target.pid, targetUid: target.uid, targetStartTime: '1',
          ownerUid: peer.uid, memoryBytes: step.memory, limitBytes: decision.limitBytes, requestId: step.requestId,
          createdAt: 't', previousLimit: { soft: -1, hard: -1 },
        });
        pinning.set(target.pid, { owner: peer.uid, limit: decision.limitBytes });
        grants++;
      }
    } else if (step.op === 'resize') {
      const peer = at(PEERS, step.peer);
      const id = leaseId(step.lease);
      const hidden = hiddenFrom(policy, ledger, peer, id);
      const decision = decideResize(policy, ledger, peer, id, step.memory, pageSize);
      if (decision.ok) {
        assert.ok(isManager(policy, peer), 'only managers resize: a VM never raises its own limit');
        assert.equal(decision.plan.before.releasedAt, undefined, 'a released lease is never resized');
        ledger.resize(id, decision.plan.after.memoryBytes, decision.plan.after.limitBytes);
        pinning.set(decision.plan.before.targetPid, { owner: decision.plan.before.ownerUid, limit: decision.plan.after.limitBytes });
        if (decision.plan.after.limitBytes > decision.plan.before.limitBytes) raises++;
      } else if (hidden) {
        assert.deepEqual([decision.error.errorName, decision.error.parameters], ['NoSuchLease', { lease: id }],
          'an invisible lease looks exactly like a missing one');
      } else if (!isManager(policy, peer) || ledger.get(id)?.releasedAt !== undefined) {
        assert.equal(decision.error.errorName, 'PermissionDenied', 'a visible lease says why it is refused');
      }
    } else if (step.op === 'release') {
      const peer = at(PEERS, step.peer);
      const id = leaseId(step.lease);
      const hidden = hiddenFrom(policy, ledger, peer, id);
      const decision = decideRelease(policy, ledger, peer, id, `r${releases}`);
      if (!decision.ok && hidden) assert.equal(decision.error.errorName, 'NoSuchLease');
      if (decision.ok) {
        assert.ok(decision.plan.before.ownerUid === peer.uid || isManager(policy, peer), 'release: owner or manager');
        // As the shell does: mark it (once); the bytes stay charged while the target lives.
        if (decision.plan.before.releasedAt === undefined) ledger.markReleased(id, `r${releases++}`);
      }
    } else if (step.op === 'exit') {
      // Only a target's exit takes a lease out of the ledger and returns its bytes.
      if (live.length > 0) {
        const exited = at(live, step.lease);
        ledger.release(exited.id);
        pinning.delete(exited.targetPid);
      }
    } else if (step.op === 'restart') {
      const replayed = Ledger.replay(ledger.all());
      assert.deepEqual(replayed.all(), ledger.all());
      ledger = replayed;
    } else {
      policy = step.policy;
      reloaded = true;
    }

    // Invariants after every step.
    const after = totals(ledger);
    // The budget's truth: never less than what live targets may still pin, released or not.
    const mayPin = [...pinning.values()];
    assert.ok(ledger.usedBytes() >= mayPin.reduce((sum, p) => sum + p.limit, 0), 'usedBytes covers every live target\'s limit');
    for (const uid of new Set(mayPin.map((p) => p.owner))) {
      const owed = mayPin.filter((p) => p.owner === uid).reduce((sum, p) => sum + p.limit, 0);
      assert.ok(ledger.ownerUsage(uid).bytes >= owed, `uid ${uid}'s bytes cover its targets' limits`);
    }
    assert.equal(ledger.releasedBytes(), ledger.all().filter((l) => l.releasedAt !== undefined).reduce((sum, l) => sum + l.limitBytes, 0),
      'releasedBytes is the released leases\' share');
    assert.equal(ledger.usedBytes(), after.used, 'incremental used == sum of live limits');
    assert.ok(after.used <= Math.max(policy.budgetBytes, before.used), 'usage never grows past the budget');
    for (const [uid, usage] of after.owners) {
      assert.deepEqual(ledger.ownerUsage(uid), usage);
      const was = before.owners.get(uid) ?? { leases: 0, bytes: 0 };
      if (policy.perUidMaxLeases !== null) assert.ok(usage.leases <= Math.max(policy.perUidMaxLeases, was.leases), 'per-uid lease cap');
      if (policy.perUidMaxBytes !== null) assert.ok(usage.bytes <= Math.max(policy.perUidMaxBytes, was.bytes), 'per-uid byte cap');
    }
    for (const l of ledger.all()) {
      assert.ok(l.limitBytes >= l.memoryBytes);
      const was = limitsBefore.get(l.id) ?? 0;
      if (l.limitBytes > was && policy.perVmMaxBytes !== null) assert.ok(l.limitBytes <= policy.perVmMaxBytes, 'per-VM cap on growth');
    }
    if (!reloaded) {
      // One policy from an empty ledger: every cap holds outright, at every point.
      assert.ok(after.used <= policy.budgetBytes, 'used <= budget');
      for (const usage of after.owners.values()) {
        assert.ok(policy.perUidMaxLeases === null || usage.leases <= policy.perUidMaxLeases);
        assert.ok(policy.perUidMaxBytes === null || usage.bytes <= policy.perUidMaxBytes);
      }
      assert.ok(ledger.all().every((l) => policy.perVmMaxBytes === null || l.limitBytes <= policy.perVmMaxBytes));
    }
  }
  return { grants, raises, releases };
}

describe('ledger sequences', () => {
  it('keep used == sum, stay within budget and quotas, count released leases until exit, and never let a VM raise itself', () => {
    let grants = 0;
    let raises = 0;
    let releases = 0;
    fc.assert(fc.property(policyArb, fc.constantFrom(4096, 65536), fc.array(stepArb, { maxLength: 60, size: 'medium' }), (p, page, steps) => {
      const made = run(p, page, steps);
      grants += made.grants;
      raises += made.raises;
      releases += made.releases;
    }), { numRuns: 400 });
    // The generators must actually exercise the paths whose invariants we check.
    assert.ok(grants > 300, `only ${grants} grants over all runs`);
    assert.ok(raises > 40, `only ${raises} raising resizes over all runs`);
    assert.ok(releases > 100, `only ${releases} releases over all runs`);
  });
});
