// What a benchmark run found: the tables printed at the end, and the goals checked
// against the measured figures (met / missed / not measured), never against hopes.
//
// Invariants: pure formatting of a BenchResults value; a goal whose inputs were not measured in
// this run says so instead of passing or failing.
import type { ColdRow, ManyLeasesResult } from './lifecycle-scenarios.ts';
import type { CycleRow, ResizeRow } from './load-scenarios.ts';

const MB = 1_000_000;

export interface BenchResults {
  startedAt: string;
  machine: { cpus: number; kernel: string; node: string; loadAverageBefore: number[]; loadAverageAfter: number[] };
  config: Record<string, unknown>;
  cycles: CycleRow[];
  resizes: ResizeRow[];
  coldStarts: ColdRow[];
  cliStarts: ColdRow[];
  manyLeases: ManyLeasesResult | null;
}

export interface Goal { goal: string; measured: string; verdict: 'met' | 'missed' | 'not measured' }

function row(cycles: CycleRow[], storage: string, server: string, clients: number): CycleRow | undefined {
  return cycles.find((c) => c.storage === storage && c.server === server && c.clients === clients);
}

/**
 * The C reference the daemon is compared with: the one with the same journal design. On disk
 * that is c-ref-group (the daemon group-commits too); on tmpfs, where a sync costs nothing, c-ref.
 */
function reference(cycles: CycleRow[], storage: string, clients: number): CycleRow | undefined {
  return (storage === 'disk' ? row(cycles, storage, 'c-ref-group', clients) : undefined) ?? row(cycles, storage, 'c-ref', clients);
}

export function goals(r: BenchResults): Goal[] {
  const out: Goal[] = [];
  const verdict = (ok: boolean): Goal['verdict'] => (ok ? 'met' : 'missed');
  for (const storage of ['tmpfs', 'disk']) {
    const node = row(r.cycles, storage, 'node', 16);
    const c = reference(r.cycles, storage, 16);
    if (node !== undefined && c !== undefined) {
      const ratio = node.cyclesPerSecond / c.cyclesPerSecond;
      out.push({ goal: `>= 0.6x the C reference throughput (16 clients, journal on ${storage}, vs ${c.server})`, measured: `${ratio.toFixed(2)}x`, verdict: verdict(ratio >= 0.6) });
    }
    if (node !== undefined) {
      out.push({ goal: `p99 Open < 2 ms at 16 clients (journal on ${storage})`, measured: `${(node.openP99Us / 1000).toFixed(2)} ms`, verdict: verdict(node.openP99Us < 2000) });
    }
  }
  const nodeE0 = r.coldStarts.find((c) => c.what.startsWith('node -e 0'));
  const activated = r.coldStarts.find((c) => c.what.includes('socket-activated'));
  if (nodeE0 !== undefined && activated !== undefined) {
    const ratio = activated.medianMs / nodeE0.medianMs;
    out.push({ goal: 'cold first reply <= 3x node -e 0 (socket-activated)', measured: `${ratio.toFixed(2)}x (${activated.medianMs.toFixed(0)} vs ${nodeE0.medianMs.toFixed(0)} ms)`, verdict: verdict(ratio <= 3) });
  } else {
    out.push({ goal: 'cold first reply <= 3x node -e 0', measured: '-', verdict: 'not measured' });
  }
  const cliNode = r.cliStarts.find((c) => c.what.startsWith('node -e 0'));
  const cli = r.cliStarts.find((c) => c.what.startsWith('iommufdctl'));
  if (cliNode !== undefined && cli !== undefined) {
    const ratio = cli.medianMs / cliNode.medianMs;
    out.push({ goal: 'iommufdctl --help <= 2x node -e 0 (issue #11)', measured: `${ratio.toFixed(2)}x (${cli.medianMs.toFixed(0)} vs ${cliNode.medianMs.toFixed(0)} ms)`, verdict: verdict(ratio <= 2) });
  } else {
    out.push({ goal: 'iommufdctl --help <= 2x node -e 0 (issue #11)', measured: '-', verdict: 'not measured' });
  }
  const m = r.manyLeases;
  if (m !== null) {
    const scaled = m.granted === 10_000 ? '' : ` (at ${m.granted} leases, not 10,000)`;
    out.push({ goal: `RSS <= 80 MB at 10k leases${scaled}`, measured: `${(m.rssWithLeasesBytes / MB).toFixed(1)} MB`, verdict: verdict(m.rssWithLeasesBytes <= 80 * MB) });
    out.push({ goal: `durable Open >= 2,000/s at ${m.parallel} managers (journal on disk, pure Opens)`, measured: `${m.grantsPerSecond.toFixed(0)}/s`, verdict: verdict(m.grantsPerSecond >= 2000) });
  } else {
    out.push({ goal: 'RSS <= 80 MB at 10k leases; durable Open >= 2,000/s', measured: '-', verdict: 'not measured' });
  }
  return out;
}

