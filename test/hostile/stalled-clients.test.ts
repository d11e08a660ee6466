// Clients that hold on without playing along: half-open sockets, one-byte dribblers, clients
// that pipeline calls and never read a reply, clients that never say anything, one uid holding
// as many connections as it can, and many uids together filling every connection they may.
// Each must cost the daemon a bounded amount, none may starve another uid, and no crowd of
// clients may lock out the managers (the reserved connections); a frame that never completes
// is closed by the frame timeout, however slowly its bytes keep coming.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildC } from '../../bench/c-build.ts';
import { DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_UID, DEFAULT_RESERVED_CONNECTIONS } from '../../daemon/flags.ts';
import { memfd } from '../../native/sys.ts';
import { BrokerProcess, REPO } from '../support/daemon.ts';
import { LineReader, NOBODY, exited, spawnStripped } from '../support/children.ts';
import { openFds, settledLeaks } from '../support/fds.ts';
import { sampleValue, scrape } from '../support/metrics.ts';
import { GET_INFO, RawPeer, call, isGetInfoReply } from './support/raw-peer.ts';
import { rssBytes } from './support/processes.ts';

const MiB = 1024 ** 2;
/** daemon/flags.ts: the default --max-connections-per-uid. */
const PER_UID = DEFAULT_MAX_CONNECTIONS_PER_UID;
let broker: BrokerProcess;

before(async () => { broker = await BrokerProcess.start(); });
after(async () => { await broker.stop(); broker.cleanup(); });

function daemonPid(): number {
  const pid = broker.child.pid;
  assert.ok(pid !== undefined);
  return pid;
}

async function statusAsNobody(): Promise<{ ok?: unknown; error?: string }> {
  const r = new LineReader(spawnStripped('test/support/call-as.ts', [broker.socket, 'status', '{}'], { uid: NOBODY }));
  const result = await r.next<{ ok?: unknown; error?: string }>();
  await exited(r.child);
  return result;
}

test('half-open: a call followed by shutdown(SHUT_WR) is still answered, then the daemon closes', async () => {
  const peer = RawPeer.connect(broker.socket);
  peer.send(GET_INFO);
  peer.shutdownWrite();
  await peer.untilEnded();
  peer.close();
  assert.equal(peer.replies.length, 1);
  assert.ok(isGetInfoReply(peer.replies[0]));
});

test('half-open mid-frame with an fd attached: the daemon closes the connection and the fd', async () => {
  const before = openFds(daemonPid());
  const peer = RawPeer.connect(broker.socket);
  peer.send(Buffer.from('{"method":"io.iommufd.Broker.Sta'), [memfd('half-open')]);
  peer.shutdownWrite();
  await peer.untilEnded();
  peer.close();
  assert.deepEqual(peer.replies, [], 'a truncated frame is never answered');
  assert.deepEqual(await settledLeaks(before, daemonPid()), []);
});

test('a frame dribbled one byte per write is answered like any other', async () => {
  const peer = RawPeer.connect(broker.socket);
  for (const byte of call('io.iommufd.Broker.Status')) {
    peer.send(Buffer.from([byte]));
    await new Promise((r) => setImmediate(r));
  }
  await peer.until(1);
  peer.close();
  assert.equal(peer.replies[0]?.['error'], undefined, JSON.stringify(peer.replies[0]));
});

