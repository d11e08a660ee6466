// QmpClient against Debian's real QEMU (machine none): the greeting, getfd with an fd passed by
// SCM_RIGHTS (QEMU really holds it afterwards: closefd succeeds, and fails for unknown names),
// the peer's identity, and failures (refused commands, QEMU gone, silence, not QMP).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { QmpClient, QmpError, type QmpErrorName } from '../../client/qmp.ts';
import { closeFd, memfd, pidOfPidfd } from '../../native/sys.ts';
import { UnixConnection, UnixServer } from '../../native/socket.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { qemuFdTargets, startQemu, stopQemu, type Qemu } from './qemu.ts';

function qmpError(name: QmpErrorName, pattern?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof QmpError, `expected QmpError ${name}, got ${String(e)}`);
    assert.equal(e.errorName, name, e.message);
    if (pattern !== undefined) assert.match(e.message, pattern);
    return true;
  };
}

let qemu: Qemu;
before(async () => { qemu = await startQemu(); });
after(async () => { await stopQemu(qemu); });

test('greeting, capabilities, and the identity of the QEMU at the other end', async () => {
  const before = openFds();
  const qmp = await QmpClient.connect(qemu.qmp);
  try {
    assert.ok(Array.isArray(qmp.greeting.capabilities));
    assert.match(JSON.stringify(qmp.greeting.version), /"qemu":\{"micro":\d+,"minor":\d+,"major":\d+\}/);
    assert.equal(qmp.peerCred().pid, qemu.pid);
    const pidfd = qmp.peerPidfd();
    try {
      assert.equal(pidOfPidfd(pidfd), qemu.pid);
    } finally {
      closeFd(pidfd);
    }
    assert.equal((await qmp.execute('query-status') as { status?: unknown }).status, 'running');
  } finally {
    qmp.close();
  }
  assert.deepEqual(leakedSince(before), []);
});

test('getfd passes an fd that QEMU then holds; closefd succeeds once, and fails for unknown names', async () => {
  const before = openFds();
  const qmp = await QmpClient.connect(qemu.qmp);
  try {
    const fd = memfd('qmp-getfd-test');
    await qmp.getfd('iommufd0', fd);
    assert.ok(!openFds().has(fd) || !openFds().get(fd)?.includes('qmp-getfd-test'), 'our copy was closed once sent');
    assert.ok(qemuFdTargets(qemu).some((t) => t.includes('memfd:qmp-getfd-test')), 'QEMU holds the memfd');
    await qmp.closefd('iommufd0');
    assert.ok(!qemuFdTargets(qemu).some((t) => t.includes('memfd:qmp-getfd-test')), 'QEMU closed it');
    await assert.rejects(qmp.closefd('iommufd0'), qmpError('QmpCommandFailed', /QEMU refused closefd: .*iommufd0/));
    await assert.rejects(qmp.closefd('never-given'), qmpError('QmpCommandFailed'));
    assert.equal((await qmp.execute('query-status') as { status?: unknown }).status, 'running', 'a refusal leaves the session usable');
  } finally {
    qmp.close();
  }
  assert.deepEqual(leakedSince(before), []);
});

test('getfd without an fd is refused by QEMU (so the check above can fail)', async () => {
  const qmp = await QmpClient.connect(qemu.qmp);
  try {
    await assert.rejects(qmp.execute('getfd', { fdname: 'nofd' }), qmpError('QmpCommandFailed', /getfd/));
    await assert.rejects(qmp.execute('no-such-command'), (e: unknown) => qmpError('QmpCommandFailed')(e) && e instanceof QmpError && e.qmpClass === 'CommandNotFound');
  } finally {
    qmp.close();
  }
});

test('an fd given to a closed client is closed, not leaked', async () => {
  const before = openFds();
  const qmp = await QmpClient.connect(qemu.qmp);
  qmp.close();
  await assert.rejects(qmp.getfd('late', memfd('qmp-late')), qmpError('QmpConnectionLost', /was closed/));
  assert.deepEqual(leakedSince(before), []);
});

test('an unreachable QMP socket says how QEMU should be started', async () => {
  await assert.rejects(QmpClient.connect(join(qemu.dir, 'missing.sock')), qmpError('QmpUnreachable', /ENOENT.*-qmp unix:/));
});

