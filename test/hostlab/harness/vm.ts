// The inner QEMU 10 of the host lab: started as the unprivileged user `labvm` (group iommufd,
// no capabilities: setpriv drops them all), either through the packaged `iommufdctl exec`
// (the broker's FD substituted for {iommufd}) or bare (for `iommufdctl pass`), with a QMP
// socket, and optionally QEMU's `edu` PCI device through vfio-pci + iommufd.
//
// Invariants:
// - The pid of the setpriv child is QEMU's pid: setpriv, iommufdctl and QEMU exec one another.
// - stdout/stderr are collected for the checks (QEMU's own error messages are the evidence).
// - Every Vm is killed (SIGKILL) by stop(); the suite calls it on every path (t.after).
// - The edu device (vendor 1234, device 11e8, bound to vfio-pci at boot by the lab root's
//   hostlab-vfio-bind.service) is found in sysfs, never assumed at a fixed address.
// - A QEMU without default devices is paused (-S) unless it is given the DIMM-eject guest
//   (test/hostlab/dimm-guest/, built by run into DIMM_GUEST): the only guest code that ever
//   runs in it acknowledges the unplug of a DIMM after device_del asked for it.
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from '../../../client/index.ts';
import { sh, waitFor } from './system.ts';

export const LAB_USER = 'labvm';
const RUN_DIR = '/run/hostlab';
/** The 64 KiB -bios image that acks DIMM ejects (test/hostlab/dimm-guest/dimm-eject.S). */
export const DIMM_GUEST = '/usr/local/lib/hostlab/dimm-eject.bin';

export interface VmOptions {
  name: string;
  /** -m argument, e.g. "64M" or "64M,slots=2,maxmem=512M" */
  memory: string;
  /** What to ask the broker for (iommufdctl exec --memory); undefined: start QEMU bare. */
  leaseMemory?: string;
  /** Attach the edu device with vfio-pci through the iommufd (needs leaseMemory). */
  vfio?: boolean;
  /** QEMU's default devices (VGA, NIC, ...) and a running guest (firmware runs); else -nodefaults -S. */
  defaults?: boolean;
  /** -nodefaults, running DIMM_GUEST as its firmware instead of being paused (for unplug). */
  dimmGuest?: boolean;
  extra?: string[];
}

export interface Vm {
  name: string;
  pid: number;
  qmp: string;
  child: ChildProcess;
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stop(): Promise<void>;
}

export function eduDevice(): string {
  for (const d of readdirSync('/sys/bus/pci/devices')) {
    const p = join('/sys/bus/pci/devices', d);
    if (readFileSync(join(p, 'vendor'), 'utf8').trim() === '0x1234' && readFileSync(join(p, 'device'), 'utf8').trim() === '0x11e8') return p;
  }
  throw new Error('no edu PCI device (1234:11e8): is the outer VM started with -device edu?');
}

function labIds(): { uid: number; gid: number } {
  const r = sh('id', ['-u', LAB_USER]);
  const g = sh('id', ['-g', LAB_USER]);
  if (r.status !== 0 || g.status !== 0) throw new Error(`no user ${LAB_USER} in the lab root`);
  return { uid: Number(r.stdout.trim()), gid: Number(g.stdout.trim()) };
}

export function qemuArgs(o: VmOptions, qmp: string): string[] {
  const args = ['-M', 'q35', '-accel', 'tcg,tb-size=32', '-display', 'none', '-m', o.memory, '-qmp', `unix:${qmp},server=on,wait=off`];
  if (o.defaults !== true) args.push('-nodefaults', ...(o.dimmGuest === true ? ['-bios', DIMM_GUEST] : ['-S']));
  if (o.leaseMemory !== undefined) args.push('-object', 'iommufd,id=i0,fd={iommufd}');
  if (o.vfio === true) args.push('-device', `vfio-pci,iommufd=i0,sysfsdev=${eduDevice()}`);
  return [...args, ...(o.extra ?? [])];
}

/** Starts QEMU as labvm, through `iommufdctl exec` when a lease is asked for, and waits for QMP. */
export async function startVm(o: VmOptions): Promise<Vm> {
  const { uid, gid } = labIds();
  mkdirSync(RUN_DIR, { recursive: true, mode: 0o755 });
  const dir = join(RUN_DIR, o.name);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  chownSync(dir, uid, gid);
  const qmp = join(dir, 'qmp.sock');
  rmSync(qmp, { force: true }); // an earlier VM's socket: qmpReady must see this QEMU's
  const qemu = ['qemu-system-x86_64', ...qemuArgs(o, qmp)];
  const argv = o.leaseMemory === undefined ? qemu
    : ['/usr/bin/iommufdctl', '--timeout', '300', 'exec', '--name', o.name, '--memory', o.leaseMemory, '--', ...qemu];
  const child = spawn('setpriv', [`--reuid=${LAB_USER}`, `--regid=${LAB_USER}`, '--init-groups', '--inh-caps=-all',
    '--bounding-set=-all', '--', ...argv], { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => { out += s; });
  child.stderr?.setEncoding('utf8').on('data', (s: string) => { out += s; });
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  let done = false;
  void exited.then(() => { done = true; });
  const pid = child.pid;
  if (pid === undefined) throw new Error('setpriv did not start');
  const vm: Vm = {
    name: o.name, pid, qmp, child, exited, output: () => out,
    stop: async () => {
      if (!done) child.kill('SIGKILL');
      await exited;
    },
  };
  return vm;
}

/** Waits until QEMU answers on QMP (or exits: then resolves false with its output in vm.output()). */
export async function qmpReady(vm: Vm, seconds = 240): Promise<boolean> {
  let exited = false;
  void vm.exited.then(() => { exited = true; });
  return waitFor(`QEMU ${vm.name} to answer on QMP`, seconds, async () => {
    if (exited) return 'exited' as const;
    if (!existsSync(vm.qmp)) return undefined;
    try {
      const c = await QmpClient.connect(vm.qmp, { timeoutMs: 60_000 });
      c.close();
      return 'ready' as const;
    } catch {
      return undefined;
    }
  }).then((s) => s === 'ready');
}

/** Runs QMP commands on one connection (QEMU's QMP chardev takes one client at a time). */
export async function qmp<T>(vm: Vm, fn: (c: QmpClient) => Promise<T>): Promise<T> {
  const c = await QmpClient.connect(vm.qmp, { timeoutMs: 120_000 });
  try {
    return await fn(c);
  } finally {
    c.close();
  }
}
