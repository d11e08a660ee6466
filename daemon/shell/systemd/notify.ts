// sd_notify(3) for the daemon: READY=1, STATUS=, STOPPING=1, RELOADING=1, WATCHDOG=1, and the
// fd store (FDSTORE=1 / FDSTOREREMOVE=1 with FDNAME=) that keeps leases' FDs across a restart.
//
// Invariants:
// - Built from NOTIFY_SOCKET once; without it (run by hand) every method does nothing, and
//   the first call says so once through the log. NOTIFY_SOCKET, WATCHDOG_USEC and
//   WATCHDOG_PID are removed from the environment object we were given, so no child we spawn
//   can report for us; so is FDSTORE (systemd >= 254: the fd store's size), kept as fdStoreMax.
// - A notification that cannot be sent is logged, never thrown: the supervisor notices a
//   missing READY=1 or WATCHDOG=1 itself (start timeout, watchdog kill).
// - Each message is one datagram of "KEY=value" lines; STATUS= text is made one line.
// - fd ownership: every datagram goes out on a socket created, used and closed inside one
//   call (as libsystemd's sd_notify does): path sockets through unix-dgram, whose Socket object
//   owns its fd until close(); abstract ('@') sockets through native/sys.ts's
//   sendAbstractDatagram, whose helper call owns its socket for the duration of the syscall. No fd outlives a call.
//   FDSTORE=1 sends the fd as SCM_RIGHTS through the native helper for both kinds (unix-dgram
//   cannot pass fds); the stored fd stays the caller's, systemd gets its own copy. FDPOLL=0:
//   systemd must not drop a stored iommufd on a poll event (an iommufd is not a socket).
// - The watchdog timer is unref'd: it never keeps the process alive on its own.
import { createRequire } from 'node:module';
import { errnoName, sendAbstractDatagram, sendDatagramWithFd, SysError } from '../../../native/sys.ts';

/** Where messages go: what the log needs (pino's Logger fits). */
export interface NotifyLog {
  info(message: string): void;
  warn(message: string): void;
}

/** A parsed NOTIFY_SOCKET: a file system path, or an abstract name (without the '@'). */
export type NotifyAddress = { kind: 'path'; path: string } | { kind: 'abstract'; name: string };

/** Sends one datagram (with `fd` as SCM_RIGHTS if given); returns undefined on success or why it failed. */
export type DatagramSend = (address: NotifyAddress, data: Buffer, fd?: number) => string | undefined;

/** Longest STATUS= text we send; systemd reads at most a pipe buffer per datagram. */
const MAX_STATUS_CHARS = 1024;

export class Notifier {
  readonly #address: NotifyAddress | undefined;
  readonly #watchdogUsec: number | undefined;
  readonly #log: NotifyLog;
  readonly #send: DatagramSend;
  #saidDisabled = false;
  #watchdog: NodeJS.Timeout | undefined;

  private constructor(address: NotifyAddress | undefined, watchdogUsec: number | undefined, log: NotifyLog, send: DatagramSend) {
    this.#address = address;
    this.#watchdogUsec = watchdogUsec;
    this.#log = log;
    this.#send = send;
  }

  /**
   * Reads (and removes from `env`) NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. `env` is
   * normally process.env and `ownPid` process.pid. `send` replaces the transport (tests only).
   */
  static fromEnv(env: NodeJS.ProcessEnv, ownPid: number, log: NotifyLog, send: DatagramSend = sendDatagram): Notifier {
    const socketText = env['NOTIFY_SOCKET'];
    const usecText = env['WATCHDOG_USEC'];
    const pidText = env['WATCHDOG_PID'];
    const fdStoreText = env['FDSTORE'];
    delete env['NOTIFY_SOCKET'];
    delete env['WATCHDOG_USEC'];
    delete env['WATCHDOG_PID'];
    delete env['FDSTORE'];

    let address: NotifyAddress | undefined;
    if (socketText !== undefined && socketText !== '') {
      address = parseNotifySocket(socketText);
      if (address === undefined) log.warn(`NOTIFY_SOCKET="${socketText}" is neither an absolute path nor an abstract @name: notifications off`);
    }
    let watchdogUsec: number | undefined;
    if (usecText !== undefined) {
      const usec = /^[0-9]{1,15}$/.test(usecText) ? Number(usecText) : 0;
      const forUs = pidText === undefined || pidText === String(ownPid);
      if (usec <= 0) log.warn(`WATCHDOG_USEC="${usecText}" is not a positive number of microseconds: no watchdog pings`);
      else if (!forUs) log.info(`WATCHDOG_PID=${pidText} is not this process (${ownPid}): no watchdog pings`);
      else watchdogUsec = usec;
    }
    const notifier = new Notifier(address, watchdogUsec, log, send);
    if (fdStoreText !== undefined && /^[0-9]{1,9}$/.test(fdStoreText) && Number(fdStoreText) > 0) notifier.#fdStoreMax = Number(fdStoreText);
    return notifier;
  }

  #fdStoreMax: number | undefined;

  /** FDSTORE= as systemd set it (the store's size; systemd >= 254), or undefined: no store said. */
  get fdStoreMax(): number | undefined {
    return this.#fdStoreMax;
  }

  /** Whether a supervisor listens (NOTIFY_SOCKET was usable). */
  get enabled(): boolean {
    return this.#address !== undefined;
  }

  /** The watchdog interval systemd asked for, in microseconds (undefined: none). */
  get watchdogUsec(): number | undefined {
    return this.#watchdogUsec;
  }

  /** Start-up (or a reload) is complete: call only once the journal is restored and sockets serve. */
  ready(status: string): void {
    this.#notify(['READY=1', statusLine(status)]);
  }

