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

#include "hv/hv-req.h"
#include "hv/qmp-proto.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

#define MiB                ((uint64_t) 1 << 20)
#define FC_PAGE            ((uint64_t) 4096)
#define FC_RETRY_MIN       (10 * USEC_PER_MSEC)
#define FC_RETRY_MAX       (200 * USEC_PER_MSEC)
#define FC_FAULT_MAX       320
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

typedef struct Fc Fc;
typedef struct FcOp FcOp;

struct FcOp {
        HvReq req; /* first: HvReq* and FcOp* convert; its timer fires at once to start, then for
                    * retry delays */
        Fc *fc;
        unsigned step;
        usec_t deadline;
        usec_t retry_delay;
        unsigned attempts;
        char last_fault[FC_FAULT_MAX]; /* the refusal being retried */
        bool refetched;                /* the VM size was fetched again after a reconnect */
        json_t *balloon;               /* GET /balloon's answer, for the pre-boot PUT */
        uint64_t amount;               /* amount_mib being sent */
        char label[64];                /* the request in flight, "PATCH /balloon" */
};

struct Fc {
        Hv hv; /* first: Hv* and Fc* convert */
        Http1Client *http;
        char *path;

        uint64_t mem_mib;     /* 0: unknown */
        uint64_t mem_connect; /* the connection count when it was read */
        bool mem_frozen;      /* the VM runs: the size cannot change any more */

        uint64_t guest_stats[FC_STATS_GUEST_MAX]; /* last values seen, for last_update */
        uint64_t guest_stats_rt;                  /* realtime seconds when they last changed */

        HvReqs reqs;
        unsigned busy;
        FcCounters counters;
};

static Fc *fc_of(Hv *hv) {
        return (Fc *) hv;
}

static void fc_free_now(Fc *fc);

static void fc_enter(Fc *fc) {
        fc->busy++;
}

static void fc_leave(Fc *fc) {
        if (--fc->busy == 0 && fc->reqs.dead)
                fc_free_now(fc);
}

static uint64_t fc_connects(const Fc *fc) {
        Http1ClientCounters k;
        http1_client_counters(fc->http, &k);
        return k.connects;
}

/* The request in flight and the saved balloon configuration go with the operation. */
static void op_release(HvReq *r) {
        FcOp *o = (FcOp *) r;
        http1_client_cancel(o->fc->http, o);
        json_decref(o->balloon);
}

/* --- Firecracker's answers --- */

/* Parses a JSON body strictly; integers beyond int64 (a guest can report any u64) become -1. */
static json_t *fc_json(const Http1Response *resp) {
        _cleanup_free_ char *copy = malloc(resp->body_len + 1);
        if (!copy)
                return NULL;
        memcpy(copy, resp->body, resp->body_len);
        copy[resp->body_len] = '\0';
        (void) qmp_clamp_big_ints(copy, resp->body_len);
        return json_loadb(copy, resp->body_len, JSON_REJECT_DUPLICATES, NULL);
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
        else if (resp->body_len == 0)
                snprintf(buf, len, "(no body)");
        else {
                size_t n = 0;
                for (size_t i = 0; i < resp->body_len && n + 1 < len; i++) {
                        unsigned char c = (unsigned char) resp->body[i];
                        buf[n++] = c < 0x20 || c == 0x7f ? ' ' : (char) c;
                }
                buf[n] = '\0';
        }
        json_decref(j);
}

static bool get_u64(json_t *o, const char *key, uint64_t max, uint64_t *ret) {
        json_t *v = json_object_get(o, key);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t) json_integer_value(v) > max)
                return false;
        *ret = (uint64_t) json_integer_value(v);
        return true;
}

static uint64_t mem_bytes(const Fc *fc) {
        return fc->mem_mib * MiB;
}

/* --- steps --- */

static void op_step(FcOp *o);

