/* SPDX-License-Identifier: MIT */
#include "daemon/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <ini.h>

#include "shared/log.h"
#include "shared/macro.h"
#include "shared/strutil.h"

/* The reader below hands inih one line at a time, already stripped of indentation, comments and
 * the line ending, and never more than inih's fixed buffer holds. */
_Static_assert(CONFIG_LINE_MAX + 2 <= INI_MAX_LINE, "a line and its \"\\n\\0\" must fit inih's buffer");

#define USEC_PER_MIN  (60 * USEC_PER_SEC)
#define USEC_PER_HOUR (60 * USEC_PER_MIN)

typedef enum ConfigSection {
        SECTION_API,
        SECTION_STATE,
        SECTION_PRESSURE,
        SECTION_POLICY,
        SECTION_DRIVER,
        SECTION_PARK,
        SECTION_LOG,
        _SECTION_MAX,
        _SECTION_INVALID = -EINVAL,
} ConfigSection;

static const char *const section_names[_SECTION_MAX] = {
        [SECTION_API] = "api",       [SECTION_STATE] = "state",   [SECTION_PRESSURE] = "pressure",
        [SECTION_POLICY] = "policy", [SECTION_DRIVER] = "driver", [SECTION_PARK] = "park",
        [SECTION_LOG] = "log",
};

typedef enum KeyType {
        KEY_PATH,        /* absolute path (const char *) */
        KEY_SOCKET_PATH, /* absolute path that fits sun_path */
        KEY_OPT_PATH,    /* absolute path, or empty for none (NULL) */
        KEY_LISTEN,      /* loopback address and port, or empty for none */
        KEY_GROUP,       /* group name or gid, or empty for none */
        KEY_U64,         /* plain decimal number */
        KEY_SIZE,        /* bytes */
        KEY_RATE,        /* bytes per second: "512M" or "512M/s" */
        KEY_DURATION,    /* usec_t */
        KEY_SECONDS,     /* usec_t, a whole number of seconds */
        KEY_PERCENT,     /* uint32_t permyriad */
        KEY_SCOPE,       /* "host" or "cgroup:/path" */
        KEY_PSI,         /* ConfigPsi */
        KEY_LOG_LEVEL,   /* LOG_LEVEL_* */
} KeyType;

typedef struct ConfigKey {
        ConfigSection section;
        const char *name;
        KeyType type;
        size_t offset;     /* of the field in DaemonConfig */
        uint64_t min, max; /* accepted range, in the field's unit (numbers only) */
} ConfigKey;

#define K(sec, nm, ty, field, lo, hi)                                                                                  \
        {                                                                                                              \
                .section = SECTION_##sec, .name = nm, .type = ty, .offset = offsetof(DaemonConfig, field),             \
                .min = (lo), .max = (hi)                                                                               \
        }

/* Every key, in the order config_dump() prints them. Defaults are in config_init_default(). */
static const ConfigKey config_keys[] = {
        K(API, "socket", KEY_SOCKET_PATH, api.socket, 0, 0),
        K(API, "listen", KEY_LISTEN, api.listen, 0, 0),
        K(API, "tokens_file", KEY_OPT_PATH, api.tokens_file, 0, 0),
        K(API, "write_group", KEY_GROUP, api.write_group, 0, 0),
        K(API, "max_connections", KEY_U64, api.max_connections, 4, 65536),
        K(API, "max_connections_per_peer", KEY_U64, api.max_connections_per_peer, 1, 65536),
        K(API, "reserved_connections", KEY_U64, api.reserved_connections, 1, 32768),
        K(API, "max_unauthenticated", KEY_U64, api.max_unauthenticated, 1, 65536),
        K(API, "header_timeout", KEY_DURATION, api.header_timeout, 100 * USEC_PER_MSEC, 10 * USEC_PER_MIN),
        K(API, "body_timeout", KEY_DURATION, api.body_timeout, 100 * USEC_PER_MSEC, 10 * USEC_PER_MIN),
        /* libmicrohttpd counts its timeout in whole seconds (rounded up). */
        K(API, "idle_timeout", KEY_DURATION, api.idle_timeout, USEC_PER_SEC, USEC_PER_HOUR),

        K(STATE, "directory", KEY_PATH, state.directory, 0, 0),
        K(STATE, "journal_max", KEY_U64, state.journal_max, 100, 1000000),

        K(PRESSURE, "scope", KEY_SCOPE, pressure.scope, 0, 0),
        K(PRESSURE, "sample_interval", KEY_DURATION, pressure.sample_interval, 10 * USEC_PER_MSEC, 10 * USEC_PER_SEC),
        K(PRESSURE, "psi", KEY_PSI, pressure.psi, 0, 0),
        /* The kernel's limits for a PSI trigger: a window of 0.5–10 s, a stall within it. */
        K(PRESSURE, "psi_trigger_stall", KEY_DURATION, pressure.psi_trigger_stall, USEC_PER_MSEC, 10 * USEC_PER_SEC),
        K(PRESSURE, "psi_trigger_window", KEY_DURATION, pressure.psi_trigger_window, 500 * USEC_PER_MSEC,
          10 * USEC_PER_SEC),
        K(PRESSURE, "proc_root", KEY_PATH, pressure.proc_root, 0, 0),

        /* Zero rates, thresholds and ages pass here: plan_config_validate() names them. */
        K(POLICY, "low_watermark", KEY_PERCENT, policy.low_pmy, 0, PLAN_PERMYRIAD),
        K(POLICY, "high_watermark", KEY_PERCENT, policy.high_pmy, 0, PLAN_PERMYRIAD),
        K(POLICY, "critical_watermark", KEY_PERCENT, policy.critical_pmy, 0, PLAN_PERMYRIAD),
        K(POLICY, "psi_some_threshold", KEY_PERCENT, policy.psi_some_pmy, 0, PLAN_PERMYRIAD),
        K(POLICY, "psi_full_threshold", KEY_PERCENT, policy.psi_full_pmy, 0, PLAN_PERMYRIAD),
        K(POLICY, "dead_band", KEY_SIZE, policy.dead_band, 0, PLAN_BYTES_MAX),
        K(POLICY, "rate_limit", KEY_RATE, policy.rate_take, 0, PLAN_BYTES_MAX),
        K(POLICY, "give_rate", KEY_RATE, policy.rate_give, 0, PLAN_BYTES_MAX),
        K(POLICY, "dwell", KEY_DURATION, policy.dwell, 0, USEC_PER_HOUR),
        K(POLICY, "floor_fraction", KEY_PERCENT, policy.floor_pmy, 0, PLAN_PERMYRIAD),
        K(POLICY, "hard_floor_fraction", KEY_PERCENT, policy.hard_floor_pmy, 0, PLAN_PERMYRIAD),
        K(POLICY, "guest_margin", KEY_SIZE, policy.guest_margin, 0, PLAN_BYTES_MAX),
        K(POLICY, "sample_max_age", KEY_DURATION, policy.sample_max_age, 0, USEC_PER_HOUR),

        K(DRIVER, "op_timeout", KEY_DURATION, driver.op_timeout, 10 * USEC_PER_MSEC, 10 * USEC_PER_MIN),
        K(DRIVER, "stall_min_rate", KEY_RATE, driver.stall_min_rate, 1, PLAN_BYTES_MAX),
        K(DRIVER, "stall_window", KEY_DURATION, driver.stall_window, 100 * USEC_PER_MSEC, 10 * USEC_PER_MIN),
        K(DRIVER, "stall_backoff", KEY_DURATION, driver.stall_backoff, 0, USEC_PER_HOUR),
        K(DRIVER, "stats_period", KEY_SECONDS, driver.stats_period, USEC_PER_SEC, USEC_PER_HOUR),
        /* QEMU truncates targets to pages: a tolerance below a page could never be met. */
        K(DRIVER, "tolerance", KEY_SIZE, driver.tolerance, 4 * KiB, GiB),

        K(PARK, "size", KEY_SIZE, park.size, MiB, PLAN_BYTES_MAX),
        K(PARK, "protect_for", KEY_DURATION, park.protect_for, 0, 24 * USEC_PER_HOUR),

        K(LOG, "level", KEY_LOG_LEVEL, log.level, 0, 0),
};
#undef K

