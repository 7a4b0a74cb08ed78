/* SPDX-License-Identifier: MIT */
/* A protocol-faithful fake QEMU monitor (QMP) for tests, after QEMU's QMP specification (docs/conformance.md), with a
 * simulated guest that moves `actual` toward the target in 1 MiB steps.
 *
 *   qmp-peer --socket PATH --mode normal|hang|greet-only|garbage|flood|close-mid-reply|event-storm
 *            [--ram BYTES] [--rate-mib-s N] [--floor BYTES] [--no-balloon] [--log-commands FILE]
 *            [--stats-delay-ms N]
 *
 * Modes: normal = QEMU 7.2; hang = accepts and never writes a byte; greet-only = greets and then
 * never answers anything (not even qmp_capabilities); garbage = negotiates, then answers every
 * command with a line that is not JSON; flood = negotiates, then answers a command with an endless
 * line (no newline) until the client goes away; close-mid-reply = negotiates, then writes half of
 * a reply and closes the connection; event-storm = QEMU 7.2 as in normal mode, but from the end of
 * capabilities negotiation it also sends BALLOON_CHANGE events as fast as the client reads them,
 * for 30 s (real QEMU sends at most one a second), between its replies, through an 8 MiB socket
 * buffer. --stats-delay-ms holds each guest-stats answer (and all output behind it) that long,
 * as a guest whose statistics are slow to come.
 *
 * Serves one client at a time like QEMU: a second client's connect() succeeds but it hears
 * nothing until the first one leaves. Runs until SIGTERM/SIGINT or a `quit` command.
 *
 * tests/unit/test-qmp.c compiles this file in with QMP_PEER_NO_MAIN and calls peer_serve(). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/time-util.h"
#include "shared/unix-sock.h"

#define PEER_MiB            (UINT64_C(1) << 20)
#define PEER_UNSET          "18446744073709551615"
#define PEER_IN_MAX         ((size_t) 1 << 20)
#define PEER_FLOOD_MAX      ((uint64_t) 64 << 20)
#define PEER_STORM_USEC     (30 * USEC_PER_SEC)
#define PEER_EVENT_INTERVAL USEC_PER_SEC
#define PEER_BALLOON_PATH   "/machine/peripheral/balloon0"

typedef enum PeerMode {
        PEER_NORMAL,
        PEER_HANG,
        PEER_GREET_ONLY,
        PEER_GARBAGE,
        PEER_FLOOD,
        PEER_CLOSE_MID_REPLY,
        PEER_EVENT_STORM,
        _PEER_MODE_MAX,
        _PEER_MODE_INVALID = -EINVAL,
} PeerMode;

typedef struct PeerConfig {
        const char *socket_path; /* listened on when listen_fd < 0 */
        int listen_fd;           /* an already listening socket (taken over), or -1 */
        PeerMode mode;
        uint64_t ram;        /* bytes; default 1 GiB */
        uint64_t rate_mib_s; /* guest speed; 0 = no guest driver: actual never moves */
        uint64_t floor;      /* the guest cannot give up memory below this actual */
        bool no_balloon;     /* no balloon device: DeviceNotActive */
        int reached_fd;      /* if >= 0: 8 bytes of monotonic usec each time actual reaches the target */
        int log_fd;          /* if >= 0: a line "MONOTONIC_USEC balloon VALUE" per balloon command, and
                              * "MONOTONIC_USEC stats" / "MONOTONIC_USEC stats-reply" when guest-stats
                              * is asked for / answered */
        usec_t stats_delay;  /* guest-stats answers are held this long (and every output behind them) */
        int ready_fd;        /* if >= 0: one byte once listening, then closed */
} PeerConfig;

static void peer_config_init(PeerConfig *c) {
        *c = (PeerConfig){
                .listen_fd = -1,
                .mode = PEER_NORMAL,
                .ram = UINT64_C(1) << 30,
                .rate_mib_s = 256,
                .reached_fd = -1,
                .log_fd = -1,
                .ready_fd = -1,
        };
}

typedef struct Peer {
        const PeerConfig *cfg;
        int lfd, cfd;
        bool negotiated;
        bool flooding;
        uint64_t flooded;
        usec_t storm_until; /* event-storm: monotonic end of the storm; 0 before negotiation */
        uint64_t stormed;   /* events sent */

        char *in;
        size_t in_len;
        char *out;
        size_t out_len, out_alloc;
        bool close_after_flush;

        /* The simulated guest. */
        uint64_t actual, target;
        usec_t next_step, step_period;
        bool reached_reported;
        int64_t poll_interval; /* guest-stats-polling-interval, seconds */
        uint64_t last_update;  /* realtime seconds of the last stats answer; 0 = none */
        uint64_t stats_actual; /* actual when the guest last answered */

        /* BALLOON_CHANGE rate limiting: one per second, last value wins. */
        usec_t last_event;
        bool event_pending;
        uint64_t pending_actual, pending_when_rt;

        bool quit;
        usec_t hold_until; /* a delayed guest-stats answer: no output before this (0: none) */
} Peer;

