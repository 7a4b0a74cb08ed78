/* SPDX-License-Identifier: MIT */
#pragma once

/* A small epoll event loop: fd handlers, a timer heap (one timer per VM is normal), signalfd.
 * Single-threaded. Sources may be freed from inside any callback, including their own. */

#include <stdbool.h>
#include <stdint.h>
#include <sys/epoll.h>

#include "shared/time-util.h"

typedef struct Ev Ev;
typedef struct EvIo EvIo;
typedef struct EvTimer EvTimer;

typedef void (*ev_io_cb)(EvIo *io, int fd, uint32_t revents, void *userdata);
typedef void (*ev_timer_cb)(EvTimer *t, void *userdata);
typedef void (*ev_signal_cb)(Ev *ev, int sig, void *userdata);

/* Returns 0 and a new loop in *ret, or a negative errno. */
int ev_new(Ev **ret);
/* Frees the loop. Every EvIo and EvTimer must have been freed first (they are owned by their
 * creators); the signalfd source is the loop's own. Accepts NULL. */
Ev *ev_free(Ev *ev);

/* Watches fd (not owned) for EPOLLIN/EPOLLOUT/...; the handle is owned by the loop until
 * ev_io_free(). Returns 0 or a negative errno. */
int ev_io_add(Ev *ev, int fd, uint32_t events, ev_io_cb cb, void *userdata, EvIo **ret);
int ev_io_set_events(EvIo *io, uint32_t events);
/* Detaches and frees (deferred while dispatching). Accepts NULL, returns NULL. */
EvIo *ev_io_free(EvIo *io);
/* Calls io's handler once more on the next iteration with EPOLLIN, whether or not the fd is
 * readable then, and makes that iteration not sleep. For a reader that stopped at its per-wakeup
 * budget with input already buffered: epoll is level-triggered, so bytes left in the socket wake
 * it again by themselves, but bytes already read into a buffer do not. */
void ev_io_set_pending(EvIo *io);

/* One-shot timer at absolute CLOCK_MONOTONIC time `when` (USEC_INFINITY: disarmed). */
int ev_timer_add(Ev *ev, usec_t when, ev_timer_cb cb, void *userdata, EvTimer **ret);
void ev_timer_set(EvTimer *t, usec_t when);
usec_t ev_timer_when(const EvTimer *t);
EvTimer *ev_timer_free(EvTimer *t);

/* Blocks `sig` and delivers it through a signalfd to cb. One callback per signal. */
int ev_signal_add(Ev *ev, int sig, ev_signal_cb cb, void *userdata);

/* Runs one iteration: waits at most until `max_wait` (absolute monotonic, USEC_INFINITY to
 * wait for the next event or timer), dispatches ready fds (at most 64), pending ones
 * (ev_io_set_pending) and due timers, each once. Fairness rests on every callback doing a bounded
 * amount of work and then returning: a reader with more to do yields and is called again on a
 * later iteration, after the other fds and the timers due now. Returns the number of callbacks
 * run, or a negative errno. */
int ev_run_once(Ev *ev, usec_t max_wait);
/* Runs until ev_exit(); returns the exit code. */
int ev_run(Ev *ev);
void ev_exit(Ev *ev, int code);
bool ev_exiting(const Ev *ev);

/* Monotonic time cached at the start of the current iteration (cheap, consistent per tick). */
usec_t ev_now(Ev *ev);
size_t ev_timer_count(const Ev *ev);
