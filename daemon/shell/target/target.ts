// Target processes: who they are, and their RLIMIT_MEMLOCK.
//
// Invariants:
// - A target is always held by a pidfd; a pid alone is never trusted. prlimit(2) takes only a
//   pid, so every limit change is bracketed by liveness checks of the pidfd: a dead target is
//   never touched, and if it dies in the microseconds between check and prlimit, the change is
//   undone on the pid's new owner (if the process the pidfd names is alive after prlimit, its
//   pid cannot have been recycled in between, so the limit landed on the right process).
// - soft == hard == limit: the target cannot raise its own limit afterwards ("no way out").
// - A target is a whole process: a pidfd naming one thread (PIDFD_THREAD, or a thread that is
//   not its group's leader) is refused as InvalidParameter, so one process can never hold two
//   leases under two names, and a lease never ends when one thread exits. A zombie (exited, not
//   yet reaped: its pidfd still answers signal 0) is TargetGone, like a process that is gone.
// - Kernel refusals (reading or setting a limit) become KernelRefused / TargetGone naming the
//   operation, the cause and what to do; an error says a change was undone only if it was.
import { BrokerError, VarlinkServiceError } from '../../../protocol/errors.ts';
import {
  closeFd, closeOffLoop, pidfdIsAlive, pidfdIsThread, pidfdOpen, pidOfPidfd, prlimitMemlock, SysError, type Rlimit,
} from '../../../native/sys.ts';
import { readProcStatus, readStartTime, type ProcStatus } from './procfs.ts';
import { capabilityFacts } from './caps.ts';
import type { TargetIds } from '../../core/open-decision.ts';

export interface Target {
  pid: number;
  /** owner: whoever holds the Target; a granted lease takes it over, else close it. */
  pidfd: number;
  uid: number;
  /**
   * Real, effective and saved uids and gids, from the same /proc read as `uid`, the pidfd alive
   * after it (a non-manager's self-Open needs them equal to its SO_PEERCRED ids).
   */
  ids: TargetIds;
  startTime: string;
  /** The capability set from which the target holds or may gain CAP_IPC_LOCK (caps.ts). */
  ipcLockSet: string | undefined;
  /**
   * No exec can give the target CAP_IPC_LOCK in the initial user namespace: NoNewPrivs is set,
   * or it lives in another user namespace (caps.ts).
   */
  noNewPrivs: boolean;
}

/** Pinned and locked memory from the same /proc read, for a reply (absent where unreadable). */
export interface TargetUsage { pinnedBytes?: number; lockedBytes?: number }

/**
 * Learns who the pidfd names, and its memory usage from the same /proc read (an Open's reply
 * needs it; keeping it out of Target keeps a watched lease small). Takes ownership of pidfd:
 * closed here on failure, off the event loop (closeOffLoop): a client sent it, and until it is
 * known to be a pidfd it may be any file, one whose last close blocks. `owner`: the uid that
 * sent it (the close is charged to it), -1 for the daemon's own.
 */
export function describeTarget(pidfd: number, owner = -1): Target & { usage: TargetUsage } {
  try {
    const pid = pidOfPidfdParameter(pidfd);
    if (pid <= 0) throw gone(pid, 'the process named by the pidfd has exited');
    const status = readProcStatus(pid);
    if (pidfdIsThread(pidfd) || status.tgid !== pid) throw threadPidfd(pid, status.tgid);
    const startTime = readStartTime(pid);
    const caps = capabilityFacts(pid, status);
    // The /proc reads above are for the pid; only a still-live pidfd proves they were about it.
    if (!pidfdIsAlive(pidfd)) throw gone(pid, 'the process exited while the broker looked at it');
    // A zombie leader whose other threads still run is a live process (it still pins): only a
    // zombie with no other thread has exited.
    if ((status.state === 'Z' || status.state === 'X') && status.threads <= 1) {
      throw gone(pid, 'the process has exited (a zombie its parent has not reaped yet): it can pin nothing');
    }
    const ids: TargetIds = {
      realUid: status.realUid, effectiveUid: status.effectiveUid, savedUid: status.savedUid,
      realGid: status.realGid, effectiveGid: status.effectiveGid, savedGid: status.savedGid,
    };
    return { pid, pidfd, uid: status.realUid, ids, startTime, ...caps, usage: usageOf(status) };
  } catch (e) {
    closeOffLoop(pidfd, owner);
    throw toTargetError(e);
  }
}

function usageOf(status: ProcStatus): TargetUsage {
  return {
    ...(status.vmPinBytes === undefined ? {} : { pinnedBytes: status.vmPinBytes }),
    ...(status.vmLckBytes === undefined ? {} : { lockedBytes: status.vmLckBytes }),
  };
}

/** A lease's target's memory usage now; {} if its /proc entry cannot be read (it may be gone). */
export function readTargetUsage(pid: number): TargetUsage {
  try {
    return usageOf(readProcStatus(pid));
  } catch {
    return {};
  }
}

function threadPidfd(tid: number, tgid: number): VarlinkServiceError {
  return new VarlinkServiceError('org.varlink.service.InvalidParameter', {
    parameter: 'targetPidFileDescriptor',
    reason: `the pidfd names thread ${tid} of process ${tgid}, not a process: a lease covers a whole process, ` +
      `so send a pidfd from pidfd_open(${tgid}, 0) (without PIDFD_THREAD)`,
  });
}

