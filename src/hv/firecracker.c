/* SPDX-License-Identifier: MIT */
/* The Firecracker driver (B1.3) over the asynchronous HTTP/1.1 client. A driver operation is a
 * short sequence of API requests ("steps") under one deadline; the VM size (GET /machine-config)
 * is cached once the VM is known to run, because it cannot change after boot, and fetched again
 * on a new connection (the VMM may have been restarted). Exact texts and rules: docs/drivers.md. */
#include "hv/firecracker.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hv/hv-rest.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

#define FC_PAGE            ((uint64_t) 4096)
#define FC_STATS_GUEST_MAX 16
#define FC_BODY_DEFAULT    ((size_t) 64 << 10) /* Firecracker's answers are well under 1 KiB */

typedef enum FcStep {
        FC_STEP_END = 0,
        FC_STEP_MACHINE_CONFIG, /* GET /machine-config: mem_size_mib */
        FC_STEP_STATISTICS,     /* GET /balloon/statistics: actual_pages and the guest's numbers */
        FC_STEP_PATCH_BALLOON,  /* PATCH /balloon {"amount_mib"} (after boot) */
        FC_STEP_GET_BALLOON,    /* GET /balloon: the device configuration */
        FC_STEP_PUT_BALLOON,    /* PUT /balloon: the same configuration, new amount (before boot) */
        FC_STEP_PATCH_STATS,    /* PATCH /balloon/statistics {"stats_polling_interval_s"} */
        FC_STEP_INSTANCE_INFO,  /* GET /: version */
} FcStep;

static const FcStep op_steps[_HV_OP_MAX][5] = {
        [HV_OP_GET_ACTUAL] = { FC_STEP_MACHINE_CONFIG, FC_STEP_STATISTICS },
        /* GET and PUT /balloon run only when PATCH says the VM has not started. */
        [HV_OP_SET_TARGET] = { FC_STEP_MACHINE_CONFIG, FC_STEP_PATCH_BALLOON, FC_STEP_GET_BALLOON,
                               FC_STEP_PUT_BALLOON },
        [HV_OP_GET_STATS] = { FC_STEP_GET_BALLOON, FC_STEP_STATISTICS },
        [HV_OP_SET_STATS_PERIOD] = { FC_STEP_PATCH_STATS },
        [HV_OP_GET_CAPS] = { FC_STEP_INSTANCE_INFO, FC_STEP_MACHINE_CONFIG, FC_STEP_GET_BALLOON },
};

typedef struct FcOp {
        HvRestOp base;   /* first */
        bool refetched;  /* the VM size was fetched again after a reconnect */
        json_t *balloon; /* GET /balloon's answer, for the pre-boot PUT */
        uint64_t amount; /* amount_mib being sent */
} FcOp;

typedef struct Fc {
        HvRest rest; /* first: Hv* and Fc* convert */

        uint64_t mem_mib;     /* 0: unknown */
        uint64_t mem_connect; /* the connection count when it was read */
        bool mem_frozen;      /* the VM runs: the size cannot change any more */

        uint64_t guest_stats[FC_STATS_GUEST_MAX]; /* last values seen, for last_update */
        uint64_t guest_stats_rt;                  /* realtime seconds when they last changed */

        FcCounters counters;
} Fc;

static Fc *fc_of(Hv *hv) {
        return (Fc *) hv;
}

static Fc *fc_of_op(FcOp *o) {
        return (Fc *) o->base.rest;
}

static uint64_t fc_connects(const Fc *fc) {
        Http1ClientCounters k;
        http1_client_counters(fc->rest.http, &k);
        return k.connects;
}

/* The saved balloon configuration goes with the operation. */
static void fc_release(HvRestOp *base) {
        json_decref(((FcOp *) base)->balloon);
}

/* --- Firecracker's answers --- */

static json_t *fc_json(const Http1Response *resp) {
        return hv_rest_json(resp, 0);
}

/* The error text: {"fault_message": …}; anything else (micro-http's own non-JSON errors) as
 * printable text. */
static void fc_fault(const Http1Response *resp, char *buf, size_t len) {
        json_t *j = fc_json(resp);
        const char *m = json_string_value(json_object_get(j, "fault_message"));
        if (!m)
                m = json_string_value(json_object_get(j, "error"));
        if (m)
                snprintf(buf, len, "%s", m);
        else
                hv_rest_printable(resp, buf, len);
        json_decref(j);
}

