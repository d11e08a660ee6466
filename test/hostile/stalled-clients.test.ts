// Clients that hold on without playing along: half-open sockets, one-byte dribblers, clients
// that pipeline calls and never read a reply, clients that never say anything, and one uid
// holding as many connections as it can. Each must cost the daemon a bounded amount, and none
// may starve another uid.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { memfd } from '../../native/sys.ts';
import { BrokerProcess } from '../support/daemon.ts';
import { LineReader, NOBODY, exited, spawnStripped } from '../support/children.ts';
import { openFds, settledLeaks } from '../support/fds.ts';
import { GET_INFO, RawPeer, call, isGetInfoReply } from './support/raw-peer.ts';
import { rssBytes } from './support/processes.ts';

const MiB = 1024 ** 2;
/** daemon/main.ts: VarlinkServer maxConnectionsPerUid. */
const PER_UID = 64;
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
