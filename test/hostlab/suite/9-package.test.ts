// The Debian package's life on a running system (issue #11, "installs, upgrades and purges
// cleanly"): version N was installed with apt by test/hostlab/run; N+1 (the same tree built with
// `scripts/package --version N+hostlab1`) waits in DEBS. Upgrade with a live lease and an
// admin's edit of the conffile, then purge. Runs last: after the purge there is no broker.
//
// Invariants:
// - apt runs offline (no sources at all), as in run's install step: every Depends is in the root.
// - "Left after purge" is judged against dpkg's own file list taken before the purge, plus the
//   state the maintainer scripts create (journal directory, enablement links, runtime sockets);
//   the system users and groups are expected to stay (Debian keeps them).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { appendFileSync, existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { MiB, POLICY, SERVICE, broker, mainPid, memlock, sh, unitProps } from '../harness/system.ts';
import { qmpReady, startVm } from '../harness/vm.ts';

const T = { timeout: 900_000 };
const DEBS = '/srv/hostlab-debs';
const SOCKETS = ['iommufd-broker.socket', 'iommufd-broker-admin.socket'];
const OFFLINE = ['-o', 'Dir::Etc::SourceList=/dev/null', '-o', 'Dir::Etc::SourceParts=/dev/null'];

function apt(...args: string[]): { status: number | null; out: string } {
  const r = sh('env', ['DEBIAN_FRONTEND=noninteractive', 'apt-get', '-y', ...OFFLINE, ...args]);
  return { status: r.status, out: r.stdout + r.stderr };
}

function installedVersion(): string | undefined {
  const r = sh('dpkg-query', ['-W', '-f=${Status} ${Version}', 'iommufd-broker']);
  return r.status === 0 && r.stdout.startsWith('install ok installed ') ? r.stdout.slice('install ok installed '.length) : undefined;
}

test('upgrade to N+1 with a live lease: the edited conffile is kept, the sockets stay enabled, the daemon is restarted and re-adopts the lease', T, async (t) => {
  const debs = readdirSync(DEBS).filter((f) => f.endsWith('.deb'));
  assert.equal(debs.length, 1, `one N+1 package in ${DEBS}: ${debs.join(', ')}`);
  const next = /^iommufd-broker_([^_]+)_/.exec(debs[0] ?? '')?.[1];
  const before = installedVersion();
  assert.ok(before !== undefined && next !== undefined && next !== before, `N=${String(before)} N+1=${String(next)}`);
  assert.equal(sh('dpkg', ['--compare-versions', next, 'gt', before]).status, 0, `${next} is newer than ${before}`);

  const vm = await startVm({ name: 'vm-upgrade', memory: '64M', leaseMemory: '64M', vfio: true });
  t.after(() => vm.stop());
  assert.equal(await qmpReady(vm), true, vm.output());
  const lease = (await broker((c) => c.list())).leases.find((l) => l.name === 'vm-upgrade');
  assert.ok(lease !== undefined);
  const edit = '\n# hostlab: an administrator\'s edit, which an upgrade must keep\n';
  appendFileSync(POLICY, edit);
  const policy = readFileSync(POLICY, 'utf8');
  const oldPid = mainPid();
  assert.ok(oldPid > 0, 'the daemon runs before the upgrade');

  const r = apt('install', join(DEBS, debs[0] ?? ''));
  assert.equal(r.status, 0, `apt-get install ./N+1: ${r.out}`);
  assert.equal(installedVersion(), next, 'dpkg lists N+1');
  assert.equal(readFileSync(POLICY, 'utf8'), policy, 'the conffile is the administrator\'s, byte for byte');
  assert.deepEqual(readdirSync('/etc/iommufd-broker').filter((f) => f !== 'policy.toml'), [], 'no .dpkg-dist/.dpkg-old beside it');
  for (const s of SOCKETS) {
    assert.equal(sh('systemctl', ['is-enabled', s]).stdout.trim(), 'enabled', `${s} still enabled`);
    assert.equal(sh('systemctl', ['is-active', s]).stdout.trim(), 'active', `${s} still listening`);
  }
  const status = await broker((c) => c.status());
  assert.equal(status.version, next, 'the running daemon is N+1');
  assert.notEqual(mainPid(), oldPid, 'the postinst restarted the running daemon');
  assert.equal(unitProps(SERVICE, 'SubState').SubState, 'running');
  const kept = (await broker((c) => c.list())).leases.find((l) => l.id === lease.id);
  assert.ok(kept !== undefined, 'the lease survived the upgrade (re-adopted from the journal)');
  assert.equal(kept.pid, vm.pid);
  const resized = await broker((c) => c.resize(lease.id, 96 * MiB));
  assert.equal(resized.lease.limitBytes, lease.limitBytes + 32 * MiB);
  assert.deepEqual(memlock(vm.pid), { soft: resized.lease.limitBytes, hard: resized.lease.limitBytes }, 'and it is still enforced');
});

test('purge: the service and sockets stop, no file of the package or its state is left, the system users stay', T, () => {
  const listed = sh('dpkg', ['-L', 'iommufd-broker']);
  assert.equal(listed.status, 0, listed.stderr);
  const files = listed.stdout.split('\n').filter((p) => p !== '' && existsSync(p) && !statSync(p).isDirectory());
  assert.ok(files.includes('/usr/bin/iommufdctl') && files.includes(POLICY), 'dpkg -L lists the package\'s files');
  const r = apt('purge', 'iommufd-broker');
  assert.equal(r.status, 0, `apt-get purge: ${r.out}`);
  assert.notEqual(sh('dpkg-query', ['-W', 'iommufd-broker']).status, 0, 'dpkg has no record of the package');
  assert.deepEqual(files.filter((p) => existsSync(p)), [], 'every file the package installed is gone');
  const state = ['/etc/iommufd-broker', '/var/lib/iommufd-broker', '/run/iommufd-broker/broker.sock', '/run/iommufd-broker/admin.sock',
    ...SOCKETS.map((s) => `/etc/systemd/system/sockets.target.wants/${s}`)];
  assert.deepEqual(state.filter((p) => existsSync(p)), [], 'no conffile directory, journal, sockets or enablement links');
  for (const helper of ['/var/lib/systemd/deb-systemd-helper-enabled', '/var/lib/systemd/deb-systemd-helper-masked']) {
    const remembered = existsSync(helper) ? sh('find', [helper, '-name', 'iommufd-broker*']).stdout.trim() : '';
    assert.equal(remembered, '', `deb-systemd-helper forgot the units (${helper})`);
  }
  for (const s of [SERVICE, ...SOCKETS]) assert.notEqual(sh('systemctl', ['is-active', s]).stdout.trim(), 'active', `${s} stopped`);
  assert.equal(sh('getent', ['passwd', 'iommufd-broker']).status, 0, 'the daemon\'s user is kept');
  for (const g of ['iommufd', 'iommufd-admin']) assert.equal(sh('getent', ['group', g]).status, 0, `group ${g} is kept`);
});
