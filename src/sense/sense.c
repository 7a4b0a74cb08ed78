/* SPDX-License-Identifier: MIT */
#include "sense/sense.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "shared/macro.h"

/* Finds "key" at the start of a line followed by a separator in sep; returns a pointer past it. */
static const char *find_line(const char *buf, size_t len, const char *key, const char *sep) {
        size_t kl = strlen(key);
        const char *p = buf, *end = buf + len;
        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                const char *le = nl ? nl : end;
                if ((size_t) (le - p) > kl && memcmp(p, key, kl) == 0 && strchr(sep, p[kl]))
                        return p + kl + 1;
                p = nl ? nl + 1 : end;
        }
        return NULL;
}

/* Parses a decimal uint64 from p (bounded by end), skipping leading blanks. */
static int parse_u64_at(const char *p, const char *end, uint64_t *ret, const char **ret_next) {
        while (p < end && (*p == ' ' || *p == '\t'))
                p++;
        if (p >= end || *p < '0' || *p > '9')
                return -EBADMSG;
        uint64_t v = 0;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
                unsigned d = (unsigned) (*p - '0');
                if (v > (UINT64_MAX - d) / 10)
                        return -EBADMSG;
                v = v * 10 + d;
        }
        *ret = v;
        if (ret_next)
                *ret_next = p;
        return 0;
}

static int meminfo_field(const char *buf, size_t len, const char *key, uint64_t *ret) {
        const char *p = find_line(buf, len, key, ":");
        if (!p)
                return -EBADMSG;
        const char *end = buf + len, *next;
        uint64_t kb;
        if (parse_u64_at(p, end, &kb, &next) < 0)
                return -EBADMSG;
        while (next < end && *next == ' ')
                next++;
        if (end - next < 2 || memcmp(next, "kB", 2) != 0)
                return -EBADMSG;
        if (kb > UINT64_MAX / 1024)
                return -EBADMSG;
        *ret = kb * 1024;
        return 0;
}

int meminfo_parse(const char *buf, size_t len, uint64_t *ret_total, uint64_t *ret_available) {
        uint64_t t, a;
        if (meminfo_field(buf, len, "MemTotal", &t) < 0 || meminfo_field(buf, len, "MemAvailable", &a) < 0)
                return -EBADMSG;
        *ret_total = t;
        *ret_available = a;
        return 0;
}

/* "12.34" → 1234; at most two decimals, at most 100.00. */
static int parse_percent(const char *p, const char *end, uint32_t *ret, const char **ret_next) {
        uint64_t whole;
        const char *q;
        if (parse_u64_at(p, end, &whole, &q) < 0 || whole > 100)
                return -EBADMSG;
        uint32_t frac = 0;
        if (q < end && *q == '.') {
                q++;
                int digits = 0;
                for (; q < end && *q >= '0' && *q <= '9'; q++, digits++)
                        if (digits < 2)
                                frac = frac * 10 + (uint32_t) (*q - '0');
                if (digits == 0)
                        return -EBADMSG;
                if (digits == 1)
                        frac *= 10;
        }
        uint32_t v = (uint32_t) whole * 100 + frac;
        if (v > 10000)
                return -EBADMSG;
        *ret = v;
        *ret_next = q;
        return 0;
}

static int psi_parse_line(const char *p, const char *end, PsiLine *ret) {
        static const char *const keys[4] = { "avg10=", "avg60=", "avg300=", "total=" };
        PsiLine l = { 0 };
        for (size_t i = 0; i < 4; i++) {
                while (p < end && *p == ' ')
                        p++;
                size_t kl = strlen(keys[i]);
                if ((size_t) (end - p) < kl || memcmp(p, keys[i], kl) != 0)
                        return -EBADMSG;
                p += kl;
                int r = i < 3 ? parse_percent(p, end,
                                              i == 0   ? &l.avg10
                                              : i == 1 ? &l.avg60
                                                       : &l.avg300,
                                              &p)
                              : parse_u64_at(p, end, &l.total_us, &p);
                if (r < 0)
                        return r;
        }
        *ret = l;
        return 0;
}

