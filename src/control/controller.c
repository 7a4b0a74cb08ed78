/* SPDX-License-Identifier: MIT */
/* The controller (B5): its registry of VMs, the tick (sample → plan → apply → poll), the views
 * for the API and metrics, and the API's apply batches. Each VM's call cycle is in ctl-vm.c,
 * parking in ctl-park.c. */
#include "control/controller.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "control/ctl-internal.h"
#include "sense/pressure-watch.h"
#include "sense/vm-mem.h"
#include "shared/log.h"
#include "shared/strutil.h"

const double ctl_hist_bounds_s[CTL_HIST_BUCKETS] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };

void hist_observe(CtlHistogram *h, usec_t d) {
        double s = (double) d / (double) USEC_PER_SEC;
        size_t i = 0;
        while (i < CTL_HIST_BUCKETS && s > ctl_hist_bounds_s[i])
                i++;
        h->counts[i]++;
        h->count++;
        h->sum_s += s;
}

void ctl_config_default(CtlConfig *c) {
        *c = (CtlConfig){
                .sample_interval = 250 * USEC_PER_MSEC,
                .op_timeout = 5 * USEC_PER_SEC,
                .refresh_interval = 5 * USEC_PER_SEC,
                .tolerance = 16 * MiB,
                .stall_min_rate = 16 * MiB,
                .stall_window = 3 * USEC_PER_SEC,
                .stall_backoff = 30 * USEC_PER_SEC,
                .psi_mode = 0,
                .psi_stall = 100 * USEC_PER_MSEC,
                .psi_window = 1 * USEC_PER_SEC,
                .stats_period_s = 2,
                .park_protect = 30 * USEC_PER_SEC,
                .park_timeout = 60 * USEC_PER_SEC,
        };
        plan_config_default(&c->plan);
}

static const char *const vm_status_names[_CTL_VM_STATUS_MAX] = {
        [CTL_VM_CONNECTING] = "connecting", [CTL_VM_OK] = "ok",         [CTL_VM_ERROR] = "error",
        [CTL_VM_STALLED] = "stalled",       [CTL_VM_PARKED] = "parked",
};
const char *ctl_vm_status_to_string(CtlVmStatus s) {
        return s >= 0 && s < _CTL_VM_STATUS_MAX ? vm_status_names[s] : NULL;
}
static const char *const trigger_names[_CTL_TRIGGER_MAX] = {
        [CTL_TRIGGER_TIMER] = "timer",   [CTL_TRIGGER_PSI] = "pressure", [CTL_TRIGGER_API] = "api",
        [CTL_TRIGGER_DRIVER] = "driver", [CTL_TRIGGER_START] = "start",
};
const char *ctl_trigger_to_string(CtlTrigger t) {
        return t >= 0 && t < _CTL_TRIGGER_MAX ? trigger_names[t] : NULL;
}

/* ---- sensing ---- */

int ctl_sample(Controller *c, usec_t now) {
        MemSample s;
        char err[256] = "";
        int r;

        if (c->cgroup_dir)
                r = sense_read_cgroup(c->cgroup_dir, &s, &c->cgroup_version, err, sizeof err);
        else
                r = sense_read_host(c->proc_root ? c->proc_root : "", &s, err, sizeof err);
        if (r < 0) {
                if (!c->sample_warned || strcmp(err, c->sample_error) != 0)
                        log_warning("Failed to sample memory pressure: %s", err);
                c->sample_warned = true;
                strscpy(c->sample_error, sizeof c->sample_error, err);
                c->sample_ok = false;
                return r;
        }
        if (c->cfg.psi_mode < 0)
                s.has_psi = false;
        if (c->sample_warned)
                log_info("Memory pressure sampling works again");
        c->sample_warned = false;
        c->sample_error[0] = '\0';
        c->sample = s;
        c->sample_ok = true;
        c->sample_at = now;
        return 0;
}

static void ctl_pressure_io(EvIo *io, int fd, uint32_t revents, void *userdata) {
        Controller *c = userdata;
        uint64_t v;
        (void) io;
        (void) revents;
        /* cgroup v1 eventfds must be drained; PSI trigger fds are level-triggered on POLLPRI and
         * a read is harmless (EAGAIN/EINVAL). */
        (void) !read(fd, &v, sizeof v);
        ctl_kick(c, CTL_TRIGGER_PSI);
}

