/* SPDX-License-Identifier: MIT */
#include "api/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

#include <microhttpd.h>

#include "shared/fs-util.h"
#include "shared/log.h"
#include "shared/macro.h"

/* MHD keeps the request line and headers in a per-connection pool (the body is handed to us in
 * chunks and copied out) and fills what is left with its send buffer, so the whole pool is resident
 * while a request is in flight. A head reaches MHD only after http_head_parse() took it, so it is
 * at most HTTP_HEAD_MAX: twice that leaves room for MHD's own bookkeeping. */
#define HTTP_CONNECTION_MEMORY  (2 * HTTP_HEAD_MAX)
/* After an answer of our own: how long the peer has to read it and close before we do. */
#define HTTP_LINGER             (1 * USEC_PER_SEC)
/* Out of file descriptors: accept() pauses this long, doubling up to the maximum. */
#define HTTP_ACCEPT_BACKOFF_MIN (10 * USEC_PER_MSEC)
#define HTTP_ACCEPT_BACKOFF_MAX (1 * USEC_PER_SEC)
#define HTTP_TOKENS_FILE_MAX    ((off_t) 1 << 20)
#define HTTP_LISTEN_BACKLOG     128
/* A body without Content-Length (chunked) that grows past HTTP_BODY_MAX: MHD 0.9.75 cannot queue
 * a response in the middle of an upload, so we drop up to this much more and answer 413 at its
 * end, or close the connection when the client keeps sending. */
#define HTTP_DRAIN_MAX          ((size_t) 1 << 20)

typedef struct HttpToken {
        char *token;
        size_t len;
        bool write;
} HttpToken;

typedef struct HttpListener {
        HttpServer *server;
        bool tcp;
        int fd; /* the listening socket: we accept, MHD gets connections whose head is in */
        struct MHD_Daemon *daemon;
        EvIo *io;        /* MHD's epoll fd */
        EvIo *accept_io; /* fd */
        EvTimer *backoff;
        usec_t backoff_delay;
        unsigned n_conns;  /* open connections of this listener, in any state */
        unsigned n_unauth; /* TCP: those still waiting for their request head (and token) */
} HttpListener;

typedef enum HttpConnState {
        HTTP_CONN_HEAD,   /* waiting for the request head (ours; header_timeout runs) */
        HTTP_CONN_MHD,    /* handed to MHD with a valid head */
        HTTP_CONN_LINGER, /* answered by us, waiting for the peer to close */
} HttpConnState;

/* Every open connection, from accept() until it closes (for the limits). */
typedef struct HttpConn HttpConn;
struct HttpConn {
        HttpListener *listener;
        HttpConn *prev, *next; /* the server's list, newest first */
        HttpConnState state;
        int fd;           /* ours until handed to MHD */
        int mhd_fd;       /* MHD's afterwards (for matching its notifications) */
        bool started;     /* MHD reported it started */
        bool privileged;  /* Unix: root, our uid or write_gid; TCP: a write token */
        bool flat_errors; /* the request target is under flat_error_prefix (as far as it arrived) */
        uid_t uid;        /* Unix: the peer's uid */
        uint8_t peer[16]; /* TCP: the peer's address (IPv4 mapped into IPv6) */
        struct sockaddr_storage addr;
        socklen_t addr_len;
        EvIo *io;
        EvTimer *timer;
};

struct HttpServer {
        Ev *ev;
        http_handler handler;
        void *userdata;

        HttpListener listeners[2];
        size_t n_listeners;
        EvTimer *timer;
        int running;    /* > 0 while inside MHD_run(), i.e. while the handler may be running */
        bool run_again; /* MHD needs another MHD_run() soon, whatever its timeout says */
        bool stopping;  /* in http_server_free(): new requests get 503, not the handler */

        char *socket_path;
        dev_t socket_dev;
        ino_t socket_ino;
        uint16_t tcp_port;

        HttpToken *tokens;
        size_t n_tokens;
        gid_t write_gid;
        uid_t euid;
        bool unix_read_only;
        const char *flat_error_prefix; /* not owned */

        HttpCall *calls; /* every call still tied to a connection */
        HttpCounters counters;

        HttpConn *conns;
        HttpConn *adding;   /* inside MHD_add_connection() */
        bool adding_closed; /* ... which reported it closed already */
        unsigned max_conn, max_per_peer, reserved, max_unauth;
        usec_t header_timeout, body_timeout;
        char scratch[HTTP_HEAD_MAX + 1]; /* request heads are peeked into this */
};

typedef enum HttpCallState {
        HTTP_CALL_READING,  /* headers checked (or not yet), body arriving */
        HTTP_CALL_PENDING,  /* with the handler, unanswered */
        HTTP_CALL_ANSWERED, /* answered; the response waits for the connection to be resumed */
        HTTP_CALL_DONE,     /* the response is queued with MHD */
} HttpCallState;

typedef struct HttpHeader {
        char *name, *value;
} HttpHeader;

struct HttpCall {
        HttpServer *server;          /* NULL once orphaned */
        struct MHD_Connection *conn; /* NULL once the connection is gone */
        HttpListener *listener;
        HttpCall *prev, *next;

        HttpCallState state;
        bool started;    /* the first access-handler call (headers only) was checked */
        bool in_handler; /* replies are queued when the handler returns */
        bool suspended;
        bool aborted;   /* the server is going away: close without a reply */
        bool too_large; /* the body passed HTTP_BODY_MAX: dropping the rest, 413 at the end */
        size_t dropped;

        char *uri; /* the request target as sent; split into path and query at '?' */
        char *method;
        char *body;
        size_t body_len, body_alloc;
        HttpRequest req;

        HttpHeader *headers;
        size_t n_headers;
        unsigned status;
        struct MHD_Response *response;
};

/* --- calls --- */

static void *mfree(void *p) {
        free(p);
        return NULL;
}

static void http_call_link(HttpServer *s, HttpCall *call) {
        call->server = s;
        call->prev = NULL;
        call->next = s->calls;
        if (s->calls)
                s->calls->prev = call;
        s->calls = call;
}

/* Cuts the call loose from its connection and server; it lives on until answered. */
static void http_call_unlink(HttpCall *call) {
        HttpServer *s = call->server;
        if (s) {
                if (call->prev)
                        call->prev->next = call->next;
                else
                        s->calls = call->next;
                if (call->next)
                        call->next->prev = call->prev;
        }
        call->prev = call->next = NULL;
        call->server = NULL;
        call->conn = NULL;
        call->listener = NULL;
        call->suspended = false;
}

static void http_call_free(HttpCall *call) {
        if (!call)
                return;
        http_call_unlink(call);
        if (call->response)
                MHD_destroy_response(call->response);
        for (size_t i = 0; i < call->n_headers; i++) {
                free(call->headers[i].name);
                free(call->headers[i].value);
        }
        free(call->headers);
        free(call->uri);
        free(call->method);
        free(call->body);
        free(call);
}

static void http_server_kick(HttpServer *s);

static bool http_status_valid(unsigned status) {
        return status >= 200 && status <= 599;
}

