// VFIO device cdevs by PCI address: from a validated address to an open /dev/vfio/devices/vfioN,
// through sysfs only. The Open handler calls openDevices after the core allowed the devices.
//
// Invariants:
// - No path from a client is ever opened: every path is built here from an address that
//   matches PCI_ADDRESS_PATTERN (checked again here) and a cdev name that matches
//   VFIO_CDEV_PATTERN, under the two roots the daemon was started with.
// - A device is handed out only if sysfs names exactly one vfioN entry, a real directory (not
//   a symlink), in the device's own vfio-dev/ directory (also not a symlink); the node under
//   the /dev root is a character device before it is opened (never a FIFO or a file, which
//   could block or be anything), is opened with O_RDWR|O_NOFOLLOW|O_CLOEXEC, and after the
//   open fstat must show a character device whose rdev is the major:minor sysfs gave.
//   Anything else is NoSuchDevice, saying what was found (`found`: absent, not-vfio-pci,
//   no-vfio-cdev, not-a-vfio-cdev); an open the kernel refuses is DeviceUnavailable.
// - The roots are the host's (/sys/bus/pci/devices, /dev/vfio/devices) except in the simulated
//   world (daemon flag --vfio-root, only with --device simulated, refused under systemd), where
//   a test puts a fake tree; main.ts logs that loudly.
// - fd ownership: each fd opened here is this module's until openDevices returns it to the
//   caller; on every refusal every fd this call opened is closed before the error is thrown.
import { lstatSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { constants } from 'node:fs';
import { basename, join } from 'node:path';
import { BrokerError } from '../../../protocol/errors.ts';
import { PCI_ADDRESS_PATTERN, VFIO_CDEV_PATTERN } from '../../../protocol/methods.ts';
import { closeFd, closeFdQuietly, fstatFd, openFile, SysError } from '../../../native/sys.ts';

export interface VfioRoots {
  /** Holds one entry per PCI device, named by its address (the host: /sys/bus/pci/devices). */
  readonly pciDevices: string;
  /** Holds the VFIO device cdevs (the host: /dev/vfio/devices). */
  readonly vfioDevices: string;
}

export const HOST_VFIO_ROOTS: VfioRoots = Object.freeze({ pciDevices: '/sys/bus/pci/devices', vfioDevices: '/dev/vfio/devices' });

/** The simulated world's roots: the host's layout under `root` (a test's fake tree). */
export function vfioRootsUnder(root: string): VfioRoots {
  return Object.freeze({ pciDevices: join(root, 'sys/bus/pci/devices'), vfioDevices: join(root, 'dev/vfio/devices') });
}

export interface OpenedDevice {
  readonly address: string;
  readonly cdev: string;
  /** O_RDWR|O_CLOEXEC fd of the cdev; the caller owns it. */
  readonly fd: number;
}

const S_IFMT = 0o170000;
const S_IFCHR = 0o020000;
const O_RDWR = 2;

/** Opens every address's cdev, in order; on any refusal closes those already opened and throws. */
export function openDevices(roots: VfioRoots, addresses: readonly string[]): OpenedDevice[] {
  const opened: OpenedDevice[] = []; // owner: this function until returned
  try {
    for (const address of addresses) opened.push(openDevice(roots, address));
    return opened;
  } catch (err) {
    for (const d of opened) closeFdQuietly(d.fd);
    throw err;
  }
}

/** One address's cdev (see the module comment); the caller owns the fd. */
export function openDevice(roots: VfioRoots, address: string): OpenedDevice {
  if (!PCI_ADDRESS_PATTERN.test(address)) throw new Error(`not a canonical PCI address: ${JSON.stringify(address)} (a bug: the decoder checks it)`);
  const cdev = findCdev(roots, address);
  const node = join(roots.vfioDevices, cdev.name);
  const st = lstatOrUndefined(node);
  if (st === undefined) {
    throw noSuchDevice(address, 'no-vfio-cdev', `sysfs names ${cdev.name} (${cdev.major}:${cdev.minor}), but ${node} does not exist`);
  }
  if (!st.isCharacterDevice()) {
    throw noSuchDevice(address, 'not-a-vfio-cdev', `${node} is ${kindOf(st)}, not a character device`);
  }
  let fd: number;
  try {
    fd = openFile(node, O_RDWR | constants.O_NOFOLLOW);
  } catch (e) {
    throw openRefused(address, node, e);
  }
  // owner: this function until returned; closed below on every refusal
  try {
    const opened = fstatFd(fd);
    const { major, minor } = splitRdev(opened.rdev);
    if ((opened.mode & S_IFMT) !== S_IFCHR || major !== cdev.major || minor !== cdev.minor) {
      throw noSuchDevice(address, 'not-a-vfio-cdev', `${node} opened as device ${major}:${minor} (mode ${(opened.mode & S_IFMT).toString(8)}), `
        + `but sysfs says ${cdev.name} is character device ${cdev.major}:${cdev.minor}`);
    }
  } catch (err) {
    closeFd(fd);
    throw err;
  }
  return { address, cdev: cdev.name, fd };
}

interface SysfsCdev { name: string; major: number; minor: number }

/** The one vfioN entry of the device's vfio-dev/ directory and its major:minor, or NoSuchDevice. */
function findCdev(roots: VfioRoots, address: string): SysfsCdev {
  const device = join(roots.pciDevices, address);
  // The host's entry is a symlink into /sys/devices: followed here, and only here.
  const st = statOrUndefined(device);
  if (st === undefined || !st.isDirectory()) throw noSuchDevice(address, 'absent', `no PCI device ${address} (${device} does not exist)`);
  const vfioDev = join(device, 'vfio-dev');
  const dir = lstatOrUndefined(vfioDev);
  if (dir === undefined) {
    const driver = driverOf(device);
    if (driver === undefined || !driver.includes('vfio')) {
      throw noSuchDevice(address, 'not-vfio-pci', `${address} is bound to ${driver === undefined ? 'no driver' : `driver ${driver}`}, not vfio-pci: `
        + `echo vfio-pci > ${device}/driver_override, then unbind it and write ${address} to /sys/bus/pci/drivers_probe`);
    }
    throw noSuchDevice(address, 'no-vfio-cdev', `${address} is bound to ${driver}, but has no vfio-dev/ directory: `
      + 'the kernel was built without CONFIG_VFIO_DEVICE_CDEV');
  }
  if (!dir.isDirectory()) throw noSuchDevice(address, 'not-a-vfio-cdev', `${vfioDev} is ${kindOf(dir)}, not a directory`);
  const names = readdirSync(vfioDev).filter((n) => VFIO_CDEV_PATTERN.test(n)).sort();
  if (names.length !== 1) {
    throw noSuchDevice(address, names.length === 0 ? 'no-vfio-cdev' : 'not-a-vfio-cdev',
      `${vfioDev} holds ${names.length === 0 ? 'no vfioN entry' : `${names.length} vfioN entries (${names.join(', ')}), not exactly one`}`);
  }
  const name = names[0] as string;
  const entry = join(vfioDev, name);
  const entrySt = lstatOrUndefined(entry);
  if (entrySt === undefined || !entrySt.isDirectory()) {
    throw noSuchDevice(address, 'not-a-vfio-cdev', `${entry} is ${entrySt === undefined ? 'gone' : kindOf(entrySt)}, not a sysfs device directory`);
  }
  let text: string;
  try {
    text = readFileSync(join(entry, 'dev'), 'utf8');
  } catch {
    throw noSuchDevice(address, 'not-a-vfio-cdev', `${entry}/dev cannot be read`);
  }
  const match = /^(\d{1,10}):(\d{1,10})\n?$/.exec(text);
  if (match?.[1] === undefined || match[2] === undefined) {
    throw noSuchDevice(address, 'not-a-vfio-cdev', `${entry}/dev is not "major:minor"`);
  }
  return { name, major: Number(match[1]), minor: Number(match[2]) };
}

/** The driver's name (the basename of the driver symlink), or undefined when none is bound. */
function driverOf(device: string): string | undefined {
  try {
    return basename(readlinkSync(join(device, 'driver')));
  } catch {
    return undefined;
  }
}

/** glibc's gnu_dev_major/minor of a dev_t (Linux's encoding). */
export function splitRdev(rdev: number): { major: number; minor: number } {
  const dev = BigInt(rdev);
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  return { major: Number(major), minor: Number(minor) };
}

function statOrUndefined(path: string): ReturnType<typeof statSync> {
  return statSync(path, { throwIfNoEntry: false });
}

function lstatOrUndefined(path: string): ReturnType<typeof lstatSync> {
  return lstatSync(path, { throwIfNoEntry: false });
}

function kindOf(st: NonNullable<ReturnType<typeof lstatSync>>): string {
  if (st.isSymbolicLink()) return 'a symbolic link';
  if (st.isDirectory()) return 'a directory';
  if (st.isFile()) return 'a regular file';
  if (st.isFIFO()) return 'a FIFO';
  if (st.isSocket()) return 'a socket';
  if (st.isBlockDevice()) return 'a block device';
  return 'a character device';
}

function noSuchDevice(address: string, found: string, reason: string): BrokerError<'NoSuchDevice'> {
  return new BrokerError('NoSuchDevice', { address, found, reason });
}

function openRefused(address: string, node: string, e: unknown): BrokerError {
  if (!(e instanceof SysError)) throw e;
  const reasons: Record<string, string> = {
    ENOENT: `${node} vanished before it could be opened (the device was unbound meanwhile)`,
    ELOOP: `${node} is a symbolic link, which the broker never follows`,
    EACCES: `${node} is not accessible to the broker's user`,
    EPERM: `${node} is blocked for the broker: check DeviceAllow= (char-vfio rw) in the service unit`,
    EBUSY: `${address} is in use by someone else (an open vfio group or another driver)`,
  };
  if (e.code === 'ENOENT' || e.code === 'ELOOP') return noSuchDevice(address, 'not-a-vfio-cdev', reasons[e.code] as string);
  return new BrokerError('DeviceUnavailable', { device: node, reason: reasons[e.code] ?? `opening ${node} failed: ${e.message}`, errno: e.code });
}
