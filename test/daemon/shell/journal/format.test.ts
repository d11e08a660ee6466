// The journal's line format and replay, in memory: every prefix of any valid journal replays
// to the state of its complete lines, and the torn remainder is reported exactly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { JournalCorrupt, encode, replay, type JournaledLease, type JournalRecord } from '../../../../daemon/shell/journal/format.ts';
import { leaseFor } from './ops.ts';

/** A random valid history: grants of fresh leases, resizes and releases of live ones. */
const history = fc.array(fc.tuple(fc.nat(2), fc.nat(1000), fc.nat(2 ** 40)), { maxLength: 40 }).map((steps) => {
  const records: JournalRecord[] = [];
  const live: string[] = [];
  let next = 0;
  for (const [kind, pick, size] of steps) {
    const id = live[pick % Math.max(live.length, 1)];
    if (kind === 0 || id === undefined) {
      const lease = leaseFor(next++);
      records.push({ v: 2, type: 'grant', lease });
      live.push(lease.id);
    } else if (kind === 1) {
      records.push({ v: 2, type: 'resize', id, memoryBytes: size, limitBytes: size + 1 });
    } else {
      records.push({ v: 2, type: 'release', id });
      live.splice(live.indexOf(id), 1);
    }
  }
  return records;
});

/** The model: what the records mean, applied in order. */
function model(records: JournalRecord[]): JournaledLease[] {
  const leases = new Map<string, JournaledLease>();
  for (const r of records) {
    if (r.type === 'grant') leases.set(r.lease.id, r.lease);
    else if (r.type === 'release') leases.delete(r.id);
    else leases.set(r.id, { ...leases.get(r.id)!, memoryBytes: r.memoryBytes, limitBytes: r.limitBytes });
  }
  return [...leases.values()];
}

test('any prefix of a valid journal replays to the records it holds whole', () => {
  fc.assert(fc.property(history, fc.nat(), (records, cutSeed) => {
    const lines = records.map(encode);
    const bytes = Buffer.concat(lines);
    const cut = bytes.length === 0 ? 0 : cutSeed % (bytes.length + 1);
    let whole = 0;
    let offset = 0;
    for (const l of lines) {
      if (offset + l.length > cut) break;
      offset += l.length;
      whole += 1;
    }
    const { leases, tornTail } = replay('j', bytes.subarray(0, cut));
    assert.deepEqual([...leases.values()], model(records.slice(0, whole)));
    assert.deepEqual(tornTail, cut === offset ? null : { line: whole + 1, bytes: cut - offset });
  }), { numRuns: 300 });
});

test('encode writes one line per record and replay reads back exactly what was encoded', () => {
  const lease = leaseFor(3);
  const line = encode({ v: 2, type: 'grant', lease });
  assert.equal(line.indexOf(0x0a), line.length - 1);
  assert.deepEqual(JSON.parse(line.toString('utf8')), { v: 2, type: 'grant', lease });
  assert.deepEqual([...replay('j', line).leases.values()], [lease]);
});

test('a version 2 grant keeps the lease\'s VFIO devices; a version 1 grant or a malformed device list is corrupt', () => {
  const devices = [{ address: '0000:00:03.0', cdev: 'vfio0' }, { address: '0000:00:04.0', cdev: 'vfio12' }];
  const lease = { ...leaseFor(4), devices };
  assert.deepEqual([...replay('j', encode({ v: 2, type: 'grant', lease })).leases.values()], [lease]);
  const line = (v: number, patch: Record<string, unknown>): Buffer => {
    const { bootId, ...rest } = leaseFor(5);
    return Buffer.from(`${JSON.stringify({ v, type: 'grant', lease: { ...rest, ...(v === 2 ? { bootId } : {}), ...patch } })}\n`);
  };
  for (const [v, patch] of [
    [1, { devices }], [2, { devices: [] }], [2, { devices: [{ address: '00:03.0', cdev: 'vfio0' }] }],
    [2, { devices: [{ address: '0000:00:03.0', cdev: '../../dev/mem' }] }], [2, { devices: [{ address: '0000:00:03.0' }] }],
  ] as const) {
    assert.throws(() => replay('j', line(v, patch)), (e: unknown) => e instanceof JournalCorrupt && e.line === 1, JSON.stringify([v, patch]));
  }
});

test('a lease whose name or pid could not have come from the broker is corrupt', () => {
  const bad = (patch: Partial<Record<keyof JournaledLease, unknown>>): Buffer =>
    Buffer.from(`${JSON.stringify({ v: 2, type: 'grant', lease: { ...leaseFor(1), ...patch } })}\n`);
  for (const patch of [{ name: '../etc' }, { targetPid: 0 }, { id: 'l-xyz' }, { createdAt: 'yesterday' },
    { previousLimit: { soft: -2, hard: 0 } }, { targetStartTime: '12a' }, { limitBytes: 2 ** 53 }]) {
    assert.throws(() => replay('j', bad(patch)), (e: unknown) => e instanceof JournalCorrupt && e.line === 1,
      JSON.stringify(patch));
  }
});
