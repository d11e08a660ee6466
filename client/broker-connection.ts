// BrokerConnection: one Varlink connection to iommufd-broker, carrying pipelined calls. The
// typed methods on top of it are BrokerClient's (client.ts).
//
// Invariants:
// - Calls go out in the order they are made and replies are matched to them in that order
//   (Varlink answers in order, one reply per call: the client never asks for `more` or
//   `oneway`). Every reply is checked by protocol/reply.ts decodeReply against the registry
//   schemas before anyone sees it.
// - fd ownership: the socket belongs to the UnixConnection, which belongs to this connection
//   until fail()/close. fds handed to call() belong to the connection from then on (sent, or
//   closed). An fd that arrives with a reply belongs to the FrameDecoder until its frame is
//   complete, then to decodeReply's result: the fds a reply refers to go to the caller of
//   call(), every other fd (those of error replies, invalid replies, replies to no call, or
//   after the end) is closed here, as are fds held by the decoder when the connection ends.
// - Every call is bounded by a timeout. A timeout, a protocol violation, a framing error, EOF,
//   or a socket error ends the connection: every pending call rejects (with a reason naming
//   what happened), and every later call rejects at once with the same failure.
// - Error replies reject as BrokerError (io.iommufd.Broker.*, same name and parameters as the
//   daemon's) or VarlinkServiceError (org.varlink.service.*); the connection stays usable.
import type { UnixConnection } from '../native/socket.ts';
import { closeFd, SysError } from '../native/sys.ts';
import { FrameDecoder, FramingError, MAX_REPLY_FRAME_BYTES, type Frame } from '../protocol/framing.ts';
import type { ParametersOf, QualifiedMethod, ReplyOf } from '../protocol/method-table.ts';
import { decodeReply, encodeCall } from '../protocol/reply.ts';
import { BrokerClientError, VarlinkServiceError } from './errors.ts';
import { MAX_CALL_TIMEOUT_MS } from './defaults.ts';

export interface CallOptions {
  /** Milliseconds to wait for the reply; on expiry the call rejects (Timeout) and the connection closes. */
  timeoutMs?: number;
}

/** A reply that passed decodeReply. */
export interface Accepted<Q extends QualifiedMethod> {
  parameters: ReplyOf<Q>;
  fd: number | undefined;
  /** Every fd of the reply, by index (`fd` among them): the caller's. */
  fds: number[];
}

interface PendingCall {
  method: QualifiedMethod;
  /** Takes ownership of the frame's fds and settles the call. */
  settle: (frame: Frame) => void;
  reject: (error: Error) => void;
  timer: NodeJS.Timeout;
}

export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) closeFd(fd);
}

/** A call timeout as given, or a RangeError. */
export function checkTimeout(ms: number): number {
  if (!Number.isInteger(ms) || ms < 1 || ms > MAX_CALL_TIMEOUT_MS) {
    throw new RangeError(`timeoutMs must be an integer in [1, ${MAX_CALL_TIMEOUT_MS}], got ${ms}`);
  }
  return ms;
}

export class BrokerConnection {
  readonly socketPath: string;
  /** Owner of the socket (and of fds queued for sending). */
  readonly #conn: UnixConnection;
  /** Owner of reply fds until their frame is complete. */
  readonly #decoder = new FrameDecoder({ maxFrameBytes: MAX_REPLY_FRAME_BYTES });
  readonly #pending: PendingCall[] = [];
  readonly #timeoutMs: number;
  #failure: BrokerClientError | undefined;

