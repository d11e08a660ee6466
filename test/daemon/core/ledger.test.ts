import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { Ledger, LedgerError, type LeaseRecord } from '../../../daemon/core/ledger.ts';
import { GiB, MiB, lease } from './lease-fixtures.ts';

const MAX = Number.MAX_SAFE_INTEGER;

describe('Ledger.grant and queries', () => {
  it('records a lease and finds it by id, target pid and (owner, requestId)', () => {
    const ledger = new Ledger();
    const a = lease({ id: 'l-a', targetPid: 11, ownerUid: 0, requestId: 'r1' });
    ledger.grant(a);
    assert.deepEqual(ledger.get('l-a'), a);
    assert.deepEqual(ledger.byTargetPid(11), a);
    assert.deepEqual(ledger.byRequestId(0, 'r1'), a);
    assert.equal(ledger.byRequestId(1000, 'r1'), undefined, 'requestIds are per owner');
    assert.equal(ledger.byTargetPid(12), undefined);
    assert.equal(ledger.get('l-b'), undefined);
    assert.equal(ledger.usedBytes(), 5 * GiB);
    assert.equal(ledger.count(), 1);
    assert.deepEqual(ledger.ownerUsage(0), { leases: 1, bytes: 5 * GiB });
    assert.deepEqual(ledger.ownerUsage(1000), { leases: 0, bytes: 0 });
  });

  it('lists leases oldest first', () => {
    const ledger = new Ledger();
    for (const [i, id] of ['l-c', 'l-a', 'l-b'].entries()) ledger.grant(lease({ id, targetPid: 100 + i }));
    assert.deepEqual(ledger.all().map((l) => l.id), ['l-c', 'l-a', 'l-b']);
  });

  it('keeps a frozen copy: mutating the caller object changes nothing', () => {
    const ledger = new Ledger();
    const input = { ...lease({ id: 'l-a' }), previousLimit: { soft: 1, hard: 2 } };
    ledger.grant(input);
    input.limitBytes = 1;
    input.previousLimit.soft = 99;
    const stored = ledger.get('l-a');
    assert.ok(stored !== undefined && Object.isFrozen(stored) && Object.isFrozen(stored.previousLimit));
    assert.equal(stored.limitBytes, 5 * GiB);
    assert.equal(stored.previousLimit.soft, 1);
    assert.equal(ledger.usedBytes(), 5 * GiB);
  });

  it('drops an explicitly undefined requestId instead of storing the key', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', requestId: undefined }));
    assert.equal(Object.hasOwn(ledger.get('l-a') ?? {}, 'requestId'), false);
  });

  const rejects: Array<[string, (l: LeaseRecord) => LeaseRecord, RegExp]> = [
    ['empty id', (l) => ({ ...l, id: '' }), /non-empty string/],
    ['pid 0', (l) => ({ ...l, targetPid: 0 }), /targetPid must be a safe integer >= 1, got 0/],
    ['fractional pid', (l) => ({ ...l, targetPid: 1.5 }), /targetPid/],
    ['negative target uid', (l) => ({ ...l, targetUid: -1 }), /targetUid/],
    ['negative owner uid', (l) => ({ ...l, ownerUid: -1 }), /ownerUid/],
    ['soft below -1', (l) => ({ ...l, previousLimit: { soft: -2, hard: -1 } }), /previousLimit.soft/],
    ['hard not an integer', (l) => ({ ...l, previousLimit: { soft: 0, hard: Number.NaN } }), /previousLimit.hard/],
    ['negative memory', (l) => ({ ...l, memoryBytes: -1 }), /memoryBytes/],
    ['unsafe limit', (l) => ({ ...l, limitBytes: 2 ** 53 }), /limitBytes must be a safe integer/],
    ['limit below memory', (l) => ({ ...l, memoryBytes: 2 * GiB, limitBytes: GiB }), /below memoryBytes/],
    ['empty requestId', (l) => ({ ...l, requestId: '' }), /requestId must not be empty/],
  ];
  for (const [what, change, message] of rejects) {
    it(`rejects a lease with ${what} and stays unchanged`, () => {
      const ledger = new Ledger();
      ledger.grant(lease({ id: 'l-ok', targetPid: 7 }));
      assert.throws(() => ledger.grant(change(lease({ id: 'l-bad', targetPid: 8 }))),
        (e: unknown) => e instanceof LedgerError && e.name === 'LedgerError' && message.test(e.message));
      assert.deepEqual(ledger.all().map((l) => l.id), ['l-ok']);
      assert.equal(ledger.usedBytes(), 5 * GiB);
    });
  }

  it('rejects a duplicate id, a second lease on one pid, a reused requestId, naming the holder', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', targetPid: 7, requestId: 'r' }));
    assert.throws(() => ledger.grant(lease({ id: 'l-a', targetPid: 8 })), /lease l-a already exists/);
    assert.throws(() => ledger.grant(lease({ id: 'l-b', targetPid: 7 })), /pid 7 already has lease l-a/);
    assert.throws(() => ledger.grant(lease({ id: 'l-b', targetPid: 8, requestId: 'r' })),
      /uid 1000 already used requestId r for lease l-a/);
    ledger.grant(lease({ id: 'l-b', targetPid: 8, requestId: 'r', ownerUid: 0 }));
    assert.equal(ledger.count(), 2);
  });

  it('refuses a grant that would make the total inexact', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', targetPid: 1, memoryBytes: 0, limitBytes: MAX - 10 }));
    assert.throws(() => ledger.grant(lease({ id: 'l-b', targetPid: 2, memoryBytes: 0, limitBytes: 11 })),
      /total limitBytes would exceed/);
    ledger.grant(lease({ id: 'l-b', targetPid: 2, memoryBytes: 0, limitBytes: 10 }));
    assert.equal(ledger.usedBytes(), MAX);
  });
});