test(`one uid gets at most ${PER_UID} connections; other uids are still served, and closing frees slots`, async () => {
  const before = openFds(daemonPid());
  const mine: RawPeer[] = [];
  try {
    for (let i = 0; i < PER_UID; i++) {
      const peer = RawPeer.connect(broker.socket);
      peer.send(GET_INFO);
      mine.push(peer);
    }
    await Promise.all(mine.map((p) => p.until(1)));
    assert.ok(mine.every((p) => isGetInfoReply(p.replies[0])), `all ${PER_UID} were accepted and answered`);

    const extra = RawPeer.connect(broker.socket);
    extra.send(GET_INFO);
    await extra.untilEnded();
    extra.close();
    assert.deepEqual(extra.replies, [], 'the connection over the cap was closed unanswered');
    await broker.waitForLog((l) => l.msg === 'connection refused: too many connections'
      && (l['peer'] as { uid?: number } | undefined)?.uid === process.getuid?.());

    const other = await statusAsNobody();
    assert.ok(other.ok !== undefined, `another uid is served while we hold ${PER_UID}: ${JSON.stringify(other)}`);

    mine.pop()?.close();
    const again = RawPeer.connect(broker.socket);
    let answered = false;
    for (let attempt = 0; attempt < 50 && !answered; attempt++) {
      // The daemon learns of the close asynchronously: retry until the slot is free.
      const probe = attempt === 0 ? again : RawPeer.connect(broker.socket);
      probe.send(GET_INFO);
      await probe.until(1);
      answered = isGetInfoReply(probe.replies[0]);
      probe.close();
      if (!answered) await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(answered, 'a freed slot is usable again');
  } finally {
    for (const p of mine) p.close();
  }
  assert.deepEqual(await settledLeaks(before, daemonPid()), [], 'every connection\'s socket and peer pidfd were closed');
});

test('a client that pipelines calls and never reads cannot grow the daemon without bound', async () => {
  const calls = 80_000;
  const before = openFds(daemonPid());
  const rssBefore = rssBytes(daemonPid());
  const flood = RawPeer.connect(broker.socket);
  flood.pause();
  const batch = Buffer.concat(Array.from({ length: 1000 }, () => call('io.iommufd.Broker.Status')));
  for (let i = 0; i < calls / 1000; i++) flood.send(batch);

  // Meanwhile another client is served.
  const victim = RawPeer.connect(broker.socket);
  victim.send(GET_INFO);
  await victim.until(1);
  victim.close();
  assert.ok(isGetInfoReply(victim.replies[0]), 'another client was answered during the flood');

  // Let the daemon do whatever it will with the flood (RSS stops moving), then measure.
  let last = rssBytes(daemonPid());
  for (let i = 0; i < 50; i++) {
    await new Promise((r) => setTimeout(r, 200));
    const now = rssBytes(daemonPid());
    if (Math.abs(now - last) < MiB) break;
    last = now;
  }
  const grown = rssBytes(daemonPid()) - rssBefore;
  flood.close();
  assert.ok(grown < 48 * MiB, `daemon RSS grew by ${(grown / MiB).toFixed(1)} MiB for ${calls} unread replies`);
  assert.deepEqual(await settledLeaks(before, daemonPid()), []);
});

test('a client that connects and never sends a byte is closed after the idle timeout', async () => {
  const idle = await BrokerProcess.start({ extraArgs: ['--idle-timeout', '1s'] });
  try {
    const silent = RawPeer.connect(idle.socket);
    const halfFrame = RawPeer.connect(idle.socket);
    halfFrame.send(Buffer.from('{"method":'));
    await silent.untilEnded(10_000);
    await halfFrame.untilEnded(10_000);
    silent.close();
    halfFrame.close();
    const busy = RawPeer.connect(idle.socket);
    busy.send(GET_INFO);
    await busy.until(1);
    busy.close();
    assert.ok(isGetInfoReply(busy.replies[0]), 'an active client is not timed out');
  } finally {
    await idle.stop();
    idle.cleanup();
  }
});

interface Held { answered: number; refused: number; failed: number; release: () => Promise<void> }

let holdConnections: string | undefined;

/** `n` connections held by one process running as `uid` (test/hostile/fixtures/hold-connections.c). */
async function holdAs(uid: number, socket: string, n: number): Promise<Held> {
  holdConnections ??= buildC(join(REPO, 'test/hostile/fixtures/hold-connections.c'));
  const child = spawn('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--inh-caps=-all', '--ambient-caps=-all',
    '--bounding-set=-all', '--', holdConnections, socket, String(n)], { stdio: ['pipe', 'pipe', 'pipe'] });
  const counts = await new LineReader(child).next<{ answered: number; refused: number; failed: number }>();
  return { ...counts, release: async () => { child.stdin?.end(); await exited(child); } };
}

/** A probe connection from this process (root, a manager): answered, or turned away. */
async function rootAnswered(socket: string): Promise<boolean> {
  const peer = RawPeer.connect(socket);
  peer.send(GET_INFO);
  await peer.until(1); // a reply, or the daemon's close
  peer.close();
  return isGetInfoReply(peer.replies[0]);
}

const refusedSeries = (reason: string): string => `iommufd_broker_refused_total{stage="connection",reason="${reason}"}`;

