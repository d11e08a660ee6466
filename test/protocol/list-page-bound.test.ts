// A List page can never exceed the reply cap: the longest lease the schemas allow, MAX_LIST_LIMIT
// times over, with the longest cursor, still encodes under MAX_REPLY_FRAME_BYTES. The maxima
// are taken from the schemas themselves (one character more is refused), not assumed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { encodeReply } from '../../protocol/encode.ts';
import { MAX_REPLY_FRAME_BYTES } from '../../protocol/framing.ts';
import {
  DEFAULT_LIST_LIMIT, LIST_CURSOR_PATTERN, Lease, MAX_BYTES, MAX_DEVICES_PER_LEASE, MAX_LIST_LIMIT, MAX_REQUEST_ID_LENGTH, brokerMethods,
} from '../../protocol/methods.ts';

/** The most bytes JSON.stringify makes of one UTF-16 code unit, over all of them. */
function maxJsonBytesPerCodeUnit(): number {
  let most = 0;
  for (let c = 0; c <= 0xffff; c++) {
    most = Math.max(most, Buffer.byteLength(JSON.stringify(String.fromCharCode(c)), 'utf8') - 2);
  }
  return most;
}

/** The longest string `accepts` takes when built by repeating `unit` (at most `probe` units). */
function longest(unit: string, accepts: (s: string) => boolean, probe = 4096): string {
  let n = 0;
  while (n < probe && accepts(unit.repeat(n + 1))) n++;
  assert.ok(n < probe, 'the schema bounds the length');
  return unit.repeat(n);
}

const worstControl = '\u0001'; // JSON escapes it as \u0001: 6 bytes for one code unit
const longestInt = String(-Number.MAX_SAFE_INTEGER); // z.number().int() is a safe integer

function worstLease(): Record<string, unknown> {
  const shape = Lease.shape;
  const name = `a${longest('a', (s) => shape.name.safeParse(`a${s}`).success)}`;
  const requestId = longest(worstControl, (s) => shape.requestId.safeParse(s).success);
  const lease = {
    id: 'l-ffffffffffffffff',
    name,
    pid: -Number.MAX_SAFE_INTEGER, uid: -Number.MAX_SAFE_INTEGER, ownerUid: -Number.MAX_SAFE_INTEGER,
    memoryBytes: MAX_BYTES, limitBytes: MAX_BYTES,
    accountingMode: [...shape.accountingMode.options].sort((a, b) => b.length - a.length)[0],
    deviceKind: [...shape.deviceKind.options].sort((a, b) => b.length - a.length)[0],
    requestId,
    createdAt: '2026-11-25T11:40:00.000Z',
    pinnedBytes: MAX_BYTES, lockedBytes: MAX_BYTES,
    devices: Array.from({ length: MAX_DEVICES_PER_LEASE }, (_, i) => ({ address: `ffff:ff:1f.${i}`, cdev: `vfio${'9'.repeat(10)}` })),
  };
  assert.equal(Lease.safeParse(lease).success, true, 'the worst lease is one the schema accepts');
  return lease;
}

test('every string field of a Lease has a bound the schema enforces', () => {
  const lease = worstLease();
  assert.equal(maxJsonBytesPerCodeUnit(), 6, 'no code unit takes more than 6 JSON bytes');
  assert.equal((lease['name'] as string).length, 128);
  assert.equal((lease['requestId'] as string).length, MAX_REQUEST_ID_LENGTH);
  assert.equal(Buffer.byteLength(JSON.stringify(lease['requestId'])), 6 * MAX_REQUEST_ID_LENGTH + 2);
  const longer: Record<string, unknown>[] = [
    { name: `${lease['name'] as string}a` },
    { requestId: `${lease['requestId'] as string}${worstControl}` },
    { id: 'l-ffffffffffffffff0' },
    { createdAt: '2026-11-25T11:40:00.0000Z' },
    { pid: -Number.MAX_SAFE_INTEGER - 2 },
    { memoryBytes: MAX_BYTES + 2 },
    { devices: [...(lease['devices'] as object[]), { address: '0000:00:00.0', cdev: 'vfio0' }] },
    { devices: [{ address: 'ffff:ff:1f.70', cdev: 'vfio0' }] },
    { devices: [{ address: 'ffff:ff:1f.7', cdev: `vfio${'9'.repeat(11)}` }] },
  ];
  for (const over of longer) assert.equal(Lease.safeParse({ ...lease, ...over }).success, false, JSON.stringify(Object.keys(over)));
  assert.equal(longestInt.length, 17);
});

test(`a page of ${MAX_LIST_LIMIT} of the longest leases, with the longest cursor, fits the ${MAX_REPLY_FRAME_BYTES}-byte reply cap`, () => {
  const next = `-${'9'.repeat(15)}/l-ffffffffffffffff`;
  assert.match(next, LIST_CURSOR_PATTERN);
  assert.doesNotMatch(`-${'9'.repeat(16)}/l-ffffffffffffffff`, LIST_CURSOR_PATTERN, 'the cursor is bounded too');
  const lease = worstLease();
  const reply = { leases: Array.from({ length: MAX_LIST_LIMIT }, () => lease), next };
  assert.equal(brokerMethods.List.reply.safeParse(reply).success, true);
  const bytes = encodeReply(reply).length;
  assert.ok(bytes <= MAX_REPLY_FRAME_BYTES, `${bytes} bytes`);
  const perLease = Buffer.byteLength(JSON.stringify(lease)) + 1;
  // Room to spare: the cap would hold several times as many.
  assert.ok(perLease * MAX_LIST_LIMIT * 4 < MAX_REPLY_FRAME_BYTES, `${perLease} bytes per lease`);
  assert.ok(DEFAULT_LIST_LIMIT >= 1 && DEFAULT_LIST_LIMIT <= MAX_LIST_LIMIT);
  const limit = brokerMethods.List.parameters.shape.limit;
  assert.equal(limit.safeParse(MAX_LIST_LIMIT).success, true);
  assert.equal(limit.safeParse(MAX_LIST_LIMIT + 1).success, false, 'no call can ask for a bigger page');
});

test('docs/PROTOCOL.md states the page limits the code has', () => {
  const doc = readFileSync(new URL('../../docs/PROTOCOL.md', import.meta.url), 'utf8');
  const row = doc.split('\n').find((l) => l.startsWith('| `limit` |')) ?? '';
  assert.match(row, new RegExp(`1-${MAX_LIST_LIMIT}; default ${DEFAULT_LIST_LIMIT}`));
});
