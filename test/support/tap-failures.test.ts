// test/support/tap-failures, the labs' "why did it fail" printer: it must show a crashed test
// file's stderr (the case CI once reported as a bare "not ok 6 - <file>") and an assertion's
// message, and print nothing for a passing stream. The TAP comes from a real `node --test`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const SCRIPT = join(import.meta.dirname, 'tap-failures');

/** Runs node --test on the given files (name -> source) and returns the TAP file's path. */
function tapOf(dir: string, files: Record<string, string>): string {
  for (const [name, src] of Object.entries(files)) writeFileSync(join(dir, name), src);
  const tap = join(dir, 'results.tap');
  const env = { ...process.env };
  delete env.NODE_TEST_CONTEXT; // else the inner runner reports to us instead of writing TAP
  const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', '--test-reporter=tap',
    `--test-reporter-destination=${tap}`, ...Object.keys(files).map((f) => join(dir, f))], { env, encoding: 'utf8' });
  assert.notEqual(r.status, null, r.stderr);
  return tap;
}

function failures(tap: string): { status: number | null; stdout: string } {
  const r = spawnSync('bash', [SCRIPT, tap], { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout };
}

test('a file that dies before its tests report: its stderr and exit code are printed', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tap-failures-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const tap = tapOf(dir, {
    'a.test.mjs': "import { test } from 'node:test'; test('fine', () => {});\n",
    'b.test.mjs': "console.error('esbuild service died: EAGAIN'); process.exit(3);\n",
  });
  const r = failures(tap);
  assert.equal(r.status, 0);
  assert.match(r.stdout, /^---- not ok 2 - .*b\.test\.mjs$/m);
  assert.match(r.stdout, /\| # esbuild service died: EAGAIN/);
  assert.match(r.stdout, /exitCode: 3/);
  assert.doesNotMatch(r.stdout, /fine/, 'a passing test is not printed');
});

test('an assertion failure: its message, expected and actual', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tap-failures-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const tap = tapOf(dir, {
    'c.test.mjs': "import { test } from 'node:test'; import assert from 'node:assert/strict';\n"
      + "test('limit', () => { assert.equal(64, 65, 'VmPin is RAM + BIOS'); });\n",
  });
  const r = failures(tap);
  assert.match(r.stdout, /^---- not ok 1 - limit$/m);
  assert.match(r.stdout, /VmPin is RAM \+ BIOS/);
  assert.match(r.stdout, /expected: 65/);
  assert.match(r.stdout, /actual: 64/);
});

test('a passing stream prints nothing; a missing file is an error', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'tap-failures-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const ok = failures(tapOf(dir, { 'd.test.mjs': "import { test } from 'node:test'; test('d', () => {});\n" }));
  assert.deepEqual(ok, { status: 0, stdout: '' });
  const missing = failures(join(dir, 'nope.tap'));
  assert.equal(missing.status, 2);
});
