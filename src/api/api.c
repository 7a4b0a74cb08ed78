/* SPDX-License-Identifier: MIT */
#include "api/api.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/hypeman.h"
#include "config.h"
#include "daemon/manager.h"
#include "shared/log.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "store/store.h"

/* ---- strict body parsing (pure) ---- */

typedef struct Field {
        const char *name;
        bool required;
        bool seen;
} Field;

static int body_load(const char *body, size_t len, json_t **ret, char *err, size_t errlen) {
        if (!body || len == 0) {
                snprintf(err, errlen, "a JSON object body is required");
                return -EINVAL;
        }
        if (memchr(body, '\0', len)) {
                snprintf(err, errlen, "the body contains a NUL byte");
                return -EINVAL;
        }
        json_error_t je;
        json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        if (!j) {
                snprintf(err, errlen, "malformed JSON at line %d column %d: %s", je.line, je.column, je.text);
                return -EINVAL;
        }
        if (!json_is_object(j)) {
                json_decref(j);
                snprintf(err, errlen, "the body must be a JSON object");
                return -EINVAL;
        }
        *ret = j;
        return 0;
}

/* Every key must be one of fields[]; every required one present. */
static int body_check_fields(json_t *j, Field *fields, size_t n, char *err, size_t errlen) {
        const char *key;
        json_t *v;
        json_object_foreach(j, key, v) {
                size_t i;
                for (i = 0; i < n; i++)
                        if (strcmp(fields[i].name, key) == 0)
                                break;
                if (i == n) {
                        snprintf(err, errlen, "unknown field \"%.64s\"", key);
                        return -EINVAL;
                }
                fields[i].seen = true;
        }
        for (size_t i = 0; i < n; i++)
                if (fields[i].required && !fields[i].seen) {
                        snprintf(err, errlen, "field \"%s\" is required", fields[i].name);
                        return -EINVAL;
                }
        return 0;
}

static int get_size(json_t *j, const char *name, uint64_t min, uint64_t max, uint64_t *ret, char *err, size_t errlen) {
        json_t *v = json_object_get(j, name);
        if (!v)
                return 0;
        if (!json_is_integer(v)) {
                snprintf(err, errlen, "field \"%s\" must be an integer (bytes)", name);
                return -EINVAL;
        }
        json_int_t x = json_integer_value(v);
        if (x < 0) {
                snprintf(err, errlen, "field \"%s\" must not be negative", name);
                return -EINVAL;
        }
        if ((uint64_t) x < min || (uint64_t) x > max) {
                snprintf(err, errlen, "field \"%s\" must be between %" PRIu64 " and %" PRIu64, name, min, max);
                return -EINVAL;
        }
        *ret = (uint64_t) x;
        return 1;
}

/* Whether utf8_sanitize() would leave s as it is. */
static bool text_is_clean(const char *s) {
        size_t n = strlen(s);
        char *t = malloc(n + 1);
        bool clean = t && utf8_sanitize(t, n + 1, s, n, 0) == n && memcmp(s, t, n) == 0;
        free(t);
        return clean;
}

/* A JSON string of text that crossed a trust boundary (a hypervisor's or a client's words): valid
 * UTF-8 without control characters, so json_string() cannot fail and drop the key. */
static json_t *json_text(const char *s) {
        char buf[1024];
        size_t n = strlen(s);
        char *t = n < sizeof buf ? buf : malloc(n + 1);
        if (!t)
                return json_string("?");
        size_t k = utf8_sanitize(t, n + 1, s, n, 0);
        json_t *j = json_stringn(t, k);
        if (t != buf)
                free(t);
        return j;
}

static int get_string(json_t *j, const char *name, size_t max, const char **ret, char *err, size_t errlen) {
        json_t *v = json_object_get(j, name);
        if (!v)
                return 0;
        if (!json_is_string(v)) {
                snprintf(err, errlen, "field \"%s\" must be a string", name);
                return -EINVAL;
        }
        if (json_string_length(v) > max) {
                snprintf(err, errlen, "field \"%s\" is longer than %zu bytes", name, max);
                return -EINVAL;
        }
        if (strlen(json_string_value(v)) != json_string_length(v)) {
                snprintf(err, errlen, "field \"%s\" contains a NUL character", name);
                return -EINVAL;
        }
        /* Paths, names and durations have no business holding control characters: they would
         * come back in answers, logs and terminals. (Free text, "reason", is cleaned instead.) */
        if (strcmp(name, "reason") != 0 && !text_is_clean(json_string_value(v))) {
                snprintf(err, errlen, "field \"%s\" contains a control character", name);
                return -EINVAL;
        }
        *ret = json_string_value(v);
        return 1;
}

int api_parse_vm_create(const char *body, size_t len, CtlVmSpec *ret, char *err, size_t errlen) {
        json_t *j = NULL;
        int r = body_load(body, len, &j, err, errlen);
        if (r < 0)
                return r;
        Field f[] = {
                { "id", true },      { "driver", true },        { "socket", false },        { "uri", false },
                { "domain", false }, { "expected_uid", false }, { "assigned_bytes", true }, { "floor_bytes", false },
                { "shares", false }
        };
        CtlVmSpec s = { .expected_uid = -1, .shares = 1000 };
        const char *id = NULL, *driver = NULL, *sock = NULL, *uri = NULL, *domain = NULL;
        uint64_t shares = 1000, uid;
        r = body_check_fields(j, f, ELEMENTSOF(f), err, errlen);
        if (r >= 0)
                r = get_string(j, "id", CTL_ID_MAX, &id, err, errlen);
        if (r >= 0 && (!store_vm_id_is_valid(id) || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)) {
                snprintf(err, errlen, "field \"id\" must be 1-64 characters of A-Z a-z 0-9 . _ -");
                r = -EINVAL;
        }
        if (r >= 0)
                r = get_string(j, "driver", 31, &driver, err, errlen);
        if (r >= 0 && !store_driver_is_valid(driver)) {
                snprintf(err, errlen,
                         "field \"driver\" must be one of qemu, firecracker, cloud-hypervisor, libvirt (got \"%.31s\")",
                         driver);
                r = -EINVAL;
        }
        if (r >= 0)
                r = get_string(j, "socket", CTL_FIELD_MAX - 1, &sock, err, errlen);
        if (r >= 0)
                r = get_string(j, "uri", CTL_FIELD_MAX - 1, &uri, err, errlen);
        if (r >= 0)
                r = get_string(j, "domain", CTL_FIELD_MAX - 1, &domain, err, errlen);
        if (r >= 0) {
                bool lv = strcmp(driver, "libvirt") == 0;
                if (lv && !uri)
                        uri = "qemu:///system";
                if (lv && (!domain || sock)) {
                        snprintf(err, errlen,
                                 "driver libvirt takes fields \"domain\" and \"uri\" (default qemu:///system), not "
                                 "\"socket\"");
                        r = -EINVAL;
                } else if (!lv && (!sock || uri || domain)) {
                        snprintf(err, errlen, "driver %s takes field \"socket\" (not \"uri\"/\"domain\")", driver);
                        r = -EINVAL;
                } else if (!lv && sock[0] != '/') {
                        snprintf(err, errlen, "field \"socket\" must be an absolute path");
                        r = -EINVAL;
                } else if (lv && (!uri[0] || !domain[0])) {
                        snprintf(err, errlen, "fields \"uri\" and \"domain\" must not be empty");
                        r = -EINVAL;
                }
        }
        if (r >= 0 && (r = get_size(j, "expected_uid", 0, UINT32_MAX - 1, &uid, err, errlen)) > 0)
                s.expected_uid = (int64_t) uid;
        if (r >= 0)
                r = get_size(j, "assigned_bytes", MiB, API_SIZE_MAX, &s.assigned, err, errlen);
        if (r >= 0)
                r = get_size(j, "floor_bytes", 0, API_SIZE_MAX, &s.floor, err, errlen);
        if (r >= 0 && s.floor > s.assigned) {
                snprintf(err, errlen, "field \"floor_bytes\" must not exceed \"assigned_bytes\"");
                r = -EINVAL;
        }
        if (r >= 0 && (r = get_size(j, "shares", 1, 1000000, &shares, err, errlen)) > 0)
                s.shares = (uint32_t) shares;
        if (r >= 0) {
                strscpy(s.id, sizeof s.id, id);
                strscpy(s.driver, sizeof s.driver, driver);
                strscpy(s.socket, sizeof s.socket, sock ? sock : "");
                strscpy(s.uri, sizeof s.uri, uri ? uri : "");
                strscpy(s.domain, sizeof s.domain, domain ? domain : "");
                *ret = s;
                r = 0;
        }
        json_decref(j);
        return r;
}

