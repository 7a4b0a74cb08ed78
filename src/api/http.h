/* SPDX-License-Identifier: MIT */
#pragma once

/* The API's transport (B6.1, B6.2): libmicrohttpd in external-epoll mode on our event loop,
 * serving a Unix socket and optionally a loopback TCP port. It authenticates each request (peer
 * credentials on the Unix socket, bearer tokens on TCP), reads the body (at most
 * HTTP_BODY_MAX bytes, JSON only), and hands a complete request to one handler, which answers
 * at once or later (after driver calls) with http_call_reply*(). Errors are always
 * {"error": {"code": …, "message": …}}. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "shared/ev.h"

#define HTTP_BODY_MAX ((size_t) 64 << 10)
/* Longest request target (path and query) we answer; longer ones get 414 uri_too_long. */
#define HTTP_URI_MAX  ((size_t) 4 << 10)

typedef struct HttpServer HttpServer;
typedef struct HttpCall HttpCall;

typedef struct HttpServerConfig {
        const char *socket_path;   /* required; created mode 0666 (auth is by peer credentials) */
        const char *listen_tcp;    /* NULL or "127.0.0.1:PORT" / "[::1]:PORT"; loopback only */
        const char *tokens_file;   /* required when listen_tcp is set: lines "TOKEN read|write" */
        gid_t write_gid;           /* (gid_t) -1: none; members may write over the Unix socket */
        unsigned max_connections;  /* per listener (Unix, TCP); default 512 */
        usec_t connection_timeout; /* idle connections are closed after this; default 10 s */
        bool unix_read_only;       /* every Unix-socket peer may only read, root and our own uid too
                                    * (a read-only API; the unit tests, which run as root, use it) */
} HttpServerConfig;

/* A complete request, valid until the call is answered. */
typedef struct HttpRequest {
        const char *method; /* "GET", "POST", ... */
        const char *path;   /* as sent (not percent-decoded), without the query string */
        const char *query;  /* after '?' (not decoded), or "" */
        const char *body;   /* NUL-terminated, body_len bytes (NULL when empty) */
        size_t body_len;
        bool can_write; /* the caller may use mutating routes */
        uid_t peer_uid; /* Unix socket: the peer's uid; TCP: (uid_t) -1 */
} HttpRequest;

/* Called once per request. It must eventually answer the call exactly once (possibly from a
 * later event-loop callback); the call must not be used after answering. */
typedef void (*http_handler)(HttpCall *call, const HttpRequest *req, void *userdata);

/* Returns 0 and a running server, or a negative errno with a message in err. */
int http_server_new(Ev *ev, const HttpServerConfig *cfg, http_handler handler, void *userdata, HttpServer **ret,
                    char *err, size_t errlen);
/* Stops listening, aborts unanswered calls, removes the socket file. Accepts NULL. Must not be
 * called from inside the handler. Unanswered calls stay valid: their connections are closed
 * without a reply, and answering such a call later only frees it. */
HttpServer *http_server_free(HttpServer *s);
/* The bound TCP port (useful with "127.0.0.1:0"), or 0 without a TCP listener. */
uint16_t http_server_tcp_port(const HttpServer *s);

/* The replies below answer the call and end it (it must not be used afterwards). From inside the
 * handler the reply is queued when the handler returns; from any later loop callback it goes out
 * on the loop's next iteration (the server arms its own timer, nothing else to trigger). A call
 * whose connection is gone (the server was freed) is only freed. A status outside 200–599 is
 * sent as 500. */
/* Answers with a JSON body (stolen: the call takes the reference). status 2xx–5xx. */
void http_call_reply_json(HttpCall *call, unsigned status, json_t *body);
/* Answers with a text body (copied), e.g. Prometheus metrics. */
void http_call_reply_text(HttpCall *call, unsigned status, const char *content_type, const char *text, size_t len);
/* Answers {"error": {"code": code, "message": printf(fmt…)}}. */
void http_call_reply_error(HttpCall *call, unsigned status, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
/* Adds a response header to the coming reply (e.g. "Allow"). */
void http_call_add_header(HttpCall *call, const char *name, const char *value);

/* Counters for /metrics. */
typedef struct HttpCounters {
        uint64_t requests, errors_4xx, errors_5xx, unauthorized, forbidden;
} HttpCounters;
void http_server_counters(const HttpServer *s, HttpCounters *ret);

/* Exposed for the unit tests: whether a /proc/PID/status text has gid on its "Groups:" line
 * (the fallback when the kernel lacks SO_PEERGROUPS). */
bool http_status_has_group(const char *status, gid_t gid);