#define N_KEYS ELEMENTSOF(config_keys)

void config_init_default(DaemonConfig *c) {
        *c = (DaemonConfig) {
                .api = {
                        .socket = "/run/ballast/api.sock",
                        .write_gid = (gid_t) -1,
                        /* The same as HTTP_*_DEFAULT in src/api/http.h. */
                        .max_connections = 512,
                        .max_connections_per_peer = 32,
                        .reserved_connections = 32,
                        .max_unauthenticated = 32,
                        .header_timeout = 5 * USEC_PER_SEC,
                        .body_timeout = 10 * USEC_PER_SEC,
                        .idle_timeout = 10 * USEC_PER_SEC,
                },
                .state = {
                        .directory = "/var/lib/ballast",
                        .journal_max = 10000,
                },
                .pressure = {
                        .scope = CONFIG_SCOPE_HOST,
                        .sample_interval = 250 * USEC_PER_MSEC,
                        .psi = CONFIG_PSI_AUTO,
                        .psi_trigger_stall = 100 * USEC_PER_MSEC,
                        .psi_trigger_window = USEC_PER_SEC,
                        .proc_root = "/proc",
                },
                .driver = {
                        .op_timeout = 5 * USEC_PER_SEC,
                        .stall_min_rate = 16 * MiB,
                        .stall_window = 3 * USEC_PER_SEC,
                        .stall_backoff = 30 * USEC_PER_SEC,
                        .stats_period = 2 * USEC_PER_SEC,
                        .tolerance = 16 * MiB,
                },
                .park = {
                        .size = 128 * MiB,
                        .protect_for = 30 * USEC_PER_SEC,
                },
                .log = {
                        .level = LOG_LEVEL_INFO,
                },
        };
        plan_config_default(&c->policy);
}

DaemonConfig *config_done(DaemonConfig *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_owned_ && i < CONFIG_STRINGS_MAX; i++)
                free(c->owned_[i]);
        config_init_default(c);
        return NULL;
}

static const char *const scope_names[_CONFIG_SCOPE_MAX] = {
        [CONFIG_SCOPE_HOST] = "host",
        [CONFIG_SCOPE_CGROUP] = "cgroup",
};

static const char *const psi_names[_CONFIG_PSI_MAX] = {
        [CONFIG_PSI_AUTO] = "auto",
        [CONFIG_PSI_ON] = "on",
        [CONFIG_PSI_OFF] = "off",
};

static const struct {
        const char *name;
        int level;
} log_levels[] = {
        { "debug", LOG_LEVEL_DEBUG },     { "info", LOG_LEVEL_INFO }, { "notice", LOG_LEVEL_NOTICE },
        { "warning", LOG_LEVEL_WARNING }, { "error", LOG_LEVEL_ERR },
};

const char *config_scope_to_string(ConfigScope s) {
        return s >= 0 && s < _CONFIG_SCOPE_MAX ? scope_names[s] : NULL;
}

ConfigScope config_scope_from_string(const char *s) {
        for (int i = 0; s && i < _CONFIG_SCOPE_MAX; i++)
                if (strcmp(s, scope_names[i]) == 0)
                        return (ConfigScope) i;
        return _CONFIG_SCOPE_INVALID;
}

