// The real daemon inside the lab VM: bin/iommufd-brokerd on the real /dev/iommu, as root
// (with every capability, CAP_SYS_RESOURCE included), on a socket every uid may connect to.
//
// Invariants:
// - One LabBroker directory (socket + state dir) may outlive a daemon process: `restart()`
//   starts a new daemon on the same state dir, which is how re-adoption is tested.
// - Readiness is the daemon's own "serving" log line, never a sleep; every wait is bounded.
// - Small sizes (TCG is slow and the VM has 1 GiB): the overhead is set with --overhead so
//   limits are a few MiB, and the budget with --budget so Status numbers are exact.
// - The child's stdout (pino JSON) is kept line by line; stderr is kept for failure messages.
import { createInterface } from 'node:readline';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, chmodSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../../..', import.meta.url));
export const DAEMON = join(REPO, 'bin', 'iommufd-brokerd');
export const CTL = join(REPO, 'bin', 'iommufdctl');
export const PAGE = 4096;
export const MiB = 1024 * 1024;

export interface LabBrokerOptions {
  overheadBytes: number;
  budgetBytes: number;
}

interface LogLine { msg?: unknown; [key: string]: unknown }

export class LabBroker {
  readonly socket: string;
  readonly stateDir: string;
  #child: ChildProcess | undefined;
  #logs: LogLine[] = [];
  #stderr = '';
  #exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }> = Promise.resolve({ code: null, signal: null });

  private constructor(readonly dir: string, readonly opts: LabBrokerOptions) {
    this.socket = join(dir, 'broker.sock');
    this.stateDir = join(dir, 'state');
  }

  /** Starts a daemon in a fresh directory under /run (a tmpfs in the VM). */
  static async start(opts: LabBrokerOptions): Promise<LabBroker> {
    mkdirSync('/run/iommufd-lab', { recursive: true });
    const dir = mkdtempSync('/run/iommufd-lab/broker-');
    chmodSync(dir, 0o755); // unprivileged clients must reach the socket inside
    const broker = new LabBroker(dir, opts);
    await broker.#spawn();
    return broker;
  }

  get pid(): number {
    const pid = this.#child?.pid;
    if (pid === undefined) throw new Error('the daemon is not running');
    return pid;
  }

  /** Log lines (parsed pino JSON) of the current daemon process. */
  get logs(): readonly LogLine[] { return this.#logs; }

  async #spawn(): Promise<void> {
    this.#logs = [];
    this.#stderr = '';
    const args = [
      '--socket', this.socket, '--socket-mode', '0666', '--state-dir', this.stateDir,
      '--device', '/dev/iommu', '--overhead', String(this.opts.overheadBytes), '--budget', String(this.opts.budgetBytes),
    ];
    const env = { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: process.env['HOME'] ?? '/tmp' };
    const child = spawn(DAEMON, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    this.#child = child;
    child.stderr?.setEncoding('utf8').on('data', (c: string) => { this.#stderr += c; });
    let resolveServing: (() => void) | undefined;
    const serving = new Promise<void>((resolve) => { resolveServing = resolve; });
    if (child.stdout !== null) {
      createInterface({ input: child.stdout }).on('line', (line) => {
        try {
          const parsed = JSON.parse(line) as LogLine;
          this.#logs.push(parsed);
          if (parsed.msg === 'serving') resolveServing?.();
        } catch {
          this.#stderr += `${line}\n`;
        }
      });
    }
    this.#exit = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    const died = this.#exit.then(({ code, signal }) => {
      throw new Error(`iommufd-brokerd exited (code ${String(code)}, signal ${String(signal)}) before serving; stderr: ${this.#stderr.trim()}; log: ${JSON.stringify(this.#logs)}`);
    });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`iommufd-brokerd did not log "serving" within 300 s; stderr: ${this.#stderr.trim()}`)), 300_000);
    });
    try {
      await Promise.race([serving, died, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** SIGKILLs the daemon (no clean shutdown) and waits until it is gone. */
  async kill(): Promise<void> {
    this.#child?.kill('SIGKILL');
    await this.#exit;
  }

  /** Starts a new daemon on the same socket path and state dir. */
  async restart(): Promise<void> {
    await this.#spawn();
  }

  /** SIGTERM, and the exit status. */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    const child = this.#child;
    if (child !== undefined && child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    return this.#exit;
  }
}