/* Takes resp (may be NULL when building it failed: the client then gets a bare 500). */
static void http_call_answer(HttpCall *call, unsigned status, struct MHD_Response *resp) {
        if (!call) {
                if (resp)
                        MHD_destroy_response(resp);
                return;
        }
        if (call->state != HTTP_CALL_PENDING) {
                /* Answering twice is a bug in the caller; keep the first answer. */
                log_debug("http: call answered in state %d, ignoring", (int) call->state);
                if (resp)
                        MHD_destroy_response(resp);
                return;
        }
        if (!call->conn) {
                /* The connection (or the whole server) is gone: nobody to tell. */
                if (resp)
                        MHD_destroy_response(resp);
                http_call_free(call);
                return;
        }
        if (!resp) {
                static const char oom[] = "{\"error\":{\"code\":\"internal\",\"message\":\"out of memory\"}}\n";
                status = 500;
                resp = MHD_create_response_from_buffer(sizeof(oom) - 1, (void *) oom, MHD_RESPMEM_PERSISTENT);
                if (resp)
                        (void) MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
        }
        /* One request per connection: the next one would reach MHD without our head check. */
        if (resp && MHD_add_response_header(resp, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES)
                log_debug("http: cannot add Connection: close, ignoring");
        if (resp)
                for (size_t i = 0; i < call->n_headers; i++)
                        if (MHD_add_response_header(resp, call->headers[i].name, call->headers[i].value) != MHD_YES)
                                log_debug("http: cannot add response header '%s', ignoring", call->headers[i].name);

        HttpCounters *c = &call->server->counters;
        if (status < 300)
                c->answers_2xx++;
        else if (status < 400)
                c->answers_3xx++;
        else if (status < 500)
                c->errors_4xx++;
        else
                c->errors_5xx++;
        if (status == 401)
                c->unauthorized++;
        else if (status == 403)
                c->forbidden++;

        call->status = status;
        call->response = resp;
        call->state = HTTP_CALL_ANSWERED;
        if (call->in_handler)
                return; /* http_on_access() queues it when the handler returns */
        if (call->suspended) {
                call->suspended = false;
                MHD_resume_connection(call->conn);
        }
        http_server_kick(call->server);
}

/* Hands an answered call's response to MHD (from inside the access handler). */
static enum MHD_Result http_call_queue(HttpCall *call) {
        struct MHD_Response *resp = call->response;
        call->response = NULL;
        call->state = HTTP_CALL_DONE;
        if (!resp)
                return MHD_NO; /* not even a 500 could be built: close the connection */
        enum MHD_Result r = MHD_queue_response(call->conn, call->status, resp);
        MHD_destroy_response(resp);
        if (r != MHD_YES)
                log_debug("http: cannot queue a %u response, closing the connection", call->status);
        return r;
}

void http_call_add_header(HttpCall *call, const char *name, const char *value) {
        if (!call || !name || !value || (call->state != HTTP_CALL_PENDING && call->state != HTTP_CALL_READING))
                return;
        HttpHeader *h = realloc(call->headers, (call->n_headers + 1) * sizeof(HttpHeader));
        if (!h)
                return;
        call->headers = h;
        char *n = strdup(name), *v = strdup(value);
        if (!n || !v) {
                free(n);
                free(v);
                return;
        }
        call->headers[call->n_headers++] = (HttpHeader){ .name = n, .value = v };
}

void http_call_reply_json(HttpCall *call, unsigned status, json_t *body) {
        struct MHD_Response *resp = NULL;
        const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;

        if (!http_status_valid(status)) {
                log_debug("http: reply with status %u, sending 500 instead", status);
                status = 500;
        }
        /* One pass (json_dumpb sized first and then wrote: every answer serialised twice). The
         * string's NUL becomes the final newline. */
        char *buf = body ? json_dumps(body, flags) : NULL;
        size_t n = buf ? strlen(buf) : 0;
        if (n > 0) {
                buf[n] = '\n';
                resp = MHD_create_response_from_buffer(n + 1, buf, MHD_RESPMEM_MUST_FREE);
                if (resp)
                        buf = NULL;
        } else if (call && call->state == HTTP_CALL_PENDING && call->conn) {
                log_debug("http: cannot serialise a %u reply, sending 500 instead", status);
                static const char bad[] =
                        "{\"error\":{\"code\":\"internal\",\"message\":\"cannot serialise the reply\"}}\n";
                status = 500;
                resp = MHD_create_response_from_buffer(sizeof(bad) - 1, (void *) bad, MHD_RESPMEM_PERSISTENT);
        }
        free(buf);
        json_decref(body);
        if (resp && MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json") != MHD_YES) {
                MHD_destroy_response(resp);
                resp = NULL;
        }
        http_call_answer(call, status, resp);
}

static void http_call_reply_buffer(HttpCall *call, unsigned status, const char *content_type, const char *text,
                                   size_t len, bool take) {
        if (!http_status_valid(status)) {
                log_debug("http: reply with status %u, sending 500 instead", status);
                status = 500;
        }
        struct MHD_Response *resp =
                take && text ? MHD_create_response_from_buffer(len, (void *) text, MHD_RESPMEM_MUST_FREE)
                             : MHD_create_response_from_buffer(text ? len : 0, (void *) (text ? text : ""),
                                                               MHD_RESPMEM_MUST_COPY);
        if (!resp && take)
                free((void *) text);
        if (resp && MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE,
                                            content_type ? content_type : "text/plain; charset=utf-8") != MHD_YES) {
                MHD_destroy_response(resp);
                resp = NULL;
        }
        http_call_answer(call, status, resp);
}

void http_call_reply_text(HttpCall *call, unsigned status, const char *content_type, const char *text, size_t len) {
        http_call_reply_buffer(call, status, content_type, text, len, false);
}

void http_call_reply_text_take(HttpCall *call, unsigned status, const char *content_type, char *text, size_t len) {
        http_call_reply_buffer(call, status, content_type, text, len, true);
}

/* Length of the valid UTF-8 sequence at p (RFC 3629: no overlongs, surrogates or > U+10FFFF),
 * 0 when invalid or cut short. */
static size_t http_utf8_len(const unsigned char *p) {
        unsigned char lo = 0x80, hi = 0xbf;
        size_t n;
        if (p[0] < 0x80)
                return 1;
        if (p[0] >= 0xc2 && p[0] <= 0xdf)
                n = 2;
        else if (p[0] >= 0xe0 && p[0] <= 0xef) {
                n = 3;
                if (p[0] == 0xe0)
                        lo = 0xa0;
                else if (p[0] == 0xed)
                        hi = 0x9f;
        } else if (p[0] >= 0xf0 && p[0] <= 0xf4) {
                n = 4;
                if (p[0] == 0xf0)
                        lo = 0x90;
                else if (p[0] == 0xf4)
                        hi = 0x8f;
        } else
                return 0;
        if (p[1] < lo || p[1] > hi)
                return 0;
        for (size_t i = 2; i < n; i++)
                if (p[i] < 0x80 || p[i] > 0xbf)
                        return 0;
        return n;
}

/* Replaces every byte that is not part of valid UTF-8 with '?': messages often quote what a
 * client sent, and jansson refuses invalid strings (the reply would turn into a 500). */
static void http_utf8_sanitize(char *s) {
        unsigned char *p = (unsigned char *) s;
        while (*p) {
                size_t n = http_utf8_len(p);
                if (n == 0)
                        *p++ = '?';
                else
                        p += n;
        }
}

/* Whether errors about this request target (path, maybe a query) take the flat shape. */
static bool http_flat_errors(const HttpServer *s, const char *target, size_t len) {
        size_t n = s && s->flat_error_prefix ? strlen(s->flat_error_prefix) : 0; /* s: NULL once freed */
        return n > 0 && len >= n && memcmp(target, s->flat_error_prefix, n) == 0;
}

/* The error body: {"error": {"code", "message"}}, or {"code", "message"} when flat. */
static json_t *http_error_json(bool flat, const char *code, const char *msg) {
        if (flat)
                return json_pack("{s:s,s:s}", "code", code, "message", msg);
        return json_pack("{s:{s:s,s:s}}", "error", "code", code, "message", msg);
}

_printf_(4, 0) static void http_call_reply_errorv(HttpCall *call, unsigned status, const char *code, const char *fmt,
                                                  va_list ap) {
        char msg[512];
        (void) vsnprintf(msg, sizeof(msg), fmt, ap);
        http_utf8_sanitize(msg);
        bool flat = call->uri && http_flat_errors(call->server, call->uri, strlen(call->uri));
        http_call_reply_json(call, status, http_error_json(flat, code ? code : "internal", msg));
}

void http_call_reply_error(HttpCall *call, unsigned status, const char *code, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        http_call_reply_errorv(call, status, code, fmt, ap);
        va_end(ap);
}

/* The request has arrived (or was answered before its body): its body deadline ends. */
static void http_conn_arrived(struct MHD_Connection *conn) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        HttpConn *c = ci ? ci->socket_context : NULL;
        if (c && c->timer)
                ev_timer_set(c->timer, USEC_INFINITY);
}

/* Answers a call that has not reached the handler and queues the reply at once. */
_printf_(4, 5) static enum MHD_Result
        http_call_reject(HttpCall *call, unsigned status, const char *code, const char *fmt, ...) {
        va_list ap;
        call->state = HTTP_CALL_PENDING;
        call->in_handler = true;
        va_start(ap, fmt);
        http_call_reply_errorv(call, status, code, fmt, ap);
        va_end(ap);
        call->in_handler = false;
        if (call->conn)
                http_conn_arrived(call->conn);
        return http_call_queue(call);
}

/* --- authentication --- */

bool http_status_has_group(const char *status, gid_t gid) {
        if (!status)
                return false;
        for (const char *p = status; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
                if (strncmp(p, "Groups:", 7) != 0)
                        continue;
                p += 7;
                for (;;) {
                        while (*p == ' ' || *p == '\t')
                                p++;
                        if (*p < '0' || *p > '9')
                                return false;
                        char *end;
                        errno = 0;
                        unsigned long g = strtoul(p, &end, 10);
                        if (errno == 0 && g == (unsigned long) gid)
                                return true;
                        p = end;
                }
        }
        return false;
}

static bool http_proc_has_group(pid_t pid, gid_t gid) {
        char path[64], buf[4096];
        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return false;
        size_t n = 0;
        for (;;) {
                ssize_t k = read(fd, buf + n, sizeof(buf) - 1 - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                n += (size_t) k;
                if (n == sizeof(buf) - 1)
                        break;
        }
        buf[n] = 0;
        return http_status_has_group(buf, gid);
}

/* Whether the peer held gid (primary or supplementary) when it connected. SO_PEERGROUPS reads the
 * groups recorded at connect() time, like SO_PEERCRED; /proc/PID/status is the fallback for old
 * kernels. No NSS lookup (getgrouplist): it may block on a network directory. */
static bool http_peer_in_group(int fd, const struct ucred *uc, gid_t gid) {
        if (uc->gid == gid)
                return true;
        gid_t stack[64];
        gid_t *groups = stack;
        _cleanup_free_ gid_t *heap = NULL;
        socklen_t len = sizeof(stack);
        int r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
        if (r < 0 && errno == ERANGE && len > 0) {
                heap = malloc(len);
                if (!heap)
                        return false;
                groups = heap;
                r = getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len);
        }
        if (r < 0)
                return uc->pid > 0 && http_proc_has_group(uc->pid, gid);
        for (size_t i = 0; i < len / sizeof(gid_t); i++)
                if (groups[i] == gid)
                        return true;
        return false;
}

static void http_auth_unix(HttpServer *s, struct MHD_Connection *conn, HttpRequest *req) {
        req->can_write = false;
        req->peer_uid = (uid_t) -1;
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci)
                return;
        int fd = ci->connect_fd;
        struct ucred uc;
        socklen_t len = sizeof(uc);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0) {
                log_debug_errno(errno, "http: cannot read the peer's credentials, read-only: %m");
                return;
        }
        req->peer_uid = uc.uid;
        if (s->unix_read_only)
                return;
        req->can_write = uc.uid == 0 || uc.uid == s->euid ||
                         (s->write_gid != (gid_t) -1 && http_peer_in_group(fd, &uc, s->write_gid));
}

/* Compares against every token without stopping early, so the time does not depend on where a
 * guess goes wrong. */
