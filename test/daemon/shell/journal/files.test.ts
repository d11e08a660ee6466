// Replay streams: a journal of any size is read in bounded chunks, and chunk boundaries
// anywhere give the same leases as one read of the whole.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { JOURNAL_FILE, JournalCorrupt, LeaseJournal } from '../../../../daemon/shell/journal/journal.ts';
import { MAX_LINE_BYTES, Replayer, encode, replay } from '../../../../daemon/shell/journal/format.ts';
import { streamJournal } from '../../../../daemon/shell/journal/files.ts';
import { leaseFor } from './ops.ts';

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'journal-stream-'));
}

/** A journal of `n` grants, every third one released again, as bytes. */
function history(n: number): Buffer {
  const lines: Buffer[] = [];
  for (let i = 0; i < n; i += 1) {
    lines.push(encode({ v: 2, type: 'grant', lease: leaseFor(i) }));
    if (i % 3 === 2) lines.push(encode({ v: 2, type: 'release', id: leaseFor(i - 1).id }));
  }
  return Buffer.concat(lines);
}

test('replay in chunks of any size equals replay of the whole, torn tail included', () => {
  const bytes = Buffer.concat([history(40), Buffer.from('{"v":2,"type":"gra')]);
  const whole = replay('j', bytes);
  for (const size of [1, 2, 7, 64, 333, 4096]) {
    const r = new Replayer('j');
    for (let off = 0; off < bytes.length; off += size) r.push(bytes.subarray(off, off + size));
    assert.deepEqual(r.finish(), whole, `chunks of ${size}`);
  }
  assert.deepEqual(whole.tornTail, { line: 54, bytes: 18 });
});

test('a journal file far larger than one read chunk streams through a small buffer', () => {
  const dir = tempDir();
  const file = join(dir, JOURNAL_FILE);
  const bytes = history(6000); // ~3 MB
  writeFileSync(file, bytes, { mode: 0o600 });
  const r = new Replayer(file);
  let chunks = 0;
  let biggest = 0;
  streamJournal(file, (chunk) => { chunks += 1; biggest = Math.max(biggest, chunk.length); r.push(chunk); }, 4096);
  assert.equal(chunks, Math.ceil(bytes.length / 4096));
  assert.equal(biggest, 4096);
  assert.deepEqual(r.finish(), replay(file, bytes));
  const opened = LeaseJournal.open(dir, { readChunkBytes: 1000 });
  opened.journal.close();
  assert.equal(opened.leases.length, 4000);
  rmSync(dir, { recursive: true });
});

test('a line longer than any record is corrupt as soon as it is seen, not buffered without end', () => {
  const r = new Replayer('j');
  r.push(encode({ v: 2, type: 'grant', lease: leaseFor(0) }));
  const junk = Buffer.alloc(4096, 0x61);
  assert.throws(() => {
    for (let i = 0; i <= MAX_LINE_BYTES / junk.length; i += 1) r.push(junk);
  }, (e: unknown) => e instanceof JournalCorrupt && e.line === 2 && /longer than/.test(e.reason));
});