int psi_parse(const char *buf, size_t len, Psi *ret) {
        Psi psi = { 0 };
        const char *end = buf + len;
        const char *p = find_line(buf, len, "some", " ");
        if (!p)
                return -EBADMSG;
        const char *le = memchr(p, '\n', (size_t) (end - p));
        if (psi_parse_line(p, le ?: end, &psi.some) < 0)
                return -EBADMSG;
        p = find_line(buf, len, "full", " ");
        if (p) {
                le = memchr(p, '\n', (size_t) (end - p));
                if (psi_parse_line(p, le ?: end, &psi.full) < 0)
                        return -EBADMSG;
                psi.has_full = true;
        }
        *ret = psi;
        return 0;
}

int cgroup_parse_limit(const char *buf, size_t len, uint64_t *ret) {
        while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == ' '))
                len--;
        if (len == 3 && memcmp(buf, "max", 3) == 0) {
                *ret = UINT64_MAX;
                return 0;
        }
        const char *next;
        uint64_t v;
        if (len == 0 || parse_u64_at(buf, buf + len, &v, &next) < 0 || next != buf + len)
                return -EBADMSG;
        *ret = v;
        return 0;
}

int cgroup_stat_get(const char *buf, size_t len, const char *key, uint64_t *ret) {
        const char *p = find_line(buf, len, key, " ");
        if (!p)
                return -ENOENT;
        return parse_u64_at(p, buf + len, ret, NULL);
}

int sense_read_file(const char *path, char *buf, size_t size) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return negative_errno();
        size_t n = 0;
        for (;;) {
                if (n + 1 >= size)
                        return -EFBIG;
                ssize_t k = read(fd, buf + n, size - 1 - n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (k == 0)
                        break;
                n += (size_t) k;
        }
        buf[n] = '\0';
        return (int) n;
}

static int read_at(const char *dir, const char *file, char *buf, size_t size) {
        char path[PATH_MAX];
        if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, file) >= sizeof(path))
                return -ENAMETOOLONG;
        return sense_read_file(path, buf, size);
}

int sense_read_host(const char *root, MemSample *ret, char *err, size_t errlen) {
        _cleanup_free_ char *buf = malloc(SENSE_FILE_MAX);
        char dir[PATH_MAX];
        if (!buf)
                return -ENOMEM;
        MemSample s = { 0 };
        snprintf(dir, sizeof(dir), "%s/proc", root ?: "");
        int n = read_at(dir, "meminfo", buf, SENSE_FILE_MAX);
        if (n < 0) {
                snprintf(err, errlen, "cannot read %s/meminfo: %s", dir, strerror(-n));
                return n;
        }
        if (meminfo_parse(buf, (size_t) n, &s.total, &s.available) < 0) {
                snprintf(err, errlen, "%s/meminfo has no valid MemTotal/MemAvailable", dir);
                return -EBADMSG;
        }
        n = read_at(dir, "pressure/memory", buf, SENSE_FILE_MAX);
        if (n >= 0 && psi_parse(buf, (size_t) n, &s.psi) == 0)
                s.has_psi = true;
        *ret = s;
        return 0;
}

