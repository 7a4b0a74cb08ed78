/* SPDX-License-Identifier: MIT */
/* plan(): the pure policy (B5.2–B5.5, B5.8 holds, B5.9, B4.2). Every scenario builds a fleet, a
 * host sample and a controller state, runs plan_compute() and checks targets, reasons and totals. */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "policy/plan.h"
#include "shared/macro.h"

#define SEC USEC_PER_SEC
#define NOW (1000 * SEC)

typedef unsigned __int128 u128;

/* ---- fixture ---- */

#define SMALL 64
static PlanConfig C;
static PlanVm V[SMALL];
static PlanDecision D[SMALL];
static PlanResult R;
static PlanInput I;

static PlanVm vm_full(uint64_t assigned) {
        return (PlanVm){ .assigned = assigned, .target = assigned, .actual = assigned, .shares = 1000 };
}

/* n VMs of `assigned` bytes, a 100 GiB host at 50% available (healthy), defaults. */
static void fx(size_t n, uint64_t assigned) {
        assert_true(n <= SMALL);
        plan_config_default(&C);
        memset(V, 0, sizeof(V));
        memset(D, 0xa5, sizeof(D));
        memset(&R, 0, sizeof(R));
        for (size_t i = 0; i < n; i++) {
                V[i] = vm_full(assigned);
                V[i].id = i;
        }
        I = (PlanInput){
                .config = &C,
                .host = { .total = 100 * GiB, .available = 50 * GiB, .at = NOW },
                .vms = V,
                .n_vms = n,
                .now = NOW,
        };
}

static void run(void) {
        assert_int_equal(plan_compute(&I, NULL, D, &R), 0);
}

/* 15% of 100 GiB is exactly 15 GiB. */
static const uint64_t HIGH = 15 * GiB;

/* Host in state pressure, `gap` bytes below the high watermark. */
static void pressure_gap(uint64_t gap) {
        I.ctl.state = PLAN_STATE_PRESSURE;
        I.host.available = HIGH - gap;
}

/* Host critical (available < 5%): need = HIGH − available. */
static void critical_gap(uint64_t gap) {
        assert_true(gap > 10 * GiB);
        I.ctl.state = PLAN_STATE_CRITICAL;
        I.host.available = HIGH - gap;
}

static uint64_t reclaim_of(size_t n) {
        uint64_t s = 0;
        for (size_t i = 0; i < n; i++)
                if (!V[i].parked)
                        s += V[i].assigned - D[i].target;
        return s;
}

static uint64_t desired_reclaim_of(size_t n) {
        uint64_t s = 0;
        for (size_t i = 0; i < n; i++)
                s += V[i].assigned - D[i].desired;
        return s;
}

/* ---- B5.2 states ---- */

static void test_state_table(void **state) {
        (void) state;
        static const struct {
                PlanState prev;
                uint32_t avail_pmy;
                bool psi;
                uint32_t some, full;
                PlanState want;
        } t[] = {
                { PLAN_STATE_HEALTHY, 1200, false, 0, 0, PLAN_STATE_HEALTHY },
                { PLAN_STATE_HEALTHY, 999, false, 0, 0, PLAN_STATE_PRESSURE },
                { PLAN_STATE_HEALTHY, 1000, false, 0, 0, PLAN_STATE_HEALTHY }, /* at low: not below */
                { PLAN_STATE_HEALTHY, 1200, true, 500, 0, PLAN_STATE_PRESSURE },
                { PLAN_STATE_HEALTHY, 1200, true, 499, 0, PLAN_STATE_HEALTHY },
                { PLAN_STATE_PRESSURE, 1499, false, 0, 0, PLAN_STATE_PRESSURE },
                { PLAN_STATE_PRESSURE, 1500, true, 249, 0, PLAN_STATE_HEALTHY },
                { PLAN_STATE_PRESSURE, 1500, true, 250, 0, PLAN_STATE_PRESSURE }, /* not below half */
                { PLAN_STATE_PRESSURE, 1500, false, 0, 0, PLAN_STATE_HEALTHY },
                { PLAN_STATE_PRESSURE, 1200, false, 0, 0, PLAN_STATE_PRESSURE },
                { PLAN_STATE_HEALTHY, 499, false, 0, 0, PLAN_STATE_CRITICAL },
                { PLAN_STATE_HEALTHY, 500, false, 0, 0, PLAN_STATE_PRESSURE },
                { PLAN_STATE_PRESSURE, 1200, true, 0, 1000, PLAN_STATE_CRITICAL },
                { PLAN_STATE_PRESSURE, 1200, true, 0, 999, PLAN_STATE_PRESSURE },
                { PLAN_STATE_CRITICAL, 900, false, 0, 0, PLAN_STATE_CRITICAL }, /* below low: stays */
                { PLAN_STATE_CRITICAL, 1000, true, 0, 499, PLAN_STATE_PRESSURE },
                { PLAN_STATE_CRITICAL, 1000, true, 0, 500, PLAN_STATE_CRITICAL },
                { PLAN_STATE_CRITICAL, 1600, false, 0, 0, PLAN_STATE_HEALTHY },
                /* PSI missing: its values are ignored in both directions. */
                { PLAN_STATE_HEALTHY, 1200, false, 10000, 10000, PLAN_STATE_HEALTHY },
                { PLAN_STATE_PRESSURE, 1600, false, 10000, 10000, PLAN_STATE_HEALTHY },
                { PLAN_STATE_CRITICAL, 1600, false, 10000, 10000, PLAN_STATE_HEALTHY },
        };
        for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++) {
                fx(0, 0);
                I.host.total = 10000 * MiB;
                I.host.available = t[k].avail_pmy * MiB;
                I.host.has_psi = t[k].psi;
                I.host.psi_some_avg10 = t[k].some;
                I.host.psi_full_avg10 = t[k].full;
                I.ctl.state = t[k].prev;
                run();
                if (R.ctl.state != t[k].want)
                        fail_msg("row %zu: got %s, want %s", k, plan_state_to_string(R.ctl.state),
                                 plan_state_to_string(t[k].want));
        }
}

static void test_state_since(void **state) {
        (void) state;
        fx(0, 0);
        I.ctl = (PlanCtl){ .state = PLAN_STATE_HEALTHY, .since = 5 * SEC };
        run();
        assert_int_equal(R.ctl.since, 5 * SEC); /* no transition: kept */
        I.host.available = 1 * GiB;             /* critical */
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_CRITICAL);
        assert_int_equal(R.ctl.since, NOW);
}

/* A signal oscillating around one watermark must not flap. */
static void test_hysteresis_no_flapping(void **state) {
        (void) state;
        fx(0, 0);
        unsigned transitions = 0;
        for (int k = 0; k < 1000; k++) {
                I.host.available = 10 * GiB + (k % 2 ? MiB : 0) - (k % 2 ? 0 : MiB); /* low ± 1 MiB */
                PlanState before = I.ctl.state;
                run();
                transitions += R.ctl.state != before;
                I.ctl = R.ctl;
        }
        assert_int_equal(transitions, 1);
        assert_int_equal(I.ctl.state, PLAN_STATE_PRESSURE);

        transitions = 0;
        for (int k = 0; k < 1000; k++) {
                I.host.available = k % 2 ? HIGH + MiB : HIGH - MiB; /* around high */
                PlanState before = I.ctl.state;
                run();
                transitions += R.ctl.state != before;
                I.ctl = R.ctl;
        }
        assert_int_equal(transitions, 1);
        assert_int_equal(I.ctl.state, PLAN_STATE_HEALTHY);

        /* PSI oscillating around its threshold: enters once, never leaves while above half. */
        transitions = 0;
        I.host.available = 50 * GiB;
        I.host.has_psi = true;
        for (int k = 0; k < 1000; k++) {
                I.host.psi_some_avg10 = k % 2 ? 510 : 490;
                PlanState before = I.ctl.state;
                run();
                transitions += R.ctl.state != before;
                I.ctl = R.ctl;
        }
        assert_int_equal(transitions, 1);
        assert_int_equal(I.ctl.state, PLAN_STATE_PRESSURE);
}

static void test_psi_missing_still_plans(void **state) {
        (void) state;
        fx(2, 8 * GiB);
        I.host.has_psi = false;
        I.host.psi_some_avg10 = 10000;
        pressure_gap(1 * GiB);
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_PRESSURE);
        assert_int_equal(R.requested, 1 * GiB);
        assert_int_equal(reclaim_of(2), 1 * GiB);
}

/* ---- B5.3 target ---- */

static void test_pressure_targets_high_watermark(void **state) {
        (void) state;
        fx(4, 8 * GiB);
        pressure_gap(3 * GiB);
        run();
        assert_int_equal(R.automatic, 3 * GiB);
        assert_int_equal(R.requested, 3 * GiB);
        assert_int_equal(desired_reclaim_of(4), 3 * GiB);
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(D[i].desired, 8 * GiB - 768 * MiB);
                assert_int_equal(D[i].target, 8 * GiB - 512 * MiB); /* 1 s of rate */
                assert_int_equal(D[i].reason, PLAN_REASON_RATE_LIMITED);
                assert_int_equal(D[i].dir, -1);
        }
}

