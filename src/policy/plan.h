/* SPDX-License-Identifier: MIT */
#pragma once

/* The controller's policy (B5.2–B5.5, B5.8 holds, B5.9 guest emergencies, B4.2 unpark protection):
 * one pure function, plan_compute(), of (config, host sample, previous controller state, manual
 * hold, per-VM views, now). It does no I/O, reads no clock and, given a scratch object, allocates
 * nothing. All sizes are uint64_t bytes, all times usec_t (CLOCK_MONOTONIC), all ratios integer
 * permyriad (1/10000). Products of sizes use 128-bit intermediates; any VM size up to
 * PLAN_BYTES_MAX (2^62) is exact to the byte. The algorithm and every default: docs/policy.md. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "shared/time-util.h"

#define PLAN_PERMYRIAD UINT32_C(10000)
#define PLAN_BYTES_MAX (UINT64_C(1) << 62) /* largest assigned size a VM may have */
#define PLAN_VMS_MAX   ((size_t) UINT32_MAX)

typedef enum PlanState {
        PLAN_STATE_HEALTHY,
        PLAN_STATE_PRESSURE,
        PLAN_STATE_CRITICAL,
        _PLAN_STATE_MAX,
        _PLAN_STATE_INVALID = -EINVAL,
} PlanState;

/* Why a VM got the target it got. One per VM per plan. */
typedef enum PlanReason {
        PLAN_REASON_UNCHANGED,      /* already where the plan wants it */
        PLAN_REASON_RECLAIM,        /* moved down, driven by host pressure */
        PLAN_REASON_GIVE_BACK,      /* moved up: the host has room again */
        PLAN_REASON_HOLD,           /* moved down, driven by a manual hold larger than the automatic need */
        PLAN_REASON_FLOOR,          /* at (or raised toward) its floor: it cannot give more */
        PLAN_REASON_RATE_LIMITED,   /* moved only part of the way (or not at all) by the rate limit */
        PLAN_REASON_DEAD_BAND,      /* the change would be smaller than the dead band */
        PLAN_REASON_DWELL,          /* reversing direction too soon after the last move */
        PLAN_REASON_PROTECTED,      /* recently unparked (B4.2): not touched until unparked_until */
        PLAN_REASON_STALLED,        /* in stall back-off (B5.6): target re-synced to actual */
        PLAN_REASON_PARKED,         /* parked (B4.1): not touched */
        PLAN_REASON_GUEST_PRESSURE, /* the guest is under pressure: raised at once, as far as the host can give */
        PLAN_REASON_NO_GAIN,        /* the host is short, but shrinking this guest would return nothing to it */
        PLAN_REASON_UNREACHABLE, /* not read yet, or its last call failed: outside every total (set by the controller)
                                  */
        _PLAN_REASON_MAX,
        _PLAN_REASON_INVALID = -EINVAL,
} PlanReason;

typedef struct PlanConfig {
        /* Watermarks on the scope's available memory, permyriad of the scope total. */
        uint32_t low_pmy;      /* enter pressure below this (1000 = 10%) */
        uint32_t high_pmy;     /* leave pressure at or above; the level reclaim aims at (1500) */
        uint32_t critical_pmy; /* critical below this (500) */
        /* PSI avg10 thresholds, hundredths of a percent (= permyriad; sense's PsiLine unit). */
        uint32_t psi_some_pmy; /* some avg10 ≥ this enters pressure; leaving needs < half (500) */
        uint32_t psi_full_pmy; /* full avg10 ≥ this is critical; leaving needs < half (1000) */
        /* Shaping. */
        uint64_t dead_band;     /* bytes: smaller target changes are not made (32 MiB) */
        uint64_t rate_take;     /* bytes/s per VM, downward (512 MiB/s) */
        uint64_t rate_give;     /* bytes/s per VM, upward; ≥ rate_take (1 GiB/s) */
        usec_t rate_window_max; /* rate allowance accumulates for at most this long (1 s) */
        uint32_t step_gain_pmy; /* step = this fraction of the error, before the rate cap (10000) */
        usec_t dwell;           /* no reversal sooner than this after a move (5 s) */
        /* Floors. */
        uint32_t floor_pmy;      /* floor fraction of assigned (2500) */
        uint32_t hard_floor_pmy; /* floor fraction of assigned in critical (1000) */
        uint64_t guest_margin;   /* bytes above the guest's non-reclaimable use (128 MiB) */
        /* Inputs. */
        usec_t sample_max_age; /* an older host sample is refused with -ESTALE (2 s) */
} PlanConfig;

