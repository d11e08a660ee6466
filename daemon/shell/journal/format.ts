// The lease journal's on-disk format: one JSON record per line, and how lines replay.
//
// Invariants:
// - Every line carries "v" (the format version) and is validated with zod, strictly: an
//   unknown field, a wrong type or a value out of range is corruption, never ignored.
// - Versions: 2 (written now) records in each grant the boot it was made in (`bootId`, from
//   /proc/sys/kernel/random/boot_id); 1 (brokers before boot ids) has no `bootId`. Both are
//   read, and may be mixed in one file: a compaction writes a lease whose boot is unknown back
//   as a version 1 grant, so "no bootId" keeps meaning "boot unknown" and is never guessed.
//   Version 3 adds one record, `released` (a lease's Release: its manager's control ended at
//   `at`; the lease stays live and charged until its target exits). Each record is written in
//   the lowest version that can express it, so a journal without releases stays readable by a
//   version 2 broker, and one with a release is refused by it cleanly ("format version 3"),
//   never half-read as an unreleased, resizable lease.
//   Any other version is corruption (a newer broker's journal is refused, never half-read).
//   A version 2 grant may carry `devices` (the VFIO devices the lease holds, which a restart
//   must keep held); a broker from before devices refuses such a line as corrupt, never
//   half-reads it. Version 1 grants never carry devices.
// - Which boot a lease belongs to (grantedInAnotherBoot): a known bootId decides. A lease of
//   unknown boot counts as this boot's only if the journal was last written during this boot:
//   then the broker that wrote it ran in this boot and had already matched the lease's target
//   by pid and start time in this boot (all that a version 1 broker could check). A journal
//   last written before this boot holds only earlier boots' leases, whose pid and start time
//   can match an unrelated process of this boot; those leases are dropped, never re-adopted.
//   Dropping (rather than adopting) a lease of unknown boot errs on the side of never
//   limiting or charging a stranger.
// - Replay: a final segment without its '\n' is a torn write from a crash (never acknowledged,
//   since its write never finished): ignored and reported as TornTail. Every other line must
//   parse and make sense in order (no duplicate grant, no resize, release or `released` of a
//   lease that is not live, no resize of a released lease, no second `released`); anything
//   else is JournalCorrupt naming the file and the line.
// - Replay streams: bytes arrive in chunks of any size (a journal of any length replays in
//   memory bounded by its live leases and one line); a line longer than MAX_LINE_BYTES is
//   corrupt (the broker's longest record is far shorter).
// - Pure: bytes in, leases out; the file I/O lives in files.ts, replay-on-open.ts and journal.ts.
import { z } from 'zod';
import {
  LEASE_ID_PATTERN, MAX_BYTES, MAX_DEVICES_PER_LEASE, NAME_PATTERN, PCI_ADDRESS_PATTERN, VFIO_CDEV_PATTERN,
} from '../../../protocol/methods.ts';
import { BOOT_ID_PATTERN } from './boot.ts'; // a constant only: this module does no I/O

export const JOURNAL_FILE = 'leases.journal';
/** The version written; READABLE_VERSIONS are read. */
export const JOURNAL_FORMAT_VERSION = 2;
/** The version of a `released` record (the only record version 3 added). */
export const RELEASED_RECORD_VERSION = 3;
export const READABLE_VERSIONS: readonly number[] = [1, 2, 3];
export const MAX_LINE_BYTES = 64 * 1024;

const byteCount = z.number().int().min(0).max(MAX_BYTES);
const leaseId = z.string().regex(LEASE_ID_PATTERN);
/** An rlimit value as prlimit reports it: -1 = RLIM_INFINITY. */
const rlimitValue = z.number().int().min(-1);
const bootId = z.string().regex(BOOT_ID_PATTERN);

