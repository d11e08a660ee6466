// The broker end to end on the host: the real daemon (simulated device), real target processes
// without capabilities, real sockets, pidfds, rlimits and journal.
// Sizes stay below this host's RLIMIT_MEMLOCK hard limit (8 MiB on Debian): without
// CAP_SYS_RESOURCE the daemon can only lower limits here.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, readlinkSync } from 'node:fs';
import { closeFd, pidfdOpen } from '../../native/sys.ts';
import { BrokerClient } from '../../client/index.ts';
import { BrokerProcess } from '../support/daemon.ts';
import { LineReader, NOBODY, exited, spawnStripped } from '../support/children.ts';
import { leakedSince, openFds, settledLeaks } from '../support/fds.ts';

const MiB = 1024 ** 2;

interface Held { lease: { id: string; pid: number; limitBytes: number; memoryBytes: number; deviceKind: string; accountingMode: string }; fd: number; fdTarget: string; limits: { soft: string; hard: string } }
interface HeldError { error: string; parameters: Record<string, unknown> }

let broker: BrokerProcess;

before(async () => {
  broker = await BrokerProcess.start({ extraArgs: ['--overhead', '1M', '--budget', '8M'] });
});
after(async () => {
  await broker.stop();
  broker.cleanup();
});

async function holdLease(name: string, memoryBytes: number): Promise<{ holder: LineReader; held: Held }> {
  const holder = new LineReader(spawnStripped('scripts/standin-vm.ts', [broker.socket, name, String(memoryBytes)]));
  const held = await holder.next<Held | HeldError>();
  if ('error' in held) throw new Error(`lease refused: ${held.error} ${JSON.stringify(held.parameters)}`);
  return { holder, held };
}

function daemonPid(): number {
  const pid = broker.child.pid;
  assert.ok(pid !== undefined);
  return pid;
}

test('an unprivileged target gets an FD and a memlock limit of memory + overhead; exit ends the lease', async () => {
  const fdsBefore = openFds(daemonPid());
  const { holder, held } = await holdLease('vm-basic', 2 * MiB);
  assert.equal(held.lease.limitBytes, 3 * MiB);
  assert.equal(held.lease.deviceKind, 'simulated');
  assert.equal(held.lease.accountingMode, 'none');
  assert.match(held.fdTarget, /memfd:iommufd-broker-simulated/);
  assert.deepEqual(held.limits, { soft: String(3 * MiB), hard: String(3 * MiB) });
  const limits = readFileSync(`/proc/${held.lease.pid}/limits`, 'utf8');
  assert.match(limits, new RegExp(`Max locked memory\\s+${3 * MiB}\\s+${3 * MiB}\\s+bytes`));

  const client = await BrokerClient.connect(broker.socket);
  try {
    assert.ok((await client.list()).leases.some((l) => l.id === held.lease.id));
    assert.equal((await client.status()).budget.usedBytes, 3 * MiB);
    holder.send('exit');
    await exited(holder.child);
    await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === held.lease.id);
    assert.ok(!(await client.list()).leases.some((l) => l.id === held.lease.id));
    assert.equal((await client.status()).budget.usedBytes, 0);
  } finally {
    client.close();
  }
  assert.ok(broker.audits('grant').some((l) => l['lease'] === held.lease.id), 'the grant was audited');
  assert.deepEqual(await settledLeaks(fdsBefore, daemonPid()), [], 'the daemon holds no fd for an ended lease');
});

test('a manager lowers a live lease; a raise above the hard limit is KernelRefused (EPERM) on this host', async () => {
  const { holder, held } = await holdLease('vm-resize', 4 * MiB);
  const client = await BrokerClient.connect(broker.socket);
  try {
    const down = await client.resize(held.lease.id, 1 * MiB);
    assert.equal(down.lease.limitBytes, 2 * MiB);
    assert.equal(down.previousLimitBytes, 5 * MiB);
    holder.send('limits');
    assert.deepEqual(await holder.next(), { soft: String(2 * MiB), hard: String(2 * MiB) });

    const haveSysResource = (await client.status()).capabilities.sysResource;
    if (haveSysResource) {
      const up = await client.resize(held.lease.id, 4 * MiB);
      assert.equal(up.lease.limitBytes, 5 * MiB);
    } else {
      await assert.rejects(client.resize(held.lease.id, 4 * MiB), (e: { errorName?: string; parameters?: { errno?: string; reason?: string } }) => {
        assert.equal(e.errorName, 'KernelRefused');
        assert.equal(e.parameters?.errno, 'EPERM');
        assert.match(e.parameters?.reason ?? '', /CAP_SYS_RESOURCE/);
        return true;
      });
      // Refused raise: the ledger and the kernel both still say 2 MiB.
      const [lease] = (await client.list()).leases.filter((l) => l.id === held.lease.id);
      assert.equal(lease?.limitBytes, 2 * MiB);
      holder.send('limits');
      assert.deepEqual(await holder.next(), { soft: String(2 * MiB), hard: String(2 * MiB) });
    }
  } finally {
    client.close();
    holder.send('exit');
    await exited(holder.child);
  }
});

