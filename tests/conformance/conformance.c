/* SPDX-License-Identifier: MIT */
/* The driver conformance suite (B1): one set of cases, written once against the driver interface
 * (src/hv/hv.h: HvOps and set-and-wait), that every hypervisor driver must pass. What differs per
 * driver is a small adapter table: how to construct the driver, how to start its test peer in a
 * given scenario (normal, slow, floor, no balloon, hang, garbage, close-mid-reply, oversized), the
 * capabilities it must report and the peer's own words for the errors it must pass on.
 *
 *   conformance --driver qemu|firecracker|cloud-hypervisor [--peer-dir DIR] [--case NAME]...
 *       the whole suite against the driver's protocol-faithful peer (DIR/qmp-peer, fc-peer,
 *       chv-peer; default: the directory above this program's)
 *   conformance --driver qemu --real-socket PATH --ram BYTES [--expected-uid N]
 *               [--expect-deflate-on-oom BOOL] [--expect-free-page-reporting BOOL]
 *       the cases that need no fault injection, against a real hypervisor socket; the others are
 *       reported as skipped ("needs a fault-injecting peer: covered by --driver qemu"), never as
 *       passed. The VM is put back at full size after every case.
 *   conformance --driver libvirt --uri URI --domain NAME --ram BYTES     (when built with libvirt)
 *   conformance --list
 *
 * Output is TAP (meson's protocol 'tap'): "ok N - case", "not ok N - case" followed by "#" lines
 * saying what was expected and what came, "ok N - case # SKIP reason". Every case asserts values,
 * errnos, the peer's own words and timing bounds that a broken driver fails. Exit status: 0 when
 * no case failed, 1 otherwise, 2 on a usage error. No sleep synchronises anything: peers are
 * waited for until they listen, results until their callback ran, each under a generous limit. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "hv/chv.h"
#include "hv/firecracker.h"
#include "hv/hv.h"
#include "hv/qmp.h"
#ifdef CONFORMANCE_LIBVIRT
#include "hv/libvirt.h"
#endif
#include "shared/ev.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

#define SEC           USEC_PER_SEC
#define MS            USEC_PER_MSEC

/* The peers' guest. */
#define PEER_RAM      GiB
#define FAST_MIB_S    1000        /* a guest that keeps up */
#define SLOW_MIB_S    50          /* a guest too slow for a short deadline */
#define PEER_FLOOR    (768 * MiB) /* the guest cannot give up memory below this (its working set) */
#define TOLERANCE     (16 * MiB)  /* set-and-wait's default (B1.6) */
#define WRONG_UID     ((uid_t) 4242)

/* Bounds every case asserts. */
#define FAST_FAIL     (2 * SEC) /* "well under the deadline": a closed, refused or garbled socket */
#define LATE_SLACK    (2 * SEC) /* a deadline may be missed by at most this */
#define HUNG_DEADLINE (1 * SEC)

/* --- scenarios and adapters --- */

typedef enum Scenario {
        SC_NORMAL,          /* a guest at full size that moves fast */
        SC_SLOW,            /* a guest that moves slowly */
        SC_FLOOR,           /* a guest that cannot go below PEER_FLOOR */
        SC_NO_BALLOON,      /* a VM without a balloon device */
        SC_HANG,            /* accepts and never answers */
        SC_GARBAGE,         /* answers with bytes that are not the protocol */
        SC_CLOSE_MID_REPLY, /* writes half an answer and closes */
        SC_OVERSIZED,       /* an answer far above any sane size */
        _SC_MAX,
} Scenario;

typedef struct Argv {
        char *v[40];
        size_t n;
} Argv;

static void argv_add(Argv *a, const char *fmt, ...) _printf_(2, 3);
static void argv_add(Argv *a, const char *fmt, ...) {
        va_list ap;
        char *s = NULL;
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0 || a->n + 1 >= ELEMENTSOF(a->v))
                abort();
        va_end(ap);
        a->v[a->n++] = s;
        a->v[a->n] = NULL;
}

static void argv_done(Argv *a) {
        for (size_t i = 0; i < a->n; i++)
                free(a->v[i]);
        a->n = 0;
}

/* Where the driver finds its VM. */
typedef struct Target {
        const char *path; /* socket drivers */
        uid_t uid;
        const char *uri, *domain; /* libvirt */
} Target;

typedef struct Adapter {
        const char *driver;   /* --driver */
        const char *ops_name; /* Hv.ops->name */
        const char *peer;     /* its test peer in --peer-dir; NULL: none */
        bool socket;          /* a hypervisor socket of its own (B1.2 applies) */
        bool peer_ready_fd;   /* the peer takes --ready-fd */
        int (*new_hv)(Ev *ev, const Target *t, Hv **ret);
        void (*peer_argv)(Scenario sc, const char *path, Argv *a);
        const char *version_prefix;
        bool stats; /* guest statistics: caps.stats and a working get_stats */
        bool peer_deflate_on_oom, peer_free_page_reporting;
        /* The peer's own words when the VM has no balloon device (in set_target's error and in a
         * set-and-wait's), and the driver's words for an oversized answer. */
        const char *no_balloon_words;
        const char *oversized_words;
} Adapter;

static int qemu_new(Ev *ev, const Target *t, Hv **ret) {
        return qmp_hv_new(ev, &(QmpConfig){ .socket_path = t->path, .expected_uid = t->uid }, ret);
}

static void qemu_argv(Scenario sc, const char *path, Argv *a) {
        static const char *const modes[_SC_MAX] = {
                [SC_NORMAL] = "normal",
                [SC_SLOW] = "normal",
                [SC_FLOOR] = "normal",
                [SC_NO_BALLOON] = "normal",
                [SC_HANG] = "hang",
                [SC_GARBAGE] = "garbage",
                [SC_CLOSE_MID_REPLY] = "close-mid-reply",
                [SC_OVERSIZED] = "flood",
        };
        argv_add(a, "--socket");
        argv_add(a, "%s", path);
        argv_add(a, "--mode");
        argv_add(a, "%s", modes[sc]);
        argv_add(a, "--ram");
        argv_add(a, "%" PRIu64, PEER_RAM);
        argv_add(a, "--rate-mib-s");
        argv_add(a, "%d", sc == SC_SLOW ? SLOW_MIB_S : FAST_MIB_S);
        if (sc == SC_FLOOR) {
                argv_add(a, "--floor");
                argv_add(a, "%" PRIu64, PEER_FLOOR);
        }
        if (sc == SC_NO_BALLOON)
                argv_add(a, "--no-balloon");
}

/* Fault flags of fc-peer and chv-peer (the same micro-http layer). */
static void http_fault(Scenario sc, Argv *a) {
        switch (sc) {
        case SC_HANG:
                argv_add(a, "--hang");
                break;
        case SC_GARBAGE:
                argv_add(a, "--garbage");
                break;
        case SC_CLOSE_MID_REPLY:
                argv_add(a, "--close-mid-reply");
                break;
        case SC_OVERSIZED:
                argv_add(a, "--oversized");
                break;
        default:
                break;
        }
}

static int fc_new(Ev *ev, const Target *t, Hv **ret) {
        return fc_hv_new(ev, &(FcConfig){ .socket_path = t->path, .expected_uid = t->uid }, ret);
}

static void fc_argv(Scenario sc, const char *path, Argv *a) {
        argv_add(a, "%s", path);
        argv_add(a, "--mem-mib");
        argv_add(a, "%" PRIu64, PEER_RAM / MiB);
        argv_add(a, "--deflate-on-oom");
        argv_add(a, "--stats-interval");
        argv_add(a, "1");
        argv_add(a, "--pace-mib-per-s");
        argv_add(a, "%d", sc == SC_SLOW ? SLOW_MIB_S : FAST_MIB_S);
        if (sc == SC_FLOOR) {
                argv_add(a, "--floor-mib");
                argv_add(a, "%" PRIu64, PEER_FLOOR / MiB);
        }
        if (sc == SC_NO_BALLOON)
                argv_add(a, "--no-balloon");
        http_fault(sc, a);
}

static int chv_new(Ev *ev, const Target *t, Hv **ret) {
        return chv_hv_new(ev, &(ChvConfig){ .socket_path = t->path, .expected_uid = t->uid }, ret);
}

static void chv_argv(Scenario sc, const char *path, Argv *a) {
        argv_add(a, "%s", path);
        argv_add(a, "--mem");
        argv_add(a, "%" PRIu64, PEER_RAM);
        argv_add(a, "--deflate-on-oom");
        argv_add(a, "--free-page-reporting");
        argv_add(a, "--pace-mib-per-s");
        argv_add(a, "%d", sc == SC_SLOW ? SLOW_MIB_S : FAST_MIB_S);
        if (sc == SC_FLOOR) {
                argv_add(a, "--floor");
                argv_add(a, "%" PRIu64, PEER_FLOOR);
        }
        if (sc == SC_NO_BALLOON)
                argv_add(a, "--no-balloon");
        http_fault(sc, a);
}

#ifdef CONFORMANCE_LIBVIRT
static int libvirt_new(Ev *ev, const Target *t, Hv **ret) {
        return libvirt_hv_new(ev, &(LibvirtConfig){ .uri = t->uri, .domain = t->domain }, ret);
}
#endif

static const Adapter adapters[] = {
        {
                .driver = "qemu",
                .ops_name = "qemu",
                .peer = "qmp-peer",
                .socket = true,
                .new_hv = qemu_new,
                .peer_argv = qemu_argv,
                .version_prefix = "QEMU ",
                .stats = true, /* the balloon device's guest-stats QOM property */
                .peer_deflate_on_oom = false,
                .peer_free_page_reporting = false,
                .no_balloon_words = "No balloon device has been activated",
                .oversized_words = NULL, /* the QMP stream has no size in advance: errno and bounds only */
        },
        {
                .driver = "firecracker",
                .ops_name = "firecracker",
                .peer = "fc-peer",
                .socket = true,
                .peer_ready_fd = true,
                .new_hv = fc_new,
                .peer_argv = fc_argv,
                .version_prefix = "Firecracker ",
                .stats = true, /* stats_polling_interval_s > 0 at boot */
                .peer_deflate_on_oom = true,
                .peer_free_page_reporting = false,
                .no_balloon_words = "Failed perform action on device: Device not found",
                .oversized_words = "response too large",
        },
        {
                .driver = "cloud-hypervisor",
                .ops_name = "cloud-hypervisor",
                .peer = "chv-peer",
                .socket = true,
                .peer_ready_fd = true,
                .new_hv = chv_new,
                .peer_argv = chv_argv,
                .version_prefix = "Cloud Hypervisor ",
                .stats = false, /* no statistics virtqueue (docs/drivers.md) */
                .peer_deflate_on_oom = true,
                .peer_free_page_reporting = true,
                .no_balloon_words = "Missing virtio-balloon, can't proceed as expected",
                .oversized_words = "response too large",
        },
#ifdef CONFORMANCE_LIBVIRT
        {
                .driver = "libvirt",
                .ops_name = "libvirt",
                .peer = NULL, /* a real libvirtd only */
                .socket = false,
                .new_hv = libvirt_new,
                .version_prefix = "",
                .stats = true,
        },
#endif
};

