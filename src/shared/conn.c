/* SPDX-License-Identifier: MIT */
#include "shared/conn.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "shared/macro.h"

#define CONN_MAX_WRITE    ((size_t) 4 << 20)
/* The read buffer starts small and grows (doubling) up to the connection's max_read: thousands of
 * idle hypervisor connections then cost a few KiB each, not max_read each. */
#define CONN_READ_INITIAL ((size_t) 4 << 10)

struct Conn {
        Ev *ev;
        int fd;
        EvIo *io;
        ConnCallbacks cb;
        void *userdata;

        char *rbuf;
        size_t rlen, rmax, ralloc; /* ralloc: bytes the buffer holds, excluding the NUL */
        char *wbuf;
        size_t wlen, woff, walloc;

        bool busy; /* inside conn_on_io: conn_free() then only marks it dead */
        bool dead;
        bool yielded; /* on_data asked to stop for this wakeup (conn_yield) */
        bool paused;  /* not reading until conn_resume() */
        uint64_t yields;
};

static uint32_t conn_events(const Conn *c) {
        return (c->paused ? 0 : EPOLLIN | EPOLLRDHUP) | (c->wlen > c->woff ? EPOLLOUT : 0);
}

static void conn_on_io(EvIo *io, int fd, uint32_t revents, void *userdata);

int conn_new(Ev *ev, int fd, size_t max_read, const ConnCallbacks *cb, void *userdata, Conn **ret) {
        Conn *c = calloc(1, sizeof(Conn));
        if (!c) {
                safe_close(fd);
                return -ENOMEM;
        }
        *c = (Conn){ .ev = ev, .fd = fd, .cb = *cb, .userdata = userdata, .rmax = max_read };
        c->ralloc = MIN(max_read, CONN_READ_INITIAL);
        c->rbuf = malloc(c->ralloc + 1);
        if (!c->rbuf) {
                conn_free(c);
                return -ENOMEM;
        }
        int r = ev_io_add(ev, fd, EPOLLIN | EPOLLRDHUP, conn_on_io, c, &c->io);
        if (r < 0) {
                conn_free(c);
                return r;
        }
        *ret = c;
        return 0;
}

Conn *conn_free(Conn *c) {
        if (!c)
                return NULL;
        c->io = ev_io_free(c->io);
        c->fd = safe_close(c->fd);
        if (c->busy) {
                c->dead = true; /* freed when conn_on_io unwinds */
                return NULL;
        }
        free(c->rbuf);
        free(c->wbuf);
        free(c);
        return NULL;
}

int conn_fd(const Conn *c) {
        return c->fd;
}

size_t conn_pending_write(const Conn *c) {
        return c->wlen - c->woff;
}

static void conn_fail(Conn *c, int error, const char *what) {
        char msg[256];
        if (error == 0)
                snprintf(msg, sizeof(msg), "connection closed by peer");
        else
                snprintf(msg, sizeof(msg), "%s: %s", what, strerror(-error));
        c->cb.on_close(c, error, msg, c->userdata);
}

static int conn_flush(Conn *c) {
        while (c->woff < c->wlen) {
                ssize_t n = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        if (errno == EAGAIN)
                                break;
                        return negative_errno();
                }
                c->woff += (size_t) n;
        }
        if (c->woff == c->wlen)
                c->woff = c->wlen = 0;
        return ev_io_set_events(c->io, conn_events(c));
}

int conn_write(Conn *c, const void *data, size_t len) {
        if (c->wlen - c->woff + len > CONN_MAX_WRITE)
                return -ENOBUFS;
        if (c->woff > 0) { /* compact */
                memmove(c->wbuf, c->wbuf + c->woff, c->wlen - c->woff);
                c->wlen -= c->woff;
                c->woff = 0;
        }
        if (c->wlen + len > c->walloc) {
                size_t n = MAX(c->walloc * 2, c->wlen + len);
                char *b = realloc(c->wbuf, n);
                if (!b)
                        return -ENOMEM;
                c->wbuf = b;
                c->walloc = n;
        }
        memcpy(c->wbuf + c->wlen, data, len);
        c->wlen += len;
        /* Try right away: the common case completes without waiting for EPOLLOUT. */
        int r = conn_flush(c);
        return r == -EPIPE || r == -ECONNRESET ? 0 : r; /* reported by the read side */
}

void conn_yield(Conn *c) {
        c->yielded = true;
}

void conn_pause(Conn *c) {
        if (c->paused || c->dead)
                return;
        c->paused = true;
        (void) ev_io_set_events(c->io, conn_events(c));
}

void conn_resume(Conn *c) {
        if (!c->paused || c->dead)
                return;
        c->paused = false;
        (void) ev_io_set_events(c->io, conn_events(c));
        if (c->rlen > 0) { /* what the owner left buffered comes first, at the next iteration */
                c->yielded = true;
                ev_io_set_pending(c->io);
        }
}

/* Hands the buffered bytes to on_data and drops what it consumed. Returns 1 when the owner yielded
 * (stop reading for this wakeup), 0 to go on, or -1 when the connection failed or was freed. */