describe('Ledger.resize and release', () => {
  it('resizes in place, keeping everything but the sizes, and moves the totals', () => {
    const ledger = new Ledger();
    const a = lease({ id: 'l-a', requestId: 'r' });
    ledger.grant(a);
    const updated = ledger.resize('l-a', 8 * GiB, 9 * GiB);
    assert.deepEqual(updated, { ...a, memoryBytes: 8 * GiB, limitBytes: 9 * GiB });
    assert.ok(Object.isFrozen(updated));
    assert.deepEqual(ledger.get('l-a'), updated);
    assert.equal(ledger.usedBytes(), 9 * GiB);
    assert.deepEqual(ledger.ownerUsage(1000), { leases: 1, bytes: 9 * GiB });
    ledger.resize('l-a', GiB, 2 * GiB);
    assert.equal(ledger.usedBytes(), 2 * GiB);
  });

  it('refuses to resize an unknown lease, below memory, or past the exact total', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a' }));
    assert.throws(() => ledger.resize('l-x', GiB, GiB), /lease l-x does not exist/);
    assert.throws(() => ledger.resize('l-a', 2 * GiB, GiB), /below memoryBytes/);
    ledger.grant(lease({ id: 'l-b', targetPid: 2 }));
    assert.throws(() => ledger.resize('l-a', 0, MAX - 5 * GiB + 1), /total limitBytes would exceed/);
    ledger.release('l-b');
    assert.throws(() => ledger.resize('l-a', -1, GiB), /memoryBytes/);
    assert.equal(ledger.get('l-a')?.limitBytes, 5 * GiB);
    assert.equal(ledger.usedBytes(), 5 * GiB);
  });

  it('releases: frees the pid, the requestId and the bytes, and returns the record', () => {
    const ledger = new Ledger();
    const a = lease({ id: 'l-a', targetPid: 7, requestId: 'r' });
    ledger.grant(a);
    ledger.grant(lease({ id: 'l-b', targetPid: 8 }));
    assert.deepEqual(ledger.release('l-a'), a);
    assert.equal(ledger.get('l-a'), undefined);
    assert.equal(ledger.byTargetPid(7), undefined);
    assert.equal(ledger.byRequestId(1000, 'r'), undefined);
    assert.deepEqual(ledger.ownerUsage(1000), { leases: 1, bytes: 5 * GiB });
    ledger.release('l-b');
    assert.deepEqual(ledger.ownerUsage(1000), { leases: 0, bytes: 0 });
    assert.equal(ledger.usedBytes(), 0);
    ledger.grant(lease({ id: 'l-c', targetPid: 7, requestId: 'r' }));
    assert.equal(ledger.byRequestId(1000, 'r')?.id, 'l-c', 'a released requestId may be used again');
  });

  it('refuses to release an unknown or already released lease', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a' }));
    ledger.release('l-a');
    assert.throws(() => ledger.release('l-a'), /lease l-a does not exist/);
  });
});

