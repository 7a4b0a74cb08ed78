/* SPDX-License-Identifier: MIT */
/* Unit tests of guest/agent/proto.c: request parsing, id echo, JSON escaping,
 * line framing, /proc parsing and the fill pattern. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "proto.h"

/* Parses s and returns the result; *r must be freed by the caller. */
static int parse(const char *s, AgentRequest *r, char *err, size_t errlen) {
        return agent_request_parse(s, strlen(s), r, err, errlen);
}

/* Encodes bytes as a JSON string and returns a NUL-terminated copy. */
static char *enc(const void *p, size_t n, int *ret_replaced) {
        AgentBuf b = { 0 };
        int r = agent_json_put_string(&b, p, n);
        assert_true(r >= 0);
        if (ret_replaced)
                *ret_replaced = r;
        agent_buf_put(&b, "", 1);
        return b.data;
}

/* Minimal validity check of encoder output: valid UTF-8, no raw control
 * characters, quotes only at the ends or escaped. */
static void assert_valid_json_string(const char *s) {
        size_t n = strlen(s);
        assert_true(n >= 2);
        assert_int_equal(s[0], '"');
        assert_int_equal(s[n - 1], '"');
        for (size_t i = 1; i + 1 < n; i++) {
                unsigned char c = (unsigned char) s[i];
                assert_true(c >= 0x20);
                if (c == '\\') {
                        i++;
                        assert_non_null(strchr("\"\\/bfnrtu", s[i]));
                        continue;
                }
                assert_true(c != '"');
                if (c >= 0x80) {
                        size_t l = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
                        assert_true(c >= 0xc2 && c <= 0xf4);
                        for (size_t k = 1; k < l; k++)
                                assert_int_equal((unsigned char) s[i + k] & 0xc0, 0x80);
                        i += l - 1;
                }
        }
}

static void test_ping_int_id(void **state) {
        (void) state;
        AgentRequest r;
        char err[256];
        assert_int_equal(parse("{\"id\": 42, \"cmd\": \"ping\"}", &r, err, sizeof err), 0);
        assert_string_equal(r.id_json, "42");
        assert_true(r.has_id);
        assert_int_equal(r.cmd, AGENT_CMD_PING);
        agent_request_free(&r);

        assert_int_equal(parse(" { \"cmd\" : \"meminfo\" , \"id\" : 9007199254740992 } ", &r, err, sizeof err), 0);
        assert_string_equal(r.id_json, "9007199254740992");
        assert_int_equal(r.cmd, AGENT_CMD_MEMINFO);
        agent_request_free(&r);
}

static void test_id_rejects(void **state) {
        (void) state;
        static const char *const bad[] = {
                "{\"id\": 9007199254740993, \"cmd\": \"ping\"}", /* 2^53 + 1 */
                "{\"id\": -1, \"cmd\": \"ping\"}",
                "{\"id\": 1.5, \"cmd\": \"ping\"}",
                "{\"id\": 1e3, \"cmd\": \"ping\"}",
                "{\"id\": true, \"cmd\": \"ping\"}",
                "{\"id\": [1], \"cmd\": \"ping\"}",
                "{\"id\": 99999999999999999999999, \"cmd\": \"ping\"}",
                "{\"id\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\", \"cmd\": "
                "\"ping\"}", /* 65 */
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                AgentRequest r;
                char err[256];
                assert_int_equal(parse(bad[i], &r, err, sizeof err), -EINVAL);
                assert_string_equal(r.id_json, "null");
                assert_true(strlen(err) > 0);
                agent_request_free(&r);
        }
}

