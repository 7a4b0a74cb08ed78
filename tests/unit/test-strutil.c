/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/log.h"
#include "shared/macro.h"
#include "shared/strutil.h"

static void check_size(const char *s, int expect_r, uint64_t expect_v) {
        uint64_t v = UINT64_C(0xdeadbeef);
        int r = parse_size(s, &v);
        if (r != expect_r || (r == 0 && v != expect_v))
                fail_msg("parse_size(\"%s\") = %d, %llu; expected %d, %llu", s, r, (unsigned long long) v, expect_r,
                         (unsigned long long) expect_v);
        if (r < 0 && v != UINT64_C(0xdeadbeef))
                fail_msg("parse_size(\"%s\") wrote *ret on failure", s);
}

static void test_parse_size(void **state) {
        (void) state;
        check_size("0", 0, 0);
        check_size("4096", 0, 4096);
        check_size("4096B", 0, 4096);
        check_size("64k", 0, 64 * KiB);
        check_size("64K", 0, 64 * KiB);
        check_size("64KiB", 0, 64 * KiB);
        check_size("512M", 0, 512 * MiB);
        check_size("256MiB", 0, 256 * MiB);
        check_size("256mb", 0, 256 * MiB);
        check_size("1G", 0, GiB);
        check_size("1GiB", 0, GiB);
        check_size("2T", 0, 2 * TiB);
        /* Fractions are exact in binary units. */
        check_size("1.5G", 0, GiB + GiB / 2);
        check_size("0.5K", 0, 512);
        check_size("0.25M", 0, MiB / 4);
        check_size("1.000000001G", 0, GiB + 1); /* 9 digits allowed, truncates */
        check_size("1.0000000001G", -EINVAL, 0);
        check_size("1.5", -EINVAL, 0);  /* fractional bytes */
        check_size("1.5B", -EINVAL, 0); /* same */
        check_size("1.G", -EINVAL, 0);
        check_size(".5G", -EINVAL, 0);
        /* The 2^62 limit, exact. */
        check_size("4611686018427387904", 0, UINT64_C(1) << 62);
        check_size("4611686018427387905", -ERANGE, 0);
        check_size("4194304T", 0, UINT64_C(1) << 62);
        check_size("4194305T", -ERANGE, 0);
        check_size("4194304.5T", -ERANGE, 0);
        check_size("4294967296G", 0, UINT64_C(1) << 62);
        check_size("4294967297G", -ERANGE, 0);
        check_size("18446744073709551615", -ERANGE, 0);
        check_size("18446744073709551616", -ERANGE, 0);
        check_size("99999999999999999999999999999999", -ERANGE, 0);
        check_size("99999999999999999999999T", -ERANGE, 0);
        /* Garbage and negatives. */
        check_size("", -EINVAL, 0);
        check_size("-1", -EINVAL, 0);
        check_size("-1G", -EINVAL, 0);
        check_size("+1G", -EINVAL, 0);
        check_size(" 1G", -EINVAL, 0);
        check_size("1 G", -EINVAL, 0);
        check_size("1G ", -EINVAL, 0);
        check_size("1X", -EINVAL, 0);
        check_size("1GiBB", -EINVAL, 0);
        check_size("G", -EINVAL, 0);
        check_size("0x10", -EINVAL, 0);
        check_size("1e9", -EINVAL, 0);
        uint64_t v;
        assert_int_equal(parse_size(NULL, &v), -EINVAL);
}

static void check_duration(const char *s, int expect_r, usec_t expect_v) {
        usec_t v = 4242;
        int r = parse_duration(s, &v);
        if (r != expect_r || (r == 0 && v != expect_v))
                fail_msg("parse_duration(\"%s\") = %d, %llu; expected %d, %llu", s, r, (unsigned long long) v, expect_r,
                         (unsigned long long) expect_v);
        if (r < 0 && v != 4242)
                fail_msg("parse_duration(\"%s\") wrote *ret on failure", s);
}

