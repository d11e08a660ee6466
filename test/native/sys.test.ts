// native/sys.ts: SysError and errno names, sys() pass-through, and the wrappers on real fds,
// real child processes and their rlimits.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { constants, readFileSync } from 'node:fs';
import { afterEach, before, test } from 'node:test';
import { native, POLL_READABLE } from '../../native/binding.ts';
import {
  closeFd, closeFdQuietly, closeOffLoop, dupCloexec, errnoName, errnoNumber, execve, fstatFd, isUnixStreamSocket,
  kcmpFiles, listenUnix, memfd, openFile, peerGroups, pendingCloses, pidfdIsAlive, pidfdOpen, pidOfPidfd,
  prlimitMemlock, sendAbstractDatagram, setCloexec, startPoll, stopPoll, sys, SysError,
} from '../../native/sys.ts';
import { UnixConnection, UnixServer } from '../../native/socket.ts';
import { closesDone, isCloexec, isOpen, withNoFdLeak } from './fd-audit.ts';
import { closeTracked, connectedPair, closePair, makeTempDir, track } from './socket-fixtures.ts';

/** Hang guard only (not a timing assertion): a lost event fails the test instead of stalling the file. */
const GUARD = { timeout: 60_000 };
afterEach(closeTracked);

const CAP_SYS_RESOURCE = 24;
const MiB = 1024 * 1024;

