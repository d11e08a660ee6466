// Test support: a scripted Varlink peer standing in for the broker, so the client's handling
// of every kind of reply (good, refused, malformed, late, missing) can be driven exactly.
//
// Invariants:
// - Every call the client sends must pass the daemon's own decodeCall; a call that does not is
//   recorded as `rejected` (tests assert there are none).
// - fd ownership: fds that arrive with a call are described (readlink, and the pid if it is a
//   pidfd) and closed at once; fds in an action belong to the fake from then on (sent by
//   UnixConnection.send, which closes them). close() closes the listener and every connection.
// - Calls on one connection are answered in order, each after the previous action settled, so
//   a script can hold a reply back (e.g. until the client has pipelined more calls).
import { mkdtempSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd, pidOfPidfd } from '../../native/sys.ts';
import { UnixConnection, UnixServer } from '../../native/socket.ts';
import { decodeCall } from '../../protocol/decode.ts';
import { encodeError, encodeReply } from '../../protocol/encode.ts';
import { FrameDecoder, type Frame } from '../../protocol/framing.ts';
import type { ErrorParametersOf, QualifiedErrorName } from '../../protocol/method-table.ts';

export interface ReceivedCall {
  /** The calling process (SO_PEERCRED of its connection). */
  peerPid: number;
  method: string;
  parameters: Record<string, unknown>;
  /** What each fd that came with the call pointed at (readlink of /proc/self/fd/N). */
  fdLinks: string[];
  /** For each fd that was a pidfd, the pid it named (undefined for other fds). */
  fdPids: (number | undefined)[];
}

export type Action =
  | { reply: Record<string, unknown>; fds?: number[] }
  | { error: QualifiedErrorName; parameters: Record<string, unknown>; fds?: number[] }
  | { raw: Buffer; fds?: number[]; thenEnd?: boolean }
  | 'hang'
  | 'close';

export type Script = (call: ReceivedCall, index: number) => Action | Promise<Action>;

function describeFd(fd: number): { link: string; pid: number | undefined } {
  const link = readlinkSync(`/proc/self/fd/${fd}`);
  let pid: number | undefined;
  try {
    pid = pidOfPidfd(fd);
  } catch {
    pid = undefined;
  }
  return { link, pid };
}

export class FakeBroker {
  readonly calls: ReceivedCall[] = [];
  /** Frames that decodeCall refused (the client sent something invalid). */
  readonly rejected: string[] = [];
  readonly #connections = new Set<UnixConnection>();
  readonly #callWaiters: { n: number; resolve: () => void }[] = [];

  private constructor(readonly dir: string, readonly socket: string, private readonly server: UnixServer, private readonly script: Script) {
    server.on('connection', (conn: UnixConnection) => this.#serve(conn));
  }

  static start(script: Script): FakeBroker {
    const dir = mkdtempSync(join(tmpdir(), 'iommufd-fake-broker-'));
    const socket = join(dir, 'broker.sock');
    // closeOffLoop: false: a trusted in-process double; its closes stay synchronous so the fd-leak checks right after close() are exact.
    const server = UnixServer.listen(socket, { mode: 0o600, backlog: 16, closeOffLoop: false });
    return new FakeBroker(dir, socket, server, script);
  }

  /** Resolves once `n` calls have arrived (across connections). */
  waitForCalls(n: number): Promise<void> {
    if (this.calls.length >= n) return Promise.resolve();
    return new Promise((resolve) => this.#callWaiters.push({ n, resolve }));
  }

  close(): void {
    for (const c of this.#connections) c.close();
    this.#connections.clear();
    this.server.close();
    rmSync(this.dir, { recursive: true, force: true });
  }

  #serve(conn: UnixConnection): void {
    this.#connections.add(conn);
    const decoder = new FrameDecoder();
    const peerPid = conn.peerCred().pid;
    let chain = Promise.resolve();
    conn.on('data', (chunk: Buffer, fds: number[]) => {
      for (const frame of decoder.push(chunk, fds)) {
        const call = this.#record(frame, peerPid);
        const index = this.calls.length - 1;
        chain = chain.then(async () => this.#act(conn, call === undefined ? 'close' : await this.script(call, index)));
      }
    });
    conn.on('end', () => conn.close());
    conn.on('error', () => conn.close());
    conn.on('close', () => {
      this.#connections.delete(conn);
      decoder.takeHeldFds().forEach(closeFd);
    });
  }

  #record(frame: Frame, peerPid: number): ReceivedCall | undefined {
    const described = frame.fds.map(describeFd);
    const decoded = decodeCall(frame);
    frame.fds.forEach(closeFd);
    if (decoded.kind === 'rejection') {
      this.rejected.push(`${decoded.error.name}: ${JSON.stringify(decoded.error.parameters)}`);
      return undefined;
    }
    const call: ReceivedCall = {
      peerPid,
      method: decoded.method,
      parameters: decoded.parameters as Record<string, unknown>,
      fdLinks: described.map((d) => d.link),
      fdPids: described.map((d) => d.pid),
    };
    this.calls.push(call);
    for (const w of this.#callWaiters.filter((x) => this.calls.length >= x.n)) w.resolve();
    return call;
  }

  #act(conn: UnixConnection, action: Action): void {
    if (action === 'hang') return;
    if (action === 'close' || conn.closed) {
      if (typeof action === 'object') action.fds?.forEach(closeFd);
      conn.close();
      return;
    }
    const bytes = 'reply' in action ? encodeReply(action.reply)
      : 'error' in action ? encodeError(action.error, action.parameters as ErrorParametersOf<QualifiedErrorName>)
        : action.raw;
    conn.send(bytes, action.fds ?? []);
    if ('raw' in action && action.thenEnd === true) conn.end();
  }
}

/** A lease as the daemon would send it. */
export function wireLease(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    id: 'l-0123456789abcdef', name: 'vm1', pid: process.pid, uid: 0, ownerUid: 0,
    memoryBytes: 1024 ** 3, limitBytes: 2 * 1024 ** 3, accountingMode: 'none', deviceKind: 'simulated',
    createdAt: '2026-01-02T03:04:05.000Z', ...over,
  };
}

/** A Status reply as the daemon would send it. */
export function wireStatus(leases = 0): Record<string, unknown> {
  return {
    version: '0.1.0',
    device: { kind: 'simulated', path: 'simulated', rlimitModeSupported: null, perFdLimitOption: null, note: 'test' },
    capabilities: { sysResource: false, note: 'test' },
    budget: { totalBytes: 8 * 1024 ** 3, usedBytes: 0, freeBytes: 8 * 1024 ** 3, releasedBytes: 0 },
    leases, overheadBytes: 1024 ** 3,
  };
}
