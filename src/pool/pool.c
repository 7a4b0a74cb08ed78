/* SPDX-License-Identifier: MIT */
/* The warm pool's machinery (pool/pool.h): the state file under its lock, the members' life
 * (boot, register, park; unpark; stop), the workers. */
#include "pool/pool.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "shared/api-call.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "vm/agent.h"
#include "vm/launcher.h"

#define POOL_PARK_TIMEOUT (60 * USEC_PER_SEC)
/* A background worker gives up after this many failed members in a row. */
#define POOL_WORKER_TRIES 2

typedef struct PoolSpec {
        uint64_t memory, park_size;
        unsigned cpus;
        char image[PATH_MAX];
        usec_t boot_timeout;
} PoolSpec;

/* ---- small helpers ---- */

_printf_(2, 3) static void pool_say(const Pool *p, const char *fmt, ...) {
        if (!p->log)
                return;
        char line[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(line, sizeof line, fmt, ap);
        va_end(ap);
        p->log(p->log_userdata, line);
}

static uint64_t now_rt(void) {
        return now_usec(CLOCK_REALTIME);
}

static double ms_since(usec_t t0) {
        return (double) (now_mono() - t0) / 1000.0;
}

bool pool_name_is_valid(const char *s) {
        return name_is_valid(s) && strlen(s) <= POOL_NAME_MAX;
}

int pool_init(Pool *p, const char *name, const char *api, usec_t api_timeout, char *err, size_t errlen) {
        *p = (Pool){ .api = api, .api_timeout = api_timeout };
        if (!pool_name_is_valid(name)) {
                snprintf(err, errlen,
                         "invalid pool name '%s': use 1-%d of A-Z a-z 0-9 _ . - (not starting with . or -)", name,
                         POOL_NAME_MAX);
                return -EINVAL;
        }
        strscpy(p->name, sizeof p->name, name);
        if (vm_run_root(p->root, sizeof p->root) < 0) {
                snprintf(err, errlen, "the run directory path is too long");
                return -ENAMETOOLONG;
        }
        snprintf(p->state, sizeof p->state, "%s/pool-%s.json", p->root, name);
        snprintf(p->lock, sizeof p->lock, "%s/pool-%s.lock", p->root, name);
        snprintf(p->log_file, sizeof p->log_file, "%s/pool-%s.log", p->root, name);
        return 0;
}

/* The start time of a live (non-zombie) process, in clock ticks since boot; 0 when it is gone. */
static uint64_t proc_start_time(pid_t pid) {
        char path[64], buf[1024];
        if (pid <= 0)
                return 0;
        snprintf(path, sizeof path, "/proc/%d/stat", (int) pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return 0;
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[n] = '\0';
        char *p = strrchr(buf, ')');
        if (!p)
                return 0;
        /* Fields after the command: 3 state ... 22 starttime. */
        char state = 0;
        unsigned long long start = 0;
        int field = 2;
        for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " ")) {
                field++;
                if (field == 3)
                        state = tok[0];
                else if (field == 22) {
                        start = strtoull(tok, NULL, 10);
                        break;
                }
        }
        return state == 'Z' || state == 'X' ? 0 : (uint64_t) start;
}

static bool worker_alive(json_t *m) {
        json_t *pid = json_object_get(m, "pid"), *st = json_object_get(m, "pid_start");
        if (!json_is_integer(pid) || !json_is_integer(st))
                return false;
        uint64_t s = proc_start_time((pid_t) json_integer_value(pid));
        return s != 0 && s == (uint64_t) json_integer_value(st);
}

static void set_worker(json_t *m, pid_t pid) {
        json_object_set_new(m, "pid", json_integer(pid));
        json_object_set_new(m, "pid_start", json_integer((json_int_t) proc_start_time(pid)));
}

const char *pool_str(json_t *m, const char *key) {
        return json_string_value(json_object_get(m, key)) ?: "";
}

uint64_t pool_u64(json_t *m, const char *key) {
        json_t *v = json_object_get(m, key);
        return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t) json_integer_value(v) : 0;
}

static bool state_is(json_t *m, const char *s) {
        return strcmp(pool_str(m, "state"), s) == 0;
}

static void set_state(json_t *m, const char *s) {
        json_object_set_new(m, "state", json_string(s));
        json_object_set_new(m, "since_us", json_integer((json_int_t) now_rt()));
}

/* ---- the state file and its lock ---- */

/* Takes the pool's lock (op: LOCK_EX or LOCK_SH). A drain removes the lock file while holding
 * it: whoever was waiting on the old file takes the new one. Returns the fd, or a negative errno
 * with err. */
