// startPoll/updatePoll/stopPoll (native/src/poll.c) on Node's loop: events, pausing, stopping
// from inside a callback, refusing to close a watched fd, exceptions reaching
// 'uncaughtException' and microtasks draining (those two in a subprocess).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';
import { afterEach, test } from 'node:test';
import { native, POLL_READABLE, POLL_WRITABLE, type PollHandle } from '../../native/binding.ts';
import { memfd } from '../../native/sys.ts';
import { settle, withNoFdLeak } from './fd-audit.ts';
import { closeTracked, rawSocketPair, track } from './socket-fixtures.ts';

/** Hang guard only (not a timing assertion): a lost event fails the test instead of stalling the file. */
const GUARD = { timeout: 60_000 };
afterEach(closeTracked);

const { EBADF, EBUSY, EEXIST, EPERM } = constants.errno;

/** startPoll that fails the test on -errno; the handle is stopped after the test at the latest. */
function start(fd: number, events: number, callback: (status: number, events: number) => void): PollHandle {
  const handle = native.startPoll(fd, events, callback);
  if (typeof handle === 'number') assert.fail(`startPoll(${fd}) failed with ${handle}`);
  track({ close: () => native.stopPoll(handle) });
  return handle;
}

async function turns(n: number): Promise<void> {
  for (let i = 0; i < n; i++) await settle();
}

function runFixture(name: string): { stdout: string; status: number | null } {
  const path = fileURLToPath(new URL(`./fixtures/${name}`, import.meta.url));
  // The timeout only guards against a hang (a swallowed exception would leave the watcher firing).
  const result = spawnSync(process.execPath, ['--import', 'tsx', path], { encoding: 'utf8', timeout: 60_000 });
  return { stdout: result.stdout, status: result.status };
}

test('a readable fd calls back with POLL_READABLE; stopPoll inside the callback stops it for good', GUARD, async () => {
  await withNoFdLeak(async () => {
    const [listener, client, server] = rawSocketPair();
    const seen: Array<[number, number]> = [];
    const handle: PollHandle = start(server, POLL_READABLE, (status, events) => {
      seen.push([status, events]);
      native.stopPoll(handle);
    });
    assert.equal(native.sendmsg(client, Buffer.from('wake'), []), 4);
    await turns(5); // the byte is never read: level-triggered readiness would call again
    assert.deepEqual(seen, [[0, POLL_READABLE]]);
    native.stopPoll(handle); // idempotent
    assert.equal(native.updatePoll(handle, POLL_READABLE), -EBADF);
    for (const fd of [listener, client, server]) assert.equal(native.close(fd), 0);
  });
});

test('updatePoll(handle, 0) pauses a watcher and a new mask resumes it', GUARD, async () => {
  await withNoFdLeak(async () => {
    const [listener, client, server] = rawSocketPair();
    let calls = 0;
    const handle = start(client, POLL_WRITABLE, () => {
      calls += 1;
      assert.equal(native.updatePoll(handle, 0), 0);
    });
    await turns(5);
    assert.equal(calls, 1, 'paused after the first callback');
    const resumed = new Promise<number>((resolve) => {
      assert.equal(native.updatePoll(handle, POLL_WRITABLE), 0);
      const check = (): void => { if (calls > 1) resolve(calls); else setImmediate(check); };
      check();
    });
    assert.equal(await resumed, 2);
    native.stopPoll(handle);
    for (const fd of [listener, client, server]) assert.equal(native.close(fd), 0);
  });
});

test('close() refuses an fd that is still watched (-EBUSY) and closes it after stopPoll', GUARD, async () => {
  await withNoFdLeak(() => {
    const [listener, client, server] = rawSocketPair();
    const handle = start(server, POLL_READABLE, () => undefined);
    assert.equal(native.close(server), -EBUSY);
    assert.ok(native.fstat(server) !== -EBADF, 'the refused fd is still open');
    native.stopPoll(handle);
    for (const fd of [listener, client, server]) assert.equal(native.close(fd), 0);
  });
});

test('startPoll returns -errno for fds epoll cannot watch or that are already watched', GUARD, async () => {
  await withNoFdLeak(() => {
    const file = memfd('not-pollable');
    assert.equal(native.startPoll(file, POLL_READABLE, () => undefined), -EPERM);
    assert.equal(native.close(file), 0);
    const [listener, client, server] = rawSocketPair();
    const handle = start(server, POLL_READABLE, () => undefined);
    assert.equal(native.startPoll(server, POLL_READABLE, () => undefined), -EEXIST);
    native.stopPoll(handle);
    for (const fd of [listener, client, server]) assert.equal(native.close(fd), 0);
  });
});

test('an exception thrown by a poll callback reaches process uncaughtException', GUARD, () => {
  const { stdout, status } = runFixture('throw-in-poll.ts');
  assert.equal(stdout.trim(), 'uncaught: boom from a poll callback');
  assert.equal(status, 0);
});

test('microtasks and nextTicks queued in a poll callback run before the next callback', GUARD, () => {
  const { stdout, status } = runFixture('drain-in-poll.ts');
  assert.equal(stdout.trim(), 'second callback: microtask=true nextTick=true');
  assert.equal(status, 0);
});
