/* SPDX-License-Identifier: MIT */
#pragma once

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>

#include "shared/macro.h"

/* One line per event on stderr; with JOURNAL_STREAM set, lines carry <N> syslog priority prefixes.
 * A program may instead hand every message to a sink (ballastd: the journal, src/daemon/service.c).
 * A message about one VM starts "VM <id>" ("VM vm1: stalled ..."); the sink gets the id apart. */
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

/* A sink receives each message that passes the level: its syslog level, the error (0 or a
 * positive errno), the source position, the VM the message is about (NULL: none) and the text,
 * already one sanitized line without prefix. It returns 0, or a negative errno to have the line
 * written to stderr instead. NULL restores stderr. */
typedef int (*log_sink_fn)(int level, int error, const char *file, int line, const char *vm, const char *msg);
void log_set_sink(log_sink_fn sink);

/* The VM id a message is about: "VM <id>" at its start, the id ending at ' ', ':' or ','. Copies
 * it to buf (NUL-terminated) and returns buf, or returns NULL when the message names no VM or the
 * id does not fit. */
const char *log_message_vm(const char *msg, char *buf, size_t len);

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