int api_parse_vm_patch(const char *body, size_t len, ApiVmPatch *ret, char *err, size_t errlen) {
        json_t *j = NULL;
        int r = body_load(body, len, &j, err, errlen);
        if (r < 0)
                return r;
        Field f[] = { { "assigned_bytes", false }, { "floor_bytes", false }, { "shares", false } };
        ApiVmPatch p = { 0 };
        uint64_t shares = 0;
        r = body_check_fields(j, f, ELEMENTSOF(f), err, errlen);
        if (r >= 0 && (r = get_size(j, "assigned_bytes", MiB, API_SIZE_MAX, &p.assigned, err, errlen)) > 0)
                p.has_assigned = true;
        if (r >= 0 && (r = get_size(j, "floor_bytes", 0, API_SIZE_MAX, &p.floor, err, errlen)) > 0)
                p.has_floor = true;
        if (r >= 0 && (r = get_size(j, "shares", 1, 1000000, &shares, err, errlen)) > 0) {
                p.has_shares = true;
                p.shares = (uint32_t) shares;
        }
        if (r >= 0 && !p.has_assigned && !p.has_floor && !p.has_shares) {
                snprintf(err, errlen, "nothing to change: give assigned_bytes, floor_bytes or shares");
                r = -EINVAL;
        }
        if (r >= 0) {
                *ret = p;
                r = 0;
        }
        json_decref(j);
        return r;
}

/* hold_for: ballast's durations ("90", "5m", "1m30s"), or Go's for hypeman's clients (no bare
 * numbers, fractions allowed, a sign refused when negative). At most 1h. */
static int hold_parse(const char *hold, bool hypeman, usec_t *ret, char *err, size_t errlen) {
        usec_t d;
        bool neg = false;
        if (hypeman ? hypeman_parse_duration(hold, &d, &neg) < 0 : parse_duration(hold, &d) < 0) {
                snprintf(err, errlen,
                         "field \"hold_for\": \"%.32s\" is not a %sduration (e.g. \"90s\", \"%s\", \"0s\")", hold,
                         hypeman ? "Go " : "", hypeman ? "1m30s" : "5m");
                return -EINVAL;
        }
        if (neg) {
                snprintf(err, errlen, "field \"hold_for\" must not be negative");
                return -EINVAL;
        }
        if (d > API_HOLD_FOR_MAX) {
                snprintf(err, errlen, "field \"hold_for\" must be at most 1h");
                return -EINVAL;
        }
        *ret = d;
        return 0;
}

static int reclaim_parse(const char *body, size_t len, bool hypeman, ApiReclaim *ret, char *err, size_t errlen) {
        json_t *j = NULL;
        int r = body_load(body, len, &j, err, errlen);
        if (r < 0)
                return r;
        Field f[] = { { "reclaim_bytes", true }, { "hold_for", false }, { "dry_run", false }, { "reason", false } };
        ApiReclaim a = { .hold_for = API_HOLD_FOR_DEFAULT };
        const char *hold = NULL, *reason = NULL;
        r = body_check_fields(j, f, ELEMENTSOF(f), err, errlen);
        if (r >= 0)
                r = get_size(j, "reclaim_bytes", 0, API_SIZE_MAX, &a.reclaim_bytes, err, errlen);
        if (r >= 0 && hypeman)
                a.hold_for = a.reclaim_bytes > 0 ? API_HOLD_FOR_DEFAULT : 0;
        if (r >= 0 && (r = get_string(j, "hold_for", 32, &hold, err, errlen)) > 0)
                r = hold_parse(hold, hypeman, &a.hold_for, err, errlen);
        json_t *dr = json_object_get(j, "dry_run");
        if (r >= 0 && dr) {
                if (!json_is_boolean(dr)) {
                        snprintf(err, errlen, "field \"dry_run\" must be true or false");
                        r = -EINVAL;
                } else
                        a.dry_run = json_is_true(dr);
        }
        if (r >= 0 && (r = get_string(j, "reason", 4 * API_REASON_MAX, &reason, err, errlen)) > 0) {
                if (utf8_count(reason, strlen(reason)) > API_REASON_MAX) {
                        snprintf(err, errlen, "field \"reason\" is longer than %d characters", API_REASON_MAX);
                        r = -EINVAL;
                } else
                        utf8_sanitize(a.reason, sizeof a.reason, reason, strlen(reason), 0);
        } else if (r == -EINVAL && strstr(err, "\"reason\" is longer"))
                snprintf(err, errlen, "field \"reason\" is longer than %d characters", API_REASON_MAX);
        if (r >= 0) {
                *ret = a;
                r = 0;
        }
        json_decref(j);
        return r;
}

int api_parse_reclaim(const char *body, size_t len, ApiReclaim *ret, char *err, size_t errlen) {
        return reclaim_parse(body, len, false, ret, err, errlen);
}

int api_parse_reclaim_hypeman(const char *body, size_t len, ApiReclaim *ret, char *err, size_t errlen) {
        return reclaim_parse(body, len, true, ret, err, errlen);
}

int api_parse_target(const char *body, size_t len, uint64_t *ret, char *err, size_t errlen) {
        json_t *j = NULL;
        int r = body_load(body, len, &j, err, errlen);
        if (r < 0)
                return r;
        Field f[] = { { "target_bytes", true } };
        uint64_t t = 0;
        r = body_check_fields(j, f, ELEMENTSOF(f), err, errlen);
        if (r >= 0)
                r = get_size(j, "target_bytes", 0, API_SIZE_MAX, &t, err, errlen);
        if (r >= 0) {
                *ret = t;
                r = 0;
        }
        json_decref(j);
        return r;
}

int api_parse_park(const char *body, size_t len, bool unpark, ApiPark *ret, char *err, size_t errlen) {
        ApiPark p = { 0 };
        if (!body || len == 0) {
                *ret = p;
                return 0;
        }
        json_t *j = NULL;
        int r = body_load(body, len, &j, err, errlen);
        if (r < 0)
                return r;
        Field f[] = { { "size_bytes", false }, { "timeout", false }, { "wait", false } };
        r = body_check_fields(j, f, unpark ? 3 : 2, err, errlen);
        if (r >= 0)
                r = get_size(j, "size_bytes", MiB, API_SIZE_MAX, &p.size_bytes, err, errlen);
        const char *to = NULL;
        if (r >= 0 && (r = get_string(j, "timeout", 32, &to, err, errlen)) > 0) {
                usec_t d;
                if (parse_duration(to, &d) < 0 || d < USEC_PER_MSEC || d > 10 * 60 * USEC_PER_SEC) {
                        snprintf(err, errlen, "field \"timeout\" must be a duration from 1ms to 10m (got \"%.32s\")",
                                 to);
                        r = -EINVAL;
                } else
                        p.timeout = d;
        }
        json_t *w = json_object_get(j, "wait");
        if (r >= 0 && w) {
                if (!json_is_boolean(w)) {
                        snprintf(err, errlen, "field \"wait\" must be true or false");
                        r = -EINVAL;
                } else
                        p.wait = json_is_true(w);
        }
        if (r >= 0) {
                *ret = p;
                r = 0;
        }
        json_decref(j);
        return r;
}

/* ---- JSON views ---- */

static json_t *json_time(uint64_t rt_usec) {
        if (!rt_usec)
                return json_null();
        time_t sec = (time_t) (rt_usec / USEC_PER_SEC);
        struct tm tm;
        char buf[64];
        gmtime_r(&sec, &tm);
        size_t k = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(buf + k, sizeof buf - k, ".%03uZ", (unsigned) (rt_usec % USEC_PER_SEC / 1000));
        return json_string(buf);
}

static json_t *json_u64(uint64_t v) {
        return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t) v);
}

/* Everything a VM object shows, read once from the controller's view: vm_json() writes only
 * these, so their hash (with the strings' contents) tells when a cached object is stale. Filled
 * after a memset, field by field: no padding byte differs between two equal sets. */
typedef struct VmFacts {
        const char *id, *driver, *uri, *domain, *socket, *last_error;
        int64_t expected_uid;
        uint64_t assigned, floor, target, actual, desired, eff_floor, errors, commands, stalls, park_previous;
        uint64_t guest_used, guest_available, guest_total, host_rss, host_confirmed, resident, returnable;
        usec_t updated, protected_until; /* monotonic; 0: none */
        uint32_t shares;
        int32_t status, reason, hv_pid;
        bool libvirt, actual_known, parked, guest_fresh, guest_pressure;
} VmFacts;

