// One Varlink connection: its framing, its queue of calls (answered in order), its timers and
// back-pressure, and how it closes.
//
// Invariants:
// - Every frame passes protocol/decode.ts `decodeCall` before any handler sees it; a fatal
//   rejection (bad UTF-8/JSON/envelope, oversized frame, too many fds) closes this connection
//   only, after closing every fd it carried.
// - Calls are answered in order (Varlink pipelining); the next call is decoded only after the
//   previous reply was queued.
// - fd ownership: fds that arrive belong to the decoder until decodeCall hands them to a call;
//   the call's handler owns what it uses; `unusedFds`/`fdsToClose` are closed here. Reply fds
//   are handed to UnixConnection.send, which closes them once sent. The socket and the peer's
//   pidfd are owned by the connection from accept on and closed with it.
// - Nothing a client sent is closed on the event loop (closeOffLoop: its last close may block
//   as long as the client likes); only fds the daemon made itself are closed here directly.
//   Those closes are charged to the peer's uid; a call of a uid over its quota of pending closes
//   (close-quota.ts) that carries fds is answered ClosesPending and its connection closed.
// - What a never-reading client costs is bounded: MAX_QUEUED_CALLS decoded calls and
//   SEND_HIGH_WATER_BYTES of replies, past which this socket is not read.
// - No reply can take the daemon down: replies are encoded by reply-encoding.ts (InternalError
//   if one cannot be); any other failure closes this connection only (#pump never rejects).
import type { Logger } from 'pino';
import { FrameDecoder, FramingError, type Frame } from '../../../protocol/framing.ts';
import { decodeCall, framingRejection, type DecodedCall, type Rejection } from '../../../protocol/decode.ts';
import { encodeBrokerError, encodeRejection, encodeReply } from '../../../protocol/encode.ts';
import { closeFd, closeOffLoop } from '../../../native/sys.ts';
import type { UnixConnection } from '../../../native/socket.ts';
import type { ConnectionPeer } from '../peer.ts';
import { closesPending } from './close-quota.ts';
import { encodeOrInternalError, errorReply } from './reply-encoding.ts';

/** What a handler answers: reply parameters, and fds to attach (ownership passes to the server). */
export interface HandlerReply {
  parameters: Record<string, unknown>;
  fds?: number[];
}
export type CallHandler = (call: DecodedCall, peer: ConnectionPeer) => Promise<HandlerReply>;

/** What the server turned away before any handler ran: a connection, or a message. */
export type Refusal =
  | { stage: 'connection'; reason: 'too-many-connections' | 'reserved-for-managers' | 'unidentified-peer' | 'frame-timeout' | 'closes-pending' }
  /** reason: the Varlink error name the message was (or, for a oneway call, would have been) answered with. */
  | { stage: 'message'; reason: string };

/** Decoded calls one connection may have waiting; past it the daemon stops reading that socket. */
const MAX_QUEUED_CALLS = 64;
/**
 * Reply bytes the kernel has not taken yet; past it the connection's next call waits until its
 * peer reads. Together with MAX_QUEUED_CALLS this bounds what a never-reading client costs.
 */
const SEND_HIGH_WATER_BYTES = 256 * 1024;

/** What a Connection is made of at accept, by name (two callbacks of like shape were easy to swap by position). */
export interface ConnectionParts {
  /** Owned by the connection from now on, closed with it. */
  socket: UnixConnection;
  /** Its pidfd is owned by the connection from now on, closed with it. */
  peer: ConnectionPeer;
  handle: CallHandler;
  log: Logger;
  limits: { idleTimeoutMs: number; frameTimeoutMs: number; maxPendingClosesPerUid: number; maxPendingCloses: number };
  /** Called once, after the connection closed. */
  onClose: () => void;
  /** Told of every message (or, for a frame timeout, the connection) the connection refused. */
  onRefused: (r: Refusal) => void;
}

export class Connection {
  readonly #decoder = new FrameDecoder();
  readonly #queue: Frame[] = [];
  #busy = false;
  #closed = false;
  #draining = false;
  #paused = false;
  #idle: (() => void) | undefined;
  #idleTimer: NodeJS.Timeout | undefined;
  /** Runs while the decoder holds an unfinished frame: started by its first byte, not by later ones. */
  #frameTimer: NodeJS.Timeout | undefined;
  private readonly idleTimeoutMs: number;
  private readonly frameTimeoutMs: number;
  private readonly socket: UnixConnection;
  readonly peer: ConnectionPeer;
  private readonly handle: CallHandler;
  private readonly log: Logger;
  private readonly onClose: () => void;
  private readonly onRefused: (r: Refusal) => void;
  private readonly closeQuota: { perUid: number; total: number };

