/* SPDX-License-Identifier: MIT */
/* The Prometheus exposition (src/api/metrics.c) against its stdio version (tests/unit/metrics-ref.c):
 * the same bytes for the same state. A controller with a fixture /proc under pressure, three VMs
 * served by fake QEMUs (tests/peers/qmp-peer.c, compiled in, run in forked children: sizes known,
 * targets below full) and many against sockets that do not exist (status error, no sizes); then a
 * controller watching a cgroup directory whose name needs every escape of a label value. Only the
 * process figures that change between two calls (CPU time, RSS) are masked. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#define QMP_PEER_NO_MAIN
#include "../peers/qmp-peer.c"

#include "api/api.h"
#include "control/controller.h"
#include "daemon/manager.h"
#include "hv/qmp.h"
#include "shared/ev.h"

char *metrics_render_ref(Manager *m, size_t *ret_len);

typedef struct Fixture {
        char dir[64];
        pid_t pids[8];
        size_t n_pids;
        Ev *ev;
        Controller *c;
} Fixture;

static void write_meminfo(Fixture *f, uint64_t total, uint64_t avail) {
        char path[128];
        snprintf(path, sizeof path, "%s/proc/meminfo", f->dir);
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        fprintf(fp, "MemTotal:       %llu kB\nMemFree:        %llu kB\nMemAvailable:   %llu kB\n",
                (unsigned long long) (total >> 10), (unsigned long long) (avail >> 10),
                (unsigned long long) (avail >> 10));
        assert_int_equal(fclose(fp), 0);
}

static int setup(void **state) {
        Fixture *f = calloc(1, sizeof *f);
        if (!f)
                return -1;
        snprintf(f->dir, sizeof f->dir, "/tmp/ballast-test-metrics-XXXXXX");
        if (!mkdtemp(f->dir) || ev_new(&f->ev) < 0)
                return -1;
        char p[128];
        snprintf(p, sizeof p, "%s/proc", f->dir);
        if (mkdir(p, 0755) < 0)
                return -1;
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fixture *f = *state;
        f->c = ctl_free(f->c);
        for (size_t i = 0; i < f->n_pids; i++) {
                (void) kill(f->pids[i], SIGKILL);
                (void) waitpid(f->pids[i], NULL, 0);
        }
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
        (void) !system(cmd);
        ev_free(f->ev);
        free(f);
        return 0;
}

static void spawn_peer(Fixture *f, const char *name, uint64_t ram) {
        int ready[2];
        assert_int_equal(pipe2(ready, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                close(ready[0]);
                (void) prctl(PR_SET_PDEATHSIG, SIGKILL);
                char path[160];
                snprintf(path, sizeof path, "%s/%s.sock", f->dir, name);
                PeerConfig c;
                peer_config_init(&c);
                c.socket_path = path;
                c.ram = ram;
                c.rate_mib_s = 2048;
                c.ready_fd = ready[1];
                _exit(peer_serve(&c) < 0 ? 11 : 0);
        }
        close(ready[1]);
        char b;
        assert_int_equal(read(ready[0], &b, 1), 1);
        close(ready[0]);
        f->pids[f->n_pids++] = pid;
}

static int factory(Ev *ev, const CtlVmSpec *spec, Hv **ret, char *err, size_t errlen) {
        QmpConfig qc = { .socket_path = spec->socket, .expected_uid = UID_ANY };
        int r = qmp_hv_new(ev, &qc, ret);
        if (r < 0)
                snprintf(err, errlen, "%s", strerror(-r));
        return r;
}

static void start(Fixture *f, const char *cgroup_dir) {
        CtlConfig cc;
        ctl_config_default(&cc);
        cc.proc_root = f->dir;
        cc.cgroup_dir = cgroup_dir;
        cc.psi_mode = -1;
        cc.sample_interval = 50 * USEC_PER_MSEC;
        cc.plan.dwell = 0;
        char err[256];
        int r = ctl_new(f->ev, &cc, factory, &(CtlHooks){ 0 }, &f->c, err, sizeof err);
        if (r < 0)
                fail_msg("ctl_new: %s", err);
}

static void add(Fixture *f, const char *name, uint64_t assigned, uint64_t floor) {
        CtlVmSpec s = { .expected_uid = -1, .assigned = assigned, .floor = floor, .shares = 1000 };
        snprintf(s.id, sizeof s.id, "%s", name);
        snprintf(s.driver, sizeof s.driver, "qemu");
        snprintf(s.socket, sizeof s.socket, "%s/%s.sock", f->dir, name);
        char err[256];
        CtlVm *vm = NULL;
        if (ctl_vm_add(f->c, &s, 0, &vm, err, sizeof err) < 0)
                fail_msg("ctl_vm_add: %s", err);
}

/* Runs the loop for at most timeout until n VMs are at (within 2 MiB of) a target below full. */
static bool run_until_moved(Fixture *f, size_t n, usec_t timeout) {
        usec_t deadline = now_mono() + timeout;
        for (;;) {
                size_t k = 0;
                for (size_t i = 0; i < ctl_vm_count(f->c); i++) {
                        CtlVmView v;
                        ctl_vm_view(ctl_vm_at(f->c, i), &v);
                        k += v.actual_known && v.target < v.spec->assigned && v.actual < v.spec->assigned &&
                             (v.actual > v.target ? v.actual - v.target : v.target - v.actual) <= 2 * MiB;
                }
                if (k >= n)
                        return true;
                if (now_mono() >= deadline) {
                        for (size_t i = ctl_vm_count(f->c) - 3; i < ctl_vm_count(f->c); i++) {
                                CtlVmView v;
                                ctl_vm_view(ctl_vm_at(f->c, i), &v);
                                print_message("%s: status %s, actual %s %" PRIu64 ", target %" PRIu64 "\n", v.spec->id,
                                              ctl_vm_status_to_string(v.status), v.actual_known ? "known" : "unknown",
                                              v.actual, v.target);
                        }
                        return false;
                }
                assert_true(ev_run_once(f->ev, MIN(deadline, now_mono() + 50 * USEC_PER_MSEC)) >= 0);
        }
}

