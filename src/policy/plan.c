/* SPDX-License-Identifier: MIT */
#include "policy/plan.h"

#include <stdlib.h>
#include <string.h>

#include "shared/macro.h"

typedef unsigned __int128 u128;
typedef __int128 s128;

#define MiB (UINT64_C(1) << 20)
#define GiB (UINT64_C(1) << 30)

struct PlanScratch {
        size_t capacity;
        uint32_t *idx, *tidx;
        uint64_t *key, *tkey;
};

void plan_config_default(PlanConfig *c) {
        *c = (PlanConfig){
                .low_pmy = 1000,
                .high_pmy = 1500,
                .critical_pmy = 500,
                .psi_some_pmy = 500,
                .psi_full_pmy = 1000,
                .dead_band = 32 * MiB,
                .rate_take = 512 * MiB,
                .rate_give = 1 * GiB,
                .rate_window_max = 1 * USEC_PER_SEC,
                .step_gain_pmy = PLAN_PERMYRIAD,
                .dwell = 5 * USEC_PER_SEC,
                .floor_pmy = 2500,
                .hard_floor_pmy = 1000,
                .guest_margin = 128 * MiB,
                .sample_max_age = 2 * USEC_PER_SEC,
        };
}

int plan_config_validate(const PlanConfig *c, const char **ret_field) {
        const char *bad = NULL;

        if (!c)
                bad = "config";
        else if (c->high_pmy > PLAN_PERMYRIAD || c->high_pmy == 0)
                bad = "high_pmy";
        else if (c->low_pmy >= c->high_pmy)
                bad = "low_pmy";
        else if (c->critical_pmy > c->low_pmy)
                bad = "critical_pmy";
        else if (c->psi_some_pmy == 0 || c->psi_some_pmy > PLAN_PERMYRIAD)
                bad = "psi_some_pmy";
        else if (c->psi_full_pmy == 0 || c->psi_full_pmy > PLAN_PERMYRIAD)
                bad = "psi_full_pmy";
        else if (c->rate_take == 0)
                bad = "rate_take";
        else if (c->rate_give < c->rate_take) /* give back at least as fast as we take */
                bad = "rate_give";
        else if (c->rate_window_max == 0)
                bad = "rate_window_max";
        else if (c->step_gain_pmy == 0 || c->step_gain_pmy > PLAN_PERMYRIAD)
                bad = "step_gain_pmy";
        else if (c->floor_pmy > PLAN_PERMYRIAD)
                bad = "floor_pmy";
        else if (c->hard_floor_pmy > c->floor_pmy)
                bad = "hard_floor_pmy";
        else if (c->sample_max_age == 0)
                bad = "sample_max_age";

        if (bad) {
                if (ret_field)
                        *ret_field = bad;
                return -EINVAL;
        }
        return 0;
}

PlanScratch *plan_scratch_new(size_t capacity) {
        PlanScratch *s;

        if (capacity > PLAN_VMS_MAX)
                return NULL;
        s = calloc(1, sizeof(*s));
        if (!s)
                return NULL;
        size_t n = MAX(capacity, (size_t) 1);
        s->capacity = capacity;
        s->idx = malloc(n * sizeof(uint32_t));
        s->tidx = malloc(n * sizeof(uint32_t));
        s->key = malloc(n * sizeof(uint64_t));
        s->tkey = malloc(n * sizeof(uint64_t));
        if (!s->idx || !s->tidx || !s->key || !s->tkey)
                return plan_scratch_free(s);
        return s;
}

PlanScratch *plan_scratch_free(PlanScratch *s) {
        if (!s)
                return NULL;
        free(s->idx);
        free(s->tidx);
        free(s->key);
        free(s->tkey);
        free(s);
        return NULL;
}

/* ---- arithmetic helpers ---- */

static uint64_t mul_pmy_floor(uint64_t v, uint32_t pmy) {
        return (uint64_t) ((u128) v * pmy / PLAN_PERMYRIAD);
}

