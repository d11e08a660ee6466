// Drives FuzzCases against a live daemon over its real socket, many connections at a time, and
// judges each connection by its case's expectation. Shared by test/hostile/varlink-fuzz.test.ts
// (a bounded run) and scripts/fuzz.ts (`npm run fuzz -- --frames 1000000`).
//
// Invariants:
// - Replayable: every random draw for case i (its content, chunking and mode) happens in one
//   synchronous block, so case i is the same for a given seed whatever the interleaving.
// - Each case runs on a fresh connection. It is sent in 1-4 chunks (separate sendmsgs) with its
//   fds on the first; then, by a seeded choice, the peer either reads and half-closes (judged),
//   never reads and closes, or closes at once (not judged: only the global checks apply).
// - A judged connection must end (the runner half-closes it, so the daemon must answer what is
//   complete and close): a hang is a failure, found by a guard, never by timing a reply.
// - Every reply must be a JSON object that is a success reply or an error named in the
//   registries (protocol/errors.ts); an error for a case that expects answers must come in the
//   expected number, followed by the sentinel GetInfo reply.
// - fds: the base fds (one per FdKind) are owned by FdSource and closed by close(); every fd a
//   case sends is a fresh dup, owned by the RawPeer from send() on.
import { spawn } from 'node:child_process';
import { closeFd, dupCloexec, memfd, openFile, pidfdOpen } from '../../../native/sys.ts';
import { BROKER_INTERFACE, SERVICE_INTERFACE, brokerErrorNames, serviceErrorNames } from '../../../protocol/errors.ts';
import { GET_INFO, RawPeer, isGetInfoReply, type Reply } from '../support/raw-peer.ts';
import type { Prng } from '../support/prng.ts';
import { nextCase, type FdKind, type FuzzCase } from './fuzz-cases.ts';

const KNOWN_ERRORS = new Set([
  ...brokerErrorNames.map((n) => `${BROKER_INTERFACE}.${n}`),
  ...serviceErrorNames.map((n) => `${SERVICE_INTERFACE}.${n}`),
]);
const O_DIRECTORY = 0o200000;

/** One fd of each kind, made once; cases get dups. */
export class FdSource {
  readonly #base = new Map<FdKind, number>();
  #holder: RawPeer | undefined;

  static async open(socket: string): Promise<FdSource> {
    const source = new FdSource();
    const child = spawn('sleep', ['3600'], { stdio: 'ignore' });
    if (child.pid === undefined) throw new Error('could not spawn sleep for an exited pidfd');
    const pidfd = pidfdOpen(child.pid);
    await new Promise<void>((resolve) => { child.once('exit', () => resolve()); child.kill('SIGKILL'); });
    // A connection the daemon has surely accepted (it answered), so it is in any fd baseline.
    source.#holder = RawPeer.connect(socket);
    source.#holder.send(GET_INFO);
    await source.#holder.until(1);
    source.#base.set('exited-pidfd', pidfd);
    source.#base.set('memfd', memfd('fuzz-memfd'));
    source.#base.set('devnull', openFile('/dev/null', 0));
    source.#base.set('directory', openFile('/', O_DIRECTORY));
    source.#base.set('socket', dupCloexec(source.#holder.fd));
    return source;
  }

  dup(kind: FdKind): number {
    const fd = this.#base.get(kind);
    if (fd === undefined) throw new Error(`no base fd for ${kind}`);
    return dupCloexec(fd);
  }

