/* SPDX-License-Identifier: MIT */
/* The asynchronous QMP driver and set-and-wait against peers over real Unix sockets: the fake QEMU
 * of tests/peers/qmp-peer.c (compiled in, run in a forked child) and small scripted peers for the
 * protocol corner cases. Every wait has a generous deadline; no sleep is used to synchronise. */
#include <dirent.h>
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define QMP_PEER_NO_MAIN
#include "../peers/qmp-peer.c"

#include "hv/hv.h"
#include "hv/qmp.h"
#include "shared/ev.h"

#define PEER_FIXTURE_HV
#include "peer-fixture.h"
#include "shared/macro.h"

#define NOBODY ((uid_t) 65534)

static int setup(void **state) {
        return fixture_setup(state, "qmp", "qmp.sock");
}

/* --- peers in child processes --- */

typedef void (*script_fn)(int fd);

/* Forks a child that (optionally drops to drop_uid, then) listens on path and either runs the fake
 * QEMU with cfg or accepts one client and runs script on it. Returns once the socket listens. */
static pid_t spawn(Fixture *f, const char *path, const PeerConfig *cfg, script_fn script, uid_t drop_uid) {
        int ready;
        pid_t pid = fork_peer(f, drop_uid, "peer child", &ready);
        if (pid == 0) {
                if (cfg) {
                        PeerConfig c = *cfg;
                        c.socket_path = path;
                        c.ready_fd = ready;
                        _exit(peer_serve(&c) < 0 ? 11 : 0);
                }
                char err[256];
                int lfd = usock_listen(path, 0600, err, sizeof(err));
                if (lfd < 0 || fcntl(lfd, F_SETFL, 0) < 0) /* blocking accept */
                        _exit(12);
                (void) !write(ready, "R", 1);
                close(ready);
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (fd < 0)
                        _exit(13);
                script(fd);
                /* Stay connected until the client goes away (or we are killed). */
                char b[4096];
                while (read(fd, b, sizeof(b)) > 0)
                        ;
                _exit(0);
        }
        return pid;
}

static pid_t spawn_peer(Fixture *f, PeerMode mode, uint64_t rate, uint64_t floor_, int reached_fd) {
        PeerConfig c;
        peer_config_init(&c);
        c.mode = mode;
        c.rate_mib_s = rate;
        c.floor = floor_;
        c.reached_fd = reached_fd;
        return spawn(f, f->path, &c, NULL, (uid_t) -1);
}

/* Script helpers (child side): blocking I/O; any surprise exits the child, which the parent sees
 * as a failed operation. */
static char *sc_line(int fd) {
        static char buf[65536];
        size_t n = 0;
        for (;;) {
                struct pollfd p = { .fd = fd, .events = POLLIN };
                if (poll(&p, 1, 20000) != 1)
                        _exit(20);
                if (read(fd, buf + n, 1) != 1)
                        _exit(21);
                if (buf[n] == '\n') {
                        buf[n] = 0;
                        return buf;
                }
                if (++n == sizeof(buf))
                        _exit(22);
        }
}

static void sc_write(int fd, const char *s) {
        size_t n = strlen(s);
        if (write(fd, s, n) != (ssize_t) n)
                _exit(23);
}

/* Reads one command, checks its name, returns its id. */
static json_int_t sc_expect(int fd, const char *name) {
        json_t *j = json_loads(sc_line(fd), 0, NULL);
        if (!j || !json_is_string(json_object_get(j, "execute")) ||
            strcmp(json_string_value(json_object_get(j, "execute")), name) != 0 ||
            !json_is_integer(json_object_get(j, "id")))
                _exit(24);
        json_int_t id = json_integer_value(json_object_get(j, "id"));
        json_decref(j);
        return id;
}

static void sc_writef(int fd, const char *fmt, ...) _printf_(2, 3);
static void sc_writef(int fd, const char *fmt, ...) {
        char b[4096];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b, sizeof(b), fmt, ap);
        va_end(ap);
        sc_write(fd, b);
}

