// The broker as systemd runs it, installed from its Debian package (issue #11, item 2): socket
// activation, its own user with exactly CAP_SYS_RESOURCE and NoNewPrivs, DeviceAllow letting
// /dev/iommu and the VFIO device cdevs (char-vfio-dev: the broker hands them out) through and
// refusing every other device (char or block) with EPERM, READY=1 and its status line seen by
// systemd; the backend the probe chose is the booted kernel's (memlock, or per-fd on the
// patched kernel).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, rmSync, statSync } from 'node:fs';
import { SERVICE, broker, labKernel, mainPid, procStatus, sh, unitProps } from '../harness/system.ts';

const CAP_SYS_RESOURCE = 1n << 24n;
const T = { timeout: 600_000 };

test('the package enabled both sockets; nothing started the service yet', T, () => {
  for (const s of ['iommufd-broker.socket', 'iommufd-broker-admin.socket']) {
    assert.equal(sh('systemctl', ['is-enabled', s]).stdout.trim(), 'enabled', `${s} enabled by the postinst`);
    assert.equal(sh('systemctl', ['is-active', s]).stdout.trim(), 'active', `${s} listening`);
  }
  assert.equal(unitProps(SERVICE, 'ActiveState').ActiveState, 'inactive', 'socket activation: no client has connected yet');
  assert.match(readFileSync('/usr/bin/iommufdctl', 'utf8').slice(0, 200), /^#!\/usr\/bin\/env node/, 'iommufdctl on PATH from the package');
  assert.equal(sh('dpkg-query', ['-W', '-f=${Status}', 'iommufd-broker']).stdout, 'install ok installed');
});

test('the first connection starts the service; systemd saw READY=1 and the status line', T, async () => {
  const status = await broker((c) => c.status());
  assert.equal(status.device.kind, 'iommufd', 'the real /dev/iommu, never the simulated device');
  assert.equal(status.device.path, '/dev/iommu');
  assert.equal(status.device.rlimitModeSupported, true);
  assert.equal(status.capabilities.sysResource, true);
  // The backend the broker's own probe chose, by the kernel this boot runs (test/hostlab/run).
  assert.equal(status.backend?.kind, labKernel() === 'patched' ? 'per-fd' : 'memlock', `on the ${labKernel()} kernel: ${JSON.stringify(status.backend)}`);
  const p = unitProps(SERVICE, 'ActiveState', 'SubState', 'StatusText', 'TriggeredBy', 'Type', 'NRestarts');
  assert.equal(p.ActiveState, 'active');
  assert.equal(p.SubState, 'running', 'Type=notify: running only after READY=1');
  assert.ok((p.StatusText ?? '').length > 0, 'STATUS= reached systemd');
  assert.match(p.TriggeredBy ?? '', /iommufd-broker\.socket/);
});

test('the daemon runs as its own user, CapEff/CapPrm/CapBnd/CapAmb exactly CAP_SYS_RESOURCE, NoNewPrivs, seccomp', T, () => {
  const pid = mainPid();
  assert.ok(pid > 0);
  const s = procStatus(pid);
  const uid = sh('id', ['-u', 'iommufd-broker']).stdout.trim();
  assert.deepEqual((s.Uid ?? '').split(/\s+/), [uid, uid, uid, uid], 'real, effective, saved, fs uid');
  for (const f of ['CapEff', 'CapPrm', 'CapBnd', 'CapAmb']) assert.equal(BigInt(`0x${s[f] ?? ''}`), CAP_SYS_RESOURCE, `${f} = ${s[f] ?? '?'}`);
  assert.equal(BigInt(`0x${s.CapInh ?? ''}`) & ~CAP_SYS_RESOURCE, 0n);
  assert.equal(s.NoNewPrivs, '1');
  assert.equal(s.Seccomp, '2', 'SystemCallFilter= is in force');
});

test('DeviceAllow: inside the service\'s cgroup and mounts /dev/iommu and the VFIO cdevs open, other real devices and a disk\'s node are refused (EPERM)', T, (t) => {
  const pid = mainPid();
  const cgroup = readFileSync(`/proc/${pid}/cgroup`, 'utf8').trim().replace(/^0::/, '');
  assert.match(cgroup, /iommufd-broker\.service$/);
  // The lab kernel has no block layer (CONFIG_BLOCK is off, the root is 9p), so no disk exists.
  // A node for the first SCSI disk (block 8:0, /dev/sda's numbers) shows what the unit's device
  // program does with one: outside the unit the open gets as far as the kernel's block device
  // lookup (ENXIO: no driver); inside, the cgroup refuses it (EPERM) before that.
  const disk = '/dev/hostlab-disk-sda';
  rmSync(disk, { force: true });
  const made = sh('mknod', ['-m', '0600', disk, 'b', '8', '0']);
  assert.equal(made.status, 0, made.stderr);
  t.after(() => rmSync(disk, { force: true }));
  const devices = ['/dev/iommu', '/dev/vfio/vfio', '/dev/vfio/devices/vfio0', '/dev/vfio/devices/vfio1', '/dev/ttyS0', disk];
  // Each exists (bash's <> would create a missing one as a plain file) and is a device node.
  for (const d of devices) assert.ok(existsSync(d) && (statSync(d).isCharacterDevice() || statSync(d).isBlockDevice()), `${d} is a device node`);
  // A root shell with every capability moves itself into the service's cgroup and enters its mount
  // namespace, so only the unit's device policy (a cgroup BPF program) can refuse an open; each
  // refusal is reported with its errno text.
  const probe = (inService: boolean): Record<string, string> => {
    const opens = devices.map((d) => `if err=$( (exec 3<>${d}) 2>&1 ); then echo "${d}=ok"; else echo "${d}=\${err##*: }"; fi`).join('; ');
    const script = inService ? `echo $$ > /sys/fs/cgroup${cgroup}/cgroup.procs && exec nsenter -t ${pid} -m -- bash -c '${opens}'` : opens;
    const r = sh('bash', ['-c', script]);
    assert.equal(r.status, 0, r.stderr);
    return Object.fromEntries(r.stdout.trim().split('\n').map((l) => [l.slice(0, l.indexOf('=')), l.slice(l.indexOf('=') + 1)]));
  };
  assert.deepEqual(probe(false), { ...Object.fromEntries(devices.map((d) => [d, 'ok'])), [disk]: 'No such device or address' },
    'as root outside the unit every device opens, and the disk node reaches the kernel (no block driver: ENXIO)');
  const refused = 'Operation not permitted';
  assert.deepEqual(probe(true), {
    '/dev/iommu': 'ok', '/dev/vfio/devices/vfio0': 'ok', '/dev/vfio/devices/vfio1': 'ok',
    '/dev/vfio/vfio': refused, '/dev/ttyS0': refused, [disk]: refused,
  }, 'the unit allows /dev/iommu and char-vfio-dev (the device cdevs), not the legacy VFIO container, a tty or a disk');
});