static void test_string_id_echo(void **state) {
        (void) state;
        AgentRequest r;
        char err[256];
        /* escapes are decoded and re-encoded canonically */
        assert_int_equal(parse("{\"id\": \"a\\/b\\u00e9\\ud83d\\ude00\\n\", \"cmd\": \"ping\"}", &r, err, sizeof err),
                         0);
        assert_string_equal(r.id_json, "\"a/b\xc3\xa9\xf0\x9f\x98\x80\\n\"");
        agent_request_free(&r);

        /* exactly 64 bytes is fine */
        char line[256];
        snprintf(line, sizeof line, "{\"id\":\"%064d\",\"cmd\":\"ping\"}", 0);
        assert_int_equal(parse(line, &r, err, sizeof err), 0);
        assert_int_equal(strlen(r.id_json), 66);
        agent_request_free(&r);

        /* 64 bytes of control characters: the worst-case re-encoding fits */
        char ctl[64 * 6 + 64];
        strcpy(ctl, "{\"id\":\"");
        for (int i = 0; i < 64; i++)
                strcat(ctl, "\\u0001");
        strcat(ctl, "\",\"cmd\":\"ping\"}");
        assert_int_equal(parse(ctl, &r, err, sizeof err), 0);
        assert_int_equal(strlen(r.id_json), 64 * 6 + 2);
        agent_request_free(&r);
}

static void test_id_kept_on_error(void **state) {
        (void) state;
        AgentRequest r;
        char err[256];
        assert_int_equal(parse("{\"id\": 7, \"cmd\": \"nope\"}", &r, err, sizeof err), -EINVAL);
        assert_string_equal(r.id_json, "7");
        assert_non_null(strstr(err, "unknown cmd"));
        agent_request_free(&r);

        assert_int_equal(parse("{\"id\": \"x\"}", &r, err, sizeof err), -EINVAL);
        assert_string_equal(r.id_json, "\"x\"");
        assert_non_null(strstr(err, "cmd"));
        agent_request_free(&r);

        assert_int_equal(parse("{\"id\": 3, \"cmd\": \"fill\"}", &r, err, sizeof err), -EINVAL);
        assert_string_equal(r.id_json, "3");
        assert_non_null(strstr(err, "mib"));
        agent_request_free(&r);
}

static void test_exec_args(void **state) {
        (void) state;
        AgentRequest r;
        char err[256];
        assert_int_equal(
                parse("{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[\"sh\",\"-c\",\"echo \\\"hi\\\"\"],"
                      "\"timeout_ms\":500,\"max_output\":0,\"stdin\":\"a\\u0000b\",\"future\":{\"x\":[1,2,{}]}}}",
                      &r, err, sizeof err),
                0);
        assert_int_equal(r.cmd, AGENT_CMD_EXEC);
        assert_int_equal(r.argc, 3);
        assert_string_equal(r.argv[0], "sh");
        assert_string_equal(r.argv[2], "echo \"hi\"");
        assert_null(r.argv[3]);
        assert_int_equal(r.timeout_ms, 500);
        assert_int_equal(r.max_output, 0);
        assert_int_equal(r.stdin_len, 3);
        assert_memory_equal(r.stdin_data, "a\0b", 3);
        agent_request_free(&r);

        /* defaults */
        assert_int_equal(parse("{\"cmd\":\"exec\",\"args\":{\"argv\":[\"true\"]}}", &r, err, sizeof err), 0);
        assert_int_equal(r.timeout_ms, AGENT_EXEC_TIMEOUT_DEFAULT_MS);
        assert_int_equal(r.max_output, AGENT_EXEC_OUTPUT_DEFAULT);
        assert_null(r.stdin_data);
        assert_string_equal(r.id_json, "null");
        assert_false(r.has_id);
        agent_request_free(&r);
}