const char *config_psi_to_string(ConfigPsi p) {
        return p >= 0 && p < _CONFIG_PSI_MAX ? psi_names[p] : NULL;
}

ConfigPsi config_psi_from_string(const char *s) {
        for (int i = 0; s && i < _CONFIG_PSI_MAX; i++)
                if (strcmp(s, psi_names[i]) == 0)
                        return (ConfigPsi) i;
        return _CONFIG_PSI_INVALID;
}

const char *config_log_level_to_string(int level) {
        for (size_t i = 0; i < ELEMENTSOF(log_levels); i++)
                if (log_levels[i].level == level)
                        return log_levels[i].name;
        return NULL;
}

int config_log_level_from_string(const char *s) {
        for (size_t i = 0; s && i < ELEMENTSOF(log_levels); i++)
                if (strcmp(s, log_levels[i].name) == 0)
                        return log_levels[i].level;
        return -EINVAL;
}

int config_parse_percent(const char *s, uint32_t *ret_pmy) {
        if (!s || !isdigit((unsigned char) s[0]))
                return -EINVAL;

        const char *p = s;
        uint32_t whole = 0;
        bool big = false; /* keep scanning for garbage: "1000x" is garbage, not out of range */
        for (; isdigit((unsigned char) *p); p++) {
                whole = whole * 10 + (uint32_t) (*p - '0');
                if (whole > 100) {
                        big = true;
                        whole = 101;
                }
        }
        uint32_t frac = 0;
        unsigned decimals = 0;
        if (*p == '.') {
                p++;
                if (!isdigit((unsigned char) *p))
                        return -EINVAL;
                for (; isdigit((unsigned char) *p); p++) {
                        if (decimals < 2)
                                frac = frac * 10 + (uint32_t) (*p - '0');
                        decimals++;
                }
        }
        if (*p == '%')
                p++;
        if (*p)
                return -EINVAL;
        if (decimals > 2)
                return -EDOM;
        if (decimals == 1)
                frac *= 10;
        uint32_t v = whole * 100 + frac;
        if (big || v > PLAN_PERMYRIAD)
                return -ERANGE;
        *ret_pmy = v;
        return 0;
}

/* Canonical forms, which the parsers read back to the same value. */

static const char *format_bytes(char *buf, size_t len, uint64_t v) {
        static const struct {
                const char *suffix;
                uint64_t factor;
        } units[] = { { "T", TiB }, { "G", GiB }, { "M", MiB }, { "K", KiB } };
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (v > 0 && v % units[i].factor == 0) {
                        snprintf(buf, len, "%" PRIu64 "%s", v / units[i].factor, units[i].suffix);
                        return buf;
                }
        snprintf(buf, len, "%" PRIu64, v);
        return buf;
}

static const char *format_usec(char *buf, size_t len, usec_t v) {
        static const struct {
                const char *suffix;
                usec_t factor;
        } units[] = { { "h", USEC_PER_HOUR }, { "min", USEC_PER_MIN }, { "s", USEC_PER_SEC }, { "ms", USEC_PER_MSEC } };
        if (v == 0) {
                snprintf(buf, len, "0s");
                return buf;
        }
        for (size_t i = 0; i < ELEMENTSOF(units); i++)
                if (v % units[i].factor == 0) {
                        snprintf(buf, len, "%" PRIu64 "%s", v / units[i].factor, units[i].suffix);
                        return buf;
                }
        snprintf(buf, len, "%" PRIu64 "us", v);
        return buf;
}

static const char *format_percent(char *buf, size_t len, uint32_t pmy) {
        uint32_t whole = pmy / 100, frac = pmy % 100;
        if (frac == 0)
                snprintf(buf, len, "%" PRIu32 "%%", whole);
        else if (frac % 10 == 0)
                snprintf(buf, len, "%" PRIu32 ".%" PRIu32 "%%", whole, frac / 10);
        else
                snprintf(buf, len, "%" PRIu32 ".%02" PRIu32 "%%", whole, frac);
        return buf;
}

/* A number of the key's type, as the file would spell it (for range messages). */
static const char *format_number(char *buf, size_t len, const ConfigKey *k, uint64_t v) {
        switch (k->type) {
        case KEY_SIZE:
                return format_bytes(buf, len, v);
        case KEY_RATE: {
                char tmp[32];
                snprintf(buf, len, "%s/s", format_bytes(tmp, sizeof(tmp), v));
                return buf;
        }
        case KEY_DURATION:
        case KEY_SECONDS:
                return format_usec(buf, len, v);
        case KEY_PERCENT:
                return format_percent(buf, len, (uint32_t) v);
        default:
                snprintf(buf, len, "%" PRIu64, v);
                return buf;
        }
}

static void *key_field(DaemonConfig *c, const ConfigKey *k) {
        return (char *) c + k->offset;
}

static const void *key_field_const(const DaemonConfig *c, const ConfigKey *k) {
        return (const char *) c + k->offset;
}

static uint64_t key_number(const DaemonConfig *c, const ConfigKey *k) {
        if (k->type == KEY_PERCENT)
                return *(const uint32_t *) key_field_const(c, k);
        return *(const uint64_t *) key_field_const(c, k);
}

