/*
 * fdstore-standin SOCKET PROGRAM [ARGS...]: a stand-in for the two parts of systemd the broker's
 * restart survival relies on, for the host tests and the kernel lab (which has no systemd):
 * NOTIFY_SOCKET with the fd store (FDSTORE=1 + FDNAME=, FDSTOREREMOVE=1, fds as SCM_RIGHTS), and
 * starting the service again with the stored fds passed as LISTEN_FDS / LISTEN_FDNAMES /
 * LISTEN_PID (sd_listen_fds(3)), the way FileDescriptorStorePreserve= keeps them across a restart.
 *
 * Commands on stdin, one per line: "start" (fork+exec PROGRAM with the stored fds at 3.. and
 * NOTIFY_SOCKET=SOCKET; its stdin is /dev/null, its stdout goes to our stderr), "kill" (SIGKILL it and reap it), "list" (the stored fds). Events on
 * stdout, one per line: "started PID", "killed", "exited STATUS", "ready", "store NAME TARGET"
 * (TARGET: what /proc/self/fd/N points at), "remove NAME", "stored NAME TARGET" ... "end".
 * EOF on stdin kills the program and exits.
 *
 * Invariants: every fd it receives is stored (one per name: a new one replaces and closes the
 * old) or closed at once; all of its own fds are CLOEXEC, so the program inherits exactly the
 * stored fds, at 3 .. 3+n-1. Not a general systemd: no FDPOLL, no limit beyond MAX_STORED.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_STORED 64
#define MAX_FDS_PER_MSG 16

static struct { char name[256]; int fd; } stored[MAX_STORED];
static int nstored;
static pid_t child = -1;

static void target_of(int fd, char *out, size_t len) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(path, out, len - 1);
  out[n < 0 ? 0 : n] = '\0';
}

static void store(const char *name, int fd) {
  char target[512];
  target_of(fd, target, sizeof target);
  for (int i = 0; i < nstored; i++) {
    if (strcmp(stored[i].name, name) == 0) {
      close(stored[i].fd);
      stored[i].fd = fd;
      printf("store %s %s\n", name, target);
      return;
    }
  }
  if (nstored == MAX_STORED) {
    close(fd);
    printf("refused %s (store full)\n", name);
    return;
  }
  snprintf(stored[nstored].name, sizeof stored[nstored].name, "%s", name);
  stored[nstored++].fd = fd;
  printf("store %s %s\n", name, target);
}

static void removeName(const char *name) {
  for (int i = 0; i < nstored; i++) {
    if (strcmp(stored[i].name, name) == 0) {
      close(stored[i].fd);
      stored[i] = stored[--nstored];
      printf("remove %s\n", name);
      return;
    }
  }
  printf("remove %s (not stored)\n", name);
}

static void on_datagram(int sock) {
  char buf[4096];
  union { struct cmsghdr align; char c[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)]; } control;
  struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf - 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.c, .msg_controllen = sizeof control.c};
  ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  if (n < 0) return;
  buf[n] = '\0';
  int fds[MAX_FDS_PER_MSG];
  int nfds = 0;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c != NULL; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < k && nfds < MAX_FDS_PER_MSG; i++) memcpy(&fds[nfds++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
  }
  int fdstore = 0, remove = 0, ready = 0;
  char name[256] = "stored";
  char *save = NULL;
  for (char *line = strtok_r(buf, "\n", &save); line != NULL; line = strtok_r(NULL, "\n", &save)) {
    if (strcmp(line, "FDSTORE=1") == 0) fdstore = 1;
    else if (strcmp(line, "FDSTOREREMOVE=1") == 0) remove = 1;
    else if (strcmp(line, "READY=1") == 0) ready = 1;
    else if (strncmp(line, "FDNAME=", 7) == 0) snprintf(name, sizeof name, "%s", line + 7);
  }
  for (int i = 0; i < nfds; i++) {
    if (fdstore) store(name, fds[i]);
    else close(fds[i]);
  }
  if (remove) removeName(name);
  if (ready) printf("ready\n");
}

static void start(const char *sockpath, char **argv) {
  if (child > 0) {
    printf("error already running %d\n", (int)child);
    return;
  }
  pid_t pid = fork();
  if (pid < 0) {
    printf("error fork %s\n", strerror(errno));
    return;
  }
  if (pid == 0) {
    /* Move the stored fds out of the way, then to 3.. (dup2 clears CLOEXEC on the copy). */
    int high[MAX_STORED];
    for (int i = 0; i < nstored; i++) high[i] = fcntl(stored[i].fd, F_DUPFD_CLOEXEC, 100);
    char names[MAX_STORED * 257] = "";
    for (int i = 0; i < nstored; i++) {
      if (dup2(high[i], 3 + i) < 0) _exit(127);
      if (i > 0) strcat(names, ":");
      strcat(names, stored[i].name);
    }
    char count[16], self[16];
    snprintf(count, sizeof count, "%d", nstored);
    snprintf(self, sizeof self, "%d", (int)getpid());
    /* stdin from /dev/null; the program's stdout joins stderr, so stdout carries only events. */
    int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null < 0 || dup2(null, 0) < 0 || dup2(2, 1) < 0) _exit(127);
    setenv("NOTIFY_SOCKET", sockpath, 1);
    /* As systemd >= 254 with the store on: its size (the daemon warns when it is missing). */
    char store_max[16];
    snprintf(store_max, sizeof store_max, "%d", MAX_STORED);
    setenv("FDSTORE", store_max, 1);
    if (nstored > 0) {
      setenv("LISTEN_FDS", count, 1);
      setenv("LISTEN_FDNAMES", names, 1);
      setenv("LISTEN_PID", self, 1);
    }
    execvp(argv[0], argv);
    _exit(127);
  }
  child = pid;
  printf("started %d\n", (int)pid);
}

