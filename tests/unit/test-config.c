/* SPDX-License-Identifier: MIT */
/* ballastd's configuration: golden files (tests/fixtures/config/NAME.ini → NAME.expected, the
 * config_dump() output or the one-line error), the percentage parser, loading from disk, and the
 * example config and the documentation kept in step with the key table.
 *
 * BALLAST_UPDATE_GOLDEN=1 rewrites the .expected files from the current output (review the diff). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/config.h"
#include "shared/log.h"
#include "shared/macro.h"

static char *source_path(const char *rel) {
        const char *src = getenv("BALLAST_SOURCEDIR");
        char *p;
        if (!src)
                fail_msg("BALLAST_SOURCEDIR is not set");
        if (asprintf(&p, "%s/%s", src, rel) < 0)
                fail_msg("out of memory");
        return p;
}

/* Reads a whole file; returns NULL if it does not exist. */
static char *read_all(const char *path, size_t *ret_len) {
        FILE *f = fopen(path, "rbe");
        if (!f)
                return NULL;
        char *buf = NULL;
        size_t len = 0, alloc = 0;
        for (;;) {
                if (len == alloc) {
                        alloc = alloc ? alloc * 2 : 4096;
                        buf = realloc(buf, alloc + 1);
                        assert_non_null(buf);
                }
                size_t n = fread(buf + len, 1, alloc - len, f);
                len += n;
                if (n == 0)
                        break;
        }
        assert_false(ferror(f));
        fclose(f);
        buf[len] = '\0';
        *ret_len = len;
        return buf;
}

static char *dump_to_string(const DaemonConfig *c) {
        char *s = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&s, &n);
        assert_non_null(f);
        assert_int_equal(config_dump(c, f), 0);
        fclose(f);
        return s;
}

/* What a golden file records: the dump, or the error line. Returns the parser's result. */
static int golden_output(const char *text, size_t len, const char *name, char **ret) {
        DaemonConfig c;
        char err[CONFIG_ERR_MAX] = "";
        int r = config_parse_string(text, len, name, &c, err, sizeof(err));
        if (r < 0) {
                assert_true(err[0]);
                assert_null(strchr(err, '\n')); /* one line */
                assert_int_equal(asprintf(ret, "%s\n", err) < 0, 0);
                return r;
        }
        *ret = dump_to_string(&c);
        config_done(&c);
        return 0;
}

static int cmp_names(const struct dirent **a, const struct dirent **b) {
        return strcmp((*a)->d_name, (*b)->d_name);
}

static int is_ini(const struct dirent *d) {
        size_t n = strlen(d->d_name);
        return d->d_name[0] != '.' && n > 4 && strcmp(d->d_name + n - 4, ".ini") == 0;
}

static void test_golden(void **state) {
        (void) state;
        _cleanup_free_ char *dir = source_path("tests/fixtures/config");
        bool update = getenv("BALLAST_UPDATE_GOLDEN") != NULL;
        struct dirent **names;
        int n = scandir(dir, &names, is_ini, cmp_names);
        unsigned failed = 0, ok = 0, errors = 0;

        assert_true(n >= 0);
        for (int i = 0; i < n; i++) {
                const char *name = names[i]->d_name;
                _cleanup_free_ char *ini = NULL, *exp_path = NULL, *text = NULL, *expected = NULL, *actual = NULL;
                size_t len, elen;

                assert_true(asprintf(&ini, "%s/%s", dir, name) >= 0);
                assert_true(asprintf(&exp_path, "%s/%.*s.expected", dir, (int) (strlen(name) - 4), name) >= 0);
                text = read_all(ini, &len);
                assert_non_null(text);
                int r = golden_output(text, len, name, &actual);
                if (r < 0) {
                        errors++;
                        if (r != -EINVAL && r != -EFBIG) {
                                print_error("%s: unexpected return %d\n", name, r);
                                failed++;
                        }
                } else {
                        /* The dump is itself a configuration that gives the same dump. */
                        _cleanup_free_ char *again = NULL;
                        if (golden_output(actual, strlen(actual), "dump", &again) != 0 || strcmp(again, actual) != 0) {
                                print_error("%s: the dump does not parse back to itself:\n%s", name, again);
                                failed++;
                        }
                        ok++;
                }

                if (update) {
                        FILE *f = fopen(exp_path, "we");
                        assert_non_null(f);
                        fputs(actual, f);
                        assert_int_equal(fclose(f), 0);
                        free(names[i]);
                        continue;
                }
                expected = read_all(exp_path, &elen);
                if (!expected) {
                        print_error("%s: no %s\n", name, exp_path);
                        failed++;
                } else if (strcmp(expected, actual) != 0) {
                        print_error("%s: expected\n%s--- got\n%s", name, expected, actual);
                        failed++;
                }
                free(names[i]);
        }
        free(names);
        print_message("%d golden cases: %u parsed, %u rejected\n", n, ok, errors);
        assert_int_equal(failed, 0);
        assert_true(n >= 20);
        assert_true(ok >= 5 && errors >= 15);
}

