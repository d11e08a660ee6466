// The typed, throwing face of the native helper: every failed syscall becomes a SysError
// (errno.ts, re-exported here). The one door to the helper for daemon/ and client/: nothing
// outside native/ imports native/binding.ts (test/native/binding.test.ts checks it).
//
// Invariants:
// - A SysError carries the errno's stable symbolic name (`code`, e.g. 'EPERM'), the positive
//   number, the syscall, and a message saying what failed and what the error means. Callers
//   branch on `code`, never on numbers.
// - `sys()` treats only negative numbers as failures: fds, counts and 0 pass through.
// - Every function that returns an fd hands its ownership to the caller; each fd is
//   close-on-exec unless setCloexec(fd, false) was called on it deliberately.
// - closeFd never retries: Linux releases the fd even when close() reports an error.
import { constants as fsConstants, readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { native, type PeerCred, type PollHandle, type Rlimit, type StatResult } from './binding.ts';
import { errnoName, SysError, sys } from './errno.ts';

export type { PeerCred, PollHandle, Rlimit, StatResult } from './binding.ts';
export { POLL_READABLE, POLL_WRITABLE } from './binding.ts';
export { errnoName, errnoNumber, errnoText, SysError, sys } from './errno.ts';

export const RLIMIT_MEMLOCK = 8;
export const KCMP_FILE = 0;

/** Turns an fs error (which has `errno` < 0 and `code`) into a SysError; rethrows anything else. */
function fromNodeError(syscall: string, error: unknown, detail: string): SysError {
  if (error instanceof Error && 'errno' in error && typeof error.errno === 'number') {
    return new SysError(syscall, error.errno, detail);
  }
  throw error;
}

// --- fds ---

/** close(fd) once. The fd is released even if this throws; never call it twice. */
export function closeFd(fd: number): void {
  sys('close', native.close(fd), `fd ${fd}`);
}

/**
 * Closes fd off the event loop (the helper's closer threads), for an fd that came from a client
 * or a socket a client can fill: its last close may block for as long as the client likes.
 * `owner`: the client's uid it is charged to (at most two of one owner's closes run at once;
 * pendingClosesOf(owner) counts them), -1 for none. The
 * fd is no longer the caller's once this returns. Should the helper refuse it (no memory, no
 * thread), the fd is closed here instead, once: a possible stall beats a leak. EBUSY (a poll
 * watcher still watches fd; a bug) throws and leaves it open.
 */
export function closeOffLoop(fd: number, owner = -1): void {
  const r = native.closeLater(fd, owner);
  if (r === 0) return;
  if (errnoName(r) === 'EBUSY') throw new SysError('closeLater', r, `fd ${fd} is still watched by a poll handle`);
  closeFd(fd);
}

/** How many fds closeOffLoop handed over are not closed yet (for /metrics). */
export function pendingCloses(): number {
  return native.pendingCloses();
}

/** The same, for the fds charged to one owner (a client's uid). */
export function pendingClosesOf(owner: number): number {
  return native.pendingClosesOf(owner);
}

/**
 * close(fd) once, its result ignored: only for error paths, where the error being handled is the
 * one to report. (EBUSY, a poll watcher still on fd, leaves it open: a bug elsewhere.)
 */
export function closeFdQuietly(fd: number): void {
  native.close(fd);
}

/** A new close-on-exec fd (>= minFd) for the same open file; the caller owns it. */
export function dupCloexec(fd: number, minFd = 3): number {
  return sys('fcntl(F_DUPFD_CLOEXEC)', native.dupCloexec(fd, minFd), `fd ${fd}`);
}

/** Sets (true) or clears (false, for an fd an exec'd child must inherit) FD_CLOEXEC. */
export function setCloexec(fd: number, on: boolean): void {
  sys('fcntl(F_SETFD)', native.setCloexec(fd, on), `fd ${fd}`);
}

/** open(path, flags | O_CLOEXEC, mode); the caller owns the fd. */
export function openFile(path: string, flags: number, mode = 0o600): number {
  return sys('open', native.open(path, flags, mode), path);
}

/** memfd_create(name, MFD_CLOEXEC); the caller owns the fd. */
export function memfd(name: string): number {
  return sys('memfd_create', native.memfdCreate(name), name);
}

export function fstatFd(fd: number): StatResult {
  return sys('fstat', native.fstat(fd), `fd ${fd}`);
}

export const LOCK_EX = 2;
export const LOCK_NB = 4;

/** flock(fd, operation); EWOULDBLOCK (as 'EAGAIN') when LOCK_NB meets another holder. */
export function flockFd(fd: number, operation: number): void {
  sys('flock', native.flock(fd, operation), `fd ${fd}`);
}

/** ioctl(fd, request, buf) with buf read and written in place; `name` names the command in errors. */
export function ioctl(fd: number, request: number, buf: Buffer, name?: string): number {
  return sys(`ioctl(${name ?? `0x${request.toString(16)}`})`, native.ioctl(fd, request, buf), `fd ${fd}`);
}

// --- processes ---

/** pidfd_open's flag for a pidfd naming one thread, not its process (Linux 6.9+): O_EXCL. */
export const PIDFD_THREAD = fsConstants.O_EXCL;

/**
 * pidfd_open(pid, flags); the caller owns the (close-on-exec) pidfd. ESRCH if pid does not
 * exist. flags: 0 or PIDFD_THREAD (the broker itself never asks for a thread pidfd).
 */
export function pidfdOpen(pid: number, flags = 0): number {
  return sys('pidfd_open', flags === 0 ? native.pidfdOpen(pid) : native.pidfdOpen(pid, flags), `pid ${pid}`);
}

export function pidfdSendSignal(pidfd: number, signal: number): void {
  sys('pidfd_send_signal', native.pidfdSendSignal(pidfd, signal), `pidfd ${pidfd}`);
}

/**
 * Whether the process behind pidfd still runs (signal 0). ESRCH -> false. EPERM means the
 * process exists but we may not signal it: true.
 */
export function pidfdIsAlive(pidfd: number): boolean {
  const r = native.pidfdSendSignal(pidfd, 0);
  if (r === 0) return true;
  const name = errnoName(r);
  if (name === 'ESRCH') return false;
  if (name === 'EPERM') return true;
  throw new SysError('pidfd_send_signal', r, `probing pidfd ${pidfd}`);
}

/**
 * The pid a pidfd refers to, from /proc/self/fdinfo ("Pid:"): -1 once the process exited,
 * 0 if it lives in a pid namespace we cannot see. EBADF if fd is not open, EINVAL if it is
 * not a pidfd.
 */
export function pidOfPidfd(pidfd: number): number {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8');
  } catch (error) {
    const sysError = fromNodeError('pidOfPidfd', error, `reading /proc/self/fdinfo/${pidfd}`);
    throw sysError.code === 'ENOENT' ? new SysError('pidOfPidfd', constants.errno.EBADF, `fd ${pidfd} is not open`) : sysError;
  }
  const match = /^Pid:\s*(-?\d+)\s*$/m.exec(text);
  if (match?.[1] === undefined) throw new SysError('pidOfPidfd', constants.errno.EINVAL, `fd ${pidfd} is not a pidfd`);
  return Number(match[1]);
}

