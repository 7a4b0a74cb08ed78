/* SPDX-License-Identifier: MIT */
#pragma once

/* The Cloud Hypervisor driver (B1.4): the HvOps over Cloud Hypervisor's REST API socket
 * (--api-socket), one keep-alive HTTP/1.1 connection per VM (shared/http1.h).
 *
 * Conversions (docs/drivers.md): R = config.memory.size + Σ config.memory.zones[].size from
 * GET /api/v1/vm.info; a target of G guest bytes is sent as desired_balloon = R − G rounded down
 * to 4 KiB (the guest keeps at least G; 0 when G ≥ R) with PUT /api/v1/vm.resize; `actual` is
 * vm.info's memory_actual_size (guest bytes). set_target reads vm.info every time because
 * desired_ram resizes change R.
 *
 * Cloud Hypervisor has no balloon statistics (no statistics virtqueue): get_stats and set_stats_period return
 * -EOPNOTSUPP at once (no callback). Errors carry Cloud Hypervisor's own words: the JSON array of
 * the error chain (v47 and later) joined with ": ", or the plain-text body of older versions. */

#include <sys/types.h>

#include "shared/http1.h"
#include "hv/hv.h"

typedef struct ChvConfig {
        const char *socket_path;
        uid_t expected_uid; /* UID_ANY to skip the uid comparison (pid 0 is still refused) */
        size_t max_body;    /* 0: HTTP1_BODY_DEFAULT (vm.info with a device tree is a few KiB) */
} ChvConfig;

/* Creates a Cloud Hypervisor driver. Nothing is connected until the first operation. Returns 0
 * or a negative errno. */
int chv_hv_new(Ev *ev, const ChvConfig *cfg, Hv **ret);

typedef struct ChvCounters {
        Http1ClientCounters http;
} ChvCounters;
void chv_hv_counters(Hv *hv, ChvCounters *ret);
/* The driver's HTTP client, for the fuzz target (http1_client_attach_fd/inject). */
Http1Client *chv_hv_http(Hv *hv);
