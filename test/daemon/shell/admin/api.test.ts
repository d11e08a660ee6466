// The admin API on a real Unix socket: its permissions from the moment it exists, real HTTP
// requests whose peer is read with SO_PEERCRED (a manager passes, uid nobody gets 403), an
// adopted listening fd (socket activation), stale/live/foreign paths, and no fd left behind.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, existsSync, lstatSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { join } from 'node:path';
import { native } from '../../../../native/binding.ts';
import { memfd, SysError } from '../../../../native/sys.ts';
import { openFds, settledLeaks } from '../../../support/fds.ts';
import { startHarness, testPolicy } from './fixtures.ts';

interface HttpAnswer { status: number; body: string }

function get(socketPath: string, path: string): Promise<HttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (c: string) => { body += c; }).on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject).end();
  });
}

/** One GET from a separate process running as uid/gid 65534 with no groups. */
async function getAsNobody(socketPath: string, path: string): Promise<HttpAnswer> {
  const script = `require('node:http').request({ socketPath: ${JSON.stringify(socketPath)}, path: ${JSON.stringify(path)} }, (r) => {
    let b = ''; r.setEncoding('utf8'); r.on('data', (c) => { b += c; }); r.on('end', () => process.stdout.write(JSON.stringify({ status: r.statusCode, body: b })));
  }).on('error', (e) => { process.stdout.write(JSON.stringify({ status: -1, body: e.message })); }).end();`;
  const child = spawn('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', process.execPath, '-e', script],
    { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => { out += c; });
  await once(child, 'exit');
  return JSON.parse(out) as HttpAnswer;
}

test('a path socket has exactly the asked mode, serves a manager, and is gone after close with no fd left', async () => {
  const before = openFds();
  const h = await startHarness({ injectAs: null });
  const path = join(h.dir, 'admin.sock');
  try {
    await h.api.listen({ path, mode: 0o600 });
    assert.equal(lstatSync(path).mode & 0o777, 0o600);
    await assert.rejects(h.api.listen({ path: join(h.dir, 'second.sock'), mode: 0o600 }), /already listening/);
    assert.equal(existsSync(join(h.dir, 'second.sock')), false);
    const r = await get(path, '/v1/status');
    assert.equal(r.status, 200);
    assert.deepEqual(JSON.parse(r.body), h.service.status());
    const m = await get(path, '/metrics');
    assert.match(m.body, /^iommufd_broker_requests_total\{api="admin",method="GET \/v1\/status",outcome="ok"\} 1$/m);
  } finally {
    await h.close();
  }
  assert.equal(existsSync(path), false, 'the socket file is removed');
  assert.deepEqual(await settledLeaks(before, process.pid), []);
});

test('the mode is applied at bind, not derived from the umask', async () => {
  const h = await startHarness({ injectAs: null });
  const path = join(h.dir, 'admin.sock');
  const umask = process.umask(0o077);
  try {
    await h.api.listen({ path, mode: 0o660 });
    assert.equal(lstatSync(path).mode & 0o777, 0o660);
  } finally {
    process.umask(umask);
    await h.close();
  }
});

test('over the real socket, SO_PEERCRED decides: uid nobody gets 403, root (a manager) gets 200', async () => {
  const h = await startHarness({ injectAs: null, policy: testPolicy({ managerUsers: [0] }) });
  chmodSync(h.dir, 0o755);
  const path = join(h.dir, 'admin.sock');
  try {
    await h.api.listen({ path, mode: 0o666 });
    const denied = await getAsNobody(path, '/v1/leases');
    assert.equal(denied.status, 403, denied.body);
    const body = JSON.parse(denied.body) as { error: string; parameters: { rule: string; reason: string } };
    assert.equal(body.error, 'io.iommufd.Broker.PermissionDenied');
    assert.equal(body.parameters.rule, 'admin-managers');
    assert.match(body.parameters.reason, /^uid 65534 \(pid \d+, gid 65534, groups none\) is neither a manager nor an observer/);
    const deny = h.logs.find((l) => l['audit'] === 'deny' && l['action'] === 'admin');
    assert.equal((deny?.['peer'] as { uid: number } | undefined)?.uid, 65534);
    assert.equal((await get(path, '/v1/leases')).status, 200);
  } finally {
    await h.close();
  }
});