static void vm_facts(const CtlVm *vm, usec_t now, VmFacts *ret) {
        CtlVmView v;
        ctl_vm_view(vm, &v);
        memset(ret, 0, sizeof *ret);
        ret->id = v.spec->id;
        ret->driver = v.spec->driver;
        ret->uri = v.spec->uri;
        ret->domain = v.spec->domain;
        ret->socket = v.spec->socket;
        ret->last_error = v.last_error;
        ret->expected_uid = v.spec->expected_uid;
        ret->assigned = v.spec->assigned;
        ret->floor = v.spec->floor;
        ret->target = v.target;
        ret->actual = v.actual;
        ret->desired = v.last.desired;
        ret->eff_floor = v.last.floor;
        ret->errors = v.errors;
        ret->commands = v.commands;
        ret->stalls = v.stalls;
        ret->park_previous = v.park_previous;
        ret->guest_used = v.guest_used;
        ret->guest_available = v.guest.available;
        ret->guest_total = v.guest.total;
        ret->host_rss = v.host_rss;
        ret->host_confirmed = v.host_confirmed;
        ret->resident = v.resident;
        ret->returnable = v.last.returnable;
        ret->updated = v.updated;
        ret->protected_until = v.unparked_until > now ? v.unparked_until : 0;
        ret->shares = v.spec->shares;
        ret->status = (int32_t) v.status;
        ret->reason = (int32_t) v.last.reason;
        ret->hv_pid = (int32_t) v.hv_pid;
        ret->libvirt = strcmp(v.spec->driver, "libvirt") == 0;
        ret->actual_known = v.actual_known;
        ret->parked = v.parked;
        ret->guest_fresh = v.guest_fresh;
        ret->guest_pressure = v.guest_pressure;
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
        const unsigned char *b = p;
        for (size_t i = 0; i < n; i++)
                h = (h ^ b[i]) * UINT64_C(0x100000001b3);
        return h;
}

static uint64_t vm_facts_hash(const VmFacts *f) {
        uint64_t h = fnv1a(UINT64_C(0xcbf29ce484222325), f, sizeof *f);
        const char *s[] = { f->id, f->driver, f->uri, f->domain, f->socket, f->last_error };
        for (size_t i = 0; i < ELEMENTSOF(s); i++)
                h = fnv1a(h, s[i], strlen(s[i]) + 1);
        return h;
}

/* Realtime minus monotonic now: the API's timestamps are monotonic times moved by it. */
static int64_t rt_offset(void) {
        return (int64_t) (now_usec(CLOCK_REALTIME) - now_mono());
}

static json_t *json_time_mono(usec_t mono, int64_t rt_off) {
        return json_time((uint64_t) MAX((int64_t) mono + rt_off, (int64_t) 1));
}

static json_t *vm_json_facts(const VmFacts *f, int64_t rt_off) {
        json_t *o = json_object();
        json_object_set_new(o, "id", json_text(f->id));
        json_object_set_new(o, "driver", json_text(f->driver));
        if (f->libvirt) {
                json_object_set_new(o, "uri", json_text(f->uri));
                json_object_set_new(o, "domain", json_text(f->domain));
        } else
                json_object_set_new(o, "socket", json_text(f->socket));
        json_object_set_new(o, "expected_uid", f->expected_uid < 0 ? json_null() : json_integer(f->expected_uid));
        json_object_set_new(o, "assigned_bytes", json_u64(f->assigned));
        json_object_set_new(o, "floor_bytes", json_u64(f->floor));
        json_object_set_new(o, "shares", json_integer(f->shares));
        json_object_set_new(o, "status", json_string(ctl_vm_status_to_string((CtlVmStatus) f->status)));
        json_object_set_new(o, "target_bytes", f->actual_known ? json_u64(f->target) : json_null());
        json_object_set_new(o, "actual_bytes", f->actual_known ? json_u64(f->actual) : json_null());
        json_object_set_new(o, "desired_bytes", f->actual_known ? json_u64(f->desired) : json_null());
        json_object_set_new(o, "effective_floor_bytes", json_u64(f->eff_floor));
        json_object_set_new(o, "reason", json_string(plan_reason_to_string((PlanReason) f->reason)));
        json_object_set_new(o, "last_error", f->last_error[0] ? json_text(f->last_error) : json_null());
        json_object_set_new(o, "errors", json_u64(f->errors));
        json_object_set_new(o, "commands", json_u64(f->commands));
        json_object_set_new(o, "stalls", json_u64(f->stalls));
        json_object_set_new(o, "updated", f->updated ? json_time_mono(f->updated, rt_off) : json_null());
        json_object_set_new(o, "parked", json_boolean(f->parked));
        json_object_set_new(o, "park_previous_bytes", f->parked ? json_u64(f->park_previous) : json_null());
        json_object_set_new(o, "protected_until",
                            f->protected_until ? json_time_mono(f->protected_until, rt_off) : json_null());
        json_t *g = json_object();
        json_object_set_new(g, "fresh", json_boolean(f->guest_fresh));
        json_object_set_new(g, "pressure", json_boolean(f->guest_pressure));
        json_object_set_new(g, "used_bytes", f->guest_fresh ? json_u64(f->guest_used) : json_null());
        json_object_set_new(g, "available_bytes",
                            f->guest_available == HV_STAT_UNSET ? json_null() : json_u64(f->guest_available));
        json_object_set_new(g, "total_bytes", f->guest_total == HV_STAT_UNSET ? json_null() : json_u64(f->guest_total));
        json_object_set_new(o, "guest", g);
        json_object_set_new(o, "hypervisor_pid", f->hv_pid > 0 ? json_integer(f->hv_pid) : json_null());
        json_object_set_new(o, "host_rss_bytes", f->host_rss ? json_u64(f->host_rss) : json_null());
        json_object_set_new(o, "host_confirmed_bytes", f->host_rss ? json_u64(f->host_confirmed) : json_null());
        json_object_set_new(o, "resident_bytes", f->resident ? json_u64(f->resident) : json_null());
        json_object_set_new(o, "returnable_bytes", f->actual_known ? json_u64(f->returnable) : json_null());
        return o;
}

static json_t *vm_json(const CtlVm *vm) {
        VmFacts f;
        vm_facts(vm, now_mono(), &f);
        return vm_json_facts(&f, rt_offset());
}

/* ---- GET /v1/vms: cached VM objects ----
 *
 * With 1,000 VMs the list is about 650 KB; building it with jansson took 17 ms of the loop's only
 * thread, and every request behind it waited. Each VM's compact object is kept with the hash of
 * the facts it was written from, and rebuilt only when they changed (or when the realtime clock
 * moved by more than API_VM_CACHE_CLOCK_SLACK against the monotonic one). The entries follow
 * ctl_vm_at() order; an entry that now belongs to another VM simply fails the hash. The objects
 * are freed after API_VM_CACHE_IDLE without a list (api_vm_cache_trim()). */
#define API_VM_CACHE_CLOCK_SLACK (10 * USEC_PER_MSEC)
#define API_VM_CACHE_IDLE        (60 * USEC_PER_SEC)

typedef struct VmCacheEntry {
        uint64_t hash;
        int64_t rt_off;
        char *json; /* compact, not NUL-terminated; NULL: nothing cached */
        size_t len;
} VmCacheEntry;

static struct {
        VmCacheEntry *e;
        size_t n;
        usec_t used; /* monotonic of the last list */
        uint64_t builds;
} vm_cache;

/* Brings the cached objects up to date, rebuilding stale ones until the monotonic clock passes
 * deadline (USEC_INFINITY: all of them). Returns how many are still stale (0: the cache matches
 * every VM now), or -ENOMEM. */
static ssize_t vm_cache_refresh(Manager *m, usec_t deadline) {
        size_t n = ctl_vm_count(m->ctl), stale = 0, built = 0;
        usec_t now = now_mono();
        int64_t off = rt_offset();
        if (n > vm_cache.n) {
                VmCacheEntry *e = reallocarray(vm_cache.e, n, sizeof *e);
                if (!e)
                        return -ENOMEM;
                memset(e + vm_cache.n, 0, (n - vm_cache.n) * sizeof *e);
                vm_cache.e = e;
                vm_cache.n = n;
        }
        vm_cache.used = now;
        for (size_t i = 0; i < n; i++) {
                VmCacheEntry *c = &vm_cache.e[i];
                VmFacts f;
                vm_facts(ctl_vm_at(m->ctl, i), now, &f);
                uint64_t h = vm_facts_hash(&f);
                int64_t drift = c->rt_off - off;
                if (c->json && c->hash == h && drift <= (int64_t) API_VM_CACHE_CLOCK_SLACK &&
                    drift >= -(int64_t) API_VM_CACHE_CLOCK_SLACK)
                        continue;
                /* At least one per call: a slow walk over the facts still makes progress. */
                if (stale > 0 || (built > 0 && deadline != USEC_INFINITY && now_mono() >= deadline)) {
                        stale++;
                        continue;
                }
                free(c->json);
                *c = (VmCacheEntry){ 0 };
                json_t *o = vm_json_facts(&f, off);
                c->json = o ? json_dumps(o, JSON_COMPACT) : NULL;
                json_decref(o);
                if (!c->json)
                        return -ENOMEM;
                c->len = strlen(c->json);
                c->hash = h;
                c->rt_off = off;
                vm_cache.builds++;
                built++;
        }
        return (ssize_t) stale;
}

