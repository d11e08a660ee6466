// A connected AF_UNIX stream socket driven by the helper: recvmsg/sendmsg with SCM_RIGHTS,
// readiness from uv_poll on Node's loop. Never read by libuv (which would drop the fds).
//
// Invariants:
// - The connection owns its socket fd from connect()/adopt() until close(); close() stops the
//   poll watcher before closing the fd, so a reused fd number is never watched by mistake.
// - fds passed to send() belong to the connection from that call on: closed right after the
//   sendmsg that carried them succeeded, or when the connection closes with them unsent
//   (also when send() refuses them). They ride on the first sendmsg of their data (the send
//   queue, send-queue.ts).
// - fds received are owned by the 'data' listener; with no listener they are closed. Every
//   recvmsg has room for the kernel's SCM_MAX_FD (253) fds, so the kernel never drops fds in
//   our thread (it would close them there); a message with more than maxFdsPerMessage fds, or
//   with MSG_CTRUNC all the same (a full fd table), has the fds that arrived closed and fails
//   the connection with EXFULL.
// - With `closeOffLoop` (a peer the process does not trust: every connection a UnixServer
//   accepts), every fd the connection closes that came from the peer, and the socket itself
//   (its receive queue may hold the peer's fds), is closed on the helper's closer threads: a
//   file whose last close blocks (SO_LINGER, FUSE...) never stalls the event loop. Those closes
//   are charged to the peer's uid once chargeClosesTo() names it (the closer threads run at most
//   two closes of one uid at a time, and the daemon bounds each uid's pending closes), to -1
//   (nobody) before that. The socket itself is closed at once when, after a shutdown, its receive
//   queue holds no fds (its close then cannot release a peer's file).
//   A chunk's fds came with its *last* bytes: the kernel glues earlier fd-less messages in
//   front of an fd-carrying one and nothing after it. So with one message per send(), the
//   fds belong to the message that contains the chunk's last byte.
// - Every 'error' is followed by 'close'; both are emitted on a later tick, after the socket
//   and every queued fd are already closed. 'end' is emitted at EOF; if nobody listens for
//   it the connection ends itself (closes once its send queue drained).
// - One readiness callback does at most READS_PER_WAKEUP recvmsg calls, so one busy peer
//   cannot starve the loop; pause() stops reading (back-pressure), resume() restarts it.
//   'drain' is emitted (on a later tick, only to existing listeners) whenever the send queue
//   becomes empty, so a writer can wait for a slow reader instead of queueing without bound.
import { EventEmitter } from 'node:events';
import { constants } from 'node:os';
import { native, POLL_READABLE, POLL_WRITABLE, type PeerCred, type PollHandle } from './binding.ts';
import { SendQueue } from './send-queue.ts';
import { errnoNumber, peerCred, peerPidfd, SysError, sys } from './sys.ts';

const { EAGAIN, EBUSY, EINTR, ENOTSOCK, EBADF } = constants.errno;
const EXFULL = errnoNumber('EXFULL');
/** The kernel's SCM_MAX_FD: most fds one message can carry. */
const MAX_FDS_PER_SEND = 253;

const READ_CHUNK_BYTES = 64 * 1024;
const READS_PER_WAKEUP = 16;
/** Most fds one received message may carry before it counts as truncated (MSG_CTRUNC). */
export const DEFAULT_MAX_FDS_PER_MESSAGE = 16;

export interface ConnectionOptions {
  /** fds one received message may carry (0..253); a message with more fails the connection (EXFULL). */
  maxFdsPerMessage?: number;
  /**
   * The peer is untrusted: close its fds and the socket off the event loop (see the invariants).
   * UnixServer turns it on for the connections it accepts; default false.
   */
  closeOffLoop?: boolean;
}

/** Closes fds this module owns; a failure here (EBADF) would mean a double close elsewhere. */
function closeAll(fds: readonly number[]): void {
  for (const fd of fds) native.close(fd);
}

/**
 * Closes a peer's fd on the closer threads (its last close may block), charged to `owner`;
 * 0 or -errno, never throws. Only if the helper cannot take it (no memory, no thread) is it
 * closed here.
 */
function closeLater(fd: number, owner: number): number {
  const r = native.closeLater(fd, owner);
  return r === 0 || r === -EBUSY ? r : native.close(fd);
}

/**
 * Closes an untrusted peer's socket: at once when its receive queue holds no fds (after a
 * shutdown nothing more can arrive; closer.c), else on the closer threads, charged to `owner`.
 */