/* --- the harness --- */

#define MAX_PEERS 4
#define MAX_HVS   6
#define MAX_WAITS 4

typedef struct Ctx {
        const Adapter *ad;
        bool real;
        const char *peer_dir;
        uint64_t ram;
        uid_t uid;                  /* the uid drivers expect (B1.2); UID_ANY: not compared */
        uid_t owner;                /* the uid that really owns the socket, when known; UID_ANY otherwise */
        Target real_t;              /* --real-socket / --uri --domain */
        int expect_doo, expect_fpr; /* -1: not asserted */

        char dir[64];
        char path[sizeof(((struct sockaddr_un *) 0)->sun_path)];  /* the case's socket */
        char other[sizeof(((struct sockaddr_un *) 0)->sun_path)]; /* a second one */

        /* Per case. */
        Ev *ev;
        struct {
                pid_t pid;
                char path[sizeof(((struct sockaddr_un *) 0)->sun_path)];
        } peers[MAX_PEERS];
        size_t n_peers;
        Hv *hvs[MAX_HVS];
        size_t n_hvs;
        HvWait *waits[MAX_WAITS];
        size_t n_waits;
        jmp_buf jb;
        char fail[2048];
        char diag[4096];
        size_t diag_len;
} Ctx;

/* Interface rules every callback is held to: asynchronous (never inside the submitting call) and
 * exactly once. Violations are noted here and fail the case. */
static bool in_call;
static char violation[512];

static void violated(const char *fmt, ...) _printf_(1, 2);
static void violated(const char *fmt, ...) {
        if (violation[0])
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(violation, sizeof(violation), fmt, ap);
        va_end(ap);
}

__attribute__((noreturn)) static void fail_at(Ctx *c, int line, const char *fmt, ...) _printf_(3, 4);
__attribute__((noreturn)) static void fail_at(Ctx *c, int line, const char *fmt, ...) {
        va_list ap;
        int n = snprintf(c->fail, sizeof(c->fail), "conformance.c:%d: ", line);
        va_start(ap, fmt);
        vsnprintf(c->fail + n, sizeof(c->fail) - (size_t) n, fmt, ap);
        va_end(ap);
        longjmp(c->jb, 1);
}

#define CHECK(c, cond, ...)                                                                                            \
        do {                                                                                                           \
                if (!(cond))                                                                                           \
                        fail_at((c), __LINE__, __VA_ARGS__);                                                           \
        } while (0)

static void note(Ctx *c, const char *fmt, ...) _printf_(2, 3);
static void note(Ctx *c, const char *fmt, ...) {
        va_list ap;
        if (c->diag_len + 4 >= sizeof(c->diag))
                return;
        va_start(ap, fmt);
        int n = vsnprintf(c->diag + c->diag_len, sizeof(c->diag) - c->diag_len - 1, fmt, ap);
        va_end(ap);
        if (n < 0)
                return;
        c->diag_len = MIN(c->diag_len + (size_t) n, sizeof(c->diag) - 2);
        c->diag[c->diag_len++] = '\n';
        c->diag[c->diag_len] = '\0';
}

static const char *sz(char buf[static FORMAT_SIZE_MAX], uint64_t b) {
        return format_size(buf, FORMAT_SIZE_MAX, b);
}

static double secs(usec_t d) {
        return (double) d / (double) SEC;
}

static const char *errname(int e) {
        static char buf[8][48];
        static unsigned k;
        char *b = buf[k++ % 8];
        switch (e) {
        case 0:
                return "0";
#define E(x)                                                                                                           \
        case -x:                                                                                                       \
                return "-" #x;
                E(EINVAL)
                E(ERANGE)
                E(ENOENT)
                E(ECONNREFUSED)
                E(ECONNRESET)
                E(EPIPE)
                E(ETIMEDOUT)
                E(EPERM)
                E(EACCES)
                E(EBADMSG)
                E(EMSGSIZE)
                E(EPROTO)
                E(EPROTONOSUPPORT)
                E(ENODEV)
                E(EOPNOTSUPP)
                E(EREMOTEIO)
                E(EIO)
                E(EAGAIN)
#undef E
        default:
                snprintf(b, sizeof(buf[0]), "%d (%s)", e, strerror(-e));
                return b;
        }
}

static uint64_t absdiff(uint64_t a, uint64_t b) {
        return a > b ? a - b : b - a;
}

/* --- peers --- */

/* True once path is a listening Unix socket (/proc/net/unix: flag __SO_ACCEPTCON). Looking does
 * not touch the peer (connecting would take QMP's one client slot). */
static bool listening(const char *path) {
        FILE *f = fopen("/proc/net/unix", "re");
        if (!f)
                return false;
        char line[512];
        bool found = false;
        size_t pl = strlen(path);
        while (!found && fgets(line, sizeof(line), f)) {
                size_t l = strcspn(line, "\n");
                line[l] = '\0';
                unsigned long flags = 0;
                if (l <= pl || strcmp(line + l - pl, path) != 0 || line[l - pl - 1] != ' ')
                        continue;
                if (sscanf(line, "%*s %*s %*s %lx", &flags) == 1 && (flags & 0x10000))
                        found = true;
        }
        fclose(f);
        return found;
}

static pid_t spawn_peer_at(Ctx *c, Scenario sc, const char *path) {
        CHECK(c, c->n_peers < MAX_PEERS, "too many peers in one case");
        CHECK(c, !c->real, "a case that needs a peer ran against a real hypervisor");
        Argv a = { 0 };
        argv_add(&a, "%s/%s", c->peer_dir, c->ad->peer);
        c->ad->peer_argv(sc, path, &a);
        int ready[2] = { -1, -1 };
        if (c->ad->peer_ready_fd) {
                CHECK(c, pipe2(ready, O_CLOEXEC) == 0, "pipe2: %m");
                argv_add(&a, "--ready-fd");
                argv_add(&a, "3");
        }
        (void) unlink(path);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);   /* never outlive a crashed suite */
                (void) dup2(STDERR_FILENO, STDOUT_FILENO); /* stdout is the TAP stream */
                if (ready[1] >= 0) {
                        if (ready[1] == 3)
                                (void) fcntl(3, F_SETFD, 0);
                        else if (dup2(ready[1], 3) < 0)
                                _exit(126);
                }
                execv(a.v[0], a.v);
                fprintf(stderr, "conformance: cannot run %s: %m\n", a.v[0]);
                _exit(127);
        }
        int saved = errno;
        char cmd[1024] = "";
        for (size_t i = 0, o = 0; i < a.n && o < sizeof(cmd); i++)
                o += (size_t) snprintf(cmd + o, sizeof(cmd) - o, "%s%s", i ? " " : "", a.v[i]);
        argv_done(&a);
        safe_close(ready[1]);
        errno = saved;
        CHECK(c, pid > 0, "fork: %m");
        c->peers[c->n_peers].pid = pid;
        snprintf(c->peers[c->n_peers].path, sizeof(c->peers[0].path), "%s", path);
        c->n_peers++;

        /* Until it listens (or dies), under a generous limit: the machine may be loaded. */
        usec_t limit = now_mono() + 30 * SEC;
        bool up = false;
        while (!up) {
                int st;
                if (waitpid(pid, &st, WNOHANG) == pid) {
                        c->peers[--c->n_peers].pid = 0;
                        safe_close(ready[0]);
                        fail_at(c, __LINE__, "peer exited before listening (status 0x%x): %s", (unsigned) st, cmd);
                }
                if (ready[0] >= 0) {
                        struct pollfd p = { .fd = ready[0], .events = POLLIN };
                        if (poll(&p, 1, 50) == 1) {
                                char b = 0;
                                up = read(ready[0], &b, 1) == 1 && b == 'R';
                                if (!up) { /* closed without the byte: it failed; waitpid says how */
                                        safe_close(ready[0]);
                                        ready[0] = -1;
                                }
                        }
                } else {
                        up = listening(path);
                        if (!up)
                                (void) poll(NULL, 0, 10);
                }
                if (!up && now_mono() > limit) {
                        safe_close(ready[0]);
                        fail_at(c, __LINE__, "peer did not listen within 30 s: %s", cmd);
                }
        }
        safe_close(ready[0]);
        return pid;
}

static pid_t spawn_peer(Ctx *c, Scenario sc) {
        return spawn_peer_at(c, sc, c->path);
}

/* SIGKILL, as a crash: the socket file stays behind unless unlink. */
static void kill_peer(Ctx *c, pid_t pid, bool unlink_socket) {
        for (size_t i = 0; i < c->n_peers; i++)
                if (c->peers[i].pid == pid) {
                        (void) kill(pid, SIGKILL);
                        (void) waitpid(pid, NULL, 0);
                        if (unlink_socket)
                                (void) unlink(c->peers[i].path);
                        c->peers[i] = c->peers[--c->n_peers];
                        return;
                }
}

/* --- drivers and calls --- */

static Target target_at(Ctx *c, const char *path, uid_t uid) {
        if (c->real && !path)
                return (Target){ .path = c->real_t.path, .uid = uid, .uri = c->real_t.uri, .domain = c->real_t.domain };
        return (Target){ .path = path, .uid = uid };
}

static Hv *new_hv_for(Ctx *c, const Target *t) {
        CHECK(c, c->n_hvs < MAX_HVS, "too many drivers in one case");
        Hv *hv = NULL;
        int r = c->ad->new_hv(c->ev, t, &hv);
        CHECK(c, r == 0 && hv, "constructing the %s driver failed: %s", c->ad->driver, errname(r));
        CHECK(c, hv->ops && hv->ops->name && strcmp(hv->ops->name, c->ad->ops_name) == 0,
              "Hv.ops->name: expected \"%s\", got \"%s\"", c->ad->ops_name,
              hv->ops && hv->ops->name ? hv->ops->name : "(null)");
        CHECK(c, hv->ev == c->ev, "Hv.ev is not the loop the driver was made with");
        c->hvs[c->n_hvs++] = hv;
        return hv;
}

/* A driver for the case's VM: the peer's socket, or the real one. */
static Hv *new_hv(Ctx *c) {
        Target t = target_at(c, c->real ? NULL : c->path, c->uid);
        return new_hv_for(c, &t);
}

