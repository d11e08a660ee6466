/*
 * ref-broker: the C reference for the benchmarks. It does the broker's syscalls for Open,
 * Resize and Release on the same wire (Varlink: NUL-terminated JSON on a Unix stream socket,
 * the device fd sent with SCM_RIGHTS), with no policy engine, no JSON parser and no checks
 * beyond the ones that cost a syscall. It is what "as fast as the kernel lets a broker go"
 * means on this machine; it is not a broker anyone should run.
 *
 *   ref-broker SOCKET JOURNAL_DIR [group]     (runs until SIGTERM/SIGINT)
 *
 * With "group", journal records are group-committed: every request that one epoll wake-up
 * made ready is handled, their records are written with one write and one fdatasync, and
 * only then are their replies sent (a reply still never precedes its record's fsync). This
 * is what the durable-Open figures would be with group commit in the daemon.
 *
 * Per connection (accept4): SO_PEERCRED and SO_PEERPIDFD once. Per Open: dup the peer pidfd
 * (or take the one sent with the call), read its pid from /proc/self/fdinfo, read
 * /proc/PID/status (CapEff: refuse CAP_IPC_LOCK) and /proc/PID/stat (start time), check the
 * pidfd is alive, memfd_create (the device stand-in), append a journal line and fdatasync
 * (before the limit, as the daemon journals a grant first), prlimit get + set RLIMIT_MEMLOCK
 * soft = hard = memory + 1 MiB (page-rounded), check the pidfd is alive again, watch the
 * pidfd in epoll, reply with the fd. Resize: prlimit + journal. Release: prlimit
 * back + journal + stop watching. A target's exit ends its lease (journaled).
 *
 * Invariants: single-threaded epoll loop, like the daemon; every fd CLOEXEC; a lease's pidfd
 * is owned by its lease slot, the device fd is closed right after sendmsg; one request per
 * connection in flight (Varlink order), replies written whole or the connection dropped.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#ifndef SO_PEERPIDFD
#define SO_PEERPIDFD 77
#endif
#define MAX_CONN 4096
#define MAX_LEASE 65536
#define BUF 65536
#define OVERHEAD (1024 * 1024)

struct conn { int fd; int pidfd; pid_t pid; size_t len; char buf[BUF]; };
struct lease { int used; int pidfd; pid_t pid; struct rlimit prev; uint64_t limit; };

static struct conn *conns[MAX_CONN];
static struct lease leases[MAX_LEASE];
static int ep, journal, group;

/* Group commit: records and replies held until the batch's one fdatasync. */
struct held { struct conn *c; int fd; char json[512]; };
static struct held held[MAX_CONN];
static int nheld;
static char pending[1 << 20];
static size_t npending;
static volatile sig_atomic_t stop;
static uint64_t next_id = 1;

static void on_signal(int s) { (void)s; stop = 1; }

static void journal_line(const char *line) {
  size_t n = strlen(line);
  if (group && npending + n <= sizeof pending) { memcpy(pending + npending, line, n); npending += n; return; }
  if (write(journal, line, n) != (ssize_t)n || fdatasync(journal) != 0) { perror("journal"); exit(1); }
}

static void send_now(struct conn *c, const char *json, int fd);

/* In group mode a reply waits for the batch's fdatasync; the held fd is ours until then. */
static void send_reply(struct conn *c, const char *json, int fd) {
  if (!group || nheld == MAX_CONN) { send_now(c, json, fd); return; }
  struct held *h = &held[nheld++];
  h->c = c;
  h->fd = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 3) : -1;
  snprintf(h->json, sizeof h->json, "%s", json);
}

/* Ends a batch: one write + fdatasync for every record, then every held reply, in order. */
static void commit_batch(void) {
  if (npending > 0) {
    if (write(journal, pending, npending) != (ssize_t)npending || fdatasync(journal) != 0) { perror("journal"); exit(1); }
    npending = 0;
  }
  for (int i = 0; i < nheld; i++) {
    struct held *h = &held[i];
    if (h->c != NULL) send_now(h->c, h->json, h->fd);
    if (h->fd >= 0) close(h->fd);
  }
  nheld = 0;
}

static void send_now(struct conn *c, const char *json, int fd) {
  size_t len = strlen(json) + 1;
  struct iovec iov = { .iov_base = (void *)json, .iov_len = len };
  union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (fd >= 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
    if (h == NULL) return;
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof(int));
  }
  /* Replies are small; a full socket buffer means a client that does not read: drop it. */
  if (sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len) shutdown(c->fd, SHUT_RDWR);
}

static void error_reply(struct conn *c, const char *name) {
  char out[256];
  snprintf(out, sizeof out, "{\"error\":\"io.iommufd.Broker.%s\",\"parameters\":{}}", name);
  send_reply(c, out, -1);
}

/* Reads a small /proc file into buf (NUL-terminated); its length, or -1. */
static ssize_t read_text(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n <= 0) return -1;
  buf[n] = 0;
  return n;
}

