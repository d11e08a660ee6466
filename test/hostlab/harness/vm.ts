// The inner QEMU 10 of the host lab: started as the unprivileged user `labvm` (group iommufd,
// no capabilities: setpriv drops them all; or, for the per-fd checks, CAP_IPC_LOCK alone,
// ambient, so QEMU maps with it), either through the packaged `iommufdctl exec`
// (the broker's FD substituted for {iommufd}) or bare (for `iommufdctl pass`), with a QMP
// socket, and optionally one of QEMU's `edu` PCI devices through vfio-pci + iommufd, its cdev
// fd handed out by the broker (`exec --device ADDR`, `{vfio:ADDR}`): labvm cannot open it.
//
// Invariants:
// - The pid of the setpriv child is QEMU's pid: setpriv, iommufdctl and QEMU exec one another.
// - stdout/stderr are collected for the checks (QEMU's own error messages are the evidence).
// - Every Vm is killed (SIGKILL) by stop(); the suite calls it on every path (t.after).
// - The outer VM has two edu devices (vendor 1234, device 11e8, bound to vfio-pci at boot by
//   the lab root's hostlab-vfio-bind.service) at the PCI addresses test/hostlab/run gives them:
//   EDU_ALLOWED has the lab policy's [[devices]] entry, EDU_OTHER has none. The suite checks
//   that both are edu devices bound to vfio-pci before relying on them.
// - A VM asking for a device waits first until no lease holds it (the lease of a QEMU killed by
//   the previous check ends when the broker sees it exit), unless told the device is busy.
// - A QEMU without default devices is paused (-S) unless it is given the DIMM-eject guest
//   (test/hostlab/dimm-guest/, built by run into DIMM_GUEST): the only guest code that ever
//   runs in it acknowledges the unplug of a DIMM after device_del asked for it.
import { spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { QmpClient } from '../../../client/index.ts';
import { broker, sh, waitFor } from './system.ts';

export const LAB_USER = 'labvm';
const RUN_DIR = '/run/hostlab';
/** The edu devices' addresses: the same as test/hostlab/run's -device edu,addr= and policy entry. */
export const EDU_ALLOWED = '0000:00:08.0';
export const EDU_OTHER = '0000:00:09.0';
/** The 64 KiB -bios image that acks DIMM ejects (test/hostlab/dimm-guest/dimm-eject.S). */
export const DIMM_GUEST = '/usr/local/lib/hostlab/dimm-eject.bin';

export interface VmOptions {
  name: string;
  /** -m argument, e.g. "64M" or "64M,slots=2,maxmem=512M" */
  memory: string;
  /** What to ask the broker for (iommufdctl exec --memory); undefined: start QEMU bare. */
  leaseMemory?: string;
  /** Attach an edu device (true: EDU_ALLOWED) with vfio-pci through the iommufd, its fd from the broker (needs leaseMemory). */
  vfio?: boolean | string;
  /** The device is expected to be held by another lease: do not wait for it to be free. */
  deviceBusy?: boolean;
  /** QEMU's default devices (VGA, NIC, ...) and a running guest (firmware runs); else -nodefaults -S. */
  defaults?: boolean;
  /** -nodefaults, running DIMM_GUEST as its firmware instead of being paused (for unplug). */
  dimmGuest?: boolean;
  extra?: string[];
  /** QEMU (and iommufdctl before it) holds CAP_IPC_LOCK, ambient: the memlock rlimit never charges its pins. */
  ipcLock?: boolean;
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

/** The edu devices bound to vfio-pci, by address (sysfs). */
export function eduDevices(): string[] {
  return readdirSync('/sys/bus/pci/devices').filter((d) => {
    const p = join('/sys/bus/pci/devices', d);
    return readFileSync(join(p, 'vendor'), 'utf8').trim() === '0x1234' && readFileSync(join(p, 'device'), 'utf8').trim() === '0x11e8'
      && existsSync(join(p, 'driver')) && readlinkSync(join(p, 'driver')).endsWith('/vfio-pci');
  }).sort();
}

export function deviceOf(o: VmOptions): string | undefined {
  return o.vfio === true ? EDU_ALLOWED : o.vfio === false ? undefined : o.vfio;
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
  const device = deviceOf(o);
  if (device !== undefined) args.push('-device', `vfio-pci,iommufd=i0,fd={vfio:${device}}`);
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
  const device = deviceOf(o);
  if (device !== undefined && o.deviceBusy !== true) await deviceFree(device);
  const argv = o.leaseMemory === undefined ? qemu
    : ['/usr/bin/iommufdctl', '--timeout', '300', 'exec', '--name', o.name, '--memory', o.leaseMemory,
        ...(device === undefined ? [] : ['--device', device]), '--', ...qemu];
  const caps = o.ipcLock === true
    ? ['--inh-caps=-all,+ipc_lock', '--ambient-caps=+ipc_lock', '--bounding-set=-all,+ipc_lock']
    : ['--inh-caps=-all', '--bounding-set=-all'];
  const child = spawn('setpriv', [`--reuid=${LAB_USER}`, `--regid=${LAB_USER}`, '--init-groups', ...caps,
    '--', ...argv], { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir });
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

/** Waits until no lease holds the device (a killed QEMU's lease ends when the broker sees the exit). */
export async function deviceFree(address: string): Promise<void> {
  await waitFor(`no lease to hold ${address}`, 120, async () =>
    !(await broker((c) => c.list())).leases.some((l) => (l.devices ?? []).some((d) => d.address === address)));
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
