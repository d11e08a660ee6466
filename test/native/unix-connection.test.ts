// UnixConnection over real sockets: fd passing (1 and 3 fds, CLOEXEC, same open file), fd
// ownership on send, MSG_CTRUNC, EOF, peer credentials, large sends through EAGAIN
// queueing, back-pressure, and no fd left open by any test.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { afterEach, test } from 'node:test';
import { UnixConnection } from '../../native/socket.ts';
import { closeFd, dupCloexec, fstatFd, kcmpFiles, memfd, pidOfPidfd, SysError } from '../../native/sys.ts';
import { isCloexec, isOpen, settle, withNoFdLeak } from './fd-audit.ts';
import { closePair, closeTracked, connectedPair, rawSocketPair, receive, track } from './socket-fixtures.ts';

/** Hang guard only (not a timing assertion): a lost event fails the test instead of stalling the file. */
const GUARD = { timeout: 60_000 };
afterEach(closeTracked);

/** Sends `count` fresh memfds with `data`; returns dups of them (ours to close) to compare with. */
function sendMemfds(conn: UnixConnection, data: string, count: number): number[] {
  const files = Array.from({ length: count }, (_, i) => memfd(`sent-${i}`));
  const keep = files.map((fd) => dupCloexec(fd));
  assert.equal(conn.send(Buffer.from(data), files), true);
  return keep;
}

for (const count of [1, 3]) {
  test(`${count} fd(s) arrive with their bytes, CLOEXEC, the same open files; the sender's copies are closed`, GUARD, async () => {
    await withNoFdLeak(async () => {
      const pair = await connectedPair();
      const arriving = receive(pair.server, 5);
      const keep = sendMemfds(pair.client, 'hello', count);
      const { data, fdsByChunk } = await arriving;
      assert.equal(data.toString(), 'hello');
      const received = fdsByChunk.flat();
      assert.equal(received.length, count);
      received.forEach((fd, i) => {
        assert.ok(isCloexec(fd), `received fd ${fd} lacks O_CLOEXEC`);
        assert.ok(kcmpFiles(process.pid, keep[i] ?? -1, process.pid, fd), `fd ${i} is not the file that was sent`);
        assert.equal(fstatFd(fd).ino, fstatFd(keep[i] ?? -1).ino);
      });
      [...keep, ...received].forEach(closeFd);
      await closePair(pair);
    });
  });
}

test('fds queued behind unsent data are closed by close(), never leaked', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    pair.server.pause();
    const big = Buffer.alloc(4 * 1024 * 1024, 1);
    pair.client.send(big);
    assert.ok(pair.client.sendQueueBytes > 0, 'the socket buffer cannot take 4 MiB at once');
    const file = memfd('queued');
    pair.client.send(Buffer.from('x'), [file]);
    assert.ok(isOpen(file), 'still queued: the connection holds it');
    await closePair(pair);
    assert.equal(isOpen(file), false);
  });
});

test('send() after close refuses, closing the fds it was given', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    await closePair(pair);
    const file = memfd('late');
    assert.equal(pair.client.send(Buffer.from('late'), [file]), false);
    assert.equal(isOpen(file), false);
    assert.throws(() => pair.client.send(Buffer.alloc(0)), TypeError);
    assert.throws(() => pair.client.peerCred(), (e: unknown) => e instanceof SysError && e.code === 'EBADF');
  });
});

test('more fds than maxFdsPerMessage: the receiver fails with EXFULL and closes what arrived', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair({}, { maxFdsPerMessage: 2 });
    const failed = once(pair.server, 'error') as Promise<[SysError]>;
    // Not events.once: it would reject on the 'error' that precedes 'close'.
    const closed = new Promise<void>((resolve) => pair.server.once('close', resolve));
    const keep = sendMemfds(pair.client, 'four', 3);
    const [error] = await failed;
    await closed;
    assert.ok(error instanceof SysError);
    assert.equal(error.code, 'EXFULL');
    assert.match(error.message, /more than 2 fds/);
    keep.forEach(closeFd);
    await closePair(pair);
  });
});

test('peer closing gives end; without an end listener the connection closes itself', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    const ended = once(pair.server, 'end');
    pair.client.close();
    await ended;
    await settle();
    assert.equal(pair.server.closed, false, 'with an end listener the owner decides');
    await closePair(pair);

    const second = await connectedPair();
    const closed = once(second.server, 'close');
    second.client.close();
    await closed;
    assert.equal(second.server.closed, true);
  });
});

test('end() closes after the queue drained: every byte arrives first', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    const payload = Buffer.alloc(2 * 1024 * 1024, 7);
    const arriving = receive(pair.server, payload.length);
    pair.client.send(payload);
    pair.client.end();
    assert.equal(pair.client.closed, false, 'still draining');
    assert.equal(pair.client.send(Buffer.from('x')), false, 'ending: no new data');
    const { data } = await arriving;
    assert.ok(data.equals(payload));
    if (!pair.client.closed) await once(pair.client, 'close');
    await closePair(pair);
  });
});

