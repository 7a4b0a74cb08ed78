/* SPDX-License-Identifier: MIT */
#pragma once

/* What a guest's own statistics say (B5.4, B5.9), as a pure function of the previous assessment and
 * a new report: whether the report is fresh enough to use, the guest's non-reclaimable use in the
 * balloon's terms, and whether the guest is under memory pressure. */

#include <stdbool.h>
#include <stdint.h>

#include "hv/hv.h"

typedef struct GuestAssessment {
        HvStats stats; /* the report it was made from */
        bool have;     /* stats is a real report (totals and a time) */
        bool fresh;    /* the guest reported within three of its periods */
        bool pressure; /* swapping in, faulting hard, or nearly out */
        uint64_t used; /* non-reclaimable estimate: actual − available; 0 unknown */
} GuestAssessment;

typedef struct GuestReport {
        const HvStats *stats;
        uint32_t period_s;            /* the statistics period asked of the guest */
        uint64_t now_rt_s;            /* realtime seconds, now */
        uint64_t actual;              /* the balloon's actual size now */
        uint64_t actual_changed_rt_s; /* realtime second the actual size last changed */
} GuestReport;

/* The assessment after `in`, given the one before (all zero: none yet). */
void guest_assess(const GuestAssessment *prev, const GuestReport *in, GuestAssessment *ret);
