// Drives test/lab/client/lab-client.c (the lab's test client) from the in-VM suite: spawn it
// (as root, as an unprivileged uid with no capabilities, or through a wrapper such as
// `iommufdctl exec`), send one command line, read one reply line.
//
// Invariants:
// - Replies are matched to commands strictly in order; a command never waits for another's
//   reply. A client that exits fails every pending and later command, saying how it exited
//   and what it wrote on stderr.
// - Unprivileged means: setpriv to uid/gid 65534 (nobody), no supplementary groups, every
//   capability set (inheritable, ambient, bounding) emptied; CapEff is then 0, so there is
//   no CAP_IPC_LOCK and no CAP_SYS_RESOURCE. Tests check `caps` rather than trust this.
// - Fd ownership: an fd handed to the child (`passFd`) stays owned by the caller, which
//   closes its own copy; the child's copy is its fd 3 and dies with it.
// - Every wait is bounded (the `timeoutMs` of a command); nothing here sleeps.
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';

/** Where guest-suite put the compiled client (the lab export). */
export const LAB_CLIENT = process.env['LAB_CLIENT'] ?? '/run/lab/bin/lab-client';
export const NOBODY = 65534;
export const UNPRIVILEGED_PREFIX: readonly string[] = [
  'setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups',
  '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--',
];

export type Reply =
  | { ok: true; words: string[]; line: string }
  | { ok: false; errno: string; detail: string; line: string };

export interface SpawnOptions {
  /** Run as uid/gid 65534 with no capabilities (default true). */
  unprivileged?: boolean;
  /** An fd of ours the child gets as its fd 3 (and `--fd 3`). We keep ownership of ours. */
  passFd?: number;
  /** Fds of ours the child gets as its fds 3, 4, ... (`--fd 3`; `fd N` switches). We keep ours. */
  passFds?: readonly number[];
  /**
   * Instead of running lab-client directly, run this argv (it must end up exec'ing lab-client
   * in the same process, e.g. `iommufdctl exec ... -- LAB_CLIENT --fd {iommufd}`).
   */
  argv?: readonly string[];
  /** Per-command time-out (default 120 s: TCG is slow, Node start-up inside the VM more so). */
  timeoutMs?: number;
}

export class LabClient {
  readonly child: ChildProcess;
  #pending: Array<{ resolve: (r: Reply) => void; reject: (e: Error) => void; command: string }> = [];
  #stderr = '';
  #exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  #exitInfo: string | undefined;
  readonly #timeoutMs: number;