static volatile sig_atomic_t peer_stop;

/* --- output --- */

static void peer_out(Peer *p, const char *s, size_t n) {
        if (p->cfd < 0)
                return;
        if (p->out_len + n > p->out_alloc) {
                size_t a = MAX(p->out_alloc * 2, p->out_len + n + 4096);
                char *b = realloc(p->out, a);
                if (!b)
                        abort();
                p->out = b;
                p->out_alloc = a;
        }
        memcpy(p->out + p->out_len, s, n);
        p->out_len += n;
}

static void peer_outf(Peer *p, const char *fmt, ...) _printf_(2, 3);
static void peer_outf(Peer *p, const char *fmt, ...) {
        va_list ap;
        char *s = NULL;
        va_start(ap, fmt);
        int n = vasprintf(&s, fmt, ap);
        va_end(ap);
        if (n < 0)
                abort();
        peer_out(p, s, (size_t) n);
        free(s);
}

/* JSON text of any value with QEMU's spacing (", " and ": "); malloc'ed. */
static char *peer_dump(json_t *v) {
        char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_PRESERVE_ORDER);
        if (!s)
                abort();
        return s;
}

static char *peer_quote(const char *str) {
        json_t *j = json_string(str);
        char *s = peer_dump(j);
        json_decref(j);
        return s;
}

/* Success: {"return": VALUE, "id": ID}, id last as QEMU 7.2 writes it. */
static void peer_return(Peer *p, json_t *id, const char *value) {
        if (id) {
                _cleanup_free_ char *ids = peer_dump(id);
                peer_outf(p, "{\"return\": %s, \"id\": %s}\r\n", value, ids);
        } else
                peer_outf(p, "{\"return\": %s}\r\n", value);
}

/* Error: {"id": ID, "error": {...}}, id first as QEMU 7.2 writes it. */
static void peer_error(Peer *p, json_t *id, const char *cls, const char *fmt, ...) _printf_(4, 5);
static void peer_error(Peer *p, json_t *id, const char *cls, const char *fmt, ...) {
        va_list ap;
        char *desc = NULL;
        va_start(ap, fmt);
        if (vasprintf(&desc, fmt, ap) < 0)
                abort();
        va_end(ap);
        _cleanup_free_ char *q = peer_quote(desc);
        free(desc);
        if (id) {
                _cleanup_free_ char *ids = peer_dump(id);
                peer_outf(p, "{\"id\": %s, \"error\": {\"class\": \"%s\", \"desc\": %s}}\r\n", ids, cls, q);
        } else
                peer_outf(p, "{\"error\": {\"class\": \"%s\", \"desc\": %s}}\r\n", cls, q);
}

static void peer_event(Peer *p, const char *name, const char *data, uint64_t when_rt) {
        if (p->cfd < 0 || !p->negotiated) /* no events before negotiation */
                return;
        peer_outf(p, "{\"timestamp\": {\"seconds\": %" PRIu64 ", \"microseconds\": %" PRIu64 "}, \"event\": \"%s\"",
                  when_rt / USEC_PER_SEC, when_rt % USEC_PER_SEC, name);
        if (data)
                peer_outf(p, ", \"data\": %s", data);
        peer_out(p, "}\r\n", 3);
}

/* --- the simulated guest --- */

static void peer_balloon_change(Peer *p, usec_t now) {
        uint64_t rt = now_usec(CLOCK_REALTIME);
        if (!p->event_pending && now - p->last_event >= PEER_EVENT_INTERVAL) {
                char d[64];
                snprintf(d, sizeof(d), "{\"actual\": %" PRIu64 "}", p->actual);
                peer_event(p, "BALLOON_CHANGE", d, rt);
                p->last_event = now;
                return;
        }
        /* Delayed to one second after the last one; intermediate values are dropped. */
        p->event_pending = true;
        p->pending_actual = p->actual;
        p->pending_when_rt = rt;
}

