/* SPDX-License-Identifier: MIT */
#include "vm/launcher.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "hv/qmp-proto.h"
#include "shared/fs-util.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

#define SUPERVISOR_GRACE (10 * USEC_PER_SEC)

void vm_spec_init(VmSpec *s) {
        *s = (VmSpec){
                .memory = UINT64_C(512) << 20,
                .cpus = 1,
                .deflate_on_oom = true,
                .free_page_reporting = true,
        };
}

int vm_run_root(char *buf, size_t len) {
        const char *e = getenv("BALLAST_RUN_DIR");
        int n;
        if (e && *e)
                n = snprintf(buf, len, "%s", e);
        else if (geteuid() == 0)
                n = snprintf(buf, len, "/run/ballast/vms");
        else if ((e = getenv("XDG_RUNTIME_DIR")) && *e)
                n = snprintf(buf, len, "%s/ballast/vms", e);
        else
                n = snprintf(buf, len, "/tmp/ballast-%u/vms", (unsigned) geteuid());
        return n < 0 || (size_t) n >= len ? -ENAMETOOLONG : 0;
}

int vm_dir(const char *name, char *buf, size_t len) {
        char root[PATH_MAX];
        if (!name_is_valid(name))
                return -EINVAL;
        int r = vm_run_root(root, sizeof(root));
        if (r < 0)
                return r;
        int n = snprintf(buf, len, "%s/%s", root, name);
        return n < 0 || (size_t) n >= len ? -ENAMETOOLONG : 0;
}

int vm_socket_path(const char *name, const char *which, char *buf, size_t len) {
        char dir[PATH_MAX];
        int r = vm_dir(name, dir, sizeof(dir));
        if (r < 0)
                return r;
        int n = snprintf(buf, len, "%s/%s.sock", dir, which);
        return n < 0 || (size_t) n >= len ? -ENAMETOOLONG : 0;
}

/* Everything the launcher does in the run root (reading pid files, removing a VM's directory)
 * assumes that no other user can put anything there: a link at RUN_ROOT/NAME would otherwise
 * make 'vm stop NAME' act on a directory of that user's choosing. So the run root must be a real
 * directory of ours that nobody else can write to, in a parent where nobody else can rename it
 * (/tmp is fine: it is sticky). With those two checks passed, the entries checked below cannot
 * change behind our back, except by root. Returns 0, -ENOENT if it does not exist, or another
 * negative errno with a message naming the path in err. */
static int run_root_check(const char *root, char *err, size_t errlen) {
        char parent[PATH_MAX];
        if (strscpy(parent, sizeof(parent), root) >= sizeof(parent))
                return -ENAMETOOLONG;
        size_t n = strlen(parent);
        while (n > 1 && parent[n - 1] == '/')
                parent[--n] = '\0';
        char *slash = strrchr(parent, '/');
        if (!slash)
                strscpy(parent, sizeof(parent), ".");
        else if (slash == parent)
                parent[1] = '\0';
        else
                *slash = '\0';
        char why[PATH_MAX + 256];
        int r = fs_check_safe_parent(parent, geteuid(), why, sizeof(why));
        if (r >= 0)
                r = fs_check_private_dir(root, geteuid(), why, sizeof(why));
        if (r < 0 && r != -ENOENT)
                snprintf(err, errlen, "unsafe run directory: %s (set BALLAST_RUN_DIR to a directory of your own)", why);
        return r;
}

int vm_run_root_prepare(char *buf, size_t len, char *err, size_t errlen) {
        int r = vm_run_root(buf, len);
        if (r < 0) {
                snprintf(err, errlen, "run directory path too long");
                return r;
        }
        /* A user's run root (and whatever of its path we create) is private: /tmp/ballast-UID is
         * in a world-writable directory. root's /run/ballast stays readable as before. */
        r = fs_mkdir_p(buf, geteuid() == 0 ? 0755 : 0700, false, err, errlen);
        if (r < 0)
                return r;
        /* Checked after creating it: someone else may have made it first. */
        r = run_root_check(buf, err, errlen);
        if (r == -ENOENT)
                snprintf(err, errlen, "run directory '%s' vanished while starting", buf);
        return r;
}

/* The VM's directory in a checked run root: a real directory of ours, not writable by others.
 * Returns 0 with its path in buf; -EINVAL (bad name), -ENOENT (no such VM) or another negative
 * errno with a message naming the path in err. */
static int vm_dir_checked(const char *name, char *buf, size_t len, char *err, size_t errlen) {
        char root[PATH_MAX], why[PATH_MAX + 256];
        int r = vm_dir(name, buf, len);
        if (r < 0) {
                snprintf(err, errlen, r == -EINVAL ? "invalid VM name '%s'" : "run directory path too long", name);
                return r;
        }
        if ((r = vm_run_root(root, sizeof(root))) < 0 || (r = run_root_check(root, err, errlen)) < 0)
                return r;
        r = fs_check_private_dir(buf, geteuid(), why, sizeof(why));
        if (r < 0 && r != -ENOENT)
                snprintf(err, errlen, "VM '%s': %s", name, why);
        return r;
}

static int read_file_line(const char *path, char *buf, size_t len) {
        FILE *f = fopen(path, "re");
        if (!f)
                return negative_errno();
        if (!fgets(buf, (int) len, f)) {
                fclose(f);
                return -ENODATA;
        }
        fclose(f);
        buf[strcspn(buf, "\n")] = '\0';
        return 0;
}

static int write_file(const char *path, const char *text) {
        _cleanup_close_ int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
                return negative_errno();
        size_t n = strlen(text);
        if (write(fd, text, n) != (ssize_t) n)
                return -EIO;
        return 0;
}

static pid_t read_pid(const char *dir, const char *file) {
        char path[PATH_MAX + 64], line[32];
        uint64_t v;
        snprintf(path, sizeof(path), "%s/%s", dir, file);
        if (read_file_line(path, line, sizeof(line)) < 0 || parse_u64(line, &v) < 0 || v == 0 || v > INT32_MAX)
                return 0;
        return (pid_t) v;
}

/* A pid is "ours" while it lives with its cwd in the VM's directory: both the supervisor and QEMU
 * run there, and a recycled pid will not. Zombies fail the readlink and count as gone. */
static bool pid_is_ours(pid_t pid, const char *dir) {
        char link[64], target[PATH_MAX];
        if (pid <= 0)
                return false;
        snprintf(link, sizeof(link), "/proc/%d/cwd", (int) pid);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return false;
        target[n] = '\0';
        char real[PATH_MAX];
        if (!realpath(dir, real))
                return strcmp(target, dir) == 0;
        return strcmp(target, real) == 0;
}

int vm_find_image(const char *image_dir, char *kernel, char *initrd, size_t len, char *err, size_t errlen) {
        const char *candidates[4] = { image_dir, getenv("BALLAST_IMAGE_DIR"), BALLAST_BUILDDIR "/guest/image",
                                      BALLAST_DATADIR "/guest" };
        for (size_t i = 0; i < ELEMENTSOF(candidates); i++) {
                const char *d = candidates[i];
                if (!d || !*d)
                        continue;
                snprintf(kernel, len, "%s/vmlinuz", d);
                snprintf(initrd, len, "%s/initramfs.cpio.gz", d);
                if (access(kernel, R_OK) == 0 && access(initrd, R_OK) == 0)
                        return 0;
                if (i == 0) {
                        snprintf(err, errlen, "no guest image in '%s' (expected vmlinuz and initramfs.cpio.gz)", d);
                        return -ENOENT;
                }
        }
        snprintf(err, errlen,
                 "no guest image found: build one with 'make image' (guest/mkimage DIR), then pass --image DIR "
                 "or set BALLAST_IMAGE_DIR");
        return -ENOENT;
}

/* Whether QEMU can really run a KVM guest here. An openable /dev/kvm is not enough: under some
 * nested hypervisors QEMU aborts while setting up the vCPU ("failed to set MSR"), and under others
 * the vCPU runs real-mode firmware but hangs when the kernel enters protected mode. So the guest
 * kernel itself is booted with KVM, without an initramfs, printing to a pipe: KVM is usable if the
 * kernel proper starts ("Linux version", well under a second where KVM works) within 5 s. */
