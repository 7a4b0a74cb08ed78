/* SPDX-License-Identifier: MIT */
/* ballast-agent: request parser and JSON encoder. See proto.h. */
#include "proto.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ======================================================================== */
/* AgentBuf */

void agent_buf_free(AgentBuf *b) {
        if (!b)
                return;
        free(b->data);
        *b = (AgentBuf){ 0 };
}

void agent_buf_reset(AgentBuf *b) {
        b->len = 0;
        b->oom = false;
}

static int buf_reserve(AgentBuf *b, size_t extra) {
        if (b->oom)
                return -ENOMEM;
        if (extra <= b->cap - b->len)
                return 0;
        if (extra > SIZE_MAX / 2 - b->len) {
                b->oom = true;
                return -ENOMEM;
        }
        size_t ncap = b->cap ? b->cap : 256;
        while (ncap - b->len < extra)
                ncap *= 2;
        char *p = realloc(b->data, ncap);
        if (!p) {
                b->oom = true;
                return -ENOMEM;
        }
        b->data = p;
        b->cap = ncap;
        return 0;
}

int agent_buf_put(AgentBuf *b, const void *p, size_t n) {
        if (n == 0)
                return b->oom ? -ENOMEM : 0;
        int r = buf_reserve(b, n);
        if (r < 0)
                return r;
        memcpy(b->data + b->len, p, n);
        b->len += n;
        return 0;
}

int agent_buf_puts(AgentBuf *b, const char *s) {
        return agent_buf_put(b, s, strlen(s));
}

int agent_buf_printf(AgentBuf *b, const char *fmt, ...) {
        char tmp[256];
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
        va_end(ap);
        if (n < 0)
                return -EINVAL;
        if ((size_t) n < sizeof tmp)
                return agent_buf_put(b, tmp, (size_t) n);
        /* Rare long case: format straight into the buffer. */
        int r = buf_reserve(b, (size_t) n + 1);
        if (r < 0)
                return r;
        va_start(ap, fmt);
        vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
        va_end(ap);
        b->len += (size_t) n;
        return 0;
}

void agent_buf_consume(AgentBuf *b, size_t n) {
        if (n >= b->len) {
                b->len = 0;
                return;
        }
        memmove(b->data, b->data + n, b->len - n);
        b->len -= n;
}

/* ======================================================================== */
/* JSON encoding */

/* Length of the well-formed UTF-8 sequence at p (RFC 3629 table 3-7), or 0. */
static size_t utf8_valid_len(const unsigned char *p, size_t n) {
        unsigned char c = p[0];
        if (c < 0x80)
                return 1;
        if (c >= 0xc2 && c <= 0xdf)
                return n >= 2 && (p[1] & 0xc0) == 0x80 ? 2 : 0;
        if (c >= 0xe0 && c <= 0xef) {
                if (n < 3 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80)
                        return 0;
                if (c == 0xe0 && p[1] < 0xa0) /* overlong */
                        return 0;
                if (c == 0xed && p[1] >= 0xa0) /* UTF-16 surrogate */
                        return 0;
                return 3;
        }
        if (c >= 0xf0 && c <= 0xf4) {
                if (n < 4 || (p[1] & 0xc0) != 0x80 || (p[2] & 0xc0) != 0x80 || (p[3] & 0xc0) != 0x80)
                        return 0;
                if (c == 0xf0 && p[1] < 0x90) /* overlong */
                        return 0;
                if (c == 0xf4 && p[1] >= 0x90) /* above U+10FFFF */
                        return 0;
                return 4;
        }
        return 0;
}

int agent_json_put_string(AgentBuf *b, const void *data, size_t n) {
        const unsigned char *p = data;
        int replaced = 0;
        /* Worst case is 6 output bytes per input byte; reserving it up front
         * keeps the loop free of allocation checks. */
        if (n > (SIZE_MAX - 2) / 6 || buf_reserve(b, n * 6 + 2) < 0) {
                b->oom = true;
                return -ENOMEM;
        }
        char *o = b->data + b->len;
        *o++ = '"';
        size_t i = 0;
        while (i < n) {
                unsigned char c = p[i];
                if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
                        *o++ = (char) c;
                        i++;
                        continue;
                }
                if (c < 0x80) {
                        *o++ = '\\';
                        switch (c) {
                        case '"':
                                *o++ = '"';
                                break;
                        case '\\':
                                *o++ = '\\';
                                break;
                        case '\n':
                                *o++ = 'n';
                                break;
                        case '\t':
                                *o++ = 't';
                                break;
                        case '\r':
                                *o++ = 'r';
                                break;
                        case '\b':
                                *o++ = 'b';
                                break;
                        case '\f':
                                *o++ = 'f';
                                break;
                        default:
                                o += sprintf(o, "u%04x", c);
                                break;
                        }
                        i++;
                        continue;
                }
                size_t l = utf8_valid_len(p + i, n - i);
                if (l == 0) {
                        memcpy(o, "\\ufffd", 6);
                        o += 6;
                        replaced++;
                        i++;
                        continue;
                }
                memcpy(o, p + i, l);
                o += l;
                i += l;
        }
        *o++ = '"';
        b->len = (size_t) (o - b->data);
        return replaced;
}

