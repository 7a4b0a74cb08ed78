/* SPDX-License-Identifier: MIT */
/* Benchmark: how long after QEMU reaches a balloon target does ballast notice?
 *
 * QEMU stamps every BALLOON_CHANGE event with the wall-clock time of the guest's config write,
 * but delivers events at most once a second. So for each set-and-wait we keep listening after
 * completion until the event carrying the final value arrives, and compute
 *   noticed  = when hv_wait reported REACHED      − that event's timestamp
 *   event    = when the event itself was delivered − that event's timestamp (an events-only client)
 * Also reports inflate/deflate durations. Usage: balloon-latency QMP_SOCKET [ROUNDS] [LOW_MIB] */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hv/hv.h"
#include "hv/qmp.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

typedef struct Run {
        Ev *ev;
        Hv *hv;
        bool done;
        HvWaitOutcome out;
        uint64_t target;
        uint64_t final_event_ts, final_event_arrival; /* realtime us */
} Run;

static void on_event(Hv *hv, uint64_t actual, uint64_t when, void *userdata) {
        Run *r = userdata;
        (void) hv;
        if (actual == r->target && !r->final_event_ts) {
                r->final_event_ts = when;
                r->final_event_arrival = now_usec(CLOCK_REALTIME);
        }
}

static void on_done(HvWait *w, const HvWaitOutcome *o, void *userdata) {
        Run *r = userdata;
        (void) w;
        r->out = *o;
        r->done = true;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static void report(const char *what, uint64_t *v, size_t n) {
        qsort(v, n, sizeof(*v), cmp_u64);
        printf("| %-44s | %4zu | %8.1f | %8.1f | %8.1f |\n", what, n, (double) v[n / 2] / 1000.0,
               (double) v[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / 1000.0, (double) v[n - 1] / 1000.0);
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s QMP_SOCKET [ROUNDS] [LOW_MIB]\n", argv[0]);
                return 2;
        }
        int rounds = argc > 2 ? atoi(argv[2]) : 10;
        uint64_t low = (argc > 3 ? strtoull(argv[3], NULL, 10) : 256) << 20;
        Run r = { 0 };
        if (ev_new(&r.ev) < 0)
                return 1;
        QmpConfig cfg = { .socket_path = argv[1], .expected_uid = UID_ANY };
        if (qmp_hv_new(r.ev, &cfg, &r.hv) < 0 || hv_add_listener(r.hv, on_event, &r) < 0)
                return 1;

        uint64_t *noticed = calloc((size_t) rounds * 2, sizeof(uint64_t));
        uint64_t *evlat = calloc((size_t) rounds * 2, sizeof(uint64_t));
        uint64_t *inflate = calloc((size_t) rounds, sizeof(uint64_t));
        uint64_t *deflate = calloc((size_t) rounds, sizeof(uint64_t));
        size_t nn = 0, ni = 0, nd = 0;
        uint64_t full = 0;

        for (int i = 0; i < rounds * 2; i++) {
                HvWaitOptions o;
                hv_wait_options_init(&o);
                o.tolerance = 0; /* exact: completion means QEMU's final value */
                o.timeout = 60 * USEC_PER_SEC;
                if (i == 0) {
                        /* learn the full size */
                        HvWait *w0;
                        r.done = false;
                        r.target = UINT64_C(1) << 40;
                        o.tolerance = UINT64_C(1) << 41;
                        if (hv_wait_start(r.hv, r.target, &o, on_done, &r, &w0) < 0)
                                return 1;
                        while (!r.done)
                                ev_run_once(r.ev, USEC_INFINITY);
                        hv_wait_free(w0);
                        full = r.out.start;
                        o.tolerance = 0;
                }
                bool in = i % 2 == 0;
                r.target = in ? low : full;
                r.final_event_ts = r.final_event_arrival = 0;
                r.done = false;
                HvWait *w;
                if (hv_wait_start(r.hv, r.target, &o, on_done, &r, &w) < 0)
                        return 1;
                while (!r.done)
                        ev_run_once(r.ev, USEC_INFINITY);
                hv_wait_free(w);
                if (r.out.result != HV_WAIT_REACHED) {
                        fprintf(stderr, "round %d: %s %s\n", i, hv_wait_result_to_string(r.out.result), r.out.message);
                        return 1;
                }
                usec_t dur = r.out.noticed - r.out.started;
                if (in)
                        inflate[ni++] = dur;
                else
                        deflate[nd++] = dur;
                /* QEMU delivers the final event up to 1 s late: wait for it (bounded). */
                usec_t until = usec_add(now_mono(), 3 * USEC_PER_SEC);
                while (!r.final_event_ts && now_mono() < until)
                        ev_run_once(r.ev, until);
                if (r.final_event_ts && r.out.noticed_realtime >= r.final_event_ts) {
                        noticed[nn] = r.out.noticed_realtime - r.final_event_ts;
                        evlat[nn] = r.final_event_arrival - r.final_event_ts;
                        nn++;
                }
        }
        char f[FORMAT_SIZE_MAX], l[FORMAT_SIZE_MAX];
        printf("VM %s, %s <-> %s, %d rounds (one inflate + one deflate each)\n\n", argv[1],
               format_size(f, sizeof(f), full), format_size(l, sizeof(l), low), rounds);
        printf("| %-44s | %4s | %8s | %8s | %8s |\n", "measure (ms)", "n", "p50", "p99", "max");
        printf("|%s|------|----------|----------|----------|\n", "----------------------------------------------");
        report("inflate, set -> reached", inflate, ni);
        report("deflate, set -> reached", deflate, nd);
        if (nn) {
                report("completion noticed after QEMU reached target", noticed, nn);
                report("events-only client: final BALLOON_CHANGE", evlat, nn);
                uint64_t a = noticed[nn / 2] ? noticed[nn / 2] : 1;
                printf("\nratio events-only / ballast at p50: %.1fx\n", (double) evlat[nn / 2] / (double) a);
        }
        hv_free(r.hv);
        ev_free(r.ev);
        free(noticed);
        free(evlat);
        free(inflate);
        free(deflate);
        return 0;
}
