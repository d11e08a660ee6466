// The lease journal on real files: round trips, crashes at every byte of the last record,
// corruption, compaction, permissions, fds, and real children killed or starved mid-write.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import {
  chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync,
  symlinkSync, writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  JOURNAL_FILE, JournalCorrupt, JournalMisuse, JournalUnusable, LeaseJournal, type JournaledLease,
} from '../../../../daemon/shell/journal/journal.ts';
import { LOCK_FILE } from '../../../../daemon/shell/journal/state-lock.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';
import { expectedAfter, journalOp, leaseFor, resized } from './ops.ts';

const WRITER = join(import.meta.dirname, 'writer.ts');

function tempRoot(): string {
  return mkdtempSync(join(tmpdir(), 'journal-test-'));
}

/** Opens, collects, closes: the leases a restarted daemon would recover. */
function recover(dir: string): { leases: JournaledLease[]; torn: boolean } {
  const { journal, leases, tornTail } = LeaseJournal.open(dir);
  journal.close();
  return { leases, torn: tornTail !== null };
}

/** Journals ops [0, n) in a fresh journal in dir and returns the file's bytes. */
function journalOps(dir: string, n: number): Buffer {
  const { journal } = LeaseJournal.open(dir);
  for (let op = 0; op < n; op += 1) journalOp(journal, op);
  journal.close();
  return readFileSync(join(dir, JOURNAL_FILE));
}

test('a missing state dir is created 0700 and the journal 0600, whatever the umask', () => {
  const root = tempRoot();
  const dir = join(root, 'a', 'state');
  const old = process.umask(0);
  try {
    const { journal, leases, tornTail } = LeaseJournal.open(dir);
    journal.close();
    assert.deepEqual(leases, []);
    assert.equal(tornTail, null);
  } finally {
    process.umask(old);
  }
  assert.equal(statSync(dir).mode & 0o777, 0o700);
  assert.equal(statSync(join(dir, JOURNAL_FILE)).mode & 0o777, 0o600);
  rmSync(root, { recursive: true });
});

test('grants, resizes and releases survive a restart, in grant order', () => {
  const dir = tempRoot();
  const { journal } = LeaseJournal.open(dir);
  const [a, b, c] = [leaseFor(0), leaseFor(1), leaseFor(2)];
  journal.recordGrant(a);
  journal.recordGrant(b);
  journal.recordGrant(c);
  journal.recordResize(b.id, 7, 8);
  journal.recordRelease(a.id);
  journal.close();
  assert.deepEqual(recover(dir).leases, [{ ...b, memoryBytes: 7, limitBytes: 8 }, c]);
  rmSync(dir, { recursive: true });
});

test('a crash at every byte of the last record: earlier records intact, torn tail ignored', () => {
  const scratch = tempRoot();
  const ops = 5; // the last record is op 4, the grant of lease 2 (with a requestId)
  const full = journalOps(join(scratch, 'full'), ops);
  const lastStart = full.lastIndexOf(0x0a, full.length - 2) + 1;
  assert.ok(lastStart > 0 && lastStart < full.length);
  for (let cut = lastStart; cut <= full.length; cut += 1) {
    const dir = join(scratch, `cut-${cut}`);
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(join(dir, JOURNAL_FILE), full.subarray(0, cut), { mode: 0o600 });
    const got = recover(dir);
    const complete = cut === full.length;
    assert.deepEqual(got.leases, expectedAfter(complete ? ops : ops - 1), `cut at ${cut}`);
    assert.equal(got.torn, cut !== lastStart && !complete, `cut at ${cut}`);
    // Compaction removed the torn bytes: a second restart finds a clean file, same leases.
    const again = recover(dir);
    assert.deepEqual(again.leases, got.leases);
    assert.equal(again.torn, false);
  }
  rmSync(scratch, { recursive: true });
});

test('a torn tail is reported to the log with its line and length', () => {
  const dir = tempRoot();
  const full = journalOps(dir, 3);
  writeFileSync(join(dir, JOURNAL_FILE), Buffer.concat([full, Buffer.from('{"v":1,"type":"gr')]));
  const warnings: { details: object; message: string }[] = [];
  const { journal, tornTail } = LeaseJournal.open(dir, { log: { warn: (details, message) => { warnings.push({ details, message }); } } });
  journal.close();
  assert.deepEqual(tornTail, { line: 4, bytes: 17 });
  assert.equal(warnings.length, 1);
  assert.match(warnings[0]!.message, /torn last line/);
  assert.deepEqual(warnings[0]!.details, { file: join(dir, JOURNAL_FILE), line: 4, bytes: 17 });
  rmSync(dir, { recursive: true });
});

