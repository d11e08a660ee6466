// Test support: a scripted QMP peer standing in for QEMU, so the hotplug step machine can be
// driven through every failure (refusals, silence, a closed socket, events early, late or never).
//
// Invariants:
// - It greets like QEMU, answers qmp_capabilities itself, and hands every other command to the
//   script; each command is recorded (name and arguments) before the script sees it.
// - An action may send events before and/or after its reply; 'hang' answers nothing, 'close'
//   ends the connection. Events can also be sent later with emit().
// - fd ownership: fds that arrive are closed at once. close() closes every connection, the
//   listener, and removes the temp dir.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { closeFd } from '../../native/sys.ts';
import { UnixConnection, UnixServer } from '../../native/socket.ts';

export interface QmpCall { execute: string; arguments: Record<string, unknown> }

export interface QmpEventOut { event: string; data?: Record<string, unknown> }

export type QmpAction =
  | { return: unknown; eventsBefore?: QmpEventOut[]; eventsAfter?: QmpEventOut[] }
  | { error: { class: string; desc: string }; eventsAfter?: QmpEventOut[] }
  | 'hang'
  | 'close';

export type QmpScript = (call: QmpCall) => QmpAction;

export class FakeQmp {
  readonly calls: QmpCall[] = [];
  readonly #conns = new Set<UnixConnection>();

  private constructor(readonly dir: string, readonly socket: string, private readonly server: UnixServer, private readonly script: QmpScript) {
    server.on('connection', (conn: UnixConnection) => this.#serve(conn));
  }

  static start(script: QmpScript): FakeQmp {
    const dir = mkdtempSync(join(tmpdir(), 'iommufd-fake-qmp-'));
    const socket = join(dir, 'qmp.sock');
    // closeOffLoop: false: a trusted in-process double (as fake-broker.ts); its closes stay
    // synchronous so the fd-leak checks right after close() are exact.
    return new FakeQmp(dir, socket, UnixServer.listen(socket, { mode: 0o600, backlog: 4, closeOffLoop: false }), script);
  }

  /** Sends an event to every connected client now. */
  emit(event: QmpEventOut): void {
    for (const c of this.#conns) this.#send(c, eventMessage(event));
  }

  close(): void {
    for (const c of this.#conns) c.close();
    this.#conns.clear();
    this.server.close();
    rmSync(this.dir, { recursive: true, force: true });
  }

  #send(conn: UnixConnection, message: unknown): void {
    if (!conn.closed) conn.send(Buffer.from(`${JSON.stringify(message)}\r\n`));
  }

  #serve(conn: UnixConnection): void {
    this.#conns.add(conn);
    let buffer = '';
    conn.on('data', (chunk: Buffer, fds: number[]) => {
      fds.forEach(closeFd);
      buffer += chunk.toString('utf8');
      for (let nl = buffer.indexOf('\n'); nl !== -1; nl = buffer.indexOf('\n')) {
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(nl + 1);
        if (line.trim() !== '') this.#onCommand(conn, JSON.parse(line) as { execute: string; arguments?: Record<string, unknown>; id?: unknown });
      }
    });
    conn.on('end', () => conn.close());
    conn.on('error', () => conn.close());
    conn.on('close', () => this.#conns.delete(conn));
    this.#send(conn, { QMP: { version: { qemu: { micro: 0, minor: 0, major: 10 }, package: 'fake' }, capabilities: [] } });
  }

  #onCommand(conn: UnixConnection, message: { execute: string; arguments?: Record<string, unknown>; id?: unknown }): void {
    if (message.execute === 'qmp_capabilities') {
      this.#send(conn, { return: {}, id: message.id });
      return;
    }
    const call = { execute: message.execute, arguments: message.arguments ?? {} };
    this.calls.push(call);
    const action = this.script(call);
    if (action === 'hang') return;
    if (action === 'close') {
      conn.close();
      return;
    }
    if ('return' in action) for (const e of action.eventsBefore ?? []) this.#send(conn, eventMessage(e));
    this.#send(conn, 'return' in action ? { return: action.return, id: message.id } : { error: action.error, id: message.id });
    for (const e of action.eventsAfter ?? []) this.#send(conn, eventMessage(e));
  }
}

function eventMessage(e: QmpEventOut): Record<string, unknown> {
  return { event: e.event, data: e.data ?? {}, timestamp: { seconds: 1, microseconds: 0 } };
}
