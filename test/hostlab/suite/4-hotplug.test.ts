// Memory hotplug with a real VFIO device (issues #11 item 3, #12 items 2 and 5). QEMU maps a
// hot-plugged DIMM for DMA at device_add, and a failed map aborts it: the lease must be raised
// first. With the overhead at 1 MiB (systemctl reload) the lease has no slack for a 64 MiB DIMM.
// First by hand (Resize, then QMP), then as a manager does it: `iommufdctl hotplug` (raise,
// then plug; undo on failure) and `iommufdctl unplug` (device_del, DEVICE_DELETED, object-del,
// then lower). A pc-dimm unplug completes only when the guest acknowledges the ACPI eject: the
// unplug check's QEMU runs the lab's DIMM-eject guest (test/hostlab/dimm-guest/), the no-ack
// check a paused QEMU (no guest code at all).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MiB, broker, kB, memlock, setOverhead, sh } from '../harness/system.ts';
import { qmp, qmpReady, startVm, type Vm, type VmOptions } from '../harness/vm.ts';

const T = { timeout: 900_000 };
const DIMM = { backend: { 'qom-type': 'memory-backend-ram', id: 'mem1', size: 64 * MiB }, device: { driver: 'pc-dimm', id: 'dimm1', memdev: 'mem1' } };

async function hotplugVm(name: string, o: Partial<VmOptions> = {}): Promise<{ vm: Vm; lease: string; baseline: number }> {
  const vm = await startVm({ name, memory: '64M,slots=2,maxmem=512M', leaseMemory: '64M', vfio: true, ...o });
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  const lease = (await broker((c) => c.list())).leases.find((l) => l.name === name);
  assert.ok(lease !== undefined);
  assert.equal(lease.limitBytes, 65 * MiB, '64M + the 1M overhead');
  return { vm, lease: lease.id, baseline: kB(vm.pid, 'VmPin') };
}

test('hotplug: Resize up first, then object-add + device_add pc-dimm: the DIMM appears, VmPin grows by 64 MiB', T, async (t) => {
  t.after(await setOverhead('1M', MiB));
  const { vm, lease, baseline } = await hotplugVm('vm-hotplug');
  t.after(() => vm.stop());
  const r = await broker((c) => c.resize(lease, 128 * MiB));
  assert.equal(r.lease.limitBytes, 129 * MiB);
  assert.deepEqual(memlock(vm.pid), { soft: 129 * MiB, hard: 129 * MiB }, 'the broker raised QEMU\'s limit');
  const devices = await qmp(vm, async (c) => {
    await c.execute('object-add', DIMM.backend);
    await c.execute('device_add', DIMM.device);
    return c.execute('query-memory-devices') as Promise<Array<{ data: { id?: string; size: number } }>>;
  });
  assert.deepEqual(devices.map((d) => [d.data.id, d.data.size]), [['dimm1', 64 * MiB]], 'the DIMM is plugged');
  assert.equal(kB(vm.pid, 'VmPin') - baseline, 64 * 1024, 'VmPin grew by exactly the DIMM');
  assert.equal(kB(vm.pid, 'VmLck'), kB(vm.pid, 'VmPin'));
  // Lower again (a manager after the guest released the DIMM): the broker applies it at once.
  const down = await broker((c) => c.resize(lease, 64 * MiB));
  assert.equal(down.lease.limitBytes, 65 * MiB);
  assert.deepEqual(memlock(vm.pid), { soft: 65 * MiB, hard: 65 * MiB });
});

test('the same hotplug without the raise aborts QEMU with the kernel\'s ENOMEM', T, async (t) => {
  t.after(await setOverhead('1M', MiB));
  const { vm } = await hotplugVm('vm-no-raise');
  t.after(() => vm.stop());
  await qmp(vm, async (c) => {
    await c.execute('object-add', DIMM.backend);
    await c.execute('device_add', DIMM.device).catch(() => undefined); // QEMU dies before it answers
  }).catch(() => undefined);
  const end = await vm.exited;
  const out = vm.output();
  assert.equal(end.signal, 'SIGABRT', `QEMU aborted:\n${out}`);
  assert.match(out, /vfio_container_dma_map\(.*0x100000000, 0x4000000.*\) = -12 \(Cannot allocate memory\)/, 'the DIMM\'s map got ENOMEM');
  assert.match(out, /vfio: DMA mapping failed, unable to continue/);
});

/** The packaged iommufdctl as root (a manager), stdout and stderr together. */
function ctl(timeoutS: number, ...args: string[]): { status: number | null; out: string } {
  const r = sh('iommufdctl', ['--timeout', String(timeoutS), ...args]);
  return { status: r.status, out: r.stdout + r.stderr };
}

async function memoryDevices(vm: Vm): Promise<Array<[string | undefined, number]>> {
  const list = await qmp(vm, (c) => c.execute('query-memory-devices')) as Array<{ data: { id?: string; size: number } }>;
  return list.map((d) => [d.data.id, d.data.size]);
}

