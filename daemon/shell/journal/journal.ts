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
// - record*() refuses a record that does not fit (checked-records.ts), a closed journal, or one
//   the live leases cannot follow with JournalMisuse, before anything is applied or written.
// - Records are appended to one file, in order: a durable record implies that every record
//   written before it is durable too (fdatasync covers all earlier writes to the file).
// - The journal keeps the live leases in memory (`#live`: every record applied, written or
//   not), so its work and memory are bounded by the live leases, never by history.
// - Compaction (files.ts: the file on disk is always either the old journal or the
//   complete snapshot, never a mix) rewrites the file as the live snapshot: on open; while
//   running, when the records since the last one exceed max(compactMinRecords, 2 x live), in
//   place of the next group sync (so never while a pool fdatasync uses the fd); and to recover.
// - Degraded: after a failed write, fdatasync or compaction the file's tail is unknown. The
//   journal then writes nothing, every flush() rejects (JournalWriteFailed), and records still
//   update `#live` (callers undo what failed, and a target's exit is remembered). It logs the
//   change once, then retries on a backoff timer (doubling, capped) by compaction, which makes
//   the unknown tail irrelevant; once one succeeds every record so far is durable, it logs the
//   recovery once, and works as before. No retry ever runs in a loop without a timer.
// - open() reads the journal back as replay-on-open.ts says (the state dir's lock first, a
//   torn last line ignored and reported, a journal that fails replay untouched on disk);
//   close() releases that lock.
// - Fds: the append fd and the lock belong to the LeaseJournal instance and are closed by
//   close(): at once, after a last synchronous fdatasync, or — if a pool fdatasync is still
//   using the fd — when that returns (never under it: its number could be reused). A
//   compaction swaps in the new append fd before closing the old one. Every other fd lives
//   inside one function of files.ts or state-lock.ts.
import { closeSync, fdatasync, fdatasyncSync } from 'node:fs';
import type { Boot } from './boot.ts';
import { JOURNAL_FORMAT_VERSION, type JournalRecord, type JournaledLease, applyRecord, encode, type TornTail } from './format.ts';
import { JournalMisuse, grantRecord, releasedRecord, resizeRecord } from './checked-records.ts';
import { JournalWriteFailed, compact, errnoCode, openAppend, writeAll } from './files.ts';
import { JournalHealth, type JournalDegraded, type JournalLog, type RetryOptions } from './health.ts';
import { replayOnOpen } from './replay-on-open.ts';
import type { StateDirLock } from './state-lock.ts';

export { JOURNAL_FILE, JOURNAL_FORMAT_VERSION, JournalCorrupt, JournaledLease, type TornTail } from './format.ts';
export { JournalUnusable, JournalWriteFailed } from './files.ts';
export { StateDirLocked } from './state-lock.ts';
export type { JournalDegraded, JournalLog } from './health.ts';
export { JournalMisuse } from './checked-records.ts';

export interface JournalOptions {
  log?: JournalLog;
  /** The running boot (default: read from /proc). */
  boot?: Boot;
  /** Delays of the recovery attempts while degraded. */
  retry?: RetryOptions;
  /** Compact while running once the records since the last compaction exceed max(this, 2 x live). Default 1024. */
  compactMinRecords?: number;
  /** Size of the chunks the replay reads (tests). */
  readChunkBytes?: number;
}

export interface OpenedJournal {
  journal: LeaseJournal;
  /** The live leases, in the order they were granted. */
  leases: JournaledLease[];
  /** Ids of the leases granted in another boot than the running one (format.ts). */
  earlierBoot: ReadonlySet<string>;
  tornTail: TornTail | null;
}

interface FlushWaiter { upTo: number; resolve: () => void; reject: (e: JournalWriteFailed) => void }

