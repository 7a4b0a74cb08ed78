/* SPDX-License-Identifier: MIT */
#pragma once

/* What the drivers of REST hypervisors (Firecracker, Cloud Hypervisor: HTTP/1.1 on a Unix
 * socket, shared/http1.h) have in common. A driver operation is a short sequence of API requests
 * ("steps") under one deadline; the base runs the sequence, the driver says what each step sends
 * (build) and what its answer means (response). The base owns the connection, the requests in
 * flight (hv/hv-req.h), the deadline and its messages, the retry delay, and the deferred free of
 * a driver freed from inside one of its own callbacks; HvOps' calls and the constructor are the
 * base's too, so a driver is its HvRestOps table. Exact texts: docs/drivers.md. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "hv/hv-req.h"
#include "hv/hv.h"
#include "shared/http1.h"

#define HV_REST_FAULT_MAX 320

typedef struct HvRest HvRest;
typedef struct HvRestOp HvRestOp;

/* A driver's operation starts with this (its own fields after it). */
struct HvRestOp {
        HvReq req; /* first: HvReq* and HvRestOp* convert; its timer starts the operation, then
                    * fires after retry delays */
        HvRest *rest;
        unsigned step;                      /* the driver's index into its list of steps */
        usec_t deadline;                    /* of the whole operation */
        usec_t retry_delay;                 /* the last delay of hv_rest_retry_later() */
        unsigned attempts;                  /* refusals retried */
        char last_fault[HV_REST_FAULT_MAX]; /* the refusal being retried */
        char label[64];                     /* the request in flight, "PATCH /balloon" */
};

/* The request of one step. */
typedef struct HvRestRequest {
        const char *method, *path; /* method defaults to GET */
        char body[128];            /* a short body, body_len bytes… */
        char *dump;                /* …or a longer one, malloc'ed (freed by the base) */
        size_t body_len;
} HvRestRequest;

typedef struct HvRestOps HvRestOps;
struct HvRestOps {
        HvOps hv;            /* the driver's Hv.ops: its name, and the base's calls (HV_REST_CALLS) */
        const char *product; /* "Firecracker": the start of every message */
        size_t size;         /* sizeof the driver's state (starts with HvRest) */
        size_t op_size;      /* sizeof the driver's operation (starts with HvRestOp) */
        /* The longest statistics period set_stats_period takes (a longer one: -ERANGE); 0 when
         * the hypervisor has no balloon statistics: get_stats and set_stats_period return
         * -EOPNOTSUPP at once. */
        uint32_t stats_period_max;
        /* The request of the operation's current step; the driver may skip steps (o->step++).
         * Returns 1 to send *req, 0 when no step is left (the base finishes the operation), or a
         * negative errno after failing the operation itself. */
        int (*build)(HvRestOp *o, HvRestRequest *req);
        /* A complete answer to the step's request (any status). The driver goes on with
         * hv_rest_next(), retries with hv_rest_retry_later(), or ends the operation
         * (hv_req_finish(), hv_req_fail()). */
        void (*response)(HvRestOp *o, const Http1Response *resp);
        /* Frees the driver's part of an operation (the base cancels its request); may be NULL. */
        void (*release)(HvRestOp *o);
};

/* A driver's state starts with this. */
struct HvRest {
        Hv hv; /* first: Hv* and HvRest* convert */
        const HvRestOps *ops;
        Http1Client *http;
        char *path;
        HvReqs reqs;
};

/* Creates a driver: ops->size bytes (zeroed beyond the HvRest), Hv.ops &ops->hv, the connection
 * to socket_path (the peer must have expected_uid, as in http1_client_new), answers up to
 * max_body bytes. Nothing is connected until the first operation. Returns 0 and the driver in
 * *ret, or a negative errno. */
int hv_rest_new(Ev *ev, const HvRestOps *ops, const char *socket_path, uid_t expected_uid, size_t max_body, Hv **ret);

/* HvOps' calls. Each starts an operation (its steps start from the loop) after checking its
 * argument: a target of 0 or above HV_REST_TARGET_MAX is -EINVAL, statistics as in
 * HvRestOps.stats_period_max. */
#define HV_REST_TARGET_MAX ((uint64_t) 1 << 62)
int hv_rest_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata);
int hv_rest_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *userdata);
int hv_rest_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata);
int hv_rest_set_stats_period(Hv *hv, uint32_t seconds, usec_t timeout, hv_reply_cb cb, void *userdata);
int hv_rest_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata);
void hv_rest_cancel(Hv *hv, void *userdata);
void hv_rest_free(Hv *hv);
void hv_rest_counters(Hv *hv, HvCounters *ret);

/* Every call of a REST driver's HvOps is the base's: .hv = { .name = "firecracker", HV_REST_CALLS }. */
#define HV_REST_CALLS                                                                                                  \
        .get_actual = hv_rest_get_actual, .set_target = hv_rest_set_target, .get_stats = hv_rest_get_stats,            \
        .set_stats_period = hv_rest_set_stats_period, .get_caps = hv_rest_get_caps, .cancel = hv_rest_cancel,          \
        .free = hv_rest_free, .counters = hv_rest_counters

/* Sends the request of the operation's current step (or finishes it when none is left). */
void hv_rest_step(HvRestOp *o);

/* The next step. */
void hv_rest_next(HvRestOp *o);

/* Runs the current step again after a delay that doubles from 10 ms to 200 ms, counting the
 * attempt and keeping fault as the reason, and returns true; fails the operation with that reason
 * instead, and returns false, when the delay would pass its deadline. */
bool hv_rest_retry_later(HvRestOp *o, const char *fault);

/* Fails the operation with -ETIMEDOUT: "PRODUCT OP on PATH: WHAT within D", or, after retries,
 * "PRODUCT OP: LABEL still refused when the D deadline passed (N attempts): FAULT". */
void hv_rest_fail_deadline(HvRestOp *o, const char *what);

/* A JSON body (strict: duplicate keys refused, flags added); integers beyond int64 (a guest can
 * report any u64) become -1. NULL when it is not JSON. */
json_t *hv_rest_json(const Http1Response *resp, size_t flags);

/* The body as printable text (control bytes as blanks; "(no body)" when empty). */
void hv_rest_printable(const Http1Response *resp, char *buf, size_t len);

/* o[key] as an integer in 0..max. */
bool hv_rest_get_u64(json_t *o, const char *key, uint64_t max, uint64_t *ret);
