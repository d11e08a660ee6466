// The admin HTTP API: fastify on the admin Unix socket, for the policy's managers (and, to
// read, its observers).
//
// Invariants:
// - Every request passes the admin check (auth.ts adminRefusal) in the first hook, before
//   routing, body parsing or validation: an observer gets 403 PermissionDenied for anything but
//   GET/HEAD, and a peer that is neither manager nor observer for every path, so the API tells
//   them nothing (not even which paths exist).
// - Every answer is counted in Metrics (api "admin", method = route pattern, outcome = ok or
//   the error name) and every failure has the `{ error, parameters }` body of errors.ts.
// - The socket is never reachable with looser permissions than asked: a path is bound by the
//   native helper with its mode applied at bind (umask around bind(), no chmod window) and then
//   handed to Node as an fd; a socket-activated fd (FileDescriptorName=admin) is used as is.
// - No peer can pass fds through the socket: Node reads it with read(2), and the kernel would
//   drop (last-close) any fd that came with the bytes in the event loop's thread, where a
//   lingering socket's close blocks every client. The listener gets SO_PASSRIGHTS=0 before it
//   serves (a connection inherits it at connect(); a peer's SCM_RIGHTS fails with EPERM), and
//   every accepted connection is sealed before Node reads it (no-fds.ts): one that connected
//   before the option was set (socket activation's backlog) is made to refuse fds, and dropped
//   unread, off the loop, if fds already wait in it. Kernels before 6.16 lack the option: there
//   the API still serves, with a warning, and only the peers the socket's mode admits
//   (root:iommufd-admin 0660) can reach it.
// - No connection holds one of the MAX_ADMIN_CONNECTIONS slots while silent: ADMIN_IDLE_TIMEOUT_MS
//   without a byte either way closes it, and a request must be complete within requestTimeout.
// - A path is only unlinked on close if it still names the socket this API created (dev/ino),
//   and a path that exists is only replaced if it is a stale socket nobody listens on.
// - fd ownership: a listening fd belongs to the caller until listen() checked it is an AF_UNIX
//   stream socket (closed here if not); from then on to Node's server, closed by close() (or by
//   Node if listening fails). Connection fds belong to Node.
import type { Socket } from 'node:net';
import { lstatSync, unlinkSync, type Stats } from 'node:fs';
import Fastify, { type FastifyRequest } from 'fastify';
import { serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import { clearStaleSocket, lstatOrNull } from '../../../native/unix-server.ts';
import { closeFdQuietly, errnoNumber, isUnixStreamSocket, listenUnix, refuseFdPassing, SysError } from '../../../native/sys.ts';
import { adminRefusal, ConnectionPeers } from './auth.ts';
import { sealConnection } from './no-fds.ts';
import { brokerFailure, notFound, toFailure, type AdminFailure } from './errors.ts';
import { registerAdminRoutes, type AdminApp, type AdminRouteDeps } from './routes.ts';
import type { ConnectionPeer } from '../peer.ts';
import type { Logger } from 'pino';

export interface AdminApiOptions extends Omit<AdminRouteDeps, 'callerOf'> {
  /**
   * Who is behind a request's socket. Default (production): the SO_PEERCRED read when the
   * connection was accepted. Tests of routes through fastify's inject() pass their own.
   */
  identify?: (socket: Socket) => ConnectionPeer | undefined;
  /** A connection with no byte in either direction for this long is closed (default ADMIN_IDLE_TIMEOUT_MS). */
  idleTimeoutMs?: number;
}

/** Where to serve: a path the API binds itself, or a listening fd (socket activation). */
export type AdminListen = { path: string; mode: number; backlog?: number } | { fd: number };

/** Requests are tiny (a PATCH carries one number). */
const BODY_LIMIT = 16 * 1024;
/** Connections served at once; one more is closed at accept. */
export const MAX_ADMIN_CONNECTIONS = 64;
/**
 * Silence on a connection (no byte either way) after which it is closed. Node's requestTimeout
 * and headersTimeout only start with a request's first byte, so without this a connection that
 * never sends one holds its slot forever, and MAX_ADMIN_CONNECTIONS of them shut everyone out.
 */
export const ADMIN_IDLE_TIMEOUT_MS = 10_000;

export class AdminApi {
  readonly app: AdminApp;
  readonly #log: Logger;
  /** The socket file listen() created, to unlink on close. */
  #created: { path: string; dev: number; ino: number } | null = null;
  #closing: Promise<void> | undefined;
  #listening = false;

  private constructor(app: AdminApp, log: Logger) {
    this.app = app;
    this.#log = log;
  }

  /** Builds the API and its routes (not yet listening). */
  static async create(options: AdminApiOptions): Promise<AdminApi> {
    const { log, metrics } = options;
    const app: AdminApp = Fastify({
      logger: false, bodyLimit: BODY_LIMIT, requestTimeout: 10_000, keepAliveTimeout: 5_000, return503OnClosing: true,
      connectionTimeout: options.idleTimeoutMs ?? ADMIN_IDLE_TIMEOUT_MS,
    }).withTypeProvider<ZodTypeProvider>();
    app.setValidatorCompiler(validatorCompiler);
    app.setSerializerCompiler(serializerCompiler);
    app.server.maxConnections = MAX_ADMIN_CONNECTIONS;

    const peers = new ConnectionPeers(log);
    app.server.on('connection', (socket: Socket) => {
      if (sealConnection(socket, log)) peers.accept(socket);
    });
    const identify = options.identify ?? ((socket: Socket) => peers.peerOf(socket));
    const callers = new WeakMap<FastifyRequest, ConnectionPeer>();
    const outcomes = new WeakMap<FastifyRequest, string>();
    const fail = (request: FastifyRequest, failure: AdminFailure): AdminFailure => {
      outcomes.set(request, failure.outcome);
      return failure;
    };

    app.addHook('onRequest', async (request, reply) => {
      const peer = identify(request.raw.socket);
      const refusal = adminRefusal(options.service.policy, peer, request.method);
      if (refusal === undefined) {
        if (peer !== undefined) callers.set(request, peer);
        return;
      }
      log.warn({ audit: 'deny', action: 'admin', peer: peer === undefined ? undefined : { uid: peer.uid, pid: peer.pid },
        request: `${request.method} ${request.url}`, error: refusal.errorName, ...refusal.parameters }, 'deny admin API request');
      const failure = fail(request, brokerFailure(refusal));
      return reply.code(failure.status).send(failure.body);
    });
    app.setErrorHandler((error, request, reply) => {
      const failure = fail(request, toFailure(error, log));
      return reply.code(failure.status).send(failure.body);
    });
    app.setNotFoundHandler((request, reply) => {
      const failure = fail(request, notFound(request.method, request.url.split('?')[0] ?? ''));
      return reply.code(failure.status).send(failure.body);
    });
    app.addHook('onResponse', async (request, reply) => {
      const outcome = outcomes.get(request) ?? (reply.statusCode < 400 ? 'ok' : `HTTP${reply.statusCode}`);
      const route = request.routeOptions.url;
      metrics.observeCall('admin', route === undefined ? 'unmatched' : `${request.method} ${route}`, outcome, reply.elapsedTime / 1000);
    });

    registerAdminRoutes(app, {
      ...options,
      callerOf: (request) => {
        const peer = callers.get(request);
        if (peer === undefined) throw new Error('admin route reached without a checked caller');
        return peer;
      },
    });
    await app.ready();
    return new AdminApi(app, log);
  }

  /**
   * Starts serving; resolves once the socket accepts connections. One socket per API: while
   * listening (or once closed) another call throws before touching anything (a passed fd then
   * stays the caller's); after a failed call, another may be tried.
   */
  async listen(where: AdminListen): Promise<void> {
    if (this.#listening || this.#closing !== undefined) throw new Error('AdminApi.listen: already listening or closed');
    this.#listening = true;
    try {
      await ('fd' in where ? this.#serveFd(where.fd) : this.#servePath(where.path, where.mode, where.backlog ?? 64));
    } catch (error) {
      this.#listening = false;
      throw error;
    }
  }

  async #servePath(path: string, mode: number, backlog: number): Promise<void> {
    clearStaleSocket(path);
    const fd = listenUnix(path, backlog, mode);
    let st: Stats;
    try {
      st = lstatSync(path);
    } catch (error) {
      closeFdQuietly(fd);
      throw error;
    }
    this.#created = { path, dev: st.dev, ino: st.ino };
    try {
      await this.#serveFd(fd);
    } catch (error) {
      this.#unlinkCreated();
      throw error;
    }
  }

  /**
   * Stops accepting, lets requests in flight finish, closes the socket (and unlinks its file).
   * Idempotent: later calls wait for the first.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const closing = this.app.close();
      this.app.server.closeIdleConnections();
      await closing;
      this.#unlinkCreated();
    })();
    return this.#closing;
  }

  async #serveFd(fd: number): Promise<void> {
    let errno = 0;
    try {
      if (!isUnixStreamSocket(fd)) errno = errnoNumber('ENOTSOCK');
    } catch (error) {
      if (!(error instanceof SysError)) throw error;
      errno = error.errno;
    }
    if (errno !== 0) {
      closeFdQuietly(fd);
      throw new SysError('listen', errno, `admin API: fd ${fd} is not an AF_UNIX stream socket`);
    }
    let refusing: boolean;
    try {
      refusing = refuseFdPassing(fd);
    } catch (error) {
      closeFdQuietly(fd);
      throw error instanceof SysError ? new SysError('setsockopt', error.errno, 'admin API: could not refuse fd passing (SO_PASSRIGHTS)') : error;
    }
    if (!refusing) {
      this.#log.warn({ kernelNeeds: 'SO_PASSRIGHTS (Linux 6.16)' },
        'admin API: this kernel cannot refuse fds sent to the admin socket; a peer that can connect can stall the daemon');
    }
    const server = this.app.server;
    await new Promise<void>((resolve, reject) => {
      const onError = (error: Error): void => reject(error);
      server.once('error', onError);
      server.listen({ fd }, () => {
        server.off('error', onError);
        resolve();
      });
    });
  }

  #unlinkCreated(): void {
    const created = this.#created;
    this.#created = null;
    if (created === null) return;
    const now = lstatOrNull(created.path);
    if (now !== null && now.dev === created.dev && now.ino === created.ino) unlinkSync(created.path);
  }
}
