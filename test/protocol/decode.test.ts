// decodeCall (decode.ts) and the daemon-side encoders (encode.ts). fds are plain numbers
// (>= 100) that are never opened or closed: decode.ts does no I/O, so no real fd is involved.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BrokerError } from '../../protocol/errors.ts';
import { FramingError, type Frame } from '../../protocol/framing.ts';
import { decodeCall, framingRejection, type DecodedCall, type Rejection } from '../../protocol/decode.ts';
import { encodeBrokerError, encodeError, encodeRejection, encodeReply } from '../../protocol/encode.ts';
import { lookupError } from '../../protocol/method-table.ts';

function frame(value: unknown, fds: number[] = []): Frame {
  return { bytes: Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)), fds };
}

function rejected(result: DecodedCall | Rejection): Rejection {
  assert.equal(result.kind, 'rejection', `expected a rejection, got ${JSON.stringify(result)}`);
  return result as Rejection;
}

function accepted(result: DecodedCall | Rejection): DecodedCall {
  assert.equal(result.kind, 'call', `expected a call, got ${JSON.stringify(result)}`);
  return result as DecodedCall;
}

const open = (parameters: Record<string, unknown>, extra: Record<string, unknown> = {}): Record<string, unknown> =>
  ({ method: 'io.iommufd.Broker.Open', parameters, ...extra });

test('a valid Open with a pidfd resolves the fd index to the fd', () => {
  const call = accepted(decodeCall(frame(open({ name: 'vm-1', memoryBytes: 4096, targetPidFileDescriptor: 0 }), [101])));
  assert.equal(call.method, 'io.iommufd.Broker.Open');
  if (call.method !== 'io.iommufd.Broker.Open') return;
  assert.equal(call.targetPidFd, 101);
  assert.deepEqual(call.unusedFds, []);
  assert.deepEqual(call.parameters, { name: 'vm-1', memoryBytes: 4096, targetPidFileDescriptor: 0 });
  assert.equal(call.oneway, false);
  assert.equal(call.more, false);
});

test('Open without a pidfd has targetPidFd undefined; other methods have no targetPidFd at all', () => {
  const call = accepted(decodeCall(frame(open({ name: 'vm-1', memoryBytes: 1, requestId: 'r1' }))));
  assert.ok('targetPidFd' in call);
  assert.equal(call.method === 'io.iommufd.Broker.Open' ? call.targetPidFd : 'wrong', undefined);
  const list = accepted(decodeCall(frame({ method: 'io.iommufd.Broker.List' })));
  assert.equal('targetPidFd' in list, false);
  assert.deepEqual(list.parameters, {});
});

test('service methods decode too', () => {
  assert.equal(accepted(decodeCall(frame({ method: 'org.varlink.service.GetInfo', parameters: {} }))).method, 'org.varlink.service.GetInfo');
  const d = accepted(decodeCall(frame({ method: 'org.varlink.service.GetInterfaceDescription', parameters: { interface: 'io.iommufd.Broker' } })));
  assert.deepEqual(d.parameters, { interface: 'io.iommufd.Broker' });
});

test('bad UTF-8, bad JSON and bad envelopes are fatal and give back every fd', () => {
  const cases: [Frame, string, RegExp][] = [
    [{ bytes: Buffer.from([0x7b, 0xff, 0x7d]), fds: [102] }, '', /not valid UTF-8/],
    [{ bytes: Buffer.from([0xef, 0xbb, 0xbf, ...Buffer.from('{"method":"io.iommufd.Broker.List"}')]), fds: [] }, '', /not valid JSON/],
    [frame('{"method":', [103]), '', /not valid JSON/],
    [frame(''), '', /not valid JSON/],
    [frame([1, 2]), '', /expected object/],
    [frame('null'), '', /expected object/],
    [frame({ parameters: {} }), 'method', /missing/],
    [frame({ method: 7 }), 'method', /expected string/],
    [frame({ method: 'io.iommufd.Broker.List', parameters: [] }), 'parameters', /expected record|expected object/],
    [frame({ method: 'io.iommufd.Broker.List', parameters: null }), 'parameters', /./],
    [frame({ method: 'io.iommufd.Broker.List', oneway: 'yes' }), 'oneway', /expected boolean/],
    [frame({ method: 'io.iommufd.Broker.List', extra: 1 }, [104, 105]), 'extra', /unknown field/],
    [frame('{"method":"io.iommufd.Broker.List","__proto__":{}}'), '__proto__', /unknown field/],
  ];
  for (const [input, parameter, reason] of cases) {
    const r = rejected(decodeCall(input));
    assert.equal(r.fatal, true, input.bytes.toString());
    assert.equal(r.reply, true);
    assert.equal(r.error.name, 'org.varlink.service.InvalidParameter');
    assert.equal(r.error.parameters.parameter, parameter, input.bytes.toString());
    assert.match(String(r.error.parameters.reason), reason, input.bytes.toString());
    assert.deepEqual(r.fdsToClose, input.fds);
  }
});