  close(): void {
    for (const fd of this.#base.values()) closeFd(fd);
    this.#base.clear();
    this.#holder?.close();
  }
}

export interface FuzzStats {
  cases: number;
  frames: number;
  judged: number;
  byKind: Record<string, number>;
  byGenerator: Record<string, number>;
  /** Replies that were InternalError, by case kind (a broker bug unless the kind explains it). */
  internalErrors: Record<string, number>;
  failures: string[];
}

export function emptyStats(): FuzzStats {
  return { cases: 0, frames: 0, judged: 0, byKind: {}, byGenerator: {}, internalErrors: {}, failures: [] };
}

function validShape(reply: Reply): string | undefined {
  if ('unparsable' in reply) return `not JSON: ${String(reply['unparsable'])}`;
  const error = reply['error'];
  if (typeof reply['parameters'] !== 'object' || reply['parameters'] === null) return 'no parameters object';
  if (error !== undefined && (typeof error !== 'string' || !KNOWN_ERRORS.has(error))) return `error not in the registry: ${String(error)}`;
  return undefined;
}

/** Splits bytes into 1-4 non-empty chunks at random points. */
function chunks(prng: Prng, bytes: Buffer): Buffer[] {
  if (bytes.length < 2) return [bytes];
  const cuts = [...new Set(Array.from({ length: prng.int(0, 3) }, () => prng.int(1, bytes.length - 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let start = 0;
  for (const cut of [...cuts, bytes.length]) {
    out.push(bytes.subarray(start, cut));
    start = cut;
  }
  return out;
}

/** Runs one case; returns a failure description, or undefined if the daemon behaved. */
async function runCase(socket: string, c: FuzzCase, prng: Prng, fds: FdSource, stats: FuzzStats): Promise<string | undefined> {
  const mode = prng.int(0, 9); // 0: never read, 1: close at once, else judged
  const parts = chunks(prng, c.bytes);
  let peer: RawPeer;
  try {
    peer = RawPeer.connect(socket);
  } catch (e) {
    return `${c.kind}: cannot connect (has the daemon died?): ${e instanceof Error ? e.message : String(e)}`;
  }
  if (mode === 0) peer.pause();
  parts.forEach((part, i) => peer.send(part, i === 0 ? c.fds.map((k) => fds.dup(k)) : []));
  if (mode <= 1) {
    if (mode === 0) await new Promise((r) => setImmediate(r));
    peer.close();
    return undefined;
  }
  stats.judged++;
  const expectsAnswers = 'replies' in c.expect;
  if (expectsAnswers) peer.send(GET_INFO);
  peer.shutdownWrite();
  try {
    await peer.untilEnded(20_000);
  } catch (e) {
    peer.close();
    return `${c.kind}: ${e instanceof Error ? e.message : String(e)}`;
  }
  peer.close();
  for (const reply of peer.replies) {
    const bad = validShape(reply);
    if (bad !== undefined) return `${c.kind}: ${bad}`;
    if (reply['error'] === `${BROKER_INTERFACE}.InternalError`) stats.internalErrors[c.kind] = (stats.internalErrors[c.kind] ?? 0) + 1;
  }
  if ('replies' in c.expect) {
    const want = c.expect.replies + 1;
    if (peer.replies.length !== want || !isGetInfoReply(peer.replies[want - 1])) {
      return `${c.kind}: expected ${c.expect.replies} replies then the sentinel's, got ${JSON.stringify(peer.replies).slice(0, 400)}`;
    }
  } else if (peer.replies.length < c.expect.atLeast) {
    return `${c.kind}: expected at least ${c.expect.atLeast} replies before the close, got ${peer.replies.length}`;
  } else if (peer.replies.slice(c.expect.atLeast).some((r) => r['error'] === undefined)) {
    return `${c.kind}: a frame that should end the connection got a success reply`;
  }
  return undefined;
}

export interface RunOptions {
  socket: string;
  prng: Prng;
  /** Stop once this many frames were sent. */
  frames: number;
  /** Connections in flight at once. */
  parallel: number;
  fds: FdSource;
  stats: FuzzStats;
  /** Stop early after this many failures (default 10). */
  maxFailures?: number;
}

/** Sends cases until `frames` frames went out; failures are collected in stats.failures. */
export async function runFuzz(o: RunOptions): Promise<void> {
  const target = o.stats.frames + o.frames;
  const maxFailures = o.maxFailures ?? 10;
  const worker = async (): Promise<void> => {
    while (o.stats.frames < target && o.stats.failures.length < maxFailures) {
      const c = nextCase(o.prng);
      const index = o.stats.cases;
      o.stats.cases++;
      o.stats.frames += c.frames;
      o.stats.byKind[c.kind] = (o.stats.byKind[c.kind] ?? 0) + 1;
      o.stats.byGenerator[c.generator] = (o.stats.byGenerator[c.generator] ?? 0) + 1;
      const failure = await runCase(o.socket, c, o.prng, o.fds, o.stats);
      if (failure !== undefined) o.stats.failures.push(`case #${index} (seed ${o.prng.seed}): ${failure}`);
    }
  };
  await Promise.all(Array.from({ length: o.parallel }, worker));
}

/** True if the daemon answers GetInfo on a fresh connection. */
export async function answers(socket: string): Promise<boolean> {
  let peer: RawPeer;
  try {
    peer = RawPeer.connect(socket);
  } catch {
    return false;
  }
  peer.send(GET_INFO);
  try {
    await peer.until(1);
    return isGetInfoReply(peer.replies[0]);
  } finally {
    peer.close();
  }
}
