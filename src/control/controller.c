/* SPDX-License-Identifier: MIT */
#include "control/controller.h"

#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/log.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "sense/vm-mem.h"

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
        char park_token;    /* userdata of direct park-path driver calls */
        uint64_t park_size; /* asked for */
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
        /* Host side (B5.7). */
        uint64_t host_rss;
        uint64_t rss_base; /* host_rss when it last was at full size; 0 unknown */
        usec_t next_rss;
        uint32_t rng; /* xorshift state: spreads each VM's periodic reads (seeded from its id) */
        /* Guest RAM resident on the host = host_rss − ram_overhead: the overhead (the hypervisor's
         * own memory, a TCG code buffer included) is measured from smaps now and then, since
         * smaps costs milliseconds and VmRSS nothing. */
        bool ram_known;
        uint64_t ram_overhead;
        usec_t next_ram;
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

#define CTL_PRESSURE_FDS 4
        int pressure_fds[CTL_PRESSURE_FDS];
        EvIo *pressure_io[CTL_PRESSURE_FDS];
        int cgroup_version;

        usec_t reaction_start; /* sample time the need first arose; 0 = measured, or no episode */
        uint64_t episode;      /* pressure episodes begun (reaction_episode of the VMs) */
        CtlStats stats;
};

const double ctl_hist_bounds_s[CTL_HIST_BUCKETS] = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };

