// A child process for journal.test.ts: opens the journal in argv[2] and journals operations
// until it is killed or a write fails, acknowledging each on stdout only after its record*()
// call returned and a flush() after it resolved (as the daemon replies only after that). Not a
// test file itself.
//
// Operations, numbered from 0: op 2i grants lease i, op 2i+1 resizes lease i to twice its size.
// stdout lines: "ready", then "ack N" per finished op, then (on a write failure) one JSON line
// {"failedAt": N, "name": ..., "again": name of the error with which the flush() after a
//  following grant rejected, "flush": name of the error a following flush() rejected with}.
// With argv[3] == "wait", it reads one line from stdin ("go") before journaling.
import { readSync, writeSync } from 'node:fs';
import { LeaseJournal } from '../../../../daemon/shell/journal/journal.ts';
import { journalOp, leaseFor } from './ops.ts';

const stateDir = process.argv[2];
if (stateDir === undefined) throw new Error('usage: journal-writer STATE_DIR [wait]');
// With RLIMIT_FSIZE lowered, a write past it would kill us with SIGXFSZ; handled, it is EFBIG.
process.on('SIGXFSZ', () => {});

const { journal } = LeaseJournal.open(stateDir);
writeSync(1, 'ready\n');
if (process.argv[3] === 'wait') readSync(0, Buffer.alloc(16));

const MAX_OPS = 20_000;
for (let op = 0; op < MAX_OPS; op += 1) {
  try {
    journalOp(journal, op);
    await journal.flush();
  } catch (e) {
    let again = 'none';
    try {
      journal.recordGrant(leaseFor(MAX_OPS)); // a lease no op touches
      await journal.flush();
    } catch (e2) {
      again = e2 instanceof Error ? e2.name : String(e2);
    }
    const flush = await journal.flush().then(() => 'none', (e3: unknown) => (e3 instanceof Error ? e3.name : String(e3)));
    writeSync(1, `${JSON.stringify({ failedAt: op, name: e instanceof Error ? e.name : String(e), again, flush })}\n`);
    process.exit(0);
  }
  writeSync(1, `ack ${op}\n`);
}
journal.close();
