/* SPDX-License-Identifier: MIT */
/* Parking (B4): a park shrinks a VM to a small size and waits for the guest to get there (never
 * below what its fresh statistics say it uses), an unpark gives it back; both answer once, through
 * the caller's callback. The park's own driver calls (its statistics read, the set-and-wait) run
 * beside the VM's call cycle. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control/ctl-internal.h"
#include "shared/log.h"

static void park_report(CtlVm *vm, CtlParkOutcome *o) {
        ctl_park_cb cb = vm->park_cb;
        vm->park_cb = NULL;
        if (cb)
                cb(vm->c, vm, o, vm->park_ud);
}

static void park_persist(CtlVm *vm) {
        Controller *c = vm->c;
        if (c->hooks.park_changed)
                c->hooks.park_changed(c, vm, vm->parked, vm->park_prev, vm->unparked_until, c->hooks.userdata);
        if (c->hooks.target_changed)
                c->hooks.target_changed(c, vm, vm->target, c->hooks.userdata);
}

static uint64_t c_margin(const CtlVm *vm) {
        return vm->c->cfg.plan.guest_margin;
}

void on_park_wait(HvWait *w, const HvWaitOutcome *out, void *userdata) {
        CtlVm *vm = userdata;
        usec_t now = now_mono();
        vm->park_wait = NULL;
        /* Freed at the next poll, not from inside its own callback; an earlier finished one can go. */
        hv_wait_free(vm->park_done);
        vm->park_done = w;
        vm->parking = false;
        CtlParkOutcome o = {
                .previous = vm->park_report_prev,
                .target = out->target,
                .reached = out->reached,
                .elapsed = now - vm->park_started,
        };
        snprintf(o.message, sizeof o.message, "%s", out->message);
        /* The wait sent its target itself. */
        vm->sent_target = out->target;
        vm->sent_once = true;
        switch (out->result) {
        case HV_WAIT_REACHED:
                o.result = "reached";
                if (vm->park_capped && vm->parked) {
                        /* It went as low as it safely can: that is a stall short of the size asked. */
                        o.result = "stalled";
                        snprintf(o.message, sizeof o.message,
                                 "the guest uses %llu MiB it cannot give up: parked at %llu MiB (its use plus a "
                                 "32 MiB margin), not %llu MiB",
                                 (unsigned long long) (vm->park_used / MiB), (unsigned long long) (out->target / MiB),
                                 (unsigned long long) (vm->park_size / MiB));
                        vm->stalls++;
                }
                break;
        case HV_WAIT_STALLED:
        case HV_WAIT_DEADLINE:
                /* Left where it stopped, never pushed further (B4.1): the target follows it. */
                o.result = out->result == HV_WAIT_STALLED ? "stalled" : "deadline";
                /* Where it stopped is where the guest ran out: leave it the guest margin above
                 * that, or its next allocation is an OOM kill (seen with deflate-on-oom off). */
                vm->target = MIN(usec_add(out->reached, c_margin(vm)), vm->spec.assigned);
                vm->stalls += out->result == HV_WAIT_STALLED;
                break;
        default:
                o.result = "error";
                o.error = out->error ? out->error : -EIO;
                vm->target = vm->actual_known ? vm->actual : vm->target;
        }
        vm_observe(vm, out->reached, now, out->noticed);
        park_persist(vm);
        if (vm->parked && !vm->op_busy)
                vm_send(vm);
        log_info("VM %s: park %s at %llu MiB (target %llu MiB) in %llu ms", vm->spec.id, o.result,
                 (unsigned long long) (out->reached / MiB), (unsigned long long) (out->target / MiB),
                 (unsigned long long) (o.elapsed / USEC_PER_MSEC));
        park_report(vm, &o);
}

/* The park's set-and-wait toward t, within timeout. */
static int park_wait_start(CtlVm *vm, uint64_t t, usec_t timeout) {
        Controller *c = vm->c;
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.tolerance = c->cfg.tolerance;
        o.timeout = timeout;
        o.stall_window = c->cfg.stall_window;
        o.op_timeout = c->cfg.op_timeout;
        return hv_wait_start(vm->hv, t, &o, on_park_wait, vm, &vm->park_wait);
}

/* Starts the wait toward the park size, or toward what the guest can really give up when its
 * statistics are fresh: its non-reclaimable use plus the guest margin. Parking an idle guest
 * below that is what B4.1 forbids (a balloon that takes the last free page leaves the next
 * allocation in the guest to the OOM killer; with deflate-on-oom off nothing gives it back). */
