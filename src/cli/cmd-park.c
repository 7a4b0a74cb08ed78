/* SPDX-License-Identifier: MIT */
/* ballastctl park|unpark ID — warm-pool parking through ballastd (B4; POST /v1/vms/{id}/park|unpark). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"

static const char park_usage[] =
        "Usage: ballastctl park ID [--size SIZE] [--within DURATION] [options]\n"
        "       ballastctl unpark ID [--size SIZE] [--wait] [--within DURATION] [options]\n"
        "\n"
        "park shrinks an idle VM to SIZE (default: the daemon's park size, 128M) and waits for the\n"
        "guest to get there; a guest that cannot go that low is left where it stalled (result\n"
        "'stalled'), never pushed into OOM. unpark gives the VM SIZE back (default: the size it had\n"
        "before the park) and returns as soon as the command is accepted, or with --wait once the\n"
        "guest has the memory; the VM is then protected from automatic reclaim for a while.\n"
        "Exit status: 0 reached (or sent), 3 the guest stopped short (stalled), 4 the deadline passed.\n"
        "\n"
        "Options:\n"
        "  --size SIZE            the size to park at / unpark to\n"
        "  --wait                 unpark: wait until the guest has the memory\n"
        "  --within DURATION      give up waiting after this (default: the daemon's, 60s)\n" CTL_API_USAGE_OPTIONS;

static int show(json_t *a) {
        char p[FORMAT_SIZE_MAX], t[FORMAT_SIZE_MAX], r[FORMAT_SIZE_MAX];
        json_t *ms = json_object_get(a, "elapsed_ms");
        const char *msg = cli_json_str(json_object_get(a, "message"));
        printf("VM %s: %s — previous %s, target %s, reached %s, in %.0f ms%s%s\n",
               cli_json_str(json_object_get(a, "vm")), cli_json_str(json_object_get(a, "result")),
               cli_json_size(p, sizeof(p), json_object_get(a, "previous_bytes")),
               cli_json_size(t, sizeof(t), json_object_get(a, "target_bytes")),
               cli_json_size(r, sizeof(r), json_object_get(a, "reached_bytes")),
               json_is_number(ms) ? json_number_value(ms) : 0.0, msg[0] && strcmp(msg, "-") ? ": " : "",
               msg[0] && strcmp(msg, "-") ? msg : "");
        /* As `balloon set --wait`: 3 when the guest stopped short, 4 when the deadline came first. */
        const char *res = cli_json_str(json_object_get(a, "result"));
        return strcmp(res, "stalled") == 0 ? EXIT_STALLED : strcmp(res, "deadline") == 0 ? EXIT_DEADLINE : EXIT_OK;
}

int cmd_park(int argc, char **argv, bool unpark) {
        enum { OPT_SIZE = CTL_OPT_LOCAL, OPT_WAIT, OPT_WITHIN, OPT_JSON };
        static const struct option opts[] = {
                { "size", required_argument, NULL, OPT_SIZE },
                { "wait", no_argument, NULL, OPT_WAIT },
                { "within", required_argument, NULL, OPT_WITHIN },
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog_park[] = "ballastctl park", prog_unpark[] = "ballastctl unpark";
        uint64_t size = 0;
        bool wait = false;
        const char *within = NULL;
        usec_t d = 0;
        int c, r;

        ctl_api_command(argv, unpark ? prog_unpark : prog_park);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_SIZE:
                        if ((r = cli_parse_size("--size", optarg, &size)) != 0)
                                return r;
                        break;
                case OPT_WAIT:
                        if (!unpark)
                                return cli_usage_error("--wait is for unpark (park always waits)");
                        wait = true;
                        break;
                case OPT_WITHIN:
                        if ((r = cli_parse_duration("--within", optarg, &d)) != 0)
                                return r;
                        if (d == 0 || d > 10 * 60 * USEC_PER_SEC)
                                return cli_usage_error("--within must be between 1ms and 10m, not '%s'", optarg);
                        within = optarg;
                        break;
                default:
                        if ((r = ctl_api_common_option(c, optarg, park_usage)) >= 0)
                                return r;
                }
        }
        if (optind + 1 != argc)
                return cli_usage_error("%s needs one VM ID", unpark ? "unpark" : "park");
        const char *id = argv[optind];
        /* The daemon answers when the guest got there: wait for the answer longer than that. */
        usec_t need = (within ? d : 60 * USEC_PER_SEC) + 10 * USEC_PER_SEC;
        if (arg_api_timeout < need)
                arg_api_timeout = need;

        json_t *body = json_object();
        if (size)
                json_object_set_new(body, "size_bytes", json_integer((json_int_t) size));
        if (within)
                json_object_set_new(body, "timeout", json_string(within));
        if (wait)
                json_object_set_new(body, "wait", json_true());
        char path[256];
        snprintf(path, sizeof path, "/v1/vms/%s/%s", id, unpark ? "unpark" : "park");
        return ctl_api_run("POST", path, body, show);
}