  private constructor(child: ChildProcess, timeoutMs: number) {
    this.child = child;
    this.#timeoutMs = timeoutMs;
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => { this.#stderr += chunk; });
    if (child.stdout === null) throw new Error('lab-client spawned without a stdout pipe');
    createInterface({ input: child.stdout }).on('line', (line) => this.#onLine(line));
    this.#exited = new Promise((resolve) => {
      child.on('exit', (code, signal) => {
        this.#exitInfo = `lab-client exited (code ${String(code)}, signal ${String(signal)}); stderr: ${this.#stderr.trim() || '(empty)'}`;
        for (const p of this.#pending.splice(0)) p.reject(new Error(`${this.#exitInfo}; command was: ${p.command}`));
        resolve({ code, signal });
      });
    });
    child.on('error', (e) => {
      this.#exitInfo = `lab-client could not start: ${e.message}`;
      for (const p of this.#pending.splice(0)) p.reject(new Error(this.#exitInfo));
    });
  }

  static spawn(opts: SpawnOptions = {}): LabClient {
    const unprivileged = opts.unprivileged ?? true;
    const passed = opts.passFds ?? (opts.passFd === undefined ? [] : [opts.passFd]);
    const clientArgv = opts.argv ?? [LAB_CLIENT, ...(passed.length === 0 ? [] : ['--fd', '3'])];
    const argv = [...(unprivileged ? UNPRIVILEGED_PREFIX : []), ...clientArgv];
    const [file, ...args] = argv;
    if (file === undefined) throw new Error('empty argv');
    const stdio: Array<'pipe' | number> = ['pipe', 'pipe', 'pipe'];
    stdio.push(...passed);
    const child = spawn(file, args, { stdio, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', HOME: '/tmp' } });
    return new LabClient(child, opts.timeoutMs ?? 120_000);
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error(this.#exitInfo ?? 'lab-client has no pid');
    return this.child.pid;
  }

  get stderr(): string { return this.#stderr; }

  #onLine(line: string): void {
    // A wrapper (e.g. iommufdctl before its exec) may print lines of its own: not replies.
    const reply = parseReply(line);
    const p = reply === undefined ? undefined : this.#pending.shift();
    if (reply === undefined || p === undefined) {
      this.#stderr += `(stdout, not a reply) ${line}\n`;
      return;
    }
    p.resolve(reply);
  }

  /** Sends one command and resolves with its reply (ok or err); rejects only if the client dies or times out. */
  command(command: string): Promise<Reply> {
    if (this.#exitInfo !== undefined) return Promise.reject(new Error(`${this.#exitInfo}; command was: ${command}`));
    const stdin = this.child.stdin;
    if (stdin === null) return Promise.reject(new Error('lab-client has no stdin pipe'));
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => {
        // Replies can no longer be matched to commands: the client is done for.
        this.#exitInfo = `lab-client gave no reply to '${command}' within ${this.#timeoutMs} ms; stderr: ${this.#stderr.trim() || '(empty)'}`;
        for (const p of this.#pending.splice(0)) p.reject(new Error(this.#exitInfo));
        this.child.kill('SIGKILL');
      }, this.#timeoutMs);
      this.#pending.push({
        command,
        resolve: (r) => { clearTimeout(timer); resolve(r); },
        reject: (e) => { clearTimeout(timer); reject(e); },
      });
      stdin.write(`${command}\n`);
    });
  }

  /** Sends a command that must succeed; returns the words after "ok". */
  async ok(command: string): Promise<string[]> {
    const r = await this.command(command);
    if (!r.ok) throw new Error(`lab-client '${command}' failed: ${r.line}`);
    return r.words;
  }

  /** Sends a command that must succeed and returns its first word as a number. */
  async okNumber(command: string): Promise<number> {
    const [first] = await this.ok(command);
    const n = Number(first);
    if (first === undefined || !Number.isSafeInteger(n)) throw new Error(`lab-client '${command}' replied with no number: ${String(first)}`);
    return n;
  }

  /** The errno name a command failed with, or 'OK' if it succeeded (so asserts show both). */
  async errnoOf(command: string): Promise<string> {
    const r = await this.command(command);
    return r.ok ? 'OK' : r.errno;
  }

  /** VmLck and VmPin of the client, in bytes. */
  async vm(): Promise<{ lockedBytes: number; pinnedBytes: number }> {
    const [lck, pin] = (await this.ok('vm')).map(Number);
    if (lck === undefined || pin === undefined) throw new Error('vm reply incomplete');
    return { lockedBytes: lck, pinnedBytes: pin };
  }

  /** RLIMIT_MEMLOCK of the client (-1 = unlimited). */
  async rlimit(): Promise<{ soft: number; hard: number }> {
    const [soft, hard] = (await this.ok('rlimit-get')).map(Number);
    if (soft === undefined || hard === undefined) throw new Error('rlimit-get reply incomplete');
    return { soft, hard };
  }

  /** Asks the client to exit and waits for it. */
  async exit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.#exitInfo === undefined) this.child.stdin?.end('exit\n');
    return this.#exited;
  }

  /** Kills the client (cleanup after a failed test) and waits for it. */
  async kill(): Promise<void> {
    if (this.#exitInfo === undefined && this.child.exitCode === null) this.child.kill('SIGKILL');
    await this.#exited;
  }
}

/** A Varlink reply as it came off the wire (validated by the tests that read it). */
export interface VarlinkReply {
  parameters?: Record<string, unknown>;
  error?: string;
}

/** A reply line ("ok ..." / "err ERRNO ..."), or undefined for any other line. */
export function parseReply(line: string): Reply | undefined {
  const [head, ...rest] = line.split(' ');
  if (head === 'ok') return { ok: true, words: rest, line };
  if (head === 'err') {
    const [errno, ...detail] = rest;
    return { ok: false, errno: errno ?? 'EUNKNOWN', detail: detail.join(' '), line };
  }
  return undefined;
}
