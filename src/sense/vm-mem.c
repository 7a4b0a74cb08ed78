/* SPDX-License-Identifier: MIT */
#include "sense/vm-mem.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sense/sense.h"
#include "shared/macro.h"

#define VMMEM_MAPPINGS_MAX 16 /* candidates kept; guest memory is one to a few regions */

/* "Key:   123 kB" at the start of line → bytes. */
static bool kb_line(const char *line, size_t len, const char *key, uint64_t *ret) {
        size_t kl = strlen(key);
        if (len <= kl || memcmp(line, key, kl) != 0)
                return false;
        const char *p = line + kl;
        const char *end = line + len;
        while (p < end && (*p == ' ' || *p == '\t'))
                p++;
        uint64_t v = 0;
        bool any = false;
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
                if (v > (UINT64_MAX >> 10) / 10)
                        return false;
                v = v * 10 + (uint64_t) (*p - '0');
                any = true;
        }
        if (!any)
                return false;
        *ret = v << 10;
        return true;
}

int vmmem_status_parse(const char *buf, size_t len, uint64_t *ret_rss) {
        const char *p = buf, *end = buf + len;
        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                size_t l = nl ? (size_t) (nl - p) : (size_t) (end - p);
                uint64_t v;
                if (kb_line(p, l, "VmRSS:", &v)) {
                        *ret_rss = v;
                        return 0;
                }
                p += l + 1;
        }
        return -ENODATA;
}

int vmmem_statm_parse(const char *buf, size_t len, uint64_t page_size, uint64_t *ret_rss) {
        uint64_t v[2] = { 0, 0 };
        size_t i = 0, k = 0;
        for (; k < 2; k++) {
                bool any = false;
                for (; i < len && buf[i] >= '0' && buf[i] <= '9'; i++) {
                        if (v[k] > (UINT64_MAX - 9) / 10)
                                return -EINVAL;
                        v[k] = v[k] * 10 + (uint64_t) (buf[i] - '0');
                        any = true;
                }
                if (!any || i >= len || (buf[i] != ' ' && buf[i] != '\n'))
                        return -EINVAL;
                i++;
        }
        if (page_size == 0 || v[1] > UINT64_MAX / page_size)
                return -EINVAL;
        *ret_rss = v[1] * page_size;
        return 0;
}

typedef struct Mapping {
        uint64_t size, rss;
} Mapping;

