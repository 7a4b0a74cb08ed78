/* SPDX-License-Identifier: MIT */
/* src/shared/http1.c: the response parser on fixture responses (every valid one also split at every
 * byte offset), the request formatter, the blocking round trip against scripted servers, and the
 * asynchronous client. The Firecracker and Cloud Hypervisor drivers are tested against their
 * protocol-faithful peers in tests/unit/test-fc.c and tests/unit/test-chv.c. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/http1.h"
#include "shared/ev.h"
#include "shared/macro.h"
#include "shared/unix-sock.h"

#include "peer-fixture.h"

#define FC_HDR  "Server: Firecracker API\r\nConnection: keep-alive\r\n"
#define CHV_HDR "Server: Cloud Hypervisor API\r\nConnection: keep-alive\r\n"
#define JSON_CL "Content-Type: application/json\r\nContent-Length: "

/* --- parser: valid responses --- */

typedef struct Valid {
        const char *name;
        const char *bytes;
        int status;
        const char *reason;
        const char *content_type;
        bool keep_alive;
        const char *body;
} Valid;

static const Valid valid[] = {
        /* docs/drivers.md, Firecracker, byte for byte. */
        { "fc-204", "HTTP/1.1 204 \r\n" FC_HDR "\r\n", 204, "", "", true, "" },
        { "fc-balloon",
          "HTTP/1.1 200 \r\n" FC_HDR JSON_CL "123\r\n\r\n"
          "{\"amount_mib\":256,\"deflate_on_oom\":true,\"stats_polling_interval_s\":1,"
          "\"free_page_hinting\":false,\"free_page_reporting\":false}",
          200, "", "application/json", true,
          "{\"amount_mib\":256,\"deflate_on_oom\":true,\"stats_polling_interval_s\":1,\"free_page_hinting\":false,"
          "\"free_page_reporting\":false}" },
        { "fc-fault",
          "HTTP/1.1 400 \r\n" FC_HDR JSON_CL "89\r\n\r\n"
          "{\"fault_message\":\"The requested operation is not supported before starting the microVM.\"}",
          400, "", "application/json", true,
          "{\"fault_message\":\"The requested operation is not supported before starting the microVM.\"}" },
        { "fc-micro-http-error",
          "HTTP/1.1 400 \r\n" FC_HDR JSON_CL "110\r\n\r\n"
          "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous "
          "unanswered requests will be dropped.\" }",
          400, "", "application/json", true,
          "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered requests will be "
          "dropped.\" }" },
        { "fc-deprecation",
          "HTTP/1.1 204 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nDeprecation: true\r\n\r\n", 204, "",
          "", true, "" },
        /* Cloud Hypervisor's answers, as its API sends them. */
        { "chv-204", "HTTP/1.1 204 \r\n" CHV_HDR "\r\n", 204, "", "", true, "" },
        { "chv-no-balloon",
          "HTTP/1.1 500 \r\n" CHV_HDR JSON_CL "128\r\n\r\n"
          "[\"Error from API\",\"The VM could not be resized\",\"Error from device manager\","
          "\"Missing virtio-balloon, can't proceed as expected\"]",
          500, "", "application/json", true,
          "[\"Error from API\",\"The VM could not be resized\",\"Error from device manager\",\"Missing "
          "virtio-balloon, can't proceed as expected\"]" },
        { "chv-404", "HTTP/1.1 404 \r\n" CHV_HDR JSON_CL "13\r\n\r\n[\"Not Found\"]", 404, "", "application/json", true,
          "[\"Not Found\"]" },
        { "chv-legacy-text",
          "HTTP/1.1 500 \r\n" CHV_HDR "Content-Length: 55\r\n\r\n"
          "ApiError(VmResize(DeviceManager(MissingVirtioBalloon)))",
          500, "", "", true, "ApiError(VmResize(DeviceManager(MissingVirtioBalloon)))" },
        /* Generic servers. */
        { "reason-ok", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", 200, "OK", "", true, "{}" },
        { "no-reason-no-space", "HTTP/1.1 204\r\n\r\n", 204, "", "", true, "" },
        { "reason-long-words", "HTTP/1.1 503 Service Unavailable Right Now\r\n\r\n", 503,
          "Service Unavailable Right Now", "", true, "" },
        { "connection-close", "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", 200, "OK", "",
          false, "x" },
        { "connection-list", "HTTP/1.1 200 OK\r\nconnection: Upgrade, CLOSE\r\ncontent-length: 0\r\n\r\n", 200, "OK",
          "", false, "" },
        { "http10-default-close", "HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, "OK", "", false, "" },
        { "http10-keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n", 200, "OK", "",
          true, "" },
        { "case-and-ows", "HTTP/1.1 200 \r\nCONTENT-length:\t 3 \t\r\ncontent-TYPE:   text/plain  \r\n\r\nabc", 200, "",
          "text/plain", true, "abc" },
        { "duplicate-equal-length", "HTTP/1.1 200 \r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", 200, "", "",
          true, "ok" },
        { "leading-zeros", "HTTP/1.1 200 \r\nContent-Length: 0002\r\n\r\nok", 200, "", "", true, "ok" },
        { "no-length-no-body", "HTTP/1.1 400 \r\n" CHV_HDR "\r\n", 400, "", "", true, "" },
        { "continue", "HTTP/1.1 100 \r\nServer: Firecracker API\r\n\r\n", 100, "", "", true, "" },
        { "not-modified-length", "HTTP/1.1 304 \r\nContent-Length: 99\r\n\r\n", 304, "", "", true, "" },
        { "204-zero-length", "HTTP/1.1 204 \r\nContent-Length: 0\r\n\r\n", 204, "", "", true, "" },
        { "te-identity", "HTTP/1.1 200 \r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nx", 200, "", "",
          true, "x" },
        { "obs-text", "HTTP/1.1 200 \xc3\xa9t\xc3\xa9\r\nX-Y: \xff\r\nContent-Length: 1\r\n\r\n\0", 200,
          "\xc3\xa9t\xc3\xa9", "", true, NULL /* one NUL byte */ },
        { "empty-value", "HTTP/1.1 200 \r\nX-Empty:\r\nContent-Length: 0\r\n\r\n", 200, "", "", true, "" },
        { "body-with-crlfcrlf", "HTTP/1.1 200 \r\nContent-Length: 8\r\n\r\n\r\n\r\nabcd", 200, "", "", true,
          "\r\n\r\nabcd" },
};

static size_t valid_len(const Valid *v) {
        /* The obs-text fixture ends in a NUL body byte. */
        return strlen(v->bytes) + (v->body == NULL ? 1 : 0);
}

static void check_valid(const Valid *v, const Http1Response *r, const char *buf, size_t len) {
        if (r->status != v->status)
                fail_msg("%s: status %d", v->name, r->status);
        assert_string_equal(r->reason, v->reason);
        assert_string_equal(r->content_type, v->content_type);
        if (r->keep_alive != v->keep_alive)
                fail_msg("%s: keep_alive %d", v->name, r->keep_alive);
        const char *body = v->body ? v->body : "";
        size_t blen = v->body ? strlen(v->body) : 1;
        assert_int_equal(r->body_len, blen);
        assert_true(r->body == buf + r->header_len);
        assert_int_equal(r->header_len + r->body_len, len);
        assert_memory_equal(r->body, body, blen);
}

static void test_parse_valid(void **state) {
        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(valid); i++) {
                const Valid *v = &valid[i];
                size_t len = valid_len(v);
                /* Exact-size copy, so ASan sees any read past the end. */
                char *b = malloc(len);
                assert_non_null(b);
                memcpy(b, v->bytes, len);
                Http1Response r;
                char why[160] = "";
                int k = http1_parse_response_ex(b, len, HTTP1_BODY_DEFAULT, &r, why, sizeof(why));
                if (k != (int) len)
                        fail_msg("%s: returned %d (%s), expected %zu", v->name, k, why, len);
                check_valid(v, &r, b, len);
                free(b);
        }
}

/* Incremental parsing: every strict prefix needs more bytes; the whole parses; whatever follows
 * the response (the next response, garbage) is not consumed. */
static void test_parse_split_everywhere(void **state) {
        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(valid); i++) {
                const Valid *v = &valid[i];
                size_t len = valid_len(v);
                for (size_t cut = 0; cut < len; cut++) {
                        char *b = malloc(cut ? cut : 1);
                        assert_non_null(b);
                        memcpy(b, v->bytes, cut);
                        Http1Response r = { .status = -1 };
                        int k = http1_parse_response(b, cut, HTTP1_BODY_DEFAULT, &r);
                        if (k != 0)
                                fail_msg("%s: prefix of %zu/%zu bytes returned %d", v->name, cut, len, k);
                        assert_int_equal(r.status, -1); /* *ret untouched */
                        free(b);
                }
                char *b = malloc(len + 64);
                assert_non_null(b);
                memcpy(b, v->bytes, len);
                static const char next[] = "HTTP/1.1 204 \r\n\r\ngarbage after";
                memcpy(b + len, next, sizeof(next) - 1);
                Http1Response r;
                assert_int_equal(http1_parse_response(b, len + sizeof(next) - 1, HTTP1_BODY_DEFAULT, &r), (int) len);
                check_valid(v, &r, b, len);
                free(b);
        }
}

