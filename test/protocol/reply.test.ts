// encodeCall and decodeReply (the client's side). fds are plain numbers (>= 300) that are never
// opened or closed: reply.ts does no I/O, so no real fd is involved.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { BrokerError } from '../../protocol/errors.ts';
import type { Frame } from '../../protocol/framing.ts';
import { decodeCall } from '../../protocol/decode.ts';
import { encodeBrokerError, encodeError, encodeReply } from '../../protocol/encode.ts';
import { decodeReply, encodeCall, type DecodedReply } from '../../protocol/reply.ts';
import type { QualifiedMethod } from '../../protocol/method-table.ts';

/** A frame from encoded bytes (drops the NUL). */
function fromWire(bytes: Buffer, fds: number[] = []): Frame {
  assert.equal(bytes[bytes.length - 1], 0);
  return { bytes: bytes.subarray(0, -1), fds };
}

const lease = {
  id: 'l-0123456789abcdef', name: 'vm-1', pid: 4242, uid: 107, ownerUid: 107, memoryBytes: 8 * 2 ** 30,
  limitBytes: 9 * 2 ** 30, accountingMode: 'process', deviceKind: 'iommufd', createdAt: '2026-11-25T11:40:00.000Z',
} as const;

function kindOf<Q extends QualifiedMethod>(r: DecodedReply<Q>): string {
  return r.kind === 'invalid' ? `invalid: ${r.reason}` : r.kind;
}

test('encodeCall produces what decodeCall accepts, flags included', () => {
  const bytes = encodeCall('io.iommufd.Broker.Open', { name: 'vm-1', memoryBytes: 4096, targetPidFileDescriptor: 0 }, { oneway: true });
  const call = decodeCall(fromWire(bytes, [301]));
  assert.equal(call.kind, 'call');
  if (call.kind !== 'call' || call.method !== 'io.iommufd.Broker.Open') return;
  assert.deepEqual([call.oneway, call.more, call.targetPidFd], [true, false, 301]);
  assert.deepEqual(JSON.parse(encodeCall('io.iommufd.Broker.List', {}).subarray(0, -1).toString()), { method: 'io.iommufd.Broker.List', parameters: {} });
  assert.equal(JSON.parse(encodeCall('io.iommufd.Broker.List', {}, { more: true }).subarray(0, -1).toString()).more, true);
});

test('an Open reply with its fd gives the parameters and the fd', () => {
  const r = decodeReply(fromWire(encodeReply({ lease, fileDescriptor: 0 }), [302]), 'io.iommufd.Broker.Open');
  assert.equal(kindOf(r), 'reply');
  if (r.kind !== 'reply') return;
  assert.equal(r.fd, 302);
  assert.deepEqual(r.parameters.lease, lease);
});

test('reply fds must be exactly the referenced ones', () => {
  const none = decodeReply(fromWire(encodeReply({ lease, fileDescriptor: 0 })), 'io.iommufd.Broker.Open');
  assert.match(kindOf(none), /invalid: .*index 0, but 0 arrived/);
  const extra = decodeReply(fromWire(encodeReply({ lease, fileDescriptor: 0 }), [303, 304]), 'io.iommufd.Broker.Open');
  assert.match(kindOf(extra), /invalid: .*2 file descriptor\(s\); 1 expected/);
  assert.deepEqual(extra.kind === 'invalid' ? extra.fdsToClose : [], [303, 304]);
  const onRelease = decodeReply(fromWire(encodeReply({ limitRestored: true }), [305]), 'io.iommufd.Broker.Release');
  assert.match(kindOf(onRelease), /invalid: .*1 file descriptor\(s\); 0 expected/);
  assert.deepEqual(onRelease.kind === 'invalid' ? onRelease.fdsToClose : [], [305]);
});

test('replies are checked with the strict reply schema', () => {
  const ok = decodeReply(fromWire(encodeReply({ limitRestored: false })), 'io.iommufd.Broker.Release');
  assert.deepEqual(ok.kind === 'reply' ? ok.parameters : undefined, { limitRestored: false });
  assert.match(kindOf(decodeReply(fromWire(encodeReply({ limitRestored: 'no' })), 'io.iommufd.Broker.Release')), /invalid: .*limitRestored/);
  assert.match(kindOf(decodeReply(fromWire(encodeReply({ limitRestored: true, bonus: 1 })), 'io.iommufd.Broker.Release')), /invalid: .*bonus: unknown field/);
  assert.match(kindOf(decodeReply(fromWire(encodeReply({ leases: [{ ...lease, pid: 'x' }] })), 'io.iommufd.Broker.List')), /invalid: .*leases\[0\]\.pid/);
});

test('broker errors come back as BrokerError with checked parameters', () => {
  const sent = new BrokerError('BudgetExceeded', { requestedBytes: 10, availableBytes: 5, budgetBytes: 100 });
  const r = decodeReply(fromWire(encodeBrokerError(sent), [306]), 'io.iommufd.Broker.Open');
  assert.equal(r.kind, 'broker-error');
  if (r.kind !== 'broker-error') return;
  assert.ok(r.error instanceof BrokerError);
  assert.equal(r.error.errorName, 'BudgetExceeded');
  assert.deepEqual(r.error.parameters, sent.parameters);
  assert.equal(r.error.message, sent.message);
  assert.deepEqual(r.fdsToClose, [306]);
});

