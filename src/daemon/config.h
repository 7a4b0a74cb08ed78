/* SPDX-License-Identifier: MIT */
#pragma once

/* ballastd's configuration (B6.4): one INI file, parsed with inih into a DaemonConfig. Every key,
 * its type, default and meaning: docs/config.md; an example with every key: packaging/ballastd.conf.
 *
 * Any problem is fatal and is explained in one line, "FILE:LINE: reason" (or "FILE: reason" when no
 * line is to blame), e.g.
 *     ballastd.conf:12: [policy] low_watermark: "150%" is not a percentage between 0 and 100
 * Unknown sections and keys, duplicate keys and sections, keys outside a section, bad values,
 * binary data, lines longer than CONFIG_LINE_MAX and incoherent combinations (critical ≤ low <
 * high watermark, give_rate ≥ rate_limit, …) are all errors. Comment lines start with ';' or '#';
 * a value may be followed by " ; comment". Indentation is ignored (there are no continuation
 * lines). Values are never quoted. */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "policy/plan.h"
#include "shared/time-util.h"

#define CONFIG_FILE_MAX    ((size_t) 1 << 20) /* bigger files are refused */
#define CONFIG_LINE_MAX    198                /* bytes in a key or section line (inih's buffer) */
#define CONFIG_ERR_MAX     512                /* an err buffer of this size never truncates a reason */
#define CONFIG_STRINGS_MAX 8                  /* owned strings a DaemonConfig can hold */

typedef enum ConfigScope {
        CONFIG_SCOPE_HOST,   /* /proc/meminfo and /proc/pressure/memory */
        CONFIG_SCOPE_CGROUP, /* a cgroup directory (v1 or v2) */
        _CONFIG_SCOPE_MAX,
        _CONFIG_SCOPE_INVALID = -EINVAL,
} ConfigScope;

typedef enum ConfigPsi {
        CONFIG_PSI_AUTO, /* use PSI when the pressure file exists; without it warn and go on */
        CONFIG_PSI_ON,   /* PSI is required: a missing pressure file is fatal at start */
        CONFIG_PSI_OFF,  /* never read PSI nor register triggers: MemAvailable only */
        _CONFIG_PSI_MAX,
        _CONFIG_PSI_INVALID = -EINVAL,
} ConfigPsi;

/* The effective configuration. Sizes are bytes, rates bytes per second, times usec_t, ratios
 * permyriad. String fields are never NULL unless documented as optional; they point either at
 * static defaults or at copies owned by the DaemonConfig (freed by config_done()). A DaemonConfig
 * may be moved (struct assignment) but not copied: only one copy may be passed to config_done(). */
typedef struct DaemonConfig {
        struct {
                const char *socket;                  /* absolute path of the Unix API socket */
                const char *listen;                  /* "127.0.0.1:PORT" or "[::1]:PORT" (normalized); NULL: no TCP */
                struct sockaddr_storage listen_addr; /* the same, ready for bind(); valid when listen */
                socklen_t listen_addr_len;
                const char *tokens_file;  /* bearer tokens for TCP clients; required with listen, else NULL */
                const char *write_group;  /* as written (name or number); NULL: no group may write (root may) */
                gid_t write_gid;          /* resolved at load; valid when write_group */
                uint64_t max_connections; /* per listener (Unix socket, TCP) */
                uint64_t max_connections_per_peer; /* per uid (Unix; not root) or address (TCP, authenticated) */
                uint64_t reserved_connections;     /* of max_connections: only root, our uid, write_group
                                                    * (Unix) or write tokens (TCP) may use them */
                uint64_t max_unauthenticated;      /* TCP connections whose request head has not arrived */
                usec_t header_timeout;             /* a request head must be complete this long after accept */
                usec_t body_timeout;               /* its body this long after the head */
                usec_t idle_timeout;               /* after the head: longest silence (body, reply) */
        } api;
        struct {
                const char *directory; /* absolute; holds the SQLite database */
                uint64_t journal_max;  /* decisions kept in the journal */
        } state;
        struct {
                ConfigScope scope;
                const char *cgroup;     /* CONFIG_SCOPE_CGROUP: absolute cgroup directory; else NULL */
                usec_t sample_interval; /* MemAvailable sampling period */
                ConfigPsi psi;
                usec_t psi_trigger_stall;  /* the PSI trigger: this much "some" stall ... */
                usec_t psi_trigger_window; /* ... within this window wakes the controller */
                const char *proc_root;     /* where proc is mounted ("/proc"; tests point elsewhere) */
        } pressure;
        PlanConfig policy; /* [policy]: plan_config_default() plus the file, plan_config_validate()d */
        struct {
                usec_t op_timeout;       /* deadline of one hypervisor operation */
                uint64_t stall_min_rate; /* bytes/s of progress below which a VM is stalling (B5.6) */
                usec_t stall_window;     /* ... for this long: then it is marked stalled */
                usec_t stall_backoff;    /* a stalled VM is skipped for this long */
                usec_t stats_period;     /* guest statistics polling period, whole seconds */
                uint64_t tolerance;      /* "reached" when actual is within this of the target (B1.6) */
        } driver;
        struct {
                uint64_t size;      /* default park size (B4.1) */
                usec_t protect_for; /* an unparked VM is protected from reclaim for this long (B4.2) */
        } park;
        struct {
                int level; /* LOG_LEVEL_* of shared/log.h */
        } log;

        /* Private: the strings config_done() frees. */
        char *owned_[CONFIG_STRINGS_MAX];
        size_t n_owned_;
} DaemonConfig;

