/* SPDX-License-Identifier: MIT */
/* The Firecracker driver (src/hv/firecracker.c) and set-and-wait against the protocol-faithful fake
 * Firecracker of tests/peers/fc-peer.c (compiled in, run in forked children over real Unix
 * sockets), and the peer's own fidelity to Firecracker's API (docs/drivers.md). Firecracker itself cannot run here
 * (no KVM). Every wait has a generous deadline; no sleep is used to synchronise. */
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

#define FC_PEER_NO_MAIN
#include "../peers/fc-peer.c"

#include "hv/firecracker.h"
#include "shared/http1.h"
#include "hv/hv.h"
#include "shared/ev.h"

#define PEER_FIXTURE_HV
#include "peer-fixture.h"
#include "shared/macro.h"

#define NOBODY ((uid_t) 65534)

static int setup(void **state) {
        return fixture_setup(state, "fc", "api.sock");
}

/* Forks the fake Firecracker on path (after dropping to drop_uid unless -1); returns once it
 * listens. */
static pid_t spawn_at(Fixture *f, const char *path, const FcPeerConfig *cfg, uid_t drop_uid) {
        int ready;
        pid_t pid = fork_peer(f, drop_uid, "fake Firecracker", &ready);
        if (pid == 0) {
                FcPeerConfig c = *cfg;
                c.socket_path = path;
                c.ready_fd = ready;
                _exit(fc_peer_serve(&c) < 0 ? 11 : 0);
        }
        return pid;
}

static pid_t spawn(Fixture *f, const FcPeerConfig *cfg) {
        return spawn_at(f, f->path, cfg, (uid_t) -1);
}

static FcPeerConfig peer_config(uint64_t pace) {
        FcPeerConfig c;
        fc_peer_config_init(&c);
        c.pace_mib_s = pace;
        return c;
}

/* --- parent side --- */

static Hv *new_hv_at(Fixture *f, const char *path, uid_t uid) {
        FcConfig c = { .socket_path = path, .expected_uid = uid };
        Hv *hv = NULL;
        assert_int_equal(fc_hv_new(f->ev, &c, &hv), 0);
        assert_non_null(hv);
        assert_string_equal(hv->ops->name, "firecracker");
        return hv;
}

static Hv *new_hv(Fixture *f) {
        return new_hv_at(f, f->path, UID_ANY);
}

#define FC_RESPONSE(status) "HTTP/1.1 " #status " \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n"
#define FC_JSON(len)        "Content-Type: application/json\r\nContent-Length: " #len "\r\n\r\n"

/* --- the peer speaks Firecracker's bytes (docs/drivers.md) --- */

