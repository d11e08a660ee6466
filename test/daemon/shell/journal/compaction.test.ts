// The journal stays bounded by its live leases while running (compaction in place of a group
// sync), never by its history.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JOURNAL_FILE, LeaseJournal } from '../../../../daemon/shell/journal/journal.ts';
import { encode } from '../../../../daemon/shell/journal/format.ts';
import { leaseFor, peekLeases } from './ops.ts';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'journal-compaction-'));
}

test('Open/Release cycling keeps the file bounded by the live leases, not by history', async () => {
  const dir = tempDir();
  const { journal } = LeaseJournal.open(dir);
  try {
    const kept = [leaseFor(0), leaseFor(1), leaseFor(2)];
    for (const l of kept) journal.recordGrant(l);
    await journal.flush();
    const recordBytes = encode({ v: 2, type: 'grant', lease: leaseFor(99_999) }).length;
    let largest = 0;
    for (let i = 3; i < 3 + 4000; i += 1) {
      journal.recordGrant(leaseFor(i));
      journal.recordRelease(leaseFor(i).id);
      if (i % 7 === 0) {
        await journal.flush();
        largest = Math.max(largest, statSync(join(dir, JOURNAL_FILE)).size);
      }
    }
    await journal.flush();
    // 8,000 records of history; compaction keeps at most ~1024 records since the last snapshot.
    assert.ok(journal.compactions >= 5, `only ${journal.compactions} compactions`);
    assert.ok(largest < 1100 * recordBytes, `the journal grew to ${largest} bytes`);
    assert.deepEqual(peekLeases(dir), kept);
  } finally {
    journal.close();
  }
  const again = LeaseJournal.open(dir);
  again.journal.close();
  assert.deepEqual(again.leases, [leaseFor(0), leaseFor(1), leaseFor(2)]);
  rmSync(dir, { recursive: true });
});

test('a running compaction never loses a record written in the same turn, nor one synced before', async () => {
  const dir = tempDir();
  const { journal } = LeaseJournal.open(dir, { compactMinRecords: 4 });
  try {
    for (let i = 0; i < 10; i += 1) journal.recordGrant(leaseFor(i));
    for (let i = 0; i < 8; i += 1) journal.recordRelease(leaseFor(i).id);
    const flushed = journal.flush();
    journal.recordGrant(leaseFor(10));
    await flushed;
    await journal.flush();
    assert.ok(journal.compactions >= 1);
    assert.deepEqual(peekLeases(dir), [leaseFor(8), leaseFor(9), leaseFor(10)]);
  } finally {
    journal.close();
  }
  rmSync(dir, { recursive: true });
});
