/* SPDX-License-Identifier: MIT */
#include "shared/api-call.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared/http1.h"
#include "shared/macro.h"

int api_call(const char *sock, const char *method, const char *path, json_t *body, usec_t timeout, int *ret_status,
             json_t **ret, char *err, size_t errlen) {
        _cleanup_free_ char *req = NULL, *buf = NULL;
        if (ret)
                *ret = NULL;
        if (body) {
                req = json_dumps(body, JSON_COMPACT);
                json_decref(body);
                if (!req) {
                        snprintf(err, errlen, "cannot encode the request");
                        return -ENOMEM;
                }
        }
        Http1Response resp;
        char e[512] = "";
        int r = http1_roundtrip_unix(sock, method, path, NULL, req, req ? strlen(req) : 0, timeout, API_BODY_MAX, &resp,
                                     &buf, e, sizeof e);
        if (r < 0) {
                snprintf(err, errlen, "cannot reach ballastd at %s: %s", sock, e[0] ? e : strerror(-r));
                return r;
        }
        json_t *j = resp.body_len ? json_loadb(resp.body, resp.body_len, 0, NULL) : NULL;
        *ret_status = resp.status;
        if (resp.status < 200 || resp.status > 299) {
                json_t *eo = json_object_get(j, "error");
                snprintf(err, errlen, "%s %s: %s (HTTP %d %s)", method, path,
                         json_string_value(json_object_get(eo, "message")) ?: "no error message", resp.status,
                         json_string_value(json_object_get(eo, "code")) ?: "");
        } else
                err[0] = '\0';
        if (ret)
                *ret = j;
        else
                json_decref(j);
        return 0;
}
