// listenFdsFromEnv: in-process for the cases that must not touch any fd, and through a child
// process (activation-probe.ts) that really holds passed sockets at fds 3.. for the rest:
// inside this test process fds 3.. are Node's own.
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../../../native/binding.ts';
import { ActivationError, listenFdsFromEnv } from '../../../../daemon/shell/systemd/activation.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';

const REPO = fileURLToPath(new URL('../../../..', import.meta.url));
const PROBE = fileURLToPath(new URL('./activation-probe.ts', import.meta.url));
const NAMES = ['broker', 'admin'];

interface FdState { target: string | null; cloexec: boolean | null }
interface ProbeReport {
  pid: number;
  ok: boolean;
  sockets?: Record<string, { fd: number } & FdState>;
  warnings?: string[];
  problem?: string;
  message?: string;
  before: Record<string, FdState>;
  after: Record<string, FdState>;
  listenVariablesLeft: string[];
}

interface Probe { report: ProbeReport; stop: () => Promise<void> }

/** Probes still running; a failed assertion must not leave one behind (it would hang the run). */
const running = new Set<ChildProcess>();
afterEach(() => {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
});

/**
 * Runs the probe with `fds` as its fds 3, 4, ... and the given LISTEN_* variables. With
 * `ownPid`, LISTEN_PID is set to the probe's own pid by `sh` right before it execs node.
 */
async function runProbe(fds: number[], env: Record<string, string>, opts: { ownPid: boolean; serve?: boolean }): Promise<Probe> {
  const wrapper = opts.ownPid ? 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"' : 'exec "$@"';
  const childEnv: NodeJS.ProcessEnv = { PATH: process.env['PATH'] ?? '/usr/bin:/bin', ...env };
  const child = spawn('sh', ['-c', wrapper, 'sh', process.execPath, '--import', 'tsx', PROBE, NAMES.join(','), ...(opts.serve === true ? ['serve'] : [])],
    { cwd: REPO, env: childEnv, stdio: ['pipe', 'pipe', 'pipe', ...fds] });
  running.add(child);
  const { stdin, stdout, stderr: errStream } = child;
  if (stdin === null || stdout === null || errStream === null) throw new Error('spawn gave no stdio pipes');
  let stderr = '';
  errStream.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    stdout.setEncoding('utf8').on('data', (c: string) => {
      out += c;
      const nl = out.indexOf('\n');
      if (nl >= 0) resolve(out.slice(0, nl));
    });
    void exited.then((code) => reject(new Error(`probe exited (${code}) before reporting; stderr: ${stderr}`)));
  });
  const report = JSON.parse(line) as ProbeReport;
  return {
    report,
    stop: async () => {
      stdin.end();
      const code = await exited;
      running.delete(child);
      assert.equal(code, 0, `probe failed: ${stderr}`);
    },
  };
}

/** A listening AF_UNIX stream socket at dir/name; the test owns the returned fd. */
function listen(dir: string, name: string): number {
  const fd = native.listenUnix(join(dir, name), 8, 0o600);
  assert.ok(fd >= 0, `listenUnix ${name}: ${fd}`);
  return fd;
}

/** Connects to path and returns what the peer says before closing. */
function ask(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    createConnection(path).setEncoding('utf8').on('data', (c: string) => { text += c; }).on('end', () => resolve(text)).on('error', reject);
  });
}