void agent_reply_begin(AgentBuf *b, const char *id_json, bool ok) {
        agent_buf_puts(b, "{\"id\":");
        agent_buf_puts(b, id_json ? id_json : "null");
        agent_buf_puts(b, ok ? ",\"ok\":true" : ",\"ok\":false");
}

void agent_reply_end(AgentBuf *b) {
        agent_buf_put(b, "}\n", 2);
}

void agent_json_field_key(AgentBuf *b, const char *key) {
        agent_buf_put(b, ",", 1);
        agent_json_put_string(b, key, strlen(key));
        agent_buf_put(b, ":", 1);
}

void agent_json_field_str(AgentBuf *b, const char *key, const char *s) {
        agent_json_field_bytes(b, key, s, strlen(s));
}

void agent_json_field_bytes(AgentBuf *b, const char *key, const void *p, size_t n) {
        agent_json_field_key(b, key);
        agent_json_put_string(b, p, n);
}

void agent_json_field_u64(AgentBuf *b, const char *key, uint64_t v) {
        agent_json_field_key(b, key);
        agent_buf_printf(b, "%llu", (unsigned long long) v);
}

void agent_json_field_i64(AgentBuf *b, const char *key, int64_t v) {
        agent_json_field_key(b, key);
        agent_buf_printf(b, "%lld", (long long) v);
}

void agent_json_field_bool(AgentBuf *b, const char *key, bool v) {
        agent_json_field_key(b, key);
        agent_buf_puts(b, v ? "true" : "false");
}

void agent_json_field_double(AgentBuf *b, const char *key, double v) {
        agent_json_field_key(b, key);
        /* JSON has no NaN/Inf; durations are never negative. */
        if (!(v >= 0 && v < 1e15))
                v = 0;
        agent_buf_printf(b, "%.3f", v);
}

void agent_reply_error(AgentBuf *b, const char *id_json, const char *msg) {
        agent_reply_begin(b, id_json, false);
        agent_json_field_str(b, "error", msg);
        agent_reply_end(b);
}

/* ======================================================================== */
/* Line framing */

int agent_line_feed(AgentLineReader *r, const char **data, size_t *n, const char **ret_line, size_t *ret_len) {
        while (*n > 0) {
                const char *nl = memchr(*data, '\n', *n);
                size_t chunk = nl ? (size_t) (nl - *data) : *n;

                if (r->discarding) {
                        *data += chunk;
                        *n -= chunk;
                        if (!nl)
                                return AGENT_LINE_NONE;
                        (*data)++;
                        (*n)--;
                        r->discarding = false;
                        r->len = 0;
                        return AGENT_LINE_TOO_LONG;
                }

                /* Keep one spare byte: a '\r' before the '\n' is allowed on top of the limit. */
                if (r->len + chunk > AGENT_LINE_MAX + 1) {
                        r->discarding = true;
                        r->len = 0;
                        continue; /* the same bytes are now skipped as part of the long line */
                }
                if (r->len + chunk > r->cap) {
                        size_t ncap = r->cap ? r->cap : 4096;
                        while (ncap < r->len + chunk)
                                ncap *= 2;
                        if (ncap > AGENT_LINE_MAX + 1)
                                ncap = AGENT_LINE_MAX + 1;
                        char *p = realloc(r->buf, ncap);
                        if (!p)
                                return -ENOMEM;
                        r->buf = p;
                        r->cap = ncap;
                }
                if (chunk)
                        memcpy(r->buf + r->len, *data, chunk);
                r->len += chunk;
                *data += chunk;
                *n -= chunk;
                if (!nl)
                        return AGENT_LINE_NONE;
                (*data)++;
                (*n)--;

                size_t len = r->len;
                r->len = 0;
                if (len > 0 && r->buf[len - 1] == '\r')
                        len--;
                if (len > AGENT_LINE_MAX)
                        return AGENT_LINE_TOO_LONG;
                *ret_line = r->buf;
                *ret_len = len;
                return AGENT_LINE_OK;
        }
        return AGENT_LINE_NONE;
}

