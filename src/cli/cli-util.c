/* SPDX-License-Identifier: MIT */
#include "cli/cli-util.h"

#include <errno.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "shared/strutil.h"
#include "shared/unix-sock.h"

bool arg_json = false;

static int vreport(int code, const char *fmt, va_list ap) _printf_(2, 0);
static int vreport(int code, const char *fmt, va_list ap) {
        fputs("ballastctl: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        return code;
}

int cli_error(int code, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vreport(code, fmt, ap);
        va_end(ap);
        return code;
}

int cli_usage_error(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vreport(EXIT_USAGE, fmt, ap);
        va_end(ap);
        fputs("Try 'ballastctl --help'.\n", stderr);
        return EXIT_USAGE;
}

int cli_parse_size(const char *opt, const char *s, uint64_t *ret) {
        int r = parse_size(s, ret);
        if (r < 0)
                return cli_usage_error("invalid size for %s: '%s' (use e.g. 512M, 1G, 268435456)", opt, s);
        return 0;
}

int cli_parse_duration(const char *opt, const char *s, usec_t *ret) {
        int r = parse_duration(s, ret);
        if (r < 0)
                return cli_usage_error("invalid duration for %s: '%s' (use e.g. 500ms, 5s, 2m)", opt, s);
        return 0;
}

int cli_parse_bool(const char *opt, const char *s, bool *ret) {
        int r = parse_boolean(s, ret);
        if (r < 0)
                return cli_usage_error("invalid value for %s: '%s' (use on or off)", opt, s);
        return 0;
}

int cli_parse_uid(const char *opt, const char *s, uid_t *ret) {
        uint64_t v;
        if (strcmp(s, "any") == 0) {
                *ret = UID_ANY;
                return 0;
        }
        if (parse_u64(s, &v) == 0 && v < UINT32_MAX) {
                *ret = (uid_t) v;
                return 0;
        }
        struct passwd *pw = getpwnam(s);
        if (pw) {
                *ret = pw->pw_uid;
                return 0;
        }
        return cli_usage_error("invalid uid for %s: '%s' (a number, a user name, or 'any')", opt, s);
}

void cli_print_json(json_t *j) {
        if (!j)
                return;
        json_dumpf(j, stdout, JSON_INDENT(2) | JSON_SORT_KEYS);
        fputc('\n', stdout);
        json_decref(j);
}

bool cli_stderr_tty(void) {
        return isatty(STDERR_FILENO) == 1;
}
