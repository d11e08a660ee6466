/*
 * JS <-> C value conversion (see values.h for the invariants).
 */
#include "values.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SAFE 9007199254740991.0

bool type_error(napi_env env, const char *name, const char *what) {
  char message[256];
  snprintf(message, sizeof message, "%s %s", name, what);
  napi_throw_type_error(env, NULL, message);
  return false;
}

napi_value napi_failure(napi_env env, const char *where) {
  bool pending = false;
  if (napi_is_exception_pending(env, &pending) == napi_ok && pending) return NULL;
  const napi_extended_error_info *info = NULL;
  napi_get_last_error_info(env, &info);
  char message[256];
  snprintf(message, sizeof message, "iommufd_native: N-API call failed in %s: %s", where,
           info != NULL && info->error_message != NULL ? info->error_message : "unknown");
  napi_throw_error(env, NULL, message);
  return NULL;
}

bool get_args_opt(napi_env env, napi_callback_info info, size_t required, size_t count, napi_value *argv) {
  size_t argc = count;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
    napi_failure(env, "get_cb_info");
    return false;
  }
  if (argc < required) {
    char message[96];
    snprintf(message, sizeof message, "expected %zu arguments, got %zu", required, argc);
    napi_throw_type_error(env, NULL, message);
    return false;
  }
  for (size_t i = argc; i < count; i++) argv[i] = NULL;
  return true;
}

bool get_args(napi_env env, napi_callback_info info, size_t count, napi_value *argv) {
  return get_args_opt(env, info, count, count, argv);
}

bool arg_integer(napi_env env, napi_value v, const char *name, double min, double max, double *out) {
  napi_valuetype type;
  if (v == NULL || napi_typeof(env, v, &type) != napi_ok || type != napi_number)
    return type_error(env, name, "must be a number");
  double d;
  if (napi_get_value_double(env, v, &d) != napi_ok) return type_error(env, name, "must be a number");
  /* Range checks come first: the int64 cast below is only defined for in-range values. */
  if (d != d || d < min || d > max || d < -MAX_SAFE || d > MAX_SAFE || d != (double)(int64_t)d) {
    char what[128];
    snprintf(what, sizeof what, "must be an integer in [%.0f, %.0f]", min, max);
    return type_error(env, name, what);
  }
  *out = d;
  return true;
}

bool arg_int32(napi_env env, napi_value v, const char *name, int32_t *out) {
  double d;
  if (!arg_integer(env, v, name, -2147483648.0, 2147483647.0, &d)) return false;
  *out = (int32_t)d;
  return true;
}

bool arg_fd(napi_env env, napi_value v, const char *name, int *out) {
  double d;
  if (!arg_integer(env, v, name, 0, 2147483647.0, &d)) return false;
  *out = (int)d;
  return true;
}

bool arg_bool(napi_env env, napi_value v, const char *name, bool *out) {
  napi_valuetype type;
  if (v == NULL || napi_typeof(env, v, &type) != napi_ok || type != napi_boolean)
    return type_error(env, name, "must be a boolean");
  return napi_get_value_bool(env, v, out) == napi_ok || type_error(env, name, "must be a boolean");
}

bool arg_string(napi_env env, napi_value v, const char *name, char **out) {
  napi_valuetype type;
  if (v == NULL || napi_typeof(env, v, &type) != napi_ok || type != napi_string)
    return type_error(env, name, "must be a string");
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return type_error(env, name, "must be a string");
  char *buf = malloc(len + 1);
  if (buf == NULL) {
    napi_throw_error(env, "ENOMEM", "iommufd_native: out of memory");
    return false;
  }
  size_t copied = 0;
  if (napi_get_value_string_utf8(env, v, buf, len + 1, &copied) != napi_ok || copied != len) {
    free(buf);
    return type_error(env, name, "must be a string");
  }
  if (strlen(buf) != len) {
    free(buf);
    return type_error(env, name, "must not contain a NUL character");
  }
  *out = buf;
  return true;
}

bool arg_buffer(napi_env env, napi_value v, const char *name, void **data, size_t *len) {
  bool is_buffer = false;
  if (v == NULL || napi_is_buffer(env, v, &is_buffer) != napi_ok || !is_buffer)
    return type_error(env, name, "must be a Buffer");
  if (napi_get_buffer_info(env, v, data, len) != napi_ok) return type_error(env, name, "must be a Buffer");
  return true;
}

bool arg_fd_array(napi_env env, napi_value v, const char *name, int *out, size_t cap, size_t *len) {
  bool is_array = false;
  if (v == NULL || napi_is_array(env, v, &is_array) != napi_ok || !is_array)
    return type_error(env, name, "must be an array of fds");
  uint32_t n = 0;
  if (napi_get_array_length(env, v, &n) != napi_ok) return type_error(env, name, "must be an array of fds");
  if (n > cap) {
    char what[64];
    snprintf(what, sizeof what, "must hold at most %zu fds", cap);
    return type_error(env, name, what);
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value element;
    if (napi_get_element(env, v, i, &element) != napi_ok) return type_error(env, name, "must be an array of fds");
    if (!arg_fd(env, element, name, &out[i])) return false;
  }
  *len = n;
  return true;
}

void free_string_vector(char **vec) {
  if (vec == NULL) return;
  for (char **p = vec; *p != NULL; p++) free(*p);
  free(vec);
}

bool arg_string_vector(napi_env env, napi_value v, const char *name, char ***out) {
  bool is_array = false;
  if (v == NULL || napi_is_array(env, v, &is_array) != napi_ok || !is_array)
    return type_error(env, name, "must be an array of strings");
  uint32_t n = 0;
  if (napi_get_array_length(env, v, &n) != napi_ok) return type_error(env, name, "must be an array of strings");
  char **vec = calloc((size_t)n + 1, sizeof *vec);
  if (vec == NULL) {
    napi_throw_error(env, "ENOMEM", "iommufd_native: out of memory");
    return false;
  }
  for (uint32_t i = 0; i < n; i++) {
    napi_value element = NULL;
    if (napi_get_element(env, v, i, &element) != napi_ok) {
      free_string_vector(vec);
      return type_error(env, name, "must be an array of strings");
    }
    if (!arg_string(env, element, name, &vec[i])) {
      free_string_vector(vec);
      return false;
    }
  }
  *out = vec;
  return true;
}

napi_value make_number(napi_env env, double value) {
  napi_value out;
  if (napi_create_double(env, value, &out) != napi_ok) return napi_failure(env, "create_double");
  return out;
}

bool set_number(napi_env env, napi_value obj, const char *key, double value) {
  napi_value v;
  return napi_create_double(env, value, &v) == napi_ok && napi_set_named_property(env, obj, key, v) == napi_ok;
}
