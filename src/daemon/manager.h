/* SPDX-License-Identifier: MIT */
#pragma once

/* The daemon's one owner object: the event loop, the configuration, the store, the controller and
 * the API server. Everything else is passed what it needs. */

#include <stdbool.h>
#include <stdint.h>

#include "api/http.h"
#include "control/controller.h"
#include "daemon/config.h"
#include "shared/ev.h"
#include "store/store.h"

typedef struct Manager {
        Ev *ev;
        DaemonConfig *cfg;       /* not owned; a reload changes its reloadable fields in place */
        const char *config_path; /* what a reload (SIGHUP) reads; NULL: reload refused */
        Store *store;
        Controller *ctl;
        HttpServer *http;
        usec_t started;      /* monotonic */
        uint64_t started_rt; /* realtime usec */
        /* The manual hold as stored (realtime), for the API. */
        bool hold_set;
        StoreHold hold;
        uint64_t store_errors;
        EvTimer *trim_timer;
        /* The service manager's side (daemon/service.c). */
        EvTimer *service_timer;
        usec_t watchdog_usec; /* 0: no watchdog */
        char service_status_sent[512];
        uint64_t reloads, reload_failures;
} Manager;

/* Opens the store, starts sensing, re-adopts every registered VM, restores the hold, and starts
 * the API. Returns 0 with a new Manager, or a negative errno with the reason in err. */
int manager_new(DaemonConfig *cfg, Manager **ret, char *err, size_t errlen);
/* Leaves every VM where it is (B6: SIGTERM does not touch the VMs) and frees everything. */
Manager *manager_free(Manager *m);
/* Runs the loop until SIGTERM/SIGINT; returns the exit status. */
int manager_run(Manager *m);
/* Re-reads m->config_path (SIGHUP) and applies what can change while running: [policy], [log]
 * level, [state] journal_max, [park] size and the [api] tokens file's contents. Other changes
 * are logged as waiting for a restart. No VM is touched except as the new policy plans. An
 * invalid file changes nothing and is logged as an error. Returns 0 or a negative errno. */
int manager_reload(Manager *m);

/* The API's verbs. Each returns 0 or a negative errno with a client-facing message in err. */
int manager_vm_register(Manager *m, const CtlVmSpec *spec, char *err, size_t errlen);
int manager_vm_update(Manager *m, CtlVm *vm, uint64_t assigned, uint64_t floor, uint32_t shares, char *err,
                      size_t errlen);
int manager_vm_delete(Manager *m, const char *id, char *err, size_t errlen);
/* bytes 0 or for 0 clears; until_rt is realtime usec. */
int manager_set_hold(Manager *m, uint64_t bytes, usec_t hold_for, const char *reason, char *err, size_t errlen);

/* Realtime usec for a monotonic time (for the API's timestamps). */
uint64_t manager_mono_to_rt(usec_t mono);
