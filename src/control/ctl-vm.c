/* SPDX-License-Identifier: MIT */
/* Each VM's driver-call cycle (B5): at most one call in flight, sent from the tick (vm_poll,
 * vm_send) and continued from each answer (vm_after_call); what the answers and the driver's
 * events say about the VM (vm_observe, vm_take_stats); and its end (vm_free). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "control/ctl-internal.h"
#include "control/guest-assess.h"
#include "sense/vm-mem.h"
#include "shared/log.h"
#include "shared/strutil.h"

static void vm_after_call(CtlVm *vm);

/* A random share of `period` in [0, period): added to the idle pace of a VM's periodic reads, so
 * that a fleet adopted in the same second does not re-read itself in one burst every 30 s. */
usec_t vm_jitter(CtlVm *vm, usec_t period) {
        uint32_t x = vm->rng ? vm->rng : 0x9e3779b9u;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        vm->rng = x;
        return period ? (usec_t) x % period : 0;
}

static void vm_fail(CtlVm *vm, const HvReply *reply, usec_t now) {
        Controller *c = vm->c;
        c->fleet_idle = false;
        vm->errors++;
        if (reply->op >= 0 && reply->op < _HV_OP_MAX)
                c->stats.driver_errors[reply->op]++;
        if (reply->error == -ETIMEDOUT)
                c->stats.driver_timeouts++;
        if (strcmp(vm->last_error, reply->message) != 0 || vm->status != CTL_VM_ERROR)
                log_warning("VM %s: %s failed: %s", vm->spec.id, hv_op_to_string(reply->op), reply->message);
        utf8_sanitize(vm->last_error, sizeof vm->last_error, reply->message, strlen(reply->message), 0);
        vm->status = CTL_VM_ERROR;
        vm->backoff = vm->backoff ? MIN(vm->backoff * 2, CTL_ERROR_BACKOFF_MAX) : CTL_ERROR_BACKOFF_MIN;
        vm->retry_at = now + vm->backoff;
}

static void vm_ok(CtlVm *vm) {
        if (vm->status == CTL_VM_ERROR) {
                log_info("VM %s: driver works again", vm->spec.id);
                /* It may be another process now (restarted, or restored from a snapshot): read its
                 * memory map, RSS and guest again, and set its statistics period again. */
                vm->mem.next_rss = vm->mem.next_ram = vm->last_stats = 0;
                vm->stats_period_set = vm->stats_fast = vm->stats_fast_refused = false;
        }
        if (vm->status == CTL_VM_ERROR || vm->status == CTL_VM_CONNECTING)
                vm->status = CTL_VM_OK;
        vm->backoff = 0;
        vm->retry_at = 0;
}

/* A decided target. A decision in the direction of the move under way continues it; one the other
 * way starts a new move from the current target. */
void vm_decide(CtlVm *vm, uint64_t t) {
        bool same = t < vm->target ? vm->decided_from >= vm->target : vm->decided_from <= vm->target;
        if (!same)
                vm->decided_from = vm->target;
        vm->target = t;
}

/* Where a stalled VM's target goes (B5.6): where it stopped, but only back along the move that was
 * decided. Short of a reclaim, the target rises to its actual, never above the target decided before
 * that reclaim (the guest is left where it is, not pushed on); short of a give-back, or below its
 * target, the target stays where it was decided: lowering it would be a reclaim nobody decided. */
static void vm_stall_range(const CtlVm *vm, uint64_t *ret_lo, uint64_t *ret_hi) {
        *ret_lo = vm->target;
        *ret_hi = MAX(vm->decided_from, vm->target);
}