static void check_percent(const char *s, int expect_r, uint32_t expect_v) {
        uint32_t v = 0xdeadbeef;
        int r = config_parse_percent(s, &v);
        if (r != expect_r || (r == 0 && v != expect_v))
                fail_msg("config_parse_percent(\"%s\") = %d, %u; expected %d, %u", s, r, v, expect_r, expect_v);
        if (r < 0 && v != 0xdeadbeef)
                fail_msg("config_parse_percent(\"%s\") wrote *ret on failure", s);
}

static void test_percent(void **state) {
        (void) state;
        check_percent("10%", 0, 1000);
        check_percent("10", 0, 1000);
        check_percent("12.5%", 0, 1250);
        check_percent("12.5", 0, 1250);
        check_percent("12.34%", 0, 1234);
        check_percent("12.05%", 0, 1205);
        check_percent("12.50%", 0, 1250);
        check_percent("0", 0, 0);
        check_percent("0%", 0, 0);
        check_percent("0.01%", 0, 1);
        check_percent("0.1", 0, 10);
        check_percent("100%", 0, 10000);
        check_percent("100.00%", 0, 10000);
        check_percent("99.99%", 0, 9999);
        check_percent("007%", 0, 700);
        check_percent("5.0", 0, 500);
        /* Above 100. */
        check_percent("100.01%", -ERANGE, 0);
        check_percent("100.1", -ERANGE, 0);
        check_percent("101", -ERANGE, 0);
        check_percent("150%", -ERANGE, 0);
        check_percent("1000", -ERANGE, 0);
        check_percent("99999999999999999999999999%", -ERANGE, 0);
        check_percent("4294967296", -ERANGE, 0); /* would wrap a uint32 to 0 */
        /* More than two decimals, even when they are zeros. */
        check_percent("12.345%", -EDOM, 0);
        check_percent("12.000", -EDOM, 0);
        check_percent("0.001", -EDOM, 0);
        check_percent("1.00000000000000000000000001", -EDOM, 0);
        /* Garbage, signs, spaces, other notations. */
        check_percent("", -EINVAL, 0);
        check_percent("%", -EINVAL, 0);
        check_percent("-5%", -EINVAL, 0);
        check_percent("-0", -EINVAL, 0);
        check_percent("+5", -EINVAL, 0);
        check_percent(" 5", -EINVAL, 0);
        check_percent("5 %", -EINVAL, 0);
        check_percent("5% ", -EINVAL, 0);
        check_percent("5%%", -EINVAL, 0);
        check_percent(".5", -EINVAL, 0);
        check_percent("5.", -EINVAL, 0);
        check_percent("5.%", -EINVAL, 0);
        check_percent("1.2.3", -EINVAL, 0);
        check_percent("0x10", -EINVAL, 0);
        check_percent("1e1", -EINVAL, 0);
        check_percent("5pct", -EINVAL, 0);
        check_percent("ten", -EINVAL, 0);
        check_percent("0.5‰", -EINVAL, 0);
        check_percent("1000x", -EINVAL, 0); /* garbage wins over range */
        check_percent("12.345x", -EINVAL, 0);
        uint32_t v;
        assert_int_equal(config_parse_percent(NULL, &v), -EINVAL);

        /* Every value the parser accepts in the canonical two-decimal form. */
        for (uint32_t pmy = 0; pmy <= 10000; pmy++) {
                char buf[16];
                snprintf(buf, sizeof(buf), "%u.%02u%%", pmy / 100, pmy % 100);
                check_percent(buf, 0, pmy);
        }
}

