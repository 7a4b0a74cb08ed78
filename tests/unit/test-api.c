/* SPDX-License-Identifier: MIT */
/* The API transport (src/api/http.c): a server on a temporary Unix socket (and loopback TCP) with a
 * test handler on this process's loop, driven by a client thread that writes raw HTTP with plain
 * blocking sockets while the main thread runs the loop. The client only records what it read;
 * every assertion runs in the main thread after the client is joined. Tests that need another
 * uid fork a child (setuid applies to every thread of a process). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "api/http.h"
#include "shared/ev.h"
#include "shared/log.h"
#include "shared/macro.h"

#define NOBODY    ((uid_t) 65534)
#define TEST_GID  ((gid_t) 4242)
#define MAX_HELD  64
#define MAX_CONNS 40

/* --- fixture and the test handler --- */

typedef struct Fixture Fixture;

typedef struct Later {
        Fixture *f;
        HttpCall *call;
        EvTimer *timer;
        char body[64];
} Later;

struct Fixture {
        char dir[64];
        char sock[128];
        char tokens[128];
        Ev *ev;
        HttpServer *srv;
        atomic_uint handled; /* read by client threads */
        bool last_can_write;
        uid_t last_peer_uid;
        HttpCall *held[MAX_HELD];
        size_t n_held;
        size_t n_later;
        usec_t async_delay;
};

static void on_later(EvTimer *t, void *userdata) {
        Later *l = userdata;
        http_call_reply_json(l->call, 200, json_pack("{s:b,s:s}", "async", 1, "body", l->body));
        l->f->n_later--;
        ev_timer_free(t);
        free(l);
}

static void test_handler(HttpCall *call, const HttpRequest *req, void *userdata) {
        Fixture *f = userdata;
        f->handled++;
        f->last_can_write = req->can_write;
        f->last_peer_uid = req->peer_uid;
        if (req->body)
                assert_int_equal(req->body[req->body_len], 0);
        else
                assert_int_equal(req->body_len, 0);

        if (strcmp(req->path, "/async") == 0) {
                Later *l = calloc(1, sizeof(Later));
                assert_non_null(l);
                l->f = f;
                l->call = call;
                snprintf(l->body, sizeof(l->body), "%.*s", (int) MIN(req->body_len, sizeof(l->body) - 1),
                         req->body ? req->body : "");
                assert_int_equal(ev_timer_add(f->ev, usec_add(now_mono(), f->async_delay), on_later, l, &l->timer), 0);
                f->n_later++;
                return;
        }
        if (strcmp(req->path, "/hold") == 0) {
                assert_true(f->n_held < MAX_HELD);
                f->held[f->n_held++] = call;
                return;
        }
        if (strcmp(req->path, "/text") == 0) {
                static const char text[] = "# HELP x y\nx 1\n";
                return http_call_reply_text(call, 200, "text/plain; version=0.0.4", text, sizeof(text) - 1);
        }
        if (strcmp(req->path, "/text-taken") == 0) {
                /* A body the call takes (freed with the response: LeakSanitizer would tell). */
                char *text = strdup("# HELP t taken\nt 2\n");
                assert_non_null(text);
                return http_call_reply_text_take(call, 200, "text/plain; version=0.0.4", text, strlen(text));
        }
        if (strcmp(req->path, "/notfound") == 0) {
                http_call_add_header(call, "Allow", "GET");
                return http_call_reply_error(call, 404, "not_found", "no route %s", req->path);
        }
        if (strcmp(req->path, "/big") == 0) {
                /* Larger than any socket buffer: MHD has to wait for EPOLLOUT. */
                size_t n = 4 << 20;
                char *big = malloc(n + 1);
                assert_non_null(big);
                memset(big, 'b', n);
                big[n] = 0;
                http_call_reply_json(call, 200, json_pack("{s:s}", "big", big));
                free(big);
                return;
        }
        if (strcmp(req->path, "/badutf8") == 0)
                /* Invalid UTF-8 (a lone continuation byte, an overlong, a surrogate, a cut sequence)
                 * in an error message: still a JSON error, with '?' in place of the bad bytes. */
                return http_call_reply_error(call, 404, "not_found", "no VM \"%s\"",
                                             "a\x80"
                                             "b\xc0\xaf"
                                             "c\xed\xa0\x80"
                                             "d\xc3\xa9\xe2\x82");
        if (strcmp(req->path, "/badstatus") == 0)
                return http_call_reply_json(call, 99, json_object());
        if (strcmp(req->path, "/null") == 0)
                return http_call_reply_json(call, 200, NULL);
        http_call_reply_json(call, 200,
                             json_pack("{s:s,s:s,s:s,s:I,s:b,s:I}", "method", req->method, "path", req->path, "query",
                                       req->query, "body_len", (json_int_t) req->body_len, "can_write", req->can_write,
                                       "uid", (json_int_t) (int) req->peer_uid));
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof(Fixture));
        if (!f)
                return -1;
        snprintf(f->dir, sizeof(f->dir), "/tmp/ballast-test-api-XXXXXX");
        if (!mkdtemp(f->dir) || ev_new(&f->ev) < 0) {
                free(f);
                return -1;
        }
        snprintf(f->sock, sizeof(f->sock), "%s/api.sock", f->dir);
        snprintf(f->tokens, sizeof(f->tokens), "%s/tokens", f->dir);
        f->async_delay = 50 * USEC_PER_MSEC;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        f->srv = http_server_free(f->srv);
        /* Calls still held are answered after the server is gone: that must only free them. */
        for (size_t i = 0; i < f->n_held; i++)
                http_call_reply_error(f->held[i], 503, "unavailable", "shutting down");
        f->n_held = 0;
        assert_int_equal(f->n_later, 0);
        f->ev = ev_free(f->ev);
        char cmd[160];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
        assert_int_equal(system(cmd), 0);
        free(f);
        return 0;
}

static void start_server(Fixture *f, HttpServerConfig *cfg) {
        char err[512] = "";
        if (!cfg->socket_path)
                cfg->socket_path = f->sock;
        int r = http_server_new(f->ev, cfg, test_handler, f, &f->srv, err, sizeof(err));
        if (r < 0)
                fail_msg("http_server_new: %s (%s)", err, strerror(-r));
}

static void start_default(Fixture *f) {
        HttpServerConfig cfg = { .write_gid = (gid_t) -1 };
        start_server(f, &cfg);
}

static void write_file(const char *path, const char *text, mode_t mode) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, strlen(text)), (ssize_t) strlen(text));
        assert_int_equal(fchmod(fd, mode), 0);
        close(fd);
}

/* --- the client side (runs in a thread or a forked child: no cmocka calls here) --- */

typedef struct Resp {
        int status;
        char head[4096];
        char *body;
        size_t body_len;
} Resp;

static void resp_clear(Resp *r) {
        free(r->body);
        *r = (Resp){ 0 };
}

static int cl_connect_unix(const char *path) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        struct timeval tv = { .tv_sec = 10 };
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

static int cl_connect_tcp(uint16_t port) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -1;
        struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        struct timeval tv = { .tv_sec = 10 };
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

static bool cl_send(int fd, const char *buf, size_t len) {
        while (len > 0) {
                ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        return false;
                buf += n;
                len -= (size_t) n;
        }
        return true;
}

/* Reads one response (headers, then Content-Length bytes). Returns 0, or -1 on EOF/timeout. */
static int cl_read(int fd, Resp *r) {
        size_t n = 0;
        char *end = NULL;
        *r = (Resp){ 0 };
        while (!end) {
                if (n + 1 >= sizeof(r->head))
                        return -1;
                ssize_t k = recv(fd, r->head + n, 1, 0); /* byte by byte: stop right after the headers */
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return -1;
                n += (size_t) k;
                r->head[n] = 0;
                end = strstr(r->head, "\r\n\r\n");
        }
        if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1)
                return -1;
        size_t cl = 0;
        for (const char *p = r->head; (p = strchr(p, '\n')); p++)
                if (strncasecmp(p + 1, "Content-Length:", 15) == 0)
                        cl = strtoul(p + 16, NULL, 10);
        r->body = calloc(1, cl + 1);
        if (!r->body)
                return -1;
        while (r->body_len < cl) {
                ssize_t k = recv(fd, r->body + r->body_len, cl - r->body_len, 0);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return -1;
                r->body_len += (size_t) k;
        }
        return 0;
}

/* A server that refuses a request early (413 before the body) answers and closes while the body
 * is still being sent: the send then fails (EPIPE, ECONNRESET), and the answer is still there to
 * read. A failed send is a failure only when no answer can be read. */
static int cl_roundtrip_fd(int fd, const char *req, size_t len, Resp *r) {
        bool sent = cl_send(fd, req, len);
        int k = cl_read(fd, r);
        return sent || k == 0 ? k : -1;
}

/* Whether the peer closes the connection within the receive timeout (reads and drops data). */
static bool cl_wait_eof(int fd) {
        char buf[256];
        for (;;) {
                ssize_t k = recv(fd, buf, sizeof(buf), 0);
                if (k == 0)
                        return true;
                if (k < 0 && errno == ECONNRESET)
                        return true;
                if (k < 0 && errno != EINTR)
                        return false;
        }
}

/* --- running a client thread against the loop --- */

typedef struct Job Job;
typedef void (*job_fn)(Job *j);

#define JOB_RESPS 8

struct Job {
        const char *sock;
        uint16_t port;
        job_fn fn;
        const char *req;
        size_t req_len;
        Resp resp[JOB_RESPS];
        int rc[JOB_RESPS];
        usec_t elapsed;
        int n_ok;
        bool eof;
        bool wait_handler; /* job_hangup: hang up only once the handler has the call */
        int fd;            /* job_send_only: the connection, left open */
        atomic_bool done;
        Fixture *f;
};

static int job_connect(Job *j) {
        return j->port ? cl_connect_tcp(j->port) : cl_connect_unix(j->sock);
}

static void *job_thread(void *p) {
        Job *j = p;
        j->fn(j);
        atomic_store(&j->done, true);
        return NULL;
}

