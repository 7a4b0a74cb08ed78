/* SPDX-License-Identifier: MIT */
/* ballast-agent: PID 1 of ballast guest images. Sets the guest up for
 * overcommit, then serves docs/agent-protocol.md on the virtio-serial port
 * "org.ballast.agent" from one poll() loop. It never exits: PID 1 exiting
 * panics the kernel, so every error is logged and served around. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/reboot.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "agent.h"

#define POLL_MAX          256
#define PORT_WAIT_BOOT_MS 5000

/* ======================================================================== */
/* the port: finding, opening, probing (the output queue is port.c) */

static void port_connected(Agent *a) {
        a->host_connected = true;
        a->backoff_ms = AGENT_BACKOFF_MIN_MS;
        a->next_probe = 0;
        agent_line_reset(&a->lines);
        AgentBuf b = { 0 };
        agent_ready_event(a, &b);
        agent_send(a, &b);
        agent_buf_free(&b);
}

static int port_open(Agent *a) {
        int fd = open(a->port_path, O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
                /* virtio_console raises SIGIO when the host side opens or closes the
                 * port, so a reconnect is seen at once instead of at the next back-off probe. */
#ifndef AGENT_NO_SIGIO /* test knob: -DAGENT_NO_SIGIO exercises the back-off path alone */
        if (fcntl(fd, F_SETOWN, getpid()) < 0 || fcntl(fd, F_SETFL, O_NONBLOCK | O_ASYNC) < 0)
                agent_log("port: cannot enable SIGIO (%s), relying on back-off probes", strerror(errno));
#endif
        a->port_fd = fd;
        a->host_connected = false;
        a->backoff_ms = 0;
        a->next_probe = agent_now();
        return 0;
}

/* While the host is away, poll() on the port reports POLLHUP (and read() EOF)
 * at once, forever: keeping the fd in the poll set would spin. So the fd is
 * left out and looked at on a timer that backs off 4 ms -> 1 s. */
static void port_probe(Agent *a) {
        if (a->port_fd < 0) {
                if (agent_find_port(a->port_path, sizeof a->port_path) == 0 && port_open(a) == 0)
                        agent_log("port %s opened", a->port_path);
                else {
                        a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : AGENT_BACKOFF_MIN_MS;
                        if (a->backoff_ms > AGENT_BACKOFF_MAX_MS)
                                a->backoff_ms = AGENT_BACKOFF_MAX_MS;
                        a->next_probe = agent_now() + (usec_t) a->backoff_ms * 1000;
                        return;
                }
        }
        struct pollfd p = { .fd = a->port_fd, .events = POLLIN };
        int r = poll(&p, 1, 0);
        if (r >= 0 && !(p.revents & (POLLHUP | POLLERR | POLLNVAL))) {
                port_connected(a);
                return;
        }
        a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : AGENT_BACKOFF_MIN_MS;
        if (a->backoff_ms > AGENT_BACKOFF_MAX_MS)
                a->backoff_ms = AGENT_BACKOFF_MAX_MS;
        a->next_probe = agent_now() + (usec_t) a->backoff_ms * 1000;
}

/* ======================================================================== */
/* requests */

static void handle_line(Agent *a, const char *line, size_t len) {
        AgentRequest req;
        char err[256];
        AgentBuf b = { 0 };
        int r = agent_request_parse(line, len, &req, err, sizeof err);
        if (r < 0) {
                agent_reply_error(&b, req.id_json, err[0] ? err : "invalid request");
                agent_send(a, &b);
                goto out;
        }
        switch (req.cmd) {
        case AGENT_CMD_PING:
                agent_reply_ping(a, &b, req.id_json);
                agent_send(a, &b);
                break;
        case AGENT_CMD_MEMINFO:
                agent_reply_meminfo(&b, req.id_json);
                agent_send(a, &b);
                break;
        case AGENT_CMD_EXEC:
                agent_exec_start(a, &req);
                break;
        case AGENT_CMD_FILL:
                agent_fill_start(a, &req);
                break;
        case AGENT_CMD_VERIFY:
                agent_fill_verify(a, &req);
                break;
        case AGENT_CMD_RELEASE:
                agent_fill_release(a, &req);
                break;
        case AGENT_CMD_DROP_CACHES:
                sync();
                r = agent_write_file("/proc/sys/vm/drop_caches", "3");
                if (r < 0) {
                        snprintf(err, sizeof err, "drop-caches: %s", strerror(-r));
                        agent_reply_error(&b, req.id_json, err);
                } else {
                        agent_reply_begin(&b, req.id_json, true);
                        agent_reply_end(&b);
                }
                agent_send(a, &b);
                break;
        default:
                agent_reply_error(&b, req.id_json, "unknown cmd");
                agent_send(a, &b);
                break;
        }
out:
        agent_buf_free(&b);
        agent_request_free(&req);
}

static void port_read(Agent *a, short revents) {
        char buf[65536];
        /* Bounded per wakeup, so a flood of requests cannot starve the children. */
        for (int i = 0; i < 64 && a->host_connected; i++) {
                ssize_t n = read(a->port_fd, buf, sizeof buf);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        break;
                if (n <= 0) {
                        agent_port_went_away(a);
                        return;
                }
                const char *p = buf;
                size_t left = (size_t) n;
                for (;;) {
                        const char *line;
                        size_t len;
                        int k = agent_line_feed(&a->lines, &p, &left, &line, &len);
                        if (k == AGENT_LINE_NONE)
                                break;
                        if (k == AGENT_LINE_OK) {
                                if (len > 0)
                                        handle_line(a, line, len);
                        } else {
                                AgentBuf b = { 0 };
                                agent_reply_error(&b, NULL,
                                                  k == AGENT_LINE_TOO_LONG ? "request too long" : "out of memory");
                                agent_send(a, &b);
                                agent_buf_free(&b);
                                if (k < 0)
                                        agent_line_reset(&a->lines);
                        }
                        if (!a->host_connected)
                                return;
                }
        }
        if (revents & (POLLHUP | POLLERR))
                agent_port_went_away(a);
}

/* ======================================================================== */
/* signals */

static int signals_setup(void) {
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGCHLD);
        sigaddset(&s, SIGIO);
        /* busybox halt/poweroff/reboot signal PID 1 (USR1/USR2/TERM) instead of
         * calling reboot(2) themselves; honour that so they work in the guest. */
        sigaddset(&s, SIGUSR1);
        sigaddset(&s, SIGUSR2);
        sigaddset(&s, SIGTERM);
        if (sigprocmask(SIG_BLOCK, &s, NULL) < 0)
                return -errno;
        /* A host that vanishes mid-write must not kill PID 1; EPIPE is enough. */
        signal(SIGPIPE, SIG_IGN);
        int fd = signalfd(-1, &s, SFD_NONBLOCK | SFD_CLOEXEC);
        return fd < 0 ? -errno : fd;
}