static void free_hv(Ctx *c, Hv *hv) {
        for (size_t i = 0; i < c->n_hvs; i++)
                if (c->hvs[i] == hv) {
                        c->hvs[i] = c->hvs[--c->n_hvs];
                        hv_free(hv);
                        return;
                }
}

typedef enum Call {
        CALL_ACTUAL,
        CALL_TARGET,
        CALL_STATS,
        CALL_PERIOD,
        CALL_CAPS,
} Call;

static const HvOp call_op[] = {
        [CALL_ACTUAL] = HV_OP_GET_ACTUAL,       [CALL_TARGET] = HV_OP_SET_TARGET, [CALL_STATS] = HV_OP_GET_STATS,
        [CALL_PERIOD] = HV_OP_SET_STATS_PERIOD, [CALL_CAPS] = HV_OP_GET_CAPS,
};

typedef struct Got {
        bool done;
        unsigned calls;
        Call what;
        HvReply r;
        usec_t submitted, at;
} Got;

static void on_reply(Hv *hv, const HvReply *r, void *userdata) {
        Got *g = userdata;
        (void) hv;
        if (in_call)
                violated("a %s callback ran inside the call that submitted it (callbacks must be asynchronous)",
                         hv_op_to_string(r->op));
        if (g->done)
                violated("a %s callback ran a second time (callbacks run exactly once)", hv_op_to_string(r->op));
        g->calls++;
        g->r = *r;
        g->at = now_mono();
        g->done = true;
}

/* Counts callbacks for a userdata shared by several requests (cancel, free). */
static void on_count(Hv *hv, const HvReply *r, void *userdata) {
        (void) hv;
        (void) r;
        (*(unsigned *) userdata)++;
}

static int submit_cb(Hv *hv, Call what, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *ud) {
        int r = -EINVAL;
        in_call = true;
        switch (what) {
        case CALL_ACTUAL:
                r = hv_get_actual(hv, timeout, cb, ud);
                break;
        case CALL_TARGET:
                r = hv_set_target(hv, arg, timeout, cb, ud);
                break;
        case CALL_STATS:
                r = hv_get_stats(hv, timeout, cb, ud);
                break;
        case CALL_PERIOD:
                r = hv_set_stats_period(hv, (uint32_t) arg, timeout, cb, ud);
                break;
        case CALL_CAPS:
                r = hv_get_caps(hv, timeout, cb, ud);
                break;
        }
        in_call = false;
        return r;
}

static int submit(Hv *hv, Call what, uint64_t arg, usec_t timeout, Got *g) {
        *g = (Got){ .what = what, .submitted = now_mono() };
        return submit_cb(hv, what, arg, timeout, on_reply, g);
}

static void check_violations(Ctx *c) {
        CHECK(c, !violation[0], "%s", violation);
}

static void run_until(Ctx *c, const bool *done, usec_t limit, const char *what) {
        usec_t deadline = usec_add(now_mono(), limit);
        while (!*done) {
                CHECK(c, now_mono() < deadline, "%s: no callback within %.1f s", what, secs(limit));
                int r = ev_run_once(c->ev, deadline);
                CHECK(c, r >= 0, "ev_run_once: %s", errname(r));
        }
        check_violations(c);
}

static void run_for(Ctx *c, usec_t d) {
        usec_t until = usec_add(now_mono(), d);
        while (now_mono() < until) {
                int r = ev_run_once(c->ev, until);
                CHECK(c, r >= 0, "ev_run_once: %s", errname(r));
        }
        check_violations(c);
}

/* One operation to its end (its own deadline plus a generous margin for the callback). */
static Got call(Ctx *c, Hv *hv, Call what, uint64_t arg, usec_t timeout) {
        Got g;
        int r = submit(hv, what, arg, timeout, &g);
        CHECK(c, r == 0, "%s was refused at once: %s", hv_op_to_string(call_op[what]), errname(r));
        run_until(c, &g.done, timeout + 20 * SEC, hv_op_to_string(call_op[what]));
        CHECK(c, g.r.op == call_op[what], "the reply to %s says it answers %s", hv_op_to_string(call_op[what]),
              hv_op_to_string(g.r.op));
        CHECK(c, g.r.error <= 0, "%s: a positive error %d", hv_op_to_string(call_op[what]), g.r.error);
        CHECK(c, g.r.error == 0 || g.r.message[0], "%s failed with %s and an empty message",
              hv_op_to_string(call_op[what]), errname(g.r.error));
        return g;
}

static HvReply ok(Ctx *c, Hv *hv, Call what, uint64_t arg) {
        Got g = call(c, hv, what, arg, 10 * SEC);
        CHECK(c, g.r.error == 0, "%s: expected success, got %s: %s", hv_op_to_string(call_op[what]), errname(g.r.error),
              g.r.message);
        return g.r;
}

/* Polls actual (every 20 ms) until lo <= actual <= hi; returns it. Every value seen must stay at
 * or below max_seen. */
static uint64_t poll_actual(Ctx *c, Hv *hv, uint64_t lo, uint64_t hi, usec_t limit, uint64_t max_seen) {
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX], d[FORMAT_SIZE_MAX];
        usec_t deadline = usec_add(now_mono(), limit);
        uint64_t last = 0;
        for (;;) {
                last = ok(c, hv, CALL_ACTUAL, 0).actual;
                CHECK(c, last <= max_seen, "actual %s is above %s", sz(a, last), sz(b, max_seen));
                if (last >= lo && last <= hi)
                        return last;
                CHECK(c, now_mono() < deadline, "actual stayed at %s; expected it in [%s, %s] within %.0f s",
                      sz(a, last), sz(b, lo), sz(d, hi), secs(limit));
                run_for(c, 20 * MS);
        }
}

typedef struct WaitGot {
        bool done;
        unsigned calls;
        HvWaitOutcome o;
        usec_t at;
} WaitGot;

static void on_wait(HvWait *w, const HvWaitOutcome *o, void *userdata) {
        WaitGot *g = userdata;
        (void) w;
        if (in_call)
                violated("a set-and-wait callback ran inside hv_wait_start()");
        if (g->done)
                violated("a set-and-wait callback ran a second time");
        g->calls++;
        g->o = *o;
        g->at = now_mono();
        g->done = true;
}

static void free_wait(Ctx *c, HvWait *w) {
        for (size_t i = 0; i < c->n_waits; i++)
                if (c->waits[i] == w) {
                        c->waits[i] = c->waits[--c->n_waits];
                        hv_wait_free(w);
                        return;
                }
}

/* Set and wait (B1.6) to its end; *elapsed from hv_wait_start() to the callback. */
static HvWaitOutcome set_and_wait(Ctx *c, Hv *hv, uint64_t target, const HvWaitOptions *o, usec_t *elapsed) {
        CHECK(c, c->n_waits < MAX_WAITS, "too many waits in one case");
        WaitGot g = { 0 };
        HvWait *w = NULL;
        usec_t t0 = now_mono();
        in_call = true;
        int r = hv_wait_start(hv, target, o, on_wait, &g, &w);
        in_call = false;
        CHECK(c, r == 0 && w, "hv_wait_start: %s", errname(r));
        c->waits[c->n_waits++] = w;
        run_until(c, &g.done, o->timeout + 30 * SEC, "set and wait");
        free_wait(c, w);
        if (elapsed)
                *elapsed = g.at - t0;
        CHECK(c, g.o.target == target, "outcome.target: expected %" PRIu64 ", got %" PRIu64, target, g.o.target);
        if (g.o.result == HV_WAIT_ERROR)
                CHECK(c, g.o.error < 0 && g.o.message[0], "an ERROR outcome without an errno (%d) or message",
                      g.o.error);
        return g.o;
}

static HvWaitOptions wait_options(usec_t timeout) {
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.timeout = timeout;
        return o;
}

/* The VM back at full size, waited for (real mode, between cases). */
static int restore_full(Ctx *c, char *why, size_t len) {
        Hv *hv = NULL;
        Target t = target_at(c, NULL, c->uid);
        int r = c->ad->new_hv(c->ev, &t, &hv);
        if (r < 0) {
                snprintf(why, len, "cannot construct the driver: %s", errname(r));
                return r;
        }
        HvWaitOptions o = wait_options(90 * SEC);
        o.tolerance = 0; /* exactly: every case starts from the full size (page granularity) */
        WaitGot g = { 0 };
        HvWait *w = NULL;
        r = hv_wait_start(hv, c->ram, &o, on_wait, &g, &w);
        usec_t deadline = now_mono() + 150 * SEC;
        while (r == 0 && !g.done && now_mono() < deadline)
                if (ev_run_once(c->ev, deadline) < 0)
                        break;
        if (r < 0)
                snprintf(why, len, "hv_wait_start: %s", errname(r));
        else if (!g.done) {
                snprintf(why, len, "no outcome within 150 s");
                r = -ETIMEDOUT;
        } else if (g.o.result != HV_WAIT_REACHED) {
                snprintf(why, len, "%s at %" PRIu64 " bytes: %.400s", hv_wait_result_to_string(g.o.result), g.o.reached,
                         g.o.message);
                r = g.o.error < 0 ? g.o.error : -EIO;
        }
        hv_wait_free(w);
        hv_free(hv);
        return r;
}

/* --- the cases --- */

/* caps: a balloon, the VM's size, the hypervisor's version, the device's features. */
static void case_caps(Ctx *c) {
        Hv *hv = new_hv(c);
        HvReply r = ok(c, hv, CALL_CAPS, 0);
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX];
        note(c, "caps: balloon %d stats %d deflate_on_oom %d free_page_reporting %d ram %s version \"%s\"",
             r.caps.balloon, r.caps.stats, r.caps.deflate_on_oom, r.caps.free_page_reporting, sz(a, r.caps.ram_bytes),
             r.caps.version);
        CHECK(c, r.caps.balloon, "caps.balloon: expected true (the VM has a balloon device), got false");
        CHECK(c, r.caps.ram_bytes == c->ram, "caps.ram_bytes: expected %s (%" PRIu64 "), got %s (%" PRIu64 ")",
              sz(a, c->ram), c->ram, sz(b, r.caps.ram_bytes), r.caps.ram_bytes);
        size_t pl = strlen(c->ad->version_prefix);
        CHECK(c, strncmp(r.caps.version, c->ad->version_prefix, pl) == 0 && strlen(r.caps.version) > pl,
              "caps.version: expected \"%s<version>\", got \"%s\"", c->ad->version_prefix, r.caps.version);
        int doo = c->real ? c->expect_doo : c->ad->peer_deflate_on_oom;
        int fpr = c->real ? c->expect_fpr : c->ad->peer_free_page_reporting;
        if (doo >= 0)
                CHECK(c, r.caps.deflate_on_oom == (doo > 0), "caps.deflate_on_oom: expected %s, got %s",
                      doo ? "true" : "false", r.caps.deflate_on_oom ? "true" : "false");
        if (fpr >= 0)
                CHECK(c, r.caps.free_page_reporting == (fpr > 0), "caps.free_page_reporting: expected %s, got %s",
                      fpr ? "true" : "false", r.caps.free_page_reporting ? "true" : "false");
}

