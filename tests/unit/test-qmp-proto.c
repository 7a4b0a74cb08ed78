/* SPDX-License-Identifier: MIT */
/* QMP wire format: framing, big-integer clamping, message classification and guest statistics,
 * against messages captured from QEMU 7.2 (tests/fixtures/qmp/, one message per file). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "hv/qmp-proto.h"
#include "shared/macro.h"

/* Reads tests/fixtures/qmp/<name>.json; returns the malloc'ed bytes (with their \r\n). */
static char *fixture(const char *name, size_t *ret_len) {
        const char *src = getenv("BALLAST_SOURCEDIR");
        char path[1024];
        snprintf(path, sizeof(path), "%s/tests/fixtures/qmp/%s.json", src ? src : ".", name);
        FILE *f = fopen(path, "re");
        if (!f)
                fail_msg("cannot open fixture %s (is BALLAST_SOURCEDIR set?)", path);
        char *buf = malloc(65536);
        assert_non_null(buf);
        size_t n = fread(buf, 1, 65535, f);
        fclose(f);
        buf[n] = 0;
        *ret_len = n;
        return buf;
}

/* Frames the fixture like the driver does (one line, \r\n stripped) and parses it. */
static void parse_fixture(const char *name, QmpMsg *m) {
        size_t len, line_len = 0, consumed = 0;
        _cleanup_free_ char *buf = fixture(name, &len);
        assert_int_equal(qmp_next_line(buf, len, QMP_MAX_MESSAGE, &line_len, &consumed), 1);
        assert_int_equal(consumed, len); /* exactly one message per file */
        assert_true(line_len + 2 == len);
        assert_memory_equal(buf + line_len, "\r\n", 2);
        char err[256] = "";
        int r = qmp_msg_parse(buf, line_len, m, err, sizeof(err));
        if (r < 0)
                fail_msg("fixture %s: %s", name, err);
}

/* --- framing --- */

static void test_next_line(void **state) {
        (void) state;
        size_t l = 99, c = 99;
        const char crlf[] = "{\"a\": 1}\r\n{\"b\": 2}\n";
        assert_int_equal(qmp_next_line(crlf, strlen(crlf), 100, &l, &c), 1);
        assert_int_equal(l, 8);
        assert_int_equal(c, 10);
        assert_int_equal(qmp_next_line(crlf + c, strlen(crlf) - c, 100, &l, &c), 1);
        assert_int_equal(l, 8);
        assert_int_equal(c, 9);

        /* Partial: more bytes needed; outputs untouched. */
        l = c = 99;
        assert_int_equal(qmp_next_line("{\"a\"", 4, 100, &l, &c), 0);
        assert_int_equal(qmp_next_line("{\"a\": 1}\r", 9, 100, &l, &c), 0);
        assert_int_equal(qmp_next_line("", 0, 100, &l, &c), 0);
        assert_int_equal(l, 99);
        assert_int_equal(c, 99);

        /* Empty lines are consumed with length 0. */
        assert_int_equal(qmp_next_line("\n", 1, 100, &l, &c), 1);
        assert_int_equal(l, 0);
        assert_int_equal(c, 1);
        assert_int_equal(qmp_next_line("\r\n{}", 4, 100, &l, &c), 1);
        assert_int_equal(l, 0);
        assert_int_equal(c, 2);
        /* A lone CR is content, only the one before LF is stripped. */
        assert_int_equal(qmp_next_line("a\rb\r\r\n", 6, 100, &l, &c), 1);
        assert_int_equal(l, 4);
        assert_int_equal(c, 6);

        /* No newline within max. */
        char big[64];
        memset(big, 'x', sizeof(big));
        assert_int_equal(qmp_next_line(big, 16, 16, &l, &c), -EMSGSIZE);
        assert_int_equal(qmp_next_line(big, 15, 16, &l, &c), 0);
        assert_int_equal(qmp_next_line(big, 64, 16, &l, &c), -EMSGSIZE);
        /* A newline beyond max does not count; at max-1 it does. */
        big[20] = '\n';
        assert_int_equal(qmp_next_line(big, 64, 16, &l, &c), -EMSGSIZE);
        big[15] = '\n';
        assert_int_equal(qmp_next_line(big, 64, 16, &l, &c), 1);
        assert_int_equal(l, 15);
        assert_int_equal(c, 16);
}