/* The list body from an up-to-date cache: {"vms":[…]} and a newline, in a new buffer of *ret_len
 * bytes; NULL when out of memory. */
static char *vm_cache_join(Manager *m, size_t *ret_len) {
        static const char head[] = "{\"vms\":[", tail[] = "]}\n";
        size_t n = MIN(ctl_vm_count(m->ctl), vm_cache.n), total = sizeof head + sizeof tail;
        for (size_t i = 0; i < n; i++)
                total += vm_cache.e[i].len + 1;
        char *buf = malloc(total);
        if (!buf)
                return NULL;
        size_t o = sizeof head - 1;
        memcpy(buf, head, o);
        for (size_t i = 0; i < n; i++) {
                if (i)
                        buf[o++] = ',';
                memcpy(buf + o, vm_cache.e[i].json, vm_cache.e[i].len);
                o += vm_cache.e[i].len;
        }
        memcpy(buf + o, tail, sizeof tail - 1);
        *ret_len = o + sizeof tail - 1;
        return buf;
}

/* A list whose stale objects are rebuilt for API_VM_LIST_SLICE of each loop turn (about 100 of
 * them with 1,000 VMs), so that requests behind it are served in between. With VMs changing all
 * the time the cache may never be complete at the end of a slice (a loop turn under load takes
 * 15-190 ms, and as many VMs change meanwhile), so once the request has waited API_VM_LIST_WAIT
 * its next turn builds the rest at once: a time bound, not a count of turns, which under load
 * meant seconds. The answer is joined in the turn that finds the cache complete: a snapshot of
 * one instant. The debug log tells, for a list that took more than one turn, how many turns began
 * after API_VM_LIST_WAIT (one at most; tests/e2e/test_api_list.py checks it). */
#define API_VM_LIST_SLICE (2 * USEC_PER_MSEC)
#define API_VM_LIST_WAIT  (50 * USEC_PER_MSEC)

typedef struct ListCall {
        Manager *m;
        HttpCall *call;
        EvTimer *timer;
        usec_t started; /* monotonic, when the request was routed */
        unsigned turns;
        unsigned late_turns; /* turns that began after API_VM_LIST_WAIT */
        struct ListCall *next;
} ListCall;

static ListCall *list_calls; /* waiting for their next turn */

static void list_call_free(ListCall *lc) {
        for (ListCall **p = &list_calls; *p; p = &(*p)->next)
                if (*p == lc) {
                        *p = lc->next;
                        break;
                }
        ev_timer_free(lc->timer);
        free(lc);
}

static void list_call_step(ListCall *lc);
static void on_list_turn(EvTimer *t, void *userdata) {
        (void) t;
        list_call_step(userdata);
}

static void list_call_step(ListCall *lc) {
        usec_t begun = now_mono();
        if (begun - lc->started >= API_VM_LIST_WAIT)
                lc->late_turns++;
        lc->turns++;
        bool last = begun - lc->started >= API_VM_LIST_WAIT;
        ssize_t stale = vm_cache_refresh(lc->m, last ? USEC_INFINITY : begun + API_VM_LIST_SLICE);
        if (stale > 0) {
                if (!lc->timer) {
                        if (ev_timer_add(lc->m->ev, now_mono(), on_list_turn, lc, &lc->timer) < 0)
                                stale = vm_cache_refresh(lc->m, USEC_INFINITY);
                        else {
                                lc->next = list_calls;
                                list_calls = lc;
                                return;
                        }
                } else {
                        ev_timer_set(lc->timer, now_mono());
                        return;
                }
        }
        if (lc->turns > 1)
                log_debug("GET /v1/vms: answered after %u loop turns in %.1f ms, %u of them after %u ms", lc->turns,
                          (double) (now_mono() - lc->started) / USEC_PER_MSEC, lc->late_turns,
                          (unsigned) (API_VM_LIST_WAIT / USEC_PER_MSEC));
        size_t len = 0;
        char *body = stale == 0 ? vm_cache_join(lc->m, &len) : NULL;
        if (body)
                http_call_reply_text_take(lc->call, 200, "application/json", body, len);
        else
                http_call_reply_error(lc->call, 500, "internal", "out of memory");
        list_call_free(lc);
}

/* GET /v1/history's entries as serialised: dashboards and the soak ask for the same few entries
 * many times a second, and each entry of a pressure episode names every VM. Keeping the last
 * answer was not enough: during an episode the journal grows at every plan, so every answer was
 * rebuilt, parsing and re-serialising twenty entries of a thousand VMs each (at 1,000 VMs a third
 * of ballastd's CPU in the soak's episodes, and the API's p99). An entry never changes once
 * written, so each is serialised once and kept under its key while it is asked for, within a
 * byte budget; an answer is the concatenation. */
#define HISTORY_CACHE_SLOTS 64
#define HISTORY_CACHE_BYTES (2 * MiB)

typedef struct HistoryEntryText {
        StoreJournalKey key;
        char *text; /* the entry's JSON object; NULL: a free slot */
        size_t len;
        usec_t used;
} HistoryEntryText;

static struct {
        HistoryEntryText slot[HISTORY_CACHE_SLOTS];
        size_t bytes;
} history_cache;

static void history_slot_drop(HistoryEntryText *h) {
        history_cache.bytes -= h->text ? h->len : 0;
        free(h->text);
        *h = (HistoryEntryText){ 0 };
}

static void history_cache_drop(bool all, usec_t idle_since) {
        for (size_t i = 0; i < HISTORY_CACHE_SLOTS; i++)
                if (history_cache.slot[i].text && (all || history_cache.slot[i].used <= idle_since))
                        history_slot_drop(&history_cache.slot[i]);
}

void api_vm_cache_trim(bool all) {
        history_cache_drop(all, usec_sub_floor(now_mono(), API_VM_CACHE_IDLE));
        if (all)
                while (list_calls) {
                        /* The server is gone: answering only frees the call. */
                        http_call_reply_error(list_calls->call, 503, "unavailable", "ballastd is stopping");
                        list_call_free(list_calls);
                }
        if (list_calls || (!all && (vm_cache.n == 0 || now_mono() - vm_cache.used < API_VM_CACHE_IDLE)))
                return;
        for (size_t i = 0; i < vm_cache.n; i++)
                free(vm_cache.e[i].json);
        free(vm_cache.e);
        vm_cache.e = NULL;
        vm_cache.n = 0;
}

uint64_t api_vm_cache_builds(void) {
        return vm_cache.builds;
}

static double pct(uint32_t hundredths) {
        return (double) hundredths / 100.0;
}