/* Asks get_stats once: 0 when it works, else its errno (returned at once or in the reply). */
static int stats_work(Ctx *c, Hv *hv, HvReply *ret) {
        Got g;
        int r = submit(hv, CALL_STATS, 0, 10 * SEC, &g);
        if (r < 0) {
                run_for(c, 200 * MS);
                CHECK(c, !g.done, "get_stats returned %s at once and then called back too", errname(r));
                return r;
        }
        run_until(c, &g.done, 30 * SEC, "get_stats");
        if (ret)
                *ret = g.r;
        return g.r.error;
}

/* caps-stats: caps.stats says what get_stats can do, and is what the hypervisor offers. */
static void case_caps_stats(Ctx *c) {
        Hv *hv = new_hv(c);
        HvReply caps = ok(c, hv, CALL_CAPS, 0);
        HvReply s;
        int works = stats_work(c, hv, &s);
        note(c, "caps.stats %s; get_stats %s%s%s", caps.caps.stats ? "true" : "false",
             works == 0 ? "works" : errname(works), works < 0 && works != -EOPNOTSUPP ? ": " : "",
             works < 0 && works != -EOPNOTSUPP ? s.message : "");
        CHECK(c, works == 0 || works == -EOPNOTSUPP,
              "get_stats on a healthy VM: expected success or -EOPNOTSUPP, got %s", errname(works));
        CHECK(c, caps.caps.stats == (works == 0), "caps.stats is %s but get_stats %s",
              caps.caps.stats ? "true" : "false",
              works == 0 ? "works (statistics can be read)" : "fails with -EOPNOTSUPP");
        CHECK(c, caps.caps.stats == c->ad->stats, "caps.stats: expected %s for %s, got %s",
              c->ad->stats ? "true" : "false", c->ad->driver, caps.caps.stats ? "true" : "false");
}

/* get-actual: a VM at full size reports its full size, twice the same. */
static void case_get_actual(Ctx *c) {
        Hv *hv = new_hv(c);
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX];
        Got g = call(c, hv, CALL_ACTUAL, 0, 10 * SEC);
        CHECK(c, g.r.error == 0, "get_actual: %s: %s", errname(g.r.error), g.r.message);
        note(c, "actual %s (%" PRIu64 ") in %.1f ms", sz(a, g.r.actual), g.r.actual,
             (double) (g.at - g.submitted) / 1000.0);
        CHECK(c, g.r.actual == c->ram, "actual of a VM at full size: expected %s (%" PRIu64 "), got %s (%" PRIu64 ")",
              sz(a, c->ram), c->ram, sz(b, g.r.actual), g.r.actual);
        uint64_t again = ok(c, hv, CALL_ACTUAL, 0).actual;
        CHECK(c, again == g.r.actual, "a second get_actual: expected %" PRIu64 ", got %" PRIu64, g.r.actual, again);
}

/* concurrent: several operations in flight at once on one driver all complete, each once. */
static void case_concurrent(Ctx *c) {
        Hv *hv = new_hv(c);
        Got g[6];
        size_t n = 0;
        CHECK(c, submit(hv, CALL_ACTUAL, 0, 15 * SEC, &g[n++]) == 0, "get_actual refused");
        CHECK(c, submit(hv, CALL_CAPS, 0, 15 * SEC, &g[n++]) == 0, "get_caps refused");
        CHECK(c, submit(hv, CALL_TARGET, c->ram, 15 * SEC, &g[n++]) == 0, "set_target refused");
        CHECK(c, submit(hv, CALL_ACTUAL, 0, 15 * SEC, &g[n++]) == 0, "get_actual refused");
        if (c->ad->stats)
                CHECK(c, submit(hv, CALL_STATS, 0, 15 * SEC, &g[n++]) == 0, "get_stats refused");
        CHECK(c, submit(hv, CALL_ACTUAL, 0, 15 * SEC, &g[n++]) == 0, "get_actual refused");
        for (size_t i = 0; i < n; i++) {
                run_until(c, &g[i].done, 40 * SEC, hv_op_to_string(call_op[g[i].what]));
                CHECK(c, g[i].r.op == call_op[g[i].what], "request %zu (%s) got the reply of %s", i,
                      hv_op_to_string(call_op[g[i].what]), hv_op_to_string(g[i].r.op));
                CHECK(c, g[i].r.error == 0, "request %zu (%s): %s: %s", i, hv_op_to_string(call_op[g[i].what]),
                      errname(g[i].r.error), g[i].r.message);
                if (g[i].what == CALL_ACTUAL)
                        CHECK(c, g[i].r.actual == c->ram, "request %zu: actual %" PRIu64 ", expected %" PRIu64, i,
                              g[i].r.actual, c->ram);
                if (g[i].what == CALL_CAPS)
                        CHECK(c, g[i].r.caps.ram_bytes == c->ram, "get_caps among others: ram_bytes %" PRIu64,
                              g[i].r.caps.ram_bytes);
        }
        run_for(c, 300 * MS); /* nothing more may come */
        for (size_t i = 0; i < n; i++)
                CHECK(c, g[i].calls == 1, "request %zu called back %u times", i, g[i].calls);
        note(c, "%zu operations in flight at once, all answered once", n);
}

/* set-target: the guest moves to the target and keeps at least it (the driver's conversion to
 * the hypervisor's balloon units rounds in the guest's favour, by less than 1 MiB), then all of it
 * comes back with a target of the full size. */
static void case_set_target(Ctx *c) {
        Hv *hv = new_hv(c);
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX];
        uint64_t t = c->ram - 256 * MiB - 12345; /* deliberately not page- or MiB-aligned */
        usec_t t0 = now_mono();
        HvReply r = ok(c, hv, CALL_TARGET, t);
        (void) r;
        uint64_t got = poll_actual(c, hv, 0, t + MiB, 60 * SEC, c->ram);
        note(c, "target %" PRIu64 " -> actual %" PRIu64 " (%+" PRId64 " bytes) in %.2f s", t, got, (int64_t) (got - t),
             secs(now_mono() - t0));
        CHECK(c, got >= t, "the guest must keep at least its target: actual %s (%" PRIu64 ") < target %s (%" PRIu64 ")",
              sz(a, got), got, sz(b, t), t);
        /* It stays there. */
        run_for(c, 200 * MS);
        uint64_t later = ok(c, hv, CALL_ACTUAL, 0).actual;
        CHECK(c, later >= t && later <= t + MiB, "actual moved away from the target: %" PRIu64 " then %" PRIu64, got,
              later);
        t0 = now_mono();
        ok(c, hv, CALL_TARGET, c->ram);
        got = poll_actual(c, hv, c->ram, c->ram, 60 * SEC, c->ram);
        note(c, "target full size -> actual %" PRIu64 " in %.2f s", got, secs(now_mono() - t0));
}

/* target-above-ram: a target above the VM's size means "all of it" (a full deflate), not an error. */
static void case_target_above_ram(Ctx *c) {
        Hv *hv = new_hv(c);
        uint64_t t = c->ram - 128 * MiB;
        ok(c, hv, CALL_TARGET, t);
        poll_actual(c, hv, t, t + MiB, 60 * SEC, c->ram);
        ok(c, hv, CALL_TARGET, c->ram * 2);
        uint64_t got = poll_actual(c, hv, c->ram, c->ram, 60 * SEC, c->ram);
        note(c, "target 2 x ram -> actual %" PRIu64 " (= ram)", got);
}

/* set-target-invalid: 0 and absurd sizes are refused at once, without a callback. */
static void case_set_target_invalid(Ctx *c) {
        Hv *hv = new_hv(c);
        Got g1, g2;
        int r1 = submit(hv, CALL_TARGET, 0, 5 * SEC, &g1);
        int r2 = submit(hv, CALL_TARGET, UINT64_C(1) << 63, 5 * SEC, &g2);
        run_for(c, 300 * MS);
        note(c, "set_target(0) -> %s; set_target(2^63) -> %s", errname(r1), errname(r2));
        CHECK(c, r1 == -EINVAL, "set_target(0): expected -EINVAL at once, got %s", errname(r1));
        CHECK(c, r2 == -EINVAL || r2 == -ERANGE, "set_target(2^63): expected -EINVAL or -ERANGE at once, got %s",
              errname(r2));
        CHECK(c, !g1.done && !g2.done, "a request refused at once must not call back (%s)",
              g1.done ? g1.r.message : g2.r.message);
        uint64_t a = ok(c, hv, CALL_ACTUAL, 0).actual;
        CHECK(c, a == c->ram, "after refused targets the VM must be untouched: actual %" PRIu64, a);
}

/* wait-reached: set and wait returns REACHED within the tolerance, in both directions, and at
 * once when the guest is already there. */
static void case_wait_reached(Ctx *c) {
        Hv *hv = new_hv(c);
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX];
        HvWaitOptions o = wait_options(60 * SEC);
        uint64_t t = c->ram - 256 * MiB;
        usec_t el;
        HvWaitOutcome out = set_and_wait(c, hv, t, &o, &el);
        note(c, "wait %s: %s at %s in %.3f s (%u polls, %u events)", sz(a, t), hv_wait_result_to_string(out.result),
             sz(b, out.reached), secs(el), out.polls, out.events);
        CHECK(c, out.result == HV_WAIT_REACHED, "wait for %s: expected reached, got %s at %s: %s", sz(a, t),
              hv_wait_result_to_string(out.result), sz(b, out.reached), out.message);
        CHECK(c, absdiff(out.reached, t) <= o.tolerance, "reached %" PRIu64 " is more than the tolerance from %" PRIu64,
              out.reached, t);
        CHECK(c, out.start == c->ram, "outcome.start: expected %" PRIu64 " (full size), got %" PRIu64, c->ram,
              out.start);
        CHECK(c, out.polls >= 1, "reached without a single poll of actual");
        CHECK(c, out.noticed >= out.started && out.started > 0, "outcome times: started %" PRIu64 " noticed %" PRIu64,
              out.started, out.noticed);
        CHECK(c, el < o.timeout, "reached only after the whole timeout (%.1f s)", secs(el));

        out = set_and_wait(c, hv, c->ram, &o, &el);
        note(c, "wait full size: %s at %s in %.3f s", hv_wait_result_to_string(out.result), sz(b, out.reached),
             secs(el));
        CHECK(c, out.result == HV_WAIT_REACHED, "wait back to full size: expected reached, got %s at %s: %s",
              hv_wait_result_to_string(out.result), sz(b, out.reached), out.message);
        CHECK(c, absdiff(out.reached, c->ram) <= o.tolerance, "reached %" PRIu64 ", expected about %" PRIu64,
              out.reached, c->ram);
        CHECK(c, absdiff(out.start, t) <= o.tolerance + MiB,
              "outcome.start of the way back: %" PRIu64 ", expected about %" PRIu64, out.start, t);

        out = set_and_wait(c, hv, c->ram, &o, &el);
        note(c, "wait where it is: %s in %.3f s", hv_wait_result_to_string(out.result), secs(el));
        CHECK(c, out.result == HV_WAIT_REACHED && el < 2 * SEC,
              "wait for the size the guest already has: expected reached in < 2 s, got %s after %.2f s",
              hv_wait_result_to_string(out.result), secs(el));
}

