// A limit sized from QMP (issue #12 item 3) on the real QEMU 10 of the host lab: with the
// policy's overhead at 0 (systemctl reload; put back after), `iommufdctl pass --size-from-qmp`
// leases exactly the estimate, and a QEMU with its default devices (std VGA, e1000e) and the
// edu device through vfio-pci + iommufd runs SeaBIOS to the end and takes a 64 MiB DIMM by
// `iommufdctl hotplug` within it. The control: the same QEMU with the estimate less its VRAM
// aborts during firmware (the kernel's ENOMEM on a DMA map). The numbers (estimate, peak
// pinned, saving against RAM + 1 GiB) go to the test output as diagnostics (docs/CLI.md).
//
// The order is a QMP-configuring manager's (libvirt starts every QEMU with -S, sets it up over
// QMP, then `cont`): QEMU paused with its own devices; `pass --size-from-qmp` reads the
// estimate and opens the lease with it, then hands the iommufd and the device's cdev over
// (getfd); `object-add iommufd`, `device_add vfio-pci` on a root port; `cont`. The estimate is
// read before the VFIO device exists because it has to be: the lease (and its limit) must
// exist before the iommufd object, the object before the device, and the device maps the
// guest's memory at device_add, so sizing after the device would need a limit that already
// covers it. That is sound because what VFIO pins does not depend on the VFIO device: its
// listener maps the guest's RAM and ROM sections; the device's own BARs are ram_device
// regions, never pinned. The check measures again after device_add and requires the same
// estimate. (`exec`, where QEMU does not exist before the lease, uses `resize --size-from-qmp`
// afterwards: docs/CLI.md.)
//
// The transient peak while SeaBIOS copies option ROMs is too short for polling VmPin: QEMU
// traces every iommufd map and unmap (-trace iommufd_backend_map_dma/unmap_dma), and the
// running sum of the successful ones gives the exact peak; the check requires that sum to end
// equal to the kernel's VmPin, so the trace is known to count what the kernel charges.
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { MiB, broker, kB, memlock, setOverhead, sh } from '../harness/system.ts';
import { EDU_ALLOWED, deviceFree, qmp, qmpReady, startVm, type Vm } from '../harness/vm.ts';

const T = { timeout: 1_800_000 };
const KiB = 1024;
const RAM = 64 * MiB;
const GiB = 1024 * MiB;
const VM_ARGS = ['-S', '-device', 'pcie-root-port,id=rp1,chassis=1',
  '-trace', 'iommufd_backend_map_dma', '-trace', 'iommufd_backend_unmap_dma'];

interface Region { name: string; mappedBytes: number; blockBytes: number; countedBytes: number }
interface Estimate { regions: Region[]; mappedBytes: number; estimateBytes: number; guestRamBytes: number }
interface LeaseJson { id: string; name: string; pid: number; memoryBytes: number; limitBytes: number }

/** The packaged iommufdctl as root (a manager), stdout and stderr apart. */
function ctl(timeoutS: number, ...args: string[]): { status: number | null; stdout: string; out: string } {
  const r = sh('iommufdctl', ['--timeout', String(timeoutS), ...args]);
  return { status: r.status, stdout: r.stdout, out: r.stdout + r.stderr };
}

function measure(vm: Vm): Estimate {
  const r = ctl(300, '--json', 'measure', '--qmp', vm.qmp);
  assert.equal(r.status, 0, `iommufdctl measure: ${r.out}`);
  return JSON.parse(r.stdout) as Estimate;
}

/** Pinned bytes by QEMU's iommufd trace: now, and the highest the running sum reached. */
function tracedPins(output: string): { nowBytes: number; peakBytes: number; maps: number } {
  let now = 0;
  let peak = 0;
  let maps = 0;
  for (const m of output.matchAll(/iommufd_backend_(map|unmap)_dma .*?size=0x([0-9a-f]+).*\((-?\d+)\)\s*$/gm)) {
    const [, kind, size = '0', ret] = m;
    if (ret !== '0') continue;
    now += (kind === 'map' ? 1 : -1) * Number.parseInt(size, 16);
    if (kind === 'map') maps++;
    peak = Math.max(peak, now);
  }
  return { nowBytes: now, peakBytes: peak, maps };
}

/** QEMU 10 started as labvm, paused, default devices, a root port, nothing of the broker yet. */
async function pausedVm(t: TestContext, name: string): Promise<Vm> {
  const vm = await startVm({ name, memory: '64M,slots=2,maxmem=512M', defaults: true, extra: VM_ARGS });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  assert.equal(kB(vm.pid, 'VmPin'), 0, 'nothing pinned before the device');
  await deviceFree(EDU_ALLOWED);
  return vm;
}

