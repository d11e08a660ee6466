// A listening AF_UNIX stream socket driven by the helper (accept4 on uv_poll readiness).
//
// Invariants:
// - The server owns its listening fd until close(); accepted sockets are handed over as
//   UnixConnections, owned by the 'connection' listener (closed at once if there is none).
//   Accepted connections close their peer's fds and their socket off the event loop
//   (ConnectionOptions.closeOffLoop defaults to true here): a peer is never trusted.
// - listen() never replaces something that is not a socket, and never steals a path someone
//   still listens on (EADDRINUSE); only a stale socket (connect -> ECONNREFUSED) is unlinked.
// - close() unlinks the path only if this server created it and the path still names that
//   same socket file (dev/ino), so a successor's socket is never removed.
// - One readiness callback accepts at most ACCEPTS_PER_WAKEUP connections. When fds or memory
//   run out (EMFILE, ENFILE, ENOBUFS, ENOMEM) accepting pauses for ACCEPT_BACKOFF_MS instead of
//   spinning on a backlog it cannot drain; the failure is reported as a 'warning'.
import { EventEmitter } from 'node:events';
import { lstatSync, unlinkSync, type Stats } from 'node:fs';
import { constants } from 'node:os';
import { native, POLL_READABLE, type PollHandle } from './binding.ts';
import { errnoName, SysError, sys } from './sys.ts';
import { UnixConnection, type ConnectionOptions } from './unix-connection.ts';

const { EADDRINUSE, EEXIST, ENOTSOCK } = constants.errno;

const ACCEPTS_PER_WAKEUP = 16;
const ACCEPT_BACKOFF_MS = 100;
const TRANSIENT = new Set(['EAGAIN', 'EINTR', 'ECONNABORTED', 'EPROTO']);
const EXHAUSTED = new Set(['EMFILE', 'ENFILE', 'ENOBUFS', 'ENOMEM']);

export interface ListenOptions extends ConnectionOptions {
  /** Permission bits of the socket file (e.g. 0o660), applied at bind with no window. */
  mode: number;
  backlog: number;
}

interface FileIdentity { dev: number; ino: number }

/** lstat, or null when nothing is at the path. */
export function lstatOrNull(path: string): Stats | null {
  try {
    return lstatSync(path);
  } catch (error) {
    if (error instanceof Error && 'code' in error && error.code === 'ENOENT') return null;
    throw error;
  }
}

/**
 * Makes `path` free for bind(): absent, or a stale socket nobody listens on (then unlinked).
 * Shared with the admin API, which binds through Node's HTTP server.
 */
export function clearStaleSocket(path: string): void {
  const stat = lstatOrNull(path);
  if (stat === null) return;
  if (!stat.isSocket()) throw new SysError('listen', EEXIST, `${path} exists and is not a socket; refusing to replace it`);
  const probe = native.connectUnix(path);
  if (probe >= 0) {
    native.close(probe);
    throw new SysError('listen', EADDRINUSE, `another process listens on ${path}`);
  }
  const reason = errnoName(probe);
  if (reason === 'EAGAIN') throw new SysError('listen', EADDRINUSE, `another process listens on ${path} (its backlog is full)`);
  if (reason !== 'ECONNREFUSED') throw new SysError('connect', probe, `probing whether ${path} is stale`);
  unlinkSync(path);
}

export class UnixServer extends EventEmitter {
  /** The listening socket; owned by this server until close(). */
  readonly fd: number;
  /** The path it listens on, or null for an adopted fd. */
  readonly address: string | null;
  readonly #created: FileIdentity | null;
  readonly #connectionOptions: ConnectionOptions;
  #poll: PollHandle | null = null;
  #backoff: NodeJS.Timeout | null = null;
  #closed = false;

