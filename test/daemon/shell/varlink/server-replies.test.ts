// No reply can crash the daemon: the Varlink server in this process, with handlers that answer
// what no handler should (a reply over the 8 MiB cap, an error outside the registry, fds that
// cannot be sent). Each call still gets one reply (InternalError) or its connection closes;
// the process survives (an unhandled rejection would fail this file) and keeps serving.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { UnixServer } from '../../../../native/socket.ts';
import { memfd } from '../../../../native/sys.ts';
import { BrokerError } from '../../../../protocol/errors.ts';
import { MAX_REPLY_FRAME_BYTES } from '../../../../protocol/framing.ts';
import type { CallHandler } from '../../../../daemon/shell/varlink/connection.ts';
import { VarlinkServer } from '../../../../daemon/shell/varlink/server.ts';
import { openFds, settledLeaks } from '../../../support/fds.ts';
import { exchange } from '../../../support/raw-varlink.ts';

const call = (method: string): Buffer => Buffer.from(`${JSON.stringify({ method })}\0`);
const STATUS = 'io.iommufd.Broker.Status';
const GET_INFO = 'org.varlink.service.GetInfo';

let dir: string;
let socket: string;
let server: VarlinkServer;
let behaviour: CallHandler = () => Promise.resolve({ parameters: {} });
const errors: string[] = [];

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'iommufd-replies-'));
  socket = join(dir, 'broker.sock');
  const log = pino({ level: 'error' }, { write: (line: string) => { errors.push(line); } });
  server = new VarlinkServer((c, p) => (c.method === GET_INFO ? Promise.resolve({ parameters: { ok: true } }) : behaviour(c, p)), log,
    { maxConnections: 8, maxConnectionsPerUid: 8, reservedConnections: 0, idleTimeoutMs: 0, frameTimeoutMs: 0, maxPendingClosesPerUid: 64, maxPendingCloses: 1024 });
  server.serve(UnixServer.listen(socket, { mode: 0o600, backlog: 8 }));
});
after(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

async function stillServes(): Promise<void> {
  const r = await exchange(socket, call(GET_INFO), [], 1);
  assert.deepEqual(r.replies, [{ parameters: { ok: true } }]);
}

test('a reply over the reply cap is answered with InternalError naming the cap; the connection and the process go on', async () => {
  behaviour = () => Promise.resolve({ parameters: { leases: ['x'.repeat(MAX_REPLY_FRAME_BYTES)] } });
  const r = await exchange(socket, Buffer.concat([call(STATUS), call(GET_INFO)]), [], 2);
  assert.equal(r.replies[0]?.['error'], 'io.iommufd.Broker.InternalError');
  assert.match(String((r.replies[0]?.['parameters'] as { reason?: string }).reason), new RegExp(`${MAX_REPLY_FRAME_BYTES}-byte reply limit`));
  assert.deepEqual(r.replies[1], { parameters: { ok: true } }, 'the next call on the same connection is answered');
  assert.ok(errors.some((l) => l.includes('a reply could not be encoded')), 'the log says what happened');
  await stillServes();
});

test('the fds of an unsendable reply are closed', async () => {
  const before = openFds();
  behaviour = () => Promise.resolve({ parameters: { big: 'x'.repeat(MAX_REPLY_FRAME_BYTES) }, fds: [memfd('unsendable')] });
  const r = await exchange(socket, call(STATUS), [], 1);
  assert.equal(r.replies[0]?.['error'], 'io.iommufd.Broker.InternalError');
  assert.deepEqual(await settledLeaks(before, process.pid), [], 'the memfd and the connection are closed');
});

test('an error outside the registry\'s schema becomes InternalError too', async () => {
  behaviour = () => Promise.reject(new BrokerError('NoSuchLease', { lease: 42 } as unknown as { lease: string }));
  const r = await exchange(socket, call(STATUS), [], 1);
  assert.equal(r.replies[0]?.['error'], 'io.iommufd.Broker.InternalError');
  await stillServes();
});

test('a reply the socket refuses (bad fds from a handler) closes that connection only', async () => {
  behaviour = () => Promise.resolve({ parameters: {}, fds: [-1] });
  const r = await exchange(socket, call(STATUS), [], 1);
  assert.equal(r.closedByPeer, true);
  assert.deepEqual(r.replies, []);
  assert.ok(errors.some((l) => l.includes('unexpected failure while serving a connection')));
  await stillServes();
});
