// The records the journal writes for its callers, built from their arguments and checked
// against format.ts's schemas before anything is applied or written.
//
// Invariants:
// - Pure: no I/O, no state; each builder returns a record that format.ts will replay, or throws
//   JournalMisuse (a bug in the caller) naming the lease and what does not fit.
// - A grant is stamped with the running boot; a lease that names another boot is refused, never
//   restamped.
import {
  JOURNAL_FORMAT_VERSION, JournalRecord, JournaledLease, RELEASED_RECORD_VERSION, ReleasedRecord,
} from './format.ts';

/** The caller asked for something the journal's state forbids (a bug in the caller). */
export class JournalMisuse extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'JournalMisuse';
  }
}

/** A new lease's grant record, stamped with the running boot `bootId`. */
export function grantRecord(lease: JournaledLease, bootId: string): JournalRecord {
  if (lease.bootId !== undefined && lease.bootId !== bootId) {
    throw new JournalMisuse(`lease ${lease.id} names boot ${lease.bootId}, not the running one`);
  }
  const parsed = JournaledLease.safeParse({ ...lease, bootId });
  if (!parsed.success) {
    throw new JournalMisuse(`not a valid lease record: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
  }
  return { v: JOURNAL_FORMAT_VERSION, type: 'grant', lease: { ...parsed.data, bootId } };
}

/** A lease's new size and limit. */
export function resizeRecord(id: string, memoryBytes: number, limitBytes: number): JournalRecord {
  const record = JournalRecord.safeParse({ v: JOURNAL_FORMAT_VERSION, type: 'resize', id, memoryBytes, limitBytes });
  if (!record.success) throw new JournalMisuse(`not a valid resize of ${id}: ${record.error.issues.map((i) => i.message).join('; ')}`);
  return record.data;
}

/** A lease's Release at `at` (it stays live and charged). */
export function releasedRecord(id: string, at: string): JournalRecord {
  const record = ReleasedRecord.safeParse({ v: RELEASED_RECORD_VERSION, type: 'released', id, at });
  if (!record.success) throw new JournalMisuse(`not a valid release of ${id}: ${record.error.issues.map((i) => i.message).join('; ')}`);
  return record.data;
}
