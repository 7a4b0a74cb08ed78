/* SPDX-License-Identifier: MIT */
/* Prometheus text exposition (format 0.0.4) of the daemon's state (B8). Every metric is listed,
 * with its meaning, in docs/metrics.md; packaging/grafana/ and packaging/prometheus/ use only
 * names from there (tests/e2e/test_metrics.py checks it against a live scrape). */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "api/api.h"
#include "config.h"
#include "daemon/manager.h"
#include "sense/vm-mem.h"
#include "shared/macro.h"

/* The exposition is about 520 bytes a VM (523 KB at 1,000 VMs) and is built on the loop's only
 * thread: into one growable buffer with direct appends (no stdio stream, no per-character
 * calls), each VM's labels escaped once per scrape, integers written without printf. Only the
 * few floating-point values go through snprintf. The text is byte for byte what the stdio
 * version wrote (tests/unit/test-metrics.c compares them). */
typedef struct Out {
        char *p;
        size_t len, cap;
        bool oom; /* an append failed: the result is dropped */
} Out;

static bool out_reserve(Out *o, size_t n) {
        if (o->oom)
                return false;
        if (o->cap - o->len > n)
                return true; /* room for n bytes and the final NUL */
        size_t cap = MAX(o->cap, (size_t) 4096);
        while (cap - o->len <= n) {
                if (cap > SIZE_MAX / 2) {
                        o->oom = true;
                        return false;
                }
                cap *= 2;
        }
        char *p = realloc(o->p, cap);
        if (!p) {
                o->oom = true;
                return false;
        }
        o->p = p;
        o->cap = cap;
        return true;
}

static void out_put(Out *o, const char *s, size_t n) {
        if (!out_reserve(o, n))
                return;
        memcpy(o->p + o->len, s, n);
        o->len += n;
}

static void out_puts(Out *o, const char *s) {
        out_put(o, s, strlen(s));
}

static void out_putc(Out *o, char c) {
        if (!out_reserve(o, 1))
                return;
        o->p[o->len++] = c;
}

/* What "%llu" writes. */
static void out_u64(Out *o, uint64_t v) {
        char b[20];
        size_t i = sizeof b;
        do {
                b[--i] = (char) ('0' + v % 10);
                v /= 10;
        } while (v);
        out_put(o, b + i, sizeof b - i);
}

static _printf_(2, 3) void out_printf(Out *o, const char *fmt, ...) {
        if (!out_reserve(o, 64))
                return;
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
        va_end(ap);
        if (n < 0) {
                o->oom = true;
                return;
        }
        if ((size_t) n >= o->cap - o->len) {
                if (!out_reserve(o, (size_t) n))
                        return;
                va_start(ap, fmt);
                n = vsnprintf(o->p + o->len, o->cap - o->len, fmt, ap);
                va_end(ap);
                if (n < 0 || (size_t) n >= o->cap - o->len) {
                        o->oom = true;
                        return;
                }
        }
        o->len += (size_t) n;
}

static void header(Out *o, const char *name, const char *type, const char *help) {
        out_puts(o, "# HELP ");
        out_puts(o, name);
        out_putc(o, ' ');
        out_puts(o, help);
        out_puts(o, "\n# TYPE ");
        out_puts(o, name);
        out_putc(o, ' ');
        out_puts(o, type);
        out_putc(o, '\n');
}

/* Label values: escape backslash, quote and newline. The runs between them are copied whole. */
static void label(Out *o, const char *v) {
        for (;;) {
                size_t n = strcspn(v, "\\\"\n");
                out_put(o, v, n);
                v += n;
                if (!*v)
                        return;
                out_put(o, *v == '\n' ? "\\n" : *v == '\\' ? "\\\\" : "\\\"", 2);
                v++;
        }
}

static void histogram(Out *o, const char *name, const char *help, const CtlHistogram *h) {
        header(o, name, "histogram", help);
        uint64_t cum = 0;
        for (size_t i = 0; i < CTL_HIST_BUCKETS; i++) {
                cum += h->counts[i];
                out_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, ctl_hist_bounds_s[i], (unsigned long long) cum);
        }
        out_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long) h->count);
        out_printf(o, "%s_sum %.6f\n%s_count %llu\n", name, h->sum_s, name, (unsigned long long) h->count);
}