/* Two responses in one buffer, as a keep-alive reader sees them. */
static void test_parse_back_to_back(void **state) {
        (void) state;
        const char b[] = "HTTP/1.1 100 \r\n\r\nHTTP/1.1 200 \r\nContent-Length: 2\r\n\r\n{}HTTP/1.1 204 \r\n\r\n";
        size_t len = sizeof(b) - 1, off = 0;
        int statuses[3], n = 0;
        while (off < len) {
                Http1Response r;
                int k = http1_parse_response(b + off, len - off, 16, &r);
                assert_true(k > 0);
                assert_true(n < 3);
                statuses[n++] = r.status;
                off += (size_t) k;
        }
        assert_int_equal(n, 3);
        assert_int_equal(statuses[0], 100);
        assert_int_equal(statuses[1], 200);
        assert_int_equal(statuses[2], 204);
}

/* --- parser: malformed responses --- */

typedef struct Bad {
        const char *name;
        const char *bytes;
        int error;
        const char *why; /* substring of the reason */
} Bad;

static const Bad bad[] = {
        { "not-http", "}{ this is not HTTP\r\n\r\n", -EBADMSG, "HTTP/1." },
        { "not-http-short", "X", -EBADMSG, "HTTP/1." },
        { "lowercase-proto", "http/1.1 200 OK\r\n\r\n", -EBADMSG, "HTTP/1." },
        { "http2", "HTTP/2 200\r\n\r\n", -EBADMSG, "HTTP/1." },
        { "http12", "HTTP/1.2 200 OK\r\n\r\n", -EBADMSG, "status line" },
        { "no-space", "HTTP/1.1200 OK\r\n\r\n", -EBADMSG, "status line" },
        { "short-status", "HTTP/1.1 20\r\n\r\n", -EBADMSG, "status line" },
        { "status-letters", "HTTP/1.1 2x4 \r\n\r\n", -EBADMSG, "status code" },
        { "status-four-digits", "HTTP/1.1 2040 \r\n\r\n", -EBADMSG, "status code" },
        { "status-too-low", "HTTP/1.1 099 \r\n\r\n", -EBADMSG, "out of range" },
        { "status-too-high", "HTTP/1.1 600 \r\n\r\n", -EBADMSG, "out of range" },
        { "bare-lf-status", "HTTP/1.1 204 \n\n", -EBADMSG, "CRLF" },
        { "bare-lf-header", "HTTP/1.1 204 \r\nServer: x\n\r\n", -EBADMSG, "CRLF" },
        { "stray-cr", "HTTP/1.1 204 \r\nServer: a\rb\r\n\r\n", -EBADMSG, "stray CR" },
        { "nul-in-reason", "HTTP/1.1 204 a\001b\r\n\r\n", -EBADMSG, "reason" },
        { "no-colon", "HTTP/1.1 204 \r\nServer Firecracker\r\n\r\n", -EBADMSG, "header line" },
        { "space-before-colon", "HTTP/1.1 204 \r\nServer : x\r\n\r\n", -EBADMSG, "header line" },
        { "empty-name", "HTTP/1.1 204 \r\n: x\r\n\r\n", -EBADMSG, "header line" },
        { "obs-fold", "HTTP/1.1 204 \r\nServer: a\r\n b\r\n\r\n", -EBADMSG, "folding" },
        { "ctl-in-value", "HTTP/1.1 204 \r\nServer: a\033b\r\n\r\n", -EBADMSG, "control" },
        { "length-empty", "HTTP/1.1 200 \r\nContent-Length: \r\n\r\n", -EBADMSG, "empty" },
        { "length-negative", "HTTP/1.1 200 \r\nContent-Length: -1\r\n\r\n", -EBADMSG, "not a number" },
        { "length-plus", "HTTP/1.1 200 \r\nContent-Length: +1\r\n\r\n", -EBADMSG, "not a number" },
        { "length-hex", "HTTP/1.1 200 \r\nContent-Length: 0x10\r\n\r\n", -EBADMSG, "not a number" },
        { "length-list", "HTTP/1.1 200 \r\nContent-Length: 2, 2\r\n\r\nok", -EBADMSG, "not a number" },
        { "length-inner-space", "HTTP/1.1 200 \r\nContent-Length: 1 2\r\n\r\n", -EBADMSG, "not a number" },
        { "length-conflict", "HTTP/1.1 200 \r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", -EBADMSG,
          "conflicting" },
        { "length-on-204", "HTTP/1.1 204 \r\nContent-Length: 2\r\n\r\nok", -EBADMSG, "204" },
        { "length-on-100", "HTTP/1.1 100 \r\nContent-Length: 1\r\n\r\nx", -EBADMSG, "100" },
        { "chunked", "HTTP/1.1 200 \r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", -EPROTONOSUPPORT,
          "chunked" },
        { "gzip-chunked", "HTTP/1.1 200 \r\ntransfer-encoding: gzip, chunked\r\n\r\n", -EPROTONOSUPPORT,
          "not supported" },
        { "body-over-limit", "HTTP/1.1 200 \r\nContent-Length: 1048577\r\n\r\n", -EMSGSIZE, "exceeds" },
        { "length-100MB", "HTTP/1.1 200 \r\nContent-Length: 104857600\r\n\r\n", -EMSGSIZE, "104857600" },
        { "length-overflow", "HTTP/1.1 200 \r\nContent-Length: 99999999999999999999999999999999999999999999\r\n\r\n",
          -EMSGSIZE, "too large" },
        { "length-u64-max", "HTTP/1.1 200 \r\nContent-Length: 18446744073709551615\r\n\r\n", -EMSGSIZE, "too large" },
        { "length-u64-max-1", "HTTP/1.1 200 \r\nContent-Length: 18446744073709551614\r\n\r\n", -EMSGSIZE,
          "18446744073709551614" },
};

