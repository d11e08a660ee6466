// One journal per state dir: a second open is refused naming the holder, the first one's file
// is untouched, the lock ends with close(); FIFOs at the journal's or the lock's path are
// refused at once instead of blocking the start.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JOURNAL_FILE, JournalUnusable, LeaseJournal } from '../../../../daemon/shell/journal/journal.ts';
import { LOCK_FILE, StateDirLocked } from '../../../../daemon/shell/journal/state-lock.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';
import { leaseFor } from './ops.ts';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'state-lock-'));
}

test('a second journal on a locked state dir is refused, naming the holder, and changes nothing', async () => {
  const dir = tempDir();
  const first = LeaseJournal.open(dir).journal;
  first.recordGrant(leaseFor(0));
  await first.flush();
  const file = join(dir, JOURNAL_FILE);
  const before = { bytes: readFileSync(file), ino: statSync(file).ino };
  const fds = openFds();
  assert.throws(() => LeaseJournal.open(dir), (e: unknown) => {
    assert.ok(e instanceof StateDirLocked, String(e));
    assert.equal(e.holderPid, process.pid);
    assert.match(e.message, new RegExp(`in use by another iommufd-brokerd \\(pid ${process.pid}\\)`));
    return true;
  });
  assert.deepEqual(leakedSince(fds), [], 'the refused open keeps no fd');
  assert.deepEqual({ bytes: readFileSync(file), ino: statSync(file).ino }, before, 'the holder\'s journal was not compacted under it');
  assert.equal(readFileSync(join(dir, LOCK_FILE), 'utf8'), `${process.pid}\n`);
  assert.equal(statSync(join(dir, LOCK_FILE)).mode & 0o777, 0o600);
  first.close();
  const second = LeaseJournal.open(dir);
  second.journal.close();
  assert.deepEqual(second.leases, [leaseFor(0)]);
  rmSync(dir, { recursive: true });
});

test('a FIFO at the journal\'s path is refused at once, not waited on', () => {
  const dir = tempDir();
  execFileSync('mkfifo', ['-m', '600', join(dir, JOURNAL_FILE)]);
  assert.throws(() => LeaseJournal.open(dir), (e: unknown) => e instanceof JournalUnusable && /not a regular file/.test(e.message));
  // The refusal released the lock: the dir is usable once the FIFO is gone.
  rmSync(join(dir, JOURNAL_FILE));
  LeaseJournal.open(dir).journal.close();
  rmSync(dir, { recursive: true });
});

test('a FIFO at the lock\'s path is refused at once too', () => {
  const dir = tempDir();
  execFileSync('mkfifo', ['-m', '600', join(dir, LOCK_FILE)]);
  assert.throws(() => LeaseJournal.open(dir), (e: unknown) => e instanceof JournalUnusable && /lock: is not a regular file/.test(e.message));
  rmSync(dir, { recursive: true });
});
