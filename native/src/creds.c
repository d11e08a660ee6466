/*
 * Who is on the other end of a Unix socket: SO_PEERCRED and SO_PEERPIDFD.
 *
 * Invariants:
 * - Credentials are the kernel's record as of connect()/socketpair(), never anything the peer
 *   sent. The pidfd from SO_PEERPIDFD is close-on-exec (the kernel opens it O_CLOEXEC) and is
 *   owned by the caller.
 */
#include "exports.h"
#include "values.h"

#include <sys/socket.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77 /* Linux 6.5; Debian 12's headers predate it */
#endif

napi_value js_peer_cred(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) return make_number(env, -errno);
  napi_value result;
  if (napi_create_object(env, &result) != napi_ok || !set_number(env, result, "pid", cred.pid) ||
      !set_number(env, result, "uid", cred.uid) || !set_number(env, result, "gid", cred.gid))
    return napi_failure(env, "peerCred result");
  return result;
}

napi_value js_peer_pidfd(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  int pidfd = -1;
  socklen_t len = sizeof pidfd;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERPIDFD, &pidfd, &len) < 0) return make_number(env, -errno);
  return make_number(env, pidfd);
}