/* wait-deadline: a target the guest cannot reach in time ends at the deadline (not before, and not
 * much after) with the value it got to. */
static void case_wait_deadline(Ctx *c) {
        if (!c->real)
                spawn_peer(c, SC_SLOW);
        Hv *hv = new_hv(c);
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX];
        /* A real guest under TCG inflates ~1.4 GiB/s (docs/benchmarks.md): 30 ms cannot take 3/4
         * of it. The slow peer moves 50 MiB/s: 1 s takes about 50 MiB of 768 (long enough that a
         * loaded machine still lets it move before the deadline). */
        usec_t timeout = c->real ? 30 * MS : 1000 * MS;
        HvWaitOptions o = wait_options(timeout);
        uint64_t t = c->ram / 4;
        usec_t el;
        HvWaitOutcome out = set_and_wait(c, hv, t, &o, &el);
        note(c, "wait %s with a %.0f ms timeout: %s at %s after %.3f s: %s", sz(a, t), (double) timeout / 1000.0,
             hv_wait_result_to_string(out.result), sz(b, out.reached), secs(el), out.message);
        CHECK(c, out.result == HV_WAIT_DEADLINE, "expected deadline, got %s at %s: %s",
              hv_wait_result_to_string(out.result), sz(b, out.reached), out.message);
        CHECK(c, el >= timeout, "the wait ended %.3f s after it started, before its %.3f s deadline", secs(el),
              secs(timeout));
        CHECK(c, el <= timeout + LATE_SLACK, "the wait ended %.3f s after it started: more than 2 s past its deadline",
              secs(el));
        CHECK(c, out.reached > t + o.tolerance, "reached %s: the guest cannot have got to %s", sz(a, out.reached),
              sz(b, t));
        CHECK(c, out.reached <= out.start, "reached %" PRIu64 " is above the start %" PRIu64 " while inflating",
              out.reached, out.start);
        if (!c->real)
                CHECK(c, out.reached < out.start, "reached %" PRIu64 " = start: not the live value of a moving guest",
                      out.reached);
        CHECK(c, strstr(out.message, "deadline"), "the message should say the deadline passed: \"%s\"", out.message);

        HvWaitOptions back = wait_options(60 * SEC);
        out = set_and_wait(c, hv, c->ram, &back, &el);
        CHECK(c, out.result == HV_WAIT_REACHED, "back to full size: %s: %s", hv_wait_result_to_string(out.result),
              out.message);
}

/* wait-stalled: a guest that stops short of the target (its floor) ends the wait early, stalled,
 * where it stopped. */
static void case_wait_stalled(Ctx *c) {
        spawn_peer(c, SC_FLOOR);
        Hv *hv = new_hv(c);
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX];
        HvWaitOptions o = wait_options(60 * SEC);
        o.stall_window = 1 * SEC;
        uint64_t t = 256 * MiB;
        usec_t el;
        HvWaitOutcome out = set_and_wait(c, hv, t, &o, &el);
        char d[FORMAT_SIZE_MAX];
        note(c, "wait %s (floor %s, stall window 1 s): %s at %s after %.2f s: %s", sz(a, t), sz(b, PEER_FLOOR),
             hv_wait_result_to_string(out.result), sz(d, out.reached), secs(el), out.message);
        CHECK(c, out.result == HV_WAIT_STALLED, "expected stalled, got %s at %s: %s",
              hv_wait_result_to_string(out.result), sz(a, out.reached), out.message);
        CHECK(c, absdiff(out.reached, PEER_FLOOR) <= o.tolerance, "stalled at %s, but the guest stopped at %s",
              sz(a, out.reached), sz(b, PEER_FLOOR));
        CHECK(c, el >= o.stall_window, "stalled after %.2f s: before the 1 s window could pass", secs(el));
        CHECK(c, el < 30 * SEC, "stalled only after %.1f s (window 1 s, deadline 60 s)", secs(el));
        CHECK(c, strstr(out.message, "stopped"), "the message should say where the guest stopped: \"%s\"", out.message);
        HvWaitOptions back = wait_options(60 * SEC);
        out = set_and_wait(c, hv, c->ram, &back, &el);
        CHECK(c, out.result == HV_WAIT_REACHED, "back to full size: %s: %s", hv_wait_result_to_string(out.result),
              out.message);
}

/* stats: where the hypervisor has guest statistics, a period can be set and the guest's numbers
 * come with a timestamp and make sense; where it has none, both calls fail with -EOPNOTSUPP. */
static void case_stats(Ctx *c) {
        Hv *hv = new_hv(c);
        char a[FORMAT_SIZE_MAX], b[FORMAT_SIZE_MAX], d[FORMAT_SIZE_MAX];
        if (!c->ad->stats) {
                HvReply r;
                int e = stats_work(c, hv, &r);
                CHECK(c, e == -EOPNOTSUPP, "get_stats: expected -EOPNOTSUPP (%s has no statistics), got %s",
                      c->ad->driver, errname(e));
                Got g;
                int k = submit(hv, CALL_PERIOD, 1, 5 * SEC, &g);
                if (k == 0) {
                        run_until(c, &g.done, 30 * SEC, "set_stats_period");
                        k = g.r.error;
                } else {
                        run_for(c, 200 * MS);
                        CHECK(c, !g.done, "set_stats_period returned %s at once and then called back", errname(k));
                }
                CHECK(c, k == -EOPNOTSUPP, "set_stats_period: expected -EOPNOTSUPP, got %s", errname(k));
                note(c, "get_stats and set_stats_period: -EOPNOTSUPP");
                return;
        }
        HvReply first = ok(c, hv, CALL_STATS, 0);
        uint32_t period0 = first.stats.period;
        ok(c, hv, CALL_PERIOD, 1);
        usec_t deadline = now_mono() + 20 * SEC;
        HvReply r;
        for (;;) {
                r = ok(c, hv, CALL_STATS, 0);
                if (r.stats.last_update != 0 && r.stats.total != HV_STAT_UNSET)
                        break;
                CHECK(c, now_mono() < deadline,
                      "no statistics from the guest within 20 s of a 1 s period (last_update %" PRIu64 ", total %s)",
                      r.stats.last_update, r.stats.total == HV_STAT_UNSET ? "unset" : "set");
                run_for(c, 100 * MS);
        }
        const HvStats *s = &r.stats;
        uint64_t now_s = now_usec(CLOCK_REALTIME) / SEC;
        note(c,
             "stats: period %u (was %u), last_update %+" PRId64 " s from now, total %s, free %s, available %s, "
             "major faults %" PRIu64,
             s->period, period0, (int64_t) (s->last_update - now_s), sz(a, s->total),
             s->free == HV_STAT_UNSET ? "unset" : sz(b, s->free),
             s->available == HV_STAT_UNSET ? "unset" : sz(d, s->available), s->major_faults);
        CHECK(c, s->period == 1, "stats.period after set_stats_period(1): got %u", s->period);
        CHECK(c, absdiff(s->last_update, now_s) < 3600,
              "stats.last_update %" PRIu64 " is not a recent realtime second (now %" PRIu64 ")", s->last_update, now_s);
        CHECK(c, s->total > 0 && s->total <= c->ram, "stats.total %s: expected in (0, %s]", sz(a, s->total),
              sz(b, c->ram));
        CHECK(c, s->free == HV_STAT_UNSET || s->free <= s->total, "stats.free %s > total %s", sz(a, s->free),
              sz(b, s->total));
        CHECK(c, s->available == HV_STAT_UNSET || s->available <= s->total, "stats.available %s > total %s",
              sz(a, s->available), sz(b, s->total));
        if (period0 != 1) {
                HvReply back = ok(c, hv, CALL_PERIOD, period0);
                (void) back;
        }
}

/* no-balloon: a VM without a balloon device: caps say so (and still know the VM's size), a target
 * fails with -ENODEV in the hypervisor's own words, and so does a set-and-wait. */
static void case_no_balloon(Ctx *c) {
        spawn_peer(c, SC_NO_BALLOON);
        Hv *hv = new_hv(c);
        HvReply caps = ok(c, hv, CALL_CAPS, 0);
        CHECK(c, !caps.caps.balloon, "caps.balloon: expected false on a VM without a balloon device");
        CHECK(c, caps.caps.ram_bytes == c->ram, "caps.ram_bytes without a balloon: expected %" PRIu64 ", got %" PRIu64,
              c->ram, caps.caps.ram_bytes);
        Got g = call(c, hv, CALL_TARGET, c->ram / 2, 10 * SEC);
        note(c, "set_target: %s: %s", errname(g.r.error), g.r.message);
        CHECK(c, g.r.error == -ENODEV, "set_target without a balloon: expected -ENODEV, got %s: %s", errname(g.r.error),
              g.r.message);
        CHECK(c, strstr(g.r.message, c->ad->no_balloon_words),
              "set_target's message lacks the peer's own words \"%s\": \"%s\"", c->ad->no_balloon_words, g.r.message);
        HvWaitOptions o = wait_options(30 * SEC);
        HvWaitOutcome out = set_and_wait(c, hv, c->ram / 2, &o, NULL);
        note(c, "set and wait: %s %s: %s", hv_wait_result_to_string(out.result), errname(out.error), out.message);
        CHECK(c, out.result == HV_WAIT_ERROR && out.error == -ENODEV,
              "set and wait without a balloon: expected error -ENODEV, got %s %s", hv_wait_result_to_string(out.result),
              errname(out.error));
        CHECK(c, strstr(out.message, c->ad->no_balloon_words),
              "the wait's message lacks the peer's own words \"%s\": \"%s\"", c->ad->no_balloon_words, out.message);
}

