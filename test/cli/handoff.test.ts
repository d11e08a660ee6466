// exec and pass: the two ways iommufdctl hands the FD to QEMU.
// exec runs the real bin/iommufdctl as a child (it replaces itself, so it cannot run in-process)
// against a scripted broker here, and the exec'd shell reports what it inherited.
// pass runs in-process against Debian's real QEMU (and a scripted QMP peer that refuses).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type StdioOptions } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runCli } from '../../cli/main.ts';
import { QmpClient } from '../../client/qmp.ts';
import { closeFd, memfd } from '../../native/sys.ts';
import { UnixServer, type UnixConnection } from '../../native/socket.ts';
import { REPO } from '../support/daemon.ts';
import { leakedSince, openFds } from '../support/fds.ts';
import { captureIo } from './io-capture.ts';
import { FakeBroker, wireLease, type Script } from '../client/fake-broker.ts';
import { qemuFdTargets, startQemu, stopQemu, type Qemu } from '../client/qemu.ts';

const BIN = join(REPO, 'bin', 'iommufdctl');
const O_CLOEXEC = 0o2000000;
const O_NONBLOCK = 0o4000;

/** Open fds of this process without FD_CLOEXEC (any child inherits them, whatever we do). */
function inheritableFds(): Set<number> {
  const out = new Set<number>();
  for (const name of readdirSync('/proc/self/fdinfo')) {
    try {
      const flags = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${name}`, 'utf8'))?.[1];
      if (flags !== undefined && (parseInt(flags, 8) & O_CLOEXEC) === 0) out.add(Number(name));
    } catch {
      // the directory's own fd, gone by now
    }
  }
  return out;
}

const openFor = (call: { peerPid: number; fdPids: (number | undefined)[] }): ReturnType<Script> => ({
  reply: { lease: wireLease({ pid: call.fdPids[0] ?? call.peerPid }), fileDescriptor: 0 }, fds: [memfd('fake-iommufd')],
});

/**
 * What the exec'd shell reports about itself; exits 7 so the exit status proves it ran. The fd
 * list comes from a plain `ls` child (no pipe or redirection open in the shell at fork): the
 * shell's fds plus the one ls opens to read /proc/self/fd, which parseReport drops.
 */
const REPORT = 'echo "pid=$$"; echo "fd={iommufd}"; echo "env=$IOMMUFD_BROKER_FD $IOMMUFD_BROKER_LEASE"; '
  + 'grep -E "^Sig(Ign|Blk)" /proc/$$/status; grep "^flags" /proc/$$/fdinfo/1; ls -l /proc/self/fd; exit 7';

interface Report { code: number | null; stdout: string; stderr: string; pid: number; fd: number; fds: Map<number, string>; sigIgn: bigint; stdoutFlags: number; env: string }

async function runBin(args: string[], stdio: StdioOptions = ['ignore', 'pipe', 'pipe']): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [BIN, ...args], { stdio });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => { stdout += s; });
  child.stderr?.setEncoding('utf8').on('data', (s: string) => { stderr += s; });
  const [code] = await once(child, 'close') as [number | null];
  return { code, stdout, stderr };
}

function parseReport(r: { code: number | null; stdout: string; stderr: string }): Report {
  const field = (re: RegExp): string => {
    const m = re.exec(r.stdout)?.[1];
    assert.ok(m !== undefined, `report has ${re}: ${r.stdout}\n${r.stderr}`);
    return m;
  };
  const fds = new Map<number, string>();
  for (const m of r.stdout.matchAll(/ (\d+) -> (.*)$/gm)) {
    if (!/^\/proc\/\d+\/fd$/.test(m[2] ?? '')) fds.set(Number(m[1]), m[2] ?? '');
  }
  return {
    ...r, fds, pid: Number(field(/^pid=(\d+)$/m)), fd: Number(field(/^fd=(\d+)$/m)), env: field(/^env=(.*)$/m),
    sigIgn: BigInt(`0x${field(/^SigIgn:\s*([0-9a-f]+)$/m)}`), stdoutFlags: parseInt(field(/^flags:\s*([0-7]+)$/m), 8),
  };
}

test('exec: the program runs in iommufdctl\'s place with the FD, stdio, default signals, and nothing else', async () => {
  const fake = FakeBroker.start(openFor);
  try {
    const r = parseReport(await runBin(['exec', '--socket', fake.socket, '--name', 'vm1', '--memory', '1G', '--', 'sh', '-c', REPORT]));
    assert.equal(r.code, 7, `the shell ran and its exit status came through: ${r.stderr}`);
    assert.equal(r.stderr, `iommufdctl: pid ${r.pid} runs under lease l-0123456789abcdef, which limits what it may pin to 2 GiB (RLIMIT_MEMLOCK); ` +
      'a "vfio_container_dma_map(...) = -12 (Cannot allocate memory)" or "DMA mapping failed" from QEMU means that limit was reached: ' +
      'a manager raises it with \'iommufdctl resize l-0123456789abcdef\'\n', 'iommufdctl printed only the line that names the lease and limit');
    const [call] = fake.calls;
    assert.equal(call?.method, 'io.iommufd.Broker.Open');
    assert.equal(call?.peerPid, r.pid, 'the shell is the process that asked (same pid): the lease targets it');
    assert.deepEqual(call?.fdLinks, [], 'no target pidfd: the caller itself is the target');
    assert.match(r.fds.get(r.fd) ?? '', /^\/memfd:fake-iommufd/, '{iommufd} became the FD number');
    assert.equal(r.env, `${r.fd} l-0123456789abcdef`);
    assert.equal(r.stdoutFlags & O_NONBLOCK, 0, 'stdout (a pipe) is blocking again');
    assert.equal(r.sigIgn & ((1n << 12n) | (1n << 24n)), 0n, 'SIGPIPE and SIGXFSZ are not ignored');
    const allowed = new Set([0, 1, 2, r.fd, ...inheritableFds()]);
    const extra = [...r.fds].filter(([fd]) => !allowed.has(fd)).map(([fd, t]) => `${fd} -> ${t}`);
    assert.deepEqual(extra, [], 'no fd of iommufdctl (broker socket, Node internals) reached the program');
    const sockets = [...r.fds].filter(([fd, t]) => fd > 2 && t.startsWith('socket:'));
    assert.deepEqual(sockets, [], 'no socket besides stdio (node spawns stdio as socketpairs) was inherited');
  } finally {
    fake.close();
  }
});

test('exec --keep-fd passes an fd iommufdctl inherited; without it Node\'s CLOEXEC keeps it back', async () => {
  const fake = FakeBroker.start(openFor);
  const kept = memfd('kept-for-qemu');
  try {
    const stdio: StdioOptions = ['ignore', 'pipe', 'pipe', kept];
    const base = ['exec', '--socket', fake.socket, '--name', 'vm1', '--memory', '1G'];
    const withKeep = parseReport(await runBin([...base, '--keep-fd', '3', '--', 'sh', '-c', REPORT], stdio));
    assert.equal(withKeep.code, 7, withKeep.stderr);
    assert.match(withKeep.fds.get(3) ?? '', /memfd:kept-for-qemu/);
    const without = parseReport(await runBin([...base, '--', 'sh', '-c', REPORT], stdio));
    assert.equal(without.code, 7, without.stderr);
    assert.ok(!without.fds.has(3), 'fd 3 is not inherited unless named');
    const missing = await runBin([...base, '--keep-fd', '999', '--', 'sh', '-c', REPORT]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--keep-fd 999: iommufdctl has no open fd 999/);
    assert.equal(fake.calls.length, 2, 'the bad --keep-fd cost no lease');
  } finally {
    closeFd(kept);
    fake.close();
  }
});

test('exec: an unknown program is a usage error before any lease; a refusal runs nothing', async () => {
  const fake = FakeBroker.start(() => ({ error: 'io.iommufd.Broker.PermissionDenied', parameters: { rule: 'r', reason: 'no' } }));
  try {
    const missing = await runBin(['exec', '--socket', fake.socket, '--name', 'vm1', '--memory', '1G', '--', 'no-such-program-here', '{iommufd}']);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /cannot run 'no-such-program-here': not found in PATH/);
    assert.equal(fake.calls.length, 0);
    const refused = await runBin(['exec', '--socket', fake.socket, '--name', 'vm1', '--memory', '1G', '--', 'sh', '-c', 'echo ran {iommufd}']);
    assert.equal(refused.code, 1);
    assert.equal(refused.stdout, '', 'the program did not run');
    assert.match(refused.stderr, /the broker refused: PermissionDenied/);
  } finally {
    fake.close();
  }
});

let qemu: Qemu;
before(async () => { qemu = await startQemu(); });
after(async () => { await stopQemu(qemu); });

test('pass: the lease targets the QEMU behind the QMP socket, and QEMU holds the FD under its name', async () => {
  const before = openFds();
  const fake = FakeBroker.start(openFor);
  try {
    const cap = captureIo();
    const code = await runCli(['pass', '--socket', fake.socket, '--qmp', qemu.qmp, '--fdname', 'iommufd0', '--name', 'vm1', '--memory', '1G'], cap.io);
    assert.equal(code, 0, cap.stderr());
    assert.deepEqual(fake.calls[0]?.fdPids, [qemu.pid], 'the broker got a pidfd for QEMU');
    assert.match(cap.stdout(), new RegExp(`QEMU \\(pid ${qemu.pid}\\) holds the FD as 'iommufd0': use fd=iommufd0`));
    assert.ok(qemuFdTargets(qemu).some((t) => t.includes('memfd:fake-iommufd')), 'QEMU holds the FD');
    const qmp = await QmpClient.connect(qemu.qmp);
    try {
      await qmp.closefd('iommufd0'); // QEMU knows the name: this fails otherwise
    } finally {
      qmp.close();
    }
  } finally {
    fake.close();
  }
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(leakedSince(before), [], 'our copies of the FD and the pidfd are closed');
});

test('pass --target-pid names the target explicitly; an unreachable QMP socket costs no lease', async () => {
  const fake = FakeBroker.start(openFor);
  try {
    const cap = captureIo();
    const code = await runCli(['pass', '--socket', fake.socket, '--qmp', qemu.qmp, '--fdname', 'iommufd1',
      '--name', 'vm1', '--memory', '1G', '--target-pid', String(process.pid), '--json'], cap.io);
    assert.equal(code, 0, cap.stderr());
    assert.deepEqual(fake.calls[0]?.fdPids, [process.pid]);
    assert.equal((JSON.parse(cap.stdout()) as { fdname: string }).fdname, 'iommufd1');
    const gone = captureIo();
    assert.equal(await runCli(['pass', '--socket', fake.socket, '--qmp', join(qemu.dir, 'nope.sock'), '--fdname', 'x',
      '--name', 'vm1', '--memory', '1G'], gone.io), 3);
    assert.match(gone.stderr(), /cannot connect to QEMU's QMP socket .*nope.sock/);
    assert.equal(fake.calls.length, 1, 'no Open for the unreachable QEMU');
  } finally {
    fake.close();
  }
});

test('pass: if QEMU refuses the FD the lease is released again and the exit status is 1', async () => {
  // A QMP peer that accepts capabilities and refuses getfd.
  const dir = mkdtempSync(join(tmpdir(), 'iommufdctl-refusing-qmp-'));
  // closeOffLoop: false: a trusted in-process double; its closes stay synchronous so the fd-leak checks right after close() are exact.
  const server = UnixServer.listen(join(dir, 'qmp.sock'), { mode: 0o600, backlog: 4, closeOffLoop: false });
  const conns: UnixConnection[] = [];
  server.on('connection', (c: UnixConnection) => {
    conns.push(c);
    c.on('error', () => c.close());
    c.on('data', (chunk: Buffer, fds: number[]) => {
      fds.forEach(closeFd);
      for (const line of chunk.toString('utf8').split('\n').filter((l) => l !== '')) {
        const cmd = JSON.parse(line) as { execute: string; id: unknown };
        const answer = cmd.execute === 'getfd' ? { error: { class: 'GenericError', desc: 'no room for it' }, id: cmd.id } : { return: {}, id: cmd.id };
        c.send(Buffer.from(`${JSON.stringify(answer)}\n`));
      }
    });
    c.send(Buffer.from('{"QMP": {"version": {}, "capabilities": []}}\n'));
  });
  const fake = FakeBroker.start((call) => (call.method.endsWith('.Open') ? openFor(call) : { reply: { limitRestored: true } }));
  try {
    const cap = captureIo();
    const code = await runCli(['pass', '--socket', fake.socket, '--qmp', join(dir, 'qmp.sock'), '--fdname', 'fd0', '--name', 'vm1', '--memory', '1G'], cap.io);
    assert.equal(code, 1);
    assert.deepEqual(fake.calls.map((c) => [c.method, c.parameters['lease']]), [
      ['io.iommufd.Broker.Open', undefined], ['io.iommufd.Broker.Release', 'l-0123456789abcdef']]);
    assert.match(cap.stderr(), /QEMU did not take the FD; lease l-0123456789abcdef was released\n.*QEMU refused getfd: no room for it/s);
  } finally {
    fake.close();
    conns.forEach((c) => c.close());
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
