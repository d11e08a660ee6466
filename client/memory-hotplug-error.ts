// The failure of a memory hotplug or unplug (client/memory-hotplug.ts): which step failed, why
// (QEMU's or the broker's own words, kept as `cause`), what was undone, and where the limit is.
//
// Invariants:
// - errorName is stable (HotplugFailed, UnplugFailed); `step` names the step that failed, in the
//   words of the step machine (the HotplugStep names below), never a QMP internals guess.
// - `limit` says what the caller must know for the VM's safety: 'unchanged' (never raised, or
//   lowered back), 'raised' (left raised on purpose, because lowering could kill the VM or the
//   lowering failed), or 'lowered' (unplug: the DIMM was released and the limit was lowered).
// - Nothing here holds an fd.

export type HotplugStep =
  /** Reading the lease (List) or QEMU's memory devices (query-memory-devices). */
  | 'lookup'
  /** Resize up, before anything is plugged. */
  | 'raise'
  /** QMP object-add of the memory backend. */
  | 'object-add'
  /** QMP device_add of the pc-dimm. */
  | 'device-add'
  /** QMP device_del of the pc-dimm. */
  | 'device-del'
  /** Waiting for QEMU's DEVICE_DELETED event (the guest releasing the DIMM). */
  | 'device-deleted'
  /** QMP object-del of the memory backend. */
  | 'object-del'
  /** Resize down, after the DIMM is gone. */
  | 'lower';

export type HotplugErrorName = 'HotplugFailed' | 'UnplugFailed';

export type LimitState = 'unchanged' | 'raised' | 'lowered';

export class HotplugError extends Error {
  readonly errorName: HotplugErrorName;
  readonly step: HotplugStep;
  readonly lease: string;
  readonly limit: LimitState;
  /** What was undone after the failure, in order (e.g. "object-del dimm-0-mem"). */
  readonly undone: readonly string[];
  /** Undo steps that failed too, each with its reason: the operator must finish them. */
  readonly undoFailures: readonly string[];
  constructor(errorName: HotplugErrorName, step: HotplugStep, lease: string, detail: string,
    outcome: { limit: LimitState; undone?: readonly string[]; undoFailures?: readonly string[]; cause?: unknown }) {
    super(`${errorName} at step ${step} (lease ${lease}): ${detail}`, outcome.cause === undefined ? undefined : { cause: outcome.cause });
    this.name = 'HotplugError';
    this.errorName = errorName;
    this.step = step;
    this.lease = lease;
    this.limit = outcome.limit;
    this.undone = outcome.undone ?? [];
    this.undoFailures = outcome.undoFailures ?? [];
  }
}