static int park_begin(CtlVm *vm) {
        uint64_t t = vm->park_size;
        vm->park_capped = false;
        if (vm->guest_fresh && vm->guest_used) {
                uint64_t keep = MIN(vm->guest_used + CTL_PARK_MARGIN, vm->spec.assigned);
                if (keep > t) {
                        t = keep;
                        vm->park_capped = true;
                        vm->park_used = vm->guest_used;
                }
        }
        /* The deadline passed while fresh statistics were awaited: nothing is sent, the VM stays
         * where it is (parked), and the outcome says so. */
        usec_t waited = usec_sub_floor(now_mono(), vm->park_started);
        if (vm->parking && waited >= vm->park_timeout) {
                HvWaitOutcome out = {
                        .result = HV_WAIT_DEADLINE, .start = vm->actual, .target = t, .reached = vm->actual
                };
                snprintf(out.message, sizeof out.message,
                         "the deadline passed before the guest's statistics were fresh: nothing was sent");
                on_park_wait(NULL, &out, vm);
                return 0;
        }
        /* The park's deadline counts from the request: waiting for fresh guest statistics used
         * part of it already. */
        int r = park_wait_start(vm, t, vm->park_timeout > waited ? vm->park_timeout - waited : 1);
        if (r < 0)
                return r;
        vm->target = t;
        return 0;
}

static void park_fail(CtlVm *vm, int error, const char *msg) {
        vm->parking = vm->parked = false;
        vm->status = CTL_VM_OK;
        CtlParkOutcome o = { .error = error, .result = "error", .previous = vm->park_report_prev };
        snprintf(o.message, sizeof o.message, "%s", msg);
        park_persist(vm);
        park_report(vm, &o);
}

/* Before a park, the guest's own figures: a park of a guest whose working set is unknown could
 * take its last free page. Asks until a report newer than the park request arrives (the guest
 * reports once per stats period) is at hand, at most three periods, then parks with what it has. */
static void park_ask_stats(CtlVm *vm);

static void on_park_timer(EvTimer *t, void *userdata) {
        CtlVm *vm = userdata;
        (void) t;
        park_ask_stats(vm);
}

static void park_go(CtlVm *vm) {
        vm->park_timer = ev_timer_free(vm->park_timer);
        int r = park_begin(vm);
        if (r < 0)
                park_fail(vm, r, "cannot start the park");
}

static void on_park_stats(Hv *hv, const HvReply *reply, void *userdata) {
        CtlVm *vm = ((CtlParkCall *) userdata)->vm;
        Controller *c = vm->c;
        (void) hv;
        bool fresh_enough = false;
        if (reply->op == HV_OP_SET_STATS_PERIOD) {
                if (reply->error >= 0)
                        vm->stats_period_set = true;
                else
                        vm->stats_off = true;
        } else if (reply->error >= 0) {
                vm_take_stats(vm, &reply->stats);
                /* The guest reported within three periods, and since its size last changed. */
                fresh_enough = vm->guest_fresh && reply->stats.last_update > vm->actual_changed_rt_s;
        } else
                vm->stats_off = reply->error == -EOPNOTSUPP;
        usec_t waited = now_mono() - vm->park_started;
        if (fresh_enough || vm->stats_off || waited >= 3 * (usec_t) c->cfg.stats_period_s * USEC_PER_SEC + USEC_PER_SEC)
                return park_go(vm);
        /* Not yet: ask again shortly. */
        if (!vm->park_timer && ev_timer_add(c->ev, USEC_INFINITY, on_park_timer, vm, &vm->park_timer) < 0)
                return park_go(vm);
        ev_timer_set(vm->park_timer, usec_add(now_mono(), 250 * USEC_PER_MSEC));
}

/* Fresh statistics for the park: the period first when the cycle has not set it yet. */
static int park_request_stats(CtlVm *vm) {
        Controller *c = vm->c;
        return vm->stats_period_set ? hv_get_stats(vm->hv, c->cfg.op_timeout, on_park_stats, &vm->park_call)
                                    : hv_set_stats_period(vm->hv, c->cfg.stats_period_s, c->cfg.op_timeout,
                                                          on_park_stats, &vm->park_call);
}

static void park_ask_stats(CtlVm *vm) {
        if (park_request_stats(vm) < 0)
                park_go(vm);
}

