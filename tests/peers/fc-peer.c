/* SPDX-License-Identifier: MIT */
/* A protocol-faithful fake Firecracker API server for tests, after Firecracker's API (docs/drivers.md): the
 * micro-http framing (status line without a reason phrase but with its space, header order, no
 * Content-Length on 204, HTTP-layer errors with a raw newline in their body), the balloon
 * endpoints with their pre-boot and post-boot rules and fault_message texts, deny_unknown_fields
 * bodies, the "Device not activated yet." window after boot, and a simulated guest whose balloon
 * moves toward the target in 1 MiB steps at a configurable pace.
 *
 *   fc-peer PATH [--mem-mib N] [--pace-mib-per-s N] [--floor-mib N] [--stats-interval S]
 *                [--deflate-on-oom] [--no-balloon] [--not-started] [--activate-ms N] [--no-driver]
 *                [--vmm-version V] [--hang|--garbage|--close-mid-reply|--oversized|
 *                 --flood-continue|--flood-headers|--flood-chunked] [--fault-path PATH] [--ready-fd FD]
 *
 * --pace-mib-per-s 0: the guest never moves. --floor-mib: the guest cannot give up memory below
 * that many MiB (its working set), so inflation stalls there. --stats-interval: the balloon's
 * stats_polling_interval_s at boot (default 1; 0 disables statistics for good). --not-started:
 * "Not started" until PUT /actions {"action_type":"InstanceStart"}, balloon configured by
 * PUT /balloon. --activate-ms: how long after boot the guest driver takes to come up (PATCH
 * /balloon answers "Device not activated yet." meanwhile); --no-driver: never.
 * Faults, on every request or only on those for --fault-path: --hang reads and never answers
 * (that connection only), --garbage answers with bytes that are not HTTP, --close-mid-reply
 * writes half of the real answer and closes, --oversized promises a 100 MB body and streams it.
 * Floods (a hypervisor that misbehaves on purpose, 100 MB each, as fast as the client reads):
 * --flood-continue answers with an endless stream of interim "HTTP/1.1 100 " responses,
 * --flood-headers with a status line and endless header lines, --flood-chunked with a chunked
 * body of endless 16-byte chunks.
 *
 * Serves up to 16 connections at once, single-threaded. Runs until SIGTERM/SIGINT.
 *
 * The micro-http layer (mh_*) is shared with tests/peers/chv-peer.c, which includes this file
 * with FC_PEER_NO_MAIN, as Cloud Hypervisor shares micro-http with Firecracker. The unit tests
 * include the peers the same way and run fc_peer_serve() / chv_peer_serve() in a child. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/time-util.h"
#include "shared/unix-sock.h"

/* --- micro-http --- */

#define MH_CLIENTS_MAX  16
#define MH_HEADERS_MAX  ((size_t) 8192)
#define MH_LINE_MAX     1024
#define MH_FLOOD_BYTES  ((uint64_t) 100 << 20)
#define MH_GARBAGE      "\x16\x03\x01\x02\x00 this is not HTTP }{\r\n\r\n"
#define MH_DROPPED_NOTE "\nAll previous unanswered requests will be dropped."

typedef enum PeerFault {
        PEER_FAULT_NONE,
        PEER_FAULT_HANG,
        PEER_FAULT_GARBAGE,
        PEER_FAULT_CLOSE_MID_REPLY,
        PEER_FAULT_OVERSIZED,
        PEER_FAULT_FLOOD_CONTINUE,
        PEER_FAULT_FLOOD_HEADERS,
        PEER_FAULT_FLOOD_CHUNKED,
} PeerFault;

typedef struct MhRequest {
        char method[16];
        char path[MH_LINE_MAX];
        const char *body;
        size_t body_len;
} MhRequest;

typedef struct MhClient {
        int fd;
        char *in;
        size_t in_len;
        char *out;
        size_t out_len, out_alloc;
        bool hung;
        bool close_after_flush;
        uint64_t flood_left;
        const char *flood_unit; /* repeated while flood_left > 0; NULL: spaces (a body) */
} MhClient;

typedef struct MhServer MhServer;
struct MhServer {
        const char *server_name; /* "Firecracker API" */
        size_t max_payload;      /* request bodies */
        PeerFault fault;
        const char *fault_path;
        void (*on_request)(MhServer *s, MhClient *c, const MhRequest *r);
        void (*tick)(MhServer *s, usec_t now);
        usec_t (*next_wakeup)(MhServer *s);
        void *userdata;

        int lfd;
        MhClient clients[MH_CLIENTS_MAX];
        uint64_t requests;
};

static volatile sig_atomic_t peer_stop;

static void mh_out(MhClient *c, const char *s, size_t n) {
        if (c->out_len + n > c->out_alloc) {
                size_t a = MAX(c->out_alloc * 2, c->out_len + n + 4096);
                char *b = realloc(c->out, a);
                if (!b)
                        abort();
                c->out = b;
                c->out_alloc = a;
        }
        memcpy(c->out + c->out_len, s, n);
        c->out_len += n;
}

/* A response as micro-http writes it: "HTTP/1.1 NNN " (no reason phrase), Server, Connection,
 * then Content-Type and Content-Length only when there is a body. */
