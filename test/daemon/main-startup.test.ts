// Start-up failures of the real daemon: each is one line on stderr and exit 2, never a stack
// trace, never a hang, and never a kernel limit changed on the way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BrokerClient } from '../../client/index.ts';
import { BrokerProcess, DAEMON } from '../support/daemon.ts';
import { grantLine, memlock, sleeper, writeJournal } from '../support/journal-files.ts';

interface Failed { code: number | null; signal: string | null; stderr: string }

/** Runs the daemon until it exits (killed after 30 s: a hang is a failure too). */
function runDaemon(dir: string, extra: string[] = []): Promise<Failed> {
  const args = ['--socket', join(dir, 'broker.sock'), '--state-dir', join(dir, 'state'), '--device', 'simulated', ...extra];
  const env = { ...process.env };
  for (const k of ['NOTIFY_SOCKET', 'LISTEN_FDS', 'LISTEN_PID']) delete env[k];
  const child = spawn(DAEMON, args, { stdio: ['ignore', 'ignore', 'pipe'], env });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
  return new Promise((resolve) => child.on('close', (code, signal) => {
    clearTimeout(killer);
    resolve({ code, signal, stderr });
  }));
}

/** Exit 2, and stderr is exactly one line (besides the launcher's note on running the sources) matching `what`. */
function assertOneLine(r: Failed, what: RegExp): void {
  const lines = r.stderr.split('\n').filter((l) => l !== '' && !/running the TypeScript sources through tsx/.test(l));
  assert.equal(r.signal, null, `killed by ${String(r.signal)} (a hang?); stderr: ${r.stderr}`);
  assert.equal(r.code, 2, r.stderr);
  assert.equal(lines.length, 1, `one line expected, got:\n${lines.join('\n')}`);
  assert.match(lines[0] ?? '', /^iommufd-brokerd: /);
  assert.match(lines[0] ?? '', what);
}

function tempDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'brokerd-start-'));
  chmodSync(dir, 0o755);
  return dir;
}

test('a corrupt journal line: one line naming file and line, exit 2', async () => {
  const dir = tempDir();
  writeJournal(join(dir, 'state'), ['not json\n']);
  assertOneLine(await runDaemon(dir), /leases\.journal:1: not a JSON line/);
  rmSync(dir, { recursive: true });
});

test('a socket path that cannot be bound: one line, exit 2', async () => {
  const dir = tempDir();
  assertOneLine(await runDaemon(dir, ['--socket', join(dir, 'missing', 'broker.sock')]), /socket .*missing\/broker\.sock: .*ENOENT/);
  rmSync(dir, { recursive: true });
});

test('a state dir others may write: one line saying what to fix, exit 2', async () => {
  const dir = tempDir();
  mkdirSync(join(dir, 'state'));
  chmodSync(join(dir, 'state'), 0o777);
  assertOneLine(await runDaemon(dir), /mode 777 lets others write it; chmod 700 it/);
  rmSync(dir, { recursive: true });
});

test('a FIFO at the journal\'s path: refused at once with one line, no hang', async () => {
  const dir = tempDir();
  mkdirSync(join(dir, 'state'), { mode: 0o700 });
  execFileSync('mkfifo', ['-m', '600', join(dir, 'state', 'leases.journal')]);
  assertOneLine(await runDaemon(dir), /leases\.journal: is not a regular file/);
  rmSync(dir, { recursive: true });
});

test('two daemons on one state dir: the second says who holds it and exits 2; the first keeps serving', async () => {
  const first = await BrokerProcess.start();
  try {
    const second = await runDaemon(first.dir, ['--socket', join(first.dir, 'second.sock')]);
    assertOneLine(second, new RegExp(`in use by another iommufd-brokerd \\(pid ${String(first.child.pid)}\\)`));
    const client = await BrokerClient.connect(first.socket);
    try {
      assert.equal((await client.status()).leases, 0);
    } finally {
      client.close();
    }
  } finally {
    await first.stop();
    first.cleanup();
  }
});

test('a journal the ledger refuses (two leases on one pid): one line, exit 2, and no limit touched', async () => {
  const dir = tempDir();
  const target = await sleeper();
  try {
    const before = memlock(target.pid);
    // Version 1 lines, written now: leases of this boot, as an older broker would have left them.
    writeJournal(join(dir, 'state'), [grantLine(1, 1, target), grantLine(1, 2, target)]);
    assertOneLine(await runDaemon(dir), /cannot all be re-adopted .*pid \d+ already has lease l-0000000000000001.*no limit was touched/);
    assert.deepEqual(memlock(target.pid), before, 'restore must validate before it applies anything');
  } finally {
    target.child.kill('SIGKILL');
    rmSync(dir, { recursive: true });
  }
});
