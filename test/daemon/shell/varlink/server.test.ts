// The Varlink server under malformed and unexpected input, over the real socket.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { memfd } from '../../../../native/sys.ts';
import { BrokerProcess } from '../../../support/daemon.ts';
import { openFds, settledLeaks } from '../../../support/fds.ts';
import { exchange } from '../../../support/raw-varlink.ts';

let broker: BrokerProcess;
before(async () => { broker = await BrokerProcess.start(); });
after(async () => { await broker.stop(); broker.cleanup(); });

const frame = (v: unknown): Buffer => Buffer.from(`${JSON.stringify(v)}\0`);

function daemonPid(): number {
  assert.ok(broker.child.pid !== undefined);
  return broker.child.pid;
}

async function stillServes(): Promise<void> {
  const r = await exchange(broker.socket, frame({ method: 'org.varlink.service.GetInfo' }), [], 1);
  assert.ok(Array.isArray((r.replies[0]?.['parameters'] as { interfaces?: unknown })?.interfaces));
}

test('garbage, bad UTF-8 and oversized frames close that connection only', async () => {
  const before = openFds(daemonPid());
  for (const bad of [Buffer.from('not json\0'), Buffer.from([0xff, 0xfe, 0x7b, 0x00]), Buffer.alloc(64 * 1024 + 2, 0x20)]) {
    const r = await exchange(broker.socket, bad, [], Infinity);
    assert.equal(r.closedByPeer, true);
    // At most a best-effort explanation before the close, never a normal reply.
    assert.ok(r.replies.length <= 1, JSON.stringify(r.replies));
    for (const reply of r.replies) assert.equal(reply['error'], 'org.varlink.service.InvalidParameter');
  }
  await stillServes();
  assert.deepEqual(await settledLeaks(before, daemonPid()), []);
});

test('unknown methods and bad parameters get Varlink errors and the connection stays usable', async () => {
  const r = await exchange(broker.socket, Buffer.concat([
    frame({ method: 'io.iommufd.Broker.Explode', parameters: {} }),
    frame({ method: 'com.example.Nope', parameters: {} }),
    frame({ method: 'io.iommufd.Broker.Open', parameters: { name: 'vm', memoryBytes: -1 } }),
    frame({ method: 'io.iommufd.Broker.Status', parameters: { surprise: true } }),
    frame({ method: 'io.iommufd.Broker.Status' }),
    frame({ method: 'org.varlink.service.GetInterfaceDescription', parameters: { interface: 'com.example.Nope' } }),
  ]), [], 6);
  assert.deepEqual(r.replies.map((x) => x['error']), [
    'org.varlink.service.MethodNotFound',
    'org.varlink.service.InterfaceNotFound',
    'org.varlink.service.InvalidParameter',
    'org.varlink.service.InvalidParameter',
    undefined,
    'org.varlink.service.InterfaceNotFound',
  ]);
  assert.equal((r.replies[4]?.['parameters'] as { device: { kind: string } }).device.kind, 'simulated');
});

test('fds attached to a call that takes none are closed by the daemon and the call fails', async () => {
  const before = openFds(daemonPid());
  const fd = memfd('unexpected');
  const r = await exchange(broker.socket, frame({ method: 'io.iommufd.Broker.Status' }), [fd], 1);
  assert.equal(r.replies[0]?.['error'], 'org.varlink.service.InvalidParameter');
  assert.deepEqual(await settledLeaks(before, daemonPid()), [], 'the unexpected fd did not stay in the daemon');
});

test('oneway calls get no reply; the next call does', async () => {
  const r = await exchange(broker.socket, Buffer.concat([
    frame({ method: 'io.iommufd.Broker.Status', oneway: true }),
    frame({ method: 'org.varlink.service.GetInterfaceDescription', parameters: { interface: 'io.iommufd.Broker' } }),
  ]), [], 1);
  assert.equal(r.replies.length, 1);
  assert.match(String((r.replies[0]?.['parameters'] as { description?: string }).description), /^interface io\.iommufd\.Broker$/m);
});

test('a Connection is built from named parts, not seven positional parameters', () => {
  const server = readFileSync(new URL('../../../../daemon/shell/varlink/server.ts', import.meta.url), 'utf8');
  const source = readFileSync(new URL('../../../../daemon/shell/varlink/connection.ts', import.meta.url), 'utf8');
  assert.match(server, /new Connection\(\{/);
  assert.match(source, /constructor\(\{ socket, peer, handle, log, limits, onClose, onRefused \}: ConnectionParts\)/);
});
