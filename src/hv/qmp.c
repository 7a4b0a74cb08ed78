/* SPDX-License-Identifier: MIT */
/* The QEMU driver (B1.1): one QMP connection per VM, commands tagged with ids, replies matched by
 * id, events dispatched apart, stale replies of timed-out commands dropped, a deadline on every
 * operation. A driver operation is a short sequence of QMP commands ("steps"). */
#include "hv/qmp.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hv/hv-req.h"
#include "hv/qmp-proto.h"
#include "shared/conn.h"
#include "shared/macro.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

typedef enum QmpState {
        QMP_DISCONNECTED,
        QMP_AWAIT_GREETING,
        QMP_NEGOTIATING,
        QMP_READY,
} QmpState;

typedef enum QmpStep {
        STEP_END = 0,
        STEP_QUERY_BALLOON,
        STEP_BALLOON_SET,
        STEP_MEM_SUMMARY,
        STEP_DISCOVER_PERIPHERAL,
        STEP_DISCOVER_ANON,
        STEP_GET_STATS,
        STEP_GET_PERIOD,
        STEP_SET_PERIOD,
        STEP_GET_DEFLATE_ON_OOM,
        STEP_GET_FREE_PAGE_REPORTING,
} QmpStep;

static const QmpStep op_steps[_HV_OP_MAX][7] = {
        [HV_OP_GET_ACTUAL] = { STEP_QUERY_BALLOON },
        [HV_OP_SET_TARGET] = { STEP_BALLOON_SET },
        [HV_OP_GET_STATS] = { STEP_DISCOVER_PERIPHERAL, STEP_DISCOVER_ANON, STEP_GET_STATS, STEP_GET_PERIOD },
        [HV_OP_SET_STATS_PERIOD] = { STEP_DISCOVER_PERIPHERAL, STEP_DISCOVER_ANON, STEP_SET_PERIOD },
        [HV_OP_GET_CAPS] = { STEP_QUERY_BALLOON, STEP_MEM_SUMMARY, STEP_DISCOVER_PERIPHERAL, STEP_DISCOVER_ANON,
                             STEP_GET_DEFLATE_ON_OOM, STEP_GET_FREE_PAGE_REPORTING },
};

typedef struct Qmp Qmp;
typedef struct QmpReq QmpReq;

typedef struct QmpCmd {
        uint64_t id;
        char *line;
        const char *name;
        bool sent;
        QmpReq *req; /* NULL for the internal qmp_capabilities */
        struct QmpCmd *next;
} QmpCmd;

struct QmpReq {
        HvReq req; /* first: HvReq* and QmpReq* convert; its timer first fires at once to start the
                    * request, then at its deadline */
        Qmp *q;
        unsigned step;
        bool started;
        QmpCmd *cmd; /* the one command in flight */
};

struct Qmp {
        Hv hv; /* first: Hv* and Qmp* convert */
        char *path;
        uid_t expected_uid;
        char *balloon_path;
        bool balloon_path_fixed;

        QmpState state;
        Conn *conn;
        uint64_t next_id;
        QmpCmd *cmds; /* pending, in send order */
        HvReqs reqs;
        char version[64];

        QmpCounters counters;
        uint64_t old_conn_yields; /* read yields of connections already closed */
        usec_t event_credit;      /* token bucket of the event rate, in usec of refill time */
        usec_t event_credit_at;
        int64_t storm_bytes; /* bytes of dropped events still allowed (QMP_STORM_BYTES_PER_SEC) */
        usec_t storm_bytes_at;
        EvTimer *storm_timer; /* resumes the paused connection */
};

/* One event costs this much credit; the bucket holds QMP_EVENTS_BURST of them. */
#define QMP_EVENT_COST   (USEC_PER_SEC / QMP_EVENTS_PER_SEC)
#define QMP_EVENT_CREDIT ((usec_t) QMP_EVENTS_BURST * QMP_EVENT_COST)

static Qmp *qmp_of(Hv *hv) {
        return (Qmp *) hv;
}

static void qmp_enter(Qmp *q) {
        hv_reqs_enter(&q->reqs);
}

static void qmp_leave(Qmp *q) {
        hv_reqs_leave(&q->reqs);
}

static void cmd_free(QmpCmd *c) {
        if (!c)
                return;
        free(c->line);
        free(c);
}