/* The deadline passed: with Firecracker's last refusal when retrying, which says why. */
static void op_fail_deadline(FcOp *o, const char *what) {
        char d[32];
        http1_format_timeout(d, sizeof(d), o->req.timeout);
        if (o->attempts > 0)
                hv_req_fail(&o->req, -ETIMEDOUT,
                            "Firecracker %s: %s still refused when the %s deadline passed (%u attempts): %s",
                            hv_op_to_string(o->req.op), o->label, d, o->attempts, o->last_fault);
        else
                hv_req_fail(&o->req, -ETIMEDOUT, "Firecracker %s on %s: %s within %s", hv_op_to_string(o->req.op),
                            o->fc->path, what, d);
}

static void op_retry_later(FcOp *o) {
        o->retry_delay = CLAMP(o->retry_delay * 2, FC_RETRY_MIN, FC_RETRY_MAX);
        ev_timer_set(o->req.timer, usec_add(now_mono(), o->retry_delay));
}

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

static void op_on_success(FcOp *o, FcStep step, const Http1Response *resp) {
        Fc *fc = o->fc;
        HvReply *rep = &o->req.reply;
        json_t *j = NULL;

        if (resp->status != 204) {
                j = fc_json(resp);
                if (!json_is_object(j)) {
                        json_decref(j);
                        hv_req_fail(&o->req, -EBADMSG,
                                    "Firecracker %s: %s on %s answered %d with a body that is not a JSON object",
                                    hv_op_to_string(o->req.op), o->label, fc->path, resp->status);
                        return;
                }
        }
        switch (step) {
        case FC_STEP_MACHINE_CONFIG: {
                uint64_t mib;
                /* Pages of the VM must fit u32 (Firecracker's own limit on amount_mib * 256). */
                if (!get_u64(j, "mem_size_mib", UINT32_MAX / 256, &mib) || mib == 0) {
                        json_decref(j);
                        hv_req_fail(&o->req, -EBADMSG,
                                    "Firecracker %s: GET /machine-config has no valid \"mem_size_mib\"",
                                    hv_op_to_string(o->req.op));
                        return;
                }
                if (mib != fc->mem_mib)
                        fc->mem_frozen = false;
                fc->mem_mib = mib;
                fc->mem_connect = fc_connects(fc);
                rep->caps.ram_bytes = mem_bytes(fc);
                break;
        }
        case FC_STEP_STATISTICS: {
                uint64_t target_pages, actual_pages;
                if (!get_u64(j, "target_pages", UINT32_MAX, &target_pages) ||
                    !get_u64(j, "actual_pages", UINT32_MAX, &actual_pages)) {
                        json_decref(j);
                        hv_req_fail(&o->req, -EBADMSG,
                                    "Firecracker %s: GET /balloon/statistics has no valid "
                                    "\"target_pages\"/\"actual_pages\"",
                                    hv_op_to_string(o->req.op));
                        return;
                }
                if (o->req.op == HV_OP_GET_ACTUAL && fc->mem_connect != fc_connects(fc) && !o->refetched) {
                        /* Reconnected since the size was read: it may be another VMM now. */
                        json_decref(j);
                        o->refetched = true;
                        fc->mem_mib = 0;
                        o->step = 0;
                        op_step(o);
                        return;
                }
                fc->mem_frozen = true; /* statistics only answer after boot */
                uint64_t balloon = actual_pages * FC_PAGE;
                rep->actual = mem_bytes(fc) - MIN(balloon, mem_bytes(fc));
                if (o->req.op == HV_OP_GET_STATS)
                        fc_parse_stats(fc, j, &rep->stats);
                break;
        }
        case FC_STEP_PATCH_BALLOON:
                fc->mem_frozen = true;
                json_decref(j);
                hv_req_finish(&o->req); /* done: the pre-boot steps are not needed */
                return;
        case FC_STEP_GET_BALLOON: {
                uint64_t amount, period = 0;
                if (!get_u64(j, "amount_mib", UINT32_MAX, &amount) ||
                    !json_is_boolean(json_object_get(j, "deflate_on_oom"))) {
                        json_decref(j);
                        hv_req_fail(&o->req, -EBADMSG,
                                    "Firecracker %s: GET /balloon has no valid \"amount_mib\"/\"deflate_on_oom\"",
                                    hv_op_to_string(o->req.op));
                        return;
                }
                (void) get_u64(j, "stats_polling_interval_s", UINT16_MAX, &period);
                if (o->req.op == HV_OP_GET_CAPS) {
                        rep->caps.balloon = true;
                        rep->caps.stats = period > 0;
                        rep->caps.deflate_on_oom = json_is_true(json_object_get(j, "deflate_on_oom"));
                        rep->caps.free_page_reporting = json_is_true(json_object_get(j, "free_page_reporting"));
                } else if (o->req.op == HV_OP_GET_STATS)
                        rep->stats.period = (uint32_t) period;
                else if (o->req.op == HV_OP_SET_TARGET) {
                        json_decref(o->balloon);
                        o->balloon = TAKE_PTR(j);
                }
                break;
        }
        case FC_STEP_PUT_BALLOON:
                fc->counters.preboot_puts++;
                break;
        case FC_STEP_PATCH_STATS:
                break;
        case FC_STEP_INSTANCE_INFO: {
                const char *v = json_string_value(json_object_get(j, "vmm_version"));
                snprintf(rep->caps.version, sizeof(rep->caps.version), "Firecracker %.40s", v ?: "(unknown version)");
                break;
        }
        case FC_STEP_END:
                break;
        }
        json_decref(j);
        o->step++;
        op_step(o);
}

