// Memory hotplug and unplug that cannot kill the VM: the order of broker and QMP steps, and
// the undo of every step taken when a later one fails.
//
// Invariants:
// - hotplug: lookup, raise (Resize to the lease's memory + size), object-add, device_add, in
//   that order: QEMU never maps a DIMM the limit does not already cover (a VFIO DMA map that
//   fails aborts QEMU). On a failure every step taken is undone, newest first (object-del, then
//   Resize back to the lease's earlier memory) — except after a device_add whose outcome is
//   unknown (no answer, connection lost): the DIMM may be mapped, so the backend is kept and
//   the limit stays raised (limit 'raised'), and the error says so.
// - unplug: lookup, device_del, DEVICE_DELETED for that DIMM, object-del, lower, in that order.
//   The DIMM's size is QEMU's word (a guest may own QEMU): unless it is a positive whole number
//   of bytes the unplug stops at lookup, so an unplug never asks for more memory than before.
//   The limit is lowered only after QEMU reported the DIMM deleted and the backend deleted: no
//   path here lowers a limit while the DIMM can still be mapped. Any failure before `lower`
//   leaves the limit where it was (a too-high limit costs budget; a too-low one kills the VM).
// - Every wait is bounded: QMP replies by the QmpClient's timeout, DEVICE_DELETED by
//   eventTimeoutMs (registered before device_del, as QEMU may send it before the reply).
// - No fd is held here; the caller owns both connections.
import type { Lease } from '../protocol/methods.ts';
import { formatSize } from '../shared/sizes.ts';
import { HotplugError, type HotplugErrorName, type HotplugStep } from './memory-hotplug-error.ts';
import type { EventWait } from './qmp.ts';
import { QmpError } from './qmp-error.ts';

/** The broker calls the step machine makes (BrokerClient has them). */
export interface HotplugBroker {
  list(): Promise<{ leases: Lease[] }>;
  resize(lease: string, memoryBytes: number): Promise<{ lease: Lease; previousLimitBytes: number }>;
}

/** The QMP calls the step machine makes (QmpClient has them). */
export interface HotplugQmp {
  execute(command: string, args?: Record<string, unknown>): Promise<unknown>;
  expectEvent(name: string, match: (data: Record<string, unknown>) => boolean, timeoutMs?: number): EventWait;
}

export interface HotplugRequest {
  lease: string;
  sizeBytes: number;
  /** The pc-dimm's id; default the first free `dimm-<n>`. The backend is `<id>-mem`. */
  dimmId?: string;
  /** NUMA node for the DIMM (device_add node=). */
  node?: number;
}

export interface UnplugRequest {
  lease: string;
  dimmId: string;
  /** How long to wait for DEVICE_DELETED (the guest must release the DIMM). */
  eventTimeoutMs: number;
}

export interface MemoryChange {
  lease: Lease;
  previousLimitBytes: number;
  dimmId: string;
  backendId: string;
  sizeBytes: number;
}

interface MemoryDevice { id: string; sizeBytes: number; memdev: string }

export function backendIdFor(dimmId: string): string {
  return `${dimmId}-mem`;
}

