/* SPDX-License-Identifier: MIT */
/* ballast-agent: `exec` and `fill` child processes.
 *
 * Both run as children so the single-threaded agent never blocks: it only
 * shuffles pipe bytes and reaps. Every fd the agent keeps is O_NONBLOCK and
 * O_CLOEXEC; children get a clean signal state (the agent blocks SIGCHLD and
 * SIGIO for its signalfd, and a blocked mask survives execve). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define EXEC_EXIT_GRACE_US                                                                                             \
        (200 * 1000) /* after the child exits, wait this long for pipe EOF                                             \
                      * (a backgrounded grandchild may hold the pipes forever) */

struct ExecJob {
        ExecJob *next;
        char id_json[AGENT_ID_JSON_MAX];
        pid_t pid;
        int out_fd, err_fd, in_fd;
        AgentBuf out, err;
        bool out_trunc, err_trunc;
        uint64_t max_output;
        char *stdin_data;
        size_t stdin_len, stdin_off;
        usec_t start, deadline, exited_at;
        bool exited, timed_out;
        int status;
};

enum { FILL_MSG_FILLED = 1, FILL_MSG_VERIFIED = 2, FILL_MSG_FAILED = 3 };

/* Child -> agent report; smaller than PIPE_BUF, so each write is atomic. */
typedef struct FillMsg {
        int32_t kind;
        int32_t err;
        uint64_t mib_done;
        uint64_t checksum;
        uint64_t count; /* nonzero_pages (FILLED) or bad_pages (VERIFIED) */
        double seconds;
} FillMsg;

struct FillJob {
        FillJob *next;
        uint64_t handle; /* 0 when not held */
        pid_t pid;
        int rd_fd, wr_fd;
        uint64_t mib;
        bool hold, check_zero, filled;
        /* the request waiting on this child, if any */
        bool pending;
        AgentCmd pending_cmd;
        char pending_id[AGENT_ID_JSON_MAX];
        uint64_t oom_before;
        /* set when the child died while nobody was waiting */
        bool dead;
        int dead_signal;
        bool dead_oom;
};

static void close_fd(int *fd) {
        if (*fd >= 0)
                close(*fd);
        *fd = -1;
}

static uint64_t oom_kill_count(void) {
        char *s;
        uint64_t v = 0;
        if (agent_read_file("/proc/vmstat", &s) >= 0) {
                agent_vmstat_get(s, "oom_kill", &v);
                free(s);
        }
        return v;
}

/* In a fresh child: undo what the agent set up for itself. */
static void child_reset_signals(void) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
}

/* ======================================================================== */
/* exec */

static void exec_child(AgentRequest *req, int in_fd, int out_fd, int err_fd) {
        setpgid(0, 0);
        child_reset_signals();
        if (in_fd < 0)
                in_fd = open("/dev/null", O_RDONLY);
        if (in_fd >= 0)
                dup2(in_fd, 0);
        dup2(out_fd, 1);
        dup2(err_fd, 2);
        if (chdir("/") < 0) {
                /* not fatal: the command just runs wherever we are */
        }
        execvp(req->argv[0], req->argv);
        int e = errno;
        dprintf(2, "ballast-agent: exec %s: %s\n", req->argv[0], strerror(e));
        _exit(e == ENOENT ? 127 : 126); /* shell conventions */
}

