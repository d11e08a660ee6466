/*
 * Converting between JS values and C values for the helper's functions.
 *
 * Invariants:
 * - A wrong argument type (or shape) throws a JS TypeError and the arg_* function returns
 *   false; the caller then returns NULL at once. A failed syscall never throws: functions
 *   return a negative errno number instead (errno_result).
 * - Strings handed to the kernel never contain an embedded NUL (rejected, not truncated).
 * - Strings returned by arg_string are malloc'd: the caller owns and frees them.
 */
#ifndef IOMMUFD_NATIVE_VALUES_H
#define IOMMUFD_NATIVE_VALUES_H

#include <node_api.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Fetches exactly `count` arguments; throws TypeError if fewer were passed. */
bool get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv);
/* Like get_args, but arguments beyond `required` may be missing (then NULL). */
bool get_args_opt(napi_env env, napi_callback_info info, size_t required, size_t count, napi_value *argv);

bool arg_int32(napi_env env, napi_value v, const char *name, int32_t *out);
/* A non-negative fd number. */
bool arg_fd(napi_env env, napi_value v, const char *name, int *out);
/* An integral number in [min, max] (both within +-2^53). */
bool arg_integer(napi_env env, napi_value v, const char *name, double min, double max, double *out);
bool arg_bool(napi_env env, napi_value v, const char *name, bool *out);
/* malloc'd, NUL-terminated copy; rejects embedded NULs. */
bool arg_string(napi_env env, napi_value v, const char *name, char **out);
bool arg_buffer(napi_env env, napi_value v, const char *name, void **data, size_t *len);
/* An array of fds of length <= cap. */
bool arg_fd_array(napi_env env, napi_value v, const char *name, int *out, size_t cap, size_t *len);
/* A NULL-terminated malloc'd vector of malloc'd strings; free with free_string_vector. */
bool arg_string_vector(napi_env env, napi_value v, const char *name, char ***out);
void free_string_vector(char **vec);

/* Throws a TypeError "<name> <what>" and returns false. */
bool type_error(napi_env env, const char *name, const char *what);
/* Throws a generic Error for an unexpected N-API failure (if none is pending); returns NULL. */
napi_value napi_failure(napi_env env, const char *where);

/* A syscall's result: r when r >= 0, else -errno. Evaluate it right after the syscall,
 * before any N-API call can change errno. */
#define SYS_RESULT(r) ((r) < 0 ? -(long)errno : (long)(r))
napi_value make_number(napi_env env, double value);
/* Sets obj[key] = number; false on N-API failure. */
bool set_number(napi_env env, napi_value obj, const char *key, double value);

#endif
