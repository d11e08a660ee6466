// The per-fd backend under real systemd, with a real QEMU 10 and VFIO (issue #10, items 4 and 5):
// run only on the patched kernel's boot (kernel/iommufd-pinned-limit/; guest-checks' list for
// iommufd_hostlab.kernel=patched). The broker's own probe chooses the backend; each lease's FD
// carries its own limit, which binds QEMU's DMA maps; the broker's kept duplicate of each FD is
// in systemd's fd store (FDSTORE=1, FDNAME=lease-<id>), so after a SIGKILL (a crash restart) and
// after `systemctl restart` (FileDescriptorStorePreserve=yes) the daemon takes the FD back and a
// Resize up still binds in the kernel: a memory hotplug that needs the raise succeeds. And the
// point of the backend: a QEMU holding CAP_IPC_LOCK, whose pins iommufd never charges to its
// locked memory (VmLck stays 0: RLIMIT_MEMLOCK cannot bind it), is still bound by its FD's limit.
//
// Invariants:
// - Every byte count is checked against the kernel: fdPinnedBytes (IOMMU_OPTION_PINNED_USAGE of
//   the kept FD) and QEMU's VmPin; a hotplug's success or QEMU's abort is the FD limit's verdict.
// - Hotplug checks set the overhead to 1 MiB (systemctl reload) so a 64 MiB DIMM never fits in
//   the slack: only a raise makes room. The policy is put back after each.
// - The fd store is read from systemd itself (NFileDescriptorStore, systemd-analyze fdstore).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import type { Lease } from '../../../protocol/methods.ts';
import { MiB, POLICY, SERVICE, broker, kB, mainPid, memlock, procStatus, setOverhead, sh, unitProps, waitFor } from '../harness/system.ts';
import { qmp, qmpReady, startVm, type Vm } from '../harness/vm.ts';

const T = { timeout: 900_000 };
/** What QEMU pins for `-m 64M` with a vfio-pci device: its RAM and the 256 KiB pc.bios (2-qemu-exec). */
const RAM_AND_BIOS = 64 * MiB + 256 * 1024;
const CAP_IPC_LOCK = 1n << 14n;

/** systemd's fd store of the broker's unit: its count, and each fd's name and path. */
function fdStore(): { count: number; entries: Array<{ name: string; path: string }>; raw: string } {
  const count = Number(unitProps(SERVICE, 'NFileDescriptorStore').NFileDescriptorStore);
  const r = sh('systemd-analyze', ['fdstore', SERVICE, '--json=short']);
  const raw = `${r.stdout}${r.stderr}`.trim();
  const text = r.stdout.trim();
  // An empty store is said in words, not as JSON.
  const rows = r.status === 0 && text.startsWith('[') ? JSON.parse(text) as Array<Record<string, unknown>> : [];
  return { count, entries: rows.map((e) => ({ name: String(e.fdname), path: String(e.path) })), raw };
}

async function leaseNamed(name: string): Promise<Lease> {
  const l = (await broker((c) => c.list())).leases.find((x) => x.name === name);
  assert.ok(l !== undefined, `a lease for ${name}`);
  return l;
}

async function leaseById(id: string): Promise<Lease> {
  const l = (await broker((c) => c.list())).leases.find((x) => x.id === id);
  assert.ok(l !== undefined, `lease ${id} is listed`);
  return l;
}

/** The packaged iommufdctl as root (a manager), stdout and stderr together. */
function ctl(...args: string[]): { status: number | null; out: string } {
  const r = sh('iommufdctl', ['--timeout', '300', ...args]);
  return { status: r.status, out: r.stdout + r.stderr };
}

/** Waits for systemd to run a new daemon (a MainPID other than `oldPid`, running); returns its pid. */
async function restarted(oldPid: number): Promise<number> {
  return waitFor('systemd to run a new daemon', 300, () => {
    const now = unitProps(SERVICE, 'MainPID', 'SubState');
    const pid = Number(now.MainPID);
    return pid !== 0 && pid !== oldPid && now.SubState === 'running' ? pid : undefined;
  });
}

