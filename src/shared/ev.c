/* SPDX-License-Identifier: MIT */
#include "shared/ev.h"

#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "shared/macro.h"

struct EvIo {
        Ev *ev;
        int fd;
        uint32_t events;
        ev_io_cb cb;
        void *userdata;
        bool dead;
        bool pending;          /* on ev->pending: called again next iteration */
        uint64_t called_round; /* ev->round when its handler last ran */
        EvIo *next_dead;
        EvIo *next_pending;
        EvIo *next_batch; /* the pending ones being run by ev_run_once() */
};

struct EvTimer {
        Ev *ev;
        usec_t when;
        size_t idx; /* position in the heap, SIZE_MAX when not queued */
        ev_timer_cb cb;
        void *userdata;
};

struct Ev {
        int epfd;
        usec_t now;
        bool exiting;
        int exit_code;
        int dispatching;
        uint64_t round; /* incremented by every ev_run_once() */
        EvIo *dead;     /* freed after the current dispatch round */
        EvIo *pending;  /* ev_io_set_pending(), in no particular order */

        EvTimer **heap;
        size_t n_heap, heap_alloc, n_timers; /* heap_alloc >= n_timers always */

        int sigfd;
        EvIo *sig_io;
        sigset_t sigmask;
        ev_signal_cb sig_cb[65];
        void *sig_ud[65];
};

int ev_new(Ev **ret) {
        Ev *ev = calloc(1, sizeof(Ev));
        if (!ev)
                return -ENOMEM;
        ev->epfd = epoll_create1(EPOLL_CLOEXEC);
        if (ev->epfd < 0) {
                int r = negative_errno();
                free(ev);
                return r;
        }
        ev->sigfd = -EBADF;
        sigemptyset(&ev->sigmask);
        ev->now = now_mono();
        *ret = ev;
        return 0;
}

static void ev_reap_dead(Ev *ev) {
        while (ev->dead) {
                EvIo *io = ev->dead;
                ev->dead = io->next_dead;
                free(io);
        }
}

Ev *ev_free(Ev *ev) {
        if (!ev)
                return NULL;
        ev->sig_io = ev_io_free(ev->sig_io);
        ev_reap_dead(ev);
        for (size_t i = 0; i < ev->n_heap; i++)
                ev->heap[i]->idx = SIZE_MAX; /* timers still owned by callers; detach */
        free(ev->heap);
        safe_close(ev->sigfd);
        if (!sigisemptyset(&ev->sigmask))
                sigprocmask(SIG_UNBLOCK, &ev->sigmask, NULL);
        safe_close(ev->epfd);
        free(ev);
        return NULL;
}

usec_t ev_now(Ev *ev) {
        return ev->now;
}

int ev_io_add(Ev *ev, int fd, uint32_t events, ev_io_cb cb, void *userdata, EvIo **ret) {
        EvIo *io = calloc(1, sizeof(EvIo));
        if (!io)
                return -ENOMEM;
        *io = (EvIo){ .ev = ev, .fd = fd, .events = events, .cb = cb, .userdata = userdata };
        struct epoll_event e = { .events = events, .data.ptr = io };
        if (epoll_ctl(ev->epfd, EPOLL_CTL_ADD, fd, &e) < 0) {
                int r = negative_errno();
                free(io);
                return r;
        }
        *ret = io;
        return 0;
}

int ev_io_set_events(EvIo *io, uint32_t events) {
        if (io->events == events)
                return 0;
        struct epoll_event e = { .events = events, .data.ptr = io };
        if (epoll_ctl(io->ev->epfd, EPOLL_CTL_MOD, io->fd, &e) < 0)
                return negative_errno();
        io->events = events;
        return 0;
}

static void ev_io_unpend(EvIo *io) {
        if (!io->pending)
                return;
        for (EvIo **p = &io->ev->pending; *p; p = &(*p)->next_pending)
                if (*p == io) {
                        *p = io->next_pending;
                        break;
                }
        io->pending = false;
        io->next_pending = NULL;
}

void ev_io_set_pending(EvIo *io) {
        if (io->pending || io->dead)
                return;
        io->pending = true;
        io->next_pending = io->ev->pending;
        io->ev->pending = io;
}