static const HttpToken *http_token_find(const HttpServer *s, const char *tok, size_t len) {
        const HttpToken *found = NULL;
        for (size_t i = 0; i < s->n_tokens; i++) {
                const HttpToken *t = &s->tokens[i];
                volatile unsigned char d = (unsigned char) (len != t->len);
                for (size_t j = 0; j < t->len; j++)
                        d |= (unsigned char) (t->token[j] ^ (j < len ? tok[j] : 0));
                if (d == 0)
                        found = t;
        }
        return found;
}

/* The token named by an Authorization value ("Bearer TOKEN", blanks trimmed), or NULL. */
static const HttpToken *http_token_parse(const HttpServer *s, const char *v, size_t len) {
        if (!v || len < 7 || strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
                return NULL;
        size_t i = 7;
        while (i < len && (v[i] == ' ' || v[i] == '\t'))
                i++;
        size_t t0 = i;
        while (i < len && v[i] != ' ' && v[i] != '\t')
                i++;
        if (i == t0 || i != len)
                return NULL;
        return http_token_find(s, v + t0, i - t0);
}

/* Returns true and sets can_write for a known bearer token. */
static bool http_auth_tcp(HttpServer *s, struct MHD_Connection *conn, HttpRequest *req) {
        req->can_write = false;
        req->peer_uid = (uid_t) -1;
        const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        if (!v)
                return false;
        v += strspn(v, " \t");
        if (strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
                return false;
        v += 6;
        v += strspn(v, " \t");
        size_t len = strcspn(v, " \t");
        if (len == 0 || v[len + strspn(v + len, " \t")] != 0)
                return false;
        const HttpToken *t = http_token_find(s, v, len);
        if (!t)
                return false;
        req->can_write = t->write;
        return true;
}

/* --- request handling --- */

/* Methods are case-sensitive, but a "post" must not slip past the write check either. */
static bool http_method_mutates(const char *m) {
        return strcasecmp(m, "POST") == 0 || strcasecmp(m, "PUT") == 0 || strcasecmp(m, "PATCH") == 0 ||
               strcasecmp(m, "DELETE") == 0;
}

/* application/json, any case, optionally followed by parameters (charset=…). */
static bool http_content_type_is_json(const char *ct) {
        if (!ct)
                return false;
        ct += strspn(ct, " \t");
        if (strncasecmp(ct, "application/json", 16) != 0)
                return false;
        ct += 16;
        ct += strspn(ct, " \t");
        return *ct == 0 || *ct == ';';
}

/* Content-Length as a number; -1 when absent, -2 when malformed. */
static long long http_content_length(struct MHD_Connection *conn) {
        const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (!v)
                return -1;
        v += strspn(v, " \t");
        if (*v < '0' || *v > '9')
                return -2;
        char *end;
        errno = 0;
        unsigned long long n = strtoull(v, &end, 10);
        end += strspn(end, " \t");
        if (errno != 0 || *end != 0 || n > LLONG_MAX)
                return errno == ERANGE ? LLONG_MAX : -2;
        return (long long) n;
}

/* The first access-handler call: headers are complete, the body has not been read. */
static enum MHD_Result http_on_headers(HttpCall *call, struct MHD_Connection *conn, const char *method) {
        HttpServer *s = call->server;
        HttpRequest *req = &call->req;

        call->method = strdup(method);
        if (!call->method)
                return MHD_NO;
        req->method = call->method;
        if (s->stopping)
                return http_call_reject(call, 503, "unavailable", "the server is shutting down");

        if (call->listener->tcp) {
                if (!http_auth_tcp(s, conn, req)) {
                        http_call_add_header(call, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer realm=\"ballast\"");
                        return http_call_reject(call, 401, "unauthorized",
                                                "a valid token is required (Authorization: Bearer TOKEN)");
                }
        } else
                http_auth_unix(s, conn, req);

        size_t ulen = strlen(call->uri);
        if (ulen > HTTP_URI_MAX)
                return http_call_reject(call, 414, "uri_too_long", "request URI is %zu bytes, at most %zu allowed",
                                        ulen, HTTP_URI_MAX);
        if (call->uri[0] != '/')
                return http_call_reject(call, 400, "bad_request", "request target must be an absolute path");
        for (const char *p = call->uri; *p; p++)
                if ((unsigned char) *p <= 0x20 || (unsigned char) *p >= 0x7f)
                        return http_call_reject(call, 400, "bad_request",
                                                "request URI contains a byte that is not printable ASCII");
        char *q = strchr(call->uri, '?');
        if (q)
                *q++ = 0;
        req->path = call->uri;
        req->query = q ? q : "";

        if (http_method_mutates(method) && !req->can_write)
                return http_call_reject(call, 403, "forbidden", "%s needs write access", method);

        long long cl = http_content_length(conn);
        if (cl == -2)
                return http_call_reject(call, 400, "bad_request", "malformed Content-Length");
        if (cl > (long long) HTTP_BODY_MAX)
                return http_call_reject(call, 413, "payload_too_large",
                                        "request body is %lld bytes, at most %zu allowed", cl, HTTP_BODY_MAX);
        bool chunked = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL;
        if ((cl > 0 || chunked) && !http_content_type_is_json(MHD_lookup_connection_value(
                                           conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE)))
                return http_call_reject(call, 415, "unsupported_media_type", "request body must be application/json");
        if (cl > 0) {
                call->body = malloc((size_t) cl + 1);
                if (!call->body)
                        return http_call_reject(call, 500, "internal", "out of memory");
                call->body_alloc = (size_t) cl + 1;
        }
        call->started = true;
        return MHD_YES;
}

static enum MHD_Result http_on_upload(HttpCall *call, const char *data, size_t *size) {
        size_t n = *size;
        *size = 0;
        if (!call->too_large && n > HTTP_BODY_MAX - call->body_len) {
                call->too_large = true;
                call->body = mfree(call->body);
                call->body_alloc = 0;
        }
        if (call->too_large) {
                call->dropped += n;
                if (call->dropped > HTTP_DRAIN_MAX) {
                        log_debug("http: %s %s: body keeps coming past %zu bytes, closing", call->method, call->uri,
                                  HTTP_BODY_MAX);
                        return MHD_NO;
                }
                return MHD_YES;
        }
        if (call->body_len + n + 1 > call->body_alloc) {
                size_t want = MAX(call->body_alloc * 2, call->body_len + n + 1);
                want = MIN(want, HTTP_BODY_MAX + 1);
                char *b = realloc(call->body, want);
                if (!b)
                        return MHD_NO; /* MHD cannot send a reply in the middle of an upload */
                call->body = b;
                call->body_alloc = want;
        }
        memcpy(call->body + call->body_len, data, n);
        call->body_len += n;
        return MHD_YES;
}

/* The request is complete: check the body and hand the call to the handler. */
static enum MHD_Result http_on_complete(HttpCall *call, struct MHD_Connection *conn) {
        HttpServer *s = call->server;
        HttpRequest *req = &call->req;

        if (s->stopping)
                return http_call_reject(call, 503, "unavailable", "the server is shutting down");
        if (call->too_large)
                return http_call_reject(call, 413, "payload_too_large", "request body is over %zu bytes",
                                        HTTP_BODY_MAX);
        if (call->body_len > 0) {
                if (!http_content_type_is_json(
                            MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE)))
                        return http_call_reject(call, 415, "unsupported_media_type",
                                                "request body must be application/json");
                if (memchr(call->body, 0, call->body_len))
                        return http_call_reject(call, 400, "bad_request", "request body contains a NUL byte");
                call->body[call->body_len] = 0;
                req->body = call->body;
        } else
                req->body = NULL;
        req->body_len = call->body_len;

        http_conn_arrived(conn);
        call->state = HTTP_CALL_PENDING;
        call->in_handler = true;
        s->handler(call, req, s->userdata);
        call->in_handler = false;
        if (call->state == HTTP_CALL_ANSWERED)
                return http_call_queue(call);
        MHD_suspend_connection(conn);
        call->suspended = true;
        return MHD_YES;
}

static enum MHD_Result http_on_access(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                                      const char *version, const char *upload_data, size_t *upload_data_size,
                                      void **con_cls) {
        HttpCall *call = *con_cls;
        (void) cls;
        (void) url;
        (void) version;

        if (!call)
                return MHD_NO; /* http_on_uri() could not allocate it */
        switch (call->state) {
        case HTTP_CALL_ANSWERED:
                return http_call_queue(call);
        case HTTP_CALL_DONE:
                *upload_data_size = 0;
                return MHD_YES;
        case HTTP_CALL_PENDING:
                if (call->aborted)
                        return MHD_NO;
                /* Resumed without an answer (should not happen): wait again. */
                MHD_suspend_connection(conn);
                call->suspended = true;
                return MHD_YES;
        case HTTP_CALL_READING:
                break;
        }
        if (!call->started)
                return http_on_headers(call, conn, method);
        if (*upload_data_size > 0)
                return http_on_upload(call, upload_data, upload_data_size);
        return http_on_complete(call, conn);
}

/* Called by MHD with the raw request target before it parses it; the result becomes the
 * request's context (*con_cls), so every request has a call from the start. */
static void *http_on_uri(void *cls, const char *uri, struct MHD_Connection *conn) {
        HttpListener *l = cls;
        HttpCall *call = calloc(1, sizeof(HttpCall));
        if (!call)
                return NULL;
        call->uri = strdup(uri ? uri : "");
        if (!call->uri) {
                free(call);
                return NULL;
        }
        call->conn = conn;
        call->listener = l;
        call->req.query = "";
        call->req.peer_uid = (uid_t) -1;
        http_call_link(l->server, call);
        l->server->counters.requests++;
        return call;
}

static void http_on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                              enum MHD_RequestTerminationCode toe) {
        HttpCall *call = *con_cls;
        (void) cls;
        (void) conn;
        *con_cls = NULL;
        if (!call)
                return;
        if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
                log_debug("http: %s %s ended early (%d)", call->method ? call->method : "-", call->uri, (int) toe);
        if (call->state == HTTP_CALL_PENDING) {
                /* The handler still holds the call: it stays valid, and answering it frees it. */
                http_call_unlink(call);
                return;
        }
        http_call_free(call);
}