static void op_on_refusal(FcOp *o, FcStep step, const Http1Response *resp) {
        Fc *fc = o->fc;
        char fault[FC_FAULT_MAX];
        fc_fault(resp, fault, sizeof(fault));
        const char *op = hv_op_to_string(o->req.op);

        if (step == FC_STEP_PATCH_BALLOON && strstr(fault, "not activated yet")) {
                /* Right after boot, until the guest's virtio-balloon driver is up. */
                o->attempts++;
                snprintf(o->last_fault, sizeof(o->last_fault), "%s", fault);
                usec_t next = CLAMP(o->retry_delay * 2, FC_RETRY_MIN, FC_RETRY_MAX);
                if (usec_add(now_mono(), next) < o->deadline) {
                        fc->counters.not_activated_retries++;
                        op_retry_later(o);
                        return;
                }
                op_fail_deadline(o, NULL);
                return;
        }
        if (step == FC_STEP_PATCH_BALLOON && strstr(fault, "not supported before starting")) {
                o->step++; /* before boot: rewrite the configuration instead */
                op_step(o);
                return;
        }
        bool no_device = strstr(fault, "No balloon device") || strstr(fault, "Device not found");
        if (step == FC_STEP_GET_BALLOON && o->req.op == HV_OP_GET_CAPS && no_device) {
                o->req.reply.caps.balloon = false;
                hv_req_finish(&o->req);
                return;
        }
        if (step == FC_STEP_STATISTICS && strstr(fault, "stats are disabled")) {
                hv_req_fail(
                        &o->req, -EOPNOTSUPP,
                        "Firecracker %s: the balloon's statistics are disabled on this VM, and Firecracker reports the "
                        "balloon's actual size only with them (set stats_polling_interval_s > 0 before boot): %s",
                        op, fault);
                return;
        }
        hv_req_fail(&o->req, no_device ? -ENODEV : -EREMOTEIO, "Firecracker %s: %s answered %d: %s", op, o->label,
                    resp->status, fault);
}

static void fc_on_http(Http1Client *c, int error, const Http1Response *resp, const char *message, void *userdata) {
        FcOp *o = userdata;
        Fc *fc = o->fc;
        (void) c;

        fc_enter(fc);
        fc->hv.peer_pid = http1_client_peer_pid(fc->http); /* for host-side verification (B5.7) */
        FcStep step = op_steps[o->req.op][o->step];
        if (error < 0) {
                if (error == -ETIMEDOUT) {
                        char what[96];
                        snprintf(what, sizeof(what), "no response to %s", o->label);
                        op_fail_deadline(o, what);
                } else
                        hv_req_fail(&o->req, error, "Firecracker %s: %s", hv_op_to_string(o->req.op), message);
        } else if (resp->status >= 200 && resp->status < 300)
                op_on_success(o, step, resp);
        else
                op_on_refusal(o, step, resp);
        fc_leave(fc);
}

