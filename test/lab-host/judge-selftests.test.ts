// Host test of test/lab/judge-selftests, the kernel lab's verdict on the iommufd selftests
// (test/lab/ itself holds the in-VM suite, which the host suite leaves out: this file lives
// beside it). It writes the two boots' directories a lab run leaves (kselftest TAP per binary,
// rc, dmesg.txt) and checks each rule: every existing test passes on both kernels unless
// selftests-failures lists it, the new tests pass patched and fail unpatched, skips on either
// kernel must be listed, stale list entries fail, and both kernels' logs are complete and clean.
// Test names are fictional (fixture_*) so the repo's own lists can never match them; the lists
// the judge reads are always temporary files.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

const judge = resolve(import.meta.dirname, '../lab/judge-selftests');

type Verdict = 'ok' | 'fail' | 'skip';
type Results = Record<string, Verdict>;
interface Boot { iommufd: Results; iommufd_fail_nth: Results; dmesg?: string; error?: number }

const A = 'iommufd_ioas.mock_domain.fixture_area';
const B = 'iommufd_ioas.no_domain.fixture_nested';
const NEW1 = 'iommufd_pinned_limit.cap_ipc_lock.fixture_binds';
const NEW2 = 'iommufd_pinned_limit.rlimit_user.fixture_binds';
const NTH = 'basic_fail_nth.fixture_basic';
const BOOT_LOG = '[    0.000000] Linux version 6.12.117 (root@vm) #1 SMP\n[    3.0] iommufd_mock iommufd_mock0: Adding to iommu group 0\n';

// kselftest harness output, as tools/testing/selftests/kselftest_harness.h prints it.
function tap(results: Results, error = 0): string {
  const names = Object.keys(results);
  const lines = ['TAP version 13', `1..${names.length}`];
  const count = { pass: 0, fail: 0, skip: 0 };
  names.forEach((name, i) => {
    const v = results[name];
    lines.push(`#  RUN           ${name} ...`);
    if (v === 'ok') {
      count.pass++;
      lines.push(`#            OK  ${name}`, `ok ${i + 1} ${name}`);
    } else if (v === 'fail') {
      count.fail++;
      lines.push(`# iommufd.c:754:fixture:Expected 0 (0) == iova % align (12288)`, `#          FAIL  ${name}`, `not ok ${i + 1} ${name}`);
    } else {
      count.skip++;
      lines.push(`#      SKIP      no such device`, `ok ${i + 1} ${name} # SKIP no such device`);
    }
  });
  lines.push(`# Totals: pass:${count.pass} fail:${count.fail} xfail:0 xpass:0 skip:${count.skip} error:${error}`);
  return `${lines.join('\n')}\n`;
}

let root: string;
let n = 0;
before(() => { root = mkdtempSync(join(tmpdir(), 'judge-selftests-')); });
after(() => { rmSync(root, { recursive: true, force: true }); });

function writeBoot(dir: string, boot: Boot): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'iommufd.tap'), tap(boot.iommufd, boot.error ?? 0));
  writeFileSync(join(dir, 'iommufd_fail_nth.tap'), tap(boot.iommufd_fail_nth));
  writeFileSync(join(dir, 'iommufd.rc'), '0\n');
  writeFileSync(join(dir, 'iommufd_fail_nth.rc'), '0\n');
  writeFileSync(join(dir, 'dmesg.txt'), boot.dmesg ?? BOOT_LOG);
}

// A run where everything is as it must be: existing tests pass on both, new ones only patched.
function good(): { unpatched: Boot; patched: Boot } {
  return {
    unpatched: { iommufd: { [A]: 'ok', [B]: 'ok', [NEW1]: 'fail', [NEW2]: 'fail' }, iommufd_fail_nth: { [NTH]: 'ok' } },
    patched: { iommufd: { [A]: 'ok', [B]: 'ok', [NEW1]: 'ok', [NEW2]: 'ok' }, iommufd_fail_nth: { [NTH]: 'ok' } },
  };
}

interface Judged { status: number | null; stdout: string; stderr: string; reason: string }
function run(boots: { unpatched: Boot; patched: Boot }, lists: { failures?: string; skips?: string } = {}): Judged {
  const dir = join(root, `run-${n++}`);
  writeBoot(join(dir, 'unpatched'), boots.unpatched);
  writeBoot(join(dir, 'patched'), boots.patched);
  const failures = join(dir, 'failures');
  const skips = join(dir, 'skips');
  writeFileSync(failures, `# fixture list\n${lists.failures ?? ''}`);
  writeFileSync(skips, `# fixture list\n${lists.skips ?? ''}`);
  const done = spawnSync('bash', [judge, '--skips', skips, '--failures', failures,
    join(dir, 'unpatched'), join(dir, 'patched'), 'K without the series', 'K with the series'], { encoding: 'utf8' });
  const last = done.stderr.trim().split('\n').pop() ?? '';
  return { status: done.status, stdout: done.stdout, stderr: done.stderr, reason: last };
}

