// Leases across the process lives of QEMU and of the broker (issue #11, items 2 and 3): a
// SIGKILLed QEMU's lease ends and gives its budget back, with an audit line in the journal;
// `systemctl restart` with live leases re-adopts them all; a stopped event loop (SIGSTOP) is
// killed by systemd's watchdog and restarted, and the leases are re-adopted again.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MiB, SERVICE, broker, journal, mainPid, memlock, overheadBytes, sh, unitProps, waitFor } from '../harness/system.ts';
import { EDU_ALLOWED, qmpReady, startVm, type Vm } from '../harness/vm.ts';

const T = { timeout: 900_000 };

test('SIGKILL of QEMU ends its lease, returns its budget, and the journal has the audit line', T, async (t) => {
  const before = (await broker((c) => c.status())).budget.usedBytes;
  const vm = await startVm({ name: 'vm-kill', memory: '64M', leaseMemory: '64M', vfio: true });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, vm.output());
  const lease = (await broker((c) => c.list())).leases.find((l) => l.name === 'vm-kill');
  assert.ok(lease !== undefined);
  assert.equal((await broker((c) => c.status())).budget.usedBytes, before + lease.limitBytes);
  process.kill(vm.pid, 'SIGKILL');
  await vm.exited;
  await waitFor('the lease to end', 120, async () => !(await broker((c) => c.list())).leases.some((l) => l.id === lease.id));
  assert.equal((await broker((c) => c.status())).budget.usedBytes, before, 'the budget is back');
  const audit = journal().filter((e) => e.audit === 'release' && JSON.stringify(e).includes(lease.id));
  assert.equal(audit.length, 1, 'one audit line for the release in journalctl -u iommufd-broker');
});

async function twoLiveVms(t: { after: (fn: () => Promise<void>) => void }): Promise<Vm[]> {
  const vms: Vm[] = [];
  for (const [name, vfio] of [['vm-a', true], ['vm-b', false]] as const) {
    const vm = await startVm({ name, memory: '64M', leaseMemory: '64M', vfio });
    t.after(() => vm.stop());
    assert.equal(await qmpReady(vm), true, vm.output());
    vms.push(vm);
  }
  return vms;
}

/** The leases of the VMs, in the VMs' order (vm-a's first). */
async function leaseIds(vms: Vm[]): Promise<string[]> {
  const leases = (await broker((c) => c.list())).leases;
  return vms.map((v) => leases.find((l) => l.pid === v.pid)?.id ?? `(no lease for pid ${v.pid})`);
}

async function assertReadopted(ids: string[], vms: Vm[]): Promise<void> {
  const after = (await broker((c) => c.list())).leases;
  assert.deepEqual(after.map((l) => l.id).filter((id) => ids.includes(id)).sort(), [...ids].sort(), 'every lease re-adopted');
  assert.deepEqual(after.find((l) => l.id === ids[0])?.devices?.map((d) => d.address), [EDU_ALLOWED], 'vm-a\'s lease still holds its device (journaled)');
  // Still live: a Resize reaches each QEMU's limit.
  const overhead = await overheadBytes();
  for (const [i, vm] of vms.entries()) {
    const id = ids[i] ?? '';
    await broker((c) => c.resize(id, (80 + i) * MiB));
    assert.deepEqual(memlock(vm.pid), { soft: (80 + i) * MiB + overhead, hard: (80 + i) * MiB + overhead });
  }
}

test('systemctl restart with live leases re-adopts them all; they stay resizable', T, async (t) => {
  const vms = await twoLiveVms(t);
  const ids = await leaseIds(vms);
  assert.equal(ids.length, 2);
  const oldPid = mainPid();
  const r = sh('systemctl', ['restart', SERVICE]);
  assert.equal(r.status, 0, r.stderr);
  assert.notEqual(mainPid(), oldPid, 'a new daemon');
  await assertReadopted(ids, vms);
});

test('SIGSTOP of the daemon: the watchdog kills it, systemd restarts it, the leases are re-adopted', T, async (t) => {
  const vms = await twoLiveVms(t);
  const ids = await leaseIds(vms);
  const before = unitProps(SERVICE, 'NRestarts', 'MainPID', 'WatchdogUSec');
  assert.ok(Number(before.WatchdogUSec) > 0 || /s$/.test(before.WatchdogUSec ?? ''), `WatchdogSec is set: ${before.WatchdogUSec}`);
  process.kill(Number(before.MainPID), 'SIGSTOP');
  const restarted = await waitFor('systemd to restart the stopped daemon', 300, () => {
    const now = unitProps(SERVICE, 'NRestarts', 'MainPID', 'ActiveState', 'SubState');
    return Number(now.NRestarts) > Number(before.NRestarts) && now.SubState === 'running' && now.MainPID !== '0' ? now : undefined;
  });
  assert.notEqual(restarted.MainPID, before.MainPID);
  const log = sh('journalctl', ['-u', SERVICE, '--no-pager', '-o', 'cat']).stdout;
  assert.match(log, /Watchdog timeout/, 'systemd says why it killed the daemon');
  await assertReadopted(ids, vms);
});
