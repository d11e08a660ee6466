// bin/iommufdctl: like the daemon's launcher (bin/launch.cjs), it runs dist/iommufdctl.cjs only
// while that bundle is newer than every source it was made of (cli, client, protocol, native,
// shared, the lock file), else cli/main.ts through tsx with a note on stderr; a tree without sources (the
// Debian package) runs the bundle. Checked on a copy of the launcher in a scratch tree whose
// "bundle" and "sources" only say which one ran, and against this checkout's real bundle.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, statSync, symlinkSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const REPO = join(import.meta.dirname, '..', '..');
const SOURCES = ['cli/main.ts', 'client/deeper/qmp.ts', 'protocol/errors.ts', 'native/binding.ts', 'shared/sizes.ts', 'package-lock.json'];

function scratchTree(): string {
  const root = mkdtempSync(join(tmpdir(), 'iommufdctl-launcher-'));
  for (const dir of ['bin', 'dist', 'cli', 'client/deeper', 'protocol', 'native', 'shared']) mkdirSync(join(root, dir), { recursive: true });
  for (const f of ['iommufdctl', 'launch.cjs', 'package.json']) copyFileSync(join(REPO, 'bin', f), join(root, 'bin', f));
  symlinkSync(join(REPO, 'node_modules'), join(root, 'node_modules'));
  writeFileSync(join(root, 'package.json'), '{"type":"module"}\n');
  writeFileSync(join(root, 'package-lock.json'), '{}\n');
  const body = (who: string): string => `async function runCli(argv) { console.log('${who}', JSON.stringify(argv)); return 7; }\n`;
  // The real bundle is CommonJS (required without the ESM loader); the sources are ESM.
  writeFileSync(join(root, 'dist', 'iommufdctl.cjs'), `${body('bundle')}exports.runCli = runCli;\n`);
  writeFileSync(join(root, 'cli', 'main.ts'), `export ${body('sources')}`);
  for (const s of ['client/deeper/qmp.ts', 'protocol/errors.ts', 'native/binding.ts', 'shared/sizes.ts']) writeFileSync(join(root, s), '\n');
  for (const s of SOURCES) utimesSync(join(root, s), 1_000_000, 1_000_000);
  utimesSync(join(root, 'dist', 'iommufdctl.cjs'), 2_000_000, 2_000_000);
  return root;
}

function launch(root: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(join(root, 'bin', 'iommufdctl'), ['--x'], { encoding: 'utf8', timeout: 30_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

function inScratch(fn: (root: string) => void): void {
  const root = scratchTree();
  try {
    fn(root);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test('a bundle newer than every source runs, silently, and its exit code is the command\'s', () => {
  inScratch((root) => assert.deepEqual(launch(root), { status: 7, stdout: 'bundle ["--x"]\n', stderr: '' }));
});

test('any source newer than the bundle, however deep, runs cli/main.ts through tsx and says why', () => {
  for (const newer of SOURCES) {
    inScratch((root) => {
      utimesSync(join(root, newer), 3_000_000, 3_000_000);
      const r = launch(root);
      assert.equal(r.stdout, 'sources ["--x"]\n', `${newer} newer than the bundle`);
      assert.equal(r.status, 7);
      assert.match(r.stderr, /^iommufdctl: the bundle is older than the sources.*running the TypeScript sources through tsx/s);
    });
  }
});

test('no bundle runs the sources and says so; no sources (the package) runs the bundle', () => {
  inScratch((root) => {
    rmSync(join(root, 'dist'), { recursive: true });
    const r = launch(root);
    assert.equal(r.stdout, 'sources ["--x"]\n');
    assert.match(r.stderr, /^iommufdctl: no bundle/);
  });
  inScratch((root) => {
    for (const s of ['cli', 'client', 'protocol', 'native', 'shared', 'package-lock.json']) rmSync(join(root, s), { recursive: true });
    assert.deepEqual(launch(root), { status: 7, stdout: 'bundle ["--x"]\n', stderr: '' });
  });
});

test('this checkout\'s CLI bundle is current and is what iommufdctl runs', () => {
  assert.ok(statSync(join(REPO, 'dist', 'iommufdctl.cjs'), { throwIfNoEntry: false }) !== undefined, 'dist/iommufdctl.cjs exists (npm run build)');
  const r = spawnSync(join(REPO, 'bin', 'iommufdctl'), ['--help'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^usage: iommufdctl /);
  assert.equal(r.stderr, '', 'no fallback note: the bundle ran');
  const bad = spawnSync(join(REPO, 'bin', 'iommufdctl'), ['--socket', join(tmpdir(), 'no-such-broker.sock'), 'status'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(bad.status, 3, 'the bundle keeps the CLI\'s exit codes: 3 = broker unreachable');
  assert.equal(bad.stderr.includes('running the TypeScript sources'), false);
});

test('the CLI starts without Node\'s ESM loader: launcher and bundle are CommonJS', () => {
  // process.moduleLoadList names Node's internal modules loaded so far: an ESM module graph
  // needs internal/modules/esm/module_job, which a pure CommonJS start never loads.
  const dir = mkdtempSync(join(tmpdir(), 'iommufdctl-esm-probe-'));
  try {
    const probe = join(dir, 'probe.cjs');
    writeFileSync(probe, "process.on('exit', () => process.stderr.write('\\nESM:' + process.moduleLoadList.some((m) => m.includes('esm/module_job'))));\n");
    const r = spawnSync(process.execPath, ['--require', probe, join(REPO, 'bin', 'iommufdctl'), '--help'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^usage: iommufdctl /);
    assert.match(r.stderr, /ESM:false$/);
    const esm = spawnSync(process.execPath, ['--require', probe, '--input-type=module', '-e', 'await 0'], { encoding: 'utf8', timeout: 30_000 });
    assert.match(esm.stderr, /ESM:true$/, 'the probe does see an ESM start');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