/**
 * Whether pidfd names one thread (opened with PIDFD_THREAD) rather than a process: its file
 * flags, the octal "flags:" line of /proc/self/fdinfo, hold O_EXCL. A thread pidfd may name
 * the thread group leader (same pid as the process) or any other thread (its TID).
 */
export function pidfdIsThread(pidfd: number): boolean {
  let text: string;
  try {
    text = readFileSync(`/proc/self/fdinfo/${pidfd}`, 'utf8');
  } catch (error) {
    throw fromNodeError('pidfdIsThread', error, `reading /proc/self/fdinfo/${pidfd}`);
  }
  const match = /^flags:\s*([0-7]+)\s*$/m.exec(text);
  if (match?.[1] === undefined) throw new SysError('pidfdIsThread', constants.errno.EINVAL, `fd ${pidfd} has no flags line`);
  return (Number.parseInt(match[1], 8) & PIDFD_THREAD) !== 0;
}

/** RLIMIT_MEMLOCK of pid (0 = ourselves): sets it when `set` is given; returns the previous values. */
export function prlimitMemlock(pid: number, set: Rlimit | null): Rlimit {
  return sys('prlimit', native.prlimit(pid, RLIMIT_MEMLOCK, set), `RLIMIT_MEMLOCK of pid ${pid}`);
}

/** kcmp(KCMP_FILE): do fd1 in pid1 and fd2 in pid2 refer to the same open file description? */
export function kcmpFiles(pid1: number, fd1: number, pid2: number, fd2: number): boolean {
  return sys('kcmp', native.kcmp(pid1, pid2, KCMP_FILE, fd1, fd2), `fd ${fd1} of pid ${pid1} vs fd ${fd2} of pid ${pid2}`) === 0;
}

/** Replaces this process image; returns only by throwing. */
export function execve(path: string, argv: string[], envp: string[]): never {
  throw new SysError('execve', native.execve(path, argv, envp), path);
}