static void job_free(Job *j) {
        for (size_t i = 0; i < JOB_RESPS; i++)
                resp_clear(&j->resp[i]);
}

/* Runs the loop until the client thread is done (or 20 s pass: a failure). */
static void run_job(Fixture *f, Job *j) {
        pthread_t t;
        if (!j->sock)
                j->sock = f->sock;
        j->f = f;
        atomic_store(&j->done, false);
        assert_int_equal(pthread_create(&t, NULL, job_thread, j), 0);
        usec_t deadline = usec_add(now_mono(), 20 * USEC_PER_SEC);
        while (!atomic_load(&j->done) && now_mono() < deadline)
                assert_true(ev_run_once(f->ev, usec_add(now_mono(), 5 * USEC_PER_MSEC)) >= 0);
        bool finished = atomic_load(&j->done);
        if (!finished)
                pthread_cancel(t);
        pthread_join(t, NULL);
        assert_true(finished);
}

/* Runs the loop for a while (to let timers and replies happen). */
static void run_for(Fixture *f, usec_t d) {
        usec_t deadline = usec_add(now_mono(), d);
        while (now_mono() < deadline)
                assert_true(ev_run_once(f->ev, deadline) >= 0);
}

/* Runs the loop for d and returns how many iterations did anything: an idle server is quiet. */
static unsigned count_wakeups(Fixture *f, usec_t d) {
        unsigned n = 0;
        usec_t deadline = usec_add(now_mono(), d);
        while (now_mono() < deadline) {
                int r = ev_run_once(f->ev, deadline);
                assert_true(r >= 0);
                if (r > 0)
                        n++;
        }
        return n;
}

/* Sends a request without reading the answer; the connection stays open in j->fd. */
static void job_send_only(Job *j) {
        j->fd = job_connect(j);
        if (j->fd >= 0 && !cl_send(j->fd, j->req, j->req_len))
                j->fd = safe_close(j->fd);
}

/* One request on a fresh connection. */
static void job_one(Job *j) {
        int fd = job_connect(j);
        if (fd < 0) {
                j->rc[0] = -2;
                return;
        }
        usec_t t0 = now_mono();
        j->rc[0] = cl_roundtrip_fd(fd, j->req, j->req_len, &j->resp[0]);
        j->elapsed = now_mono() - t0;
        close(fd);
}

static Resp request(Fixture *f, uint16_t port, const char *req, size_t len) {
        Job j = { .fn = job_one, .req = req, .req_len = len ? len : strlen(req), .port = port };
        run_job(f, &j);
        assert_int_equal(j.rc[0], 0);
        Resp r = j.resp[0];
        j.resp[0] = (Resp){ 0 };
        job_free(&j);
        return r;
}

static json_t *resp_json(const Resp *r) {
        json_error_t e;
        assert_true(r->body_len > 0);
        assert_int_equal(r->body[r->body_len - 1], '\n'); /* compact, one line */
        assert_null(memchr(r->body, '\n', r->body_len - 1));
        json_t *j = json_loadb(r->body, r->body_len, 0, &e);
        if (!j)
                fail_msg("bad JSON body '%s': %s", r->body, e.text);
        return j;
}

static bool head_has(const Resp *r, const char *line) {
        return strcasestr(r->head, line) != NULL;
}

/* Checks status, a JSON content type and, for errors, the {"error":{"code":…}} shape. */
static void check_error(const Resp *r, int status, const char *code) {
        if (r->status != status)
                fail_msg("expected %d, got %d: %s", status, r->status, r->body ? r->body : "");
        assert_true(head_has(r, "Content-Type: application/json"));
        json_t *j = resp_json(r);
        const char *c = NULL, *m = NULL;
        assert_int_equal(json_unpack(j, "{s:{s:s,s:s}}", "error", "code", &c, "message", &m), 0);
        assert_string_equal(c, code);
        assert_true(strlen(m) > 0);
        json_decref(j);
}

/* --- tests --- */

