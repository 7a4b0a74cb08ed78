/* SPDX-License-Identifier: MIT */
#pragma once

/* The API's routes and request bodies (B6.1, B5.8), on top of the transport in http.h. The body
 * parsers are pure functions of bytes (fuzzed by fuzz/fuzz-api-request.c): strict JSON objects,
 * unknown fields and wrong types refused with a message naming the field. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "api/http.h"
#include "control/controller.h"

#define API_REASON_MAX       256 /* characters */
#define API_HOLD_FOR_MAX     (60 * 60 * USEC_PER_SEC)
#define API_HOLD_FOR_DEFAULT (5 * 60 * USEC_PER_SEC)
#define API_SIZE_MAX         (UINT64_C(1) << 62)
/* hypeman's route, answered in hypeman's shapes (its answer, and its flat errors for every request
 * whose target starts with it; docs/api.md). */
#define API_HYPEMAN_RECLAIM  "/resources/memory/reclaim"

typedef struct ApiReclaim {
        uint64_t reclaim_bytes;
        usec_t hold_for;
        bool dry_run;
        char reason[4 * API_REASON_MAX + 1];
} ApiReclaim;

typedef struct ApiVmPatch {
        bool has_assigned, has_floor, has_shares;
        uint64_t assigned, floor;
        uint32_t shares;
} ApiVmPatch;

typedef struct ApiPark {
        uint64_t size_bytes; /* 0: the default (park) / the size before the park (unpark) */
        usec_t timeout;      /* 0: the default */
        bool wait;           /* unpark only: answer once the guest has the memory */
} ApiPark;

/* Each returns 0, or -EINVAL with the client-facing message in err (naming the field). */
int api_parse_vm_create(const char *body, size_t len, CtlVmSpec *ret, char *err, size_t errlen);
int api_parse_vm_patch(const char *body, size_t len, ApiVmPatch *ret, char *err, size_t errlen);
int api_parse_reclaim(const char *body, size_t len, ApiReclaim *ret, char *err, size_t errlen);
/* The same request as hypeman's clients send it: hold_for is a Go duration ("1m30s"; not
 * negative, at most 1h) and defaults to 5m only when reclaim_bytes > 0 (else 0s). */
int api_parse_reclaim_hypeman(const char *body, size_t len, ApiReclaim *ret, char *err, size_t errlen);
int api_parse_target(const char *body, size_t len, uint64_t *ret, char *err, size_t errlen);
/* An empty body is allowed (all defaults). unpark accepts "wait"; park does not. */
int api_parse_park(const char *body, size_t len, bool unpark, ApiPark *ret, char *err, size_t errlen);

/* The http_handler: userdata is the Manager. */
void api_handle(HttpCall *call, const HttpRequest *req, void *userdata);

/* GET /v1/vms keeps each VM's serialised object until its facts change, and GET /v1/history each
 * journal entry it serialised (api.c). Frees these caches when they were not used for a while, or
 * at once with all (the manager's periodic trim and its end). */
void api_vm_cache_trim(bool all);
/* VM objects (re)built for lists since the start, for tests. */
uint64_t api_vm_cache_builds(void);

/* Prometheus text exposition (B8) of the manager's state; caller frees. NULL on OOM. */
struct Manager;
char *metrics_render(struct Manager *m, size_t *ret_len);