static void cmd_unlink(Qmp *q, QmpCmd *c) {
        for (QmpCmd **p = &q->cmds; *p; p = &(*p)->next)
                if (*p == c) {
                        *p = c->next;
                        return;
                }
}

/* The request's command goes with it (a later reply to it is then stale and dropped). */
static void req_release(HvReq *req) {
        QmpReq *r = (QmpReq *) req;
        if (r->cmd) {
                cmd_unlink(r->q, r->cmd);
                cmd_free(r->cmd);
        }
}

static void req_finish(QmpReq *r) {
        if (r->req.reply.op == HV_OP_GET_CAPS && r->req.reply.error == 0)
                strscpy(r->req.reply.caps.version, sizeof(r->req.reply.caps.version), r->q->version);
        hv_req_finish(&r->req);
}

static void qmp_disconnect(Qmp *q, int error, const char *why) {
        if (q->conn)
                q->old_conn_yields += conn_yields(q->conn);
        q->conn = conn_free(q->conn);
        q->state = QMP_DISCONNECTED;

        /* Fail every request that has a command queued or in flight on this connection. */
        while (q->cmds) {
                QmpCmd *c = q->cmds;
                q->cmds = c->next;
                QmpReq *r = c->req;
                cmd_free(c);
                if (r) {
                        r->cmd = NULL;
                        hv_req_fail(&r->req, error ?: -ECONNRESET, "QMP connection to %s lost: %s", q->path, why);
                        if (q->reqs.dead)
                                return;
                }
        }
}

static int qmp_send_line(Qmp *q, QmpCmd *c) {
        int r = conn_write(q->conn, c->line, strlen(c->line));
        if (r < 0)
                return r;
        c->sent = true;
        q->counters.commands++;
        return 0;
}

static void qmp_flush_queue(Qmp *q) {
        for (QmpCmd *c = q->cmds; c; c = c->next)
                if (!c->sent && qmp_send_line(q, c) < 0) {
                        qmp_disconnect(q, -EIO, "cannot write to the socket");
                        return;
                }
}

static QmpCmd *qmp_queue(Qmp *q, const char *name, json_t *args, QmpReq *req) {
        QmpCmd *c = calloc(1, sizeof(QmpCmd));
        if (!c) {
                json_decref(args);
                return NULL;
        }
        c->id = ++q->next_id;
        c->name = name;
        c->req = req;
        c->line = qmp_format_command(name, args, c->id);
        if (!c->line) {
                free(c);
                return NULL;
        }
        QmpCmd **p = &q->cmds;
        while (*p)
                p = &(*p)->next;
        *p = c;
        /* A failed write leaves it unsent; the caller sees that and drops the connection. */
        if (q->state == QMP_READY || (!req && q->state == QMP_NEGOTIATING))
                (void) qmp_send_line(q, c);
        return c;
}

/* --- incoming messages --- */

static void qmp_on_greeting(Qmp *q, const QmpMsg *m) {
        if (m->version[0] >= 0)
                snprintf(q->version, sizeof(q->version), "QEMU %d.%d.%d", m->version[0], MAX(m->version[1], 0),
                         MAX(m->version[2], 0));
        else
                snprintf(q->version, sizeof(q->version), "QEMU (unknown version)");
        q->state = QMP_NEGOTIATING;
        if (!qmp_queue(q, "qmp_capabilities", NULL, NULL))
                qmp_disconnect(q, -ENOMEM, "out of memory");
}

static void qmp_step(QmpReq *r);

/* The command a reply answers: by our id, or (parse errors come back without an id) the oldest
 * command sent; NULL for a reply to a command that already timed out, or a garbage id. */
static QmpCmd *qmp_reply_cmd(Qmp *q, const QmpMsg *m) {
        if (m->id_is_ours) {
                for (QmpCmd *i = q->cmds; i; i = i->next)
                        if (i->sent && i->id == m->id)
                                return i;
        } else if (!m->id_present && m->type == QMP_MSG_ERROR) {
                for (QmpCmd *i = q->cmds; i; i = i->next)
                        if (i->sent)
                                return i;
        }
        return NULL;
}