static pid_t pid_of_pidfd(int pidfd) {
  char path[64], text[512];
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", pidfd);
  if (read_text(path, text, sizeof text) < 0) return -1;
  char *p = strstr(text, "\nPid:");
  return p == NULL ? -1 : (pid_t)atoi(p + 5);
}

/* /proc/PID/status CapEff has CAP_IPC_LOCK (14)? -1 if unreadable. Also reads stat (start time),
 * as the daemon does, into its own buffer (CapEff still points into `status`). */
static int holds_ipc_lock(pid_t pid) {
  char path[64], status[4096], stat[1024];
  snprintf(path, sizeof path, "/proc/%d/status", pid);
  if (read_text(path, status, sizeof status) < 0) return -1;
  char *cap = strstr(status, "\nCapEff:");
  snprintf(path, sizeof path, "/proc/%d/stat", pid);
  if (read_text(path, stat, sizeof stat) < 0 || cap == NULL) return -1;
  return (strtoull(cap + 8, NULL, 16) >> 14) & 1;
}

static int alive(int pidfd) { return syscall(SYS_pidfd_send_signal, pidfd, 0, NULL, 0) == 0; }

static uint64_t number_after(const char *req, const char *key) {
  const char *p = strstr(req, key);
  return p == NULL ? 0 : strtoull(p + strlen(key), NULL, 10);
}

static void end_lease(uint64_t id, int restore) {
  struct lease *l = &leases[id % MAX_LEASE];
  if (!l->used) return;
  if (restore && alive(l->pidfd)) prlimit(l->pid, RLIMIT_MEMLOCK, &l->prev, NULL);
  char line[96];
  snprintf(line, sizeof line, "{\"v\":1,\"type\":\"release\",\"id\":\"l-%016llx\"}\n", (unsigned long long)id);
  journal_line(line);
  epoll_ctl(ep, EPOLL_CTL_DEL, l->pidfd, NULL);
  close(l->pidfd);
  l->used = 0;
}

static void do_open(struct conn *c, int passed) {
  int pidfd = passed >= 0 ? passed : fcntl(c->pidfd, F_DUPFD_CLOEXEC, 3);
  pid_t pid = pid_of_pidfd(pidfd);
  int ipc = pid > 0 ? holds_ipc_lock(pid) : -1;
  if (ipc != 0 || !alive(pidfd)) { close(pidfd); error_reply(c, ipc == 1 ? "TargetBypassesAccounting" : "TargetGone"); return; }
  uint64_t memory = number_after(c->buf, "\"memoryBytes\":");
  uint64_t limit = (memory + OVERHEAD + 4095) / 4096 * 4096;
  uint64_t id = next_id++;
  struct lease *l = &leases[id % MAX_LEASE];
  if (l->used) { close(pidfd); error_reply(c, "LimitExceeded"); return; }
  int dev = memfd_create("ref-broker-device", MFD_CLOEXEC);
  char line[256];
  snprintf(line, sizeof line, "{\"v\":1,\"type\":\"grant\",\"lease\":{\"id\":\"l-%016llx\",\"targetPid\":%d,\"limitBytes\":%llu}}\n",
      (unsigned long long)id, pid, (unsigned long long)limit);
  journal_line(line);
  struct rlimit want = { limit, limit };
  if (prlimit(pid, RLIMIT_MEMLOCK, NULL, &l->prev) != 0 || prlimit(pid, RLIMIT_MEMLOCK, &want, NULL) != 0 || !alive(pidfd)) {
    close(dev); close(pidfd); error_reply(c, "KernelRefused"); return;
  }
  *l = (struct lease){ .used = 1, .pidfd = pidfd, .pid = pid, .prev = l->prev, .limit = limit };
  struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (1ULL << 63) | id };
  epoll_ctl(ep, EPOLL_CTL_ADD, pidfd, &ev);
  char out[512];
  snprintf(out, sizeof out, "{\"parameters\":{\"lease\":{\"id\":\"l-%016llx\",\"pid\":%d,\"memoryBytes\":%llu,\"limitBytes\":%llu},"
      "\"fileDescriptor\":0}}", (unsigned long long)id, pid, (unsigned long long)memory, (unsigned long long)limit);
  send_reply(c, out, dev);
  close(dev);
}