test('a target holding CAP_IPC_LOCK is refused: its pins would not be charged', async () => {
  const client = await BrokerClient.connect(broker.socket);
  try {
    await assert.rejects(client.open({ name: 'vm-root', memoryBytes: 1 * MiB }), (e: { errorName?: string; parameters?: { capability?: string; pid?: number } }) => {
      assert.equal(e.errorName, 'TargetBypassesAccounting');
      assert.equal(e.parameters?.capability, 'CAP_IPC_LOCK');
      assert.equal(e.parameters?.pid, process.pid);
      return true;
    });
  } finally {
    client.close();
  }
  // The audit line travels on the daemon's stdout, which may arrive after the reply.
  const audit = await broker.waitForLog((l) => l['audit'] === 'deny' && l['error'] === 'TargetBypassesAccounting');
  assert.equal((audit['peer'] as { pid: number }).pid, process.pid);
});

test('the budget is enforced with requested and available bytes in the error', async () => {
  const { holder, held } = await holdLease('vm-big', 5 * MiB);
  try {
    const second = new LineReader(spawnStripped('scripts/standin-vm.ts', [broker.socket, 'vm-over', String(2 * MiB)]));
    const refused = await second.next<HeldError>();
    assert.equal(refused.error, 'BudgetExceeded');
    assert.equal(refused.parameters['requestedBytes'], 3 * MiB);
    assert.equal(refused.parameters['availableBytes'], 8 * MiB - held.lease.limitBytes);
    second.send('exit');
    await exited(second.child);
  } finally {
    holder.send('exit');
    await exited(holder.child);
  }
});

test('a manager names the target by pidfd (the libvirt path): the target gets the limit, the manager the FD', async () => {
  const target = spawn('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--', 'sleep', '60'], { stdio: 'ignore' });
  const targetPid = target.pid;
  assert.ok(targetPid !== undefined);
  await waitForExec(targetPid, 'sleep');
  const pidfd = pidfdOpen(targetPid);
  const before = openFds();
  const client = await BrokerClient.connect(broker.socket);
  try {
    const { lease, fd } = await client.open({ name: 'vm-managed', memoryBytes: 1 * MiB, targetPidFd: pidfd });
    assert.equal(lease.pid, targetPid);
    assert.equal(lease.ownerUid, process.getuid?.());
    assert.match(readFileSync(`/proc/${targetPid}/limits`, 'utf8'), new RegExp(`Max locked memory\\s+${2 * MiB}\\s+${2 * MiB}`));
    assert.match(readlinkSync(`/proc/self/fd/${fd}`), /memfd:iommufd-broker-simulated/);
    closeFd(fd);
    target.kill('SIGKILL');
    await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === lease.id);
  } finally {
    client.close();
    closeFd(pidfd);
    target.kill('SIGKILL');
  }
  assert.deepEqual(leakedSince(before), [], 'the client kept no fd');
});

test('a non-manager naming another process is refused with the rule that says why', async () => {
  const other = spawn('sleep', ['60'], { stdio: 'ignore' });
  assert.ok(other.pid !== undefined);
  const asker = new LineReader(spawnStripped('test/support/call-as.ts', [broker.socket, 'open-target', JSON.stringify({ name: 'vm-steal', memoryBytes: MiB, targetPid: other.pid })], { uid: NOBODY }));
  try {
    const result = await asker.next<HeldError>();
    assert.equal(result.error, 'PermissionDenied');
    assert.equal(result.parameters['rule'], 'target-not-self');
  } finally {
    other.kill('SIGKILL');
    await exited(asker.child);
  }
});

/** Waits until pid runs `comm` (setpriv has exec'd the real program). */
async function waitForExec(pid: number, comm: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === comm) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`pid ${pid} never became ${comm}`);
}
