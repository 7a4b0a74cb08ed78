/* SPDX-License-Identifier: MIT */
/* The controller's tick against fake QEMUs (tests/peers/qmp-peer.c, compiled in, run in forked
 * children) and a fixture /proc whose meminfo the test rewrites to make pressure come and go.
 * Every wait is on a condition with a generous deadline. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define QMP_PEER_NO_MAIN
#include "../peers/qmp-peer.c"

#include "control/controller.h"
#include "hv/qmp.h"
#include "shared/ev.h"
#include "shared/macro.h"

typedef struct Fixture {
        char dir[64];
        pid_t pids[8];
        size_t n_pids;
        Ev *ev;
        Controller *c;
        unsigned targets_changed, journalled;
        unsigned batches, batched_already_sent; /* targets_changed (the plan's batch) calls */
} Fixture;

static void write_meminfo(Fixture *f, uint64_t total, uint64_t avail) {
        char path[128], tmp[140];
        snprintf(path, sizeof path, "%s/proc/meminfo", f->dir);
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        FILE *fp = fopen(tmp, "w");
        assert_non_null(fp);
        fprintf(fp, "MemTotal:       %llu kB\nMemFree:        %llu kB\nMemAvailable:   %llu kB\n",
                (unsigned long long) (total >> 10), (unsigned long long) (avail >> 10),
                (unsigned long long) (avail >> 10));
        assert_int_equal(fclose(fp), 0);
        assert_int_equal(rename(tmp, path), 0);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        if (!f)
                return -1;
        snprintf(f->dir, sizeof f->dir, "/tmp/ballast-test-ctl-XXXXXX");
        if (!mkdtemp(f->dir) || ev_new(&f->ev) < 0)
                return -1;
        char p[128];
        snprintf(p, sizeof p, "%s/proc", f->dir);
        if (mkdir(p, 0755) < 0)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        f->c = ctl_free(f->c);
        for (size_t i = 0; i < f->n_pids; i++) {
                (void) kill(f->pids[i], SIGKILL);
                (void) waitpid(f->pids[i], NULL, 0);
        }
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        (void) !system(cmd);
        ev_free(f->ev);
        free(f);
        return 0;
}

/* How long the next peers hold each guest-stats answer (0: not at all). */
static usec_t peer_stats_delay;

static void spawn_peer(Fixture *f, const char *name, PeerMode mode, uint64_t ram, uint64_t floor) {
        int ready[2];
        assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(ready[0]);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                char path[160];
                snprintf(path, sizeof path, "%s/%s.sock", f->dir, name);
                PeerConfig c;
                peer_config_init(&c);
                c.socket_path = path;
                c.mode = mode;
                c.ram = ram;
                c.floor = floor;
                c.rate_mib_s = 2048;
                c.stats_delay = peer_stats_delay;
                c.ready_fd = ready[1];
                _exit(peer_serve(&c) < 0 ? 11 : 0);
        }
        close(ready[1]);
        char b;
        assert_int_equal(read(ready[0], &b, 1), 1);
        close(ready[0]);
        f->pids[f->n_pids++] = pid;
}

static int factory(Ev *ev, const CtlVmSpec *spec, Hv **ret, char *err, size_t errlen) {
        QmpConfig qc = { .socket_path = spec->socket, .expected_uid = UID_ANY };
        int r = qmp_hv_new(ev, &qc, ret);
        if (r < 0)
                snprintf(err, errlen, "%s", strerror(-r));
        return r;
}

static void on_target(Controller *c, CtlVm *vm, uint64_t target, void *userdata) {
        Fixture *f = userdata;
        (void) c, (void) vm, (void) target;
        f->targets_changed++;
}
static void on_journal(Controller *c, CtlTrigger t, const PlanResult *r, void *userdata) {
        Fixture *f = userdata;
        (void) c, (void) t, (void) r;
        f->journalled++;
}

static void start(Fixture *f, usec_t op_timeout) {
        CtlConfig cc;
        ctl_config_default(&cc);
        cc.proc_root = f->dir;
        cc.psi_mode = -1;
        cc.op_timeout = op_timeout;
        cc.sample_interval = 50 * USEC_PER_MSEC;
        cc.plan.dwell = 0;
        CtlHooks h = { .target_changed = on_target, .journal = on_journal, .userdata = f };
        char err[256];
        int r = ctl_new(f->ev, &cc, factory, &h, &f->c, err, sizeof err);
        if (r < 0)
                fail_msg("ctl_new: %s", err);
}

static CtlVm *add(Fixture *f, const char *name, uint64_t assigned, uint64_t floor) {
        CtlVmSpec s = { .expected_uid = -1, .assigned = assigned, .floor = floor, .shares = 1000 };
        snprintf(s.id, sizeof s.id, "%s", name);
        snprintf(s.driver, sizeof s.driver, "qemu");
        snprintf(s.socket, sizeof s.socket, "%s/%s.sock", f->dir, name);
        char err[256];
        CtlVm *vm = NULL;
        int r = ctl_vm_add(f->c, &s, 0, &vm, err, sizeof err);
        if (r < 0)
                fail_msg("ctl_vm_add: %s", err);
        return vm;
}

/* Runs the loop until cond() holds or the deadline (relative) passes; returns whether it held. */
typedef bool (*cond_fn)(Fixture *f, void *arg);
static bool run_until(Fixture *f, cond_fn cond, void *arg, usec_t timeout) {
        usec_t deadline = now_mono() + timeout;
        while (!cond(f, arg)) {
                if (now_mono() >= deadline)
                        return false;
                assert_true(ev_run_once(f->ev, MIN(deadline, now_mono() + 50 * USEC_PER_MSEC)) >= 0);
        }
        return true;
}

static bool all_known(Fixture *f, void *arg) {
        size_t n = (size_t) (uintptr_t) arg;
        size_t k = 0;
        for (size_t i = 0; i < ctl_vm_count(f->c); i++) {
                CtlVmView v;
                ctl_vm_view(ctl_vm_at(f->c, i), &v);
                k += v.actual_known;
        }
        return k >= n;
}

static bool vm_reached_below(Fixture *f, void *arg) {
        CtlVm *vm = arg;
        CtlVmView v;
        ctl_vm_view(vm, &v);
        (void) f;
        return v.actual_known && v.target < v.spec->assigned && v.actual <= v.target + 16 * MiB;
}

static bool vm_back_full(Fixture *f, void *arg) {
        CtlVm *vm = arg;
        CtlVmView v;
        ctl_vm_view(vm, &v);
        (void) f;
        return v.actual_known && v.target == v.spec->assigned && v.actual + 16 * MiB >= v.spec->assigned;
}

static bool vm_failed(Fixture *f, void *arg) {
        CtlVm *vm = arg;
        CtlVmView v;
        ctl_vm_view(vm, &v);
        (void) f;
        return v.status == CTL_VM_ERROR;
}