void agent_line_reset(AgentLineReader *r) {
        r->len = 0;
        r->discarding = false;
}

void agent_line_free(AgentLineReader *r) {
        if (!r)
                return;
        free(r->buf);
        *r = (AgentLineReader){ 0 };
}

/* ======================================================================== */
/* JSON parsing: a strict recursive-descent reader specialised for requests.
 * Unknown members are skipped (with a depth limit, so hostile nesting cannot
 * blow the agent's stack); known members are decoded straight into the
 * request, so no tree is ever built. */

typedef struct JsonIn {
        const char *start;
        const char *p;
        const char *end;
        char *err;
        size_t errlen;
        bool failed;
} JsonIn;

static int json_fail(JsonIn *in, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int json_fail(JsonIn *in, const char *fmt, ...) {
        if (!in->failed && in->err && in->errlen) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(in->err, in->errlen, fmt, ap);
                va_end(ap);
        }
        in->failed = true;
        return -EINVAL;
}

static void json_ws(JsonIn *in) {
        while (in->p < in->end && (*in->p == ' ' || *in->p == '\t' || *in->p == '\n' || *in->p == '\r'))
                in->p++;
}

static bool json_peek(JsonIn *in, char c) {
        json_ws(in);
        return in->p < in->end && *in->p == c;
}

static int json_expect(JsonIn *in, char c) {
        json_ws(in);
        if (in->p >= in->end)
                return json_fail(in, "invalid JSON: expected '%c', got end of line", c);
        if (*in->p != c)
                return json_fail(in, "invalid JSON: expected '%c' at offset %zu", c, (size_t) (in->p - in->start));
        in->p++;
        return 0;
}

static int hexval(char c) {
        if (c >= '0' && c <= '9')
                return c - '0';
        if (c >= 'a' && c <= 'f')
                return c - 'a' + 10;
        if (c >= 'A' && c <= 'F')
                return c - 'A' + 10;
        return -1;
}

static int json_hex4(JsonIn *in, unsigned *ret) {
        if (in->end - in->p < 4)
                return json_fail(in, "invalid JSON: truncated \\u escape");
        unsigned v = 0;
        for (int i = 0; i < 4; i++) {
                int h = hexval(in->p[i]);
                if (h < 0)
                        return json_fail(in, "invalid JSON: bad \\u escape");
                v = v << 4 | (unsigned) h;
        }
        in->p += 4;
        *ret = v;
        return 0;
}

static void put_utf8(AgentBuf *out, unsigned cp) {
        char u[4];
        size_t n;
        if (cp < 0x80) {
                u[0] = (char) cp;
                n = 1;
        } else if (cp < 0x800) {
                u[0] = (char) (0xc0 | cp >> 6);
                u[1] = (char) (0x80 | (cp & 0x3f));
                n = 2;
        } else if (cp < 0x10000) {
                u[0] = (char) (0xe0 | cp >> 12);
                u[1] = (char) (0x80 | (cp >> 6 & 0x3f));
                u[2] = (char) (0x80 | (cp & 0x3f));
                n = 3;
        } else {
                u[0] = (char) (0xf0 | cp >> 18);
                u[1] = (char) (0x80 | (cp >> 12 & 0x3f));
                u[2] = (char) (0x80 | (cp >> 6 & 0x3f));
                u[3] = (char) (0x80 | (cp & 0x3f));
                n = 4;
        }
        agent_buf_put(out, u, n);
}

/* Parses a string literal. With out != NULL the decoded bytes are appended
 * (not NUL-terminated by this function); with out == NULL it only validates. */
