// Throughput and latency under load, C reference vs the daemon, driven by the same C client in
// the same run: Open/Release cycles at N clients with the journal on tmpfs or on disk, and
// Resize latency on one connection.
//
// Invariants:
// - Servers are interleaved round by round (the order flips every round), so a machine that
//   gets busier during the run hurts both alike; each figure is the median over rounds.
// - Every server starts fresh (its own dir, empty journal) and is stopped before the next.
// - Latencies come from the client's own sorted samples (microseconds, nearest rank).
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { STRIP, runJson, startDaemon, startRef, type Programs, type Server } from './servers.ts';

const MiB = 1024 ** 2;

export interface Percentiles { n: number; p50: number; p90: number; p99: number; max: number }

interface CycleRun { cycles: number; errors: number; cyclesPerSecond: number; openUs: Percentiles | null; releaseUs: Percentiles | null }
interface ResizeRun { count: number; errors: number; perSecond: number; resizeUs: Percentiles | null }

export interface CycleRow {
  storage: string;
  server: Server['kind'];
  clients: number;
  /** Medians over rounds. */
  cyclesPerSecond: number;
  openP50Us: number;
  openP99Us: number;
  releaseP50Us: number;
  releaseP99Us: number;
  errors: number;
  rounds: CycleRun[];
}

export interface ResizeRow {
  server: Server['kind'];
  perSecond: number;
  p50Us: number;
  p99Us: number;
  errors: number;
  rounds: ResizeRun[];
}

export function median(values: readonly number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}

const SERVERS: ReadonlyArray<Server['kind']> = ['c-ref', 'node'];

async function withServer<T>(programs: Programs, kind: Server['kind'], storageDir: string, body: (s: Server) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(storageDir, 'iommufd-bench-'));
  const state = join(dir, 'state');
  const server = kind === 'node' ? await startDaemon(programs, dir, state) : await startRef(programs, dir, dir, kind === 'c-ref-group');
  try {
    return await body(server);
  } finally {
    await server.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

export interface CycleOptions {
  storage: string;
  /** Which servers, in the order of odd rounds (even rounds reverse it). */
  servers: ReadonlyArray<Server['kind']>;
  storageDir: string;
  clients: readonly number[];
  rounds: number;
  seconds: number;
  warmupSeconds: number;
  progress: (line: string) => void;
}

/** Open+Release cycles (connect, Open for itself, fd back, Release, close) per client process. */
export async function cycles(programs: Programs, o: CycleOptions): Promise<CycleRow[]> {
  const runs = new Map<string, CycleRun[]>();
  for (let round = 0; round < o.rounds; round++) {
    for (const clients of o.clients) {
      const order = round % 2 === 0 ? o.servers : [...o.servers].reverse();
      for (const kind of order) {
        const run = await withServer(programs, kind, o.storageDir, (s) => runJson<CycleRun>([...STRIP, programs.load, 'cycle',
          s.socket, String(clients), String(o.seconds), String(o.warmupSeconds), String(1 * MiB)]));
        const key = `${kind}/${clients}`;
        runs.set(key, [...(runs.get(key) ?? []), run]);
        o.progress(`  ${o.storage} round ${round + 1}/${o.rounds}: ${kind} x${clients}: ${run.cyclesPerSecond.toFixed(0)} cycles/s, `
          + `Open p50 ${run.openUs?.p50 ?? '-'} us p99 ${run.openUs?.p99 ?? '-'} us, errors ${run.errors}`);
      }
    }
  }
  return [...runs].map(([key, rs]) => {
    const [server, clients] = key.split('/') as [Server['kind'], string];
    return {
      storage: o.storage, server, clients: Number(clients),
      cyclesPerSecond: median(rs.map((r) => r.cyclesPerSecond)),
      openP50Us: median(rs.map((r) => r.openUs?.p50 ?? Number.NaN)),
      openP99Us: median(rs.map((r) => r.openUs?.p99 ?? Number.NaN)),
      releaseP50Us: median(rs.map((r) => r.releaseUs?.p50 ?? Number.NaN)),
      releaseP99Us: median(rs.map((r) => r.releaseUs?.p99 ?? Number.NaN)),
      errors: rs.reduce((sum, r) => sum + r.errors, 0),
      rounds: rs,
    };
  });
}

/**
 * Resize latency: one connection lowers its own lease a page at a time (a raise needs
 * CAP_SYS_RESOURCE, which this host lacks; a lowering does the same syscalls and fsync).
 */
export async function resizes(programs: Programs, o: { rounds: number; count: number; storageDir: string; progress: (l: string) => void }): Promise<ResizeRow[]> {
  const runs = new Map<Server['kind'], ResizeRun[]>();
  for (let round = 0; round < o.rounds; round++) {
    for (const kind of round % 2 === 0 ? SERVERS : [...SERVERS].reverse()) {
      const run = await withServer(programs, kind, o.storageDir, (s) => runJson<ResizeRun>([...STRIP, programs.load, 'resize',
        s.socket, String(o.count), String(6 * MiB)]));
      runs.set(kind, [...(runs.get(kind) ?? []), run]);
      o.progress(`  resize round ${round + 1}/${o.rounds}: ${kind}: ${run.perSecond.toFixed(0)}/s, p50 ${run.resizeUs?.p50 ?? '-'} us, p99 ${run.resizeUs?.p99 ?? '-'} us`);
    }
  }
  return [...runs].map(([server, rs]) => ({
    server,
    perSecond: median(rs.map((r) => r.perSecond)),
    p50Us: median(rs.map((r) => r.resizeUs?.p50 ?? Number.NaN)),
    p99Us: median(rs.map((r) => r.resizeUs?.p99 ?? Number.NaN)),
    errors: rs.reduce((sum, r) => sum + r.errors, 0),
    rounds: rs,
  }));
}