static void peer_flush_event(Peer *p, usec_t now) {
        if (!p->event_pending || now - p->last_event < PEER_EVENT_INTERVAL)
                return;
        char d[64];
        snprintf(d, sizeof(d), "{\"actual\": %" PRIu64 "}", p->pending_actual);
        peer_event(p, "BALLOON_CHANGE", d, p->pending_when_rt);
        p->event_pending = false;
        p->last_event = now;
}

static void peer_guest_run(Peer *p, usec_t now) {
        if (p->cfg->rate_mib_s == 0 || p->actual == p->target)
                return;
        bool moved = false;
        while (p->actual != p->target && now >= p->next_step) {
                uint64_t a = p->actual;
                if (p->target < a) { /* inflate: the guest gives memory up, not below its floor */
                        uint64_t lo = MAX(p->target, p->cfg->floor);
                        a = a - MIN(PEER_MiB, a - MIN(a, lo));
                } else
                        a = a + MIN(PEER_MiB, p->target - a);
                p->next_step += p->step_period;
                if (a == p->actual)
                        break; /* stuck at the floor */
                p->actual = a;
                moved = true;
        }
        if (!moved)
                return;
        peer_balloon_change(p, now);
        if (p->actual == p->target && !p->reached_reported) {
                p->reached_reported = true;
                if (p->cfg->reached_fd >= 0) {
                        usec_t t = now_mono();
                        (void) !write(p->cfg->reached_fd, &t, sizeof(t));
                }
        }
}

static void peer_set_target(Peer *p, uint64_t value) {
        uint64_t ram = p->cfg->ram;
        if (value > ram)
                value = ram; /* full deflate */
        uint64_t pages = (ram - value) >> 12;
        p->target = ram - (pages << 12); /* the balloon ends up <= 4095 bytes smaller */
        if (p->cfg->rate_mib_s == 0)
                return;
        usec_t now = now_mono();
        p->next_step = now + p->step_period;
        p->reached_reported = p->actual == p->target;
}

static usec_t peer_next_wakeup(Peer *p) {
        usec_t w = USEC_INFINITY;
        if (p->cfg->rate_mib_s > 0 && p->actual != p->target && !(p->target < p->actual && p->actual <= p->cfg->floor))
                w = p->next_step;
        if (p->hold_until)
                w = MIN(w, p->hold_until);
        if (p->event_pending)
                w = MIN(w, p->last_event + PEER_EVENT_INTERVAL);
        return w;
}

/* --- commands --- */

static bool peer_args_only(Peer *p, json_t *id, json_t *args, const char *const *allowed) {
        const char *k;
        json_t *v;
        json_object_foreach(args, k, v) {
                bool ok = false;
                for (size_t i = 0; allowed[i]; i++)
                        ok = ok || strcmp(k, allowed[i]) == 0;
                if (!ok) {
                        peer_error(p, id, "GenericError", "Parameter '%s' is unexpected", k);
                        return false;
                }
        }
        return true;
}

static const char *peer_str_arg(Peer *p, json_t *id, json_t *args, const char *name) {
        json_t *v = json_object_get(args, name);
        if (!v) {
                peer_error(p, id, "GenericError", "Parameter '%s' is missing", name);
                return NULL;
        }
        if (!json_is_string(v)) {
                peer_error(p, id, "GenericError", "Invalid parameter type for '%s', expected: string", name);
                return NULL;
        }
        return json_string_value(v);
}

static bool peer_is_balloon(const Peer *p, const char *path) {
        return !p->cfg->no_balloon && (strcmp(path, PEER_BALLOON_PATH) == 0 || strcmp(path, "balloon0") == 0);
}

static void peer_log(Peer *p, const char *what) {
        if (p->cfg->log_fd < 0)
                return;
        char line[96];
        int n = snprintf(line, sizeof(line), "%" PRIu64 " %s\n", now_usec(CLOCK_MONOTONIC), what);
        (void) !write(p->cfg->log_fd, line, (size_t) n);
}

