/* SPDX-License-Identifier: MIT */
/* hypeman compatibility (src/api/hypeman.c, api_parse_reclaim_hypeman()): Go's duration syntax as
 * time.ParseDuration reads it, hypeman's hypervisor names, and the reclaim request with hypeman's
 * defaults. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "api/api.h"
#include "api/hypeman.h"
#include "shared/macro.h"

static void check_dur(const char *s, int expect_r, usec_t expect_usec, bool expect_neg) {
        usec_t v = 4242;
        bool neg = true;
        int r = hypeman_parse_duration(s, &v, &neg);
        if (r != expect_r)
                fail_msg("hypeman_parse_duration(\"%s\") = %d, expected %d", s, r, expect_r);
        if (r < 0) {
                if (v != 4242)
                        fail_msg("hypeman_parse_duration(\"%s\") wrote *ret_usec on failure", s);
                return;
        }
        if (v != expect_usec || neg != expect_neg)
                fail_msg("hypeman_parse_duration(\"%s\") = %llu us%s; expected %llu us%s", s, (unsigned long long) v,
                         neg ? " (negative)" : "", (unsigned long long) expect_usec, expect_neg ? " (negative)" : "");
}

static void test_go_durations(void **state) {
        (void) state;
        check_dur("0", 0, 0, false);
        check_dur("-0", 0, 0, false);
        check_dur("+0", 0, 0, false);
        check_dur("0s", 0, 0, false);
        check_dur("1m30s", 0, 90 * USEC_PER_SEC, false);
        check_dur("90s", 0, 90 * USEC_PER_SEC, false);
        check_dur("5m", 0, 300 * USEC_PER_SEC, false);
        check_dur("1h", 0, 3600 * USEC_PER_SEC, false);
        check_dur("1h0m0s", 0, 3600 * USEC_PER_SEC, false);
        check_dur("1.5h", 0, 5400 * USEC_PER_SEC, false);
        check_dur(".5m", 0, 30 * USEC_PER_SEC, false);
        check_dur("1.m", 0, 60 * USEC_PER_SEC, false);
        check_dur("2h45m", 0, (2 * 3600 + 45 * 60) * USEC_PER_SEC, false);
        check_dur("300ms", 0, 300 * USEC_PER_MSEC, false);
        check_dur("1s500ms", 0, 1500 * USEC_PER_MSEC, false);
        check_dur("10us", 0, 10, false);
        check_dur("10\xc2\xb5s", 0, 10, false);              /* micro sign */
        check_dur("10\xce\xbcs", 0, 10, false);              /* Greek mu */
        check_dur("1500ns", 0, 2, false);                    /* rounded up to whole microseconds */
        check_dur("1ns", 0, 1, false);                       /* a positive duration stays positive */
        check_dur("1.0000001s", 0, USEC_PER_SEC + 1, false); /* 100 ns past the second */
        check_dur("1.0000000001s", 0, USEC_PER_SEC, false);  /* below a nanosecond: gone, as in Go */
        check_dur("-1s", 0, USEC_PER_SEC, true);
        check_dur("-1.5h", 0, 5400 * USEC_PER_SEC, true);
        check_dur("+90s", 0, 90 * USEC_PER_SEC, false);
        check_dur("2562047h", 0, UINT64_C(2562047) * 3600 * USEC_PER_SEC, false);
        /* Go's limit: 2^63 - 1 ns; 2^63 ns only negated. */
        check_dur("9223372036854775807ns", 0, UINT64_C(9223372036854776), false);
        check_dur("9223372036854775808ns", -ERANGE, 0, false);
        check_dur("-9223372036854775808ns", 0, UINT64_C(9223372036854776), true);
        check_dur("2562048h", -ERANGE, 0, false);
        check_dur("99999999999999999999999s", -ERANGE, 0, false);

        const char *bad[] = { "",    "-",    "+",    "90",    "1",     "00",  "s",      ".s",    ".",
                              "1.5", "1x",   "1sm",  "1 s",   " 1s",   "1s ", "1S",     "1H",    "1min",
                              "1d",  "1e3s", "--1s", "1s-1s", "1h+1m", "one", "1\xc2s", "0x10s", "\xc2\xb5s" };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
                check_dur(bad[i], -EINVAL, 0, false);
        usec_t v;
        bool neg;
        assert_int_equal(hypeman_parse_duration(NULL, &v, &neg), -EINVAL);
}

