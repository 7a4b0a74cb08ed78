/* SPDX-License-Identifier: MIT */
#include "shared/time-util.h"

#include <limits.h>

usec_t now_usec(clockid_t clock) {
        struct timespec ts;

        /* Cannot fail for the clocks we use; abort rather than return garbage time. */
        if (clock_gettime(clock, &ts) < 0)
                __builtin_trap();
        return (usec_t) ts.tv_sec * USEC_PER_SEC + (usec_t) ts.tv_nsec / NSEC_PER_USEC;
}

int usec_to_poll_timeout(usec_t deadline, usec_t now) {
        if (deadline == USEC_INFINITY)
                return -1;
        if (deadline <= now)
                return 0;
        usec_t d = deadline - now;
        /* Round up so that we never wake before the deadline and spin. */
        usec_t ms = (d + USEC_PER_MSEC - 1) / USEC_PER_MSEC;
        return ms > INT_MAX ? INT_MAX : (int) ms;
}
