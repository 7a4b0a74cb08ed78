/* SPDX-License-Identifier: MIT */
/* How long a store write holds the calling thread (ballastd's event loop): p50, p99, p99.9 and the
 * maximum of each write, and how many took more than 1 ms. The writes are what the daemon does on
 * its loop: a target update per command and a journal entry per decision, over a registry of 100
 * VMs, paced (default every 500 us) so that a checkpoint has time to run beside them.
 *
 *   build/bench/store-latency [DIR] [WRITES] [INTERVAL_US]
 *
 * DIR must be on the file system the daemon's state lives on (fsync on tmpfs costs nothing); a
 * new directory is made inside it (default /var/tmp) and removed at the end. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "store/store.h"

#define NVMS 100

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

static double pct_us(const uint64_t *sorted, size_t n, double p) {
        size_t i = (size_t) (p / 100.0 * (double) (n - 1) + 0.5);
        return (double) sorted[i] / 1000.0;
}

int main(int argc, char **argv) {
        const char *base = argc > 1 ? argv[1] : "/var/tmp";
        long writes = argc > 2 ? strtol(argv[2], NULL, 10) : 5000;
        long interval_us = argc > 3 ? strtol(argv[3], NULL, 10) : 500;
        if (writes < 10 || interval_us < 0) {
                fprintf(stderr, "usage: %s [DIR] [WRITES>=10] [INTERVAL_US]\n", argv[0]);
                return 2;
        }

        char tmp[4096], dir[4200], err[1024] = "";
        snprintf(tmp, sizeof(tmp), "%s/ballast-store-bench-XXXXXX", base);
        if (!mkdtemp(tmp)) {
                fprintf(stderr, "mkdtemp %s: %s\n", tmp, strerror(errno));
                return 1;
        }
        snprintf(dir, sizeof(dir), "%s/state", tmp);

        Store *s = NULL;
        int r = store_open(dir, &s, err, sizeof(err));
        if (r < 0) {
                fprintf(stderr, "store_open: %s\n", err);
                return 1;
        }
        /* The targets of one decision: every VM's id and size, as the daemon journals them. */
        static char targets[NVMS * 32 + 8];
        size_t tl = 0;
        targets[tl++] = '{';
        for (int i = 0; i < NVMS; i++) {
                char id[16];
                snprintf(id, sizeof(id), "vm%03d", i);
                StoreVm vm = { .expected_uid = -1,
                               .assigned = UINT64_C(512) << 20,
                               .floor = UINT64_C(128) << 20,
                               .shares = 1,
                               .last_target = UINT64_C(512) << 20,
                               .created = 1 };
                snprintf(vm.id, sizeof(vm.id), "%s", id);
                snprintf(vm.driver, sizeof(vm.driver), "qemu");
                char sock[64];
                snprintf(sock, sizeof(sock), "/run/ballast/vms/%s/qmp.sock", id);
                vm.socket = sock;
                if (store_vm_put(s, &vm, err, sizeof(err)) < 0) {
                        fprintf(stderr, "store_vm_put: %s\n", err);
                        return 1;
                }
                tl += (size_t) snprintf(targets + tl, sizeof(targets) - tl, "%s\"%s\": %d", i ? ", " : "", id,
                                        268435456 + i * 4096);
        }
        targets[tl++] = '}';
        targets[tl] = 0;

        uint64_t *lat = calloc((size_t) writes, sizeof(uint64_t));
        if (!lat)
                return 1;
        uint64_t t_start = now_ns();
        for (long i = 0; i < writes; i++) {
                uint64_t a = now_ns();
                if (i % 2 == 0) {
                        char id[16];
                        snprintf(id, sizeof(id), "vm%03ld", (i / 2) % NVMS);
                        r = store_vm_set_target(s, id, (UINT64_C(256) << 20) + (uint64_t) i * 4096, err, sizeof(err));
                } else {
                        StoreJournalEntry e = {
                                .time = (uint64_t) i, .available = 1, .requested = 2, .planned = 3, .targets = targets
                        };
                        snprintf(e.trigger, sizeof(e.trigger), "timer");
                        snprintf(e.state, sizeof(e.state), "pressure");
                        r = store_journal_append(s, &e, err, sizeof(err));
                }
                uint64_t b = now_ns();
                if (r < 0) {
                        fprintf(stderr, "write %ld: %s\n", i, err);
                        return 1;
                }
                lat[i] = b - a;
                if (interval_us > 0)
                        usleep((useconds_t) interval_us);
        }
        double secs = (double) (now_ns() - t_start) / 1e9;
        /* The WAL's size now, before closing checkpoints it away: it must stay bounded. */
        char wal[4300];
        struct stat st;
        snprintf(wal, sizeof(wal), "%s-wal", store_path(s));
        long long wal_kib = stat(wal, &st) == 0 ? (long long) st.st_size / 1024 : -1;
        s = store_close(s);

        long over_1ms = 0;
        for (long i = 0; i < writes; i++)
                over_1ms += lat[i] > 1000000;
        qsort(lat, (size_t) writes, sizeof(uint64_t), cmp_u64);
        printf("store writes on the calling thread: %ld writes (target updates and journal entries alternating, "
               "%ld us apart) over %.1f s in %s\n",
               writes, interval_us, secs, base);
        printf("p50 %.0f us  p99 %.0f us  p99.9 %.0f us  max %.0f us  over 1 ms: %ld\n",
               pct_us(lat, (size_t) writes, 50), pct_us(lat, (size_t) writes, 99), pct_us(lat, (size_t) writes, 99.9),
               (double) lat[writes - 1] / 1000.0, over_1ms);
        printf("WAL at the end: %lld KiB\n", wal_kib);
        free(lat);

        char cmd[4300];
        snprintf(cmd, sizeof(cmd), "rm -rf -- '%s'", tmp);
        return system(cmd) == 0 ? 0 : 1;
}
