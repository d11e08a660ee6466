// The durable lease journal: what was granted survives a crash of the daemon at any point.
//
// Invariants:
// - Group commit. record*() writes the record whole (one write(2), so records keep call order
//   in the file) and returns; it is durable once the promise of a later flush() resolves.
//   Callers reply to a call, or raise a kernel limit on its behalf, only after that. The
//   fdatasync runs on libuv's thread pool, one at a time; it starts on the loop turn after the
//   first unsynced record (setImmediate), so every record written by the calls read in one
//   turn shares it, and records written while it runs share the next one. Measured: one
//   synchronous fdatasync per record held durable Opens to ~155/s on this disk, whatever the
//   number of clients (docs/PERFORMANCE.md).
// - Records are appended to one file, in order: a durable record implies that every record
//   written before it is durable too (fdatasync covers all earlier writes to the file).
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
// - Fds: the append fd is owned by the LeaseJournal instance and closed by close(): at once,
//   after a last synchronous fdatasync, or — if a pool fdatasync is still using it — when that
//   returns (never under it: its number could be reused). Every other fd (reading, the temp
//   file, the directory) is opened and closed inside one function.
import {
  closeSync, constants, fdatasync, fchmodSync, fdatasyncSync, fstatSync, fsyncSync, lstatSync, mkdirSync,
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

interface FlushWaiter { upTo: number; resolve: () => void; reject: (e: JournalWriteFailed) => void }

export class LeaseJournal {
  readonly file: string;
  /** The append fd; owner: this instance, closed by close() or after the last sync. -1 once closed. */
  #fd: number;
  #closing = false;
  #leases: Map<string, JournaledLease>;
  #failed: JournalWriteFailed | null = null;
  /** Records written (in call order), and how many of them are known to be on disk. */
  #written = 0;
  #synced = 0;
  #syncs = 0;
  #syncScheduled = false;
  #syncing = false;
  #waiters: FlushWaiter[] = [];

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

  /** Writes a new lease's record; durable once a later flush() resolves. */
  recordGrant(lease: JournaledLease): void {
    const parsed = JournaledLease.safeParse(lease);
    if (!parsed.success) {
      throw new JournalMisuse(`not a valid lease record: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    if (this.#leases.has(lease.id)) throw new JournalMisuse(`lease ${lease.id} is already journaled`);
    this.#append({ v: JOURNAL_FORMAT_VERSION, type: 'grant', lease: parsed.data });
    this.#leases.set(lease.id, parsed.data);
  }

  /** Writes a lease's new size and limit; durable once a later flush() resolves. */
  recordResize(id: string, memoryBytes: number, limitBytes: number): void {
    const lease = this.#live(id);
    const record = JournalRecord.safeParse({ v: JOURNAL_FORMAT_VERSION, type: 'resize', id, memoryBytes, limitBytes });
    if (!record.success) throw new JournalMisuse(`not a valid resize of ${id}: ${record.error.issues.map((i) => i.message).join('; ')}`);
    this.#append(record.data);
    this.#leases.set(id, { ...lease, memoryBytes, limitBytes });
  }

  /** Writes the end of a lease; durable once a later flush() resolves. */
  recordRelease(id: string): void {
    this.#live(id);
    this.#append({ v: JOURNAL_FORMAT_VERSION, type: 'release', id });
    this.#leases.delete(id);
  }

  /** Records written and fdatasyncs done since open (their ratio is the group-commit batch size). */
  get stats(): { records: number; syncs: number } {
    return { records: this.#written, syncs: this.#syncs };
  }

  /**
   * Resolves once every record written before this call is on disk; rejects with
   * JournalWriteFailed if the sync that should have covered them failed.
   */
  flush(): Promise<void> {
    if (this.#failed !== null) return Promise.reject(this.#failed);
    if (this.#synced >= this.#written) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#waiters.push({ upTo: this.#written, resolve, reject });
    });
  }

  /**
   * Takes no more records and closes the append fd. Records written but not yet synced are
   * synced first (synchronously, or by the pool sync in flight, after which the fd is closed).
   * Idempotent; records after close are JournalMisuse.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#syncing) return; // the pool sync's callback finishes the job
    if (this.#synced < this.#written && this.#failed === null) {
      try {
        fdatasyncSync(this.#fd);
        this.#synced = this.#written;
        this.#syncs += 1;
      } catch (e) {
        this.#failed = new JournalWriteFailed(this.file, 'fdatasync', errnoCode(e), { cause: e });
      }
      this.#settleWaiters();
    }
    this.#closeFd();
  }

  #closeFd(): void {
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
    if (this.#closing) throw new JournalMisuse('the journal is closed');
    if (this.#failed !== null) throw this.#failed;
    try {
      writeAll(this.#fd, encode(record));
    } catch (e) {
      this.#failed = new JournalWriteFailed(this.file, 'write', errnoCode(e), { cause: e });
      this.#settleWaiters();
      throw this.#failed;
    }
    this.#written += 1;
    if (!this.#syncScheduled && !this.#syncing) {
      this.#syncScheduled = true;
      setImmediate(() => this.#startSync());
    }
  }

  /** One fdatasync on the thread pool, covering every record written so far. */
  #startSync(): void {
    this.#syncScheduled = false;
    if (this.#syncing || this.#fd < 0 || this.#failed !== null || this.#synced >= this.#written) return;
    this.#syncing = true;
    const upTo = this.#written;
    fdatasync(this.#fd, (e) => {
      this.#syncing = false;
      if (e !== null) {
        this.#failed ??= new JournalWriteFailed(this.file, 'fdatasync', errnoCode(e), { cause: e });
      } else {
        this.#synced = Math.max(this.#synced, upTo);
        this.#syncs += 1;
      }
      this.#settleWaiters();
      if (this.#closing) {
        this.#closing = false; // let close() run its last sync and close the fd
        this.close();
      } else if (this.#synced < this.#written) {
        this.#startSync(); // records written while this sync ran: the next batch
      }
    });
  }

  #settleWaiters(): void {
    const pending: FlushWaiter[] = [];
    for (const w of this.#waiters) {
      if (this.#failed !== null) w.reject(this.#failed);
      else if (w.upTo <= this.#synced) w.resolve();
      else pending.push(w);
    }
    this.#waiters = pending;
  }
}
