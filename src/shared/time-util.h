/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdint.h>
#include <time.h>

typedef uint64_t usec_t;

#define USEC_INFINITY ((usec_t) UINT64_MAX)
#define USEC_PER_MSEC ((usec_t) 1000ULL)
#define USEC_PER_SEC  ((usec_t) 1000000ULL)
#define NSEC_PER_USEC ((uint64_t) 1000ULL)

usec_t now_usec(clockid_t clock);
static inline usec_t now_mono(void) {
        return now_usec(CLOCK_MONOTONIC);
}
/* Saturating add: a deadline of "now + infinity" stays infinity. */
static inline usec_t usec_add(usec_t a, usec_t b) {
        return a > USEC_INFINITY - b ? USEC_INFINITY : a + b;
}
static inline usec_t usec_sub_floor(usec_t a, usec_t b) {
        return a > b ? a - b : 0;
}
/* Milliseconds to wait until deadline, clamped for poll()/epoll_wait(): -1 for infinity. */
int usec_to_poll_timeout(usec_t deadline, usec_t now);
