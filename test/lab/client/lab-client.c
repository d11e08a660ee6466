/*
 * lab-client: the kernel lab's test client. It drives an iommufd FD from inside the VM, one
 * command per stdin line, one reply per stdout line ("ok ..." or "err ERRNAME detail").
 * The in-VM suite (test/lab/suite/) spawns it as an unprivileged uid with no
 * capabilities (via setpriv), or through `iommufdctl exec`, and steps it command by command.
 *
 * Invariants:
 * - It holds no policy and never retries: each command is one syscall (or a fixed short
 *   sequence) and reports the kernel's answer verbatim; errno travels as its symbolic name.
 * - Fd ownership: the "current" iommufd FD (from --fd N, `fd`, `device`, or an fd a `call`
 *   reply brought) is owned by this process and closed by `close`, or when `device` or a `call`
 *   replaces it (`fd N` only points at another fd and closes nothing); the
 *   socket of a `call` is opened and closed inside that command.
 * - Memory given to IOAS_MAP is private anonymous memory mmapped for that map alone, recorded
 *   by iova, and munmapped when the map fails or is unmapped.
 * - Struct layouts are written out here (the host's linux-libc-dev predates them) and checked
 *   with static_assert against the sizes the 6.12 kernel uses.
 *
 * Commands: device PATH | fd N | close | option-get ID [OBJ] | option-set ID VAL [OBJ] |
 *   ioas-alloc | mock-domain IOAS | map IOAS BYTES | unmap IOAS IOVA | vm | rlimit-get |
 *   rlimit-set SOFT HARD | drop UID GID | caps | pid | call SOCKET METHOD PARAMS-JSON | exit
 */
#define _GNU_SOURCE
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define IOMMUFD_TYPE ';'
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_IOAS_UNMAP _IO(IOMMUFD_TYPE, 0x86)
#define IOMMU_OPTION _IO(IOMMUFD_TYPE, 0x87)
#define IOMMU_TEST_CMD _IO(IOMMUFD_TYPE, 0x80 + 32)
#define IOMMU_TEST_OP_MOCK_DOMAIN 2
#define MAP_WRITEABLE 2
#define MAP_READABLE 4

struct iommu_option { uint32_t size, option_id; uint16_t op, reserved; uint32_t object_id; uint64_t val64; };
struct iommu_ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct iommu_ioas_map { uint32_t size, flags, ioas_id, reserved; uint64_t user_va, length, iova; };
struct iommu_ioas_unmap { uint32_t size, ioas_id; uint64_t iova, length; };
struct iommu_test_cmd {
  uint32_t size, op, id, reserved;
  union { struct { uint32_t out_stdev_id, out_hwpt_id, out_idev_id; } mock_domain; uint64_t pad[6]; };
  uint32_t last;
};
static_assert(sizeof(struct iommu_option) == 24, "iommu_option");
static_assert(sizeof(struct iommu_ioas_alloc) == 12, "iommu_ioas_alloc");
static_assert(sizeof(struct iommu_ioas_map) == 40, "iommu_ioas_map");
static_assert(sizeof(struct iommu_ioas_unmap) == 24, "iommu_ioas_unmap");
static_assert(sizeof(struct iommu_test_cmd) == 72, "iommu_test_cmd");

#define MAX_MAPS 64
static struct { uint64_t iova, length; void *va; } maps[MAX_MAPS];
static int cur_fd = -1;

static int reply_err(int e, const char *what) {
  const char *name = strerrorname_np(e);
  printf("err %s %s\n", name ? name : "EUNKNOWN", what);
  return -1;
}
static int reply_usage(const char *what) { printf("err EINVAL usage: %s\n", what); return -1; }

static int need_fd(void) {
  if (cur_fd >= 0) return 1;
  printf("err EBADF no iommufd FD yet (use --fd, fd, device or call)\n");
  return 0;
}