static void peer_stats(Peer *p, json_t *id) {
        peer_log(p, "stats");
        if (p->cfg->stats_delay > 0)
                p->hold_until = usec_add(now_mono(), p->cfg->stats_delay);
        /* The guest answers once per interval while polling is on (a driver is needed). */
        uint64_t now_s = now_usec(CLOCK_REALTIME) / USEC_PER_SEC;
        if (p->poll_interval > 0 && p->cfg->rate_mib_s > 0 &&
            (p->last_update == 0 || now_s >= p->last_update + (uint64_t) p->poll_interval)) {
                p->last_update = now_s;
                p->stats_actual = p->actual;
        }
        if (p->last_update == 0) {
                peer_return(p, id,
                            "{\"stats\": {\"stat-htlb-pgalloc\": " PEER_UNSET ", \"stat-swap-out\": " PEER_UNSET
                            ", \"stat-available-memory\": " PEER_UNSET ", \"stat-htlb-pgfail\": " PEER_UNSET
                            ", \"stat-free-memory\": " PEER_UNSET ", \"stat-minor-faults\": " PEER_UNSET
                            ", \"stat-major-faults\": " PEER_UNSET ", \"stat-total-memory\": " PEER_UNSET
                            ", \"stat-swap-in\": " PEER_UNSET ", \"stat-disk-caches\": " PEER_UNSET
                            "}, \"last-update\": 0}");
                return;
        }
        /* Like a small Linux guest: total is what the balloon left minus kernel reservations. */
        uint64_t total = p->stats_actual - MIN(p->stats_actual, 30 * PEER_MiB);
        uint64_t free_ = total - MIN(total, 40 * PEER_MiB);
        uint64_t avail = free_ + MIN(free_, 8 * PEER_MiB) / 2;
        char v[1024];
        snprintf(v, sizeof(v),
                 "{\"stats\": {\"stat-htlb-pgalloc\": 0, \"stat-swap-out\": 0, \"stat-available-memory\": %" PRIu64
                 ", \"stat-htlb-pgfail\": 0, \"stat-free-memory\": %" PRIu64
                 ", \"stat-minor-faults\": 1473, \"stat-major-faults\": 0, \"stat-total-memory\": %" PRIu64
                 ", \"stat-swap-in\": 0, \"stat-disk-caches\": 2265088}, \"last-update\": %" PRIu64 "}",
                 avail, free_, total, p->last_update);
        peer_return(p, id, v);
}

static void peer_qom_list(Peer *p, json_t *id, json_t *args) {
        static const char *const allowed[] = { "path", NULL };
        if (!peer_args_only(p, id, args, allowed))
                return;
        const char *path = peer_str_arg(p, id, args, "path");
        if (!path)
                return;
        if (strcmp(path, "/machine/peripheral") == 0) {
                if (p->cfg->no_balloon)
                        peer_return(p, id, "[{\"name\": \"type\", \"type\": \"string\"}]");
                else
                        peer_return(p, id,
                                    "[{\"name\": \"type\", \"type\": \"string\"}, {\"name\": \"balloon0\", \"type\": "
                                    "\"child<virtio-balloon-pci>\"}]");
        } else if (strcmp(path, "/machine/peripheral-anon") == 0)
                peer_return(p, id, "[{\"name\": \"type\", \"type\": \"string\"}]");
        else if (peer_is_balloon(p, path))
                peer_return(p, id,
                            "[{\"name\": \"type\", \"type\": \"string\"}, {\"name\": \"guest-stats\", \"type\": "
                            "\"guest statistics\"}, {\"name\": \"guest-stats-polling-interval\", \"type\": \"int\"}, "
                            "{\"name\": \"deflate-on-oom\", \"type\": \"bool\"}, {\"name\": "
                            "\"free-page-reporting\", \"type\": \"bool\"}, {\"name\": \"page-poison\", \"type\": "
                            "\"bool\"}, {\"name\": \"virtio-backend\", \"type\": \"child<virtio-balloon-device>\"}]");
        else
                peer_error(p, id, "DeviceNotFound", "Device '%s' not found", path);
}

static void peer_qom_get(Peer *p, json_t *id, json_t *args) {
        static const char *const allowed[] = { "path", "property", NULL };
        if (!peer_args_only(p, id, args, allowed))
                return;
        const char *path = peer_str_arg(p, id, args, "path");
        if (!path)
                return;
        const char *prop = peer_str_arg(p, id, args, "property");
        if (!prop)
                return;
        if (!peer_is_balloon(p, path)) {
                peer_error(p, id, "DeviceNotFound", "Device '%s' not found", path);
                return;
        }
        char v[32];
        if (strcmp(prop, "type") == 0)
                peer_return(p, id, "\"virtio-balloon-pci\"");
        else if (strcmp(prop, "guest-stats") == 0)
                peer_stats(p, id);
        else if (strcmp(prop, "guest-stats-polling-interval") == 0) {
                snprintf(v, sizeof(v), "%" PRId64, p->poll_interval);
                peer_return(p, id, v);
        } else if (strcmp(prop, "deflate-on-oom") == 0 || strcmp(prop, "free-page-reporting") == 0)
                peer_return(p, id, "false");
        else if (strcmp(prop, "page-poison") == 0)
                peer_return(p, id, "true");
        else
                peer_error(p, id, "GenericError", "Property 'virtio-balloon-pci.%s' not found", prop);
}

