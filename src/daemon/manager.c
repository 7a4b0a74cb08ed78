/* SPDX-License-Identifier: MIT */
#include "daemon/manager.h"

#include <errno.h>
#include <inttypes.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api.h"
#include "daemon/service.h"
#include "hv/chv.h"
#include "hv/firecracker.h"
#ifdef HAVE_LIBVIRT
#include "hv/libvirt.h"
#endif
#include "hv/qmp.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

uint64_t manager_mono_to_rt(usec_t mono) {
        usec_t now = now_mono(), rt = now_usec(CLOCK_REALTIME);
        return mono >= now ? rt + (mono - now) : rt - MIN(rt, now - mono);
}

static int driver_factory(Ev *ev, const CtlVmSpec *spec, Hv **ret, char *err, size_t errlen) {
        if (strcmp(spec->driver, "qemu") == 0) {
                QmpConfig qc = {
                        .socket_path = spec->socket,
                        .expected_uid = spec->expected_uid < 0 ? UID_ANY : (uid_t) spec->expected_uid,
                };
                int r = qmp_hv_new(ev, &qc, ret);
                if (r < 0)
                        snprintf(err, errlen, "the QEMU driver could not be created: %s", strerror(-r));
                return r;
        }
        uid_t uid = spec->expected_uid < 0 ? UID_ANY : (uid_t) spec->expected_uid;
        if (strcmp(spec->driver, "firecracker") == 0) {
                FcConfig fc = { .socket_path = spec->socket, .expected_uid = uid };
                int r = fc_hv_new(ev, &fc, ret);
                if (r < 0)
                        snprintf(err, errlen, "the Firecracker driver could not be created: %s", strerror(-r));
                return r;
        }
        if (strcmp(spec->driver, "cloud-hypervisor") == 0) {
                ChvConfig cc = { .socket_path = spec->socket, .expected_uid = uid };
                int r = chv_hv_new(ev, &cc, ret);
                if (r < 0)
                        snprintf(err, errlen, "the Cloud Hypervisor driver could not be created: %s", strerror(-r));
                return r;
        }
#ifdef HAVE_LIBVIRT
        if (strcmp(spec->driver, "libvirt") == 0) {
                LibvirtConfig lc = { .uri = spec->uri[0] ? spec->uri : NULL, .domain = spec->domain };
                int r = libvirt_hv_new(ev, &lc, ret);
                if (r == -ELIBACC)
                        snprintf(err, errlen, "%s", libvirt_module_error());
                else if (r < 0)
                        snprintf(err, errlen, "the libvirt driver could not be created: %s", strerror(-r));
                return r;
        }
#endif
        snprintf(err, errlen, "driver \"%s\" is not available in this build of ballastd", spec->driver);
        return -EOPNOTSUPP;
}

/* ---- controller hooks: persistence ---- */

static void hook_target_changed(Controller *c, CtlVm *vm, uint64_t target, void *userdata) {
        Manager *m = userdata;
        char err[256];
        (void) c;
        if (store_vm_set_target(m->store, ctl_vm_id(vm), target, err, sizeof err) < 0) {
                m->store_errors++;
                log_warning("Failed to record the target of VM %s: %s, continuing", ctl_vm_id(vm), err);
        }
}

static void hook_targets_changed(Controller *c, CtlVm *const *vms, size_t n, void *userdata) {
        Manager *m = userdata;
        char err[256];
        (void) c;
        StoreTarget *t = malloc(n * sizeof *t);
        if (!t) {
                for (size_t i = 0; i < n; i++)
                        hook_target_changed(c, vms[i], ctl_vm_target(vms[i]), m);
                return;
        }
        for (size_t i = 0; i < n; i++)
                t[i] = (StoreTarget){ .id = ctl_vm_id(vms[i]), .target = ctl_vm_target(vms[i]) };
        if (store_vm_set_targets(m->store, t, n, err, sizeof err) < 0) {
                m->store_errors++;
                log_warning("Failed to record the targets of %zu VMs: %s, continuing", n, err);
        }
        free(t);
}

