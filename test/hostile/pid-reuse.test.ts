// PID reuse: a leased target exits and a new process gets its pid (clone3 with set_tid, via
// test/hostile/fixtures/hostile-peer.c). The broker must never set a limit on the new process
// and must not keep the old lease — whether the reuse happens while the daemon runs, while it
// is stopped with a Resize already queued, or while it is down. And a caller's identity is its
// process as of accept (SO_PEERPIDFD), not its pid: a caller that hands its connection to a
// child and exits cannot have a newcomer with its old pid taken for "itself".
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createInterface } from 'node:readline';
import { dirname, join } from 'node:path';
import { BrokerClient, BrokerError } from '../../client/index.ts';
import { closeFd, pidfdOpen } from '../../native/sys.ts';
import { buildC } from '../../bench/c-build.ts';
import { BrokerProcess, REPO } from '../support/daemon.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { STRIP, killTarget, memlockOf, pidfdCount, spawnTarget, startTimeOf, waitForComm, type Memlock } from './support/processes.ts';

const MiB = 1024 ** 2;
const ARGS = ['--overhead', '1M', '--budget', '64M'];
let hostilePeer: string;

before(() => {
  hostilePeer = buildC(join(REPO, 'test/hostile/fixtures/hostile-peer.c'));
});

interface Reused { helper: ChildProcess; pid: number }
const reused: Reused[] = [];
after(async () => {
  for (const r of reused.splice(0)) await stopReused(r);
});

/** Kills the newcomer; its helper (which waits for it) exits with it and is reaped. */
async function stopReused(r: Reused): Promise<void> {
  const index = reused.indexOf(r);
  if (index >= 0) reused.splice(index, 1);
  if (r.helper.exitCode !== null || r.helper.signalCode !== null) return;
  const gone = new Promise<void>((resolve) => r.helper.once('exit', () => resolve()));
  try { process.kill(r.pid, 'SIGKILL'); } catch { r.helper.kill('SIGKILL'); }
  await gone;
}

/** Starts a capability-less `sleep` with exactly this pid (the previous owner must be reaped). */
async function spawnAtPid(pid: number, setprivArgs: readonly string[] = []): Promise<Reused> {
  const helper = spawn(hostilePeer, ['spawn-at-pid', String(pid), 'setpriv', ...setprivArgs, ...STRIP, '--', 'sleep', '3600'],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = createInterface({ input: helper.stdout as NodeJS.ReadableStream });
  const first = await new Promise<string>((resolve, reject) => {
    lines.once('line', resolve);
    helper.once('exit', (code) => reject(new Error(`spawn-at-pid exited (${String(code)}) before it said anything`)));
  });
  lines.close();
  assert.equal(first, `pid ${pid}`, `clone3 set_tid could not reuse pid ${pid}: ${first}`);
  await waitForComm(pid, 'sleep');
  const r = { helper, pid };
  reused.push(r);
  return r;
}

/** A manager Open (this process is uid 0, a manager by default) naming the target by pidfd. */
async function leaseFor(client: BrokerClient, name: string, pid: number, memoryBytes: number): Promise<{ id: string; limitBytes: number }> {
  const pidfd = pidfdOpen(pid);
  try {
    const { lease, fd } = await client.open({ name, memoryBytes, targetPidFd: pidfd });
    closeFd(fd);
    return { id: lease.id, limitBytes: lease.limitBytes };
  } finally {
    closeFd(pidfd);
  }
}

function daemonPid(broker: BrokerProcess): number {
  const pid = broker.child.pid;
  assert.ok(pid !== undefined);
  return pid;
}

test('a pid reused while the daemon runs: the old lease ended with its target, and names nothing now', async () => {
  const fdsBefore = openFds();
  const broker = await BrokerProcess.start({ extraArgs: ARGS });
  const client = await BrokerClient.connect(broker.socket);
  try {
    const a = await spawnTarget();
    const lease = await leaseFor(client, 'vm-first', a.pid, 2 * MiB);
    assert.equal(memlockOf(a.pid).hard, lease.limitBytes);
    const startA = startTimeOf(a.pid);
    await killTarget(a.child);
    await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === lease.id);

    const b = await spawnAtPid(a.pid);
    assert.notEqual(startTimeOf(b.pid), startA, 'a different process holds the pid now');
    const untouched = memlockOf(b.pid);
    await assert.rejects(client.resize(lease.id, 1 * MiB), (e: unknown) => e instanceof BrokerError && e.errorName === 'NoSuchLease');
    await assert.rejects(client.release(lease.id), (e: unknown) => e instanceof BrokerError && e.errorName === 'NoSuchLease');
    assert.deepEqual(memlockOf(b.pid), untouched, 'the newcomer\'s limit was not touched');
    assert.deepEqual((await client.list()).leases, []);
    assert.equal((await client.status()).budget.usedBytes, 0);
    await stopReused(b);
  } finally {
    client.close();
    await broker.stop();
    broker.cleanup();
  }
  assert.deepEqual(leakedSince(fdsBefore), [], 'this process kept no pidfd, device fd or socket');
});