/* The value of a key as config_dump() prints it. */
static const char *format_key(char *buf, size_t len, const DaemonConfig *c, const ConfigKey *k) {
        const char *s;
        switch (k->type) {
        case KEY_PATH:
        case KEY_SOCKET_PATH:
        case KEY_OPT_PATH:
        case KEY_LISTEN:
                s = *(const char *const *) key_field_const(c, k);
                snprintf(buf, len, "%s", s ? s : "");
                return buf;
        case KEY_GROUP:
                if (!c->api.write_group)
                        snprintf(buf, len, "%s", "");
                else if (parse_u64(c->api.write_group, &(uint64_t){ 0 }) == 0)
                        snprintf(buf, len, "%s", c->api.write_group);
                else /* the resolved gid, as a comment, for --check-config */
                        snprintf(buf, len, "%s ; gid %lu", c->api.write_group, (unsigned long) c->api.write_gid);
                return buf;
        case KEY_SCOPE:
                if (c->pressure.scope == CONFIG_SCOPE_CGROUP)
                        snprintf(buf, len, "cgroup:%s", c->pressure.cgroup);
                else
                        snprintf(buf, len, "%s", "host");
                return buf;
        case KEY_PSI:
                s = config_psi_to_string(c->pressure.psi);
                snprintf(buf, len, "%s", s ? s : "?");
                return buf;
        case KEY_LOG_LEVEL:
                s = config_log_level_to_string(c->log.level);
                snprintf(buf, len, "%s", s ? s : "?");
                return buf;
        default:
                return format_number(buf, len, k, key_number(c, k));
        }
}

int config_dump(const DaemonConfig *c, FILE *f) {
        char buf[CONFIG_ERR_MAX];
        int last = -1;
        for (size_t i = 0; i < N_KEYS; i++) {
                const ConfigKey *k = config_keys + i;
                if ((int) k->section != last) {
                        fprintf(f, "%s[%s]\n", last < 0 ? "" : "\n", section_names[k->section]);
                        last = (int) k->section;
                }
                format_key(buf, sizeof(buf), c, k);
                if (buf[0])
                        fprintf(f, "%s = %s\n", k->name, buf);
                else
                        fprintf(f, "%s =\n", k->name);
        }
        if (fflush(f) != 0 || ferror(f))
                return -EIO;
        return 0;
}

int config_diff(const DaemonConfig *a, const DaemonConfig *b, config_diff_cb cb, void *userdata) {
        char va[CONFIG_ERR_MAX], vb[CONFIG_ERR_MAX];
        int n = 0;
        for (size_t i = 0; i < N_KEYS; i++) {
                const ConfigKey *k = config_keys + i;
                format_key(va, sizeof(va), a, k);
                format_key(vb, sizeof(vb), b, k);
                if (strcmp(va, vb) == 0)
                        continue;
                n++;
                if (cb)
                        cb(section_names[k->section], k->name, va, vb, userdata);
        }
        return n;
}

typedef struct ConfigParser {
        const char *filename;
        const char *text;
        size_t len, pos;
        unsigned lineno; /* of the line last handed to inih */
        int section;     /* the current section, -1 before the first header */
        unsigned section_line[_SECTION_MAX];
        unsigned key_line[N_KEYS]; /* where each key was set, 0 if not */
        DaemonConfig *c;
        int error; /* the first error (negative errno), 0 if none */
        char msg[CONFIG_ERR_MAX];
} ConfigParser;

_printf_(3, 0) static int parser_vfail(ConfigParser *p, unsigned line, const char *fmt, va_list ap) {
        if (p->error)
                return p->error;
        int n = line > 0 ? snprintf(p->msg, sizeof(p->msg), "%s:%u: ", p->filename, line)
                         : snprintf(p->msg, sizeof(p->msg), "%s: ", p->filename);
        if (n > 0 && (size_t) n < sizeof(p->msg))
                vsnprintf(p->msg + n, sizeof(p->msg) - (size_t) n, fmt, ap);
        p->error = -EINVAL;
        return p->error;
}

_printf_(3, 4) static int parser_fail(ConfigParser *p, unsigned line, const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        int r = parser_vfail(p, line, fmt, ap);
        va_end(ap);
        return r;
}

/* "FILE:LINE: [section] key: reason" */
_printf_(4, 5) static int key_fail(ConfigParser *p, unsigned line, const ConfigKey *k, const char *fmt, ...) {
        char reason[CONFIG_ERR_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(reason, sizeof(reason), fmt, ap);
        va_end(ap);
        return parser_fail(p, line, "[%s] %s: %s", section_names[k->section], k->name, reason);
}

/* Out of memory (or another system error) while handling a key: the error is r, not -EINVAL. */
static int key_fail_errno(ConfigParser *p, unsigned line, const ConfigKey *k, int r) {
        if (p->error)
                return p->error;
        key_fail(p, line, k, "%s", strerror(-r));
        return (p->error = r);
}

static int config_keep_string(DaemonConfig *c, const char *s, size_t n, const char **ret) {
        if (c->n_owned_ >= CONFIG_STRINGS_MAX)
                return -ENOBUFS; /* each string key is set once: cannot happen */
        char *copy = strndup(s, n);
        if (!copy)
                return -ENOMEM;
        c->owned_[c->n_owned_++] = copy;
        *ret = copy;
        return 0;
}

static int parse_listen(const char *s, struct sockaddr_storage *ret_addr, socklen_t *ret_len, char *norm,
                        size_t normlen) {
        char host[INET6_ADDRSTRLEN + 1];
        const char *port_s;
        bool v6 = s[0] == '[';

        if (v6) {
                const char *rb = strchr(s, ']');
                if (!rb || rb[1] != ':' || (size_t) (rb - s - 1) >= sizeof(host))
                        return -EINVAL;
                memcpy(host, s + 1, (size_t) (rb - s - 1));
                host[rb - s - 1] = '\0';
                port_s = rb + 2;
        } else {
                const char *colon = strrchr(s, ':');
                if (!colon || (size_t) (colon - s) >= sizeof(host))
                        return -EINVAL;
                memcpy(host, s, (size_t) (colon - s));
                host[colon - s] = '\0';
                port_s = colon + 1;
        }

        union {
                struct in_addr v4;
                struct in6_addr v6;
        } a;
        if (inet_pton(v6 ? AF_INET6 : AF_INET, host, &a) != 1)
                return -EINVAL;

        uint64_t port;
        if (parse_u64(port_s, &port) < 0 || port == 0 || port > 65535)
                return -ERANGE;

        /* Only the loopback device: TCP clients elsewhere would need TLS, which ballastd does not do. */
        if (v6 ? !IN6_IS_ADDR_LOOPBACK(&a.v6) : (ntohl(a.v4.s_addr) >> 24) != 127)
                return -EADDRNOTAVAIL;

        struct sockaddr_storage ss = { 0 };
        socklen_t len;
        if (v6) {
                struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *) &ss;
                sin6->sin6_family = AF_INET6;
                sin6->sin6_port = htons((uint16_t) port);
                sin6->sin6_addr = a.v6;
                len = sizeof(*sin6);
        } else {
                struct sockaddr_in *sin = (struct sockaddr_in *) &ss;
                sin->sin_family = AF_INET;
                sin->sin_port = htons((uint16_t) port);
                sin->sin_addr = a.v4;
                len = sizeof(*sin);
        }
        char text[INET6_ADDRSTRLEN];
        if (!inet_ntop(v6 ? AF_INET6 : AF_INET, &a, text, sizeof(text)))
                return -EINVAL;
        snprintf(norm, normlen, v6 ? "[%s]:%" PRIu64 : "%s:%" PRIu64, text, port);
        *ret_addr = ss;
        *ret_len = len;
        return 0;
}

