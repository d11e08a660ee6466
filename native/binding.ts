// The raw face of the C helper (native/src/*.c, built by node-gyp into
// build/Release/iommufd_native.node). This file is the contract between C and TS.
//
// Who may import it (test/native/binding.test.ts checks the list): only native/ itself —
// sys.ts (the face everyone else uses: -errno becomes SysError there) and the socket layer
// unix-server.ts / unix-connection.ts, which run the hot non-blocking accept/recvmsg/sendmsg
// loops (the sendmsg loop is send-queue.ts, given its syscalls bound by unix-connection.ts) and
// branch on EAGAIN without an exception per call; every error they surface is a
// SysError too. daemon/, client/, protocol/, bench/ and scripts/ import native/sys.ts (or the
// socket layer), never this file. Tests may call it directly to pin the raw contract.
//
// Invariants:
// - The helper holds no policy: each function is one syscall (or a tiny fixed
//   sequence of them) and returns either its result or a negative errno number.
//   Nothing here throws for a failed syscall; `sys.ts` turns -errno into SysError.
// - Every fd the helper creates is O_CLOEXEC (accept4 SOCK_CLOEXEC, recvmsg
//   MSG_CMSG_CLOEXEC, F_DUPFD_CLOEXEC, MFD_CLOEXEC, pidfd_open is CLOEXEC by nature).
// - close() is never retried (Linux frees the fd even on EINTR). closeLater() closes on the
//   helper's closer threads instead: for every fd a client sent and every client socket, whose
//   last close may block (SO_LINGER, FUSE, NFS...) — the event loop never runs such a close.
// - Sockets that can carry fds are only ever read/written here, never by libuv's
//   net.Socket (which silently drops ancillary data).
import { createRequire } from 'node:module';

/** A negative errno value, e.g. -13 for EACCES. */
export type NegErrno = number;

export interface PeerCred { pid: number; uid: number; gid: number }

export interface RecvResult {
  /** Bytes read; length 0 means EOF (we never send empty messages). */
  data: Buffer;
  /**
   * Fds that arrived with these bytes, already O_CLOEXEC; the caller owns them. On a stream
   * socket they came with the *last* bytes of `data`: the kernel glues earlier fd-less
   * messages in front of an fd-carrying one, and never glues anything after it.
   */
  fds: number[];
  /** MSG_CTRUNC: some fds were dropped by the kernel; the ones in `fds` must still be closed. */
  ctrunc: boolean;
}

export interface StatResult { mode: number; rdev: number; dev: number; ino: number }

export interface Rlimit {
  /** soft limit; -1 means RLIM_INFINITY */
  soft: number;
  /** hard limit; -1 means RLIM_INFINITY */
  hard: number;
}

/** Readiness bits passed to and from poll watchers (same values as uv_poll_event). */
export const POLL_READABLE = 1;
export const POLL_WRITABLE = 2;
export const POLL_DISCONNECT = 4;

/** An opaque uv_poll_t owned by the helper. Stop it before closing its fd. */
export interface PollHandle { readonly __brand: 'PollHandle' }

export interface NativeBinding {
  // --- Unix stream sockets (SOCK_STREAM, all CLOEXEC + NONBLOCK) ---
  /** socket+bind+listen; the socket file is created with `mode` (umask set around bind, no chmod window). */
  listenUnix(path: string, backlog: number, mode: number): number | NegErrno;
  /** Non-blocking connect; returns the fd (connect on AF_UNIX completes or fails at once; EAGAIN = backlog full). */
  connectUnix(path: string): number | NegErrno;
  /** accept4(SOCK_CLOEXEC|SOCK_NONBLOCK); -EAGAIN when nothing is pending. */
  accept(listenFd: number): number | NegErrno;
  /** recvmsg(MSG_CMSG_CLOEXEC|MSG_DONTWAIT) of at most maxBytes, with room for maxFds fds. */
  recvmsg(fd: number, maxBytes: number, maxFds: number): RecvResult | NegErrno;
  /** sendmsg(MSG_DONTWAIT|MSG_NOSIGNAL) with fds as SCM_RIGHTS; returns bytes sent. data must be non-empty. */
  sendmsg(fd: number, data: Buffer, fds: number[]): number | NegErrno;
  /** shutdown(fd, SHUT_WR). */
  shutdownWrite(fd: number): 0 | NegErrno;
  /** getsockopt SO_TYPE == SOCK_STREAM && AF_UNIX? 1 yes, 0 no, or -errno (e.g. -ENOTSOCK). */
  isUnixStreamSocket(fd: number): number | NegErrno;
  /** setsockopt SO_PASSRIGHTS=0: peers can no longer send fds (EPERM). -ENOPROTOOPT before Linux 6.16. */
  refuseFdPassing(fd: number): 0 | NegErrno;
  /**
   * For an accepted socket: SO_PASSRIGHTS=0 is set if it still accepted fds, and its receive
   * queue peeked (nothing installed or read): 0 = it already refused fds and none wait, 1 = it
   * accepted them until now and none wait, 2 = some wait. -ENOPROTOOPT before Linux 6.16.
   */
  sealFdPassing(fd: number): 0 | 1 | 2 | NegErrno;

