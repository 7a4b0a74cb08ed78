/* SPDX-License-Identifier: MIT */
#pragma once

/* What the host really holds for a VM: its hypervisor process's resident memory (VmRSS, a
 * counter the kernel keeps: cheap to read) and the part of it that is guest RAM (from
 * /proc/PID/smaps: a walk of the process's page tables, a few milliseconds for a QEMU process, so
 * the controller reads it rarely and derives the guest part from VmRSS in between). Readers take
 * a proc root ("" = the real /proc) so tests feed fixtures. Nothing here logs. */

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <sys/types.h>

#include "shared/time-util.h"

/* VmRSS from the text of /proc/PID/status. Returns 0, or -ENODATA when the line is missing. */
int vmmem_status_parse(const char *buf, size_t len, uint64_t *ret_rss);

/* The resident size from the text of /proc/PID/statm ("size resident shared …", in pages of
 * page_size bytes): the same figure as VmRSS, several times cheaper for the kernel to produce.
 * Returns 0, or -EINVAL when the text is not a statm line. */
int vmmem_statm_parse(const char *buf, size_t len, uint64_t page_size, uint64_t *ret_rss);

/* Guest RAM resident in the text of /proc/PID/smaps: the resident bytes of the largest writable,
 * non-executable mappings of at least 64 MiB (or half the guest, for smaller guests) whose sizes
 * add up to no more than the guest's size plus 64 MiB. That is QEMU's RAM block, Firecracker's
 * and Cloud Hypervisor's guest memory regions; it leaves out QEMU's TCG code buffer
 * (executable), its heap and thread stacks. Returns 0, or -ENODATA when no mapping fits. */
int vmmem_smaps_parse(const char *buf, size_t len, uint64_t assigned, uint64_t *ret_ram_rss);

/* The same on a live process (root "" = /proc; the RSS from statm). Return 0 or a negative errno
 * (-ESRCH: gone, -EACCES: not ours to read). */
int vmmem_read_rss(const char *root, pid_t pid, uint64_t *ret_rss);
int vmmem_read_ram(const char *root, pid_t pid, uint64_t assigned, uint64_t *ret_ram_rss);

/* The host side of one VM, read at a pace (B5.7): its hypervisor's RSS, the RSS it had when last at
 * full size (what the host got back is the fall from there), and the hypervisor's own memory
 * beside guest RAM (from smaps, read rarely: guest RAM resident = RSS − overhead). */
typedef struct VmMemTrack {
        uint64_t host_rss; /* 0 unknown */
        uint64_t rss_base; /* host_rss when the VM was last at full size; 0 unknown */
        usec_t next_rss;   /* monotonic: the next RSS read is due (0: now) */
        bool ram_known;
        uint64_t ram_overhead;
        usec_t next_ram; /* the next smaps read is due (0: now) */
} VmMemTrack;

static inline bool vmmem_track_due(const VmMemTrack *t, usec_t now) {
        return now >= t->next_rss;
}

/* A due read (root "" = /proc): the RSS, then next_rss_at; the baseline when at_full; and smaps
 * when it is due and *ram_budget (decremented) allows: every minute while active, every ten
 * otherwise. Returns 0, or the negative errno of a failed smaps read worth reporting (the first
 * one, or the first after one that worked). */
int vmmem_track_read(VmMemTrack *t, const char *root, pid_t pid, uint64_t assigned, bool at_full, bool active,
                     usec_t now, usec_t next_rss_at, unsigned *ram_budget);
/* Leaving full size: the baseline is now. */
void vmmem_track_baseline(VmMemTrack *t, const char *root, pid_t pid);
/* Guest RAM the host holds for the VM, within [1, assigned]; 0 when unknown. */
uint64_t vmmem_track_resident(const VmMemTrack *t, uint64_t assigned);
/* What the host got back since the VM was at full size; 0 when unknown. */
uint64_t vmmem_track_confirmed(const VmMemTrack *t);
