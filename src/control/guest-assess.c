/* SPDX-License-Identifier: MIT */
#include "control/guest-assess.h"

#include "shared/macro.h"

/* Swap-in growth between two reports that counts as pressure. */
#define GUEST_SWAP_IN_PRESSURE       (4 * MiB)
/* Major faults per second of the period between two reports that count as pressure. */
#define GUEST_MAJOR_FAULTS_PER_S     200
/* Available below total / this is "nearly out". */
#define GUEST_AVAILABLE_LOW_FRACTION 32

static bool grew_by(uint64_t now, uint64_t before, uint64_t by) {
        return now != HV_STAT_UNSET && before != HV_STAT_UNSET && now > before && now - before >= by;
}

void guest_assess(const GuestAssessment *prev, const GuestReport *in, GuestAssessment *ret) {
        const HvStats *st = in->stats;
        bool have = st->total != HV_STAT_UNSET && st->available != HV_STAT_UNSET && st->last_update != 0 &&
                    st->last_update != HV_STAT_UNSET;
        /* Fresh means the guest itself reported within three of its periods when we asked: a
         * guest that stopped reporting is noticed at the next read, however rarely we read. */
        uint64_t max_age = 3 * (uint64_t) in->period_s + 1;
        bool fresh = have && st->last_update + max_age >= in->now_rt_s;
        bool pressure = false;
        if (fresh && prev->have && st->last_update > prev->stats.last_update)
                pressure = grew_by(st->swap_in, prev->stats.swap_in, GUEST_SWAP_IN_PRESSURE) ||
                           grew_by(st->major_faults, prev->stats.major_faults,
                                   GUEST_MAJOR_FAULTS_PER_S * (uint64_t) in->period_s);
        else if (fresh && prev->have)
                pressure = prev->pressure; /* no new report: keep the last verdict */
        if (fresh && st->available < st->total / GUEST_AVAILABLE_LOW_FRACTION)
                pressure = true;
        /* In the balloon's terms (guest memory the VM has now, kernel reservations included): what
         * the guest could not give up is all of it but what it could free. MemTotal is not the
         * frame: it lacks the kernel's reservations (30-50 MiB) and, with deflate-on-oom, still
         * counts the balloon. */
        uint64_t used = fresh && in->actual > st->available ? in->actual - st->available : 0;
        /* A report taken before the guest's size last changed is in another frame (right after
         * an unpark: the old, small available against the new, full actual would make the whole
         * guest look used): keep the use measured in the last consistent report. */
        if (fresh && st->last_update <= in->actual_changed_rt_s && prev->have && prev->fresh)
                used = prev->used;
        *ret = (GuestAssessment){ .stats = *st, .have = have, .fresh = fresh, .pressure = pressure, .used = used };
}