/* --- the strict request head (RFC 9112) --- */

static bool http_is_tchar(unsigned char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
               (c != 0 && strchr("!#$%&'*+-.^_`|~", c));
}

_printf_(6, 7) static int http_head_fail(HttpHead *h, unsigned status, const char *code, char *err, size_t errlen,
                                         const char *fmt, ...) {
        va_list ap;
        h->status = status;
        h->code = code;
        va_start(ap, fmt);
        (void) vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        return -EBADMSG;
}

#define HEAD_FAIL(status, code, ...) http_head_fail(ret, status, code, err, errlen, __VA_ARGS__)

static bool http_name_is(const unsigned char *n, size_t len, const char *want) {
        return strlen(want) == len && strncasecmp((const char *) n, want, len) == 0;
}

/* One header line's meaning, where it matters for framing or authentication. */
static int http_head_field(HttpHead *ret, const unsigned char *n, size_t nlen, const unsigned char *v, size_t vlen,
                           unsigned *seen, char *err, size_t errlen) {
        enum { SEEN_HOST = 1, SEEN_AUTH = 2, SEEN_TE = 4 };
        if (http_name_is(n, nlen, "Content-Length")) {
                /* Even two equal values: a list or a repeat is how request smuggling starts. */
                if (ret->has_length)
                        return HEAD_FAIL(400, "bad_request", "more than one Content-Length");
                if (vlen == 0)
                        return HEAD_FAIL(400, "bad_request", "malformed Content-Length");
                uint64_t x = 0;
                for (size_t i = 0; i < vlen; i++) {
                        if (v[i] < '0' || v[i] > '9')
                                return HEAD_FAIL(400, "bad_request", "malformed Content-Length");
                        if (x > (UINT64_MAX - 9) / 10)
                                x = UINT64_MAX; /* saturates: far over any limit */
                        else
                                x = x * 10 + (uint64_t) (v[i] - '0');
                }
                ret->has_length = true;
                ret->length = x;
        } else if (http_name_is(n, nlen, "Transfer-Encoding")) {
                if (*seen & SEEN_TE)
                        return HEAD_FAIL(400, "bad_request", "more than one Transfer-Encoding");
                *seen |= SEEN_TE;
                if (!http_name_is(v, vlen, "chunked"))
                        return HEAD_FAIL(501, "not_implemented",
                                         "transfer coding \"%.*s\" is not supported (only chunked)",
                                         (int) MIN(vlen, (size_t) 64), (const char *) v);
                ret->chunked = true;
        } else if (http_name_is(n, nlen, "Host")) {
                if (*seen & SEEN_HOST)
                        return HEAD_FAIL(400, "bad_request", "more than one Host");
                *seen |= SEEN_HOST;
        } else if (http_name_is(n, nlen, "Authorization")) {
                if (*seen & SEEN_AUTH)
                        return HEAD_FAIL(400, "bad_request", "more than one Authorization");
                *seen |= SEEN_AUTH;
                ret->authorization = (const char *) v;
                ret->authorization_len = vlen;
        }
        return 0;
}

/* The request line at p[*pos…len): request-line = method SP request-target SP HTTP-version CRLF.
 * Returns 1 with *pos after it, 0 when it is incomplete, or a negative errno (HEAD_FAIL). */
static int http_request_line(const unsigned char *p, size_t len, size_t *pos, HttpHead *ret, char *err, size_t errlen) {
        size_t i = *pos;
        while (i < len && http_is_tchar(p[i]))
                i++;
        if (i > 32)
                return HEAD_FAIL(400, "bad_request", "malformed request line (method)");
        if (i == len)
                return 0;
        if (i == 0 || p[i] != ' ')
                return HEAD_FAIL(400, "bad_request", "malformed request line");
        size_t t0 = ++i;
        while (i < len && p[i] > 0x20 && p[i] < 0x7f)
                i++;
        if (i - t0 > HTTP_URI_MAX)
                return HEAD_FAIL(414, "uri_too_long", "request URI is over %zu bytes", HTTP_URI_MAX);
        if (i == len)
                return 0;
        if (p[i] != ' ') {
                if (p[i] == 0)
                        return HEAD_FAIL(400, "bad_request", "request URI contains a NUL byte");
                if (p[i] == '\r' || p[i] == '\n')
                        return HEAD_FAIL(400, "bad_request", "malformed request line (no HTTP version)");
                return HEAD_FAIL(400, "bad_request", "request URI contains a byte that is not printable ASCII");
        }
        if (i == t0)
                return HEAD_FAIL(400, "bad_request", "malformed request line (empty target)");
        i++;
        static const char proto[] = "HTTP/";
        for (size_t k = 0; k < 5; k++, i++) {
                if (i == len)
                        return 0;
                if (p[i] != (unsigned char) proto[k])
                        return HEAD_FAIL(400, "bad_request", "malformed request line (HTTP version)");
        }
        if (len - i < 3)
                return len - i >= 1 && (p[i] < '0' || p[i] > '9')
                               ? HEAD_FAIL(400, "bad_request", "malformed request line (HTTP version)")
                               : 0;
        if (p[i] < '0' || p[i] > '9' || p[i + 1] != '.' || p[i + 2] < '0' || p[i + 2] > '9')
                return HEAD_FAIL(400, "bad_request", "malformed request line (HTTP version)");
        if (p[i] != '1' || (p[i + 2] != '0' && p[i + 2] != '1'))
                return HEAD_FAIL(505, "http_version_not_supported", "HTTP/%c.%c is not supported (only 1.0, 1.1)", p[i],
                                 p[i + 2]);
        ret->http10 = p[i + 2] == '0';
        i += 3;
        if (i == len)
                return 0;
        if (p[i] != '\r')
                return HEAD_FAIL(400, "bad_request", "request line must end in CRLF");
        if (++i == len)
                return 0;
        if (p[i] != '\n')
                return HEAD_FAIL(400, "bad_request", "request line must end in CRLF");
        *pos = i + 1;
        return 1;
}

/* One header line at p[*pos…len): field-name ":" OWS field-value OWS CRLF, or the blank line that
 * ends the head. Returns 1 (a header, recorded) or 2 (the end) with *pos after it, 0 when it is
 * incomplete, or a negative errno (HEAD_FAIL). */
static int http_header_line(const unsigned char *p, size_t len, size_t *pos, size_t *n_headers, unsigned *seen,
                            HttpHead *ret, char *err, size_t errlen) {
        size_t i = *pos;
        if (i == len)
                return 0;
        if (p[i] == '\r') {
                if (i + 1 == len)
                        return 0;
                if (p[i + 1] != '\n')
                        return HEAD_FAIL(400, "bad_request", "a bare CR in the header block");
                *pos = i + 2;
                return 2;
        }
        if (p[i] == ' ' || p[i] == '\t')
                return HEAD_FAIL(400, "bad_request", "a header line starts with whitespace (obsolete line folding)");
        size_t n0 = i;
        while (i < len && http_is_tchar(p[i]))
                i++;
        if (i == len)
                return 0;
        if (p[i] != ':') {
                if (p[i] == ' ' || p[i] == '\t')
                        return HEAD_FAIL(400, "bad_request", "whitespace between a header name and its colon");
                if (p[i] == 0)
                        return HEAD_FAIL(400, "bad_request", "a header contains a NUL byte");
                return HEAD_FAIL(400, "bad_request", "malformed header line");
        }
        if (i == n0)
                return HEAD_FAIL(400, "bad_request", "a header line without a name");
        size_t nlen = i - n0;
        i++;
        while (i < len && (p[i] == ' ' || p[i] == '\t'))
                i++;
        size_t v0 = i;
        /* field-vchar, SP, HTAB and obs-text; no other control byte. */
        while (i < len && (p[i] == '\t' || (p[i] >= 0x20 && p[i] != 0x7f)))
                i++;
        if (i == len)
                return 0;
        if (p[i] != '\r') {
                if (p[i] == 0)
                        return HEAD_FAIL(400, "bad_request", "a header contains a NUL byte");
                if (p[i] == '\n')
                        return HEAD_FAIL(400, "bad_request", "a header line must end in CRLF");
                return HEAD_FAIL(400, "bad_request", "a header contains a control character");
        }
        if (i + 1 == len)
                return 0;
        if (p[i + 1] != '\n')
                return HEAD_FAIL(400, "bad_request", "a header contains a bare CR");
        size_t v1 = i;
        while (v1 > v0 && (p[v1 - 1] == ' ' || p[v1 - 1] == '\t'))
                v1--;
        if (++*n_headers > HTTP_HEADERS_MAX)
                return HEAD_FAIL(431, "header_fields_too_large", "more than %u header lines", HTTP_HEADERS_MAX);
        int r = http_head_field(ret, p + n0, nlen, p + v0, v1 - v0, seen, err, errlen);
        if (r < 0)
                return r;
        *pos = i + 2;
        return 1;
}

