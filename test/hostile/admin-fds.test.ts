// An admin-socket peer sends a file whose last close blocks (issue #8 item 1, on the surface
// its fix left open). Node reads the admin HTTP socket with read(2); fds that come with those
// bytes are dropped by the kernel in the reading thread (MSG_CTRUNC without a control buffer),
// and their last close runs there as task work: the event loop. A TCP socket with SO_LINGER
// {1, 30 s} and a full send queue (hostile-peer.c lingering-fd) held every Varlink client off
// for the whole linger. The admin socket refuses fd passing (SO_PASSRIGHTS=0), so the sender's
// sendmsg fails and no fd ever reaches the daemon.
//
// The peer is an unprivileged uid (65534, no groups). The admin socket's mode is opened up to
// everyone here, as a socket-activated one admits its group (root:iommufd-admin 0660): whoever
// may connect, be it a read-only observer, must not be able to freeze the daemon.
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { buildC } from '../../bench/c-build.ts';
import { BrokerProcess, DAEMON, REPO } from '../support/daemon.ts';
import { STRIP } from './support/processes.ts';
import { GET_INFO, isGetInfoReply, RawPeer } from './support/raw-peer.ts';

const LINGER_S = 30;
/** Far below the linger: only a close on the event loop takes this long. */
const PROMPT_MS = (LINGER_S * 1000) / 2;
const NOBODY = ['--reuid=65534', '--regid=65534', '--clear-groups'];

let hostilePeer: string;
before(() => {
  hostilePeer = buildC(join(REPO, 'test/hostile/fixtures/hostile-peer.c'));
});

test('a lingering socket sent to the admin socket is refused by the kernel and stalls nobody', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-admin-fds-'));
  const admin = join(dir, 'admin.sock');
  const broker = await BrokerProcess.start({ dir, extraArgs: ['--admin-socket', admin] });
  const daemonPid = broker.child.pid;
  assert.ok(daemonPid !== undefined);
  chmodSync(admin, 0o666);
  const attacker = spawn('setpriv', [...NOBODY, ...STRIP, '--', hostilePeer, 'lingering-fd', admin, String(LINGER_S), '1', 'status'],
    { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<void>((resolve) => attacker.once('exit', () => resolve()));
  try {
    const lines = createInterface({ input: attacker.stdout as NodeJS.ReadableStream })[Symbol.asyncIterator]();
    // Held off until the attacker has sent and closed its own copies: then the daemon's read
    // would drop the last reference.
    process.kill(daemonPid, 'SIGSTOP');
    let first: string;
    try {
      const line = await lines.next();
      first = line.done === true ? 'eof' : line.value;
    } finally {
      process.kill(daemonPid, 'SIGCONT');
    }
    const started = Date.now();
    const other = RawPeer.connect(broker.socket);
    try {
      other.send(GET_INFO);
      await other.until(1, 2 * LINGER_S * 1000);
      assert.ok(isGetInfoReply(other.replies[0]), `GetInfo was not answered: ${JSON.stringify(other.replies)}`);
    } finally {
      other.close();
    }
    const elapsed = Date.now() - started;
    assert.ok(elapsed < PROMPT_MS, `the daemon stalled for ${elapsed} ms: an fd sent to the admin socket was closed on its event loop`);
    assert.equal(first, 'error sendmsg EPERM', 'the admin socket refuses fds (SO_PASSRIGHTS=0)');
  } finally {
    attacker.stdin?.end();
    await exited;
    await broker.stop();
    broker.cleanup();
  }
});

// Socket activation (the follow-up of #8): systemd's listener accepts fds until the daemon sets
// SO_PASSRIGHTS=0 on it, and the kernel copies the option into a connection at connect(). The
// connection that starts the daemon therefore could send a lingering socket before the daemon
// ran at all, and its fd was read (and dropped, lingering, on the event loop) right after the
// daemon adopted the listener: every client stalled for the linger. Now each accepted admin
// connection is sealed before Node reads it, and one with fds already queued is dropped unread,
// its queue released off the loop.
test('a lingering socket queued on the activated admin socket before the daemon ran stalls nobody', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'iommufd-admin-activated-'));
  const admin = join(dir, 'admin.sock');
  const varlink = join(dir, 'broker.sock');
  const activator = spawn('systemd-socket-activate', [
    '-l', admin, '--fdname=admin', '-l', varlink, '--fdname=broker',
    // The simulated device is refused under systemd; a missing device path leaves it serving.
    DAEMON, '--socket', varlink, '--admin-socket', admin, '--state-dir', join(dir, 'state'), '--device', join(dir, 'no-iommu'),
  ], { cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  activator.stderr.setEncoding('utf8').on('data', (c: string) => { stderr += c; });
  activator.stdout.setEncoding('utf8').on('data', (c: string) => { stdout += c; });
  const activatorExited = new Promise<void>((resolve) => activator.once('exit', () => resolve()));
  let attacker: ReturnType<typeof spawn> | undefined;
  let attackerExited: Promise<void> = Promise.resolve();
  try {
    while (!stderr.includes(`Listening on ${varlink}`)) {
      await new Promise((resolve) => activator.stderr.once('data', resolve));
    }
    // Its connection starts the daemon; its fd is queued before the daemon exists.
    attacker = spawn(hostilePeer, ['lingering-fd', admin, String(LINGER_S), '1', 'status'], { stdio: ['pipe', 'pipe', 'inherit'] });
    attackerExited = new Promise<void>((resolve) => attacker?.once('exit', () => resolve()));
    const lines = createInterface({ input: attacker.stdout as NodeJS.ReadableStream })[Symbol.asyncIterator]();
    const sent = await lines.next();
    assert.equal(sent.value, 'sent', 'the fd was queued on the not-yet-served admin socket (it accepts fds until the daemon seals it)');
    const started = Date.now();
    const answer = await lines.next();
    const other = RawPeer.connect(varlink);
    try {
      other.send(GET_INFO);
      await other.until(1, 2 * LINGER_S * 1000);
      assert.ok(isGetInfoReply(other.replies[0]), `GetInfo was not answered: ${JSON.stringify(other.replies)}`);
    } finally {
      other.close();
    }
    const elapsed = Date.now() - started;
    assert.ok(elapsed < PROMPT_MS, `the daemon stalled for ${elapsed} ms: a queued fd was dropped on its event loop`);
    assert.equal(answer.done === true ? 'eof' : answer.value, 'eof', 'the connection with queued fds was dropped unanswered');
    assert.match(stdout, /a connection made before the socket refused fds had fds queued; dropped unread/);
  } finally {
    attacker?.stdin?.end();
    await attackerExited;
    activator.kill('SIGTERM');
    await activatorExited;
    rmSync(dir, { recursive: true, force: true });
  }
});
