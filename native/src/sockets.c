/*
 * AF_UNIX stream sockets: listen, connect, accept, recvmsg/sendmsg with SCM_RIGHTS.
 *
 * Invariants:
 * - Every socket this file creates is SOCK_CLOEXEC|SOCK_NONBLOCK; received fds are
 *   MSG_CMSG_CLOEXEC. On failure a function closes whatever it created and returns -errno.
 * - recvmsg hands every fd that arrived to the caller (even with MSG_CTRUNC), or hands them to
 *   the closer threads (closer.c) if it cannot build the JS result: an fd is never left without
 *   an owner, and a peer's file is never closed on the JS thread. With MSG_CTRUNC the kernel
 *   drops the fds that did not fit in the receiving thread (their last close may block it), so
 *   callers give recvmsg room for SCM_MAX_FD (253) fds: then only a full fd table truncates.
 * - sendmsg never blocks and never raises SIGPIPE (MSG_DONTWAIT|MSG_NOSIGNAL); it sends
 *   nothing for empty data (a stream would deliver no fds and look like EOF).
 * - refuseFdPassing sets SO_PASSRIGHTS=0 (Linux 6.16+; older kernels: -ENOPROTOOPT): a peer's
 *   sendmsg with SCM_RIGHTS then fails with EPERM, so no fd ever reaches a socket read with
 *   read(2), where the kernel would drop it (and run its last close) in the reading thread.
 *   Set on a listener, a connection inherits it at connect() (the kernel copies the listener's
 *   flags into the embryo socket then, net/unix/af_unix.c unix_stream_connect, Linux 6.16+;
 *   checked on 6.18): a peer that connected before the listener's setsockopt (a
 *   socket-activated listener's backlog) may still send fds, even after accept.
 * - sealFdPassing(fd), for an accepted socket: sets SO_PASSRIGHTS=0 on it if it still accepted
 *   fds (no fd can arrive from then on), and peeks (MSG_PEEK, no control buffer: the kernel
 *   reports MSG_CTRUNC and installs nothing) whether fds already wait in its receive queue:
 *   0 = it already refused fds and none wait, 1 = it accepted fds until now and none wait,
 *   2 = some wait (the caller must not read it on its thread). Reads no byte.
 */
#include "closer.h"
#include "exports.h"
#include "values.h"

#include <linux/sockios.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* The kernel's SCM_MAX_FD: most fds one message can carry. */
#define MAX_FDS_PER_MESSAGE 253
#define MAX_RECV_BYTES (16 * 1024 * 1024)
#ifndef SO_PASSRIGHTS
#define SO_PASSRIGHTS 83 /* include/uapi/asm-generic/socket.h, Linux 6.16 */
#endif

static int fill_address(const char *path, struct sockaddr_un *addr, socklen_t *len) {
  size_t n = strlen(path);
  if (n == 0) return -EINVAL; /* an empty path would autobind an abstract address */
  if (n >= sizeof addr->sun_path) return -ENAMETOOLONG;
  memset(addr, 0, sizeof *addr);
  addr->sun_family = AF_UNIX;
  memcpy(addr->sun_path, path, n + 1);
  *len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
  return 0;
}

static long listen_unix(const char *path, int backlog, mode_t mode) {
  struct sockaddr_un addr;
  socklen_t len;
  int r = fill_address(path, &addr, &len);
  if (r < 0) return r;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  /* The socket file gets exactly `mode`: the umask is narrowed around bind() instead of a
   * chmod afterwards, so the path is never reachable with looser permissions. */
  mode_t old = umask(~mode & 0777);
  r = bind(fd, (struct sockaddr *)&addr, len);
  int bind_errno = errno;
  umask(old);
  if (r < 0) {
    close(fd);
    return -bind_errno;
  }
  if (listen(fd, backlog) < 0) {
    int e = errno;
    unlink(path); /* we just created it */
    close(fd);
    return -e;
  }
  return fd;
}

napi_value js_listen_unix(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char *path = NULL;
  int32_t backlog;
  double mode;
  if (!get_args(env, info, 3, argv) || !arg_int32(env, argv[1], "backlog", &backlog) ||
      !arg_integer(env, argv[2], "mode", 0, 0777, &mode) || !arg_string(env, argv[0], "path", &path))
    return NULL;
  long r = listen_unix(path, backlog, (mode_t)mode);
  free(path);
  return make_number(env, (double)r);
}

napi_value js_connect_unix(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  char *path = NULL;
  if (!get_args(env, info, 1, argv) || !arg_string(env, argv[0], "path", &path)) return NULL;
  struct sockaddr_un addr;
  socklen_t len;
  long r = fill_address(path, &addr, &len);
  free(path);
  if (r < 0) return make_number(env, (double)r);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return make_number(env, (double)-errno);
  if (connect(fd, (struct sockaddr *)&addr, len) < 0) {
    int e = errno;
    close(fd);
    return make_number(env, (double)-e);
  }
  return make_number(env, fd);
}

napi_value js_accept(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "listenFd", &fd)) return NULL;
  int r = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  return make_number(env, (double)SYS_RESULT(r));
}

/* Received fds are a peer's files: their last close may block, so it happens on a closer
 * thread (closer.c); only if that cannot take them are they closed here. */
static void close_received(const int *fds, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (closer_enqueue(fds[i]) < 0) close(fds[i]);
}

