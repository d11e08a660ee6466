// The failures of a QMP session (client/qmp.ts), by stable name.
//
// Invariants:
// - Each failure has an errorName callers switch on; the message names the socket and says
//   what happened (for QmpCommandFailed: the command and QEMU's own description).
// - Nothing here holds an fd.

export type QmpErrorName =
  /** connect() to the QMP socket failed. */
  | 'QmpUnreachable'
  /** QEMU answered a command with {"error": ...}. */
  | 'QmpCommandFailed'
  /** The socket ended or failed before the answer came. */
  | 'QmpConnectionLost'
  /** No answer within the timeout. */
  | 'QmpTimeout'
  /** An expected event did not come within its timeout (the connection stays usable). */
  | 'QmpEventTimeout'
  /** What came back is not QMP. */
  | 'QmpProtocolViolation';

export class QmpError extends Error {
  readonly errorName: QmpErrorName;
  readonly socketPath: string;
  /** QEMU's error class (e.g. GenericError) for QmpCommandFailed. */
  readonly qmpClass: string | undefined;
  constructor(errorName: QmpErrorName, socketPath: string, message: string, qmpClass?: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'QmpError';
    this.errorName = errorName;
    this.socketPath = socketPath;
    this.qmpClass = qmpClass;
  }
}
