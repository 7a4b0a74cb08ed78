/* SPDX-License-Identifier: MIT */
/* ballastctl vm start|stop|list|info|exec|ping|meminfo|fill|verify|release|agent — the launcher.
 * vm add|rm|show ask ballastd and live in cmd-vms.c. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"
#include "vm/agent.h"
#include "vm/launcher.h"

#define VM_START_OPTIONS                                                                                               \
        "  --memory SIZE              guest RAM (default 512M)\n"                                                      \
        "  --cpus N                   vCPUs (default 1)\n"                                                             \
        "  --deflate-on-oom on|off    balloon gives memory back when the guest is OOM (default on)\n"                  \
        "  --free-page-reporting on|off  guest returns freed pages to the host (default on)\n"                         \
        "  --stats-period SECONDS     guest statistics polling from boot (default 0 = off)\n"                          \
        "  --image DIR                guest image (vmlinuz + initramfs.cpio.gz)\n"                                     \
        "  --boot-timeout DURATION    wait this long for the guest agent (default 60s)\n"                              \
        "  --no-wait                  return once QEMU runs, without waiting for the guest\n"                          \
        "  --append ARGS              extra guest kernel command line\n"                                               \
        "  --foreground               stay in the foreground until the VM ends; the VM dies with this\n"               \
        "                             process (even on SIGKILL)\n"

#define VM_RUN_DIR_NOTE                                                                                                \
        "VMs live in $BALLAST_RUN_DIR (default /run/ballast/vms for root). Each VM's directory holds\n"                \
        "qmp.sock (for ballastd), qmp-ctl.sock (for ballastctl), agent.sock and the logs.\n"

static const char vm_usage[] =
        "Usage: ballastctl vm start NAME [--memory SIZE] [options]\n"
        "       ballastctl vm stop NAME... [--grace DURATION] | --all\n"
        "       ballastctl vm list [--json]\n"
        "       ballastctl vm info NAME\n"
        "       ballastctl vm exec NAME [--timeout DURATION] -- CMD [ARG...]\n"
        "       ballastctl vm ping|meminfo|drop-caches NAME\n"
        "       ballastctl vm fill NAME MIB [--seed N] [--no-hold] [--check-zero]\n"
        "       ballastctl vm verify|release NAME HANDLE\n"
        "       ballastctl vm agent NAME CMD [JSON-ARGS]\n"
        "       ballastctl vm snapshot NAME FILE [--stop | --resume]   (see 'ballastctl vm snapshot --help')\n"
        "       ballastctl vm resume NAME\n"
        "       ballastctl vm start NAME --restore FILE\n"
        "\n"
        "VMs registered with ballastd (see 'ballastctl vm add --help', and 'ballastctl vms'):\n"
        "       ballastctl vm add ID --driver DRIVER (--socket PATH | --domain NAME) --assigned SIZE\n"
        "       ballastctl vm rm ID\n"
        "       ballastctl vm show ID\n"
        "\n"
        "start options:\n" VM_START_OPTIONS "\n" VM_RUN_DIR_NOTE
        "Run 'ballastctl vm COMMAND --help' for one command's options.\n";

static const char vm_start_usage[] =
        "Usage: ballastctl vm start NAME [options]\n"
        "       ballastctl vm start NAME --restore FILE [options]   (see 'ballastctl vm snapshot --help')\n"
        "\n"
        "Boots a QEMU guest from ballast's guest image under a supervisor and, unless\n"
        "--no-wait, returns when the guest agent answers. With --restore, starts it from a\n"
        "snapshot that 'ballastctl vm snapshot' saved instead.\n"
        "\n"
        "Options:\n" VM_START_OPTIONS "  --json                     machine-readable output\n"
        "  --help                     show this text\n"
        "\n" VM_RUN_DIR_NOTE;

static const char vm_stop_usage[] = "Usage: ballastctl vm stop NAME... [--grace DURATION]\n"
                                    "       ballastctl vm stop --all [--grace DURATION]\n"
                                    "\n"
                                    "Stops launcher VMs: SIGTERM, then SIGKILL after the grace period, then removes\n"
                                    "each VM's directory.\n"
                                    "\n"
                                    "Options:\n"
                                    "  --grace DURATION    wait this long after SIGTERM (default 10s)\n"
                                    "  --all               every VM of the launcher\n"
                                    "  --help              show this text\n";

static const char vm_list_usage[] =
        "Usage: ballastctl vm list [--json]\n"
        "\n"
        "Lists the launcher's VMs: state, QEMU pid, memory, QEMU's resident memory, uptime.\n";

static const char vm_info_usage[] = "Usage: ballastctl vm info NAME [--json]\n"
                                    "\n"
                                    "Shows one launcher VM: state, pids, memory, QEMU's resident memory, directory.\n";

static const char vm_exec_usage[] =
        "Usage: ballastctl vm exec NAME [--timeout DURATION] [--] CMD [ARG...]\n"
        "\n"
        "Runs a command in the guest through its agent and prints its output; the exit status is the\n"
        "command's.\n"
        "\n"
        "Options:\n"
        "  -t, --timeout DURATION   kill the command after this long (default 10s)\n"
        "  --json                   the agent's reply as JSON\n"
        "  --help                   show this text\n";

static const char vm_simple_usage[] =
        "Usage: ballastctl vm ping NAME\n"
        "       ballastctl vm meminfo NAME\n"
        "       ballastctl vm drop-caches NAME\n"
        "\n"
        "Asks the guest agent: ping (version, zram, balloon), meminfo (the guest's\n"
        "/proc/meminfo), drop-caches (drops the guest's page cache). Prints the reply as\n"
        "JSON.\n";

static const char vm_fill_usage[] =
        "Usage: ballastctl vm fill NAME MIB [--seed N] [--no-hold] [--check-zero] [--timeout DURATION]\n"
        "\n"
        "Has the guest agent fill MIB MiB of anonymous memory with a pattern (for tests). Prints the\n"
        "reply as JSON, with a HANDLE for 'vm verify' and 'vm release'.\n"
        "\n"
        "Options:\n"
        "  --seed N              pattern seed (default 1)\n"
        "  --no-hold             free the memory at once\n"
        "  --check-zero          check that the pages were zero before filling\n"
        "  --timeout DURATION    wait this long for the agent (default 120s)\n"
        "  --help                show this text\n";

static const char vm_handle_usage[] = "Usage: ballastctl vm verify NAME HANDLE\n"
                                      "       ballastctl vm release NAME HANDLE\n"
                                      "\n"
                                      "verify: checks the pattern of memory filled by 'vm fill'; release: frees it.\n"
                                      "Prints the agent's reply as JSON.\n";

static const char vm_agent_usage[] = "Usage: ballastctl vm agent NAME CMD [JSON-ARGS]\n"
                                     "\n"
                                     "Sends one command to the guest agent (docs/agent-protocol.md), with JSON-ARGS\n"
                                     "(a JSON object) as its arguments, and prints the reply as JSON.\n";

/* For the verbs that take only positional arguments: --help, and no unknown option. Returns -1
 * to go on (the arguments are argv[optind..argc)), or the exit code. */
