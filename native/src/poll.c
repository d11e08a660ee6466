/*
 * Readiness of fds on Node's own event loop (uv_poll), with callbacks into JS.
 *
 * Invariants:
 * - A watch is owned jointly by libuv (until its close callback ran) and by the JS external
 *   that names it (until the GC finalizes it); it is freed only when both have let go, so
 *   neither a late finalizer nor a late close callback can touch freed memory.
 * - The JS callback stays strongly referenced from startPoll until stopPoll (or until the
 *   environment is torn down); stopPoll is idempotent and never closes the fd. JS references
 *   are released only on the JS thread with the env alive (never from the close callback); a
 *   stopPoll from inside the watch's own callback defers that until the callback returned.
 * - Callbacks run through napi_make_callback with an async context (so microtasks and
 *   nextTicks drain and async_hooks see them); an exception thrown by a callback is handed to
 *   napi_fatal_exception and so reaches process 'uncaughtException', never swallowed.
 * - Event masks are validated here: libuv asserts (aborts) on unknown bits.
 * - Every watch between startPoll and stopPoll is listed (poll_is_watching), so files.c can
 *   refuse to close a watched fd: libuv aborts the process when epoll meets a closed fd.
 */
#include "exports.h"
#include "values.h"

#include "poll.h"

#include <pthread.h>
#include <stdlib.h>
#include <uv.h>

#define KNOWN_EVENTS (UV_READABLE | UV_WRITABLE | UV_DISCONNECT)

typedef struct watch {
  uv_poll_t handle;
  struct watch *next_active; /* in `active` from a successful startPoll until it stops */
  int fd;
  napi_env env;
  napi_ref callback;
  napi_async_context context;
  bool stopping;  /* stopPoll or env cleanup started uv_close */
  bool in_callback; /* inside napi_make_callback: the async context is in use */
  bool closed;    /* libuv's close callback ran: libuv no longer uses `handle` */
  bool finalized; /* the JS external is gone (or was never created) */
} watch_t;

/* Watches between startPoll and stopPoll, so close() can refuse their fds: libuv aborts the
 * whole process if a watched fd is closed under it. Environments may live on several threads. */
static pthread_mutex_t active_lock = PTHREAD_MUTEX_INITIALIZER;
static watch_t *active = NULL;

static void activate(watch_t *w) {
  pthread_mutex_lock(&active_lock);
  w->next_active = active;
  active = w;
  pthread_mutex_unlock(&active_lock);
}

static void deactivate(watch_t *w) {
  pthread_mutex_lock(&active_lock);
  for (watch_t **link = &active; *link != NULL; link = &(*link)->next_active) {
    if (*link == w) {
      *link = w->next_active;
      break;
    }
  }
  pthread_mutex_unlock(&active_lock);
}

bool poll_is_watching(int fd) {
  bool found = false;
  pthread_mutex_lock(&active_lock);
  for (watch_t *w = active; w != NULL && !found; w = w->next_active) found = w->fd == fd;
  pthread_mutex_unlock(&active_lock);
  return found;
}

static void maybe_free(watch_t *w) {
  if (w->closed && w->finalized) free(w);
}

static void on_close(uv_handle_t *handle) {
  watch_t *w = handle->data;
  w->closed = true;
  maybe_free(w);
}

static void on_finalize(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  watch_t *w = data;
  w->finalized = true;
  maybe_free(w);
}

/* Releases the JS side (callback reference, async context). Only with a live env. */
static void release_js(watch_t *w) {
  if (w->callback != NULL) napi_delete_reference(w->env, w->callback);
  if (w->context != NULL) napi_async_destroy(w->env, w->context);
  w->callback = NULL;
  w->context = NULL;
}

/* The environment is going away with the watch still running: stop it so the loop can close.
 * The JS references die with the env; touching them now is not safe. */
static void on_env_cleanup(void *arg) {
  watch_t *w = arg;
  if (w->stopping) return;
  w->stopping = true;
  deactivate(w);
  uv_poll_stop(&w->handle);
  uv_close((uv_handle_t *)&w->handle, on_close);
}

