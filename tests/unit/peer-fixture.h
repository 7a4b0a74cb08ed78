/* SPDX-License-Identifier: MIT */
#pragma once

/* The fixture the peer-driven unit tests share (test-qmp.c, test-fc.c, test-chv.c, test-http1.c):
 * a temporary directory for sockets, an event loop, peers forked into child processes (killed at
 * teardown, so none outlives its test), and loops that run until a condition holds, each with a
 * deadline. Include after <cmocka.h>. Everything is static inline: a test uses what it needs.
 *
 * Define PEER_FIXTURE_HV before including for the driver-level helpers (Got and on_reply, call()
 * and ok(), wait_actual(), set_and_wait(), and raw() for the HTTP drivers). */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "shared/ev.h"
#include "shared/macro.h"

typedef struct Fixture {
        char dir[64];   /* /tmp/ballast-test-<name>-XXXXXX */
        char path[128]; /* dir/<socket>: where the usual peer listens */
        pid_t pids[8];  /* live peer children */
        size_t n_pids;
        Ev *ev;
} Fixture;

/* Set while a test calls into the code under test: a callback that sees it ran synchronously. */
static bool in_call _unused_;

/* cmocka setup: a fresh directory /tmp/ballast-test-<name>-XXXXXX and loop; f->path is
 * <dir>/<socket>. Returns 0, or -1 (cmocka skips the test) when either cannot be made. */
static inline int fixture_setup(void **state, const char *name, const char *socket) {
        Fixture *f = calloc(1, sizeof(Fixture));
        if (!f)
                return -1;
        snprintf(f->dir, sizeof(f->dir), "/tmp/ballast-test-%s-XXXXXX", name);
        if (!mkdtemp(f->dir) || ev_new(&f->ev) < 0) {
                free(f);
                return -1;
        }
        snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, socket);
        *state = f;
        return 0;
}

/* Kills and reaps the peer child pid (one of f->pids; others are ignored). A child that had
 * already exited non-zero is reported on stderr: a scripted peer does that when the client said
 * something unexpected. */
static inline void kill_peer(Fixture *f, pid_t pid) {
        for (size_t i = 0; i < f->n_pids; i++)
                if (f->pids[i] == pid) {
                        int st = 0;
                        if (waitpid(pid, &st, WNOHANG) == pid && st != 0)
                                fprintf(stderr, "peer %d had exited: status 0x%x\n", (int) pid, (unsigned) st);
                        (void) kill(pid, SIGKILL);
                        (void) waitpid(pid, NULL, 0);
                        f->pids[i] = f->pids[--f->n_pids];
                        return;
                }
}

/* cmocka teardown: kills every peer, removes the directory and what the test left in it, frees
 * the loop and the fixture. Returns 0. */
static inline int fixture_teardown(void **state) {
        Fixture *f = *state;
        while (f->n_pids > 0)
                kill_peer(f, f->pids[0]);
        DIR *d = opendir(f->dir);
        if (d) {
                struct dirent *de;
                while ((de = readdir(d)))
                        if (de->d_name[0] != '.')
                                (void) unlinkat(dirfd(d), de->d_name, 0);
                closedir(d);
        }
        (void) rmdir(f->dir);
        ev_free(f->ev);
        free(f);
        return 0;
}

/* Forks a peer, like fork(). In the child (which dies with the test, and has dropped to drop_uid
 * unless that is -1, or exited 10) returns 0 and *ret_ready: write one byte to it once the socket
 * listens, then serve and _exit(). In the parent, records the child in f, waits up to 20 s for
 * that byte (failing the test with "<what> did not start listening") and returns its pid. */
static inline pid_t fork_peer(Fixture *f, uid_t drop_uid, const char *what, int *ret_ready) {
        int ready[2];
        assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
        assert_true(f->n_pids < ELEMENTSOF(f->pids));
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(ready[0]);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a crashed test */
                if (drop_uid != (uid_t) -1 && (setgroups(0, NULL) < 0 || setresgid(drop_uid, drop_uid, drop_uid) < 0 ||
                                               setresuid(drop_uid, drop_uid, drop_uid) < 0))
                        _exit(10);
                *ret_ready = ready[1];
                return 0;
        }
        close(ready[1]);
        f->pids[f->n_pids++] = pid;
        struct pollfd p = { .fd = ready[0], .events = POLLIN };
        assert_int_equal(poll(&p, 1, 20000), 1);
        char c = 0;
        if (read(ready[0], &c, 1) != 1)
                fail_msg("%s did not start listening", what);
        close(ready[0]);
        return pid;
}

/* Runs the loop until *done, failing the test when timeout passes first. */
static inline void run_until(Ev *ev, const bool *done, usec_t timeout) {
        usec_t deadline = usec_add(now_mono(), timeout);
        while (!*done) {
                if (now_mono() >= deadline)
                        fail_msg("condition not met within %llu ms", (unsigned long long) (timeout / 1000));
                assert_true(ev_run_once(ev, deadline) >= 0);
        }
}

/* Runs the loop n times, each for at most `each`: time for a callback that must not come. */
static inline void run_idle(Ev *ev, unsigned n, usec_t each) {
        for (unsigned i = 0; i < n; i++)
                (void) ev_run_once(ev, now_mono() + each);
}

/* This process's resident memory, KiB. */
static inline uint64_t rss_kib(void) {
        FILE *fp = fopen("/proc/self/status", "re");
        assert_non_null(fp);
        char line[256];
        uint64_t v = 0;
        while (fgets(line, sizeof(line), fp))
                if (sscanf(line, "VmRSS: %" SCNu64, &v) == 1)
                        break;
        fclose(fp);
        return v;
}