static void test_already_reclaimed_counted(void **state) {
        (void) state;
        fx(4, 8 * GiB);
        for (size_t i = 0; i < 4; i++)
                V[i].target = V[i].actual = 6 * GiB; /* 8 GiB reclaimed in effect */
        pressure_gap(2 * GiB);
        run();
        assert_int_equal(R.requested, 10 * GiB);
        assert_int_equal(desired_reclaim_of(4), 10 * GiB);
        for (size_t i = 0; i < 4; i++) {
                assert_true(D[i].target <= 6 * GiB); /* never gives back under pressure */
                assert_int_equal(D[i].target, 6 * GiB - 512 * MiB);
        }
}

static void test_in_flight_counted_once(void **state) {
        (void) state;
        fx(4, 8 * GiB);
        for (size_t i = 0; i < 4; i++) {
                V[i].target = 6 * GiB; /* sent, not reached: the host has not seen it yet */
                V[i].in_flight = true;
        }
        pressure_gap(8 * GiB);
        run();
        assert_int_equal(R.pending, (int64_t) (8 * GiB));
        assert_int_equal(R.requested, 8 * GiB); /* a double count would ask for 16 */
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(D[i].target, 6 * GiB);
                assert_int_equal(D[i].reason, PLAN_REASON_UNCHANGED);
        }

        /* Half of it landed: available rose by 4 GiB; still nothing new to do. */
        for (size_t i = 0; i < 4; i++)
                V[i].actual = 7 * GiB;
        I.host.available += 4 * GiB;
        run();
        assert_int_equal(R.pending, (int64_t) (4 * GiB));
        assert_int_equal(R.requested, 8 * GiB);
        for (size_t i = 0; i < 4; i++)
                assert_int_equal(D[i].target, 6 * GiB);
}

/* A protected VM deflating in flight will consume host memory: the others make up for it. */
static void test_in_flight_give_back_counted(void **state) {
        (void) state;
        fx(3, 8 * GiB);
        V[0].target = 8 * GiB;
        V[0].actual = 4 * GiB;
        V[0].in_flight = true;
        V[0].unparked_until = NOW + 10 * SEC;
        pressure_gap(1 * GiB);
        run();
        assert_int_equal(R.pending, -(int64_t) (4 * GiB));
        assert_int_equal(R.requested, 5 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_PROTECTED);
        assert_int_equal(D[0].target, 8 * GiB);
        assert_int_equal(D[1].desired + D[2].desired, 16 * GiB - 5 * GiB);
}

/* Closed loop with 1:1 conversion: available reaches the high watermark and stays (hypeman's
 * proportional-on-absolute-error rule settles halfway, at (low + A0) / 2). */
static void test_no_half_gap_closed_loop(void **state) {
        (void) state;
        fx(8, 4 * GiB);
        I.host.total = 64 * GiB;
        const uint64_t a0 = 5 * GiB, high = 64 * GiB * 15 / 100;
        usec_t now = NOW;
        uint64_t last_targets[8] = { 0 };
        int settled_at = -1;

        for (int tick = 0; tick < 200; tick++) {
                uint64_t reclaimed = 0;
                for (size_t i = 0; i < 8; i++)
                        reclaimed += V[i].assigned - V[i].actual;
                I.host.available = a0 + reclaimed;
                I.host.at = I.now = now;
                run();
                I.ctl = R.ctl;
                bool moved = false;
                for (size_t i = 0; i < 8; i++) {
                        if (D[i].dir) {
                                V[i].last_dir = D[i].dir;
                                V[i].last_move = now;
                                moved = true;
                        }
                        V[i].target = V[i].actual = D[i].target; /* instant guest */
                }
                if (!moved && settled_at < 0)
                        settled_at = tick;
                if (settled_at >= 0) {
                        assert_false(moved); /* once settled, nothing moves again */
                        for (size_t i = 0; i < 8; i++)
                                assert_int_equal(V[i].target, settled_at == tick ? V[i].target : last_targets[i]);
                }
                for (size_t i = 0; i < 8; i++)
                        last_targets[i] = V[i].target;
                now += 250 * USEC_PER_MSEC;
        }
        assert_true(settled_at > 0 && settled_at < 20);
        assert_true(I.host.available >= high);
        assert_true(I.host.available < high + 64 * MiB);
        assert_int_equal(I.ctl.state, PLAN_STATE_HEALTHY);
}

static void test_gap_closed_in_one_plan(void **state) {
        (void) state;
        fx(1, 8 * GiB);
        pressure_gap(256 * MiB);
        run();
        assert_int_equal(D[0].target, 8 * GiB - 256 * MiB);
        assert_int_equal(D[0].reason, PLAN_REASON_RECLAIM);
        assert_int_equal(R.planned, R.requested);

        /* Four VMs, each asked for exactly one second's rate (512 MiB): the whole 2 GiB gap in
         * one plan, none of it rate-limited, nothing left for the next plan. */
        fx(4, 8 * GiB);
        pressure_gap(2 * GiB);
        run();
        assert_int_equal(R.requested, 2 * GiB);
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(D[i].target, 8 * GiB - 512 * MiB);
                assert_int_equal(D[i].reason, PLAN_REASON_RECLAIM);
        }
        assert_int_equal(R.planned, 2 * GiB);

        /* One byte more per VM than the rate allows: 512 MiB each, marked rate-limited. */
        fx(4, 8 * GiB);
        pressure_gap(2 * GiB + 4);
        run();
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(D[i].target, 8 * GiB - 512 * MiB);
                assert_int_equal(D[i].reason, PLAN_REASON_RATE_LIMITED);
        }
}

static void test_healthy_gives_back_slack_only(void **state) {
        (void) state;
        fx(4, 8 * GiB);
        for (size_t i = 0; i < 4; i++)
                V[i].target = V[i].actual = 7 * GiB; /* 4 GiB reclaimed */
        I.host.available = HIGH + 1 * GiB;
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_HEALTHY);
        assert_int_equal(R.requested, 3 * GiB);
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(D[i].target, 7 * GiB + 256 * MiB);
                assert_int_equal(D[i].reason, PLAN_REASON_GIVE_BACK);
        }
}

static void test_healthy_between_watermarks_freezes(void **state) {
        (void) state;
        fx(4, 8 * GiB);
        for (size_t i = 0; i < 4; i++)
                V[i].target = V[i].actual = 7 * GiB;
        I.host.available = 12 * GiB; /* healthy, between low and high */
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_HEALTHY);
        assert_int_equal(R.requested, 4 * GiB);
        for (size_t i = 0; i < 4; i++) {
                assert_int_equal(D[i].target, 7 * GiB);
                assert_int_equal(D[i].reason, PLAN_REASON_UNCHANGED);
        }
}

static void test_give_back_faster_than_take(void **state) {
        (void) state;
        fx(1, 16 * GiB);
        V[0].target = V[0].actual = 8 * GiB;
        V[0].last_dir = -1;
        V[0].last_move = NOW - 10 * SEC;
        run(); /* healthy, lots of room */
        uint64_t give = D[0].target - 8 * GiB;
        assert_int_equal(D[0].reason, PLAN_REASON_RATE_LIMITED);

        fx(1, 16 * GiB);
        pressure_gap(8 * GiB);
        V[0].last_move = NOW - 10 * SEC;
        run();
        uint64_t take = 16 * GiB - D[0].target;
        assert_int_equal(take, 512 * MiB);
        assert_int_equal(give, 1 * GiB);
        assert_true(give > take);
}

/* ---- B5.8 holds ---- */

static void test_hold_on_healthy_host(void **state) {
        (void) state;
        fx(4, 8 * GiB);
        I.host.available = HIGH; /* healthy, no slack, no need */
        I.hold = (PlanHold){ .bytes = 2 * GiB, .until = NOW + 60 * SEC };
        run();
        assert_int_equal(R.automatic, 0);
        assert_int_equal(R.hold, 2 * GiB);
        assert_int_equal(R.requested, 2 * GiB);
        assert_int_equal(R.planned, 2 * GiB);
        for (size_t i = 0; i < 4; i++)
                assert_int_equal(D[i].reason, PLAN_REASON_HOLD);
}

static void test_hold_combines_by_max(void **state) {
        (void) state;
        static const struct {
                uint64_t gap, hold, want;
        } t[] = {
                { 3 * GiB, 5 * GiB, 5 * GiB }, /* hold wins: 5, not 3 + 5 */
                { 5 * GiB, 3 * GiB, 5 * GiB }, /* pressure wins: 5, not 5 + 3 */
                { 4 * GiB, 4 * GiB, 4 * GiB }, /* equal: 4, not 8 */
                { 0, 1 * GiB, 1 * GiB },       /* hold alone */
                { 2 * GiB, 0, 2 * GiB },       /* pressure alone */
        };
        for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++) {
                fx(4, 8 * GiB);
                pressure_gap(t[k].gap);
                I.hold = (PlanHold){ .bytes = t[k].hold, .until = NOW + SEC };
                run();
                if (R.requested != t[k].want || desired_reclaim_of(4) != t[k].want)
                        fail_msg("row %zu: requested %" PRIu64 " desired %" PRIu64, k, R.requested,
                                 desired_reclaim_of(4));
                bool hold_wins = t[k].hold > t[k].gap;
                for (size_t i = 0; i < 4; i++)
                        if (D[i].desired < D[i].target || D[i].target < V[i].target)
                                assert_true((D[i].reason == PLAN_REASON_HOLD) == hold_wins ||
                                            D[i].reason == PLAN_REASON_RATE_LIMITED);
        }
}

