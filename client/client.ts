// BrokerClient: one Varlink connection to iommufd-broker, with typed, pipelined calls.
//
// Invariants:
// - Calls go out in the order they are made and replies are matched to them in that order
//   (Varlink answers in order, one reply per call: the client never asks for `more` or
//   `oneway`). Every reply is checked by protocol/reply.ts decodeReply against the registry
//   schemas before anyone sees it.
// - fd ownership: the socket belongs to the UnixConnection, which belongs to this client until
//   close(). An fd that arrives with a reply belongs to the FrameDecoder until its frame is
//   complete, then to decodeReply's result: the fds an Open reply refers to (the iommufd and
//   one per requested VFIO device) go to the caller of open(), every other fd is closed here,
//   as are fds held by the decoder when the connection ends. An Open reply whose devices are
//   not exactly the ones asked for, in order, is a ProtocolViolation and all its fds are closed. A caller's targetPidFd is never taken: open() sends a dup of it.
// - Every call is bounded by a timeout. A timeout, a protocol violation, a framing error, EOF,
//   or a socket error ends the connection: every pending call rejects (with a reason naming
//   what happened), and every later call rejects at once with the same failure.
// - Error replies reject as BrokerError (io.iommufd.Broker.*, same name and parameters as the
//   daemon's) or VarlinkServiceError (org.varlink.service.*); the connection stays usable.
import { lstatSync } from 'node:fs';
import { UnixConnection } from '../native/socket.ts';
import { closeFd, dupCloexec, SysError } from '../native/sys.ts';
import { BROKER_INTERFACE } from '../protocol/errors.ts';
import { FrameDecoder, FramingError, MAX_REPLY_FRAME_BYTES, type Frame } from '../protocol/framing.ts';
import type { ParametersOf, QualifiedMethod, ReplyOf } from '../protocol/method-table.ts';
import type { BrokerReply, Lease, Status } from '../protocol/methods.ts';
import { decodeReply, encodeCall } from '../protocol/reply.ts';
import { BrokerClientError, unreachableAdvice, VarlinkServiceError } from './errors.ts';
import { DEFAULT_SOCKET } from '../protocol/address.ts';
import { DEFAULT_CALL_TIMEOUT_MS, MAX_CALL_TIMEOUT_MS } from './defaults.ts';
import { canonicalPciAddress } from '../shared/pci-address.ts';

export interface CallOptions {
  /** Milliseconds to wait for the reply; on expiry the call rejects (Timeout) and the connection closes. */
  timeoutMs?: number;
}

export interface ConnectOptions {
  /** Default timeout of every call on this connection (DEFAULT_CALL_TIMEOUT_MS if absent). */
  timeoutMs?: number;
}

export interface OpenRequest {
  /** The VM's name (NAME_PATTERN). */
  name: string;
  /** The VM's RAM in bytes; the broker derives the RLIMIT_MEMLOCK from it. */
  memoryBytes: number;
  /**
   * A pidfd naming the target process (managers opening for the QEMU they started). Absent:
   * the target is the calling process. The caller keeps its fd; the client sends a dup.
   */
  targetPidFd?: number;
  /** Makes a retried Open idempotent (DuplicateRequest names the lease it made). */
  requestId?: string;
  /**
   * VFIO devices to open for the VM, by PCI address (`0000:00:03.0`, or `00:03.0` for domain
   * 0000; sent canonical). Their fds come back in `devices`.
   */
  devices?: readonly string[];
}

export interface OpenedLease {
  lease: Lease;
  /** The iommufd FD, close-on-exec; the caller owns it. */
  fd: number;
  /** One per requested VFIO device, in the order asked (canonical address); close-on-exec fds the caller owns. */
  devices: { address: string; fd: number }[];
}

export type GetInfoReply = ReplyOf<'org.varlink.service.GetInfo'>;

