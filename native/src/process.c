/*
 * Processes: pidfds, resource limits of other processes, kcmp, execve.
 *
 * Invariants:
 * - pidfd_open fds are close-on-exec by nature. Nothing here signals a process except
 *   pidfd_send_signal with the caller's explicit signal number (0 = liveness probe).
 * - rlimit values cross into JS as doubles: RLIM_INFINITY <-> -1, every other limit must be an
 *   integer in [0, 2^53) (larger kernel values are reported rounded, never set).
 */
#include "exports.h"
#include "values.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif
#ifndef SYS_kcmp
#define SYS_kcmp 312
#endif

#define MAX_SAFE 9007199254740991.0

/* pidfd_open(pid, flags): flags is 0 or PIDFD_THREAD (== O_EXCL, Linux 6.9+), nothing else. */
napi_value js_pidfd_open(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  double pid;
  double flags = 0;
  if (!get_args_opt(env, info, 1, 2, argv) || !arg_integer(env, argv[0], "pid", 1, 2147483647.0, &pid)) return NULL;
  if (argv[1] != NULL && !arg_integer(env, argv[1], "flags", 0, (double)O_EXCL, &flags)) return NULL;
  if (flags != 0 && flags != (double)O_EXCL) {
    napi_throw_range_error(env, NULL, "pidfd_open flags must be 0 or PIDFD_THREAD (O_EXCL)");
    return NULL;
  }
  long r = syscall(SYS_pidfd_open, (pid_t)pid, (unsigned int)flags);
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_pidfd_send_signal(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int pidfd;
  double sig;
  if (!get_args(env, info, 2, argv) || !arg_fd(env, argv[0], "pidfd", &pidfd) ||
      !arg_integer(env, argv[1], "sig", 0, 64, &sig))
    return NULL;
  long r = syscall(SYS_pidfd_send_signal, pidfd, (int)sig, NULL, 0u);
  return make_number(env, (double)SYS_RESULT(r));
}

static bool arg_limit(napi_env env, napi_value obj, const char *key, rlim_t *out) {
  napi_value v;
  if (napi_get_named_property(env, obj, key, &v) != napi_ok) return type_error(env, key, "must be a number");
  double d;
  if (!arg_integer(env, v, key, -1, MAX_SAFE, &d)) return false;
  *out = d < 0 ? RLIM_INFINITY : (rlim_t)d;
  return true;
}

static bool set_limit(napi_env env, napi_value obj, const char *key, rlim_t value) {
  return set_number(env, obj, key, value == RLIM_INFINITY ? -1.0 : (double)value);
}

napi_value js_prlimit(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  double pid, resource;
  if (!get_args(env, info, 3, argv) || !arg_integer(env, argv[0], "pid", 0, 2147483647.0, &pid) ||
      !arg_integer(env, argv[1], "resource", 0, RLIM_NLIMITS - 1, &resource))
    return NULL;
  napi_valuetype type;
  if (napi_typeof(env, argv[2], &type) != napi_ok) return napi_failure(env, "typeof");
  struct rlimit set, old;
  bool setting = type != napi_null;
  if (setting) {
    if (type != napi_object) {
      type_error(env, "set", "must be {soft, hard} or null");
      return NULL;
    }
    if (!arg_limit(env, argv[2], "soft", &set.rlim_cur) || !arg_limit(env, argv[2], "hard", &set.rlim_max)) return NULL;
  }
  int r = prlimit((pid_t)pid, (__rlimit_resource_t)resource, setting ? &set : NULL, &old);
  if (r < 0) return make_number(env, -errno);
  napi_value result;
  if (napi_create_object(env, &result) != napi_ok || !set_limit(env, result, "soft", old.rlim_cur) ||
      !set_limit(env, result, "hard", old.rlim_max))
    return napi_failure(env, "prlimit result");
  return result;
}

napi_value js_kcmp(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  double pid1, pid2, type, idx1, idx2;
  if (!get_args(env, info, 5, argv) || !arg_integer(env, argv[0], "pid1", 0, 2147483647.0, &pid1) ||
      !arg_integer(env, argv[1], "pid2", 0, 2147483647.0, &pid2) ||
      !arg_integer(env, argv[2], "type", 0, 255, &type) ||
      !arg_integer(env, argv[3], "idx1", 0, MAX_SAFE, &idx1) ||
      !arg_integer(env, argv[4], "idx2", 0, MAX_SAFE, &idx2))
    return NULL;
  long r = syscall(SYS_kcmp, (pid_t)pid1, (pid_t)pid2, (int)type, (unsigned long)idx1, (unsigned long)idx2);
  return make_number(env, (double)SYS_RESULT(r));
}

napi_value js_execve(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char *path = NULL;
  char **args = NULL, **envp = NULL;
  if (!get_args(env, info, 3, argv)) return NULL;
  if (!arg_string(env, argv[0], "path", &path)) return NULL;
  if (!arg_string_vector(env, argv[1], "argv", &args)) {
    free(path);
    return NULL;
  }
  if (!arg_string_vector(env, argv[2], "envp", &envp)) {
    free(path);
    free_string_vector(args);
    return NULL;
  }
  execve(path, args, envp);
  int e = errno; /* execve returns only on failure */
  free(path);
  free_string_vector(args);
  free_string_vector(envp);
  return make_number(env, -e);
}
