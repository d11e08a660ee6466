// Admin identity: the fd under a Node socket, SO_PEERCRED through it, connections that cannot
// be identified, and who counts as an admin (the policy's managers, by uid, gid or group).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection, createServer, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { adminRefusal, ConnectionPeers, readSocketPeer, socketFd } from '../../../../daemon/shell/admin/auth.ts';
import { testPolicy } from './fixtures.ts';
import { openFds, settledLeaks } from '../../../support/fds.ts';

test('socketFd finds the fd of an accepted Unix connection, and SO_PEERCRED through it names this process', async () => {
  const before = openFds();
  const dir = mkdtempSync(join(tmpdir(), 'admin-auth-'));
  const server = createServer();
  server.listen(join(dir, 's.sock'));
  await once(server, 'listening');
  const client = createConnection(join(dir, 's.sock'));
  const [accepted] = await once(server, 'connection') as [Socket];
  try {
    const fd = socketFd(accepted);
    assert.ok(fd !== undefined);
    assert.match(openFds().get(fd) ?? '', /^socket:\[\d+\]$/);
    const peer = readSocketPeer(fd);
    assert.deepEqual({ pid: peer.pid, uid: peer.uid, gid: peer.gid, pidfd: peer.pidfd },
      { pid: process.pid, uid: process.getuid?.(), gid: process.getgid?.(), pidfd: undefined });
    assert.ok(Array.isArray(peer.groups));

    const peers = new ConnectionPeers(pino({ level: 'silent' }));
    peers.accept(accepted);
    assert.equal(peers.peerOf(accepted)?.pid, process.pid);
    assert.equal(accepted.destroyed, false);
  } finally {
    client.destroy();
    accepted.destroy();
    server.close();
    await once(server, 'close');
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(await settledLeaks(before, process.pid), [], 'reading credentials keeps no fd');
});

test('a socket with no fd has no peer: ConnectionPeers destroys it and says why', () => {
  const lines: string[] = [];
  const peers = new ConnectionPeers(pino({ level: 'warn' }, { write: (l: string) => { lines.push(l); } }));
  const bare = new Socket();
  assert.equal(socketFd(bare), undefined);
  peers.accept(bare);
  assert.equal(bare.destroyed, true);
  assert.equal(peers.peerOf(bare), undefined);
  assert.match(lines.join(''), /dropping a connection whose peer could not be identified/);
});

test('admins are the policy\'s managers: by uid, by primary gid, or by a supplementary group', () => {
  const policy = testPolicy({ managerUsers: [0], managerGroups: [107] });
  const peer = (uid: number, gid: number, groups: number[] = []) => ({ pid: 42, uid, gid, groups, pidfd: undefined });
  for (const method of ['GET', 'PATCH', 'DELETE', 'POST']) {
    assert.equal(adminRefusal(policy, peer(0, 0), method), undefined);
    assert.equal(adminRefusal(policy, peer(1000, 107), method), undefined);
    assert.equal(adminRefusal(policy, peer(1000, 1000, [27, 107]), method), undefined);
  }
  const refused = adminRefusal(policy, peer(1000, 1000, [27]), 'GET');
  assert.equal(refused?.errorName, 'PermissionDenied');
  assert.equal(refused?.parameters.rule, 'admin-managers');
  assert.match(refused?.parameters.reason ?? '', /^uid 1000 \(pid 42, gid 1000, groups 27\) is neither a manager nor an observer/);
  // An open-for-self user is still no admin.
  assert.equal(adminRefusal(testPolicy({ openUsers: [1000], managerUsers: [0] }), peer(1000, 1000), 'GET')?.errorName, 'PermissionDenied');
});

test('observers (by uid or group) may read the admin API, never change anything', () => {
  const policy = testPolicy({ managerUsers: [0], observerUsers: [998], observerGroups: [997] });
  const peer = (uid: number, gid: number, groups: number[] = []) => ({ pid: 42, uid, gid, groups, pidfd: undefined });
  for (const observer of [peer(998, 998), peer(1000, 997), peer(1000, 1000, [997])]) {
    assert.equal(adminRefusal(policy, observer, 'GET'), undefined);
    assert.equal(adminRefusal(policy, observer, 'HEAD'), undefined);
    for (const method of ['PATCH', 'DELETE', 'POST', 'PUT']) {
      const refused = adminRefusal(policy, observer, method);
      assert.equal(refused?.parameters.rule, 'admin-observers-read-only', `${method} by an observer`);
      assert.match(refused?.parameters.reason ?? '', /is an observer: it may read the admin API \(GET\), only managers may change anything/);
    }
  }
  assert.equal(adminRefusal(policy, peer(1000, 1000), 'GET')?.parameters.rule, 'admin-managers');
});

test('an unidentified caller is refused with its own rule', () => {
  const refused = adminRefusal(testPolicy(), undefined, 'GET');
  assert.equal(refused?.parameters.rule, 'admin-peer');
});