static int vm_parse_no_options(int argc, char **argv, const char *usage) {
        static const struct option opts[] = {
                { "help", no_argument, NULL, 'h' },
                {},
        };
        int c = getopt_long(argc, argv, "h", opts, NULL);
        return c >= 0 ? cli_common_option(c, usage) : -1;
}

static int agent_open(const char *name, AgentClient **ret) {
        char path[512], err[256];
        if (vm_socket_path(name, "agent", path, sizeof(path)) < 0)
                return cli_usage_error("invalid VM name '%s'", name);
        if (access(path, F_OK) < 0)
                return cli_error(EXIT_FAIL, "no running VM named '%s'", name);
        int r = agent_connect(path, geteuid(), 5 * USEC_PER_SEC, ret, err, sizeof(err));
        if (r < 0)
                return cli_error(EXIT_FAIL, "VM '%s': %s", name, err);
        return 0;
}

/* Calls the agent; returns the reply (owned) or NULL after printing why. */
static json_t *agent_do(const char *name, const char *cmd, json_t *args, usec_t timeout) {
        AgentClient *a = NULL;
        if (agent_open(name, &a) != 0) {
                json_decref(args);
                return NULL;
        }
        char err[256];
        json_t *reply = NULL;
        int r = agent_call(a, cmd, args, timeout, &reply, err, sizeof(err));
        agent_close(a);
        if (r < 0) {
                cli_error(EXIT_FAIL, "VM '%s': %s", name, err);
                return NULL;
        }
        return reply;
}