/* nobody-listening: no socket, or a socket file nobody listens on: fails at once (not at the
 * deadline), naming the socket. */
static void case_nobody_listening(Ctx *c) {
        CHECK(c, !c->real, "never against a real hypervisor's socket");
        Hv *hv = new_hv(c);
        Got g = call(c, hv, CALL_ACTUAL, 0, 10 * SEC);
        usec_t el = g.at - g.submitted;
        note(c, "no socket: %s after %.3f s: %s", errname(g.r.error), secs(el), g.r.message);
        CHECK(c, g.r.error == -ENOENT || g.r.error == -ECONNREFUSED,
              "no socket: expected -ENOENT or -ECONNREFUSED, got %s: %s", errname(g.r.error), g.r.message);
        CHECK(c, el < FAST_FAIL, "no socket: failed after %.2f s of a 10 s deadline (expected < 2 s)", secs(el));
        CHECK(c, strstr(g.r.message, c->path), "the message should name the socket %s: \"%s\"", c->path, g.r.message);

        /* A stale socket file: bound, never listening. */
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", c->path);
        CHECK(c, fd >= 0 && bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0, "bind %s: %m", c->path);
        close(fd);
        g = call(c, hv, CALL_TARGET, c->ram / 2, 10 * SEC);
        el = g.at - g.submitted;
        note(c, "stale socket file: %s after %.3f s: %s", errname(g.r.error), secs(el), g.r.message);
        (void) unlink(c->path);
        CHECK(c, g.r.error == -ECONNREFUSED, "a socket nobody listens on: expected -ECONNREFUSED, got %s: %s",
              errname(g.r.error), g.r.message);
        CHECK(c, el < FAST_FAIL, "refused connection: failed after %.2f s of a 10 s deadline", secs(el));
}

/* peer-gone: the hypervisor dies after a good answer (its socket file stays): the next operation
 * fails at once, and the same driver works again once a hypervisor is back. */
static void case_peer_gone(Ctx *c) {
        pid_t pid = spawn_peer(c, SC_NORMAL);
        Hv *hv = new_hv(c);
        ok(c, hv, CALL_ACTUAL, 0);
        kill_peer(c, pid, false);
        Got g = call(c, hv, CALL_ACTUAL, 0, 10 * SEC);
        usec_t el = g.at - g.submitted;
        note(c, "after the peer died: %s after %.3f s: %s", errname(g.r.error), secs(el), g.r.message);
        CHECK(c, g.r.error == -ECONNREFUSED || g.r.error == -ENOENT || g.r.error == -ECONNRESET || g.r.error == -EPIPE,
              "expected -ECONNREFUSED, -ENOENT, -ECONNRESET or -EPIPE, got %s: %s", errname(g.r.error), g.r.message);
        CHECK(c, el < FAST_FAIL, "a dead peer: failed after %.2f s of a 10 s deadline (expected < 2 s)", secs(el));
        CHECK(c, strstr(g.r.message, c->path), "the message should name the socket %s: \"%s\"", c->path, g.r.message);
        spawn_peer(c, SC_NORMAL);
        uint64_t a = ok(c, hv, CALL_ACTUAL, 0).actual;
        CHECK(c, a == c->ram, "after a restart: actual %" PRIu64 ", expected %" PRIu64, a, c->ram);
}

/* close-mid-reply: half an answer, then the socket closes: -ECONNRESET at once; the same driver
 * reconnects to a healthy hypervisor on the next operation. */
static void case_close_mid_reply(Ctx *c) {
        pid_t pid = spawn_peer(c, SC_CLOSE_MID_REPLY);
        Hv *hv = new_hv(c);
        Got g = call(c, hv, CALL_ACTUAL, 0, 10 * SEC);
        usec_t el = g.at - g.submitted;
        note(c, "%s after %.3f s: %s", errname(g.r.error), secs(el), g.r.message);
        CHECK(c, g.r.error == -ECONNRESET, "expected -ECONNRESET, got %s: %s", errname(g.r.error), g.r.message);
        CHECK(c, el < FAST_FAIL, "a closed socket: failed after %.2f s of a 10 s deadline (expected < 2 s)", secs(el));
        CHECK(c, strstr(g.r.message, "closed by peer"), "the message should say the peer closed: \"%s\"", g.r.message);
        kill_peer(c, pid, true);
        spawn_peer(c, SC_NORMAL);
        uint64_t a = ok(c, hv, CALL_ACTUAL, 0).actual;
        CHECK(c, a == c->ram, "after reconnecting: actual %" PRIu64 ", expected %" PRIu64, a, c->ram);
}

static void expect_timeout(Ctx *c, const Got *g, usec_t deadline, const char *what) {
        usec_t el = g->at - g->submitted;
        note(c, "%s: %s after %.3f s (deadline %.3f s): %s", what, errname(g->r.error), secs(el), secs(deadline),
             g->r.message);
        CHECK(c, g->r.error == -ETIMEDOUT, "%s on a hung peer: expected -ETIMEDOUT, got %s: %s", what,
              errname(g->r.error), g->r.message);
        CHECK(c, el >= deadline, "%s: -ETIMEDOUT after %.3f s, before its %.3f s deadline", what, secs(el),
              secs(deadline));
        CHECK(c, el <= deadline + LATE_SLACK, "%s: -ETIMEDOUT after %.3f s, more than 2 s past its %.3f s deadline",
              what, secs(el), secs(deadline));
        CHECK(c, strstr(g->r.message, c->path), "%s: the message should name the socket %s: \"%s\"", what, c->path,
              g->r.message);
}

/* hung-peer: a peer that never answers fails each operation with -ETIMEDOUT between its deadline
 * and deadline + 2 s, and a set-and-wait with an ERROR of the same. */
static void case_hung(Ctx *c) {
        spawn_peer(c, SC_HANG);
        Hv *hv = new_hv(c);
        Got g = call(c, hv, CALL_ACTUAL, 0, HUNG_DEADLINE);
        expect_timeout(c, &g, HUNG_DEADLINE, "get_actual");
        g = call(c, hv, CALL_TARGET, c->ram / 2, HUNG_DEADLINE);
        expect_timeout(c, &g, HUNG_DEADLINE, "set_target");
        g = call(c, hv, CALL_CAPS, 0, HUNG_DEADLINE);
        expect_timeout(c, &g, HUNG_DEADLINE, "get_caps");
        HvWaitOptions o = wait_options(30 * SEC);
        o.op_timeout = HUNG_DEADLINE;
        usec_t el;
        HvWaitOutcome out = set_and_wait(c, hv, c->ram / 2, &o, &el);
        note(c, "set and wait: %s %s after %.3f s: %s", hv_wait_result_to_string(out.result), errname(out.error),
             secs(el), out.message);
        CHECK(c, out.result == HV_WAIT_ERROR && out.error == -ETIMEDOUT,
              "set and wait on a hung peer: expected error -ETIMEDOUT, got %s %s", hv_wait_result_to_string(out.result),
              errname(out.error));
        CHECK(c, el >= HUNG_DEADLINE && el <= HUNG_DEADLINE + LATE_SLACK,
              "set and wait on a hung peer ended after %.3f s; expected within [1 s, 3 s] (op_timeout 1 s)", secs(el));
}

/* hung-does-not-block: one VM's hung hypervisor does not delay another VM's answers. */
static void case_hung_does_not_block(Ctx *c) {
        spawn_peer_at(c, SC_HANG, c->path);
        spawn_peer_at(c, SC_NORMAL, c->other);
        Hv *hung = new_hv(c);
        Target t = target_at(c, c->other, c->uid);
        Hv *healthy = new_hv_for(c, &t);
        Got gh, gg;
        usec_t deadline = 5 * SEC;
        CHECK(c, submit(hung, CALL_ACTUAL, 0, deadline, &gh) == 0, "get_actual refused");
        CHECK(c, submit(healthy, CALL_ACTUAL, 0, deadline, &gg) == 0, "get_actual refused");
        run_until(c, &gg.done, 20 * SEC, "the healthy VM's get_actual");
        usec_t el = gg.at - gg.submitted;
        note(c, "healthy VM answered in %.3f s while the hung one waited", secs(el));
        CHECK(c, gg.r.error == 0 && gg.r.actual == c->ram, "the healthy VM: %s: %s", errname(gg.r.error), gg.r.message);
        CHECK(c, el < FAST_FAIL, "the healthy VM answered after %.2f s: held up by the hung one", secs(el));
        CHECK(c, !gh.done, "the hung VM answered (%s) before its deadline", errname(gh.r.error));
        run_until(c, &gh.done, 30 * SEC, "the hung VM's get_actual");
        expect_timeout(c, &gh, deadline, "get_actual (hung VM)");
}

/* garbage-reply: bytes that are not the protocol fail the operation at once with -EBADMSG, every
 * time (the connection is dropped, the next operation does not hang on it). */
static void case_garbage(Ctx *c) {
        spawn_peer(c, SC_GARBAGE);
        Hv *hv = new_hv(c);
        for (int i = 0; i < 2; i++) {
                Got g = call(c, hv, i == 0 ? CALL_ACTUAL : CALL_TARGET, c->ram / 2, 10 * SEC);
                usec_t el = g.at - g.submitted;
                note(c, "#%d %s: %s after %.3f s: %s", i + 1, hv_op_to_string(g.r.op), errname(g.r.error), secs(el),
                     g.r.message);
                CHECK(c, g.r.error == -EBADMSG, "a garbage reply: expected -EBADMSG, got %s: %s", errname(g.r.error),
                      g.r.message);
                CHECK(c, el < FAST_FAIL, "a garbage reply: failed after %.2f s of a 10 s deadline (expected < 2 s)",
                      secs(el));
                CHECK(c, strstr(g.r.message, "malformed"), "the message should say the reply was malformed: \"%s\"",
                      g.r.message);
        }
}

static uint64_t rss_bytes(void) {
        FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        uint64_t kib = 0;
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %" SCNu64, &kib) == 1)
                        break;
        if (f)
                fclose(f);
        return kib * 1024;
}

/* oversized-reply: an answer far beyond any sane size fails with -EMSGSIZE, quickly and without
 * buffering it. */
