/* SPDX-License-Identifier: MIT */
/* The libvirt driver (B1.5). libvirt's C API blocks, and the daemon's loop must not, so every
 * libvirt call is made by one worker thread per driver: the loop queues a job, the worker runs it
 * and puts the result on a "done" list, an eventfd wakes the loop, which matches the result to its
 * request by sequence number. Deadlines live on the loop side (one EvTimer per request); a result
 * that comes after its request's deadline finds no request and is dropped. The loop side keeps its
 * requests as every driver does (hv/hv-req.h: cancel, one callback at most, the deferred free of
 * a driver freed from inside its own callback).
 *
 * Ownership: the loop side (Lv) and the worker share LvShared under its mutex. Whoever leaves last
 * frees it: normally the loop side, after joining an idle worker; but when the driver is freed
 * while the worker is inside a libvirt call that may never return, the worker is detached and
 * frees LvShared itself once the call comes back. Only the worker ever touches libvirt objects. */
#include "hv/libvirt.h"

#include <errno.h>
#include <inttypes.h>
#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "hv/hv-req.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/strutil.h"

/* How long freeing the driver waits for an idle worker to close its connection (virConnectClose
 * talks to the daemon, which may hang) before leaving the worker to finish on its own. */
#define LV_JOIN_TIMEOUT (1 * USEC_PER_SEC)

#define KIB             UINT64_C(1024)

typedef struct LvJob {
        uint64_t seq;
        HvOp op;
        uint64_t arg;
        HvReply reply; /* written by the worker */
        struct LvJob *next;
} LvJob;

typedef struct LvShared {
        pthread_mutex_t lock;
        pthread_cond_t cond;
        /* under lock */
        LvJob *queue, **queue_tail; /* submitted, not started */
        LvJob *done, **done_tail;   /* finished, waiting for the loop */
        uint64_t running;           /* seq of the job inside libvirt, 0 when idle */
        bool stop;                  /* the loop side is gone or going */
        bool detached;              /* ... and left the worker to free this */
        bool exited;                /* the worker is past its last libvirt call */
        LibvirtCounters counters;
        int efd;
        /* read-only after creation */
        char *uri, *domain;
        /* the worker's own (no lock) */
        virConnectPtr conn;
        virDomainPtr dom;
} LvShared;

/* A request on the loop side. The worker, not the loop, starts its job, at once: the request's
 * timer (hv/hv-req.h) is re-armed when it is submitted, to its deadline. */
typedef struct LvReq {
        HvReq req;    /* first: HvReq* and LvReq* convert */
        uint64_t seq; /* of its job */
} LvReq;

typedef struct Lv {
        Hv hv; /* first: Hv* and Lv* convert */
        LvShared *s;
        pthread_t thread;
        bool thread_started;
        EvIo *io;
        HvReqs reqs; /* the requests, the busy count and the deferred free */
        uint64_t next_seq;
} Lv;

static Lv *lv_of(Hv *hv) {
        return (Lv *) hv;
}

/* --- libvirt errors --- */

typedef struct LvErr {
        int code;
        int sys_errno;
        char msg[HV_MESSAGE_MAX - 128];
} LvErr;

static void lv_quiet(void *userdata, virErrorPtr error) {
        (void) userdata;
        (void) error;
}

static pthread_once_t lv_once = PTHREAD_ONCE_INIT;
static int lv_init_result;

static void lv_global_init(void) {
        /* libvirt prints every error to stderr unless a handler is set; the reply carries it. */
        virSetErrorFunc(NULL, lv_quiet);
        lv_init_result = virInitialize() < 0 ? -EIO : 0;
}

/* Copies libvirt's last error of this thread; call it right after the failed call. */
static void lv_err_capture(LvErr *e) {
        virErrorPtr v = virGetLastError();
        e->code = v ? v->code : VIR_ERR_INTERNAL_ERROR;
        e->sys_errno = v && v->code == VIR_ERR_SYSTEM_ERROR && v->int1 > 0 ? v->int1 : 0;
        strscpy(e->msg, sizeof(e->msg), v && v->message ? v->message : virGetLastErrorMessage());
}