/* Builds {data, fds, ctrunc}; returns NULL (fds NOT closed) on N-API failure. */
static napi_value recv_result(napi_env env, const char *bytes, size_t n, const int *fds, size_t nfds, bool ctrunc) {
  napi_value result, data, array, flag;
  if (napi_create_object(env, &result) != napi_ok ||
      napi_create_buffer_copy(env, n, bytes, NULL, &data) != napi_ok ||
      napi_create_array_with_length(env, nfds, &array) != napi_ok ||
      napi_get_boolean(env, ctrunc, &flag) != napi_ok)
    return NULL;
  for (size_t i = 0; i < nfds; i++) {
    napi_value v;
    if (napi_create_int32(env, fds[i], &v) != napi_ok || napi_set_element(env, array, (uint32_t)i, v) != napi_ok)
      return NULL;
  }
  if (napi_set_named_property(env, result, "data", data) != napi_ok ||
      napi_set_named_property(env, result, "fds", array) != napi_ok ||
      napi_set_named_property(env, result, "ctrunc", flag) != napi_ok)
    return NULL;
  return result;
}

napi_value js_recvmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  double max_bytes, max_fds;
  if (!get_args(env, info, 3, argv) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_integer(env, argv[1], "maxBytes", 1, MAX_RECV_BYTES, &max_bytes) ||
      !arg_integer(env, argv[2], "maxFds", 0, MAX_FDS_PER_MESSAGE, &max_fds))
    return NULL;
  char *bytes = malloc((size_t)max_bytes);
  if (bytes == NULL) return make_number(env, -ENOMEM);
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MESSAGE)];
  } control;
  struct iovec iov = {.iov_base = bytes, .iov_len = (size_t)max_bytes};
  struct msghdr msg = {
      .msg_iov = &iov,
      .msg_iovlen = 1,
      .msg_control = max_fds > 0 ? control.buf : NULL,
      /* CMSG_LEN, not CMSG_SPACE: the kernel fits (controllen - header) / sizeof(int) fds, and
       * the alignment padding of CMSG_SPACE would let one more than maxFds through. */
      .msg_controllen = max_fds > 0 ? CMSG_LEN(sizeof(int) * (size_t)max_fds) : 0,
  };
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0) {
    int e = errno;
    free(bytes);
    return make_number(env, -e);
  }
  int fds[MAX_FDS_PER_MESSAGE];
  size_t nfds = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int received;
      memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof received);
      if (nfds < MAX_FDS_PER_MESSAGE) fds[nfds++] = received;
      else close_received(&received, 1); /* cannot happen: the buffer holds at most MAX_FDS_PER_MESSAGE */
    }
  }
  napi_value result = recv_result(env, bytes, (size_t)n, fds, nfds, (msg.msg_flags & MSG_CTRUNC) != 0);
  free(bytes);
  if (result == NULL) {
    close_received(fds, nfds);
    return napi_failure(env, "recvmsg result");
  }
  return result;
}

napi_value js_sendmsg(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  void *data;
  size_t len, nfds = 0;
  int fds[MAX_FDS_PER_MESSAGE];
  if (!get_args(env, info, 3, argv) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_buffer(env, argv[1], "data", &data, &len) ||
      !arg_fd_array(env, argv[2], "fds", fds, MAX_FDS_PER_MESSAGE, &nfds))
    return NULL;
  if (len == 0) {
    type_error(env, "data", "must not be empty (an empty stream message carries no fds)");
    return NULL;
  }
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MESSAGE)];
  } control;
  struct iovec iov = {.iov_base = data, .iov_len = len};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (nfds > 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.buf;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c == NULL) return make_number(env, -EINVAL); /* cannot happen: controllen fits a header */
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
    memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
  }
  ssize_t n = sendmsg(fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
  return make_number(env, (double)SYS_RESULT(n));
}

napi_value js_shutdown_write(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  int r = shutdown(fd, SHUT_WR);
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_is_unix_stream_socket(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  int domain = 0, type = 0;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0) return make_number(env, -errno);
  len = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) return make_number(env, -errno);
  return make_number(env, domain == AF_UNIX && type == SOCK_STREAM ? 1 : 0);
}

napi_value js_refuse_fd_passing(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  int off = 0;
  int r = setsockopt(fd, SOL_SOCKET, SO_PASSRIGHTS, &off, sizeof off);
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_seal_fd_passing(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  int on = 0;
  socklen_t len = sizeof on;
  if (getsockopt(fd, SOL_SOCKET, SO_PASSRIGHTS, &on, &len) < 0) return make_number(env, -errno);
  int off = 0;
  if (on != 0 && setsockopt(fd, SOL_SOCKET, SO_PASSRIGHTS, &off, sizeof off) < 0) return make_number(env, -errno);
  /* Peeked even when it already refused fds: a kernel that copied the option at accept()
   * instead of connect() (proposed upstream) would let fds in before accept all the same. */
  int queued = 0;
  if (ioctl(fd, SIOCINQ, &queued) < 0) return make_number(env, -errno);
  if (queued <= 0) return make_number(env, on != 0 ? 1 : 0);
  /* A peek reads across fd-less messages and stops after the first one with fds, so room for
   * every queued byte finds any fd in the queue. */
  char *buf = malloc((size_t)queued);
  if (buf == NULL) return make_number(env, -ENOMEM);
  struct iovec iov = { .iov_base = buf, .iov_len = (size_t)queued };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  ssize_t n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  int err = errno;
  free(buf);
  int none = on != 0 ? 1 : 0;
  if (n < 0) return make_number(env, err == EAGAIN ? none : -err);
  return make_number(env, (msg.msg_flags & MSG_CTRUNC) ? 2 : none);
}
