// Files whose last close blocks (issue #8 item 1): a TCP socket with SO_LINGER {on, 30 s} and a
// full send queue toward a peer that never reads, made and sent by hostile-peer.c lingering-fd.
// Whichever thread drops its last reference waits out the linger. The daemon must drop it off
// its event loop on every path a client can steer it to: an fd riding on a call that takes none,
// more fds than a message may carry, an fd named as the Open target that is no pidfd, and a
// connection socket closed with such fds still in its receive queue.
//
// The checks are behavioural: another client is answered (and this process's loop runs) while
// the lingering close is still pending. The one bound on time is half the linger, which only a
// close on the loop can reach. The receiver is held off (SIGSTOP, or a listening socket nobody
// accepts on yet) until the fixture has closed its own copies: otherwise a fast receiver could
// drop its references first and leave the fixture's own close to linger.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { buildC } from '../../bench/c-build.ts';
import { native } from '../../native/binding.ts';
import { sys } from '../../native/sys.ts';
import { UnixServer } from '../../native/socket.ts';
import { BrokerProcess, REPO } from '../support/daemon.ts';
import { settledLeaks, openFds } from '../support/fds.ts';
import { closesDone } from '../native/fd-audit.ts';
import { GET_INFO, isGetInfoReply, RawPeer } from './support/raw-peer.ts';

const LINGER_S = 30;
/** Far below the linger: only a close on the event loop takes this long. */
const PROMPT_MS = (LINGER_S * 1000) / 2;

let hostilePeer: string;
before(() => {
  hostilePeer = buildC(join(REPO, 'test/hostile/fixtures/hostile-peer.c'));
});

class Lingerer {
  readonly #lines: string[] = [];
  #wake: (() => void) | undefined;
  readonly #exit: Promise<void>;

  private constructor(readonly child: ChildProcess, lines: Interface) {
    lines.on('line', (l) => { this.#lines.push(l); this.#wake?.(); });
    this.#exit = new Promise((resolve) => child.once('exit', () => resolve()));
  }

  /** Starts the fixture and resolves once its fds are sent and its own copies closed. */
  static async start(socket: string, count: number, method: 'status' | 'open'): Promise<Lingerer> {
    const child = spawn(hostilePeer, ['lingering-fd', socket, String(LINGER_S), String(count), method],
      { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream });
    const l = new Lingerer(child, lines);
    assert.equal(await l.line(), 'sent');
    return l;
  }

  /** The next line it prints (hang guard: twice the linger, so an old daemon fails, not hangs). */
  async line(): Promise<string> {
    const deadline = Date.now() + 2 * LINGER_S * 1000;
    while (this.#lines.length === 0) {
      if (Date.now() > deadline || this.child.exitCode !== null) throw new Error('lingering-fd said nothing more');
      await new Promise<void>((resolve) => { this.#wake = resolve; setTimeout(resolve, 100).unref(); });
    }
    return this.#lines.shift() as string;
  }

  /** Lets it exit: its TCP peer closes with unread data (RST), ending the lingering close. */
  async release(): Promise<void> {
    this.child.stdin?.end();
    await this.#exit;
  }
}

const lingerers: Lingerer[] = [];
after(async () => {
  for (const l of lingerers.splice(0)) await l.release();
});

async function lingering(socket: string, count: number, method: 'status' | 'open'): Promise<Lingerer> {
  const l = await Lingerer.start(socket, count, method);
  lingerers.push(l);
  return l;
}

/** Another client's GetInfo, answered. */
async function getInfo(socket: string): Promise<void> {
  const peer = RawPeer.connect(socket);
  try {
    peer.send(GET_INFO);
    await peer.until(1, 2 * LINGER_S * 1000);
    assert.ok(isGetInfoReply(peer.replies[0]), `GetInfo was not answered: ${JSON.stringify(peer.replies)}`);
  } finally {
    peer.close();
  }
}

/** What the daemon answers with the lingering fd(s) in hand, and that it answers others meanwhile. */
async function daemonStaysResponsive(count: number, method: 'status' | 'open', answer: string): Promise<void> {
  const broker = await BrokerProcess.start();
  const daemonPid = broker.child.pid;
  assert.ok(daemonPid !== undefined);
  const fdsBefore = openFds(daemonPid);
  try {
    process.kill(daemonPid, 'SIGSTOP');
    let l: Lingerer;
    try {
      l = await lingering(broker.socket, count, method);
    } finally {
      process.kill(daemonPid, 'SIGCONT');
    }
    const started = Date.now();
    // The daemon answers (or closes) only after it dealt with the fds: on the loop, that took
    // the whole linger.
    assert.equal(await l.line(), answer);
    await getInfo(broker.socket);
    const elapsed = Date.now() - started;
    assert.ok(elapsed < PROMPT_MS, `the daemon stalled for ${elapsed} ms: the lingering close ran on its event loop`);
    await l.release();
    assert.deepEqual(await settledLeaks(fdsBefore, daemonPid), [], 'the daemon closed every fd it was sent');
  } finally {
    await broker.stop();
    broker.cleanup();
  }
}

test('a lingering socket sent with a Status call does not delay another client', async () => {
  await daemonStaysResponsive(1, 'status', 'reply org.varlink.service.InvalidParameter');
});

test('more fds than one message may carry: the connection closes, the excess is closed off the loop', async () => {
  // 20 > the 16 fds one message may carry: before, recvmsg had room for 16 only, and the kernel
  // dropped the rest (MSG_CTRUNC) in the daemon's loop thread.
  await daemonStaysResponsive(20, 'open', 'eof');
});

test('a lingering socket named as the Open target (not a pidfd) is refused and closed off the loop', async () => {
  await daemonStaysResponsive(1, 'open', 'reply org.varlink.service.InvalidParameter');
});

test('a connection closed with a lingering fd in its receive queue does not stall the loop', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-lingering-'));
  // No 'connection' listener: each accepted socket is closed at once, unread, its peer's fds
  // still queued (as when the daemon refuses a connection over its caps).
  // Accepting starts only once the fixture has sent and closed its copies.
  const listening = sys('listen', native.listenUnix(join(dir, 'refusing.sock'), 8, 0o600));
  let server: UnixServer | undefined;
  try {
    const l = await lingering(join(dir, 'refusing.sock'), 1, 'status');
    const started = Date.now();
    server = UnixServer.adopt(listening);
    assert.equal(await l.line(), 'eof', 'the server closed the connection without reading');
    await new Promise((resolve) => setTimeout(resolve, 10));
    const elapsed = Date.now() - started;
    assert.ok(elapsed < PROMPT_MS, `this process's loop stalled for ${elapsed} ms closing the socket`);
    assert.ok(native.pendingCloses() >= 1, 'the close is still lingering, on a closer thread');
    await l.release();
    await closesDone();
    assert.equal(native.pendingCloses(), 0);
  } finally {
    if (server !== undefined) server.close();
    else native.close(listening);
    rmSync(dir, { recursive: true, force: true });
  }
});
