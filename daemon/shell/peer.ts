// Who is on the other end of a connection.
//
// Invariants:
// - Identity is taken from the kernel (SO_PEERCRED, SO_PEERPIDFD) once, at accept, never from
//   anything the peer says.
// - `pidfd` is owned by the connection that read it and closed with it. Kernels before 6.5
//   have no SO_PEERPIDFD: then pidfd is undefined and a self-targeted Open opens a pidfd from
//   the credential pid, which the log says once (a PID-reuse window the kernel cannot close).
import { peerCred, peerPidfd, SysError, type PeerCred } from '../../native/sys.ts';
import type { UnixConnection } from '../../native/socket.ts';
import { readProcStatus } from './procfs.ts';

export interface Peer {
  pid: number;
  uid: number;
  gid: number;
  /** Supplementary groups of the peer process, for group-based policy rules. */
  groups: number[];
  /** owner: the connection; undefined where the kernel lacks SO_PEERPIDFD. */
  pidfd: number | undefined;
}

export function readPeer(socket: UnixConnection): Peer {
  const cred = peerCred(socket.fd);
  let pidfd: number | undefined;
  try {
    pidfd = peerPidfd(socket.fd);
  } catch (e) {
    if (!(e instanceof SysError && e.code === 'ENOPROTOOPT')) throw e;
    pidfd = undefined;
  }
  return peerFromCred(cred, pidfd);
}

/** A Peer from SO_PEERCRED, with the supplementary groups read from /proc (for group rules). */
export function peerFromCred(cred: PeerCred, pidfd: number | undefined): Peer {
  let groups: number[] = [];
  try {
    groups = readProcStatus(cred.pid).groups;
  } catch {
    // The peer may already be gone; with no groups it is judged by uid/gid alone.
  }
  return { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups, pidfd };
}
