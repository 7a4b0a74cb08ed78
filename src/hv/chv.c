/* SPDX-License-Identifier: MIT */
/* The Cloud Hypervisor driver (B1.4) over the asynchronous HTTP/1.1 client: each operation is a
 * short sequence of API requests under one deadline. Exact texts and rules: docs/drivers.md. */
#include "hv/chv.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hv/hv-req.h"
#include "hv/qmp-proto.h"
#include "shared/macro.h"
#include "shared/strutil.h"

#define CHV_PAGE        ((uint64_t) 4096)
#define CHV_BALLOON_MAX ((uint64_t) 1 << 44) /* 2^32 pages: Cloud Hypervisor wraps beyond (§4.3) */
#define CHV_SIZE_MAX    ((uint64_t) 1 << 62)
#define CHV_FAULT_MAX   320

typedef enum ChvStep {
        CHV_STEP_END = 0,
        CHV_STEP_PING,   /* GET /api/v1/vmm.ping: version */
        CHV_STEP_INFO,   /* GET /api/v1/vm.info: R, balloon, memory_actual_size */
        CHV_STEP_RESIZE, /* PUT /api/v1/vm.resize {"desired_balloon"} */
} ChvStep;

static const ChvStep op_steps[_HV_OP_MAX][3] = {
        [HV_OP_GET_ACTUAL] = { CHV_STEP_INFO },
        [HV_OP_SET_TARGET] = { CHV_STEP_INFO, CHV_STEP_RESIZE },
        [HV_OP_GET_CAPS] = { CHV_STEP_PING, CHV_STEP_INFO },
};

typedef struct Chv Chv;
typedef struct ChvOp ChvOp;

struct ChvOp {
        HvReq req; /* first: HvReq* and ChvOp* convert; its timer starts the operation */
        Chv *chv;
        unsigned step;
        usec_t deadline;
        uint64_t ram; /* R from vm.info */
        uint64_t desired_balloon;
        char label[64];
};

struct Chv {
        Hv hv; /* first: Hv* and Chv* convert */
        Http1Client *http;
        char *path;
        HvReqs reqs;
        unsigned busy;
};

static Chv *chv_of(Hv *hv) {
        return (Chv *) hv;
}

static void chv_free_now(Chv *chv);

static void chv_enter(Chv *chv) {
        chv->busy++;
}

static void chv_leave(Chv *chv) {
        if (--chv->busy == 0 && chv->reqs.dead)
                chv_free_now(chv);
}

/* The request in flight goes with the operation. */
static void op_release(HvReq *r) {
        ChvOp *o = (ChvOp *) r;
        http1_client_cancel(o->chv->http, o);
}

/* --- Cloud Hypervisor's answers --- */

static json_t *chv_json(const Http1Response *resp) {
        _cleanup_free_ char *copy = malloc(resp->body_len + 1);
        if (!copy)
                return NULL;
        memcpy(copy, resp->body, resp->body_len);
        copy[resp->body_len] = '\0';
        (void) qmp_clamp_big_ints(copy, resp->body_len);
        return json_loadb(copy, resp->body_len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, NULL);
}

/* The error text: v47+ sends the error chain as a JSON array of strings, older versions the Rust
 * Debug rendering as plain text. */
static void chv_fault(const Http1Response *resp, char *buf, size_t len) {
        json_t *j = chv_json(resp);
        size_t n = 0;
        buf[0] = '\0';
        if (json_is_array(j) && json_array_size(j) > 0) {
                size_t i;
                json_t *e;
                json_array_foreach(j, i, e) {
                        const char *s = json_string_value(e);
                        if (!s)
                                continue;
                        int k = snprintf(buf + n, len - n, "%s%s", n ? ": " : "", s);
                        if (k < 0 || (size_t) k >= len - n)
                                break;
                        n += (size_t) k;
                }
        }
        json_decref(j);
        if (buf[0])
                return;
        if (resp->body_len == 0) {
                snprintf(buf, len, "(no body)");
                return;
        }
        for (size_t i = 0; i < resp->body_len && n + 1 < len; i++) {
                unsigned char c = (unsigned char) resp->body[i];
                buf[n++] = c < 0x20 || c == 0x7f ? ' ' : (char) c;
        }
        buf[n] = '\0';
}