static const char *ready_summary(json_t *ping, char *buf, size_t len) {
        json_t *z = json_object_get(ping, "zram"), *b = json_object_get(ping, "balloon");
        char zs[FORMAT_SIZE_MAX];
        json_t *ds = json_object_get(z, "disksize");
        snprintf(buf, len, "agent %s, zram %s %s, balloon %s",
                 json_string_value(json_object_get(ping, "version")) ?: "?",
                 json_string_value(json_object_get(z, "algorithm")) ?: "-",
                 json_is_integer(ds) ? format_size(zs, sizeof(zs), (uint64_t) json_integer_value(ds)) : "-",
                 json_is_true(json_object_get(b, "present")) ? json_string_value(json_object_get(b, "device")) ?: "yes"
                                                             : "absent");
        return cli_text_sanitize(buf); /* the guest's words */
}

/* --foreground: stay until the VM ends; SIGINT/SIGTERM stop it. If we are killed outright, the
 * supervisor gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops QEMU itself. */
static int supervise_foreground(pid_t sup) {
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        for (;;) {
                int st;
                pid_t p = waitpid(sup, &st, WNOHANG);
                if (p == sup)
                        return WIFEXITED(st) ? WEXITSTATUS(st) : EXIT_FAIL;
                if (p < 0)
                        return EXIT_FAIL;
                siginfo_t si;
                if (sigwaitinfo(&mask, &si) < 0)
                        continue;
                if (si.si_signo != SIGCHLD)
                        kill(sup, SIGTERM);
        }
}

enum {
        OPT_START_MEM = 256,
        OPT_START_CPUS,
        OPT_START_DOO,
        OPT_START_FPR,
        OPT_START_STATS,
        OPT_START_IMAGE,
        OPT_START_BOOT,
        OPT_START_NOWAIT,
        OPT_START_APPEND,
        OPT_START_FG
};

typedef struct VmStartArgs {
        VmSpec spec;
        usec_t boot_timeout;
        bool wait;
} VmStartArgs;

/* Applies one of vm start's options (c, with its argument arg) to a. Returns -1 to go on, or the
 * exit code. */
static int vm_start_option(int c, const char *arg, VmStartArgs *a) {
        uint64_t v;
        int r;
        switch (c) {
        case OPT_START_MEM:
                if ((r = cli_parse_size("--memory", arg, &a->spec.memory)) != 0)
                        return r;
                break;
        case OPT_START_CPUS:
                if (parse_u64(arg, &v) < 0 || v < 1 || v > 64)
                        return cli_usage_error("invalid --cpus '%s' (1-64)", arg);
                a->spec.cpus = (unsigned) v;
                break;
        case OPT_START_DOO:
                if ((r = cli_parse_bool("--deflate-on-oom", arg, &a->spec.deflate_on_oom)) != 0)
                        return r;
                break;
        case OPT_START_FPR:
                if ((r = cli_parse_bool("--free-page-reporting", arg, &a->spec.free_page_reporting)) != 0)
                        return r;
                break;
        case OPT_START_STATS:
                if (parse_u64(arg, &v) < 0 || v > 3600)
                        return cli_usage_error("invalid --stats-period '%s' (seconds, 0-3600)", arg);
                a->spec.stats_period = (uint32_t) v;
                break;
        case OPT_START_IMAGE:
                a->spec.image_dir = arg;
                break;
        case OPT_START_BOOT:
                if ((r = cli_parse_duration("--boot-timeout", arg, &a->boot_timeout)) != 0)
                        return r;
                break;
        case OPT_START_NOWAIT:
                a->wait = false;
                break;
        case OPT_START_APPEND:
                a->spec.extra_cmdline = arg;
                break;
        case OPT_START_FG:
                a->spec.foreground = true;
                break;
        default:
                return cli_common_option(c, vm_start_usage);
        }
        return -1;
}