static int json_string(JsonIn *in, AgentBuf *out) {
        if (json_expect(in, '"') < 0)
                return -EINVAL;
        for (;;) {
                if (in->p >= in->end)
                        return json_fail(in, "invalid JSON: unterminated string");
                const char *start = in->p;
                /* Fast path over plain ASCII. */
                while (in->p < in->end && (unsigned char) *in->p >= 0x20 && (unsigned char) *in->p < 0x80 &&
                       *in->p != '"' && *in->p != '\\')
                        in->p++;
                if (out && in->p > start)
                        agent_buf_put(out, start, (size_t) (in->p - start));
                if (in->p >= in->end)
                        return json_fail(in, "invalid JSON: unterminated string");
                unsigned char c = (unsigned char) *in->p;
                if (c == '"') {
                        in->p++;
                        return out && out->oom ? -ENOMEM : 0;
                }
                if (c < 0x20)
                        return json_fail(in, "invalid JSON: control character in string");
                if (c >= 0x80) {
                        size_t l = utf8_valid_len((const unsigned char *) in->p, (size_t) (in->end - in->p));
                        if (l == 0)
                                return json_fail(in, "invalid UTF-8 in string");
                        if (out)
                                agent_buf_put(out, in->p, l);
                        in->p += l;
                        continue;
                }
                /* backslash */
                in->p++;
                if (in->p >= in->end)
                        return json_fail(in, "invalid JSON: unterminated string");
                char e = *in->p++;
                char ch;
                switch (e) {
                case '"':
                        ch = '"';
                        break;
                case '\\':
                        ch = '\\';
                        break;
                case '/':
                        ch = '/';
                        break;
                case 'b':
                        ch = '\b';
                        break;
                case 'f':
                        ch = '\f';
                        break;
                case 'n':
                        ch = '\n';
                        break;
                case 'r':
                        ch = '\r';
                        break;
                case 't':
                        ch = '\t';
                        break;
                case 'u': {
                        unsigned cp;
                        if (json_hex4(in, &cp) < 0)
                                return -EINVAL;
                        if (cp >= 0xdc00 && cp <= 0xdfff)
                                return json_fail(in, "invalid JSON: unpaired surrogate in \\u escape");
                        if (cp >= 0xd800 && cp <= 0xdbff) {
                                unsigned lo;
                                if (in->end - in->p < 2 || in->p[0] != '\\' || in->p[1] != 'u')
                                        return json_fail(in, "invalid JSON: unpaired surrogate in \\u escape");
                                in->p += 2;
                                if (json_hex4(in, &lo) < 0)
                                        return -EINVAL;
                                if (lo < 0xdc00 || lo > 0xdfff)
                                        return json_fail(in, "invalid JSON: unpaired surrogate in \\u escape");
                                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
                        }
                        if (out)
                                put_utf8(out, cp);
                        continue;
                }
                default:
                        return json_fail(in, "invalid JSON: bad escape '\\%c'", e);
                }
                if (out)
                        agent_buf_put(out, &ch, 1);
        }
}

/* Validates a JSON number; *ret_is_uint says whether it is a plain
 * non-negative integer (no fraction, no exponent) that fits 2^53 (then *ret). */
static int json_number(JsonIn *in, bool *ret_is_uint, uint64_t *ret) {
        json_ws(in);
        const char *p = in->p;
        bool neg = false, is_int = true, big = false;
        uint64_t v = 0;
        if (p < in->end && *p == '-') {
                neg = true;
                p++;
        }
        if (p >= in->end || *p < '0' || *p > '9')
                return json_fail(in, "invalid JSON: bad number");
        if (*p == '0') {
                p++;
        } else {
                while (p < in->end && *p >= '0' && *p <= '9') {
                        if (v > (AGENT_ID_INT_MAX - 9) / 10 + 1)
                                big = true;
                        else
                                v = v * 10 + (uint64_t) (*p - '0');
                        p++;
                }
        }
        if (p < in->end && *p == '.') {
                is_int = false;
                p++;
                if (p >= in->end || *p < '0' || *p > '9')
                        return json_fail(in, "invalid JSON: bad number");
                while (p < in->end && *p >= '0' && *p <= '9')
                        p++;
        }
        if (p < in->end && (*p == 'e' || *p == 'E')) {
                is_int = false;
                p++;
                if (p < in->end && (*p == '+' || *p == '-'))
                        p++;
                if (p >= in->end || *p < '0' || *p > '9')
                        return json_fail(in, "invalid JSON: bad number");
                while (p < in->end && *p >= '0' && *p <= '9')
                        p++;
        }
        in->p = p;
        *ret_is_uint = is_int && !big && !(neg && v != 0) && v <= AGENT_ID_INT_MAX;
        *ret = v;
        return 0;
}

static int json_literal(JsonIn *in, const char *word) {
        json_ws(in);
        size_t n = strlen(word);
        if ((size_t) (in->end - in->p) < n || memcmp(in->p, word, n) != 0)
                return json_fail(in, "invalid JSON: unexpected character");
        in->p += n;
        return 0;
}

