/* SPDX-License-Identifier: MIT */
#pragma once

/* A small HTTP/1.1 client (Content-Length bodies only, as Firecracker and Cloud Hypervisor
 * speak it, and as ballastd answers): a pure response parser, a request formatter, a blocking
 * round trip for CLIs and tests, and (for drivers) an asynchronous client on the event loop.
 * Chunked transfer-coding is refused with -EPROTONOSUPPORT. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/ev.h"
#include "shared/time-util.h"

#define HTTP1_HEADERS_MAX  ((size_t) 16 << 10) /* status line + headers */
#define HTTP1_BODY_DEFAULT ((size_t) 1 << 20)
/* Interim (1xx) responses accepted before the final response of one request. A server sends at
 * most one or two (100 Continue, 103 Early Hints); more ends the request with -EBADMSG, "more than
 * 8 interim (1xx) responses", instead of reading them until the deadline. */
#define HTTP1_INTERIM_MAX  8

typedef struct Http1Response {
        int status;             /* 100..599 */
        char reason[64];        /* may be empty: Firecracker sends "HTTP/1.1 204 " */
        char content_type[128]; /* "" when absent */
        bool keep_alive;        /* false after "Connection: close" */
        size_t header_len;      /* bytes of the status line and headers, blank line included */
        size_t body_len;        /* Content-Length (0 when absent on 1xx/204/304) */
        const char *body;       /* points into the parsed buffer; not NUL-terminated */
} Http1Response;

/* Parses one response at the start of buf. Returns the bytes it occupies (> 0) when complete,
 * 0 when more bytes are needed, or -EBADMSG (malformed), -EMSGSIZE (headers over
 * HTTP1_HEADERS_MAX or body over max_body), -EPROTONOSUPPORT (chunked). *ret is written only
 * when complete. Pure: no allocation, no I/O. */
int http1_parse_response(const char *buf, size_t len, size_t max_body, Http1Response *ret);
/* The same, and on failure a short reason ("Content-Length is not a number", …) in why (may be
 * NULL). */
int http1_parse_response_ex(const char *buf, size_t len, size_t max_body, Http1Response *ret, char *why, size_t whylen);

/* Formats a request into a newly allocated buffer (caller frees *ret). extra_headers is NULL or
 * "Name: value\r\n" lines. body may be NULL (no Content-Length unless body_len > 0 or the method
 * is PUT/PATCH/POST). Returns the length or a negative errno.
 * Always sends Host: localhost and (unless extra_headers has them) Accept: application/json and,
 * with a body, Content-Type: application/json. -EINVAL for a method that is not an upper-case
 * token, a path that does not start with '/' or holds spaces or control bytes, malformed
 * extra_headers or ones that set Host, Content-Length or Transfer-Encoding. */
int http1_format_request(const char *method, const char *path, const char *extra_headers, const char *body,
                         size_t body_len, char **ret);

/* Blocking round trip on a Unix socket, for ballastctl and tests: connects, sends one request,
 * reads one response within timeout (relative), body at most max_body bytes. Returns 0 with the
 * response in *ret_resp, whose body points into *ret_buf (caller frees, NUL-terminated); or a
 * negative errno with a message in err. */
int http1_roundtrip_unix(const char *socket_path, const char *method, const char *path, const char *extra_headers,
                         const char *body, size_t body_len, usec_t timeout, size_t max_body, Http1Response *ret_resp,
                         char **ret_buf, char *err, size_t errlen);

/* Blocking round trips return -ETIMEDOUT for their deadline, the connect(2) errno when nobody
 * listens (-ENOENT, -ECONNREFUSED, -EACCES, -EAGAIN, ...), -ECONNRESET when the peer closed
 * before the response was complete, and the parser's errors for a bad response. */

