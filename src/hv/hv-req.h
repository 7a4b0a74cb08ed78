/* SPDX-License-Identifier: MIT */
#pragma once

/* The bookkeeping every driver keeps for its operations in flight: a driver's request struct
 * starts with an HvReq, and the driver holds one HvReqs for all of them. What a request does on
 * the wire stays in the driver; here is only what is the same everywhere: a request starts from
 * the loop (so callbacks never run inside the caller), its callback runs at most once, after the
 * request is freed, and never once the driver is dead; cancel drops every request of a userdata. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hv/hv.h"
#include "shared/ev.h"
#include "shared/macro.h"

typedef struct HvReq HvReq;
typedef struct HvReqs HvReqs;

struct HvReq {
        HvReqs *reqs;
        HvOp op;
        hv_reply_cb cb;
        void *userdata;
        HvReply reply; /* reply.op is op, statistics unset */
        uint64_t arg;
        usec_t timeout;
        /* Fires at once with the driver's start callback; the driver may re-arm it. (The libvirt
         * driver re-arms it to the deadline as soon as it is submitted: its worker thread starts
         * the request, and the callback is the timeout.) */
        EvTimer *timer;
        HvReq *next;
};

struct HvReqs {
        Hv *hv;
        HvReq *head;
        /* Frees the driver's own part of a request (its I/O in flight, its buffers), just before
         * the request itself; NULL when there is none. */
        void (*release)(HvReq *r);
        bool dead; /* the driver was freed: no callback runs any more */
        /* A driver freed from inside one of its own callbacks (the callee frees it) is freed
         * when the outermost of its callbacks returns: busy counts them (hv_reqs_enter/leave). */
        unsigned busy;
        void (*free_now)(Hv *hv);
};

/* An empty set of requests for the driver hv; release and free_now as in HvReqs. */
void hv_reqs_init(HvReqs *rs, Hv *hv, void (*release)(HvReq *r), void (*free_now)(Hv *hv));

/* Around each callback of the driver from the loop: a free meanwhile waits for the leave. */
void hv_reqs_enter(HvReqs *rs);
void hv_reqs_leave(HvReqs *rs);

/* The driver's free (HvOps.free): no callback runs any more; free_now runs now, or when the
 * callback the driver is in returns. */
void hv_reqs_kill(HvReqs *rs);

/* Allocates a request of size bytes (the driver's struct, which starts with an HvReq; zeroed
 * beyond it), links it and adds its timer at 0 with start (userdata: the request). Returns 0 and
 * the request in *ret (owned by rs), or a negative errno with nothing left behind. */
int hv_req_submit(HvReqs *rs, size_t size, HvOp op, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *userdata,
                  ev_timer_cb start, HvReq **ret);

/* Releases, unlinks and frees r without a callback. */
void hv_req_free(HvReq *r);

/* Frees r, then (unless the driver is dead) calls its callback with its reply. */
void hv_req_finish(HvReq *r);

/* Sets the reply's error (a negative errno; anything else becomes -EIO) and message, then
 * finishes r. */
void hv_req_fail(HvReq *r, int error, const char *fmt, ...) _printf_(3, 4);

/* Frees every request registered with userdata, without callbacks. */
void hv_reqs_cancel(HvReqs *rs, void *userdata);

/* Frees every request, without callbacks. */
void hv_reqs_clear(HvReqs *rs);
