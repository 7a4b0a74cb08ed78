/* SPDX-License-Identifier: MIT */
#pragma once

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
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
        EXIT_PARTIAL = 5, /* reclaim: less could be planned than was asked for */
};

extern bool arg_json;
/* The command being run ("vm add"), for the "Try 'ballastctl vm add --help'." hint; NULL: none. */
extern const char *cli_command;

/* Prints "ballastctl: <message>" on stderr and returns EXIT_FAIL (or the given code). */
int cli_error(int code, const char *fmt, ...) _printf_(2, 3);
int cli_usage_error(const char *fmt, ...) _printf_(1, 2);
/* While buf is not NULL, cli_error() and cli_usage_error() write their message (cleaned, without
 * the "ballastctl: " prefix) into buf instead of stderr, the last one winning: for a full-screen
 * view. NULL ends it. */
void cli_capture_errors(char *buf, size_t len);

/* Names the command for messages: getopt's own ("ballastctl vm start: unrecognized option …",
 * from argv[0]) and the "Try 'ballastctl vm start --help'." hints. prog is the full name in
 * static writable storage ("ballastctl vm start"); argv[0] is replaced by it. */
void cli_set_command(char **argv, char *prog);

/* The start of a command with sub-commands (ballastctl GROUP VERB …): without VERB, the usage on
 * stderr and EXIT_USAGE; with --help or -h, on stdout and EXIT_OK. Otherwise shifts the arguments
 * past GROUP, names the command "ballastctl GROUP VERB" (cli_set_command()), resets getopt, sets
 * *ret_verb and returns -1. */
int cli_subcommand(int *argc, char ***argv, const char *group, const char *usage, const char **ret_verb);

/* Handles a getopt_long() result that is not one of the command's own options: 'h' (--help, -h)
 * prints usage on stdout and returns EXIT_OK; anything else (an unknown option or a missing
 * argument, which getopt_long() has reported) prints the "Try …" hint and returns EXIT_USAGE. */
int cli_common_option(int c, const char *usage);

int cli_parse_size(const char *opt, const char *s, uint64_t *ret);
int cli_parse_duration(const char *opt, const char *s, usec_t *ret);
int cli_parse_bool(const char *opt, const char *s, bool *ret);
/* "any", a number, or a user name. */
int cli_parse_uid(const char *opt, const char *s, uid_t *ret);
/* A time: RFC 3339 as the API writes it ("2026-12-02T15:00:00.123Z", an offset "+02:00" instead
 * of Z), the same with a space for the T, or a date alone; without Z or an offset it is local
 * time. Sets *ret to realtime microseconds and returns 0, or returns -EINVAL (prints nothing). */
int cli_parse_time(const char *s, uint64_t *ret);

/* What the daemon says crossed a trust boundary (it quotes hypervisors and API clients): before a
 * string reaches a terminal, control characters and invalid UTF-8 become '?', tab and newline a
 * space (utf8_sanitize()). cli_text_sanitize() does it in place and returns s; cli_json_sanitize()
 * does it to every string value in j. cli_field(), cli_table_*() and cli_error() apply it to what
 * they print. */
char *cli_text_sanitize(char *s);
void cli_json_sanitize(json_t *j);

/* Prints j as indented JSON on stdout and steals it. */
void cli_print_json(json_t *j);

/* Whether stderr is a terminal (progress lines are redrawn in place then). */
bool cli_stderr_tty(void);

/* Fields of an API answer, for humans. Each returns buf or a constant, never NULL:
 * cli_json_size: format_size() of a size field ("512 MiB"), "-" when null or absent;
 * cli_json_size_compact: the same in compact units ("512M", "1.5G"), for dense columns;
 * cli_json_str: a string field, "-" when null, absent or empty. */
const char *cli_json_size(char *buf, size_t len, json_t *v);
const char *cli_json_size_compact(char *buf, size_t len, json_t *v);
const char *cli_json_str(json_t *v);
/* Prints "key:" padded to a common column, then the formatted value and a newline; key "" for a
 * continuation line. */
void cli_field(const char *key, const char *fmt, ...) _printf_(2, 3);
/* "100B", "64K", "512M", "1.5G", "1.25T": binary units, at most two decimals, no trailing zeros. */
const char *cli_format_size_compact(char *buf, size_t len, uint64_t bytes);
/* A remaining time in seconds, rounded up: "45s", "4m59s", "1h0m0s". */
const char *cli_format_seconds(char *buf, size_t len, double s);

/* A table printed with aligned columns separated by two spaces; row 0 is the header. Cells are
 * copied; a NULL cell prints as "-". Right-aligned columns are given as a bit mask (bit i:
 * column i). The last column is not padded. */
typedef struct CliTable CliTable;
/* Takes ncols header strings. Returns NULL when out of memory. */
CliTable *cli_table_new(size_t ncols, uint64_t right_aligned, ...);
/* Takes ncols cell strings. Returns 0 or -ENOMEM. */
int cli_table_add(CliTable *t, ...);
void cli_table_print(const CliTable *t, FILE *f);
/* For output that grows (--follow): prints the rows added since the last call (the header too on
 * the first call), each column padded to the widest cell it has had so far, then forgets those
 * rows (the header and the widths stay). */
void cli_table_print_new(CliTable *t, FILE *f);
/* Accepts NULL; returns NULL. */
CliTable *cli_table_free(CliTable *t);
DEFINE_TRIVIAL_CLEANUP_FUNC(CliTable *, cli_table_free);
