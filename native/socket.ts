// Event-driven AF_UNIX stream sockets owned end to end by the native helper: the one place
// the daemon and client get sockets that carry fds (SCM_RIGHTS) from.
//
// Invariants (details in each module):
// - No socket here is ever read by libuv's net.Socket, which drops ancillary data silently.
// - Every fd has one owner: a UnixServer its listening fd, a UnixConnection its socket and the
//   fds queued for sending, a 'data' listener the fds it received.
export { UnixConnection, DEFAULT_MAX_FDS_PER_MESSAGE, type ConnectionOptions } from './unix-connection.ts';
export { UnixServer, type ListenOptions } from './unix-server.ts';
