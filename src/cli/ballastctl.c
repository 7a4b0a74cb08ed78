/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include "ballast/ballast.h"
#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/log.h"

static const char usage[] =
        "Usage: ballastctl [--json] [--api PATH] [--timeout DURATION] COMMAND ...\n"
        "\n"
        "Commands that ask ballastd (over its API socket):\n"
        "  host                         the memory scope: available, PSI, state, reclaim, hold\n"
        "  vms                          the registered VMs and their sizes\n"
        "  vm add|rm|show ID            register, unregister or show one VM\n"
        "  reclaim SIZE | --clear       reclaim memory now and hold it (--hold, --dry-run)\n"
        "  history                      the journal of decisions (--limit, --vm, --since, --follow)\n"
        "  top                          a live view of the host and the VMs (q quits)\n"
        "  park ID / unpark ID          shrink an idle VM to its park size / give it back\n"
        "  pool fill|acquire|release|status|drain NAME   a warm pool of parked VMs\n"
        "  capacity SIZE                how many more VMs of SIZE fit now (admission hint)\n"
        "\n"
        "Commands that work without ballastd:\n"
        "  balloon get|set|stats|caps   one VM's balloon, by QMP socket (--qmp) or VM name (--vm)\n"
        "  vm start|stop|list|info|exec|ping|meminfo|fill|verify|release|agent\n"
        "                               the QEMU launcher and the guest agent\n"
        "\n"
        "Examples:\n"
        "  ballastctl host\n"
        "  ballastctl vm add vm1 --driver qemu --socket /run/vm1/qmp.sock --assigned 512M\n"
        "  ballastctl reclaim 2G --hold 10m --reason maintenance\n"
        "  ballastctl vm start vm1 --memory 512M\n"
        "  ballastctl balloon set --vm vm1 --wait 256M\n"
        "  ballastctl balloon get --qmp /run/vm1/qmp.sock\n"
        "  ballastctl balloon stats --vm vm1 --period 2\n"
        "  ballastctl vm exec vm1 -- free -m\n"
        "  ballastctl vm stop vm1\n"
        "\n"
        "Global options: --json (machine-readable output), -v (debug logging), --version, --help;\n"
        "for the commands that ask ballastd: --api PATH (its socket; default: $BALLAST_API, else\n"
        "  " CTL_API_SOCKET_DEFAULT ") and --timeout DURATION (default 10s).\n"
        "Exit status: 0 done, 1 error (ballastd unreachable or answering an error), 2 usage,\n"
        "  3 balloon set --wait: stalled, 4 balloon set --wait: deadline reached,\n"
        "  5 reclaim: less could be planned than requested.\n"
        "Run 'ballastctl COMMAND --help' for a command's options.\n";

int main(int argc, char **argv) {
        /* --json, -v may stand anywhere before a "--"; take them out so subcommands need not know. */
        int n = 1;
        bool dashdash = false;
        for (int i = 1; i < argc; i++) {
                if (!dashdash && strcmp(argv[i], "--") == 0)
                        dashdash = true;
                if (!dashdash && strcmp(argv[i], "--json") == 0)
                        arg_json = true;
                else if (!dashdash && strcmp(argv[i], "-v") == 0)
                        log_set_max_level(LOG_LEVEL_DEBUG);
                else
                        argv[n++] = argv[i];
        }
        argc = n;
        argv[argc] = NULL;
        log_set_prefix("ballastctl");

        /* --api and --timeout may also stand before the command (each API command takes them too). */
        while (argc >= 2) {
                const char *a = argv[1], *v = NULL;
                int used = 1;
                if (strncmp(a, "--api=", 6) == 0 || strncmp(a, "--timeout=", 10) == 0)
                        v = strchr(a, '=') + 1;
                else if (strcmp(a, "--api") == 0 || strcmp(a, "--timeout") == 0) {
                        if (argc < 3)
                                return cli_usage_error("option '%s' requires an argument", a);
                        v = argv[2];
                        used = 2;
                } else
                        break;
                if (strncmp(a, "--api", 5) == 0) {
                        if (!v[0])
                                return cli_usage_error("--api needs a socket path");
                        arg_api = v;
                } else if (ctl_api_parse_timeout(v) != 0)
                        return EXIT_USAGE;
                argc -= used;
                memmove(argv + 1, argv + 1 + used, (size_t) argc * sizeof(char *)); /* with the NULL */
        }

        if (argc < 2)
                return fputs(usage, stderr), EXIT_USAGE;
        const char *cmd = argv[1];
        if (cmd[0] == '-' && strcmp(cmd, "--help") != 0 && strcmp(cmd, "-h") != 0 && strcmp(cmd, "--version") != 0)
                return cli_usage_error("unrecognized option '%s'", cmd);
        if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0)
                return fputs(usage, stdout), EXIT_OK;
        if (strcmp(cmd, "--version") == 0)
                return printf("ballastctl %s\n", ballast_version()), EXIT_OK;
        if (strcmp(cmd, "balloon") == 0)
                return cmd_balloon(argc - 1, argv + 1);
        if (strcmp(cmd, "vm") == 0)
                return cmd_vm(argc - 1, argv + 1);
        if (strcmp(cmd, "host") == 0)
                return cmd_host(argc - 1, argv + 1);
        if (strcmp(cmd, "capacity") == 0)
                return cmd_capacity(argc - 1, argv + 1);
        if (strcmp(cmd, "vms") == 0)
                return cmd_vms(argc - 1, argv + 1);
        if (strcmp(cmd, "reclaim") == 0)
                return cmd_reclaim(argc - 1, argv + 1);
        if (strcmp(cmd, "history") == 0)
                return cmd_history(argc - 1, argv + 1);
        if (strcmp(cmd, "top") == 0)
                return cmd_top(argc - 1, argv + 1);
        if (strcmp(cmd, "park") == 0 || strcmp(cmd, "unpark") == 0)
                return cmd_park(argc - 1, argv + 1, cmd[0] == 'u');
        if (strcmp(cmd, "pool") == 0)
                return cmd_pool(argc - 1, argv + 1);
        return cli_usage_error("unknown command '%s'", cmd);
}