  /** Takes ownership of `conn`; `timeoutMs` (checked) is the default of every call. */
  constructor(socketPath: string, conn: UnixConnection, timeoutMs: number) {
    this.socketPath = socketPath;
    this.#conn = conn;
    this.#timeoutMs = timeoutMs;
    conn.on('data', (chunk: Buffer, fds: number[]) => this.#onData(chunk, fds));
    conn.on('end', () => this.fail(this.#lost('the broker closed the connection')));
    conn.on('error', (err: Error) => {
      const errno = err instanceof SysError ? err.code : undefined;
      this.fail(new BrokerClientError('ConnectionLost', this.socketPath,
        `the connection to the broker at ${this.socketPath} failed: ${err.message}`, { ...(errno === undefined ? {} : { errno }), cause: err }));
    });
  }

  /** Whether the connection has ended (by close() or a failure); later calls reject at once. */
  get closed(): boolean {
    return this.#failure !== undefined;
  }

  /** Sends one call; `fds` belong to the connection from here on (sent, or closed). */
  call<Q extends QualifiedMethod>(method: Q, parameters: ParametersOf<Q>, fds: number[], options: CallOptions): Promise<Accepted<Q>> {
    let bytes: Buffer;
    let timeoutMs: number;
    try {
      if (this.#failure !== undefined) throw this.#failure;
      timeoutMs = checkTimeout(options.timeoutMs ?? this.#timeoutMs);
      bytes = encodeCall(method, parameters);
    } catch (err) {
      closeAll(fds);
      return Promise.reject(err instanceof Error ? err : new Error(String(err)));
    }
    return new Promise<Accepted<Q>>((resolve, reject) => {
      const pending: PendingCall = {
        method,
        reject,
        settle: (frame) => {
          const decoded = decodeReply(frame, method);
          switch (decoded.kind) {
            case 'reply':
              resolve({ parameters: decoded.parameters, fd: decoded.fd, fds: decoded.fds });
              return;
            case 'broker-error':
              closeAll(decoded.fdsToClose);
              reject(decoded.error);
              return;
            case 'service-error':
              closeAll(decoded.fdsToClose);
              reject(new VarlinkServiceError(decoded.name, decoded.parameters));
              return;
            case 'invalid': {
              closeAll(decoded.fdsToClose);
              const error = new BrokerClientError('ProtocolViolation', this.socketPath,
                `the broker's reply to ${method} is not valid: ${decoded.reason}`);
              reject(error);
              this.fail(error);
            }
          }
        },
        timer: setTimeout(() => this.#timedOut(pending, timeoutMs), timeoutMs),
      };
      this.#pending.push(pending);
      // false: the socket already closed under us (its 'error'/'end' may not have arrived yet).
      if (!this.#conn.send(bytes, fds)) this.fail(this.#lost(`the connection closed before ${method} could be sent`));
    });
  }

  /** Ends the connection once: the socket, held fds, and every pending call. */
  fail(error: BrokerClientError): void {
    if (this.#failure !== undefined) return;
    this.#failure = error;
    this.#conn.close();
    closeAll(this.#decoder.takeHeldFds());
    for (const pending of this.#pending.splice(0)) {
      clearTimeout(pending.timer);
      pending.reject(error.errorName === 'ClientClosed' || error.errorName === 'ConnectionLost' ? error
        : new BrokerClientError('ConnectionLost', this.socketPath, `${pending.method} was not answered: ${error.message}`, { cause: error }));
    }
  }

  #onData(chunk: Buffer, fds: number[]): void {
    if (this.#failure !== undefined) {
      closeAll(fds);
      return;
    }
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk, fds);
    } catch (err) {
      if (!(err instanceof FramingError)) throw err;
      this.fail(new BrokerClientError('ProtocolViolation', this.socketPath, `the broker's byte stream is not valid Varlink: ${err.message}`, { cause: err }));
      return;
    }
    for (const frame of frames) {
      if (this.#failure !== undefined) {
        closeAll(frame.fds);
        continue;
      }
      const pending = this.#pending.shift();
      if (pending === undefined) {
        closeAll(frame.fds);
        this.fail(new BrokerClientError('ProtocolViolation', this.socketPath, 'the broker sent a reply to no call'));
        continue;
      }
      clearTimeout(pending.timer);
      pending.settle(frame);
    }
  }

  #timedOut(pending: PendingCall, timeoutMs: number): void {
    const index = this.#pending.indexOf(pending);
    if (index === -1) return;
    this.#pending.splice(index, 1);
    const what = `${pending.method} got no reply from the broker at ${this.socketPath} within ${timeoutMs} ms`;
    pending.reject(new BrokerClientError('Timeout', this.socketPath, `${what}; the connection was closed`));
    this.fail(this.#lost(`the connection was closed because ${what}`));
  }

  #lost(reason: string): BrokerClientError {
    return new BrokerClientError('ConnectionLost', this.socketPath, `${reason} (socket ${this.socketPath})`);
  }
}
