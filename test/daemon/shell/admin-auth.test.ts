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
import { adminRefusal, ConnectionPeers, readSocketPeer, socketFd } from '../../../daemon/shell/admin-auth.ts';
import { testPolicy } from './admin-fixtures.ts';
import { openFds, settledLeaks } from '../../support/fds.ts';

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
  assert.equal(adminRefusal(policy, peer(0, 0)), undefined);
  assert.equal(adminRefusal(policy, peer(1000, 107)), undefined);
  assert.equal(adminRefusal(policy, peer(1000, 1000, [27, 107])), undefined);
  const refused = adminRefusal(policy, peer(1000, 1000, [27]));
  assert.equal(refused?.errorName, 'PermissionDenied');
  assert.equal(refused?.parameters.rule, 'admin-managers');
  assert.match(refused?.parameters.reason ?? '', /^uid 1000 \(pid 42, gid 1000, groups 27\) is not a manager/);
  // An open-for-self user is still no admin.
  assert.equal(adminRefusal(testPolicy({ openUsers: [1000], managerUsers: [0] }), peer(1000, 1000))?.errorName, 'PermissionDenied');
});

test('an unidentified caller is refused with its own rule', () => {
  const refused = adminRefusal(testPolicy(), undefined);
  assert.equal(refused?.parameters.rule, 'admin-peer');
});
