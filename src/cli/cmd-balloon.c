/* SPDX-License-Identifier: MIT */
/* ballastctl balloon get|set|stats|caps — one VM's balloon, by QMP socket or launcher VM name. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ballast/ballast.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"
#include "vm/launcher.h"

typedef struct BalloonArgs {
        const char *qmp;
        const char *vm;
        uid_t expected_uid;
        usec_t timeout;
        bool wait;
        uint64_t tolerance;
        usec_t wait_timeout;
        usec_t stall;
        int64_t period; /* -1: leave as is */
} BalloonArgs;

static const char balloon_usage[] =
        "Usage: ballastctl balloon get   (--qmp PATH | --vm NAME) [options]\n"
        "       ballastctl balloon set   (--qmp PATH | --vm NAME) [--wait] SIZE\n"
        "       ballastctl balloon stats (--qmp PATH | --vm NAME) [--period SECONDS]\n"
        "       ballastctl balloon caps  (--qmp PATH | --vm NAME)\n"
        "\n"
        "SIZE is the target guest memory (not the balloon size), e.g. 256M or 1G.\n"
        "\n"
        "Options:\n"
        "  --qmp PATH             QEMU QMP socket\n"
        "  --vm NAME              a VM started with 'ballastctl vm start' (uses its qmp-ctl.sock)\n"
        "  --expected-uid UID     uid the hypervisor must run as (default: yours; 'any' for any)\n"
        "  --timeout DURATION     deadline of each hypervisor operation (default 5s)\n"
        "  --wait                 set: wait until the guest reaches the target\n"
        "  --tolerance SIZE       set --wait: how close counts as reached (default 16M)\n"
        "  --wait-timeout DUR     set --wait: give up after this long (default 60s)\n"
        "  --stall DURATION       set --wait: report 'stalled' after no movement this long (default 3s)\n"
        "  --period SECONDS       stats: set the guest statistics polling period first (0 = off)\n"
        "  --json                 machine-readable output\n"
        "\n"
        "Exit status: 0 done, 1 error, 2 usage, 3 stalled, 4 deadline reached.\n";

static int open_hv(const BalloonArgs *a, BallastHv **ret) {
        char path[512];
        const char *p = a->qmp;
        if (a->vm) {
                if (vm_socket_path(a->vm, "qmp-ctl", path, sizeof(path)) < 0)
                        return cli_usage_error("invalid VM name '%s'", a->vm);
                if (access(path, F_OK) < 0)
                        return cli_error(EXIT_FAIL, "no running VM named '%s' (%s missing)", a->vm, path);
                p = path;
        }
        BallastError err = { 0 };
        int r = ballast_qemu_open(p, a->expected_uid, ret, &err);
        if (r < 0)
                return cli_error(EXIT_FAIL, "%s", err.message);
        return 0;
}

static int do_get(const BalloonArgs *a) {
        BallastHv *hv = NULL;
        int r = open_hv(a, &hv);
        if (r != 0)
                return r;
        BallastError err = { 0 };
        uint64_t actual;
        BallastCaps caps;
        if (ballast_hv_get_actual(hv, a->timeout, &actual, &err) < 0 ||
            ballast_hv_get_caps(hv, a->timeout, &caps, &err) < 0) {
                ballast_hv_close(hv);
                return cli_error(EXIT_FAIL, "%s", err.message);
        }
        ballast_hv_close(hv);
        uint64_t balloon = caps.ram_bytes > actual ? caps.ram_bytes - actual : 0;
        if (arg_json) {
                cli_print_json(json_pack("{s:I,s:I,s:I}", "actual", (json_int_t) actual, "ram",
                                         (json_int_t) caps.ram_bytes, "balloon", (json_int_t) balloon));
                return 0;
        }
        char b1[FORMAT_SIZE_MAX], b2[FORMAT_SIZE_MAX], b3[FORMAT_SIZE_MAX];
        printf("actual   %s (%" PRIu64 " bytes)\nram      %s\nballoon  %s\n", format_size(b1, sizeof(b1), actual),
               actual, format_size(b2, sizeof(b2), caps.ram_bytes), format_size(b3, sizeof(b3), balloon));
        return 0;
}

typedef struct Progress {
        bool tty;
        usec_t last_print;
} Progress;

