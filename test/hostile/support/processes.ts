// Test support: target processes and what the kernel says about them and about the daemon.
//
// Invariants:
// - A target is `sleep` run through setpriv with every capability dropped, under our own uid
//   and gid (the daemon, which lacks CAP_SYS_RESOURCE here, may then lower its limit). It is a
//   direct child of the test process, so Node reaps it: after `killTarget` resolves its pid
//   is free for reuse.
// - Readers go to /proc only; they open no fd that outlives the call.
// - Nothing here sleeps blindly: waits poll a condition and give up with a reason.
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';

export const STRIP = ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all'] as const;

export interface Target {
  child: ChildProcess;
  pid: number;
}

/** A capability-less `sleep` of our uid, once it has exec'd sleep (so its pid is final). */
export async function spawnTarget(extraSetprivArgs: readonly string[] = []): Promise<Target> {
  const child = spawn('setpriv', [...extraSetprivArgs, ...STRIP, '--', 'sleep', '3600'], { stdio: 'ignore' });
  const pid = child.pid;
  if (pid === undefined) throw new Error('could not spawn setpriv sleep');
  await waitForComm(pid, 'sleep');
  return { child, pid };
}

/** Waits until pid runs `comm` (setpriv and the like exec the real program in place). */
export async function waitForComm(pid: number, comm: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    let now = '';
    try {
      now = readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
    } catch {
      throw new Error(`pid ${pid} exited before it became ${comm}`);
    }
    if (now === comm) return;
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error(`pid ${pid} never became ${comm}`);
}

/** SIGKILLs a child and resolves once Node has reaped it (its pid is free afterwards). */
export async function killTarget(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await gone;
}

export function isAlive(pid: number): boolean {
  try {
    const state = /^State:\s+(\S)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return state !== undefined && state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export interface Memlock { soft: number; hard: number }

/** RLIMIT_MEMLOCK of pid from /proc/PID/limits; -1 means unlimited. */
export function memlockOf(pid: number): Memlock {
  const text = readFileSync(`/proc/${pid}/limits`, 'utf8');
  const m = /^Max locked memory\s+(\S+)\s+(\S+)\s+bytes/m.exec(text);
  if (m?.[1] === undefined || m[2] === undefined) throw new Error(`no memlock line in /proc/${pid}/limits`);
  const value = (s: string): number => (s === 'unlimited' ? -1 : Number(s));
  return { soft: value(m[1]), hard: value(m[2]) };
}

/** Field 22 of /proc/PID/stat (start time in clock ticks), to tell a reused pid apart. */
export function startTimeOf(pid: number): string {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const start = fields[19];
  if (start === undefined) throw new Error(`/proc/${pid}/stat has no start time`);
  return start;
}

/** VmRSS of pid in bytes. */
export function rssBytes(pid: number): number {
  const kb = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
  if (kb === undefined) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(kb) * 1024;
}

/** How many fds of pid point at each kind of object ("anon_inode:[pidfd]", "socket", "/memfd:..."). */
export function fdKinds(pid: number): Map<string, number> {
  const kinds = new Map<string, number>();
  for (const name of readdirSync(`/proc/${pid}/fd`)) {
    let target: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
    } catch {
      continue; // closed meanwhile
    }
    const kind = target.startsWith('socket:') ? 'socket' : target.startsWith('/memfd:') ? 'memfd' : target;
    kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
  }
  return kinds;
}

export function pidfdCount(pid: number): number {
  return fdKinds(pid).get('anon_inode:[pidfd]') ?? 0;
}

/** Polls `check` until it returns true; throws with `what` after guardMs. */
export async function eventually(what: string, check: () => boolean, guardMs = 10_000): Promise<void> {
  const deadline = Date.now() + guardMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`hang guard: ${what} did not happen within ${guardMs} ms`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