static void mh_respond(MhServer *s, MhClient *c, int status, const char *body) {
        char h[256];
        int n = snprintf(h, sizeof(h), "HTTP/1.1 %d \r\nServer: %s\r\nConnection: keep-alive\r\n", status,
                         s->server_name);
        mh_out(c, h, (size_t) n);
        if (body) {
                n = snprintf(h, sizeof(h), "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                             strlen(body));
                mh_out(c, h, (size_t) n);
                mh_out(c, body, strlen(body));
        } else
                mh_out(c, "\r\n", 2);
}

static void mh_respondf(MhServer *s, MhClient *c, int status, const char *fmt, ...) _printf_(4, 5);
static void mh_respondf(MhServer *s, MhClient *c, int status, const char *fmt, ...) {
        char *b = NULL;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&b, fmt, ap) < 0)
                abort();
        va_end(ap);
        mh_respond(s, c, status, b);
        free(b);
}

/* micro-http's own parse errors: 400 with a body that is not valid JSON (a raw newline), and
 * every request still queued on the connection dropped. */
static void mh_http_error(MhServer *s, MhClient *c, const char *what) {
        mh_respondf(s, c, 400, "{ \"error\": \"%s" MH_DROPPED_NOTE "\" }", what);
        c->in_len = 0;
}

static bool mh_fault_applies(const MhServer *s, const MhRequest *r) {
        return s->fault != PEER_FAULT_NONE && (!s->fault_path || strcmp(s->fault_path, r->path) == 0);
}

static void mh_dispatch(MhServer *s, MhClient *c, const MhRequest *r) {
        s->requests++;
        if (!mh_fault_applies(s, r)) {
                s->on_request(s, c, r);
                return;
        }
        switch (s->fault) {
        case PEER_FAULT_HANG:
                c->hung = true; /* never another byte on this connection */
                break;
        case PEER_FAULT_GARBAGE:
                mh_out(c, MH_GARBAGE, sizeof(MH_GARBAGE) - 1);
                break;
        case PEER_FAULT_CLOSE_MID_REPLY: {
                size_t before = c->out_len;
                s->on_request(s, c, r);
                c->out_len = before + (c->out_len - before) / 2;
                c->close_after_flush = true;
                break;
        }
        case PEER_FAULT_OVERSIZED: {
                char h[256];
                int n = snprintf(h, sizeof(h),
                                 "HTTP/1.1 200 \r\nServer: %s\r\nConnection: keep-alive\r\nContent-Type: "
                                 "application/json\r\nContent-Length: %" PRIu64 "\r\n\r\n",
                                 s->server_name, MH_FLOOD_BYTES);
                mh_out(c, h, (size_t) n);
                c->flood_left = MH_FLOOD_BYTES;
                c->flood_unit = NULL;
                break;
        }
        case PEER_FAULT_FLOOD_CONTINUE:
                /* micro-http style interim responses, never the final one. */
                c->flood_unit = "HTTP/1.1 100 \r\n\r\n";
                c->flood_left = MH_FLOOD_BYTES;
                break;
        case PEER_FAULT_FLOOD_HEADERS: {
                char h[128];
                int n = snprintf(h, sizeof(h), "HTTP/1.1 200 \r\nServer: %s\r\n", s->server_name);
                mh_out(c, h, (size_t) n);
                c->flood_unit = "X-Flood: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
                c->flood_left = MH_FLOOD_BYTES;
                break;
        }
        case PEER_FAULT_FLOOD_CHUNKED: {
                char h[160];
                int n = snprintf(h, sizeof(h), "HTTP/1.1 200 \r\nServer: %s\r\nTransfer-Encoding: chunked\r\n\r\n",
                                 s->server_name);
                mh_out(c, h, (size_t) n);
                c->flood_unit = "10\r\n0123456789abcdef\r\n";
                c->flood_left = MH_FLOOD_BYTES;
                break;
        }
        case PEER_FAULT_NONE:
                break;
        }
}

/* Parses every complete request in the input buffer. */
static void mh_parse(MhServer *s, MhClient *c) {
        while (c->in_len > 0 && !c->hung && !c->close_after_flush) {
                char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
                if (!end) {
                        if (c->in_len > MH_HEADERS_MAX)
                                mh_http_error(s, c, "Invalid request: headers too long.");
                        return;
                }
                size_t hlen = (size_t) (end - c->in) + 4;
                char *eol = memmem(c->in, hlen, "\r\n", 2);
                size_t ll = (size_t) (eol - c->in);
                MhRequest r = { 0 };
                char line[MH_LINE_MAX + 1];
                if (ll > MH_LINE_MAX) {
                        mh_http_error(s, c, "Invalid request line: the request line is too long.");
                        return;
                }
                memcpy(line, c->in, ll);
                line[ll] = '\0';
                char *sp1 = strchr(line, ' '), *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
                if (!sp1 || !sp2 || (size_t) (sp1 - line) >= sizeof(r.method)) {
                        mh_http_error(s, c, "Invalid request line: missing space separators.");
                        return;
                }
                memcpy(r.method, line, (size_t) (sp1 - line));
                if (strcmp(sp2 + 1, "HTTP/1.1") != 0 && strcmp(sp2 + 1, "HTTP/1.0") != 0) {
                        mh_http_error(s, c, "Invalid HTTP Version: Unsupported HTTP version.");
                        return;
                }
                if (strcmp(r.method, "GET") != 0 && strcmp(r.method, "PUT") != 0 && strcmp(r.method, "PATCH") != 0 &&
                    strcmp(r.method, "DELETE") != 0) {
                        mh_http_error(s, c, "Invalid HTTP Method: Unsupported HTTP method.");
                        return;
                }
                *sp2 = '\0';
                const char *uri = sp1 + 1;
                if (strncmp(uri, "http://localhost", 16) == 0)
                        uri += 16;
                if (uri[0] != '/') {
                        mh_http_error(s, c, "Invalid URI.");
                        return;
                }
                snprintf(r.path, sizeof(r.path), "%s", uri);

                /* Headers: only Content-Length matters here. */
                uint64_t cl = 0;
                for (char *l = eol + 2; l < end;) {
                        char *e = memmem(l, (size_t) (end + 2 - l), "\r\n", 2);
                        if (strncasecmp(l, "Content-Length:", 15) == 0) {
                                char v[32];
                                size_t vn = MIN((size_t) (e - l - 15), sizeof(v) - 1);
                                memcpy(v, l + 15, vn);
                                v[vn] = '\0';
                                char *p = v;
                                while (*p == ' ')
                                        p++;
                                if (parse_u64(p, &cl) < 0 || cl > UINT32_MAX) {
                                        mh_http_error(s, c,
                                                      "Invalid header. Reason: Invalid value. Key: Content-Length");
                                        return;
                                }
                        }
                        l = e + 2;
                }
                if (cl > s->max_payload) {
                        char m[160];
                        snprintf(m, sizeof(m),
                                 "Request payload with size %" PRIu64
                                 " is larger than the limit of %zu allowed by server.",
                                 cl, s->max_payload);
                        mh_http_error(s, c, m);
                        return;
                }
                if (c->in_len < hlen + cl)
                        return; /* the body is still coming */
                r.body = c->in + hlen;
                r.body_len = (size_t) cl;
                mh_dispatch(s, c, &r);
                size_t used = hlen + (size_t) cl;
                if (c->in_len >= used) {
                        memmove(c->in, c->in + used, c->in_len - used);
                        c->in_len -= used;
                }
        }
}