/* Parses vm start's options and NAME into a. Returns -1 to go on, or the exit code. */
static int vm_start_parse(int argc, char **argv, VmStartArgs *a) {
        static const struct option opts[] = {
                { "memory", required_argument, NULL, OPT_START_MEM },
                { "cpus", required_argument, NULL, OPT_START_CPUS },
                { "deflate-on-oom", required_argument, NULL, OPT_START_DOO },
                { "free-page-reporting", required_argument, NULL, OPT_START_FPR },
                { "stats-period", required_argument, NULL, OPT_START_STATS },
                { "image", required_argument, NULL, OPT_START_IMAGE },
                { "boot-timeout", required_argument, NULL, OPT_START_BOOT },
                { "no-wait", no_argument, NULL, OPT_START_NOWAIT },
                { "append", required_argument, NULL, OPT_START_APPEND },
                { "foreground", no_argument, NULL, OPT_START_FG },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        vm_spec_init(&a->spec);
        a->boot_timeout = 60 * USEC_PER_SEC;
        a->wait = true;
        int c, r;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = vm_start_option(c, optarg, a)) >= 0)
                        return r;
        if (optind + 1 != argc)
                return cli_usage_error("vm start needs exactly one NAME");
        a->spec.name = argv[optind];
        return -1;
}

/* Waits for the started VM's guest agent. Returns 0 with its ping reply (owned) in ret, or, after
 * stopping the VM and saying why (with the start of qemu.log), the exit code. */
static int vm_start_wait_ready(const char *name, const VmInfo *info, usec_t timeout, json_t **ret) {
        char path[512], err[512];
        vm_socket_path(name, "agent", path, sizeof(path));
        int r = agent_wait_ready(path, geteuid(), timeout, info->qemu_pid, ret, err, sizeof(err));
        if (r >= 0)
                return 0;
        /* Leave nothing half-started behind; point at the logs first. */
        char tail[1024] = "";
        char log[PATH_MAX + 64];
        snprintf(log, sizeof(log), "%s/qemu.log", info->dir);
        FILE *f = fopen(log, "re");
        if (f) {
                size_t n = fread(tail, 1, sizeof(tail) - 1, f);
                tail[n] = '\0';
                fclose(f);
        }
        char e2[256];
        vm_stop(name, 5 * USEC_PER_SEC, e2, sizeof(e2));
        return cli_error(EXIT_FAIL, "VM '%s' did not become ready: %s%s%s", name, err, tail[0] ? "\nqemu.log: " : "",
                         tail);
}

/* Prints what vm start did: the VM, and the guest's ping reply if it was waited for. */
static void vm_start_print(const VmSpec *s, const VmInfo *info, double secs, json_t *ping) {
        if (arg_json) {
                json_t *j = json_pack("{s:s,s:i,s:I,s:s,s:s,s:f,s:b}", "name", s->name, "qemu_pid",
                                      (int) info->qemu_pid, "memory", (json_int_t) s->memory, "dir", info->dir, "accel",
                                      info->accel, "seconds", secs, "ready", ping != NULL);
                if (ping)
                        json_object_set(j, "agent", ping);
                cli_print_json(j);
        } else {
                char m[FORMAT_SIZE_MAX], sum[256];
                printf("VM %s started: QEMU pid %d, %s, %s", s->name, (int) info->qemu_pid,
                       format_size(m, sizeof(m), s->memory), info->accel);
                if (ping)
                        printf("; guest ready in %.2f s (%s)\n", secs, ready_summary(ping, sum, sizeof(sum)));
                else
                        printf("\n");
        }
}

