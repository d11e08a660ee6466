// UnixServer: listening with an exact mode, refusing non-sockets and live sockets, replacing
// stale ones, unlinking only its own path, adopting a listening fd, many connections at once.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { lstatSync, writeFileSync, existsSync, renameSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, test } from 'node:test';
import { native } from '../../native/binding.ts';
import { UnixConnection, UnixServer } from '../../native/socket.ts';
import { closeFd, memfd, sys, SysError } from '../../native/sys.ts';
import { isOpen, withNoFdLeak } from './fd-audit.ts';
import { closeTracked, makeTempDir, receive, track } from './socket-fixtures.ts';

/** Hang guard only (not a timing assertion): a lost event fails the test instead of stalling the file. */
const GUARD = { timeout: 60_000 };
afterEach(closeTracked);

/** Call before close(): resolves on the 'close' event that follows. */
function closed(emitter: UnixServer | UnixConnection): Promise<void> {
  return new Promise((resolve) => emitter.once('close', resolve));
}

async function withTempDir(body: (dir: string) => Promise<void> | void): Promise<void> {
  const temp = makeTempDir();
  try {
    await withNoFdLeak(() => body(temp.dir));
  } finally {
    temp.remove();
  }
}

test('listen creates the socket with the given mode, accepts, and close() unlinks it', GUARD, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'broker.sock');
    const server = track(UnixServer.listen(path, { mode: 0o660, backlog: 8 }));
    assert.equal(server.address, path);
    const stat = lstatSync(path);
    assert.ok(stat.isSocket());
    assert.equal(stat.mode & 0o777, 0o660);
    const accepted = once(server, 'connection') as Promise<[UnixConnection]>;
    const client = track(UnixConnection.connect(path));
    const conn = track((await accepted)[0]);
    const arriving = receive(conn, 4);
    client.send(Buffer.from('ping'));
    assert.equal((await arriving).data.toString(), 'ping');
    const done = Promise.all([closed(server), closed(client), closed(conn)]);
    server.close();
    server.close(); // idempotent
    client.close();
    conn.close();
    await done;
    assert.equal(existsSync(path), false);
  });
});

test('listen refuses a path that is a regular file, and leaves the file alone', GUARD, async () => {
  await withTempDir((dir) => {
    const path = join(dir, 'not-a-socket');
    writeFileSync(path, 'precious');
    assert.throws(() => UnixServer.listen(path, { mode: 0o600, backlog: 1 }),
      (e: unknown) => e instanceof SysError && e.code === 'EEXIST' && /is not a socket/.test(e.message));
    assert.equal(readFileSync(path, 'utf8'), 'precious');
  });
});

test('listen replaces a stale socket nobody listens on', GUARD, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'stale.sock');
    closeFd(sys('listen', native.listenUnix(path, 1, 0o600))); // leaves the file behind
    assert.ok(lstatSync(path).isSocket());
    const server = track(UnixServer.listen(path, { mode: 0o600, backlog: 1 }));
    const accepted = once(server, 'connection') as Promise<[UnixConnection]>;
    const client = track(UnixConnection.connect(path));
    const conn = track((await accepted)[0]);
    const done = Promise.all([closed(server), closed(client), closed(conn)]);
    for (const c of [server, client, conn]) c.close();
    await done;
  });
});

test('listen refuses (EADDRINUSE) a path another server listens on; that server keeps working', GUARD, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'live.sock');
    const first = track(UnixServer.listen(path, { mode: 0o600, backlog: 4 }));
    const probes: UnixConnection[] = [];
    first.on('connection', (conn: UnixConnection) => probes.push(track(conn)));
    assert.throws(() => UnixServer.listen(path, { mode: 0o600, backlog: 4 }),
      (e: unknown) => e instanceof SysError && e.code === 'EADDRINUSE');
    const accepted = once(first, 'connection') as Promise<[UnixConnection]>;
    const client = track(UnixConnection.connect(path));
    const conn = track((await accepted)[0]);
    const all = [first, client, conn, ...probes];
    const done = Promise.all(all.map(closed));
    for (const c of all) c.close();
    await done;
  });
});

test('close() does not unlink a path that now names another server\'s socket', GUARD, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'shared.sock');
    const old = track(UnixServer.listen(path, { mode: 0o600, backlog: 1 }));
    renameSync(path, join(dir, 'moved-away.sock'));
    const successor = track(UnixServer.listen(path, { mode: 0o600, backlog: 1 }));
    const done = closed(old);
    old.close();
    await done;
    assert.ok(lstatSync(path).isSocket(), 'the successor\'s socket is still there');
    const accepted = once(successor, 'connection') as Promise<[UnixConnection]>;
    const client = track(UnixConnection.connect(path));
    const conn = track((await accepted)[0]);
    const all = [successor, client, conn];
    const finished = Promise.all(all.map(closed));
    for (const c of all) c.close();
    await finished;
  });
});

test('adopt() takes a listening fd (as from systemd) and never unlinks its path', GUARD, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'activated.sock');
    const server = track(UnixServer.adopt(sys('listen', native.listenUnix(path, 4, 0o600))));
    assert.equal(server.address, null);
    const accepted = once(server, 'connection') as Promise<[UnixConnection]>;
    const client = track(UnixConnection.connect(path));
    const conn = track((await accepted)[0]);
    const all = [server, client, conn];
    const done = Promise.all(all.map(closed));
    for (const c of all) c.close();
    await done;
    assert.ok(existsSync(path), 'the socket file belongs to whoever created it');
    const file = memfd('not-listening');
    assert.throws(() => UnixServer.adopt(file), (e: unknown) => e instanceof SysError && e.code === 'ENOTSOCK');
    assert.equal(isOpen(file), false);
  });
});

test('many clients connecting at once are all accepted (more than one accept batch)', GUARD, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'busy.sock');
    const server = track(UnixServer.listen(path, { mode: 0o600, backlog: 64 }));
    const accepted: UnixConnection[] = [];
    const count = 40;
    const all = new Promise<void>((resolve) => {
      server.on('connection', (conn: UnixConnection) => {
        accepted.push(track(conn));
        if (accepted.length === count) resolve();
      });
    });
    const clients = Array.from({ length: count }, () => track(UnixConnection.connect(path)));
    await all;
    const pids = new Set(accepted.map((c) => c.peerCred().pid));
    assert.deepEqual([...pids], [process.pid]);
    const everything = [server, ...clients, ...accepted];
    const done = Promise.all(everything.map(closed));
    for (const c of everything) c.close();
    await done;
  });
});

test('a connection nobody listens for is closed at once', GUARD, async () => {
  await withTempDir(async (dir) => {
    const path = join(dir, 'deaf.sock');
    const server = track(UnixServer.listen(path, { mode: 0o600, backlog: 1 }));
    const client = track(UnixConnection.connect(path));
    const ended = new Promise<void>((resolve) => client.once('end', resolve));
    await ended;
    const done = Promise.all([closed(server), closed(client)]);
    server.close();
    client.close();
    await done;
  });
});
