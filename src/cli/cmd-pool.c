/* SPDX-License-Identifier: MIT */
/* ballastctl pool fill|acquire|release|status|drain NAME: the command line of the warm pool that
 * ballastctl runs itself (B4.3); the machinery (state file, lock, workers) is src/pool/pool.c. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "pool/pool.h"
#include "shared/strutil.h"

static const char pool_usage[] =
        "Usage: ballastctl pool fill NAME --count N [--memory SIZE] [--park-size SIZE] [options]\n"
        "       ballastctl pool acquire NAME [--wait] [options]\n"
        "       ballastctl pool release NAME VM [--no-refill] [options]\n"
        "       ballastctl pool status NAME [options]\n"
        "       ballastctl pool drain NAME [options]\n"
        "\n"
        "A warm pool of VMs that ballastctl runs itself with the launcher and ballastd (B4.3).\n"
        "  fill     boots VMs named NAME-0, NAME-1, ... (detached, as 'vm start' does) until N are\n"
        "           parked or booting, registers each with ballastd (driver qemu, the VM's qmp.sock,\n"
        "           our uid, assigned = its memory) and parks it; waits until they are ready\n"
        "  acquire  hands out a parked VM: unparks it (answering as soon as ballastd has sent the\n"
        "           command, or with --wait once the guest has its memory), marks it in use, prints\n"
        "           its name and how long ballast's part took, and boots a replacement in the\n"
        "           background; no parked VM: exit 1\n"
        "  release  unregisters and stops a VM of the pool, and boots a replacement in the background\n"
        "  status   the members, their state and what ballastd says about them\n"
        "  drain    stops every VM of the pool (and any replacement being booted) and forgets the pool\n"
        "\n"
        "The state is $BALLAST_RUN_DIR/pool-NAME.json (with the launcher's VMs), changed under a lock;\n"
        "background replacements log to pool-NAME.log there. NAME: 1-24 of A-Z a-z 0-9 _ . -\n"
        "\n"
        "fill options:\n"
        "  --count N              how many VMs the pool keeps ready, 1-64 (required the first time)\n"
        "  --memory SIZE          each VM's memory (default 512M)\n"
        "  --park-size SIZE       the size VMs are parked at (default: ballastd's, 128M)\n"
        "  --cpus N               vCPUs of each VM (default 1)\n"
        "  --image DIR            the guest image (default: the launcher's search)\n"
        "  --boot-timeout DURATION  how long a VM may take to boot (default 180s)\n"
        "acquire options:\n"
        "  --wait                 answer once the guest has its memory\n"
        "release options:\n"
        "  --no-refill            do not boot a replacement\n"
        "\n"
        "Options of every pool command:\n" CTL_API_USAGE_OPTIONS "\n"
        "Examples:\n"
        "  ballastctl pool fill sandbox --count 3 --memory 512M --park-size 128M\n"
        "  vm=$(ballastctl --json pool acquire sandbox | jq -r .vm)\n"
        "  ballastctl vm exec \"$vm\" -- uname -a\n"
        "  ballastctl pool release sandbox \"$vm\"\n"
        "  ballastctl pool drain sandbox\n";

/* The pool's log lines (a failed member, a VM that would not stop) on stderr. */
static void say(void *userdata, const char *line) {
        (void) userdata;
        cli_error(EXIT_FAIL, "%s", line);
}

/* The pool named by argv[optind], or an exit code. */
static int open_pool(const char *name, Pool *p) {
        char err[256];
        if (pool_init(p, name, ctl_api_path(), arg_api_timeout, err, sizeof err) < 0)
                return cli_error(EXIT_FAIL, "%s", err);
        p->log = say;
        return -1;
}

static int pool_option(int c, const char *arg);

/* getopt over the command's options; -1 to go on, else the exit code. */
static int parse_options(int argc, char **argv, const struct option *opts) {
        int c, r;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = pool_option(c, optarg)) >= 0)
                        return r;
        return -1;
}

static int need_name(int argc, char **argv, int want, const char *what) {
        if (argc - optind != want)
                return cli_usage_error("pool %s needs %s", argv[0] + strlen("ballastctl pool "), what);
        if (!pool_name_is_valid(argv[optind]))
                return cli_usage_error(
                        "invalid pool name '%s': use 1-%d of A-Z a-z 0-9 _ . - (not starting with . or -)",
                        argv[optind], POOL_NAME_MAX);
        return -1;
}

/* The start of every pool command: its options, `want` arguments (the pool's NAME first) and the
 * pool. -1 to go on, else the exit code. */
static int begin(int argc, char **argv, const struct option *opts, int want, const char *what, Pool *p) {
        int r = parse_options(argc, argv, opts);
        if (r >= 0)
                return r;
        if ((r = need_name(argc, argv, want, what)) >= 0)
                return r;
        return open_pool(argv[optind], p);
}

