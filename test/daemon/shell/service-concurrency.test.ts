// The service under concurrent calls, through the real daemon: calls on one lease keep kernel,
// ledger and journal in the same order (lease lanes), and concurrent Opens share fdatasyncs
// (group commit) without giving up an exact budget or the durability of what was answered.
//
// Host constraint: no CAP_SYS_RESOURCE, so every raise is KernelRefused here; the lab runs the
// same calls with raises that succeed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { BrokerClient } from '../../../client/index.ts';
import { closeFd, pidfdOpen } from '../../../native/sys.ts';
import { BrokerProcess } from '../../support/daemon.ts';
import { sampleValue, scrape } from '../../support/metrics.ts';
import { killTarget, memlockOf, spawnTarget, type Target } from '../../hostile/support/processes.ts';

const MiB = 1024 ** 2;
const PAGE = 4096;

async function openFor(client: BrokerClient, target: Target, memoryBytes: number): Promise<string> {
  const pidfd = pidfdOpen(target.pid);
  try {
    const opened = await client.open({ name: `vm-${target.pid}`, memoryBytes, targetPidFd: pidfd });
    closeFd(opened.fd);
    return opened.lease.id;
  } finally {
    closeFd(pidfd);
  }
}

test('a raise and a lowering of one lease sent together: the kernel ends where the ledger says', async () => {
  const broker = await BrokerProcess.start({ extraArgs: ['--overhead', '1M'] });
  const target = await spawnTarget();
  const [a, b] = await Promise.all([BrokerClient.connect(broker.socket), BrokerClient.connect(broker.socket)]);
  try {
    let memory = 6 * MiB;
    const id = await openFor(a, target, memory);
    for (let round = 0; round < 8; round++) {
      // The raise is sent first: it waits for the disk, and the lowering arrives during that wait.
      const raise = a.resize(id, memory + 64 * PAGE);
      const lower = b.resize(id, memory - 16 * PAGE);
      const [raised, lowered] = await Promise.allSettled([raise, lower]);
      assert.equal(lowered.status, 'fulfilled', `round ${round}: the lowering went through`);
      if (raised.status === 'rejected') {
        assert.match(String(raised.reason), /KernelRefused/, 'a raise fails here only for want of CAP_SYS_RESOURCE');
      }
      const lease = (await a.list()).leases.find((l) => l.id === id);
      assert.ok(lease !== undefined);
      const kernel = memlockOf(target.pid);
      assert.deepEqual(kernel, { soft: lease.limitBytes, hard: lease.limitBytes },
        `round ${round}: the kernel's limit is the ledger's (${lease.limitBytes})`);
      assert.equal((await a.status()).budget.usedBytes, lease.limitBytes, 'the budget holds exactly that limit');
      memory = lease.memoryBytes;
    }
  } finally {
    a.close();
    b.close();
    await killTarget(target.child);
    await broker.stop();
    broker.cleanup();
  }
});

test('32 concurrent Opens share fdatasyncs; every answered lease survives a SIGKILL', async () => {
  const OPENS = 32;
  const probe = await BrokerProcess.start();
  const admin = join(probe.dir, 'admin.sock');
  await probe.stop();
  const args = ['--overhead', '1M', '--budget', '1G', '--admin-socket', admin];
  let broker = await BrokerProcess.start({ dir: probe.dir, extraArgs: args });
  const targets = await Promise.all(Array.from({ length: OPENS }, () => spawnTarget()));
  const clients = await Promise.all(targets.map(() => BrokerClient.connect(broker.socket)));
  try {
    const before = sampleValue(await scrape(admin), 'iommufd_broker_journal_syncs_total');
    const ids = await Promise.all(targets.map((t, i) => openFor(clients[i] as BrokerClient, t, 2 * MiB + i * PAGE)));
    const metrics = await scrape(admin);
    const syncs = sampleValue(metrics, 'iommufd_broker_journal_syncs_total') - before;
    assert.ok(sampleValue(metrics, 'iommufd_broker_journal_records_total') >= OPENS);
    assert.ok(syncs >= 1 && syncs < OPENS, `${OPENS} Opens took ${syncs} fdatasyncs: some must have shared one`);

    for (const c of clients) c.close();
    await broker.stop('SIGKILL');
    broker = await BrokerProcess.start({ dir: probe.dir, extraArgs: args });
    const client = await BrokerClient.connect(broker.socket);
    try {
      const leases = (await client.list()).leases;
      assert.deepEqual(leases.map((l) => l.id).sort(), [...ids].sort(), 'every answered Open is still a lease');
      assert.equal((await client.status()).budget.usedBytes, leases.reduce((sum, l) => sum + l.limitBytes, 0));
    } finally {
      client.close();
    }
  } finally {
    for (const c of clients) c.close();
    for (const t of targets) await killTarget(t.child);
    await broker.stop();
    broker.cleanup();
  }
});
