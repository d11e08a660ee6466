// The service through the real daemon: permissions ("no way out"), restart re-adoption, Release.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BrokerClient } from '../../../client/index.ts';
import { BrokerProcess } from '../../support/daemon.ts';
import { LineReader, NOBODY, exited, spawnStripped } from '../../support/children.ts';
import { eventually } from '../../hostile/support/processes.ts';

const MiB = 1024 ** 2;

interface Held { lease: { id: string; pid: number; limitBytes: number } }
interface CallResult { ok?: unknown; error?: string; parameters?: Record<string, unknown> }

async function hold(broker: BrokerProcess, name: string): Promise<{ holder: LineReader; id: string; pid: number; limitBytes: number }> {
  const holder = new LineReader(spawnStripped('scripts/standin-vm.ts', [broker.socket, name, String(2 * MiB)]));
  const held = await holder.next<Held & { error?: string }>();
  assert.equal(held.error, undefined, `lease refused: ${JSON.stringify(held)}`);
  return { holder, id: held.lease.id, pid: held.lease.pid, limitBytes: held.lease.limitBytes };
}

async function callAsNobody(broker: BrokerProcess, method: string, params: unknown): Promise<CallResult> {
  const r = new LineReader(spawnStripped('test/support/call-as.ts', [broker.socket, method, JSON.stringify(params)], { uid: NOBODY }));
  const result = await r.next<CallResult>();
  await exited(r.child);
  return result;
}

test('a non-manager can neither resize, release nor see another uid\'s lease', async () => {
  const broker = await BrokerProcess.start({ extraArgs: ['--overhead', '1M'] });
  const { holder, id } = await hold(broker, 'vm-owned');
  try {
    // A lease the peer may not see looks exactly like a missing one (no existence oracle).
    const resize = await callAsNobody(broker, 'resize', { lease: id, memoryBytes: 1 * MiB });
    assert.deepEqual(resize, { error: 'NoSuchLease', parameters: { lease: id } });
    const release = await callAsNobody(broker, 'release', { lease: id });
    assert.deepEqual(release, { error: 'NoSuchLease', parameters: { lease: id } });
    const list = await callAsNobody(broker, 'list', {});
    assert.deepEqual(list.ok, { leases: [] });
    await broker.waitForLog((l) => l['audit'] === 'deny' && l['action'] === 'release' && (l['peer'] as { uid: number }).uid === NOBODY);
    assert.equal(broker.audits('deny').filter((l) => (l['peer'] as { uid: number }).uid === NOBODY).length, 2);
    // The lease itself is untouched.
    holder.send('limits');
    assert.deepEqual(await holder.next(), { soft: String(3 * MiB), hard: String(3 * MiB) });
  } finally {
    holder.send('exit');
    await exited(holder.child);
    await broker.stop();
    broker.cleanup();
  }
});

test('a policy that does not list a uid refuses its Open, naming the rule', async () => {
  const broker0 = await BrokerProcess.start();
  const config = join(broker0.dir, 'policy.json');
  await broker0.stop();
  writeFileSync(config, JSON.stringify({ open: { users: [0] } }));
  const broker = await BrokerProcess.start({ dir: broker0.dir, extraArgs: ['--config', config] });
  try {
    const open = await callAsNobody(broker, 'open', { name: 'vm-nobody', memoryBytes: 1 * MiB });
    assert.equal(open.error, 'PermissionDenied');
    assert.equal(open.parameters?.['rule'], 'open-users');
  } finally {
    await broker.stop();
    broker.cleanup();
  }
});

