/* SPDX-License-Identifier: MIT */
/* Fuzzes the edge parsers of sizes, durations and booleans on NUL-terminated copies, checking
 * their documented bounds; and utf8_sanitize() on the raw bytes: its output is always valid UTF-8
 * without C0 or C1 controls and never longer than the buffer. */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shared/strutil.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_sanitized(const char *out, size_t k, size_t size) {
        if (k >= size || strlen(out) != k || utf8_count(out, k) < 0)
                abort();
        for (size_t i = 0; i < k; i++) {
                unsigned char c = (unsigned char) out[i];
                if (c < 0x20 || c == 0x7f)
                        abort();
                /* U+0080–U+009F is encoded as C2 80–C2 9F. */
                if (c == 0xc2 && i + 1 < k && (unsigned char) out[i + 1] <= 0x9f)
                        abort();
        }
}

static void fuzz_sanitize(const uint8_t *data, size_t size) {
        /* The first byte picks the output size (1–256) and the flags, the rest is the text. */
        if (size == 0)
                return;
        size_t outsize = (size_t) (data[0] & 0x7f) * 2 + 1 + (data[0] >> 7);
        unsigned flags = data[0] & 1 ? UTF8_ESCAPE : 0;
        const char *in = (const char *) data + 1;
        size_t n = size - 1;
        char *out = malloc(outsize);
        if (!out)
                return;
        size_t k = utf8_sanitize(out, outsize, in, n, flags);
        check_sanitized(out, k, outsize);
        free(out);

        /* In place, without UTF8_ESCAPE: never longer than the input. */
        char *copy = malloc(n + 1);
        if (!copy)
                return;
        memcpy(copy, in, n);
        copy[n] = '\0';
        k = utf8_sanitize(copy, n + 1, copy, n, 0);
        if (k > n)
                abort();
        check_sanitized(copy, k, n + 1);
        free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > 4096)
                return 0;
        fuzz_sanitize(data, size);
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