/* fill */
static struct {
        uint64_t count, memory, park_size, cpus;
        bool have_count, have_memory, have_park, have_cpus, have_boot;
        const char *image;
        usec_t boot_timeout;
        bool wait, no_refill;
} o;

enum {
        OPT_COUNT = CTL_OPT_LOCAL,
        OPT_MEMORY,
        OPT_PARK_SIZE,
        OPT_CPUS,
        OPT_IMAGE,
        OPT_BOOT,
        OPT_WAIT,
        OPT_NO_REFILL,
};

static int pool_option(int c, const char *arg) {
        int r;
        switch (c) {
        case OPT_COUNT:
                if (parse_u64(arg, &o.count) < 0 || o.count < 1 || o.count > POOL_COUNT_MAX)
                        return cli_usage_error("invalid --count '%s' (1-%d)", arg, POOL_COUNT_MAX);
                o.have_count = true;
                return -1;
        case OPT_MEMORY:
                if ((r = cli_parse_size("--memory", arg, &o.memory)) != 0)
                        return r;
                if (o.memory < (UINT64_C(64) << 20) || o.memory % (UINT64_C(1) << 20))
                        return cli_usage_error("--memory must be a whole number of MiB, at least 64M");
                o.have_memory = true;
                return -1;
        case OPT_PARK_SIZE:
                if ((r = cli_parse_size("--park-size", arg, &o.park_size)) != 0)
                        return r;
                if (o.park_size < (UINT64_C(1) << 20))
                        return cli_usage_error("--park-size must be at least 1M");
                o.have_park = true;
                return -1;
        case OPT_CPUS:
                if (parse_u64(arg, &o.cpus) < 0 || o.cpus < 1 || o.cpus > 64)
                        return cli_usage_error("invalid --cpus '%s' (1-64)", arg);
                o.have_cpus = true;
                return -1;
        case OPT_IMAGE:
                o.image = arg;
                return -1;
        case OPT_BOOT:
                if ((r = cli_parse_duration("--boot-timeout", arg, &o.boot_timeout)) != 0)
                        return r;
                if (o.boot_timeout == 0)
                        return cli_usage_error("--boot-timeout must be longer than 0");
                o.have_boot = true;
                return -1;
        case OPT_WAIT:
                o.wait = true;
                return -1;
        case OPT_NO_REFILL:
                o.no_refill = true;
                return -1;
        default:
                return ctl_api_common_option(c, arg, pool_usage);
        }
}

static int show_members(json_t *pool);

/* The status JSON of the pool (what 'pool status' shows), or NULL after saying why. */
static json_t *load_status(Pool *p) {
        char err[600];
        int e;
        json_t *s = pool_status(p, &e, err, sizeof err);
        if (!s)
                cli_error(EXIT_FAIL, "%s", err);
        return s;
}

static int cmd_fill(Pool *p, char **args) {
        int r;
        const char *name = args[0];
        if (o.park_size && o.have_memory && o.park_size > o.memory)
                return cli_usage_error("--park-size is larger than --memory");
        PoolSettings s = {
                .count = o.count,
                .memory = o.memory,
                .park_size = o.park_size,
                .cpus = o.cpus,
                .have_count = o.have_count,
                .have_memory = o.have_memory,
                .have_park = o.have_park,
                .have_cpus = o.have_cpus,
                .have_boot = o.have_boot,
                .image = o.image,
                .boot_timeout = o.boot_timeout,
        };
        usec_t t0 = now_mono();
        size_t started = 0;
        char err[600];
        r = pool_fill(p, &s, &started, err, sizeof err);
        if (r == -EINVAL)
                return cli_usage_error("%s", err);
        if (r < 0 && started == 0)
                return cli_error(EXIT_FAIL, "%s", err);
        int ret = r < 0 ? EXIT_FAIL : EXIT_OK;
        json_t *st = load_status(p);
        if (!st)
                return cli_error(EXIT_FAIL, "pool %s is gone (drained meanwhile?)", name);
        uint64_t parked = pool_u64(st, "parked");
        if (parked < pool_u64(st, "count") && ret == EXIT_OK && pool_u64(st, "booting") == 0)
                ret = EXIT_FAIL;
        double secs = (double) (now_mono() - t0) / 1e6;
        if (arg_json) {
                json_object_set_new(st, "seconds", json_real(secs));
                cli_print_json(st);
                return ret;
        }
        char m[FORMAT_SIZE_MAX];
        printf("pool %s: %" PRIu64 " of %" PRIu64 " VMs parked (%zu started now) in %.1f s; %s each\n", name, parked,
               pool_u64(st, "count"), started, secs, format_size(m, sizeof m, pool_u64(st, "memory_bytes")));
        show_members(st);
        json_decref(st);
        return ret;
}

