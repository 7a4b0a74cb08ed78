/* SPDX-License-Identifier: MIT */
#pragma once

/* One entry point per ballastctl subcommand; argv[0] is the subcommand's name. Each returns the
 * process exit code. */
int cmd_balloon(int argc, char **argv);
int cmd_vm(int argc, char **argv);