async function leaseOf(id: string): Promise<{ memoryBytes: number; limitBytes: number }> {
  const l = (await broker((c) => c.list())).leases.find((x) => x.id === id);
  assert.ok(l !== undefined, `lease ${id} is listed`);
  return l;
}

test('iommufdctl hotplug then unplug, the guest acks the eject: mapped after the raise, the limit lowered after QEMU released it', T, async (t) => {
  t.after(await setOverhead('1M', MiB));
  const { vm, lease, baseline } = await hotplugVm('vm-unplug', { dimmGuest: true });
  t.after(() => vm.stop());
  const add = ctl(300, 'hotplug', lease, '--qmp', vm.qmp, '--memory', '64M', '--id', 'dimm1');
  assert.equal(add.status, 0, `iommufdctl hotplug: ${add.out}`);
  assert.deepEqual(memlock(vm.pid), { soft: 129 * MiB, hard: 129 * MiB }, 'raised by the DIMM');
  assert.equal(kB(vm.pid, 'VmPin') - baseline, 64 * 1024, 'the DIMM is mapped for DMA: VmPin grew by exactly 64 MiB');
  assert.deepEqual(await memoryDevices(vm), [['dimm1', 64 * MiB]]);
  const del = ctl(300, 'unplug', lease, '--qmp', vm.qmp, '--id', 'dimm1');
  assert.equal(del.status, 0, `iommufdctl unplug: ${del.out}`);
  assert.deepEqual(await memoryDevices(vm), [], 'DEVICE_DELETED came: the DIMM is gone');
  assert.equal(kB(vm.pid, 'VmPin'), baseline, 'QEMU unmapped the DIMM');
  assert.deepEqual(memlock(vm.pid), { soft: 65 * MiB, hard: 65 * MiB }, 'and the limit came down by the DIMM');
  const after = await leaseOf(lease);
  assert.deepEqual([after.memoryBytes, after.limitBytes], [64 * MiB, 65 * MiB], 'the lease is back to 64M + 1M');
  const state = await qmp(vm, (c) => c.execute('query-status')) as { status: string };
  assert.equal(state.status, 'running', `QEMU still runs:\n${vm.output()}`);
});

test('iommufdctl unplug with no guest to release the DIMM: no DEVICE_DELETED, so the limit stays raised', T, async (t) => {
  t.after(await setOverhead('1M', MiB));
  const { vm, lease, baseline } = await hotplugVm('vm-unplug-noack');
  t.after(() => vm.stop());
  const add = ctl(300, 'hotplug', lease, '--qmp', vm.qmp, '--memory', '64M', '--id', 'dimm1');
  assert.equal(add.status, 0, `iommufdctl hotplug: ${add.out}`);
  const del = ctl(30, 'unplug', lease, '--qmp', vm.qmp, '--id', 'dimm1');
  assert.notEqual(del.status, 0, `unplug must fail without DEVICE_DELETED: ${del.out}`);
  assert.match(del.out, /UnplugFailed at step device-deleted/);
  assert.match(del.out, /the limit was not lowered/);
  assert.deepEqual(memlock(vm.pid), { soft: 129 * MiB, hard: 129 * MiB }, 'the limit still covers the mapped DIMM');
  assert.equal(kB(vm.pid, 'VmPin') - baseline, 64 * 1024, 'the DIMM is still mapped');
  assert.equal((await leaseOf(lease)).limitBytes, 129 * MiB);
});

test('iommufdctl hotplug whose device_add QEMU refuses: the backend is deleted and the limit is back where it was', T, async (t) => {
  t.after(await setOverhead('1M', MiB));
  const { vm, lease, baseline } = await hotplugVm('vm-hotplug-refused');
  t.after(() => vm.stop());
  // 512 MiB does not fit: maxmem=512M leaves 448 MiB for DIMMs. The raise comes first (so the
  // limit really moves), then object-add succeeds, then QEMU refuses device_add.
  const r = ctl(300, 'hotplug', lease, '--qmp', vm.qmp, '--memory', '512M', '--id', 'dimm1');
  assert.notEqual(r.status, 0, `the hotplug must fail: ${r.out}`);
  assert.match(r.out, /HotplugFailed at step device-add/);
  assert.match(r.out, /undone: object-del dimm1-mem/);
  assert.match(r.out, /undone: resize /);
  assert.deepEqual(memlock(vm.pid), { soft: 65 * MiB, hard: 65 * MiB }, 'the limit is where it was');
  assert.equal((await leaseOf(lease)).limitBytes, 65 * MiB);
  assert.deepEqual(await memoryDevices(vm), []);
  assert.equal(kB(vm.pid, 'VmPin'), baseline);
  const objects = await qmp(vm, (c) => c.execute('qom-list', { path: '/objects' })) as Array<{ name: string }>;
  assert.ok(!objects.some((o) => o.name === 'dimm1-mem'), 'the backend was deleted');
});