static int parse_u64(const char *s, uint64_t *out) {
  if (s == NULL) return 0;
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 0);
  if (errno != 0 || *s == '\0' || *end != '\0' || *s == '-') return 0;
  *out = v;
  return 1;
}
/* rlimit values: -1 or "inf" mean RLIM_INFINITY. */
static int parse_rlim(const char *s, rlim_t *out) {
  uint64_t v;
  if (s != NULL && (strcmp(s, "-1") == 0 || strcmp(s, "inf") == 0)) { *out = RLIM_INFINITY; return 1; }
  if (!parse_u64(s, &v)) return 0;
  *out = v;
  return 1;
}
static long long show_rlim(rlim_t v) { return v == RLIM_INFINITY ? -1 : (long long)v; }

static int cmd_option(int set, char **a) {
  uint64_t id, val = 0, obj = 0;
  if (!parse_u64(a[0], &id) || (set && !parse_u64(a[1], &val)) || (a[set ? 2 : 1] && !parse_u64(a[set ? 2 : 1], &obj)))
    return reply_usage(set ? "option-set ID VAL [OBJ]" : "option-get ID [OBJ]");
  if (!need_fd()) return -1;
  struct iommu_option o = { .size = sizeof o, .option_id = (uint32_t)id, .op = set ? 0 : 1,
                            .object_id = (uint32_t)obj, .val64 = val };
  if (ioctl(cur_fd, IOMMU_OPTION, &o) != 0) return reply_err(errno, "IOMMU_OPTION");
  printf("ok %" PRIu64 "\n", o.val64);
  return 0;
}

static int cmd_ioas_alloc(void) {
  if (!need_fd()) return -1;
  struct iommu_ioas_alloc c = { .size = sizeof c };
  if (ioctl(cur_fd, IOMMU_IOAS_ALLOC, &c) != 0) return reply_err(errno, "IOMMU_IOAS_ALLOC");
  printf("ok %u\n", c.out_ioas_id);
  return 0;
}

static int cmd_mock_domain(char **a) {
  uint64_t ioas;
  if (!parse_u64(a[0], &ioas)) return reply_usage("mock-domain IOAS");
  if (!need_fd()) return -1;
  struct iommu_test_cmd c = { .size = sizeof c, .op = IOMMU_TEST_OP_MOCK_DOMAIN, .id = (uint32_t)ioas };
  if (ioctl(cur_fd, IOMMU_TEST_CMD, &c) != 0) return reply_err(errno, "IOMMU_TEST_CMD MOCK_DOMAIN");
  printf("ok %u %u\n", c.mock_domain.out_stdev_id, c.mock_domain.out_hwpt_id);
  return 0;
}

static int cmd_map(char **a) {
  uint64_t ioas, len;
  if (!parse_u64(a[0], &ioas) || !parse_u64(a[1], &len) || len == 0) return reply_usage("map IOAS BYTES");
  if (!need_fd()) return -1;
  int slot = -1;
  for (int i = 0; i < MAX_MAPS && slot < 0; i++) if (maps[i].va == NULL) slot = i;
  if (slot < 0) return reply_err(ENOSPC, "too many maps in this client");
  void *va = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (va == MAP_FAILED) return reply_err(errno, "mmap");
  memset(va, 0x5a, len); /* fault the pages in: the pin then charges exactly these pages */
  struct iommu_ioas_map m = { .size = sizeof m, .flags = MAP_READABLE | MAP_WRITEABLE,
                              .ioas_id = (uint32_t)ioas, .user_va = (uintptr_t)va, .length = len };
  if (ioctl(cur_fd, IOMMU_IOAS_MAP, &m) != 0) {
    int e = errno;
    munmap(va, len);
    return reply_err(e, "IOMMU_IOAS_MAP");
  }
  maps[slot].iova = m.iova; maps[slot].length = len; maps[slot].va = va;
  printf("ok %" PRIu64 "\n", m.iova);
  return 0;
}

static int cmd_unmap(char **a) {
  uint64_t ioas, iova;
  if (!parse_u64(a[0], &ioas) || !parse_u64(a[1], &iova)) return reply_usage("unmap IOAS IOVA");
  if (!need_fd()) return -1;
  int slot = -1;
  for (int i = 0; i < MAX_MAPS && slot < 0; i++) if (maps[i].va != NULL && maps[i].iova == iova) slot = i;
  if (slot < 0) return reply_err(ENOENT, "no map of this client at that iova");
  struct iommu_ioas_unmap u = { .size = sizeof u, .ioas_id = (uint32_t)ioas, .iova = iova, .length = maps[slot].length };
  if (ioctl(cur_fd, IOMMU_IOAS_UNMAP, &u) != 0) return reply_err(errno, "IOMMU_IOAS_UNMAP");
  munmap(maps[slot].va, maps[slot].length);
  maps[slot].va = NULL;
  printf("ok %" PRIu64 "\n", u.length);
  return 0;
}

