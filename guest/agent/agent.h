/* SPDX-License-Identifier: MIT */
/* ballast-agent internals shared by main.c, setup.c, children.c, port.c.
 * The agent is one single-threaded process (PID 1 of the guest); the one
 * Agent object holds everything, and is passed to whoever needs it.
 * Calls run one way: main.c -> setup.c, children.c -> port.c -> util.c. */
#pragma once

#include <stdbool.h>
#include <stdint.h>
#include <poll.h>
#include <sys/types.h>

#include "proto.h"
#include "util.h"

#ifndef AGENT_VERSION
#define AGENT_VERSION "0.1.0"
#endif

#define AGENT_PORT_NAME      "org.ballast.agent"
#define AGENT_OUTQ_MAX       (64u * 1024u * 1024u) /* queued reply bytes before replies are replaced by errors */
#define AGENT_BACKOFF_MIN_MS 4
#define AGENT_BACKOFF_MAX_MS 1000

typedef struct ExecJob ExecJob;
typedef struct FillJob FillJob;

typedef struct Agent {
        /* setup result */
        bool ready;
        char reason[256];
        uint64_t mem_total_kb;
        uint64_t zram_disksize;

        /* the port */
        char port_path[64];
        int port_fd;         /* -1 until found */
        bool host_connected; /* false while the host side is closed (POLLHUP / EOF) */
        unsigned backoff_ms; /* current back-off while the host is away */
        usec_t next_probe;   /* when to look at the port again while away (or search for it) */
        AgentLineReader lines;
        AgentBuf outq; /* bytes waiting for the port to be writable */
        uint64_t dropped_replies;

        int sig_fd; /* signalfd: SIGCHLD, SIGIO */

        ExecJob *execs;
        FillJob *fills;
        uint64_t next_handle;
} Agent;

/* port.c: the port's output queue */
/* Queues one complete reply line for the host (dropped while the host is away;
 * replaced by a short error line when the queue is full) and writes what it can. */
void agent_send(Agent *a, AgentBuf *line);
/* Writes queued bytes until the port would block; a failed write means the host went away. */
void agent_port_flush(Agent *a);
/* The host side closed: forget the partial request and the queued replies, start the back-off. */
void agent_port_went_away(Agent *a);

/* setup.c */
void agent_setup(Agent *a);
int agent_find_port(char *ret_path, size_t len);
void agent_reply_ping(Agent *a, AgentBuf *b, const char *id_json);
void agent_reply_meminfo(AgentBuf *b, const char *id_json);
void agent_ready_event(Agent *a, AgentBuf *b);

/* children.c: exec and fill. Jobs are kept in small linked lists: a guest
 * runs a handful at a time, so a linear scan beats a heap in size and code. */
int agent_exec_start(Agent *a, AgentRequest *req);
int agent_fill_start(Agent *a, AgentRequest *req);
void agent_fill_verify(Agent *a, AgentRequest *req);
void agent_fill_release(Agent *a, AgentRequest *req);
/* Adds the jobs' fds to the poll set; returns the count added. */
int agent_children_pollfds(Agent *a, struct pollfd *pfd, int max);
/* Handles ready fds (matched by fd number). */
void agent_children_io(Agent *a, const struct pollfd *pfd, int n);
/* Reaps every exited child; unknown pids (orphans re-parented to PID 1) are just reaped. */
void agent_children_reap(Agent *a);
/* Enforces exec deadlines; returns the next deadline (0 if none). */
usec_t agent_children_timers(Agent *a);
