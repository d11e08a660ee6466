// Real QEMU 10 as the broker's client (issue #11, item 3), unprivileged (user labvm, group
// iommufd, no capabilities), started by the packaged `iommufdctl exec` with the broker's FDs
// (the iommufd and, with --device, the edu device's VFIO cdev, which labvm cannot open):
// what it pins is charged to it and within its lease; the default overhead carries QEMU's
// default devices through firmware; with the overhead at 0 (a policy change applied by
// `systemctl reload`) the kernel refuses QEMU's first DMA map.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { formatSize } from '../../../client/index.ts';
import { MiB, broker, kB, memlock, overheadBytes, setOverhead, sh } from '../harness/system.ts';
import { EDU_ALLOWED, LAB_USER, qmp, qmpReady, startVm } from '../harness/vm.ts';

const T = { timeout: 900_000 };
const PC_BIOS_KB = 256;

test('iommufdctl exec --device: QEMU with vfio-pci runs, VmPin = VmLck = RAM + BIOS, within the lease; status shows it', T, async (t) => {
  const vm = await startVm({ name: 'vm-exec', memory: '64M', leaseMemory: '64M', vfio: true });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  const lease = (await broker((c) => c.list())).leases.find((l) => l.name === 'vm-exec');
  assert.ok(lease !== undefined, 'the lease is listed');
  assert.equal(lease.pid, vm.pid, 'the lease\'s target is QEMU itself (exec kept the pid)');
  assert.equal(lease.accountingMode, 'process');
  assert.deepEqual((lease.devices ?? []).map((d) => d.address), [EDU_ALLOWED], 'the lease holds the device it handed out');
  assert.equal(lease.limitBytes, 64 * MiB + await overheadBytes(), 'RAM + the packaged policy\'s overhead');
  assert.deepEqual(memlock(vm.pid), { soft: lease.limitBytes, hard: lease.limitBytes });
  const pin = kB(vm.pid, 'VmPin');
  assert.equal(pin, 64 * 1024 + PC_BIOS_KB, 'pinned: guest RAM and pc.bios (-nodefaults)');
  assert.equal(kB(vm.pid, 'VmLck'), pin, 'RLIMIT_MODE=1: every pinned page is charged to QEMU');
  const listed = (await broker((c) => c.list())).leases.find((l) => l.id === lease.id);
  assert.equal(listed?.pinnedBytes, pin * 1024, 'List reports the target\'s VmPin');
  const status = sh('setpriv', [`--reuid=${LAB_USER}`, `--regid=${LAB_USER}`, '--init-groups', '--', 'iommufdctl', 'status']);
  assert.equal(status.status, 0, status.stderr);
  assert.match(status.stdout, /vm-exec/, 'iommufdctl status (as the VM\'s user) shows its lease');
  assert.ok(status.stdout.includes(`${formatSize(pin * 1024)} of ${formatSize(lease.limitBytes)}`),
    `status shows the pinned memory against the limit:\n${status.stdout}`);
});

test('the default overhead carries QEMU\'s default devices (VGA VRAM, NIC ROM) through firmware', T, async (t) => {
  const vm = await startVm({ name: 'vm-defaults', memory: '64M', leaseMemory: '64M', vfio: true, defaults: true });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  // SeaBIOS copies option ROMs (the transient peak) and the guest re-lays memory; wait until
  // the pinned amount has held still for a while, then QEMU must still be running.
  // A QEMU killed in firmware (the failure this check exists for) must fail it with its own
  // words, not with a read of a vanished /proc entry.
  let died: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  void vm.exited.then((how) => { died = how; });
  let last = -1;
  let still = 0;
  const deadline = Date.now() + 240_000;
  while (still < 20 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 1000));
    assert.equal(died, undefined, `QEMU died during firmware (${JSON.stringify(died)}):\n${vm.output()}`);
    const now = kB(vm.pid, 'VmPin');
    still = now === last ? still + 1 : 0;
    last = now;
  }
  const state = await qmp(vm, (c) => c.execute('query-status')) as { status: string };
  assert.equal(state.status, 'running', `QEMU is running after firmware:\n${vm.output()}`);
  assert.ok(last >= 64 * 1024 + 16 * 1024, `VmPin ${last} kB includes RAM and the 16 MiB VGA VRAM`);
  assert.equal(kB(vm.pid, 'VmLck'), last);
});

test('overhead 0 (systemctl reload): the same QEMU fails at start with the kernel\'s ENOMEM', T, async (t) => {
  t.after(await setOverhead('0', 0));
  const vm = await startVm({ name: 'vm-no-overhead', memory: '64M', leaseMemory: '64M', vfio: true });
  t.after(() => vm.stop());
  const end = await vm.exited;
  const out = vm.output();
  assert.equal(end.code, 1, `QEMU exits 1 at start:\n${out}`);
  assert.match(out, /vfio_container_dma_map\(.*\) = -12 \(Cannot allocate memory\)/, 'the kernel\'s ENOMEM, through QEMU\'s message');
  assert.match(out, /memory listener initialization failed/);
});