/* Returns 0 and the gid, -ESRCH when there is no such group, or another negative errno. */
static int resolve_group(const char *name, gid_t *ret) {
        uint64_t n;
        if (parse_u64(name, &n) == 0) {
                if (n >= (uint64_t) (gid_t) -1)
                        return -ERANGE;
                *ret = (gid_t) n;
                return 0;
        }

        long suggested = sysconf(_SC_GETGR_R_SIZE_MAX);
        size_t size = suggested > 0 ? (size_t) suggested : 4096;
        for (;;) {
                _cleanup_free_ char *buf = malloc(size);
                if (!buf)
                        return -ENOMEM;
                struct group grp, *result = NULL;
                int r = getgrnam_r(name, &grp, buf, size, &result);
                if (r == ERANGE && size < CONFIG_FILE_MAX) {
                        size *= 2;
                        continue;
                }
                if (r != 0)
                        return -r;
                if (!result)
                        return -ESRCH;
                *ret = result->gr_gid;
                return 0;
        }
}

static int parse_number(ConfigParser *p, unsigned line, const ConfigKey *k, const char *value, uint64_t *ret) {
        char lo[48], hi[48];
        uint64_t v = 0;
        int r;

        switch (k->type) {
        case KEY_U64:
                r = parse_u64(value, &v);
                if (r == -EINVAL)
                        return key_fail(p, line, k, "\"%s\" is not a whole number", value);
                break;
        case KEY_SIZE:
                r = parse_size(value, &v);
                if (r == -EINVAL)
                        return key_fail(p, line, k, "\"%s\" is not a size such as 4096, 64K, 32M or 1G", value);
                break;
        case KEY_RATE: {
                /* "512M" and "512M/s" are both bytes per second. */
                size_t n = strlen(value);
                char tmp[CONFIG_LINE_MAX + 1];
                if (n >= 2 && strcmp(value + n - 2, "/s") == 0)
                        n -= 2;
                if (n >= sizeof(tmp))
                        n = sizeof(tmp) - 1;
                memcpy(tmp, value, n);
                tmp[n] = '\0';
                r = parse_size(tmp, &v);
                if (r == -EINVAL)
                        return key_fail(p, line, k, "\"%s\" is not a rate such as 16M or 512M/s (bytes per second)",
                                        value);
                break;
        }
        case KEY_DURATION:
        case KEY_SECONDS:
                r = parse_duration(value, &v);
                if (r == -EINVAL)
                        return key_fail(p, line, k, "\"%s\" is not a duration such as 250ms, 5s, 2min or 1h", value);
                if (r == 0 && k->type == KEY_SECONDS && v % USEC_PER_SEC != 0)
                        return key_fail(p, line, k,
                                        "\"%s\" is not a whole number of seconds (hypervisors poll guest statistics "
                                        "in seconds)",
                                        value);
                break;
        case KEY_PERCENT: {
                uint32_t pmy;
                r = config_parse_percent(value, &pmy);
                if (r == -EDOM)
                        return key_fail(p, line, k, "\"%s\" has more than two decimals", value);
                if (r < 0)
                        return key_fail(p, line, k, "\"%s\" is not a percentage between 0 and 100", value);
                v = pmy;
                break;
        }
        default:
                return -EINVAL;
        }
        if (r == -ERANGE || (r == 0 && (v < k->min || v > k->max)))
                return key_fail(p, line, k, "\"%s\" is out of range (%s..%s)", value,
                                format_number(lo, sizeof(lo), k, k->min), format_number(hi, sizeof(hi), k, k->max));
        if (r < 0)
                return key_fail(p, line, k, "\"%s\" is not valid", value);
        *ret = v;
        return 0;
}

static int parse_path(ConfigParser *p, unsigned line, const ConfigKey *k, const char *value, const char **ret) {
        if (value[0] != '/')
                return key_fail(p, line, k, "\"%s\" is not an absolute path", value);
        if (k->type == KEY_SOCKET_PATH && strlen(value) >= sizeof(((struct sockaddr_un *) NULL)->sun_path))
                return key_fail(p, line, k, "\"%s\" is too long for a Unix socket (at most %zu bytes)", value,
                                sizeof(((struct sockaddr_un *) NULL)->sun_path) - 1);
        int r = config_keep_string(p->c, value, strlen(value), ret);
        if (r < 0)
                return key_fail_errno(p, line, k, r);
        return 0;
}

