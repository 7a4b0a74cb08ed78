/* SPDX-License-Identifier: MIT */
/* guest_assess() (src/control/guest-assess.c): what a guest's statistics say, case by case from a
 * table: freshness, pressure from swap-in, major faults or a nearly empty guest, the verdict kept
 * without a new report, and the non-reclaimable use (kept across a change of size). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "control/guest-assess.h"
#include "shared/macro.h"

#define NOW 1000000u /* realtime seconds */
#define U   HV_STAT_UNSET
#define G   (1024 * MiB)

typedef struct Case {
        const char *name;
        /* The previous assessment (have false: none). */
        bool prev_have, prev_fresh, prev_pressure;
        uint64_t prev_used, prev_update, prev_swap_in, prev_faults;
        /* The report. */
        uint64_t total, available, update, swap_in, faults;
        uint32_t period_s;
        uint64_t actual, actual_changed;
        /* Expected. */
        bool have, fresh, pressure;
        uint64_t used;
} Case;

static const Case cases[] = {
        { "no report yet (unset totals)", .total = U, .available = U, .update = 0, .swap_in = U, .faults = U,
          .period_s = 2, .actual = G, .have = false, .fresh = false, .pressure = false, .used = 0 },
        { "first fresh report: used = actual - available", .total = 990 * MiB, .available = 700 * MiB,
          .update = NOW - 1, .swap_in = 0, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = true,
          .used = G - 700 * MiB },
        { "three periods old plus one second: still fresh", .total = 990 * MiB, .available = 700 * MiB,
          .update = NOW - 7, .swap_in = 0, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = true,
          .used = G - 700 * MiB },
        { "older: stale, no use, no pressure", .total = 990 * MiB, .available = 10 * MiB, .update = NOW - 8,
          .swap_in = 0, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = false, .used = 0 },
        { "nearly out (available < total/32)", .total = 960 * MiB, .available = 29 * MiB, .update = NOW, .swap_in = 0,
          .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = true, .pressure = true,
          .used = G - 29 * MiB },
        { "swap-in grew 4 MiB since the last report", .prev_have = true, .prev_fresh = true, .prev_update = NOW - 2,
          .prev_swap_in = 10 * MiB, .prev_faults = 0, .total = 990 * MiB, .available = 500 * MiB, .update = NOW,
          .swap_in = 14 * MiB, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = true, .pressure = true,
          .used = G - 500 * MiB },
        { "swap-in grew less than 4 MiB", .prev_have = true, .prev_fresh = true, .prev_update = NOW - 2,
          .prev_swap_in = 10 * MiB, .prev_faults = 0, .total = 990 * MiB, .available = 500 * MiB, .update = NOW,
          .swap_in = 14 * MiB - 1, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = true,
          .pressure = false, .used = G - 500 * MiB },
        { "major faults 200 per period second", .prev_have = true, .prev_fresh = true, .prev_update = NOW - 2,
          .prev_swap_in = 0, .prev_faults = 1000, .total = 990 * MiB, .available = 500 * MiB, .update = NOW,
          .swap_in = 0, .faults = 1400, .period_s = 2, .actual = G, .have = true, .fresh = true, .pressure = true,
          .used = G - 500 * MiB },
        { "major faults below that", .prev_have = true, .prev_fresh = true, .prev_update = NOW - 2, .prev_swap_in = 0,
          .prev_faults = 1000, .total = 990 * MiB, .available = 500 * MiB, .update = NOW, .swap_in = 0, .faults = 1399,
          .period_s = 2, .actual = G, .have = true, .fresh = true, .used = G - 500 * MiB },
        { "unset counters never count", .prev_have = true, .prev_fresh = true, .prev_update = NOW - 2,
          .prev_swap_in = U, .prev_faults = U, .total = 990 * MiB, .available = 500 * MiB, .update = NOW,
          .swap_in = 100 * MiB, .faults = 100000, .period_s = 2, .actual = G, .have = true, .fresh = true,
          .used = G - 500 * MiB },
        { "no new report: the last verdict stays", .prev_have = true, .prev_fresh = true, .prev_pressure = true,
          .prev_update = NOW - 1, .prev_swap_in = 0, .prev_faults = 0, .total = 990 * MiB, .available = 500 * MiB,
          .update = NOW - 1, .swap_in = 0, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = true,
          .pressure = true, .used = G - 500 * MiB },
        { "a stale report drops the verdict", .prev_have = true, .prev_fresh = true, .prev_pressure = true,
          .prev_update = NOW - 20, .prev_swap_in = 0, .prev_faults = 0, .total = 990 * MiB, .available = 500 * MiB,
          .update = NOW - 20, .swap_in = 0, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = false,
          .pressure = false, .used = 0 },
        { "report from before the size changed: the last use stays", .prev_have = true, .prev_fresh = true,
          .prev_used = 90 * MiB, .prev_update = NOW - 3, .prev_swap_in = 0, .prev_faults = 0, .total = 98 * MiB,
          .available = 38 * MiB, .update = NOW - 1, .swap_in = 0, .faults = 0, .period_s = 2, .actual = G,
          .actual_changed = NOW - 1, .have = true, .fresh = true, .used = 90 * MiB },
        { "report after the size changed: measured anew", .prev_have = true, .prev_fresh = true, .prev_used = 90 * MiB,
          .prev_update = NOW - 3, .prev_swap_in = 0, .prev_faults = 0, .total = 990 * MiB, .available = 900 * MiB,
          .update = NOW, .swap_in = 0, .faults = 0, .period_s = 2, .actual = G, .actual_changed = NOW - 1, .have = true,
          .fresh = true, .used = G - 900 * MiB },
        { "available above actual (deflate-on-oom frame): no use", .total = 2 * G, .available = G + MiB, .update = NOW,
          .swap_in = 0, .faults = 0, .period_s = 2, .actual = G, .have = true, .fresh = true, .used = 0 },
};

static HvStats stats(uint64_t total, uint64_t available, uint64_t update, uint64_t swap_in, uint64_t faults) {
        HvStats s;
        hv_stats_init(&s);
        s.total = total;
        s.available = available;
        s.last_update = update;
        s.swap_in = swap_in;
        s.major_faults = faults;
        return s;
}

static void test_table(void **state) {
        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                const Case *k = &cases[i];
                GuestAssessment prev = { 0 };
                if (k->prev_have)
                        prev = (GuestAssessment){ .stats = stats(990 * MiB, 500 * MiB, k->prev_update, k->prev_swap_in,
                                                                 k->prev_faults),
                                                  .have = true,
                                                  .fresh = k->prev_fresh,
                                                  .pressure = k->prev_pressure,
                                                  .used = k->prev_used };
                HvStats st = stats(k->total, k->available, k->update, k->swap_in, k->faults);
                GuestReport in = { .stats = &st,
                                   .period_s = k->period_s,
                                   .now_rt_s = NOW,
                                   .actual = k->actual,
                                   .actual_changed_rt_s = k->actual_changed };
                GuestAssessment a;
                guest_assess(&prev, &in, &a);
                if (a.have != k->have || a.fresh != k->fresh || a.pressure != k->pressure || a.used != k->used)
                        fail_msg("%s: have %d fresh %d pressure %d used %llu; expected %d %d %d %llu", k->name, a.have,
                                 a.fresh, a.pressure, (unsigned long long) a.used, k->have, k->fresh, k->pressure,
                                 (unsigned long long) k->used);
                assert_int_equal(a.stats.last_update, k->update);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_table),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
