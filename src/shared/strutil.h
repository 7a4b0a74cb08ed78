/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/time-util.h"

/* "512M", "1G", "1.5G", "4096", "256MiB", "64k" → bytes (binary units). Rejects negatives,
 * garbage and values above 2^62. Returns 0 or -EINVAL / -ERANGE; *ret written on success only. */
int parse_size(const char *s, uint64_t *ret);

/* "250ms", "5s", "5m", "1h", "1h30m", "0s", "1500us" → microseconds. A bare number is seconds. */
int parse_duration(const char *s, usec_t *ret);

/* "on"/"off"/"yes"/"no"/"true"/"false"/"1"/"0". */
int parse_boolean(const char *s, bool *ret);

/* Decimal uint64 with full-string match; -EINVAL or -ERANGE. */
int parse_u64(const char *s, uint64_t *ret);

/* Human size, e.g. "512 MiB", "1.50 GiB", "12.3 MiB", "1000 B"; returns buf. */
const char *format_size(char *buf, size_t len, uint64_t bytes);
/* Signed variant for deltas: "+12.0 MiB", "-256.0 MiB". */
const char *format_size_delta(char *buf, size_t len, int64_t bytes);
/* "2.41 s", "180 ms", "950 us". */
const char *format_duration(char *buf, size_t len, usec_t d);

#define FORMAT_SIZE_MAX 32

/* A VM or object name: [A-Za-z0-9_.-]{1,32}, not starting with '.' or '-'. */
bool name_is_valid(const char *s);

/* Bounded strlcpy-like copy; always NUL-terminates when len > 0. Returns strlen(src). */
size_t strscpy(char *dst, size_t len, const char *src);

/* Strict UTF-8 (no overlongs, surrogates, code points above U+10FFFF or NUL) in the n bytes at s:
 * what jansson accepts. Returns the number of code points, or -1 when s is not valid UTF-8. */
ssize_t utf8_count(const char *s, size_t n);

/* Text that crossed a trust boundary (a hypervisor's error message, a guest's or an API client's
 * string) made safe for JSON, logs and terminals. Copies the n bytes at src into dst (size bytes,
 * always NUL-terminated when size > 0) so that dst is valid UTF-8 as utf8_count() accepts it and
 * holds no control characters: C0 (including NUL), DEL and C1 controls, and the characters that
 * reorder or break lines on a terminal (U+2028, U+2029, the bidirectional overrides U+202A–U+202E
 * and isolates U+2066–U+2069). Tab, newline and carriage return become a space; every other such
 * character, and every byte that is not part of valid UTF-8, becomes '?', or with UTF8_ESCAPE its
 * bytes are written as "\xHH" (for logs: nothing is lost). Output is cut only between characters
 * (or whole escapes). Without UTF8_ESCAPE the output is never longer than the input, so dst may
 * equal src. Returns the length written to dst. */
#define UTF8_ESCAPE (1u << 0)
size_t utf8_sanitize(char *dst, size_t size, const char *src, size_t n, unsigned flags);