/** Replaces line `lineNo` (1-based) of a 5-op journal with `replacement` and expects an error. */
function corruptLine(lineNo: number, replacement: string, reason: RegExp): void {
  const dir = tempRoot();
  const lines = journalOps(dir, 5).toString('utf8').split('\n');
  lines[lineNo - 1] = replacement;
  const file = join(dir, JOURNAL_FILE);
  writeFileSync(file, lines.join('\n'));
  const before = readFileSync(file);
  assert.throws(() => LeaseJournal.open(dir), (e: unknown) => {
    assert.ok(e instanceof JournalCorrupt, String(e));
    assert.equal(e.name, 'JournalCorrupt');
    assert.equal(e.file, file);
    assert.equal(e.line, lineNo);
    assert.match(e.message, new RegExp(`${file}:${lineNo}: `));
    assert.match(e.reason, reason);
    return true;
  });
  assert.deepEqual(readFileSync(file), before, 'a corrupt journal must be left as it was');
  rmSync(dir, { recursive: true });
}

test('a corrupt line anywhere but a torn tail is a hard error naming file and line', () => {
  corruptLine(2, '{"v":1,"type":"resize","id":', /not a JSON line/);
  corruptLine(1, '', /not a JSON line/);
  corruptLine(3, '{"v":1,"type":"resize","id":"l-0000000000000001","memoryBytes":-5,"limitBytes":1}', /memoryBytes/);
  corruptLine(3, '{"v":1,"type":"release","id":"l-0000000000000001","extra":true}', /not a valid record.*extra/);
  corruptLine(3, '{"v":1,"type":"forget","id":"l-0000000000000001"}', /not a valid record/);
  // Version 3 exists now (its one record is `released`); the next unknown version is refused the
  // same way a version 2 broker refuses a version 3 line.
  corruptLine(2, '{"v":4,"type":"release","id":"l-0000000000000000"}', /format version 4; this broker reads versions 1, 2 and 3/);
  corruptLine(2, '{"v":3,"type":"release","id":"l-0000000000000000"}', /not a valid record/);
  corruptLine(2, '{"v":2,"type":"released","id":"l-0000000000000000","at":"2026-01-01T00:00:00.000Z"}', /not a valid record/);
  corruptLine(2, '{"v":3,"type":"released","id":"l-0000000000000000","at":"yesterday"}', /not a valid record.*at/);
  corruptLine(2, '{"type":"release","id":"l-0000000000000000"}', /not a valid record.*v/);
  // The last line is complete (it has its '\n'), so it is corrupt, not torn.
  corruptLine(5, '{"v":1,"type":"grant"}', /lease/);
  corruptLine(5, 'garbage', /not a JSON line/);
});

test('records that cannot follow each other are corrupt too', () => {
  const grant0 = JSON.stringify({ v: 2, type: 'grant', lease: leaseFor(0) });
  corruptLine(3, grant0, /l-0000000000000000 granted twice/);
  corruptLine(3, '{"v":1,"type":"release","id":"l-00000000000000ff"}', /release of lease l-00000000000000ff, which is not live/);
  corruptLine(3, '{"v":1,"type":"resize","id":"l-00000000000000ff","memoryBytes":1,"limitBytes":1}', /resize of lease l-00000000000000ff/);
  corruptLine(3, '{"v":3,"type":"released","id":"l-00000000000000ff","at":"2026-01-01T00:00:00.000Z"}',
    /released record of lease l-00000000000000ff, which is not live/);
});

test('a released lease replays released, and cannot be resized or released twice in the journal', () => {
  const released = '{"v":3,"type":"released","id":"l-0000000000000000","at":"2026-01-01T00:00:00.000Z"}';
  const dir = tempRoot();
  const lines = journalOps(dir, 5).toString('utf8').split('\n');
  writeFileSync(join(dir, JOURNAL_FILE), [...lines.slice(0, 2), released, ...lines.slice(2)].join('\n'));
  const opened = LeaseJournal.open(dir);
  try {
    const lease = opened.leases.find((l) => l.id === 'l-0000000000000000');
    assert.equal(lease?.releasedAt, '2026-01-01T00:00:00.000Z');
    // The start-up compaction kept it released.
    assert.match(readFileSync(join(dir, JOURNAL_FILE), 'utf8'), /"v":3,"type":"released","id":"l-0000000000000000"/);
  } finally {
    opened.journal.close();
    rmSync(dir, { recursive: true });
  }
  for (const after of [released, '{"v":2,"type":"resize","id":"l-0000000000000000","memoryBytes":1,"limitBytes":1}']) {
    const d = tempRoot();
    const ls = journalOps(d, 5).toString('utf8').split('\n');
    writeFileSync(join(d, JOURNAL_FILE), [...ls.slice(0, 2), released, after, ...ls.slice(2)].join('\n'));
    assert.throws(() => LeaseJournal.open(d), (e: unknown) => e instanceof JournalCorrupt && e.line === 4
      && /l-0000000000000000 released twice|resize of lease l-0000000000000000, which was released/.test(e.reason));
    rmSync(d, { recursive: true });
  }
});

