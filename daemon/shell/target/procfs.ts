// Readers of /proc: who a process is, what it may do, and what it has pinned.
//
// Invariants:
// - Each reader opens one /proc file, reads it whole and closes it before returning
//   (readFileSync owns that fd for the duration of the call); nothing here keeps an fd.
// - A process that no longer exists (ENOENT on /proc/PID/..., or ESRCH from a process that
//   exits while its file is read) is reported as ProcessGone, never as a raw fs error.
// - Content that does not have the shape the kernel documents (proc(5)) is a ProcfsFormatError
//   naming the file and the field: we never guess a uid, a capability set or a size.
// - Sizes are bytes (the kernel's "kB" is KiB: multiplied by 1024). Capability sets are
//   bigints (64 bits wide; CapInh/CapPrm/CapEff/CapBnd/CapAmb are printed in hex).
// - Reading /proc/PID/* says nothing about *which* process owned that PID at the time; callers
//   that hold a pidfd must check it is still alive afterwards (see target.ts).
import { readFileSync } from 'node:fs';
import { endianness } from 'node:os';

export const CAP_IPC_LOCK = 14;
export const CAP_SYS_RESOURCE = 24;

/** The process named by `pid` does not exist (any more). */
export class ProcessGone extends Error {
  readonly pid: number | 'self';
  readonly code: 'ENOENT' | 'ESRCH';
  constructor(pid: number | 'self', path: string, code: 'ENOENT' | 'ESRCH') {
    super(`process ${pid} is gone: reading ${path} failed with ${code}`);
    this.name = 'ProcessGone';
    this.pid = pid;
    this.code = code;
  }
}

/** A /proc file did not have the documented format (or could not be read for another reason). */
export class ProcfsFormatError extends Error {
  readonly path: string;
  constructor(path: string, what: string, options?: { cause: unknown }) {
    super(`${path}: ${what}`, options);
    this.name = 'ProcfsFormatError';
    this.path = path;
  }
}

export interface ProcStatus {
  pid: number;
  /** Thread group id: equals pid for a process, differs when `pid` named a thread. */
  tgid: number;
  /** The command name (comm), as /proc shows it (escaped by the kernel). */
  name: string;
  realUid: number;
  effectiveUid: number;
  savedUid: number;
  fsUid: number;
  realGid: number;
  effectiveGid: number;
  savedGid: number;
  fsGid: number;
  /** Supplementary groups. */
  groups: number[];
  /** Effective capability set (bit n = capability n). */
  capEff: bigint;
  /** Permitted, inheritable, bounding and ambient sets: what the process may raise later. */
  capPrm: bigint;
  capInh: bigint;
  capBnd: bigint;
  capAmb: bigint;
  /** "NoNewPrivs: 1": no exec can grant it privileges (setuid, file capabilities) any more. */
  noNewPrivs: boolean;
  /**
   * The one-letter state of "State:" (R, S, D, Z, ...): Z is a zombie, exited but not reaped.
   * For a process, that is the state of its thread group LEADER, which shows Z after it
   * pthread_exit()s while other threads run on: see `threads`.
   */
  state: string;
  /** "Threads:": live threads of the thread group (a zombie leader still counts itself). */
  threads: number;
  /** VmPin in bytes; undefined when the kernel omits it (kernel threads, zombies). */
  vmPinBytes: number | undefined;
  /** VmLck in bytes; undefined when the kernel omits it (kernel threads, zombies). */
  vmLckBytes: number | undefined;
}

type Pid = number | 'self';

function procPath(pid: Pid, file: string): string {
  if (pid !== 'self' && (!Number.isSafeInteger(pid) || pid <= 0)) {
    throw new RangeError(`not a process id: ${String(pid)}`);
  }
  return `/proc/${pid}/${file}`;
}

/** Reads a per-process /proc file; a missing process becomes ProcessGone. */
function readProcessFile(pid: Pid, file: string): string {
  const path = procPath(pid, file);
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ESRCH') throw new ProcessGone(pid, path, code);
    throw new ProcfsFormatError(path, `cannot be read (${code ?? String(e)})`, { cause: e });
  }
}

/** "Key:\tvalue" lines into a map (values trimmed). */
function statusFields(text: string): Map<string, string> {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return fields;
}

function required(fields: Map<string, string>, key: string, path: string): string {
  const value = fields.get(key);
  if (value === undefined) throw new ProcfsFormatError(path, `no "${key}:" line`);
  return value;
}

function decimal(text: string, path: string, what: string): number {
  if (!/^\d+$/.test(text)) throw new ProcfsFormatError(path, `${what} is not a decimal number: "${text}"`);
  const n = Number(text);
  if (!Number.isSafeInteger(n)) throw new ProcfsFormatError(path, `${what} is out of range: ${text}`);
  return n;
}

