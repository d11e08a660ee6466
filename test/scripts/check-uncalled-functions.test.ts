// Runs real tsx processes under NODE_V8_COVERAGE over a small .ts fixture, then checks that
// the checker finds exactly the functions no process called, at their .ts positions.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { uncalledFunctions } from '../../scripts/check-uncalled-functions.ts';

const repo = resolve(import.meta.dirname, '../..');

// Line numbers matter: the assertions below name them.
const FIXTURE = [
  '// fixture: line 1',
  'export function used(xs: number[]): number[] {',
  '  return xs.filter((x) => x > 0).map((x) => x * 2);',
  '}',
  'export function unused(): number {',
  '  return 1;',
  '}',
  'export const named = (n: number): number => n + 1;',
  '',
].join('\n');

let dir: string;
let src: string;

function runWithCoverage(coverageDir: string, call: string): void {
  const runner = join(dir, `run-${call}.ts`);
  writeFileSync(runner, `import * as f from ${JSON.stringify(join(src, 'fixture.ts'))};\n${call};\n`);
  const done = spawnSync(process.execPath, ['--import', 'tsx', runner], {
    cwd: repo, env: { ...process.env, NODE_V8_COVERAGE: coverageDir }, encoding: 'utf8',
  });
  assert.equal(done.status, 0, done.stderr);
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'uncalled-'));
  src = join(dir, 'src');
  mkdirSync(src);
  writeFileSync(join(src, 'fixture.ts'), FIXTURE);
  // ESM like the project: as CommonJS, esbuild adds export getters that are functions too
  writeFileSync(join(dir, 'package.json'), '{ "type": "module" }\n');
});
after(() => rmSync(dir, { recursive: true, force: true }));

describe('uncalledFunctions', () => {
  it('finds named and anonymous functions no process called, at their .ts lines', () => {
    const cov = join(dir, 'cov-one');
    // filter's callback runs (one element), map's never does (nothing passes the filter)
    runWithCoverage(cov, 'f.used([-1])');
    const found = uncalledFunctions(cov, src).map((u) => `${u.name}@${u.line}`);
    // `named` is anonymous to V8: tsx's keepNames turns it into __name((n) => n + 1, "named")
    assert.deepEqual(found, ['(anonymous)@3', 'unused@5', '(anonymous)@8']);
  });

  it('counts a function as called if any process called it', () => {
    const cov = join(dir, 'cov-two');
    runWithCoverage(cov, 'f.used([-1])');
    runWithCoverage(cov, 'f.unused()');
    runWithCoverage(cov, 'f.used([2]); f.named(1)');
    assert.deepEqual(uncalledFunctions(cov, src), []);
  });

  it('ignores scripts outside the prefix, and places a column on the callback', () => {
    const cov = join(dir, 'cov-three');
    runWithCoverage(cov, 'f.used([-1]); f.unused(); f.named(1)');
    const [only, ...rest] = uncalledFunctions(cov, src);
    assert.deepEqual(rest, []);
    assert.ok(only !== undefined);
    assert.equal(only.file, join(src, 'fixture.ts'));
    // the map callback starts at column 38 ("(x) => x * 2"); esbuild may drop the parens
    assert.ok(only.column === 38 || only.column === 39, `column ${only.column}`);
    assert.deepEqual(uncalledFunctions(cov, join(dir, 'elsewhere')), []);
  });
});