#ifdef PEER_FIXTURE_HV
#include "shared/http1.h"
#include "hv/hv.h"
#include "shared/unix-sock.h"

/* One operation's answer, as on_reply() keeps it. */
typedef struct Got {
        bool done;
        HvReply r;
        usec_t at; /* monotonic, when the callback ran */
} Got;

/* The hv_reply_cb of the tests: userdata is a Got; runs exactly once and never synchronously. */
static inline void on_reply(Hv *hv, const HvReply *r, void *userdata) {
        Got *g = userdata;
        (void) hv;
        assert_false(in_call); /* never synchronous */
        assert_false(g->done); /* exactly once */
        g->r = *r;
        g->at = now_mono();
        g->done = true;
}

typedef enum Call {
        CALL_ACTUAL,
        CALL_TARGET,
        CALL_STATS,
        CALL_PERIOD,
        CALL_CAPS,
} Call;

/* Runs one operation to its end (the loop runs up to timeout + 10 s); returns its reply. */
static inline HvReply call(Fixture *f, Hv *hv, Call what, uint64_t arg, usec_t timeout) {
        Got g = { 0 };
        int r = -EINVAL;
        in_call = true;
        switch (what) {
        case CALL_ACTUAL:
                r = hv_get_actual(hv, timeout, on_reply, &g);
                break;
        case CALL_TARGET:
                r = hv_set_target(hv, arg, timeout, on_reply, &g);
                break;
        case CALL_STATS:
                r = hv_get_stats(hv, timeout, on_reply, &g);
                break;
        case CALL_PERIOD:
                r = hv_set_stats_period(hv, (uint32_t) arg, timeout, on_reply, &g);
                break;
        case CALL_CAPS:
                r = hv_get_caps(hv, timeout, on_reply, &g);
                break;
        }
        in_call = false;
        assert_int_equal(r, 0);
        run_until(f->ev, &g.done, timeout + 10 * USEC_PER_SEC);
        return g.r;
}

/* call() with a 5 s deadline that must succeed. */
static inline HvReply ok(Fixture *f, Hv *hv, Call what, uint64_t arg) {
        HvReply r = call(f, hv, what, arg, 5 * USEC_PER_SEC);
        if (r.error < 0)
                fail_msg("%s: %s (%d)", hv_op_to_string(r.op), r.message, r.error);
        return r;
}

/* Polls actual every 20 ms until it equals want; fails after 20 s. */
static inline void wait_actual(Fixture *f, Hv *hv, uint64_t want) {
        usec_t deadline = now_mono() + 20 * USEC_PER_SEC;
        for (;;) {
                HvReply r = ok(f, hv, CALL_ACTUAL, 0);
                if (r.actual == want)
                        return;
                if (now_mono() > deadline)
                        fail_msg("actual stayed at %llu, want %llu", (unsigned long long) r.actual,
                                 (unsigned long long) want);
                usec_t t = now_mono() + 20 * USEC_PER_MSEC;
                while (now_mono() < t)
                        (void) ev_run_once(f->ev, t);
        }
}

typedef struct WaitGot {
        bool done;
        HvWaitOutcome o;
        usec_t at; /* monotonic, when the callback ran */
} WaitGot;

static inline void on_wait(HvWait *w, const HvWaitOutcome *o, void *userdata) {
        WaitGot *g = userdata;
        (void) w;
        assert_false(g->done);
        g->o = *o;
        g->at = now_mono();
        g->done = true;
}

/* Runs hv_wait_start() to its outcome (the loop runs up to o->timeout + 20 s). */
static inline HvWaitOutcome set_and_wait(Fixture *f, Hv *hv, uint64_t target, const HvWaitOptions *o) {
        WaitGot g = { 0 };
        HvWait *w = NULL;
        assert_int_equal(hv_wait_start(hv, target, o, on_wait, &g, &w), 0);
        run_until(f->ev, &g.done, o->timeout + 20 * USEC_PER_SEC);
        hv_wait_free(w);
        assert_true(g.o.target == target);
        return g.o;
}

/* One raw HTTP exchange with the peer at f->path: the exact response bytes (NUL-terminated,
 * caller frees). */
static inline char *raw(Fixture *f, const char *request) {
        char err[256];
        int fd = usock_connect(f->path, err, sizeof(err));
        assert_true(fd >= 0);
        assert_int_equal(fcntl(fd, F_SETFL, 0), 0);
        assert_int_equal(write(fd, request, strlen(request)), (ssize_t) strlen(request));
        char *buf = calloc(1, 65536);
        assert_non_null(buf);
        size_t n = 0;
        for (;;) {
                Http1Response resp;
                if (n > 0 && http1_parse_response(buf, n, 60000, &resp) > 0)
                        break;
                struct pollfd p = { .fd = fd, .events = POLLIN };
                assert_int_equal(poll(&p, 1, 10000), 1);
                ssize_t k = read(fd, buf + n, 65535 - n);
                assert_true(k > 0);
                n += (size_t) k;
        }
        close(fd);
        return buf;
}

/* raw(), and the response must be want, byte for byte. */
static inline void assert_raw(Fixture *f, const char *request, const char *want) {
        char *got = raw(f, request);
        if (strcmp(got, want) != 0)
                fail_msg("request:\n%s\ngot:\n%s\nwant:\n%s", request, got, want);
        free(got);
}
#endif