/** "Uid:"/"Gid:" lines: real, effective, saved, filesystem. */
function idQuad(fields: Map<string, string>, key: string, path: string): [number, number, number, number] {
  const parts = required(fields, key, path).split(/\s+/);
  if (parts.length !== 4) throw new ProcfsFormatError(path, `"${key}:" should have 4 ids, has ${parts.length}`);
  const [r, e, s, f] = parts.map((p) => decimal(p, path, key)) as [number, number, number, number];
  return [r, e, s, f];
}

/** "VmLck:  123 kB" -> bytes; undefined if the line is absent. */
function kibLine(fields: Map<string, string>, key: string, path: string): number | undefined {
  const value = fields.get(key);
  if (value === undefined) return undefined;
  const m = /^(\d+) kB$/.exec(value);
  if (m === null || m[1] === undefined) throw new ProcfsFormatError(path, `"${key}:" is not "<n> kB": "${value}"`);
  const bytes = decimal(m[1], path, key) * 1024;
  if (!Number.isSafeInteger(bytes)) throw new ProcfsFormatError(path, `"${key}:" is out of range: ${value}`);
  return bytes;
}

function capabilitySet(fields: Map<string, string>, key: string, path: string): bigint {
  const value = required(fields, key, path);
  if (!/^[0-9a-f]{1,16}$/i.test(value)) throw new ProcfsFormatError(path, `"${key}:" is not a hex mask: "${value}"`);
  return BigInt(`0x${value}`);
}

/** "NoNewPrivs:\t0|1" (Linux 4.10+). */
function flag(fields: Map<string, string>, key: string, path: string): boolean {
  const value = required(fields, key, path);
  if (value !== '0' && value !== '1') throw new ProcfsFormatError(path, `"${key}:" is not 0 or 1: "${value}"`);
  return value === '1';
}

/** "State:\tS (sleeping)" -> "S". */
function processState(fields: Map<string, string>, path: string): string {
  const value = required(fields, 'State', path);
  const m = /^([A-Za-z])\b/.exec(value);
  if (m === null || m[1] === undefined) throw new ProcfsFormatError(path, `"State:" does not start with a state letter: "${value}"`);
  return m[1];
}

function parseStatus(pid: Pid, text: string, path: string): ProcStatus {
  const fields = statusFields(text);
  const [realUid, effectiveUid, savedUid, fsUid] = idQuad(fields, 'Uid', path);
  const [realGid, effectiveGid, savedGid, fsGid] = idQuad(fields, 'Gid', path);
  const groupsText = fields.get('Groups') ?? '';
  const groups = groupsText === '' ? [] : groupsText.split(/\s+/).map((g) => decimal(g, path, 'Groups'));
  const ownPid = decimal(required(fields, 'Pid', path), path, 'Pid');
  if (pid !== 'self' && ownPid !== pid) throw new ProcfsFormatError(path, `"Pid:" is ${ownPid}, expected ${pid}`);
  return {
    pid: ownPid,
    tgid: decimal(required(fields, 'Tgid', path), path, 'Tgid'),
    name: required(fields, 'Name', path),
    realUid, effectiveUid, savedUid, fsUid,
    realGid, effectiveGid, savedGid, fsGid,
    groups,
    capEff: capabilitySet(fields, 'CapEff', path),
    capPrm: capabilitySet(fields, 'CapPrm', path),
    capInh: capabilitySet(fields, 'CapInh', path),
    capBnd: capabilitySet(fields, 'CapBnd', path),
    capAmb: capabilitySet(fields, 'CapAmb', path),
    noNewPrivs: flag(fields, 'NoNewPrivs', path),
    state: processState(fields, path),
    threads: decimal(required(fields, 'Threads', path), path, 'Threads'),
    vmPinBytes: kibLine(fields, 'VmPin', path),
    vmLckBytes: kibLine(fields, 'VmLck', path),
  };
}

/** /proc/PID/status: identity, state, capability sets, NoNewPrivs, pinned and locked memory. */
export function readProcStatus(pid: number): ProcStatus {
  return parseStatus(pid, readProcessFile(pid, 'status'), procPath(pid, 'status'));
}

/**
 * Field 22 of /proc/PID/stat: the start time in clock ticks since boot, as a decimal string.
 * Together with the pid it names one process for the life of the system (a recycled pid gets
 * a later start time). comm (field 2) may contain spaces and parentheses, so fields are
 * counted from after the LAST ')'.
 */
export function readStartTime(pid: number): string {
  const path = procPath(pid, 'stat');
  const text = readProcessFile(pid, 'stat');
  return startTimeFromStat(text, path);
}