/** `pass` (as root, for the VM name the lab policy gives the edu device), then the device over QMP. */
async function passAndAttach(vm: Vm, sizing: string[]): Promise<{ lease: LeaseJson; estimate?: Estimate }> {
  const pass = ctl(600, '--json', 'pass', '--qmp', vm.qmp, '--fdname', 'ifd', '--name', 'vm-pass', ...sizing, '--device', EDU_ALLOWED);
  assert.equal(pass.status, 0, `iommufdctl pass: ${pass.out}`);
  const reply = JSON.parse(pass.stdout) as { lease: LeaseJson; estimate?: Estimate };
  assert.equal(reply.lease.pid, vm.pid, 'the target is the QEMU at the other end of the QMP socket');
  assert.deepEqual(memlock(vm.pid), { soft: reply.lease.limitBytes, hard: reply.lease.limitBytes });
  await qmp(vm, async (c) => {
    await c.execute('object-add', { 'qom-type': 'iommufd', id: 'i0', fd: 'ifd' });
    await c.execute('device_add', { driver: 'vfio-pci', id: 'edu0', iommufd: 'i0', fd: `vfio-${EDU_ALLOWED}`, bus: 'rp1' });
  });
  return reply;
}

/**
 * After `cont`: waits until VmPin has held still for 20 s (SeaBIOS done: it ends waiting for a
 * boot device), as 2-qemu-exec does. Returns the highest VmPin sampled, or 'exited'.
 */
async function firmwareDone(vm: Vm): Promise<{ steadyKb: number; sampledPeakKb: number } | 'exited'> {
  let exited = false;
  void vm.exited.then(() => { exited = true; });
  let last = -1;
  let still = 0;
  let peak = 0;
  const deadline = Date.now() + 600_000;
  while (still < 20 && Date.now() < deadline && !exited) {
    await sleep(1000);
    let now: number;
    try {
      now = kB(vm.pid, 'VmPin');
    } catch {
      // No VmPin: QEMU is gone (a zombie has no memory) and its exit is on its way.
      await Promise.race([vm.exited, sleep(30_000)]);
      break;
    }
    peak = Math.max(peak, now);
    still = now === last ? still + 1 : 0;
    last = now;
  }
  if (exited) return 'exited';
  assert.equal(still, 20, `VmPin did not settle within 600 s (last ${last} kB):\n${vm.output()}`);
  return { steadyKb: last, sampledPeakKb: peak };
}

async function status(vm: Vm): Promise<string> {
  return (await qmp(vm, (c) => c.execute('query-status')) as { status: string }).status;
}

const regionsText = (e: Estimate): string => e.regions.map((r) => `${r.name} ${r.mappedBytes / KiB}/${r.blockBytes / KiB}`).join(', ');
const kib = (bytes: number): string => `${(bytes / KiB).toLocaleString('en-US')} KiB`;

