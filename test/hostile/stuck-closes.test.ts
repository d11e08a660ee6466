// Closes that never finish, from one uid (the follow-up of issue #8 item 1). Four lingering TCP
// sockets (SO_LINGER 30 s, full send queue: hostile-peer.c lingering-fd), each sent by uid 65534
// on its own Status call, used to occupy all four closer threads: every client fd and client
// socket closed after that stayed open, for everyone, until RLIMIT_NOFILE. Now at most two
// closes of one uid run at once and the pool grows for the others; a uid with too many closes
// pending gets no fds and no connections in (ClosesPending), and its fd-less calls still work.
//
// The checks are behavioural: another uid's fds are closed while the lingering closes are
// still pending (far within the linger), and the over-quota uid is answered as documented.
// The daemon is held off (SIGSTOP) until each fixture has closed its own copies, so that the
// daemon holds the last reference.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync } from 'node:fs';
import { createInterface, type Interface } from 'node:readline';
import { join } from 'node:path';
import { buildC } from '../../bench/c-build.ts';
import { BrokerProcess, REPO } from '../support/daemon.ts';
import { openFds } from '../support/fds.ts';
import { STRIP } from './support/processes.ts';
import { GET_INFO, isGetInfoReply, RawPeer } from './support/raw-peer.ts';

const LINGER_S = 30;
/** Far below the linger: a close stuck behind a lingering one takes the whole linger. */
const PROMPT_MS = (LINGER_S * 1000) / 2;
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];
const STATUS = Buffer.from('{"method":"io.iommufd.Broker.Status"}\0');

let hostilePeer: string;
before(() => {
  hostilePeer = buildC(join(REPO, 'test/hostile/fixtures/hostile-peer.c'));
});

/** A fixture run as uid 65534, read line by line. */
class Nobody {
  readonly #lines: string[] = [];
  #wake: (() => void) | undefined;
  readonly exited: Promise<void>;