static void hook_journal(Controller *c, CtlTrigger trigger, const PlanResult *r, void *userdata) {
        Manager *m = userdata;
        char err[256];
        json_t *targets = json_object(), *reasons = json_object();
        if (!targets || !reasons) {
                json_decref(targets);
                json_decref(reasons);
                return;
        }
        /* Only the VMs this plan moved: the journal stays small with thousands of VMs. */
        for (size_t i = 0; i < ctl_vm_count(c); i++) {
                CtlVmView v;
                ctl_vm_view(ctl_vm_at(c, i), &v);
                if (!v.changed)
                        continue;
                json_object_set_new(targets, v.spec->id, json_integer((json_int_t) v.target));
                const char *why = plan_reason_to_string(v.last.reason);
                if (why)
                        json_object_set_new(reasons, v.spec->id, json_string(why));
        }
        char *text = json_dumps(targets, JSON_COMPACT | JSON_SORT_KEYS);
        char *why_text = json_dumps(reasons, JSON_COMPACT | JSON_SORT_KEYS);
        json_decref(targets);
        json_decref(reasons);
        CtlHostView h;
        ctl_host_view(c, &h);
        StoreJournalEntry e = {
                .time = now_usec(CLOCK_REALTIME),
                .available = h.sample_ok ? h.sample.available : 0,
                .requested = r->requested,
                .planned = r->planned,
                .targets = text,
                .reasons = why_text,
        };
        strscpy(e.trigger, sizeof e.trigger, ctl_trigger_to_string(trigger));
        strscpy(e.state, sizeof e.state, plan_state_to_string(r->ctl.state));
        if (store_journal_append(m->store, &e, err, sizeof err) < 0) {
                m->store_errors++;
                log_warning("Failed to journal a decision: %s, continuing", err);
        }
        free(text);
        free(why_text);
}

static void hook_park_changed(Controller *c, CtlVm *vm, bool parked, uint64_t previous, usec_t until_mono,
                              void *userdata) {
        Manager *m = userdata;
        char err[256];
        (void) c;
        uint64_t until_rt = until_mono ? manager_mono_to_rt(until_mono) : 0;
        if (store_vm_set_park(m->store, ctl_vm_id(vm), parked, previous, until_rt, err, sizeof err) < 0) {
                m->store_errors++;
                log_warning("Failed to record the parking state of VM %s: %s, continuing", ctl_vm_id(vm), err);
        }
}

/* ---- the API's verbs ---- */

static void spec_to_store(const CtlVmSpec *s, StoreVm *ret) {
        *ret = (StoreVm){
                .socket = s->socket[0] ? (char *) s->socket : NULL,
                .uri = s->uri[0] ? (char *) s->uri : NULL,
                .domain = s->domain[0] ? (char *) s->domain : NULL,
                .expected_uid = s->expected_uid,
                .assigned = s->assigned,
                .floor = s->floor,
                .shares = s->shares,
                .created = now_usec(CLOCK_REALTIME),
        };
        strscpy(ret->id, sizeof ret->id, s->id);
        strscpy(ret->driver, sizeof ret->driver, s->driver);
}

int manager_vm_register(Manager *m, const CtlVmSpec *spec, char *err, size_t errlen) {
        if (ctl_vm_find(m->ctl, spec->id)) {
                snprintf(err, errlen, "VM \"%s\" is already registered", spec->id);
                return -EEXIST;
        }
        StoreVm sv;
        spec_to_store(spec, &sv);
        /* Stored before it is managed: a crash right after the answer loses nothing. */
        int r = store_vm_put(m->store, &sv, err, errlen);
        if (r == -EEXIST) {
                snprintf(err, errlen, "VM \"%s\" is already registered", spec->id);
                return r;
        }
        if (r < 0)
                return r == -EINVAL ? r : -EIO;
        r = ctl_vm_add(m->ctl, spec, 0, NULL, err, errlen);
        if (r < 0) {
                char e2[256];
                (void) store_vm_delete(m->store, spec->id, e2, sizeof e2);
                return r == -EOPNOTSUPP ? -EINVAL : r;
        }
        log_info("VM %s registered (%s %s, %" PRIu64 " MiB, floor %" PRIu64 " MiB, shares %" PRIu32 ")", spec->id,
                 spec->driver, spec->socket[0] ? spec->socket : spec->domain, spec->assigned / MiB, spec->floor / MiB,
                 spec->shares);
        return 0;
}