/* The size is trusted while the connection it was read on is open: a new connection may reach a
 * restarted VMM. */
static bool mem_cached(const Fc *fc) {
        return fc->mem_mib > 0 && fc->mem_frozen && fc->mem_connect == fc_connects(fc) &&
               http1_client_is_connected(fc->http);
}

static void op_step(FcOp *o) {
        Fc *fc = o->fc;
        char body[128];
        const char *method = "GET", *path = NULL;
        _cleanup_free_ char *dump = NULL;
        size_t body_len = 0;

        FcStep step;
        for (;;) {
                step = op_steps[o->req.op][o->step];
                if (step == FC_STEP_END) {
                        hv_req_finish(&o->req);
                        return;
                }
                if (step == FC_STEP_MACHINE_CONFIG && o->req.op != HV_OP_GET_CAPS && mem_cached(fc)) {
                        o->step++;
                        continue;
                }
                break;
        }

        switch (step) {
        case FC_STEP_MACHINE_CONFIG:
                path = "/machine-config";
                break;
        case FC_STEP_STATISTICS:
                path = "/balloon/statistics";
                break;
        case FC_STEP_PATCH_BALLOON:
        case FC_STEP_PUT_BALLOON: {
                /* Guest bytes → balloon MiB, rounded down: the guest keeps at least the target. */
                uint64_t mem = mem_bytes(fc);
                o->amount = o->req.arg >= mem ? 0 : (mem - o->req.arg) / MiB;
                if (step == FC_STEP_PATCH_BALLOON) {
                        method = "PATCH";
                        path = "/balloon";
                        body_len = (size_t) snprintf(body, sizeof(body), "{\"amount_mib\":%" PRIu64 "}", o->amount);
                        break;
                }
                /* Before boot: the whole configuration again, only the amount changed (Balloon has
                 * deny_unknown_fields, so send back exactly the fields this version knows). */
                if (json_object_set_new(o->balloon, "amount_mib", json_integer((json_int_t) o->amount)) < 0 ||
                    !(dump = json_dumps(o->balloon, JSON_COMPACT | JSON_PRESERVE_ORDER))) {
                        hv_req_fail(&o->req, -ENOMEM, "out of memory");
                        return;
                }
                method = "PUT";
                path = "/balloon";
                body_len = strlen(dump);
                break;
        }
        case FC_STEP_GET_BALLOON:
                path = "/balloon";
                break;
        case FC_STEP_PATCH_STATS:
                method = "PATCH";
                path = "/balloon/statistics";
                body_len =
                        (size_t) snprintf(body, sizeof(body), "{\"stats_polling_interval_s\":%" PRIu64 "}", o->req.arg);
                break;
        case FC_STEP_INSTANCE_INFO:
                path = "/";
                break;
        case FC_STEP_END:
                return;
        }
        if (!path) /* every step above sets it; a new step that forgets is a bug, not a crash */
                return;

        snprintf(o->label, sizeof(o->label), "%s %s", method, path);
        usec_t now = now_mono();
        if (now >= o->deadline) {
                char what[96];
                snprintf(what, sizeof(what), "no time left to send %s", o->label);
                op_fail_deadline(o, what);
                return;
        }
        int r = http1_client_request(fc->http, method, path, dump ?: (body_len ? body : NULL), body_len,
                                     o->deadline - now, fc_on_http, o);
        if (r < 0)
                hv_req_fail(&o->req, r, "Firecracker %s: cannot send %s: %s", hv_op_to_string(o->req.op), o->label,
                            strerror(-r));
}

static void op_on_timer(EvTimer *t, void *userdata) {
        FcOp *o = userdata;
        Fc *fc = o->fc;
        ev_timer_set(t, USEC_INFINITY);
        fc_enter(fc);
        op_step(o);
        fc_leave(fc);
}