/* VmLck and VmPin of this process, in bytes. */
static int cmd_vm(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return reply_err(errno, "/proc/self/status");
  char line[256];
  long long lck = -1, pin = -1;
  while (fgets(line, sizeof line, f)) {
    sscanf(line, "VmLck: %lld kB", &lck);
    sscanf(line, "VmPin: %lld kB", &pin);
  }
  fclose(f);
  if (lck < 0 || pin < 0) return reply_err(ENOENT, "VmLck/VmPin not in /proc/self/status");
  printf("ok %lld %lld\n", lck * 1024, pin * 1024);
  return 0;
}

static int cmd_rlimit(int set, char **a) {
  struct rlimit r;
  if (set) {
    if (!parse_rlim(a[0], &r.rlim_cur) || !parse_rlim(a[1], &r.rlim_max)) return reply_usage("rlimit-set SOFT HARD");
    if (setrlimit(RLIMIT_MEMLOCK, &r) != 0) return reply_err(errno, "setrlimit(RLIMIT_MEMLOCK)");
  }
  if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return reply_err(errno, "getrlimit(RLIMIT_MEMLOCK)");
  printf("ok %lld %lld\n", show_rlim(r.rlim_cur), show_rlim(r.rlim_max));
  return 0;
}

/* Becomes uid/gid with no supplementary groups; leaving uid 0 clears every capability. */
static int cmd_drop(char **a) {
  uint64_t uid, gid;
  if (!parse_u64(a[0], &uid) || !parse_u64(a[1], &gid)) return reply_usage("drop UID GID");
  if (setgroups(0, NULL) != 0) return reply_err(errno, "setgroups");
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) return reply_err(errno, "setresgid");
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) return reply_err(errno, "setresuid");
  printf("ok %u %u\n", getuid(), getgid());
  return 0;
}

static int cmd_caps(void) {
  FILE *f = fopen("/proc/self/status", "r");
  if (f == NULL) return reply_err(errno, "/proc/self/status");
  char line[256], eff[64] = "";
  while (fgets(line, sizeof line, f)) sscanf(line, "CapEff: %63s", eff);
  fclose(f);
  if (eff[0] == '\0') return reply_err(ENOENT, "CapEff not in /proc/self/status");
  printf("ok %s %u %u\n", eff, geteuid(), getegid());
  return 0;
}

/*
 * One Varlink call (NUL-terminated JSON on a Unix stream socket), written independently of
 * the project's client so the lab also checks the wire: `call SOCKET METHOD PARAMS-JSON`.
 * The reply is printed verbatim after the number of fds that came with it; the first fd that
 * came becomes the current FD (the previous one is closed), any others are closed.
 */
