/* SPDX-License-Identifier: MIT */
#include "cli/cli-util.h"

#include <errno.h>
#include <inttypes.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "shared/strutil.h"
#include "shared/unix-sock.h"

bool arg_json = false;
const char *cli_command = NULL;
static char *capture_buf = NULL;
static size_t capture_len = 0;

void cli_capture_errors(char *buf, size_t len) {
        capture_buf = len > 0 ? buf : NULL;
        capture_len = len;
}

static int vreport(int code, const char *fmt, va_list ap) _printf_(2, 0);
static int vreport(int code, const char *fmt, va_list ap) {
        /* Messages quote the daemon, which quotes hypervisors: no control character reaches the
         * terminal. */
        _cleanup_free_ char *s = NULL;
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        if (s)
                cli_text_sanitize(s);
        if (capture_buf)
                snprintf(capture_buf, capture_len, "%s", s ?: fmt);
        else
                fprintf(stderr, "ballastctl: %s\n", s ?: fmt);
        return code;
}

char *cli_text_sanitize(char *s) {
        size_t n = strlen(s);
        utf8_sanitize(s, n + 1, s, n, 0);
        return s;
}

void cli_json_sanitize(json_t *j) {
        const char *key;
        json_t *v;
        size_t i;
        if (json_is_string(j)) {
                size_t n = json_string_length(j);
                _cleanup_free_ char *s = malloc(n + 1);
                if (!s)
                        return;
                size_t k = utf8_sanitize(s, n + 1, json_string_value(j), n, 0);
                if (k != n || memcmp(s, json_string_value(j), n) != 0)
                        (void) json_string_setn(j, s, k);
        } else if (json_is_object(j)) {
                json_object_foreach(j, key, v) {
                        cli_json_sanitize(v);
                }
        } else if (json_is_array(j)) {
                json_array_foreach(j, i, v) {
                        cli_json_sanitize(v);
                }
        }
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
        if (!capture_buf)
                fprintf(stderr, "Try 'ballastctl %s%s--help'.\n", cli_command ?: "", cli_command ? " " : "");
        return EXIT_USAGE;
}

void cli_set_command(char **argv, char *prog) {
        argv[0] = prog;
        cli_command = strncmp(prog, "ballastctl ", 11) == 0 ? prog + 11 : prog;
}

int cli_subcommand(int *argc, char ***argv, const char *group, const char *usage, const char **ret_verb) {
        if (*argc < 2 || strcmp((*argv)[1], "--help") == 0 || strcmp((*argv)[1], "-h") == 0) {
                fputs(usage, *argc < 2 ? stderr : stdout);
                return *argc < 2 ? EXIT_USAGE : EXIT_OK;
        }
        *ret_verb = (*argv)[1];
        (*argc)--;
        (*argv)++;
        optind = 1;
        static char prog[96];
        snprintf(prog, sizeof prog, "ballastctl %.20s %.40s", group, *ret_verb);
        cli_set_command(*argv, prog);
        return -1;
}

