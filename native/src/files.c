/*
 * Plain file descriptors: open, memfd, fstat, dup, FD_CLOEXEC, close, flock, ioctl.
 *
 * Invariants:
 * - Every fd created here is close-on-exec (O_CLOEXEC, MFD_CLOEXEC, F_DUPFD_CLOEXEC); only
 *   setCloexec(fd, false) clears the flag, deliberately, for an fd an exec'd child inherits.
 * - close() is called once and never retried: Linux releases the fd even when it reports EINTR.
 *   It refuses (-EBUSY, fd left open) while a poll watcher started by poll.c watches the fd.
 * - ioctl's buffer is the struct itself, read and written in place by the kernel; the caller
 *   sizes it for the request.
 */
#include "exports.h"
#include "poll.h"
#include "values.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

napi_value js_open(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char *path = NULL;
  int32_t flags;
  double mode = 0600;
  if (!get_args_opt(env, info, 2, 3, argv) || !arg_int32(env, argv[1], "flags", &flags)) return NULL;
  if (argv[2] != NULL && !arg_integer(env, argv[2], "mode", 0, 07777, &mode)) return NULL;
  if (!arg_string(env, argv[0], "path", &path)) return NULL;
  int fd = open(path, flags | O_CLOEXEC, (mode_t)mode);
  long r = SYS_RESULT(fd);
  free(path);
  return make_number(env, (double)r);
}

napi_value js_memfd_create(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  char *name = NULL;
  if (!get_args(env, info, 1, argv) || !arg_string(env, argv[0], "name", &name)) return NULL;
  int fd = memfd_create(name, MFD_CLOEXEC);
  long r = SYS_RESULT(fd);
  free(name);
  return make_number(env, (double)r);
}

napi_value js_fstat(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  struct stat st;
  if (fstat(fd, &st) < 0) return make_number(env, -errno);
  napi_value result;
  if (napi_create_object(env, &result) != napi_ok || !set_number(env, result, "mode", st.st_mode) ||
      !set_number(env, result, "rdev", (double)st.st_rdev) || !set_number(env, result, "dev", (double)st.st_dev) ||
      !set_number(env, result, "ino", (double)st.st_ino))
    return napi_failure(env, "fstat result");
  return result;
}

napi_value js_dup_cloexec(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd, min_fd;
  if (!get_args(env, info, 2, argv) || !arg_fd(env, argv[0], "fd", &fd) || !arg_fd(env, argv[1], "minFd", &min_fd))
    return NULL;
  int r = fcntl(fd, F_DUPFD_CLOEXEC, min_fd);
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_set_cloexec(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  bool on;
  if (!get_args(env, info, 2, argv) || !arg_fd(env, argv[0], "fd", &fd) || !arg_bool(env, argv[1], "on", &on))
    return NULL;
  int flags = fcntl(fd, F_GETFD);
  if (flags < 0) return make_number(env, -errno);
  int r = fcntl(fd, F_SETFD, on ? (flags | FD_CLOEXEC) : (flags & ~FD_CLOEXEC));
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_close(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  /* Closing an fd under a running uv_poll makes libuv abort() the process: refuse instead. */
  if (poll_is_watching(fd)) return make_number(env, -EBUSY);
  int r = close(fd);
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_flock(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  int32_t operation;
  if (!get_args(env, info, 2, argv) || !arg_fd(env, argv[0], "fd", &fd) || !arg_int32(env, argv[1], "operation", &operation))
    return NULL;
  int r = flock(fd, operation);
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_ioctl(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd;
  double request;
  void *buf;
  size_t len;
  if (!get_args(env, info, 3, argv) || !arg_fd(env, argv[0], "fd", &fd) ||
      !arg_integer(env, argv[1], "request", 0, 4294967295.0, &request) ||
      !arg_buffer(env, argv[2], "buf", &buf, &len))
    return NULL;
  int r = ioctl(fd, (unsigned long)request, buf);
  return make_number(env, (double)SYS_RESULT(r));
}
