/* SPDX-License-Identifier: MIT */
/* ballastctl history — ballastd's journal of decisions, newest first (GET /v1/history). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"

#define HISTORY_LIMIT_MAX 1000

static const char history_usage[] =
        "Usage: ballastctl history [--limit N] [options]\n"
        "\n"
        "Shows ballastd's journal, newest first: each plan that changed a VM's target or the pressure\n"
        "state, what triggered it (timer, psi, api, driver, start), the memory available then, the\n"
        "reclaim requested and planned, and the targets it set (VM=SIZE).\n"
        "\n"
        "Options:\n"
        "  --limit N              at most N entries, 1-1000 (default: the daemon's, 50)\n" CTL_API_USAGE_OPTIONS;

/* "vm1=256M vm2=1.5G" into a growing buffer; returns NULL when out of memory (caller frees). */
static char *targets_compact(json_t *targets) {
        char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return NULL;
        const char *vm;
        json_t *v;
        bool first = true;
        json_object_foreach(targets, vm, v) {
                char b[FORMAT_SIZE_MAX];
                fprintf(f, "%s%s=%s", first ? "" : " ", vm, cli_json_size_compact(b, sizeof(b), v));
                first = false;
        }
        if (first)
                fputs("-", f);
        if (fclose(f) != 0) {
                free(buf);
                return NULL;
        }
        return buf;
}

static int history_show(json_t *answer) {
        json_t *entries = json_object_get(answer, "entries"), *e;
        size_t i;
        if (!json_is_array(entries))
                return cli_error(EXIT_FAIL, "ballastd's answer has no \"entries\" list");
        if (json_array_size(entries) == 0) {
                printf("no journal entries\n");
                return EXIT_OK;
        }
        /* AVAILABLE, REQUESTED, PLANNED right-aligned. */
        _cleanup_(cli_table_freep) CliTable *t =
                cli_table_new(7, 0x38, "TIME", "TRIGGER", "STATE", "AVAILABLE", "REQUESTED", "PLANNED", "TARGETS");
        if (!t)
                return cli_error(EXIT_FAIL, "out of memory");
        json_array_foreach(entries, i, e) {
                char a[FORMAT_SIZE_MAX], q[FORMAT_SIZE_MAX], p[FORMAT_SIZE_MAX];
                _cleanup_free_ char *targets = targets_compact(json_object_get(e, "targets"));
                if (!targets ||
                    cli_table_add(t, cli_json_str(json_object_get(e, "time")),
                                  cli_json_str(json_object_get(e, "trigger")),
                                  cli_json_str(json_object_get(e, "state")),
                                  cli_json_size(a, sizeof(a), json_object_get(e, "available_bytes")),
                                  cli_json_size(q, sizeof(q), json_object_get(e, "requested_bytes")),
                                  cli_json_size(p, sizeof(p), json_object_get(e, "planned_bytes")), targets) < 0)
                        return cli_error(EXIT_FAIL, "out of memory");
        }
        cli_table_print(t, stdout);
        return EXIT_OK;
}

int cmd_history(int argc, char **argv) {
        enum { OPT_LIMIT = CTL_OPT_LOCAL };
        static const struct option opts[] = {
                { "limit", required_argument, NULL, OPT_LIMIT },
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl history";
        uint64_t limit = 0;
        int c, r;

        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_LIMIT:
                        if (parse_u64(optarg, &limit) < 0 || limit < 1 || limit > HISTORY_LIMIT_MAX)
                                return cli_usage_error("invalid --limit '%s' (1-%d)", optarg, HISTORY_LIMIT_MAX);
                        break;
                default:
                        if ((r = ctl_api_common_option(c, optarg, history_usage)) >= 0)
                                return r;
                }
        }
        if (optind < argc)
                return cli_usage_error("history takes no arguments (did you mean --limit %s?)", argv[optind]);

        char path[64] = "/v1/history";
        if (limit > 0)
                snprintf(path, sizeof(path), "/v1/history?limit=%" PRIu64, limit);
        return ctl_api_run("GET", path, NULL, history_show);
}
