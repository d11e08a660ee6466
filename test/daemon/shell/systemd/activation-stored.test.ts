// listenFdsFromEnv and the fd store's fds (FDNAME=lease-<id>, given back in LISTEN_FDNAMES):
// names that collide, names that look like a lease's but are not, and a refused activation that
// must not leave a stored fd (a kept iommufd: it holds a VM's pinned pages) open, nor close one
// twice. Through the child process of activation-probe.ts, which really holds the passed fds at 3, 4, ...
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { native } from '../../../../native/binding.ts';
import { closeFd, memfd } from '../../../../native/sys.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';

const REPO = fileURLToPath(new URL('../../../..', import.meta.url));
const PROBE = fileURLToPath(new URL('./activation-probe.ts', import.meta.url));
const LEASE = 'lease-l-00000000000000a1';

interface FdState { target: string | null; cloexec: boolean | null }
interface Report {
  ok: boolean;
  problem?: string;
  sockets?: Record<string, { fd: number } & FdState>;
  stored?: Record<string, { fd: number } & FdState>;
  warnings?: string[];
  after: Record<string, FdState>;
}

/**
 * Runs the probe with `fds` at 3, 4, ... and LISTEN_PID = its own pid; returns its report.
 * With `closes`, under strace, writing every close(2) the probe makes to that file.
 */
async function probe(fds: number[], names: string, closes?: string): Promise<Report> {
  const command = ['sh', '-c', 'LISTEN_PID=$$; export LISTEN_PID; exec "$@"', 'sh', process.execPath, '--import', 'tsx', PROBE, 'broker,admin'];
  const traced = closes === undefined ? command : ['strace', '-f', '-qq', '-e', 'trace=close', '-o', closes, ...command];
  const child = spawn(traced[0] as string, traced.slice(1), {
    cwd: REPO, env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', LISTEN_FDS: String(fds.length), LISTEN_FDNAMES: names },
    stdio: ['ignore', 'pipe', 'inherit', ...fds],
  });
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (c: string) => { out += c; });
  const [code] = await once(child, 'exit') as [number | null];
  assert.equal(code, 0);
  return JSON.parse(out.split('\n')[0] ?? '') as Report;
}

/** fds the test owns: a listening socket (fd 3 in the probe), then memfds standing in for kept iommufds. */
function passed(dir: string, count: number): number[] {
  const socket = native.listenUnix(join(dir, 'b.sock'), 8, 0o600);
  assert.ok(socket >= 0);
  return [socket, ...Array.from({ length: count }, (_, i) => memfd(`stored-${i}`))];
}

async function withFds(count: number, body: (fds: number[]) => Promise<void>): Promise<void> {
  const before = openFds();
  const dir = mkdtempSync(join(tmpdir(), 'activation-stored-'));
  const fds = passed(dir, count);
  try {
    await body(fds);
  } finally {
    for (const fd of fds) closeFd(fd);
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(leakedSince(before), []);
}

test('stored fds: the first under a lease name is taken, a second under the same name closed, a lease-like name is no lease', () => withFds(3, async (fds) => {
  const r = await probe(fds, `broker:${LEASE}:${LEASE}:lease-l-00000000000000A1`);
  assert.equal(r.ok, true);
  assert.deepEqual(Object.keys(r.sockets ?? {}), ['broker']);
  assert.deepEqual(Object.keys(r.stored ?? {}), [LEASE], 'an uppercase id is not a lease id');
  assert.equal(r.stored?.[LEASE]?.fd, 4, 'the first fd under the name, never the second');
  assert.match(r.stored?.[LEASE]?.target ?? '', /memfd:stored-0/);
  assert.equal(r.stored?.[LEASE]?.cloexec, true);
  assert.equal(r.after['5']?.target, null, 'the second fd under the same name is closed');
  assert.ok(r.warnings?.some((w) => w.includes(`stored fd 5 ("${LEASE}") was closed: a second fd under this name`)), JSON.stringify(r.warnings));
  // Not a socket and no name of ours: left open (LISTEN_FDS may overstate; see activation.ts).
  assert.match(r.after['6']?.target ?? '', /memfd:stored-2/);
}));

test('a refused activation closes the stored fds too, not only the sockets', () => withFds(2, async (fds) => {
  // "admin" names a memfd: NotAUnixStreamSocket, and the daemon will not start.
  const r = await probe(fds, `broker:${LEASE}:admin`);
  assert.equal(r.ok, false);
  assert.equal(r.problem, 'NotAUnixStreamSocket');
  assert.equal(r.after['3']?.target, null, 'the socket is closed');
  assert.equal(r.after['4']?.target, null, 'the stored fd is closed');
  assert.match(r.after['5']?.target ?? '', /memfd:stored-1/, 'the memfd under a known name is not a socket: left alone');
}));

const haveStrace = spawnSync('strace', ['-V']).status === 0;

test('a refused activation closes each passed fd once, even a stored fd that is a socket', { skip: haveStrace ? false : 'needs strace' }, () => withFds(2, async (fds) => {
  // fd 4 "lease-..." is a socket here: it is both a passed socket and a stored fd. A second
  // close(2) of one number could close an fd another thread opened meanwhile (never retry close).
  const dir = mkdtempSync(join(tmpdir(), 'activation-closes-'));
  const second = native.listenUnix(join(dir, 'l.sock'), 8, 0o600);
  try {
    const closes = join(dir, 'closes');
    const r = await probe([fds[0] as number, second, fds[1] as number], `broker:${LEASE}:admin`, closes);
    assert.equal(r.problem, 'NotAUnixStreamSocket');
    assert.equal(r.after['4']?.target, null, 'the stored socket is closed');
    const failed = readFileSync(closes, 'utf8').split('\n').filter((l) => /close\([345]\)\s+= -1 EBADF/.test(l));
    assert.deepEqual(failed, [], 'a passed fd was closed twice');
  } finally {
    closeFd(second);
    rmSync(dir, { recursive: true, force: true });
  }
}));
