/* SPDX-License-Identifier: MIT */
/* What the plan sees of the fleet (ctl_fill_plan), the plan runs that apply nothing: the tick's,
 * a dry run (ctl_plan_preview) and the admission hint (ctl_capacity), and how the tick applies
 * what a plan decided (ctl_apply_decision, ctl_record_and_send). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "control/ctl-internal.h"
#include "sense/vm-mem.h"
#include "shared/log.h"

int ctl_grow(Controller *c, size_t n) {
        if (n <= c->cap_plan)
                return 0;
        size_t cap = MAX(n, c->cap_plan * 2);
        PlanVm *p = realloc(c->pvms, cap * sizeof *p);
        if (!p)
                return -ENOMEM;
        c->pvms = p;
        PlanDecision *d = realloc(c->dec, cap * sizeof *d);
        if (!d)
                return -ENOMEM;
        c->dec = d;
        PlanScratch *s = plan_scratch_new(cap);
        if (!s)
                return -ENOMEM;
        plan_scratch_free(c->scratch);
        c->scratch = s;
        c->cap_plan = cap;
        return 0;
}

/* What the plan sees of each VM. A VM the controller cannot talk to must neither hide the
 * reclaim it really gives nor be counted for reclaim it does not give:
 *  - never read, no history: left out (it gives nothing, takes nothing);
 *  - never read since a restart: fixed at the target it had before (B7), so a hold restored at
 *    start is not piled onto the first VMs to answer;
 *  - its last call failed: fixed at the size it last reported, nothing in flight, so its share
 *    goes to the others until it answers again. */
static void ctl_fill_plan(Controller *c, usec_t now) {
        for (size_t i = 0; i < c->n_vms; i++) {
                CtlVm *vm = c->vms[i];
                uint64_t a = vm->spec.assigned;
                PlanVm *p = &c->pvms[i];
                *p = (PlanVm){
                        .id = i,
                        .assigned = a,
                        .floor = vm->spec.floor,
                        .shares = vm->spec.shares ? vm->spec.shares : 1,
                        .target = MIN(vm->target, a),
                        .actual = MIN(vm->actual, a),
                        .in_flight = absdiff(vm->actual, vm->target) > c->cfg.tolerance,
                        .last_dir = vm->last_dir,
                        .last_move = vm->last_move,
                        .parked = vm->parked || vm->parking,
                        .unparked_until = vm->unparked_until,
                        .stalled_until = vm->stalled_until,
                        .guest_fresh = vm->guest_fresh,
                        .guest_used = vm->guest_used,
                        .guest_pressure = vm->guest_pressure,
                        .resident = vm_resident(vm),
                };
                vm->plan_fixed = false;
                if (!vm->actual_known) {
                        if (!vm->resume_target) {
                                p->parked = true;
                                p->target = p->actual = a;
                                p->in_flight = false;
                                continue;
                        }
                        p->target = p->actual = MIN(vm->resume_target, a);
                        p->in_flight = false;
                        p->stalled_until = usec_add(now, 1);
                        vm->plan_fixed = true;
                } else if (vm->status == CTL_VM_ERROR) {
                        /* Dead or failing: outside every total (its reclaim may be gone with its
                         * process), untouched until it answers again. */
                        p->parked = true;
                        p->in_flight = false;
                        vm->plan_fixed = true;
                }
        }
}

int ctl_run_plan(Controller *c, const PlanHold *hold, usec_t now, PlanResult *ret) {
        int r = ctl_grow(c, MAX(c->n_vms, (size_t) 1));
        if (r < 0)
                return r;
        if (!c->sample_ok)
                return -ENODATA;
        ctl_fill_plan(c, now);
        PlanInput in = {
                .config = &c->cfg.plan,
                .host = { .total = c->sample.total,
                          .available = c->sample.available,
                          .has_psi = c->sample.has_psi,
                          .psi_some_avg10 = c->sample.psi.some.avg10,
                          .psi_full_avg10 = c->sample.has_psi && c->sample.psi.has_full ? c->sample.psi.full.avg10 : 0,
                          .at = c->sample_at },
                .ctl = c->ctl,
                .hold = *hold,
                .vms = c->pvms,
                .n_vms = c->n_vms,
                .now = now,
        };
        return plan_compute(&in, c->scratch, c->dec, ret);
}

int ctl_plan_preview(Controller *c, const PlanHold *hold, PlanDecision *ret_vms, PlanResult *ret) {
        usec_t now = now_mono();
        (void) ctl_sample(c, now);
        PlanResult res;
        int r = ctl_run_plan(c, hold, now, &res);
        if (r < 0)
                return r;
        memcpy(ret_vms, c->dec, c->n_vms * sizeof *ret_vms);
        *ret = res;
        return 0;
}

