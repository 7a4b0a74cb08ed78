/* SPDX-License-Identifier: MIT */
/* ballastctl reclaim — manual reclaim and its hold (POST /v1/memory/reclaim, B5.8). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"

#define RECLAIM_HOLD_MAX   (3600 * USEC_PER_SEC)
#define RECLAIM_REASON_MAX 256

static const char reclaim_usage[] =
        "Usage: ballastctl reclaim SIZE [--hold DURATION] [--dry-run] [--reason TEXT] [options]\n"
        "       ballastctl reclaim --clear [--reason TEXT] [options]\n"
        "\n"
        "Asks ballastd to take SIZE (e.g. 2G) back from the VMs now and to keep it reclaimed for the\n"
        "hold's duration, whatever the pressure. Prints what was planned and applied, and one line\n"
        "per VM. A VM that fails does not fail the request: its line says so.\n"
        "\n"
        "Options:\n"
        "  --hold DURATION        keep the reclaim for this long, at most 1h (default: the daemon's, 5m);\n"
        "                         0s clears the hold (automatic pressure alone then decides)\n"
        "  --dry-run              only plan: show what would be done, change nothing\n"
        "  --reason TEXT          why, for the journal (at most 256 characters)\n"
        "  --clear                end the current hold (reclaim 0 with hold 0s)\n" CTL_API_USAGE_OPTIONS "\n"
        "Exit status: 0 done, 1 error, 2 usage, 5 less could be planned than SIZE (the floors, the\n"
        "VMs' sizes or what shrinking them returns to the host limit it); a warning says how much.\n";

static int reclaim_show(json_t *a) {
        char b[FORMAT_SIZE_MAX];
        bool dry = json_is_true(json_object_get(a, "dry_run"));
        json_t *until = json_object_get(a, "hold_until");

        cli_field("requested", "%s", cli_json_size(b, sizeof(b), json_object_get(a, "requested_bytes")));
        cli_field("planned", "%s", cli_json_size(b, sizeof(b), json_object_get(a, "planned_bytes")));
        cli_field("applied", "%s%s", cli_json_size(b, sizeof(b), json_object_get(a, "applied_bytes")),
                  dry ? " (dry run: nothing changed)" : "");
        if (json_is_string(until))
                cli_field("hold", "until %s", json_string_value(until));
        else
                cli_field("hold", "%s", dry ? "unchanged (dry run)" : "none");
        cli_field("host available", "%s", cli_json_size(b, sizeof(b), json_object_get(a, "host_available_bytes")));
        cli_field("pressure state", "%s", cli_json_str(json_object_get(a, "pressure_state")));

        json_t *actions = json_object_get(a, "actions"), *act;
        size_t i;
        if (json_array_size(actions) == 0) {
                printf("\nno VM actions\n");
                return EXIT_OK;
        }
        /* The ERROR column only when some VM failed. */
        bool errors = false;
        json_array_foreach(actions, i, act) {
                errors = errors || json_is_string(json_object_get(act, "error"));
        }
        _cleanup_(cli_table_freep) CliTable *t =
                cli_table_new(errors ? 6 : 5, 0x1c, "VM", "ACTION", "PREVIOUS", "PLANNED", "NEW", "ERROR");
        if (!t)
                return cli_error(EXIT_FAIL, "out of memory");
        json_array_foreach(actions, i, act) {
                char p[FORMAT_SIZE_MAX], l[FORMAT_SIZE_MAX], n[FORMAT_SIZE_MAX];
                if (cli_table_add(t, cli_json_str(json_object_get(act, "vm")),
                                  cli_json_str(json_object_get(act, "action")),
                                  cli_json_size(p, sizeof(p), json_object_get(act, "previous_target_bytes")),
                                  cli_json_size(l, sizeof(l), json_object_get(act, "planned_target_bytes")),
                                  cli_json_size(n, sizeof(n), json_object_get(act, "new_target_bytes")),
                                  cli_json_str(json_object_get(act, "error"))) < 0)
                        return cli_error(EXIT_FAIL, "out of memory");
        }
        putchar('\n');
        cli_table_print(t, stdout);
        return EXIT_OK;
}

