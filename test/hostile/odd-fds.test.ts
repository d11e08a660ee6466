// Fds where they do not belong: too many on one message (up to the kernel's 253), fds of odd
// kinds named as an Open's target (a directory, a socket, a memfd, /dev/null, a pidfd of a process
// that is gone), and fds riding on a different message than the one that refers to them.
// After each: the daemon still answers, and holds exactly the fds it held before.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { native } from '../../native/binding.ts';
import { memfd, openFile, pidfdOpen } from '../../native/sys.ts';
import { BrokerProcess } from '../support/daemon.ts';
import { openFds, settledLeaks } from '../support/fds.ts';
import { GET_INFO, RawPeer, call, errorOf, isGetInfoReply } from './support/raw-peer.ts';
import { killTarget, spawnTarget } from './support/processes.ts';

const O_DIRECTORY = 0o200000;
let broker: BrokerProcess;

before(async () => { broker = await BrokerProcess.start({ extraArgs: ['--overhead', '1M', '--budget', '64M'] }); });
after(async () => { await broker.stop(); broker.cleanup(); });

function daemonPid(): number {
  const pid = broker.child.pid;
  assert.ok(pid !== undefined);
  return pid;
}

const openFor = (fdIndex: number | undefined): Buffer => call('io.iommufd.Broker.Open', {
  name: 'vm-odd', memoryBytes: 4096, ...(fdIndex === undefined ? {} : { targetPidFileDescriptor: fdIndex }),
});

/** A pidfd of a process that has exited and been reaped. */
async function pidfdOfExited(): Promise<number> {
  const child = spawn('sleep', ['3600'], { stdio: 'ignore' });
  assert.ok(child.pid !== undefined);
  const pidfd = pidfdOpen(child.pid);
  await killTarget(child);
  return pidfd;
}

/** A character device fd (/dev/null, read-only). */
function devNull(): number {
  return openFile('/dev/null', 0);
}

/**
 * Sends `data` with `fds` in one sendmsg and then `after` (if any) in another: a Unix stream
 * read hands a message's fds over with its last bytes, so an fd-carrying message must end
 * its own sendmsg (docs/PROTOCOL.md).
 */
async function exchange(data: Buffer, fds: number[], replies: number, after?: Buffer): Promise<RawPeer> {
  const peer = RawPeer.connect(broker.socket);
  peer.send(data, fds);
  if (after !== undefined) peer.send(after);
  await peer.until(replies);
  peer.close();
  return peer;
}

async function stillServes(): Promise<void> {
  const peer = await exchange(GET_INFO, [], 1);
  assert.ok(isGetInfoReply(peer.replies[0]), `GetInfo still answered: ${JSON.stringify(peer.replies)}`);
}

test('253 fds on one message (the kernel maximum): that connection closes, every fd is released', async () => {
  const before = openFds(daemonPid());
  for (const count of [5, 17, 253]) {
    const fds = Array.from({ length: count }, () => memfd('hostile-many'));
    const peer = RawPeer.connect(broker.socket);
    peer.send(call('io.iommufd.Broker.Status'), fds);
    await peer.untilEnded();
    peer.close();
    assert.deepEqual(peer.replies.filter((r) => errorOf(r) === undefined), [], `${count} fds: no success reply`);
  }
  await stillServes();
  assert.deepEqual(await settledLeaks(before, daemonPid()), [], 'the daemon closed every fd it received');
});

test('odd kinds of fd named as the target are refused, closed, and do not hurt the daemon', async () => {
  const before = openFds(daemonPid());
  const socketPeer = RawPeer.connect(broker.socket);
  const kinds: Array<[string, () => number | Promise<number>]> = [
    ['directory', () => openFile('/tmp', O_DIRECTORY)],
    ['socket', () => native.dupCloexec(socketPeer.fd, 3) as number],
    ['memfd', () => memfd('hostile-target')],
    ['character device', devNull],
    ['pidfd of an exited process', pidfdOfExited],
  ];
  for (const [kind, make] of kinds) {
    const fd = await make();
    const peer = await exchange(openFor(0), [fd], 2, GET_INFO);
    const error = errorOf(peer.replies[0]);
    assert.ok(error !== undefined, `${kind}: refused (${JSON.stringify(peer.replies[0])})`);
    assert.ok(isGetInfoReply(peer.replies[1]), `${kind}: the same connection still answers`);
    if (kind === 'pidfd of an exited process') assert.equal(error, 'io.iommufd.Broker.TargetGone');
  }
  socketPeer.close();
  await stillServes();
  assert.deepEqual(await settledLeaks(before, daemonPid()), []);
});

test('an fd that is not a pidfd is an invalid targetPidFileDescriptor, not an InternalError', async () => {
  for (const make of [() => openFile('/tmp', O_DIRECTORY), () => memfd('hostile-target'), devNull]) {
    const peer = await exchange(openFor(0), [make()], 1);
    const reply = peer.replies[0] ?? {};
    assert.equal(errorOf(reply), 'org.varlink.service.InvalidParameter', JSON.stringify(reply));
    assert.equal((reply['parameters'] as { parameter?: string }).parameter, 'targetPidFileDescriptor');
  }
});

test('an fd sent with an Open that does not refer to it is refused and closed', async () => {
  const before = openFds(daemonPid());
  const peer = await exchange(openFor(undefined), [memfd('unreferenced')], 2, GET_INFO);
  assert.equal(errorOf(peer.replies[0]), 'org.varlink.service.InvalidParameter');
  assert.ok(isGetInfoReply(peer.replies[1]));
  assert.deepEqual(await settledLeaks(before, daemonPid()), []);
});

test('an fd sent with the second half of a frame belongs to that frame', async () => {
  const before = openFds(daemonPid());
  const target = await spawnTarget();
  const peer = RawPeer.connect(broker.socket);
  try {
    const whole = openFor(0);
    const cut = 20;
    peer.send(whole.subarray(0, cut));
    peer.send(whole.subarray(cut), [pidfdOpen(target.pid)]);
    await peer.until(1);
    const reply = peer.replies[0] ?? {};
    assert.equal(errorOf(reply), undefined, `the Open found its pidfd: ${JSON.stringify(reply)}`);
    assert.equal(peer.receivedFds, 1, 'the device fd came back with the reply');
  } finally {
    peer.close();
    await killTarget(target.child);
  }
  await broker.waitForLog((l) => l['audit'] === 'release' && l['name'] === 'vm-odd');
  assert.deepEqual(await settledLeaks(before, daemonPid()), []);
});

test('fds stay with their own message when the kernel delivers it glued to an earlier one', async () => {
  const before = openFds(daemonPid());
  const peer = RawPeer.connect(broker.socket);
  // Two separate sendmsgs, queued while the daemon is stopped so that one recvmsg reads both.
  process.kill(daemonPid(), 'SIGSTOP');
  try {
    peer.send(call('io.iommufd.Broker.Status'));
    peer.send(openFor(0), [await pidfdOfExited()]);
  } finally {
    process.kill(daemonPid(), 'SIGCONT');
  }
  await peer.until(2);
  peer.close();
  assert.equal(errorOf(peer.replies[0]), undefined, `Status carried no fd: ${JSON.stringify(peer.replies[0])}`);
  assert.equal(errorOf(peer.replies[1]), 'io.iommufd.Broker.TargetGone', `the Open got its own pidfd: ${JSON.stringify(peer.replies[1])}`);
  assert.deepEqual(await settledLeaks(before, daemonPid()), []);
});
