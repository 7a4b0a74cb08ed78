/* SPDX-License-Identifier: MIT */
/* ballastctl pool fill|acquire|release|status|drain NAME — a warm pool that ballastctl runs itself
 * (B4.3), client-side, over the launcher (vm/launcher.h) and ballastd's API (park and unpark).
 *
 * The pool's state is one JSON file in the launcher's run root, $ROOT/pool-NAME.json, replaced
 * atomically (a temporary file renamed over it; no fsync: like the VMs, it is runtime state) and
 * only changed under an exclusive flock() of $ROOT/pool-NAME.lock: two acquires never hand out
 * the same VM. A member is
 *   booting   being prepared by a worker process (boot, register with ballastd, park); the
 *             worker's pid and start time are recorded, so a worker that died is noticed
 *   parked    ready to be handed out
 *   in_use    handed out by acquire
 *   stopping  being stopped (release, drain, or the clean-up of a dead worker's VM)
 * Workers run in parallel in the foreground for fill and detached in the background (their
 * output in $ROOT/pool-NAME.log) after acquire and release. Nothing is held under the lock but
 * the read-modify-write of the state file. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "hv/http1.h"
#include "shared/strutil.h"
#include "vm/agent.h"
#include "vm/launcher.h"

#define POOL_NAME_MAX     24 /* the launcher's VM names are at most 32: NAME-NNNNNNN */
#define POOL_COUNT_MAX    64
#define POOL_PARK_TIMEOUT (60 * USEC_PER_SEC)
/* A background worker gives up after this many failed members in a row. */
#define POOL_WORKER_TRIES 2

static const char pool_usage[] =
        "Usage: ballastctl pool fill NAME --count N [--memory SIZE] [--park-size SIZE] [options]\n"
        "       ballastctl pool acquire NAME [--wait] [options]\n"
        "       ballastctl pool release NAME VM [--no-refill] [options]\n"
        "       ballastctl pool status NAME [options]\n"
        "       ballastctl pool drain NAME [options]\n"
        "\n"
        "A warm pool of VMs that ballastctl runs itself with the launcher and ballastd (B4.3).\n"
        "  fill     boots VMs named NAME-0, NAME-1, ... (detached, as 'vm start' does) until N are\n"
        "           parked or booting, registers each with ballastd (driver qemu, the VM's qmp.sock,\n"
        "           our uid, assigned = its memory) and parks it; waits until they are ready\n"
        "  acquire  hands out a parked VM: unparks it (answering as soon as ballastd has sent the\n"
        "           command, or with --wait once the guest has its memory), marks it in use, prints\n"
        "           its name and how long ballast's part took, and boots a replacement in the\n"
        "           background; no parked VM: exit 1\n"
        "  release  unregisters and stops a VM of the pool, and boots a replacement in the background\n"
        "  status   the members, their state and what ballastd says about them\n"
        "  drain    stops every VM of the pool (and any replacement being booted) and forgets the pool\n"
        "\n"
        "The state is $BALLAST_RUN_DIR/pool-NAME.json (with the launcher's VMs), changed under a lock;\n"
        "background replacements log to pool-NAME.log there. NAME: 1-24 of A-Z a-z 0-9 _ . -\n"
        "\n"
        "fill options:\n"
        "  --count N              how many VMs the pool keeps ready, 1-64 (required the first time)\n"
        "  --memory SIZE          each VM's memory (default 512M)\n"
        "  --park-size SIZE       the size VMs are parked at (default: ballastd's, 128M)\n"
        "  --cpus N               vCPUs of each VM (default 1)\n"
        "  --image DIR            the guest image (default: the launcher's search)\n"
        "  --boot-timeout DURATION  how long a VM may take to boot (default 180s)\n"
        "acquire options:\n"
        "  --wait                 answer once the guest has its memory\n"
        "release options:\n"
        "  --no-refill            do not boot a replacement\n"
        "\n"
        "Options of every pool command:\n" CTL_API_USAGE_OPTIONS "\n"
        "Examples:\n"
        "  ballastctl pool fill sandbox --count 3 --memory 512M --park-size 128M\n"
        "  vm=$(ballastctl --json pool acquire sandbox | jq -r .vm)\n"
        "  ballastctl vm exec \"$vm\" -- uname -a\n"
        "  ballastctl pool release sandbox \"$vm\"\n"
        "  ballastctl pool drain sandbox\n";

typedef struct PoolPaths {
        char root[PATH_MAX];
        char state[PATH_MAX + 64];
        char lock[PATH_MAX + 64];
        char log[PATH_MAX + 64];
} PoolPaths;

/* ---- small helpers ---- */

static uint64_t now_rt(void) {
        return now_usec(CLOCK_REALTIME);
}

static double ms_since(usec_t t0) {
        return (double) (now_mono() - t0) / 1000.0;
}

static bool pool_name_is_valid(const char *s) {
        return name_is_valid(s) && strlen(s) <= POOL_NAME_MAX;
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

static const char *mstr(json_t *m, const char *key) {
        return json_string_value(json_object_get(m, key)) ?: "";
}

static uint64_t mu64(json_t *m, const char *key) {
        json_t *v = json_object_get(m, key);
        return json_is_integer(v) && json_integer_value(v) > 0 ? (uint64_t) json_integer_value(v) : 0;
}

static bool state_is(json_t *m, const char *s) {
        return strcmp(mstr(m, "state"), s) == 0;
}

static void set_state(json_t *m, const char *s) {
        json_object_set_new(m, "state", json_string(s));
        json_object_set_new(m, "since_us", json_integer((json_int_t) now_rt()));
}

static int mkdir_parents(const char *path, mode_t mode) {
        char buf[PATH_MAX];
        if (strscpy(buf, sizeof buf, path) >= sizeof buf)
                return -ENAMETOOLONG;
        for (char *p = buf + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(buf, mode) < 0 && errno != EEXIST)
                        return negative_errno();
                *p = '/';
        }
        if (mkdir(buf, mode) < 0 && errno != EEXIST)
                return negative_errno();
        return 0;
}