/* QEMU refused the step's command: some refusals only mean a feature is absent. */
static void req_on_error(QmpReq *r, QmpStep step, const QmpMsg *m) {
        const char *cls = m->error_class;
        HvReply *rep = &r->req.reply;
        if (step == STEP_QUERY_BALLOON && r->req.op == HV_OP_GET_CAPS && strcmp(cls, "DeviceNotActive") == 0) {
                rep->caps.balloon = false;
                r->step++; /* still read the memory size, then stop */
                if (op_steps[r->req.op][r->step] == STEP_MEM_SUMMARY)
                        qmp_step(r);
                else
                        req_finish(r);
                return;
        }
        if (step == STEP_GET_PERIOD || /* optional */
            ((step == STEP_GET_DEFLATE_ON_OOM || step == STEP_GET_FREE_PAGE_REPORTING) &&
             strcmp(cls, "GenericError") == 0)) { /* older QEMU without the property: no such feature */
                r->step++;
                qmp_step(r);
                return;
        }
        hv_req_fail(&r->req, strcmp(cls, "DeviceNotActive") == 0 ? -ENODEV : -EREMOTEIO, "QEMU refused %s: %s: %s",
                    hv_op_to_string(r->req.op), cls, m->error_desc);
}

/* qom-list of /machine/peripheral or /machine/peripheral-anon: the balloon's QOM path. Returns
 * false after failing the request. */
static bool req_on_discover(Qmp *q, QmpReq *r, QmpStep step, json_t *v) {
        size_t i;
        json_t *e;
        const char *base = step == STEP_DISCOVER_PERIPHERAL ? "/machine/peripheral" : "/machine/peripheral-anon";
        json_array_foreach(v, i, e) {
                const char *type = json_string_value(json_object_get(e, "type"));
                const char *name = json_string_value(json_object_get(e, "name"));
                if (type && name && strncmp(type, "child<virtio-balloon-", 21) == 0 && strlen(name) < 200) {
                        char path[256];
                        snprintf(path, sizeof(path), "%s/%s", base, name);
                        free(q->balloon_path);
                        q->balloon_path = strdup(path);
                        if (!q->balloon_path) {
                                hv_req_fail(&r->req, -ENOMEM, "out of memory");
                                return false;
                        }
                        break;
                }
        }
        if (step == STEP_DISCOVER_ANON && !q->balloon_path) {
                hv_req_fail(&r->req, -ENODEV, "no virtio-balloon device found under /machine/peripheral{,-anon}");
                return false;
        }
        return true;
}

/* The step's command returned v. Returns true to go on with the next step, false when the
 * request was failed or finished here. */
static bool req_on_return(Qmp *q, QmpReq *r, QmpStep step, json_t *v) {
        HvReply *rep = &r->req.reply;
        char err[256];
        switch (step) {
        case STEP_QUERY_BALLOON: {
                json_t *a = json_object_get(v, "actual");
                if (!json_is_integer(a) || json_integer_value(a) < 0) {
                        hv_req_fail(&r->req, -EBADMSG, "query-balloon reply has no valid \"actual\"");
                        return false;
                }
                rep->actual = (uint64_t) json_integer_value(a);
                rep->caps.balloon = true;
                /* QEMU's virtio-balloon always has the guest-stats properties (the guest fills
                 * them once a polling interval is set). */
                rep->caps.stats = true;
                return true;
        }
        case STEP_MEM_SUMMARY: {
                json_t *b = json_object_get(v, "base-memory");
                if (!json_is_integer(b) || json_integer_value(b) <= 0) {
                        hv_req_fail(&r->req, -EBADMSG, "query-memory-size-summary reply has no valid \"base-memory\"");
                        return false;
                }
                rep->caps.ram_bytes = (uint64_t) json_integer_value(b);
                if (!rep->caps.balloon) {
                        req_finish(r);
                        return false;
                }
                return true;
        }
        case STEP_DISCOVER_PERIPHERAL:
        case STEP_DISCOVER_ANON:
                return req_on_discover(q, r, step, v);
        case STEP_GET_STATS: {
                int k = qmp_parse_guest_stats(v, &rep->stats, err, sizeof(err));
                if (k < 0) {
                        hv_req_fail(&r->req, k, "%s", err);
                        return false;
                }
                return true;
        }
        case STEP_GET_PERIOD:
                if (json_is_integer(v) && json_integer_value(v) >= 0 && json_integer_value(v) <= UINT32_MAX)
                        rep->stats.period = (uint32_t) json_integer_value(v);
                return true;
        case STEP_GET_DEFLATE_ON_OOM:
                rep->caps.deflate_on_oom = json_is_true(v);
                return true;
        case STEP_GET_FREE_PAGE_REPORTING:
                rep->caps.free_page_reporting = json_is_true(v);
                return true;
        case STEP_BALLOON_SET:
        case STEP_SET_PERIOD:
        case STEP_END:
                return true;
        }
        return true;
}

