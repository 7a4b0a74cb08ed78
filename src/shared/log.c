/* SPDX-License-Identifier: MIT */
#include "shared/log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "shared/strutil.h"

static int max_level = LOG_LEVEL_INFO;
static const char *log_prefix = NULL;
static log_sink_fn log_sink = NULL;

void log_set_sink(log_sink_fn sink) {
        log_sink = sink;
}

const char *log_message_vm(const char *msg, char *buf, size_t len) {
        if (strncmp(msg, "VM ", 3) != 0)
                return NULL;
        size_t n = strcspn(msg + 3, " :,");
        if (n == 0 || n >= len)
                return NULL;
        memcpy(buf, msg + 3, n);
        buf[n] = '\0';
        return buf;
}

void log_set_max_level(int level) {
        max_level = level;
}

int log_get_max_level(void) {
        return max_level;
}

int log_set_max_level_from_string(const char *s) {
        static const struct {
                const char *name;
                int level;
        } table[] = {
                { "error", LOG_LEVEL_ERR }, { "warning", LOG_LEVEL_WARNING }, { "notice", LOG_LEVEL_NOTICE },
                { "info", LOG_LEVEL_INFO }, { "debug", LOG_LEVEL_DEBUG },
        };
        for (size_t i = 0; i < ELEMENTSOF(table); i++)
                if (strcasecmp(s, table[i].name) == 0) {
                        max_level = table[i].level;
                        return 0;
                }
        return -EINVAL;
}

void log_set_prefix(const char *prefix) {
        log_prefix = prefix;
}

int log_internal(int level, int error, const char *file, int line, const char *fmt, ...) {
        int e = error < 0 ? -error : error;

        if (level > max_level)
                return -e;

        /* Expand %m ourselves: errno may no longer hold `error` here. */
        char fmtbuf[1024];
        const char *msg = e ? strerror(e) : "Success";
        size_t o = 0;
        for (const char *p = fmt; *p && o + 1 < sizeof(fmtbuf); p++) {
                if (p[0] == '%' && p[1] == 'm') {
                        for (const char *m = msg; *m && o + 2 < sizeof(fmtbuf); m++) {
                                if (*m == '%')
                                        fmtbuf[o++] = '%';
                                fmtbuf[o++] = *m;
                        }
                        p++;
                } else if (p[0] == '%' && p[1] == '%') {
                        fmtbuf[o++] = '%';
                        if (o + 1 < sizeof(fmtbuf))
                                fmtbuf[o++] = '%';
                        p++;
                } else
                        fmtbuf[o++] = *p;
        }
        fmtbuf[o] = '\0';

        char text[2048];
        va_list ap;
        va_start(ap, fmt);
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
        vsnprintf(text, sizeof(text), fmtbuf, ap);
#pragma GCC diagnostic pop
        va_end(ap);

        /* Messages quote hypervisors, guests and API clients. One line per event, so journald
         * sees one record: newlines fold into spaces; ESC and every other control character, and
         * bytes that are not UTF-8, are written as \xHH so nobody forges log lines or terminal
         * sequences. */
        char safe[2 * sizeof(text)];
        utf8_sanitize(safe, sizeof(safe), text, strlen(text), UTF8_ESCAPE);

        if (log_sink) {
                char vm[128];
                if (log_sink(level, e, file, line, log_message_vm(safe, vm, sizeof vm), safe) >= 0)
                        return -e;
        }
        if (getenv("JOURNAL_STREAM"))
                fprintf(stderr, "<%d>%s%s%s\n", level, log_prefix ?: "", log_prefix ? ": " : "", safe);
        else if (level == LOG_LEVEL_DEBUG)
                fprintf(stderr, "%s%sdebug: %s (%s:%d)\n", log_prefix ?: "", log_prefix ? ": " : "", safe, file, line);
        else
                fprintf(stderr, "%s%s%s\n", log_prefix ?: "", log_prefix ? ": " : "", safe);
        return -e;
}
