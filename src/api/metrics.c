/* SPDX-License-Identifier: MIT */
/* Prometheus text exposition (format 0.0.4) of the daemon's state (B8). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "daemon/manager.h"
#include "shared/macro.h"

typedef struct Buf {
        FILE *f;
        char *data;
        size_t len;
} Buf;

static void header(FILE *f, const char *name, const char *type, const char *help) {
        fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Label values: escape backslash, quote and newline. */
static void label(FILE *f, const char *v) {
        for (; *v; v++) {
                if (*v == '\\' || *v == '"')
                        fputc('\\', f), fputc(*v, f);
                else if (*v == '\n')
                        fputs("\\n", f);
                else
                        fputc(*v, f);
        }
}

static void histogram(FILE *f, const char *name, const char *help, const CtlHistogram *h) {
        header(f, name, "histogram", help);
        uint64_t cum = 0;
        for (size_t i = 0; i < CTL_HIST_BUCKETS; i++) {
                cum += h->counts[i];
                fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, ctl_hist_bounds_s[i], (unsigned long long) cum);
        }
        fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long) h->count);
        fprintf(f, "%s_sum %.6f\n%s_count %llu\n", name, h->sum_s, name, (unsigned long long) h->count);
}

typedef uint64_t (*vm_field)(const CtlVmView *v);
static uint64_t f_assigned(const CtlVmView *v) {
        return v->spec->assigned;
}
static uint64_t f_target(const CtlVmView *v) {
        return v->target;
}
static uint64_t f_actual(const CtlVmView *v) {
        return v->actual;
}
static uint64_t f_floor(const CtlVmView *v) {
        return MAX(v->spec->floor, v->last.floor);
}
static uint64_t f_errors(const CtlVmView *v) {
        return v->errors;
}
static uint64_t f_stalls(const CtlVmView *v) {
        return v->stalls;
}
static uint64_t f_commands(const CtlVmView *v) {
        return v->commands;
}
static uint64_t f_rss(const CtlVmView *v) {
        return v->host_rss;
}
static uint64_t f_confirmed(const CtlVmView *v) {
        return v->host_confirmed;
}

static void per_vm(FILE *f, Manager *m, const char *name, const char *type, const char *help, vm_field get,
                   bool known_only) {
        header(f, name, type, help);
        for (size_t i = 0; i < ctl_vm_count(m->ctl); i++) {
                CtlVmView v;
                ctl_vm_view(ctl_vm_at(m->ctl, i), &v);
                if (known_only && !v.actual_known)
                        continue;
                fprintf(f, "%s{vm=\"", name);
                label(f, v.spec->id);
                fprintf(f, "\",driver=\"");
                label(f, v.spec->driver);
                fprintf(f, "\"} %llu\n", (unsigned long long) get(&v));
        }
}

