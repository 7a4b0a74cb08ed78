/* SPDX-License-Identifier: MIT */
/* Fuzzes the HTTP/1.1 response parser as the clients run it on bytes from a hypervisor's (or
 * ballastd's) socket: responses back to back on one keep-alive stream, with interim 1xx skipped,
 * and checks its contract: a complete response is exactly header_len + body_len bytes, every
 * strict prefix of it asks for more, the reason and content type are NUL-terminated, errors leave
 * a NUL-terminated reason. The same bytes, split at NULs into method, path, extra headers and
 * body, also drive the request formatter, which must never let them inject a header or end the
 * header block early. */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "shared/http1.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_response(const char *buf, size_t len, size_t max_body) {
        size_t off = 0;
        while (off < len) {
                Http1Response r;
                char why[160];
                memset(why, 'x', sizeof(why));
                int k = http1_parse_response_ex(buf + off, len - off, max_body, &r, why, sizeof(why));
                if (k < 0) {
                        if (k != -EBADMSG && k != -EMSGSIZE && k != -EPROTONOSUPPORT)
                                abort();
                        if (!memchr(why, '\0', sizeof(why)) || why[0] == '\0')
                                abort();
                        return;
                }
                if (k == 0) {
                        if (len - off >= HTTP1_HEADERS_MAX + max_body + 1)
                                abort(); /* more than the limits allow would be buffered */
                        return;
                }
                size_t n = (size_t) k;
                if (n > len - off || r.header_len + r.body_len != n || r.body != buf + off + r.header_len)
                        abort();
                if (r.header_len > HTTP1_HEADERS_MAX || r.body_len > max_body)
                        abort();
                if (r.status < 100 || r.status > 599 || !memchr(r.reason, '\0', sizeof(r.reason)) ||
                    !memchr(r.content_type, '\0', sizeof(r.content_type)))
                        abort();
                if ((r.status < 200 || r.status == 204 || r.status == 304) && r.body_len != 0)
                        abort();
                /* Incremental: the response alone parses the same; shorter prefixes need more. */
                Http1Response again;
                if (http1_parse_response(buf + off, n, max_body, &again) != k || again.body_len != r.body_len)
                        abort();
                if (http1_parse_response(buf + off, n - 1, max_body, &again) != 0)
                        abort();
                if (http1_parse_response(buf + off, r.header_len - 1, max_body, &again) != 0)
                        abort();
                if (http1_parse_response(buf + off, n / 2, max_body, &again) != 0)
                        abort();
                off += n;
        }
}

/* Takes the next NUL-terminated piece of the input (or the rest). */
static const char *piece(const char **p, const char *end) {
        const char *s = *p;
        const char *z = memchr(s, '\0', (size_t) (end - s));
        *p = z ? z + 1 : end;
        return s;
}

static void check_format(const uint8_t *data, size_t size) {
        /* Four NUL-terminated strings are needed; copy so each is terminated. */
        char *b = malloc(size + 4);
        if (!b)
                return;
        memcpy(b, data, size);
        memset(b + size, 0, 4);
        const char *p = b, *end = b + size + 4;
        const char *method = piece(&p, end), *path = piece(&p, end), *extra = piece(&p, end), *body = piece(&p, end);
        size_t body_len = strlen(body);
        char *out = NULL;
        int n = http1_format_request(method, path, extra[0] ? extra : NULL, body, body_len, &out);
        if (n < 0) {
                if (n != -EINVAL && n != -EMSGSIZE && n != -ENOMEM)
                        abort();
                free(b);
                return;
        }
        size_t ml = strlen(method), pl = strlen(path);
        if ((size_t) n < ml + pl + 14 || memcmp(out, method, ml) != 0 || out[ml] != ' ' ||
            memcmp(out + ml + 1, path, pl) != 0 || memcmp(out + ml + 1 + pl, " HTTP/1.1\r\n", 11) != 0)
                abort();
        /* The header block ends exactly before the body: nothing in the inputs ended it early. */
        const char *e = strstr(out, "\r\n\r\n");
        if (!e || (size_t) (e + 4 - out) + body_len != (size_t) n || memcmp(e + 4, body, body_len) != 0)
                abort();
        /* Every header line is "Name: value" with no bare CR or LF. */
        for (const char *l = strstr(out, "\r\n") + 2; l < e + 2;) {
                const char *eol = strstr(l, "\r\n");
                const char *colon = memchr(l, ':', (size_t) (eol - l));
                if (!colon || colon == l || memchr(l, '\n', (size_t) (eol - l)) || memchr(l, '\r', (size_t) (eol - l)))
                        abort();
                l = eol + 2;
        }
        free(out);
        free(b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > 4 * HTTP1_HEADERS_MAX)
                return 0;
        const char *buf = (const char *) data;
        check_response(buf, size, HTTP1_BODY_DEFAULT);
        /* Small limits make the -EMSGSIZE paths reachable with small inputs. */
        check_response(buf, size, 64);
        check_response(buf, size, 0);
        check_format(data, size);
        return 0;
}
