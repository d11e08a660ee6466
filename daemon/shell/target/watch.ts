// Live targets of granted leases, and the pidfd watch that ends a lease when its target exits.
//
// Invariants:
// - One entry per live lease; it owns the target's pidfd and its poll handle. `forget` stops
//   the poll before closing the pidfd (never close an fd libuv still polls).
// - The exit callback runs at most once per entry: the poll is level-triggered (an exited
//   pidfd stays readable), so it is stopped before the callback runs, and whatever the
//   callback does (or fails to do) can never make it fire again.
import { closeFd, POLL_READABLE, startPoll, stopPoll, SysError, type PollHandle } from '../../../native/sys.ts';
import type { Target } from './target.ts';

interface Watched {
  target: Target;
  /** null once the target exited (the poll was stopped then). */
  poll: PollHandle | null;
}

export class TargetWatch {
  readonly #byLease = new Map<string, Watched>();

  constructor(private readonly onExit: (leaseId: string) => void) {}

  /** Takes ownership of target.pidfd on success; on failure the caller still owns it. */
  watch(leaseId: string, target: Target): void {
    let poll: PollHandle;
    try {
      poll = startPoll(target.pidfd, POLL_READABLE, () => {
        const w = this.#byLease.get(leaseId);
        if (w?.poll === undefined || w.poll === null || w.poll !== poll) return;
        stopPoll(w.poll);
        w.poll = null;
        this.onExit(leaseId);
      });
    } catch (error) {
      if (!(error instanceof SysError)) throw error;
      throw new Error(`cannot watch pid ${target.pid} for exit: ${error.message}`, { cause: error });
    }
    this.#byLease.set(leaseId, { target, poll });
  }

  get(leaseId: string): Target | undefined {
    return this.#byLease.get(leaseId)?.target;
  }

  /** Stops watching and closes the pidfd. Safe for unknown ids. */
  forget(leaseId: string): void {
    const w = this.#byLease.get(leaseId);
    if (w === undefined) return;
    this.#byLease.delete(leaseId);
    if (w.poll !== null) stopPoll(w.poll);
    closeFd(w.target.pidfd);
  }

  forgetAll(): void {
    for (const id of [...this.#byLease.keys()]) this.forget(id);
  }
}