static void signals_read(Agent *a) {
        struct signalfd_siginfo si;
        bool io = false;
        while (read(a->sig_fd, &si, sizeof si) == (ssize_t) sizeof si) {
                if (si.ssi_signo == SIGIO)
                        io = true;
                else if (si.ssi_signo == SIGUSR1 || si.ssi_signo == SIGUSR2 || si.ssi_signo == SIGTERM) {
                        agent_log("signal %d from pid %d: %s", (int) si.ssi_signo, (int) si.ssi_pid,
                                  si.ssi_signo == SIGTERM ? "rebooting" : "powering off");
                        sync();
                        reboot(si.ssi_signo == SIGTERM ? RB_AUTOBOOT : RB_POWER_OFF);
                        agent_log("reboot: %s", strerror(errno)); /* only if not permitted */
                }
        }
        /* Reap on every wakeup: signals coalesce, waitpid(WNOHANG) does not lose any. */
        agent_children_reap(a);
        if (io && !a->host_connected && a->port_fd >= 0)
                a->next_probe = agent_now(); /* host opened the port: look now */
}

/* ======================================================================== */

static void print_ready_line(Agent *a) {
        struct timespec ts;
        clock_gettime(CLOCK_BOOTTIME, &ts);
        unsigned long long up = (unsigned long long) ts.tv_sec * 1000 + (unsigned long long) ts.tv_nsec / 1000000;
        char line[400];
        int n;
        if (a->ready)
                n = snprintf(line, sizeof line, "BALLAST-AGENT READY version=%s ready=1 uptime_ms=%llu\n",
                             AGENT_VERSION, up);
        else
                n = snprintf(line, sizeof line, "BALLAST-AGENT READY version=%s ready=0 uptime_ms=%llu reason=%s\n",
                             AGENT_VERSION, up, a->reason);
        if (n > (int) sizeof line - 1)
                n = (int) sizeof line - 1;
        if (write(1, line, (size_t) n) < 0) {
                /* no console: the host will learn it from ping */
        }
}