#define KVM_PROBE_TIMEOUT (5 * USEC_PER_SEC)

static bool kvm_probe(const char *qemu, const char *kernel) {
        int out[2];
        if (pipe2(out, O_CLOEXEC) < 0)
                return false;
        pid_t pid = fork();
        if (pid < 0) {
                close(out[0]);
                close(out[1]);
                return false;
        }
        if (pid == 0) {
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                if (null < 0 || dup2(null, 0) < 0 || dup2(out[1], 1) < 0 || dup2(null, 2) < 0)
                        _exit(127);
                execlp(qemu, qemu, "-M", "q35", "-accel", "kvm", "-cpu", "host", "-m", "128", "-nodefaults", "-display",
                       "none", "-no-reboot", "-kernel", kernel, "-append",
                       "console=ttyS0 earlyprintk=ttyS0 panic=-1 quiet", "-serial", "stdio", (char *) NULL);
                _exit(127);
        }
        close(out[1]);
        static const char mark[] = "Linux version";
        char buf[8192];
        size_t len = 0;
        bool ok = false;
        usec_t deadline = now_mono() + KVM_PROBE_TIMEOUT;
        for (;;) {
                usec_t now = now_mono();
                if (now >= deadline)
                        break;
                struct pollfd p = { .fd = out[0], .events = POLLIN };
                int k = poll(&p, 1, usec_to_poll_timeout(deadline, now));
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                if (len == sizeof buf - 1) { /* keep the tail, where a split mark would be */
                        memmove(buf, buf + len - (sizeof mark - 1), sizeof mark - 1);
                        len = sizeof mark - 1;
                }
                ssize_t n = read(out[0], buf + len, sizeof buf - 1 - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0)
                        break; /* QEMU exited (or failed to start) before the kernel spoke */
                len += (size_t) n;
                buf[len] = 0;
                if (memmem(buf, len, mark, sizeof mark - 1)) {
                        ok = true;
                        break;
                }
        }
        close(out[0]);
        (void) kill(pid, SIGKILL);
        (void) waitpid(pid, NULL, 0);
        return ok;
}

/* The probe's answer is kept in the run root for the rest of this boot of the host, so that only
 * the first VM start pays for it. BALLAST_ACCEL=kvm|tcg overrides the probe. */
static bool kvm_usable(const char *qemu, const char *kernel) {
        static int cached = -1;
        const char *e = getenv("BALLAST_ACCEL");
        if (e && strcmp(e, "tcg") == 0)
                return false;
        if (e && strcmp(e, "kvm") == 0)
                return true;
        if (cached >= 0)
                return cached;
        int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
        if (fd < 0)
                return (cached = 0);
        close(fd);

        char boot_id[64] = "", root[PATH_MAX], path[PATH_MAX + 16], line[128];
        FILE *f = fopen("/proc/sys/kernel/random/boot_id", "re");
        if (f) {
                if (!fgets(boot_id, sizeof boot_id, f))
                        boot_id[0] = 0;
                fclose(f);
                boot_id[strcspn(boot_id, "\n")] = 0;
        }
        bool have_path = boot_id[0] && vm_run_root(root, sizeof root) >= 0;
        if (have_path) {
                snprintf(path, sizeof path, "%s/.kvm-probe", root);
                f = fopen(path, "re");
                if (f) {
                        char id[64];
                        int v;
                        bool hit = fgets(line, sizeof line, f) && sscanf(line, "%63s %d", id, &v) == 2 &&
                                   strcmp(id, boot_id) == 0 && (v == 0 || v == 1);
                        fclose(f);
                        if (hit)
                                return (cached = v);
                }
        }
        cached = kvm_probe(qemu, kernel);
        if (have_path) {
                char tmp[PATH_MAX + 32];
                snprintf(tmp, sizeof tmp, "%s.%d", path, (int) getpid());
                f = fopen(tmp, "we");
                if (f) {
                        fprintf(f, "%s %d\n", boot_id, cached);
                        if (fclose(f) == 0 && rename(tmp, path) == 0)
                                return cached;
                }
                (void) unlink(tmp);
        }
        return cached;
}

/* --- the supervisor (runs in the VM's directory, parent of QEMU) --- */

static int wait_pidfd(int pidfd, usec_t timeout) {
        struct pollfd p = { .fd = pidfd, .events = POLLIN };
        usec_t deadline = usec_add(now_mono(), timeout);
        for (;;) {
                int r = poll(&p, 1, usec_to_poll_timeout(deadline, now_mono()));
                if (r > 0)
                        return 0;
                if (r == 0)
                        return -ETIMEDOUT;
                if (errno != EINTR)
                        return negative_errno();
        }
}

/* Blocks the signals the supervisor acts on; returns a signalfd for them, or negative (errno set). */
static int supervisor_signalfd(void) {
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        return signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
}

/* In the child the supervisor forks for QEMU: sets up its process and execs argv. If the exec
 * fails, writes its errno to errfd. Does not return. */
static _Noreturn void qemu_exec(char **argv, int errfd, pid_t supervisor, bool no_thp) {
        /* QEMU dies with the supervisor, whatever kills it (B3.2). */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != supervisor)
                _exit(1);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        /* A restored VM: QEMU asks for transparent huge pages on guest RAM, and the stream
         * writes its pages all over it, so every write would make a 2 MiB page resident:
         * a parked guest would come back at full size on the host. Without THP only the
         * pages the snapshot holds data in become resident (docs/launcher.md). */
        if (no_thp)
                (void) prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
        int log = open("qemu.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (log >= 0) {
                dup2(log, STDOUT_FILENO);
                dup2(log, STDERR_FILENO);
        }
        execvp(argv[0], argv);
        int e = errno;
        (void) !write(errfd, &e, sizeof(e));
        _exit(127);
}

/* Forks QEMU and waits until its exec succeeded (errpipe closes) or failed (errpipe carries the
 * errno). Returns QEMU's pid; on failure, reports it on status_fd and exits. */
static pid_t supervisor_fork_qemu(char **argv, int errpipe[2], int status_fd, bool no_thp) {
        pid_t me = getpid();
        pid_t qpid = fork();
        if (qpid < 0) {
                dprintf(status_fd, "error fork: %s\n", strerror(errno));
                _exit(1);
        }
        if (qpid == 0)
                qemu_exec(argv, errpipe[1], me, no_thp);
        close(errpipe[1]);
        int e = 0;
        if (read(errpipe[0], &e, sizeof(e)) == (ssize_t) sizeof(e)) {
                dprintf(status_fd, "error cannot run %s: %s\n", argv[0], strerror(e));
                waitpid(qpid, NULL, 0);
                _exit(1);
        }
        close(errpipe[0]);
        return qpid;
}

/* QEMU has exited: records how in exit-status and exits. The directory stays, for 'vm info'. */
static _Noreturn void supervisor_qemu_exited(pid_t qpid) {
        int st = 0;
        waitpid(qpid, &st, 0);
        char what[64];
        if (WIFEXITED(st))
                snprintf(what, sizeof(what), "exited %d\n", WEXITSTATUS(st));
        else
                snprintf(what, sizeof(what), "signal %d\n", WTERMSIG(st));
        write_file("exit-status", what);
        fprintf(stderr, "supervisor: QEMU %s", what);
        _exit(0);
}

/* Told to stop: SIGTERM to QEMU, SIGKILL after the grace period, then removes the VM's
 * directory (the supervisor's cwd) and exits. */
static _Noreturn void supervisor_stop_qemu(int pidfd, pid_t qpid) {
        fprintf(stderr, "supervisor: stopping QEMU pid %d\n", (int) qpid);
        pidfd_send_signal(pidfd, SIGTERM, NULL, 0);
        if (wait_pidfd(pidfd, SUPERVISOR_GRACE) < 0) {
                pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
                wait_pidfd(pidfd, USEC_INFINITY);
        }
        waitpid(qpid, NULL, 0);
        /* Only now that QEMU is confirmed gone is the directory removed. */
        char cwd[PATH_MAX];
        if (getcwd(cwd, sizeof(cwd))) {
                if (chdir("/") == 0)
                        fs_rm_rf(cwd);
        }
        _exit(0);
}

