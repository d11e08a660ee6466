// Real socket activation with systemd's own systemd-socket-activate (Debian's systemd package):
// it binds the sockets, waits for the first connection, then execs our program with them as
// LISTEN_FDS/LISTEN_FDNAMES. The program here is the activation probe, which adopts the sockets
// with listenFdsFromEnv and answers on each with its name.
import { createInterface } from 'node:readline';
import { afterEach, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { leakedSince, openFds } from '../support/fds.ts';

const REPO = fileURLToPath(new URL('../..', import.meta.url));
const PROBE = join(REPO, 'test/daemon/shell/systemd/activation-probe.ts');

const running = new Set<ChildProcessWithoutNullStreams>();
afterEach(() => {
  for (const child of running) child.kill('SIGKILL');
  running.clear();
});

/** Lines of a stream, each delivered once to whoever waits for a matching one. */
function lines(stream: NodeJS.ReadableStream): { waitFor: (match: (l: string) => boolean) => Promise<string>; seen: string[] } {
  const seen: string[] = [];
  let waiters: Array<{ match: (l: string) => boolean; resolve: (l: string) => void }> = [];
  createInterface({ input: stream }).on('line', (line) => {
    seen.push(line);
    for (const w of waiters.filter((x) => x.match(line))) w.resolve(line);
    waiters = waiters.filter((x) => !x.match(line));
  });
  return {
    seen,
    waitFor: (match) => {
      const already = seen.find(match);
      return already !== undefined ? Promise.resolve(already) : new Promise((resolve) => { waiters.push({ match, resolve }); });
    },
  };
}

function ask(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    createConnection(path).setEncoding('utf8').on('data', (c: string) => { text += c; }).on('end', () => resolve(text)).on('error', reject);
  });
}

test('systemd-socket-activate passes broker and admin by name; both are served; a stray one is closed', async () => {
  const fdsBefore = openFds();
  const dir = mkdtempSync(join(tmpdir(), 'socket-activate-test-'));
  try {
    const paths = { broker: join(dir, 'broker.sock'), stray: join(dir, 'stray.sock'), admin: join(dir, 'admin.sock') };
    // stray sits between the two, so positions differ from any fixed order.
    const child = spawn('systemd-socket-activate', [
      '-l', paths.broker, '--fdname=broker', '-l', paths.stray, '--fdname=stray', '-l', paths.admin, '--fdname=admin',
      process.execPath, '--import', 'tsx', PROBE, 'broker,admin', 'serve',
    ], { cwd: REPO, stdio: ['pipe', 'pipe', 'pipe'] });
    running.add(child);
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const err = lines(child.stderr);
    const out = lines(child.stdout);
    await err.waitFor((l) => l.startsWith(`Listening on ${paths.admin}`));

    // The first connection makes systemd-socket-activate exec the probe; it is then answered.
    const brokerAnswer = ask(paths.broker);
    const report = JSON.parse(await out.waitFor((l) => l.startsWith('{'))) as {
      pid: number; ok: boolean; message?: string; warnings: string[];
      sockets: Record<string, { fd: number; target: string; cloexec: boolean }>; listenVariablesLeft: string[];
    };
    assert.equal(report.ok, true, report.message);
    assert.equal(await brokerAnswer, 'broker\n');
    assert.equal(await ask(paths.admin), 'admin\n');
    assert.deepEqual(Object.keys(report.sockets).sort(), ['admin', 'broker']);
    assert.equal(report.sockets['broker']?.fd, 3);
    assert.equal(report.sockets['admin']?.fd, 5);
    assert.equal(report.sockets['admin']?.cloexec, true);
    assert.deepEqual(report.warnings, ['passed fd 4 is named "stray", not one of broker, admin: closed']);
    assert.deepEqual(report.listenVariablesLeft, []);
    assert.ok(err.seen.some((l) => /^Execing /.test(l)), err.seen.join('\n'));

    child.stdin.end();
    assert.equal(await exited, 0, err.seen.join('\n'));
    running.delete(child);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  assert.deepEqual(leakedSince(fdsBefore), []);
});