/* The first actual of a VM: adoption (B7). */
static void vm_adopt(CtlVm *vm, uint64_t actual, usec_t now) {
        Controller *c = vm->c;
        /* Adoption (B7): resume from the decided target when it is plausible, else from
         * where the VM is. Never jump to full or to floor. */
        uint64_t t = actual;
        if (vm->resume_target && vm->resume_target <= vm->spec.assigned)
                t = vm->resume_target;
        vm->target = vm->sent_target = t;
        /* Where the resumed move started is not known; it was at `actual` at the latest. */
        vm->decided_from = MAX(actual, t);
        /* A decided target the VM is not at may never have reached the hypervisor (the
         * daemon died between storing the decision and sending it): send it again rather
         * than wait for a move that was never commanded and call the VM stalled. */
        vm->sent_once = vm->resume_target != 0 && absdiff(actual, t) <= c->cfg.tolerance;
        vm->progress_at = now;
        vm->progress_actual = actual;
        if (vm->last.reason == PLAN_REASON_UNREACHABLE)
                vm->last.reason = PLAN_REASON_UNCHANGED;
        log_info("VM %s: adopted at %llu MiB (target %llu MiB)", vm->spec.id, (unsigned long long) (actual / MiB),
                 (unsigned long long) (t / MiB));
        ctl_kick(c, CTL_TRIGGER_DRIVER);
}

/* A VM that stopped short of its target (B5.6): its target re-synced to where it stopped, within
 * the move that was decided, and skipped for a while. */
static void vm_stall(CtlVm *vm, uint64_t actual, usec_t now, usec_t real_now) {
        Controller *c = vm->c;
        uint64_t lo, hi;
        vm_stall_range(vm, &lo, &hi);
        uint64_t t = MIN(MAX(actual, lo), hi);
        vm->stalls++;
        c->stats.stalls++;
        if (t != vm->target)
                log_notice(
                        "VM %s: stalled at %llu MiB on the way to %llu MiB, re-synced to %llu MiB; skipped for %llu s",
                        vm->spec.id, (unsigned long long) (actual / MiB), (unsigned long long) (vm->target / MiB),
                        (unsigned long long) (t / MiB), (unsigned long long) (c->cfg.stall_backoff / USEC_PER_SEC));
        else
                log_notice("VM %s: stalled at %llu MiB on the way to %llu MiB, target kept; skipped for %llu s",
                           vm->spec.id, (unsigned long long) (actual / MiB), (unsigned long long) (vm->target / MiB),
                           (unsigned long long) (c->cfg.stall_backoff / USEC_PER_SEC));
        vm->status = CTL_VM_STALLED;
        vm->stalled_until = now + c->cfg.stall_backoff;
        vm->stall_lo = lo;
        vm->stall_hi = hi;
        vm->move_started = 0;
        vm->progress_at = real_now;
        vm->progress_actual = actual;
        if (t == vm->target)
                return;
        vm->target = t;
        if (c->hooks.target_changed)
                c->hooks.target_changed(c, vm, vm->target, c->hooks.userdata);
        vm_send(vm);
}

/* A new actual value, from a reply or an event. `seen` is the moment (monotonic) it describes: the
 * event's own timestamp, or when the read was sent (the answer is no older than that); 0 when the
 * driver does not say. */