/* Drains the signalfd; returns whether any of the signals asks the supervisor to stop. */
static bool supervisor_stop_requested(int sfd) {
        struct signalfd_siginfo si;
        bool stop = false;
        while (read(sfd, &si, sizeof(si)) == (ssize_t) sizeof(si))
                if (si.ssi_signo != SIGCHLD)
                        stop = true;
        return stop;
}

static _Noreturn void supervisor_main(char **argv, int status_fd, bool no_thp) {
        int sfd = supervisor_signalfd();

        char buf[64];
        snprintf(buf, sizeof(buf), "%d\n", (int) getpid());
        write_file("supervisor.pid", buf);

        int errpipe[2];
        if (sfd < 0 || pipe2(errpipe, O_CLOEXEC) < 0) {
                dprintf(status_fd, "error cannot set up the supervisor: %s\n", strerror(errno));
                _exit(1);
        }
        pid_t qpid = supervisor_fork_qemu(argv, errpipe, status_fd, no_thp);

        snprintf(buf, sizeof(buf), "%d\n", (int) qpid);
        write_file("qemu.pid", buf);
        int pidfd = pidfd_open(qpid, 0);
        dprintf(status_fd, "ok %d\n", (int) qpid);
        close(status_fd);
        fprintf(stderr, "supervisor %d: QEMU pid %d started\n", (int) getpid(), (int) qpid);

        for (;;) {
                struct pollfd p[2] = { { .fd = sfd, .events = POLLIN }, { .fd = pidfd, .events = POLLIN } };
                if (poll(p, 2, -1) < 0 && errno != EINTR)
                        break;
                if (p[1].revents)
                        supervisor_qemu_exited(qpid);
                if (p[0].revents && supervisor_stop_requested(sfd))
                        supervisor_stop_qemu(pidfd, qpid);
        }
        _exit(1);
}

/* --- starting --- */

typedef struct Argv {
        char *v[64];
        size_t n;
} Argv;

static void argv_add(Argv *a, const char *fmt, ...) _printf_(2, 3);
static void argv_add(Argv *a, const char *fmt, ...) {
        if (a->n + 1 >= ELEMENTSOF(a->v))
                return;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&a->v[a->n], fmt, ap) >= 0)
                a->n++;
        va_end(ap);
}

static void argv_done(Argv *a) {
        for (size_t i = 0; i < a->n; i++)
                free(a->v[i]);
}

/* vm.json holds everything the QEMU command line is built from, so that a snapshot can rebuild the
 * same machine (vm_snapshot() copies it into the file's header). */
static int write_vm_json(const char *dir, const VmSpec *s, const char *kernel, const char *initrd, const char *accel) {
        json_t *j = json_pack("{s:s,s:I,s:i,s:b,s:b,s:i,s:s,s:s,s:s,s:s,s:s,s:I}", "name", s->name, "memory",
                              (json_int_t) s->memory, "cpus", (int) s->cpus, "deflate_on_oom", s->deflate_on_oom,
                              "free_page_reporting", s->free_page_reporting, "stats_period", (int) s->stats_period,
                              "kernel", kernel, "initrd", initrd, "append", s->extra_cmdline ?: "", "qemu",
                              s->qemu_binary ?: "qemu-system-x86_64", "accel", accel, "started_realtime_us",
                              (json_int_t) now_usec(CLOCK_REALTIME));
        if (!j)
                return -ENOMEM;
        if (s->restored_from && json_object_set_new(j, "restored_from", json_string(s->restored_from)) < 0) {
                json_decref(j);
                return -ENOMEM;
        }
        char path[PATH_MAX + 64];
        snprintf(path, sizeof(path), "%s/vm.json", dir);
        int r = json_dump_file(j, path, JSON_INDENT(2)) < 0 ? -EIO : 0;
        json_decref(j);
        return r;
}

/* Checks what vm_start() is asked for and finds the guest image. Returns 0 with the kernel's and
 * initramfs's paths in kernel and initrd, or a negative errno with the reason in err. */
static int vm_spec_check(const VmSpec *s, char *kernel, char *initrd, size_t len, char *err, size_t errlen) {
        int r;
        if (!name_is_valid(s->name)) {
                snprintf(err, errlen, "invalid VM name '%s': use 1-32 of A-Z a-z 0-9 _ . - (not starting with . or -)",
                         s->name ?: "");
                return -EINVAL;
        }
        if (s->memory < (UINT64_C(64) << 20) || s->memory > (UINT64_C(1) << 40) || s->memory % (UINT64_C(1) << 20)) {
                snprintf(err, errlen, "memory must be a whole number of MiB between 64 MiB and 1 TiB");
                return -EINVAL;
        }
        if (s->cpus < 1 || s->cpus > 64) {
                snprintf(err, errlen, "cpus must be between 1 and 64");
                return -EINVAL;
        }
        if (s->kernel && s->initrd) {
                if (strscpy(kernel, len, s->kernel) >= len || strscpy(initrd, len, s->initrd) >= len)
                        return -ENAMETOOLONG;
                if (access(kernel, R_OK) < 0 || access(initrd, R_OK) < 0) {
                        r = negative_errno();
                        snprintf(err, errlen, "guest image '%s' / '%s': %s", kernel, initrd, strerror(-r));
                        return r;
                }
        } else if ((r = vm_find_image(s->image_dir, kernel, initrd, len, err, errlen)) < 0)
                return r;
        if (s->accel && strcmp(s->accel, "kvm") != 0 && strcmp(s->accel, "tcg") != 0) {
                snprintf(err, errlen, "unknown accelerator '%s'", s->accel);
                return -EINVAL;
        }
        return 0;
}

/* Creates the VM's directory dir; if it exists, clears what a VM of that name that is gone left
 * there. Returns 0, -EEXIST if that VM still runs, or another negative errno, with err. */
static int vm_dir_make(const char *name, const char *dir, char *err, size_t errlen) {
        int r;
        if (mkdir(dir, 0700) >= 0)
                return 0;
        if (errno != EEXIST) {
                r = negative_errno();
                snprintf(err, errlen, "cannot create '%s': %s", dir, strerror(-r));
                return r;
        }
        char why[PATH_MAX + 256];
        r = fs_check_private_dir(dir, geteuid(), why, sizeof(why));
        if (r < 0) {
                snprintf(err, errlen, "VM '%s': %s", name, why);
                return r;
        }
        VmInfo old;
        if (vm_info(name, &old) >= 0 && (old.supervisor_alive || old.qemu_alive)) {
                snprintf(err, errlen, "VM '%s' is already running (QEMU pid %d)", name, (int) old.qemu_pid);
                return -EEXIST;
        }
        /* Left over from a VM that is gone: its processes are dead, clear it. */
        fs_rm_rf(dir);
        if (mkdir(dir, 0700) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot create '%s': %s", dir, strerror(-r));
                return r;
        }
        return 0;
}

/* Prepares the run root and creates the VM's directory in it. Returns 0 with its path in dir, or
 * a negative errno with err. */
static int vm_dir_create(const char *name, char *dir, size_t len, char *err, size_t errlen) {
        char root[PATH_MAX];
        int r;
        if ((r = vm_run_root(root, sizeof(root))) < 0 || (r = vm_dir(name, dir, len)) < 0) {
                snprintf(err, errlen, "run directory path too long");
                return r;
        }
        /* Clients connect by absolute path, and Unix socket paths are limited to 107 bytes. */
        if (strlen(dir) + strlen("/qmp-ctl.sock") >= sizeof(((struct sockaddr_un *) 0)->sun_path)) {
                snprintf(err, errlen,
                         "run directory '%s' is too long for Unix socket paths (set BALLAST_RUN_DIR to a shorter path)",
                         dir);
                return -ENAMETOOLONG;
        }
        if ((r = vm_run_root_prepare(root, sizeof(root), err, errlen)) < 0)
                return r;
        return vm_dir_make(name, dir, err, errlen);
}