static int cmd_acquire(Pool *p, char **args) {
        const char *name = args[0];
        PoolAcquired a;
        char err[1200];
        if (pool_acquire(p, o.wait, &a, err, sizeof err) < 0)
                return cli_error(EXIT_FAIL, "%s", err);
        json_t *ans = a.answer;
        const char *res = json_string_value(json_object_get(ans, "result"));
        json_t *dms = json_object_get(ans, "elapsed_ms");
        if (arg_json) {
                json_t *j =
                        json_pack("{s:s,s:s,s:f,s:f,s:o,s:s,s:o,s:o}", "vm", a.vm, "pool", name, "unpark_ms",
                                  a.unpark_ms, "total_ms", a.total_ms, "daemon_ms",
                                  json_is_number(dms) ? json_real(json_number_value(dms)) : json_null(), "result", res,
                                  "target_bytes", json_incref(json_object_get(ans, "target_bytes")) ?: json_null(),
                                  "reached_bytes", json_incref(json_object_get(ans, "reached_bytes")) ?: json_null());
                ctl_api_print_json(j);
                json_decref(j);
        } else {
                char t[FORMAT_SIZE_MAX];
                printf("%s: acquired from pool %s, unparked to %s (%s) in %.1f ms (ballastd %.1f ms), %.1f ms in all\n",
                       a.vm, name, cli_json_size(t, sizeof t, json_object_get(ans, "target_bytes")), res, a.unpark_ms,
                       json_is_number(dms) ? json_number_value(dms) : 0.0, a.total_ms);
        }
        json_decref(ans);
        return EXIT_OK;
}

static int cmd_release(Pool *p, char **args) {
        int r;
        const char *name = args[0], *vm = args[1];
        usec_t t0 = now_mono();
        char err[600];
        r = pool_release(p, vm, !o.no_refill, err, sizeof err);
        if (r < 0)
                return r == -EIO ? EXIT_FAIL : cli_error(EXIT_FAIL, "%s", err); /* -EIO: said in the log */
        if (arg_json)
                cli_print_json(json_pack("{s:s,s:s,s:f,s:b}", "vm", vm, "pool", name, "seconds",
                                         (double) (now_mono() - t0) / 1e6, "refill", !o.no_refill));
        else
                printf("%s: released from pool %s (unregistered and stopped in %.2f s)%s\n", vm, name,
                       (double) (now_mono() - t0) / 1e6, o.no_refill ? "" : "; a replacement is booting");
        return EXIT_OK;
}

static int show_members(json_t *pool) {
        json_t *members = json_object_get(pool, "members"), *m;
        size_t i;
        if (json_array_size(members) == 0) {
                printf("no VMs\n");
                return EXIT_OK;
        }
        _cleanup_(cli_table_freep) CliTable *t =
                cli_table_new(8, 0x78, "VM", "STATE", "FOR", "DAEMON", "TARGET", "ACTUAL", "BOOT", "NOTE");
        if (!t)
                return cli_error(EXIT_FAIL, "out of memory");
        uint64_t now = now_usec(CLOCK_REALTIME);
        json_array_foreach(members, i, m) {
                json_t *d = json_object_get(m, "daemon");
                char age[32], tg[FORMAT_SIZE_MAX], ac[FORMAT_SIZE_MAX], boot[32] = "-", note[600] = "";
                cli_format_seconds(age, sizeof age, (double) (now - MIN(now, pool_u64(m, "since_us"))) / 1e6);
                json_t *bm = json_object_get(m, "boot_ms");
                if (json_is_number(bm))
                        snprintf(boot, sizeof boot, "%.1fs", json_number_value(bm) / 1000.0);
                if (json_is_false(json_object_get(m, "worker_alive")))
                        snprintf(note, sizeof note, "worker gone");
                else if (strcmp(pool_str(m, "state"), "parked") == 0 &&
                         json_is_string(json_object_get(m, "park_result")))
                        snprintf(note, sizeof note, "park %s", pool_str(m, "park_result"));
                if (pool_str(m, "error")[0])
                        snprintf(note, sizeof note, "%s", pool_str(m, "error"));
                if (cli_table_add(t, pool_str(m, "vm"), pool_str(m, "state"), age,
                                  json_is_object(d) ? cli_json_str(json_object_get(d, "status")) : "-",
                                  cli_json_size_compact(tg, sizeof tg, json_object_get(d, "target_bytes")),
                                  cli_json_size_compact(ac, sizeof ac, json_object_get(d, "actual_bytes")), boot,
                                  note[0] ? note : "-") < 0)
                        return cli_error(EXIT_FAIL, "out of memory");
        }
        cli_table_print(t, stdout);
        return EXIT_OK;
}

