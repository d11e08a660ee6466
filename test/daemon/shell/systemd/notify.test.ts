// Notifier: real datagrams to a receiver bound on a path and on an abstract name.
import { after, before, test, mock } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Notifier, parseNotifySocket, type NotifyLog } from '../../../../daemon/shell/systemd/notify.ts';
import { leakedSince, openFds } from '../../../support/fds.ts';
import { NotifyReceiver } from '../../../support/notify-receiver.ts';

const REPO = fileURLToPath(new URL('../../../..', import.meta.url));

class RecordingLog implements NotifyLog {
  readonly lines: Array<{ level: 'info' | 'warn'; message: string }> = [];
  info(message: string): void { this.lines.push({ level: 'info', message }); }
  warn(message: string): void { this.lines.push({ level: 'warn', message }); }
}

let dir = '';
let pathReceiver: NotifyReceiver;
let abstractReceiver: NotifyReceiver;
before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'notify-test-'));
  pathReceiver = await NotifyReceiver.start(join(dir, 'notify.sock'));
  abstractReceiver = await NotifyReceiver.start(`@iommufd-broker-notify-test-${process.pid}`);
});
after(async () => {
  await pathReceiver.close();
  await abstractReceiver.close();
  rmSync(dir, { recursive: true, force: true });
});

/** CLOCK_MONOTONIC in µs as the kernel reports it ("now at N nsecs" is ktime_get()). Needs root (0400). */
function kernelMonotonicUsec(): bigint {
  const now = /^now at (\d+) nsecs$/m.exec(readFileSync('/proc/timer_list', 'utf8'))?.[1];
  assert.ok(now !== undefined, '/proc/timer_list has a "now at" line');
  return BigInt(now) / 1000n;
}

test('parseNotifySocket: absolute paths and @abstract names only', () => {
  assert.deepEqual(parseNotifySocket('/run/systemd/notify'), { kind: 'path', path: '/run/systemd/notify' });
  assert.deepEqual(parseNotifySocket('@sd-notify'), { kind: 'abstract', name: 'sd-notify' });
  assert.equal(parseNotifySocket('@'), undefined);
  assert.equal(parseNotifySocket('relative/notify'), undefined);
  assert.equal(parseNotifySocket('vsock:2:1234'), undefined);
});

test('without NOTIFY_SOCKET every method is a no-op that says so once', () => {
  const log = new RecordingLog();
  const env: NodeJS.ProcessEnv = { WATCHDOG_USEC: '1000000', WATCHDOG_PID: String(process.pid), OTHER: 'kept' };
  const notifier = Notifier.fromEnv(env, process.pid, log);
  assert.equal(notifier.enabled, false);
  notifier.ready('serving');
  notifier.status('x');
  notifier.reloading();
  notifier.stopping();
  assert.equal(notifier.startWatchdog(), undefined);
  assert.deepEqual(log.lines.map((l) => l.level), ['info']);
  assert.match(log.lines[0]?.message ?? '', /no usable NOTIFY_SOCKET/);
  assert.deepEqual(env, { OTHER: 'kept' }, 'NOTIFY_SOCKET/WATCHDOG_* are removed from the environment');
});

for (const kind of ['path', 'abstract'] as const) {
  test(`${kind} socket: READY=1 + STATUS, one-line STATUS, STOPPING=1; no fd left open`, async () => {
    const receiver = kind === 'path' ? pathReceiver : abstractReceiver;
    const fdsBefore = openFds();
    const log = new RecordingLog();
    const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: receiver.address };
    const notifier = Notifier.fromEnv(env, process.pid, log);
    assert.equal(notifier.enabled, true);
    assert.deepEqual(env, {});
    notifier.ready('serving; 0 leases');
    notifier.status('policy reload rejected:\nline 3: unknown key\r\n');
    notifier.stopping('stopping: SIGTERM');
    assert.equal(await receiver.take(), 'READY=1\nSTATUS=serving; 0 leases');
    assert.equal(await receiver.take(), 'STATUS=policy reload rejected: line 3: unknown key ');
    assert.equal(await receiver.take(), 'STOPPING=1\nSTATUS=stopping: SIGTERM');
    assert.deepEqual(log.lines, []);
    assert.deepEqual(leakedSince(fdsBefore), []);
  });

  test(`${kind} socket: RELOADING=1 carries MONOTONIC_USEC read from CLOCK_MONOTONIC`, async () => {
    const receiver = kind === 'path' ? pathReceiver : abstractReceiver;
    const notifier = Notifier.fromEnv({ NOTIFY_SOCKET: receiver.address }, process.pid, new RecordingLog());
    const low = kernelMonotonicUsec();
    notifier.reloading('reloading policy');
    const high = kernelMonotonicUsec();
    const message = await receiver.take();
    const match = /^RELOADING=1\nMONOTONIC_USEC=(\d+)\nSTATUS=reloading policy$/.exec(message);
    assert.ok(match?.[1] !== undefined, `unexpected message ${JSON.stringify(message)}`);
    const usec = BigInt(match[1]);
    assert.ok(low <= usec && usec <= high, `MONOTONIC_USEC=${usec} lies outside the kernel's CLOCK_MONOTONIC [${low}, ${high}] µs`);
  });
}

