/* SPDX-License-Identifier: MIT */
/* ballast-agent: the helpers every other file of the agent uses (clock, log, small
 * file reads and writes). They depend on nothing but libc, so the files that call
 * them (main.c, setup.c, children.c, port.c) never call back into each other through them. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

usec_t agent_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (usec_t) ts.tv_sec * 1000000 + (usec_t) ts.tv_nsec / 1000;
}

void agent_log(const char *fmt, ...) {
        char line[512];
        int n = snprintf(line, sizeof line, "ballast-agent: ");
        va_list ap;
        va_start(ap, fmt);
        n += vsnprintf(line + n, sizeof line - (size_t) n - 1, fmt, ap);
        va_end(ap);
        if (n > (int) sizeof line - 2)
                n = (int) sizeof line - 2;
        line[n++] = '\n';
        /* One write, so lines from the agent and its children do not interleave. */
        if (write(2, line, (size_t) n) < 0) {
                /* nowhere left to report it */
        }
}

ssize_t agent_read_file(const char *path, char **ret) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        size_t cap = 4096, len = 0;
        char *buf = malloc(cap);
        if (!buf) {
                close(fd);
                return -ENOMEM;
        }
        for (;;) {
                if (len + 1 >= cap) {
                        if (cap >= 4u * 1024 * 1024) /* /proc files we read are a few KiB */
                                break;
                        char *nb = realloc(buf, cap * 2);
                        if (!nb) {
                                free(buf);
                                close(fd);
                                return -ENOMEM;
                        }
                        buf = nb;
                        cap *= 2;
                }
                ssize_t n = read(fd, buf + len, cap - len - 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        int e = errno;
                        free(buf);
                        close(fd);
                        return -e;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        close(fd);
        buf[len] = 0;
        *ret = buf;
        return (ssize_t) len;
}

int agent_write_file(const char *path, const char *s) {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        size_t n = strlen(s);
        ssize_t w = write(fd, s, n);
        int e = errno;
        close(fd);
        if (w < 0)
                return -e;
        return (size_t) w == n ? 0 : -EIO;
}