static int vm_start_cmd(int argc, char **argv) {
        VmStartArgs a;
        int r = vm_start_parse(argc, argv, &a);
        if (r >= 0)
                return r;
        const VmSpec *s = &a.spec;

        char err[512];
        VmInfo info;
        usec_t t0 = now_mono();
        r = vm_start(s, &info, err, sizeof(err));
        if (r < 0)
                return cli_error(EXIT_FAIL, "cannot start VM '%s': %s", s->name, err);

        json_t *ping = NULL;
        if (a.wait && (r = vm_start_wait_ready(s->name, &info, a.boot_timeout, &ping)) != 0)
                return r;
        vm_start_print(s, &info, (double) (now_mono() - t0) / 1e6, ping);
        json_decref(ping);
        fflush(stdout);
        if (s->foreground)
                return supervise_foreground(info.supervisor_pid);
        return EXIT_OK;
}

static int vm_stop_cmd(int argc, char **argv) {
        enum { OPT_GRACE = 256, OPT_ALL };
        static const struct option opts[] = {
                { "grace", required_argument, NULL, OPT_GRACE },
                { "all", no_argument, NULL, OPT_ALL },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        usec_t grace = 10 * USEC_PER_SEC;
        bool all = false;
        int c, r;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_GRACE:
                        if ((r = cli_parse_duration("--grace", optarg, &grace)) != 0)
                                return r;
                        break;
                case OPT_ALL:
                        all = true;
                        break;
                default:
                        return cli_common_option(c, vm_stop_usage);
                }
        }
        if (all == (optind < argc))
                return cli_usage_error("vm stop needs VM names or --all");

        VmInfo *list = NULL;
        size_t n = 0;
        if (all && vm_list(&list, &n) < 0)
                return cli_error(EXIT_FAIL, "cannot list VMs");
        int ret = EXIT_OK;
        size_t count = all ? n : (size_t) (argc - optind);
        for (size_t i = 0; i < count; i++) {
                const char *name = all ? list[i].name : argv[optind + (int) i];
                char err[512];
                usec_t t0 = now_mono();
                r = vm_stop(name, grace, err, sizeof(err));
                if (r < 0) {
                        cli_error(EXIT_FAIL, "%s", err);
                        ret = EXIT_FAIL;
                } else if (!arg_json)
                        printf("VM %s stopped in %.2f s\n", name, (double) (now_mono() - t0) / 1e6);
        }
        free(list);
        return ret;
}