EvIo *ev_io_free(EvIo *io) {
        if (!io || io->dead)
                return NULL;
        ev_io_unpend(io);
        /* The fd may already be closed by its owner; EBADF/ENOENT are fine then. */
        (void) epoll_ctl(io->ev->epfd, EPOLL_CTL_DEL, io->fd, NULL);
        io->dead = true;
        io->next_dead = io->ev->dead;
        io->ev->dead = io;
        if (io->ev->dispatching == 0)
                ev_reap_dead(io->ev);
        return NULL;
}

/* --- timer heap --- */

static void heap_swap(Ev *ev, size_t a, size_t b) {
        EvTimer *t = ev->heap[a];
        ev->heap[a] = ev->heap[b];
        ev->heap[b] = t;
        ev->heap[a]->idx = a;
        ev->heap[b]->idx = b;
}

static void heap_up(Ev *ev, size_t i) {
        while (i > 0) {
                size_t p = (i - 1) / 2;
                if (ev->heap[p]->when <= ev->heap[i]->when)
                        break;
                heap_swap(ev, i, p);
                i = p;
        }
}

static void heap_down(Ev *ev, size_t i) {
        for (;;) {
                size_t l = 2 * i + 1, r = l + 1, m = i;
                if (l < ev->n_heap && ev->heap[l]->when < ev->heap[m]->when)
                        m = l;
                if (r < ev->n_heap && ev->heap[r]->when < ev->heap[m]->when)
                        m = r;
                if (m == i)
                        return;
                heap_swap(ev, i, m);
                i = m;
        }
}

static void heap_remove(Ev *ev, EvTimer *t) {
        size_t i = t->idx;
        if (i == SIZE_MAX)
                return;
        size_t last = --ev->n_heap;
        if (i != last) {
                ev->heap[i] = ev->heap[last];
                ev->heap[i]->idx = i;
                heap_down(ev, i);
                heap_up(ev, i);
        }
        t->idx = SIZE_MAX;
}

/* Cannot fail: capacity for every existing timer is reserved in ev_timer_add(). */
static void heap_insert(Ev *ev, EvTimer *t) {
        t->idx = ev->n_heap;
        ev->heap[ev->n_heap++] = t;
        heap_up(ev, t->idx);
}

int ev_timer_add(Ev *ev, usec_t when, ev_timer_cb cb, void *userdata, EvTimer **ret) {
        EvTimer *t = calloc(1, sizeof(EvTimer));
        if (!t)
                return -ENOMEM;
        *t = (EvTimer){ .ev = ev, .when = USEC_INFINITY, .idx = SIZE_MAX, .cb = cb, .userdata = userdata };
        /* Reserve heap space now so that ev_timer_set() can never fail later. */
        if (ev->n_timers == ev->heap_alloc) {
                size_t n = ev->heap_alloc ? ev->heap_alloc * 2 : 16;
                EvTimer **h = realloc(ev->heap, n * sizeof(EvTimer *));
                if (!h) {
                        free(t);
                        return -ENOMEM;
                }
                ev->heap = h;
                ev->heap_alloc = n;
        }
        ev->n_timers++;
        ev_timer_set(t, when);
        *ret = t;
        return 0;
}

void ev_timer_set(EvTimer *t, usec_t when) {
        Ev *ev = t->ev;
        /* Armed while this round's callbacks run, for a time already reached ("now", 0): a timer
         * due in this round already stays due; any other is due just after this round's cutoff,
         * so it runs in the next round, never in this one (a zero-delay re-arm cannot spin here),
         * and never holds back the other due timers, as stopping the timer loop at it did (one
         * re-arm for 0 per round, the HTTP server's after an asynchronous answer, starved every
         * timer for seconds under API load). */
        if (ev->dispatching > 0 && when <= ev->now) {
                if (t->idx != SIZE_MAX && t->when <= ev->now)
                        return; /* due in this round already: it runs in this round */
                when = ev->now + 1;
        }
        t->when = when;
        if (when == USEC_INFINITY) {
                heap_remove(ev, t);
                return;
        }
        if (t->idx == SIZE_MAX)
                heap_insert(ev, t);
        else {
                heap_down(ev, t->idx);
                heap_up(ev, t->idx);
        }
}

usec_t ev_timer_when(const EvTimer *t) {
        return t->when;
}

EvTimer *ev_timer_free(EvTimer *t) {
        if (!t)
                return NULL;
        heap_remove(t->ev, t);
        t->ev->n_timers--;
        free(t);
        return NULL;
}

size_t ev_timer_count(const Ev *ev) {
        return ev->n_heap;
}

/* --- signals --- */

