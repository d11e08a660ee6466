/*
 * Closing fds off the JS thread: closeLater(fd, owner) hands fd to a pool of closer threads.
 *
 * Why: the last close of a file runs the file's release as task_work of the thread that dropped
 * it, on that thread's way back to user space. A TCP socket with SO_LINGER and unsent data, a
 * FUSE file whose FLUSH its daemon never answers, an NFS file, a Unix socket whose receive queue
 * holds such files: each can make that close() block for as long as its sender likes. So an fd
 * that came from a client (or a socket a client can fill) is never closed on the event loop.
 *
 * Invariants:
 * - closeLater(fd, owner) takes ownership of fd and returns 0, except for -EBUSY (a poll watcher
 *   still watches fd, see poll.c), -ENOMEM (no memory for the queue entry) and -EAGAIN (no
 *   closer thread could be started): then fd stays the caller's. It never waits for a close:
 *   the JS thread holds the lock only to link one entry (and, rarely, start a thread).
 * - Every fd is charged to an owner: the uid of the client it came from, or NO_OWNER (-1) for
 *   the daemon's own. At most PER_OWNER_THREADS of one owner's closes run at once; the rest of
 *   its fds wait in the queue. So a client whose closes never return (four lingering sockets)
 *   holds at most PER_OWNER_THREADS threads, and never delays another owner's closes.
 * - Threads: MIN_THREADS started on first use, more started (up to MAX_THREADS) whenever an
 *   entry could run and no thread is waiting for work. Detached, they live as long as the
 *   process. Once every thread is stuck (MAX_THREADS / PER_OWNER_THREADS owners with stuck
 *   closes), later fds wait in the queue, still open; the JS side refuses an owner's new fds and
 *   connections long before that (a bound on pendingClosesOf(owner): daemon/shell/varlink/
 *   close-quota.ts, which varlink/server.ts and connection.ts ask).
 * - Each fd is closed exactly once, never retried (Linux frees the fd even when close reports
 *   EINTR). Until then the fd number stays allocated, so it cannot be reused under anyone.
 * - pendingCloses() counts fds handed over and not yet closed (those being closed included);
 *   pendingClosesOf(owner) the same for one owner. An owner's record is freed when its count
 *   reaches 0, so the table holds only owners with closes pending.
 * - closeSocketLater(fd, owner), for a connected AF_UNIX socket: shutdown(SHUT_RDWR) first, so
 *   nothing more can arrive in its receive queue; if that queue holds no fds (SIOCINQ 0, or a
 *   MSG_PEEK with no control buffer reports no MSG_CTRUNC), its close can drop no client file
 *   and is done right here (returns 1); otherwise it goes to closeLater (returns 0).
 * - No policy: which fds go here, and whose they are, is decided in JS.
 */
#include "closer.h"
#include "exports.h"
#include "poll.h"
#include "values.h"

#include <linux/sockios.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#define MIN_THREADS 4
#define MAX_THREADS 32
#define PER_OWNER_THREADS 2
#define NO_OWNER (-1L)

typedef struct owner {
  struct owner *next;
  long id;
  size_t pending; /* queued + being closed */
  size_t running; /* being closed */
} owner_t;

typedef struct pending {
  struct pending *next;
  owner_t *owner;
  int fd;
} pending_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static pending_t *head = NULL;
static owner_t *owners = NULL;
static size_t pending_count = 0; /* queued + being closed, all owners */
static int threads_started = 0;
static int threads_waiting = 0;

/* With `lock` held: the owner's record, created if absent (NULL: no memory). */
static owner_t *owner_of(long id) {
  for (owner_t *o = owners; o != NULL; o = o->next) {
    if (o->id == id) return o;
  }
  owner_t *o = calloc(1, sizeof *o);
  if (o == NULL) return NULL;
  o->id = id;
  o->next = owners;
  owners = o;
  return o;
}

/* With `lock` held: drops the owner's record once nothing of it is pending. */
static void owner_release(owner_t *o) {
  if (o->pending > 0) return;
  for (owner_t **p = &owners; *p != NULL; p = &(*p)->next) {
    if (*p == o) {
      *p = o->next;
      free(o);
      return;
    }
  }
}

static int may_run(const owner_t *o) {
  return o->id == NO_OWNER || o->running < PER_OWNER_THREADS;
}

/* With `lock` held: unlinks and returns the first queued entry whose owner may run, or NULL. */
static pending_t *take_runnable(void) {
  for (pending_t **p = &head; *p != NULL; p = &(*p)->next) {
    if (may_run((*p)->owner)) {
      pending_t *e = *p;
      *p = e->next;
      return e;
    }
  }
  return NULL;
}

static void *closer_main(void *unused) {
  (void)unused;
  pthread_mutex_lock(&lock);
  for (;;) {
    pending_t *p = take_runnable();
    if (p == NULL) {
      threads_waiting++;
      pthread_cond_wait(&wake, &lock);
      threads_waiting--;
      continue;
    }
    owner_t *o = p->owner;
    o->running++;
    pthread_mutex_unlock(&lock);
    close(p->fd); /* may block for as long as the file's release takes; never retried */
    free(p);
    pthread_mutex_lock(&lock);
    o->running--;
    o->pending--;
    pending_count--;
    owner_release(o);
    pthread_cond_broadcast(&wake); /* that owner's next entry may run now */
  }
  return NULL;
}