int http_head_parse(const char *buf, size_t len, HttpHead *ret, char *err, size_t errlen) {
        const unsigned char *p = (const unsigned char *) buf;
        size_t i = 0, n_headers = 0;
        unsigned seen = 0;

        *ret = (HttpHead){ 0 };
        if (errlen > 0)
                err[0] = 0;
        int r = http_request_line(p, len, &i, ret, err, errlen);
        if (r <= 0)
                return r;
        while ((r = http_header_line(p, len, &i, &n_headers, &seen, ret, err, errlen)) == 1)
                ;
        if (r <= 0)
                return r;
        if (ret->chunked && ret->has_length)
                return HEAD_FAIL(400, "bad_request", "both Content-Length and Transfer-Encoding");
        if (ret->chunked && ret->http10)
                return HEAD_FAIL(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request");
        if (i > HTTP_HEAD_MAX)
                return HEAD_FAIL(431, "header_fields_too_large", "request head is over %zu bytes", HTTP_HEAD_MAX);
        return (int) i;
}

#undef HEAD_FAIL

/* --- connections before the HTTP library sees them --- */

static const char *http_reason(unsigned status) {
        switch (status) {
        case 400:
                return "Bad Request";
        case 401:
                return "Unauthorized";
        case 408:
                return "Request Timeout";
        case 413:
                return "Content Too Large";
        case 414:
                return "URI Too Long";
        case 431:
                return "Request Header Fields Too Large";
        case 501:
                return "Not Implemented";
        case 503:
                return "Service Unavailable";
        case 505:
                return "HTTP Version Not Supported";
        default:
                return "Error";
        }
}

/* A reply written by us (the request never reached MHD): the status line, a JSON error, closed. */
static void http_conn_reply_raw(HttpConn *c, unsigned status, const char *code, const char *msg) {
        HttpServer *s = c->listener->server;
        char body[640], sane[512], head[512];

        snprintf(sane, sizeof(sane), "%s", msg);
        http_utf8_sanitize(sane);
        json_t *j = http_error_json(c->flat_errors, code, sane);
        size_t blen = j ? json_dumpb(j, body, sizeof(body) - 1, JSON_COMPACT) : 0;
        json_decref(j);
        if (blen == 0 || blen >= sizeof(body) - 1)
                blen = (size_t) snprintf(body, sizeof(body),
                                         c->flat_errors ? "{\"code\":\"%s\",\"message\":\"\"}"
                                                        : "{\"error\":{\"code\":\"%s\",\"message\":\"\"}}",
                                         code);
        body[blen++] = '\n';
        const char *reason = http_reason(status);
        int hlen = snprintf(head, sizeof(head),
                            "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                            "Connection: close\r\n%s\r\n",
                            status, reason ? reason : "Error", blen,
                            status == 401 ? "WWW-Authenticate: Bearer realm=\"ballast\"\r\n" : "");
        struct iovec iov[2] = { { head, (size_t) hlen }, { body, blen } };
        struct msghdr mh = { .msg_iov = iov, .msg_iovlen = 2 };
        /* A fresh socket's send buffer holds this; a peer that does not read loses the reply. No
         * SIGPIPE when the peer has gone already. */
        (void) sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);

        s->counters.requests++;
        if (status >= 500)
                s->counters.errors_5xx++;
        else
                s->counters.errors_4xx++;
        if (status == 401)
                s->counters.unauthorized++;
        log_debug("http: %s: %u %s", c->listener->tcp ? "TCP" : "Unix", status, sane);
}

static void http_conn_free(HttpConn *c) {
        if (!c)
                return;
        HttpListener *l = c->listener;
        HttpServer *s = l->server;
        if (c->prev)
                c->prev->next = c->next;
        else
                s->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        l->n_conns--;
        if (c->state == HTTP_CONN_HEAD && l->tcp)
                l->n_unauth--;
        if (s->adding == c)
                s->adding = NULL;
        c->io = ev_io_free(c->io);
        c->timer = ev_timer_free(c->timer);
        safe_close(c->fd);
        free(c);
}

/* Reads and drops what the peer sent (so that closing sends FIN, not RST, when possible). */
static bool http_conn_drain(HttpConn *c) {
        char *buf = c->listener->server->scratch;
        for (unsigned k = 0; k < 16; k++) {
                ssize_t n = recv(c->fd, buf, HTTP_HEAD_MAX, MSG_DONTWAIT);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK); /* false: EOF or error */
        }
        return true;
}

/* Answers, then waits (at most HTTP_LINGER) for the peer to close, dropping what it still sends. */
static void http_conn_reject(HttpConn *c, unsigned status, const char *code, const char *msg) {
        if (c->state == HTTP_CONN_HEAD && c->listener->tcp)
                c->listener->n_unauth--;
        c->state = HTTP_CONN_LINGER;
        (void) http_conn_drain(c);
        http_conn_reply_raw(c, status, code, msg);
        (void) shutdown(c->fd, SHUT_WR);
        if (!http_conn_drain(c))
                return http_conn_free(c);
        ev_timer_set(c->timer, usec_add(now_mono(), HTTP_LINGER));
}

/* The request head is in and valid: MHD takes the socket from here. */
static void http_conn_handoff(HttpConn *c) {
        HttpListener *l = c->listener;
        HttpServer *s = l->server;
        c->io = ev_io_free(c->io);
        /* The body has a total deadline too (a trickled body would otherwise only meet MHD's idle
         * timeout); it ends when the request reaches the handler (http_conn_arrived()). */
        ev_timer_set(c->timer, usec_add(now_mono(), s->body_timeout));
        if (l->tcp)
                l->n_unauth--;
        c->state = HTTP_CONN_MHD;
        c->mhd_fd = TAKE_FD(c->fd);
        s->adding = c;
        s->adding_closed = false;
        /* MHD closes the socket when it fails; it reports the connection closed if it had reported
         * it started (http_on_connection() leaves freeing to us while we are in here). */
        enum MHD_Result r = MHD_add_connection(l->daemon, c->mhd_fd, (struct sockaddr *) &c->addr, c->addr_len);
        s->adding = NULL;
        if (r != MHD_YES)
                log_debug_errno(errno, "http: MHD_add_connection() failed: %m");
        if (s->adding_closed || (r != MHD_YES && !c->started))
                http_conn_free(c);
        http_server_kick(s);
}

static void http_conn_on_timer(EvTimer *t, void *userdata) {
        HttpConn *c = userdata;
        (void) t;
        if (c->state == HTTP_CONN_HEAD) {
                c->listener->server->counters.timeouts++;
                return http_conn_reject(c, 408, "request_timeout", "the request head did not arrive in time");
        }
        if (c->state == HTTP_CONN_LINGER)
                return http_conn_free(c);
        /* HTTP_CONN_MHD, the body is late: MHD cannot answer in the middle of an upload, so cut the
         * connection; MHD sees it at once and closes it (and reports it, which frees c). */
        c->listener->server->counters.timeouts++;
        log_debug("http: request body not complete within the deadline, closing the connection");
        (void) shutdown(c->mhd_fd, SHUT_RDWR);
        http_server_kick(c->listener->server);
}

/* Connections of this listener from the same peer (uid or address). */
static unsigned http_conn_count_peer(const HttpListener *l, const HttpConn *c) {
        unsigned n = 0;
        for (const HttpConn *o = l->server->conns; o; o = o->next)
                if (o->listener == l && (l->tcp ? memcmp(o->peer, c->peer, sizeof(c->peer)) == 0 : o->uid == c->uid))
                        n++;
        return n;
}

/* The oldest connection of l still waiting for its request head, or NULL. */
static HttpConn *http_conn_oldest_head(HttpListener *l) {
        HttpConn *oldest = NULL;
        for (HttpConn *o = l->server->conns; o; o = o->next)
                if (o->listener == l && o->state == HTTP_CONN_HEAD)
                        oldest = o; /* the list is newest first */
        return oldest;
}

/* Why a new connection may not stay, or NULL. On TCP nobody is known before the token arrives:
 * a newcomer over a limit pushes out the oldest connection still waiting for its head (a client
 * that sends its request at once is through long before a flood can push it out). */
static const char *http_conn_admit(HttpListener *l, HttpConn *c) {
        HttpServer *s = l->server;
        if (l->tcp) {
                if (l->n_unauth < s->max_unauth && l->n_conns < s->max_conn)
                        return NULL;
                HttpConn *oldest = http_conn_oldest_head(l);
                if (!oldest)
                        return "too many connections";
                s->counters.refused++;
                http_conn_reject(oldest, 503, "unavailable", "too many unauthenticated connections");
                return NULL;
        }
        if (l->n_conns >= s->max_conn)
                return "too many connections";
        if (!c->privileged && l->n_conns >= s->max_conn - s->reserved)
                return "too many connections (the rest are reserved for root and the write group)";
        if (c->uid != 0 && c->uid != s->euid && http_conn_count_peer(l, c) >= s->max_per_peer)
                return "too many connections from this user";
        return NULL;
}

/* TCP, once the token is known: the limits on authenticated connections. */
static const char *http_conn_admit_authed(HttpListener *l, HttpConn *c) {
        HttpServer *s = l->server;
        unsigned authed = 0, same = 0;
        for (const HttpConn *o = s->conns; o; o = o->next)
                if (o->listener == l && o->state == HTTP_CONN_MHD) {
                        authed++;
                        if (memcmp(o->peer, c->peer, sizeof(c->peer)) == 0)
                                same++;
                }
        if (!c->privileged && authed >= s->max_conn - s->reserved)
                return "too many connections (the rest are reserved for write tokens)";
        if (same >= s->max_per_peer)
                return "too many connections from this address";
        return NULL;
}