static void test_exec_rejects(void **state) {
        (void) state;
        static const char *const bad[] = {
                "{\"id\":1,\"cmd\":\"exec\"}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[]}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":\"ls\"}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[1]}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[\"a\\u0000b\"]}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[\"ls\"],\"timeout_ms\":0}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[\"ls\"],\"timeout_ms\":600001}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[\"ls\"],\"timeout_ms\":\"5\"}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[\"ls\"],\"max_output\":1048577}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":{\"argv\":[\"ls\"],\"stdin\":5}}",
                "{\"id\":1,\"cmd\":\"exec\",\"args\":[]}",
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                AgentRequest r;
                char err[256];
                assert_int_equal(parse(bad[i], &r, err, sizeof err), -EINVAL);
                assert_string_equal(r.id_json, "1");
                assert_true(strlen(err) > 0);
                agent_request_free(&r);
        }
}

static void test_fill_args(void **state) {
        (void) state;
        AgentRequest r;
        char err[256];
        assert_int_equal(parse("{\"id\":1,\"cmd\":\"fill\",\"args\":{\"mib\":100}}", &r, err, sizeof err), 0);
        assert_int_equal(r.mib, 100);
        assert_int_equal(r.seed, 1);
        assert_true(r.hold);
        assert_false(r.check_zero);
        agent_request_free(&r);

        assert_int_equal(parse("{\"id\":1,\"cmd\":\"fill\",\"args\":{\"mib\":1,\"seed\":4294967295,\"hold\":false,"
                               "\"check_zero\":true}}",
                               &r, err, sizeof err),
                         0);
        assert_int_equal(r.seed, UINT32_MAX);
        assert_false(r.hold);
        assert_true(r.check_zero);
        agent_request_free(&r);

        static const char *const bad[] = {
                "{\"id\":1,\"cmd\":\"fill\",\"args\":{\"mib\":0}}",
                "{\"id\":1,\"cmd\":\"fill\",\"args\":{\"mib\":1,\"seed\":4294967296}}",
                "{\"id\":1,\"cmd\":\"fill\",\"args\":{\"mib\":1,\"hold\":1}}",
                "{\"id\":1,\"cmd\":\"fill\",\"args\":{\"mib\":1048577}}",
                "{\"id\":1,\"cmd\":\"verify\",\"args\":{}}",
                "{\"id\":1,\"cmd\":\"release\"}",
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                assert_int_equal(parse(bad[i], &r, err, sizeof err), -EINVAL);
                agent_request_free(&r);
        }
        assert_int_equal(parse("{\"id\":1,\"cmd\":\"verify\",\"args\":{\"handle\":3}}", &r, err, sizeof err), 0);
        assert_int_equal(r.handle, 3);
        assert_int_equal(r.cmd, AGENT_CMD_VERIFY);
        agent_request_free(&r);
}

static void test_malformed(void **state) {
        (void) state;
        static const char *const bad[] = {
                "",
                "garbage",
                "[]",
                "\"ping\"",
                "{",
                "{\"id\":1,",
                "{\"id\":1,\"cmd\":\"ping\"",
                "{\"id\":1,\"cmd\":\"ping\"}}",
                "{\"id\":1,\"cmd\":\"ping\"} x",
                "{\"id\":1 \"cmd\":\"ping\"}",
                "{\"id\":1,\"cmd\":\"ping\",}",
                "{'id':1}",
                "{\"cmd\":\"pi\x01ng\"}",
                "{\"cmd\":\"\xff\"}",
                "{\"cmd\":\"\xc0\xaf\"}",     /* overlong '/' */
                "{\"cmd\":\"\xed\xa0\x80\"}", /* encoded surrogate */
                "{\"cmd\":\"\\ud800\"}",      /* lone high surrogate */
                "{\"cmd\":\"\\udc00\"}",      /* lone low surrogate */
                "{\"cmd\":\"\\u12\"}",
                "{\"cmd\":\"\\x\"}",
                "{\"cmd\":\"ping\",\"x\":01}",
                "{\"cmd\":\"ping\",\"x\":-}",
                "{\"cmd\":\"ping\",\"x\":1.}",
                "{\"cmd\":\"ping\",\"x\":tru}",
                "{\"cmd\":\"ping\",\"x\":nul}",
                "{\"cmd\":\"ping\",\"x\":[1,]}",
                "{\"cmd\":ping}",
                "{\"cmd\":[\"ping\"]}",
        };
        for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
                AgentRequest r;
                char err[256];
                int rr = parse(bad[i], &r, err, sizeof err);
                if (rr != -EINVAL)
                        fail_msg("accepted: %s", bad[i]);
                assert_true(strlen(err) > 0);
                agent_request_free(&r);
        }
}

