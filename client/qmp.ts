// A minimal QMP (QEMU Machine Protocol) client: enough to hand a running QEMU an fd with
// `getfd` (fd attached with SCM_RIGHTS to the command's bytes) and to manage it (`closefd`),
// and to run the commands and await the events that memory hotplug (memory-hotplug.ts) and
// sizing (qmp-sizing.ts) need (`execute`, `expectEvent`).
//
// Invariants:
// - The QMP socket is read only through UnixConnection (recvmsg), never by net.Socket, so an
//   fd attached to a command goes out with exactly that command's bytes.
// - fd ownership: an fd given to execute()/getfd() belongs to the QmpClient from the call on;
//   UnixConnection.send closes it once sent, and it is closed by us if it is never sent. fds that
//   arrive on the QMP socket (QEMU sends none) are closed on arrival, off the event loop
//   (closeOffLoop; the connection is closeOffLoop too): QEMU is untrusted (a guest may own it),
//   and a file whose last close blocks would otherwise hold every timeout below. The socket is
//   owned by the QmpClient and closed by close() or on any failure.
// - QEMU answers commands in order; every command carries a numeric id and the reply must echo
//   it, else the connection is a ProtocolViolation and is closed. Asynchronous events
//   ({"event": ...}) never count as replies: each goes to the expectEvent() waiters registered
//   before it arrived (at most MAX_EVENT_WAITERS at once) and is otherwise dropped, so events
//   are never stored.
// - Every wait is bounded by a timeout. A reply's timeout closes the connection (a late reply
//   could otherwise be taken for the next command's); an event's timeout (QmpEventTimeout)
//   does not, since a late event cannot be mistaken for anything.
// - Incoming lines are bounded (MAX_LINE_BYTES); a longer one is a ProtocolViolation.
import { StringDecoder } from 'node:string_decoder';
import { closeFd, closeOffLoop, SysError } from '../native/sys.ts';
import { UnixConnection } from '../native/socket.ts';
import { QmpError } from './qmp-error.ts';

export { QmpError, type QmpErrorName } from './qmp-error.ts';

const MAX_LINE_BYTES = 1024 * 1024;
export const DEFAULT_QMP_TIMEOUT_MS = 10_000;

export interface QmpGreeting {
  version: unknown;
  capabilities: unknown[];
}

/** An asynchronous QMP event, e.g. {"event":"DEVICE_DELETED","data":{"device":"dimm-1",...}}. */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
}

/** A registered wait for one event: `event` settles once; cancel() drops the wait. */
export interface EventWait {
  readonly event: Promise<QmpEvent>;
  cancel(): void;
}

interface EventWaiter {
  name: string;
  match: (data: Record<string, unknown>) => boolean;
  resolve: (event: QmpEvent) => void;
  reject: (error: QmpError) => void;
  timer: NodeJS.Timeout;
}

/** Most event waits one client holds at once: waits are ours, never the peer's, to add. */
const MAX_EVENT_WAITERS = 16;

interface Waiter {
  /** The id the reply must carry; undefined while waiting for the greeting. */
  id: number | undefined;
  what: string;
  resolve: (message: Record<string, unknown>) => void;
  reject: (error: QmpError) => void;
  timer: NodeJS.Timeout;
}

export class QmpClient {
  readonly socketPath: string;
  #greeting: QmpGreeting | undefined;
  /** Owner of the QMP socket. */
  readonly #conn: UnixConnection;
  readonly #timeoutMs: number;
  #buffer = '';
  readonly #utf8 = new StringDecoder('utf8');
  #nextId = 1;
  readonly #waiters: Waiter[] = [];
  readonly #eventWaiters = new Set<EventWaiter>();
  #failure: QmpError | undefined;

  private constructor(socketPath: string, conn: UnixConnection, timeoutMs: number) {
    this.socketPath = socketPath;
    this.#conn = conn;
    this.#timeoutMs = timeoutMs;
    conn.on('data', (chunk: Buffer, fds: number[]) => this.#onData(chunk, fds));
    conn.on('end', () => this.#fail(new QmpError('QmpConnectionLost', socketPath, `QEMU closed the QMP socket ${socketPath}`)));
    conn.on('error', (err: Error) => this.#fail(new QmpError('QmpConnectionLost', socketPath,
      `the QMP socket ${socketPath} failed: ${err.message}`, undefined, err)));
  }

