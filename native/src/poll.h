/*
 * What poll.c tells the rest of the helper.
 *
 * Invariant: poll_is_watching(fd) is true exactly between a successful startPoll on fd and
 * its stopPoll (or environment teardown). Thread-safe.
 */
#ifndef IOMMUFD_NATIVE_POLL_H
#define IOMMUFD_NATIVE_POLL_H

#include <stdbool.h>

bool poll_is_watching(int fd);

#endif