static void test_parse_malformed(void **state) {
        (void) state;
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                const Bad *b = &bad[i];
                size_t len = strlen(b->bytes);
                char *buf = malloc(len);
                assert_non_null(buf);
                memcpy(buf, b->bytes, len);
                Http1Response r = { .status = -1 };
                char why[160] = "";
                int k = http1_parse_response_ex(buf, len, HTTP1_BODY_DEFAULT, &r, why, sizeof(why));
                if (k != b->error)
                        fail_msg("%s: returned %d, expected %d (%s)", b->name, k, b->error, why);
                if (!strstr(why, b->why))
                        fail_msg("%s: reason '%s' lacks '%s'", b->name, why, b->why);
                assert_int_equal(r.status, -1);
                /* Without a reason buffer: the same answer. */
                assert_int_equal(http1_parse_response(buf, len, HTTP1_BODY_DEFAULT, &r), b->error);
                /* A malformed input never looks complete at any prefix. */
                for (size_t cut = 0; cut < len; cut++) {
                        int kk = http1_parse_response(buf, cut, HTTP1_BODY_DEFAULT, &r);
                        if (kk > 0)
                                fail_msg("%s: prefix %zu parsed as complete", b->name, cut);
                }
                free(buf);
        }
}

/* Garbage is refused from its first byte, without waiting for a line end or a timeout. */
static void test_parse_early_refusal(void **state) {
        (void) state;
        Http1Response r;
        assert_int_equal(http1_parse_response("<", 1, 100, &r), -EBADMSG);
        assert_int_equal(http1_parse_response("HTTP/1.", 7, 100, &r), 0);
        assert_int_equal(http1_parse_response("HTTP/1.1 2", 10, 100, &r), 0);
        assert_int_equal(http1_parse_response("HTTP/1.1 2\r\n", 12, 100, &r), -EBADMSG);
        assert_int_equal(http1_parse_response("HTTPS", 5, 100, &r), -EBADMSG);
        /* Content-Length over the limit is refused as soon as the headers are in, before the body. */
        const char h[] = "HTTP/1.1 200 \r\nContent-Length: 101\r\n\r\n";
        assert_int_equal(http1_parse_response(h, sizeof(h) - 1, 100, &r), -EMSGSIZE);
        assert_int_equal(http1_parse_response(h, sizeof(h) - 1, 101, &r), 0);
}

static void test_parse_limits(void **state) {
        (void) state;
        Http1Response r;
        /* Header block at the limit (blank line included) is fine; one byte more is not. */
        size_t n = HTTP1_HEADERS_MAX;
        char *b = malloc(n + 2);
        assert_non_null(b);
        const char *start = "HTTP/1.1 204 \r\nX: ";
        size_t sl = strlen(start);
        memcpy(b, start, sl);
        memset(b + sl, 'a', n - sl - 4);
        memcpy(b + n - 4, "\r\n\r\n", 4);
        assert_int_equal(http1_parse_response(b, n, 0, &r), (int) n);
        assert_int_equal(r.header_len, n);
        memmove(b + sl + 1, b + sl, n - sl);
        b[sl] = 'a';
        assert_int_equal(http1_parse_response(b, n + 1, 0, &r), -EMSGSIZE);
        /* An endless header line is refused once the limit is reached, not before. */
        memset(b + sl, 'a', n + 1 - sl);
        assert_int_equal(http1_parse_response(b, n - 1, 0, &r), 0);
        assert_int_equal(http1_parse_response(b, n, 0, &r), -EMSGSIZE);
        assert_int_equal(http1_parse_response(b, n + 1, 0, &r), -EMSGSIZE);
        free(b);

        /* max_body 0: only empty bodies. */
        const char empty[] = "HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n",
                   one[] = "HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx";
        assert_int_equal(http1_parse_response(empty, sizeof(empty) - 1, 0, &r), (int) sizeof(empty) - 1);
        assert_int_equal(http1_parse_response(one, sizeof(one) - 1, 0, &r), -EMSGSIZE);
        /* A huge max_body cannot make the return value overflow int. */
        const char big[] = "HTTP/1.1 200 \r\nContent-Length: 4294967296\r\n\r\n";
        assert_int_equal(http1_parse_response(big, sizeof(big) - 1, SIZE_MAX, &r), -EMSGSIZE);
        const char fits[] = "HTTP/1.1 200 \r\nContent-Length: 2147000000\r\n\r\n";
        assert_int_equal(http1_parse_response(fits, sizeof(fits) - 1, SIZE_MAX, &r), 0);
        /* Long reason and content type are truncated, NUL-terminated. */
        char lr[600];
        int l = snprintf(lr, sizeof(lr), "HTTP/1.1 200 %0200d\r\nContent-Type: %0200d\r\n\r\n", 0, 0);
        assert_int_equal(http1_parse_response(lr, (size_t) l, 0, &r), l);
        assert_int_equal(strlen(r.reason), sizeof(r.reason) - 1);
        assert_int_equal(strlen(r.content_type), sizeof(r.content_type) - 1);
}