static void qmp_on_reply(Qmp *q, const QmpMsg *m) {
        QmpCmd *c = qmp_reply_cmd(q, m);
        if (!c) {
                /* A reply to a command that already timed out (or garbage id): drop it. */
                q->counters.stale_replies++;
                return;
        }
        q->counters.replies++;
        cmd_unlink(q, c);

        QmpReq *r = c->req;
        if (!r) { /* qmp_capabilities */
                bool ok = m->type == QMP_MSG_RETURN;
                cmd_free(c);
                if (!ok) {
                        qmp_disconnect(q, -EPROTO, "qmp_capabilities was refused");
                        return;
                }
                q->state = QMP_READY;
                qmp_flush_queue(q);
                return;
        }
        r->cmd = NULL;
        cmd_free(c);

        QmpStep step = op_steps[r->req.op][r->step];
        if (m->type == QMP_MSG_ERROR) {
                req_on_error(r, step, m);
                return;
        }
        if (req_on_return(q, r, step, m->value)) {
                r->step++;
                qmp_step(r);
        }
}

/* Whether the event rate leaves room for one more event now (the bucket refilled first). */
static bool qmp_event_credit(Qmp *q) {
        usec_t now = ev_now(q->hv.ev);
        if (now > q->event_credit_at) {
                q->event_credit = MIN(usec_add(q->event_credit, now - q->event_credit_at), QMP_EVENT_CREDIT);
                q->event_credit_at = now;
        }
        return q->event_credit >= QMP_EVENT_COST;
}

static bool qmp_event_admit(Qmp *q) {
        if (!qmp_event_credit(q))
                return false;
        q->event_credit -= QMP_EVENT_COST;
        return true;
}

static void qmp_storm_resume(EvTimer *t, void *userdata) {
        Qmp *q = userdata;
        (void) t;
        if (q->conn)
                conn_resume(q->conn);
}

/* Charges a dropped event's bytes to the storm budget; when it is spent, the connection is paused
 * until 64 KiB of it are back. Returns whether reading goes on now. */
static bool qmp_storm_charge(Qmp *q, size_t bytes) {
        const int64_t rate = QMP_STORM_BYTES_PER_SEC;
        usec_t now = ev_now(q->hv.ev);
        if (now > q->storm_bytes_at) {
                usec_t dt = MIN(now - q->storm_bytes_at, USEC_PER_SEC);
                q->storm_bytes = MIN(q->storm_bytes + (int64_t) (dt * (uint64_t) rate / USEC_PER_SEC), rate);
                q->storm_bytes_at = now;
        }
        q->storm_bytes -= (int64_t) bytes;
        if (q->storm_bytes > 0)
                return true;
        usec_t wait = (usec_t) ((64 * 1024 - q->storm_bytes) * (int64_t) USEC_PER_SEC / rate);
        if (!q->storm_timer) {
                if (ev_timer_add(q->hv.ev, usec_add(now, wait), qmp_storm_resume, q, &q->storm_timer) < 0)
                        return true; /* no timer: go on reading rather than stay paused */
        } else
                ev_timer_set(q->storm_timer, usec_add(now, wait));
        q->counters.storm_pauses++;
        conn_pause(q->conn);
        return false;
}

static void qmp_on_event(Qmp *q, const QmpMsg *m) {
        q->counters.events++;
        if (!qmp_event_admit(q)) {
                q->counters.events_dropped++;
                return;
        }
        if (strcmp(m->event, "BALLOON_CHANGE") != 0)
                return;
        json_t *a = json_object_get(m->value, "actual");
        if (json_is_integer(a) && json_integer_value(a) >= 0)
                hv_notify_actual(&q->hv, (uint64_t) json_integer_value(a), m->event_time_us);
}