/* --- asynchronous client on the event loop (for the Firecracker and Cloud Hypervisor drivers) ---
 *
 * One Unix-socket connection, opened on the first request and kept alive. Requests are queued and
 * sent one at a time (HTTP/1.1 has no request ids, so nothing is pipelined: a response always
 * belongs to the one request in flight). Before the first byte on a new connection the peer's uid
 * is checked with SO_PEERCRED (B1.2). Each request has a deadline counted from its submission;
 * when it passes while the request is in flight the connection is closed (a late response would
 * otherwise be taken for the next request's) and the next request reconnects. A connection the
 * peer closed is reopened by the next request; a request that was sent on a reused keep-alive
 * connection which then closed before any byte of the response is sent once more on a fresh one.
 * The connection is also closed after "Connection: close", after a 4xx/5xx whose body is not
 * JSON (micro-http's own parse errors; docs/drivers.md), and after bytes nobody asked for. */

typedef struct Http1Client Http1Client;

/* Runs exactly once per accepted request, always from the event loop (never from inside
 * http1_client_request()), unless the request was cancelled or the client freed first.
 * error 0: resp is the response, whatever its status; resp->body is valid only during the call.
 * error < 0: resp is NULL and message says what failed, naming the request and the socket:
 * -ETIMEDOUT, -ECONNRESET, -EBADMSG/-EMSGSIZE/-EPROTONOSUPPORT (bad response), -EPERM (peer uid),
 * the connect(2) errno. The client may be freed from inside the callback. */
typedef void (*http1_response_cb)(Http1Client *c, int error, const Http1Response *resp, const char *message,
                                  void *userdata);

typedef struct Http1ClientConfig {
        const char *socket_path;
        uid_t expected_uid; /* UID_ANY: any uid (a peer with pid 0 is still refused) */
        size_t max_body;    /* 0: HTTP1_BODY_DEFAULT */
} Http1ClientConfig;

typedef struct Http1ClientCounters {
        uint64_t connects, requests, responses, timeouts, resends, protocol_errors;
        uint64_t interim_responses; /* 1xx skipped (at most HTTP1_INTERIM_MAX per request) */
        uint64_t read_yields;       /* reads stopped at the per-wakeup byte budget */
} Http1ClientCounters;

/* Returns 0 and a client in *ret (nothing is connected yet), or a negative errno. */
int http1_client_new(Ev *ev, const Http1ClientConfig *cfg, Http1Client **ret);
/* Closes the connection and drops every request without calling back. Accepts NULL, returns
 * NULL. Safe from inside a callback. */
Http1Client *http1_client_free(Http1Client *c);
/* Queues a request (body copied; NULL when body_len is 0) with a deadline of timeout from now.
 * Returns 0, or a negative errno (-EINVAL from http1_format_request, -ENOMEM) and then cb never
 * runs. */
int http1_client_request(Http1Client *c, const char *method, const char *path, const char *body, size_t body_len,
                         usec_t timeout, http1_response_cb cb, void *userdata);
/* Drops the callbacks of every request made with this userdata. A request already on the wire
 * stays there until its response (then discarded) or its deadline. */
void http1_client_cancel(Http1Client *c, void *userdata);
/* Closes the connection now; a request in flight fails with -ECONNRESET. Queued ones wait for
 * the next connection. */
void http1_client_disconnect(Http1Client *c);
void http1_client_counters(const Http1Client *c, Http1ClientCounters *ret);
const char *http1_client_socket_path(const Http1Client *c);
/* Whether a connection is open now (the next request will not open a new one). */
bool http1_client_is_connected(const Http1Client *c);
/* The pid of the peer (SO_PEERCRED) of the current or last connection; 0 before the first. */
pid_t http1_client_peer_pid(const Http1Client *c);

/* For fuzz targets (fuzz/fuzz-fc.c, fuzz/fuzz-chv.c): makes fd (taken; a connected stream whose
 * other end the caller holds) the client's connection as if it had just connected, without the
 * SO_PEERCRED check. Returns 0 or a negative errno. */
int http1_client_attach_fd(Http1Client *c, int fd);
/* For fuzz targets: hands bytes to the client as if read from its connection. Returns 0, or
 * -ENOTCONN when the client has no connection (it dropped it, or never had one). */
int http1_client_inject(Http1Client *c, const void *buf, size_t len);

/* "5s", "250ms", "1.5s": a timeout as messages print it. Returns buf. */
const char *http1_format_timeout(char *buf, size_t len, usec_t t);