static int parse_value(ConfigParser *p, unsigned line, const ConfigKey *k, const char *value) {
        DaemonConfig *c = p->c;
        void *field = key_field(c, k);
        int r;

        switch (k->type) {
        case KEY_PATH:
        case KEY_SOCKET_PATH:
        case KEY_OPT_PATH:
                return parse_path(p, line, k, value, field);

        case KEY_LISTEN: {
                char norm[INET6_ADDRSTRLEN + 16];
                r = parse_listen(value, &c->api.listen_addr, &c->api.listen_addr_len, norm, sizeof(norm));
                if (r == -EADDRNOTAVAIL)
                        return key_fail(p, line, k,
                                        "\"%s\" is not a loopback address (TCP is served on 127.0.0.1 or [::1] only)",
                                        value);
                if (r == -ERANGE)
                        return key_fail(p, line, k, "\"%s\": the port must be between 1 and 65535", value);
                if (r < 0)
                        return key_fail(p, line, k,
                                        "\"%s\" is not an address and port such as 127.0.0.1:9464 or "
                                        "[::1]:9464",
                                        value);
                r = config_keep_string(c, norm, strlen(norm), &c->api.listen);
                if (r < 0)
                        return key_fail_errno(p, line, k, r);
                return 0;
        }

        case KEY_GROUP: {
                gid_t gid = 0;
                r = resolve_group(value, &gid);
                if (r == -ESRCH)
                        return key_fail(p, line, k, "no such group \"%s\"", value);
                if (r == -ERANGE)
                        return key_fail(p, line, k, "\"%s\" is not a valid gid", value);
                if (r < 0)
                        return key_fail(p, line, k, "cannot look up group \"%s\": %s", value, strerror(-r));
                r = config_keep_string(c, value, strlen(value), &c->api.write_group);
                if (r < 0)
                        return key_fail_errno(p, line, k, r);
                c->api.write_gid = gid;
                return 0;
        }

        case KEY_SCOPE:
                if (strcmp(value, "host") == 0) {
                        c->pressure.scope = CONFIG_SCOPE_HOST;
                        return 0;
                }
                if (strncmp(value, "cgroup:", 7) != 0 || value[7] != '/')
                        return key_fail(p, line, k, "\"%s\" is not \"host\" or \"cgroup:\" and an absolute path",
                                        value);
                r = config_keep_string(c, value + 7, strlen(value + 7), &c->pressure.cgroup);
                if (r < 0)
                        return key_fail_errno(p, line, k, r);
                c->pressure.scope = CONFIG_SCOPE_CGROUP;
                return 0;

        case KEY_PSI: {
                ConfigPsi psi = config_psi_from_string(value);
                if (psi < 0)
                        return key_fail(p, line, k, "\"%s\" is not one of auto, on, off", value);
                c->pressure.psi = psi;
                return 0;
        }

        case KEY_LOG_LEVEL:
                r = config_log_level_from_string(value);
                if (r < 0)
                        return key_fail(p, line, k, "\"%s\" is not one of debug, info, notice, warning, error", value);
                c->log.level = r;
                return 0;

        default: {
                uint64_t v = 0;
                r = parse_number(p, line, k, value, &v);
                if (r < 0)
                        return r;
                if (k->type == KEY_PERCENT)
                        *(uint32_t *) field = (uint32_t) v;
                else
                        *(uint64_t *) field = v;
                return 0;
        }
        }
}

static int config_handle(ConfigParser *p, const char *name, const char *value) {
        unsigned line = p->lineno;

        if (p->section < 0)
                return parser_fail(p, line, "%s: key outside any section", name);
        if (!name[0])
                return parser_fail(p, line, "[%s]: missing key name before \"=\"", section_names[p->section]);

        size_t idx = 0;
        while (idx < N_KEYS &&
               ((int) config_keys[idx].section != p->section || strcmp(config_keys[idx].name, name) != 0))
                idx++;
        if (idx == N_KEYS)
                return parser_fail(p, line, "[%s] %s: unknown key", section_names[p->section], name);
        const ConfigKey *k = config_keys + idx;
        if (p->key_line[idx] > 0)
                return key_fail(p, line, k, "duplicate key (first set on line %u)", p->key_line[idx]);
        p->key_line[idx] = line;

        if (!value[0]) {
                /* Optional keys may be spelled out empty, as config_dump() prints them. */
                if (k->type == KEY_OPT_PATH || k->type == KEY_LISTEN || k->type == KEY_GROUP)
                        return 0;
                return key_fail(p, line, k, "missing value");
        }
        if (value[0] == '"' || value[0] == '\'')
                return key_fail(p, line, k, "%s: values are written without quotes", value);
        return parse_value(p, line, k, value);
}

/* inih's callback, for each "key = value": nonzero to go on. */
static int config_handler(void *userdata, const char *section, const char *name, const char *value) {
        ConfigParser *p = userdata;
        (void) section; /* the reader tracks sections itself, with their lines */
        if (p->error)
                return 0;
        return config_handle(p, name, value) >= 0;
}

/* Is this (trimmed, non-comment, non-section) line "key = value" to inih? Mirrors its search for
 * the first '=' or ':' that comes before an inline comment (a ';' after a blank). */
static bool line_has_separator(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '=' || s[i] == ':')
                        return true;
                if (s[i] == ';' && i > 0 && (s[i - 1] == ' ' || s[i - 1] == '\t'))
                        return false;
        }
        return false;
}