static ssize_t qmp_on_data(Conn *c, const char *buf, size_t len, void *userdata) {
        Qmp *q = userdata;
        size_t off = 0;
        unsigned handled = 0;

        while (off < len && !q->reqs.dead && q->conn) {
                if (handled++ == QMP_MESSAGES_PER_WAKEUP) {
                        /* The rest waits for the next iteration: others run first. */
                        if (q->conn == c)
                                conn_yield(c);
                        break;
                }
                size_t line_len, consumed;
                int r = qmp_next_line(buf + off, len - off, QMP_MAX_MESSAGE, &line_len, &consumed);
                if (r < 0) {
                        q->counters.protocol_errors++;
                        qmp_disconnect(q, -EMSGSIZE, "QMP message over 1 MiB");
                        return 0;
                }
                if (r == 0)
                        break;
                const char *line = buf + off;
                off += consumed;
                if (line_len == 0)
                        continue;
                /* Over the event rate, an event is dropped without being parsed: a storm then
                 * costs one pass over its bytes, not a JSON parse per event (a third of ballastd's
                 * CPU in the soak). */
                if (q->state != QMP_AWAIT_GREETING && !qmp_event_credit(q) && qmp_line_is_event(line, line_len)) {
                        q->counters.events++;
                        q->counters.events_dropped++;
                        if (!qmp_storm_charge(q, consumed))
                                break;
                        continue;
                }

                QmpMsg m;
                char err[256];
                r = qmp_msg_parse(line, line_len, &m, err, sizeof(err));
                if (r < 0) {
                        q->counters.protocol_errors++;
                        qmp_disconnect(q, r, err);
                        return 0;
                }
                if (m.type == QMP_MSG_GREETING) {
                        if (q->state == QMP_AWAIT_GREETING)
                                qmp_on_greeting(q, &m);
                } else if (q->state == QMP_AWAIT_GREETING) {
                        qmp_msg_done(&m);
                        q->counters.protocol_errors++;
                        qmp_disconnect(q, -EPROTO, "peer did not start with a QMP greeting");
                        return 0;
                } else if (m.type == QMP_MSG_EVENT)
                        qmp_on_event(q, &m);
                else
                        qmp_on_reply(q, &m);
                qmp_msg_done(&m);
        }
        return (ssize_t) off;
}

static void qmp_on_close(Conn *c, int error, const char *msg, void *userdata) {
        Qmp *q = userdata;
        (void) c;
        qmp_enter(q);
        qmp_disconnect(q, error ?: -ECONNRESET, msg);
        qmp_leave(q);
}

static ssize_t qmp_on_data_guarded(Conn *c, const char *buf, size_t len, void *userdata) {
        Qmp *q = userdata;
        qmp_enter(q);
        ssize_t n = qmp_on_data(c, buf, len, userdata);
        /* If the connection was dropped while parsing, the Conn is gone: consume nothing more. */
        qmp_leave(q);
        return n;
}

static int qmp_attach(Qmp *q, int fd) {
        static const ConnCallbacks cbs = { .on_data = qmp_on_data_guarded, .on_close = qmp_on_close };
        int r = conn_new(q->hv.ev, fd, QMP_MAX_MESSAGE + 2, &cbs, q, &q->conn);
        if (r < 0)
                return r;
        q->state = QMP_AWAIT_GREETING;
        q->counters.connects++;
        return 0;
}

static int qmp_connect(Qmp *q, char *err, size_t errlen) {
        int fd = usock_connect(q->path, err, errlen);
        if (fd < 0)
                return fd;
        pid_t pid = 0;
        int r = usock_check_peer(fd, q->expected_uid, &pid, NULL, err, errlen);
        if (r < 0) {
                safe_close(fd);
                return r;
        }
        q->hv.peer_pid = pid;
        r = qmp_attach(q, fd);
        if (r < 0) {
                snprintf(err, errlen, "cannot watch the QMP socket: %s", strerror(-r));
                return r;
        }
        return 0;
}

int qmp_hv_attach_fd(Hv *hv, int fd) {
        Qmp *q = qmp_of(hv);
        if (q->conn) {
                qmp_enter(q);
                qmp_disconnect(q, -ECONNRESET, "replaced");
                qmp_leave(q);
        }
        return qmp_attach(q, fd);
}

int qmp_hv_inject(Hv *hv, const void *buf, size_t len) {
        Qmp *q = qmp_of(hv);
        if (!q->conn)
                return -ENOTCONN;
        qmp_enter(q);
        int r = conn_inject(q->conn, buf, len);
        qmp_leave(q);
        return r < 0 ? -ENOTCONN : 0;
}

/* --- requests --- */

static const char *qom_property(QmpStep step) {
        switch (step) {
        case STEP_GET_STATS:
                return "guest-stats";
        case STEP_GET_PERIOD:
                return "guest-stats-polling-interval";
        case STEP_GET_DEFLATE_ON_OOM:
                return "deflate-on-oom";
        case STEP_GET_FREE_PAGE_REPORTING:
                return "free-page-reporting";
        default:
                return NULL;
        }
}

