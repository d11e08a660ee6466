// Group commit: records written in one loop turn share one fdatasync, records written while it
// runs share the next, flush() resolves only once its records are covered, and close() never
// closes the fd under a sync that is still using it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JournalMisuse, LeaseJournal } from '../../../../daemon/shell/journal/journal.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';
import { leaseFor, peekLeases } from './ops.ts';

function withJournal(body: (journal: LeaseJournal, dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'journal-gc-'));
    const { journal } = LeaseJournal.open(dir);
    try {
      await body(journal, dir);
    } finally {
      journal.close();
      rmSync(dir, { recursive: true });
    }
  };
}

const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** The live lease ids a restarted daemon would recover from dir (read while the journal is still open). */
function recoveredIds(dir: string): string[] {
  return peekLeases(dir).map((l) => l.id).sort();
}

test('the records of one loop turn share one fdatasync', withJournal(async (journal, dir) => {
  const flushes = [];
  for (let i = 0; i < 50; i++) {
    journal.recordGrant(leaseFor(i));
    flushes.push(journal.flush());
  }
  assert.deepEqual(journal.stats, { records: 50, syncs: 0 }, 'nothing is synced inside the turn that wrote it');
  await Promise.all(flushes);
  assert.deepEqual(journal.stats, { records: 50, syncs: 1 });
  assert.equal(recoveredIds(dir).length, 50);
}));

test('records written while a sync runs wait for the next one, and only for it', withJournal(async (journal) => {
  journal.recordGrant(leaseFor(0));
  const first = journal.flush();
  await turn(); // the first sync is now on the thread pool
  journal.recordGrant(leaseFor(1));
  journal.recordGrant(leaseFor(2));
  let secondDone = false;
  const second = journal.flush().then(() => { secondDone = true; });
  await first;
  assert.equal(secondDone, false, 'a flush must not resolve on a sync that started before its records');
  await second;
  assert.deepEqual(journal.stats, { records: 3, syncs: 2 });
}));

test('flush with nothing unsynced resolves at once, without a sync', withJournal(async (journal) => {
  await journal.flush();
  journal.recordGrant(leaseFor(0));
  await journal.flush();
  await journal.flush();
  assert.deepEqual(journal.stats, { records: 1, syncs: 1 });
}));

test('flushes resolve in the order their records were written', withJournal(async (journal) => {
  const order: number[] = [];
  const all = [];
  for (let i = 0; i < 6; i++) {
    journal.recordGrant(leaseFor(i));
    all.push(journal.flush().then(() => order.push(i)));
    if (i % 2 === 1) await turn();
  }
  await Promise.all(all);
  assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
}));

test('close() during a pool sync: waiters resolve, the fd closes after the sync, records are on disk', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-gc-'));
  const before = openFds();
  const { journal } = LeaseJournal.open(dir);
  journal.recordGrant(leaseFor(0));
  const first = journal.flush();
  await turn(); // a sync is in flight now
  journal.recordGrant(leaseFor(1)); // written during it: close() must sync it too
  const second = journal.flush();
  journal.close();
  assert.throws(() => journal.recordGrant(leaseFor(2)), JournalMisuse, 'no records after close');
  await Promise.all([first, second]);
  assert.deepEqual(leakedSince(before), [], 'the append fd is closed once the sync is done');
  assert.equal(journal.stats.syncs, 2);
  assert.deepEqual(recoveredIds(dir), [leaseFor(0).id, leaseFor(1).id].sort());
  rmSync(dir, { recursive: true });
});

test('close() with records not yet synced syncs them at once and closes the fd', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'journal-gc-'));
  const before = openFds();
  const { journal } = LeaseJournal.open(dir);
  journal.recordGrant(leaseFor(0));
  const flushed = journal.flush();
  journal.close();
  assert.deepEqual(leakedSince(before), [], 'closed synchronously');
  await flushed;
  await turn(); // the sync scheduled by the record finds the journal closed and does nothing
  assert.deepEqual(journal.stats, { records: 1, syncs: 1 });
  assert.deepEqual(recoveredIds(dir), [leaseFor(0).id]);
  rmSync(dir, { recursive: true });
});