/* --- formatter --- */

static void test_format_request(void **state) {
        (void) state;
        char *s = NULL;
        /* Firecracker's own examples, byte for byte. */
        const char *patch = "PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: "
                            "application/json\r\nContent-Length: 18\r\n\r\n{\"amount_mib\":256}";
        int n = http1_format_request("PATCH", "/balloon", NULL, "{\"amount_mib\":256}", 18, &s);
        assert_int_equal(n, (int) strlen(patch));
        assert_string_equal(s, patch);
        free(s);

        const char *get = "GET /balloon/statistics HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n";
        n = http1_format_request("GET", "/balloon/statistics", NULL, NULL, 0, &s);
        assert_int_equal(n, (int) strlen(get));
        assert_string_equal(s, get);
        free(s);

        /* Cloud Hypervisor's resize request. */
        const char *resize = "PUT /api/v1/vm.resize HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
                             "Content-Type: application/json\r\nContent-Length: 30\r\n\r\n"
                             "{\"desired_balloon\":1073741824}";
        n = http1_format_request("PUT", "/api/v1/vm.resize", NULL, "{\"desired_balloon\":1073741824}", 30, &s);
        assert_string_equal(s, resize);
        free(s);

        /* PUT without a body still says Content-Length: 0; no Content-Type. */
        n = http1_format_request("PUT", "/actions", NULL, NULL, 0, &s);
        assert_string_equal(s, "PUT /actions HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n"
                               "Content-Length: 0\r\n\r\n");
        free(s);

        /* Extra headers come last; a Content-Type or Accept there replaces ours (ballastctl passes
         * Content-Type itself). */
        n = http1_format_request("POST", "/v1/vms", "Content-Type: application/json\r\nAccept: */*\r\nX-A: b\r\n", "{}",
                                 2, &s);
        assert_string_equal(s, "POST /v1/vms HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n"
                               "Content-Type: application/json\r\nAccept: */*\r\nX-A: b\r\n\r\n{}");
        free(s);

        /* A body with NUL bytes is copied whole. */
        n = http1_format_request("PUT", "/x", NULL, "a\0b", 3, &s);
        assert_true(n > 3);
        assert_memory_equal(s + n - 3, "a\0b", 3);
        assert_int_equal(s[n], '\0');
        free(s);

        /* Refused inputs; *ret untouched. */
        s = (char *) "untouched";
        assert_int_equal(http1_format_request("get", "/", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET /x HTTP/1.1\r\nX:", "/", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("", "/", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request(NULL, "/", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "balloon", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/a b", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/a\r\nX: y", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "", NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", NULL, NULL, NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("PUT", "/", NULL, NULL, 5, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/", "X: y", NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/", "X: y\r\n\r\nGET / HTTP/1.1\r\n", NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/", "X y\r\n", NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/", "X: a\nb\r\n", NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/", "Host: evil\r\n", NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/", "content-length: 5\r\n", NULL, 0, &s), -EINVAL);
        assert_int_equal(http1_format_request("GET", "/", "Transfer-Encoding: chunked\r\n", NULL, 0, &s), -EINVAL);
        assert_string_equal(s, "untouched");
}

static void test_format_timeout(void **state) {
        (void) state;
        char b[32];
        assert_string_equal(http1_format_timeout(b, sizeof(b), 5 * USEC_PER_SEC), "5s");
        assert_string_equal(http1_format_timeout(b, sizeof(b), 250 * USEC_PER_MSEC), "250ms");
        assert_string_equal(http1_format_timeout(b, sizeof(b), 1500 * USEC_PER_MSEC), "1.5s");
        assert_string_equal(http1_format_timeout(b, sizeof(b), 7), "7us");
        assert_string_equal(http1_format_timeout(b, sizeof(b), USEC_INFINITY), "infinity");
}

/* --- scripted servers in child processes --- */

static int setup(void **state) {
        return fixture_setup(state, "http1", "api.sock");
}

typedef void (*script_fn)(int lfd, const void *arg);

/* Forks a child that listens on f->path (after dropping to drop_uid unless -1) and runs script
 * with the listening socket. Returns once it listens. */
static pid_t spawn_script(Fixture *f, script_fn script, const void *arg, uid_t drop_uid) {
        int ready;
        pid_t pid = fork_peer(f, drop_uid, "scripted server", &ready);
        if (pid == 0) {
                char err[256];
                int lfd = usock_listen(f->path, 0666, err, sizeof(err));
                if (lfd < 0 || fcntl(lfd, F_SETFL, 0) < 0)
                        _exit(12);
                (void) !write(ready, "R", 1);
                close(ready);
                script(lfd, arg);
                _exit(0);
        }
        return pid;
}

/* Child side: blocking helpers; any surprise exits. */
static int sc_accept(int lfd) {
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0)
                _exit(13);
        return fd;
}

/* Reads one request (headers and Content-Length body) into a static buffer. */
static const char *sc_request(int fd) {
        static char buf[65536];
        size_t n = 0;
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, 20000) != 1)
                        _exit(20);
                ssize_t k = read(fd, buf + n, sizeof(buf) - 1 - n);
                if (k <= 0)
                        _exit(21);
                n += (size_t) k;
                buf[n] = 0;
                char *e = strstr(buf, "\r\n\r\n");
                if (!e)
                        continue;
                const char *cl = strcasestr(buf, "\r\nContent-Length: ");
                size_t want = (size_t) (e + 4 - buf) + (cl && cl < e ? strtoul(cl + 18, NULL, 10) : 0);
                if (n >= want)
                        return buf;
        }
}

static void sc_write(int fd, const char *s, size_t n) {
        if (send(fd, s, n, MSG_NOSIGNAL) != (ssize_t) n)
                _exit(23);
}

static void sc_hold(int fd) {
        char b[4096];
        while (read(fd, b, sizeof(b)) > 0)
                ;
}

/* Answers one request with the given bytes, then holds the connection. */
static void script_answer(int lfd, const void *arg) {
        const char *answer = arg;
        int fd = sc_accept(lfd);
        const char *req = sc_request(fd);
        if (strncmp(req, "GET /x HTTP/1.1\r\nHost: localhost\r\n", 33) != 0)
                _exit(24);
        sc_write(fd, answer, strlen(answer));
        sc_hold(fd);
}

