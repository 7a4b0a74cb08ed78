/* SPDX-License-Identifier: MIT */
/* ballastctl history — ballastd's journal of decisions, newest first (GET /v1/history); --vm and
 * --since filter it here, --follow polls it. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"

#define HISTORY_LIMIT_MAX  1000
/* What a poll of --follow asks for; when all of it is new, it asks again for the most. */
#define HISTORY_POLL_LIMIT 50

static const char history_usage[] =
        "Usage: ballastctl history [--limit N] [--vm ID] [--since DURATION|TIME] [--follow] [options]\n"
        "\n"
        "Shows ballastd's journal, newest first: each plan that changed a VM's target or the pressure\n"
        "state, what triggered it (timer, pressure, api, driver, start), the memory available then,\n"
        "the reclaim requested and planned, and the targets it set with why (VM=SIZE(REASON)).\n"
        "\n"
        "Options:\n"
        "  --limit N              at most N entries, 1-1000 (default: the daemon's, 50)\n"
        "  --vm ID                only the entries that moved this VM, with its target and reason\n"
        "  --since DURATION|TIME  only entries from the last DURATION (10m, 2h) or since TIME\n"
        "                         (2026-12-02T15:00:00Z, 2026-12-02 15:00:00 local time, 2026-12-02)\n"
        "  --follow, -f           print the entries oldest first, then each new one as it comes\n"
        "                         (the journal is polled every --interval), until interrupted\n"
        "  --interval DURATION    --follow: how often to poll (default 1s)\n"
        "\n"
        "--vm and --since look at the newest 1000 entries.\n" CTL_API_USAGE_OPTIONS;

typedef struct HistoryArgs {
        uint64_t limit; /* 0: the daemon's default */
        const char *vm;
        uint64_t since; /* realtime usec; 0: none */
        bool follow;
        usec_t interval;
} HistoryArgs;

/* An API time ("2026-12-02T15:00:00.123Z") in realtime usec; 0 when it is not one. */
static uint64_t entry_time(json_t *e) {
        uint64_t t;
        const char *s = json_string_value(json_object_get(e, "time"));
        return s && cli_parse_time(s, &t) == 0 ? t : 0;
}

static bool entry_matches(const HistoryArgs *a, json_t *e) {
        if (a->vm && !json_object_get(json_object_get(e, "targets"), a->vm))
                return false;
        if (a->since && entry_time(e) < a->since)
                return false;
        return true;
}

/* "vm1=256M(reclaim) vm2=1.5G(floor)" into a growing buffer; returns NULL when out of memory
 * (caller frees). */