static int lv_err_to_errno(const LvErr *e) {
        switch (e->code) {
        case VIR_ERR_NO_DOMAIN:
                return -ENOENT;
        case VIR_ERR_OPERATION_INVALID: /* mostly "domain is not running" */
                return -ESRCH;
        case VIR_ERR_NO_SUPPORT:
        case VIR_ERR_OPERATION_UNSUPPORTED:
        case VIR_ERR_ARGUMENT_UNSUPPORTED:
                return -EOPNOTSUPP;
        case VIR_ERR_INVALID_ARG:
                return -EINVAL;
        case VIR_ERR_AUTH_FAILED:
        case VIR_ERR_AUTH_CANCELLED:
        case VIR_ERR_AUTH_UNAVAILABLE:
        case VIR_ERR_OPERATION_DENIED:
        case VIR_ERR_ACCESS_DENIED:
                return -EACCES;
        case VIR_ERR_OPERATION_TIMEOUT:
                return -ETIMEDOUT;
        case VIR_ERR_NO_MEMORY:
                return -ENOMEM;
        case VIR_ERR_NO_CONNECT:
                return -ECONNREFUSED;
        case VIR_ERR_RPC:
                return -EPROTO;
        case VIR_ERR_SYSTEM_ERROR:
                return e->sys_errno > 0 ? -e->sys_errno : -EIO;
        default:
                return -EREMOTEIO;
        }
}

static void lv_fail(HvReply *rep, int error, const char *fmt, ...) _printf_(3, 4);
static void lv_fail(HvReply *rep, int error, const char *fmt, ...) {
        va_list ap;
        rep->error = error < 0 ? error : -EIO;
        va_start(ap, fmt);
        char raw[2 * HV_MESSAGE_MAX]; /* libvirt's words: cut and cleaned by utf8_sanitize() */
        vsnprintf(raw, sizeof(raw), fmt, ap);
        utf8_sanitize(rep->message, sizeof(rep->message), raw, strlen(raw), 0);
        va_end(ap);
}

/* --- the worker: connection and domain --- */