test('after SIGKILL a restarted daemon re-adopts live targets and drops dead ones', async () => {
  const broker = await BrokerProcess.start({ extraArgs: ['--overhead', '1M'] });
  const live = await hold(broker, 'vm-survivor');
  const doomed = await hold(broker, 'vm-doomed');
  await broker.stop('SIGKILL');
  doomed.holder.send('exit');
  await exited(doomed.holder.child);

  const again = await BrokerProcess.start({ dir: broker.dir, extraArgs: ['--overhead', '1M'] });
  const client = await BrokerClient.connect(again.socket);
  try {
    const restored = await again.waitForLog((l) => l.msg === 'journal restored');
    assert.equal(restored['adopted'], 1);
    assert.equal(restored['dropped'], 1);
    const leases = (await client.list()).leases;
    assert.deepEqual(leases.map((l) => l.id), [live.id]);
    assert.equal((await client.status()).budget.usedBytes, live.limitBytes);
    // Still managed: a lowering reaches the live target.
    const resized = await client.resize(live.id, 1 * MiB);
    assert.equal(resized.lease.limitBytes, 2 * MiB);
    live.holder.send('limits');
    assert.deepEqual(await live.holder.next(), { soft: String(2 * MiB), hard: String(2 * MiB) });
    // And still watched: the target's exit ends the re-adopted lease.
    live.holder.send('exit');
    await exited(live.holder.child);
    await again.waitForLog((l) => l['audit'] === 'release' && l['lease'] === live.id);
    assert.equal((await client.status()).budget.usedBytes, 0);
  } finally {
    client.close();
    await again.stop();
    again.cleanup();
  }
});

test('Release keeps a live target\'s lease charged, unresizable, until the target exits; then the budget returns', async () => {
  // Issue #8 item 5: the target keeps its FD and its limit after a Release, so it may still pin
  // up to limitBytes; the budget must go on counting them until it exits.
  const broker = await BrokerProcess.start({ extraArgs: ['--overhead', '1M'] });
  const { holder, id, pid, limitBytes } = await hold(broker, 'vm-released');
  const client = await BrokerClient.connect(broker.socket);
  try {
    assert.deepEqual(await client.release(id), { limitRestored: false });
    const status = await client.status();
    assert.equal(status.budget.usedBytes, limitBytes, 'still charged while the target lives');
    assert.equal(status.budget.releasedBytes, limitBytes);
    assert.equal(status.leases, 1);
    const listed = (await client.list()).leases.find((l) => l.id === id);
    assert.ok(listed?.releasedAt !== undefined, `List says it was released: ${JSON.stringify(listed)}`);
    assert.equal(listed.pid, pid);
    await assert.rejects(client.resize(id, MiB), (e: { errorName?: string; parameters?: { rule?: string } }) =>
      e.errorName === 'PermissionDenied' && e.parameters?.rule === 'lease-released');
    assert.deepEqual(await client.release(id), { limitRestored: false }, 'a retried Release changes nothing');
    holder.send('limits');
    assert.deepEqual(await holder.next(), { soft: String(limitBytes), hard: String(limitBytes) }, 'the limit is kept');

    holder.send('exit');
    await exited(holder.child);
    await eventually('the exited target\'s lease ends', () => broker.audits('release').some((l) => l['lease'] === id && l['reason'] === 'target exited'));
    const after = await client.status();
    assert.equal(after.budget.usedBytes, 0);
    assert.equal(after.budget.releasedBytes, 0);
    await assert.rejects(client.release(id), (e: { errorName?: string }) => e.errorName === 'NoSuchLease');
  } finally {
    client.close();
    if (holder.child.exitCode === null && holder.child.signalCode === null) {
      holder.send('exit');
      await exited(holder.child);
    }
    await broker.stop();
    broker.cleanup();
  }
});

test('a VM that releases its own lease keeps the lease\'s limit (no Release ever restores one)', async () => {
  const broker0 = await BrokerProcess.start();
  const config = join(broker0.dir, 'policy.json');
  await broker0.stop();
  // Nobody is a manager, so the VM (uid 0 here, every capability dropped) is a plain owner.
  writeFileSync(config, JSON.stringify({ managers: { users: [] } }));
  const broker = await BrokerProcess.start({ dir: broker0.dir, extraArgs: ['--config', config, '--overhead', '1M'] });
  const { holder, id, limitBytes } = await hold(broker, 'vm-self-release');
  try {
    holder.send('release');
    assert.deepEqual(await holder.next(), { ok: { limitRestored: false } });
    const audit = await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === id);
    assert.equal(audit['reason'], 'released; charged until the target exits');
    assert.equal(audit['limitRestored'], false);
    holder.send('limits');
    assert.deepEqual(await holder.next(), { soft: String(limitBytes), hard: String(limitBytes) });
  } finally {
    holder.send('exit');
    await exited(holder.child);
    await broker.stop();
    broker.cleanup();
  }
});