/* --- clamping --- */

static void check_clamp(const char *in, const char *expect, size_t expect_n) {
        size_t len = strlen(in);
        _cleanup_free_ char *b = strdup(in);
        assert_non_null(b);
        size_t n = qmp_clamp_big_ints(b, len);
        if (n != expect_n || strcmp(b, expect) != 0)
                fail_msg("clamp(%s) = %zu, \"%s\"; expected %zu, \"%s\"", in, n, b, expect_n, expect);
        assert_int_equal(strlen(b), len); /* never changes the length */
}

static void test_clamp_big_ints(void **state) {
        (void) state;
        check_clamp("{\"a\": 18446744073709551615}", "{\"a\": -1                  }", 1);
        check_clamp("[18446744073709551615,18446744073709551615]", "[-1                  ,-1                  ]", 2);
        check_clamp("{\"a\": 9223372036854775807}", "{\"a\": 9223372036854775807}", 0); /* INT64_MAX */
        check_clamp("{\"a\": 9223372036854775808}", "{\"a\": -1                 }", 1); /* INT64_MAX + 1 */
        check_clamp("{\"a\": 99999999999999999999999}", "{\"a\": -1                     }", 1);
        check_clamp("{\"a\": -18446744073709551615}", "{\"a\": -1                   }", 1);
        check_clamp("{\"a\": -5, \"b\": 0, \"c\": -0}", "{\"a\": -5, \"b\": 0, \"c\": -0}", 0);
        check_clamp("{\"a\": -9223372036854775807}", "{\"a\": -9223372036854775807}", 0);
        /* Leading zeros do not make a number big. */
        check_clamp("[00000000000000000000001]", "[00000000000000000000001]", 0);
        /* Reals are the JSON parser's business. */
        check_clamp("[18446744073709551615.5, 1e400, 18446744073709551615E2]",
                    "[18446744073709551615.5, 1e400, 18446744073709551615E2]", 0);
        /* Numbers inside strings are untouched, including after escaped quotes and backslashes. */
        check_clamp("{\"s\": \"18446744073709551615\"}", "{\"s\": \"18446744073709551615\"}", 0);
        check_clamp("{\"s\": \"x\\\" 18446744073709551615 \\\"\", \"n\": 18446744073709551615}",
                    "{\"s\": \"x\\\" 18446744073709551615 \\\"\", \"n\": -1                  }", 1);
        check_clamp("{\"s\": \"a\\\\\", \"n\": 18446744073709551615}",
                    "{\"s\": \"a\\\\\", \"n\": -1                  }", 1);
        check_clamp("{\"18446744073709551615\": 18446744073709551615}",
                    "{\"18446744073709551615\": -1                  }", 1);
        /* Truncated input: a trailing backslash or an unterminated string. */
        check_clamp("\"abc\\", "\"abc\\", 0);
        check_clamp("\"18446744073709551615", "\"18446744073709551615", 0);
        check_clamp("-", "-", 0);
        check_clamp("18446744073709551615", "-1                  ", 1);

        /* The clamped text parses with a strict int64 parser. */
        _cleanup_free_ char *b = strdup("{\"return\": {\"x\": 18446744073709551615}}");
        assert_non_null(b);
        qmp_clamp_big_ints(b, strlen(b));
        json_t *j = json_loads(b, 0, NULL);
        assert_non_null(j);
        assert_true(json_integer_value(json_object_get(json_object_get(j, "return"), "x")) == -1);
        json_decref(j);
}

/* --- messages --- */