static void test_hold_expiry(void **state) {
        (void) state;
        fx(2, 8 * GiB);
        for (size_t i = 0; i < 2; i++) {
                V[i].target = V[i].actual = 7 * GiB;
                V[i].last_dir = -1;
                V[i].last_move = NOW - 60 * SEC;
        }
        I.host.available = 40 * GiB; /* plenty of slack */
        I.hold = (PlanHold){ .bytes = 2 * GiB, .until = NOW + 1 };
        run();
        assert_int_equal(R.hold, 2 * GiB);
        assert_int_equal(R.requested, 2 * GiB);
        assert_int_equal(D[0].target, 7 * GiB);
        assert_int_equal(D[1].target, 7 * GiB);

        I.hold.until = NOW; /* expired exactly now */
        run();
        assert_int_equal(R.hold, 0);
        assert_int_equal(R.requested, 0);
        assert_int_equal(D[0].target, 8 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_GIVE_BACK);

        I.hold = (PlanHold){ .bytes = 0, .until = NOW + 3600 * SEC }; /* bytes 0: no hold */
        run();
        assert_int_equal(R.hold, 0);
}

static void test_hold_ignores_parked_reclaim(void **state) {
        (void) state;
        fx(3, 8 * GiB);
        V[0].parked = true;
        V[0].target = V[0].actual = 128 * MiB;
        I.host.available = HIGH;
        I.hold = (PlanHold){ .bytes = 1 * GiB, .until = NOW + SEC };
        run();
        assert_int_equal(R.requested, 1 * GiB);
        assert_int_equal(R.planned, 1 * GiB); /* the parked VM's 7.9 GiB does not count */
        assert_int_equal(D[0].target, 128 * MiB);
        assert_int_equal(D[0].reason, PLAN_REASON_PARKED);
}

/* ---- B5.4 split ---- */

static void test_split_two_16g_12g_exact(void **state) {
        (void) state;
        fx(2, 16 * GiB);
        critical_gap(12 * GiB); /* available 3 GiB: critical, no rate limit */
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_CRITICAL);
        assert_int_equal(R.requested, 12 * GiB);
        assert_int_equal(D[0].target, 10 * GiB);
        assert_int_equal(D[1].target, 10 * GiB);
        assert_int_equal(reclaim_of(2), 12 * GiB);
        assert_int_equal(R.planned, 12 * GiB);
        assert_int_equal(R.shortfall, 0);

        /* Same split from a hold on a healthy host (25% floors = 4 GiB leave 12 GiB of headroom
         * each). 12 GiB × 12 GiB is past 2^63: a 64-bit product would wrap here (hypeman's int64 split does). */
        fx(2, 16 * GiB);
        I.hold = (PlanHold){ .bytes = 12 * GiB, .until = NOW + SEC };
        I.host.available = HIGH;
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_HEALTHY);
        assert_int_equal(D[0].floor, 4 * GiB);
        assert_int_equal(D[0].desired, 10 * GiB);
        assert_int_equal(D[1].desired, 10 * GiB);
        assert_int_equal(desired_reclaim_of(2), 12 * GiB);
        assert_int_equal(R.shortfall, 0);
}

static void test_split_odd_bytes_exact(void **state) {
        (void) state;
        fx(3, 16 * GiB);
        I.host.available = HIGH;
        I.hold = (PlanHold){ .bytes = 10 * GiB + 1, .until = NOW + SEC };
        run();
        assert_int_equal(desired_reclaim_of(3), 10 * GiB + 1);
        uint64_t lo = UINT64_MAX, hi = 0;
        for (size_t i = 0; i < 3; i++) {
                lo = D[i].desired < lo ? D[i].desired : lo;
                hi = D[i].desired > hi ? D[i].desired : hi;
        }
        assert_true(hi - lo <= 1);
}

static void test_split_shares_weighted(void **state) {
        (void) state;
        /* Shares are a claim on contested memory: 2:1 shares keep 2:1 bytes above the floor. */
        fx(2, 16 * GiB);
        V[0].shares = 2000;
        I.host.available = HIGH;
        I.hold = (PlanHold){ .bytes = 12 * GiB, .until = NOW + SEC };
        run();
        assert_int_equal(D[0].desired - D[0].floor, 8 * GiB);
        assert_int_equal(D[1].desired - D[1].floor, 4 * GiB);

        I.hold.bytes = 6 * GiB; /* keep 18 GiB: 12 (all of VM 0's headroom) + 6 */
        run();
        assert_int_equal(D[0].desired, 16 * GiB);
        assert_int_equal(D[1].desired, 10 * GiB);
}

static void test_split_small_vm_saturates(void **state) {
        (void) state;
        fx(2, 0);
        V[0] = vm_full(4 * GiB + 1 * GiB);
        V[1] = vm_full(40 * GiB);
        /* Only the configured floors count. The hard floor fraction must go too: a hard floor
         * above the normal one is an incoherent config (plan_config_validate: -EINVAL). */
        C.floor_pmy = C.hard_floor_pmy = 0;
        V[0].floor = 4 * GiB; /* headroom 1 GiB */
        V[1].floor = 9 * GiB; /* headroom 31 GiB */
        I.host.available = HIGH;
        I.hold = (PlanHold){ .bytes = 2 * GiB, .until = NOW + SEC };
        run();
        assert_int_equal(D[0].floor, 4 * GiB);
        assert_int_equal(D[1].floor, 9 * GiB);
        /* Keep 30 GiB at equal shares: the level (29 GiB) is above VM 0's 1 GiB of headroom, so
         * VM 0 keeps everything and VM 1 gives the whole 2 GiB (an equal split would be 1 + 1). */
        assert_int_equal(D[0].desired, 5 * GiB);
        assert_int_equal(D[1].desired, 38 * GiB);
        assert_int_equal(desired_reclaim_of(2), 2 * GiB);

        /* Keep less than twice VM 0's headroom: now neither saturates and the keep is equal. */
        I.hold.bytes = 31 * GiB; /* keep 1 GiB: 512 MiB each */
        run();
        assert_int_equal(D[0].desired, 4 * GiB + 512 * MiB);
        assert_int_equal(D[1].desired, 9 * GiB + 512 * MiB);
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ULL;
static uint64_t rnd(void) { /* xorshift64*: fixed seed, reproducible */
        rnd_state ^= rnd_state >> 12;
        rnd_state ^= rnd_state << 25;
        rnd_state ^= rnd_state >> 27;
        return rnd_state * 0x2545f4914f6cdd1dULL;
}
static uint64_t rnd_range(uint64_t lo, uint64_t hi) {
        return lo + rnd() % (hi - lo + 1);
}

/* Max-min fairness certificate of a weighted water fill: for every VM j still below its headroom
 * and every VM i, (keep_i − 1)/s_i < (keep_j + 1)/s_j. Plus exactness and bounds. */
static void check_fill(const PlanVm *vms, const PlanDecision *d, size_t n, uint64_t reclaim) {
        u128 sum = 0;
        for (size_t i = 0; i < n; i++) {
                assert_true(d[i].desired >= d[i].floor);
                assert_true(d[i].desired <= vms[i].assigned);
                sum += vms[i].assigned - d[i].desired;
        }
        assert_true(sum == reclaim);
        for (size_t j = 0; j < n; j++) {
                if (d[j].desired == vms[j].assigned)
                        continue;
                u128 kj = d[j].desired - d[j].floor;
                for (size_t i = 0; i < n; i++) {
                        u128 ki = d[i].desired - d[i].floor;
                        if (ki == 0)
                                continue;
                        if (!((ki - 1) * vms[j].shares < (kj + 1) * vms[i].shares))
                                fail_msg("unfair: vm %zu keeps %llu (s %u), vm %zu keeps %llu (s %u)", i,
                                         (unsigned long long) ki, vms[i].shares, j, (unsigned long long) kj,
                                         vms[j].shares);
                }
        }
}

static void test_split_fair_random(void **state) {
        (void) state;
        for (int round = 0; round < 300; round++) {
                size_t n = (size_t) rnd_range(1, SMALL);
                fx(n, 0);
                uint64_t head = 0;
                for (size_t i = 0; i < n; i++) {
                        V[i] = vm_full(rnd_range(64, 64 * 1024) * MiB + rnd_range(0, 4095));
                        V[i].shares = (uint32_t) (rnd() % 4 == 0 ? rnd_range(1, UINT32_MAX) : rnd_range(1, 5000));
                        V[i].floor = rnd_range(0, V[i].assigned);
                }
                I.host.total = UINT64_C(1) << 50;
                I.host.available = I.host.total; /* healthy, slack: automatic 0 */
                I.hold = (PlanHold){ .bytes = 1, .until = NOW + SEC };
                run(); /* learn the floors */
                for (size_t i = 0; i < n; i++)
                        head += V[i].assigned - D[i].floor;
                I.hold.bytes = rnd_range(1, head + head / 8); /* sometimes more than fits */
                run();
                uint64_t placed = I.hold.bytes < head ? I.hold.bytes : head;
                check_fill(V, D, n, placed);
                assert_int_equal(R.shortfall, I.hold.bytes - placed);
        }
}

/* Breakpoints closer than the sort key's precision (here 2^-64 apart) must still be ordered
 * exactly, or a VM would be filled past its headroom. */
static void test_split_key_ties_exact(void **state) {
        (void) state;
        const size_t n = 24;
        fx(n, 0);
        C.floor_pmy = C.hard_floor_pmy = 0;
        u128 total = 0;
        for (size_t i = 0; i < n; i++) {
                size_t k = (i * 7) % n; /* scrambled order */
                uint32_t s = UINT32_MAX - (uint32_t) k;
                V[i] = vm_full((uint64_t) 256 * s + 1); /* b = 256 + 1/s */
                V[i].shares = s;
                total += V[i].assigned;
        }
        I.host.total = UINT64_C(1) << 60;
        I.host.available = I.host.total;
        for (int round = 0; round < 200; round++) {
                I.hold = (PlanHold){ .bytes = rnd_range(1, (uint64_t) total - 1), .until = NOW + SEC };
                run();
                check_fill(V, D, n, I.hold.bytes);
        }
}

static void test_floor_table(void **state) {
        (void) state;
        static const struct {
                uint64_t cfg;
                bool fresh;
                uint64_t used;
                bool critical;
                uint64_t want;
        } t[] = {
                { 0, false, 0, false, 2 * GiB },                  /* 25% of 8 GiB */
                { 3 * GiB, false, 0, false, 3 * GiB },            /* configured wins */
                { 0, true, 3 * GiB, false, 3 * GiB + 128 * MiB }, /* guest use + margin */
                { 0, false, 3 * GiB, false, 2 * GiB },            /* stale stats ignored */
                { 0, true, 1 * GiB, false, 2 * GiB },             /* fraction wins */
                { 0, true, 9 * GiB, false, 8 * GiB },             /* never above assigned */
                { 20 * GiB, false, 0, false, 8 * GiB },           /* configured above assigned */
                { 0, false, 0, true, (8 * GiB + 9) / 10 },        /* hard: ceil(10% of 8 GiB) */
                { 3 * GiB, false, 0, true, 3 * GiB },             /* configured honoured in critical */
                { 0, true, 3 * GiB, true, 3 * GiB + 32 * MiB },   /* critical keeps a quarter of the margin */
        };
        for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++) {
                fx(1, 8 * GiB);
                V[0].floor = t[k].cfg;
                V[0].guest_fresh = t[k].fresh;
                V[0].guest_used = t[k].used;
                if (t[k].critical)
                        I.host.available = 1 * GiB;
                run();
                if (D[0].floor != t[k].want)
                        fail_msg("row %zu: floor %" PRIu64 ", want %" PRIu64, k, D[0].floor, t[k].want);
        }
}