static void test_deep_nesting(void **state) {
        (void) state;
        /* Skipped values are depth-limited: hostile nesting fails cleanly. */
        size_t depth = 100000;
        char *s = malloc(depth * 2 + 64);
        assert_non_null(s);
        size_t n = (size_t) sprintf(s, "{\"cmd\":\"ping\",\"x\":");
        /* Loops, not memset: GCC 12 with -fsanitize=address misjudges the bounds of s. */
        for (size_t i = 0; i < depth; i++)
                s[n++] = '[';
        for (size_t i = 0; i < depth; i++)
                s[n++] = ']';
        s[n++] = '}';
        AgentRequest r;
        char err[256];
        assert_int_equal(agent_request_parse(s, n, &r, err, sizeof err), -EINVAL);
        assert_non_null(strstr(err, "deep"));
        agent_request_free(&r);

        /* moderate nesting of unknown fields is accepted */
        assert_int_equal(parse("{\"cmd\":\"ping\",\"x\":[[[[{\"a\":[{}]}]]]],\"args\":null}", &r, err, sizeof err), 0);
        agent_request_free(&r);
        free(s);
}

static void test_cmd_strings(void **state) {
        (void) state;
        for (int i = 0; i < _AGENT_CMD_MAX; i++)
                assert_int_equal(agent_cmd_from_string(agent_cmd_to_string((AgentCmd) i)), i);
        assert_int_equal(agent_cmd_from_string("drop-caches"), AGENT_CMD_DROP_CACHES);
        assert_int_equal(agent_cmd_from_string("PING"), _AGENT_CMD_INVALID);
        assert_null(agent_cmd_to_string(_AGENT_CMD_MAX));
        assert_null(agent_cmd_to_string(_AGENT_CMD_INVALID));
}

