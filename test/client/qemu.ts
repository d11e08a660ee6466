// Test support: Debian's QEMU (qemu-system-x86; machine none unless a test asks for a real
// machine) with a QMP socket, for tests that hand it fds, size it, or hotplug memory into it.
//
// Invariants:
// - Each Qemu has its own temp dir (the QMP socket), removed by stopQemu, which also kills
//   and reaps the process.
// - Readiness is a successful connect to the QMP socket (bounded retries), never a fixed sleep.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { UnixConnection } from '../../native/socket.ts';
import { openFds } from '../support/fds.ts';

export interface Qemu { child: ChildProcess; pid: number; qmp: string; dir: string }

/** Starts QEMU with a QMP socket and waits (bounded) until it accepts a QMP session. */
export async function startQemu(machineArgs: readonly string[] = ['-machine', 'none', '-nodefaults']): Promise<Qemu> {
  const dir = mkdtempSync(join(tmpdir(), 'iommufdctl-qmp-'));
  const qmp = join(dir, 'qmp.sock');
  const child = spawn('qemu-system-x86_64', [...machineArgs, '-display', 'none',
    '-qmp', `unix:${qmp},server=on,wait=off`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const pid = child.pid;
  assert.ok(pid !== undefined, 'qemu-system-x86_64 started (apt package qemu-system-x86)');
  for (let attempt = 0; attempt < 200; attempt++) {
    try {
      UnixConnection.connect(qmp).close();
      return { child, pid, qmp, dir };
    } catch {
      if (child.exitCode !== null) break;
      await sleep(50);
    }
  }
  child.kill('SIGKILL');
  throw new Error(`QEMU did not open its QMP socket ${qmp}: ${stderr}`);
}

export async function stopQemu(q: Qemu): Promise<void> {
  if (q.child.exitCode === null && q.child.signalCode === null) {
    const exited = new Promise((resolve) => q.child.once('exit', resolve));
    q.child.kill('SIGKILL');
    await exited;
  }
  rmSync(q.dir, { recursive: true, force: true });
}

/** fd targets QEMU holds, e.g. '/memfd:name (deleted)'. */
export function qemuFdTargets(q: Qemu): string[] {
  return [...openFds(q.pid).values()];
}

