// LeaseLanes: one lease's steps run one at a time in arrival order; other leases never wait.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { LeaseLanes } from '../../../daemon/shell/lease-lanes.ts';

/** A promise and the function that resolves it. */
function gate(): { opened: Promise<void>; open: () => void } {
  let open = (): void => {};
  const opened = new Promise<void>((resolve) => { open = resolve; });
  return { opened, open };
}

test('an idle lane starts its step synchronously', () => {
  const lanes = new LeaseLanes();
  let started = false;
  void lanes.run('a', async () => { started = true; });
  assert.equal(started, true);
});

test('steps of one lane run one at a time, in arrival order, each after the last settled', async () => {
  const lanes = new LeaseLanes();
  const log: string[] = [];
  const first = gate();
  const a1 = lanes.run('a', async () => { log.push('a1 start'); await first.opened; log.push('a1 end'); return 1; });
  const a2 = lanes.run('a', async () => { log.push('a2'); return 2; });
  const b1 = lanes.run('b', async () => { log.push('b1'); return 3; });
  await b1;
  assert.deepEqual(log, ['a1 start', 'b1'], 'another lease does not wait; a2 waits for a1');
  first.open();
  assert.deepEqual(await Promise.all([a1, a2]), [1, 2]);
  assert.deepEqual(log, ['a1 start', 'b1', 'a1 end', 'a2']);
});

test('a step that fails rejects its own caller only; the lane goes on', async () => {
  const lanes = new LeaseLanes();
  const failing = lanes.run('a', async () => { throw new Error('refused'); });
  const next = lanes.run('a', async () => 'ran');
  await assert.rejects(failing, /refused/);
  assert.equal(await next, 'ran');
});

test('idle lanes are forgotten', async () => {
  const lanes = new LeaseLanes();
  const held = gate();
  const a = lanes.run('a', () => held.opened);
  const b = lanes.run('b', async () => {});
  await b;
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(lanes.busy, 1, 'only the lane with a step in flight is kept');
  held.open();
  await a;
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(lanes.busy, 0);
});
