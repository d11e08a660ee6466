// What LeaseJournal.open() does before the journal takes records: take the state dir, read the
// journal back, and leave on disk exactly the live leases.
//
// Invariants:
// - One daemon per state dir: the state dir's lock (state-lock.ts) is taken before anything is
//   read. The state dir and file are checked as files.ts says (0700 dir, 0600 file, ours).
// - Replay (format.ts) streams the file; a torn last line is ignored and reported
//   (TornTail, and `log.warn`); any other bad line is JournalCorrupt naming file and line. A
//   journal that fails replay is left untouched on disk: the compaction to the live snapshot
//   runs only after the whole file replayed.
// - A lease counts as granted in another boot as format.ts grantedInAnotherBoot says, judged
//   with the running boot (default: read from /proc) and the file's mtime as read by the replay.
// - Fds: on success the lock and the append fd go to the caller (the LeaseJournal); on any
//   failure the lock is released here and no append fd was opened (it is opened last). Every
//   other fd lives inside one function of files.ts or state-lock.ts.
import { join } from 'node:path';
import { currentBoot } from './boot.ts';
import { JOURNAL_FILE, type JournaledLease, Replayer, grantedInAnotherBoot, type TornTail } from './format.ts';
import { compact, ensureStateDir, openAppend, streamJournal } from './files.ts';
import type { JournalOptions } from './journal.ts';
import { StateDirLock } from './state-lock.ts';

/** What a LeaseJournal is made of, read back from its state dir. */
export interface ReplayedState {
  file: string;
  /** Owner: the caller from now on. */
  lock: StateDirLock;
  /** The append fd; owner: the caller from now on. */
  fd: number;
  bootId: string;
  /** The live leases, in the order they were granted. */
  leases: Map<string, JournaledLease>;
  /** Ids of the leases granted in another boot than the running one (format.ts). */
  earlierBoot: ReadonlySet<string>;
  tornTail: TornTail | null;
}

/**
 * Locks the state dir, replays and compacts `stateDir/leases.journal` (creating the dir 0700
 * and the file 0600 as needed), then opens it for appending. Throws StateDirLocked,
 * JournalCorrupt, JournalUnusable or JournalWriteFailed.
 */
export function replayOnOpen(stateDir: string, options: Pick<JournalOptions, 'log' | 'boot' | 'readChunkBytes'>): ReplayedState {
  ensureStateDir(stateDir);
  const lock = StateDirLock.take(stateDir);
  try {
    const boot = options.boot ?? currentBoot();
    const file = join(stateDir, JOURNAL_FILE);
    const replayer = new Replayer(file);
    const stat = streamJournal(file, (chunk) => replayer.push(chunk), options.readChunkBytes);
    const { leases, tornTail } = replayer.finish();
    if (tornTail !== null) {
      options.log?.warn({ file, line: tornTail.line, bytes: tornTail.bytes },
        'journal: ignored a torn last line (a crash interrupted its write; it was never acknowledged)');
    }
    const writtenThisBoot = stat !== null && stat.modifiedMs >= boot.startedAtMs;
    const earlierBoot = new Set([...leases.values()].filter((l) => grantedInAnotherBoot(l, boot.id, writtenThisBoot)).map((l) => l.id));
    compact(stateDir, file, leases.values());
    const fd = openAppend(file);
    return { file, lock, fd, bootId: boot.id, leases, earlierBoot, tornTail };
  } catch (e) {
    lock.release();
    throw e;
  }
}