test('peerCred is this process; peerPidfd names this process', GUARD, async (t) => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    try {
      assert.deepEqual(pair.server.peerCred(), { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.() });
      let pidfd: number;
      try {
        pidfd = pair.server.peerPidfd();
      } catch (error) {
        if (error instanceof SysError && error.code === 'ENOPROTOOPT') {
          t.skip('SO_PEERPIDFD needs Linux 6.5');
          return;
        }
        throw error;
      }
      assert.ok(isCloexec(pidfd));
      assert.equal(pidOfPidfd(pidfd), process.pid);
      closeFd(pidfd);
    } finally {
      await closePair(pair);
    }
  });
});

test('a 3 MiB send arrives intact through EAGAIN queueing, both ways', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    const payload = Buffer.alloc(3 * 1024 * 1024);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 31 + (i >> 12)) & 0xff;
    for (const [from, to] of [[pair.client, pair.server], [pair.server, pair.client]] as const) {
      const arriving = receive(to, payload.length);
      const file = memfd('with-big');
      const keep = dupCloexec(file);
      from.send(payload, [file]);
      assert.ok(from.sendQueueBytes > 0, 'the kernel could not take 3 MiB at once: the rest is queued');
      const { data, fdsByChunk } = await arriving;
      assert.equal(from.sendQueueBytes, 0);
      assert.equal(data.length, payload.length);
      assert.ok(data.equals(payload), 'bytes arrive intact and in order');
      const received = fdsByChunk.flat();
      assert.equal(received.length, 1, 'the fd rides with the first chunk only');
      assert.equal(fdsByChunk[0]?.length, 1);
      assert.ok(kcmpFiles(process.pid, keep, process.pid, received[0] ?? -1));
      [keep, ...received].forEach(closeFd);
    }
    await closePair(pair);
  });
});

test('pause() holds data back (the sender queues); resume() delivers all of it', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    let delivered = 0;
    pair.server.on('data', (chunk: Buffer, fds: number[]) => {
      delivered += chunk.length;
      fds.forEach(closeFd);
    });
    pair.server.pause();
    const payload = Buffer.alloc(2 * 1024 * 1024, 3);
    pair.client.send(payload);
    for (let i = 0; i < 10; i++) await settle();
    assert.equal(delivered, 0);
    assert.ok(pair.client.sendQueueBytes > 0);
    pair.server.resume();
    while (delivered < payload.length) await settle();
    assert.equal(delivered, payload.length);
    await closePair(pair);
  });
});

test('adopt() takes a connected socket fd; a non-socket is refused (ENOTSOCK) and closed', GUARD, async () => {
  await withNoFdLeak(async () => {
    const [listener, client, server] = rawSocketPair();
    closeFd(listener);
    const a = track(UnixConnection.adopt(client));
    const b = track(UnixConnection.adopt(server));
    const arriving = receive(b, 2);
    a.send(Buffer.from('hi'));
    assert.equal((await arriving).data.toString(), 'hi');
    await closePair({ client: a, server: b });
    const file = memfd('not-a-socket');
    assert.throws(() => UnixConnection.adopt(file), (e: unknown) => e instanceof SysError && e.code === 'ENOTSOCK');
    assert.equal(isOpen(file), false);
  });
});

test('connect to a missing path throws SysError ENOENT without leaking', GUARD, async () => {
  await withNoFdLeak(() => {
    assert.throws(() => UnixConnection.connect('/nonexistent/broker.sock'),
      (e: unknown) => e instanceof SysError && e.code === 'ENOENT' && e.syscall === 'connect');
  });
});

test('data with nobody listening: the fds that came with it are closed', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    const keep = sendMemfds(pair.client, 'unheard', 2);
    pair.client.end(); // EOF after the message: seeing 'end' proves the message was read first
    await once(pair.server, 'end');
    keep.forEach(closeFd);
    await closePair(pair); // withNoFdLeak: the two fds the server received were closed
  });
});

test('the peer closing with our bytes unread: ECONNRESET, then close (the POLLERR path)', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    pair.server.pause();
    pair.client.send(Buffer.from('never read'));
    await settle();
    const failed = new Promise<SysError>((resolve) => pair.client.once('error', resolve));
    const closed = new Promise<void>((resolve) => pair.client.once('close', resolve));
    pair.server.close();
    const error = await failed;
    await closed;
    assert.equal(error.code, 'ECONNRESET');
    assert.equal(error.syscall, 'recvmsg');
    await closePair(pair);
  });
});

test('one readiness callback reads a bounded number of messages: other callbacks get their turn', GUARD, async () => {
  await withNoFdLeak(async () => {
    const pair = await connectedPair();
    const total = 100;
    const file = memfd('separator');
    // Each message carries an fd, so the kernel keeps them apart: one recvmsg per message.
    for (let i = 0; i < total; i++) pair.client.send(Buffer.from([i]), [dupCloexec(file)]);
    closeFd(file);
    let delivered = 0;
    let deliveredWhenImmediateRan = -1;
    const all = new Promise<void>((resolve) => {
      pair.server.on('data', (chunk: Buffer, fds: number[]) => {
        fds.forEach(closeFd);
        if (delivered === 0) setImmediate(() => { deliveredWhenImmediateRan = delivered; });
        delivered += chunk.length;
        if (delivered === total) resolve();
      });
    });
    await all;
    assert.ok(deliveredWhenImmediateRan > 0 && deliveredWhenImmediateRan < total,
      `an immediate queued by the first message ran after ${deliveredWhenImmediateRan} of ${total} messages`);
    await closePair(pair);
  });
});
