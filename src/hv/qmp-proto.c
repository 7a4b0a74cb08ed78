/* SPDX-License-Identifier: MIT */
#include "hv/qmp-proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "shared/macro.h"

int qmp_next_line(const char *buf, size_t len, size_t max, size_t *ret_line_len, size_t *ret_consumed) {
        size_t scan = MIN(len, max);
        const char *nl = memchr(buf, '\n', scan);
        if (!nl) {
                if (len >= max)
                        return -EMSGSIZE;
                return 0;
        }
        size_t n = (size_t) (nl - buf);
        *ret_consumed = n + 1;
        if (n > 0 && buf[n - 1] == '\r')
                n--;
        *ret_line_len = n;
        return 1;
}

/* The end of the JSON string starting at s[i] ('"'), or len when it does not end; *escaped says
 * whether it holds a backslash. */
static size_t string_end(const char *s, size_t len, size_t i, bool *escaped) {
        for (i++; i < len; i++) {
                if (s[i] == '\\') {
                        *escaped = true;
                        i++;
                } else if (s[i] == '"')
                        return i;
        }
        return len;
}

static bool key_is(const char *s, size_t a, size_t b, const char *k) {
        size_t n = strlen(k);
        return b - a - 1 == n && memcmp(s + a + 1, k, n) == 0;
}

bool qmp_line_is_event(const char *s, size_t len) {
        size_t i = 0, depth = 0;
        bool event = false, key_next = false;

        while (i < len && (s[i] == ' ' || s[i] == '\t'))
                i++;
        if (i >= len || s[i] != '{')
                return false;
        for (; i < len; i++) {
                char c = s[i];
                if (c == '"') {
                        bool escaped = false;
                        size_t e = string_end(s, len, i, &escaped);
                        if (e >= len)
                                return false;
                        if (depth == 1 && key_next) {
                                if (escaped || key_is(s, i, e, "QMP") || key_is(s, i, e, "return") ||
                                    key_is(s, i, e, "error"))
                                        return false;
                                event = event || key_is(s, i, e, "event");
                                key_next = false;
                        }
                        i = e;
                } else if (c == '{' || c == '[') {
                        depth++;
                        key_next = depth == 1;
                } else if (c == '}' || c == ']') {
                        if (depth == 0 || --depth == 0)
                                return event && depth == 0 && c == '}';
                } else if (c == ',' && depth == 1)
                        key_next = true;
        }
        return false;
}

size_t qmp_clamp_big_ints(char *buf, size_t len) {
        static const char int64_max[] = "9223372036854775807";
        static const char int64_min_magnitude[] = "9223372036854775808";
        size_t rewritten = 0;
        bool in_string = false;

        for (size_t i = 0; i < len; i++) {
                char c = buf[i];
                if (in_string) {
                        if (c == '\\')
                                i++; /* skip the escaped byte, whatever it is */
                        else if (c == '"')
                                in_string = false;
                        continue;
                }
                if (c == '"') {
                        in_string = true;
                        continue;
                }
                if (c != '-' && (c < '0' || c > '9'))
                        continue;
                /* A number token: optional '-', digits, optional fraction/exponent. */
                size_t start = i, d0 = (c == '-') ? i + 1 : i, j = d0;
                while (j < len && buf[j] >= '0' && buf[j] <= '9')
                        j++;
                size_t ndigits = j - d0;
                bool is_int = !(j < len && (buf[j] == '.' || buf[j] == 'e' || buf[j] == 'E'));
                if (is_int && ndigits > 0) {
                        /* Skip leading zeros for the magnitude comparison (JSON forbids them, but
                         * the parser will say so, not us). */
                        size_t k = d0;
                        while (k + 1 < j && buf[k] == '0')
                                k++;
                        size_t sig = j - k;
                        /* int64 holds magnitudes up to 2^63 - 1, and 2^63 when negative. */
                        const char *limit = c == '-' ? int64_min_magnitude : int64_max;
                        bool too_big = sig > 19 || (sig == 19 && memcmp(buf + k, limit, 19) > 0);
                        if (too_big) {
                                buf[start] = '-';
                                buf[start + 1] = '1';
                                memset(buf + start + 2, ' ', j - start - 2);
                                rewritten++;
                        }
                }
                i = j > i ? j - 1 : i;
        }
        return rewritten;
}

void qmp_msg_done(QmpMsg *m) {
        if (m->root)
                json_decref(m->root);
        *m = (QmpMsg){ .type = _QMP_MSG_TYPE_INVALID };
}

static int fail(char *err, size_t errlen, const char *fmt, ...) _printf_(3, 4);
static int fail(char *err, size_t errlen, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        return -EBADMSG;
}