/* One sample of the scope (host or cgroup), as produced by sense. */
typedef struct PlanHost {
        uint64_t total;                          /* bytes in the scope; > 0 */
        uint64_t available;                      /* bytes; values above total count as total */
        bool has_psi;                            /* false: the PSI terms are dropped, the controller still runs */
        uint32_t psi_some_avg10, psi_full_avg10; /* hundredths of a percent */
        usec_t at;                               /* when the sample was taken */
} PlanHost;

/* The controller's own state, carried from plan to plan. A zeroed PlanCtl is a valid start. */
typedef struct PlanCtl {
        PlanState state;
        usec_t since; /* when `state` was entered */
} PlanCtl;

/* A manual reclaim hold (B5.8): at least `bytes` stay reclaimed (summed over the non-parked
 * VMs) while now < until. bytes == 0 is no hold. */
typedef struct PlanHold {
        uint64_t bytes;
        usec_t until;
} PlanHold;

/* What the controller knows about one VM. Targets are "guest memory" sizes (B1), not balloon
 * sizes; values above assigned count as assigned. */
typedef struct PlanVm {
        uint64_t id;       /* the caller's handle; the policy never reads it */
        uint64_t assigned; /* full size, ≤ PLAN_BYTES_MAX */
        uint64_t floor;    /* configured floor (a guarantee honoured even in critical) */
        uint32_t shares;   /* ≥ 1: a claim on contested memory, as in Proxmox/VMware */
        uint64_t target;   /* the target last commanded (assigned if never ballooned) */
        uint64_t actual;   /* the size last reported by the hypervisor */
        bool in_flight;    /* target is sent (or queued) and actual has not reached it yet */
        int8_t last_dir;   /* direction of the last target change: -1 down, +1 up, 0 none */
        usec_t last_move;  /* when the target last changed (0: never) */
        bool parked;
        usec_t unparked_until; /* protected from automatic changes while now < this */
        usec_t stalled_until;  /* in stall back-off while now < this */
        bool guest_fresh;      /* guest statistics are recent enough to use */
        uint64_t guest_used;   /* guest non-reclaimable use (anon + shmem + unevictable), if fresh */
        bool guest_pressure;   /* the guest shows pressure (major faults, swap-in, low available) */
        /* Host-resident guest memory (bytes the host really holds for this guest, the hypervisor's
         * own overhead excluded); 0 = unknown, then taken as `actual`. Shrinking the guest to t
         * returns about max(resident − t, 0) to the host: what free page reporting already
         * returned gives nothing twice. */
        uint64_t resident;
} PlanVm;

/* The plan's decision for one VM (same index as the input). */
typedef struct PlanDecision {
        uint64_t target;  /* the new target to command */
        uint64_t desired; /* where the split wants it, before shaping */
        uint64_t floor;   /* the floor in force for this VM in this plan */
        PlanReason reason;
        int8_t dir;          /* sign(target − previous target): store as last_dir (with last_move = now) if ≠ 0 */
        uint64_t returnable; /* host bytes this VM could return above its floor (0 for fixed VMs) */
        uint64_t gain;       /* host bytes its target is expected to return, beyond what is in flight */
} PlanDecision;

typedef struct PlanInput {
        const PlanConfig *config;
        PlanHost host;
        PlanCtl ctl;
        PlanHold hold;
        const PlanVm *vms;
        size_t n_vms;
        usec_t now;
} PlanInput;