static void test_escape(void **state) {
        (void) state;
        int rep;
        char *s = enc("a\"b\\c\n\t\r\b\f\x01\x1f\x7f/", 14, &rep);
        assert_string_equal(s, "\"a\\\"b\\\\c\\n\\t\\r\\b\\f\\u0001\\u001f\x7f/\"");
        assert_int_equal(rep, 0);
        free(s);

        s = enc("\0x", 2, &rep);
        assert_string_equal(s, "\"\\u0000x\"");
        free(s);

        /* valid multi-byte UTF-8 passes through */
        s = enc("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9, &rep);
        assert_string_equal(s, "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"");
        assert_int_equal(rep, 0);
        free(s);

        /* every byte of an invalid sequence becomes one U+FFFD */
        s = enc("\xff\xc0\xaf\xed\xa0\x80\xf4\x90\x80\x80\xe2\x82", 12, &rep);
        assert_int_equal(rep, 12);
        assert_valid_json_string(s);
        free(s);
        s = enc("a\x80z", 3, &rep);
        assert_string_equal(s, "\"a\\ufffdz\"");
        assert_int_equal(rep, 1);
        free(s);
}

static void test_escape_all_bytes(void **state) {
        (void) state;
        /* every byte value, and a pseudo-random blob, encode to valid JSON */
        unsigned char all[256];
        for (int i = 0; i < 256; i++)
                all[i] = (unsigned char) i;
        char *s = enc(all, sizeof all, NULL);
        assert_valid_json_string(s);
        free(s);

        unsigned char *blob = malloc(100000);
        assert_non_null(blob);
        uint64_t x = 88172645463325252ull;
        for (size_t i = 0; i < 100000; i++) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                blob[i] = (unsigned char) x;
        }
        s = enc(blob, 100000, NULL);
        assert_valid_json_string(s);
        free(s);
        free(blob);
}

static void test_reply(void **state) {
        (void) state;
        AgentBuf b = { 0 };
        agent_reply_begin(&b, "\"x\"", true);
        agent_json_field_i64(&b, "exit_code", -3);
        agent_json_field_u64(&b, "n", UINT64_MAX);
        agent_json_field_bool(&b, "t", true);
        agent_json_field_double(&b, "s", 1.5);
        agent_json_field_bytes(&b, "out", "a\nb", 3);
        agent_reply_end(&b);
        agent_buf_put(&b, "", 1);
        assert_string_equal(b.data, "{\"id\":\"x\",\"ok\":true,\"exit_code\":-3,\"n\":18446744073709551615,\"t\":true,"
                                    "\"s\":1.500,\"out\":\"a\\nb\"}\n");
        agent_buf_reset(&b);
        agent_reply_error(&b, NULL, "bad \"thing\"");
        agent_buf_put(&b, "", 1);
        assert_string_equal(b.data, "{\"id\":null,\"ok\":false,\"error\":\"bad \\\"thing\\\"\"}\n");
        agent_buf_free(&b);
}

static void test_buf(void **state) {
        (void) state;
        AgentBuf b = { 0 };
        for (int i = 0; i < 1000; i++)
                agent_buf_printf(&b, "%04d", i);
        assert_int_equal(b.len, 4000);
        agent_buf_consume(&b, 3996);
        assert_int_equal(b.len, 4);
        assert_memory_equal(b.data, "0999", 4);
        char big[1000];
        memset(big, 'q', sizeof big);
        agent_buf_printf(&b, "%.*s", (int) sizeof big, big); /* the long-format path */
        assert_int_equal(b.len, 1004);
        agent_buf_consume(&b, 5000);
        assert_int_equal(b.len, 0);
        agent_buf_free(&b);
        agent_buf_free(NULL);
}

static void test_lines(void **state) {
        (void) state;
        AgentLineReader lr = { 0 };
        const char *in = "{\"a\":1}\r\n\npartial";
        const char *p = in, *line;
        size_t n = strlen(in), len;
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_OK);
        assert_int_equal(len, 7);
        assert_memory_equal(line, "{\"a\":1}", 7);
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_OK);
        assert_int_equal(len, 0);
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_NONE);
        assert_int_equal(n, 0);
        const char *more = " line\n";
        p = more;
        n = strlen(more);
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_OK);
        assert_int_equal(len, 12);
        assert_memory_equal(line, "partial line", 12);

        /* reset drops a partial line */
        p = "junk";
        n = 4;
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_NONE);
        agent_line_reset(&lr);
        p = "ok\n";
        n = 3;
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_OK);
        assert_memory_equal(line, "ok", 2);
        agent_line_free(&lr);
}

static void test_lines_too_long(void **state) {
        (void) state;
        AgentLineReader lr = { 0 };
        const char *line;
        size_t len;
        size_t chunk = 65536;
        char *x = malloc(chunk);
        assert_non_null(x);
        memset(x, 'x', chunk);

        /* exactly AGENT_LINE_MAX bytes is accepted, fed in pieces */
        for (size_t sent = 0; sent < AGENT_LINE_MAX; sent += chunk) {
                const char *p = x;
                size_t n = chunk;
                assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_NONE);
        }
        const char *p = "\n";
        size_t n = 1;
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_OK);
        assert_int_equal(len, AGENT_LINE_MAX);

        /* one byte more is too long; the rest of the line is discarded, and the
         * next line is read normally */
        for (size_t sent = 0; sent < AGENT_LINE_MAX; sent += chunk) {
                p = x;
                n = chunk;
                assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_NONE);
        }
        for (int i = 0; i < 40; i++) { /* keeps going well past the limit */
                p = x;
                n = chunk;
                assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_NONE);
                assert_int_equal(n, 0);
        }
        const char *tail = "xx\n{\"id\":1}\n";
        p = tail;
        n = strlen(tail);
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_TOO_LONG);
        assert_int_equal(agent_line_feed(&lr, &p, &n, &line, &len), AGENT_LINE_OK);
        assert_memory_equal(line, "{\"id\":1}", 8);
        assert_int_equal(n, 0);
        agent_line_free(&lr);
        free(x);

        /* the parser refuses over-long input on its own too */
        AgentRequest r;
        char err[64];
        assert_int_equal(agent_request_parse("{}", AGENT_LINE_MAX + 1, &r, err, sizeof err), -E2BIG);
        assert_string_equal(err, "request too long");
        agent_request_free(&r);
}

