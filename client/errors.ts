// Failures the client reports besides the broker's own refusals (BrokerError, from
// protocol/errors.ts): the broker could not be reached, the connection broke, a call timed
// out, the peer broke the protocol, or an org.varlink.service error came back.
//
// Invariants:
// - Each failure has a stable `errorName` callers switch on; the message says why and, for
//   connection problems, which socket and what to check. An errno appears only by its
//   symbolic name (e.g. ENOENT), never as a number.
// - Nothing here holds an fd.

export type ClientErrorName =
  /** connect() to the broker's socket failed. */
  | 'BrokerUnreachable'
  /** The connection ended or failed while calls were pending. */
  | 'ConnectionLost'
  /** A call got no reply within its timeout; the connection was closed. */
  | 'Timeout'
  /** The peer sent something that is not a valid reply to what we asked. */
  | 'ProtocolViolation'
  /** The call was made after close(). */
  | 'ClientClosed';

export class BrokerClientError extends Error {
  readonly errorName: ClientErrorName;
  readonly socketPath: string;
  /** Symbolic errno when an OS call failed (e.g. 'ENOENT'). */
  readonly errno: string | undefined;
  constructor(errorName: ClientErrorName, socketPath: string, message: string, options?: { errno?: string; cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'BrokerClientError';
    this.errorName = errorName;
    this.socketPath = socketPath;
    this.errno = options?.errno;
  }
}

// One class for org.varlink.service.* errors, shared with the daemon (protocol/errors.ts).
export { VarlinkServiceError } from '../protocol/errors.ts';

/**
 * What to check for each connect() errno, in words an operator can act on. `notASocket`: the
 * path exists but is no socket (connect() says ECONNREFUSED for that too).
 */
export function unreachableAdvice(socketPath: string, errno: string, notASocket = false): string {
  if (notASocket) return `${socketPath} exists but is not a socket (${errno}): check --socket`;
  switch (errno) {
    case 'ENOENT':
      return `no socket at ${socketPath}: is iommufd-broker running (systemctl status iommufd-broker.socket)? ` +
        'Use --socket if it listens elsewhere.';
    case 'ECONNREFUSED':
      return `nothing is accepting on ${socketPath}: the socket file exists but the broker is not listening (stale socket, or the daemon stopped)`;
    case 'EACCES':
    case 'EPERM':
      return `not allowed to connect to ${socketPath} (${errno}): check the socket's mode and group, and that this user is in the broker's client group`;
    case 'EAGAIN':
      return `the broker at ${socketPath} is not accepting connections fast enough (listen backlog full); retry`;
    case 'ENAMETOOLONG':
      return `the socket path ${socketPath} is too long for a Unix socket (108 bytes)`;
    default:
      return `cannot connect to ${socketPath}: ${errno}`;
  }
}