const leaseFields = {
  id: leaseId,
  name: z.string().regex(NAME_PATTERN),
  targetPid: z.number().int().positive(),
  targetUid: z.number().int().nonnegative(),
  /** Field 22 of /proc/PID/stat: with targetPid it names the process within one boot. */
  targetStartTime: z.string().regex(/^\d+$/),
  ownerUid: z.number().int().nonnegative(),
  memoryBytes: byteCount,
  limitBytes: byteCount,
  requestId: z.string().min(1).max(128).optional(),
  createdAt: z.iso.datetime(),
  /** The target's RLIMIT_MEMLOCK before the lease, restored on release. */
  previousLimit: z.object({ soft: rlimitValue, hard: rlimitValue }).strict(),
};

/** The VFIO devices a lease holds (version 2 grants only). */
const devices = z.array(z.object({
  address: z.string().regex(PCI_ADDRESS_PATTERN), cdev: z.string().regex(VFIO_CDEV_PATTERN),
}).strict().readonly()).min(1).max(MAX_DEVICES_PER_LEASE).readonly();

/**
 * A live lease as replay returns it: `bootId` absent = granted by a version 1 broker, boot
 * unknown; `releasedAt` present = released (a version 3 `released` record) at that time.
 */
export const JournaledLease = z.object({
  ...leaseFields, devices: devices.optional(), bootId: bootId.optional(), releasedAt: z.iso.datetime().optional(),
}).strict();
export type JournaledLease = z.infer<typeof JournaledLease>;

const V1Record = z.discriminatedUnion('type', [
  z.object({ v: z.literal(1), type: z.literal('grant'), lease: z.object(leaseFields).strict() }).strict(),
  z.object({ v: z.literal(1), type: z.literal('resize'), id: leaseId, memoryBytes: byteCount, limitBytes: byteCount }).strict(),
  z.object({ v: z.literal(1), type: z.literal('release'), id: leaseId }).strict(),
]);
const V2Record = z.discriminatedUnion('type', [
  z.object({ v: z.literal(2), type: z.literal('grant'), lease: z.object({ ...leaseFields, devices: devices.optional(), bootId }).strict() }).strict(),
  z.object({ v: z.literal(2), type: z.literal('resize'), id: leaseId, memoryBytes: byteCount, limitBytes: byteCount }).strict(),
  z.object({ v: z.literal(2), type: z.literal('release'), id: leaseId }).strict(),
]);
const V3Record = z.object({ v: z.literal(3), type: z.literal('released'), id: leaseId, at: z.iso.datetime() }).strict();
export const JournalRecord = V2Record;
export const ReleasedRecord = V3Record;
export type JournalRecord = z.infer<typeof V1Record> | z.infer<typeof V2Record> | z.infer<typeof V3Record>;

/** A line of the journal is not what this broker wrote, or not in an order it could have written. */
export class JournalCorrupt extends Error {
  constructor(readonly file: string, readonly line: number, readonly reason: string) {
    super(`${file}:${line}: ${reason}; the journal was left untouched: inspect or move it aside (a moved-aside journal forgets its leases)`);
    this.name = 'JournalCorrupt';
  }
}

/** What replay found at the end of the file and ignored. */
export interface TornTail { line: number; bytes: number }

export interface Replayed { leases: Map<string, JournaledLease>; tornTail: TornTail | null }

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Replays a journal fed in chunks of any size: push() each chunk in order, then finish(). */
export class Replayer {
  readonly leases = new Map<string, JournaledLease>();
  #line = 0;
  /** The current line's bytes so far (never a '\n'); bounded by MAX_LINE_BYTES. */
  #partial: Buffer = Buffer.alloc(0);

  constructor(readonly file: string) {}