static json_t *host_json(Manager *m) {
        CtlHostView h;
        ctl_host_view(m->ctl, &h);
        const DaemonConfig *cfg = m->cfg;
        const PlanConfig *pc = &ctl_config(m->ctl)->plan;
        json_t *o = json_object();
        char scope[600];
        const CtlConfig *cc = ctl_config(m->ctl);
        if (cc->cgroup_dir)
                snprintf(scope, sizeof scope, "cgroup:%s", cc->cgroup_dir);
        else
                snprintf(scope, sizeof scope, "host");
        (void) cfg;
        json_object_set_new(o, "scope", json_text(scope));
        json_object_set_new(o, "total_bytes", h.sample_ok ? json_u64(h.sample.total) : json_null());
        json_object_set_new(o, "available_bytes", h.sample_ok ? json_u64(h.sample.available) : json_null());
        if (h.sample_ok && h.sample.has_psi)
                json_object_set_new(o, "psi",
                                    json_pack("{s:f,s:f}", "some_avg10", pct(h.sample.psi.some.avg10), "full_avg10",
                                              h.sample.psi.has_full ? pct(h.sample.psi.full.avg10) : 0.0));
        else
                json_object_set_new(o, "psi", json_null());
        json_object_set_new(o, "sample_error", h.sample_ok ? json_null() : json_text(h.sample_error));
        json_object_set_new(o, "state", json_string(plan_state_to_string(h.ctl.state)));
        json_object_set_new(o, "state_since", h.ctl.since ? json_time(manager_mono_to_rt(h.ctl.since)) : json_null());
        json_object_set_new(o, "transitions", json_u64(h.transitions));
        uint64_t total = h.sample_ok ? h.sample.total : 0;
        json_object_set_new(o, "watermarks",
                            json_pack("{s:o,s:o,s:o}", "low_bytes", json_u64(total / 10000 * pc->low_pmy), "high_bytes",
                                      json_u64(total / 10000 * pc->high_pmy), "critical_bytes",
                                      json_u64(total / 10000 * pc->critical_pmy)));
        json_t *rc = json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "automatic_bytes", json_u64(h.last.automatic),
                               "hold_bytes", json_u64(h.last.hold), "requested_bytes", json_u64(h.last.requested),
                               "planned_bytes", json_u64(h.last.planned), "commanded_bytes", json_u64(h.commanded),
                               "reached_bytes", json_u64(h.reached), "confirmed_bytes", json_u64(h.confirmed),
                               "shortfall_bytes", json_u64(h.last.shortfall));
        /* Host side: reached is what the host got back; the balloons' side is guest_reached, and
         * their ratio says how much of what the guests gave up the host really received. */
        json_object_set_new(rc, "guest_reached_bytes", json_u64(h.guest_reached));
        json_object_set_new(rc, "efficiency",
                            h.guest_reached ? json_real((double) h.reached / (double) h.guest_reached) : json_null());
        json_object_set_new(rc, "need_bytes", json_integer((json_int_t) h.last.need));
        json_object_set_new(rc, "expected_bytes", json_u64(h.last.expected));
        json_object_set_new(rc, "returnable_bytes", json_u64(h.last.returnable));
        json_object_set_new(rc, "emergency_bytes", json_u64(h.last.emergency));
        json_object_set_new(o, "reclaim", rc);
        PlanHold hold = ctl_hold(m->ctl);
        usec_t now = now_mono();
        if (hold.bytes && now < hold.until && m->hold_set)
                json_object_set_new(o, "hold",
                                    json_pack("{s:o,s:o,s:f,s:o}", "bytes", json_u64(hold.bytes), "until",
                                              json_time(m->hold.until), "remaining_s",
                                              (double) (hold.until - now) / (double) USEC_PER_SEC, "reason",
                                              json_text(m->hold.reason)));
        else
                json_object_set_new(o, "hold", json_null());
        json_object_set_new(o, "vm_count", json_integer((json_int_t) ctl_vm_count(m->ctl)));
        json_object_set_new(o, "sample_age_ms",
                            h.sample_ok ? json_integer((json_int_t) ((now - MIN(now, h.sample_at)) / USEC_PER_MSEC))
                                        : json_null());
        return o;
}

static json_t *stats_json(const HvStats *s) {
        json_t *o = json_object();
#define STAT(name, v) json_object_set_new(o, name, (v) == HV_STAT_UNSET ? json_null() : json_u64(v))
        STAT("swap_in_bytes", s->swap_in);
        STAT("swap_out_bytes", s->swap_out);
        STAT("major_faults", s->major_faults);
        STAT("minor_faults", s->minor_faults);
        STAT("free_bytes", s->free);
        STAT("total_bytes", s->total);
        STAT("available_bytes", s->available);
        STAT("caches_bytes", s->caches);
        STAT("oom_kills", s->oom_kills);
#undef STAT
        json_object_set_new(o, "period_s", json_integer(s->period));
        return o;
}

/* ---- routes ---- */

static bool method_is(const HttpRequest *req, const char *m) {
        return strcmp(req->method, m) == 0;
}

static void reply_method(HttpCall *call, const char *allow) {
        http_call_add_header(call, "Allow", allow);
        http_call_reply_error(call, 405, "method_not_allowed", "method not allowed here; allowed: %s", allow);
}

static bool need_write(HttpCall *call, const HttpRequest *req) {
        if (req->can_write)
                return true;
        http_call_reply_error(call, 403, "forbidden", "%s %s needs write permission", req->method, req->path);
        return false;
}

static void reply_errno(HttpCall *call, int r, const char *msg) {
        switch (r) {
        case -EINVAL:
        case -ERANGE:
                http_call_reply_error(call, 400, "bad_request", "%s", msg);
                break;
        case -ENOENT:
                http_call_reply_error(call, 404, "not_found", "%s", msg);
                break;
        case -EEXIST:
                http_call_reply_error(call, 409, "conflict", "%s", msg);
                break;
        case -EOPNOTSUPP:
                http_call_reply_error(call, 501, "not_implemented", "%s", msg);
                break;
        default:
                http_call_reply_error(call, 500, "internal", "%s", msg);
        }
}

/* GET /v1/vms/{id}/stats: read in the VM's call cycle (ctl_vm_stats()), answered later; a VM
 * removed meanwhile answers 404. */
typedef struct StatsCall {
        HttpCall *call;
        char id[CTL_ID_MAX + 1];
} StatsCall;

static void on_stats(Controller *c, CtlVm *vm, const HvReply *reply, void *userdata) {
        StatsCall *sc = userdata;
        (void) c, (void) vm;
        if (reply->error == -ECANCELED)
                http_call_reply_error(sc->call, 404, "not_found", "VM %s was removed while its statistics were read",
                                      sc->id);
        else if (reply->error < 0)
                http_call_reply_error(sc->call, reply->error == -EOPNOTSUPP ? 501 : 503,
                                      reply->error == -EOPNOTSUPP ? "not_implemented" : "unavailable", "VM %s: %s",
                                      sc->id, reply->message);
        else
                http_call_reply_json(
                        sc->call, 200,
                        json_pack("{s:s,s:o,s:o}", "id", sc->id, "stats", stats_json(&reply->stats), "last_update",
                                  reply->stats.last_update ? json_time(reply->stats.last_update * USEC_PER_SEC)
                                                           : json_null()));
        free(sc);
}

/* POST /v1/vms/{id}/park|unpark: answered when the controller reports the outcome. */
typedef struct ParkCall {
        HttpCall *call;
        usec_t started;
} ParkCall;

static void on_park(Controller *c, CtlVm *vm, const CtlParkOutcome *o, void *userdata) {
        ParkCall *pc = userdata;
        (void) c;
        if (o->error < 0 && strcmp(o->result, "error") == 0)
                http_call_reply_error(pc->call, o->error == -ECANCELED ? 409 : 503,
                                      o->error == -ECANCELED ? "conflict" : "unavailable", "VM %s: %s", ctl_vm_id(vm),
                                      o->message[0] ? o->message : strerror(-o->error));
        else
                http_call_reply_json(pc->call, 200,
                                     json_pack("{s:s,s:s,s:o,s:o,s:o,s:f,s:o}", "vm", ctl_vm_id(vm), "result",
                                               o->result, "previous_bytes", json_u64(o->previous), "target_bytes",
                                               json_u64(o->target), "reached_bytes", json_u64(o->reached), "elapsed_ms",
                                               (double) (now_mono() - pc->started) / 1000.0, "message",
                                               json_text(o->message)));
        free(pc);
}

/* POST /v1/memory/reclaim, and /resources/memory/reclaim in hypeman's shapes */
typedef struct ReclaimCall {
        Manager *m;
        HttpCall *call;
        ApiReclaim req;
        bool hypeman;
} ReclaimCall;

static json_t *reclaim_answer(Manager *m, const ApiReclaim *a, const PlanResult *r, const PlanDecision *d,
                              const uint64_t *previous, const int *results, size_t n, bool dry) {
        json_t *actions = json_array();
        uint64_t applied = 0;
        for (size_t i = 0; i < n; i++) {
                CtlVm *vm = ctl_vm_at(m->ctl, i);
                if (!vm)
                        break;
                CtlVmView v;
                ctl_vm_view(vm, &v);
                const char *action;
                uint64_t new_target = d[i].target;
                json_t *error = json_null();
                if (!v.actual_known || v.status == CTL_VM_ERROR) {
                        action = "error";
                        new_target = previous[i];
                        json_decref(error);
                        error = json_text(v.last_error[0] ? v.last_error : "actual size not known yet");
                } else if (results && results[i] < 0) {
                        action = results[i] == -EOPNOTSUPP ? "unsupported" : "error";
                        new_target = previous[i];
                        json_decref(error);
                        error = json_text(v.last_error[0] ? v.last_error : strerror(-results[i]));
                } else if (d[i].reason == PLAN_REASON_STALLED)
                        action = "stalled";
                else if (d[i].target == previous[i])
                        action = "unchanged";
                else
                        action = dry ? "planned" : "applied";
                if (!dry && v.actual_known && v.status != CTL_VM_ERROR && !(results && results[i] < 0))
                        applied += v.spec->assigned - MIN(new_target, v.spec->assigned);
                json_array_append_new(actions,
                                      json_pack("{s:s,s:s,s:o,s:o,s:o,s:o}", "vm", v.spec->id, "action", action,
                                                "previous_target_bytes", json_u64(previous[i]), "planned_target_bytes",
                                                json_u64(d[i].target), "new_target_bytes",
                                                json_u64(dry ? previous[i] : new_target), "error", error));
        }
        CtlHostView h;
        ctl_host_view(m->ctl, &h);
        json_t *o = json_object();
        json_object_set_new(o, "requested_bytes", json_u64(a->reclaim_bytes));
        json_object_set_new(o, "planned_bytes", json_u64(r->planned));
        json_object_set_new(o, "applied_bytes", json_u64(applied));
        json_object_set_new(o, "dry_run", json_boolean(dry));
        json_object_set_new(o, "hold_until",
                            !dry && a->hold_for && a->reclaim_bytes && m->hold_set ? json_time(m->hold.until)
                                                                                   : json_null());
        json_object_set_new(o, "host_available_bytes", h.sample_ok ? json_u64(h.sample.available) : json_null());
        json_object_set_new(o, "pressure_state", json_string(plan_state_to_string(r->ctl.state)));
        json_object_set_new(o, "actions", actions);
        return o;
}