static void peer_qom_set(Peer *p, json_t *id, json_t *args) {
        static const char *const allowed[] = { "path", "property", "value", NULL };
        if (!peer_args_only(p, id, args, allowed))
                return;
        const char *path = peer_str_arg(p, id, args, "path");
        if (!path)
                return;
        const char *prop = peer_str_arg(p, id, args, "property");
        if (!prop)
                return;
        json_t *value = json_object_get(args, "value");
        if (!value) {
                peer_error(p, id, "GenericError", "Parameter 'value' is missing");
                return;
        }
        if (!peer_is_balloon(p, path)) {
                peer_error(p, id, "DeviceNotFound", "Device '%s' not found", path);
                return;
        }
        if (strcmp(prop, "guest-stats-polling-interval") != 0) {
                if (strcmp(prop, "guest-stats") == 0 || strcmp(prop, "type") == 0 ||
                    strcmp(prop, "deflate-on-oom") == 0 || strcmp(prop, "free-page-reporting") == 0 ||
                    strcmp(prop, "page-poison") == 0)
                        peer_error(p, id, "GenericError", "Insufficient permission to perform this operation");
                else
                        peer_error(p, id, "GenericError", "Property 'virtio-balloon-pci.%s' not found", prop);
                return;
        }
        /* Clamped to -1 (QEMU's own int64 visitor would say "expects an int64"). */
        if (!json_is_integer(value)) {
                peer_error(p, id, "GenericError", "Invalid parameter type for 'value', expected: integer");
                return;
        }
        json_int_t s = json_integer_value(value);
        if (s < 0) {
                peer_error(p, id, "GenericError", "timer value must be greater than zero");
                return;
        }
        if (s > (json_int_t) UINT32_MAX) {
                peer_error(p, id, "GenericError", "timer value is too big");
                return;
        }
        bool was_off = p->poll_interval == 0;
        p->poll_interval = (int64_t) s;
        /* Switching polling on asks the guest at once; a guest with a driver answers. */
        if (was_off && s > 0 && p->cfg->rate_mib_s > 0) {
                p->last_update = now_usec(CLOCK_REALTIME) / USEC_PER_SEC;
                p->stats_actual = p->actual;
        }
        peer_return(p, id, "{}");
}

static void peer_balloon(Peer *p, json_t *id, json_t *args) {
        static const char *const allowed[] = { "value", NULL };
        if (!peer_args_only(p, id, args, allowed))
                return;
        json_t *v = json_object_get(args, "value");
        if (!v) {
                peer_error(p, id, "GenericError", "Parameter 'value' is missing");
                return;
        }
        if (!json_is_integer(v)) {
                peer_error(p, id, "GenericError", "Invalid parameter type for 'value', expected: integer");
                return;
        }
        if (p->cfg->no_balloon) {
                peer_error(p, id, "DeviceNotActive", "No balloon device has been activated");
                return;
        }
        json_int_t value = json_integer_value(v);
        if (value <= 0) {
                peer_error(p, id, "GenericError", "Parameter 'target' expects a size");
                return;
        }
        peer_set_target(p, (uint64_t) value);
        peer_return(p, id, "{}");
}