static void test_defaults(void **state) {
        (void) state;
        DaemonConfig c;
        PlanConfig plan;
        const char *field = NULL;

        config_init_default(&c);
        plan_config_default(&plan);
        assert_int_equal(c.policy.rate_window_max, plan.rate_window_max); /* the keys the file cannot set */
        assert_int_equal(c.policy.step_gain_pmy, plan.step_gain_pmy);
        assert_int_equal(plan_config_validate(&c.policy, &field), 0);

        /* the documented defaults (docs/config.md). */
        assert_string_equal(c.api.socket, "/run/ballast/api.sock");
        assert_null(c.api.listen);
        assert_null(c.api.tokens_file);
        assert_null(c.api.write_group);
        assert_string_equal(c.state.directory, "/var/lib/ballast");
        assert_int_equal(c.state.journal_max, 10000);
        assert_int_equal(c.pressure.scope, CONFIG_SCOPE_HOST);
        assert_null(c.pressure.cgroup);
        assert_int_equal(c.pressure.sample_interval, 250 * USEC_PER_MSEC);
        assert_int_equal(c.pressure.psi, CONFIG_PSI_AUTO);
        assert_int_equal(c.pressure.psi_trigger_stall, 100 * USEC_PER_MSEC);
        assert_int_equal(c.pressure.psi_trigger_window, USEC_PER_SEC);
        assert_string_equal(c.pressure.proc_root, "/proc");
        assert_int_equal(c.policy.low_pmy, 1000);
        assert_int_equal(c.policy.high_pmy, 1500);
        assert_int_equal(c.policy.critical_pmy, 500);
        assert_int_equal(c.policy.psi_some_pmy, 500);
        assert_int_equal(c.policy.psi_full_pmy, 1000);
        assert_int_equal(c.policy.dead_band, 32 * MiB);
        assert_int_equal(c.policy.rate_take, 512 * MiB);
        assert_int_equal(c.policy.rate_give, 1024 * MiB);
        assert_int_equal(c.policy.dwell, 5 * USEC_PER_SEC);
        assert_int_equal(c.policy.floor_pmy, 2500);
        assert_int_equal(c.policy.hard_floor_pmy, 1000);
        assert_int_equal(c.policy.guest_margin, 128 * MiB);
        assert_int_equal(c.policy.sample_max_age, 2 * USEC_PER_SEC);
        assert_int_equal(c.driver.op_timeout, 5 * USEC_PER_SEC);
        assert_int_equal(c.driver.stall_min_rate, 16 * MiB);
        assert_int_equal(c.driver.stall_window, 3 * USEC_PER_SEC);
        assert_int_equal(c.driver.stall_backoff, 30 * USEC_PER_SEC);
        assert_int_equal(c.driver.stats_period, 2 * USEC_PER_SEC);
        assert_int_equal(c.driver.tolerance, 16 * MiB);
        assert_int_equal(c.park.size, 128 * MiB);
        assert_int_equal(c.park.protect_for, 30 * USEC_PER_SEC);
        assert_int_equal(c.log.level, LOG_LEVEL_INFO);

        /* An empty text is the defaults. */
        DaemonConfig d;
        assert_int_equal(config_parse_string("", 0, "empty", &d, NULL, 0), 0);
        assert_int_equal(config_parse_string(NULL, 0, "empty", &d, NULL, 0), 0);
        _cleanup_free_ char *a = dump_to_string(&c), *b = dump_to_string(&d);
        assert_string_equal(a, b);
        assert_null(config_done(&d));
        assert_null(config_done(NULL));
}

