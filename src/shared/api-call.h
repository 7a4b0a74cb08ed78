/* SPDX-License-Identifier: MIT */
#pragma once

/* One request to ballastd's API (docs/api.md) over its Unix socket, printing nothing: what the
 * warm pool (src/pool/) uses, and what ballastctl's printing client (src/cli/api-client.c) is
 * for humans. */

#include <jansson.h>
#include <stddef.h>

#include "shared/time-util.h"

/* A history of 1000 entries over many VMs is large; the daemon is trusted not to send junk. */
#define API_BODY_MAX ((size_t) 64 << 20)

/* Sends method path with body (NULL, or the JSON request body: stolen, also on failure) to the
 * socket sock, waiting at most timeout. Returns 0 once an answer came, with its HTTP status in
 * *ret_status and, when ret is not NULL, its JSON body in *ret (NULL when there was none or it was
 * not JSON; owned by the caller); or a negative errno when there is no answer. err says why both
 * when there is no answer ("cannot reach ballastd at PATH: …") and when the status is not 2xx
 * ("METHOD PATH: <message> (HTTP <status> <code>)"); it is empty after a 2xx answer. */
int api_call(const char *sock, const char *method, const char *path, json_t *body, usec_t timeout, int *ret_status,
             json_t **ret, char *err, size_t errlen);