/* hypeman's MemoryReclaimResponse (docs/api.md, POST /resources/memory/reclaim): every VM's action in
 * its words. planned_* is where the split puts a VM before rate limits and dead band (clamped to
 * [floor, assigned]); target_* where it is after this call (on a dry run: would be); the
 * applied_reclaim_bytes are assigned − target over the VMs that did not fail, 0 on a dry run. A VM
 * whose size is not known is reported with its identity, its size and the error only. */
static json_t *hypeman_answer(Manager *m, const ApiReclaim *a, const PlanResult *r, const PlanDecision *d,
                              const uint64_t *previous, const int *results, size_t n, bool dry) {
        json_t *actions = json_array();
        uint64_t planned = 0, applied = 0;
        for (size_t i = 0; i < n; i++) {
                CtlVm *vm = ctl_vm_at(m->ctl, i);
                if (!vm)
                        break;
                CtlVmView v;
                ctl_vm_view(vm, &v);
                uint64_t assigned = v.spec->assigned;
                const char *hv = hypeman_hypervisor(v.spec->driver);
                bool libvirt = strcmp(v.spec->driver, "libvirt") == 0;
                json_t *o = json_object();
                json_object_set_new(o, "instance_id", json_text(v.spec->id));
                json_object_set_new(o, "instance_name", json_text(libvirt ? v.spec->domain : v.spec->id));
                json_object_set_new(o, "hypervisor", json_string(hv ? hv : "qemu"));
                json_object_set_new(o, "assigned_memory_bytes", json_u64(assigned));
                if (!v.actual_known || v.status == CTL_VM_ERROR) {
                        const char *zero[] = { "protected_floor_bytes", "previous_target_guest_memory_bytes",
                                               "planned_target_guest_memory_bytes", "target_guest_memory_bytes",
                                               "applied_reclaim_bytes" };
                        for (size_t k = 0; k < ELEMENTSOF(zero); k++)
                                json_object_set_new(o, zero[k], json_integer(0));
                        json_object_set_new(o, "status", json_string("error"));
                        json_object_set_new(o, "error",
                                            json_text(v.last_error[0] ? v.last_error : "actual size not known yet"));
                        json_array_append_new(actions, o);
                        continue;
                }
                uint64_t floor = MIN(d[i].floor, assigned);
                uint64_t plan = MIN(MAX(d[i].desired, floor), assigned);
                uint64_t target = d[i].target;
                bool failed = results && results[i] < 0;
                const char *status;
                if (failed) {
                        status = results[i] == -EOPNOTSUPP ? "unsupported" : "error";
                        target = previous[i];
                } else if (target == previous[i])
                        status = "unchanged";
                else
                        status = dry ? "planned" : "applied";
                uint64_t took = dry || failed ? 0 : assigned - MIN(target, assigned);
                planned += assigned - plan;
                applied += took;
                json_object_set_new(o, "protected_floor_bytes", json_u64(floor));
                json_object_set_new(o, "previous_target_guest_memory_bytes", json_u64(previous[i]));
                json_object_set_new(o, "planned_target_guest_memory_bytes", json_u64(plan));
                json_object_set_new(o, "target_guest_memory_bytes", json_u64(target));
                json_object_set_new(o, "applied_reclaim_bytes", json_u64(took));
                json_object_set_new(o, "status", json_string(status));
                if (failed)
                        json_object_set_new(o, "error",
                                            json_text(v.last_error[0] ? v.last_error : strerror(-results[i])));
                json_array_append_new(actions, o);
        }
        CtlHostView h;
        ctl_host_view(m->ctl, &h);
        json_t *o = json_object();
        json_object_set_new(o, "requested_reclaim_bytes", json_u64(a->reclaim_bytes));
        json_object_set_new(o, "planned_reclaim_bytes", json_u64(planned));
        json_object_set_new(o, "applied_reclaim_bytes", json_u64(applied));
        json_object_set_new(o, "host_available_bytes", json_u64(h.sample_ok ? h.sample.available : 0));
        json_object_set_new(o, "host_pressure_state",
                            json_string(r->ctl.state == PLAN_STATE_HEALTHY ? "healthy" : "pressure"));
        /* Only while a hold exists (a dry run shows the one in force, as hypeman does). */
        PlanHold hold = ctl_hold(m->ctl);
        if (m->hold_set && hold.bytes && hold.until > now_mono())
                json_object_set_new(o, "hold_until", json_time(m->hold.until));
        json_object_set_new(o, "actions", actions);
        return o;
}

static void on_reclaim_applied(Controller *c, const PlanResult *r, const PlanDecision *d, const uint64_t *previous,
                               const int *results, size_t n, void *userdata) {
        ReclaimCall *rc = userdata;
        (void) c;
        http_call_reply_json(rc->call, 200,
                             rc->hypeman ? hypeman_answer(rc->m, &rc->req, r, d, previous, results, n, false)
                                         : reclaim_answer(rc->m, &rc->req, r, d, previous, results, n, false));
        free(rc);
}

/* hypeman: true on /resources/memory/reclaim, whose clients read hypeman's answer and errors (the
 * transport makes the errors flat; hypeman says internal_error for its failures, and has no 503). */
static void route_reclaim(Manager *m, HttpCall *call, const HttpRequest *req, bool hypeman) {
        if (!method_is(req, "POST"))
                return reply_method(call, "POST");
        if (!need_write(call, req))
                return;
        const char *internal = hypeman ? "internal_error" : "internal";
        char err[512];
        ApiReclaim a;
        int k = hypeman ? api_parse_reclaim_hypeman(req->body, req->body_len, &a, err, sizeof err)
                        : api_parse_reclaim(req->body, req->body_len, &a, err, sizeof err);
        if (k < 0)
                return http_call_reply_error(call, 400, "bad_request", "%s", err);
        if (hypeman) {
                /* As hypeman: no sample of the host, no reclaim (and nothing changed). */
                CtlHostView h;
                ctl_host_view(m->ctl, &h);
                if (!h.sample_ok)
                        return http_call_reply_error(call, 500, internal, "cannot sample host memory: %s",
                                                     h.sample_error[0] ? h.sample_error : "no sample yet");
        }
        size_t n = ctl_vm_count(m->ctl);
        if (a.dry_run) {
                PlanHold hold = { .bytes = a.reclaim_bytes, .until = usec_add(now_mono(), a.hold_for) };
                if (hypeman) /* hypeman previews the request itself, whatever hold_for says */
                        hold.until = usec_add(now_mono(), MAX(a.hold_for, USEC_PER_SEC));
                else if (a.hold_for == 0)
                        hold = (PlanHold){ 0 };
                PlanDecision *d = calloc(MAX(n, (size_t) 1), sizeof *d);
                uint64_t *prev = calloc(MAX(n, (size_t) 1), sizeof *prev);
                PlanResult r;
                k = d && prev ? ctl_plan_preview(m->ctl, &hold, d, &r) : -ENOMEM;
                if (k < 0) {
                        free(d);
                        free(prev);
                        return http_call_reply_error(call, hypeman ? 500 : 503, hypeman ? internal : "unavailable",
                                                     "cannot plan now: %s",
                                                     k == -ENODATA ? "no memory sample of the scope" : strerror(-k));
                }
                for (size_t i = 0; i < n; i++) {
                        CtlVmView v;
                        ctl_vm_view(ctl_vm_at(m->ctl, i), &v);
                        prev[i] = v.target;
                }
                http_call_reply_json(call, 200,
                                     hypeman ? hypeman_answer(m, &a, &r, d, prev, NULL, n, true)
                                             : reclaim_answer(m, &a, &r, d, prev, NULL, n, true));
                free(d);
                free(prev);
                return;
        }
        k = manager_set_hold(m, a.reclaim_bytes, a.hold_for, a.reason, err, sizeof err);
        if (k < 0)
                return http_call_reply_error(call, 500, internal, "the hold could not be stored: %s", err);
        ReclaimCall *rc = calloc(1, sizeof *rc);
        if (!rc)
                return http_call_reply_error(call, 500, internal, "out of memory");
        *rc = (ReclaimCall){ .m = m, .call = call, .req = a, .hypeman = hypeman };
        k = ctl_apply_now(m->ctl, on_reclaim_applied, rc);
        if (k < 0) {
                free(rc);
                http_call_reply_error(call, 500, internal, "applying the plan failed: %s", strerror(-k));
        }
}