/* ---- per-VM series: {vm="…",driver="…"} ---- */

/* Writes the VM's value to *ret and returns true, or returns false when the VM has none (the
 * series is then left out rather than exported as a misleading 0). */
typedef bool (*vm_field)(const CtlVmView *v, uint64_t *ret);

static bool f_assigned(const CtlVmView *v, uint64_t *ret) {
        *ret = v->spec->assigned;
        return true;
}
static bool f_target(const CtlVmView *v, uint64_t *ret) {
        *ret = v->target;
        return v->actual_known;
}
static bool f_actual(const CtlVmView *v, uint64_t *ret) {
        *ret = v->actual;
        return v->actual_known;
}
/* The floor the last plan held the VM to (the API's effective_floor_bytes): the configured floor,
 * raised by floor_fraction and by what the guest itself needs. */
static bool f_floor(const CtlVmView *v, uint64_t *ret) {
        *ret = v->last.floor;
        return true;
}
static bool f_configured_floor(const CtlVmView *v, uint64_t *ret) {
        *ret = v->spec->floor;
        return true;
}
static bool f_errors(const CtlVmView *v, uint64_t *ret) {
        *ret = v->errors;
        return true;
}
static bool f_stalls(const CtlVmView *v, uint64_t *ret) {
        *ret = v->stalls;
        return true;
}
static bool f_commands(const CtlVmView *v, uint64_t *ret) {
        *ret = v->commands;
        return true;
}
static bool f_rss(const CtlVmView *v, uint64_t *ret) {
        *ret = v->host_rss;
        return v->host_rss != 0;
}
static bool f_confirmed(const CtlVmView *v, uint64_t *ret) {
        *ret = v->host_confirmed;
        return v->host_rss != 0;
}

/* Guest statistics as the guest last reported them; none before its first report. */
static bool guest_reported(const CtlVmView *v) {
        return v->guest.last_update != 0 && v->guest.last_update != HV_STAT_UNSET;
}
static bool guest_stat(const CtlVmView *v, uint64_t x, uint64_t *ret) {
        if (!guest_reported(v) || x == HV_STAT_UNSET)
                return false;
        *ret = x;
        return true;
}
static bool f_g_available(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.available, ret);
}
static bool f_g_free(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.free, ret);
}
static bool f_g_total(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.total, ret);
}
static bool f_g_caches(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.caches, ret);
}
static bool f_g_swap_in(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.swap_in, ret);
}
static bool f_g_swap_out(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.swap_out, ret);
}
static bool f_g_major(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.major_faults, ret);
}
static bool f_g_minor(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.minor_faults, ret);
}
static bool f_g_oom(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.oom_kills, ret);
}
static bool f_g_updated(const CtlVmView *v, uint64_t *ret) {
        return guest_stat(v, v->guest.last_update, ret);
}
static bool f_g_pressure(const CtlVmView *v, uint64_t *ret) {
        *ret = v->guest_pressure;
        return guest_reported(v);
}

/* The VMs' views, read once per scrape, and each VM's labels, escaped once:
 * {vm="…",driver="…" without the closing brace, at lab + off[i], off[i + 1] - off[i] bytes.
 * Every per-VM metric walks them (ctl_vm_at() order). */
typedef struct VmViews {
        CtlVmView *v;
        size_t n;
        Out lab;
        size_t *off;
} VmViews;

static void vm_labels(Out *o, const char *name, const VmViews *vms, size_t i) {
        out_puts(o, name);
        out_put(o, vms->lab.p + vms->off[i], vms->off[i + 1] - vms->off[i]);
}

static void per_vm(Out *o, const VmViews *vms, const char *name, const char *type, const char *help, vm_field get) {
        header(o, name, type, help);
        for (size_t i = 0; i < vms->n; i++) {
                uint64_t x;
                if (!get(&vms->v[i], &x))
                        continue;
                vm_labels(o, name, vms, i);
                out_put(o, "} ", 2);
                out_u64(o, x);
                out_putc(o, '\n');
        }
}