static void test_parse_duration(void **state) {
        (void) state;
        check_duration("250ms", 0, 250 * USEC_PER_MSEC);
        check_duration("1500us", 0, 1500);
        check_duration("5s", 0, 5 * USEC_PER_SEC);
        check_duration("5m", 0, 300 * USEC_PER_SEC);
        check_duration("5min", 0, 300 * USEC_PER_SEC);
        check_duration("1h", 0, 3600 * USEC_PER_SEC);
        check_duration("1h30m", 0, 5400 * USEC_PER_SEC);
        check_duration("1m30s500ms", 0, 90500 * USEC_PER_MSEC);
        check_duration("0s", 0, 0);
        check_duration("0", 0, 0);
        check_duration("5", 0, 5 * USEC_PER_SEC); /* bare number = seconds */
        check_duration("30", 0, 30 * USEC_PER_SEC);
        /* Garbage. */
        check_duration("", -EINVAL, 0);
        check_duration("ms", -EINVAL, 0);
        check_duration("s5", -EINVAL, 0);
        check_duration("5x", -EINVAL, 0);
        check_duration("5 s", -EINVAL, 0);
        check_duration(" 5s", -EINVAL, 0);
        check_duration("5s ", -EINVAL, 0);
        check_duration("-5s", -EINVAL, 0);
        check_duration("1.5s", -EINVAL, 0);
        check_duration("1h5", -EINVAL, 0); /* a bare number only as the whole string */
        check_duration("5S", -EINVAL, 0);
        check_duration("5sec", -EINVAL, 0);
        /* Overflow. */
        check_duration("99999999999999999999s", -ERANGE, 0);
        check_duration("9999999999999h", -ERANGE, 0);
        usec_t v;
        assert_int_equal(parse_duration(NULL, &v), -EINVAL);
}

static void test_parse_boolean(void **state) {
        (void) state;
        static const char *const yes[] = { "1", "yes", "YES", "y", "true", "True", "on", "ON" };
        static const char *const no[] = { "0", "no", "n", "false", "FALSE", "off", "Off" };
        static const char *const bad[] = { "", "2", "yess", "of", " on", "on ", "enable", "-1" };
        bool b;
        for (size_t i = 0; i < ELEMENTSOF(yes); i++) {
                b = false;
                assert_int_equal(parse_boolean(yes[i], &b), 0);
                assert_true(b);
        }
        for (size_t i = 0; i < ELEMENTSOF(no); i++) {
                b = true;
                assert_int_equal(parse_boolean(no[i], &b), 0);
                assert_false(b);
        }
        for (size_t i = 0; i < ELEMENTSOF(bad); i++) {
                b = true;
                if (parse_boolean(bad[i], &b) != -EINVAL)
                        fail_msg("parse_boolean(\"%s\") accepted", bad[i]);
                assert_true(b);
        }
        assert_int_equal(parse_boolean(NULL, &b), -EINVAL);
}

static void test_parse_u64(void **state) {
        (void) state;
        uint64_t v = 0;
        assert_int_equal(parse_u64("18446744073709551615", &v), 0);
        assert_true(v == UINT64_MAX);
        assert_int_equal(parse_u64("18446744073709551616", &v), -ERANGE);
        assert_int_equal(parse_u64("0", &v), 0);
        assert_true(v == 0);
        assert_int_equal(parse_u64("", &v), -EINVAL);
        assert_int_equal(parse_u64("-1", &v), -EINVAL);
        assert_int_equal(parse_u64("12a", &v), -EINVAL);
}

static void test_name_is_valid(void **state) {
        (void) state;
        assert_true(name_is_valid("vm0"));
        assert_true(name_is_valid("a.b-c_d"));
        assert_true(name_is_valid("0"));
        assert_true(name_is_valid("abcdefghijklmnopqrstuvwxyz012345"));   /* 32 */
        assert_false(name_is_valid("abcdefghijklmnopqrstuvwxyz0123456")); /* 33 */
        assert_false(name_is_valid(""));
        assert_false(name_is_valid(NULL));
        assert_false(name_is_valid(".hidden"));
        assert_false(name_is_valid("-opt"));
        assert_false(name_is_valid("a b"));
        assert_false(name_is_valid("a/b"));
        assert_false(name_is_valid(".."));
        assert_false(name_is_valid("vm\n"));
        assert_false(name_is_valid("vm\xc3\xa9"));
}

static void check_format(uint64_t bytes, const char *expect) {
        char buf[FORMAT_SIZE_MAX];
        const char *s = format_size(buf, sizeof(buf), bytes);
        assert_ptr_equal(s, buf);
        if (strcmp(s, expect) != 0)
                fail_msg("format_size(%llu) = \"%s\", expected \"%s\"", (unsigned long long) bytes, s, expect);
}