/** pidOfPidfd, with "that is not a pidfd" turned into the caller's mistake it is. */
function pidOfPidfdParameter(pidfd: number): number {
  try {
    return pidOfPidfd(pidfd);
  } catch (e) {
    if (e instanceof SysError && (e.code === 'EINVAL' || e.code === 'EBADF')) {
      throw new VarlinkServiceError('org.varlink.service.InvalidParameter', {
        parameter: 'targetPidFileDescriptor',
        reason: 'the fd sent is not a pidfd: send one from pidfd_open(2), or omit the parameter to target yourself',
      });
    }
    throw e;
  }
}

/** Re-finds a journaled target after a restart: same pid *and* same start time, or nothing. */
export function reacquireTarget(pid: number, startTime: string): Target | undefined {
  let pidfd: number;
  try {
    pidfd = pidfdOpen(pid);
  } catch {
    return undefined;
  }
  try {
    const { usage: _unused, ...target } = describeTarget(pidfd);
    if (target.startTime === startTime) return target;
    closeFd(target.pidfd);
    return undefined;
  } catch {
    return undefined; // describeTarget closed the pidfd
  }
}

/** The target's RLIMIT_MEMLOCK now (to restore when its lease ends). */
export function readLimit(target: Target, haveSysResource: boolean): Rlimit {
  try {
    return prlimitMemlock(target.pid, null);
  } catch (e) {
    if (e instanceof SysError && e.code !== 'ESRCH') {
      throw prlimitRefused(e, `prlimit(${target.pid}, RLIMIT_MEMLOCK) (reading the current limit)`, target, haveSysResource);
    }
    throw toTargetError(e);
  }
}

/**
 * Sets soft = hard = limitBytes on the target; returns the limits it had before.
 * prlimit takes a pid, so the pidfd is checked on both sides of it: before, so a target that
 * already died (its pid perhaps recycled) is never touched; after, for the microseconds in
 * between — if the target died then, the pid may name a newcomer, so the limits prlimit just
 * replaced are put straight back on whatever process holds the pid now.
 */
export function applyLimit(target: Target, limitBytes: number, haveSysResource: boolean): Rlimit {
  return setLimit(target, { soft: limitBytes, hard: limitBytes }, haveSysResource);
}

/**
 * Puts back the limits the target had before a grant that then failed (Open's undo; a Release
 * never restores: see service.ts); false if the kernel refused.
 */
export function restoreLimit(target: Target, previous: Rlimit): boolean {
  try {
    setLimit(target, previous, true);
    return true;
  } catch (e) {
    if (e instanceof SysError || e instanceof BrokerError) return false;
    throw e;
  }
}

/** The syscalls setLimit makes; a parameter so tests can play the race it guards against. */
export interface LimitOps {
  pidfdIsAlive(pidfd: number): boolean;
  prlimitMemlock(pid: number, set: Rlimit | null): Rlimit;
}

const realOps: LimitOps = { pidfdIsAlive, prlimitMemlock };

/** Exported for tests (with fake ops); everything else goes through applyLimit / restoreLimit. */
export function setLimit(target: Target, limit: Rlimit, haveSysResource: boolean, ops: LimitOps = realOps): Rlimit {
  if (!ops.pidfdIsAlive(target.pidfd)) throw gone(target.pid, 'the target has exited; its limit was not touched');
  let previous: Rlimit;
  try {
    previous = ops.prlimitMemlock(target.pid, limit);
  } catch (e) {
    throw prlimitRefused(e, `prlimit(${target.pid}, RLIMIT_MEMLOCK, ${limit.hard})`, target, haveSysResource);
  }
  if (!ops.pidfdIsAlive(target.pidfd)) {
    try {
      ops.prlimitMemlock(target.pid, previous); // undo on the process that now holds the pid
    } catch (e) {
      // It is gone as well (then nothing is left to undo), or the undo is a raise we may not make.
      const code = e instanceof SysError ? e.code : String(e);
      throw gone(target.pid, code === 'ESRCH'
        ? 'the target exited while its limit was being set; no process holds its pid any more, so nothing was left to undo'
        : `the target exited while its limit was being set, and undoing the change failed (${code}): the process that ` +
          `now holds pid ${target.pid} may be left with RLIMIT_MEMLOCK soft ${limit.soft}, hard ${limit.hard} ` +
          `instead of soft ${previous.soft}, hard ${previous.hard}`);
    }
    throw gone(target.pid, 'the target exited while its limit was being set; the change was undone');
  }
  return previous;
}

function gone(pid: number, reason: string): BrokerError<'TargetGone'> {
  return new BrokerError('TargetGone', { pid, reason });
}

function toTargetError(e: unknown): unknown {
  if (e instanceof BrokerError || e instanceof VarlinkServiceError) return e;
  if (e instanceof SysError && (e.code === 'ESRCH' || e.code === 'ENOENT')) {
    return gone(-1, `the target process is gone (${e.syscall}: ${e.code})`);
  }
  if (e instanceof Error && e.name === 'ProcessGone') return gone(-1, e.message);
  return e;
}

function prlimitRefused(e: unknown, operation: string, target: Target, haveSysResource: boolean): unknown {
  if (!(e instanceof SysError)) return e;
  if (e.code === 'ESRCH') return gone(target.pid, 'the target exited before its limit could be set');
  if (e.code === 'EPERM') {
    const reason = haveSysResource
      ? 'the kernel refused although the broker holds CAP_SYS_RESOURCE (a security module?)'
      : 'the broker lacks CAP_SYS_RESOURCE: without it, it can only lower limits of processes whose '
        + 'uids and gids all equal its own (reading one needs the same), and never raise a hard limit. Run it with '
        + 'AmbientCapabilities=CAP_SYS_RESOURCE (see systemd/iommufd-broker.service)';
    return new BrokerError('KernelRefused', { operation, errno: e.code, reason });
  }
  return new BrokerError('KernelRefused', { operation, errno: e.code, reason: e.message });
}
