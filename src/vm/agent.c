/* SPDX-License-Identifier: MIT */
#include "vm/agent.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hv/qmp-proto.h"
#include "shared/macro.h"
#include "shared/unix-sock.h"

#define AGENT_MAX_LINE ((size_t) 4 << 20) /* exec output can be 2 × 1 MiB, escaped */

struct AgentClient {
        int fd;
        uint64_t next_id;
        char *buf;
        size_t len;
};

int agent_connect(const char *path, uid_t expected_uid, usec_t timeout, AgentClient **ret, char *err, size_t errlen) {
        usec_t deadline = usec_add(now_mono(), timeout);
        int fd;
        for (;;) {
                fd = usock_connect(path, err, errlen);
                if (fd >= 0)
                        break;
                /* Backlog full: QEMU is slow to accept. Anything else is final. */
                if (fd != -EAGAIN || now_mono() >= deadline)
                        return fd;
                usleep(10 * 1000);
        }
        int r = usock_check_peer(fd, expected_uid, NULL, NULL, err, errlen);
        if (r < 0) {
                safe_close(fd);
                return r;
        }
        AgentClient *a = calloc(1, sizeof(AgentClient));
        if (!a) {
                safe_close(fd);
                return -ENOMEM;
        }
        a->fd = fd;
        a->buf = malloc(AGENT_MAX_LINE + 1);
        if (!a->buf) {
                agent_close(a);
                return -ENOMEM;
        }
        *ret = a;
        return 0;
}

AgentClient *agent_close(AgentClient *a) {
        if (!a)
                return NULL;
        safe_close(a->fd);
        free(a->buf);
        free(a);
        return NULL;
}

static int write_all(int fd, const char *p, size_t n, usec_t deadline) {
        while (n > 0) {
                ssize_t k = write(fd, p, n);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno != EAGAIN)
                                return negative_errno();
                        struct pollfd pfd = { .fd = fd, .events = POLLOUT };
                        int t = usec_to_poll_timeout(deadline, now_mono());
                        if (t == 0)
                                return -ETIMEDOUT;
                        if (poll(&pfd, 1, t) < 0 && errno != EINTR)
                                return negative_errno();
                        continue;
                }
                p += k;
                n -= (size_t) k;
        }
        return 0;
}

/* Reads one line (without \n) into a fresh json object; skips blank lines. */
static int read_message(AgentClient *a, usec_t deadline, json_t **ret, char *err, size_t errlen) {
        for (;;) {
                size_t line_len, consumed;
                int r = qmp_next_line(a->buf, a->len, AGENT_MAX_LINE, &line_len, &consumed);
                if (r < 0) {
                        snprintf(err, errlen, "agent sent a line over %zu bytes", AGENT_MAX_LINE);
                        return -EMSGSIZE;
                }
                if (r > 0) {
                        json_error_t je;
                        json_t *j = line_len ? json_loadb(a->buf, line_len, 0, &je) : NULL;
                        memmove(a->buf, a->buf + consumed, a->len - consumed);
                        a->len -= consumed;
                        if (line_len == 0)
                                continue;
                        if (!j || !json_is_object(j)) {
                                json_decref(j);
                                snprintf(err, errlen, "agent sent malformed JSON%s%s", j ? "" : ": ", j ? "" : je.text);
                                return -EBADMSG;
                        }
                        *ret = j;
                        return 0;
                }
                struct pollfd pfd = { .fd = a->fd, .events = POLLIN };
                int t = usec_to_poll_timeout(deadline, now_mono());
                if (t == 0) {
                        snprintf(err, errlen, "agent did not answer in time");
                        return -ETIMEDOUT;
                }
                r = poll(&pfd, 1, t);
                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (r == 0)
                        continue;
                ssize_t k = read(a->fd, a->buf + a->len, AGENT_MAX_LINE - a->len);
                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        r = negative_errno();
                        snprintf(err, errlen, "reading from the agent: %s", strerror(-r));
                        return r;
                }
                if (k == 0) {
                        snprintf(err, errlen, "agent connection closed (VM gone?)");
                        return -ECONNRESET;
                }
                a->len += (size_t) k;
        }
}

int agent_call(AgentClient *a, const char *cmd, json_t *args, usec_t timeout, json_t **ret_reply, char *err,
               size_t errlen) {
        usec_t deadline = usec_add(now_mono(), timeout);
        uint64_t id = ++a->next_id;

        json_t *req = json_pack("{s:I,s:s}", "id", (json_int_t) id, "cmd", cmd);
        if (!req) {
                json_decref(args);
                return -ENOMEM;
        }
        if (args)
                json_object_set_new(req, "args", args);
        _cleanup_free_ char *line = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        if (!line)
                return -ENOMEM;
        size_t n = strlen(line);
        line[n] = '\n'; /* json_dumps gives n+1 bytes: reuse the NUL slot */
        int r = write_all(a->fd, line, n + 1, deadline);
        if (r < 0) {
                snprintf(err, errlen, "writing to the agent: %s", strerror(-r));
                return r;
        }
        for (;;) {
                json_t *m;
                r = read_message(a, deadline, &m, err, errlen);
                if (r < 0) {
                        if (r == -ETIMEDOUT)
                                snprintf(err, errlen, "agent did not answer '%s' within %.1f s", cmd,
                                         (double) timeout / (double) USEC_PER_SEC);
                        return r;
                }
                json_t *rid = json_object_get(m, "id");
                if (json_is_integer(rid) && (uint64_t) json_integer_value(rid) == id) {
                        *ret_reply = m;
                        return 0;
                }
                json_decref(m); /* an event, or a reply to an earlier timed-out call */
        }
}

static bool process_gone(pid_t pid) {
        return pid > 0 && kill(pid, 0) < 0 && errno == ESRCH;
}

int agent_wait_ready(const char *path, uid_t expected_uid, usec_t timeout, pid_t watch_pid, json_t **ret_ping,
                     char *err, size_t errlen) {
        usec_t deadline = usec_add(now_mono(), timeout);
        char last[256] = "agent not reachable";

        while (now_mono() < deadline) {
                if (process_gone(watch_pid)) {
                        snprintf(err, errlen, "QEMU (pid %d) exited while the guest was booting", (int) watch_pid);
                        return -ECHILD;
                }
                AgentClient *a = NULL;
                int r = agent_connect(path, expected_uid, USEC_PER_SEC, &a, last, sizeof(last));
                if (r == -EPERM) {
                        snprintf(err, errlen, "%s", last);
                        return r;
                }
                if (r >= 0) {
                        /* Keep asking on this connection: the guest opens its port when it is up. */
                        while (now_mono() < deadline && !process_gone(watch_pid)) {
                                json_t *reply = NULL;
                                usec_t left = usec_sub_floor(deadline, now_mono());
                                r = agent_call(a, "ping", NULL, MIN(left, USEC_PER_SEC), &reply, last, sizeof(last));
                                if (r == -ETIMEDOUT)
                                        continue;
                                if (r < 0)
                                        break;
                                if (json_is_true(json_object_get(reply, "ready"))) {
                                        agent_close(a);
                                        *ret_ping = reply;
                                        return 0;
                                }
                                const char *why = json_string_value(json_object_get(reply, "reason"));
                                snprintf(last, sizeof(last), "agent answers but is not ready: %s", why ?: "?");
                                json_decref(reply);
                                usleep(100 * 1000);
                        }
                        a = agent_close(a);
                }
                usleep(50 * 1000);
        }
        snprintf(err, errlen, "%s", last);
        return -ETIMEDOUT;
}