static int conn_deliver(Conn *c) {
        c->yielded = false;
        ssize_t k = c->cb.on_data(c, c->rbuf, c->rlen, c->userdata);
        if (c->dead)
                return -1;
        if (k < 0) {
                conn_fail(c, (int) k, "protocol error");
                return -1;
        }
        if ((size_t) k > 0) {
                memmove(c->rbuf, c->rbuf + k, c->rlen - (size_t) k);
                c->rlen -= (size_t) k;
                c->rbuf[c->rlen] = '\0';
        }
        if (c->paused)
                return 1; /* the rest waits for conn_resume() */
        if (c->yielded) {
                c->yields++;
                ev_io_set_pending(c->io);
                return 1;
        }
        return 0;
}

/* Makes room for at least one more byte in the read buffer: 0, or -1 when the connection failed. */
static int conn_grow(Conn *c) {
        if (c->rlen >= c->rmax) {
                conn_fail(c, -EMSGSIZE, "message exceeds the size limit");
                return -1;
        }
        if (c->rlen >= c->ralloc) {
                size_t na = MIN(c->ralloc * 2, c->rmax);
                char *nb = realloc(c->rbuf, na + 1);
                if (!nb) {
                        conn_fail(c, -ENOMEM, "growing the read buffer");
                        return -1;
                }
                c->rbuf = nb;
                c->ralloc = na;
        }
        return 0;
}

static void conn_on_io(EvIo *io, int fd, uint32_t revents, void *userdata) {
        Conn *c = userdata;
        (void) io;

        c->busy = true;
        if (revents & EPOLLOUT) {
                int r = conn_flush(c);
                if (r < 0 && r != -EPIPE && r != -ECONNRESET) {
                        conn_fail(c, r, "write failed");
                        goto out;
                }
        }
        if (c->paused) {
                if (!(revents & (EPOLLHUP | EPOLLERR)))
                        goto out;
                conn_resume(c); /* the peer is gone: what is left is read and the end reported */
        }
        if (c->yielded) {
                /* Called again for input the owner left buffered when it yielded: finish that first,
                 * before reading more. */
                if (conn_deliver(c) != 0)
                        goto out;
        }
        if (revents & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
                /* Read what is there, up to the per-wakeup budget; bounded by rmax so a flood cannot
                 * grow memory either. */
                size_t budget = CONN_READ_BUDGET;
                while (budget > 0) {
                        if (conn_grow(c) < 0)
                                goto out;
                        ssize_t n = read(fd, c->rbuf + c->rlen, MIN(c->ralloc - c->rlen, budget));
                        if (n < 0) {
                                if (errno == EINTR)
                                        continue;
                                if (errno == EAGAIN)
                                        break;
                                conn_fail(c, negative_errno(), "read failed");
                                goto out;
                        }
                        if (n == 0) {
                                /* Deliver what is buffered first (all of it: this is the end, and it
                                 * is bounded by rmax), then report EOF. */
                                while (c->rlen > 0) {
                                        size_t before = c->rlen;
                                        int k = conn_deliver(c);
                                        if (k < 0)
                                                goto out;
                                        if (k == 0 || c->rlen == before)
                                                break;
                                }
                                conn_fail(c, 0, NULL);
                                goto out;
                        }
                        c->rlen += (size_t) n;
                        c->rbuf[c->rlen] = '\0';
                        budget -= (size_t) n;
                        if (conn_deliver(c) != 0)
                                goto out;
                }
                if (budget == 0)
                        c->yields++; /* the socket may hold more: epoll says so next iteration */
        }
out:
        c->busy = false;
        if (c->dead)
                conn_free(c);
}

int conn_inject(Conn *c, const void *buf, size_t len) {
        const char *p = buf;
        int r = 0;

        c->busy = true;
        while (len > 0 || c->yielded) {
                conn_resume(c); /* at once, where the owner's timer would resume it later */
                if (c->yielded) {
                        /* As the next iteration would: finish what the owner left, then go on. */
                        size_t before = c->rlen;
                        int k = conn_deliver(c);
                        if (k < 0) {
                                r = -ESHUTDOWN;
                                break;
                        }
                        if (k > 0 && c->rlen < before)
                                continue;
                        c->yielded = false; /* no progress: leave the rest to the loop */
                }
                if (len == 0)
                        break;
                if (conn_grow(c) < 0) {
                        r = -ESHUTDOWN;
                        break;
                }
                size_t n = MIN(len, c->ralloc - c->rlen);
                memcpy(c->rbuf + c->rlen, p, n);
                c->rlen += n;
                c->rbuf[c->rlen] = '\0';
                p += n;
                len -= n;
                if (conn_deliver(c) < 0) {
                        r = -ESHUTDOWN;
                        break;
                }
        }
        c->busy = false;
        if (c->dead) {
                conn_free(c);
                r = -ESHUTDOWN;
        }
        return r;
}

uint64_t conn_yields(const Conn *c) {
        return c->yields;
}
