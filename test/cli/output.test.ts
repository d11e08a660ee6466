// Human renderings: sizes formatted exactly, a table for list, absent values shown as '-',
// and nothing the broker sends can inject control characters.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatLease, formatLeaseTable, formatMemoryChange, formatRelease, formatResize, formatStatus, formatTable, printable } from '../../cli/output.ts';
import type { Lease, Status } from '../../protocol/methods.ts';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

function lease(over: Partial<Lease> = {}): Lease {
  return {
    id: 'l-0123456789abcdef', name: 'vm1', pid: 4242, uid: 107, ownerUid: 0,
    memoryBytes: 8 * GiB, limitBytes: 9 * GiB, accountingMode: 'process', deviceKind: 'iommufd',
    createdAt: '2026-01-02T03:04:05.000Z', ...over,
  };
}

test('a lease block shows sizes in binary units and who is limited', () => {
  const text = formatLease(lease({ requestId: 'req-1', pinnedBytes: 512 * MiB }));
  assert.match(text, /^lease: +l-0123456789abcdef$/m);
  assert.match(text, /^memory: +8 GiB$/m);
  assert.match(text, /^limit: +9 GiB \(RLIMIT_MEMLOCK of pid 4242\)$/m);
  assert.match(text, /^target: +pid 4242 \(uid 107\), asked for by uid 0$/m);
  assert.match(text, /^request id: +req-1$/m);
  assert.match(text, /^in use: +512 MiB pinned, - locked$/m);
  assert.ok(text.endsWith('\n'));
  assert.doesNotMatch(formatLease(lease()), /in use|request id|released/);
  assert.match(formatLease(lease({ releasedAt: '2026-01-01T00:00:00.000Z' })), /^released: +2026-01-01T00:00:00.000Z \(charged until pid 4242 exits\)$/m);
  assert.doesNotMatch(formatLease(lease()), /vfio device/);
  const held = formatLease(lease({ devices: [{ address: '0000:00:03.0', cdev: 'vfio0' }, { address: '0000:00:04.0', cdev: 'vfio1' }] }));
  assert.match(held, /^vfio device: +0000:00:03\.0 \(\/dev\/vfio\/devices\/vfio0, held until pid 4242 exits\)$/m);
  assert.match(held, /^vfio device: +0000:00:04\.0 \(\/dev\/vfio\/devices\/vfio1, held until pid 4242 exits\)$/m);
});

test('the lease table has a header, aligned columns, and - for unknown usage', () => {
  const text = formatLeaseTable([lease(), lease({ id: 'l-fedcba9876543210', name: 'a-much-longer-name', pid: 7, memoryBytes: 1536 * MiB, limitBytes: 2560 * MiB, pinnedBytes: 0 })]);
  const lines = text.trimEnd().split('\n');
  assert.equal(lines.length, 3);
  assert.match(lines[0] ?? '', /^LEASE +NAME +PID +UID +MEMORY +LIMIT +PINNED +DEVICE +CREATED$/);
  assert.match(lines[1] ?? '', /^l-0123456789abcdef +vm1 +4242 +107 +8 GiB +9 GiB +- +iommufd /);
  assert.match(lines[2] ?? '', /^l-fedcba9876543210 +a-much-longer-name +7 +107 +1.5 GiB +2.5 GiB +0 B +iommufd /);
  // columns line up: NAME starts at the same offset on every line
  const offsets = lines.map((l) => l.indexOf(l.includes('NAME') ? 'NAME' : l.includes('vm1') ? 'vm1' : 'a-much'));
  assert.equal(new Set(offsets).size, 1);
  assert.equal(formatLeaseTable([]), 'no leases\n');
});

test('formatTable pads every column but the last', () => {
  assert.equal(formatTable(['A', 'BB'], [['xxx', 'y'], ['z', 'wwww']]), 'A    BB\nxxx  y\nz    wwww\n');
});

test('status shows the budget in sizes and the capability plainly', () => {
  const status: Status = {
    version: '0.1.0',
    device: { kind: 'iommufd', path: '/dev/iommu', rlimitModeSupported: true, perFdLimitOption: false, note: 'ok' },
    capabilities: { sysResource: false, note: 'no CAP_SYS_RESOURCE' },
    budget: { totalBytes: 64 * GiB, usedBytes: 9 * GiB, freeBytes: 55 * GiB, releasedBytes: 0 },
    leases: 1, overheadBytes: GiB,
  };
  const text = formatStatus(status);
  assert.match(text, /^budget: +9 GiB used of 64 GiB \(55 GiB free\)$/m);
  assert.match(text, /^device: +iommufd at \/dev\/iommu$/m);
  assert.match(text, /^rlimit mode: +yes$/m);
  assert.match(text, /^per-fd limit: +no$/m);
  assert.match(text, /^CAP_SYS_RESOURCE: +no$/m);
  assert.match(text, /^overhead: +1 GiB per lease$/m);
  assert.doesNotMatch(text, /vfio devices/, 'an older broker that does not count devices');
  assert.match(formatStatus({ ...status, devicesHeld: 2 }), /^vfio devices: +2 held by leases$/m);
  const unprobed = formatStatus({ ...status, device: { ...status.device, rlimitModeSupported: null } });
  assert.match(unprobed, /^rlimit mode: +not probed$/m);
  assert.match(text, /^journal: +not reported by this broker$/m);
  assert.match(formatStatus({ ...status, journal: { healthy: true } }), /^journal: +healthy$/m);
  const degraded = formatStatus({ ...status, journal: { healthy: false, degradedSince: '2026-12-06T23:00:00.000Z', reason: 'write failed (ENOSPC)' } });
  assert.match(degraded, /^journal: +DEGRADED since 2026-12-06T23:00:00\.000Z: changes are refused until it recovers \(write failed \(ENOSPC\)\)$/m);
});

test('resize says from what to what; release says whether the limit came back', () => {
  assert.match(formatResize(lease({ limitBytes: 11 * GiB, memoryBytes: 10 * GiB }), 9 * GiB), /^limit of l-0123456789abcdef \(pid 4242\) changed from 9 GiB to 11 GiB$/m);
  assert.match(formatRelease('l-0123456789abcdef', true), /previous RLIMIT_MEMLOCK was restored/);
  assert.match(formatRelease('l-0123456789abcdef', false), /was not restored: a live target keeps the lease's limit, and the lease stays charged/);
});

test('control characters from the broker are escaped, not printed', () => {
  assert.equal(printable('a\u001b[2Jb\nc\u007f\u0085'), 'a\\x1b[2Jb\\x0ac\\x7f\\x85');
  const text = formatLease(lease({ createdAt: '\u001b[31mred\r' }));
  assert.ok(!/[\u0000-\u0009\u000b-\u001f]/.test(text), 'no control characters other than newlines');
  assert.match(text, /\\x1b\[31mred\\x0d/);
});

test('what unplug removed names QEMU\'s backend id (from its memdev path) with control characters escaped', () => {
  const text = formatMemoryChange({
    lease: lease(), previousLimitBytes: 2 * GiB, dimmId: 'dimm-0', backendId: '\u001b[2Kforged\nline', sizeBytes: 64 * 1024 ** 2,
  }, 'removed');
  assert.match(text, /^removed 64 MiB DIMM dimm-0 \(backend \\x1b\[2Kforged\\x0aline\)\n/);
});