int ctl_vm_park(Controller *c, CtlVm *vm, uint64_t size, usec_t timeout, ctl_park_cb cb, void *userdata) {
        if (!vm->actual_known)
                return -EAGAIN;
        if (vm->parking || vm->park_cb)
                return -EBUSY;
        if (vm->parked)
                return -EALREADY;
        vm->park_size = MIN(size, vm->spec.assigned);
        vm->park_timeout = timeout ? timeout : c->cfg.park_timeout;
        vm->park_started = now_mono();
        vm->park_started_rt_s = now_usec(CLOCK_REALTIME) / USEC_PER_SEC + 1;
        uint64_t prev = vm->target;
        int r;
        /* Fresh figures first (the idle pace reads them only every 30 s). */
        bool ask = c->cfg.stats_period_s && !vm->stats_off;
        if (ask)
                r = park_request_stats(vm);
        else
                r = park_begin(vm);
        if (r < 0)
                return r;
        vm_batch_done(vm, -ECANCELED);
        vm->parked = vm->parking = true;
        vm->reaction_episode = 0; /* the park's targets are asked for, not reactions */
        vm->park_prev = prev;
        vm->park_report_prev = prev;
        vm->unparked_until = 0;
        /* While fresh statistics are awaited the target stays where it is: the park's wait sends
         * it (park_begin), and a target set here would be sent by the normal path at once, below
         * what the guest may need. */
        vm->last_dir = -1;
        vm->last_move = now_mono();
        vm->park_cb = cb;
        vm->park_ud = userdata;
        vm->status = CTL_VM_PARKED;
        c->fleet_idle = false;
        park_persist(vm);
        return 0;
}

static void on_unpark_sent(Hv *hv, const HvReply *reply, void *userdata) {
        CtlVm *vm = ((CtlParkCall *) userdata)->vm;
        (void) hv;
        CtlParkOutcome o = {
                .previous = vm->park_report_prev,
                .target = vm->target,
                .reached = vm->actual,
                .elapsed = now_mono() - vm->park_started,
                .result = reply->error < 0 ? "error" : "sent",
                .error = reply->error,
        };
        snprintf(o.message, sizeof o.message, "%s", reply->message);
        if (reply->error < 0)
                vm->sent_once = false; /* the controller sends it again */
        park_report(vm, &o);
}

int ctl_vm_unpark(Controller *c, CtlVm *vm, uint64_t size, bool wait, usec_t timeout, ctl_park_cb cb, void *userdata) {
        if (!vm->actual_known)
                return -EAGAIN;
        if (vm->parking || vm->park_cb)
                return -EBUSY;
        if (!vm->parked)
                return -EALREADY;
        uint64_t t = size ? MIN(size, vm->spec.assigned) : vm->park_prev ? vm->park_prev : vm->spec.assigned;
        usec_t now = now_mono();
        int r;
        if (wait)
                r = park_wait_start(vm, t, timeout ? timeout : c->cfg.park_timeout);
        else
                /* Straight to the driver, ahead of anything queued: unpark always wins (B4.2). */
                r = hv_set_target(vm->hv, t, c->cfg.op_timeout, on_unpark_sent, &vm->park_call);
        if (r < 0)
                return r;
        vm->park_report_prev = vm->target;
        vm->parked = false;
        vm->parking = wait;
        vm_decide(vm, t);
        vm->sent_target = t;
        vm->sent_once = true;
        vm->last_dir = 1;
        vm->last_move = now;
        vm->move_started = now;
        vm->unparked_until = usec_add(now, c->cfg.park_protect);
        vm->park_started = now;
        vm->park_cb = cb;
        vm->park_ud = userdata;
        vm->status = CTL_VM_OK;
        vm->stalled_until = 0;
        c->fleet_idle = false;
        park_persist(vm);
        return 0;
}

void ctl_vm_restore_park(Controller *c, CtlVm *vm, bool parked, uint64_t previous, usec_t until_mono) {
        (void) c;
        vm->parked = parked;
        vm->park_prev = previous;
        vm->unparked_until = until_mono;
        if (parked)
                vm->status = CTL_VM_PARKED;
}

void park_cancel(CtlVm *vm) {
        hv_wait_free(vm->park_wait);
        hv_wait_free(vm->park_done);
        ev_timer_free(vm->park_timer);
        vm->park_wait = vm->park_done = NULL;
        vm->park_timer = NULL;
        if (vm->park_cb) {
                CtlParkOutcome o = { .error = -ECANCELED, .result = "error" };
                snprintf(o.message, sizeof o.message, "VM %s was removed", vm->spec.id);
                ctl_park_cb cb = vm->park_cb;
                vm->park_cb = NULL;
                cb(vm->c, vm, &o, vm->park_ud);
        }
        if (vm->hv)
                hv_cancel(vm->hv, &vm->park_call);
}