static void test_critical_hard_floors_no_rate_limit(void **state) {
        (void) state;
        uint64_t hard = (8 * GiB + 9) / 10; /* ceil(10%) */

        /* Need 14 GiB; the hard floors leave 2 × 7.2 GiB of headroom, so the need fits: 7 GiB from
         * each in one plan, below the 25% floor (2 GiB) but not below the hard one, and no more
         * than the need (going to the hard floors would overshoot the high watermark). */
        fx(2, 8 * GiB);
        pressure_gap(14 * GiB); /* 1 GiB available: critical */
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_CRITICAL);
        assert_int_equal(R.requested, 14 * GiB);
        for (size_t i = 0; i < 2; i++) {
                assert_int_equal(D[i].floor, hard);
                assert_int_equal(D[i].target, 1 * GiB); /* 7 GiB in one plan: 14× the 1 s rate */
                assert_int_equal(D[i].reason, PLAN_REASON_RECLAIM);
                assert_int_equal(D[i].dir, -1);
        }
        assert_int_equal(R.planned, 14 * GiB);
        assert_int_equal(R.shortfall, 0);

        /* Need 15 GiB (nothing available): more than the headroom. Both go to the hard floor,
         * 7.2 GiB each in one plan, and the rest is reported as shortfall. */
        fx(2, 8 * GiB);
        pressure_gap(15 * GiB);
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_CRITICAL);
        assert_int_equal(R.requested, 15 * GiB);
        for (size_t i = 0; i < 2; i++) {
                assert_int_equal(D[i].floor, hard);
                assert_int_equal(D[i].target, hard);
                assert_int_equal(D[i].reason, PLAN_REASON_FLOOR);
        }
        assert_int_equal(R.planned, 2 * (8 * GiB - hard));
        assert_int_equal(R.shortfall, 15 * GiB - 2 * (8 * GiB - hard));

        /* The same need in plain pressure (available just above critical): 25% floors, 512 MiB steps. */
        fx(2, 8 * GiB);
        pressure_gap(9 * GiB); /* 6 GiB = 6%: pressure */
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_PRESSURE);
        for (size_t i = 0; i < 2; i++) {
                assert_int_equal(D[i].floor, 2 * GiB);
                assert_int_equal(D[i].target, 8 * GiB - 512 * MiB);
        }
}

static void check_floors_kept(const PlanVm *vms, const PlanDecision *d, size_t n) {
        for (size_t i = 0; i < n; i++) {
                uint64_t old = vms[i].target < vms[i].assigned ? vms[i].target : vms[i].assigned;
                assert_true(d[i].target <= vms[i].assigned);
                if (vms[i].parked || d[i].reason == PLAN_REASON_PROTECTED) {
                        assert_int_equal(d[i].target, old);
                        continue;
                }
                if (d[i].reason == PLAN_REASON_STALLED)
                        continue;
                /* Never pushed below the floor; a VM already below it only goes up. */
                if (d[i].target < d[i].floor && d[i].target < old)
                        fail_msg("vm %zu crossed its floor: %" PRIu64 " < %" PRIu64 " (was %" PRIu64 ")", i,
                                 d[i].target, d[i].floor, old);
        }
}

static void test_floors_never_crossed_random(void **state) {
        (void) state;
        for (int round = 0; round < 500; round++) {
                size_t n = (size_t) rnd_range(1, SMALL);
                fx(n, 0);
                for (size_t i = 0; i < n; i++) {
                        PlanVm *v = V + i;
                        *v = vm_full(rnd_range(128, 32 * 1024) * MiB);
                        v->shares = (uint32_t) rnd_range(1, 10000);
                        v->floor = rnd() % 3 ? rnd_range(0, v->assigned) : 0;
                        v->target = rnd_range(0, v->assigned);
                        v->actual = rnd() % 2 ? v->target : rnd_range(0, v->assigned);
                        v->in_flight = rnd() % 4 == 0;
                        v->last_dir = (int8_t) (rnd_range(0, 2) - 1);
                        v->last_move = rnd() % 2 ? 0 : NOW - rnd_range(0, 20 * SEC);
                        v->parked = rnd() % 10 == 0;
                        v->unparked_until = rnd() % 10 == 0 ? NOW + SEC : 0;
                        v->stalled_until = rnd() % 10 == 0 ? NOW + SEC : 0;
                        v->guest_fresh = rnd() % 2;
                        v->guest_used = rnd_range(0, v->assigned);
                        v->guest_pressure = rnd() % 8 == 0;
                }
                I.host.total = rnd_range(1, 1024) * GiB;
                I.host.available = rnd_range(0, I.host.total);
                I.host.has_psi = rnd() % 2;
                I.host.psi_some_avg10 = (uint32_t) rnd_range(0, 2000);
                I.host.psi_full_avg10 = (uint32_t) rnd_range(0, 2000);
                I.ctl.state = (PlanState) rnd_range(0, 2);
                if (rnd() % 3 == 0)
                        I.hold = (PlanHold){ .bytes = rnd_range(0, 64 * GiB), .until = NOW + SEC };
                run();
                check_floors_kept(V, D, n);
                assert_true(R.planned == reclaim_of(n));
        }
}

static void test_10000_vms(void **state) {
        (void) state;
        const size_t n = 10000;
        PlanVm *vms = calloc(n, sizeof(*vms));
        PlanDecision *d = calloc(n, sizeof(*d));
        PlanScratch *s = plan_scratch_new(n);
        assert_non_null(vms);
        assert_non_null(d);
        assert_non_null(s);
        plan_config_default(&C);
        C.dead_band = 0;
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++) {
                vms[i] = vm_full(rnd_range(256, 16 * 1024) * MiB);
                vms[i].shares = (uint32_t) rnd_range(100, 10000);
                vms[i].floor = rnd() % 2 ? rnd_range(0, vms[i].assigned / 2) : 0;
                vms[i].guest_fresh = rnd() % 2;
                vms[i].guest_used = rnd_range(0, vms[i].assigned);
                sum += vms[i].assigned;
        }
        PlanInput in = {
                .config = &C,
                .host = { .total = sum, .available = sum / 50, .at = NOW }, /* 2%: critical */
                .vms = vms,
                .n_vms = n,
                .now = NOW,
        };
        PlanResult r;
        assert_int_equal(plan_compute(&in, s, d, &r), 0);
        assert_int_equal(r.ctl.state, PLAN_STATE_CRITICAL);
        uint64_t need = (sum * 15 + 99) / 100 - sum / 50; /* to the high watermark */
        assert_true(r.requested >= need && r.requested <= need + 1);
        assert_int_equal(r.shortfall, 0);
        uint64_t got = 0;
        for (size_t i = 0; i < n; i++)
                got += vms[i].assigned - d[i].target;
        assert_int_equal(got, r.requested);
        assert_int_equal(r.planned, r.requested);
        check_floors_kept(vms, d, n);

        /* Under pressure instead, desired still sums exactly (targets are rate-limited). */
        in.host.available = sum / 12; /* 8.3% */
        assert_int_equal(plan_compute(&in, s, d, &r), 0);
        assert_int_equal(r.ctl.state, PLAN_STATE_PRESSURE);
        got = 0;
        for (size_t i = 0; i < n; i++)
                got += vms[i].assigned - d[i].desired;
        assert_int_equal(got, r.requested);
        check_floors_kept(vms, d, n);

        plan_scratch_free(s);
        free(vms);
        free(d);
}