static void test_parse_greeting(void **state) {
        (void) state;
        QmpMsg m;
        parse_fixture("greeting", &m);
        assert_int_equal(m.type, QMP_MSG_GREETING);
        assert_int_equal(m.version[0], 7);
        assert_int_equal(m.version[1], 2);
        assert_int_equal(m.version[2], 22);
        assert_string_equal(m.package, "Debian 1:7.2+dfsg-7+deb12u18+b3");
        assert_false(m.id_present);
        qmp_msg_done(&m);
        assert_null(m.root);

        /* A greeting without a version is still a greeting. */
        char err[256];
        const char *g = "{\"QMP\": {\"capabilities\": []}}";
        assert_int_equal(qmp_msg_parse(g, strlen(g), &m, err, sizeof(err)), 0);
        assert_int_equal(m.type, QMP_MSG_GREETING);
        assert_int_equal(m.version[0], -1);
        assert_null(m.package);
        qmp_msg_done(&m);
}

static void test_parse_returns(void **state) {
        (void) state;
        QmpMsg m;

        parse_fixture("return-empty-id-last", &m);
        assert_int_equal(m.type, QMP_MSG_RETURN);
        assert_true(m.id_present && m.id_is_ours);
        assert_int_equal(m.id, 3);
        assert_true(json_is_object(m.value) && json_object_size(m.value) == 0);
        qmp_msg_done(&m);

        parse_fixture("return-actual-id-last", &m);
        assert_int_equal(m.type, QMP_MSG_RETURN);
        assert_int_equal(m.id, 4);
        assert_true(json_integer_value(json_object_get(m.value, "actual")) == 1073741824);
        qmp_msg_done(&m);

        parse_fixture("return-id-first", &m);
        assert_int_equal(m.type, QMP_MSG_RETURN);
        assert_true(m.id_present && m.id_is_ours);
        assert_int_equal(m.id, 10);
        assert_true(json_integer_value(json_object_get(m.value, "base-memory")) == 1073741824);
        qmp_msg_done(&m);

        /* id echoed as an object: present, but not one of ours. */
        parse_fixture("return-id-object", &m);
        assert_int_equal(m.type, QMP_MSG_RETURN);
        assert_true(m.id_present);
        assert_false(m.id_is_ours);
        qmp_msg_done(&m);

        parse_fixture("return-id-string", &m);
        assert_true(m.id_present);
        assert_false(m.id_is_ours);
        qmp_msg_done(&m);

        parse_fixture("return-no-id", &m);
        assert_int_equal(m.type, QMP_MSG_RETURN);
        assert_false(m.id_present);
        assert_false(m.id_is_ours);
        assert_true(json_is_true(json_object_get(m.value, "running")));
        qmp_msg_done(&m);

        parse_fixture("qom-list", &m);
        assert_int_equal(m.type, QMP_MSG_RETURN);
        assert_int_equal(m.id, 11);
        assert_true(json_is_array(m.value) && json_array_size(m.value) == 2);
        qmp_msg_done(&m);

        /* ids that are not ours: negative, too big for int64 (clamped to -1), real. */
        static const char *const not_ours[] = {
                "{\"return\": {}, \"id\": -1}",  "{\"return\": {}, \"id\": 18446744073709551615}",
                "{\"return\": {}, \"id\": 1.5}", "{\"return\": {}, \"id\": null}",
                "{\"return\": {}, \"id\": [1]}",
        };
        for (size_t i = 0; i < ELEMENTSOF(not_ours); i++) {
                char err[256];
                assert_int_equal(qmp_msg_parse(not_ours[i], strlen(not_ours[i]), &m, err, sizeof(err)), 0);
                assert_true(m.id_present);
                assert_false(m.id_is_ours);
                qmp_msg_done(&m);
        }
        const char *maxid = "{\"return\": {}, \"id\": 9223372036854775807}";
        char err[256];
        assert_int_equal(qmp_msg_parse(maxid, strlen(maxid), &m, err, sizeof(err)), 0);
        assert_true(m.id_is_ours);
        assert_true(m.id == (uint64_t) INT64_MAX);
        qmp_msg_done(&m);
}

