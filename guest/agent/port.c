/* SPDX-License-Identifier: MIT */
/* ballast-agent: the output side of the virtio-serial port. Replies are queued in
 * Agent.outq and written as the port accepts them; when the host side goes away the
 * queue and the partial request line are dropped. main.c owns the port's lifetime
 * (finding, opening, probing, reading); setup.c and children.c only send through here. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "agent.h"

void agent_send(Agent *a, AgentBuf *line) {
        if (!a->host_connected || a->port_fd < 0) {
                /* Nobody to read it: the request came from a connection that is gone. */
                a->dropped_replies++;
                return;
        }
        if (a->outq.len + line->len > AGENT_OUTQ_MAX) {
                /* The host stopped reading; keep memory bounded. A short error
                 * line still fits and tells the host which reply it lost. */
                a->dropped_replies++;
                if (a->outq.len + 256 > AGENT_OUTQ_MAX + 4096)
                        return;
                const char *id = "null";
                char idbuf[AGENT_ID_JSON_MAX];
                if (line->len > 7 && memcmp(line->data, "{\"id\":", 6) == 0) {
                        size_t i = 6, k = 0;
                        /* ids are emitted canonically, so the first ',"ok":' ends one */
                        while (i + 6 <= line->len && memcmp(line->data + i, ",\"ok\":", 6) != 0 && k + 1 < sizeof idbuf)
                                idbuf[k++] = line->data[i++];
                        idbuf[k] = 0;
                        id = idbuf;
                }
                AgentBuf e = { 0 };
                agent_reply_error(&e, id, "reply dropped: output queue full");
                agent_buf_put(&a->outq, e.data, e.len);
                agent_buf_free(&e);
        } else {
                agent_buf_put(&a->outq, line->data, line->len);
        }
        agent_port_flush(a);
}

void agent_port_went_away(Agent *a) {
        a->host_connected = false;
        a->backoff_ms = AGENT_BACKOFF_MIN_MS;
        a->next_probe = agent_now() + (usec_t) a->backoff_ms * 1000;
        agent_line_reset(&a->lines);
        agent_buf_reset(&a->outq);
}

void agent_port_flush(Agent *a) {
        while (a->host_connected && a->outq.len > 0) {
                ssize_t n = write(a->port_fd, a->outq.data, a->outq.len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0 && errno == EAGAIN)
                        return; /* wait for POLLOUT */
                if (n <= 0) {
                        agent_port_went_away(a);
                        return;
                }
                agent_buf_consume(&a->outq, (size_t) n);
        }
}
