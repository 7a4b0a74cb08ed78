/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>

/* One entry point per ballastctl subcommand; argv[0] is the subcommand's name. Each returns the
 * process exit code. */
int cmd_balloon(int argc, char **argv);
int cmd_vm(int argc, char **argv);

/* Commands that talk to ballastd's API (cli/api-client.h). */
int cmd_host(int argc, char **argv);
int cmd_capacity(int argc, char **argv);
int cmd_vms(int argc, char **argv);
int cmd_reclaim(int argc, char **argv);
int cmd_history(int argc, char **argv);
int cmd_top(int argc, char **argv);
int cmd_park(int argc, char **argv, bool unpark);
int cmd_pool(int argc, char **argv);
/* vm add|rm|show, dispatched by cmd_vm(); argv[0] is the verb. */
int cmd_vm_add(int argc, char **argv);
int cmd_vm_rm(int argc, char **argv);
int cmd_vm_show(int argc, char **argv);
/* vm snapshot|resume and vm start --restore (cmd-vm-snapshot.c), dispatched by cmd_vm(). */
int cmd_vm_snapshot(int argc, char **argv);
int cmd_vm_resume(int argc, char **argv);
int cmd_vm_restore(int argc, char **argv);
bool cmd_vm_start_is_restore(int argc, char **argv);
