/* SPDX-License-Identifier: MIT */
/* Drives the libvirt driver (src/hv/libvirt.c) from a test: one driver for a domain, commands one
 * per line on stdin (or `-c "cmd; cmd"`), one JSON object per command on stdout.
 *
 *   libvirt-probe [--uri URI] --domain NAME|UUID [-c COMMANDS]
 *
 * Commands (TIMEOUT is a duration, default 10s):
 *   actual [TIMEOUT]          get_actual
 *   set BYTES [TIMEOUT]       set_target
 *   stats [TIMEOUT]           get_stats
 *   period SECONDS [TIMEOUT]  set_stats_period
 *   caps [TIMEOUT]            get_caps
 *   wait BYTES [TIMEOUT]      set and wait (hv_wait_start, B1.6; TIMEOUT is the whole wait)
 *   submit OP [TIMEOUT]       starts OP (actual|stats|caps) and returns at once: {"submitted":…}
 *   drain DURATION            runs the loop for DURATION; prints the results that came
 *   counters                  the driver's counters
 *   reopen                    frees the driver (even with a call in flight) and makes a new one
 *   quit
 * Every result line has "cmd", "error" (0 or a negative errno), "errno" (its name), "message" and
 * "elapsed_us" (from submission to the callback, measured on the loop). Exit status: 0, or 2 on
 * a usage error. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hv/hv.h"
#include "hv/libvirt.h"
#include "shared/ev.h"
#include "shared/macro.h"
#include "shared/strutil.h"

#define PROBE_DEFAULT_TIMEOUT (10 * USEC_PER_SEC)

typedef struct ProbeCall ProbeCall;

typedef struct Probe {
        Ev *ev;
        Hv *hv;
        LibvirtConfig cfg;
        unsigned pending;  /* callbacks still to come for this command */
        ProbeCall *asyncs; /* from `submit`, not answered yet */
} Probe;

struct ProbeCall {
        Probe *p;
        char cmd[16];
        usec_t started;
        bool async; /* from `submit`: printed whenever it comes */
        ProbeCall *next;
};

static void async_unlink(Probe *p, ProbeCall *c) {
        for (ProbeCall **i = &p->asyncs; *i; i = &(*i)->next)
                if (*i == c) {
                        *i = c->next;
                        return;
                }
}

/* Frees the driver; the callbacks of `submit`ted calls will not come any more. */
static void probe_close(Probe *p) {
        p->hv = hv_free(p->hv);
        while (p->asyncs) {
                ProbeCall *c = p->asyncs;
                p->asyncs = c->next;
                free(c);
        }
}

static json_t *stat_json(uint64_t v) {
        return v == HV_STAT_UNSET ? json_null() : json_integer((json_int_t) v);
}

static void print_json(json_t *j) {
        char *s = json_dumps(j, JSON_COMPACT);
        if (s) {
                printf("%s\n", s);
                fflush(stdout);
                free(s);
        }
        json_decref(j);
}

static json_t *result_new(const char *cmd, int error, const char *message, usec_t elapsed) {
        return json_pack("{s:s,s:i,s:s,s:s,s:I}", "cmd", cmd, "error", error, "errno",
                         error ? strerrorname_np(-error) ?: "?" : "", "message", message ?: "", "elapsed_us",
                         (json_int_t) elapsed);
}

static void on_reply(Hv *hv, const HvReply *rep, void *userdata) {
        ProbeCall *c = userdata;
        (void) hv;
        json_t *j = result_new(c->cmd, rep->error, rep->message, now_mono() - c->started);
        if (c->async)
                json_object_set_new(j, "async", json_true());
        if (rep->error == 0)
                switch (rep->op) {
                case HV_OP_GET_ACTUAL:
                        json_object_set_new(j, "actual", json_integer((json_int_t) rep->actual));
                        break;
                case HV_OP_GET_STATS: {
                        const HvStats *s = &rep->stats;
                        json_object_set_new(j, "stats",
                                            json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:I,s:i}", "swap_in",
                                                      stat_json(s->swap_in), "swap_out", stat_json(s->swap_out),
                                                      "major_faults", stat_json(s->major_faults), "minor_faults",
                                                      stat_json(s->minor_faults), "free", stat_json(s->free), "total",
                                                      stat_json(s->total), "available", stat_json(s->available),
                                                      "caches", stat_json(s->caches), "oom_kills",
                                                      stat_json(s->oom_kills), "last_update",
                                                      (json_int_t) s->last_update, "period", (int) s->period));
                        break;
                }
                case HV_OP_GET_CAPS: {
                        const HvCaps *k = &rep->caps;
                        json_object_set_new(j, "caps",
                                            json_pack("{s:b,s:b,s:b,s:b,s:I,s:s}", "balloon", k->balloon, "stats",
                                                      k->stats, "deflate_on_oom", k->deflate_on_oom,
                                                      "free_page_reporting", k->free_page_reporting, "ram_bytes",
                                                      (json_int_t) k->ram_bytes, "version", k->version));
                        break;
                }
                default:
                        break;
                }
        print_json(j);
        if (c->async)
                async_unlink(c->p, c);
        else
                c->p->pending--;
        free(c);
}

