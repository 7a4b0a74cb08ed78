/* SPDX-License-Identifier: MIT */
#include "sense/pressure-watch.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "sense/sense.h"

void pressure_watch_init(PressureWatch *w) {
        *w = (PressureWatch){ 0 };
        for (size_t i = 0; i < PRESSURE_WATCH_MAX; i++)
                w->fds[i] = -1;
}

static void add(PressureWatch *w, size_t *n, int fd, uint32_t events) {
        w->fds[*n] = fd;
        w->events[*n] = events;
        (*n)++;
}

static int open_cgroup(PressureWatch *w, const char *dir, int version, uint64_t stall_us, uint64_t window_us,
                       const uint64_t *thresholds, size_t n_thresholds) {
        size_t n = 0;
        char path[PATH_MAX];
        int fd = -ENOENT;
        snprintf(path, sizeof path, "%s/memory.pressure", dir);
        if (access(path, F_OK) == 0) {
                fd = psi_trigger_open(path, "some", stall_us, window_us);
                if (fd >= 0) {
                        add(w, &n, fd, EPOLLPRI);
                        return (int) n;
                }
        }
        fd = cgroup1_pressure_open(dir, "medium");
        if (fd < 0)
                return fd;
        add(w, &n, fd, EPOLLIN);
        /* v1 has no PSI: usage thresholds at the watermarks wake the controller the moment they
         * are crossed, not at the next sample. */
        for (size_t i = 0; i < n_thresholds && version == 1 && n < PRESSURE_WATCH_MAX; i++) {
                int tfd = cgroup1_threshold_open(dir, thresholds[i]);
                if (tfd < 0) {
                        w->threshold_error = tfd;
                        break;
                }
                add(w, &n, tfd, EPOLLIN);
        }
        return (int) n;
}

static int open_host(PressureWatch *w, const char *proc_root, uint64_t stall_us, uint64_t window_us) {
        size_t n = 0;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/proc/pressure/memory", proc_root ? proc_root : "");
        int fd = psi_trigger_open(path, "some", stall_us, window_us);
        if (fd < 0)
                return fd;
        add(w, &n, fd, EPOLLPRI);
        fd = psi_trigger_open(path, "full", stall_us, window_us);
        if (fd >= 0)
                add(w, &n, fd, EPOLLPRI);
        return (int) n;
}

int pressure_watch_open(PressureWatch *w, const char *cgroup_dir, const char *proc_root, int cgroup_version,
                        uint64_t stall_us, uint64_t window_us, const uint64_t *thresholds, size_t n_thresholds) {
        pressure_watch_init(w);
        return cgroup_dir ? open_cgroup(w, cgroup_dir, cgroup_version, stall_us, window_us, thresholds, n_thresholds)
                          : open_host(w, proc_root, stall_us, window_us);
}

void pressure_watch_close(PressureWatch *w) {
        for (size_t i = 0; i < PRESSURE_WATCH_MAX; i++)
                if (w->fds[i] >= 0) {
                        close(w->fds[i]);
                        w->fds[i] = -1;
                }
}
