// The iommufd device, or its explicit stand-in.
//
// Invariants:
// - Every FD handed out comes from a fresh open (a new iommufd context per VM) with
//   IOMMU_OPTION_RLIMIT_MODE set to 1 (per-process accounting) *before* anyone else sees it:
//   the kernel refuses the switch with EBUSY once the context holds an object.
// - The simulated device is chosen only by the explicit `--device simulated` flag, never by a
//   fallback, and is refused under systemd (a production start). Every lease says so.
// - Failures become DeviceUnavailable / KernelRefused with the cause spelled out; no errno
//   number is the contract.
import { BrokerError } from '../../protocol/errors.ts';
import { closeFd, memfd, openFile, SysError } from '../../native/sys.ts';
import { IOMMU_OPTION_RLIMIT_MODE, optionGet, optionSet } from '../../native/iommufd.ts';
import type { Status } from '../../protocol/methods.ts';

export const SIMULATED = 'simulated';
const O_RDWR = 2;
/** Not an option any kernel has: probing it tells whether a per-FD pin limit exists. */
const PER_FD_LIMIT_PROBE_OPTION = 2;

export type DeviceInfo = Status['device'];

export interface Device {
  readonly info: DeviceInfo;
  /** Opens a fresh FD ready to hand out. The caller owns the returned fd. */
  openForLease(): number;
}

/** Throws when the combination can never be right (simulated under systemd). */
export function assertDeviceAllowed(spec: string, env: NodeJS.ProcessEnv): void {
  if (spec === SIMULATED && (env['LISTEN_FDS'] !== undefined || env['NOTIFY_SOCKET'] !== undefined)) {
    throw new Error('--device simulated is for tests and demos only and is refused under systemd '
      + '(LISTEN_FDS/NOTIFY_SOCKET set): the simulated device enforces no pinned-memory accounting');
  }
}

export function createDevice(spec: string): Device {
  return spec === SIMULATED ? simulatedDevice() : iommufdDevice(spec);
}

function simulatedDevice(): Device {
  return {
    info: {
      kind: 'simulated', path: SIMULATED, rlimitModeSupported: null, perFdLimitOption: null,
      note: 'SIMULATED: leases get an anonymous memfd, not an iommufd; RLIMIT_MEMLOCK is still set '
        + 'on the target, but no kernel accounting applies. For tests only.',
    },
    openForLease: () => memfd('iommufd-broker-simulated'),
  };
}

function iommufdDevice(path: string): Device {
  const info = probe(path);
  return {
    info,
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

/** What the kernel behind `path` supports, learnt on a throw-away FD. */
function probe(path: string): DeviceInfo {
  let fd: number;
  try {
    fd = openFile(path, O_RDWR);
  } catch (e) {
    const err = unavailable(path, e);
    return { kind: 'iommufd', path, rlimitModeSupported: null, perFdLimitOption: null, note: err.message };
  }
  // owner: probe(), closed below
  try {
    const rlimitModeSupported = tryOption(() => optionGet(fd, IOMMU_OPTION_RLIMIT_MODE));
    const perFdLimitOption = tryOption(() => optionGet(fd, PER_FD_LIMIT_PROBE_OPTION));
    const note = rlimitModeSupported
      ? 'iommufd with per-process accounting (IOMMU_OPTION_RLIMIT_MODE)'
        + (perFdLimitOption ? '' : '; the kernel has no per-FD pinned-page limit, so the limit is the target\'s RLIMIT_MEMLOCK')
      : 'this kernel\'s iommufd lacks IOMMU_OPTION_RLIMIT_MODE: pins would be charged per user, not per VM';
    return { kind: 'iommufd', path, rlimitModeSupported, perFdLimitOption, note };
  } finally {
    closeFd(fd);
  }
}

/** true if the option GET works, false on EOPNOTSUPP/ENOTTY; anything else propagates. */
function tryOption(get: () => bigint): boolean {
  try {
    get();
    return true;
  } catch (e) {
    if (e instanceof SysError && (e.code === 'EOPNOTSUPP' || e.code === 'ENOTTY' || e.code === 'EINVAL')) return false;
    throw e;
  }
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