int sense_read_cgroup(const char *dir, MemSample *ret, int *ret_version, char *err, size_t errlen) {
        _cleanup_free_ char *buf = malloc(SENSE_FILE_MAX);
        if (!buf)
                return -ENOMEM;
        MemSample s = { 0 };
        uint64_t usage, limit, inactive = 0;
        int version = 2, n;

        n = read_at(dir, "memory.current", buf, SENSE_FILE_MAX);
        if (n == -ENOENT) {
                version = 1;
                n = read_at(dir, "memory.usage_in_bytes", buf, SENSE_FILE_MAX);
        }
        if (n < 0) {
                snprintf(err, errlen, "cannot read memory usage of cgroup %s: %s", dir, strerror(-n));
                return n;
        }
        if (cgroup_parse_limit(buf, (size_t) n, &usage) < 0 || usage == UINT64_MAX) {
                snprintf(err, errlen, "cgroup %s: malformed memory usage", dir);
                return -EBADMSG;
        }
        n = read_at(dir, version == 2 ? "memory.max" : "memory.limit_in_bytes", buf, SENSE_FILE_MAX);
        if (n < 0 || cgroup_parse_limit(buf, (size_t) n, &limit) < 0) {
                snprintf(err, errlen, "cgroup %s: cannot read its memory limit", dir);
                return n < 0 ? n : -EBADMSG;
        }
        /* v1 reports "no limit" as a page-rounded INT64_MAX. */
        if (limit == UINT64_MAX || limit >= (UINT64_C(1) << 62)) {
                snprintf(err, errlen, "cgroup %s has no memory limit: nothing to measure pressure against", dir);
                return -EDOM;
        }
        n = read_at(dir, "memory.stat", buf, SENSE_FILE_MAX);
        if (n >= 0)
                (void) cgroup_stat_get(buf, (size_t) n, version == 2 ? "inactive_file" : "total_inactive_file",
                                       &inactive);
        s.total = limit;
        uint64_t used = usage > inactive ? usage - inactive : 0;
        s.available = used < limit ? limit - used : 0;
        if (version == 2) {
                n = read_at(dir, "memory.pressure", buf, SENSE_FILE_MAX);
                if (n >= 0 && psi_parse(buf, (size_t) n, &s.psi) == 0)
                        s.has_psi = true;
        }
        *ret = s;
        if (ret_version)
                *ret_version = version;
        return 0;
}

int psi_trigger_open(const char *pressure_path, const char *kind, uint64_t stall_us, uint64_t window_us) {
        if (strcmp(kind, "some") != 0 && strcmp(kind, "full") != 0)
                return -EINVAL;
        if (stall_us == 0 || stall_us > window_us)
                return -EINVAL;
        int fd = open(pressure_path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        char trig[64];
        int n = snprintf(trig, sizeof(trig), "%s %" PRIu64 " %" PRIu64, kind, stall_us, window_us);
        /* The kernel wants the trailing NUL included. */
        if (write(fd, trig, (size_t) n + 1) < 0) {
                int r = negative_errno();
                close(fd);
                return r;
        }
        return fd;
}

int cgroup1_pressure_open(const char *dir, const char *level) {
        char path[PATH_MAX];
        if (strcmp(level, "low") != 0 && strcmp(level, "medium") != 0 && strcmp(level, "critical") != 0)
                return -EINVAL;
        if ((size_t) snprintf(path, sizeof(path), "%s/memory.pressure_level", dir) >= sizeof(path))
                return -ENAMETOOLONG;
        _cleanup_close_ int pfd = open(path, O_RDONLY | O_CLOEXEC);
        if (pfd < 0)
                return negative_errno();
        if ((size_t) snprintf(path, sizeof(path), "%s/cgroup.event_control", dir) >= sizeof(path))
                return -ENAMETOOLONG;
        _cleanup_close_ int cfd = open(path, O_WRONLY | O_CLOEXEC);
        if (cfd < 0)
                return negative_errno();
        _cleanup_close_ int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (efd < 0)
                return negative_errno();
        char line[64];
        int n = snprintf(line, sizeof(line), "%d %d %s", efd, pfd, level);
        if (write(cfd, line, (size_t) n) < 0)
                return negative_errno();
        /* The registration holds its own references: pfd and cfd may close now. */
        return TAKE_FD(efd);
}

int cgroup1_threshold_open(const char *dir, uint64_t usage_bytes) {
        char path[PATH_MAX];
        if ((size_t) snprintf(path, sizeof(path), "%s/memory.usage_in_bytes", dir) >= sizeof(path))
                return -ENAMETOOLONG;
        _cleanup_close_ int ufd = open(path, O_RDONLY | O_CLOEXEC);
        if (ufd < 0)
                return negative_errno();
        if ((size_t) snprintf(path, sizeof(path), "%s/cgroup.event_control", dir) >= sizeof(path))
                return -ENAMETOOLONG;
        _cleanup_close_ int cfd = open(path, O_WRONLY | O_CLOEXEC);
        if (cfd < 0)
                return negative_errno();
        _cleanup_close_ int efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (efd < 0)
                return negative_errno();
        char line[96];
        int n = snprintf(line, sizeof(line), "%d %d %" PRIu64, efd, ufd, usage_bytes);
        if (write(cfd, line, (size_t) n) < 0)
                return negative_errno();
        return TAKE_FD(efd);
}
