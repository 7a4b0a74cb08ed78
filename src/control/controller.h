/* SPDX-License-Identifier: MIT */
#pragma once

/* The controller (B5): the tick `sample → plan → apply → observe`, run on a timer, on PSI or
 * cgroup pressure events, on driver news and on API calls. It owns the VMs' drivers and their
 * live view; every driver call is asynchronous with a deadline and each VM has at most one call
 * in flight, so one bad VM never delays another. Persistence and journalling are the owner's
 * (Manager's) business, reached through CtlHooks. */

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "hv/hv.h"
#include "policy/plan.h"
#include "sense/sense.h"
#include "shared/ev.h"

#define CTL_ID_MAX    64
#define CTL_FIELD_MAX 512

typedef enum CtlVmStatus {
        CTL_VM_CONNECTING, /* registered, actual not read yet */
        CTL_VM_OK,
        CTL_VM_ERROR,   /* the last driver call failed; retried with back-off */
        CTL_VM_STALLED, /* not moving toward its target (B5.6): skipped for a while */
        CTL_VM_PARKED,
        _CTL_VM_STATUS_MAX,
        _CTL_VM_STATUS_INVALID = -EINVAL,
} CtlVmStatus;

typedef enum CtlTrigger {
        CTL_TRIGGER_TIMER,
        CTL_TRIGGER_PSI, /* a PSI trigger, cgroup v1 pressure_level or usage threshold fired */
        CTL_TRIGGER_API,
        CTL_TRIGGER_DRIVER,
        CTL_TRIGGER_START,
        _CTL_TRIGGER_MAX,
        _CTL_TRIGGER_INVALID = -EINVAL,
} CtlTrigger;

/* Registration settings of a VM (what the API and the store know). */
typedef struct CtlVmSpec {
        char id[CTL_ID_MAX + 1];
        char driver[32]; /* qemu | firecracker | cloud-hypervisor | libvirt */
        char socket[CTL_FIELD_MAX];
        char uri[CTL_FIELD_MAX];
        char domain[CTL_FIELD_MAX];
        int64_t expected_uid; /* -1: any */
        uint64_t assigned, floor;
        uint32_t shares;
} CtlVmSpec;

typedef struct CtlVm CtlVm;
typedef struct Controller Controller;

typedef struct CtlConfig {
        PlanConfig plan;
        uint32_t stats_period_s; /* guest statistics polling (B5.4, B5.9); 0 disables */
        usec_t park_protect;     /* an unparked VM is protected from reclaim this long (B4.2) */
        usec_t park_timeout;     /* default deadline of a park */
        usec_t sample_interval;
        usec_t op_timeout;
        usec_t refresh_interval; /* actual re-read of a settled VM (events cover the rest) */
        uint64_t tolerance;      /* actual within this of target counts as reached */
        uint64_t stall_min_rate; /* bytes/s of progress below which a moving VM is stalling */
        usec_t stall_window, stall_backoff;
        /* Scope: cgroup_dir NULL or "" is the host (proc_root, "" = the real /proc). */
        const char *cgroup_dir;
        const char *proc_root;
        int psi_mode; /* -1 off, 0 auto (warn once if missing), 1 on (missing PSI is an error) */
        usec_t psi_stall, psi_window;
} CtlConfig;

/* The owner's side. Every hook may be NULL. */
typedef struct CtlHooks {
        /* A target was commanded (persist it so a restart resumes from decisions, B7). */
        void (*target_changed)(Controller *c, CtlVm *vm, uint64_t target, void *userdata);
        /* A plan changed the targets of these VMs (each VM's target is the new one): persist them
         * together, before any is sent. Optional: without it, target_changed is called for each. */
        void (*targets_changed)(Controller *c, CtlVm *const *vms, size_t n, void *userdata);
        /* The parking state changed (persist it, B4/B7): until_mono is the end of the
         * post-unpark protection (0: none). */
        void (*park_changed)(Controller *c, CtlVm *vm, bool parked, uint64_t previous, usec_t until_mono,
                             void *userdata);
        /* A plan changed a target or the state: journal it. */
        void (*journal)(Controller *c, CtlTrigger trigger, const PlanResult *r, void *userdata);
        void *userdata;
} CtlHooks;

/* A driver factory, so tests and the daemon choose what "qemu" means. Returns 0 or -errno with
 * a message in err. */
typedef int (*ctl_driver_factory)(Ev *ev, const CtlVmSpec *spec, Hv **ret, char *err, size_t errlen);

void ctl_config_default(CtlConfig *c);