/** Exported for tests: the parser behind readStartTime. */
export function startTimeFromStat(text: string, path: string): string {
  const close = text.lastIndexOf(')');
  if (close < 0) throw new ProcfsFormatError(path, 'no ")" closing the command name');
  // After ") " come fields 3 (state), 4 (ppid), ...: field n is at index n - 3.
  const rest = text.slice(close + 1).trim().split(/\s+/);
  const start = rest[22 - 3];
  if (start === undefined || !/^\d+$/.test(start)) {
    throw new ProcfsFormatError(path, `field 22 (starttime) is missing or not a number: "${String(start)}"`);
  }
  return start;
}

/**
 * /proc/PID/uid_map as the reader sees it: the mapping of pid's user namespace into the
 * reader's, one [inside, outside, count] triple per line. Readable by anyone (unlike
 * /proc/PID/ns/user, whose stat needs ptrace access to pid: a broker running as its own user
 * gets EACCES there for every target of another uid). ProcessGone if pid has exited.
 */
export function readUidMap(pid: Pid): Array<[number, number, number]> {
  const path = procPath(pid, 'uid_map');
  return readProcessFile(pid, 'uid_map').split('\n').filter((line) => line.trim() !== '').map((line) => {
    const parts = line.trim().split(/\s+/);
    if (parts.length !== 3) throw new ProcfsFormatError(path, `a mapping line should have 3 numbers: "${line}"`);
    const [inside, outside, count] = parts.map((part) => decimal(part, path, 'uid_map')) as [number, number, number];
    return [inside, outside, count];
  });
}

/** MemTotal from /proc/meminfo, in bytes. */
export function memTotalBytes(): number {
  const path = '/proc/meminfo';
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new ProcfsFormatError(path, `cannot be read (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
  }
  const bytes = kibLine(statusFields(text), 'MemTotal', path);
  if (bytes === undefined) throw new ProcfsFormatError(path, 'no "MemTotal:" line');
  return bytes;
}

const AT_PAGESZ = 6n;
let cachedPageSize: number | undefined;

/**
 * The kernel's page size, from AT_PAGESZ in our own auxiliary vector (/proc/self/auxv:
 * pairs of native-endian words; Node runs only on 64-bit Linux here, checked below).
 * Read once, then cached: it cannot change while we run.
 */
export function pageSize(): number {
  if (cachedPageSize !== undefined) return cachedPageSize;
  const path = '/proc/self/auxv';
  const auxv = readFileSync(path);
  if (auxv.length % 16 !== 0) throw new ProcfsFormatError(path, `length ${auxv.length} is not a multiple of 16 (not a 64-bit process?)`);
  const little = endianness() === 'LE';
  for (let off = 0; off + 16 <= auxv.length; off += 16) {
    const type = little ? auxv.readBigUInt64LE(off) : auxv.readBigUInt64BE(off);
    if (type === 0n) break; // AT_NULL ends the vector
    if (type === AT_PAGESZ) {
      const value = little ? auxv.readBigUInt64LE(off + 8) : auxv.readBigUInt64BE(off + 8);
      if (value < 4096n || value > 1n << 30n || (value & (value - 1n)) !== 0n) {
        throw new ProcfsFormatError(path, `AT_PAGESZ is ${value}, not a power of two in [4 KiB, 1 GiB]`);
      }
      cachedPageSize = Number(value);
      return cachedPageSize;
    }
  }
  throw new ProcfsFormatError(path, 'no AT_PAGESZ entry');
}

/** Whether capability number `cap` is in the set. */
export function hasCapability(capEff: bigint, cap: number): boolean {
  if (!Number.isInteger(cap) || cap < 0 || cap > 63) throw new RangeError(`not a capability number: ${cap}`);
  return ((capEff >> BigInt(cap)) & 1n) === 1n;
}

export interface OwnCapabilities {
  effective: bigint;
  /** CAP_SYS_RESOURCE: needed to set RLIMIT_MODE, to raise hard limits, to prlimit other uids. */
  sysResource: boolean;
  /** CAP_IPC_LOCK: the broker itself would not be charged for pins (it pins nothing). */
  ipcLock: boolean;
}

/** Our own effective capabilities, from /proc/self/status. */
export function ownCapabilities(): OwnCapabilities {
  const path = '/proc/self/status';
  const status = parseStatus('self', readProcessFile('self', 'status'), path);
  return {
    effective: status.capEff,
    sysResource: hasCapability(status.capEff, CAP_SYS_RESOURCE),
    ipcLock: hasCapability(status.capEff, CAP_IPC_LOCK),
  };
}
