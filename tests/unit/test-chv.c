/* SPDX-License-Identifier: MIT */
/* The Cloud Hypervisor driver (src/hv/chv.c) and set-and-wait against the protocol-faithful fake
 * Cloud Hypervisor of tests/peers/chv-peer.c (compiled in, run in forked children over real Unix
 * sockets), and the peer's own fidelity to Cloud Hypervisor's API (docs/drivers.md). Cloud Hypervisor itself cannot run
 * here (no KVM). Every wait has a generous deadline; no sleep is used to synchronise. */
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

#define CHV_PEER_NO_MAIN
#include "../peers/chv-peer.c"

#include "hv/chv.h"
#include "shared/http1.h"
#include "hv/hv.h"
#include "shared/ev.h"

#define PEER_FIXTURE_HV
#include "peer-fixture.h"
#include "shared/macro.h"

#define NOBODY ((uid_t) 65534)

static int setup(void **state) {
        return fixture_setup(state, "chv", "api.sock");
}

/* Forks the fake Cloud Hypervisor on path (after dropping to drop_uid unless -1); returns once it
 * listens. */
static pid_t spawn_at(Fixture *f, const char *path, const ChvPeerConfig *cfg, uid_t drop_uid) {
        int ready;
        pid_t pid = fork_peer(f, drop_uid, "fake Cloud Hypervisor", &ready);
        if (pid == 0) {
                ChvPeerConfig c = *cfg;
                c.socket_path = path;
                c.ready_fd = ready;
                _exit(chv_peer_serve(&c) < 0 ? 11 : 0);
        }
        return pid;
}

static pid_t spawn(Fixture *f, const ChvPeerConfig *cfg) {
        return spawn_at(f, f->path, cfg, (uid_t) -1);
}

static ChvPeerConfig peer_config(uint64_t pace) {
        ChvPeerConfig c;
        chv_peer_config_init(&c);
        c.pace_mib_s = pace;
        return c;
}

/* --- parent side --- */

static Hv *new_hv_at(Fixture *f, const char *path, uid_t uid) {
        ChvConfig c = { .socket_path = path, .expected_uid = uid };
        Hv *hv = NULL;
        assert_int_equal(chv_hv_new(f->ev, &c, &hv), 0);
        assert_non_null(hv);
        assert_string_equal(hv->ops->name, "cloud-hypervisor");
        return hv;
}

static Hv *new_hv(Fixture *f) {
        return new_hv_at(f, f->path, UID_ANY);
}

#define CHV_RESPONSE(status) "HTTP/1.1 " #status " \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n"
#define CHV_JSON(len)        "Content-Type: application/json\r\nContent-Length: " #len "\r\n\r\n"

#define RESIZE_1G                                                                                                      \
        "PUT /api/v1/vm.resize HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: "              \
        "application/json\r\nContent-Length: 30\r\n\r\n{\"desired_balloon\":1073741824}"

/* --- the peer speaks Cloud Hypervisor's bytes (docs/drivers.md) --- */

static void test_peer_bytes(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.mem = 4 * GiB;
        spawn(f, &c);
        assert_raw(f, RESIZE_1G, CHV_RESPONSE(204) "\r\n");
        assert_raw(f, "GET /api/v1/nope HTTP/1.1\r\n\r\n", CHV_RESPONSE(404) CHV_JSON(13) "[\"Not Found\"]");
        assert_raw(f, "GET /api/v1/vm.resize HTTP/1.1\r\n\r\n", CHV_RESPONSE(400) CHV_JSON(15) "[\"Bad Request\"]");
        assert_raw(f, "PATCH /api/v1/vm.info HTTP/1.1\r\n\r\n", CHV_RESPONSE(400) "\r\n");
        char *ping = raw(f, "GET /api/v1/vmm.ping HTTP/1.1\r\n\r\n");
        assert_non_null(strstr(ping, "\r\n\r\n{\"build_version\":\"v53.0\",\"version\":\"53.0.0\",\"pid\":"));
        free(ping);
}