static void test_proc(void **state) {
        (void) state;
        const char *mi = "MemTotal:         480284 kB\nMemFree:          449148 kB\nMemAvailable:     437000 kB\n"
                         "SwapTotal:        240140 kB\n";
        uint64_t v;
        assert_int_equal(agent_meminfo_get(mi, "MemTotal", &v), 0);
        assert_int_equal(v, 480284ull * 1024);
        assert_int_equal(agent_meminfo_get(mi, "MemAvailable", &v), 0);
        assert_int_equal(v, 437000ull * 1024);
        assert_int_equal(agent_meminfo_get(mi, "Mem", &v), -ENOENT); /* no prefix matches */
        assert_int_equal(agent_meminfo_get(mi, "Cached", &v), -ENOENT);

        const char *vm = "pgfault 1234\npswpin 0\noom_kill 3\n";
        assert_int_equal(agent_vmstat_get(vm, "oom_kill", &v), 0);
        assert_int_equal(v, 3);
        assert_int_equal(agent_vmstat_get(vm, "pswpout", &v), -ENOENT);
        assert_int_equal(agent_vmstat_get("x 99999999999999999999999\n", "x", &v), -ERANGE);

        assert_int_equal(agent_min_free_kbytes(480284), 14408);
        assert_int_equal(agent_min_free_kbytes(65536), 5720);
        assert_int_equal(agent_min_free_kbytes(0), 5720);
}

static void test_fill_pattern(void **state) {
        (void) state;
        /* deterministic, never zero, seed-dependent */
        assert_int_equal(agent_fill_word(1, 0), agent_fill_word(1, 0));
        assert_true(agent_fill_word(1, 0) != agent_fill_word(2, 0));
        assert_true(agent_fill_word(1, 0) != agent_fill_word(1, 1));
        for (uint64_t i = 0; i < 100000; i++)
                assert_true(agent_fill_word((uint32_t) i, i) != 0);
        /* the fold is order-dependent */
        uint64_t a = agent_fill_fold(agent_fill_fold(0, 1), 2), b = agent_fill_fold(agent_fill_fold(0, 2), 1);
        assert_true(a != b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_ping_int_id),    cmocka_unit_test(test_id_rejects),
                cmocka_unit_test(test_string_id_echo), cmocka_unit_test(test_id_kept_on_error),
                cmocka_unit_test(test_exec_args),      cmocka_unit_test(test_exec_rejects),
                cmocka_unit_test(test_fill_args),      cmocka_unit_test(test_malformed),
                cmocka_unit_test(test_deep_nesting),   cmocka_unit_test(test_cmd_strings),
                cmocka_unit_test(test_escape),         cmocka_unit_test(test_escape_all_bytes),
                cmocka_unit_test(test_reply),          cmocka_unit_test(test_buf),
                cmocka_unit_test(test_lines),          cmocka_unit_test(test_lines_too_long),
                cmocka_unit_test(test_proc),           cmocka_unit_test(test_fill_pattern),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