static uint64_t mul_pmy_ceil(uint64_t v, uint32_t pmy) {
        return (uint64_t) (((u128) v * pmy + PLAN_PERMYRIAD - 1) / PLAN_PERMYRIAD);
}

/* v < pmy/10000 of total, exactly. */
static bool below_pmy(uint64_t v, uint64_t total, uint32_t pmy) {
        return (u128) v * PLAN_PERMYRIAD < (u128) total * pmy;
}

static uint64_t u128_to_u64_sat(u128 v) {
        return v > UINT64_MAX ? UINT64_MAX : (uint64_t) v;
}

static uint64_t sat_add(uint64_t a, uint64_t b) {
        return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/* ---- B5.2: states with hysteresis ---- */

static PlanState plan_next_state(const PlanConfig *c, const PlanHost *h, PlanState prev) {
        uint64_t avail = MIN(h->available, h->total);
        bool crit = below_pmy(avail, h->total, c->critical_pmy) || (h->has_psi && h->psi_full_avg10 >= c->psi_full_pmy);
        bool enter = below_pmy(avail, h->total, c->low_pmy) || (h->has_psi && h->psi_some_avg10 >= c->psi_some_pmy);
        /* Leaving needs both signals well clear: available at the high watermark and PSI below half
         * its threshold (a missing PSI counts as clear). */
        bool leave = !below_pmy(avail, h->total, c->high_pmy) &&
                     (!h->has_psi || (uint64_t) h->psi_some_avg10 * 2 < c->psi_some_pmy);
        bool leave_crit = !below_pmy(avail, h->total, c->low_pmy) &&
                          (!h->has_psi || (uint64_t) h->psi_full_avg10 * 2 < c->psi_full_pmy);

        if (crit)
                return PLAN_STATE_CRITICAL;
        switch (prev) {
        case PLAN_STATE_CRITICAL:
                if (!leave_crit)
                        return PLAN_STATE_CRITICAL;
                return leave ? PLAN_STATE_HEALTHY : PLAN_STATE_PRESSURE;
        case PLAN_STATE_PRESSURE:
                return leave ? PLAN_STATE_HEALTHY : PLAN_STATE_PRESSURE;
        default:
                return enter ? PLAN_STATE_PRESSURE : PLAN_STATE_HEALTHY;
        }
}

/* ---- B5.4: the split ---- */

/* A key that sorts VMs by their breakpoint b = headroom/shares (the water level at which the VM
 * is full): floor(b·2^64) packed as a 7-bit bit length and a truncated 57-bit mantissa. Both steps
 * are monotone, so b_i < b_j implies key_i ≤ key_j; equal keys are resolved exactly afterwards. */
static uint64_t plan_key(uint64_t head, uint32_t shares) {
        u128 v = ((u128) head << 64) / shares;
        if (v == 0)
                return 0;
        uint64_t hi = (uint64_t) (v >> 64);
        unsigned bits = hi ? 128 - (unsigned) __builtin_clzll(hi) : 64 - (unsigned) __builtin_clzll((uint64_t) v);
        u128 m = bits > 58 ? v >> (bits - 58) : v << (58 - bits);
        return ((uint64_t) bits << 57) | ((uint64_t) m & ((UINT64_C(1) << 57) - 1));
}

typedef struct Fill {
        const PlanVm *vms;
        PlanDecision *out; /* .floor is set; .desired is written here */
} Fill;

static uint64_t fill_head(const Fill *f, uint32_t i) {
        return f->vms[i].assigned - f->out[i].floor;
}

/* Exact: b_i < b_j, i.e. h_i·s_j < h_j·s_i. */
static bool fill_less(const Fill *f, uint32_t i, uint32_t j) {
        return (u128) fill_head(f, i) * f->vms[j].shares < (u128) fill_head(f, j) * f->vms[i].shares;
}

static void fill_sift(const Fill *f, uint32_t *a, size_t root, size_t n) {
        for (;;) {
                size_t child = 2 * root + 1;
                if (child >= n)
                        return;
                if (child + 1 < n && fill_less(f, a[child], a[child + 1]))
                        child++;
                if (!fill_less(f, a[root], a[child]))
                        return;
                uint32_t t = a[root];
                a[root] = a[child];
                a[child] = t;
                root = child;
        }
}

/* In-place heapsort with the exact comparator: only used on runs of equal keys, which are rare
 * unless many VMs are identical (and then the run is already in order and never gets here). */
static void fill_heapsort(const Fill *f, uint32_t *a, size_t n) {
        for (size_t i = n / 2; i-- > 0;)
                fill_sift(f, a, i, n);
        for (size_t end = n; end-- > 1;) {
                uint32_t t = a[0];
                a[0] = a[end];
                a[end] = t;
                fill_sift(f, a, 0, end);
        }
}

/* LSD radix sort of (key, idx) pairs, 8 bits a pass, skipping passes where every key has the same
 * digit. Stable; O(n); no allocation (tkey/tidx are scratch of the same size). */
static void radix_sort(uint64_t *key, uint32_t *idx, uint64_t *tkey, uint32_t *tidx, size_t n) {
        uint32_t hist[8][256];
        uint64_t *k0 = key, *k1 = tkey;
        uint32_t *i0 = idx, *i1 = tidx;

        memset(hist, 0, sizeof(hist));
        for (size_t i = 0; i < n; i++)
                for (unsigned b = 0; b < 8; b++)
                        hist[b][(key[i] >> (8 * b)) & 0xff]++;

        for (unsigned b = 0; b < 8; b++) {
                uint32_t *h = hist[b];
                if (h[(k0[0] >> (8 * b)) & 0xff] == n)
                        continue;
                uint32_t sum = 0;
                for (unsigned d = 0; d < 256; d++) {
                        uint32_t c = h[d];
                        h[d] = sum;
                        sum += c;
                }
                for (size_t i = 0; i < n; i++) {
                        uint32_t pos = h[(k0[i] >> (8 * b)) & 0xff]++;
                        k1[pos] = k0[i];
                        i1[pos] = i0[i];
                }
                uint64_t *tk = k0;
                k0 = k1;
                k1 = tk;
                uint32_t *ti = i0;
                i0 = i1;
                i1 = ti;
        }
        if (k0 != key) {
                memcpy(key, k0, n * sizeof(*key));
                memcpy(idx, i0, n * sizeof(*idx));
        }
}

static void fill_sort(const Fill *f, uint32_t *idx, uint64_t *key, PlanScratch *s, size_t m) {
        for (size_t k = 0; k < m; k++)
                key[k] = plan_key(fill_head(f, idx[k]), f->vms[idx[k]].shares);
        radix_sort(key, idx, s->tkey, s->tidx, m);

        /* Equal keys may hide different breakpoints: put each run in exact order. */
        for (size_t lo = 0; lo < m;) {
                size_t hi = lo + 1;
                bool sorted = true;
                for (; hi < m && key[hi] == key[lo]; hi++)
                        if (sorted && fill_less(f, idx[hi], idx[hi - 1]))
                                sorted = false;
                if (!sorted)
                        fill_heapsort(f, idx + lo, hi - lo);
                lo = hi;
        }
}

/* Shares-weighted water filling of `keep` bytes (memory above the floors) over VMs idx[0..m):
 * find the level μ with Σ min(head_i, μ·shares_i) = keep. VMs are swept in ascending order of
 * their breakpoint head/shares; a VM whose breakpoint is at or below the level the rest would
 * reach keeps its whole headroom. The others get floor(rem·s_i/S) and the < m leftover bytes go
 * one each to the first of them, which stays within headroom because head_i > μ·s_i strictly.
 * Requires keep ≤ Σ head. Sets out[i].desired exactly: Σ (desired − floor) == keep. */
static void fill_tier(const Fill *f, PlanScratch *s, uint32_t *idx, uint64_t *key, size_t m, uint64_t keep,
                      uint64_t total_head) {
        size_t k = 0;

        if (m == 0)
                return;
        if (keep == total_head || keep == 0) {
                for (; k < m; k++) {
                        uint32_t i = idx[k];
                        f->out[i].desired = keep ? f->vms[i].assigned : f->out[i].floor;
                }
                return;
        }

        fill_sort(f, idx, key, s, m);

        u128 S = 0, rem = keep;
        for (size_t j = 0; j < m; j++)
                S += f->vms[idx[j]].shares;

        for (; k < m; k++) {
                uint32_t i = idx[k];
                uint64_t h = fill_head(f, i);
                uint32_t sh = f->vms[i].shares;
                if ((u128) h * S > rem * sh)
                        break;
                f->out[i].desired = f->vms[i].assigned;
                rem -= h;
                S -= sh;
        }
        /* k < m here: rem > 0 while Σ head over the rest > rem, so someone is below its breakpoint. */

        /* Same shares, same quotient: divide once per run (fleets mostly share a few values). S fits
         * in 64 bits (≤ 2^32 VMs × 2^32 shares); use the cheap division when the product does too. */
        u128 given = 0;
        uint32_t last_sh = 0;
        uint64_t last_q = 0;
        for (size_t j = k; j < m; j++) {
                uint32_t i = idx[j];
                uint32_t sh = f->vms[i].shares;
                if (sh != last_sh) {
                        u128 p = rem * sh;
                        last_q = p <= UINT64_MAX ? (uint64_t) p / (uint64_t) S : (uint64_t) (p / S);
                        last_sh = sh;
                }
                f->out[i].desired = f->out[i].floor + last_q;
                given += last_q;
        }
        for (size_t j = k; given < rem; j++, given++)
                f->out[idx[j]].desired++;
}

/* ---- B5.5: shaping ---- */

typedef struct Shape {
        const PlanConfig *c;
        usec_t now;
        bool critical;
        bool pressure;    /* state is not healthy: the host is short now */
        bool hold_active; /* a manual hold asks for reclaim now */
        bool hold_dominates;
        bool want_more; /* the split still wants reclaim from this tier */
} Shape;

static void plan_shape(const Shape *sh, const PlanVm *v, PlanDecision *d) {
        const PlanConfig *c = sh->c;
        uint64_t a = v->assigned, t = MIN(v->target, a), want = d->desired, f = d->floor;

        d->target = t;
        d->dir = 0;
        if (want == t) {
                d->reason = (want == f && sh->want_more) ? PLAN_REASON_FLOOR : PLAN_REASON_UNCHANGED;
                return;
        }

        int8_t dir = want < t ? -1 : 1;
        uint64_t err = dir < 0 ? t - want : want - t;
        bool floor_raise = dir > 0 && t < f; /* guest protection wins over anti-flapping */

        /* Dwell: measured from the last move, not the last reversal, so a VM that has been
         * reclaiming steadily still waits before giving back (and vice versa). */
        bool dwell_exempt = floor_raise || (dir < 0 && sh->critical);
        if (!dwell_exempt && v->last_dir != 0 && v->last_dir != dir && sh->now < usec_add(v->last_move, c->dwell)) {
                d->reason = PLAN_REASON_DWELL;
                return;
        }

        /* The dead band prevents churn around a target; it must not stop reclaim the host needs
         * now (pressure, or a manual hold), or a need split into pieces smaller than the band
         * would never be met. */
        bool exact_end = want == f || want == a;
        bool needed_now = dir < 0 && (sh->pressure || sh->hold_active);
        if (err < c->dead_band && !exact_end && !needed_now) {
                d->reason = PLAN_REASON_DEAD_BAND;
                return;
        }

        /* Proportional step, never smaller than the dead band (or it would never converge). */
        uint64_t step = err;
        if (c->step_gain_pmy < PLAN_PERMYRIAD)
                step = MAX(mul_pmy_floor(err, c->step_gain_pmy), MIN(err, c->dead_band));
        if (!sh->critical) {
                /* The allowance accumulates since this VM last moved, so frequent event-driven plans
                 * do not starve it, up to rate_window_max. */
                usec_t window = v->last_move == 0 ? c->rate_window_max
                                                  : MIN(usec_sub_floor(sh->now, v->last_move), c->rate_window_max);
                uint64_t rate = dir < 0 ? c->rate_take : c->rate_give;
                uint64_t cap = u128_to_u64_sat((u128) rate * window / USEC_PER_SEC);
                step = MIN(step, cap);
        }

        if (step < err) {
                d->reason = PLAN_REASON_RATE_LIMITED;
                if ((step < c->dead_band && !needed_now) || step == 0)
                        return;
        } else if (dir < 0)
                d->reason = want == f ? PLAN_REASON_FLOOR : sh->hold_dominates ? PLAN_REASON_HOLD : PLAN_REASON_RECLAIM;
        else
                d->reason = floor_raise && want == f ? PLAN_REASON_FLOOR : PLAN_REASON_GIVE_BACK;

        d->target = dir < 0 ? t - step : t + step;
        d->dir = dir;
}

/* ---- the plan ---- */

typedef enum VmClass {
        VM_MOVABLE,
        VM_MOVABLE_LAST, /* guest pressure in critical: gives last, gets back first */
        VM_FIXED,        /* parked, protected, stalled, guest pressure outside critical */
} VmClass;

static int plan_validate(const PlanInput *in, PlanScratch *scratch, PlanDecision *ret_vms, PlanResult *ret) {
        int r;

        if (!in || !ret || (in->n_vms > 0 && (!in->vms || !ret_vms)))
                return -EINVAL;
        r = plan_config_validate(in->config, NULL);
        if (r < 0)
                return r;
        if (in->host.total == 0)
                return -EINVAL;
        if (in->n_vms > PLAN_VMS_MAX)
                return -ERANGE;
        if (scratch && scratch->capacity < in->n_vms)
                return -ENOBUFS;
        if (in->host.at < in->now && in->now - in->host.at > in->config->sample_max_age)
                return -ESTALE;

        uint64_t sum = 0;
        for (size_t i = 0; i < in->n_vms; i++) {
                const PlanVm *v = in->vms + i;
                if (v->shares == 0)
                        return -EINVAL;
                if (v->assigned > PLAN_BYTES_MAX)
                        return -ERANGE;
                if (sum > UINT64_MAX - v->assigned)
                        return -EOVERFLOW;
                sum += v->assigned;
        }
        return 0;
}

int plan_compute(const PlanInput *in, PlanScratch *scratch, PlanDecision *ret_vms, PlanResult *ret) {
        PlanScratch *own = NULL;
        int r;

        r = plan_validate(in, scratch, ret_vms, ret);
        if (r < 0)
                return r;
        if (!scratch) {
                scratch = own = plan_scratch_new(in->n_vms);
                if (!own)
                        return -ENOMEM;
        }

        const PlanConfig *c = in->config;
        const PlanHost *host = &in->host;
        const usec_t now = in->now;
        const size_t n = in->n_vms;
        PlanDecision *out = ret_vms;
        PlanResult res = { .requested = 0 };

        PlanState prev = in->ctl.state >= 0 && in->ctl.state < _PLAN_STATE_MAX ? in->ctl.state : PLAN_STATE_HEALTHY;
        PlanState state = plan_next_state(c, host, prev);
        res.ctl.state = state;
        res.ctl.since = state == in->ctl.state ? in->ctl.since : now;
        bool critical = state == PLAN_STATE_CRITICAL;

        /* Pass 1: classify, floors, and the accounting. expected = where the VM will be once what
         * is in flight lands; pending = Σ(actual − expected) is what the host will still gain. */
        s128 pending = 0;
        u128 fleet = 0; /* Σ (assigned − expected) over non-parked VMs: reclaim in effect */
        u128 fixed = 0; /* Σ (assigned − new target) over non-parked VMs the split cannot move */
        uint64_t head1 = 0, head2 = 0;
        size_t m1 = 0, m2 = 0;
        uint32_t *idx = scratch->idx;
        uint32_t *idx2 = scratch->tidx; /* tier 2 indices, collected here then moved after tier 1 */

        for (size_t i = 0; i < n; i++) {
                const PlanVm *v = in->vms + i;
                PlanDecision *d = out + i;
                uint64_t a = v->assigned, t = MIN(v->target, a), x = MIN(v->actual, a);
                bool stalled = now < v->stalled_until;
                uint64_t e = v->in_flight && !stalled ? t : x;

                pending += (s128) x - (s128) e;

                uint64_t f = MAX(MIN(v->floor, a), mul_pmy_ceil(a, critical ? c->hard_floor_pmy : c->floor_pmy));
                if (v->guest_fresh)
                        f = MAX(f, MIN(critical ? v->guest_used : sat_add(v->guest_used, c->guest_margin), a));

                *d = (PlanDecision){ .target = t, .desired = t, .floor = f, .reason = PLAN_REASON_UNCHANGED };

                if (v->parked) {
                        d->reason = PLAN_REASON_PARKED;
                        continue;
                }
                fleet += a - e;

                VmClass cls = VM_MOVABLE;
                if (now < v->unparked_until)
                        d->reason = PLAN_REASON_PROTECTED, cls = VM_FIXED;
                else if (stalled) {
                        d->reason = PLAN_REASON_STALLED, cls = VM_FIXED;
                        d->target = d->desired = x;
                        d->dir = x < t ? -1 : x > t ? 1 : 0;
                } else if (v->guest_pressure && !critical) {
                        /* B5.9: deflate at once, whatever the host state, without shaping. */
                        d->reason = PLAN_REASON_GUEST_PRESSURE, cls = VM_FIXED;
                        d->target = d->desired = a;
                        d->dir = t < a ? 1 : 0;
                } else if (v->guest_pressure)
                        cls = VM_MOVABLE_LAST;

                if (cls == VM_FIXED) {
                        fixed += a - d->target;
                        continue;
                }
                if (f == a) {
                        d->desired = a; /* no headroom: nothing to split */
                        continue;
                }
                if (cls == VM_MOVABLE) {
                        idx[m1++] = (uint32_t) i;
                        head1 += a - f;
                } else {
                        idx2[m2++] = (uint32_t) i;
                        head2 += a - f;
                }
        }
        memmove(idx + m1, idx2, m2 * sizeof(*idx));

        /* B5.3: the target. need = what brings available to the high watermark, measured on the
         * actual sizes; minus what in-flight commands will still free; added to what is already
         * reclaimed (fleet, on expected sizes). Everything is counted once: the measured available
         * reflects actual, fleet reflects expected, pending is the difference. */
        uint64_t avail = MIN(host->available, host->total);
        s128 need = (s128) mul_pmy_ceil(host->total, c->high_pmy) - (s128) avail;
        s128 delta = need - pending;
        u128 automatic;
        if (state == PLAN_STATE_HEALTHY)
                automatic = delta >= 0 ? fleet : (u128) (-delta) >= fleet ? 0 : fleet - (u128) (-delta);
        else
                automatic = fleet + (delta > 0 ? (u128) delta : 0);

        uint64_t hold = in->hold.bytes > 0 && now < in->hold.until ? in->hold.bytes : 0;
        u128 requested = MAX(automatic, (u128) hold);
        u128 want = requested > fixed ? requested - fixed : 0; /* from the movable VMs */

        /* B5.4: the split. Keep the rest of the headroom, tier 2 (guest pressure) first. */
        uint64_t head = head1 + head2; /* ≤ Σ assigned, validated to fit */
        uint64_t placed = (uint64_t) MIN(want, (u128) head);
        uint64_t keep = head - placed;
        uint64_t keep2 = MIN(keep, head2);
        Fill fill = { .vms = in->vms, .out = out };
        fill_tier(&fill, scratch, idx, scratch->key, m1, keep - keep2, head1);
        fill_tier(&fill, scratch, idx + m1, scratch->key + m1, m2, keep2, head2);

        /* B5.5: shaping, and the totals. */
        Shape sh = {
                .c = c,
                .now = now,
                .critical = critical,
                .pressure = state != PLAN_STATE_HEALTHY,
                .hold_active = hold > 0,
                .hold_dominates = hold > automatic,
                .want_more = want > 0,
        };
        u128 planned = 0;
        for (size_t i = 0; i < n; i++) {
                const PlanVm *v = in->vms + i;
                if (v->parked)
                        continue;
                PlanDecision *d = out + i;
                if (d->reason == PLAN_REASON_UNCHANGED)
                        plan_shape(&sh, v, d);
                planned += v->assigned - d->target;
        }

        res.automatic = u128_to_u64_sat(automatic);
        res.hold = hold;
        res.requested = u128_to_u64_sat(requested);
        res.desired = u128_to_u64_sat(fixed + placed);
        res.planned = u128_to_u64_sat(planned);
        res.shortfall = u128_to_u64_sat(want - placed);
        res.pending = pending > INT64_MAX ? INT64_MAX : pending < INT64_MIN ? INT64_MIN : (int64_t) pending;
        *ret = res;

        plan_scratch_free(own);
        return 0;
}

/* ---- enums ---- */

static const char *const plan_state_table[_PLAN_STATE_MAX] = {
        [PLAN_STATE_HEALTHY] = "healthy",
        [PLAN_STATE_PRESSURE] = "pressure",
        [PLAN_STATE_CRITICAL] = "critical",
};

static const char *const plan_reason_table[_PLAN_REASON_MAX] = {
        /* Shaping outcomes. */
        [PLAN_REASON_UNCHANGED] = "unchanged",
        [PLAN_REASON_RECLAIM] = "reclaim",
        [PLAN_REASON_GIVE_BACK] = "give-back",
        [PLAN_REASON_HOLD] = "hold",
        [PLAN_REASON_FLOOR] = "floor",
        [PLAN_REASON_RATE_LIMITED] = "rate-limited",
        [PLAN_REASON_DEAD_BAND] = "dead-band",
        [PLAN_REASON_DWELL] = "dwell",
        /* VMs the split does not move. */
        [PLAN_REASON_PROTECTED] = "protected",
        [PLAN_REASON_STALLED] = "stalled",
        [PLAN_REASON_PARKED] = "parked",
        [PLAN_REASON_GUEST_PRESSURE] = "guest-pressure",
};

static int table_lookup(const char *const *table, int n, const char *s) {
        if (!s)
                return -EINVAL;
        for (int i = 0; i < n; i++)
                if (table[i] && strcmp(table[i], s) == 0)
                        return i;
        return -EINVAL;
}

const char *plan_state_to_string(PlanState s) {
        return s >= 0 && s < _PLAN_STATE_MAX ? plan_state_table[s] : NULL;
}

PlanState plan_state_from_string(const char *s) {
        return (PlanState) table_lookup(plan_state_table, _PLAN_STATE_MAX, s);
}

const char *plan_reason_to_string(PlanReason r) {
        return r >= 0 && r < _PLAN_REASON_MAX ? plan_reason_table[r] : NULL;
}

PlanReason plan_reason_from_string(const char *s) {
        return (PlanReason) table_lookup(plan_reason_table, _PLAN_REASON_MAX, s);
}