int agent_exec_start(Agent *a, AgentRequest *req) {
        int outp[2] = { -1, -1 }, errp[2] = { -1, -1 }, inp[2] = { -1, -1 };
        AgentBuf b = { 0 };
        ExecJob *j = calloc(1, sizeof *j);
        if (!j)
                goto fail;
        if (pipe2(outp, O_CLOEXEC) < 0 || pipe2(errp, O_CLOEXEC) < 0)
                goto fail;
        if (req->stdin_data && pipe2(inp, O_CLOEXEC) < 0)
                goto fail;
        pid_t pid = fork();
        if (pid < 0)
                goto fail;
        if (pid == 0)
                exec_child(req, inp[0], outp[1], errp[1]);
        setpgid(pid, pid); /* also in the parent: no race with an early timeout kill */

        *j = (ExecJob){
                .pid = pid,
                .out_fd = outp[0],
                .err_fd = errp[0],
                .in_fd = inp[1],
                .max_output = req->max_output,
                .stdin_data = req->stdin_data,
                .stdin_len = req->stdin_len,
                .start = agent_now(),
        };
        req->stdin_data = NULL; /* moved into the job */
        j->deadline = j->start + req->timeout_ms * 1000;
        snprintf(j->id_json, sizeof j->id_json, "%s", req->id_json);
        close(outp[1]);
        close(errp[1]);
        close_fd(&inp[0]);
        fcntl(j->out_fd, F_SETFL, O_NONBLOCK);
        fcntl(j->err_fd, F_SETFL, O_NONBLOCK);
        if (j->in_fd >= 0) {
                fcntl(j->in_fd, F_SETFL, O_NONBLOCK);
                if (j->stdin_len == 0)
                        close_fd(&j->in_fd);
        }
        j->next = a->execs;
        a->execs = j;
        return 0;

fail:;
        int e = errno;
        for (int i = 0; i < 2; i++) {
                close_fd(&outp[i]);
                close_fd(&errp[i]);
                close_fd(&inp[i]);
        }
        free(j);
        char msg[128];
        snprintf(msg, sizeof msg, "exec: cannot start child: %s", strerror(e));
        agent_reply_error(&b, req->id_json, msg);
        agent_send(a, &b);
        agent_buf_free(&b);
        return -e;
}

static void exec_drain(ExecJob *j, int *fd, AgentBuf *buf, bool *trunc) {
        char tmp[65536];
        /* Bounded per wakeup so one chatty child cannot starve the loop. */
        for (int i = 0; i < 16; i++) {
                ssize_t n = read(*fd, tmp, sizeof tmp);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n <= 0) {
                        close_fd(fd);
                        return;
                }
                size_t room = buf->len < j->max_output ? (size_t) (j->max_output - buf->len) : 0;
                size_t take = (size_t) n < room ? (size_t) n : room;
                agent_buf_put(buf, tmp, take);
                if (take < (size_t) n)
                        *trunc = true; /* keep draining, or the child blocks on a full pipe */
        }
}

static void exec_feed_stdin(ExecJob *j) {
        while (j->in_fd >= 0 && j->stdin_off < j->stdin_len) {
                ssize_t n = write(j->in_fd, j->stdin_data + j->stdin_off, j->stdin_len - j->stdin_off);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n <= 0) {
                        close_fd(&j->in_fd); /* EPIPE: the child does not want it */
                        return;
                }
                j->stdin_off += (size_t) n;
        }
        close_fd(&j->in_fd); /* all written: EOF for the child */
}

static void exec_finish(Agent *a, ExecJob *j) {
        AgentBuf b = { 0 };
        int code = 0, sig = 0;
        if (WIFEXITED(j->status))
                code = WEXITSTATUS(j->status);
        else if (WIFSIGNALED(j->status)) {
                sig = WTERMSIG(j->status);
                code = 128 + sig;
        }
        agent_reply_begin(&b, j->id_json, true);
        agent_json_field_i64(&b, "exit_code", code);
        agent_json_field_i64(&b, "signal", sig);
        agent_json_field_bool(&b, "timed_out", j->timed_out);
        agent_json_field_bytes(&b, "stdout", j->out.data, j->out.len);
        agent_json_field_bytes(&b, "stderr", j->err.data, j->err.len);
        agent_json_field_bool(&b, "stdout_truncated", j->out_trunc);
        agent_json_field_bool(&b, "stderr_truncated", j->err_trunc);
        agent_json_field_u64(&b, "duration_ms", (j->exited_at - j->start) / 1000);
        agent_reply_end(&b);
        if (b.oom) {
                agent_buf_reset(&b);
                agent_reply_error(&b, j->id_json, "exec: out of memory encoding the reply");
        }
        agent_send(a, &b);
        agent_buf_free(&b);
}