/** Whether this process has CAP_SYS_RESOURCE in its effective set (CapEff, hex). */
function hasCapSysResource(): boolean {
  const match = /^CapEff:\s*([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
  assert.ok(match?.[1] !== undefined, 'no CapEff line in /proc/self/status');
  return ((BigInt(`0x${match[1]}`) >> BigInt(CAP_SYS_RESOURCE)) & 1n) === 1n;
}

/** A child of ours (same uids/gids) that sleeps until killed; no stdio pipes. */
async function sleeper(): Promise<ChildProcess & { pid: number }> {
  const child = spawn('sleep', ['300'], { stdio: 'ignore' });
  await once(child, 'spawn');
  assert.ok(child.pid !== undefined);
  return child as ChildProcess & { pid: number };
}

async function reap(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill('SIGKILL');
  await exited;
}

before(async () => {
  // libuv creates its SIGCHLD pipe on the first spawn and keeps it: make that happen before
  // any test counts fds.
  await reap(await sleeper());
});

test('errno names are the kernel\'s, including ones os.constants lacks', GUARD, () => {
  assert.equal(errnoName(1), 'EPERM');
  assert.equal(errnoName(-11), 'EAGAIN');
  assert.equal(errnoName(95), 'EOPNOTSUPP');
  assert.equal(errnoName(54), 'EXFULL');
  assert.equal(errnoName(99999), 'ERRNO_99999');
  assert.equal(errnoNumber('EXFULL'), 54);
  assert.equal(errnoNumber('ESRCH'), 3);
  assert.throws(() => errnoNumber('ENOTANERRNO'), RangeError);
});

test('SysError carries code, positive errno, syscall, and a message that says why', GUARD, () => {
  const error = new SysError('prlimit', -1, 'RLIMIT_MEMLOCK of pid 42');
  assert.ok(error instanceof Error);
  assert.equal(error.name, 'SysError');
  assert.equal(error.code, 'EPERM');
  assert.equal(error.errno, 1);
  assert.equal(error.syscall, 'prlimit');
  assert.equal(error.message, 'prlimit failed: EPERM (operation not permitted): RLIMIT_MEMLOCK of pid 42');
  assert.match(new SysError('ioctl(IOMMU_OPTION)', 95).message, /EOPNOTSUPP \(operation not supported\)$/);
});

test('sys() throws only for negative numbers', GUARD, () => {
  assert.equal(sys('open', 0), 0);
  assert.equal(sys('open', 17), 17);
  const object = { soft: 1, hard: 2 };
  assert.equal(sys('prlimit', object), object);
  assert.throws(() => sys('open', -2, '/x'), (e: unknown) => e instanceof SysError && e.code === 'ENOENT' && /\/x$/.test(e.message));
});

test('closeFd closes; closing an fd that is not open is EBADF', GUARD, async () => {
  await withNoFdLeak(() => {
    const fd = memfd('close-once');
    closeFd(fd);
    assert.equal(isOpen(fd), false);
    // Never close the same number twice here: another thread may already have reused it.
    assert.throws(() => closeFd(987654), (e: unknown) => e instanceof SysError && e.code === 'EBADF');
  });
});

test('closeOffLoop: the closer threads close the fd, once; a watched fd is refused (EBUSY) and stays open', GUARD, async () => {
  await withNoFdLeak(async () => {
    const fds = [memfd('off-loop-1'), memfd('off-loop-2'), memfd('off-loop-3')];
    for (const fd of fds) closeOffLoop(fd);
    await closesDone();
    assert.equal(pendingCloses(), 0);
    for (const fd of fds) assert.equal(isOpen(fd), false, `fd ${fd} was closed by a closer thread`);

    const watched = pidfdOpen(process.pid); // pollable, unlike a memfd
    const handle = native.startPoll(watched, POLL_READABLE, () => {});
    assert.ok(typeof handle !== 'number');
    assert.throws(() => closeOffLoop(watched), (e: unknown) => e instanceof SysError && e.code === 'EBUSY');
    assert.equal(isOpen(watched), true, 'a refused fd is still the caller\'s');
    native.stopPoll(handle);
    closeOffLoop(watched);
  });
});

test('peerGroups is SO_PEERGROUPS: the connecting process\'s supplementary groups', GUARD, async () => {
  const pair = await connectedPair();
  try {
    // /proc/self/status, not process.getgroups(): Node adds the egid to that list.
    const line = /^Groups:(.*)$/m.exec(readFileSync('/proc/self/status', 'utf8'))?.[1]?.trim() ?? '';
    const ours = (line === '' ? [] : line.split(/\s+/).map(Number)).sort((a, b) => a - b);
    assert.deepEqual(peerGroups(pair.server.fd).slice().sort((a, b) => a - b), ours);
  } finally {
    await closePair(pair);
  }
});

test('peerGroups of a peer in more groups than the first buffer holds (ERANGE, then the size the kernel asks)', GUARD, async () => {
  const groups = Array.from({ length: 100 }, (_, i) => 50000 + i);
  const { dir, remove } = makeTempDir();
  const path = `${dir}/groups.sock`;
  const server = UnixServer.listen(path, { mode: 0o600, backlog: 4 });
  const child = spawn('setpriv', ['--groups', groups.join(','), '--', 'python3', '-c',
    'import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); sys.stdin.read()', path],
  { stdio: ['pipe', 'ignore', 'inherit'] });
  try {
    const conn = await new Promise<UnixConnection>((resolve) => server.once('connection', resolve));
    try {
      assert.deepEqual(peerGroups(conn.fd).slice().sort((a, b) => a - b), groups);
    } finally {
      conn.close();
    }
  } finally {
    child.stdin?.end();
    await once(child, 'exit');
    server.close();
    remove();
    await closesDone();
  }
});

test('openFile, memfd, dupCloexec, setCloexec, fstatFd, kcmpFiles', GUARD, async () => {
  const temp = makeTempDir();
  try {
    await withNoFdLeak(() => {
      const file = openFile(`${temp.dir}/f`, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o600);
      assert.ok(isCloexec(file));
      assert.equal(fstatFd(file).mode & 0o777, 0o600);
      assert.throws(() => openFile(`${temp.dir}/f`, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL),
        (e: unknown) => e instanceof SysError && e.code === 'EEXIST');
      const copy = dupCloexec(file);
      assert.ok(copy >= 3 && isCloexec(copy));
      setCloexec(copy, false);
      assert.equal(isCloexec(copy), false);
      const other = memfd('other');
      assert.equal(kcmpFiles(process.pid, file, process.pid, copy), true);
      assert.equal(kcmpFiles(process.pid, file, process.pid, other), false);
      assert.throws(() => kcmpFiles(process.pid, file, process.pid, 987654), (e: unknown) => e instanceof SysError && e.code === 'EBADF');
      for (const fd of [file, copy, other]) closeFd(fd);
    });
  } finally {
    temp.remove();
  }
});

test('pidfd of a child: alive, its pid, readable when it exits, then gone (-1, ESRCH)', GUARD, async () => {
  await withNoFdLeak(async () => {
    const child = await sleeper();
    const pidfd = pidfdOpen(child.pid);
    try {
      assert.ok(isCloexec(pidfd));
      assert.equal(pidfdIsAlive(pidfd), true);
      assert.equal(pidOfPidfd(pidfd), child.pid);
      const readable = new Promise<number>((resolve) => {
        const handle = native.startPoll(pidfd, POLL_READABLE, (status, events) => {
          if (typeof handle !== 'number') native.stopPoll(handle);
          resolve(status < 0 ? status : events);
        });
        if (typeof handle === 'number') assert.fail(`startPoll on a pidfd failed: ${handle}`);
        track({ close: () => native.stopPoll(handle) });
      });
      const exited = once(child, 'exit');
      child.kill('SIGTERM');
      assert.equal((await readable) & POLL_READABLE, POLL_READABLE);
      await exited; // reaped
      assert.equal(pidOfPidfd(pidfd), -1);
      assert.equal(pidfdIsAlive(pidfd), false);
    } finally {
      closeFd(pidfd);
      await reap(child);
    }
  });
});

test('pidfdOpen of a pid that does not exist is ESRCH; pidOfPidfd refuses non-pidfds', GUARD, async () => {
  await withNoFdLeak(async () => {
    const child = await sleeper();
    const pid = child.pid;
    await reap(child);
    assert.throws(() => pidfdOpen(pid), (e: unknown) => e instanceof SysError && e.code === 'ESRCH');
    const file = memfd('not-a-pidfd');
    assert.throws(() => pidOfPidfd(file), (e: unknown) => e instanceof SysError && e.code === 'EINVAL');
    closeFd(file);
    assert.throws(() => pidOfPidfd(file), (e: unknown) => e instanceof SysError && e.code === 'EBADF');
  });
});

test('prlimitMemlock lowers a child\'s limit and returns the old one; raising the hard limit needs CAP_SYS_RESOURCE', GUARD, async () => {
  const child = await sleeper();
  try {
    const ours = prlimitMemlock(0, null);
    const lowered = { soft: 1 * MiB, hard: 2 * MiB };
    assert.ok(ours.hard === -1 || ours.hard > lowered.hard, 'the test needs a hard limit above 2 MiB to lower from');
    assert.deepEqual(prlimitMemlock(child.pid, lowered), ours, 'a child inherits our limit; prlimit returns it');
    assert.deepEqual(prlimitMemlock(child.pid, null), lowered);
    assert.deepEqual(prlimitMemlock(child.pid, { soft: 2 * MiB, hard: 2 * MiB }), lowered, 'soft may rise up to hard');
    const raise = { soft: 2 * MiB, hard: 4 * MiB };
    if (hasCapSysResource()) {
      assert.deepEqual(prlimitMemlock(child.pid, raise), { soft: 2 * MiB, hard: 2 * MiB });
      assert.deepEqual(prlimitMemlock(child.pid, null), raise);
    } else {
      assert.throws(() => prlimitMemlock(child.pid, raise),
        (e: unknown) => e instanceof SysError && e.code === 'EPERM' && e.syscall === 'prlimit');
      assert.deepEqual(prlimitMemlock(child.pid, null), { soft: 2 * MiB, hard: 2 * MiB }, 'a refused raise changes nothing');
    }
    assert.throws(() => prlimitMemlock(child.pid, { soft: 3 * MiB, hard: 1 * MiB }),
      (e: unknown) => e instanceof SysError && e.code === 'EINVAL', 'soft above hard is EINVAL');
  } finally {
    await reap(child);
  }
});

test('rlimit -1 stands for RLIM_INFINITY both ways (RLIMIT_CPU of a child)', GUARD, async (t) => {
  const RLIMIT_CPU = 0;
  const ours = native.prlimit(0, RLIMIT_CPU, null);
  if (typeof ours === 'number' || ours.hard !== -1) {
    t.skip('RLIMIT_CPU hard limit is not unlimited here');
    return;
  }
  const child = await sleeper();
  try {
    assert.deepEqual(native.prlimit(child.pid, RLIMIT_CPU, { soft: 1000, hard: -1 }), ours);
    assert.deepEqual(native.prlimit(child.pid, RLIMIT_CPU, null), { soft: 1000, hard: -1 });
  } finally {
    await reap(child);
  }
});

test('execve that cannot run throws SysError and returns', GUARD, () => {
  assert.throws(() => execve('/nonexistent/program', ['program'], []),
    (e: unknown) => e instanceof SysError && e.code === 'ENOENT' && e.syscall === 'execve');
});

test('the socket, datagram and poll wrappers answer with values or SysError, never -errno', async () => {
  await withNoFdLeak(() => {
    const temp = makeTempDir();
    try {
      const listening = listenUnix(`${temp.dir}/s.sock`, 4, 0o600);
      assert.equal(isUnixStreamSocket(listening), true);
      const file = memfd('not-a-socket');
      assert.throws(() => isUnixStreamSocket(file), (e: unknown) => e instanceof SysError && e.code === 'ENOTSOCK');
      assert.throws(() => listenUnix(`${temp.dir}/s.sock`, 4, 0o600), (e: unknown) => e instanceof SysError && e.syscall === 'listen' && e.code === 'EADDRINUSE');
      assert.throws(() => startPoll(987654, POLL_READABLE, () => undefined), (e: unknown) => e instanceof SysError && e.syscall === 'uv_poll_start');
      const handle = startPoll(listening, POLL_READABLE, () => undefined);
      stopPoll(handle);
      closeFd(file);
      closeFdQuietly(listening);
      assert.equal(isOpen(listening), false);
    } finally {
      temp.remove();
    }
  });
  assert.throws(() => sendAbstractDatagram(`iommufd-broker-test-nobody-${process.pid}`, Buffer.from('READY=1')),
    (e: unknown) => e instanceof SysError && e.syscall === 'sendto' && e.code === 'ECONNREFUSED');
});
