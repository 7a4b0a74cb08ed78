/* SPDX-License-Identifier: MIT */
#pragma once

/* Pressure sensing (B5.1): pure parsers of /proc/meminfo, PSI and cgroup files, and readers that
 * take their root directory as a parameter so tests feed fixture trees. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SENSE_FILE_MAX ((size_t) 64 << 10) /* no file we read is larger; bigger is an error */

typedef struct PsiLine {
        uint32_t avg10, avg60, avg300; /* hundredths of a percent: "5.25" → 525 */
        uint64_t total_us;
} PsiLine;

typedef struct Psi {
        PsiLine some, full;
        bool has_full;
} Psi;

typedef struct MemSample {
        uint64_t total;     /* bytes of the scope: host MemTotal or the cgroup limit */
        uint64_t available; /* bytes the scope could still give out */
        bool has_psi;       /* PSI file present and parsed */
        Psi psi;
} MemSample;

/* "MemTotal: N kB" ... → bytes. Returns 0, or -EBADMSG when either field is missing/garbled. */
int meminfo_parse(const char *buf, size_t len, uint64_t *ret_total, uint64_t *ret_available);

/* "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull ...". Returns 0 or -EBADMSG. */
int psi_parse(const char *buf, size_t len, Psi *ret);

/* A cgroup v2 limit: a decimal number or "max" (→ UINT64_MAX). Returns 0 or -EBADMSG. */
int cgroup_parse_limit(const char *buf, size_t len, uint64_t *ret);

/* One "key value" pair from memory.stat (v1 or v2), e.g. "inactive_file". -ENOENT if absent. */
int cgroup_stat_get(const char *buf, size_t len, const char *key, uint64_t *ret);

/* Host scope: ROOT/proc/meminfo and ROOT/proc/pressure/memory (root "" is the real system). A
 * missing PSI file leaves has_psi false; anything else missing is an error with a reason. */
int sense_read_host(const char *root, MemSample *ret, char *err, size_t errlen);

/* cgroup scope at DIR (a cgroup directory): v2 (memory.current/max/stat/pressure) or v1
 * (memory.usage_in_bytes/limit_in_bytes/stat), detected by which files exist. available = limit −
 * usage + inactive file cache (reclaimable without I/O). An unlimited cgroup is an error:
 * there is nothing to measure pressure against. */
int sense_read_cgroup(const char *dir, MemSample *ret, int *ret_version, char *err, size_t errlen);

/* Reads a whole small file into buf (NUL-terminated). Returns length or negative errno;
 * -EFBIG when it does not fit. */
int sense_read_file(const char *path, char *buf, size_t size);

/* Registers a PSI trigger (B5.1) on a pressure file (ROOT/proc/pressure/memory or a cgroup v2
 * memory.pressure): the returned fd (owned by the caller) polls POLLPRI when `kind` ("some" or
 * "full") stall time exceeds stall_us within window_us (kernel limits: window 0.5–10 s). Returns
 * the fd or a negative errno (-ENOENT: no PSI on this system; the caller goes on without it). */
int psi_trigger_open(const char *pressure_path, const char *kind, uint64_t stall_us, uint64_t window_us);

/* cgroup v1: registers an eventfd on DIR/memory.pressure_level for `level` ("low", "medium",
 * "critical") through cgroup.event_control. Returns the eventfd (readable on each event) or a
 * negative errno. */
int cgroup1_pressure_open(const char *dir, const char *level);

/* cgroup v1: registers an eventfd that becomes readable whenever DIR/memory.usage_in_bytes
 * crosses usage_bytes, in either direction (cgroup.event_control), so a watermark crossing wakes
 * the controller at once instead of at the next sample. Returns the eventfd or a negative errno. */
int cgroup1_threshold_open(const char *dir, uint64_t usage_bytes);
