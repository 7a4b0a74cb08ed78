/* SPDX-License-Identifier: MIT */
/* A small HTTP/1.1 client for Firecracker's and Cloud Hypervisor's API sockets (both served by
 * micro-http) and for ballastctl talking to ballastd: a pure response parser, a request formatter,
 * a blocking round trip and an asynchronous keep-alive client on the event loop. Responses are
 * untrusted input: every length is bounded and anything outside the small grammar we need is
 * refused rather than guessed at. */
#include "shared/http1.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shared/conn.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

/* Bodies are returned as int-sized lengths together with the header block. */
#define HTTP1_BODY_HARD_MAX ((size_t) INT_MAX - HTTP1_HEADERS_MAX)

/* --- response parser --- */

static void why_set(char *why, size_t whylen, const char *fmt, ...) _printf_(3, 4);
static void why_set(char *why, size_t whylen, const char *fmt, ...) {
        if (!why || whylen == 0)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, whylen, fmt, ap);
        va_end(ap);
}

static bool is_tchar(unsigned char c) {
        return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
               (c != '\0' && strchr("!#$%&'*+-.^_`|~", c));
}

/* Field values and reason phrases: visible ASCII, space, tab and obs-text (bytes >= 0x80). */
static bool is_field_char(unsigned char c) {
        return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static bool is_ows(char c) {
        return c == ' ' || c == '\t';
}

static bool token_eq(const char *s, size_t n, const char *lit) {
        return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

/* The status line: "HTTP/1.x NNN[ reason]". micro-http sends "HTTP/1.1 204 " (empty reason with
 * its space); the space is optional here as docs/drivers.md says. */
static int parse_status_line(const char *l, size_t n, Http1Response *r, bool *http10, char *why, size_t whylen) {
        if (n < 12 || memcmp(l, "HTTP/1.", 7) != 0 || (l[7] != '0' && l[7] != '1') || l[8] != ' ') {
                why_set(why, whylen, "bad status line");
                return -EBADMSG;
        }
        *http10 = l[7] == '0';
        int status = 0;
        for (size_t i = 9; i < 12; i++) {
                if (l[i] < '0' || l[i] > '9') {
                        why_set(why, whylen, "bad status code");
                        return -EBADMSG;
                }
                status = status * 10 + (l[i] - '0');
        }
        if (status < 100 || status > 599) {
                why_set(why, whylen, "status code %d out of range", status);
                return -EBADMSG;
        }
        if (n > 12 && l[12] != ' ') {
                why_set(why, whylen, "bad status code");
                return -EBADMSG;
        }
        const char *reason = n > 13 ? l + 13 : "";
        size_t rlen = n > 13 ? n - 13 : 0;
        for (size_t i = 0; i < rlen; i++)
                if (!is_field_char((unsigned char) reason[i])) {
                        why_set(why, whylen, "control character in the reason phrase");
                        return -EBADMSG;
                }
        r->status = status;
        size_t c = MIN(rlen, sizeof(r->reason) - 1);
        memcpy(r->reason, reason, c);
        r->reason[c] = '\0';
        return 0;
}

typedef struct HeaderState {
        bool have_length;
        uint64_t length; /* UINT64_MAX: too large to represent */
        bool conn_close, conn_keep_alive;
} HeaderState;

static int parse_content_length(const char *v, size_t n, HeaderState *h, char *why, size_t whylen) {
        if (n == 0) {
                why_set(why, whylen, "empty Content-Length");
                return -EBADMSG;
        }
        uint64_t x = 0;
        for (size_t i = 0; i < n; i++) {
                if (v[i] < '0' || v[i] > '9') {
                        why_set(why, whylen, "Content-Length is not a number");
                        return -EBADMSG;
                }
                unsigned d = (unsigned) (v[i] - '0');
                x = x > (UINT64_MAX - 1 - d) / 10 ? UINT64_MAX : x * 10 + d; /* saturate: "too big" */
        }
        if (h->have_length && h->length != x) {
                why_set(why, whylen, "conflicting Content-Length headers");
                return -EBADMSG;
        }
        h->have_length = true;
        h->length = x;
        return 0;
}

static void parse_connection(const char *v, size_t n, HeaderState *h) {
        size_t i = 0;
        while (i < n) {
                size_t j = i;
                while (j < n && v[j] != ',')
                        j++;
                size_t a = i, b = j;
                while (a < b && is_ows(v[a]))
                        a++;
                while (b > a && is_ows(v[b - 1]))
                        b--;
                if (token_eq(v + a, b - a, "close"))
                        h->conn_close = true;
                else if (token_eq(v + a, b - a, "keep-alive"))
                        h->conn_keep_alive = true;
                i = j + 1;
        }
}

static int parse_header(const char *l, size_t n, Http1Response *r, HeaderState *h, char *why, size_t whylen) {
        if (is_ows(l[0])) {
                why_set(why, whylen, "obsolete header line folding");
                return -EBADMSG;
        }
        size_t k = 0;
        while (k < n && is_tchar((unsigned char) l[k]))
                k++;
        if (k == 0 || k == n || l[k] != ':') {
                why_set(why, whylen, "bad header line");
                return -EBADMSG;
        }
        const char *name = l;
        size_t name_len = k;
        const char *v = l + k + 1;
        size_t vn = n - k - 1;
        for (size_t i = 0; i < vn; i++)
                if (!is_field_char((unsigned char) v[i])) {
                        why_set(why, whylen, "control character in a header value");
                        return -EBADMSG;
                }
        while (vn > 0 && is_ows(v[0]))
                v++, vn--;
        while (vn > 0 && is_ows(v[vn - 1]))
                vn--;

        if (token_eq(name, name_len, "Content-Length"))
                return parse_content_length(v, vn, h, why, whylen);
        if (token_eq(name, name_len, "Transfer-Encoding")) {
                if (token_eq(v, vn, "identity"))
                        return 0;
                why_set(why, whylen, "Transfer-Encoding '%.*s' is not supported", (int) MIN(vn, (size_t) 40), v);
                return -EPROTONOSUPPORT;
        }
        if (token_eq(name, name_len, "Connection")) {
                parse_connection(v, vn, h);
                return 0;
        }
        if (token_eq(name, name_len, "Content-Type")) {
                size_t c = MIN(vn, sizeof(r->content_type) - 1);
                memcpy(r->content_type, v, c);
                r->content_type[c] = '\0';
        }
        return 0;
}

int http1_parse_response_ex(const char *buf, size_t len, size_t max_body, Http1Response *ret, char *why,
                            size_t whylen) {
        static const char proto[] = "HTTP/1.";
        Http1Response r = { 0 };
        HeaderState h = { 0 };
        bool http10 = false;
        int k;

        if (len == 0)
                return 0;
        /* Refuse what cannot become a response at once, without waiting for a full line. */
        if (memcmp(buf, proto, MIN(len, sizeof(proto) - 1)) != 0) {
                why_set(why, whylen, "does not start with \"HTTP/1.\"");
                return -EBADMSG;
        }

        size_t limit = MIN(len, HTTP1_HEADERS_MAX), off = 0;
        for (unsigned line = 0;; line++) {
                const char *nl = memchr(buf + off, '\n', limit - off);
                if (!nl) {
                        if (len >= HTTP1_HEADERS_MAX) {
                                why_set(why, whylen, "status line and headers exceed %zu bytes", HTTP1_HEADERS_MAX);
                                return -EMSGSIZE;
                        }
                        return 0;
                }
                size_t end = (size_t) (nl - buf);
                if (end == off || buf[end - 1] != '\r') {
                        why_set(why, whylen, "line not terminated by CRLF");
                        return -EBADMSG;
                }
                const char *l = buf + off;
                size_t n = end - 1 - off;
                off = end + 1;
                if (memchr(l, '\r', n)) {
                        why_set(why, whylen, "stray CR");
                        return -EBADMSG;
                }
                if (line == 0)
                        k = parse_status_line(l, n, &r, &http10, why, whylen);
                else if (n == 0)
                        break;
                else
                        k = parse_header(l, n, &r, &h, why, whylen);
                if (k < 0)
                        return k;
        }

        r.header_len = off;
        r.keep_alive = http10 ? h.conn_keep_alive && !h.conn_close : !h.conn_close;
        if (r.status < 200 || r.status == 204) {
                /* RFC 9110: never a body, and a server must not send Content-Length here. */
                if (h.have_length && h.length != 0) {
                        why_set(why, whylen, "Content-Length on a %d response", r.status);
                        return -EBADMSG;
                }
        } else if (r.status != 304 && h.have_length) {
                /* No Content-Length means no body: micro-http omits it exactly then (bodies that run
                 * until the connection closes are not supported). */
                size_t cap = MIN(max_body, HTTP1_BODY_HARD_MAX);
                if (h.length > cap) {
                        if (h.length == UINT64_MAX)
                                why_set(why, whylen, "Content-Length too large (limit %zu bytes)", cap);
                        else
                                why_set(why, whylen, "body of %" PRIu64 " bytes exceeds the limit of %zu bytes",
                                        h.length, cap);
                        return -EMSGSIZE;
                }
                r.body_len = (size_t) h.length;
        }
        if (len - off < r.body_len)
                return 0;
        r.body = buf + off;
        *ret = r;
        return (int) (off + r.body_len);
}

int http1_parse_response(const char *buf, size_t len, size_t max_body, Http1Response *ret) {
        return http1_parse_response_ex(buf, len, max_body, ret, NULL, 0);
}

/* --- request formatter --- */

/* Checks "Name: value\r\n" lines; reports whether Accept / Content-Type are among them. */
static int check_extra_headers(const char *s, bool *has_accept, bool *has_type) {
        while (*s) {
                const char *eol = strstr(s, "\r\n");
                if (!eol)
                        return -EINVAL;
                size_t n = (size_t) (eol - s), k = 0;
                while (k < n && is_tchar((unsigned char) s[k]))
                        k++;
                if (k == 0 || k == n || s[k] != ':')
                        return -EINVAL;
                for (size_t i = k + 1; i < n; i++)
                        if (!is_field_char((unsigned char) s[i]))
                                return -EINVAL;
                if (token_eq(s, k, "Host") || token_eq(s, k, "Content-Length") || token_eq(s, k, "Transfer-Encoding"))
                        return -EINVAL;
                if (token_eq(s, k, "Accept"))
                        *has_accept = true;
                if (token_eq(s, k, "Content-Type"))
                        *has_type = true;
                s = eol + 2;
        }
        return 0;
}

int http1_format_request(const char *method, const char *path, const char *extra_headers, const char *body,
                         size_t body_len, char **ret) {
        size_t ml = method ? strlen(method) : 0, pl = path ? strlen(path) : 0;
        bool has_accept = false, has_type = false;

        if (ml == 0 || ml > 16 || pl == 0 || pl > 8192 || path[0] != '/' || (body_len > 0 && !body))
                return -EINVAL;
        for (size_t i = 0; i < ml; i++)
                if (method[i] < 'A' || method[i] > 'Z')
                        return -EINVAL;
        for (size_t i = 0; i < pl; i++)
                if ((unsigned char) path[i] <= 0x20 || (unsigned char) path[i] >= 0x7f)
                        return -EINVAL;
        if (extra_headers && check_extra_headers(extra_headers, &has_accept, &has_type) < 0)
                return -EINVAL;
        if (body_len > HTTP1_BODY_HARD_MAX - 8192)
                return -EMSGSIZE;

        bool with_length = body_len > 0 || strcmp(method, "PUT") == 0 || strcmp(method, "PATCH") == 0 ||
                           strcmp(method, "POST") == 0;
        char length[64] = "";
        if (with_length)
                snprintf(length, sizeof(length), "Content-Length: %zu\r\n", body_len);
        /* Header order as Firecracker's own examples show it (docs/drivers.md). */
        _cleanup_free_ char *head = NULL;
        int hl = asprintf(&head, "%s %s HTTP/1.1\r\nHost: localhost\r\n%s%s%s%s\r\n", method, path,
                          has_accept ? "" : "Accept: application/json\r\n",
                          body_len > 0 && !has_type ? "Content-Type: application/json\r\n" : "", length,
                          extra_headers ?: "");
        if (hl < 0)
                return -ENOMEM;
        char *out = malloc((size_t) hl + body_len + 1);
        if (!out)
                return -ENOMEM;
        memcpy(out, head, (size_t) hl);
        if (body_len > 0)
                memcpy(out + hl, body, body_len);
        out[(size_t) hl + body_len] = '\0';
        *ret = out;
        return (int) ((size_t) hl + body_len);
}

const char *http1_format_timeout(char *buf, size_t len, usec_t t) {
        if (t == USEC_INFINITY)
                snprintf(buf, len, "infinity");
        else if (t % USEC_PER_SEC == 0)
                snprintf(buf, len, "%" PRIu64 "s", t / USEC_PER_SEC);
        else if (t >= USEC_PER_SEC)
                snprintf(buf, len, "%.3gs", (double) t / (double) USEC_PER_SEC);
        else if (t % USEC_PER_MSEC == 0)
                snprintf(buf, len, "%" PRIu64 "ms", t / USEC_PER_MSEC);
        else
                snprintf(buf, len, "%" PRIu64 "us", t);
        return buf;
}

/* --- blocking round trip --- */

static void err_set(char *err, size_t errlen, const char *fmt, ...) _printf_(3, 4);
static void err_set(char *err, size_t errlen, const char *fmt, ...) {
        if (!err || errlen == 0)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
}

/* Waits for events on fd until deadline: 1 ready, 0 timed out, negative errno. */
static int wait_fd(int fd, short events, usec_t deadline) {
        for (;;) {
                struct pollfd p = { .fd = fd, .events = events };
                int r = poll(&p, 1, usec_to_poll_timeout(deadline, now_mono()));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r < 0)
                        return negative_errno();
                if (r == 0 && now_mono() < deadline)
                        continue; /* woke early by rounding */
                return r;
        }
}

/* The parse errors as the caller reads them. */
static void describe_parse_error(int r, const char *why, char *err, size_t errlen) {
        if (r == -EMSGSIZE)
                err_set(err, errlen, "response too large: %s", why);
        else if (r == -EPROTONOSUPPORT)
                err_set(err, errlen, "unsupported response: %s", why);
        else
                err_set(err, errlen, "malformed response: %s", why);
}

/* The blocking round trip's connection: where, until when, and what went wrong on the way. */
typedef struct Roundtrip {
        int fd;
        const char *socket_path;
        usec_t deadline, timeout;
        int write_error; /* a send that failed: reported only if no usable response arrives */
        char *err;
        size_t errlen;
} Roundtrip;

/* Waits until fd is ready for events; 0 when ready, else a negative errno with err (doing: what
 * was being done, for the timeout's message). */
static int rt_wait(Roundtrip *t, short events, const char *doing) {
        int r = wait_fd(t->fd, events, t->deadline);
        if (r < 0) {
                err_set(t->err, t->errlen, "poll %s: %s", t->socket_path, strerror(-r));
                return r;
        }
        if (r == 0) {
                char d[32];
                err_set(t->err, t->errlen, "timed out after %s %s", http1_format_timeout(d, sizeof(d), t->timeout),
                        doing);
                return -ETIMEDOUT;
        }
        return 0;
}

/* Sends everything. A peer that answers early and closes (a refusal) may still have left a
 * response to read: on EPIPE/ECONNRESET this records the error and returns 0, to go on reading. */
static int rt_send(Roundtrip *t, const char *req, size_t len) {
        size_t off = 0;
        while (off < len) {
                ssize_t n = send(t->fd, req + off, len - off, MSG_NOSIGNAL);
                if (n >= 0) {
                        off += (size_t) n;
                        continue;
                }
                if (errno == EINTR)
                        continue;
                if (errno != EAGAIN) {
                        t->write_error = negative_errno();
                        return 0;
                }
                int r = rt_wait(t, POLLOUT, "sending the request");
                if (r < 0)
                        return r;
        }
        return 0;
}

/* Looks for the final response in buf[0…*len): interim (1xx) responses are dropped from the front.
 * Returns the response's length (> 0), 0 when more bytes are needed, or a negative errno. */
static int rt_parse(Roundtrip *t, char *buf, size_t *len, size_t max_body, unsigned *interim, Http1Response *resp) {
        char why[160] = "";
        while (*len > 0) {
                int r = http1_parse_response_ex(buf, *len, max_body, resp, why, sizeof(why));
                if (r < 0) {
                        describe_parse_error(r, why, t->err, t->errlen);
                        return r;
                }
                if (r == 0 || resp->status >= 200)
                        return r;
                /* An interim response (100 Continue): the real one follows. */
                if (++*interim > HTTP1_INTERIM_MAX) {
                        err_set(t->err, t->errlen, "malformed response: more than %d interim (1xx) responses",
                                HTTP1_INTERIM_MAX);
                        return -EBADMSG;
                }
                memmove(buf, buf + r, *len - (size_t) r);
                *len -= (size_t) r;
        }
        return 0;
}

/* The end of the stream (n == 0) or a read error before the response was complete. */
static int rt_cut(Roundtrip *t, ssize_t n, size_t len) {
        if (n < 0 && t->write_error == 0)
                t->write_error = negative_errno();
        if (t->write_error != 0 && len == 0) {
                err_set(t->err, t->errlen, "send to %s: %s", t->socket_path, strerror(-t->write_error));
                return t->write_error;
        }
        if (n < 0)
                err_set(t->err, t->errlen, "read from %s: %s", t->socket_path, strerror(errno));
        else
                err_set(t->err, t->errlen,
                        "connection closed by %s before the response was complete (%zu bytes received)", t->socket_path,
                        len);
        return -ECONNRESET;
}

/* Reads until the final response is whole. */
static int rt_receive(Roundtrip *t, size_t max_body, Http1Response *ret_resp, char **ret_buf) {
        _cleanup_free_ char *buf = NULL;
        size_t cap = MIN(max_body, HTTP1_BODY_HARD_MAX) + HTTP1_HEADERS_MAX, len = 0, alloc = 0;
        unsigned interim = 0;
        for (;;) {
                Http1Response resp;
                int r = rt_parse(t, buf, &len, max_body, &interim, &resp);
                if (r < 0)
                        return r;
                if (r > 0) {
                        buf[r] = '\0'; /* anything after the response is dropped */
                        resp.body = buf + resp.header_len;
                        *ret_resp = resp;
                        *ret_buf = TAKE_PTR(buf);
                        return 0;
                }
                if (len == alloc) {
                        if (alloc >= cap) { /* the parser bounds this first; belt and braces */
                                err_set(t->err, t->errlen, "response too large: over %zu bytes", cap);
                                return -EMSGSIZE;
                        }
                        size_t na = MIN(MAX(alloc * 2, (size_t) 4096), cap);
                        char *nb = realloc(buf, na + 1);
                        if (!nb) {
                                err_set(t->err, t->errlen, "out of memory");
                                return -ENOMEM;
                        }
                        buf = nb;
                        alloc = na;
                }
                ssize_t n = recv(t->fd, buf + len, alloc - len, 0);
                if (n > 0) {
                        len += (size_t) n;
                        continue;
                }
                if (n == 0 || (errno != EINTR && errno != EAGAIN))
                        return rt_cut(t, n, len);
                if (errno == EINTR)
                        continue;
                r = rt_wait(t, POLLIN, "waiting for the response");
                if (r < 0)
                        return r;
        }
}

int http1_roundtrip_unix(const char *socket_path, const char *method, const char *path, const char *extra_headers,
                         const char *body, size_t body_len, usec_t timeout, size_t max_body, Http1Response *ret_resp,
                         char **ret_buf, char *err, size_t errlen) {
        _cleanup_free_ char *req = NULL;
        _cleanup_close_ int fd = -EBADF;
        usec_t deadline = usec_add(now_mono(), timeout);

        if (err && errlen > 0)
                err[0] = '\0';
        int req_len = http1_format_request(method, path, extra_headers, body, body_len, &req);
        if (req_len < 0) {
                err_set(err, errlen, "cannot format the request %s %s: %s", method ?: "(null)", path ?: "(null)",
                        strerror(-req_len));
                return req_len;
        }

        char cerr[256];
        fd = usock_connect(socket_path, cerr, sizeof(cerr));
        if (fd < 0) {
                if (fd == -ENAMETOOLONG)
                        err_set(err, errlen, "%s", cerr);
                else
                        err_set(err, errlen, "connect %s: %s", socket_path, strerror(-fd));
                return fd;
        }
        Roundtrip t = { .fd = fd,
                        .socket_path = socket_path,
                        .deadline = deadline,
                        .timeout = timeout,
                        .err = err,
                        .errlen = errlen };
        int r = rt_send(&t, req, (size_t) req_len);
        if (r < 0)
                return r;
        return rt_receive(&t, max_body, ret_resp, ret_buf);
}

/* --- asynchronous client --- */

typedef struct Http1Req Http1Req;

struct Http1Req {
        Http1Client *client;
        char *data;
        size_t len;
        char label[96]; /* "GET /balloon" for messages */
        usec_t timeout;
        EvTimer *timer; /* the deadline */
        http1_response_cb cb;
        void *userdata;
        bool sent;
        unsigned interim; /* 1xx responses read for it */
        bool on_reused;   /* sent on a connection that had already carried a response */
        bool resent;
        Http1Req *next;
};

struct Http1Client {
        Ev *ev;
        char *path;
        uid_t expected_uid;
        size_t max_body;

        Conn *conn;
        pid_t peer_pid;
        unsigned conn_responses; /* responses completed on the current connection */
        bool got_bytes;          /* some of the current response has arrived */

        Http1Req *head; /* FIFO; only the head may be on the wire */
        EvTimer *kick;  /* starts the head from the loop */
        uint64_t old_conn_yields;

        unsigned busy;
        bool dead;
        Http1ClientCounters counters;
};

static void client_free_now(Http1Client *c);

static void client_enter(Http1Client *c) {
        c->busy++;
}

static void client_leave(Http1Client *c) {
        if (--c->busy == 0 && c->dead)
                client_free_now(c);
}

static void client_kick(Http1Client *c) {
        if (c->head && !c->head->sent)
                ev_timer_set(c->kick, 0);
}

static void req_unlink(Http1Req *q) {
        for (Http1Req **p = &q->client->head; *p; p = &(*p)->next)
                if (*p == q) {
                        *p = q->next;
                        return;
                }
}

static void req_free(Http1Req *q) {
        req_unlink(q);
        ev_timer_free(q->timer);
        free(q->data);
        free(q);
}

/* Removes the request and calls it back (unless cancelled). The caller checks c->dead after. */
static void req_complete(Http1Req *q, int error, const Http1Response *resp, const char *msg) {
        http1_response_cb cb = q->cb;
        void *ud = q->userdata;
        Http1Client *c = q->client;
        req_free(q);
        if (cb && !c->dead)
                cb(c, error, resp, msg, ud);
}

static void req_fail(Http1Req *q, int error, const char *fmt, ...) _printf_(3, 4);
static void req_fail(Http1Req *q, int error, const char *fmt, ...) {
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        req_complete(q, error, NULL, msg);
}

/* Closes the connection. The request on the wire fails with error, except one sent on a reused
 * keep-alive connection that the peer closed before answering: that one is put back, once, to be
 * sent again on the next connection. */
static void client_close(Http1Client *c, int error, const char *why) {
        if (c->conn)
                c->old_conn_yields += conn_yields(c->conn);
        c->conn = conn_free(c->conn);
        c->conn_responses = 0;
        bool got = c->got_bytes;
        c->got_bytes = false;

        Http1Req *q = c->head;
        if (q && q->sent) {
                q->sent = false;
                if (!q->cb)
                        req_free(q); /* cancelled: nobody to tell */
                else if (error == -ECONNRESET && !got && q->on_reused && !q->resent) {
                        /* The peer closed an idle keep-alive connection as we reused it. */
                        q->resent = true;
                        c->counters.resends++;
                } else
                        req_fail(q, error, "%s on %s: %s", q->label, c->path, why);
        }
        if (!c->dead)
                client_kick(c);
}

static ssize_t client_on_data(Conn *conn, const char *buf, size_t len, void *userdata) {
        Http1Client *c = userdata;
        size_t off = 0;
        (void) conn;

        client_enter(c);
        while (off < len && !c->dead && c->conn) {
                Http1Req *q = c->head;
                if (!q || !q->sent) {
                        c->counters.protocol_errors++;
                        client_close(c, -EBADMSG, "unsolicited bytes");
                        break;
                }
                c->got_bytes = true;
                Http1Response resp;
                char why[160] = "";
                int r = http1_parse_response_ex(buf + off, len - off, c->max_body, &resp, why, sizeof(why));
                if (r == 0)
                        break;
                if (r < 0) {
                        char msg[200];
                        describe_parse_error(r, why, msg, sizeof(msg));
                        c->counters.protocol_errors++;
                        client_close(c, r, msg);
                        break;
                }
                off += (size_t) r;
                if (resp.status < 200) {
                        /* Interim (100 Continue): the response follows. A peer that sends only
                         * these would hold the request until its deadline. */
                        c->counters.interim_responses++;
                        if (++q->interim > HTTP1_INTERIM_MAX) {
                                char msg[96];
                                snprintf(msg, sizeof(msg), "malformed response: more than %d interim (1xx) responses",
                                         HTTP1_INTERIM_MAX);
                                c->counters.protocol_errors++;
                                client_close(c, -EBADMSG, msg);
                                break;
                        }
                        continue;
                }

                c->counters.responses++;
                c->conn_responses++;
                c->got_bytes = false;
                bool close_after = !resp.keep_alive;
                if (resp.status >= 400 && resp.body_len > 0) {
                        json_t *j = json_loadb(resp.body, resp.body_len, JSON_DECODE_ANY, NULL);
                        close_after = close_after || !j;
                        json_decref(j);
                }
                if (off < len) {
                        /* Bytes after the response that nobody asked for: the stream cannot be
                         * trusted any more. Deliver this response, then drop the connection. */
                        c->counters.protocol_errors++;
                        close_after = true;
                }
                req_complete(q, 0, &resp, NULL);
                if (c->dead)
                        break;
                if (close_after && c->conn)
                        client_close(c, -ECONNRESET, "connection closed after the response");
                client_kick(c);
                if (off < len)
                        break;
        }
        client_leave(c);
        return (ssize_t) off;
}

static void client_on_close(Conn *conn, int error, const char *msg, void *userdata) {
        Http1Client *c = userdata;
        (void) conn;
        char why[256];
        client_enter(c);
        if (error == -EMSGSIZE)
                snprintf(why, sizeof(why), "response too large: over %zu bytes", c->max_body + HTTP1_HEADERS_MAX);
        else if (error == 0)
                snprintf(why, sizeof(why), "connection closed by peer before the response was complete");
        else
                snprintf(why, sizeof(why), "%s", msg);
        client_close(c, error == 0 ? -ECONNRESET : error, why);
        client_leave(c);
}

static int client_attach(Http1Client *c, int fd) {
        static const ConnCallbacks cbs = { .on_data = client_on_data, .on_close = client_on_close };
        int r = conn_new(c->ev, fd, c->max_body + HTTP1_HEADERS_MAX, &cbs, c, &c->conn);
        if (r < 0)
                return r;
        c->conn_responses = 0;
        c->got_bytes = false;
        c->counters.connects++;
        return 0;
}

static int client_connect(Http1Client *c, char *err, size_t errlen) {
        char cerr[256];
        int fd = usock_connect(c->path, cerr, sizeof(cerr));
        if (fd < 0) {
                if (fd == -ENAMETOOLONG)
                        snprintf(err, errlen, "%s", cerr);
                else
                        snprintf(err, errlen, "connect %s: %s", c->path, strerror(-fd));
                return fd;
        }
        /* B1.2: nothing is written before the peer is known to be the hypervisor's uid. */
        pid_t pid = 0;
        int r = usock_check_peer(fd, c->expected_uid, &pid, NULL, cerr, sizeof(cerr));
        if (r < 0) {
                safe_close(fd);
                snprintf(err, errlen, "%s: %s", c->path, cerr);
                return r;
        }
        r = client_attach(c, fd);
        if (r < 0) {
                snprintf(err, errlen, "cannot watch %s: %s", c->path, strerror(-r));
                return r;
        }
        c->peer_pid = pid;
        return 0;
}

int http1_client_attach_fd(Http1Client *c, int fd) {
        if (c->conn)
                http1_client_disconnect(c);
        return client_attach(c, fd);
}

int http1_client_inject(Http1Client *c, const void *buf, size_t len) {
        if (!c->conn)
                return -ENOTCONN;
        client_enter(c);
        int r = conn_inject(c->conn, buf, len);
        client_leave(c);
        return r < 0 ? -ENOTCONN : 0;
}

/* Puts the head on the wire, connecting first if needed. */
static void client_pump(Http1Client *c) {
        while (!c->dead && c->head && !c->head->sent) {
                Http1Req *q = c->head;
                if (!q->cb) {
                        req_free(q);
                        continue;
                }
                if (!c->conn) {
                        char err[400];
                        int r = client_connect(c, err, sizeof(err));
                        if (r < 0) {
                                req_fail(q, r, "%s: %s", q->label, err);
                                continue;
                        }
                }
                q->on_reused = c->conn_responses > 0;
                int r = conn_write(c->conn, q->data, q->len);
                if (r < 0) {
                        q->sent = true; /* so that client_close fails it */
                        client_close(c, r, "cannot write the request");
                        continue;
                }
                q->sent = true;
                c->counters.requests++;
                return;
        }
}

static void client_on_kick(EvTimer *t, void *userdata) {
        Http1Client *c = userdata;
        ev_timer_set(t, USEC_INFINITY);
        client_enter(c);
        client_pump(c);
        client_leave(c);
}

static void client_on_deadline(EvTimer *t, void *userdata) {
        Http1Req *q = userdata;
        Http1Client *c = q->client;
        char d[32];
        (void) t;

        client_enter(c);
        c->counters.timeouts++;
        http1_format_timeout(d, sizeof(d), q->timeout);
        if (q->sent) {
                /* HTTP/1.1 cannot tell a late response from the next one's: drop the connection. */
                char why[96];
                snprintf(why, sizeof(why), "timed out after %s waiting for the response", d);
                client_close(c, -ETIMEDOUT, why); /* fails q, or frees it when cancelled */
        } else
                req_fail(q, -ETIMEDOUT, "%s on %s: timed out after %s before it could be sent%s", q->label, c->path, d,
                         c->head == q ? "" : " (queued behind other requests)");
        if (!c->dead)
                client_kick(c);
        client_leave(c);
}

int http1_client_request(Http1Client *c, const char *method, const char *path, const char *body, size_t body_len,
                         usec_t timeout, http1_response_cb cb, void *userdata) {
        Http1Req *q = calloc(1, sizeof(Http1Req));
        if (!q)
                return -ENOMEM;
        int n = http1_format_request(method, path, NULL, body, body_len, &q->data);
        if (n < 0) {
                free(q);
                return n;
        }
        q->len = (size_t) n;
        q->client = c;
        q->cb = cb;
        q->userdata = userdata;
        q->timeout = timeout;
        snprintf(q->label, sizeof(q->label), "%s %.*s", method, 80, path);
        int r = ev_timer_add(c->ev, usec_add(now_mono(), timeout), client_on_deadline, q, &q->timer);
        if (r < 0) {
                free(q->data);
                free(q);
                return r;
        }
        Http1Req **p = &c->head;
        while (*p)
                p = &(*p)->next;
        *p = q;
        client_kick(c);
        return 0;
}

void http1_client_cancel(Http1Client *c, void *userdata) {
        for (Http1Req *q = c->head, *n; q; q = n) {
                n = q->next;
                if (q->userdata != userdata)
                        continue;
                if (q->sent)
                        q->cb = NULL; /* its response must still be read off the wire */
                else
                        req_free(q);
        }
}

void http1_client_disconnect(Http1Client *c) {
        if (!c->conn)
                return;
        client_enter(c);
        client_close(c, -ECONNRESET, "connection closed by the client");
        client_leave(c);
}

void http1_client_counters(const Http1Client *c, Http1ClientCounters *ret) {
        *ret = c->counters;
        ret->read_yields = c->old_conn_yields + (c->conn ? conn_yields(c->conn) : 0);
}

const char *http1_client_socket_path(const Http1Client *c) {
        return c->path;
}

bool http1_client_is_connected(const Http1Client *c) {
        return c->conn != NULL;
}

pid_t http1_client_peer_pid(const Http1Client *c) {
        return c->peer_pid;
}

int http1_client_new(Ev *ev, const Http1ClientConfig *cfg, Http1Client **ret) {
        if (!cfg->socket_path)
                return -EINVAL;
        Http1Client *c = calloc(1, sizeof(Http1Client));
        if (!c)
                return -ENOMEM;
        c->ev = ev;
        c->expected_uid = cfg->expected_uid;
        c->max_body = MIN(cfg->max_body ?: HTTP1_BODY_DEFAULT, HTTP1_BODY_HARD_MAX);
        c->path = strdup(cfg->socket_path);
        int r = c->path ? ev_timer_add(ev, USEC_INFINITY, client_on_kick, c, &c->kick) : -ENOMEM;
        if (r < 0) {
                client_free_now(c);
                return r;
        }
        *ret = c;
        return 0;
}

static void client_free_now(Http1Client *c) {
        while (c->head)
                req_free(c->head);
        conn_free(c->conn);
        ev_timer_free(c->kick);
        free(c->path);
        free(c);
}

Http1Client *http1_client_free(Http1Client *c) {
        if (!c)
                return NULL;
        c->dead = true;
        if (c->busy == 0)
                client_free_now(c);
        return NULL;
}