/* Pressure below the low watermark: both VMs are reclaimed, never below their floors, and the
 * memory comes back when the pressure goes. */
static void test_reclaim_and_give_back(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 4 * GiB);
        spawn_peer(f, "a", PEER_NORMAL, 1 * GiB, 0);
        spawn_peer(f, "b", PEER_NORMAL, 1 * GiB, 0);
        start(f, 2 * USEC_PER_SEC);
        CtlVm *a = add(f, "a", 1 * GiB, 256 * MiB), *b = add(f, "b", 1 * GiB, 256 * MiB);
        assert_true(run_until(f, all_known, (void *) 2, 10 * USEC_PER_SEC));
        CtlHostView h;
        ctl_host_view(f->c, &h);
        assert_int_equal(h.ctl.state, PLAN_STATE_HEALTHY);

        /* 5% available of 8 GiB: the high watermark (15%) needs 0.8 GiB back. */
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        assert_true(run_until(f, vm_reached_below, a, 10 * USEC_PER_SEC));
        assert_true(run_until(f, vm_reached_below, b, 10 * USEC_PER_SEC));
        CtlVmView va, vb;
        ctl_vm_view(a, &va);
        ctl_vm_view(b, &vb);
        assert_true(va.target >= 256 * MiB && vb.target >= 256 * MiB);
        uint64_t reclaimed = 2 * GiB - va.target - vb.target;
        assert_true(reclaimed >= 8 * GiB / 10 - 16 * MiB);
        assert_true(f->targets_changed >= 2);
        assert_true(f->journalled >= 1);
        ctl_host_view(f->c, &h);
        assert_int_not_equal(h.ctl.state, PLAN_STATE_HEALTHY);
        assert_true(ctl_stats(f->c)->reaction.count >= 1);

        /* Pressure gone: everything comes back. */
        write_meminfo(f, 8 * GiB, 6 * GiB);
        assert_true(run_until(f, vm_back_full, a, 20 * USEC_PER_SEC));
        assert_true(run_until(f, vm_back_full, b, 20 * USEC_PER_SEC));
}

typedef struct Seen {
        CtlVm *vm;
        usec_t at;
} Seen;

/* A VM whose QMP socket hangs does not delay the others: they get their targets within a
 * fraction of the operation deadline, the hung one fails at its deadline. */
static void test_hung_vm_does_not_delay_others(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 4 * GiB);
        spawn_peer(f, "good1", PEER_NORMAL, 1 * GiB, 0);
        spawn_peer(f, "good2", PEER_NORMAL, 1 * GiB, 0);
        spawn_peer(f, "hung", PEER_HANG, 1 * GiB, 0);
        usec_t op_timeout = 3 * USEC_PER_SEC;
        start(f, op_timeout);
        CtlVm *g1 = add(f, "good1", 1 * GiB, 0), *g2 = add(f, "good2", 1 * GiB, 0), *hung = add(f, "hung", 1 * GiB, 0);
        assert_true(run_until(f, all_known, (void *) 2, 10 * USEC_PER_SEC));

        usec_t t0 = now_mono();
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        assert_true(run_until(f, vm_reached_below, g1, 10 * USEC_PER_SEC));
        assert_true(run_until(f, vm_reached_below, g2, 10 * USEC_PER_SEC));
        usec_t took = now_mono() - t0;
        /* Well within one operation deadline, though the hung VM's first call is still pending. */
        assert_true(took < op_timeout);
        assert_true(run_until(f, vm_failed, hung, op_timeout + 5 * USEC_PER_SEC));
        CtlVmView v;
        ctl_vm_view(hung, &v);
        assert_false(v.actual_known);
        assert_true(strlen(v.last_error) > 0);
}

/* A guest that cannot go below a floor of its own is marked stalled and its target re-synced
 * to where it stopped; the shortfall goes to the other VM. */
static void test_stall_resyncs(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 4 * GiB);
        spawn_peer(f, "stuck", PEER_NORMAL, 1 * GiB, 900 * MiB);
        spawn_peer(f, "free", PEER_NORMAL, 1 * GiB, 0);
        start(f, 2 * USEC_PER_SEC);
        CtlVm *stuck = add(f, "stuck", 1 * GiB, 0), *fr = add(f, "free", 1 * GiB, 0);
        assert_true(run_until(f, all_known, (void *) 2, 10 * USEC_PER_SEC));
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        assert_true(run_until(f, vm_reached_below, fr, 10 * USEC_PER_SEC));
        usec_t deadline = now_mono() + 15 * USEC_PER_SEC;
        CtlVmView v;
        for (;;) {
                ctl_vm_view(stuck, &v);
                if (v.stalls > 0 || now_mono() >= deadline)
                        break;
                assert_true(ev_run_once(f->ev, now_mono() + 50 * USEC_PER_MSEC) >= 0);
        }
        assert_true(v.stalls > 0);
        assert_int_equal(v.status, CTL_VM_STALLED);
        /* Re-synced to what it reached, within the guest's own floor. */
        assert_true(v.target >= 900 * MiB - 16 * MiB && v.target <= 900 * MiB + 16 * MiB);
}

static bool vm_adopted(Fixture *f, void *arg) {
        CtlVm *vm = arg;
        CtlVmView v;
        ctl_vm_view(vm, &v);
        (void) f;
        return v.actual_known;
}

/* Before a VM first answers, and on a healthy host where plans are skipped, its view shows its real
 * floor and why it is left alone: it was shown "parked" with a floor of 0 B. */
static void test_view_before_first_plan(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        spawn_peer(f, "hung", PEER_HANG, 1 * GiB, 0);
        spawn_peer(f, "late", PEER_NORMAL, 1 * GiB, 0);
        start(f, 2 * USEC_PER_SEC);
        CtlVm *hung = add(f, "hung", 1 * GiB, 300 * MiB);
        CtlVmView v;
        ctl_vm_view(hung, &v);
        assert_int_equal(v.last.reason, PLAN_REASON_UNREACHABLE);
        assert_true(v.last.floor == 300 * MiB);
        /* Registered last on an idle healthy host: adopted, never planned, floor 25% of 1 GiB. */
        CtlVm *late = add(f, "late", 1 * GiB, 0);
        assert_true(run_until(f, vm_adopted, late, 10 * USEC_PER_SEC));
        for (int i = 0; i < 10; i++)
                assert_true(ev_run_once(f->ev, now_mono() + 20 * USEC_PER_MSEC) >= 0);
        ctl_vm_view(late, &v);
        assert_int_not_equal(v.last.reason, PLAN_REASON_PARKED);
        assert_int_not_equal(v.last.reason, PLAN_REASON_UNREACHABLE);
        assert_true(v.last.floor == 256 * MiB);
        ctl_vm_view(hung, &v);
        assert_int_equal(v.last.reason, PLAN_REASON_UNREACHABLE);
}

