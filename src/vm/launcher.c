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
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "shared/fs-util.h"
#include "shared/macro.h"
#include "shared/strutil.h"

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

/* Creates path and its missing parents with `mode`. */
static int mkdir_p(const char *path, mode_t mode) {
        char tmp[PATH_MAX];
        if (strscpy(tmp, sizeof(tmp), path) >= sizeof(tmp))
                return -ENAMETOOLONG;
        for (char *p = tmp + 1; *p; p++)
                if (*p == '/') {
                        *p = '\0';
                        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
                                return negative_errno();
                        *p = '/';
                }
        if (mkdir(tmp, mode) < 0 && errno != EEXIST)
                return negative_errno();
        return 0;
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

static _Noreturn void supervisor_main(char **argv, int status_fd) {
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGHUP);
        sigaddset(&mask, SIGCHLD);
        sigprocmask(SIG_BLOCK, &mask, NULL);
        int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);

        char buf[64];
        snprintf(buf, sizeof(buf), "%d\n", (int) getpid());
        write_file("supervisor.pid", buf);

        int errpipe[2];
        if (sfd < 0 || pipe2(errpipe, O_CLOEXEC) < 0) {
                dprintf(status_fd, "error cannot set up the supervisor: %s\n", strerror(errno));
                _exit(1);
        }
        pid_t me = getpid();
        pid_t qpid = fork();
        if (qpid < 0) {
                dprintf(status_fd, "error fork: %s\n", strerror(errno));
                _exit(1);
        }
        if (qpid == 0) {
                /* QEMU dies with the supervisor, whatever kills it (B3.2). */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                if (getppid() != me)
                        _exit(1);
                sigset_t none;
                sigemptyset(&none);
                sigprocmask(SIG_SETMASK, &none, NULL);
                signal(SIGPIPE, SIG_DFL);
                int log = open("qemu.log", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
                if (log >= 0) {
                        dup2(log, STDOUT_FILENO);
                        dup2(log, STDERR_FILENO);
                }
                execvp(argv[0], argv);
                int e = errno;
                (void) !write(errpipe[1], &e, sizeof(e));
                _exit(127);
        }
        close(errpipe[1]);
        int e = 0;
        if (read(errpipe[0], &e, sizeof(e)) == (ssize_t) sizeof(e)) {
                dprintf(status_fd, "error cannot run %s: %s\n", argv[0], strerror(e));
                waitpid(qpid, NULL, 0);
                _exit(1);
        }
        close(errpipe[0]);

        snprintf(buf, sizeof(buf), "%d\n", (int) qpid);
        write_file("qemu.pid", buf);
        int pidfd = pidfd_open(qpid, 0);
        dprintf(status_fd, "ok %d\n", (int) qpid);
        close(status_fd);
        fprintf(stderr, "supervisor %d: QEMU pid %d started\n", (int) me, (int) qpid);

        for (;;) {
                struct pollfd p[2] = { { .fd = sfd, .events = POLLIN }, { .fd = pidfd, .events = POLLIN } };
                if (poll(p, 2, -1) < 0 && errno != EINTR)
                        break;
                if (p[1].revents) {
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
                if (p[0].revents) {
                        struct signalfd_siginfo si;
                        bool stop = false;
                        while (read(sfd, &si, sizeof(si)) == (ssize_t) sizeof(si))
                                if (si.ssi_signo != SIGCHLD)
                                        stop = true;
                        if (!stop)
                                continue;
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

static int write_vm_json(const char *dir, const VmSpec *s, const char *kernel, const char *initrd, const char *accel) {
        json_t *j = json_pack("{s:s,s:I,s:i,s:b,s:b,s:i,s:s,s:s,s:s,s:I}", "name", s->name, "memory",
                              (json_int_t) s->memory, "cpus", (int) s->cpus, "deflate_on_oom", s->deflate_on_oom,
                              "free_page_reporting", s->free_page_reporting, "stats_period", (int) s->stats_period,
                              "kernel", kernel, "initrd", initrd, "accel", accel, "started_realtime_us",
                              (json_int_t) now_usec(CLOCK_REALTIME));
        if (!j)
                return -ENOMEM;
        char path[PATH_MAX + 64];
        snprintf(path, sizeof(path), "%s/vm.json", dir);
        int r = json_dump_file(j, path, JSON_INDENT(2)) < 0 ? -EIO : 0;
        json_decref(j);
        return r;
}

int vm_start(const VmSpec *s, VmInfo *ret, char *err, size_t errlen) {
        char dir[PATH_MAX], root[PATH_MAX], kernel[PATH_MAX], initrd[PATH_MAX];
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
        r = vm_find_image(s->image_dir, kernel, initrd, sizeof(kernel), err, errlen);
        if (r < 0)
                return r;
        if ((r = vm_run_root(root, sizeof(root))) < 0 || (r = vm_dir(s->name, dir, sizeof(dir))) < 0) {
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
        /* A user's run root (and whatever of its path we create) is private: /tmp/ballast-UID is
         * in a world-writable directory. root's /run/ballast stays readable as before. */
        r = mkdir_p(root, geteuid() == 0 ? 0755 : 0700);
        if (r < 0) {
                snprintf(err, errlen, "cannot create '%s': %s", root, strerror(-r));
                return r;
        }
        /* Checked after creating it: someone else may have made it first. */
        r = run_root_check(root, err, errlen);
        if (r < 0) {
                if (r == -ENOENT)
                        snprintf(err, errlen, "run directory '%s' vanished while starting", root);
                return r;
        }
        if (mkdir(dir, 0700) < 0) {
                if (errno != EEXIST) {
                        r = negative_errno();
                        snprintf(err, errlen, "cannot create '%s': %s", dir, strerror(-r));
                        return r;
                }
                char why[PATH_MAX + 256];
                r = fs_check_private_dir(dir, geteuid(), why, sizeof(why));
                if (r < 0) {
                        snprintf(err, errlen, "VM '%s': %s", s->name, why);
                        return r;
                }
                VmInfo old;
                if (vm_info(s->name, &old) >= 0 && (old.supervisor_alive || old.qemu_alive)) {
                        snprintf(err, errlen, "VM '%s' is already running (QEMU pid %d)", s->name, (int) old.qemu_pid);
                        return -EEXIST;
                }
                /* Left over from a VM that is gone: its processes are dead, clear it. */
                fs_rm_rf(dir);
                if (mkdir(dir, 0700) < 0) {
                        r = negative_errno();
                        snprintf(err, errlen, "cannot create '%s': %s", dir, strerror(-r));
                        return r;
                }
        }

        const char *accel = kvm_usable(s->qemu_binary ?: "qemu-system-x86_64", kernel) ? "kvm" : "tcg";
        r = write_vm_json(dir, s, kernel, initrd, accel);
        if (r < 0) {
                snprintf(err, errlen, "cannot write vm.json: %s", strerror(-r));
                fs_rm_rf(dir);
                return r;
        }

        Argv a = { 0 };
        argv_add(&a, "%s", s->qemu_binary ?: "qemu-system-x86_64");
        argv_add(&a, "-name");
        argv_add(&a, "guest=ballast-%s", s->name);
        argv_add(&a, "-M");
        argv_add(&a, "q35");
        argv_add(&a, "-accel");
        argv_add(&a, "%s", accel);
        argv_add(&a, "-cpu");
        argv_add(&a, "%s", strcmp(accel, "kvm") == 0 ? "host" : "max");
        argv_add(&a, "-m");
        argv_add(&a, "%" PRIu64 "M", s->memory >> 20);
        argv_add(&a, "-smp");
        argv_add(&a, "%u", s->cpus);
        argv_add(&a, "-nodefaults");
        argv_add(&a, "-no-user-config");
        argv_add(&a, "-display");
        argv_add(&a, "none");
        argv_add(&a, "-kernel");
        argv_add(&a, "%s", kernel);
        argv_add(&a, "-initrd");
        argv_add(&a, "%s", initrd);
        argv_add(&a, "-append");
        /* init_on_alloc=0: the guest would otherwise zero every page it hands to the balloon,
         * in emulated code: inflation is 4-8x faster without it under TCG. */
        argv_add(&a, "console=ttyS0 quiet init_on_alloc=0%s%s", s->extra_cmdline ? " " : "", s->extra_cmdline ?: "");
        argv_add(&a, "-serial");
        argv_add(&a, "file:serial.log");
        argv_add(&a, "-device");
        if (s->stats_period)
                argv_add(&a,
                         "virtio-balloon-pci,id=balloon0,deflate-on-oom=%s,free-page-reporting=%s,guest-stats-polling-"
                         "interval=%u",
                         s->deflate_on_oom ? "on" : "off", s->free_page_reporting ? "on" : "off", s->stats_period);
        else
                argv_add(&a, "virtio-balloon-pci,id=balloon0,deflate-on-oom=%s,free-page-reporting=%s",
                         s->deflate_on_oom ? "on" : "off", s->free_page_reporting ? "on" : "off");
        argv_add(&a, "-qmp");
        argv_add(&a, "unix:qmp.sock,server=on,wait=off");
        argv_add(&a, "-qmp");
        argv_add(&a, "unix:qmp-ctl.sock,server=on,wait=off");
        argv_add(&a, "-chardev");
        argv_add(&a, "socket,id=agent,path=agent.sock,server=on,wait=off");
        argv_add(&a, "-device");
        argv_add(&a, "virtio-serial-pci,id=vser0");
        argv_add(&a, "-device");
        argv_add(&a, "virtserialport,chardev=agent,name=org.ballast.agent");
        a.v[a.n] = NULL;

        int status[2];
        if (pipe2(status, O_CLOEXEC) < 0) {
                r = negative_errno();
                argv_done(&a);
                fs_rm_rf(dir);
                snprintf(err, errlen, "pipe: %s", strerror(-r));
                return r;
        }
        fflush(NULL);
        pid_t caller = getpid();
        pid_t mid = fork();
        if (mid < 0) {
                r = negative_errno();
                argv_done(&a);
                close(status[0]);
                close(status[1]);
                fs_rm_rf(dir);
                snprintf(err, errlen, "fork: %s", strerror(-r));
                return r;
        }
        if (mid == 0) {
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
                supervisor_main(a.v, status[1]);
        }
        argv_done(&a);
        close(status[1]);
        if (!s->foreground)
                waitpid(mid, NULL, 0);

        char line[512] = "";
        FILE *f = fdopen(status[0], "re");
        if (!f || !fgets(line, sizeof(line), f))
                snprintf(line, sizeof(line), "error the supervisor died before starting QEMU");
        if (f)
                fclose(f);
        else
                close(status[0]);
        line[strcspn(line, "\n")] = '\0';
        if (strncmp(line, "ok ", 3) != 0) {
                snprintf(err, errlen, "%s", strncmp(line, "error ", 6) == 0 ? line + 6 : line);
                fs_rm_rf(dir);
                return -ECHILD;
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