static void mh_drop(MhClient *c) {
        c->fd = safe_close(c->fd);
        free(c->in);
        free(c->out);
        *c = (MhClient){ .fd = -1 };
}

static void mh_read(MhServer *s, MhClient *c) {
        for (;;) {
                size_t cap = MH_HEADERS_MAX + s->max_payload + 1;
                if (c->in_len == cap) { /* nobody sends that much in one request */
                        mh_http_error(s, c, "Invalid request: too long.");
                        return;
                }
                ssize_t n = read(c->fd, c->in + c->in_len, cap - c->in_len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                mh_drop(c);
                        return;
                }
                if (n == 0) {
                        mh_drop(c);
                        return;
                }
                if (c->hung)
                        continue; /* read and forget */
                c->in_len += (size_t) n;
                mh_parse(s, c);
                if (c->fd < 0)
                        return;
        }
}

static void mh_write(MhClient *c) {
        static char chunk[65536];
        if (c->flood_left > 0 && c->out_len < sizeof(chunk)) {
                size_t n = (size_t) MIN(c->flood_left, (uint64_t) sizeof(chunk));
                if (!c->flood_unit)
                        memset(chunk, ' ', n);
                else {
                        /* Whole units only, so that every unit reaches the client intact. */
                        size_t u = strlen(c->flood_unit), k = 0;
                        for (; k + u <= n; k += u)
                                memcpy(chunk + k, c->flood_unit, u);
                        n = k;
                }
                mh_out(c, chunk, n);
                c->flood_left = n > 0 ? c->flood_left - MIN(c->flood_left, (uint64_t) n) : 0;
        }
        while (c->out_len > 0) {
                ssize_t n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                mh_drop(c);
                        return;
                }
                memmove(c->out, c->out + n, c->out_len - (size_t) n);
                c->out_len -= (size_t) n;
        }
        if (c->close_after_flush && c->flood_left == 0)
                mh_drop(c);
}

static void mh_accept(MhServer *s) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
                return;
        for (size_t i = 0; i < MH_CLIENTS_MAX; i++)
                if (s->clients[i].fd < 0) {
                        s->clients[i] = (MhClient){ .fd = fd };
                        s->clients[i].in = malloc(MH_HEADERS_MAX + s->max_payload + 1);
                        if (!s->clients[i].in)
                                abort();
                        return;
                }
        close(fd); /* full, as micro-http refuses beyond its connection limit */
}

/* Listens on path (or takes over lfd >= 0) and serves until peer_stop. */
static int mh_serve(MhServer *s, const char *path, int lfd, int ready_fd) {
        char err[256];
        s->lfd = lfd;
        if (s->lfd < 0) {
                s->lfd = usock_listen(path, 0600, err, sizeof(err));
                if (s->lfd < 0) {
                        fprintf(stderr, "peer: %s\n", err);
                        return s->lfd;
                }
        }
        for (size_t i = 0; i < MH_CLIENTS_MAX; i++)
                s->clients[i] = (MhClient){ .fd = -1 };
        if (ready_fd >= 0) {
                (void) !write(ready_fd, "R", 1);
                close(ready_fd);
        }
        while (!peer_stop) {
                struct pollfd fds[MH_CLIENTS_MAX + 1];
                size_t map[MH_CLIENTS_MAX + 1];
                nfds_t n = 0;
                fds[n++] = (struct pollfd){ .fd = s->lfd, .events = POLLIN };
                for (size_t i = 0; i < MH_CLIENTS_MAX; i++) {
                        MhClient *c = &s->clients[i];
                        if (c->fd < 0)
                                continue;
                        map[n] = i;
                        fds[n++] = (struct pollfd){
                                .fd = c->fd,
                                .events = POLLIN | (c->out_len > 0 || c->flood_left > 0 ? POLLOUT : 0),
                        };
                }
                usec_t now = now_mono();
                int r = poll(fds, n, usec_to_poll_timeout(s->next_wakeup(s), now));
                if (r < 0 && errno != EINTR)
                        break;
                s->tick(s, now_mono());
                if (r <= 0)
                        continue;
                if (fds[0].revents & POLLIN)
                        mh_accept(s);
                for (nfds_t k = 1; k < n; k++) {
                        MhClient *c = &s->clients[map[k]];
                        if (c->fd < 0)
                                continue;
                        if (fds[k].revents & (POLLIN | POLLHUP | POLLERR))
                                mh_read(s, c);
                        if (c->fd >= 0 && (c->out_len > 0 || c->flood_left > 0 || c->close_after_flush))
                                mh_write(c);
                }
        }
        for (size_t i = 0; i < MH_CLIENTS_MAX; i++)
                if (s->clients[i].fd >= 0)
                        mh_drop(&s->clients[i]);
        if (path && lfd < 0)
                (void) unlink(path);
        safe_close(s->lfd);
        return 0;
}