/* One series per VM, labelled with its status: count by (status) gives the fleet's picture, and
 * a VM's series stays put while its status does (what an alert's `for:` needs). */
static void vm_status(Out *o, const VmViews *vms) {
        header(o, "ballast_vm_status", "gauge",
               "1, labelled with the VM's status (connecting, ok, error, stalled, parked).");
        for (size_t i = 0; i < vms->n; i++) {
                vm_labels(o, "ballast_vm_status", vms, i);
                out_puts(o, ",status=\"");
                out_puts(o, ctl_vm_status_to_string(vms->v[i].status));
                out_puts(o, "\"} 1\n");
        }
}

static void vm_views_done(VmViews *vms) {
        free(vms->v);
        free(vms->lab.p);
        free(vms->off);
}

static int vm_views_read(Manager *m, VmViews *ret) {
        VmViews vms = { .n = ctl_vm_count(m->ctl) };
        vms.v = calloc(MAX(vms.n, (size_t) 1), sizeof *vms.v);
        vms.off = calloc(vms.n + 1, sizeof *vms.off);
        if (!vms.v || !vms.off || !out_reserve(&vms.lab, vms.n * 48)) {
                vm_views_done(&vms);
                return -ENOMEM;
        }
        for (size_t i = 0; i < vms.n; i++) {
                ctl_vm_view(ctl_vm_at(m->ctl, i), &vms.v[i]);
                out_puts(&vms.lab, "{vm=\"");
                label(&vms.lab, vms.v[i].spec->id);
                out_puts(&vms.lab, "\",driver=\"");
                label(&vms.lab, vms.v[i].spec->driver);
                out_putc(&vms.lab, '"');
                vms.off[i + 1] = vms.lab.len;
        }
        if (vms.lab.oom) {
                vm_views_done(&vms);
                return -ENOMEM;
        }
        *ret = vms;
        return 0;
}

/* ---- the daemon process (the names every Prometheus client library uses) ---- */

static int metrics_open_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        if (!d)
                return -1;
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1; /* the directory's own descriptor */
}

static void process_metrics(Out *o, Manager *m) {
        struct rusage ru;
        if (getrusage(RUSAGE_SELF, &ru) == 0) {
                header(o, "process_cpu_seconds_total", "counter", "User and system CPU time of ballastd.");
                out_printf(o, "process_cpu_seconds_total %.6f\n",
                           (double) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                                   (double) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
        }
        uint64_t rss;
        if (vmmem_read_rss("", getpid(), &rss) >= 0) {
                header(o, "process_resident_memory_bytes", "gauge", "Resident memory of ballastd.");
                out_printf(o, "process_resident_memory_bytes %llu\n", (unsigned long long) rss);
        }
        int fds = metrics_open_fds();
        if (fds >= 0) {
                header(o, "process_open_fds", "gauge", "Open file descriptors of ballastd.");
                out_printf(o, "process_open_fds %d\n", fds);
        }
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
                header(o, "process_max_fds", "gauge", "Limit of open file descriptors (RLIMIT_NOFILE).");
                out_printf(o, "process_max_fds %llu\n", (unsigned long long) rl.rlim_cur);
        }
        header(o, "process_start_time_seconds", "gauge", "Start of ballastd, in seconds since the epoch.");
        out_printf(o, "process_start_time_seconds %.3f\n", (double) m->started_rt / 1e6);
}

/* ---- the scope (host or cgroup) ---- */