static void test_peer_bytes(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.deflate_on_oom = true;
        spawn(f, &c);
        assert_raw(f, "PATCH /balloon HTTP/1.1\r\nHost: localhost\r\nContent-Length: 18\r\n\r\n{\"amount_mib\":256}",
                   FC_RESPONSE(204) "\r\n");
        assert_raw(f, "GET /balloon HTTP/1.1\r\n\r\n",
                   FC_RESPONSE(200) FC_JSON(123) "{\"amount_mib\":256,\"deflate_on_oom\":true,\"stats_polling_interval_"
                                                 "s\":1,\"free_page_hinting\":false,\"free_page_reporting\":false}");
        assert_raw(f, "PATCH /balloon HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"amount_mib\":2048}",
                   FC_RESPONSE(400) FC_JSON(95) "{\"fault_message\":\"Balloon update error: Balloon: Requested memory "
                                                "should be less than 2048MiB\"}");
        assert_raw(f, "GET / HTTP/1.1\r\n\r\n",
                   FC_RESPONSE(200) FC_JSON(93) "{\"id\":\"anonymous-instance\",\"state\":\"Running\",\"vmm_version\":"
                                                "\"1.16.1\",\"app_name\":\"Firecracker\"}");
        assert_raw(f, "GET /machine-config HTTP/1.1\r\n\r\n",
                   FC_RESPONSE(200) FC_JSON(94) "{\"vcpu_count\":2,\"mem_size_mib\":1024,\"smt\":false,\"track_dirty_"
                                                "pages\":false,\"huge_pages\":\"None\"}");
        assert_raw(f, "POST /balloon HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                   FC_RESPONSE(400) FC_JSON(110) "{ \"error\": \"Invalid HTTP Method: Unsupported HTTP method.\nAll "
                                                 "previous unanswered requests will be dropped.\" }");
        assert_raw(f,
                   "PATCH /balloon HTTP/1.1\r\nContent-Length: 45\r\n\r\n"
                   "{\"amount_mib\":1,\"stats_polling_interval_s\":1}",
                   FC_RESPONSE(400) FC_JSON(169) "{\"fault_message\":\"An error occurred when deserializing the json "
                                                 "body of a request: unknown field `stats_polling_interval_s`, "
                                                 "expected `amount_mib` at line 1 column 45.\"}");
        assert_raw(f, "PUT /balloon HTTP/1.1\r\nContent-Length: 38\r\n\r\n{\"amount_mib\":0,\"deflate_on_oom\":true}",
                   FC_RESPONSE(400) FC_JSON(88) "{\"fault_message\":\"The requested operation is not supported after "
                                                "starting the microVM.\"}");
        assert_raw(f, "GET /balloon HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
                   FC_RESPONSE(400) FC_JSON(51) "{\"fault_message\":\"GET request cannot have a body.\"}");
        assert_raw(f, "PATCH /balloon HTTP/1.1\r\n\r\n",
                   FC_RESPONSE(400) FC_JSON(40) "{\"fault_message\":\"Empty PATCH request.\"}");
        assert_raw(f,
                   "PATCH /balloon/statistics HTTP/1.1\r\nContent-Length: 30\r\n\r\n{\"stats_polling_interval_s\":0}",
                   FC_RESPONSE(400) FC_JSON(106) "{\"fault_message\":\"Balloon update error: Balloon: Statistics "
                                                 "cannot be enabled/disabled after activation.\"}");
}

static void test_peer_bytes_preboot(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.not_started = true;
        c.no_balloon = true;
        spawn(f, &c);
        assert_raw(f, "PATCH /balloon HTTP/1.1\r\nContent-Length: 18\r\n\r\n{\"amount_mib\":256}",
                   FC_RESPONSE(400) FC_JSON(89) "{\"fault_message\":\"The requested operation is not supported before "
                                                "starting the microVM.\"}");
        assert_raw(f, "GET /balloon HTTP/1.1\r\n\r\n",
                   FC_RESPONSE(400)
                           FC_JSON(66) "{\"fault_message\":\"Balloon config error: No balloon device found.\"}");
        assert_raw(f,
                   "PUT /balloon HTTP/1.1\r\nContent-Length: 41\r\n\r\n{\"amount_mib\":2048,\"deflate_on_oom\":true}",
                   FC_RESPONSE(400) FC_JSON(81) "{\"fault_message\":\"Balloon config error: Amount of pages requested "
                                                "is too large.\"}");
        assert_raw(f,
                   "PUT /balloon HTTP/1.1\r\nContent-Length: 67\r\n\r\n"
                   "{\"amount_mib\":0,\"deflate_on_oom\":true,\"stats_polling_interval_s\":1}",
                   FC_RESPONSE(204) "\r\n");
        assert_raw(f, "GET / HTTP/1.1\r\n\r\n",
                   FC_RESPONSE(200) FC_JSON(97) "{\"id\":\"anonymous-instance\",\"state\":\"Not started\",\"vmm_"
                                                "version\":\"1.16.1\",\"app_name\":\"Firecracker\"}");
}

/* --- the driver --- */

static void test_session(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        spawn(f, &c);
        Hv *hv = new_hv(f);

        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_true(r.caps.balloon);
        assert_true(r.caps.stats);
        assert_false(r.caps.deflate_on_oom);
        assert_false(r.caps.free_page_reporting);
        assert_true(r.caps.ram_bytes == GiB);
        assert_string_equal(r.caps.version, "Firecracker 1.16.1");

        r = ok(f, hv, CALL_ACTUAL, 0);
        assert_int_equal(r.op, HV_OP_GET_ACTUAL);
        assert_true(r.actual == GiB);

        /* 768 MiB of guest = a 256 MiB balloon; the guest gets there at its pace. */
        r = ok(f, hv, CALL_TARGET, 768 * MiB);
        assert_int_equal(r.op, HV_OP_SET_TARGET);
        wait_actual(f, hv, 768 * MiB);

        /* Not MiB-aligned: the balloon is rounded down, so the guest keeps at least the target. */
        ok(f, hv, CALL_TARGET, 900 * MiB + 123);
        wait_actual(f, hv, 901 * MiB);
        /* More than the VM: an empty balloon. */
        ok(f, hv, CALL_TARGET, 4 * GiB);
        wait_actual(f, hv, GiB);

        r = ok(f, hv, CALL_STATS, 0);
        assert_int_equal(r.stats.period, 1);
        assert_true(r.stats.total != HV_STAT_UNSET && r.stats.total < GiB);
        assert_true(r.stats.available != HV_STAT_UNSET && r.stats.available <= r.stats.total);
        assert_true(r.stats.free != HV_STAT_UNSET && r.stats.caches != HV_STAT_UNSET);
        assert_true(r.stats.major_faults != HV_STAT_UNSET && r.stats.minor_faults != HV_STAT_UNSET);
        assert_true(r.stats.swap_in == 0 && r.stats.swap_out == 0);
        assert_true(r.stats.oom_kills == HV_STAT_UNSET); /* a guest before Linux 6.12 */
        assert_true(r.stats.last_update > 0);

        /* Refused values never reach the wire. */
        Got g = { 0 };
        assert_int_equal(hv_set_target(hv, 0, USEC_PER_SEC, on_reply, &g), -EINVAL);
        assert_int_equal(hv_set_stats_period(hv, 65536, USEC_PER_SEC, on_reply, &g), -ERANGE);

        assert_int_equal(hv->peer_pid, f->pids[0]); /* the VMM process, for host-side checks */
        FcCounters k;
        fc_hv_counters(hv, &k);
        assert_int_equal(k.http.connects, 1); /* one keep-alive connection for everything */
        assert_int_equal(k.http.timeouts, 0);
        assert_int_equal(k.http.protocol_errors, 0);
        assert_int_equal(k.not_activated_retries, 0);
        assert_true(k.http.responses == k.http.requests);
        hv_free(hv);
}

static void test_stats_period(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(256);
        spawn(f, &c);
        Hv *hv = new_hv(f);
        ok(f, hv, CALL_PERIOD, 5);
        HvReply r = ok(f, hv, CALL_STATS, 0);
        assert_int_equal(r.stats.period, 5);
        ok(f, hv, CALL_PERIOD, 5); /* the same value: a no-op */
        /* Statistics cannot be switched off after boot: Firecracker's words come back. */
        r = call(f, hv, CALL_PERIOD, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EREMOTEIO);
        assert_string_equal(r.message,
                            "Firecracker set-stats-period: PATCH /balloon/statistics answered 400: Balloon "
                            "update error: Balloon: Statistics cannot be enabled/disabled after activation.");
        hv_free(hv);
}

static void test_stats_disabled(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.stats_interval = 0;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_true(r.caps.balloon);
        assert_false(r.caps.stats);
        /* Without statistics Firecracker does not tell the balloon's actual size. */
        r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EOPNOTSUPP);
        assert_non_null(
                strstr(r.message, "Internal VMM error: Balloon: Received stats query when stats are disabled."));
        assert_non_null(strstr(r.message, "stats_polling_interval_s"));
        r = call(f, hv, CALL_STATS, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EOPNOTSUPP);
        /* Setting a target still works. */
        ok(f, hv, CALL_TARGET, 512 * MiB);
        r = call(f, hv, CALL_PERIOD, 1, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EREMOTEIO);
        assert_non_null(strstr(r.message, "Statistics cannot be enabled/disabled after activation."));
        hv_free(hv);
}