/* The value of the lines that start with one of the names is replaced by "X". */
static void mask(char *text) {
        static const char *const names[] = { "process_cpu_seconds_total ", "process_resident_memory_bytes ",
                                             "process_open_fds " };
        for (char *line = text; line && *line;) {
                char *nl = strchr(line, '\n');
                for (size_t i = 0; i < ELEMENTSOF(names); i++) {
                        size_t k = strlen(names[i]);
                        if (strncmp(line, names[i], k) == 0)
                                memset(line + k, 'X', (nl ? (size_t) (nl - line) : strlen(line)) - k);
                }
                line = nl ? nl + 1 : NULL;
        }
}

/* Renders with both and compares; returns the new text's length. */
static size_t compare(Fixture *f) {
        Manager m = { .ev = f->ev, .ctl = f->c, .started_rt = UINT64_C(1796601600123456), .store_errors = 3 };
        size_t n_new = 0, n_ref = 0;
        char *ref = metrics_render_ref(&m, &n_ref);
        char *new = metrics_render(&m, &n_new);
        assert_non_null(ref);
        assert_non_null(new);
        assert_int_equal(strlen(new), n_new);
        mask(ref);
        mask(new);
        if (n_new != n_ref || memcmp(new, ref, n_new) != 0) {
                size_t i = 0;
                while (i < n_new && i < n_ref && new[i] == ref[i])
                        i++;
                size_t from = i > 200 ? i - 200 : 0;
                fail_msg("the exposition differs from the stdio version at byte %zu (of %zu, %zu):\n--- new\n%.400s\n"
                         "--- reference\n%.400s",
                         i, n_new, n_ref, new + from, ref + from);
        }
        free(ref);
        free(new);
        return n_new;
}

static void test_fleet_same_bytes(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 16 * GiB, 16 * GiB);
        start(f, NULL);
        /* An empty fleet, before any sample. */
        (void) compare(f);
        for (int i = 0; i < 3; i++) {
                char name[16];
                snprintf(name, sizeof name, "peer%d", i);
                spawn_peer(f, name, 1 * GiB);
                add(f, name, 1 * GiB, 256 * MiB);
        }
        for (int i = 0; i < 400; i++) {
                char name[16];
                snprintf(name, sizeof name, "none-%03d.x_y", i);
                add(f, name, (uint64_t) (i + 1) * MiB, 0);
        }
        /* Pressure: the peers' VMs are moved below full. */
        write_meminfo(f, 16 * GiB, 1 * GiB);
        if (!run_until_moved(f, 3, 30 * USEC_PER_SEC))
                fail_msg("the peers' VMs were not moved below full within 30 s");
        size_t len = compare(f);
        print_message("%zu VMs: %zu bytes, the same as the stdio version\n", ctl_vm_count(f->c), len);
        assert_true(len > 400 * 300);
}

static void write_file(const char *dir, const char *name, const char *text) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        FILE *fp = fopen(path, "w");
        assert_non_null(fp);
        fputs(text, fp);
        assert_int_equal(fclose(fp), 0);
}

static void test_cgroup_label_escapes(void **state) {
        Fixture *f = *state;
        write_meminfo(f, 16 * GiB, 8 * GiB);
        /* A cgroup v2 directory (fixture files) whose name needs every escape. */
        char cg[160];
        snprintf(cg, sizeof cg, "%s/a\"b\\c\nd\\\\\"\"e\n", f->dir);
        assert_int_equal(mkdir(cg, 0755), 0);
        write_file(cg, "memory.current", "1073741824\n");
        write_file(cg, "memory.max", "4294967296\n");
        start(f, cg);
        for (int i = 0; i < 10; i++)
                (void) ev_run_once(f->ev, now_mono() + 5 * USEC_PER_MSEC);
        add(f, "vm.a-b_c", 1 * GiB, 0);
        (void) compare(f);
        Manager m = { .ev = f->ev, .ctl = f->c };
        size_t n = 0;
        char *text = metrics_render(&m, &n);
        assert_non_null(text);
        char want[300];
        snprintf(want, sizeof want,
                 "ballast_scope_info{scope=\"cgroup\",cgroup=\"%s/a\\\"b\\\\c\\nd\\\\\\\\\\\"\\\"e\\n\"} 1\n", f->dir);
        if (!strstr(text, want))
                fail_msg("no line %s in\n%.2000s", want, text);
        free(text);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup_teardown(test_fleet_same_bytes, setup, teardown),
                cmocka_unit_test_setup_teardown(test_cgroup_label_escapes, setup, teardown),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
