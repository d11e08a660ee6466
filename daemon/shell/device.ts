// The iommufd device, or its explicit stand-in, and the backend that limits what a lease pins.
//
// Invariants:
// - Every FD handed out comes from a fresh open (a new iommufd context per VM) with
//   IOMMU_OPTION_RLIMIT_MODE set to 1 (per-process accounting) *before* anyone else sees it:
//   the kernel refuses the switch with EBUSY once the context holds an object. This holds on
//   both backends: the target's RLIMIT_MEMLOCK is set on both (docs/BACKENDS.md says why).
// - The backend is chosen once, at start, by probing a fresh throw-away FD, never assumed:
//   'per-fd' only when IOMMU_OPTION GET of PINNED_LIMIT (kernel/iommufd-pinned-limit/) works
//   AND answers what a fresh FD of that series answers (no limit, no usage), since another
//   out-of-tree option could sit under the same id; otherwise 'memlock', with the kernel's
//   answer in the reason. 'simulated' only with the simulated device.
// - `fdLimits` is present exactly when leases keep a duplicate of their FD (the per-FD
//   backend, and `simulated-per-fd`, which models that lifecycle for tests but enforces
//   nothing; plain `simulated` keeps no FD, as the memlock backend).
//   Its functions own no fd: the caller's fd is only read or ioctl'd.
// - The simulated device is chosen only by the explicit `--device simulated` (or
//   `simulated-per-fd`) flag, never by a fallback, and is refused under systemd (a production
//   start). Every lease says so.
// - Failures become DeviceUnavailable / KernelRefused with the cause spelled out; no errno
//   number is the contract.
import { BrokerError } from '../../protocol/errors.ts';
import { closeFd, fstatFd, memfd, openFile, SysError } from '../../native/sys.ts';
import {
  IOMMU_OPTION_PINNED_LIMIT, IOMMU_OPTION_PINNED_USAGE, IOMMU_OPTION_RLIMIT_MODE, optionGet, optionSet, pinnedUsage,
  PINNED_UNLIMITED, setPinnedLimit,
} from '../../native/iommufd.ts';
import type { Status } from '../../protocol/methods.ts';

export const SIMULATED = 'simulated';
/** The simulated device with the per-FD backend's FD lifecycle (kept duplicates, fd store). */
export const SIMULATED_PER_FD = 'simulated-per-fd';
const O_RDWR = 2;

export type DeviceInfo = Status['device'];
/** Which mechanism limits a lease's pins, and why it was chosen (Status.backend without the lease list). */
export interface Backend {
  readonly kind: 'per-fd' | 'memlock' | 'simulated';
  readonly reason: string;
}

/** The per-FD limit on an FD the caller owns (a lease's kept duplicate). */
export interface FdLimits {
  /** Sets the FD's pinned-memory limit; throws KernelRefused (never a raw errno) when the kernel says no. */
  set(fd: number, limitBytes: number): void;
  /** The bytes the FD holds pinned now (undefined if it cannot be read). */
  usage(fd: number): number | undefined;
}

export interface Device {
  readonly info: DeviceInfo;
  readonly backend: Backend;
  /** Present when each lease keeps a duplicate of its FD to resize it later (see the module comment). */
  readonly fdLimits: FdLimits | undefined;
  /** Opens a fresh FD ready to hand out. The caller owns the returned fd. */
  openForLease(): number;
}

/** Throws when the combination can never be right (simulated under systemd). */
export function assertDeviceAllowed(spec: string, env: NodeJS.ProcessEnv): void {
  if ((spec === SIMULATED || spec === SIMULATED_PER_FD) && (env['LISTEN_FDS'] !== undefined || env['NOTIFY_SOCKET'] !== undefined)) {
    throw new Error('--device simulated is for tests and demos only and is refused under systemd '
      + '(LISTEN_FDS/NOTIFY_SOCKET set): the simulated device enforces no pinned-memory accounting');
  }
}

export function createDevice(spec: string): Device {
  if (spec === SIMULATED || spec === SIMULATED_PER_FD) return simulatedDevice(spec === SIMULATED_PER_FD);
  return iommufdDevice(spec);
}

