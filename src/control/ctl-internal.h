/* SPDX-License-Identifier: MIT */
#pragma once

/* The controller's insides, shared by its files (the public API is control/controller.h):
 *   controller.c  the registry, the tick, the views and the API's apply batches;
 *   ctl-vm.c      each VM's driver-call cycle (one call in flight) and what it observes;
 *   ctl-park.c    parking (B4);
 *   guest-assess.c  what a guest's statistics say (a pure function). */

#include <stddef.h>

#include "control/controller.h"
#include "sense/pressure-watch.h"
#include "sense/vm-mem.h"
#include "shared/macro.h"

/* A park never takes a guest closer than this to its non-reclaimable use (when its statistics are
 * fresh). Smaller than the plan's guest_margin: parking is asked for, and an idle guest (30-50 MiB
 * of use) must still reach the 128 MiB park size. */
#define CTL_PARK_MARGIN        (32 * MiB)

/* Back-off after a failed driver call: 1 s doubling to 30 s. */
#define CTL_ERROR_BACKOFF_MIN  (1 * USEC_PER_SEC)
#define CTL_ERROR_BACKOFF_MAX  (30 * USEC_PER_SEC)

/* How often an idle fleet (healthy host, every VM at full size) is walked: its VMs' periodic reads
 * are due every minute or more, and anything that can make a VM non-idle wakes the tick at once. */
#define CTL_IDLE_POLL          (5 * USEC_PER_SEC)

/* smaps reads (a few ms each on a QEMU process) per tick, fleet-wide. */
#define CTL_RAM_READS_PER_TICK 2

/* An observation of actual read more than this after the moment it describes (never more than the
 * stall window) is late: the loop is behind on that VM, and newer ones may wait behind it. A late
 * observation never declares a stall (see vm_observe). */
#define CTL_STALL_MAX_LAG      (1 * USEC_PER_SEC)

typedef struct ApplyBatch ApplyBatch;

/* The userdata of a park's own driver calls (not the VM itself, so that hv_cancel() of the VM's
 * cycle leaves them alone and the other way round). */
typedef struct CtlParkCall {
        CtlVm *vm;
} CtlParkCall;

/* A caller of ctl_vm_stats() waiting for the VM's next on-demand statistics read. */
typedef struct CtlStatsWaiter CtlStatsWaiter;
struct CtlStatsWaiter {
        ctl_stats_cb cb;
        void *userdata;
        CtlStatsWaiter *next;
};

struct CtlVm {
        Controller *c;
        CtlVmSpec spec;
        Hv *hv;
        CtlVmStatus status;
        bool actual_known;
        uint64_t actual;
        uint64_t target;       /* the target the controller wants the VM at (commanded or queued) */
        uint64_t decided_from; /* where the decided move started: the target before a run of decisions
                                * in one direction (a reclaim refined in steps is one move) */
        uint64_t sent_target;  /* the target of the last set_target sent */
        bool sent_once;
        uint64_t resume_target;
        bool op_busy;         /* one driver call in flight */
        bool removing;        /* forgotten by the registry; freed once its last call returns */
        CtlVm *next_removing; /* in Controller.removing while so */
        int8_t last_dir;
        usec_t last_move;
        PlanDecision last;
        char last_error[HV_MESSAGE_MAX];
        uint64_t errors, commands, stalls;
        usec_t updated;   /* monotonic, last actual */
        usec_t last_read; /* when actual was last read (monotonic) */
        usec_t read_sent; /* when the get-actual in flight was sent (monotonic) */
        usec_t seen_at;   /* the moment the last observation of actual describes (monotonic) */
        usec_t fresh_at;  /* when actual was last observed without lag (monotonic) */
        usec_t retry_at;  /* error back-off: no call before this */
        usec_t backoff;
        /* Stall detection (B5.6). */
        usec_t progress_at;
        uint64_t progress_actual;
        usec_t stalled_until;
        uint64_t stall_lo, stall_hi; /* while stalled, its target stays within these */
        usec_t move_started;         /* for the time-to-target histogram; 0 = not moving */
        bool changed;                /* target changed by the current tick */
        uint64_t reaction_episode;   /* its target is a reclaim the plan decided in this pressure episode */
        bool plan_fixed;             /* the current plan holds it where it is (unreachable): do not apply */
        /* ctl_vm_stats() callers, in order: answered by the next on-demand read's reply. */
        CtlStatsWaiter *stats_waiters;
        /* The API apply batch waiting for this VM's next set_target answer. */
        ApplyBatch *batch;
        size_t batch_idx;
        /* Parking (B4). */
        bool parked, parking;
        uint64_t park_prev;
        usec_t unparked_until;
        HvWait *park_wait, *park_done; /* done: finished, freed at the next tick */
        ctl_park_cb park_cb;
        void *park_ud;
        uint64_t park_report_prev;
        usec_t park_started;
        CtlParkCall park_call; /* userdata of the park's own driver calls (cancelled apart from the cycle's) */
        uint64_t park_size;    /* asked for */
        usec_t park_timeout;
        bool park_capped;           /* parked at the guest's use + margin instead of park_size */
        uint64_t park_used;         /* the guest's use that capped it */
        uint64_t park_started_rt_s; /* realtime seconds: only guest reports after this can stop it */
        EvTimer *park_timer;        /* asking for fresh statistics before a park */
        /* Guest statistics (B5.4, B5.9). */
        bool stats_off, stats_period_set;
        bool stats_fast, stats_fast_asked, stats_fast_refused; /* polled every second (shrunk VM) */
        usec_t stats_first_at;                                 /* the first read after the period was set (0: done) */
        usec_t last_stats;                                     /* when statistics were last asked for */
        usec_t stats_interval; /* the interval they were read at (freshness is relative to it) */
        HvStats guest;
        bool guest_have, guest_fresh, guest_pressure;
        uint64_t guest_used;
        /* Realtime second of the last change of actual: a guest report from that second or before
         * describes the guest at another size, so its figures do not go with the current actual. */
        uint64_t actual_changed_rt_s;
        /* Host side (B5.7): RSS, its full-size baseline, and guest RAM resident = RSS − the
         * hypervisor's own memory (a TCG code buffer included), measured from smaps now and then,
         * since smaps costs milliseconds and VmRSS nothing. */
        VmMemTrack mem;
        uint32_t rng; /* xorshift state: spreads each VM's periodic reads (seeded from its id) */
};