test('unknown interfaces and methods are answered, not fatal', () => {
  const i = rejected(decodeCall(frame({ method: 'com.example.Thing.Do' }, [106])));
  assert.deepEqual([i.fatal, i.error], [false, { name: 'org.varlink.service.InterfaceNotFound', parameters: { interface: 'com.example.Thing' } }]);
  assert.deepEqual(i.fdsToClose, [106]);
  const m = rejected(decodeCall(frame({ method: 'io.iommufd.Broker.Explode' })));
  assert.deepEqual(m.error, { name: 'org.varlink.service.MethodNotFound', parameters: { method: 'io.iommufd.Broker.Explode' } });
  for (const sneaky of ['io.iommufd.Broker.toString', 'io.iommufd.Broker.__proto__', 'io.iommufd.Broker.constructor']) {
    assert.equal(rejected(decodeCall(frame({ method: sneaky }))).error.name, 'org.varlink.service.MethodNotFound', sneaky);
  }
  assert.equal(rejected(decodeCall(frame({ method: 'toString.Open' }))).error.name, 'org.varlink.service.InterfaceNotFound');
  for (const unqualified of ['Open', '', '.Open']) {
    const r = rejected(decodeCall(frame({ method: unqualified })));
    assert.deepEqual([r.fatal, r.error.name, r.error.parameters.parameter], [false, 'org.varlink.service.InvalidParameter', 'method']);
  }
});

test('upgrade is refused; more is accepted; oneway with more is refused and answered', () => {
  const u = rejected(decodeCall(frame({ method: 'io.iommufd.Broker.List', upgrade: true })));
  assert.deepEqual([u.fatal, u.error.parameters.parameter], [false, 'upgrade']);
  assert.equal(accepted(decodeCall(frame({ method: 'io.iommufd.Broker.List', upgrade: false }))).method, 'io.iommufd.Broker.List');
  assert.equal(accepted(decodeCall(frame({ method: 'io.iommufd.Broker.List', more: true }))).more, true);
  const both = rejected(decodeCall(frame({ method: 'io.iommufd.Broker.List', more: true, oneway: true })));
  assert.deepEqual([both.reply, both.error.parameters.parameter], [true, 'more']);
});

test('oneway calls run, and their rejections are not answered', () => {
  assert.equal(accepted(decodeCall(frame({ method: 'io.iommufd.Broker.List', oneway: true }))).oneway, true);
  const r = rejected(decodeCall(frame({ method: 'io.iommufd.Broker.Release', oneway: true, parameters: {} })));
  assert.deepEqual([r.fatal, r.reply], [false, false]);
  assert.equal(rejected(decodeCall(frame({ method: 'io.iommufd.Broker.Nope', oneway: true }))).reply, false);
});