static void test_parse_errors(void **state) {
        (void) state;
        QmpMsg m;

        parse_fixture("error-id-first", &m);
        assert_int_equal(m.type, QMP_MSG_ERROR);
        assert_true(m.id_present && m.id_is_ours);
        assert_int_equal(m.id, 5);
        assert_string_equal(m.error_class, "GenericError");
        assert_string_equal(m.error_desc, "Parameter 'target' expects a size");
        qmp_msg_done(&m);

        parse_fixture("error-no-id", &m);
        assert_int_equal(m.type, QMP_MSG_ERROR);
        assert_false(m.id_present);
        assert_string_equal(m.error_desc, "JSON parse error, expecting value");
        qmp_msg_done(&m);

        parse_fixture("error-device-not-active", &m);
        assert_int_equal(m.type, QMP_MSG_ERROR);
        assert_int_equal(m.id, 1);
        assert_string_equal(m.error_class, "DeviceNotActive");
        qmp_msg_done(&m);

        parse_fixture("error-command-not-found", &m);
        assert_int_equal(m.type, QMP_MSG_ERROR);
        assert_string_equal(m.error_class, "CommandNotFound");
        qmp_msg_done(&m);

        /* desc is optional for us: it becomes "". */
        char err[256];
        const char *nodesc = "{\"error\": {\"class\": \"GenericError\"}, \"id\": 2}";
        assert_int_equal(qmp_msg_parse(nodesc, strlen(nodesc), &m, err, sizeof(err)), 0);
        assert_string_equal(m.error_desc, "");
        qmp_msg_done(&m);
}

static void test_parse_events(void **state) {
        (void) state;
        QmpMsg m;

        parse_fixture("event-balloon-change", &m);
        assert_int_equal(m.type, QMP_MSG_EVENT);
        assert_string_equal(m.event, "BALLOON_CHANGE");
        assert_true(m.event_time_us == UINT64_C(1795331913) * 1000000 + 599801);
        assert_true(json_integer_value(json_object_get(m.value, "actual")) == 535822336);
        assert_false(m.id_present);
        qmp_msg_done(&m);

        parse_fixture("event-shutdown", &m);
        assert_int_equal(m.type, QMP_MSG_EVENT);
        assert_string_equal(m.event, "SHUTDOWN");
        assert_true(m.event_time_us == UINT64_C(1795334602) * 1000000 + 1);
        qmp_msg_done(&m);

        parse_fixture("event-stop-no-data", &m);
        assert_int_equal(m.type, QMP_MSG_EVENT);
        assert_string_equal(m.event, "STOP");
        assert_null(m.value);
        qmp_msg_done(&m);

        /* Missing or out-of-range timestamps read as 0, never garbage. */
        static const char *const odd[] = {
                "{\"event\": \"X\"}",
                "{\"event\": \"X\", \"timestamp\": {\"seconds\": -1, \"microseconds\": 0}}",
                "{\"event\": \"X\", \"timestamp\": {\"seconds\": 5, \"microseconds\": 1000000}}",
                "{\"event\": \"X\", \"timestamp\": {\"seconds\": 18446744073709551615, \"microseconds\": 1}}",
                "{\"event\": \"X\", \"timestamp\": {\"seconds\": 1099511627776, \"microseconds\": 1}}",
                "{\"event\": \"X\", \"timestamp\": 5}",
        };
        for (size_t i = 0; i < ELEMENTSOF(odd); i++) {
                char err[256];
                assert_int_equal(qmp_msg_parse(odd[i], strlen(odd[i]), &m, err, sizeof(err)), 0);
                assert_int_equal(m.type, QMP_MSG_EVENT);
                assert_true(m.event_time_us == 0);
                qmp_msg_done(&m);
        }
}

