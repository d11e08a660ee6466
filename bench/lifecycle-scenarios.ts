// Start-up and scale: cold start to the first reply (socket-activated and self-bound) against
// `node -e 0`, and the daemon holding many live leases: its RSS, how long it takes to grant
// them, to restart with them all journaled, and to release them when their targets exit.
//
// Invariants:
// - Times are taken on one clock: Node's hrtime and the C client's CLOCK_MONOTONIC are the same
//   clock, so "first reply" is the client's reply instant minus our spawn instant.
// - Many-leases targets are real processes (bench/hold-targets.c, capability-less, our uid):
//   one lease per process, as the broker requires. Their holder is ended on every path, and
//   they die with it (PR_SET_PDEATHSIG).
// - Every directory made here is removed before returning.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { BrokerClient } from '../client/index.ts';
import { median } from './load-scenarios.ts';
import { DAEMON, REPO, STRIP, exitOf, runJson, startDaemon, timeToExit, type Programs, type Server } from './servers.ts';

const MiB = 1024 ** 2;

export interface ColdRow { what: string; medianMs: number; runsMs: number[] }

function rssBytes(pid: number): number {
  const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  return Number(kb ?? Number.NaN) * 1024;
}

async function firstReplyMs(programs: Programs, socket: string, t0: bigint): Promise<number> {
  const r = await runJson<{ monotonicNs: number }>([programs.load, 'first-reply', socket, '60000']);
  return (r.monotonicNs - Number(t0)) / 1e6;
}

/** Spawns the daemon itself (binds its socket) and times the first reply. */
async function coldDirect(programs: Programs, dir: string): Promise<number> {
  const socket = join(dir, 'direct.sock');
  const t0 = process.hrtime.bigint();
  const child = spawn(DAEMON, ['--socket', socket, '--state-dir', join(dir, 'state-direct'), '--device', 'simulated'],
    { stdio: 'ignore', cwd: REPO });
  try {
    return await firstReplyMs(programs, socket, t0);
  } finally {
    child.kill('SIGTERM');
    await exitOf(child);
  }
}

/**
 * systemd-socket-activate binds the socket and execs the daemon on the first connection, as
 * systemd does. (The simulated device is refused under activation, so the device is a path
 * that does not exist: the daemon still serves, GetInfo answers.)
 */
async function coldActivated(programs: Programs, dir: string): Promise<number> {
  const socket = join(dir, 'activated.sock');
  const child = spawn('systemd-socket-activate', ['-l', socket, '--fdname=broker', '--', DAEMON, '--socket', socket,
    '--state-dir', join(dir, 'state-activated'), '--device', join(dir, 'no-iommu')], { stdio: ['ignore', 'ignore', 'pipe'], cwd: REPO });
  try {
    const lines = createInterface({ input: child.stderr as NodeJS.ReadableStream });
    await new Promise<void>((resolve, reject) => {
      lines.on('line', (l) => { if (l.includes('Listening on')) resolve(); });
      child.once('exit', (code) => reject(new Error(`systemd-socket-activate exited ${String(code)}`)));
    });
    const t0 = process.hrtime.bigint();
    return await firstReplyMs(programs, socket, t0);
  } finally {
    child.kill('SIGTERM');
    await exitOf(child);
  }
}

async function coldRef(programs: Programs, dir: string): Promise<number> {
  const socket = join(dir, 'ref.sock');
  const t0 = process.hrtime.bigint();
  const child = spawn(programs.ref, [socket, dir], { stdio: 'ignore' });
  try {
    return await firstReplyMs(programs, socket, t0);
  } finally {
    child.kill('SIGTERM');
    await exitOf(child);
  }
}

