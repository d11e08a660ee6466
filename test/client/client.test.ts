// BrokerClient against a scripted peer: typed calls, pipelining, validation of every reply,
// error mapping, fd ownership (nothing leaks, unexpected fds are closed), connection loss and
// timeouts that never hang.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerClient, BrokerClientError, BrokerError, VarlinkServiceError, type ClientErrorName } from '../../client/index.ts';
import { native } from '../../native/binding.ts';
import { closeFd, memfd, pidfdOpen } from '../../native/sys.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { FakeBroker, wireLease, wireStatus, type Script } from './fake-broker.ts';

const GiB = 1024 ** 3;
const LEASE = 'l-0123456789abcdef';

/** Runs `body` with a fake broker and a connected client; checks no fd leaked once both are closed. */
async function withFake(script: Script, body: (client: BrokerClient, fake: FakeBroker) => Promise<void>): Promise<void> {
  const before = openFds();
  const fake = FakeBroker.start(script);
  const client = await BrokerClient.connect(fake.socket);
  try {
    await body(client, fake);
    assert.deepEqual(fake.rejected, [], 'every call the client sent passed the daemon decoder');
  } finally {
    client.close();
    fake.close();
  }
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(leakedSince(before), [], 'no fd leaked');
}

function clientError(name: ClientErrorName, pattern?: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof BrokerClientError, `expected BrokerClientError ${name}, got ${String(e)}`);
    assert.equal(e.errorName, name, e.message);
    if (pattern !== undefined) assert.match(e.message, pattern);
    return true;
  };
}

test('open hands the caller the FD from the reply, and the validated lease', async () => {
  await withFake(() => ({ reply: { lease: wireLease(), fileDescriptor: 0 }, fds: [memfd('fake-iommufd')] }), async (client, fake) => {
    const { lease, fd } = await client.open({ name: 'vm1', memoryBytes: GiB, requestId: 'r1' });
    try {
      assert.equal(lease.id, LEASE);
      assert.match(readlinkSync(`/proc/self/fd/${fd}`), /^\/memfd:fake-iommufd/);
    } finally {
      closeFd(fd);
    }
    assert.deepEqual(fake.calls, [{
      peerPid: process.pid, method: 'io.iommufd.Broker.Open', parameters: { name: 'vm1', memoryBytes: GiB, requestId: 'r1' }, fdLinks: [], fdPids: [],
    }]);
  });
});

test('open with a target pidfd sends a dup at index 0 and leaves the caller\'s pidfd open', async () => {
  await withFake(() => ({ reply: { lease: wireLease(), fileDescriptor: 0 }, fds: [memfd('fake-iommufd')] }), async (client, fake) => {
    const pidfd = pidfdOpen(process.pid);
    try {
      const { fd } = await client.open({ name: 'vm1', memoryBytes: GiB, targetPidFd: pidfd });
      closeFd(fd);
      assert.match(readlinkSync(`/proc/self/fd/${pidfd}`), /pidfd/, 'the caller still owns its pidfd');
    } finally {
      closeFd(pidfd);
    }
    const [call] = fake.calls;
    assert.equal(call?.parameters['targetPidFileDescriptor'], 0);
    assert.deepEqual(call?.fdPids, [process.pid], 'the broker got a pidfd for the target');
  });
});

test('calls are pipelined on one connection and replies are matched in order', async () => {
  let fake!: FakeBroker;
  const script: Script = async (call) => {
    await fake.waitForCalls(3); // no reply before all three calls arrived: only pipelining gets here
    if (call.method.endsWith('.List')) return { reply: { leases: [wireLease()] } };
    if (call.method.endsWith('.Status')) return { reply: wireStatus(1) };
    return { reply: { lease: wireLease({ memoryBytes: 2 * GiB }), previousLimitBytes: 2 * GiB } };
  };
  await withFake(script, async (client, f) => {
    fake = f;
    const [list, status, resize] = await Promise.all([client.list(), client.status(), client.resize(LEASE, 2 * GiB)]);
    assert.equal(list.leases[0]?.id, LEASE);
    assert.equal(status.leases, 1);
    assert.equal(resize.lease.memoryBytes, 2 * GiB);
    assert.deepEqual(f.calls.map((c) => c.method), ['io.iommufd.Broker.List', 'io.iommufd.Broker.Status', 'io.iommufd.Broker.Resize']);
  });
});

