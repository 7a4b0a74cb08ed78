/* SPDX-License-Identifier: MIT */
/* ballast-agent: guest setup (mounts, modules, zram swap, sysctls) and the
 * read-only status replies (ping, meminfo). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/swap.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define LOAD_ORDER "/lib/modules/load-order"
#define ZRAM_DEV   "/dev/zram0"
#define ZRAM_SYS   "/sys/block/zram0"

static void set_reason(Agent *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_reason(Agent *a, const char *fmt, ...) {
        /* Keep the first failure: later ones are usually its consequences. */
        if (!a->ready)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(a->reason, sizeof a->reason, fmt, ap);
        va_end(ap);
        a->ready = false;
        agent_log("setup failed: %s", a->reason);
}

static int mount_one(const char *src, const char *dst, const char *type, unsigned long flags, const char *opts) {
        mkdir(dst, 0755);
        if (mount(src, dst, type, flags, opts) < 0 && errno != EBUSY)
                return -errno;
        return 0;
}

static void setup_mounts(Agent *a) {
        int r;
        if ((r = mount_one("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) < 0)
                set_reason(a, "mount /proc: %s", strerror(-r));
        if ((r = mount_one("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL)) < 0)
                set_reason(a, "mount /sys: %s", strerror(-r));
        /* Debian's kernel has DEVTMPFS_MOUNT=n, so /dev is ours to mount. */
        if ((r = mount_one("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755")) < 0)
                set_reason(a, "mount /dev: %s", strerror(-r));
        if ((r = mount_one("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "gid=5,mode=620,ptmxmode=666")) < 0)
                agent_log("mount /dev/pts: %s, ignoring", strerror(-r));
        if ((r = mount_one("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")) < 0)
                agent_log("mount /tmp: %s, ignoring", strerror(-r));
        if ((r = mount_one("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755")) < 0)
                agent_log("mount /run: %s, ignoring", strerror(-r));
}

/* The kernel opens /dev/console for PID 1 only if the initramfs has the node;
 * make sure fds 0-2 go somewhere useful either way. */
static void setup_console(void) {
        if (fcntl(1, F_GETFD) >= 0 && fcntl(2, F_GETFD) >= 0)
                return;
        int fd = open("/dev/console", O_RDWR | O_NOCTTY);
        if (fd < 0)
                fd = open("/dev/null", O_RDWR);
        if (fd < 0)
                return;
        for (int i = 0; i < 3; i++)
                if (fcntl(i, F_GETFD) < 0)
                        dup2(fd, i);
        if (fd > 2)
                close(fd);
}

static int load_module(const char *path) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        long r = syscall(SYS_finit_module, fd, "", 0);
        if (r < 0 && errno == ENOSYS) {
                /* Very old kernels: hand the image over from memory instead. */
                struct stat st;
                if (fstat(fd, &st) == 0) {
                        void *img = malloc((size_t) st.st_size);
                        if (img && read(fd, img, (size_t) st.st_size) == st.st_size)
                                r = syscall(SYS_init_module, img, (unsigned long) st.st_size, "");
                        else
                                errno = EIO;
                        free(img);
                }
        }
        int saved = errno;
        close(fd);
        if (r < 0 && saved != EEXIST)
                return -saved;
        return 0;
}

static void setup_modules(Agent *a) {
        char *list;
        if (agent_read_file(LOAD_ORDER, &list) < 0) {
                agent_log("no %s, assuming a kernel with everything built in", LOAD_ORDER);
                return;
        }
        int loaded = 0;
        for (char *save = NULL, *line = strtok_r(list, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
                if (!*line || *line == '#')
                        continue;
                char path[512];
                if (*line == '/')
                        snprintf(path, sizeof path, "%s", line);
                else
                        snprintf(path, sizeof path, "/lib/modules/%s", line);
                int r = load_module(path);
                if (r < 0)
                        set_reason(a, "load module %s: %s", line, strerror(-r));
                else
                        loaded++;
        }
        free(list);
        (void) loaded;
}

static int wait_for_path(const char *path, unsigned timeout_ms) {
        /* Device nodes appear asynchronously after the module probe. */
        for (unsigned waited = 0;; waited += 5) {
                if (access(path, F_OK) == 0)
                        return 0;
                if (waited >= timeout_ms)
                        return -ENOENT;
                nanosleep(&(struct timespec){ .tv_nsec = 5 * 1000 * 1000 }, NULL);
        }
}

/* The mkswap(8) equivalent: a SWAPSPACE2 header in the first page. */
static int write_swap_header(const char *dev, uint64_t size) {
        long psz = sysconf(_SC_PAGESIZE);
        if (psz < 4096 || psz > 65536)
                return -EINVAL;
        uint64_t pages = size / (uint64_t) psz;
        if (pages < 10 || pages - 1 > UINT32_MAX)
                return -EINVAL;
        unsigned char *page = calloc(1, (size_t) psz);
        if (!page)
                return -ENOMEM;
        /* struct swap_header_v1_2 lives at offset 1024: version, last_page, nr_badpages, uuid[16], label[16]. */
        uint32_t hdr[3] = { 1, (uint32_t) (pages - 1), 0 };
        memcpy(page + 1024, hdr, sizeof hdr);
        /* A fixed, non-zero UUID: nothing identifies swap by UUID in the guest. */
        memcpy(page + 1024 + 12, "ballast-zram-swp", 16);
        memcpy(page + psz - 10, "SWAPSPACE2", 10);
        int ret = 0;
        int fd = open(dev, O_WRONLY | O_CLOEXEC);
        if (fd < 0)
                ret = -errno;
        else {
                if (pwrite(fd, page, (size_t) psz, 0) != psz)
                        ret = errno ? -errno : -EIO;
                else if (fsync(fd) < 0)
                        ret = -errno;
                close(fd);
        }
        free(page);
        return ret;
}

static void setup_zram(Agent *a) {
        int r;
        if (wait_for_path(ZRAM_SYS, 1000) < 0 || wait_for_path(ZRAM_DEV, 1000) < 0) {
                set_reason(a, "zram: no %s (zram module missing?)", ZRAM_DEV);
                return;
        }
        /* The algorithm can only be chosen before disksize is set. */
        if ((r = agent_write_file(ZRAM_SYS "/comp_algorithm", "lz4")) < 0) {
                set_reason(a, "zram: comp_algorithm lz4: %s", strerror(-r));
                return;
        }
        uint64_t disksize = a->mem_total_kb * 1024 / 2;
        char v[32];
        snprintf(v, sizeof v, "%llu", (unsigned long long) disksize);
        if ((r = agent_write_file(ZRAM_SYS "/disksize", v)) < 0) {
                set_reason(a, "zram: disksize %s: %s", v, strerror(-r));
                return;
        }
        a->zram_disksize = disksize;
        if ((r = write_swap_header(ZRAM_DEV, disksize)) < 0) {
                set_reason(a, "zram: writing swap header: %s", strerror(-r));
                return;
        }
        if (swapon(ZRAM_DEV, SWAP_FLAG_PREFER | (100 & SWAP_FLAG_PRIO_MASK)) < 0) {
                set_reason(a, "zram: swapon: %s", strerror(errno));
                return;
        }
}

static void setup_sysctls(Agent *a) {
        char mfk[32];
        snprintf(mfk, sizeof mfk, "%llu", (unsigned long long) agent_min_free_kbytes(a->mem_total_kb));
        const struct {
                const char *path, *value;
        } s[] = {
                { "/proc/sys/vm/page-cluster", "0" }, /* zram: no readahead, every swap-in is a page */
                { "/proc/sys/vm/swappiness", "100" }, /* compressed RAM is cheap to swap to */
                { "/proc/sys/vm/overcommit_memory", "0" },
                { "/proc/sys/vm/min_free_kbytes", mfk }, /* headroom for balloon + zram allocations */
                { "/proc/sys/vm/watermark_boost_factor", "0" },
        };
        for (size_t i = 0; i < sizeof s / sizeof s[0]; i++) {
                int r = agent_write_file(s[i].path, s[i].value);
                if (r < 0)
                        set_reason(a, "sysctl %s=%s: %s", s[i].path + strlen("/proc/sys/"), s[i].value, strerror(-r));
        }
}

void agent_setup(Agent *a) {
        a->ready = true;
        a->reason[0] = 0;
        setenv("PATH", "/bin:/sbin:/usr/bin:/usr/sbin", 1);
        setenv("HOME", "/root", 1);
        setenv("TERM", "linux", 0);
        umask(022);
        setup_mounts(a);
        setup_console();
        setup_modules(a);

        char *mi;
        uint64_t total = 0;
        if (agent_read_file("/proc/meminfo", &mi) >= 0) {
                agent_meminfo_get(mi, "MemTotal", &total);
                free(mi);
        }
        a->mem_total_kb = total / 1024;
        if (a->mem_total_kb == 0)
                set_reason(a, "cannot read MemTotal from /proc/meminfo");
        else
                setup_zram(a);
        setup_sysctls(a);
}

int agent_find_port(char *ret_path, size_t len) {
        DIR *d = opendir("/sys/class/virtio-ports");
        if (!d)
                return -errno;
        int ret = -ENOENT;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                char p[300], *name;
                snprintf(p, sizeof p, "/sys/class/virtio-ports/%s/name", de->d_name);
                if (agent_read_file(p, &name) < 0)
                        continue;
                name[strcspn(name, "\n")] = 0;
                bool match = strcmp(name, AGENT_PORT_NAME) == 0;
                free(name);
                if (match) {
                        snprintf(ret_path, len, "/dev/%s", de->d_name);
                        ret = access(ret_path, F_OK) == 0 ? 0 : -ENOENT;
                        break;
                }
        }
        closedir(d);
        return ret;
}

/* ---- status replies ---- */

typedef struct BalloonInfo {
        bool present;
        char device[32];
        char driver[32];
} BalloonInfo;

static void balloon_info(BalloonInfo *ret) {
        *ret = (BalloonInfo){ 0 };
        DIR *d = opendir("/sys/bus/virtio/devices");
        if (!d)
                return;
        struct dirent *de;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                char p[300], *id;
                snprintf(p, sizeof p, "/sys/bus/virtio/devices/%s/device", de->d_name);
                if (agent_read_file(p, &id) < 0)
                        continue;
                bool is_balloon = strtoul(id, NULL, 16) == 5; /* VIRTIO_ID_BALLOON */
                free(id);
                if (!is_balloon)
                        continue;
                snprintf(ret->device, sizeof ret->device, "%.31s", de->d_name);
                snprintf(p, sizeof p, "/sys/bus/virtio/devices/%s/driver", de->d_name);
                char link[256];
                ssize_t n = readlink(p, link, sizeof link - 1);
                if (n > 0) {
                        link[n] = 0;
                        const char *base = strrchr(link, '/');
                        snprintf(ret->driver, sizeof ret->driver, "%.31s", base ? base + 1 : link);
                }
                ret->present = strcmp(ret->driver, "virtio_balloon") == 0;
                if (ret->present)
                        break;
        }
        closedir(d);
}

typedef struct ZramInfo {
        bool active;
        char algorithm[32];
        uint64_t disksize;
        long priority;
} ZramInfo;

static void zram_info(ZramInfo *ret) {
        *ret = (ZramInfo){ .priority = -1 };
        char *s;
        if (agent_read_file(ZRAM_SYS "/comp_algorithm", &s) >= 0) {
                /* "lzo lzo-rle [lz4]": the bracketed one is selected. */
                char *o = strchr(s, '['), *c = o ? strchr(o, ']') : NULL;
                if (o && c) {
                        *c = 0;
                        snprintf(ret->algorithm, sizeof ret->algorithm, "%s", o + 1);
                }
                free(s);
        }
        if (agent_read_file(ZRAM_SYS "/disksize", &s) >= 0) {
                ret->disksize = strtoull(s, NULL, 10);
                free(s);
        }
        if (agent_read_file("/proc/swaps", &s) >= 0) {
                for (char *save = NULL, *l = strtok_r(s, "\n", &save); l; l = strtok_r(NULL, "\n", &save)) {
                        if (strncmp(l, ZRAM_DEV, strlen(ZRAM_DEV)) != 0)
                                continue;
                        /* Filename Type Size Used Priority */
                        char *last = strrchr(l, ' '), *tab = strrchr(l, '\t');
                        if (tab > last)
                                last = tab;
                        ret->active = true;
                        ret->priority = last ? strtol(last + 1, NULL, 10) : -1;
                }
                free(s);
        }
}

static uint64_t uptime_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_BOOTTIME, &ts);
        return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

void agent_reply_ping(Agent *a, AgentBuf *b, const char *id_json) {
        BalloonInfo bi;
        ZramInfo zi;
        balloon_info(&bi);
        zram_info(&zi);
        agent_reply_begin(b, id_json, true);
        agent_json_field_str(b, "version", AGENT_VERSION);
        agent_json_field_bool(b, "ready", a->ready);
        agent_json_field_str(b, "reason", a->ready ? "" : a->reason);
        agent_json_field_u64(b, "uptime_ms", uptime_ms());
        agent_json_field_key(b, "balloon");
        agent_buf_puts(b, "{\"present\":");
        agent_buf_puts(b, bi.present ? "true" : "false");
        agent_json_field_u64(b, "virtio_type", 5);
        agent_json_field_str(b, "device", bi.device);
        agent_json_field_str(b, "driver", bi.driver);
        agent_buf_puts(b, "}");
        agent_json_field_key(b, "zram");
        agent_buf_puts(b, "{\"active\":");
        agent_buf_puts(b, zi.active ? "true" : "false");
        agent_json_field_str(b, "algorithm", zi.algorithm);
        agent_json_field_u64(b, "disksize", zi.disksize);
        agent_json_field_i64(b, "priority", zi.priority);
        agent_buf_puts(b, "}");
        agent_reply_end(b);
}

void agent_ready_event(Agent *a, AgentBuf *b) {
        agent_buf_puts(b, "{\"event\":\"ready\"");
        agent_json_field_str(b, "version", AGENT_VERSION);
        agent_json_field_bool(b, "ready", a->ready);
        agent_json_field_str(b, "reason", a->ready ? "" : a->reason);
        agent_json_field_u64(b, "uptime_ms", uptime_ms());
        agent_reply_end(b);
}

void agent_reply_meminfo(AgentBuf *b, const char *id_json) {
        static const char *const mkeys[] = { "MemTotal",  "MemFree",  "MemAvailable", "Buffers", "Cached",
                                             "SwapTotal", "SwapFree", "AnonPages",    "Shmem" };
        static const char *const vkeys[] = { "pswpin", "pswpout", "pgmajfault", "pgfault", "oom_kill" };
        char *mi = NULL, *vm = NULL;
        if (agent_read_file("/proc/meminfo", &mi) < 0 || agent_read_file("/proc/vmstat", &vm) < 0) {
                agent_reply_error(b, id_json, "cannot read /proc/meminfo or /proc/vmstat");
                goto out;
        }
        agent_reply_begin(b, id_json, true);
        agent_json_field_key(b, "meminfo");
        for (size_t i = 0; i < sizeof mkeys / sizeof mkeys[0]; i++) {
                uint64_t v = 0;
                agent_meminfo_get(mi, mkeys[i], &v);
                agent_buf_puts(b, i ? "," : "{");
                agent_json_put_string(b, mkeys[i], strlen(mkeys[i]));
                agent_buf_printf(b, ":%llu", (unsigned long long) v);
        }
        agent_buf_puts(b, "}");
        agent_json_field_key(b, "vmstat");
        for (size_t i = 0; i < sizeof vkeys / sizeof vkeys[0]; i++) {
                uint64_t v = 0;
                agent_vmstat_get(vm, vkeys[i], &v);
                agent_buf_puts(b, i ? "," : "{");
                agent_json_put_string(b, vkeys[i], strlen(vkeys[i]));
                agent_buf_printf(b, ":%llu", (unsigned long long) v);
        }
        agent_buf_puts(b, "}");
        agent_reply_end(b);
out:
        free(mi);
        free(vm);
}
