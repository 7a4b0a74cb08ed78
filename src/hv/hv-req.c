/* SPDX-License-Identifier: MIT */
#include "hv/hv-req.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/strutil.h"

void hv_reqs_init(HvReqs *rs, Hv *hv, void (*release)(HvReq *r), void (*free_now)(Hv *hv)) {
        *rs = (HvReqs){ .hv = hv, .release = release, .free_now = free_now };
}

void hv_reqs_enter(HvReqs *rs) {
        rs->busy++;
}

void hv_reqs_leave(HvReqs *rs) {
        if (--rs->busy == 0 && rs->dead)
                rs->free_now(rs->hv);
}

void hv_reqs_kill(HvReqs *rs) {
        rs->dead = true;
        if (rs->busy == 0)
                rs->free_now(rs->hv);
}

int hv_req_submit(HvReqs *rs, size_t size, HvOp op, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *userdata,
                  ev_timer_cb start, HvReq **ret) {
        HvReq *r = calloc(1, size);
        if (!r)
                return -ENOMEM;
        *r = (HvReq){ .reqs = rs, .op = op, .cb = cb, .userdata = userdata, .arg = arg, .timeout = timeout };
        r->reply.op = op;
        hv_stats_init(&r->reply.stats);
        int k = ev_timer_add(rs->hv->ev, 0, start, r, &r->timer);
        if (k < 0) {
                free(r);
                return k;
        }
        r->next = rs->head;
        rs->head = r;
        *ret = r;
        return 0;
}

static void hv_req_unlink(HvReq *r) {
        for (HvReq **p = &r->reqs->head; *p; p = &(*p)->next)
                if (*p == r) {
                        *p = r->next;
                        return;
                }
}

void hv_req_free(HvReq *r) {
        if (r->reqs->release)
                r->reqs->release(r);
        hv_req_unlink(r);
        ev_timer_free(r->timer);
        free(r);
}

void hv_req_finish(HvReq *r) {
        HvReqs *rs = r->reqs;
        hv_reply_cb cb = r->cb;
        void *ud = r->userdata;
        HvReply reply = r->reply;
        hv_req_free(r);
        if (cb && !rs->dead)
                cb(rs->hv, &reply, ud);
}

void hv_req_fail(HvReq *r, int error, const char *fmt, ...) {
        va_list ap;
        r->reply.error = error < 0 ? error : -EIO;
        va_start(ap, fmt);
        char raw[2 * HV_MESSAGE_MAX]; /* the peer's words: cut and cleaned by utf8_sanitize() */
        vsnprintf(raw, sizeof(raw), fmt, ap);
        utf8_sanitize(r->reply.message, sizeof(r->reply.message), raw, strlen(raw), 0);
        va_end(ap);
        hv_req_finish(r);
}

void hv_reqs_cancel(HvReqs *rs, void *userdata) {
        for (HvReq *r = rs->head, *n; r; r = n) {
                n = r->next;
                if (r->userdata == userdata)
                        hv_req_free(r);
        }
}

void hv_reqs_clear(HvReqs *rs) {
        while (rs->head)
                hv_req_free(rs->head);
}
