/* SPDX-License-Identifier: MIT */
/* The synchronous public API: each call runs a private event loop until the asynchronous driver
 * operation completes. The daemon uses the asynchronous drivers directly. */
#include "ballast/ballast.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "hv/hv.h"
#include "hv/qmp.h"
#include "shared/macro.h"

struct BallastHv {
        Ev *ev;
        Hv *hv;
};

static int set_error(BallastError *err, int code, const char *msg) {
        if (err) {
                err->code = code;
                snprintf(err->message, sizeof(err->message), "%s", msg && *msg ? msg : strerror(-code));
        }
        return code;
}

const char *ballast_version(void) {
        return BALLAST_VERSION;
}

int ballast_qemu_open(const char *qmp_socket, uid_t expected_uid, BallastHv **ret, BallastError *err) {
        if (!qmp_socket || !ret)
                return set_error(err, -EINVAL, "no QMP socket path given");
        BallastHv *b = calloc(1, sizeof(BallastHv));
        if (!b)
                return set_error(err, -ENOMEM, NULL);
        int r = ev_new(&b->ev);
        if (r >= 0) {
                QmpConfig cfg = { .socket_path = qmp_socket, .expected_uid = expected_uid };
                r = qmp_hv_new(b->ev, &cfg, &b->hv);
        }
        if (r < 0) {
                ballast_hv_close(b);
                return set_error(err, r, NULL);
        }
        *ret = b;
        return 0;
}

void ballast_hv_close(BallastHv *b) {
        if (!b)
                return;
        hv_free(b->hv);
        ev_free(b->ev);
        free(b);
}

typedef struct SyncCall {
        bool done;
        HvReply reply;
} SyncCall;

static void sync_done(Hv *hv, const HvReply *r, void *userdata) {
        SyncCall *c = userdata;
        (void) hv;
        c->reply = *r;
        c->done = true;
}

/* Runs the loop until the call completes. The driver enforces the operation deadline; the loop
 * itself needs no timeout of its own. */
static int sync_run(BallastHv *b, SyncCall *c, int submitted, BallastError *err) {
        if (submitted < 0)
                return set_error(err, submitted, NULL);
        while (!c->done) {
                int r = ev_run_once(b->ev, USEC_INFINITY);
                if (r < 0) {
                        hv_cancel(b->hv, c);
                        return set_error(err, r, "event loop failed");
                }
        }
        if (c->reply.error < 0)
                return set_error(err, c->reply.error, c->reply.message);
        return 0;
}

int ballast_hv_get_actual(BallastHv *b, uint64_t timeout_us, uint64_t *ret_bytes, BallastError *err) {
        SyncCall c = { 0 };
        int r = sync_run(b, &c, hv_get_actual(b->hv, timeout_us, sync_done, &c), err);
        if (r >= 0 && ret_bytes)
                *ret_bytes = c.reply.actual;
        return r;
}

int ballast_hv_set_target(BallastHv *b, uint64_t guest_bytes, uint64_t timeout_us, BallastError *err) {
        SyncCall c = { 0 };
        return sync_run(b, &c, hv_set_target(b->hv, guest_bytes, timeout_us, sync_done, &c), err);
}

int ballast_hv_get_stats(BallastHv *b, uint64_t timeout_us, BallastStats *ret, BallastError *err) {
        SyncCall c = { 0 };
        int r = sync_run(b, &c, hv_get_stats(b->hv, timeout_us, sync_done, &c), err);
        if (r >= 0 && ret)
                *ret = c.reply.stats;
        return r;
}

int ballast_hv_set_stats_period(BallastHv *b, uint32_t seconds, uint64_t timeout_us, BallastError *err) {
        SyncCall c = { 0 };
        return sync_run(b, &c, hv_set_stats_period(b->hv, seconds, timeout_us, sync_done, &c), err);
}

int ballast_hv_get_caps(BallastHv *b, uint64_t timeout_us, BallastCaps *ret, BallastError *err) {
        SyncCall c = { 0 };
        int r = sync_run(b, &c, hv_get_caps(b->hv, timeout_us, sync_done, &c), err);
        if (r >= 0 && ret) {
                *ret = c.reply.caps;
                ret->stats = ret->balloon;
        }
        return r;
}

void ballast_wait_options_init(BallastWaitOptions *o) {
        HvWaitOptions h;
        hv_wait_options_init(&h);
        *o = (BallastWaitOptions){
                .tolerance = h.tolerance,
                .timeout_us = h.timeout,
                .stall_window_us = h.stall_window,
                .op_timeout_us = h.op_timeout,
                .stall_min_bytes = h.stall_min_bytes,
        };
}

typedef struct SyncWait {
        bool done;
        HvWaitOutcome out;
} SyncWait;

static void sync_wait_done(HvWait *w, const HvWaitOutcome *o, void *userdata) {
        SyncWait *s = userdata;
        (void) w;
        s->out = *o;
        s->done = true;
}

int ballast_hv_set_and_wait(BallastHv *b, uint64_t guest_bytes, const BallastWaitOptions *o, BallastWaitOutcome *ret,
                            BallastError *err) {
        BallastWaitOptions def;
        if (!o) {
                ballast_wait_options_init(&def);
                o = &def;
        }
        if (guest_bytes == 0)
                return set_error(err, -EINVAL, "the target must be at least 1 byte");
        HvWaitOptions h = {
                .tolerance = o->tolerance,
                .timeout = o->timeout_us,
                .stall_window = o->stall_window_us,
                .op_timeout = o->op_timeout_us,
                .stall_min_bytes = o->stall_min_bytes,
                .progress = o->progress,
                .progress_userdata = o->progress_userdata,
        };
        SyncWait s = { 0 };
        HvWait *w = NULL;
        int r = hv_wait_start(b->hv, guest_bytes, &h, sync_wait_done, &s, &w);
        if (r < 0)
                return set_error(err, r, NULL);
        while (!s.done) {
                r = ev_run_once(b->ev, USEC_INFINITY);
                if (r < 0) {
                        hv_wait_free(w);
                        return set_error(err, r, "event loop failed");
                }
        }
        hv_wait_free(w);
        if (ret)
                *ret = (BallastWaitOutcome){
                        .result = s.out.result,
                        .start = s.out.start,
                        .target = s.out.target,
                        .reached = s.out.reached,
                        .elapsed_us = usec_sub_floor(s.out.noticed, s.out.started),
                        .noticed_realtime_us = s.out.noticed_realtime,
                        .polls = s.out.polls,
                        .events = s.out.events,
                };
        if (ret)
                snprintf(ret->message, sizeof(ret->message), "%s", s.out.message);
        if (s.out.result == HV_WAIT_ERROR)
                return set_error(err, s.out.error ?: -EIO, s.out.message);
        return 0;
}

const char *ballast_wait_result_to_string(BallastWaitResult r) {
        return hv_wait_result_to_string(r);
}
