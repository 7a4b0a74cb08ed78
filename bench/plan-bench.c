/* SPDX-License-Identifier: MIT */
/* plan-bench: µs per plan_compute() for fleets of 100, 1,000 and 10,000 VMs under pressure (the
 * split and the shaping both do work), with a reused scratch object as the daemon uses it.
 *   build/src/policy/plan-bench [ROUNDS]
 * Prints two lines per fleet size: VMs, fleet kind, rounds, median and best µs per plan.
 *   mixed     8 sizes × 4 share values: many VMs share a breakpoint (a typical fleet)
 *   distinct  every VM a different size and share value: every breakpoint differs, the sort's worst case */

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "policy/plan.h"
#include "shared/macro.h"

static usec_t mono_usec(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (usec_t) ts.tv_sec * 1000000 + (usec_t) ts.tv_nsec / 1000;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *) a, y = *(const double *) b;
        return (x > y) - (x < y);
}

static int bench(size_t n, bool distinct, int rounds) {
        PlanConfig cfg;
        plan_config_default(&cfg);
        PlanVm *vms = calloc(n, sizeof *vms);
        PlanDecision *out = calloc(n, sizeof *out);
        double *samples = calloc((size_t) rounds, sizeof *samples);
        PlanScratch *s = plan_scratch_new(n);
        if (!vms || !out || !samples || !s) {
                fprintf(stderr, "plan-bench: out of memory\n");
                return 1;
        }
        uint64_t total_assigned = 0;
        for (size_t i = 0; i < n; i++) {
                /* mixed: 256 MiB … 1.1 GiB; distinct: 256 MiB … 16.25 GiB in KiB steps (Knuth's
                 * multiplicative hash spreads the indices without repeats below 2^24). */
                uint64_t a = distinct ? 256 * MiB + (uint64_t) ((i * UINT64_C(2654435761)) % (16384 * 1024)) * 1024
                                      : (256 + (i % 8) * 128) * MiB;
                uint32_t shares = distinct ? 1 + (uint32_t) ((i * UINT64_C(40503)) % 10000) : 1 + (uint32_t) (i % 4);
                vms[i] = (PlanVm){
                        .id = i,
                        .assigned = a,
                        .floor = a / 4,
                        .shares = shares,
                        .target = a,
                        .actual = a,
                };
                total_assigned += a;
        }
        /* A host where the VMs are most of memory and available sits at exactly 5% (critical is
         * below 5%) with PSI some at 12%: state pressure, a 10% gap, every VM rate-limited. */
        usec_t now = 100 * 1000000ULL;
        PlanInput in = {
                .config = &cfg,
                .host = { .total = total_assigned + total_assigned / 4,
                          .available = (total_assigned + total_assigned / 4) / 20,
                          .has_psi = true,
                          .psi_some_avg10 = 1200,
                          .psi_full_avg10 = 300,
                          .at = now },
                .vms = vms,
                .n_vms = n,
                .now = now,
        };
        PlanResult res;
        for (int r = 0; r < rounds; r++) {
                usec_t t0 = mono_usec();
                int k = plan_compute(&in, s, out, &res);
                usec_t t1 = mono_usec();
                if (k < 0) {
                        fprintf(stderr, "plan-bench: plan_compute: %d\n", k);
                        return 1;
                }
                samples[r] = (double) (t1 - t0);
                in.ctl = res.ctl;
        }
        qsort(samples, (size_t) rounds, sizeof *samples, cmp_double);
        printf("%6zu VMs %-8s  %5d rounds  median %9.1f µs  best %9.1f µs  (planned %llu MiB, state %s)\n", n,
               distinct ? "distinct" : "mixed", rounds, samples[rounds / 2], samples[0],
               (unsigned long long) (res.planned / MiB), plan_state_to_string(res.ctl.state));
        plan_scratch_free(s);
        free(samples);
        free(out);
        free(vms);
        return 0;
}

int main(int argc, char **argv) {
        int rounds = argc > 1 ? atoi(argv[1]) : 200;
        if (rounds < 1) {
                fprintf(stderr, "usage: plan-bench [ROUNDS ≥ 1]\n");
                return 2;
        }
        const size_t sizes[] = { 100, 1000, 10000 };
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
                for (int distinct = 0; distinct <= 1; distinct++)
                        if (bench(sizes[i], distinct, rounds))
                                return 1;
        return 0;
}
