// The client library's public face: what managers and tests import.
//
// Invariants:
// - Only re-exports; the modules named here hold the behaviour and state their own invariants.
// - Everything a caller needs to handle a failure is exported: BrokerError (the broker refused),
//   VarlinkServiceError (protocol-level refusal), BrokerClientError (unreachable, lost,
//   timed out, protocol violation, closed), QmpError.
export { BrokerClient, type CallOptions, type ConnectOptions, type GetInfoReply, type OpenedLease, type OpenRequest } from './client.ts';
export { BrokerClientError, VarlinkServiceError, type ClientErrorName } from './client-errors.ts';
export { DEFAULT_CALL_TIMEOUT_MS, DEFAULT_SOCKET } from './defaults.ts';
export { QmpClient, QmpError, type QmpErrorName, type QmpGreeting } from './qmp.ts';
export { BrokerError, type BrokerErrorName, type BrokerErrorParameters } from '../protocol/errors.ts';
export type { Lease, Status } from '../protocol/methods.ts';
export { formatSize, parseSize } from '../protocol/sizes.ts';