static void test_all_at_floor_shortfall(void **state) {
        (void) state;
        fx(3, 8 * GiB);
        for (size_t i = 0; i < 3; i++)
                V[i].target = V[i].actual = 2 * GiB; /* the 25% floor */
        pressure_gap(2 * GiB);
        run();
        assert_int_equal(R.requested, 18 * GiB + 2 * GiB);
        assert_int_equal(R.desired, 18 * GiB);
        assert_int_equal(R.shortfall, 2 * GiB);
        for (size_t i = 0; i < 3; i++) {
                assert_int_equal(D[i].target, 2 * GiB);
                assert_int_equal(D[i].reason, PLAN_REASON_FLOOR);
        }
}

static void test_zero_vms(void **state) {
        (void) state;
        fx(0, 0);
        I.vms = NULL;
        pressure_gap(1 * GiB);
        assert_int_equal(plan_compute(&I, NULL, NULL, &R), 0);
        assert_int_equal(R.ctl.state, PLAN_STATE_PRESSURE);
        assert_int_equal(R.requested, 1 * GiB);
        assert_int_equal(R.planned, 0);
        assert_int_equal(R.shortfall, 1 * GiB);
}

static void test_overflow_sized_vms(void **state) {
        (void) state;
        const uint64_t big = PLAN_BYTES_MAX;
        fx(3, big);
        V[0].shares = 1;
        V[1].shares = 2;
        V[2].shares = UINT32_MAX;
        C.floor_pmy = 3333;
        I.host.total = UINT64_MAX;
        I.host.available = UINT64_MAX;
        I.hold = (PlanHold){ .bytes = big + 12345, .until = NOW + SEC };
        run();
        check_fill(V, D, 3, big + 12345);
        /* shares 1 and 2 keep almost nothing: VM 2 holds nearly all of the contested memory */
        assert_true(D[2].desired - D[2].floor > D[0].desired - D[0].floor);

        I.hold.bytes = 3 * (big - D[0].floor); /* everything */
        run();
        for (size_t i = 0; i < 3; i++)
                assert_int_equal(D[i].desired, D[i].floor);
        assert_int_equal(R.shortfall, 0);

        /* Four legal VMs add up to 2^64: the fleet is still planned (totals saturate), and one VM
         * of that size must not stop the controller for everyone. */
        fx(4, big);
        I.host.total = UINT64_MAX;
        I.host.available = UINT64_MAX / 2;
        I.hold = (PlanHold){ .bytes = 2 * GiB, .until = NOW + SEC };
        assert_int_equal(plan_compute(&I, NULL, D, &R), 0);
        assert_int_equal(R.requested, 2 * GiB);
        assert_int_equal(desired_reclaim_of(4), 2 * GiB);
        pressure_gap(0);
        I.host.total = UINT64_MAX;
        I.host.available = UINT64_MAX / 100; /* critical: a need near 2^64 */
        assert_int_equal(plan_compute(&I, NULL, D, &R), 0);
        assert_int_equal(R.ctl.state, PLAN_STATE_CRITICAL);
        assert_true(R.need > 0);
        assert_int_equal(R.planned, (uint64_t) R.need); /* no rate limit in critical: all of it, exact */
        assert_int_equal(R.shortfall, 0);
        fx(1, big + 1);
        assert_int_equal(plan_compute(&I, NULL, D, &R), -ERANGE);
}

/* ---- skipped VMs ---- */

static void test_parked_untouched(void **state) {
        (void) state;
        fx(3, 8 * GiB);
        V[0].parked = true;
        V[0].target = V[0].actual = 128 * MiB;
        V[0].guest_pressure = true;
        critical_gap(11 * GiB);
        run();
        assert_int_equal(D[0].target, 128 * MiB);
        assert_int_equal(D[0].reason, PLAN_REASON_PARKED);
        assert_int_equal(D[1].target + D[2].target, 16 * GiB - 11 * GiB);
        assert_int_equal(R.planned, 11 * GiB);
}

static void test_protected_skipped_then_eligible(void **state) {
        (void) state;
        fx(3, 8 * GiB);
        V[0].unparked_until = NOW + 1;
        critical_gap(12 * GiB);
        run();
        assert_int_equal(D[0].target, 8 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_PROTECTED);
        assert_int_equal(D[1].target, 2 * GiB);
        assert_int_equal(D[2].target, 2 * GiB);

        V[0].unparked_until = NOW; /* protection over */
        run();
        for (size_t i = 0; i < 3; i++)
                assert_int_equal(D[i].target, 4 * GiB);
}

static void test_stalled_skipped_resynced(void **state) {
        (void) state;
        fx(3, 8 * GiB);
        V[0].target = 4 * GiB;
        V[0].actual = 6 * GiB;
        V[0].in_flight = true;
        V[0].stalled_until = NOW + 3 * SEC;
        critical_gap(12 * GiB);
        run();
        assert_int_equal(D[0].target, 6 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_STALLED);
        assert_int_equal(D[0].dir, 1);
        assert_int_equal(R.pending, 0); /* its in-flight reclaim is not counted on */
        /* The host needs 12 GiB more than it has now. VM 0's 2 GiB (8 → 6) are already in effect,
         * hence already in the 3 GiB available: they add to the requested total (14 GiB) but
         * cover none of the need. Its missing 2 GiB (6 → 4) go to the others, 6 GiB each. */
        assert_int_equal(R.requested, 14 * GiB);
        assert_int_equal(D[1].target, 2 * GiB);
        assert_int_equal(D[2].target, 2 * GiB);
        assert_int_equal(reclaim_of(3), 14 * GiB);
        assert_int_equal(R.shortfall, 0);

        /* Back-off over: VM 0 takes part again and its in-flight 2 GiB count as pending. */
        I.now = I.host.at = NOW + 3 * SEC;
        run();
        assert_int_not_equal(D[0].reason, PLAN_REASON_STALLED);
        assert_int_equal(R.pending, (int64_t) (2 * GiB));
        assert_int_equal(R.requested, 14 * GiB);
        assert_true(D[0].desired < 4 * GiB); /* an equal third of 14 GiB: 8 − 4⅔ GiB */
        assert_int_equal(desired_reclaim_of(3), 14 * GiB);
}

static void test_guest_pressure_deflates_at_once(void **state) {
        (void) state;
        fx(3, 8 * GiB);
        V[0].target = V[0].actual = 4 * GiB;
        V[0].guest_pressure = true;
        V[0].last_dir = -1;
        V[0].last_move = NOW - 1; /* dwell and rate would both forbid this */
        pressure_gap(0);
        run();
        assert_int_equal(D[0].target, 8 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_GUEST_PRESSURE);
        assert_int_equal(D[0].dir, 1);
        /* Its 4 GiB of reclaim moves to the others (the host has no room for it). */
        assert_int_equal(R.requested, 4 * GiB);
        assert_int_equal(D[1].desired + D[2].desired, 16 * GiB - 4 * GiB);
}

static void test_guest_pressure_gives_last_in_critical(void **state) {
        (void) state;
        uint64_t hard = (8 * GiB + 9) / 10;
        fx(2, 8 * GiB);
        V[0].guest_pressure = true;
        critical_gap(11 * GiB);
        run();
        /* VM 1 goes to its hard floor before VM 0 gives anything. */
        assert_int_equal(D[1].target, hard);
        assert_int_equal(D[0].target, 16 * GiB - hard - 11 * GiB);

        /* Critical by PSI with a smaller need: VM 1 alone gives it. */
        fx(2, 8 * GiB);
        V[0].guest_pressure = true;
        I.host.available = HIGH - 5 * GiB;
        I.host.has_psi = true;
        I.host.psi_full_avg10 = 2000;
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_CRITICAL);
        assert_int_equal(D[0].target, 8 * GiB);
        assert_int_equal(D[1].target, 3 * GiB);
}

/* A guest under pressure outside critical gets its memory back at once, paid for by the VMs that
 * can really return memory. */
static void test_guest_pressure_gets_back_first(void **state) {
        (void) state;
        fx(2, 8 * GiB);
        for (size_t i = 0; i < 2; i++)
                V[i].target = V[i].actual = 4 * GiB; /* 8 GiB reclaimed */
        V[0].guest_pressure = true;
        pressure_gap(0); /* at the high watermark: no need of its own */
        run();
        assert_int_equal(D[0].target, 8 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_GUEST_PRESSURE);
        assert_int_equal(R.emergency, 4 * GiB);
        /* VM 1 pays what it can (down to its 25% floor); the rest is reported, not forced. */
        assert_int_equal(D[1].desired, 2 * GiB);
        assert_int_equal(R.shortfall, 2 * GiB);
}

/* Several guests in emergency at once may not take more than the host can give: what lies above
 * the low watermark plus what the others can return. Raising them all to full pushed a host from
 * pressure to critical in a second, and into OOM kills. */
