/* SPDX-License-Identifier: MIT */
#include "policy/plan.h"

#include <stdlib.h>
#include <string.h>

#include "shared/macro.h"

typedef unsigned __int128 u128;
typedef __int128 s128;

struct PlanScratch {
        size_t capacity;
        uint32_t *idx, *tidx;
        uint64_t *key, *tkey;
        uint64_t *lo, *hi, *val; /* water-filling intervals and results */
        uint64_t *rho;           /* host-resident guest memory once in-flight commands land */
        uint8_t *cls;            /* VmClass */
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
        s->lo = malloc(n * sizeof(uint64_t));
        s->hi = malloc(n * sizeof(uint64_t));
        s->val = malloc(n * sizeof(uint64_t));
        s->rho = malloc(n * sizeof(uint64_t));
        s->cls = malloc(n);
        if (!s->idx || !s->tidx || !s->key || !s->tkey || !s->lo || !s->hi || !s->val || !s->rho || !s->cls)
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
        free(s->lo);
        free(s->hi);
        free(s->val);
        free(s->rho);
        free(s->cls);
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

/* Water filling works on intervals [lo_i, hi_i] per VM, writing val_i ∈ [lo_i, hi_i]: the same
 * routine splits what stays above the floors (reclaim), what stays reclaimed (give-back) and what a
 * hold adds. */
typedef struct Fill {
        const PlanVm *vms; /* shares */
        const uint64_t *lo, *hi;
        uint64_t *val;
} Fill;

static uint64_t fill_head(const Fill *f, uint32_t i) {
        return f->hi[i] - f->lo[i];
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
 * Requires keep ≤ Σ head. Sets val[i] exactly: Σ (val − lo) == keep. */
static void fill_tier(const Fill *f, PlanScratch *s, uint32_t *idx, uint64_t *key, size_t m, u128 keep,
                      u128 total_head) {
        size_t k = 0;

        if (m == 0)
                return;
        if (keep == total_head || keep == 0) {
                for (; k < m; k++) {
                        uint32_t i = idx[k];
                        f->val[i] = keep ? f->hi[i] : f->lo[i];
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
                f->val[i] = f->hi[i];
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
                f->val[i] = f->lo[i] + last_q;
                given += last_q;
        }
        for (size_t j = k; given < rem; j++, given++)
                f->val[idx[j]]++;
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
        uint64_t step = err, least = c->dead_band;
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
                least = MIN(least, u128_to_u64_sat((u128) rate * c->rate_window_max / USEC_PER_SEC));
        }

        if (step < err) {
                /* A partial step smaller than the dead band waits for the allowance to grow, even
                 * when the host needs the memory now: made at every plan, such steps were a new
                 * target for a VM at nearly every plan of an episode, for no more memory than the
                 * next plan's larger step (in a two-minute soak at 880 VMs: 2,850 journal entries
                 * and 144,840 balloon commands before, 1,029 and 126,373 after). Where a full
                 * window allows less than the band, that is the step. */
                d->reason = PLAN_REASON_RATE_LIMITED;
                if (step < least || step == 0)
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
        VM_MOVABLE_LAST, /* guest pressure in critical: gives last */
        VM_FIXED,        /* protected, stalled, guest emergency: the split does not move it */
        VM_PARKED,
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

        /* Fleet totals are 128-bit inside: any number of legal VMs (each ≤ 2^62) is planned. */
        for (size_t i = 0; i < in->n_vms; i++) {
                const PlanVm *v = in->vms + i;
                if (v->shares == 0)
                        return -EINVAL;
                if (v->assigned > PLAN_BYTES_MAX)
                        return -ERANGE;
        }
        return 0;
}

static int64_t s128_to_s64_sat(s128 v) {
        return v > INT64_MAX ? INT64_MAX : v < INT64_MIN ? INT64_MIN : (int64_t) v;
}

/* Splits `take` bytes off the tier VMs' intervals [lo, hi] (tier 2 gives last): val = what each
 * keeps. Returns what could be placed (≤ take). */
static u128 plan_take(Fill *f, PlanScratch *s, uint32_t *idx, size_t m1, size_t m2, u128 take) {
        u128 head1 = 0, head2 = 0;
        for (size_t k = 0; k < m1 + m2; k++) {
                uint32_t i = idx[k];
                if (k < m1)
                        head1 += f->hi[i] - f->lo[i];
                else
                        head2 += f->hi[i] - f->lo[i];
        }
        u128 head = head1 + head2;
        u128 placed = MIN(take, head);
        u128 keep = head - placed;
        u128 keep2 = MIN(keep, head2);
        fill_tier(f, s, idx, s->key, m1, keep - keep2, head1);
        fill_tier(f, s, idx + m1, s->key + m1, m2, keep2, head2);
        return placed;
}

/* One plan's working state, shared by its passes (plan_compute() below runs them in order). */
typedef struct Pass {
        const PlanInput *in;
        const PlanConfig *c;
        PlanScratch *scratch;
        PlanDecision *out;
        size_t n;
        usec_t now;
        PlanState state;
        bool critical;
        uint64_t avail; /* MIN(available, total) */
        uint64_t *lo, *hi, *val, *rho;
        uint8_t *cls;
        uint32_t *idx;  /* tier 1 (m1), then tier 2 (m2) */
        uint32_t *idx2; /* tier 2 while classifying; guest emergencies from its end (n_em) */
        size_t m1, m2, n_em;
        s128 pending;    /* what the host will still gain (or, for raises, lose) from commands in flight */
        u128 returnable; /* Σ max(rho − floor, 0) over the VMs reclaim may take from */
        s128 need;       /* host bytes that bring available to the high watermark, less pending */
        u128 em_cost;    /* what the guest emergencies' raises cost */
        s128 take;       /* the automatic part: > 0 taken, < 0 may be given back */
        uint64_t host_shortfall, hold;
        u128 automatic, requested, hold_shortfall;
        bool hold_dominates;
} Pass;

/* Pass 1: classes, floors and the host-side accounting. For each VM:
 *   e   = its guest size once what is in flight lands (target, else actual);
 *   R   = its host-resident guest memory (the caller's measure; actual when unknown);
 *   rho = min(R, e): what stays resident once the command in flight lands. Shrinking the
 *         guest from e to t returns max(rho − t, 0) to the host, not e − t: memory the
 *         guest freed and free page reporting already returned gives nothing twice. */
static void pass_classify(Pass *p) {
        const PlanConfig *c = p->c;
        size_t n = p->n;
        for (size_t i = 0; i < n; i++) {
                const PlanVm *v = p->in->vms + i;
                PlanDecision *d = p->out + i;
                uint64_t a = v->assigned, t = MIN(v->target, a), x = MIN(v->actual, a);
                bool stalled = p->now < v->stalled_until;
                uint64_t e = v->in_flight && !stalled ? t : x;
                uint64_t res_now = v->resident ? MIN(v->resident, a) : x;

                p->rho[i] = MIN(res_now, e);
                if (e <= x)
                        p->pending += (s128) MIN(res_now, x) - (s128) p->rho[i];
                else
                        p->pending -= (s128) (e - x);

                /* In critical a quarter of the guest margin holds: the host is about to OOM-kill
                 * a whole VM, and a guest that swaps some idle memory into its zram costs less. */
                uint64_t f = MAX(MIN(v->floor, a), mul_pmy_ceil(a, p->critical ? c->hard_floor_pmy : c->floor_pmy));
                if (v->guest_fresh)
                        f = MAX(f, MIN(sat_add(v->guest_used, p->critical ? c->guest_margin / 4 : c->guest_margin), a));

                *d = (PlanDecision){ .target = t, .desired = t, .floor = f, .reason = PLAN_REASON_UNCHANGED };
                if (v->parked) {
                        d->reason = PLAN_REASON_PARKED;
                        p->cls[i] = VM_PARKED;
                        continue;
                }
                p->cls[i] = VM_MOVABLE;
                if (p->now < v->unparked_until)
                        d->reason = PLAN_REASON_PROTECTED, p->cls[i] = VM_FIXED;
                else if (stalled) {
                        d->reason = PLAN_REASON_STALLED, p->cls[i] = VM_FIXED;
                        d->target = d->desired = x;
                        d->dir = x < t ? -1 : x > t ? 1 : 0;
                } else if (v->guest_pressure && !p->critical) {
                        d->reason = PLAN_REASON_GUEST_PRESSURE, p->cls[i] = VM_FIXED;
                        p->idx2[n - 1 - p->n_em++] = (uint32_t) i; /* raised below, within what the host can give */
                } else if (v->guest_pressure)
                        p->cls[i] = VM_MOVABLE_LAST;
                if (p->cls[i] == VM_FIXED)
                        continue;
                p->lo[i] = f;
                p->hi[i] = MAX(p->rho[i], f);
                d->returnable = p->hi[i] - f;
                p->returnable += p->hi[i] - f;
                if (p->cls[i] == VM_MOVABLE)
                        p->idx[p->m1++] = (uint32_t) i;
                else
                        p->idx2[p->m2++] = (uint32_t) i;
        }
        memmove(p->idx + p->m1, p->idx2, p->m2 * sizeof(*p->idx));
}

/* Guest emergencies: a guest under pressure gets its memory back at once, but never more than the
 * host can give: what is above the low watermark, plus what the other VMs can really return
 * (taken from them in this same plan). Several emergencies at once must not push the host from
 * pressure into critical. */
static void pass_emergencies(Pass *p) {
        const PlanHost *host = &p->in->host;
        s128 room = (s128) p->avail + p->pending - (s128) mul_pmy_ceil(host->total, p->c->low_pmy);
        u128 em_budget = (room > 0 ? (u128) room : 0) + p->returnable;
        for (size_t k = 0; k < p->n_em; k++) {
                uint32_t i = p->idx2[p->n - 1 - k];
                const PlanVm *v = p->in->vms + i;
                PlanDecision *d = p->out + i;
                uint64_t a = v->assigned, t = MIN(v->target, a);
                uint64_t raise = (uint64_t) MIN((u128) (a - t), em_budget - p->em_cost);
                d->target = d->desired = t + raise;
                d->dir = raise ? 1 : 0;
                p->em_cost += raise;
        }
}

/* The automatic part, in the state's mode:
 *  - pressure / critical: take `need` (plus what emergencies cost) in host bytes, from the VMs
 *    whose shrinking returns the most; a VM that would return nothing is not asked; nothing is
 *    given back (the reclaim in effect is frozen);
 *  - healthy: give back only the slack above the high watermark (less what emergencies take), to
 *    the VMs with the most reclaimed first; nothing is taken, except to pay for an emergency.
 *    Between the watermarks nothing moves. */
static void pass_automatic(Pass *p, Fill *fill) {
        size_t m = p->m1 + p->m2;
        p->take = p->state == PLAN_STATE_HEALTHY ? (s128) p->em_cost - (p->need < 0 ? -p->need : 0)
                                                 : p->need + (s128) p->em_cost;
        u128 placed = 0;
        for (size_t k = 0; k < m; k++)
                p->val[p->idx[k]] = p->hi[p->idx[k]];
        if (p->take > 0)
                placed = plan_take(fill, p->scratch, p->idx, p->m1, p->m2, (u128) p->take);
        for (size_t k = 0; k < m; k++) {
                uint32_t i = p->idx[k];
                PlanDecision *d = p->out + i;
                uint64_t t = d->target;
                /* Keeps all it can return: stays where it is (never raised here). */
                d->desired = p->val[i] < p->rho[i] ? MIN(p->val[i], t) : t;
                if (d->desired < d->floor)
                        d->desired = d->floor; /* a VM below its floor is raised to it */
        }
        p->host_shortfall = p->take > 0 ? u128_to_u64_sat((u128) p->take - placed) : 0;
}

/* Give back (healthy, slack above the high watermark): what stays reclaimed is water-filled over
 * each VM's reclaim, so the most-reclaimed get back first; a hold keeps its bytes reclaimed. */
static void pass_give_back(Pass *p, Fill *fill) {
        if (p->state != PLAN_STATE_HEALTHY || p->take >= 0 || p->m1 == 0)
                return;
        const PlanVm *vms = p->in->vms;
        u128 give = (u128) -p->take, rec = 0, held = 0;
        for (size_t i = 0; i < p->n; i++)
                if (p->cls[i] != VM_PARKED)
                        held += vms[i].assigned - p->out[i].desired;
        give = held > p->hold ? MIN(give, held - p->hold) : 0;
        for (size_t k = 0; k < p->m1; k++) {
                uint32_t i = p->idx[k];
                p->lo[i] = 0;
                p->hi[i] = vms[i].assigned - p->out[i].desired;
                rec += p->hi[i];
        }
        give = MIN(give, rec);
        if (give == 0)
                return;
        fill_tier(fill, p->scratch, p->idx, p->scratch->key, p->m1, rec - give, rec);
        for (size_t k = 0; k < p->m1; k++) {
                uint32_t i = p->idx[k];
                p->out[i].desired = MAX(vms[i].assigned - p->val[i], p->out[i].floor);
        }
}

/* Holds: at least `hold` bytes stay reclaimed (guest side, non-parked VMs). The larger of the
 * automatic reclaim and the hold wins; they never add up. */
static void pass_hold(Pass *p, Fill *fill) {
        size_t m = p->m1 + p->m2;
        p->automatic = p->host_shortfall; /* what pressure asks: what it got, and what the floors refused */
        for (size_t i = 0; i < p->n; i++)
                if (p->cls[i] != VM_PARKED)
                        p->automatic += p->in->vms[i].assigned - p->out[i].desired;
        if (p->hold > p->automatic && m > 0) {
                u128 deficit = p->hold - p->automatic;
                for (size_t k = 0; k < m; k++) {
                        uint32_t i = p->idx[k];
                        p->lo[i] = p->out[i].floor;
                        p->hi[i] = MAX(p->out[i].desired, p->out[i].floor);
                }
                u128 got = plan_take(fill, p->scratch, p->idx, p->m1, p->m2, deficit);
                for (size_t k = 0; k < m; k++)
                        p->out[p->idx[k]].desired = p->val[p->idx[k]];
                p->hold_shortfall = deficit - got;
                p->hold_dominates = got > 0;
        } else if (p->hold > p->automatic)
                p->hold_shortfall = p->hold - p->automatic;
        p->requested = MAX(p->automatic, (u128) p->hold);
}

/* B5.5: shaping each target toward its desired size, and the totals. */
static void pass_shape(Pass *p, PlanResult *res) {
        Shape sh = {
                .c = p->c,
                .now = p->now,
                .critical = p->critical,
                .pressure = p->state != PLAN_STATE_HEALTHY,
                .hold_active = p->hold > 0,
                .hold_dominates = p->hold_dominates,
                .want_more = p->host_shortfall > 0 || p->hold_shortfall > 0,
        };
        u128 planned = 0, desired = 0, expected = 0;
        for (size_t i = 0; i < p->n; i++) {
                const PlanVm *v = p->in->vms + i;
                PlanDecision *d = p->out + i;
                if (p->cls[i] == VM_PARKED)
                        continue;
                if (p->cls[i] != VM_FIXED) {
                        bool no_gain = sh.pressure && d->desired == d->target && d->returnable == 0 &&
                                       d->target > d->floor && p->rho[i] < d->target;
                        plan_shape(&sh, v, d);
                        if (no_gain && d->reason == PLAN_REASON_UNCHANGED)
                                d->reason = PLAN_REASON_NO_GAIN;
                }
                d->gain = p->rho[i] > d->target ? p->rho[i] - d->target : 0;
                expected += d->gain;
                desired += v->assigned - d->desired;
                planned += v->assigned - d->target;
        }
        res->automatic = u128_to_u64_sat(p->automatic);
        res->hold = p->hold;
        res->requested = u128_to_u64_sat(p->requested);
        res->desired = u128_to_u64_sat(desired);
        res->planned = u128_to_u64_sat(planned);
        res->shortfall = u128_to_u64_sat(p->requested > desired ? p->requested - desired : 0);
        res->pending = s128_to_s64_sat(p->pending);
        res->need = s128_to_s64_sat(p->need + p->pending);
        res->expected = u128_to_u64_sat(expected);
        res->returnable = u128_to_u64_sat(p->returnable);
        res->emergency = u128_to_u64_sat(p->em_cost);
}

int plan_compute(const PlanInput *in, PlanScratch *scratch, PlanDecision *ret_vms, PlanResult *ret) {
        PlanScratch *own = NULL;
        int r = plan_validate(in, scratch, ret_vms, ret);
        if (r < 0)
                return r;
        if (!scratch) {
                scratch = own = plan_scratch_new(in->n_vms);
                if (!own)
                        return -ENOMEM;
        }

        const PlanConfig *c = in->config;
        const PlanHost *host = &in->host;
        PlanResult res = { .requested = 0 };
        PlanState prev = in->ctl.state >= 0 && in->ctl.state < _PLAN_STATE_MAX ? in->ctl.state : PLAN_STATE_HEALTHY;
        PlanState state = plan_next_state(c, host, prev);
        res.ctl.state = state;
        res.ctl.since = state == in->ctl.state ? in->ctl.since : in->now;

        Pass p = {
                .in = in,
                .c = c,
                .scratch = scratch,
                .out = ret_vms,
                .n = in->n_vms,
                .now = in->now,
                .state = state,
                .critical = state == PLAN_STATE_CRITICAL,
                .avail = MIN(host->available, host->total),
                .lo = scratch->lo,
                .hi = scratch->hi,
                .val = scratch->val,
                .rho = scratch->rho,
                .cls = scratch->cls,
                .idx = scratch->idx,
                .idx2 = scratch->tidx, /* tier 2, moved after tier 1 */
        };
        uint64_t hold = in->hold.bytes > 0 && in->now < in->hold.until ? in->hold.bytes : 0;
        Fill fill = { .vms = in->vms, .lo = p.lo, .hi = p.hi, .val = p.val };

        pass_classify(&p);
        p.need = (s128) mul_pmy_ceil(host->total, c->high_pmy) - (s128) p.avail - p.pending;
        pass_emergencies(&p);
        pass_automatic(&p, &fill);
        p.hold = hold;
        pass_give_back(&p, &fill);
        pass_hold(&p, &fill);
        pass_shape(&p, &res);
        *ret = res;

        plan_scratch_free(own);
        return 0;
}

uint64_t plan_floor(const PlanConfig *c, uint64_t assigned, uint64_t configured) {
        return MAX(MIN(configured, assigned), mul_pmy_ceil(assigned, c->floor_pmy));
}

int plan_capacity(const PlanConfig *c, uint64_t total, uint64_t available, uint64_t returnable, uint64_t size,
                  uint64_t overhead, PlanCapacity *ret) {
        if (!c || !ret || total == 0 || size == 0 || plan_config_validate(c, NULL) < 0)
                return -EINVAL;
        uint64_t avail = MIN(available, total);
        uint64_t reserve = mul_pmy_ceil(total, c->low_pmy);
        uint64_t free_bytes = avail > reserve ? avail - reserve : 0;
        u128 cost = (u128) size + overhead;
        *ret = (PlanCapacity){
                .size = size,
                .reserve = reserve,
                .free = free_bytes,
                .returnable = returnable,
                .overhead = overhead,
                .fit_free = u128_to_u64_sat(free_bytes / cost),
                .fit = u128_to_u64_sat(((u128) free_bytes + returnable) / cost),
        };
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
        [PLAN_REASON_NO_GAIN] = "no-gain",
        [PLAN_REASON_UNREACHABLE] = "unreachable",
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
