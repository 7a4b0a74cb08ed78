/* SPDX-License-Identifier: MIT */
/* The base of the REST drivers (hv/hv-rest.h): the step engine, the deadline, the retry delay,
 * the connection's callbacks, the driver's life. */
#include "hv/hv-rest.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hv/qmp-proto.h"
#include "shared/macro.h"

#define HV_REST_RETRY_MIN (10 * USEC_PER_MSEC)
#define HV_REST_RETRY_MAX (200 * USEC_PER_MSEC)

static HvRest *rest_of(Hv *hv) {
        return (HvRest *) hv;
}

/* The request in flight goes with the operation, and the driver's part of it. */
static void op_release(HvReq *r) {
        HvRestOp *o = (HvRestOp *) r;
        http1_client_cancel(o->rest->http, o);
        if (o->rest->ops->release)
                o->rest->ops->release(o);
}

static void rest_free_now(Hv *hv) {
        HvRest *r = rest_of(hv);
        hv_reqs_clear(&r->reqs);
        http1_client_free(r->http);
        free(r->path);
        free(r); /* the driver's struct starts with r */
}

int hv_rest_new(Ev *ev, const HvRestOps *ops, const char *socket_path, uid_t expected_uid, size_t max_body, Hv **ret) {
        if (!socket_path)
                return -EINVAL;
        HvRest *r = calloc(1, ops->size);
        if (!r)
                return -ENOMEM;
        r->hv.ops = &ops->hv;
        r->hv.ev = ev;
        r->ops = ops;
        hv_reqs_init(&r->reqs, &r->hv, op_release, rest_free_now);
        r->path = strdup(socket_path);
        if (!r->path) {
                free(r);
                return -ENOMEM;
        }
        Http1ClientConfig hc = { .socket_path = socket_path, .expected_uid = expected_uid, .max_body = max_body };
        int k = http1_client_new(ev, &hc, &r->http);
        if (k < 0) {
                free(r->path);
                free(r);
                return k;
        }
        *ret = &r->hv;
        return 0;
}

void hv_rest_fail_deadline(HvRestOp *o, const char *what) {
        char d[32];
        http1_format_timeout(d, sizeof(d), o->req.timeout);
        const char *product = o->rest->ops->product, *op = hv_op_to_string(o->req.op);
        if (o->attempts > 0)
                hv_req_fail(&o->req, -ETIMEDOUT,
                            "%s %s: %s still refused when the %s deadline passed (%u attempts): %s", product, op,
                            o->label, d, o->attempts, o->last_fault);
        else
                hv_req_fail(&o->req, -ETIMEDOUT, "%s %s on %s: %s within %s", product, op, o->rest->path, what, d);
}

bool hv_rest_retry_later(HvRestOp *o, const char *fault) {
        o->attempts++;
        snprintf(o->last_fault, sizeof(o->last_fault), "%s", fault);
        usec_t next = CLAMP(o->retry_delay * 2, HV_REST_RETRY_MIN, HV_REST_RETRY_MAX);
        usec_t at = usec_add(now_mono(), next);
        if (at >= o->deadline) {
                hv_rest_fail_deadline(o, NULL);
                return false;
        }
        o->retry_delay = next;
        ev_timer_set(o->req.timer, at);
        return true;
}

static void on_http(Http1Client *c, int error, const Http1Response *resp, const char *message, void *userdata) {
        HvRestOp *o = userdata;
        HvRest *r = o->rest;
        (void) c;

        hv_reqs_enter(&r->reqs);
        r->hv.peer_pid = http1_client_peer_pid(r->http); /* for host-side verification (B5.7) */
        if (error == -ETIMEDOUT) {
                char what[96];
                snprintf(what, sizeof(what), "no response to %s", o->label);
                hv_rest_fail_deadline(o, what);
        } else if (error < 0)
                hv_req_fail(&o->req, error, "%s %s: %s", r->ops->product, hv_op_to_string(o->req.op), message);
        else
                r->ops->response(o, resp);
        hv_reqs_leave(&r->reqs);
}

