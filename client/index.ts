// The client library's public face: what managers and tests import.
//
// Invariants:
// - Only re-exports; the modules named here hold the behaviour and state their own invariants.
// - Everything a caller needs to handle a failure is exported: BrokerError (the broker refused),
//   VarlinkServiceError (protocol-level refusal), BrokerClientError (unreachable, lost,
//   timed out, protocol violation, closed), QmpError, HotplugError (which step of a hotplug or
//   unplug failed, what was undone, where the limit is), SizingError.
export { BrokerClient, type CallOptions, type ConnectOptions, type GetInfoReply, type OpenedLease, type OpenRequest } from './client.ts';
export { BrokerClientError, VarlinkServiceError, type ClientErrorName } from './errors.ts';
export { DEFAULT_CALL_TIMEOUT_MS } from './defaults.ts';
export { DEFAULT_SOCKET } from '../protocol/address.ts';
export { QmpClient, QmpError, type EventWait, type QmpErrorName, type QmpEvent, type QmpGreeting } from './qmp.ts';
export {
  hotplugMemory, unplugMemory, type HotplugBroker, type HotplugQmp, type HotplugRequest, type MemoryChange, type UnplugRequest,
} from './memory-hotplug.ts';
export { HotplugError, type HotplugErrorName, type HotplugStep, type LimitState } from './memory-hotplug-error.ts';
export { estimatePinned, measurePinned, PINNED_MARGIN_BYTES, SizingError, type PinnedEstimate, type PinnedRegion } from './qmp-sizing.ts';
export { BrokerError, type BrokerErrorName, type BrokerErrorParameters } from '../protocol/errors.ts';
export type { Lease, Status } from '../protocol/methods.ts';
export { formatSize, parseSize } from '../shared/sizes.ts';
export { canonicalPciAddress } from '../shared/pci-address.ts';