static char *targets_compact(json_t *targets, json_t *reasons) {
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
                const char *why = json_string_value(json_object_get(reasons, vm));
                fprintf(f, "%s%s=%s%s%s%s", first ? "" : " ", vm, cli_json_size_compact(b, sizeof(b), v),
                        why ? "(" : "", why ?: "", why ? ")" : "");
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

static CliTable *history_table(const HistoryArgs *a) {
        if (a->vm)
                return cli_table_new(6, 0x18, "TIME", "TRIGGER", "STATE", "AVAILABLE", "TARGET", "REASON");
        return cli_table_new(7, 0x38, "TIME", "TRIGGER", "STATE", "AVAILABLE", "REQUESTED", "PLANNED", "TARGETS");
}

static int history_add(const HistoryArgs *a, CliTable *t, json_t *e) {
        char av[FORMAT_SIZE_MAX], q[FORMAT_SIZE_MAX], p[FORMAT_SIZE_MAX];
        const char *time = cli_json_str(json_object_get(e, "time")),
                   *trigger = cli_json_str(json_object_get(e, "trigger")),
                   *state = cli_json_str(json_object_get(e, "state"));
        cli_json_size(av, sizeof(av), json_object_get(e, "available_bytes"));
        if (a->vm)
                return cli_table_add(t, time, trigger, state, av,
                                     cli_json_size(q, sizeof(q), json_object_get(json_object_get(e, "targets"), a->vm)),
                                     cli_json_str(json_object_get(json_object_get(e, "reasons"), a->vm)));
        _cleanup_free_ char *targets = targets_compact(json_object_get(e, "targets"), json_object_get(e, "reasons"));
        if (!targets)
                return -ENOMEM;
        return cli_table_add(t, time, trigger, state, av,
                             cli_json_size(q, sizeof(q), json_object_get(e, "requested_bytes")),
                             cli_json_size(p, sizeof(p), json_object_get(e, "planned_bytes")), targets);
}

/* The entries of an answer that pass the filters, newest first, at most a->limit (0: all). */
static json_t *history_filter(const HistoryArgs *a, json_t *answer) {
        json_t *out = json_array(), *e;
        size_t i;
        json_array_foreach(json_object_get(answer, "entries"), i, e) {
                if (a->limit && json_array_size(out) >= a->limit)
                        break;
                if (entry_matches(a, e))
                        json_array_append(out, e);
        }
        return out;
}

static int history_print(const HistoryArgs *a, json_t *entries, bool oldest_first) {
        json_t *e;
        size_t i, n = json_array_size(entries);
        if (arg_json) {
                for (i = 0; i < n; i++) {
                        e = json_array_get(entries, oldest_first ? n - 1 - i : i);
                        json_dumpf(e, stdout, JSON_COMPACT);
                        fputc('\n', stdout);
                }
                return EXIT_OK;
        }
        _cleanup_(cli_table_freep) CliTable *t = history_table(a);
        if (!t)
                return cli_error(EXIT_FAIL, "out of memory");
        for (i = 0; i < n; i++)
                if (history_add(a, t, json_array_get(entries, oldest_first ? n - 1 - i : i)) < 0)
                        return cli_error(EXIT_FAIL, "out of memory");
        cli_table_print(t, stdout);
        return EXIT_OK;
}

static int history_get(uint64_t limit, json_t **ret) {
        char path[64] = "/v1/history";
        if (limit > 0)
                snprintf(path, sizeof(path), "/v1/history?limit=%" PRIu64, limit);
        return ctl_api_request("GET", path, NULL, ret);
}

static volatile sig_atomic_t history_stop = 0;
static void history_on_signal(int sig) {
        (void) sig;
        history_stop = 1;
}

/* Whether e was printed already: its time is older than the newest printed, or it is one of the
 * entries printed with that same time (two plans may share a millisecond). */
static bool history_seen(json_t *seen, uint64_t newest, json_t *e) {
        uint64_t t = entry_time(e);
        if (t < newest)
                return true;
        if (t > newest)
                return false;
        json_t *s;
        size_t i;
        json_array_foreach(seen, i, s) {
                if (json_equal(s, e))
                        return true;
        }
        return false;
}

/* Prints the entries not seen yet (oldest first) into t (kept across polls, so the columns stay
 * aligned) and remembers them. */
static int history_follow_step(const HistoryArgs *a, CliTable *t, json_t *answer, json_t *seen, uint64_t *newest) {
        _cleanup_(json_decrefp) json_t *fresh = json_array();
        json_t *e;
        size_t i;
        json_array_foreach(json_object_get(answer, "entries"), i, e) {
                if (!history_seen(seen, *newest, e) && entry_matches(a, e))
                        json_array_append(fresh, e);
        }
        size_t n = json_array_size(fresh);
        if (n == 0)
                return EXIT_OK;
        if (!arg_json) {
                for (i = n; i > 0; i--)
                        if (history_add(a, t, json_array_get(fresh, i - 1)) < 0)
                                return cli_error(EXIT_FAIL, "out of memory");
                cli_table_print_new(t, stdout);
        } else
                history_print(a, fresh, true);
        fflush(stdout);
        uint64_t top = entry_time(json_array_get(fresh, 0));
        if (top > *newest) {
                json_array_clear(seen);
                *newest = top;
        }
        json_array_foreach(fresh, i, e) {
                if (entry_time(e) == *newest)
                        json_array_append(seen, e);
        }
        return EXIT_OK;
}

static int history_follow(const HistoryArgs *a) {
        struct sigaction sa = { .sa_handler = history_on_signal };
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGPIPE, &sa, NULL);

        _cleanup_(json_decrefp) json_t *seen = json_array(), *first = NULL;
        _cleanup_(cli_table_freep) CliTable *t = history_table(a);
        uint64_t newest = 0;
        if (!seen || !t)
                return cli_error(EXIT_FAIL, "out of memory");
        /* The backlog: --limit of the filtered entries, oldest first. */
        int r = history_get(a->vm || a->since ? HISTORY_LIMIT_MAX : a->limit, &first);
        if (r != 0)
                return r;
        {
                _cleanup_(json_decrefp) json_t *backlog = history_filter(a, first), *wrap = NULL;
                wrap = json_pack("{s:O}", "entries", backlog);
                if ((r = history_follow_step(a, t, wrap, seen, &newest)) != 0)
                        return r;
        }
        while (!history_stop) {
                /* poll() as a sleep that a signal ends at once. */
                (void) poll(NULL, 0, (int) (a->interval / USEC_PER_MSEC));
                if (history_stop)
                        break;
                _cleanup_(json_decrefp) json_t *answer = NULL;
                if ((r = history_get(HISTORY_POLL_LIMIT, &answer)) != 0)
                        return r;
                json_t *entries = json_object_get(answer, "entries");
                /* All new: more may have come than one poll asks for. */
                if (json_array_size(entries) == HISTORY_POLL_LIMIT &&
                    !history_seen(seen, newest, json_array_get(entries, HISTORY_POLL_LIMIT - 1))) {
                        json_decref(answer);
                        answer = NULL;
                        if ((r = history_get(HISTORY_LIMIT_MAX, &answer)) != 0)
                                return r;
                }
                if ((r = history_follow_step(a, t, answer, seen, &newest)) != 0)
                        return r;
        }
        return EXIT_OK;
}