/* --- serde-like request bodies --- */

typedef enum PeerFieldType {
        PEER_U16,
        PEER_U32,
        PEER_U64,
        PEER_BOOL,
        PEER_STRING,
} PeerFieldType;

typedef struct PeerField {
        const char *name;
        PeerFieldType type;
        bool required;
        bool seen;
        uint64_t u;
        bool b;
        char s[64];
} PeerField;

static const char *peer_type_name(PeerFieldType t) {
        switch (t) {
        case PEER_U16:
                return "u16";
        case PEER_U32:
                return "u32";
        case PEER_U64:
                return "u64";
        case PEER_BOOL:
                return "a boolean";
        case PEER_STRING:
                return "a string";
        }
        return "?";
}

/* serde's words for what it found instead. */
static void peer_unexpected(json_t *v, char *buf, size_t len) {
        if (json_is_string(v))
                snprintf(buf, len, "string \"%.40s\"", json_string_value(v));
        else if (json_is_integer(v))
                snprintf(buf, len, "integer `%lld`", (long long) json_integer_value(v));
        else if (json_is_real(v))
                snprintf(buf, len, "floating point `%g`", json_real_value(v));
        else if (json_is_boolean(v))
                snprintf(buf, len, "boolean `%s`", json_is_true(v) ? "true" : "false");
        else if (json_is_array(v))
                snprintf(buf, len, "sequence");
        else if (json_is_object(v))
                snprintf(buf, len, "map");
        else
                snprintf(buf, len, "null");
}

/* Deserializes a JSON object body into fields as serde does (with deny_unknown_fields when deny
 * is set; otherwise unknown keys are ignored). Returns 0, or -1 with serde's message (without the
 * caller's prefix) in msg. Columns are approximate: the end of the body. */
static int peer_deserialize(const MhRequest *r, const char *what, PeerField *f, size_t n, bool deny, char *msg,
                            size_t len) {
        json_error_t je;
        json_t *j = json_loadb(r->body, r->body_len, 0, &je);
        size_t col = r->body_len;
        if (!j) {
                snprintf(msg, len, "expected value at line %d column %d", MAX(je.line, 1), MAX(je.column, 1));
                return -1;
        }
        if (!json_is_object(j)) {
                char u[96];
                peer_unexpected(j, u, sizeof(u));
                snprintf(msg, len, "invalid type: %s, expected struct %s at line 1 column %zu", u, what, col);
                json_decref(j);
                return -1;
        }
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
                PeerField *fi = NULL;
                for (size_t i = 0; i < n; i++)
                        if (strcmp(f[i].name, k) == 0)
                                fi = &f[i];
                if (!fi) {
                        if (!deny)
                                continue;
                        char exp[256] = "";
                        size_t o = 0;
                        for (size_t i = 0; i < n; i++)
                                o += (size_t) snprintf(exp + o, sizeof(exp) - o, "%s`%s`", i ? ", " : "", f[i].name);
                        snprintf(msg, len, "unknown field `%s`, expected %s%s at line 1 column %zu", k,
                                 n > 1 ? "one of " : "", exp, col);
                        json_decref(j);
                        return -1;
                }
                char u[96];
                uint64_t max = fi->type == PEER_U16 ? UINT16_MAX : fi->type == PEER_U32 ? UINT32_MAX : INT64_MAX;
                bool ok;
                switch (fi->type) {
                case PEER_U16:
                case PEER_U32:
                case PEER_U64:
                        ok = json_is_integer(v);
                        if (ok && (json_integer_value(v) < 0 || (uint64_t) json_integer_value(v) > max)) {
                                snprintf(msg, len, "invalid value: integer `%lld`, expected %s at line 1 column %zu",
                                         (long long) json_integer_value(v), peer_type_name(fi->type), col);
                                json_decref(j);
                                return -1;
                        }
                        if (ok)
                                fi->u = (uint64_t) json_integer_value(v);
                        break;
                case PEER_BOOL:
                        ok = json_is_boolean(v);
                        fi->b = json_is_true(v);
                        break;
                case PEER_STRING:
                        ok = json_is_string(v);
                        if (ok)
                                snprintf(fi->s, sizeof(fi->s), "%s", json_string_value(v));
                        break;
                default:
                        ok = false;
                }
                if (!ok) {
                        peer_unexpected(v, u, sizeof(u));
                        snprintf(msg, len, "invalid type: %s, expected %s at line 1 column %zu", u,
                                 peer_type_name(fi->type), col);
                        json_decref(j);
                        return -1;
                }
                fi->seen = true;
        }
        json_decref(j);
        for (size_t i = 0; i < n; i++)
                if (f[i].required && !f[i].seen) {
                        snprintf(msg, len, "missing field `%s` at line 1 column %zu", f[i].name, col);
                        return -1;
                }
        return 0;
}