static void do_lease_call(struct conn *c, int release) {
  const char *p = strstr(c->buf, "\"l-");
  uint64_t id = p == NULL ? 0 : strtoull(p + 3, NULL, 16);
  struct lease *l = &leases[id % MAX_LEASE];
  if (id == 0 || !l->used) { error_reply(c, "NoSuchLease"); return; }
  if (release) {
    end_lease(id, 1);
    send_reply(c, "{\"parameters\":{\"limitRestored\":true}}", -1);
    return;
  }
  uint64_t memory = number_after(c->buf, "\"memoryBytes\":");
  uint64_t limit = (memory + OVERHEAD + 4095) / 4096 * 4096;
  struct rlimit want = { limit, limit };
  if (!alive(l->pidfd) || prlimit(l->pid, RLIMIT_MEMLOCK, &want, NULL) != 0) { error_reply(c, "KernelRefused"); return; }
  char line[128], out[256];
  snprintf(line, sizeof line, "{\"v\":1,\"type\":\"resize\",\"id\":\"l-%016llx\",\"limitBytes\":%llu}\n",
      (unsigned long long)id, (unsigned long long)limit);
  journal_line(line);
  snprintf(out, sizeof out, "{\"parameters\":{\"lease\":{\"id\":\"l-%016llx\",\"limitBytes\":%llu},\"previousLimitBytes\":%llu}}",
      (unsigned long long)id, (unsigned long long)limit, (unsigned long long)l->limit);
  l->limit = limit;
  send_reply(c, out, -1);
}

static void close_conn(struct conn *c) {
  for (int i = 0; i < nheld; i++) if (held[i].c == c) held[i].c = NULL;
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  if (c->pidfd >= 0) close(c->pidfd);
  conns[c->fd] = NULL;
  free(c);
}

static void on_readable(struct conn *c) {
  union { char buf[CMSG_SPACE(sizeof(int) * 4)]; struct cmsghdr align; } control;
  struct iovec iov = { .iov_base = c->buf + c->len, .iov_len = BUF - 1 - c->len };
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf };
  ssize_t n = recvmsg(c->fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  if (n < 0 && errno == EAGAIN) return;
  int passed = -1;
  for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h != NULL; h = CMSG_NXTHDR(&msg, h)) {
    if (h->cmsg_level == SOL_SOCKET && h->cmsg_type == SCM_RIGHTS) {
      int count = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < count; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(h) + i * sizeof(int), sizeof fd);
        if (passed < 0) passed = fd; else close(fd);
      }
    }
  }
  if (n <= 0) { if (passed >= 0) close(passed); close_conn(c); return; }
  c->len += (size_t)n;
  c->buf[c->len] = 0;
  char *nul;
  while ((nul = memchr(c->buf, 0, c->len)) != NULL) {
    if (strstr(c->buf, "Broker.Open")) do_open(c, passed);
    else if (strstr(c->buf, "Broker.Resize")) do_lease_call(c, 0);
    else if (strstr(c->buf, "Broker.Release")) do_lease_call(c, 1);
    else send_reply(c, "{\"parameters\":{\"vendor\":\"ref-broker\",\"product\":\"ref\",\"version\":\"0\",\"url\":\"\",\"interfaces\":[]}}", -1);
    passed = -1;
    size_t used = (size_t)(nul - c->buf) + 1;
    memmove(c->buf, nul + 1, c->len - used);
    c->len -= used;
    c->buf[c->len] = 0;
  }
  if (passed >= 0) close(passed);
  if (c->len >= BUF - 1) close_conn(c);
}

int main(int argc, char **argv) {
  if (argc != 3 && !(argc == 4 && strcmp(argv[3], "group") == 0)) { fprintf(stderr, "usage: ref-broker SOCKET JOURNAL_DIR [group]\n"); return 2; }
  group = argc == 4;
  char path[4096];
  snprintf(path, sizeof path, "%s/ref.journal", argv[2]);
  journal = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
  unlink(argv[1]);
  if (journal < 0 || lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(lfd, 512) != 0) { perror("start"); return 1; }
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event ev = { .events = EPOLLIN, .data.u64 = (uint64_t)lfd };
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
  printf("serving\n");
  fflush(stdout);
  struct epoll_event events[64];
  while (!stop) {
    int n = epoll_wait(ep, events, 64, -1);
    for (int i = 0; i < n; i++) {
      uint64_t key = events[i].data.u64;
      if (key >> 63) { end_lease(key & ~(1ULL << 63), 0); continue; }
      int fd = (int)key;
      if (fd == lfd) {
        for (int k = 0; k < 16; k++) {
          int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
          if (cfd < 0) break;
          if (cfd >= MAX_CONN) { close(cfd); continue; }
          struct conn *c = calloc(1, sizeof *c);
          struct ucred cred;
          socklen_t len = sizeof cred;
          getsockopt(cfd, SOL_SOCKET, SO_PEERCRED, &cred, &len);
          len = sizeof c->pidfd;
          if (getsockopt(cfd, SOL_SOCKET, SO_PEERPIDFD, &c->pidfd, &len) != 0) c->pidfd = -1;
          c->fd = cfd;
          c->pid = cred.pid;
          conns[cfd] = c;
          struct epoll_event cev = { .events = EPOLLIN, .data.u64 = (uint64_t)cfd };
          epoll_ctl(ep, EPOLL_CTL_ADD, cfd, &cev);
        }
      } else if (conns[fd] != NULL) {
        on_readable(conns[fd]);
      }
    }
    commit_batch();
  }
  return 0;
}