static void peer_command(Peer *p, const char *name, json_t *args, json_t *id) {
        static const char *const none[] = { NULL };
        char v[128];

        if (!p->negotiated) {
                if (strcmp(name, "qmp_capabilities") != 0) {
                        peer_error(p, id, "CommandNotFound",
                                   "Expecting capabilities negotiation with 'qmp_capabilities'");
                        return;
                }
                static const char *const allowed[] = { "enable", NULL };
                if (!peer_args_only(p, id, args, allowed))
                        return;
                p->negotiated = true;
                peer_return(p, id, "{}");
                if (p->cfg->mode == PEER_EVENT_STORM)
                        p->storm_until = usec_add(now_mono(), PEER_STORM_USEC);
                return;
        }
        if (strcmp(name, "qmp_capabilities") == 0) {
                peer_error(p, id, "CommandNotFound", "Capabilities negotiation is already complete, command ignored");
                return;
        }

        /* Misbehaving modes act on the first real command. */
        switch (p->cfg->mode) {
        case PEER_GARBAGE:
                peer_outf(p, "}{ this is not JSON \"\r\n");
                return;
        case PEER_FLOOD:
                peer_out(p, "{\"return\": \"", 12);
                p->flooding = true;
                return;
        case PEER_CLOSE_MID_REPLY:
                peer_out(p, "{\"return\": {\"act", 16);
                p->close_after_flush = true;
                return;
        default:
                break;
        }

        if (strcmp(name, "query-balloon") == 0) {
                if (!peer_args_only(p, id, args, none))
                        return;
                if (p->cfg->no_balloon) {
                        peer_error(p, id, "DeviceNotActive", "No balloon device has been activated");
                        return;
                }
                snprintf(v, sizeof(v), "{\"actual\": %" PRIu64 "}", p->actual);
                peer_return(p, id, v);
        } else if (strcmp(name, "balloon") == 0) {
                if (p->cfg->log_fd >= 0) {
                        json_t *val = json_object_get(args, "value");
                        char line[96];
                        int n = snprintf(line, sizeof(line), "%" PRIu64 " balloon %" JSON_INTEGER_FORMAT "\n",
                                         now_usec(CLOCK_MONOTONIC),
                                         json_is_integer(val) ? json_integer_value(val) : -1);
                        (void) !write(p->cfg->log_fd, line, (size_t) n);
                }
                peer_balloon(p, id, args);
        } else if (strcmp(name, "query-memory-size-summary") == 0) {
                snprintf(v, sizeof(v), "{\"base-memory\": %" PRIu64 ", \"plugged-memory\": 0}", p->cfg->ram);
                peer_return(p, id, v);
        } else if (strcmp(name, "query-status") == 0)
                peer_return(p, id, "{\"status\": \"running\", \"singlestep\": false, \"running\": true}");
        else if (strcmp(name, "qom-list") == 0)
                peer_qom_list(p, id, args);
        else if (strcmp(name, "qom-get") == 0)
                peer_qom_get(p, id, args);
        else if (strcmp(name, "qom-set") == 0)
                peer_qom_set(p, id, args);
        else if (strcmp(name, "quit") == 0) {
                peer_event(p, "SHUTDOWN", "{\"guest\": false, \"reason\": \"host-qmp-quit\"}",
                           now_usec(CLOCK_REALTIME));
                peer_return(p, id, "{}");
                p->close_after_flush = true;
                p->quit = true;
        } else
                peer_error(p, id, "CommandNotFound", "The command %s has not been found", name);
}

static void peer_line(Peer *p, const char *line, size_t len) {
        json_t *j = json_loadb(line, len, 0, NULL);
        if (!j) {
                /* QEMU's words, whatever the mistake was. */
                peer_error(p, NULL, "GenericError", "JSON parse error, expecting value");
                return;
        }
        if (!json_is_object(j)) {
                peer_error(p, NULL, "GenericError", "QMP input must be a JSON object");
                json_decref(j);
                return;
        }
        json_t *id = json_object_get(j, "id");
        const char *k;
        json_t *v;
        json_object_foreach(j, k, v) {
                if (strcmp(k, "execute") != 0 && strcmp(k, "arguments") != 0 && strcmp(k, "id") != 0 &&
                    strcmp(k, "control") != 0) {
                        peer_error(p, id, "GenericError", "QMP input member '%s' is unexpected", k);
                        json_decref(j);
                        return;
                }
        }
        json_t *exec = json_object_get(j, "execute");
        json_t *args = json_object_get(j, "arguments");
        if (!exec)
                peer_error(p, id, "GenericError", "QMP input lacks member 'execute'");
        else if (!json_is_string(exec))
                peer_error(p, id, "GenericError", "QMP input member 'execute' must be a string");
        else if (args && !json_is_object(args))
                peer_error(p, id, "GenericError", "QMP input member 'arguments' must be an object");
        else
                peer_command(p, json_string_value(exec), args, id);
        json_decref(j);
}

/* --- connection --- */

static void peer_drop_client(Peer *p) {
        p->cfd = safe_close(p->cfd);
        p->in_len = p->out_len = 0;
        p->negotiated = p->flooding = p->close_after_flush = false;
        p->flooded = 0;
        p->storm_until = 0;
        p->hold_until = 0;
}

static void peer_accept(Peer *p) {
        int fd = accept4(p->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
                return;
        p->cfd = fd;
        if (p->cfg->mode == PEER_EVENT_STORM) {
                /* A deep socket buffer (tens of thousands of events): a reader without a budget
                 * then stays inside one read loop for a long time even when this process is not
                 * scheduled to refill it, as with a busy QEMU on a loaded host. */
                int sz = 8 << 20;
                if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sz, sizeof(sz)) < 0)
                        (void) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
        }
        if (p->cfg->mode != PEER_HANG)
                peer_outf(p, "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
                             "\"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n");
}