test('InvalidParameter names the first bad field and says why', () => {
  const cases: [Record<string, unknown>, string, RegExp][] = [
    [open({ memoryBytes: 1 }), 'name', /required field is missing \(expected string\)/],
    [open({ name: 'vm', memoryBytes: 0 }), 'memoryBytes', />=1/],
    [open({ name: 'vm', memoryBytes: 1.5 }), 'memoryBytes', /int/],
    [open({ name: 'vm', memoryBytes: 2 ** 53 }), 'memoryBytes', /<=|too big/i],
    [open({ name: 'vm', memoryBytes: '8G' }), 'memoryBytes', /expected number/],
    [open({ name: '-bad', memoryBytes: 1 }), 'name', /names are 1-128 chars/],
    [open({ name: 'vm', memoryBytes: 1, colour: 'red' }), 'colour', /unknown field \(accepted: name, memoryBytes, targetPidFileDescriptor, requestId, devices\)/],
    [open({ name: 'vm', memoryBytes: 1, targetPidFileDescriptor: -1 }), 'targetPidFileDescriptor', />=0/],
    [{ method: 'io.iommufd.Broker.Resize', parameters: { lease: 'l-xyz', memoryBytes: 1 } }, 'lease', /l-0123456789abcdef/],
    [{ method: 'io.iommufd.Broker.Status', parameters: { all: true } }, 'all', /unknown field \(none are accepted\)/],
    [{ method: 'io.iommufd.Broker.List', parameters: { all: true } }, 'all', /unknown field \(accepted: limit, cursor\)/],
    [{ method: 'io.iommufd.Broker.List', parameters: { limit: 1001 } }, 'limit', /<=1000/],
    [{ method: 'io.iommufd.Broker.List', parameters: { limit: 0 } }, 'limit', />=1/],
    [{ method: 'io.iommufd.Broker.List', parameters: { cursor: 'l-0123456789abcdef' } }, 'cursor', /the `next` of an earlier List reply/],
  ];
  for (const [call, parameter, reason] of cases) {
    const r = rejected(decodeCall(frame(call)));
    assert.equal(r.fatal, false);
    assert.equal(r.error.name, 'org.varlink.service.InvalidParameter');
    assert.equal(r.error.parameters.parameter, parameter, JSON.stringify(call));
    assert.match(String(r.error.parameters.reason), reason, JSON.stringify(call));
  }
});

test('fd rules: count, index, and every fd referenced', () => {
  const tooMany = rejected(decodeCall(frame(open({ name: 'vm', memoryBytes: 1, targetPidFileDescriptor: 0 }), [110, 111])));
  assert.deepEqual([tooMany.fatal, tooMany.error.parameters.parameter], [false, 'fileDescriptors']);
  assert.match(String(tooMany.error.parameters.reason), /at most 1 .*2 arrived/);
  assert.deepEqual(tooMany.fdsToClose, [110, 111]);

  const missing = rejected(decodeCall(frame(open({ name: 'vm', memoryBytes: 1, targetPidFileDescriptor: 0 }))));
  assert.equal(missing.error.parameters.parameter, 'targetPidFileDescriptor');
  assert.match(String(missing.error.parameters.reason), /index 0, but the call carried 0/);

  const beyond = rejected(decodeCall(frame(open({ name: 'vm', memoryBytes: 1, targetPidFileDescriptor: 1 }), [112])));
  assert.equal(beyond.error.parameters.parameter, 'targetPidFileDescriptor');
  assert.deepEqual(beyond.fdsToClose, [112]);

  const stray = rejected(decodeCall(frame(open({ name: 'vm', memoryBytes: 1 }), [113])));
  assert.equal(stray.error.parameters.parameter, 'fileDescriptors');
  assert.match(String(stray.error.parameters.reason), /unexpected file descriptors/);
  assert.deepEqual(stray.fdsToClose, [113]);

  const onList = rejected(decodeCall(frame({ method: 'io.iommufd.Broker.List' }, [114])));
  assert.equal(onList.error.parameters.parameter, 'fileDescriptors');
  assert.deepEqual(onList.fdsToClose, [114]);
});

test('rejections own a copy of the fd list', () => {
  const fds = [120];
  const r = rejected(decodeCall(frame('nope', fds)));
  fds.push(121);
  assert.deepEqual(r.fdsToClose, [120]);
});

test('encodeReply and encodeError produce NUL-terminated Varlink replies', () => {
  const reply = encodeReply({ limitRestored: true });
  assert.equal(reply.toString(), '{"parameters":{"limitRestored":true}}\0');
  const error = encodeError('io.iommufd.Broker.NoSuchLease', { lease: 'l-0000000000000000' });
  assert.deepEqual(JSON.parse(error.subarray(0, -1).toString()), { error: 'io.iommufd.Broker.NoSuchLease', parameters: { lease: 'l-0000000000000000' } });
  const service = encodeError('org.varlink.service.PermissionDenied', {});
  assert.equal(service.toString(), '{"error":"org.varlink.service.PermissionDenied","parameters":{}}\0');
});