test('a broker error rejects as BrokerError with the daemon\'s name and parameters; the connection stays usable', async () => {
  const script: Script = (call) => call.method.endsWith('.Release')
    ? { error: 'io.iommufd.Broker.NoSuchLease', parameters: { lease: LEASE } }
    : { reply: { leases: [] } };
  await withFake(script, async (client) => {
    await assert.rejects(client.release(LEASE), (e: unknown) => {
      assert.ok(e instanceof BrokerError);
      assert.equal(e.errorName, 'NoSuchLease');
      assert.deepEqual(e.parameters, { lease: LEASE });
      return true;
    });
    assert.deepEqual(await client.list(), { leases: [] });
    assert.equal(client.closed, false);
  });
});

test('org.varlink.service errors reject as VarlinkServiceError', async () => {
  await withFake(() => ({ error: 'org.varlink.service.InvalidParameter', parameters: { parameter: 'name', reason: 'bad' } }), async (client) => {
    await assert.rejects(client.open({ name: 'vm1', memoryBytes: GiB }), (e: unknown) =>
      e instanceof VarlinkServiceError && e.qualifiedName === 'org.varlink.service.InvalidParameter'
      && e.errorName === 'InvalidParameter' && e.parameters['parameter'] === 'name');
  });
});

test('fds attached to replies that carry none are closed: error replies, and non-Open replies (a protocol violation)', async () => {
  const script: Script = (call) => call.method.endsWith('.Release')
    ? { error: 'io.iommufd.Broker.NoSuchLease', parameters: { lease: LEASE }, fds: [memfd('stray-1')] }
    : { reply: { leases: [] }, fds: [memfd('stray-2')] };
  await withFake(script, async (client) => {
    await assert.rejects(client.release(LEASE), BrokerError);
    await assert.rejects(client.list(), clientError('ProtocolViolation', /carried 1 file descriptor/));
    assert.ok([...openFds().values()].every((t) => !t.includes('stray')), 'the stray fds were closed');
  });
});

test('an invalid reply is a protocol violation that ends the connection; later calls fail at once', async () => {
  await withFake(() => ({ reply: { leases: [{ id: 'l-x' }] } }), async (client) => {
    await assert.rejects(client.list(), clientError('ProtocolViolation', /reply to io.iommufd.Broker.List/));
    assert.equal(client.closed, true);
    await assert.rejects(client.status(), clientError('ProtocolViolation'));
  });
  await withFake(() => ({ raw: Buffer.from('not json\0') }), async (client) => {
    await assert.rejects(client.status(), clientError('ProtocolViolation', /not valid JSON/));
  });
});

test('fds of a reply cut short by EOF are closed', async () => {
  await withFake(() => ({ raw: Buffer.from('{"parameters":{"lease":'), fds: [memfd('cut-short')], thenEnd: true }), async (client) => {
    await assert.rejects(client.open({ name: 'vm1', memoryBytes: GiB }), clientError('ConnectionLost', /closed the connection/));
    assert.ok([...openFds().values()].every((t) => !t.includes('cut-short')), 'the held fd was closed');
  });
});

test('an Open reply without its fd is refused, and an fd beyond the index too', async () => {
  await withFake(() => ({ reply: { lease: wireLease(), fileDescriptor: 0 } }), async (client) => {
    await assert.rejects(client.open({ name: 'vm1', memoryBytes: GiB }), clientError('ProtocolViolation', /index 0, but 0 arrived/));
  });
  await withFake(() => ({ reply: { lease: wireLease(), fileDescriptor: 0 }, fds: [memfd('one'), memfd('two')] }), async (client) => {
    await assert.rejects(client.open({ name: 'vm1', memoryBytes: GiB }), clientError('ProtocolViolation', /carried 2/));
  });
});

test('a reply to no call is a protocol violation', async () => {
  const two = Buffer.from(`${JSON.stringify({ parameters: { leases: [] } })}\0${JSON.stringify({ parameters: { leases: [] } })}\0`);
  await withFake((_call, index) => (index === 0 ? { raw: two } : 'hang'), async (client) => {
    assert.deepEqual(await client.list(), { leases: [] }, 'the first reply went to the call');
    assert.equal(client.closed, true, 'the second reply ended the connection');
    await assert.rejects(client.list(), clientError('ProtocolViolation', /reply to no call/));
  });
});