static void test_emergencies_bounded_by_host(void **state) {
        (void) state;
        fx(4, 8 * GiB);
        for (size_t i = 0; i < 4; i++) {
                V[i].target = V[i].actual = 4 * GiB;
                V[i].resident = 2 * GiB; /* nothing above the 25% floor to return */
        }
        for (size_t i = 0; i < 3; i++)
                V[i].guest_pressure = true;
        I.ctl.state = PLAN_STATE_PRESSURE;
        I.host.available = 11 * GiB; /* 1 GiB above the low watermark (10 GiB) */
        run();
        uint64_t raised = 0;
        for (size_t i = 0; i < 3; i++) {
                assert_int_equal(D[i].reason, PLAN_REASON_GUEST_PRESSURE);
                assert_true(D[i].target >= 4 * GiB);
                raised += D[i].target - 4 * GiB;
        }
        assert_int_equal(raised, 1 * GiB);
        assert_int_equal(R.emergency, 1 * GiB);
        assert_int_equal(D[3].target, 4 * GiB); /* it has nothing to give: not squeezed */
        assert_int_equal(D[3].reason, PLAN_REASON_NO_GAIN);

        /* With a VM that can return memory, the budget grows by what it returns, and it pays. */
        V[3].resident = 4 * GiB; /* 2 GiB above its floor */
        run();
        raised = 0;
        for (size_t i = 0; i < 3; i++)
                raised += D[i].target - 4 * GiB;
        assert_int_equal(raised, 3 * GiB);
        assert_int_equal(D[3].desired, 2 * GiB);
}

/* A hypervisor that rounds in the guest's favour reports an actual above the target (Firecracker:
 * MiB): give-back must still reach full size, not stop one MiB short inside the dead band. */
static void test_give_back_reaches_full_despite_rounding(void **state) {
        (void) state;
        fx(2, 1 * GiB);
        for (size_t i = 0; i < 2; i++) {
                V[i].target = 1000 * MiB;
                V[i].actual = 1001 * MiB;
                V[i].last_dir = 1;
                V[i].last_move = NOW - 2 * SEC;
        }
        run(); /* healthy, half the host available */
        for (size_t i = 0; i < 2; i++) {
                assert_int_equal(D[i].desired, 1 * GiB);
                assert_int_equal(D[i].target, 1 * GiB);
                assert_int_equal(D[i].reason, PLAN_REASON_GIVE_BACK);
        }
}

/* ---- admission hint ---- */

static void test_capacity_table(void **state) {
        (void) state;
        PlanConfig c;
        plan_config_default(&c); /* low watermark 10% */
        static const struct {
                uint64_t total, available, returnable, size, overhead, fit_free, fit;
        } t[] = {
                { 1536 * MiB, 1536 * MiB, 0, 512 * MiB, 0, 2, 2 },
                { 1536 * MiB, 700 * MiB, 0, 512 * MiB, 0, 1, 1 },
                { 1536 * MiB, 700 * MiB, 600 * MiB, 512 * MiB, 0, 1, 2 },
                { 1536 * MiB, 100 * MiB, 600 * MiB, 512 * MiB, 0, 0, 1 }, /* below the watermark: free 0 */
                { 1536 * MiB, 9 * GiB, 0, 512 * MiB, 0, 2, 2 },           /* available counts up to total */
                /* QEMU under TCG keeps ~115 MiB beside guest RAM: a VM costs 627 MiB, not 512. */
                { 1536 * MiB, 1536 * MiB, 0, 512 * MiB, 115 * MiB, 2, 2 },         /* 1382 / 627 */
                { 1536 * MiB, 1536 * MiB, 400 * MiB, 512 * MiB, 115 * MiB, 2, 2 }, /* 1782 / 627: not 3 */
                { 1536 * MiB, 700 * MiB, 0, 512 * MiB, 115 * MiB, 0, 0 },          /* 546 / 627: not 1 */
                { UINT64_MAX, UINT64_MAX, UINT64_MAX, 1, 0, UINT64_MAX - (UINT64_MAX / 10 + 1),
                  UINT64_MAX },                                                       /* saturates */
                { UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, 0, 0 }, /* 128-bit cost */
        };
        for (size_t k = 0; k < sizeof t / sizeof t[0]; k++) {
                PlanCapacity cap;
                assert_int_equal(
                        plan_capacity(&c, t[k].total, t[k].available, t[k].returnable, t[k].size, t[k].overhead, &cap),
                        0);
                uint64_t reserve = (uint64_t) (((u128) t[k].total * 1000 + 9999) / 10000);
                uint64_t avail = t[k].available < t[k].total ? t[k].available : t[k].total;
                assert_true(cap.reserve == reserve);
                assert_true(cap.free == (avail > reserve ? avail - reserve : 0));
                if (cap.fit_free != t[k].fit_free)
                        fail_msg("row %zu: fit_free %" PRIu64 ", want %" PRIu64, k, cap.fit_free, t[k].fit_free);
                if (cap.fit != t[k].fit)
                        fail_msg("row %zu: fit %" PRIu64 ", want %" PRIu64, k, cap.fit, t[k].fit);
        }
        PlanCapacity cap;
        assert_int_equal(plan_capacity(&c, 0, 1, 1, 1, 0, &cap), -EINVAL);
        assert_int_equal(plan_capacity(&c, 1, 1, 1, 0, 0, &cap), -EINVAL);
        assert_int_equal(plan_capacity(NULL, 1, 1, 1, 1, 0, &cap), -EINVAL);
        assert_true(plan_floor(&c, 512 * MiB, 0) == 128 * MiB);
        assert_true(plan_floor(&c, 512 * MiB, 300 * MiB) == 300 * MiB);
        assert_true(plan_floor(&c, 512 * MiB, 1 * GiB) == 512 * MiB);
}

/* ---- host-side gain ---- */

/* Shrinking a guest returns only what the host holds for it: the VM with the most resident memory
 * gives, the one whose free memory free page reporting already returned is not asked. */
static void test_reclaim_follows_host_gain(void **state) {
        (void) state;
        fx(2, 8 * GiB);
        V[0].resident = 2 * GiB + 512 * MiB; /* idle, reported: 512 MiB above its 2 GiB floor */
        V[1].resident = 7 * GiB;             /* page cache: 5 GiB above its floor */
        critical_gap(11 * GiB);
        I.host.available = HIGH - 3 * GiB;
        I.ctl.state = PLAN_STATE_PRESSURE;
        run();
        assert_int_equal(R.returnable, 512 * MiB + 5 * GiB);
        assert_int_equal(D[0].returnable, 512 * MiB);
        assert_int_equal(D[1].returnable, 5 * GiB);
        /* Water filling over what each can return: VM 0 keeps its 512 MiB (below the level) and is
         * left at full size instead of being squeezed through memory that gives nothing back. */
        assert_int_equal(D[0].desired, 8 * GiB);
        assert_int_equal(D[1].desired, 4 * GiB);
        uint64_t gain = 0;
        for (size_t i = 0; i < 2; i++)
                gain += D[i].desired < V[i].resident ? V[i].resident - D[i].desired : 0;
        assert_int_equal(gain, 3 * GiB);
        assert_int_equal(R.need, (int64_t) (3 * GiB));
}

/* Free page reporting has already returned the idle guests' free memory: inflating them frees
 * nothing, so the gap never closes. The plan must not lower targets tick after tick to the floors
 * (409 → 744 → 1,057 MiB commanded for a 131 MiB gap); it says no VM can return anything. */
static void test_no_gain_not_squeezed(void **state) {
        (void) state;
        fx(4, 512 * MiB);
        I.host.total = 2 * GiB;
        for (size_t i = 0; i < 4; i++) {
                V[i].resident = 150 * MiB; /* below what the floor keeps: nothing to return */
                V[i].guest_fresh = true;
                V[i].guest_used = 60 * MiB; /* floor = 188 MiB */
        }
        I.ctl.state = PLAN_STATE_PRESSURE;
        I.host.available = 2 * GiB * 15 / 100 - 131 * MiB;
        for (int tick = 0; tick < 10; tick++) {
                I.now = I.host.at = NOW + (usec_t) tick * SEC;
                run();
                for (size_t i = 0; i < 4; i++) {
                        assert_int_equal(D[i].target, 512 * MiB);
                        assert_int_equal(D[i].reason, PLAN_REASON_NO_GAIN);
                        assert_int_equal(D[i].returnable, 0);
                }
                assert_int_equal(R.planned, 0);
                assert_true(R.shortfall >= 131 * MiB);
                I.ctl = R.ctl;
        }
}

/* On a healthy host only slack is given back: no VM is shrunk to pay another's give-back (a frozen
 * total re-split took 512 → 456 → 386 → 351 MiB from a VM at 286 MiB available, 230 MiB high). */
static void test_healthy_never_takes(void **state) {
        (void) state;
        fx(2, 8 * GiB);
        V[0].target = V[0].actual = 6 * GiB; /* 2 GiB reclaimed */
        V[0].last_move = NOW - 60 * SEC;
        I.host.available = HIGH + 1 * GiB;
        run();
        assert_int_equal(R.ctl.state, PLAN_STATE_HEALTHY);
        assert_int_equal(D[0].target, 7 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_GIVE_BACK);
        assert_int_equal(D[1].target, 8 * GiB);
        assert_int_equal(D[1].dir, 0);
        for (int round = 0; round < 200; round++) {
                size_t n = (size_t) rnd_range(1, SMALL);
                fx(n, 0);
                for (size_t i = 0; i < n; i++) {
                        V[i] = vm_full(rnd_range(128, 32 * 1024) * MiB);
                        V[i].shares = (uint32_t) rnd_range(1, 10000);
                        V[i].target = V[i].actual = rnd_range(V[i].assigned / 4, V[i].assigned);
                        V[i].resident = rnd() % 2 ? rnd_range(0, V[i].assigned) : 0;
                }
                I.host.total = 64 * GiB;
                I.host.available = rnd_range(10 * GiB, 64 * GiB);
                run();
                if (R.ctl.state != PLAN_STATE_HEALTHY)
                        continue;
                for (size_t i = 0; i < n; i++)
                        if (D[i].target < V[i].target)
                                fail_msg("round %d: vm %zu shrunk on a healthy host", round, i);
        }
}

