// Test support for the hotplug step machine: a scripted broker holding one lease (its memory
// changes with each Resize; limit = memory + OVERHEAD) and a scripted QEMU, both logging into
// one list so a test can assert the exact interleaving of broker and QMP calls.
//
// Invariants:
// - close() closes both clients and both fakes; nothing else holds an fd.
import assert from 'node:assert/strict';
import { BrokerClient } from '../../client/client.ts';
import { HotplugError, type HotplugStep, type LimitState } from '../../client/memory-hotplug-error.ts';
import { QmpClient } from '../../client/qmp.ts';
import { FakeBroker, wireLease, type Action } from './fake-broker.ts';
import { FakeQmp, type QmpAction, type QmpCall } from './fake-qmp.ts';

export const GiB = 1024 ** 3;
export const MiB = 1024 ** 2;
export const LEASE = 'l-0123456789abcdef';
export const OVERHEAD = GiB;

export interface World {
  log: string[];
  /** The lease's memory as the fake broker holds it (its limit is this + OVERHEAD). */
  memory(): number;
  broker: BrokerClient;
  qmp: QmpClient;
  fakeQmp: FakeQmp;
  close(): void;
}

export const refused = (desc: string): QmpAction => ({ error: { class: 'GenericError', desc } });

/** A DIMM as query-memory-devices shows it. */
export function dimm(id: string, size: number): unknown {
  return { type: 'dimm', data: { id, size, memdev: `/objects/${id}-mem`, addr: 4 * GiB, slot: 0, node: 0, hotplugged: true, hotpluggable: true } };
}

export async function world(options: {
  memory: number;
  qmp: (call: QmpCall) => QmpAction | undefined;
  /** The n-th Resize (0-based) is answered with this instead of being done. */
  resize?: (n: number) => Action | undefined;
  qmpTimeoutMs?: number;
}): Promise<World> {
  const log: string[] = [];
  let memory = options.memory;
  let resizes = 0;
  const fakeBroker = FakeBroker.start((call) => {
    if (call.method === 'io.iommufd.Broker.List') {
      log.push('broker List');
      return { reply: { leases: [wireLease({ id: LEASE, memoryBytes: memory, limitBytes: memory + OVERHEAD })] } };
    }
    const wanted = call.parameters['memoryBytes'] as number;
    log.push(`broker Resize ${wanted / MiB} MiB`);
    const override = options.resize?.(resizes++);
    if (override !== undefined) return override;
    const previousLimitBytes = memory + OVERHEAD;
    memory = wanted;
    return { reply: { lease: wireLease({ id: LEASE, memoryBytes: memory, limitBytes: memory + OVERHEAD }), previousLimitBytes } };
  });
  const fakeQmp = FakeQmp.start((call) => {
    log.push(`qmp ${call.execute}${call.arguments['id'] === undefined ? '' : ` ${String(call.arguments['id'])}`}`);
    return options.qmp(call) ?? { return: {} };
  });
  const broker = await BrokerClient.connect(fakeBroker.socket);
  const qmp = await QmpClient.connect(fakeQmp.socket, { timeoutMs: options.qmpTimeoutMs ?? 10_000 });
  return {
    log, memory: () => memory, broker, qmp, fakeQmp,
    close: () => { broker.close(); qmp.close(); fakeBroker.close(); fakeQmp.close(); },
  };
}

export async function expectFailure(promise: Promise<unknown>, step: HotplugStep, limit: LimitState, pattern?: RegExp): Promise<HotplugError> {
  let caught: unknown;
  await promise.then(() => assert.fail('expected a HotplugError'), (e: unknown) => { caught = e; });
  assert.ok(caught instanceof HotplugError, `expected HotplugError, got ${String(caught)}`);
  assert.equal(caught.step, step, caught.message);
  assert.equal(caught.limit, limit, caught.message);
  if (pattern !== undefined) assert.match(caught.message, pattern);
  return caught;
}
