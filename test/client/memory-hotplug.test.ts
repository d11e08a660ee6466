// The hotplug/unplug step machine against a scripted broker (fake-broker.ts) and a scripted QEMU
// (fake-qmp.ts): the exact order of broker and QMP calls, the undo after a failure at every
// step, and where the lease's memory (and so its limit) ends up.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { hotplugMemory, unplugMemory } from '../../client/memory-hotplug.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { dimm, expectFailure, GiB, LEASE, MiB, OVERHEAD, refused, world } from './hotplug-world.ts';
import type { QmpAction, QmpCall } from './fake-qmp.ts';

const PLUG_START = ['broker List', 'qmp query-memory-devices', 'broker Resize 1088 MiB'];

test('hotplug raises first, then object-add and device_add; the DIMM gets the first free dimm-<n>', async () => {
  const before = openFds();
  const w = await world({ memory: GiB, qmp: (c) => c.execute === 'query-memory-devices' ? { return: [dimm('dimm-0', 64 * MiB)] } : undefined });
  try {
    const added = await hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB });
    assert.deepEqual(w.log, [...PLUG_START, 'qmp object-add dimm-1-mem', 'qmp device_add dimm-1']);
    assert.deepEqual(w.fakeQmp.calls.slice(1).map((c) => c.arguments), [
      { 'qom-type': 'memory-backend-ram', id: 'dimm-1-mem', size: 64 * MiB },
      { driver: 'pc-dimm', id: 'dimm-1', memdev: 'dimm-1-mem' },
    ]);
    assert.equal(w.memory(), GiB + 64 * MiB);
    assert.deepEqual([added.dimmId, added.backendId, added.sizeBytes, added.lease.limitBytes, added.previousLimitBytes],
      ['dimm-1', 'dimm-1-mem', 64 * MiB, GiB + 64 * MiB + OVERHEAD, GiB + OVERHEAD]);
  } finally {
    w.close();
  }
  assert.deepEqual(leakedSince(before), []);
});

test('hotplug with a named DIMM and node asks QEMU for nothing else first', async () => {
  const w = await world({ memory: GiB, qmp: () => undefined });
  try {
    await hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB, dimmId: 'extra', node: 1 });
    assert.deepEqual(w.log, ['broker List', 'broker Resize 1088 MiB', 'qmp object-add extra-mem', 'qmp device_add extra']);
    assert.equal(w.fakeQmp.calls[1]?.arguments['node'], 1);
  } finally {
    w.close();
  }
});

test('hotplug: a lease the caller cannot see stops before anything changes', async () => {
  const w = await world({ memory: GiB, qmp: () => undefined });
  try {
    await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: 'l-00000000000000ff', sizeBytes: 64 * MiB }), 'lookup', 'unchanged', /no such lease/);
    assert.deepEqual(w.log, ['broker List']);
  } finally {
    w.close();
  }
});

test('hotplug: a refused raise plugs nothing', async () => {
  const w = await world({
    memory: GiB, qmp: (c) => c.execute === 'query-memory-devices' ? { return: [] } : undefined,
    resize: () => ({ error: 'io.iommufd.Broker.BudgetExceeded', parameters: { requestedBytes: 64 * MiB, availableBytes: 0, budgetBytes: GiB } }),
  });
  try {
    await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'raise', 'unchanged', /BudgetExceeded/);
    assert.deepEqual(w.log, PLUG_START);
    assert.equal(w.memory(), GiB);
  } finally {
    w.close();
  }
});

test('hotplug: object-add refused -> the limit goes back', async () => {
  const w = await world({ memory: GiB, qmp: (c) => c.execute === 'object-add' ? refused("attempt to add duplicate property 'dimm-0-mem'") : c.execute === 'query-memory-devices' ? { return: [] } : undefined });
  try {
    const e = await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'object-add', 'unchanged', /duplicate property/);
    assert.deepEqual(w.log, [...PLUG_START, 'qmp object-add dimm-0-mem', 'broker Resize 1024 MiB']);
    assert.deepEqual(e.undoFailures, []);
    assert.equal(w.memory(), GiB);
  } finally {
    w.close();
  }
});

test('hotplug: object-add unanswered -> the backend delete is tried, the limit goes back (a backend alone is not mapped)', async () => {
  const w = await world({ memory: GiB, qmpTimeoutMs: 100, qmp: (c) => c.execute === 'object-add' ? 'hang' : c.execute === 'query-memory-devices' ? { return: [] } : undefined });
  try {
    const e = await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'object-add', 'unchanged', /no answer/);
    assert.deepEqual(w.log, [...PLUG_START, 'qmp object-add dimm-0-mem', 'broker Resize 1024 MiB']);
    assert.match(e.undoFailures.join(), /object-del dimm-0-mem/);
    assert.equal(w.memory(), GiB);
  } finally {
    w.close();
  }
});