static void on_wait(HvWait *w, const HvWaitOutcome *o, void *userdata) {
        ProbeCall *c = userdata;
        (void) w;
        json_t *j = result_new(c->cmd, o->result == HV_WAIT_ERROR ? (o->error ?: -EIO) : 0, o->message,
                               now_mono() - c->started);
        json_object_set_new(j, "outcome",
                            json_pack("{s:s,s:I,s:I,s:I,s:I,s:i,s:i}", "result", hv_wait_result_to_string(o->result),
                                      "start", (json_int_t) o->start, "target", (json_int_t) o->target, "reached",
                                      (json_int_t) o->reached, "elapsed_us",
                                      (json_int_t) (o->noticed > o->started ? o->noticed - o->started : 0), "polls",
                                      (int) o->polls, "events", (int) o->events));
        print_json(j);
        c->p->pending--;
        free(c);
}

static int probe_open(Probe *p) {
        int r = libvirt_hv_new(p->ev, &p->cfg, &p->hv);
        if (r < 0)
                fprintf(stderr, "libvirt-probe: cannot create the driver: %s\n",
                        r == -ELIBACC ? libvirt_module_error() : strerror(-r));
        return r;
}

static void usage_error(const char *cmd, const char *why) {
        print_json(result_new(cmd, -EINVAL, why, 0));
}

static int parse_timeout(const char *s, usec_t *ret) {
        if (!s) {
                *ret = PROBE_DEFAULT_TIMEOUT;
                return 0;
        }
        return parse_duration(s, ret);
}

static void run_loop_until_done(Probe *p) {
        while (p->pending > 0)
                if (ev_run_once(p->ev, USEC_INFINITY) < 0)
                        break;
}

static int submit(Probe *p, const char *op, const char *arg, usec_t timeout, bool async, const char *cmd) {
        ProbeCall *c = calloc(1, sizeof(ProbeCall));
        if (!c)
                return -ENOMEM;
        *c = (ProbeCall){ .p = p, .started = now_mono(), .async = async };
        strscpy(c->cmd, sizeof(c->cmd), cmd);
        uint64_t v = 0;
        int r;
        if (strcmp(op, "actual") == 0)
                r = hv_get_actual(p->hv, timeout, on_reply, c);
        else if (strcmp(op, "stats") == 0)
                r = hv_get_stats(p->hv, timeout, on_reply, c);
        else if (strcmp(op, "caps") == 0)
                r = hv_get_caps(p->hv, timeout, on_reply, c);
        else if (strcmp(op, "set") == 0) {
                r = arg && parse_size(arg, &v) >= 0 ? hv_set_target(p->hv, v, timeout, on_reply, c) : -EINVAL;
        } else if (strcmp(op, "period") == 0) {
                r = arg && parse_u64(arg, &v) >= 0 && v <= UINT32_MAX
                            ? hv_set_stats_period(p->hv, (uint32_t) v, timeout, on_reply, c)
                            : -EINVAL;
        } else if (strcmp(op, "wait") == 0) {
                HvWaitOptions o;
                HvWait *w = NULL;
                hv_wait_options_init(&o);
                o.timeout = timeout;
                r = arg && parse_size(arg, &v) >= 0 ? hv_wait_start(p->hv, v, &o, on_wait, c, &w) : -EINVAL;
                /* The outcome callback runs once; the HvWait is freed after the command. */
                if (r >= 0) {
                        p->pending++;
                        run_loop_until_done(p);
                        hv_wait_free(w);
                        return 0;
                }
        } else
                r = -EINVAL;
        if (r < 0) {
                free(c);
                return r;
        }
        if (async) {
                c->next = p->asyncs;
                p->asyncs = c;
        } else
                p->pending++;
        return 0;
}