static void test_parse_invalid(void **state) {
        (void) state;
        static const char *const bad[] = {
                "",
                "   ",
                "{",
                "{\"execute\": }",
                "[1,2]",
                "\"QMP\"",
                "42",
                "{}",
                "{\"id\": 1}",
                "{\"QMP\": 1}",
                "{\"error\": \"boom\", \"id\": 1}",
                "{\"error\": {\"desc\": \"no class\"}}",
                "{\"error\": {\"class\": 5}}",
                "{\"event\": 5}",
                "{\"return\": 1, \"return\": 2}", /* duplicate keys */
                "{\"return\": {}} trailing",
                "{\"return\": {}}{\"return\": {}}",
        };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                QmpMsg m = { .root = NULL };
                char err[256] = "";
                int r = qmp_msg_parse(bad[i], strlen(bad[i]), &m, err, sizeof(err));
                if (r != -EBADMSG)
                        fail_msg("qmp_msg_parse(%s) = %d, expected -EBADMSG", bad[i], r);
                assert_true(strlen(err) > 0);
        }

        /* An embedded NUL is not silently truncated to a valid prefix. */
        QmpMsg m;
        char err[256] = "";
        static const char nul[] = "{\"return\": {}}\0garbage";
        assert_int_equal(qmp_msg_parse(nul, sizeof(nul) - 1, &m, err, sizeof(err)), -EBADMSG);

        /* Over the limit: refused before any allocation of its size. */
        size_t n = QMP_MAX_MESSAGE + 1;
        char *huge = malloc(n);
        assert_non_null(huge);
        memset(huge, ' ', n);
        huge[0] = '{';
        huge[n - 1] = '}';
        assert_int_equal(qmp_msg_parse(huge, n, &m, err, sizeof(err)), -EBADMSG);
        assert_non_null(strstr(err, "too long"));
        free(huge);
}

/* --- guest statistics --- */

static void test_guest_stats_unset(void **state) {
        (void) state;
        QmpMsg m;
        HvStats s;
        char err[256];
        parse_fixture("guest-stats-unset", &m);
        assert_int_equal(m.type, QMP_MSG_RETURN);
        assert_int_equal(m.id, 12);
        memset(&s, 0x5a, sizeof(s));
        assert_int_equal(qmp_parse_guest_stats(m.value, &s, err, sizeof(err)), 0);
        assert_true(s.swap_in == HV_STAT_UNSET);
        assert_true(s.swap_out == HV_STAT_UNSET);
        assert_true(s.major_faults == HV_STAT_UNSET);
        assert_true(s.minor_faults == HV_STAT_UNSET);
        assert_true(s.free == HV_STAT_UNSET);
        assert_true(s.total == HV_STAT_UNSET);
        assert_true(s.available == HV_STAT_UNSET);
        assert_true(s.caches == HV_STAT_UNSET);
        assert_true(s.oom_kills == HV_STAT_UNSET);
        assert_true(s.last_update == 0);
        qmp_msg_done(&m);
}

static void test_guest_stats_real(void **state) {
        (void) state;
        QmpMsg m;
        HvStats s;
        char err[256];
        parse_fixture("guest-stats-real", &m);
        assert_int_equal(qmp_parse_guest_stats(m.value, &s, err, sizeof(err)), 0);
        assert_true(s.swap_in == 0);
        assert_true(s.swap_out == 0);
        assert_true(s.major_faults == 0);
        assert_true(s.minor_faults == 1473);
        assert_true(s.free == 448876544);
        assert_true(s.total == 479657984);
        assert_true(s.available == 448475136);
        assert_true(s.caches == 2265088);
        assert_true(s.oom_kills == HV_STAT_UNSET); /* QEMU 7.2 has no stat-oom-kills */
        assert_true(s.last_update == 1795331911);
        qmp_msg_done(&m);

        /* Member order does not matter ("last-update" first). */
        parse_fixture("guest-stats-swapping", &m);
        assert_int_equal(qmp_parse_guest_stats(m.value, &s, err, sizeof(err)), 0);
        assert_true(s.swap_in == 36864);
        assert_true(s.swap_out == 169758720);
        assert_true(s.available == 4767744);
        assert_true(s.last_update == 1795333251);
        qmp_msg_done(&m);

        /* Old QEMU's -1, partial sets, junk types. */
        const char *old = "{\"stats\": {\"stat-free-memory\": -1, \"stat-total-memory\": 1000, "
                          "\"stat-swap-in\": \"5\", \"stat-oom-kills\": 3}, \"last-update\": -7}";
        json_t *j = json_loads(old, 0, NULL);
        assert_non_null(j);
        assert_int_equal(qmp_parse_guest_stats(j, &s, err, sizeof(err)), 0);
        assert_true(s.free == HV_STAT_UNSET);
        assert_true(s.total == 1000);
        assert_true(s.swap_in == HV_STAT_UNSET);
        assert_true(s.oom_kills == 3);
        assert_true(s.last_update == 0);
        json_decref(j);

        /* Not a stats object: an error, and *ret untouched. */
        static const char *const bad[] = { "{}", "{\"stats\": 5}", "[1]", "\"guest-stats\"" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                j = json_loads(bad[i], JSON_DECODE_ANY, NULL);
                assert_non_null(j);
                memset(&s, 0x5a, sizeof(s));
                err[0] = 0;
                assert_int_equal(qmp_parse_guest_stats(j, &s, err, sizeof(err)), -EBADMSG);
                assert_true(s.total == UINT64_C(0x5a5a5a5a5a5a5a5a));
                assert_true(strlen(err) > 0);
                json_decref(j);
        }
        assert_int_equal(qmp_parse_guest_stats(NULL, &s, err, sizeof(err)), -EBADMSG);
}