test('watchdog: WATCHDOG=1 at once, then exactly every WATCHDOG_USEC/2', async () => {
  mock.timers.enable({ apis: ['setInterval'] });
  try {
    const log = new RecordingLog();
    const notifier = Notifier.fromEnv({ NOTIFY_SOCKET: pathReceiver.address, WATCHDOG_USEC: '30000000', WATCHDOG_PID: String(process.pid) },
      process.pid, log);
    assert.equal(notifier.watchdogUsec, 30_000_000);
    assert.equal(notifier.startWatchdog(), 15_000);
    assert.equal(await pathReceiver.take(), 'WATCHDOG=1');
    // Nothing before the half interval: a marker sent afterwards is the very next datagram.
    mock.timers.tick(14_999);
    notifier.status('marker 1');
    assert.equal(await pathReceiver.take(), 'STATUS=marker 1');
    mock.timers.tick(1);
    assert.equal(await pathReceiver.take(), 'WATCHDOG=1');
    mock.timers.tick(15_000);
    assert.equal(await pathReceiver.take(), 'WATCHDOG=1');
    notifier.stopWatchdog();
    mock.timers.tick(60_000);
    notifier.status('marker 2');
    assert.equal(await pathReceiver.take(), 'STATUS=marker 2', 'no ping after stopWatchdog');
    assert.deepEqual(log.lines, []);
  } finally {
    mock.timers.reset();
  }
});

test('watchdog: not ours or malformed -> no pings, and the log says why', () => {
  const foreign = new RecordingLog();
  const a = Notifier.fromEnv({ NOTIFY_SOCKET: pathReceiver.address, WATCHDOG_USEC: '1000000', WATCHDOG_PID: '1' }, process.pid, foreign);
  assert.equal(a.startWatchdog(), undefined);
  assert.match(foreign.lines[0]?.message ?? '', /WATCHDOG_PID=1 is not this process/);
  for (const usec of ['0', '-5', 'soon', '1.5']) {
    const bad = new RecordingLog();
    const b = Notifier.fromEnv({ NOTIFY_SOCKET: pathReceiver.address, WATCHDOG_USEC: usec }, process.pid, bad);
    assert.equal(b.startWatchdog(), undefined, usec);
    assert.equal(bad.lines[0]?.level, 'warn');
    assert.match(bad.lines[0]?.message ?? '', /is not a positive number of microseconds/);
  }
});

test('the watchdog timer is unref\'d: a process with nothing else to do exits on its own', async () => {
  const script = `
    import { Notifier } from ${JSON.stringify(join(REPO, 'daemon/shell/systemd/notify.ts'))};
    const n = Notifier.fromEnv(process.env, process.pid, { info() {}, warn(m) { console.error(m); } });
    console.log(n.startWatchdog());`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'],
    env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', NOTIFY_SOCKET: pathReceiver.address, WATCHDOG_USEC: '2000000' },
  });
  let out = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (c: string) => { out += c; });
  child.stderr.setEncoding('utf8').on('data', (c: string) => { err += c; });
  // A ref'd timer would keep the child alive forever: kill it after a generous grace instead of hanging.
  const guard = setTimeout(() => child.kill('SIGKILL'), 20_000);
  const code = await new Promise<number | null>((resolve) => child.on('exit', (c) => resolve(c)));
  clearTimeout(guard);
  assert.equal(code, 0, `the child did not exit by itself (killed by the guard?): ${err}`);
  assert.equal(out.trim(), '1000');
  assert.equal(await pathReceiver.take(), 'WATCHDOG=1');
});

test('a notification that cannot be delivered is logged with its reason, never thrown', () => {
  const fdsBefore = openFds();
  const missingPath = new RecordingLog();
  Notifier.fromEnv({ NOTIFY_SOCKET: join(dir, 'nobody-here.sock') }, process.pid, missingPath).ready('serving');
  assert.equal(missingPath.lines.length, 1);
  assert.match(missingPath.lines[0]?.message ?? '', /sd_notify to .*nobody-here\.sock failed \(READY=1\): ENOENT/);

  const missingAbstract = new RecordingLog();
  Notifier.fromEnv({ NOTIFY_SOCKET: `@iommufd-broker-nobody-${process.pid}` }, process.pid, missingAbstract).stopping();
  assert.match(missingAbstract.lines[0]?.message ?? '', /failed \(STOPPING=1\): ECONNREFUSED/);

  const relative = new RecordingLog();
  const n = Notifier.fromEnv({ NOTIFY_SOCKET: 'run/notify' }, process.pid, relative);
  assert.equal(n.enabled, false);
  assert.match(relative.lines[0]?.message ?? '', /neither an absolute path nor an abstract @name/);
  assert.deepEqual(leakedSince(fdsBefore), []);
});

test('FDSTORE= (systemd >= 254: the fd store\'s size) is read once and removed from the environment; junk reads as absent', () => {
  const env: NodeJS.ProcessEnv = { NOTIFY_SOCKET: '/run/systemd/notify', FDSTORE: '4096' };
  assert.equal(Notifier.fromEnv(env, process.pid, new RecordingLog()).fdStoreMax, 4096);
  assert.equal(env['FDSTORE'], undefined, 'no child inherits it');
  for (const junk of ['0', '-1', '12x', '', '99999999999']) {
    assert.equal(Notifier.fromEnv({ NOTIFY_SOCKET: '/run/systemd/notify', FDSTORE: junk }, process.pid, new RecordingLog()).fdStoreMax, undefined, `FDSTORE=${junk}`);
  }
  assert.equal(Notifier.fromEnv({}, process.pid, new RecordingLog()).fdStoreMax, undefined);
});
