/* SPDX-License-Identifier: MIT */
/* ballast-agent helpers (util.c): the bottom of the agent's dependency order
 * (main.c -> setup.c, children.c -> port.c -> util.c). They use libc only. */
#pragma once

#include <stdint.h>
#include <sys/types.h>

typedef uint64_t usec_t;

/* CLOCK_MONOTONIC in microseconds. */
usec_t agent_now(void);
/* One line "ballast-agent: ..." on stderr, written in one write(2) so lines of the
 * agent and its children do not interleave; cut at 511 bytes. */
void agent_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Reads a whole small file (cut at 4 MiB) into a NUL-terminated heap string the
 * caller frees. Returns its length or -errno; *ret is written only on success. */
ssize_t agent_read_file(const char *path, char **ret);
/* Writes s to an existing file in one write(2). Returns 0, -errno, or -EIO on a short write. */
int agent_write_file(const char *path, const char *s);