/* --- the Firecracker API --- */

#define FC_PEER_MiB   (UINT64_C(1) << 20)
#define FC_PEER_PAGES 256 /* 4 KiB pages per MiB */

typedef struct FcPeerConfig {
        const char *socket_path;
        int listen_fd; /* an already listening socket, or -1 */
        int ready_fd;  /* if >= 0: one byte once listening, then closed */
        uint64_t mem_mib;
        uint64_t pace_mib_s;
        uint64_t floor_mib;
        unsigned stats_interval;
        bool deflate_on_oom;
        bool no_balloon;
        bool not_started;
        usec_t activate_delay;
        bool no_driver;
        const char *vmm_version;
        PeerFault fault;
        const char *fault_path;
} FcPeerConfig;

_unused_ static void fc_peer_config_init(FcPeerConfig *c) {
        *c = (FcPeerConfig){
                .listen_fd = -1,
                .ready_fd = -1,
                .mem_mib = 1024,
                .pace_mib_s = 256,
                .stats_interval = 1,
                .vmm_version = "1.16.1",
        };
}

typedef struct FcPeer {
        const FcPeerConfig *cfg;
        MhServer mh;
        bool started;
        bool activated;
        usec_t activate_at;

        bool has_balloon;
        uint64_t amount_mib; /* the configured / last requested amount */
        bool deflate_on_oom, free_page_hinting, free_page_reporting;
        uint64_t stats_interval;

        uint64_t target_pages, actual_pages;
        usec_t next_step, step_period;

        bool have_stats;
        usec_t next_stats;
        uint64_t major_faults, minor_faults;
        uint64_t snap_free, snap_total, snap_avail, snap_caches;
} FcPeer;

static uint64_t fc_peer_max_balloon_pages(const FcPeer *p) {
        uint64_t all = p->cfg->mem_mib * FC_PEER_PAGES, keep = p->cfg->floor_mib * FC_PEER_PAGES;
        return all - MIN(all, keep);
}

static void fc_peer_snapshot(FcPeer *p, usec_t now) {
        uint64_t mem = p->cfg->mem_mib * FC_PEER_MiB, balloon = p->actual_pages * 4096;
        uint64_t guest = mem - MIN(mem, balloon);
        /* Like a small Linux guest: without deflate-on-oom MemTotal shrinks by the balloon. */
        uint64_t total = (p->deflate_on_oom ? mem : guest) - MIN(p->deflate_on_oom ? mem : guest, 30 * FC_PEER_MiB);
        uint64_t used = 40 * FC_PEER_MiB + (p->deflate_on_oom ? balloon : 0);
        p->snap_total = total;
        p->snap_free = total - MIN(total, used);
        p->snap_avail = p->snap_free + MIN(p->snap_free, 8 * FC_PEER_MiB);
        p->snap_caches = MIN(p->snap_free, 16 * FC_PEER_MiB);
        p->major_faults += 3;
        p->minor_faults += 250;
        p->have_stats = true;
        p->next_stats = p->stats_interval > 0 ? now + p->stats_interval * USEC_PER_SEC : USEC_INFINITY;
}

static void fc_peer_tick(MhServer *s, usec_t now) {
        FcPeer *p = s->userdata;
        if (p->started && !p->activated && !p->cfg->no_driver && now >= p->activate_at) {
                p->activated = true;
                p->next_step = now + p->step_period;
                if (p->has_balloon && p->stats_interval > 0)
                        fc_peer_snapshot(p, now); /* the driver hands its first stats at probe */
        }
        if (!p->activated || !p->has_balloon)
                return;
        while (p->cfg->pace_mib_s > 0 && p->actual_pages != p->target_pages && now >= p->next_step) {
                uint64_t a = p->actual_pages;
                if (p->target_pages > a) { /* inflate: the guest gives memory up, not below its floor */
                        uint64_t hi = MIN(p->target_pages, fc_peer_max_balloon_pages(p));
                        a += MIN((uint64_t) FC_PEER_PAGES, hi - MIN(hi, a));
                } else
                        a -= MIN((uint64_t) FC_PEER_PAGES, a - p->target_pages);
                p->next_step += p->step_period;
                if (a == p->actual_pages)
                        break; /* stuck at the floor */
                p->actual_pages = a;
        }
        if (p->stats_interval > 0 && now >= p->next_stats)
                fc_peer_snapshot(p, now);
}

static usec_t fc_peer_next_wakeup(MhServer *s) {
        FcPeer *p = s->userdata;
        usec_t w = USEC_INFINITY;
        if (p->started && !p->activated && !p->cfg->no_driver)
                w = p->activate_at;
        if (p->activated && p->has_balloon) {
                bool stuck = p->target_pages > p->actual_pages && p->actual_pages >= fc_peer_max_balloon_pages(p);
                if (p->cfg->pace_mib_s > 0 && p->actual_pages != p->target_pages && !stuck)
                        w = MIN(w, p->next_step);
                if (p->stats_interval > 0)
                        w = MIN(w, p->next_stats);
        }
        return w;
}

static void fc_peer_fault(FcPeer *p, MhClient *c, const char *fmt, ...) _printf_(3, 4);
static void fc_peer_fault(FcPeer *p, MhClient *c, const char *fmt, ...) {
        char *m = NULL;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&m, fmt, ap) < 0)
                abort();
        va_end(ap);
        json_t *j = json_pack("{s:s}", "fault_message", m);
        char *b = json_dumps(j, JSON_COMPACT); /* serde_json: no spaces */
        mh_respond(&p->mh, c, 400, b);
        free(b);
        json_decref(j);
        free(m);
}

