// Test support: a raw Varlink peer for hostile tests. It writes whatever bytes and fds it is
// told to (no client-side validation), and records what the daemon sends back.
//
// Invariants:
// - The socket fd belongs to the UnixConnection inside; fds passed to send() belong to it from
//   that call on (closed once sent or when it closes). Fds that arrive with replies are closed
//   at once and only counted: nothing received outlives the peer.
// - Replies are NUL-separated frames parsed as JSON; a frame that is not JSON is kept as
//   {unparsable: text} so the caller can fail on it with the evidence.
// - Every wait has a hang guard: it rejects with what was seen so far instead of hanging.
import { native } from '../../../native/binding.ts';
import { UnixConnection } from '../../../native/socket.ts';

export type Reply = Record<string, unknown>;

export class RawPeer {
  readonly replies: Reply[] = [];
  /** fds that arrived with replies (already closed). */
  receivedFds = 0;
  /** The daemon closed its side (EOF) or the connection failed. */
  ended = false;
  error: Error | undefined;
  readonly #conn: UnixConnection;
  #pending: Buffer = Buffer.alloc(0);
  #wake: (() => void) | undefined;

  private constructor(conn: UnixConnection) {
    this.#conn = conn;
    conn.on('data', (chunk: Buffer, fds: number[]) => {
      for (const fd of fds) native.close(fd);
      this.receivedFds += fds.length;
      this.#pending = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
      let nul: number;
      while ((nul = this.#pending.indexOf(0)) >= 0) {
        this.replies.push(parseReply(this.#pending.subarray(0, nul)));
        this.#pending = this.#pending.subarray(nul + 1);
      }
      this.#wake?.();
    });
    conn.on('end', () => { this.ended = true; this.#wake?.(); });
    conn.on('error', (err: Error) => { this.error = err; this.ended = true; this.#wake?.(); });
    conn.on('close', () => { this.ended = true; this.#wake?.(); });
  }

  static connect(socket: string): RawPeer {
    return new RawPeer(UnixConnection.connect(socket));
  }

  /** The socket fd (for shutdown(2) and the like); owned by this peer. */
  get fd(): number {
    return this.#conn.fd;
  }

  /** Sends bytes with fds attached to their first byte; takes ownership of the fds. */
  send(data: Buffer, fds: readonly number[] = []): void {
    this.#conn.send(data, fds);
  }

  /** shutdown(SHUT_WR): the daemon sees EOF on its read side; we can still read. No-op once closed. */
  shutdownWrite(): void {
    if (this.#conn.closed) return;
    const r = native.shutdownWrite(this.#conn.fd);
    if (r < 0) throw new Error(`shutdown(SHUT_WR) failed: ${r}`);
  }

  /** Stops reading: the daemon's replies pile up in the kernel, then in the daemon. */
  pause(): void {
    this.#conn.pause();
  }

  resume(): void {
    this.#conn.resume();
  }

  /** Resolves once `count` replies arrived or the daemon closed; rejects after guardMs. */
  async until(count: number, guardMs = 15_000): Promise<void> {
    await this.#waitFor(() => this.replies.length >= count || this.ended, guardMs, `${count} replies`);
  }

  /** Resolves once the daemon closed the connection; rejects after guardMs. */
  async untilEnded(guardMs = 15_000): Promise<void> {
    await this.#waitFor(() => this.ended, guardMs, 'the daemon to close the connection');
  }

  close(): void {
    this.#conn.close();
  }

  async #waitFor(done: () => boolean, guardMs: number, what: string): Promise<void> {
    const deadline = Date.now() + guardMs;
    while (!done()) {
      if (Date.now() > deadline) {
        throw new Error(`hang guard: no ${what} within ${guardMs} ms; replies so far: ${JSON.stringify(this.replies).slice(0, 500)}`);
      }
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 100).unref();
      });
      this.#wake = undefined;
    }
  }
}

function parseReply(bytes: Buffer): Reply {
  const text = bytes.toString('utf8');
  try {
    const value: unknown = JSON.parse(text);
    if (typeof value === 'object' && value !== null && !Array.isArray(value)) return value as Reply;
    return { unparsable: text.slice(0, 200) };
  } catch {
    return { unparsable: text.slice(0, 200) };
  }
}

/** One Varlink frame: JSON and its NUL. */
export function frame(value: unknown): Buffer {
  return Buffer.from(`${JSON.stringify(value)}\0`);
}

export function call(method: string, parameters?: Record<string, unknown>): Buffer {
  return frame(parameters === undefined ? { method } : { method, parameters });
}

export const GET_INFO = call('org.varlink.service.GetInfo');

/** The error name of a reply, or undefined for a success reply. */
export function errorOf(reply: Reply | undefined): string | undefined {
  const e = reply?.['error'];
  return typeof e === 'string' ? e : undefined;
}

/** True for a GetInfo success reply. */
export function isGetInfoReply(reply: Reply | undefined): boolean {
  const p = reply?.['parameters'] as { interfaces?: unknown } | undefined;
  return reply !== undefined && reply['error'] === undefined && Array.isArray(p?.interfaces);
}