static void on_progress(uint64_t actual, uint64_t target, uint64_t start, uint64_t elapsed, void *userdata) {
        Progress *p = userdata;
        char a[FORMAT_SIZE_MAX], t[FORMAT_SIZE_MAX];
        usec_t now = now_mono();

        if (!p->tty && now - p->last_print < USEC_PER_SEC)
                return;
        p->last_print = now;
        uint64_t total = start > target ? start - target : target - start;
        uint64_t done = start > target ? (start > actual ? start - actual : 0) : (actual > start ? actual - start : 0);
        int pct = total ? (int) (done * 100 / total) : 100;
        pct = CLAMP(pct, 0, 100);
        char bar[21];
        for (int i = 0; i < 20; i++)
                bar[i] = i < pct / 5 ? '#' : '.';
        bar[20] = '\0';
        fprintf(stderr, "%s  actual %s -> target %s [%s] %3d%% %.1f s%s", p->tty ? "\r" : "",
                format_size(a, sizeof(a), actual), format_size(t, sizeof(t), target), bar, pct,
                (double) elapsed / (double) USEC_PER_SEC, p->tty ? "   " : "\n");
}

static int do_set(const BalloonArgs *a, uint64_t target) {
        BallastHv *hv = NULL;
        int r = open_hv(a, &hv);
        if (r != 0)
                return r;
        BallastError err = { 0 };
        char t[FORMAT_SIZE_MAX], x[FORMAT_SIZE_MAX];

        if (!a->wait) {
                r = ballast_hv_set_target(hv, target, a->timeout, &err);
                ballast_hv_close(hv);
                if (r < 0)
                        return cli_error(EXIT_FAIL, "%s", err.message);
                if (arg_json)
                        cli_print_json(json_pack("{s:I,s:s}", "target", (json_int_t) target, "result", "sent"));
                else
                        printf("target set to %s\n", format_size(t, sizeof(t), target));
                return 0;
        }

        Progress prog = { .tty = cli_stderr_tty() && !arg_json };
        BallastWaitOptions o;
        ballast_wait_options_init(&o);
        o.tolerance = a->tolerance;
        o.timeout_us = a->wait_timeout;
        o.stall_window_us = a->stall;
        o.op_timeout_us = a->timeout;
        if (!arg_json) {
                o.progress = on_progress;
                o.progress_userdata = &prog;
        }
        BallastWaitOutcome out;
        r = ballast_hv_set_and_wait(hv, target, &o, &out, &err);
        ballast_hv_close(hv);
        if (prog.tty)
                fputc('\n', stderr);
        if (r < 0)
                return cli_error(EXIT_FAIL, "%s", err.message);

        if (arg_json)
                cli_print_json(json_pack("{s:s,s:I,s:I,s:I,s:f,s:i,s:i,s:s}", "result",
                                         ballast_wait_result_to_string(out.result), "start", (json_int_t) out.start,
                                         "target", (json_int_t) out.target, "reached", (json_int_t) out.reached,
                                         "seconds", (double) out.elapsed_us / 1e6, "polls", (int) out.polls, "events",
                                         (int) out.events, "message", out.message));
        else
                printf("%s: %s -> %s in %.2f s (target %s)%s%s\n", ballast_wait_result_to_string(out.result),
                       format_size(x, sizeof(x), out.start), format_size(t, sizeof(t), out.reached),
                       (double) out.elapsed_us / 1e6,
                       format_size((char[FORMAT_SIZE_MAX]){ 0 }, FORMAT_SIZE_MAX, target), out.message[0] ? ": " : "",
                       out.message);
        return out.result == BALLAST_WAIT_REACHED   ? EXIT_OK
               : out.result == BALLAST_WAIT_STALLED ? EXIT_STALLED
                                                    : EXIT_DEADLINE;
}

static json_t *stat_json(uint64_t v) {
        return v == BALLAST_STAT_UNSET ? json_null() : json_integer((json_int_t) v);
}

