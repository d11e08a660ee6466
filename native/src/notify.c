/*
 * sendDatagram(name, abstract, data): one datagram to an AF_UNIX SOCK_DGRAM address. Used for
 * sd_notify to an abstract NOTIFY_SOCKET ("@name"), which unix-dgram cannot address.
 *
 * Invariants: a thin syscall sequence, no policy. The socket is created SOCK_CLOEXEC, used for
 * exactly one sendto(MSG_NOSIGNAL|MSG_DONTWAIT) and closed before returning, so this function
 * owns no fd afterwards. Returns the bytes sent or a negative errno (-EINVAL for an empty
 * name, -ENAMETOOLONG if it does not fit sun_path); throws only a TypeError for bad arguments.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "exports.h"
#include "values.h"

napi_value js_send_datagram(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char *name = NULL;
  bool abstract = false;
  void *data = NULL;
  size_t len = 0;
  if (!get_args(env, info, 3, argv) || !arg_bool(env, argv[1], "abstract", &abstract) ||
      !arg_buffer(env, argv[2], "data", &data, &len) || !arg_string(env, argv[0], "name", &name))
    return NULL;

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
  ssize_t r = sendto(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&addr, addr_len);
  long result = SYS_RESULT(r);
  close(fd);
  return make_number(env, (double)result);
}