function why(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A failure whose outcome in QEMU is unknown (QEMU may have done it, or died). */
function outcomeUnknown(error: unknown): boolean {
  return !(error instanceof QmpError && error.errorName === 'QmpCommandFailed');
}

async function findLease(broker: HotplugBroker, lease: string, name: HotplugErrorName): Promise<Lease> {
  let leases: Lease[];
  try {
    ({ leases } = await broker.list());
  } catch (error) {
    throw new HotplugError(name, 'lookup', lease, `cannot list the leases: ${why(error)}`, { limit: 'unchanged', cause: error });
  }
  const found = leases.find((l) => l.id === lease);
  if (found === undefined) {
    throw new HotplugError(name, 'lookup', lease, 'no such lease among those this caller may see (iommufdctl list)', { limit: 'unchanged' });
  }
  return found;
}

async function memoryDevices(qmp: HotplugQmp, lease: string, name: HotplugErrorName): Promise<MemoryDevice[]> {
  let reply: unknown;
  try {
    reply = await qmp.execute('query-memory-devices');
  } catch (error) {
    throw new HotplugError(name, 'lookup', lease, `query-memory-devices: ${why(error)}`, { limit: 'unchanged', cause: error });
  }
  const out: MemoryDevice[] = [];
  for (const item of Array.isArray(reply) ? reply as unknown[] : []) {
    const data = typeof item === 'object' && item !== null ? (item as { data?: unknown }).data : undefined;
    if (typeof data !== 'object' || data === null) continue;
    const { id, size, memdev } = data as { id?: unknown; size?: unknown; memdev?: unknown };
    if (typeof id === 'string' && typeof size === 'number' && typeof memdev === 'string') out.push({ id, sizeBytes: size, memdev });
  }
  return out;
}

function firstFreeDimmId(devices: readonly MemoryDevice[]): string {
  const taken = new Set(devices.map((d) => d.id));
  let n = 0;
  while (taken.has(`dimm-${n}`)) n++;
  return `dimm-${n}`;
}

/** Raises the lease, then adds the backend and the DIMM; undoes what it did if a step fails. */
export async function hotplugMemory(broker: HotplugBroker, qmp: HotplugQmp, request: HotplugRequest): Promise<MemoryChange> {
  const { lease: leaseId, sizeBytes } = request;
  const before = await findLease(broker, leaseId, 'HotplugFailed');
  const dimmId = request.dimmId ?? firstFreeDimmId(await memoryDevices(qmp, leaseId, 'HotplugFailed'));
  const backendId = backendIdFor(dimmId);

  let raised: { lease: Lease; previousLimitBytes: number };
  try {
    raised = await broker.resize(leaseId, before.memoryBytes + sizeBytes);
  } catch (error) {
    throw new HotplugError('HotplugFailed', 'raise', leaseId,
      `the broker did not raise the lease to ${formatSize(before.memoryBytes + sizeBytes)} of memory, so nothing was plugged: ${why(error)}`,
      { limit: 'unchanged', cause: error });
  }

  const undone: string[] = [];
  const undoFailures: string[] = [];
  const fail = async (step: HotplugStep, error: unknown, backendAdded: boolean): Promise<never> => {
    if (step === 'device-add' && outcomeUnknown(error)) {
      throw new HotplugError('HotplugFailed', step, leaseId,
        `device_add ${dimmId} got no answer (${why(error)}): QEMU may have plugged the DIMM, so the limit stays raised ` +
        `at ${formatSize(raised.lease.limitBytes)} and ${backendId} is kept; check query-memory-devices, then unplug or resize by hand`,
        { limit: 'raised', cause: error });
    }
    if (backendAdded) {
      try {
        await qmp.execute('object-del', { id: backendId });
        undone.push(`object-del ${backendId}`);
      } catch (undoError) {
        undoFailures.push(`object-del ${backendId}: ${why(undoError)}`);
      }
    }
    let limit: 'unchanged' | 'raised' = 'unchanged';
    try {
      await broker.resize(leaseId, before.memoryBytes);
      undone.push(`resize ${leaseId} back to ${formatSize(before.memoryBytes)} of memory`);
    } catch (undoError) {
      limit = 'raised';
      undoFailures.push(`resize ${leaseId} back to ${formatSize(before.memoryBytes)}: ${why(undoError)}`);
    }
    throw new HotplugError('HotplugFailed', step, leaseId, why(error), { limit, undone, undoFailures, cause: error });
  };

  try {
    await qmp.execute('object-add', { 'qom-type': 'memory-backend-ram', id: backendId, size: sizeBytes });
  } catch (error) {
    // An object-add without an answer may still have created the backend: try to delete it.
    return fail('object-add', error, outcomeUnknown(error));
  }
  try {
    await qmp.execute('device_add', {
      driver: 'pc-dimm', id: dimmId, memdev: backendId, ...(request.node === undefined ? {} : { node: request.node }),
    });
  } catch (error) {
    return fail('device-add', error, true);
  }
  return { lease: raised.lease, previousLimitBytes: raised.previousLimitBytes, dimmId, backendId, sizeBytes };
}

/** Removes the DIMM, waits until QEMU released it, deletes its backend, and only then lowers. */
export async function unplugMemory(broker: HotplugBroker, qmp: HotplugQmp, request: UnplugRequest): Promise<MemoryChange> {
  const { lease: leaseId, dimmId } = request;
  const before = await findLease(broker, leaseId, 'UnplugFailed');
  const devices = await memoryDevices(qmp, leaseId, 'UnplugFailed');
  const dimm = devices.find((d) => d.id === dimmId);
  if (dimm === undefined) {
    throw new HotplugError('UnplugFailed', 'lookup', leaseId, `QEMU has no memory device with id ${dimmId} (query-memory-devices)`, { limit: 'unchanged' });
  }
  // QEMU's word (a guest may own QEMU): a size that is not a positive whole number of bytes
  // would make the lowering a raise (negative) or a size the broker refuses after the DIMM is gone.
  if (!Number.isSafeInteger(dimm.sizeBytes) || dimm.sizeBytes < 1) {
    throw new HotplugError('UnplugFailed', 'lookup', leaseId,
      `QEMU reports a size of ${dimm.sizeBytes} for ${dimmId}, not a positive whole number of bytes: nothing was done`,
      { limit: 'unchanged' });
  }
  const backendId = dimm.memdev.slice(dimm.memdev.lastIndexOf('/') + 1);
  const lowered = before.memoryBytes - dimm.sizeBytes;
  if (lowered < 1) {
    throw new HotplugError('UnplugFailed', 'lookup', leaseId,
      `the lease's memory (${formatSize(before.memoryBytes)}) does not include the ${formatSize(dimm.sizeBytes)} DIMM ${dimmId}: nothing was done`,
      { limit: 'unchanged' });
  }
  const unchanged = (step: HotplugStep, detail: string, cause?: unknown): HotplugError =>
    new HotplugError('UnplugFailed', step, leaseId, `${detail}; the limit was not lowered`, { limit: 'unchanged', cause });

  const deleted = qmp.expectEvent('DEVICE_DELETED', (data) => data['device'] === dimmId, request.eventTimeoutMs);
  try {
    await qmp.execute('device_del', { id: dimmId });
  } catch (error) {
    deleted.cancel();
    throw unchanged('device-del', why(error), error);
  }
  try {
    await deleted.event;
  } catch (error) {
    throw unchanged('device-deleted', `QEMU did not report ${dimmId} deleted (${why(error)}): the guest may not have ` +
      `released it yet; run unplug again once query-memory-devices no longer lists it`, error);
  }
  try {
    await qmp.execute('object-del', { id: backendId });
  } catch (error) {
    throw unchanged('object-del', `${dimmId} is gone but its backend ${backendId} was not deleted: ${why(error)}`, error);
  }
  let result: { lease: Lease; previousLimitBytes: number };
  try {
    result = await broker.resize(leaseId, lowered);
  } catch (error) {
    throw new HotplugError('UnplugFailed', 'lower', leaseId,
      `${dimmId} and ${backendId} are gone, but the broker did not lower the lease to ${formatSize(lowered)}: ${why(error)}`,
      { limit: 'raised', cause: error });
  }
  return { lease: result.lease, previousLimitBytes: result.previousLimitBytes, dimmId, backendId, sizeBytes: dimm.sizeBytes };
}