static int do_stats(const BalloonArgs *a) {
        BallastHv *hv = NULL;
        int r = open_hv(a, &hv);
        if (r != 0)
                return r;
        BallastError err = { 0 };
        BallastStats s;
        if (a->period >= 0 && ballast_hv_set_stats_period(hv, (uint32_t) a->period, a->timeout, &err) < 0) {
                ballast_hv_close(hv);
                return cli_error(EXIT_FAIL, "%s", err.message);
        }
        r = ballast_hv_get_stats(hv, a->timeout, &s, &err);
        ballast_hv_close(hv);
        if (r < 0)
                return cli_error(EXIT_FAIL, "%s", err.message);

        int64_t age = s.last_update ? (int64_t) time(NULL) - (int64_t) s.last_update : -1;
        if (arg_json) {
                json_t *j = json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:I,s:i}", "swap_in", stat_json(s.swap_in),
                                      "swap_out", stat_json(s.swap_out), "major_faults", stat_json(s.major_faults),
                                      "minor_faults", stat_json(s.minor_faults), "free", stat_json(s.free), "total",
                                      stat_json(s.total), "available", stat_json(s.available), "caches",
                                      stat_json(s.caches), "oom_kills", stat_json(s.oom_kills), "last_update",
                                      (json_int_t) s.last_update, "period", (int) s.period);
                cli_print_json(j);
                return 0;
        }
        static const struct {
                const char *label;
                size_t off;
                bool bytes;
        } rows[] = {
                { "total", offsetof(BallastStats, total), true },
                { "available", offsetof(BallastStats, available), true },
                { "free", offsetof(BallastStats, free), true },
                { "caches", offsetof(BallastStats, caches), true },
                { "swap in", offsetof(BallastStats, swap_in), true },
                { "swap out", offsetof(BallastStats, swap_out), true },
                { "major faults", offsetof(BallastStats, major_faults), false },
                { "minor faults", offsetof(BallastStats, minor_faults), false },
                { "oom kills", offsetof(BallastStats, oom_kills), false },
        };
        for (size_t i = 0; i < ELEMENTSOF(rows); i++) {
                uint64_t v = *(const uint64_t *) ((const char *) &s + rows[i].off);
                char b[FORMAT_SIZE_MAX];
                if (v == BALLAST_STAT_UNSET)
                        printf("%-13s -\n", rows[i].label);
                else if (rows[i].bytes)
                        printf("%-13s %s\n", rows[i].label, format_size(b, sizeof(b), v));
                else
                        printf("%-13s %" PRIu64 "\n", rows[i].label, v);
        }
        if (age < 0)
                printf("updated       never%s\n", s.period ? "" : " (polling is off: use --period 2)");
        else
                printf("updated       %" PRId64 " s ago (polling every %u s%s)\n", age, s.period,
                       s.period ? "" : ", off: use --period 2");
        return 0;
}

static int do_caps(const BalloonArgs *a) {
        BallastHv *hv = NULL;
        int r = open_hv(a, &hv);
        if (r != 0)
                return r;
        BallastError err = { 0 };
        BallastCaps c;
        r = ballast_hv_get_caps(hv, a->timeout, &c, &err);
        ballast_hv_close(hv);
        if (r < 0)
                return cli_error(EXIT_FAIL, "%s", err.message);
        if (arg_json) {
                cli_print_json(json_pack("{s:b,s:b,s:b,s:b,s:I,s:s}", "balloon", c.balloon, "stats", c.stats,
                                         "deflate_on_oom", c.deflate_on_oom, "free_page_reporting",
                                         c.free_page_reporting, "ram", (json_int_t) c.ram_bytes, "version", c.version));
                return 0;
        }
        char b[FORMAT_SIZE_MAX];
        printf("hypervisor           %s\nballoon              %s\nstats                %s\n"
               "deflate-on-oom       %s\nfree-page-reporting  %s\nram                  %s\n",
               c.version, c.balloon ? "yes" : "no", c.stats ? "yes" : "no", c.deflate_on_oom ? "on" : "off",
               c.free_page_reporting ? "on" : "off", format_size(b, sizeof(b), c.ram_bytes));
        return 0;
}

enum { OPT_QMP = 256, OPT_VM, OPT_UID, OPT_TIMEOUT, OPT_WAIT, OPT_TOL, OPT_WTIMEOUT, OPT_STALL, OPT_PERIOD };

