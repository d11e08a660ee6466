/*
 * What closer.c offers the rest of the helper: hand an fd to the closer threads.
 *
 * Invariant: closer_enqueue(fd) returns 0 and owns fd from then on, or returns a negative errno
 * (-ENOMEM, -EAGAIN: no closer thread could be started) and fd stays the caller's. Thread-safe;
 * it never waits for a close.
 */
#ifndef IOMMUFD_NATIVE_CLOSER_H
#define IOMMUFD_NATIVE_CLOSER_H

int closer_enqueue(int fd);
/* The same, charged to owner (a client's uid; -1: the daemon's own fd). */
int closer_enqueue_owned(int fd, long owner);

#endif
