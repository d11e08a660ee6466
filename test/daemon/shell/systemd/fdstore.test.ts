// The fd store (issue #10 item 3), end to end through the broker's own code and a stand-in for
// systemd (test/support/fdstore-standin.c): Notifier.store sends each fd with SCM_RIGHTS and
// FDNAME=, Notifier.remove makes the store forget it, and after the program is killed and
// started again listenFdsFromEnv takes the stored fds back by name from LISTEN_FDS /
// LISTEN_FDNAMES (CLOEXEC set), as a restarted broker does.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';
import { buildC } from '../../../../bench/c-build.ts';

const REPO = fileURLToPath(new URL('../../../..', import.meta.url));
const A = 'lease-l-00000000000000a1';
const B = 'lease-l-00000000000000b2';

test('FDSTORE=1 with FDNAME= passes the fd; FDSTOREREMOVE=1 drops it; a restart gets the rest back by name', async () => {
  const standin = buildC(join(REPO, 'test/support/fdstore-standin.c'));
  const dir = mkdtempSync(join(tmpdir(), 'fdstore-test-'));
  const child = spawn(standin, [join(dir, 'notify.sock'), process.execPath, '--import', 'tsx', join(REPO, 'test/support/fdstore-child.ts'), A, B, `-${B}`],
    { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] });
  const events: string[] = [];
  const programOut: string[] = [];
  let wake: (() => void) | undefined;
  createInterface({ input: child.stdout }).on('line', (l) => { events.push(l); wake?.(); });
  createInterface({ input: child.stderr }).on('line', (l) => { programOut.push(l); wake?.(); });
  const until = async (what: string, check: () => boolean): Promise<void> => {
    const deadline = Date.now() + 60_000;
    while (!check()) {
      assert.ok(Date.now() < deadline, `${what}; events: ${events.join(' | ')}; program: ${programOut.join(' | ')}`);
      await new Promise<void>((r) => { wake = r; setTimeout(r, 200); });
    }
  };
  try {
    await until('the stand-in listens', () => events.includes(`listening ${join(dir, 'notify.sock')}`));
    child.stdin.write('start\n');
    await until('the program stored and removed', () => events.some((e) => e.startsWith(`remove ${B}`)));
    const first = JSON.parse(programOut.find((l) => l.startsWith('{')) ?? '{}') as { stored: object; env: string | null };
    assert.deepEqual(first, { stored: {}, warnings: [], env: null }, 'nothing stored yet: no LISTEN_FDS');
    assert.deepEqual(events.filter((e) => /^(store|remove) /.test(e)),
      [`store ${A} /memfd:fdstore-test-${A} (deleted)`, `store ${B} /memfd:fdstore-test-${B} (deleted)`, `remove ${B}`]);

    child.stdin.write('kill\nlist\n');
    await until('the store listed', () => events.includes('end'));
    assert.deepEqual(events.filter((e) => e.startsWith('stored ')), [`stored ${A} /memfd:fdstore-test-${A} (deleted)`],
      'the store keeps its copy after the program is killed');

    programOut.length = 0;
    child.stdin.write('start\n');
    await until('the restarted program reported', () => programOut.some((l) => l.startsWith('{')));
    const again = JSON.parse(programOut.find((l) => l.startsWith('{')) ?? '{}') as {
      stored: Record<string, { fd: number; target: string; cloexec: boolean }>; warnings: string[]; env: string | null;
    };
    assert.deepEqual(again.warnings, []);
    assert.deepEqual(Object.keys(again.stored), [A], 'taken back by name');
    assert.equal(again.stored[A]?.fd, 3, 'at SD_LISTEN_FDS_START');
    assert.equal(again.stored[A]?.target, `/memfd:fdstore-test-${A} (deleted)`, 'the very file the first program stored');
    assert.equal(again.stored[A]?.cloexec, true, 'CLOEXEC set once taken');
    assert.equal(again.env, null, 'LISTEN_* consumed');
  } finally {
    child.stdin.end();
    await new Promise((r) => child.on('exit', r));
    rmSync(dir, { recursive: true, force: true });
  }
});