#define get_u64 hv_rest_get_u64

static uint64_t mem_bytes(const Fc *fc) {
        return fc->mem_mib * MiB;
}

/* --- steps --- */

static void fc_parse_stats(Fc *fc, json_t *j, HvStats *s) {
        static const char *const names[] = {
                "swap_in",          "swap_out",         "major_faults", "minor_faults", "free_memory",
                "total_memory",     "available_memory", "disk_caches",  "oom_kill",     "hugetlb_allocations",
                "hugetlb_failures", "alloc_stall",      "async_scan",   "direct_scan",  "async_reclaim",
                "direct_reclaim",
        };
        uint64_t *dst[] = { &s->swap_in, &s->swap_out,  &s->major_faults, &s->minor_faults, &s->free,
                            &s->total,   &s->available, &s->caches,       &s->oom_kills };
        uint64_t now[FC_STATS_GUEST_MAX];
        bool any = false;
        for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                uint64_t v;
                now[i] = get_u64(j, names[i], UINT64_MAX - 1, &v) ? v : HV_STAT_UNSET;
                any = any || now[i] != HV_STAT_UNSET;
                if (i < ELEMENTSOF(dst))
                        *dst[i] = now[i];
        }
        /* No timestamp from Firecracker: note when the guest's values last changed. */
        if (!any)
                s->last_update = 0;
        else {
                if (fc->guest_stats_rt == 0 || memcmp(now, fc->guest_stats, sizeof(now)) != 0) {
                        memcpy(fc->guest_stats, now, sizeof(now));
                        fc->guest_stats_rt = now_usec(CLOCK_REALTIME) / USEC_PER_SEC;
                }
                s->last_update = fc->guest_stats_rt;
        }
}

/* The steps' answers. Each returns 0 to go on with the next step, 1 when it has moved the
 * operation itself (finished it, or started it over), or a negative errno after failing it. */

static int on_machine_config(FcOp *o, json_t *j) {
        Fc *fc = fc_of_op(o);
        HvReq *q = &o->base.req;
        uint64_t mib;
        /* Pages of the VM must fit u32 (Firecracker's own limit on amount_mib * 256). */
        if (!get_u64(j, "mem_size_mib", UINT32_MAX / 256, &mib) || mib == 0) {
                hv_req_fail(q, -EBADMSG, "Firecracker %s: GET /machine-config has no valid \"mem_size_mib\"",
                            hv_op_to_string(q->op));
                return -EBADMSG;
        }
        if (mib != fc->mem_mib)
                fc->mem_frozen = false;
        fc->mem_mib = mib;
        fc->mem_connect = fc_connects(fc);
        q->reply.caps.ram_bytes = mem_bytes(fc);
        return 0;
}

static int on_statistics(FcOp *o, json_t *j) {
        Fc *fc = fc_of_op(o);
        HvReq *q = &o->base.req;
        uint64_t target_pages, actual_pages;
        if (!get_u64(j, "target_pages", UINT32_MAX, &target_pages) ||
            !get_u64(j, "actual_pages", UINT32_MAX, &actual_pages)) {
                hv_req_fail(q, -EBADMSG,
                            "Firecracker %s: GET /balloon/statistics has no valid \"target_pages\"/\"actual_pages\"",
                            hv_op_to_string(q->op));
                return -EBADMSG;
        }
        if (q->op == HV_OP_GET_ACTUAL && fc->mem_connect != fc_connects(fc) && !o->refetched) {
                /* Reconnected since the size was read: it may be another VMM now. */
                o->refetched = true;
                fc->mem_mib = 0;
                o->base.step = 0;
                hv_rest_step(&o->base);
                return 1;
        }
        fc->mem_frozen = true; /* statistics only answer after boot */
        uint64_t balloon = actual_pages * FC_PAGE;
        q->reply.actual = mem_bytes(fc) - MIN(balloon, mem_bytes(fc));
        if (q->op == HV_OP_GET_STATS)
                fc_parse_stats(fc, j, &q->reply.stats);
        return 0;
}

