/* SPDX-License-Identifier: MIT */
#pragma once

/* What wakes the controller the moment a scope comes under memory pressure (B5.1), rather than at
 * its next sample: PSI triggers, or on cgroup v1 (no PSI) the memory.pressure_level eventfd and
 * usage thresholds at the watermarks. The fds are the caller's to poll (events says how) and to
 * close with pressure_watch_close(). Nothing here logs. */

#include <stddef.h>
#include <stdint.h>

#define PRESSURE_WATCH_MAX 4

typedef struct PressureWatch {
        int fds[PRESSURE_WATCH_MAX];         /* -1: unused; fds[0] is the main signal */
        uint32_t events[PRESSURE_WATCH_MAX]; /* EPOLLPRI (a PSI trigger) or EPOLLIN (an eventfd) */
        int threshold_error;                 /* a v1 usage threshold could not be registered (the ones
                                              * after it were not tried): a negative errno; 0 none */
} PressureWatch;

void pressure_watch_init(PressureWatch *w);

/* Opens them for a cgroup (cgroup_dir: a v2 memory.pressure PSI trigger on "some"; without one, the
 * v1 pressure_level "medium" eventfd and, when cgroup_version is 1, an eventfd per usage threshold
 * in `thresholds`) or for the host (cgroup_dir NULL: PSI triggers "some" and "full" on
 * PROC_ROOT/proc/pressure/memory). Returns how many fds it opened, or the negative errno of the
 * last attempt when it opened none. */
int pressure_watch_open(PressureWatch *w, const char *cgroup_dir, const char *proc_root, int cgroup_version,
                        uint64_t stall_us, uint64_t window_us, const uint64_t *thresholds, size_t n_thresholds);

void pressure_watch_close(PressureWatch *w);