test('a Resize queued while the target dies and its pid is reused never reaches the new process', async () => {
  // Deterministic interleaving: the daemon is stopped (SIGSTOP) while the Resize sits in its
  // socket, the target dies and is reaped, and a newcomer takes the pid. On SIGCONT the daemon
  // sees the Resize first (it became readable first), with the old pid in its lease record.
  const broker = await BrokerProcess.start({ extraArgs: ARGS });
  const client = await BrokerClient.connect(broker.socket);
  let b: Reused | undefined;
  let untouched: Memlock | undefined;
  let resizing: Promise<unknown> | undefined;
  try {
    const a = await spawnTarget();
    const lease = await leaseFor(client, 'vm-stopped', a.pid, 4 * MiB);
    process.kill(daemonPid(broker), 'SIGSTOP');
    try {
      resizing = client.resize(lease.id, 1 * MiB).then((ok) => ({ ok }), (err: unknown) => ({ err }));
      await killTarget(a.child);
      b = await spawnAtPid(a.pid);
      untouched = memlockOf(b.pid);
    } finally {
      process.kill(daemonPid(broker), 'SIGCONT');
    }
    const outcome = await resizing as { ok?: unknown; err?: unknown };
    assert.equal(outcome.ok, undefined, `the Resize of a dead target's lease succeeded: ${JSON.stringify(outcome.ok)}`);
    assert.ok(outcome.err instanceof BrokerError && ['TargetGone', 'NoSuchLease'].includes(outcome.err.errorName),
      `expected TargetGone or NoSuchLease, got ${String(outcome.err)}`);
    await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === lease.id);
    assert.deepEqual((await client.list()).leases, []);
    assert.deepEqual(memlockOf(b.pid), untouched,
      'prlimit landed on the process that reused the pid (the pidfd liveness check runs only after prlimit)');
  } finally {
    client.close();
    await broker.stop();
    broker.cleanup();
  }
});

test('a pid reused while the daemon is down: restart drops the lease and leaves the newcomer alone', async () => {
  const broker = await BrokerProcess.start({ extraArgs: ARGS });
  const a = await spawnTarget();
  const client = await BrokerClient.connect(broker.socket);
  const lease = await leaseFor(client, 'vm-down', a.pid, 2 * MiB);
  client.close();
  await broker.stop('SIGKILL');
  await killTarget(a.child);
  const b = await spawnAtPid(a.pid);
  const untouched = memlockOf(b.pid);
  assert.notEqual(untouched.hard, lease.limitBytes, 'the newcomer starts with its own limit');

  const again = await BrokerProcess.start({ dir: broker.dir, extraArgs: ARGS });
  const check = await BrokerClient.connect(again.socket);
  try {
    const restored = await again.waitForLog((l) => l.msg === 'journal restored');
    assert.equal(restored['adopted'], 0);
    assert.equal(restored['dropped'], 1);
    assert.deepEqual((await check.list()).leases, []);
    assert.equal((await check.status()).budget.usedBytes, 0);
    assert.deepEqual(memlockOf(b.pid), untouched, 'restore did not apply the journaled limit to the newcomer');
    assert.equal(pidfdCount(daemonPid(again)), 1, 'the restarted daemon holds one pidfd: our connection\'s peer, no target\'s');
    await stopReused(b);
  } finally {
    check.close();
    await again.stop();
    again.cleanup();
  }
});

