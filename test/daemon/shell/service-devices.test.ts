// BrokerService.open with VFIO devices, in process: a real service (simulated iommufd, journal in
// a temp dir, a fake VFIO tree with real char nodes) and real target processes. A granted Open
// hands each device's fd and records the device; a second lease cannot take it until the first
// one's target exits (Release does not free it); a restart keeps which lease holds it; every
// refusal leaves no fd behind.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { BrokerError } from '../../../protocol/errors.ts';
import { closeFd, fstatFd, pidfdOpen } from '../../../native/sys.ts';
import { createDevice } from '../../../daemon/shell/device.ts';
import { LeaseJournal } from '../../../daemon/shell/journal/journal.ts';
import { BrokerService, type OpenResult } from '../../../daemon/shell/service.ts';
import { splitRdev, vfioRootsUnder } from '../../../daemon/shell/vfio/resolve.ts';
import { ROOT_PEER, testPolicy } from './admin/fixtures.ts';
import { leakedSince, openFds } from '../../support/fds.ts';
import { canMknod, FakeVfioTree } from '../../support/vfio-tree.ts';
import { eventually } from '../../hostile/support/processes.ts';

const MiB = 1024 ** 2;
const A = '0000:00:03.0';
const B = '0000:00:04.0';
const ABSENT = '0000:00:05.0';
const skip = canMknod() ? false : 'needs mknod for the fake cdev nodes';

const policy = testPolicy({
  devices: [A, B, ABSENT].map((address) => Object.freeze({ address, vms: [], users: [0], groups: [] })),
});

let dir: string;
let tree: FakeVfioTree;
const targets: ChildProcess[] = [];

