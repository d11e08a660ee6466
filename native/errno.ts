// Errno names, meanings and SysError: how a -errno from the native helper becomes an error a
// caller can branch on. Imported through native/sys.ts (which re-exports all of it).
//
// Invariants:
// - A SysError carries the errno's stable symbolic name (`code`, e.g. 'EPERM'), the positive
//   number, the syscall, and a message saying what failed and what the error means. Callers
//   branch on `code`, never on numbers.
// - `sys()` treats only negative numbers as failures: fds, counts, objects and 0 pass through.
// - No I/O: the tables come from node:os and node:util once, at load.
import { constants } from 'node:os';
import { getSystemErrorMap } from 'node:util';

/** A negative errno value, as the native helper returns it (binding.ts's NegErrno). */
type NegErrno = number;

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
