// The iommufdctl commands that change or measure a running QEMU's memory: `hotplug`, `unplug`,
// `measure`, and the --size-from-qmp sizing used by `pass` and `resize`.
//
// Invariants:
// - QMP is reached before the broker is asked, so an unreachable QEMU changes no lease.
// - hotplug/unplug run the step machine (memory-hotplug.ts), which orders and undoes the steps;
//   this module only connects, prints and closes. Both connections are closed on every path.
// - The DEVICE_DELETED wait of `unplug` is bounded by --timeout, like every other wait.
// - A size from QMP is the estimate itself (memoryBytes = estimate); the broker adds its
//   overhead on top, and when that overhead is not negligible a note on stderr says what it costs.
// - No fd is held here beyond the two sockets (owned by their clients).
import { formatSize } from '../shared/sizes.ts';
import type { Lease } from '../protocol/methods.ts';
import type { Command, CommonOptions, OpenRequest } from './args.ts';
import { EXIT_OK } from './failures.ts';
import type { CliIo } from './io.ts';
import { formatEstimate, formatMemoryChange, formatResize } from './output.ts';
import { withBroker } from './session.ts';
import { hotplugMemory, unplugMemory } from '../client/memory-hotplug.ts';
import { QmpClient } from '../client/qmp.ts';
import { measurePinned, type PinnedEstimate } from '../client/qmp-sizing.ts';

/** Extra limit above the estimate that is worth a note (the broker's overhead, not page rounding). */
const NOTE_ABOVE_BYTES = 1024 * 1024;

async function withQmp<T>(socket: string, common: CommonOptions, fn: (qmp: QmpClient) => Promise<T>): Promise<T> {
  const qmp = await QmpClient.connect(socket, { timeoutMs: common.timeoutMs });
  try {
    return await fn(qmp);
  } finally {
    qmp.close();
  }
}

function print(io: CliIo, common: CommonOptions, value: unknown, text: string): void {
  io.stdout(common.json ? `${JSON.stringify(value)}\n` : text);
}

export async function runHotplug(command: Extract<Command, { kind: 'hotplug' }>, io: CliIo): Promise<number> {
  const { common } = command;
  const added = await withQmp(command.qmpSocket, common, (qmp) => withBroker(common, (broker) => hotplugMemory(broker, qmp, {
    lease: command.lease, sizeBytes: command.sizeBytes,
    ...(command.dimmId === undefined ? {} : { dimmId: command.dimmId }), ...(command.node === undefined ? {} : { node: command.node }),
  })));
  print(io, common, added, formatMemoryChange(added, 'added'));
  return EXIT_OK;
}

export async function runUnplug(command: Extract<Command, { kind: 'unplug' }>, io: CliIo): Promise<number> {
  const { common } = command;
  const removed = await withQmp(command.qmpSocket, common, (qmp) => withBroker(common, (broker) => unplugMemory(broker, qmp, {
    lease: command.lease, dimmId: command.dimmId, eventTimeoutMs: common.timeoutMs,
  })));
  print(io, common, removed, formatMemoryChange(removed, 'removed'));
  return EXIT_OK;
}

export async function runMeasure(command: Extract<Command, { kind: 'measure' }>, io: CliIo): Promise<number> {
  const estimate = await withQmp(command.qmpSocket, command.common, measurePinned);
  print(io, command.common, estimate, formatEstimate(estimate));
  return EXIT_OK;
}

/** `resize LEASE --qmp SOCK --size-from-qmp`: the lease's memory becomes what QEMU will pin. */
export async function runSizedResize(common: CommonOptions, lease: string, qmpSocket: string, io: CliIo): Promise<number> {
  const estimate = await withQmp(qmpSocket, common, measurePinned);
  const reply = await withBroker(common, (c) => c.resize(lease, estimate.estimateBytes));
  print(io, common, { ...reply, estimate }, formatResize(reply.lease, reply.previousLimitBytes));
  noteOverhead(io, reply.lease, estimate);
  return EXIT_OK;
}

/** For `pass --size-from-qmp`: the Open request with the memory QEMU at `qmp` will pin. */
export async function sizedOpenRequest(qmp: QmpClient, request: { name: string; requestId?: string }): Promise<{ request: OpenRequest; estimate: PinnedEstimate }> {
  const estimate = await measurePinned(qmp);
  const { name, requestId } = request;
  return { request: { name, memoryBytes: estimate.estimateBytes, ...(requestId === undefined ? {} : { requestId }) }, estimate };
}

/** Says on stderr what the broker's overhead adds above a QMP-sized estimate, when it matters. */
export function noteOverhead(io: CliIo, lease: Lease, estimate: PinnedEstimate): void {
  const extra = lease.limitBytes - estimate.estimateBytes;
  if (extra < NOTE_ABOVE_BYTES) return;
  io.stderr(`note: limit ${formatSize(lease.limitBytes)} = the ${formatSize(estimate.estimateBytes)} QEMU will pin (sized from QMP) ` +
    `+ ${formatSize(extra)} of the broker's overhead; where every manager sizes from QMP, limits.overhead = 0 saves that per VM (docs/CONFIG.md)\n`);
}