static int on_get_balloon(FcOp *o, json_t *j) {
        HvReq *q = &o->base.req;
        HvReply *rep = &q->reply;
        uint64_t amount, period = 0;
        if (!get_u64(j, "amount_mib", UINT32_MAX, &amount) || !json_is_boolean(json_object_get(j, "deflate_on_oom"))) {
                hv_req_fail(q, -EBADMSG, "Firecracker %s: GET /balloon has no valid \"amount_mib\"/\"deflate_on_oom\"",
                            hv_op_to_string(q->op));
                return -EBADMSG;
        }
        (void) get_u64(j, "stats_polling_interval_s", UINT16_MAX, &period);
        if (q->op == HV_OP_GET_CAPS) {
                rep->caps.balloon = true;
                rep->caps.stats = period > 0;
                rep->caps.deflate_on_oom = json_is_true(json_object_get(j, "deflate_on_oom"));
                rep->caps.free_page_reporting = json_is_true(json_object_get(j, "free_page_reporting"));
        } else if (q->op == HV_OP_GET_STATS)
                rep->stats.period = (uint32_t) period;
        else if (q->op == HV_OP_SET_TARGET) {
                json_decref(o->balloon);
                o->balloon = json_incref(j);
        }
        return 0;
}

static void op_on_success(FcOp *o, FcStep step, const Http1Response *resp) {
        Fc *fc = fc_of_op(o);
        HvReq *q = &o->base.req;
        _cleanup_(json_decrefp) json_t *j = NULL;

        if (resp->status != 204) {
                j = fc_json(resp);
                if (!json_is_object(j)) {
                        hv_req_fail(q, -EBADMSG,
                                    "Firecracker %s: %s on %s answered %d with a body that is not a JSON object",
                                    hv_op_to_string(q->op), o->base.label, fc->rest.path, resp->status);
                        return;
                }
        }
        int r = 0;
        switch (step) {
        case FC_STEP_MACHINE_CONFIG:
                r = on_machine_config(o, j);
                break;
        case FC_STEP_STATISTICS:
                r = on_statistics(o, j);
                break;
        case FC_STEP_PATCH_BALLOON:
                fc->mem_frozen = true;
                hv_req_finish(q); /* done: the pre-boot steps are not needed */
                return;
        case FC_STEP_GET_BALLOON:
                r = on_get_balloon(o, j);
                break;
        case FC_STEP_PUT_BALLOON:
                fc->counters.preboot_puts++;
                break;
        case FC_STEP_PATCH_STATS:
                break;
        case FC_STEP_INSTANCE_INFO: {
                const char *v = json_string_value(json_object_get(j, "vmm_version"));
                snprintf(q->reply.caps.version, sizeof(q->reply.caps.version), "Firecracker %.40s",
                         v ?: "(unknown version)");
                break;
        }
        case FC_STEP_END:
                break;
        }
        if (r == 0)
                hv_rest_next(&o->base);
}

static void op_on_refusal(FcOp *o, FcStep step, const Http1Response *resp) {
        Fc *fc = fc_of_op(o);
        HvReq *q = &o->base.req;
        char fault[HV_REST_FAULT_MAX];
        fc_fault(resp, fault, sizeof(fault));
        const char *op = hv_op_to_string(q->op);

        if (step == FC_STEP_PATCH_BALLOON && strstr(fault, "not activated yet")) {
                /* Right after boot, until the guest's virtio-balloon driver is up. */
                if (hv_rest_retry_later(&o->base, fault))
                        fc->counters.not_activated_retries++;
                return;
        }
        if (step == FC_STEP_PATCH_BALLOON && strstr(fault, "not supported before starting")) {
                hv_rest_next(&o->base); /* before boot: rewrite the configuration instead */
                return;
        }
        bool no_device = strstr(fault, "No balloon device") || strstr(fault, "Device not found");
        if (step == FC_STEP_GET_BALLOON && q->op == HV_OP_GET_CAPS && no_device) {
                q->reply.caps.balloon = false;
                hv_req_finish(q);
                return;
        }
        if (step == FC_STEP_STATISTICS && strstr(fault, "stats are disabled")) {
                hv_req_fail(
                        q, -EOPNOTSUPP,
                        "Firecracker %s: the balloon's statistics are disabled on this VM, and Firecracker reports the "
                        "balloon's actual size only with them (set stats_polling_interval_s > 0 before boot): %s",
                        op, fault);
                return;
        }
        hv_req_fail(q, no_device ? -ENODEV : -EREMOTEIO, "Firecracker %s: %s answered %d: %s", op, o->base.label,
                    resp->status, fault);
}