test('pass --size-from-qmp with overhead 0: the limit is the estimate; QEMU 10 with default devices runs SeaBIOS and takes a DIMM within it', T, async (t) => {
  t.after(await setOverhead('0', 0));
  const vm = await pausedVm(t, 'vm-qmpsize');
  const { lease, estimate } = await passAndAttach(vm, ['--size-from-qmp']);
  assert.ok(estimate !== undefined, 'pass --json reports the estimate it leased');
  assert.equal(lease.memoryBytes, estimate.estimateBytes, 'the estimate travels as the lease\'s memory');
  assert.equal(lease.limitBytes, estimate.estimateBytes, 'overhead 0: the limit is exactly the estimate');
  const counted = new Map(estimate.regions.map((r) => [r.name, r.countedBytes]));
  assert.equal(counted.get('vga.vram'), 16 * MiB, 'the VRAM SeaBIOS maps later is in the estimate (not mapped under -S)');
  assert.ok((counted.get('e1000e.rom') ?? 0) > 0 && (counted.get('vga.rom') ?? 0) > 0, 'the option ROMs are counted');
  assert.ok(lease.limitBytes < RAM + 64 * MiB, `the sized limit ${kib(lease.limitBytes)} is below even RAM + the packaged 64 MiB overhead`);

  const pinnedS = kB(vm.pid, 'VmPin');
  assert.equal(pinnedS * KiB, estimate.mappedBytes, 'under -S the device pinned what measure called "mapped now"');
  assert.equal(kB(vm.pid, 'VmLck'), pinnedS);
  const after = measure(vm);
  assert.equal(after.estimateBytes, estimate.estimateBytes,
    `the VFIO device adds nothing VFIO pins, so sizing before it is right: before ${regionsText(estimate)}; after ${regionsText(after)}`);

  await qmp(vm, (c) => c.execute('cont'));
  const fw = await firmwareDone(vm);
  assert.notEqual(fw, 'exited', `QEMU died during firmware under the sized limit:\n${vm.output()}`);
  if (fw === 'exited') return;
  assert.equal(await status(vm), 'running', `QEMU runs after firmware:\n${vm.output()}`);
  const trace = tracedPins(vm.output());
  assert.equal(trace.nowBytes, fw.steadyKb * KiB, 'the traced maps and unmaps add up to the kernel\'s VmPin');
  assert.ok(trace.peakBytes <= lease.limitBytes, `the peak ${kib(trace.peakBytes)} stayed within the limit ${kib(lease.limitBytes)}`);
  assert.ok(fw.sampledPeakKb * KiB <= lease.limitBytes);
  assert.ok(fw.steadyKb >= 64 * 1024 + 16 * 1024, `steady VmPin ${fw.steadyKb} kB includes RAM and the VRAM`);
  const running = measure(vm);
  assert.ok(running.estimateBytes >= fw.steadyKb * KiB, 'an estimate read while running covers what is pinned');

  const add = ctl(600, 'hotplug', lease.id, '--qmp', vm.qmp, '--memory', '64M', '--id', 'dimm1');
  assert.equal(add.status, 0, `iommufdctl hotplug: ${add.out}`);
  const raised = lease.limitBytes + 64 * MiB;
  assert.deepEqual(memlock(vm.pid), { soft: raised, hard: raised }, 'raised by the DIMM before it was plugged');
  const listed = (await broker((c) => c.list())).leases.find((l) => l.id === lease.id);
  assert.equal(listed?.limitBytes, raised);
  const dimms = await qmp(vm, (c) => c.execute('query-memory-devices')) as Array<{ data: { id?: string; size: number } }>;
  assert.deepEqual(dimms.map((d) => [d.data.id, d.data.size]), [['dimm1', 64 * MiB]], 'the DIMM is plugged');
  const pinnedDimm = kB(vm.pid, 'VmPin');
  assert.equal(pinnedDimm - fw.steadyKb, 64 * 1024, 'VmPin grew by exactly the DIMM');
  assert.equal(await status(vm), 'running', `QEMU still runs:\n${vm.output()}`);
  const withDimm = measure(vm);
  assert.ok(withDimm.estimateBytes >= pinnedDimm * KiB, 'a new estimate covers what is pinned now');
  const tracedAll = tracedPins(vm.output());
  assert.ok(tracedAll.peakBytes <= raised);

  const defaultLimit = RAM + GiB;
  t.diagnostic(`QEMU 10, -M q35 -m 64M (std VGA, e1000e, edu by vfio-pci): estimate under -S ${kib(estimate.estimateBytes)} = sized limit (overhead 0); ` +
    `mapped under -S ${kib(estimate.mappedBytes)}`);
  t.diagnostic(`regions (mapped/RAM blocks, KiB) under -S: ${regionsText(estimate)}; running after SeaBIOS: ${regionsText(running)} ` +
    `(estimate ${kib(running.estimateBytes)})`);
  t.diagnostic(`VmPin through SeaBIOS: traced peak ${kib(trace.peakBytes)} (${trace.maps} maps), highest sampled ${kib(fw.sampledPeakKb * KiB)}, steady ${kib(fw.steadyKb * KiB)}`);
  t.diagnostic(`after hotplug of 64 MiB: limit ${kib(raised)}, VmPin ${kib(pinnedDimm * KiB)}, traced peak ${kib(tracedAll.peakBytes)}, new estimate ${kib(withDimm.estimateBytes)}`);
  t.diagnostic(`RAM + 1 GiB ${kib(defaultLimit)}; saved per VM by the sized limit ${kib(defaultLimit - lease.limitBytes)} ` +
    `(against RAM + 64 MiB: ${kib(RAM + 64 * MiB - lease.limitBytes)})`);
});

test('control: the same QEMU with the estimate less its VRAM aborts during firmware with the kernel\'s ENOMEM', T, async (t) => {
  t.after(await setOverhead('0', 0));
  const vm = await pausedVm(t, 'vm-qmpsize-short');
  const estimate = measure(vm);
  const vram = estimate.regions.find((r) => r.name === 'vga.vram')?.countedBytes;
  assert.equal(vram, 16 * MiB);
  const short = estimate.estimateBytes - vram;
  assert.ok(short > estimate.mappedBytes, 'still covers what the device maps under -S: device_add succeeds');
  const { lease } = await passAndAttach(vm, ['--memory', String(short)]);
  assert.equal(lease.limitBytes, short);
  assert.equal(await status(vm), 'prelaunch', 'the device is attached, QEMU alive and still paused (-S)');
  await qmp(vm, (c) => c.execute('cont'));
  const fw = await firmwareDone(vm);
  const out = vm.output();
  assert.equal(fw, 'exited', `QEMU must die during firmware under ${kib(short)}:\n${out}`);
  const end = await vm.exited;
  assert.equal(end.signal, 'SIGABRT', `QEMU aborted:\n${out}`);
  assert.match(out, /vfio_container_dma_map\(.*\) = -12 \(Cannot allocate memory\)/, 'the kernel\'s ENOMEM, through QEMU\'s message');
  assert.match(out, /vfio: DMA mapping failed, unable to continue/);
  assert.match(out, /vfio_container_dma_map\([^)]*, 0x1000000, [^)]*\) = -12/, 'the refused map is the 16 MiB VRAM BAR SeaBIOS programmed');
  const failed = /vfio_container_dma_map\([^)]*\) = -12/.exec(out)?.[0];
  t.diagnostic(`limit ${kib(short)} (estimate ${kib(estimate.estimateBytes)} less 16 MiB VRAM): QEMU aborted in firmware on ${failed ?? '?'}`);
});
