/* SPDX-License-Identifier: MIT */
/* ballast-agent: pure request parsing and reply encoding (docs/agent-protocol.md).
 *
 * Nothing in here touches the system: no I/O, no globals, so the same file is
 * linked into the static agent, the cmocka unit test and the libFuzzer target.
 * Every function returns 0 (or a non-negative count) on success and a negative
 * errno on failure; output parameters are named ret_* and written on success. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Protocol limits (docs/agent-protocol.md). */
#define AGENT_LINE_MAX                (1024u * 1024u)              /* longest request line, without '\n' */
#define AGENT_ID_STR_MAX              64u                          /* longest string id, in bytes (decoded) */
#define AGENT_ID_INT_MAX              (UINT64_C(1) << 53)          /* largest integer id */
#define AGENT_ID_JSON_MAX             (AGENT_ID_STR_MAX * 6u + 3u) /* worst-case re-encoded id + NUL */
#define AGENT_JSON_DEPTH_MAX          64u                          /* nesting accepted in skipped values */

#define AGENT_EXEC_TIMEOUT_DEFAULT_MS 10000u
#define AGENT_EXEC_TIMEOUT_MAX_MS     600000u
#define AGENT_EXEC_OUTPUT_DEFAULT     65536u
#define AGENT_EXEC_OUTPUT_MAX         1048576u
#define AGENT_EXEC_ARGV_MAX           4096u
#define AGENT_FILL_MIB_MAX            (1024u * 1024u) /* 1 TiB: keeps mib * 2^20 far from overflow */

/* ------------------------------------------------------------------------ */
/* Growable output buffer. A failed allocation latches `oom` and makes every
 * later append a no-op, so encoders can append unconditionally and check once. */
typedef struct AgentBuf {
        char *data;
        size_t len;
        size_t cap;
        bool oom;
} AgentBuf;