static bool ttt_observed(Fixture *f, void *arg) {
        (void) arg;
        return ctl_stats(f->c)->time_to_target.count > 0;
}

/* Time to target counts from the command of the target: a VM adopted a while ago and moved now
 * records the move, not the time since its adoption (the re-sync sent at adoption, a target equal
 * to its actual, used to start the clock, and 63 s were recorded for 2 s moves). */
static void test_time_to_target_from_the_command(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        spawn_peer(f, "m", PEER_NORMAL, 1 * GiB, 0);
        start(f, 2 * USEC_PER_SEC);
        CtlVm *vm = add(f, "m", 1 * GiB, 0);
        usec_t added = now_mono();
        assert_true(run_until(f, vm_adopted, vm, 10 * USEC_PER_SEC));
        /* Idle for a second on a healthy host: ticks, the adoption's re-sync, nothing moves. */
        while (now_mono() < added + USEC_PER_SEC)
                assert_true(ev_run_once(f->ev, now_mono() + 50 * USEC_PER_MSEC) >= 0);
        assert_int_equal(ctl_stats(f->c)->time_to_target.count, 0);
        usec_t set = now_mono();
        assert_int_equal(ctl_vm_set_target(f->c, vm, 768 * MiB), 0);
        assert_true(run_until(f, ttt_observed, NULL, 10 * USEC_PER_SEC));
        double window_s = (double) (now_mono() - set) / USEC_PER_SEC;
        const CtlHistogram *h = &ctl_stats(f->c)->time_to_target;
        assert_int_equal(h->count, 1);
        if (!(h->sum_s > 0 && h->sum_s <= window_s + 0.05))
                fail_msg("time to target %.3f s, but the move was commanded %.3f s ago (VM added %.3f s ago)", h->sum_s,
                         window_s, (double) (now_mono() - added) / USEC_PER_SEC);
}

/* A VM whose hypervisor died leaves every total, and its retries are not reactions: a dead QEMU
 * stayed in commanded/planned and its 30 s retry showed up as a 3.5 s "reaction". */
static void test_dead_vm_leaves_totals(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 4 * GiB);
        spawn_peer(f, "a", PEER_NORMAL, 1 * GiB, 0);
        spawn_peer(f, "b", PEER_NORMAL, 1 * GiB, 0);
        start(f, 1 * USEC_PER_SEC);
        CtlVm *a = add(f, "a", 1 * GiB, 256 * MiB), *b = add(f, "b", 1 * GiB, 256 * MiB);
        assert_true(run_until(f, all_known, (void *) 2, 10 * USEC_PER_SEC));
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        assert_true(run_until(f, vm_reached_below, a, 10 * USEC_PER_SEC));
        assert_true(run_until(f, vm_reached_below, b, 10 * USEC_PER_SEC));

        /* b's hypervisor dies while the host is still short. */
        (void) kill(f->pids[1], SIGKILL);
        (void) waitpid(f->pids[1], NULL, 0);
        f->pids[1] = f->pids[--f->n_pids];
        assert_true(run_until(f, vm_failed, b, 10 * USEC_PER_SEC));
        uint64_t reactions = ctl_stats(f->c)->reaction.count;
        /* Let its back-off retries run (1 s, 2 s, …) and a few plans happen. */
        usec_t until = now_mono() + 4 * USEC_PER_SEC;
        while (now_mono() < until)
                assert_true(ev_run_once(f->ev, now_mono() + 50 * USEC_PER_MSEC) >= 0);
        CtlVmView va, vb;
        ctl_vm_view(a, &va);
        ctl_vm_view(b, &vb);
        assert_int_equal(vb.status, CTL_VM_ERROR);
        assert_int_equal(vb.last.reason, PLAN_REASON_UNREACHABLE);
        CtlHostView h;
        ctl_host_view(f->c, &h);
        assert_true(h.commanded == va.spec->assigned - va.target);
        assert_true(h.guest_reached == va.spec->assigned - MIN(va.actual, va.spec->assigned));
        assert_true(ctl_stats(f->c)->reaction.count == reactions);
}

static bool vm_has_stats(Fixture *f, void *arg) {
        CtlVm *vm = arg;
        CtlVmView v;
        ctl_vm_view(vm, &v);
        (void) f;
        return v.guest.last_update != 0 && v.guest.last_update != HV_STAT_UNSET;
}

typedef struct StatsAfter {
        CtlVm *vm;
        uint64_t after;
} StatsAfter;

static bool vm_stats_newer(Fixture *f, void *arg) {
        StatsAfter *a = arg;
        CtlVmView v;
        ctl_vm_view(a->vm, &v);
        (void) f;
        return v.guest.last_update != HV_STAT_UNSET && v.guest.last_update > a->after;
}

/* An idle VM's guest statistics are read every few minutes while the host is calm (available at
 * least 2.5 times the high watermark), and re-read at once when it stops being calm, so they are
 * seconds old when pressure starts (the idle cost of 1,000 VMs is the reason for the minutes). */
static void test_idle_stats_follow_calm(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        spawn_peer(f, "a", PEER_NORMAL, 1 * GiB, 0);
        CtlConfig cc;
        ctl_config_default(&cc);
        cc.proc_root = f->dir;
        cc.psi_mode = -1;
        cc.op_timeout = 2 * USEC_PER_SEC;
        cc.sample_interval = 50 * USEC_PER_MSEC;
        cc.stats_period_s = 1;
        CtlHooks h = { .target_changed = on_target, .journal = on_journal, .userdata = f };
        char err[256];
        if (ctl_new(f->ev, &cc, factory, &h, &f->c, err, sizeof err) < 0)
                fail_msg("ctl_new: %s", err);
        CtlVm *a = add(f, "a", 1 * GiB, 0);
        assert_true(run_until(f, vm_has_stats, a, 15 * USEC_PER_SEC));
        CtlVmView v;
        ctl_vm_view(a, &v);
        StatsAfter sa = { .vm = a, .after = v.guest.last_update };
        /* Calm: no new read for a while (the guest would have new figures every second). */
        assert_false(run_until(f, vm_stats_newer, &sa, 4 * USEC_PER_SEC));
        /* Healthy but no longer calm (25 % available, the high watermark is 15 %): read now. */
        write_meminfo(f, 8 * GiB, 2 * GiB);
        assert_true(run_until(f, vm_stats_newer, &sa, 8 * USEC_PER_SEC));
        ctl_vm_view(a, &v);
        assert_true(v.guest_fresh);
        CtlHostView hv;
        ctl_host_view(f->c, &hv);
        assert_int_equal(hv.ctl.state, PLAN_STATE_HEALTHY);
}