/* ---- B5.5 shaping ---- */

static void test_dead_band(void **state) {
        (void) state;
        fx(1, 8 * GiB);
        /* Under pressure a need smaller than the band is still met: split over many VMs, every
         * piece would be below it and the host would never get its memory. */
        pressure_gap(16 * MiB);
        run();
        assert_int_equal(D[0].target, 8 * GiB - 16 * MiB);
        assert_int_equal(D[0].reason, PLAN_REASON_RECLAIM);
        assert_int_equal(D[0].dir, -1);

        /* Three VMs, 60 MiB needed: 20 MiB each, all below the band, all made. */
        fx(3, 8 * GiB);
        pressure_gap(60 * MiB);
        run();
        uint64_t sum = 0;
        for (size_t i = 0; i < 3; i++) {
                assert_true(D[i].target < 8 * GiB);
                assert_true(8 * GiB - D[i].target < 32 * MiB);
                sum += 8 * GiB - D[i].target;
        }
        assert_int_equal(sum, 60 * MiB);

        /* A hold on a healthy host: its last pieces are made too, below the band. */
        fx(3, 8 * GiB);
        for (size_t i = 0; i < 3; i++)
                V[i].target = V[i].actual = 8 * GiB - 700 * MiB;
        I.hold = (PlanHold){ .bytes = 2100 * MiB + 60 * MiB, .until = NOW + 60 * SEC };
        run();
        uint64_t held = 0;
        for (size_t i = 0; i < 3; i++)
                held += 8 * GiB - D[i].target;
        assert_int_equal(held, 2160 * MiB);

        fx(1, 8 * GiB);
        pressure_gap(32 * MiB);
        run();
        assert_int_equal(D[0].target, 8 * GiB - 32 * MiB);
        assert_int_equal(D[0].reason, PLAN_REASON_RECLAIM);
}

static void test_dead_band_exact_ends(void **state) {
        (void) state;
        fx(1, 8 * GiB);
        V[0].target = V[0].actual = 2 * GiB + 16 * MiB; /* 16 MiB above the floor */
        pressure_gap(1 * GiB);
        run();
        assert_int_equal(D[0].target, 2 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_FLOOR);

        fx(1, 8 * GiB);
        V[0].target = V[0].actual = 8 * GiB - 16 * MiB; /* 16 MiB below full, lots of room */
        run();
        assert_int_equal(D[0].target, 8 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_GIVE_BACK);

        fx(1, 8 * GiB);
        V[0].target = V[0].actual = 8 * GiB - 48 * MiB;
        I.host.available = HIGH + 16 * MiB; /* slack 16 MiB: not full, not a floor */
        run();
        assert_int_equal(D[0].target, 8 * GiB - 48 * MiB);
        assert_int_equal(D[0].reason, PLAN_REASON_DEAD_BAND);
}

static void test_rate_limit_window(void **state) {
        (void) state;
        static const struct {
                usec_t ago; /* since the VM last moved; 0 = never */
                uint64_t step;
        } t[] = {
                { 0, 512 * MiB },                           /* never moved: a full window */
                { 250 * USEC_PER_MSEC, 128 * MiB },         /* one tick */
                { 10 * USEC_PER_MSEC, 0 },                  /* 5 MiB: below the band, waits (a command per plan) */
                { 70 * USEC_PER_MSEC, 35 * MiB + 880803 },  /* past the band: 512 MiB/s × 0.07 s */
                { 10 * SEC, 512 * MiB },                    /* capped at rate_window_max */
                { 100 * USEC_PER_MSEC, 51 * MiB + 209715 }, /* 512 MiB/s × 0.1 s, floored */
        };
        for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++) {
                fx(1, 16 * GiB);
                pressure_gap(4 * GiB);
                V[0].last_dir = -1;
                V[0].last_move = t[k].ago ? NOW - t[k].ago : 0;
                run();
                if (16 * GiB - D[0].target != t[k].step)
                        fail_msg("row %zu: step %" PRIu64 ", want %" PRIu64, k, 16 * GiB - D[0].target, t[k].step);
                assert_int_equal(D[0].reason, PLAN_REASON_RATE_LIMITED);
        }
}

/* A rate that allows less than the dead band even over a full window still moves, a full
 * window's worth at a time (the band would otherwise stop it for good). */
static void test_slow_rate_below_the_band(void **state) {
        (void) state;
        static const struct {
                usec_t ago;
                uint64_t step;
        } t[] = {
                { 500 * USEC_PER_MSEC, 0 }, /* 8 MiB: less than a full window's 16, waits */
                { 2 * SEC, 16 * MiB },      /* a full window: 16 MiB, below the 32 MiB band */
        };
        for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++) {
                fx(1, 16 * GiB);
                C.rate_take = 16 * MiB;
                pressure_gap(4 * GiB);
                V[0].last_dir = -1;
                V[0].last_move = NOW - t[k].ago;
                run();
                if (16 * GiB - D[0].target != t[k].step)
                        fail_msg("row %zu: step %" PRIu64 ", want %" PRIu64, k, 16 * GiB - D[0].target, t[k].step);
                assert_int_equal(D[0].reason, PLAN_REASON_RATE_LIMITED);
        }
}

static void test_step_gain(void **state) {
        (void) state;
        fx(1, 16 * GiB);
        C.step_gain_pmy = 5000;
        pressure_gap(400 * MiB);
        run();
        assert_int_equal(16 * GiB - D[0].target, 200 * MiB); /* half the error */
        assert_int_equal(D[0].reason, PLAN_REASON_RATE_LIMITED);

        pressure_gap(40 * MiB);
        run();
        assert_int_equal(16 * GiB - D[0].target, 32 * MiB); /* never below the dead band */
}

static void test_dwell(void **state) {
        (void) state;
        static const struct {
                int8_t last_dir;
                usec_t ago;
                bool moves;
        } t[] = {
                { -1, 1 * SEC, false },     /* reversal too soon */
                { -1, 5 * SEC - 1, false }, /* 1 µs short */
                { -1, 5 * SEC, true },      /* dwell elapsed */
                { +1, 1 * SEC, true },      /* same direction */
                { 0, 1 * SEC, true },       /* no history */
        };
        for (size_t k = 0; k < sizeof(t) / sizeof(t[0]); k++) {
                fx(1, 8 * GiB);
                V[0].target = V[0].actual = 6 * GiB;
                V[0].last_dir = t[k].last_dir;
                V[0].last_move = NOW - t[k].ago;
                run(); /* healthy with room: wants to give back */
                if ((D[0].target > 6 * GiB) != t[k].moves)
                        fail_msg("row %zu: target %" PRIu64, k, D[0].target);
                if (!t[k].moves)
                        assert_int_equal(D[0].reason, PLAN_REASON_DWELL);
        }
}

static void test_dwell_exemptions(void **state) {
        (void) state;
        /* Critical reclaim does not wait. */
        fx(2, 8 * GiB);
        for (size_t i = 0; i < 2; i++) {
                V[i].last_dir = +1;
                V[i].last_move = NOW - 1;
        }
        critical_gap(11 * GiB);
        run();
        assert_true(D[0].target < 8 * GiB);
        assert_int_not_equal(D[0].reason, PLAN_REASON_DWELL);

        /* A VM below its floor is raised even right after going down. */
        fx(1, 8 * GiB);
        V[0].target = V[0].actual = 1 * GiB;
        V[0].last_dir = -1;
        V[0].last_move = NOW - 2 * SEC;
        pressure_gap(0);
        I.host.available = HIGH - 1; /* pressure: nothing is given back except to the floor */
        run();
        assert_int_equal(D[0].target, 2 * GiB);
        assert_int_equal(D[0].reason, PLAN_REASON_FLOOR);
}

static void test_floor_raise_after_critical_rate_limited(void **state) {
        (void) state;
        fx(1, 32 * GiB);
        uint64_t hard = (32 * GiB + 9) / 10;
        V[0].target = V[0].actual = hard;
        V[0].last_dir = -1;
        V[0].last_move = NOW - SEC / 2;
        pressure_gap(1 * GiB); /* back to pressure: floor 8 GiB again */
        run();
        assert_int_equal(D[0].floor, 8 * GiB);
        assert_int_equal(D[0].target, hard + 512 * MiB); /* give rate × 0.5 s */
        assert_int_equal(D[0].reason, PLAN_REASON_RATE_LIMITED);
        assert_int_equal(D[0].dir, 1);
}

/* ---- interface ---- */

