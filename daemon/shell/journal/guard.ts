// What the service asks of the journal before and after a change: is it writable, is the
// change durable, and may the journaled leases be re-adopted at all.
//
// Invariants:
// - A degraded journal (journal.ts) is JournalUnavailable on the wire, naming the failed
//   operation's errno symbolically and since when; never InternalError, never a raw number.
// - checkRestorable runs the leases through a scratch ledger only: nothing is applied, so a
//   journal the ledger refuses (RestoreRefused) has changed no kernel limit.
import { BrokerError } from '../../../protocol/errors.ts';
import { Ledger, LedgerError, type LeaseRecord } from '../../core/ledger.ts';
import { JournalWriteFailed, type LeaseJournal } from './journal.ts';

/** The journal holds leases that no ledger could hold together (e.g. two on one pid). */
export class RestoreRefused extends Error {
  constructor(readonly file: string, reason: string) {
    super(`${file}: the journaled leases cannot all be re-adopted (${reason}); no limit was touched: `
      + 'inspect or move the journal aside (a moved-aside journal forgets its leases)');
    this.name = 'RestoreRefused';
  }
}

function unavailable(journal: LeaseJournal, error: JournalWriteFailed): BrokerError<'JournalUnavailable'> {
  return new BrokerError('JournalUnavailable', {
    reason: `the lease journal cannot be written (${error.operation} of ${error.file} failed); changes are refused until it recovers`,
    errno: error.code,
    since: (journal.degraded?.since ?? new Date()).toISOString(),
  });
}

/** Throws JournalUnavailable while the journal cannot make records durable. */
export function journalReady(journal: LeaseJournal): void {
  const degraded = journal.degraded;
  if (degraded !== null) throw unavailable(journal, degraded.error);
}

/** Waits until the records so far are durable; a journal failure becomes JournalUnavailable. */
export async function durable(journal: LeaseJournal): Promise<void> {
  try {
    await journal.flush();
  } catch (err) {
    throw err instanceof JournalWriteFailed ? unavailable(journal, err) : err;
  }
}

/** Throws RestoreRefused if the ledger cannot hold these leases together (caps are not checked). */
export function checkRestorable(file: string, leases: readonly LeaseRecord[]): void {
  try {
    Ledger.replay(leases);
  } catch (err) {
    if (err instanceof LedgerError) throw new RestoreRefused(file, err.message);
    throw err;
  }
}