test('connection loss rejects every pending call with a reason naming the socket', async () => {
  let fake!: FakeBroker;
  await withFake(async () => { await fake.waitForCalls(2); return 'close' as const; }, async (client, f) => {
    fake = f;
    const results = await Promise.allSettled([client.status(), client.list()]);
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      if (r.status === 'rejected') clientError('ConnectionLost', new RegExp(`closed the connection.*${f.socket}`))(r.reason);
    }
    await assert.rejects(client.list(), clientError('ConnectionLost'));
  });
});

test('a timeout rejects that call, closes the connection and fails the others: nothing hangs', async () => {
  await withFake(() => 'hang', async (client) => {
    const slow = client.status();
    const fast = client.list({ timeoutMs: 50 });
    const [a, b] = await Promise.allSettled([slow, fast]);
    assert.equal(b.status, 'rejected');
    if (b.status === 'rejected') clientError('Timeout', /io.iommufd.Broker.List got no reply .* within 50 ms/)(b.reason);
    assert.equal(a.status, 'rejected');
    if (a.status === 'rejected') clientError('ConnectionLost', /List got no reply/)(a.reason);
    assert.equal(client.closed, true);
  });
});

test('close() rejects pending calls with ClientClosed and is idempotent', async () => {
  await withFake(() => 'hang', async (client) => {
    const pending = client.getInfo();
    client.close();
    client.close();
    await assert.rejects(pending, clientError('ClientClosed'));
    await assert.rejects(client.getInterfaceDescription(), clientError('ClientClosed'));
  });
});

test('bad timeouts and bad target fds are refused before anything is sent', async () => {
  await withFake(() => 'hang', async (client, fake) => {
    await assert.rejects(client.list({ timeoutMs: 0 }), RangeError);
    await assert.rejects(client.open({ name: 'vm1', memoryBytes: 1, targetPidFd: -1 }), TypeError);
    assert.equal(fake.calls.length, 0);
  });
  await assert.rejects(BrokerClient.connect('/nonexistent', { timeoutMs: 2 ** 31 }), RangeError);
});