static void test_peer_bytes_errors(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.no_balloon = true;
        pid_t pid = spawn(f, &c);
        assert_raw(f, RESIZE_1G,
                   CHV_RESPONSE(500) CHV_JSON(128) "[\"Error from API\",\"The VM could not be resized\",\"Error from "
                                                   "device manager\",\"Missing virtio-balloon, can't proceed as "
                                                   "expected\"]");
        kill_peer(f, pid);
        c.state = CHV_NOT_CREATED;
        pid = spawn(f, &c);
        assert_raw(f, "GET /api/v1/vm.info HTTP/1.1\r\n\r\n",
                   CHV_RESPONSE(404) CHV_JSON(69) "[\"Error from API\",\"The VM info is not available\",\"VM is not "
                                                  "created\"]");
        kill_peer(f, pid);
        c.legacy = true;
        spawn(f, &c);
        assert_raw(f, "GET /api/v1/vm.info HTTP/1.1\r\n\r\n",
                   CHV_RESPONSE(500) CHV_JSON(30) "ApiError(VmInfo(VmNotCreated))");
}

/* --- the driver --- */

static void test_session(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.balloon = 128 * MiB;
        c.deflate_on_oom = true;
        c.free_page_reporting = true;
        spawn(f, &c);
        Hv *hv = new_hv(f);

        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_true(r.caps.balloon);
        assert_false(r.caps.stats);
        assert_true(r.caps.deflate_on_oom);
        assert_true(r.caps.free_page_reporting);
        assert_true(r.caps.ram_bytes == GiB);
        assert_string_equal(r.caps.version, "Cloud Hypervisor 53.0.0");

        /* The boot-time balloon of 128 MiB: actual is the guest's size. */
        wait_actual(f, hv, 896 * MiB);
        ok(f, hv, CALL_TARGET, 768 * MiB);
        wait_actual(f, hv, 768 * MiB);
        /* Not page-aligned: the balloon is rounded down, the guest keeps at least the target. */
        ok(f, hv, CALL_TARGET, 900 * MiB + 123);
        wait_actual(f, hv, 900 * MiB + 4096);
        ok(f, hv, CALL_TARGET, 8 * GiB); /* more than the VM: no balloon */
        wait_actual(f, hv, GiB);

        /* No statistics in Cloud Hypervisor: refused at once, no callback. */
        Got g = { 0 };
        assert_int_equal(hv_get_stats(hv, USEC_PER_SEC, on_reply, &g), -EOPNOTSUPP);
        assert_int_equal(hv_set_stats_period(hv, 2, USEC_PER_SEC, on_reply, &g), -EOPNOTSUPP);
        assert_int_equal(hv_set_target(hv, 0, USEC_PER_SEC, on_reply, &g), -EINVAL);
        run_idle(f->ev, 3, 10 * USEC_PER_MSEC);
        assert_false(g.done);

        assert_int_equal(hv->peer_pid, f->pids[0]);
        ChvCounters k;
        chv_hv_counters(hv, &k);
        assert_int_equal(k.http.connects, 1);
        assert_int_equal(k.http.protocol_errors, 0);
        assert_true(k.http.responses == k.http.requests);
        hv_free(hv);
}

static void test_zones(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(2000);
        c.zone = 512 * MiB; /* R = memory.size + zones */
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_true(r.caps.ram_bytes == GiB + 512 * MiB);
        ok(f, hv, CALL_TARGET, GiB);
        wait_actual(f, hv, GiB);
        hv_free(hv);
}

static void test_no_balloon(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.no_balloon = true;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_false(r.caps.balloon);
        assert_false(r.caps.deflate_on_oom);
        r = call(f, hv, CALL_TARGET, 512 * MiB, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENODEV);
        assert_string_equal(r.message, "Cloud Hypervisor set-target: PUT /api/v1/vm.resize answered 500: Error from "
                                       "API: The VM could not be resized: Error from device manager: Missing "
                                       "virtio-balloon, can't proceed as expected");
        r = ok(f, hv, CALL_ACTUAL, 0); /* the guest's size is still known */
        assert_true(r.actual == GiB);
        hv_free(hv);
}

