// scripts/package: the Debian package an operator installs (issue #11). Builds the .deb, reads
// it back with dpkg-deb, installs it into a scratch root the way an image build does
// (dpkg --root with chrootless maintainer scripts: DPKG_ROOT), upgrades it, runs the installed
// commands, purges it, and runs lintian on it. The install under a running systemd, in a chroot
// with `apt install`, is the host lab's (test/hostlab/).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
const ARCH = execFileSync('dpkg', ['--print-architecture'], { encoding: 'utf8' }).trim();
const LIB = 'usr/lib/iommufd-broker';
const SOCKETS = ['iommufd-broker.socket', 'iommufd-broker-admin.socket'];

let work = '';
let deb = '';

function run(cmd: string, args: readonly string[], env: NodeJS.ProcessEnv = process.env): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', env, timeout: 300_000 });
  if (r.error !== undefined) throw new Error(`${cmd} could not run: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function buildDeb(out: string, version?: string): string {
  const r = run('bash', [join(REPO, 'scripts/package'), '--out', out, ...(version === undefined ? [] : ['--version', version])]);
  assert.equal(r.status, 0, `scripts/package failed: ${r.stderr}`);
  return r.stdout.trim();
}

/** dpkg on the scratch root, maintainer scripts run outside it with DPKG_ROOT (as mmdebstrap does). */
function dpkg(root: string, args: readonly string[]): { status: number | null; stdout: string; stderr: string } {
  return run('dpkg', [`--root=${root}`, '--force-script-chrootless', '--force-depends', '--log=/dev/null', ...args],
    { ...process.env, PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' });
}

function scratchRoot(): string {
  const root = mkdtempSync(join(work, 'root-'));
  for (const d of ['var/lib/dpkg/info', 'var/lib/dpkg/updates', 'etc']) mkdirSync(join(root, d), { recursive: true });
  writeFileSync(join(root, 'var/lib/dpkg/status'), '');
  writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  writeFileSync(join(root, 'etc/group'), 'root:x:0:\n');
  return root;
}

before(() => {
  work = mkdtempSync(join(tmpdir(), 'iommufd-package-'));
  deb = buildDeb(work);
});
after(() => rmSync(work, { recursive: true, force: true }));

test('npm run package makes iommufd-broker_<version>_<arch>.deb: control, Depends, conffile', () => {
  assert.equal(deb, join(work, `iommufd-broker_${VERSION}_${ARCH}.deb`));
  const field = (f: string): string => run('dpkg-deb', ['--field', deb, f]).stdout.trim();
  assert.equal(field('Package'), 'iommufd-broker');
  assert.equal(field('Version'), VERSION);
  assert.equal(field('Architecture'), ARCH);
  const depends = field('Depends').split(/,\s*/);
  assert.ok(depends.includes('nodejs (>= 20)'), `Depends on Debian's nodejs: ${field('Depends')}`);
  assert.ok(depends.some((d) => d.startsWith('libc6 (>= ')), 'the native helper\'s shared libraries (dpkg-shlibdeps)');
  assert.ok(depends.some((d) => d.startsWith('systemd | systemd-standalone-sysusers')), 'the postinst\'s systemd-sysusers');
  const control = mkdtempSync(join(work, 'control-'));
  assert.equal(run('dpkg-deb', ['--control', deb, control]).status, 0);
  assert.equal(readFileSync(join(control, 'conffiles'), 'utf8'), '/etc/iommufd-broker/policy.toml\n');
  for (const s of ['postinst', 'prerm', 'postrm']) {
    assert.equal(statSync(join(control, s)).mode & 0o777, 0o755, `${s} is executable`);
    assert.equal(run('sh', ['-n', join(control, s)]).status, 0, `${s} parses`);
  }
});

test('the .deb holds the bundles, the native helper, the units and their files, and no TypeScript', () => {
  const listing = run('dpkg-deb', ['--contents', deb]).stdout;
  const paths = listing.split('\n').filter(Boolean).map((l) => (/ \.\/(\S*)/.exec(l)?.[1] ?? '').replace(/\/$/, ''));
  for (const p of [`${LIB}/dist/iommufd-brokerd.mjs`, `${LIB}/dist/iommufdctl.cjs`, `${LIB}/build/Release/iommufd_native.node`,
    `${LIB}/bin/iommufd-brokerd`, `${LIB}/bin/iommufdctl`, `${LIB}/bin/launch.cjs`, `${LIB}/bin/package.json`, `${LIB}/package.json`,
    `${LIB}/node_modules/unix-dgram/build/Release/unix_dgram.node`, `${LIB}/node_modules/bindings/bindings.js`,
    'usr/lib/systemd/system/iommufd-broker.service', 'usr/lib/systemd/system/iommufd-broker.socket',
    'usr/lib/systemd/system/iommufd-broker-admin.socket', 'usr/lib/sysusers.d/iommufd-broker.conf',
    'usr/lib/tmpfiles.d/iommufd-broker.conf', 'usr/lib/udev/rules.d/70-iommufd-broker.rules',
    'etc/iommufd-broker/policy.toml', 'usr/bin/iommufd-brokerd', 'usr/bin/iommufdctl', 'usr/share/doc/iommufd-broker/copyright']) {
    assert.ok(paths.includes(p), `${p} is in the package`);
  }
  assert.deepEqual(paths.filter((p) => p.endsWith('.ts')), [], 'no TypeScript: the bundles run');
  assert.match(listing, /^-.* root\/root .*\.\/etc\/iommufd-broker\/policy\.toml$/m, 'files are root:root');
});

