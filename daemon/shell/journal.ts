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
//   On open it is replayed, then compacted to the live leases (journal-files.ts: the file on
//   disk is always either the old journal or the complete snapshot, never a mix).
// - Replay (journal-format.ts): a torn last line is ignored and reported (TornTail, and
//   `log.warn`); any other bad line is JournalCorrupt naming file and line, never dropped. A
//   journal that fails replay is left untouched on disk.
// - After a failed write or fdatasync the on-disk state is unknown, so the journal refuses all
//   further records (JournalWriteFailed) until the daemon restarts and replays it.
// - The state dir and file are checked as journal-files.ts says (0700 dir, 0600 file, ours).
// - Fds: the append fd is owned by the LeaseJournal instance and closed by close(): at once,
//   after a last synchronous fdatasync, or — if a pool fdatasync is still using it — when that
//   returns (never under it: its number could be reused). Every other fd lives inside one
//   function of journal-files.ts.
import { closeSync, constants, fdatasync, fdatasyncSync, openSync } from 'node:fs';
import { join } from 'node:path';
import {
  JOURNAL_FILE, JOURNAL_FORMAT_VERSION, JournalRecord, JournaledLease, encode, replay, type TornTail,
} from './journal-format.ts';
import { JournalWriteFailed, compact, ensureStateDir, errnoCode, readJournal, writeAll } from './journal-files.ts';

export { JOURNAL_FILE, JOURNAL_FORMAT_VERSION, JournalCorrupt, JournaledLease, type TornTail } from './journal-format.ts';
export { JournalUnusable, JournalWriteFailed } from './journal-files.ts';

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

interface FlushWaiter { upTo: number; resolve: () => void; reject: (e: JournalWriteFailed) => void }

export class LeaseJournal {
  readonly file: string;
  /** The append fd; owner: this instance, closed by close() or after the last sync. -1 once closed. */
  #fd: number;
  #closing = false;
  /** Ids of the live leases (only to refuse misuse; compaction works from the file). */
  #live: Set<string>;
  #failed: JournalWriteFailed | null = null;
  /** Records written (in call order), and how many of them are known to be on disk. */
  #written = 0;
  #synced = 0;
  #syncs = 0;
  #syncScheduled = false;
  #syncing = false;
  #waiters: FlushWaiter[] = [];

  private constructor(file: string, fd: number, live: Set<string>) {
    this.file = file;
    this.#fd = fd;
    this.#live = live;
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
    const journal = new LeaseJournal(file, fd, new Set(leases.keys()));
    return { journal, leases: [...leases.values()], tornTail };
  }

  /** Writes a new lease's record; durable once a later flush() resolves. */
  recordGrant(lease: JournaledLease): void {
    const parsed = JournaledLease.safeParse(lease);
    if (!parsed.success) {
      throw new JournalMisuse(`not a valid lease record: ${parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('; ')}`);
    }
    if (this.#live.has(lease.id)) throw new JournalMisuse(`lease ${lease.id} is already journaled`);
    this.#append({ v: JOURNAL_FORMAT_VERSION, type: 'grant', lease: parsed.data });
    this.#live.add(lease.id);
  }

  /** Writes a lease's new size and limit; durable once a later flush() resolves. */
  recordResize(id: string, memoryBytes: number, limitBytes: number): void {
    this.#mustBeLive(id);
    const record = JournalRecord.safeParse({ v: JOURNAL_FORMAT_VERSION, type: 'resize', id, memoryBytes, limitBytes });
    if (!record.success) throw new JournalMisuse(`not a valid resize of ${id}: ${record.error.issues.map((i) => i.message).join('; ')}`);
    this.#append(record.data);
  }

  /** Writes the end of a lease; durable once a later flush() resolves. */
  recordRelease(id: string): void {
    this.#mustBeLive(id);
    this.#append({ v: JOURNAL_FORMAT_VERSION, type: 'release', id });
    this.#live.delete(id);
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

  #mustBeLive(id: string): void {
    if (!this.#live.has(id)) throw new JournalMisuse(`lease ${id} is not live in the journal`);
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