static int ctl_open_pressure(Controller *c, char *err, size_t errlen) {
        if (c->cfg.psi_mode < 0)
                return 0;
        /* cgroup v1: usage thresholds at the low, critical and high watermarks. */
        const uint32_t pmy[] = { c->cfg.plan.low_pmy, c->cfg.plan.critical_pmy, c->cfg.plan.high_pmy };
        uint64_t th[ELEMENTSOF(pmy)];
        for (size_t i = 0; i < ELEMENTSOF(pmy); i++)
                th[i] = c->sample.total - c->sample.total / PLAN_PERMYRIAD * pmy[i];
        int fd = pressure_watch_open(&c->pressure, c->cgroup_dir, c->proc_root, c->cgroup_version, c->cfg.psi_stall,
                                     c->cfg.psi_window, th, ELEMENTSOF(th));
        if (c->pressure.threshold_error < 0)
                log_warning_errno(c->pressure.threshold_error, "Cannot register a usage threshold on %s: %m, ignoring",
                                  c->cgroup_dir);
        for (size_t i = 0; i < PRESSURE_WATCH_MAX; i++)
                if (c->pressure.fds[i] >= 0) {
                        int r = ev_io_add(c->ev, c->pressure.fds[i], c->pressure.events[i], ctl_pressure_io, c,
                                          &c->pressure_io[i]);
                        if (r < 0)
                                return r;
                }
        if (fd > 0)
                return 0;
        if (c->cfg.psi_mode > 0) {
                snprintf(err, errlen, "no PSI trigger could be registered for the scope (%s)", strerror(-fd));
                return fd;
        }
        log_warning_errno(fd, "No PSI trigger for the scope (%m): pressure is sampled every %llu ms only, continuing",
                          (unsigned long long) (c->cfg.sample_interval / USEC_PER_MSEC));
        return 0;
}

/* ---- driver calls ---- */

static void batch_finish(ApplyBatch *b) {
        for (size_t i = 0; i < b->n; i++)
                if (b->vms[i] && b->vms[i]->batch == b)
                        b->vms[i]->batch = NULL;
        ev_timer_free(b->deadline);
        if (b->cb)
                b->cb(b->c, &b->result, b->decisions, b->previous, b->results, b->n, b->userdata);
        free(b->vms);
        free(b->previous);
        free(b->results);
        free(b->decisions);
        free(b);
}

void vm_batch_done(CtlVm *vm, int result) {
        ApplyBatch *b = vm->batch;
        if (!b)
                return;
        vm->batch = NULL;
        b->results[vm->batch_idx] = result;
        b->vms[vm->batch_idx] = NULL;
        if (--b->pending == 0)
                batch_finish(b);
}

/* ---- the tick ---- */

/* Polls every VM; returns (and records in fleet_idle) whether every one is idle: known, at full
 * size, not parked, no guest pressure, nothing in flight. */
static bool ctl_poll_all(Controller *c, usec_t now) {
        bool idle = true;
        c->ram_budget = CTL_RAM_READS_PER_TICK;
        for (size_t i = 0; i < c->n_vms; i++) {
                CtlVm *vm = c->vms[i];
                vm_poll(vm, now);
                idle = idle && !vm->parked && !vm->parking && vm->actual_known && vm->status == CTL_VM_OK &&
                       vm->target >= vm->spec.assigned && vm->actual + c->cfg.tolerance >= vm->spec.assigned &&
                       !vm->guest_pressure;
        }
        c->fleet_idle = idle;
        return idle;
}

/* Calm: healthy, with available at least twice the high watermark (back to calm at 2.5 times, so
 * that a host near the line does not flap). An idle guest's statistics are read every 10-15 minutes
 * while calm and every 20-30 s otherwise; leaving calm re-reads every guest at once, so they are
 * seconds old, not minutes, when the host reaches the low watermark. */
static void ctl_update_calm(Controller *c, usec_t now) {
        if (!c->sample_ok)
                return;
        uint64_t high = MIN((uint64_t) c->cfg.plan.high_pmy, (uint64_t) PLAN_PERMYRIAD);
        unsigned __int128 avail = (unsigned __int128) c->sample.available * PLAN_PERMYRIAD;
        unsigned __int128 line = (unsigned __int128) c->sample.total * high;
        bool calm = c->ctl.state == PLAN_STATE_HEALTHY && avail >= (c->calm ? 2 * line : 5 * line / 2);
        if (c->calm && !calm) {
                for (size_t i = 0; i < c->n_vms; i++)
                        c->vms[i]->last_stats = 0;
                c->next_idle_poll = now;
        }
        c->calm = calm;
}