/* Frees the storage; the struct is left empty and reusable. Accepts NULL. */
void agent_buf_free(AgentBuf *b);
/* Drops the content but keeps the storage. */
void agent_buf_reset(AgentBuf *b);
/* Appends raw bytes. Returns 0 or -ENOMEM (then b->oom is set). */
int agent_buf_put(AgentBuf *b, const void *p, size_t n);
int agent_buf_puts(AgentBuf *b, const char *s);
int agent_buf_printf(AgentBuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Removes the first n bytes (what a partial write consumed). */
void agent_buf_consume(AgentBuf *b, size_t n);

/* Appends `n` arbitrary bytes as one JSON string literal, quotes included.
 * The result is always valid JSON and valid UTF-8: '"' and '\\' are escaped,
 * control characters become \n \t \r \b \f or \u00XX, well-formed UTF-8
 * passes through, and every byte that is not part of a well-formed UTF-8
 * sequence (stray continuation bytes, overlong forms, surrogates, code points
 * above U+10FFFF, a sequence cut off at the end) is replaced by one U+FFFD,
 * written as the escape "\ufffd". Returns the number of bytes replaced, or -ENOMEM. */
int agent_json_put_string(AgentBuf *b, const void *data, size_t n);

/* Reply helpers: agent_reply_begin writes `{"id":ID,"ok":true|false`;
 * the field helpers append `,"key":value`; agent_reply_end appends `}\n`.
 * `id_json` is the already-encoded id (from AgentRequest.id_json), "null" if NULL. */
void agent_reply_begin(AgentBuf *b, const char *id_json, bool ok);
void agent_reply_end(AgentBuf *b);
void agent_json_field_str(AgentBuf *b, const char *key, const char *s);
void agent_json_field_bytes(AgentBuf *b, const char *key, const void *p, size_t n);
void agent_json_field_u64(AgentBuf *b, const char *key, uint64_t v);
void agent_json_field_i64(AgentBuf *b, const char *key, int64_t v);
void agent_json_field_bool(AgentBuf *b, const char *key, bool v);
void agent_json_field_double(AgentBuf *b, const char *key, double v);
/* `,"key":` followed by nothing: the caller appends an object or array. */
void agent_json_field_key(AgentBuf *b, const char *key);
/* A complete error reply line: {"id":ID,"ok":false,"error":MSG}\n */
void agent_reply_error(AgentBuf *b, const char *id_json, const char *msg);

/* ------------------------------------------------------------------------ */
/* Line framing. Bytes are fed in as they arrive; complete lines are returned
 * one at a time. A line longer than AGENT_LINE_MAX is discarded up to its
 * '\n' and reported once as AGENT_LINE_TOO_LONG. */
typedef struct AgentLineReader {
        char *buf; /* at most AGENT_LINE_MAX + 1 bytes, allocated on first use */
        size_t len;
        size_t cap;
        bool discarding; /* inside an over-long line, waiting for its '\n' */
} AgentLineReader;

typedef enum AgentLineKind {
        AGENT_LINE_NONE,     /* all input consumed, no complete line */
        AGENT_LINE_OK,       /* *ret_line / *ret_len is a line, '\n' (and a '\r' before it) removed */
        AGENT_LINE_TOO_LONG, /* an over-long line ended; answer "request too long" */
} AgentLineKind;

/* Consumes bytes from *data / *n (both advanced) until one line is complete
 * or the input is exhausted. A returned line points into the reader and is
 * valid until the next call. Returns an AgentLineKind or -ENOMEM. */
int agent_line_feed(AgentLineReader *r, const char **data, size_t *n, const char **ret_line, size_t *ret_len);
/* Forgets any partial line (the host side went away). */
void agent_line_reset(AgentLineReader *r);
void agent_line_free(AgentLineReader *r);

/* ------------------------------------------------------------------------ */
/* Requests. */
typedef enum AgentCmd {
        AGENT_CMD_PING,
        AGENT_CMD_EXEC,
        AGENT_CMD_MEMINFO,
        AGENT_CMD_FILL,
        AGENT_CMD_VERIFY,
        AGENT_CMD_RELEASE,
        AGENT_CMD_DROP_CACHES,
        _AGENT_CMD_MAX,
        _AGENT_CMD_INVALID = -22, /* -EINVAL */
} AgentCmd;

const char *agent_cmd_to_string(AgentCmd c);
AgentCmd agent_cmd_from_string(const char *s);

typedef struct AgentRequest {
        /* The id re-encoded as JSON ("7", "\"abc\""), or "null" when the request
         * had none or it could not be parsed. Always NUL-terminated. */
        char id_json[AGENT_ID_JSON_MAX];
        bool has_id;
        AgentCmd cmd;

        /* exec */
        char **argv; /* NULL-terminated, owned; NULL when absent */
        size_t argc;
        uint64_t timeout_ms;
        uint64_t max_output;
        char *stdin_data; /* owned, may contain NUL bytes; NULL when absent */
        size_t stdin_len;

        /* fill / verify / release */
        uint64_t mib;
        bool has_mib;
        uint32_t seed;
        bool hold;
        bool check_zero;
        uint64_t handle;
        bool has_handle;
} AgentRequest;

/* Parses one request line into *ret (which the caller must later pass to
 * agent_request_free, whatever the result). Defaults are applied to absent
 * args and per-command required args are checked.
 * On failure returns -EINVAL (or -ENOMEM) and writes a human-readable reason
 * to err; ret->id_json then still holds the id if it had been parsed, so the
 * error reply can carry it. */
int agent_request_parse(const char *line, size_t len, AgentRequest *ret, char *err, size_t errlen);
void agent_request_free(AgentRequest *r);

/* ------------------------------------------------------------------------ */
/* /proc parsing (pure: callers pass the file contents). */

/* Finds "Key:   123 kB" in /proc/meminfo text; returns bytes via *ret. -ENOENT if absent. */
int agent_meminfo_get(const char *text, const char *key, uint64_t *ret);
/* Finds "key 123" in /proc/vmstat text. -ENOENT if absent. */
int agent_vmstat_get(const char *text, const char *key, uint64_t *ret);
/* vm.min_free_kbytes for a guest of mem_total_kb: 3 % of RAM, never below 5720. */
uint64_t agent_min_free_kbytes(uint64_t mem_total_kb);

/* ------------------------------------------------------------------------ */
/* fill pattern: one 64-bit word at the start of every 64-byte line, the rest
 * zero. The word at byte offset o is agent_fill_word(seed, o / 64), never 0,
 * so every page is dirty and never "same-filled" (zram would store those for
 * free), while the page still compresses roughly 4:1 like real data. */
uint64_t agent_fill_word(uint32_t seed, uint64_t line_index);
/* Order-dependent fold of the words, used for the reported checksum. */
static inline uint64_t agent_fill_fold(uint64_t acc, uint64_t word) {
        return ((acc << 5) | (acc >> 59)) ^ word;
}
