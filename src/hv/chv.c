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

#include "hv/hv-rest.h"
#include "shared/macro.h"
#include "shared/strutil.h"

#define CHV_PAGE        ((uint64_t) 4096)
#define CHV_BALLOON_MAX ((uint64_t) 1 << 44) /* 2^32 pages: vm.resize has no range check and wraps beyond */
#define CHV_SIZE_MAX    ((uint64_t) 1 << 62)

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

typedef struct ChvOp {
        HvRestOp base; /* first */
        uint64_t ram;  /* R from vm.info */
        uint64_t desired_balloon;
} ChvOp;

typedef struct Chv {
        HvRest rest; /* first: Hv* and Chv* convert */
} Chv;

static Chv *chv_of(Hv *hv) {
        return (Chv *) hv;
}

/* --- Cloud Hypervisor's answers --- */

static json_t *chv_json(const Http1Response *resp) {
        return hv_rest_json(resp, JSON_DECODE_ANY);
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
        if (!buf[0])
                hv_rest_printable(resp, buf, len);
}

#define get_u64 hv_rest_get_u64

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

static void op_on_info(ChvOp *o, json_t *j) {
        HvReq *q = &o->base.req;
        const char *path = o->base.rest->path, *op = hv_op_to_string(q->op);
        json_t *config = json_object_get(j, "config");
        json_t *balloon = json_object_get(config, "balloon");
        const char *state = json_string_value(json_object_get(j, "state"));
        uint64_t actual;

        if (!json_is_object(config) || !chv_ram(json_object_get(config, "memory"), &o->ram) ||
            !get_u64(j, "memory_actual_size", CHV_SIZE_MAX, &actual) ||
            (balloon && !json_is_null(balloon) && !json_is_object(balloon))) {
                hv_req_fail(q, -EBADMSG,
                            "Cloud Hypervisor %s: GET /api/v1/vm.info on %s has no valid memory configuration "
                            "and memory_actual_size",
                            op, path);
                return;
        }
        bool has_balloon = json_is_object(balloon);
        switch (q->op) {
        case HV_OP_GET_ACTUAL:
                q->reply.actual = actual;
                break;
        case HV_OP_GET_CAPS:
                q->reply.caps.ram_bytes = o->ram;
                q->reply.caps.balloon = has_balloon;
                q->reply.caps.stats = false; /* Cloud Hypervisor's balloon has no statistics virtqueue */
                q->reply.caps.deflate_on_oom = has_balloon && json_is_true(json_object_get(balloon, "deflate_on_oom"));
                q->reply.caps.free_page_reporting =
                        has_balloon && json_is_true(json_object_get(balloon, "free_page_reporting"));
                break;
        case HV_OP_SET_TARGET:
                /* A running VM without a balloon: let Cloud Hypervisor say so in its own words. A VM
                 * not yet booted would silently ignore the resize: refuse here. */
                if (!has_balloon && !(state && strcmp(state, "Running") == 0)) {
                        hv_req_fail(q, -ENODEV, "Cloud Hypervisor %s on %s: the VM has no balloon device (state %s)",
                                    op, path, state ?: "unknown");
                        return;
                }
                uint64_t g = q->arg;
                o->desired_balloon = g >= o->ram ? 0 : (o->ram - g) / CHV_PAGE * CHV_PAGE;
                if (o->desired_balloon >= CHV_BALLOON_MAX) {
                        char b[FORMAT_SIZE_MAX];
                        hv_req_fail(q, -ERANGE,
                                    "Cloud Hypervisor %s: a balloon of %s is more than Cloud Hypervisor can "
                                    "express (16 TiB)",
                                    op, format_size(b, sizeof(b), o->desired_balloon));
                        return;
                }
                break;
        default:
                break;
        }
        hv_rest_next(&o->base);
}

static void op_on_success(ChvOp *o, ChvStep step, const Http1Response *resp) {
        HvReq *q = &o->base.req;
        if (step == CHV_STEP_RESIZE) {
                hv_rest_next(&o->base);
                return;
        }
        json_t *j = chv_json(resp);
        if (!json_is_object(j)) {
                json_decref(j);
                hv_req_fail(q, -EBADMSG,
                            "Cloud Hypervisor %s: %s on %s answered %d with a body that is not a JSON object",
                            hv_op_to_string(q->op), o->base.label, o->base.rest->path, resp->status);
                return;
        }
        if (step == CHV_STEP_PING) {
                const char *v = json_string_value(json_object_get(j, "version"));
                const char *bv = json_string_value(json_object_get(j, "build_version"));
                snprintf(q->reply.caps.version, sizeof(q->reply.caps.version), "Cloud Hypervisor %.40s",
                         v ?: bv ?: "(unknown version)");
                json_decref(j);
                hv_rest_next(&o->base);
                return;
        }
        op_on_info(o, j);
        json_decref(j);
}

static void chv_response(HvRestOp *base, const Http1Response *resp) {
        ChvOp *o = (ChvOp *) base;
        ChvStep step = op_steps[base->req.op][base->step];
        if (resp->status >= 200 && resp->status < 300) {
                op_on_success(o, step, resp);
                return;
        }
        char fault[HV_REST_FAULT_MAX];
        chv_fault(resp, fault, sizeof(fault));
        bool no_device = strstr(fault, "Missing virtio-balloon") || strstr(fault, "MissingVirtioBalloon");
        hv_req_fail(&base->req, no_device ? -ENODEV : -EREMOTEIO, "Cloud Hypervisor %s: %s answered %d: %s",
                    hv_op_to_string(base->req.op), base->label, resp->status, fault);
}

static int chv_build(HvRestOp *base, HvRestRequest *req) {
        ChvOp *o = (ChvOp *) base;
        switch (op_steps[base->req.op][base->step]) {
        case CHV_STEP_END:
                return 0;
        case CHV_STEP_PING:
                req->path = "/api/v1/vmm.ping";
                break;
        case CHV_STEP_INFO:
                req->path = "/api/v1/vm.info";
                break;
        case CHV_STEP_RESIZE:
                req->method = "PUT";
                req->path = "/api/v1/vm.resize";
                req->body_len = (size_t) snprintf(req->body, sizeof(req->body), "{\"desired_balloon\":%" PRIu64 "}",
                                                  o->desired_balloon);
                break;
        }
        return 1;
}

static const HvRestOps chv_rest_ops = {
        .hv = { .name = "cloud-hypervisor", HV_REST_CALLS },
        .product = "Cloud Hypervisor",
        .size = sizeof(Chv),
        .op_size = sizeof(ChvOp),
        .stats_period_max = 0, /* no statistics virtqueue */
        .build = chv_build,
        .response = chv_response,
};

int chv_hv_new(Ev *ev, const ChvConfig *cfg, Hv **ret) {
        return hv_rest_new(ev, &chv_rest_ops, cfg->socket_path, cfg->expected_uid, cfg->max_body, ret);
}

void chv_hv_counters(Hv *hv, ChvCounters *ret) {
        http1_client_counters(chv_of(hv)->rest.http, &ret->http);
}

Http1Client *chv_hv_http(Hv *hv) {
        return chv_of(hv)->rest.http;
}