function simulatedDevice(perFdLifecycle: boolean): Device {
  return {
    info: {
      kind: 'simulated', path: SIMULATED, rlimitModeSupported: null, perFdLimitOption: null,
      note: 'SIMULATED: leases get an anonymous memfd, not an iommufd; RLIMIT_MEMLOCK is still set '
        + 'on the target, but no kernel accounting applies. For tests only.',
    },
    backend: {
      kind: 'simulated',
      reason: perFdLifecycle
        ? 'the simulated device (--device simulated-per-fd): it keeps a duplicate of each lease\'s FD as the per-FD '
          + 'backend does, but a memfd has no pinned-memory limit, so nothing is enforced'
        : 'the simulated device (--device simulated): a memfd, no pinned-memory accounting at all',
    },
    fdLimits: perFdLifecycle ? simulatedFdLimits : undefined,
    openForLease: () => memfd('iommufd-broker-simulated'),
  };
}

function iommufdDevice(path: string): Device {
  const { info, backend } = probe(path);
  return {
    info,
    backend,
    fdLimits: backend.kind === 'per-fd' ? iommufdFdLimits : undefined,
    openForLease(): number {
      let fd: number;
      try {
        fd = openFile(path, O_RDWR);
      } catch (e) {
        throw unavailable(path, e);
      }
      // owner: this function until returned; closed here on every failure path
      try {
        optionSet(fd, IOMMU_OPTION_RLIMIT_MODE, 1n);
      } catch (e) {
        closeFd(fd);
        throw setModeRefused(e);
      }
      return fd;
    },
  };
}

const simulatedFdLimits: FdLimits = {
  // fstat proves the kept duplicate is still open (a closed one throws EBADF), as the ioctl would.
  set: (fd) => { fstatFd(fd); },
  usage: () => 0,
};

const iommufdFdLimits: FdLimits = {
  set(fd, limitBytes) {
    try {
      setPinnedLimit(fd, limitBytes);
    } catch (e) {
      throw pinnedLimitRefused(e, limitBytes);
    }
  },
  usage(fd) {
    try {
      return Number(pinnedUsage(fd));
    } catch (e) {
      if (e instanceof SysError) return undefined;
      throw e;
    }
  },
};

/** What an option GET on the probe FD answered: its value, or the errno name it failed with. */
export type OptionAnswer = { readonly value: bigint } | { readonly errno: string };

/**
 * The backend the probe's answers call for (see the module comment). `rlimitMode`: the GET of
 * RLIMIT_MODE; `limit`, `usage`: the GETs of PINNED_LIMIT and PINNED_USAGE on the same fresh FD.
 */
export function chooseBackend(rlimitMode: OptionAnswer, limit: OptionAnswer, usage: OptionAnswer): Backend {
  const asked = `IOMMU_OPTION GET PINNED_LIMIT (option ${IOMMU_OPTION_PINNED_LIMIT}) on a fresh FD`;
  if ('errno' in limit) {
    const why = limit.errno === 'EOPNOTSUPP'
      ? 'this kernel has no per-FD pinned-memory limit (it needs the series in kernel/iommufd-pinned-limit/)'
      : 'not the per-FD limit this broker knows';
    return { kind: 'memlock', reason: `${asked} answered ${limit.errno}: ${why}; the limit is the target's RLIMIT_MEMLOCK` };
  }
  if ('errno' in usage || limit.value !== PINNED_UNLIMITED || usage.value !== 0n) {
    const got = 'errno' in usage ? usage.errno : String(usage.value);
    return {
      kind: 'memlock',
      reason: `${asked} answered ${limit.value} and PINNED_USAGE (option ${IOMMU_OPTION_PINNED_USAGE}) ${got}, not `
        + 'no-limit and 0 as the per-FD limit series does: another option under that id; the limit is the target\'s RLIMIT_MEMLOCK',
    };
  }
  if ('errno' in rlimitMode) {
    return { kind: 'memlock', reason: `IOMMU_OPTION GET RLIMIT_MODE answered ${rlimitMode.errno}: the device is not usable` };
  }
  return {
    kind: 'per-fd',
    reason: `${asked} answered no limit and PINNED_USAGE 0: each lease's FD carries its own limit, which binds `
      + 'whatever the target\'s capabilities (CAP_IPC_LOCK too); the target\'s RLIMIT_MEMLOCK is set as well',
  };
}