test('the probe chose the per-fd backend; a QEMU\'s lease is accounted by its FD (fdPinnedBytes = VmPin = RAM + BIOS), its kept FD is in systemd\'s fd store until QEMU exits', T, async (t) => {
  const status = await broker((c) => c.status());
  assert.equal(status.backend?.kind, 'per-fd', `the broker's own probe: ${JSON.stringify(status.backend)}`);
  assert.equal(status.device.perFdLimitOption, true);
  assert.deepEqual(status.backend?.notResizable, []);
  const vm = await startVm({ name: 'vm-fd', memory: '64M', leaseMemory: '64M', vfio: true });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, vm.output());
  const lease = await leaseNamed('vm-fd');
  assert.equal(lease.pid, vm.pid);
  assert.equal(lease.accountingMode, 'fd');
  assert.equal(lease.resizable, undefined, 'resizable');
  assert.equal(kB(vm.pid, 'VmPin') * 1024, RAM_AND_BIOS, 'QEMU pinned its RAM and BIOS for DMA');
  assert.equal(lease.fdPinnedBytes, RAM_AND_BIOS, 'the lease\'s FD holds exactly what QEMU pinned');
  const store = fdStore();
  assert.deepEqual(store.entries, [{ name: `lease-${lease.id}`, path: '/dev/iommu' }], `systemd-analyze fdstore: ${store.raw}`);
  assert.equal(store.count, 1, 'NFileDescriptorStore');
  await vm.stop();
  await waitFor('the lease to end', 120, async () => !(await broker((c) => c.list())).leases.some((l) => l.id === lease.id));
  const gone = fdStore();
  assert.deepEqual(gone.entries, [], `the broker closed its duplicate and systemd's (FDSTOREREMOVE): ${gone.raw}`);
  assert.equal(gone.count, 0);
});

describe('restarts of the daemon keep a per-fd lease resizable: a raise still binds in the kernel', () => {
  let vm: Vm;
  let lease: Lease;
  let restoreOverhead: () => Promise<void>;
  let pinned = 0; // VmPin kB, after the checks so far
  let fdPinned = 0;

  before(async () => {
    restoreOverhead = await setOverhead('1M', MiB);
    vm = await startVm({ name: 'vm-restart', memory: '64M,slots=2,maxmem=512M', leaseMemory: '64M', vfio: true });
    assert.equal(await qmpReady(vm), true, vm.output());
    lease = await leaseNamed('vm-restart');
    assert.equal(lease.limitBytes, 65 * MiB, '64M + the 1M overhead');
    assert.equal(lease.fdPinnedBytes, RAM_AND_BIOS);
    pinned = kB(vm.pid, 'VmPin');
    fdPinned = RAM_AND_BIOS;
  });
  after(async () => {
    await vm?.stop();
    await restoreOverhead?.();
  });

  /** After a restart: re-adopted, its FD back from the store, and `iommufdctl hotplug` (raise, then plug) maps the DIMM. */
  async function hotplugAfterRestart(id: string, limitAfter: number): Promise<void> {
    const again = await leaseById(lease.id);
    assert.equal(again.pid, vm.pid, 're-adopted: the same QEMU');
    const add = ctl('hotplug', lease.id, '--qmp', vm.qmp, '--memory', '64M', '--id', id);
    assert.equal(add.status, 0, `iommufdctl hotplug after the restart: ${add.out}`);
    const now = await leaseById(lease.id);
    assert.equal(now.limitBytes, limitAfter, 'the lease was raised by the DIMM');
    assert.deepEqual(memlock(vm.pid), { soft: limitAfter, hard: limitAfter });
    assert.equal(kB(vm.pid, 'VmPin') - pinned, 64 * 1024, 'QEMU mapped the DIMM: VmPin grew by 64 MiB');
    assert.equal(now.fdPinnedBytes, fdPinned + 64 * MiB, 'and the FD holds it: fdPinnedBytes grew by 64 MiB');
    pinned += 64 * 1024;
    fdPinned += 64 * MiB;
    const status = await broker((c) => c.status());
    assert.deepEqual(status.backend?.notResizable, [], 'Status.backend.notResizable');
    assert.equal(now.resizable, undefined, 'resizable');
    const store = fdStore();
    assert.deepEqual(store.entries.map((e) => e.name), [`lease-${lease.id}`], `systemd-analyze fdstore: ${store.raw}`);
  }

  test('SIGKILL of the daemon (systemctl kill -s KILL): systemd restarts it, it takes the FD back, a Resize up binds (a hotplug needing it succeeds)', T, async () => {
    const before = unitProps(SERVICE, 'NRestarts', 'MainPID');
    const kill = sh('systemctl', ['kill', '-s', 'KILL', SERVICE]);
    assert.equal(kill.status, 0, kill.stderr);
    await restarted(Number(before.MainPID));
    assert.equal(Number(unitProps(SERVICE, 'NRestarts').NRestarts), Number(before.NRestarts) + 1, 'a crash restart (Restart=on-failure)');
    await hotplugAfterRestart('dimm1', 129 * MiB);
  });

  test('systemctl restart (FileDescriptorStorePreserve=yes): the FD survives the stop, the lease stays resizable', T, async () => {
    const oldPid = mainPid();
    const r = sh('systemctl', ['restart', SERVICE]);
    assert.equal(r.status, 0, r.stderr);
    await restarted(oldPid);
    await hotplugAfterRestart('dimm2', 193 * MiB);
  });
});

