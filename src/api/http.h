/* SPDX-License-Identifier: MIT */
#pragma once

/* The API's transport (B6.1, B6.2): libmicrohttpd in external-epoll mode on our event loop,
 * serving a Unix socket and optionally a loopback TCP port. We accept connections ourselves, apply
 * the connection limits, and check each request head strictly (http_head_parse()) before the
 * socket goes to libmicrohttpd; one request per connection. It authenticates each request (peer
 * credentials on the Unix socket, bearer tokens on TCP), reads the body (at most
 * HTTP_BODY_MAX bytes, JSON only), and hands a complete request to one handler, which answers
 * at once or later (after driver calls) with http_call_reply*(). Errors are
 * {"error": {"code": …, "message": …}}, or {"code": …, "message": …} for request targets under
 * HttpServerConfig.flat_error_prefix (another API's shape served on its own paths). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <jansson.h>

#include "shared/ev.h"

#define HTTP_BODY_MAX                         ((size_t) 64 << 10)
/* Longest request target (path and query) we answer; longer ones get 414 uri_too_long. */
#define HTTP_URI_MAX                          ((size_t) 4 << 10)
/* Longest request head (request line and headers) we read; a longer one gets 431. */
#define HTTP_HEAD_MAX                         ((size_t) 8 << 10)
/* Most header lines in a request head; more get 431. */
#define HTTP_HEADERS_MAX                      64U

#define HTTP_MAX_CONNECTIONS_DEFAULT          512U
#define HTTP_MAX_CONNECTIONS_PER_PEER_DEFAULT 32U
#define HTTP_RESERVED_CONNECTIONS_DEFAULT     32U
#define HTTP_MAX_UNAUTHENTICATED_DEFAULT      32U
#define HTTP_HEADER_TIMEOUT_DEFAULT           (5 * USEC_PER_SEC)
#define HTTP_BODY_TIMEOUT_DEFAULT             (10 * USEC_PER_SEC)
#define HTTP_CONNECTION_TIMEOUT_DEFAULT       (10 * USEC_PER_SEC)

typedef struct HttpServer HttpServer;
typedef struct HttpCall HttpCall;

typedef struct HttpServerConfig {
        const char *socket_path;           /* required; created mode 0666 (auth is by peer credentials) */
        const char *listen_tcp;            /* NULL or "127.0.0.1:PORT" / "[::1]:PORT"; loopback only */
        const char *tokens_file;           /* required when listen_tcp is set: lines "TOKEN read|write" */
        gid_t write_gid;                   /* (gid_t) -1: none; members may write over the Unix socket */
        unsigned max_connections;          /* per listener (Unix, TCP); 0: HTTP_MAX_CONNECTIONS_DEFAULT */
        unsigned max_connections_per_peer; /* per uid (Unix; root and our uid exempt) or address (TCP,
                                            * connections that showed a token); 0: default */
        unsigned reserved_connections;     /* of max_connections, only for root, our uid and write_gid
                                            * (Unix) or write tokens (TCP); 0: default; at most
                                            * max_connections / 2 */
        unsigned max_unauthenticated;      /* TCP connections whose token has not arrived; 0: default */
        usec_t header_timeout;             /* the whole request head must arrive within this; 0: default */
        usec_t body_timeout;               /* ... and its whole body within this after the head; 0: default */
        usec_t connection_timeout;         /* idle time allowed after the head (body, reply); 0: default */
        bool unix_read_only;               /* every Unix-socket peer may only read, root and our own uid too
                                            * (a read-only API; the unit tests, which run as root, use it) */
        const char *flat_error_prefix;     /* NULL, or a path prefix (not copied: a static string) whose
                                            * errors, ours and the handler's, are {"code","message"} */
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
/* Re-reads the tokens file (a configuration reload): on success the new tokens replace the old
 * ones for every later request and it returns their count; on failure the old ones stay and it
 * returns a negative errno with the reason in err. */
int http_server_reload_tokens(HttpServer *s, const char *path, char *err, size_t errlen);

/* The replies below answer the call and end it (it must not be used afterwards). From inside the
 * handler the reply is queued when the handler returns; from any later loop callback it goes out
 * on the loop's next iteration (the server arms its own timer, nothing else to trigger). A call
 * whose connection is gone (the server was freed) is only freed. A status outside 200–599 is
 * sent as 500. */
/* Answers with a JSON body (stolen: the call takes the reference). status 2xx–5xx. */
void http_call_reply_json(HttpCall *call, unsigned status, json_t *body);
/* Answers with a text body (copied), e.g. Prometheus metrics. */
void http_call_reply_text(HttpCall *call, unsigned status, const char *content_type, const char *text, size_t len);
/* The same with a malloc()ed body that the call takes (freed with the response, or at once when
 * it cannot be made): no copy of a large answer (/metrics, GET /v1/vms) on the loop. */
void http_call_reply_text_take(HttpCall *call, unsigned status, const char *content_type, char *text, size_t len);
/* Answers {"error": {"code": code, "message": printf(fmt…)}} (flat under flat_error_prefix). */
void http_call_reply_error(HttpCall *call, unsigned status, const char *code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));
/* Adds a response header to the coming reply (e.g. "Allow"). */
void http_call_add_header(HttpCall *call, const char *name, const char *value);

/* Counters for /metrics. */
typedef struct HttpCounters {
        uint64_t requests, errors_4xx, errors_5xx, unauthorized, forbidden;
        /* With errors_4xx and errors_5xx: every answer, in its status class. */
        uint64_t answers_2xx, answers_3xx;
        uint64_t refused;        /* connections closed at accept (over a connection limit) */
        uint64_t timeouts;       /* request heads that missed header_timeout */
        uint64_t accept_backoff; /* times accept() was paused for lack of file descriptors */
} HttpCounters;
void http_server_counters(const HttpServer *s, HttpCounters *ret);

/* What http_head_parse() learnt from a complete request head. Pointers point into the buffer. */
typedef struct HttpHead {
        unsigned status;           /* on error: 400, 413, 414, 431, 501 or 505 */
        const char *code;          /* on error: the JSON error code ("bad_request", ...) */
        bool http10;               /* HTTP/1.0 (else HTTP/1.1) */
        bool chunked;              /* Transfer-Encoding: chunked */
        bool has_length;           /* a Content-Length header */
        uint64_t length;           /* its value */
        const char *authorization; /* the Authorization value (not NUL-terminated), or NULL */
        size_t authorization_len;
} HttpHead;

/* The strict request-head check (RFC 9112) every connection's first bytes pass before the HTTP
 * library sees them. Returns the length of the head (request line, header lines, the empty line)
 * when buf starts with a complete valid one; 0 when buf is a valid beginning of one (more bytes
 * are needed; a caller holding more than HTTP_HEAD_MAX bytes answers 431); -EBADMSG when it can
 * never become one, with ret->status, ret->code and a client-facing message in err. Pure. */
int http_head_parse(const char *buf, size_t len, HttpHead *ret, char *err, size_t errlen);

/* Serves an already connected stream socket (taken: closed by the server) as if accepted on the
 * Unix listener, with peer credentials read from it. For the fuzz target; returns 0 or a negative
 * errno (fd closed). */
int http_server_add_fd(HttpServer *s, int fd);

/* Exposed for the unit tests: whether a /proc/PID/status text has gid on its "Groups:" line
 * (the fallback when the kernel lacks SO_PEERGROUPS). */
bool http_status_has_group(const char *status, gid_t gid);