void vm_observe(CtlVm *vm, uint64_t actual, usec_t now, usec_t seen) {
        Controller *c = vm->c;
        usec_t real_now = now_mono(); /* `now` is the loop's cached time: a busy iteration makes it old */
        /* Observations of one VM arrive in the order its hypervisor wrote them: a later one describes
         * no earlier a moment (QEMU's rate-limited BALLOON_CHANGE carries the time of the last change,
         * and nothing changed between that and its delivery). */
        if (seen) {
                seen = MAX(MIN(seen, real_now), vm->seen_at);
                vm->seen_at = seen;
        }
        usec_t lag_max = MIN(CTL_STALL_MAX_LAG, c->cfg.stall_window);
        bool fresh = seen && real_now - seen <= lag_max;
        /* The previous fresh observation, before this one counts as such. */
        usec_t fresh_before = vm->fresh_at;
        if (fresh)
                vm->fresh_at = real_now;
        if (actual + c->cfg.tolerance < vm->spec.assigned)
                c->fleet_idle = false;
        bool first = !vm->actual_known;
        if (first || absdiff(actual, vm->actual) > c->cfg.tolerance)
                vm->actual_changed_rt_s = now_usec(CLOCK_REALTIME) / USEC_PER_SEC;
        vm->actual = actual;
        vm->actual_known = true;
        vm->updated = now;
        if (first)
                vm_adopt(vm, actual, now);
        bool in_flight = absdiff(actual, vm->target) > c->cfg.tolerance;
        if (!in_flight) {
                if (vm->move_started) {
                        hist_observe(&c->stats.time_to_target, now - vm->move_started);
                        vm->move_started = 0;
                }
                vm->progress_at = now;
                vm->progress_actual = actual;
                if (vm->status == CTL_VM_STALLED && now >= vm->stalled_until)
                        vm->status = CTL_VM_OK;
                return;
        }
        /* A park has its own wait (and stall rule); a parked VM stays where it is. */
        if (vm->parked || vm->parking)
                return;
        /* Moving: is it making progress? Judged at the moment the observation describes. One from
         * before the command (or the last progress) says nothing about the move. */
        uint64_t window_bytes =
                (uint64_t) ((unsigned __int128) c->cfg.stall_min_rate * c->cfg.stall_window / USEC_PER_SEC);
        if (seen && seen < vm->progress_at)
                return;
        if (absdiff(actual, vm->progress_actual) >= window_bytes) {
                vm->progress_at = MAX(vm->progress_at, seen ? seen : real_now);
                vm->progress_actual = actual;
                return;
        }
        /* Stalled (B5.6) only on the word of an observation that
         *  - describes a moment a whole window after the command or the last progress;
         *  - was read without lag: a late one means the loop is behind on this VM, and what the
         *    hypervisor wrote since may be waiting behind it;
         *  - follows another fresh one by less than a window: a VM not checked for that long was
         *    starved of attention, and is judged at its next check, not now.
         * Only a target that was really sent can stall: one still queued behind another call has not
         * had its chance (its clock starts when it is sent, vm_send()). */
        bool stalled = vm->sent_once && vm->sent_target == vm->target && now >= vm->stalled_until && fresh &&
                       seen >= usec_add(vm->progress_at, c->cfg.stall_window) && fresh_before &&
                       real_now - fresh_before <= MAX(c->cfg.stall_window, USEC_PER_SEC);
        if (!stalled)
                return;
        vm_stall(vm, actual, now, real_now);
}

void vm_on_actual_event(Hv *hv, uint64_t actual, uint64_t when_realtime, void *userdata) {
        CtlVm *vm = userdata;
        (void) hv;
        if (vm->removing)
                return;
        /* The event's own time (QEMU stamps BALLOON_CHANGE with the host's realtime clock), on the
         * monotonic clock: an event read late describes the guest as it was then, not now. */
        usec_t seen = 0;
        if (when_realtime) {
                usec_t rt = now_usec(CLOCK_REALTIME), mono = now_mono();
                seen = when_realtime >= rt ? mono : usec_sub_floor(mono, rt - when_realtime);
        }
        vm_observe(vm, actual, ev_now(vm->c->ev), seen);
}

/* Answers every ctl_vm_stats() caller waiting on this VM with `reply`. */
static void vm_stats_answer(CtlVm *vm, const HvReply *reply) {
        CtlStatsWaiter *w = TAKE_PTR(vm->stats_waiters);
        while (w) {
                CtlStatsWaiter *next = w->next;
                w->cb(vm->c, vm, reply, w->userdata);
                free(w);
                w = next;
        }
}

/* The VM is going: its on-demand statistics readers are answered now, not when its last call
 * returns (or never, once its driver is freed). */
void vm_stats_cancel(CtlVm *vm) {
        HvReply r = { .op = HV_OP_GET_STATS, .error = -ECANCELED };
        snprintf(r.message, sizeof r.message, "VM %s was removed", vm->spec.id);
        hv_stats_init(&r.stats);
        vm_stats_answer(vm, &r);
}

static void vm_on_api_stats(Hv *hv, const HvReply *reply, void *userdata) {
        CtlVm *vm = userdata;
        (void) hv;
        vm->op_busy = false;
        vm_stats_answer(vm, reply);
        vm_after_call(vm);
}