static int pool_lock(const Pool *p, int op, char *err, size_t errlen) {
        char root[PATH_MAX];
        /* Made (or checked) like the launcher's: no other user may own or write to it. */
        int r = vm_run_root_prepare(root, sizeof root, err, errlen);
        if (r < 0)
                return r;
        for (;;) {
                int fd = open(p->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
                if (fd < 0) {
                        r = negative_errno();
                        snprintf(err, errlen, "cannot lock %s: %s", p->lock, strerror(-r));
                        return r;
                }
                if (flock(fd, op) < 0) {
                        r = negative_errno();
                        close(fd);
                        if (r == -EINTR)
                                continue;
                        snprintf(err, errlen, "cannot lock %s: %s", p->lock, strerror(-r));
                        return r;
                }
                struct stat a, b;
                if (fstat(fd, &a) == 0 && stat(p->lock, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino)
                        return fd;
                close(fd);
        }
}

static void pool_unlock(int *fd) {
        *fd = safe_close(*fd);
}

/* The state, or NULL when there is no such pool (*ret_error: -ENOENT, err "no pool named …") or
 * it cannot be read (err says why). */
static json_t *pool_load(const Pool *p, int *ret_error, char *err, size_t errlen) {
        json_error_t je;
        json_t *j = json_load_file(p->state, 0, &je);
        if (!j) {
                *ret_error = access(p->state, F_OK) < 0 ? -ENOENT : -EBADMSG;
                if (*ret_error == -ENOENT)
                        snprintf(err, errlen, "no pool named '%s'", p->name);
                else
                        snprintf(err, errlen, "cannot read %s: %s", p->state, je.text);
                return NULL;
        }
        if (!json_is_object(j) || !json_is_array(json_object_get(j, "members"))) {
                json_decref(j);
                *ret_error = -EBADMSG;
                snprintf(err, errlen, "%s is not a pool state file", p->state);
                return NULL;
        }
        *ret_error = 0;
        return j;
}

/* Returns 0 or a negative errno with err. */
static int pool_save(const Pool *p, json_t *pool, char *err, size_t errlen) {
        char tmp[PATH_MAX + 96];
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", p->state, (int) getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0) {
                int r = negative_errno();
                snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(-r));
                return r;
        }
        json_object_set_new(pool, "updated_us", json_integer((json_int_t) now_rt()));
        char *s = json_dumps(pool, JSON_INDENT(2) | JSON_SORT_KEYS);
        size_t len = s ? strlen(s) : 0;
        bool ok = s && write(fd, s, len) == (ssize_t) len && write(fd, "\n", 1) == 1;
        free(s);
        int e = errno;
        if (close(fd) < 0)
                ok = false;
        if (!ok || rename(tmp, p->state) < 0) {
                if (ok)
                        e = errno;
                unlink(tmp);
                snprintf(err, errlen, "cannot write %s: %s", p->state, strerror(e));
                return -e;
        }
        return 0;
}

static json_t *find_member(json_t *pool, const char *vm, size_t *ret_index) {
        json_t *members = json_object_get(pool, "members"), *m;
        size_t i;
        json_array_foreach(members, i, m) {
                if (strcmp(pool_str(m, "vm"), vm) == 0) {
                        if (ret_index)
                                *ret_index = i;
                        return m;
                }
        }
        return NULL;
}

static void remove_member(json_t *pool, const char *vm) {
        size_t i;
        if (find_member(pool, vm, &i))
                json_array_remove(json_object_get(pool, "members"), i);
}

static size_t count_state(json_t *pool, const char *state) {
        json_t *m;
        size_t i, n = 0;
        json_array_foreach(json_object_get(pool, "members"), i, m) {
                n += state_is(m, state);
        }
        return n;
}

/* Members whose worker is gone while booting or stopping: their VM is in an unknown state. They
 * become 'stopping' on behalf of the caller, who then cleans them up (names appended to *stale,
 * owned by the caller). Returns how many. */
static size_t pool_take_stale(json_t *pool, json_t *stale) {
        json_t *m;
        size_t i, n = 0;
        json_array_foreach(json_object_get(pool, "members"), i, m) {
                if (!(state_is(m, "booting") || state_is(m, "stopping")) || worker_alive(m))
                        continue;
                if (state_is(m, "booting"))
                        json_object_set_new(m, "error", json_string("its worker died while booting it"));
                set_state(m, "stopping");
                set_worker(m, getpid());
                json_array_append_new(stale, json_string(pool_str(m, "vm")));
                n++;
        }
        return n;
}

/* The lowest NAME-i that is neither a member nor a directory of the launcher. */
static void next_vm_name(json_t *pool, const char *name, char *buf, size_t len) {
        for (unsigned i = 0;; i++) {
                snprintf(buf, len, "%s-%u", name, i);
                VmInfo v;
                if (!find_member(pool, buf, NULL) && vm_info(buf, &v) == -ENOENT)
                        return;
        }
}

/* ---- ballastd ---- */

/* Forgets the VM in ballastd; a VM ballastd does not know is fine. */
static int api_unregister(const Pool *p, const char *vm, char *err, size_t errlen) {
        char path[128];
        int status = 0;
        snprintf(path, sizeof path, "/v1/vms/%s", vm);
        int r = api_call(p->api, "DELETE", path, NULL, 20 * USEC_PER_SEC, &status, NULL, err, errlen);
        if (r < 0)
                return r;
        return status == 200 || status == 404 ? 0 : -EIO;
}

