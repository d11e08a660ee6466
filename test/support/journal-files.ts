// Test support: journals written by hand for a daemon to start on, naming real live processes.
//
// Invariants:
// - A journaled target is a real capability-less process of our uid (sleeper), so a daemon
//   re-adopting it may lower its limit; its start time is read as the daemon reads it
//   (procfs.ts startTimeFromStat). The caller kills it.
// - Lines are written in the on-disk format (daemon/shell/journal/format.ts) by hand, not by
//   the journal's code, so a test can also write what that code never would; the state dir
//   and file get the modes the daemon demands (0700, 0600).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startTimeFromStat } from '../../daemon/shell/target/procfs.ts';

/** A capability-less `sleep 600` of our own uid (the daemon may lower its limit), once it runs sleep. */
export async function sleeper(): Promise<{ child: ChildProcess; pid: number; startTime: string }> {
  const child = spawn('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--', 'sleep', '600'], { stdio: 'ignore' });
  const pid = child.pid;
  if (pid === undefined) throw new Error('spawn failed');
  for (let i = 0; i < 200 && readFileSync(`/proc/${pid}/comm`, 'utf8').trim() !== 'sleep'; i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  return { child, pid, startTime: startTimeFromStat(readFileSync(`/proc/${pid}/stat`, 'utf8'), `/proc/${pid}/stat`) };
}

/** The `Max locked memory` soft and hard values of pid, as /proc/PID/limits prints them. */
export function memlock(pid: number): string[] {
  const line = /^Max locked memory\s+(\S+)\s+(\S+)/m.exec(readFileSync(`/proc/${pid}/limits`, 'utf8'));
  return [line?.[1] ?? '?', line?.[2] ?? '?'];
}

/** A grant record of format `v` (2 needs bootId) for lease number i on target pid/startTime. */
export function grantLine(v: 1 | 2, i: number, target: { pid: number; startTime: string }, bootId?: string): string {
  const lease = {
    id: `l-${i.toString(16).padStart(16, '0')}`, name: `vm-${i}`, targetPid: target.pid, targetUid: process.getuid?.() ?? 0,
    targetStartTime: target.startTime, ownerUid: 0, memoryBytes: 2 * 1024 ** 2, limitBytes: 3 * 1024 ** 2,
    createdAt: '2026-01-01T00:00:00.000Z', previousLimit: { soft: 8 * 1024 ** 2, hard: 8 * 1024 ** 2 },
    ...(v === 2 ? { bootId } : {}),
  };
  return `${JSON.stringify({ v, type: 'grant', lease })}\n`;
}

/** Writes stateDir/leases.journal (0700 dir, 0600 file) with these lines. */
export function writeJournal(stateDir: string, lines: string[]): string {
  mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  const file = join(stateDir, 'leases.journal');
  writeFileSync(file, lines.join(''), { mode: 0o600 });
  return file;
}