test('invalid UTF-8 in a complete line is corrupt', () => {
  const dir = tempRoot();
  const full = journalOps(dir, 2);
  const bad = Buffer.concat([full, Buffer.from([0xff, 0xfe, 0x0a])]);
  writeFileSync(join(dir, JOURNAL_FILE), bad);
  assert.throws(() => LeaseJournal.open(dir), (e: unknown) => e instanceof JournalCorrupt && e.line === 3);
  rmSync(dir, { recursive: true });
});

test('compaction on open keeps exactly the live leases, as grants with their current size', () => {
  const dir = tempRoot();
  const { journal } = LeaseJournal.open(dir);
  for (let i = 0; i < 6; i += 1) journal.recordGrant(leaseFor(i));
  const r = resized(leaseFor(4));
  journal.recordResize(r.id, r.memoryBytes, r.limitBytes);
  for (const i of [0, 1, 3, 5]) journal.recordRelease(leaseFor(i).id);
  journal.close();
  assert.equal(readFileSync(join(dir, JOURNAL_FILE), 'utf8').trimEnd().split('\n').length, 11);
  const { leases } = recover(dir);
  assert.deepEqual(leases, [leaseFor(2), r]);
  const lines = readFileSync(join(dir, JOURNAL_FILE), 'utf8').trimEnd().split('\n').map((l) => JSON.parse(l) as unknown);
  assert.deepEqual(lines, [
    { v: 2, type: 'grant', lease: leaseFor(2) },
    { v: 2, type: 'grant', lease: r },
  ]);
  assert.deepEqual(readdirSync(dir).sort(), [JOURNAL_FILE, LOCK_FILE].sort(), 'no temp file is left behind');
  rmSync(dir, { recursive: true });
});

test('a stale temp file from a crash during compaction is replaced, not read', () => {
  const dir = tempRoot();
  journalOps(dir, 2);
  writeFileSync(join(dir, `${JOURNAL_FILE}.tmp`), 'half a snapshot', { mode: 0o600 });
  assert.deepEqual(recover(dir).leases, expectedAfter(2));
  assert.deepEqual(readdirSync(dir).sort(), [JOURNAL_FILE, LOCK_FILE].sort());
  rmSync(dir, { recursive: true });
});