void hv_rest_step(HvRestOp *o) {
        HvRest *r = o->rest;
        HvRestRequest req = { .method = "GET" };
        int k = r->ops->build(o, &req);
        if (k < 0) /* failed by the driver */
                return;
        if (k == 0 || !req.path) {
                free(req.dump);
                hv_req_finish(&o->req);
                return;
        }
        snprintf(o->label, sizeof(o->label), "%s %s", req.method, req.path);
        usec_t now = now_mono();
        if (now >= o->deadline) {
                free(req.dump);
                char what[96];
                snprintf(what, sizeof(what), "no time left to send %s", o->label);
                hv_rest_fail_deadline(o, what);
                return;
        }
        k = http1_client_request(r->http, req.method, req.path, req.dump ?: (req.body_len ? req.body : NULL),
                                 req.body_len, o->deadline - now, on_http, o);
        free(req.dump);
        if (k < 0)
                hv_req_fail(&o->req, k, "%s %s: cannot send %s: %s", r->ops->product, hv_op_to_string(o->req.op),
                            o->label, strerror(-k));
}

void hv_rest_next(HvRestOp *o) {
        o->step++;
        hv_rest_step(o);
}

static void on_timer(EvTimer *t, void *userdata) {
        HvRestOp *o = userdata;
        HvRest *r = o->rest;
        ev_timer_set(t, USEC_INFINITY);
        hv_reqs_enter(&r->reqs);
        hv_rest_step(o);
        hv_reqs_leave(&r->reqs);
}

static int rest_submit(Hv *hv, HvOp op, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *userdata) {
        HvRest *r = rest_of(hv);
        usec_t deadline = usec_add(now_mono(), timeout);
        HvReq *q;
        int k = hv_req_submit(&r->reqs, r->ops->op_size, op, arg, timeout, cb, userdata, on_timer, &q);
        if (k < 0)
                return k;
        HvRestOp *o = (HvRestOp *) q;
        o->rest = r;
        o->deadline = deadline;
        return 0;
}

int hv_rest_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata) {
        return rest_submit(hv, HV_OP_GET_ACTUAL, 0, timeout, cb, userdata);
}

int hv_rest_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *userdata) {
        if (bytes == 0 || bytes > HV_REST_TARGET_MAX)
                return -EINVAL;
        return rest_submit(hv, HV_OP_SET_TARGET, bytes, timeout, cb, userdata);
}

int hv_rest_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata) {
        if (rest_of(hv)->ops->stats_period_max == 0)
                return -EOPNOTSUPP;
        return rest_submit(hv, HV_OP_GET_STATS, 0, timeout, cb, userdata);
}

int hv_rest_set_stats_period(Hv *hv, uint32_t seconds, usec_t timeout, hv_reply_cb cb, void *userdata) {
        uint32_t max = rest_of(hv)->ops->stats_period_max;
        if (max == 0)
                return -EOPNOTSUPP;
        if (seconds > max)
                return -ERANGE;
        return rest_submit(hv, HV_OP_SET_STATS_PERIOD, seconds, timeout, cb, userdata);
}

int hv_rest_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *userdata) {
        return rest_submit(hv, HV_OP_GET_CAPS, 0, timeout, cb, userdata);
}

void hv_rest_cancel(Hv *hv, void *userdata) {
        hv_reqs_cancel(&rest_of(hv)->reqs, userdata);
}

void hv_rest_free(Hv *hv) {
        hv_reqs_kill(&rest_of(hv)->reqs);
}

void hv_rest_counters(Hv *hv, HvCounters *ret) {
        Http1ClientCounters h;
        http1_client_counters(rest_of(hv)->http, &h);
        /* HTTP/1.1 has no unsolicited messages: bytes nobody asked for drop the connection. */
        *ret = (HvCounters){ .interim_responses = h.interim_responses, .read_yields = h.read_yields };
}

json_t *hv_rest_json(const Http1Response *resp, size_t flags) {
        _cleanup_free_ char *copy = malloc(resp->body_len + 1);
        if (!copy)
                return NULL;
        memcpy(copy, resp->body, resp->body_len);
        copy[resp->body_len] = '\0';
        (void) qmp_clamp_big_ints(copy, resp->body_len);
        return json_loadb(copy, resp->body_len, JSON_REJECT_DUPLICATES | flags, NULL);
}

void hv_rest_printable(const Http1Response *resp, char *buf, size_t len) {
        if (resp->body_len == 0) {
                snprintf(buf, len, "(no body)");
                return;
        }
        size_t n = 0;
        for (size_t i = 0; i < resp->body_len && n + 1 < len; i++) {
                unsigned char c = (unsigned char) resp->body[i];
                buf[n++] = c < 0x20 || c == 0x7f ? ' ' : (char) c;
        }
        buf[n] = '\0';
}

bool hv_rest_get_u64(json_t *o, const char *key, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(o, key);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t) json_integer_value(v) > max)
                return false;
        *ret = (uint64_t) json_integer_value(v);
        return true;
}
