// The processes a benchmark runs: the C programs (built here), the C reference broker, the real
// daemon, and the load client, which prints one JSON object per run.
//
// Invariants:
// - Every server is started on its own socket in a directory the caller owns, and is ready
//   only when it has answered a GetInfo (load-client first-reply), never after a sleep.
// - The daemon runs as in production but on the simulated device (a memfd per lease: the
//   sockets, pidfds, rlimits and journal are real), with its log on /dev/null: it still
//   formats and writes every audit line, as it would to journald.
// - Load that opens for itself runs capability-less (setpriv), like an unprivileged QEMU: the
//   daemon refuses targets holding CAP_IPC_LOCK.
// - A child that fails says how, with its stderr; stop() always resolves once it has exited.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildC } from './c-build.ts';

export const REPO = fileURLToPath(new URL('..', import.meta.url));
const DAEMON = join(REPO, 'bin', 'iommufd-brokerd');
export const STRIP = ['setpriv', '--inh-caps=-all', '--ambient-caps=-all', '--bounding-set=-all', '--'] as const;

export interface Programs { ref: string; load: string; hold: string }

export function buildPrograms(): Programs {
  return {
    ref: buildC(join(REPO, 'bench/ref-broker.c')),
    load: buildC(join(REPO, 'bench/load-client.c')),
    hold: buildC(join(REPO, 'bench/hold-targets.c')),
  };
}

export interface Server {
  /** c-ref-group: the C reference with group commit (one fdatasync per batch of records). */
  kind: 'c-ref' | 'c-ref-group' | 'node';
  socket: string;
  pid: number;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** Runs a program to completion and parses the last line of its stdout as JSON. */
export function runJson<T>(argv: readonly string[], stdin?: string): Promise<T> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('runJson: empty argv');
  const child = spawn(cmd, args, { stdio: [stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => { out += c; });
  child.stderr?.setEncoding('utf8').on('data', (c: string) => { err += c; });
  if (stdin !== undefined) child.stdin?.end(stdin);
  return new Promise((resolve, reject) => {
    child.on('exit', (code, signal) => {
      const last = out.trim().split('\n').pop() ?? '';
      if (code !== 0) {
        reject(new Error(`${argv.join(' ')} exited ${code ?? signal}: ${err.trim()} ${last}`));
        return;
      }
      try {
        resolve(JSON.parse(last) as T);
      } catch {
        reject(new Error(`${argv.join(' ')} printed no JSON: ${out.slice(-300)} ${err.trim()}`));
      }
    });
  });
}

function exitOf(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => child.once('exit', () => resolve()));
}

async function ready(programs: Programs, child: ChildProcess, socket: string, stderr: () => string): Promise<void> {
  const died = exitOf(child).then(() => { throw new Error(`server exited before it answered: ${stderr()}`); });
  await Promise.race([runJson([programs.load, 'first-reply', socket, '60000']), died]);
}

function wrap(kind: Server['kind'], child: ChildProcess, socket: string): Server {
  const pid = child.pid;
  if (pid === undefined) throw new Error(`${kind}: spawn failed`);
  return {
    kind, socket, pid,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      await exitOf(child);
    },
  };
}

/** The C reference broker on dir/ref.sock, journaling into journalDir (group: group commit). */
export async function startRef(programs: Programs, dir: string, journalDir: string, group = false): Promise<Server> {
  const socket = join(dir, 'ref.sock');
  const child = spawn(programs.ref, [socket, journalDir, ...(group ? ['group'] : [])], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  await ready(programs, child, socket, () => stderr);
  return wrap(group ? 'c-ref-group' : 'c-ref', child, socket);
}

/** The real daemon (simulated device) on dir/broker.sock with its journal in stateDir. */
export async function startDaemon(programs: Programs, dir: string, stateDir: string, extraArgs: readonly string[] = []): Promise<Server> {
  const socket = join(dir, 'broker.sock');
  const env = { ...process.env };
  for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID', 'LISTEN_FDNAMES']) delete env[k];
  const child = spawn(DAEMON, ['--socket', socket, '--state-dir', stateDir, '--device', 'simulated',
    '--overhead', '1M', '--budget', '64G', ...extraArgs], { stdio: ['ignore', 'ignore', 'pipe'], env, cwd: REPO });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  await ready(programs, child, socket, () => stderr);
  return wrap('node', child, socket);
}

/** Spawns and resolves when the child exits (for `node -e 0`), in nanoseconds. */
export async function timeToExit(argv: readonly string[]): Promise<number> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error('timeToExit: empty argv');
  const t0 = process.hrtime.bigint();
  const child = spawn(cmd, args, { stdio: 'ignore' });
  await exitOf(child);
  if (child.exitCode !== 0) throw new Error(`${argv.join(' ')} exited ${String(child.exitCode ?? child.signalCode)}`);
  return Number(process.hrtime.bigint() - t0);
}

export { DAEMON, exitOf };