/* Sends the on-demand statistics read the waiters wait for; a driver that refuses at once answers
 * them at once. */
static int vm_send_api_stats(CtlVm *vm) {
        int r = hv_get_stats(vm->hv, vm->c->cfg.op_timeout, vm_on_api_stats, vm);
        if (r >= 0) {
                vm->op_busy = true;
                return 0;
        }
        HvReply fake = { .op = HV_OP_GET_STATS, .error = r };
        snprintf(fake.message, sizeof fake.message, "get stats: %s", strerror(-r));
        hv_stats_init(&fake.stats);
        vm_stats_answer(vm, &fake);
        return r;
}

int ctl_vm_stats(Controller *c, CtlVm *vm, ctl_stats_cb cb, void *userdata) {
        (void) c;
        if (vm->removing)
                return -ENOENT;
        CtlStatsWaiter *w = calloc(1, sizeof *w);
        if (!w)
                return -ENOMEM;
        *w = (CtlStatsWaiter){ .cb = cb, .userdata = userdata };
        if (!vm->op_busy) {
                /* Nothing in flight: read now (a refusal is the caller's answer, not a callback). */
                int r = hv_get_stats(vm->hv, vm->c->cfg.op_timeout, vm_on_api_stats, vm);
                if (r < 0) {
                        free(w);
                        return r;
                }
                vm->op_busy = true;
        }
        CtlStatsWaiter **p = &vm->stats_waiters;
        while (*p)
                p = &(*p)->next;
        *p = w;
        return 0;
}

static void vm_after_call(CtlVm *vm) {
        if (vm->removing) {
                if (vm->sent_target != vm->spec.assigned && vm->actual_known) {
                        vm->target = vm->spec.assigned;
                        vm_send(vm);
                        if (vm->op_busy)
                                return;
                }
                vm_free(vm);
                return;
        }
        if (vm->target != vm->sent_target || !vm->sent_once)
                vm_send(vm);
        if (!vm->op_busy && vm->stats_waiters)
                vm_send_api_stats(vm);
}

static void vm_on_get_actual(Hv *hv, const HvReply *reply, void *userdata) {
        CtlVm *vm = userdata;
        usec_t now = ev_now(hv->ev);
        vm->op_busy = false;
        if (reply->error < 0)
                vm_fail(vm, reply, now);
        else {
                vm_ok(vm);
                if (!vm->removing)
                        vm_observe(vm, reply->actual, now, vm->read_sent);
                vm->last_read = usec_sub_floor(now, vm_jitter(vm, vm->c->cfg.refresh_interval * 4));
        }
        vm_after_call(vm);
}

static void vm_on_set_target(Hv *hv, const HvReply *reply, void *userdata) {
        CtlVm *vm = userdata;
        usec_t now = ev_now(hv->ev);
        vm->op_busy = false;
        if (reply->error < 0) {
                vm_fail(vm, reply, now);
                /* Not sent: send again once the back-off passes. */
                vm->sent_once = false;
                vm_batch_done(vm, reply->error);
        } else {
                vm_ok(vm);
                vm_batch_done(vm, 0);
        }
        vm_after_call(vm);
}

static void vm_on_stats_period(Hv *hv, const HvReply *reply, void *userdata) {
        CtlVm *vm = userdata;
        (void) hv;
        vm->op_busy = false;
        if (reply->error == -EOPNOTSUPP || reply->error == -ENOTSUP) {
                log_info("VM %s: no guest statistics (%s); floors use the configured values only", vm->spec.id,
                         reply->message);
                vm->stats_off = true;
        } else if (reply->error < 0 && vm->stats_period_set) {
                /* The hypervisor keeps statistics on but refuses a new pace: keep the old one. */
                log_debug("VM %s: cannot change the guest statistics period: %s", vm->spec.id, reply->message);
                vm->stats_fast_refused = true;
        } else if (reply->error < 0) {
                /* Not fatal to the VM: stats are an extra. Try again in a while. */
                log_debug("VM %s: cannot enable guest statistics: %s", vm->spec.id, reply->message);
                vm->stats_off = vm->errors++ > 5;
        } else if (vm->stats_period_set) {
                /* A change of pace (a VM shrunk or back at full size). */
                vm->stats_fast = vm->stats_fast_asked;
        } else {
                vm->stats_period_set = true;
                /* The first read once the hypervisor has asked the guest at least once, not at
                 * the idle fleet's pace: floors and the admission hint need the guest's use
                 * from the start. */
                vm->last_stats = ev_now(vm->c->ev);
                vm->stats_first_at = usec_add(ev_now(vm->c->ev),
                                              (usec_t) vm->c->cfg.stats_period_s * USEC_PER_SEC + USEC_PER_SEC / 2);
        }
        vm_after_call(vm);
}