static void exec_free(ExecJob *j) {
        close_fd(&j->out_fd);
        close_fd(&j->err_fd);
        close_fd(&j->in_fd);
        agent_buf_free(&j->out);
        agent_buf_free(&j->err);
        free(j->stdin_data);
        free(j);
}

/* ======================================================================== */
/* fill */

static void fill_send(int fd, const FillMsg *m) {
        while (write(fd, m, sizeof *m) < 0 && errno == EINTR)
                ;
}

static uint64_t fill_verify(const uint64_t *mem, uint64_t bytes, uint32_t seed, long psz, uint64_t *ret_bad) {
        uint64_t bad = 0, sum = 0, words_per_page = (uint64_t) psz / 8;
        for (uint64_t pg = 0; pg < bytes / (uint64_t) psz; pg++) {
                const uint64_t *w = mem + pg * words_per_page;
                bool ok = true;
                for (uint64_t i = 0; i < words_per_page; i++) {
                        if (i % 8 == 0) {
                                uint64_t line = (pg * words_per_page + i) / 8;
                                sum = agent_fill_fold(sum, w[i]);
                                if (w[i] != agent_fill_word(seed, line))
                                        ok = false;
                        } else if (w[i] != 0)
                                ok = false;
                }
                bad += !ok;
        }
        *ret_bad = bad;
        return sum;
}

static void fill_child(const AgentRequest *req, int rd, int wr) {
        child_reset_signals();
        /* It never execs, so O_CLOEXEC does not help: drop the agent's port,
         * signalfd and other jobs' pipes, which must not outlive the agent's use. */
        for (int fd = 3; fd < 1024; fd++)
                if (fd != rd && fd != wr)
                        close(fd);
        /* The fill child is the designated victim: an OOM must take it, not the agent. */
        agent_write_file("/proc/self/oom_score_adj", "1000");
        long psz = sysconf(_SC_PAGESIZE);
        uint64_t bytes = req->mib << 20;
        usec_t t0 = agent_now();
        FillMsg m = { .kind = FILL_MSG_FAILED };
        uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
                m.err = errno;
                fill_send(wr, &m);
                _exit(1);
        }
        uint64_t words_per_page = (uint64_t) psz / 8, nonzero = 0, sum = 0;
        for (uint64_t pg = 0; pg < bytes / (uint64_t) psz; pg++) {
                uint64_t *w = mem + pg * words_per_page;
                if (req->check_zero) {
                        for (uint64_t i = 0; i < words_per_page; i++)
                                if (w[i]) {
                                        nonzero++;
                                        break;
                                }
                }
                for (uint64_t i = 0; i < words_per_page; i += 8) {
                        uint64_t v = agent_fill_word(req->seed, (pg * words_per_page + i) / 8);
                        w[i] = v;
                        sum = agent_fill_fold(sum, v);
                }
        }
        m = (FillMsg){
                .kind = FILL_MSG_FILLED,
                .mib_done = req->mib,
                .checksum = sum,
                .count = nonzero,
                .seconds = (double) (agent_now() - t0) / 1e6,
        };
        fill_send(wr, &m);
        if (!req->hold)
                _exit(0);
        for (;;) {
                char c;
                ssize_t n = read(rd, &c, 1);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n <= 0 || c == 'r')
                        _exit(0); /* the agent went away or asked: exiting frees everything */
                if (c == 'v') {
                        t0 = agent_now();
                        m = (FillMsg){ .kind = FILL_MSG_VERIFIED, .mib_done = req->mib };
                        m.checksum = fill_verify(mem, bytes, req->seed, psz, &m.count);
                        m.seconds = (double) (agent_now() - t0) / 1e6;
                        fill_send(wr, &m);
                }
        }
}

static FillJob *fill_find(Agent *a, uint64_t handle) {
        for (FillJob *f = a->fills; f; f = f->next)
                if (f->handle == handle)
                        return f;
        return NULL;
}