/* Distinct guest reports seen in a window (the guest reports once per polling interval). */
static unsigned reports_in(Fixture *f, CtlVm *vm, usec_t window) {
        usec_t until = now_mono() + window;
        uint64_t last = 0;
        unsigned n = 0;
        while (now_mono() < until) {
                assert_true(ev_run_once(f->ev, now_mono() + 20 * USEC_PER_MSEC) >= 0);
                CtlVmView v;
                ctl_vm_view(vm, &v);
                if (v.guest.last_update != HV_STAT_UNSET && v.guest.last_update != last) {
                        last = v.guest.last_update;
                        n++;
                }
        }
        return n;
}

/* A shrunk VM's guest is polled every second (its next job needs its memory back quickly, and its
 * pressure shows one report after it starts); at full size the configured period (2 s) applies. */
static void test_shrunk_vm_polled_every_second(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 4 * GiB);
        spawn_peer(f, "a", PEER_NORMAL, 1 * GiB, 0);
        start(f, 2 * USEC_PER_SEC);
        CtlVm *a = add(f, "a", 1 * GiB, 256 * MiB);
        /* Pressure at once, as in test_reclaim_and_give_back: the peer is no QEMU, and once its
         * memory map is read (a sanitizer's large mappings look like guest RAM) the plan may find
         * nothing to gain from it. */
        assert_true(run_until(f, all_known, (void *) 1, 10 * USEC_PER_SEC));
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        assert_true(run_until(f, vm_reached_below, a, 10 * USEC_PER_SEC));
        assert_true(run_until(f, vm_has_stats, a, 15 * USEC_PER_SEC));
        /* Every second: about 6 reports in 6 s; every 2 s would give at most 4. */
        unsigned fast = reports_in(f, a, 6 * USEC_PER_SEC);
        if (fast < 5)
                fail_msg("shrunk VM: %u guest reports in 6 s, want at least 5", fast);
        /* Back at full size on a calm host: the idle pace (minutes), not every second. */
        write_meminfo(f, 8 * GiB, 6 * GiB);
        assert_true(run_until(f, vm_back_full, a, 20 * USEC_PER_SEC));
        (void) reports_in(f, a, 3 * USEC_PER_SEC); /* the pace change itself */
        unsigned slow = reports_in(f, a, 6 * USEC_PER_SEC);
        if (slow > 2)
                fail_msg("full-size VM: %u guest reports in 6 s, want at most 2", slow);
}

/* ---- a scripted hypervisor ----
 * The peers above are real processes, and when the loop reads what they wrote is up to the
 * machine. This driver writes into an in-process stream instead: every answer and event has the
 * moment the hypervisor wrote it (monotonic) and is read by the loop at its first iteration after
 * that moment, in stream order. A test that does not run the loop for a while is a starved loop:
 * everything written meanwhile is read at once, late. Its guest moves as QEMU's does: the first
 * BALLOON_CHANGE 10 ms after the command, a little way on, the last one a second later (QEMU's
 * rate limit), at the target, each stamped with the time of the change. */
#define FAKE_QUEUE 256
#define FAKE_STEPS 64
#define FAKE_CMDS  64

typedef struct FakeMsg {
        usec_t due; /* monotonic: when the hypervisor wrote it */
        bool event;
        uint64_t actual;  /* the answer to get-actual, or the event's value */
        uint64_t when_rt; /* the event's timestamp (realtime usec) */
        HvOp op;
        hv_reply_cb cb;
        void *ud;
} FakeMsg;

typedef struct FakeHv {
        Hv hv;
        EvTimer *timer;
        FakeMsg q[FAKE_QUEUE];
        size_t n;
        usec_t rt_offset; /* realtime − monotonic */
        /* The guest: its size is the value of the last step at or before a moment. */
        struct {
                usec_t at;
                uint64_t actual;
        } steps[FAKE_STEPS];
        size_t n_steps;
        bool cannot_grow;   /* a guest whose balloon does not deflate */
        usec_t stats_delay; /* get-stats is answered this long after the request */
        unsigned stats_pending, stats_asked;
        uint64_t guest_available; /* reported with the guest's size as its total; 0: no figures */
        uint64_t cmd[FAKE_CMDS];  /* every target commanded, and when (monotonic) */
        usec_t cmd_at[FAKE_CMDS];
        size_t n_cmd;
} FakeHv;

static FakeHv *the_fake; /* the one scripted VM of a test */

static uint64_t fake_guest_at(const FakeHv *f, usec_t t) {
        uint64_t a = f->steps[0].actual;
        for (size_t i = 0; i < f->n_steps && f->steps[i].at <= t; i++)
                a = f->steps[i].actual;
        return a;
}

static void fake_arm(FakeHv *f) {
        ev_timer_set(f->timer, f->n ? f->q[0].due : USEC_INFINITY);
}

/* Into the stream, after everything written at or before the same moment. */
static void fake_put(FakeHv *f, const FakeMsg *m) {
        assert_true(f->n < FAKE_QUEUE);
        size_t i = f->n;
        while (i > 0 && f->q[i - 1].due > m->due)
                i--;
        memmove(f->q + i + 1, f->q + i, (f->n - i) * sizeof *f->q);
        f->q[i] = *m;
        f->n++;
        fake_arm(f);
}

static void fake_on_timer(EvTimer *t, void *userdata) {
        FakeHv *f = userdata;
        (void) t;
        usec_t now = now_mono();
        /* What is in the socket now is read now, in order; what is written while reading waits. */
        while (f->n > 0 && f->q[0].due <= now) {
                FakeMsg m = f->q[0];
                memmove(f->q, f->q + 1, (f->n - 1) * sizeof *f->q);
                f->n--;
                if (m.event) {
                        hv_notify_actual(&f->hv, m.actual, m.when_rt);
                        continue;
                }
                HvReply r = { .op = m.op, .actual = m.actual };
                hv_stats_init(&r.stats);
                if (m.op == HV_OP_GET_STATS) {
                        f->stats_pending--;
                        r.stats.last_update = (m.due + f->rt_offset) / USEC_PER_SEC;
                        if (f->guest_available) {
                                r.stats.total = fake_guest_at(f, m.due);
                                r.stats.available = r.stats.free = f->guest_available;
                        }
                }
                m.cb(&f->hv, &r, m.ud);
                if (the_fake != f)
                        return; /* freed by the callback */
        }
        fake_arm(f);
}

static int fake_reply(FakeHv *f, HvOp op, usec_t due, uint64_t actual, hv_reply_cb cb, void *ud) {
        fake_put(f, &(FakeMsg){ .due = due, .op = op, .actual = actual, .cb = cb, .ud = ud });
        return 0;
}

static int fake_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        FakeHv *f = (FakeHv *) hv;
        usec_t now = now_mono();
        (void) timeout;
        return fake_reply(f, HV_OP_GET_ACTUAL, now, fake_guest_at(f, now), cb, ud);
}

static void fake_step(FakeHv *f, usec_t at, uint64_t actual) {
        assert_true(f->n_steps < FAKE_STEPS);
        f->steps[f->n_steps].at = at;
        f->steps[f->n_steps].actual = actual;
        f->n_steps++;
        fake_put(f, &(FakeMsg){ .due = at, .event = true, .actual = actual, .when_rt = at + f->rt_offset });
}