#define FC_DESER_PREFIX "An error occurred when deserializing the json body of a request: "
#define FC_BEFORE_START "The requested operation is not supported before starting the microVM."
#define FC_AFTER_START  "The requested operation is not supported after starting the microVM."
#define FC_NOT_FOUND    "Failed perform action on device: Device not found"

static bool fc_peer_body(FcPeer *p, MhClient *c, const MhRequest *r, const char *what, PeerField *f, size_t n) {
        char msg[512];
        if (r->body_len == 0) {
                fc_peer_fault(p, c, "Empty %s request.", r->method);
                return false;
        }
        if (peer_deserialize(r, what, f, n, true, msg, sizeof(msg)) < 0) {
                fc_peer_fault(p, c, FC_DESER_PREFIX "%s.", msg);
                return false;
        }
        return true;
}

static void fc_peer_get_balloon(FcPeer *p, MhClient *c) {
        if (!p->has_balloon) {
                if (p->started)
                        fc_peer_fault(p, c, "Internal VMM error: " FC_NOT_FOUND);
                else
                        fc_peer_fault(p, c, "Balloon config error: No balloon device found.");
                return;
        }
        mh_respondf(&p->mh, c, 200,
                    "{\"amount_mib\":%" PRIu64 ",\"deflate_on_oom\":%s,\"stats_polling_interval_s\":%" PRIu64
                    ",\"free_page_hinting\":%s,\"free_page_reporting\":%s}",
                    p->amount_mib, p->deflate_on_oom ? "true" : "false", p->stats_interval,
                    p->free_page_hinting ? "true" : "false", p->free_page_reporting ? "true" : "false");
}

static void fc_peer_put_balloon(FcPeer *p, MhClient *c, const MhRequest *r) {
        if (p->started) {
                fc_peer_fault(p, c, FC_AFTER_START);
                return;
        }
        PeerField f[] = {
                { "amount_mib", PEER_U32, true },         { "deflate_on_oom", PEER_BOOL, true },
                { "stats_polling_interval_s", PEER_U16 }, { "free_page_hinting", PEER_BOOL },
                { "free_page_reporting", PEER_BOOL },
        };
        if (!fc_peer_body(p, c, r, "BalloonDeviceConfig", f, ELEMENTSOF(f)))
                return;
        if (f[0].u > p->cfg->mem_mib) {
                fc_peer_fault(p, c, "Balloon config error: Amount of pages requested is too large.");
                return;
        }
        p->has_balloon = true;
        p->amount_mib = f[0].u;
        p->deflate_on_oom = f[1].b;
        p->stats_interval = f[2].u;
        p->free_page_hinting = f[3].b;
        p->free_page_reporting = f[4].b;
        mh_respond(&p->mh, c, 204, NULL);
}

static void fc_peer_patch_balloon(FcPeer *p, MhClient *c, const MhRequest *r) {
        if (!p->started) {
                fc_peer_fault(p, c, FC_BEFORE_START);
                return;
        }
        PeerField f[] = { { "amount_mib", PEER_U32, true } };
        if (!fc_peer_body(p, c, r, "BalloonUpdateConfig", f, ELEMENTSOF(f)))
                return;
        if (!p->has_balloon) {
                fc_peer_fault(p, c, "Balloon update error: " FC_NOT_FOUND);
                return;
        }
        if (!p->activated) {
                fc_peer_fault(p, c, "Balloon update error: Balloon: Device not activated yet.");
                return;
        }
        if (f[0].u > p->cfg->mem_mib) {
                /* Firecracker prints the requested amount, not the limit. */
                fc_peer_fault(p, c,
                              "Balloon update error: Balloon: Requested memory should be less than %" PRIu64 "MiB",
                              f[0].u);
                return;
        }
        p->amount_mib = f[0].u;
        p->target_pages = f[0].u * FC_PEER_PAGES;
        p->next_step = now_mono() + p->step_period; /* from now on, at the guest's pace */
        mh_respond(&p->mh, c, 204, NULL);
}

static void fc_peer_get_stats(FcPeer *p, MhClient *c) {
        if (!p->started) {
                fc_peer_fault(p, c, FC_BEFORE_START);
                return;
        }
        if (!p->has_balloon) {
                fc_peer_fault(p, c, "Internal VMM error: " FC_NOT_FOUND);
                return;
        }
        if (p->stats_interval == 0) {
                fc_peer_fault(p, c, "Internal VMM error: Balloon: Received stats query when stats are disabled.");
                return;
        }
        char b[1024];
        int n = snprintf(b, sizeof(b),
                         "{\"target_pages\":%" PRIu64 ",\"actual_pages\":%" PRIu64 ",\"target_mib\":%" PRIu64
                         ",\"actual_mib\":%" PRIu64,
                         p->target_pages, p->actual_pages, p->target_pages / FC_PEER_PAGES,
                         p->actual_pages / FC_PEER_PAGES);
        if (p->have_stats) /* omitted until the guest first answers */
                n += snprintf(b + n, sizeof(b) - (size_t) n,
                              ",\"swap_in\":0,\"swap_out\":0,\"major_faults\":%" PRIu64 ",\"minor_faults\":%" PRIu64
                              ",\"free_memory\":%" PRIu64 ",\"total_memory\":%" PRIu64 ",\"available_memory\":%" PRIu64
                              ",\"disk_caches\":%" PRIu64 ",\"hugetlb_allocations\":0,\"hugetlb_failures\":0",
                              p->major_faults, p->minor_faults, p->snap_free, p->snap_total, p->snap_avail,
                              p->snap_caches);
        snprintf(b + n, sizeof(b) - (size_t) n, "}");
        mh_respond(&p->mh, c, 200, b);
}

