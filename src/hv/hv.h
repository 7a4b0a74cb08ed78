/* SPDX-License-Identifier: MIT */
#pragma once

/* The driver interface: every hypervisor driver answers the same few asynchronous operations, in
 * bytes of guest memory (B1). Conversions to balloon sizes live inside each driver. Every operation
 * has a deadline; its callback runs exactly once (success, error or timeout) unless the request is
 * cancelled with hv_cancel() or the driver is freed first. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "ballast/ballast.h"
#include "shared/ev.h"

#define HV_STAT_UNSET  BALLAST_STAT_UNSET
#define HV_MESSAGE_MAX 512

/* The public types are the internal ones: one definition. */
typedef BallastStats HvStats;
typedef BallastCaps HvCaps;

typedef enum HvOp {
        HV_OP_GET_ACTUAL,
        HV_OP_SET_TARGET,
        HV_OP_GET_STATS,
        HV_OP_SET_STATS_PERIOD,
        HV_OP_GET_CAPS,
        _HV_OP_MAX,
        _HV_OP_INVALID = -22,
} HvOp;

typedef struct HvReply {
        HvOp op;
        int error;                    /* 0 or a negative errno */
        char message[HV_MESSAGE_MAX]; /* on error: what failed, with the peer's own words */
        uint64_t actual;              /* GET_ACTUAL: current guest memory, bytes */
        HvStats stats;                /* GET_STATS */
        HvCaps caps;                  /* GET_CAPS */
} HvReply;

/* What a hypervisor sent that ballast did not act on, and how often it had to be cut short: for
 * metrics (one set per VM, monotonic over the driver's life, across reconnections). Read with
 * hv_counters(). */
typedef struct HvCounters {
        uint64_t events;            /* unsolicited messages received (QMP events) */
        uint64_t events_dropped;    /* ...of which over the per-hypervisor rate, dropped unseen */
        uint64_t interim_responses; /* 1xx responses read (HTTP drivers) */
        uint64_t read_yields;       /* reads stopped at a per-wakeup budget to let others run */
} HvCounters;

typedef struct Hv Hv;
typedef void (*hv_reply_cb)(Hv *hv, const HvReply *reply, void *userdata);
/* Unsolicited news of the guest's memory (QEMU's BALLOON_CHANGE); when_realtime in usec. */
typedef void (*hv_actual_cb)(Hv *hv, uint64_t actual, uint64_t when_realtime, void *userdata);

typedef struct HvOps {
        const char *name;
        int (*get_actual)(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata);
        int (*set_target)(Hv *hv, uint64_t guest_bytes, usec_t timeout, hv_reply_cb cb, void *userdata);
        int (*get_stats)(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata);
        int (*set_stats_period)(Hv *hv, uint32_t seconds, usec_t timeout, hv_reply_cb cb, void *userdata);
        int (*get_caps)(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata);
        /* Drops every pending callback registered with this userdata. */
        void (*cancel)(Hv *hv, void *userdata);
        void (*free)(Hv *hv);
        /* Optional: fills *ret (zeroed by hv_counters() first). */
        void (*counters)(Hv *hv, HvCounters *ret);
} HvOps;

#define HV_LISTENERS_MAX 8

struct Hv {
        const HvOps *ops;
        Ev *ev;
        /* The hypervisor process, when the driver knows it (SO_PEERCRED of its socket), for
         * host-side verification (B5.7); 0 when unknown. */
        pid_t peer_pid;
        struct {
                hv_actual_cb cb;
                void *userdata;
        } listeners[HV_LISTENERS_MAX];
};

static inline int hv_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return hv->ops->get_actual(hv, timeout, cb, ud);
}
static inline int hv_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *ud) {
        return hv->ops->set_target(hv, bytes, timeout, cb, ud);
}
static inline int hv_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return hv->ops->get_stats(hv, timeout, cb, ud);
}
static inline int hv_set_stats_period(Hv *hv, uint32_t s, usec_t timeout, hv_reply_cb cb, void *ud) {
        return hv->ops->set_stats_period(hv, s, timeout, cb, ud);
}
static inline int hv_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return hv->ops->get_caps(hv, timeout, cb, ud);
}
static inline void hv_cancel(Hv *hv, void *ud) {
        hv->ops->cancel(hv, ud);
}
Hv *hv_free(Hv *hv);
/* The driver's counters (all zero for a driver that keeps none). Cheap: metrics may call it for
 * every VM on every scrape. */
void hv_counters(Hv *hv, HvCounters *ret);

int hv_add_listener(Hv *hv, hv_actual_cb cb, void *userdata);
void hv_remove_listener(Hv *hv, hv_actual_cb cb, void *userdata);
/* For drivers: tell every listener. */
void hv_notify_actual(Hv *hv, uint64_t actual, uint64_t when_realtime);

const char *hv_op_to_string(HvOp op);
void hv_stats_init(HvStats *s);

/* --- set and wait (B1.6) --- */

typedef BallastWaitResult HvWaitResult;
#define HV_WAIT_REACHED     BALLAST_WAIT_REACHED
#define HV_WAIT_DEADLINE    BALLAST_WAIT_DEADLINE
#define HV_WAIT_STALLED     BALLAST_WAIT_STALLED
#define HV_WAIT_ERROR       BALLAST_WAIT_ERROR
#define _HV_WAIT_RESULT_MAX (BALLAST_WAIT_ERROR + 1)

const char *hv_wait_result_to_string(HvWaitResult r);

typedef struct HvWaitOptions {
        uint64_t tolerance;       /* default 16 MiB; never below 4095 bytes (page truncation) */
        usec_t timeout;           /* whole wait; default 60 s */
        usec_t stall_window;      /* default 3 s; USEC_INFINITY disables */
        usec_t op_timeout;        /* each driver operation; default 5 s */
        uint64_t stall_min_bytes; /* movement below this over the window counts as none; default 1 MiB */
        void (*progress)(uint64_t actual, uint64_t target, uint64_t start, usec_t elapsed, void *userdata);
        void *progress_userdata;
} HvWaitOptions;

typedef struct HvWaitOutcome {
        HvWaitResult result;
        uint64_t start, target, reached;
        usec_t started; /* monotonic, when the target was sent */
        usec_t noticed; /* monotonic, when the final value was seen */
        usec_t noticed_realtime;
        unsigned polls, events;
        int error;
        char message[HV_MESSAGE_MAX];
} HvWaitOutcome;

typedef struct HvWait HvWait;
typedef void (*hv_wait_cb)(HvWait *w, const HvWaitOutcome *o, void *userdata);

void hv_wait_options_init(HvWaitOptions *o);
/* Sends the target, then watches actual through driver events and adaptive polling (10-20 ms)
 * until reached, stalled, failed or the deadline. The callback runs once. */
int hv_wait_start(Hv *hv, uint64_t target, const HvWaitOptions *o, hv_wait_cb cb, void *userdata, HvWait **ret);
HvWait *hv_wait_free(HvWait *w);