static void wait_for_port(Agent *a) {
        usec_t deadline = agent_now() + PORT_WAIT_BOOT_MS * 1000;
        for (unsigned ms = 1;; ms = ms < 64 ? ms * 2 : 64) {
                if (agent_find_port(a->port_path, sizeof a->port_path) == 0) {
                        if (port_open(a) == 0)
                                return;
                }
                if (agent_now() >= deadline)
                        break;
                agent_children_reap(a);
                nanosleep(&(struct timespec){ .tv_nsec = (long) ms * 1000000 }, NULL);
        }
        agent_log("no virtio-serial port named %s after %d ms; still looking", AGENT_PORT_NAME, PORT_WAIT_BOOT_MS);
        a->backoff_ms = AGENT_BACKOFF_MIN_MS;
        a->next_probe = agent_now() + (usec_t) a->backoff_ms * 1000;
}

int main(int argc, char **argv) {
        (void) argc;
        (void) argv;
        static Agent agent = { .port_fd = -1, .sig_fd = -1, .next_handle = 1 };
        Agent *a = &agent;

        if (getpid() != 1)
                agent_log("warning: not PID 1 (pid %d); this program is meant to be a guest's init", (int) getpid());
        a->sig_fd = signals_setup();
        if (a->sig_fd < 0)
                agent_log("signalfd: %s; reaping on a timer instead", strerror(-a->sig_fd));

        agent_setup(a);
        wait_for_port(a);
        print_ready_line(a);

        struct pollfd pfd[POLL_MAX];
        for (;;) {
                int n = 0;
                if (a->sig_fd >= 0)
                        pfd[n++] = (struct pollfd){ .fd = a->sig_fd, .events = POLLIN };
                int port_idx = -1;
                if (a->port_fd >= 0 && a->host_connected) {
                        port_idx = n;
                        pfd[n++] = (struct pollfd){ .fd = a->port_fd,
                                                    .events = (short) (POLLIN | (a->outq.len ? POLLOUT : 0)) };
                }
                int child_base = n;
                n += agent_children_pollfds(a, pfd + n, POLL_MAX - n);

                usec_t next = agent_children_timers(a);
                if (!a->host_connected && a->next_probe && (!next || a->next_probe < next))
                        next = a->next_probe;
                if (a->sig_fd < 0) {
                        usec_t t = agent_now() + 100000; /* no signalfd: reap every 100 ms */
                        if (!next || t < next)
                                next = t;
                }
                int timeout = -1;
                if (next) {
                        usec_t now = agent_now();
                        /* round up, so we never wake a hair early and spin on a 0 ms timeout */
                        timeout = next <= now ? 0 : (int) ((next - now + 999) / 1000);
                }

                int r = poll(pfd, (nfds_t) n, timeout);
                if (r < 0 && errno != EINTR) {
                        agent_log("poll: %s", strerror(errno));
                        sleep(1); /* never spin, never exit */
                        continue;
                }
                if (r < 0)
                        continue;

                if (a->sig_fd < 0 || pfd[0].revents)
                        signals_read(a);
                agent_children_io(a, pfd + child_base, n - child_base);
                if (port_idx >= 0 && pfd[port_idx].revents && a->host_connected) {
                        if (pfd[port_idx].revents & POLLOUT)
                                agent_port_flush(a);
                        if (a->host_connected)
                                port_read(a, pfd[port_idx].revents);
                }
                if (!a->host_connected && a->next_probe && agent_now() >= a->next_probe)
                        port_probe(a);
        }
}