static void fc_peer_patch_stats(FcPeer *p, MhClient *c, const MhRequest *r) {
        if (!p->started) {
                fc_peer_fault(p, c, FC_BEFORE_START);
                return;
        }
        PeerField f[] = { { "stats_polling_interval_s", PEER_U16, true } };
        if (!fc_peer_body(p, c, r, "BalloonUpdateStatsConfig", f, ELEMENTSOF(f)))
                return;
        if (!p->has_balloon) {
                fc_peer_fault(p, c, "Balloon update error: " FC_NOT_FOUND);
                return;
        }
        if (f[0].u == p->stats_interval) {
                mh_respond(&p->mh, c, 204, NULL);
                return;
        }
        if (p->stats_interval == 0 || f[0].u == 0) {
                fc_peer_fault(p, c,
                              "Balloon update error: Balloon: Statistics cannot be enabled/disabled after activation.");
                return;
        }
        p->stats_interval = f[0].u;
        if (p->activated) /* an update at once, and the timer re-armed */
                fc_peer_snapshot(p, now_mono());
        mh_respond(&p->mh, c, 204, NULL);
}

static void fc_peer_start(FcPeer *p) {
        p->started = true;
        p->activate_at = now_mono() + p->cfg->activate_delay;
        p->target_pages = p->has_balloon ? p->amount_mib * FC_PEER_PAGES : 0;
}

static void fc_peer_actions(FcPeer *p, MhClient *c, const MhRequest *r) {
        PeerField f[] = { { "action_type", PEER_STRING, true } };
        if (!fc_peer_body(p, c, r, "ActionBody", f, ELEMENTSOF(f)))
                return;
        if (strcmp(f[0].s, "InstanceStart") == 0) {
                if (p->started) {
                        fc_peer_fault(p, c, FC_AFTER_START);
                        return;
                }
                fc_peer_start(p);
        } else if (strcmp(f[0].s, "FlushMetrics") != 0 && strcmp(f[0].s, "SendCtrlAltDel") != 0) {
                fc_peer_fault(p, c,
                              FC_DESER_PREFIX "unknown variant `%s`, expected one of `FlushMetrics`, `InstanceStart`, "
                                              "`SendCtrlAltDel` at line 1 column %zu.",
                              f[0].s, r->body_len);
                return;
        }
        mh_respond(&p->mh, c, 204, NULL);
}

static void fc_peer_on_request(MhServer *s, MhClient *c, const MhRequest *r) {
        FcPeer *p = s->userdata;
        const char *m = r->method, *path = r->path;
        bool get = strcmp(m, "GET") == 0, put = strcmp(m, "PUT") == 0, patch = strcmp(m, "PATCH") == 0;

        fc_peer_tick(s, now_mono()); /* live values */
        if ((get || strcmp(m, "DELETE") == 0) && r->body_len > 0) {
                fc_peer_fault(p, c, "%s request cannot have a body.", m);
                return;
        }
        if (get && strcmp(path, "/") == 0)
                mh_respondf(s, c, 200,
                            "{\"id\":\"anonymous-instance\",\"state\":\"%s\",\"vmm_version\":\"%s\",\"app_name\":"
                            "\"Firecracker\"}",
                            p->started ? "Running" : "Not started", p->cfg->vmm_version);
        else if (get && strcmp(path, "/version") == 0)
                mh_respondf(s, c, 200, "{\"firecracker_version\":\"%s\"}", p->cfg->vmm_version);
        else if (get && strcmp(path, "/machine-config") == 0)
                mh_respondf(s, c, 200,
                            "{\"vcpu_count\":2,\"mem_size_mib\":%" PRIu64
                            ",\"smt\":false,\"track_dirty_pages\":false,\"huge_pages\":\"None\"}",
                            p->cfg->mem_mib);
        else if (get && strcmp(path, "/balloon") == 0)
                fc_peer_get_balloon(p, c);
        else if (put && strcmp(path, "/balloon") == 0)
                fc_peer_put_balloon(p, c, r);
        else if (patch && strcmp(path, "/balloon") == 0)
                fc_peer_patch_balloon(p, c, r);
        else if (get && strcmp(path, "/balloon/statistics") == 0)
                fc_peer_get_stats(p, c);
        else if (patch && strcmp(path, "/balloon/statistics") == 0)
                fc_peer_patch_stats(p, c, r);
        else if (put && strcmp(path, "/actions") == 0)
                fc_peer_actions(p, c, r);
        else if (get)
                fc_peer_fault(p, c, "Unrecognized GET request path `%s`.", path);
        else {
                /* "<METHOD> <first path segment>" */
                char seg[128];
                snprintf(seg, sizeof(seg), "%.*s", (int) strcspn(path + 1, "/"), path + 1);
                fc_peer_fault(p, c, "Invalid request method and/or path: %s %s.", m, seg);
        }
}

/* Serves until SIGTERM/SIGINT (or SIGKILL from a test). Returns 0, or a negative errno when it
 * cannot listen. */