  constructor(args: readonly string[]) {
    this.child = spawn('setpriv', [...NOBODY, ...STRIP, '--', hostilePeer, ...args], { stdio: ['pipe', 'pipe', 'inherit'] });
    const lines: Interface = createInterface({ input: this.child.stdout as NodeJS.ReadableStream });
    lines.on('line', (l) => { this.#lines.push(l); this.#wake?.(); });
    this.exited = new Promise((resolve) => this.child.once('exit', () => resolve()));
  }

  readonly child: ChildProcess;

  /** Its next line (hang guard: twice the linger, so an old daemon fails instead of hanging). */
  async line(): Promise<string> {
    const deadline = Date.now() + 2 * LINGER_S * 1000;
    while (this.#lines.length === 0) {
      if (Date.now() > deadline || this.child.exitCode !== null) throw new Error('the fixture said nothing more');
      await new Promise<void>((resolve) => { this.#wake = resolve; setTimeout(resolve, 100).unref(); });
    }
    return this.#lines.shift() as string;
  }

  /** Lets it go on (a line on stdin). */
  poke(): void {
    this.child.stdin?.write('go\n');
  }

  /** Lets it exit: a lingering socket's TCP peer then closes (RST), ending its close at once. */
  async release(): Promise<void> {
    this.child.stdin?.end();
    await this.exited;
  }
}

const fixtures: Nobody[] = [];
after(async () => {
  for (const f of fixtures.splice(0)) await f.release();
});

/** n lingering sockets from uid 65534, each on its own Status call, answered (the daemon holds the last reference). */
async function lingerers(broker: BrokerProcess, n: number): Promise<void> {
  const pid = broker.child.pid as number;
  process.kill(pid, 'SIGSTOP');
  const started: Nobody[] = [];
  try {
    for (let i = 0; i < n; i++) {
      const l = new Nobody(['lingering-fd', broker.socket, String(LINGER_S), '1', 'status']);
      fixtures.push(l);
      started.push(l);
      assert.equal(await l.line(), 'sent');
    }
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  for (const l of started) assert.equal(await l.line(), 'reply org.varlink.service.InvalidParameter');
}

/** How many of the daemon's fds point at /dev/null (what our honest client sends it). */
function devNulls(pid: number): number {
  return [...openFds(pid).values()].filter((t) => t === '/dev/null').length;
}

test('four lingering sockets from one uid hold up no other uid\'s closes', async () => {
  const broker = await BrokerProcess.start();
  const pid = broker.child.pid as number;
  const baseline = devNulls(pid); // its stdin and the like
  try {
    await lingerers(broker, 4);
    const started = Date.now();
    // Another uid (root, this process): 50 connections, each sending an fd it may not send.
    for (let i = 0; i < 50; i++) {
      const peer = RawPeer.connect(broker.socket);
      try {
        const fd = openSync('/dev/null', 'r');
        peer.send(STATUS, [fd]);
        await peer.until(1, 2 * LINGER_S * 1000);
      } finally {
        peer.close();
      }
    }
    while (devNulls(pid) > baseline && Date.now() - started < PROMPT_MS) await new Promise((r) => setTimeout(r, 50));
    const elapsed = Date.now() - started;
    assert.equal(devNulls(pid) - baseline, 0, `another uid's fds were still open after ${elapsed} ms: stuck behind the lingering closes`);
    const other = RawPeer.connect(broker.socket);
    try {
      other.send(GET_INFO);
      await other.until(1, 2 * LINGER_S * 1000);
      assert.ok(isGetInfoReply(other.replies[0]));
    } finally {
      other.close();
    }
    assert.ok(Date.now() - started < PROMPT_MS, 'all within half the linger');
  } finally {
    for (const f of fixtures.splice(0)) await f.release();
    await broker.stop();
    broker.cleanup();
  }
});

test('a uid over its quota of pending closes: fd-carrying calls get ClosesPending, new connections are refused, fd-less calls work', async () => {
  const broker = await BrokerProcess.start({ extraArgs: ['--max-pending-closes-per-uid', '3'] });
  try {
    // Connected (and answered) before its uid has anything pending.
    const early = new Nobody(['fd-call-after', broker.socket]);
    fixtures.push(early);
    assert.equal(await early.line(), 'info ok');
    await lingerers(broker, 3); // 2 closes running, 1 queued: 3 pending for uid 65534
    early.poke();
    assert.equal(await early.line(), 'info ok', 'a call without fds is still served');
    const reply = await early.line();
    const m = /^reply (.*)$/.exec(reply);
    assert.ok(m?.[1] !== undefined, reply);
    const parsed = JSON.parse(m[1]) as { error?: string; parameters: Record<string, unknown> };
    assert.equal(parsed.error, 'io.iommufd.Broker.ClosesPending', m[1]);
    assert.equal(parsed.parameters['uid'], 65534);
    assert.equal(parsed.parameters['maximum'], 3);
    assert.ok(Number(parsed.parameters['pendingCloses']) >= 3);
    assert.equal(await early.line(), 'closed', 'the connection is closed after the refusal');

    const late = new Nobody(['fd-call-after', broker.socket]);
    fixtures.push(late);
    // Closed at once, unanswered: the fixture sees EOF on its read (GetInfo) or, when the close
    // came before its write, EPIPE on its sendmsg.
    assert.match(await late.line(), /^error (GetInfo|sendmsg) (ECONNRESET|EPIPE)$/, 'a new connection from that uid is closed unanswered');
    await broker.waitForLog((l) => l.msg.startsWith('connection refused:') && /still being closed/.test(l.msg));

    // Another uid is not affected.
    const other = RawPeer.connect(broker.socket);
    try {
      const fd = openSync('/dev/null', 'r');
      other.send(STATUS, [fd]);
      await other.until(1, 10_000);
      assert.equal(other.replies[0]?.['error'], 'org.varlink.service.InvalidParameter');
    } finally {
      other.close();
    }
  } finally {
    for (const f of fixtures.splice(0)) await f.release();
    await broker.stop();
    broker.cleanup();
  }
});