/* Builds QEMU's command line for s into a (NULL-terminated; free with argv_done()). */
static void qemu_argv_build(Argv *a, const VmSpec *s, const char *kernel, const char *initrd, const char *accel) {
        argv_add(a, "%s", s->qemu_binary ?: "qemu-system-x86_64");
        argv_add(a, "-name");
        argv_add(a, "guest=ballast-%s", s->name);
        argv_add(a, "-M");
        argv_add(a, "q35");
        argv_add(a, "-accel");
        argv_add(a, "%s", accel);
        argv_add(a, "-cpu");
        argv_add(a, "%s", strcmp(accel, "kvm") == 0 ? "host" : "max");
        argv_add(a, "-m");
        argv_add(a, "%" PRIu64 "M", s->memory >> 20);
        argv_add(a, "-smp");
        argv_add(a, "%u", s->cpus);
        argv_add(a, "-nodefaults");
        argv_add(a, "-no-user-config");
        argv_add(a, "-display");
        argv_add(a, "none");
        argv_add(a, "-kernel");
        argv_add(a, "%s", kernel);
        argv_add(a, "-initrd");
        argv_add(a, "%s", initrd);
        argv_add(a, "-append");
        /* init_on_alloc=0: the guest would otherwise zero every page it hands to the balloon,
         * in emulated code: inflation is 4-8x faster without it under TCG. */
        argv_add(a, "console=ttyS0 quiet init_on_alloc=0%s%s", s->extra_cmdline ? " " : "", s->extra_cmdline ?: "");
        argv_add(a, "-serial");
        argv_add(a, "file:serial.log");
        argv_add(a, "-device");
        if (s->stats_period)
                argv_add(a,
                         "virtio-balloon-pci,id=balloon0,deflate-on-oom=%s,free-page-reporting=%s,guest-stats-polling-"
                         "interval=%u",
                         s->deflate_on_oom ? "on" : "off", s->free_page_reporting ? "on" : "off", s->stats_period);
        else
                argv_add(a, "virtio-balloon-pci,id=balloon0,deflate-on-oom=%s,free-page-reporting=%s",
                         s->deflate_on_oom ? "on" : "off", s->free_page_reporting ? "on" : "off");
        argv_add(a, "-qmp");
        argv_add(a, "unix:%s,server=on,wait=off", s->incoming ? "qmp-in.sock" : "qmp.sock");
        argv_add(a, "-qmp");
        argv_add(a, "unix:qmp-ctl.sock,server=on,wait=off");
        argv_add(a, "-chardev");
        argv_add(a, "socket,id=agent,path=agent.sock,server=on,wait=off");
        argv_add(a, "-device");
        argv_add(a, "virtio-serial-pci,id=vser0");
        argv_add(a, "-device");
        argv_add(a, "virtserialport,chardev=agent,name=org.ballast.agent");
        if (s->incoming) {
                argv_add(a, "-incoming");
                argv_add(a, "defer");
        }
        a->v[a->n] = NULL;
}

/* In the child of supervisor_spawn()'s fork: becomes the supervisor in dir (detached from the
 * caller unless s->foreground), with its output in supervisor.log. Does not return. */
static _Noreturn void supervisor_child(const VmSpec *s, const char *dir, char **argv, const int status[2],
                                       pid_t caller) {
        close(status[0]);
        if (s->foreground) {
                /* The caller stays the supervisor's parent: if it dies, even by SIGKILL, the
                 * supervisor gets SIGTERM and stops QEMU and cleans up as for 'vm stop'. */
                prctl(PR_SET_PDEATHSIG, SIGTERM);
                if (getppid() != caller || chdir(dir) < 0)
                        _exit(1);
        } else {
                /* Double fork: the supervisor is re-parented away from the caller, which
                 * may be a short-lived CLI, and never becomes its zombie. */
                if (setsid() < 0 || chdir(dir) < 0)
                        _exit(1);
                pid_t sup = fork();
                if (sup != 0)
                        _exit(sup < 0 ? 1 : 0);
        }
        int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
        int log = open("supervisor.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (devnull >= 0)
                dup2(devnull, STDIN_FILENO);
        if (log >= 0) {
                dup2(log, STDOUT_FILENO);
                dup2(log, STDERR_FILENO);
        }
        /* Close everything else the caller had open (but the status pipe). */
        for (int fd = 3; fd < 1024; fd++)
                if (fd != status[1])
                        close(fd);
        supervisor_main(argv, status[1], s->incoming);
}

/* Forks the supervisor, which runs QEMU with argv in dir. Returns the read end of the pipe the
 * supervisor reports on, or a negative errno with err. */
static int supervisor_spawn(const VmSpec *s, const char *dir, char **argv, char *err, size_t errlen) {
        int status[2], r;
        if (pipe2(status, O_CLOEXEC) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "pipe: %s", strerror(-r));
                return r;
        }
        fflush(NULL);
        pid_t caller = getpid();
        pid_t mid = fork();
        if (mid < 0) {
                r = negative_errno();
                close(status[0]);
                close(status[1]);
                snprintf(err, errlen, "fork: %s", strerror(-r));
                return r;
        }
        if (mid == 0)
                supervisor_child(s, dir, argv, status, caller);
        close(status[1]);
        if (!s->foreground)
                waitpid(mid, NULL, 0);
        return status[0];
}

/* Reads the supervisor's report from fd (and closes it): "ok PID" once QEMU runs, else "error
 * REASON". Returns 0, or -ECHILD with the reason in err. */
static int supervisor_report(int fd, char *err, size_t errlen) {
        char line[512] = "";
        FILE *f = fdopen(fd, "re");
        if (!f || !fgets(line, sizeof(line), f))
                snprintf(line, sizeof(line), "error the supervisor died before starting QEMU");
        if (f)
                fclose(f);
        else
                close(fd);
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "ok ", 3) != 0) {
                snprintf(err, errlen, "%s", strncmp(line, "error ", 6) == 0 ? line + 6 : line);
                return -ECHILD;
        }
        return 0;
}

int vm_start(const VmSpec *s, VmInfo *ret, char *err, size_t errlen) {
        char dir[PATH_MAX], kernel[PATH_MAX], initrd[PATH_MAX];
        int r = vm_spec_check(s, kernel, initrd, sizeof(kernel), err, errlen);
        if (r < 0)
                return r;
        r = vm_dir_create(s->name, dir, sizeof(dir), err, errlen);
        if (r < 0)
                return r;

        const char *accel = s->accel ?: (kvm_usable(s->qemu_binary ?: "qemu-system-x86_64", kernel) ? "kvm" : "tcg");
        r = write_vm_json(dir, s, kernel, initrd, accel);
        if (r < 0) {
                snprintf(err, errlen, "cannot write vm.json: %s", strerror(-r));
                fs_rm_rf(dir);
                return r;
        }

        Argv a = { 0 };
        qemu_argv_build(&a, s, kernel, initrd, accel);
        int fd = supervisor_spawn(s, dir, a.v, err, errlen);
        argv_done(&a);
        r = fd < 0 ? fd : supervisor_report(fd, err, errlen);
        if (r < 0) {
                fs_rm_rf(dir);
                return r;
        }
        if (ret)
                return vm_info(s->name, ret);
        return 0;
}

/* --- inspecting --- */

int vm_info(const char *name, VmInfo *ret) {
        VmInfo v = { 0 };
        char err[PATH_MAX + 512];
        int r = vm_dir_checked(name, v.dir, sizeof(v.dir), err, sizeof(err));
        if (r < 0)
                return r;
        strscpy(v.name, sizeof(v.name), name);

        char path[PATH_MAX + 64];
        snprintf(path, sizeof(path), "%s/vm.json", v.dir);
        json_t *j = json_load_file(path, 0, NULL);
        if (j) {
                json_t *m = json_object_get(j, "memory");
                if (json_is_integer(m) && json_integer_value(m) > 0)
                        v.memory = (uint64_t) json_integer_value(m);
                v.deflate_on_oom = json_is_true(json_object_get(j, "deflate_on_oom"));
                v.free_page_reporting = json_is_true(json_object_get(j, "free_page_reporting"));
                json_t *t = json_object_get(j, "started_realtime_us");
                if (json_is_integer(t) && json_integer_value(t) > 0)
                        v.started_realtime_us = (uint64_t) json_integer_value(t);
                const char *acc = json_string_value(json_object_get(j, "accel"));
                strscpy(v.accel, sizeof(v.accel), acc ?: "?");
                json_decref(j);
        }
        v.supervisor_pid = read_pid(v.dir, "supervisor.pid");
        v.qemu_pid = read_pid(v.dir, "qemu.pid");
        v.supervisor_alive = pid_is_ours(v.supervisor_pid, v.dir);
        v.qemu_alive = pid_is_ours(v.qemu_pid, v.dir);
        snprintf(path, sizeof(path), "%s/exit-status", v.dir);
        if (read_file_line(path, v.exit_status, sizeof(v.exit_status)) < 0)
                v.exit_status[0] = '\0';
        strscpy(v.state, sizeof(v.state), v.qemu_alive ? "running" : v.exit_status[0] ? "exited" : "stale");
        *ret = v;
        return 0;
}

