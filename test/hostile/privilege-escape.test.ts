// Security: a VM's uid cannot raise its own limit by any path the broker offers (or the kernel:
// soft = hard and no CAP_SYS_RESOURCE), a manager cannot lease a target holding CAP_IPC_LOCK,
// and every one of these denials is audited with who asked and why.
//
// Roles on this host (targets must share the daemon's uid and gid, see the facts file): the
// policy makes managers only the members of group 4242, and lets no one Open for itself. The
// manager runs as nobody with supplementary group 4242; the VM runs as uid/gid 0 with no
// supplementary groups and no capabilities, so it is neither a manager nor exempt from limits.
// (Another uid's view of leases is covered by test/daemon/shell/service.test.ts.)
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerProcess, REPO, type LogLine } from '../support/daemon.ts';
import { LineReader, NOBODY, exited } from '../support/children.ts';
import { STRIP, eventually, killTarget, memlockOf, waitForComm } from './support/processes.ts';

const MiB = 1024 ** 2;
const MANAGER_GROUP = 4242;
let broker: BrokerProcess;

interface Result { ok?: unknown; error?: string; parameters?: Record<string, unknown> }

before(async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-broker-hostile-'));
  const config = join(dir, 'policy.json');
  writeFileSync(config, JSON.stringify({ open: { users: [] }, managers: { groups: [MANAGER_GROUP] } }), { mode: 0o644 });
  broker = await BrokerProcess.start({ dir, extraArgs: ['--config', config, '--overhead', '1M', '--budget', '64M'] });
});
after(async () => { await broker.stop(); broker.cleanup(); });

class Actor {
  readonly pid: number;
  private constructor(readonly reader: LineReader, pid: number) { this.pid = pid; }

  static async start(setprivIds: readonly string[]): Promise<Actor> {
    const child = spawn('setpriv', [...setprivIds, ...STRIP, '--', process.execPath, '--import', 'tsx',
      join(REPO, 'test/hostile/support/vm-actor.ts'), broker.socket], { stdio: ['pipe', 'pipe', 'pipe'], cwd: REPO });
    const reader = new LineReader(child);
    const hello = await reader.next<{ ok: { pid: number } }>();
    return new Actor(reader, hello.ok.pid);
  }

  async do(command: Record<string, unknown>): Promise<Result> {
    this.reader.send(JSON.stringify(command));
    return this.reader.next<Result>();
  }

  async stop(): Promise<void> {
    this.reader.send(JSON.stringify({ op: 'exit' }));
    await exited(this.reader.child);
  }
}

const vmIds = ['--clear-groups'];
const managerIds = [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, `--groups=${MANAGER_GROUP}`];

/** The audit line of a denial: who (uid, pid), which action, which error and rule. */
async function denial(action: string, error: string, pid: number, rule?: string): Promise<LogLine> {
  return broker.waitForLog((l) => l['audit'] === 'deny' && l['action'] === action && l['error'] === error
    && (l['peer'] as { pid?: number } | undefined)?.pid === pid && (rule === undefined || l['rule'] === rule));
}

test('a VM cannot raise its own limit: not by Resize, Release, a new Open, naming another process, or setrlimit', async () => {
  const manager = await Actor.start(managerIds);
  const vm = await Actor.start(vmIds);
  try {
    const opened = await manager.do({ op: 'open', name: 'vm-locked', memoryBytes: 2 * MiB, targetPid: vm.pid });
    const lease = opened.ok as { id: string; limitBytes: number; ownerUid: number } | undefined;
    assert.ok(lease !== undefined, `the manager opened a lease for the VM: ${JSON.stringify(opened)}`);
    assert.equal(lease.ownerUid, NOBODY);
    const locked = { soft: lease.limitBytes, hard: lease.limitBytes };
    assert.deepEqual(memlockOf(vm.pid), locked);

    const resize = await vm.do({ op: 'resize', lease: lease.id, memoryBytes: 6 * MiB });
    assert.equal(resize.error, 'PermissionDenied');
    assert.equal(resize.parameters?.['rule'], 'resize-managers-only');
    await denial('resize', 'PermissionDenied', vm.pid, 'resize-managers-only');

    const release = await vm.do({ op: 'release', lease: lease.id });
    assert.equal(release.error, 'PermissionDenied', 'releasing would restore its earlier, higher limit');
    assert.equal(release.parameters?.['rule'], 'release-owner-or-manager');
    await denial('release', 'PermissionDenied', vm.pid, 'release-owner-or-manager');

    const reopen = await vm.do({ op: 'open', name: 'vm-locked-bigger', memoryBytes: 6 * MiB });
    assert.equal(reopen.error, 'PermissionDenied');
    assert.equal(reopen.parameters?.['rule'], 'open-users');
    await denial('open', 'PermissionDenied', vm.pid, 'open-users');

    const child = await vm.do({ op: 'spawn-child' });
    const childPid = (child.ok as { pid: number }).pid;
    const viaChild = await vm.do({ op: 'open', name: 'vm-via-child', memoryBytes: 6 * MiB, targetPid: childPid });
    assert.equal(viaChild.error, 'PermissionDenied');
    assert.equal(viaChild.parameters?.['rule'], 'open-users');
    // Audit lines travel on the daemon's stdout and may arrive after the reply: wait for the
    // fourth, then check there is exactly one per denial.
    const vmDenials = (): number => broker.audits('deny').filter((l) => (l['peer'] as { pid?: number }).pid === vm.pid).length;
    await eventually('the fourth denial is audited', () => vmDenials() >= 4);
    assert.equal(broker.audits('deny').filter((l) => (l['peer'] as { pid?: number }).pid === vm.pid).length, 4,
      'each of the four broker denials was audited once');

    const raise = await vm.do({ op: 'raise-own-limit', bytes: 6 * MiB });
    assert.equal(raise.error, 'EPERM', 'the kernel refuses: hard limit, no CAP_SYS_RESOURCE');

    assert.deepEqual(memlockOf(vm.pid), locked, 'after all that the VM\'s limit is what the manager set');
    const listed = await manager.do({ op: 'list' });
    const leases = (listed.ok as { leases: Array<{ id: string; limitBytes: number }> }).leases;
    assert.deepEqual(leases.map((l) => [l.id, l.limitBytes]), [[lease.id, lease.limitBytes]]);

    // The manager can lower it and release it: the rules above are about who, not what.
    assert.ok((await manager.do({ op: 'resize', lease: lease.id, memoryBytes: 1 * MiB })).ok !== undefined);
    assert.deepEqual(memlockOf(vm.pid), { soft: 2 * MiB, hard: 2 * MiB });
    assert.ok((await manager.do({ op: 'release', lease: lease.id })).ok !== undefined);
  } finally {
    await vm.stop();
    await manager.stop();
  }
});