static int json_skip_value(JsonIn *in, unsigned depth);

static int json_skip_container(JsonIn *in, unsigned depth, bool object) {
        if (depth >= AGENT_JSON_DEPTH_MAX)
                return json_fail(in, "invalid JSON: nested too deeply");
        in->p++; /* '{' or '[' */
        if (json_peek(in, object ? '}' : ']')) {
                in->p++;
                return 0;
        }
        for (;;) {
                if (object) {
                        if (json_string(in, NULL) < 0 || json_expect(in, ':') < 0)
                                return -EINVAL;
                }
                if (json_skip_value(in, depth + 1) < 0)
                        return -EINVAL;
                json_ws(in);
                if (in->p < in->end && *in->p == ',') {
                        in->p++;
                        continue;
                }
                return json_expect(in, object ? '}' : ']');
        }
}

static int json_skip_value(JsonIn *in, unsigned depth) {
        json_ws(in);
        if (in->p >= in->end)
                return json_fail(in, "invalid JSON: expected a value, got end of line");
        bool is_uint;
        uint64_t v;
        switch (*in->p) {
        case '{':
                return json_skip_container(in, depth, true);
        case '[':
                return json_skip_container(in, depth, false);
        case '"':
                return json_string(in, NULL);
        case 't':
                return json_literal(in, "true");
        case 'f':
                return json_literal(in, "false");
        case 'n':
                return json_literal(in, "null");
        default:
                return json_number(in, &is_uint, &v);
        }
}

/* Decodes a string member into a fresh NUL-terminated heap string. */
static int json_string_dup(JsonIn *in, char **ret, size_t *ret_len) {
        AgentBuf b = { 0 };
        int r = json_string(in, &b);
        if (r == 0 && agent_buf_put(&b, "", 1) < 0)
                r = -ENOMEM;
        if (r < 0) {
                agent_buf_free(&b);
                if (r == -ENOMEM)
                        json_fail(in, "out of memory");
                return r;
        }
        *ret = b.data;
        *ret_len = b.len - 1;
        return 0;
}

static int json_uint_member(JsonIn *in, const char *name, uint64_t max, uint64_t *ret) {
        json_ws(in);
        if (in->p >= in->end || !((*in->p >= '0' && *in->p <= '9') || *in->p == '-')) {
                if (json_skip_value(in, 1) < 0)
                        return -EINVAL;
                return json_fail(in, "args.%s: expected a non-negative integer", name);
        }
        bool is_uint;
        uint64_t v;
        if (json_number(in, &is_uint, &v) < 0)
                return -EINVAL;
        if (!is_uint || v > max)
                return json_fail(in, "args.%s: expected an integer in 0..%llu", name, (unsigned long long) max);
        *ret = v;
        return 0;
}

static int json_bool_member(JsonIn *in, const char *name, bool *ret) {
        json_ws(in);
        if (in->p < in->end && *in->p == 't')
                return json_literal(in, "true") < 0 ? -EINVAL : (*ret = true, 0);
        if (in->p < in->end && *in->p == 'f')
                return json_literal(in, "false") < 0 ? -EINVAL : (*ret = false, 0);
        if (json_skip_value(in, 1) < 0)
                return -EINVAL;
        return json_fail(in, "args.%s: expected true or false", name);
}

static void argv_free(AgentRequest *r) {
        if (r->argv) {
                for (size_t i = 0; i < r->argc; i++)
                        free(r->argv[i]);
                free(r->argv);
        }
        r->argv = NULL;
        r->argc = 0;
}

static int json_argv(JsonIn *in, AgentRequest *r) {
        argv_free(r);
        json_ws(in);
        if (!json_peek(in, '[')) {
                if (json_skip_value(in, 1) < 0)
                        return -EINVAL;
                return json_fail(in, "args.argv: expected an array of strings");
        }
        in->p++;
        size_t cap = 8;
        r->argv = calloc(cap, sizeof(char *));
        if (!r->argv)
                return json_fail(in, "out of memory");
        if (json_peek(in, ']')) {
                in->p++;
                return 0;
        }
        for (;;) {
                if (!json_peek(in, '"')) {
                        if (json_skip_value(in, 1) < 0)
                                return -EINVAL;
                        return json_fail(in, "args.argv: expected an array of strings");
                }
                if (r->argc + 2 > cap) {
                        if (cap >= AGENT_EXEC_ARGV_MAX)
                                return json_fail(in, "args.argv: more than %u elements", AGENT_EXEC_ARGV_MAX);
                        char **n = realloc(r->argv, cap * 2 * sizeof(char *));
                        if (!n)
                                return json_fail(in, "out of memory");
                        r->argv = n;
                        cap *= 2;
                }
                char *s;
                size_t len;
                if (json_string_dup(in, &s, &len) < 0)
                        return -EINVAL;
                r->argv[r->argc++] = s;
                r->argv[r->argc] = NULL;
                if (strlen(s) != len)
                        return json_fail(in, "args.argv: strings must not contain NUL");
                json_ws(in);
                if (in->p < in->end && *in->p == ',') {
                        in->p++;
                        continue;
                }
                return json_expect(in, ']');
        }
}

