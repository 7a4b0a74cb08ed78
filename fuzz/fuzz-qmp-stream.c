/* SPDX-License-Identifier: MIT */
/* Fuzzes the QEMU driver on the byte stream of its QMP connection, as it consumes it: the input is
 * split at NUL bytes into the chunks the driver reads one after the other (a greeting, replies and
 * events in any framing), after every kind of operation was started. Everything after read() runs
 * for real: the connection's buffer and budget, line framing, parsing, the greeting and
 * negotiation, reply matching by id, each operation's steps, the event rate and listeners. The
 * driver's contract is checked: every callback at most once, for its own operation, with a message
 * on error; nothing leaks. Ids: qmp_capabilities is 1, the commands follow from 2; with
 * BALLAST_FUZZ_DUMP set in the environment the commands the driver sent are printed (to write
 * seeds). */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "hv/hv.h"
#include "hv/qmp.h"
#include "shared/ev.h"
#include "shared/unix-sock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_TIMEOUT (60 * USEC_PER_SEC) /* never reached: the run is over long before */
#define FUZZ_CHUNKS  64

typedef struct Op {
        HvOp op;
        unsigned calls;
} Op;

static void on_reply(Hv *hv, const HvReply *r, void *userdata) {
        Op *o = userdata;
        (void) hv;
        if (++o->calls > 1 || r->op != o->op || r->error > 0 || (r->error < 0 && r->message[0] == '\0'))
                abort();
        if (r->op == HV_OP_GET_CAPS && r->error == 0 && strncmp(r->caps.version, "QEMU ", 5) != 0)
                abort();
}

static void on_actual(Hv *hv, uint64_t actual, uint64_t when, void *userdata) {
        (void) hv;
        (void) actual;
        (void) when;
        (*(unsigned *) userdata)++;
}

static void dump(int fd) {
        char b[4096];
        ssize_t n;
        if (!getenv("BALLAST_FUZZ_DUMP"))
                return;
        while ((n = read(fd, b, sizeof(b))) > 0)
                fwrite(b, 1, (size_t) n, stderr);
}

static int attach(Hv *hv, int *ret_other) {
        int sp[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sp) < 0)
                return -errno;
        if (qmp_hv_attach_fd(hv, sp[0]) < 0) {
                close(sp[1]);
                return -ENOMEM;
        }
        *ret_other = sp[1]; /* the commands land here, unread */
        return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static Ev *ev;
        if (size > 256 << 10)
                return 0;
        if (!ev && ev_new(&ev) < 0)
                abort();

        Hv *hv = NULL;
        QmpConfig cfg = { .socket_path = "/nonexistent/ballast-fuzz/qmp.sock", .expected_uid = UID_ANY };
        if (qmp_hv_new(ev, &cfg, &hv) < 0)
                abort();
        unsigned heard = 0;
        if (hv_add_listener(hv, on_actual, &heard) < 0)
                abort();
        int other = -EBADF;
        if (attach(hv, &other) < 0)
                abort();

        Op ops[_HV_OP_MAX + 2] = {
                { HV_OP_GET_ACTUAL }, { HV_OP_SET_TARGET }, { HV_OP_GET_STATS },  { HV_OP_SET_STATS_PERIOD },
                { HV_OP_GET_CAPS },   { HV_OP_GET_ACTUAL }, { HV_OP_GET_ACTUAL },
        };
        if (hv_get_actual(hv, FUZZ_TIMEOUT, on_reply, &ops[0]) < 0 ||
            hv_set_target(hv, UINT64_C(512) << 20, FUZZ_TIMEOUT, on_reply, &ops[1]) < 0 ||
            hv_get_stats(hv, FUZZ_TIMEOUT, on_reply, &ops[2]) < 0 ||
            hv_set_stats_period(hv, 2, FUZZ_TIMEOUT, on_reply, &ops[3]) < 0 ||
            hv_get_caps(hv, FUZZ_TIMEOUT, on_reply, &ops[4]) < 0)
                abort();
        /* The operations start from the loop: their commands queue behind the negotiation. */
        (void) ev_run_once(ev, 0);

        const char *p = (const char *) data, *end = p + size;
        unsigned chunks = 0, reattached = 0;
        while (p < end && chunks++ < FUZZ_CHUNKS) {
                const char *nul = memchr(p, '\0', (size_t) (end - p));
                size_t n = nul ? (size_t) (nul - p) : (size_t) (end - p);
                if (qmp_hv_inject(hv, p, n) < 0 && reattached < 2) {
                        /* The driver dropped the connection: a new one, and another operation on it. */
                        dump(other);
                        close(other);
                        if (attach(hv, &other) < 0)
                                abort();
                        if (hv_get_actual(hv, FUZZ_TIMEOUT, on_reply, &ops[5 + reattached]) < 0)
                                abort();
                        reattached++;
                }
                /* What the next iterations would run: yielded input, kicks, zero timers. */
                for (int i = 0; i < 3; i++)
                        (void) ev_run_once(ev, 0);
                p += n + (nul ? 1 : 0);
        }
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        HvCounters hc;
        hv_counters(hv, &hc);
        if (hc.events != c.events || hc.events_dropped > hc.events || heard > hc.events - hc.events_dropped)
                abort();
        hv_remove_listener(hv, on_actual, &heard);
        hv_free(hv);
        dump(other);
        close(other);
        if (ev_timer_count(ev) != 0)
                abort(); /* the driver left a timer behind */
        return 0;
}
