// The durable lease journal: what was granted survives a crash of the daemon at any point.
//
// Invariants:
// - A record is on disk (written whole, then fdatasync'ed) before record*() returns; callers
//   reply to a grant or resize only after that. One fdatasync per record, synchronously, in
//   call order: simple and ordered. If that ever limits Open throughput, group commit (batch the
//   records of one loop turn behind one fdatasync, reply after it) is the path, not async I/O.
// - The file is append-only JSON lines, one record per line, each with "v" (format version).
//   On open it is replayed, then compacted: the live leases are written as grant records to a
//   temp file, fsync'ed, renamed over the journal, and the directory fsync'ed. So the file on
//   disk is always either the old journal or the complete snapshot, never a mix.
// - Replay (journal-format.ts): a torn last line is ignored and reported (TornTail, and
//   `log.warn`); any other bad line is JournalCorrupt naming file and line, never dropped. A
//   journal that fails replay is left untouched on disk.
// - After a failed write or fdatasync the on-disk state is unknown, so the journal refuses all
//   further records (JournalWriteFailed) until the daemon restarts and replays it.
// - The state dir is created 0700, must be a real directory owned by us and writable by no
//   one else; journal files are created 0600 (O_EXCL, O_NOFOLLOW).
// - Fds: the append fd is owned by the LeaseJournal instance and closed by close(). Every
//   other fd (reading, the temp file, the directory) is opened and closed inside one function.
import {
  closeSync, constants, fchmodSync, fdatasyncSync, fstatSync, fsyncSync, lstatSync, mkdirSync,
  openSync, readFileSync, renameSync, unlinkSync, writeSync,
} from 'node:fs';
import { join } from 'node:path';
import {
  JOURNAL_FILE, JOURNAL_FORMAT_VERSION, JournalRecord, JournaledLease, encode, replay, type TornTail,
} from './journal-format.ts';

export { JOURNAL_FILE, JOURNAL_FORMAT_VERSION, JournalCorrupt, JournaledLease, type TornTail } from './journal-format.ts';

/** The state dir or journal file is unsafe to use (wrong type, owner or permissions). */
export class JournalUnusable extends Error {
  constructor(readonly path: string, readonly reason: string) {
    super(`${path}: ${reason}`);
    this.name = 'JournalUnusable';
  }
}

/** A write or sync failed: the record may or may not be on disk; no more records are accepted. */
export class JournalWriteFailed extends Error {
  constructor(readonly file: string, readonly operation: string, readonly code: string, options?: { cause: unknown }) {
    super(`${file}: ${operation} failed (${code}); the journal accepts no more records until the daemon restarts`, options);
    this.name = 'JournalWriteFailed';
  }
}

/** The caller asked for something the journal's state forbids (a bug in the caller). */
export class JournalMisuse extends Error {
  constructor(reason: string) {
    super(reason);
    this.name = 'JournalMisuse';
  }
}


/** Anything with pino's `warn(obj, msg)`. */
export interface JournalLog { warn(details: object, message: string): void }

export interface OpenedJournal {
  journal: LeaseJournal;
  /** The live leases, in the order they were granted. */
  leases: JournaledLease[];
  tornTail: TornTail | null;
}

function errnoCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

/** Creates the state dir 0700 if missing; refuses one that others could tamper with. */
function ensureStateDir(dir: string): void {
  let st;
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    st = lstatSync(dir);
  } catch (e) {
    throw new JournalUnusable(dir, `cannot be created or examined (${errnoCode(e)})`);
  }
  if (!st.isDirectory()) throw new JournalUnusable(dir, 'is not a directory (a symlink is refused too)');
  const euid = process.geteuid?.();
  if (euid !== undefined && st.uid !== euid) throw new JournalUnusable(dir, `is owned by uid ${st.uid}, not by the daemon (uid ${euid})`);
  if ((st.mode & 0o022) !== 0) {
    throw new JournalUnusable(dir, `mode ${(st.mode & 0o777).toString(8)} lets others write it; chmod 700 it`);
  }
}