int manager_vm_update(Manager *m, CtlVm *vm, uint64_t assigned, uint64_t floor, uint32_t shares, char *err,
                      size_t errlen) {
        CtlVmView v;
        ctl_vm_view(vm, &v);
        CtlVmSpec s = *v.spec;
        s.assigned = assigned;
        s.floor = floor;
        s.shares = shares;
        StoreVm sv;
        spec_to_store(&s, &sv);
        sv.last_target = MIN(v.target, assigned);
        StoreVm old;
        if (store_vm_get(m->store, s.id, &old, err, errlen) == 0) {
                sv.created = old.created;
                sv.parked = old.parked;
                sv.park_prev = old.park_prev;
                sv.unparked_until = old.unparked_until;
                store_vm_done(&old);
        }
        int r = store_vm_update(m->store, &sv, err, errlen);
        if (r < 0)
                return r == -EINVAL || r == -ENOENT ? r : -EIO;
        ctl_vm_update(m->ctl, vm, assigned, floor, shares);
        return 0;
}

int manager_vm_delete(Manager *m, const char *id, char *err, size_t errlen) {
        if (!ctl_vm_find(m->ctl, id)) {
                snprintf(err, errlen, "no VM \"%s\"", id);
                return -ENOENT;
        }
        int r = store_vm_delete(m->store, id, err, errlen);
        if (r < 0 && r != -ENOENT)
                return -EIO;
        log_info("VM %s unregistered; its full size is given back", id);
        return ctl_vm_remove(m->ctl, id);
}

int manager_set_hold(Manager *m, uint64_t bytes, usec_t hold_for, const char *reason, char *err, size_t errlen) {
        uint64_t now_rt = now_usec(CLOCK_REALTIME);
        if (bytes == 0 || hold_for == 0) {
                int r = store_hold_clear(m->store, err, errlen);
                if (r < 0)
                        return r;
                m->hold_set = false;
                ctl_set_hold(m->ctl, 0, 0);
                log_info("Manual hold cleared");
                return 0;
        }
        int r = store_hold_set(m->store, bytes, now_rt + hold_for, reason, now_rt, err, errlen);
        if (r < 0)
                return r;
        m->hold = (StoreHold){ .bytes = bytes, .until = now_rt + hold_for, .created = now_rt };
        strscpy(m->hold.reason, sizeof m->hold.reason, reason ? reason : "");
        m->hold_set = true;
        ctl_set_hold(m->ctl, bytes, usec_add(now_mono(), hold_for));
        log_info("Manual hold: %" PRIu64 " MiB for %" PRIu64 " s%s%s", bytes / MiB, hold_for / USEC_PER_SEC,
                 reason && reason[0] ? ": " : "", reason ? reason : "");
        return 0;
}

/* ---- lifecycle ---- */

static void on_signal(Ev *ev, int sig, void *userdata) {
        (void) userdata;
        log_info("Received %s, leaving every VM where it is and exiting", sig == SIGTERM ? "SIGTERM" : "SIGINT");
        ev_exit(ev, 0);
}

/* ---- reload (SIGHUP, systemctl reload) ---- */

/* What a running ballastd can take from a new file; everything else waits for a restart. */
static bool key_reloadable(const char *section, const char *key) {
        return strcmp(section, "policy") == 0 || (strcmp(section, "log") == 0 && strcmp(key, "level") == 0) ||
               (strcmp(section, "state") == 0 && strcmp(key, "journal_max") == 0) ||
               (strcmp(section, "park") == 0 && strcmp(key, "size") == 0);
}

typedef struct ReloadDiff {
        char applied[1024];
        size_t n_applied, n_restart;
        bool policy;
} ReloadDiff;

