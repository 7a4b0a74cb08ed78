/* SPDX-License-Identifier: MIT */
#pragma once

#include <sys/types.h>

#include "hv/hv.h"

typedef struct QmpConfig {
        const char *socket_path;
        uid_t expected_uid;           /* UID_ANY to skip the uid comparison (pid 0 is still refused) */
        const char *balloon_qom_path; /* NULL: discover under /machine/peripheral{,-anon} */
} QmpConfig;

/* Creates a QEMU driver. Nothing is connected until the first operation; a lost connection is
 * re-established by the next operation. Returns 0 or a negative errno. */
int qmp_hv_new(Ev *ev, const QmpConfig *cfg, Hv **ret);

/* Messages handled per read wakeup: then the driver yields to the loop and goes on at the next
 * iteration, so an event storm from one QEMU cannot hold the loop. */
#define QMP_MESSAGES_PER_WAKEUP 64
/* Events acted on per QEMU: a token bucket of QMP_EVENTS_BURST refilled at QMP_EVENTS_PER_SEC.
 * Events beyond it are dropped (counted in events_dropped); replies are never dropped. QEMU itself
 * sends BALLOON_CHANGE at most once a second. */
#define QMP_EVENTS_PER_SEC      100
#define QMP_EVENTS_BURST        100
/* Over its event rate, a QEMU's connection is read at no more than this many bytes a second of
 * dropped events (then paused until the budget refills): a storm costs a bounded share of the
 * loop, not as much as the peer can write. Its own replies wait behind the events it sent first. */
#define QMP_STORM_BYTES_PER_SEC (2u << 20)

/* Counters for tests and metrics (hv_counters() has the driver-independent part). */
typedef struct QmpCounters {
        uint64_t connects, commands, replies, events, stale_replies, timeouts, protocol_errors;
        uint64_t events_dropped; /* over the event rate: not passed to listeners */
        uint64_t storm_pauses;   /* reading paused at QMP_STORM_BYTES_PER_SEC */
        uint64_t read_yields;    /* reads stopped at a per-wakeup budget (messages or bytes) */
} QmpCounters;
void qmp_hv_counters(Hv *hv, QmpCounters *ret);
/* "QEMU 7.2.22" once a greeting was seen, "" before. */
const char *qmp_hv_version(Hv *hv);

/* For the fuzz target (fuzz/fuzz-qmp-stream.c): makes fd (taken; a connected stream) the driver's
 * QMP connection as if it had just connected, without the SO_PEERCRED check. Returns 0 or a
 * negative errno. */
int qmp_hv_attach_fd(Hv *hv, int fd);
/* For the fuzz target: hands bytes to the driver as if read from its connection (framing, message
 * budget, dispatch, event rate: everything after read()). Returns 0, or -ENOTCONN when the driver
 * has no connection (it dropped it). */
int qmp_hv_inject(Hv *hv, const void *buf, size_t len);