static void peer_read(Peer *p) {
        for (;;) {
                if (p->in_len == PEER_IN_MAX) /* QEMU's parser gives up on absurd input too */
                        p->in_len = 0;
                ssize_t n = read(p->cfd, p->in + p->in_len, PEER_IN_MAX - p->in_len);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                peer_drop_client(p);
                        return;
                }
                if (n == 0) {
                        peer_drop_client(p);
                        return;
                }
                p->in_len += (size_t) n;
                if (p->cfg->mode == PEER_HANG || (p->cfg->mode == PEER_GREET_ONLY)) {
                        p->in_len = 0; /* listens, never answers */
                        continue;
                }
                size_t off = 0;
                for (;;) {
                        char *nl = memchr(p->in + off, '\n', p->in_len - off);
                        if (!nl)
                                break;
                        size_t l = (size_t) (nl - (p->in + off));
                        const char *line = p->in + off;
                        off += l + 1;
                        while (l > 0 && (line[l - 1] == '\r' || line[l - 1] == ' ' || line[l - 1] == '\t'))
                                l--;
                        if (l > 0 && !p->close_after_flush && !p->flooding)
                                peer_line(p, line, l);
                }
                memmove(p->in, p->in + off, p->in_len - off);
                p->in_len -= off;
        }
}

static bool peer_storming(const Peer *p) {
        return p->storm_until > 0 && now_mono() < p->storm_until;
}

static bool peer_holding(Peer *p) {
        if (!p->hold_until)
                return false;
        if (now_mono() < p->hold_until)
                return true;
        p->hold_until = 0;
        peer_log(p, "stats-reply");
        return false;
}

static void peer_write(Peer *p) {
        if (peer_holding(p))
                return;
        if (peer_storming(p) && p->out_len < 65536) {
                /* Whole events, so that replies written in between stay on lines of their own. */
                char ev[160];
                int n = snprintf(ev, sizeof(ev),
                                 "{\"timestamp\": {\"seconds\": %" PRIu64 ", \"microseconds\": 0}, \"event\": "
                                 "\"BALLOON_CHANGE\", \"data\": {\"actual\": %" PRIu64 "}}\r\n",
                                 now_usec(CLOCK_REALTIME) / USEC_PER_SEC, p->actual);
                for (size_t k = 0; k + (size_t) n <= 65536; k += (size_t) n, p->stormed++)
                        peer_out(p, ev, (size_t) n);
        }
        if (p->flooding && p->out_len < 65536) {
                static char chunk[65536];
                if (!chunk[0])
                        memset(chunk, 'A', sizeof(chunk));
                if (p->flooded < PEER_FLOOD_MAX) {
                        peer_out(p, chunk, sizeof(chunk));
                        p->flooded += sizeof(chunk);
                }
        }
        while (p->out_len > 0) {
                ssize_t n = send(p->cfd, p->out, p->out_len, MSG_NOSIGNAL);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                peer_drop_client(p);
                        return;
                }
                memmove(p->out, p->out + n, p->out_len - (size_t) n);
                p->out_len -= (size_t) n;
        }
        if (p->close_after_flush)
                peer_drop_client(p);
}

/* Serves until a signal or `quit`. Returns 0, or a negative errno when it cannot listen. */
static int peer_serve(const PeerConfig *cfg) {
        Peer p = { .cfg = cfg, .cfd = -1 };
        char err[256];

        p.lfd = cfg->listen_fd;
        if (p.lfd < 0) {
                p.lfd = usock_listen(cfg->socket_path, 0600, err, sizeof(err));
                if (p.lfd < 0) {
                        fprintf(stderr, "qmp-peer: %s\n", err);
                        return p.lfd;
                }
        }
        p.in = malloc(PEER_IN_MAX);
        if (!p.in)
                return -ENOMEM;
        p.actual = p.target = cfg->ram;
        p.step_period = cfg->rate_mib_s > 0 ? MAX(USEC_PER_SEC / cfg->rate_mib_s, (usec_t) 1) : USEC_INFINITY;
        p.last_event = 0;
        if (cfg->ready_fd >= 0) {
                (void) !write(cfg->ready_fd, "R", 1);
                close(cfg->ready_fd);
        }

        while (!peer_stop && !(p.quit && p.cfd < 0)) {
                struct pollfd fds[2];
                nfds_t n = 0;
                if (p.cfd < 0)
                        fds[n++] = (struct pollfd){ .fd = p.lfd, .events = POLLIN };
                else
                        fds[n++] = (struct pollfd){ .fd = p.cfd,
                                                    .events = POLLIN |
                                                              ((p.out_len > 0 || p.flooding || peer_storming(&p)) &&
                                                                               !peer_holding(&p)
                                                                       ? POLLOUT
                                                                       : 0) };
                usec_t now = now_mono();
                int r = poll(fds, n, usec_to_poll_timeout(peer_next_wakeup(&p), now));
                if (r < 0 && errno != EINTR)
                        break;
                now = now_mono();
                peer_guest_run(&p, now);
                peer_flush_event(&p, now);
                if (r > 0) {
                        if (p.cfd < 0 && (fds[0].revents & POLLIN))
                                peer_accept(&p);
                        else if (p.cfd >= 0 && (fds[0].revents & (POLLIN | POLLHUP | POLLERR)))
                                peer_read(&p);
                }
                if (p.cfd >= 0)
                        peer_write(&p);
        }
        peer_drop_client(&p);
        if (cfg->socket_path && cfg->listen_fd < 0)
                (void) unlink(cfg->socket_path);
        safe_close(p.lfd);
        free(p.in);
        free(p.out);
        return 0;
}

