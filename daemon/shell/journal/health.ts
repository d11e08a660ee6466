// Whether the journal can make records durable, and its way back when it cannot.
//
// Invariants:
// - Two states: healthy, or degraded since a time with the latest failure. Each change of
//   state is logged exactly once (error on entering, info on leaving); failed attempts while
//   degraded only update the failure, never log.
// - While degraded, recovery attempts run from a timer, spaced by a doubling delay capped at
//   maxMs (reset after a success); at most one timer is pending, and none after stop(). No
//   attempt ever runs in a loop without a timer between.
// - The timer is ref'd: a degraded journal keeps the process alive until stop().
import type { JournalWriteFailed } from './files.ts';

/** Anything with pino's `warn(obj, msg)` (and, optionally, `error` and `info`). */
export interface JournalLog {
  warn(details: object, message: string): void;
  error?(details: object, message: string): void;
  info?(details: object, message: string): void;
}

export interface RetryOptions {
  /** The first delay (ms). Default 100. */
  firstMs?: number;
  /** The longest delay (ms). Default 30,000. */
  maxMs?: number;
}

/** Since when, and why, the journal takes no durable records. */
export interface JournalDegraded { since: Date; error: JournalWriteFailed }

/** One recovery attempt: null on success, the failure, or 'busy' (try again later). */
export type RecoveryAttempt = () => JournalWriteFailed | null | 'busy';

export class JournalHealth {
  #degraded: JournalDegraded | null = null;
  readonly #first: number;
  readonly #max: number;
  #next: number;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;

  constructor(private readonly file: string, private readonly log: JournalLog, options: RetryOptions,
    private readonly recover: RecoveryAttempt) {
    this.#first = options.firstMs ?? 100;
    this.#max = options.maxMs ?? 30_000;
    this.#next = this.#first;
  }

  get degraded(): JournalDegraded | null {
    return this.#degraded;
  }

  /** A write, sync or compaction failed: degraded from now on (if not already), recovery scheduled. */
  fail(error: JournalWriteFailed): void {
    if (this.#degraded !== null) {
      this.#degraded = { since: this.#degraded.since, error };
      return;
    }
    this.#degraded = { since: new Date(), error };
    (this.log.error ?? this.log.warn).call(this.log, { file: this.file, operation: error.operation, code: error.code },
      'journal degraded: changes to leases are refused (JournalUnavailable) until it can be rewritten; retrying with backoff');
    this.#schedule();
  }

  /** One recovery attempt now (the timer's, or a last one before closing). */
  attempt(): void {
    const degraded = this.#degraded;
    if (degraded === null) return;
    const result = this.recover();
    if (result !== null) {
      if (result !== 'busy') this.#degraded = { since: degraded.since, error: result }; // same state: not logged
      this.#schedule();
      return;
    }
    this.#degraded = null;
    this.#next = this.#first;
    (this.log.info ?? this.log.warn).call(this.log, { file: this.file, degradedSince: degraded.since.toISOString() },
      'journal recovered: records are durable again (compacted to the live leases)');
  }

  /** No more attempts (the journal is closing). */
  stop(): void {
    this.#stopped = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(): void {
    if (this.#stopped || this.#timer !== undefined) return;
    const delay = this.#next;
    this.#next = Math.min(this.#max, this.#next * 2);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.attempt();
    }, delay);
  }
}