static int vm_list_cmd(int argc, char **argv) {
        int r = vm_parse_no_options(argc, argv, vm_list_usage);
        if (r >= 0)
                return r;
        if (optind < argc)
                return cli_usage_error("vm list takes no arguments");
        VmInfo *list = NULL;
        size_t n = 0;
        r = vm_list(&list, &n);
        if (r < 0)
                return cli_error(EXIT_FAIL, "cannot list VMs: %s", strerror(-r));
        uint64_t now_rt = now_usec(CLOCK_REALTIME);
        if (arg_json) {
                json_t *arr = json_array();
                for (size_t i = 0; i < n; i++) {
                        uint64_t rss = 0;
                        if (list[i].qemu_alive)
                                proc_rss(list[i].qemu_pid, &rss);
                        json_array_append_new(
                                arr, json_pack("{s:s,s:s,s:i,s:i,s:I,s:I,s:s,s:b,s:b,s:s}", "name", list[i].name,
                                               "state", list[i].state, "qemu_pid", (int) list[i].qemu_pid,
                                               "supervisor_pid", (int) list[i].supervisor_pid, "memory",
                                               (json_int_t) list[i].memory, "rss", (json_int_t) rss, "dir", list[i].dir,
                                               "deflate_on_oom", list[i].deflate_on_oom, "free_page_reporting",
                                               list[i].free_page_reporting, "exit_status", list[i].exit_status));
                }
                cli_print_json(arr);
                free(list);
                return EXIT_OK;
        }
        if (n == 0) {
                printf("no VMs\n");
                return EXIT_OK;
        }
        printf("%-16s %-8s %8s %10s %10s %9s\n", "NAME", "STATE", "PID", "MEMORY", "QEMU RSS", "UPTIME");
        for (size_t i = 0; i < n; i++) {
                char m[FORMAT_SIZE_MAX], rs[FORMAT_SIZE_MAX] = "-", up[32] = "-";
                uint64_t rss;
                if (list[i].qemu_alive && proc_rss(list[i].qemu_pid, &rss) == 0)
                        format_size(rs, sizeof(rs), rss);
                if (list[i].qemu_alive && list[i].started_realtime_us && now_rt > list[i].started_realtime_us)
                        snprintf(up, sizeof(up), "%" PRIu64 " s",
                                 (now_rt - list[i].started_realtime_us) / USEC_PER_SEC);
                printf("%-16s %-8s %8d %10s %10s %9s\n", list[i].name, list[i].state, (int) list[i].qemu_pid,
                       format_size(m, sizeof(m), list[i].memory), rs, up);
        }
        free(list);
        return EXIT_OK;
}

static int vm_info_cmd(int argc, char **argv) {
        int r = vm_parse_no_options(argc, argv, vm_info_usage);
        if (r >= 0)
                return r;
        if (optind + 1 != argc)
                return cli_usage_error("vm info needs one NAME");
        VmInfo v;
        if (vm_info(argv[optind], &v) < 0)
                return cli_error(EXIT_FAIL, "no VM named '%s'", argv[optind]);
        uint64_t rss = 0;
        if (v.qemu_alive)
                proc_rss(v.qemu_pid, &rss);
        if (arg_json) {
                cli_print_json(json_pack("{s:s,s:s,s:i,s:i,s:I,s:I,s:s,s:s}", "name", v.name, "state", v.state,
                                         "qemu_pid", (int) v.qemu_pid, "supervisor_pid", (int) v.supervisor_pid,
                                         "memory", (json_int_t) v.memory, "rss", (json_int_t) rss, "dir", v.dir,
                                         "exit_status", v.exit_status));
                return EXIT_OK;
        }
        char m[FORMAT_SIZE_MAX], rs[FORMAT_SIZE_MAX];
        printf("name        %s\nstate       %s%s%s\nqemu pid    %d\nsupervisor  %d%s\nmemory      %s\n"
               "qemu rss    %s\ndirectory   %s\n",
               v.name, v.state, v.exit_status[0] ? " " : "", v.exit_status, (int) v.qemu_pid, (int) v.supervisor_pid,
               v.supervisor_alive ? "" : " (gone)", format_size(m, sizeof(m), v.memory),
               v.qemu_alive ? format_size(rs, sizeof(rs), rss) : "-", v.dir);
        return EXIT_OK;
}

static void write_out(FILE *f, json_t *s) {
        if (json_is_string(s))
                fwrite(json_string_value(s), 1, json_string_length(s), f);
}