static int json_args(JsonIn *in, AgentRequest *r) {
        json_ws(in);
        if (in->p < in->end && *in->p == 'n')
                return json_literal(in, "null"); /* "args": null == absent */
        if (!json_peek(in, '{')) {
                if (json_skip_value(in, 1) < 0)
                        return -EINVAL;
                return json_fail(in, "args: expected an object");
        }
        in->p++;
        if (json_peek(in, '}')) {
                in->p++;
                return 0;
        }
        AgentBuf key = { 0 };
        int ret = -EINVAL;
        for (;;) {
                agent_buf_reset(&key);
                if (json_string(in, &key) < 0 || agent_buf_put(&key, "", 1) < 0 || json_expect(in, ':') < 0)
                        goto out;
                const char *k = key.data;
                uint64_t v;
                int r2;
                if (strlen(k) != key.len - 1) {
                        r2 = json_skip_value(in, 1); /* a key with NUL matches nothing */
                } else if (strcmp(k, "argv") == 0) {
                        r2 = json_argv(in, r);
                } else if (strcmp(k, "timeout_ms") == 0) {
                        r2 = json_uint_member(in, k, AGENT_ID_INT_MAX, &r->timeout_ms);
                } else if (strcmp(k, "max_output") == 0) {
                        r2 = json_uint_member(in, k, AGENT_ID_INT_MAX, &r->max_output);
                } else if (strcmp(k, "stdin") == 0) {
                        free(r->stdin_data);
                        r->stdin_data = NULL;
                        if (!json_peek(in, '"')) {
                                r2 = json_skip_value(in, 1) < 0 ? -EINVAL
                                                                : json_fail(in, "args.stdin: expected a string");
                        } else {
                                r2 = json_string_dup(in, &r->stdin_data, &r->stdin_len);
                        }
                } else if (strcmp(k, "mib") == 0) {
                        r2 = json_uint_member(in, k, AGENT_ID_INT_MAX, &r->mib);
                        r->has_mib = r2 == 0;
                } else if (strcmp(k, "seed") == 0) {
                        r2 = json_uint_member(in, k, UINT32_MAX, &v);
                        if (r2 == 0)
                                r->seed = (uint32_t) v;
                } else if (strcmp(k, "hold") == 0) {
                        r2 = json_bool_member(in, k, &r->hold);
                } else if (strcmp(k, "check_zero") == 0) {
                        r2 = json_bool_member(in, k, &r->check_zero);
                } else if (strcmp(k, "handle") == 0) {
                        r2 = json_uint_member(in, k, AGENT_ID_INT_MAX, &r->handle);
                        r->has_handle = r2 == 0;
                } else {
                        r2 = json_skip_value(in, 1); /* unknown args are ignored, for forward compatibility */
                }
                if (r2 < 0)
                        goto out;
                json_ws(in);
                if (in->p < in->end && *in->p == ',') {
                        in->p++;
                        continue;
                }
                ret = json_expect(in, '}');
                goto out;
        }
out:
        agent_buf_free(&key);
        return ret;
}