static bool get_u64(json_t *o, const char *key, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(o, key);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t) json_integer_value(v) > max)
                return false;
        *ret = (uint64_t) json_integer_value(v);
        return true;
}

/* R: the memory the balloon acts on (memory.size, which includes ACPI-hotplugged memory, plus
 * the NUMA zones). Returns false when the config is malformed. */
static bool chv_ram(json_t *memory, uint64_t *ret) {
        uint64_t r;
        if (!get_u64(memory, "size", CHV_SIZE_MAX, &r))
                return false;
        json_t *zones = json_object_get(memory, "zones");
        if (zones && !json_is_null(zones)) {
                size_t i;
                json_t *z;
                if (!json_is_array(zones))
                        return false;
                json_array_foreach(zones, i, z) {
                        uint64_t s;
                        if (!get_u64(z, "size", CHV_SIZE_MAX, &s) || r + s > CHV_SIZE_MAX)
                                return false;
                        r += s;
                }
        }
        *ret = r;
        return true;
}

/* --- steps --- */

static void op_step(ChvOp *o);

static void op_on_info(ChvOp *o, json_t *j) {
        Chv *chv = o->chv;
        const char *op = hv_op_to_string(o->req.op);
        json_t *config = json_object_get(j, "config");
        json_t *balloon = json_object_get(config, "balloon");
        const char *state = json_string_value(json_object_get(j, "state"));
        uint64_t actual;

        if (!json_is_object(config) || !chv_ram(json_object_get(config, "memory"), &o->ram) ||
            !get_u64(j, "memory_actual_size", CHV_SIZE_MAX, &actual) ||
            (balloon && !json_is_null(balloon) && !json_is_object(balloon))) {
                hv_req_fail(&o->req, -EBADMSG,
                            "Cloud Hypervisor %s: GET /api/v1/vm.info on %s has no valid memory configuration "
                            "and memory_actual_size",
                            op, chv->path);
                return;
        }
        bool has_balloon = json_is_object(balloon);
        switch (o->req.op) {
        case HV_OP_GET_ACTUAL:
                o->req.reply.actual = actual;
                break;
        case HV_OP_GET_CAPS:
                o->req.reply.caps.ram_bytes = o->ram;
                o->req.reply.caps.balloon = has_balloon;
                o->req.reply.caps.stats = false; /* no statistics virtqueue (§4.8) */
                o->req.reply.caps.deflate_on_oom =
                        has_balloon && json_is_true(json_object_get(balloon, "deflate_on_oom"));
                o->req.reply.caps.free_page_reporting =
                        has_balloon && json_is_true(json_object_get(balloon, "free_page_reporting"));
                break;
        case HV_OP_SET_TARGET:
                /* A running VM without a balloon: let Cloud Hypervisor say so in its own words. A VM
                 * not yet booted would silently ignore the resize: refuse here. */
                if (!has_balloon && !(state && strcmp(state, "Running") == 0)) {
                        hv_req_fail(&o->req, -ENODEV,
                                    "Cloud Hypervisor %s on %s: the VM has no balloon device (state %s)", op, chv->path,
                                    state ?: "unknown");
                        return;
                }
                uint64_t g = o->req.arg;
                o->desired_balloon = g >= o->ram ? 0 : (o->ram - g) / CHV_PAGE * CHV_PAGE;
                if (o->desired_balloon >= CHV_BALLOON_MAX) {
                        char b[FORMAT_SIZE_MAX];
                        hv_req_fail(&o->req, -ERANGE,
                                    "Cloud Hypervisor %s: a balloon of %s is more than Cloud Hypervisor can "
                                    "express (16 TiB)",
                                    op, format_size(b, sizeof(b), o->desired_balloon));
                        return;
                }
                break;
        default:
                break;
        }
        o->step++;
        op_step(o);
}