static void route_vms(Manager *m, HttpCall *call, const HttpRequest *req) {
        char err[512];
        if (method_is(req, "GET")) {
                ListCall *lc = calloc(1, sizeof *lc);
                if (!lc)
                        return http_call_reply_error(call, 500, "internal", "out of memory");
                *lc = (ListCall){ .m = m, .call = call, .started = now_mono() };
                return list_call_step(lc);
        }
        if (!method_is(req, "POST"))
                return reply_method(call, "GET, POST");
        if (!need_write(call, req))
                return;
        CtlVmSpec spec;
        if (api_parse_vm_create(req->body, req->body_len, &spec, err, sizeof err) < 0)
                return http_call_reply_error(call, 400, "bad_request", "%s", err);
        int r = manager_vm_register(m, &spec, err, sizeof err);
        if (r < 0)
                return reply_errno(call, r, err);
        http_call_reply_json(call, 201, vm_json(ctl_vm_find(m->ctl, spec.id)));
}

/* PATCH /v1/vms/{id}: assigned size, floor, shares. */
static void vm_patch(Manager *m, HttpCall *call, const HttpRequest *req, CtlVm *vm) {
        char err[512];
        if (!need_write(call, req))
                return;
        ApiVmPatch p;
        if (api_parse_vm_patch(req->body, req->body_len, &p, err, sizeof err) < 0)
                return http_call_reply_error(call, 400, "bad_request", "%s", err);
        CtlVmView v;
        ctl_vm_view(vm, &v);
        uint64_t assigned = p.has_assigned ? p.assigned : v.spec->assigned;
        uint64_t floor = p.has_floor ? p.floor : v.spec->floor;
        uint32_t shares = p.has_shares ? p.shares : v.spec->shares;
        if (floor > assigned)
                return http_call_reply_error(call, 400, "bad_request",
                                             "field \"floor_bytes\" must not exceed \"assigned_bytes\"");
        int r = manager_vm_update(m, vm, assigned, floor, shares, err, sizeof err);
        if (r < 0)
                return reply_errno(call, r, err);
        return http_call_reply_json(call, 200, vm_json(vm));
}

/* DELETE /v1/vms/{id}. */
static void vm_delete(Manager *m, HttpCall *call, const HttpRequest *req, const char *id) {
        char err[512];
        if (!need_write(call, req))
                return;
        char idc[CTL_ID_MAX + 1];
        strscpy(idc, sizeof idc, id);
        int r = manager_vm_delete(m, idc, err, sizeof err);
        if (r < 0)
                return reply_errno(call, r, err);
        return http_call_reply_json(call, 200, json_pack("{s:s}", "deleted", idc));
}

/* PUT /v1/vms/{id}/target: a manual target. */
static void vm_target(Manager *m, HttpCall *call, const HttpRequest *req, CtlVm *vm, const char *id) {
        char err[512];
        if (!method_is(req, "PUT"))
                return reply_method(call, "PUT");
        if (!need_write(call, req))
                return;
        uint64_t t;
        if (api_parse_target(req->body, req->body_len, &t, err, sizeof err) < 0)
                return http_call_reply_error(call, 400, "bad_request", "%s", err);
        CtlVmView v;
        ctl_vm_view(vm, &v);
        uint64_t floor = MAX(v.spec->floor, v.last.floor);
        if (t > v.spec->assigned || t < floor)
                return http_call_reply_error(call, 400, "bad_request",
                                             "field \"target_bytes\" must be between the floor (%" PRIu64
                                             ") and assigned_bytes (%" PRIu64 ")",
                                             floor, v.spec->assigned);
        int r = ctl_vm_set_target(m->ctl, vm, t);
        if (r == -EBUSY)
                return http_call_reply_error(call, 409, "conflict",
                                             "VM %s is parked (or being parked): unpark it first", id);
        if (r < 0)
                return http_call_reply_error(call, 503, "unavailable", "VM %s: its actual size is not known yet (%s)",
                                             id, v.last_error[0] ? v.last_error : "connecting");
        return http_call_reply_json(call, 200, vm_json(vm));
}

/* GET /v1/vms/{id}/stats: a driver call through the controller, answered in on_stats(). */
static void vm_stats(Manager *m, HttpCall *call, const HttpRequest *req, CtlVm *vm, const char *id) {
        if (!method_is(req, "GET"))
                return reply_method(call, "GET");
        StatsCall *sc = calloc(1, sizeof *sc);
        if (!sc)
                return http_call_reply_error(call, 500, "internal", "out of memory");
        sc->call = call;
        strscpy(sc->id, sizeof sc->id, id);
        int r = ctl_vm_stats(m->ctl, vm, on_stats, sc);
        if (r < 0) {
                free(sc);
                /* Refused at once because the driver has none (Cloud Hypervisor): 501, as
                 * when the hypervisor itself says so. */
                if (r == -EOPNOTSUPP || r == -ENOTSUP)
                        return http_call_reply_error(call, 501, "not_implemented",
                                                     "VM %s: the driver has no guest statistics", id);
                return http_call_reply_error(call, 503, "unavailable", "VM %s: %s", id, strerror(-r));
        }
        return;
}

/* POST /v1/vms/{id}/park and /unpark, answered in on_park(). */
static void vm_park(Manager *m, HttpCall *call, const HttpRequest *req, CtlVm *vm, const char *id, const char *sub) {
        char err[512];
        if (!method_is(req, "POST"))
                return reply_method(call, "POST");
        if (!need_write(call, req))
                return;
        bool unpark = sub[0] == 'u';
        ApiPark p;
        if (api_parse_park(req->body, req->body_len, unpark, &p, err, sizeof err) < 0)
                return http_call_reply_error(call, 400, "bad_request", "%s", err);
        ParkCall *pc = calloc(1, sizeof *pc);
        if (!pc)
                return http_call_reply_error(call, 500, "internal", "out of memory");
        pc->call = call;
        pc->started = now_mono();
        int r = unpark ? ctl_vm_unpark(m->ctl, vm, p.size_bytes, p.wait, p.timeout, on_park, pc)
                       : ctl_vm_park(m->ctl, vm, p.size_bytes ? p.size_bytes : m->cfg->park.size, p.timeout, on_park,
                                     pc);
        if (r < 0) {
                free(pc);
                if (r == -EALREADY)
                        return http_call_reply_error(call, 409, "conflict", "VM %s is %s", id,
                                                     unpark ? "not parked" : "already parked");
                if (r == -EBUSY)
                        return http_call_reply_error(call, 409, "conflict", "VM %s: a park or unpark is in progress",
                                                     id);
                if (r == -EAGAIN)
                        return http_call_reply_error(call, 503, "unavailable",
                                                     "VM %s: its actual size is not known yet", id);
                return http_call_reply_error(call, 503, "unavailable", "VM %s: the driver refused: %s", id,
                                             strerror(-r));
        }
        return;
}

static void route_vm(Manager *m, HttpCall *call, const HttpRequest *req, const char *id, const char *sub) {
        CtlVm *vm = ctl_vm_find(m->ctl, id);
        if (!vm)
                return http_call_reply_error(call, 404, "not_found", "no VM \"%.64s\"", id);
        if (!sub) {
                if (method_is(req, "GET"))
                        return http_call_reply_json(call, 200, vm_json(vm));
                if (method_is(req, "PATCH"))
                        return vm_patch(m, call, req, vm);
                if (method_is(req, "DELETE"))
                        return vm_delete(m, call, req, id);
                return reply_method(call, "GET, PATCH, DELETE");
        }
        if (strcmp(sub, "target") == 0)
                return vm_target(m, call, req, vm, id);
        if (strcmp(sub, "stats") == 0)
                return vm_stats(m, call, req, vm, id);
        if (strcmp(sub, "park") == 0 || strcmp(sub, "unpark") == 0)
                return vm_park(m, call, req, vm, id, sub);
        http_call_reply_error(call, 404, "not_found", "no route %s", req->path);
}