static void fill_unlink_free(Agent *a, FillJob *f) {
        for (FillJob **pp = &a->fills; *pp; pp = &(*pp)->next)
                if (*pp == f) {
                        *pp = f->next;
                        break;
                }
        close_fd(&f->rd_fd);
        close_fd(&f->wr_fd);
        free(f);
}

static void reply_simple_error(Agent *a, const char *id_json, const char *msg) {
        AgentBuf b = { 0 };
        agent_reply_error(&b, id_json, msg);
        agent_send(a, &b);
        agent_buf_free(&b);
}

int agent_fill_start(Agent *a, AgentRequest *req) {
        int to_child[2] = { -1, -1 }, from_child[2] = { -1, -1 };
        FillJob *f = calloc(1, sizeof *f);
        if (!f || pipe2(to_child, O_CLOEXEC) < 0 || pipe2(from_child, O_CLOEXEC) < 0)
                goto fail;
        uint64_t oom_before = oom_kill_count();
        pid_t pid = fork();
        if (pid < 0)
                goto fail;
        if (pid == 0) {
                close(to_child[1]);
                close(from_child[0]);
                fill_child(req, to_child[0], from_child[1]);
        }
        close(to_child[0]);
        close(from_child[1]);
        *f = (FillJob){
                .handle = req->hold ? a->next_handle++ : 0,
                .pid = pid,
                .rd_fd = from_child[0],
                .wr_fd = to_child[1],
                .mib = req->mib,
                .hold = req->hold,
                .check_zero = req->check_zero,
                .pending = true,
                .pending_cmd = AGENT_CMD_FILL,
                .oom_before = oom_before,
        };
        snprintf(f->pending_id, sizeof f->pending_id, "%s", req->id_json);
        fcntl(f->rd_fd, F_SETFL, O_NONBLOCK);
        f->next = a->fills;
        a->fills = f;
        return 0;
fail:;
        int e = errno;
        for (int i = 0; i < 2; i++) {
                close_fd(&to_child[i]);
                close_fd(&from_child[i]);
        }
        free(f);
        char msg[128];
        snprintf(msg, sizeof msg, "fill: cannot start child: %s", strerror(e));
        reply_simple_error(a, req->id_json, msg);
        return -e;
}

static void fill_reply_dead(Agent *a, const char *id_json, const char *what, int sig, bool oom, int code) {
        AgentBuf b = { 0 };
        char msg[160];
        if (sig)
                snprintf(msg, sizeof msg, "%s: fill process killed by signal %d%s", what, sig,
                         oom ? " (OOM killer)" : "");
        else
                snprintf(msg, sizeof msg, "%s: fill process exited with status %d", what, code);
        agent_reply_begin(&b, id_json, false);
        agent_json_field_str(&b, "error", msg);
        agent_json_field_i64(&b, "signal", sig);
        agent_json_field_bool(&b, "oom_killed", oom);
        agent_reply_end(&b);
        agent_send(a, &b);
        agent_buf_free(&b);
}

void agent_fill_verify(Agent *a, AgentRequest *req) {
        FillJob *f = fill_find(a, req->handle);
        if (!f || req->handle == 0)
                return reply_simple_error(a, req->id_json, "verify: unknown handle");
        if (f->dead) {
                fill_reply_dead(a, req->id_json, "verify", f->dead_signal, f->dead_oom, 0);
                fill_unlink_free(a, f);
                return;
        }
        if (f->pending)
                return reply_simple_error(a, req->id_json, "verify: handle busy (fill or verify in progress)");
        if (write(f->wr_fd, "v", 1) != 1)
                return reply_simple_error(a, req->id_json, "verify: cannot reach the fill process");
        f->pending = true;
        f->pending_cmd = AGENT_CMD_VERIFY;
        f->oom_before = oom_kill_count();
        snprintf(f->pending_id, sizeof f->pending_id, "%s", req->id_json);
}