/* Nothing to decide on a healthy host above the low watermark with every VM at full size and no
 * hold: the plan is skipped (it would change nothing) and the fleet only polled. Returns whether
 * the tick is done. */
static bool ctl_tick_idle(Controller *c, usec_t now) {
        if (!(c->sample_ok && c->ctl.state == PLAN_STATE_HEALTHY && !(c->hold.bytes && now < c->hold.until) &&
              (unsigned __int128) c->sample.available * PLAN_PERMYRIAD >=
                      (unsigned __int128) c->sample.total * c->cfg.plan.low_pmy &&
              (!c->sample.has_psi || c->sample.psi.some.avg10 < c->cfg.plan.psi_some_pmy)))
                return false;
        /* The fleet's idleness is learnt while polling, and polling an idle fleet every few seconds
         * is enough (its deadlines are tens of seconds): with 1,000 VMs the tick then costs one
         * sample, not two passes over every VM. Anything that could make a VM non-idle (an API
         * call, a driver event, a new actual) clears fleet_idle. */
        if (c->fleet_idle) {
                c->skipped_plans++;
                if (now >= c->next_idle_poll) {
                        c->next_idle_poll = now + CTL_IDLE_POLL;
                        ctl_poll_all(c, now);
                }
                return true;
        }
        if (!ctl_poll_all(c, now))
                return false;
        c->skipped_plans++;
        c->next_idle_poll = now + CTL_IDLE_POLL;
        return true;
}

static void ctl_tick(Controller *c, CtlTrigger trigger) {
        usec_t now = now_mono();
        c->ticks++;
        c->last_tick = now;

        (void) ctl_sample(c, now);
        c->ram_budget = CTL_RAM_READS_PER_TICK;
        ctl_update_calm(c, now);

        if (ctl_tick_idle(c, now))
                return;

        /* Plan and send first, poll after: a reclaim command never waits behind a read. */
        PlanResult res;
        int r = ctl_run_plan(c, &c->hold, now, &res);
        if (r < 0) {
                if (r != -ENODATA)
                        log_warning_errno(r, "Plan failed: %m, keeping every target");
                c->plans_failed++;
                for (size_t i = 0; i < c->n_vms; i++)
                        vm_poll(c->vms[i], now);
                return;
        }
        if (c->hold.bytes && now >= c->hold.until) {
                log_info("Manual hold of %llu MiB expired", (unsigned long long) (c->hold.bytes / MiB));
                c->hold = (PlanHold){ 0 };
        }

        bool changed = false;
        if (res.ctl.state != c->ctl.state) {
                log_notice("Pressure state %s → %s (available %llu of %llu MiB)", plan_state_to_string(c->ctl.state),
                           plan_state_to_string(res.ctl.state), (unsigned long long) (c->sample.available / MiB),
                           (unsigned long long) (c->sample.total / MiB));
                c->transitions++;
                changed = true;
                /* Pressure (or its end): read every VM and its guest now, not at the idle pace. */
                for (size_t i = 0; i < c->n_vms; i++)
                        c->vms[i]->last_stats = c->vms[i]->last_read = c->vms[i]->mem.next_rss = 0;
        }
        /* A pressure episode starts with the sample that takes the host out of the healthy state;
         * its reaction runs from that sample to the first reclaim command. Not when the plan's
         * automatic reclaim rises from zero: a VM held below its size (unparked small, or given
         * back slowly) keeps it above zero on a healthy host, and later episodes then went
         * unmeasured or were measured from a stale start. Manual holds are answered by the API
         * and not counted here. */
        bool pressured = res.ctl.state != PLAN_STATE_HEALTHY;
        if (pressured && c->ctl.state == PLAN_STATE_HEALTHY) {
                c->reaction_start = c->sample_at;
                c->episode++;
        }
        c->ctl = res.ctl;
        c->last = res;

        /* The first VM that moves and can be sent to now (no call in flight) is recorded and sent
         * at once, so the reaction waits neither for the rest of the decisions (each VM leaving full
         * size reads its RSS: 14 ms for 880 VMs in the soak) nor for the batch; the others go
         * together. */
        CtlVm **moved = c->n_vms ? malloc(c->n_vms * sizeof *moved) : NULL;
        size_t n_moved = 0;
        bool first = true;
        for (size_t i = 0; i < c->n_vms; i++) {
                if (!ctl_apply_decision(c, i, now))
                        continue;
                changed = true;
                if (moved && !(first && !c->vms[i]->op_busy)) {
                        moved[n_moved++] = c->vms[i];
                        continue;
                }
                ctl_record_and_send(c, &c->vms[i], 1); /* the first, or out of memory */
                first = false;
        }
        ctl_record_and_send(c, moved, n_moved);
        free(moved);
        /* The episode is over: a reclaim of it still queued is no reaction to a later one. */
        if (!pressured)
                c->reaction_start = 0;
        for (size_t i = 0; i < c->n_vms; i++)
                vm_poll(c->vms[i], now);
        if (changed && c->hooks.journal)
                c->hooks.journal(c, trigger, &res, c->hooks.userdata);
}