/* A reclaim that cannot be planned in full is not an error (what could be taken was), but a
 * script must be able to tell: a warning on stderr and EXIT_PARTIAL. */
static int reclaim_check_planned(json_t *a) {
        json_t *q = json_object_get(a, "requested_bytes"), *p = json_object_get(a, "planned_bytes");
        if (!json_is_integer(q) || !json_is_integer(p) || json_integer_value(p) >= json_integer_value(q))
                return EXIT_OK;
        char qs[FORMAT_SIZE_MAX], ps[FORMAT_SIZE_MAX];
        fprintf(stderr, "ballastctl: warning: only %s of the %s requested could be planned%s\n",
                cli_json_size(ps, sizeof ps, p), cli_json_size(qs, sizeof qs, q),
                json_is_true(json_object_get(a, "dry_run")) ? " (dry run)" : "");
        return EXIT_PARTIAL;
}

int cmd_reclaim(int argc, char **argv) {
        enum { OPT_HOLD = CTL_OPT_LOCAL, OPT_DRY, OPT_REASON, OPT_CLEAR };
        static const struct option opts[] = {
                { "hold", required_argument, NULL, OPT_HOLD },
                { "dry-run", no_argument, NULL, OPT_DRY },
                { "reason", required_argument, NULL, OPT_REASON },
                { "clear", no_argument, NULL, OPT_CLEAR },
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl reclaim";
        const char *hold = NULL, *reason = NULL;
        bool dry = false, clear = false;
        uint64_t size = 0;
        usec_t d;
        int c, r;

        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_HOLD:
                        if ((r = cli_parse_duration("--hold", optarg, &d)) != 0)
                                return r;
                        if (d > RECLAIM_HOLD_MAX)
                                return cli_usage_error("--hold is at most 1h, not '%s'", optarg);
                        hold = optarg;
                        break;
                case OPT_DRY:
                        dry = true;
                        break;
                case OPT_REASON:
                        if (utf8_count(optarg, strlen(optarg)) < 0 ||
                            utf8_count(optarg, strlen(optarg)) > RECLAIM_REASON_MAX)
                                return cli_usage_error("--reason is at most %d characters of UTF-8",
                                                       RECLAIM_REASON_MAX);
                        reason = optarg;
                        break;
                case OPT_CLEAR:
                        clear = true;
                        break;
                default:
                        if ((r = ctl_api_common_option(c, optarg, reclaim_usage)) >= 0)
                                return r;
                }
        }
        if (clear) {
                if (optind < argc || hold)
                        return cli_usage_error("reclaim --clear takes no SIZE and no --hold");
                hold = "0s";
        } else {
                if (optind + 1 != argc)
                        return cli_usage_error("reclaim needs one SIZE (e.g. 2G), or --clear");
                if ((r = cli_parse_size("SIZE", argv[optind], &size)) != 0)
                        return r;
        }

        json_t *body = json_object();
        json_object_set_new(body, "reclaim_bytes", json_integer((json_int_t) size));
        if (hold)
                json_object_set_new(body, "hold_for", json_string(hold));
        json_object_set_new(body, "dry_run", json_boolean(dry));
        if (reason) {
                json_t *s = json_string(reason);
                if (!s) {
                        json_decref(body);
                        return cli_usage_error("--reason is not valid UTF-8");
                }
                json_object_set_new(body, "reason", s);
        }
        _cleanup_(json_decrefp) json_t *answer = NULL;
        if ((r = ctl_api_request("POST", "/v1/memory/reclaim", body, &answer)) != 0)
                return r;
        if (arg_json)
                ctl_api_print_json(answer);
        else if ((r = reclaim_show(answer)) != EXIT_OK)
                return r;
        return reclaim_check_planned(answer);
}
