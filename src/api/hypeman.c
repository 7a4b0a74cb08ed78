/* SPDX-License-Identifier: MIT */
#include "api/hypeman.h"

#include <errno.h>
#include <string.h>

#include "shared/macro.h"

#define NSEC_MAX (UINT64_C(1) << 63) /* Go's durations are int64 nanoseconds */

static const struct {
        const char *name;
        uint64_t nsec;
} hypeman_units[] = {
        { "ns", 1 },
        { "us", 1000 },
        { "\xc2\xb5s", 1000 }, /* U+00B5 MICRO SIGN */
        { "\xce\xbcs", 1000 }, /* U+03BC GREEK SMALL LETTER MU */
        { "ms", 1000 * 1000 },
        { "s", UINT64_C(1000) * 1000 * 1000 },
        { "m", UINT64_C(60) * 1000 * 1000 * 1000 },
        { "h", UINT64_C(3600) * 1000 * 1000 * 1000 },
};

static bool is_digit(char c) {
        return c >= '0' && c <= '9';
}

int hypeman_parse_duration(const char *s, usec_t *ret_usec, bool *ret_negative) {
        if (!s)
                return -EINVAL;
        bool neg = false;
        if (*s == '-' || *s == '+')
                neg = *s++ == '-';
        if (strcmp(s, "0") == 0) {
                *ret_usec = 0;
                *ret_negative = false;
                return 0;
        }
        if (!*s)
                return -EINVAL;
        unsigned __int128 total = 0; /* nanoseconds */
        while (*s) {
                /* [0-9]*(\.[0-9]*)? with at least one digit */
                unsigned __int128 whole = 0, frac = 0, scale = 1;
                bool digits = false;
                for (; is_digit(*s); s++) {
                        whole = whole * 10 + (unsigned) (*s - '0');
                        if (whole > NSEC_MAX)
                                return -ERANGE;
                        digits = true;
                }
                if (*s == '.') {
                        s++;
                        for (; is_digit(*s); s++) {
                                /* Digits past 10^-19 cannot change a nanosecond count below 2^63 h. */
                                if (scale < (unsigned __int128) UINT64_C(10000000000000000000)) {
                                        frac = frac * 10 + (unsigned) (*s - '0');
                                        scale *= 10;
                                }
                                digits = true;
                        }
                }
                if (!digits)
                        return -EINVAL;
                size_t ulen = 0;
                while (s[ulen] && s[ulen] != '.' && !is_digit(s[ulen]))
                        ulen++;
                if (ulen == 0)
                        return -EINVAL; /* a number without a unit */
                uint64_t unit = 0;
                for (size_t i = 0; i < ELEMENTSOF(hypeman_units); i++)
                        if (strlen(hypeman_units[i].name) == ulen && memcmp(hypeman_units[i].name, s, ulen) == 0)
                                unit = hypeman_units[i].nsec;
                if (unit == 0)
                        return -EINVAL;
                s += ulen;
                /* whole ≤ 2^63 and unit < 2^42: the product fits in 128 bits. */
                total += whole * unit + frac * unit / scale;
                if (total > NSEC_MAX)
                        return -ERANGE;
        }
        if (total == NSEC_MAX && !neg)
                return -ERANGE; /* 2^63 ns is only representable negated */
        *ret_usec = (usec_t) ((total + 999) / 1000);
        *ret_negative = neg && total > 0;
        return 0;
}

const char *hypeman_hypervisor(const char *driver) {
        if (!driver)
                return NULL;
        if (strcmp(driver, "qemu") == 0 || strcmp(driver, "libvirt") == 0)
                return "qemu";
        if (strcmp(driver, "firecracker") == 0)
                return "firecracker";
        if (strcmp(driver, "cloud-hypervisor") == 0)
                return "cloud-hypervisor";
        return NULL;
}