static void ctl_on_timer(EvTimer *t, void *userdata) {
        Controller *c = userdata;
        CtlTrigger trig = c->kicked ? c->pending_trigger : CTL_TRIGGER_TIMER;
        c->kicked = false;
        ctl_tick(c, trig);
        ev_timer_set(t, usec_add(now_mono(), c->cfg.sample_interval));
}

void ctl_kick(Controller *c, CtlTrigger trigger) {
        c->fleet_idle = false;
        if (!c->kicked || trigger == CTL_TRIGGER_PSI || trigger == CTL_TRIGGER_API)
                c->pending_trigger = trigger;
        c->kicked = true;
        ev_timer_set(c->tick_timer, 0);
}

/* ---- lifecycle ---- */

int ctl_new(Ev *ev, const CtlConfig *cfg, ctl_driver_factory factory, const CtlHooks *hooks, Controller **ret,
            char *err, size_t errlen) {
        const char *field = NULL;
        if (plan_config_validate(&cfg->plan, &field) < 0) {
                snprintf(err, errlen, "invalid policy setting %s", field ? field : "?");
                return -EINVAL;
        }
        Controller *c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->ev = ev;
        c->cfg = *cfg;
        c->factory = factory;
        if (hooks)
                c->hooks = *hooks;
        pressure_watch_init(&c->pressure);
        if (cfg->cgroup_dir && cfg->cgroup_dir[0] && !(c->cgroup_dir = strdup(cfg->cgroup_dir)))
                goto oom;
        if (cfg->proc_root && cfg->proc_root[0] && !(c->proc_root = strdup(cfg->proc_root)))
                goto oom;
        c->cfg.cgroup_dir = c->cgroup_dir;
        c->cfg.proc_root = c->proc_root;

        int r = ctl_sample(c, now_mono());
        if (r < 0) {
                snprintf(err, errlen, "%s", c->sample_error);
                ctl_free(c);
                return r;
        }
        if (!c->sample.has_psi && c->cfg.psi_mode == 0 && !c->cgroup_dir)
                log_warning("No PSI on this host: the PSI signal is off, watermarks still apply");
        r = ctl_open_pressure(c, err, errlen);
        if (r < 0) {
                ctl_free(c);
                return r;
        }
        r = ctl_grow(c, 16);
        if (r >= 0)
                r = ev_timer_add(ev, 0, ctl_on_timer, c, &c->tick_timer);
        if (r < 0) {
                snprintf(err, errlen, "%s", strerror(-r));
                ctl_free(c);
                return r;
        }
        c->pending_trigger = CTL_TRIGGER_START;
        c->kicked = true;
        *ret = c;
        return 0;
oom:
        ctl_free(c);
        return -ENOMEM;
}

Controller *ctl_free(Controller *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_vms; i++)
                vm_free(c->vms[i]);
        while (c->removing)
                vm_free(c->removing); /* unlinks itself */
        free(c->vms);
        ev_timer_free(c->tick_timer);
        for (size_t i = 0; i < PRESSURE_WATCH_MAX; i++)
                ev_io_free(c->pressure_io[i]);
        pressure_watch_close(&c->pressure);
        plan_scratch_free(c->scratch);
        free(c->pvms);
        free(c->dec);
        free(c->cgroup_dir);
        free(c->proc_root);
        free(c);
        return NULL;
}