static void test_no_balloon(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.no_balloon = true;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = ok(f, hv, CALL_CAPS, 0);
        assert_false(r.caps.balloon);
        assert_true(r.caps.ram_bytes == GiB);
        r = call(f, hv, CALL_TARGET, 512 * MiB, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENODEV);
        assert_string_equal(r.message, "Firecracker set-target: PATCH /balloon answered 400: Balloon update error: "
                                       "Failed perform action on device: Device not found");
        r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENODEV);
        assert_non_null(strstr(r.message, "Internal VMM error: Failed perform action on device: Device not found"));
        hv_free(hv);
}

static int start_instance(Fixture *f) {
        Http1Response resp;
        char *buf = NULL, err[256];
        const char *body = "{\"action_type\":\"InstanceStart\"}";
        int r = http1_roundtrip_unix(f->path, "PUT", "/actions", NULL, body, strlen(body), 5 * USEC_PER_SEC, 4096,
                                     &resp, &buf, err, sizeof(err));
        if (r < 0)
                fail_msg("%s", err);
        r = resp.status;
        free(buf);
        return r;
}

/* Before boot a target rewrites the balloon's configuration (PUT /balloon), keeping its other
 * fields; the guest inflates to it once it runs. */
static void test_preboot(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.not_started = true;
        c.deflate_on_oom = true;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        ok(f, hv, CALL_TARGET, 768 * MiB);
        FcCounters k;
        fc_hv_counters(hv, &k);
        assert_int_equal(k.preboot_puts, 1);
        assert_raw(f, "GET /balloon HTTP/1.1\r\n\r\n",
                   FC_RESPONSE(200) FC_JSON(123) "{\"amount_mib\":256,\"deflate_on_oom\":true,\"stats_polling_interval_"
                                                 "s\":1,\"free_page_hinting\":false,\"free_page_reporting\":false}");
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EREMOTEIO);
        assert_non_null(strstr(r.message, "not supported before starting the microVM"));

        assert_int_equal(start_instance(f), 204);
        wait_actual(f, hv, 768 * MiB);
        ok(f, hv, CALL_TARGET, 640 * MiB); /* now through PATCH */
        fc_hv_counters(hv, &k);
        assert_int_equal(k.preboot_puts, 1);
        wait_actual(f, hv, 640 * MiB);
        hv_free(hv);
}

