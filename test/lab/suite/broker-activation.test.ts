// Issue #4's "done when", against the real kernel: the daemon is socket-activated (by
// systemd-socket-activate, systemd's own tool, passing the socket named "broker"), the first
// client's connection starts it, and that unprivileged client gets a working iommufd FD.
//
// Invariants:
// - Nothing starts the daemon but the client's connection: systemd-socket-activate execs it
//   only when a connection arrives.
// - Every wait is bounded (the client's command time-out); nothing is timed.
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { DAEMON, MiB } from '../harness/lab-broker.ts';
import { LabClient } from '../harness/lab-client.ts';
import { openAsTarget } from '../harness/manager.ts';

const OVERHEAD = 256 * 1024;
const MEMORY = 768 * 1024; // limit 1 MiB

describe('broker on /dev/iommu under socket activation', () => {
  let activator: ChildProcess | undefined;
  let client: LabClient | undefined;
  after(async () => {
    await client?.kill();
    if (activator !== undefined && activator.exitCode === null) {
      const exited = new Promise((resolve) => activator?.on('exit', resolve));
      activator.kill('SIGTERM');
      await exited;
    }
  });

  test('the first connection starts the daemon, and the unprivileged client gets its FD and limit', async () => {
    mkdirSync('/run/iommufd-lab', { recursive: true });
    const dir = mkdtempSync('/run/iommufd-lab/activated-');
    chmodSync(dir, 0o755);
    const socket = join(dir, 'broker.sock');
    activator = spawn('systemd-socket-activate', ['-l', socket, '--fdname=broker', '-E', 'PATH',
      DAEMON, '--state-dir', join(dir, 'state'), '--device', '/dev/iommu',
      '--overhead', String(OVERHEAD), '--budget', String(16 * MiB)], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    activator.stderr?.on('data', (c: Buffer) => { stderr += c.toString(); });
    // systemd-socket-activate binds and listens first, says so, and starts the daemon only on a
    // connection: wait, bounded, for its "Listening on" line.
    for (let i = 0; !stderr.includes('Listening on') || !existsSync(socket); i++) {
      assert.ok(i < 600 && activator.exitCode === null, `systemd-socket-activate never bound ${socket}: ${stderr}`);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    assert.equal(activator.exitCode, null);
    // What SocketMode= does in iommufd-broker.socket: let the client's uid (65534) connect.
    chmodSync(socket, 0o666);

    client = LabClient.spawn({ unprivileged: true, timeoutMs: 600_000 });
    const { lease } = await openAsTarget(client, socket, 'lab-activated', MEMORY).catch((e: unknown) => {
      throw new Error(`Open through the activated socket failed: ${String(e)} ${stderr}`);
    });
    assert.equal(lease.deviceKind, 'iommufd');
    assert.equal(lease.accountingMode, 'process');
    assert.equal(lease.pid, client.pid);
    assert.equal(lease.limitBytes, MiB);
    assert.equal(await client.okNumber('option-get 0'), 1, 'GET RLIMIT_MODE on the received FD');
    assert.deepEqual(await client.rlimit(), { soft: MiB, hard: MiB });
    assert.equal(activator.exitCode, null, 'the activated daemon is still serving');
  });
});
