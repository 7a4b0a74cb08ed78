/* SPDX-License-Identifier: MIT */
/* ballastd: the host daemon. ballastd --config FILE [--check-config] */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "ballast/ballast.h"
#include <config.h> /* the build's (meson), not daemon/config.h */
#include "daemon/config.h"
#include "daemon/manager.h"
#include "daemon/service.h"
#include "shared/log.h"
#include "shared/macro.h"

#define DEFAULT_CONFIG BALLAST_CONFIG_FILE

static void usage(FILE *f) {
        fprintf(f, "Usage: ballastd [--config FILE] [--check-config [--quiet]]\n"
                   "\n"
                   "The ballast host daemon: senses memory pressure, reclaims memory from VMs through\n"
                   "their balloons and gives it back, and serves the HTTP API (docs/api.md).\n"
                   "\n"
                   "  -c, --config FILE   configuration (default " DEFAULT_CONFIG "; docs/config.md)\n"
                   "      --check-config  validate the configuration, print the effective one, exit\n"
                   "  -q, --quiet         with --check-config: print nothing unless it is invalid\n"
                   "  -h, --help          this help\n"
                   "      --version       print the version\n"
                   "\n"
                   "SIGHUP re-reads the configuration (docs/config.md, Reload); SIGTERM exits and leaves\n"
                   "every VM where it is.\n");
}

/* Parses the command line into path, check and quiet. Returns -1 to go on, or the exit code. */
static int parse_argv(int argc, char **argv, const char **path, bool *check, bool *quiet) {
        static const struct option opts[] = {
                { "config", required_argument, NULL, 'c' }, { "check-config", no_argument, NULL, 'C' },
                { "quiet", no_argument, NULL, 'q' },        { "help", no_argument, NULL, 'h' },
                { "version", no_argument, NULL, 'V' },      {},
        };
        int o;
        while ((o = getopt_long(argc, argv, "c:qh", opts, NULL)) >= 0) {
                switch (o) {
                case 'c':
                        *path = optarg;
                        break;
                case 'C':
                        *check = true;
                        break;
                case 'q':
                        *quiet = true;
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
        if (*quiet && !*check) {
                fprintf(stderr, "ballastd: --quiet goes with --check-config\n");
                usage(stderr);
                return 2;
        }
        if (optind < argc) {
                fprintf(stderr, "ballastd: unexpected argument '%s'\n", argv[optind]);
                usage(stderr);
                return 2;
        }
        return -1;
}

/* --check-config: prints the effective configuration (unless quiet) and frees cfg. Returns the
 * exit code. */
static int check_config(DaemonConfig *cfg, const char *path, bool quiet) {
        /* Under systemd (ExecStartPre=) only a problem is worth a journal line. */
        if (quiet) {
                config_done(cfg);
                return 0;
        }
        int r = config_dump(cfg, stdout);
        config_done(cfg);
        if (r < 0)
                return 1;
        fprintf(stderr, "ballastd: %s: configuration OK\n", path);
        return 0;
}

/* One fd per VM connection plus up to 512 API clients per listener: the soft limit of 1024 is too
 * low for a large fleet, and the hard limit is ours to use. Raises the soft limit to it. */
static void raise_fd_limit(void) {
        struct rlimit rl;
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
                        log_warning_errno(errno, "Failed to raise the open file limit: %m, ignoring");
        }
}

/* Runs the daemon with cfg until it is told to stop, and frees cfg. Returns the exit code. */
static int run_daemon(DaemonConfig *cfg, const char *path) {
        Manager *m = NULL;
        char merr[1024];
        int r = manager_new(cfg, &m, merr, sizeof merr);
        if (r < 0) {
                log_error("Failed to start: %s", merr);
                config_done(cfg);
                return 1;
        }
        log_info("ballastd %s ready: API on %s, scope %s%s%s, state in %s", ballast_version(), cfg->api.socket,
                 config_scope_to_string(cfg->pressure.scope), cfg->pressure.cgroup ? ":" : "",
                 cfg->pressure.cgroup ? cfg->pressure.cgroup : "", cfg->state.directory);
        m->config_path = path;
        r = service_start(m);
        if (r < 0) {
                log_error_errno(r, "Failed to start the service manager's timer: %m");
                manager_free(m);
                config_done(cfg);
                return 1;
        }
        r = manager_run(m);
        service_stop(m);
        manager_free(m);
        config_done(cfg);
        log_info("Stopped");
        return r < 0 ? 1 : r;
}

int main(int argc, char **argv) {
        const char *path = DEFAULT_CONFIG;
        bool check = false, quiet = false;
        int r = parse_argv(argc, argv, &path, &check, &quiet);
        if (r >= 0)
                return r;
        log_set_prefix("ballastd");
        (void) service_log_to_journal();
        /* Big answers (the VM list, /metrics, history: 0.5-0.7 MB at 1,000 VMs) in mappings of their
         * own, given back when freed. glibc otherwise raises this threshold after the first such
         * free and serves the next ones from the heap, whose top is then not trimmed: the soak's
         * RSS went up and down by 10 MiB with the answers. Setting it turns that adjustment off. */
        (void) mallopt(M_MMAP_THRESHOLD, 128 * 1024);

        DaemonConfig cfg;
        char err[CONFIG_ERR_MAX];
        r = config_load(path, &cfg, err, sizeof err);
        if (r < 0) {
                /* "ballastd: FILE:LINE: reason" on a terminal; an error entry in the journal. */
                log_error("%s", err);
                return 1;
        }
        if (check)
                return check_config(&cfg, path, quiet);
        log_set_max_level(cfg.log.level);
        raise_fd_limit();
        return run_daemon(&cfg, path);
}
