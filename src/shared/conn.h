/* SPDX-License-Identifier: MIT */
#pragma once

/* A non-blocking stream connection on the event loop with bounded read and write buffers.
 * Framing is the owner's business: on_data is handed everything read so far and says how much
 * it consumed. */

#include <stddef.h>
#include <sys/types.h>

#include "shared/ev.h"

typedef struct Conn Conn;

typedef struct ConnCallbacks {
        /* Returns bytes consumed (0..len), or a negative errno: the connection is then failed
         * and on_close is called with that error. */
        ssize_t (*on_data)(Conn *c, const char *buf, size_t len, void *userdata);
        /* The peer closed (error 0 = EOF) or an I/O error happened; msg describes it. The owner
         * typically frees the Conn from here. */
        void (*on_close)(Conn *c, int error, const char *msg, void *userdata);
} ConnCallbacks;

/* Takes ownership of fd. max_read bounds the unconsumed read buffer: a peer that sends more
 * without a frame boundary gets -EMSGSIZE through on_close. */
int conn_new(Ev *ev, int fd, size_t max_read, const ConnCallbacks *cb, void *userdata, Conn **ret);
/* Closes the fd, drops buffers. Accepts NULL, returns NULL. Safe from inside callbacks. */
Conn *conn_free(Conn *c);
/* Queues bytes; returns 0 or -ENOBUFS when the write buffer would exceed its bound (4 MiB). */
int conn_write(Conn *c, const void *data, size_t len);
int conn_fd(const Conn *c);
size_t conn_pending_write(const Conn *c);

/* Bytes read from the socket per wakeup. A peer that keeps its socket full then cannot hold the
 * loop: after this many bytes the connection yields, and epoll (level-triggered) wakes it again on
 * a later iteration, after the other fds and the timers due. */
#define CONN_READ_BUDGET ((size_t) 64 << 10)

/* For on_data: stop here for this wakeup (the owner's own budget, in messages, is spent). on_data
 * is called again on the next loop iteration with the bytes it did not consume, even if nothing
 * new arrives. */
void conn_yield(Conn *c);
/* Stops reading until conn_resume() (from on_data or at any time): on_data is not called, what is
 * buffered stays, and the socket's bytes stay in the kernel, so a peer that floods blocks on its
 * writes. Writes go on. A hang-up or error on the socket ends the pause (the rest is read and the
 * end reported). conn_resume() delivers what was left buffered at the next iteration. */
void conn_pause(Conn *c);
void conn_resume(Conn *c);
/* Hands buf to the connection as if it had just been read from the socket (same buffer bound, same
 * on_data and on_close calls), for fuzz targets that drive an owner's protocol code without a peer
 * process. Returns 0, or -ESHUTDOWN when the connection failed (on_close was called) or was freed
 * meanwhile. */
int conn_inject(Conn *c, const void *buf, size_t len);
/* How often this connection stopped reading at a budget (its own or the owner's). */
uint64_t conn_yields(const Conn *c);