test('a manager cannot lease a target that holds CAP_IPC_LOCK, and the refusal is audited', async () => {
  const manager = await Actor.start(managerIds);
  const privileged = spawn('sleep', ['3600'], { stdio: 'ignore' });
  try {
    assert.ok(privileged.pid !== undefined);
    await waitForComm(privileged.pid, 'sleep');
    const before = memlockOf(privileged.pid);
    const r = await manager.do({ op: 'open', name: 'vm-root', memoryBytes: 1 * MiB, targetPid: privileged.pid });
    assert.equal(r.error, 'TargetBypassesAccounting');
    assert.equal(r.parameters?.['capability'], 'CAP_IPC_LOCK');
    assert.equal(r.parameters?.['pid'], privileged.pid);
    const audit = await denial('open', 'TargetBypassesAccounting', manager.pid);
    assert.equal((audit['peer'] as { uid: number }).uid, NOBODY);
    assert.equal((audit['request'] as { targetPid: number }).targetPid, privileged.pid);
    assert.deepEqual(memlockOf(privileged.pid), before, 'no limit was set on it');
  } finally {
    await killTarget(privileged);
    await manager.stop();
  }
});

test('CAP_IPC_LOCK held only in the permitted set is refused too, naming the set (issue #8 item 6)', async () => {
  // The target could capset() it back into its effective set after the lease and pin uncharged.
  const manager = await Actor.start(managerIds);
  const program = [
    'import ctypes, sys',
    'libc = ctypes.CDLL(None, use_errno=True)',
    'class Hdr(ctypes.Structure): _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]',
    'class Data(ctypes.Structure): _fields_ = [("e", ctypes.c_uint32), ("p", ctypes.c_uint32), ("i", ctypes.c_uint32)]',
    'hdr = Hdr(0x20080522, 0); data = (Data * 2)(); data[0].p = 1 << 14',
    'assert libc.capset(ctypes.byref(hdr), data) == 0, ctypes.get_errno()',
    "print('\"ready\"', flush=True); sys.stdin.read()",
  ].join('\n');
  const target = spawn('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all,+ipc_lock', '--',
    '/usr/bin/python3', '-c', program], { stdio: ['pipe', 'pipe', 'pipe'] });
  try {
    assert.equal(await new LineReader(target).next<string>(), 'ready');
    assert.ok(target.pid !== undefined);
    const before = memlockOf(target.pid);
    const r = await manager.do({ op: 'open', name: 'vm-permitted', memoryBytes: 1 * MiB, targetPid: target.pid });
    assert.equal(r.error, 'TargetBypassesAccounting', JSON.stringify(r));
    assert.equal(r.parameters?.['set'], 'permitted');
    assert.deepEqual(memlockOf(target.pid), before, 'no limit was set on it');
  } finally {
    await killTarget(target);
    await manager.stop();
  }
});

test('root only inside its own user namespace is not capable(CAP_IPC_LOCK) on the host: leased (issue #8 item 13)', async () => {
  const manager = await Actor.start(managerIds);
  const target = spawn('unshare', ['--user', '--map-root-user', 'sleep', '3600'], { stdio: 'ignore' });
  try {
    assert.ok(target.pid !== undefined);
    await waitForComm(target.pid, 'sleep');
    const r = await manager.do({ op: 'open', name: 'vm-userns', memoryBytes: 1 * MiB, targetPid: target.pid });
    const lease = r.ok as { id: string; limitBytes: number } | undefined;
    assert.ok(lease !== undefined, `granted: ${JSON.stringify(r)}`);
    assert.deepEqual(memlockOf(target.pid), { soft: lease.limitBytes, hard: lease.limitBytes });
  } finally {
    await killTarget(target);
    await manager.stop();
  }
});
