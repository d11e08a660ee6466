// Who is on the other end of a connection: a ConnectionPeer, the core's Peer plus its pidfd.
//
// Invariants:
// - Identity is taken from the kernel once, at accept, never from anything the peer says and
//   never from /proc/<pid> (a pid can be reused; the socket's record cannot): uid and gid from
//   SO_PEERCRED, supplementary groups from SO_PEERGROUPS, the process from SO_PEERPIDFD. The
//   pid is kept for logs and messages only; no decision compares bare pids.
// - `pidfd` is owned by the connection that read it and closed with it. Whether the peer's
//   process still lives, and whether a target is that process, is asked of the pidfd when a
//   decision needs it (peerIsAlive, isPeerProcess). The admin API's peers carry no pidfd.
// - Kernels before 6.5 have no SO_PEERPIDFD: then the pidfd is opened from the SO_PEERCRED pid
//   right at accept. In the window between the peer's connect() and our accept, a peer that
//   exits and whose pid is reused would be mistaken for the newcomer; the log says so once.
//   With SO_PEERPIDFD there is no such window.
import type { Logger } from 'pino';
import { peerCred, peerGroups, peerPidfd, pidfdIsAlive, pidfdOpen, pidOfPidfd, SysError } from '../../native/sys.ts';
import type { UnixConnection } from '../../native/socket.ts';
import type { Peer } from '../core/policy.ts';

/**
 * The core's Peer (pid as of connect(), for logs only; uid, gid and SO_PEERGROUPS groups for
 * the policy) plus the pidfd the connection owns. The identity fields are defined once, there.
 */
export interface ConnectionPeer extends Peer {
  /** owner: the connection. The peer's process, taken at accept; undefined for admin API peers. */
  readonly pidfd: number | undefined;
}

let warnedNoPeerPidfd = false;

/** The peer of an accepted Varlink connection; throws if it cannot be identified (then refuse it). */
export function readPeer(socket: UnixConnection, log?: Logger): ConnectionPeer {
  const cred = peerCred(socket.fd);
  const groups = peerGroups(socket.fd);
  let pidfd: number;
  try {
    pidfd = peerPidfd(socket.fd);
  } catch (e) {
    if (!(e instanceof SysError && e.code === 'ENOPROTOOPT')) throw e;
    if (!warnedNoPeerPidfd) {
      warnedNoPeerPidfd = true;
      log?.warn('the kernel lacks SO_PEERPIDFD (Linux < 6.5): peer pidfds are opened from the SO_PEERCRED pid at accept, '
        + 'which a peer that exits before the accept could have handed to a process reusing its pid');
    }
    pidfd = pidfdOpen(cred.pid);
  }
  return { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups, pidfd };
}

/** uid, gid and groups of any connected Unix socket's peer, with no pidfd (the admin API's peers). */
export function credentialsOf(fd: number): ConnectionPeer {
  const cred = peerCred(fd);
  return { pid: cred.pid, uid: cred.uid, gid: cred.gid, groups: peerGroups(fd), pidfd: undefined };
}

/** Whether the process that connected still lives (false without a pidfd). */
export function peerIsAlive(peer: ConnectionPeer): boolean {
  return peer.pidfd !== undefined && pidfdIsAlive(peer.pidfd);
}

/**
 * Whether `targetPidfd` names the peer's own process: both pidfds alive and naming the same
 * pid now (two live processes never share a pid, so this is the same process).
 */
export function isPeerProcess(peer: ConnectionPeer, targetPidfd: number): boolean {
  if (peer.pidfd === undefined) return false;
  const pid = pidOfPidfd(peer.pidfd);
  if (pid <= 0 || pid !== pidOfPidfd(targetPidfd)) return false;
  // Both were alive after the pids were read, so the pids were theirs, and equal: one process.
  return pidfdIsAlive(peer.pidfd) && pidfdIsAlive(targetPidfd);
}