/* Starts sensing (opens PSI triggers / cgroup events; reads one sample to prove the scope works).
 * Returns 0 or a negative errno with the reason in err. */
int ctl_new(Ev *ev, const CtlConfig *cfg, ctl_driver_factory factory, const CtlHooks *hooks, Controller **ret,
            char *err, size_t errlen);
Controller *ctl_free(Controller *c);

/* Adds a VM. resume_target (0: none) is the target last commanded before a restart: the VM
 * resumes from it once its actual is re-read. Returns 0, -EEXIST, or -errno (bad driver). */
int ctl_vm_add(Controller *c, const CtlVmSpec *spec, uint64_t resume_target, CtlVm **ret, char *err, size_t errlen);
/* Gives the VM its full size back (best effort, fire and forget) and forgets it. */
int ctl_vm_remove(Controller *c, const char *id);
CtlVm *ctl_vm_find(Controller *c, const char *id);
size_t ctl_vm_count(const Controller *c);
CtlVm *ctl_vm_at(Controller *c, size_t i); /* sorted by id */
/* Replaces floor, shares, assigned (validated by the caller). */
void ctl_vm_update(Controller *c, CtlVm *vm, uint64_t assigned, uint64_t floor, uint32_t shares);

/* A manual per-VM target (PUT /v1/vms/{id}/target): clamped to [floor, assigned] by the caller;
 * sent now; the controller continues from it (dwell applies before it reverses). Returns 0 or
 * -EAGAIN when the VM's actual size is not known yet. */
int ctl_vm_set_target(Controller *c, CtlVm *vm, uint64_t target);

/* Parking (B4). Park shrinks the VM to `size` and waits (at most `timeout`, 0 = the default) for
 * the guest to get there; a guest that stops short is left where it stalled (its target re-synced
 * there) and the outcome says "stalled". Unpark gives it `size` back (0: the size before the
 * park), protects it from automatic reclaim for park_protect, and answers once the command is
 * accepted, or with wait once the guest has it. The callback runs once. Returns 0, -EAGAIN (actual
 * not known yet), -EALREADY (parked / not parked), -EBUSY (a park or unpark is in progress). */
typedef struct CtlParkOutcome {
        int error;          /* 0 or a negative errno (message says why) */
        const char *result; /* "reached", "stalled", "deadline", "sent", "error" */
        uint64_t previous, target, reached;
        usec_t elapsed; /* from the command to the outcome */
        char message[HV_MESSAGE_MAX];
} CtlParkOutcome;
typedef void (*ctl_park_cb)(Controller *c, CtlVm *vm, const CtlParkOutcome *o, void *userdata);
int ctl_vm_park(Controller *c, CtlVm *vm, uint64_t size, usec_t timeout, ctl_park_cb cb, void *userdata);
int ctl_vm_unpark(Controller *c, CtlVm *vm, uint64_t size, bool wait, usec_t timeout, ctl_park_cb cb, void *userdata);
/* After a restart: the stored parking state (until_mono 0: no protection). */
void ctl_vm_restore_park(Controller *c, CtlVm *vm, bool parked, uint64_t previous, usec_t until_mono);

/* Guest statistics on demand (GET /v1/vms/{id}/stats): read in the VM's call cycle like every other
 * driver call, so the read waits behind the one in flight (one call per VM). The callback runs
 * once, with the driver's reply, or with -ECANCELED once the VM is removed (ctl_vm_remove()) or the
 * controller freed before the reply came; the VM must then not be used past the callback. Returns
 * 0, or a negative errno when the driver refuses at once (-EOPNOTSUPP: it has no statistics). */
typedef void (*ctl_stats_cb)(Controller *c, CtlVm *vm, const HvReply *reply, void *userdata);
int ctl_vm_stats(Controller *c, CtlVm *vm, ctl_stats_cb cb, void *userdata);