static void test_typed_fields(void **state) {
        (void) state;
        static const char text[] = "[api]\n"
                                   "listen = [::1]:9464\n"
                                   "tokens_file = /etc/ballast/tokens\n"
                                   "write_group = 4242\n"
                                   "[pressure]\n"
                                   "scope = cgroup:/sys/fs/cgroup/machine.slice\n"
                                   "psi = off\n"
                                   "[policy]\n"
                                   "low_watermark = 12.5%\n"
                                   "rate_limit = 256M/s\n"
                                   "give_rate = 2G\n"
                                   "[log]\n"
                                   "level = debug\n";
        DaemonConfig c;
        char err[CONFIG_ERR_MAX];
        assert_int_equal(config_parse_string(text, strlen(text), "t", &c, err, sizeof(err)), 0);

        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *) &c.api.listen_addr;
        assert_int_equal(sin6->sin6_family, AF_INET6);
        assert_int_equal(ntohs(sin6->sin6_port), 9464);
        assert_true(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
        assert_int_equal(c.api.listen_addr_len, sizeof(struct sockaddr_in6));
        assert_string_equal(c.api.listen, "[::1]:9464");
        assert_string_equal(c.api.write_group, "4242");
        assert_int_equal(c.api.write_gid, 4242);
        assert_int_equal(c.pressure.scope, CONFIG_SCOPE_CGROUP);
        assert_string_equal(c.pressure.cgroup, "/sys/fs/cgroup/machine.slice");
        assert_int_equal(c.pressure.psi, CONFIG_PSI_OFF);
        assert_int_equal(c.policy.low_pmy, 1250);
        assert_int_equal(c.policy.rate_take, 256 * MiB);
        assert_int_equal(c.policy.rate_give, 2048 * MiB);
        assert_int_equal(c.log.level, LOG_LEVEL_DEBUG);
        config_done(&c);
        assert_null(c.api.listen); /* back to the defaults */

        static const char v4[] = "[api]\nlisten = 127.0.0.1:80\ntokens_file = /t\nwrite_group = root\n";
        assert_int_equal(config_parse_string(v4, strlen(v4), "t", &c, err, sizeof(err)), 0);
        const struct sockaddr_in *sin = (const struct sockaddr_in *) &c.api.listen_addr;
        assert_int_equal(sin->sin_family, AF_INET);
        assert_int_equal(ntohs(sin->sin_port), 80);
        assert_int_equal(ntohl(sin->sin_addr.s_addr), INADDR_LOOPBACK);
        assert_int_equal(c.api.listen_addr_len, sizeof(struct sockaddr_in));
        assert_int_equal(c.api.write_gid, 0);
        config_done(&c);
}

