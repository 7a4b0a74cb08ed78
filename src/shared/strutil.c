/* SPDX-License-Identifier: MIT */
#include "shared/strutil.h"

#include <sys/types.h>
#include "shared/macro.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SIZE_LIMIT (UINT64_C(1) << 62)

int parse_u64(const char *s, uint64_t *ret) {
        if (!s || !isdigit((unsigned char) s[0]))
                return -EINVAL;
        uint64_t v = 0;
        for (const char *p = s; *p; p++) {
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                unsigned d = (unsigned) (*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -ERANGE;
                v = v * 10 + d;
        }
        *ret = v;
        return 0;
}

int parse_size(const char *s, uint64_t *ret) {
        static const struct {
                const char *suffix;
                uint64_t factor;
        } units[] = {
                { "", 1 },
                { "B", 1 },
                { "K", UINT64_C(1) << 10 },
                { "KB", UINT64_C(1) << 10 },
                { "KiB", UINT64_C(1) << 10 },
                { "M", UINT64_C(1) << 20 },
                { "MB", UINT64_C(1) << 20 },
                { "MiB", UINT64_C(1) << 20 },
                { "G", UINT64_C(1) << 30 },
                { "GB", UINT64_C(1) << 30 },
                { "GiB", UINT64_C(1) << 30 },
                { "T", UINT64_C(1) << 40 },
                { "TB", UINT64_C(1) << 40 },
                { "TiB", UINT64_C(1) << 40 },
        };

        if (!s || !isdigit((unsigned char) s[0]))
                return -EINVAL;

        /* Integer part. */
        uint64_t whole = 0;
        const char *p = s;
        for (; isdigit((unsigned char) *p); p++) {
                if (whole > (SIZE_LIMIT / 10))
                        return -ERANGE;
                whole = whole * 10 + (uint64_t) (*p - '0');
        }
        /* Optional fraction, up to 9 digits, kept as a numerator over 10^digits. */
        uint64_t frac = 0, frac_div = 1;
        if (*p == '.') {
                p++;
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                for (; isdigit((unsigned char) *p); p++) {
                        if (frac_div >= UINT64_C(1000000000))
                                return -EINVAL;
                        frac = frac * 10 + (uint64_t) (*p - '0');
                        frac_div *= 10;
                }
        }

        for (size_t i = 0; i < ELEMENTSOF(units); i++) {
                if (strcasecmp(p, units[i].suffix) != 0)
                        continue;
                uint64_t f = units[i].factor;
                if (frac_div > 1 && f == 1)
                        return -EINVAL; /* "1.5" bytes makes no sense */
                if (whole > SIZE_LIMIT / f)
                        return -ERANGE;
                unsigned __int128 v = (unsigned __int128) whole * f + (unsigned __int128) frac * f / frac_div;
                if (v > SIZE_LIMIT)
                        return -ERANGE;
                *ret = (uint64_t) v;
                return 0;
        }
        return -EINVAL;
}

int parse_duration(const char *s, usec_t *ret) {
        static const struct {
                const char *suffix;
                usec_t factor;
        } units[] = {
                { "us", 1 },
                { "ms", USEC_PER_MSEC },
                { "s", USEC_PER_SEC },
                { "m", 60 * USEC_PER_SEC },
                { "min", 60 * USEC_PER_SEC },
                { "h", 3600 * USEC_PER_SEC },
        };

        if (!s || !*s)
                return -EINVAL;

        usec_t total = 0;
        const char *p = s;
        bool any = false;
        while (*p) {
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                uint64_t v = 0;
                for (; isdigit((unsigned char) *p); p++) {
                        if (v > UINT64_MAX / 10 / 2)
                                return -ERANGE;
                        v = v * 10 + (uint64_t) (*p - '0');
                }
                const char *u = p;
                while (*p && isalpha((unsigned char) *p))
                        p++;
                size_t ulen = (size_t) (p - u);
                usec_t f = 0;
                if (ulen == 0) {
                        if (any || *p)
                                return -EINVAL; /* bare number only as the whole string */
                        f = USEC_PER_SEC;
                } else
                        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                                if (strlen(units[i].suffix) == ulen && strncmp(u, units[i].suffix, ulen) == 0)
                                        f = units[i].factor;
                if (f == 0)
                        return -EINVAL;
                if (v > (UINT64_MAX / 4) / f)
                        return -ERANGE;
                total += v * f;
                if (total > UINT64_MAX / 4)
                        return -ERANGE;
                any = true;
        }
        *ret = total;
        return 0;
}

int parse_boolean(const char *s, bool *ret) {
        static const char *const yes[] = { "1", "yes", "y", "true", "on" };
        static const char *const no[] = { "0", "no", "n", "false", "off" };
        if (!s)
                return -EINVAL;
        for (size_t i = 0; i < ELEMENTSOF(yes); i++)
                if (strcasecmp(s, yes[i]) == 0) {
                        *ret = true;
                        return 0;
                }
        for (size_t i = 0; i < ELEMENTSOF(no); i++)
                if (strcasecmp(s, no[i]) == 0) {
                        *ret = false;
                        return 0;
                }
        return -EINVAL;
}

const char *format_size(char *buf, size_t len, uint64_t bytes) {
        static const char *const suffix[] = { "KiB", "MiB", "GiB", "TiB", "PiB", "EiB" };
        if (bytes < 1024) {
                snprintf(buf, len, "%" PRIu64 " B", bytes);
                return buf;
        }
        double v = (double) bytes;
        size_t i = 0;
        v /= 1024.0;
        while (v >= 1024.0 && i + 1 < ELEMENTSOF(suffix)) {
                v /= 1024.0;
                i++;
        }
        snprintf(buf, len, v >= 100.0 ? "%.0f %s" : v >= 10.0 ? "%.1f %s" : "%.2f %s", v, suffix[i]);
        return buf;
}

const char *format_size_delta(char *buf, size_t len, int64_t bytes) {
        char tmp[FORMAT_SIZE_MAX];
        uint64_t mag = bytes < 0 ? (uint64_t) 0 - (uint64_t) bytes : (uint64_t) bytes;
        snprintf(buf, len, "%s%s", bytes < 0 ? "-" : "+", format_size(tmp, sizeof(tmp), mag));
        return buf;
}

const char *format_duration(char *buf, size_t len, usec_t d) {
        if (d == USEC_INFINITY)
                snprintf(buf, len, "infinity");
        else if (d >= USEC_PER_SEC)
                snprintf(buf, len, "%.2f s", (double) d / (double) USEC_PER_SEC);
        else if (d >= USEC_PER_MSEC)
                snprintf(buf, len, "%.1f ms", (double) d / (double) USEC_PER_MSEC);
        else
                snprintf(buf, len, "%" PRIu64 " us", d);
        return buf;
}

bool name_is_valid(const char *s) {
        size_t n = s ? strlen(s) : 0;
        if (n == 0 || n > 32 || s[0] == '.' || s[0] == '-')
                return false;
        for (size_t i = 0; i < n; i++)
                if (!isalnum((unsigned char) s[i]) && !strchr("_.-", s[i]))
                        return false;
        return true;
}

size_t strscpy(char *dst, size_t len, const char *src) {
        size_t n = strlen(src);
        if (len > 0) {
                size_t c = n < len - 1 ? n : len - 1;
                memcpy(dst, src, c);
                dst[c] = '\0';
        }
        return n;
}

ssize_t utf8_count(const char *s, size_t n) {
        const unsigned char *p = (const unsigned char *) s;
        ssize_t count = 0;
        for (size_t i = 0; i < n; count++) {
                unsigned c = p[i];
                size_t len;
                uint32_t cp, min;
                if (c == 0)
                        return -1;
                if (c < 0x80) {
                        i++;
                        continue;
                } else if ((c & 0xe0) == 0xc0) {
                        len = 2, cp = c & 0x1f, min = 0x80;
                } else if ((c & 0xf0) == 0xe0) {
                        len = 3, cp = c & 0x0f, min = 0x800;
                } else if ((c & 0xf8) == 0xf0) {
                        len = 4, cp = c & 0x07, min = 0x10000;
                } else
                        return -1;
                if (n - i < len)
                        return -1;
                for (size_t k = 1; k < len; k++) {
                        if ((p[i + k] & 0xc0) != 0x80)
                                return -1;
                        cp = (cp << 6) | (p[i + k] & 0x3f);
                }
                if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                        return -1;
                i += len;
        }
        return count;
}

/* Length of the valid, non-NUL UTF-8 sequence at p (at most n bytes), its code point in *ret_cp;
 * 0 when invalid or cut short. */
static size_t utf8_decode(const unsigned char *p, size_t n, uint32_t *ret_cp) {
        unsigned c = p[0];
        size_t len;
        uint32_t cp, min;
        if (c == 0)
                return 0;
        if (c < 0x80) {
                *ret_cp = c;
                return 1;
        } else if ((c & 0xe0) == 0xc0)
                len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
                len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
                len = 4, cp = c & 0x07, min = 0x10000;
        else
                return 0;
        if (n < len)
                return 0;
        for (size_t k = 1; k < len; k++) {
                if ((p[k] & 0xc0) != 0x80)
                        return 0;
                cp = (cp << 6) | (p[k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        *ret_cp = cp;
        return len;
}

static bool utf8_is_unsafe(uint32_t cp) {
        return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 ||
               (cp >= 0x202a && cp <= 0x202e) || (cp >= 0x2066 && cp <= 0x2069);
}

size_t utf8_sanitize(char *dst, size_t size, const char *src, size_t n, unsigned flags) {
        const unsigned char *p = (const unsigned char *) src;
        size_t o = 0;
        if (size == 0)
                return 0;
        for (size_t i = 0; i < n;) {
                uint32_t cp = 0;
                size_t len = utf8_decode(p + i, n - i, &cp);
                size_t bad = len ? len : 1; /* bytes to replace or escape */
                if (len && !utf8_is_unsafe(cp)) {
                        if (size - o <= len)
                                break;
                        memmove(dst + o, p + i, len); /* dst may equal src: o <= i */
                        o += len;
                } else if (len == 1 && (cp == '\t' || cp == '\n' || cp == '\r')) {
                        if (size - o <= 1)
                                break;
                        dst[o++] = ' ';
                } else if (flags & UTF8_ESCAPE) {
                        if (size - o <= 4 * bad)
                                break;
                        for (size_t k = 0; k < bad; k++) {
                                snprintf(dst + o, 5, "\\x%02x", p[i + k]);
                                o += 4;
                        }
                } else {
                        if (size - o <= 1)
                                break;
                        dst[o++] = '?';
                }
                i += bad;
        }
        dst[o] = '\0';
        return o;
}