static void on_poll(uv_poll_t *handle, int status, int events) {
  watch_t *w = handle->data;
  if (w->stopping || w->callback == NULL) return;
  napi_env env = w->env;
  napi_handle_scope scope;
  if (napi_open_handle_scope(env, &scope) != napi_ok) return;
  napi_value callback, recv, argv[2];
  if (napi_get_reference_value(env, w->callback, &callback) == napi_ok && callback != NULL &&
      napi_get_global(env, &recv) == napi_ok && napi_create_int32(env, status, &argv[0]) == napi_ok &&
      napi_create_int32(env, events, &argv[1]) == napi_ok) {
    w->in_callback = true;
    napi_status s = napi_make_callback(env, w->context, recv, callback, 2, argv, NULL);
    w->in_callback = false;
    if (w->stopping) release_js(w); /* stopPoll ran inside the callback and deferred this */
    bool pending = false;
    if (s == napi_pending_exception || (napi_is_exception_pending(env, &pending) == napi_ok && pending)) {
      napi_value error;
      if (napi_get_and_clear_last_exception(env, &error) == napi_ok) napi_fatal_exception(env, error);
    }
  }
  napi_close_handle_scope(env, scope);
}

static bool arg_events(napi_env env, napi_value v, int *out) {
  double d;
  if (!arg_integer(env, v, "events", 0, KNOWN_EVENTS, &d)) return false;
  if (((int)d & ~KNOWN_EVENTS) != 0) return type_error(env, "events", "has unknown bits");
  *out = (int)d;
  return true;
}

static watch_t *arg_watch(napi_env env, napi_value v) {
  napi_valuetype type;
  void *data = NULL;
  if (v == NULL || napi_typeof(env, v, &type) != napi_ok || type != napi_external ||
      napi_get_value_external(env, v, &data) != napi_ok || data == NULL) {
    type_error(env, "handle", "must be a PollHandle from startPoll");
    return NULL;
  }
  return data;
}

napi_value js_start_poll(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  int fd, events = 0;
  napi_valuetype type;
  if (!get_args(env, info, 3, argv) || !arg_fd(env, argv[0], "fd", &fd) || !arg_events(env, argv[1], &events))
    return NULL;
  if (napi_typeof(env, argv[2], &type) != napi_ok || type != napi_function) {
    type_error(env, "callback", "must be a function");
    return NULL;
  }
  uv_loop_t *loop;
  if (napi_get_uv_event_loop(env, &loop) != napi_ok) return napi_failure(env, "get_uv_event_loop");
  watch_t *w = calloc(1, sizeof *w);
  if (w == NULL) return make_number(env, -ENOMEM);
  w->env = env;
  w->fd = fd;
  w->handle.data = w;
  napi_value resource, name, external;
  if (napi_create_reference(env, argv[2], 1, &w->callback) != napi_ok ||
      napi_create_object(env, &resource) != napi_ok ||
      napi_create_string_utf8(env, "iommufd_native.poll", NAPI_AUTO_LENGTH, &name) != napi_ok ||
      napi_async_init(env, resource, name, &w->context) != napi_ok) {
    release_js(w);
    free(w);
    return napi_failure(env, "startPoll setup");
  }
  int r = uv_poll_init(loop, &w->handle, fd);
  if (r < 0) {
    release_js(w);
    free(w); /* never registered with libuv */
    return make_number(env, r);
  }
  r = uv_poll_start(&w->handle, events, on_poll);
  if (r < 0) {
    release_js(w);
    w->stopping = true;
    w->finalized = true; /* no JS external will ever exist */
    uv_close((uv_handle_t *)&w->handle, on_close);
    return make_number(env, r);
  }
  if (napi_create_external(env, w, on_finalize, NULL, &external) != napi_ok) {
    release_js(w);
    w->stopping = true;
    w->finalized = true;
    uv_poll_stop(&w->handle);
    uv_close((uv_handle_t *)&w->handle, on_close);
    return napi_failure(env, "startPoll handle");
  }
  napi_add_env_cleanup_hook(env, on_env_cleanup, w);
  activate(w);
  return external;
}

napi_value js_update_poll(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int events = 0;
  if (!get_args(env, info, 2, argv)) return NULL;
  watch_t *w = arg_watch(env, argv[0]);
  if (w == NULL || !arg_events(env, argv[1], &events)) return NULL;
  if (w->stopping) return make_number(env, -EBADF); /* stopped: libuv must not see it again */
  return make_number(env, uv_poll_start(&w->handle, events, on_poll));
}

napi_value js_stop_poll(napi_env env, napi_callback_info info) {
  napi_value argv[1], undefined;
  if (!get_args(env, info, 1, argv)) return NULL;
  watch_t *w = arg_watch(env, argv[0]);
  if (w == NULL) return NULL;
  if (!w->stopping) {
    w->stopping = true;
    deactivate(w);
    napi_remove_env_cleanup_hook(env, on_env_cleanup, w);
    if (!w->in_callback) release_js(w); /* else on_poll releases it once the callback returns */
    uv_poll_stop(&w->handle);
    uv_close((uv_handle_t *)&w->handle, on_close);
  }
  napi_get_undefined(env, &undefined);
  return undefined;
}