static void case_oversized(Ctx *c) {
        spawn_peer(c, SC_OVERSIZED);
        Hv *hv = new_hv(c);
        char a[FORMAT_SIZE_MAX];
        uint64_t before = rss_bytes();
        Got g = call(c, hv, CALL_ACTUAL, 0, 20 * SEC);
        uint64_t after = rss_bytes();
        usec_t el = g.at - g.submitted;
        uint64_t grew = after > before ? after - before : 0;
        note(c, "%s after %.3f s, RSS +%s: %s", errname(g.r.error), secs(el), sz(a, grew), g.r.message);
        CHECK(c, g.r.error == -EMSGSIZE, "an oversized reply: expected -EMSGSIZE, got %s: %s", errname(g.r.error),
              g.r.message);
        CHECK(c, el < 5 * SEC, "an oversized reply: failed after %.2f s of a 20 s deadline (expected < 5 s)", secs(el));
        CHECK(c, grew < 32 * MiB, "RSS grew by %s while reading an oversized reply", sz(a, grew));
        if (c->ad->oversized_words)
                CHECK(c, strstr(g.r.message, c->ad->oversized_words), "the message should say \"%s\": \"%s\"",
                      c->ad->oversized_words, g.r.message);
}

/* peer-uid: B1.2: a socket whose peer is not the expected uid is refused with -EPERM, naming both
 * uids; the right uid is accepted. */
static void case_peer_uid(Ctx *c) {
        if (!c->real)
                spawn_peer(c, SC_NORMAL);
        uid_t wrong = WRONG_UID;
        if (wrong == c->owner)
                wrong++;
        Target t = target_at(c, c->real ? c->real_t.path : c->path, wrong);
        Hv *hv = new_hv_for(c, &t);
        Got g = call(c, hv, CALL_ACTUAL, 0, 10 * SEC);
        usec_t el = g.at - g.submitted;
        note(c, "expected uid %u: %s after %.3f s: %s", (unsigned) wrong, errname(g.r.error), secs(el), g.r.message);
        CHECK(c, g.r.error == -EPERM, "a peer of another uid: expected -EPERM, got %s: %s", errname(g.r.error),
              g.r.message);
        char want[64];
        snprintf(want, sizeof(want), "expected uid %u", (unsigned) wrong);
        CHECK(c, strstr(g.r.message, want), "the message should name the expected uid (\"%s\"): \"%s\"", want,
              g.r.message);
        if (c->owner != UID_ANY) {
                snprintf(want, sizeof(want), "uid %u", (unsigned) c->owner);
                CHECK(c, strstr(g.r.message, want), "the message should name the peer's uid (\"%s\"): \"%s\"", want,
                      g.r.message);
        }
        CHECK(c, el < FAST_FAIL, "refusing the peer took %.2f s", secs(el));
        if (c->owner != UID_ANY) {
                Target right = target_at(c, c->real ? c->real_t.path : c->path, c->owner);
                Hv *good = new_hv_for(c, &right);
                uint64_t a = ok(c, good, CALL_ACTUAL, 0).actual;
                CHECK(c, a == c->ram, "with the right uid: actual %" PRIu64, a);
        }
}

/* peer-pid: after an answer the driver knows the hypervisor's pid (B5.7). */
static void case_peer_pid(Ctx *c) {
        pid_t pid = c->real ? 0 : spawn_peer(c, SC_NORMAL);
        Hv *hv = new_hv(c);
        ok(c, hv, CALL_ACTUAL, 0);
        note(c, "Hv.peer_pid %d%s", (int) hv->peer_pid, c->real ? "" : " (peer)");
        if (!c->real)
                CHECK(c, hv->peer_pid == pid, "Hv.peer_pid: expected the peer's pid %d, got %d", (int) pid,
                      (int) hv->peer_pid);
        else {
                CHECK(c, hv->peer_pid > 0, "Hv.peer_pid: expected the hypervisor's pid, got %d", (int) hv->peer_pid);
                char p[64];
                snprintf(p, sizeof(p), "/proc/%d", (int) hv->peer_pid);
                CHECK(c, access(p, F_OK) == 0, "Hv.peer_pid %d is not a running process", (int) hv->peer_pid);
        }
}

/* cancel: hv_cancel(ud) drops every pending callback of ud and no other. */
static void case_cancel(Ctx *c) {
        Hv *hv = new_hv(c);
        unsigned cancelled = 0;
        Got other;
        CHECK(c, submit_cb(hv, CALL_ACTUAL, 0, 10 * SEC, on_count, &cancelled) == 0, "get_actual refused");
        CHECK(c, submit_cb(hv, CALL_CAPS, 0, 10 * SEC, on_count, &cancelled) == 0, "get_caps refused");
        CHECK(c, submit(hv, CALL_ACTUAL, 0, 10 * SEC, &other) == 0, "get_actual refused");
        CHECK(c, submit_cb(hv, CALL_TARGET, c->ram, 10 * SEC, on_count, &cancelled) == 0, "set_target refused");
        hv_cancel(hv, &cancelled);
        run_until(c, &other.done, 30 * SEC, "the request that was not cancelled");
        CHECK(c, other.r.error == 0 && other.r.actual == c->ram, "the request not cancelled: %s: %s",
              errname(other.r.error), other.r.message);
        run_for(c, 500 * MS);
        CHECK(c, cancelled == 0, "%u callbacks of cancelled requests ran", cancelled);
        /* A request in flight, then cancelled: its late answer is dropped, the next one is fine. */
        CHECK(c, submit_cb(hv, CALL_ACTUAL, 0, 10 * SEC, on_count, &cancelled) == 0, "get_actual refused");
        (void) ev_run_once(c->ev, now_mono() + 2 * MS);
        /* A fast hypervisor may have answered inside those 2 ms: only a callback after the cancel
         * is a failure. */
        unsigned before = cancelled;
        hv_cancel(hv, &cancelled);
        uint64_t a = ok(c, hv, CALL_ACTUAL, 0).actual;
        run_for(c, 300 * MS);
        CHECK(c, cancelled == before, "a cancelled request in flight still called back");
        CHECK(c, a == c->ram, "after a cancel: actual %" PRIu64, a);
        note(c, "cancelled requests never called back; the others answered");
}

/* free-pending: freeing a driver with requests pending calls none of them back, and leaves
 * nothing behind in the loop. */
static void case_free_pending(Ctx *c) {
        unsigned calls = 0;
        Hv *hv = new_hv(c);
        CHECK(c, submit_cb(hv, CALL_ACTUAL, 0, 10 * SEC, on_count, &calls) == 0, "get_actual refused");
        CHECK(c, submit_cb(hv, CALL_CAPS, 0, 10 * SEC, on_count, &calls) == 0, "get_caps refused");
        free_hv(c, hv);
        run_for(c, 300 * MS);
        CHECK(c, calls == 0, "%u callbacks ran after hv_free", calls);
        hv = new_hv(c);
        ok(c, hv, CALL_ACTUAL, 0);
        CHECK(c, submit_cb(hv, CALL_ACTUAL, 0, 10 * SEC, on_count, &calls) == 0, "get_actual refused");
        (void) ev_run_once(c->ev, now_mono() + 2 * MS); /* probably on the wire now */
        /* A fast hypervisor may already have answered inside those 2 ms: only a callback after the
         * free is a failure. */
        unsigned before = calls;
        free_hv(c, hv);
        run_for(c, 300 * MS);
        CHECK(c, calls == before, "a request in flight called back after hv_free");
        size_t timers = ev_timer_count(c->ev);
        CHECK(c, timers == 0, "%zu timers left in the loop after hv_free", timers);
        hv = new_hv(c);
        uint64_t a = ok(c, hv, CALL_ACTUAL, 0).actual;
        CHECK(c, a == c->ram, "a new driver after the free: actual %" PRIu64, a);
}

#define REAL   0u /* runs against a real hypervisor too */
#define PEER   1u /* needs a fault-injecting peer */
#define SOCKET 2u /* about the driver's own socket */

typedef struct Case {
        const char *name;
        void (*run)(Ctx *c);
        unsigned flags;
} Case;

static const Case cases[] = {
        { "caps", case_caps, REAL },
        { "caps-stats", case_caps_stats, REAL },
        { "get-actual", case_get_actual, REAL },
        { "concurrent", case_concurrent, REAL },
        { "set-target", case_set_target, REAL },
        { "target-above-ram", case_target_above_ram, REAL },
        { "set-target-invalid", case_set_target_invalid, REAL },
        { "wait-reached", case_wait_reached, REAL },
        { "wait-deadline", case_wait_deadline, REAL },
        { "wait-stalled", case_wait_stalled, PEER },
        { "stats", case_stats, REAL },
        { "no-balloon", case_no_balloon, PEER },
        { "nobody-listening", case_nobody_listening, PEER | SOCKET },
        { "peer-gone", case_peer_gone, PEER | SOCKET },
        { "close-mid-reply", case_close_mid_reply, PEER },
        { "hung-peer", case_hung, PEER },
        { "hung-does-not-block", case_hung_does_not_block, PEER },
        { "garbage-reply", case_garbage, PEER },
        { "oversized-reply", case_oversized, PEER },
        { "peer-uid", case_peer_uid, REAL | SOCKET },
        { "peer-pid", case_peer_pid, REAL | SOCKET },
        { "cancel", case_cancel, REAL },
        { "free-pending", case_free_pending, REAL },
};

/* Scenario used by a case that does not start its own peer. */
static bool case_spawns_own(const Case *k) {
        static void (*const own[])(Ctx *) = {
                case_wait_deadline, case_wait_stalled,    case_no_balloon, case_nobody_listening,
                case_peer_gone,     case_close_mid_reply, case_hung,       case_hung_does_not_block,
                case_garbage,       case_oversized,       case_peer_uid,   case_peer_pid,
        };
        for (size_t i = 0; i < ELEMENTSOF(own); i++)
                if (own[i] == k->run)
                        return true;
        return false;
}

static void ctx_cleanup(Ctx *c) {
        while (c->n_waits > 0)
                free_wait(c, c->waits[0]);
        while (c->n_hvs > 0)
                free_hv(c, c->hvs[0]);
        while (c->n_peers > 0)
                kill_peer(c, c->peers[0].pid, true);
        if (!c->real) { /* never a real hypervisor's socket */
                (void) unlink(c->path);
                (void) unlink(c->other);
        }
}

static void print_diag(const char *text) {
        for (const char *p = text; *p;) {
                size_t l = strcspn(p, "\n");
                printf("#   %.*s\n", (int) l, p);
                p += l;
                if (*p == '\n')
                        p++;
        }
}