static void sc_handshake(int fd) {
        sc_write(fd, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": "
                     "\"v7.2.0\"}, \"capabilities\": [\"oob\"]}}\r\n");
        json_int_t id = sc_expect(fd, "qmp_capabilities");
        sc_writef(fd, "{\"return\": {}, \"id\": %lld}\r\n", (long long) id);
}

#define EV_BC(actual)                                                                                                  \
        "{\"timestamp\": {\"seconds\": 1795331913, \"microseconds\": 599801}, \"event\": \"BALLOON_CHANGE\", "         \
        "\"data\": {\"actual\": " #actual "}}\r\n"

/* --- parent side --- */

static Hv *new_hv(Fixture *f, const char *path, uid_t uid) {
        QmpConfig c = { .socket_path = path, .expected_uid = uid };
        Hv *hv = NULL;
        assert_int_equal(qmp_hv_new(f->ev, &c, &hv), 0);
        assert_non_null(hv);
        return hv;
}

static HvReply get_actual(Fixture *f, Hv *hv, usec_t timeout) {
        Got g = { 0 };
        assert_int_equal(hv_get_actual(hv, timeout, on_reply, &g), 0);
        assert_false(g.done); /* never called back synchronously */
        run_until(f->ev, &g.done, timeout + 10 * USEC_PER_SEC);
        assert_int_equal(g.r.op, HV_OP_GET_ACTUAL);
        return g.r;
}

typedef struct Listener {
        uint64_t values[4096];
        uint64_t when_rt[4096];
        size_t n;
} Listener;

static void on_actual(Hv *hv, uint64_t actual, uint64_t when_realtime, void *userdata) {
        Listener *l = userdata;
        (void) hv;
        if (l->n < ELEMENTSOF(l->values)) {
                l->values[l->n] = actual;
                l->when_rt[l->n] = when_realtime;
                l->n++;
        }
}

/* --- normal session against the fake QEMU --- */