static int cmp_info(const void *a, const void *b) {
        return strcmp(((const VmInfo *) a)->name, ((const VmInfo *) b)->name);
}

int vm_list(VmInfo **ret, size_t *ret_n) {
        char root[PATH_MAX];
        int r = vm_run_root(root, sizeof(root));
        if (r < 0)
                return r;
        VmInfo *list = NULL;
        size_t n = 0;
        char err[PATH_MAX + 512];
        r = run_root_check(root, err, sizeof(err));
        if (r < 0 && r != -ENOENT)
                return r;
        DIR *d = r < 0 ? NULL : opendir(root);
        if (d) {
                struct dirent *de;
                while ((de = readdir(d))) {
                        if (!name_is_valid(de->d_name))
                                continue;
                        VmInfo v;
                        if (vm_info(de->d_name, &v) < 0)
                                continue;
                        VmInfo *nl = realloc(list, (n + 1) * sizeof(VmInfo));
                        if (!nl) {
                                closedir(d);
                                free(list);
                                return -ENOMEM;
                        }
                        list = nl;
                        list[n++] = v;
                }
                closedir(d);
        }
        if (n > 1)
                qsort(list, n, sizeof(VmInfo), cmp_info);
        *ret = list;
        *ret_n = n;
        return 0;
}

/* --- stopping --- */

static int open_pidfd_if_ours(pid_t pid, const char *dir) {
        if (pid <= 0)
                return -ESRCH;
        int fd = pidfd_open(pid, 0);
        if (fd < 0)
                return negative_errno();
        /* Verify after opening: the pidfd pins this process, so the check cannot race a reuse. */
        if (!pid_is_ours(pid, dir)) {
                close(fd);
                return -ESRCH;
        }
        return fd;
}

static int terminate(int pidfd, usec_t grace) {
        if (wait_pidfd(pidfd, 0) == 0)
                return 0;
        pidfd_send_signal(pidfd, SIGTERM, NULL, 0);
        if (wait_pidfd(pidfd, grace) == 0)
                return 0;
        pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
        return wait_pidfd(pidfd, 10 * USEC_PER_SEC);
}

int vm_stop(const char *name, usec_t grace, char *err, size_t errlen) {
        VmInfo v;
        char dir[PATH_MAX];
        int r = vm_dir_checked(name, dir, sizeof(dir), err, errlen);
        if (r < 0 && r != -ENOENT)
                return r;
        if (r >= 0)
                r = vm_info(name, &v);
        if (r < 0) {
                snprintf(err, errlen, "no VM named '%s'", name);
                return -ENOENT;
        }

        _cleanup_close_ int sup = open_pidfd_if_ours(v.supervisor_pid, v.dir);
        _cleanup_close_ int qemu = open_pidfd_if_ours(v.qemu_pid, v.dir);

        /* The supervisor does SIGTERM → SIGKILL itself and removes the directory once QEMU is
         * gone; give it that chance first, then do it ourselves. */
        if (sup >= 0 && terminate(sup, usec_add(grace, 5 * USEC_PER_SEC)) < 0) {
                snprintf(err, errlen, "supervisor pid %d of VM '%s' did not exit", (int) v.supervisor_pid, name);
                return -ETIMEDOUT;
        }
        if (qemu >= 0 && terminate(qemu, grace) < 0) {
                snprintf(err, errlen, "QEMU pid %d of VM '%s' did not exit after SIGKILL", (int) v.qemu_pid, name);
                return -ETIMEDOUT;
        }
        r = fs_rm_rf(v.dir);
        if (r < 0) {
                snprintf(err, errlen, "cannot remove '%s': %s", v.dir, strerror(-r));
                return r;
        }
        return 0;
}

int proc_rss(pid_t pid, uint64_t *ret) {
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%d/status", (int) pid);
        FILE *f = fopen(path, "re");
        if (!f)
                return negative_errno();
        int r = -ENODATA;
        while (fgets(line, sizeof(line), f)) {
                unsigned long long kb;
                if (sscanf(line, "VmRSS: %llu kB", &kb) == 1) {
                        *ret = (uint64_t) kb * 1024;
                        r = 0;
                        break;
                }
        }
        fclose(f);
        return r;
}

/* --- snapshot and restore --- */

/* A synchronous QMP client for the launcher's own short exchanges (pause, migrate, resume); the
 * driver in hv/qmp.c is asynchronous and speaks only the balloon. Every call has a deadline. */
typedef struct QmpSync {
        int fd;
        uint64_t next_id;
        size_t len;
        char *buf; /* QMP_MAX_MESSAGE bytes */
} QmpSync;

#define SNAPSHOT_FDNAME "ballast-snapshot"

static void qsync_close(QmpSync *q) {
        q->fd = safe_close(q->fd);
        free(q->buf);
        q->buf = NULL;
}

/* The next message; events and foreign replies are the caller's to skip. */
static int qsync_read(QmpSync *q, usec_t deadline, QmpMsg *ret, char *err, size_t errlen) {
        for (;;) {
                size_t line_len, consumed;
                int r = qmp_next_line(q->buf, q->len, QMP_MAX_MESSAGE, &line_len, &consumed);
                if (r < 0) {
                        snprintf(err, errlen, "QMP message over %zu bytes", QMP_MAX_MESSAGE);
                        return r;
                }
                if (r > 0 && line_len > 0) {
                        qmp_clamp_big_ints(q->buf, line_len);
                        r = qmp_msg_parse(q->buf, line_len, ret, err, errlen);
                        memmove(q->buf, q->buf + consumed, q->len - consumed);
                        q->len -= consumed;
                        return r;
                }
                if (r > 0) {
                        memmove(q->buf, q->buf + consumed, q->len - consumed);
                        q->len -= consumed;
                        continue;
                }
                struct pollfd p = { .fd = q->fd, .events = POLLIN };
                int t = usec_to_poll_timeout(deadline, now_mono());
                if (t == 0) {
                        snprintf(err, errlen, "QEMU did not answer on QMP in time");
                        return -ETIMEDOUT;
                }
                if (poll(&p, 1, t) < 0 && errno != EINTR)
                        return negative_errno();
                ssize_t k = read(q->fd, q->buf + q->len, QMP_MAX_MESSAGE - q->len);
                if (k < 0 && (errno == EINTR || errno == EAGAIN))
                        continue;
                if (k <= 0) {
                        snprintf(err, errlen, "QEMU closed its QMP connection");
                        return -ECONNRESET;
                }
                q->len += (size_t) k;
        }
}

/* Sends a command, with pass_fd (when ≥ 0) as SCM_RIGHTS for getfd, and waits for its answer.
 * Returns 0 with the "return" value in *ret (owned; may be NULL), -EREMOTEIO with QEMU's error in
 * err, or another negative errno. */
