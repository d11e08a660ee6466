// Issue #10 on the patched kernel (kernel/iommufd-pinned-limit/): the broker's own probe chooses
// the per-FD backend, and then each lease's FD carries its own limit. Shown against the real
// kernel, with the selftest mock domain making maps pin:
//   a CAP_IPC_LOCK holder (root) is limited by its FD, which the memlock backend cannot do;
//   two FDs in one process have independent limits and usage;
//   a raise at run time lets a refused map succeed; a lowering below the usage keeps the pins
//   and refuses new ones;
//   the per-FD usage the broker reports is exactly what was mapped;
//   after SIGKILL and a new start the daemon takes its kept FDs back from the fd store (the
//   lab's stand-in for systemd, test/support/fdstore-standin.c) and still resizes the lease.
//
// Invariants:
// - One daemon under the stand-in for the file; the tests run in order and share leases (the
//   restart test resizes the leases the earlier tests made), so a failure fails what follows.
// - Every limit is checked where the kernel enforces it: the FD's own IOMMU_OPTION_PINNED_LIMIT
//   (option 4) and a map that pins; usage as IOMMU_OPTION_PINNED_USAGE (option 5).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { BrokerClient } from '../../../client/index.ts';
import { closeFd, pidfdOpen } from '../../../native/sys.ts';
import type { Lease } from '../../../protocol/methods.ts';
import { MiB, PAGE } from '../harness/lab-broker.ts';
import { LabClient } from '../harness/lab-client.ts';
import { Manager, openAsTarget } from '../harness/manager.ts';
import { StandinBroker } from '../harness/standin-broker.ts';

const OVERHEAD = 256 * 1024;
const BUDGET = 32 * MiB;
const LIMIT_OPTION = 4;
const USAGE_OPTION = 5;
const CAP_IPC_LOCK = 14n;

/** memoryBytes whose limit (memory + overhead) is `limit`. */
const memoryFor = (limit: number): number => limit - OVERHEAD;

