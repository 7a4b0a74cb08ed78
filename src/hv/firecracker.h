/* SPDX-License-Identifier: MIT */
#pragma once

/* The Firecracker driver (B1.3): the HvOps over Firecracker's REST API socket (--api-sock), one
 * keep-alive HTTP/1.1 connection per VM (shared/http1.h). Guest bytes are converted to the balloon
 * size Firecracker takes (amount_mib = (mem_size_mib MiB - target) / MiB, rounded so the guest
 * keeps at least the target) and back (guest = mem_size_mib MiB - actual_pages * 4096).
 *
 * What Firecracker can and cannot tell:
 *   - `actual` is only exposed by GET /balloon/statistics, which works only after boot and only
 *     when the balloon was configured with stats_polling_interval_s > 0 (it cannot be enabled
 *     later). On a VM without statistics get_actual and get_stats fail with -EOPNOTSUPP and say so.
 *   - Before boot, set_target rewrites the balloon configuration (GET then PUT /balloon).
 *   - Right after boot PATCH /balloon fails with "Device not activated yet." until the guest's
 *     driver is up: set_target retries until its deadline.
 *   - Statistics carry no timestamp: last_update is when the driver first saw the guest's current
 *     values (they change at most once per polling period).
 * Errors carry Firecracker's own words ({"fault_message": …}, or the raw body). */

#include <sys/types.h>

#include "shared/http1.h"
#include "hv/hv.h"

typedef struct FcConfig {
        const char *socket_path;
        uid_t expected_uid; /* UID_ANY to skip the uid comparison (pid 0 is still refused) */
        size_t max_body;    /* 0: 64 KiB (Firecracker's answers are under 1 KiB) */
} FcConfig;

/* Creates a Firecracker driver. Nothing is connected until the first operation. Returns 0 or a
 * negative errno. */
int fc_hv_new(Ev *ev, const FcConfig *cfg, Hv **ret);

typedef struct FcCounters {
        Http1ClientCounters http;
        uint64_t not_activated_retries; /* PATCH /balloon retried while the guest driver came up */
        uint64_t preboot_puts;          /* targets set before boot through PUT /balloon */
} FcCounters;
void fc_hv_counters(Hv *hv, FcCounters *ret);
/* The driver's HTTP client, for the fuzz target (http1_client_attach_fd/inject). */
Http1Client *fc_hv_http(Hv *hv);