void agent_fill_release(Agent *a, AgentRequest *req) {
        FillJob *f = fill_find(a, req->handle);
        if (!f || req->handle == 0)
                return reply_simple_error(a, req->id_json, "release: unknown handle");
        if (f->dead) {
                /* The memory is gone already, which is what release asks for. */
                AgentBuf b = { 0 };
                agent_reply_begin(&b, req->id_json, true);
                agent_json_field_bool(&b, "already_dead", true);
                agent_json_field_i64(&b, "signal", f->dead_signal);
                agent_json_field_bool(&b, "oom_killed", f->dead_oom);
                agent_reply_end(&b);
                agent_send(a, &b);
                agent_buf_free(&b);
                fill_unlink_free(a, f);
                return;
        }
        if (f->pending && f->pending_cmd == AGENT_CMD_RELEASE)
                return reply_simple_error(a, req->id_json, "release: already in progress");
        if (f->pending) {
                /* Releasing during fill/verify: that request fails, the release wins. */
                reply_simple_error(a, f->pending_id, "fill: released before completion");
        }
        /* SIGKILL rather than asking: a swapped-out child would first have to fault
         * pages back in just to run its exit path. Reply once it is reaped, so "ok"
         * means the memory really is free. */
        kill(f->pid, SIGKILL);
        f->pending = true;
        f->pending_cmd = AGENT_CMD_RELEASE;
        snprintf(f->pending_id, sizeof f->pending_id, "%s", req->id_json);
}

static void fill_handle_msg(Agent *a, FillJob *f, const FillMsg *m) {
        if (!f->pending || f->pending_cmd == AGENT_CMD_RELEASE)
                return;
        AgentBuf b = { 0 };
        char hex[20];
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long) m->checksum);
        if (m->kind == FILL_MSG_FAILED) {
                char msg[160];
                snprintf(msg, sizeof msg, "fill: cannot allocate %llu MiB: %s", (unsigned long long) f->mib,
                         strerror(m->err));
                agent_reply_error(&b, f->pending_id, msg);
                f->handle = 0; /* the child exits; nothing is held */
        } else if (m->kind == FILL_MSG_FILLED) {
                agent_reply_begin(&b, f->pending_id, true);
                if (f->hold)
                        agent_json_field_u64(&b, "handle", f->handle);
                agent_json_field_u64(&b, "mib", m->mib_done);
                agent_json_field_double(&b, "seconds", m->seconds);
                agent_json_field_str(&b, "checksum", hex);
                if (f->check_zero)
                        agent_json_field_u64(&b, "nonzero_pages", m->count);
                agent_reply_end(&b);
                f->filled = true;
        } else {
                agent_reply_begin(&b, f->pending_id, m->count == 0);
                if (m->count)
                        agent_json_field_str(&b, "error", "verify: pattern mismatch");
                agent_json_field_u64(&b, "bad_pages", m->count);
                agent_json_field_str(&b, "checksum", hex);
                agent_json_field_double(&b, "seconds", m->seconds);
                agent_reply_end(&b);
        }
        f->pending = false;
        agent_send(a, &b);
        agent_buf_free(&b);
}

static void fill_drain(Agent *a, FillJob *f) {
        FillMsg m;
        while (f->rd_fd >= 0) {
                ssize_t n = read(f->rd_fd, &m, sizeof m);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return;
                if (n != (ssize_t) sizeof m) {
                        close_fd(&f->rd_fd); /* EOF: the reap path reports the death */
                        return;
                }
                fill_handle_msg(a, f, &m);
        }
}

static void fill_reaped(Agent *a, FillJob *f, int status) {
        fill_drain(a, f); /* a final report may still sit in the pipe */
        int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
        if (f->pending && f->pending_cmd == AGENT_CMD_RELEASE) {
                AgentBuf b = { 0 };
                agent_reply_begin(&b, f->pending_id, true);
                agent_reply_end(&b);
                agent_send(a, &b);
                agent_buf_free(&b);
                fill_unlink_free(a, f);
                return;
        }
        bool oom = sig && oom_kill_count() > f->oom_before;
        if (f->pending) {
                fill_reply_dead(a, f->pending_id, agent_cmd_to_string(f->pending_cmd), sig, oom, code);
                fill_unlink_free(a, f);
                return;
        }
        if (f->handle && f->hold && f->filled && (sig || code)) {
                /* Died while held and idle: remember why for the next verify/release. */
                close_fd(&f->rd_fd);
                close_fd(&f->wr_fd);
                f->dead = true;
                f->dead_signal = sig;
                f->dead_oom = oom;
                f->pid = 0;
                return;
        }
        fill_unlink_free(a, f);
}

