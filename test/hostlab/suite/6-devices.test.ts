// VFIO device handout by the broker (issue #12, items 1 and 5), with a real QEMU 10: the QEMU
// user `labvm` cannot open any VFIO cdev itself (the package's udev rule gives them to the
// broker's group, the lab adds no rule of its own), so it gets its device only through
// `iommufdctl exec --device`; a device the policy does not give is refused with a named error
// before anything is opened; a device held by one lease is refused to another.
// The lab policy (test/hostlab/run) has one [[devices]] entry: EDU_ALLOWED for labvm (and the
// VM name vm-pass, for a manager's pass); EDU_OTHER, bound to vfio-pci too, has none.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readlinkSync, statSync } from 'node:fs';
import { broker, kB, sh } from '../harness/system.ts';
import { EDU_ALLOWED, EDU_OTHER, LAB_USER, eduDevices, qmpReady, startVm } from '../harness/vm.ts';

const T = { timeout: 900_000 };

function cdevOf(address: string): string {
  const entries = readdirSync(`/sys/bus/pci/devices/${address}/vfio-dev`);
  assert.equal(entries.length, 1, `one vfio-dev entry for ${address}: ${entries.join(', ')}`);
  return entries[0] ?? '';
}

test('both edu devices are bound to vfio-pci; the QEMU user cannot open their cdevs, and a bare QEMU cannot use one', T, async (t) => {
  assert.deepEqual(eduDevices(), [EDU_ALLOWED, EDU_OTHER], 'the lab\'s two edu devices, bound to vfio-pci');
  const brokerGid = Number(sh('getent', ['group', 'iommufd-broker']).stdout.split(':')[2]);
  for (const address of [EDU_ALLOWED, EDU_OTHER]) {
    const cdev = `/dev/vfio/devices/${cdevOf(address)}`;
    const st = statSync(cdev);
    assert.deepEqual([st.uid, st.gid, st.mode & 0o777], [0, brokerGid, 0o660], `${cdev}: root:iommufd-broker 0660 (the package's udev rule)`);
    const open = sh('setpriv', [`--reuid=${LAB_USER}`, `--regid=${LAB_USER}`, '--init-groups', '--', 'bash', '-c', `exec 3<>${cdev}`]);
    assert.notEqual(open.status, 0, `${LAB_USER} must not open ${cdev}`);
    assert.match(open.stderr, /Permission denied/);
  }
  // Without the broker, QEMU would have to open the device itself (here the legacy group path).
  const vm = await startVm({ name: 'vm-bare-vfio', memory: '64M', extra: ['-device', `vfio-pci,sysfsdev=/sys/bus/pci/devices/${EDU_ALLOWED}`] });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), false, `a bare QEMU started with the device:\n${vm.output()}`);
  const end = await vm.exited;
  assert.equal(end.code, 1, `a bare QEMU with the device exits 1:\n${vm.output()}`);
  assert.match(vm.output(), /Permission denied/);
});

test('exec --device: the broker opens the cdev for labvm\'s QEMU, which runs and pins through it; the lease holds the device', T, async (t) => {
  const vm = await startVm({ name: 'vm-handout', memory: '64M', leaseMemory: '64M', vfio: true });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  const lease = (await broker((c) => c.list())).leases.find((l) => l.name === 'vm-handout');
  assert.ok(lease !== undefined);
  assert.deepEqual(lease.devices, [{ address: EDU_ALLOWED, cdev: cdevOf(EDU_ALLOWED) }]);
  assert.equal(kB(vm.pid, 'VmPin'), 64 * 1024 + 256, 'the device\'s DMA maps: RAM + pc.bios, through the broker\'s fds');
  const fds = readdirSync(`/proc/${vm.pid}/fd`).map((fd) => readlinkSync(`/proc/${vm.pid}/fd/${fd}`));
  assert.ok(fds.includes(`/dev/vfio/devices/${cdevOf(EDU_ALLOWED)}`), `QEMU holds the cdev the broker opened: ${fds.join(' ')}`);
});

test('a device the policy does not give: PermissionDenied (device-not-allowed) before anything is opened, no lease', T, async (t) => {
  const vm = await startVm({ name: 'vm-other-device', memory: '64M', leaseMemory: '64M', vfio: EDU_OTHER });
  t.after(() => vm.stop());
  // Bounded: a QEMU that got the device runs (paused) until stopped, so wait for QMP or exit.
  assert.equal(await qmpReady(vm), false, `QEMU started with a device the policy does not give:\n${vm.output()}`);
  const end = await vm.exited;
  const out = vm.output();
  assert.equal(end.code, 1, `iommufdctl exec exits 1 (refused):\n${out}`);
  assert.match(out, /PermissionDenied/);
  assert.match(out, /device-not-allowed/);
  assert.ok(out.includes(EDU_OTHER), 'the refusal names the device');
  assert.ok(!(await broker((c) => c.list())).leases.some((l) => l.name === 'vm-other-device'), 'no lease was made');
});

test('two leases cannot share a device: the second Open gets DeviceBusy naming the holder, the first QEMU is untouched', T, async (t) => {
  const holder = await startVm({ name: 'vm-holder', memory: '64M', leaseMemory: '64M', vfio: true });
  t.after(() => holder.stop());
  assert.equal(await qmpReady(holder), true, holder.output());
  const held = (await broker((c) => c.list())).leases.find((l) => l.name === 'vm-holder');
  assert.ok(held !== undefined);
  const pinned = kB(holder.pid, 'VmPin');
  const second = await startVm({ name: 'vm-second', memory: '64M', leaseMemory: '64M', vfio: true, deviceBusy: true });
  t.after(() => second.stop());
  assert.equal(await qmpReady(second), false, `a second QEMU started with the held device:\n${second.output()}`);
  const end = await second.exited;
  const out = second.output();
  assert.equal(end.code, 1, `the second exec is refused:\n${out}`);
  assert.match(out, /DeviceBusy/);
  assert.ok(out.includes(held.id), `DeviceBusy names the lease that holds the device (${held.id}):\n${out}`);
  assert.ok(!(await broker((c) => c.list())).leases.some((l) => l.name === 'vm-second'), 'no second lease');
  assert.equal(kB(holder.pid, 'VmPin'), pinned, 'the holder still pins what it did');
  assert.equal(holder.child.exitCode, null, 'the holder still runs');
});