interface Accepted<Q extends QualifiedMethod> {
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

function closeAll(fds: readonly number[]): void {
  for (const fd of fds) closeFd(fd);
}

function existsButNotSocket(path: string): boolean {
  try {
    return !lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

function checkTimeout(ms: number): number {
  if (!Number.isInteger(ms) || ms < 1 || ms > MAX_CALL_TIMEOUT_MS) {
    throw new RangeError(`timeoutMs must be an integer in [1, ${MAX_CALL_TIMEOUT_MS}], got ${ms}`);
  }
  return ms;
}

/**
 * One connection to the broker. The open connection keeps Node's event loop alive (like a
 * net.Socket): close() it when done.
 */
export class BrokerClient {
  readonly socketPath: string;
  /** Owner of the socket (and of fds queued for sending). */
  readonly #conn: UnixConnection;
  /** Owner of reply fds until their frame is complete. */
  readonly #decoder = new FrameDecoder({ maxFrameBytes: MAX_REPLY_FRAME_BYTES });
  readonly #pending: PendingCall[] = [];
  readonly #timeoutMs: number;
  #failure: BrokerClientError | undefined;

  private constructor(socketPath: string, conn: UnixConnection, timeoutMs: number) {
    this.socketPath = socketPath;
    this.#conn = conn;
    this.#timeoutMs = timeoutMs;
    conn.on('data', (chunk: Buffer, fds: number[]) => this.#onData(chunk, fds));
    conn.on('end', () => this.#fail(this.#lost('the broker closed the connection')));
    conn.on('error', (err: Error) => {
      const errno = err instanceof SysError ? err.code : undefined;
      this.#fail(new BrokerClientError('ConnectionLost', this.socketPath,
        `the connection to the broker at ${this.socketPath} failed: ${err.message}`, { ...(errno === undefined ? {} : { errno }), cause: err }));
    });
  }

  /** Connects to the broker. Rejects with BrokerClientError BrokerUnreachable saying what to check. */
  static async connect(socketPath: string = DEFAULT_SOCKET, options: ConnectOptions = {}): Promise<BrokerClient> {
    const timeoutMs = checkTimeout(options.timeoutMs ?? DEFAULT_CALL_TIMEOUT_MS);
    let conn: UnixConnection;
    try {
      conn = UnixConnection.connect(socketPath);
    } catch (err) {
      if (!(err instanceof SysError)) throw err;
      const advice = unreachableAdvice(socketPath, err.code, err.code === 'ECONNREFUSED' && existsButNotSocket(socketPath));
      throw new BrokerClientError('BrokerUnreachable', socketPath, advice, { errno: err.code, cause: err });
    }
    return new BrokerClient(socketPath, conn, timeoutMs);
  }

  /** Whether the connection has ended (by close() or a failure); later calls reject at once. */
  get closed(): boolean {
    return this.#failure !== undefined;
  }

  /** Asks for an iommufd FD and a lease limiting the target's RLIMIT_MEMLOCK to the VM's size. */
  async open(request: OpenRequest, options: CallOptions = {}): Promise<OpenedLease> {
    const devices = (request.devices ?? []).map((typed) => {
      const address = canonicalPciAddress(typed);
      if (address === undefined) throw new TypeError(`not a PCI address: ${JSON.stringify(typed)} (DDDD:BB:DD.F or BB:DD.F)`);
      return address;
    });
    const fds: number[] = [];
    if (request.targetPidFd !== undefined) {
      if (!Number.isInteger(request.targetPidFd) || request.targetPidFd < 0) {
        throw new TypeError(`targetPidFd must be an fd number, got ${request.targetPidFd}`);
      }
      fds.push(dupCloexec(request.targetPidFd));
    }
    const parameters: ParametersOf<'io.iommufd.Broker.Open'> = {
      name: request.name,
      memoryBytes: request.memoryBytes,
      ...(fds.length > 0 ? { targetPidFileDescriptor: 0 } : {}),
      ...(request.requestId === undefined ? {} : { requestId: request.requestId }),
      ...(devices.length === 0 ? {} : { devices }),
    };
    const reply = await this.#call('io.iommufd.Broker.Open', parameters, fds, options);
    const listed = reply.parameters.devices ?? [];
    const violation = reply.fd === undefined
      // decodeReply refuses an Open reply without its fd; this guards the type only.
      ? 'the Open reply carried no file descriptor'
      : listed.length !== devices.length || listed.some((d, i) => d.address !== devices[i])
        ? `the Open reply's devices (${listed.map((d) => d.address).join(', ') || 'none'}) are not the ones asked for (${devices.join(', ') || 'none'})`
        : undefined;
    if (violation !== undefined || reply.fd === undefined) {
      closeAll(reply.fds);
      const error = new BrokerClientError('ProtocolViolation', this.socketPath, violation ?? '');
      this.#fail(error);
      throw error;
    }
    // decodeReply checked every index against the reply's fds.
    return { lease: reply.parameters.lease, fd: reply.fd, devices: listed.map((d) => ({ address: d.address, fd: reply.fds[d.fileDescriptor] as number })) };
  }

  /** Changes a lease's memory size (raise before hotplug, lower after unplug). */
  async resize(lease: string, memoryBytes: number, options: CallOptions = {}): Promise<BrokerReply<'Resize'>> {
    return (await this.#call('io.iommufd.Broker.Resize', { lease, memoryBytes }, [], options)).parameters;
  }

  /** Ends a lease; the target's previous limit is restored when possible. */
  async release(lease: string, options: CallOptions = {}): Promise<BrokerReply<'Release'>> {
    return (await this.#call('io.iommufd.Broker.Release', { lease }, [], options)).parameters;
  }

  /**
   * Every lease this caller may see, oldest first: follows List's `next` page by page (each
   * page its own call, with its own timeout). A broker that hands back a cursor without
   * progress (an empty page, or the same cursor twice) is a ProtocolViolation, not a loop.
   */
  async list(options: CallOptions = {}): Promise<{ leases: Lease[] }> {
    const leases: Lease[] = [];
    let cursor: string | undefined;
    for (;;) {
      const page = await this.listPage(cursor === undefined ? {} : { cursor }, options);
      leases.push(...page.leases);
      if (page.next === undefined) return { leases };
      if (page.leases.length === 0 || page.next === cursor) {
        const error = new BrokerClientError('ProtocolViolation', this.socketPath,
          `the broker's List reply names a next page but makes no progress (${page.leases.length} leases, cursor ${JSON.stringify(page.next)})`);
        this.#fail(error);
        throw error;
      }
      cursor = page.next;
    }
  }

  /** One page of List: at most `limit` leases after `cursor` (the `next` of the page before). */
  async listPage(page: ParametersOf<'io.iommufd.Broker.List'> = {}, options: CallOptions = {}): Promise<BrokerReply<'List'>> {
    return (await this.#call('io.iommufd.Broker.List', page, [], options)).parameters;
  }

  async status(options: CallOptions = {}): Promise<Status> {
    return (await this.#call('io.iommufd.Broker.Status', {}, [], options)).parameters;
  }

  async getInfo(options: CallOptions = {}): Promise<GetInfoReply> {
    return (await this.#call('org.varlink.service.GetInfo', {}, [], options)).parameters;
  }

  /** The Varlink interface definition (`description`) of `iface` (default io.iommufd.Broker). */
  async getInterfaceDescription(iface: string = BROKER_INTERFACE, options: CallOptions = {}): Promise<{ description: string }> {
    return (await this.#call('org.varlink.service.GetInterfaceDescription', { interface: iface }, [], options)).parameters;
  }

  /** Closes the connection; pending calls reject with ClientClosed. Idempotent. */
  close(): void {
    this.#fail(new BrokerClientError('ClientClosed', this.socketPath, `the client's connection to ${this.socketPath} was closed by its owner`));
  }

  /** Sends one call; `fds` belong to the client from here on (sent, or closed). */
  #call<Q extends QualifiedMethod>(method: Q, parameters: ParametersOf<Q>, fds: number[], options: CallOptions): Promise<Accepted<Q>> {
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
              this.#fail(error);
            }
          }
        },
        timer: setTimeout(() => this.#timedOut(pending, timeoutMs), timeoutMs),
      };
      this.#pending.push(pending);
      // false: the socket already closed under us (its 'error'/'end' may not have arrived yet).
      if (!this.#conn.send(bytes, fds)) this.#fail(this.#lost(`the connection closed before ${method} could be sent`));
    });
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
      this.#fail(new BrokerClientError('ProtocolViolation', this.socketPath, `the broker's byte stream is not valid Varlink: ${err.message}`, { cause: err }));
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
        this.#fail(new BrokerClientError('ProtocolViolation', this.socketPath, 'the broker sent a reply to no call'));
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
    this.#fail(this.#lost(`the connection was closed because ${what}`));
  }

  #lost(reason: string): BrokerClientError {
    return new BrokerClientError('ConnectionLost', this.socketPath, `${reason} (socket ${this.socketPath})`);
  }

  /** Ends the connection once: the socket, held fds, and every pending call. */
  #fail(error: BrokerClientError): void {
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
}