/* ======================================================================== */
/* loop integration */

int agent_children_pollfds(Agent *a, struct pollfd *pfd, int max) {
        int n = 0;
        for (ExecJob *j = a->execs; j; j = j->next) {
                if (j->out_fd >= 0 && n < max)
                        pfd[n++] = (struct pollfd){ .fd = j->out_fd, .events = POLLIN };
                if (j->err_fd >= 0 && n < max)
                        pfd[n++] = (struct pollfd){ .fd = j->err_fd, .events = POLLIN };
                if (j->in_fd >= 0 && n < max)
                        pfd[n++] = (struct pollfd){ .fd = j->in_fd, .events = POLLOUT };
        }
        for (FillJob *f = a->fills; f; f = f->next)
                if (f->rd_fd >= 0 && n < max)
                        pfd[n++] = (struct pollfd){ .fd = f->rd_fd, .events = POLLIN };
        return n;
}

void agent_children_io(Agent *a, const struct pollfd *pfd, int n) {
        for (int i = 0; i < n; i++) {
                if (!pfd[i].revents)
                        continue;
                int fd = pfd[i].fd;
                for (ExecJob *j = a->execs; j; j = j->next) {
                        if (fd == j->out_fd)
                                exec_drain(j, &j->out_fd, &j->out, &j->out_trunc);
                        else if (fd == j->err_fd)
                                exec_drain(j, &j->err_fd, &j->err, &j->err_trunc);
                        else if (fd == j->in_fd)
                                exec_feed_stdin(j);
                        else
                                continue;
                        break;
                }
                for (FillJob *f = a->fills; f; f = f->next)
                        if (fd == f->rd_fd) {
                                fill_drain(a, f);
                                break;
                        }
        }
}

void agent_children_reap(Agent *a) {
        for (;;) {
                int status;
                pid_t pid = waitpid(-1, &status, WNOHANG);
                if (pid < 0 && errno == EINTR)
                        continue;
                if (pid <= 0)
                        return;
                bool found = false;
                for (ExecJob *j = a->execs; j && !found; j = j->next)
                        if (j->pid == pid && !j->exited) {
                                j->exited = true;
                                j->status = status;
                                j->exited_at = agent_now();
                                found = true;
                        }
                for (FillJob *f = a->fills; f && !found; f = f->next)
                        if (f->pid == pid) {
                                fill_reaped(a, f, status);
                                found = true;
                        }
                /* Anything else was an orphan re-parented to PID 1: reaping is all it needs. */
        }
}

usec_t agent_children_timers(Agent *a) {
        usec_t now = agent_now(), next = 0;
        for (ExecJob **pp = &a->execs; *pp;) {
                ExecJob *j = *pp;
                if (!j->exited && now >= j->deadline && !j->timed_out) {
                        killpg(j->pid, SIGKILL);
                        kill(j->pid, SIGKILL); /* in case it left its group (setsid) */
                        j->timed_out = true;
                }
                if (j->exited && ((j->out_fd < 0 && j->err_fd < 0) || now >= j->exited_at + EXEC_EXIT_GRACE_US)) {
                        /* Whatever is still buffered in the pipes is worth taking. */
                        if (j->out_fd >= 0)
                                exec_drain(j, &j->out_fd, &j->out, &j->out_trunc);
                        if (j->err_fd >= 0)
                                exec_drain(j, &j->err_fd, &j->err, &j->err_trunc);
                        exec_finish(a, j);
                        *pp = j->next;
                        exec_free(j);
                        continue;
                }
                usec_t t = j->exited ? j->exited_at + EXEC_EXIT_GRACE_US : j->timed_out ? 0 : j->deadline;
                if (t && (!next || t < next))
                        next = t;
                pp = &j->next;
        }
        return next;
}