static void test_normal_session(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_NORMAL, 1000, 0, -1);
        Hv *hv = new_hv(f, f->path, geteuid());
        Listener *l = calloc(1, sizeof(Listener));
        assert_non_null(l);
        assert_int_equal(hv_add_listener(hv, on_actual, l), 0);
        assert_string_equal(qmp_hv_version(hv), "");

        Got g = { 0 };
        assert_int_equal(hv_get_caps(hv, 5 * USEC_PER_SEC, on_reply, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        if (g.r.error < 0)
                fail_msg("get-caps: %s", g.r.message);
        assert_true(g.r.caps.balloon);
        assert_true(g.r.caps.ram_bytes == GiB);
        assert_false(g.r.caps.deflate_on_oom);
        assert_false(g.r.caps.free_page_reporting);
        assert_string_equal(g.r.caps.version, "QEMU 7.2.22");
        assert_string_equal(qmp_hv_version(hv), "QEMU 7.2.22");

        HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, 0);
        assert_true(r.actual == GiB);

        /* Stats: polling is off by default, so everything is unset. */
        g = (Got){ 0 };
        assert_int_equal(hv_get_stats(hv, 5 * USEC_PER_SEC, on_reply, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        if (g.r.error < 0)
                fail_msg("get-stats: %s", g.r.message);
        assert_true(g.r.stats.total == HV_STAT_UNSET);
        assert_true(g.r.stats.available == HV_STAT_UNSET);
        assert_true(g.r.stats.last_update == 0);
        assert_int_equal(g.r.stats.period, 0);

        g = (Got){ 0 };
        assert_int_equal(hv_set_stats_period(hv, 2, 5 * USEC_PER_SEC, on_reply, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        assert_int_equal(g.r.error, 0);

        g = (Got){ 0 };
        assert_int_equal(hv_get_stats(hv, 5 * USEC_PER_SEC, on_reply, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        assert_int_equal(g.r.error, 0);
        assert_true(g.r.stats.total != HV_STAT_UNSET && g.r.stats.total < GiB);
        assert_true(g.r.stats.available != HV_STAT_UNSET && g.r.stats.available <= g.r.stats.total);
        assert_true(g.r.stats.last_update > 0);
        assert_int_equal(g.r.stats.period, 2);

        /* balloon: accepted at once; the guest converges later and BALLOON_CHANGE reaches listeners
         * (rate-limited: the final value can come up to a second after the change). */
        g = (Got){ 0 };
        assert_int_equal(hv_set_target(hv, 768 * MiB, 5 * USEC_PER_SEC, on_reply, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        assert_int_equal(g.r.error, 0);
        assert_int_equal(g.r.op, HV_OP_SET_TARGET);
        usec_t deadline = now_mono() + 20 * USEC_PER_SEC;
        while (l->n == 0 || l->values[l->n - 1] != 768 * MiB) {
                assert_true(now_mono() < deadline);
                assert_true(ev_run_once(f->ev, deadline) >= 0);
        }
        for (size_t i = 1; i < l->n; i++)
                assert_true(l->values[i] < l->values[i - 1]); /* inflating: strictly down */
        assert_true(l->when_rt[0] > 0);
        r = get_actual(f, hv, 5 * USEC_PER_SEC);
        assert_true(r.actual == 768 * MiB);

        /* Refused values never reach the wire. */
        assert_int_equal(hv_set_target(hv, 0, USEC_PER_SEC, on_reply, &g), -EINVAL);

        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_int_equal(c.connects, 1);
        assert_int_equal(c.protocol_errors, 0);
        assert_int_equal(c.stale_replies, 0);
        assert_int_equal(c.timeouts, 0);
        assert_true(c.events >= 1);
        assert_true(c.replies == c.commands);
        hv_free(hv);
        free(l);
}

static void test_no_balloon_device(void **state) {
        Fixture *f = *state;
        PeerConfig c;
        peer_config_init(&c);
        c.no_balloon = true;
        spawn(f, f->path, &c, NULL, (uid_t) -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENODEV);
        assert_non_null(strstr(r.message, "DeviceNotActive"));
        Got g = { 0 };
        assert_int_equal(hv_get_caps(hv, 5 * USEC_PER_SEC, on_reply, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        assert_int_equal(g.r.error, 0);
        assert_false(g.r.caps.balloon);
        assert_true(g.r.caps.ram_bytes == GiB);
        g = (Got){ 0 };
        assert_int_equal(hv_get_stats(hv, 5 * USEC_PER_SEC, on_reply, &g), 0);
        run_until(f->ev, &g.done, 20 * USEC_PER_SEC);
        assert_int_equal(g.r.error, -ENODEV);
        hv_free(hv);
}

/* --- scripted corner cases --- */

static void script_events(int fd) {
        sc_handshake(fd);
        json_int_t id = sc_expect(fd, "query-balloon");
        sc_write(fd, EV_BC(111)); /* before the reply */
        sc_write(fd, "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"STOP\"}\r\n");
        sc_writef(fd, EV_BC(222) "{\"return\": {\"actual\": 123456789}, \"id\": %lld}\r\n" EV_BC(333),
                  (long long) id); /* one write: event, reply, event */
}

static void test_events_interleaved(void **state) {
        Fixture *f = *state;
        spawn(f, f->path, NULL, script_events, (uid_t) -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        Listener *l = calloc(1, sizeof(Listener));
        assert_non_null(l);
        assert_int_equal(hv_add_listener(hv, on_actual, l), 0);
        HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
        if (r.error < 0)
                fail_msg("%s", r.message);
        assert_true(r.actual == 123456789);
        usec_t deadline = now_mono() + 10 * USEC_PER_SEC;
        while (l->n < 3) {
                assert_true(now_mono() < deadline);
                assert_true(ev_run_once(f->ev, deadline) >= 0);
        }
        assert_int_equal(l->n, 3);
        assert_true(l->values[0] == 111 && l->values[1] == 222 && l->values[2] == 333);
        assert_true(l->when_rt[0] == UINT64_C(1795331913599801));
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_int_equal(c.events, 4);
        assert_int_equal(c.stale_replies, 0);
        assert_int_equal(c.protocol_errors, 0);
        hv_remove_listener(hv, on_actual, l);
        hv_free(hv);
        free(l);
}

static void script_stale(int fd) {
        sc_handshake(fd);
        /* First query: never answered in time; the client times out and asks again. */
        json_int_t id1 = sc_expect(fd, "query-balloon");
        json_int_t id2 = sc_expect(fd, "query-balloon");
        sc_writef(fd, "{\"return\": {\"actual\": 1}, \"id\": %lld}\r\n", (long long) id1);          /* late */
        sc_writef(fd, "{\"return\": {\"actual\": 2}, \"id\": %lld}\r\n", (long long) (id2 + 1000)); /* unknown */
        sc_write(fd, "{\"return\": {\"actual\": 3}, \"id\": {\"x\": [1, 2]}}\r\n");                 /* not ours */
        sc_writef(fd, "{\"return\": {\"actual\": 4096}, \"id\": %lld}\r\n", (long long) id2);
}

static void test_stale_replies(void **state) {
        Fixture *f = *state;
        spawn(f, f->path, NULL, script_stale, (uid_t) -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);

        /* Negotiated, then no reply: -ETIMEDOUT "no reply". */
        usec_t t0 = now_mono();
        HvReply r = get_actual(f, hv, 300 * USEC_PER_MSEC);
        usec_t took = now_mono() - t0;
        assert_int_equal(r.error, -ETIMEDOUT);
        assert_non_null(strstr(r.message, "no reply"));
        assert_true(took >= 290 * USEC_PER_MSEC);
        assert_true(took < 5 * USEC_PER_SEC);

        r = get_actual(f, hv, 10 * USEC_PER_SEC);
        if (r.error < 0)
                fail_msg("%s", r.message);
        assert_true(r.actual == 4096);
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_int_equal(c.stale_replies, 3);
        assert_int_equal(c.timeouts, 1);
        assert_int_equal(c.connects, 1); /* a reply timeout keeps the connection */
        assert_int_equal(c.protocol_errors, 0);
        hv_free(hv);
}

static void script_idless_error(int fd) {
        sc_handshake(fd);
        json_int_t id1 = sc_expect(fd, "query-balloon");
        json_int_t id2 = sc_expect(fd, "query-balloon");
        if (id1 == id2)
                _exit(25);
        sc_write(fd, "{\"error\": {\"class\": \"GenericError\", \"desc\": \"JSON parse error, expecting value\"}}\r\n");
        sc_writef(fd, "{\"return\": {\"actual\": 777}, \"id\": %lld}\r\n", (long long) id2);
}

static void test_idless_error_answers_oldest(void **state) {
        Fixture *f = *state;
        spawn(f, f->path, NULL, script_idless_error, (uid_t) -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        Got a = { 0 }, b = { 0 };
        assert_int_equal(hv_get_actual(hv, 10 * USEC_PER_SEC, on_reply, &a), 0);
        assert_int_equal(hv_get_actual(hv, 10 * USEC_PER_SEC, on_reply, &b), 0);
        run_until(f->ev, &b.done, 30 * USEC_PER_SEC);
        run_until(f->ev, &a.done, 30 * USEC_PER_SEC);
        assert_int_equal(a.r.error, -EREMOTEIO);
        assert_non_null(strstr(a.r.message, "GenericError"));
        assert_non_null(strstr(a.r.message, "JSON parse error"));
        assert_int_equal(b.r.error, 0);
        assert_true(b.r.actual == 777);
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_int_equal(c.stale_replies, 0);
        hv_free(hv);
}

static void script_not_greeting(int fd) {
        sc_write(fd, "{\"return\": {}}\r\n");
}

static void test_no_greeting_first(void **state) {
        Fixture *f = *state;
        spawn(f, f->path, NULL, script_not_greeting, (uid_t) -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
        if (r.error != -EPROTO)
                fail_msg("%d: %s", r.error, r.message);
        assert_non_null(strstr(r.message, "greeting"));
        hv_free(hv);
}

/* --- misbehaving fake QEMU modes --- */

static void test_hung_peer(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_HANG, 256, 0, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        usec_t t0 = now_mono();
        HvReply r = get_actual(f, hv, 500 * USEC_PER_MSEC);
        usec_t took = now_mono() - t0;
        assert_int_equal(r.error, -ETIMEDOUT);
        assert_non_null(strstr(r.message, "greeting"));
        assert_true(took >= 490 * USEC_PER_MSEC);
        assert_true(took < 5 * USEC_PER_SEC);
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_int_equal(c.timeouts, 1);
        hv_free(hv);
}

static void test_greet_only_peer(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_GREET_ONLY, 256, 0, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        usec_t t0 = now_mono();
        HvReply r = get_actual(f, hv, 400 * USEC_PER_MSEC);
        usec_t took = now_mono() - t0;
        assert_int_equal(r.error, -ETIMEDOUT);
        assert_non_null(strstr(r.message, "negotiation"));
        assert_true(took >= 390 * USEC_PER_MSEC);
        assert_true(took < 5 * USEC_PER_SEC);
        assert_string_equal(qmp_hv_version(hv), "QEMU 7.2.22");
        hv_free(hv);
}

static void test_garbage_peer(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_GARBAGE, 256, 0, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        for (int i = 0; i < 2; i++) {
                HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
                assert_int_equal(r.error, -EBADMSG);
                assert_non_null(strstr(r.message, "malformed"));
        }
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_int_equal(c.protocol_errors, 2);
        assert_int_equal(c.connects, 2); /* each failure dropped the connection; the next op redialled */
        hv_free(hv);
}

static void test_flood_peer(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_FLOOD, 256, 0, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        uint64_t before = rss_kib();
        HvReply r = get_actual(f, hv, 10 * USEC_PER_SEC);
        uint64_t after = rss_kib();
        assert_int_equal(r.error, -EMSGSIZE);
        assert_true(strlen(r.message) > 0);
        /* The peer writes up to 64 MiB on one line; we hold at most ~1 MiB of it. */
        if (after > before + 24 * 1024)
                fail_msg("RSS grew by %llu KiB while reading an endless line", (unsigned long long) (after - before));
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_true(c.protocol_errors >= 1 || strstr(r.message, "size limit"));
        hv_free(hv);
}

static void test_close_mid_reply_then_reconnect(void **state) {
        Fixture *f = *state;
        pid_t pid = spawn_peer(f, PEER_CLOSE_MID_REPLY, 256, 0, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ECONNRESET);
        assert_non_null(strstr(r.message, "closed"));

        /* A fresh, healthy QEMU at the same path: the same Hv reconnects on the next operation. */
        kill_peer(f, pid);
        spawn_peer(f, PEER_NORMAL, 256, 0, -1);
        r = get_actual(f, hv, 5 * USEC_PER_SEC);
        if (r.error < 0)
                fail_msg("%s", r.message);
        assert_true(r.actual == GiB);
        QmpCounters c;
        qmp_hv_counters(hv, &c);
        assert_int_equal(c.connects, 2);
        hv_free(hv);
}

static void test_nobody_listening(void **state) {
        Fixture *f = *state;
        Hv *hv = new_hv(f, f->path, UID_ANY);
        HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
        assert_true(r.error == -ENOENT || r.error == -ECONNREFUSED);
        assert_non_null(strstr(r.message, f->path));
        hv_free(hv);
}

static void test_peer_uid(void **state) {
        Fixture *f = *state;
        if (geteuid() != 0)
                skip();
        /* The peer creates its socket after dropping to nobody, so SO_PEERCRED reports 65534. */
        assert_int_equal(chmod(f->dir, 0777), 0);
        spawn(f, f->path, &(PeerConfig){ .listen_fd = -1, .ram = GiB, .rate_mib_s = 256, .reached_fd = -1 }, NULL,
              NOBODY);

        Hv *hv = new_hv(f, f->path, 0);
        HvReply r = get_actual(f, hv, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EPERM);
        assert_non_null(strstr(r.message, "65534"));
        assert_non_null(strstr(r.message, "expected uid 0"));
        hv_free(hv);

        hv = new_hv(f, f->path, NOBODY);
        r = get_actual(f, hv, 5 * USEC_PER_SEC);
        if (r.error < 0)
                fail_msg("%s", r.message);
        assert_true(r.actual == GiB);
        hv_free(hv);
}

/* One hung VM must not hold up another on the same loop. */
static void test_hung_does_not_block_healthy(void **state) {
        Fixture *f = *state;
        char hung_path[160];
        snprintf(hung_path, sizeof(hung_path), "%s/hung.sock", f->dir);
        PeerConfig c;
        peer_config_init(&c);
        c.mode = PEER_HANG;
        spawn(f, hung_path, &c, NULL, (uid_t) -1);
        spawn_peer(f, PEER_NORMAL, 256, 0, -1);

        Hv *hung = new_hv(f, hung_path, UID_ANY), *ok = new_hv(f, f->path, UID_ANY);
        Got gh = { 0 }, go = { 0 };
        usec_t t0 = now_mono();
        assert_int_equal(hv_get_actual(hung, 2 * USEC_PER_SEC, on_reply, &gh), 0);
        assert_int_equal(hv_get_actual(ok, 2 * USEC_PER_SEC, on_reply, &go), 0);
        run_until(f->ev, &go.done, 10 * USEC_PER_SEC);
        assert_false(gh.done);
        assert_int_equal(go.r.error, 0);
        assert_true(go.r.actual == GiB);
        if (go.at - t0 >= 200 * USEC_PER_MSEC)
                fail_msg("healthy operation took %llu ms next to a hung peer",
                         (unsigned long long) ((go.at - t0) / 1000));
        run_until(f->ev, &gh.done, 10 * USEC_PER_SEC);
        assert_int_equal(gh.r.error, -ETIMEDOUT);
        assert_true(gh.at - t0 >= 1990 * USEC_PER_MSEC);
        hv_free(hung);
        hv_free(ok);
}

/* A timer that re-arms itself every `period` and records how late it ran: the loop's heartbeat.
 * Lateness is counted only as far as this thread was running meanwhile (its CPU time since the
 * previous tick): a loop that keeps reading a storm without yielding is late while busy, and is
 * caught; a loop that waited for a CPU on a loaded machine is not the code's doing.
 * max_late_wall keeps the wall-clock figure for the message. */
typedef struct Ticker {
        EvTimer *t;
        usec_t period, due_at, max_late, max_late_wall, cpu_prev;
        unsigned fired;
} Ticker;

static usec_t thread_cpu_now(void) {
        return now_usec(CLOCK_THREAD_CPUTIME_ID);
}

static void on_tick(EvTimer *t, void *userdata) {
        Ticker *k = userdata;
        usec_t now = now_mono(), cpu = thread_cpu_now();
        usec_t late = now - k->due_at;
        k->fired++;
        k->max_late = MAX(k->max_late, MIN(late, cpu - k->cpu_prev));
        k->max_late_wall = MAX(k->max_late_wall, late);
        k->cpu_prev = cpu;
        k->due_at = usec_add(now, k->period);
        ev_timer_set(t, k->due_at);
}

/* One VM storms its QMP connection with BALLOON_CHANGE events: another VM's operations on the same
 * loop still answer at once, timers still fire on time, the storming VM's own replies still get
 * through, and its listeners hear no more than the per-hypervisor event rate. */
static void test_event_storm_does_not_starve(void **state) {
        Fixture *f = *state;
        char storm_path[160];
        snprintf(storm_path, sizeof(storm_path), "%s/storm.sock", f->dir);
        PeerConfig c;
        peer_config_init(&c);
        c.mode = PEER_EVENT_STORM;
        spawn(f, storm_path, &c, NULL, (uid_t) -1);
        spawn_peer(f, PEER_NORMAL, 256, 0, -1);

        Hv *storm = new_hv(f, storm_path, UID_ANY), *calm = new_hv(f, f->path, UID_ANY);
        Listener *l = calloc(1, sizeof(Listener));
        assert_non_null(l);
        assert_int_equal(hv_add_listener(storm, on_actual, l), 0);
        Ticker k = { .period = 10 * USEC_PER_MSEC, .cpu_prev = thread_cpu_now() };
        k.due_at = usec_add(now_mono(), k.period);
        assert_int_equal(ev_timer_add(f->ev, k.due_at, on_tick, &k, &k.t), 0);

        /* Start the storm (it begins once capabilities are negotiated) and let it run. */
        Got gs = { 0 };
        usec_t storm_start = now_mono(); /* at the latest: it starts once we connect */
        assert_int_equal(hv_get_actual(storm, 10 * USEC_PER_SEC, on_reply, &gs), 0);
        run_until(f->ev, &gs.done, 20 * USEC_PER_SEC);
        if (gs.r.error < 0)
                fail_msg("the storming VM's own operation failed: %s", gs.r.message);
        for (usec_t until = usec_add(now_mono(), USEC_PER_SEC); now_mono() < until;)
                assert_true(ev_run_once(f->ev, until) >= 0);

        /* Three rounds of: an operation on each VM, both must answer well within their deadline. */
        for (int i = 0; i < 3; i++) {
                Got gc = { 0 };
                gs = (Got){ 0 };
                usec_t t0 = now_mono();
                assert_int_equal(hv_get_actual(calm, 2 * USEC_PER_SEC, on_reply, &gc), 0);
                /* Its reply waits behind the events already in the socket: a longer deadline. */
                assert_int_equal(hv_get_actual(storm, 10 * USEC_PER_SEC, on_reply, &gs), 0);
                run_until(f->ev, &gc.done, 10 * USEC_PER_SEC);
                if (gc.r.error < 0)
                        fail_msg("healthy VM next to a storm: %s", gc.r.message);
                if (gc.at - t0 >= 500 * USEC_PER_MSEC)
                        fail_msg("healthy operation took %llu ms next to an event storm",
                                 (unsigned long long) ((gc.at - t0) / 1000));
                run_until(f->ev, &gs.done, 20 * USEC_PER_SEC);
                if (gs.r.error < 0)
                        fail_msg("the storming VM's own operation failed: %s", gs.r.message);
                assert_true(gs.r.actual == GiB);
        }
        usec_t stormed = now_mono() - storm_start;
        if (k.max_late >= 200 * USEC_PER_MSEC)
                fail_msg("a 10 ms timer ran up to %llu ms late during an event storm while the loop was running "
                         "(%llu ms by the wall clock)",
                         (unsigned long long) (k.max_late / 1000), (unsigned long long) (k.max_late_wall / 1000));
        assert_true(k.fired >= 10);

        /* Listeners heard at most the burst plus the rate over the storm; the rest was dropped and
         * counted. */
        uint64_t allowed = QMP_EVENTS_BURST + QMP_EVENTS_PER_SEC * (stormed / USEC_PER_SEC + 1);
        if (l->n > allowed)
                fail_msg("%zu events reached the listeners in %llu ms (at most %llu allowed)", l->n,
                         (unsigned long long) (stormed / 1000), (unsigned long long) allowed);
        HvCounters hc;
        hv_counters(storm, &hc);
        assert_true(hc.events_dropped > 0);
        assert_true(hc.events >= hc.events_dropped + l->n);
        assert_true(hc.read_yields > 0);
        QmpCounters qc;
        qmp_hv_counters(storm, &qc);
        assert_true(qc.events == hc.events);
        /* Over the rate, the storm is read at a bounded byte rate, not as fast as the peer writes:
         * its events (each line well over 64 bytes) number at most what that rate lets through. */
        uint64_t secs = stormed / USEC_PER_SEC + 1;
        uint64_t most = QMP_EVENTS_BURST + secs * (QMP_EVENTS_PER_SEC + QMP_STORM_BYTES_PER_SEC / 64);
        fprintf(stderr, "storm: %llu events read in %llu ms, %llu pauses (at most %llu events allowed)\n",
                (unsigned long long) qc.events, (unsigned long long) (stormed / 1000),
                (unsigned long long) qc.storm_pauses, (unsigned long long) most);
        assert_true(qc.storm_pauses > 0);
        if (qc.events > most)
                fail_msg("%llu events read in %llu s, more than the storm byte rate allows (%llu)",
                         (unsigned long long) qc.events, (unsigned long long) secs, (unsigned long long) most);

        ev_timer_free(k.t);
        hv_remove_listener(storm, on_actual, l);
        hv_free(storm);
        hv_free(calm);
        free(l);
}

/* --- set and wait against the simulated guest --- */

static void test_wait_reached(void **state) {
        Fixture *f = *state;
        int reached[2];
        assert_int_equal(pipe2(reached, O_CLOEXEC | O_NONBLOCK), 0);
        spawn_peer(f, PEER_NORMAL, 1000, 0, reached[1]);
        close(reached[1]);
        Hv *hv = new_hv(f, f->path, UID_ANY);

        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.tolerance = 0; /* raised to one page */
        o.timeout = 20 * USEC_PER_SEC;
        HvWaitOutcome out = set_and_wait(f, hv, 768 * MiB, &o);
        if (out.result != HV_WAIT_REACHED)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_true(out.start == GiB);
        assert_true(out.reached <= 768 * MiB + 4095 && out.reached + 4095 >= 768 * MiB);
        assert_true(out.polls >= 1);
        assert_true(out.noticed >= out.started);

        usec_t peer_at = 0;
        assert_int_equal(read(reached[0], &peer_at, sizeof(peer_at)), (ssize_t) sizeof(peer_at));
        assert_true(out.noticed >= peer_at);
        if (out.noticed - peer_at > 60 * USEC_PER_MSEC)
                fail_msg("completion noticed %llu ms after the guest reached the target",
                         (unsigned long long) ((out.noticed - peer_at) / 1000));

        /* A target that is not page aligned: QEMU truncates, tolerance absorbs it. */
        o.tolerance = 0;
        out = set_and_wait(f, hv, 900 * MiB + 123, &o);
        assert_int_equal(out.result, HV_WAIT_REACHED);
        /* The guest stops at 900 MiB + 4096 ((1 GiB - value) >> 12 pages); 900 MiB is close enough. */
        assert_true(out.reached == 900 * MiB || out.reached == 900 * MiB + 4096);
        close(reached[0]);
        hv_free(hv);
}

static void test_wait_stalled(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_NORMAL, 1000, 900 * MiB, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.timeout = 20 * USEC_PER_SEC;
        o.stall_window = 300 * USEC_PER_MSEC;
        HvWaitOutcome out = set_and_wait(f, hv, 512 * MiB, &o);
        if (out.result != HV_WAIT_STALLED)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_true(out.reached == 900 * MiB);
        assert_non_null(strstr(out.message, "stopped"));
        /* At 1000 MiB/s the floor is hit after ~124 ms; a stall needs 300 ms without movement. */
        assert_true(out.noticed - out.started >= 300 * USEC_PER_MSEC);
        assert_true(out.noticed - out.started < 10 * USEC_PER_SEC);
        hv_free(hv);
}

static void test_wait_deadline(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_NORMAL, 20, 0, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.timeout = 600 * USEC_PER_MSEC;
        o.stall_window = USEC_INFINITY;
        usec_t t0 = now_mono();
        HvWaitOutcome out = set_and_wait(f, hv, 512 * MiB, &o);
        usec_t took = now_mono() - t0;
        if (out.result != HV_WAIT_DEADLINE)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_non_null(strstr(out.message, "deadline"));
        /* 20 MiB/s: moved, but nowhere near 512 MiB. */
        assert_true(out.reached < GiB - MiB);
        assert_true(out.reached > 768 * MiB);
        assert_true(took >= 590 * USEC_PER_MSEC);
        assert_true(took < 10 * USEC_PER_SEC);
        hv_free(hv);
}

static void test_wait_error(void **state) {
        Fixture *f = *state;
        spawn_peer(f, PEER_HANG, 256, 0, -1);
        Hv *hv = new_hv(f, f->path, UID_ANY);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.timeout = 5 * USEC_PER_SEC;
        o.op_timeout = 300 * USEC_PER_MSEC;
        HvWaitOutcome out = set_and_wait(f, hv, 512 * MiB, &o);
        assert_int_equal(out.result, HV_WAIT_ERROR);
        assert_int_equal(out.error, -ETIMEDOUT);
        assert_non_null(strstr(out.message, "greeting"));
        hv_free(hv);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_normal_session, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_no_balloon_device, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_events_interleaved, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_stale_replies, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_idless_error_answers_oldest, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_no_greeting_first, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_hung_peer, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_greet_only_peer, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_garbage_peer, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_flood_peer, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_close_mid_reply_then_reconnect, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_nobody_listening, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_peer_uid, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_hung_does_not_block_healthy, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_event_storm_does_not_starve, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait_reached, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait_stalled, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait_deadline, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait_error, setup, fixture_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