function table(head: string[], rows: string[][]): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => `| ${cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join(' | ')} |`;
  return [line(head), line(widths.map((w) => '-'.repeat(w))), ...rows.map(line)].join('\n');
}

const us = (v: number): string => (Number.isNaN(v) ? '-' : `${v.toFixed(0)}`);

/** The whole report as markdown tables (also what docs/PERFORMANCE.md quotes). */
export function render(r: BenchResults): string {
  const parts: string[] = [];
  parts.push(`Run ${r.startedAt}: ${r.machine.cpus} CPUs, Linux ${r.machine.kernel}, Node ${r.machine.node}, `
    + `load average before ${r.machine.loadAverageBefore.map((x) => x.toFixed(2)).join(' ')}, after ${r.machine.loadAverageAfter.map((x) => x.toFixed(2)).join(' ')}`);
  if (r.cycles.length > 0) {
    const rows = r.cycles.map((c) => {
      const ref = reference(r.cycles, c.storage, c.clients);
      const ratio = c.server === 'node' && ref !== undefined ? `${(c.cyclesPerSecond / ref.cyclesPerSecond).toFixed(2)}x` : '';
      return [c.storage, c.server, String(c.clients), c.cyclesPerSecond.toFixed(0), ratio, us(c.openP50Us), us(c.openP99Us),
        us(c.releaseP50Us), us(c.releaseP99Us), String(c.errors)];
    });
    parts.push('Open+Release cycles (connect, Open for itself, fd back, Release, close), medians over rounds;\n'
      + '"vs C" is against the reference with the same journal design (on disk: c-ref-group):\n'
      + table(['journal', 'server', 'clients', 'cycles/s', 'vs C', 'Open p50 us', 'Open p99 us', 'Release p50 us', 'Release p99 us', 'errors'], rows));
  }
  if (r.resizes.length > 0) {
    parts.push('Resize (one connection, lowering a page at a time), medians over rounds:\n'
      + table(['server', 'resizes/s', 'p50 us', 'p99 us', 'errors'], r.resizes.map((x) => [x.server, x.perSecond.toFixed(0), us(x.p50Us), us(x.p99Us), String(x.errors)])));
  }
  if (r.coldStarts.length > 0) {
    parts.push('Cold start, medians:\n' + table(['what', 'median ms', 'runs ms'],
      r.coldStarts.map((c) => [c.what, c.medianMs.toFixed(0), c.runsMs.map((x) => x.toFixed(0)).join(' ')])));
  }
  if (r.cliStarts.length > 0) {
    parts.push('CLI start (spawn to exit), medians:\n' + table(['what', 'median ms', 'runs ms'],
      r.cliStarts.map((c) => [c.what, c.medianMs.toFixed(0), c.runsMs.map((x) => x.toFixed(0)).join(' ')])));
  }
  const m = r.manyLeases;
  if (m !== null) {
    parts.push('Many live leases (one idle process each, journal on disk):\n' + table(['measure', 'value'], [
      ['leases granted / requested', `${m.granted} / ${m.requested} (errors ${m.errors})`],
      [`time to grant them (${m.parallel} managers at once)`, `${m.grantSeconds.toFixed(1)} s = ${m.grantsPerSecond.toFixed(0)} Opens/s`],
      ['daemon RSS idle -> with the leases', `${(m.rssIdleBytes / MB).toFixed(1)} MB -> ${(m.rssWithLeasesBytes / MB).toFixed(1)} MB`],
      ['restart (SIGTERM, start, restore, first reply)', `${m.restartMs.toFixed(0)} ms, ${m.leasesAfterRestart} leases re-adopted`],
      ['daemon RSS after the restart', `${(m.rssAfterRestartBytes / MB).toFixed(1)} MB`],
      ['all targets killed -> all leases released', `${m.releaseSeconds.toFixed(1)} s`],
    ]));
  }
  parts.push('Goals (issue #5):\n' + table(['goal', 'measured', 'verdict'], goals(r).map((g) => [g.goal, g.measured, g.verdict])));
  return `${parts.join('\n\n')}\n`;
}
