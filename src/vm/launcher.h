/* SPDX-License-Identifier: MIT */
#pragma once

/* The launcher (B3): starts QEMU microVMs under a small supervisor process that QEMU dies with
 * (PR_SET_PDEATHSIG), and destroys them with SIGTERM → SIGKILL confirmed through pidfds before
 * the working directory is removed.
 *
 * Layout of a VM's working directory (mode 0700) under the run root:
 *   vm.json         what was asked for (name, memory, options, image, time)
 *   supervisor.pid, qemu.pid
 *   qmp.sock        QMP for the controller (ballastd)
 *   qmp-ctl.sock    QMP for ballastctl and tools (QEMU serves one client per socket)
 *   qmp-in.sock     qmp.sock while a restored VM loads its snapshot (renamed once it runs)
 *   agent.sock      the guest agent's virtio-serial port
 *   serial.log, qemu.log, supervisor.log, exit-status (when QEMU exited by itself) */

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "shared/time-util.h"

typedef struct VmSpec {
        const char *name;
        uint64_t memory;           /* bytes, multiple of 1 MiB */
        unsigned cpus;             /* default 1 */
        bool deflate_on_oom;       /* default on */
        bool free_page_reporting;  /* default on */
        uint32_t stats_period;     /* seconds; 0 = off */
        const char *image_dir;     /* holds vmlinuz and initramfs.cpio.gz; NULL = search */
        const char *qemu_binary;   /* NULL = qemu-system-x86_64 */
        const char *extra_cmdline; /* appended to the guest kernel command line */
        bool foreground;           /* the supervisor stays our child and dies with us */
        /* Set by vm_restore(): the machine comes from a snapshot, not from a search and a probe. */
        const char *kernel, *initrd; /* NULL = from the guest image */
        const char *accel;           /* "kvm" or "tcg"; NULL = probe */
        bool incoming;               /* start paused waiting for a migration stream (-incoming defer) */
        const char *restored_from;   /* recorded in vm.json */
} VmSpec;

typedef struct VmInfo {
        char name[64];
        char dir[PATH_MAX];
        uint64_t memory;
        bool deflate_on_oom, free_page_reporting;
        pid_t supervisor_pid, qemu_pid;
        bool supervisor_alive, qemu_alive;
        char state[16]; /* "running", "exited", "stale" */
        char exit_status[64];
        uint64_t started_realtime_us;
        char accel[8];
} VmInfo;

void vm_spec_init(VmSpec *s);

/* $BALLAST_RUN_DIR, else /run/ballast/vms for root, else $XDG_RUNTIME_DIR/ballast/vms, else
 * /tmp/ballast-UID/vms. */
int vm_run_root(char *buf, size_t len);
/* vm_run_root(), created when missing (mode 0755 for root, 0700 for others) and checked to be a
 * directory of ours that no other user can write to or rename (see vm_start()). Returns 0 or a
 * negative errno with a message in err. */
int vm_run_root_prepare(char *buf, size_t len, char *err, size_t errlen);
int vm_dir(const char *name, char *buf, size_t len);
/* Socket path of a VM by name: "qmp", "qmp-ctl" or "agent". */
int vm_socket_path(const char *name, const char *which, char *buf, size_t len);

/* Finds the guest image: image_dir, $BALLAST_IMAGE_DIR, the build tree, the installed data dir. */
int vm_find_image(const char *image_dir, char *kernel, char *initrd, size_t len, char *err, size_t errlen);

/* Starts the VM: returns once QEMU is running (not booted) with *ret filled. With
 * spec->foreground the supervisor is the caller's child (reap it with waitpid on
 * ret->supervisor_pid) and stops QEMU when the caller dies. */
int vm_start(const VmSpec *spec, VmInfo *ret, char *err, size_t errlen);

/* Destroys the VM: SIGTERM, up to `grace` for it to go, SIGKILL, confirmation through pidfds,
 * then the working directory is removed. A VM whose processes are already gone is just cleaned
 * up. The run root and the VM's directory are checked first (as for vm_info()) and an unsafe one
 * is refused, never followed. Returns 0, -ENOENT (no such VM) or another negative errno with err. */
int vm_stop(const char *name, usec_t grace, char *err, size_t errlen);

/* Reads the state of VM `name`. Returns 0; -EINVAL (bad name); -ENOENT (no such VM); -ELOOP,
 * -ENOTDIR or -EPERM when the run root or the VM's directory is not safe to use (a symbolic link,
 * not a directory, another user's, or writable by others: see docs/design.md, Launcher). */
int vm_info(const char *name, VmInfo *ret);
/* All VMs under the run root, sorted by name; *ret is malloc'ed. An unsafe run root (as for
 * vm_info()) fails with its negative errno; a missing one is an empty list. */
int vm_list(VmInfo **ret, size_t *ret_n);

/* --- snapshot and restore (docs/launcher.md) ---
 *
 * A snapshot file is a 64 KiB header, "BALLAST-SNAPSHOT 1\n" then the machine's configuration as
 * one line of JSON (what vm_restore() needs to build the same QEMU command line), NUL-padded; then
 * QEMU's migration stream, which carries the guest's RAM and every device's state, the balloon's
 * target and actual size included. */
#define VM_SNAPSHOT_MAGIC  "BALLAST-SNAPSHOT 1\n"
#define VM_SNAPSHOT_HEADER ((size_t) 64 << 10)

typedef struct VmSnapshotResult {
        uint64_t bytes;          /* size of the file */
        uint64_t balloon_actual; /* guest memory when it was taken */
        usec_t duration;         /* from the pause to the file being complete */
} VmSnapshotResult;

/* Pauses VM `name` and saves it to `file` (written to a temporary file next to it, renamed once
 * complete and synced: an existing file is replaced only by a complete snapshot). The VM is left
 * paused (QEMU's "postmigrate"); vm_resume() runs it again, vm_stop() ends it. On failure the VM
 * runs again if it was running, and no file is left. Returns 0 or a negative errno with err. */
int vm_snapshot(const char *name, const char *file, usec_t timeout, VmSnapshotResult *ret, char *err, size_t errlen);

/* Runs a paused VM again (QMP cont). Returns 0 or a negative errno with err. */
int vm_resume(const char *name, usec_t timeout, char *err, size_t errlen);

/* Starts VM `name` from a snapshot: QEMU with the snapshot's machine configuration waits for the
 * stream (-incoming defer), loads it, and runs it; only then does the VM's qmp.sock appear
 * (ballastd sees the VM again once it runs, never half-loaded). image_dir, when set, replaces the
 * snapshot's guest image directory (the kernel and initramfs, which QEMU reads at start). Returns
 * once the guest runs again (its agent answers at once, see vm_start for waiting on it) with *ret
 * filled, or a negative errno with err; a failed restore leaves nothing behind. */
int vm_restore(const char *name, const char *file, const char *image_dir, usec_t timeout, VmInfo *ret, char *err,
               size_t errlen);

/* Resident memory of a process from /proc/PID/status (VmRSS), bytes. */
int proc_rss(pid_t pid, uint64_t *ret);
