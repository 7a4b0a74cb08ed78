/* SPDX-License-Identifier: MIT */
#pragma once

/* A warm pool of VMs (B4.3, docs/parking.md), run client-side over the launcher (vm/launcher.h)
 * and ballastd's API (park and unpark). `ballastctl pool` is its command line; this module prints
 * nothing: errors come back in `err`, and what a worker meets on the way (a member that failed, a
 * VM that could not be stopped) goes to the pool's log callback.
 *
 * The pool's state is one JSON file in the launcher's run root, $ROOT/pool-NAME.json, replaced
 * atomically (a temporary file renamed over it; no fsync: like the VMs, it is runtime state) and
 * only changed under an exclusive flock() of $ROOT/pool-NAME.lock: two acquires never hand out
 * the same VM. A member is
 *   booting   being prepared by a worker process (boot, register with ballastd, park); the
 *             worker's pid and start time are recorded, so a worker that died is noticed
 *   parked    ready to be handed out
 *   in_use    handed out by pool_acquire()
 *   stopping  being stopped (release, drain, or the clean-up of a dead worker's VM)
 * Workers run in parallel in the foreground for pool_fill() and detached in the background
 * (their output in $ROOT/pool-NAME.log) after an acquire and a release. Nothing is held under the
 * lock but the read-modify-write of the state file. */

#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "shared/time-util.h"

#define POOL_NAME_MAX  24 /* the launcher's VM names are at most 32: NAME-NNNNNNN */
#define POOL_COUNT_MAX 64
#define POOL_VM_MAX    64 /* a member's name, NUL included */

typedef struct Pool {
        char name[POOL_NAME_MAX + 1];
        char root[PATH_MAX];
        char state[PATH_MAX + 64];
        char lock[PATH_MAX + 64];
        char log_file[PATH_MAX + 64];
        const char *api;    /* ballastd's socket */
        usec_t api_timeout; /* for requests that do not wait on a balloon */
        /* What goes wrong on the way, one line without a newline; NULL: nothing is said. A
         * background worker's lines go to its stderr, which is the pool's log file. */
        void (*log)(void *userdata, const char *line);
        void *log_userdata;
} Pool;

bool pool_name_is_valid(const char *s);

/* Names the pool's files in the launcher's run root. api is kept (not copied). Returns 0, or
 * -EINVAL (an invalid name) or -ENAMETOOLONG with err. */
int pool_init(Pool *p, const char *name, const char *api, usec_t api_timeout, char *err, size_t errlen);

/* What pool_fill() sets; each have_ flag says the value was given. */
typedef struct PoolSettings {
        uint64_t count, memory, park_size, cpus;
        bool have_count, have_memory, have_park, have_cpus, have_boot;
        const char *image; /* NULL: unchanged (a new pool: the launcher's search) */
        usec_t boot_timeout;
} PoolSettings;

/* Creates the pool or changes its settings, then prepares the members it misses (parked +
 * booting < count), one worker process each, in parallel, and waits for them. *ret_started: how
 * many were started. Returns 0 when every worker succeeded; -EINVAL (a new pool without a count,
 * a park size larger than the memory: the caller's mistake) or another negative errno with err.
 * A worker's failure is -EIO, with its reason in the log and in the state's last_error. */
int pool_fill(Pool *p, const PoolSettings *s, size_t *ret_started, char *err, size_t errlen);

/* The state with what ballastd says of each member (one GET /v1/vms): the state file's keys, and
 * "parked", "booting", "in_use", "stopping" (counts), "daemon_error" (null, or why ballastd's view
 * is missing), and per member "daemon" (status, parked, target_bytes, actual_bytes, host_rss_bytes
 * or null), "age_s" and, while booting or stopping, "worker_alive". NULL with *ret_error -ENOENT
 * (no such pool) or another negative errno, and err. */
json_t *pool_status(Pool *p, int *ret_error, char *err, size_t errlen);

typedef struct PoolAcquired {
        char vm[POOL_VM_MAX];
        double unpark_ms, total_ms; /* the unpark request; the whole acquire */
        json_t *answer;             /* ballastd's unpark answer (owned: json_decref() it) */
} PoolAcquired;

/* Hands out the VM parked longest: unparks it (answered once ballastd has sent the command, or
 * with `wait` once the guest has its memory), marks it in use and boots a replacement in the
 * background. Returns 0; -ENOENT (no such pool); -EAGAIN (no parked VM: a worker is started when
 * none is booting); or another negative errno with err (the unpark failed: with no answer the VM
 * is parked again; refused, it is stopped and replaced). */
int pool_acquire(Pool *p, bool wait, PoolAcquired *ret, char *err, size_t errlen);

/* Unregisters and stops a member; boots a replacement in the background with `refill`. Returns 0;
 * -ENOENT (no such pool); -ESRCH (no such member); -EBUSY (a worker is booting or stopping it);
 * or another negative errno with err. */
int pool_release(Pool *p, const char *vm, bool refill, char *err, size_t errlen);

/* Stops every member, every worker and every VM named like one (NAME-<n>) in the run root, and
 * forgets the pool. *ret_stopped: the VMs' names (a JSON array, owned by the caller). Returns 0,
 * or -EIO when a VM could not be stopped (said in the log; the pool is kept, with last_error). */
int pool_drain(Pool *p, json_t **ret_stopped, char *err, size_t errlen);

/* Starts a detached worker that refills the pool (double fork, its own session, output to the
 * pool's log) and returns at once. */
int pool_spawn_refill(Pool *p, char *err, size_t errlen);

/* Reads a state value: a string ("" when absent), a positive integer (0 when absent). */
const char *pool_str(json_t *m, const char *key);
uint64_t pool_u64(json_t *m, const char *key);