static int vm_exec_cmd(int argc, char **argv) {
        static const struct option opts[] = {
                { "timeout", required_argument, NULL, 't' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        usec_t timeout = 10 * USEC_PER_SEC;
        const char *name = NULL;
        int c, r;
        /* Options may stand before or after NAME; everything after "--" (or after the first
         * word following NAME) is the command. "+" stops getopt at NAME, then we go on past it. */
        for (int pass = 0; pass < 2; pass++) {
                while ((c = getopt_long(argc, argv, "+t:h", opts, NULL)) >= 0) {
                        if (c != 't')
                                return cli_common_option(c, vm_exec_usage);
                        if ((r = cli_parse_duration("--timeout", optarg, &timeout)) != 0)
                                return r;
                }
                if (pass == 0) {
                        if (optind >= argc || strcmp(argv[optind], "--") == 0)
                                return cli_usage_error("vm exec needs NAME -- CMD [ARG...]");
                        name = argv[optind++];
                }
        }
        if (optind < argc && strcmp(argv[optind], "--") == 0)
                optind++;
        if (optind >= argc)
                return cli_usage_error("vm exec needs a command after NAME --");
        json_t *cmdv = json_array();
        for (int i = optind; i < argc; i++)
                json_array_append_new(cmdv, json_string(argv[i]));
        json_t *args = json_pack("{s:o,s:I}", "argv", cmdv, "timeout_ms", (json_int_t) (timeout / USEC_PER_MSEC));
        json_t *reply = agent_do(name, "exec", args, usec_add(timeout, 5 * USEC_PER_SEC));
        if (!reply)
                return EXIT_FAIL;
        if (arg_json) {
                json_t *code = json_object_get(reply, "exit_code");
                int rc = json_is_true(json_object_get(reply, "ok")) && json_is_integer(code)
                                 ? (int) json_integer_value(code)
                                 : EXIT_FAIL;
                cli_print_json(reply);
                return rc;
        }
        if (!json_is_true(json_object_get(reply, "ok"))) {
                r = cli_error(EXIT_FAIL, "VM '%s': exec failed: %s", name,
                              json_string_value(json_object_get(reply, "error")) ?: "?");
                json_decref(reply);
                return r;
        }
        write_out(stdout, json_object_get(reply, "stdout"));
        write_out(stderr, json_object_get(reply, "stderr"));
        fflush(stdout);
        if (json_is_true(json_object_get(reply, "timed_out")))
                fprintf(stderr, "ballastctl: command timed out and was killed\n");
        json_t *code = json_object_get(reply, "exit_code");
        int rc = json_is_integer(code) ? (int) json_integer_value(code) : EXIT_FAIL;
        json_decref(reply);
        return rc;
}

/* Simple agent calls: prints the reply as JSON (the commands are for tests and scripts). */
static int vm_agent_simple(const char *name, const char *cmd, json_t *args, usec_t timeout) {
        json_t *reply = agent_do(name, cmd, args, timeout);
        if (!reply)
                return EXIT_FAIL;
        bool ok = json_is_true(json_object_get(reply, "ok"));
        if (!ok && !arg_json)
                cli_error(EXIT_FAIL, "VM '%s': %s: %s", name, cmd,
                          json_string_value(json_object_get(reply, "error")) ?: "failed");
        cli_print_json(reply);
        return ok ? EXIT_OK : EXIT_FAIL;
}

static int vm_fill_cmd(int argc, char **argv) {
        enum { OPT_SEED = 256, OPT_NOHOLD, OPT_CHECKZERO, OPT_TIMEOUT };
        static const struct option opts[] = {
                { "seed", required_argument, NULL, OPT_SEED },
                { "no-hold", no_argument, NULL, OPT_NOHOLD },
                { "check-zero", no_argument, NULL, OPT_CHECKZERO },
                { "timeout", required_argument, NULL, OPT_TIMEOUT },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        uint64_t seed = 1, mib;
        bool hold = true, check_zero = false;
        usec_t timeout = 120 * USEC_PER_SEC;
        int c, r;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_SEED:
                        if (parse_u64(optarg, &seed) < 0 || seed > UINT32_MAX)
                                return cli_usage_error("invalid --seed '%s'", optarg);
                        break;
                case OPT_NOHOLD:
                        hold = false;
                        break;
                case OPT_CHECKZERO:
                        check_zero = true;
                        break;
                case OPT_TIMEOUT:
                        if ((r = cli_parse_duration("--timeout", optarg, &timeout)) != 0)
                                return r;
                        break;
                default:
                        return cli_common_option(c, vm_fill_usage);
                }
        }
        if (optind + 2 != argc || parse_u64(argv[optind + 1], &mib) < 0 || mib < 1 || mib > (1u << 20))
                return cli_usage_error("vm fill needs NAME MIB");
        json_t *args = json_pack("{s:I,s:I,s:b,s:b}", "mib", (json_int_t) mib, "seed", (json_int_t) seed, "hold", hold,
                                 "check_zero", check_zero);
        return vm_agent_simple(argv[optind], "fill", args, timeout);
}

static int vm_handle_cmd(const char *verb, int argc, char **argv) {
        uint64_t h;
        int r = vm_parse_no_options(argc, argv, vm_handle_usage);
        if (r >= 0)
                return r;
        if (optind + 2 != argc || parse_u64(argv[optind + 1], &h) < 0)
                return cli_usage_error("vm %s needs NAME HANDLE", verb);
        return vm_agent_simple(argv[optind], verb, json_pack("{s:I}", "handle", (json_int_t) h), 120 * USEC_PER_SEC);
}

static int vm_raw_agent_cmd(int argc, char **argv) {
        int r = vm_parse_no_options(argc, argv, vm_agent_usage);
        if (r >= 0)
                return r;
        argc -= optind;
        argv += optind;
        if (argc != 2 && argc != 3)
                return cli_usage_error("vm agent needs NAME CMD [JSON-ARGS]");
        json_t *args = NULL;
        if (argc == 3) {
                json_error_t je;
                args = json_loads(argv[2], 0, &je);
                if (!json_is_object(args)) {
                        json_decref(args);
                        return cli_usage_error("JSON-ARGS must be a JSON object: %s", je.text);
                }
        }
        return vm_agent_simple(argv[0], argv[1], args, 120 * USEC_PER_SEC);
}

static int vm_simple_cmd(const char *verb, int argc, char **argv) {
        int r = vm_parse_no_options(argc, argv, vm_simple_usage);
        if (r >= 0)
                return r;
        if (optind + 1 != argc)
                return cli_usage_error("vm %s needs one NAME", verb);
        return vm_agent_simple(argv[optind], verb, NULL, 10 * USEC_PER_SEC);
}

int cmd_vm(int argc, char **argv) {
        const char *verb;
        int r = cli_subcommand(&argc, &argv, "vm", vm_usage, &verb);
        if (r >= 0)
                return r;
        if (strcmp(verb, "add") == 0)
                return cmd_vm_add(argc, argv);
        if (strcmp(verb, "rm") == 0)
                return cmd_vm_rm(argc, argv);
        if (strcmp(verb, "show") == 0)
                return cmd_vm_show(argc, argv);
        if (strcmp(verb, "start") == 0)
                return cmd_vm_start_is_restore(argc, argv) ? cmd_vm_restore(argc, argv) : vm_start_cmd(argc, argv);
        if (strcmp(verb, "snapshot") == 0)
                return cmd_vm_snapshot(argc, argv);
        if (strcmp(verb, "resume") == 0)
                return cmd_vm_resume(argc, argv);
        if (strcmp(verb, "stop") == 0)
                return vm_stop_cmd(argc, argv);
        if (strcmp(verb, "list") == 0)
                return vm_list_cmd(argc, argv);
        if (strcmp(verb, "info") == 0)
                return vm_info_cmd(argc, argv);
        if (strcmp(verb, "exec") == 0)
                return vm_exec_cmd(argc, argv);
        if (strcmp(verb, "fill") == 0)
                return vm_fill_cmd(argc, argv);
        if (strcmp(verb, "verify") == 0 || strcmp(verb, "release") == 0)
                return vm_handle_cmd(verb, argc, argv);
        if (strcmp(verb, "agent") == 0)
                return vm_raw_agent_cmd(argc, argv);
        if (strcmp(verb, "ping") == 0 || strcmp(verb, "meminfo") == 0 || strcmp(verb, "drop-caches") == 0)
                return vm_simple_cmd(verb, argc, argv);
        cli_command = "vm";
        return cli_usage_error("unknown vm command '%s'", verb);
}
