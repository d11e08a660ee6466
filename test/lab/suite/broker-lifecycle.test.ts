// Lab assertions 6 and 7: a lease ends when its target exits and the budget comes back; a
// broker killed with SIGKILL and restarted re-adopts a live lease from its state dir, and a
// Resize after that still reaches the live client's limit.
//
// Invariants:
// - The broker notices exits on its own loop: the tests wait for it with a bounded poll of
//   List (Manager.waitForLeases), never with a sleep or a timing assertion.
// - The Manager connects once per call, so the same one talks to the restarted daemon.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { LabBroker, MiB, PAGE } from '../harness/lab-broker.ts';
import { LabClient } from '../harness/lab-client.ts';
import { Manager, openAsTarget } from '../harness/manager.ts';

const OVERHEAD = 256 * 1024;
const BUDGET = 16 * MiB;
const MEMORY = 768 * 1024; // limit 1 MiB

describe('broker on /dev/iommu: lease end on exit, re-adoption after SIGKILL', () => {
  let broker: LabBroker;
  let manager: Manager;
  const clients: LabClient[] = [];

  before(async () => {
    broker = await LabBroker.start({ overheadBytes: OVERHEAD, budgetBytes: BUDGET });
    manager = Manager.start(broker.socket);
  });
  after(async () => {
    for (const c of clients) await c.kill();
    await manager.close();
    assert.deepEqual(await broker.stop(), { code: 0, signal: null });
  });

  test('6. the client exits: its lease disappears and the budget is returned', async () => {
    const before = await manager.status();
    const client = LabClient.spawn({ unprivileged: true });
    clients.push(client);
    const { lease } = await openAsTarget(client, broker.socket, 'lab-exit', MEMORY);
    const during = await manager.status();
    assert.equal(during.leases, before.leases + 1);
    assert.equal(during.budget.usedBytes, before.budget.usedBytes + lease.limitBytes);

    assert.deepEqual(await client.exit(), { code: 0, signal: null });
    await manager.waitForLeases(`lease ${lease.id} to end with pid ${lease.pid}`, (ls) => !ls.some((l) => l.id === lease.id));
    const afterExit = await manager.status();
    assert.equal(afterExit.leases, before.leases);
    assert.deepEqual(afterExit.budget, before.budget);
  });

  test('7. SIGKILL the broker, restart it: the lease is re-adopted and Resize still reaches the client', async () => {
    const client = LabClient.spawn({ unprivileged: true });
    clients.push(client);
    const { lease } = await openAsTarget(client, broker.socket, 'lab-readopt', MEMORY);
    const ioas = await client.okNumber('ioas-alloc');
    await client.ok(`mock-domain ${ioas}`);
    const iova = await client.okNumber(`map ${ioas} ${lease.limitBytes}`);
    const oldPid = broker.pid;

    await broker.kill();
    assert.equal(await client.okNumber('pid'), client.pid, 'the client outlives the broker');
    assert.deepEqual(await client.rlimit(), { soft: lease.limitBytes, hard: lease.limitBytes }, 'its limit stays');
    assert.equal(await client.errnoOf(`map ${ioas} ${PAGE}`), 'ENOMEM', 'and still binds with no broker');

    await broker.restart();
    assert.notEqual(broker.pid, oldPid);
    const adopted = await manager.lease(lease.id);
    assert.ok(adopted !== undefined, `lease ${lease.id} is listed after the restart: ${JSON.stringify(await manager.list())}`);
    assert.equal(adopted.pid, client.pid);
    assert.equal(adopted.limitBytes, lease.limitBytes);
    const status = await manager.status();
    assert.equal(status.leases, 1);
    assert.equal(status.budget.usedBytes, lease.limitBytes, 'the budget counts the re-adopted lease');

    const resized = await manager.resize(lease.id, 2 * MiB - OVERHEAD);
    assert.equal(resized.previousLimitBytes, lease.limitBytes);
    assert.equal(resized.lease.limitBytes, 2 * MiB);
    assert.deepEqual(await client.rlimit(), { soft: 2 * MiB, hard: 2 * MiB }, 'the live client\'s limit changed');
    const more = await client.okNumber(`map ${ioas} ${2 * MiB - lease.limitBytes}`);
    assert.equal((await client.vm()).lockedBytes, 2 * MiB);
    assert.equal(await client.errnoOf(`map ${ioas} ${PAGE}`), 'ENOMEM');
    await client.ok(`unmap ${ioas} ${more}`);
    await client.ok(`unmap ${ioas} ${iova}`);

    assert.deepEqual(await client.exit(), { code: 0, signal: null });
    await manager.waitForLeases('the re-adopted lease to end when its client exits', (ls) => !ls.some((l) => l.id === lease.id));
    assert.equal((await manager.status()).budget.usedBytes, 0);
  });
});