/* Answers byte by byte, with a pause, so the reader sees every split. */
static void script_trickle(int lfd, const void *arg) {
        const char *answer = arg;
        int fd = sc_accept(lfd);
        (void) sc_request(fd);
        for (size_t i = 0; answer[i]; i++) {
                sc_write(fd, answer + i, 1);
                usleep(200);
        }
        sc_hold(fd);
}

static void script_silent(int lfd, const void *arg) {
        (void) arg;
        int fd = sc_accept(lfd);
        (void) sc_request(fd);
        sc_hold(fd);
}

static void script_close_mid(int lfd, const void *arg) {
        (void) arg;
        int fd = sc_accept(lfd);
        (void) sc_request(fd);
        sc_write(fd, "HTTP/1.1 200 \r\nContent-Length: 10\r\n\r\n{\"a\"", 42);
        close(fd);
        pause();
}

/* Refuses at once and closes without reading the (large) request. */
static void script_refuse_early(int lfd, const void *arg) {
        (void) arg;
        int fd = sc_accept(lfd);
        const char *a = "HTTP/1.1 413 \r\nConnection: close\r\nContent-Length: 2\r\n\r\n[]";
        sc_write(fd, a, strlen(a));
        shutdown(fd, SHUT_WR);
        usleep(100 * 1000);
        close(fd); /* unread data: the client's writes now fail with EPIPE/ECONNRESET */
        pause();
}

/* Sends a 100 MB body after its headers, until the reader goes away. */
static void script_flood(int lfd, const void *arg) {
        (void) arg;
        int fd = sc_accept(lfd);
        (void) sc_request(fd);
        const char *h = "HTTP/1.1 200 \r\nContent-Length: 104857600\r\n\r\n";
        sc_write(fd, h, strlen(h));
        static char chunk[65536];
        memset(chunk, '[', sizeof(chunk));
        for (int i = 0; i < 1600; i++)
                if (send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL) < 0)
                        break;
        pause();
}

/* Answers one request with *(unsigned *) arg interim responses, then a 204, then holds. */
static void script_interim(int lfd, const void *arg) {
        unsigned n = *(const unsigned *) arg;
        int fd = sc_accept(lfd);
        (void) sc_request(fd);
        static const char interim[] = "HTTP/1.1 100 Continue\r\n\r\n";
        for (unsigned i = 0; i < n; i++)
                if (send(fd, interim, sizeof(interim) - 1, MSG_NOSIGNAL) < 0)
                        _exit(0); /* the client gave up: that is the point */
        static const char final[] = "HTTP/1.1 204 \r\n\r\n";
        (void) !send(fd, final, sizeof(final) - 1, MSG_NOSIGNAL);
        sc_hold(fd);
}

static int roundtrip(Fixture *f, usec_t timeout, size_t max_body, Http1Response *resp, char **buf, char *err,
                     size_t errlen) {
        return http1_roundtrip_unix(f->path, "GET", "/x", NULL, NULL, 0, timeout, max_body, resp, buf, err, errlen);
}