static void test_config_validation(void **state) {
        (void) state;
        const char *field = NULL;
        PlanConfig c;
        plan_config_default(&c);
        assert_int_equal(plan_config_validate(&c, &field), 0);

        struct {
                const char *field;
                PlanConfig c;
        } bad[12];
        size_t nb = 0;
#define BAD(f, stmt)                                                                                                   \
        do {                                                                                                           \
                bad[nb].field = f;                                                                                     \
                plan_config_default(&bad[nb].c);                                                                       \
                PlanConfig *p = &bad[nb].c;                                                                            \
                stmt;                                                                                                  \
                nb++;                                                                                                  \
        } while (0)
        BAD("high_pmy", p->high_pmy = 10001);
        BAD("low_pmy", p->low_pmy = 1500);
        BAD("critical_pmy", p->critical_pmy = 1001);
        BAD("psi_some_pmy", p->psi_some_pmy = 0);
        BAD("psi_full_pmy", p->psi_full_pmy = 10001);
        BAD("rate_take", p->rate_take = 0);
        BAD("rate_give", p->rate_give = p->rate_take - 1);
        BAD("rate_window_max", p->rate_window_max = 0);
        BAD("step_gain_pmy", p->step_gain_pmy = 0);
        BAD("floor_pmy", p->floor_pmy = 10001);
        BAD("hard_floor_pmy", p->hard_floor_pmy = 2501);
        BAD("sample_max_age", p->sample_max_age = 0);
        for (size_t k = 0; k < nb; k++) {
                field = NULL;
                assert_int_equal(plan_config_validate(&bad[k].c, &field), -EINVAL);
                assert_string_equal(field, bad[k].field);
                fx(1, GiB);
                I.config = &bad[k].c;
                assert_int_equal(plan_compute(&I, NULL, D, &R), -EINVAL);
        }
}

static void test_input_errors_write_nothing(void **state) {
        (void) state;
        PlanScratch *s = plan_scratch_new(1);
        assert_non_null(s);
        PlanDecision before[SMALL];

        fx(2, 8 * GiB);
        memcpy(before, D, sizeof(D));
        R.requested = 777;
        assert_int_equal(plan_compute(&I, s, D, &R), -ENOBUFS);
        I.host.at = NOW - 2 * SEC - 1;
        assert_int_equal(plan_compute(&I, NULL, D, &R), -ESTALE);
        I.host.at = NOW;
        V[1].shares = 0;
        assert_int_equal(plan_compute(&I, NULL, D, &R), -EINVAL);
        V[1].shares = 1;
        I.host.total = 0;
        assert_int_equal(plan_compute(&I, NULL, D, &R), -EINVAL);
        I.host.total = GiB;
        assert_int_equal(plan_compute(NULL, NULL, D, &R), -EINVAL);
        assert_int_equal(plan_compute(&I, NULL, NULL, &R), -EINVAL);
        assert_int_equal(plan_compute(&I, NULL, D, NULL), -EINVAL);
        assert_memory_equal(before, D, sizeof(D));
        assert_int_equal(R.requested, 777);

        I.host.at = NOW - 2 * SEC; /* exactly the max age is fine */
        assert_int_equal(plan_compute(&I, NULL, D, &R), 0);
        plan_scratch_free(s);
        assert_null(plan_scratch_free(NULL));
}

static void assert_decision_equal(size_t i, const PlanDecision *a, const PlanDecision *b) {
        if (a->target != b->target || a->desired != b->desired || a->floor != b->floor || a->reason != b->reason ||
            a->dir != b->dir)
                fail_msg("vm %zu: (%" PRIu64 ", %" PRIu64 ", %" PRIu64 ", %s, %d) != (%" PRIu64 ", %" PRIu64
                         ", %" PRIu64 ", %s, %d)",
                         i, a->target, a->desired, a->floor, plan_reason_to_string(a->reason), a->dir, b->target,
                         b->desired, b->floor, plan_reason_to_string(b->reason), b->dir);
}

static void assert_result_equal(const PlanResult *a, const PlanResult *b) {
        assert_int_equal(a->ctl.state, b->ctl.state);
        assert_int_equal(a->ctl.since, b->ctl.since);
        assert_int_equal(a->automatic, b->automatic);
        assert_int_equal(a->hold, b->hold);
        assert_int_equal(a->requested, b->requested);
        assert_int_equal(a->desired, b->desired);
        assert_int_equal(a->planned, b->planned);
        assert_int_equal(a->shortfall, b->shortfall);
        assert_int_equal(a->pending, b->pending);
}

static void test_scratch_matches_no_scratch(void **state) {
        (void) state;
        PlanScratch *s = plan_scratch_new(SMALL);
        PlanDecision d2[SMALL];
        PlanResult r2;
        for (int round = 0; round < 50; round++) {
                size_t n = (size_t) rnd_range(1, SMALL);
                fx(n, 0);
                for (size_t i = 0; i < n; i++) {
                        V[i] = vm_full(rnd_range(1, 8192) * MiB);
                        V[i].shares = (uint32_t) rnd_range(1, 3);
                }
                critical_gap(rnd_range(11, 15) * GiB);
                run();
                /* Poison the copy so a field left unwritten shows up. */
                memset(d2, 0x5a, sizeof(d2));
                memset(&r2, 0x5a, sizeof(r2));
                assert_int_equal(plan_compute(&I, s, d2, &r2), 0);
                /* Field by field: padding bytes are not part of the result. */
                for (size_t i = 0; i < n; i++)
                        assert_decision_equal(i, D + i, d2 + i);
                assert_result_equal(&R, &r2);
        }
        plan_scratch_free(s);
}

static void test_enum_strings(void **state) {
        (void) state;
        for (int i = 0; i < _PLAN_STATE_MAX; i++) {
                assert_non_null(plan_state_to_string(i));
                assert_int_equal(plan_state_from_string(plan_state_to_string(i)), i);
        }
        for (int i = 0; i < _PLAN_REASON_MAX; i++) {
                assert_non_null(plan_reason_to_string(i));
                assert_int_equal(plan_reason_from_string(plan_reason_to_string(i)), i);
        }
        assert_string_equal(plan_reason_to_string(PLAN_REASON_GIVE_BACK), "give-back");
        assert_int_equal(plan_state_from_string("calm"), _PLAN_STATE_INVALID);
        assert_int_equal(plan_reason_from_string(NULL), _PLAN_REASON_INVALID);
        assert_null(plan_state_to_string(_PLAN_STATE_MAX));
        assert_null(plan_reason_to_string(-1));
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_state_table),
                cmocka_unit_test(test_state_since),
                cmocka_unit_test(test_hysteresis_no_flapping),
                cmocka_unit_test(test_psi_missing_still_plans),
                cmocka_unit_test(test_pressure_targets_high_watermark),
                cmocka_unit_test(test_already_reclaimed_counted),
                cmocka_unit_test(test_in_flight_counted_once),
                cmocka_unit_test(test_in_flight_give_back_counted),
                cmocka_unit_test(test_no_half_gap_closed_loop),
                cmocka_unit_test(test_gap_closed_in_one_plan),
                cmocka_unit_test(test_healthy_gives_back_slack_only),
                cmocka_unit_test(test_healthy_between_watermarks_freezes),
                cmocka_unit_test(test_give_back_faster_than_take),
                cmocka_unit_test(test_hold_on_healthy_host),
                cmocka_unit_test(test_hold_combines_by_max),
                cmocka_unit_test(test_hold_expiry),
                cmocka_unit_test(test_hold_ignores_parked_reclaim),
                cmocka_unit_test(test_split_two_16g_12g_exact),
                cmocka_unit_test(test_split_odd_bytes_exact),
                cmocka_unit_test(test_split_shares_weighted),
                cmocka_unit_test(test_split_small_vm_saturates),
                cmocka_unit_test(test_split_fair_random),
                cmocka_unit_test(test_split_key_ties_exact),
                cmocka_unit_test(test_floor_table),
                cmocka_unit_test(test_critical_hard_floors_no_rate_limit),
                cmocka_unit_test(test_floors_never_crossed_random),
                cmocka_unit_test(test_10000_vms),
                cmocka_unit_test(test_all_at_floor_shortfall),
                cmocka_unit_test(test_zero_vms),
                cmocka_unit_test(test_overflow_sized_vms),
                cmocka_unit_test(test_parked_untouched),
                cmocka_unit_test(test_protected_skipped_then_eligible),
                cmocka_unit_test(test_stalled_skipped_resynced),
                cmocka_unit_test(test_guest_pressure_deflates_at_once),
                cmocka_unit_test(test_guest_pressure_gives_last_in_critical),
                cmocka_unit_test(test_guest_pressure_gets_back_first),
                cmocka_unit_test(test_emergencies_bounded_by_host),
                cmocka_unit_test(test_reclaim_follows_host_gain),
                cmocka_unit_test(test_no_gain_not_squeezed),
                cmocka_unit_test(test_healthy_never_takes),
                cmocka_unit_test(test_give_back_reaches_full_despite_rounding),
                cmocka_unit_test(test_capacity_table),
                cmocka_unit_test(test_dead_band),
                cmocka_unit_test(test_dead_band_exact_ends),
                cmocka_unit_test(test_rate_limit_window),
                cmocka_unit_test(test_slow_rate_below_the_band),
                cmocka_unit_test(test_step_gain),
                cmocka_unit_test(test_dwell),
                cmocka_unit_test(test_dwell_exemptions),
                cmocka_unit_test(test_floor_raise_after_critical_rate_limited),
                cmocka_unit_test(test_config_validation),
                cmocka_unit_test(test_input_errors_write_nothing),
                cmocka_unit_test(test_scratch_matches_no_scratch),
                cmocka_unit_test(test_enum_strings),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
