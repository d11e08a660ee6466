/*
 * Who is on the other end of a Unix socket: SO_PEERCRED, SO_PEERGROUPS and SO_PEERPIDFD.
 *
 * Invariants:
 * - Credentials are the kernel's record as of connect()/socketpair(), never anything the peer
 *   sent, and never /proc/<pid> (a pid may name another process by the time it is read). The
 *   pidfd from SO_PEERPIDFD is close-on-exec (the kernel opens it O_CLOEXEC) and is owned by
 *   the caller. SO_PEERGROUPS gives the supplementary groups; ERANGE says how much room they
 *   need, and the buffer grows once to that size.
 */
#include "exports.h"
#include "values.h"

#include <sys/socket.h>

#include <stdlib.h>

#ifndef SO_PEERGROUPS
#define SO_PEERGROUPS 59 /* Linux 4.13 */
#endif
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

napi_value js_peer_groups(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  socklen_t room = 64 * sizeof(gid_t);
  gid_t *groups = NULL;
  socklen_t len = 0;
  for (int attempt = 0;; attempt++) {
    gid_t *grown = realloc(groups, room > 0 ? room : sizeof(gid_t));
    if (grown == NULL) {
      free(groups);
      return make_number(env, -ENOMEM);
    }
    groups = grown;
    len = room;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) == 0) break;
    int e = errno;
    if (e != ERANGE || attempt > 0) { /* the needed size was given once: the groups do not change */
      free(groups);
      return make_number(env, -e);
    }
    room = len; /* the kernel wrote the size it needs */
  }
  size_t n = len / sizeof(gid_t);
  napi_value result;
  if (napi_create_array_with_length(env, n, &result) != napi_ok) {
    free(groups);
    return napi_failure(env, "peerGroups result");
  }
  for (size_t i = 0; i < n; i++) {
    napi_value v;
    if (napi_create_double(env, (double)groups[i], &v) != napi_ok || napi_set_element(env, result, (uint32_t)i, v) != napi_ok) {
      free(groups);
      return napi_failure(env, "peerGroups result");
    }
  }
  free(groups);
  return result;
}