static void reload_on_diff(const char *section, const char *key, const char *old_value, const char *new_value,
                           void *userdata) {
        ReloadDiff *d = userdata;
        if (!key_reloadable(section, key)) {
                d->n_restart++;
                log_warning("Reload: [%s] %s changed (%s -> %s); it takes effect when ballastd restarts, keeping %s",
                            section, key, old_value[0] ? old_value : "unset", new_value[0] ? new_value : "unset",
                            old_value[0] ? old_value : "it unset");
                return;
        }
        if (strcmp(section, "policy") == 0)
                d->policy = true;
        size_t o = strlen(d->applied);
        if (o < sizeof d->applied)
                snprintf(d->applied + o, sizeof d->applied - o, "%s%s.%s %s -> %s", d->n_applied ? ", " : "", section,
                         key, old_value, new_value);
        d->n_applied++;
}

int manager_reload(Manager *m) {
        if (!m->config_path)
                return log_warning_errno(EOPNOTSUPP, "Reload requested, but there is no configuration file to re-read");
        service_reloading(m);
        DaemonConfig next;
        char err[CONFIG_ERR_MAX];
        int r = config_load(m->config_path, &next, err, sizeof err);
        if (r < 0) {
                m->reload_failures++;
                log_error("Reload failed, the running configuration stays in force: %s", err);
                service_reloaded(m);
                return r;
        }
        ReloadDiff d = {};
        (void) config_diff(m->cfg, &next, reload_on_diff, &d);
        /* The policy is validated by the controller before anything is applied, so a refusal
         * leaves everything as it was. */
        if (d.policy) {
                r = ctl_set_policy(m->ctl, &next.policy, err, sizeof err);
                if (r < 0) {
                        m->reload_failures++;
                        log_error("Reload failed, the running configuration stays in force: %s", err);
                        config_done(&next);
                        service_reloaded(m);
                        return r;
                }
                m->cfg->policy = next.policy;
        }
        if (next.state.journal_max != m->cfg->state.journal_max) {
                r = store_set_journal_max(m->store, next.state.journal_max, err, sizeof err);
                if (r < 0)
                        log_warning("Reload: cannot apply [state] journal_max: %s, keeping %" PRIu64, err,
                                    m->cfg->state.journal_max);
                else
                        m->cfg->state.journal_max = next.state.journal_max;
        }
        m->cfg->park.size = next.park.size;
        m->cfg->log.level = next.log.level;
        log_set_max_level(next.log.level);
        /* The tokens file's path is fixed until a restart; its contents are read again. */
        int n_tokens = -1;
        if (m->cfg->api.listen && m->cfg->api.tokens_file) {
                n_tokens = http_server_reload_tokens(m->http, m->cfg->api.tokens_file, err, sizeof err);
                if (n_tokens < 0)
                        log_error("Reload: %s; the previous tokens stay valid", err);
        }
        config_done(&next);
        m->reloads++;
        char tokens[64] = "", waiting[64] = "";
        if (n_tokens >= 0)
                snprintf(tokens, sizeof tokens, "; %d API token%s", n_tokens, n_tokens == 1 ? "" : "s");
        if (d.n_restart)
                snprintf(waiting, sizeof waiting, "; %zu change%s for a restart", d.n_restart,
                         d.n_restart == 1 ? " waits" : "s wait");
        log_notice("Reloaded %s: %s%s%s%s", m->config_path, d.n_applied ? "applied " : "nothing to apply", d.applied,
                   tokens, waiting);
        service_reloaded(m);
        return 0;
}

static void on_sighup(Ev *ev, int sig, void *userdata) {
        (void) ev;
        (void) sig;
        (void) manager_reload(userdata);
}