  /** A one-line summary shown by `systemctl status`. */
  status(text: string): void {
    this.#notify([statusLine(text)]);
  }

  stopping(status?: string): void {
    this.#notify(['STOPPING=1', ...(status === undefined ? [] : [statusLine(status)])]);
  }

  /**
   * A reload (SIGHUP: policy re-read) begins. MONOTONIC_USEC is CLOCK_MONOTONIC in µs, which
   * is what process.hrtime.bigint() reads on Linux (libuv's uv_hrtime). Call ready() after.
   */
  reloading(status?: string): void {
    const monotonicUsec = process.hrtime.bigint() / 1000n;
    this.#notify(['RELOADING=1', `MONOTONIC_USEC=${monotonicUsec}`, ...(status === undefined ? [] : [statusLine(status)])]);
  }

  /**
   * Pings WATCHDOG=1 now and then every WATCHDOG_USEC/2 from an unref'd timer, so a wedged
   * event loop stops the pings. Returns the interval in ms, or undefined when no watchdog was
   * asked for (or no supervisor listens). Calling it again restarts the timer.
   */
  startWatchdog(): number | undefined {
    this.stopWatchdog();
    if (this.#watchdogUsec === undefined || this.#address === undefined) return undefined;
    const intervalMs = Math.max(1, Math.floor(this.#watchdogUsec / 2000));
    this.#notify(['WATCHDOG=1']);
    this.#watchdog = setInterval(() => this.#notify(['WATCHDOG=1']), intervalMs).unref();
    return intervalMs;
  }

  /** FDSTORE=1: systemd keeps a copy of `fd` under `name` across restarts (FileDescriptorStoreMax= in the unit). */
  store(name: string, fd: number): void {
    this.#notify(['FDSTORE=1', `FDNAME=${name}`, 'FDPOLL=0'], fd);
  }

  /** FDSTOREREMOVE=1: systemd closes its copy of `name`. */
  remove(name: string): void {
    this.#notify(['FDSTOREREMOVE=1', `FDNAME=${name}`]);
  }

  stopWatchdog(): void {
    if (this.#watchdog !== undefined) clearInterval(this.#watchdog);
    this.#watchdog = undefined;
  }

  #notify(lines: string[], fd?: number): void {
    const address = this.#address;
    if (address === undefined) {
      if (!this.#saidDisabled) {
        this.#saidDisabled = true;
        this.#log.info('no usable NOTIFY_SOCKET (not started by systemd as Type=notify): readiness and watchdog notifications are off');
      }
      return;
    }
    const data = Buffer.from(lines.join('\n'), 'utf8');
    const failure = fd === undefined ? this.#send(address, data) : this.#send(address, data, fd);
    if (failure !== undefined) {
      const where = address.kind === 'path' ? address.path : `@${address.name}`;
      this.#log.warn(`sd_notify to ${where} failed (${lines[0] ?? ''}): ${failure}`);
    }
  }
}

/** "@name" -> abstract; "/abs/path" -> path; anything else (relative, vsock:...) -> undefined. */
export function parseNotifySocket(text: string): NotifyAddress | undefined {
  if (text.startsWith('@') && text.length > 1) return { kind: 'abstract', name: text.slice(1) };
  if (text.startsWith('/')) return { kind: 'path', path: text };
  return undefined;
}

/** "STATUS=" + text on one line (CR/LF/NUL become spaces), at most MAX_STATUS_CHARS chars. */
function statusLine(text: string): string {
  const oneLine = text.replace(/[\r\n\0]+/g, ' ');
  return `STATUS=${oneLine.length > MAX_STATUS_CHARS ? `${oneLine.slice(0, MAX_STATUS_CHARS - 3)}...` : oneLine}`;
}

interface UnixDgramSocket {
  send(buf: Buffer, offset: number, length: number, path: string, callback: (err?: Error) => void): void;
  close(): void;
}
interface UnixDgram {
  createSocket(type: 'unix_dgram'): UnixDgramSocket;
}

let unixDgram: UnixDgram | undefined;

/** The default transport: unix-dgram for paths, the native helper for abstract names. */
export function sendDatagram(address: NotifyAddress, data: Buffer, fd?: number): string | undefined {
  if (address.kind === 'abstract' || fd !== undefined) {
    try {
      if (fd !== undefined) {
        const abstract = address.kind === 'abstract';
        sendDatagramWithFd(address.kind === 'abstract' ? address.name : address.path, abstract, data, fd);
      } else sendAbstractDatagram(address.kind === 'abstract' ? address.name : address.path, data);
      return undefined;
    } catch (error) {
      if (error instanceof SysError) return error.code;
      throw error;
    }
  }
  unixDgram ??= createRequire(import.meta.url)('unix-dgram') as UnixDgram;
  let socket: UnixDgramSocket;
  try {
    socket = unixDgram.createSocket('unix_dgram');
  } catch (err) {
    return `socket: ${err instanceof Error ? err.message : String(err)}`;
  }
  let failure: string | undefined;
  try {
    // The callback runs synchronously inside send(); "congestion" is EAGAIN (receiver full).
    socket.send(data, 0, data.length, address.path, (err) => {
      if (err !== undefined) failure = describeUnixDgramError(err);
    });
  } finally {
    socket.close();
  }
  return failure;
}

/** unix-dgram reports a negative errno in `code` (or 1 for congestion). */
function describeUnixDgramError(err: Error): string {
  const code = (err as Error & { code?: unknown }).code;
  if (code === 1) return 'EAGAIN (the receiver\'s queue is full)';
  return typeof code === 'number' && code < 0 ? errnoName(code) : err.message;
}