function ask(get: () => bigint): OptionAnswer {
  try {
    return { value: get() };
  } catch (e) {
    if (e instanceof SysError) return { errno: e.code };
    throw e;
  }
}

/** What the kernel behind `path` supports, learnt on a throw-away FD. */
function probe(path: string): { info: DeviceInfo; backend: Backend } {
  let fd: number;
  try {
    fd = openFile(path, O_RDWR);
  } catch (e) {
    const err = unavailable(path, e);
    return {
      info: { kind: 'iommufd', path, rlimitModeSupported: null, perFdLimitOption: null, note: err.message },
      backend: { kind: 'memlock', reason: `the probe could not open ${path}: ${err.message}` },
    };
  }
  // owner: probe(), closed below
  try {
    const mode = ask(() => optionGet(fd, IOMMU_OPTION_RLIMIT_MODE));
    const limit = ask(() => optionGet(fd, IOMMU_OPTION_PINNED_LIMIT));
    const usage = ask(() => optionGet(fd, IOMMU_OPTION_PINNED_USAGE));
    const rlimitModeSupported = 'value' in mode;
    const backend = chooseBackend(mode, limit, usage);
    const perFdLimitOption = backend.kind === 'per-fd';
    const note = rlimitModeSupported
      ? 'iommufd with per-process accounting (IOMMU_OPTION_RLIMIT_MODE)'
        + (perFdLimitOption ? ' and the per-FD pinned-memory limit (IOMMU_OPTION_PINNED_LIMIT)'
          : '; the kernel has no per-FD pinned-page limit, so the limit is the target\'s RLIMIT_MEMLOCK')
      : 'this kernel\'s iommufd lacks IOMMU_OPTION_RLIMIT_MODE: pins would be charged per user, not per VM';
    return { info: { kind: 'iommufd', path, rlimitModeSupported, perFdLimitOption, note }, backend };
  } finally {
    closeFd(fd);
  }
}

function pinnedLimitRefused(e: unknown, limitBytes: number): BrokerError {
  if (!(e instanceof SysError)) throw e;
  const operation = `IOMMU_OPTION SET PINNED_LIMIT=${limitBytes}`;
  const reasons: Record<string, string> = {
    EPERM: 'raising a per-FD limit needs CAP_SYS_RESOURCE in the initial user namespace, which the broker lacks',
    EBADF: 'the lease\'s kept FD is not open (a bug: the broker closes it only when the lease ends)',
    EOPNOTSUPP: 'the kernel no longer knows IOMMU_OPTION_PINNED_LIMIT, though the probe at start found it',
  };
  return new BrokerError('KernelRefused', { operation, errno: e.code, reason: reasons[e.code] ?? e.message });
}

function unavailable(path: string, e: unknown): BrokerError<'DeviceUnavailable'> {
  if (!(e instanceof SysError)) throw e;
  const reasons: Record<string, string> = {
    ENOENT: `${path} does not exist: this kernel was built without CONFIG_IOMMUFD (Debian's kernels lack it) or the module is not loaded`,
    EACCES: `${path} is not accessible to the broker's user: check the udev rule that gives the device to the broker's group`,
    EPERM: `${path} is blocked for the broker: check DeviceAllow= in the service unit`,
  };
  return new BrokerError('DeviceUnavailable', {
    device: path, reason: reasons[e.code] ?? `opening ${path} failed: ${e.message}`, errno: e.code,
  });
}

function setModeRefused(e: unknown): BrokerError {
  if (!(e instanceof SysError)) throw e;
  const operation = 'IOMMU_OPTION SET RLIMIT_MODE=1';
  switch (e.code) {
    case 'EPERM':
      return new BrokerError('KernelRefused', { operation, errno: e.code,
        reason: 'setting per-process accounting needs CAP_SYS_RESOURCE, which the broker lacks' });
    case 'EBUSY':
      return new BrokerError('KernelRefused', { operation, errno: e.code,
        reason: 'the iommufd context already holds objects; the mode can only be set on a fresh FD' });
    case 'ENOTTY':
    case 'EOPNOTSUPP':
      return new BrokerError('DeviceUnavailable', { device: 'iommufd', errno: e.code,
        reason: 'the device does not understand IOMMU_OPTION: not an iommufd device or a kernel before 6.2' });
    default:
      return new BrokerError('KernelRefused', { operation, errno: e.code, reason: e.message });
  }
}