test('an unreachable broker says which socket and what to check', async () => {
  const before = openFds();
  await assert.rejects(BrokerClient.connect('/nonexistent/broker.sock'), (e: unknown) => {
    clientError('BrokerUnreachable', /no socket at \/nonexistent\/broker.sock: is iommufd-broker running/)(e);
    return e instanceof BrokerClientError && e.errno === 'ENOENT' && e.socketPath === '/nonexistent/broker.sock';
  });
  const dir = mkdtempSync(join(tmpdir(), 'iommufdctl-unreachable-'));
  try {
    // a stale socket file: bound, then its listener closed without unlinking it
    const stale = join(dir, 'stale.sock');
    const listener = native.listenUnix(stale, 1, 0o600);
    assert.ok(listener >= 0);
    native.close(listener);
    await assert.rejects(BrokerClient.connect(stale), clientError('BrokerUnreachable', /nothing is accepting on .*stale.sock.*stale socket/));
    writeFileSync(join(dir, 'file'), 'not a socket');
    await assert.rejects(BrokerClient.connect(join(dir, 'file')), clientError('BrokerUnreachable', /file exists but is not a socket/));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(leakedSince(before), []);
});

test('GetInfo and GetInterfaceDescription go to org.varlink.service', async () => {
  const script: Script = (call) => call.method.endsWith('GetInfo')
    ? { reply: { vendor: 'v', product: 'p', version: '1', url: 'u', interfaces: ['io.iommufd.Broker'] } }
    : { reply: { description: 'interface io.iommufd.Broker\n' } };
  await withFake(script, async (client, fake) => {
    assert.deepEqual((await client.getInfo()).interfaces, ['io.iommufd.Broker']);
    assert.equal((await client.getInterfaceDescription()).description, 'interface io.iommufd.Broker\n');
    assert.deepEqual(fake.calls.map((c) => [c.method, c.parameters]), [
      ['org.varlink.service.GetInfo', {}],
      ['org.varlink.service.GetInterfaceDescription', { interface: 'io.iommufd.Broker' }],
    ]);
  });
});

test('list follows next page by page, passing each cursor back unchanged, and returns every lease', async () => {
  const ids = ['l-0000000000000001', 'l-0000000000000002', 'l-0000000000000003'];
  const cursors = ['1/l-0000000000000001', '2/l-0000000000000002'];
  await withFake((_call, i) => ({
    reply: {
      leases: [wireLease({ id: ids[i % 3] })],
      ...(i < 2 ? { next: cursors[i] } : {}),
    },
  }), async (client, fake) => {
    const { leases } = await client.list();
    assert.deepEqual(leases.map((l) => l.id), ids);
    assert.deepEqual(fake.calls.map((c) => c.parameters), [{}, { cursor: cursors[0] }, { cursor: cursors[1] }]);
    const one = await client.listPage({ limit: 1 });
    assert.deepEqual(fake.calls.at(-1)?.parameters, { limit: 1 });
    assert.equal(one.leases.length, 1);
  });
});

test('a broker whose next makes no progress is a protocol violation, not an endless walk', async () => {
  await withFake(() => ({ reply: { leases: [], next: '1/l-0000000000000001' } }), async (client) => {
    await assert.rejects(client.list(), clientError('ProtocolViolation', /makes no progress/));
  });
  await withFake(() => ({ reply: { leases: [wireLease()], next: '1/l-0000000000000001' } }), async (client, fake) => {
    await assert.rejects(client.list(), clientError('ProtocolViolation', /makes no progress/));
    assert.equal(fake.calls.length, 2, 'the same cursor twice ends the walk');
  });
});

test('open with devices sends them canonical and hands back each device\'s fd by address, in the order asked', async () => {
  const devices = [{ address: '0000:00:04.0', cdev: 'vfio1' }, { address: '0000:00:03.0', cdev: 'vfio0' }];
  await withFake(() => ({
    reply: { lease: wireLease({ devices }), fileDescriptor: 0, devices: [{ address: '0000:00:04.0', fileDescriptor: 2 }, { address: '0000:00:03.0', fileDescriptor: 1 }] },
    fds: [memfd('fake-iommufd'), memfd('fake-vfio0'), memfd('fake-vfio1')],
  }), async (client, fake) => {
    const opened = await client.open({ name: 'vm1', memoryBytes: GiB, devices: ['00:04.0', '0000:00:03.0'] });
    try {
      assert.match(readlinkSync(`/proc/self/fd/${opened.fd}`), /memfd:fake-iommufd/);
      assert.deepEqual(opened.devices.map((d) => [d.address, readlinkSync(`/proc/self/fd/${d.fd}`).replace(/ \(deleted\)$/, '')]),
        [['0000:00:04.0', '/memfd:fake-vfio1'], ['0000:00:03.0', '/memfd:fake-vfio0']]);
      assert.deepEqual(opened.lease.devices, devices);
    } finally {
      closeFd(opened.fd);
      for (const d of opened.devices) closeFd(d.fd);
    }
    assert.deepEqual(fake.calls[0]?.parameters['devices'], ['0000:00:04.0', '0000:00:03.0']);
  });
});

test('an Open reply whose devices are not the ones asked for is a protocol violation, every fd closed', async () => {
  await withFake(() => ({
    reply: { lease: wireLease(), fileDescriptor: 0, devices: [{ address: '0000:00:09.0', fileDescriptor: 1 }] },
    fds: [memfd('fake-iommufd'), memfd('fake-vfio9')],
  }), async (client) => {
    await assert.rejects(client.open({ name: 'vm1', memoryBytes: GiB, devices: ['0000:00:03.0'] }),
      clientError('ProtocolViolation', /devices \(0000:00:09\.0\) are not the ones asked for \(0000:00:03\.0\)/));
  });
  await withFake(() => ({ reply: { lease: wireLease(), fileDescriptor: 0 }, fds: [memfd('fake-iommufd')] }), async (client) => {
    await assert.rejects(client.open({ name: 'vm1', memoryBytes: GiB, devices: ['0000:00:03.0'] }), clientError('ProtocolViolation', /none\) are not/));
  });
});

test('a device that is not a PCI address is refused before anything is sent', async () => {
  await withFake(() => 'close', async (client, fake) => {
    for (const bad of ['../../dev/mem', '0000:00:03.0\u0000', '00:20.0', 'vfio0']) {
      await assert.rejects(client.open({ name: 'vm1', memoryBytes: GiB, devices: [bad] }), TypeError);
    }
    assert.equal(fake.calls.length, 0);
  });
});