static void scope_metrics(Out *o, Manager *m, const CtlHostView *h) {
        const CtlConfig *cc = ctl_config(m->ctl);
        bool cgroup = cc->cgroup_dir && cc->cgroup_dir[0];
        const char *scope = cgroup ? "cgroup" : "host";

        header(o, "ballast_scope_info", "gauge",
               "1, labelled with the pressure scope ballastd watches: scope (host or cgroup) and, for a cgroup, "
               "its directory. The ballast_host_* figures are this scope's.");
        out_printf(o, "ballast_scope_info{scope=\"%s\",cgroup=\"", scope);
        label(o, cgroup ? cc->cgroup_dir : "");
        out_puts(o, "\"} 1\n");
        header(o, "ballast_host_sample_ok", "gauge", "1 when the last sample of the scope succeeded.");
        out_printf(o, "ballast_host_sample_ok{scope=\"%s\"} %d\n", scope, h->sample_ok ? 1 : 0);
        if (!h->sample_ok)
                return;
        header(o, "ballast_host_memory_total_bytes", "gauge", "Memory of the scope (MemTotal or the cgroup's limit).");
        out_printf(o, "ballast_host_memory_total_bytes{scope=\"%s\"} %llu\n", scope,
                   (unsigned long long) h->sample.total);
        header(o, "ballast_host_memory_available_bytes", "gauge", "Available memory of the scope.");
        out_printf(o, "ballast_host_memory_available_bytes{scope=\"%s\"} %llu\n", scope,
                   (unsigned long long) h->sample.available);
        if (!h->sample.has_psi)
                return;
        const Psi *p = &h->sample.psi;
        header(o, "ballast_host_psi_avg10_ratio", "gauge",
               "Memory PSI of the scope averaged by the kernel over 10 s, as a ratio (0-1).");
        out_printf(o, "ballast_host_psi_avg10_ratio{scope=\"%s\",kind=\"some\"} %.4f\n", scope,
                   p->some.avg10 / 10000.0);
        if (p->has_full)
                out_printf(o, "ballast_host_psi_avg10_ratio{scope=\"%s\",kind=\"full\"} %.4f\n", scope,
                           p->full.avg10 / 10000.0);
        header(o, "ballast_host_psi_stall_seconds_total", "counter",
               "Memory PSI of the scope: time some (or all, full) tasks stalled on memory, the kernel's total. "
               "rate() of it is the stall ratio over any window.");
        out_printf(o, "ballast_host_psi_stall_seconds_total{scope=\"%s\",kind=\"some\"} %.6f\n", scope,
                   (double) p->some.total_us / 1e6);
        if (p->has_full)
                out_printf(o, "ballast_host_psi_stall_seconds_total{scope=\"%s\",kind=\"full\"} %.6f\n", scope,
                           (double) p->full.total_us / 1e6);
}

static void gauge(Out *o, const char *name, const char *help, uint64_t v) {
        header(o, name, "gauge", help);
        out_printf(o, "%s %llu\n", name, (unsigned long long) v);
}

/* The pressure state and the reclaim, stage by stage, and the admission hint. */
static void reclaim_metrics(Out *o, Manager *m, const CtlHostView *h) {
        header(o, "ballast_pressure_state", "gauge", "1 for the current pressure state.");
        for (int s = 0; s < _PLAN_STATE_MAX; s++)
                out_printf(o, "ballast_pressure_state{state=\"%s\"} %d\n", plan_state_to_string(s), h->ctl.state == s);
        header(o, "ballast_pressure_transitions_total", "counter", "Pressure state changes.");
        out_printf(o, "ballast_pressure_transitions_total %llu\n", (unsigned long long) h->transitions);

        /* Reclaim, stage by stage: each is its own quantity (they do not add up), so each has its
         * own name. The first five are the last plan's; the last three are measured now. */
        gauge(o, "ballast_reclaim_automatic_bytes",
              "Reclaim host pressure alone asks for: what brings available memory back to the high watermark.",
              h->last.automatic);
        gauge(o, "ballast_reclaim_hold_bytes", "Reclaim of the manual hold in force (0: none).", h->last.hold);
        gauge(o, "ballast_reclaim_requested_bytes",
              "Reclaim the last plan was asked for: the larger of automatic and hold (they never add up).",
              h->last.requested);
        gauge(o, "ballast_reclaim_planned_bytes",
              "What the last plan's targets amount to: the sum of assigned - target over the VMs it moves.",
              h->last.planned);
        gauge(o, "ballast_reclaim_shortfall_bytes", "Requested reclaim the floors did not allow in the last plan.",
              h->last.shortfall);
        gauge(o, "ballast_reclaim_commanded_bytes",
              "Sum of assigned - target over the VMs that answer: what the balloons are told to hold now.",
              h->commanded);
        gauge(o, "ballast_reclaim_guest_reached_bytes",
              "Sum of assigned - actual: what the guests have given up to their balloons.", h->guest_reached);
        gauge(o, "ballast_reclaim_reached_bytes",
              "Host memory really given back: the fall of the hypervisors' resident memory since full size.",
              h->reached);
        /* The admission hint in bytes, so a fleet's Prometheus can add hosts up: VMs of size S that
         * fit on a host = floor((free + returnable) / (S + overhead)). */
        PlanCapacity cap;
        if (ctl_capacity(m->ctl, 1, &cap, NULL) >= 0) {
                gauge(o, "ballast_capacity_free_bytes",
                      "Available memory of the scope above its low watermark: room for new VMs now.", cap.free);
                gauge(o, "ballast_capacity_returnable_bytes",
                      "Host memory reclaim could return from the VMs above their floors.", cap.returnable);
                gauge(o, "ballast_capacity_overhead_bytes",
                      "What a new VM's hypervisor costs beside guest RAM (the largest measured here).", cap.overhead);
        }
}