export class LeaseJournal {
  readonly file: string;
  readonly bootId: string;
  readonly #dir: string;
  /** Owner: this instance, released by close(). */
  readonly #lock: StateDirLock;
  /** The append fd; owner: this instance, closed by close() or after the last sync. -1 once closed. */
  #fd: number;
  #closing = false;
  /** The live leases, every record applied (written or not). */
  readonly #live: Map<string, JournaledLease>;
  readonly #health: JournalHealth;
  readonly #compactMin: number;
  /** Records written (in call order), and how many of them are known to be on disk. */
  #written = 0;
  #synced = 0;
  #syncs = 0;
  #compactions = 0;
  /** Lines in the file since the last compaction (its snapshot's included). */
  #lines: number;
  #syncScheduled = false;
  #syncing = false;
  #waiters: FlushWaiter[] = [];

  private constructor(dir: string, file: string, fd: number, lock: StateDirLock, live: Map<string, JournaledLease>,
    bootId: string, options: JournalOptions) {
    this.#dir = dir;
    this.file = file;
    this.#fd = fd;
    this.#lock = lock;
    this.#live = live;
    this.#lines = live.size;
    this.bootId = bootId;
    this.#compactMin = options.compactMinRecords ?? 1024;
    this.#health = new JournalHealth(file, options.log ?? { warn: () => {} }, options.retry ?? {},
      () => (this.#syncing ? 'busy' : this.#compactNow()));
  }

  /**
   * Locks the state dir, replays and compacts `stateDir/leases.journal` (creating the dir 0700
   * and the file 0600 as needed), then opens it for appending. Throws StateDirLocked,
   * JournalCorrupt, JournalUnusable or JournalWriteFailed; a torn last line is not an error
   * (reported in `tornTail` and to `log`).
   */
  static open(stateDir: string, options: JournalOptions = {}): OpenedJournal {
    const { file, fd, lock, leases, bootId, earlierBoot, tornTail } = replayOnOpen(stateDir, options);
    const journal = new LeaseJournal(stateDir, file, fd, lock, leases, bootId, options);
    return { journal, leases: [...leases.values()], earlierBoot, tornTail };
  }

  /** Writes a new lease's record, stamped with the running boot; durable once a later flush() resolves. */
  recordGrant(lease: JournaledLease): void {
    this.#record(grantRecord(lease, this.bootId));
  }

  /** Writes a lease's new size and limit; durable once a later flush() resolves. */
  recordResize(id: string, memoryBytes: number, limitBytes: number): void {
    this.#record(resizeRecord(id, memoryBytes, limitBytes));
  }

  /** Writes a lease's Release (it stays live and charged); durable once a later flush() resolves. */
  recordReleased(id: string, at: string): void {
    this.#record(releasedRecord(id, at));
  }

  /** Writes the end of a lease; durable once a later flush() resolves. */
  recordRelease(id: string): void {
    this.#record({ v: JOURNAL_FORMAT_VERSION, type: 'release', id });
  }

  /** Records written and fdatasyncs done since open (their ratio is the group-commit batch size). */
  get stats(): { records: number; syncs: number } {
    return { records: this.#written, syncs: this.#syncs };
  }

  /** Compactions done since open (after the one open() does), each in place of a group sync or to recover. */
  get compactions(): number {
    return this.#compactions;
  }

  /** null while records become durable; otherwise since when and why they cannot. */
  get degraded(): JournalDegraded | null {
    return this.#health.degraded;
  }

  /**
   * Resolves once every record written before this call is on disk; rejects with
   * JournalWriteFailed while the journal is degraded, or if the sync that should have covered
   * them failed.
   */
  flush(): Promise<void> {
    const degraded = this.#health.degraded;
    if (degraded !== null) return Promise.reject(degraded.error);
    if (this.#synced >= this.#written) return Promise.resolve();
    return new Promise((resolve, reject) => {
      this.#waiters.push({ upTo: this.#written, resolve, reject });
    });
  }

  /**
   * Takes no more records, closes the append fd and releases the state dir's lock. Records
   * written but not yet synced are synced first (synchronously, or by the pool sync in
   * flight, after which the fd is closed); a degraded journal gets one last recovery attempt.
   * Idempotent; records after close are JournalMisuse.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (this.#syncing) return; // the pool sync's callback finishes the job
    if (this.#health.degraded !== null) {
      this.#health.attempt();
    } else if (this.#synced < this.#written) {
      try {
        fdatasyncSync(this.#fd);
        this.#synced = this.#written;
        this.#syncs += 1;
      } catch (e) {
        this.#fail(new JournalWriteFailed(this.file, 'fdatasync', errnoCode(e), { cause: e }));
      }
      this.#settleWaiters();
    }
    this.#health.stop();
    this.#closeFd();
    this.#lock.release();
  }

  #closeFd(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeSync(fd);
  }

  /** Applies the record to the live leases, then writes it unless the journal is degraded. */
  #record(record: JournalRecord): void {
    if (this.#closing) throw new JournalMisuse('the journal is closed');
    const refused = applyRecord(this.#live, record);
    if (refused !== undefined) throw new JournalMisuse(refused.replace(/granted twice$/, 'is already journaled'));
    if (this.#health.degraded !== null) return; // remembered in #live; the recovering compaction writes it
    try {
      writeAll(this.#fd, encode(record));
    } catch (e) {
      this.#fail(new JournalWriteFailed(this.file, 'write', errnoCode(e), { cause: e }));
      return;
    }
    this.#written += 1;
    this.#lines += 1;
    if (!this.#syncScheduled && !this.#syncing) {
      this.#syncScheduled = true;
      setImmediate(() => this.#startSync());
    }
  }

  /** One fdatasync on the thread pool covering every record written so far, or a compaction instead. */
  #startSync(): void {
    this.#syncScheduled = false;
    if (this.#syncing || this.#fd < 0 || this.#health.degraded !== null || this.#synced >= this.#written) return;
    if (this.#lines > Math.max(this.#compactMin, 2 * this.#live.size)) {
      const failed = this.#compactNow(); // durable too: the snapshot is fsync'ed
      if (failed !== null) this.#fail(failed);
      this.#settleWaiters();
      return;
    }
    this.#syncing = true;
    const upTo = this.#written;
    fdatasync(this.#fd, (e) => {
      this.#syncing = false;
      if (e !== null) {
        this.#fail(new JournalWriteFailed(this.file, 'fdatasync', errnoCode(e), { cause: e }));
      } else {
        this.#synced = Math.max(this.#synced, upTo);
        this.#syncs += 1;
      }
      this.#settleWaiters();
      if (this.#closing) {
        this.#closing = false; // let close() run its last sync (or recovery) and close the fd
        this.close();
      } else if (this.#health.degraded === null && this.#synced < this.#written) {
        this.#startSync(); // records written while this sync ran: the next batch
      }
    });
  }

  /**
   * Rewrites the file as the live snapshot and swaps in a fresh append fd; afterwards every
   * record so far is durable. Never while a pool sync uses the fd. Returns the failure, if any.
   */
  #compactNow(): JournalWriteFailed | null {
    let fd: number;
    try {
      compact(this.#dir, this.file, this.#live.values());
      fd = openAppend(this.file);
    } catch (e) {
      return e instanceof JournalWriteFailed ? e : new JournalWriteFailed(this.file, 'compaction', errnoCode(e), { cause: e });
    }
    this.#closeFd();
    this.#fd = fd;
    this.#compactions += 1;
    this.#lines = this.#live.size;
    this.#synced = this.#written;
    return null;
  }

  #fail(error: JournalWriteFailed): void {
    this.#health.fail(error);
    this.#settleWaiters();
  }

  #settleWaiters(): void {
    const pending: FlushWaiter[] = [];
    const degraded = this.#health.degraded;
    for (const w of this.#waiters) {
      if (degraded !== null) w.reject(degraded.error);
      else if (w.upTo <= this.#synced) w.resolve();
      else pending.push(w);
    }
    this.#waiters = pending;
  }
}