/* Failure leaves *ret alone, the reason is truncated safely, and err may be NULL. */
static void test_failure_contract(void **state) {
        (void) state;
        static const char bad[] = "[policy]\nlow_watermark = 150%\n";
        DaemonConfig c, before;
        memset(&c, 0xa5, sizeof(c));
        memcpy(&before, &c, sizeof(c));
        char err[16];
        assert_int_equal(config_parse_string(bad, strlen(bad), "ballastd.conf", &c, err, sizeof(err)), -EINVAL);
        assert_memory_equal(&c, &before, sizeof(c));
        assert_string_equal(err, "ballastd.conf:2");
        assert_int_equal(config_parse_string(bad, strlen(bad), "x", &c, NULL, 0), -EINVAL);
        assert_int_equal(config_parse_string(bad, strlen(bad), "x", &c, err, 0), -EINVAL);

        char full[CONFIG_ERR_MAX];
        assert_int_equal(config_parse_string(bad, strlen(bad), NULL, &c, full, sizeof(full)), -EINVAL);
        assert_string_equal(full, "<config>:2: [policy] low_watermark: \"150%\" is not a percentage between 0 and 100");

        /* Only `len` bytes are read: the text need not end in NUL. */
        static const char trunc[] = "[log]\nlevel = debugXXX";
        assert_int_equal(config_parse_string(trunc, strlen(trunc) - 3, "t", &c, full, sizeof(full)), 0);
        assert_int_equal(c.log.level, LOG_LEVEL_DEBUG);
        config_done(&c);

        /* Too big, whatever it holds. */
        _cleanup_free_ char *big = malloc(CONFIG_FILE_MAX + 1);
        assert_non_null(big);
        memset(big, '\n', CONFIG_FILE_MAX + 1);
        assert_int_equal(config_parse_string(big, CONFIG_FILE_MAX + 1, "big.conf", &c, full, sizeof(full)), -EFBIG);
        assert_string_equal(full, "big.conf: too large (more than 1 MiB)");
        /* Exactly at the limit is fine, and comment lines may be longer than CONFIG_LINE_MAX. */
        memset(big, ';', CONFIG_FILE_MAX);
        big[CONFIG_FILE_MAX - 1] = '\n';
        assert_int_equal(config_parse_string(big, CONFIG_FILE_MAX, "big.conf", &c, full, sizeof(full)), 0);
        config_done(&c);
}

static void write_file(const char *path, const char *text, size_t len) {
        int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, text, len), (ssize_t) len);
        close(fd);
}

static void test_load(void **state) {
        (void) state;
        char dir[] = "/tmp/test-config-XXXXXX";
        char err[CONFIG_ERR_MAX], path[256], expect[512];
        DaemonConfig c;

        assert_non_null(mkdtemp(dir));

        snprintf(path, sizeof(path), "%s/missing.conf", dir);
        assert_int_equal(config_load(path, &c, err, sizeof(err)), -ENOENT);
        snprintf(expect, sizeof(expect), "%s: cannot open: %s", path, strerror(ENOENT));
        assert_string_equal(err, expect);

        assert_int_equal(config_load(dir, &c, err, sizeof(err)), -EINVAL);
        snprintf(expect, sizeof(expect), "%s: not a regular file", dir);
        assert_string_equal(err, expect);

        snprintf(path, sizeof(path), "%s/ok.conf", dir);
        static const char ok[] = "[park]\nsize = 256M\n";
        write_file(path, ok, strlen(ok));
        assert_int_equal(config_load(path, &c, err, sizeof(err)), 0);
        assert_int_equal(c.park.size, 256 * MiB);
        config_done(&c);

        static const char bad[] = "[park]\n\nsize = 0.5M\n";
        write_file(path, bad, strlen(bad));
        assert_int_equal(config_load(path, &c, err, sizeof(err)), -EINVAL);
        snprintf(expect, sizeof(expect), "%s:3: [park] size: \"0.5M\" is out of range (1M..4194304T)", path);
        assert_string_equal(err, expect);

        /* A file one byte over the limit. */
        _cleanup_free_ char *big = malloc(CONFIG_FILE_MAX + 1);
        assert_non_null(big);
        memset(big, '\n', CONFIG_FILE_MAX + 1);
        write_file(path, big, CONFIG_FILE_MAX + 1);
        assert_int_equal(config_load(path, &c, err, sizeof(err)), -EFBIG);
        write_file(path, big, CONFIG_FILE_MAX);
        assert_int_equal(config_load(path, &c, err, sizeof(err)), 0);
        config_done(&c);

        assert_int_equal(unlink(path), 0);
        assert_int_equal(rmdir(dir), 0);
}

/* The keys of a dump, in order: "[section]" and "key = value" lines, as (section, line) pairs
 * joined into "section.key = value". */