static int qsync_call(QmpSync *q, const char *cmd, json_t *args, int pass_fd, usec_t deadline, json_t **ret, char *err,
                      size_t errlen) {
        uint64_t id = q->next_id++;
        _cleanup_free_ char *line = qmp_format_command(cmd, args, id);
        if (!line)
                return -ENOMEM;
        size_t n = strlen(line), off = 0;
        while (off < n) {
                union {
                        struct cmsghdr h;
                        char buf[CMSG_SPACE(sizeof(int))];
                } ctl = { 0 };
                struct iovec iov = { .iov_base = line + off, .iov_len = n - off };
                struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
                if (pass_fd >= 0 && off == 0) {
                        mh.msg_control = ctl.buf;
                        mh.msg_controllen = sizeof ctl.buf;
                        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                        c->cmsg_level = SOL_SOCKET;
                        c->cmsg_type = SCM_RIGHTS;
                        c->cmsg_len = CMSG_LEN(sizeof(int));
                        memcpy(CMSG_DATA(c), &pass_fd, sizeof(int));
                }
                ssize_t k = sendmsg(q->fd, &mh, MSG_NOSIGNAL);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && errno == EAGAIN) {
                        struct pollfd p = { .fd = q->fd, .events = POLLOUT };
                        int t = usec_to_poll_timeout(deadline, now_mono());
                        if (t == 0) {
                                snprintf(err, errlen, "QEMU did not take the %s command in time", cmd);
                                return -ETIMEDOUT;
                        }
                        (void) poll(&p, 1, t);
                        continue;
                }
                if (k < 0) {
                        int r = negative_errno();
                        snprintf(err, errlen, "sending %s to QEMU: %s", cmd, strerror(-r));
                        return r;
                }
                off += (size_t) k;
        }
        for (;;) {
                QmpMsg m;
                int r = qsync_read(q, deadline, &m, err, errlen);
                if (r < 0)
                        return r;
                bool ours = m.id_is_ours && m.id == id;
                if (ours && m.type == QMP_MSG_RETURN) {
                        if (ret)
                                *ret = json_incref(m.value);
                        qmp_msg_done(&m);
                        return 0;
                }
                if (ours && m.type == QMP_MSG_ERROR) {
                        snprintf(err, errlen, "%s: %s", cmd, m.error_desc ?: m.error_class ?: "error");
                        qmp_msg_done(&m);
                        return -EREMOTEIO;
                }
                qmp_msg_done(&m); /* an event, or the answer to something else */
        }
}

/* Connects to a VM's QMP socket, waiting (until the deadline, while QEMU pid `watch` lives) for
 * QEMU to create it; checks that QEMU runs as us, reads the greeting, negotiates. */
static int qsync_open(QmpSync *q, const char *path, pid_t watch, usec_t deadline, char *err, size_t errlen) {
        *q = (QmpSync){ .fd = -EBADF, .next_id = 1 };
        int fd;
        for (;;) {
                fd = usock_connect(path, err, errlen);
                if (fd >= 0)
                        break;
                if (fd != -ENOENT && fd != -ECONNREFUSED && fd != -EAGAIN)
                        return fd;
                if (watch > 0 && kill(watch, 0) < 0) {
                        snprintf(err, errlen, "QEMU (pid %d) exited", (int) watch);
                        return -ECHILD;
                }
                if (now_mono() >= deadline)
                        return -ETIMEDOUT;
                (void) poll(NULL, 0, 10);
        }
        q->fd = fd;
        int r = usock_check_peer(fd, geteuid(), NULL, NULL, err, errlen);
        if (r < 0) {
                qsync_close(q);
                return r;
        }
        q->buf = malloc(QMP_MAX_MESSAGE);
        if (!q->buf) {
                qsync_close(q);
                return -ENOMEM;
        }
        QmpMsg m;
        r = qsync_read(q, deadline, &m, err, errlen);
        if (r == -ETIMEDOUT)
                snprintf(err, errlen, "no QMP greeting on %s (is another client holding it?)", path);
        if (r >= 0) {
                if (m.type != QMP_MSG_GREETING) {
                        snprintf(err, errlen, "%s does not start with a QMP greeting", path);
                        r = -EPROTO;
                }
                qmp_msg_done(&m);
        }
        if (r >= 0)
                r = qsync_call(q, "qmp_capabilities", NULL, -1, deadline, NULL, err, errlen);
        if (r < 0)
                qsync_close(q);
        return r;
}