describe('Ledger.replay', () => {
  it('rebuilds the same state from all()', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', targetPid: 1, ownerUid: 0, requestId: 'x' }));
    ledger.grant(lease({ id: 'l-b', targetPid: 2, limitBytes: 7 * GiB }));
    const again = Ledger.replay(ledger.all());
    assert.deepEqual(again.all(), ledger.all());
    assert.equal(again.usedBytes(), 12 * GiB);
    assert.equal(again.byRequestId(0, 'x')?.id, 'l-a');
  });

  it('fails loudly on a journal that holds two leases for one pid', () => {
    assert.throws(() => Ledger.replay([lease({ id: 'l-a', targetPid: 1 }), lease({ id: 'l-b', targetPid: 1 })]),
      /pid 1 already has lease l-a/);
  });
});

describe('Ledger properties', () => {
  type Op =
    | { kind: 'grant'; pid: number; owner: number; limit: number; requestId: string | undefined }
    | { kind: 'resize'; pick: number; limit: number }
    | { kind: 'release'; pick: number }
    | { kind: 'replay' };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({
      kind: fc.constant('grant' as const), pid: fc.integer({ min: 1, max: 12 }), owner: fc.integer({ min: 0, max: 3 }),
      limit: fc.integer({ min: 0, max: 64 * GiB }), requestId: fc.option(fc.constantFrom('a', 'b'), { nil: undefined }),
    }),
    fc.record({ kind: fc.constant('resize' as const), pick: fc.nat(), limit: fc.integer({ min: 0, max: 64 * GiB }) }),
    fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }),
    fc.constant({ kind: 'replay' as const }),
  );

  it('used == sum of live limits, per-owner usage == per-owner sums, indexes agree, after any sequence', () => {
    fc.assert(fc.property(fc.array(op, { maxLength: 60 }), (ops) => {
      let ledger = new Ledger();
      let next = 0;
      for (const o of ops) {
        const live = ledger.all();
        if (o.kind === 'grant') {
          const clash = ledger.byTargetPid(o.pid) !== undefined ||
            (o.requestId !== undefined && ledger.byRequestId(o.owner, o.requestId) !== undefined);
          const record = lease({
            id: `l-${next++}`, targetPid: o.pid, ownerUid: o.owner, memoryBytes: 0, limitBytes: o.limit, requestId: o.requestId,
          });
          if (clash) assert.throws(() => ledger.grant(record), LedgerError);
          else ledger.grant(record);
        } else if (o.kind === 'resize') {
          const target = live[o.pick % Math.max(1, live.length)];
          if (target !== undefined) ledger.resize(target.id, 0, o.limit);
        } else if (o.kind === 'release') {
          const target = live[o.pick % Math.max(1, live.length)];
          if (target !== undefined) ledger.release(target.id);
        } else {
          ledger = Ledger.replay(ledger.all());
        }
        const leases = ledger.all();
        assert.equal(ledger.usedBytes(), leases.reduce((s, l) => s + l.limitBytes, 0));
        assert.equal(ledger.count(), leases.length);
        for (const owner of [0, 1, 2, 3]) {
          const mine = leases.filter((l) => l.ownerUid === owner);
          assert.deepEqual(ledger.ownerUsage(owner), { leases: mine.length, bytes: mine.reduce((s, l) => s + l.limitBytes, 0) });
        }
        assert.equal(new Set(leases.map((l) => l.targetPid)).size, leases.length, 'one lease per pid');
        for (const l of leases) {
          assert.equal(ledger.byTargetPid(l.targetPid)?.id, l.id);
          if (l.requestId !== undefined) assert.equal(ledger.byRequestId(l.ownerUid, l.requestId)?.id, l.id);
        }
      }
    }), { numRuns: 300 });
  });

  it('previousLimit -1 (infinity) round-trips', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', previousLimit: { soft: -1, hard: -1 }, memoryBytes: MiB, limitBytes: MiB }));
    assert.deepEqual(ledger.get('l-a')?.previousLimit, { soft: -1, hard: -1 });
  });
});

