/*
 * Closing fds off the JS thread: closeLater(fd) hands fd to a small pool of closer threads.
 *
 * Why: the last close of a file runs the file's release as task_work of the thread that dropped
 * it, on that thread's way back to user space. A TCP socket with SO_LINGER and unsent data, a
 * FUSE file whose FLUSH its daemon never answers, an NFS file, a Unix socket whose receive queue
 * holds such files: each can make that close() block for as long as its sender likes. So an fd
 * that came from a client (or a socket a client can fill) is never closed on the event loop.
 *
 * Invariants:
 * - closeLater(fd) takes ownership of fd and returns 0, except for -EBUSY (a poll watcher still
 *   watches fd, see poll.c), -ENOMEM (no memory for the queue entry) and -EAGAIN (no closer
 *   thread could be started): then fd stays the caller's. It never waits for a close: the JS thread holds the lock only to link one entry.
 * - CLOSER_THREADS detached threads, started on first use, live as long as the process. Each fd
 *   is closed exactly once, never retried (Linux frees the fd even when close reports EINTR).
 *   Until then the fd number stays allocated, so it cannot be reused under anyone.
 * - pendingCloses() counts fds handed over and not yet closed (those being closed included).
 *   When a close never returns (a stuck FUSE file), that thread is lost for good; once all
 *   CLOSER_THREADS are stuck, later fds wait in the queue, still open: the count (shown in
 *   /metrics) grows, each entry is an open fd, so the process's RLIMIT_NOFILE is the bound, and
 *   at that point accept4/recvmsg fail with EMFILE (accepting backs off; see unix-server.ts).
 *   Nothing on the JS thread ever waits for the closers.
 * - No policy: which fds go here is decided in JS.
 */
#include "closer.h"
#include "exports.h"
#include "poll.h"
#include "values.h"

#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#define CLOSER_THREADS 4

typedef struct pending {
  struct pending *next;
  int fd;
} pending_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pending_t *head = NULL, *tail = NULL;
static size_t pending_count = 0; /* queued + being closed */
static int threads_started = 0;

static void *closer_main(void *unused) {
  (void)unused;
  for (;;) {
    pthread_mutex_lock(&lock);
    while (head == NULL) pthread_cond_wait(&wake, &lock);
    pending_t *p = head;
    head = p->next;
    if (head == NULL) tail = NULL;
    pthread_mutex_unlock(&lock);
    close(p->fd); /* may block for as long as the file's release takes; never retried */
    free(p);
    pthread_mutex_lock(&lock);
    pending_count--;
    pthread_mutex_unlock(&lock);
  }
  return NULL;
}

/* Called with `lock` held. Starts the threads still missing; a failure is retried on next use. */
static void start_threads(void) {
  while (threads_started < CLOSER_THREADS) {
    pthread_attr_t attr;
    pthread_t thread;
    if (pthread_attr_init(&attr) != 0) return;
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    int r = pthread_create(&thread, &attr, closer_main, NULL);
    pthread_attr_destroy(&attr);
    if (r != 0) return;
    threads_started++;
  }
}

int closer_enqueue(int fd) {
  pending_t *p = malloc(sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->fd = fd;
  p->next = NULL;
  pthread_mutex_lock(&lock);
  start_threads();
  if (threads_started == 0) { /* no thread could be started: the caller keeps the fd */
    pthread_mutex_unlock(&lock);
    free(p);
    return -EAGAIN;
  }
  if (tail == NULL) head = p;
  else tail->next = p;
  tail = p;
  pending_count++;
  pthread_cond_signal(&wake);
  pthread_mutex_unlock(&lock);
  return 0;
}

napi_value js_close_later(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv) || !arg_fd(env, argv[0], "fd", &fd)) return NULL;
  /* As for close(): closing an fd under a running uv_poll makes libuv abort the process. */
  if (poll_is_watching(fd)) return make_number(env, -EBUSY);
  return make_number(env, closer_enqueue(fd));
}

napi_value js_pending_closes(napi_env env, napi_callback_info info) {
  (void)info;
  pthread_mutex_lock(&lock);
  size_t n = pending_count;
  pthread_mutex_unlock(&lock);
  return make_number(env, (double)n);
}