static int pool_paths(const char *name, PoolPaths *p) {
        int r = vm_run_root(p->root, sizeof p->root);
        if (r < 0)
                return cli_error(EXIT_FAIL, "the run directory path is too long");
        snprintf(p->state, sizeof p->state, "%s/pool-%s.json", p->root, name);
        snprintf(p->lock, sizeof p->lock, "%s/pool-%s.lock", p->root, name);
        snprintf(p->log, sizeof p->log, "%s/pool-%s.log", p->root, name);
        return 0;
}

/* ---- the state file and its lock ---- */

/* Takes the pool's lock (op: LOCK_EX or LOCK_SH). A drain removes the lock file while holding
 * it: whoever was waiting on the old file takes the new one. Returns the fd or -errno. */
static int pool_lock(const PoolPaths *p, int op) {
        int r = mkdir_parents(p->root, 0755);
        if (r < 0)
                return r;
        for (;;) {
                int fd = open(p->lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
                if (fd < 0)
                        return negative_errno();
                if (flock(fd, op) < 0) {
                        r = negative_errno();
                        close(fd);
                        if (r == -EINTR)
                                continue;
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

/* The state, or NULL when there is no such pool (*ret_error: -ENOENT) or it cannot be read. */
static json_t *pool_load(const PoolPaths *p, int *ret_error) {
        json_error_t je;
        json_t *j = json_load_file(p->state, 0, &je);
        if (!j) {
                *ret_error = access(p->state, F_OK) < 0 ? -ENOENT : -EBADMSG;
                if (*ret_error != -ENOENT)
                        cli_error(EXIT_FAIL, "cannot read %s: %s", p->state, je.text);
                return NULL;
        }
        if (!json_is_object(j) || !json_is_array(json_object_get(j, "members"))) {
                json_decref(j);
                *ret_error = -EBADMSG;
                cli_error(EXIT_FAIL, "%s is not a pool state file", p->state);
                return NULL;
        }
        *ret_error = 0;
        return j;
}

static int pool_save(const PoolPaths *p, json_t *pool) {
        char tmp[PATH_MAX + 96];
        snprintf(tmp, sizeof tmp, "%s.tmp.%d", p->state, (int) getpid());
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return cli_error(EXIT_FAIL, "cannot write %s: %s", tmp, strerror(errno));
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
                return cli_error(EXIT_FAIL, "cannot write %s: %s", p->state, strerror(e));
        }
        return 0;
}

static json_t *find_member(json_t *pool, const char *vm, size_t *ret_index) {
        json_t *members = json_object_get(pool, "members"), *m;
        size_t i;
        json_array_foreach(members, i, m) {
                if (strcmp(mstr(m, "vm"), vm) == 0) {
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
                json_array_append_new(stale, json_string(mstr(m, "vm")));
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

/* ---- ballastd, quietly ---- */

/* One request to ballastd that prints nothing. Returns 0 with the HTTP status (and the JSON body,
 * or NULL, in *ret when ret is given), or a negative errno when there is no answer; err says why
 * in both the transport case and the non-2xx case. */
static int api_call(const char *method, const char *path, json_t *body, usec_t timeout, int *ret_status, json_t **ret,
                    char *err, size_t errlen) {
        _cleanup_free_ char *req = NULL, *buf = NULL;
        if (body) {
                req = json_dumps(body, JSON_COMPACT);
                json_decref(body);
                if (!req) {
                        snprintf(err, errlen, "cannot encode the request");
                        return -ENOMEM;
                }
        }
        const char *sock = ctl_api_path();
        Http1Response resp;
        char e[512] = "";
        int r = http1_roundtrip_unix(sock, method, path, NULL, req, req ? strlen(req) : 0, timeout, CTL_API_BODY_MAX,
                                     &resp, &buf, e, sizeof e);
        if (r < 0) {
                snprintf(err, errlen, "cannot reach ballastd at %s: %s", sock, e[0] ? e : strerror(-r));
                return r;
        }
        json_t *j = resp.body_len ? json_loadb(resp.body, resp.body_len, 0, NULL) : NULL;
        *ret_status = resp.status;
        if (resp.status < 200 || resp.status > 299) {
                json_t *eo = json_object_get(j, "error");
                snprintf(err, errlen, "%s %s: %s (HTTP %d %s)", method, path,
                         json_string_value(json_object_get(eo, "message")) ?: "no error message", resp.status,
                         json_string_value(json_object_get(eo, "code")) ?: "");
        } else
                err[0] = '\0';
        if (ret)
                *ret = j;
        else
                json_decref(j);
        return 0;
}

/* Forgets the VM in ballastd; a VM ballastd does not know is fine. */
static int api_unregister(const char *vm, char *err, size_t errlen) {
        char path[128];
        int status = 0;
        snprintf(path, sizeof path, "/v1/vms/%s", vm);
        int r = api_call("DELETE", path, NULL, 20 * USEC_PER_SEC, &status, NULL, err, errlen);
        if (r < 0)
                return r;
        return status == 200 || status == 404 ? 0 : -EIO;
}

static int api_register(const char *vm, uint64_t memory, char *err, size_t errlen) {
        char sock[PATH_MAX];
        if (vm_socket_path(vm, "qmp", sock, sizeof sock) < 0) {
                snprintf(err, errlen, "socket path too long");
                return -ENAMETOOLONG;
        }
        for (int attempt = 0;; attempt++) {
                json_t *b = json_pack("{s:s,s:s,s:s,s:I,s:I}", "id", vm, "driver", "qemu", "socket", sock,
                                      "expected_uid", (json_int_t) geteuid(), "assigned_bytes", (json_int_t) memory);
                int status = 0;
                int r = api_call("POST", "/v1/vms", b, arg_api_timeout, &status, NULL, err, errlen);
                if (r < 0)
                        return r;
                if (status == 201)
                        return 0;
                /* Left over from an earlier VM of that name: forget it and register again. */
                if (status != 409 || attempt > 0 || api_unregister(vm, err, errlen) < 0)
                        return -EIO;
        }
}

/* Parks the VM; *ret is the answer. Waits while ballastd has not read its size yet. */
static int api_park(const char *vm, uint64_t size, json_t **ret, char *err, size_t errlen) {
        char path[128];
        snprintf(path, sizeof path, "/v1/vms/%s/park", vm);
        usec_t deadline = now_mono() + 60 * USEC_PER_SEC;
        for (;;) {
                json_t *b = json_object();
                if (size)
                        json_object_set_new(b, "size_bytes", json_integer((json_int_t) size));
                int status = 0;
                json_t *a = NULL;
                int r = api_call("POST", path, b, POOL_PARK_TIMEOUT + 15 * USEC_PER_SEC, &status, &a, err, errlen);
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

/* Unregisters and stops a VM; errors are printed, not fatal (an unreachable ballastd only when
 * !quiet). Returns 0 when the VM is gone. */
static int member_destroy(const char *pool, const char *vm, bool quiet) {
        char err[512];
        int ret = 0;
        int r = api_unregister(vm, err, sizeof err);
        if (r < 0 && (r == -EIO || !quiet))
                cli_error(EXIT_FAIL, "pool %s: VM %s: %s", pool, vm, err);
        r = vm_stop(vm, 5 * USEC_PER_SEC, err, sizeof err);
        if (r < 0 && r != -ENOENT) {
                cli_error(EXIT_FAIL, "pool %s: cannot stop VM %s: %s", pool, vm, err);
                ret = r;
        }
        return ret;
}

/* Destroys the VMs named in `names` (members in 'stopping' that the caller owns) and removes
 * them from the state. */
static int cleanup_members(const PoolPaths *p, const char *name, json_t *names, bool quiet) {
        json_t *v;
        size_t i;
        int ret = 0;
        json_array_foreach(names, i, v) {
                if (member_destroy(name, json_string_value(v), quiet) < 0)
                        ret = -EIO;
        }
        if (json_array_size(names) == 0)
                return ret;
        _cleanup_close_ int fd = pool_lock(p, LOCK_EX);
        if (fd < 0)
                return fd;
        int e;
        _cleanup_(json_decrefp) json_t *pool = pool_load(p, &e);
        if (!pool)
                return e == -ENOENT ? ret : e;
        json_array_foreach(names, i, v) {
                json_t *m = find_member(pool, json_string_value(v), NULL);
                if (m && state_is(m, "stopping"))
                        remove_member(pool, json_string_value(v));
        }
        return pool_save(p, pool) == 0 ? ret : -EIO;
}

typedef struct PoolSpec {
        uint64_t memory, park_size;
        unsigned cpus;
        char image[PATH_MAX];
        usec_t boot_timeout;
} PoolSpec;

static void pool_spec(json_t *pool, PoolSpec *s) {
        *s = (PoolSpec){
                .memory = mu64(pool, "memory_bytes"),
                .park_size = mu64(pool, "park_size_bytes"),
                .cpus = (unsigned) MAX(mu64(pool, "cpus"), (uint64_t) 1),
                .boot_timeout = mu64(pool, "boot_timeout_us") ?: 180 * USEC_PER_SEC,
        };
        strscpy(s->image, sizeof s->image, mstr(pool, "image"));
}

/* Boots, registers and parks one VM (a member in 'booting' owned by this process). On success the
 * member becomes 'parked'; on failure the VM is destroyed and the member removed. */
static int member_prepare(const PoolPaths *p, const char *name, const PoolSpec *spec, const char *vm) {
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
                r = api_register(vm, spec->memory, err, sizeof err);
        }
        if (r >= 0) {
                step = "park";
                usec_t t1 = now_mono();
                r = api_park(vm, spec->park_size, &ans, err, sizeof err);
                park_ms = ms_since(t1);
                const char *res = json_string_value(json_object_get(ans, "result"));
                if (r >= 0 && (!res || strcmp(res, "error") == 0)) {
                        snprintf(err, sizeof err, "park answered %s: %s", res ?: "nothing",
                                 json_string_value(json_object_get(ans, "message")) ?: "");
                        r = -EIO;
                }
        }

        _cleanup_close_ int fd = pool_lock(p, LOCK_EX);
        int e = 0;
        _cleanup_(json_decrefp) json_t *pool = fd >= 0 ? pool_load(p, &e) : NULL;
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
                return pool_save(p, pool) == 0 ? 0 : -EIO;
        }
        json_decref(ans);
        if (r >= 0) /* drained or released meanwhile: this VM is not wanted */
                snprintf(err, sizeof err, "the pool no longer wants it");
        char msg[700];
        snprintf(msg, sizeof msg, "VM %s: %s failed after %.0f ms: %s", vm, step, ms_since(t0), err);
        if (r < 0)
                cli_error(EXIT_FAIL, "pool %s: %s", name, msg);
        if (!ours) {
                pool_unlock(&fd);
                if (started)
                        member_destroy(name, vm, true);
                return r < 0 ? r : -ECANCELED;
        }
        json_object_set_new(pool, "last_error", json_string(msg));
        json_object_set_new(pool, "failures", json_integer((json_int_t) mu64(pool, "failures") + 1));
        if (!started) {
                remove_member(pool, vm);
                pool_save(p, pool);
                return r;
        }
        set_state(m, "stopping");
        json_object_set_new(m, "error", json_string(msg));
        pool_save(p, pool);
        pool_unlock(&fd);
        json_t *names = json_pack("[s]", vm);
        cleanup_members(p, name, names, true);
        json_decref(names);
        return r < 0 ? r : -ECANCELED;
}

/* A worker: while the pool misses members (parked + booting < count), claims one and prepares
 * it; at most max_members (0: no limit). Also cleans up after dead workers. Returns 0, or the
 * error of the last member that failed. */
static int pool_worker(const PoolPaths *p, const char *name, unsigned max_members) {
        unsigned done = 0, failed = 0;
        int ret = 0;
        for (;;) {
                char vm[64];
                PoolSpec spec;
                _cleanup_(json_decrefp) json_t *stale = json_array();
                {
                        _cleanup_close_ int fd = pool_lock(p, LOCK_EX);
                        if (fd < 0) {
                                cli_error(EXIT_FAIL, "pool %s: cannot lock %s: %s", name, p->lock, strerror(-fd));
                                return fd;
                        }
                        int e;
                        _cleanup_(json_decrefp) json_t *pool = pool_load(p, &e);
                        if (!pool)
                                return e == -ENOENT ? ret : e;
                        bool dirty = pool_take_stale(pool, stale) > 0;
                        size_t have = count_state(pool, "parked") + count_state(pool, "booting");
                        size_t want = mu64(pool, "count");
                        bool claim =
                                have < want && (max_members == 0 || done < max_members) && failed < POOL_WORKER_TRIES;
                        if (claim) {
                                next_vm_name(pool, name, vm, sizeof vm);
                                json_t *m = json_pack("{s:s}", "vm", vm);
                                set_state(m, "booting");
                                set_worker(m, getpid());
                                json_array_append_new(json_object_get(pool, "members"), m);
                                pool_spec(pool, &spec);
                                dirty = true;
                        }
                        if (dirty && pool_save(p, pool) != 0)
                                return -EIO;
                        pool_unlock(&fd);
                        cleanup_members(p, name, stale, true);
                        if (!claim)
                                return ret;
                }
                int r = member_prepare(p, name, &spec, vm);
                done++;
                if (r < 0 && r != -ECANCELED) {
                        failed++;
                        ret = r;
                } else if (r == 0)
                        failed = 0;
        }
}

/* Starts a worker detached from us (double fork, its own session, output to the pool's log):
 * the caller returns at once and a test harness reading our stdout is not held up. */
static int spawn_background_worker(const PoolPaths *p, const char *name) {
        fflush(NULL);
        pid_t mid = fork();
        if (mid < 0)
                return cli_error(EXIT_FAIL, "pool %s: cannot start a replacement: fork: %s", name, strerror(errno));
        if (mid == 0) {
                if (setsid() < 0)
                        _exit(1);
                pid_t w = fork();
                if (w != 0)
                        _exit(w < 0 ? 1 : 0);
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                int log = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
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
                char ts[64];
                time_t t = time(NULL);
                struct tm tm;
                strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", localtime_r(&t, &tm));
                fprintf(stderr, "%s worker %d: refilling pool %s\n", ts, (int) getpid(), name);
                int r = pool_worker(p, name, 0);
                t = time(NULL);
                strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", localtime_r(&t, &tm));
                fprintf(stderr, "%s worker %d: done (%s)\n", ts, (int) getpid(), r < 0 ? strerror(-r) : "ok");
                _exit(r < 0 ? EXIT_FAIL : EXIT_OK);
        }
        int st;
        while (waitpid(mid, &st, 0) < 0 && errno == EINTR)
                ;
        return 0;
}

/* ---- the commands ---- */

static int pool_option(int c, const char *arg);

/* getopt over the command's options; -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, const struct option *opts) {
        int c, r;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = pool_option(c, optarg)) >= 0)
                        return r;
        return -1;
}

static int need_name(int argc, char **argv, int want, const char *what) {
        if (argc - optind != want)
                return cli_usage_error("pool %s needs %s", argv[0] + strlen("ballastctl pool "), what);
        if (!pool_name_is_valid(argv[optind]))
                return cli_usage_error(
                        "invalid pool name '%s': use 1-%d of A-Z a-z 0-9 _ . - (not starting with . or -)",
                        argv[optind], POOL_NAME_MAX);
        return -1;
}

/* fill */
static struct {
        uint64_t count, memory, park_size, cpus;
        bool have_count, have_memory, have_park, have_cpus, have_boot;
        const char *image;
        usec_t boot_timeout;
        bool wait, no_refill;
} o;

enum {
        OPT_COUNT = CTL_OPT_LOCAL,
        OPT_MEMORY,
        OPT_PARK_SIZE,
        OPT_CPUS,
        OPT_IMAGE,
        OPT_BOOT,
        OPT_WAIT,
        OPT_NO_REFILL,
};

static int pool_option(int c, const char *arg) {
        int r;
        switch (c) {
        case OPT_COUNT:
                if (parse_u64(arg, &o.count) < 0 || o.count < 1 || o.count > POOL_COUNT_MAX)
                        return cli_usage_error("invalid --count '%s' (1-%d)", arg, POOL_COUNT_MAX);
                o.have_count = true;
                return -1;
        case OPT_MEMORY:
                if ((r = cli_parse_size("--memory", arg, &o.memory)) != 0)
                        return r;
                if (o.memory < (UINT64_C(64) << 20) || o.memory % (UINT64_C(1) << 20))
                        return cli_usage_error("--memory must be a whole number of MiB, at least 64M");
                o.have_memory = true;
                return -1;
        case OPT_PARK_SIZE:
                if ((r = cli_parse_size("--park-size", arg, &o.park_size)) != 0)
                        return r;
                if (o.park_size < (UINT64_C(1) << 20))
                        return cli_usage_error("--park-size must be at least 1M");
                o.have_park = true;
                return -1;
        case OPT_CPUS:
                if (parse_u64(arg, &o.cpus) < 0 || o.cpus < 1 || o.cpus > 64)
                        return cli_usage_error("invalid --cpus '%s' (1-64)", arg);
                o.have_cpus = true;
                return -1;
        case OPT_IMAGE:
                o.image = arg;
                return -1;
        case OPT_BOOT:
                if ((r = cli_parse_duration("--boot-timeout", arg, &o.boot_timeout)) != 0)
                        return r;
                if (o.boot_timeout == 0)
                        return cli_usage_error("--boot-timeout must be longer than 0");
                o.have_boot = true;
                return -1;
        case OPT_WAIT:
                o.wait = true;
                return -1;
        case OPT_NO_REFILL:
                o.no_refill = true;
                return -1;
        default:
                return ctl_api_common_option(c, arg, pool_usage);
        }
}

static int show_members(json_t *pool);
static json_t *status_json(json_t *pool);

static int pool_fill(int argc, char **argv) {
        static const struct option opts[] = {
                { "count", required_argument, NULL, OPT_COUNT },
                { "memory", required_argument, NULL, OPT_MEMORY },
                { "park-size", required_argument, NULL, OPT_PARK_SIZE },
                { "cpus", required_argument, NULL, OPT_CPUS },
                { "image", required_argument, NULL, OPT_IMAGE },
                { "boot-timeout", required_argument, NULL, OPT_BOOT },
                CTL_API_LONG_OPTIONS,
                {},
        };
        int r = parse_options(argc, argv, opts);
        if (r >= 0)
                return r;
        if ((r = need_name(argc, argv, 1, "NAME")) >= 0)
                return r;
        const char *name = argv[optind];
        if (o.park_size && o.have_memory && o.park_size > o.memory)
                return cli_usage_error("--park-size is larger than --memory");
        PoolPaths p;
        if (pool_paths(name, &p) != 0)
                return EXIT_FAIL;

        usec_t t0 = now_mono();
        size_t missing;
        {
                _cleanup_close_ int fd = pool_lock(&p, LOCK_EX);
                if (fd < 0)
                        return cli_error(EXIT_FAIL, "cannot lock %s: %s", p.lock, strerror(-fd));
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_load(&p, &e);
                if (!pool && e != -ENOENT)
                        return EXIT_FAIL;
                if (!pool) {
                        if (!o.have_count)
                                return cli_usage_error("pool %s does not exist yet: --count is required", name);
                        pool = json_pack("{s:s,s:i,s:[]}", "pool", name, "version", 1, "members");
                        json_object_set_new(pool, "created_us", json_integer((json_int_t) now_rt()));
                        if (!o.have_memory)
                                o.memory = UINT64_C(512) << 20, o.have_memory = true;
                }
                if (o.have_count)
                        json_object_set_new(pool, "count", json_integer((json_int_t) o.count));
                if (o.have_memory)
                        json_object_set_new(pool, "memory_bytes", json_integer((json_int_t) o.memory));
                if (o.have_park)
                        json_object_set_new(pool, "park_size_bytes", json_integer((json_int_t) o.park_size));
                if (o.have_cpus || !json_object_get(pool, "cpus"))
                        json_object_set_new(pool, "cpus", json_integer(o.have_cpus ? (json_int_t) o.cpus : 1));
                if (o.have_boot)
                        json_object_set_new(pool, "boot_timeout_us", json_integer((json_int_t) o.boot_timeout));
                if (o.image) {
                        char img[PATH_MAX];
                        if (!realpath(o.image, img))
                                return cli_error(EXIT_FAIL, "--image %s: %s", o.image, strerror(errno));
                        json_object_set_new(pool, "image", json_string(img));
                }
                uint64_t park = mu64(pool, "park_size_bytes");
                if (park && park > mu64(pool, "memory_bytes"))
                        return cli_usage_error("the park size is larger than the VMs' memory");
                size_t have = count_state(pool, "parked") + count_state(pool, "booting");
                size_t want = mu64(pool, "count");
                missing = have < want ? want - have : 0;
                if (pool_save(&p, pool) != 0)
                        return EXIT_FAIL;
        }

        /* One worker per missing VM, in parallel, each preparing one. */
        pid_t *pids = calloc(MAX(missing, (size_t) 1), sizeof *pids);
        if (!pids)
                return cli_error(EXIT_FAIL, "out of memory");
        size_t started = 0;
        int ret = EXIT_OK;
        fflush(NULL);
        for (size_t i = 0; i < missing; i++) {
                pid_t pid = fork();
                if (pid < 0) {
                        cli_error(EXIT_FAIL, "fork: %s", strerror(errno));
                        ret = EXIT_FAIL;
                        break;
                }
                if (pid == 0)
                        _exit(pool_worker(&p, name, 1) < 0 ? EXIT_FAIL : EXIT_OK);
                pids[started++] = pid;
        }
        for (size_t i = 0; i < started; i++) {
                int st;
                while (waitpid(pids[i], &st, 0) < 0 && errno == EINTR)
                        ;
                if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
                        ret = EXIT_FAIL;
        }
        free(pids);

        int e;
        _cleanup_(json_decrefp) json_t *pool = NULL;
        {
                _cleanup_close_ int fd = pool_lock(&p, LOCK_SH);
                pool = fd >= 0 ? pool_load(&p, &e) : NULL;
        }
        if (!pool)
                return cli_error(EXIT_FAIL, "pool %s is gone (drained meanwhile?)", name);
        size_t parked = count_state(pool, "parked");
        if (parked < mu64(pool, "count") && ret == EXIT_OK && count_state(pool, "booting") == 0)
                ret = EXIT_FAIL;
        json_t *s = status_json(pool);
        json_object_set_new(s, "seconds", json_real((double) (now_mono() - t0) / 1e6));
        if (arg_json)
                cli_print_json(s);
        else {
                char m[FORMAT_SIZE_MAX];
                printf("pool %s: %zu of %" PRIu64 " VMs parked (%zu started now) in %.1f s; %s each\n", name, parked,
                       mu64(pool, "count"), missing, (double) (now_mono() - t0) / 1e6,
                       format_size(m, sizeof m, mu64(pool, "memory_bytes")));
                show_members(s);
                json_decref(s);
        }
        return ret;
}

static int pool_acquire(int argc, char **argv) {
        static const struct option opts[] = {
                { "wait", no_argument, NULL, OPT_WAIT },
                CTL_API_LONG_OPTIONS,
                {},
        };
        int r = parse_options(argc, argv, opts);
        if (r >= 0)
                return r;
        if ((r = need_name(argc, argv, 1, "NAME")) >= 0)
                return r;
        const char *name = argv[optind];
        PoolPaths p;
        if (pool_paths(name, &p) != 0)
                return EXIT_FAIL;

        usec_t t0 = now_mono();
        char vm[64];
        {
                _cleanup_close_ int fd = pool_lock(&p, LOCK_EX);
                if (fd < 0)
                        return cli_error(EXIT_FAIL, "cannot lock %s: %s", p.lock, strerror(-fd));
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_load(&p, &e);
                if (!pool)
                        return e == -ENOENT ? cli_error(EXIT_FAIL,
                                                        "no pool named '%s' (create it with 'ballastctl "
                                                        "pool fill %s --count N')",
                                                        name, name)
                                            : EXIT_FAIL;
                /* The VM parked longest first. */
                json_t *pick = NULL, *m;
                size_t i;
                json_array_foreach(json_object_get(pool, "members"), i, m) {
                        if (state_is(m, "parked") && (!pick || mu64(m, "since_us") < mu64(pick, "since_us")))
                                pick = m;
                }
                if (!pick) {
                        size_t booting = count_state(pool, "booting");
                        const char *le = mstr(pool, "last_error");
                        pool_unlock(&fd);
                        /* A pool that lost members to failures gets a worker again. */
                        if (booting == 0 && mu64(pool, "count") > 0)
                                spawn_background_worker(&p, name);
                        return cli_error(EXIT_FAIL, "pool %s: no parked VM available (%zu booting, %zu in use)%s%s",
                                         name, booting, count_state(pool, "in_use"), le[0] ? "; last error: " : "", le);
                }
                strscpy(vm, sizeof vm, mstr(pick, "vm"));
                set_state(pick, "in_use");
                if (pool_save(&p, pool) != 0)
                        return EXIT_FAIL;
        }

        char path[128], err[512];
        snprintf(path, sizeof path, "/v1/vms/%s/unpark", vm);
        json_t *body = o.wait ? json_pack("{s:b}", "wait", true) : NULL;
        int status = 0;
        _cleanup_(json_decrefp) json_t *ans = NULL;
        usec_t t1 = now_mono();
        r = api_call("POST", path, body, o.wait ? POOL_PARK_TIMEOUT + 15 * USEC_PER_SEC : arg_api_timeout, &status,
                     &ans, err, sizeof err);
        double unpark_ms = ms_since(t1);
        const char *res = json_string_value(json_object_get(ans, "result"));
        bool ok = r >= 0 && status == 200 && res && strcmp(res, "error") != 0;
        if (!ok && r >= 0 && status == 200)
                snprintf(err, sizeof err, "unpark answered %s: %s", res ?: "nothing",
                         json_string_value(json_object_get(ans, "message")) ?: "");
        double total_ms = ms_since(t0);
        if (!ok && r < 0) {
                /* No answer (ballastd down or restarting): the VM is still parked; put it back. */
                _cleanup_close_ int fd = pool_lock(&p, LOCK_EX);
                int e;
                _cleanup_(json_decrefp) json_t *pool = fd >= 0 ? pool_load(&p, &e) : NULL;
                json_t *m = pool ? find_member(pool, vm, NULL) : NULL;
                if (m && state_is(m, "in_use")) {
                        set_state(m, "parked");
                        pool_save(&p, pool);
                }
                return cli_error(EXIT_FAIL, "pool %s: cannot unpark VM %s: %s", name, vm, err);
        }
        if (!ok) {
                /* Refused or failed: not handed out; the VM is taken out of the pool and replaced. */
                _cleanup_close_ int fd = pool_lock(&p, LOCK_EX);
                int e;
                _cleanup_(json_decrefp) json_t *pool = fd >= 0 ? pool_load(&p, &e) : NULL;
                json_t *m = pool ? find_member(pool, vm, NULL) : NULL;
                if (m) {
                        set_state(m, "stopping");
                        set_worker(m, getpid());
                        json_object_set_new(m, "error", json_string(err));
                        json_object_set_new(pool, "last_error", json_string(err));
                        pool_save(&p, pool);
                }
                pool_unlock(&fd);
                cli_error(EXIT_FAIL, "pool %s: cannot unpark VM %s: %s", name, vm, err);
                json_t *names = json_pack("[s]", vm);
                cleanup_members(&p, name, names, true);
                json_decref(names);
                spawn_background_worker(&p, name);
                return EXIT_FAIL;
        }
        json_t *dms = json_object_get(ans, "elapsed_ms");
        if (arg_json) {
                json_t *j = json_pack(
                        "{s:s,s:s,s:f,s:f,s:o,s:s,s:o,s:o}", "vm", vm, "pool", name, "unpark_ms", unpark_ms, "total_ms",
                        total_ms, "daemon_ms", json_is_number(dms) ? json_real(json_number_value(dms)) : json_null(),
                        "result", res, "target_bytes", json_incref(json_object_get(ans, "target_bytes")) ?: json_null(),
                        "reached_bytes", json_incref(json_object_get(ans, "reached_bytes")) ?: json_null());
                ctl_api_print_json(j);
                json_decref(j);
        } else {
                char t[FORMAT_SIZE_MAX];
                printf("%s: acquired from pool %s, unparked to %s (%s) in %.1f ms (ballastd %.1f ms), %.1f ms in all\n",
                       vm, name, cli_json_size(t, sizeof t, json_object_get(ans, "target_bytes")), res, unpark_ms,
                       json_is_number(dms) ? json_number_value(dms) : 0.0, total_ms);
        }
        spawn_background_worker(&p, name);
        return EXIT_OK;
}

static int pool_release(int argc, char **argv) {
        static const struct option opts[] = {
                { "no-refill", no_argument, NULL, OPT_NO_REFILL },
                CTL_API_LONG_OPTIONS,
                {},
        };
        int r = parse_options(argc, argv, opts);
        if (r >= 0)
                return r;
        if ((r = need_name(argc, argv, 2, "NAME VM")) >= 0)
                return r;
        const char *name = argv[optind], *vm = argv[optind + 1];
        PoolPaths p;
        if (pool_paths(name, &p) != 0)
                return EXIT_FAIL;
        {
                _cleanup_close_ int fd = pool_lock(&p, LOCK_EX);
                if (fd < 0)
                        return cli_error(EXIT_FAIL, "cannot lock %s: %s", p.lock, strerror(-fd));
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_load(&p, &e);
                if (!pool)
                        return e == -ENOENT ? cli_error(EXIT_FAIL, "no pool named '%s'", name) : EXIT_FAIL;
                json_t *m = find_member(pool, vm, NULL);
                if (!m)
                        return cli_error(EXIT_FAIL, "pool %s has no VM named '%s'", name, vm);
                if ((state_is(m, "booting") || state_is(m, "stopping")) && worker_alive(m))
                        return cli_error(EXIT_FAIL, "pool %s: VM %s is %s; try again later", name, vm,
                                         mstr(m, "state"));
                set_state(m, "stopping");
                set_worker(m, getpid());
                if (pool_save(&p, pool) != 0)
                        return EXIT_FAIL;
        }
        usec_t t0 = now_mono();
        json_t *names = json_pack("[s]", vm);
        r = cleanup_members(&p, name, names, false);
        json_decref(names);
        if (!o.no_refill)
                spawn_background_worker(&p, name);
        if (r < 0)
                return EXIT_FAIL;
        if (arg_json)
                cli_print_json(json_pack("{s:s,s:s,s:f,s:b}", "vm", vm, "pool", name, "seconds",
                                         (double) (now_mono() - t0) / 1e6, "refill", !o.no_refill));
        else
                printf("%s: released from pool %s (unregistered and stopped in %.2f s)%s\n", vm, name,
                       (double) (now_mono() - t0) / 1e6, o.no_refill ? "" : "; a replacement is booting");
        return EXIT_OK;
}

/* The members with what ballastd says about each (one GET /v1/vms). */
static json_t *status_json(json_t *pool) {
        json_t *out = json_deep_copy(pool);
        char err[512];
        int status = 0;
        json_t *vms = NULL, *byid = json_object();
        int r = api_call("GET", "/v1/vms", NULL, arg_api_timeout, &status, &vms, err, sizeof err);
        json_t *v;
        size_t i;
        if (r >= 0 && status == 200)
                json_array_foreach(json_object_get(vms, "vms"), i, v) {
                        json_object_set(byid, mstr(v, "id"), v);
                }
        json_object_set_new(out, "daemon_error", r >= 0 && status == 200 ? json_null() : json_string(err));
        json_decref(vms);
        uint64_t now = now_rt();
        json_array_foreach(json_object_get(out, "members"), i, v) {
                json_t *d = json_object_get(byid, mstr(v, "vm"));
                json_t *dv = json_null();
                if (d)
                        dv = json_pack("{s:O,s:O,s:O,s:O,s:O}", "status", json_object_get(d, "status") ?: json_null(),
                                       "parked", json_object_get(d, "parked") ?: json_null(), "target_bytes",
                                       json_object_get(d, "target_bytes") ?: json_null(), "actual_bytes",
                                       json_object_get(d, "actual_bytes") ?: json_null(), "host_rss_bytes",
                                       json_object_get(d, "host_rss_bytes") ?: json_null());
                json_object_set_new(v, "daemon", dv);
                json_object_set_new(v, "age_s", json_real((double) (now - MIN(now, mu64(v, "since_us"))) / 1e6));
                if (state_is(v, "booting") || state_is(v, "stopping"))
                        json_object_set_new(v, "worker_alive", json_boolean(worker_alive(v)));
        }
        json_decref(byid);
        static const char *const states[] = { "parked", "booting", "in_use", "stopping" };
        for (size_t k = 0; k < ELEMENTSOF(states); k++)
                json_object_set_new(out, states[k], json_integer((json_int_t) count_state(pool, states[k])));
        return out;
}

static int show_members(json_t *pool) {
        json_t *members = json_object_get(pool, "members"), *m;
        size_t i;
        if (json_array_size(members) == 0) {
                printf("no VMs\n");
                return EXIT_OK;
        }
        _cleanup_(cli_table_freep) CliTable *t =
                cli_table_new(8, 0x78, "VM", "STATE", "FOR", "DAEMON", "TARGET", "ACTUAL", "BOOT", "NOTE");
        if (!t)
                return cli_error(EXIT_FAIL, "out of memory");
        uint64_t now = now_rt();
        json_array_foreach(members, i, m) {
                json_t *d = json_object_get(m, "daemon");
                char age[32], tg[FORMAT_SIZE_MAX], ac[FORMAT_SIZE_MAX], boot[32] = "-", note[600] = "";
                cli_format_seconds(age, sizeof age, (double) (now - MIN(now, mu64(m, "since_us"))) / 1e6);
                json_t *bm = json_object_get(m, "boot_ms");
                if (json_is_number(bm))
                        snprintf(boot, sizeof boot, "%.1fs", json_number_value(bm) / 1000.0);
                if (json_is_false(json_object_get(m, "worker_alive")))
                        snprintf(note, sizeof note, "worker gone");
                else if (state_is(m, "parked") && json_is_string(json_object_get(m, "park_result")))
                        snprintf(note, sizeof note, "park %s", mstr(m, "park_result"));
                if (mstr(m, "error")[0])
                        snprintf(note, sizeof note, "%s", mstr(m, "error"));
                if (cli_table_add(t, mstr(m, "vm"), mstr(m, "state"), age,
                                  json_is_object(d) ? cli_json_str(json_object_get(d, "status")) : "-",
                                  cli_json_size_compact(tg, sizeof tg, json_object_get(d, "target_bytes")),
                                  cli_json_size_compact(ac, sizeof ac, json_object_get(d, "actual_bytes")), boot,
                                  note[0] ? note : "-") < 0)
                        return cli_error(EXIT_FAIL, "out of memory");
        }
        cli_table_print(t, stdout);
        return EXIT_OK;
}

static int pool_status(int argc, char **argv) {
        static const struct option opts[] = {
                CTL_API_LONG_OPTIONS,
                {},
        };
        int r = parse_options(argc, argv, opts);
        if (r >= 0)
                return r;
        if ((r = need_name(argc, argv, 1, "NAME")) >= 0)
                return r;
        const char *name = argv[optind];
        PoolPaths p;
        if (pool_paths(name, &p) != 0)
                return EXIT_FAIL;
        if (access(p.state, F_OK) < 0)
                return cli_error(EXIT_FAIL, "no pool named '%s' (in %s)", name, p.root);
        _cleanup_(json_decrefp) json_t *pool = NULL;
        int e = 0;
        {
                _cleanup_close_ int fd = pool_lock(&p, LOCK_SH);
                if (fd < 0)
                        return cli_error(EXIT_FAIL, "cannot lock %s: %s", p.lock, strerror(-fd));
                pool = pool_load(&p, &e);
        }
        if (!pool)
                return e == -ENOENT ? cli_error(EXIT_FAIL, "no pool named '%s'", name) : EXIT_FAIL;
        json_t *s = status_json(pool);
        if (arg_json) {
                cli_print_json(s);
                return EXIT_OK;
        }
        char m[FORMAT_SIZE_MAX], pk[FORMAT_SIZE_MAX];
        uint64_t park = mu64(s, "park_size_bytes");
        printf("pool %s: %" PRIu64 " wanted parked, %s each, parked at %s\n", name, mu64(s, "count"),
               format_size(m, sizeof m, mu64(s, "memory_bytes")),
               park ? format_size(pk, sizeof pk, park) : "ballastd's park size");
        printf("%" PRIu64 " parked, %" PRIu64 " booting, %" PRIu64 " in use, %" PRIu64 " stopping", mu64(s, "parked"),
               mu64(s, "booting"), mu64(s, "in_use"), mu64(s, "stopping"));
        if (mu64(s, "failures"))
                printf("; %" PRIu64 " failed, last: %s", mu64(s, "failures"), mstr(s, "last_error"));
        putchar('\n');
        if (json_is_string(json_object_get(s, "daemon_error")))
                printf("(%s)\n", mstr(s, "daemon_error"));
        r = show_members(s);
        json_decref(s);
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

static int pool_drain(int argc, char **argv) {
        static const struct option opts[] = {
                CTL_API_LONG_OPTIONS,
                {},
        };
        int r = parse_options(argc, argv, opts);
        if (r >= 0)
                return r;
        if ((r = need_name(argc, argv, 1, "NAME")) >= 0)
                return r;
        const char *name = argv[optind];
        PoolPaths p;
        if (pool_paths(name, &p) != 0)
                return EXIT_FAIL;
        usec_t t0 = now_mono();
        _cleanup_(json_decrefp) json_t *members = NULL;
        {
                _cleanup_close_ int fd = pool_lock(&p, LOCK_EX);
                if (fd < 0)
                        return cli_error(EXIT_FAIL, "cannot lock %s: %s", p.lock, strerror(-fd));
                int e;
                _cleanup_(json_decrefp) json_t *pool = pool_load(&p, &e);
                if (!pool && e != -ENOENT)
                        return EXIT_FAIL;
                if (!pool) {
                        /* Nothing recorded; VMs of that name may still be about (an old crash). */
                        pool = json_pack("{s:s,s:[]}", "pool", name, "members");
                } else {
                        /* From now on no worker claims anything. */
                        json_object_set_new(pool, "count", json_integer(0));
                        if (pool_save(&p, pool) != 0)
                                return EXIT_FAIL;
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
                json_array_append_new(names, json_string(mstr(m, "vm")));
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
                        if (!known && is_pool_vm_name(name, list[k].name))
                                json_array_append_new(names, json_string(list[k].name));
                }
        free(list);
        int ret = EXIT_OK;
        json_t *v;
        json_array_foreach(names, i, v) {
                if (member_destroy(name, json_string_value(v), false) < 0)
                        ret = EXIT_FAIL;
        }
        {
                _cleanup_close_ int fd = pool_lock(&p, LOCK_EX);
                if (fd >= 0) {
                        if (ret == EXIT_OK) {
                                unlink(p.state);
                                unlink(p.log);
                                unlink(p.lock);
                        } else {
                                int e;
                                json_t *pool = pool_load(&p, &e);
                                if (pool) {
                                        json_object_set_new(pool, "last_error",
                                                            json_string("drain could not stop every VM"));
                                        pool_save(&p, pool);
                                        json_decref(pool);
                                }
                        }
                }
        }
        if (arg_json)
                cli_print_json(json_pack("{s:s,s:O,s:f,s:b}", "pool", name, "stopped", names, "seconds",
                                         (double) (now_mono() - t0) / 1e6, "ok", ret == EXIT_OK));
        else
                printf("pool %s drained: %zu VMs stopped in %.2f s\n", name, json_array_size(names),
                       (double) (now_mono() - t0) / 1e6);
        json_decref(names);
        return ret;
}

int cmd_pool(int argc, char **argv) {
        if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
                fputs(pool_usage, argc < 2 ? stderr : stdout);
                return argc < 2 ? EXIT_USAGE : EXIT_OK;
        }
        const char *verb = argv[1];
        argc--;
        argv++;
        optind = 1;
        static char prog[64];
        snprintf(prog, sizeof prog, "ballastctl pool %.40s", verb);
        ctl_api_command(argv, prog);
        if (strcmp(verb, "fill") == 0)
                return pool_fill(argc, argv);
        if (strcmp(verb, "acquire") == 0)
                return pool_acquire(argc, argv);
        if (strcmp(verb, "release") == 0)
                return pool_release(argc, argv);
        if (strcmp(verb, "status") == 0)
                return pool_status(argc, argv);
        if (strcmp(verb, "drain") == 0)
                return pool_drain(argc, argv);
        cli_command = "pool";
        return cli_usage_error("unknown pool command '%s' (fill, acquire, release, status, drain)", verb);
}