test('encodeError refuses names outside the registry and parameters that do not match', () => {
  assert.throws(() => encodeError('io.iommufd.Broker.Oops' as 'io.iommufd.Broker.NoSuchLease', { lease: 'x' }), /not an error in protocol\/errors.ts/);
  assert.throws(() => encodeError('io.iommufd.Broker.toString' as 'io.iommufd.Broker.NoSuchLease', { lease: 'x' }), TypeError);
  assert.throws(() => encodeError('io.iommufd.Broker.BudgetExceeded', { requestedBytes: -1, availableBytes: 0, budgetBytes: 0 }), /requestedBytes/);
  // Undeclared fields never reach the wire.
  const sent = encodeError('io.iommufd.Broker.ShuttingDown', { reason: 'stop', secret: 'x' } as { reason: string });
  assert.deepEqual(JSON.parse(sent.subarray(0, -1).toString()).parameters, { reason: 'stop' });
});

test('encodeBrokerError and encodeRejection', () => {
  const e = new BrokerError('TargetGone', { pid: 42, reason: 'exited' });
  assert.deepEqual(JSON.parse(encodeBrokerError(e).subarray(0, -1).toString()), { error: 'io.iommufd.Broker.TargetGone', parameters: { pid: 42, reason: 'exited' } });
  const r = rejected(decodeCall(frame({ method: 'io.iommufd.Broker.Nope' })));
  assert.deepEqual(JSON.parse(encodeRejection(r).subarray(0, -1).toString()), { error: r.error.name, parameters: r.error.parameters });
});

test('framingRejection is fatal, answered, and closes the held fds', () => {
  const r = framingRejection(new FramingError('too-many-fds', 'a message carried 5 fds'), [130, 131]);
  assert.deepEqual([r.fatal, r.reply, r.fdsToClose, r.error.parameters.parameter], [true, true, [130, 131], '']);
  assert.match(String(r.error.parameters.reason), /5 fds/);
  assert.doesNotThrow(() => encodeRejection(r));
});

// --- properties -------------------------------------------------------------------------

/** Every fd of the frame comes back exactly once: to the handler, in unusedFds, or to close. */
function accountedFds(result: DecodedCall | Rejection): number[] {
  if (result.kind === 'rejection') return result.fdsToClose;
  const handed = result.method === 'io.iommufd.Broker.Open' && result.targetPidFd !== undefined ? [result.targetPidFd] : [];
  return [...handed, ...result.unusedFds];
}

/** A rejection's error is in the registry and its parameters match that error's schema. */
function assertWireError(r: Rejection): void {
  const found = lookupError(r.error.name);
  assert.ok(found.found, r.error.name);
  assert.equal(found.schema.safeParse(r.error.parameters).success, true);
  assert.doesNotThrow(() => encodeRejection(r));
}

const fdList = fc.array(fc.integer({ min: 100, max: 10_000 }), { maxLength: 3 });

test('property: random bytes never throw, and every fd is accounted for', () => {
  fc.assert(fc.property(fc.uint8Array({ maxLength: 200 }), fdList, (bytes, fds) => {
    const result = decodeCall({ bytes: Buffer.from(bytes), fds });
    assert.deepEqual([...accountedFds(result)].sort(), [...fds].sort());
    if (result.kind === 'rejection') assertWireError(result);
  }));
});

test('property: arbitrary JSON never throws; the error is always from the registry', () => {
  const envelope = fc.record({
    method: fc.oneof(fc.constantFrom('io.iommufd.Broker.Open', 'io.iommufd.Broker.Resize', 'io.iommufd.Broker.List',
      'org.varlink.service.GetInfo', 'io.iommufd.Broker.X', 'x.Y', 'Open'), fc.string(), fc.jsonValue()),
    parameters: fc.oneof(fc.dictionary(fc.constantFrom('name', 'memoryBytes', 'targetPidFileDescriptor', 'requestId', 'lease', 'x'), fc.jsonValue()), fc.jsonValue()),
    oneway: fc.oneof(fc.boolean(), fc.jsonValue()),
    more: fc.boolean(),
  }, { requiredKeys: [] });
  fc.assert(fc.property(fc.oneof(envelope, fc.jsonValue()), fdList, (value, fds) => {
    const result = decodeCall(frame(value, fds));
    assert.deepEqual([...accountedFds(result)].sort(), [...fds].sort());
    if (result.kind === 'rejection') assertWireError(result);
  }));
});

