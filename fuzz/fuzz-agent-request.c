/* SPDX-License-Identifier: MIT */
/* libFuzzer target: the guest agent's request path, exactly as the agent runs
 * it on bytes from the host: line framing -> request parser -> reply encoder.
 * Links guest/agent/proto.c only (agent_proto_lib, include dir agent_inc). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts unless b holds valid UTF-8 and no raw control character except the final '\n'. */
static void check_line(const AgentBuf *b) {
        if (b->oom)
                return;
        if (b->len == 0 || b->data[b->len - 1] != '\n' || b->data[0] != '{')
                abort();
        for (size_t i = 0; i + 1 < b->len; i++) {
                unsigned char c = (unsigned char) b->data[i];
                if (c < 0x20)
                        abort();
                if (c >= 0x80) {
                        size_t l = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
                        if (c < 0xc2 || c > 0xf4 || i + l > b->len - 1)
                                abort();
                        for (size_t k = 1; k < l; k++)
                                if (((unsigned char) b->data[i + k] & 0xc0) != 0x80)
                                        abort();
                        i += l - 1;
                }
        }
}

static void handle(const char *line, size_t len, AgentBuf *out) {
        AgentRequest r;
        char err[256];
        agent_buf_reset(out);
        if (agent_request_parse(line, len, &r, err, sizeof err) < 0) {
                if (!err[0])
                        abort(); /* every failure must explain itself */
                agent_reply_error(out, r.id_json, err);
        } else {
                if ((int) r.cmd < 0 || r.cmd >= _AGENT_CMD_MAX)
                        abort();
                if (r.cmd == AGENT_CMD_EXEC && (!r.argv || !r.argv[0] || r.argv[r.argc]))
                        abort();
                agent_reply_begin(out, r.id_json, true);
                agent_json_field_str(out, "cmd", agent_cmd_to_string(r.cmd));
                for (size_t i = 0; i < r.argc; i++)
                        agent_json_field_str(out, "arg", r.argv[i]);
                if (r.stdin_data)
                        agent_json_field_bytes(out, "stdin", r.stdin_data, r.stdin_len);
                agent_reply_end(out);
        }
        check_line(out);
        agent_request_free(&r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        AgentLineReader lr = { 0 };
        AgentBuf out = { 0 };
        const char *p = (const char *) data;
        size_t n = size;

        /* The whole input as one request (what a host without framing bugs sends)... */
        handle(p, size, &out);

        /* ...and as a stream, fed in uneven pieces like virtio-serial reads. */
        size_t piece = size ? (data[0] % 7) + 1 : 1;
        while (n > 0) {
                size_t take = n < piece ? n : piece;
                const char *q = p;
                size_t left = take;
                for (;;) {
                        const char *line;
                        size_t len;
                        int k = agent_line_feed(&lr, &q, &left, &line, &len);
                        if (k == AGENT_LINE_NONE)
                                break;
                        if (k == AGENT_LINE_OK)
                                handle(line, len, &out);
                        else if (k < 0)
                                break;
                }
                p += take;
                n -= take;
        }

        /* The encoder must turn any bytes into valid JSON. */
        agent_buf_reset(&out);
        agent_reply_begin(&out, NULL, true);
        agent_json_field_bytes(&out, "stdout", data, size);
        agent_reply_end(&out);
        check_line(&out);

        agent_buf_free(&out);
        agent_line_free(&lr);
        return 0;
}