/* Fills *c with the documented defaults (docs/config.md). Cannot fail and allocates
 * nothing; the result is valid as it is. */
void config_init_default(DaemonConfig *c);

/* Parses `len` bytes of INI text (need not be NUL-terminated; at most CONFIG_FILE_MAX) on top of the
 * defaults. `filename` names the text in error messages (NULL: "<config>"). On success returns 0
 * and fills *ret (the caller owns it: config_done()). On failure *ret is not touched, a one-line
 * reason "FILE:LINE: …" is written to err (if err and errlen > 0) and it returns -EINVAL (any
 * problem with the text), -EFBIG (more than CONFIG_FILE_MAX bytes) or -ENOMEM. */
int config_parse_string(const char *text, size_t len, const char *filename, DaemonConfig *ret, char *err,
                        size_t errlen);

/* Reads the regular file at `path` (at most CONFIG_FILE_MAX bytes) and parses it as above, naming
 * it `path` in messages. Returns as config_parse_string(), or the negative errno of a failed
 * open/read (-ENOENT, -EACCES, …; -EINVAL for something that is not a regular file), with err
 * saying "PATH: cannot open: …". */
int config_load(const char *path, DaemonConfig *ret, char *err, size_t errlen);

/* Frees the strings *c owns and resets it to the defaults. Accepts NULL; returns NULL. */
DaemonConfig *config_done(DaemonConfig *c);

/* Prints the effective configuration as INI text, every key of every section, in canonical form
 * (parsing the output gives the same configuration back). Used by `ballastd --check-config` and the
 * golden tests. Returns 0, or -EIO when writing to f failed. */
int config_dump(const DaemonConfig *c, FILE *f);

/* Calls cb for each key whose canonical value (as config_dump() prints it) differs between a and
 * b, in config_dump() order, with the section and key names and both values ("" for an unset
 * optional key). Returns the number of such keys. */
typedef void (*config_diff_cb)(const char *section, const char *key, const char *old_value, const char *new_value,
                               void *userdata);
int config_diff(const DaemonConfig *a, const DaemonConfig *b, config_diff_cb cb, void *userdata);

/* "10%", "10", "12.5%", "12.34" (at most two decimals, an optional '%', 0 to 100) → permyriad
 * (1000, 1000, 1250, 1234). Returns 0 and writes *ret_pmy, or -EINVAL (garbage, a sign, spaces),
 * -EDOM (more than two decimals) or -ERANGE (above 100%); *ret_pmy is written on success only. */
int config_parse_percent(const char *s, uint32_t *ret_pmy);

const char *config_scope_to_string(ConfigScope s); /* "host", "cgroup" */
ConfigScope config_scope_from_string(const char *s);
const char *config_psi_to_string(ConfigPsi p); /* "auto", "on", "off" */
ConfigPsi config_psi_from_string(const char *s);
/* "debug", "info", "notice", "warning", "error" ↔ LOG_LEVEL_*; from_string returns -EINVAL. */
const char *config_log_level_to_string(int level);
int config_log_level_from_string(const char *s);