test('property: every well-formed Open decodes to exactly its parameters', () => {
  const name = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,127}$/);
  fc.assert(fc.property(name, fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }), fc.boolean(), fc.option(fc.string({ minLength: 1, maxLength: 128 }), { nil: undefined }),
    (vmName, memoryBytes, withPidfd, requestId) => {
      const parameters = {
        name: vmName, memoryBytes,
        ...(withPidfd ? { targetPidFileDescriptor: 0 } : {}),
        ...(requestId === undefined ? {} : { requestId }),
      };
      const call = accepted(decodeCall(frame(open(parameters), withPidfd ? [200] : [])));
      assert.deepEqual(call.parameters, parameters);
      assert.equal(call.method === 'io.iommufd.Broker.Open' ? call.targetPidFd : 'not open', withPidfd ? 200 : undefined);
    }));
});

test('decode.ts is the incoming side only: encoders live in encode.ts, the client\'s helpers in reply.ts', async () => {
  const decode = await import('../../protocol/decode.ts');
  assert.deepEqual(Object.keys(decode).sort(), ['decodeCall', 'framingRejection']);
});

test('Open devices: 1-8 distinct canonical PCI addresses, nothing else reaches a handler', () => {
  const ok = accepted(decodeCall(frame(open({ name: 'vm', memoryBytes: 1, devices: ['0000:00:03.0', 'abcd:ff:1f.7'] }))));
  assert.deepEqual((ok.parameters as { devices?: string[] }).devices, ['0000:00:03.0', 'abcd:ff:1f.7']);
  const eight = Array.from({ length: 8 }, (_, i) => `0000:00:0${i}.0`);
  assert.equal(accepted(decodeCall(frame(open({ name: 'vm', memoryBytes: 1, devices: eight })))).kind, 'call');
  const cases: [unknown, string, RegExp][] = [
    [[], 'devices', />=1/],
    [[...eight, '0000:00:08.0'], 'devices', /<=8/],
    [['0000:00:03.0', '0000:00:03.0'], 'devices', /only once/],
    [['00:03.0'], 'devices[0]', /DDDD:BB:DD\.F/],
    [['0000:00:03.0', '0000:00:03.0A'], 'devices[1]', /DDDD:BB:DD\.F/],
    [['0000:00:03.0'.toUpperCase().replace('0000', 'ABCD')], 'devices[0]', /lowercase/],
    [['0000:00:20.0'], 'devices[0]', /DDDD:BB:DD\.F/], // device numbers stop at 1f
    [['0000:00:03.8'], 'devices[0]', /DDDD:BB:DD\.F/], // functions stop at 7
    [['../../../../dev/mem'], 'devices[0]', /DDDD:BB:DD\.F/],
    [['0000:00:03.0/../../x'], 'devices[0]', /DDDD:BB:DD\.F/],
    [['0000:00:03.0\u0000'], 'devices[0]', /DDDD:BB:DD\.F/],
    [['0000:00:03.0\n'], 'devices[0]', /DDDD:BB:DD\.F/],
    [['0'.repeat(5000)], 'devices[0]', /DDDD:BB:DD\.F/],
    [[3], 'devices[0]', /expected string/],
    ['0000:00:03.0', 'devices', /expected array/],
  ];
  for (const [devices, parameter, reason] of cases) {
    const r = rejected(decodeCall(frame(open({ name: 'vm', memoryBytes: 1, devices }))));
    assert.equal(r.error.name, 'org.varlink.service.InvalidParameter', JSON.stringify(devices));
    assert.equal(r.error.parameters.parameter, parameter, JSON.stringify(devices));
    assert.match(String(r.error.parameters.reason), reason, JSON.stringify(devices));
  }
});