  /** Connects, reads QEMU's greeting and leaves capabilities negotiation mode. */
  static async connect(socketPath: string, options: { timeoutMs?: number } = {}): Promise<QmpClient> {
    let conn: UnixConnection;
    try {
      // closeOffLoop: QEMU's fds (and the socket, whose queue may hold them) close on the closer threads.
      conn = UnixConnection.connect(socketPath, { closeOffLoop: true });
    } catch (err) {
      const code = err instanceof SysError ? err.code : String(err);
      throw new QmpError('QmpUnreachable', socketPath,
        `cannot connect to QEMU's QMP socket ${socketPath} (${code}): is QEMU running with -qmp unix:${socketPath},server=on,wait=off?`,
        undefined, err);
    }
    const client = new QmpClient(socketPath, conn, options.timeoutMs ?? DEFAULT_QMP_TIMEOUT_MS);
    try {
      const hello = await client.#wait(undefined, 'the QMP greeting');
      client.#greeting = parseGreeting(hello, socketPath);
      await client.execute('qmp_capabilities');
      return client;
    } catch (err) {
      client.close();
      throw err;
    }
  }

  get greeting(): QmpGreeting {
    if (this.#greeting === undefined) throw new Error('QmpClient: no greeting yet');
    return this.#greeting;
  }

  /** The QEMU process at the other end, as SO_PEERCRED saw it at connect(). */
  peerCred(): { pid: number; uid: number; gid: number } {
    return this.#conn.peerCred();
  }

  /** A pidfd for the QEMU process at the other end (SO_PEERPIDFD); the caller owns it. */
  peerPidfd(): number {
    return this.#conn.peerPidfd();
  }

  /**
   * Runs one command and resolves with its `return` value. fds (ownership passes to us) go out
   * with the command's bytes. Rejects with QmpError; QmpCommandFailed leaves the connection usable.
   */
  async execute(command: string, args?: Record<string, unknown>, fds: number[] = []): Promise<unknown> {
    if (this.#failure !== undefined) {
      fds.forEach(closeFd);
      throw this.#failure;
    }
    const id = this.#nextId++;
    const message = { execute: command, ...(args === undefined ? {} : { arguments: args }), id };
    const reply = this.#wait(id, `the reply to ${command}`);
    try {
      this.#conn.send(Buffer.from(`${JSON.stringify(message)}\n`), fds);
    } catch (err) {
      this.#fail(new QmpError('QmpConnectionLost', this.socketPath, `cannot send ${command} to ${this.socketPath}: ${errText(err)}`, undefined, err));
    }
    const answer = await reply;
    if ('return' in answer) return answer['return'];
    const error = answer['error'];
    if (isRecord(error) && typeof error['desc'] === 'string') {
      const cls = typeof error['class'] === 'string' ? error['class'] : 'GenericError';
      throw new QmpError('QmpCommandFailed', this.socketPath, `QEMU refused ${command}: ${error['desc']} (${cls})`, cls);
    }
    this.#fail(new QmpError('QmpProtocolViolation', this.socketPath, `the reply to ${command} has neither "return" nor a valid "error"`));
    throw this.#failure;
  }

  /** Hands `fd` to QEMU under `fdname` (QMP getfd). Takes ownership of fd: it is closed here once sent. */
  async getfd(fdname: string, fd: number): Promise<void> {
    await this.execute('getfd', { fdname }, [fd]);
  }

  /** Makes QEMU close an fd it holds under `fdname` (QMP closefd). */
  async closefd(fdname: string): Promise<void> {
    await this.execute('closefd', { fdname });
  }

  /**
   * Waits for the first event `name` whose data satisfies `match` that arrives from now on
   * (register before sending the command that causes it: QEMU may send the event before the
   * reply). Rejects with QmpEventTimeout after timeoutMs (the connection stays usable), or with
   * the connection's failure.
   */
  expectEvent(name: string, match: (data: Record<string, unknown>) => boolean, timeoutMs: number = this.#timeoutMs): EventWait {
    let waiter: EventWaiter | undefined;
    const event = new Promise<QmpEvent>((resolve, reject) => {
      if (this.#failure !== undefined) { reject(this.#failure); return; }
      if (this.#eventWaiters.size >= MAX_EVENT_WAITERS) throw new Error(`QmpClient: more than ${MAX_EVENT_WAITERS} event waits at once`);
      const timer = setTimeout(() => {
        if (waiter !== undefined) this.#eventWaiters.delete(waiter);
        reject(new QmpError('QmpEventTimeout', this.socketPath, `QEMU on ${this.socketPath} sent no ${name} event within ${timeoutMs} ms`));
      }, timeoutMs);
      waiter = { name, match, resolve, reject, timer };
      this.#eventWaiters.add(waiter);
    });
    // A rejection before the caller awaits (the connection failed meanwhile) is not "unhandled".
    event.catch(() => {});
    return {
      event,
      cancel: () => {
        if (waiter === undefined || !this.#eventWaiters.delete(waiter)) return;
        clearTimeout(waiter.timer);
      },
    };
  }

  /** Closes the socket; pending commands reject with QmpConnectionLost. Idempotent. */
  close(): void {
    this.#fail(new QmpError('QmpConnectionLost', this.socketPath, `the QMP connection to ${this.socketPath} was closed`));
  }

  #wait(id: number | undefined, what: string): Promise<Record<string, unknown>> {
    return new Promise((resolve, reject) => {
      if (this.#failure !== undefined) { reject(this.#failure); return; }
      const timer = setTimeout(() => {
        this.#fail(new QmpError('QmpTimeout', this.socketPath,
          `no answer from QEMU on ${this.socketPath} for ${what} within ${this.#timeoutMs} ms`));
      }, this.#timeoutMs);
      this.#waiters.push({ id, what, resolve, reject, timer });
    });
  }

  #onData(chunk: Buffer, fds: number[]): void {
    for (const fd of fds) closeOffLoop(fd);
    if (this.#failure !== undefined) return;
    this.#buffer += this.#utf8.write(chunk);
    for (let nl = this.#buffer.indexOf('\n'); nl !== -1 && this.#failure === undefined; nl = this.#buffer.indexOf('\n')) {
      const line = this.#buffer.slice(0, nl).trim();
      this.#buffer = this.#buffer.slice(nl + 1);
      if (line !== '') this.#onLine(line);
    }
    if (Buffer.byteLength(this.#buffer) > MAX_LINE_BYTES) {
      this.#fail(new QmpError('QmpProtocolViolation', this.socketPath, `QEMU sent a line longer than ${MAX_LINE_BYTES} bytes`));
    }
  }

  #onLine(line: string): void {
    let message: unknown;
    try {
      message = JSON.parse(line);
    } catch {
      this.#fail(new QmpError('QmpProtocolViolation', this.socketPath, `not JSON on the QMP socket: ${line.slice(0, 200)}`));
      return;
    }
    if (!isRecord(message)) {
      this.#fail(new QmpError('QmpProtocolViolation', this.socketPath, `not a JSON object on the QMP socket: ${line.slice(0, 200)}`));
      return;
    }
    if ('event' in message) {
      this.#onEvent(message);
      return;
    }
    const waiter = this.#waiters.shift();
    if (waiter === undefined) {
      this.#fail(new QmpError('QmpProtocolViolation', this.socketPath, `an answer nobody asked for: ${line.slice(0, 200)}`));
      return;
    }
    clearTimeout(waiter.timer);
    if (message['id'] !== waiter.id) {
      this.#waiters.unshift(waiter);
      this.#fail(new QmpError('QmpProtocolViolation', this.socketPath,
        `expected ${waiter.what} (id ${String(waiter.id)}), got: ${line.slice(0, 200)}`));
      return;
    }
    waiter.resolve(message);
  }

  #onEvent(message: Record<string, unknown>): void {
    const name = message['event'];
    if (typeof name !== 'string') {
      this.#fail(new QmpError('QmpProtocolViolation', this.socketPath, `an event without a name: ${JSON.stringify(message).slice(0, 200)}`));
      return;
    }
    const data = isRecord(message['data']) ? message['data'] : {};
    for (const w of this.#eventWaiters) {
      if (w.name !== name || !w.match(data)) continue;
      this.#eventWaiters.delete(w);
      clearTimeout(w.timer);
      w.resolve({ event: name, data });
    }
  }

  #fail(error: QmpError): void {
    if (this.#failure !== undefined) return;
    this.#failure = error;
    this.#conn.close();
    for (const w of this.#waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(error);
    }
    for (const w of this.#eventWaiters) {
      clearTimeout(w.timer);
      w.reject(error);
    }
    this.#eventWaiters.clear();
  }
}

function parseGreeting(message: Record<string, unknown>, socketPath: string): QmpGreeting {
  const qmp = message['QMP'];
  if (!isRecord(qmp) || !Array.isArray(qmp['capabilities'])) {
    throw new QmpError('QmpProtocolViolation', socketPath, `${socketPath} does not greet like QMP: ${JSON.stringify(message).slice(0, 200)}`);
  }
  return { version: qmp['version'], capabilities: qmp['capabilities'] };
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function errText(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
