// systemd/install outside a running system: in a chroot or an image build, where udevadm and
// systemctl are installed but neither udev nor systemd runs, it must still finish (issue #11:
// it exited 1 at `udevadm control --reload` under set -e), and --root DIR sets up users and
// directories inside DIR with systemd's own tools, touching nothing outside it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, cpSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const STUBS = ['systemd-sysusers', 'systemd-tmpfiles', 'udevadm', 'systemctl'];

/** Copies a host program and the shared libraries ldd names into the same paths under `root`. */
function copyProgram(root: string, program: string): void {
  const paths = [program, ...execFileSync('ldd', [program], { encoding: 'utf8' }).split('\n')
    .map((l) => /(\/\S+) \(0x/.exec(l)?.[1]).filter((p): p is string => p !== undefined)];
  for (const p of paths) {
    mkdirSync(join(root, dirname(p)), { recursive: true });
    copyFileSync(p, join(root, p));
    chmodSync(join(root, p), 0o755);
  }
}

/**
 * A chroot with /dev/null, bash, the coreutils the script uses, the project's systemd/ directory at /src,
 * and stubs for systemd's and udev's tools that log each call to /calls. The udevadm and
 * systemctl stubs fail as the real ones do when udev and systemd are not running.
 */
function chrootWithStubs(): string {
  const root = mkdtempSync(join(tmpdir(), 'iommufd-install-chroot-'));
  for (const p of ['/usr/bin/bash', '/usr/bin/dirname', '/usr/bin/install', '/usr/bin/ln']) copyProgram(root, p);
  mkdirSync(join(root, 'bin'), { recursive: true });
  copyFileSync(join(root, 'usr/bin/bash'), join(root, 'bin/bash'));
  chmodSync(join(root, 'bin/bash'), 0o755);
  for (const stub of STUBS) {
    const fails = stub === 'udevadm' ? 'echo "Failed to send reload request: No such file or directory" >&2; exit 1'
      : stub === 'systemctl' ? 'echo "System has not been booted with systemd as init system (PID 1). Can\'t operate." >&2; exit 1' : 'exit 0';
    writeFileSync(join(root, 'usr/bin', stub), `#!/bin/bash\necho "${stub} $*" >>/calls\n${fails}\n`, { mode: 0o755 });
  }
  cpSync(join(REPO, 'systemd'), join(root, 'src/systemd'), { recursive: true });
  // A chroot made by debootstrap has its /dev/null, which the script redirects to.
  mkdirSync(join(root, 'dev'));
  execFileSync('mknod', ['-m', '0666', join(root, 'dev/null'), 'c', '1', '3']);
  return root;
}

test('in a chroot (udevadm and systemctl installed, neither udev nor systemd running) install finishes without touching them', () => {
  const root = chrootWithStubs();
  try {
    const r = spawnSync('chroot', [root, '/bin/bash', '/src/systemd/install'], { encoding: 'utf8', env: { PATH: '/usr/sbin:/usr/bin:/sbin:/bin' } });
    assert.equal(r.error, undefined, 'chroot(8) runs');
    assert.equal(r.status, 0, `install exited ${String(r.status)} in the chroot: ${r.stderr}`);
    const calls = readFileSync(join(root, 'calls'), 'utf8').trim().split('\n');
    assert.deepEqual(calls, ['systemd-sysusers iommufd-broker.conf', 'systemd-tmpfiles --create iommufd-broker.conf'],
      'users and directories are created; udev and systemd, not running, are left alone');
    assert.match(r.stdout, /systemd is not running here: enable with systemctl enable iommufd-broker\.socket/);
    for (const unit of ['iommufd-broker.service', 'iommufd-broker.socket', 'iommufd-broker-admin.socket']) {
      assert.ok(statSync(join(root, 'usr/lib/systemd/system', unit)).isFile(), unit);
    }
    for (const cmd of ['iommufd-brokerd', 'iommufdctl']) {
      assert.equal(readlinkSync(join(root, 'usr/bin', cmd)), `../lib/iommufd-broker/bin/${cmd}`, `${cmd} is on PATH`);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('--root DIR creates the users and directories inside DIR with systemd-sysusers/-tmpfiles, and stops there', () => {
  const root = mkdtempSync(join(tmpdir(), 'iommufd-install-root-'));
  try {
    mkdirSync(join(root, 'etc'));
    writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    writeFileSync(join(root, 'etc/group'), 'root:x:0:\n');
    const r = spawnSync('bash', [join(REPO, 'systemd/install'), '--root', root], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`installed into ${root}; enable there with: systemctl --root=${root} enable`));
    const passwd = readFileSync(join(root, 'etc/passwd'), 'utf8');
    const uid = /^iommufd-broker:x:(\d+):/m.exec(passwd)?.[1];
    assert.ok(uid !== undefined, `no iommufd-broker user in ${root}/etc/passwd:\n${passwd}`);
    assert.match(readFileSync(join(root, 'etc/group'), 'utf8'), /^iommufd:x:\d+:$/m);
    const state = statSync(join(root, 'var/lib/iommufd-broker'));
    assert.equal(state.mode & 0o7777, 0o700);
    assert.equal(state.uid, Number(uid), 'the journal directory belongs to the daemon\'s user of DIR');
    assert.ok(lstatSync(join(root, 'usr/bin/iommufdctl')).isSymbolicLink());
    assert.equal(existsSync(join(root, 'etc/iommufd-broker/policy.toml')), true);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('--destdir and --root together are a usage error', () => {
  const r = spawnSync('bash', [join(REPO, 'systemd/install'), '--destdir', tmpdir(), '--root', tmpdir()], { encoding: 'utf8' });
  assert.equal(r.status, 2);
  assert.match(r.stderr, /exclude each other/);
});