static void test_roundtrip_ok(void **state) {
        Fixture *f = *state;
        const char *a = "HTTP/1.1 200 \r\n" FC_HDR JSON_CL "93\r\n\r\n"
                        "{\"id\":\"anonymous-instance\",\"state\":\"Running\",\"vmm_version\":\"1.16.1\",\"app_name\":"
                        "\"Firecracker\"}";
        spawn_script(f, script_answer, a, (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256] = "x";
        assert_int_equal(roundtrip(f, 5 * USEC_PER_SEC, HTTP1_BODY_DEFAULT, &r, &buf, err, sizeof(err)), 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, 93);
        assert_true(r.body >= buf);
        assert_int_equal(r.body[r.body_len], '\0'); /* NUL-terminated */
        assert_non_null(strstr(r.body, "\"vmm_version\":\"1.16.1\""));
        free(buf);
}

static void test_roundtrip_trickle_and_continue(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_trickle, "HTTP/1.1 100 \r\n\r\nHTTP/1.1 204 \r\n" FC_HDR "\r\n", (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256];
        int k = roundtrip(f, 10 * USEC_PER_SEC, 0, &r, &buf, err, sizeof(err));
        if (k < 0)
                fail_msg("%s", err);
        assert_int_equal(r.status, 204);
        assert_int_equal(r.body_len, 0);
        assert_true(r.keep_alive);
        free(buf);
}

static void test_roundtrip_errors(void **state) {
        Fixture *f = *state;
        Http1Response r = { .status = -1 };
        char *buf = NULL, err[256];

        /* Nobody listening: the connect errno, the path and the reason. */
        int k = roundtrip(f, USEC_PER_SEC, 0, &r, &buf, err, sizeof(err));
        assert_int_equal(k, -ENOENT);
        char want[200];
        snprintf(want, sizeof(want), "connect %s: No such file or directory", f->path);
        assert_string_equal(err, want);
        assert_null(buf);
        assert_int_equal(r.status, -1);

        /* A bad request never reaches the socket. */
        k = http1_roundtrip_unix(f->path, "GET", "no-slash", NULL, NULL, 0, USEC_PER_SEC, 0, &r, &buf, err,
                                 sizeof(err));
        assert_int_equal(k, -EINVAL);
        assert_non_null(strstr(err, "no-slash"));

        /* A path that cannot be a Unix socket. */
        char longp[200];
        memset(longp, 'a', sizeof(longp) - 1);
        longp[0] = '/';
        longp[sizeof(longp) - 1] = 0;
        k = http1_roundtrip_unix(longp, "GET", "/", NULL, NULL, 0, USEC_PER_SEC, 0, &r, &buf, err, sizeof(err));
        assert_int_equal(k, -ENAMETOOLONG);
        assert_non_null(strstr(err, "too long"));
}

static void test_roundtrip_timeout(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_silent, NULL, (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256];
        usec_t t0 = now_mono();
        int k = roundtrip(f, 300 * USEC_PER_MSEC, 0, &r, &buf, err, sizeof(err));
        usec_t took = now_mono() - t0;
        assert_int_equal(k, -ETIMEDOUT);
        assert_string_equal(err, "timed out after 300ms waiting for the response");
        assert_true(took >= 300 * USEC_PER_MSEC);
        assert_true(took < 3 * USEC_PER_SEC);
        assert_null(buf);
}

static void test_roundtrip_malformed(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_answer, "HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n", (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256];
        assert_int_equal(roundtrip(f, 5 * USEC_PER_SEC, 4096, &r, &buf, err, sizeof(err)), -EBADMSG);
        assert_string_equal(err, "malformed response: Content-Length is not a number");
        assert_null(buf);
}

static void test_roundtrip_garbage(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_answer, "\x16\x03\x01 garbage", (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256];
        usec_t t0 = now_mono();
        assert_int_equal(roundtrip(f, 10 * USEC_PER_SEC, 4096, &r, &buf, err, sizeof(err)), -EBADMSG);
        assert_true(now_mono() - t0 < 2 * USEC_PER_SEC); /* at once, not at the deadline */
        assert_non_null(strstr(err, "malformed response"));
}

static void test_roundtrip_chunked(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_answer, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                     (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256];
        assert_int_equal(roundtrip(f, 5 * USEC_PER_SEC, 4096, &r, &buf, err, sizeof(err)), -EPROTONOSUPPORT);
        assert_non_null(strstr(err, "chunked"));
}

static void test_roundtrip_closed_mid_reply(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_close_mid, NULL, (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256];
        assert_int_equal(roundtrip(f, 5 * USEC_PER_SEC, 4096, &r, &buf, err, sizeof(err)), -ECONNRESET);
        assert_non_null(strstr(err, "before the response was complete"));
        assert_non_null(strstr(err, "42 bytes"));
}

static void test_roundtrip_oversized(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_flood, NULL, (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256];
        usec_t t0 = now_mono();
        assert_int_equal(roundtrip(f, 10 * USEC_PER_SEC, HTTP1_BODY_DEFAULT, &r, &buf, err, sizeof(err)), -EMSGSIZE);
        assert_true(now_mono() - t0 < 2 * USEC_PER_SEC);
        assert_string_equal(err, "response too large: body of 104857600 bytes exceeds the limit of 1048576 bytes");
}

/* A few interim responses are fine; an endless stream of them ends the call with an error. */
static void test_roundtrip_interim_cap(void **state) {
        Fixture *f = *state;
        static const unsigned few = 3, many = 100000;
        spawn_script(f, script_interim, &few, (uid_t) -1);
        Http1Response r;
        char *buf = NULL, err[256] = "";
        assert_int_equal(roundtrip(f, 5 * USEC_PER_SEC, 4096, &r, &buf, err, sizeof(err)), 0);
        assert_int_equal(r.status, 204);
        free(buf);

        kill_peer(f, f->pids[0]);
        (void) unlink(f->path);
        spawn_script(f, script_interim, &many, (uid_t) -1);
        buf = NULL;
        usec_t t0 = now_mono();
        int k = roundtrip(f, 10 * USEC_PER_SEC, 4096, &r, &buf, err, sizeof(err));
        if (k == 0)
                fail_msg("%u interim responses were accepted (status %d)", many, r.status);
        assert_int_equal(k, -EBADMSG);
        assert_string_equal(err, "malformed response: more than 8 interim (1xx) responses");
        assert_true(now_mono() - t0 < 2 * USEC_PER_SEC);
}

/* The server answers without reading a 1 MiB request and closes: its answer still counts. */
static void test_roundtrip_early_answer(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_refuse_early, NULL, (uid_t) -1);
        size_t n = (size_t) 1 << 20;
        char *body = malloc(n);
        assert_non_null(body);
        memset(body, ' ', n);
        Http1Response r;
        char *buf = NULL, err[256] = "";
        int k = http1_roundtrip_unix(f->path, "PUT", "/big", NULL, body, n, 5 * USEC_PER_SEC, 4096, &r, &buf, err,
                                     sizeof(err));
        free(body);
        if (k == 0) {
                assert_int_equal(r.status, 413);
                assert_false(r.keep_alive);
                free(buf);
        } else {
                /* The kernel may discard the unread answer with the reset; then the write error is
                 * what is left to report. */
                assert_true(k == -EPIPE || k == -ECONNRESET);
                assert_true(strstr(err, "send to") || strstr(err, "read from") || strstr(err, "closed by"));
        }
}

/* --- asynchronous client --- */

typedef struct Got {
        bool done;
        int error;
        int status;
        char body[256];
        char message[512];
        usec_t at;
} Got;

static void on_response(Http1Client *c, int error, const Http1Response *resp, const char *message, void *userdata) {
        Got *g = userdata;
        (void) c;
        assert_false(in_call); /* never synchronous */
        assert_false(g->done); /* exactly once */
        g->done = true;
        g->error = error;
        g->at = now_mono();
        if (error == 0) {
                assert_non_null(resp);
                assert_null(message);
                g->status = resp->status;
                snprintf(g->body, sizeof(g->body), "%.*s", (int) MIN(resp->body_len, (size_t) 200), resp->body);
        } else {
                assert_null(resp);
                assert_non_null(message);
                snprintf(g->message, sizeof(g->message), "%s", message);
        }
}

static int request(Http1Client *c, const char *method, const char *path, const char *body, usec_t timeout, Got *g) {
        in_call = true;
        int r = http1_client_request(c, method, path, body, body ? strlen(body) : 0, timeout, on_response, g);
        in_call = false;
        return r;
}

static Http1Client *new_client(Fixture *f, uid_t uid) {
        Http1Client *c = NULL;
        Http1ClientConfig cfg = { .socket_path = f->path, .expected_uid = uid, .max_body = 4096 };
        assert_int_equal(http1_client_new(f->ev, &cfg, &c), 0);
        return c;
}

/* A keep-alive server: answers each request with its own request line echoed in the body; after
 * `close_after` answers it closes the connection (0: never); requests to /hang are never answered;
 * /close answers with Connection: close. Serves several connections, one after the other. */
typedef struct EchoArgs {
        unsigned close_after;
} EchoArgs;

static void script_echo(int lfd, const void *arg) {
        const EchoArgs *a = arg;
        for (;;) {
                int fd = sc_accept(lfd);
                unsigned served = 0;
                for (;;) {
                        static char buf[65536];
                        size_t n = 0;
                        bool gone = false;
                        for (;;) {
                                ssize_t k = read(fd, buf + n, sizeof(buf) - 1 - n);
                                if (k <= 0) {
                                        gone = true;
                                        break;
                                }
                                n += (size_t) k;
                                buf[n] = 0;
                                char *e = strstr(buf, "\r\n\r\n");
                                if (!e)
                                        continue;
                                const char *cl = strcasestr(buf, "\r\nContent-Length: ");
                                size_t want = (size_t) (e + 4 - buf) + (cl && cl < e ? strtoul(cl + 18, NULL, 10) : 0);
                                if (n >= want)
                                        break;
                        }
                        if (gone)
                                break;
                        char line[200];
                        snprintf(line, sizeof(line), "%.*s", (int) strcspn(buf, "\r"), buf);
                        if (strstr(line, " /hang ")) {
                                sc_hold(fd);
                                break;
                        }
                        bool cl = strstr(line, " /close ") != NULL;
                        char out[512];
                        int m = snprintf(out, sizeof(out),
                                         "HTTP/1.1 200 \r\nConnection: %s\r\nContent-Length: %zu\r\n\r\n%s",
                                         cl ? "close" : "keep-alive", strlen(line), line);
                        sc_write(fd, out, (size_t) m);
                        served++;
                        if (cl || (a->close_after && served >= a->close_after))
                                break;
                }
                close(fd);
        }
}