static void test_format_size(void **state) {
        (void) state;
        check_format(0, "0 B");
        check_format(1023, "1023 B");
        check_format(1024, "1.00 KiB");
        check_format(1536, "1.50 KiB");
        check_format(10 * MiB, "10.0 MiB");
        check_format(512 * MiB, "512 MiB");
        check_format(GiB + GiB / 2, "1.50 GiB");
        check_format(UINT64_C(1) << 62, "4.00 EiB");
        check_format(UINT64_MAX, "16.0 EiB");

        char buf[FORMAT_SIZE_MAX];
        assert_string_equal(format_size_delta(buf, sizeof(buf), -(int64_t) (256 * MiB)), "-256 MiB");
        assert_string_equal(format_size_delta(buf, sizeof(buf), 12 * (int64_t) MiB), "+12.0 MiB");
        assert_string_equal(format_size_delta(buf, sizeof(buf), INT64_MIN), "-8.00 EiB");
        assert_string_equal(format_duration(buf, sizeof(buf), 950), "950 us");
        assert_string_equal(format_duration(buf, sizeof(buf), 180 * USEC_PER_MSEC), "180.0 ms");
        assert_string_equal(format_duration(buf, sizeof(buf), 2410 * USEC_PER_MSEC), "2.41 s");
        assert_string_equal(format_duration(buf, sizeof(buf), USEC_INFINITY), "infinity");

        /* Truncation is bounded and terminated. */
        char tiny[4];
        format_size(tiny, sizeof(tiny), 512 * MiB);
        assert_int_equal(strlen(tiny), 3);
}

static void test_strscpy(void **state) {
        (void) state;
        char b[4];
        assert_int_equal(strscpy(b, sizeof(b), "abcdef"), 6);
        assert_string_equal(b, "abc");
        assert_int_equal(strscpy(b, sizeof(b), "ab"), 2);
        assert_string_equal(b, "ab");
}

static void test_utf8_count(void **state) {
        (void) state;
        assert_int_equal(utf8_count("", 0), 0);
        assert_int_equal(utf8_count("abc", 3), 3);
        assert_int_equal(utf8_count("\xc3\xa9t\xc3\xa9", 5), 3); /* été */
        assert_int_equal(utf8_count("\xf0\x9f\x98\x80", 4), 1);  /* U+1F600 */
        assert_int_equal(utf8_count("\xc3", 1), -1);             /* truncated */
        assert_int_equal(utf8_count("\xc0\xaf", 2), -1);         /* overlong */
        assert_int_equal(utf8_count("\xed\xa0\x80", 3), -1);     /* surrogate */
        assert_int_equal(utf8_count("\xf4\x90\x80\x80", 4), -1); /* above U+10FFFF */
        assert_int_equal(utf8_count("a\0b", 3), -1);             /* NUL */
        assert_int_equal(utf8_count("\x80", 1), -1);             /* lone continuation */
}

static void check_sanitize(const char *in, size_t n, size_t size, unsigned flags, const char *expect) {
        char out[256];
        assert_true(size <= sizeof(out));
        memset(out, 'X', sizeof(out));
        size_t k = utf8_sanitize(out, size, in, n, flags);
        if (k != strlen(expect) || strcmp(out, expect) != 0)
                fail_msg("utf8_sanitize(\"%.*s\", %zu, %#x) = \"%s\" (%zu), expected \"%s\"", (int) n, in, size, flags,
                         out, k, expect);
        assert_true(utf8_count(out, k) >= 0);
        assert_true(k < size);
}

