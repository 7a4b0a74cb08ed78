/* SPDX-License-Identifier: MIT */
/* ballastctl vm snapshot|resume, and vm start --restore: snapshots of launcher VMs (QEMU migration
 * to a file, docs/launcher.md). Dispatched by cmd_vm() in cmd-vm.c. */
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"
#include "vm/agent.h"
#include "vm/launcher.h"

static const char snapshot_usage[] =
        "Usage: ballastctl vm snapshot NAME FILE [--stop | --resume] [--timeout DURATION]\n"
        "       ballastctl vm resume NAME\n"
        "       ballastctl vm start NAME --restore FILE [--image DIR] [--boot-timeout DURATION]\n"
        "                                [--timeout DURATION] [--no-wait]\n"
        "\n"
        "snapshot pauses the VM and saves its memory and device state (the balloon's included) to\n"
        "FILE, through QEMU's migration to a file; FILE is replaced only by a complete snapshot. The\n"
        "VM stays paused, as a Firecracker snapshot leaves it: 'vm resume' runs it again, 'vm stop'\n"
        "ends it; --resume and --stop do either at once.\n"
        "start --restore starts VM NAME (any name not in use) from FILE with the machine it was taken\n"
        "from (memory, vCPUs, balloon options, statistics period, guest image) and runs it where it\n"
        "was paused. Its sockets are at the usual paths; qmp.sock appears once the guest runs, so\n"
        "ballastd adopts a VM registered under that path again, with its settings.\n"
        "\n"
        "Options:\n"
        "  --stop                 snapshot: stop the VM once its snapshot is saved\n"
        "  --resume               snapshot: run the VM again once its snapshot is saved\n"
        "  --timeout DURATION     give up saving or loading after this (default 300s)\n"
        "  --image DIR            restore: the guest image, if it moved since the snapshot\n"
        "  --boot-timeout DURATION  restore: wait this long for the guest agent (default 60s)\n"
        "  --no-wait              restore: return once the guest runs, without asking its agent\n"
        "  --json                 machine-readable output\n"
        "  -h, --help             show this text\n";

int cmd_vm_snapshot(int argc, char **argv) {
        enum { OPT_STOP = 256, OPT_RESUME, OPT_TIMEOUT };
        static const struct option opts[] = {
                { "stop", no_argument, NULL, OPT_STOP },
                { "resume", no_argument, NULL, OPT_RESUME },
                { "timeout", required_argument, NULL, OPT_TIMEOUT },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        bool stop = false, resume = false;
        usec_t timeout = 300 * USEC_PER_SEC;
        int c, r;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_STOP:
                        stop = true;
                        break;
                case OPT_RESUME:
                        resume = true;
                        break;
                case OPT_TIMEOUT:
                        if ((r = cli_parse_duration("--timeout", optarg, &timeout)) != 0)
                                return r;
                        break;
                default:
                        /* --help, or an option getopt_long() has already complained about. */
                        return cli_common_option(c, snapshot_usage);
                }
        }
        if (optind + 2 != argc)
                return cli_usage_error("vm snapshot needs NAME FILE");
        if (stop && resume)
                return cli_usage_error("--stop and --resume exclude each other");
        const char *name = argv[optind], *file = argv[optind + 1];
        if (!*file)
                return cli_usage_error("empty snapshot FILE");

        char err[PATH_MAX + 1024];
        VmSnapshotResult res;
        r = vm_snapshot(name, file, timeout, &res, err, sizeof err);
        if (r < 0)
                return cli_error(EXIT_FAIL, "cannot snapshot VM '%s': %s", name, err);
        const char *after = "paused";
        if (resume) {
                r = vm_resume(name, 30 * USEC_PER_SEC, err, sizeof err);
                if (r < 0)
                        return cli_error(EXIT_FAIL, "snapshot saved, but VM '%s' does not run again: %s", name, err);
                after = "running";
        } else if (stop) {
                r = vm_stop(name, 10 * USEC_PER_SEC, err, sizeof err);
                if (r < 0)
                        return cli_error(EXIT_FAIL, "snapshot saved, but VM '%s' does not stop: %s", name, err);
                after = "stopped";
        }
        double secs = (double) res.duration / 1e6;
        if (arg_json) {
                cli_print_json(json_pack("{s:s,s:s,s:I,s:I,s:f,s:s}", "name", name, "file", file, "bytes",
                                         (json_int_t) res.bytes, "balloon_actual", (json_int_t) res.balloon_actual,
                                         "seconds", secs, "vm", after));
                return EXIT_OK;
        }
        char sz[FORMAT_SIZE_MAX], act[FORMAT_SIZE_MAX];
        printf("VM %s saved to %s: %s in %.2f s (guest at %s); VM %s\n", name, file,
               format_size(sz, sizeof sz, res.bytes), secs, format_size(act, sizeof act, res.balloon_actual), after);
        return EXIT_OK;
}