static void op_on_success(ChvOp *o, ChvStep step, const Http1Response *resp) {
        const char *op = hv_op_to_string(o->req.op);
        if (step == CHV_STEP_RESIZE) {
                o->step++;
                op_step(o);
                return;
        }
        json_t *j = chv_json(resp);
        if (!json_is_object(j)) {
                json_decref(j);
                hv_req_fail(&o->req, -EBADMSG,
                            "Cloud Hypervisor %s: %s on %s answered %d with a body that is not a JSON object", op,
                            o->label, o->chv->path, resp->status);
                return;
        }
        if (step == CHV_STEP_PING) {
                const char *v = json_string_value(json_object_get(j, "version"));
                const char *bv = json_string_value(json_object_get(j, "build_version"));
                snprintf(o->req.reply.caps.version, sizeof(o->req.reply.caps.version), "Cloud Hypervisor %.40s",
                         v ?: bv ?: "(unknown version)");
                json_decref(j);
                o->step++;
                op_step(o);
                return;
        }
        op_on_info(o, j);
        json_decref(j);
}

static void chv_on_http(Http1Client *c, int error, const Http1Response *resp, const char *message, void *userdata) {
        ChvOp *o = userdata;
        Chv *chv = o->chv;
        (void) c;

        chv_enter(chv);
        chv->hv.peer_pid = http1_client_peer_pid(chv->http); /* for host-side verification (B5.7) */
        ChvStep step = op_steps[o->req.op][o->step];
        const char *op = hv_op_to_string(o->req.op);
        if (error < 0) {
                if (error == -ETIMEDOUT) {
                        char d[32];
                        hv_req_fail(&o->req, error, "Cloud Hypervisor %s on %s: no response to %s within %s", op,
                                    chv->path, o->label, http1_format_timeout(d, sizeof(d), o->req.timeout));
                } else
                        hv_req_fail(&o->req, error, "Cloud Hypervisor %s: %s", op, message);
        } else if (resp->status >= 200 && resp->status < 300)
                op_on_success(o, step, resp);
        else {
                char fault[CHV_FAULT_MAX];
                chv_fault(resp, fault, sizeof(fault));
                bool no_device = strstr(fault, "Missing virtio-balloon") || strstr(fault, "MissingVirtioBalloon");
                hv_req_fail(&o->req, no_device ? -ENODEV : -EREMOTEIO, "Cloud Hypervisor %s: %s answered %d: %s", op,
                            o->label, resp->status, fault);
        }
        chv_leave(chv);
}

static void op_step(ChvOp *o) {
        Chv *chv = o->chv;
        char body[96];
        const char *method = "GET", *path = NULL;
        size_t body_len = 0;

        switch (op_steps[o->req.op][o->step]) {
        case CHV_STEP_END:
                hv_req_finish(&o->req);
                return;
        case CHV_STEP_PING:
                path = "/api/v1/vmm.ping";
                break;
        case CHV_STEP_INFO:
                path = "/api/v1/vm.info";
                break;
        case CHV_STEP_RESIZE:
                method = "PUT";
                path = "/api/v1/vm.resize";
                body_len =
                        (size_t) snprintf(body, sizeof(body), "{\"desired_balloon\":%" PRIu64 "}", o->desired_balloon);
                break;
        }

        snprintf(o->label, sizeof(o->label), "%s %s", method, path);
        usec_t now = now_mono();
        if (now >= o->deadline) {
                char d[32];
                hv_req_fail(&o->req, -ETIMEDOUT, "Cloud Hypervisor %s on %s: deadline of %s passed before %s",
                            hv_op_to_string(o->req.op), chv->path, http1_format_timeout(d, sizeof(d), o->req.timeout),
                            o->label);
                return;
        }
        int r = http1_client_request(chv->http, method, path, body_len ? body : NULL, body_len, o->deadline - now,
                                     chv_on_http, o);
        if (r < 0)
                hv_req_fail(&o->req, r, "Cloud Hypervisor %s: cannot send %s: %s", hv_op_to_string(o->req.op), o->label,
                            strerror(-r));
}