test('QEMU exiting fails the session with QmpConnectionLost', async () => {
  const own = await startQemu();
  try {
    const qmp = await QmpClient.connect(own.qmp);
    const exited = new Promise((resolve) => own.child.once('exit', resolve));
    own.child.kill('SIGKILL');
    await exited;
    await assert.rejects(qmp.execute('query-status'), qmpError('QmpConnectionLost'));
    qmp.close();
  } finally {
    await stopQemu(own);
  }
});

/** A fake QMP peer that sends `greeting` (if any) and then never answers. */
function silentPeer(greeting: string | undefined): { path: string; close: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'iommufdctl-fakeqmp-'));
  const path = join(dir, 'qmp.sock');
  // closeOffLoop: false: a trusted in-process double; its closes stay synchronous so the fd-leak checks right after close() are exact.
  const server = UnixServer.listen(path, { mode: 0o600, backlog: 4, closeOffLoop: false });
  const conns: UnixConnection[] = [];
  server.on('connection', (c: UnixConnection) => {
    conns.push(c);
    c.on('data', (_chunk: Buffer, fds: number[]) => fds.forEach(closeFd));
    c.on('error', () => c.close());
    if (greeting !== undefined) c.send(Buffer.from(greeting));
  });
  return { path, close: () => { conns.forEach((c) => c.close()); server.close(); rmSync(dir, { recursive: true, force: true }); } };
}

test('silence is a QmpTimeout, and something that is not QMP a QmpProtocolViolation', async () => {
  const before = openFds();
  const mute = silentPeer(undefined);
  const greetsOnly = silentPeer('{"QMP": {"version": {}, "capabilities": []}}\r\n');
  const notQmp = silentPeer('SSH-2.0-OpenSSH_9.2\r\n');
  const wrongShape = silentPeer('{"hello": 1}\n');
  try {
    await assert.rejects(QmpClient.connect(mute.path, { timeoutMs: 50 }), qmpError('QmpTimeout', /the QMP greeting within 50 ms/));
    await assert.rejects(QmpClient.connect(greetsOnly.path, { timeoutMs: 50 }), qmpError('QmpTimeout', /reply to qmp_capabilities/));
    await assert.rejects(QmpClient.connect(notQmp.path), qmpError('QmpProtocolViolation', /not JSON/));
    await assert.rejects(QmpClient.connect(wrongShape.path), qmpError('QmpProtocolViolation', /does not greet like QMP/));
  } finally {
    for (const p of [mute, greetsOnly, notQmp, wrongShape]) p.close();
  }
  assert.deepEqual(leakedSince(before), []);
});

test('expectEvent: an event after the call resolves it; a timeout leaves the session usable; a lost connection rejects it', async () => {
  const { FakeQmp } = await import('./fake-qmp.ts');
  const before = openFds();
  const fake = FakeQmp.start((c) => c.execute === 'poke'
    ? { return: {}, eventsBefore: [{ event: 'DEVICE_DELETED', data: { device: 'd1' } }], eventsAfter: [{ event: 'DEVICE_DELETED', data: { device: 'd2' } }] }
    : { return: {} });
  const qmp = await QmpClient.connect(fake.socket);
  try {
    fake.emit({ event: 'DEVICE_DELETED', data: { device: 'd2' } }); // before the wait: not kept
    await qmp.execute('query-status');
    const d2 = qmp.expectEvent('DEVICE_DELETED', (d) => d['device'] === 'd2');
    const d1 = qmp.expectEvent('DEVICE_DELETED', (d) => d['device'] === 'd1');
    await qmp.execute('poke');
    assert.deepEqual(await d1.event, { event: 'DEVICE_DELETED', data: { device: 'd1' } });
    assert.deepEqual((await d2.event).data, { device: 'd2' });
    await assert.rejects(qmp.expectEvent('DEVICE_DELETED', () => true, 30).event, qmpError('QmpEventTimeout', /no DEVICE_DELETED event within 30 ms/));
    await qmp.execute('query-status');
    const lost = qmp.expectEvent('NEVER', () => true);
    fake.close();
    await assert.rejects(lost.event, qmpError('QmpConnectionLost'));
  } finally {
    qmp.close();
    fake.close();
  }
  assert.deepEqual(leakedSince(before), []);
});
