/* SPDX-License-Identifier: MIT */
/* Fuzzes the QMP read path exactly as the driver runs it on bytes from the socket: line framing
 * (qmp_next_line) -> message parsing (qmp_msg_parse, which clamps big integers) -> guest
 * statistics for returns; and qmp_clamp_big_ints on the raw input, checked for its contract. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hv/qmp-proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* A small framing limit too, so the -EMSGSIZE path is reachable with small inputs. */
#define FUZZ_LINE_MAX 4096

static void fuzz_clamp(const uint8_t *data, size_t size) {
        /* Exact-size copy: any read past the end is caught by ASan. */
        char *b = malloc(size ? size : 1);
        if (!b)
                return;
        memcpy(b, data, size);
        size_t n = qmp_clamp_big_ints(b, size);
        /* Contract: only digits become "-1" + spaces, so the length and every other byte stay. */
        for (size_t i = 0; i < size; i++)
                if (b[i] != (char) data[i] && !(b[i] == '-' || b[i] == '1' || b[i] == ' '))
                        abort();
        if (n == 0 && memcmp(b, data, size) != 0)
                abort();
        /* Idempotent: a second pass finds nothing left to rewrite. */
        if (qmp_clamp_big_ints(b, size) != 0)
                abort();
        free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > 2 * QMP_MAX_MESSAGE)
                return 0;
        fuzz_clamp(data, size);

        const char *buf = (const char *) data;
        size_t off = 0;
        while (off < size) {
                size_t line_len = 0, consumed = 0;
                int r = qmp_next_line(buf + off, size - off, FUZZ_LINE_MAX, &line_len, &consumed);
                if (r <= 0)
                        break;
                if (consumed == 0 || consumed > size - off || line_len >= consumed)
                        abort();
                const char *line = buf + off;
                off += consumed;
                if (line_len == 0)
                        continue;

                /* The cheap classifier never calls an event what the parser calls anything else. */
                bool is_event = qmp_line_is_event(line, line_len);
                QmpMsg m;
                char err[256];
                if (qmp_msg_parse(line, line_len, &m, err, sizeof(err)) < 0) {
                        if (memchr(err, '\0', sizeof(err)) == NULL)
                                abort();
                        continue;
                }
                if (m.type < 0 || m.type >= _QMP_MSG_TYPE_MAX || !m.root)
                        abort();
                if (m.id_is_ours && !m.id_present)
                        abort();
                if (m.type == QMP_MSG_ERROR && (!m.error_class || !m.error_desc))
                        abort();
                if (m.type == QMP_MSG_EVENT && !m.event)
                        abort();
                if (is_event && m.type != QMP_MSG_EVENT)
                        abort();
                if (m.type == QMP_MSG_RETURN) {
                        HvStats s;
                        if (qmp_parse_guest_stats(m.value, &s, err, sizeof(err)) == 0 &&
                            s.last_update > (uint64_t) INT64_MAX)
                                abort();
                }
                qmp_msg_done(&m);
        }
        return 0;
}