test('a policy without our uid among the managers shuts us out over the real socket too', async () => {
  const h = await startHarness({ injectAs: null, policy: testPolicy({ managerUsers: [4242] }) });
  const path = join(h.dir, 'admin.sock');
  try {
    await h.api.listen({ path, mode: 0o600 });
    const r = await get(path, '/healthz');
    assert.equal(r.status, 403);
    assert.match(r.body, /uid 0 \(pid \d+/);
  } finally {
    await h.close();
  }
});

test('an adopted listening fd (as systemd passes it) is served, and closed by close()', async () => {
  const h = await startHarness({ injectAs: null });
  const path = join(h.dir, 'activated.sock');
  const fd = native.listenUnix(path, 8, 0o600);
  assert.ok(fd >= 0);
  const link = openFds().get(fd);
  assert.match(link ?? '', /^socket:\[\d+\]$/);
  try {
    await h.api.listen({ fd });
    assert.equal((await get(path, '/healthz')).status, 200);
    await h.api.close();
    assert.notEqual(openFds().get(fd), link, `fd ${fd} (${link}) is closed`);
    assert.equal(existsSync(path), true, 'a socket the API did not create is not unlinked (systemd owns it)');
  } finally {
    await h.close();
  }
});

test('an fd that is not a listening Unix stream socket is refused and closed', async () => {
  const h = await startHarness({ injectAs: null });
  const fd = memfd('not-a-socket');
  try {
    await assert.rejects(h.api.listen({ fd }), (e) => e instanceof SysError && e.code === 'ENOTSOCK');
    assert.equal(openFds().has(fd), false, 'the fd was closed');
  } finally {
    await h.close();
  }
});

test('a stale socket file is replaced; a live socket or a regular file at the path is left alone', async () => {
  const h = await startHarness({ injectAs: null });
  try {
    const stale = join(h.dir, 'stale.sock');
    const staleFd = native.listenUnix(stale, 1, 0o600);
    native.close(staleFd); // the file stays, nobody listens: stale
    await h.api.listen({ path: stale, mode: 0o600 });
    assert.equal((await get(stale, '/healthz')).status, 200);

    const other = await startHarness({ injectAs: null });
    try {
      await assert.rejects(other.api.listen({ path: stale, mode: 0o600 }), (e) => e instanceof SysError && e.code === 'EADDRINUSE');
      assert.equal((await get(stale, '/healthz')).status, 200, 'the live socket still serves');
      const file = join(other.dir, 'a-file');
      writeFileSync(file, 'keep me');
      await assert.rejects(other.api.listen({ path: file, mode: 0o600 }), (e) => e instanceof SysError && e.code === 'EEXIST');
      assert.equal(readFileSync(file, 'utf8'), 'keep me');
    } finally {
      await other.close();
    }
  } finally {
    await h.close();
  }
});

test('close() ends while a client keeps an idle keep-alive connection open', async () => {
  const h = await startHarness({ injectAs: null });
  const path = join(h.dir, 'admin.sock');
  const { Agent } = await import('node:http');
  const agent = new Agent({ keepAlive: true });
  try {
    await h.api.listen({ path, mode: 0o600 });
    const r = await new Promise<number>((resolve, reject) => {
      request({ socketPath: path, path: '/healthz', agent }, (res) => { res.resume().on('end', () => resolve(res.statusCode ?? 0)); })
        .on('error', reject).end();
    });
    assert.equal(r, 200);
    assert.equal(Object.keys(agent.freeSockets).length, 1, 'the connection stays open, idle');
  } finally {
    await h.close();
    agent.destroy();
  }
});
