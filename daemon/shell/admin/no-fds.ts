// No fd reaches the admin API's event loop: each accepted connection is sealed before Node
// reads it.
//
// Why: Node reads the admin socket with read(2); a file that came with the bytes is dropped by
// the kernel in the reading thread, which runs its last close there (a TCP socket with
// SO_LINGER blocks it for the whole linger). api.ts sets SO_PASSRIGHTS=0 on the listener, but
// the kernel copies that option into a connection at connect() (Linux 6.16+, checked on 6.18):
// a peer that connected before the daemon set it (a socket-activated listener's backlog, e.g.
// the very connection that started the daemon) could still send fds, before and after accept.
//
// Invariants:
// - sealConnection runs in the server's 'connection' event, before Node's first read (reading
//   starts on a later turn of the loop). A connection that still accepted fds is made to refuse
//   them (SO_PASSRIGHTS=0 on the accepted socket; nothing can arrive after that), and its
//   receive queue is peeked for fds already there (no byte read, no fd installed).
// - A connection with fds queued is dropped unanswered and never read: its fd is dup'd first,
//   so Node's close is not the last one, and the dup is closed off the loop (closeOffLoop) once
//   Node closed its own. Its queued files are released on a closer thread.
// - fd ownership: the connection's fd stays Node's; the dup belongs to this module until it is
//   handed to closeOffLoop.
// - Kernels before 6.16 lack SO_PASSRIGHTS: nothing to do here (api.ts warned at start).
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { closeOffLoop, dupCloexec, sealFdPassing, SysError } from '../../../native/sys.ts';
import { socketFd } from './auth.ts';

/** Seals the connection; false if it was dropped (then nothing else may use it). */
export function sealConnection(socket: Socket, log: Logger): boolean {
  const fd = socketFd(socket);
  if (fd === undefined) return true; // no fd: ConnectionPeers drops it as unidentifiable
  let state: ReturnType<typeof sealFdPassing>;
  try {
    state = sealFdPassing(fd);
  } catch (err) {
    if (!(err instanceof SysError)) throw err;
    log.warn({ err }, 'admin API: could not make a connection refuse fds; dropping it');
    drop(socket, fd);
    return false;
  }
  if (state !== 'queued') return true;
  log.warn({ audit: 'deny', action: 'admin-connect' },
    'admin API: a connection made before the socket refused fds had fds queued; dropped unread');
  drop(socket, fd);
  return false;
}

/** Closes the connection without reading it; the last close of its queue runs off the loop. */
function drop(socket: Socket, fd: number): void {
  const dup = dupCloexec(fd); // owner: this function, then the closer threads
  socket.once('close', () => closeOffLoop(dup));
  socket.destroy();
}