static void http_conn_on_io(EvIo *io, int fd, uint32_t revents, void *userdata) {
        HttpConn *c = userdata;
        HttpListener *l = c->listener;
        HttpServer *s = l->server;
        (void) io;

        if (c->state == HTTP_CONN_LINGER) {
                if (!http_conn_drain(c) || (revents & (EPOLLHUP | EPOLLERR)))
                        http_conn_free(c);
                return;
        }
        ssize_t n;
        do
                n = recv(fd, s->scratch, HTTP_HEAD_MAX + 1, MSG_PEEK | MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
        if (n <= 0)
                return http_conn_free(c); /* gone before a whole request: nobody to answer */

        /* The target's start decides the shape of the errors answered from here on. */
        size_t m = 0;
        while (m < (size_t) n && m < 32 && http_is_tchar((unsigned char) s->scratch[m]))
                m++;
        c->flat_errors =
                (size_t) n > m && s->scratch[m] == ' ' && http_flat_errors(s, s->scratch + m + 1, (size_t) n - m - 1);

        HttpHead h;
        char msg[256];
        int r = http_head_parse(s->scratch, (size_t) n, &h, msg, sizeof(msg));
        if (r < 0)
                return http_conn_reject(c, h.status, h.code, msg);
        if (r == 0) {
                if ((size_t) n > HTTP_HEAD_MAX)
                        return http_conn_reject(c, 431, "header_fields_too_large", "request head is over 8 KiB");
                if (revents & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
                        return http_conn_free(c); /* the rest can never come */
                return;
        }
        if (l->tcp) {
                const HttpToken *t = http_token_parse(s, h.authorization, h.authorization_len);
                if (!t)
                        return http_conn_reject(c, 401, "unauthorized",
                                                "a valid token is required (Authorization: Bearer TOKEN)");
                c->privileged = t->write;
                const char *why = http_conn_admit_authed(l, c);
                if (why) {
                        s->counters.refused++;
                        return http_conn_reject(c, 503, "unavailable", why);
                }
        }
        /* A length libmicrohttpd cannot hold (it would answer its own HTML error); other lengths
         * over HTTP_BODY_MAX get 413 from http_on_headers(), after the write check. */
        if (h.has_length && h.length > (uint64_t) INT64_MAX)
                return http_conn_reject(c, 413, "payload_too_large", "request body is over 64 KiB");
        http_conn_handoff(c);
}

static int http_conn_new(HttpListener *l, int fd, const struct sockaddr_storage *ss, socklen_t len) {
        HttpServer *s = l->server;
        _cleanup_close_ int owned = fd;
        HttpConn *c = calloc(1, sizeof(HttpConn));
        if (!c)
                return -ENOMEM;
        *c = (HttpConn){ .listener = l, .fd = -1, .mhd_fd = -1, .state = HTTP_CONN_HEAD, .uid = (uid_t) -1 };
        memcpy(&c->addr, ss, MIN((size_t) len, sizeof(c->addr)));
        c->addr_len = len;
        if (l->tcp) {
                if (ss->ss_family == AF_INET6)
                        memcpy(c->peer, &((const struct sockaddr_in6 *) ss)->sin6_addr, 16);
                else if (ss->ss_family == AF_INET) {
                        c->peer[10] = c->peer[11] = 0xff;
                        memcpy(c->peer + 12, &((const struct sockaddr_in *) ss)->sin_addr, 4);
                }
        } else {
                struct ucred uc;
                socklen_t ul = sizeof(uc);
                if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &ul) == 0) {
                        c->uid = uc.uid;
                        c->privileged = uc.uid == 0 || uc.uid == s->euid ||
                                        (s->write_gid != (gid_t) -1 && http_peer_in_group(fd, &uc, s->write_gid));
                }
        }
        const char *why = s->stopping ? "the server is shutting down" : http_conn_admit(l, c);
        c->fd = TAKE_FD(owned);
        if (why) {
                /* Not linked: answered and closed at once. */
                s->counters.refused++;
                (void) http_conn_drain(c);
                http_conn_reply_raw(c, 503, "unavailable", why);
                safe_close(c->fd);
                free(c);
                return 0;
        }
        c->next = s->conns;
        if (s->conns)
                s->conns->prev = c;
        s->conns = c;
        l->n_conns++;
        if (l->tcp)
                l->n_unauth++;
        int r = ev_timer_add(s->ev, usec_add(now_mono(), s->header_timeout), http_conn_on_timer, c, &c->timer);
        if (r >= 0)
                r = ev_io_add(s->ev, c->fd, EPOLLIN | EPOLLRDHUP | EPOLLET, http_conn_on_io, c, &c->io);
        if (r < 0) {
                http_conn_free(c);
                return r;
        }
        return 0;
}

static void http_listener_resume(EvTimer *t, void *userdata) {
        HttpListener *l = userdata;
        (void) t;
        (void) ev_io_set_events(l->accept_io, EPOLLIN);
}

static void http_on_accept(EvIo *io, int fd, uint32_t revents, void *userdata) {
        HttpListener *l = userdata;
        HttpServer *s = l->server;
        (void) io;
        (void) revents;
        for (unsigned k = 0; k < 64; k++) {
                struct sockaddr_storage ss;
                socklen_t len = sizeof(ss);
                int cfd = accept4(fd, (struct sockaddr *) &ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (cfd < 0) {
                        if (errno == EINTR || errno == ECONNABORTED)
                                continue;
                        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                                /* Level-triggered: accepting again at once would spin. Pause, growing
                                 * the pause while it keeps happening. */
                                l->backoff_delay = MIN(MAX(l->backoff_delay * 2, HTTP_ACCEPT_BACKOFF_MIN),
                                                       HTTP_ACCEPT_BACKOFF_MAX);
                                s->counters.accept_backoff++;
                                log_debug_errno(errno, "http: accept(): %m, pausing for %llu ms",
                                                (unsigned long long) (l->backoff_delay / USEC_PER_MSEC));
                                (void) ev_io_set_events(l->accept_io, 0);
                                ev_timer_set(l->backoff, usec_add(now_mono(), l->backoff_delay));
                        } else if (errno != EAGAIN && errno != EWOULDBLOCK)
                                log_debug_errno(errno, "http: accept(): %m");
                        return;
                }
                l->backoff_delay = 0;
                if (http_conn_new(l, cfd, &ss, len) < 0)
                        log_debug("http: cannot set up a new connection, closed it");
        }
}

int http_server_add_fd(HttpServer *s, int fd) {
        if (!s || s->n_listeners == 0) {
                safe_close(fd);
                return -EINVAL;
        }
        struct sockaddr_storage ss = { .ss_family = AF_UNIX };
        int flags = fcntl(fd, F_GETFL);
        if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
                safe_close(fd);
                return -errno;
        }
        return http_conn_new(&s->listeners[0], fd, &ss, sizeof(sa_family_t));
}

/* --- libmicrohttpd on our loop --- */

_printf_(2, 0) static void http_on_mhd_log(void *cls, const char *fmt, va_list ap) {
        char buf[512];
        (void) cls;
        (void) vsnprintf(buf, sizeof(buf), fmt, ap);
        size_t n = strlen(buf);
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = 0;
        log_debug("libmicrohttpd: %s", buf);
}

/* MHD calls this on a broken invariant and must not get control back. Logged as an error, not
 * debug: the process is about to abort and this is the only trace of why. */
static void http_on_mhd_panic(void *cls, const char *file, unsigned line, const char *reason) {
        (void) cls;
        log_error("libmicrohttpd panic at %s:%u: %s", file ? file : "?", line, reason ? reason : "(no reason)");
        abort();
}

static void http_server_rearm(HttpServer *s) {
        usec_t when = USEC_INFINITY;
        usec_t now = now_mono();
        for (size_t i = 0; i < s->n_listeners; i++) {
                MHD_UNSIGNED_LONG_LONG ms;
                if (MHD_get_timeout(s->listeners[i].daemon, &ms) != MHD_YES)
                        continue;
                usec_t t =
                        ms > (USEC_INFINITY - now) / USEC_PER_MSEC ? USEC_INFINITY : now + (usec_t) ms * USEC_PER_MSEC;
                when = MIN(when, t);
        }
        if (s->run_again) {
                s->run_again = false;
                when = 0;
        }
        ev_timer_set(s->timer, when);
}

static void http_on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
                               enum MHD_ConnectionNotificationCode toe) {
        HttpListener *l = cls;
        HttpServer *s = l->server;
        if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
                HttpConn *c = s->adding;
                if (!c) {
                        /* Not from inside MHD_add_connection(): find it by its socket. */
                        const union MHD_ConnectionInfo *ci =
                                MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
                        for (c = s->conns; c && ci; c = c->next)
                                if (c->state == HTTP_CONN_MHD && !c->started && c->mhd_fd == ci->connect_fd)
                                        break;
                }
                if (c)
                        c->started = true;
                *socket_context = c;
                return;
        }
        HttpConn *c = *socket_context;
        *socket_context = NULL;
        if (!c)
                return;
        if (c == s->adding)
                s->adding_closed = true; /* http_conn_handoff() frees it */
        else
                http_conn_free(c);
}

static void http_listener_run(HttpListener *l) {
        l->server->running++;
        if (MHD_run(l->daemon) != MHD_YES)
                log_debug("http: MHD_run() failed");
        l->server->running--;
}

/* Makes the loop run MHD soon (after an asynchronous reply). Inside MHD_run() the rearm that
 * follows it takes care of it. */
static void http_server_kick(HttpServer *s) {
        if (!s)
                return;
        s->run_again = true;
        if (s->running == 0)
                http_server_rearm(s);
}

static void http_on_io(EvIo *io, int fd, uint32_t revents, void *userdata) {
        HttpListener *l = userdata;
        (void) io;
        (void) fd;
        (void) revents;
        http_listener_run(l);
        http_server_rearm(l->server);
}

static void http_on_timer(EvTimer *t, void *userdata) {
        HttpServer *s = userdata;
        (void) t;
        for (size_t i = 0; i < s->n_listeners; i++)
                http_listener_run(&s->listeners[i]);
        http_server_rearm(s);
}

/* --- listening sockets --- */