static int fake_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *ud) {
        FakeHv *f = (FakeHv *) hv;
        usec_t now = now_mono();
        (void) timeout;
        assert_true(f->n_cmd < FAKE_CMDS);
        f->cmd[f->n_cmd] = bytes;
        f->cmd_at[f->n_cmd] = now;
        f->n_cmd++;
        /* A new command replaces the rest of the last move. */
        uint64_t cur = fake_guest_at(f, now);
        while (f->n_steps > 1 && f->steps[f->n_steps - 1].at > now)
                f->n_steps--;
        for (size_t i = 0; i < f->n;)
                if (f->q[i].event && f->q[i].due > now) {
                        memmove(f->q + i, f->q + i + 1, (f->n - i - 1) * sizeof *f->q);
                        f->n--;
                } else
                        i++;
        fake_reply(f, HV_OP_SET_TARGET, now, 0, cb, ud);
        uint64_t to = f->cannot_grow && bytes > cur ? cur : bytes;
        if (to != cur) {
                uint64_t first = to > cur ? cur + MIN(to - cur, 8 * MiB) : cur - MIN(cur - to, 8 * MiB);
                fake_step(f, now + 10 * USEC_PER_MSEC, first);
                if (first != to)
                        fake_step(f, now + USEC_PER_SEC, to);
        }
        return 0;
}

static int fake_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        FakeHv *f = (FakeHv *) hv;
        (void) timeout;
        f->stats_pending++;
        f->stats_asked++;
        return fake_reply(f, HV_OP_GET_STATS, now_mono() + f->stats_delay, 0, cb, ud);
}

static int fake_set_stats_period(Hv *hv, uint32_t s, usec_t timeout, hv_reply_cb cb, void *ud) {
        (void) s, (void) timeout;
        return fake_reply((FakeHv *) hv, HV_OP_SET_STATS_PERIOD, now_mono(), 0, cb, ud);
}

static int fake_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        (void) hv, (void) timeout, (void) cb, (void) ud;
        return -EOPNOTSUPP;
}

static void fake_cancel(Hv *hv, void *ud) {
        FakeHv *f = (FakeHv *) hv;
        for (size_t i = 0; i < f->n;)
                if (!f->q[i].event && f->q[i].ud == ud) {
                        memmove(f->q + i, f->q + i + 1, (f->n - i - 1) * sizeof *f->q);
                        f->n--;
                } else
                        i++;
}

static void fake_free(Hv *hv) {
        FakeHv *f = (FakeHv *) hv;
        ev_timer_free(f->timer);
        if (the_fake == f)
                the_fake = NULL;
        free(f);
}

static const HvOps fake_ops = {
        .name = "fake",
        .get_actual = fake_get_actual,
        .set_target = fake_set_target,
        .get_stats = fake_get_stats,
        .set_stats_period = fake_set_stats_period,
        .get_caps = fake_get_caps,
        .cancel = fake_cancel,
        .free = fake_free,
};

static usec_t fake_stats_delay;

/* The plan's batch: stored before any of it is sent (the fake's last command is not yet it). */
static void on_targets(Controller *c, CtlVm *const *vms, size_t n, void *userdata) {
        Fixture *f = userdata;
        (void) c;
        f->batches++;
        for (size_t i = 0; i < n; i++) {
                f->targets_changed++;
                if (the_fake && the_fake->n_cmd > 0 && the_fake->cmd[the_fake->n_cmd - 1] == ctl_vm_target(vms[i]))
                        f->batched_already_sent++;
        }
}

static int fake_factory(Ev *ev, const CtlVmSpec *spec, Hv **ret, char *err, size_t errlen) {
        (void) err, (void) errlen;
        FakeHv *f = calloc(1, sizeof *f);
        if (!f)
                return -ENOMEM;
        f->hv.ops = &fake_ops;
        f->hv.ev = ev;
        f->rt_offset = now_usec(CLOCK_REALTIME) - now_mono();
        f->steps[0].actual = spec->assigned;
        f->n_steps = 1;
        f->stats_delay = fake_stats_delay;
        int r = ev_timer_add(ev, USEC_INFINITY, fake_on_timer, f, &f->timer);
        if (r < 0) {
                free(f);
                return r;
        }
        the_fake = f;
        *ret = &f->hv;
        return 0;
}

static void start_fake(Fixture *f, uint32_t stats_period_s, usec_t stats_delay) {
        CtlConfig cc;
        ctl_config_default(&cc);
        cc.proc_root = f->dir;
        cc.psi_mode = -1;
        cc.op_timeout = 2 * USEC_PER_SEC;
        cc.sample_interval = 50 * USEC_PER_MSEC;
        cc.stats_period_s = stats_period_s;
        cc.plan.dwell = 0;
        fake_stats_delay = stats_delay;
        CtlHooks h = {
                .target_changed = on_target, .targets_changed = on_targets, .journal = on_journal, .userdata = f
        };
        char err[256];
        if (ctl_new(f->ev, &cc, fake_factory, &h, &f->c, err, sizeof err) < 0)
                fail_msg("ctl_new: %s", err);
}

static bool fake_commanded(Fixture *f, void *arg) {
        uint64_t t = *(const uint64_t *) arg;
        (void) f;
        return the_fake && the_fake->n_cmd > 0 && the_fake->cmd[the_fake->n_cmd - 1] == t;
}

static bool ticks_passed(Fixture *f, void *arg) {
        CtlHostView h;
        ctl_host_view(f->c, &h);
        return h.ticks >= *(const uint64_t *) arg;
}

static bool vm_stalled(Fixture *f, void *arg) {
        CtlVmView v;
        ctl_vm_view(arg, &v);
        (void) f;
        return v.stalls > 0;
}

/* Every command from the n-th on, for a failure message. */
static const char *fake_commands_from(size_t n) {
        static char buf[1024];
        size_t off = 0;
        buf[0] = '\0';
        for (size_t i = n; the_fake && i < the_fake->n_cmd && off < sizeof buf - 32; i++)
                off += (size_t) snprintf(buf + off, sizeof buf - off, "%s%llu MiB at +%.3f s", i > n ? ", " : "",
                                         (unsigned long long) (the_fake->cmd[i] / MiB),
                                         (double) (the_fake->cmd_at[i] - the_fake->cmd_at[n]) / USEC_PER_SEC);
        return buf;
}

/* A VM reclaimed in an episode, then given back when the pressure ends; returns the index of the
 * give-back command in the_fake->cmd. */