static int cmd_status(Pool *p, char **args) {
        int r;
        const char *name = args[0];
        json_t *s = load_status(p);
        if (!s)
                return EXIT_FAIL;
        if (arg_json) {
                cli_print_json(s);
                return EXIT_OK;
        }
        char m[FORMAT_SIZE_MAX], pk[FORMAT_SIZE_MAX];
        uint64_t park = pool_u64(s, "park_size_bytes");
        printf("pool %s: %" PRIu64 " wanted parked, %s each, parked at %s\n", name, pool_u64(s, "count"),
               format_size(m, sizeof m, pool_u64(s, "memory_bytes")),
               park ? format_size(pk, sizeof pk, park) : "ballastd's park size");
        printf("%" PRIu64 " parked, %" PRIu64 " booting, %" PRIu64 " in use, %" PRIu64 " stopping",
               pool_u64(s, "parked"), pool_u64(s, "booting"), pool_u64(s, "in_use"), pool_u64(s, "stopping"));
        if (pool_u64(s, "failures"))
                printf("; %" PRIu64 " failed, last: %s", pool_u64(s, "failures"), pool_str(s, "last_error"));
        putchar('\n');
        if (json_is_string(json_object_get(s, "daemon_error")))
                printf("(%s)\n", pool_str(s, "daemon_error"));
        r = show_members(s);
        json_decref(s);
        return r;
}

static int cmd_drain(Pool *p, char **args) {
        int r;
        const char *name = args[0];
        usec_t t0 = now_mono();
        json_t *names = NULL;
        char err[600];
        r = pool_drain(p, &names, err, sizeof err);
        if (!names) /* nothing was tried */
                return cli_error(EXIT_FAIL, "%s", err);
        int ret = r < 0 ? EXIT_FAIL : EXIT_OK; /* each VM that would not stop is said in the log */
        if (arg_json)
                cli_print_json(json_pack("{s:s,s:O,s:f,s:b}", "pool", name, "stopped", names, "seconds",
                                         (double) (now_mono() - t0) / 1e6, "ok", ret == EXIT_OK));
        else
                printf("pool %s drained: %zu VMs stopped in %.2f s\n", name, json_array_size(names),
                       (double) (now_mono() - t0) / 1e6);
        json_decref(names);
        return ret;
}

static const struct option fill_opts[] = {
        { "count", required_argument, NULL, OPT_COUNT },
        { "memory", required_argument, NULL, OPT_MEMORY },
        { "park-size", required_argument, NULL, OPT_PARK_SIZE },
        { "cpus", required_argument, NULL, OPT_CPUS },
        { "image", required_argument, NULL, OPT_IMAGE },
        { "boot-timeout", required_argument, NULL, OPT_BOOT },
        CTL_API_LONG_OPTIONS,
        {},
};

static const struct option acquire_opts[] = {
        { "wait", no_argument, NULL, OPT_WAIT },
        CTL_API_LONG_OPTIONS,
        {},
};

static const struct option release_opts[] = {
        { "no-refill", no_argument, NULL, OPT_NO_REFILL },
        CTL_API_LONG_OPTIONS,
        {},
};

static const struct option status_opts[] = {
        CTL_API_LONG_OPTIONS,
        {},
};

static const struct option drain_opts[] = {
        CTL_API_LONG_OPTIONS,
        {},
};

/* The pool commands: their options, their arguments (the pool's NAME first), what they do. */
static const struct {
        const char *verb;
        const struct option *opts;
        int want;
        const char *what;
        int (*run)(Pool *p, char **args);
} verbs[] = {
        { "fill", fill_opts, 1, "NAME", cmd_fill },
        { "acquire", acquire_opts, 1, "NAME", cmd_acquire },
        { "release", release_opts, 2, "NAME VM", cmd_release },
        { "status", status_opts, 1, "NAME", cmd_status },
        { "drain", drain_opts, 1, "NAME", cmd_drain },
};

int cmd_pool(int argc, char **argv) {
        const char *verb;
        int r = cli_subcommand(&argc, &argv, "pool", pool_usage, &verb);
        if (r >= 0)
                return r;
        for (size_t i = 0; i < ELEMENTSOF(verbs); i++) {
                if (strcmp(verb, verbs[i].verb) != 0)
                        continue;
                Pool p;
                r = begin(argc, argv, verbs[i].opts, verbs[i].want, verbs[i].what, &p);
                return r >= 0 ? r : verbs[i].run(&p, argv + optind);
        }
        cli_command = "pool";
        return cli_usage_error("unknown pool command '%s' (fill, acquire, release, status, drain)", verb);
}
