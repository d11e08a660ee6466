// The raw helper: results or -errno, TypeErrors only for wrong argument types, CLOEXEC on
// every fd it creates, MSG_CTRUNC handling, and the exact set of functions the addon exports.
import assert from 'node:assert/strict';
import { constants, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { constants as os } from 'node:os';
import { test } from 'node:test';
import { native, type RecvResult } from '../../native/binding.ts';
import { fstatFd, kcmpFiles, memfd } from '../../native/sys.ts';
import { isCloexec, isOpen, withNoFdLeak } from './fd-audit.ts';
import { makeTempDir, rawSocketPair } from './socket-fixtures.ts';

const { EBADF, ENOENT, EINVAL, ENAMETOOLONG, ENOTSOCK, ENOTTY, EAGAIN, EPERM } = os.errno;

function fd(result: number | object): number {
  assert.equal(typeof result, 'number');
  assert.ok((result as number) >= 0, `expected an fd, got ${String(result)}`);
  return result as number;
}

function recv(fdNumber: number, maxBytes: number, maxFds: number): RecvResult {
  const r = native.recvmsg(fdNumber, maxBytes, maxFds);
  assert.notEqual(typeof r, 'number', `recvmsg failed: ${String(r)}`);
  return r as RecvResult;
}

test('failed syscalls return -errno instead of throwing', () => {
  assert.equal(native.close(987654), -EBADF);
  assert.equal(native.open('/nonexistent/really', constants.O_RDONLY), -ENOENT);
  assert.equal(native.connectUnix('/nonexistent/sock'), -ENOENT);
  assert.equal(native.connectUnix(''), -EINVAL);
  assert.equal(native.listenUnix(`/tmp/${'x'.repeat(120)}`, 1, 0o600), -ENAMETOOLONG);
  assert.equal(native.fstat(987654), -EBADF);
  assert.equal(native.isUnixStreamSocket(987654), -EBADF);
});

test('the addon exports exactly the syscalls the daemon uses: no dead memory or fsync exports', () => {
  // A root daemon carries no code it never calls: mmap/munmap to JS and fsync went (issue #9).
  assert.deepEqual(Object.keys(native).sort(), [
    'accept', 'closeLater', 'closeSocketLater', 'close', 'connectUnix', 'dupCloexec', 'execve', 'flock', 'fstat', 'ioctl',
    'isUnixStreamSocket', 'kcmp', 'listenUnix', 'memfdCreate', 'open', 'peerCred', 'peerGroups',
    'peerPidfd', 'pendingCloses', 'pendingClosesOf', 'pidfdOpen', 'pidfdSendSignal', 'prlimit', 'recvmsg', 'refuseFdPassing', 'sealFdPassing', 'sendDatagram',
    'sendmsg', 'setCloexec', 'shutdownWrite', 'startPoll', 'stopPoll', 'updatePoll',
  ].sort());
});

test('wrong argument types throw TypeError', () => {
  const bad: Array<() => unknown> = [
    () => (native.close as (x: unknown) => number)('3'),
    () => native.close(-1),
    () => native.close(1.5),
    () => (native.open as (p: unknown, f: number) => number)(42, 0),
    () => native.open('/tmp/a\0b', 0),
    () => (native.sendmsg as (f: number, d: unknown, x: number[]) => number)(0, 'text', []),
    () => native.sendmsg(0, Buffer.alloc(0), []),
    () => native.sendmsg(0, Buffer.from('x'), new Array<number>(254).fill(0)),
    () => native.recvmsg(0, 0, 0),
    () => native.recvmsg(0, 16, 254),
    () => native.prlimit(0, 8, { soft: 1.5, hard: 2 }),
    () => native.prlimit(0, 8, { soft: -2, hard: 2 }),
    () => (native.startPoll as (f: number, e: number, c: unknown) => unknown)(0, 1, 'not a function'),
    () => native.startPoll(0, 8, () => undefined),
    () => (native.stopPoll as (h: unknown) => void)({}),
  ];
  for (const call of bad) assert.throws(call, TypeError);
});

test('sockets, accepted sockets and received fds are close-on-exec', async () => {
  await withNoFdLeak(() => {
    const [listener, client, server] = rawSocketPair();
    for (const f of [listener, client, server]) assert.ok(isCloexec(f), `fd ${f} lacks O_CLOEXEC`);
    const sent = memfd('cloexec-probe');
    native.setCloexec(sent, false);
    assert.equal(isCloexec(sent), false);
    assert.equal(native.sendmsg(client, Buffer.from('x'), [sent]), 1);
    const got = recv(server, 16, 4);
    assert.equal(got.fds.length, 1);
    const received = got.fds[0] ?? -1;
    assert.ok(isCloexec(received), 'a received fd must be O_CLOEXEC even if the sender cleared it');
    assert.ok(kcmpFiles(process.pid, sent, process.pid, received));
    for (const f of [listener, client, server, sent, received]) assert.equal(native.close(f), 0);
  });
});

test('MSG_CTRUNC: the fds that fit arrive, flagged ctrunc; the data is intact', async () => {
  await withNoFdLeak(() => {
    const [listener, client, server] = rawSocketPair();
    const files = [memfd('a'), memfd('b'), memfd('c')];
    assert.equal(native.sendmsg(client, Buffer.from('three'), files), 5);
    const got = recv(server, 64, 1);
    assert.equal(got.ctrunc, true);
    assert.equal(got.data.toString(), 'three');
    assert.equal(got.fds.length, 1);
    assert.ok(kcmpFiles(process.pid, files[0] ?? -1, process.pid, got.fds[0] ?? -1));
    for (const f of [listener, client, server, ...files, ...got.fds]) assert.equal(native.close(f), 0);
  });
});

test('recvmsg does not merge data across messages carrying fds; EAGAIN when empty, 0 bytes at EOF', async () => {
  await withNoFdLeak(() => {
    const [listener, client, server] = rawSocketPair();
    assert.equal(native.recvmsg(server, 64, 4), -EAGAIN);
    const file = memfd('m');
    assert.equal(native.sendmsg(client, Buffer.from('first'), [file]), 5);
    assert.equal(native.sendmsg(client, Buffer.from('second'), []), 6);
    const first = recv(server, 64, 4);
    assert.equal(first.data.toString(), 'first');
    assert.equal(first.fds.length, 1);
    assert.equal(recv(server, 64, 4).data.toString(), 'second');
    assert.equal(native.shutdownWrite(client), 0);
    const eof = recv(server, 64, 4);
    assert.equal(eof.data.length, 0);
    for (const f of [listener, client, server, file, ...first.fds]) assert.equal(native.close(f), 0);
  });
});

test('fds come with the last bytes of a read: fd-less messages before them are glued in front', async () => {
  await withNoFdLeak(() => {
    const [listener, client, server] = rawSocketPair();
    const file = memfd('glued');
    for (const [text, fds] of [['plain1|', []], ['plain2|', []], ['withfd|', [file]], ['after|', []]] as const) {
      assert.equal(native.sendmsg(client, Buffer.from(text), [...fds]), text.length);
    }
    const first = recv(server, 1024, 4);
    assert.equal(first.data.toString(), 'plain1|plain2|withfd|');
    assert.equal(first.fds.length, 1);
    const second = recv(server, 1024, 4);
    assert.equal(second.data.toString(), 'after|');
    assert.deepEqual(second.fds, []);
    for (const f of [listener, client, server, file, ...first.fds]) assert.equal(native.close(f), 0);
  });
});

test('isUnixStreamSocket tells sockets from other fds', async () => {
  await withNoFdLeak(() => {
    const [listener, client, server] = rawSocketPair();
    const file = memfd('not-a-socket');
    assert.equal(native.isUnixStreamSocket(client), 1);
    assert.equal(native.isUnixStreamSocket(listener), 1);
    assert.equal(native.isUnixStreamSocket(file), -ENOTSOCK);
    for (const f of [listener, client, server, file]) assert.equal(native.close(f), 0);
  });
});

test('refuseFdPassing on a listener: its accepted sockets refuse a peer\'s fds (EPERM), bytes still pass', async () => {
  await withNoFdLeak(() => {
    const temp = makeTempDir();
    try {
      const path = `${temp.dir}/refusing.sock`;
      const listener = fd(native.listenUnix(path, 4, 0o600));
      assert.equal(native.refuseFdPassing(listener), 0);
      const client = fd(native.connectUnix(path));
      const server = fd(native.accept(listener));
      const passed = memfd('would-be-passed');
      assert.equal(native.sendmsg(client, Buffer.from('x'), [passed]), -EPERM);
      assert.equal(native.sendmsg(client, Buffer.from('y'), []), 1);
      const got = recv(server, 16, 4);
      assert.equal(got.data.toString(), 'y');
      assert.deepEqual(got.fds, []);
      for (const f of [listener, client, server, passed]) assert.equal(native.close(f), 0);
    } finally {
      temp.remove();
    }
  });
  assert.equal(native.refuseFdPassing(987654), -EBADF);
  const file = memfd('not-a-socket');
  assert.equal(native.refuseFdPassing(file), -ENOTSOCK);
  assert.equal(native.close(file), 0);
});

test('the kernel copies SO_PASSRIGHTS at connect(); sealFdPassing closes an earlier connection and finds its queued fds', async () => {
  await withNoFdLeak(() => {
    const temp = makeTempDir();
    try {
      const path = `${temp.dir}/sealing.sock`;
      const listener = fd(native.listenUnix(path, 4, 0o600));
      const early = fd(native.connectUnix(path)); // connected while the listener still accepts fds
      const earlyQuiet = fd(native.connectUnix(path));
      assert.equal(native.refuseFdPassing(listener), 0);
      const late = fd(native.connectUnix(path));
      const passed = memfd('queued');
      assert.equal(native.sendmsg(early, Buffer.from('x'), [passed]), 1, 'an earlier connection still passes fds');
      assert.equal(native.sendmsg(late, Buffer.from('x'), [passed]), -EPERM, 'a later one inherited the refusal');
      assert.equal(native.sendmsg(earlyQuiet, Buffer.from('bytes only'), []), 10);
      const [earlyServer, quietServer, lateServer] = [fd(native.accept(listener)), fd(native.accept(listener)), fd(native.accept(listener))];
      assert.equal(native.sealFdPassing(earlyServer), 2, 'fds are queued');
      assert.equal(native.sealFdPassing(quietServer), 1, 'nothing but bytes queued');
      assert.equal(native.sealFdPassing(lateServer), 0, 'already refusing');
      assert.equal(native.sealFdPassing(earlyServer), 2, 'sealed now, and its queued fd is still found (the queue is peeked whatever the option)');
      assert.equal(native.sendmsg(early, Buffer.from('x'), [passed]), -EPERM, 'nothing more can arrive');
      const got = recv(quietServer, 64, 4);
      assert.equal(got.data.toString(), 'bytes only', 'the peek read nothing');
      const queued = recv(earlyServer, 16, 4);
      assert.equal(queued.fds.length, 1, 'the peek installed nothing and left the fd queued');
      for (const f of [listener, early, earlyQuiet, late, passed, earlyServer, quietServer, lateServer, ...queued.fds]) {
        assert.equal(native.close(f), 0);
      }
    } finally {
      temp.remove();
    }
  });
  assert.equal(native.sealFdPassing(987654), -EBADF);
});

test('listenUnix creates the socket file with exactly the requested mode', async () => {
  const temp = makeTempDir();
  try {
    await withNoFdLeak(() => {
      for (const mode of [0o600, 0o660, 0o666]) {
        const path = `${temp.dir}/mode-${mode.toString(8)}.sock`;
        const listener = fd(native.listenUnix(path, 1, mode));
        assert.equal(lstatSync(path).mode & 0o777, mode);
        assert.equal(native.close(listener), 0);
      }
    });
  } finally {
    temp.remove();
  }
});

test('dupCloexec, setCloexec, open, fstat, fsync, ioctl on plain files', async () => {
  const temp = makeTempDir();
  try {
    await withNoFdLeak(() => {
      const path = `${temp.dir}/file`;
      const file = fd(native.open(path, constants.O_RDWR | constants.O_CREAT | constants.O_EXCL, 0o640));
      assert.ok(isCloexec(file));
      const stat = fstatFd(file);
      assert.equal(stat.mode & 0o777, 0o640);
      assert.equal(stat.mode & constants.S_IFMT, constants.S_IFREG);
      const copy = fd(native.dupCloexec(file, 100));
      assert.ok(copy >= 100);
      assert.ok(isCloexec(copy));
      assert.equal(fstatFd(copy).ino, stat.ino);
      assert.equal(native.setCloexec(copy, false), 0);
      assert.equal(isCloexec(copy), false);
      assert.equal(native.ioctl(file, 0x3b87, Buffer.alloc(24)), -ENOTTY);
      assert.equal(native.close(copy), 0);
      assert.equal(native.close(file), 0);
      assert.equal(isOpen(file), false);
    });
  } finally {
    temp.remove();
  }
});

test('only native/ imports the raw binding: daemon/, client/, protocol/, bench/ and scripts/ go through native/sys.ts', () => {
  // binding.ts states the rule: sys.ts is the face, unix-server.ts and unix-connection.ts are
  // the socket layer inside it; everyone else gets SysError, never a -errno to decode by hand.
  const root = new URL('../../', import.meta.url);
  const importers: string[] = [];
  for (const dir of ['daemon', 'cli', 'client', 'protocol', 'bench', 'scripts', 'native']) {
    for (const entry of readdirSync(new URL(dir, root), { recursive: true, withFileTypes: true })) {
      if (!entry.isFile() || !entry.name.endsWith('.ts')) continue;
      const file = `${entry.parentPath}/${entry.name}`;
      if (/from '[./]*(native\/)?binding\.ts'/.test(readFileSync(file, 'utf8'))) importers.push(file.slice(new URL(root).pathname.length));
    }
  }
  assert.deepEqual(importers.sort(), ['native/sys.ts', 'native/unix-connection.ts', 'native/unix-server.ts']);
});