static int json_id(JsonIn *in, AgentRequest *r) {
        json_ws(in);
        if (in->p < in->end && *in->p == '"') {
                char *s;
                size_t len;
                if (json_string_dup(in, &s, &len) < 0)
                        return -EINVAL;
                if (len > AGENT_ID_STR_MAX) {
                        free(s);
                        return json_fail(in, "id: string longer than %u bytes", AGENT_ID_STR_MAX);
                }
                /* Re-encode rather than copy the raw text: the echo is then
                 * canonical and cannot carry anything but one JSON string. */
                AgentBuf b = { 0 };
                agent_json_put_string(&b, s, len);
                free(s);
                if (b.oom || b.len >= sizeof r->id_json) {
                        agent_buf_free(&b);
                        return json_fail(in, "out of memory");
                }
                memcpy(r->id_json, b.data, b.len);
                r->id_json[b.len] = 0;
                agent_buf_free(&b);
                r->has_id = true;
                return 0;
        }
        if (in->p < in->end && ((*in->p >= '0' && *in->p <= '9') || *in->p == '-')) {
                bool is_uint;
                uint64_t v;
                if (json_number(in, &is_uint, &v) < 0)
                        return -EINVAL;
                if (!is_uint)
                        return json_fail(in, "id: expected an integer in 0..2^53 or a string");
                snprintf(r->id_json, sizeof r->id_json, "%llu", (unsigned long long) v);
                r->has_id = true;
                return 0;
        }
        if (json_skip_value(in, 1) < 0)
                return -EINVAL;
        return json_fail(in, "id: expected an integer in 0..2^53 or a string");
}

static const char *const cmd_names[_AGENT_CMD_MAX] = {
        [AGENT_CMD_PING] = "ping",
        [AGENT_CMD_EXEC] = "exec",
        [AGENT_CMD_MEMINFO] = "meminfo",
        [AGENT_CMD_FILL] = "fill",
        [AGENT_CMD_VERIFY] = "verify",
        [AGENT_CMD_RELEASE] = "release",
        [AGENT_CMD_DROP_CACHES] = "drop-caches",
};

const char *agent_cmd_to_string(AgentCmd c) {
        if ((int) c < 0 || c >= _AGENT_CMD_MAX)
                return NULL;
        return cmd_names[c];
}

AgentCmd agent_cmd_from_string(const char *s) {
        if (!s)
                return _AGENT_CMD_INVALID;
        for (int i = 0; i < _AGENT_CMD_MAX; i++)
                if (strcmp(s, cmd_names[i]) == 0)
                        return (AgentCmd) i;
        return _AGENT_CMD_INVALID;
}

void agent_request_free(AgentRequest *r) {
        if (!r)
                return;
        argv_free(r);
        free(r->stdin_data);
        r->stdin_data = NULL;
        r->stdin_len = 0;
}

static int request_check(AgentRequest *r, char *err, size_t errlen) {
        switch (r->cmd) {
        case AGENT_CMD_EXEC:
                if (!r->argv || r->argc == 0) {
                        snprintf(err, errlen, "exec: args.argv is required and must not be empty");
                        return -EINVAL;
                }
                if (r->timeout_ms == 0 || r->timeout_ms > AGENT_EXEC_TIMEOUT_MAX_MS) {
                        snprintf(err, errlen, "exec: args.timeout_ms must be in 1..%u", AGENT_EXEC_TIMEOUT_MAX_MS);
                        return -EINVAL;
                }
                if (r->max_output > AGENT_EXEC_OUTPUT_MAX) {
                        snprintf(err, errlen, "exec: args.max_output must be in 0..%u", AGENT_EXEC_OUTPUT_MAX);
                        return -EINVAL;
                }
                return 0;
        case AGENT_CMD_FILL:
                if (!r->has_mib || r->mib < 1 || r->mib > AGENT_FILL_MIB_MAX) {
                        snprintf(err, errlen, "fill: args.mib is required and must be in 1..%u", AGENT_FILL_MIB_MAX);
                        return -EINVAL;
                }
                return 0;
        case AGENT_CMD_VERIFY:
        case AGENT_CMD_RELEASE:
                if (!r->has_handle) {
                        snprintf(err, errlen, "%s: args.handle is required", agent_cmd_to_string(r->cmd));
                        return -EINVAL;
                }
                return 0;
        default:
                return 0;
        }
}

