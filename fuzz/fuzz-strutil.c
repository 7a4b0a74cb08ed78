/* SPDX-License-Identifier: MIT */
/* Fuzzes the edge parsers of sizes, durations and booleans on NUL-terminated copies, checking
 * their documented bounds. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shared/strutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > 4096)
                return 0;
        char *s = malloc(size + 1);
        if (!s)
                return 0;
        memcpy(s, data, size);
        s[size] = '\0';

        uint64_t v = 42;
        int r = parse_size(s, &v);
        if (r == 0 && v > (UINT64_C(1) << 62))
                abort();
        if (r < 0 && (r != -EINVAL && r != -ERANGE))
                abort();
        if (r < 0 && v != 42)
                abort(); /* *ret is written on success only */
        if (r == 0) {
                char buf[FORMAT_SIZE_MAX];
                format_size(buf, sizeof(buf), v);
                if (strlen(buf) >= sizeof(buf))
                        abort();
        }

        usec_t d = 42;
        r = parse_duration(s, &d);
        if (r < 0 && (r != -EINVAL && r != -ERANGE))
                abort();
        if (r < 0 && d != 42)
                abort();
        if (r == 0 && d == USEC_INFINITY)
                abort();

        bool b;
        (void) parse_boolean(s, &b);
        (void) parse_u64(s, &v);
        (void) name_is_valid(s);
        free(s);
        return 0;
}