static void test_legacy_errors(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.no_balloon = true;
        c.legacy = true;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_string_equal(r.caps.version, "Cloud Hypervisor 46.0.0");
        r = call(f, hv, CALL_TARGET, 512 * MiB, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENODEV);
        assert_string_equal(r.message, "Cloud Hypervisor set-target: PUT /api/v1/vm.resize answered 500: "
                                       "ApiError(VmResize(DeviceManager(MissingVirtioBalloon)))");
        /* A body that is not JSON ends the connection (docs/drivers.md); the next one works. */
        ok(f, hv, CALL_ACTUAL, 0);
        ChvCounters k;
        chv_hv_counters(hv, &k);
        assert_int_equal(k.http.connects, 2);
        hv_free(hv);
}

static void test_not_created(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.state = CHV_NOT_CREATED;
        pid_t pid = spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EREMOTEIO);
        assert_string_equal(r.message, "Cloud Hypervisor get-actual: GET /api/v1/vm.info answered 404: Error from API: "
                                       "The VM info is not available: VM is not created");
        r = call(f, hv, CALL_CAPS, 0, 5 * USEC_PER_SEC); /* vmm.ping answers, vm.info does not */
        assert_int_equal(r.error, -EREMOTEIO);
        kill_peer(f, pid);
        c.legacy = true;
        spawn(f, &c);
        r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EREMOTEIO);
        assert_string_equal(r.message, "Cloud Hypervisor get-actual: GET /api/v1/vm.info answered 500: "
                                       "ApiError(VmInfo(VmNotCreated))");
        hv_free(hv);
}

/* Created, not booted: the target only goes into the configuration; the guest takes it at boot. */
static void test_not_booted(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.state = CHV_CREATED;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        ok(f, hv, CALL_TARGET, 768 * MiB);
        HvReply r = ok(f, hv, CALL_ACTUAL, 0);
        assert_true(r.actual == GiB); /* memory_actual_size is all of RAM before boot */
        Http1Response resp;
        char *buf = NULL, err[256];
        assert_int_equal(http1_roundtrip_unix(f->path, "PUT", "/api/v1/vm.boot", NULL, NULL, 0, 5 * USEC_PER_SEC, 4096,
                                              &resp, &buf, err, sizeof(err)),
                         0);
        assert_int_equal(resp.status, 204);
        free(buf);
        wait_actual(f, hv, 768 * MiB);
        hv_free(hv);

        /* Without a balloon, a VM not booted would ignore the resize silently: refused here. */
        fixture_teardown(state);
        assert_int_equal(setup(state), 0);
        f = *state;
        c.no_balloon = true;
        spawn(f, &c);
        hv = new_hv(f);
        r = call(f, hv, CALL_TARGET, 768 * MiB, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENODEV);
        assert_non_null(strstr(r.message, "the VM has no balloon device (state Created)"));
        hv_free(hv);
}

/* Balloons of 16 TiB and more wrap inside Cloud Hypervisor (num_pages is u32): refused. */
static void test_huge_balloon(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(0);
        c.mem = UINT64_C(32) << 40;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = call(f, hv, CALL_TARGET, GiB, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ERANGE);
        assert_non_null(strstr(r.message, "16 TiB"));
        ok(f, hv, CALL_TARGET, (UINT64_C(16) << 40) + GiB); /* a balloon just under 16 TiB is fine */
        hv_free(hv);
}

/* --- set and wait --- */

static void test_wait(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.floor = 600 * MiB;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.tolerance = 0;
        o.timeout = 20 * USEC_PER_SEC;
        HvWaitOutcome out = set_and_wait(f, hv, 768 * MiB, &o);
        if (out.result != HV_WAIT_REACHED)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_true(out.start == GiB);
        assert_true(out.reached == 768 * MiB);

        o.stall_window = 300 * USEC_PER_MSEC;
        out = set_and_wait(f, hv, 512 * MiB, &o);
        if (out.result != HV_WAIT_STALLED)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_true(out.reached == 600 * MiB);

        out = set_and_wait(f, hv, GiB, &o);
        assert_int_equal(out.result, HV_WAIT_REACHED);
        hv_free(hv);
}

