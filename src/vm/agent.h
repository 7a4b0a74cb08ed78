/* SPDX-License-Identifier: MIT */
#pragma once

/* Host side of the guest agent channel (docs/agent-protocol.md): newline-delimited JSON over the
 * Unix socket QEMU serves for the agent's virtio-serial port. Synchronous, with a deadline on
 * every call; for the CLI, the launcher and tests. */

#include <jansson.h>
#include <sys/types.h>

#include "shared/time-util.h"

typedef struct AgentClient AgentClient;

/* Connects (checking the peer's uid; UID_ANY skips that) within timeout. Returns 0 or a negative
 * errno with a reason in err. */
int agent_connect(const char *path, uid_t expected_uid, usec_t timeout, AgentClient **ret, char *err, size_t errlen);
AgentClient *agent_close(AgentClient *a);

/* Sends {"id":N,"cmd":cmd,"args":args} (args stolen, may be NULL) and waits for the reply with
 * that id, skipping events and stale replies. On success *ret_reply is the reply object (owned by
 * the caller) whether "ok" is true or false. Returns -ETIMEDOUT, -ECONNRESET, -EBADMSG... with a
 * reason in err otherwise. */
int agent_call(AgentClient *a, const char *cmd, json_t *args, usec_t timeout, json_t **ret_reply, char *err,
               size_t errlen);

/* Pings until the agent answers with ready=true or the deadline passes, reconnecting as needed
 * (QEMU accepts the socket before the guest opens its port). When watch_pid > 0 and that process
 * is gone, gives up at once with -ECHILD. On success *ret_ping is the last ping reply (owned).
 * Returns -ETIMEDOUT with the last reason otherwise. */
int agent_wait_ready(const char *path, uid_t expected_uid, usec_t timeout, pid_t watch_pid, json_t **ret_ping,
                     char *err, size_t errlen);