static void test_client_keep_alive_queue(void **state) {
        Fixture *f = *state;
        EchoArgs a = { 0 };
        spawn_script(f, script_echo, &a, (uid_t) -1);
        Http1Client *c = new_client(f, geteuid());
        Got g[5] = { 0 };
        const char *paths[5] = { "/a", "/b", "/c", "/d", "/e" };
        for (size_t i = 0; i < 5; i++)
                assert_int_equal(
                        request(c, i % 2 ? "PUT" : "GET", paths[i], i % 2 ? "{}" : NULL, 5 * USEC_PER_SEC, &g[i]), 0);
        assert_false(g[0].done);
        run_until(f->ev, &g[4].done, 10 * USEC_PER_SEC);
        for (size_t i = 0; i < 5; i++) {
                assert_true(g[i].done);
                assert_int_equal(g[i].error, 0);
                char want[64];
                snprintf(want, sizeof(want), "%s %s HTTP/1.1", i % 2 ? "PUT" : "GET", paths[i]);
                assert_string_equal(g[i].body, want);
                if (i > 0)
                        assert_true(g[i].at >= g[i - 1].at); /* in order */
        }
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        assert_int_equal(k.connects, 1);
        assert_int_equal(k.requests, 5);
        assert_int_equal(k.responses, 5);
        assert_int_equal(k.protocol_errors, 0);
        http1_client_free(c);
}