describe('Ledger.markReleased (issue #8 item 5: the budget never counts less than live targets may pin)', () => {
  it('keeps a released lease and its bytes charged, to the budget and its owner, until release()', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', targetPid: 10, limitBytes: 5 * GiB }));
    ledger.grant(lease({ id: 'l-b', targetPid: 11, memoryBytes: GiB, limitBytes: 2 * GiB, ownerUid: 7 }));
    const marked = ledger.markReleased('l-a', 't1');
    assert.equal(marked.releasedAt, 't1');
    assert.ok(Object.isFrozen(marked));
    assert.deepEqual(ledger.get('l-a'), marked);
    assert.equal(ledger.usedBytes(), 7 * GiB, 'Release returns no bytes while the target lives');
    assert.equal(ledger.releasedBytes(), 5 * GiB);
    assert.deepEqual(ledger.ownerUsage(1000), { leases: 1, bytes: 5 * GiB });
    assert.equal(ledger.count(), 2);
    assert.equal(ledger.byTargetPid(10)?.id, 'l-a', 'still one lease per target: a new Open for it is refused');

    assert.throws(() => ledger.markReleased('l-a', 't2'), /already released at t1/);
    assert.throws(() => ledger.resize('l-a', GiB, 2 * GiB), /was released; it cannot be resized/);
    assert.throws(() => ledger.markReleased('l-none', 't'), LedgerError);
    assert.equal(ledger.usedBytes(), 7 * GiB, 'refused commits change nothing');

    ledger.release('l-a'); // the target exited
    assert.equal(ledger.usedBytes(), 2 * GiB);
    assert.equal(ledger.releasedBytes(), 0);
    assert.deepEqual(ledger.ownerUsage(1000), { leases: 0, bytes: 0 });
  });

  it('replays released leases as released', () => {
    const ledger = Ledger.replay([lease({ id: 'l-a', releasedAt: 't1' }), lease({ id: 'l-b', targetPid: 2 })]);
    assert.equal(ledger.get('l-a')?.releasedAt, 't1');
    assert.equal(ledger.get('l-b')?.releasedAt, undefined);
    assert.equal(ledger.releasedBytes(), 5 * GiB);
    assert.equal(ledger.usedBytes(), 10 * GiB);
  });
});

describe('Ledger: VFIO devices', () => {
  it('indexes a lease\'s devices (frozen copies) until the lease leaves the ledger', () => {
    const ledger = new Ledger();
    const input = { ...lease({ id: 'l-a', targetPid: 11 }), devices: [{ address: '0000:00:03.0', cdev: 'vfio0' }] };
    ledger.grant(input);
    input.devices[0] = { address: '0000:00:09.0', cdev: 'vfio9' };
    const stored = ledger.get('l-a');
    assert.deepEqual(stored?.devices, [{ address: '0000:00:03.0', cdev: 'vfio0' }]);
    assert.ok(Object.isFrozen(stored?.devices) && Object.isFrozen(stored?.devices?.[0]));
    assert.equal(ledger.byDevice('0000:00:03.0')?.id, 'l-a');
    assert.equal(ledger.byDevice('0000:00:09.0'), undefined);
    assert.equal(ledger.devicesHeld(), 1);
    ledger.markReleased('l-a', '2025-01-02T00:00:00.000Z');
    assert.equal(ledger.byDevice('0000:00:03.0')?.id, 'l-a', 'a released lease keeps its devices');
    ledger.release('l-a');
    assert.equal(ledger.byDevice('0000:00:03.0'), undefined);
    assert.equal(ledger.devicesHeld(), 0);
  });

  it('stores no devices key for a lease without devices', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', devices: [] }));
    assert.equal(Object.hasOwn(ledger.get('l-a') ?? {}, 'devices'), false);
    assert.equal(ledger.devicesHeld(), 0);
  });

  it('refuses a device another lease holds, or one named twice, and changes nothing', () => {
    const ledger = new Ledger();
    ledger.grant(lease({ id: 'l-a', targetPid: 11, devices: [{ address: '0000:00:03.0', cdev: 'vfio0' }] }));
    assert.throws(() => ledger.grant(lease({ id: 'l-b', targetPid: 12, devices: [{ address: '0000:00:03.0', cdev: 'vfio0' }] })),
      (e: unknown) => e instanceof LedgerError && /device 0000:00:03\.0 is held by lease l-a/.test(e.message));
    const twice = [{ address: '0000:00:04.0', cdev: 'vfio1' }, { address: '0000:00:04.0', cdev: 'vfio1' }];
    assert.throws(() => ledger.grant(lease({ id: 'l-c', targetPid: 13, devices: twice })),
      (e: unknown) => e instanceof LedgerError && /device 0000:00:04\.0 named twice/.test(e.message));
    assert.deepEqual([ledger.count(), ledger.devicesHeld(), ledger.byDevice('0000:00:04.0')], [1, 1, undefined]);
  });
});