static void test_format_command(void **state) {
        (void) state;
        _cleanup_free_ char *line =
                qmp_format_command("balloon", json_pack("{s:I}", "value", (json_int_t) 536870912), 7);
        assert_non_null(line);
        size_t n = strlen(line);
        assert_true(n > 1 && line[n - 1] == '\n');
        assert_null(memchr(line, '\n', n - 1)); /* one line */
        json_t *j = json_loadb(line, n - 1, 0, NULL);
        assert_non_null(j);
        assert_string_equal(json_string_value(json_object_get(j, "execute")), "balloon");
        assert_true(json_integer_value(json_object_get(j, "id")) == 7);
        assert_true(json_integer_value(json_object_get(json_object_get(j, "arguments"), "value")) == 536870912);
        json_decref(j);

        _cleanup_free_ char *plain = qmp_format_command("query-balloon", NULL, 1);
        assert_non_null(plain);
        j = json_loads(plain, 0, NULL);
        assert_non_null(j);
        assert_null(json_object_get(j, "arguments"));
        json_decref(j);
}

/* The cheap event classifier: events as QEMU writes them, and never a reply, a greeting, an
 * escaped key or an unfinished line. */
static void test_line_is_event(void **state) {
        (void) state;
        static const struct {
                const char *line;
                bool event;
        } cases[] = {
                { "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"BALLOON_CHANGE\", "
                  "\"data\": {\"actual\": 1073741824}}",
                  true },
                { "  {\"event\":\"X\"}", true },
                { "{\"data\": {\"return\": 1, \"event\": 2}, \"event\": \"X\"}", true },
                { "{\"data\": [\"}\", {\"a\": \"\\\"\"}], \"event\": \"X\"}", true },
                { "{\"return\": {}, \"id\": \"ballast-1\"}", false },
                { "{\"event\": \"X\", \"return\": {}}", false },
                { "{\"event\": \"X\", \"error\": {}}", false },
                { "{\"QMP\": {}, \"event\": \"X\"}", false },
                { "{\"data\": {\"event\": \"X\"}}", false },
                { "{\"ev\\u0065nt\": \"X\"}", false },
                { "{\"event\": \"X\", \"r\\u0065turn\": 1}", false },
                { "{\"event\": \"X\"", false },
                { "{\"event\": \"X}", false },
                { "[{\"event\": \"X\"}]", false },
                { "{\"event\": \"X\"]", false },
                { "", false },
        };
        for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
                if (qmp_line_is_event(cases[i].line, strlen(cases[i].line)) != cases[i].event)
                        fail_msg("case %zu (%s): want %d", i, cases[i].line, cases[i].event);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_next_line),        cmocka_unit_test(test_clamp_big_ints),
                cmocka_unit_test(test_parse_greeting),   cmocka_unit_test(test_parse_returns),
                cmocka_unit_test(test_parse_errors),     cmocka_unit_test(test_parse_events),
                cmocka_unit_test(test_parse_invalid),    cmocka_unit_test(test_guest_stats_unset),
                cmocka_unit_test(test_guest_stats_real), cmocka_unit_test(test_format_command),
                cmocka_unit_test(test_line_is_event),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
