/* SPDX-License-Identifier: MIT */
/* Fuzzes the API's request path as ballastd runs it: raw bytes written to a connection of the real
 * server (the strict request-head check, authentication, libmicrohttpd, the body limits) and the
 * route dispatch of the daemon (api_handle() on a Manager with an empty fleet and a state
 * directory in /tmp). The server is read-only here (every peer may only read, as the unit tests
 * run it), so mutating routes end at 403 and the fleet stays empty: the body parsers behind them
 * have their own target (fuzz-api-request).
 *
 * Contract checked: whatever comes back is one HTTP/1.1 response; a head that
 * http_head_parse() refuses gets exactly the status it chose, with a JSON body. */
#include <errno.h>
#include <poll.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "api/api.h"
#include "api/http.h"
#include "daemon/config.h"
#include "daemon/manager.h"
#include "shared/log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static Manager *fuzz_manager;
static DaemonConfig fuzz_cfg;
static char fuzz_dir[64];
static char fuzz_sock[128];

static void fuzz_cleanup(void) {
        char cmd[128];
        fuzz_manager = manager_free(fuzz_manager);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", fuzz_dir);
        (void) !system(cmd);
}

static Manager *fuzz_setup(void) {
        char err[512];
        if (fuzz_manager)
                return fuzz_manager;
        log_set_max_level(getenv("BALLAST_FUZZ_DEBUG") ? LOG_LEVEL_DEBUG : LOG_LEVEL_ERR);
        snprintf(fuzz_dir, sizeof(fuzz_dir), "/tmp/ballast-fuzz-http-XXXXXX");
        if (!mkdtemp(fuzz_dir))
                abort();
        snprintf(fuzz_sock, sizeof(fuzz_sock), "%s/api.sock", fuzz_dir);
        config_init_default(&fuzz_cfg);
        fuzz_cfg.api.socket = fuzz_sock;
        fuzz_cfg.state.directory = fuzz_dir;
        fuzz_cfg.pressure.psi = CONFIG_PSI_OFF;
        if (manager_new(&fuzz_cfg, &fuzz_manager, err, sizeof(err)) < 0) {
                fprintf(stderr, "fuzz-http-request: %s\n", err);
                abort();
        }
        /* The same server the daemon runs, read-only, in front of the daemon's own dispatch. */
        Manager *m = fuzz_manager;
        m->http = http_server_free(m->http);
        HttpServerConfig hc = {
                .socket_path = fuzz_sock,
                .write_gid = (gid_t) -1,
                .unix_read_only = true,
        };
        if (http_server_new(m->ev, &hc, api_handle, m, &m->http, err, sizeof(err)) < 0) {
                fprintf(stderr, "fuzz-http-request: %s\n", err);
                abort();
        }
        atexit(fuzz_cleanup);
        return m;
}

/* Reads what is there; returns false on EOF. */
static bool fuzz_read(int fd, char *buf, size_t cap, size_t *len) {
        for (;;) {
                if (*len == cap) {
                        char sink[4096];
                        ssize_t k = recv(fd, sink, sizeof(sink), MSG_DONTWAIT);
                        if (k == 0)
                                return false;
                        if (k < 0)
                                return true;
                        continue;
                }
                ssize_t k = recv(fd, buf + *len, cap - *len, MSG_DONTWAIT);
                if (k == 0)
                        return false;
                if (k < 0)
                        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
                *len += (size_t) k;
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        static char resp[1 << 16];
        size_t rlen = 0;
        if (size > 3 * HTTP_HEAD_MAX)
                return 0;
        Manager *m = fuzz_setup();

        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, sv) < 0)
                abort();
        size_t off = 0;
        while (off < size) {
                ssize_t k = send(sv[0], data + off, size - off, MSG_NOSIGNAL);
                if (k <= 0)
                        abort(); /* a socketpair's buffer holds far more than 3 * HTTP_HEAD_MAX */
                off += (size_t) k;
        }
        if (http_server_add_fd(m->http, sv[1]) < 0)
                abort();

        /* Until the server closes (it always does after its answer), or nothing more happens. */
        bool open = true;
        unsigned quiet = 0;
        for (unsigned round = 0; open && round < 200 && quiet < 2; round++) {
                /* Everything runs in this process: what can happen is ready now, so never wait. */
                int r = ev_run_once(m->ev, now_mono());
                if (r < 0)
                        abort();
                size_t before = rlen;
                open = fuzz_read(sv[0], resp, sizeof(resp), &rlen);
                quiet = r == 0 && rlen == before ? quiet + 1 : 0;
        }
        close(sv[0]);
        /* Still open (an incomplete request): let the server see the hang-up and free it. */
        for (unsigned round = 0; open && round < 3; round++)
                (void) ev_run_once(m->ev, now_mono());

        if (getenv("BALLAST_FUZZ_PRINT"))
                fprintf(stderr, "%.*s\n",
                        (int) (memchr(resp, '\r', rlen) ? (char *) memchr(resp, '\r', rlen) - resp : 0), resp);
        if (rlen > 0 && (rlen < 12 || memcmp(resp, "HTTP/1.1 ", 9) != 0))
                abort();
        HttpHead h;
        char err[256];
        size_t hlen = MIN(size, HTTP_HEAD_MAX + 1);
        if (http_head_parse((const char *) data, hlen, &h, err, sizeof(err)) < 0) {
                char want[16];
                snprintf(want, sizeof(want), "HTTP/1.1 %u ", h.status);
                if (rlen < strlen(want) || memcmp(resp, want, strlen(want)) != 0)
                        abort();
                if (!memmem(resp, rlen, "\r\nContent-Type: application/json\r\n", 34))
                        abort();
        }
        return 0;
}