static void test_wait_deadline(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(20);
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.timeout = 600 * USEC_PER_MSEC;
        o.stall_window = USEC_INFINITY;
        HvWaitOutcome out = set_and_wait(f, hv, 512 * MiB, &o);
        if (out.result != HV_WAIT_DEADLINE)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_true(out.reached < GiB - MiB);
        assert_true(out.reached > 768 * MiB);
        hv_free(hv);
}

/* --- misbehaving peers --- */

static void test_hung(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_HANG;
        c.fault_path = "/api/v1/vm.resize";
        spawn(f, &c);
        Hv *hv = new_hv(f);
        usec_t t0 = now_mono();
        HvReply r = call(f, hv, CALL_TARGET, 768 * MiB, 300 * USEC_PER_MSEC);
        usec_t took = now_mono() - t0;
        assert_int_equal(r.error, -ETIMEDOUT);
        char want[256];
        snprintf(want, sizeof(want),
                 "Cloud Hypervisor set-target on %s: no response to PUT /api/v1/vm.resize within 300ms", f->path);
        assert_string_equal(r.message, want);
        assert_true(took >= 290 * USEC_PER_MSEC && took < 3 * USEC_PER_SEC);
        r = ok(f, hv, CALL_ACTUAL, 0); /* the rest still works, on a new connection */
        assert_true(r.actual == GiB);
        ok(f, hv, CALL_CAPS, 0);
        ChvCounters k;
        chv_hv_counters(hv, &k);
        assert_int_equal(k.http.connects, 2);
        hv_free(hv);
}

static void test_hung_does_not_block_healthy(void **state) {
        Fixture *f = *state;
        char other[160];
        snprintf(other, sizeof(other), "%s/other.sock", f->dir);
        ChvPeerConfig hung = peer_config(1000);
        hung.fault = PEER_FAULT_HANG;
        spawn_at(f, other, &hung, (uid_t) -1);
        ChvPeerConfig good = peer_config(1000);
        spawn(f, &good);
        Hv *h = new_hv_at(f, other, UID_ANY), *g = new_hv(f);
        Got gh = { 0 }, gg = { 0 };
        usec_t t0 = now_mono();
        assert_int_equal(hv_get_actual(h, 2 * USEC_PER_SEC, on_reply, &gh), 0);
        assert_int_equal(hv_get_actual(g, 2 * USEC_PER_SEC, on_reply, &gg), 0);
        run_until(f->ev, &gg.done, 10 * USEC_PER_SEC);
        assert_false(gh.done);
        assert_int_equal(gg.r.error, 0);
        /* Not queued behind the hung one: answered before half of its 2 s deadline (a bound for a
         * loaded machine; the healthy peer answers in about a millisecond). */
        if (gg.at - t0 >= USEC_PER_SEC)
                fail_msg("healthy operation took %llu ms next to a hung peer",
                         (unsigned long long) ((gg.at - t0) / 1000));
        run_until(f->ev, &gh.done, 10 * USEC_PER_SEC);
        assert_int_equal(gh.r.error, -ETIMEDOUT);
        hv_free(h);
        hv_free(g);
}

/* --- a flooding hypervisor next to a healthy one --- */

/* A timer that re-arms itself every 10 ms and records how late it ran: the loop's heartbeat. */
typedef struct Ticker {
        EvTimer *t;
        usec_t period, due_at, max_late;
        unsigned fired;
} Ticker;

static void on_tick(EvTimer *t, void *userdata) {
        Ticker *k = userdata;
        usec_t now = now_mono();
        k->fired++;
        k->max_late = MAX(k->max_late, now - k->due_at);
        k->due_at = usec_add(now, k->period);
        ev_timer_set(t, k->due_at);
}

/* The peer at other.sock answers every request with `fault`: the operation on it must end at once
 * with want_error and want_msg in its message, while an operation on a healthy VM on the same loop
 * answers well within its deadline and a 10 ms timer keeps firing on time. */