static int qsync_open_vm(QmpSync *q, const VmInfo *v, usec_t deadline, char *err, size_t errlen) {
        char path[PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/qmp-ctl.sock", v->dir);
        char why[PATH_MAX + 512] = "";
        int r = qsync_open(q, path, v->qemu_pid, deadline, why, sizeof why);
        if (r < 0)
                snprintf(err, errlen, "VM '%s': QMP: %s", v->name, why[0] ? why : strerror(-r));
        return r;
}

static int qsync_status(QmpSync *q, usec_t deadline, char *buf, size_t len, char *err, size_t errlen) {
        json_t *v = NULL;
        int r = qsync_call(q, "query-status", NULL, -1, deadline, &v, err, errlen);
        if (r < 0)
                return r;
        strscpy(buf, len, json_string_value(json_object_get(v, "status")) ?: "?");
        json_decref(v);
        return 0;
}

/* Polls query-migrate until the migration ends (QEMU reports no more than that on either side).
 * Returns 0 once it completed, -EIO when it failed (QEMU's reason in err), -ETIMEDOUT. */
static int qsync_wait_migration(QmpSync *q, usec_t deadline, char *err, size_t errlen) {
        for (;;) {
                json_t *v = NULL;
                int r = qsync_call(q, "query-migrate", NULL, -1, deadline, &v, err, errlen);
                if (r < 0)
                        return r;
                const char *st = json_string_value(json_object_get(v, "status")) ?: "";
                if (strcmp(st, "completed") == 0) {
                        json_decref(v);
                        return 0;
                }
                if (strcmp(st, "failed") == 0 || strcmp(st, "cancelled") == 0) {
                        snprintf(err, errlen, "migration %s: %s", st,
                                 json_string_value(json_object_get(v, "error-desc")) ?: "no reason given");
                        json_decref(v);
                        return -EIO;
                }
                json_decref(v);
                if (now_mono() >= deadline) {
                        snprintf(err, errlen, "the migration did not finish in time (status '%s')", st);
                        return -ETIMEDOUT;
                }
                (void) poll(NULL, 0, 10);
        }
}

static int write_all_at(int fd, const void *p, size_t n, off_t off) {
        while (n > 0) {
                ssize_t k = pwrite(fd, p, n, off);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return k < 0 ? negative_errno() : -EIO;
                p = (const char *) p + k;
                n -= (size_t) k;
                off += k;
        }
        return 0;
}

/* The header's configuration: what the QEMU command line is built from (vm.json), with the
 * statistics period QEMU has now (ballastd or 'balloon stats --period' may have changed it). */
static json_t *snapshot_config(const VmInfo *v, int64_t stats_period, uint64_t actual) {
        char path[PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/vm.json", v->dir);
        json_t *j = json_load_file(path, 0, NULL);
        if (!json_is_object(j)) {
                json_decref(j);
                return NULL;
        }
        const char *kernel = json_string_value(json_object_get(j, "kernel"));
        const char *initrd = json_string_value(json_object_get(j, "initrd"));
        const char *accel = json_string_value(json_object_get(j, "accel"));
        json_t *mem = json_object_get(j, "memory"), *cpus = json_object_get(j, "cpus");
        json_t *out = NULL;
        if (stats_period < 0) { /* QEMU did not say: what the VM was started with */
                json_t *p = json_object_get(j, "stats_period");
                stats_period = json_is_integer(p) ? json_integer_value(p) : 0;
        }
        if (kernel && initrd && accel && json_is_integer(mem) && json_is_integer(cpus))
                out = json_pack("{s:i,s:s,s:O,s:O,s:b,s:b,s:I,s:s,s:s,s:s,s:s,s:s,s:I,s:I}", "format", 1, "source",
                                v->name, "memory", mem, "cpus", cpus, "deflate_on_oom",
                                json_is_true(json_object_get(j, "deflate_on_oom")), "free_page_reporting",
                                json_is_true(json_object_get(j, "free_page_reporting")), "stats_period",
                                (json_int_t) stats_period, "kernel", kernel, "initrd", initrd, "append",
                                json_string_value(json_object_get(j, "append")) ?: "", "qemu",
                                json_string_value(json_object_get(j, "qemu")) ?: "qemu-system-x86_64", "accel", accel,
                                "balloon_actual", (json_int_t) actual, "created_realtime_us",
                                (json_int_t) now_usec(CLOCK_REALTIME));
        json_decref(j);
        return out;
}

static int fsync_parent(const char *file) {
        char dir[PATH_MAX];
        if (strscpy(dir, sizeof dir, file) >= sizeof dir)
                return -ENAMETOOLONG;
        char *slash = strrchr(dir, '/');
        if (!slash)
                strscpy(dir, sizeof dir, ".");
        else if (slash == dir)
                dir[1] = '\0';
        else
                *slash = '\0';
        _cleanup_close_ int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd < 0 || fsync(fd) < 0)
                return negative_errno();
        return 0;
}

/* Finds the running VM name and connects to its QMP control socket. Returns 0, or a negative
 * errno with err. */
static int snapshot_connect(const char *name, usec_t deadline, VmInfo *v, QmpSync *q, char *err, size_t errlen) {
        int r = vm_info(name, v);
        if (r < 0) {
                snprintf(err, errlen, r == -ENOENT ? "no VM named '%s'" : "VM '%s': %s", name, strerror(-r));
                return r;
        }
        if (!v->qemu_alive) {
                snprintf(err, errlen, "VM '%s' is not running (%s)", name, v->state);
                return -ESRCH;
        }
        return qsync_open_vm(q, v, deadline, err, errlen);
}

/* Asks QEMU for its run state (into status), its statistics period (-1 if it does not say) and the
 * balloon's actual size (0 if it does not say). Returns 0, -EBUSY if the VM cannot be saved as it
 * is, or another negative errno, with err. */
static int snapshot_query(QmpSync *q, const char *name, usec_t deadline, char *status, size_t len, int64_t *period,
                          uint64_t *actual, char *err, size_t errlen) {
        json_t *val = NULL;
        int r = qsync_status(q, deadline, status, len, err, errlen);
        if (r >= 0 && qsync_call(q, "qom-get",
                                 json_pack("{s:s,s:s}", "path", "/machine/peripheral/balloon0", "property",
                                           "guest-stats-polling-interval"),
                                 -1, deadline, &val, err, errlen) >= 0) {
                *period = json_is_integer(val) ? json_integer_value(val) : -1;
                json_decref(val);
        }
        if (r >= 0 && qsync_call(q, "query-balloon", NULL, -1, deadline, &val, err, errlen) >= 0) {
                json_t *a = json_object_get(val, "actual");
                *actual = json_is_integer(a) ? (uint64_t) json_integer_value(a) : 0;
                json_decref(val);
        }
        if (r >= 0 && strcmp(status, "postmigrate") == 0) {
                /* QEMU will not migrate a guest its last migration paused. */
                snprintf(err, errlen,
                         "VM '%s' is paused after a snapshot and QEMU cannot save it again as it is: "
                         "run it ('ballastctl vm resume %s') first, or use the snapshot it has",
                         name, name);
                r = -EBUSY;
        }
        return r;
}

/* The configuration text for the snapshot's header. Returns 0 with it (owned) in ret, or a
 * negative errno with err. */
static int snapshot_header_text(const VmInfo *v, const char *name, int64_t period, uint64_t actual, char **ret,
                                char *err, size_t errlen) {
        json_t *cfg = snapshot_config(v, period, actual);
        _cleanup_free_ char *text = cfg ? json_dumps(cfg, JSON_COMPACT) : NULL;
        json_decref(cfg);
        if (!text) {
                snprintf(err, errlen, "VM '%s': cannot read its configuration (%s/vm.json)", name, v->dir);
                return -EBADMSG;
        }
        if (strlen(VM_SNAPSHOT_MAGIC) + strlen(text) + 1 >= VM_SNAPSHOT_HEADER) {
                snprintf(err, errlen, "VM '%s': its configuration does not fit a snapshot header", name);
                return -E2BIG;
        }
        *ret = TAKE_PTR(text);
        return 0;
}

/* Creates the temporary file the snapshot is written to, next to file (its path into tmp). Returns
 * its fd, or a negative errno with err. */
static int snapshot_mktemp(const char *file, char *tmp, size_t len, char *err, size_t errlen) {
        if (snprintf(tmp, len, "%s.XXXXXX", file) >= (int) len) {
                snprintf(err, errlen, "snapshot path too long");
                return -ENAMETOOLONG;
        }
        int fd = mkostemp(tmp, O_CLOEXEC);
        if (fd < 0) {
                int r = negative_errno();
                snprintf(err, errlen, "cannot create '%s': %s", tmp, strerror(-r));
                return r;
        }
        return fd;
}

/* Writes the header (magic, configuration text, zero padding) to fd (the file tmp) and leaves the
 * offset after it, where QEMU's stream goes. Returns 0, or a negative errno with err. */
static int snapshot_write_header(int fd, const char *tmp, const char *text, char *err, size_t errlen) {
        size_t magic = strlen(VM_SNAPSHOT_MAGIC), tl = strlen(text);
        _cleanup_free_ char *hdr = calloc(1, VM_SNAPSHOT_HEADER);
        if (!hdr)
                return -ENOMEM;
        memcpy(hdr, VM_SNAPSHOT_MAGIC, magic);
        memcpy(hdr + magic, text, tl);
        hdr[magic + tl] = '\n';
        int r = write_all_at(fd, hdr, VM_SNAPSHOT_HEADER, 0);
        if (r >= 0 && lseek(fd, (off_t) VM_SNAPSHOT_HEADER, SEEK_SET) < 0)
                r = negative_errno();
        if (r < 0)
                snprintf(err, errlen, "writing '%s': %s", tmp, strerror(-r));
        return r;
}

/* Has QEMU stream the guest (paused first if it ran) into fd and waits for the end of it; cancels
 * the migration if it does not finish in time. Returns 0, or a negative errno with err. */
static int snapshot_migrate(QmpSync *q, int fd, bool was_running, usec_t deadline, char *err, size_t errlen) {
        int r = 0;
        /* Paused first: the stream is then one pass over a still guest, and what it holds is the
         * guest at one instant (the balloon's state with it). */
        if (was_running)
                r = qsync_call(q, "stop", NULL, -1, deadline, NULL, err, errlen);
        /* QEMU's default migration bandwidth (32 MiB/s) is for links, not for a local file. */
        if (r >= 0)
                r = qsync_call(q, "migrate-set-parameters", json_pack("{s:I}", "max-bandwidth", (json_int_t) 1 << 40),
                               -1, deadline, NULL, err, errlen);
        if (r >= 0)
                r = qsync_call(q, "getfd", json_pack("{s:s}", "fdname", SNAPSHOT_FDNAME), fd, deadline, NULL, err,
                               errlen);
        if (r >= 0)
                r = qsync_call(q, "migrate", json_pack("{s:s}", "uri", "fd:" SNAPSHOT_FDNAME), -1, deadline, NULL, err,
                               errlen);
        if (r >= 0) {
                r = qsync_wait_migration(q, deadline, err, errlen);
                if (r == -ETIMEDOUT) {
                        char e2[256];
                        (void) qsync_call(q, "migrate_cancel", NULL, -1, usec_add(now_mono(), 5 * USEC_PER_SEC), NULL,
                                          e2, sizeof e2);
                }
        }
        return r;
}

int vm_snapshot(const char *name, const char *file, usec_t timeout, VmSnapshotResult *ret, char *err, size_t errlen) {
        usec_t t0 = now_mono(), deadline = usec_add(t0, timeout);
        VmInfo v;
        QmpSync q;
        int r = snapshot_connect(name, deadline, &v, &q, err, errlen);
        if (r < 0)
                return r;

        char status[32], tmp[PATH_MAX];
        int64_t period = -1;
        uint64_t actual = 0;
        _cleanup_free_ char *text = NULL;
        _cleanup_close_ int fd = -EBADF;
        r = snapshot_query(&q, name, deadline, status, sizeof status, &period, &actual, err, errlen);
        if (r >= 0)
                r = snapshot_header_text(&v, name, period, actual, &text, err, errlen);
        /* Written next to the destination and renamed once complete. */
        if (r >= 0)
                r = fd = snapshot_mktemp(file, tmp, sizeof tmp, err, errlen);
        if (r < 0) {
                qsync_close(&q);
                return r;
        }
        r = snapshot_write_header(fd, tmp, text, err, errlen);
        bool was_running = strcmp(status, "running") == 0;
        if (r >= 0)
                r = snapshot_migrate(&q, fd, was_running, deadline, err, errlen);
        struct stat st = { 0 };
        if (r >= 0 && (fsync(fd) < 0 || fstat(fd, &st) < 0 || rename(tmp, file) < 0)) {
                r = negative_errno();
                snprintf(err, errlen, "saving '%s': %s", file, strerror(-r));
        }
        if (r < 0) {
                (void) unlink(tmp);
                if (was_running) {
                        char e2[256];
                        (void) qsync_call(&q, "cont", NULL, -1, usec_add(now_mono(), 5 * USEC_PER_SEC), NULL, e2,
                                          sizeof e2);
                }
                qsync_close(&q);
                return r;
        }
        qsync_close(&q);
        (void) fsync_parent(file);
        if (ret)
                *ret = (VmSnapshotResult){
                        .bytes = (uint64_t) st.st_size,
                        .balloon_actual = actual,
                        .duration = now_mono() - t0,
                };
        return 0;
}

int vm_resume(const char *name, usec_t timeout, char *err, size_t errlen) {
        usec_t deadline = usec_add(now_mono(), timeout);
        VmInfo v;
        int r = vm_info(name, &v);
        if (r < 0 || !v.qemu_alive) {
                snprintf(err, errlen, r < 0 ? "no VM named '%s'" : "VM '%s' is not running", name);
                return r < 0 ? r : -ESRCH;
        }
        QmpSync q;
        r = qsync_open_vm(&q, &v, deadline, err, errlen);
        if (r < 0)
                return r;
        r = qsync_call(&q, "cont", NULL, -1, deadline, NULL, err, errlen);
        qsync_close(&q);
        return r;
}

/* Reads and checks a snapshot's header; returns its configuration (owned) or NULL with err. */
static json_t *snapshot_read_header(int fd, const char *file, char *err, size_t errlen) {
        _cleanup_free_ char *hdr = malloc(VM_SNAPSHOT_HEADER + 1);
        if (!hdr) {
                snprintf(err, errlen, "out of memory");
                return NULL;
        }
        size_t got = 0;
        while (got < VM_SNAPSHOT_HEADER) {
                ssize_t k = pread(fd, hdr + got, VM_SNAPSHOT_HEADER - got, (off_t) got);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0) {
                        snprintf(err, errlen, "reading '%s': %s", file, strerror(errno));
                        return NULL;
                }
                if (k == 0)
                        break;
                got += (size_t) k;
        }
        hdr[got] = '\0';
        size_t magic = strlen(VM_SNAPSHOT_MAGIC);
        if (got < VM_SNAPSHOT_HEADER || memcmp(hdr, VM_SNAPSHOT_MAGIC, magic) != 0) {
                snprintf(err, errlen, "'%s' is not a ballast snapshot (made by 'ballastctl vm snapshot')", file);
                return NULL;
        }
        size_t len = strcspn(hdr + magic, "\n");
        json_error_t je;
        json_t *j = json_loadb(hdr + magic, len, 0, &je);
        if (!json_is_object(j)) {
                json_decref(j);
                snprintf(err, errlen, "'%s': damaged snapshot header (%s)", file, je.text);
                return NULL;
        }
        return j;
}

