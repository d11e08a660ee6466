/*
 * load-client: the one load generator for both brokers (bench/ref-broker.c and the daemon),
 * so that the same client, built the same way, drives both in the same run.
 *
 *   load-client cycle SOCKET CLIENTS SECONDS WARMUP_SECONDS MEMORY_BYTES
 *       CLIENTS forked workers, each looping: fork a child (a new target: one lease per target
 *       process, kept until it exits), which connects, Opens for itself, receives the reply and
 *       its fd, closes the fd, Releases, closes and exits; the worker waits for it.
 *       Open latency is connect -> reply with the fd; Release latency is send -> reply.
 *   load-client resize SOCKET COUNT MEMORY_BYTES
 *       One connection: Open for itself, COUNT Resizes each one page lower, Release.
 *   load-client open-pids SOCKET MEMORY_BYTES < pids
 *       As a manager: for each pid on stdin, pidfd_open, Open naming it (SCM_RIGHTS), close the
 *       returned fd. One connection, one call at a time. Leases stay (the targets hold them).
 *   load-client first-reply SOCKET TIMEOUT_MS
 *       Connects as soon as the socket accepts, calls GetInfo, prints CLOCK_MONOTONIC (ns) at
 *       the reply: the runner compares it with its own clock (Node's hrtime is the same clock).
 *
 * Prints one JSON object on stdout. Latencies are in microseconds; percentiles are exact
 * (sorted samples, nearest rank). Invariants: every fd is CLOEXEC and closed on every path;
 * workers write samples only into their own slice of a shared mapping; the parent reads
 * them after waitpid, so nothing is read while written.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_SAMPLES (1 << 20)
#define REPLY_MAX 65536

struct slice { uint64_t opens, releases, errors; uint32_t open_us[MAX_SAMPLES]; uint32_t release_us[MAX_SAMPLES]; };

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

static int dial(const char *path) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = { .sun_family = AF_UNIX };
  strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
  if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) return fd;
  int saved = errno;
  if (fd >= 0) close(fd);
  errno = saved;
  return -1;
}

static int send_call(int sock, const char *json, int fd) {
  size_t len = strlen(json) + 1;
  struct iovec iov = { .iov_base = (void *)json, .iov_len = len };
  union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } control;
  struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
  if (fd >= 0) {
    memset(&control, 0, sizeof control);
    msg.msg_control = control.buf;
    msg.msg_controllen = sizeof control.buf;
    struct cmsghdr *h = CMSG_FIRSTHDR(&msg);
    if (h == NULL) return -1;
    h->cmsg_level = SOL_SOCKET;
    h->cmsg_type = SCM_RIGHTS;
    h->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(h), &fd, sizeof(int));
  }
  return sendmsg(sock, &msg, MSG_NOSIGNAL) == (ssize_t)len ? 0 : -1;
}

/* Reads one NUL-terminated reply into out; closes any fd but the first, returned in *fd. */
static int recv_reply(int sock, char *out, int *fd) {
  size_t len = 0;
  *fd = -1;
  for (;;) {
    union { char buf[CMSG_SPACE(sizeof(int) * 4)]; struct cmsghdr align; } control;
    struct iovec iov = { .iov_base = out + len, .iov_len = REPLY_MAX - 1 - len };
    struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf, .msg_controllen = sizeof control.buf };
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
    if (n <= 0) return -1;
    for (struct cmsghdr *h = CMSG_FIRSTHDR(&msg); h != NULL; h = CMSG_NXTHDR(&msg, h)) {
      int count = (int)((h->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < count; i++) {
        int got;
        memcpy(&got, CMSG_DATA(h) + i * sizeof(int), sizeof got);
        if (*fd < 0) *fd = got; else close(got);
      }
    }
    len += (size_t)n;
    if (memchr(out, 0, len) != NULL) return strstr(out, "\"error\"") == NULL ? 0 : 1;
    if (len >= REPLY_MAX - 1) return -1;
  }
}