static void qmp_step(QmpReq *r) {
        Qmp *q = r->q;

        for (;;) {
                QmpStep step = op_steps[r->req.op][r->step];
                if (step == STEP_END) {
                        req_finish(r);
                        return;
                }
                if ((step == STEP_DISCOVER_PERIPHERAL || step == STEP_DISCOVER_ANON) && q->balloon_path) {
                        r->step++;
                        continue;
                }
                break;
        }

        QmpStep step = op_steps[r->req.op][r->step];
        const char *name = NULL;
        json_t *args = NULL;
        switch (step) {
        case STEP_QUERY_BALLOON:
                name = "query-balloon";
                break;
        case STEP_BALLOON_SET:
                name = "balloon";
                args = json_pack("{s:I}", "value", (json_int_t) r->req.arg);
                break;
        case STEP_MEM_SUMMARY:
                name = "query-memory-size-summary";
                break;
        case STEP_DISCOVER_PERIPHERAL:
                name = "qom-list";
                args = json_pack("{s:s}", "path", "/machine/peripheral");
                break;
        case STEP_DISCOVER_ANON:
                name = "qom-list";
                args = json_pack("{s:s}", "path", "/machine/peripheral-anon");
                break;
        case STEP_GET_STATS:
        case STEP_GET_PERIOD:
        case STEP_GET_DEFLATE_ON_OOM:
        case STEP_GET_FREE_PAGE_REPORTING:
                name = "qom-get";
                args = json_pack("{s:s,s:s}", "path", q->balloon_path, "property", qom_property(step));
                break;
        case STEP_SET_PERIOD:
                name = "qom-set";
                args = json_pack("{s:s,s:s,s:I}", "path", q->balloon_path, "property", "guest-stats-polling-interval",
                                 "value", (json_int_t) r->req.arg);
                break;
        case STEP_END:
                return;
        }

        if (q->state == QMP_DISCONNECTED) {
                char err[HV_MESSAGE_MAX - 64];
                int k = qmp_connect(q, err, sizeof(err));
                if (k < 0) {
                        json_decref(args);
                        hv_req_fail(&r->req, k, "%s", err);
                        return;
                }
        }
        r->cmd = qmp_queue(q, name, args, r);
        if (!r->cmd)
                hv_req_fail(&r->req, -ENOMEM, "out of memory");
        else if (q->state == QMP_READY && !r->cmd->sent)
                /* The write buffer is full or the socket broke: fail now, not at the deadline. */
                qmp_disconnect(q, -EIO, "cannot write to the QMP socket");
}

static void qmp_on_req_timeout(EvTimer *t, void *userdata) {
        QmpReq *r = userdata;
        Qmp *q = r->q;
        char d[32];
        (void) t;

        qmp_enter(q);
        if (!r->started) {
                r->started = true;
                ev_timer_set(r->req.timer, usec_add(ev_now(q->hv.ev), r->req.timeout));
                qmp_step(r);
                qmp_leave(q);
                return;
        }
        q->counters.timeouts++;
        format_duration(d, sizeof(d), r->req.timeout);
        if (q->state == QMP_AWAIT_GREETING || q->state == QMP_NEGOTIATING) {
                /* Nothing useful will come on this connection; the next operation reconnects. */
                if (q->state == QMP_AWAIT_GREETING)
                        hv_req_fail(&r->req, -ETIMEDOUT,
                                    "no QMP greeting from %s within %s (hung peer, or another client holds the socket: "
                                    "QEMU serves one QMP client at a time)",
                                    q->path, d);
                else
                        hv_req_fail(&r->req, -ETIMEDOUT,
                                    "QMP capabilities negotiation with %s did not complete within %s", q->path, d);
                if (!q->reqs.dead && q->state != QMP_READY)
                        qmp_disconnect(q, -ETIMEDOUT, "greeting timeout");
        } else
                hv_req_fail(&r->req, -ETIMEDOUT, "QMP %s on %s got no reply within %s", hv_op_to_string(r->req.op),
                            q->path, d);
        qmp_leave(q);
}