describe('judge-selftests', () => {
  it('passes a run where every existing test passes on both kernels and the new ones only on the patched one', () => {
    const r = run(good());
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^passed: 5$/m);
    assert.match(r.stdout, /^known-failures: 0$/m);
    assert.match(r.stdout, /^summary: iommufd: 4 passed on the patched kernel \(2 new/m);
  });

  it('fails an existing test that fails on both kernels when selftests-failures does not list it, printing its assertion lines', () => {
    const b = good();
    b.unpatched.iommufd[A] = 'fail';
    b.patched.iommufd[A] = 'fail';
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, new RegExp(`the existing test '${A}' fails on K without the series`));
    assert.match(r.stderr, /iommufd\.c:754:fixture:Expected 0 \(0\) == iova % align \(12288\)/);
  });

  it('fails an existing test that fails on the unpatched kernel only', () => {
    const b = good();
    b.unpatched.iommufd_fail_nth[NTH] = 'fail';
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, new RegExp(`iommufd_fail_nth: the existing test '${NTH}' fails on K without the series`));
  });

  it('fails an existing test that fails on the patched kernel only, even when listed: the series broke it', () => {
    const b = good();
    b.patched.iommufd[B] = 'fail';
    assert.match(run(b).reason, new RegExp(`the existing test '${B}' fails on K with the series`));
    const listed = run(b, { failures: `iommufd ${B} fixture reason\n` });
    assert.equal(listed.status, 1);
    assert.match(listed.reason, new RegExp(`'${B}' fails on K with the series but not on K without the series: the series broke it`));
  });

  it('accepts a listed failure on both kernels and names it with its reason', () => {
    const b = good();
    b.unpatched.iommufd[A] = 'fail';
    b.patched.iommufd[A] = 'fail';
    const r = run(b, { failures: 'iommufd iommufd_ioas.*.fixture_area the fixture reason\n' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, new RegExp(`^lab: iommufd: '${A}' fails on K with the series, as test/lab/selftests-failures allows: the fixture reason$`, 'm'));
    assert.match(r.stdout, /^known-failures: 1$/m);
  });

  it('fails a stale entry of selftests-failures: one that matched no failure of the run', () => {
    const r = run(good(), { failures: `iommufd ${A} it used to fail\n` });
    assert.equal(r.status, 1);
    assert.match(r.reason, new RegExp(`the entry 'iommufd ${A}' matched no failure of this run on either kernel`));
  });

  it('never lets selftests-failures excuse a new test', () => {
    const b = good();
    b.patched.iommufd[NEW1] = 'fail';
    const r = run(b, { failures: 'iommufd iommufd_pinned_limit.* no\n' });
    assert.equal(r.status, 1);
    assert.match(r.reason, /only 1 of the 2 new iommufd_pinned_limit tests passed/);
  });

  it('fails a new test that passes on the unpatched kernel (it would not test the series)', () => {
    const b = good();
    b.unpatched.iommufd[NEW2] = 'ok';
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, /1 of the 2 new tests failed; all must/);
  });

  it('fails a skip on the unpatched kernel that selftests-skips does not allow, and accepts a listed one', () => {
    const b = good();
    b.unpatched.iommufd[B] = 'skip';
    b.patched.iommufd[B] = 'skip';
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, new RegExp(`'${B}' was skipped on K without the series and test/lab/selftests-skips does not allow it`));
    const listed = run(b, { skips: `iommufd ${B} the fixture's config reason\n` });
    assert.equal(listed.status, 0, listed.stderr);
    assert.match(listed.stdout, new RegExp(`'${B}' skipped on K with the series, as test/lab/selftests-skips allows: the fixture's config reason`));
  });

  it('fails a new test that was skipped, on either kernel', () => {
    const b = good();
    b.unpatched.iommufd[NEW1] = 'skip';
    const r = run(b, { skips: 'iommufd * everything\n' });
    assert.equal(r.status, 1);
    assert.match(r.reason, new RegExp(`the new test '${NEW1}' was skipped`));
  });

  it('fails a stale entry of selftests-skips', () => {
    const r = run(good(), { skips: `iommufd ${B} it used to skip\n` });
    assert.equal(r.status, 1);
    assert.match(r.reason, new RegExp(`the entry 'iommufd ${B}' matched no skip of this run`));
  });

  it('fails a harness error on the unpatched kernel', () => {
    const b = good();
    b.unpatched.error = 1;
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, /iommufd on K without the series: # Totals: .*error:1/);
  });

  it('fails when the two kernels ran different tests', () => {
    const b = good();
    delete b.unpatched.iommufd[A];
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, /iommufd ran different tests on K without the series and on K with the series/);
  });

  it('fails a WARNING in the unpatched kernel\'s log, and in the patched one\'s', () => {
    const warn = `${BOOT_LOG}[   20.1] WARNING: CPU: 0 PID: 90 at drivers/iommu/iommufd/pages.c:1 x\n`;
    const b = good();
    b.unpatched.dmesg = warn;
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, /the log of K without the series has warnings/);
    const p = good();
    p.patched.dmesg = warn;
    assert.match(run(p).reason, /the log of K with the series has warnings/);
  });

  it('fails a kernel log that does not reach back to the boot (the ring buffer dropped its start)', () => {
    const b = good();
    b.patched.dmesg = '[   20.0] iommufd_mock iommufd_mock0: Adding to iommu group 0\n';
    const r = run(b);
    assert.equal(r.status, 1);
    assert.match(r.reason, /the kernel log of K with the series does not reach back to its boot/);
  });
});
