// The unit's SystemCallFilter= against what the daemon really calls: the daemon (simulated
// device) runs under `strace -f -c` through an admin API request, a lease's whole life, a
// policy reload and a stop, and every system call it made must be one the unit allows. A call
// outside the filter would fail with EPERM (SystemCallErrorNumber=) under systemd, which no
// host test would notice.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DAEMON, REPO } from '../support/daemon.ts';
import { LineReader, exited, spawnStripped } from '../support/children.ts';
import { allowedSyscalls, syscallGroups } from './syscall-filter.ts';
import { readUnit } from './unit-file.ts';

const MiB = 1024 ** 2;

/** GET over the admin socket; resolves with the HTTP status. */
function httpGet(socketPath: string, path: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path }, (res) => { res.resume().on('end', () => resolve(res.statusCode ?? 0)); });
    req.on('error', reject).setTimeout(30_000, () => req.destroy(new Error(`no HTTP answer on ${socketPath}`)));
    req.end();
  });
}

function unitAllowList(): Set<string> {
  const lines = readUnit(join(REPO, 'systemd/iommufd-broker.service')).get('Service')?.get('SystemCallFilter') ?? [];
  return allowedSyscalls(lines, syscallGroups());
}

// sendto: sd_notify datagrams (unix-dgram); not in the traced run, which has no NOTIFY_SOCKET.
test('the filter allows what the broker exists for and keeps out privileged and resource calls', () => {
  const allowed = unitAllowList();
  for (const needed of ['prlimit64', 'pidfd_open', 'pidfd_send_signal', 'ioctl', 'memfd_create', 'sendmsg', 'recvmsg', 'sendto', 'accept4', 'kcmp', 'pkey_alloc']) {
    assert.ok(allowed.has(needed), `${needed} is not allowed`);
  }
  for (const denied of ['setuid', 'setresuid', 'capset', 'chroot', 'setrlimit', 'setpriority', 'sched_setscheduler', 'mount', 'init_module', 'ptrace', 'bpf']) {
    assert.ok(!allowed.has(denied), `${denied} is allowed`);
  }
});

test('every system call the daemon makes (start, admin request, lease, target exit, SIGHUP, SIGTERM) is allowed by the unit', async (t) => {
  const allowed = unitAllowList();
  const probe = spawnSync('strace', ['-V'], { encoding: 'utf8' });
  assert.equal(probe.error, undefined, 'strace is needed for this test: install Debian\'s strace package');
  const dir = mkdtempSync(join(tmpdir(), 'syscall-filter-test-'));
  const summary = join(dir, 'strace-summary');
  const socket = join(dir, 'broker.sock');
  const adminSocket = join(dir, 'admin.sock');
  try {
    // The bin itself (its #! line runs env, then node), as ExecStart= does.
    const daemon = spawn('strace', ['-f', '-qq', '-c', '-o', summary, '--', DAEMON,
      '--socket', socket, '--socket-mode', '0666', '--admin-socket', adminSocket, '--state-dir', join(dir, 'state'),
      '--device', 'simulated', '--overhead', '1M'],
    { cwd: '/', stdio: ['ignore', 'pipe', 'pipe'] });
    const log = new LineReader(daemon);
    const daemonExit = exited(daemon);
    for (;;) {
      const line = await log.next<{ msg: string }>(60_000);
      if (line.msg === 'serving') break;
    }

    const status = await httpGet(adminSocket, '/v1/status');
    assert.equal(status, 200, 'the admin API answered');

    const holder = new LineReader(spawnStripped('scripts/standin-vm.ts', [socket, 'vm-strace', String(2 * MiB)]));
    const held = await holder.next<{ lease?: { limitBytes: number }; error?: string }>();
    assert.equal(held.lease?.limitBytes, 3 * MiB, `lease refused: ${held.error ?? ''}`);
    holder.send('exit');
    await exited(holder.child);
    for (;;) {
      const line = await log.next<{ msg: string; audit?: string }>(60_000);
      if (line.audit === 'release') break;
    }

    const pid = daemon.pid;
    assert.ok(pid !== undefined);
    // strace's child is the daemon: signal it, not strace.
    const daemonPid = Number(readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(' ')[0]);
    process.kill(daemonPid, 'SIGHUP');
    for (;;) {
      const line = await log.next<{ msg: string }>(60_000);
      if (/policy reload/.test(line.msg)) break;
    }
    process.kill(daemonPid, 'SIGTERM');
    assert.equal(await daemonExit, 0, log.stderr);

    const observed = readFileSync(summary, 'utf8').split('\n')
      .map((l) => l.trim().split(/\s+/))
      .filter((cols) => cols.length >= 5 && /^\d/.test(cols[0] ?? '') && cols.at(-1) !== 'total')
      .map((cols) => cols.at(-1) ?? '');
    t.diagnostic(`the daemon made ${observed.length} distinct system calls: ${[...observed].sort().join(' ')}`);
    for (const leasePath of ['prlimit64', 'memfd_create', 'sendmsg', 'recvmsg']) assert.ok(observed.includes(leasePath), `the run never called ${leasePath}`);
    assert.deepEqual(observed.filter((s) => !allowed.has(s)), [], 'system calls the unit\'s SystemCallFilter= would refuse');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
