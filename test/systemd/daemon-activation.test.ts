// The real daemon (bin/iommufd-brokerd) started the way the units start it:
// systemd-socket-activate (Debian's systemd) binds the two named sockets and execs the daemon on
// the first connection, with NOTIFY_SOCKET and WATCHDOG_USEC pointing at a test receiver.
// Checked: it serves Varlink on "broker" and HTTP on "admin"; READY=1 with a one-line STATUS
// comes once it serves; WATCHDOG=1 keeps coming; SIGHUP gives RELOADING=1 + MONOTONIC_USEC and
// READY=1 again; SIGTERM gives STOPPING=1 and a clean exit.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { request } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerClient } from '../../client/index.ts';
import { DAEMON, REPO } from '../support/daemon.ts';
import { NotifyReceiver } from '../support/notify-receiver.ts';

const running = new Set<ChildProcess>();
afterEach(() => {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
});

function httpGet(socketPath: string, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method: 'GET' }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => { body += c; }).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    // Hang guard: an adopted socket nobody serves accepts into its backlog and never answers.
    req.setTimeout(15_000, () => req.destroy(new Error(`no HTTP answer on ${socketPath} within 15 s: is the admin socket served?`)));
    req.end();
  });
}

const isWatchdog = (m: string): boolean => m === 'WATCHDOG=1';

test('socket-activated daemon: serves broker and admin, READY/WATCHDOG/RELOADING/STOPPING', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'daemon-activation-test-'));
  const notify = await NotifyReceiver.start(join(dir, 'notify.sock'));
  try {
    const broker = join(dir, 'broker.sock');
    const admin = join(dir, 'admin.sock');
    const child = spawn('systemd-socket-activate', [
      '-l', admin, '--fdname=admin', '-l', broker, '--fdname=broker',
      '-E', `NOTIFY_SOCKET=${notify.address}`, '-E', 'WATCHDOG_USEC=400000',
      // The simulated device is refused under systemd, and this host has no /dev/iommu: a device
      // path that does not exist leaves the daemon serving, with Open answering DeviceUnavailable.
      DAEMON, '--socket', broker, '--admin-socket', admin, '--state-dir', join(dir, 'state'), '--device', join(dir, 'no-iommu'),
    ], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
    running.add(child);
    let stderr = '';
    child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
    child.stdout.resume();
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    while (!stderr.includes(`Listening on ${broker}`)) {
      await new Promise((resolve) => child.stderr.once('data', resolve));
    }

    // The first connection starts the daemon; the call is answered once it serves.
    const client = await BrokerClient.connect(broker);
    try {
      const status = await client.status();
      assert.equal(status.device.kind, 'iommufd');
      assert.equal(status.device.path, join(dir, 'no-iommu'));
      assert.equal(status.leases, 0);
    } finally {
      client.close();
    }
    const ready = await notify.takeUntil((m) => m.startsWith('READY=1'));
    assert.ok(ready.skipped.every(isWatchdog), `before READY=1: ${JSON.stringify(ready.skipped)}`);
    assert.match(ready.match, /^READY=1\nSTATUS=[^\n]+$/);

    const health = await httpGet(admin, '/healthz');
    assert.equal(health.status, 200, health.body);

    // The watchdog keeps pinging on its own.
    assert.equal(await notify.take(), 'WATCHDOG=1');
    assert.equal((await notify.takeUntil(isWatchdog)).match, 'WATCHDOG=1');

    // systemd-socket-activate exec'd the daemon: the child's pid is the daemon's.
    const pid = child.pid;
    assert.ok(pid !== undefined);
    process.kill(pid, 'SIGHUP');
    const reloading = await notify.takeUntil((m) => m.startsWith('RELOADING=1'));
    assert.ok(reloading.skipped.every((m) => isWatchdog(m) || m.startsWith('STATUS=')), JSON.stringify(reloading.skipped));
    assert.match(reloading.match, /^RELOADING=1\nMONOTONIC_USEC=\d+(\nSTATUS=[^\n]+)?$/);
    const readyAgain = await notify.takeUntil((m) => m.startsWith('READY=1'));
    assert.ok(readyAgain.skipped.every((m) => isWatchdog(m) || m.startsWith('STATUS=')), JSON.stringify(readyAgain.skipped));

    process.kill(pid, 'SIGTERM');
    const stopping = await notify.takeUntil((m) => m.startsWith('STOPPING=1'));
    assert.ok(stopping.skipped.every((m) => isWatchdog(m) || m.startsWith('STATUS=')), JSON.stringify(stopping.skipped));
    assert.equal(await exited, 0, stderr);
    running.delete(child);
  } finally {
    await notify.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