test('hotplug: device_add refused -> object-del, then the limit goes back', async () => {
  const w = await world({ memory: GiB, qmp: (c) => c.execute === 'device_add' ? refused('a used vhost backend has no free memory slots left') : c.execute === 'query-memory-devices' ? { return: [] } : undefined });
  try {
    const e = await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'device-add', 'unchanged', /QEMU refused device_add: a used vhost/);
    assert.deepEqual(w.log, [...PLUG_START, 'qmp object-add dimm-0-mem', 'qmp device_add dimm-0', 'qmp object-del dimm-0-mem', 'broker Resize 1024 MiB']);
    assert.deepEqual(e.undone, ['object-del dimm-0-mem', `resize ${LEASE} back to 1 GiB of memory`]);
    assert.equal(w.memory(), GiB);
  } finally {
    w.close();
  }
});

test('hotplug: device_add refused and object-del refused -> the limit still goes back, the leftover is reported', async () => {
  const w = await world({ memory: GiB, qmp: (c) => c.execute === 'device_add' || c.execute === 'object-del' ? refused('nope') : c.execute === 'query-memory-devices' ? { return: [] } : undefined });
  try {
    const e = await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'device-add', 'unchanged');
    assert.deepEqual(e.undoFailures, ['object-del dimm-0-mem: QEMU refused object-del: nope (GenericError)']);
    assert.equal(w.memory(), GiB);
  } finally {
    w.close();
  }
});

test('hotplug: device_add refused and the lowering refused -> limit raised, said so', async () => {
  const w = await world({
    memory: GiB, qmp: (c) => c.execute === 'device_add' ? refused('nope') : c.execute === 'query-memory-devices' ? { return: [] } : undefined,
    resize: (n) => n === 1 ? { error: 'io.iommufd.Broker.TargetGone', parameters: { pid: 1, reason: 'exited' } } : undefined,
  });
  try {
    const e = await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'device-add', 'raised');
    assert.match(e.undoFailures.join(), /resize .* back to 1 GiB: .*TargetGone/);
    assert.equal(w.memory(), GiB + 64 * MiB);
  } finally {
    w.close();
  }
});

test('hotplug: a QEMU that never answers device_add keeps the limit raised (the DIMM may be mapped)', async () => {
  const w = await world({ memory: GiB, qmpTimeoutMs: 100, qmp: (c) => c.execute === 'device_add' ? 'hang' : c.execute === 'query-memory-devices' ? { return: [] } : undefined });
  try {
    const e = await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'device-add', 'raised', /limit stays raised/);
    assert.deepEqual(w.log, [...PLUG_START, 'qmp object-add dimm-0-mem', 'qmp device_add dimm-0']);
    assert.deepEqual(e.undone, []);
    assert.equal(w.memory(), GiB + 64 * MiB);
  } finally {
    w.close();
  }
});

test('hotplug: QEMU dying on device_add (the abort a missing raise causes) keeps the limit raised', async () => {
  const w = await world({ memory: GiB, qmp: (c) => c.execute === 'device_add' ? 'close' : c.execute === 'query-memory-devices' ? { return: [] } : undefined });
  try {
    await expectFailure(hotplugMemory(w.broker, w.qmp, { lease: LEASE, sizeBytes: 64 * MiB }), 'device-add', 'raised');
    assert.equal(w.memory(), GiB + 64 * MiB);
  } finally {
    w.close();
  }
});

const UNPLUG_START = ['broker List', 'qmp query-memory-devices', 'qmp device_del dimm-0'];
const deleted = { event: 'DEVICE_DELETED', data: { device: 'dimm-0', path: '/machine/peripheral/dimm-0' } };

function unplugQemu(deviceDel: QmpAction, more: (c: QmpCall) => QmpAction | undefined = () => undefined): (c: QmpCall) => QmpAction | undefined {
  return (c) => c.execute === 'query-memory-devices' ? { return: [dimm('dimm-0', 64 * MiB)] } : c.execute === 'device_del' ? deviceDel : more(c);
}

test('unplug: device_del, DEVICE_DELETED, object-del, and only then the lowering', async () => {
  for (const deviceDel of [{ return: {}, eventsAfter: [deleted] }, { return: {}, eventsBefore: [deleted] }]) {
    const w = await world({ memory: GiB + 64 * MiB, qmp: unplugQemu(deviceDel) });
    try {
      const removed = await unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 });
      assert.deepEqual(w.log, [...UNPLUG_START, 'qmp object-del dimm-0-mem', 'broker Resize 1024 MiB']);
      assert.equal(w.memory(), GiB);
      assert.deepEqual([removed.backendId, removed.sizeBytes, removed.lease.limitBytes], ['dimm-0-mem', 64 * MiB, GiB + OVERHEAD]);
    } finally {
      w.close();
    }
  }
});