  // --- credentials and processes ---
  /** SO_PEERCRED (as of connect()). */
  peerCred(fd: number): PeerCred | NegErrno;
  /** SO_PEERGROUPS (59): the peer's supplementary groups as of connect(). */
  peerGroups(fd: number): number[] | NegErrno;
  /** SO_PEERPIDFD (77); CLOEXEC pidfd of the peer. -ENOPROTOOPT on kernels < 6.5. */
  peerPidfd(fd: number): number | NegErrno;
  /** pidfd_open(pid, flags): flags 0 (the default) or PIDFD_THREAD; anything else throws RangeError. */
  pidfdOpen(pid: number, flags?: number): number | NegErrno;
  /** pidfd_send_signal(pidfd, sig, NULL, 0); sig 0 probes liveness (-ESRCH once exited). */
  pidfdSendSignal(pidfd: number, sig: number): 0 | NegErrno;
  /** prlimit(pid, resource, new?, old): sets soft/hard when `set` is given; returns the old values. */
  prlimit(pid: number, resource: number, set: Rlimit | null): Rlimit | NegErrno;
  /** kcmp(pid1, pid2, type, idx1, idx2): 0 equal, 1/2 ordering, 3 not equal, or -errno. */
  kcmp(pid1: number, pid2: number, type: number, idx1: number, idx2: number): number | NegErrno;

  // --- files ---
  /** open(path, flags|O_CLOEXEC, mode); mode (default 0o600) matters only with O_CREAT/O_TMPFILE. */
  open(path: string, flags: number, mode?: number): number | NegErrno;
  /** memfd_create(name, MFD_CLOEXEC). */
  memfdCreate(name: string): number | NegErrno;
  fstat(fd: number): StatResult | NegErrno;
  /** fcntl(F_DUPFD_CLOEXEC, minFd). */
  dupCloexec(fd: number, minFd: number): number | NegErrno;
  /** fcntl F_SETFD: on=true sets FD_CLOEXEC, false clears it (for the fd an exec'd QEMU inherits). */
  setCloexec(fd: number, on: boolean): 0 | NegErrno;
  /**
   * close(fd), once; the fd is gone afterwards whatever the result, except -EBUSY: a startPoll
   * watcher still watches fd (closing it would make libuv abort the process), nothing closed.
   */
  close(fd: number): 0 | NegErrno;
  /**
   * Hands fd to the helper's closer threads (native/src/closer.c), which close it once, later,
   * off the JS thread; returns at once without waiting. 0: fd is theirs from now on. -EBUSY (a
   * startPoll watcher watches fd), -ENOMEM or -EAGAIN (no closer thread): fd is still the caller's.
   */
  closeLater(fd: number, owner?: number): 0 | NegErrno;
  /**
   * For a connected AF_UNIX socket: shutdown(SHUT_RDWR), then 1 if it was closed at once (its
   * receive queue held no fds), 0 if it went to the closer threads like closeLater, or -errno
   * (fd still the caller's). owner: the uid its closes are charged to, -1 for none.
   */
  closeSocketLater(fd: number, owner: number): 0 | 1 | NegErrno;
  /** pendingCloses() of one owner (a uid, or -1). */
  pendingClosesOf(owner: number): number;
  /** fds handed to closeLater that are not closed yet (a stuck close keeps its fd counted here). */
  pendingCloses(): number;
  /** flock(fd, operation): LOCK_SH 1, LOCK_EX 2, LOCK_NB 4, LOCK_UN 8; -EWOULDBLOCK when LOCK_NB meets a holder. */
  flock(fd: number, operation: number): 0 | NegErrno;
  /** ioctl(fd, request, buf): buf is read and written in place (struct in, struct out). */
  ioctl(fd: number, request: number, buf: Buffer): number | NegErrno;
  /** execve(path, argv, envp): returns only on failure. */
  execve(path: string, argv: string[], envp: string[]): NegErrno;

  // --- readiness on Node's loop (uv_poll) ---
  /**
   * Starts watching fd for `events` (POLL_* bits). `callback(status, events)` runs on the JS
   * thread through napi_make_callback; status < 0 is a -errno from libuv. The handle keeps a
   * strong reference to the callback until stopPoll. Never poll an fd that libuv also watches.
   */
  startPoll(fd: number, events: number, callback: (status: number, events: number) => void): PollHandle | NegErrno;
  /** Changes the watched events of a running handle (0 pauses it); -EBADF after stopPoll. */
  updatePoll(handle: PollHandle, events: number): 0 | NegErrno;
  /** Stops and frees the handle (uv_close); safe to call once; the fd is not closed. */
  stopPoll(handle: PollHandle): void;

  // --- datagrams (sd_notify to an abstract NOTIFY_SOCKET; unix-dgram handles only paths) ---
  /**
   * One sendto(MSG_NOSIGNAL|MSG_DONTWAIT) on a fresh CLOEXEC AF_UNIX SOCK_DGRAM socket, closed
   * before returning. `abstract` addresses "\0name" instead of the path `name`. Returns bytes sent.
   */
  /** `fd` (optional, >= 0) travels with the datagram as SCM_RIGHTS (sd_notify FDSTORE=1); it stays the caller's. */
  sendDatagram(name: string, abstract: boolean, data: Buffer, fd?: number): number | NegErrno;
}

const require = createRequire(import.meta.url);

/** Loaded once. A missing build says exactly which command builds it. */
function load(): NativeBinding {
  try {
    return require('../build/Release/iommufd_native.node') as NativeBinding;
  } catch (cause) {
    throw new Error('the native helper is not built (build/Release/iommufd_native.node): run `npm ci` or `npm run build:native`', { cause });
  }
}

export const native: NativeBinding = load();