int qmp_msg_parse(const char *line, size_t len, QmpMsg *ret, char *err, size_t errlen) {
        QmpMsg m = { .type = _QMP_MSG_TYPE_INVALID, .version = { -1, -1, -1 } };

        if (len > QMP_MAX_MESSAGE)
                return fail(err, errlen, "QMP message too long (%s)", "over 1 MiB");

        _cleanup_free_ char *copy = malloc(len + 1);
        if (!copy)
                return -ENOMEM;
        memcpy(copy, line, len);
        copy[len] = '\0';
        qmp_clamp_big_ints(copy, len);

        json_error_t je;
        m.root = json_loadb(copy, len, JSON_REJECT_DUPLICATES, &je);
        if (!m.root)
                return fail(err, errlen, "malformed QMP message: %s", je.text);
        if (!json_is_object(m.root)) {
                qmp_msg_done(&m);
                return fail(err, errlen, "QMP message is not a JSON object%s", "");
        }

        json_t *id = json_object_get(m.root, "id");
        if (id) {
                m.id_present = true;
                if (json_is_integer(id) && json_integer_value(id) >= 0) {
                        m.id_is_ours = true;
                        m.id = (uint64_t) json_integer_value(id);
                }
        }

        json_t *v;
        if ((v = json_object_get(m.root, "QMP"))) {
                if (!json_is_object(v)) {
                        qmp_msg_done(&m);
                        return fail(err, errlen, "QMP greeting: %s", "\"QMP\" is not an object");
                }
                m.type = QMP_MSG_GREETING;
                json_t *q = json_object_get(json_object_get(v, "version"), "qemu");
                static const char *const keys[3] = { "major", "minor", "micro" };
                for (size_t i = 0; i < 3; i++) {
                        json_t *n = json_object_get(q, keys[i]);
                        if (json_is_integer(n) && json_integer_value(n) >= 0 && json_integer_value(n) < 100000)
                                m.version[i] = (int) json_integer_value(n);
                }
                m.package = json_string_value(json_object_get(json_object_get(v, "version"), "package"));
        } else if ((v = json_object_get(m.root, "return"))) {
                m.type = QMP_MSG_RETURN;
                m.value = v;
        } else if ((v = json_object_get(m.root, "error"))) {
                m.type = QMP_MSG_ERROR;
                m.error_class = json_string_value(json_object_get(v, "class"));
                m.error_desc = json_string_value(json_object_get(v, "desc"));
                if (!json_is_object(v) || !m.error_class) {
                        qmp_msg_done(&m);
                        return fail(err, errlen, "QMP error reply without %s", "a class");
                }
                if (!m.error_desc)
                        m.error_desc = "";
        } else if ((v = json_object_get(m.root, "event"))) {
                m.type = QMP_MSG_EVENT;
                m.event = json_string_value(v);
                if (!m.event) {
                        qmp_msg_done(&m);
                        return fail(err, errlen, "QMP event name is %s", "not a string");
                }
                m.value = json_object_get(m.root, "data");
                json_t *ts = json_object_get(m.root, "timestamp");
                json_t *s = json_object_get(ts, "seconds"), *us = json_object_get(ts, "microseconds");
                if (json_is_integer(s) && json_is_integer(us) && json_integer_value(s) >= 0 &&
                    json_integer_value(s) < INT64_C(1) << 40 && json_integer_value(us) >= 0 &&
                    json_integer_value(us) < 1000000)
                        m.event_time_us =
                                (uint64_t) json_integer_value(s) * 1000000 + (uint64_t) json_integer_value(us);
        } else {
                qmp_msg_done(&m);
                return fail(err, errlen, "unrecognised QMP message (no %s member)", "QMP/return/error/event");
        }

        *ret = m;
        return 0;
}

int qmp_parse_guest_stats(json_t *value, HvStats *ret, char *err, size_t errlen) {
        static const struct {
                const char *key;
                size_t offset;
        } fields[] = {
                { "stat-swap-in", offsetof(HvStats, swap_in) },
                { "stat-swap-out", offsetof(HvStats, swap_out) },
                { "stat-major-faults", offsetof(HvStats, major_faults) },
                { "stat-minor-faults", offsetof(HvStats, minor_faults) },
                { "stat-free-memory", offsetof(HvStats, free) },
                { "stat-total-memory", offsetof(HvStats, total) },
                { "stat-available-memory", offsetof(HvStats, available) },
                { "stat-disk-caches", offsetof(HvStats, caches) },
                { "stat-oom-kills", offsetof(HvStats, oom_kills) },
        };
        HvStats s;
        hv_stats_init(&s);

        json_t *stats = json_object_get(value, "stats");
        if (!json_is_object(stats)) {
                snprintf(err, errlen, "guest-stats reply has no \"stats\" object");
                return -EBADMSG;
        }
        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                json_t *v = json_object_get(stats, fields[i].key);
                /* Unset values were clamped to -1 by qmp_clamp_big_ints(); anything negative is unset. */
                if (json_is_integer(v) && json_integer_value(v) >= 0)
                        *(uint64_t *) ((char *) &s + fields[i].offset) = (uint64_t) json_integer_value(v);
        }
        json_t *lu = json_object_get(value, "last-update");
        if (json_is_integer(lu) && json_integer_value(lu) > 0)
                s.last_update = (uint64_t) json_integer_value(lu);
        *ret = s;
        return 0;
}

char *qmp_format_command(const char *name, json_t *args, uint64_t id) {
        json_t *cmd = json_object();
        if (!cmd) {
                json_decref(args);
                return NULL;
        }
        json_object_set_new(cmd, "execute", json_string(name));
        if (args)
                json_object_set_new(cmd, "arguments", args);
        json_object_set_new(cmd, "id", json_integer((json_int_t) id));
        char *s = json_dumps(cmd, JSON_COMPACT);
        json_decref(cmd);
        if (!s)
                return NULL;
        size_t n = strlen(s);
        char *line = realloc(s, n + 2);
        if (!line) {
                free(s);
                return NULL;
        }
        line[n] = '\n';
        line[n + 1] = '\0';
        return line;
}