static void reap(int options) {
  if (child <= 0) return;
  int status;
  if (waitpid(child, &status, options) == child) {
    printf("exited %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    child = -1;
  }
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fdstore-standin SOCKET PROGRAM [ARGS...]\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  int sock = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  snprintf(addr.sun_path, sizeof addr.sun_path, "%s", argv[1]);
  unlink(argv[1]);
  if (sock < 0 || bind(sock, (struct sockaddr *)&addr, sizeof addr) < 0) {
    perror("fdstore-standin: bind");
    return 1;
  }
  fcntl(0, F_SETFD, FD_CLOEXEC);
  printf("listening %s\n", argv[1]);
  char line[256];
  for (;;) {
    struct pollfd p[2] = {{.fd = 0, .events = POLLIN}, {.fd = sock, .events = POLLIN}};
    if (poll(p, 2, 100) < 0 && errno != EINTR) return 1;
    if (p[1].revents & POLLIN) on_datagram(sock);
    reap(WNOHANG);
    if (!(p[0].revents & (POLLIN | POLLHUP))) continue;
    ssize_t n = read(0, line, sizeof line - 1);
    if (n <= 0) break;
    line[n] = '\0';
    char *save = NULL;
    for (char *cmd = strtok_r(line, "\n", &save); cmd != NULL; cmd = strtok_r(NULL, "\n", &save)) {
      if (strcmp(cmd, "start") == 0) start(argv[1], argv + 2);
      else if (strcmp(cmd, "kill") == 0) {
        if (child > 0) kill(child, SIGKILL);
        reap(0);
        printf("killed\n");
      } else if (strcmp(cmd, "list") == 0) {
        while (poll(&(struct pollfd){.fd = sock, .events = POLLIN}, 1, 0) > 0) on_datagram(sock);
        for (int i = 0; i < nstored; i++) {
          char target[512];
          target_of(stored[i].fd, target, sizeof target);
          printf("stored %s %s\n", stored[i].name, target);
        }
        printf("end\n");
      }
    }
  }
  if (child > 0) kill(child, SIGKILL);
  reap(0);
  unlink(argv[1]);
  return 0;
}