// --- sockets (credentials) ---

/** SO_PEERCRED: the peer's pid/uid/gid as of connect(). */
export function peerCred(fd: number): PeerCred {
  return sys('getsockopt(SO_PEERCRED)', native.peerCred(fd), `fd ${fd}`);
}

/** SO_PEERGROUPS: the peer's supplementary groups as of connect() (never read from /proc). */
export function peerGroups(fd: number): number[] {
  return sys('getsockopt(SO_PEERGROUPS)', native.peerGroups(fd), `fd ${fd}`);
}

/** SO_PEERPIDFD: a close-on-exec pidfd for the peer, owned by the caller. ENOPROTOOPT before Linux 6.5. */
export function peerPidfd(fd: number): number {
  return sys('getsockopt(SO_PEERPIDFD)', native.peerPidfd(fd), `fd ${fd}`);
}

// --- sockets (listening, kinds, datagrams) ---

/**
 * socket+bind+listen on path; the socket file gets `mode` at bind (umask around bind, no chmod
 * window). The caller owns the listening fd.
 */
export function listenUnix(path: string, backlog: number, mode: number): number {
  return sys('listen', native.listenUnix(path, backlog, mode), path);
}

/**
 * Whether fd is an AF_UNIX SOCK_STREAM socket: true, or false for another kind of socket.
 * Throws SysError for an fd that is no socket (ENOTSOCK) or not open (EBADF).
 */
export function isUnixStreamSocket(fd: number): boolean {
  return sys('getsockopt(SO_TYPE)', native.isUnixStreamSocket(fd), `fd ${fd}`) === 1;
}

/**
 * SO_PASSRIGHTS=0 on a listening socket: its accepted sockets refuse fds a peer sends (the
 * peer's sendmsg fails with EPERM), so no passed file is dropped by the kernel on our thread.
 * Returns false on kernels before 6.16 (ENOPROTOOPT), where the option does not exist.
 */
export function refuseFdPassing(fd: number): boolean {
  const r = native.refuseFdPassing(fd);
  if (r < 0 && errnoName(r) === 'ENOPROTOOPT') return false;
  sys('setsockopt(SO_PASSRIGHTS)', r, `fd ${fd}`);
  return true;
}

/**
 * For an accepted socket whose peer connected before its listener refused fds (the kernel
 * copies SO_PASSRIGHTS at connect()): makes it refuse them from now on, and says whether fds
 * already wait in its receive queue ('queued': reading it with read(2) would drop them, and
 * run their last close, on this thread; checked whatever the option said, in case a kernel
 * copies it at accept() rather than connect()). 'sealed': it refused fds from the start;
 * 'unsupported': the kernel has no SO_PASSRIGHTS (before 6.16).
 */
export function sealFdPassing(fd: number): 'sealed' | 'now-sealed' | 'queued' | 'unsupported' {
  const r = native.sealFdPassing(fd);
  if (r < 0 && errnoName(r) === 'ENOPROTOOPT') return 'unsupported';
  const v = sys('SO_PASSRIGHTS (sealing an accepted socket)', r, `fd ${fd}`);
  return v === 0 ? 'sealed' : v === 1 ? 'now-sealed' : 'queued';
}

/**
 * One datagram to the abstract AF_UNIX address "\0name" (sd_notify's '@' sockets), on a socket
 * created and closed inside this call; returns the bytes sent.
 */
export function sendAbstractDatagram(name: string, data: Buffer): number {
  return sys('sendto', native.sendDatagram(name, true, data), `@${name}`);
}

/**
 * One datagram carrying `fd` as SCM_RIGHTS to a path or abstract ('\0name') AF_UNIX datagram
 * address, on a socket created and closed inside this call (sd_notify FDSTORE=1); `fd` stays
 * the caller's. Returns the bytes sent.
 */
export function sendDatagramWithFd(name: string, abstract: boolean, data: Buffer, fd: number): number {
  return sys('sendmsg', native.sendDatagram(name, abstract, data, fd), abstract ? `@${name}` : name);
}

// --- readiness on Node's loop ---

/**
 * Starts watching fd for `events` (POLL_* bits) on Node's loop; the callback gets (status,
 * events), status < 0 a -errno. The caller owns the handle: stopPoll it before closing fd.
 */
export function startPoll(fd: number, events: number, callback: (status: number, events: number) => void): PollHandle {
  return sys<PollHandle>('uv_poll_start', native.startPoll(fd, events, callback), `fd ${fd}`);
}

/** Stops and frees a handle from startPoll, once; the fd stays open. */
export function stopPoll(handle: PollHandle): void {
  native.stopPoll(handle);
}