test('org.varlink.service errors come back by name and parameters', () => {
  const r = decodeReply(fromWire(encodeError('org.varlink.service.InvalidParameter', { parameter: 'name', reason: 'bad' })), 'io.iommufd.Broker.Open');
  assert.deepEqual(r, { kind: 'service-error', name: 'org.varlink.service.InvalidParameter', parameters: { parameter: 'name', reason: 'bad' }, fdsToClose: [] });
});

test('unknown error names, bad error parameters, continues and bad envelopes are invalid', () => {
  const cases: [unknown, RegExp][] = [
    [{ error: 'io.iommufd.Broker.Mystery', parameters: {} }, /unknown error/],
    [{ error: 'com.example.Err', parameters: {} }, /unknown error/],
    [{ error: 'io.iommufd.Broker.toString', parameters: {} }, /unknown error/],
    [{ error: 'io.iommufd.Broker.NoSuchLease', parameters: {} }, /NoSuchLease do not match.*lease/],
    [{ parameters: { limitRestored: true }, continues: true }, /continues/],
    [{ parameters: { limitRestored: true }, extra: 1 }, /extra: unknown field/],
    [[], /not a Varlink reply/],
    ['{"parameters":', /not valid JSON/],
  ];
  for (const [value, reason] of cases) {
    const bytes = Buffer.from(typeof value === 'string' ? value : JSON.stringify(value));
    const r = decodeReply({ bytes, fds: [307] }, 'io.iommufd.Broker.Release');
    assert.match(kindOf(r), reason, JSON.stringify(value));
    assert.deepEqual(r.kind === 'invalid' ? r.fdsToClose : undefined, [307]);
  }
  assert.match(kindOf(decodeReply({ bytes: Buffer.from([0xc3]), fds: [] }, 'io.iommufd.Broker.List')), /UTF-8/);
});

test('property: decodeReply never throws and never loses an fd', () => {
  const fds = fc.array(fc.integer({ min: 300, max: 10_000 }), { maxLength: 3 });
  const method = fc.constantFrom<QualifiedMethod>('io.iommufd.Broker.Open', 'io.iommufd.Broker.List', 'org.varlink.service.GetInfo');
  const body = fc.oneof(
    fc.uint8Array({ maxLength: 120 }).map((b) => Buffer.from(b)),
    fc.record({ parameters: fc.jsonValue(), error: fc.oneof(fc.string(), fc.constantFrom('io.iommufd.Broker.NoSuchLease', 'org.varlink.service.MethodNotFound')) }, { requiredKeys: [] })
      .map((v) => Buffer.from(JSON.stringify(v))),
  );
  fc.assert(fc.property(body, fds, method, (bytes, list, m) => {
    const r = decodeReply({ bytes, fds: list }, m);
    const back = r.kind === 'reply' ? (r.fd === undefined ? [] : [r.fd]) : r.fdsToClose;
    assert.deepEqual([...back].sort(), [...list].sort());
  }));
});

test('an Open reply with devices: the iommufd and each device fd, every index referenced exactly once', () => {
  const withDevices = { ...lease, devices: [{ address: '0000:00:03.0', cdev: 'vfio0' }, { address: '0000:00:04.0', cdev: 'vfio1' }] };
  const devices = [{ address: '0000:00:03.0', fileDescriptor: 1 }, { address: '0000:00:04.0', fileDescriptor: 2 }];
  const ok = decodeReply(fromWire(encodeReply({ lease: withDevices, fileDescriptor: 0, devices }), [310, 311, 312]), 'io.iommufd.Broker.Open');
  assert.equal(kindOf(ok), 'reply');
  if (ok.kind !== 'reply') return;
  assert.deepEqual([ok.fd, ok.fds], [310, [310, 311, 312]]);
  assert.deepEqual(ok.parameters.devices, devices);
  assert.deepEqual(ok.parameters.lease.devices, withDevices.devices);

  const cases: [Record<string, unknown>, number[], RegExp][] = [
    [{ lease: withDevices, fileDescriptor: 0, devices }, [310, 311], /index 2, but 2 arrived/],
    [{ lease: withDevices, fileDescriptor: 0, devices }, [310, 311, 312, 313], /4 file descriptor\(s\); 3 expected/],
    [{ lease: withDevices, fileDescriptor: 0, devices: [devices[0], { ...devices[1], fileDescriptor: 0 }] }, [310, 311], /index twice/],
    [{ lease: withDevices, fileDescriptor: 0, devices: [] }, [310], /devices/],
    [{ lease: { ...lease, devices: [{ address: '00:03.0', cdev: 'vfio0' }] }, fileDescriptor: 0 }, [310], /lease/],
    [{ lease: { ...lease, devices: [{ address: '0000:00:03.0', cdev: '../vfio0' }] }, fileDescriptor: 0 }, [310], /lease/],
  ];
  for (const [value, fds, reason] of cases) {
    const r = decodeReply(fromWire(encodeReply(value), fds), 'io.iommufd.Broker.Open');
    assert.match(kindOf(r), reason, JSON.stringify(value));
    assert.deepEqual(r.kind === 'invalid' ? r.fdsToClose : undefined, fds, 'every fd is handed back to be closed');
  }
});