int cmd_history(int argc, char **argv) {
        enum { OPT_LIMIT = CTL_OPT_LOCAL, OPT_VM, OPT_SINCE, OPT_FOLLOW, OPT_INTERVAL };
        static const struct option opts[] = {
                { "limit", required_argument, NULL, OPT_LIMIT },
                { "vm", required_argument, NULL, OPT_VM },
                { "since", required_argument, NULL, OPT_SINCE },
                { "follow", no_argument, NULL, 'f' },
                { "interval", required_argument, NULL, OPT_INTERVAL },
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl history";
        HistoryArgs a = { .interval = USEC_PER_SEC };
        int c, r;

        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "hf", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_LIMIT:
                        if (parse_u64(optarg, &a.limit) < 0 || a.limit < 1 || a.limit > HISTORY_LIMIT_MAX)
                                return cli_usage_error("invalid --limit '%s' (1-%d)", optarg, HISTORY_LIMIT_MAX);
                        break;
                case OPT_VM:
                        if (!optarg[0])
                                return cli_usage_error("--vm needs a VM id");
                        a.vm = optarg;
                        break;
                case OPT_SINCE: {
                        usec_t d;
                        if (parse_duration(optarg, &d) == 0) {
                                uint64_t now = now_usec(CLOCK_REALTIME);
                                a.since = d < now ? now - d : 1;
                        } else if (cli_parse_time(optarg, &a.since) < 0 || a.since == 0)
                                return cli_usage_error("invalid --since '%s' (a duration such as 10m or 2h, or a "
                                                       "time such as 2026-12-02T15:00:00Z)",
                                                       optarg);
                        break;
                }
                case 'f':
                        a.follow = true;
                        break;
                case OPT_INTERVAL:
                        if ((r = cli_parse_duration("--interval", optarg, &a.interval)) != 0)
                                return r;
                        if (a.interval < 100 * USEC_PER_MSEC || a.interval > 3600 * USEC_PER_SEC)
                                return cli_usage_error("--interval is 100ms to 1h, not '%s'", optarg);
                        break;
                default:
                        if ((r = ctl_api_common_option(c, optarg, history_usage)) >= 0)
                                return r;
                }
        }
        if (optind < argc)
                return cli_usage_error("history takes no arguments (did you mean --limit %s?)", argv[optind]);

        if (a.follow)
                return history_follow(&a);

        _cleanup_(json_decrefp) json_t *answer = NULL;
        /* The filters look at the most the daemon gives; --limit applies to what passes. */
        if ((r = history_get(a.vm || a.since ? HISTORY_LIMIT_MAX : a.limit, &answer)) != 0)
                return r;
        if (!json_is_array(json_object_get(answer, "entries")))
                return cli_error(EXIT_FAIL, "ballastd's answer has no \"entries\" list");
        if (arg_json && !a.vm && !a.since) {
                ctl_api_print_json(answer);
                return EXIT_OK;
        }
        _cleanup_(json_decrefp) json_t *entries = history_filter(&a, answer);
        if (arg_json) {
                _cleanup_(json_decrefp) json_t *o = json_pack("{s:O}", "entries", entries);
                ctl_api_print_json(o);
                return EXIT_OK;
        }
        if (json_array_size(entries) == 0) {
                printf("no journal entries%s\n", a.vm || a.since ? " match" : "");
                return EXIT_OK;
        }
        return history_print(&a, entries, false);
}