static void fc_response(HvRestOp *base, const Http1Response *resp) {
        FcOp *o = (FcOp *) base;
        FcStep step = op_steps[base->req.op][base->step];
        if (resp->status >= 200 && resp->status < 300)
                op_on_success(o, step, resp);
        else
                op_on_refusal(o, step, resp);
}

/* The size is trusted while the connection it was read on is open: a new connection may reach a
 * restarted VMM. */
static bool mem_cached(const Fc *fc) {
        return fc->mem_mib > 0 && fc->mem_frozen && fc->mem_connect == fc_connects(fc) &&
               http1_client_is_connected(fc->rest.http);
}

static int fc_build(HvRestOp *base, HvRestRequest *req) {
        FcOp *o = (FcOp *) base;
        Fc *fc = fc_of_op(o);
        FcStep step;
        for (;;) {
                step = op_steps[base->req.op][base->step];
                if (step == FC_STEP_END)
                        return 0;
                if (step == FC_STEP_MACHINE_CONFIG && base->req.op != HV_OP_GET_CAPS && mem_cached(fc)) {
                        base->step++;
                        continue;
                }
                break;
        }

        switch (step) {
        case FC_STEP_MACHINE_CONFIG:
                req->path = "/machine-config";
                break;
        case FC_STEP_STATISTICS:
                req->path = "/balloon/statistics";
                break;
        case FC_STEP_PATCH_BALLOON:
        case FC_STEP_PUT_BALLOON: {
                /* Guest bytes → balloon MiB, rounded down: the guest keeps at least the target. */
                uint64_t mem = mem_bytes(fc);
                o->amount = base->req.arg >= mem ? 0 : (mem - base->req.arg) / MiB;
                req->path = "/balloon";
                if (step == FC_STEP_PATCH_BALLOON) {
                        req->method = "PATCH";
                        req->body_len = (size_t) snprintf(req->body, sizeof(req->body), "{\"amount_mib\":%" PRIu64 "}",
                                                          o->amount);
                        break;
                }
                /* Before boot: the whole configuration again, only the amount changed (Balloon has
                 * deny_unknown_fields, so send back exactly the fields this version knows). */
                if (json_object_set_new(o->balloon, "amount_mib", json_integer((json_int_t) o->amount)) < 0 ||
                    !(req->dump = json_dumps(o->balloon, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
                        hv_req_fail(&base->req, -ENOMEM, "out of memory");
                        return -ENOMEM;
                }
                req->method = "PUT";
                req->body_len = strlen(req->dump);
                break;
        }
        case FC_STEP_GET_BALLOON:
                req->path = "/balloon";
                break;
        case FC_STEP_PATCH_STATS:
                req->method = "PATCH";
                req->path = "/balloon/statistics";
                req->body_len = (size_t) snprintf(req->body, sizeof(req->body),
                                                  "{\"stats_polling_interval_s\":%" PRIu64 "}", base->req.arg);
                break;
        case FC_STEP_INSTANCE_INFO:
                req->path = "/";
                break;
        case FC_STEP_END:
                return 0;
        }
        return 1;
}

static const HvRestOps fc_rest_ops = {
        .hv = { .name = "firecracker", HV_REST_CALLS },
        .product = "Firecracker",
        .size = sizeof(Fc),
        .op_size = sizeof(FcOp),
        .stats_period_max = UINT16_MAX, /* stats_polling_interval_s is a u16 */
        .build = fc_build,
        .response = fc_response,
        .release = fc_release,
};

int fc_hv_new(Ev *ev, const FcConfig *cfg, Hv **ret) {
        return hv_rest_new(ev, &fc_rest_ops, cfg->socket_path, cfg->expected_uid, cfg->max_body ?: FC_BODY_DEFAULT,
                           ret);
}

void fc_hv_counters(Hv *hv, FcCounters *ret) {
        Fc *fc = fc_of(hv);
        *ret = fc->counters;
        http1_client_counters(fc->rest.http, &ret->http);
}

Http1Client *fc_hv_http(Hv *hv) {
        return fc_of(hv)->rest.http;
}
