// `npm run fuzz -- --frames 1000000`: the long hostile-input run (issue #5). Starts the real
// daemon on a temp socket with the simulated device (or fuzzes one you started: --socket and
// --pid), drives test/hostile/fuzz/ cases at it, and checks at every checkpoint that the daemon
// answers, holds the fds it held at the start, and that its RSS stays within a bound of the
// first checkpoint. Prints one line per checkpoint and exits 1 on any failure.
//
// Invariants:
// - Same generators, expectations and seeds as test/hostile/varlink-fuzz.test.ts: a failure
//   seen here replays there with FUZZ_SEED, and vice versa.
// - The daemon this script starts is stopped and its temp dir removed on every exit path.
import { parseArgs } from 'node:util';
import { BrokerProcess } from '../test/support/daemon.ts';
import { openFds, settledLeaks } from '../test/support/fds.ts';
import { Prng } from '../test/hostile/support/prng.ts';
import { rssBytes } from '../test/hostile/support/processes.ts';
import { FdSource, answers, emptyStats, runFuzz } from '../test/hostile/fuzz/fuzz-runner.ts';

const MiB = 1024 ** 2;
const USAGE = `usage: npm run fuzz -- [--frames N] [--seed N] [--parallel N] [--checkpoint N] [--rss-slack MiB]
                       [--socket PATH --pid PID]
  --frames      frames to send in total (default 100000)
  --seed        PRNG seed (default: random, printed; FUZZ_SEED=N replays it in the test)
  --parallel    connections in flight at once (default 16)
  --checkpoint  frames between checks (default 50000)
  --rss-slack   allowed RSS growth over the first checkpoint, MiB (default 64)
  --socket/--pid  fuzz a daemon you started instead (its pid, for RSS and fds)`;

function intFlag(values: Record<string, string | boolean | undefined>, name: string, fallback: number): number {
  const text = values[name];
  if (text === undefined) return fallback;
  const n = Number(text);
  if (typeof text !== 'string' || !Number.isSafeInteger(n) || n < 0) throw new Error(`--${name} must be a non-negative integer, got ${String(text)}`);
  return n;
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      frames: { type: 'string' }, seed: { type: 'string' }, parallel: { type: 'string' }, checkpoint: { type: 'string' },
      'rss-slack': { type: 'string' }, socket: { type: 'string' }, pid: { type: 'string' }, help: { type: 'boolean' },
    },
  });
  if (values.help === true) { process.stdout.write(`${USAGE}\n`); return 0; }
  const frames = intFlag(values, 'frames', 100_000);
  const seed = intFlag(values, 'seed', Math.floor(Math.random() * 0xffff_ffff));
  const parallel = Math.max(1, intFlag(values, 'parallel', 16));
  const checkpoint = Math.max(1000, intFlag(values, 'checkpoint', 50_000));
  const slack = intFlag(values, 'rss-slack', 64) * MiB;
  if ((values.socket === undefined) !== (values.pid === undefined)) throw new Error('--socket and --pid go together');

  const broker = values.socket === undefined ? await BrokerProcess.start() : undefined;
  const socket = values.socket ?? broker?.socket ?? '';
  const pid = values.pid !== undefined ? intFlag(values, 'pid', 0) : broker?.child.pid ?? 0;
  const fds = await FdSource.open(socket);
  const prng = new Prng(seed);
  const stats = emptyStats();
  const log = (line: string): void => { process.stdout.write(`${line}\n`); };
  log(`fuzz: seed ${seed}, ${frames} frames, ${parallel} connections at once, daemon pid ${pid}`);
  let failed = false;
  try {
    const daemonFds = openFds(pid);
    let firstRss: number | undefined;
    const started = Date.now();
    // Only a daemon we started can be seen dying; an external one shows up as not answering.
    const exited = (): string | undefined => (broker === undefined || (broker.child.exitCode === null && broker.child.signalCode === null)
      ? undefined : `the daemon exited (${String(broker.child.exitCode ?? broker.child.signalCode)}): ${broker.stderr.slice(-1500)}`);
    while (stats.frames < frames && stats.failures.length === 0) {
      await runFuzz({ socket, prng, frames: Math.min(checkpoint, frames - stats.frames), parallel, fds, stats });
      const alive = await answers(socket);
      if (!alive) await new Promise((r) => setTimeout(r, 500)); // a dead daemon's exit gets reaped and reported
      const died = exited();
      if (died !== undefined) {
        stats.failures.push(died);
        break;
      }
      let rss: number;
      try {
        rss = rssBytes(pid);
      } catch {
        stats.failures.push(`daemon pid ${pid} is gone`);
        break;
      }
      firstRss ??= rss;
      const leaked = await settledLeaks(daemonFds, pid);
      const rate = stats.frames / Math.max(1, (Date.now() - started) / 1000);
      log(`  ${stats.frames} frames, ${stats.cases} cases: RSS ${(rss / MiB).toFixed(1)} MiB, answers ${alive}, `
        + `extra fds ${leaked.length}, ${rate.toFixed(0)} frames/s`);
      if (!alive) stats.failures.push('the daemon stopped answering');
      if (leaked.length > 0) stats.failures.push(`the daemon holds fds it did not hold at the start: ${leaked.join(', ')}`);
      if (rss - firstRss > slack) stats.failures.push(`RSS grew ${((rss - firstRss) / MiB).toFixed(1)} MiB past the first checkpoint`);
    }
    log(`by kind: ${JSON.stringify(stats.byKind)}`);
    log(`InternalError replies by kind: ${JSON.stringify(stats.internalErrors)}`);
    for (const f of stats.failures) log(`FAIL ${f}`);
    failed = stats.failures.length > 0;
    log(failed ? `fuzz: FAILED (replay with --seed ${seed})` : 'fuzz: ok');
  } finally {
    fds.close();
    if (broker !== undefined) {
      await broker.stop();
      broker.cleanup();
    }
  }
  return failed ? 1 : 0;
}

main().then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`fuzz: ${err instanceof Error ? err.message : String(err)}\n${USAGE}\n`);
  process.exit(2);
});