async function withDir(body: (dir: string) => Promise<void>): Promise<void> {
  const fdsBefore = openFds();
  const dir = mkdtempSync(join(tmpdir(), 'activation-test-'));
  try {
    await body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(leakedSince(fdsBefore), [], 'the test process leaked fds');
}

test('not activated: nothing set, nothing returned, nothing touched', () => {
  const env: NodeJS.ProcessEnv = { PATH: '/bin' };
  const result = listenFdsFromEnv(env, process.pid, NAMES);
  assert.equal(result.fds.size, 0);
  assert.deepEqual(result.warnings, []);
  assert.deepEqual(env, { PATH: '/bin' });
});

test('LISTEN_PID of another process: fds left alone, variables removed, a warning says why', () => {
  const fdsBefore = openFds();
  const env: NodeJS.ProcessEnv = { LISTEN_PID: String(process.pid + 1), LISTEN_FDS: '2', LISTEN_FDNAMES: 'broker:admin', KEEP: 'x' };
  const result = listenFdsFromEnv(env, process.pid, NAMES);
  assert.equal(result.fds.size, 0);
  assert.equal(result.warnings.length, 1);
  assert.match(result.warnings[0] ?? '', new RegExp(`LISTEN_PID=${process.pid + 1} is not this process`));
  assert.deepEqual(env, { KEEP: 'x' });
  // The fds a wrongly-taken LISTEN_FDS=2 would close are 3 and 4 (SD_LISTEN_FDS_START). Only
  // those are compared: other fds of the runner (tsx's cache dir) may close meanwhile.
  const fdsAfter = openFds();
  for (const fd of [3, 4]) assert.equal(fdsAfter.get(fd), fdsBefore.get(fd), `fd ${fd} was left alone`);
});

test('malformed LISTEN_PID / LISTEN_FDS: ActivationError before any fd is touched', () => {
  for (const [pid, fds] of [['abc', '1'], ['-5', '1'], [String(process.pid), '-1'], [String(process.pid), '1e3'], [String(process.pid), '65'], [String(process.pid), ' 2']] as const) {
    const fdsBefore = openFds();
    const env: NodeJS.ProcessEnv = { LISTEN_PID: pid, LISTEN_FDS: fds };
    assert.throws(() => listenFdsFromEnv(env, process.pid, NAMES),
      (e: unknown) => e instanceof ActivationError && e.problem === 'MalformedEnvironment', `LISTEN_PID=${pid} LISTEN_FDS=${fds}`);
    assert.deepEqual(env, {}, 'variables are removed even when they are rejected');
    // The fds a wrongly-taken LISTEN_FDS=2 would close are 3 and 4 (SD_LISTEN_FDS_START). Only
  // those are compared: other fds of the runner (tsx's cache dir) may close meanwhile.
  const fdsAfter = openFds();
  for (const fd of [3, 4]) assert.equal(fdsAfter.get(fd), fdsBefore.get(fd), `fd ${fd} was left alone`);
  }
});

test('sockets are matched by name, not position; CLOEXEC set; served; variables gone', () => withDir(async (dir) => {
  const admin = listen(dir, 'admin.sock');
  const broker = listen(dir, 'broker.sock');
  try {
    // admin first: a position-based reader would serve the admin API on the clients' socket.
    const probe = await runProbe([admin, broker], { LISTEN_FDS: '2', LISTEN_FDNAMES: 'admin:broker' }, { ownPid: true, serve: true });
    const { report } = probe;
    assert.equal(report.ok, true, report.message);
    assert.equal(report.sockets?.['admin']?.fd, 3);
    assert.equal(report.sockets?.['broker']?.fd, 4);
    assert.equal(report.sockets?.['admin']?.target, readlinkSync(`/proc/self/fd/${admin}`));
    assert.equal(report.sockets?.['broker']?.target, readlinkSync(`/proc/self/fd/${broker}`));
    assert.equal(report.before['3']?.cloexec, false, 'the probe cleared CLOEXEC before the call');
    assert.equal(report.before['4']?.cloexec, false);
    assert.equal(report.sockets?.['admin']?.cloexec, true);
    assert.equal(report.sockets?.['broker']?.cloexec, true);
    assert.deepEqual(report.warnings, []);
    assert.deepEqual(report.listenVariablesLeft, []);
    assert.equal(await ask(join(dir, 'broker.sock')), 'broker\n');
    assert.equal(await ask(join(dir, 'admin.sock')), 'admin\n');
    await probe.stop();
  } finally {
    native.close(admin);
    native.close(broker);
  }
}));

test('a socket with an unknown name is closed and reported; the known ones are kept', () => withDir(async (dir) => {
  const fds = [listen(dir, 'b.sock'), listen(dir, 'm.sock'), listen(dir, 'a.sock')];
  try {
    const probe = await runProbe(fds, { LISTEN_FDS: '3', LISTEN_FDNAMES: 'broker:metrics:admin' }, { ownPid: true });
    const { report } = probe;
    assert.equal(report.ok, true, report.message);
    assert.deepEqual(Object.keys(report.sockets ?? {}).sort(), ['admin', 'broker']);
    assert.equal(report.sockets?.['admin']?.fd, 5);
    assert.match(report.before['4']?.target ?? '', /^socket:/);
    assert.equal(report.after['4']?.target, null, 'fd 4 ("metrics") was closed');
    assert.deepEqual(report.warnings, ['passed fd 4 is named "metrics", not one of broker, admin: closed']);
    await probe.stop();
  } finally {
    for (const fd of fds) native.close(fd);
  }
}));

test('without LISTEN_FDNAMES every socket is "unknown": none adopted, all closed', () => withDir(async (dir) => {
  const fds = [listen(dir, 'b.sock'), listen(dir, 'a.sock')];
  try {
    const probe = await runProbe(fds, { LISTEN_FDS: '2' }, { ownPid: true });
    assert.equal(probe.report.ok, true, probe.report.message);
    assert.deepEqual(probe.report.sockets, {});
    assert.equal(probe.report.warnings?.length, 2);
    assert.equal(probe.report.after['3']?.target, null);
    assert.equal(probe.report.after['4']?.target, null);
    await probe.stop();
  } finally {
    for (const fd of fds) native.close(fd);
  }
}));

test('a regular file under a known name: NotAUnixStreamSocket; the sockets are closed, the file left alone', () => withDir(async (dir) => {
  const file = join(dir, 'not-a-socket');
  writeFileSync(file, 'x');
  const fileFd = openSync(file, 'r');
  const admin = listen(dir, 'a.sock');
  try {
    const probe = await runProbe([fileFd, admin], { LISTEN_FDS: '2', LISTEN_FDNAMES: 'broker:admin' }, { ownPid: true });
    const { report } = probe;
    assert.equal(report.ok, false);
    assert.equal(report.problem, 'NotAUnixStreamSocket');
    assert.match(report.message ?? '', /passed fd 3 \("broker"\) cannot be inspected \(ENOTSOCK\)/);
    assert.equal(report.after['4']?.target, null, 'the admin socket was closed');
    assert.equal(report.after['3']?.target, file, 'a non-socket is never closed');
    await probe.stop();
  } finally {
    closeSync(fileFd);
    native.close(admin);
  }
}));

test('a datagram socket under a known name: NotAUnixStreamSocket, closed', () => withDir(async (dir) => {
  const unixDgram = createRequire(import.meta.url)('unix-dgram') as { createSocket(t: 'unix_dgram'): { fd: number; close(): void } };
  const dgram = unixDgram.createSocket('unix_dgram');
  const admin = listen(dir, 'a.sock');
  try {
    const probe = await runProbe([dgram.fd, admin], { LISTEN_FDS: '2', LISTEN_FDNAMES: 'broker:admin' }, { ownPid: true });
    assert.equal(probe.report.ok, false);
    assert.equal(probe.report.problem, 'NotAUnixStreamSocket');
    assert.match(probe.report.message ?? '', /passed fd 3 \("broker"\) is a socket but not AF_UNIX SOCK_STREAM/);
    assert.equal(probe.report.after['3']?.target, null);
    assert.equal(probe.report.after['4']?.target, null);
    await probe.stop();
  } finally {
    dgram.close();
    native.close(admin);
  }
}));

test('two sockets with the same known name: DuplicateName, all closed', () => withDir(async (dir) => {
  const fds = [listen(dir, 'b1.sock'), listen(dir, 'b2.sock')];
  try {
    const probe = await runProbe(fds, { LISTEN_FDS: '2', LISTEN_FDNAMES: 'broker:broker' }, { ownPid: true });
    assert.equal(probe.report.ok, false);
    assert.equal(probe.report.problem, 'DuplicateName');
    assert.match(probe.report.message ?? '', /passed fds 3 and 4 are both named "broker"/);
    assert.equal(probe.report.after['3']?.target, null);
    assert.equal(probe.report.after['4']?.target, null);
    await probe.stop();
  } finally {
    for (const fd of fds) native.close(fd);
  }
}));

test('LISTEN_FDNAMES and LISTEN_FDS disagree: MalformedEnvironment, all closed', () => withDir(async (dir) => {
  const fds = [listen(dir, 'b.sock'), listen(dir, 'a.sock')];
  try {
    const probe = await runProbe(fds, { LISTEN_FDS: '2', LISTEN_FDNAMES: 'broker' }, { ownPid: true });
    assert.equal(probe.report.ok, false);
    assert.equal(probe.report.problem, 'MalformedEnvironment');
    assert.equal(probe.report.after['3']?.target, null);
    assert.equal(probe.report.after['4']?.target, null);
    assert.deepEqual(probe.report.listenVariablesLeft, []);
    await probe.stop();
  } finally {
    for (const fd of fds) native.close(fd);
  }
}));

test('a real child given another LISTEN_PID: fd 3 untouched (still open, CLOEXEC unchanged)', () => withDir(async (dir) => {
  const fd = listen(dir, 'b.sock');
  try {
    const probe = await runProbe([fd], { LISTEN_PID: '1', LISTEN_FDS: '1', LISTEN_FDNAMES: 'broker' }, { ownPid: false });
    assert.equal(probe.report.ok, true);
    assert.deepEqual(probe.report.sockets, {});
    assert.deepEqual(probe.report.after['3'], probe.report.before['3'], 'fd 3 untouched: still open, CLOEXEC unchanged');
    assert.match(probe.report.warnings?.[0] ?? '', /LISTEN_PID=1 is not this process/);
    await probe.stop();
  } finally {
    native.close(fd);
  }
}));
