// How many of a client's fds may be waiting to be closed before the daemon takes no more from it.
//
// Why: every fd a client sends, and every client socket, is closed on the helper's closer
// threads (native/src/closer.c), because its last close may block for as long as the client
// likes (a TCP socket with SO_LINGER and a full send queue, a FUSE file). The closer threads run
// at most two closes of one uid at a time, so a uid whose closes never finish delays nobody
// else; but its further fds wait in the queue, each an open fd of the daemon. This bounds them.
//
// Invariants:
// - A uid is over its quota while pendingClosesOf(uid) >= perUid, or while all uids together
//   have >= total pending and this uid has any: then the server refuses its new connections
//   (closed at once, unanswered, as for the connection caps) and answers each call of it that
//   carries fds with ClosesPending and closes that connection after the reply. Calls without
//   fds are served: they add no fd (a uid is not locked out of Status or List by its own files).
// - So one uid adds at most one message's fds (the recvmsg cap) per connection it holds, and
//   one socket per refused connection, past its quota; a refused socket is closed at once unless
//   its receive queue holds fds (closer.c), and fds in a queue count against the sender's own
//   in-flight fd limit (the kernel refuses a sender more in flight than its RLIMIT_NOFILE).
// - Pure reads of the helper's counters; no state here.
import { BrokerError } from '../../../protocol/errors.ts';
import { pendingCloses, pendingClosesOf } from '../../../native/sys.ts';

export interface CloseQuota {
  /** --max-pending-closes-per-uid */
  readonly perUid: number;
  /** --max-pending-closes */
  readonly total: number;
}

/** Why uid may not hand the daemon more fds now (a ClosesPending to answer), or undefined. */
export function closesPending(uid: number, quota: CloseQuota): BrokerError<'ClosesPending'> | undefined {
  const mine = pendingClosesOf(uid);
  if (mine === 0) return undefined;
  const all = pendingCloses();
  if (mine >= quota.perUid) {
    return new BrokerError('ClosesPending', {
      uid, pendingCloses: mine, maximum: quota.perUid,
      reason: `${mine} fds or sockets from uid ${uid} are still being closed (the last close of such a file can block, ` +
        `e.g. a TCP socket with SO_LINGER and unsent data); at ${quota.perUid} the broker takes no more fds and no new ` +
        'connections from this uid until they finish',
    });
  }
  if (all >= quota.total) {
    return new BrokerError('ClosesPending', {
      uid, pendingCloses: mine, maximum: quota.perUid,
      reason: `${all} client fds are still being closed in all (at most ${quota.total}), ${mine} of them from uid ${uid}: ` +
        'until they finish the broker takes no more fds and no new connections from uids with closes pending',
    });
  }
  return undefined;
}