static void flood_next_to_healthy(Fixture *f, PeerFault fault, int want_error, const char *want_msg) {
        char other[160];
        snprintf(other, sizeof(other), "%s/other.sock", f->dir);
        ChvPeerConfig flood = peer_config(1000);
        flood.fault = fault;
        spawn_at(f, other, &flood, (uid_t) -1);
        ChvPeerConfig good = peer_config(1000);
        spawn(f, &good);

        Hv *h = new_hv_at(f, other, UID_ANY), *g = new_hv(f);
        Ticker k = { .period = 10 * USEC_PER_MSEC };
        k.due_at = usec_add(now_mono(), k.period);
        assert_int_equal(ev_timer_add(f->ev, k.due_at, on_tick, &k, &k.t), 0);
        for (int i = 0; i < 3; i++) {
                Got gh = { 0 }, gg = { 0 };
                usec_t t0 = now_mono();
                assert_int_equal(hv_get_actual(h, 10 * USEC_PER_SEC, on_reply, &gh), 0);
                assert_int_equal(hv_get_actual(g, 2 * USEC_PER_SEC, on_reply, &gg), 0);
                run_until(f->ev, &gg.done, 20 * USEC_PER_SEC);
                if (gg.r.error < 0)
                        fail_msg("healthy VM next to a flood: %s", gg.r.message);
                if (gg.at - t0 >= 500 * USEC_PER_MSEC)
                        fail_msg("healthy operation took %llu ms next to a flooding peer",
                                 (unsigned long long) ((gg.at - t0) / 1000));
                run_until(f->ev, &gh.done, 20 * USEC_PER_SEC);
                if (gh.r.error != want_error || !strstr(gh.r.message, want_msg))
                        fail_msg("flooding peer: got %d \"%s\", want %d with \"%s\"", gh.r.error, gh.r.message,
                                 want_error, want_msg);
                if (gh.at - t0 >= 2 * USEC_PER_SEC)
                        fail_msg("the flooded operation took %llu ms to fail",
                                 (unsigned long long) ((gh.at - t0) / 1000));
        }
        if (k.max_late >= 200 * USEC_PER_MSEC)
                fail_msg("a 10 ms timer ran up to %llu ms late next to a flooding peer",
                         (unsigned long long) (k.max_late / 1000));
        ev_timer_free(k.t);
        hv_free(h);
        hv_free(g);
}

/* An endless stream of interim responses: the cap on 1xx per request ends the call. */
static void test_flood_continue(void **state) {
        flood_next_to_healthy(*state, PEER_FAULT_FLOOD_CONTINUE, -EBADMSG, "interim (1xx) responses");
}

/* A status line followed by endless header lines: refused at the header limit. */
static void test_flood_headers(void **state) {
        flood_next_to_healthy(*state, PEER_FAULT_FLOOD_HEADERS, -EMSGSIZE, "headers exceed 16384 bytes");
}

/* A chunked body of endless chunks: refused at its headers, not read. */
static void test_flood_chunked(void **state) {
        flood_next_to_healthy(*state, PEER_FAULT_FLOOD_CHUNKED, -EPROTONOSUPPORT, "chunked");
}

static void test_garbage(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_GARBAGE;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        usec_t t0 = now_mono();
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EBADMSG);
        assert_non_null(strstr(r.message, "malformed response"));
        assert_true(now_mono() - t0 < 2 * USEC_PER_SEC);
        hv_free(hv);
}

static void test_oversized(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_OVERSIZED;
        c.fault_path = "/api/v1/vm.info";
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 10 * USEC_PER_SEC);
        assert_int_equal(r.error, -EMSGSIZE);
        assert_non_null(strstr(r.message, "response too large"));
        hv_free(hv);
}