/* Right after boot the device is not activated yet: PATCH /balloon is retried until it works. */
static void test_not_activated_retry(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.activate_delay = 300 * USEC_PER_MSEC;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        usec_t t0 = now_mono();
        ok(f, hv, CALL_TARGET, 768 * MiB);
        assert_true(now_mono() - t0 >= 200 * USEC_PER_MSEC);
        FcCounters k;
        fc_hv_counters(hv, &k);
        assert_true(k.not_activated_retries >= 1);
        wait_actual(f, hv, 768 * MiB);
        hv_free(hv);
}

static void test_not_activated_deadline(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.no_driver = true; /* a guest without virtio_balloon */
        spawn(f, &c);
        Hv *hv = new_hv(f);
        usec_t t0 = now_mono();
        HvReply r = call(f, hv, CALL_TARGET, 768 * MiB, 400 * USEC_PER_MSEC);
        usec_t took = now_mono() - t0;
        assert_int_equal(r.error, -ETIMEDOUT);
        assert_non_null(strstr(r.message, "still refused when the 400ms deadline passed"));
        assert_non_null(strstr(r.message, "Balloon update error: Balloon: Device not activated yet."));
        assert_true(took < 2 * USEC_PER_SEC); /* ends at the deadline, not much later */
        assert_true(took >= 150 * USEC_PER_MSEC);
        hv_free(hv);
}

/* --- set and wait --- */