static void op_on_timer(EvTimer *t, void *userdata) {
        ChvOp *o = userdata;
        Chv *chv = o->chv;
        ev_timer_set(t, USEC_INFINITY);
        chv_enter(chv);
        op_step(o);
        chv_leave(chv);
}

static int chv_submit(Hv *hv, HvOp op, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *userdata) {
        Chv *chv = chv_of(hv);
        usec_t deadline = usec_add(now_mono(), timeout);
        HvReq *r;
        int k = hv_req_submit(&chv->reqs, sizeof(ChvOp), op, arg, timeout, cb, userdata, op_on_timer, &r);
        if (k < 0)
                return k;
        ChvOp *o = (ChvOp *) r;
        o->chv = chv;
        o->deadline = deadline;
        return 0;
}

static int chv_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return chv_submit(hv, HV_OP_GET_ACTUAL, 0, timeout, cb, ud);
}

static int chv_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *ud) {
        if (bytes == 0 || bytes > CHV_SIZE_MAX)
                return -EINVAL;
        return chv_submit(hv, HV_OP_SET_TARGET, bytes, timeout, cb, ud);
}

static int chv_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        (void) hv, (void) timeout, (void) cb, (void) ud;
        return -EOPNOTSUPP;
}

static int chv_set_stats_period(Hv *hv, uint32_t seconds, usec_t timeout, hv_reply_cb cb, void *ud) {
        (void) hv, (void) seconds, (void) timeout, (void) cb, (void) ud;
        return -EOPNOTSUPP;
}

static int chv_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return chv_submit(hv, HV_OP_GET_CAPS, 0, timeout, cb, ud);
}

static void chv_cancel(Hv *hv, void *userdata) {
        hv_reqs_cancel(&chv_of(hv)->reqs, userdata);
}

static void chv_free_now(Chv *chv) {
        hv_reqs_clear(&chv->reqs);
        http1_client_free(chv->http);
        free(chv->path);
        free(chv);
}

static void chv_free(Hv *hv) {
        Chv *chv = chv_of(hv);
        chv->reqs.dead = true;
        if (chv->busy == 0)
                chv_free_now(chv);
}

static void chv_counters(Hv *hv, HvCounters *ret) {
        Http1ClientCounters h;
        http1_client_counters(chv_of(hv)->http, &h);
        /* HTTP/1.1 has no unsolicited messages: bytes nobody asked for drop the connection. */
        *ret = (HvCounters){ .interim_responses = h.interim_responses, .read_yields = h.read_yields };
}

static const HvOps chv_ops = {
        .name = "cloud-hypervisor",
        .get_actual = chv_get_actual,
        .set_target = chv_set_target,
        .get_stats = chv_get_stats,
        .set_stats_period = chv_set_stats_period,
        .get_caps = chv_get_caps,
        .cancel = chv_cancel,
        .free = chv_free,
        .counters = chv_counters,
};

int chv_hv_new(Ev *ev, const ChvConfig *cfg, Hv **ret) {
        if (!cfg->socket_path)
                return -EINVAL;
        Chv *chv = calloc(1, sizeof(Chv));
        if (!chv)
                return -ENOMEM;
        chv->hv.ops = &chv_ops;
        chv->hv.ev = ev;
        hv_reqs_init(&chv->reqs, &chv->hv, op_release);
        chv->path = strdup(cfg->socket_path);
        Http1ClientConfig hc = { .socket_path = cfg->socket_path,
                                 .expected_uid = cfg->expected_uid,
                                 .max_body = cfg->max_body };
        int r = chv->path ? http1_client_new(ev, &hc, &chv->http) : -ENOMEM;
        if (r < 0) {
                free(chv->path);
                free(chv);
                return r;
        }
        *ret = &chv->hv;
        return 0;
}

void chv_hv_counters(Hv *hv, ChvCounters *ret) {
        http1_client_counters(chv_of(hv)->http, &ret->http);
}

Http1Client *chv_hv_http(Hv *hv) {
        return chv_of(hv)->http;
}
