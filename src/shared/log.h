/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <stdarg.h>

#include "shared/macro.h"

/* One line per event on stderr; with JOURNAL_STREAM set, lines carry <N> syslog priority prefixes. */
enum {
        LOG_LEVEL_ERR = 3,
        LOG_LEVEL_WARNING = 4,
        LOG_LEVEL_NOTICE = 5,
        LOG_LEVEL_INFO = 6,
        LOG_LEVEL_DEBUG = 7,
};

void log_set_max_level(int level);
int log_get_max_level(void);
int log_set_max_level_from_string(const char *s);
void log_set_prefix(const char *prefix);

/* Logs and returns -abs(error), so callers can `return log_error_errno(r, ...)`.
 * %m in the format expands to strerror(error). */
int log_internal(int level, int error, const char *file, int line, const char *fmt, ...) _printf_(5, 6);

#define log_full_errno(level, error, ...) log_internal((level), (error), __FILE__, __LINE__, __VA_ARGS__)
#define log_debug(...)                    log_full_errno(LOG_LEVEL_DEBUG, 0, __VA_ARGS__)
#define log_info(...)                     log_full_errno(LOG_LEVEL_INFO, 0, __VA_ARGS__)
#define log_notice(...)                   log_full_errno(LOG_LEVEL_NOTICE, 0, __VA_ARGS__)
#define log_warning(...)                  log_full_errno(LOG_LEVEL_WARNING, 0, __VA_ARGS__)
#define log_error(...)                    log_full_errno(LOG_LEVEL_ERR, 0, __VA_ARGS__)
#define log_debug_errno(e, ...)           log_full_errno(LOG_LEVEL_DEBUG, (e), __VA_ARGS__)
#define log_warning_errno(e, ...)         log_full_errno(LOG_LEVEL_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...)           log_full_errno(LOG_LEVEL_ERR, (e), __VA_ARGS__)
