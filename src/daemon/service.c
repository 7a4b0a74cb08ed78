/* SPDX-License-Identifier: MIT */
#include "daemon/service.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>

/* CODE_FILE= and CODE_LINE= name the log call, not this file's call to the journal. */
#define SD_JOURNAL_SUPPRESS_LOCATION 1
#include <systemd/sd-daemon.h>
#include <systemd/sd-journal.h>

#include "daemon/manager.h"
#include "shared/log.h"
#include "shared/macro.h"

/* STATUS= is refreshed at least this often even without a watchdog: `systemctl status` shows it. */
#define STATUS_INTERVAL (10 * USEC_PER_SEC)

/* ---- the journal ---- */

static int journal_sink(int level, int error, const char *file, int line, const char *vm, const char *msg) {
        char f_msg[4200], f_prio[32], f_file[300], f_line[32], f_vm[160], f_errno[32];
        struct iovec iov[7];
        size_t n = 0;
#define FIELD(buf, ...)                                                                                                \
        do {                                                                                                           \
                int k_ = snprintf(buf, sizeof buf, __VA_ARGS__);                                                       \
                iov[n++] = (struct iovec){ buf, MIN((size_t) MAX(k_, 0), sizeof buf - 1) };                            \
        } while (0)
        FIELD(f_msg, "MESSAGE=%s", msg);
        FIELD(f_prio, "PRIORITY=%d", level);
        iov[n++] = (struct iovec){ (char *) "SYSLOG_IDENTIFIER=ballastd", strlen("SYSLOG_IDENTIFIER=ballastd") };
        FIELD(f_file, "CODE_FILE=%s", file);
        FIELD(f_line, "CODE_LINE=%d", line);
        if (vm)
                FIELD(f_vm, "VM=%s", vm);
        if (error > 0)
                FIELD(f_errno, "ERRNO=%d", error);
#undef FIELD
        return sd_journal_sendv(iov, (int) n);
}

bool service_log_to_journal(void) {
        /* JOURNAL_STREAM is "DEV:INODE" of the stream systemd connected; it is inherited, so it
         * counts only while stderr is still that stream (not when a test redirects it). */
        const char *e = getenv("JOURNAL_STREAM");
        unsigned long long dev, ino;
        struct stat st;
        if (!e || sscanf(e, "%llu:%llu", &dev, &ino) != 2 || fstat(STDERR_FILENO, &st) < 0 ||
            (unsigned long long) st.st_dev != dev || (unsigned long long) st.st_ino != ino)
                return false;
        log_set_sink(journal_sink);
        return true;
}

/* ---- readiness, watchdog, status ---- */

char *service_status(Manager *m, char *buf, size_t len) {
        CtlHostView h;
        ctl_host_view(m->ctl, &h);
        size_t n = ctl_vm_count(m->ctl), by_status[_CTL_VM_STATUS_MAX] = {};
        for (size_t i = 0; i < n; i++) {
                CtlVmView v;
                ctl_vm_view(ctl_vm_at(m->ctl, i), &v);
                if (v.status >= 0 && v.status < _CTL_VM_STATUS_MAX)
                        by_status[v.status]++;
        }
        char vms[200] = "";
        size_t o = 0;
        for (int s = 0; s < _CTL_VM_STATUS_MAX; s++)
                if (by_status[s] && o < sizeof vms) {
                        int k = snprintf(vms + o, sizeof vms - o, "%s%zu %s", o ? ", " : "", by_status[s],
                                         ctl_vm_status_to_string((CtlVmStatus) s));
                        o += k > 0 ? (size_t) k : 0;
                }
        PlanHold hold = ctl_hold(m->ctl);
        char holds[64] = "";
        if (hold.bytes && now_mono() < hold.until)
                snprintf(holds, sizeof holds, ", hold %" PRIu64 " MiB", hold.bytes / MiB);
        snprintf(buf, len, "%s; %zu VM%s%s%s%s; reclaim %" PRIu64 " MiB commanded, %" PRIu64 " MiB reached%s%s",
                 h.sample_ok ? plan_state_to_string(h.ctl.state) : "no sample", n, n == 1 ? "" : "s", n ? " (" : "",
                 vms, n ? ")" : "", h.commanded / MiB, h.reached / MiB, holds,
                 h.last.shortfall ? ", short of the request" : "");
        return buf;
}

static void service_notify_status(Manager *m, const char *prefix) {
        char status[512], msg[600];
        service_status(m, status, sizeof status);
        bool changed = strcmp(status, m->service_status_sent) != 0;
        if (!prefix && !changed)
                return;
        if (changed)
                snprintf(msg, sizeof msg, "%s%sSTATUS=%s", prefix ? prefix : "", prefix ? "\n" : "", status);
        else
                snprintf(msg, sizeof msg, "%s", prefix);
        int r = sd_notify(0, msg);
        if (r < 0)
                log_warning_errno(r, "Failed to notify the service manager: %m, ignoring");
        else
                memcpy(m->service_status_sent, status, strlen(status) + 1);
}

static usec_t service_interval(const Manager *m) {
        return m->watchdog_usec ? MIN(m->watchdog_usec / 2, STATUS_INTERVAL) : STATUS_INTERVAL;
}

static void on_service_timer(EvTimer *t, void *userdata) {
        Manager *m = userdata;
        /* Sent from the loop itself: a loop that stops turning stops the pings. */
        service_notify_status(m, m->watchdog_usec ? "WATCHDOG=1" : NULL);
        ev_timer_set(t, usec_add(now_mono(), service_interval(m)));
}

int service_start(Manager *m) {
        const char *ns = getenv("NOTIFY_SOCKET");
        if (!ns || !ns[0])
                return 0;
        uint64_t wd = 0;
        int r = sd_watchdog_enabled(0, &wd);
        if (r < 0)
                log_warning_errno(r, "Invalid watchdog settings from the service manager: %m, ignoring");
        m->watchdog_usec = r > 0 ? wd : 0;
        service_notify_status(m, "READY=1");
        r = ev_timer_add(m->ev, usec_add(now_mono(), service_interval(m)), on_service_timer, m, &m->service_timer);
        if (r < 0)
                return r;
        if (m->watchdog_usec)
                log_debug("Watchdog: pinging every %" PRIu64 " ms", service_interval(m) / USEC_PER_MSEC);
        return 0;
}

void service_reloading(Manager *m) {
        (void) m;
        (void) sd_notify(0, "RELOADING=1\nSTATUS=reloading the configuration");
}

void service_reloaded(Manager *m) {
        m->service_status_sent[0] = '\0';
        service_notify_status(m, "READY=1");
}

void service_stop(Manager *m) {
        (void) sd_notify(0, "STOPPING=1\nSTATUS=stopping; every VM stays where it is");
        m->service_timer = ev_timer_free(m->service_timer);
}
