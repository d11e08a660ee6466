// Lab assertions 1, 2, 3 and 8: the real broker on the real /dev/iommu reports what the kernel
// offers, hands an unprivileged client an FD it can neither re-mode nor out-grow, and refuses
// a target whose pins would never be charged.
//
// Invariants:
// - One daemon for the file, started here and stopped at the end; each test that spawns a
//   client ends it. The tests run in order and share the first client (2 then 3), so a
//   failure in 2 fails 3 too, never hides it.
// - The client speaks Varlink itself (lab-client.c): the broker's peer is the very process
//   whose RLIMIT_MEMLOCK and pins are checked.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { LabBroker, MiB, PAGE } from '../harness/lab-broker.ts';
import { LabClient, NOBODY } from '../harness/lab-client.ts';
import { brokerError, Manager, openAsTarget, varlinkCall } from '../harness/manager.ts';
import type { Lease } from '../../../protocol/methods.ts';
import { leakedSince, openFds } from '../../support/fds.ts';

const OVERHEAD = 256 * 1024;
const BUDGET = 16 * MiB;
const MEMORY = 768 * 1024;
const LIMIT = MEMORY + OVERHEAD; // 1 MiB, already page-aligned

describe('broker on /dev/iommu (unpatched kernel: memlock backend): Status, Open, limits, refusal of CAP_IPC_LOCK', () => {
  let broker: LabBroker;
  let manager: Manager;
  let client: LabClient | undefined;
  let lease: Lease | undefined;

  before(async () => {
    broker = await LabBroker.start({ overheadBytes: OVERHEAD, budgetBytes: BUDGET });
    manager = Manager.start(broker.socket);
  });
  after(async () => {
    await client?.kill();
    await manager.close();
    const stopped = await broker.stop();
    assert.deepEqual(stopped, { code: 0, signal: null }, 'the daemon stops cleanly on SIGTERM');
  });

  test('1. Status: a real device, RLIMIT_MODE supported, no per-FD limit option', async () => {
    const status = await manager.status();
    assert.equal(status.device.kind, 'iommufd');
    assert.equal(status.device.path, '/dev/iommu');
    assert.equal(status.device.rlimitModeSupported, true);
    assert.equal(status.device.perFdLimitOption, false, 'the probe of IOMMU_OPTION_PINNED_LIMIT gave EOPNOTSUPP');
    // Issue #10: the unpatched kernel has no per-FD limit, so the probe chose the memlock backend.
    assert.equal(status.backend?.kind, 'memlock');
    assert.match(status.backend?.reason ?? '', /PINNED_LIMIT \(option 4\) on a fresh FD answered EOPNOTSUPP/);
    const chosen = broker.logs.find((l) => typeof l.msg === 'string' && l.msg.startsWith('backend '));
    assert.match(String(chosen?.msg), /^backend memlock: .*EOPNOTSUPP/);
    assert.equal(status.capabilities.sysResource, true, 'root in the VM has CAP_SYS_RESOURCE');
    assert.deepEqual(status.budget, { totalBytes: BUDGET, usedBytes: 0, freeBytes: BUDGET, releasedBytes: 0 });
    assert.equal(status.leases, 0);
    assert.equal(status.overheadBytes, OVERHEAD);
  });

  test('2. an unprivileged client gets an FD by Open: mode 1, SET refused, its limit is the lease\'s', async () => {
    client = LabClient.spawn({ unprivileged: true });
    const [capEff, euid] = await client.ok('caps');
    assert.equal(BigInt(`0x${capEff ?? 'x'}`), 0n, 'no capabilities at all, so no CAP_IPC_LOCK');
    assert.equal(Number(euid), NOBODY);

    const fdsBefore = openFds(client.pid);
    const opened = await openAsTarget(client, broker.socket, 'lab-open', MEMORY);
    lease = opened.lease;
    assert.deepEqual(leakedSince(fdsBefore, client.pid), [`${opened.fd} -> /dev/iommu`],
      'the client gained exactly one fd, the iommufd (its socket is closed, nothing else came)');
    assert.equal(lease.pid, client.pid, 'the lease targets the peer itself');
    assert.equal(lease.uid, NOBODY);
    assert.equal(lease.ownerUid, NOBODY);
    assert.equal(lease.memoryBytes, MEMORY);
    assert.equal(lease.limitBytes, LIMIT);
    assert.equal(lease.accountingMode, 'process');
    assert.equal(lease.deviceKind, 'iommufd');

    assert.equal(await client.okNumber('option-get 0'), 1, 'GET RLIMIT_MODE on the received FD');
    assert.equal(await client.errnoOf('option-set 0 1'), 'EPERM', 'SET RLIMIT_MODE without CAP_SYS_RESOURCE');
    assert.equal(await client.errnoOf('option-set 0 0'), 'EPERM', 'nor can it switch back to per-user accounting');
    assert.deepEqual(await client.rlimit(), { soft: LIMIT, hard: LIMIT }, 'RLIMIT_MEMLOCK equals limitBytes');

    const status = await manager.status();
    assert.equal(status.leases, 1);
    assert.equal(status.budget.usedBytes, LIMIT);
  });

  test('3. with a mock domain: maps up to the limit, VmLck grows by it, one page more is ENOMEM', async () => {
    assert.ok(client !== undefined && lease !== undefined, 'test 2 must have opened a lease');
    const ioas = await client.okNumber('ioas-alloc');
    await client.ok(`mock-domain ${ioas}`);
    const start = await client.vm();
    await client.ok(`map ${ioas} ${LIMIT}`);
    const full = await client.vm();
    assert.equal(full.lockedBytes - start.lockedBytes, LIMIT);
    assert.equal(full.pinnedBytes - start.pinnedBytes, LIMIT);
    assert.equal(await client.errnoOf(`map ${ioas} ${PAGE}`), 'ENOMEM');
    assert.deepEqual(await client.vm(), full);

    const seen = await manager.lease(lease.id);
    assert.equal(seen?.lockedBytes, full.lockedBytes, 'List reports the target\'s VmLck');
    assert.equal(seen?.pinnedBytes, full.pinnedBytes, 'List reports the target\'s VmPin');
    assert.deepEqual(await client.exit(), { code: 0, signal: null });
    client = undefined;
  });

  test('8. a root client (CAP_IPC_LOCK) is refused with TargetBypassesAccounting', async () => {
    const root = LabClient.spawn({ unprivileged: false });
    try {
      const result = await varlinkCall(root, broker.socket, 'io.iommufd.Broker.Open', { name: 'lab-root', memoryBytes: MEMORY });
      assert.equal(result.reply.error, brokerError('TargetBypassesAccounting'), JSON.stringify(result.reply));
      assert.equal(result.fds, 0, 'no FD comes with a refusal');
      assert.equal(result.reply.parameters?.['pid'], root.pid);
      assert.equal(result.reply.parameters?.['capability'], 'CAP_IPC_LOCK');
      assert.equal(await root.errnoOf('option-get 0'), 'EBADF', 'the client holds no iommufd FD');
      assert.equal((await manager.list()).some((l) => l.pid === root.pid), false, 'no lease for it');
      assert.deepEqual(await root.exit(), { code: 0, signal: null });
    } finally {
      await root.kill();
    }
  });
});