function closeSocketLater(fd: number, owner: number): number {
  const r = native.closeSocketLater(fd, owner);
  return r === 0 || r === 1 ? 0 : r === -EBUSY ? r : native.close(fd);
}

export class UnixConnection extends EventEmitter {
  /** The socket; owned by this connection until close(). */
  readonly fd: number;
  readonly #maxFds: number;
  readonly #offLoop: boolean;
  /** Whose closes these are (closeOffLoop): the peer's uid once known, -1 until then. */
  #owner = -1;
  #poll: PollHandle | null = null;
  /** The events the watcher is armed for right now (0 = stopped). */
  #armed = 0;
  /** Owner of the fds queued for sending. */
  readonly #queue = new SendQueue({ sendmsg: (chunk, fds) => native.sendmsg(this.fd, chunk, fds), close: (fd) => native.close(fd) });
  #paused = false;
  #eof = false;
  #ending = false;
  #closed = false;

  private constructor(fd: number, options: ConnectionOptions) {
    super();
    this.fd = fd;
    this.#maxFds = options.maxFdsPerMessage ?? DEFAULT_MAX_FDS_PER_MESSAGE;
    this.#offLoop = options.closeOffLoop ?? false;
    if (!Number.isInteger(this.#maxFds) || this.#maxFds < 0 || this.#maxFds > MAX_FDS_PER_SEND) {
      native.close(fd);
      throw new TypeError(`maxFdsPerMessage must be an integer in [0, ${MAX_FDS_PER_SEND}]`);
    }
    const handle = native.startPoll(fd, POLL_READABLE, (status, events) => this.#onPoll(status, events));
    if (typeof handle === 'number') {
      native.close(fd);
      throw new SysError('uv_poll_start', handle, `watching socket fd ${fd}`);
    }
    this.#poll = handle;
    this.#armed = POLL_READABLE;
  }

  /** Connects to a listening socket at `path`. Throws SysError (ENOENT, ECONNREFUSED, EACCES, EAGAIN...). */
  static connect(path: string, options: ConnectionOptions = {}): UnixConnection {
    return new UnixConnection(sys('connect', native.connectUnix(path), path), options);
  }

  /** Takes ownership of a connected AF_UNIX stream socket fd (closed here even if this throws). */
  static adopt(fd: number, options: ConnectionOptions = {}): UnixConnection {
    const kind = native.isUnixStreamSocket(fd);
    if (kind !== 1) {
      native.close(fd);
      throw new SysError('adopt', kind < 0 ? kind : ENOTSOCK, `fd ${fd} is not an AF_UNIX stream socket`);
    }
    return new UnixConnection(fd, options);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Bytes queued but not yet accepted by the kernel. */
  get sendQueueBytes(): number {
    return this.#queue.bytes;
  }

  /** Charges the closes of the peer's fds and of this socket to uid (see the invariants). */
  chargeClosesTo(uid: number): void {
    this.#owner = uid;
  }

  /** SO_PEERCRED of the peer (as of connect()). */
  peerCred(): PeerCred {
    this.#assertOpen('getsockopt(SO_PEERCRED)');
    return peerCred(this.fd);
  }

  /** SO_PEERPIDFD: a new pidfd for the peer; the caller owns it. ENOPROTOOPT before Linux 6.5. */
  peerPidfd(): number {
    this.#assertOpen('getsockopt(SO_PEERPIDFD)');
    return peerPidfd(this.fd);
  }

  /**
   * Queues `data` (non-empty) with `fds` attached to its first byte, and sends what the kernel
   * takes now. Takes ownership of `fds` in every case. Returns false, with the fds closed and
   * nothing sent, if the connection is closed or ending.
   */
  send(data: Buffer, fds: readonly number[] = []): boolean {
    if (fds.length > MAX_FDS_PER_SEND || !fds.every((fd) => Number.isInteger(fd) && fd >= 0)) {
      throw new TypeError(`UnixConnection.send: fds must be at most ${MAX_FDS_PER_SEND} non-negative integers`);
    }
    if (!Buffer.isBuffer(data) || data.length === 0) {
      closeAll(fds);
      throw new TypeError('UnixConnection.send: data must be a non-empty Buffer (an empty stream message carries no fds)');
    }
    if (this.#closed || this.#ending) {
      closeAll(fds);
      return false;
    }
    this.#queue.push(data, fds);
    if (this.#queue.length === 1) this.#flush();
    this.#rearm();
    return true;
  }

  /** Stops reading (the kernel buffers, then the peer blocks): back-pressure. */
  pause(): void {
    this.#paused = true;
    this.#rearm();
  }

  resume(): void {
    this.#paused = false;
    this.#rearm();
  }

  /** Closes once everything queued has been sent (at once if nothing is queued). */
  end(): void {
    if (this.#closed) return;
    this.#ending = true;
    if (this.#queue.length === 0) this.close();
  }

  /** Idempotent: stops the watcher, closes unsent fds and the socket; 'close' follows. */
  close(): void {
    this.#teardown(null);
  }

  #assertOpen(syscall: string): void {
    if (this.#closed) throw new SysError(syscall, EBADF, 'the connection is closed');
  }

  #onPoll(status: number, events: number): void {
    if (this.#closed) return;
    let readable = (events & POLL_READABLE) !== 0;
    let writable = (events & POLL_WRITABLE) !== 0;
    if (status < 0) {
      // libuv stopped the watcher (POLLERR). The syscalls below say what went wrong.
      this.#armed = 0;
      readable = true;
      writable = true;
    }
    if (writable && this.#queue.length > 0) this.#flush();
    if (readable) this.#readSome();
    this.#rearm();
  }

  #readSome(): void {
    for (let i = 0; i < READS_PER_WAKEUP && !this.#closed && !this.#paused && !this.#eof; i++) {
      // Room for every fd one message can carry: MSG_CTRUNC would make the kernel close the
      // rest in this thread. The per-message limit is enforced below, off the loop.
      const result = native.recvmsg(this.fd, READ_CHUNK_BYTES, MAX_FDS_PER_SEND);
      if (typeof result === 'number') {
        if (result === -EAGAIN) return;
        if (result === -EINTR) continue;
        this.#teardown(new SysError('recvmsg', result, `socket fd ${this.fd}`));
        return;
      }
      if (result.ctrunc || result.fds.length > this.#maxFds) {
        this.#closeReceived(result.fds);
        this.#teardown(new SysError('recvmsg', EXFULL, result.ctrunc
          ? `the kernel truncated the fds of one message (MSG_CTRUNC: fd table full?); the ones that arrived were closed`
          : `the peer sent more than ${this.#maxFds} fds with one message (${result.fds.length}); they were closed`));
        return;
      }
      if (result.data.length === 0) {
        this.#closeReceived(result.fds);
        this.#eof = true;
        if (this.listenerCount('end') > 0) this.emit('end');
        else this.end();
        return;
      }
      if (this.listenerCount('data') > 0) this.emit('data', result.data, result.fds);
      else this.#closeReceived(result.fds);
    }
  }

  /** fds that came from the peer: off the loop when the peer is untrusted. */
  #closeReceived(fds: readonly number[]): void {
    if (this.#offLoop) for (const fd of fds) closeLater(fd, this.#owner);
    else closeAll(fds);
  }

  #flush(): void {
    if (this.#closed) return;
    const sent = this.#queue.send();
    if (sent === 'again') return; // #rearm waits for writable
    if (sent !== 'empty') {
      this.#teardown(new SysError('sendmsg', sent, `socket fd ${this.fd}`));
      return;
    }
    if (this.#ending) this.close();
    else if (this.listenerCount('drain') > 0) process.nextTick(() => this.emit('drain'));
  }

  /** Arms the watcher for what we wait for now: reading unless paused/EOF, writing while queued. */
  #rearm(): void {
    if (this.#closed || this.#poll === null) return;
    const wanted = (this.#paused || this.#eof ? 0 : POLL_READABLE) | (this.#queue.length > 0 ? POLL_WRITABLE : 0);
    if (wanted === this.#armed) return;
    const r = native.updatePoll(this.#poll, wanted);
    if (r < 0) {
      this.#teardown(new SysError('uv_poll_start', r, `socket fd ${this.fd}`));
      return;
    }
    this.#armed = wanted;
  }

  #teardown(error: SysError | null): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#poll !== null) native.stopPoll(this.#poll);
    this.#poll = null;
    this.#queue.discard();
    // An untrusted peer's socket may hold its fds in the receive queue: the kernel drops them in
    // the closing thread, so that close happens off the loop.
    const closed = this.#offLoop ? closeSocketLater(this.fd, this.#owner) : native.close(this.fd);
    const failure = error ?? (closed < 0 ? new SysError('close', closed, `socket fd ${this.fd}`) : null);
    if (failure !== null) process.nextTick(() => this.emit('error', failure));
    process.nextTick(() => this.emit('close'));
  }
}

