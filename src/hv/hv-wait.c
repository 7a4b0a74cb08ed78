/* SPDX-License-Identifier: MIT */
/* Set and wait (B1.6). QEMU rate-limits BALLOON_CHANGE to one a second, so events alone would
 * notice completion up to a second late; instead we poll `actual` every 10 ms at first, backing off
 * to 20 ms while it moves, and treat events as a hint to poll at once. Completion is thus noticed
 * within one poll interval plus one QMP round trip of QEMU reaching it. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hv/hv.h"
#include "shared/macro.h"
#include "shared/strutil.h"

#define POLL_MIN (10 * USEC_PER_MSEC)
#define POLL_MAX (20 * USEC_PER_MSEC)

struct HvWait {
        Hv *hv;
        HvWaitOptions o;
        hv_wait_cb cb;
        void *userdata;
        HvWaitOutcome out;

        EvTimer *timer;
        usec_t deadline;
        usec_t poll_interval;
        bool target_sent;
        bool in_flight;  /* one get_actual at a time */
        bool poll_again; /* an event arrived while a poll was in flight */
        bool finished;

        uint64_t mark_actual; /* stall detection: value and time of the last real movement */
        usec_t mark_time;
};

void hv_wait_options_init(HvWaitOptions *o) {
        *o = (HvWaitOptions){
                .tolerance = UINT64_C(16) << 20,
                .timeout = 60 * USEC_PER_SEC,
                .stall_window = 3 * USEC_PER_SEC,
                .op_timeout = 5 * USEC_PER_SEC,
                .stall_min_bytes = UINT64_C(1) << 20,
        };
}

static uint64_t absdiff(uint64_t a, uint64_t b) {
        return a > b ? a - b : b - a;
}

static void wait_finish(HvWait *w, HvWaitResult result) {
        if (w->finished)
                return;
        w->finished = true;
        w->out.result = result;
        ev_timer_set(w->timer, USEC_INFINITY);
        hv_cancel(w->hv, w);
        w->cb(w, &w->out, w->userdata);
}

static void wait_poll(HvWait *w);

static void wait_arm(HvWait *w) {
        usec_t now = ev_now(w->hv->ev);
        ev_timer_set(w->timer, MIN(usec_add(now, w->poll_interval), w->deadline));
}

/* Looks at a fresh value of actual; returns true when the wait is over. */
static bool wait_observe(HvWait *w, uint64_t actual, usec_t now) {
        w->out.reached = actual;
        if (w->o.progress)
                w->o.progress(actual, w->out.target, w->out.start, now - w->out.started, w->o.progress_userdata);

        if (absdiff(actual, w->out.target) <= w->o.tolerance) {
                w->out.noticed = now;
                w->out.noticed_realtime = now_usec(CLOCK_REALTIME);
                wait_finish(w, HV_WAIT_REACHED);
                return true;
        }
        if (absdiff(actual, w->mark_actual) >= w->o.stall_min_bytes) {
                w->mark_actual = actual;
                w->mark_time = now;
                w->poll_interval = MIN(w->poll_interval * 2, POLL_MAX);
        } else if (w->o.stall_window != USEC_INFINITY && now - w->mark_time >= w->o.stall_window) {
                w->out.noticed = now;
                w->out.noticed_realtime = now_usec(CLOCK_REALTIME);
                char a[FORMAT_SIZE_MAX], t[FORMAT_SIZE_MAX], d[32];
                snprintf(w->out.message, sizeof(w->out.message),
                         "guest stopped at %s, short of the %s target (no movement for %s)",
                         format_size(a, sizeof(a), actual), format_size(t, sizeof(t), w->out.target),
                         format_duration(d, sizeof(d), w->o.stall_window));
                wait_finish(w, HV_WAIT_STALLED);
                return true;
        }
        if (now >= w->deadline) {
                w->out.noticed = now;
                w->out.noticed_realtime = now_usec(CLOCK_REALTIME);
                char a[FORMAT_SIZE_MAX], t[FORMAT_SIZE_MAX];
                snprintf(w->out.message, sizeof(w->out.message), "deadline reached at %s, target %s",
                         format_size(a, sizeof(a), actual), format_size(t, sizeof(t), w->out.target));
                wait_finish(w, HV_WAIT_DEADLINE);
                return true;
        }
        return false;
}

static void wait_fail(HvWait *w, const HvReply *r) {
        w->out.error = r->error;
        snprintf(w->out.message, sizeof(w->out.message), "%s", r->message);
        wait_finish(w, HV_WAIT_ERROR);
}

