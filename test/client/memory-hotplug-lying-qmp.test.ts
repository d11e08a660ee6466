// The unplug step machine against a QEMU that lies in query-memory-devices (a guest may own
// QEMU): the DIMM's size is QEMU's word, and the lowering is computed from it. An unplug must
// never end up raising the lease (a negative size), nor ask the broker for a size it cannot
// take after the DIMM is already gone (a fraction): such a size is refused before device_del.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { unplugMemory } from '../../client/memory-hotplug.ts';
import { dimm, expectFailure, GiB, LEASE, MiB, world } from './hotplug-world.ts';

const deleted = { event: 'DEVICE_DELETED', data: { device: 'dimm-0', path: '/machine/peripheral/dimm-0' } };

for (const [what, size] of [
  ['a negative size (which would make the "lowering" a raise)', -64 * MiB],
  ['a size of zero', 0],
  ['a fractional size', 0.5],
  ['a size beyond 2^53', 2 ** 60],
] as const) {
  test(`unplug: QEMU reporting ${what} for the DIMM changes nothing and raises nothing`, async () => {
    const w = await world({
      memory: GiB + 64 * MiB,
      qmp: (c) => c.execute === 'query-memory-devices' ? { return: [dimm('dimm-0', size)] }
        : c.execute === 'device_del' ? { return: {}, eventsAfter: [deleted] } : undefined,
    });
    try {
      await expectFailure(unplugMemory(w.broker, w.qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 }),
        'lookup', 'unchanged', /size/);
      assert.deepEqual(w.log, ['broker List', 'qmp query-memory-devices'], 'nothing is unplugged, nothing resized');
      assert.equal(w.memory(), GiB + 64 * MiB);
    } finally {
      w.close();
    }
  });
}