/* What the controller did: commands, ticks, failures, latencies. */
static void controller_metrics(Out *o, const CtlStats *st, const CtlHostView *h) {
        header(o, "ballast_balloon_commanded_bytes_total", "counter",
               "Bytes of target changes commanded, by direction (reclaim: down, give_back: up).");
        out_printf(o, "ballast_balloon_commanded_bytes_total{direction=\"reclaim\"} %llu\n",
                   (unsigned long long) st->reclaimed_commanded_bytes);
        out_printf(o, "ballast_balloon_commanded_bytes_total{direction=\"give_back\"} %llu\n",
                   (unsigned long long) st->given_back_commanded_bytes);
        header(o, "ballast_ticks_total", "counter", "Controller ticks.");
        out_printf(o, "ballast_ticks_total %llu\n", (unsigned long long) h->ticks);
        header(o, "ballast_plans_failed_total", "counter", "Plans that could not be computed (no sample, no memory).");
        out_printf(o, "ballast_plans_failed_total %llu\n", (unsigned long long) h->plans_failed);
        header(o, "ballast_balloon_commands_total", "counter", "Balloon target commands sent.");
        out_printf(o, "ballast_balloon_commands_total %llu\n", (unsigned long long) st->commands);
        header(o, "ballast_stalls_total", "counter", "VMs found stalled on the way to their target.");
        out_printf(o, "ballast_stalls_total %llu\n", (unsigned long long) st->stalls);
        header(o, "ballast_driver_errors_total", "counter", "Failed driver operations, by operation.");
        for (int op = 0; op < _HV_OP_MAX; op++)
                out_printf(o, "ballast_driver_errors_total{op=\"%s\"} %llu\n", hv_op_to_string(op),
                           (unsigned long long) st->driver_errors[op]);
        header(o, "ballast_driver_timeouts_total", "counter", "Driver operations that hit their deadline.");
        out_printf(o, "ballast_driver_timeouts_total %llu\n", (unsigned long long) st->driver_timeouts);
        histogram(o, "ballast_reaction_latency_seconds",
                  "From the sample that showed a need to the first reclaim command sent.", &st->reaction);
        histogram(o, "ballast_time_to_target_seconds",
                  "From the command of a new target to the VM reaching it (a target within tolerance of where the "
                  "VM is is no move).",
                  &st->time_to_target);
}

