// A real disk that runs full (a tiny tmpfs) under the journal: it degrades instead of failing
// for good, says so once, keeps what its callers record, and recovers by itself once space
// returns, with every record since made durable by the recovering compaction.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JOURNAL_FILE, JournalWriteFailed, LeaseJournal, type JournalLog } from '../../../../daemon/shell/journal/journal.ts';
import { fillUp, mountTmpfs, tmpfsUnavailable, unmount } from '../../../support/tmpfs.ts';
import { leaseFor, peekLeases } from './ops.ts';

interface Logged { level: string; message: string }

function recordingLog(onLine: (l: Logged) => void): JournalLog {
  return {
    warn: (_d, message) => onLine({ level: 'warn', message }),
    error: (_d, message) => onLine({ level: 'error', message }),
    info: (_d, message) => onLine({ level: 'info', message }),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('a full disk degrades the journal, logged once; freed space brings it back by itself', { skip: tmpfsUnavailable }, async () => {
  const root = mkdtempSync(join(tmpdir(), 'journal-full-'));
  const dir = join(root, 'state');
  mkdirSync(dir);
  mountTmpfs(dir, 64 * 1024);
  const logged: Logged[] = [];
  let recovered: () => void = () => {};
  const recovery = new Promise<void>((resolve) => { recovered = resolve; });
  const log = recordingLog((l) => {
    logged.push(l);
    if (/recovered/.test(l.message)) recovered();
  });
  const { journal } = LeaseJournal.open(dir, { log, retry: { firstMs: 5, maxMs: 20 } });
  try {
    journal.recordGrant(leaseFor(0));
    await journal.flush();
    const filler = fillUp(dir);
    // Grants until one cannot be written: the journal's last page fills up after a few.
    let failed: unknown;
    let n = 1;
    for (; n < 100 && failed === undefined; n += 1) {
      journal.recordGrant(leaseFor(n));
      await journal.flush().catch((e: unknown) => { failed = e; });
    }
    const refused = n - 1;
    assert.ok(failed instanceof JournalWriteFailed, `no write failed: ${String(failed)}`);
    assert.equal(failed.code, 'ENOSPC');
    assert.equal(journal.degraded?.error.code, 'ENOSPC');
    const since = journal.degraded.since;

    // As the service does: the refused grant is undone; a target exits. Both only in memory now.
    journal.recordRelease(leaseFor(refused).id);
    journal.recordRelease(leaseFor(0).id);
    await assert.rejects(journal.flush(), JournalWriteFailed, 'nothing is durable while degraded');
    await sleep(300); // ~15 recovery attempts at the capped delay, all failing (the disk is full)
    assert.equal(journal.degraded?.since, since, 'still the same degraded state');
    assert.deepEqual(logged, [{ level: 'error', message: logged[0]?.message ?? '' }], 'one line for the change of state, none per attempt');
    assert.match(logged[0]?.message ?? '', /journal degraded/);

    rmSync(filler);
    await recovery;
    assert.equal(journal.degraded, null);
    assert.equal(logged.length, 2);
    assert.match(logged[1]?.message ?? '', /journal recovered/);
    await journal.flush();
    const expected = Array.from({ length: refused - 1 }, (_, i) => leaseFor(i + 1));
    assert.deepEqual(peekLeases(dir), expected, 'the releases made while degraded are on disk');
    journal.recordGrant(leaseFor(500));
    await journal.flush();
    assert.deepEqual(peekLeases(dir), [...expected, leaseFor(500)]);
    assert.ok(!readFileSync(join(dir, JOURNAL_FILE), 'utf8').includes(leaseFor(0).id));
  } finally {
    journal.close();
    unmount(dir);
    rmSync(root, { recursive: true });
  }
});