/* Guest statistics → what the plan may use (B5.4, B5.9), assessed by guest_assess(); a guest under
 * pressure stops a park in progress, raises a parked VM, and wakes the tick. */
void vm_take_stats(CtlVm *vm, const HvStats *st) {
        Controller *c = vm->c;
        GuestAssessment prev = { .stats = vm->guest,
                                 .have = vm->guest_have,
                                 .fresh = vm->guest_fresh,
                                 .pressure = vm->guest_pressure,
                                 .used = vm->guest_used },
                        a;
        GuestReport in = { .stats = st,
                           .period_s = c->cfg.stats_period_s,
                           .now_rt_s = now_usec(CLOCK_REALTIME) / USEC_PER_SEC,
                           .actual = vm->actual,
                           .actual_changed_rt_s = vm->actual_changed_rt_s };
        guest_assess(&prev, &in, &a);
        bool pressure = a.pressure;
        if (pressure && !vm->guest_pressure)
                log_notice("VM %s: the guest shows memory pressure (available %llu MiB): it gives last and gets "
                           "back first",
                           vm->spec.id, (unsigned long long) (st->available / MiB));
        vm->guest = a.stats;
        vm->guest_have = a.have;
        vm->guest_fresh = a.fresh;
        vm->guest_used = a.used;
        vm->guest_pressure = pressure;
        if (pressure && vm->parking && vm->park_wait && vm->parked && st->last_update >= vm->park_started_rt_s) {
                /* The guest ran out while the balloon was still inflating: stop here, give it the
                 * margin back, and answer as a stall (B4.1: never pushed into OOM). */
                HvWaitOutcome out = { .result = HV_WAIT_STALLED, .target = vm->target, .reached = vm->actual };
                snprintf(out.message, sizeof out.message,
                         "the guest ran out of memory at %llu MiB (available %llu MiB): stopped there",
                         (unsigned long long) (vm->actual / MiB), (unsigned long long) (st->available / MiB));
                /* Not inside the wait's own callbacks here, so it can go now. */
                HvWait *w = TAKE_PTR(vm->park_wait);
                hv_wait_free(w);
                on_park_wait(NULL, &out, vm);
                return;
        }
        if (pressure && vm->parked && !vm->parking && vm->actual_known && vm->target < vm->spec.assigned) {
                /* B5.9 for a parked VM (the plan leaves parked VMs alone): a parked guest that
                 * runs out gets the guest margin back at once, and stays parked. */
                uint64_t t = MIN(vm->target + c->cfg.plan.guest_margin, vm->spec.assigned);
                log_notice("VM %s: parked guest under pressure, raising it %llu → %llu MiB", vm->spec.id,
                           (unsigned long long) (vm->target / MiB), (unsigned long long) (t / MiB));
                vm->target = t;
                vm->last_dir = 1;
                vm->last_move = now_mono();
                if (c->hooks.target_changed)
                        c->hooks.target_changed(c, vm, t, c->hooks.userdata);
        }
        if (pressure)
                ctl_kick(c, CTL_TRIGGER_DRIVER); /* B5.9: deflate at once, not at the next tick */
}

static void vm_on_stats(Hv *hv, const HvReply *reply, void *userdata) {
        CtlVm *vm = userdata;
        (void) hv;
        vm->op_busy = false;
        if (reply->error == -EOPNOTSUPP || reply->error == -ENOTSUP)
                vm->stats_off = true;
        else if (reply->error < 0)
                vm->guest_fresh = false;
        else if (!vm->removing)
                vm_take_stats(vm, &reply->stats);
        vm_after_call(vm);
}