/* With `lock` held: starts one more thread; 0 on success. */
static int start_thread(void) {
  pthread_attr_t attr;
  pthread_t thread;
  if (pthread_attr_init(&attr) != 0) return -1;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 * 1024);
  int r = pthread_create(&thread, &attr, closer_main, NULL);
  pthread_attr_destroy(&attr);
  if (r != 0) return -1;
  threads_started++;
  return 0;
}

int closer_enqueue_owned(int fd, long owner_id) {
  pending_t *p = malloc(sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->fd = fd;
  p->next = NULL;
  pthread_mutex_lock(&lock);
  while (threads_started < MIN_THREADS && start_thread() == 0) {}
  owner_t *o = threads_started == 0 ? NULL : owner_of(owner_id);
  if (o == NULL) { /* no thread (or no memory): the caller keeps the fd */
    int err = threads_started == 0 ? -EAGAIN : -ENOMEM;
    pthread_mutex_unlock(&lock);
    free(p);
    return err;
  }
  p->owner = o;
  pending_t **tail = &head;
  while (*tail != NULL) tail = &(*tail)->next;
  *tail = p;
  o->pending++;
  pending_count++;
  /* Every thread is busy (some perhaps stuck for good) and this entry could run: add one. */
  if (threads_waiting == 0 && may_run(o) && threads_started < MAX_THREADS) start_thread();
  pthread_cond_broadcast(&wake);
  pthread_mutex_unlock(&lock);
  return 0;
}

int closer_enqueue(int fd) {
  return closer_enqueue_owned(fd, NO_OWNER);
}

/* Whether fd's receive queue holds fds (1), not (0), or -errno. Reads nothing, installs nothing. */
static int queue_holds_fds(int fd) {
  int queued = 0;
  if (ioctl(fd, SIOCINQ, &queued) < 0) return -errno;
  if (queued <= 0) return 0;
  char *buf = malloc((size_t)queued);
  if (buf == NULL) return -ENOMEM;
  struct iovec iov = { .iov_base = buf, .iov_len = (size_t)queued };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  ssize_t n = recvmsg(fd, &msg, MSG_PEEK | MSG_DONTWAIT);
  int err = errno;
  free(buf);
  if (n < 0) return err == EAGAIN ? 0 : -err;
  return (msg.msg_flags & MSG_CTRUNC) ? 1 : 0;
}

/* An owner argument: a uid or -1; absent (NULL) means -1, the daemon's own. */
static int arg_owner(napi_env env, napi_value value, long *out) {
  if (value == NULL) { *out = NO_OWNER; return 1; }
  double d;
  if (napi_get_value_double(env, value, &d) != napi_ok || d != (double)(long)d || d < -1 || d > 4294967295.0) {
    napi_throw_type_error(env, NULL, "owner must be a uid or -1");
    return 0;
  }
  *out = (long)d;
  return 1;
}

napi_value js_close_later(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  long owner;
  if (!get_args_opt(env, info, 1, 2, argv) || !arg_fd(env, argv[0], "fd", &fd) || !arg_owner(env, argv[1], &owner)) return NULL;
  /* As for close(): closing an fd under a running uv_poll makes libuv abort the process. */
  if (poll_is_watching(fd)) return make_number(env, -EBUSY);
  return make_number(env, closer_enqueue_owned(fd, owner));
}

napi_value js_close_socket_later(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  int fd;
  long owner;
  if (!get_args(env, info, 2, argv) || !arg_fd(env, argv[0], "fd", &fd) || !arg_owner(env, argv[1], &owner)) return NULL;
  if (poll_is_watching(fd)) return make_number(env, -EBUSY);
  /* After SHUT_RDWR a peer's sendmsg fails (EPIPE): the queue can only shrink from here. */
  if (shutdown(fd, SHUT_RDWR) == 0 && queue_holds_fds(fd) == 0) {
    close(fd); /* nothing of a client's can be released here: never blocks */
    return make_number(env, 1);
  }
  return make_number(env, closer_enqueue_owned(fd, owner));
}

napi_value js_pending_closes(napi_env env, napi_callback_info info) {
  (void)info;
  pthread_mutex_lock(&lock);
  size_t n = pending_count;
  pthread_mutex_unlock(&lock);
  return make_number(env, (double)n);
}

napi_value js_pending_closes_of(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  long owner;
  if (!get_args(env, info, 1, argv) || !arg_owner(env, argv[0], &owner)) return NULL;
  size_t n = 0;
  pthread_mutex_lock(&lock);
  for (owner_t *o = owners; o != NULL; o = o->next) {
    if (o->id == owner) n = o->pending;
  }
  pthread_mutex_unlock(&lock);
  return make_number(env, (double)n);
}