int agent_request_parse(const char *line, size_t len, AgentRequest *r, char *err, size_t errlen) {
        *r = (AgentRequest){
                .id_json = "null",
                .cmd = _AGENT_CMD_INVALID,
                .timeout_ms = AGENT_EXEC_TIMEOUT_DEFAULT_MS,
                .max_output = AGENT_EXEC_OUTPUT_DEFAULT,
                .seed = 1,
                .hold = true,
        };
        if (err && errlen)
                err[0] = 0;
        if (len > AGENT_LINE_MAX) {
                snprintf(err, errlen, "request too long");
                return -E2BIG;
        }
        if (!line || len == 0) { /* an empty line (the reader's buffer may still be NULL) */
                snprintf(err, errlen, "invalid JSON: empty request");
                return -EINVAL;
        }
        JsonIn in = { .start = line, .p = line, .end = line + len, .err = err, .errlen = errlen };
        char *cmd = NULL;
        bool have_cmd = false;
        int ret = -EINVAL;

        if (!json_peek(&in, '{')) {
                json_fail(&in, "invalid JSON: a request must be an object");
                goto out;
        }
        in.p++;
        if (json_peek(&in, '}')) {
                in.p++;
        } else {
                AgentBuf key = { 0 };
                for (;;) {
                        agent_buf_reset(&key);
                        if (json_string(&in, &key) < 0 || agent_buf_put(&key, "", 1) < 0 || json_expect(&in, ':') < 0)
                                break;
                        int r2;
                        if (strlen(key.data) != key.len - 1) {
                                r2 = json_skip_value(&in, 1);
                        } else if (strcmp(key.data, "id") == 0) {
                                r2 = json_id(&in, r);
                        } else if (strcmp(key.data, "cmd") == 0) {
                                size_t clen;
                                free(cmd);
                                cmd = NULL;
                                if (!json_peek(&in, '"')) {
                                        r2 = json_skip_value(&in, 1) < 0 ? -EINVAL
                                                                         : json_fail(&in, "cmd: expected a string");
                                } else {
                                        r2 = json_string_dup(&in, &cmd, &clen);
                                        have_cmd = r2 == 0;
                                }
                        } else if (strcmp(key.data, "args") == 0) {
                                r2 = json_args(&in, r);
                        } else {
                                r2 = json_skip_value(&in, 1);
                        }
                        if (r2 < 0)
                                break;
                        json_ws(&in);
                        if (in.p < in.end && *in.p == ',') {
                                in.p++;
                                continue;
                        }
                        json_expect(&in, '}');
                        break;
                }
                agent_buf_free(&key);
                if (in.failed)
                        goto out;
        }
        json_ws(&in);
        if (in.p != in.end) {
                json_fail(&in, "invalid JSON: trailing characters after the request object");
                goto out;
        }
        if (!have_cmd) {
                snprintf(err, errlen, "missing \"cmd\"");
                goto out;
        }
        r->cmd = agent_cmd_from_string(cmd);
        if (r->cmd < 0) {
                /* cmd is decoded UTF-8; keep the message bounded. */
                snprintf(err, errlen, "unknown cmd \"%.64s\"", cmd);
                goto out;
        }
        ret = request_check(r, err, errlen);
out:
        free(cmd);
        return ret;
}

/* ======================================================================== */
/* /proc helpers */

static int find_key_value(const char *text, const char *key, char sep, uint64_t *ret) {
        size_t klen = strlen(key);
        const char *p = text;
        while (p && *p) {
                if (strncmp(p, key, klen) == 0 && p[klen] == sep) {
                        const char *q = p + klen + 1;
                        while (*q == ' ' || *q == '\t')
                                q++;
                        if (*q < '0' || *q > '9')
                                return -EINVAL;
                        uint64_t v = 0;
                        while (*q >= '0' && *q <= '9') {
                                if (v > (UINT64_MAX - 9) / 10)
                                        return -ERANGE;
                                v = v * 10 + (uint64_t) (*q - '0');
                                q++;
                        }
                        *ret = v;
                        return 0;
                }
                p = strchr(p, '\n');
                if (p)
                        p++;
        }
        return -ENOENT;
}

int agent_meminfo_get(const char *text, const char *key, uint64_t *ret) {
        uint64_t kb;
        int r = find_key_value(text, key, ':', &kb);
        if (r < 0)
                return r;
        if (kb > UINT64_MAX / 1024)
                return -ERANGE;
        *ret = kb * 1024;
        return 0;
}

int agent_vmstat_get(const char *text, const char *key, uint64_t *ret) {
        return find_key_value(text, key, ' ', ret);
}

uint64_t agent_min_free_kbytes(uint64_t mem_total_kb) {
        uint64_t v = mem_total_kb / 100 * 3 + mem_total_kb % 100 * 3 / 100;
        return v < 5720 ? 5720 : v;
}

/* splitmix64 of (seed, line): position-derived so any page can be checked on
 * its own, without replaying a stream from the start. */
uint64_t agent_fill_word(uint32_t seed, uint64_t line_index) {
        uint64_t z = line_index ^ ((uint64_t) seed * UINT64_C(0xD1B54A32D192ED03));
        z += UINT64_C(0x9E3779B97F4A7C15);
        z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
        z ^= z >> 31;
        return z ? z : 1;
}