/* The fleet, one series per VM. */
static void vm_metrics(Out *o, const VmViews *vms) {
        header(o, "ballast_vms", "gauge", "Registered VMs.");
        out_printf(o, "ballast_vms %zu\n", vms->n);
        vm_status(o, vms);
        per_vm(o, vms, "ballast_vm_assigned_bytes", "gauge", "Full memory of the VM.", f_assigned);
        per_vm(o, vms, "ballast_vm_target_bytes", "gauge", "Target guest memory commanded.", f_target);
        per_vm(o, vms, "ballast_vm_actual_bytes", "gauge", "Guest memory reported by the hypervisor.", f_actual);
        per_vm(o, vms, "ballast_vm_floor_bytes", "gauge",
               "Floor in force in the last plan (the API's effective_floor_bytes).", f_floor);
        per_vm(o, vms, "ballast_vm_configured_floor_bytes", "gauge", "Floor given at registration (floor_bytes).",
               f_configured_floor);
        per_vm(o, vms, "ballast_vm_driver_errors_total", "counter", "Failed driver operations of the VM.", f_errors);
        per_vm(o, vms, "ballast_vm_stalls_total", "counter", "Stalls of the VM.", f_stalls);
        per_vm(o, vms, "ballast_vm_commands_total", "counter", "Balloon commands sent to the VM.", f_commands);
        per_vm(o, vms, "ballast_vm_host_rss_bytes", "gauge", "Resident memory of the VM's hypervisor process.", f_rss);
        per_vm(o, vms, "ballast_vm_host_confirmed_bytes", "gauge",
               "Fall of the hypervisor's resident memory since the VM was last at full size.", f_confirmed);
        per_vm(o, vms, "ballast_vm_guest_available_bytes", "gauge", "The guest's own MemAvailable, as last reported.",
               f_g_available);
        per_vm(o, vms, "ballast_vm_guest_free_bytes", "gauge", "The guest's free memory, as last reported.", f_g_free);
        per_vm(o, vms, "ballast_vm_guest_memory_total_bytes", "gauge", "The guest's total memory, as last reported.",
               f_g_total);
        per_vm(o, vms, "ballast_vm_guest_cache_bytes", "gauge", "The guest's page cache, as last reported.",
               f_g_caches);
        per_vm(o, vms, "ballast_vm_guest_swap_in_bytes_total", "counter", "Memory the guest swapped in since its boot.",
               f_g_swap_in);
        per_vm(o, vms, "ballast_vm_guest_swap_out_bytes_total", "counter",
               "Memory the guest swapped out since its boot.", f_g_swap_out);
        per_vm(o, vms, "ballast_vm_guest_major_faults_total", "counter",
               "Major page faults in the guest since its boot.", f_g_major);
        per_vm(o, vms, "ballast_vm_guest_minor_faults_total", "counter",
               "Minor page faults in the guest since its boot.", f_g_minor);
        per_vm(o, vms, "ballast_vm_guest_oom_kills_total", "counter", "OOM kills in the guest since its boot.",
               f_g_oom);
        per_vm(o, vms, "ballast_vm_guest_stats_timestamp_seconds", "gauge",
               "When the guest's statistics above were taken, in seconds since the epoch.", f_g_updated);
        per_vm(o, vms, "ballast_vm_guest_pressure", "gauge",
               "1 while the guest shows memory pressure (swapping in, faulting hard or nearly out): it gives last.",
               f_g_pressure);
}

