// Status bars: proportional, never overstating or hiding, honest about unknown and over-limit
// usage, and laid out in the status block as aligned rows.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bar, BAR_WIDTH, budgetBar, leaseBarRows, percent } from '../../cli/status-bars.ts';
import { formatStatus, printable } from '../../cli/output.ts';
import type { Lease, Status } from '../../protocol/methods.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function lease(over: Partial<Lease> = {}): Lease {
  return {
    id: 'l-0123456789abcdef', name: 'vm1', pid: 4242, uid: 107, ownerUid: 0, memoryBytes: 8 * GiB, limitBytes: 9 * GiB,
    accountingMode: 'process', deviceKind: 'iommufd', createdAt: '2026-01-02T03:04:05.000Z', ...over,
  };
}

const STATUS: Status = {
  version: '0.1.0',
  device: { kind: 'iommufd', path: '/dev/iommu', rlimitModeSupported: true, perFdLimitOption: false, note: 'ok' },
  capabilities: { sysResource: true, note: 'c' },
  budget: { totalBytes: 64 * GiB, usedBytes: 16 * GiB, freeBytes: 48 * GiB, releasedBytes: 0 },
  leases: 3, overheadBytes: GiB,
};

const filled = (b: string): number => [...b].filter((c) => c === '#').length;

test('a bar is proportional and always BAR_WIDTH wide inside its brackets', () => {
  assert.equal(bar(0, 100), `[${'-'.repeat(BAR_WIDTH)}]`);
  assert.equal(bar(100, 100), `[${'#'.repeat(BAR_WIDTH)}]`);
  assert.equal(bar(1, 2, 10), '[#####-----]');
  assert.equal(bar(1, 4, 10), '[##--------]');
  for (const used of [0, 1, 33, 50, 99, 100]) assert.equal(bar(used, 100).length, BAR_WIDTH + 2);
});

test('a bar never hides a sliver nor fills up before the whole is used', () => {
  assert.equal(filled(bar(1, GiB)), 1, 'one byte of a GiB still shows');
  assert.equal(filled(bar(GiB - 1, GiB)), BAR_WIDTH - 1, 'one byte short of full is not full');
  assert.equal(filled(bar(3 * GiB, GiB)), BAR_WIDTH, 'over the whole: full, not longer');
  assert.equal(bar(0, 0, 4), '[----]', 'no total: an empty bar');
});

test('percentages round down, show a sliver as <1%, go past 100% when over, and are - without a total', () => {
  assert.equal(percent(0, 10), '0%');
  assert.equal(percent(1, 1000), '<1%');
  assert.equal(percent(999, 1000), '99%');
  assert.equal(percent(10, 10), '100%');
  assert.equal(percent(4, 3), '133%');
  assert.equal(percent(0, 0), '-');
  assert.equal(budgetBar({ totalBytes: 64 * GiB, usedBytes: 16 * GiB, freeBytes: 48 * GiB, releasedBytes: 0 }), `[${'#'.repeat(7)}${'-'.repeat(23)}]  25%`);
});

test('lease rows: pinned against limit, ? when unreadable, OVER LIMIT when a target pinned more', () => {
  const rows = leaseBarRows([
    lease({ pinnedBytes: 3 * GiB }),
    lease({ id: 'l-1111111111111111', name: 'big', limitBytes: 2 * GiB, pinnedBytes: 3 * GiB }),
    lease({ id: 'l-2222222222222222', name: 'gone' }),
  ], printable);
  assert.deepEqual(rows[0], ['l-0123456789abcdef', 'vm1', `[${'#'.repeat(10)}${'-'.repeat(20)}]`, '33%', '3 GiB of 9 GiB']);
  assert.deepEqual(rows[1], ['l-1111111111111111', 'big', `[${'#'.repeat(30)}]`, '150%', '3 GiB of 2 GiB OVER LIMIT']);
  assert.deepEqual(rows[2], ['l-2222222222222222', 'gone', `[${'?'.repeat(30)}]`, '?', '- of 9 GiB (pinned memory unreadable)']);
});

test('the status block shows the budget bar, an aligned row per lease, and how many leases are not shown', () => {
  const text = formatStatus(STATUS, [lease({ pinnedBytes: 512 * MiB }), lease({ id: 'l-1111111111111111', name: 'a-longer-name', limitBytes: 2 * GiB, pinnedBytes: 0 })]);
  assert.match(text, /^budget: +16 GiB used of 64 GiB \(48 GiB free\)$/m);
  assert.match(text, /^budget use: +\[#{7}-{23}\] +25%$/m);
  const lines = text.split('\n');
  const header = lines.findIndex((l) => l.startsWith('LEASE '));
  assert.ok(header > 0);
  const table = lines.slice(header, header + 3);
  assert.match(table[1] ?? '', /^l-0123456789abcdef +vm1 +\[#-{29}\] +5% +512 MiB of 9 GiB$/);
  assert.match(table[2] ?? '', /^l-1111111111111111 +a-longer-name +\[-{30}\] +0% +0 B of 2 GiB$/);
  assert.equal(new Set(table.map((l) => l.indexOf('['))).size, 2, 'bars start in one column (the header has none)');
  assert.equal(table[1]?.indexOf('['), table[2]?.indexOf('['));
  assert.match(text, /^\(1 more lease of other users not shown\)$/m);
  assert.ok(text.endsWith('\n'));
});

test('with no visible leases the block says so; without a lease list it is the plain block', () => {
  const none = formatStatus({ ...STATUS, leases: 0, budget: { totalBytes: 64 * GiB, usedBytes: 0, freeBytes: 64 * GiB, releasedBytes: 0 } }, []);
  assert.match(none, /\nno leases you may see\n$/);
  assert.doesNotMatch(none, /more lease/);
  const plain = formatStatus(STATUS);
  assert.doesNotMatch(plain, /LEASE|no leases/);
  assert.match(plain, /^budget use: /m);
});

test('a hostile lease name cannot inject control characters into the bars table', () => {
  const text = formatStatus({ ...STATUS, leases: 1 }, [lease({ name: 'x\u001b[2Jy', pinnedBytes: 0 })]);
  assert.ok(!/\u001b/.test(text));
  assert.match(text, /x\\x1b\[2Jy/);
});