/* Totals, in bytes of reclaim (assigned − target) summed over the non-parked VMs. */
typedef struct PlanResult {
        PlanCtl ctl;        /* the new controller state: store it for the next plan */
        uint64_t automatic; /* what host pressure alone asks for */
        uint64_t hold;      /* the active hold (0 if none or expired) */
        uint64_t requested; /* max(automatic, hold): holds and pressure never add up */
        uint64_t desired;   /* what the split could place above the floors (≤ requested + fixed VMs) */
        uint64_t planned;   /* what the new targets amount to, after shaping */
        uint64_t shortfall; /* what the floors did not allow: host bytes short of the need, plus hold bytes */
        int64_t pending;    /* bytes the host will still gain from in-flight commands (may be < 0) */
        /* Host side. */
        int64_t need;        /* bytes that bring available to the high watermark (< 0: slack above it) */
        uint64_t expected;   /* host bytes the new targets are expected to return (Σ gain) */
        uint64_t returnable; /* host bytes the movable VMs could return above their floors */
        uint64_t emergency;  /* bytes raised for guests under pressure in this plan */
} PlanResult;

/* Reusable working memory for up to `capacity` VMs, so plan_compute() does not allocate. */
typedef struct PlanScratch PlanScratch;

/* Fills *c with the defaults above. */
void plan_config_default(PlanConfig *c);

/* 0 when the configuration is coherent (critical < low < high ≤ 100%, hard floor ≤ floor, rates
 * > 0, give ≥ take, …); -EINVAL otherwise, with *ret_field (if not NULL) naming the first bad field. */
int plan_config_validate(const PlanConfig *c, const char **ret_field);

/* Returns a new scratch object for up to `capacity` VMs (caller owns; free with
 * plan_scratch_free()), or NULL when out of memory. */
PlanScratch *plan_scratch_new(size_t capacity);
PlanScratch *plan_scratch_free(PlanScratch *s); /* accepts NULL, returns NULL */

/* The plan. ret_vms must have room for in->n_vms decisions. scratch may be NULL (then the call
 * allocates and frees its own; the daemon should not do that). Returns 0 and fills ret_vms[] and
 * *ret; on error nothing is written and it returns:
 *   -EINVAL     bad config (see plan_config_validate), NULL pointers, total == 0, shares == 0
 *   -ERANGE     a VM larger than PLAN_BYTES_MAX, or more than PLAN_VMS_MAX VMs
 *   -ESTALE     the host sample is older than config->sample_max_age
 *   -ENOBUFS    the scratch object is smaller than n_vms
 *   -ENOMEM     scratch == NULL and allocation failed */
int plan_compute(const PlanInput *in, PlanScratch *scratch, PlanDecision *ret_vms, PlanResult *ret);

/* The floor a VM has outside critical and without guest statistics: the larger of its configured
 * floor (capped at assigned) and floor_pmy of assigned. */
uint64_t plan_floor(const PlanConfig *c, uint64_t assigned, uint64_t configured);

/* Admission hint: how many more VMs of `size` bytes fit now. A new VM is counted at its full size
 * (it may touch all of it); the host keeps its low watermark free; reclaim can add what the
 * registered VMs could return above their floors (PlanResult.returnable). */
typedef struct PlanCapacity {
        uint64_t size;       /* the VM size asked about */
        uint64_t reserve;    /* the low watermark of the scope: never handed out */
        uint64_t free;       /* available above the reserve */
        uint64_t returnable; /* what reclaim could return above the floors */
        uint64_t overhead;   /* the hypervisor's own memory beside guest RAM, per VM */
        uint64_t fit_free;   /* VMs of `size` + `overhead` that fit in free memory alone */
        uint64_t fit;        /* the same in free memory plus what reclaim returns */
} PlanCapacity;

/* A new VM costs size + overhead (its hypervisor's own memory: QEMU's beside guest RAM, measured
 * on the VMs already there). Returns 0, or -EINVAL (NULL, total or size 0, bad config); writes
 * *ret only on success. */
int plan_capacity(const PlanConfig *c, uint64_t total, uint64_t available, uint64_t returnable, uint64_t size,
                  uint64_t overhead, PlanCapacity *ret);

const char *plan_state_to_string(PlanState s);
PlanState plan_state_from_string(const char *s);
const char *plan_reason_to_string(PlanReason r);
PlanReason plan_reason_from_string(const char *s);
