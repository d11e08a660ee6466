// BrokerClient: the broker's methods, typed, over one BrokerConnection (broker-connection.ts,
// which orders calls and replies, bounds each call by a timeout, closes the fds no caller
// takes, and ends every pending call when the connection ends).
//
// Invariants:
// - fd ownership: the BrokerConnection belongs to this client until close(). The fds an Open
//   reply refers to (the iommufd and one per requested VFIO device) go to the caller of open().
//   An Open reply whose devices are not exactly the ones asked for, in order, is a
//   ProtocolViolation that ends the connection, and all its fds are closed. A caller's
//   targetPidFd is never taken: open() sends a dup of it.
// - Arguments are checked before anything is sent: a device that is not a PCI address, a bad
//   target fd or a bad timeout is refused at once and the connection stays usable.
// - list() never loops without progress: a next page that names no new cursor, or comes with
//   no leases, is a ProtocolViolation that ends the connection.
import { lstatSync } from 'node:fs';
import { UnixConnection } from '../native/socket.ts';
import { dupCloexec, SysError } from '../native/sys.ts';
import { BROKER_INTERFACE } from '../protocol/errors.ts';
import type { ParametersOf, ReplyOf } from '../protocol/method-table.ts';
import type { BrokerReply, Lease, Status } from '../protocol/methods.ts';
import { BrokerClientError, unreachableAdvice } from './errors.ts';
import { DEFAULT_SOCKET } from '../protocol/address.ts';
import { DEFAULT_CALL_TIMEOUT_MS } from './defaults.ts';
import { canonicalPciAddress } from '../shared/pci-address.ts';
import { BrokerConnection, checkTimeout, closeAll, type CallOptions } from './broker-connection.ts';

export type { CallOptions } from './broker-connection.ts';

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

function existsButNotSocket(path: string): boolean {
  try {
    return !lstatSync(path).isSocket();
  } catch {
    return false;
  }
}

/**
 * One connection to the broker. The open connection keeps Node's event loop alive (like a
 * net.Socket): close() it when done.
 */
export class BrokerClient {
  readonly socketPath: string;
  /** Owner of the connection (and through it of the socket), until close(). */
  readonly #conn: BrokerConnection;

  private constructor(socketPath: string, conn: BrokerConnection) {
    this.socketPath = socketPath;
    this.#conn = conn;
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
    return new BrokerClient(socketPath, new BrokerConnection(socketPath, conn, timeoutMs));
  }

  /** Whether the connection has ended (by close() or a failure); later calls reject at once. */
  get closed(): boolean {
    return this.#conn.closed;
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
    const reply = await this.#conn.call('io.iommufd.Broker.Open', parameters, fds, options);
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
      this.#conn.fail(error);
      throw error;
    }
    // decodeReply checked every index against the reply's fds.
    return { lease: reply.parameters.lease, fd: reply.fd, devices: listed.map((d) => ({ address: d.address, fd: reply.fds[d.fileDescriptor] as number })) };
  }

  /** Changes a lease's memory size (raise before hotplug, lower after unplug). */
  async resize(lease: string, memoryBytes: number, options: CallOptions = {}): Promise<BrokerReply<'Resize'>> {
    return (await this.#conn.call('io.iommufd.Broker.Resize', { lease, memoryBytes }, [], options)).parameters;
  }

  /** Ends a lease; the target's previous limit is restored when possible. */
  async release(lease: string, options: CallOptions = {}): Promise<BrokerReply<'Release'>> {
    return (await this.#conn.call('io.iommufd.Broker.Release', { lease }, [], options)).parameters;
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
        this.#conn.fail(error);
        throw error;
      }
      cursor = page.next;
    }
  }

  /** One page of List: at most `limit` leases after `cursor` (the `next` of the page before). */
  async listPage(page: ParametersOf<'io.iommufd.Broker.List'> = {}, options: CallOptions = {}): Promise<BrokerReply<'List'>> {
    return (await this.#conn.call('io.iommufd.Broker.List', page, [], options)).parameters;
  }

  async status(options: CallOptions = {}): Promise<Status> {
    return (await this.#conn.call('io.iommufd.Broker.Status', {}, [], options)).parameters;
  }

  async getInfo(options: CallOptions = {}): Promise<GetInfoReply> {
    return (await this.#conn.call('org.varlink.service.GetInfo', {}, [], options)).parameters;
  }

  /** The Varlink interface definition (`description`) of `iface` (default io.iommufd.Broker). */
  async getInterfaceDescription(iface: string = BROKER_INTERFACE, options: CallOptions = {}): Promise<{ description: string }> {
    return (await this.#conn.call('org.varlink.service.GetInterfaceDescription', { interface: iface }, [], options)).parameters;
  }

  /** Closes the connection; pending calls reject with ClientClosed. Idempotent. */
  close(): void {
    this.#conn.fail(new BrokerClientError('ClientClosed', this.socketPath, `the client's connection to ${this.socketPath} was closed by its owner`));
  }
}