static size_t reclaim_then_give_back(Fixture *f, CtlVm *vm) {
        assert_true(run_until(f, vm_adopted, vm, 10 * USEC_PER_SEC));
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        assert_true(run_until(f, vm_reached_below, vm, 10 * USEC_PER_SEC));
        write_meminfo(f, 8 * GiB, 6 * GiB);
        uint64_t full = 1 * GiB;
        assert_true(run_until(f, fake_commanded, &full, 10 * USEC_PER_SEC));
        /* The plan's targets went through the batch hook, each stored before it was sent. */
        assert_true(f->batches >= 2);
        assert_int_equal(f->batched_already_sent, 0);
        return the_fake->n_cmd - 1;
}

/* The soak's false stall: a fleet given back at once, read by a loop busy for longer than the stall
 * window. The guest moved within a second, but its BALLOON_CHANGE events (the first one 8 MiB on,
 * 10 ms after the command) were read 3.5 s late; taken as "no progress now", the first declared the
 * VM stalled and the re-sync commanded it back down to that stale size: a reclaim nobody decided, on
 * a healthy host (the soak's 680 → 1024 → 681 MiB). The events' own timestamps say the VM moved at
 * once: no stall, and no command below the give-back. */
static void test_late_events_are_no_stall(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        start_fake(f, 0, 0);
        CtlVm *vm = add(f, "a", 1 * GiB, 256 * MiB);
        size_t gb = reclaim_then_give_back(f, vm);
        /* The loop starves: nothing is read for longer than the stall window. */
        usec_t until = the_fake->cmd_at[gb] + ctl_config(f->c)->stall_window + 500 * USEC_PER_MSEC;
        while (now_mono() < until)
                (void) usleep(20 * 1000);
        assert_true(run_until(f, vm_back_full, vm, 10 * USEC_PER_SEC));
        CtlHostView h;
        ctl_host_view(f->c, &h);
        uint64_t ticks = h.ticks + 10;
        assert_true(run_until(f, ticks_passed, &ticks, 10 * USEC_PER_SEC));
        CtlVmView v;
        ctl_vm_view(vm, &v);
        for (size_t i = gb; i < the_fake->n_cmd; i++)
                if (the_fake->cmd[i] < 1 * GiB)
                        fail_msg("a command below the give-back after the late events: %s", fake_commands_from(gb));
        if (v.stalls != 0)
                fail_msg("declared stalled %llu times though it moved at once (commands since the give-back: %s)",
                         (unsigned long long) v.stalls, fake_commands_from(gb));
}

/* A guest that really cannot grow (its balloon does not deflate) is stalled on its give-back, and
 * the re-sync leaves its target where it was decided: re-syncing it to its actual would command a
 * reclaim nobody decided. Nor does the plan's "stalled: where it is" during the back-off. */
static void test_give_back_stall_commands_no_reclaim(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        start_fake(f, 0, 0);
        CtlVm *vm = add(f, "a", 1 * GiB, 256 * MiB);
        assert_true(run_until(f, vm_adopted, vm, 10 * USEC_PER_SEC));
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        assert_true(run_until(f, vm_reached_below, vm, 10 * USEC_PER_SEC));
        the_fake->cannot_grow = true;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        uint64_t full = 1 * GiB;
        assert_true(run_until(f, fake_commanded, &full, 10 * USEC_PER_SEC));
        size_t gb = the_fake->n_cmd - 1;
        assert_true(run_until(f, vm_stalled, vm, 15 * USEC_PER_SEC));
        CtlHostView h;
        ctl_host_view(f->c, &h);
        uint64_t ticks = h.ticks + 20;
        assert_true(run_until(f, ticks_passed, &ticks, 10 * USEC_PER_SEC));
        CtlVmView v;
        ctl_vm_view(vm, &v);
        assert_int_equal(v.status, CTL_VM_STALLED);
        for (size_t i = gb; i < the_fake->n_cmd; i++)
                if (the_fake->cmd[i] < 1 * GiB)
                        fail_msg("stalled on a give-back, commanded below it: %s", fake_commands_from(gb));
        assert_true(v.target == 1 * GiB);
}

static bool reaction_measured(Fixture *f, void *arg) {
        (void) arg;
        return ctl_stats(f->c)->reaction.count > 0;
}

static bool reaction_measured_more(Fixture *f, void *arg) {
        return ctl_stats(f->c)->reaction.count > *(const uint64_t *) arg;
}

static bool fake_stats_busy(Fixture *f, void *arg) {
        (void) f, (void) arg;
        return the_fake && the_fake->stats_pending > 0;
}

/* The reaction runs from the sample that showed the need to the first reclaim command written to
 * a hypervisor, even one queued behind another call: here a statistics read that takes 600 ms.
 * Before, such a command was not counted (only those sent while the plan was applied were), and
 * the start stayed set until some later plan sent one: figures of 7-36 s in the soak. */
static void test_reaction_counts_queued_reclaim(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        start_fake(f, 1, 600 * USEC_PER_MSEC);
        CtlVm *vm = add(f, "a", 1 * GiB, 256 * MiB);
        assert_true(run_until(f, vm_adopted, vm, 10 * USEC_PER_SEC));
        /* The first read comes at the idle fleet's poll (every 5 s), after the period was set. */
        assert_true(run_until(f, fake_stats_busy, NULL, 20 * USEC_PER_SEC));
        usec_t pressure = now_mono();
        size_t before = the_fake->n_cmd;
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        if (!run_until(f, reaction_measured, NULL, 5 * USEC_PER_SEC))
                fail_msg("no reaction measured; commands since the pressure: %s",
                         before < the_fake->n_cmd ? fake_commands_from(before) : "none");
        assert_true(the_fake->n_cmd > before);
        const CtlHistogram *r = &ctl_stats(f->c)->reaction;
        double upper = (double) (the_fake->cmd_at[before] - pressure) / USEC_PER_SEC;
        assert_int_equal(r->count, 1);
        /* Written once the read returned (600 ms), not when the plan decided (within 50 ms). */
        if (!(r->sum_s >= upper - 0.2 && r->sum_s <= upper + 0.005))
                fail_msg("reaction %.3f s, but the reclaim was written %.3f s after the pressure began", r->sum_s,
                         upper);
        /* Once measured it is not measured again in the same episode. */
        assert_true(run_until(f, vm_reached_below, vm, 10 * USEC_PER_SEC));
        assert_int_equal(ctl_stats(f->c)->reaction.count, 1);
}

/* On-demand statistics (GET /v1/vms/{id}/stats) go through the VM's call cycle: answered with the
 * driver's reply, and with -ECANCELED at once when the VM is removed while the read is pending
 * (before, the API called the driver around the controller and the request was lost with it). */
typedef struct StatsAnswer {
        unsigned n;
        int error;
        usec_t at;
        uint64_t total;
} StatsAnswer;

static void on_stats_answer(Controller *c, CtlVm *vm, const HvReply *reply, void *userdata) {
        StatsAnswer *a = userdata;
        (void) c, (void) vm;
        a->n++;
        a->error = reply->error;
        a->at = now_mono();
        a->total = reply->stats.total;
}

