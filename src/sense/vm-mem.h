/* SPDX-License-Identifier: MIT */
#pragma once

/* What the host really holds for a VM: its hypervisor process's resident memory (VmRSS, a
 * counter the kernel keeps: cheap to read) and the part of it that is guest RAM (from
 * /proc/PID/smaps: a walk of the process's page tables, a few milliseconds for a QEMU process, so
 * the controller reads it rarely and derives the guest part from VmRSS in between). Readers take
 * a proc root ("" = the real /proc) so tests feed fixtures. Nothing here logs. */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

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