/* Read-only view of a VM, for the API and metrics. */
typedef struct CtlVmView {
        const CtlVmSpec *spec;
        CtlVmStatus status;
        bool actual_known;
        uint64_t actual, target;
        PlanDecision last;      /* the last plan's decision */
        const char *last_error; /* "" when none */
        uint64_t errors, commands, stalls;
        usec_t updated; /* monotonic of the last actual */
        bool changed;   /* the last tick changed its target (for the journal hook) */
        bool parked, parking;
        uint64_t park_previous;
        usec_t unparked_until; /* monotonic; 0 none */
        /* Guest statistics (B5.4, B5.9) as last read; guest_fresh when recent enough to use. */
        bool guest_fresh, guest_pressure;
        uint64_t guest_used; /* non-reclaimable estimate, in the balloon's terms: actual − available */
        HvStats guest;       /* the raw figures */
        /* Host side (B5.7): the hypervisor process's resident memory, 0 when unknown. */
        pid_t hv_pid;
        uint64_t host_rss;
        /* B5.7: the fall of host_rss since the VM was last at full size (0 when unknown): memory
         * the host really got back, next to commanded (target) and reached (actual). */
        uint64_t host_confirmed;
        /* Guest RAM the host holds for it (host_rss less the hypervisor's own memory), 0 unknown:
         * what shrinking the guest can return. */
        uint64_t resident;
} CtlVmView;
void ctl_vm_view(const CtlVm *vm, CtlVmView *ret);
const char *ctl_vm_id(const CtlVm *vm);
uint64_t ctl_vm_target(const CtlVm *vm); /* the target last decided (what target_changed reported) */
Hv *ctl_vm_hv(CtlVm *vm);

/* Manual hold (B5.8): until is monotonic. bytes 0 clears it. */
void ctl_set_hold(Controller *c, uint64_t bytes, usec_t until);
PlanHold ctl_hold(const Controller *c);

/* Schedules a tick as soon as possible (coalesced). */
void ctl_kick(Controller *c, CtlTrigger trigger);

/* Runs a plan now, on the last sample, with an optional hypothetical hold, without applying it:
 * for dry runs. ret_vms has room for ctl_vm_count() decisions in ctl_vm_at() order. */
int ctl_plan_preview(Controller *c, const PlanHold *hold, PlanDecision *ret_vms, PlanResult *ret);

/* Applies a plan now (the tick, synchronously, with trigger API) and calls done once every
 * command it sent has been answered (or timed out), with per-VM outcomes in ctl_vm_at() order:
 * 0 applied / unchanged, or a negative errno (message in the VM's last_error). */
typedef void (*ctl_apply_cb)(Controller *c, const PlanResult *r, const PlanDecision *d, const uint64_t *previous,
                             const int *results, size_t n, void *userdata);
int ctl_apply_now(Controller *c, ctl_apply_cb done, void *userdata);

/* Host view for the API. */
typedef struct CtlHostView {
        MemSample sample;
        bool sample_ok;
        usec_t sample_at;
        char sample_error[256];
        PlanCtl ctl;
        PlanResult last;
        uint64_t transitions;
        uint64_t commanded;     /* Σ assigned − target over the VMs that answer */
        uint64_t guest_reached; /* Σ assigned − actual: what the guests gave up (balloon side) */
        uint64_t reached;       /* what the host really got back: Σ host_confirmed */
        uint64_t confirmed;     /* the same (older name) */
        uint64_t ticks, plans_failed;
        bool has_psi_trigger;
} CtlHostView;
void ctl_host_view(const Controller *c, CtlHostView *ret);
const CtlConfig *ctl_config(const Controller *c);
/* A new policy (a configuration reload): validated like ctl_new's, then in force from the next
 * tick, which is scheduled at once. VMs move only if the new policy plans so. cgroup v1 usage
 * thresholds stay registered at the old watermarks (sampling sees the new ones). Returns 0, or
 * -EINVAL with the offending field in err (the old policy stays). */
int ctl_set_policy(Controller *c, const PlanConfig *plan, char *err, size_t errlen);

/* Admission hint for a VM of `size` bytes, on a fresh sample and a plan run without applying it:
 * fills *ret (and *ret_plan when not NULL). Returns 0, -ENODATA (no sample of the scope), or
 * -EINVAL (size 0). */
int ctl_capacity(Controller *c, uint64_t size, PlanCapacity *ret, PlanResult *ret_plan);

/* Latency figures (B8): scope crossed a watermark / PSI fired → first balloon command sent. */
#define CTL_HIST_BUCKETS 12
typedef struct CtlHistogram {
        uint64_t counts[CTL_HIST_BUCKETS + 1]; /* last: +Inf */
        uint64_t count;
        double sum_s;
} CtlHistogram;
extern const double ctl_hist_bounds_s[CTL_HIST_BUCKETS];
typedef struct CtlStats {
        CtlHistogram reaction, time_to_target;
        uint64_t driver_errors[_HV_OP_MAX];
        uint64_t driver_timeouts;
        uint64_t commands, stalls;
        uint64_t reclaimed_commanded_bytes, given_back_commanded_bytes;
} CtlStats;
const CtlStats *ctl_stats(const Controller *c);

const char *ctl_vm_status_to_string(CtlVmStatus s);
const char *ctl_trigger_to_string(CtlTrigger t);