static int reader_section(ConfigParser *p, const char *s, size_t n, char *buf, int num) {
        const char *rb = memchr(s, ']', n);
        if (!rb)
                return parser_fail(p, p->lineno, "syntax error: \"%.*s\" has no closing \"]\"", (int) MIN(n, 64), s);
        for (const char *t = rb + 1; t < s + n && *t != ';' && *t != '#'; t++)
                if (*t != ' ' && *t != '\t')
                        return parser_fail(p, p->lineno, "syntax error: unexpected text after \"%.*s\"",
                                           (int) MIN(rb - s + 1, 64), s);
        const char *name = s + 1;
        size_t nl = (size_t) (rb - name);
        while (nl > 0 && (*name == ' ' || *name == '\t'))
                name++, nl--;
        while (nl > 0 && (name[nl - 1] == ' ' || name[nl - 1] == '\t'))
                nl--;

        int sec = -1;
        for (int i = 0; i < _SECTION_MAX; i++)
                if (strlen(section_names[i]) == nl && memcmp(section_names[i], name, nl) == 0)
                        sec = i;
        if (sec < 0)
                return parser_fail(
                        p, p->lineno,
                        "[%.*s]: unknown section (sections: api, state, pressure, policy, driver, park, log)",
                        (int) MIN(nl, 64), name);
        if (p->section_line[sec] > 0)
                return parser_fail(p, p->lineno, "[%s]: duplicate section (first on line %u)", section_names[sec],
                                   p->section_line[sec]);
        p->section_line[sec] = p->lineno;
        p->section = sec;
        snprintf(buf, (size_t) num, "[%s]\n", section_names[sec]);
        return 0;
}

/* inih's fgets: hands over one physical line at a time, and stops at the first error. */
static char *config_reader(char *buf, int num, void *userdata) {
        ConfigParser *p = userdata;

        if (p->error || p->pos >= p->len)
                return NULL;
        if (num < 3) {
                parser_fail(p, p->lineno + 1, "inih's line buffer is too small (%d bytes)", num);
                return NULL;
        }

        const char *s = p->text + p->pos;
        size_t avail = p->len - p->pos;
        const char *nl = memchr(s, '\n', avail);
        size_t n = nl ? (size_t) (nl - s) : avail;
        p->pos += n + (nl ? 1 : 0);
        p->lineno++;

        if (n > 0 && s[n - 1] == '\r')
                n--;
        if (p->lineno == 1 && n >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0) /* UTF-8 byte order mark */
                s += 3, n -= 3;
        for (size_t i = 0; i < n; i++) {
                unsigned char ch = (unsigned char) s[i];
                if (ch == '\r') {
                        parser_fail(p, p->lineno, "carriage return inside a line (line endings are LF or CRLF)");
                        return NULL;
                }
                if ((ch < 0x20 && ch != '\t') || ch == 0x7f) {
                        parser_fail(p, p->lineno, "binary data (byte 0x%02x): not a text file", ch);
                        return NULL;
                }
        }
        while (n > 0 && (*s == ' ' || *s == '\t'))
                s++, n--;
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                n--;

        /* Blank lines and comments are never handed to inih, so they may be of any length. */
        if (n == 0 || s[0] == ';' || s[0] == '#') {
                memcpy(buf, "\n", 2);
                return buf;
        }
        if (n > CONFIG_LINE_MAX || n + 2 > (size_t) num) {
                parser_fail(p, p->lineno, "line too long (more than %d bytes)", MIN(CONFIG_LINE_MAX, num - 2));
                return NULL;
        }
        if (s[0] == '[') {
                if (reader_section(p, s, n, buf, num) < 0)
                        return NULL;
                return buf;
        }
        if (!line_has_separator(s, n)) {
                parser_fail(p, p->lineno, "syntax error: \"%.*s\" is not \"key = value\", \"[section]\" or a comment",
                            (int) MIN(n, 64), s);
                return NULL;
        }
        memcpy(buf, s, n);
        memcpy(buf + n, "\n", 2);
        return buf;
}

static unsigned key_line(const ConfigParser *p, ConfigSection sec, const char *name) {
        for (size_t i = 0; i < N_KEYS; i++)
                if (config_keys[i].section == sec && strcmp(config_keys[i].name, name) == 0)
                        return p->key_line[i];
        return 0;
}

static const ConfigKey *key_find(ConfigSection sec, const char *name) {
        for (size_t i = 0; i < N_KEYS; i++)
                if (config_keys[i].section == sec && strcmp(config_keys[i].name, name) == 0)
                        return config_keys + i;
        return NULL;
}

/* Names a coherence failure between `name` and `other` (same section, or [other_sec]): the
 * line is that of `name` if the file set it, else that of `other`. */
static int coherence_fail(ConfigParser *p, ConfigSection sec, const char *name, ConfigSection other_sec,
                          const char *other, const char *relation) {
        const ConfigKey *k = key_find(sec, name);
        char a[48], b[48], prefix[32] = "";
        unsigned line = key_line(p, sec, name);
        bool dflt = line == 0;

        if (!k)
                return parser_fail(p, 0, "[%s]: incoherent configuration (%s)", section_names[sec], name);
        format_number(a, sizeof(a), k, key_number(p->c, k));
        if (!other)
                return key_fail(p, line, k, "%s%s %s", a, dflt ? " (default)" : "", relation);

        const ConfigKey *o = key_find(other_sec, other);
        if (!o)
                return parser_fail(p, 0, "[%s]: incoherent configuration (%s)", section_names[sec], name);
        if (line == 0)
                line = key_line(p, other_sec, other);
        format_number(b, sizeof(b), o, key_number(p->c, o));
        if (other_sec != sec)
                snprintf(prefix, sizeof(prefix), "[%s] ", section_names[other_sec]);
        return key_fail(p, line, k, "%s%s %s %s%s (%s)", a, dflt ? " (default)" : "", relation, prefix, other, b);
}

