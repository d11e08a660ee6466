// `npm run bench`: the benchmarks of issue #5 (not tests). Builds the C reference broker and the
// C load client, runs every scenario, prints the tables and the goals, and writes everything
// (every round, not just medians) as JSON to bench/results/.
//
// Invariants:
// - Nothing here asserts: a missed goal is reported, and the exit status is 0 unless a
//   scenario could not run at all (then 1, with the reason).
// - Scenarios run one after another, never overlapping; each cleans up its processes and dirs.
// - The figures depend on the machine and on whatever else runs on it: the load average before
//   and after is part of the result.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { cliStarts, coldStarts, manyLeases } from './lifecycle-scenarios.ts';
import { cycles, resizes } from './load-scenarios.ts';
import { render, type BenchResults } from './report.ts';
import { REPO, buildPrograms } from './servers.ts';

const SCENARIOS = ['cycles', 'durable', 'resize', 'cold', 'cli', 'leases'] as const;
type Scenario = (typeof SCENARIOS)[number];

const USAGE = `usage: npm run bench -- [options]
  --only LIST       comma-separated scenarios (default all): ${SCENARIOS.join(',')}
  --seconds N       measured seconds per cycle run (default 5), after --warmup N (default 1)
  --rounds N        rounds per load scenario, servers interleaved (default 3)
  --clients LIST    client counts for the cycle scenarios (default 1,16)
  --resizes N       Resizes per resize run (default 1000, at most 1500)
  --cold-runs N     runs per cold-start kind, and of the cli scenario (default 10)
  --leases N        live leases for the scale scenario (default 10000)
  --managers N      managers opening them at once (default 16)
  --tmpfs-dir DIR   journal dir for the non-durable runs (default /dev/shm)
  --disk-dir DIR    journal dir for the durable runs (default the OS temp dir; must be a disk)
  --out FILE        JSON results (default bench/results/<time>.json)`;

function num(text: string | undefined, fallback: number, name: string): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got "${text}"`);
  return n;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' }, seconds: { type: 'string' }, warmup: { type: 'string' }, rounds: { type: 'string' },
      clients: { type: 'string' }, resizes: { type: 'string' }, 'cold-runs': { type: 'string' }, leases: { type: 'string' },
      managers: { type: 'string' }, 'tmpfs-dir': { type: 'string' }, 'disk-dir': { type: 'string' }, out: { type: 'string' },
      help: { type: 'boolean' },
    },
  });
  if (values.help === true) { process.stdout.write(`${USAGE}\n`); return; }
  const only = new Set<Scenario>((values.only ?? SCENARIOS.join(',')).split(',').map((s) => {
    if (!(SCENARIOS as readonly string[]).includes(s)) throw new Error(`unknown scenario "${s}"; known: ${SCENARIOS.join(', ')}`);
    return s as Scenario;
  }));
  const config = {
    seconds: num(values.seconds, 5, 'seconds'), warmup: num(values.warmup, 1, 'warmup'), rounds: num(values.rounds, 3, 'rounds'),
    clients: (values.clients ?? '1,16').split(',').map((c) => num(c, 1, 'clients')),
    resizes: Math.min(1500, num(values.resizes, 1000, 'resizes')), coldRuns: num(values['cold-runs'], 10, 'cold-runs'),
    leases: num(values.leases, 10_000, 'leases'), managers: num(values.managers, 16, 'managers'),
    tmpfsDir: values['tmpfs-dir'] ?? '/dev/shm', diskDir: values['disk-dir'] ?? tmpdir(), scenarios: [...only],
  };
  const progress = (line: string): void => { process.stderr.write(`${line}\n`); };
  progress('bench: building the C programs');
  const programs = buildPrograms();
  const results: BenchResults = {
    startedAt: new Date().toISOString(),
    machine: { cpus: cpus().length, kernel: release(), node: process.version, loadAverageBefore: loadavg(), loadAverageAfter: [] },
    config, cycles: [], resizes: [], coldStarts: [], cliStarts: [], manyLeases: null,
  };
  const common = { clients: config.clients, rounds: config.rounds, seconds: config.seconds, warmupSeconds: config.warmup, progress };
  if (only.has('cycles')) {
    progress('bench: Open+Release cycles, journal on tmpfs');
    results.cycles.push(...await cycles(programs, { ...common, storage: 'tmpfs', storageDir: config.tmpfsDir, servers: ['c-ref', 'node'] }));
  }
  if (only.has('durable')) {
    progress('bench: Open+Release cycles, journal on disk (durable)');
    results.cycles.push(...await cycles(programs, {
      ...common, storage: 'disk', storageDir: config.diskDir, servers: ['c-ref', 'c-ref-group', 'node'],
    }));
  }
  if (only.has('resize')) {
    progress('bench: Resize latency (journal on disk)');
    results.resizes = await resizes(programs, { rounds: config.rounds, count: config.resizes, storageDir: config.diskDir, progress });
  }
  if (only.has('cold')) {
    progress('bench: cold start');
    results.coldStarts = await coldStarts(programs, { runs: config.coldRuns, progress });
  }
  if (only.has('cli')) {
    progress('bench: iommufdctl --help against node -e 0');
    results.cliStarts = await cliStarts({ runs: config.coldRuns, progress });
  }
  if (only.has('leases')) {
    progress(`bench: ${config.leases} live leases`);
    results.manyLeases = await manyLeases(programs, { leases: config.leases, parallel: config.managers, storageDir: config.diskDir, progress });
  }
  results.machine.loadAverageAfter = loadavg();
  const out = values.out ?? join(REPO, 'bench', 'results', `${results.startedAt.replace(/[:.]/g, '-')}.json`);
  mkdirSync(join(out, '..'), { recursive: true });
  writeFileSync(out, `${JSON.stringify(results, null, 2)}\n`);
  process.stdout.write(render(results));
  process.stdout.write(`\nresults: ${out}\n`);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n${USAGE}\n`);
  process.exit(1);
});