static void test_wait(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.floor_mib = 600; /* the guest's working set */
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.tolerance = 0; /* one page */
        o.timeout = 20 * USEC_PER_SEC;

        HvWaitOutcome out = set_and_wait(f, hv, 768 * MiB, &o);
        if (out.result != HV_WAIT_REACHED)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_true(out.start == GiB);
        assert_true(out.reached == 768 * MiB); /* pages: exact */
        assert_true(out.polls >= 2);

        /* Below the working set the guest stalls at its floor. */
        o.stall_window = 300 * USEC_PER_MSEC;
        out = set_and_wait(f, hv, 512 * MiB, &o);
        if (out.result != HV_WAIT_STALLED)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_true(out.reached == 600 * MiB);
        assert_non_null(strstr(out.message, "stopped"));

        /* Back up, then a deadline shorter than the guest's pace allows. */
        out = set_and_wait(f, hv, GiB, &o);
        assert_int_equal(out.result, HV_WAIT_REACHED);
        hv_free(hv);
}

static void test_wait_deadline(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(20);
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.timeout = 600 * USEC_PER_MSEC;
        o.stall_window = USEC_INFINITY;
        HvWaitOutcome out = set_and_wait(f, hv, 512 * MiB, &o);
        if (out.result != HV_WAIT_DEADLINE)
                fail_msg("%s: %s", hv_wait_result_to_string(out.result), out.message);
        assert_non_null(strstr(out.message, "deadline"));
        assert_true(out.reached < GiB - MiB); /* moved, at 20 MiB/s */
        assert_true(out.reached > 768 * MiB);
        hv_free(hv);
}

static void test_wait_error(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.stats_interval = 0;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        HvWaitOptions o;
        hv_wait_options_init(&o);
        HvWaitOutcome out = set_and_wait(f, hv, 512 * MiB, &o);
        assert_int_equal(out.result, HV_WAIT_ERROR);
        assert_int_equal(out.error, -EOPNOTSUPP);
        assert_non_null(strstr(out.message, "stats are disabled"));
        hv_free(hv);
}

/* --- misbehaving peers --- */

static void test_hung(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_HANG;
        c.fault_path = "/balloon/statistics";
        spawn(f, &c);
        Hv *hv = new_hv(f);
        ok(f, hv, CALL_CAPS, 0);
        usec_t t0 = now_mono();
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 300 * USEC_PER_MSEC);
        usec_t took = now_mono() - t0;
        assert_int_equal(r.error, -ETIMEDOUT);
        char want[256];
        snprintf(want, sizeof(want),
                 "Firecracker get-actual on %s: no response to GET /balloon/statistics within 300ms", f->path);
        assert_string_equal(r.message, want);
        assert_true(took >= 290 * USEC_PER_MSEC && took < 3 * USEC_PER_SEC);
        /* Other operations still work: on a new connection, since the hung one was dropped. */
        HvReply caps = ok(f, hv, CALL_CAPS, 0);
        assert_true(caps.caps.balloon);
        ok(f, hv, CALL_TARGET, 768 * MiB);
        FcCounters k;
        fc_hv_counters(hv, &k);
        assert_int_equal(k.http.connects, 2);
        assert_int_equal(k.http.timeouts, 1);
        hv_free(hv);
}