/* GET /v1/capacity?size=SIZE: how many more VMs of SIZE fit now (the admission hint). */
static void route_capacity(Manager *m, HttpCall *call, const HttpRequest *req) {
        if (!method_is(req, "GET"))
                return reply_method(call, "GET");
        uint64_t size = 0;
        const char *q = req->query ? req->query : "";
        if (strncmp(q, "size=", 5) != 0 || strchr(q, '&') || parse_size(q + 5, &size) < 0 || size == 0 ||
            size > PLAN_BYTES_MAX)
                return http_call_reply_error(call, 400, "bad_request",
                                             "query: size=SIZE is required (bytes, or with a K/M/G/T suffix; "
                                             "1 byte to 4 EiB), got \"%.64s\"",
                                             q);
        PlanCapacity cap;
        PlanResult plan;
        int r = ctl_capacity(m->ctl, size, &cap, &plan);
        if (r == -ENODATA)
                return http_call_reply_error(call, 503, "unavailable", "no sample of the scope yet");
        if (r < 0)
                return http_call_reply_error(call, 500, "internal", "capacity: %s", strerror(-r));
        CtlHostView h;
        ctl_host_view(m->ctl, &h);
        http_call_reply_json(call, 200,
                             json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:s}", "size_bytes",
                                       json_u64(cap.size), "overhead_bytes", json_u64(cap.overhead), "fit",
                                       json_u64(cap.fit), "fit_free", json_u64(cap.fit_free), "total_bytes",
                                       json_u64(h.sample.total), "available_bytes", json_u64(h.sample.available),
                                       "reserve_bytes", json_u64(cap.reserve), "free_bytes", json_u64(cap.free),
                                       "returnable_bytes", json_u64(cap.returnable), "vm_count",
                                       json_u64(ctl_vm_count(m->ctl)), "state", plan_state_to_string(plan.ctl.state)));
}

/* One journal entry as JSON text (targets and reasons as stored: the store checked them). */
static char *history_entry_text(const StoreJournalEntry *e, size_t *ret_len) {
        json_t *targets = json_loads(e->targets ? e->targets : "{}", 0, NULL);
        json_t *reasons = json_loads(e->reasons ? e->reasons : "{}", 0, NULL);
        json_t *o = json_pack("{s:o,s:s,s:s,s:o,s:o,s:o,s:o,s:o}", "time", json_time(e->time), "trigger", e->trigger,
                              "state", e->state, "available_bytes", json_u64(e->available), "requested_bytes",
                              json_u64(e->requested), "planned_bytes", json_u64(e->planned), "targets",
                              targets ? targets : json_object(), "reasons", reasons ? reasons : json_object());
        char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        *ret_len = text ? strlen(text) : 0;
        return text;
}

/* The serialised entry for key: from the cache, or read, serialised and kept (the least recently
 * used slots make room). NULL with err set when it cannot be read. */
static const HistoryEntryText *history_entry(Manager *m, const StoreJournalKey *key, usec_t now, char *err,
                                             size_t errlen) {
        HistoryEntryText *free_slot = NULL, *oldest = NULL;
        for (size_t i = 0; i < HISTORY_CACHE_SLOTS; i++) {
                HistoryEntryText *h = &history_cache.slot[i];
                if (!h->text) {
                        free_slot = free_slot ? free_slot : h;
                        continue;
                }
                if (h->key.seq == key->seq && h->key.time == key->time) {
                        h->used = now;
                        return h;
                }
                if (!oldest || h->used < oldest->used)
                        oldest = h;
        }
        StoreJournalEntry e;
        int r = store_journal_get(m->store, key->seq, &e, err, errlen);
        if (r < 0)
                return NULL;
        size_t len;
        char *text = history_entry_text(&e, &len);
        free(e.targets);
        free(e.reasons);
        if (!text) {
                snprintf(err, errlen, "cannot serialise journal entry #%llu", (unsigned long long) key->seq);
                return NULL;
        }
        HistoryEntryText *h = free_slot ? free_slot : oldest;
        history_slot_drop(h);
        /* Within the budget: the least recently used go first. */
        while (history_cache.bytes + len > HISTORY_CACHE_BYTES) {
                HistoryEntryText *lru = NULL;
                for (size_t i = 0; i < HISTORY_CACHE_SLOTS; i++)
                        if (history_cache.slot[i].text && (!lru || history_cache.slot[i].used < lru->used))
                                lru = &history_cache.slot[i];
                if (!lru)
                        break;
                history_slot_drop(lru);
        }
        *h = (HistoryEntryText){ .key = *key, .text = text, .len = len, .used = now };
        history_cache.bytes += len;
        return h;
}

static void route_history(Manager *m, HttpCall *call, const HttpRequest *req) {
        if (!method_is(req, "GET"))
                return reply_method(call, "GET");
        uint64_t limit = 50;
        if (req->query && req->query[0]) {
                const char *q = req->query;
                if (strncmp(q, "limit=", 6) != 0 || parse_u64(q + 6, &limit) < 0 || limit < 1 || limit > 1000)
                        return http_call_reply_error(call, 400, "bad_request",
                                                     "query: only limit=N (1-1000) is understood, got \"%.64s\"", q);
        }
        char err[512];
        StoreJournalKey keys[1000];
        size_t n = 0;
        int r = store_journal_keys(m->store, (size_t) limit, keys, &n, err, sizeof err);
        if (r < 0)
                return http_call_reply_error(call, 500, "internal", "reading the journal: %s", err);
        /* The entries with commas between them, in one buffer that becomes the answer. */
        static const char head[] = "{\"entries\":[", tail[] = "]}\n";
        usec_t now = now_mono();
        size_t len = sizeof head - 1, cap = 64 * KiB;
        char *body = malloc(cap);
        if (!body)
                return http_call_reply_error(call, 500, "internal", "out of memory");
        memcpy(body, head, len);
        for (size_t i = 0; i < n; i++) {
                const HistoryEntryText *h = history_entry(m, &keys[i], now, err, sizeof err);
                if (!h) {
                        free(body);
                        return http_call_reply_error(call, 500, "internal", "reading the journal: %s", err);
                }
                if (len + 1 + h->len + sizeof tail > cap) {
                        cap = MAX(2 * cap, len + 1 + h->len + sizeof tail);
                        char *nb = realloc(body, cap);
                        if (!nb) {
                                free(body);
                                return http_call_reply_error(call, 500, "internal", "out of memory");
                        }
                        body = nb;
                }
                if (i > 0)
                        body[len++] = ',';
                memcpy(body + len, h->text, h->len);
                len += h->len;
        }
        memcpy(body + len, tail, sizeof tail - 1);
        http_call_reply_text_take(call, 200, "application/json", body, len + sizeof tail - 1);
}

void api_handle(HttpCall *call, const HttpRequest *req, void *userdata) {
        Manager *m = userdata;
        const char *p = req->path;

        if (strcmp(p, "/v1/health") == 0) {
                if (!method_is(req, "GET"))
                        return reply_method(call, "GET");
                return http_call_reply_json(call, 200,
                                            json_pack("{s:s,s:s,s:f}", "status", "ok", "version", BALLAST_VERSION,
                                                      "uptime_s",
                                                      (double) (now_mono() - m->started) / (double) USEC_PER_SEC));
        }
        if (strcmp(p, "/v1/host") == 0) {
                if (!method_is(req, "GET"))
                        return reply_method(call, "GET");
                return http_call_reply_json(call, 200, host_json(m));
        }
        if (strcmp(p, "/metrics") == 0) {
                if (!method_is(req, "GET"))
                        return reply_method(call, "GET");
                size_t len;
                char *text = metrics_render(m, &len);
                if (!text)
                        return http_call_reply_error(call, 500, "internal", "out of memory");
                return http_call_reply_text_take(call, 200, "text/plain; version=0.0.4; charset=utf-8", text, len);
        }
        if (strcmp(p, "/v1/memory/reclaim") == 0)
                return route_reclaim(m, call, req, false);
        if (strcmp(p, API_HYPEMAN_RECLAIM) == 0)
                return route_reclaim(m, call, req, true);
        if (strcmp(p, "/v1/history") == 0)
                return route_history(m, call, req);
        if (strcmp(p, "/v1/capacity") == 0)
                return route_capacity(m, call, req);
        if (strcmp(p, "/v1/vms") == 0 || strcmp(p, "/v1/vms/") == 0)
                return route_vms(m, call, req);
        if (strncmp(p, "/v1/vms/", 8) == 0) {
                char id[CTL_ID_MAX + 2];
                const char *rest = p + 8, *slash = strchr(rest, '/');
                size_t len = slash ? (size_t) (slash - rest) : strlen(rest);
                if (len == 0 || len > CTL_ID_MAX)
                        return http_call_reply_error(call, 404, "not_found", "no VM with that id");
                memcpy(id, rest, len);
                id[len] = '\0';
                const char *sub = slash ? slash + 1 : NULL;
                if (sub && (!*sub || strchr(sub, '/')))
                        return http_call_reply_error(call, 404, "not_found", "no route %s", p);
                return route_vm(m, call, req, id, sub);
        }
        http_call_reply_error(call, 404, "not_found", "no route %s", p);
}