static void test_get_sync(void **state) {
        Fixture *f = *state;
        start_default(f);

        struct stat st;
        assert_int_equal(stat(f->sock, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0666);

        Resp r = request(f, 0, "GET /v1/sync?limit=5&x=%20 HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        assert_true(head_has(&r, "Content-Type: application/json"));
        json_t *j = resp_json(&r);
        const char *method, *path, *query;
        int can_write;
        json_int_t body_len, uid;
        assert_int_equal(json_unpack(j, "{s:s,s:s,s:s,s:I,s:b,s:I}", "method", &method, "path", &path, "query", &query,
                                     "body_len", &body_len, "can_write", &can_write, "uid", &uid),
                         0);
        assert_string_equal(method, "GET");
        assert_string_equal(path, "/v1/sync");
        assert_string_equal(query, "limit=5&x=%20");
        assert_int_equal(body_len, 0);
        assert_true(can_write); /* our own uid */
        assert_int_equal(uid, (json_int_t) getuid());
        json_decref(j);
        resp_clear(&r);

        /* HTTP/1.0, text and error replies, headers added by the handler, bad statuses. */
        r = request(f, 0, "GET /text HTTP/1.0\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        assert_true(head_has(&r, "Content-Type: text/plain; version=0.0.4"));
        assert_string_equal(r.body, "# HELP x y\nx 1\n");
        resp_clear(&r);
        r = request(f, 0, "GET /text-taken HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        assert_true(head_has(&r, "Content-Type: text/plain; version=0.0.4"));
        assert_string_equal(r.body, "# HELP t taken\nt 2\n");
        resp_clear(&r);
        r = request(f, 0, "GET /notfound HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        check_error(&r, 404, "not_found");
        assert_true(head_has(&r, "\r\nAllow: GET\r\n"));
        resp_clear(&r);
        r = request(f, 0, "GET /badutf8 HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        check_error(&r, 404, "not_found");
        assert_non_null(strstr(r.body, "no VM \\\"a?b??c???d\u00e9??\\\""));
        resp_clear(&r);
        r = request(f, 0, "GET /badstatus HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 500);
        resp_clear(&r);
        r = request(f, 0, "GET /null HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        check_error(&r, 500, "internal");
        resp_clear(&r);

        HttpCounters c;
        http_server_counters(f->srv, &c);
        assert_int_equal(c.requests, 7);
        assert_int_equal(c.errors_4xx, 2);
        assert_int_equal(c.errors_5xx, 2);
        /* Every answer in one class: /metrics sums them to the requests answered. */
        assert_int_equal(c.answers_2xx, 3);
        assert_int_equal(c.answers_3xx, 0);
        assert_int_equal(c.answers_2xx + c.answers_3xx + c.errors_4xx + c.errors_5xx, c.requests);
        assert_int_equal(f->handled, 7);

        /* The socket file goes with the server. */
        f->srv = http_server_free(f->srv);
        assert_int_equal(access(f->sock, F_OK), -1);
}

static void test_post_async(void **state) {
        Fixture *f = *state;
        start_default(f);
        static const char req[] = "POST /async HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  "Content-Length: 7\r\n\r\n{\"a\":1}";
        Job j = { .fn = job_one, .req = req, .req_len = sizeof(req) - 1 };
        run_job(f, &j);
        assert_int_equal(j.rc[0], 0);
        assert_int_equal(j.resp[0].status, 200);
        assert_true(j.elapsed >= 45 * USEC_PER_MSEC);
        json_t *b = resp_json(&j.resp[0]);
        assert_true(json_is_true(json_object_get(b, "async")));
        assert_string_equal(json_string_value(json_object_get(b, "body")), "{\"a\":1}");
        json_decref(b);
        job_free(&j);
        assert_int_equal(f->n_later, 0);
}

/* A body of exactly n bytes: {"x":"aaa…"}. */
static char *make_post(const char *path, size_t n, const char *ctype, size_t *ret_len) {
        size_t cap = n + 512;
        char *buf = malloc(cap);
        assert_non_null(buf);
        int h = snprintf(buf, cap, "POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: %zu\r\n\r\n",
                         path, ctype, n);
        char *b = buf + h;
        assert_true(n >= 8);
        memcpy(b, "{\"x\":\"", 6);
        memset(b + 6, 'a', n - 8);
        memcpy(b + n - 2, "\"}", 2);
        *ret_len = (size_t) h + n;
        return buf;
}

/* Streams chunked data (up to 8 MiB) until the server hangs up. */
static void job_endless(Job *j) {
        int fd = job_connect(j);
        if (fd < 0)
                return;
        static const char head[] = "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Transfer-Encoding: chunked\r\n\r\n";
        static char chunk[8 + 65536 + 2];
        memcpy(chunk, "10000\r\n", 7);
        memset(chunk + 7, ' ', 65536);
        memcpy(chunk + 7 + 65536, "\r\n", 2);
        bool ok = cl_send(fd, head, sizeof(head) - 1);
        for (int i = 0; ok && i < 128; i++)
                ok = cl_send(fd, chunk, 7 + 65536 + 2);
        Resp r;
        j->eof = !ok || cl_read(fd, &r) < 0;
        if (!j->eof)
                resp_clear(&r);
        close(fd);
}

static void test_body_limits(void **state) {
        Fixture *f = *state;
        start_default(f);
        size_t len;

        char *req = make_post("/sync", HTTP_BODY_MAX, "application/json", &len);
        Resp r = request(f, 0, req, len);
        assert_int_equal(r.status, 200);
        json_t *j = resp_json(&r);
        assert_int_equal(json_integer_value(json_object_get(j, "body_len")), HTTP_BODY_MAX);
        json_decref(j);
        resp_clear(&r);
        free(req);
        assert_int_equal(f->handled, 1);

        /* One byte over, announced by Content-Length: refused before the body is read. */
        req = make_post("/sync", HTTP_BODY_MAX + 1, "application/json", &len);
        r = request(f, 0, req, len);
        check_error(&r, 413, "payload_too_large");
        resp_clear(&r);
        free(req);

        /* A huge Content-Length with no body sent at all: answered at once. */
        r = request(f, 0,
                    "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Content-Length: 100000000000\r\n\r\n",
                    0);
        check_error(&r, 413, "payload_too_large");
        resp_clear(&r);

        /* Chunked: no length upfront, refused as soon as the total passes the limit. */
        size_t cap = 2 * HTTP_BODY_MAX;
        char *buf = malloc(cap);
        assert_non_null(buf);
        size_t n = (size_t) snprintf(buf, cap,
                                     "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     "Transfer-Encoding: chunked\r\n\r\n");
        for (int i = 0; i < 17; i++) {
                n += (size_t) snprintf(buf + n, cap - n, "1000\r\n");
                memset(buf + n, ' ', 4096);
                n += 4096;
                n += (size_t) snprintf(buf + n, cap - n, "\r\n");
        }
        n += (size_t) snprintf(buf + n, cap - n, "0\r\n\r\n");
        r = request(f, 0, buf, n);
        check_error(&r, 413, "payload_too_large");
        resp_clear(&r);
        free(buf);

        /* A chunked body that never ends: dropped up to a point, then the connection is closed. */
        Job jb = { .fn = job_endless };
        run_job(f, &jb);
        assert_true(jb.eof);
        job_free(&jb);

        /* A small chunked body is fine. */
        r = request(f, 0,
                    "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
                    0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);

        /* NUL bytes in the body. */
        static const char nul[] = "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  "Content-Length: 4\r\n\r\n{\0}\n";
        r = request(f, 0, nul, sizeof(nul) - 1);
        check_error(&r, 400, "bad_request");
        assert_non_null(strstr(r.body, "NUL"));
        resp_clear(&r);

        assert_int_equal(f->handled, 2);
        HttpCounters c;
        http_server_counters(f->srv, &c);
        assert_int_equal(c.errors_4xx, 4);
}

static void test_content_type(void **state) {
        Fixture *f = *state;
        start_default(f);
        size_t len;
        static const struct {
                const char *ctype;
                int status;
        } cases[] = {
                { "application/json", 200 },
                { "Application/JSON; charset=utf-8", 200 },
                { "application/json ;charset=UTF-8", 200 },
                { "text/plain", 415 },
                { "application/jsonx", 415 },
                { "application/x-www-form-urlencoded", 415 },
                { "multipart/form-data; boundary=x", 415 },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *req = make_post("/sync", 16, cases[i].ctype, &len);
                Resp r = request(f, 0, req, len);
                if (cases[i].status == 415)
                        check_error(&r, 415, "unsupported_media_type");
                else
                        assert_int_equal(r.status, cases[i].status);
                resp_clear(&r);
                free(req);
        }
        /* A body without any Content-Type. */
        Resp r = request(f, 0, "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}", 0);
        check_error(&r, 415, "unsupported_media_type");
        resp_clear(&r);
        /* No body: no Content-Type needed, even for POST. */
        r = request(f, 0, "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        r = request(f, 0, "DELETE /sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        assert_int_equal(f->handled, 5);
}

static void test_bad_url(void **state) {
        Fixture *f = *state;
        start_default(f);

        /* Over HTTP_URI_MAX: our JSON 414. */
        size_t n = HTTP_URI_MAX + 1;
        char *req = malloc(n + 64);
        assert_non_null(req);
        int h = snprintf(req, n + 64, "GET /");
        memset(req + h, 'a', n - 1);
        snprintf(req + h + n - 1, 64, " HTTP/1.1\r\nHost: x\r\n\r\n");
        Resp r = request(f, 0, req, 0);
        check_error(&r, 414, "uri_too_long");
        resp_clear(&r);
        free(req);

        /* Exactly HTTP_URI_MAX is fine. */
        n = HTTP_URI_MAX;
        req = malloc(n + 64);
        assert_non_null(req);
        h = snprintf(req, n + 64, "GET /");
        memset(req + h, 'a', n - 1);
        snprintf(req + h + n - 1, 64, " HTTP/1.1\r\nHost: x\r\n\r\n");
        r = request(f, 0, req, 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        free(req);

        /* Past MHD's connection memory: MHD answers itself (not JSON); the connection survives
         * nothing, the server does. */
        n = 64 << 10;
        req = malloc(n + 64);
        assert_non_null(req);
        h = snprintf(req, n + 64, "GET /");
        memset(req + h, 'a', n - 1);
        snprintf(req + h + n - 1, 64, " HTTP/1.1\r\nHost: x\r\n\r\n");
        Job j = { .fn = job_one, .req = req, .req_len = strlen(req) };
        run_job(f, &j);
        if (j.rc[0] == 0)
                assert_true(j.resp[0].status == 414 || j.resp[0].status == 431 || j.resp[0].status == 400);
        job_free(&j);
        free(req);

        /* Headers past MHD's connection memory, after the request line was seen (431 from MHD):
         * the call allocated for the request line must still be freed (ASan, valgrind). */
        n = 40 << 10;
        req = malloc(n + 128);
        assert_non_null(req);
        h = snprintf(req, n + 128, "GET /sync HTTP/1.1\r\nHost: x\r\nX-Big: ");
        memset(req + h, 'h', n);
        snprintf(req + h + n, 128, "\r\n\r\n");
        j = (Job){ .fn = job_one, .req = req, .req_len = strlen(req) };
        run_job(f, &j);
        if (j.rc[0] == 0)
                assert_true(j.resp[0].status == 431 || j.resp[0].status == 413 || j.resp[0].status == 400);
        job_free(&j);
        free(req);

        /* An absolute-form target. */
        r = request(f, 0, "GET http://x/sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        check_error(&r, 400, "bad_request");
        resp_clear(&r);

        /* Garbage instead of HTTP: MHD closes or answers 400; the server lives on. */
        j = (Job){ .fn = job_one, .req = "\x01\x02\x03 garbage\r\n\r\n" };
        j.req_len = strlen(j.req);
        run_job(f, &j);
        job_free(&j);

        r = request(f, 0, "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        assert_int_equal(f->handled, 2);
}

static void test_write_denied(void **state) {
        Fixture *f = *state;
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .unix_read_only = true };
        start_server(f, &cfg);

        Resp r = request(f, 0, "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        json_t *j = resp_json(&r);
        assert_false(json_is_true(json_object_get(j, "can_write")));
        json_decref(j);
        resp_clear(&r);
        assert_int_equal(f->handled, 1);

        static const char *const methods[] = { "POST", "PUT", "PATCH", "DELETE" };
        for (size_t i = 0; i < ELEMENTSOF(methods); i++) {
                char req[256];
                snprintf(req, sizeof(req),
                         "%s /v1/vms HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: 2\r\n\r\n{}",
                         methods[i]);
                r = request(f, 0, req, 0);
                check_error(&r, 403, "forbidden");
                resp_clear(&r);
        }
        assert_int_equal(f->handled, 1); /* the handler never saw them */
        HttpCounters c;
        http_server_counters(f->srv, &c);
        assert_int_equal(c.forbidden, 4);
        assert_int_equal(c.errors_4xx, 4);
}

/* In a forked child: become uid/gid with the given supplementary groups, send one request and
 * exit 0 when the status is the expected one. */
static pid_t fork_client(const char *sock, uid_t uid, gid_t gid, const gid_t *groups, size_t n_groups, const char *req,
                         int expect, bool expect_write) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid > 0)
                return pid;
        if (setgroups(n_groups, groups) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
                _exit(10);
        int fd = cl_connect_unix(sock);
        if (fd < 0)
                _exit(11);
        Resp r;
        if (cl_roundtrip_fd(fd, req, strlen(req), &r) < 0)
                _exit(12);
        if (r.status != expect)
                _exit(13);
        if (expect == 200 && (strstr(r.body, "\"can_write\":true") != NULL) != expect_write)
                _exit(14);
        _exit(0);
}

static void wait_child(Fixture *f, pid_t pid) {
        usec_t deadline = usec_add(now_mono(), 20 * USEC_PER_SEC);
        int status;
        for (;;) {
                pid_t p = waitpid(pid, &status, WNOHANG);
                assert_true(p >= 0);
                if (p == pid)
                        break;
                if (now_mono() > deadline) {
                        kill(pid, SIGKILL);
                        fail_msg("client child did not finish");
                }
                assert_true(ev_run_once(f->ev, usec_add(now_mono(), 5 * USEC_PER_MSEC)) >= 0);
        }
        assert_true(WIFEXITED(status));
        if (WEXITSTATUS(status) != 0)
                fail_msg("client child failed with %d", WEXITSTATUS(status));
}

static void test_peer_groups(void **state) {
        Fixture *f = *state;
        if (geteuid() != 0)
                skip(); /* needs setuid() to act as another user */
        assert_int_equal(chmod(f->dir, 0755), 0);
        HttpServerConfig cfg = { .write_gid = TEST_GID };
        start_server(f, &cfg);

        static const char get[] = "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n";
        static const char post[] = "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n";
        const gid_t member[] = { 100, TEST_GID };

        /* nobody without the group: reads, may not write. */
        wait_child(f, fork_client(f->sock, NOBODY, NOBODY, NULL, 0, get, 200, false));
        assert_int_equal(f->last_peer_uid, NOBODY);
        assert_false(f->last_can_write);
        wait_child(f, fork_client(f->sock, NOBODY, NOBODY, NULL, 0, post, 403, false));
        /* A supplementary member of write_gid writes. */
        wait_child(f, fork_client(f->sock, NOBODY, NOBODY, member, ELEMENTSOF(member), post, 200, true));
        assert_true(f->last_can_write);
        /* So does a member by primary gid. */
        wait_child(f, fork_client(f->sock, NOBODY, TEST_GID, NULL, 0, get, 200, true));
        /* Root writes without the group. */
        wait_child(f, fork_client(f->sock, 0, 0, NULL, 0, post, 200, true));
        assert_int_equal(f->last_peer_uid, 0);
}

static void test_status_groups(void **state) {
        (void) state;
        static const char status[] = "Name:\tcat\nUid:\t1000\t1000\t1000\t1000\nGid:\t4242\t4242\t4242\t4242\n"
                                     "Groups:\t4 24 27 1000 \nNgid:\t0\n";
        assert_true(http_status_has_group(status, 27));
        assert_true(http_status_has_group(status, 1000));
        assert_true(http_status_has_group(status, 4));
        assert_false(http_status_has_group(status, 4242)); /* Gid: is not Groups: */
        assert_false(http_status_has_group(status, 2));
        assert_false(http_status_has_group("Groups:\t\n", 0));
        assert_false(http_status_has_group("Name: x\n", 0));
        assert_false(http_status_has_group("", 0));
        assert_false(http_status_has_group(NULL, 0));
        assert_true(http_status_has_group("Groups: 5", 5));
}

static void start_tcp(Fixture *f) {
        write_file(f->tokens, "# API tokens\n\n  rtok-0123456789 read\nwtok-0123456789\twrite  \r\n# end\n", 0600);
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .listen_tcp = "127.0.0.1:0", .tokens_file = f->tokens };
        start_server(f, &cfg);
        assert_true(http_server_tcp_port(f->srv) > 0);
}

static void test_tcp_tokens(void **state) {
        Fixture *f = *state;
        start_tcp(f);
        uint16_t port = http_server_tcp_port(f->srv);

        Resp r = request(f, port, "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        check_error(&r, 401, "unauthorized");
        assert_true(head_has(&r, "WWW-Authenticate: Bearer"));
        resp_clear(&r);
        static const char *const bad[] = {
                "Bearer nope", "Bearer rtok-012345678", "Bearer rtok-01234567890",  "Basic cnRvazpyZWFk",
                "Bearer",      "Bearerrtok-0123456789", "Bearer rtok-0123456789 x",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char req[256];
                snprintf(req, sizeof(req), "GET /sync HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n\r\n", bad[i]);
                r = request(f, port, req, 0);
                check_error(&r, 401, "unauthorized");
                resp_clear(&r);
        }
        assert_int_equal(f->handled, 0);

        /* read: GET yes, POST no. */
        r = request(f, port, "GET /sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rtok-0123456789\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        json_t *j = resp_json(&r);
        assert_false(json_is_true(json_object_get(j, "can_write")));
        assert_int_equal(json_integer_value(json_object_get(j, "uid")), -1);
        json_decref(j);
        resp_clear(&r);
        r = request(f, port,
                    "POST /sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rtok-0123456789\r\n"
                    "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                    0);
        check_error(&r, 403, "forbidden");
        resp_clear(&r);

        /* write: POST yes, the scheme in any case. */
        r = request(f, port,
                    "POST /async HTTP/1.1\r\nHost: x\r\nauthorization: bearer   wtok-0123456789\r\n"
                    "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
                    0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        assert_true(f->last_can_write);
        assert_int_equal(f->handled, 2);

        /* The Unix socket still works next to TCP, without tokens. */
        r = request(f, 0, "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);

        HttpCounters c;
        http_server_counters(f->srv, &c);
        assert_int_equal(c.unauthorized, 1 + ELEMENTSOF(bad));
        assert_int_equal(c.forbidden, 1);
        assert_int_equal(c.requests, 1 + ELEMENTSOF(bad) + 4);
}

/* A flat {"code","message"} error body (flat_error_prefix), nothing else in it. */
static void check_flat_error(const Resp *r, int status, const char *code) {
        if (r->status != status)
                fail_msg("expected %d, got %d: %s", status, r->status, r->body ? r->body : "");
        assert_true(head_has(r, "Content-Type: application/json"));
        json_t *j = resp_json(r);
        const char *c = NULL, *m = NULL;
        if (json_unpack(j, "{s:s,s:s!}", "code", &c, "message", &m) != 0)
                fail_msg("not a flat {code, message} error: %s", r->body);
        assert_string_equal(c, code);
        assert_true(strlen(m) > 0);
        json_decref(j);
}

/* Under flat_error_prefix every error is {"code","message"}: the handler's, those answered before
 * the handler (403, 415), and those written before the HTTP library sees the request (401, a bad
 * request target); anywhere else the usual {"error": {...}}. */
static void test_flat_errors(void **state) {
        Fixture *f = *state;
        write_file(f->tokens, "rtok-0123456789 read\n", 0600);
        HttpServerConfig cfg = { .write_gid = (gid_t) -1,
                                 .listen_tcp = "127.0.0.1:0",
                                 .tokens_file = f->tokens,
                                 .flat_error_prefix = "/notfound" };
        start_server(f, &cfg);
        uint16_t port = http_server_tcp_port(f->srv);
        static const char auth[] = "Authorization: Bearer rtok-0123456789\r\n";
        char req[512];

        snprintf(req, sizeof req, "GET /notfound?a=1 HTTP/1.1\r\nHost: x\r\n%s\r\n", auth);
        Resp r = request(f, port, req, 0);
        check_flat_error(&r, 404, "not_found");
        assert_true(head_has(&r, "Allow: GET"));
        resp_clear(&r);
        r = request(f, port, "GET /notfound HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n", 0);
        check_flat_error(&r, 401, "unauthorized");
        assert_true(head_has(&r, "WWW-Authenticate: Bearer"));
        resp_clear(&r);
        snprintf(req, sizeof req,
                 "POST /notfound HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
                 "Content-Length: 2\r\n\r\n{}",
                 auth);
        r = request(f, port, req, 0);
        check_flat_error(&r, 403, "forbidden");
        resp_clear(&r);
        snprintf(req, sizeof req, "GET /notfound?a=\x7f HTTP/1.1\r\nHost: x\r\n%s\r\n", auth);
        r = request(f, port, req, 0);
        check_flat_error(&r, 400, "bad_request");
        resp_clear(&r);
        /* Unix socket too. */
        r = request(f, 0, "GET /notfound HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        check_flat_error(&r, 404, "not_found");
        resp_clear(&r);

        /* Elsewhere: nested, as always. */
        r = request(f, port, "GET /sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\n\r\n", 0);
        check_error(&r, 401, "unauthorized");
        resp_clear(&r);
        snprintf(req, sizeof req, "GET /badutf8 HTTP/1.1\r\nHost: x\r\n%s\r\n", auth);
        r = request(f, port, req, 0);
        check_error(&r, 404, "not_found");
        resp_clear(&r);
        snprintf(req, sizeof req, "GET /notfoun HTTP/1.1\r\nHost: x\r\n%s\r\n", auth);
        r = request(f, port, req, 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
}

static int try_start(Fixture *f, HttpServerConfig *cfg, char *err, size_t errlen) {
        if (!cfg->socket_path)
                cfg->socket_path = f->sock;
        HttpServer *s = NULL;
        err[0] = 0;
        int r = http_server_new(f->ev, cfg, test_handler, f, &s, err, errlen);
        if (r >= 0)
                http_server_free(s);
        else
                assert_null(s);
        return r;
}

static void test_tokens_file_errors(void **state) {
        Fixture *f = *state;
        char err[512];
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .listen_tcp = "127.0.0.1:0", .tokens_file = f->tokens };

        write_file(f->tokens, "tok-0123456789 read\n", 0644);
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EPERM);
        assert_non_null(strstr(err, f->tokens));
        write_file(f->tokens, "tok-0123456789 read\n", 0602);
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EPERM);
        /* Refused before anything listens. */
        assert_int_equal(access(f->sock, F_OK), -1);

        static const struct {
                const char *text;
                unsigned line;
        } bad[] = {
                { "# c\n\ntok-0123456789\n", 3 },         { "a read\nb admin\n", 2 },
                { "a read\nb write extra\n", 2 },         { "a read\na write\n", 2 },
                { "a read\n\n\n  \n\xff\xfe read\n", 5 }, { "read\n", 1 },
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                char want[256];
                write_file(f->tokens, bad[i].text, 0600);
                assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EINVAL);
                snprintf(want, sizeof(want), "%s:%u:", f->tokens, bad[i].line);
                if (!strstr(err, want))
                        fail_msg("case %zu: '%s' does not name %s", i, err, want);
        }

        /* A missing file, a TCP listener without a file, non-loopback or malformed addresses. */
        cfg.tokens_file = "/nonexistent/tokens";
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -ENOENT);
        assert_non_null(strstr(err, "/nonexistent/tokens"));
        cfg.tokens_file = NULL;
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EINVAL);
        write_file(f->tokens, "t read\n", 0600);
        cfg.tokens_file = f->tokens;
        static const char *const addrs[] = { "0.0.0.0:8080",
                                             "10.0.0.1:80",
                                             "[::]:80",
                                             "[2001:db8::1]:80",
                                             "localhost:80",
                                             "127.0.0.1",
                                             "127.0.0.1:",
                                             "127.0.0.1:65536",
                                             "127.0.0.1:-1",
                                             "[::1]80",
                                             "::1:80",
                                             "127.0.0.1:80x",
                                             "" };
        for (size_t i = 0; i < ELEMENTSOF(addrs); i++) {
                cfg.listen_tcp = addrs[i];
                int r = try_start(f, &cfg, err, sizeof(err));
                if (r != -EINVAL && r != -EPERM)
                        fail_msg("'%s' accepted (%d: %s)", addrs[i], r, err);
                assert_non_null(strstr(err, addrs[i]));
        }
        /* IPv6 loopback, when this machine has it. */
        int probe = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in6 sa6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
        bool have_v6 = probe >= 0 && bind(probe, (struct sockaddr *) &sa6, sizeof(sa6)) == 0;
        safe_close(probe);
        cfg.listen_tcp = "[::1]:0";
        int r = try_start(f, &cfg, err, sizeof(err));
        if (have_v6 && r != 0)
                fail_msg("[::1]:0 refused: %s", err);
        /* An empty file is allowed: every TCP request is then 401. */
        write_file(f->tokens, "# nobody\n", 0600);
        cfg.listen_tcp = "127.0.0.1:0";
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), 0);
}

static void test_socket_file(void **state) {
        Fixture *f = *state;
        char err[512], path[256];
        HttpServerConfig cfg = { .write_gid = (gid_t) -1 };

        /* Missing parent directories are created 0755. */
        mode_t old = umask(077);
        snprintf(path, sizeof(path), "%s/run/ballast/api.sock", f->dir);
        cfg.socket_path = path;
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), 0);
        umask(old);
        struct stat st;
        snprintf(path, sizeof(path), "%s/run/ballast", f->dir);
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal(st.st_mode & 0777, 0755);
        snprintf(path, sizeof(path), "%s/run/ballast/api.sock", f->dir);
        assert_int_equal(access(path, F_OK), -1); /* removed by http_server_free() */

        /* A stale socket (nobody listening) is replaced. */
        int fd = socket(AF_UNIX, SOCK_STREAM, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        assert_true(strlen(f->sock) < sizeof(sa.sun_path));
        memcpy(sa.sun_path, f->sock, strlen(f->sock) + 1);
        assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
        close(fd);
        cfg.socket_path = f->sock;
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), 0);

        /* A live one is not. */
        HttpServer *first = NULL;
        assert_int_equal(http_server_new(f->ev, &cfg, test_handler, f, &first, err, sizeof(err)), 0);
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EADDRINUSE);
        assert_non_null(strstr(err, "in use"));
        first = http_server_free(first);

        /* Anything that is not a socket is left alone. */
        write_file(f->sock, "precious\n", 0644);
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EEXIST);
        assert_non_null(strstr(err, "not a socket"));
        assert_int_equal(stat(f->sock, &st), 0);
        assert_true(S_ISREG(st.st_mode));
        assert_int_equal(unlink(f->sock), 0);

        /* Relative or too long paths. */
        cfg.socket_path = "api.sock";
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EINVAL);
        char longp[200];
        memset(longp, 'a', sizeof(longp) - 1);
        longp[0] = '/';
        longp[sizeof(longp) - 1] = 0;
        cfg.socket_path = longp;
        assert_int_equal(try_start(f, &cfg, err, sizeof(err)), -EINVAL);
        cfg.socket_path = NULL;
        HttpServer *s = NULL;
        cfg.socket_path = NULL;
        assert_int_equal(http_server_new(f->ev, &cfg, test_handler, f, &s, err, sizeof(err)), -EINVAL);
        assert_null(http_server_free(NULL));
}

/* Sends a slow request and hangs up before the answer. */
static void job_hangup(Job *j) {
        int fd = job_connect(j);
        if (fd < 0) {
                j->rc[0] = -2;
                return;
        }
        j->rc[0] = cl_send(fd, j->req, j->req_len) ? 0 : -1;
        usec_t deadline = usec_add(now_mono(), 5 * USEC_PER_SEC);
        while (j->wait_handler && atomic_load(&j->f->handled) == 0 && now_mono() < deadline)
                usleep(1000);
        close(fd);
}

static void test_disconnect_pending(void **state) {
        Fixture *f = *state;
        start_default(f);
        f->async_delay = 100 * USEC_PER_MSEC;

        static const char req[] = "GET /async HTTP/1.1\r\nHost: x\r\n\r\n";
        Job j = { .fn = job_hangup, .req = req, .req_len = sizeof(req) - 1, .wait_handler = true };
        run_job(f, &j);
        assert_int_equal(j.rc[0], 0);
        assert_int_equal(f->n_later, 1);
        run_for(f, 200 * USEC_PER_MSEC); /* the reply goes to a closed socket */
        assert_int_equal(f->n_later, 0);
        job_free(&j);

        /* Same with a held call, answered much later. */
        static const char hold[] = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
        f->handled = 0;
        j = (Job){ .fn = job_hangup, .req = hold, .req_len = sizeof(hold) - 1, .wait_handler = true };
        run_job(f, &j);
        run_for(f, 50 * USEC_PER_MSEC);
        assert_int_equal(f->n_held, 1);
        http_call_reply_error(f->held[0], 503, "unavailable", "late");
        f->n_held = 0;
        run_for(f, 50 * USEC_PER_MSEC);
        job_free(&j);

        /* The server still serves. */
        Resp r = request(f, 0, "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
}

/* MAX_CONNS connections at once, each with a request answered 50 ms later, read back in order. */
static void job_many(Job *j) {
        int fds[MAX_CONNS];
        static const char req[] = "GET /async HTTP/1.1\r\nHost: x\r\n\r\n";
        for (size_t i = 0; i < MAX_CONNS; i++) {
                fds[i] = job_connect(j);
                if (fds[i] < 0 || !cl_send(fds[i], req, sizeof(req) - 1))
                        fds[i] = -1;
        }
        for (size_t i = 0; i < MAX_CONNS; i++) {
                Resp r;
                if (fds[i] >= 0 && cl_read(fds[i], &r) == 0) {
                        if (r.status == 200)
                                j->n_ok++;
                        resp_clear(&r);
                }
                if (fds[i] >= 0)
                        close(fds[i]);
        }
}

static void test_idle_quiet(void **state) {
        Fixture *f = *state;
        start_default(f);
        assert_true(count_wakeups(f, 200 * USEC_PER_MSEC) == 0);

        /* A held call and an idle keep-alive connection: still no spinning. */
        static const char hold[] = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
        static const char get[] = "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n";
        Job a = { .fn = job_send_only, .req = hold, .req_len = sizeof(hold) - 1 };
        run_job(f, &a);
        assert_true(a.fd >= 0);
        Job b = { .fn = job_send_only, .req = get, .req_len = sizeof(get) - 1 };
        run_job(f, &b);
        assert_true(b.fd >= 0);
        run_for(f, 50 * USEC_PER_MSEC);
        assert_int_equal(f->n_held, 1);
        unsigned n = count_wakeups(f, 300 * USEC_PER_MSEC);
        if (n > 3)
                fail_msg("%u wakeups in 300 ms with nothing to do", n);

        /* Answering the held call gets the reply out promptly. */
        http_call_reply_json(f->held[0], 200, json_pack("{s:s}", "late", "yes"));
        f->n_held = 0;
        run_for(f, 20 * USEC_PER_MSEC);
        Resp r;
        assert_int_equal(cl_read(a.fd, &r), 0);
        assert_int_equal(r.status, 200);
        assert_non_null(strstr(r.body, "late"));
        resp_clear(&r);
        assert_int_equal(cl_read(b.fd, &r), 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        close(a.fd);
        close(b.fd);
}

static void test_many_connections(void **state) {
        Fixture *f = *state;
        start_default(f);
        Job j = { .fn = job_many };
        run_job(f, &j);
        assert_int_equal(j.n_ok, MAX_CONNS);
        assert_int_equal(f->handled, MAX_CONNS);
        assert_int_equal(f->n_later, 0);
}

/* One request per connection (the request head of each is checked before MHD sees it): every
 * answer says Connection: close, and the connection closes after it, even for a keep-alive client. */
static void job_keepalive(Job *j) {
        static const char get[] = "GET /sync?n=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n";
        static const char post[] = "POST /async HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 2\r\n\r\n{}";
        for (int i = 0; i < 3; i++) {
                int fd = job_connect(j);
                if (fd < 0) {
                        j->rc[i] = -2;
                        continue;
                }
                j->rc[i] = cl_roundtrip_fd(fd, i == 1 ? post : get, i == 1 ? sizeof(post) - 1 : sizeof(get) - 1,
                                           &j->resp[i]);
                if (!cl_wait_eof(fd))
                        j->rc[i] = -3;
                close(fd);
        }
}

/* Two requests in one write (pipelined): the first is answered (later), then the connection
 * closes; the second is never served (a client retries it on a new connection). */
static void job_pipeline(Job *j) {
        int fd = job_connect(j);
        if (fd < 0) {
                j->rc[0] = -2;
                return;
        }
        static const char two[] = "GET /async HTTP/1.1\r\nHost: x\r\n\r\nGET /sync?second HTTP/1.1\r\n\r\n";
        if (!cl_send(fd, two, sizeof(two) - 1))
                j->rc[0] = -1;
        else {
                j->rc[0] = cl_read(fd, &j->resp[0]);
                j->rc[1] = cl_read(fd, &j->resp[1]);
                j->eof = true;
        }
        close(fd);
}

static void test_pipeline_and_big(void **state) {
        Fixture *f = *state;
        start_default(f);
        Job j = { .fn = job_pipeline };
        run_job(f, &j);
        assert_int_equal(j.rc[0], 0);
        assert_int_equal(j.rc[1], -1);
        assert_true(head_has(&j.resp[0], "Connection: close"));
        json_t *b = resp_json(&j.resp[0]);
        assert_true(json_is_true(json_object_get(b, "async")));
        json_decref(b);
        job_free(&j);
        assert_int_equal(f->handled, 1);

        Resp r = request(f, 0, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body_len, (4 << 20) + strlen("{\"big\":\"\"}\n"));
        resp_clear(&r);
}

static void test_keepalive(void **state) {
        Fixture *f = *state;
        start_default(f);
        Job j = { .fn = job_keepalive };
        run_job(f, &j);
        for (int i = 0; i < 3; i++) {
                assert_int_equal(j.rc[i], 0);
                assert_int_equal(j.resp[i].status, 200);
                assert_true(head_has(&j.resp[i], "Connection: close"));
        }
        json_t *b = resp_json(&j.resp[1]);
        assert_true(json_is_true(json_object_get(b, "async")));
        json_decref(b);
        job_free(&j);
        assert_int_equal(f->handled, 3);
}

/* Sends a held request and waits for the server to go away. */
static void job_hold(Job *j) {
        int fd = job_connect(j);
        if (fd < 0) {
                j->rc[0] = -2;
                return;
        }
        static const char hold[] = "POST /hold HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 2\r\n\r\n{}";
        j->rc[0] = cl_send(fd, hold, sizeof(hold) - 1) ? 0 : -1;
        j->eof = cl_wait_eof(fd);
        close(fd);
}

static void test_free_with_pending(void **state) {
        Fixture *f = *state;
        start_default(f);

        pthread_t t[3];
        Job j[3];
        for (int i = 0; i < 3; i++) {
                j[i] = (Job){ .fn = job_hold, .sock = f->sock, .f = f };
                assert_int_equal(pthread_create(&t[i], NULL, job_thread, &j[i]), 0);
        }
        usec_t deadline = usec_add(now_mono(), 10 * USEC_PER_SEC);
        while (f->n_held < 3 && now_mono() < deadline)
                assert_true(ev_run_once(f->ev, usec_add(now_mono(), 5 * USEC_PER_MSEC)) >= 0);
        assert_int_equal(f->n_held, 3);
        /* One is answered just before the free: its reply may or may not get out. */
        http_call_reply_json(f->held[2], 200, json_object());
        f->n_held = 2;

        /* A connection already accepted whose request arrives just before the free: it must not
         * reach the handler while the server is going away. */
        int late = cl_connect_unix(f->sock);
        assert_true(late >= 0);
        run_for(f, 20 * USEC_PER_MSEC);
        static const char get[] = "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_true(cl_send(late, get, sizeof(get) - 1));
        unsigned handled = f->handled;

        f->srv = http_server_free(f->srv);
        assert_int_equal(f->handled, handled);
        Resp r;
        assert_int_equal(cl_read(late, &r), 0);
        check_error(&r, 503, "unavailable");
        resp_clear(&r);
        close(late);
        for (int i = 0; i < 3; i++) {
                pthread_join(t[i], NULL);
                assert_int_equal(j[i].rc[0], 0);
                assert_true(j[i].eof);
        }
        assert_int_equal(access(f->sock, F_OK), -1);
        /* teardown answers the two calls still held, which only frees them. */
}

static void job_idle(Job *j) {
        int fd = job_connect(j);
        if (fd < 0) {
                j->rc[0] = -2;
                return;
        }
        usec_t t0 = now_mono();
        j->eof = cl_wait_eof(fd);
        j->elapsed = now_mono() - t0;
        close(fd);
}

static void test_idle_timeout(void **state) {
        Fixture *f = *state;
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .header_timeout = 1 * USEC_PER_SEC };
        start_server(f, &cfg);
        Job j = { .fn = job_idle };
        run_job(f, &j);
        assert_int_equal(j.rc[0], 0);
        assert_true(j.eof);
        assert_true(j.elapsed >= 800 * USEC_PER_MSEC);
        assert_true(j.elapsed < 5 * USEC_PER_SEC);
}

/* With max_connections 2, a third client is told so at once (503), not left in the backlog; once
 * one leaves, a new one is served. */
static void job_limit(Job *j) {
        int a = job_connect(j), b = job_connect(j), c = job_connect(j);
        static const char req[] = "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n";
        Resp r;
        if (a < 0 || b < 0 || c < 0)
                goto out;
        if (cl_roundtrip_fd(a, req, sizeof(req) - 1, &r) == 0 && r.status == 200)
                j->n_ok++;
        resp_clear(&r);
        if (cl_roundtrip_fd(b, req, sizeof(req) - 1, &r) == 0 && r.status == 200)
                j->n_ok++;
        resp_clear(&r);
        if (cl_read(c, &r) == 0 && r.status == 503)
                j->n_ok++;
        resp_clear(&r);
        close(c);
        close(a);
        a = -1;
        (void) cl_wait_eof(b);
        close(b);
        b = -1;
        c = job_connect(j);
        if (c >= 0 && cl_roundtrip_fd(c, req, sizeof(req) - 1, &r) == 0 && r.status == 200)
                j->n_ok++;
        resp_clear(&r);
out:
        if (a >= 0)
                close(a);
        if (b >= 0)
                close(b);
        if (c >= 0)
                close(c);
}

static void test_connection_limit(void **state) {
        Fixture *f = *state;
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .max_connections = 2 };
        start_server(f, &cfg);
        Job j = { .fn = job_limit };
        run_job(f, &j);
        assert_int_equal(j.n_ok, 4);
}

/* A request cut off in the middle of its body, and one in the middle of its headers. */
static void test_truncated(void **state) {
        Fixture *f = *state;
        start_default(f);
        Job j = { .fn = job_hangup,
                  .req = "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         "Content-Length: 100\r\n\r\n{\"a\":" };
        j.req_len = strlen(j.req);
        run_job(f, &j);
        job_free(&j);
        j = (Job){ .fn = job_hangup, .req = "GET /sync HTTP/1.1\r\nHost: x\r\nX-Long: aaaa" };
        j.req_len = strlen(j.req);
        run_job(f, &j);
        job_free(&j);
        run_for(f, 50 * USEC_PER_MSEC);
        assert_int_equal(f->handled, 0);
        Resp r = request(f, 0, "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n", 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        assert_int_equal(f->handled, 1);
}

/* --- issue 13: nothing a local user sends may stall, blind or trick the server --- */

/* Sends a raw request (length given: it may hold NUL bytes) and reads the answer; the answer must
 * come at once, not after an idle timeout. */
static Resp request_quick(Fixture *f, uint16_t port, const char *req, size_t len) {
        Job j = { .fn = job_one, .req = req, .req_len = len, .port = port };
        run_job(f, &j);
        if (j.rc[0] != 0)
                fail_msg("no answer to %.40s… (rc %d after %llu ms)", req, j.rc[0],
                         (unsigned long long) (j.elapsed / USEC_PER_MSEC));
        if (j.elapsed > 2 * USEC_PER_SEC)
                fail_msg("answered %d after %llu ms, not at once", j.resp[0].status,
                         (unsigned long long) (j.elapsed / USEC_PER_MSEC));
        Resp r = j.resp[0];
        j.resp[0] = (Resp){ 0 };
        job_free(&j);
        return r;
}

#define RAW(s) s, sizeof(s) - 1

/* http_head_parse() on its own: what it accepts, what it refuses with which status, and that every
 * strict prefix of a valid head asks for more. */
static void test_head_parse(void **state) {
        (void) state;
        static const struct {
                const char *head;
                size_t len;
                int status; /* 0: valid */
        } cases[] = {
                { RAW("GET / HTTP/1.1\r\n\r\n"), 0 },
                { RAW("GET /v1/vms?x=1 HTTP/1.0\r\nHost: a\r\nX-Obs: caf\xc3\xa9\t \r\n\r\n"), 0 },
                { RAW("POST /a HTTP/1.1\r\nContent-Length:  12 \r\n\r\n"), 0 },
                { RAW("POST /a HTTP/1.1\r\ntransfer-encoding: Chunked\r\n\r\n"), 0 },
                { RAW("GET /a\0 HTTP/1.1\r\n\r\n"), 400 },
                { RAW("GET /a\x01 HTTP/1.1\r\n\r\n"), 400 },
                { RAW("GET /a\x7f HTTP/1.1\r\n\r\n"), 400 },
                { RAW("GET /a\xff HTTP/1.1\r\n\r\n"), 400 },
                { RAW("GET  /a HTTP/1.1\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1 \r\n\r\n"), 400 },
                { RAW("GET /a http/1.1\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/2.0\r\n\r\n"), 505 },
                { RAW("GET /a HTTP/1.1\n\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nA: b\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\n\rX"), 400 },
                { RAW("\r\nGET /a HTTP/1.1\r\n\r\n"), 400 },
                { RAW("G\x7fT /a HTTP/1.1\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\n: b\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nA\x01: b\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nA: b\x7f\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nContent-Length: +1\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nContent-Length:\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), 501 },
                { RAW("GET /a HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n"), 501 },
                { RAW("GET /a HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400 },
                { RAW("GET /a HTTP/1.1\r\nAuthorization: a\r\nauthorization: b\r\n\r\n"), 400 },
        };
        char err[256];
        HttpHead h;
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                int r = http_head_parse(cases[i].head, cases[i].len, &h, err, sizeof(err));
                if (cases[i].status == 0 && r != (int) cases[i].len)
                        fail_msg("case %zu: expected a head of %zu bytes, got %d (%s)", i, cases[i].len, r, err);
                if (cases[i].status != 0 && (r != -EBADMSG || h.status != (unsigned) cases[i].status || !err[0]))
                        fail_msg("case %zu: expected %d, got %d/%u", i, cases[i].status, r, h.status);
                if (cases[i].status != 0)
                        continue;
                for (size_t n = 0; n < cases[i].len; n++)
                        if (http_head_parse(cases[i].head, n, &h, err, sizeof(err)) != 0)
                                fail_msg("case %zu: prefix of %zu bytes: %s", i, n, err);
        }
        assert_int_equal(http_head_parse(RAW("POST /a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n"
                                             "Authorization:  Bearer x \r\n\r\n"),
                                         &h, err, sizeof(err)),
                         (int) strlen("POST /a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n"
                                      "Authorization:  Bearer x \r\n\r\n"));
        assert_true(h.has_length);
        assert_true(h.length == UINT64_MAX);
        assert_int_equal(h.authorization_len, 8);
        assert_memory_equal(h.authorization, "Bearer x", 8);
        /* A bad byte is refused as soon as it arrives, not at the end of the head. */
        assert_int_equal(http_head_parse(RAW("GET /a\0"), &h, err, sizeof(err)), -EBADMSG);
        assert_int_equal(http_head_parse(RAW("GET /a HTTP/1.1\r\n X"), &h, err, sizeof(err)), -EBADMSG);
}

/* A NUL byte in the request target used to cut the path short: "/sync\0xyz" was served as /sync. */
static void test_nul_in_target(void **state) {
        Fixture *f = *state;
        start_default(f);
        Resp r = request_quick(f, 0, RAW("GET /sync\0xyz HTTP/1.1\r\nHost: x\r\n\r\n"));
        check_error(&r, 400, "bad_request");
        resp_clear(&r);
        r = request_quick(f, 0, RAW("POST /vms/vmA\0/park HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"));
        check_error(&r, 400, "bad_request");
        resp_clear(&r);
        r = request_quick(f, 0, RAW("GET /sync?a=\0 HTTP/1.1\r\nHost: x\r\n\r\n"));
        check_error(&r, 400, "bad_request");
        resp_clear(&r);
        assert_int_equal(f->handled, 0);
}

/* RFC 9112 framing: what a lenient parser accepts (and a proxy in front may read otherwise) is a
 * clear 400 (501 for a transfer coding we do not implement), at once. */
static void test_strict_framing(void **state) {
        Fixture *f = *state;
        start_default(f);
        static const struct {
                const char *req;
                size_t len;
                int status;
                const char *code;
        } cases[] = {
                { RAW("POST /sync HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nContent-Type: "
                      "application/json\r\n\r\n"),
                  501, "not_implemented" },
                { RAW("POST /sync HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n"
                      "Content-Type: application/json\r\n\r\n0\r\n\r\n"),
                  501, "not_implemented" },
                { RAW("POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                      "Content-Length: 3\r\n\r\n{} "),
                  400, "bad_request" },
                { RAW("POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2, 3\r\n"
                      "\r\n{} "),
                  400, "bad_request" },
                { RAW("POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
                  400, "bad_request" },
                { RAW("GET /sync HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n\r\n"), 400, "bad_request" },
                { RAW("GET /sync HTTP/1.1\r\nHost: x\r\nX-A: a\r\n\tfolded\r\n\r\n"), 400, "bad_request" },
                { RAW("GET /sync HTTP/1.1\r\nHost : x\r\n\r\n"), 400, "bad_request" },
                { RAW("GET /sync HTTP/1.1\r\nHost: x\r\nX-A: a\0b\r\n\r\n"), 400, "bad_request" },
                { RAW("GET /sync HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n"), 400, "bad_request" },
                { RAW("GET /sync HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"), 400, "bad_request" },
        };
        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                Resp r = request_quick(f, 0, cases[i].req, cases[i].len);
                if (r.status != cases[i].status)
                        fail_msg("case %zu: expected %d, got %d", i, cases[i].status, r.status);
                check_error(&r, cases[i].status, cases[i].code);
                assert_true(head_has(&r, "Connection: close"));
                resp_clear(&r);
        }
        assert_int_equal(f->handled, 0);
        /* A client that sends a bad head and is gone before the answer: no SIGPIPE for us. */
        int fd = cl_connect_unix(f->sock);
        assert_true(fd >= 0);
        assert_true(cl_send(fd, RAW("GET /a\0b HTTP/1.1\r\n\r\n")));
        close(fd);
        run_for(f, 50 * USEC_PER_MSEC);
        /* Still served: a plain chunked body. */
        Resp r = request_quick(f, 0,
                               RAW("POST /sync HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                   "Content-Type: application/json\r\n\r\n2\r\n{}\r\n0\r\n\r\n"));
        assert_int_equal(r.status, 200);
        resp_clear(&r);
}

/* A head of exactly HTTP_HEAD_MAX bytes (with a URI of HTTP_URI_MAX) still fits in what MHD is given
 * per connection; one byte more is our JSON 431. */
static char *make_head(size_t total) {
        char *req = malloc(total + 1);
        assert_non_null(req);
        int h = snprintf(req, total + 1, "GET /");
        memset(req + h, 'u', HTTP_URI_MAX - 1);
        size_t n = (size_t) h + HTTP_URI_MAX - 1;
        n += (size_t) snprintf(req + n, total + 1 - n, " HTTP/1.1\r\nHost: x\r\nX-Pad: ");
        size_t pad = total - n - 4;
        memset(req + n, 'p', pad);
        memcpy(req + n + pad, "\r\n\r\n", 5);
        assert_int_equal(strlen(req), total);
        return req;
}

static void test_head_max(void **state) {
        Fixture *f = *state;
        start_default(f);
        char *req = make_head(HTTP_HEAD_MAX);
        Resp r = request_quick(f, 0, req, HTTP_HEAD_MAX);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        free(req);
        req = make_head(HTTP_HEAD_MAX + 1);
        r = request_quick(f, 0, req, HTTP_HEAD_MAX + 1);
        check_error(&r, 431, "header_fields_too_large");
        resp_clear(&r);
        free(req);
        assert_int_equal(f->handled, 1);
}

/* Out of file descriptors, accept() fails while the listening socket stays readable: the server
 * pauses accepting (backing off) instead of spinning, and serves the waiting clients once fds are
 * free again. */
static void test_accept_backoff(void **state) {
        Fixture *f = *state;
        start_default(f);
        int clients[3];
        for (size_t i = 0; i < ELEMENTSOF(clients); i++) {
                clients[i] = cl_connect_unix(f->sock); /* queued in the backlog: the loop has not run */
                assert_true(clients[i] >= 0);
        }
        struct rlimit old;
        assert_int_equal(getrlimit(RLIMIT_NOFILE, &old), 0);
        int top = fcntl(clients[ELEMENTSOF(clients) - 1], F_DUPFD_CLOEXEC, 0);
        assert_true(top >= 0);
        struct rlimit low = { .rlim_cur = (rlim_t) top + 1, .rlim_max = old.rlim_max };
        close(top);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &low), 0);
        int fill[256];
        size_t n_fill = 0;
        while (n_fill < ELEMENTSOF(fill)) {
                int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        break;
                fill[n_fill++] = fd;
        }
        unsigned wakeups = count_wakeups(f, 300 * USEC_PER_MSEC);
        HttpCounters c;
        http_server_counters(f->srv, &c);
        for (size_t i = 0; i < n_fill; i++)
                close(fill[i]);
        assert_int_equal(setrlimit(RLIMIT_NOFILE, &old), 0);
        if (wakeups > 20)
                fail_msg("%u wakeups in 300 ms while out of file descriptors", wakeups);
        assert_true(c.accept_backoff >= 1);

        /* fds are back: the clients waiting in the backlog are served. */
        Job j = { .fn = job_one, .req = "GET /sync HTTP/1.1\r\nHost: x\r\n\r\n" };
        j.req_len = strlen(j.req);
        for (size_t i = 0; i < ELEMENTSOF(clients); i++)
                assert_true(cl_send(clients[i], j.req, j.req_len));
        run_for(f, 1200 * USEC_PER_MSEC); /* the longest pause is 1 s */
        for (size_t i = 0; i < ELEMENTSOF(clients); i++) {
                Resp r;
                assert_int_equal(cl_read(clients[i], &r), 0);
                assert_int_equal(r.status, 200);
                resp_clear(&r);
                close(clients[i]);
        }
}

/* Slowloris: one header line every 300 ms kept a connection open for as long as the client liked
 * (the timeout was an idle timeout). The headers now have a total deadline. */
static void job_slow_headers(Job *j) {
        int fd = job_connect(j);
        if (fd < 0) {
                j->rc[0] = -2;
                return;
        }
        usec_t t0 = now_mono();
        j->eof = false;
        if (!cl_send(fd, "GET /sync HTTP/1.1\r\n", 20))
                goto out;
        while (now_mono() - t0 < 6 * USEC_PER_SEC) {
                usleep(300 * 1000);
                if (!cl_send(fd, "X-Slow: 1\r\n", 11))
                        break;
        }
out:
        j->rc[0] = cl_read(fd, &j->resp[0]);
        j->elapsed = now_mono() - t0;
        close(fd);
}

static void test_header_deadline(void **state) {
        Fixture *f = *state;
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .header_timeout = 1 * USEC_PER_SEC };
        start_server(f, &cfg);
        Job j = { .fn = job_slow_headers };
        run_job(f, &j);
        if (j.elapsed > 3 * USEC_PER_SEC)
                fail_msg("a client trickling headers was served for %llu ms",
                         (unsigned long long) (j.elapsed / USEC_PER_MSEC));
        if (j.rc[0] == 0)
                check_error(&j.resp[0], 408, "request_timeout");
        job_free(&j);
        assert_int_equal(f->handled, 0);
}

/* On TCP the per-address cap counts connections that showed a valid token. */
static void job_tcp_per_peer(Job *j) {
        static const char hold[] = "GET /hold HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rtok-0123456789\r\n\r\n";
        int a = cl_connect_tcp(j->port), b = cl_connect_tcp(j->port);
        if (a < 0 || b < 0 || !cl_send(a, hold, sizeof(hold) - 1) || !cl_send(b, hold, sizeof(hold) - 1))
                j->rc[0] = -2;
        usleep(100 * 1000);
        int c = cl_connect_tcp(j->port);
        j->rc[1] = c < 0 ? -2 : cl_roundtrip_fd(c, hold, sizeof(hold) - 1, &j->resp[1]);
        if (c >= 0)
                close(c);
        if (a >= 0)
                close(a);
        if (b >= 0)
                close(b);
}

static void test_tcp_per_peer(void **state) {
        Fixture *f = *state;
        write_file(f->tokens, "rtok-0123456789 read\n", 0600);
        HttpServerConfig cfg = { .write_gid = (gid_t) -1,
                                 .listen_tcp = "127.0.0.1:0",
                                 .tokens_file = f->tokens,
                                 .max_connections_per_peer = 2 };
        start_server(f, &cfg);
        Job j = { .fn = job_tcp_per_peer, .port = http_server_tcp_port(f->srv) };
        run_job(f, &j);
        assert_int_equal(j.rc[0], 0);
        assert_int_equal(j.rc[1], 0);
        check_error(&j.resp[1], 503, "unavailable");
        assert_non_null(strstr(j.resp[1].body, "address"));
        job_free(&j);
        assert_int_equal(f->n_held, 2);
}

/* A body trickled one byte every 200 ms met only MHD's idle timeout: it now has a total deadline. A
 * held request (waiting for its handler's answer) is not cut by it. */
static void job_slow_body(Job *j) {
        int fd = job_connect(j);
        if (fd < 0) {
                j->rc[0] = -2;
                return;
        }
        static const char head[] = "POST /sync HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                   "Content-Length: 100\r\n\r\n";
        usec_t t0 = now_mono();
        bool sent = cl_send(fd, head, sizeof(head) - 1);
        for (int i = 0; sent && i < 30; i++) {
                usleep(200 * 1000);
                sent = cl_send(fd, " ", 1);
        }
        j->eof = !sent || cl_wait_eof(fd);
        j->elapsed = now_mono() - t0;
        close(fd);
}

static void test_body_deadline(void **state) {
        Fixture *f = *state;
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .body_timeout = 1 * USEC_PER_SEC };
        start_server(f, &cfg);
        Job j = { .fn = job_slow_body };
        run_job(f, &j);
        assert_true(j.eof);
        if (j.elapsed > 3 * USEC_PER_SEC)
                fail_msg("a trickled body kept its connection for %llu ms",
                         (unsigned long long) (j.elapsed / USEC_PER_MSEC));
        assert_int_equal(f->handled, 0);
        HttpCounters c;
        http_server_counters(f->srv, &c);
        assert_int_equal(c.timeouts, 1);

        /* A held call outlives the deadline and is still answered. */
        static const char hold[] = "GET /hold HTTP/1.1\r\nHost: x\r\n\r\n";
        Job h = { .fn = job_send_only, .req = hold, .req_len = sizeof(hold) - 1 };
        run_job(f, &h);
        assert_true(h.fd >= 0);
        run_for(f, 1500 * USEC_PER_MSEC);
        assert_int_equal(f->n_held, 1);
        http_call_reply_json(f->held[0], 200, json_pack("{s:s}", "late", "yes"));
        f->n_held = 0;
        run_for(f, 20 * USEC_PER_MSEC);
        Resp r;
        assert_int_equal(cl_read(h.fd, &r), 0);
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        close(h.fd);
}

/* In a forked child as nobody: opens n connections, each with the start of a request, and keeps
 * them alive with a header line every 200 ms until the parent closes the pipe. */
static pid_t fork_flood(const char *sock, unsigned n, int *ret_ready, int *ret_stop) {
        int ready[2], stop[2];
        assert_int_equal(pipe(ready), 0);
        assert_int_equal(pipe(stop), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid > 0) {
                close(ready[1]);
                close(stop[0]);
                *ret_ready = ready[0];
                *ret_stop = stop[1];
                return pid;
        }
        close(ready[0]);
        close(stop[1]);
        if (setgroups(0, NULL) < 0 || setgid(NOBODY) < 0 || setuid(NOBODY) < 0)
                _exit(10);
        int fds[256];
        unsigned k = 0;
        for (unsigned i = 0; i < n && k < ELEMENTSOF(fds); i++) {
                int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                if (fd < 0 || strlen(sock) >= sizeof(sa.sun_path))
                        _exit(11);
                memcpy(sa.sun_path, sock, strlen(sock) + 1);
                if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                        close(fd);
                        continue;
                }
                (void) send(fd, "GET /sync HTTP/1.1\r\n", 20, MSG_NOSIGNAL);
                fds[k++] = fd;
        }
        (void) !write(ready[1], "r", 1);
        for (;;) {
                struct timeval tv = { .tv_usec = 200 * 1000 };
                fd_set set;
                FD_ZERO(&set);
                FD_SET(stop[0], &set);
                if (select(stop[0] + 1, &set, NULL, NULL, &tv) != 0)
                        _exit(0);
                for (unsigned i = 0; i < k; i++)
                        (void) send(fds[i], "X-Slow: 1\r\n", 11, MSG_NOSIGNAL);
        }
}

/* Runs the loop until fd is readable (deadline 10 s). */
static void run_until_readable(Fixture *f, int fd) {
        usec_t deadline = usec_add(now_mono(), 10 * USEC_PER_SEC);
        for (;;) {
                fd_set set;
                struct timeval tv = { 0 };
                FD_ZERO(&set);
                FD_SET(fd, &set);
                if (select(fd + 1, &set, NULL, NULL, &tv) > 0)
                        return;
                if (now_mono() > deadline)
                        fail_msg("the flood client did not get going");
                assert_true(ev_run_once(f->ev, usec_add(now_mono(), 5 * USEC_PER_MSEC)) >= 0);
        }
}

/* An unprivileged user holding every connection (kept alive by slow headers) must not lock root
 * out: connections are capped per peer and some are kept for root and the write group. */
static void test_flood_unix(void **state) {
        Fixture *f = *state;
        if (geteuid() != 0)
                skip(); /* needs setuid() to act as another user */
        assert_int_equal(chmod(f->dir, 0755), 0);
        HttpServerConfig cfg = { .write_gid = (gid_t) -1, .max_connections = 16 };
        start_server(f, &cfg);
        int ready, stop;
        pid_t pid = fork_flood(f->sock, 40, &ready, &stop);
        run_until_readable(f, ready);
        run_for(f, 100 * USEC_PER_MSEC);

        /* Root, while the flood goes on. */
        Resp r = request_quick(f, 0, RAW("GET /sync HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert_int_equal(r.status, 200);
        resp_clear(&r);
        /* nobody got max_connections - reserved (16 - 8) at most; the rest were refused at once. */
        HttpCounters c;
        http_server_counters(f->srv, &c);
        if (c.refused < 40 - 8)
                fail_msg("only %llu of nobody's 40 connections were refused", (unsigned long long) c.refused);
        close(stop);
        close(ready);
        int status;
        usec_t deadline = usec_add(now_mono(), 10 * USEC_PER_SEC);
        while (waitpid(pid, &status, WNOHANG) == 0) {
                if (now_mono() > deadline) {
                        kill(pid, SIGKILL);
                        fail_msg("flood child did not stop");
                }
                assert_true(ev_run_once(f->ev, usec_add(now_mono(), 5 * USEC_PER_MSEC)) >= 0);
        }
}

/* Connections that never authenticate (no token needed to open them) must not lock out a client
 * with a token. */
static void job_tcp_flood(Job *j) {
        int fds[64];
        size_t n = 0;
        for (size_t i = 0; i < ELEMENTSOF(fds); i++) {
                fds[i] = cl_connect_tcp(j->port);
                if (fds[i] >= 0) {
                        (void) cl_send(fds[i], "GET /sync HTTP/1.1\r\n", 20);
                        n++;
                }
        }
        usleep(100 * 1000);
        int fd = cl_connect_tcp(j->port);
        usec_t t0 = now_mono();
        static const char req[] = "GET /sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer rtok-0123456789\r\n\r\n";
        j->rc[0] = fd < 0 ? -2 : cl_roundtrip_fd(fd, req, sizeof(req) - 1, &j->resp[0]);
        j->elapsed = now_mono() - t0;
        if (fd >= 0)
                close(fd);
        for (size_t i = 0; i < ELEMENTSOF(fds); i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        j->n_ok = (int) n;
}

static void test_flood_tcp(void **state) {
        Fixture *f = *state;
        write_file(f->tokens, "rtok-0123456789 read\n", 0600);
        HttpServerConfig cfg = {
                .write_gid = (gid_t) -1, .listen_tcp = "127.0.0.1:0", .tokens_file = f->tokens, .max_connections = 16
        };
        start_server(f, &cfg);
        Job j = { .fn = job_tcp_flood, .port = http_server_tcp_port(f->srv) };
        run_job(f, &j);
        if (j.rc[0] != 0 || j.elapsed > 2 * USEC_PER_SEC)
                fail_msg("a client with a token behind %d unauthenticated connections: rc %d after %llu ms", j.n_ok,
                         j.rc[0], (unsigned long long) (j.elapsed / USEC_PER_MSEC));
        assert_int_equal(j.resp[0].status, 200);
        job_free(&j);
}

int main(void) {
        if (getenv("BALLAST_TEST_DEBUG"))
                log_set_max_level(LOG_LEVEL_DEBUG);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_get_sync, setup, teardown),
                cmocka_unit_test_setup_teardown(test_post_async, setup, teardown),
                cmocka_unit_test_setup_teardown(test_body_limits, setup, teardown),
                cmocka_unit_test_setup_teardown(test_content_type, setup, teardown),
                cmocka_unit_test_setup_teardown(test_bad_url, setup, teardown),
                cmocka_unit_test_setup_teardown(test_write_denied, setup, teardown),
                cmocka_unit_test_setup_teardown(test_peer_groups, setup, teardown),
                cmocka_unit_test(test_status_groups),
                cmocka_unit_test_setup_teardown(test_tcp_tokens, setup, teardown),
                cmocka_unit_test_setup_teardown(test_flat_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_tokens_file_errors, setup, teardown),
                cmocka_unit_test_setup_teardown(test_socket_file, setup, teardown),
                cmocka_unit_test_setup_teardown(test_disconnect_pending, setup, teardown),
                cmocka_unit_test_setup_teardown(test_idle_quiet, setup, teardown),
                cmocka_unit_test_setup_teardown(test_many_connections, setup, teardown),
                cmocka_unit_test_setup_teardown(test_keepalive, setup, teardown),
                cmocka_unit_test_setup_teardown(test_pipeline_and_big, setup, teardown),
                cmocka_unit_test_setup_teardown(test_free_with_pending, setup, teardown),
                cmocka_unit_test_setup_teardown(test_idle_timeout, setup, teardown),
                cmocka_unit_test_setup_teardown(test_connection_limit, setup, teardown),
                cmocka_unit_test_setup_teardown(test_truncated, setup, teardown),
                cmocka_unit_test(test_head_parse),
                cmocka_unit_test_setup_teardown(test_nul_in_target, setup, teardown),
                cmocka_unit_test_setup_teardown(test_strict_framing, setup, teardown),
                cmocka_unit_test_setup_teardown(test_head_max, setup, teardown),
                cmocka_unit_test_setup_teardown(test_accept_backoff, setup, teardown),
                cmocka_unit_test_setup_teardown(test_header_deadline, setup, teardown),
                cmocka_unit_test_setup_teardown(test_body_deadline, setup, teardown),
                cmocka_unit_test_setup_teardown(test_flood_unix, setup, teardown),
                cmocka_unit_test_setup_teardown(test_flood_tcp, setup, teardown),
                cmocka_unit_test_setup_teardown(test_tcp_per_peer, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