char *metrics_render(Manager *m, size_t *ret_len) {
        char *data = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&data, &len);
        if (!f)
                return NULL;
        CtlHostView h;
        ctl_host_view(m->ctl, &h);
        const CtlStats *st = ctl_stats(m->ctl);

        header(f, "ballast_host_memory_total_bytes", "gauge", "Memory of the pressure scope.");
        fprintf(f, "ballast_host_memory_total_bytes %llu\n", (unsigned long long) (h.sample_ok ? h.sample.total : 0));
        header(f, "ballast_host_memory_available_bytes", "gauge", "Available memory of the pressure scope.");
        fprintf(f, "ballast_host_memory_available_bytes %llu\n",
                (unsigned long long) (h.sample_ok ? h.sample.available : 0));
        header(f, "ballast_host_psi_avg10_ratio", "gauge", "Memory PSI avg10 of the scope, as a ratio (0-1).");
        if (h.sample_ok && h.sample.has_psi) {
                fprintf(f, "ballast_host_psi_avg10_ratio{kind=\"some\"} %.4f\n", h.sample.psi.some.avg10 / 10000.0);
                fprintf(f, "ballast_host_psi_avg10_ratio{kind=\"full\"} %.4f\n",
                        h.sample.psi.has_full ? h.sample.psi.full.avg10 / 10000.0 : 0.0);
        }
        header(f, "ballast_host_sample_ok", "gauge", "1 when the last sample of the scope succeeded.");
        fprintf(f, "ballast_host_sample_ok %d\n", h.sample_ok ? 1 : 0);
        header(f, "ballast_pressure_state", "gauge", "1 for the current pressure state.");
        for (int s = 0; s < _PLAN_STATE_MAX; s++)
                fprintf(f, "ballast_pressure_state{state=\"%s\"} %d\n", plan_state_to_string(s), h.ctl.state == s);
        header(f, "ballast_pressure_transitions_total", "counter", "Pressure state changes.");
        fprintf(f, "ballast_pressure_transitions_total %llu\n", (unsigned long long) h.transitions);

        header(f, "ballast_reclaim_bytes", "gauge",
               "Reclaim by stage: requested (max of automatic and hold), planned, commanded (assigned - target), "
               "reached (host memory given back: fall of the hypervisors' RSS), guest (assigned - actual, the "
               "balloons' side), confirmed (older name of reached).");
        fprintf(f, "ballast_reclaim_bytes{stage=\"automatic\"} %llu\n", (unsigned long long) h.last.automatic);
        fprintf(f, "ballast_reclaim_bytes{stage=\"hold\"} %llu\n", (unsigned long long) h.last.hold);
        fprintf(f, "ballast_reclaim_bytes{stage=\"requested\"} %llu\n", (unsigned long long) h.last.requested);
        fprintf(f, "ballast_reclaim_bytes{stage=\"planned\"} %llu\n", (unsigned long long) h.last.planned);
        fprintf(f, "ballast_reclaim_bytes{stage=\"commanded\"} %llu\n", (unsigned long long) h.commanded);
        fprintf(f, "ballast_reclaim_bytes{stage=\"reached\"} %llu\n", (unsigned long long) h.reached);
        fprintf(f, "ballast_reclaim_bytes{stage=\"guest\"} %llu\n", (unsigned long long) h.guest_reached);
        fprintf(f, "ballast_reclaim_bytes{stage=\"confirmed\"} %llu\n", (unsigned long long) h.confirmed);
        fprintf(f, "ballast_reclaim_bytes{stage=\"shortfall\"} %llu\n", (unsigned long long) h.last.shortfall);
        /* The admission hint in bytes, so a fleet's Prometheus can add hosts up: VMs of size S that
         * fit on a host = floor((free + returnable) / S). */
        PlanCapacity cap;
        if (ctl_capacity(m->ctl, 1, &cap, NULL) >= 0) {
                header(f, "ballast_capacity_free_bytes", "gauge",
                       "Available memory of the scope above its low watermark: room for new VMs now.");
                fprintf(f, "ballast_capacity_free_bytes %llu\n", (unsigned long long) cap.free);
                header(f, "ballast_capacity_returnable_bytes", "gauge",
                       "Host memory reclaim could return from the VMs above their floors.");
                fprintf(f, "ballast_capacity_returnable_bytes %llu\n", (unsigned long long) cap.returnable);
        }
        header(f, "ballast_reclaim_commanded_bytes_total", "counter",
               "Bytes of target changes commanded, by direction.");
        fprintf(f, "ballast_reclaim_commanded_bytes_total{direction=\"reclaim\"} %llu\n",
                (unsigned long long) st->reclaimed_commanded_bytes);
        fprintf(f, "ballast_reclaim_commanded_bytes_total{direction=\"give_back\"} %llu\n",
                (unsigned long long) st->given_back_commanded_bytes);
        header(f, "ballast_ticks_total", "counter", "Controller ticks.");
        fprintf(f, "ballast_ticks_total %llu\n", (unsigned long long) h.ticks);
        header(f, "ballast_balloon_commands_total", "counter", "Balloon target commands sent.");
        fprintf(f, "ballast_balloon_commands_total %llu\n", (unsigned long long) st->commands);
        header(f, "ballast_stalls_total", "counter", "VMs found stalled on the way to their target.");
        fprintf(f, "ballast_stalls_total %llu\n", (unsigned long long) st->stalls);
        header(f, "ballast_driver_errors_total", "counter", "Failed driver operations, by operation.");
        for (int op = 0; op < _HV_OP_MAX; op++)
                fprintf(f, "ballast_driver_errors_total{op=\"%s\"} %llu\n", hv_op_to_string(op),
                        (unsigned long long) st->driver_errors[op]);
        header(f, "ballast_driver_timeouts_total", "counter", "Driver operations that hit their deadline.");
        fprintf(f, "ballast_driver_timeouts_total %llu\n", (unsigned long long) st->driver_timeouts);
        histogram(f, "ballast_reaction_latency_seconds",
                  "From the sample that showed a need to the first reclaim command sent.", &st->reaction);
        histogram(f, "ballast_time_to_target_seconds", "From a target command to the VM reaching it.",
                  &st->time_to_target);

        header(f, "ballast_vms", "gauge", "Registered VMs.");
        fprintf(f, "ballast_vms %zu\n", ctl_vm_count(m->ctl));
        per_vm(f, m, "ballast_vm_assigned_bytes", "gauge", "Full memory of the VM.", f_assigned, false);
        per_vm(f, m, "ballast_vm_target_bytes", "gauge", "Target guest memory commanded.", f_target, true);
        per_vm(f, m, "ballast_vm_actual_bytes", "gauge", "Guest memory reported by the hypervisor.", f_actual, true);
        per_vm(f, m, "ballast_vm_floor_bytes", "gauge", "Floor in force.", f_floor, false);
        per_vm(f, m, "ballast_vm_driver_errors_total", "counter", "Failed driver operations of the VM.", f_errors,
               false);
        per_vm(f, m, "ballast_vm_stalls_total", "counter", "Stalls of the VM.", f_stalls, false);
        per_vm(f, m, "ballast_vm_commands_total", "counter", "Balloon commands sent to the VM.", f_commands, false);
        per_vm(f, m, "ballast_vm_host_rss_bytes", "gauge", "Resident memory of the VM's hypervisor process.", f_rss,
               false);
        per_vm(f, m, "ballast_vm_host_confirmed_bytes", "gauge",
               "Fall of the hypervisor's resident memory since the VM was last at full size.", f_confirmed, false);

        HttpCounters hc = { 0 };
        if (m->http)
                http_server_counters(m->http, &hc);
        header(f, "ballast_api_requests_total", "counter", "API requests, by outcome class.");
        fprintf(f, "ballast_api_requests_total{class=\"all\"} %llu\n", (unsigned long long) hc.requests);
        fprintf(f, "ballast_api_requests_total{class=\"4xx\"} %llu\n", (unsigned long long) hc.errors_4xx);
        fprintf(f, "ballast_api_requests_total{class=\"5xx\"} %llu\n", (unsigned long long) hc.errors_5xx);
        header(f, "ballast_api_connections_refused_total", "counter",
               "Connections closed at accept: over a connection limit (per listener, per peer, unauthenticated).");
        fprintf(f, "ballast_api_connections_refused_total %llu\n", (unsigned long long) hc.refused);
        header(f, "ballast_api_header_timeouts_total", "counter", "Request heads that missed [api] header_timeout.");
        fprintf(f, "ballast_api_header_timeouts_total %llu\n", (unsigned long long) hc.timeouts);
        header(f, "ballast_api_accept_backoffs_total", "counter",
               "Times accept() was paused for lack of file descriptors.");
        fprintf(f, "ballast_api_accept_backoffs_total %llu\n", (unsigned long long) hc.accept_backoff);

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
        header(f, "ballast_hv_events_total", "counter", "Unsolicited messages from the hypervisors (QMP events).");
        fprintf(f, "ballast_hv_events_total %llu\n", (unsigned long long) hv.events);
        header(f, "ballast_hv_events_dropped_total", "counter",
               "Hypervisor events over the per-VM rate limit, dropped without being acted on.");
        fprintf(f, "ballast_hv_events_dropped_total %llu\n", (unsigned long long) hv.events_dropped);
        header(f, "ballast_hv_interim_responses_total", "counter", "Interim (1xx) HTTP responses from hypervisors.");
        fprintf(f, "ballast_hv_interim_responses_total %llu\n", (unsigned long long) hv.interim_responses);
        header(f, "ballast_hv_read_yields_total", "counter",
               "Hypervisor reads stopped at the per-wakeup budget so that others could run.");
        fprintf(f, "ballast_hv_read_yields_total %llu\n", (unsigned long long) hv.read_yields);
        header(f, "ballast_store_errors_total", "counter", "Failed writes to the state database.");
        fprintf(f, "ballast_store_errors_total %llu\n", (unsigned long long) m->store_errors);
        if (fclose(f) != 0) {
                free(data);
                return NULL;
        }
        *ret_len = len;
        return data;
}