static void run_command(Probe *p, char *line, bool *quit) {
        char *save = NULL;
        char *cmd = strtok_r(line, " \t\r\n", &save);
        if (!cmd)
                return;
        char *a1 = strtok_r(NULL, " \t\r\n", &save);
        char *a2 = strtok_r(NULL, " \t\r\n", &save);
        usec_t t;
        int r;

        if (strcmp(cmd, "quit") == 0) {
                *quit = true;
                return;
        }
        if (strcmp(cmd, "counters") == 0) {
                LibvirtCounters k;
                libvirt_hv_counters(p->hv, &k);
                json_t *j = result_new(cmd, 0, "", 0);
                json_object_set_new(j, "counters",
                                    json_pack("{s:I,s:I,s:I,s:I,s:I,s:I}", "connects", (json_int_t) k.connects,
                                              "lookups", (json_int_t) k.lookups, "calls", (json_int_t) k.calls,
                                              "timeouts", (json_int_t) k.timeouts, "late_results",
                                              (json_int_t) k.late_results, "skipped", (json_int_t) k.skipped));
                print_json(j);
                return;
        }
        if (strcmp(cmd, "reopen") == 0) {
                usec_t t0 = now_mono();
                probe_close(p);
                usec_t freed = now_mono() - t0;
                r = probe_open(p);
                json_t *j = result_new(cmd, r < 0 ? r : 0, "", now_mono() - t0);
                json_object_set_new(j, "free_us", json_integer((json_int_t) freed));
                print_json(j);
                if (r < 0)
                        *quit = true;
                return;
        }
        if (strcmp(cmd, "drain") == 0) {
                if (!a1 || parse_duration(a1, &t) < 0) {
                        usage_error(cmd, "drain DURATION");
                        return;
                }
                usec_t deadline = usec_add(now_mono(), t);
                while (now_mono() < deadline)
                        if (ev_run_once(p->ev, deadline) < 0)
                                break;
                print_json(result_new(cmd, 0, "", t));
                return;
        }
        if (strcmp(cmd, "submit") == 0) {
                if (!a1 || parse_timeout(a2, &t) < 0 || submit(p, a1, NULL, t, true, a1) < 0) {
                        usage_error(cmd, "submit actual|stats|caps [TIMEOUT]");
                        return;
                }
                json_t *j = result_new(cmd, 0, "", 0);
                json_object_set_new(j, "submitted", json_string(a1));
                print_json(j);
                return;
        }

        bool takes_arg = strcmp(cmd, "set") == 0 || strcmp(cmd, "period") == 0 || strcmp(cmd, "wait") == 0;
        const char *arg = takes_arg ? a1 : NULL;
        const char *targ = takes_arg ? a2 : a1;
        if ((takes_arg && !arg) || parse_timeout(targ, &t) < 0) {
                usage_error(cmd, "bad arguments");
                return;
        }
        r = submit(p, cmd, arg, t, false, cmd);
        if (r < 0) {
                print_json(result_new(cmd, r, "the driver refused the request", 0));
                return;
        }
        run_loop_until_done(p);
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "uri", required_argument, NULL, 'u' },
                { "domain", required_argument, NULL, 'd' },
                { "commands", required_argument, NULL, 'c' },
                { "help", no_argument, NULL, 'h' },
                {},
        };
        Probe p = { 0 };
        const char *commands = NULL;
        int o;

        while ((o = getopt_long(argc, argv, "u:d:c:h", opts, NULL)) >= 0)
                switch (o) {
                case 'u':
                        p.cfg.uri = optarg;
                        break;
                case 'd':
                        p.cfg.domain = optarg;
                        break;
                case 'c':
                        commands = optarg;
                        break;
                case 'h':
                        printf("usage: libvirt-probe [--uri URI] --domain NAME|UUID [-c \"cmd; cmd\"]\n");
                        return 0;
                default:
                        return 2;
                }
        if (!p.cfg.domain) {
                fprintf(stderr, "libvirt-probe: --domain is required\n");
                return 2;
        }
        if (ev_new(&p.ev) < 0)
                return 1;
        if (probe_open(&p) < 0) {
                ev_free(p.ev);
                return 1;
        }

        bool quit = false;
        if (commands) {
                char *copy = strdup(commands), *save = NULL;
                for (char *c = strtok_r(copy, ";", &save); c && !quit; c = strtok_r(NULL, ";", &save))
                        run_command(&p, c, &quit);
                free(copy);
        } else {
                char *line = NULL;
                size_t cap = 0;
                while (!quit && getline(&line, &cap, stdin) > 0)
                        run_command(&p, line, &quit);
                free(line);
        }
        /* Results of `submit` still in flight are dropped with the driver. */
        probe_close(&p);
        ev_free(p.ev);
        return 0;
}