static void ev_on_signalfd(EvIo *io, int fd, uint32_t revents, void *userdata) {
        Ev *ev = userdata;
        (void) io;
        (void) revents;
        /* A bounded number per wakeup like every reader: the signalfd stays readable (level-
         * triggered) and the rest comes on the next iteration. */
        for (unsigned i = 0; i < 64; i++) {
                struct signalfd_siginfo si;
                ssize_t n = read(fd, &si, sizeof(si));
                if (n != (ssize_t) sizeof(si))
                        return;
                int sig = (int) si.ssi_signo;
                if (sig > 0 && sig < 65 && ev->sig_cb[sig])
                        ev->sig_cb[sig](ev, sig, ev->sig_ud[sig]);
        }
}

int ev_signal_add(Ev *ev, int sig, ev_signal_cb cb, void *userdata) {
        if (sig <= 0 || sig >= 65)
                return -EINVAL;
        sigaddset(&ev->sigmask, sig);
        if (sigprocmask(SIG_BLOCK, &ev->sigmask, NULL) < 0)
                return negative_errno();
        /* signalfd() makes a new fd only for -1; our "no fd" is -EBADF. */
        int fd = signalfd(ev->sigfd >= 0 ? ev->sigfd : -1, &ev->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        if (ev->sigfd < 0) {
                ev->sigfd = fd;
                int r = ev_io_add(ev, fd, EPOLLIN, ev_on_signalfd, ev, &ev->sig_io);
                if (r < 0)
                        return r;
        }
        ev->sig_cb[sig] = cb;
        ev->sig_ud[sig] = userdata;
        return 0;
}

/* --- running --- */

int ev_run_once(Ev *ev, usec_t max_wait) {
        struct epoll_event events[64];
        usec_t deadline = max_wait;
        if (ev->n_heap > 0 && ev->heap[0]->when < deadline)
                deadline = ev->heap[0]->when;
        if (ev->pending)
                deadline = 0; /* a reader has buffered input to finish: do not sleep */

        ev->round++;
        ev->now = now_mono();
        int n = epoll_wait(ev->epfd, events, (int) ELEMENTSOF(events), usec_to_poll_timeout(deadline, ev->now));
        if (n < 0) {
                if (errno == EINTR)
                        return 0;
                return negative_errno();
        }
        ev->now = now_mono();

        int ran = 0;
        ev->dispatching++;
        /* Readers pending from the last iteration are taken now, so that one that yields again
         * during this iteration waits for the next one (a yielding reader cannot spin here). Freed
         * ones stay allocated until the end of the dispatch. */
        EvIo *batch = NULL;
        while (ev->pending) {
                EvIo *io = ev->pending;
                ev->pending = io->next_pending;
                io->pending = false;
                io->next_pending = NULL;
                io->next_batch = batch;
                batch = io;
        }
        for (int i = 0; i < n; i++) {
                EvIo *io = events[i].data.ptr;
                if (io->dead)
                        continue;
                io->called_round = ev->round;
                io->cb(io, io->fd, events[i].events, io->userdata);
                ran++;
        }
        while (batch) {
                EvIo *io = batch;
                batch = io->next_batch;
                io->next_batch = NULL;
                if (io->dead || io->called_round == ev->round) /* already called by epoll */
                        continue;
                io->called_round = ev->round;
                io->cb(io, io->fd, EPOLLIN, io->userdata);
                ran++;
        }
        /* Timers due now. One armed during this round for "now" is due after the cutoff
         * (ev_timer_set()): it waits for the next round, so a zero-delay re-arm cannot starve fds
         * or spin here. */
        usec_t cutoff = ev->now;
        while (ev->n_heap > 0 && ev->heap[0]->when <= cutoff) {
                EvTimer *t = ev->heap[0];
                heap_remove(ev, t);
                t->when = USEC_INFINITY;
                t->cb(t, t->userdata);
                ran++;
        }
        ev->dispatching--;
        if (ev->dispatching == 0)
                ev_reap_dead(ev);
        return ran;
}

int ev_run(Ev *ev) {
        while (!ev->exiting) {
                int r = ev_run_once(ev, USEC_INFINITY);
                if (r < 0)
                        return r;
        }
        return ev->exit_code;
}

void ev_exit(Ev *ev, int code) {
        ev->exiting = true;
        ev->exit_code = code;
}

bool ev_exiting(const Ev *ev) {
        return ev->exiting;
}
