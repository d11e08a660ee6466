// Test support: a fake VFIO world in a temp dir, laid out as the host's (ROOT/sys/bus/pci/devices,
// ROOT/dev/vfio/devices), for the broker's --vfio-root (simulated only). The cdev nodes are real
// character devices made with mknod (root may, here): by default the null device, 1:3, so an
// open gives a real fd. Each device entry is a symlink into ROOT/sys/devices, as on the host.
//
// Invariants:
// - Everything lives under one fresh temp dir (`root`), removed by remove(); nothing outside it
//   is touched (the host's /sys and /dev never are).
// - A device is laid out as the host lays out a vfio-pci device unless its FakeDevice spec says
//   otherwise (no driver, another driver, no or several cdevs, a node that is not a char device),
//   so each refusal of daemon/shell/vfio/resolve.ts can be produced on purpose.
// - mknod needs root with CAP_MKNOD: canMknod() says whether a test can run here.
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export const NULL_MAJOR_MINOR = '1:3';

export interface FakeDevice {
  /** Driver the device is bound to (default vfio-pci); null: none. */
  driver?: string | null;
  /** Names in vfio-dev/ (default ['vfio0']); [] for an empty vfio-dev/; null: no vfio-dev/. */
  cdevs?: string[] | null;
  /** The `dev` file each vfio-dev/vfioN holds (default 1:3). */
  dev?: string;
  /** What to put at ROOT/dev/vfio/devices/<cdev> (default a char device with `node` numbers). */
  node?: 'char' | 'none' | 'file' | 'dir' | 'fifo' | 'symlink-to-null';
  /** major:minor of the char node (default 1:3). */
  nodeNumbers?: string;
}

export class FakeVfioTree {
  readonly root = mkdtempSync(join(tmpdir(), 'vfio-tree-'));
  readonly pciDevices = join(this.root, 'sys/bus/pci/devices');
  readonly vfioDevices = join(this.root, 'dev/vfio/devices');

  constructor() {
    mkdirSync(this.pciDevices, { recursive: true });
    mkdirSync(this.vfioDevices, { recursive: true });
    mkdirSync(join(this.root, 'sys/bus/pci/drivers'), { recursive: true });
  }

  /** Adds a PCI device; returns the path of its sysfs directory (the symlink's target). */
  add(address: string, spec: FakeDevice = {}): string {
    const real = join(this.root, 'sys/devices/pci0000:00', address);
    mkdirSync(real, { recursive: true });
    symlinkSync(`../../../devices/pci0000:00/${address}`, join(this.pciDevices, address));
    const driver = spec.driver === undefined ? 'vfio-pci' : spec.driver;
    if (driver !== null) {
      mkdirSync(join(this.root, 'sys/bus/pci/drivers', driver), { recursive: true });
      symlinkSync(`../../../bus/pci/drivers/${driver}`, join(real, 'driver'));
    }
    const cdevs = spec.cdevs === undefined ? ['vfio0'] : spec.cdevs;
    if (cdevs === null) return real;
    mkdirSync(join(real, 'vfio-dev'));
    for (const cdev of cdevs) {
      mkdirSync(join(real, 'vfio-dev', cdev));
      writeFileSync(join(real, 'vfio-dev', cdev, 'dev'), `${spec.dev ?? NULL_MAJOR_MINOR}\n`);
      this.node(cdev, spec.node ?? 'char', spec.nodeNumbers ?? NULL_MAJOR_MINOR);
    }
    return real;
  }

  /** Puts something at ROOT/dev/vfio/devices/<name>. */
  node(name: string, kind: NonNullable<FakeDevice['node']>, numbers = NULL_MAJOR_MINOR): void {
    const path = join(this.vfioDevices, name);
    rmSync(path, { force: true, recursive: true });
    const [major, minor] = numbers.split(':');
    switch (kind) {
      case 'none': return;
      case 'char': execFileSync('mknod', ['-m', '0600', path, 'c', major ?? '1', minor ?? '3']); return;
      case 'file': writeFileSync(path, 'not a device\n'); return;
      case 'dir': mkdirSync(path); return;
      case 'fifo': execFileSync('mkfifo', [path]); return;
      case 'symlink-to-null': symlinkSync('/dev/null', path); return;
    }
  }

  remove(): void {
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Whether this process may make device nodes (root with CAP_MKNOD, outside a restricting namespace). */
export function canMknod(): boolean {
  const probe = mkdtempSync(join(tmpdir(), 'mknod-probe-'));
  try {
    execFileSync('mknod', [join(probe, 'n'), 'c', '1', '3'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    rmSync(probe, { recursive: true, force: true });
  }
}