/** The journal's bytes, or an empty buffer if there is none yet. */
function readJournal(file: string): Buffer {
  let fd: number; // owner: this function
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return Buffer.alloc(0);
    throw new JournalUnusable(file, `cannot be opened (${errnoCode(e)})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new JournalUnusable(file, 'is not a regular file');
    if ((st.mode & 0o022) !== 0) throw new JournalUnusable(file, `mode ${(st.mode & 0o777).toString(8)} lets others write it`);
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Writes all of buf at the fd's position (O_APPEND: the end), looping over short writes. */
function writeAll(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/** Replaces the journal with a snapshot of `leases`, atomically and durably. */
function compact(dir: string, file: string, leases: Iterable<JournaledLease>): void {
  const temp = `${file}.tmp`;
  try {
    unlinkSync(temp); // left by a crash during an earlier compaction
  } catch (e) {
    if (errnoCode(e) !== 'ENOENT') throw new JournalUnusable(temp, `cannot remove a stale temp file (${errnoCode(e)})`);
  }
  const snapshot = Buffer.concat([...leases].map((lease) => encode({ v: JOURNAL_FORMAT_VERSION, type: 'grant', lease })));
  const flags = constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW;
  let step = 'open';
  try {
    const fd = openSync(temp, flags, 0o600); // owner: this block
    try {
      step = 'fchmod';
      fchmodSync(fd, 0o600); // independent of the umask
      step = 'write';
      writeAll(fd, snapshot);
      step = 'fsync';
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    step = 'rename';
    renameSync(temp, file);
    step = 'fsync of the directory';
    const dirFd = openSync(dir, constants.O_RDONLY | constants.O_DIRECTORY); // owner: this block
    try {
      fsyncSync(dirFd);
    } finally {
      closeSync(dirFd);
    }
  } catch (e) {
    if (step !== 'fsync of the directory') {
      try { unlinkSync(temp); } catch { /* already gone, or renamed */ }
    }
    throw new JournalWriteFailed(file, `compaction (${step})`, errnoCode(e), { cause: e });
  }
}

export class LeaseJournal {
  readonly file: string;
  /** The append fd; owner: this instance, closed by close(). -1 once closed. */
  #fd: number;
  #leases: Map<string, JournaledLease>;
  #failed: JournalWriteFailed | null = null;

  private constructor(file: string, fd: number, leases: Map<string, JournaledLease>) {
    this.file = file;
    this.#fd = fd;
    this.#leases = leases;
  }

  /**
   * Replays and compacts `stateDir/leases.journal` (creating the dir 0700 and the file 0600 as
   * needed), then opens it for appending. Throws JournalCorrupt, JournalUnusable or
   * JournalWriteFailed; a torn last line is not an error (reported in `tornTail` and to `log`).
   */
  static open(stateDir: string, options: { log?: JournalLog } = {}): OpenedJournal {
    ensureStateDir(stateDir);
    const file = join(stateDir, JOURNAL_FILE);
    const { leases, tornTail } = replay(file, readJournal(file));
    if (tornTail !== null) {
      options.log?.warn({ file, line: tornTail.line, bytes: tornTail.bytes },
        'journal: ignored a torn last line (a crash interrupted its write; it was never acknowledged)');
    }
    compact(stateDir, file, leases.values());
    let fd: number;
    try {
      fd = openSync(file, constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW);
    } catch (e) {
      throw new JournalWriteFailed(file, 'open for append', errnoCode(e), { cause: e });
    }
    const journal = new LeaseJournal(file, fd, leases);
    return { journal, leases: [...leases.values()], tornTail };
  }

  /** Durably records a new lease. */
  recordGrant(lease: JournaledLease): void {
    const parsed = JournaledLease.safeParse(lease);
    if (!parsed.success) {
      throw new JournalMisuse(`not a valid lease record: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    if (this.#leases.has(lease.id)) throw new JournalMisuse(`lease ${lease.id} is already journaled`);
    this.#append({ v: JOURNAL_FORMAT_VERSION, type: 'grant', lease: parsed.data });
    this.#leases.set(lease.id, parsed.data);
  }

  /** Durably records a lease's new size and limit. */
  recordResize(id: string, memoryBytes: number, limitBytes: number): void {
    const lease = this.#live(id);
    const record = JournalRecord.safeParse({ v: JOURNAL_FORMAT_VERSION, type: 'resize', id, memoryBytes, limitBytes });
    if (!record.success) throw new JournalMisuse(`not a valid resize of ${id}: ${record.error.issues.map((i) => i.message).join('; ')}`);
    this.#append(record.data);
    this.#leases.set(id, { ...lease, memoryBytes, limitBytes });
  }

  /** Durably records the end of a lease. */
  recordRelease(id: string): void {
    this.#live(id);
    this.#append({ v: JOURNAL_FORMAT_VERSION, type: 'release', id });
    this.#leases.delete(id);
  }

  /** Closes the append fd. Idempotent; records after close are JournalMisuse. */
  close(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeSync(fd);
  }

  #live(id: string): JournaledLease {
    const lease = this.#leases.get(id);
    if (lease === undefined) throw new JournalMisuse(`lease ${id} is not live in the journal`);
    return lease;
  }

  #append(record: JournalRecord): void {
    if (this.#fd < 0) throw new JournalMisuse('the journal is closed');
    if (this.#failed !== null) throw this.#failed;
    let operation = 'write';
    try {
      writeAll(this.#fd, encode(record));
      operation = 'fdatasync';
      fdatasyncSync(this.#fd);
    } catch (e) {
      this.#failed = new JournalWriteFailed(this.file, operation, errnoCode(e), { cause: e });
      throw this.#failed;
    }
  }
}
