/* SPDX-License-Identifier: MIT */
#include "hv/hv.h"

#include <errno.h>
#include <stddef.h>

#include "shared/macro.h"

Hv *hv_free(Hv *hv) {
        if (hv)
                hv->ops->free(hv);
        return NULL;
}

void hv_counters(Hv *hv, HvCounters *ret) {
        *ret = (HvCounters){ 0 };
        if (hv->ops->counters)
                hv->ops->counters(hv, ret);
}

int hv_add_listener(Hv *hv, hv_actual_cb cb, void *userdata) {
        for (size_t i = 0; i < HV_LISTENERS_MAX; i++)
                if (!hv->listeners[i].cb) {
                        hv->listeners[i].cb = cb;
                        hv->listeners[i].userdata = userdata;
                        return 0;
                }
        return -ENOSPC;
}

void hv_remove_listener(Hv *hv, hv_actual_cb cb, void *userdata) {
        for (size_t i = 0; i < HV_LISTENERS_MAX; i++)
                if (hv->listeners[i].cb == cb && hv->listeners[i].userdata == userdata) {
                        hv->listeners[i].cb = NULL;
                        hv->listeners[i].userdata = NULL;
                }
}

void hv_notify_actual(Hv *hv, uint64_t actual, uint64_t when_realtime) {
        for (size_t i = 0; i < HV_LISTENERS_MAX; i++)
                if (hv->listeners[i].cb)
                        hv->listeners[i].cb(hv, actual, when_realtime, hv->listeners[i].userdata);
}

const char *hv_op_to_string(HvOp op) {
        static const char *const table[_HV_OP_MAX] = {
                [HV_OP_GET_ACTUAL] = "get-actual", [HV_OP_SET_TARGET] = "set-target",
                [HV_OP_GET_STATS] = "get-stats",   [HV_OP_SET_STATS_PERIOD] = "set-stats-period",
                [HV_OP_GET_CAPS] = "get-caps",
        };
        return op >= 0 && op < _HV_OP_MAX ? table[op] : NULL;
}

void hv_stats_init(HvStats *s) {
        *s = (HvStats){
                .swap_in = HV_STAT_UNSET,
                .swap_out = HV_STAT_UNSET,
                .major_faults = HV_STAT_UNSET,
                .minor_faults = HV_STAT_UNSET,
                .free = HV_STAT_UNSET,
                .total = HV_STAT_UNSET,
                .available = HV_STAT_UNSET,
                .caches = HV_STAT_UNSET,
                .oom_kills = HV_STAT_UNSET,
        };
}

const char *hv_wait_result_to_string(HvWaitResult r) {
        static const char *const table[_HV_WAIT_RESULT_MAX] = {
                [HV_WAIT_REACHED] = "reached",
                [HV_WAIT_DEADLINE] = "deadline",
                [HV_WAIT_STALLED] = "stalled",
                [HV_WAIT_ERROR] = "error",
        };
        return r >= 0 && r < _HV_WAIT_RESULT_MAX ? table[r] : NULL;
}
