// Lab assertion 4: Resize from a manager changes the live client's limit in the kernel's
// eyes. Up (before a memory hotplug): a map that failed now succeeds. Down (after an unplug):
// maps beyond the new limit fail. The client can never raise its own limit.
//
// Invariants:
// - One daemon and one unprivileged client for the file; the steps run in order and each
//   checks the client's RLIMIT_MEMLOCK (what the kernel enforces), not only the lease.
// - The client unmaps before each Resize, so every map measures the limit alone.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { LabBroker, MiB, PAGE } from '../harness/lab-broker.ts';
import { LabClient } from '../harness/lab-client.ts';
import { Manager, openAsTarget } from '../harness/manager.ts';
import type { Lease } from '../../../protocol/methods.ts';

const OVERHEAD = 256 * 1024;
const BUDGET = 16 * MiB;
const SMALL = 768 * 1024; // limit 1 MiB
const LARGE = 2 * MiB - OVERHEAD; // limit 2 MiB
const TINY = 256 * 1024; // limit 512 KiB

describe('broker on /dev/iommu: Resize up before hotplug, down after unplug', () => {
  let broker: LabBroker;
  let manager: Manager;
  let client: LabClient;
  let lease: Lease;
  let ioas: number;

  before(async () => {
    broker = await LabBroker.start({ overheadBytes: OVERHEAD, budgetBytes: BUDGET });
    manager = Manager.start(broker.socket);
    client = LabClient.spawn({ unprivileged: true });
    lease = (await openAsTarget(client, broker.socket, 'lab-resize', SMALL)).lease;
    ioas = await client.okNumber('ioas-alloc');
    await client.ok(`mock-domain ${ioas}`);
  });
  after(async () => {
    await client.kill();
    await manager.close();
    assert.deepEqual(await broker.stop(), { code: 0, signal: null });
  });

  test('before the Resize, a map the size of the larger limit fails', async () => {
    assert.equal(lease.limitBytes, 1 * MiB);
    assert.deepEqual(await client.rlimit(), { soft: 1 * MiB, hard: 1 * MiB });
    assert.equal(await client.errnoOf(`map ${ioas} ${2 * MiB}`), 'ENOMEM');
  });

  test('Resize up: the limit is raised in the kernel and the larger map succeeds', async () => {
    const resized = await manager.resize(lease.id, LARGE);
    assert.equal(resized.previousLimitBytes, 1 * MiB);
    assert.equal(resized.lease.limitBytes, 2 * MiB);
    assert.equal(resized.lease.memoryBytes, LARGE);
    assert.deepEqual(await client.rlimit(), { soft: 2 * MiB, hard: 2 * MiB });
    const start = await client.vm();
    const iova = await client.okNumber(`map ${ioas} ${2 * MiB}`);
    assert.equal((await client.vm()).lockedBytes - start.lockedBytes, 2 * MiB);
    assert.equal(await client.errnoOf(`map ${ioas} ${PAGE}`), 'ENOMEM', 'and not a page more');
    await client.ok(`unmap ${ioas} ${iova}`);
    assert.deepEqual(await client.vm(), start);
    assert.equal((await manager.status()).budget.usedBytes, 2 * MiB);
  });

  test('Resize down: maps beyond the new limit fail, within it they work', async () => {
    const resized = await manager.resize(lease.id, TINY);
    assert.equal(resized.previousLimitBytes, 2 * MiB);
    assert.equal(resized.lease.limitBytes, 512 * 1024);
    assert.deepEqual(await client.rlimit(), { soft: 512 * 1024, hard: 512 * 1024 });
    assert.equal(await client.errnoOf(`map ${ioas} ${512 * 1024 + PAGE}`), 'ENOMEM');
    const iova = await client.okNumber(`map ${ioas} ${512 * 1024}`);
    await client.ok(`unmap ${ioas} ${iova}`);
    assert.equal((await manager.status()).budget.usedBytes, 512 * 1024);
  });

  test('the client cannot raise its own limit (setrlimit above the hard limit is EPERM)', async () => {
    assert.equal(await client.errnoOf(`rlimit-set ${512 * 1024 + PAGE} ${512 * 1024 + PAGE}`), 'EPERM');
    assert.equal(await client.errnoOf(`rlimit-set ${2 * MiB} ${2 * MiB}`), 'EPERM');
    assert.equal(await client.errnoOf('rlimit-set inf inf'), 'EPERM');
    assert.deepEqual(await client.rlimit(), { soft: 512 * 1024, hard: 512 * 1024 });
    assert.equal(await client.errnoOf(`map ${ioas} ${512 * 1024 + PAGE}`), 'ENOMEM', 'still bound by the broker\'s limit');
  });

  test('a raise and a lowering sent together by two managers: the kernel ends where the ledger says', async () => {
    const other = Manager.start(broker.socket);
    try {
      for (let round = 0; round < 4; round++) {
        // The raise waits for the journal's fdatasync; the lowering arrives during that wait.
        const [raised, lowered] = await Promise.all([manager.resize(lease.id, LARGE), other.resize(lease.id, SMALL)]);
        assert.equal(raised.lease.limitBytes, 2 * MiB);
        assert.equal(lowered.lease.limitBytes, 1 * MiB);
        const now = await manager.lease(lease.id);
        assert.ok(now !== undefined);
        assert.ok([1 * MiB, 2 * MiB].includes(now.limitBytes), `round ${round}: the ledger holds one of the two (${now.limitBytes})`);
        assert.deepEqual(await client.rlimit(), { soft: now.limitBytes, hard: now.limitBytes }, `round ${round}: the kernel agrees`);
        assert.equal((await manager.status()).budget.usedBytes, now.limitBytes);
      }
    } finally {
      await other.close();
    }
  });
});
