/* SPDX-License-Identifier: MIT */
#include "cli/api-client.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli-util.h"
#include "shared/http1.h"
#include "shared/log.h"

const char *arg_api = NULL;
usec_t arg_api_timeout = CTL_API_TIMEOUT_DEFAULT;

const char *ctl_api_path(void) {
        if (arg_api)
                return arg_api;
        const char *e = getenv("BALLAST_API");
        return e && *e ? e : CTL_API_SOCKET_DEFAULT;
}

int ctl_api_parse_timeout(const char *s) {
        usec_t t;
        int r = cli_parse_duration("--timeout", s, &t);
        if (r != 0)
                return r;
        if (t == 0)
                return cli_usage_error("--timeout must be longer than 0");
        arg_api_timeout = t;
        return 0;
}

void ctl_api_command(char **argv, char *prog) {
        cli_set_command(argv, prog);
}

int ctl_api_common_option(int c, const char *arg, const char *usage) {
        switch (c) {
        case CTL_OPT_API:
                if (!arg[0])
                        return cli_usage_error("--api needs a socket path");
                arg_api = arg;
                return -1;
        case CTL_OPT_TIMEOUT:
                return ctl_api_parse_timeout(arg) == 0 ? -1 : EXIT_USAGE;
        default:
                /* --help, or getopt_long() has said what was wrong. */
                return cli_common_option(c, usage);
        }
}

/* Failures before any answer that mean nobody usable listens at the path. */
static bool unreachable_errno(int r) {
        switch (-r) {
        case ENOENT:
        case ENOTDIR:
        case ECONNREFUSED:
        case ENOTSOCK:
        case EACCES:
        case EPERM:
        case ENAMETOOLONG:
        case ELOOP:
        case EAGAIN:
                return true;
        default:
                return false;
        }
}

static int transport_error(const char *sock, int r, const char *err) {
        if (unreachable_errno(r)) {
                const char *hint = "";
                if (r == -ENOENT || r == -ECONNREFUSED)
                        hint = " (is ballastd running? use --api PATH or BALLAST_API for another socket)";
                else if (r == -EACCES || r == -EPERM)
                        hint = " (no permission to connect to the socket)";
                return cli_error(EXIT_FAIL, "cannot reach ballastd at %s: %s%s", sock, strerror(-r), hint);
        }
        if (r == -ETIMEDOUT) {
                char d[32];
                return cli_error(EXIT_FAIL, "ballastd at %s did not answer within %s (use --timeout to wait longer)",
                                 sock, http1_format_timeout(d, sizeof(d), arg_api_timeout));
        }
        if (r == -ECONNRESET)
                return cli_error(EXIT_FAIL, "ballastd at %s closed the connection before answering", sock);
        return cli_error(EXIT_FAIL, "request to ballastd at %s failed: %s", sock, err[0] ? err : strerror(-r));
}

/* A non-2xx answer: the daemon's {"error": {"code", "message"}} when it sent one. */
static int answer_error(const char *sock, const Http1Response *resp) {
        json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
        json_t *e = json_object_get(j, "error");
        const char *msg = json_string_value(json_object_get(e, "message"));
        const char *code = json_string_value(json_object_get(e, "code"));
        if (msg && code)
                cli_error(EXIT_FAIL, "%s (HTTP %d %s)", msg, resp->status, code);
        else
                cli_error(EXIT_FAIL, "ballastd at %s answered HTTP %d%s%s without an error message", sock, resp->status,
                          resp->reason[0] ? " " : "", resp->reason);
        json_decref(j);
        return EXIT_FAIL;
}

int ctl_api_request(const char *method, const char *path, json_t *body, json_t **ret) {
        _cleanup_free_ char *req = NULL, *buf = NULL;
        const char *sock = ctl_api_path();
        size_t req_len = 0;

        if (body) {
                req = json_dumps(body, JSON_COMPACT);
                json_decref(body);
                if (!req)
                        return cli_error(EXIT_FAIL, "cannot encode the request body");
                req_len = strlen(req);
        }
        log_debug("%s %s on %s%s%s", method, path, sock, req ? ": " : "", req ?: "");

        Http1Response resp;
        char err[512] = "";
        /* http1 adds Host, Accept and (with a body) Content-Type: application/json. */
        int r = http1_roundtrip_unix(sock, method, path, NULL, req, req_len, arg_api_timeout, API_BODY_MAX, &resp, &buf,
                                     err, sizeof(err));
        if (r < 0)
                return transport_error(sock, r, err);
        log_debug("HTTP %d, %zu bytes", resp.status, resp.body_len);
        if (resp.status < 200 || resp.status > 299)
                return answer_error(sock, &resp);

        json_error_t je;
        json_t *j = json_loadb(resp.body, resp.body_len, 0, &je);
        if (!j)
                return cli_error(EXIT_FAIL, "ballastd at %s answered HTTP %d with a body that is not JSON: %s", sock,
                                 resp.status, je.text);
        if (!json_is_object(j)) { /* every answer of docs/api.md is an object */
                json_decref(j);
                return cli_error(EXIT_FAIL, "ballastd at %s answered HTTP %d with JSON that is not an object", sock,
                                 resp.status);
        }
        if (!arg_json)
                cli_json_sanitize(j); /* for humans: see cli_text_sanitize() */
        *ret = j;
        return 0;
}

/* The fewest significant digits (15…17) at which every real in j reads back exactly: 259.2
 * stays "259.2" (jansson's default of 17 would print 259.19999999999999), nothing is lost. */
static int real_precision(json_t *j, int p) {
        const char *key;
        json_t *v;
        size_t i;
        if (json_is_real(j)) {
                double d = json_real_value(j);
                char buf[64];
                for (; p < 17; p++) {
                        snprintf(buf, sizeof(buf), "%.*g", p, d);
                        if (strtod(buf, NULL) == d)
                                break;
                }
        } else if (json_is_object(j)) {
                json_object_foreach(j, key, v) {
                        p = real_precision(v, p);
                }
        } else if (json_is_array(j)) {
                json_array_foreach(j, i, v) {
                        p = real_precision(v, p);
                }
        }
        return p;
}

void ctl_api_print_json(json_t *j) {
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(real_precision(j, 15)));
        fputc('\n', stdout);
}

int ctl_api_run(const char *method, const char *path, json_t *body, int (*show)(json_t *answer)) {
        _cleanup_(json_decrefp) json_t *answer = NULL;
        int r = ctl_api_request(method, path, body, &answer);
        if (r != 0)
                return r;
        if (arg_json) {
                ctl_api_print_json(answer);
                return EXIT_OK;
        }
        return show(answer);
}
