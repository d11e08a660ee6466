// The hotplug step machine against the host's real QEMU (Debian 12: 7.2, no iommufd, so the
// broker is scripted): QEMU really plugs the DIMM, really refuses what it refuses (and the
// undo really deletes the backend), and really sends DEVICE_DELETED only once the "guest" ejects
// the DIMM (the test plays the guest's ACPI _EJ0 through the memory hotplug I/O ports).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import type { EventWait } from '../../client/qmp.ts';
import { BrokerClient } from '../../client/client.ts';
import { hotplugMemory, unplugMemory, type HotplugQmp } from '../../client/memory-hotplug.ts';
import { HotplugError } from '../../client/memory-hotplug-error.ts';
import { QmpClient } from '../../client/qmp.ts';
import { measurePinned } from '../../client/qmp-sizing.ts';
import { FakeBroker, wireLease } from './fake-broker.ts';
import { startQemu, stopQemu, type Qemu } from './qemu.ts';

const MiB = 1024 ** 2;
const GiB = 1024 * MiB;
const LEASE = 'l-0123456789abcdef';

let qemu: Qemu;
let qmp: QmpClient;
let fake: FakeBroker;
let broker: BrokerClient;
let memory = 64 * MiB;
const resizes: number[] = [];

before(async () => {
  qemu = await startQemu(['-M', 'pc', '-accel', 'tcg', '-m', '64M,slots=2,maxmem=512M', '-S']);
  qmp = await QmpClient.connect(qemu.qmp);
  fake = FakeBroker.start((call) => {
    if (call.method === 'io.iommufd.Broker.List') return { reply: { leases: [wireLease({ memoryBytes: memory, limitBytes: memory + GiB })] } };
    const previousLimitBytes = memory + GiB;
    memory = call.parameters['memoryBytes'] as number;
    resizes.push(memory / MiB);
    return { reply: { lease: wireLease({ memoryBytes: memory, limitBytes: memory + GiB }), previousLimitBytes } };
  });
  broker = await BrokerClient.connect(fake.socket);
});
after(async () => {
  broker.close();
  fake.close();
  qmp.close();
  await stopQemu(qemu);
});

async function dimmIds(): Promise<string[]> {
  return (await qmp.execute('query-memory-devices') as { data: { id: string } }[]).map((d) => d.data.id);
}

async function objects(): Promise<string[]> {
  return (await qmp.execute('qom-list', { path: '/objects' }) as { name: string }[]).map((o) => o.name);
}

/** QMP as the step machine sees it, with a guest that ejects each DIMM after device_del (ACPI _EJ0). */
function withEjectingGuest(slot: number): HotplugQmp {
  return {
    expectEvent: (name, match, timeoutMs): EventWait => qmp.expectEvent(name, match, timeoutMs),
    execute: async (command, args) => {
      const result = await qmp.execute(command, args);
      if (command === 'device_del') {
        // docs/specs/acpi_mem_hotplug.rst: 0xa00 selects the slot, bit 3 of 0xa14 ejects it
        await qmp.execute('human-monitor-command', { 'command-line': `o /w 0xa00 ${slot}` });
        await qmp.execute('human-monitor-command', { 'command-line': 'o /b 0xa14 8' });
      }
      return result;
    },
  };
}

test('real QEMU: hotplug raises first, then QEMU maps the DIMM (seen by the QMP sizing too)', async () => {
  const added = await hotplugMemory(broker, qmp, { lease: LEASE, sizeBytes: 64 * MiB });
  assert.equal(added.dimmId, 'dimm-0');
  assert.deepEqual(resizes, [128]);
  assert.deepEqual(await dimmIds(), ['dimm-0']);
  const estimate = await measurePinned(qmp);
  assert.equal(estimate.regions.find((r) => r.name === 'dimm-0-mem')?.mappedBytes, 64 * MiB);
  assert.equal(estimate.guestRamBytes, 128 * MiB);
});

test('real QEMU: its refusals are undone - a duplicate backend, and a DIMM beyond maxmem', async () => {
  resizes.length = 0;
  await assert.rejects(hotplugMemory(broker, qmp, { lease: LEASE, sizeBytes: 64 * MiB, dimmId: 'dimm-0' }), (e: unknown) =>
    e instanceof HotplugError && e.step === 'object-add' && e.limit === 'unchanged' && /QEMU refused object-add: .*dimm-0-mem/.test(e.message));
  await assert.rejects(hotplugMemory(broker, qmp, { lease: LEASE, sizeBytes: 512 * MiB, dimmId: 'big' }), (e: unknown) =>
    e instanceof HotplugError && e.step === 'device-add' && e.limit === 'unchanged' && /QEMU refused device_add: /.test(e.message));
  assert.deepEqual(resizes, [192, 128, 640, 128], 'each raise was lowered back');
  assert.deepEqual(await dimmIds(), ['dimm-0']);
  assert.ok(!(await objects()).includes('big-mem'), 'the backend of the refused DIMM was deleted');
});

test('real QEMU: unplug waits for the guest; without its eject nothing is lowered, with it the limit goes down last', async () => {
  resizes.length = 0;
  await assert.rejects(unplugMemory(broker, qmp, { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 300 }), (e: unknown) =>
    e instanceof HotplugError && e.step === 'device-deleted' && e.limit === 'unchanged');
  assert.deepEqual(resizes, []);
  assert.deepEqual(await dimmIds(), ['dimm-0'], 'the guest has not released it');
  const removed = await unplugMemory(broker, withEjectingGuest(0), { lease: LEASE, dimmId: 'dimm-0', eventTimeoutMs: 10_000 });
  assert.equal(removed.sizeBytes, 64 * MiB);
  assert.deepEqual(resizes, [64]);
  assert.deepEqual(await dimmIds(), []);
  assert.ok(!(await objects()).includes('dimm-0-mem'));
});