int cli_common_option(int c, const char *usage) {
        if (c == 'h') {
                fputs(usage, stdout);
                return EXIT_OK;
        }
        fprintf(stderr, "Try 'ballastctl %s%s--help'.\n", cli_command ?: "", cli_command ? " " : "");
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

int cli_parse_time(const char *s, uint64_t *ret) {
        struct tm tm = { .tm_isdst = -1 };
        const char *p = strptime(s, "%Y-%m-%d", &tm);
        if (!p)
                return -EINVAL;
        uint64_t frac = 0;
        bool utc = false;
        long off = 0;
        if (*p == 'T' || *p == ' ') {
                p = strptime(p + 1, "%H:%M:%S", &tm);
                if (!p)
                        return -EINVAL;
                if (*p == '.') {
                        uint64_t scale = USEC_PER_SEC;
                        for (p++; *p >= '0' && *p <= '9'; p++)
                                if (scale > 1) {
                                        scale /= 10;
                                        frac += (uint64_t) (*p - '0') * scale;
                                }
                }
                if (*p == 'Z' || *p == 'z') {
                        utc = true;
                        p++;
                } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
                        int h, m;
                        if (sscanf(p + 1, "%2d:%2d", &h, &m) != 2 || h > 23 || m > 59)
                                return -EINVAL;
                        off = (p[0] == '-' ? -1 : 1) * (h * 3600L + m * 60L);
                        utc = true;
                        p += 6;
                }
        }
        if (*p)
                return -EINVAL;
        time_t t = utc ? timegm(&tm) - off : mktime(&tm);
        if (t < 0)
                return -EINVAL;
        *ret = (uint64_t) t * USEC_PER_SEC + frac;
        return 0;
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

/* Sizes in answers are integers; a real (or a negative integer) is shown as what it is. */
static bool json_size_value(json_t *v, uint64_t *ret) {
        if (json_is_integer(v) && json_integer_value(v) >= 0) {
                *ret = (uint64_t) json_integer_value(v);
                return true;
        }
        return false;
}

const char *cli_json_size(char *buf, size_t len, json_t *v) {
        uint64_t b;
        if (json_size_value(v, &b))
                return format_size(buf, len, b);
        if (json_is_number(v)) {
                snprintf(buf, len, "%g", json_number_value(v));
                return buf;
        }
        return "-";
}

const char *cli_json_size_compact(char *buf, size_t len, json_t *v) {
        uint64_t b;
        if (json_size_value(v, &b))
                return cli_format_size_compact(buf, len, b);
        return cli_json_size(buf, len, v);
}

const char *cli_json_str(json_t *v) {
        const char *s = json_string_value(v);
        return s && s[0] ? s : "-";
}

void cli_field(const char *key, const char *fmt, ...) {
        va_list ap;
        _cleanup_free_ char *k = strdup(key), *s = NULL;
        int n = k && k[0] ? printf("%s:", cli_text_sanitize(k)) : 0; /* "": a continuation line */
        printf("%*s", n < 18 ? 18 - n : 1, "");
        va_start(ap, fmt);
        if (vasprintf(&s, fmt, ap) < 0)
                s = NULL;
        va_end(ap);
        puts(s ? cli_text_sanitize(s) : "?");
}

const char *cli_format_size_compact(char *buf, size_t len, uint64_t bytes) {
        static const char unit[] = "BKMGTPE";
        unsigned u = 0;
        while (u + 1 < sizeof(unit) - 1 && bytes >= (UINT64_C(1) << (10 * (u + 1))))
                u++;
        uint64_t scale = UINT64_C(1) << (10 * u);
        if (bytes % scale == 0) {
                snprintf(buf, len, "%" PRIu64 "%c", bytes / scale, unit[u]);
                return buf;
        }
        char num[32];
        snprintf(num, sizeof(num), "%.2f", (double) bytes / (double) scale);
        size_t n = strlen(num);
        while (n > 0 && num[n - 1] == '0')
                num[--n] = '\0';
        if (n > 0 && num[n - 1] == '.')
                num[--n] = '\0';
        snprintf(buf, len, "%s%c", num, unit[u]);
        return buf;
}

const char *cli_format_seconds(char *buf, size_t len, double s) {
        uint64_t t = 0;
        if (s > 0 && s < 1e15) { /* also false for NaN */
                t = (uint64_t) s;
                if ((double) t < s)
                        t++;
        }
        if (t >= 3600)
                snprintf(buf, len, "%" PRIu64 "h%" PRIu64 "m%" PRIu64 "s", t / 3600, t / 60 % 60, t % 60);
        else if (t >= 60)
                snprintf(buf, len, "%" PRIu64 "m%" PRIu64 "s", t / 60, t % 60);
        else
                snprintf(buf, len, "%" PRIu64 "s", t);
        return buf;
}

#define CLI_TABLE_COLS_MAX 64

struct CliTable {
        size_t ncols;
        uint64_t right;
        size_t nrows, allocated;
        char **cells; /* nrows × ncols */
        /* cli_table_print_new(): the widths so far, and whether the header was printed. */
        size_t width[CLI_TABLE_COLS_MAX];
        bool header_printed;
};

static int table_add_va(CliTable *t, va_list ap) {
        if (t->nrows == t->allocated) {
                size_t n = t->allocated ? t->allocated * 2 : 16;
                char **c = reallocarray(t->cells, n * t->ncols, sizeof(char *));
                if (!c)
                        return -ENOMEM;
                t->cells = c;
                t->allocated = n;
        }
        char **row = t->cells + t->nrows * t->ncols;
        for (size_t i = 0; i < t->ncols; i++) {
                const char *s = va_arg(ap, const char *);
                row[i] = strdup(s ?: "-");
                if (!row[i]) {
                        while (i > 0)
                                free(row[--i]);
                        return -ENOMEM;
                }
                cli_text_sanitize(row[i]);
        }
        t->nrows++;
        return 0;
}

CliTable *cli_table_new(size_t ncols, uint64_t right_aligned, ...) {
        CliTable *t = calloc(1, sizeof(*t));
        if (!t)
                return NULL;
        t->ncols = ncols;
        t->right = right_aligned;
        va_list ap;
        va_start(ap, right_aligned);
        int r = table_add_va(t, ap);
        va_end(ap);
        return r < 0 ? cli_table_free(t) : t;
}

int cli_table_add(CliTable *t, ...) {
        va_list ap;
        va_start(ap, t);
        int r = table_add_va(t, ap);
        va_end(ap);
        return r;
}

static void table_print_rows(const CliTable *t, FILE *f, const size_t *width, size_t from) {
        size_t ncols = MIN(t->ncols, (size_t) CLI_TABLE_COLS_MAX);
        for (size_t r = from; r < t->nrows; r++) {
                for (size_t c = 0; c < ncols; c++) {
                        const char *s = t->cells[r * t->ncols + c];
                        bool right = c < 64 && (t->right >> c & 1);
                        bool last = c + 1 == ncols;
                        fprintf(f, "%s%*s", c ? "  " : "", right ? (int) width[c] : last ? 0 : -(int) width[c], s);
                }
                fputc('\n', f);
        }
}

static void table_widths(const CliTable *t, size_t *width) {
        size_t ncols = MIN(t->ncols, (size_t) CLI_TABLE_COLS_MAX);
        for (size_t r = 0; r < t->nrows; r++)
                for (size_t c = 0; c < ncols; c++)
                        width[c] = MAX(width[c], strlen(t->cells[r * t->ncols + c]));
}

void cli_table_print(const CliTable *t, FILE *f) {
        size_t width[CLI_TABLE_COLS_MAX] = { 0 };
        table_widths(t, width);
        table_print_rows(t, f, width, 0);
}

void cli_table_print_new(CliTable *t, FILE *f) {
        table_widths(t, t->width);
        table_print_rows(t, f, t->width, t->header_printed ? 1 : 0);
        t->header_printed = true;
        for (size_t i = t->ncols; i < t->nrows * t->ncols; i++)
                free(t->cells[i]);
        t->nrows = MIN(t->nrows, (size_t) 1);
}

CliTable *cli_table_free(CliTable *t) {
        if (!t)
                return NULL;
        for (size_t i = 0; i < t->nrows * t->ncols; i++)
                free(t->cells[i]);
        free(t->cells);
        free(t);
        return NULL;
}
