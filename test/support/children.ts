// Test support: real child processes as targets and clients.
//
// Invariants:
// - A "stripped" child runs through setpriv with every capability dropped (no CAP_IPC_LOCK,
//   CapEff 0) under our own uid, so the daemon (same uid, no CAP_SYS_RESOURCE here) may lower
//   its limits — the host's stand-in for an unprivileged QEMU.
// - An "other-uid" child runs as nobody (65534): a peer for permission checks.
import { createInterface } from 'node:readline';
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { REPO } from './daemon.ts';

export const NOBODY = 65534;

export interface ChildOptions { uid?: number }

/** Runs a TypeScript file (path relative to the repo) under node+tsx, capabilities dropped. */
export function spawnStripped(script: string, args: string[], opts: ChildOptions = {}): ChildProcess {
  const ids = opts.uid === undefined ? [] : [`--reuid=${opts.uid}`, `--regid=${opts.uid}`, '--clear-groups'];
  return spawn('setpriv', [...ids, '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--',
    process.execPath, '--import', 'tsx', join(REPO, script), ...args],
  { stdio: ['pipe', 'pipe', 'pipe'], cwd: REPO });
}

/** Reads JSON lines from a child's stdout, one at a time. */
export class LineReader {
  #lines: string[] = [];
  #wake: (() => void) | undefined;
  #ended = false;
  stderr = '';

  constructor(readonly child: ChildProcess) {
    if (child.stdout !== null) {
      createInterface({ input: child.stdout }).on('line', (line) => {
        this.#lines.push(line);
        this.#wake?.();
      });
    }
    child.stderr?.setEncoding('utf8').on('data', (c: string) => { this.stderr += c; });
    child.on('exit', () => { this.#ended = true; this.#wake?.(); });
  }

  async next<T>(timeoutMs = 20_000): Promise<T> {
    const deadline = Date.now() + timeoutMs;
    while (this.#lines.length === 0) {
      if (this.#ended) throw new Error(`child exited without output; stderr: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`no output from child in ${timeoutMs} ms; stderr: ${this.stderr}`);
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        setTimeout(resolve, 200).unref();
      });
    }
    return JSON.parse(this.#lines.shift() ?? '') as T;
  }

  send(line: string): void {
    this.child.stdin?.write(`${line}\n`);
  }
}

export function exited(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.on('exit', (code) => resolve(code)));
}