static void log_tail(const char *dir, const char *file, char *buf, size_t len) {
        char path[PATH_MAX + 64];
        snprintf(path, sizeof path, "%s/%s", dir, file);
        buf[0] = '\0';
        FILE *f = fopen(path, "re");
        if (!f)
                return;
        if (fseek(f, -(long) (len - 1), SEEK_END) < 0)
                rewind(f);
        size_t n = fread(buf, 1, len - 1, f);
        buf[n] = '\0';
        fclose(f);
        while (n > 0 && buf[n - 1] == '\n')
                buf[--n] = '\0';
}

int vm_restore(const char *name, const char *file, const char *image_dir, usec_t timeout, VmInfo *ret, char *err,
               size_t errlen) {
        usec_t deadline = usec_add(now_mono(), timeout);
        _cleanup_close_ int fd = open(file, O_RDONLY | O_CLOEXEC);
        if (fd < 0) {
                int r = negative_errno();
                snprintf(err, errlen, "cannot open snapshot '%s': %s", file, strerror(-r));
                return r;
        }
        json_t *cfg = snapshot_read_header(fd, file, err, errlen);
        if (!cfg)
                return -EINVAL;
        VmSpec s;
        vm_spec_init(&s);
        json_t *mem = json_object_get(cfg, "memory"), *cpus = json_object_get(cfg, "cpus"),
               *period = json_object_get(cfg, "stats_period");
        s.name = name;
        s.kernel = json_string_value(json_object_get(cfg, "kernel"));
        s.initrd = json_string_value(json_object_get(cfg, "initrd"));
        s.accel = json_string_value(json_object_get(cfg, "accel"));
        s.qemu_binary = json_string_value(json_object_get(cfg, "qemu"));
        s.extra_cmdline = json_string_value(json_object_get(cfg, "append"));
        if (s.extra_cmdline && !*s.extra_cmdline)
                s.extra_cmdline = NULL;
        s.deflate_on_oom = json_is_true(json_object_get(cfg, "deflate_on_oom"));
        s.free_page_reporting = json_is_true(json_object_get(cfg, "free_page_reporting"));
        s.incoming = true;
        if (!s.kernel || !s.initrd || !s.accel || !s.qemu_binary || !json_is_integer(mem) ||
            json_integer_value(mem) <= 0 || !json_is_integer(cpus) || json_integer_value(cpus) < 1 ||
            json_integer_value(cpus) > 64 || !json_is_integer(period) || json_integer_value(period) < 0 ||
            json_integer_value(period) > UINT32_MAX) {
                json_decref(cfg);
                snprintf(err, errlen, "'%s': the snapshot header lacks the machine's configuration", file);
                return -EINVAL;
        }
        s.memory = (uint64_t) json_integer_value(mem);
        s.cpus = (unsigned) json_integer_value(cpus);
        s.stats_period = (uint32_t) json_integer_value(period);
        char kernel[PATH_MAX], initrd[PATH_MAX], real[PATH_MAX];
        if (image_dir) {
                int r = vm_find_image(image_dir, kernel, initrd, sizeof kernel, err, errlen);
                if (r < 0) {
                        json_decref(cfg);
                        return r;
                }
                s.kernel = kernel;
                s.initrd = initrd;
        }
        s.restored_from = realpath(file, real) ? real : file;

        VmInfo info;
        int r = vm_start(&s, &info, err, errlen);
        json_decref(cfg); /* the strings in s are not used past vm_start() */
        if (r < 0)
                return r;

        QmpSync q;
        r = qsync_open_vm(&q, &info, deadline, err, errlen);
        if (r >= 0) {
                if (lseek(fd, (off_t) VM_SNAPSHOT_HEADER, SEEK_SET) < 0) {
                        r = negative_errno();
                        snprintf(err, errlen, "seeking in '%s': %s", file, strerror(-r));
                }
                if (r >= 0)
                        r = qsync_call(&q, "getfd", json_pack("{s:s}", "fdname", SNAPSHOT_FDNAME), fd, deadline, NULL,
                                       err, errlen);
                if (r >= 0)
                        r = qsync_call(&q, "migrate-incoming", json_pack("{s:s}", "uri", "fd:" SNAPSHOT_FDNAME), -1,
                                       deadline, NULL, err, errlen);
                if (r >= 0)
                        r = qsync_wait_migration(&q, deadline, err, errlen);
                if (r >= 0)
                        r = qsync_call(&q, "cont", NULL, -1, deadline, NULL, err, errlen);
                qsync_close(&q);
        }
        /* Only now may ballastd (or anyone using qmp.sock) see the VM: a balloon command sent while
         * the stream loads would be overwritten by the device state it carries. */
        char from[PATH_MAX + 64], to[PATH_MAX + 64];
        snprintf(from, sizeof from, "%s/qmp-in.sock", info.dir);
        snprintf(to, sizeof to, "%s/qmp.sock", info.dir);
        if (r >= 0 && rename(from, to) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "renaming '%s': %s", from, strerror(-r));
        }
        if (r < 0) {
                /* QEMU exits when a stream does not load: its own words say why. */
                char tail[512], e2[256];
                log_tail(info.dir, "qemu.log", tail, sizeof tail);
                if (tail[0]) {
                        size_t n = strlen(err);
                        snprintf(err + n, errlen - n, "; qemu.log: %s", tail);
                }
                (void) vm_stop(name, 5 * USEC_PER_SEC, e2, sizeof e2);
                return r;
        }
        if (ret)
                return vm_info(name, ret);
        return 0;
}
