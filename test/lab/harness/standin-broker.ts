// The real daemon inside the lab VM under test/support/fdstore-standin.c, the lab's stand-in for
// systemd's fd store and restart (the VM has no systemd): the daemon gets NOTIFY_SOCKET, hands
// its kept lease FDs to the store (FDSTORE=1, FDNAME=lease-<id>), and a start after a SIGKILL
// gets them back as LISTEN_FDS / LISTEN_FDNAMES, as under FileDescriptorStorePreserve=yes.
//
// Invariants:
// - One stand-in process for the object's life; it owns the stored fds (they outlive each
//   daemon) and the daemon process; `close()` ends both (EOF on its stdin).
// - Readiness is the daemon's own "serving" log line; the stand-in's events ("store NAME
//   TARGET", "remove NAME", "started PID", "killed") are kept in order for the tests.
// - The daemon's stdout (pino JSON) reaches us through the stand-in's stderr.
import { createInterface } from 'node:readline';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync } from 'node:fs';
import { join } from 'node:path';
import { DAEMON, type LabBrokerOptions } from './lab-broker.ts';

export const STANDIN = process.env['LAB_FDSTORE_STANDIN'] ?? '/run/lab/bin/fdstore-standin';

interface LogLine { msg?: unknown; [key: string]: unknown }

export class StandinBroker {
  readonly socket: string;
  readonly events: string[] = [];
  /** Log lines of every daemon this stand-in started, in order. */
  readonly logs: LogLine[] = [];
  readonly #child: ChildProcess;
  #stderr = '';
  #wake: (() => void) | undefined;

  private constructor(readonly dir: string, opts: LabBrokerOptions) {
    this.socket = join(dir, 'broker.sock');
    const args = [
      join(dir, 'notify.sock'), DAEMON,
      '--socket', this.socket, '--socket-mode', '0666', '--state-dir', join(dir, 'state'),
      '--device', '/dev/iommu', '--overhead', String(opts.overheadBytes), '--budget', String(opts.budgetBytes),
    ];
    const env = { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: process.env['HOME'] ?? '/tmp' };
    this.#child = spawn(STANDIN, args, { stdio: ['pipe', 'pipe', 'pipe'], env });
    createInterface({ input: this.#child.stdout! }).on('line', (l) => { this.events.push(l); this.#wake?.(); });
    createInterface({ input: this.#child.stderr! }).on('line', (l) => {
      try {
        this.logs.push(JSON.parse(l) as LogLine);
      } catch {
        this.#stderr += `${l}\n`;
      }
      this.#wake?.();
    });
    this.#child.on('exit', () => this.#wake?.());
  }

  /** Starts the stand-in and a first daemon under it, in a fresh directory under /run. */
  static async start(opts: LabBrokerOptions): Promise<StandinBroker> {
    mkdirSync('/run/iommufd-lab', { recursive: true });
    const dir = mkdtempSync('/run/iommufd-lab/standin-');
    chmodSync(dir, 0o755);
    const broker = new StandinBroker(dir, opts);
    await broker.until('the stand-in listens', () => broker.events.some((e) => e.startsWith('listening ')));
    await broker.restart();
    return broker;
  }

  /** Waits (bounded) until `check` holds, failing with what was seen. */
  async until(what: string, check: () => boolean, timeoutMs = 300_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline || this.#child.exitCode !== null) {
        throw new Error(`${what}: not seen; events: ${this.events.join(' | ')}; stderr: ${this.#stderr.trim()}`);
      }
      await new Promise<void>((resolve) => { this.#wake = resolve; setTimeout(resolve, 500); });
    }
  }

  /** Starts a daemon (with the stored fds) and waits until it serves. */
  async restart(): Promise<void> {
    const served = this.logs.filter((l) => l.msg === 'serving').length;
    this.#child.stdin!.write('start\n');
    await this.until('the daemon serves', () => this.logs.filter((l) => l.msg === 'serving').length > served);
  }

  /** SIGKILLs the daemon (no clean shutdown); the stand-in keeps the stored fds. */
  async kill(): Promise<void> {
    const killed = this.events.filter((e) => e === 'killed').length;
    this.#child.stdin!.write('kill\n');
    await this.until('the daemon was killed', () => this.events.filter((e) => e === 'killed').length > killed);
  }

  /** The stand-in's stored fds now: name -> what they point at. */
  async stored(): Promise<Map<string, string>> {
    const ends = this.events.filter((e) => e === 'end').length;
    const from = this.events.length;
    this.#child.stdin!.write('list\n');
    await this.until('the store listed its fds', () => this.events.filter((e) => e === 'end').length > ends);
    const out = new Map<string, string>();
    for (const e of this.events.slice(from)) {
      const m = /^stored (\S+) (.*)$/.exec(e);
      if (m?.[1] !== undefined && m[2] !== undefined) out.set(m[1], m[2]);
    }
    return out;
  }

  /** Ends the daemon and the stand-in (which closes the stored fds). */
  async close(): Promise<void> {
    if (this.#child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.#child.on('exit', resolve));
    this.#child.stdin!.end();
    await exited;
  }
}
