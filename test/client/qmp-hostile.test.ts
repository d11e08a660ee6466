// QmpClient against a QEMU that a guest owns: QEMU may send fds on the QMP socket (it never does
// when honest), and an fd whose last close blocks (a TCP socket with SO_LINGER and a full send
// queue, made by hostile-peer.c lingering-qmp) must not stall iommufdctl's event loop: every QMP
// wait is bounded by a timer, and a close on the loop would hold every timer for the whole linger
// (in the middle of a hotplug or unplug). The one bound on time is half the linger, which only a
// close on the loop can reach (as in test/hostile/lingering-fds.test.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { buildC } from '../../bench/c-build.ts';
import { QmpClient, QmpError } from '../../client/qmp.ts';
import { pendingCloses } from '../../native/sys.ts';
import { openFds, settledLeaks } from '../support/fds.ts';
import { REPO } from '../support/daemon.ts';

const LINGER_S = 30;
/** Far below the linger: only a close on the event loop takes this long. */
const PROMPT_MS = (LINGER_S * 1000) / 2;

test('a lingering socket sent with the QMP greeting stalls nothing: the reply timeout still fires at once, and the fd is closed', { timeout: 4 * LINGER_S * 1000 }, async () => {
  const peer = buildC(join(REPO, 'test/hostile/fixtures/hostile-peer.c'));
  const dir = mkdtempSync(join(tmpdir(), 'qmp-hostile-'));
  const socket = join(dir, 'qmp.sock');
  const child = spawn(peer, ['lingering-qmp', socket, String(LINGER_S)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = once(child, 'exit');
  const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })[Symbol.asyncIterator]();
  const before = openFds();
  try {
    assert.deepEqual(await lines.next(), { value: 'listening', done: false });
    const started = Date.now();
    // The peer never answers qmp_capabilities: QmpTimeout after 200 ms, if the loop runs.
    const outcome = await QmpClient.connect(socket, { timeoutMs: 200 }).then(() => undefined, (e: unknown) => e);
    const elapsed = Date.now() - started;
    assert.deepEqual(await lines.next(), { value: 'sent', done: false });
    assert.ok(outcome instanceof QmpError && outcome.errorName === 'QmpTimeout', `expected QmpTimeout, got ${String(outcome)}`);
    assert.ok(elapsed < PROMPT_MS, `iommufdctl's loop stalled for ${elapsed} ms: QEMU's lingering fd was closed on it`);
    // Causal, not timed: the linger ends only when this test ends the peer's stdin (below), so a
    // close that already returned can only have run on the loop, stalling it for the whole linger.
    assert.ok(pendingCloses() >= 1, 'the lingering fd is still closing, on a closer thread');
  } finally {
    child.stdin?.end();
    await exited;
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(await settledLeaks(before, process.pid), [], 'the fd QEMU sent is closed');
});
