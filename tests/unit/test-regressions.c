/* SPDX-License-Identifier: MIT */
/* Regression tests of bugs found in src/ by the unit tests, each fixed since: `test-regressions
 * NAME` runs one. The comments describe the bug as it was. */
#include <errno.h>
#include <stdbool.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include <cmocka.h>

#include "hv/qmp-proto.h"
#include "shared/ev.h"
#include "shared/macro.h"

/* Was: qmp_clamp_big_ints() (src/hv/qmp-proto.c) compares the magnitude of a negative number with
 * INT64_MAX, so INT64_MIN (-9223372036854775808), which fits int64, is rewritten to -1. The header
 * promises to rewrite only literals that do not fit int64. */
static void bug_clamp_int64_min(void **state) {
        (void) state;
        char b[] = "{\"a\": -9223372036854775808}";
        size_t n = qmp_clamp_big_ints(b, strlen(b));
        assert_string_equal(b, "{\"a\": -9223372036854775808}");
        assert_int_equal(n, 0);
}

/* Was: ev_run_once() (src/shared/ev.c, the timer loop after `usec_t cutoff = ev->now;`) runs every
 * timer with when <= cutoff, including one its own callback just re-armed for "now" (ev_now(ev)) or
 * for 0. The comment there promises such a timer "runs in the next round, never in this one, so a
 * zero-delay re-arm cannot starve fds"; instead ev_run_once() never returns. Guarded by an alarm. */
typedef struct Zero {
        Ev *ev;
        unsigned count;
} Zero;

static void on_zero(EvTimer *t, void *userdata) {
        Zero *z = userdata;
        z->count++;
        ev_timer_set(t, ev_now(z->ev));
}

static void on_alarm(int sig) {
        (void) sig;
        static const char m[] = "ev_run_once() did not return within 2 s: timer re-armed for now ran again\n";
        (void) !write(STDERR_FILENO, m, sizeof(m) - 1);
        _exit(1);
}

static void bug_ev_rearm_now_spins(void **state) {
        (void) state;
        Zero z = { 0 };
        EvTimer *t;
        assert_int_equal(ev_new(&z.ev), 0);
        assert_int_equal(ev_timer_add(z.ev, 0, on_zero, &z, &t), 0);
        signal(SIGALRM, on_alarm);
        alarm(2);
        assert_int_equal(ev_run_once(z.ev, 0), 1);
        assert_int_equal(z.count, 1);
        assert_int_equal(ev_run_once(z.ev, 0), 1);
        assert_int_equal(z.count, 2);
        alarm(0);
        ev_timer_free(t);
        ev_free(z.ev);
}

/* Was: ev_run_once() (src/shared/ev.c) stops its timer loop at the first due timer armed during
 * the current round (`heap[0]->armed_round != ev->round`), meant to make a timer re-armed for "now"
 * wait for the next round. But a timer armed for 0 (the HTTP server's "run MHD soon" after every
 * asynchronous answer) sits at the top of the heap, so every other due timer waited too; with one
 * such re-arm in every round (an API under load) no timer ran for seconds: GET /v1/vms waited 2 loop
 * turns that were 29 s apart in bench/soak, the list's next turn being a timer. Here a readable fd
 * re-arms a timer for 0 in every round, and a timer due since before the first round must run. */
typedef struct Starve {
        EvTimer *kicked;
        unsigned due_ran, kicked_ran;
} Starve;

static void on_due(EvTimer *t, void *userdata) {
        (void) t;
        ((Starve *) userdata)->due_ran++;
}

static void on_kicked(EvTimer *t, void *userdata) {
        (void) t;
        ((Starve *) userdata)->kicked_ran++;
}

static void on_readable(EvIo *io, int fd, uint32_t revents, void *userdata) {
        (void) io, (void) fd, (void) revents;
        ev_timer_set(((Starve *) userdata)->kicked, 0);
}

static void bug_ev_timer_armed_now_starves(void **state) {
        (void) state;
        Ev *ev;
        Starve s = { 0 };
        EvTimer *due;
        EvIo *io;
        int p[2];
        assert_int_equal(ev_new(&ev), 0);
        assert_int_equal(pipe(p), 0);
        assert_int_equal(write(p[1], "x", 1), 1); /* stays readable */
        assert_int_equal(ev_timer_add(ev, USEC_INFINITY, on_kicked, &s, &s.kicked), 0);
        assert_int_equal(ev_timer_add(ev, now_mono(), on_due, &s, &due), 0);
        assert_int_equal(ev_io_add(ev, p[0], EPOLLIN, on_readable, &s, &io), 0);
        for (int i = 0; i < 10; i++)
                assert_true(ev_run_once(ev, 0) >= 1);
        assert_int_equal(s.due_ran, 1);
        /* And the re-armed one is not postponed for ever by its re-arms. */
        assert_true(s.kicked_ran >= 2);
        ev_io_free(io);
        ev_timer_free(due);
        ev_timer_free(s.kicked);
        close(p[0]);
        close(p[1]);
        ev_free(ev);
}

/* Was: ev_new() (src/shared/ev.c) initialises ev->sigfd to -EBADF (-9), and ev_signal_add() passes it
 * to signalfd(ev->sigfd, ...), which creates a new signalfd only for -1: any other negative fd is
 * EBADF. So the first ev_signal_add() on every loop fails with -EBADF (after having blocked the
 * signal), and no signal is ever delivered through the loop. */
typedef struct SigCtx {
        int sig;
        bool done;
} SigCtx;

static void on_signal(Ev *ev, int sig, void *userdata) {
        SigCtx *s = userdata;
        (void) ev;
        s->sig = sig;
        s->done = true;
}

static void bug_ev_signal_add_ebadf(void **state) {
        (void) state;
        Ev *ev;
        SigCtx s = { 0 };
        assert_int_equal(ev_new(&ev), 0);
        assert_int_equal(ev_signal_add(ev, SIGUSR1, on_signal, &s), 0);
        assert_int_equal(raise(SIGUSR1), 0); /* blocked: stays pending for the signalfd */
        usec_t deadline = now_mono() + 5 * USEC_PER_SEC;
        while (!s.done && now_mono() < deadline)
                assert_true(ev_run_once(ev, deadline) >= 0);
        assert_true(s.done);
        assert_int_equal(s.sig, SIGUSR1);
        ev_free(ev);
        sigset_t cur;
        assert_int_equal(sigprocmask(SIG_BLOCK, NULL, &cur), 0);
        assert_false(sigismember(&cur, SIGUSR1)); /* ev_free() unblocked it again */
}

int main(int argc, char **argv) {
        static const struct {
                const char *name;
                struct CMUnitTest test;
        } bugs[] = {
                { "clamp-int64-min", cmocka_unit_test(bug_clamp_int64_min) },
                { "ev-rearm-now-spins", cmocka_unit_test(bug_ev_rearm_now_spins) },
                { "ev-signal-add-ebadf", cmocka_unit_test(bug_ev_signal_add_ebadf) },
                { "ev-timer-armed-now-starves", cmocka_unit_test(bug_ev_timer_armed_now_starves) },
        };
        for (size_t i = 0; i < ELEMENTSOF(bugs); i++)
                if (argc == 2 && strcmp(argv[1], bugs[i].name) == 0)
                        return _cmocka_run_group_tests(bugs[i].name, &bugs[i].test, 1, NULL, NULL);
        fprintf(stderr, "usage: test-regressions NAME\n");
        return 2;
}