static void test_utf8_sanitize(void **state) {
        (void) state;
        static const struct {
                const char *in;
                size_t n; /* 0: strlen(in) */
                size_t size;
                unsigned flags;
                const char *expect;
        } table[] = {
                { "", 0, 16, 0, "" },
                { "plain text", 0, 64, 0, "plain text" },
                { "\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80", 0, 64, 0, "\xc3\xa9t\xc3\xa9 \xf0\x9f\x98\x80" },
                /* Cut only between characters: "été" in 5 bytes + NUL needs 6. */
                { "\xc3\xa9t\xc3\xa9", 0, 6, 0, "\xc3\xa9t\xc3\xa9" },
                { "\xc3\xa9t\xc3\xa9", 0, 5, 0, "\xc3\xa9t" },
                { "\xc3\xa9t\xc3\xa9", 0, 2, 0, "" },
                { "\xf0\x9f\x98\x80x", 0, 4, 0, "" },
                /* Whitespace controls become a space, others '?'. */
                { "a\nb\rc\td", 0, 64, 0, "a b c d" },
                { "\x1b[31mred\x1b[0m", 0, 64, 0, "?[31mred?[0m" },
                { "bell\x07 del\x7f", 0, 64, 0, "bell? del?" },
                { "a\0b", 3, 64, 0, "a?b" },
                /* C1 controls (U+0085 NEL, U+009B CSI) as UTF-8, and raw C1 bytes. */
                { "x\xc2\x85y\xc2\x9bz", 0, 64, 0, "x?y?z" },
                { "x\x9b"
                  "31m",
                  0, 64, 0, "x?31m" },
                /* Line separators and bidirectional overrides. */
                { "a\xe2\x80\xa8"
                  "b\xe2\x80\xae"
                  "c\xe2\x81\xa6"
                  "d",
                  0, 64, 0, "a?b?c?d" },
                /* Invalid UTF-8: truncated, overlong, surrogate, above U+10FFFF, lone continuation. */
                { "ab\xc3", 0, 64, 0, "ab?" },
                { "\xe2\x82", 0, 64, 0, "??" },
                { "\xc0\xaf", 0, 64, 0, "??" },
                { "\xed\xa0\x80", 0, 64, 0, "???" },
                { "\xf4\x90\x80\x80", 0, 64, 0, "????" },
                { "\x80z", 0, 64, 0, "?z" },
                /* Escapes for logs: whole escapes only. */
                { "\x1b[0m", 0, 64, UTF8_ESCAPE, "\\x1b[0m" },
                { "x\xc2\x9b", 0, 64, UTF8_ESCAPE, "x\\xc2\\x9b" },
                { "a\nb", 0, 64, UTF8_ESCAPE, "a b" },
                { "ab\xff", 0, 64, UTF8_ESCAPE, "ab\\xff" },
                { "\x1b\x1b", 0, 8, UTF8_ESCAPE, "\\x1b" },
                { "\xc3\xa9", 0, 1, UTF8_ESCAPE, "" },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                check_sanitize(table[i].in, table[i].n ?: strlen(table[i].in), table[i].size, table[i].flags,
                               table[i].expect);

        /* In place, as the drivers use it. */
        char b[32] = "\x1b]0;pwned\x07\xc3\xa9\xc3";
        assert_int_equal(utf8_sanitize(b, sizeof(b), b, strlen(b), 0), 13);
        assert_string_equal(b, "?]0;pwned?\xc3\xa9?");

        /* size 0 writes nothing. */
        char z = 'Z';
        assert_int_equal(utf8_sanitize(&z, 0, "abc", 3, 0), 0);
        assert_int_equal(z, 'Z');

        /* 600 bytes of 2- and 3-byte characters into 512: valid, under the size, on a boundary. */
        char big[600], out[512];
        for (size_t i = 0; i < 600; i += 3)
                memcpy(big + i, i % 2 ? "\xe2\x82\xac" : "\xc3\xa9\n", 3);
        size_t k = utf8_sanitize(out, sizeof(out), big, sizeof(big), 0);
        assert_true(k <= 511 && k >= 508);
        assert_int_equal(strlen(out), k);
        assert_true(utf8_count(out, k) > 0);
        assert_null(strchr(out, '\n'));
}

/* The logger runs every message through utf8_sanitize(UTF8_ESCAPE): a hypervisor's ESC or newline
 * cannot colour the terminal or forge a record. */
static void test_log_escapes(void **state) {
        (void) state;
        char path[] = "/tmp/ballast-test-log-XXXXXX";
        int fd = mkstemp(path);
        assert_true(fd >= 0);
        fflush(stderr);
        int saved = dup(STDERR_FILENO);
        assert_true(saved >= 0 && dup2(fd, STDERR_FILENO) == STDERR_FILENO);
        unsetenv("JOURNAL_STREAM");
        log_set_prefix("t");
        log_info("peer said: %s", "\x1b[31mred\x1b[0m\nt: forged\x07 \xc3\xa9 \xc2\x9b \xff");
        fflush(stderr);
        assert_true(dup2(saved, STDERR_FILENO) == STDERR_FILENO);
        close(saved);
        log_set_prefix(NULL);

        char buf[512] = "";
        ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
        close(fd);
        unlink(path);
        assert_true(n > 0);
        assert_string_equal(buf, "t: peer said: \\x1b[31mred\\x1b[0m t: forged\\x07 \xc3\xa9 \\xc2\\x9b \\xff\n");
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_parse_size),    cmocka_unit_test(test_parse_duration),
                cmocka_unit_test(test_parse_boolean), cmocka_unit_test(test_parse_u64),
                cmocka_unit_test(test_name_is_valid), cmocka_unit_test(test_format_size),
                cmocka_unit_test(test_strscpy),       cmocka_unit_test(test_utf8_count),
                cmocka_unit_test(test_utf8_sanitize), cmocka_unit_test(test_log_escapes),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