static int config_check(ConfigParser *p) {
        DaemonConfig *c = p->c;

        if (c->api.listen && !c->api.tokens_file)
                return key_fail(p, key_line(p, SECTION_API, "listen"), key_find(SECTION_API, "listen"),
                                "needs tokens_file (TCP clients authenticate with bearer tokens)");

        /* Half the connections at least stay open to everyone. */
        if (c->api.reserved_connections > c->api.max_connections / 2)
                return coherence_fail(p, SECTION_API, "reserved_connections", SECTION_API, "max_connections",
                                      "must be at most half of");
        if (c->api.max_connections_per_peer > c->api.max_connections)
                return coherence_fail(p, SECTION_API, "max_connections_per_peer", SECTION_API, "max_connections",
                                      "must not exceed");
        if (c->api.max_unauthenticated > c->api.max_connections)
                return coherence_fail(p, SECTION_API, "max_unauthenticated", SECTION_API, "max_connections",
                                      "must not exceed");

        if (c->pressure.psi_trigger_stall > c->pressure.psi_trigger_window)
                return coherence_fail(p, SECTION_PRESSURE, "psi_trigger_stall", SECTION_PRESSURE, "psi_trigger_window",
                                      "must not exceed");

        /* plan_config_validate() names the first bad PlanConfig field; say it with the file's keys. */
        static const struct {
                const char *field, *key, *other, *relation;
        } plan_fields[] = {
                { "high_pmy", "high_watermark", NULL, "must be above 0%" },
                { "low_pmy", "low_watermark", "high_watermark", "must be below" },
                { "critical_pmy", "critical_watermark", "low_watermark", "must not be above" },
                { "psi_some_pmy", "psi_some_threshold", NULL, "must be above 0%" },
                { "psi_full_pmy", "psi_full_threshold", NULL, "must be above 0%" },
                { "rate_take", "rate_limit", NULL, "must be above 0" },
                { "rate_give", "give_rate", "rate_limit", "must not be below" },
                { "floor_pmy", "floor_fraction", NULL, "must be at most 100%" },
                { "hard_floor_pmy", "hard_floor_fraction", "floor_fraction", "must not be above" },
                { "sample_max_age", "sample_max_age", NULL, "must be above 0" },
        };
        const char *field = NULL;
        if (plan_config_validate(&c->policy, &field) < 0) {
                for (size_t i = 0; field && i < ELEMENTSOF(plan_fields); i++)
                        if (strcmp(field, plan_fields[i].field) == 0)
                                return coherence_fail(p, SECTION_POLICY, plan_fields[i].key, SECTION_POLICY,
                                                      plan_fields[i].other, plan_fields[i].relation);
                /* A field no key sets (rate_window_max, step_gain_pmy): the defaults are wrong. */
                return parser_fail(p, 0, "[policy]: incoherent policy (%s)", field ? field : "?");
        }

        /* A sample older than sample_max_age is refused by plan(): with samples further apart than
         * that, the controller would stop between samples. */
        if (c->policy.sample_max_age < c->pressure.sample_interval)
                return coherence_fail(p, SECTION_POLICY, "sample_max_age", SECTION_PRESSURE, "sample_interval",
                                      "must not be below");
        return 0;
}

int config_parse_string(const char *text, size_t len, const char *filename, DaemonConfig *ret, char *err,
                        size_t errlen) {
        DaemonConfig c;
        ConfigParser p = {
                .filename = filename ? filename : "<config>",
                .text = text,
                .len = len,
                .section = -1,
                .c = &c,
        };
        int r;

        config_init_default(&c);
        if (!text && len > 0)
                r = parser_fail(&p, 0, "no text");
        else if (len > CONFIG_FILE_MAX) {
                parser_fail(&p, 0, "too large (more than %zu MiB)", CONFIG_FILE_MAX / MiB);
                r = p.error = -EFBIG;
        } else {
                r = ini_parse_stream(config_reader, &p, config_handler, &p);
                if (p.error)
                        r = p.error;
                else if (r > 0) /* the reader let through a line inih refused: should not happen */
                        r = parser_fail(&p, (unsigned) r, "syntax error");
                else if (r < 0)
                        r = p.error = -ENOMEM;
                else
                        r = config_check(&p);
        }

        if (r < 0) {
                if (err && errlen > 0) {
                        if (p.msg[0])
                                snprintf(err, errlen, "%s", p.msg);
                        else
                                snprintf(err, errlen, "%s: %s", p.filename, strerror(-r));
                }
                config_done(&c);
                return r;
        }
        *ret = c;
        return 0;
}

int config_load(const char *path, DaemonConfig *ret, char *err, size_t errlen) {
        _cleanup_close_ int fd = -EBADF;
        _cleanup_free_ char *buf = NULL;
        const char *what = "cannot open";
        struct stat st;
        size_t len = 0;
        int r;

        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
                r = negative_errno();
                goto fail;
        }
        what = "cannot read";
        if (fstat(fd, &st) < 0) {
                r = negative_errno();
                goto fail;
        }
        /* Not a FIFO or a device: reading those could block, or never end. */
        if (!S_ISREG(st.st_mode)) {
                if (err && errlen > 0)
                        snprintf(err, errlen, "%s: not a regular file", path);
                return -EINVAL;
        }
        /* One byte more than allowed, to tell a file at the limit from a bigger one. */
        buf = malloc(CONFIG_FILE_MAX + 1);
        if (!buf) {
                r = -ENOMEM;
                goto fail;
        }
        while (len <= CONFIG_FILE_MAX) {
                ssize_t n = read(fd, buf + len, CONFIG_FILE_MAX + 1 - len);
                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0) {
                        r = negative_errno();
                        goto fail;
                }
                if (n == 0)
                        break;
                len += (size_t) n;
        }
        return config_parse_string(buf, len, path, ret, err, errlen);

fail:
        if (err && errlen > 0)
                snprintf(err, errlen, "%s: %s: %s", path, what, strerror(-r));
        return r;
}
