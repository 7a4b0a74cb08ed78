/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/macro.h"
#include "shared/time-util.h"

/* Exit codes (documented in ballastctl --help). */
enum {
        EXIT_OK = 0,
        EXIT_FAIL = 1,
        EXIT_USAGE = 2,
        EXIT_STALLED = 3,
        EXIT_DEADLINE = 4,
};

extern bool arg_json;

/* Prints "ballastctl: <message>" on stderr and returns EXIT_FAIL (or the given code). */
int cli_error(int code, const char *fmt, ...) _printf_(2, 3);
int cli_usage_error(const char *fmt, ...) _printf_(1, 2);

int cli_parse_size(const char *opt, const char *s, uint64_t *ret);
int cli_parse_duration(const char *opt, const char *s, usec_t *ret);
int cli_parse_bool(const char *opt, const char *s, bool *ret);
/* "any", a number, or a user name. */
int cli_parse_uid(const char *opt, const char *s, uid_t *ret);

/* Prints j as indented JSON on stdout and steals it. */
void cli_print_json(json_t *j);

/* Whether stderr is a terminal (progress lines are redrawn in place then). */
bool cli_stderr_tty(void);