static size_t ctl_lower_bound(const Controller *c, const char *id, bool *found) {
        size_t lo = 0, hi = c->n_vms;
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int k = strcmp(c->vms[mid]->spec.id, id);
                if (k == 0) {
                        *found = true;
                        return mid;
                }
                if (k < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        *found = false;
        return lo;
}

CtlVm *ctl_vm_find(Controller *c, const char *id) {
        bool found;
        size_t i = ctl_lower_bound(c, id, &found);
        return found ? c->vms[i] : NULL;
}

int ctl_vm_add(Controller *c, const CtlVmSpec *spec, uint64_t resume_target, CtlVm **ret, char *err, size_t errlen) {
        bool found;
        size_t pos = ctl_lower_bound(c, spec->id, &found);
        if (found) {
                snprintf(err, errlen, "VM '%s' already exists", spec->id);
                return -EEXIST;
        }
        if (c->n_vms == c->cap_vms) {
                size_t cap = c->cap_vms ? c->cap_vms * 2 : 16;
                CtlVm **v = realloc(c->vms, cap * sizeof *v);
                if (!v)
                        return -ENOMEM;
                c->vms = v;
                c->cap_vms = cap;
        }
        int r = ctl_grow(c, c->n_vms + 1);
        if (r < 0)
                return r;
        CtlVm *vm = calloc(1, sizeof *vm);
        if (!vm)
                return -ENOMEM;
        vm->c = c;
        vm->park_call.vm = vm;
        vm->spec = *spec;
        vm->status = CTL_VM_CONNECTING;
        vm->resume_target = resume_target;
        for (const char *p = spec->id; *p; p++)
                vm->rng = vm->rng * 31u + (uint8_t) *p;
        vm->rng |= 1;
        vm->target = vm->decided_from = spec->assigned;
        /* Until it answers and a plan runs, the view shows its configured floor and why it is
         * left alone (never "parked", never a floor of 0). */
        vm->last = (PlanDecision){ .target = spec->assigned,
                                   .desired = spec->assigned,
                                   .floor = plan_floor(&c->cfg.plan, spec->assigned, spec->floor),
                                   .reason = PLAN_REASON_UNREACHABLE };
        r = c->factory(c->ev, spec, &vm->hv, err, errlen);
        if (r < 0) {
                free(vm);
                return r;
        }
        r = hv_add_listener(vm->hv, vm_on_actual_event, vm);
        if (r < 0) {
                hv_free(vm->hv);
                free(vm);
                snprintf(err, errlen, "%s", strerror(-r));
                return r;
        }
        memmove(c->vms + pos + 1, c->vms + pos, (c->n_vms - pos) * sizeof *c->vms);
        c->vms[pos] = vm;
        c->n_vms++;
        c->fleet_idle = false;
        /* Read actual at once rather than at the next tick. */
        vm_poll(vm, now_mono());
        if (ret)
                *ret = vm;
        return 0;
}

int ctl_vm_remove(Controller *c, const char *id) {
        bool found;
        size_t pos = ctl_lower_bound(c, id, &found);
        if (!found)
                return -ENOENT;
        CtlVm *vm = c->vms[pos];
        memmove(c->vms + pos, c->vms + pos + 1, (c->n_vms - pos - 1) * sizeof *c->vms);
        c->n_vms--;
        vm_batch_done(vm, -ECANCELED);
        vm_stats_cancel(vm);
        park_cancel(vm); /* its caller hears at once, not when the call in flight ends */
        vm->removing = true;
        vm->next_removing = c->removing;
        c->removing = vm;
        vm->retry_at = 0;
        if (vm->op_busy)
                return 0; /* vm_after_call() gives it back and frees it */
        if (vm->actual_known &&
            (vm->target != vm->spec.assigned || vm->actual + c->cfg.tolerance < vm->spec.assigned)) {
                vm->target = vm->spec.assigned;
                vm->sent_once = false;
                vm_send(vm);
                if (vm->op_busy)
                        return 0;
        }
        vm_free(vm);
        return 0;
}

size_t ctl_vm_count(const Controller *c) {
        return c->n_vms;
}
CtlVm *ctl_vm_at(Controller *c, size_t i) {
        return i < c->n_vms ? c->vms[i] : NULL;
}
const char *ctl_vm_id(const CtlVm *vm) {
        return vm->spec.id;
}
uint64_t ctl_vm_target(const CtlVm *vm) {
        return vm->target;
}
Hv *ctl_vm_hv(CtlVm *vm) {
        return vm->hv;
}

void ctl_set_hold(Controller *c, uint64_t bytes, usec_t until) {
        c->hold = bytes ? (PlanHold){ .bytes = bytes, .until = until } : (PlanHold){ 0 };
}
PlanHold ctl_hold(const Controller *c) {
        return c->hold;
}

static void batch_on_deadline(EvTimer *t, void *userdata) {
        ApplyBatch *b = userdata;
        (void) t;
        for (size_t i = 0; i < b->n; i++)
                if (b->vms[i] && b->vms[i]->batch == b) {
                        b->results[i] = -ETIMEDOUT;
                        b->vms[i]->batch = NULL;
                }
        b->pending = 0;
        batch_finish(b);
}

int ctl_apply_now(Controller *c, ctl_apply_cb done, void *userdata) {
        size_t n = c->n_vms;
        ApplyBatch *b = calloc(1, sizeof *b);
        if (!b)
                return -ENOMEM;
        b->c = c;
        b->n = n;
        b->cb = done;
        b->userdata = userdata;
        b->vms = calloc(MAX(n, (size_t) 1), sizeof *b->vms);
        b->previous = calloc(MAX(n, (size_t) 1), sizeof *b->previous);
        b->results = calloc(MAX(n, (size_t) 1), sizeof *b->results);
        b->decisions = calloc(MAX(n, (size_t) 1), sizeof *b->decisions);
        if (!b->vms || !b->previous || !b->results || !b->decisions) {
                b->cb = NULL;
                batch_finish(b);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n; i++)
                b->previous[i] = c->vms[i]->target;

        c->kicked = false;
        ctl_tick(c, CTL_TRIGGER_API);
        ev_timer_set(c->tick_timer, usec_add(now_mono(), c->cfg.sample_interval));
        b->result = c->last;

        /* Attach every VM whose command is still unanswered. */
        for (size_t i = 0; i < n; i++) {
                CtlVm *vm = c->vms[i];
                b->decisions[i] = vm->last;
                if (vm->target == b->previous[i] || !vm->op_busy || vm->sent_target != vm->target)
                        continue;
                if (vm->batch)
                        vm_batch_done(vm, 0);
                vm->batch = b;
                vm->batch_idx = i;
                b->vms[i] = vm;
                b->pending++;
        }
        if (b->pending == 0) {
                batch_finish(b);
                return 0;
        }
        int r = ev_timer_add(c->ev, usec_add(now_mono(), c->cfg.op_timeout + USEC_PER_SEC), batch_on_deadline, b,
                             &b->deadline);
        if (r < 0) {
                batch_on_deadline(NULL, b);
                return 0;
        }
        return 0;
}

void ctl_host_view(const Controller *c, CtlHostView *ret) {
        *ret = (CtlHostView){
                .sample = c->sample,
                .sample_ok = c->sample_ok,
                .sample_at = c->sample_at,
                .ctl = c->ctl,
                .last = c->last,
                .transitions = c->transitions,
                .ticks = c->ticks,
                .plans_failed = c->plans_failed,
                .has_psi_trigger = c->pressure.fds[0] >= 0,
        };
        strscpy(ret->sample_error, sizeof ret->sample_error, c->sample_error);
        /* Totals over the VMs that answer: a dead VM's numbers mean nothing any more. Sums
         * saturate (legal sizes go up to 2^62 each). */
        for (size_t i = 0; i < c->n_vms; i++) {
                const CtlVm *vm = c->vms[i];
                if (!vm->actual_known || vm->status == CTL_VM_ERROR)
                        continue;
                ret->commanded = sat_add_u64(ret->commanded, vm->spec.assigned - MIN(vm->target, vm->spec.assigned));
                ret->guest_reached =
                        sat_add_u64(ret->guest_reached, vm->spec.assigned - MIN(vm->actual, vm->spec.assigned));
                ret->confirmed = sat_add_u64(ret->confirmed, vmmem_track_confirmed(&vm->mem));
        }
        ret->reached = ret->confirmed;
}

const CtlConfig *ctl_config(const Controller *c) {
        return &c->cfg;
}

int ctl_set_policy(Controller *c, const PlanConfig *plan, char *err, size_t errlen) {
        const char *field = NULL;
        if (plan_config_validate(plan, &field) < 0) {
                snprintf(err, errlen, "invalid policy setting %s", field ? field : "?");
                return -EINVAL;
        }
        c->cfg.plan = *plan;
        ctl_kick(c, CTL_TRIGGER_API);
        return 0;
}
const CtlStats *ctl_stats(const Controller *c) {
        return &c->stats;
}
