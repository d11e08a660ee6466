/*
 * hold-targets N: N idle target processes for the many-leases benchmark. Forks N children that
 * only pause(); prints each child's pid on its own line, then "ready". On stdin EOF (or
 * SIGTERM/SIGINT) it SIGKILLs every child, reaps them all, and exits.
 *
 * Run it through setpriv with every capability dropped: the children inherit that, so they
 * hold no CAP_IPC_LOCK (the broker would refuse them) and share the broker's uid and gid.
 *
 * Invariants: children die with the holder (PR_SET_PDEATHSIG), so a crashed benchmark leaves
 * no 10,000 stray processes; the holder opens no fds beyond stdio.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static void on_signal(int s) { (void)s; stop = 1; }

int main(int argc, char **argv) {
  if (argc != 2) { fprintf(stderr, "usage: hold-targets N\n"); return 2; }
  int n = atoi(argv[1]);
  pid_t *pids = calloc((size_t)n, sizeof *pids);
  pid_t parent = getpid();
  for (int i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid < 0) { perror("fork"); n = i; break; }
    if (pid == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (getppid() != parent) _exit(0);
      for (;;) pause();
    }
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