static char **dump_keys(const char *dump, size_t *ret_n) {
        char **keys = NULL, section[32] = "";
        size_t n = 0;
        for (const char *p = dump; *p;) {
                const char *nl = strchr(p, '\n');
                size_t len = nl ? (size_t) (nl - p) : strlen(p);
                if (len > 2 && p[0] == '[')
                        snprintf(section, sizeof(section), "%.*s", (int) (len - 2), p + 1);
                else if (len > 0) {
                        keys = realloc(keys, (n + 1) * sizeof(char *));
                        assert_non_null(keys);
                        assert_true(asprintf(&keys[n++], "%s.%.*s", section, (int) len, p) >= 0);
                }
                p += len + (nl ? 1 : 0);
        }
        *ret_n = n;
        return keys;
}

/* packaging/ballastd.conf lists every key, commented out ("#key = default"): with the comment
 * marks removed it must parse to exactly the defaults, and name every key. */
static void test_example_config(void **state) {
        (void) state;
        _cleanup_free_ char *path = source_path("packaging/ballastd.conf");
        size_t len;
        _cleanup_free_ char *text = read_all(path, &len);
        assert_non_null(text);

        DaemonConfig c;
        char err[CONFIG_ERR_MAX];
        /* As shipped: every key commented out. */
        assert_int_equal(config_parse_string(text, len, "ballastd.conf", &c, err, sizeof(err)), 0);
        _cleanup_free_ char *shipped = dump_to_string(&c);
        config_done(&c);

        /* Uncommented: "#key" → "key" (descriptions are "# text" and stay comments). */
        _cleanup_free_ char *un = malloc(len + 1);
        assert_non_null(un);
        size_t m = 0, uncommented = 0;
        for (size_t i = 0; i < len; i++) {
                bool bol = i == 0 || text[i - 1] == '\n';
                if (bol && text[i] == '#' && i + 1 < len && text[i + 1] >= 'a' && text[i + 1] <= 'z') {
                        uncommented++;
                        continue;
                }
                un[m++] = text[i];
        }
        int r = config_parse_string(un, m, "ballastd.conf (uncommented)", &c, err, sizeof(err));
        if (r < 0)
                fail_msg("%s", err);
        _cleanup_free_ char *all = dump_to_string(&c);
        config_done(&c);

        config_init_default(&c);
        _cleanup_free_ char *defaults = dump_to_string(&c);
        assert_string_equal(shipped, defaults);
        assert_string_equal(all, defaults);

        size_t nkeys;
        char **keys = dump_keys(defaults, &nkeys);
        if (uncommented != nkeys)
                fail_msg("packaging/ballastd.conf has %zu keys, the configuration %zu", uncommented, nkeys);
        for (size_t i = 0; i < nkeys; i++)
                free(keys[i]);
        free(keys);
}

/* docs/config.md describes every key, with its default as config_dump() prints it. */
static void test_docs(void **state) {
        (void) state;
        _cleanup_free_ char *path = source_path("docs/config.md");
        size_t len;
        _cleanup_free_ char *doc = read_all(path, &len);
        assert_non_null(doc);

        DaemonConfig c;
        config_init_default(&c);
        _cleanup_free_ char *defaults = dump_to_string(&c);
        size_t n;
        char **keys = dump_keys(defaults, &n);
        unsigned missing = 0;
        for (size_t i = 0; i < n; i++) {
                /* "section.key = value" → look for "| `key` |" after "## [section]" and for "`value`". */
                char *dot = strchr(keys[i], '.'), *eq = strstr(keys[i], " =");
                assert_non_null(dot);
                assert_non_null(eq);
                _cleanup_free_ char *heading = NULL, *cell = NULL, *value = NULL;
                assert_true(asprintf(&heading, "## [%.*s]", (int) (dot - keys[i]), keys[i]) >= 0);
                assert_true(asprintf(&cell, "| `%.*s` |", (int) (eq - dot - 1), dot + 1) >= 0);
                const char *v = eq[2] == ' ' ? eq + 3 : "";
                assert_true(asprintf(&value, "`%s`", v) >= 0);
                const char *sec = strstr(doc, heading);
                const char *next = sec ? strstr(sec + 1, "\n## ") : NULL;
                const char *row = sec ? strstr(sec, cell) : NULL;
                if (!row || (next && row > next)) {
                        print_error("docs/config.md: no row %s under %s\n", cell, heading);
                        missing++;
                } else if (v[0]) {
                        const char *eol = strchr(row, '\n');
                        const char *hit = strstr(row, value);
                        if (!hit || (eol && hit > eol)) {
                                print_error("docs/config.md: row %s does not give the default %s\n", cell, value);
                                missing++;
                        }
                }
                free(keys[i]);
        }
        free(keys);
        assert_int_equal(missing, 0);
}