test('the last reserved connections are for managers and root: clients filling every other slot cannot lock them out', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-reserve-'));
  chmodSync(dir, 0o755);
  const policy = join(dir, 'policy.toml');
  const MANAGER = 60_001;
  writeFileSync(policy, `[managers]\nusers = ["root", ${MANAGER}]\n`);
  const admin = join(dir, 'admin.sock');
  // 10 in all, 4 per uid, 3 kept back: clients together get 7.
  const broker = await BrokerProcess.start({ dir, extraArgs: ['--config', policy, '--admin-socket', admin,
    '--max-connections', '10', '--max-connections-per-uid', '4', '--reserved-connections', '3'] });
  const held: Held[] = [];
  try {
    held.push(await holdAs(NOBODY, broker.socket, 4));
    assert.deepEqual([held[0]?.answered, held[0]?.refused], [4, 0]);
    held.push(await holdAs(60_002, broker.socket, 4));
    assert.deepEqual([held[1]?.answered, held[1]?.refused], [3, 1], 'the 8th client connection would eat into the reserve');
    const line = await broker.waitForLog((l) => l.msg === 'connection refused: the remaining connections are reserved for managers');
    assert.deepEqual([line['audit'], line['action'], (line['peer'] as { uid: number }).uid, line['reservedConnections']], ['deny', 'connect', 60_002, 3]);
    held.push(await holdAs(60_003, broker.socket, 1));
    assert.deepEqual([held[2]?.answered, held[2]?.refused], [0, 1], 'another uid, well under its own cap, is refused too');

    held.push(await holdAs(MANAGER, broker.socket, 2));
    assert.deepEqual([held[3]?.answered, held[3]?.refused], [2, 0], 'a manager (by policy, not root) uses the reserve');
    assert.equal(await rootAnswered(broker.socket), true, 'root uses the last reserved connection');
    const metrics = await scrape(admin);
    assert.equal(sampleValue(metrics, refusedSeries('reserved-for-managers')), 2);
  } finally {
    for (const h of held) await h.release();
    await broker.stop();
    broker.cleanup();
  }
});

test(`at the real defaults (${DEFAULT_MAX_CONNECTIONS} connections, ${PER_UID} per uid, ${DEFAULT_RESERVED_CONNECTIONS} reserved), many uids filling their caps leave room for root`, async () => {
  const clientShare = DEFAULT_MAX_CONNECTIONS - DEFAULT_RESERVED_CONNECTIONS;
  const uids = Math.ceil(clientShare / PER_UID) + 2; // more client uids than the client share holds
  const broker = await BrokerProcess.start();
  const held: Held[] = [];
  try {
    for (let i = 0; i < uids; i++) held.push(await holdAs(61_000 + i, broker.socket, PER_UID));
    const answered = held.reduce((sum, h) => sum + h.answered, 0);
    assert.equal(held.reduce((sum, h) => sum + h.failed, 0), 0, 'every connection was either answered or turned away');
    assert.equal(answered, clientShare, `clients together hold exactly ${clientShare} connections`);
    assert.equal(await rootAnswered(broker.socket), true, 'root still gets in');
  } finally {
    for (const h of held) await h.release();
    await broker.stop();
    broker.cleanup();
  }
});

test('a frame dribbled one byte at a time, never finished, is closed by the frame timeout; the idle timeout would never fire', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-frame-timeout-'));
  chmodSync(dir, 0o755);
  const admin = join(dir, 'admin.sock');
  const broker = await BrokerProcess.start({ dir, extraArgs: ['--frame-timeout', '1s', '--idle-timeout', '30s', '--admin-socket', admin] });
  const dripper = RawPeer.connect(broker.socket);
  const bytes = call('io.iommufd.Broker.Status');
  const patient = RawPeer.connect(broker.socket);
  try {
    // One byte every 100 ms: far inside the idle timeout each time, never the whole frame
    // (the NUL is held back), until the daemon closes the connection or 20 s have passed.
    for (let i = 0; i < 200 && !dripper.ended; i++) {
      dripper.send(Buffer.from([bytes[i % (bytes.length - 1)] ?? 0x20]));
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(dripper.ended, true, 'the daemon closed the dripping connection');
    assert.deepEqual(dripper.replies, [], 'an unfinished frame is never answered');
    const line = await broker.waitForLog((l) => l.msg === 'connection closed: a message did not complete in time');
    assert.deepEqual([line['audit'], line['action'], line['frameTimeoutMs']], ['deny', 'receive', 1000]);
    assert.equal(sampleValue(await scrape(admin), refusedSeries('frame-timeout')), 1);
    // A connection that completes its frames is not touched by the frame clock.
    patient.send(GET_INFO);
    await patient.until(1);
    assert.ok(isGetInfoReply(patient.replies[0]));
    assert.equal(patient.ended, false);
  } finally {
    dripper.close();
    patient.close();
    await broker.stop();
    broker.cleanup();
  }
});
