/* SPDX-License-Identifier: MIT */
#include <stdio.h>
#include <string.h>

#include "ballast/ballast.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/log.h"

static const char usage[] = "Usage: ballastctl [--json] COMMAND ...\n"
                            "\n"
                            "Commands:\n"
                            "  balloon get|set|stats|caps   one VM's balloon, by QMP socket (--qmp) or VM name (--vm)\n"
                            "  vm start|stop|list|info|exec|ping|meminfo|fill|verify|release|agent\n"
                            "                               the QEMU launcher and the guest agent\n"
                            "\n"
                            "Examples:\n"
                            "  ballastctl vm start vm1 --memory 512M\n"
                            "  ballastctl balloon set --vm vm1 --wait 256M\n"
                            "  ballastctl balloon get --qmp /run/vm1/qmp.sock\n"
                            "  ballastctl balloon stats --vm vm1 --period 2\n"
                            "  ballastctl vm exec vm1 -- free -m\n"
                            "  ballastctl vm stop vm1\n"
                            "\n"
                            "Global options: --json (machine-readable output), -v (debug logging), --version, --help.\n"
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

        if (argc < 2)
                return fputs(usage, stderr), EXIT_USAGE;
        const char *cmd = argv[1];
        if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 || strcmp(cmd, "help") == 0)
                return fputs(usage, stdout), EXIT_OK;
        if (strcmp(cmd, "--version") == 0)
                return printf("ballastctl %s\n", ballast_version()), EXIT_OK;
        if (strcmp(cmd, "balloon") == 0)
                return cmd_balloon(argc - 1, argv + 1);
        if (strcmp(cmd, "vm") == 0)
                return cmd_vm(argc - 1, argv + 1);
        return cli_usage_error("unknown command '%s'", cmd);
}