/* Applies one option (c, with its argument arg) to a. Returns -1 to go on, or the exit code. */
static int balloon_option(int c, const char *arg, BalloonArgs *a) {
        uint64_t v;
        int r;
        switch (c) {
        case OPT_QMP:
                a->qmp = arg;
                break;
        case OPT_VM:
                a->vm = arg;
                break;
        case OPT_UID:
                if ((r = cli_parse_uid("--expected-uid", arg, &a->expected_uid)) != 0)
                        return r;
                break;
        case OPT_TIMEOUT:
                if ((r = cli_parse_duration("--timeout", arg, &a->timeout)) != 0)
                        return r;
                if (a->timeout == 0)
                        return cli_usage_error("--timeout must be more than 0");
                break;
        case OPT_WAIT:
                a->wait = true;
                break;
        case OPT_TOL:
                if ((r = cli_parse_size("--tolerance", arg, &a->tolerance)) != 0)
                        return r;
                break;
        case OPT_WTIMEOUT:
                if ((r = cli_parse_duration("--wait-timeout", arg, &a->wait_timeout)) != 0)
                        return r;
                break;
        case OPT_STALL:
                if ((r = cli_parse_duration("--stall", arg, &a->stall)) != 0)
                        return r;
                break;
        case OPT_PERIOD:
                if (parse_u64(arg, &v) < 0 || v > UINT32_MAX)
                        return cli_usage_error("invalid --period '%s' (seconds, 0 = off)", arg);
                a->period = (int64_t) v;
                break;
        default:
                return cli_common_option(c, balloon_usage);
        }
        return -1;
}

/* Parses the options after the verb into a (argv[0] is the verb). Returns -1 to go on, or the
 * exit code. */
static int balloon_parse(int argc, char **argv, const char *verb, BalloonArgs *a) {
        static const struct option opts[] = {
                { "help", no_argument, NULL, 'h' },
                { "qmp", required_argument, NULL, OPT_QMP },
                { "vm", required_argument, NULL, OPT_VM },
                { "expected-uid", required_argument, NULL, OPT_UID },
                { "timeout", required_argument, NULL, OPT_TIMEOUT },
                { "wait", no_argument, NULL, OPT_WAIT },
                { "tolerance", required_argument, NULL, OPT_TOL },
                { "wait-timeout", required_argument, NULL, OPT_WTIMEOUT },
                { "stall", required_argument, NULL, OPT_STALL },
                { "period", required_argument, NULL, OPT_PERIOD },
                {},
        };
        static char prog[32];
        int c, r;

        optind = 1;
        snprintf(prog, sizeof prog, "ballastctl balloon %s", verb);
        cli_set_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = balloon_option(c, optarg, a)) >= 0)
                        return r;
        if (!!a->qmp == !!a->vm)
                return cli_usage_error("balloon %s: give exactly one of --qmp PATH or --vm NAME", verb);
        return -1;
}

int cmd_balloon(int argc, char **argv) {
        BalloonArgs a = {
                .expected_uid = geteuid(),
                .timeout = 5 * USEC_PER_SEC,
                .tolerance = UINT64_C(16) << 20,
                .wait_timeout = 60 * USEC_PER_SEC,
                .stall = 3 * USEC_PER_SEC,
                .period = -1,
        };
        int r;

        if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
                fputs(balloon_usage, argc < 2 ? stderr : stdout);
                return argc < 2 ? EXIT_USAGE : EXIT_OK;
        }
        const char *verb = argv[1];
        if (strcmp(verb, "get") != 0 && strcmp(verb, "set") != 0 && strcmp(verb, "stats") != 0 &&
            strcmp(verb, "caps") != 0) {
                cli_command = "balloon";
                return cli_usage_error("unknown balloon command '%s' (get, set, stats, caps)", verb);
        }
        argc--;
        argv++;
        if ((r = balloon_parse(argc, argv, verb, &a)) >= 0)
                return r;

        if (strcmp(verb, "get") == 0 || strcmp(verb, "caps") == 0 || strcmp(verb, "stats") == 0) {
                if (optind != argc)
                        return cli_usage_error("balloon %s takes no arguments", verb);
                return verb[0] == 'g' ? do_get(&a) : verb[0] == 'c' ? do_caps(&a) : do_stats(&a);
        }
        /* set */
        if (optind + 1 != argc)
                return cli_usage_error("balloon set needs one SIZE (the target guest memory, e.g. 256M)");
        uint64_t target;
        if ((r = cli_parse_size("SIZE", argv[optind], &target)) != 0)
                return r;
        if (target < (UINT64_C(1) << 20))
                return cli_usage_error("a target below 1 MiB would take all the guest's memory");
        return do_set(&a, target);
}