export async function coldStarts(programs: Programs, o: { runs: number; progress: (l: string) => void }): Promise<ColdRow[]> {
  const kinds: Array<[string, (dir: string) => Promise<number>]> = [
    ['node -e 0 (spawn to exit)', async () => (await timeToExit([process.execPath, '-e', '0'])) / 1e6],
    ['daemon, socket-activated (connect to first reply)', (dir) => coldActivated(programs, dir)],
    ['daemon, binds its own socket (spawn to first reply)', (dir) => coldDirect(programs, dir)],
    ['C reference (spawn to first reply)', (dir) => coldRef(programs, dir)],
  ];
  const runs = new Map<string, number[]>();
  for (let i = 0; i < o.runs; i++) {
    for (const [what, run] of kinds) {
      const dir = mkdtempSync(join(tmpdir(), 'iommufd-bench-cold-'));
      try {
        runs.set(what, [...(runs.get(what) ?? []), await run(dir)]);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
    o.progress(`  cold start run ${i + 1}/${o.runs}: ${[...runs].map(([w, r]) => `${w.split(' (')[0]} ${(r.at(-1) ?? 0).toFixed(0)} ms`).join(', ')}`);
  }
  return [...runs].map(([what, runsMs]) => ({ what, medianMs: median(runsMs), runsMs }));
}

/**
 * The CLI's start (issue #11): `iommufdctl --help` from its bundle against `node -e 0`, spawn to
 * exit, interleaved so both see the same load. Under TCG every VM start pays this per call.
 */
export async function cliStarts(o: { runs: number; progress: (l: string) => void }): Promise<ColdRow[]> {
  const kinds: Array<[string, readonly string[]]> = [
    ['node -e 0 (spawn to exit)', [process.execPath, '-e', '0']],
    ['iommufdctl --help (spawn to exit)', [join(REPO, 'bin', 'iommufdctl'), '--help']],
  ];
  const runs = new Map<string, number[]>();
  for (let i = 0; i < o.runs; i++) {
    for (const [what, argv] of kinds) runs.set(what, [...(runs.get(what) ?? []), (await timeToExit(argv)) / 1e6]);
  }
  o.progress(`  cli: ${[...runs].map(([w, r]) => `${w.split(' (')[0]} median ${median(r).toFixed(0)} ms`).join(', ')}`);
  return [...runs].map(([what, runsMs]) => ({ what, medianMs: median(runsMs), runsMs }));
}

export interface ManyLeasesResult {
  requested: number;
  granted: number;
  errors: number;
  /** Managers opening at once (each its own connection and share of the targets). */
  parallel: number;
  grantSeconds: number;
  grantsPerSecond: number;
  rssIdleBytes: number;
  rssWithLeasesBytes: number;
  restartMs: number;
  leasesAfterRestart: number;
  rssAfterRestartBytes: number;
  releaseSeconds: number;
}

/** N live leases on N idle processes, journal on disk (storageDir): durable Opens at scale. */
export async function manyLeases(programs: Programs, o: { leases: number; parallel: number; storageDir: string; progress: (l: string) => void }): Promise<ManyLeasesResult> {
  const dir = mkdtempSync(join(o.storageDir, 'iommufd-bench-leases-'));
  const holder = spawn(STRIP[0], [...STRIP.slice(1), programs.hold, String(o.leases)], { stdio: ['pipe', 'pipe', 'inherit'] });
  let server: Server | undefined;
  try {
    const pids: string[] = [];
    const lines = createInterface({ input: holder.stdout as NodeJS.ReadableStream });
    await new Promise<void>((resolve, reject) => {
      lines.on('line', (l) => { if (l === 'ready') resolve(); else pids.push(l); });
      holder.once('exit', (code) => reject(new Error(`hold-targets exited ${String(code)}`)));
    });
    o.progress(`  ${pids.length} target processes up`);
    const state = join(dir, 'state');
    const first = await startDaemon(programs, dir, state);
    server = first;
    const rssIdleBytes = rssBytes(first.pid);
    // `parallel` managers at once, each naming its own share of the targets by pidfd.
    const shares = Array.from({ length: o.parallel }, (_, i) => pids.filter((_p, j) => j % o.parallel === i));
    const tOpen = process.hrtime.bigint();
    const opened = await Promise.all(shares.map((share) => runJson<{ opens: number; errors: number }>(
      [programs.load, 'open-pids', first.socket, String(1 * MiB)], `${share.join('\n')}\n`)));
    const grantSeconds = Number(process.hrtime.bigint() - tOpen) / 1e9;
    const errors = opened.reduce((sum, r) => sum + r.errors, 0);
    const granted = await leaseCount(first.socket);
    const rssWithLeasesBytes = rssBytes(first.pid);
    o.progress(`  ${granted} leases granted in ${grantSeconds.toFixed(1)} s by ${o.parallel} managers; daemon RSS ${(rssWithLeasesBytes / MiB).toFixed(1)} MiB`);

    await first.stop('SIGTERM');
    const t0 = process.hrtime.bigint();
    const second = await startDaemon(programs, dir, state);
    server = second;
    const restartMs = Number(process.hrtime.bigint() - t0) / 1e6;
    const leasesAfterRestart = await leaseCount(second.socket);
    const rssAfterRestartBytes = rssBytes(second.pid);
    o.progress(`  restart with ${leasesAfterRestart} journaled leases: ${restartMs.toFixed(0)} ms to the first reply`);

    const t1 = process.hrtime.bigint();
    holder.stdin?.end();
    await exitOf(holder);
    while (await leaseCount(second.socket) > 0) await new Promise((r) => setTimeout(r, 100));
    const releaseSeconds = Number(process.hrtime.bigint() - t1) / 1e9;
    o.progress(`  all leases released ${releaseSeconds.toFixed(1)} s after their targets were killed`);
    return {
      requested: o.leases, granted, errors, parallel: o.parallel, grantSeconds, grantsPerSecond: granted / grantSeconds,
      rssIdleBytes, rssWithLeasesBytes, restartMs, leasesAfterRestart, rssAfterRestartBytes, releaseSeconds,
    };
  } finally {
    holder.kill('SIGTERM');
    await exitOf(holder);
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

async function leaseCount(socket: string): Promise<number> {
  const client = await BrokerClient.connect(socket);
  try {
    return (await client.status()).leases;
  } finally {
    client.close();
  }
}
