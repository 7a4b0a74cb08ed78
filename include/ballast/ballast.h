/* SPDX-License-Identifier: MIT */
#pragma once

/* libballast: balloon control of virtual machines.
 *
 * Conventions: functions return 0 (or a positive count) on success and a negative errno on
 * failure; sizes are bytes (uint64_t); durations are microseconds. Where a BallastError is
 * passed, a failure also leaves a human-readable reason in it (with the hypervisor's own words).
 * Output parameters are written only on success. Handles are not thread-safe: use one per
 * thread. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BALLAST_UID_ANY    ((uid_t) -1)
#define BALLAST_STAT_UNSET UINT64_MAX

typedef struct BallastError {
        int code; /* negative errno */
        char message[512];
} BallastError;

typedef struct BallastStats {
        /* Bytes unless noted; BALLAST_STAT_UNSET when the guest did not report the value. */
        uint64_t swap_in, swap_out;
        uint64_t major_faults, minor_faults; /* counts */
        uint64_t free, total, available, caches;
        uint64_t oom_kills;   /* count; newer guests only */
        uint64_t last_update; /* realtime seconds of the guest's last report; 0 = never */
        uint32_t period;      /* polling period in seconds, 0 = off */
} BallastStats;

typedef struct BallastCaps {
        bool balloon;             /* a balloon device exists */
        bool stats;               /* guest statistics can be read */
        bool deflate_on_oom;      /* the device offers deflate-on-oom */
        bool free_page_reporting; /* the device offers free page reporting */
        uint64_t ram_bytes;       /* memory the balloon acts on (the VM's full size) */
        char version[64];         /* hypervisor version */
} BallastCaps;

typedef enum BallastWaitResult {
        BALLAST_WAIT_REACHED,  /* actual within tolerance of the target */
        BALLAST_WAIT_DEADLINE, /* the deadline passed; `reached` says where it got */
        BALLAST_WAIT_STALLED,  /* actual stopped moving for the stall window */
        BALLAST_WAIT_ERROR,    /* a hypervisor operation failed */
} BallastWaitResult;

typedef struct BallastWaitOptions {
        uint64_t tolerance;       /* default 16 MiB */
        uint64_t timeout_us;      /* the whole wait; default 60 s */
        uint64_t stall_window_us; /* default 3 s; UINT64_MAX disables */
        uint64_t op_timeout_us;   /* each hypervisor operation; default 5 s */
        uint64_t stall_min_bytes; /* less movement than this over the window is a stall; default 1 MiB */
        /* Called on every observation of actual while waiting (may be NULL). */
        void (*progress)(uint64_t actual, uint64_t target, uint64_t start, uint64_t elapsed_us, void *userdata);
        void *progress_userdata;
} BallastWaitOptions;

typedef struct BallastWaitOutcome {
        BallastWaitResult result;
        uint64_t start, target, reached; /* bytes of guest memory */
        uint64_t elapsed_us;             /* from sending the target to noticing the outcome */
        uint64_t noticed_realtime_us;    /* CLOCK_REALTIME when the outcome was noticed */
        unsigned polls, events;
        char message[512]; /* why, for anything but REACHED */
} BallastWaitOutcome;

typedef struct BallastHv BallastHv;

/* Opens a QEMU VM by its QMP socket. The socket's peer must run as expected_uid
 * (BALLAST_UID_ANY: any uid, but a known pid). Nothing is exchanged until the first call. */
int ballast_qemu_open(const char *qmp_socket, uid_t expected_uid, BallastHv **ret, BallastError *err);
/* Accepts NULL. */
void ballast_hv_close(BallastHv *hv);

int ballast_hv_get_actual(BallastHv *hv, uint64_t timeout_us, uint64_t *ret_bytes, BallastError *err);
int ballast_hv_set_target(BallastHv *hv, uint64_t guest_bytes, uint64_t timeout_us, BallastError *err);
int ballast_hv_get_stats(BallastHv *hv, uint64_t timeout_us, BallastStats *ret, BallastError *err);
int ballast_hv_set_stats_period(BallastHv *hv, uint32_t seconds, uint64_t timeout_us, BallastError *err);
int ballast_hv_get_caps(BallastHv *hv, uint64_t timeout_us, BallastCaps *ret, BallastError *err);

void ballast_wait_options_init(BallastWaitOptions *o);
/* Sets the target and waits (B1.6). Returns 0 when an outcome was reached (REACHED, DEADLINE or
 * STALLED: see ret->result), or a negative errno for an error (ret still filled, result ERROR). */
int ballast_hv_set_and_wait(BallastHv *hv, uint64_t guest_bytes, const BallastWaitOptions *o, BallastWaitOutcome *ret,
                            BallastError *err);

const char *ballast_wait_result_to_string(BallastWaitResult r);
const char *ballast_version(void);

#ifdef __cplusplus
}
#endif
