/*
 * hold-targets N: N idle target processes, cheaply, for the many-leases benchmark and the
 * hostile many-leases test. Prints each child's pid on its own line, then "ready"; on stdin
 * EOF (or SIGTERM/SIGINT) it SIGKILLs every child, reaps them all, and exits.
 *
 * The children are made with clone(CLONE_VM) instead of fork(): no address space is copied,
 * which on this project's test hosts makes 7,000 targets take seconds instead of minutes. Each
 * child is still its own process (own pid, thread-group leader, own rlimits and signal
 * handling: no CLONE_THREAD/CLONE_SIGHAND), which is all a lease needs of a target.
 *
 * Run it through setpriv with every capability dropped: the children inherit that, so they
 * hold no CAP_IPC_LOCK (the broker would refuse them) and share the broker's uid and gid.
 *
 * Invariants: children only pause() on their own stack and touch no shared state; they die with
 * the holder (PR_SET_PDEATHSIG), so a crashed run leaves no stray processes; the holder opens
 * no fds beyond stdio.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define STACK_BYTES 16384

static pid_t parent;
static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

static int idle(void *arg) {
  (void)arg;
  syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
  if (syscall(SYS_getppid) != parent) syscall(SYS_exit, 0);
  for (;;) syscall(SYS_pause);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: hold-targets N\n"); return 2; }
  int n = atoi(argv[1]);
  pid_t *pids = calloc((size_t)n, sizeof *pids);
  char *stacks = malloc((size_t)n * STACK_BYTES);
  if (pids == NULL || stacks == NULL) { perror("malloc"); return 1; }
  parent = getpid();
  for (int i = 0; i < n; i++) {
    pid_t pid = clone(idle, stacks + (size_t)(i + 1) * STACK_BYTES, CLONE_VM | SIGCHLD, NULL);
    if (pid < 0) { perror("clone"); n = i; break; }
    pids[i] = pid;
    printf("%d\n", pid);
  }
  printf("ready\n");
  fflush(stdout);
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  char buf[256];
  while (!stop && read(0, buf, sizeof buf) > 0) {}
  for (int i = 0; i < n; i++) kill(pids[i], SIGKILL);
  while (wait(NULL) > 0) {}
  return 0;
}