  push(chunk: Buffer): void {
    let bytes = this.#partial.length === 0 ? chunk : Buffer.concat([this.#partial, chunk]);
    let start = 0;
    for (let end = bytes.indexOf(0x0a); end >= 0; end = bytes.indexOf(0x0a, start)) {
      this.#line += 1;
      apply(this.leases, parseLine(this.file, this.#line, bytes.subarray(start, end)), this.file, this.#line);
      start = end + 1;
    }
    bytes = bytes.subarray(start);
    if (bytes.length > MAX_LINE_BYTES) {
      throw new JournalCorrupt(this.file, this.#line + 1, `a line longer than ${MAX_LINE_BYTES} bytes`);
    }
    this.#partial = Buffer.from(bytes); // a copy: the caller may reuse its chunk buffer
  }

  finish(): Replayed {
    const tornTail = this.#partial.length === 0 ? null : { line: this.#line + 1, bytes: this.#partial.length };
    return { leases: this.leases, tornTail };
  }
}

/** Replays the journal's bytes into the live leases (in grant order). */
export function replay(file: string, bytes: Buffer): Replayed {
  const replayer = new Replayer(file);
  replayer.push(bytes);
  return replayer.finish();
}

function parseLine(file: string, line: number, raw: Buffer): JournalRecord {
  let value: unknown;
  try {
    value = JSON.parse(utf8.decode(raw));
  } catch (e) {
    throw new JournalCorrupt(file, line, `not a JSON line (${e instanceof Error ? e.message : String(e)})`);
  }
  const v = (value as { v?: unknown } | null)?.v;
  if (typeof v === 'number' && !READABLE_VERSIONS.includes(v)) {
    throw new JournalCorrupt(file, line, `format version ${v}; this broker reads versions ${READABLE_VERSIONS.slice(0, -1).join(', ')} and ${READABLE_VERSIONS.at(-1)}`);
  }
  const parsed = (v === 1 ? V1Record : v === 3 ? V3Record : V2Record).safeParse(value);
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.') || '(record)'}: ${i.message}`).join('; ');
    throw new JournalCorrupt(file, line, `not a valid record (${issues})`);
  }
  return parsed.data;
}

function apply(leases: Map<string, JournaledLease>, record: JournalRecord, file: string, line: number): void {
  const refused = applyRecord(leases, record);
  if (refused !== undefined) throw new JournalCorrupt(file, line, refused);
}

/** Applies one record to the live leases; returns why it cannot follow them (nothing changed then). */
export function applyRecord(leases: Map<string, JournaledLease>, record: JournalRecord): string | undefined {
  switch (record.type) {
    case 'grant':
      if (leases.has(record.lease.id)) return `lease ${record.lease.id} granted twice`;
      leases.set(record.lease.id, record.lease);
      return undefined;
    case 'resize': {
      const lease = leases.get(record.id);
      if (lease === undefined) return `resize of lease ${record.id}, which is not live`;
      if (lease.releasedAt !== undefined) return `resize of lease ${record.id}, which was released`;
      leases.set(record.id, { ...lease, memoryBytes: record.memoryBytes, limitBytes: record.limitBytes });
      return undefined;
    }
    case 'release':
      if (!leases.delete(record.id)) return `release of lease ${record.id}, which is not live`;
      return undefined;
    case 'released': {
      const lease = leases.get(record.id);
      if (lease === undefined) return `released record of lease ${record.id}, which is not live`;
      if (lease.releasedAt !== undefined) return `lease ${record.id} released twice`;
      leases.set(record.id, { ...lease, releasedAt: record.at });
      return undefined;
    }
  }
}

/**
 * The records a snapshot holds for a live lease: its grant (version 1 while its boot is
 * unknown), then, if it was released, its version 3 `released` record.
 */
export function snapshotRecords(lease: JournaledLease): JournalRecord[] {
  const { releasedAt, ...granted } = lease;
  const grant: JournalRecord = granted.bootId === undefined
    ? { v: 1, type: 'grant', lease: granted }
    : { v: 2, type: 'grant', lease: { ...granted, bootId: granted.bootId } };
  return releasedAt === undefined ? [grant] : [grant, { v: RELEASED_RECORD_VERSION, type: 'released', id: lease.id, at: releasedAt }];
}

/**
 * Whether a replayed lease belongs to an earlier boot than `bootId` (see the module comment):
 * a known boot decides; an unknown one is this boot's only if the journal was last written in it.
 */
export function grantedInAnotherBoot(lease: JournaledLease, bootId: string, journalWrittenThisBoot: boolean): boolean {
  return lease.bootId === undefined ? !journalWrittenThisBoot : lease.bootId !== bootId;
}

export function encode(record: JournalRecord): Buffer {
  return Buffer.from(`${JSON.stringify(record)}\n`, 'utf8');
}
