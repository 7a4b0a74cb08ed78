/* SPDX-License-Identifier: MIT */
#pragma once

/* QMP wire format, as pure functions of bytes (no I/O, no clock): line framing, message
 * classification, guest statistics. Fuzzed by fuzz/fuzz-qmp.c. */

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "hv/hv.h"

#define QMP_MAX_MESSAGE ((size_t) 1 << 20) /* a bigger message is an error, not an allocation */

typedef enum QmpMsgType {
        QMP_MSG_GREETING,
        QMP_MSG_RETURN,
        QMP_MSG_ERROR,
        QMP_MSG_EVENT,
        _QMP_MSG_TYPE_MAX,
        _QMP_MSG_TYPE_INVALID = -22,
} QmpMsgType;

typedef struct QmpMsg {
        QmpMsgType type;
        json_t *root; /* owned; everything below borrows from it */

        bool id_present; /* the message carries an "id" member */
        bool id_is_ours; /* ...and it is a non-negative integer, as we send them */
        uint64_t id;

        json_t *value;           /* RETURN: the "return" value; EVENT: "data" (may be NULL) */
        const char *error_class; /* ERROR */
        const char *error_desc;  /* ERROR */
        const char *event;       /* EVENT: its name */
        uint64_t event_time_us;  /* EVENT: realtime microseconds from "timestamp", 0 if absent */
        int version[3];          /* GREETING: major, minor, micro (-1 if absent) */
        const char *package;     /* GREETING */
} QmpMsg;

/* Finds the first complete line in buf. Returns 1 with the line's length (without \r\n) and the
 * bytes to consume; 0 when more bytes are needed; -EMSGSIZE when `max` bytes hold no newline.
 * Empty lines are skipped (consumed, length 0, return 1). */
int qmp_next_line(const char *buf, size_t len, size_t max, size_t *ret_line_len, size_t *ret_consumed);

/* Rewrites in place every JSON integer literal outside strings that does not fit int64 (QEMU's
 * "unset" statistic 18446744073709551615, or any other) as -1 padded with spaces, so a strict
 * int64 JSON parser keeps working. Returns how many were rewritten. */
size_t qmp_clamp_big_ints(char *buf, size_t len);

/* Whether a line is a QMP event, from one pass over its bytes without parsing it: true only for
 * an object whose top-level keys include "event" and none of "QMP", "return" and "error", written
 * without escapes (so qmp_msg_parse, when it accepts the line, calls it an event too). For
 * dropping events over the rate cheaply; a line this does not call an event is parsed as usual. */
bool qmp_line_is_event(const char *line, size_t len);

/* Parses one line into *ret (owned by the caller, release with qmp_msg_done). Returns 0, or
 * -EBADMSG with a reason in err for anything that is not one QMP message. */
int qmp_msg_parse(const char *line, size_t len, QmpMsg *ret, char *err, size_t errlen);
void qmp_msg_done(QmpMsg *m);

/* Fills *ret from the value of qom-get "guest-stats" ({"stats": {...}, "last-update": N}). Negative
 * or missing values are left HV_STAT_UNSET. Returns 0 or -EBADMSG. */
int qmp_parse_guest_stats(json_t *value, HvStats *ret, char *err, size_t errlen);

/* Builds a command line (with trailing \n) into a malloc'ed string; steals args (may be NULL). */
char *qmp_format_command(const char *name, json_t *args, uint64_t id);