static void test_client_reconnects(void **state) {
        Fixture *f = *state;
        EchoArgs a = { .close_after = 2 };
        spawn_script(f, script_echo, &a, (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        for (int i = 0; i < 3; i++) {
                Got g = { 0 };
                assert_int_equal(request(c, "GET", "/a", NULL, 5 * USEC_PER_SEC, &g), 0);
                run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
                assert_int_equal(g.error, 0);
        }
        /* Connection: close from the server's side. */
        Got g = { 0 };
        assert_int_equal(request(c, "GET", "/close", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, 0);
        g = (Got){ 0 };
        assert_int_equal(request(c, "GET", "/after", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, 0);
        assert_string_equal(g.body, "GET /after HTTP/1.1");
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        /* 2 answers on the first connection; the third request found it closed (the server closed
         * it idle) and was sent again on a second one, which /close ended; /after on a third. */
        assert_int_equal(k.connects, 3);
        assert_int_equal(k.responses, 5);
        assert_true(k.resends <= 1);
        http1_client_free(c);
}

static void test_client_deadline(void **state) {
        Fixture *f = *state;
        EchoArgs a = { 0 };
        spawn_script(f, script_echo, &a, (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        Got h = { 0 }, q = { 0 }, late = { 0 };
        usec_t t0 = now_mono();
        assert_int_equal(request(c, "GET", "/hang", NULL, 300 * USEC_PER_MSEC, &h), 0);
        assert_int_equal(request(c, "GET", "/queued", NULL, 150 * USEC_PER_MSEC, &q), 0);
        assert_int_equal(request(c, "GET", "/later", NULL, 5 * USEC_PER_SEC, &late), 0);
        run_until(f->ev, &q.done, 5 * USEC_PER_SEC);
        assert_int_equal(q.error, -ETIMEDOUT);
        assert_non_null(strstr(q.message, "GET /queued"));
        assert_non_null(strstr(q.message, "queued behind"));
        assert_false(h.done);
        run_until(f->ev, &h.done, 5 * USEC_PER_SEC);
        assert_int_equal(h.error, -ETIMEDOUT);
        assert_non_null(strstr(h.message, "GET /hang on "));
        assert_non_null(strstr(h.message, "timed out after 300ms waiting for the response"));
        assert_true(h.at - t0 >= 300 * USEC_PER_MSEC);
        /* The hung connection was dropped; the next request works on a new one. */
        run_until(f->ev, &late.done, 10 * USEC_PER_SEC);
        assert_int_equal(late.error, 0);
        assert_string_equal(late.body, "GET /later HTTP/1.1");
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        assert_int_equal(k.connects, 2);
        assert_int_equal(k.timeouts, 2);
        http1_client_free(c);
}

static void test_client_cancel_and_free_inside(void **state) {
        Fixture *f = *state;
        EchoArgs a = { 0 };
        spawn_script(f, script_echo, &a, (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        Got x = { 0 }, y = { 0 }, z = { 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &x), 0);
        assert_int_equal(request(c, "GET", "/y", NULL, 5 * USEC_PER_SEC, &y), 0);
        assert_int_equal(request(c, "GET", "/z", NULL, 5 * USEC_PER_SEC, &z), 0);
        /* Let /x go on the wire, then cancel it and /y: neither calls back; /z still works. */
        assert_true(ev_run_once(f->ev, now_mono() + USEC_PER_SEC) >= 0);
        http1_client_cancel(c, &x);
        http1_client_cancel(c, &y);
        run_until(f->ev, &z.done, 10 * USEC_PER_SEC);
        assert_false(x.done);
        assert_false(y.done);
        assert_string_equal(z.body, "GET /z HTTP/1.1");
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        assert_int_equal(k.connects, 1);
        http1_client_free(c);
}

typedef struct FreeInside {
        Http1Client *c;
        Got g;
} FreeInside;

static void on_response_free(Http1Client *c, int error, const Http1Response *resp, const char *message,
                             void *userdata) {
        FreeInside *fi = userdata;
        on_response(c, error, resp, message, &fi->g);
        fi->c = http1_client_free(c);
}

static void test_client_free_inside_callback(void **state) {
        Fixture *f = *state;
        EchoArgs a = { 0 };
        spawn_script(f, script_echo, &a, (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        FreeInside fi = { .c = c };
        Got other = { 0 };
        assert_int_equal(http1_client_request(c, "GET", "/x", NULL, 0, 5 * USEC_PER_SEC, on_response_free, &fi), 0);
        assert_int_equal(request(c, "GET", "/y", NULL, 5 * USEC_PER_SEC, &other), 0);
        run_until(f->ev, &fi.g.done, 10 * USEC_PER_SEC);
        assert_null(fi.c);
        /* /y was dropped with the client: no callback, no leak (ASan checks). */
        for (int i = 0; i < 5; i++)
                assert_true(ev_run_once(f->ev, now_mono() + 20 * USEC_PER_MSEC) >= 0);
        assert_false(other.done);
        assert_int_equal(ev_timer_count(f->ev), 0);
}

static void test_client_errors(void **state) {
        Fixture *f = *state;
        Http1Client *c = new_client(f, UID_ANY);
        Got g = { 0 };
        /* Nobody listening: each request fails on its own, asynchronously. */
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        assert_false(g.done);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, -ENOENT);
        char want[256];
        snprintf(want, sizeof(want), "GET /x: connect %s: No such file or directory", f->path);
        assert_string_equal(g.message, want);
        /* A request that cannot be formatted is refused at once and never calls back. */
        assert_int_equal(request(c, "GET", "x", NULL, 5 * USEC_PER_SEC, &g), -EINVAL);
        http1_client_free(c);

        spawn_script(f, script_answer, "HTTP/1.1 200 \r\nContent-Length: 5000\r\n\r\n", (uid_t) -1);
        c = new_client(f, UID_ANY);
        g = (Got){ 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, -EMSGSIZE);
        assert_non_null(strstr(g.message, "response too large: body of 5000 bytes exceeds the limit of 4096"));
        http1_client_free(c);
}

/* The asynchronous client: a few interim responses are skipped, an endless stream of them fails
 * the request at once (not at its deadline) and drops the connection. */
static void test_client_interim_cap(void **state) {
        Fixture *f = *state;
        static const unsigned few = 8, many = 100000;
        spawn_script(f, script_interim, &few, (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        Got g = { 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, 0);
        assert_int_equal(g.status, 204);
        http1_client_free(c);

        kill_peer(f, f->pids[0]);
        (void) unlink(f->path);
        spawn_script(f, script_interim, &many, (uid_t) -1);
        c = new_client(f, UID_ANY);
        g = (Got){ 0 };
        usec_t t0 = now_mono();
        assert_int_equal(request(c, "GET", "/x", NULL, 10 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        if (g.error == 0)
                fail_msg("%u interim responses were accepted (status %d)", many, g.status);
        assert_int_equal(g.error, -EBADMSG);
        char want[256];
        snprintf(want, sizeof(want), "GET /x on %s: malformed response: more than 8 interim (1xx) responses", f->path);
        assert_string_equal(g.message, want);
        assert_true(g.at - t0 < 2 * USEC_PER_SEC);
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        assert_int_equal(k.protocol_errors, 1);
        assert_false(http1_client_is_connected(c));
        http1_client_free(c);
}

static void test_client_unsolicited(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_answer, "HTTP/1.1 204 \r\n\r\nHTTP/1.1 204 \r\n\r\n", (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        Got g = { 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, 0);
        assert_int_equal(g.status, 204);
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        assert_int_equal(k.protocol_errors, 1); /* the second, unasked-for response */
        http1_client_free(c);
}

static void script_micro_http_error(int lfd, const void *arg) {
        (void) arg;
        int fd = sc_accept(lfd);
        (void) sc_request(fd);
        const char *a = "HTTP/1.1 400 \r\n" FC_HDR JSON_CL "110\r\n\r\n"
                        "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll previous unanswered "
                        "requests will be dropped.\" }";
        sc_write(fd, a, strlen(a));
        sc_hold(fd);
        /* The client reconnects for its next request. */
        fd = sc_accept(lfd);
        (void) sc_request(fd);
        a = "HTTP/1.1 204 \r\n" FC_HDR "\r\n";
        sc_write(fd, a, strlen(a));
        sc_hold(fd);
}

static void test_client_reconnects_after_non_json_error(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_micro_http_error, NULL, (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        Got g = { 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, 0);
        assert_int_equal(g.status, 400);
        g = (Got){ 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, 0);
        assert_int_equal(g.status, 204);
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        assert_int_equal(k.connects, 2);
        http1_client_free(c);
}

static void test_client_peer_uid(void **state) {
        Fixture *f = *state;
        if (geteuid() != 0)
                skip();
        assert_int_equal(chmod(f->dir, 0777), 0);
        EchoArgs a = { 0 };
        spawn_script(f, script_echo, &a, 65534);
        Http1Client *c = new_client(f, 0);
        Got g = { 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, -EPERM);
        assert_non_null(strstr(g.message, "65534"));
        assert_non_null(strstr(g.message, "expected uid 0"));
        Http1ClientCounters k;
        http1_client_counters(c, &k);
        assert_int_equal(k.requests, 0); /* not one byte was sent */
        http1_client_free(c);

        c = new_client(f, 65534);
        g = (Got){ 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, 0);
        http1_client_free(c);
}

static void test_client_closed_mid_reply(void **state) {
        Fixture *f = *state;
        spawn_script(f, script_close_mid, NULL, (uid_t) -1);
        Http1Client *c = new_client(f, UID_ANY);
        Got g = { 0 };
        assert_int_equal(request(c, "GET", "/x", NULL, 5 * USEC_PER_SEC, &g), 0);
        run_until(f->ev, &g.done, 10 * USEC_PER_SEC);
        assert_int_equal(g.error, -ECONNRESET);
        assert_non_null(strstr(g.message, "closed by peer before the response was complete"));
        http1_client_free(c);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_valid),
                cmocka_unit_test(test_parse_split_everywhere),
                cmocka_unit_test(test_parse_back_to_back),
                cmocka_unit_test(test_parse_malformed),
                cmocka_unit_test(test_parse_early_refusal),
                cmocka_unit_test(test_parse_limits),
                cmocka_unit_test(test_format_request),
                cmocka_unit_test(test_format_timeout),
                cmocka_unit_test_setup_teardown(test_roundtrip_ok, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_trickle_and_continue, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_errors, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_timeout, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_malformed, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_garbage, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_chunked, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_closed_mid_reply, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_oversized, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_early_answer, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_roundtrip_interim_cap, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_keep_alive_queue, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_reconnects, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_deadline, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_cancel_and_free_inside, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_free_inside_callback, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_errors, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_interim_cap, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_unsolicited, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_reconnects_after_non_json_error, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_peer_uid, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_client_closed_mid_reply, setup, fixture_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