void vm_send(CtlVm *vm) {
        Controller *c = vm->c;
        usec_t now = ev_now(c->ev);
        if (vm->op_busy || !vm->actual_known) {
                log_debug("VM %s: target %llu MiB queued behind a pending call", vm->spec.id,
                          (unsigned long long) (vm->target / MiB));
                return;
        }
        if (vm->retry_at && now < vm->retry_at && !vm->removing)
                return;
        if (vm->sent_once && vm->sent_target == vm->target) {
                vm_batch_done(vm, 0);
                return;
        }
        uint64_t t = vm->target;
        uint64_t prev_sent = vm->sent_once ? vm->sent_target : UINT64_MAX;
        int r = hv_set_target(vm->hv, t, c->cfg.op_timeout, vm_on_set_target, vm);
        if (r < 0) {
                HvReply fake = { .op = HV_OP_SET_TARGET, .error = r };
                snprintf(fake.message, sizeof fake.message, "set target: %s", strerror(-r));
                vm_fail(vm, &fake, now);
                vm_batch_done(vm, r);
                return;
        }
        vm->op_busy = true;
        vm->sent_target = t;
        vm->sent_once = true;
        vm->commands++;
        c->stats.commands++;
        /* Time to target (B8) runs from the command of a new target; one within tolerance of the
         * actual (the re-sync after adoption) is no move, and must not leave a clock running that
         * a later move would inherit. */
        if (absdiff(t, vm->actual) <= c->cfg.tolerance)
                vm->move_started = 0;
        else if (!vm->move_started || t != prev_sent)
                vm->move_started = now;
        /* The stall clock runs from the write, not from the loop's cached time: an iteration that
         * took seconds must not count against the VM. */
        vm->progress_at = now_mono();
        vm->progress_actual = vm->actual;
        /* Reaction: from the sample that showed the need to the first reclaim the plan decided for it
         * that is written to a hypervisor, here in the tick or later, once the call it was queued
         * behind (a statistics read, which the switch to pressure itself starts) has returned. */
        if (t < vm->actual && c->reaction_start && vm->reaction_episode == c->episode) {
                usec_t sent = now_mono(); /* ev_now() is the loop's cached time: older than the sample */
                usec_t d = sent - MIN(sent, c->reaction_start);
                hist_observe(&c->stats.reaction, d);
                log_info("Reaction: first reclaim command %llu.%03llu ms after the sample that showed the need",
                         (unsigned long long) (d / USEC_PER_MSEC), (unsigned long long) (d % USEC_PER_MSEC));
                c->reaction_start = 0;
        }
}

/* Host-side verification (B5.7): the hypervisor process's resident memory, from /proc, and how
 * much of it is guest RAM (what shrinking the guest can return). */
static void vm_read_rss(CtlVm *vm, usec_t now, bool active) {
        if (!vmmem_track_due(&vm->mem, now) || vm->hv->peer_pid <= 0)
                return;
        Controller *c = vm->c;
        /* Every second while memory moves, every 4-6 minutes otherwise (the admission hint and the
         * first plan of an episode use it; a state change re-reads every VM at once): /proc reads
         * add up at 1,000 VMs. smaps only for a few VMs per tick, so a fleet adopted at once does
         * not stall the loop. */
        usec_t next = active ? now + USEC_PER_SEC : now + 240 * USEC_PER_SEC + vm_jitter(vm, 120 * USEC_PER_SEC);
        /* The baseline for host-confirmed reclaim: the RSS while the VM is at full size. */
        bool at_full = vm->actual_known && vm->actual + c->cfg.tolerance >= vm->spec.assigned &&
                       vm->target >= vm->spec.assigned;
        int r = vmmem_track_read(&vm->mem, "", vm->hv->peer_pid, vm->spec.assigned, at_full, active, now, next,
                                 &c->ram_budget);
        if (r < 0)
                log_debug_errno(r, "VM %s: guest RAM not found in smaps (%m); planning on its size", vm->spec.id);
}

