/* SPDX-License-Identifier: MIT */
/* ballastd: the host daemon. ballastd --config FILE [--check-config] */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ballast/ballast.h"
#include "daemon/config.h"
#include "daemon/manager.h"
#include "shared/log.h"
#include "shared/macro.h"

#define DEFAULT_CONFIG "/etc/ballast/ballastd.conf"

/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET ('@' = abstract namespace). */
static void notify(const char *msg) {
        const char *path = getenv("NOTIFY_SOCKET");
        if (!path || !path[0])
                return;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        size_t len = strlen(path);
        if (len >= sizeof sa.sun_path)
                return;
        memcpy(sa.sun_path, path, len);
        if (sa.sun_path[0] == '@')
                sa.sun_path[0] = '\0';
        int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return;
        if (sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *) &sa,
                   (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len)) < 0)
                log_warning("Failed to notify the service manager: %m, ignoring");
        close(fd);
}

static void usage(FILE *f) {
        fprintf(f, "Usage: ballastd [--config FILE] [--check-config]\n"
                   "\n"
                   "The ballast host daemon: senses memory pressure, reclaims memory from VMs through\n"
                   "their balloons and gives it back, and serves the HTTP API (docs/api.md).\n"
                   "\n"
                   "  -c, --config FILE   configuration (default " DEFAULT_CONFIG "; docs/config.md)\n"
                   "      --check-config  validate the configuration, print the effective one, exit\n"
                   "  -h, --help          this help\n"
                   "      --version       print the version\n");
}

int main(int argc, char **argv) {
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' },
                { "check-config", no_argument, NULL, 'C' },
                { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },
                {},
        };
        const char *path = DEFAULT_CONFIG;
        bool check = false;
        int o;
        while ((o = getopt_long(argc, argv, "c:h", opts, NULL)) >= 0) {
                switch (o) {
                case 'c':
                        path = optarg;
                        break;
                case 'C':
                        check = true;
                        break;
                case 'h':
                        usage(stdout);
                        return 0;
                case 'V':
                        printf("ballastd %s\n", ballast_version());
                        return 0;
                default:
                        usage(stderr);
                        return 2;
                }
        }
        if (optind < argc) {
                fprintf(stderr, "ballastd: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return 2;
        }
        log_set_prefix("ballastd");

        DaemonConfig cfg;
        char err[CONFIG_ERR_MAX];
        int r = config_load(path, &cfg, err, sizeof err);
        if (r < 0) {
                fprintf(stderr, "ballastd: %s\n", err);
                return 1;
        }
        if (check) {
                r = config_dump(&cfg, stdout);
                config_done(&cfg);
                if (r < 0)
                        return 1;
                fprintf(stderr, "ballastd: %s: configuration OK\n", path);
                return 0;
        }
        log_set_max_level(cfg.log.level);
        /* One fd per VM connection plus up to 512 API clients per listener: the soft limit of
         * 1024 is too low for a large fleet, and the hard limit is ours to use. */
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        log_warning("Failed to raise the open file limit: %m, ignoring");
        }

        Manager *m = NULL;
        char merr[1024];
        r = manager_new(&cfg, &m, merr, sizeof merr);
        if (r < 0) {
                log_error("Failed to start: %s", merr);
                config_done(&cfg);
                return 1;
        }
        log_info("ballastd %s ready: API on %s, scope %s%s%s, state in %s", ballast_version(), cfg.api.socket,
                 config_scope_to_string(cfg.pressure.scope), cfg.pressure.cgroup ? ":" : "",
                 cfg.pressure.cgroup ? cfg.pressure.cgroup : "", cfg.state.directory);
        notify("READY=1\nSTATUS=managing VMs");
        r = manager_run(m);
        notify("STOPPING=1");
        manager_free(m);
        config_done(&cfg);
        log_info("Stopped");
        return r < 0 ? 1 : r;
}