/* A mapping header: "start-end perms offset dev inode [path]". */
static bool header_line(const char *line, size_t len, bool *ret_candidate) {
        const char *dash = memchr(line, '-', len);
        const char *sp = memchr(line, ' ', len);
        if (!dash || !sp || dash > sp || (size_t) (sp - line) + 5 > len)
                return false;
        for (const char *q = line; q < sp; q++)
                if (q != dash && !((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f')))
                        return false;
        const char *perm = sp + 1;
        *ret_candidate = perm[0] == 'r' && perm[1] == 'w' && perm[2] != 'x';
        return true;
}

static int mapping_cmp(const void *a, const void *b) {
        const Mapping *x = a, *y = b;
        return x->size < y->size ? 1 : x->size > y->size ? -1 : 0;
}

int vmmem_smaps_parse(const char *buf, size_t len, uint64_t assigned, uint64_t *ret_ram_rss) {
        Mapping m[VMMEM_MAPPINGS_MAX];
        size_t n = 0;
        uint64_t min_size = MIN(64 * MiB, assigned / 2);
        uint64_t max_total = assigned > UINT64_MAX - 64 * MiB ? UINT64_MAX : assigned + 64 * MiB;
        bool cand = false, have_size = false;
        uint64_t size = 0;
        const char *p = buf, *end = buf + len;

        if (assigned == 0)
                return -EINVAL;
        while (p < end) {
                const char *nl = memchr(p, '\n', (size_t) (end - p));
                size_t l = nl ? (size_t) (nl - p) : (size_t) (end - p);
                bool c;
                uint64_t v;
                if (header_line(p, l, &c)) {
                        cand = c;
                        have_size = false;
                } else if (cand && kb_line(p, l, "Size:", &v)) {
                        size = v;
                        have_size = true;
                } else if (cand && have_size && kb_line(p, l, "Rss:", &v)) {
                        if (size >= min_size && size <= max_total) {
                                if (n < VMMEM_MAPPINGS_MAX)
                                        m[n++] = (Mapping){ size, v };
                                else { /* keep the largest */
                                        qsort(m, n, sizeof *m, mapping_cmp);
                                        if (size > m[n - 1].size)
                                                m[n - 1] = (Mapping){ size, v };
                                }
                        }
                        cand = false;
                }
                p += l + 1;
        }
        if (n == 0)
                return -ENODATA;
        qsort(m, n, sizeof *m, mapping_cmp);
        uint64_t total = 0, rss = 0;
        for (size_t i = 0; i < n; i++) {
                if (m[i].size > max_total - total)
                        continue;
                total += m[i].size;
                rss += m[i].rss;
        }
        /* Guest RAM keeps its whole size mapped however far the balloon is inflated: mappings that
         * cover much less than the guest's size are some other large allocation (an allocator's
         * arena, a sanitizer's region in a test peer), not its RAM. */
        if (total + 64 * MiB < assigned)
                return -ENODATA;
        *ret_ram_rss = rss;
        return 0;
}

int vmmem_read_rss(const char *root, pid_t pid, uint64_t *ret_rss) {
        char path[PATH_MAX], buf[256];
        snprintf(path, sizeof path, "%s/proc/%d/statm", root ? root : "", (int) pid);
        int n = sense_read_file(path, buf, sizeof buf);
        if (n < 0)
                return n == -ENOENT ? -ESRCH : n;
        long ps = sysconf(_SC_PAGESIZE);
        return vmmem_statm_parse(buf, (size_t) n, ps > 0 ? (uint64_t) ps : 4096, ret_rss);
}

int vmmem_read_ram(const char *root, pid_t pid, uint64_t assigned, uint64_t *ret_ram_rss) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/proc/%d/smaps", root ? root : "", (int) pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return errno == ENOENT ? -ESRCH : -errno;
        /* smaps of a QEMU process is a few hundred kB: read it whole, then parse. */
        size_t cap = 256 * 1024, len = 0;
        char *buf = malloc(cap);
        int r = 0;
        while (buf) {
                size_t got = fread(buf + len, 1, cap - len, f);
                len += got;
                if (got == 0)
                        break;
                if (len == cap) {
                        if (cap >= 64 * MiB) {
                                r = -EFBIG;
                                break;
                        }
                        char *nb = realloc(buf, cap * 2);
                        if (!nb) {
                                r = -ENOMEM;
                                break;
                        }
                        buf = nb;
                        cap *= 2;
                }
        }
        if (!buf || (r == 0 && ferror(f)))
                r = buf ? -EIO : -ENOMEM;
        fclose(f);
        if (r == 0)
                r = vmmem_smaps_parse(buf, len, assigned, ret_ram_rss);
        free(buf);
        return r;
}

int vmmem_track_read(VmMemTrack *t, const char *root, pid_t pid, uint64_t assigned, bool at_full, bool active,
                     usec_t now, usec_t next_rss_at, unsigned *ram_budget) {
        t->next_rss = next_rss_at;
        uint64_t rss;
        if (vmmem_read_rss(root, pid, &rss) < 0) {
                t->host_rss = 0;
                t->ram_known = false;
                return 0;
        }
        t->host_rss = rss;
        if (at_full)
                t->rss_base = rss;
        /* The overhead drifts slowly (QEMU's TCG buffer fills as the guest runs new code). */
        if (now < t->next_ram || *ram_budget == 0)
                return 0;
        uint64_t ram;
        (*ram_budget)--;
        int r = vmmem_read_ram(root, pid, assigned, &ram);
        bool report = r < 0 && (t->ram_known || t->next_ram == 0);
        t->next_ram = now + (r >= 0 && active ? 60 : 600) * USEC_PER_SEC;
        t->ram_known = r >= 0;
        if (r >= 0)
                t->ram_overhead = rss > ram ? rss - ram : 0;
        return report ? r : 0;
}

void vmmem_track_baseline(VmMemTrack *t, const char *root, pid_t pid) {
        uint64_t rss;
        if (vmmem_read_rss(root, pid, &rss) >= 0)
                t->host_rss = t->rss_base = rss;
}

uint64_t vmmem_track_resident(const VmMemTrack *t, uint64_t assigned) {
        if (!t->ram_known || !t->host_rss)
                return 0;
        uint64_t r = t->host_rss > t->ram_overhead ? t->host_rss - t->ram_overhead : 1;
        return MAX(MIN(r, assigned), (uint64_t) 1);
}

uint64_t vmmem_track_confirmed(const VmMemTrack *t) {
        return t->rss_base > t->host_rss && t->host_rss ? t->rss_base - t->host_rss : 0;
}