int cmd_vm_resume(int argc, char **argv) {
        static const struct option opts[] = {
                { "help", no_argument, NULL, 'h' },
                {},
        };
        /* Only --help is an option; getopt_long() finds it after NAME too. */
        int c = getopt_long(argc, argv, "h", opts, NULL);
        if (c >= 0)
                return cli_common_option(c, snapshot_usage);
        if (optind + 1 != argc)
                return cli_usage_error("vm resume needs one NAME");
        const char *name = argv[optind];
        char err[PATH_MAX + 1024];
        int r = vm_resume(name, 30 * USEC_PER_SEC, err, sizeof err);
        if (r < 0)
                return cli_error(EXIT_FAIL, "cannot resume VM '%s': %s", name, err);
        if (arg_json)
                cli_print_json(json_pack("{s:s,s:s}", "name", name, "vm", "running"));
        else
                printf("VM %s running\n", name);
        return EXIT_OK;
}

bool cmd_vm_start_is_restore(int argc, char **argv) {
        for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
                if (strcmp(argv[i], "--restore") == 0 || strncmp(argv[i], "--restore=", 10) == 0)
                        return true;
        return false;
}

int cmd_vm_restore(int argc, char **argv) {
        enum { OPT_RESTORE = 256, OPT_IMAGE, OPT_BOOT, OPT_TIMEOUT, OPT_NOWAIT, OPT_MACHINE };
        /* The machine comes from the snapshot: options that would change it are refused by name
         * rather than ignored. */
        static const struct option opts[] = {
                { "restore", required_argument, NULL, OPT_RESTORE },
                { "image", required_argument, NULL, OPT_IMAGE },
                { "boot-timeout", required_argument, NULL, OPT_BOOT },
                { "timeout", required_argument, NULL, OPT_TIMEOUT },
                { "no-wait", no_argument, NULL, OPT_NOWAIT },
                { "help", no_argument, NULL, 'h' },
                { "memory", required_argument, NULL, OPT_MACHINE },
                { "cpus", required_argument, NULL, OPT_MACHINE },
                { "deflate-on-oom", required_argument, NULL, OPT_MACHINE },
                { "free-page-reporting", required_argument, NULL, OPT_MACHINE },
                { "stats-period", required_argument, NULL, OPT_MACHINE },
                { "append", required_argument, NULL, OPT_MACHINE },
                { "foreground", no_argument, NULL, OPT_MACHINE },
                {},
        };
        const char *file = NULL, *image = NULL;
        usec_t boot_timeout = 60 * USEC_PER_SEC, timeout = 300 * USEC_PER_SEC;
        bool wait = true;
        int c, r, idx = 0;
        while ((c = getopt_long(argc, argv, "h", opts, &idx)) >= 0) {
                switch (c) {
                case OPT_RESTORE:
                        file = optarg;
                        break;
                case OPT_IMAGE:
                        image = optarg;
                        break;
                case OPT_BOOT:
                        if ((r = cli_parse_duration("--boot-timeout", optarg, &boot_timeout)) != 0)
                                return r;
                        break;
                case OPT_TIMEOUT:
                        if ((r = cli_parse_duration("--timeout", optarg, &timeout)) != 0)
                                return r;
                        break;
                case OPT_NOWAIT:
                        wait = false;
                        break;
                case OPT_MACHINE:
                        return cli_usage_error("--%s cannot be used with --restore: the snapshot fixes the machine",
                                               opts[idx].name);
                default:
                        /* --help, or an option getopt_long() has already complained about. */
                        return cli_common_option(c, snapshot_usage);
                }
        }
        if (optind + 1 != argc)
                return cli_usage_error("vm start needs exactly one NAME");
        if (!file || !*file)
                return cli_usage_error("--restore needs a snapshot FILE");
        const char *name = argv[optind];

        char err[PATH_MAX + 1024];
        VmInfo info;
        usec_t t0 = now_mono();
        r = vm_restore(name, file, image, timeout, &info, err, sizeof err);
        if (r < 0)
                return cli_error(EXIT_FAIL, "cannot restore VM '%s' from '%s': %s", name, file, err);
        usec_t t_run = now_mono();
        json_t *ping = NULL;
        if (wait) {
                char path[PATH_MAX];
                vm_socket_path(name, "agent", path, sizeof path);
                r = agent_wait_ready(path, geteuid(), boot_timeout, info.qemu_pid, &ping, err, sizeof err);
                if (r < 0) {
                        char e2[256];
                        vm_stop(name, 5 * USEC_PER_SEC, e2, sizeof e2);
                        return cli_error(EXIT_FAIL, "VM '%s' restored but its agent does not answer: %s", name, err);
                }
        }
        usec_t t1 = now_mono();
        double secs = (double) (t1 - t0) / 1e6, load = (double) (t_run - t0) / 1e6;
        if (arg_json) {
                json_t *j = json_pack("{s:s,s:i,s:I,s:s,s:s,s:s,s:f,s:f,s:b}", "name", name, "qemu_pid",
                                      (int) info.qemu_pid, "memory", (json_int_t) info.memory, "dir", info.dir, "accel",
                                      info.accel, "restored_from", file, "seconds", secs, "load_seconds", load, "ready",
                                      ping != NULL);
                if (ping)
                        json_object_set(j, "agent", ping);
                cli_print_json(j);
        } else {
                char m[FORMAT_SIZE_MAX];
                printf("VM %s restored from %s: QEMU pid %d, %s, %s; running in %.2f s", name, file,
                       (int) info.qemu_pid, format_size(m, sizeof m, info.memory), info.accel, load);
                if (ping)
                        printf(", agent answering in %.2f s\n", secs);
                else
                        printf("\n");
        }
        json_decref(ping);
        return EXIT_OK;
}