static int manager_restore(Manager *m, char *err, size_t errlen) {
        StoreVm *vms = NULL;
        size_t n = 0;
        int r = store_vm_load_all(m->store, &vms, &n, err, errlen);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                CtlVmSpec s = {
                        .expected_uid = vms[i].expected_uid,
                        .assigned = vms[i].assigned,
                        .floor = vms[i].floor,
                        .shares = vms[i].shares,
                };
                strscpy(s.id, sizeof s.id, vms[i].id);
                strscpy(s.driver, sizeof s.driver, vms[i].driver);
                strscpy(s.socket, sizeof s.socket, vms[i].socket ? vms[i].socket : "");
                strscpy(s.uri, sizeof s.uri, vms[i].uri ? vms[i].uri : "");
                strscpy(s.domain, sizeof s.domain, vms[i].domain ? vms[i].domain : "");
                char e[512];
                CtlVm *vm = NULL;
                r = ctl_vm_add(m->ctl, &s, vms[i].last_target, &vm, e, sizeof e);
                if (r < 0)
                        /* Kept in the registry: a build with that driver will manage it again. */
                        log_error("VM %s stays registered but is not managed: %s", s.id, e);
                else {
                        uint64_t now_rt = now_usec(CLOCK_REALTIME);
                        usec_t until = vms[i].unparked_until > now_rt
                                               ? usec_add(now_mono(), vms[i].unparked_until - now_rt)
                                               : 0;
                        if (vms[i].parked || until)
                                ctl_vm_restore_park(m->ctl, vm, vms[i].parked, vms[i].park_prev, until);
                }
        }
        if (n)
                log_info("Re-adopting %zu registered VM%s; each actual size is read from its hypervisor", n,
                         n == 1 ? "" : "s");
        store_vm_array_free(vms, n);

        StoreHold h;
        r = store_hold_get(m->store, &h, err, errlen);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return r;
        uint64_t now_rt = now_usec(CLOCK_REALTIME);
        if (h.until <= now_rt) {
                log_info("The stored manual hold expired while ballastd was down; cleared");
                return store_hold_clear(m->store, err, errlen) < 0 ? -EIO : 0;
        }
        m->hold = h;
        m->hold_set = true;
        ctl_set_hold(m->ctl, h.bytes, usec_add(now_mono(), h.until - now_rt));
        log_info("Manual hold restored: %" PRIu64 " MiB for %" PRIu64 " more s", h.bytes / MiB,
                 (h.until - now_rt) / USEC_PER_SEC);
        return 0;
}

/* Gives the heap's free pages back to the host once a minute. Bursts (registering 1,000 VMs,
 * adopting them, large API answers) leave free chunks between live ones, which glibc keeps
 * resident; malloc_trim() releases them (madvise), so ballastd's RSS follows what it holds.
 * It walks the heap: a few hundred microseconds for 1,000 VMs, once a minute. */
#define TRIM_INTERVAL (60 * USEC_PER_SEC)
static void on_trim(EvTimer *t, void *userdata) {
        (void) userdata;
        api_vm_cache_trim(false);
        (void) malloc_trim(0);
        ev_timer_set(t, usec_add(now_mono(), TRIM_INTERVAL));
}