/* Guest RAM the host holds for the VM; 0 when unknown (the plan then uses the guest's size). */
uint64_t vm_resident(const CtlVm *vm) {
        return vmmem_track_resident(&vm->mem, vm->spec.assigned);
}

void vm_poll(CtlVm *vm, usec_t now) {
        if (vm->park_done)
                vm->park_done = hv_wait_free(vm->park_done);
        if (vm->op_busy || vm->removing)
                return;
        Controller *c = vm->c;
        /* What costs nothing when nothing happens (the idle goal is ≤ 0.1% of a core with 1,000
         * VMs): a VM at full size on a healthy host cannot change by itself (its hypervisor reports
         * any change as an event on the connection ballast keeps open), so it is re-read every 5
         * minutes (15 while the host is calm), spread; its guest statistics every 10-15 minutes
         * while the host is calm and every 20-30 s once it is not (ctl_update_calm re-reads them
         * all when it stops being calm), so
         * that they are seconds old when pressure starts, and a guest that stopped reporting is
         * noticed; a ballooned, parked or pressured VM at the normal pace. A state change re-arms
         * everything at once (ctl_tick). */
        bool ballooned = vm->actual_known && (vm->target + c->cfg.tolerance < vm->spec.assigned ||
                                              vm->actual + c->cfg.tolerance < vm->spec.assigned);
        /* A guest under pressure is watched at the normal pace until it is not: a full-size VM
         * reported "pressure" for 28 s after its job ended when read every 30 s. */
        bool active = ballooned || vm->parked || vm->guest_pressure || c->ctl.state != PLAN_STATE_HEALTHY;
        usec_t refresh = active ? c->cfg.refresh_interval : (c->calm ? 180 : 60) * c->cfg.refresh_interval;
        usec_t stats_iv = active    ? (usec_t) c->cfg.stats_period_s * USEC_PER_SEC
                          : c->calm ? MAX((usec_t) c->cfg.stats_period_s * USEC_PER_SEC, 900 * USEC_PER_SEC)
                                    : MAX((usec_t) c->cfg.stats_period_s * USEC_PER_SEC, 30 * USEC_PER_SEC);
        vm_read_rss(vm, now, active);
        /* Guest statistics: enable the polling once, then read them every period. */
        if (vm->actual_known && c->cfg.stats_period_s && !vm->stats_off && !(vm->retry_at && now < vm->retry_at)) {
                if (!vm->stats_period_set) {
                        int r = hv_set_stats_period(vm->hv, c->cfg.stats_period_s, c->cfg.op_timeout,
                                                    vm_on_stats_period, vm);
                        if (r >= 0) {
                                vm->op_busy = true;
                                return;
                        }
                        /* Refused at once (Cloud Hypervisor has no statistics): carry on without. */
                        vm->stats_off = true;
                }
                /* A shrunk VM's guest is polled every second: its next job must get its memory
                 * back quickly, and the guest's pressure shows one poll after it starts. At full
                 * size (and parked: small on purpose) the configured period is enough. */
                bool fast = ballooned && !vm->parked && c->cfg.stats_period_s > 1;
                if (fast != vm->stats_fast && !vm->stats_fast_refused) {
                        vm->stats_fast_asked = fast;
                        int r = hv_set_stats_period(vm->hv, fast ? 1 : c->cfg.stats_period_s, c->cfg.op_timeout,
                                                    vm_on_stats_period, vm);
                        if (r >= 0) {
                                vm->op_busy = true;
                                return;
                        }
                        vm->stats_fast_refused = true;
                }
                if (vm->stats_fast)
                        stats_iv = USEC_PER_SEC;
                bool first = vm->stats_first_at && now >= vm->stats_first_at;
                if (!vm->stats_off && (first || now >= vm->last_stats + stats_iv)) {
                        vm->stats_first_at = 0;
                        /* At the idle pace, the next read comes 20-30 s later (spread). */
                        vm->last_stats = active ? now : usec_sub_floor(now, vm_jitter(vm, stats_iv / 3));
                        vm->stats_interval = stats_iv;
                        int r = hv_get_stats(vm->hv, c->cfg.op_timeout, vm_on_stats, vm);
                        if (r >= 0) {
                                vm->op_busy = true;
                                return;
                        }
                        if (r == -EOPNOTSUPP)
                                vm->stats_off = true;
                }
        }
        if (vm->retry_at && now < vm->retry_at)
                return;
        bool moving = vm->actual_known && absdiff(vm->actual, vm->target) > vm->c->cfg.tolerance;
        if (vm->actual_known && !moving && now < vm->last_read + refresh && vm->status != CTL_VM_ERROR)
                return;
        if (vm->actual_known && vm->sent_once && vm->target != vm->sent_target) {
                vm_send(vm);
                return;
        }
        vm->read_sent = now_mono();
        if (hv_get_actual(vm->hv, vm->c->cfg.op_timeout, vm_on_get_actual, vm) >= 0)
                vm->op_busy = true;
}