  private constructor(fd: number, address: string | null, created: FileIdentity | null, options: ConnectionOptions) {
    super();
    this.fd = fd;
    this.address = address;
    this.#created = created;
    this.#connectionOptions = { closeOffLoop: true, ...options };
    const handle = native.startPoll(fd, POLL_READABLE, (status) => this.#onReadable(status));
    if (typeof handle === 'number') {
      native.close(fd);
      if (created !== null && address !== null) unlinkSync(address);
      throw new SysError('uv_poll_start', handle, `watching listening fd ${fd}`);
    }
    this.#poll = handle;
  }

  /** Listens on `path` (created with `mode`). Throws SysError: EEXIST (not a socket), EADDRINUSE, ... */
  static listen(path: string, options: ListenOptions): UnixServer {
    clearStaleSocket(path);
    const fd = sys('listen', native.listenUnix(path, options.backlog, options.mode), path);
    let created: FileIdentity;
    try {
      const stat = lstatSync(path);
      created = { dev: stat.dev, ino: stat.ino };
    } catch (error) {
      native.close(fd);
      throw error;
    }
    const { mode: _mode, backlog: _backlog, ...connectionOptions } = options;
    return new UnixServer(fd, path, created, connectionOptions);
  }

  /**
   * Takes ownership of a listening AF_UNIX stream socket (e.g. from systemd socket activation);
   * the fd is closed here even if this throws.
   */
  static adopt(fd: number, options: ConnectionOptions = {}): UnixServer {
    const kind = native.isUnixStreamSocket(fd);
    if (kind !== 1) {
      native.close(fd);
      throw new SysError('adopt', kind < 0 ? kind : ENOTSOCK, `fd ${fd} is not an AF_UNIX stream socket`);
    }
    return new UnixServer(fd, null, null, options);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Idempotent: stops accepting, closes the fd, unlinks the path it created; 'close' follows. */
  close(): void {
    this.#teardown(null);
  }

  #onReadable(status: number): void {
    if (this.#closed) return;
    if (status < 0) {
      this.#teardown(new SysError('uv_poll', status, `listening fd ${this.fd}`));
      return;
    }
    for (let i = 0; i < ACCEPTS_PER_WAKEUP && !this.#closed && this.#backoff === null; i++) {
      const fd = native.accept(this.fd);
      if (fd >= 0) {
        this.#hand(fd);
        continue;
      }
      const reason = errnoName(fd);
      if (reason === 'EAGAIN') return;
      if (TRANSIENT.has(reason)) continue;
      if (EXHAUSTED.has(reason)) {
        this.#pauseAccepting(new SysError('accept4', fd, `pausing accept for ${ACCEPT_BACKOFF_MS} ms`));
        return;
      }
      this.#teardown(new SysError('accept4', fd, `listening fd ${this.fd}`));
      return;
    }
  }

  #hand(fd: number): void {
    let connection: UnixConnection;
    try {
      connection = UnixConnection.adopt(fd, this.#connectionOptions);
    } catch (error) {
      if (error instanceof SysError && EXHAUSTED.has(error.code)) {
        this.#pauseAccepting(error);
        return;
      }
      throw error;
    }
    if (this.listenerCount('connection') > 0) this.emit('connection', connection);
    else connection.close();
  }

  #pauseAccepting(reason: SysError): void {
    if (this.#poll === null) return;
    native.updatePoll(this.#poll, 0);
    this.#backoff = setTimeout(() => {
      this.#backoff = null;
      if (!this.#closed && this.#poll !== null) native.updatePoll(this.#poll, POLL_READABLE);
    }, ACCEPT_BACKOFF_MS);
    if (this.listenerCount('warning') > 0) this.emit('warning', reason);
    else process.emitWarning(reason);
  }

  #teardown(error: SysError | null): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#backoff !== null) clearTimeout(this.#backoff);
    this.#backoff = null;
    if (this.#poll !== null) native.stopPoll(this.#poll);
    this.#poll = null;
    native.close(this.fd);
    if (this.#created !== null && this.address !== null) {
      const now = lstatOrNull(this.address);
      if (now !== null && now.dev === this.#created.dev && now.ino === this.#created.ino) unlinkSync(this.address);
    }
    if (error !== null) process.nextTick(() => this.emit('error', error));
    process.nextTick(() => this.emit('close'));
  }
}
