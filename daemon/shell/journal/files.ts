// The journal's file-system side: a state dir and journal file nobody else can tamper with,
// whole writes, and compaction by atomic replacement.
//
// Invariants:
// - The state dir is created 0700, must be a real directory owned by us and writable by no
//   one else; journal files are created 0600 (O_EXCL, O_NOFOLLOW), independent of the umask.
// - compact() leaves on disk either the old journal or the complete snapshot, never a mix:
//   temp file written and fsync'ed, renamed over the journal, then the directory fsync'ed.
// - The journal is read in bounded chunks (never one Buffer of the whole file), opened with
//   O_NONBLOCK and O_NOFOLLOW: a FIFO, device or symlink at its path is refused at once
//   (JournalUnusable), never waited on.
// - Every fd here is opened and closed inside one function.
import {
  closeSync, constants, fchmodSync, fstatSync, fsyncSync, lstatSync, mkdirSync,
  openSync, readSync, renameSync, unlinkSync, writeSync,
} from 'node:fs';
import { type JournaledLease, encode, snapshotRecords } from './format.ts';

/** The state dir or journal file is unsafe to use (wrong type, owner or permissions). */
export class JournalUnusable extends Error {
  constructor(readonly path: string, readonly reason: string) {
    super(`${path}: ${reason}`);
    this.name = 'JournalUnusable';
  }
}

/**
 * A write, sync or compaction failed: the records since the last good sync may or may not be
 * on disk. The journal stays degraded (journal.ts) until a compaction rewrites it whole.
 */
export class JournalWriteFailed extends Error {
  constructor(readonly file: string, readonly operation: string, readonly code: string, options?: { cause: unknown }) {
    super(`${file}: ${operation} failed (${code}); the journal takes no durable records until the disk works again`, options);
    this.name = 'JournalWriteFailed';
  }
}

export function errnoCode(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? String(e);
}

/** Creates the state dir 0700 if missing; refuses one that others could tamper with. */
export function ensureStateDir(dir: string): void {
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

/** Default size of the chunks streamJournal reads. */
export const READ_CHUNK_BYTES = 64 * 1024;

/**
 * Feeds the journal's bytes to `sink` in chunks of at most chunkBytes (the buffer is reused:
 * the sink copies what it keeps). Returns the file's mtime, or null if there is no journal yet.
 */
export function streamJournal(file: string, sink: (chunk: Buffer) => void, chunkBytes = READ_CHUNK_BYTES): { modifiedMs: number } | null {
  let fd: number; // owner: this function
  try {
    fd = openSync(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    if (errnoCode(e) === 'ENOENT') return null;
    throw new JournalUnusable(file, `cannot be opened (${errnoCode(e)})`);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) throw new JournalUnusable(file, 'is not a regular file');
    if ((st.mode & 0o022) !== 0) throw new JournalUnusable(file, `mode ${(st.mode & 0o777).toString(8)} lets others write it`);
    const buf = Buffer.alloc(chunkBytes);
    for (;;) {
      let n: number;
      try {
        n = readSync(fd, buf, 0, buf.length, null);
      } catch (e) {
        throw new JournalUnusable(file, `cannot be read (${errnoCode(e)})`);
      }
      if (n === 0) break;
      sink(buf.subarray(0, n));
    }
    return { modifiedMs: st.mtimeMs };
  } finally {
    closeSync(fd);
  }
}

/** The journal's append fd (the caller owns it). */
export function openAppend(file: string): number {
  try {
    return openSync(file, constants.O_WRONLY | constants.O_APPEND | constants.O_NOFOLLOW);
  } catch (e) {
    throw new JournalWriteFailed(file, 'open for append', errnoCode(e), { cause: e });
  }
}

/** Writes all of buf at the fd's position (O_APPEND: the end), looping over short writes. */
export function writeAll(fd: number, buf: Buffer): void {
  let off = 0;
  while (off < buf.length) off += writeSync(fd, buf, off, buf.length - off);
}

/**
 * Replaces the journal with a snapshot of `leases`, atomically and durably. Work and disk
 * space are bounded by the live leases, whatever the journal's length.
 */
export function compact(dir: string, file: string, leases: Iterable<JournaledLease>): void {
  const temp = `${file}.tmp`;
  try {
    unlinkSync(temp); // left by a crash during an earlier compaction
  } catch (e) {
    if (errnoCode(e) !== 'ENOENT') throw new JournalUnusable(temp, `cannot remove a stale temp file (${errnoCode(e)})`);
  }
  const snapshot = Buffer.concat([...leases].flatMap((lease) => snapshotRecords(lease).map(encode)));
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
