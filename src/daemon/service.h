/* SPDX-License-Identifier: MIT */
#pragma once

/* ballastd under a service manager (systemd), through libsystemd: the readiness protocol
 * (READY=1, RELOADING=1, STOPPING=1), the watchdog (WATCHDOG=1 from the event loop, every half
 * of WatchdogSec=), a live STATUS= line (state, VMs, reclaim), and the journal (each message with
 * its PRIORITY= and, when it is about a VM, VM=). Without a service manager everything here does
 * nothing: NOTIFY_SOCKET unset makes sd_notify() a no-op, and stderr stays the log. */

#include <stdbool.h>
#include <stddef.h>

typedef struct Manager Manager;

/* When stderr is the journal (JOURNAL_STREAM names it), sends log messages to the journal as
 * structured entries instead. Returns true when it did. */
bool service_log_to_journal(void);

/* After manager_new(): READY=1 with the first STATUS=, and, when the service manager asked for a
 * watchdog (sd_watchdog_enabled), a timer on the manager's loop that sends WATCHDOG=1 and refreshes
 * STATUS=. Returns 0 or a negative errno (the timer could not be added). */
int service_start(Manager *m);
/* RELOADING=1 before a reload, READY=1 after it. */
void service_reloading(Manager *m);
void service_reloaded(Manager *m);
/* STOPPING=1; frees the timer. */
void service_stop(Manager *m);

/* The STATUS= text: "healthy; 3 VMs (3 ok); reclaim 0 B commanded, 0 B reached". Always
 * NUL-terminated; returns buf. */
char *service_status(Manager *m, char *buf, size_t len);
