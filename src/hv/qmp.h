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

/* Counters for tests and metrics. */
typedef struct QmpCounters {
        uint64_t connects, commands, replies, events, stale_replies, timeouts, protocol_errors;
} QmpCounters;
void qmp_hv_counters(Hv *hv, QmpCounters *ret);
/* "QEMU 7.2.22" once a greeting was seen, "" before. */
const char *qmp_hv_version(Hv *hv);