test('a QEMU holding CAP_IPC_LOCK (accepted on per-fd) is bound by its FD: VmLck stays 0, a hotplug without the raise aborts it with ENOMEM', T, async (t) => {
  assert.match(readFileSync(POLICY, 'utf8'), /^allowIpcLock = false/m, 'the packaged policy refuses CAP_IPC_LOCK targets on the memlock backend');
  t.after(await setOverhead('1M', MiB));
  const vm = await startVm({ name: 'vm-ipclock', memory: '64M,slots=2,maxmem=512M', leaseMemory: '64M', vfio: true, ipcLock: true });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, `QEMU did not come up:\n${vm.output()}`);
  assert.equal(BigInt(`0x${procStatus(vm.pid).CapEff ?? ''}`) & CAP_IPC_LOCK, CAP_IPC_LOCK, 'QEMU holds CAP_IPC_LOCK');
  const lease = await leaseNamed('vm-ipclock');
  assert.equal(lease.accountingMode, 'fd');
  assert.equal(lease.limitBytes, 65 * MiB);
  assert.deepEqual(memlock(vm.pid), { soft: 65 * MiB, hard: 65 * MiB }, 'the broker set RLIMIT_MEMLOCK too');
  // iommufd counts every pin in VmPin (mm->pinned_vm), but charges a CAP_IPC_LOCK mapper
  // nothing in VmLck (locked_vm, what RLIMIT_MEMLOCK is checked against): the rlimit cannot bind it.
  assert.equal(kB(vm.pid, 'VmPin') * 1024, RAM_AND_BIOS, 'QEMU pinned its RAM and BIOS');
  assert.equal(kB(vm.pid, 'VmLck'), 0, 'and none of it is charged against RLIMIT_MEMLOCK');
  assert.equal(lease.fdPinnedBytes, RAM_AND_BIOS, 'its FD counts every pin');
  // With the raise, a DIMM maps (and still nothing is charged to the process).
  const up = await broker((c) => c.resize(lease.id, 128 * MiB));
  assert.equal(up.lease.limitBytes, 129 * MiB);
  await qmp(vm, async (c) => {
    await c.execute('object-add', { 'qom-type': 'memory-backend-ram', id: 'mem1', size: 64 * MiB });
    await c.execute('device_add', { driver: 'pc-dimm', id: 'dimm1', memdev: 'mem1' });
  });
  assert.equal((await leaseById(lease.id)).fdPinnedBytes, RAM_AND_BIOS + 64 * MiB, 'the DIMM is mapped, counted by the FD');
  assert.equal(kB(vm.pid, 'VmPin') * 1024, RAM_AND_BIOS + 64 * MiB);
  assert.equal(kB(vm.pid, 'VmLck'), 0, 'still nothing charged against RLIMIT_MEMLOCK');
  // Without one, the next DIMM's DMA map is refused by the FD's limit: QEMU aborts.
  await qmp(vm, async (c) => {
    await c.execute('object-add', { 'qom-type': 'memory-backend-ram', id: 'mem2', size: 64 * MiB });
    await c.execute('device_add', { driver: 'pc-dimm', id: 'dimm2', memdev: 'mem2' }).catch(() => undefined); // QEMU dies before it answers
  }).catch(() => undefined);
  const end = await vm.exited;
  const out = vm.output();
  assert.equal(end.signal, 'SIGABRT', `QEMU aborted:\n${out}`);
  assert.match(out, /vfio_container_dma_map\(.*0x4000000.*\) = -12 \(Cannot allocate memory\)/, 'the DIMM\'s map got ENOMEM');
  assert.match(out, /vfio: DMA mapping failed, unable to continue/);
});