static int api_register(const Pool *p, const char *vm, uint64_t memory, char *err, size_t errlen) {
        char sock[PATH_MAX];
        if (vm_socket_path(vm, "qmp", sock, sizeof sock) < 0) {
                snprintf(err, errlen, "socket path too long");
                return -ENAMETOOLONG;
        }
        for (int attempt = 0;; attempt++) {
                json_t *b = json_pack("{s:s,s:s,s:s,s:I,s:I}", "id", vm, "driver", "qemu", "socket", sock,
                                      "expected_uid", (json_int_t) geteuid(), "assigned_bytes", (json_int_t) memory);
                int status = 0;
                int r = api_call(p->api, "POST", "/v1/vms", b, p->api_timeout, &status, NULL, err, errlen);
                if (r < 0)
                        return r;
                if (status == 201)
                        return 0;
                /* Left over from an earlier VM of that name: forget it and register again. */
                if (status != 409 || attempt > 0 || api_unregister(p, vm, err, errlen) < 0)
                        return -EIO;
        }
}

/* Parks the VM; *ret is the answer. Waits while ballastd has not read its size yet. */
static int api_park(const Pool *p, const char *vm, uint64_t size, json_t **ret, char *err, size_t errlen) {
        char path[128];
        snprintf(path, sizeof path, "/v1/vms/%s/park", vm);
        usec_t deadline = now_mono() + 60 * USEC_PER_SEC;
        for (;;) {
                json_t *b = json_object();
                if (size)
                        json_object_set_new(b, "size_bytes", json_integer((json_int_t) size));
                int status = 0;
                json_t *a = NULL;
                int r = api_call(p->api, "POST", path, b, POOL_PARK_TIMEOUT + 15 * USEC_PER_SEC, &status, &a, err,
                                 errlen);
                if (r < 0)
                        return r;
                if (status == 200 && json_is_object(a)) {
                        *ret = a;
                        return 0;
                }
                json_decref(a);
                /* 503 until ballastd has connected to QEMU and read the size. */
                if (status != 503 || now_mono() >= deadline)
                        return -EIO;
                struct timespec ts = { 0, 100 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
}

/* ---- members ---- */

/* The pool's state under its exclusive lock, for a worker or a clean-up: NULL with *ret_error
 * (-ENOENT: the pool is gone, said nowhere; anything else said in the log). The lock is *ret_fd. */
static json_t *pool_load_locked(const Pool *p, int *ret_fd, int *ret_error) {
        char err[512];
        int fd = pool_lock(p, LOCK_EX, err, sizeof err);
        if (fd < 0) {
                pool_say(p, "pool %s: %s", p->name, err);
                *ret_error = fd;
                return NULL;
        }
        json_t *pool = pool_load(p, ret_error, err, sizeof err);
        if (!pool) {
                if (*ret_error != -ENOENT)
                        pool_say(p, "pool %s: %s", p->name, err);
                safe_close(fd);
                return NULL;
        }
        *ret_fd = fd;
        return pool;
}

/* Unregisters and stops a VM; what fails is said in the log, not fatal (an unreachable ballastd
 * only when !quiet). Returns 0 when the VM is gone. */
static int member_destroy(const Pool *p, const char *vm, bool quiet) {
        char err[512];
        int ret = 0;
        int r = api_unregister(p, vm, err, sizeof err);
        if (r < 0 && (r == -EIO || !quiet))
                pool_say(p, "pool %s: VM %s: %s", p->name, vm, err);
        r = vm_stop(vm, 5 * USEC_PER_SEC, err, sizeof err);
        if (r < 0 && r != -ENOENT) {
                pool_say(p, "pool %s: cannot stop VM %s: %s", p->name, vm, err);
                ret = r;
        }
        return ret;
}

/* Destroys the VMs named in `names` (members in 'stopping' that the caller owns) and removes
 * them from the state. */
static int cleanup_members(const Pool *p, json_t *names, bool quiet) {
        json_t *v;
        size_t i;
        int ret = 0;
        json_array_foreach(names, i, v) {
                if (member_destroy(p, json_string_value(v), quiet) < 0)
                        ret = -EIO;
        }
        if (json_array_size(names) == 0)
                return ret;
        char err[512];
        _cleanup_close_ int fd = -EBADF;
        int e;
        _cleanup_(json_decrefp) json_t *pool = pool_load_locked(p, &fd, &e);
        if (!pool)
                return e == -ENOENT ? ret : e;
        json_array_foreach(names, i, v) {
                json_t *m = find_member(pool, json_string_value(v), NULL);
                if (m && state_is(m, "stopping"))
                        remove_member(pool, json_string_value(v));
        }
        if (pool_save(p, pool, err, sizeof err) < 0) {
                pool_say(p, "pool %s: %s", p->name, err);
                return -EIO;
        }
        return ret;
}

/* Cleans up one VM (see cleanup_members()). */
static int cleanup_member(const Pool *p, const char *vm, bool quiet) {
        _cleanup_(json_decrefp) json_t *names = json_pack("[s]", vm);
        return names ? cleanup_members(p, names, quiet) : -ENOMEM;
}

static void pool_spec(json_t *pool, PoolSpec *s) {
        *s = (PoolSpec){
                .memory = pool_u64(pool, "memory_bytes"),
                .park_size = pool_u64(pool, "park_size_bytes"),
                .cpus = (unsigned) MAX(pool_u64(pool, "cpus"), (uint64_t) 1),
                .boot_timeout = pool_u64(pool, "boot_timeout_us") ?: 180 * USEC_PER_SEC,
        };
        strscpy(s->image, sizeof s->image, pool_str(pool, "image"));
}

/* Boots, registers and parks one VM (a member in 'booting' owned by this process). On success the
 * member becomes 'parked'; on failure the VM is destroyed and the member removed. */
static int member_prepare(const Pool *p, const PoolSpec *spec, const char *vm) {
        char err[512] = "";
        int r;
        usec_t t0 = now_mono();
        VmSpec s;
        vm_spec_init(&s);
        s.name = vm;
        s.memory = spec->memory;
        s.cpus = spec->cpus;
        s.image_dir = spec->image[0] ? spec->image : NULL;
        VmInfo info;
        /* A drain sends SIGTERM: not while the launcher is half-way; the VM it then finds is whole. */
        sigset_t term, old;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        sigaddset(&term, SIGINT);
        sigprocmask(SIG_BLOCK, &term, &old);
        r = vm_start(&s, &info, err, sizeof err);
        sigprocmask(SIG_SETMASK, &old, NULL);
        bool started = r >= 0; /* else there is nothing to undo (and a VM of that name is not ours) */
        double boot_ms = 0, park_ms = 0;
        json_t *ans = NULL;
        const char *step = "boot";
        if (r >= 0) {
                char agent[PATH_MAX];
                json_t *ping = NULL;
                vm_socket_path(vm, "agent", agent, sizeof agent);
                r = agent_wait_ready(agent, geteuid(), spec->boot_timeout, info.qemu_pid, &ping, err, sizeof err);
                json_decref(ping);
                boot_ms = ms_since(t0);
        }
        if (r >= 0) {
                step = "register";
                r = api_register(p, vm, spec->memory, err, sizeof err);
        }
        if (r >= 0) {
                step = "park";
                usec_t t1 = now_mono();
                r = api_park(p, vm, spec->park_size, &ans, err, sizeof err);
                park_ms = ms_since(t1);
                const char *res = json_string_value(json_object_get(ans, "result"));
                if (r >= 0 && (!res || strcmp(res, "error") == 0)) {
                        snprintf(err, sizeof err, "park answered %s: %s", res ?: "nothing",
                                 json_string_value(json_object_get(ans, "message")) ?: "");
                        r = -EIO;
                }
        }

        char lerr[512];
        _cleanup_close_ int fd = pool_lock(p, LOCK_EX, lerr, sizeof lerr);
        int e = 0;
        _cleanup_(json_decrefp) json_t *pool = fd >= 0 ? pool_load(p, &e, lerr, sizeof lerr) : NULL;
        json_t *m = pool ? find_member(pool, vm, NULL) : NULL;
        bool ours = m && state_is(m, "booting") && json_integer_value(json_object_get(m, "pid")) == getpid();
        if (r >= 0 && ours) {
                set_state(m, "parked");
                json_object_set_new(m, "boot_ms", json_real(boot_ms));
                json_object_set_new(m, "park_ms", json_real(park_ms));
                json_object_set(m, "park_result", json_object_get(ans, "result"));
                json_object_set(m, "parked_bytes", json_object_get(ans, "reached_bytes"));
                json_object_set(m, "park_elapsed_ms", json_object_get(ans, "elapsed_ms"));
                json_object_del(m, "pid");
                json_object_del(m, "pid_start");
                json_decref(ans);
                if (pool_save(p, pool, lerr, sizeof lerr) < 0) {
                        pool_say(p, "pool %s: %s", p->name, lerr);
                        return -EIO;
                }
                return 0;
        }
        json_decref(ans);
        if (r >= 0) /* drained or released meanwhile: this VM is not wanted */
                snprintf(err, sizeof err, "the pool no longer wants it");
        char msg[700];
        snprintf(msg, sizeof msg, "VM %s: %s failed after %.0f ms: %s", vm, step, ms_since(t0), err);
        if (r < 0)
                pool_say(p, "pool %s: %s", p->name, msg);
        if (!ours) {
                pool_unlock(&fd);
                if (started)
                        member_destroy(p, vm, true);
                return r < 0 ? r : -ECANCELED;
        }
        json_object_set_new(pool, "last_error", json_string(msg));
        json_object_set_new(pool, "failures", json_integer((json_int_t) pool_u64(pool, "failures") + 1));
        if (!started) {
                remove_member(pool, vm);
                pool_save(p, pool, lerr, sizeof lerr);
                return r;
        }
        set_state(m, "stopping");
        json_object_set_new(m, "error", json_string(msg));
        pool_save(p, pool, lerr, sizeof lerr);
        pool_unlock(&fd);
        cleanup_member(p, vm, true);
        return r < 0 ? r : -ECANCELED;
}

/* A worker: while the pool misses members (parked + booting < count), claims one and prepares
 * it; at most max_members (0: no limit). Also cleans up after dead workers. Returns 0, or the
 * error of the last member that failed. */
static int pool_worker(const Pool *p, unsigned max_members) {
        unsigned done = 0, failed = 0;
        int ret = 0;
        char err[512];
        for (;;) {
                char vm[POOL_VM_MAX];
                PoolSpec spec;
                _cleanup_(json_decrefp) json_t *stale = json_array();
                {
                        _cleanup_close_ int fd = -EBADF;
                        int e;
                        _cleanup_(json_decrefp) json_t *pool = pool_load_locked(p, &fd, &e);
                        if (!pool)
                                return e == -ENOENT ? ret : e;
                        bool dirty = pool_take_stale(pool, stale) > 0;
                        size_t have = count_state(pool, "parked") + count_state(pool, "booting");
                        size_t want = pool_u64(pool, "count");
                        bool claim =
                                have < want && (max_members == 0 || done < max_members) && failed < POOL_WORKER_TRIES;
                        if (claim) {
                                next_vm_name(pool, p->name, vm, sizeof vm);
                                json_t *m = json_pack("{s:s}", "vm", vm);
                                set_state(m, "booting");
                                set_worker(m, getpid());
                                json_array_append_new(json_object_get(pool, "members"), m);
                                pool_spec(pool, &spec);
                                dirty = true;
                        }
                        if (dirty && pool_save(p, pool, err, sizeof err) < 0) {
                                pool_say(p, "pool %s: %s", p->name, err);
                                return -EIO;
                        }
                        pool_unlock(&fd);
                        cleanup_members(p, stale, true);
                        if (!claim)
                                return ret;
                }
                int r = member_prepare(p, &spec, vm);
                done++;
                if (r < 0 && r != -ECANCELED) {
                        failed++;
                        ret = r;
                } else if (r == 0)
                        failed = 0;
        }
}

/* A line of the background worker's log (its stderr). */
static void log_stamp(const char *what, const char *name, const char *result) {
        char ts[64];
        time_t t = time(NULL);
        struct tm tm;
        strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", localtime_r(&t, &tm));
        fprintf(stderr, "%s worker %d: %s%s%s\n", ts, (int) getpid(), what, name, result);
}

int pool_spawn_refill(Pool *p, char *err, size_t errlen) {
        fflush(NULL);
        pid_t mid = fork();
        if (mid < 0) {
                int r = negative_errno();
                snprintf(err, errlen, "pool %s: cannot start a replacement: fork: %s", p->name, strerror(-r));
                return r;
        }
        if (mid == 0) {
                if (setsid() < 0)
                        _exit(1);
                pid_t w = fork();
                if (w != 0)
                        _exit(w < 0 ? 1 : 0);
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                int log = open(p->log_file, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
                if (null >= 0)
                        dup2(null, STDIN_FILENO);
                if (log >= 0) {
                        dup2(log, STDOUT_FILENO);
                        dup2(log, STDERR_FILENO);
                } else if (null >= 0) {
                        dup2(null, STDOUT_FILENO);
                        dup2(null, STDERR_FILENO);
                }
                safe_close(null);
                safe_close(log);
                signal(SIGHUP, SIG_IGN);
                log_stamp("refilling pool ", p->name, "");
                int r = pool_worker(p, 0);
                log_stamp("done (", r < 0 ? strerror(-r) : "ok", ")");
                _exit(r < 0 ? 1 : 0);
        }
        int st;
        while (waitpid(mid, &st, 0) < 0 && errno == EINTR)
                ;
        return 0;
}

/* ---- what the commands do ---- */

/* Takes the pool's exclusive lock (in *ret_fd, which the caller closes) and loads the state: NULL
 * with *ret_error -ENOENT when there is no such pool (the lock held), or another negative errno
 * with err. */
static json_t *pool_lock_load(const Pool *p, int *ret_fd, int *ret_error, char *err, size_t errlen) {
        int fd = pool_lock(p, LOCK_EX, err, errlen);
        if (fd < 0) {
                *ret_error = fd;
                return NULL;
        }
        *ret_fd = fd;
        return pool_load(p, ret_error, err, errlen);
}

int pool_fill(Pool *p, const PoolSettings *o, size_t *ret_started, char *err, size_t errlen) {
        size_t missing;
        *ret_started = 0;
        {
                _cleanup_close_ int fd = -EBADF;
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_lock_load(p, &fd, &e, err, errlen);
                if (!pool && e != -ENOENT)
                        return e;
                bool have_memory = o->have_memory;
                if (!pool) {
                        if (!o->have_count) {
                                snprintf(err, errlen, "pool %s does not exist yet: --count is required", p->name);
                                return -EINVAL;
                        }
                        pool = json_pack("{s:s,s:i,s:[]}", "pool", p->name, "version", 1, "members");
                        json_object_set_new(pool, "created_us", json_integer((json_int_t) now_rt()));
                        if (!have_memory)
                                json_object_set_new(pool, "memory_bytes", json_integer((json_int_t) 512 << 20));
                }
                if (o->have_count)
                        json_object_set_new(pool, "count", json_integer((json_int_t) o->count));
                if (have_memory)
                        json_object_set_new(pool, "memory_bytes", json_integer((json_int_t) o->memory));
                if (o->have_park)
                        json_object_set_new(pool, "park_size_bytes", json_integer((json_int_t) o->park_size));
                if (o->have_cpus || !json_object_get(pool, "cpus"))
                        json_object_set_new(pool, "cpus", json_integer(o->have_cpus ? (json_int_t) o->cpus : 1));
                if (o->have_boot)
                        json_object_set_new(pool, "boot_timeout_us", json_integer((json_int_t) o->boot_timeout));
                if (o->image) {
                        char img[PATH_MAX];
                        if (!realpath(o->image, img)) {
                                int r = negative_errno();
                                snprintf(err, errlen, "--image %s: %s", o->image, strerror(-r));
                                return r;
                        }
                        json_object_set_new(pool, "image", json_string(img));
                }
                uint64_t park = pool_u64(pool, "park_size_bytes");
                if (park && park > pool_u64(pool, "memory_bytes")) {
                        snprintf(err, errlen, "the park size is larger than the VMs' memory");
                        return -EINVAL;
                }
                size_t have = count_state(pool, "parked") + count_state(pool, "booting");
                size_t want = pool_u64(pool, "count");
                missing = have < want ? want - have : 0;
                int r = pool_save(p, pool, err, errlen);
                if (r < 0)
                        return r;
        }

        /* One worker per missing VM, in parallel, each preparing one. */
        pid_t *pids = calloc(MAX(missing, (size_t) 1), sizeof *pids);
        if (!pids) {
                snprintf(err, errlen, "out of memory");
                return -ENOMEM;
        }
        size_t started = 0;
        int ret = 0;
        fflush(NULL);
        for (size_t i = 0; i < missing; i++) {
                pid_t pid = fork();
                if (pid < 0) {
                        ret = negative_errno();
                        snprintf(err, errlen, "fork: %s", strerror(-ret));
                        break;
                }
                if (pid == 0)
                        _exit(pool_worker(p, 1) < 0 ? 1 : 0);
                pids[started++] = pid;
        }
        for (size_t i = 0; i < started; i++) {
                int st;
                while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
                        ;
                if ((!WIFEXITED(st) || WEXITSTATUS(st) != 0) && ret == 0) {
                        ret = -EIO;
                        snprintf(err, errlen, "pool %s: a VM could not be prepared", p->name);
                }
        }
        free(pids);
        *ret_started = started;
        return ret;
}

/* The members with what ballastd says about each (one GET /v1/vms). */
static json_t *status_json(const Pool *p, json_t *pool) {
        json_t *out = json_deep_copy(pool);
        char err[512];
        int status = 0;
        json_t *vms = NULL, *byid = json_object();
        int r = api_call(p->api, "GET", "/v1/vms", NULL, p->api_timeout, &status, &vms, err, sizeof err);
        json_t *v;
        size_t i;
        if (r >= 0 && status == 200)
                json_array_foreach(json_object_get(vms, "vms"), i, v) {
                        json_object_set(byid, pool_str(v, "id"), v);
                }
        json_object_set_new(out, "daemon_error", r >= 0 && status == 200 ? json_null() : json_string(err));
        json_decref(vms);
        uint64_t now = now_rt();
        json_array_foreach(json_object_get(out, "members"), i, v) {
                json_t *d = json_object_get(byid, pool_str(v, "vm"));
                json_t *dv = json_null();
                if (d)
                        dv = json_pack("{s:O,s:O,s:O,s:O,s:O}", "status", json_object_get(d, "status") ?: json_null(),
                                       "parked", json_object_get(d, "parked") ?: json_null(), "target_bytes",
                                       json_object_get(d, "target_bytes") ?: json_null(), "actual_bytes",
                                       json_object_get(d, "actual_bytes") ?: json_null(), "host_rss_bytes",
                                       json_object_get(d, "host_rss_bytes") ?: json_null());
                json_object_set_new(v, "daemon", dv);
                json_object_set_new(v, "age_s", json_real((double) (now - MIN(now, pool_u64(v, "since_us"))) / 1e6));
                if (state_is(v, "booting") || state_is(v, "stopping"))
                        json_object_set_new(v, "worker_alive", json_boolean(worker_alive(v)));
        }
        json_decref(byid);
        static const char *const states[] = { "parked", "booting", "in_use", "stopping" };
        for (size_t k = 0; k < ELEMENTSOF(states); k++)
                json_object_set_new(out, states[k], json_integer((json_int_t) count_state(pool, states[k])));
        return out;
}

json_t *pool_status(Pool *p, int *ret_error, char *err, size_t errlen) {
        if (access(p->state, F_OK) < 0) {
                *ret_error = -ENOENT;
                snprintf(err, errlen, "no pool named '%s' (in %s)", p->name, p->root);
                return NULL;
        }
        _cleanup_(json_decrefp) json_t *pool = NULL;
        {
                _cleanup_close_ int fd = pool_lock(p, LOCK_SH, err, errlen);
                if (fd < 0) {
                        *ret_error = fd;
                        return NULL;
                }
                pool = pool_load(p, ret_error, err, errlen);
        }
        if (!pool)
                return NULL;
        *ret_error = 0;
        return status_json(p, pool);
}

int pool_acquire(Pool *p, bool wait, PoolAcquired *ret, char *err, size_t errlen) {
        usec_t t0 = now_mono();
        *ret = (PoolAcquired){ .unpark_ms = NAN };
        char *vm = ret->vm;
        {
                _cleanup_close_ int fd = -EBADF;
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_lock_load(p, &fd, &e, err, errlen);
                if (!pool) {
                        if (e == -ENOENT)
                                snprintf(err, errlen,
                                         "no pool named '%s' (create it with 'ballastctl pool fill %s --count N')",
                                         p->name, p->name);
                        return e;
                }
                /* The VM parked longest first. */
                json_t *pick = NULL, *m;
                size_t i;
                json_array_foreach(json_object_get(pool, "members"), i, m) {
                        if (state_is(m, "parked") && (!pick || pool_u64(m, "since_us") < pool_u64(pick, "since_us")))
                                pick = m;
                }
                if (!pick) {
                        size_t booting = count_state(pool, "booting");
                        const char *le = pool_str(pool, "last_error");
                        snprintf(err, errlen, "pool %s: no parked VM available (%zu booting, %zu in use)%s%s", p->name,
                                 booting, count_state(pool, "in_use"), le[0] ? "; last error: " : "", le);
                        pool_unlock(&fd);
                        /* A pool that lost members to failures gets a worker again. */
                        if (booting == 0 && pool_u64(pool, "count") > 0) {
                                char serr[256];
                                if (pool_spawn_refill(p, serr, sizeof serr) < 0)
                                        pool_say(p, "%s", serr);
                        }
                        return -EAGAIN;
                }
                strscpy(vm, sizeof ret->vm, pool_str(pick, "vm"));
                set_state(pick, "in_use");
                int r = pool_save(p, pool, err, errlen);
                if (r < 0)
                        return r;
        }

        char path[128], aerr[512];
        snprintf(path, sizeof path, "/v1/vms/%s/unpark", vm);
        json_t *body = wait ? json_pack("{s:b}", "wait", true) : NULL;
        int status = 0;
        json_t *ans = NULL;
        usec_t t1 = now_mono();
        int r = api_call(p->api, "POST", path, body, wait ? POOL_PARK_TIMEOUT + 15 * USEC_PER_SEC : p->api_timeout,
                         &status, &ans, aerr, sizeof aerr);
        ret->unpark_ms = ms_since(t1);
        const char *res = json_string_value(json_object_get(ans, "result"));
        bool ok = r >= 0 && status == 200 && res && strcmp(res, "error") != 0;
        if (!ok && r >= 0 && status == 200)
                snprintf(aerr, sizeof aerr, "unpark answered %s: %s", res ?: "nothing",
                         json_string_value(json_object_get(ans, "message")) ?: "");
        ret->total_ms = ms_since(t0);
        if (ok) {
                ret->answer = ans;
                char serr[256];
                if (pool_spawn_refill(p, serr, sizeof serr) < 0)
                        pool_say(p, "%s", serr);
                return 0;
        }
        json_decref(ans);
        snprintf(err, errlen, "pool %s: cannot unpark VM %s: %s", p->name, vm, aerr);
        char lerr[512];
        _cleanup_close_ int fd = pool_lock(p, LOCK_EX, lerr, sizeof lerr);
        int e;
        _cleanup_(json_decrefp) json_t *pool = fd >= 0 ? pool_load(p, &e, lerr, sizeof lerr) : NULL;
        json_t *m = pool ? find_member(pool, vm, NULL) : NULL;
        if (r < 0) {
                /* No answer (ballastd down or restarting): the VM is still parked; put it back. */
                if (m && state_is(m, "in_use")) {
                        set_state(m, "parked");
                        pool_save(p, pool, lerr, sizeof lerr);
                }
                return r;
        }
        /* Refused or failed: not handed out; the VM is taken out of the pool and replaced. */
        if (m) {
                set_state(m, "stopping");
                set_worker(m, getpid());
                json_object_set_new(m, "error", json_string(aerr));
                json_object_set_new(pool, "last_error", json_string(aerr));
                pool_save(p, pool, lerr, sizeof lerr);
        }
        pool_unlock(&fd);
        cleanup_member(p, vm, true);
        char serr[256];
        if (pool_spawn_refill(p, serr, sizeof serr) < 0)
                pool_say(p, "%s", serr);
        return -EIO;
}

int pool_release(Pool *p, const char *vm, bool refill, char *err, size_t errlen) {
        {
                _cleanup_close_ int fd = -EBADF;
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_lock_load(p, &fd, &e, err, errlen);
                if (!pool)
                        return e;
                json_t *m = find_member(pool, vm, NULL);
                if (!m) {
                        snprintf(err, errlen, "pool %s has no VM named '%s'", p->name, vm);
                        return -ESRCH;
                }
                if ((state_is(m, "booting") || state_is(m, "stopping")) && worker_alive(m)) {
                        snprintf(err, errlen, "pool %s: VM %s is %s; try again later", p->name, vm,
                                 pool_str(m, "state"));
                        return -EBUSY;
                }
                set_state(m, "stopping");
                set_worker(m, getpid());
                int r = pool_save(p, pool, err, errlen);
                if (r < 0)
                        return r;
        }
        int r = cleanup_member(p, vm, false);
        if (refill) {
                char serr[256];
                if (pool_spawn_refill(p, serr, sizeof serr) < 0)
                        pool_say(p, "%s", serr);
        }
        if (r < 0)
                snprintf(err, errlen, "pool %s: VM %s was not stopped cleanly", p->name, vm);
        return r;
}

/* Waits until a worker process is gone: SIGTERM, then SIGKILL after a while. */
static void stop_worker(json_t *m) {
        pid_t pid = (pid_t) json_integer_value(json_object_get(m, "pid"));
        if (pid <= 0 || pid == getpid() || !worker_alive(m))
                return;
        kill(pid, SIGTERM);
        usec_t deadline = now_mono() + 30 * USEC_PER_SEC;
        bool killed = false;
        while (worker_alive(m)) {
                if (!killed && now_mono() >= deadline) {
                        kill(pid, SIGKILL);
                        killed = true;
                        deadline = now_mono() + 10 * USEC_PER_SEC;
                } else if (killed && now_mono() >= deadline)
                        break;
                struct timespec ts = { 0, 20 * 1000 * 1000 };
                nanosleep(&ts, NULL);
        }
}

static bool is_pool_vm_name(const char *pool, const char *vm) {
        size_t n = strlen(pool);
        if (strncmp(vm, pool, n) != 0 || vm[n] != '-' || !vm[n + 1])
                return false;
        return strspn(vm + n + 1, "0123456789") == strlen(vm + n + 1);
}

int pool_drain(Pool *p, json_t **ret_stopped, char *err, size_t errlen) {
        _cleanup_(json_decrefp) json_t *members = NULL;
        *ret_stopped = NULL;
        {
                _cleanup_close_ int fd = -EBADF;
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_lock_load(p, &fd, &e, err, errlen);
                if (!pool && e != -ENOENT)
                        return e;
                if (!pool) {
                        /* Nothing recorded; VMs of that name may still be about (an old crash). */
                        pool = json_pack("{s:s,s:[]}", "pool", p->name, "members");
                } else {
                        /* From now on no worker claims anything. */
                        json_object_set_new(pool, "count", json_integer(0));
                        int r = pool_save(p, pool, err, errlen);
                        if (r < 0)
                                return r;
                }
                members = json_deep_copy(json_object_get(pool, "members"));
        }
        /* Workers first, so that none starts a VM behind our back. */
        json_t *m;
        size_t i;
        json_array_foreach(members, i, m) {
                if (state_is(m, "booting") || state_is(m, "stopping"))
                        stop_worker(m);
        }
        /* Every member and every VM that looks like one (NAME-<n>) under the run root. */
        json_t *names = json_array();
        json_array_foreach(members, i, m) {
                json_array_append_new(names, json_string(pool_str(m, "vm")));
        }
        VmInfo *list = NULL;
        size_t n = 0;
        if (vm_list(&list, &n) >= 0)
                for (size_t k = 0; k < n; k++) {
                        bool known = false;
                        json_t *v;
                        size_t j;
                        json_array_foreach(names, j, v) {
                                known |= strcmp(json_string_value(v), list[k].name) == 0;
                        }
                        if (!known && is_pool_vm_name(p->name, list[k].name))
                                json_array_append_new(names, json_string(list[k].name));
                }
        free(list);
        int ret = 0;
        json_t *v;
        json_array_foreach(names, i, v) {
                if (member_destroy(p, json_string_value(v), false) < 0)
                        ret = -EIO;
        }
        {
                char lerr[512];
                _cleanup_close_ int fd = pool_lock(p, LOCK_EX, lerr, sizeof lerr);
                if (fd >= 0) {
                        if (ret == 0) {
                                unlink(p->state);
                                unlink(p->log_file);
                                unlink(p->lock);
                        } else {
                                int e;
                                json_t *pool = pool_load(p, &e, lerr, sizeof lerr);
                                if (pool) {
                                        json_object_set_new(pool, "last_error",
                                                            json_string("drain could not stop every VM"));
                                        pool_save(p, pool, lerr, sizeof lerr);
                                        json_decref(pool);
                                }
                        }
                }
        }
        if (ret < 0)
                snprintf(err, errlen, "pool %s: drain could not stop every VM", p->name);
        *ret_stopped = names;
        return ret;
}