static int http_listen_unix(HttpServer *s, const char *path, char *err, size_t errlen) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t n = strlen(path);
        int r;

        if (n == 0 || n >= sizeof(sa.sun_path) || path[0] != '/') {
                snprintf(err, errlen, "API socket path '%s' must be absolute and shorter than %zu bytes", path,
                         sizeof(sa.sun_path));
                return -EINVAL;
        }
        memcpy(sa.sun_path, path, n);
        socklen_t salen = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + 1);

        r = fs_mkdir_p(path, 0755, true, err, errlen); /* 0755 whatever the umask */
        if (r < 0)
                return r;

        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = negative_errno();
                snprintf(err, errlen, "socket(): %s", strerror(-r));
                return r;
        }

        struct stat st;
        if (lstat(path, &st) == 0) {
                if (!S_ISSOCK(st.st_mode)) {
                        snprintf(err, errlen, "'%s' exists and is not a socket, refusing to replace it", path);
                        return -EEXIST;
                }
                /* A socket file: stale unless somebody still accepts on it. */
                _cleanup_close_ int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
                if (probe >= 0 && (connect(probe, (struct sockaddr *) &sa, salen) == 0 || errno == EAGAIN)) {
                        snprintf(err, errlen, "'%s' is in use by another process", path);
                        return -EADDRINUSE;
                }
                if (unlink(path) < 0 && errno != ENOENT) {
                        r = negative_errno();
                        snprintf(err, errlen, "cannot remove stale socket '%s': %s", path, strerror(-r));
                        return r;
                }
        } else if (errno != ENOENT) {
                r = negative_errno();
                snprintf(err, errlen, "cannot stat '%s': %s", path, strerror(-r));
                return r;
        }

        if (bind(fd, (struct sockaddr *) &sa, salen) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot bind '%s': %s", sa.sun_path, strerror(-r));
                return r;
        }
        /* Anyone may connect: what they may do is decided per request from their credentials. */
        if (chmod(path, 0666) < 0 || lstat(path, &st) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot chmod '%s': %s", sa.sun_path, strerror(-r));
                (void) unlink(sa.sun_path);
                return r;
        }
        if (listen(fd, HTTP_LISTEN_BACKLOG) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot listen on '%s': %s", sa.sun_path, strerror(-r));
                (void) unlink(sa.sun_path);
                return r;
        }
        s->socket_path = strdup(sa.sun_path);
        if (!s->socket_path) {
                (void) unlink(sa.sun_path);
                return -ENOMEM;
        }
        s->socket_dev = st.st_dev;
        s->socket_ino = st.st_ino;
        return TAKE_FD(fd);
}

static int http_parse_listen(const char *spec, struct sockaddr_storage *ss, socklen_t *ret_len, char *err,
                             size_t errlen) {
        char host[64];
        const char *port;

        memset(ss, 0, sizeof(*ss));
        if (spec[0] == '[') {
                const char *e = strchr(spec, ']');
                if (!e || e[1] != ':' || (size_t) (e - spec - 1) >= sizeof(host))
                        goto bad;
                memcpy(host, spec + 1, (size_t) (e - spec - 1));
                host[e - spec - 1] = 0;
                port = e + 2;
        } else {
                const char *c = strrchr(spec, ':');
                if (!c || (size_t) (c - spec) >= sizeof(host))
                        goto bad;
                memcpy(host, spec, (size_t) (c - spec));
                host[c - spec] = 0;
                port = c + 1;
        }
        if (port[0] < '0' || port[0] > '9' || strlen(port) > 5 || port[strspn(port, "0123456789")] != 0)
                goto bad;
        unsigned long p = strtoul(port, NULL, 10);
        if (p > 65535)
                goto bad;

        struct sockaddr_in *in4 = (struct sockaddr_in *) ss;
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *) ss;
        if (spec[0] != '[' && inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
                if ((ntohl(in4->sin_addr.s_addr) >> 24) != 127) {
                        snprintf(err, errlen, "API listen address '%s' is not loopback (127.0.0.0/8 or [::1])", spec);
                        return -EPERM;
                }
                in4->sin_family = AF_INET;
                in4->sin_port = htons((uint16_t) p);
                *ret_len = sizeof(*in4);
                return 0;
        }
        if (spec[0] == '[' && inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
                if (!IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr)) {
                        snprintf(err, errlen, "API listen address '%s' is not loopback (127.0.0.0/8 or [::1])", spec);
                        return -EPERM;
                }
                in6->sin6_family = AF_INET6;
                in6->sin6_port = htons((uint16_t) p);
                *ret_len = sizeof(*in6);
                return 0;
        }
bad:
        snprintf(err, errlen, "API listen address '%s' must be 127.0.0.1:PORT or [::1]:PORT", spec);
        return -EINVAL;
}

static int http_listen_tcp(HttpServer *s, const char *spec, char *err, size_t errlen) {
        struct sockaddr_storage ss;
        socklen_t len;
        int r = http_parse_listen(spec, &ss, &len, err, errlen);
        if (r < 0)
                return r;
        _cleanup_close_ int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = negative_errno();
                snprintf(err, errlen, "socket(): %s", strerror(-r));
                return r;
        }
        int one = 1;
        (void) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        if (ss.ss_family == AF_INET6)
                (void) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
        if (bind(fd, (struct sockaddr *) &ss, len) < 0 || listen(fd, HTTP_LISTEN_BACKLOG) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot listen on %s: %s", spec, strerror(-r));
                return r;
        }
        len = sizeof(ss);
        if (getsockname(fd, (struct sockaddr *) &ss, &len) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "getsockname(%s): %s", spec, strerror(-r));
                return r;
        }
        s->tcp_port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *) &ss)->sin6_port
                                                     : ((struct sockaddr_in *) &ss)->sin_port);
        return TAKE_FD(fd);
}

/* --- tokens --- */

static void http_tokens_free(HttpServer *s) {
        for (size_t i = 0; i < s->n_tokens; i++) {
                explicit_bzero(s->tokens[i].token, s->tokens[i].len);
                free(s->tokens[i].token);
        }
        free(s->tokens);
        s->tokens = NULL;
        s->n_tokens = 0;
}

static int http_tokens_parse(HttpServer *s, const char *path, char *text, char *err, size_t errlen) {
        unsigned line = 0;
        char *next;
        for (char *l = text; l; l = next) {
                line++;
                next = strchr(l, '\n');
                if (next)
                        *next++ = 0;
                size_t n = strlen(l);
                while (n > 0 && (l[n - 1] == '\r' || l[n - 1] == ' ' || l[n - 1] == '\t'))
                        l[--n] = 0;
                l += strspn(l, " \t");
                if (*l == 0 || *l == '#')
                        continue;

                char *tok = l;
                size_t tlen = strcspn(tok, " \t");
                char *scope = tok + tlen;
                scope += strspn(scope, " \t");
                if (*scope == 0) {
                        snprintf(err, errlen, "%s:%u: expected \"TOKEN read\" or \"TOKEN write\"", path, line);
                        return -EINVAL;
                }
                tok[tlen] = 0;
                bool write;
                if (strcmp(scope, "read") == 0)
                        write = false;
                else if (strcmp(scope, "write") == 0)
                        write = true;
                else {
                        snprintf(err, errlen, "%s:%u: scope must be \"read\" or \"write\"", path, line);
                        return -EINVAL;
                }
                for (size_t i = 0; i < tlen; i++)
                        if ((unsigned char) tok[i] < 0x21 || (unsigned char) tok[i] > 0x7e) {
                                snprintf(err, errlen, "%s:%u: token contains a byte that is not printable ASCII", path,
                                         line);
                                return -EINVAL;
                        }
                for (size_t i = 0; i < s->n_tokens; i++)
                        if (s->tokens[i].len == tlen && memcmp(s->tokens[i].token, tok, tlen) == 0) {
                                snprintf(err, errlen, "%s:%u: duplicate token", path, line);
                                return -EINVAL;
                        }
                HttpToken *t = realloc(s->tokens, (s->n_tokens + 1) * sizeof(HttpToken));
                if (!t)
                        return -ENOMEM;
                s->tokens = t;
                char *copy = strndup(tok, tlen);
                if (!copy)
                        return -ENOMEM;
                s->tokens[s->n_tokens++] = (HttpToken){ .token = copy, .len = tlen, .write = write };
        }
        return 0;
}