async function target(): Promise<ChildProcess> {
  const child = spawn('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--',
    'sh', '-c', 'echo ready; exec sleep 600'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(child.stdout, 'data');
  targets.push(child);
  return child;
}

function service(state: string): { service: BrokerService; journal: LeaseJournal; leases: ReturnType<typeof LeaseJournal.open>['leases'] } {
  const opened = LeaseJournal.open(state);
  const s = new BrokerService({
    policy, device: createDevice('simulated'), journal: opened.journal, log: pino({ level: 'silent' }),
    haveSysResource: false, version: '0.0.0-test', vfio: vfioRootsUnder(tree.root),
  });
  return { service: s, journal: opened.journal, leases: opened.leases };
}

function closeAll(r: OpenResult): void {
  closeFd(r.fd);
  for (const d of r.devices) closeFd(d.fd);
}

async function refused(p: Promise<unknown>, name: string): Promise<Record<string, unknown>> {
  const e = await p.then(() => undefined, (err: unknown) => err);
  assert.ok(e instanceof BrokerError, `expected ${name}, got ${String(e)}`);
  assert.equal(e.errorName, name, e.message);
  return e.parameters as Record<string, unknown>;
}

describe('BrokerService.open with devices', { skip }, () => {
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'service-devices-'));
    tree = new FakeVfioTree();
    tree.add(A, { cdevs: ['vfio0'] });
    tree.add(B, { cdevs: ['vfio1'] });
  });
  after(() => {
    for (const t of targets) t.kill('SIGKILL');
    tree.remove();
    rmSync(dir, { recursive: true, force: true });
  });

  it('hands each device\'s fd with the iommufd, records it, and keeps it held until the target exits', async () => {
    const { service: s, journal } = service(join(dir, 'a'));
    try {
      const first = await target();
      const granted = await s.open(ROOT_PEER, { name: 'vm1', memoryBytes: MiB, devices: [B, A] }, pidfdOpen(first.pid ?? -1));
      try {
        assert.deepEqual(granted.lease.devices, [{ address: B, cdev: 'vfio1' }, { address: A, cdev: 'vfio0' }]);
        assert.deepEqual(granted.devices.map((d) => d.address), [B, A]);
        for (const d of granted.devices) assert.deepEqual(splitRdev(fstatFd(d.fd).rdev), { major: 1, minor: 3 });
      } finally {
        closeAll(granted);
      }
      assert.equal(s.status().devicesHeld, 2);
      assert.deepEqual(s.list(ROOT_PEER).leases[0]?.devices, granted.lease.devices);

      const second = await target();
      const before = openFds();
      const busy = await refused(s.open(ROOT_PEER, { name: 'vm2', memoryBytes: MiB, devices: [A] }, pidfdOpen(second.pid ?? -1)), 'DeviceBusy');
      assert.deepEqual(busy, { address: A, lease: granted.lease.id });
      assert.deepEqual(leakedSince(before), [], 'the refused call closed its pidfd');

      await s.release(ROOT_PEER, { lease: granted.lease.id });
      await refused(s.open(ROOT_PEER, { name: 'vm2', memoryBytes: MiB, devices: [A] }, pidfdOpen(second.pid ?? -1)), 'DeviceBusy');

      first.kill('SIGKILL');
      await eventually('the target\'s exit frees its devices', () => s.status().devicesHeld === 0);
      const again = await s.open(ROOT_PEER, { name: 'vm2', memoryBytes: MiB, devices: [A] }, pidfdOpen(second.pid ?? -1));
      closeAll(again);
      assert.deepEqual(again.lease.devices, [{ address: A, cdev: 'vfio0' }]);
    } finally {
      s.close();
      journal.close();
    }
  });

  it('a device the host does not have: NoSuchDevice, with every fd the call opened closed and nothing reserved', async () => {
    const { service: s, journal } = service(join(dir, 'b'));
    try {
      const t = await target();
      const before = openFds();
      // A opens fine first; ABSENT then fails: A's fd and the iommufd must both be closed.
      const p = await refused(s.open(ROOT_PEER, { name: 'vm1', memoryBytes: MiB, devices: [A, ABSENT] }, pidfdOpen(t.pid ?? -1)), 'NoSuchDevice');
      assert.deepEqual([p['address'], p['found']], [ABSENT, 'absent']);
      assert.deepEqual(leakedSince(before), []);
      assert.deepEqual([s.status().leases, s.status().devicesHeld, s.status().budget.usedBytes], [0, 0, 0]);
    } finally {
      s.close();
      journal.close();
    }
  });

  it('a device outside the policy: PermissionDenied device-not-allowed, before the host is looked at', async () => {
    const { service: s, journal } = service(join(dir, 'c'));
    try {
      const t = await target();
      const before = openFds();
      const p = await refused(s.open(ROOT_PEER, { name: 'vm1', memoryBytes: MiB, devices: ['0000:00:06.0'] }, pidfdOpen(t.pid ?? -1)), 'PermissionDenied');
      assert.equal(p['rule'], 'device-not-allowed');
      assert.deepEqual(leakedSince(before), []);
    } finally {
      s.close();
      journal.close();
    }
  });

  it('two Opens for one device at once: exactly one gets it (decision and reservation in one synchronous step)', async () => {
    const { service: s, journal } = service(join(dir, 'e'));
    try {
      const [t1, t2] = [await target(), await target()];
      const results = await Promise.allSettled([t1, t2].map((t) => s.open(ROOT_PEER, { name: 'vm', memoryBytes: MiB, devices: [B] }, pidfdOpen(t.pid ?? -1))));
      const granted = results.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
      const refusals = results.flatMap((r) => (r.status === 'rejected' ? [r.reason as unknown] : []));
      for (const g of granted) closeAll(g);
      assert.equal(granted.length, 1);
      assert.ok(refusals[0] instanceof BrokerError && refusals[0].errorName === 'DeviceBusy');
      assert.equal(s.status().devicesHeld, 1);
    } finally {
      s.close();
      journal.close();
    }
  });

  it('a restart keeps which lease holds which device (journaled with the grant)', async () => {
    const state = join(dir, 'd');
    const t = await target();
    const first = service(state);
    const granted = await first.service.open(ROOT_PEER, { name: 'vm1', memoryBytes: MiB, devices: [B] }, pidfdOpen(t.pid ?? -1));
    closeAll(granted);
    first.service.close();
    first.journal.close();

    const second = service(state);
    try {
      assert.deepEqual(second.leases.map((l) => l.devices), [[{ address: B, cdev: 'vfio1' }]]);
      second.service.restore(second.leases);
      assert.deepEqual(second.service.list(ROOT_PEER).leases.map((l) => [l.id, l.devices]), [[granted.lease.id, [{ address: B, cdev: 'vfio1' }]]]);
      const other = await target();
      const busy = await refused(second.service.open(ROOT_PEER, { name: 'vm2', memoryBytes: MiB, devices: [B] }, pidfdOpen(other.pid ?? -1)), 'DeviceBusy');
      assert.equal(busy['lease'], granted.lease.id);
    } finally {
      second.service.close();
      second.journal.close();
    }
  });
});
