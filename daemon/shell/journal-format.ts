// The lease journal's on-disk format: one JSON record per line, and how lines replay.
//
// Invariants:
// - Every line carries "v" (the format version) and is validated with zod, strictly: an
//   unknown field, a wrong type or a value out of range is corruption, never ignored.
// - Replay: a final segment without its '\n' is a torn write from a crash (never acknowledged,
//   since its write never finished): ignored and reported as TornTail. Every other line must
//   parse and make sense in order (no duplicate grant, no resize or release of a lease that is
//   not live); anything else is JournalCorrupt naming the file and the line.
// - Pure: bytes in, leases out; the file I/O lives in journal.ts.
import { z } from 'zod';
import { LEASE_ID_PATTERN, MAX_BYTES, NAME_PATTERN } from '../../protocol/methods.ts';

export const JOURNAL_FILE = 'leases.journal';
export const JOURNAL_FORMAT_VERSION = 1;

const byteCount = z.number().int().min(0).max(MAX_BYTES);
const leaseId = z.string().regex(LEASE_ID_PATTERN);
/** An rlimit value as prlimit reports it: -1 = RLIM_INFINITY. */
const rlimitValue = z.number().int().min(-1);

export const JournaledLease = z.object({
  id: leaseId,
  name: z.string().regex(NAME_PATTERN),
  targetPid: z.number().int().positive(),
  targetUid: z.number().int().nonnegative(),
  /** Field 22 of /proc/PID/stat: with targetPid it names the process across a restart. */
  targetStartTime: z.string().regex(/^\d+$/),
  ownerUid: z.number().int().nonnegative(),
  memoryBytes: byteCount,
  limitBytes: byteCount,
  requestId: z.string().min(1).max(128).optional(),
  createdAt: z.iso.datetime(),
  /** The target's RLIMIT_MEMLOCK before the lease, restored on release. */
  previousLimit: z.object({ soft: rlimitValue, hard: rlimitValue }).strict(),
}).strict();
export type JournaledLease = z.infer<typeof JournaledLease>;

const version = z.literal(JOURNAL_FORMAT_VERSION);
export const JournalRecord = z.discriminatedUnion('type', [
  z.object({ v: version, type: z.literal('grant'), lease: JournaledLease }).strict(),
  z.object({ v: version, type: z.literal('resize'), id: leaseId, memoryBytes: byteCount, limitBytes: byteCount }).strict(),
  z.object({ v: version, type: z.literal('release'), id: leaseId }).strict(),
]);
export type JournalRecord = z.infer<typeof JournalRecord>;

/** A line of the journal is not what this broker wrote, or not in an order it could have written. */
export class JournalCorrupt extends Error {
  constructor(readonly file: string, readonly line: number, readonly reason: string) {
    super(`${file}:${line}: ${reason}; the journal was left untouched: inspect or move it aside (a moved-aside journal forgets its leases)`);
    this.name = 'JournalCorrupt';
  }
}

/** What replay found at the end of the file and ignored. */
export interface TornTail { line: number; bytes: number }

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Replays the journal's bytes into the live leases (in grant order). */
export function replay(file: string, bytes: Buffer): { leases: Map<string, JournaledLease>; tornTail: TornTail | null } {
  const leases = new Map<string, JournaledLease>();
  let start = 0;
  let line = 0;
  while (start < bytes.length) {
    line += 1;
    const end = bytes.indexOf(0x0a, start);
    if (end < 0) return { leases, tornTail: { line, bytes: bytes.length - start } };
    apply(leases, parseLine(file, line, bytes.subarray(start, end)), file, line);
    start = end + 1;
  }
  return { leases, tornTail: null };
}

function parseLine(file: string, line: number, raw: Buffer): JournalRecord {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(raw));
  } catch (e) {
    throw new JournalCorrupt(file, line, `not a JSON line (${e instanceof Error ? e.message : String(e)})`);
  }
  const v = (value as { v?: unknown } | null)?.v;
  if (typeof v === 'number' && v !== JOURNAL_FORMAT_VERSION) {
    throw new JournalCorrupt(file, line, `format version ${v}; this broker reads version ${JOURNAL_FORMAT_VERSION}`);
  }
  const parsed = JournalRecord.safeParse(value);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(record)'}: ${i.message}`).join('; ');
    throw new JournalCorrupt(file, line, `not a valid record (${issues})`);
  }
  return parsed.data;
}

function apply(leases: Map<string, JournaledLease>, record: JournalRecord, file: string, line: number): void {
  switch (record.type) {
    case 'grant':
      if (leases.has(record.lease.id)) throw new JournalCorrupt(file, line, `lease ${record.lease.id} granted twice`);
      leases.set(record.lease.id, record.lease);
      return;
    case 'resize': {
      const lease = leases.get(record.id);
      if (lease === undefined) throw new JournalCorrupt(file, line, `resize of lease ${record.id}, which is not live`);
      leases.set(record.id, { ...lease, memoryBytes: record.memoryBytes, limitBytes: record.limitBytes });
      return;
    }
    case 'release':
      if (!leases.delete(record.id)) throw new JournalCorrupt(file, line, `release of lease ${record.id}, which is not live`);
      return;
  }
}

export function encode(record: JournalRecord): Buffer {
  return Buffer.from(`${JSON.stringify(record)}\n`, 'utf8');
}