static int fc_submit(Hv *hv, HvOp op, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *userdata) {
        Fc *fc = fc_of(hv);
        usec_t deadline = usec_add(now_mono(), timeout);
        HvReq *r;
        int k = hv_req_submit(&fc->reqs, sizeof(FcOp), op, arg, timeout, cb, userdata, op_on_timer, &r);
        if (k < 0)
                return k;
        FcOp *o = (FcOp *) r;
        o->fc = fc;
        o->deadline = deadline;
        return 0;
}

static int fc_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return fc_submit(hv, HV_OP_GET_ACTUAL, 0, timeout, cb, ud);
}

static int fc_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *ud) {
        if (bytes == 0 || bytes > (UINT64_C(1) << 62))
                return -EINVAL;
        return fc_submit(hv, HV_OP_SET_TARGET, bytes, timeout, cb, ud);
}

static int fc_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return fc_submit(hv, HV_OP_GET_STATS, 0, timeout, cb, ud);
}

static int fc_set_stats_period(Hv *hv, uint32_t seconds, usec_t timeout, hv_reply_cb cb, void *ud) {
        if (seconds > UINT16_MAX) /* stats_polling_interval_s is a u16 */
                return -ERANGE;
        return fc_submit(hv, HV_OP_SET_STATS_PERIOD, seconds, timeout, cb, ud);
}

static int fc_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return fc_submit(hv, HV_OP_GET_CAPS, 0, timeout, cb, ud);
}

static void fc_cancel(Hv *hv, void *userdata) {
        hv_reqs_cancel(&fc_of(hv)->reqs, userdata);
}

static void fc_free_now(Fc *fc) {
        hv_reqs_clear(&fc->reqs);
        http1_client_free(fc->http);
        free(fc->path);
        free(fc);
}

static void fc_free(Hv *hv) {
        Fc *fc = fc_of(hv);
        fc->reqs.dead = true;
        if (fc->busy == 0)
                fc_free_now(fc);
}

static void fc_counters(Hv *hv, HvCounters *ret) {
        Http1ClientCounters h;
        http1_client_counters(fc_of(hv)->http, &h);
        /* HTTP/1.1 has no unsolicited messages: bytes nobody asked for drop the connection. */
        *ret = (HvCounters){ .interim_responses = h.interim_responses, .read_yields = h.read_yields };
}

static const HvOps fc_ops = {
        .name = "firecracker",
        .get_actual = fc_get_actual,
        .set_target = fc_set_target,
        .get_stats = fc_get_stats,
        .set_stats_period = fc_set_stats_period,
        .get_caps = fc_get_caps,
        .cancel = fc_cancel,
        .free = fc_free,
        .counters = fc_counters,
};

int fc_hv_new(Ev *ev, const FcConfig *cfg, Hv **ret) {
        if (!cfg->socket_path)
                return -EINVAL;
        Fc *fc = calloc(1, sizeof(Fc));
        if (!fc)
                return -ENOMEM;
        fc->hv.ops = &fc_ops;
        fc->hv.ev = ev;
        hv_reqs_init(&fc->reqs, &fc->hv, op_release);
        fc->path = strdup(cfg->socket_path);
        Http1ClientConfig hc = { .socket_path = cfg->socket_path,
                                 .expected_uid = cfg->expected_uid,
                                 .max_body = cfg->max_body ?: FC_BODY_DEFAULT };
        int r = fc->path ? http1_client_new(ev, &hc, &fc->http) : -ENOMEM;
        if (r < 0) {
                free(fc->path);
                free(fc);
                return r;
        }
        *ret = &fc->hv;
        return 0;
}

void fc_hv_counters(Hv *hv, FcCounters *ret) {
        Fc *fc = fc_of(hv);
        *ret = fc->counters;
        http1_client_counters(fc->http, &ret->http);
}

Http1Client *fc_hv_http(Hv *hv) {
        return fc_of(hv)->http;
}
