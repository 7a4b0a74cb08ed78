/* SPDX-License-Identifier: MIT */
/* Fuzzes the Firecracker driver (and, built from fuzz-chv.c with FUZZ_CHV, the Cloud Hypervisor one)
 * on what its API socket answers, through the code that interprets it:
 * the first byte picks the operation ('a' get_actual, 't' set_target 512 MiB, 's' get_stats,
 * 'p' set_stats_period 2 s, 'c' get_caps; any other byte: its value modulo 5), the rest is split at
 * NUL bytes into the answers to the driver's requests, one chunk per request as the driver sends
 * them (status line, headers, body in any framing). Everything after read() runs for real: the
 * connection's buffer and budget, the HTTP/1.1 client (interim responses, keep-alive, errors), the
 * driver's request sequence and its reading of every answer into the operation's result. The
 * driver's contract is checked: at most one callback, for its own operation, with a message on
 * error; no timer left behind. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#ifdef FUZZ_CHV
#include "hv/chv.h"
#define REST_VERSION "Cloud Hypervisor "
#else
#include "hv/firecracker.h"
#define REST_VERSION "Firecracker "
#endif
#include "shared/http1.h"
#include "hv/hv.h"
#include "shared/ev.h"
#include "shared/unix-sock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_TIMEOUT (60 * USEC_PER_SEC) /* never reached: the run is over long before */
#define FUZZ_CHUNKS  32

typedef struct Op {
        HvOp op;
        unsigned calls;
} Op;

static void on_reply(Hv *hv, const HvReply *r, void *userdata) {
        Op *o = userdata;
        (void) hv;
        if (++o->calls > 1 || r->op != o->op || r->error > 0 || (r->error < 0 && r->message[0] == '\0'))
                abort();
        if (r->error == 0 && r->op == HV_OP_GET_CAPS &&
            strncmp(r->caps.version, REST_VERSION, strlen(REST_VERSION)) != 0)
                abort();
}

static int attach(Http1Client *h, int *ret_other) {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
                return -errno;
        if (http1_client_attach_fd(h, sp[0]) < 0) {
                close(sp[1]);
                return -ENOMEM;
        }
        *ret_other = sp[1]; /* the requests land here, unread */
        return 0;
}

static int submit(Hv *hv, uint8_t pick, Op *o) {
        switch (pick) {
        case 'a':
                o->op = HV_OP_GET_ACTUAL;
                break;
        case 't':
                o->op = HV_OP_SET_TARGET;
                break;
        case 's':
                o->op = HV_OP_GET_STATS;
                break;
        case 'p':
                o->op = HV_OP_SET_STATS_PERIOD;
                break;
        case 'c':
                o->op = HV_OP_GET_CAPS;
                break;
        default:
                o->op = (HvOp) (pick % _HV_OP_MAX);
        }
        switch (o->op) {
        case HV_OP_GET_ACTUAL:
                return hv_get_actual(hv, FUZZ_TIMEOUT, on_reply, o);
        case HV_OP_SET_TARGET:
                return hv_set_target(hv, UINT64_C(512) << 20, FUZZ_TIMEOUT, on_reply, o);
        case HV_OP_GET_STATS:
                return hv_get_stats(hv, FUZZ_TIMEOUT, on_reply, o);
        case HV_OP_SET_STATS_PERIOD:
                return hv_set_stats_period(hv, 2, FUZZ_TIMEOUT, on_reply, o);
        default:
                return hv_get_caps(hv, FUZZ_TIMEOUT, on_reply, o);
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static Ev *ev;
        if (size < 1 || size > 256 << 10)
                return 0;
        if (!ev && ev_new(&ev) < 0)
                abort();

        Hv *hv = NULL;
#ifdef FUZZ_CHV
        ChvConfig cfg = { .socket_path = "/nonexistent/ballast-fuzz/api.sock", .expected_uid = UID_ANY };
        if (chv_hv_new(ev, &cfg, &hv) < 0)
#else
        FcConfig cfg = { .socket_path = "/nonexistent/ballast-fuzz/api.sock", .expected_uid = UID_ANY };
        if (fc_hv_new(ev, &cfg, &hv) < 0)
#endif
                abort();
#ifdef FUZZ_CHV
        Http1Client *h = chv_hv_http(hv);
#else
        Http1Client *h = fc_hv_http(hv);
#endif
        int other = -EBADF;
        if (attach(h, &other) < 0)
                abort();
        Op op = { 0 };
        int r = submit(hv, data[0], &op);
        if (r == -EOPNOTSUPP) {
                /* Refused at once, no callback (Cloud Hypervisor has no balloon statistics). */
                hv_free(hv);
                close(other);
                return 0;
        }
        if (r < 0)
                abort();

        const char *p = (const char *) data + 1, *end = (const char *) data + size;
        unsigned chunks = 0;
        /* The operation starts from the loop and puts its first request on the wire. */
        for (int i = 0; i < 3; i++)
                (void) ev_run_once(ev, 0);
        while (p < end && chunks++ < FUZZ_CHUNKS && op.calls == 0) {
                const char *nul = memchr(p, '\0', (size_t) (end - p));
                size_t n = nul ? (size_t) (nul - p) : (size_t) (end - p);
                if (http1_client_inject(h, p, n) < 0 || !http1_client_is_connected(h)) {
                        /* Dropped: the next request goes out on a new connection. */
                        close(other);
                        if (attach(h, &other) < 0)
                                abort();
                }
                /* What the next iterations would run: the next request's kick, yielded input. */
                for (int i = 0; i < 3; i++)
                        (void) ev_run_once(ev, 0);
                p += n + (nul ? 1 : 0);
        }
        HvCounters hc;
        hv_counters(hv, &hc);
        if (hc.events != 0 || hc.events_dropped != 0)
                abort(); /* HTTP has no unsolicited messages */
        hv_free(hv);
        close(other);
        if (ev_timer_count(ev) != 0)
                abort(); /* the driver left a timer behind */
        return 0;
}