  constructor({ socket, peer, handle, log, limits, onClose, onRefused }: ConnectionParts) {
    this.closeQuota = { perUid: limits.maxPendingClosesPerUid, total: limits.maxPendingCloses };
    this.socket = socket;
    this.peer = peer;
    this.handle = handle;
    this.log = log;
    this.onClose = onClose;
    this.onRefused = onRefused;
    this.idleTimeoutMs = limits.idleTimeoutMs;
    this.frameTimeoutMs = limits.frameTimeoutMs;
    this.#armIdleTimer();
    socket.on('data', (chunk: Buffer, fds: number[]) => this.#onData(chunk, fds));
    socket.on('end', () => this.#finish());
    socket.on('error', (err: Error) => {
      this.log.debug({ err, peer: this.#who() }, 'connection error');
      this.close();
    });
  }

  /** Closes a peer's fd off the loop, charged to the peer's uid (close-quota.ts). */
  readonly #dropFd = (fd: number): void => closeOffLoop(fd, this.peer.uid);

  #who(): { pid: number; uid: number } {
    return { pid: this.peer.pid, uid: this.peer.uid };
  }

  /** (Re)starts the idle clock; it fires only while no call is queued or running. */
  #armIdleTimer(): void {
    if (this.idleTimeoutMs <= 0) return;
    clearTimeout(this.#idleTimer);
    this.#idleTimer = setTimeout(() => {
      if (this.#busy || this.#queue.length > 0) { this.#armIdleTimer(); return; }
      this.log.info({ peer: this.#who(), idleTimeoutMs: this.idleTimeoutMs }, 'closing an idle connection');
      this.close();
    }, this.idleTimeoutMs).unref();
  }

  /**
   * Starts the frame clock when an unfinished frame begins (a running clock is left alone, so
   * trickling bytes never extend it). It fires only if the frame is still unfinished; while
   * the server itself is not reading (paused), it waits another period instead.
   */
  #armFrameTimer(): void {
    if (this.frameTimeoutMs <= 0 || this.#frameTimer !== undefined) return;
    this.#frameTimer = setTimeout(() => {
      this.#frameTimer = undefined;
      if (this.#closed || !this.#decoder.hasPartialFrame) return;
      if (this.#paused) { this.#armFrameTimer(); return; }
      this.log.warn({ audit: 'deny', action: 'receive', peer: this.#who(), frameTimeoutMs: this.frameTimeoutMs },
        'connection closed: a message did not complete in time');
      this.onRefused({ stage: 'connection', reason: 'frame-timeout' });
      this.close();
    }, this.frameTimeoutMs).unref();
  }

  /** Stops reading while too much is waiting (calls to run, replies to send); resumes below. */
  #throttle(): void {
    const overloaded = this.#queue.length >= MAX_QUEUED_CALLS || this.socket.sendQueueBytes >= SEND_HIGH_WATER_BYTES;
    if (overloaded === this.#paused || this.#closed) return;
    this.#paused = overloaded;
    if (overloaded) this.socket.pause(); else this.socket.resume();
  }

  /** Resolves once the peer has read our replies (or the connection is gone). */
  #drained(): Promise<void> {
    if (this.socket.sendQueueBytes < SEND_HIGH_WATER_BYTES || this.#closed) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => { this.socket.off('drain', done); this.socket.off('close', done); resolve(); };
      this.socket.on('drain', done);
      this.socket.on('close', done);
    });
  }

  #onData(chunk: Buffer, fds: number[]): void {
    if (this.#closed || this.#draining) { fds.forEach(this.#dropFd); return; }
    this.#armIdleTimer();
    let frames: Frame[];
    try {
      frames = this.#decoder.push(chunk, fds);
    } catch (err) {
      if (!(err instanceof FramingError)) throw err;
      const rejection = framingRejection(err, this.#decoder.takeHeldFds());
      this.log.warn({ err: err.message, peer: this.#who() }, 'malformed stream: closing the connection');
      this.#reject(rejection);
      return;
    }
    if (frames.length > 0) {
      // A frame completed: whatever follows it is a new frame with its own clock.
      clearTimeout(this.#frameTimer);
      this.#frameTimer = undefined;
    }
    if (this.#decoder.hasPartialFrame) this.#armFrameTimer();
    this.#queue.push(...frames);
    this.#throttle();
    void this.#pump();
  }

  /** Runs queued calls in order. Never rejects: a failure it did not expect closes this connection only. */
  async #pump(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      for (let frame = this.#queue.shift(); frame !== undefined && !this.#closed; frame = this.#queue.shift()) {
        await this.#run(frame);
        await this.#drained();
        this.#throttle();
      }
    } catch (err) {
      this.log.error({ err, peer: this.#who() }, 'unexpected failure while serving a connection: closing it');
      this.close();
    } finally {
      this.#busy = false;
      this.#idle?.();
    }
  }

  async #run(frame: Frame): Promise<void> {
    const decoded = decodeCall(frame);
    if (frame.fds.length > 0 && this.#refusedForPendingCloses(decoded)) return;
    if (decoded.kind === 'rejection') {
      if (decoded.fatal) this.log.warn({ peer: this.#who(), error: decoded.error.name }, 'malformed message: closing the connection');
      this.#reject(decoded);
      return;
    }
    let reply: HandlerReply;
    try {
      reply = await this.handle(decoded, this.peer);
    } catch (err) {
      if (!decoded.oneway) this.#reply(() => errorReply(err, this.log), []);
      return;
    } finally {
      decoded.unusedFds.forEach(this.#dropFd);
    }
    if (decoded.oneway || this.#closed) {
      (reply.fds ?? []).forEach(closeFd);
      return;
    }
    this.#reply(() => encodeReply(reply.parameters), reply.fds ?? []);
  }

  /**
   * Whether this fd-carrying message was refused because its uid has too many closes pending
   * (close-quota.ts): then its fds are closed unused, ClosesPending is answered (unless it is a
   * oneway call), and the connection reads nothing more. Checked before anything else the
   * message could be refused for, so the answer names the cause the client can act on.
   */
  #refusedForPendingCloses(decoded: DecodedCall | Rejection): boolean {
    const closing = closesPending(this.peer.uid, this.closeQuota);
    if (closing === undefined) return false;
    this.log.warn({ audit: 'deny', action: 'receive', peer: this.#who(), ...closing.parameters }, 'call refused: closes pending');
    this.onRefused({ stage: 'message', reason: closing.qualifiedName });
    if (decoded.kind === 'rejection') {
      decoded.fdsToClose.forEach(this.#dropFd);
    } else {
      decoded.unusedFds.forEach(this.#dropFd);
      if ('targetPidFd' in decoded && decoded.targetPidFd !== undefined) this.#dropFd(decoded.targetPidFd);
    }
    if (decoded.kind === 'rejection' || !decoded.oneway) this.#reply(() => encodeBrokerError(closing), []);
    this.#stopReading();
    return true;
  }

  /** Closes what a rejected message carried, answers if the rejection wants it, closes if fatal. */
  #reject(rejection: Rejection): void {
    this.onRefused({ stage: 'message', reason: rejection.error.name });
    rejection.fdsToClose.forEach(this.#dropFd);
    if (rejection.reply) this.#reply(() => encodeRejection(rejection), []);
    if (rejection.fatal) this.#stopReading();
  }

  /** Encodes (reply-encoding.ts: InternalError if it cannot be) and sends one reply; never throws. */
  #reply(encode: () => Buffer, fds: number[]): void {
    const reply = encodeOrInternalError(encode, fds, this.log, this.#who());
    this.#send(reply.frame, reply.fds);
  }

  /** Nothing more is read or run on this connection; queued replies still go out, then close. */
  #stopReading(): void {
    this.#draining = true;
    for (const f of this.#queue.splice(0)) f.fds.forEach(this.#dropFd);
    void this.drainAndClose();
  }

  #send(frame: Buffer, fds: number[]): void {
    if (this.#closed) { fds.forEach(closeFd); return; }
    this.socket.send(frame, fds);
  }

  /** Peer closed its side: answer what is queued, then close. */
  #finish(): void {
    void this.drainAndClose();
  }

  async drainAndClose(): Promise<void> {
    if (this.#busy) await new Promise<void>((resolve) => { this.#idle = resolve; });
    this.#shut(() => this.socket.end());
  }

  close(): void {
    this.#shut(() => this.socket.close());
  }

  /** Closes every fd this connection still owns, once, then the socket the given way. */
  #shut(closeSocket: () => void): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#idleTimer);
    clearTimeout(this.#frameTimer);
    this.#decoder.takeHeldFds().forEach(this.#dropFd);
    for (const f of this.#queue.splice(0)) f.fds.forEach(this.#dropFd);
    if (this.peer.pidfd !== undefined) closeFd(this.peer.pidfd);
    closeSocket();
    this.onClose();
  }
}
