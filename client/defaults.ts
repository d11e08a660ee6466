// Where the broker listens and how long a call may wait, unless the caller says otherwise.
// Shared by the client library and the CLI; constants only (no I/O, no fds).
//
// Invariants:
// - DEFAULT_SOCKET matches the daemon's default listen path and systemd/iommufd-broker.socket.
// - Every wait the client does is bounded: DEFAULT_CALL_TIMEOUT_MS applies when no timeout is
//   given, and MAX_CALL_TIMEOUT_MS is the largest a timer can hold (setTimeout's 2^31-1 ms).

export const DEFAULT_SOCKET = '/run/iommufd-broker/broker.sock';
export const DEFAULT_CALL_TIMEOUT_MS = 30_000;
export const MAX_CALL_TIMEOUT_MS = 2 ** 31 - 1;