static void wait_on_actual_reply(Hv *hv, const HvReply *r, void *userdata) {
        HvWait *w = userdata;
        (void) hv;
        w->in_flight = false;
        if (r->error < 0) {
                wait_fail(w, r);
                return;
        }
        w->out.polls++;
        if (wait_observe(w, r->actual, now_mono()))
                return;
        if (w->poll_again) {
                w->poll_again = false;
                wait_poll(w);
        } else
                wait_arm(w);
}

static void wait_poll(HvWait *w) {
        if (w->in_flight) {
                w->poll_again = true;
                return;
        }
        usec_t left = usec_sub_floor(w->deadline, now_mono());
        int r = hv_get_actual(w->hv, MAX(MIN(w->o.op_timeout, left), 100 * USEC_PER_MSEC), wait_on_actual_reply, w);
        if (r < 0) {
                HvReply rep = { .error = r };
                snprintf(rep.message, sizeof(rep.message), "cannot query actual: %s", strerror(-r));
                wait_fail(w, &rep);
                return;
        }
        w->in_flight = true;
}

static void wait_on_timer(EvTimer *t, void *userdata) {
        HvWait *w = userdata;
        (void) t;
        /* Also the last look at the deadline: wait_observe() ends the wait there. */
        if (w->target_sent)
                wait_poll(w);
}

static void wait_on_event(Hv *hv, uint64_t actual, uint64_t when_realtime, void *userdata) {
        HvWait *w = userdata;
        (void) hv;
        (void) when_realtime;
        if (!w->target_sent || w->finished)
                return;
        w->out.events++;
        /* The event's value may already be stale (QEMU delays it up to 1 s); confirm by polling. */
        if (absdiff(actual, w->out.target) <= w->o.tolerance || actual != w->out.reached)
                wait_poll(w);
}

static void wait_on_set_reply(Hv *hv, const HvReply *r, void *userdata) {
        HvWait *w = userdata;
        (void) hv;
        if (r->error < 0) {
                wait_fail(w, r);
                return;
        }
        w->target_sent = true;
        w->mark_time = now_mono();
        wait_poll(w);
}

static void wait_on_start_reply(Hv *hv, const HvReply *r, void *userdata) {
        HvWait *w = userdata;
        if (r->error < 0) {
                wait_fail(w, r);
                return;
        }
        w->out.start = w->out.reached = w->mark_actual = r->actual;
        w->out.started = now_mono();
        int k = hv_set_target(hv, w->out.target, w->o.op_timeout, wait_on_set_reply, w);
        if (k < 0) {
                HvReply rep = { .error = k };
                snprintf(rep.message, sizeof(rep.message), "cannot send the target: %s", strerror(-k));
                wait_fail(w, &rep);
        }
}

int hv_wait_start(Hv *hv, uint64_t target, const HvWaitOptions *o, hv_wait_cb cb, void *userdata, HvWait **ret) {
        HvWait *w = calloc(1, sizeof(HvWait));
        if (!w)
                return -ENOMEM;
        w->hv = hv;
        w->o = *o;
        w->o.tolerance = MAX(w->o.tolerance, (uint64_t) 4095);
        if (w->o.op_timeout == 0)
                w->o.op_timeout = 5 * USEC_PER_SEC;
        w->cb = cb;
        w->userdata = userdata;
        w->out.target = target;
        w->poll_interval = POLL_MIN;
        w->deadline = usec_add(now_mono(), o->timeout);

        int r = ev_timer_add(hv->ev, USEC_INFINITY, wait_on_timer, w, &w->timer);
        if (r < 0)
                goto fail;
        r = hv_add_listener(hv, wait_on_event, w);
        if (r < 0)
                goto fail;
        r = hv_get_actual(hv, o->op_timeout ?: 5 * USEC_PER_SEC, wait_on_start_reply, w);
        if (r < 0) {
                hv_remove_listener(hv, wait_on_event, w);
                goto fail;
        }
        *ret = w;
        return 0;
fail:
        ev_timer_free(w->timer);
        free(w);
        return r;
}

HvWait *hv_wait_free(HvWait *w) {
        if (!w)
                return NULL;
        hv_cancel(w->hv, w);
        hv_remove_listener(w->hv, wait_on_event, w);
        ev_timer_free(w->timer);
        free(w);
        return NULL;
}