int manager_new(DaemonConfig *cfg, Manager **ret, char *err, size_t errlen) {
        Manager *m = calloc(1, sizeof *m);
        if (!m)
                return -ENOMEM;
        m->cfg = cfg;
        m->started = now_mono();
        m->started_rt = now_usec(CLOCK_REALTIME);
        int r = ev_new(&m->ev);
        if (r < 0) {
                snprintf(err, errlen, "cannot create the event loop: %s", strerror(-r));
                goto fail;
        }
        r = store_open(cfg->state.directory, &m->store, err, errlen);
        if (r < 0)
                goto fail;
        r = store_set_journal_max(m->store, cfg->state.journal_max, err, errlen);
        if (r < 0)
                goto fail;

        CtlConfig cc;
        ctl_config_default(&cc);
        cc.plan = cfg->policy;
        cc.sample_interval = cfg->pressure.sample_interval;
        cc.op_timeout = cfg->driver.op_timeout;
        cc.tolerance = cfg->driver.tolerance;
        cc.stall_min_rate = cfg->driver.stall_min_rate;
        cc.stall_window = cfg->driver.stall_window;
        cc.stall_backoff = cfg->driver.stall_backoff;
        cc.cgroup_dir = cfg->pressure.scope == CONFIG_SCOPE_CGROUP ? cfg->pressure.cgroup : NULL;
        /* sense takes the root that holds proc/: "/proc" → "", "/x/proc" → "/x". */
        static char proc_root[4096];
        const char *pr = cfg->pressure.proc_root ? cfg->pressure.proc_root : "/proc";
        size_t l = strlen(pr);
        if (l >= 5 && strcmp(pr + l - 5, "/proc") == 0 && l - 5 < sizeof proc_root) {
                memcpy(proc_root, pr, l - 5);
                proc_root[l - 5] = '\0';
        } else
                strscpy(proc_root, sizeof proc_root, pr);
        cc.proc_root = proc_root;
        cc.psi_mode = cfg->pressure.psi == CONFIG_PSI_OFF ? -1 : cfg->pressure.psi == CONFIG_PSI_ON ? 1 : 0;
        cc.psi_stall = cfg->pressure.psi_trigger_stall;
        cc.psi_window = cfg->pressure.psi_trigger_window;
        cc.stats_period_s = (uint32_t) (cfg->driver.stats_period / USEC_PER_SEC);
        cc.park_protect = cfg->park.protect_for;
        CtlHooks hooks = { .target_changed = hook_target_changed,
                           .targets_changed = hook_targets_changed,
                           .park_changed = hook_park_changed,
                           .journal = hook_journal,
                           .userdata = m };
        r = ctl_new(m->ev, &cc, driver_factory, &hooks, &m->ctl, err, errlen);
        if (r < 0)
                goto fail;
        r = manager_restore(m, err, errlen);
        if (r < 0)
                goto fail;

        HttpServerConfig hc = {
                .socket_path = cfg->api.socket,
                .listen_tcp = cfg->api.listen,
                .tokens_file = cfg->api.tokens_file,
                .write_gid = cfg->api.write_group ? cfg->api.write_gid : (gid_t) -1,
                .max_connections = (unsigned) cfg->api.max_connections,
                .max_connections_per_peer = (unsigned) cfg->api.max_connections_per_peer,
                .reserved_connections = (unsigned) cfg->api.reserved_connections,
                .max_unauthenticated = (unsigned) cfg->api.max_unauthenticated,
                .header_timeout = cfg->api.header_timeout,
                .body_timeout = cfg->api.body_timeout,
                .connection_timeout = cfg->api.idle_timeout,
                .flat_error_prefix = API_HYPEMAN_RECLAIM,
        };
        r = http_server_new(m->ev, &hc, api_handle, m, &m->http, err, errlen);
        if (r < 0)
                goto fail;
        r = ev_signal_add(m->ev, SIGTERM, on_signal, m);
        if (r >= 0)
                r = ev_signal_add(m->ev, SIGINT, on_signal, m);
        if (r >= 0)
                r = ev_signal_add(m->ev, SIGHUP, on_sighup, m);
        if (r < 0) {
                snprintf(err, errlen, "cannot watch signals: %s", strerror(-r));
                goto fail;
        }
        signal(SIGPIPE, SIG_IGN);
        r = ev_timer_add(m->ev, usec_add(now_mono(), 10 * USEC_PER_SEC), on_trim, m, &m->trim_timer);
        if (r < 0) {
                snprintf(err, errlen, "cannot add a timer: %s", strerror(-r));
                goto fail;
        }
        *ret = m;
        return 0;
fail:
        manager_free(m);
        return r;
}

Manager *manager_free(Manager *m) {
        if (!m)
                return NULL;
        /* The API first (it aborts calls that point into the controller), then the drivers. */
        m->http = http_server_free(m->http);
        api_vm_cache_trim(true);
        m->ctl = ctl_free(m->ctl);
        m->store = store_close(m->store);
        ev_timer_free(m->trim_timer);
        ev_timer_free(m->service_timer);
        m->ev = ev_free(m->ev);
        free(m);
        return NULL;
}

int manager_run(Manager *m) {
        return ev_run(m->ev);
}
