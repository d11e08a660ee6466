// Re-adoption across boots: /var/lib survives a reboot, so pid + start time alone could adopt
// an unrelated process. Leases of another boot are dropped (and their release journaled);
// version 1 leases (boot unknown) count as this boot's only if the journal was last written
// during it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, utimesSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerClient } from '../../../client/index.ts';
import { currentBoot } from '../../../daemon/shell/journal/boot.ts';
import { replay } from '../../../daemon/shell/journal/format.ts';
import { BrokerProcess } from '../../support/daemon.ts';
import { grantLine, memlock, sleeper, writeJournal } from '../../support/journal-files.ts';

const MiB = 1024 ** 2;

async function startOn(lines: string[], touch?: (file: string) => void): Promise<{ broker: BrokerProcess; restored: Record<string, unknown> }> {
  const dir = mkdtempSync(join(tmpdir(), 'restore-boot-'));
  chmodSync(dir, 0o755);
  const file = writeJournal(join(dir, 'state'), lines);
  touch?.(file);
  const broker = await BrokerProcess.start({ dir });
  const restored = await broker.waitForLog((l) => l.msg === 'journal restored');
  return { broker, restored };
}

test('a lease granted in another boot is dropped, even though its pid and start time match a live process', async () => {
  const target = await sleeper();
  const before = memlock(target.pid);
  const other = randomUUID();
  const { broker, restored } = await startOn([grantLine(2, 1, target, other)]);
  const client = await BrokerClient.connect(broker.socket);
  try {
    assert.equal(restored['adopted'], 0);
    assert.equal(restored['dropped'], 1);
    const audit = await broker.waitForLog((l) => l['audit'] === 'release' && l['lease'] === 'l-0000000000000001');
    assert.equal(audit['reason'], 'granted in an earlier boot');
    assert.deepEqual((await client.list()).leases, []);
    assert.deepEqual(memlock(target.pid), before, 'the stranger\'s limit was not touched');
    const file = join(broker.stateDir, 'leases.journal');
    assert.equal(replay(file, readFileSync(file)).leases.size, 0, 'the drop is journaled');
  } finally {
    client.close();
    target.child.kill('SIGKILL');
    await broker.stop();
    broker.cleanup();
  }
});

test('a version 1 lease in a journal last written before this boot is dropped', async () => {
  const target = await sleeper();
  const before = memlock(target.pid);
  const earlier = new Date(currentBoot().startedAtMs - 3600_000);
  const { broker, restored } = await startOn([grantLine(1, 1, target)], (file) => utimesSync(file, earlier, earlier));
  try {
    assert.equal(restored['adopted'], 0);
    assert.equal(restored['dropped'], 1);
    assert.deepEqual(memlock(target.pid), before);
  } finally {
    target.child.kill('SIGKILL');
    await broker.stop();
    broker.cleanup();
  }
});

test('this boot\'s leases are re-adopted: version 2 with our boot id, and version 1 in a journal written this boot', async () => {
  const [a, b] = [await sleeper(), await sleeper()];
  const { broker, restored } = await startOn([grantLine(2, 1, a, currentBoot().id), grantLine(1, 2, b)]);
  const client = await BrokerClient.connect(broker.socket);
  try {
    assert.equal(restored['adopted'], 2);
    assert.equal(restored['dropped'], 0);
    assert.deepEqual((await client.list()).leases.map((l) => l.id), ['l-0000000000000001', 'l-0000000000000002']);
    assert.deepEqual(memlock(a.pid), [String(3 * MiB), String(3 * MiB)]);
    assert.deepEqual(memlock(b.pid), [String(3 * MiB), String(3 * MiB)]);
    // The compaction at start keeps the unknown boot unknown (a version 1 line), never guessed.
    const lines = readFileSync(join(broker.stateDir, 'leases.journal'), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as { v: number });
    assert.deepEqual(lines.map((l) => l.v), [2, 1]);
  } finally {
    client.close();
    a.child.kill('SIGKILL');
    b.child.kill('SIGKILL');
    await broker.stop();
    broker.cleanup();
  }
});