static void hist_observe(CtlHistogram *h, usec_t d) {
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

static uint64_t sat_add_u64(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t absdiff(uint64_t a, uint64_t b) {
        return a > b ? a - b : b - a;
}

/* A random share of `period` in [0, period): added to the idle pace of a VM's periodic reads, so
 * that a fleet adopted in the same second does not re-read itself in one burst every 30 s. */
static usec_t vm_jitter(CtlVm *vm, usec_t period) {
        uint32_t x = vm->rng ? vm->rng : 0x9e3779b9u;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        vm->rng = x;
        return period ? (usec_t) x % period : 0;
}

/* ---- sensing ---- */

static int ctl_sample(Controller *c, usec_t now) {
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
        int fd;
        if (c->cgroup_dir) {
                char path[PATH_MAX];
                snprintf(path, sizeof path, "%s/memory.pressure", c->cgroup_dir);
                if (access(path, F_OK) == 0) {
                        fd = psi_trigger_open(path, "some", c->cfg.psi_stall, c->cfg.psi_window);
                        if (fd >= 0) {
                                c->pressure_fds[0] = fd;
                                return ev_io_add(c->ev, fd, EPOLLPRI, ctl_pressure_io, c, &c->pressure_io[0]);
                        }
                }
                fd = cgroup1_pressure_open(c->cgroup_dir, "medium");
                if (fd >= 0) {
                        c->pressure_fds[0] = fd;
                        int r = ev_io_add(c->ev, fd, EPOLLIN, ctl_pressure_io, c, &c->pressure_io[0]);
                        if (r < 0)
                                return r;
                        /* v1 has no PSI: usage thresholds at the low and critical watermarks wake
                         * the controller the moment they are crossed, not at the next sample. */
                        const uint32_t pmy[] = { c->cfg.plan.low_pmy, c->cfg.plan.critical_pmy, c->cfg.plan.high_pmy };
                        for (size_t i = 0; i < ELEMENTSOF(pmy) && c->cgroup_version == 1; i++) {
                                uint64_t t = c->sample.total - c->sample.total / PLAN_PERMYRIAD * pmy[i];
                                int tfd = cgroup1_threshold_open(c->cgroup_dir, t);
                                if (tfd < 0) {
                                        log_warning_errno(tfd, "Cannot register a usage threshold on %s: %m, ignoring",
                                                          c->cgroup_dir);
                                        break;
                                }
                                c->pressure_fds[1 + i] = tfd;
                                r = ev_io_add(c->ev, tfd, EPOLLIN, ctl_pressure_io, c, &c->pressure_io[1 + i]);
                                if (r < 0)
                                        return r;
                        }
                        return 0;
                }
        } else {
                char path[PATH_MAX];
                snprintf(path, sizeof path, "%s/proc/pressure/memory", c->proc_root ? c->proc_root : "");
                fd = psi_trigger_open(path, "some", c->cfg.psi_stall, c->cfg.psi_window);
                if (fd >= 0) {
                        c->pressure_fds[0] = fd;
                        int r = ev_io_add(c->ev, fd, EPOLLPRI, ctl_pressure_io, c, &c->pressure_io[0]);
                        if (r < 0)
                                return r;
                        fd = psi_trigger_open(path, "full", c->cfg.psi_stall, c->cfg.psi_window);
                        if (fd >= 0) {
                                c->pressure_fds[1] = fd;
                                return ev_io_add(c->ev, fd, EPOLLPRI, ctl_pressure_io, c, &c->pressure_io[1]);
                        }
                        return 0;
                }
        }
        if (c->cfg.psi_mode > 0) {
                snprintf(err, errlen, "no PSI trigger could be registered for the scope (%s)", strerror(-fd));
                return fd;
        }
        log_warning_errno(fd, "No PSI trigger for the scope (%m): pressure is sampled every %llu ms only, continuing",
                          (unsigned long long) (c->cfg.sample_interval / USEC_PER_MSEC));
        return 0;
}

/* ---- driver calls ---- */

static void vm_send(CtlVm *vm);
static void vm_free(CtlVm *vm);

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

static void vm_batch_done(CtlVm *vm, int result) {
        ApplyBatch *b = vm->batch;
        if (!b)
                return;
        vm->batch = NULL;
        b->results[vm->batch_idx] = result;
        b->vms[vm->batch_idx] = NULL;
        if (--b->pending == 0)
                batch_finish(b);
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
                vm->next_rss = vm->next_ram = vm->last_stats = 0;
                vm->stats_period_set = vm->stats_fast = vm->stats_fast_refused = false;
        }
        if (vm->status == CTL_VM_ERROR || vm->status == CTL_VM_CONNECTING)
                vm->status = CTL_VM_OK;
        vm->backoff = 0;
        vm->retry_at = 0;
}

/* A decided target. A decision in the direction of the move under way continues it; one the other
 * way starts a new move from the current target. */
static void vm_decide(CtlVm *vm, uint64_t t) {
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

/* A new actual value, from a reply or an event. `seen` is the moment (monotonic) it describes: the
 * event's own timestamp, or when the read was sent (the answer is no older than that); 0 when the
 * driver does not say. */
static void vm_observe(CtlVm *vm, uint64_t actual, usec_t now, usec_t seen) {
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
        if (first) {
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
                log_info("VM %s: adopted at %llu MiB (target %llu MiB)", vm->spec.id,
                         (unsigned long long) (actual / MiB), (unsigned long long) (t / MiB));
                ctl_kick(c, CTL_TRIGGER_DRIVER);
        }
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
        /* Re-sync the target to where it stopped, within the move that was decided, and skip it for
         * a while. */
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

static void vm_on_actual_event(Hv *hv, uint64_t actual, uint64_t when_realtime, void *userdata) {
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
static void vm_stats_cancel(CtlVm *vm) {
        HvReply r = { .op = HV_OP_GET_STATS, .error = -ECANCELED };
        snprintf(r.message, sizeof r.message, "VM %s was removed", vm->spec.id);
        hv_stats_init(&r.stats);
        vm_stats_answer(vm, &r);
}

static void vm_after_call(CtlVm *vm);

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

/* Guest statistics → what the plan may use (B5.4, B5.9). Fresh: reported within three periods.
 * Non-reclaimable use: actual − available. Pressure: swapping in, faulting hard, or nearly out. */
static void on_park_wait(HvWait *w, const HvWaitOutcome *out, void *userdata);

static void vm_take_stats(CtlVm *vm, const HvStats *st) {
        Controller *c = vm->c;
        uint64_t now_rt_s = now_usec(CLOCK_REALTIME) / USEC_PER_SEC;
        bool have = st->total != HV_STAT_UNSET && st->available != HV_STAT_UNSET && st->last_update != 0 &&
                    st->last_update != HV_STAT_UNSET;
        /* Fresh means the guest itself reported within three of its periods when we asked: a
         * guest that stopped reporting is noticed at the next read, however rarely we read. */
        uint64_t max_age = 3 * (uint64_t) c->cfg.stats_period_s + 1;
        bool fresh = have && st->last_update + max_age >= now_rt_s;
        bool pressure = false;
        if (fresh && vm->guest_have && st->last_update > vm->guest.last_update) {
                if (st->swap_in != HV_STAT_UNSET && vm->guest.swap_in != HV_STAT_UNSET &&
                    st->swap_in > vm->guest.swap_in && st->swap_in - vm->guest.swap_in >= 4 * MiB)
                        pressure = true;
                if (st->major_faults != HV_STAT_UNSET && vm->guest.major_faults != HV_STAT_UNSET &&
                    st->major_faults > vm->guest.major_faults &&
                    st->major_faults - vm->guest.major_faults >= 200 * (uint64_t) c->cfg.stats_period_s)
                        pressure = true;
        } else if (fresh && vm->guest_have)
                pressure = vm->guest_pressure; /* no new report: keep the last verdict */
        if (fresh && st->available < st->total / 32)
                pressure = true;
        /* In the balloon's terms (guest memory the VM has now, kernel reservations included): what
         * the guest could not give up is all of it but what it could free. MemTotal is not the
         * frame: it lacks the kernel's reservations (30-50 MiB) and, with deflate-on-oom, still
         * counts the balloon. */
        uint64_t used = fresh && vm->actual > st->available ? vm->actual - st->available : 0;
        /* A report taken before the guest's size last changed is in another frame (right after
         * an unpark: the old, small available against the new, full actual would make the whole
         * guest look used): keep the use measured in the last consistent report. */
        if (fresh && st->last_update <= vm->actual_changed_rt_s && vm->guest_have && vm->guest_fresh)
                used = vm->guest_used;
        if (pressure && !vm->guest_pressure)
                log_notice("VM %s: the guest shows memory pressure (available %llu MiB): it gives last and gets "
                           "back first",
                           vm->spec.id, (unsigned long long) (st->available / MiB));
        vm->guest = *st;
        vm->guest_have = have;
        vm->guest_fresh = fresh;
        vm->guest_used = used;
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

static void vm_send(CtlVm *vm) {
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

static void vm_on_stats_period(Hv *hv, const HvReply *reply, void *userdata);
static void vm_on_stats(Hv *hv, const HvReply *reply, void *userdata);

/* Host-side verification (B5.7): the hypervisor process's resident memory, from /proc, and how
 * much of it is guest RAM (what shrinking the guest can return). */
static void vm_read_rss(CtlVm *vm, usec_t now, bool active) {
        if (now < vm->next_rss || vm->hv->peer_pid <= 0)
                return;
        Controller *c = vm->c;
        /* Every second while memory moves, every 4-6 minutes otherwise (the admission hint and the
         * first plan of an episode use it; a state change re-reads every VM at once): /proc reads
         * add up at 1,000 VMs. */
        vm->next_rss = active ? now + USEC_PER_SEC : now + 240 * USEC_PER_SEC + vm_jitter(vm, 120 * USEC_PER_SEC);
        uint64_t rss;
        if (vmmem_read_rss("", vm->hv->peer_pid, &rss) < 0) {
                vm->host_rss = 0;
                vm->ram_known = false;
                return;
        }
        vm->host_rss = rss;
        /* The baseline for host-confirmed reclaim: the RSS while the VM is at full size. */
        if (vm->actual_known && vm->actual + c->cfg.tolerance >= vm->spec.assigned && vm->target >= vm->spec.assigned)
                vm->rss_base = rss;
        /* The overhead drifts slowly (QEMU's TCG buffer fills as the guest runs new code): re-measure
         * it every minute while the VM matters to a plan, every ten otherwise, and only a few VMs
         * per tick so a fleet adopted at once does not stall the loop. */
        if (now >= vm->next_ram && c->ram_budget > 0) {
                uint64_t ram;
                c->ram_budget--;
                int r = vmmem_read_ram("", vm->hv->peer_pid, vm->spec.assigned, &ram);
                if (r < 0 && (vm->ram_known || vm->next_ram == 0))
                        log_debug_errno(r, "VM %s: guest RAM not found in smaps (%m); planning on its size",
                                        vm->spec.id);
                vm->next_ram = now + (r >= 0 && active ? 60 : 600) * USEC_PER_SEC;
                vm->ram_known = r >= 0;
                if (r >= 0)
                        vm->ram_overhead = rss > ram ? rss - ram : 0;
        }
}

/* Guest RAM the host holds for the VM; 0 when unknown (the plan then uses the guest's size). */
static uint64_t vm_resident(const CtlVm *vm) {
        if (!vm->ram_known || !vm->host_rss)
                return 0;
        uint64_t r = vm->host_rss > vm->ram_overhead ? vm->host_rss - vm->ram_overhead : 1;
        return MAX(MIN(r, vm->spec.assigned), (uint64_t) 1);
}

static void vm_poll(CtlVm *vm, usec_t now) {
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

/* ---- the tick ---- */

static int ctl_grow(Controller *c, size_t n) {
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

static int ctl_run_plan(Controller *c, const PlanHold *hold, usec_t now, PlanResult *ret) {
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

static void ctl_tick(Controller *c, CtlTrigger trigger) {
        usec_t now = now_mono();
        c->ticks++;
        c->last_tick = now;

        (void) ctl_sample(c, now);
        c->ram_budget = CTL_RAM_READS_PER_TICK;
        ctl_update_calm(c, now);

        /* Nothing to decide on a healthy host above the low watermark with every VM at full size
         * and no hold: skip the plan (it would change nothing) and only poll. */
        if (c->sample_ok && c->ctl.state == PLAN_STATE_HEALTHY && !(c->hold.bytes && now < c->hold.until) &&
            (unsigned __int128) c->sample.available * PLAN_PERMYRIAD >=
                    (unsigned __int128) c->sample.total * c->cfg.plan.low_pmy &&
            (!c->sample.has_psi || c->sample.psi.some.avg10 < c->cfg.plan.psi_some_pmy)) {
                /* The fleet's idleness is learnt while polling, and polling an idle fleet every
                 * few seconds is enough (its deadlines are tens of seconds): with 1,000 VMs the tick
                 * then costs one sample, not two passes over every VM. Anything that could make a
                 * VM non-idle (an API call, a driver event, a new actual) clears fleet_idle. */
                if (c->fleet_idle) {
                        c->skipped_plans++;
                        if (now >= c->next_idle_poll) {
                                c->next_idle_poll = now + CTL_IDLE_POLL;
                                ctl_poll_all(c, now);
                        }
                        return;
                }
                if (ctl_poll_all(c, now)) {
                        c->skipped_plans++;
                        c->next_idle_poll = now + CTL_IDLE_POLL;
                        return;
                }
        }

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
                        c->vms[i]->last_stats = c->vms[i]->last_read = c->vms[i]->next_rss = 0;
        }
        /* Reaction latency starts when the need first appears in a sample. */
        /* A pressure episode starts when host pressure first asks for reclaim after asking for
         * none (manual holds are answered synchronously by the API and not counted here). */
        bool needs = res.automatic > 0 && c->last.automatic == 0;
        if (needs) {
                c->reaction_start = c->sample_at;
                c->episode++;
        }
        c->ctl = res.ctl;
        c->last = res;

        for (size_t i = 0; i < c->n_vms; i++) {
                CtlVm *vm = c->vms[i];
                const PlanDecision *d = &c->dec[i];
                vm->last = *d;
                if (!vm->actual_known || vm->status == CTL_VM_ERROR)
                        vm->last.reason = PLAN_REASON_UNREACHABLE;
                vm->changed = false;
                if (c->pvms[i].parked || vm->plan_fixed)
                        continue;
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
                        continue;
                if (t < vm->target && vm->target >= vm->spec.assigned && vm->hv->peer_pid > 0 &&
                    vm->actual + c->cfg.tolerance >= vm->spec.assigned) {
                        /* Leaving full size: the baseline for what the host gets back is now. */
                        uint64_t rss;
                        if (vmmem_read_rss("", vm->hv->peer_pid, &rss) >= 0)
                                vm->host_rss = vm->rss_base = rss;
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
                changed = true;
                if (c->hooks.target_changed)
                        c->hooks.target_changed(c, vm, vm->target, c->hooks.userdata);
                vm_send(vm);
        }
        /* The episode is over: a reclaim of it still queued is no reaction to a later one. */
        if (res.automatic == 0)
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
        for (size_t i = 0; i < CTL_PRESSURE_FDS; i++)
                c->pressure_fds[i] = -1;
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

static void vm_free(CtlVm *vm) {
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
        hv_wait_free(vm->park_wait);
        hv_wait_free(vm->park_done);
        ev_timer_free(vm->park_timer);
        if (vm->park_cb) {
                CtlParkOutcome o = { .error = -ECANCELED, .result = "error" };
                snprintf(o.message, sizeof o.message, "VM %s was removed", vm->spec.id);
                ctl_park_cb cb = vm->park_cb;
                vm->park_cb = NULL;
                cb(vm->c, vm, &o, vm->park_ud);
        }
        if (vm->hv) {
                hv_remove_listener(vm->hv, vm_on_actual_event, vm);
                hv_cancel(vm->hv, vm);
                hv_cancel(vm->hv, &vm->park_token);
                hv_free(vm->hv);
        }
        free(vm);
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
        for (size_t i = 0; i < CTL_PRESSURE_FDS; i++) {
                ev_io_free(c->pressure_io[i]);
                if (c->pressure_fds[i] >= 0)
                        close(c->pressure_fds[i]);
        }
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
Hv *ctl_vm_hv(CtlVm *vm) {
        return vm->hv;
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

/* ---- parking (B4) ---- */

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

static void on_park_wait(HvWait *w, const HvWaitOutcome *out, void *userdata) {
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

/* Starts the wait toward the park size, or toward what the guest can really give up when its
 * statistics are fresh: its non-reclaimable use plus the guest margin. Parking an idle guest
 * below that is what B4.1 forbids (a balloon that takes the last free page leaves the next
 * allocation in the guest to the OOM killer; with deflate-on-oom off nothing gives it back). */
static int park_begin(CtlVm *vm) {
        Controller *c = vm->c;
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
        HvWaitOptions o;
        hv_wait_options_init(&o);
        o.tolerance = c->cfg.tolerance;
        /* The park's deadline counts from the request: waiting for fresh guest statistics used
         * part of it already. */
        o.timeout = vm->park_timeout > waited ? vm->park_timeout - waited : 1;
        o.stall_window = c->cfg.stall_window;
        o.op_timeout = c->cfg.op_timeout;
        int r = hv_wait_start(vm->hv, t, &o, on_park_wait, vm, &vm->park_wait);
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
        CtlVm *vm = (CtlVm *) ((char *) userdata - offsetof(CtlVm, park_token));
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

static void park_ask_stats(CtlVm *vm) {
        Controller *c = vm->c;
        int r = vm->stats_period_set ? hv_get_stats(vm->hv, c->cfg.op_timeout, on_park_stats, &vm->park_token)
                                     : hv_set_stats_period(vm->hv, c->cfg.stats_period_s, c->cfg.op_timeout,
                                                           on_park_stats, &vm->park_token);
        if (r < 0)
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
                r = vm->stats_period_set ? hv_get_stats(vm->hv, c->cfg.op_timeout, on_park_stats, &vm->park_token)
                                         : hv_set_stats_period(vm->hv, c->cfg.stats_period_s, c->cfg.op_timeout,
                                                               on_park_stats, &vm->park_token);
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
        CtlVm *vm = (CtlVm *) ((char *) userdata - offsetof(CtlVm, park_token));
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
        if (wait) {
                HvWaitOptions o;
                hv_wait_options_init(&o);
                o.tolerance = c->cfg.tolerance;
                o.timeout = timeout ? timeout : c->cfg.park_timeout;
                o.stall_window = c->cfg.stall_window;
                o.op_timeout = c->cfg.op_timeout;
                r = hv_wait_start(vm->hv, t, &o, on_park_wait, vm, &vm->park_wait);
        } else
                /* Straight to the driver, ahead of anything queued: unpark always wins (B4.2). */
                r = hv_set_target(vm->hv, t, c->cfg.op_timeout, on_unpark_sent, &vm->park_token);
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
                .host_rss = vm->host_rss,
                .host_confirmed = vm->rss_base > vm->host_rss && vm->host_rss ? vm->rss_base - vm->host_rss : 0,
                .resident = vm_resident(vm),
        };
        if (!vm->guest_have)
                hv_stats_init(&ret->guest);
}

void ctl_set_hold(Controller *c, uint64_t bytes, usec_t until) {
        c->hold = bytes ? (PlanHold){ .bytes = bytes, .until = until } : (PlanHold){ 0 };
}
PlanHold ctl_hold(const Controller *c) {
        return c->hold;
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
                .has_psi_trigger = c->pressure_fds[0] >= 0,
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
                if (vm->rss_base > vm->host_rss && vm->host_rss)
                        ret->confirmed = sat_add_u64(ret->confirmed, vm->rss_base - vm->host_rss);
        }
        ret->reached = ret->confirmed;
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
                if (c->vms[i]->ram_known && c->vms[i]->status != CTL_VM_ERROR) {
                        overhead = MAX(overhead, c->vms[i]->ram_overhead);
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