static void test_close_mid_reply_then_reconnect(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_CLOSE_MID_REPLY;
        pid_t pid = spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ECONNRESET);
        assert_non_null(strstr(r.message, "closed by peer before the response was complete"));
        kill_peer(f, pid);
        ChvPeerConfig good = peer_config(1000);
        spawn(f, &good);
        r = ok(f, hv, CALL_ACTUAL, 0);
        assert_true(r.actual == GiB);
        hv_free(hv);
}

static void test_nobody_listening(void **state) {
        Fixture *f = *state;
        Hv *hv = new_hv(f);
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENOENT);
        assert_non_null(strstr(r.message, f->path));
        assert_non_null(strstr(r.message, "No such file or directory"));
        hv_free(hv);
}

static void test_peer_uid(void **state) {
        Fixture *f = *state;
        if (geteuid() != 0)
                skip();
        assert_int_equal(chmod(f->dir, 0777), 0);
        ChvPeerConfig c = peer_config(1000);
        spawn_at(f, f->path, &c, NOBODY);
        Hv *hv = new_hv_at(f, f->path, 0);
        HvReply r = call(f, hv, CALL_CAPS, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EPERM);
        assert_non_null(strstr(r.message, "65534"));
        hv_free(hv);
        hv = new_hv_at(f, f->path, NOBODY);
        ok(f, hv, CALL_CAPS, 0);
        hv_free(hv);
}

static void test_cancel_and_free_inside(void **state) {
        Fixture *f = *state;
        ChvPeerConfig c = peer_config(1000);
        spawn(f, &c);
        Hv *hv = new_hv(f);
        Got a = { 0 }, b = { 0 }, d = { 0 };
        assert_int_equal(hv_set_target(hv, 512 * MiB, 5 * USEC_PER_SEC, on_reply, &a), 0);
        assert_int_equal(hv_get_actual(hv, 5 * USEC_PER_SEC, on_reply, &b), 0);
        hv_cancel(hv, &a); /* before it even started */
        run_until(f->ev, &b.done, 10 * USEC_PER_SEC);
        assert_false(a.done);
        assert_true(b.r.actual == GiB);
        /* Freed with an operation in flight: no callback, nothing left behind. */
        assert_int_equal(hv_get_caps(hv, 5 * USEC_PER_SEC, on_reply, &d), 0);
        assert_true(ev_run_once(f->ev, now_mono() + USEC_PER_SEC) >= 0);
        hv_free(hv);
        run_idle(f->ev, 5, 20 * USEC_PER_MSEC);
        assert_false(d.done);
        assert_int_equal(ev_timer_count(f->ev), 0);
}

static void test_peer_program(void **state) {
        Fixture *f = *state;
        const char *bd = getenv("BALLAST_BUILDDIR");
        char exe[512];
        snprintf(exe, sizeof(exe), "%s/tests/chv-peer", bd ?: "");
        if (!bd || access(exe, X_OK) < 0)
                skip();
        int ready[2];
        assert_int_equal(pipe(ready), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                close(ready[0]);
                char fd[16];
                snprintf(fd, sizeof(fd), "%d", ready[1]);
                execl(exe, exe, f->path, "--mem", "2G", "--balloon", "1G", "--pace-mib-per-s", "4000", "--ready-fd", fd,
                      (char *) NULL);
                _exit(127);
        }
        close(ready[1]);
        f->pids[f->n_pids++] = pid;
        struct pollfd p = { .fd = ready[0], .events = POLLIN };
        assert_int_equal(poll(&p, 1, 20000), 1);
        close(ready[0]);
        Hv *hv = new_hv(f);
        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_true(r.caps.ram_bytes == 2 * GiB);
        wait_actual(f, hv, GiB);
        hv_free(hv);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_peer_bytes, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_peer_bytes_errors, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_session, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_zones, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_no_balloon, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_legacy_errors, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_not_created, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_not_booted, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_huge_balloon, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait_deadline, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_hung, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_hung_does_not_block_healthy, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_flood_continue, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_flood_headers, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_flood_chunked, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_garbage, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_oversized, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_close_mid_reply_then_reconnect, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_nobody_listening, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_peer_uid, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_cancel_and_free_inside, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_peer_program, setup, fixture_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
