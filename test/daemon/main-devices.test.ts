// The real daemon (bin/iommufd-brokerd, simulated iommufd, --vfio-root on a fake VFIO tree)
// and the real client: an Open with devices gets the iommufd and each device's fd in one reply,
// the lease lists its devices, a second lease is refused the device, the daemon says loudly
// that the VFIO tree is simulated, and --vfio-root without the simulated device never starts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { BrokerClient, BrokerError } from '../../client/index.ts';
import { closeFd, fstatFd, pidfdOpen } from '../../native/sys.ts';
import { splitRdev } from '../../daemon/shell/vfio/resolve.ts';
import { BrokerProcess, DAEMON } from '../support/daemon.ts';
import { canMknod, FakeVfioTree } from '../support/vfio-tree.ts';

const MiB = 1024 ** 2;
const skip = canMknod() ? false : 'needs mknod for the fake cdev nodes';

async function sleeper(): Promise<ChildProcess> {
  const child = spawn('setpriv', ['--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--',
    'sh', '-c', 'echo ready; exec sleep 600'], { stdio: ['ignore', 'pipe', 'inherit'] });
  await once(child.stdout, 'data');
  return child;
}

test('Open with devices through the daemon: one reply carries the iommufd and every device fd', { skip }, async () => {
  const tree = new FakeVfioTree();
  tree.add('0000:00:03.0', { cdevs: ['vfio0'] });
  tree.add('0000:00:04.0', { cdevs: ['vfio1'] });
  const first = await BrokerProcess.start();
  const config = join(first.dir, 'policy.toml');
  await first.stop();
  writeFileSync(config, '[[devices]]\naddress = "0000:00:03.0"\nusers = [0]\n[[devices]]\naddress = "0000:00:04.0"\nvms = ["vm1"]\n', { mode: 0o644 });
  const broker = await BrokerProcess.start({ dir: first.dir, extraArgs: ['--config', config, '--overhead', '1M', '--vfio-root', tree.root] });
  const targets: ChildProcess[] = [];
  const client = await BrokerClient.connect(broker.socket);
  try {
    const warning = await broker.waitForLog((l) => /SIMULATED VFIO DEVICES/.test(l.msg));
    assert.equal(warning.level, 40, 'a warning');
    const t1 = await sleeper();
    targets.push(t1);
    const pidfd = pidfdOpen(t1.pid ?? -1);
    const opened = await client.open({ name: 'vm1', memoryBytes: MiB, targetPidFd: pidfd, devices: ['00:04.0', '0000:00:03.0'] });
    closeFd(pidfd);
    try {
      assert.deepEqual(opened.lease.devices, [{ address: '0000:00:04.0', cdev: 'vfio1' }, { address: '0000:00:03.0', cdev: 'vfio0' }]);
      assert.deepEqual(opened.devices.map((d) => d.address), ['0000:00:04.0', '0000:00:03.0']);
      for (const d of opened.devices) assert.deepEqual(splitRdev(fstatFd(d.fd).rdev), { major: 1, minor: 3 });
    } finally {
      closeFd(opened.fd);
      for (const d of opened.devices) closeFd(d.fd);
    }
    assert.deepEqual((await client.list()).leases[0]?.devices, opened.lease.devices);
    assert.equal((await client.status()).devicesHeld, 2);

    const t2 = await sleeper();
    targets.push(t2);
    const pidfd2 = pidfdOpen(t2.pid ?? -1);
    try {
      await assert.rejects(client.open({ name: 'vm2', memoryBytes: MiB, targetPidFd: pidfd2, devices: ['0000:00:03.0'] }),
        (e: unknown) => e instanceof BrokerError && e.errorName === 'DeviceBusy' && e.parameters.lease === opened.lease.id);
      await assert.rejects(client.open({ name: 'vm2', memoryBytes: MiB, targetPidFd: pidfd2, devices: ['0000:00:05.0'] }),
        (e: unknown) => e instanceof BrokerError && e.errorName === 'PermissionDenied'
          && (e.parameters as { rule: string }).rule === 'device-not-allowed');
    } finally {
      closeFd(pidfd2);
    }
  } finally {
    client.close();
    for (const t of targets) t.kill('SIGKILL');
    await broker.stop();
    broker.cleanup();
    tree.remove();
  }
});

test('--vfio-root without --device simulated: the daemon refuses to start (exit 2), naming why', () => {
  const r = spawnSync(DAEMON, ['--vfio-root', '/tmp', '--socket', '/nonexistent/x.sock'], { encoding: 'utf8', timeout: 60_000 });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--vfio-root is for tests only and needs --device simulated/);
});
