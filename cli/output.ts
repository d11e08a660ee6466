// Human-readable renderings of broker replies for iommufdctl (the --json output is the reply
// itself and does not come through here).
//
// Invariants:
// - Pure: values in, text out (every line ends with '\n'); no I/O.
// - Byte counts are shown with formatSize (exact binary units); a value the broker did not send
//   (pinned bytes of an unreadable /proc entry) is shown as '-', never as 0.
// - Text the broker sent (names, notes) and QEMU's (region names, a DIMM's backend id) is
//   printed with control characters escaped, so a hostile name cannot move the cursor or forge
//   table rows.
import type { Lease, Status } from '../protocol/methods.ts';
import { formatSize, formatSizeApprox } from '../shared/sizes.ts';
import { budgetBar, leaseBarRows } from './status-bars.ts';
import type { MemoryChange } from '../client/memory-hotplug.ts';
import type { PinnedEstimate } from '../client/qmp-sizing.ts';

/** Escapes C0/C1 controls and DEL (a name can only hold printable ASCII, but notes come from the daemon). */
export function printable(text: string): string {
  // eslint-disable-next-line no-control-regex
  return text.replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

function size(bytes: number | undefined): string {
  return bytes === undefined ? '-' : formatSize(bytes);
}

/** Rows of cells as aligned columns, two spaces apart; the last column is not padded. */
export function formatTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i] ?? 0))).join('  ').trimEnd())
    .join('\n') + '\n';
}

/** One lease, as a block of "key: value" lines (open, resize). */
export function formatLease(lease: Lease): string {
  const lines: [string, string][] = [
    ['lease', lease.id],
    ['name', printable(lease.name)],
    ['target', `pid ${lease.pid} (uid ${lease.uid}), asked for by uid ${lease.ownerUid}`],
    ['memory', formatSize(lease.memoryBytes)],
    ['limit', `${formatSize(lease.limitBytes)} (RLIMIT_MEMLOCK of pid ${lease.pid})`],
    ['accounting', `${lease.accountingMode} (${lease.deviceKind} device)`],
  ];
  if (lease.requestId !== undefined) lines.push(['request id', printable(lease.requestId)]);
  if (lease.releasedAt !== undefined) lines.push(['released', `${printable(lease.releasedAt)} (charged until pid ${lease.pid} exits)`]);
  for (const d of lease.devices ?? []) lines.push(['vfio device', `${d.address} (/dev/vfio/devices/${d.cdev}, held until pid ${lease.pid} exits)`]);
  if (lease.pinnedBytes !== undefined || lease.lockedBytes !== undefined) {
    lines.push(['in use', `${size(lease.pinnedBytes)} pinned, ${size(lease.lockedBytes)} locked`]);
  }
  lines.push(['created', printable(lease.createdAt)]);
  return keyValues(lines);
}

/** The list of leases as a table, or a sentence when there are none. */
export function formatLeaseTable(leases: readonly Lease[]): string {
  if (leases.length === 0) return 'no leases\n';
  const rows = leases.map((l) => [
    l.id, printable(l.name), String(l.pid), String(l.uid), formatSize(l.memoryBytes), formatSize(l.limitBytes),
    size(l.pinnedBytes), l.deviceKind, printable(l.createdAt),
  ]);
  return formatTable(['LEASE', 'NAME', 'PID', 'UID', 'MEMORY', 'LIMIT', 'PINNED', 'DEVICE', 'CREATED'], rows);
}

function yesNo(v: boolean | null): string {
  return v === null ? 'not probed' : v ? 'yes' : 'no';
}

function journalState(journal: Status['journal']): string {
  if (journal === undefined) return 'not reported by this broker';
  if (journal.healthy) return 'healthy';
  return `DEGRADED since ${printable(journal.degradedSince ?? '?')}: changes are refused until it recovers (${printable(journal.reason ?? '?')})`;
}