static bool lv_looks_like_uuid(const char *s) {
        size_t n = strlen(s), hex = 0;
        if (n != 32 && n != 36)
                return false;
        for (size_t i = 0; i < n; i++) {
                if (n == 36 && (i == 8 || i == 13 || i == 18 || i == 23)) {
                        if (s[i] != '-')
                                return false;
                } else if ((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') || (s[i] >= 'A' && s[i] <= 'F'))
                        hex++;
                else
                        return false;
        }
        return hex == 32;
}

static void lv_drop_domain(LvShared *s) {
        if (s->dom)
                virDomainFree(s->dom);
        s->dom = NULL;
}

static void lv_drop_connection(LvShared *s) {
        lv_drop_domain(s);
        if (s->conn)
                virConnectClose(s->conn);
        s->conn = NULL;
}

static void lv_count(LvShared *s, uint64_t *counter) {
        pthread_mutex_lock(&s->lock);
        (*counter)++;
        pthread_mutex_unlock(&s->lock);
}

/* Opens the connection and looks the domain up if needed. Returns 0, or a negative errno with
 * the reply filled. */
static int lv_ensure(LvShared *s, HvReply *rep) {
        LvErr e = { .code = VIR_ERR_NO_DOMAIN };

        if (s->conn && virConnectIsAlive(s->conn) != 1) {
                log_debug("libvirt: connection to %s is no longer alive, reopening", s->uri);
                lv_drop_connection(s);
        }
        if (!s->conn) {
                s->conn = virConnectOpen(s->uri);
                if (!s->conn) {
                        lv_err_capture(&e);
                        int r = lv_err_to_errno(&e);
                        if (r != -EACCES && r != -ENOENT && r != -ECONNREFUSED && r != -EPERM)
                                r = -ECONNREFUSED;
                        lv_fail(rep, r, "cannot connect to libvirt at %s: %s", s->uri, e.msg);
                        return rep->error;
                }
                lv_count(s, &s->counters.connects);
                log_debug("libvirt: connected to %s", s->uri);
        }
        if (s->dom)
                return 0;

        bool uuid = lv_looks_like_uuid(s->domain);
        if (uuid) {
                s->dom = virDomainLookupByUUIDString(s->conn, s->domain);
                if (!s->dom)
                        lv_err_capture(&e);
        }
        if (!s->dom && (!uuid || e.code == VIR_ERR_NO_DOMAIN)) {
                LvErr by_name;
                s->dom = virDomainLookupByName(s->conn, s->domain);
                if (!s->dom) {
                        lv_err_capture(&by_name);
                        if (!uuid || by_name.code != VIR_ERR_NO_DOMAIN)
                                e = by_name;
                }
        }
        if (!s->dom) {
                lv_fail(rep, lv_err_to_errno(&e), "cannot find libvirt domain '%s' on %s: %s", s->domain, s->uri,
                        e.msg);
                return rep->error;
        }
        lv_count(s, &s->counters.lookups);
        return 0;
}

/* --- the worker: operations --- */

/* Finds an attribute of the element that starts at tag (up to its '>'); both quote styles. */
static bool xml_attr(const char *tag, const char *name, char *buf, size_t len) {
        const char *end = strchr(tag, '>');
        size_t nl = strlen(name);
        if (!end)
                return false;
        for (const char *p = tag; p && p < end; p++) {
                p = strstr(p, name);
                if (!p || p >= end)
                        return false;
                if ((p[-1] != ' ' && p[-1] != '\t' && p[-1] != '\n') || p[nl] != '=' ||
                    (p[nl + 1] != '\'' && p[nl + 1] != '"'))
                        continue;
                char q = p[nl + 1];
                const char *v = p + nl + 2, *ve = strchr(v, q);
                if (!ve || ve > end)
                        return false;
                size_t n = MIN((size_t) (ve - v), len - 1);
                memcpy(buf, v, n);
                buf[n] = '\0';
                return true;
        }
        return false;
}

typedef struct LvBalloonXml {
        bool present; /* a <memballoon> other than model='none' */
        bool virtio;
        bool autodeflate, free_page_reporting;
        bool has_period;
        uint32_t period;
} LvBalloonXml;

static void lv_parse_balloon(const char *xml, LvBalloonXml *ret) {
        char v[32];
        *ret = (LvBalloonXml){ 0 };
        const char *m = strstr(xml, "<memballoon");
        if (!m || (m[11] != ' ' && m[11] != '>' && m[11] != '/'))
                return;
        if (xml_attr(m, "model", v, sizeof(v))) {
                if (strcmp(v, "none") == 0)
                        return;
                ret->virtio = strncmp(v, "virtio", 6) == 0;
        }
        ret->present = true;
        ret->autodeflate = xml_attr(m, "autodeflate", v, sizeof(v)) && strcmp(v, "on") == 0;
        ret->free_page_reporting = xml_attr(m, "freePageReporting", v, sizeof(v)) && strcmp(v, "on") == 0;

        const char *gt = strchr(m, '>');
        if (!gt || gt[-1] == '/')
                return; /* <memballoon .../>: no children */
        const char *close = strstr(gt, "</memballoon>");
        const char *st = strstr(gt, "<stats");
        uint64_t p;
        if (st && (!close || st < close) && xml_attr(st, "period", v, sizeof(v)) && parse_u64(v, &p) >= 0 &&
            p <= UINT32_MAX) {
                ret->has_period = true;
                ret->period = (uint32_t) p;
        }
}

static int lv_get_balloon_xml(LvShared *s, HvReply *rep, LvBalloonXml *ret) {
        char *xml = virDomainGetXMLDesc(s->dom, 0);
        if (!xml) {
                LvErr e;
                lv_err_capture(&e);
                lv_fail(rep, lv_err_to_errno(&e), "libvirt cannot describe domain '%s': %s", s->domain, e.msg);
                return rep->error;
        }
        lv_parse_balloon(xml, ret);
        free(xml);
        return 0;
}

/* libvirt passes QEMU's "unset" (2^64 - 1) through, divided by its unit: treat anything that
 * cannot be a real value as unset. */
static uint64_t lv_kib(unsigned long long v) {
        return v >= UINT64_MAX / KIB ? HV_STAT_UNSET : (uint64_t) v * KIB;
}

static uint64_t lv_count_stat(unsigned long long v) {
        return v >= (unsigned long long) INT64_MAX ? HV_STAT_UNSET : (uint64_t) v;
}

static int lv_memory_stats(LvShared *s, HvReply *rep, virDomainMemoryStatStruct *st, int *ret_n) {
        int n = virDomainMemoryStats(s->dom, st, VIR_DOMAIN_MEMORY_STAT_NR, 0);
        if (n < 0) {
                LvErr e;
                lv_err_capture(&e);
                lv_fail(rep, lv_err_to_errno(&e), "libvirt cannot read the memory statistics of domain '%s': %s",
                        s->domain, e.msg);
                return rep->error;
        }
        *ret_n = n;
        return 0;
}

static int lv_op_get_actual(LvShared *s, HvReply *rep) {
        virDomainMemoryStatStruct st[VIR_DOMAIN_MEMORY_STAT_NR];
        int n;
        int r = lv_memory_stats(s, rep, st, &n);
        if (r < 0)
                return r;
        for (int i = 0; i < n; i++)
                if (st[i].tag == VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON) {
                        uint64_t b = lv_kib(st[i].val);
                        if (b == HV_STAT_UNSET)
                                break;
                        rep->actual = b;
                        return 0;
                }
        lv_fail(rep, -ENODEV, "libvirt reports no balloon size for domain '%s' (no memballoon device?)", s->domain);
        return rep->error;
}

static int lv_op_set_target(LvShared *s, HvReply *rep, uint64_t bytes) {
        LvErr e;
        uint64_t kib = bytes / KIB;
        /* QEMU clamps a `balloon` above the VM's size to a full deflate; libvirt refuses it
         * ("cannot set memory higher than max memory"): clamp here so every driver agrees. */
        unsigned long max = virDomainGetMaxMemory(s->dom);
        if (max == 0) {
                lv_err_capture(&e);
                lv_fail(rep, lv_err_to_errno(&e), "libvirt cannot read the maximum memory of domain '%s': %s",
                        s->domain, e.msg);
                return rep->error;
        }
        if (kib > max)
                kib = max;
        if (virDomainSetMemoryFlags(s->dom, (unsigned long) kib, VIR_DOMAIN_AFFECT_LIVE) < 0) {
                lv_err_capture(&e);
                lv_fail(rep, lv_err_to_errno(&e),
                        "libvirt refused to set the memory of domain '%s' to %" PRIu64 " KiB: %s", s->domain, kib,
                        e.msg);
                return rep->error;
        }
        return 0;
}

static int lv_op_get_stats(LvShared *s, HvReply *rep) {
        virDomainMemoryStatStruct st[VIR_DOMAIN_MEMORY_STAT_NR];
        int n;
        int r = lv_memory_stats(s, rep, st, &n);
        if (r < 0)
                return r;
        HvStats *o = &rep->stats;
        for (int i = 0; i < n; i++) {
                unsigned long long v = st[i].val;
                switch (st[i].tag) {
                case VIR_DOMAIN_MEMORY_STAT_SWAP_IN:
                        o->swap_in = lv_kib(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_SWAP_OUT:
                        o->swap_out = lv_kib(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_MAJOR_FAULT:
                        o->major_faults = lv_count_stat(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_MINOR_FAULT:
                        o->minor_faults = lv_count_stat(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_UNUSED:
                        o->free = lv_kib(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_AVAILABLE:
                        o->total = lv_kib(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_USABLE:
                        o->available = lv_kib(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_DISK_CACHES:
                        o->caches = lv_kib(v);
                        break;
                case VIR_DOMAIN_MEMORY_STAT_LAST_UPDATE:
                        o->last_update = v >= (unsigned long long) INT64_MAX ? 0 : (uint64_t) v;
                        break;
                default:
                        break;
                }
        }
        LvBalloonXml b;
        /* The period is optional: statistics without it are still statistics. */
        if (lv_get_balloon_xml(s, rep, &b) < 0) {
                rep->error = 0;
                rep->message[0] = '\0';
        } else if (b.has_period)
                o->period = b.period;
        return 0;
}

static int lv_op_set_stats_period(LvShared *s, HvReply *rep, uint32_t seconds) {
        if (virDomainSetMemoryStatsPeriod(s->dom, (int) seconds, VIR_DOMAIN_AFFECT_LIVE) < 0) {
                LvErr e;
                lv_err_capture(&e);
                lv_fail(rep, lv_err_to_errno(&e),
                        "libvirt refused the statistics period %" PRIu32 " s for domain '%s': %s", seconds, s->domain,
                        e.msg);
                return rep->error;
        }
        return 0;
}

static void lv_format_version(char *buf, size_t len, unsigned long v) {
        snprintf(buf, len, "%lu.%lu.%lu", v / 1000000, (v / 1000) % 1000, v % 1000);
}

static int lv_op_get_caps(LvShared *s, HvReply *rep) {
        LvErr e;
        LvBalloonXml b;
        int r = lv_get_balloon_xml(s, rep, &b);
        if (r < 0)
                return r;
        unsigned long max = virDomainGetMaxMemory(s->dom);
        if (max == 0) {
                lv_err_capture(&e);
                lv_fail(rep, lv_err_to_errno(&e), "libvirt cannot read the maximum memory of domain '%s': %s",
                        s->domain, e.msg);
                return rep->error;
        }
        HvCaps *c = &rep->caps;
        c->balloon = b.present;
        c->stats = b.present && b.virtio;
        c->deflate_on_oom = b.present && b.autodeflate;
        c->free_page_reporting = b.present && b.free_page_reporting;
        c->ram_bytes = (uint64_t) max * KIB;

        /* The version is informative: a daemon that will not tell still has a working balloon. */
        unsigned long hv = 0, lib = 0;
        const char *type = virConnectGetType(s->conn);
        char hvs[32] = "", libs[32] = "";
        if (virConnectGetVersion(s->conn, &hv) == 0 && hv > 0)
                lv_format_version(hvs, sizeof(hvs), hv);
        if (virConnectGetLibVersion(s->conn, &lib) == 0 && lib > 0)
                lv_format_version(libs, sizeof(libs), lib);
        snprintf(c->version, sizeof(c->version), "%s%s%s%slibvirt %s", type ?: "", hvs[0] ? " " : "", hvs,
                 type || hvs[0] ? ", " : "", libs[0] ? libs : "(unknown version)");
        return 0;
}

static int lv_dispatch(LvShared *s, LvJob *j) {
        virResetLastError();
        switch (j->op) {
        case HV_OP_GET_ACTUAL:
                return lv_op_get_actual(s, &j->reply);
        case HV_OP_SET_TARGET:
                return lv_op_set_target(s, &j->reply, j->arg);
        case HV_OP_GET_STATS:
                return lv_op_get_stats(s, &j->reply);
        case HV_OP_SET_STATS_PERIOD:
                return lv_op_set_stats_period(s, &j->reply, (uint32_t) j->arg);
        case HV_OP_GET_CAPS:
                return lv_op_get_caps(s, &j->reply);
        default:
                lv_fail(&j->reply, -EINVAL, "unknown operation");
                return -EINVAL;
        }
}

static void lv_reset_reply(LvJob *j) {
        j->reply = (HvReply){ .op = j->op };
        hv_stats_init(&j->reply.stats);
}

static void lv_run(LvShared *s, LvJob *j) {
        if (lv_ensure(s, &j->reply) < 0)
                return;
        if (lv_dispatch(s, j) >= 0)
                return;
        /* Every operation is idempotent, so one retry is safe when the failure was the
         * connection dying or the domain having been recreated (new object, same name). */
        bool dead = virConnectIsAlive(s->conn) != 1;
        bool gone = j->reply.error == -ENOENT;
        if (!dead && !gone)
                return;
        log_debug("libvirt: %s failed (%s), %s and retrying once", hv_op_to_string(j->op), j->reply.message,
                  dead ? "reconnecting" : "looking the domain up again");
        if (dead)
                lv_drop_connection(s);
        else
                lv_drop_domain(s);
        HvReply first = j->reply;
        lv_reset_reply(j);
        if (lv_ensure(s, &j->reply) < 0) {
                if (!dead)
                        return; /* "cannot find domain": the lookup says it best */
                j->reply = first;
                return;
        }
        (void) lv_dispatch(s, j);
}

static void lv_shared_free(LvShared *s);

static void *lv_worker(void *p) {
        LvShared *s = p;

        pthread_mutex_lock(&s->lock);
        for (;;) {
                while (!s->stop && !s->queue)
                        pthread_cond_wait(&s->cond, &s->lock);
                if (s->stop)
                        break;
                LvJob *j = s->queue;
                s->queue = j->next;
                if (!s->queue)
                        s->queue_tail = &s->queue;
                j->next = NULL;
                s->running = j->seq;
                s->counters.calls++;
                pthread_mutex_unlock(&s->lock);

                lv_run(s, j);

                pthread_mutex_lock(&s->lock);
                s->running = 0;
                if (s->stop) {
                        free(j);
                        break;
                }
                *s->done_tail = j;
                s->done_tail = &j->next;
                uint64_t one = 1;
                (void) !write(s->efd, &one, sizeof(one));
        }
        pthread_mutex_unlock(&s->lock);

        lv_drop_connection(s);

        pthread_mutex_lock(&s->lock);
        bool detached = s->detached;
        s->exited = true;
        pthread_mutex_unlock(&s->lock);
        if (detached)
                lv_shared_free(s); /* the loop side is long gone: this is the last reference */
        return NULL;
}

/* --- the loop side --- */

/* Removes the job of a request from the worker's queue, if it has not started. Called with the
 * lock held. Returns true when it was removed. */
static bool lv_unqueue_locked(LvShared *s, uint64_t seq) {
        for (LvJob **p = &s->queue; *p; p = &(*p)->next)
                if ((*p)->seq == seq) {
                        LvJob *j = *p;
                        *p = j->next;
                        if (!*p)
                                s->queue_tail = p;
                        free(j);
                        s->counters.skipped++;
                        return true;
                }
        return false;
}

/* A request's job goes with it if the worker has not started it (a cancelled request; a timeout
 * has taken it out already, a result has left the queue). Not while the driver is freed:
 * lv_stop_worker() drops the whole queue then. */
static void lv_req_release(HvReq *q) {
        LvShared *s = lv_of(q->reqs->hv)->s;
        if (q->reqs->dead)
                return;
        pthread_mutex_lock(&s->lock);
        (void) lv_unqueue_locked(s, ((LvReq *) q)->seq);
        pthread_mutex_unlock(&s->lock);
}

static void lv_on_timeout(EvTimer *t, void *userdata) {
        LvReq *r = userdata;
        HvReq *q = &r->req;
        Lv *l = lv_of(q->reqs->hv);
        LvShared *s = l->s;
        char d[32];
        (void) t;

        pthread_mutex_lock(&s->lock);
        bool skipped = lv_unqueue_locked(s, r->seq);
        s->counters.timeouts++;
        pthread_mutex_unlock(&s->lock);

        q->reply.error = -ETIMEDOUT;
        format_duration(d, sizeof(d), q->timeout);
        if (skipped)
                snprintf(q->reply.message, sizeof(q->reply.message),
                         "libvirt %s on domain '%s' (%s) did not start within %s: an earlier libvirt call is still "
                         "running",
                         hv_op_to_string(q->op), s->domain, s->uri, d);
        else
                snprintf(q->reply.message, sizeof(q->reply.message),
                         "libvirt %s on domain '%s' (%s) got no answer within %s", hv_op_to_string(q->op), s->domain,
                         s->uri, d);
        hv_reqs_enter(&l->reqs);
        hv_req_finish(q);
        hv_reqs_leave(&l->reqs);
}

static LvReq *lv_find(Lv *l, uint64_t seq) {
        for (HvReq *q = l->reqs.head; q; q = q->next)
                if (((LvReq *) q)->seq == seq)
                        return (LvReq *) q;
        return NULL;
}

static void lv_on_done(EvIo *io, int fd, uint32_t revents, void *userdata) {
        Lv *l = userdata;
        LvShared *s = l->s;
        uint64_t v;
        (void) io;
        (void) revents;

        (void) !read(fd, &v, sizeof(v));
        pthread_mutex_lock(&s->lock);
        LvJob *done = s->done;
        s->done = NULL;
        s->done_tail = &s->done;
        pthread_mutex_unlock(&s->lock);

        hv_reqs_enter(&l->reqs);
        while (done) {
                LvJob *j = done;
                done = j->next;
                LvReq *r = l->reqs.dead ? NULL : lv_find(l, j->seq);
                if (r) {
                        r->req.reply = j->reply;
                        hv_req_finish(&r->req);
                } else if (!l->reqs.dead) {
                        /* Its deadline passed (or it was cancelled): nobody waits for it. */
                        log_debug("libvirt: dropping the late result of %s on '%s'", hv_op_to_string(j->op), s->domain);
                        pthread_mutex_lock(&s->lock);
                        s->counters.late_results++;
                        pthread_mutex_unlock(&s->lock);
                }
                free(j);
        }
        hv_reqs_leave(&l->reqs);
}

static int lv_submit(Hv *hv, HvOp op, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *userdata) {
        Lv *l = lv_of(hv);
        LvShared *s = l->s;

        LvJob *j = calloc(1, sizeof(LvJob));
        if (!j)
                return -ENOMEM;
        HvReq *q;
        int k = hv_req_submit(&l->reqs, sizeof(LvReq), op, arg, timeout, cb, userdata, lv_on_timeout, &q);
        if (k < 0) {
                free(j);
                return k;
        }
        /* now_mono(), not the loop's cached time: the caller may have run long since it woke. */
        ev_timer_set(q->timer, usec_add(now_mono(), timeout));
        LvReq *r = (LvReq *) q;
        r->seq = ++l->next_seq;
        *j = (LvJob){ .seq = r->seq, .op = op, .arg = arg };
        lv_reset_reply(j);

        pthread_mutex_lock(&s->lock);
        *s->queue_tail = j;
        s->queue_tail = &j->next;
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);
        return 0;
}

static int lv_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return lv_submit(hv, HV_OP_GET_ACTUAL, 0, timeout, cb, ud);
}

static int lv_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *ud) {
        /* libvirt takes KiB and refuses 0. */
        if (bytes < KIB || bytes > (UINT64_C(1) << 62))
                return -EINVAL;
        return lv_submit(hv, HV_OP_SET_TARGET, bytes, timeout, cb, ud);
}

static int lv_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return lv_submit(hv, HV_OP_GET_STATS, 0, timeout, cb, ud);
}

static int lv_set_stats_period(Hv *hv, uint32_t seconds, usec_t timeout, hv_reply_cb cb, void *ud) {
        /* virDomainSetMemoryStatsPeriod takes an int. */
        if (seconds > INT_MAX)
                return -EINVAL;
        return lv_submit(hv, HV_OP_SET_STATS_PERIOD, seconds, timeout, cb, ud);
}

static int lv_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return lv_submit(hv, HV_OP_GET_CAPS, 0, timeout, cb, ud);
}

static void lv_cancel(Hv *hv, void *userdata) {
        hv_reqs_cancel(&lv_of(hv)->reqs, userdata);
}

static void lv_shared_free(LvShared *s) {
        if (!s)
                return;
        while (s->queue) {
                LvJob *j = s->queue;
                s->queue = j->next;
                free(j);
        }
        while (s->done) {
                LvJob *j = s->done;
                s->done = j->next;
                free(j);
        }
        pthread_mutex_destroy(&s->lock);
        pthread_cond_destroy(&s->cond);
        safe_close(s->efd);
        free(s->uri);
        free(s->domain);
        free(s);
}

/* Stops the worker. An idle worker is joined (bounded: closing the connection talks to the
 * daemon); a worker inside a libvirt call, or one that does not finish closing in time, is
 * detached and frees the shared state itself. */
static void lv_stop_worker(Lv *l) {
        LvShared *s = l->s;

        pthread_mutex_lock(&s->lock);
        s->stop = true;
        while (s->queue) {
                LvJob *j = s->queue;
                s->queue = j->next;
                free(j);
        }
        s->queue_tail = &s->queue;
        if (s->running) {
                s->detached = true;
                pthread_mutex_unlock(&s->lock);
                pthread_detach(l->thread);
                log_debug("libvirt: a call on '%s' is still running, the worker will finish on its own", s->domain);
                return;
        }
        pthread_cond_signal(&s->cond);
        pthread_mutex_unlock(&s->lock);

        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += LV_JOIN_TIMEOUT / USEC_PER_SEC;
        if (pthread_timedjoin_np(l->thread, NULL, &ts) == 0) {
                lv_shared_free(s);
                return;
        }
        pthread_mutex_lock(&s->lock);
        if (s->exited) {
                pthread_mutex_unlock(&s->lock);
                pthread_join(l->thread, NULL);
                lv_shared_free(s);
                return;
        }
        s->detached = true;
        pthread_mutex_unlock(&s->lock);
        pthread_detach(l->thread);
        log_debug("libvirt: closing the connection to %s takes long, the worker will finish on its own", s->uri);
}

static void lv_free_now(Hv *hv) {
        Lv *l = lv_of(hv);
        hv_reqs_clear(&l->reqs);
        l->io = ev_io_free(l->io);
        if (l->thread_started)
                lv_stop_worker(l);
        else
                lv_shared_free(l->s);
        free(l);
}

static void lv_free(Hv *hv) {
        hv_reqs_kill(&lv_of(hv)->reqs);
}

static const HvOps lv_ops = {
        .name = "libvirt",
        .get_actual = lv_get_actual,
        .set_target = lv_set_target,
        .get_stats = lv_get_stats,
        .set_stats_period = lv_set_stats_period,
        .get_caps = lv_get_caps,
        .cancel = lv_cancel,
        .free = lv_free,
};

static int lv_hv_new(Ev *ev, const LibvirtConfig *cfg, Hv **ret) {
        if (!cfg->domain || !*cfg->domain)
                return -EINVAL;

        pthread_once(&lv_once, lv_global_init);
        if (lv_init_result < 0)
                return lv_init_result;

        Lv *l = calloc(1, sizeof(Lv));
        LvShared *s = calloc(1, sizeof(LvShared));
        if (!l || !s) {
                free(l);
                free(s);
                return -ENOMEM;
        }
        l->hv.ops = &lv_ops;
        l->hv.ev = ev;
        hv_reqs_init(&l->reqs, &l->hv, lv_req_release, lv_free_now);
        l->s = s;
        s->efd = -EBADF;
        s->queue_tail = &s->queue;
        s->done_tail = &s->done;
        pthread_mutex_init(&s->lock, NULL);
        pthread_cond_init(&s->cond, NULL);
        s->uri = strdup(cfg->uri && *cfg->uri ? cfg->uri : LIBVIRT_DEFAULT_URI);
        s->domain = strdup(cfg->domain);
        int r = -ENOMEM;
        if (!s->uri || !s->domain)
                goto fail;

        s->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (s->efd < 0) {
                r = negative_errno();
                goto fail;
        }
        r = ev_io_add(ev, s->efd, EPOLLIN, lv_on_done, l, &l->io);
        if (r < 0)
                goto fail;

        /* The worker takes no signals: the daemon handles them on its loop (signalfd), and a
         * thread without them blocked would get the default action for SIGTERM. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        r = -pthread_create(&l->thread, NULL, lv_worker, s);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (r < 0)
                goto fail;
        l->thread_started = true;
        *ret = &l->hv;
        return 0;

fail:
        lv_free_now(&l->hv);
        return r;
}

static void lv_hv_counters(Hv *hv, LibvirtCounters *ret) {
        LvShared *s = lv_of(hv)->s;
        pthread_mutex_lock(&s->lock);
        *ret = s->counters;
        pthread_mutex_unlock(&s->lock);
}

const LibvirtModule ballast_libvirt_module = {
        .abi = LIBVIRT_MODULE_ABI,
        .version = BALLAST_VERSION,
        .hv_new = lv_hv_new,
        .hv_counters = lv_hv_counters,
};
