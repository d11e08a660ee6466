// How long a call may wait, unless the caller says otherwise. Shared by the client library and
// the CLI; constants only (no I/O, no fds). Where the broker listens by default is
// protocol/address.ts's DEFAULT_SOCKET (one spelling for the daemon, the client and systemd).
//
// Invariants:
// - Every wait the client does is bounded: DEFAULT_CALL_TIMEOUT_MS applies when no timeout is
//   given, and MAX_CALL_TIMEOUT_MS is the largest a timer can hold (setTimeout's 2^31-1 ms).

export const DEFAULT_CALL_TIMEOUT_MS = 30_000;
export const MAX_CALL_TIMEOUT_MS = 2 ** 31 - 1;