static bool stats_answered(Fixture *f, void *arg) {
        const StatsAnswer *a = arg;
        (void) f;
        return a[0].n > 0 && a[1].n > 0;
}

static bool stats_answered_twice(Fixture *f, void *arg) {
        const StatsAnswer *a = arg;
        (void) f;
        return a[0].n > 1 || a[1].n > 1;
}

static void test_stats_on_demand_cancelled_by_remove(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        peer_stats_delay = 3 * USEC_PER_SEC;
        spawn_peer(f, "s1", PEER_NORMAL, GiB, 0);
        peer_stats_delay = 0;
        start(f, 10 * USEC_PER_SEC);
        CtlVm *vm = add(f, "s1", GiB, 0);
        assert_true(run_until(f, all_known, (void *) (uintptr_t) 1, 10 * USEC_PER_SEC));

        /* Answered with the driver's reply (held 3 s by the peer). */
        StatsAnswer a[2] = { 0 };
        assert_int_equal(ctl_vm_stats(f->c, vm, on_stats_answer, &a[0]), 0);
        assert_int_equal(ctl_vm_stats(f->c, vm, on_stats_answer, &a[1]), 0);
        assert_true(run_until(f, stats_answered, a, 20 * USEC_PER_SEC));
        assert_int_equal(a[0].n, 1);
        assert_int_equal(a[0].error, 0);
        assert_int_equal(a[1].error, 0);

        /* Removed while a read is pending: both callers hear -ECANCELED at once, exactly once. */
        memset(a, 0, sizeof a);
        assert_int_equal(ctl_vm_stats(f->c, vm, on_stats_answer, &a[0]), 0);
        assert_int_equal(ctl_vm_stats(f->c, vm, on_stats_answer, &a[1]), 0);
        usec_t removed = now_mono();
        assert_int_equal(ctl_vm_remove(f->c, "s1"), 0);
        assert_int_equal(a[0].n, 1);
        assert_int_equal(a[1].n, 1);
        assert_int_equal(a[0].error, -ECANCELED);
        assert_int_equal(a[1].error, -ECANCELED);
        assert_true(a[1].at - removed < USEC_PER_SEC);
        /* The read still in flight comes back to a VM being removed: freed then, no second answer. */
        assert_false(run_until(f, stats_answered_twice, a, 4 * USEC_PER_SEC));
        assert_int_equal(a[0].n, 1);
        assert_int_equal(a[1].n, 1);
}

typedef struct ParkAnswer {
        unsigned n;
        int error;
        char result[16];
        uint64_t target, reached;
} ParkAnswer;

static void on_park_answer(Controller *c, CtlVm *vm, const CtlParkOutcome *o, void *userdata) {
        ParkAnswer *a = userdata;
        (void) c, (void) vm;
        a->n++;
        a->error = o->error;
        snprintf(a->result, sizeof a->result, "%s", o->result ? o->result : "");
        a->target = o->target;
        a->reached = o->reached;
}

static bool park_answered(Fixture *f, void *arg) {
        (void) f;
        return ((ParkAnswer *) arg)->n > 0;
}

/* Park: the VM goes to the park size (or above it, where its guest needs it), is marked parked,
 * and stays there while the host is healthy (no give-back of a parked VM); a second park and an
 * unpark of a VM not parked are refused; unpark with wait brings it back to full size. */
static void test_park_and_unpark(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        spawn_peer(f, "p1", PEER_NORMAL, GiB, 0);
        start(f, 10 * USEC_PER_SEC);
        CtlVm *vm = add(f, "p1", GiB, 0);
        assert_true(run_until(f, all_known, (void *) (uintptr_t) 1, 10 * USEC_PER_SEC));

        ParkAnswer pa = { 0 };
        assert_int_equal(ctl_vm_unpark(f->c, vm, 0, false, 0, on_park_answer, &pa), -EALREADY);
        assert_int_equal(ctl_vm_park(f->c, vm, 256 * MiB, 20 * USEC_PER_SEC, on_park_answer, &pa), 0);
        assert_int_equal(ctl_vm_park(f->c, vm, 256 * MiB, 20 * USEC_PER_SEC, on_park_answer, &pa), -EBUSY);
        assert_true(run_until(f, park_answered, &pa, 30 * USEC_PER_SEC));
        assert_int_equal(pa.n, 1);
        assert_int_equal(pa.error, 0);
        assert_string_equal(pa.result, "reached");
        assert_true(pa.target >= 256 * MiB && pa.target < GiB);
        CtlVmView v;
        ctl_vm_view(vm, &v);
        assert_true(v.parked);
        assert_false(v.parking);
        assert_int_equal(v.status, CTL_VM_PARKED);
        assert_int_equal(v.park_previous, GiB);
        uint64_t parked_at = v.target;
        assert_true(v.actual <= parked_at + 16 * MiB);

        /* A healthy host for a second (20 samples): the parked VM is not given its memory back. */
        usec_t until = now_mono() + USEC_PER_SEC;
        while (now_mono() < until)
                assert_true(ev_run_once(f->ev, until) >= 0);
        ctl_vm_view(vm, &v);
        assert_int_equal(v.target, parked_at);
        assert_int_equal(v.last.reason, PLAN_REASON_PARKED);
        assert_int_equal(ctl_vm_park(f->c, vm, 256 * MiB, 0, on_park_answer, &pa), -EALREADY);

        ParkAnswer ua = { 0 };
        assert_int_equal(ctl_vm_unpark(f->c, vm, 0, true, 20 * USEC_PER_SEC, on_park_answer, &ua), 0);
        assert_true(run_until(f, park_answered, &ua, 30 * USEC_PER_SEC));
        assert_int_equal(ua.error, 0);
        assert_string_equal(ua.result, "reached");
        assert_int_equal(ua.target, GiB);
        ctl_vm_view(vm, &v);
        assert_false(v.parked);
        assert_true(v.unparked_until > now_mono()); /* protected for a while after the unpark */
        assert_true(vm_back_full(f, vm));
}

/* A VM removed in the middle of its park: the caller hears -ECANCELED at once, exactly once. */
static void test_park_cancelled_by_remove(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        peer_stats_delay = 3 * USEC_PER_SEC; /* the park's first step (fresh statistics) waits */
        spawn_peer(f, "p2", PEER_NORMAL, GiB, 0);
        peer_stats_delay = 0;
        start(f, 10 * USEC_PER_SEC);
        CtlVm *vm = add(f, "p2", GiB, 0);
        assert_true(run_until(f, all_known, (void *) (uintptr_t) 1, 10 * USEC_PER_SEC));
        ParkAnswer pa = { 0 };
        assert_int_equal(ctl_vm_park(f->c, vm, 256 * MiB, 20 * USEC_PER_SEC, on_park_answer, &pa), 0);
        usec_t t = now_mono() + 200 * USEC_PER_MSEC;
        while (now_mono() < t)
                assert_true(ev_run_once(f->ev, t) >= 0);
        assert_int_equal(pa.n, 0);
        assert_int_equal(ctl_vm_remove(f->c, "p2"), 0);
        assert_int_equal(pa.n, 1);
        assert_int_equal(pa.error, -ECANCELED);
        /* The statistics read still in flight comes back later: no second answer. */
        t = now_mono() + 4 * USEC_PER_SEC;
        while (now_mono() < t)
                assert_true(ev_run_once(f->ev, t) >= 0);
        assert_int_equal(pa.n, 1);
}