static void test_hypervisor_names(void **state) {
        (void) state;
        assert_string_equal(hypeman_hypervisor("qemu"), "qemu");
        assert_string_equal(hypeman_hypervisor("libvirt"), "qemu");
        assert_string_equal(hypeman_hypervisor("firecracker"), "firecracker");
        assert_string_equal(hypeman_hypervisor("cloud-hypervisor"), "cloud-hypervisor");
        assert_null(hypeman_hypervisor("vz"));
        assert_null(hypeman_hypervisor(""));
        assert_null(hypeman_hypervisor(NULL));
}

static int parse(const char *body, ApiReclaim *a, char *err, size_t errlen) {
        return api_parse_reclaim_hypeman(body, strlen(body), a, err, errlen);
}

static void expect_error(const char *body, const char *needle) {
        ApiReclaim a;
        char err[512] = "";
        int r = parse(body, &a, err, sizeof err);
        if (r != -EINVAL || !strstr(err, needle))
                fail_msg("%s: got %d \"%s\", expected -EINVAL naming %s", body, r, err, needle);
}

static void test_reclaim_request(void **state) {
        (void) state;
        ApiReclaim a;
        char err[512];
        /* hold_for defaults to 5m only when something is asked for, as hypeman's server does. */
        assert_int_equal(parse("{\"reclaim_bytes\": 536870912}", &a, err, sizeof err), 0);
        assert_int_equal(a.reclaim_bytes, 512 * MiB);
        assert_int_equal(a.hold_for, 5 * 60 * USEC_PER_SEC);
        assert_false(a.dry_run);
        assert_int_equal(parse("{\"reclaim_bytes\": 0}", &a, err, sizeof err), 0);
        assert_int_equal(a.hold_for, 0);
        assert_int_equal(parse("{\"reclaim_bytes\": 1, \"hold_for\": \"1m30s\", \"dry_run\": true, \"reason\": \"r\"}",
                               &a, err, sizeof err),
                         0);
        assert_int_equal(a.hold_for, 90 * USEC_PER_SEC);
        assert_true(a.dry_run);
        assert_string_equal(a.reason, "r");
        assert_int_equal(parse("{\"reclaim_bytes\": 1, \"hold_for\": \"1h\"}", &a, err, sizeof err), 0);
        assert_int_equal(a.hold_for, 3600 * USEC_PER_SEC);
        assert_int_equal(parse("{\"reclaim_bytes\": 1, \"hold_for\": \"0\"}", &a, err, sizeof err), 0);
        assert_int_equal(a.hold_for, 0);

        expect_error("{\"reclaim_bytes\": 1, \"hold_for\": \"90\"}", "\"hold_for\"");
        expect_error("{\"reclaim_bytes\": 1, \"hold_for\": \"-1s\"}", "must not be negative");
        expect_error("{\"reclaim_bytes\": 1, \"hold_for\": \"1h1ns\"}", "at most 1h");
        expect_error("{\"reclaim_bytes\": 1, \"hold_for\": \"61m\"}", "at most 1h");
        expect_error("{\"reclaim_bytes\": 1, \"hold_for\": \"1min\"}", "Go duration");
        expect_error("{\"reclaim_bytes\": -1}", "\"reclaim_bytes\"");
        expect_error("{\"reclaim_bytes\": 1.5}", "\"reclaim_bytes\"");
        expect_error("{\"hold_for\": \"1m\"}", "\"reclaim_bytes\" is required");
        expect_error("{\"reclaim_bytes\": 1, \"hold\": \"1m\"}", "unknown field \"hold\"");
        expect_error("{\"reclaim_bytes\": 1, \"dry_run\": \"yes\"}", "\"dry_run\"");

        /* ballast's own route keeps its syntax: a bare number is seconds there. */
        assert_int_equal(api_parse_reclaim("{\"reclaim_bytes\": 1, \"hold_for\": \"90\"}", 38, &a, err, sizeof err), 0);
        assert_int_equal(a.hold_for, 90 * USEC_PER_SEC);
        assert_int_equal(api_parse_reclaim("{\"reclaim_bytes\": 0}", 20, &a, err, sizeof err), 0);
        assert_int_equal(a.hold_for, 5 * 60 * USEC_PER_SEC);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_go_durations),
                cmocka_unit_test(test_hypervisor_names),
                cmocka_unit_test(test_reclaim_request),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