#ifndef QMP_PEER_NO_MAIN
static const char *const peer_mode_table[_PEER_MODE_MAX] = {
        [PEER_NORMAL] = "normal",           [PEER_HANG] = "hang",   [PEER_GREET_ONLY] = "greet-only",
        [PEER_GARBAGE] = "garbage",         [PEER_FLOOD] = "flood", [PEER_CLOSE_MID_REPLY] = "close-mid-reply",
        [PEER_EVENT_STORM] = "event-storm",
};

static PeerMode peer_mode_from_string(const char *s) {
        for (int i = 0; i < _PEER_MODE_MAX; i++)
                if (strcmp(s, peer_mode_table[i]) == 0)
                        return (PeerMode) i;
        return _PEER_MODE_INVALID;
}

static void peer_on_signal(int sig) {
        (void) sig;
        peer_stop = 1;
}

static void usage(FILE *f) {
        fprintf(f, "usage: qmp-peer --socket PATH --mode normal|hang|greet-only|garbage|flood|close-mid-reply|\n"
                   "                event-storm\n"
                   "                [--ram BYTES] [--rate-mib-s N] [--floor BYTES] [--no-balloon]\n"
                   "                [--log-commands FILE] [--stats-delay-ms N]\n");
}

int main(int argc, char **argv) {
        PeerConfig cfg;
        peer_config_init(&cfg);

        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                int r = 0;
                if (strcmp(a, "--help") == 0) {
                        usage(stdout);
                        return 0;
                } else if (strcmp(a, "--no-balloon") == 0) {
                        cfg.no_balloon = true;
                        continue;
                }
                if (!v) {
                        usage(stderr);
                        return 2;
                }
                i++;
                if (strcmp(a, "--socket") == 0)
                        cfg.socket_path = v;
                else if (strcmp(a, "--mode") == 0) {
                        cfg.mode = peer_mode_from_string(v);
                        r = cfg.mode < 0 ? -EINVAL : 0;
                } else if (strcmp(a, "--ram") == 0)
                        r = parse_size(v, &cfg.ram);
                else if (strcmp(a, "--rate-mib-s") == 0) {
                        r = parse_u64(v, &cfg.rate_mib_s);
                        if (r == 0 && cfg.rate_mib_s > 1000000)
                                r = -ERANGE;
                } else if (strcmp(a, "--floor") == 0)
                        r = parse_size(v, &cfg.floor);
                else if (strcmp(a, "--log-commands") == 0) {
                        cfg.log_fd = open(v, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
                        r = cfg.log_fd < 0 ? -errno : 0;
                } else if (strcmp(a, "--stats-delay-ms") == 0) {
                        uint64_t ms;
                        r = parse_u64(v, &ms);
                        if (r == 0 && ms > 3600 * 1000)
                                r = -ERANGE;
                        cfg.stats_delay = (usec_t) ms * USEC_PER_MSEC;
                } else {
                        usage(stderr);
                        return 2;
                }
                if (r < 0) {
                        fprintf(stderr, "qmp-peer: invalid value for %s: '%s'\n", a, v);
                        return 2;
                }
        }
        if (!cfg.socket_path || cfg.ram < 4096) {
                usage(stderr);
                return 2;
        }

        struct sigaction sa = { .sa_handler = peer_on_signal };
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);
        return peer_serve(&cfg) < 0 ? 1 : 0;
}
#endif