test('state dirs and journals others could write are refused', () => {
  const root = tempRoot();
  const open = join(root, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  assert.throws(() => LeaseJournal.open(open), (e: unknown) => e instanceof JournalUnusable && /mode 777.*chmod 700/.test(e.message));

  const real = join(root, 'real');
  mkdirSync(real, { mode: 0o700 });
  const link = join(root, 'link');
  symlinkSync(real, link);
  assert.throws(() => LeaseJournal.open(link), (e: unknown) => e instanceof JournalUnusable && /not a directory/.test(e.message));

  writeFileSync(join(real, JOURNAL_FILE), '', { mode: 0o600 });
  chmodSync(join(real, JOURNAL_FILE), 0o666);
  assert.throws(() => LeaseJournal.open(real), (e: unknown) => e instanceof JournalUnusable && /mode 666/.test(e.message));

  const linked = join(root, 'linked');
  mkdirSync(linked, { mode: 0o700 });
  symlinkSync(join(real, JOURNAL_FILE), join(linked, JOURNAL_FILE));
  assert.throws(() => LeaseJournal.open(linked), JournalUnusable);
  rmSync(root, { recursive: true });
});

test('misuse is refused without writing anything', () => {
  const dir = tempRoot();
  const { journal } = LeaseJournal.open(dir);
  journal.recordGrant(leaseFor(0));
  const file = join(dir, JOURNAL_FILE);
  const size = statSync(file).size;
  assert.throws(() => journal.recordGrant(leaseFor(0)), (e: unknown) => e instanceof JournalMisuse && /already journaled/.test(e.message));
  assert.throws(() => journal.recordResize(leaseFor(1).id, 1, 1), /not live/);
  assert.throws(() => journal.recordRelease(leaseFor(1).id), /not live/);
  assert.throws(() => journal.recordGrant({ ...leaseFor(1), memoryBytes: -1 }), /memoryBytes/);
  assert.throws(() => journal.recordGrant({ ...leaseFor(1), name: 'no spaces allowed' }), /name/);
  assert.throws(() => journal.recordResize(leaseFor(0).id, 1.5, 2), JournalMisuse);
  assert.equal(statSync(file).size, size);
  journal.close();
  journal.close(); // idempotent
  assert.throws(() => journal.recordRelease(leaseFor(0).id), (e: unknown) => e instanceof JournalMisuse && /closed/.test(e.message));
  assert.deepEqual(recover(dir).leases, [leaseFor(0)]);
  rmSync(dir, { recursive: true });
});

test('the fd count is flat across opens, records, failed opens and closes', () => {
  const dir = tempRoot();
  const before = openFds();
  for (let round = 0; round < 3; round += 1) {
    const { journal } = LeaseJournal.open(dir);
    journalOp(journal, round * 2);
    journal.close();
  }
  writeFileSync(join(dir, JOURNAL_FILE), 'not json\n', { mode: 0o600 });
  assert.throws(() => LeaseJournal.open(dir), JournalCorrupt);
  chmodSync(join(dir, JOURNAL_FILE), 0o666);
  assert.throws(() => LeaseJournal.open(dir), JournalUnusable);
  assert.deepEqual(leakedSince(before), [], 'an fd leaked');
  rmSync(dir, { recursive: true });
});

interface WriterRun { acked: number; output: string[] }

/** Runs writer.ts on dir; `control` sees the child and its output after every line. */
async function runWriter(dir: string, wait: boolean, control: (child: ChildProcess, lines: string[]) => void): Promise<WriterRun> {
  const child = spawn(process.execPath, ['--import', 'tsx', WRITER, dir, ...(wait ? ['wait'] : [])], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  const lines: string[] = [];
  child.stderr.setEncoding('utf8').on('data', (c: string) => { err += c; });
  child.stdout.setEncoding('utf8').on('data', (c: string) => {
    out += c;
    let nl: number;
    while ((nl = out.indexOf('\n')) >= 0) {
      lines.push(out.slice(0, nl));
      out = out.slice(nl + 1);
      control(child, lines);
    }
  });
  const [, signal] = await new Promise<[number | null, string | null]>((resolve) => {
    child.on('close', (code, sig) => resolve([code, sig]));
  });
  assert.ok(lines[0] === 'ready', `writer never got ready (signal ${signal}): ${err}`);
  const acked = lines.filter((l) => l.startsWith('ack ')).length;
  lines.filter((l) => l.startsWith('ack ')).forEach((l, i) => assert.equal(l, `ack ${i}`));
  return { acked, output: lines };
}

test('SIGKILL at arbitrary points: every acknowledged record is recovered, at most one more', async () => {
  for (const killAfter of [1, 17, 60]) {
    const dir = tempRoot();
    const run = await runWriter(dir, false, (child, lines) => {
      if (lines.length === killAfter + 1) child.kill('SIGKILL');
    });
    assert.ok(run.acked >= killAfter);
    const { leases } = recover(dir);
    const candidates = [expectedAfter(run.acked), expectedAfter(run.acked + 1)];
    assert.ok(candidates.some((c) => JSON.stringify(c) === JSON.stringify(leases)),
      `acked ${run.acked} ops, recovered ${leases.length} leases`);
    rmSync(dir, { recursive: true });
  }
});

test('a write cut short by RLIMIT_FSIZE degrades the journal; a restart recovers what was acked', async () => {
  const dir = tempRoot();
  const run = await runWriter(dir, true, (child, lines) => {
    if (lines.length === 1) {
      // Lowering our own child's limit needs no privilege; a later record hits it mid-line.
      execFileSync('prlimit', ['--pid', String(child.pid), '--fsize=3000:3000']);
      child.stdin!.write('go\n');
    }
  });
  const last = run.output.at(-1);
  assert.ok(last !== undefined && last.startsWith('{'), `expected a failure report, got ${String(last)}`);
  const report = JSON.parse(last) as { failedAt: number; name: string; again: string; flush: string };
  assert.equal(report.failedAt, run.acked);
  assert.equal(report.name, 'JournalWriteFailed');
  assert.equal(report.again, 'JournalWriteFailed', 'after a failed write no further record may be acknowledged as durable');
  assert.equal(report.flush, 'JournalWriteFailed', 'after a failed write no flush may claim the disk is up to date');
  // The kernel wrote the failing record up to the limit: a torn line, as after a crash.
  assert.equal(statSync(join(dir, JOURNAL_FILE)).size, 3000);
  const got = recover(dir);
  assert.equal(got.torn, true);
  assert.deepEqual(got.leases, expectedAfter(run.acked));
  rmSync(dir, { recursive: true });
});