test('installs into an image root (chrootless, DPKG_ROOT), upgrades keeping an edited policy, purges', () => {
  const root = scratchRoot();
  const inst = dpkg(root, ['--install', deb]);
  assert.equal(inst.status, 0, `dpkg --install: ${inst.stderr}`);
  // postinst: users and groups, the state directory, both sockets enabled the Debian way.
  const uid = /^iommufd-broker:x:(\d+):/m.exec(readFileSync(join(root, 'etc/passwd'), 'utf8'))?.[1];
  assert.ok(uid !== undefined, 'systemd-sysusers created the daemon\'s user in the root');
  assert.match(readFileSync(join(root, 'etc/group'), 'utf8'), /^iommufd:x:\d+:/m);
  const state = statSync(join(root, 'var/lib/iommufd-broker'));
  assert.equal(state.mode & 0o7777, 0o700);
  assert.equal(state.uid, Number(uid));
  for (const s of SOCKETS) {
    assert.equal(readlinkSync(join(root, 'etc/systemd/system/sockets.target.wants', s)), `/usr/lib/systemd/system/${s}`, `${s} enabled`);
  }
  assert.equal(existsSync(join(root, 'etc/systemd/system/multi-user.target.wants/iommufd-broker.service')), false, 'the service is socket-activated, not enabled');
  // The installed commands run from their bundles (no sources, no tsx in the package).
  const ctl = run(join(root, 'usr/bin/iommufdctl'), ['--help']);
  assert.equal(ctl.status, 0, ctl.stderr);
  assert.match(ctl.stdout, /^usage: iommufdctl /);
  assert.equal(ctl.stderr, '');
  const daemon = run(join(root, 'usr/bin/iommufd-brokerd'), ['--help']);
  assert.equal(daemon.status, 0, daemon.stderr);
  assert.match(daemon.stdout, /^usage: iommufd-brokerd/);
  assert.equal(daemon.stderr, '');
  const unixDgram = run('node', ['-e', `require(${JSON.stringify(join(root, LIB, 'node_modules/unix-dgram'))}).createSocket`]);
  assert.equal(unixDgram.status, 0, `the daemon's sd_notify transport loads from the package: ${unixDgram.stderr}`);

  // Upgrade: a newer version over it; the operator's edit of the conffile stays.
  const policy = join(root, 'etc/iommufd-broker/policy.toml');
  const edited = `${readFileSync(policy, 'utf8')}# edited by the operator\n`;
  writeFileSync(policy, edited);
  const newer = buildDeb(mkdtempSync(join(work, 'newer-')), `${VERSION}+1`);
  const up = dpkg(root, ['--install', newer]);
  assert.equal(up.status, 0, `upgrade: ${up.stderr}`);
  assert.match(dpkg(root, ['-s', 'iommufd-broker']).stdout, new RegExp(`^Version: ${VERSION.replace(/\./g, '\\.')}\\+1$`, 'm'));
  assert.equal(readFileSync(policy, 'utf8'), edited, 'the edited policy is kept on upgrade');
  for (const s of SOCKETS) assert.ok(lstatSync(join(root, 'etc/systemd/system/sockets.target.wants', s)).isSymbolicLink(), `${s} still enabled`);

  // Purge: the tree, the journal directory, the conffile and the enablement go; users stay.
  const purge = dpkg(root, ['--purge', 'iommufd-broker']);
  assert.equal(purge.status, 0, `dpkg --purge: ${purge.stderr}`);
  for (const gone of [LIB, 'var/lib/iommufd-broker', 'etc/iommufd-broker', 'usr/bin/iommufdctl',
    'etc/systemd/system/sockets.target.wants/iommufd-broker.socket', 'usr/lib/systemd/system/iommufd-broker.service']) {
    assert.equal(existsSync(join(root, gone)), false, `${gone} is gone after purge`);
  }
  assert.match(readFileSync(join(root, 'etc/passwd'), 'utf8'), /^iommufd-broker:/m, 'system users are kept (Debian practice)');
  assert.equal(dpkg(root, ['-s', 'iommufd-broker']).status, 1, 'dpkg no longer knows the package');
});

test('lintian: no errors', () => {
  const r = run('lintian', ['--fail-on', 'error', '--tag-display-limit', '0', deb]);
  const errors = r.stdout.split('\n').filter((l) => l.startsWith('E: '));
  assert.deepEqual(errors, [], r.stdout);
  assert.equal(r.status, 0, `${r.stdout}${r.stderr}`);
});