/* The API server's answers and refusals. */
static void api_metrics(Out *o, Manager *m) {
        HttpCounters hc = { 0 };
        if (m->http)
                http_server_counters(m->http, &hc);
        /* Each answer counts once, in its class: sum() is the number of answered requests. */
        header(o, "ballast_api_requests_total", "counter", "API requests answered, by status class.");
        out_printf(o, "ballast_api_requests_total{class=\"2xx\"} %llu\n", (unsigned long long) hc.answers_2xx);
        out_printf(o, "ballast_api_requests_total{class=\"3xx\"} %llu\n", (unsigned long long) hc.answers_3xx);
        out_printf(o, "ballast_api_requests_total{class=\"4xx\"} %llu\n", (unsigned long long) hc.errors_4xx);
        out_printf(o, "ballast_api_requests_total{class=\"5xx\"} %llu\n", (unsigned long long) hc.errors_5xx);
        header(o, "ballast_api_auth_failures_total", "counter",
               "Requests refused for their credentials (401: no or bad token; 403: not allowed), also in 4xx.");
        out_printf(o, "ballast_api_auth_failures_total{code=\"401\"} %llu\n", (unsigned long long) hc.unauthorized);
        out_printf(o, "ballast_api_auth_failures_total{code=\"403\"} %llu\n", (unsigned long long) hc.forbidden);
        header(o, "ballast_api_connections_refused_total", "counter",
               "Connections closed at accept: over a connection limit (per listener, per peer, unauthenticated).");
        out_printf(o, "ballast_api_connections_refused_total %llu\n", (unsigned long long) hc.refused);
        header(o, "ballast_api_header_timeouts_total", "counter", "Request heads that missed [api] header_timeout.");
        out_printf(o, "ballast_api_header_timeouts_total %llu\n", (unsigned long long) hc.timeouts);
        header(o, "ballast_api_accept_backoffs_total", "counter",
               "Times accept() was paused for lack of file descriptors.");
        out_printf(o, "ballast_api_accept_backoffs_total %llu\n", (unsigned long long) hc.accept_backoff);
}

/* What the hypervisors sent beyond what ballast asked for, and the store. */
static void hv_metrics(Out *o, Manager *m) {
        /* What the hypervisors sent beyond what ballast asked for, over the fleet. */
        HvCounters hv = { 0 };
        for (size_t i = 0; i < ctl_vm_count(m->ctl); i++) {
                HvCounters one;
                hv_counters(ctl_vm_hv(ctl_vm_at(m->ctl, i)), &one);
                hv.events += one.events;
                hv.events_dropped += one.events_dropped;
                hv.interim_responses += one.interim_responses;
                hv.read_yields += one.read_yields;
        }
        header(o, "ballast_hv_events_total", "counter", "Unsolicited messages from the hypervisors (QMP events).");
        out_printf(o, "ballast_hv_events_total %llu\n", (unsigned long long) hv.events);
        header(o, "ballast_hv_events_dropped_total", "counter",
               "Hypervisor events over the per-VM rate limit, dropped without being acted on.");
        out_printf(o, "ballast_hv_events_dropped_total %llu\n", (unsigned long long) hv.events_dropped);
        header(o, "ballast_hv_interim_responses_total", "counter", "Interim (1xx) HTTP responses from hypervisors.");
        out_printf(o, "ballast_hv_interim_responses_total %llu\n", (unsigned long long) hv.interim_responses);
        header(o, "ballast_hv_read_yields_total", "counter",
               "Hypervisor reads stopped at the per-wakeup budget so that others could run.");
        out_printf(o, "ballast_hv_read_yields_total %llu\n", (unsigned long long) hv.read_yields);
        header(o, "ballast_store_errors_total", "counter", "Failed writes to the state database.");
        out_printf(o, "ballast_store_errors_total %llu\n", (unsigned long long) m->store_errors);
}

char *metrics_render(Manager *m, size_t *ret_len) {
        VmViews vms;
        if (vm_views_read(m, &vms) < 0)
                return NULL;
        /* About 670 bytes a VM with every series, and the fleet-wide part: one allocation (pages not
         * written to are never touched). */
        Out out = { 0 }, *o = &out;
        (void) out_reserve(o, 16384 + vms.n * 768);
        CtlHostView h;
        ctl_host_view(m->ctl, &h);

        header(o, "ballast_build_info", "gauge", "1, labelled with the version of ballastd.");
        out_puts(o, "ballast_build_info{version=\"");
        label(o, BALLAST_VERSION);
        out_puts(o, "\"} 1\n");
        process_metrics(o, m);
        scope_metrics(o, m, &h);
        reclaim_metrics(o, m, &h);
        controller_metrics(o, ctl_stats(m->ctl), &h);
        vm_metrics(o, &vms);
        api_metrics(o, m);
        hv_metrics(o, m);
        vm_views_done(&vms);
        if (out.oom || !out_reserve(o, 0)) {
                free(out.p);
                return NULL;
        }
        out.p[out.len] = '\0';
        *ret_len = out.len;
        return out.p;
}