test('unplug: a late DEVICE_DELETED is waited for; nothing is lowered before it', async () => {
  let deviceDelSeen!: () => void;
  const seen = new Promise<void>((resolve) => { deviceDelSeen = resolve; });
  const w = await world({
    memory: GiB + 64 * MiB,
    qmp: (c) => {
      if (c.execute === 'device_del') deviceDelSeen();
      return unplugQemu({ return: {}, eventsAfter: [{ event: 'DEVICE_DELETED', data: { device: 'other' } }] })(c);
    },
  });
  try {
    const unplugged = unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 });
    await Promise.race([seen, unplugged]);
    // QEMU answers in order: the first query-status's reply comes after device_del's reply and the
    // other device's event; the second one's after anything the step machine sent meanwhile.
    await w.qmp.execute('query-status');
    await w.qmp.execute('query-status');
    w.log.splice(w.log.indexOf('qmp query-status'), 2);
    assert.deepEqual(w.log, UNPLUG_START, 'another device\'s DEVICE_DELETED does not count');
    assert.equal(w.memory(), GiB + 64 * MiB);
    w.fakeQmp.emit(deleted);
    await unplugged;
    assert.deepEqual(w.log, [...UNPLUG_START, 'qmp object-del dimm-0-mem', 'broker Resize 1024 MiB']);
    assert.equal(w.memory(), GiB);
  } finally {
    w.close();
  }
});

test('unplug: no DEVICE_DELETED in time -> nothing deleted, the limit stays', async () => {
  const w = await world({ memory: GiB + 64 * MiB, qmp: unplugQemu({ return: {} }) });
  try {
    await expectFailure(unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 50 }),
      'device-deleted', 'unchanged', /did not report dimm-0 deleted .*QmpEventTimeout|sent no DEVICE_DELETED event within 50 ms/);
    assert.deepEqual(w.log, UNPLUG_START);
    assert.equal(w.memory(), GiB + 64 * MiB);
    assert.deepEqual(await w.qmp.execute('query-memory-devices'), [dimm('dimm-0', 64 * MiB)], 'the QMP session is still usable');
  } finally {
    w.close();
  }
});

test('unplug: device_del refused -> nothing else happens', async () => {
  const w = await world({ memory: GiB + 64 * MiB, qmp: unplugQemu(refused('acpi: memory hot-unplug is not enabled')) });
  try {
    await expectFailure(unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 }), 'device-del', 'unchanged', /hot-unplug is not enabled/);
    assert.deepEqual(w.log, UNPLUG_START);
    assert.equal(w.memory(), GiB + 64 * MiB);
  } finally {
    w.close();
  }
});

test('unplug: object-del refused -> the limit is not lowered', async () => {
  const w = await world({ memory: GiB + 64 * MiB, qmp: unplugQemu({ return: {}, eventsAfter: [deleted] }, (c) => c.execute === 'object-del' ? refused('object in use') : undefined) });
  try {
    await expectFailure(unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 }), 'object-del', 'unchanged', /object in use/);
    assert.deepEqual(w.log, [...UNPLUG_START, 'qmp object-del dimm-0-mem']);
    assert.equal(w.memory(), GiB + 64 * MiB);
  } finally {
    w.close();
  }
});

test('unplug: the lowering refused -> reported with the limit still raised', async () => {
  const w = await world({
    memory: GiB + 64 * MiB, qmp: unplugQemu({ return: {}, eventsAfter: [deleted] }),
    resize: () => ({ error: 'io.iommufd.Broker.NoSuchLease', parameters: { lease: LEASE } }),
  });
  try {
    await expectFailure(unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 }), 'lower', 'raised', /NoSuchLease/);
    assert.deepEqual(w.log, [...UNPLUG_START, 'qmp object-del dimm-0-mem', 'broker Resize 1024 MiB']);
  } finally {
    w.close();
  }
});

test('unplug: an unknown DIMM, or one the lease memory does not cover, changes nothing', async () => {
  const w = await world({ memory: 32 * MiB, qmp: unplugQemu({ return: {} }) });
  try {
    await expectFailure(unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-9', eventTimeoutMs: 10_000 }), 'lookup', 'unchanged', /no memory device with id dimm-9/);
    await expectFailure(unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 }), 'lookup', 'unchanged', /does not include/);
    assert.deepEqual(w.log, ['broker List', 'qmp query-memory-devices', 'broker List', 'qmp query-memory-devices']);
  } finally {
    w.close();
  }
});