static int http_tokens_load(HttpServer *s, const char *path, char *err, size_t errlen) {
        int r;
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot open tokens file '%s': %s", path, strerror(-r));
                return r;
        }
        struct stat st;
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot stat tokens file '%s': %s", path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                snprintf(err, errlen, "tokens file '%s' is not a regular file", path);
                return -EINVAL;
        }
        if (st.st_mode & (S_IROTH | S_IWOTH)) {
                snprintf(err, errlen,
                         "tokens file '%s' is accessible by other users (mode %04o), refusing it; "
                         "chmod o-rw it",
                         path, (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        if (st.st_size > HTTP_TOKENS_FILE_MAX) {
                snprintf(err, errlen, "tokens file '%s' is larger than %lld bytes", path,
                         (long long) HTTP_TOKENS_FILE_MAX);
                return -EFBIG;
        }
        size_t size = (size_t) st.st_size;
        _cleanup_free_ char *text = malloc(size + 1);
        if (!text)
                return -ENOMEM;
        size_t n = 0;
        while (n < size) {
                ssize_t k = read(fd, text + n, size - n);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        r = negative_errno();
                        snprintf(err, errlen, "cannot read tokens file '%s': %s", path, strerror(-r));
                        return r;
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        text[n] = 0;
        if (memchr(text, 0, n)) {
                explicit_bzero(text, n);
                snprintf(err, errlen, "tokens file '%s' contains a NUL byte", path);
                return -EINVAL;
        }
        r = http_tokens_parse(s, path, text, err, errlen);
        explicit_bzero(text, n);
        if (r == -ENOMEM)
                snprintf(err, errlen, "out of memory reading '%s'", path);
        return r;
}

int http_server_reload_tokens(HttpServer *s, const char *path, char *err, size_t errlen) {
        HttpServer old = { .tokens = s->tokens, .n_tokens = s->n_tokens };
        s->tokens = NULL;
        s->n_tokens = 0;
        int r = http_tokens_load(s, path, err, errlen);
        if (r < 0) {
                http_tokens_free(s);
                s->tokens = old.tokens;
                s->n_tokens = old.n_tokens;
                return r;
        }
        http_tokens_free(&old);
        return (int) s->n_tokens;
}

/* --- the server --- */

static int http_listener_start(HttpServer *s, int fd, bool tcp, unsigned timeout_s, char *err, size_t errlen) {
        HttpListener *l = &s->listeners[s->n_listeners];
        /* No listening socket for MHD: we accept, check the request head, then add the connection. */
        unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG | MHD_USE_NO_LISTEN_SOCKET;
        *l = (HttpListener){ .server = s, .tcp = tcp, .fd = fd };
        s->n_listeners++; /* from here http_server_free() closes fd */
        /* The logger goes first so that MHD reports even option errors through it. */
        l->daemon = MHD_start_daemon(flags, 0, NULL, NULL, http_on_access, l, MHD_OPTION_EXTERNAL_LOGGER,
                                     http_on_mhd_log, NULL, MHD_OPTION_CONNECTION_LIMIT, s->max_conn,
                                     MHD_OPTION_CONNECTION_TIMEOUT, timeout_s, MHD_OPTION_CONNECTION_MEMORY_LIMIT,
                                     HTTP_CONNECTION_MEMORY, MHD_OPTION_URI_LOG_CALLBACK, http_on_uri, l,
                                     MHD_OPTION_NOTIFY_COMPLETED, http_on_completed, l, MHD_OPTION_NOTIFY_CONNECTION,
                                     http_on_connection, l, MHD_OPTION_END);
        if (!l->daemon) {
                snprintf(err, errlen, "cannot start the HTTP server on the %s listener", tcp ? "TCP" : "Unix");
                return -EIO;
        }
        int r = ev_timer_add(s->ev, USEC_INFINITY, http_listener_resume, l, &l->backoff);
        if (r >= 0)
                r = ev_io_add(s->ev, fd, EPOLLIN, http_on_accept, l, &l->accept_io);
        if (r < 0) {
                snprintf(err, errlen, "cannot watch the API socket: %s", strerror(-r));
                return r;
        }
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(l->daemon, MHD_DAEMON_INFO_EPOLL_FD);
        if (!di) {
                snprintf(err, errlen, "libmicrohttpd has no epoll fd");
                return -EIO;
        }
        r = ev_io_add(s->ev, di->epoll_fd, EPOLLIN, http_on_io, l, &l->io);
        if (r < 0) {
                snprintf(err, errlen, "cannot watch the HTTP server's epoll fd: %s", strerror(-r));
                return r;
        }
        return 0;
}

int http_server_new(Ev *ev, const HttpServerConfig *cfg, http_handler handler, void *userdata, HttpServer **ret,
                    char *err, size_t errlen) {
        int r;

        if (!ev || !cfg || !handler || !ret || !cfg->socket_path) {
                snprintf(err, errlen, "HTTP server: missing %s",
                         !cfg || !cfg->socket_path ? "socket path" : "argument");
                return -EINVAL;
        }
        if (cfg->listen_tcp && !cfg->tokens_file) {
                snprintf(err, errlen, "API listen address '%s' needs a tokens file", cfg->listen_tcp);
                return -EINVAL;
        }
        MHD_set_panic_func(http_on_mhd_panic, NULL);

        HttpServer *s = calloc(1, sizeof(HttpServer));
        if (!s)
                return -ENOMEM;
        *s = (HttpServer){
                .ev = ev,
                .handler = handler,
                .userdata = userdata,
                .write_gid = cfg->write_gid,
                .euid = geteuid(),
                .unix_read_only = cfg->unix_read_only,
                .flat_error_prefix = cfg->flat_error_prefix,
        };
        s->max_conn = cfg->max_connections ? cfg->max_connections : HTTP_MAX_CONNECTIONS_DEFAULT;
        s->max_per_peer =
                cfg->max_connections_per_peer ? cfg->max_connections_per_peer : HTTP_MAX_CONNECTIONS_PER_PEER_DEFAULT;
        s->reserved = MIN(cfg->reserved_connections ? cfg->reserved_connections : HTTP_RESERVED_CONNECTIONS_DEFAULT,
                          s->max_conn / 2);
        s->max_unauth = cfg->max_unauthenticated ? cfg->max_unauthenticated : HTTP_MAX_UNAUTHENTICATED_DEFAULT;
        s->header_timeout = cfg->header_timeout ? cfg->header_timeout : HTTP_HEADER_TIMEOUT_DEFAULT;
        s->body_timeout = cfg->body_timeout ? cfg->body_timeout : HTTP_BODY_TIMEOUT_DEFAULT;
        usec_t timeout = cfg->connection_timeout ? cfg->connection_timeout : HTTP_CONNECTION_TIMEOUT_DEFAULT;
        unsigned timeout_s = (unsigned) MIN((timeout + USEC_PER_SEC - 1) / USEC_PER_SEC, (usec_t) UINT_MAX);

        r = ev_timer_add(ev, USEC_INFINITY, http_on_timer, s, &s->timer);
        if (r < 0) {
                snprintf(err, errlen, "cannot add the HTTP server's timer: %s", strerror(-r));
                goto fail;
        }
        if (cfg->listen_tcp) {
                r = http_tokens_load(s, cfg->tokens_file, err, errlen);
                if (r < 0)
                        goto fail;
        }
        r = http_listen_unix(s, cfg->socket_path, err, errlen);
        if (r < 0)
                goto fail;
        r = http_listener_start(s, r, false, timeout_s, err, errlen);
        if (r < 0)
                goto fail;
        if (cfg->listen_tcp) {
                r = http_listen_tcp(s, cfg->listen_tcp, err, errlen);
                if (r < 0)
                        goto fail;
                r = http_listener_start(s, r, true, timeout_s, err, errlen);
                if (r < 0)
                        goto fail;
        }
        http_server_rearm(s);
        *ret = s;
        return 0;
fail:
        http_server_free(s);
        return r;
}

HttpServer *http_server_free(HttpServer *s) {
        if (!s)
                return NULL;
        if (s->running > 0) {
                /* Stopping MHD from inside its own callback would free the connection under it. */
                log_error("http_server_free() called from inside the request handler");
                abort();
        }

        /* No new connections, and no new request reaches the handler from here on. */
        s->stopping = true;
        for (size_t i = 0; i < s->n_listeners; i++) {
                HttpListener *l = &s->listeners[i];
                l->accept_io = ev_io_free(l->accept_io);
                l->backoff = ev_timer_free(l->backoff);
                l->fd = safe_close(l->fd);
        }
        /* Connections still sending their request head get a 503 from us. */
        for (HttpConn *c = s->conns, *next; c; c = next) {
                next = c->next;
                if (c->state == HTTP_CONN_HEAD) {
                        (void) http_conn_drain(c);
                        http_conn_reply_raw(c, 503, "unavailable", "the server is shutting down");
                }
                if (c->state != HTTP_CONN_MHD)
                        http_conn_free(c);
        }

        /* MHD must not be stopped with suspended connections: resume them and let MHD_run() close
         * them (http_on_access() returns MHD_NO for an aborted call). Their calls become orphans
         * that the handler may still answer. */
        bool busy = false;
        for (HttpCall *c = s->calls; c; c = c->next) {
                if (c->state == HTTP_CALL_PENDING) {
                        c->aborted = true;
                        if (c->suspended) {
                                c->suspended = false;
                                MHD_resume_connection(c->conn);
                        }
                }
                if (c->state == HTTP_CALL_PENDING || c->state == HTTP_CALL_ANSWERED)
                        busy = true;
        }
        /* A resumed connection leaves MHD's suspended list only inside MHD_run(). */
        for (unsigned round = 0; busy && round < 4; round++) {
                for (size_t i = 0; i < s->n_listeners; i++)
                        if (s->listeners[i].daemon)
                                http_listener_run(&s->listeners[i]);
                busy = false;
                for (HttpCall *c = s->calls; c; c = c->next)
                        if (c->state == HTTP_CALL_PENDING || c->state == HTTP_CALL_ANSWERED)
                                busy = true;
        }

        for (size_t i = 0; i < s->n_listeners; i++) {
                HttpListener *l = &s->listeners[i];
                l->io = ev_io_free(l->io);
                if (l->daemon)
                        MHD_stop_daemon(l->daemon); /* closes every connection (and reports it) */
                l->daemon = NULL;
        }
        s->n_listeners = 0;
        while (s->conns) /* should be none: MHD reported each closed */
                http_conn_free(s->conns);
        /* Whatever MHD did not report as completed: the handler keeps pending calls, the rest go. */
        while (s->calls) {
                HttpCall *c = s->calls;
                if (c->state == HTTP_CALL_PENDING)
                        http_call_unlink(c);
                else
                        http_call_free(c);
        }

        if (s->socket_path) {
                struct stat st;
                /* Only our own socket: a newer daemon may have replaced it. */
                if (lstat(s->socket_path, &st) == 0 && st.st_dev == s->socket_dev && st.st_ino == s->socket_ino)
                        (void) unlink(s->socket_path);
                free(s->socket_path);
        }
        s->timer = ev_timer_free(s->timer);
        http_tokens_free(s);
        free(s);
        return NULL;
}

uint16_t http_server_tcp_port(const HttpServer *s) {
        return s ? s->tcp_port : 0;
}

void http_server_counters(const HttpServer *s, HttpCounters *ret) {
        *ret = s ? s->counters : (HttpCounters){ 0 };
}
