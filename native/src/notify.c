/*
 * sendDatagram(name, abstract, data[, fd]): one datagram to an AF_UNIX SOCK_DGRAM address. Used
 * for sd_notify to an abstract NOTIFY_SOCKET ("@name"), which unix-dgram cannot address, and for
 * FDSTORE=1 to any NOTIFY_SOCKET: `fd` (if given and >= 0) travels with the datagram as
 * SCM_RIGHTS, which unix-dgram cannot send.
 *
 * Invariants: a thin syscall sequence, no policy. The socket is created SOCK_CLOEXEC, used for
 * exactly one sendmsg(MSG_NOSIGNAL|MSG_DONTWAIT) and closed before returning, so this function
 * owns no fd afterwards; the passed `fd` stays the caller's (the kernel gives the receiver its
 * own copy). Returns the bytes sent or a negative errno (-EINVAL for an empty name,
 * -ENAMETOOLONG if it does not fit sun_path); throws only a TypeError for bad arguments.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include "exports.h"
#include "values.h"

napi_value js_send_datagram(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  char *name = NULL;
  bool abstract = false;
  void *data = NULL;
  size_t len = 0;
  int32_t pass_fd = -1;
  napi_valuetype fd_type = napi_undefined;
  if (!get_args_opt(env, info, 3, 4, argv) || !arg_bool(env, argv[1], "abstract", &abstract) ||
      !arg_buffer(env, argv[2], "data", &data, &len))
    return NULL;
  if (argv[3] != NULL && napi_typeof(env, argv[3], &fd_type) != napi_ok) return napi_failure(env, "typeof fd");
  if (fd_type != napi_undefined && !arg_int32(env, argv[3], "fd", &pass_fd)) return NULL;
  if (!arg_string(env, argv[0], "name", &name)) return NULL;

  struct sockaddr_un addr;
  memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  /* Abstract: a leading NUL, then the name (not NUL-terminated). Path: the name, NUL-terminated. */
  size_t offset = abstract ? 1 : 0;
  size_t n = strlen(name);
  if (n == 0) {
    free(name);
    return make_number(env, -EINVAL);
  }
  if (offset + n + (abstract ? 0 : 1) > sizeof addr.sun_path) {
    free(name);
    return make_number(env, -ENAMETOOLONG);
  }
  memcpy(addr.sun_path + offset, name, n);
  free(name);
  socklen_t addr_len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + offset + n + (abstract ? 0 : 1));

  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return make_number(env, -errno);
  struct iovec iov = {.iov_base = data, .iov_len = len};
  union {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
  } control;
  memset(&control, 0, sizeof control);
  struct msghdr msg = {.msg_name = &addr, .msg_namelen = addr_len, .msg_iov = &iov, .msg_iovlen = 1};
  if (pass_fd >= 0) {
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
  }
  ssize_t r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
  long result = SYS_RESULT(r);
  close(fd);
  return make_number(env, (double)result);
}
