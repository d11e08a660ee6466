// One daemon per state dir: an exclusive flock on `STATE_DIR/lock`, held for the process's life.
//
// Invariants:
// - Taken before the journal is read: two daemons on one state dir would each compact (rename
//   over) the other's journal and silently lose acknowledged leases. The loser never touches
//   the journal; it gets StateDirLocked naming the holder's pid.
// - The lock file is created 0600 (O_CREAT|O_NOFOLLOW|O_NONBLOCK, close-on-exec like every fd
//   Node opens); anything but a regular file there is refused (a FIFO never blocks the open).
// - The holder writes its pid (decimal, '\n') into the file after taking the lock; the pid is
//   information for the operator, never trusted: the flock alone decides.
// - flock belongs to the open file description: the lock ends when the fd closes or the
//   process dies (also by SIGKILL), so a crashed daemon never leaves a stale lock.
// - Fds: the lock fd is owned by the StateDirLock returned, closed by release(); on any
//   failure inside take() it is closed there.
import { closeSync, constants, fstatSync, ftruncateSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { LOCK_EX, LOCK_NB, SysError, flockFd } from '../../../native/sys.ts';
import { JournalUnusable, errnoCode } from './files.ts';

export const LOCK_FILE = 'lock';

/** Another process holds the state dir's lock. */
export class StateDirLocked extends Error {
  constructor(readonly stateDir: string, readonly holderPid: number | undefined) {
    super(`${stateDir} is in use by another iommufd-brokerd (${holderPid === undefined ? 'pid unknown' : `pid ${holderPid}`}); `
      + 'stop that daemon, or give this one its own --state-dir');
    this.name = 'StateDirLocked';
  }
}

export class StateDirLock {
  /** Owner: this instance; -1 once released. */
  #fd: number;

  private constructor(readonly file: string, fd: number) {
    this.#fd = fd;
  }

  /** Takes the lock without waiting; throws StateDirLocked or JournalUnusable. */
  static take(stateDir: string): StateDirLock {
    const file = join(stateDir, LOCK_FILE);
    let fd: number;
    try {
      fd = openSync(file, constants.O_RDWR | constants.O_CREAT | constants.O_NOFOLLOW | constants.O_NONBLOCK, 0o600);
    } catch (e) {
      throw new JournalUnusable(file, `cannot be opened (${errnoCode(e)})`);
    }
    try {
      if (!fstatSync(fd).isFile()) throw new JournalUnusable(file, 'is not a regular file');
      try {
        flockFd(fd, LOCK_EX | LOCK_NB);
      } catch (e) {
        if (e instanceof SysError && e.code === 'EAGAIN') throw new StateDirLocked(stateDir, holderPid(fd));
        throw new JournalUnusable(file, `cannot be locked (${e instanceof SysError ? e.code : String(e)})`);
      }
      ftruncateSync(fd, 0);
      writeSync(fd, `${process.pid}\n`, 0);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return new StateDirLock(file, fd);
  }

  /** Drops the lock (closing its fd). Idempotent. */
  release(): void {
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    closeSync(fd);
  }
}

function holderPid(fd: number): number | undefined {
  const buf = Buffer.alloc(32);
  const n = readSync(fd, buf, 0, buf.length, 0);
  const text = buf.subarray(0, n).toString('latin1').trim();
  return /^\d{1,10}$/.test(text) ? Number(text) : undefined;
}