struct ApplyBatch {
        Controller *c;
        size_t n, pending;
        CtlVm **vms;
        uint64_t *previous;
        int *results;
        PlanDecision *decisions;
        PlanResult result;
        EvTimer *deadline;
        ctl_apply_cb cb;
        void *userdata;
};

struct Controller {
        Ev *ev;
        CtlConfig cfg;
        char *cgroup_dir, *proc_root;
        ctl_driver_factory factory;
        CtlHooks hooks;

        CtlVm **vms;     /* sorted by id */
        CtlVm *removing; /* unregistered VMs whose last call (the give-back) is still out */
        size_t n_vms, cap_vms;
        PlanScratch *scratch;
        PlanVm *pvms;
        PlanDecision *dec;
        size_t cap_plan;

        PlanCtl ctl;
        PlanHold hold;
        PlanResult last;
        uint64_t transitions, ticks, plans_failed, skipped_plans;
        bool fleet_idle; /* every VM idle at the last poll (see ctl_poll_all) */
        usec_t next_idle_poll;
        bool calm; /* available far above the high watermark: idle guests' statistics wait minutes */

        MemSample sample;
        bool sample_ok;
        usec_t sample_at;
        char sample_error[256];
        bool sample_warned;

        EvTimer *tick_timer;
        usec_t last_tick;
        unsigned ram_budget; /* smaps reads left in this tick */
        CtlTrigger pending_trigger;
        bool kicked;

        PressureWatch pressure;
        EvIo *pressure_io[PRESSURE_WATCH_MAX];
        int cgroup_version;

        usec_t reaction_start; /* sample time the need first arose; 0 = measured, or no episode */
        uint64_t episode;      /* pressure episodes begun (reaction_episode of the VMs) */
        CtlStats stats;
};

static inline uint64_t sat_add_u64(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static inline uint64_t absdiff(uint64_t a, uint64_t b) {
        return a > b ? a - b : b - a;
}

/* controller.c */
void hist_observe(CtlHistogram *h, usec_t d);
int ctl_sample(Controller *c, usec_t now);
void vm_batch_done(CtlVm *vm, int result);

/* ctl-plan.c */
int ctl_grow(Controller *c, size_t n);
int ctl_run_plan(Controller *c, const PlanHold *hold, usec_t now, PlanResult *ret);
/* The tick applies the decision c->dec[i] to the VM at i; true when its target changed. */
bool ctl_apply_decision(Controller *c, size_t i, usec_t now);
/* Records the n changed targets through the owner's hooks, then sends them. */
void ctl_record_and_send(Controller *c, CtlVm *const *moved, size_t n);

/* ctl-vm.c: the call cycle. */
usec_t vm_jitter(CtlVm *vm, usec_t period);
void vm_decide(CtlVm *vm, uint64_t t);
void vm_observe(CtlVm *vm, uint64_t actual, usec_t now, usec_t seen);
void vm_on_actual_event(Hv *hv, uint64_t actual, uint64_t when_realtime, void *userdata);
void vm_take_stats(CtlVm *vm, const HvStats *st);
void vm_send(CtlVm *vm);
void vm_poll(CtlVm *vm, usec_t now);
uint64_t vm_resident(const CtlVm *vm);
void vm_stats_cancel(CtlVm *vm);
void vm_free(CtlVm *vm);

/* ctl-park.c */
void on_park_wait(HvWait *w, const HvWaitOutcome *out, void *userdata);
/* The VM is freed: a park or unpark in progress answers -ECANCELED, its calls are cancelled. */
void park_cancel(CtlVm *vm);