void vm_free(CtlVm *vm) {
        if (!vm)
                return;
        if (vm->removing)
                for (CtlVm **p = &vm->c->removing; *p; p = &(*p)->next_removing)
                        if (*p == vm) {
                                *p = vm->next_removing;
                                break;
                        }
        vm_batch_done(vm, -ECANCELED);
        vm_stats_cancel(vm);
        park_cancel(vm);
        if (vm->hv) {
                hv_remove_listener(vm->hv, vm_on_actual_event, vm);
                hv_cancel(vm->hv, vm);
                hv_free(vm->hv);
        }
        free(vm);
}

void ctl_vm_update(Controller *c, CtlVm *vm, uint64_t assigned, uint64_t floor, uint32_t shares) {
        vm->spec.assigned = assigned;
        vm->spec.floor = floor;
        vm->spec.shares = shares;
        if (vm->target > assigned)
                vm->target = assigned;
        ctl_kick(c, CTL_TRIGGER_API);
}

int ctl_vm_set_target(Controller *c, CtlVm *vm, uint64_t target) {
        if (!vm->actual_known)
                return -EAGAIN;
        if (vm->parked || vm->parking)
                return -EBUSY;
        if (target == vm->target)
                return 0;
        vm->last_dir = target < vm->target ? -1 : 1;
        vm->last_move = now_mono();
        vm_decide(vm, target);
        vm->reaction_episode = 0; /* the API's, not the plan's */
        c->fleet_idle = false;
        if (c->hooks.target_changed)
                c->hooks.target_changed(c, vm, target, c->hooks.userdata);
        vm_send(vm);
        return 0;
}

void ctl_vm_view(const CtlVm *vm, CtlVmView *ret) {
        *ret = (CtlVmView){
                .spec = &vm->spec,
                .status = vm->parked                                                        ? CTL_VM_PARKED
                          : vm->status == CTL_VM_STALLED && now_mono() >= vm->stalled_until ? CTL_VM_OK
                          : vm->status == CTL_VM_PARKED                                     ? CTL_VM_OK
                                                                                            : vm->status,
                .actual_known = vm->actual_known,
                .actual = vm->actual,
                .target = vm->target,
                .last = vm->last,
                .last_error = vm->last_error,
                .errors = vm->errors,
                .commands = vm->commands,
                .stalls = vm->stalls,
                .updated = vm->updated,
                .changed = vm->changed,
                .parked = vm->parked,
                .parking = vm->parking,
                .park_previous = vm->park_prev,
                .unparked_until = vm->unparked_until,
                .guest_fresh = vm->guest_fresh,
                .guest_pressure = vm->guest_pressure,
                .guest_used = vm->guest_used,
                .guest = vm->guest,
                .hv_pid = vm->hv ? vm->hv->peer_pid : 0,
                .host_rss = vm->mem.host_rss,
                .host_confirmed = vmmem_track_confirmed(&vm->mem),
                .resident = vm_resident(vm),
        };
        if (!vm->guest_have)
                hv_stats_init(&ret->guest);
}
