// Test support: the real daemon as a child process on a temp socket with the simulated device.
//
// Invariants:
// - Each BrokerProcess has its own temp dir (socket + state dir), removed by `cleanup()`.
// - Readiness is the daemon's own "serving" log line, never a sleep.
// - Every log line is kept (parsed pino JSON) so tests can assert on audit records.
import { createInterface } from 'node:readline';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../..', import.meta.url));
export const DAEMON = join(REPO, 'bin', 'iommufd-brokerd');

export interface LogLine { level: number; msg: string; [key: string]: unknown }

export interface StartOptions {
  dir?: string;
  extraArgs?: string[];
  configText?: { name: string; text: string };
}

export class BrokerProcess {
  readonly logs: LogLine[] = [];
  #waiters: Array<{ match: (l: LogLine) => boolean; resolve: (l: LogLine) => void }> = [];
  #exit: Promise<number | null>;

  private constructor(readonly child: ChildProcess, readonly dir: string, readonly socket: string,
    readonly stateDir: string) {
    if (child.stdout !== null) createInterface({ input: child.stdout }).on('line', (line) => this.#onLine(line));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { this.stderr += chunk; });
    this.#exit = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  }

  stderr = '';

  static async start(opts: StartOptions = {}): Promise<BrokerProcess> {
    const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'iommufd-broker-test-'));
    // Other uids (the permission tests' peers) must reach the socket; the state dir stays 0700.
    chmodSync(dir, 0o755);
    const socket = join(dir, 'broker.sock');
    const stateDir = join(dir, 'state');
    const args = ['--socket', socket, '--state-dir', stateDir, '--device', 'simulated', '--socket-mode', '0666',
      ...(opts.extraArgs ?? [])];
    const env = { ...process.env };
    delete env['NOTIFY_SOCKET'];
    delete env['LISTEN_FDS'];
    delete env['LISTEN_PID'];
    const child = spawn(DAEMON, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
    const broker = new BrokerProcess(child, dir, socket, stateDir);
    await broker.waitForLog((l) => l.msg === 'serving', 20_000);
    return broker;
  }

  #onLine(line: string): void {
    let parsed: LogLine;
    try {
      parsed = JSON.parse(line) as LogLine;
    } catch {
      this.stderr += `${line}\n`;
      return;
    }
    this.logs.push(parsed);
    for (const w of this.#waiters.filter((x) => x.match(parsed))) {
      w.resolve(parsed);
    }
    this.#waiters = this.#waiters.filter((x) => !x.match(parsed));
  }

  /** Resolves with the first (past or future) log line that matches; rejects after timeoutMs. */
  waitForLog(match: (l: LogLine) => boolean, timeoutMs = 10_000): Promise<LogLine> {
    const seen = this.logs.find(match);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(
        `daemon log line not seen within ${timeoutMs} ms; stderr: ${this.stderr}; exit: ${String(this.child.exitCode)}`)), timeoutMs);
      this.#waiters.push({ match, resolve: (l) => { clearTimeout(timer); resolve(l); } });
      void this.#exit.then((code) => {
        clearTimeout(timer);
        reject(new Error(`daemon exited (${String(code)}) before the log line; stderr: ${this.stderr}`));
      });
    });
  }

  audits(kind: string): LogLine[] {
    return this.logs.filter((l) => l['audit'] === kind);
  }

  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<number | null> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.#exit;
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