/* A hung VM does not hold up another one on the same loop. */
static void test_hung_does_not_block_healthy(void **state) {
        Fixture *f = *state;
        char other[160];
        snprintf(other, sizeof(other), "%s/other.sock", f->dir);
        FcPeerConfig hung = peer_config(1000);
        hung.fault = PEER_FAULT_HANG;
        spawn_at(f, other, &hung, (uid_t) -1);
        FcPeerConfig good = peer_config(1000);
        spawn(f, &good);

        Hv *h = new_hv_at(f, other, UID_ANY), *g = new_hv(f);
        Got gh = { 0 }, gg = { 0 };
        usec_t t0 = now_mono();
        assert_int_equal(hv_get_actual(h, 2 * USEC_PER_SEC, on_reply, &gh), 0);
        assert_int_equal(hv_get_actual(g, 2 * USEC_PER_SEC, on_reply, &gg), 0);
        run_until(f->ev, &gg.done, 10 * USEC_PER_SEC);
        assert_false(gh.done);
        assert_int_equal(gg.r.error, 0);
        assert_true(gg.r.actual == GiB);
        /* Not queued behind the hung one: answered before half of its 2 s deadline (a bound for a
         * loaded machine; the healthy peer answers in about a millisecond). */
        if (gg.at - t0 >= USEC_PER_SEC)
                fail_msg("healthy operation took %llu ms next to a hung peer",
                         (unsigned long long) ((gg.at - t0) / 1000));
        run_until(f->ev, &gh.done, 10 * USEC_PER_SEC);
        assert_int_equal(gh.r.error, -ETIMEDOUT);
        assert_true(gh.at - t0 >= 1990 * USEC_PER_MSEC);
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
        FcPeerConfig flood = peer_config(1000);
        flood.fault = fault;
        spawn_at(f, other, &flood, (uid_t) -1);
        FcPeerConfig good = peer_config(1000);
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
        FcPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_GARBAGE;
        spawn(f, &c);
        Hv *hv = new_hv(f);
        for (int i = 0; i < 2; i++) {
                usec_t t0 = now_mono();
                HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
                assert_int_equal(r.error, -EBADMSG);
                assert_non_null(strstr(r.message, "malformed response: does not start with \"HTTP/1.\""));
                assert_true(now_mono() - t0 < 2 * USEC_PER_SEC); /* at once, not at the deadline */
        }
        FcCounters k;
        fc_hv_counters(hv, &k);
        assert_int_equal(k.http.protocol_errors, 2);
        assert_int_equal(k.http.connects, 2); /* each failure dropped the connection */
        hv_free(hv);
}

static void test_oversized(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_OVERSIZED;
        c.fault_path = "/balloon/statistics";
        spawn(f, &c);
        Hv *hv = new_hv(f);
        uint64_t before = rss_kib();
        usec_t t0 = now_mono();
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 10 * USEC_PER_SEC);
        assert_int_equal(r.error, -EMSGSIZE);
        assert_non_null(strstr(r.message, "response too large: body of 104857600 bytes exceeds the limit of 65536"));
        assert_true(now_mono() - t0 < 3 * USEC_PER_SEC);
        if (rss_kib() > before + 8 * 1024)
                fail_msg("RSS grew by %llu KiB on a 100 MB reply", (unsigned long long) (rss_kib() - before));
        ok(f, hv, CALL_CAPS, 0); /* other endpoints are fine */
        hv_free(hv);
}

static void test_close_mid_reply_then_reconnect(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        c.fault = PEER_FAULT_CLOSE_MID_REPLY;
        pid_t pid = spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ECONNRESET);
        assert_non_null(strstr(r.message, "closed by peer before the response was complete"));

        /* A fresh Firecracker at the same path (a restarted VMM): the same Hv reconnects. */
        kill_peer(f, pid);
        FcPeerConfig good = peer_config(1000);
        good.mem_mib = 2048;
        spawn(f, &good);
        r = ok(f, hv, CALL_ACTUAL, 0);
        assert_true(r.actual == 2 * GiB); /* the size was read again from the new VMM */
        hv_free(hv);
}

/* A VMM restarted with another size between two operations: the cached size is not trusted on a
 * new connection. */
static void test_restarted_vmm(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        pid_t pid = spawn(f, &c);
        Hv *hv = new_hv(f);
        HvReply r = ok(f, hv, CALL_ACTUAL, 0);
        assert_true(r.actual == GiB);
        kill_peer(f, pid);
        c.mem_mib = 512;
        spawn(f, &c);
        r = ok(f, hv, CALL_ACTUAL, 0);
        assert_true(r.actual == 512 * MiB);
        FcCounters k;
        fc_hv_counters(hv, &k);
        assert_int_equal(k.http.connects, 2);
        hv_free(hv);
}

static void test_nobody_listening(void **state) {
        Fixture *f = *state;
        Hv *hv = new_hv(f);
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -ENOENT);
        char want[256];
        snprintf(want, sizeof(want),
                 "Firecracker get-actual: GET /machine-config: connect %s: No such file or directory", f->path);
        assert_string_equal(r.message, want);
        hv_free(hv);
}

