// The fuzzer against the real daemon over its real socket (test/hostile/fuzz/): random bytes,
// truncated and unterminated frames, frames at and past the size cap, invalid UTF-8, deep
// nesting, huge numbers, wrong types, unknown methods and fields, stray and odd fds (up to
// 253), half-open and never-reading clients. A bounded, seeded run here; the long one is
// `npm run fuzz -- --frames 1000000` (scripts/fuzz.ts). FUZZ_SEED=N replays a run.
//
// After the run: no connection broke its expectation, the daemon still answers, holds exactly
// the fds it held before, its RSS did not grow past a bound, and it logged nothing at error
// level except the known InternalError for non-pidfd targets (see odd-fds.test.ts).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { BrokerProcess } from '../support/daemon.ts';
import { leakedSince, openFds, settledLeaks } from '../support/fds.ts';
import { Prng, seedFromEnv } from './support/prng.ts';
import { rssBytes } from './support/processes.ts';
import { CASE_KINDS } from './fuzz/fuzz-cases.ts';
import { FdSource, answers, emptyStats, runFuzz } from './fuzz/fuzz-runner.ts';

const MiB = 1024 ** 2;
/** Two equal halves: RSS after the first (heap sized to the load) vs after the second. */
const HALF = 2000;
const FRAMES = 2 * HALF;
const PARALLEL = 16;
/** RSS growth allowed over the second half: V8 sizes its heap to the load during the first (the
 * long run in scripts/fuzz.ts shows the plateau, ~130-140 MiB flat over 200k frames). This
 * catches gross leaks only (a kept 64 KiB frame per case is ~38 MiB here); small ones are the
 * long run's job. */
const RSS_SLACK = 32 * MiB;

let broker: BrokerProcess;
let fds: FdSource;

before(async () => {
  broker = await BrokerProcess.start();
  fds = await FdSource.open(broker.socket);
});
after(async () => {
  fds.close();
  await broker.stop();
  broker.cleanup();
});

test(`${FRAMES} frames of hostile input: every connection as expected, daemon alive, fds at baseline, RSS flat`, async (t) => {
  const pid = broker.child.pid;
  assert.ok(pid !== undefined);
  const prng = new Prng(seedFromEnv(0xf022_5eed));
  t.diagnostic(`seed ${prng.seed} (FUZZ_SEED=${prng.seed} replays it)`);
  const daemonFds = openFds(pid);
  const ourFds = openFds();
  const stats = emptyStats();

  await runFuzz({ socket: broker.socket, prng, frames: HALF, parallel: PARALLEL, fds, stats });
  const rssWarm = rssBytes(pid);
  await runFuzz({ socket: broker.socket, prng, frames: HALF, parallel: PARALLEL, fds, stats });
  const rssEnd = rssBytes(pid);
  t.diagnostic(`${stats.cases} cases, ${stats.frames} frames, ${stats.judged} judged; RSS ${(rssWarm / MiB).toFixed(1)} -> ${(rssEnd / MiB).toFixed(1)} MiB`);
  t.diagnostic(`by kind: ${JSON.stringify(stats.byKind)}`);

  assert.equal(broker.child.exitCode ?? broker.child.signalCode, null, `the daemon died: ${broker.stderr.slice(-1500)}`);
  assert.deepEqual(stats.failures, []);
  assert.ok(await answers(broker.socket), 'the daemon still answers');
  assert.deepEqual(await settledLeaks(daemonFds, pid), [], 'the daemon holds exactly the fds it held before');
  assert.deepEqual(leakedSince(ourFds), [], 'the fuzzer itself kept nothing');
  assert.ok(rssEnd - rssWarm < RSS_SLACK, `daemon RSS grew by ${((rssEnd - rssWarm) / MiB).toFixed(1)} MiB`);

  assert.deepEqual(CASE_KINDS.filter((g) => (stats.byGenerator[g] ?? 0) === 0), [], 'every generator ran');
  for (const kind of Object.keys(stats.internalErrors)) {
    assert.equal(kind, 'odd-fd-target', `InternalError only for non-pidfd targets, got one for ${kind}`);
  }
  const errors = broker.logs.filter((l) => l.level >= 50 && !/pidOfPidfd/.test(JSON.stringify(l['err'] ?? '')));
  assert.deepEqual(errors.map((l) => l.msg), [], 'nothing logged at error level but the known one');
});