static void test_enums(void **state) {
        (void) state;
        for (int i = 0; i < _CONFIG_SCOPE_MAX; i++)
                assert_int_equal(config_scope_from_string(config_scope_to_string((ConfigScope) i)), i);
        for (int i = 0; i < _CONFIG_PSI_MAX; i++)
                assert_int_equal(config_psi_from_string(config_psi_to_string((ConfigPsi) i)), i);
        static const int levels[] = { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_NOTICE, LOG_LEVEL_WARNING,
                                      LOG_LEVEL_ERR };
        for (size_t i = 0; i < ELEMENTSOF(levels); i++)
                assert_int_equal(config_log_level_from_string(config_log_level_to_string(levels[i])), levels[i]);
        assert_null(config_scope_to_string(_CONFIG_SCOPE_MAX));
        assert_null(config_psi_to_string(_CONFIG_PSI_INVALID));
        assert_null(config_log_level_to_string(0));
        assert_int_equal(config_scope_from_string("Host"), -EINVAL);
        assert_int_equal(config_psi_from_string(NULL), -EINVAL);
        assert_int_equal(config_log_level_from_string("warn"), -EINVAL);
}

typedef struct DiffSeen {
        char lines[8][160];
        int n;
} DiffSeen;

static void on_diff(const char *section, const char *key, const char *old_value, const char *new_value,
                    void *userdata) {
        DiffSeen *d = userdata;
        assert_true(d->n < 8);
        snprintf(d->lines[d->n++], sizeof d->lines[0], "[%s] %s: %s -> %s", section, key, old_value, new_value);
}

/* config_diff() (what a reload reports): the keys whose canonical values differ, in dump order, an
 * unset optional key as "". */
static void test_diff(void **state) {
        (void) state;
        static const char a_text[] = "[policy]\nlow_watermark = 10%\n[log]\nlevel = info\n";
        static const char b_text[] = "[api]\nwrite_group = 0\n[policy]\nlow_watermark = 10.00%\n"
                                     "high_watermark = 20%\n[driver]\nop_timeout = 5000ms\n[log]\nlevel = debug\n";
        DaemonConfig a, b;
        char err[CONFIG_ERR_MAX];
        assert_int_equal(config_parse_string(a_text, strlen(a_text), "a", &a, err, sizeof err), 0);
        assert_int_equal(config_parse_string(b_text, strlen(b_text), "b", &b, err, sizeof err), 0);
        assert_int_equal(config_diff(&a, &a, NULL, NULL), 0);
        DiffSeen d = {};
        /* 10% = 10.00% and 5s = 5000ms: the same values written differently are no change. */
        assert_int_equal(config_diff(&a, &b, on_diff, &d), 3);
        assert_int_equal(d.n, 3);
        assert_string_equal(d.lines[0], "[api] write_group:  -> 0");
        assert_string_equal(d.lines[1], "[policy] high_watermark: 15% -> 20%");
        assert_string_equal(d.lines[2], "[log] level: info -> debug");
        config_done(&a);
        config_done(&b);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_diff),         cmocka_unit_test(test_golden),
                cmocka_unit_test(test_percent),      cmocka_unit_test(test_defaults),
                cmocka_unit_test(test_typed_fields), cmocka_unit_test(test_failure_contract),
                cmocka_unit_test(test_load),         cmocka_unit_test(test_example_config),
                cmocka_unit_test(test_docs),         cmocka_unit_test(test_enums),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