static int qmp_submit(Hv *hv, HvOp op, uint64_t arg, usec_t timeout, hv_reply_cb cb, void *userdata) {
        Qmp *q = qmp_of(hv);
        HvReq *r;
        /* The first step runs from the loop, never inside the caller: callbacks are always
         * asynchronous, so callers need no re-entrancy care. */
        int k = hv_req_submit(&q->reqs, sizeof(QmpReq), op, arg, timeout, cb, userdata, qmp_on_req_timeout, &r);
        if (k < 0)
                return k;
        ((QmpReq *) r)->q = q;
        return 0;
}

static int qmp_get_actual(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return qmp_submit(hv, HV_OP_GET_ACTUAL, 0, timeout, cb, ud);
}

static int qmp_set_target(Hv *hv, uint64_t bytes, usec_t timeout, hv_reply_cb cb, void *ud) {
        /* QEMU takes int64 and refuses ≤ 0; more than RAM is clamped by QEMU itself (full deflate). */
        if (bytes == 0 || bytes > (UINT64_C(1) << 62))
                return -EINVAL;
        return qmp_submit(hv, HV_OP_SET_TARGET, bytes, timeout, cb, ud);
}

static int qmp_get_stats(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return qmp_submit(hv, HV_OP_GET_STATS, 0, timeout, cb, ud);
}

static int qmp_set_stats_period(Hv *hv, uint32_t seconds, usec_t timeout, hv_reply_cb cb, void *ud) {
        return qmp_submit(hv, HV_OP_SET_STATS_PERIOD, seconds, timeout, cb, ud);
}

static int qmp_get_caps(Hv *hv, usec_t timeout, hv_reply_cb cb, void *ud) {
        return qmp_submit(hv, HV_OP_GET_CAPS, 0, timeout, cb, ud);
}

static void qmp_cancel(Hv *hv, void *userdata) {
        hv_reqs_cancel(&qmp_of(hv)->reqs, userdata);
}

static void qmp_free_now(Hv *hv) {
        Qmp *q = qmp_of(hv);
        hv_reqs_clear(&q->reqs);
        while (q->cmds) {
                QmpCmd *c = q->cmds;
                q->cmds = c->next;
                cmd_free(c);
        }
        conn_free(q->conn);
        ev_timer_free(q->storm_timer);
        free(q->path);
        free(q->balloon_path);
        free(q);
}

static void qmp_free(Hv *hv) {
        hv_reqs_kill(&qmp_of(hv)->reqs);
}

static void qmp_counters(Hv *hv, HvCounters *ret) {
        Qmp *q = qmp_of(hv);
        *ret = (HvCounters){
                .events = q->counters.events,
                .events_dropped = q->counters.events_dropped,
                .read_yields = q->old_conn_yields + (q->conn ? conn_yields(q->conn) : 0),
        };
}

static const HvOps qmp_ops = {
        .name = "qemu",
        .get_actual = qmp_get_actual,
        .set_target = qmp_set_target,
        .get_stats = qmp_get_stats,
        .set_stats_period = qmp_set_stats_period,
        .get_caps = qmp_get_caps,
        .cancel = qmp_cancel,
        .free = qmp_free,
        .counters = qmp_counters,
};

int qmp_hv_new(Ev *ev, const QmpConfig *cfg, Hv **ret) {
        if (!cfg->socket_path)
                return -EINVAL;
        Qmp *q = calloc(1, sizeof(Qmp));
        if (!q)
                return -ENOMEM;
        q->hv.ops = &qmp_ops;
        q->hv.ev = ev;
        hv_reqs_init(&q->reqs, &q->hv, req_release, qmp_free_now);
        q->expected_uid = cfg->expected_uid;
        q->event_credit = QMP_EVENT_CREDIT;
        q->event_credit_at = ev_now(ev);
        q->path = strdup(cfg->socket_path);
        if (cfg->balloon_qom_path) {
                q->balloon_path = strdup(cfg->balloon_qom_path);
                q->balloon_path_fixed = true;
        }
        if (!q->path || (cfg->balloon_qom_path && !q->balloon_path)) {
                qmp_free_now(&q->hv);
                return -ENOMEM;
        }
        *ret = &q->hv;
        return 0;
}

void qmp_hv_counters(Hv *hv, QmpCounters *ret) {
        Qmp *q = qmp_of(hv);
        *ret = q->counters;
        ret->read_yields = q->old_conn_yields + (q->conn ? conn_yields(q->conn) : 0);
}

const char *qmp_hv_version(Hv *hv) {
        return qmp_of(hv)->version;
}
