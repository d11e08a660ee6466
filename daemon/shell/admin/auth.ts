// Who is calling the admin API, and whether they may.
//
// Invariants:
// - Identity comes from the kernel: SO_PEERCRED and SO_PEERGROUPS of the connection, read once,
//   when the server accepts it and before any byte of a request is parsed; never from headers,
//   the body or /proc (a reused pid could lend its groups).
// - The decision is taken per request against the *current* policy, so a reload that drops a
//   manager shuts them out on connections they already hold open.
// - "Admins" are the policy's managers (isManager): the uids and groups that may already
//   Resize and Release any lease over Varlink. The admin API grants nothing more. Observers
//   (isObserver: e.g. a metrics scraper) pass for requests that read (GET, HEAD) only.
// - A connection whose credentials cannot be read is destroyed unanswered.
// - fds: a connection's fd belongs to Node's net.Socket; it is only read (getsockopt), never
//   kept or closed here. Admin peers carry no pidfd (the admin API never opens a lease).
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { BrokerError } from '../../../protocol/errors.ts';
import { describePeer, isManager, isObserver, type Policy } from '../../core/policy.ts';
import { credentialsOf, type ConnectionPeer } from '../peer.ts';

/** The fd under a Unix-socket net.Socket (libuv's pipe handle), or undefined if it has none. */
export function socketFd(socket: Socket): number | undefined {
  const handle: unknown = Reflect.get(socket, '_handle');
  if (typeof handle !== 'object' || handle === null) return undefined;
  const fd: unknown = Reflect.get(handle, 'fd');
  return typeof fd === 'number' && Number.isInteger(fd) && fd >= 0 ? fd : undefined;
}

/** SO_PEERCRED and SO_PEERGROUPS of a connected socket (never /proc: a pid can be reused). */
export function readSocketPeer(fd: number): ConnectionPeer {
  return credentialsOf(fd);
}

/** Remembers each accepted connection's peer, for as long as the connection object lives. */
export class ConnectionPeers {
  readonly #peers = new WeakMap<Socket, ConnectionPeer>();

  constructor(private readonly log: Logger) {}

  /** For the server's 'connection' event: reads the peer, or destroys the connection. */
  accept(socket: Socket): void {
    const fd = socketFd(socket);
    try {
      if (fd === undefined) throw new Error('the connection has no file descriptor to read credentials from');
      this.#peers.set(socket, readSocketPeer(fd));
    } catch (err) {
      this.log.warn({ err }, 'admin API: dropping a connection whose peer could not be identified');
      socket.destroy();
    }
  }

  peerOf(socket: Socket): ConnectionPeer | undefined {
    return this.#peers.get(socket);
  }
}

/** undefined if the peer may use the admin API under `policy`, else the refusal to send. */
export function adminRefusal(policy: Readonly<Policy>, peer: ConnectionPeer | undefined, method: string): BrokerError<'PermissionDenied'> | undefined {
  if (peer === undefined) {
    return new BrokerError('PermissionDenied', { rule: 'admin-peer', reason: 'the caller could not be identified (no peer credentials)' });
  }
  if (isManager(policy, peer)) return undefined;
  const reads = method === 'GET' || method === 'HEAD';
  if (isObserver(policy, peer)) {
    if (reads) return undefined;
    return new BrokerError('PermissionDenied', {
      rule: 'admin-observers-read-only',
      reason: `${describePeer(peer)} is an observer: it may read the admin API (GET), only managers may change anything (managers.users, managers.groups)`,
    });
  }
  return new BrokerError('PermissionDenied', {
    rule: 'admin-managers',
    reason: `${describePeer(peer)} is neither a manager nor an observer: the admin API is for the policy's managers, and read-only for its observers (managers.*, observers.*)`,
  });
}
