// libvirt-style hand-off (issue #11 item 3, #12 item 5): a QEMU 10 started without any iommufd
// gets the FD and the VFIO device's cdev FD from `iommufdctl pass --device` (QMP getfd, names
// ifd and vfio-ADDR; the device is given to this VM name by the lab policy's [[devices]]
// entry), then `object-add iommufd` and a hot-added vfio-pci device on that fd; its DMA maps
// are charged to it, within the lease the broker set on it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MiB, broker, kB, memlock, overheadBytes, sh } from '../harness/system.ts';
import { EDU_ALLOWED, deviceFree, qmp, qmpReady, startVm } from '../harness/vm.ts';

const T = { timeout: 900_000 };

test('iommufdctl pass --device + QMP object-add iommufd + device_add vfio-pci fd=: QEMU pins RAM + BIOS, charged to it', T, async (t) => {
  const vm = await startVm({ name: 'vm-pass', memory: '64M', extra: ['-device', 'pcie-root-port,id=rp1,chassis=1'] });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  assert.equal(kB(vm.pid, 'VmPin'), 0, 'nothing pinned before the device');
  await deviceFree(EDU_ALLOWED);
  const pass = sh('iommufdctl', ['--timeout', '300', 'pass', '--qmp', vm.qmp, '--fdname', 'ifd', '--name', 'vm-pass', '--memory', '64M', '--device', EDU_ALLOWED]);
  assert.equal(pass.status, 0, `iommufdctl pass: ${pass.stdout}${pass.stderr}`);
  const lease = (await broker((c) => c.list())).leases.find((l) => l.name === 'vm-pass');
  assert.ok(lease !== undefined);
  assert.equal(lease.pid, vm.pid, 'the target is the QEMU at the other end of the QMP socket');
  assert.deepEqual(memlock(vm.pid), { soft: lease.limitBytes, hard: lease.limitBytes });
  assert.deepEqual((lease.devices ?? []).map((d) => d.address), [EDU_ALLOWED], 'the lease holds the device');
  await qmp(vm, async (c) => {
    await c.execute('object-add', { 'qom-type': 'iommufd', id: 'i0', fd: 'ifd' });
    await c.execute('device_add', { driver: 'vfio-pci', id: 'edu0', iommufd: 'i0', fd: `vfio-${EDU_ALLOWED}`, bus: 'rp1' });
  });
  const pin = kB(vm.pid, 'VmPin');
  assert.equal(pin, 64 * 1024 + 256, 'the device\'s DMA maps: guest RAM + pc.bios');
  assert.equal(kB(vm.pid, 'VmLck'), pin, 'charged to QEMU (RLIMIT_MODE=1 on the passed FD)');
  assert.ok(pin * 1024 <= lease.limitBytes);
  assert.equal(lease.limitBytes, 64 * MiB + await overheadBytes(), 'RAM + the packaged policy\'s overhead');
});
