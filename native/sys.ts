// The typed, throwing face of the native helper: every failed syscall becomes a SysError.
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
import { getSystemErrorMap } from 'node:util';
import { native, type NegErrno, type PeerCred, type Rlimit, type StatResult } from './binding.ts';

export type { PeerCred, Rlimit, StatResult } from './binding.ts';

export const RLIMIT_MEMLOCK = 8;
export const KCMP_FILE = 0;

/** Linux errnos that os.constants.errno lacks (asm-generic/errno.h, as on x86-64 and arm64). */
const LINUX_ONLY: Readonly<Record<string, number>> = {
  ENOTBLK: 15, ECHRNG: 44, EL2NSYNC: 45, EL3HLT: 46, EL3RST: 47, ELNRNG: 48, EUNATCH: 49,
  ENOCSI: 50, EL2HLT: 51, EBADE: 52, EBADR: 53, EXFULL: 54, ENOANO: 55, EBADRQC: 56,
  EBADSLT: 57, EBFONT: 59, ENONET: 64, ENOPKG: 65, EREMOTE: 66, EADV: 68, ESRMNT: 69,
  ECOMM: 70, EDOTDOT: 73, ENOTUNIQ: 76, EBADFD: 77, EREMCHG: 78, ELIBACC: 79, ELIBBAD: 80,
  ELIBSCN: 81, ELIBMAX: 82, ELIBEXEC: 83, ERESTART: 85, ESTRPIPE: 86, EUSERS: 87,
  ESOCKTNOSUPPORT: 94, EPFNOSUPPORT: 96, ESHUTDOWN: 108, ETOOMANYREFS: 109, EHOSTDOWN: 112,
  EUCLEAN: 117, ENOTNAM: 118, ENAVAIL: 119, EISNAM: 120, EREMOTEIO: 121, ENOMEDIUM: 123,
  EMEDIUMTYPE: 124, ENOKEY: 126, EKEYEXPIRED: 127, EKEYREVOKED: 128, EKEYREJECTED: 129,
  EOWNERDEAD: 130, ENOTRECOVERABLE: 131, ERFKILL: 132, EHWPOISON: 133,
};
/** Aliases share a number on Linux; these are the names the kernel sources use. */
const PREFERRED_NAMES = new Set(['EAGAIN', 'EOPNOTSUPP', 'EDEADLK']);
const NAMES = new Map<number, string>();
const NUMBERS = new Map<string, number>();
for (const [name, value] of [...Object.entries(constants.errno), ...Object.entries(LINUX_ONLY)]) {
  if (!NAMES.has(value) || PREFERRED_NAMES.has(name)) NAMES.set(value, name);
  NUMBERS.set(name, value);
}

/** Meanings libuv lacks or words misleadingly for our syscalls. */
const TEXT_OVERRIDES: Readonly<Record<string, string>> = {
  EOPNOTSUPP: 'operation not supported',
  ENOTTY: 'inappropriate ioctl for device',
  ENOPROTOOPT: 'protocol option not available (kernel too old?)',
  EXFULL: 'exchange full (more fds than the receiver accepts)',
  ETOOMANYREFS: 'too many references (fds in flight)',
  ESRCH: 'no such process',
};

const LIBUV_MESSAGES = getSystemErrorMap();

/** The symbolic name of an errno number (sign ignored), e.g. errnoName(1) === 'EPERM'. */
export function errnoName(errno: number): string {
  return NAMES.get(Math.abs(errno)) ?? `ERRNO_${Math.abs(errno)}`;
}

/** The positive errno number of a symbolic name, e.g. errnoNumber('EXFULL') === 54. */
export function errnoNumber(name: string): number {
  const value = NUMBERS.get(name);
  if (value === undefined) throw new RangeError(`unknown errno name ${name}`);
  return value;
}

/** A short strerror-like meaning of an errno number (sign ignored). */
export function errnoText(errno: number): string {
  const name = errnoName(errno);
  return TEXT_OVERRIDES[name] ?? LIBUV_MESSAGES.get(-Math.abs(errno))?.[1] ?? 'unknown error';
}

export class SysError extends Error {
  override readonly name = 'SysError';
  /** Symbolic errno name, e.g. 'EPERM'. The stable contract. */
  readonly code: string;
  /** Positive errno number (for logs only). */
  readonly errno: number;
  /** The syscall (or helper operation) that failed. */
  readonly syscall: string;

  constructor(syscall: string, errno: number, detail?: string) {
    const positive = Math.abs(errno);
    const code = errnoName(positive);
    super(`${syscall} failed: ${code} (${errnoText(positive)})${detail === undefined ? '' : `: ${detail}`}`);
    this.code = code;
    this.errno = positive;
    this.syscall = syscall;
  }
}

/** Returns `result` unless it is a negative number, which it throws as a SysError. */
export function sys<T>(syscall: string, result: T | NegErrno, detail?: string): T {
  if (typeof result === 'number' && result < 0) throw new SysError(syscall, result, detail);
  return result as T;
}

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
 * or a socket a client can fill: its last close may block for as long as the client likes. The
 * fd is no longer the caller's once this returns. Should the helper refuse it (no memory, no
 * thread), the fd is closed here instead, once: a possible stall beats a leak. EBUSY (a poll
 * watcher still watches fd; a bug) throws and leaves it open.
 */
export function closeOffLoop(fd: number): void {
  const r = native.closeLater(fd);
  if (r === 0) return;
  if (errnoName(r) === 'EBUSY') throw new SysError('closeLater', r, `fd ${fd} is still watched by a poll handle`);
  closeFd(fd);
}

/** How many fds closeOffLoop handed over are not closed yet (for /metrics). */
export function pendingCloses(): number {
  return native.pendingCloses();
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