/* A pressure episode begins when the host leaves the healthy state, whatever the plan already
 * asked for: a VM unparked to less than its assigned size keeps the plan's automatic reclaim above
 * zero on a healthy host, and the episode used to begin only when that figure rose from zero. The
 * soak then measured 12 reactions in 60 episodes, some of them 40 s long. */
static void test_reaction_when_pressure_follows_a_held_vm(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 8 * GiB, 6 * GiB);
        spawn_peer(f, "ra", PEER_NORMAL, GiB, 0);
        spawn_peer(f, "rb", PEER_NORMAL, GiB, 0);
        start(f, 10 * USEC_PER_SEC);
        CtlVm *ra = add(f, "ra", GiB, 0);
        CtlVm *rb = add(f, "rb", GiB, 0);
        assert_true(run_until(f, all_known, (void *) (uintptr_t) 2, 10 * USEC_PER_SEC));
        ParkAnswer pa = { 0 }, ua = { 0 };
        assert_int_equal(ctl_vm_park(f->c, ra, 256 * MiB, 20 * USEC_PER_SEC, on_park_answer, &pa), 0);
        assert_true(run_until(f, park_answered, &pa, 30 * USEC_PER_SEC));
        assert_int_equal(ctl_vm_unpark(f->c, ra, 512 * MiB, true, 20 * USEC_PER_SEC, on_park_answer, &ua), 0);
        assert_true(run_until(f, park_answered, &ua, 30 * USEC_PER_SEC));
        assert_int_equal(ua.error, 0);
        /* Two healthy seconds with ra held below its size. */
        usec_t t = now_mono() + 2 * USEC_PER_SEC;
        while (now_mono() < t)
                assert_true(ev_run_once(f->ev, t) >= 0);
        uint64_t before = ctl_stats(f->c)->reaction.count;
        double sum_before = ctl_stats(f->c)->reaction.sum_s;

        usec_t pressure = now_mono();
        write_meminfo(f, 8 * GiB, 8 * GiB / 20 + 1);
        if (!run_until(f, reaction_measured_more, &before, 10 * USEC_PER_SEC))
                fail_msg("no reaction measured within 10 s of the pressure");
        const CtlHistogram *r = &ctl_stats(f->c)->reaction;
        double since = (double) (now_mono() - pressure) / USEC_PER_SEC;
        assert_int_equal(r->count, before + 1);
        if (r->sum_s - sum_before > since)
                fail_msg("reaction %.3f s, but the pressure began %.3f s ago", r->sum_s - sum_before, since);
        assert_true(run_until(f, vm_reached_below, rb, 10 * USEC_PER_SEC));
}

static bool vm_guest_pressure(Fixture *f, void *arg) {
        CtlVmView v;
        ctl_vm_view(arg, &v);
        (void) f;
        return v.guest_pressure;
}

static bool vm_guest_relaxed(Fixture *f, void *arg) {
        return !vm_guest_pressure(f, arg);
}

/* Defect 8 of the density run: a full-size VM on a healthy host that is not calm has its guest
 * statistics read every 20-30 s, and one idle VM showed "pressure, used 506 MiB" for 28 s after
 * its job ended. A guest under pressure is read at the normal period (2 s) until it is not; then
 * the idle pace comes back. */
static void test_guest_pressure_is_rechecked_at_the_normal_period(void **state) {
        Fixture *f = *state;
        /* Healthy, not calm: 25 % available (high watermark 15 %, calm from 37.5 %). */
        write_meminfo(f, 8 * GiB, 2 * GiB);
        start_fake(f, 2, 0);
        CtlVm *a = add(f, "a", GiB, 0);
        FakeHv *fk = the_fake;
        /* A job has taken the guest nearly out of memory when it first reports. */
        fk->guest_available = 16 * MiB;
        assert_true(run_until(f, vm_guest_pressure, a, 20 * USEC_PER_SEC));
        CtlVmView v;
        ctl_vm_view(a, &v);
        assert_int_equal(v.target, GiB);
        /* The job ends: seen at the next read, one period later, not 20-30 s later. */
        fk->guest_available = 600 * MiB;
        usec_t ended = now_mono();
        if (!run_until(f, vm_guest_relaxed, a, 8 * USEC_PER_SEC))
                fail_msg("the guest still shows pressure %.1f s after its job ended",
                         (double) (now_mono() - ended) / USEC_PER_SEC);
        /* Relaxed again: back to the idle pace, at most one more read in 8 s. */
        unsigned asked = fk->stats_asked;
        usec_t t = now_mono() + 8 * USEC_PER_SEC;
        while (now_mono() < t)
                assert_true(ev_run_once(f->ev, t) >= 0);
        if (fk->stats_asked > asked + 1)
                fail_msg("an idle full-size VM was read %u times in 8 s", fk->stats_asked - asked);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_reclaim_and_give_back, setup, teardown),
                cmocka_unit_test_setup_teardown(test_hung_vm_does_not_delay_others, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stall_resyncs, setup, teardown),
                cmocka_unit_test_setup_teardown(test_view_before_first_plan, setup, teardown),
                cmocka_unit_test_setup_teardown(test_dead_vm_leaves_totals, setup, teardown),
                cmocka_unit_test_setup_teardown(test_idle_stats_follow_calm, setup, teardown),
                cmocka_unit_test_setup_teardown(test_shrunk_vm_polled_every_second, setup, teardown),
                cmocka_unit_test_setup_teardown(test_time_to_target_from_the_command, setup, teardown),
                cmocka_unit_test_setup_teardown(test_late_events_are_no_stall, setup, teardown),
                cmocka_unit_test_setup_teardown(test_give_back_stall_commands_no_reclaim, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reaction_counts_queued_reclaim, setup, teardown),
                cmocka_unit_test_setup_teardown(test_stats_on_demand_cancelled_by_remove, setup, teardown),
                cmocka_unit_test_setup_teardown(test_park_and_unpark, setup, teardown),
                cmocka_unit_test_setup_teardown(test_park_cancelled_by_remove, setup, teardown),
                cmocka_unit_test_setup_teardown(test_reaction_when_pressure_follows_a_held_vm, setup, teardown),
                cmocka_unit_test_setup_teardown(test_guest_pressure_is_rechecked_at_the_normal_period, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