static void test_peer_uid(void **state) {
        Fixture *f = *state;
        if (geteuid() != 0)
                skip();
        assert_int_equal(chmod(f->dir, 0777), 0);
        FcPeerConfig c = peer_config(1000);
        spawn_at(f, f->path, &c, NOBODY);
        Hv *hv = new_hv_at(f, f->path, 0);
        HvReply r = call(f, hv, CALL_ACTUAL, 0, 5 * USEC_PER_SEC);
        assert_int_equal(r.error, -EPERM);
        assert_non_null(strstr(r.message, "65534"));
        assert_non_null(strstr(r.message, "expected uid 0"));
        hv_free(hv);
        hv = new_hv_at(f, f->path, NOBODY);
        r = ok(f, hv, CALL_ACTUAL, 0);
        assert_true(r.actual == GiB);
        hv_free(hv);
}

static void test_cancel(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        spawn(f, &c);
        Hv *hv = new_hv(f);
        Got a = { 0 }, b = { 0 };
        assert_int_equal(hv_get_caps(hv, 5 * USEC_PER_SEC, on_reply, &a), 0);
        assert_int_equal(hv_get_actual(hv, 5 * USEC_PER_SEC, on_reply, &b), 0);
        /* Let the first requests go on the wire, then cancel: no callback, the other one works. */
        assert_true(ev_run_once(f->ev, now_mono() + USEC_PER_SEC) >= 0);
        hv_cancel(hv, &a);
        run_until(f->ev, &b.done, 10 * USEC_PER_SEC);
        assert_int_equal(b.r.error, 0);
        run_idle(f->ev, 5, 20 * USEC_PER_MSEC);
        assert_false(a.done);
        HvReply r = ok(f, hv, CALL_ACTUAL, 0); /* the stream is still in step */
        assert_true(r.actual == GiB);
        hv_free(hv);
}

typedef struct FreeInside {
        Hv *hv;
        bool done;
} FreeInside;

static void on_reply_free(Hv *hv, const HvReply *r, void *userdata) {
        FreeInside *fi = userdata;
        (void) r;
        fi->done = true;
        fi->hv = hv_free(hv);
}

static void test_free_inside_callback(void **state) {
        Fixture *f = *state;
        FcPeerConfig c = peer_config(1000);
        spawn(f, &c);
        Hv *hv = new_hv(f);
        FreeInside fi = { .hv = hv };
        Got other = { 0 };
        assert_int_equal(hv_get_actual(hv, 5 * USEC_PER_SEC, on_reply_free, &fi), 0);
        assert_int_equal(hv_get_caps(hv, 5 * USEC_PER_SEC, on_reply, &other), 0);
        run_until(f->ev, &fi.done, 10 * USEC_PER_SEC);
        run_idle(f->ev, 5, 20 * USEC_PER_MSEC);
        assert_false(other.done);
        assert_int_equal(ev_timer_count(f->ev), 0); /* nothing left behind (ASan checks the memory) */
}

/* The built fc-peer program, as the e2e suite and people run it (skipped outside meson). */
static void test_peer_program(void **state) {
        Fixture *f = *state;
        const char *bd = getenv("BALLAST_BUILDDIR");
        char exe[512];
        snprintf(exe, sizeof(exe), "%s/tests/fc-peer", bd ?: "");
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
                execl(exe, exe, f->path, "--mem-mib", "2048", "--pace-mib-per-s", "2000", "--ready-fd", fd,
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
        ok(f, hv, CALL_TARGET, GiB);
        wait_actual(f, hv, GiB);
        hv_free(hv);
}

int main(void) {
        signal(SIGPIPE, SIG_IGN);
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_peer_bytes, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_peer_bytes_preboot, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_session, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_stats_period, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_stats_disabled, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_no_balloon, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_preboot, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_not_activated_retry, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_not_activated_deadline, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait_deadline, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_wait_error, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_hung, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_hung_does_not_block_healthy, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_flood_continue, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_flood_headers, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_flood_chunked, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_garbage, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_oversized, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_close_mid_reply_then_reconnect, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_restarted_vmm, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_nobody_listening, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_peer_uid, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_cancel, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_free_inside_callback, setup, fixture_teardown),
                cmocka_unit_test_setup_teardown(test_peer_program, setup, fixture_teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