int ctl_capacity(Controller *c, uint64_t size, PlanCapacity *ret, PlanResult *ret_plan) {
        usec_t now = now_mono();
        (void) ctl_sample(c, now);
        PlanResult res;
        PlanHold none = { 0 };
        int r = ctl_run_plan(c, &none, now, &res);
        if (r < 0)
                return r;
        /* A new VM's hypervisor costs what the largest one here costs beside guest RAM (measured
         * in smaps; QEMU under TCG keeps its translation buffer there, ~115 MiB). */
        uint64_t overhead = 0, returnable = 0;
        for (size_t i = 0; i < c->n_vms; i++)
                if (c->vms[i]->mem.ram_known && c->vms[i]->status != CTL_VM_ERROR) {
                        overhead = MAX(overhead, c->vms[i]->mem.ram_overhead);
                        /* Only what is measured: a VM whose resident memory is not known yet (just
                         * booted) would count its whole size above the floor. The plan itself may
                         * still take from it (its balloon is real); the hint does not promise it. */
                        returnable = sat_add_u64(returnable, c->dec[i].returnable);
                }
        r = plan_capacity(&c->cfg.plan, c->sample.total, c->sample.available, returnable, size, overhead, ret);
        if (r >= 0 && ret_plan)
                *ret_plan = res;
        return r;
}

/* Applies the plan's decision for the VM at i. Returns whether its target changed: the caller
 * then records it and sends it (ctl_record_and_send). */
bool ctl_apply_decision(Controller *c, size_t i, usec_t now) {
        CtlVm *vm = c->vms[i];
        const PlanDecision *d = &c->dec[i];
        vm->last = *d;
        if (!vm->actual_known || vm->status == CTL_VM_ERROR)
                vm->last.reason = PLAN_REASON_UNREACHABLE;
        vm->changed = false;
        if (c->pvms[i].parked || vm->plan_fixed)
                return false;
        uint64_t t = d->target;
        bool stall_follow = d->reason == PLAN_REASON_STALLED;
        if (stall_follow) {
                /* The plan keeps a stalled VM where it is; the re-sync's bounds hold as well:
                 * never below the target decided before the stall, never above where that
                 * move started. */
                t = MIN(MAX(t, vm->stall_lo), vm->stall_hi);
                vm->last.target = vm->last.desired = t;
        }
        if (t == vm->target)
                return false;
        if (t < vm->target && vm->target >= vm->spec.assigned && vm->hv->peer_pid > 0 &&
            vm->actual + c->cfg.tolerance >= vm->spec.assigned) {
                /* Leaving full size: the baseline for what the host gets back is now. */
                vmmem_track_baseline(&vm->mem, "", vm->hv->peer_pid);
        }
        if (t < vm->target)
                c->stats.reclaimed_commanded_bytes += vm->target - t;
        else
                c->stats.given_back_commanded_bytes += t - vm->target;
        log_debug("VM %s: target %llu → %llu MiB (%s, desired %llu MiB)", vm->spec.id,
                  (unsigned long long) (vm->target / MiB), (unsigned long long) (t / MiB),
                  plan_reason_to_string(d->reason), (unsigned long long) (d->desired / MiB));
        if (stall_follow)
                vm->target = t;
        else {
                if (t < vm->target && c->reaction_start)
                        vm->reaction_episode = c->episode;
                vm_decide(vm, t);
        }
        vm->changed = true;
        vm->progress_at = now; /* a new target: the stall clock restarts */
        vm->progress_actual = vm->actual;
        if (d->dir != 0) {
                vm->last_dir = d->dir;
                vm->last_move = now;
        }
        return true;
}

/* Records the targets a plan changed, in one go where the owner can (one store transaction for a
 * plan that moves a thousand VMs, instead of one each), and only then sends them: a target is
 * stored before it is commanded, so a restart resumes from what was sent or from what was about
 * to be. */
void ctl_record_and_send(Controller *c, CtlVm *const *moved, size_t n) {
        if (n == 0)
                return;
        if (c->hooks.targets_changed)
                c->hooks.targets_changed(c, moved, n, c->hooks.userdata);
        else if (c->hooks.target_changed)
                for (size_t i = 0; i < n; i++)
                        c->hooks.target_changed(c, moved[i], moved[i]->target, c->hooks.userdata);
        for (size_t i = 0; i < n; i++)
                vm_send(moved[i]);
}