/* Runs one case: 1 passed, 0 failed. */
static int run_case(Ctx *c, const Case *k) {
        c->diag[0] = '\0';
        c->diag_len = 0;
        c->fail[0] = '\0';
        violation[0] = '\0';
        int r = ev_new(&c->ev);
        if (r < 0) {
                snprintf(c->fail, sizeof(c->fail), "ev_new: %s", errname(r));
                return 0;
        }
        volatile int passed = 0;
        if (setjmp(c->jb) == 0) {
                if (!c->real && !case_spawns_own(k))
                        spawn_peer(c, SC_NORMAL);
                k->run(c);
                check_violations(c);
                passed = 1;
        }
        ctx_cleanup(c);
        size_t left = ev_timer_count(c->ev);
        if (passed && left > 0) {
                snprintf(c->fail, sizeof(c->fail), "%zu timers left in the loop after every driver was freed", left);
                passed = 0;
        }
        if (passed && violation[0]) {
                snprintf(c->fail, sizeof(c->fail), "%s", violation);
                passed = 0;
        }
        c->ev = ev_free(c->ev);
        return passed;
}

static const Adapter *find_adapter(const char *name) {
        for (size_t i = 0; i < ELEMENTSOF(adapters); i++)
                if (strcmp(adapters[i].driver, name) == 0)
                        return &adapters[i];
        return NULL;
}

static void usage(FILE *f) {
        fprintf(f,
                "usage: conformance --driver qemu|firecracker|cloud-hypervisor%s [--peer-dir DIR] [--case NAME]...\n"
                "       conformance --driver DRIVER --real-socket PATH --ram BYTES [--expected-uid N]\n"
                "                   [--expect-deflate-on-oom BOOL] [--expect-free-page-reporting BOOL]\n"
#ifdef CONFORMANCE_LIBVIRT
                "       conformance --driver libvirt [--uri URI] --domain NAME --ram BYTES\n"
#endif
                "       conformance --list\n",
#ifdef CONFORMANCE_LIBVIRT
                "|libvirt"
#else
                ""
#endif
        );
}

int main(int argc, char **argv) {
        enum {
                OPT_DRIVER = 0x100,
                OPT_PEER_DIR,
                OPT_REAL,
                OPT_RAM,
                OPT_UID,
                OPT_URI,
                OPT_DOMAIN,
                OPT_CASE,
                OPT_LIST,
                OPT_DOO,
                OPT_FPR,
        };
        static const struct option opts[] = {
                { "driver", required_argument, NULL, OPT_DRIVER },
                { "peer-dir", required_argument, NULL, OPT_PEER_DIR },
                { "real-socket", required_argument, NULL, OPT_REAL },
                { "ram", required_argument, NULL, OPT_RAM },
                { "expected-uid", required_argument, NULL, OPT_UID },
                { "uri", required_argument, NULL, OPT_URI },
                { "domain", required_argument, NULL, OPT_DOMAIN },
                { "case", required_argument, NULL, OPT_CASE },
                { "list", no_argument, NULL, OPT_LIST },
                { "expect-deflate-on-oom", required_argument, NULL, OPT_DOO },
                { "expect-free-page-reporting", required_argument, NULL, OPT_FPR },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        static Ctx ctx;
        Ctx *c = &ctx;
        const char *driver = NULL, *only[64];
        size_t n_only = 0;
        uint64_t ram = 0;
        bool have_uid = false;
        c->uid = UID_ANY;
        c->expect_doo = c->expect_fpr = -1;
        int o;
        while ((o = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                uint64_t x;
                bool b;
                switch (o) {
                case OPT_DRIVER:
                        driver = optarg;
                        break;
                case OPT_PEER_DIR:
                        c->peer_dir = optarg;
                        break;
                case OPT_REAL:
                        c->real_t.path = optarg;
                        break;
                case OPT_RAM:
                        if (parse_size(optarg, &ram) < 0 || ram < 512 * MiB) {
                                fprintf(stderr, "conformance: --ram: '%s' is not a size of at least 512M\n", optarg);
                                return 2;
                        }
                        break;
                case OPT_UID:
                        if (parse_u64(optarg, &x) < 0 || x >= UINT32_MAX) {
                                fprintf(stderr, "conformance: --expected-uid: '%s' is not a uid\n", optarg);
                                return 2;
                        }
                        c->uid = (uid_t) x;
                        have_uid = true;
                        break;
                case OPT_URI:
                        c->real_t.uri = optarg;
                        break;
                case OPT_DOMAIN:
                        c->real_t.domain = optarg;
                        break;
                case OPT_CASE:
                        if (n_only == ELEMENTSOF(only))
                                return 2;
                        only[n_only++] = optarg;
                        break;
                case OPT_LIST:
                        for (size_t i = 0; i < ELEMENTSOF(cases); i++)
                                printf("%s%s\n", cases[i].name, cases[i].flags & PEER ? " (peer only)" : "");
                        return 0;
                case OPT_DOO:
                case OPT_FPR:
                        if (parse_boolean(optarg, &b) < 0) {
                                fprintf(stderr, "conformance: '%s' is not a boolean\n", optarg);
                                return 2;
                        }
                        *(o == OPT_DOO ? &c->expect_doo : &c->expect_fpr) = b;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (!driver || optind < argc) {
                usage(stderr);
                return 2;
        }
        c->ad = find_adapter(driver);
        if (!c->ad) {
                fprintf(stderr, "conformance: unknown driver '%s'\n", driver);
                usage(stderr);
                return 2;
        }
        for (size_t i = 0; i < n_only; i++) {
                bool known = false;
                for (size_t k = 0; k < ELEMENTSOF(cases); k++)
                        known = known || strcmp(cases[k].name, only[i]) == 0;
                if (!known) {
                        fprintf(stderr, "conformance: unknown case '%s' (see --list)\n", only[i]);
                        return 2;
                }
        }
        c->real = c->real_t.path || c->real_t.domain;
        if (c->real) {
                if (!ram || (c->ad->socket && !c->real_t.path) || (!c->ad->socket && !c->real_t.domain)) {
                        fprintf(stderr, "conformance: a real hypervisor needs --ram and %s\n",
                                c->ad->socket ? "--real-socket" : "--domain");
                        return 2;
                }
                c->ram = ram;
                c->owner = have_uid ? c->uid : UID_ANY;
        } else {
                if (!c->ad->peer) {
                        fprintf(stderr, "conformance: %s has no test peer: run it against a real one (--domain)\n",
                                c->ad->driver);
                        return 2;
                }
                c->ram = PEER_RAM;
                c->uid = c->owner = getuid(); /* the peers run as we do: B1.2 is checked in every case */
                static char dir_buf[PATH_MAX];
                if (!c->peer_dir) {
                        /* build/tests/conformance/conformance -> build/tests */
                        char self[PATH_MAX];
                        ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
                        if (n <= 0)
                                return 2;
                        self[n] = '\0';
                        snprintf(dir_buf, sizeof(dir_buf), "%s/..", dirname(self));
                        c->peer_dir = dir_buf;
                }
                char exe[PATH_MAX + 64];
                snprintf(exe, sizeof(exe), "%s/%s", c->peer_dir, c->ad->peer);
                if (access(exe, X_OK) < 0) {
                        printf("1..0 # SKIP no test peer %s: %m\n", exe);
                        return 77;
                }
                snprintf(c->dir, sizeof(c->dir), "/tmp/ballast-conf-XXXXXX");
                if (!mkdtemp(c->dir)) {
                        fprintf(stderr, "conformance: mkdtemp: %m\n");
                        return 1;
                }
                snprintf(c->path, sizeof(c->path), "%.60s/hv.sock", c->dir);
                snprintf(c->other, sizeof(c->other), "%.60s/other.sock", c->dir);
        }
        if (c->real && c->ad->socket)
                snprintf(c->path, sizeof(c->path), "%s", c->real_t.path);
        signal(SIGPIPE, SIG_IGN);
        setvbuf(stdout, NULL, _IOLBF, 0);

        size_t n = 0;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                bool sel = n_only == 0;
                for (size_t k = 0; k < n_only; k++)
                        sel = sel || strcmp(cases[i].name, only[k]) == 0;
                n += sel;
        }
        printf("TAP version 13\n");
        printf("# conformance of the %s driver against %s\n", c->ad->driver,
               c->real ? (c->real_t.path ? c->real_t.path : c->real_t.domain) : "its test peer");
        printf("1..%zu\n", n);

        char why[512];
        if (c->real) {
                int r = ev_new(&c->ev);
                if (r == 0)
                        r = restore_full(c, why, sizeof(why));
                c->ev = ev_free(c->ev);
                if (r < 0) {
                        printf("Bail out! the VM cannot be brought to its full size (%" PRIu64 " bytes) first: %s\n",
                               c->ram, why);
                        return 1;
                }
        }

        unsigned passed = 0, failed = 0, skipped = 0, num = 0;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const Case *k = &cases[i];
                bool sel = n_only == 0;
                for (size_t j = 0; j < n_only; j++)
                        sel = sel || strcmp(k->name, only[j]) == 0;
                if (!sel)
                        continue;
                num++;
                if (c->real && (k->flags & PEER)) {
                        if (c->ad->peer)
                                printf("ok %u - %s # SKIP needs a fault-injecting peer: covered by --driver %s\n", num,
                                       k->name, c->ad->driver);
                        else
                                printf("ok %u - %s # SKIP needs a fault-injecting peer, and %s has none: not covered\n",
                                       num, k->name, c->ad->driver);
                        skipped++;
                        continue;
                }
                if ((k->flags & SOCKET) && !c->ad->socket) {
                        printf("ok %u - %s # SKIP the %s driver has no hypervisor socket of its own\n", num, k->name,
                               c->ad->driver);
                        skipped++;
                        continue;
                }
                usec_t t0 = now_mono();
                int ok_ = run_case(c, k);
                usec_t took = now_mono() - t0;
                if (ok_) {
                        printf("ok %u - %s\n", num, k->name);
                        passed++;
                } else {
                        printf("not ok %u - %s\n", num, k->name);
                        printf("#   FAILED: %s\n", c->fail);
                        /* Also where meson's --print-errorlogs shows it. */
                        fprintf(stderr, "not ok %u - %s: %s\n", num, k->name, c->fail);
                        failed++;
                }
                print_diag(c->diag);
                printf("#   (%.2f s)\n", secs(took));
                if (c->real) {
                        int r = ev_new(&c->ev);
                        if (r == 0)
                                r = restore_full(c, why, sizeof(why));
                        c->ev = ev_free(c->ev);
                        if (r < 0) {
                                printf("Bail out! after %s the VM cannot be brought back to its full size: %s\n",
                                       k->name, why);
                                return 1;
                        }
                }
        }
        if (!c->real)
                (void) rmdir(c->dir);
        printf("# %s driver%s: %u passed, %u failed, %u skipped\n", c->ad->driver, c->real ? " (real hypervisor)" : "",
               passed, failed, skipped);
        return failed > 0 ? 1 : 0;
}