/**
 * The status block, with the budget drawn as a bar; given the leases the caller may see, also
 * one bar per lease of its target's pinned memory against its limit (status-bars.ts).
 */
export function formatStatus(status: Status, leases?: readonly Lease[]): string {
  const { device, capabilities, budget } = status;
  const block = keyValues([
    ['version', printable(status.version)],
    ['device', `${device.kind} at ${printable(device.path)}`],
    ['rlimit mode', yesNo(device.rlimitModeSupported)],
    ['per-fd limit', yesNo(device.perFdLimitOption)],
    ['device note', printable(device.note)],
    ['CAP_SYS_RESOURCE', capabilities.sysResource ? 'yes' : 'no'],
    ['capability note', printable(capabilities.note)],
    ['budget', `${formatSizeApprox(budget.usedBytes)} used of ${formatSizeApprox(budget.totalBytes)} (${formatSizeApprox(budget.freeBytes)} free)`],
    ['budget use', budgetBar(budget)],
    ['leases', String(status.leases)],
    ...(status.devicesHeld === undefined ? [] : [['vfio devices', `${status.devicesHeld} held by leases`] as [string, string]]),
    ['overhead', `${formatSize(status.overheadBytes)} per lease`],
    ['journal', journalState(status.journal)],
  ]);
  if (leases === undefined) return block;
  const hidden = status.leases - leases.length;
  const others = hidden > 0 ? `(${hidden} more lease${hidden === 1 ? '' : 's'} of other users not shown)\n` : '';
  if (leases.length === 0) return `${block}\nno leases you may see\n${others}`;
  return `${block}\npinned memory against each lease's limit:\n`
    + formatTable(['LEASE', 'NAME', 'PINNED / LIMIT', 'USE', 'SIZES'], leaseBarRows(leases, printable)) + others;
}

export function formatResize(lease: Lease, previousLimitBytes: number): string {
  return `limit of ${lease.id} (pid ${lease.pid}) changed from ${formatSize(previousLimitBytes)} to ${formatSize(lease.limitBytes)}\n` +
    formatLease(lease);
}

export function formatRelease(lease: string, limitRestored: boolean): string {
  return limitRestored
    ? `released ${lease}; the target's previous RLIMIT_MEMLOCK was restored\n`
    : `released ${lease}; the target's previous RLIMIT_MEMLOCK was not restored: a live target keeps the lease's limit, ` +
      'and the lease stays charged to the budget until the target exits\n';
}

function keyValues(lines: readonly (readonly [string, string])[]): string {
  const width = Math.max(...lines.map(([k]) => k.length)) + 1;
  return lines.map(([k, v]) => `${`${k}:`.padEnd(width)} ${v}`).join('\n') + '\n';
}

/** What hotplug added or unplug removed, and the limit change that came with it. */
export function formatMemoryChange(change: MemoryChange, what: 'added' | 'removed'): string {
  return `${what} ${formatSize(change.sizeBytes)} DIMM ${printable(change.dimmId)} (backend ${printable(change.backendId)})\n` +
    formatResize(change.lease, change.previousLimitBytes);
}

/** The QMP sizing: each region counted, the margin, and the size to lease. */
export function formatEstimate(estimate: PinnedEstimate): string {
  const rows = estimate.regions.map((r) => [printable(r.name), formatSize(r.mappedBytes), formatSize(r.blockBytes), formatSize(r.countedBytes)]);
  return formatTable(['REGION', 'MAPPED NOW', 'RAM BLOCKS', 'COUNTED'], rows) + keyValues([
    ['guest RAM', formatSize(estimate.guestRamBytes)],
    ['mapped now', `${formatSize(estimate.mappedBytes)} (what VFIO would pin at this moment)`],
    ['margin', formatSize(estimate.marginBytes)],
    ['estimate', `${formatSize(estimate.estimateBytes)} (the memory size to lease: --size-from-qmp)`],
  ]);
}
