/* SPDX-License-Identifier: MIT */
#pragma once

/* ballastctl's side of the ballastd API (docs/api.md): one blocking request per command over
 * the daemon's Unix socket, the options every API command shares, and the error reporting
 * ("cannot reach ballastd at PATH: …", "<message> (HTTP <status> <code>)"). */

#include <getopt.h>
#include <jansson.h>

#include "shared/api-call.h"
#include "shared/time-util.h"

#define CTL_API_SOCKET_DEFAULT  "/run/ballast/api.sock"
#define CTL_API_TIMEOUT_DEFAULT (10 * USEC_PER_SEC)

/* The option lines every API command's --help ends with. */
#define CTL_API_USAGE_OPTIONS                                                                                          \
        "  --api PATH             ballastd's socket (default: $BALLAST_API, else " CTL_API_SOCKET_DEFAULT ")\n"        \
        "  --timeout DURATION     how long to wait for the daemon's answer (default 10s)\n"                            \
        "  --json                 print the daemon's JSON answer as it is (indented)\n"                                \
        "  --help                 show this text\n"

/* --api PATH (NULL: $BALLAST_API, then the default) and --timeout DURATION. */
extern const char *arg_api;
extern usec_t arg_api_timeout;

/* Option values every API command takes; commands number their own from CTL_OPT_LOCAL. */
enum {
        CTL_OPT_API = 0x100,
        CTL_OPT_TIMEOUT,
        CTL_OPT_LOCAL,
};
/* clang-format off */
#define CTL_API_LONG_OPTIONS                                            \
        { "api", required_argument, NULL, CTL_OPT_API },                \
        { "timeout", required_argument, NULL, CTL_OPT_TIMEOUT },        \
        { "help", no_argument, NULL, 'h' }
/* clang-format on */

/* The socket the commands talk to: --api, else $BALLAST_API when set and not empty, else the default. */
const char *ctl_api_path(void);

/* Sets arg_api_timeout from a duration string. Returns 0, or EXIT_USAGE after saying why. */
int ctl_api_parse_timeout(const char *s);

/* Names the command for messages, before getopt_long(): getopt's own ("ballastctl vm add:
 * unrecognized option …", from argv[0]) and the "Try 'ballastctl vm add --help'." hints. prog is
 * the full name in static writable storage ("ballastctl vm add"); argv[0] is replaced by it. */
void ctl_api_command(char **argv, char *prog);

/* Handles a getopt_long() result that is not one of the command's own options: --api, --timeout,
 * --help (prints usage on stdout), and unknown options / missing arguments ('?'). Returns -1 when
 * the command should go on parsing, or the exit code to return now (EXIT_OK after --help,
 * EXIT_USAGE otherwise). */
int ctl_api_common_option(int c, const char *arg, const char *usage);

/* Sends one request. body is NULL or the JSON request body (stolen, also on failure). On a 2xx
 * answer returns 0 with the decoded JSON body in *ret (owned by the caller). Otherwise prints
 * why on stderr — the daemon's error as "<message> (HTTP <status> <code>)", or that the socket
 * cannot be reached — and returns EXIT_FAIL. */
int ctl_api_request(const char *method, const char *path, json_t *body, json_t **ret);

/* Sends one request and shows the answer: --json prints the body as the daemon sent it
 * (indented, keys in the daemon's order), otherwise show() prints it for humans and returns the
 * exit code. body as for ctl_api_request(). Returns the exit code. */
int ctl_api_run(const char *method, const char *path, json_t *body, int (*show)(json_t *answer));

/* Prints j indented, keys in their order (no sorting), and a newline. Does not steal j. */
void ctl_api_print_json(json_t *j);