/** The fixture's handoff-open: a caller that connects, hands its connection to a child and exits. */
async function handOff(socket: string, quiet = false): Promise<{ child: ChildProcess; callerPid: number; tell: (line: string) => void; next: () => Promise<string> }> {
  const fifo = join(mkdtempSync(join(tmpdir(), 'iommufd-handoff-')), 'fifo');
  execFileSync('mkfifo', ['-m', '0600', fifo]);
  const child = spawn(hostilePeer, ['handoff-open', socket, fifo, ...(quiet ? ['quiet'] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const lines: string[] = [];
  let wake: (() => void) | undefined;
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => { lines.push(l); wake?.(); });
  const next = async (): Promise<string> => {
    for (let i = 0; lines.length === 0; i++) {
      if (i > 200) throw new Error('handoff-open said nothing within 20 s');
      await new Promise<void>((resolve) => { wake = resolve; setTimeout(resolve, 100).unref(); });
    }
    return lines.shift() as string;
  };
  const first = await next();
  const match = /^peer (\d+)$/.exec(first);
  assert.ok(match?.[1] !== undefined, `handoff-open: ${first}`);
  await exited; // the caller is gone and reaped (by Node): its pid is free; its child holds the connection
  // Opening the FIFO waits for the child, which opens it right after the fork.
  const tell = (line: string): void => { writeFileSync(fifo, `${line}\n`); rmSync(dirname(fifo), { recursive: true, force: true }); };
  return { child, callerPid: Number(match[1]), tell, next };
}

const MANAGER_GROUP = 4343;

/** A broker where this process (uid 0, no group MANAGER_GROUP) may Open for itself only. */
async function nonManagerBroker(): Promise<BrokerProcess> {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-broker-test-'));
  const config = join(dir, 'policy.json');
  writeFileSync(config, JSON.stringify({ open: { users: 'any' }, managers: { users: [4242], groups: [MANAGER_GROUP] } }), { mode: 0o644 });
  return BrokerProcess.start({ dir, extraArgs: ['--config', config, ...ARGS] });
}

function replyOf(line: string): { error?: string; parameters?: Record<string, unknown> } {
  assert.match(line, /^reply /, `expected a reply, got ${line}`);
  return JSON.parse(line.slice('reply '.length)) as { error?: string; parameters?: Record<string, unknown> };
}

test('a caller that exited cannot lend its connection: a newcomer with its old pid is not "itself"', async () => {
  // The old check compared the pid behind the target pidfd with the SO_PEERCRED pid: a process
  // reusing the exited caller's pid passed as the caller itself, and a non-manager limited it.
  const broker = await nonManagerBroker();
  let victim: Reused | undefined;
  try {
    const handed = await handOff(broker.socket);
    victim = await spawnAtPid(handed.callerPid);
    const untouched = memlockOf(victim.pid);
    handed.tell(String(victim.pid));
    const reply = replyOf(await handed.next());
    assert.equal(reply.error, 'io.iommufd.Broker.PermissionDenied', `the newcomer was taken for the caller: ${JSON.stringify(reply)}`);
    assert.equal(reply.parameters?.['rule'], 'caller-exited');
    assert.match(String(reply.parameters?.['reason']), /has exited/);
    assert.deepEqual(memlockOf(victim.pid), untouched, 'the newcomer\'s limit was not touched');
    const check = await BrokerClient.connect(broker.socket);
    try {
      assert.equal((await check.status()).leases, 0);
    } finally {
      check.close();
    }
  } finally {
    if (victim !== undefined) await stopReused(victim);
    await broker.stop();
    broker.cleanup();
  }
});

test('a caller that exited cannot Open for "itself" through the connection it left behind', async () => {
  const broker = await nonManagerBroker();
  try {
    const handed = await handOff(broker.socket);
    handed.tell('0');
    const reply = replyOf(await handed.next());
    assert.equal(reply.error, 'io.iommufd.Broker.PermissionDenied', JSON.stringify(reply));
    assert.equal(reply.parameters?.['rule'], 'caller-exited');
  } finally {
    await broker.stop();
    broker.cleanup();
  }
});

test('a reused pid cannot lend its groups: they are the caller\'s as of connect (SO_PEERGROUPS)', async () => {
  // The caller connects while the daemon is stopped and exits before the accept; a newcomer in
  // the managers' group takes its pid. The old code read the groups from /proc/<pid>/status at
  // accept, and so made the caller's connection a manager's.
  assert.ok(!(process.getgroups?.() ?? []).includes(MANAGER_GROUP), 'this process is not in the managers\' group');
  const broker = await nonManagerBroker();
  const other = await spawnTarget();
  let victim: Reused | undefined;
  try {
    const untouched = memlockOf(other.pid);
    let handed: Awaited<ReturnType<typeof handOff>> | undefined;
    process.kill(daemonPid(broker), 'SIGSTOP');
    try {
      handed = await handOff(broker.socket, true);
      victim = await spawnAtPid(handed.callerPid, ['--groups', String(MANAGER_GROUP)]);
    } finally {
      process.kill(daemonPid(broker), 'SIGCONT');
    }
    assert.ok(handed !== undefined);
    handed.tell(String(other.pid));
    const line = await handed.next();
    // Refused at accept (no pidfd for a caller already gone) or at the Open: never a manager's grant.
    if (line !== 'eof') {
      const reply = replyOf(line);
      assert.equal(reply.error, 'io.iommufd.Broker.PermissionDenied', `the caller got the newcomer's groups: ${JSON.stringify(reply)}`);
    }
    assert.deepEqual(memlockOf(other.pid), untouched, 'no limit was set for a borrowed manager identity');
  } finally {
    if (victim !== undefined) await stopReused(victim);
    await killTarget(other.child);
    await broker.stop();
    broker.cleanup();
  }
});
