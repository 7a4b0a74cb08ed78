/* SPDX-License-Identifier: MIT */
#pragma once

/* The libvirt driver (B1.5): the HvOps for one domain of a libvirt connection, through libvirt's
 * C API (docs/libvirt.md).
 *
 *   set_target        virDomainSetMemoryFlags(VIR_DOMAIN_AFFECT_LIVE), KiB (bytes / 1024,
 *                     rounded down; above the domain's maximum it is clamped to the maximum,
 *                     as QEMU does for `balloon`)
 *   get_actual        VIR_DOMAIN_MEMORY_STAT_ACTUAL_BALLOON of virDomainMemoryStats, KiB → bytes
 *   get_stats         virDomainMemoryStats: swap_in/out, major/minor faults, free (UNUSED),
 *                     total (AVAILABLE), available (USABLE), caches (DISK_CACHES), last_update;
 *                     the period from the live XML's <memballoon><stats period=…/>
 *   set_stats_period  virDomainSetMemoryStatsPeriod(VIR_DOMAIN_AFFECT_LIVE)
 *   get_caps          balloon model, autodeflate and freePageReporting from the live XML;
 *                     ram_bytes from virDomainGetMaxMemory; version from virConnectGetType,
 *                     virConnectGetVersion and virConnectGetLibVersion ("QEMU 7.2.22, libvirt 9.0.0")
 *
 * libvirt's API blocks, so each driver owns one worker thread that makes every libvirt call, in
 * submission order; results come back to the loop through an eventfd. The loop enforces each
 * operation's deadline with a timer: a call that has not returned in time fails with -ETIMEDOUT
 * and its late result is dropped; an operation that timed out before the worker reached it is
 * not run at all. The connection is opened on the first operation and reopened after it dies
 * (virConnectIsAlive); a domain that was recreated under the same name or UUID is looked up
 * again. Errors carry libvirt's own message (virGetLastErrorMessage). libvirt's default error
 * printing is turned off for the whole process (virSetErrorFunc). */

#include "hv/hv.h"

#define LIBVIRT_DEFAULT_URI "qemu:///system"

typedef struct LibvirtConfig {
        const char *uri;    /* NULL or "": LIBVIRT_DEFAULT_URI */
        const char *domain; /* a name or a UUID (with or without dashes); required */
} LibvirtConfig;

/* Creates a libvirt driver and starts its worker thread. Nothing is connected until the first
 * operation. Returns 0 or a negative errno (-EINVAL without a domain, -ELIBACC when the driver
 * module cannot be loaded: libvirt_module_error() says why).
 *
 * The driver is a module, ballast-libvirt.so, loaded on first use (src/hv/libvirt-load.c), so a
 * daemon with no libvirt VM never maps libvirt and its dependency tree (about 12 MiB of RSS). It
 * is looked for in $BALLAST_MODULE_DIR, then in the build tree when the running program is in it,
 * then in the installed module directory. Programs that load it export their symbols
 * (-rdynamic): the module uses the loop, the log and the string helpers of the program. */
int libvirt_hv_new(Ev *ev, const LibvirtConfig *cfg, Hv **ret);
const char *libvirt_module_error(void);

typedef struct LibvirtCounters {
        uint64_t connects;     /* successful virConnectOpen */
        uint64_t lookups;      /* successful domain lookups */
        uint64_t calls;        /* operations the worker ran */
        uint64_t timeouts;     /* operations failed at their deadline */
        uint64_t late_results; /* results that came after their deadline (dropped) */
        uint64_t skipped;      /* operations dropped before the worker reached them */
} LibvirtCounters;
void libvirt_hv_counters(Hv *hv, LibvirtCounters *ret);

/* What the module itself exports (resolved with dlsym by the loader). The ABI number changes
 * whenever Hv, HvOps, HvReply, Ev or LibvirtConfig change shape. */
#define LIBVIRT_MODULE_ABI  1
#define LIBVIRT_MODULE_FILE "ballast-libvirt.so"
typedef struct LibvirtModule {
        unsigned abi;
        const char *version; /* BALLAST_VERSION */
        int (*hv_new)(Ev *ev, const LibvirtConfig *cfg, Hv **ret);
        void (*hv_counters)(Hv *hv, LibvirtCounters *ret);
} LibvirtModule;
extern const LibvirtModule ballast_libvirt_module;
