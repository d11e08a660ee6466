// bin/iommufd-brokerd: the bundle runs only while it is newer than every source it was made
// of; otherwise the sources run through tsx, and stderr says why. Checked on a copy of the
// launcher in a scratch tree whose "bundle" and "sources" only say which one ran, and once
// against the real bundle of this checkout.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerProcess } from '../support/daemon.ts';

const REPO = join(import.meta.dirname, '..', '..');
const LAUNCHER = join(REPO, 'bin', 'iommufd-brokerd');

/** A tree with the launcher, a bundle and sources that print which of them ran, all dated `at`. */
function scratchTree(): string {
  const root = mkdtempSync(join(tmpdir(), 'brokerd-launcher-'));
  for (const dir of ['bin', 'dist', 'daemon/shell', 'protocol', 'native', 'shared']) mkdirSync(join(root, dir), { recursive: true });
  copyFileSync(LAUNCHER, join(root, 'bin', 'iommufd-brokerd'));
  for (const f of ['launch.cjs', 'package.json']) copyFileSync(join(REPO, 'bin', f), join(root, 'bin', f));
  symlinkSync(join(REPO, 'node_modules'), join(root, 'node_modules'));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}\n');
  writeFileSync(join(root, 'package-lock.json'), '{}\n');
  const main = (who: string): string => `export async function main(argv) { console.log('${who}', JSON.stringify(argv)); }\n`;
  writeFileSync(join(root, 'dist', 'iommufd-brokerd.mjs'), main('bundle'));
  writeFileSync(join(root, 'daemon', 'main.ts'), main('sources'));
  writeFileSync(join(root, 'daemon', 'shell', 'service.ts'), '// a source file deeper down\n');
  writeFileSync(join(root, 'protocol', 'errors.ts'), '\n');
  writeFileSync(join(root, 'native', 'binding.ts'), '\n');
  writeFileSync(join(root, 'shared', 'sizes.ts'), '\n');
  return root;
}

function setTime(path: string, seconds: number): void {
  utimesSync(path, seconds, seconds);
}

function launch(root: string): { stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [join(root, 'bin', 'iommufd-brokerd'), '--x'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0, `launcher failed: ${r.stderr}`);
  return { stdout: r.stdout, stderr: r.stderr };
}

const SOURCES = ['daemon/main.ts', 'daemon/shell/service.ts', 'protocol/errors.ts', 'native/binding.ts', 'shared/sizes.ts', 'package-lock.json'];

test('a bundle newer than every source runs, with the arguments, silently', () => {
  const root = scratchTree();
  try {
    for (const s of SOURCES) setTime(join(root, s), 1_000_000);
    setTime(join(root, 'dist', 'iommufd-brokerd.mjs'), 2_000_000);
    assert.deepEqual(launch(root), { stdout: 'bundle ["--x"]\n', stderr: '' });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('any source newer than the bundle, however deep, runs the sources and says why', () => {
  for (const newer of SOURCES) {
    const root = scratchTree();
    try {
      for (const s of SOURCES) setTime(join(root, s), 1_000_000);
      setTime(join(root, 'dist', 'iommufd-brokerd.mjs'), 2_000_000);
      setTime(join(root, newer), 3_000_000);
      const { stdout, stderr } = launch(root);
      assert.equal(stdout, 'sources ["--x"]\n', `${newer} newer than the bundle`);
      assert.match(stderr, /the bundle is older than the sources.*running the TypeScript sources through tsx.*npm run build/s);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  }
});

test('no bundle at all runs the sources and says so', () => {
  const root = scratchTree();
  try {
    rmSync(join(root, 'dist'), { recursive: true });
    const { stdout, stderr } = launch(root);
    assert.equal(stdout, 'sources ["--x"]\n');
    assert.match(stderr, /no bundle/);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('an installed tree (the Debian package: bundle, no TypeScript sources) runs the bundle silently', () => {
  const root = scratchTree();
  try {
    for (const s of ['daemon', 'protocol', 'native', 'package-lock.json']) rmSync(join(root, s), { recursive: true });
    assert.deepEqual(launch(root), { stdout: 'bundle ["--x"]\n', stderr: '' });
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('this checkout\'s bundle is current (npm test builds it) and is what the daemon runs', () => {
  const bundle = join(REPO, 'dist', 'iommufd-brokerd.mjs');
  assert.ok(statSync(bundle, { throwIfNoEntry: false }) !== undefined, 'dist/iommufd-brokerd.mjs exists');
  const r = spawnSync(process.execPath, [LAUNCHER, '--help'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0);
  assert.match(r.stdout, /usage: iommufd-brokerd/);
  assert.equal(r.stderr, '', 'no fallback note: the bundle ran');
  assert.match(execFileSync('node', ['-e', `import(${JSON.stringify(bundle)}).then((m) => console.log(typeof m.main))`], { encoding: 'utf8' }), /^function$/m);
});

test('started as a program (as systemd does), the daemon runs with the shebang\'s V8 flags', async () => {
  const broker = await BrokerProcess.start();
  try {
    const pid = broker.child.pid;
    assert.ok(pid !== undefined);
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    for (const flag of ['--max-semi-space-size=2', '--optimize-for-size']) assert.ok(argv.includes(flag), `${flag} missing from the daemon's argv: ${argv.join(' ')}`);
    assert.ok(argv.some((a) => a.endsWith('bin/iommufd-brokerd')));
  } finally {
    await broker.stop();
    broker.cleanup();
  }
});