/* Copies the lease id ("l-" + 16 hex) of a reply into id[19]. */
static int lease_id(const char *reply, char *id) {
  const char *p = strstr(reply, "\"id\":\"l-");
  if (p == NULL) return -1;
  memcpy(id, p + 6, 18);
  id[18] = 0;
  return 0;
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static void print_percentiles(const char *name, uint32_t *v, uint64_t n) {
  if (n == 0) { printf("\"%s\":null", name); return; }
  qsort(v, n, sizeof *v, cmp_u32);
#define RANK(q) v[(uint64_t)((q) * (double)(n - 1) + 0.5)]
  printf("\"%s\":{\"n\":%llu,\"p50\":%u,\"p90\":%u,\"p99\":%u,\"max\":%u}", name, (unsigned long long)n, RANK(0.5), RANK(0.9), RANK(0.99), v[n - 1]);
}

/* One cycle, in a child process of its own: a target process opens one lease in its life
 * (released or not, a lease stays until its target exits: docs/PROTOCOL.md "Release"), so a
 * VM start is a new process. The child writes its samples into the shared slice. */
static void one_cycle(const char *socket, const char *call, uint64_t warm, struct slice *s) {
  char reply[REPLY_MAX], id[19];
  uint64_t t0 = now_ns();
  int fd, sock = dial(socket);
  if (sock < 0 || send_call(sock, call, -1) != 0 || recv_reply(sock, reply, &fd) != 0 || lease_id(reply, id) != 0) {
    if (sock >= 0) close(sock);
    if (s->errors++ < 2) fprintf(stderr, "load-client %d: Open failed: %s\n", getpid(), sock < 0 ? strerror(errno) : reply);
    return;
  }
  uint64_t t1 = now_ns();
  close(fd);
  char release[128];
  snprintf(release, sizeof release, "{\"method\":\"io.iommufd.Broker.Release\",\"parameters\":{\"lease\":\"%s\"}}", id);
  int ok = send_call(sock, release, -1) == 0 && recv_reply(sock, reply, &fd) == 0;
  if (fd >= 0) close(fd);
  uint64_t t2 = now_ns();
  close(sock);
  if (!ok) {
    if (s->errors++ < 2) fprintf(stderr, "load-client %d: Release failed: %s\n", getpid(), reply);
    return;
  }
  if (t0 >= warm && s->opens < MAX_SAMPLES) {
    s->open_us[s->opens++] = (uint32_t)((t1 - t0) / 1000);
    s->release_us[s->releases++] = (uint32_t)((t2 - t1) / 1000);
  }
}

static void worker(const char *socket, uint64_t start, uint64_t warm, uint64_t end, const char *memory, struct slice *s) {
  char call[256];
  (void)start;
  for (uint64_t t0 = now_ns(); t0 < end; t0 = now_ns()) {
    pid_t pid = fork();
    if (pid < 0) { s->errors++; continue; }
    if (pid == 0) {
      snprintf(call, sizeof call, "{\"method\":\"io.iommufd.Broker.Open\",\"parameters\":{\"name\":\"bench-%d\",\"memoryBytes\":%s}}", getpid(), memory);
      one_cycle(socket, call, warm, s);
      _exit(0);
    }
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
  }
}

static int cycle(int argc, char **argv) {
  if (argc != 7) return 2;
  int clients = atoi(argv[3]);
  double seconds = atof(argv[4]), warmup = atof(argv[5]);
  struct slice *slices = mmap(NULL, sizeof(struct slice) * (size_t)clients, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (slices == MAP_FAILED) { perror("mmap"); return 1; }
  uint64_t start = now_ns(), warm = start + (uint64_t)(warmup * 1e9), end = warm + (uint64_t)(seconds * 1e9);
  for (int i = 0; i < clients; i++) {
    pid_t pid = fork();
    if (pid == 0) { worker(argv[2], start, warm, end, argv[6], &slices[i]); _exit(0); }
  }
  while (wait(NULL) > 0) {}
  uint64_t opens = 0, errors = 0;
  for (int i = 0; i < clients; i++) { opens += slices[i].opens; errors += slices[i].errors; }
  uint32_t *open_us = malloc(sizeof(uint32_t) * (opens + 1)), *release_us = malloc(sizeof(uint32_t) * (opens + 1));
  uint64_t k = 0;
  for (int i = 0; i < clients; i++) {
    memcpy(open_us + k, slices[i].open_us, sizeof(uint32_t) * slices[i].opens);
    memcpy(release_us + k, slices[i].release_us, sizeof(uint32_t) * slices[i].opens);
    k += slices[i].opens;
  }
  printf("{\"mode\":\"cycle\",\"clients\":%d,\"seconds\":%.3f,\"cycles\":%llu,\"errors\":%llu,\"cyclesPerSecond\":%.1f,",
      clients, seconds, (unsigned long long)opens, (unsigned long long)errors, (double)opens / seconds);
  print_percentiles("openUs", open_us, opens);
  printf(",");
  print_percentiles("releaseUs", release_us, opens);
  printf("}\n");
  return 0;
}

static int resize(int argc, char **argv) {
  if (argc != 5) return 2;
  long count = atol(argv[3]);
  unsigned long long memory = strtoull(argv[4], NULL, 10);
  static char reply[REPLY_MAX];
  char call[256], id[19];
  int fd, sock = dial(argv[2]);
  snprintf(call, sizeof call, "{\"method\":\"io.iommufd.Broker.Open\",\"parameters\":{\"name\":\"bench-resize\",\"memoryBytes\":%llu}}", memory);
  if (sock < 0 || send_call(sock, call, -1) != 0 || recv_reply(sock, reply, &fd) != 0 || lease_id(reply, id) != 0) {
    fprintf(stderr, "resize: Open failed: %s\n", reply);
    return 1;
  }
  close(fd);
  uint32_t *us = malloc(sizeof(uint32_t) * (size_t)count);
  uint64_t errors = 0, start = now_ns();
  for (long i = 0; i < count; i++) {
    snprintf(call, sizeof call, "{\"method\":\"io.iommufd.Broker.Resize\",\"parameters\":{\"lease\":\"%s\",\"memoryBytes\":%llu}}",
        id, memory - (unsigned long long)(i + 1) * 4096);
    uint64_t t0 = now_ns();
    if (send_call(sock, call, -1) != 0 || recv_reply(sock, reply, &fd) != 0) errors++;
    if (fd >= 0) close(fd);
    us[i] = (uint32_t)((now_ns() - t0) / 1000);
  }
  double seconds = (double)(now_ns() - start) / 1e9;
  snprintf(call, sizeof call, "{\"method\":\"io.iommufd.Broker.Release\",\"parameters\":{\"lease\":\"%s\"}}", id);
  if (send_call(sock, call, -1) == 0 && recv_reply(sock, reply, &fd) >= 0 && fd >= 0) close(fd);
  close(sock);
  printf("{\"mode\":\"resize\",\"count\":%ld,\"errors\":%llu,\"perSecond\":%.1f,", count, (unsigned long long)errors, (double)count / seconds);
  print_percentiles("resizeUs", us, (uint64_t)count);
  printf("}\n");
  return 0;
}

static int open_pids(int argc, char **argv) {
  if (argc != 4) return 2;
  static char reply[REPLY_MAX];
  char call[256];
  int sock = dial(argv[2]);
  if (sock < 0) { perror("connect"); return 1; }
  size_t cap = 1024, n = 0;
  uint32_t *us = malloc(sizeof(uint32_t) * cap);
  uint64_t errors = 0, start = now_ns();
  int pid;
  while (scanf("%d", &pid) == 1) {
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0), fd = -1;
    snprintf(call, sizeof call, "{\"method\":\"io.iommufd.Broker.Open\",\"parameters\":{\"name\":\"bench-%d\",\"memoryBytes\":%s,"
        "\"targetPidFileDescriptor\":0}}", pid, argv[3]);
    uint64_t t0 = now_ns();
    int r = pidfd < 0 ? -1 : send_call(sock, call, pidfd) != 0 ? -1 : recv_reply(sock, reply, &fd);
    if (pidfd >= 0) close(pidfd);
    if (fd >= 0) close(fd);
    if (r != 0) { errors++; if (errors < 4) fprintf(stderr, "open-pids: pid %d: %s\n", pid, r < 0 ? "no reply" : reply); if (r < 0) break; }
    if (n == cap) us = realloc(us, sizeof(uint32_t) * (cap *= 2));
    us[n++] = (uint32_t)((now_ns() - t0) / 1000);
  }
  double seconds = (double)(now_ns() - start) / 1e9;
  close(sock);
  printf("{\"mode\":\"open-pids\",\"opens\":%zu,\"errors\":%llu,\"seconds\":%.3f,\"perSecond\":%.1f,", n, (unsigned long long)errors, seconds, (double)n / seconds);
  print_percentiles("openUs", us, n);
  printf("}\n");
  return 0;
}

static int first_reply(int argc, char **argv) {
  if (argc != 4) return 2;
  uint64_t deadline = now_ns() + (uint64_t)atol(argv[3]) * 1000000ULL;
  static char reply[REPLY_MAX];
  int sock, fd;
  while ((sock = dial(argv[2])) < 0) {
    if (now_ns() > deadline) { perror("first-reply: connect"); return 1; }
    usleep(200);
  }
  if (send_call(sock, "{\"method\":\"org.varlink.service.GetInfo\"}", -1) != 0 || recv_reply(sock, reply, &fd) != 0) {
    fprintf(stderr, "first-reply: no reply\n");
    return 1;
  }
  uint64_t at = now_ns();
  close(sock);
  printf("{\"mode\":\"first-reply\",\"monotonicNs\":%llu}\n", (unsigned long long)at);
  return 0;
}

int main(int argc, char **argv) {
  int r = 2;
  if (argc >= 2 && strcmp(argv[1], "cycle") == 0) r = cycle(argc, argv);
  else if (argc >= 2 && strcmp(argv[1], "resize") == 0) r = resize(argc, argv);
  else if (argc >= 2 && strcmp(argv[1], "open-pids") == 0) r = open_pids(argc, argv);
  else if (argc >= 2 && strcmp(argv[1], "first-reply") == 0) r = first_reply(argc, argv);
  if (r == 2) fprintf(stderr, "usage: load-client cycle|resize|open-pids|first-reply ... (see the comment at the top)\n");
  return r;
}
