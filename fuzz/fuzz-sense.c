/* SPDX-License-Identifier: MIT */
/* Fuzzes the /proc and cgroup file parsers: meminfo, PSI, cgroup limits, memory.stat, and a VM
 * process's status (VmRSS) and smaps (guest RAM resident). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sense/sense.h"
#include "sense/vm-mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > SENSE_FILE_MAX)
                return 0;
        /* Exact-size copy: any read past the end is caught by ASan. */
        char *buf = malloc(size ? size : 1);
        if (!buf)
                return 0;
        memcpy(buf, data, size);
        uint64_t a, b;
        Psi p;
        (void) meminfo_parse(buf, size, &a, &b);
        (void) psi_parse(buf, size, &p);
        (void) cgroup_parse_limit(buf, size, &a);
        (void) cgroup_stat_get(buf, size, "inactive_file", &a);
        (void) vmmem_status_parse(buf, size, &a);
        (void) vmmem_statm_parse(buf, size, 4096, &a);
        (void) vmmem_smaps_parse(buf, size, UINT64_C(512) << 20, &a);
        (void) vmmem_smaps_parse(buf, size, UINT64_MAX, &b);
        free(buf);
        return 0;
}