describe('broker on the patched kernel: the per-FD backend', () => {
  let broker: StandinBroker;
  let manager: Manager;
  let brokerClient: BrokerClient;
  const sleepers: ChildProcess[] = [];
  let two: LabClient | undefined;
  let leaseA: Lease;
  let leaseB: Lease;
  let ioasA = 0;

  before(async () => {
    broker = await StandinBroker.start({ overheadBytes: OVERHEAD, budgetBytes: BUDGET });
    manager = Manager.start(broker.socket);
  });
  after(async () => {
    brokerClient?.close();
    await two?.kill();
    for (const s of sleepers) s.kill('SIGKILL');
    await manager.close();
    await broker.close();
  });

  test('the probe chose the per-FD backend and says why (Status, start log)', async (t) => {
    const status = await manager.status();
    assert.equal(status.backend?.kind, 'per-fd');
    assert.match(status.backend?.reason ?? '', /PINNED_LIMIT \(option 4\) on a fresh FD answered no limit and PINNED_USAGE 0/);
    assert.equal(status.device.perFdLimitOption, true);
    assert.deepEqual([status.backend?.notResizableCount, status.backend?.notResizable], [0, []]);
    const chosen = broker.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('backend '));
    assert.match(String(chosen?.msg), /^backend per-fd: /);
    t.diagnostic(`start log: ${String(chosen?.msg)}`);
  });

  test('a CAP_IPC_LOCK holder is accepted and limited by its FD: a map over the limit is ENOMEM', async (t) => {
    const root = LabClient.spawn({ unprivileged: false });
    try {
      const [capEff] = await root.ok('caps');
      assert.notEqual(BigInt(`0x${capEff ?? '0'}`) & (1n << CAP_IPC_LOCK), 0n, 'the client holds CAP_IPC_LOCK');
      const { lease } = await openAsTarget(root, broker.socket, 'lab-ipc-lock', memoryFor(1 * MiB));
      assert.equal(lease.accountingMode, 'fd');
      assert.equal(await root.okNumber(`option-get ${LIMIT_OPTION}`), 1 * MiB, 'the broker set the FD\'s limit before handing it out');
      const ioas = await root.okNumber('ioas-alloc');
      await root.ok(`mock-domain ${ioas}`);
      const before = await root.vm();
      await root.ok(`map ${ioas} ${1 * MiB}`);
      assert.equal(await root.errnoOf(`map ${ioas} ${PAGE}`), 'ENOMEM', 'one page over the FD\'s limit');
      assert.equal(await root.okNumber(`option-get ${USAGE_OPTION}`), 1 * MiB);
      assert.equal((await root.vm()).lockedBytes, before.lockedBytes, 'RLIMIT_MEMLOCK never charges it: only the FD limit binds');
      assert.equal((await manager.lease(lease.id))?.fdPinnedBytes, 1 * MiB, 'List shows the FD\'s usage');
      t.diagnostic(`CAP_IPC_LOCK holder: limit ${1 * MiB}, mapped ${1 * MiB}, one page more ENOMEM, VmLck unchanged (${before.lockedBytes})`);
    } finally {
      await root.exit();
    }
  });

  test('two FDs in one process: each has its own limit and usage', async (t) => {
    brokerClient = await BrokerClient.connect(broker.socket);
    const fds: number[] = [];
    const leases: Lease[] = [];
    for (const [name, limit] of [['lab-fd-a', 1 * MiB], ['lab-fd-b', 2 * MiB]] as const) {
      const sleeper = spawn('sleep', ['600'], { stdio: 'ignore' });
      sleepers.push(sleeper);
      const pidfd = pidfdOpen(sleeper.pid ?? -1);
      try {
        const opened = await brokerClient.open({ name, memoryBytes: memoryFor(limit), targetPidFd: pidfd });
        fds.push(opened.fd);
        leases.push(opened.lease);
      } finally {
        closeFd(pidfd);
      }
    }
    [leaseA, leaseB] = leases as [Lease, Lease];
    two = LabClient.spawn({ unprivileged: false, passFds: fds });
    for (const fd of fds) closeFd(fd); // the client holds them now
    assert.equal(await two.okNumber(`option-get ${LIMIT_OPTION}`), 1 * MiB);
    ioasA = await two.okNumber('ioas-alloc');
    await two.ok(`mock-domain ${ioasA}`);
    await two.ok(`map ${ioasA} ${1 * MiB}`);
    assert.equal(await two.errnoOf(`map ${ioasA} ${PAGE}`), 'ENOMEM', 'FD A is full');

    await two.ok('fd 4');
    assert.equal(await two.okNumber(`option-get ${LIMIT_OPTION}`), 2 * MiB);
    const ioasB = await two.okNumber('ioas-alloc');
    await two.ok(`mock-domain ${ioasB}`);
    await two.ok(`map ${ioasB} ${2 * MiB}`);
    assert.equal(await two.errnoOf(`map ${ioasB} ${PAGE}`), 'ENOMEM', 'FD B is full at its own limit');
    assert.equal(await two.okNumber(`option-get ${USAGE_OPTION}`), 2 * MiB);
    await two.ok('fd 3');
    assert.equal(await two.okNumber(`option-get ${USAGE_OPTION}`), 1 * MiB, 'FD A\'s usage is its own');

    const listed = await manager.list();
    assert.equal(listed.find((l) => l.id === leaseA.id)?.fdPinnedBytes, 1 * MiB, 'per-FD usage matches what was mapped');
    assert.equal(listed.find((l) => l.id === leaseB.id)?.fdPinnedBytes, 2 * MiB);
    t.diagnostic(`one process, two FDs: A limit ${1 * MiB} usage ${1 * MiB}; B limit ${2 * MiB} usage ${2 * MiB}`);
  });

  test('a raise at run time lets the refused map succeed; a lowering below the usage keeps the pins', async (t) => {
    assert.ok(two !== undefined);
    const raised = await manager.resize(leaseA.id, memoryFor(2 * MiB));
    assert.equal(raised.lease.limitBytes, 2 * MiB);
    assert.equal(await two.okNumber(`option-get ${LIMIT_OPTION}`), 2 * MiB, 'the FD\'s limit was raised');
    await two.ok(`map ${ioasA} ${1 * MiB}`);
    assert.equal(await two.okNumber(`option-get ${USAGE_OPTION}`), 2 * MiB);

    const lowered = await manager.resize(leaseA.id, memoryFor(1 * MiB));
    assert.equal(lowered.lease.limitBytes, 1 * MiB);
    assert.equal(lowered.lease.fdPinnedBytes, 2 * MiB, 'lowering below the usage keeps what is pinned');
    assert.equal(await two.errnoOf(`map ${ioasA} ${PAGE}`), 'ENOMEM', 'and refuses new pins');
    t.diagnostic('raise 1 MiB -> 2 MiB: the refused 1 MiB map succeeded; lower to 1 MiB with 2 MiB pinned: kept, new pins ENOMEM');
  });

  test('SIGKILL and a new start: the FDs come back from the fd store; Resize still reaches the FD', async (t) => {
    assert.ok(two !== undefined);
    const stored = await broker.stored();
    assert.equal(stored.get(`lease-${leaseA.id}`), '/dev/iommu');
    assert.equal(stored.get(`lease-${leaseB.id}`), '/dev/iommu');
    await broker.kill();
    await broker.restart();
    const restored = broker.logs.filter((l) => l.msg === 'journal restored').at(-1);
    assert.equal(restored?.['fdsTakenBack'], 2, `restored: ${JSON.stringify(restored)}`);
    assert.equal(broker.logs.filter((l) => typeof l.msg === 'string' && l.msg.startsWith('backend per-fd: ')).length, 2, 're-probed');
    const status = await manager.status();
    assert.deepEqual([status.backend?.kind, status.backend?.notResizableCount], ['per-fd', 0]);

    const raised = await manager.resize(leaseA.id, memoryFor(4 * MiB));
    assert.equal(raised.previousLimitBytes, 1 * MiB);
    assert.equal(await two.okNumber(`option-get ${LIMIT_OPTION}`), 4 * MiB, 'the restarted broker raised the FD\'s limit');
    await two.ok(`map ${ioasA} ${1 * MiB}`);
    assert.equal(raised.lease.fdPinnedBytes, 2 * MiB);
    assert.equal((await manager.lease(leaseA.id))?.fdPinnedBytes, 3 * MiB);
    t.diagnostic('after SIGKILL + start: 2 FDs taken back from the store; Resize 1 MiB -> 4 MiB reached the FD; a 1 MiB map then succeeded');
  });

  test('a target\'s exit closes the kept FD and the store forgets it', async () => {
    for (const s of sleepers) s.kill('SIGKILL');
    await manager.waitForLeases('both leases end', (leases) => !leases.some((l) => l.id === leaseA.id || l.id === leaseB.id));
    await broker.until('the store forgot both', () => [leaseA, leaseB].every((l) => broker.events.includes(`remove lease-${l.id}`)));
    const stored = await broker.stored();
    assert.equal(stored.has(`lease-${leaseA.id}`) || stored.has(`lease-${leaseB.id}`), false);
  });
});
