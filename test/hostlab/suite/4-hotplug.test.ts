// Memory hotplug with a real VFIO device (issue #11, item 3). QEMU maps a hot-plugged DIMM for
// DMA at device_add, and a failed map aborts it: the lease must be raised first. With the
// overhead at 1 MiB (systemctl reload) the lease has no slack for a 64 MiB DIMM.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MiB, broker, kB, memlock, setOverhead } from '../harness/system.ts';
import { qmp, qmpReady, startVm, type Vm } from '../harness/vm.ts';

const T = { timeout: 900_000 };
const DIMM = { backend: { 'qom-type': 'memory-backend-ram', id: 'mem1', size: 64 * MiB }, device: { driver: 'pc-dimm', id: 'dimm1', memdev: 'mem1' } };

async function hotplugVm(name: string): Promise<{ vm: Vm; lease: string; baseline: number }> {
  const vm = await startVm({ name, memory: '64M,slots=2,maxmem=512M', leaseMemory: '64M', vfio: true });
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  const lease = (await broker((c) => c.list())).leases.find((l) => l.name === name);
  assert.ok(lease !== undefined);
  assert.equal(lease.limitBytes, 65 * MiB, '64M + the 1M overhead');
  return { vm, lease: lease.id, baseline: kB(vm.pid, 'VmPin') };
}

test('hotplug: Resize up first, then object-add + device_add pc-dimm: the DIMM appears, VmPin grows by 64 MiB', T, async (t) => {
  await setOverhead('1M', MiB);
  t.after(() => setOverhead('64M', 64 * MiB));
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
  await setOverhead('1M', MiB);
  t.after(() => setOverhead('64M', 64 * MiB));
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
