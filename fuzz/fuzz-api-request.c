/* SPDX-License-Identifier: MIT */
/* Fuzzes the API's request body parsers (B6.1, B5.8): the first byte picks the parser, the rest
 * is the body. Each must accept or refuse with a message, never crash, leak or read past the end. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size < 1 || size > HTTP_BODY_MAX + 1)
                return 0;
        size_t len = size - 1;
        char *buf = malloc(len ? len : 1); /* exact size: ASan catches reads past the end */
        if (!buf)
                return 0;
        memcpy(buf, data + 1, len);
        char err[512];
        CtlVmSpec spec;
        ApiVmPatch patch;
        ApiReclaim rec;
        uint64_t t;
        switch (data[0] % 4) {
        case 0:
                if (api_parse_vm_create(buf, len, &spec, err, sizeof err) == 0 && (!spec.id[0] || !spec.driver[0]))
                        abort(); /* accepted bodies are complete */
                break;
        case 1:
                (void) api_parse_vm_patch(buf, len, &patch, err, sizeof err);
                break;
        case 2:
                if (api_parse_reclaim(buf, len, &rec, err, sizeof err) == 0 && rec.hold_for > API_HOLD_FOR_MAX)
                        abort();
                /* The same body as hypeman's clients send it (Go durations). */
                if (api_parse_reclaim_hypeman(buf, len, &rec, err, sizeof err) == 0 && rec.hold_for > API_HOLD_FOR_MAX)
                        abort();
                break;
        default:
                (void) api_parse_target(buf, len, &t, err, sizeof err);
        }
        free(buf);
        return 0;
}