static int cmd_call(const char *sock, const char *method, const char *params) {
  for (const char *p = method; *p; p++)
    if (!(*p == '.' || (*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')))
      return reply_usage("call SOCKET METHOD PARAMS-JSON (METHOD is letters, digits and dots)");
  struct sockaddr_un sa = { .sun_family = AF_UNIX };
  if (strlen(sock) >= sizeof sa.sun_path) return reply_usage("SOCKET path too long");
  strcpy(sa.sun_path, sock);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0); /* owned here, closed below */
  if (s < 0) return reply_err(errno, "socket");
  if (connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) { int e = errno; close(s); return reply_err(e, "connect"); }
  static char req[4096];
  int n = snprintf(req, sizeof req, "{\"method\":\"%s\",\"parameters\":%s}", method, params);
  if (n < 0 || (size_t)n >= sizeof req) { close(s); return reply_usage("request too long"); }
  if (send(s, req, (size_t)n + 1, MSG_NOSIGNAL) != n + 1) { int e = errno; close(s); return reply_err(e, "send"); }
  static char buf[65536];
  size_t got = 0;
  int fds[4], nfds = 0;
  while (got == 0 || buf[got - 1] != '\0') {
    char cbuf[CMSG_SPACE(sizeof fds)];
    struct iovec iov = { .iov_base = buf + got, .iov_len = sizeof buf - 1 - got };
    struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf };
    if (iov.iov_len == 0) { close(s); return reply_err(EMSGSIZE, "reply too large"); }
    ssize_t r = recvmsg(s, &mh, MSG_CMSG_CLOEXEC);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) { int e = r < 0 ? errno : EPIPE; close(s); return reply_err(e, "recvmsg: no complete reply"); }
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int k = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      for (int i = 0; i < k; i++) {
        int fd;
        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
        if (nfds < 4) fds[nfds++] = fd; else close(fd);
      }
    }
    got += (size_t)r;
  }
  close(s);
  if (nfds > 0) {
    if (cur_fd >= 0) close(cur_fd);
    cur_fd = fds[0];
    for (int i = 1; i < nfds; i++) close(fds[i]);
  }
  printf("ok %d %d %s\n", nfds, nfds > 0 ? cur_fd : -1, buf);
  return 0;
}

int main(int argc, char **argv) {
  for (int i = 1; i < argc; i++) {
    uint64_t fd;
    if (strcmp(argv[i], "--fd") == 0 && i + 1 < argc && parse_u64(argv[i + 1], &fd)) { cur_fd = (int)fd; i++; continue; }
    fprintf(stderr, "usage: lab-client [--fd N]  (commands on stdin)\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  char line[1024];
  while (fgets(line, sizeof line, stdin)) {
    char sock[256], method[128];
    int off = -1;
    if (sscanf(line, "call %255s %127s %n", sock, method, &off) == 2 && off > 0) {
      line[strcspn(line, "\r\n")] = '\0';
      cmd_call(sock, method, line + off);
      continue;
    }
    char *a[8] = { 0 };
    int n = 0;
    for (char *tok = strtok(line, " \t\r\n"); tok && n < 7; tok = strtok(NULL, " \t\r\n")) a[n++] = tok;
    if (n == 0) continue;
    const char *c = a[0];
    char **args = a + 1;
    if (strcmp(c, "exit") == 0) break;
    else if (strcmp(c, "device") == 0) {
      if (!args[0]) { reply_usage("device PATH"); continue; }
      int fd = open(args[0], O_RDWR | O_CLOEXEC);
      if (fd < 0) { reply_err(errno, "open"); continue; }
      if (cur_fd >= 0) close(cur_fd);
      cur_fd = fd;
      printf("ok %d\n", fd);
    } else if (strcmp(c, "fd") == 0) {
      uint64_t fd;
      if (!parse_u64(args[0], &fd)) { reply_usage("fd N"); continue; }
      if (fcntl((int)fd, F_GETFD) < 0) { reply_err(errno, "fcntl(F_GETFD)"); continue; }
      cur_fd = (int)fd;
      printf("ok %d\n", cur_fd);
    } else if (strcmp(c, "close") == 0) {
      if (!need_fd()) continue;
      close(cur_fd);
      cur_fd = -1;
      printf("ok\n");
    } else if (strcmp(c, "option-get") == 0) cmd_option(0, args);
    else if (strcmp(c, "option-set") == 0) cmd_option(1, args);
    else if (strcmp(c, "ioas-alloc") == 0) cmd_ioas_alloc();
    else if (strcmp(c, "mock-domain") == 0) cmd_mock_domain(args);
    else if (strcmp(c, "map") == 0) cmd_map(args);
    else if (strcmp(c, "unmap") == 0) cmd_unmap(args);
    else if (strcmp(c, "vm") == 0) cmd_vm();
    else if (strcmp(c, "rlimit-get") == 0) cmd_rlimit(0, args);
    else if (strcmp(c, "rlimit-set") == 0) cmd_rlimit(1, args);
    else if (strcmp(c, "drop") == 0) cmd_drop(args);
    else if (strcmp(c, "caps") == 0) cmd_caps();
    else if (strcmp(c, "pid") == 0) printf("ok %d\n", getpid());
    else printf("err EINVAL unknown command %s\n", c);
  }
  return 0;
}