static int fc_peer_serve(const FcPeerConfig *cfg) {
        FcPeer p = { .cfg = cfg };
        p.mh = (MhServer){
                .server_name = "Firecracker API",
                .max_payload = 51200, /* --http-api-max-payload-size default */
                .fault = cfg->fault,
                .fault_path = cfg->fault_path,
                .on_request = fc_peer_on_request,
                .tick = fc_peer_tick,
                .next_wakeup = fc_peer_next_wakeup,
                .userdata = &p,
        };
        p.step_period = cfg->pace_mib_s > 0 ? MAX(USEC_PER_SEC / cfg->pace_mib_s, (usec_t) 1) : USEC_INFINITY;
        p.next_stats = USEC_INFINITY;
        if (!cfg->no_balloon) {
                p.has_balloon = true;
                p.deflate_on_oom = cfg->deflate_on_oom;
                p.stats_interval = cfg->stats_interval;
        }
        if (!cfg->not_started)
                fc_peer_start(&p);
        return mh_serve(&p.mh, cfg->socket_path, cfg->listen_fd, cfg->ready_fd);
}

/* --- command line (shared with chv-peer) --- */

static void peer_on_signal(int sig) {
        (void) sig;
        peer_stop = 1;
}

_unused_ static void peer_signals(void) {
        struct sigaction sa = { .sa_handler = peer_on_signal };
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
}

/* Fault flags common to both peers; returns true when a was one. */
_unused_ static bool peer_fault_flag(const char *a, PeerFault *ret) {
        static const struct {
                const char *flag;
                PeerFault fault;
        } table[] = {
                { "--hang", PEER_FAULT_HANG },
                { "--garbage", PEER_FAULT_GARBAGE },
                { "--close-mid-reply", PEER_FAULT_CLOSE_MID_REPLY },
                { "--oversized", PEER_FAULT_OVERSIZED },
                { "--flood-continue", PEER_FAULT_FLOOD_CONTINUE },
                { "--flood-headers", PEER_FAULT_FLOOD_HEADERS },
                { "--flood-chunked", PEER_FAULT_FLOOD_CHUNKED },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (strcmp(a, table[i].flag) == 0) {
                        *ret = table[i].fault;
                        return true;
                }
        return false;
}

_unused_ static int peer_u64_arg(const char *flag, const char *v, uint64_t max, uint64_t *ret) {
        uint64_t x;
        if (!v || parse_u64(v, &x) < 0 || x > max) {
                fprintf(stderr, "peer: invalid value for %s: '%s'\n", flag, v ?: "");
                return -EINVAL;
        }
        *ret = x;
        return 0;
}

#ifndef FC_PEER_NO_MAIN
static void fc_peer_usage(FILE *f) {
        fprintf(f, "usage: fc-peer PATH [--mem-mib N] [--pace-mib-per-s N] [--floor-mib N] [--stats-interval S]\n"
                   "               [--deflate-on-oom] [--no-balloon] [--not-started] [--activate-ms N] [--no-driver]\n"
                   "               [--vmm-version V] [--hang|--garbage|--close-mid-reply|--oversized|\n"
                   "                --flood-continue|--flood-headers|--flood-chunked]\n"
                   "               [--fault-path PATH] [--ready-fd FD]\n");
}

int main(int argc, char **argv) {
        FcPeerConfig cfg;
        fc_peer_config_init(&cfg);
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                uint64_t x;
                int r = 0;
                if (strcmp(a, "--help") == 0) {
                        fc_peer_usage(stdout);
                        return 0;
                } else if (peer_fault_flag(a, &cfg.fault))
                        continue;
                else if (strcmp(a, "--deflate-on-oom") == 0)
                        cfg.deflate_on_oom = true;
                else if (strcmp(a, "--no-balloon") == 0)
                        cfg.no_balloon = true;
                else if (strcmp(a, "--not-started") == 0)
                        cfg.not_started = true;
                else if (strcmp(a, "--no-driver") == 0)
                        cfg.no_driver = true;
                else if (a[0] != '-' && !cfg.socket_path)
                        cfg.socket_path = a;
                else {
                        i++;
                        if (strcmp(a, "--mem-mib") == 0)
                                r = peer_u64_arg(a, v, UINT32_MAX / FC_PEER_PAGES, &cfg.mem_mib);
                        else if (strcmp(a, "--pace-mib-per-s") == 0)
                                r = peer_u64_arg(a, v, 1000000, &cfg.pace_mib_s);
                        else if (strcmp(a, "--floor-mib") == 0)
                                r = peer_u64_arg(a, v, UINT32_MAX, &cfg.floor_mib);
                        else if (strcmp(a, "--stats-interval") == 0) {
                                r = peer_u64_arg(a, v, UINT16_MAX, &x);
                                cfg.stats_interval = (unsigned) x;
                        } else if (strcmp(a, "--activate-ms") == 0) {
                                r = peer_u64_arg(a, v, 3600 * 1000, &x);
                                cfg.activate_delay = x * USEC_PER_MSEC;
                        } else if (strcmp(a, "--ready-fd") == 0) {
                                r = peer_u64_arg(a, v, INT32_MAX, &x);
                                cfg.ready_fd = (int) x;
                        } else if (strcmp(a, "--vmm-version") == 0 && v)
                                cfg.vmm_version = v;
                        else if (strcmp(a, "--fault-path") == 0 && v)
                                cfg.fault_path = v;
                        else {
                                fc_peer_usage(stderr);
                                return 2;
                        }
                        if (r < 0)
                                return 2;
                }
        }
        if (!cfg.socket_path || cfg.mem_mib == 0) {
                fc_peer_usage(stderr);
                return 2;
        }
        peer_signals();
        return fc_peer_serve(&cfg) < 0 ? 1 : 0;
}
#endif
