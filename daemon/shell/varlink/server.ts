// Varlink over Unix stream sockets: listening, admission of new connections, and shutdown.
// What happens on one connection (framing, calls in order, back-pressure) is connection.ts.
//
// Invariants:
// - Peer identity is read once per connection, at accept (SO_PEERCRED, SO_PEERGROUPS,
//   SO_PEERPIDFD; see peer.ts); a peer that cannot be identified is dropped.
// - Admission bounds what clients can hold: maxConnections in all, maxConnectionsPerUid per
//   uid, and reservedConnections of them only for peers that mayUseReserve (managers, root),
//   so clients can never lock managers out. A refused socket and its pidfd are closed at once.
// - From accept on, closing a peer's fds and socket is charged to its uid; a uid over its quota
//   of pending closes (close-quota.ts) gets no new connection.
// - close() stops accepting, lets in-flight calls finish, then closes every connection.
import type { Logger } from 'pino';
import { closeFd } from '../../../native/sys.ts';
import type { UnixConnection, UnixServer } from '../../../native/socket.ts';
import { readPeer, type ConnectionPeer } from '../peer.ts';
import { closesPending } from './close-quota.ts';
import { Connection, type CallHandler, type Refusal } from './connection.ts';

export interface ServerEvents {
  /** Told of every refusal (e.g. to count it in /metrics); must not throw. */
  refused?: (refusal: Refusal) => void;
  /**
   * Whether a peer may use the reserved connections (managers and root), judged once at accept
   * with the kernel's identity of the peer; must not throw. Absent: nobody may.
   */
  mayUseReserve?: (peer: ConnectionPeer) => boolean;
}

export interface ServerLimits {
  /** Most connections at once, all peers together. */
  maxConnections: number;
  /** Most connections one uid may hold at once (managers and root too). */
  maxConnectionsPerUid: number;
  /**
   * Of maxConnections, how many only peers that mayUseReserve can take: everyone else together
   * holds at most maxConnections - reservedConnections, so clients can never lock managers out.
   */
  reservedConnections: number;
  /** A connection that sends nothing for this long, with no call in flight, is closed (0: never). */
  idleTimeoutMs: number;
  /**
   * A message whose first byte arrived this long ago and that is still unfinished closes its
   * connection, however many bytes keep trickling in (0: never). Not counted while the server
   * itself has stopped reading (back-pressure).
   */
  frameTimeoutMs: number;
  /** A uid with this many closes pending gets no fds and no connections in (close-quota.ts). */
  maxPendingClosesPerUid: number;
  /** The same for all uids together: then every uid with a close pending is refused so. */
  maxPendingCloses: number;
}

export class VarlinkServer {
  readonly #listeners: UnixServer[] = [];
  readonly #connections = new Set<Connection>();
  #closing = false;

  constructor(private readonly handle: CallHandler, private readonly log: Logger,
    private readonly limits: ServerLimits, private readonly events: ServerEvents = {}) {}

  /** Starts serving on a listening socket; the server takes ownership of it. */
  serve(listener: UnixServer): void {
    this.#listeners.push(listener);
    listener.on('connection', (conn: UnixConnection) => this.#accept(conn));
    listener.on('error', (err: Error) => this.log.error({ err }, 'listening socket failed'));
  }

  #closeQuota(): { perUid: number; total: number } {
    return { perUid: this.limits.maxPendingClosesPerUid, total: this.limits.maxPendingCloses };
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /** Stops accepting, lets in-flight calls finish, then closes every connection. */
  async close(): Promise<void> {
    this.#closing = true;
    for (const l of this.#listeners) l.close();
    await Promise.all([...this.#connections].map((c) => c.drainAndClose()));
  }

  #accept(socket: UnixConnection): void {
    if (this.#closing) { socket.close(); return; }
    let peer: ConnectionPeer;
    try {
      peer = readPeer(socket, this.log);
    } catch (err) {
      this.log.warn({ err }, 'dropping a connection whose peer could not be identified');
      this.events.refused?.({ stage: 'connection', reason: 'unidentified-peer' });
      socket.close();
      return;
    }
    socket.chargeClosesTo(peer.uid); // from here on its fds and its socket are the peer's closes
    const refusal = this.#admission(peer);
    if (refusal !== undefined) {
      const { maxConnections, maxConnectionsPerUid, reservedConnections } = this.limits;
      this.log.warn({ audit: 'deny', action: 'connect', peer: { uid: peer.uid, pid: peer.pid }, ...refusal.counts,
        maxConnections, maxConnectionsPerUid, reservedConnections }, refusal.message);
      this.events.refused?.({ stage: 'connection', reason: refusal.reason });
      if (peer.pidfd !== undefined) closeFd(peer.pidfd);
      socket.close();
      return;
    }
    const conn = new Connection({
      socket, peer, handle: this.handle, log: this.log, limits: this.limits,
      onClose: () => this.#connections.delete(conn), onRefused: (r) => this.events.refused?.(r),
    });
    this.#connections.add(conn);
  }

  /** Why this peer may not have another connection now, or undefined if it may. */
  #admission(peer: ConnectionPeer): { reason: 'too-many-connections' | 'reserved-for-managers' | 'closes-pending'; message: string; counts: Record<string, number> } | undefined {
    const closing = closesPending(peer.uid, this.#closeQuota());
    if (closing !== undefined) {
      return { reason: 'closes-pending', message: `connection refused: ${closing.parameters.reason}`,
        counts: { pendingCloses: closing.parameters.pendingCloses } };
    }
    const total = this.#connections.size;
    const sameUid = [...this.#connections].filter((c) => c.peer.uid === peer.uid).length;
    const counts = { total, sameUid };
    if (total >= this.limits.maxConnections || sameUid >= this.limits.maxConnectionsPerUid) {
      return { reason: 'too-many-connections', message: 'connection refused: too many connections', counts };
    }
    if (total >= this.limits.maxConnections - this.limits.reservedConnections && this.events.mayUseReserve?.(peer) !== true) {
      return { reason: 'reserved-for-managers', message: 'connection refused: the remaining connections are reserved for managers', counts };
    }
    return undefined;
  }
}
