/* SPDX-License-Identifier: MIT */
#include "store/store.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#include "shared/log.h"
#include "shared/macro.h"
#include "shared/strutil.h"

#define STRINGIFY_(x)         #x
#define STRINGIFY(x)          STRINGIFY_(x)

/* A second writer (only ever a tool: ballastd holds the directory lock) waits this long at most. */
#define STORE_BUSY_TIMEOUT_MS 2000
/* After a checkpoint the WAL file is truncated back to this size, so it does not stay at its peak. */
#define STORE_WAL_SIZE_LIMIT  (16 << 20)
/* Checkpoints run on their own thread (store.h, Threads). A commit that leaves at least this many
 * pages in the WAL (4 MiB of 4 KiB pages, SQLite's own default) wakes the checkpointer; it also
 * wakes by itself this often, so that commits reach the disk within that time even when few are
 * made. */
#define STORE_CKPT_PAGES      1000
#define STORE_CKPT_INTERVAL_S 30
/* Passive checkpoint rounds per wake-up, to catch up with commits made meanwhile. */
#define STORE_CKPT_ROUNDS     8
/* The bound on the WAL (16 MiB of 4 KiB pages), beyond which writers are held back. */
#define STORE_WAL_PAGES_MAX   4096

static const char sqlite_magic[16] = "SQLite format 3";

/* migrations[i] takes the schema from version i to i + 1, inside the same transaction that sets
 * user_version; a version 2 is one more entry. Constraints repeat the type rules cheaply; the
 * code still validates every row it reads, because a file can be edited behind our back. */
static const char *const migrations[] = {
        /* 0 → 1 */
        "CREATE TABLE vm ("
        "  id TEXT NOT NULL PRIMARY KEY,"
        "  driver TEXT NOT NULL,"
        "  socket TEXT,"
        "  uri TEXT,"
        "  domain TEXT,"
        "  expected_uid INTEGER NOT NULL CHECK (expected_uid >= -1),"
        "  assigned INTEGER NOT NULL CHECK (assigned >= 0),"
        "  floor INTEGER NOT NULL CHECK (floor >= 0),"
        "  shares INTEGER NOT NULL CHECK (shares >= 1),"
        "  last_target INTEGER NOT NULL CHECK (last_target >= 0),"
        "  parked INTEGER NOT NULL CHECK (parked IN (0, 1)),"
        "  park_prev INTEGER NOT NULL CHECK (park_prev >= 0),"
        "  unparked_until_usec INTEGER NOT NULL CHECK (unparked_until_usec >= 0),"
        "  created_usec INTEGER NOT NULL CHECK (created_usec >= 0)"
        ") WITHOUT ROWID;"
        "CREATE TABLE hold ("
        "  id INTEGER PRIMARY KEY CHECK (id = 1),"
        "  bytes INTEGER NOT NULL CHECK (bytes >= 0),"
        "  until_usec INTEGER NOT NULL CHECK (until_usec >= 0),"
        "  reason TEXT NOT NULL,"
        "  created_usec INTEGER NOT NULL CHECK (created_usec >= 0)"
        ");"
        /* seq is the rowid: always max + 1, and only the oldest rows are deleted, so the rows
         * kept are exactly those with seq > max(seq) − journal_max. */
        "CREATE TABLE journal ("
        "  seq INTEGER PRIMARY KEY,"
        "  time_usec INTEGER NOT NULL CHECK (time_usec >= 0),"
        "  trigger_name TEXT NOT NULL,"
        "  state TEXT NOT NULL,"
        "  available INTEGER NOT NULL CHECK (available >= 0),"
        "  requested INTEGER NOT NULL CHECK (requested >= 0),"
        "  planned INTEGER NOT NULL CHECK (planned >= 0),"
        "  targets TEXT NOT NULL"
        ");",
        /* 1 → 2: why each VM got its target, next to the targets */
        "ALTER TABLE journal ADD COLUMN reasons TEXT NOT NULL DEFAULT '{}';",
};
static_assert(ELEMENTSOF(migrations) == STORE_SCHEMA_VERSION, "one migration per schema version");

#define VM_COLUMNS                                                                                                     \
        "id, driver, socket, uri, domain, expected_uid, assigned, floor, shares, last_target, parked, park_prev, "     \
        "unparked_until_usec, created_usec"

enum {
        STMT_BEGIN,
        STMT_COMMIT,
        STMT_ROLLBACK,
        STMT_VM_INSERT,
        STMT_VM_UPDATE,
        STMT_VM_SET_TARGET,
        STMT_VM_SET_PARK,
        STMT_VM_DELETE,
        STMT_VM_GET,
        STMT_VM_ALL,
        STMT_HOLD_SET,
        STMT_HOLD_CLEAR,
        STMT_HOLD_GET,
        STMT_JOURNAL_INSERT,
        STMT_JOURNAL_TRIM,
        STMT_JOURNAL_LIST,
        STMT_JOURNAL_KEYS,
        STMT_JOURNAL_GET,
        _STMT_MAX,
};

static const char *const stmt_sql[_STMT_MAX] = {
        [STMT_BEGIN] = "BEGIN IMMEDIATE",
        [STMT_COMMIT] = "COMMIT",
        [STMT_ROLLBACK] = "ROLLBACK",
        [STMT_VM_INSERT] = "INSERT INTO vm (" VM_COLUMNS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, "
                           "?13, ?14)",
        [STMT_VM_UPDATE] = "UPDATE vm SET driver = ?2, socket = ?3, uri = ?4, domain = ?5, expected_uid = ?6, "
                           "assigned = ?7, floor = ?8, shares = ?9, last_target = ?10, parked = ?11, park_prev = ?12, "
                           "unparked_until_usec = ?13 WHERE id = ?1",
        [STMT_VM_SET_TARGET] = "UPDATE vm SET last_target = ?2 WHERE id = ?1",
        [STMT_VM_SET_PARK] = "UPDATE vm SET parked = ?2, park_prev = ?3, unparked_until_usec = ?4 WHERE id = ?1",
        [STMT_VM_DELETE] = "DELETE FROM vm WHERE id = ?1",
        [STMT_VM_GET] = "SELECT " VM_COLUMNS " FROM vm WHERE id = ?1",
        [STMT_VM_ALL] = "SELECT " VM_COLUMNS " FROM vm ORDER BY id",
        [STMT_HOLD_SET] = "INSERT OR REPLACE INTO hold (id, bytes, until_usec, reason, created_usec) "
                          "VALUES (1, ?1, ?2, ?3, ?4)",
        [STMT_HOLD_CLEAR] = "DELETE FROM hold",
        [STMT_HOLD_GET] = "SELECT bytes, until_usec, reason, created_usec FROM hold WHERE id = 1",
        [STMT_JOURNAL_INSERT] = "INSERT INTO journal (time_usec, trigger_name, state, available, requested, planned, "
                                "targets, reasons) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        /* max(seq) is one step down the rowid b-tree and the range starts there: O(log n) for the
         * one row a steady-state append drops, never a scan. */
        [STMT_JOURNAL_TRIM] = "DELETE FROM journal WHERE seq <= (SELECT coalesce(max(seq), 0) FROM journal) - ?1",
        [STMT_JOURNAL_LIST] = "SELECT time_usec, trigger_name, state, available, requested, planned, targets, "
                              "reasons, seq "
                              "FROM journal ORDER BY seq DESC LIMIT ?1",
        [STMT_JOURNAL_KEYS] = "SELECT seq, time_usec FROM journal ORDER BY seq DESC LIMIT ?1",
        [STMT_JOURNAL_GET] = "SELECT time_usec, trigger_name, state, available, requested, planned, targets, "
                             "reasons, seq "
                             "FROM journal WHERE seq = ?1",
};

struct Store {
        sqlite3 *db;
        char *dir;
        char *path;    /* <dir>/state.db, as given: for messages */
        char *db_path; /* the same through the directory's real path: for SQLite */
        int lock_fd;
        uint64_t journal_max;
        sqlite3_stmt *stmt[_STMT_MAX];

        /* The checkpointer. ckpt_db is the thread's own connection: opened before the thread
         * starts and closed after it is joined, used by nobody else in between. The fields after
         * ckpt_lock are guarded by it. */
        sqlite3 *ckpt_db;
        unsigned wal_pages_mark; /* the loop's alone: the WAL's size at the last request */
        pthread_t ckpt_thread;
        bool ckpt_sync_init, ckpt_started;
        pthread_mutex_t ckpt_lock;
        pthread_cond_t ckpt_cond; /* on CLOCK_MONOTONIC */
        bool ckpt_wanted, ckpt_stop;
        int ckpt_rc;       /* the last checkpoint's SQLite result */
        int ckpt_rc_shown; /* the last result the loop has logged */
};

static const char *const drivers[] = { "qemu", "firecracker", "cloud-hypervisor", "libvirt" };

/* ---- errors ---- */

_printf_(3, 4) static void seterr(char *err, size_t errlen, const char *fmt, ...) {
        if (!err || errlen == 0)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
}

static int errno_from_sqlite(sqlite3 *db, int rc) {
        switch (rc & 0xff) {
        case SQLITE_OK:
        case SQLITE_ROW:
        case SQLITE_DONE:
                return 0;
        case SQLITE_NOMEM:
                return -ENOMEM;
        case SQLITE_BUSY:
        case SQLITE_LOCKED:
                return -EBUSY;
        case SQLITE_CONSTRAINT:
                return rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE ? -EEXIST : -EINVAL;
        case SQLITE_CORRUPT:
        case SQLITE_NOTADB:
        case SQLITE_FORMAT:
                return -EBADMSG;
        case SQLITE_FULL:
                return -ENOSPC;
        case SQLITE_READONLY:
                return -EROFS;
        case SQLITE_PERM:
        case SQLITE_AUTH:
                return -EACCES;
        case SQLITE_TOOBIG:
                return -E2BIG;
        case SQLITE_INTERRUPT:
                return -EINTR;
        case SQLITE_RANGE:
        case SQLITE_MISUSE:
        case SQLITE_MISMATCH:
                return -EINVAL;
        case SQLITE_IOERR:
        case SQLITE_CANTOPEN: {
                if (rc == SQLITE_IOERR_NOMEM)
                        return -ENOMEM;
                int e = db ? sqlite3_system_errno(db) : 0;
                return e > 0 ? -e : -EIO;
        }
        default:
                return -EIO;
        }
}

/* Explains a failed SQLite call (with SQLite's own words) and returns the errno for it. */
static int sql_fail(Store *s, int rc, const char *what, char *err, size_t errlen) {
        seterr(err, errlen, "%s: %s: %s", s->path, what, s->db ? sqlite3_errmsg(s->db) : sqlite3_errstr(rc));
        int r = errno_from_sqlite(s->db, rc);
        return r < 0 ? r : -EIO;
}

/* Room for at least `want` elements of `size` bytes in *a (capacity *cap, doubling from 16).
 * Returns 0 or -ENOMEM (then *a is untouched). */
static int array_reserve(void **a, size_t *cap, size_t want, size_t size) {
        if (want <= *cap)
                return 0;
        size_t ncap = MAX(want, *cap ? *cap * 2 : 16);
        void *p = reallocarray(*a, ncap, size);
        if (!p)
                return -ENOMEM;
        *a = p;
        *cap = ncap;
        return 0;
}

/* Reads every row of st into a new array of `size`-byte elements, each by from_row (which fills
 * the element at its second argument); on failure frees what was read with free_array. Returns 0
 * with *ret (NULL when no row) and *ret_n, or a negative errno with err. */
typedef int (*row_reader)(Store *s, sqlite3_stmt *st, void *ret, char *err, size_t errlen);
static int read_rows(Store *s, sqlite3_stmt *st, size_t size, row_reader from_row,
                     void (*free_array)(void *a, size_t n), const char *what, void **ret, size_t *ret_n, char *err,
                     size_t errlen) {
        void *a = NULL;
        size_t n = 0, cap = 0;
        int r;
        for (;;) {
                int rc = sqlite3_step(st);
                if (rc == SQLITE_DONE)
                        break;
                if (rc != SQLITE_ROW) {
                        r = sql_fail(s, rc, what, err, errlen);
                        goto fail;
                }
                r = array_reserve(&a, &cap, n + 1, size);
                if (r < 0)
                        goto fail;
                r = from_row(s, st, (char *) a + n * size, err, errlen);
                if (r < 0)
                        goto fail;
                n++;
        }
        *ret = n > 0 ? a : NULL;
        if (n == 0)
                free(a);
        *ret_n = n;
        return 0;
fail:
        free_array(a, n);
        return r;
}

/* ---- validation ---- */

static bool text_is_valid(const char *s, size_t max_bytes) {
        size_t n = strnlen(s, max_bytes + 1);
        return n <= max_bytes && utf8_count(s, n) >= 0;
}

bool store_vm_id_is_valid(const char *id) {
        if (!id)
                return false;
        size_t n = strnlen(id, STORE_VM_ID_MAX + 1);
        if (n == 0 || n > STORE_VM_ID_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", id[i]))
                        return false;
        return true;
}

bool store_driver_is_valid(const char *driver) {
        if (!driver)
                return false;
        for (size_t i = 0; i < ELEMENTSOF(drivers); i++)
                if (strcmp(driver, drivers[i]) == 0)
                        return true;
        return false;
}

static bool word_is_valid(const char *w) {
        size_t n = strnlen(w, STORE_WORD_MAX + 1);
        if (n == 0 || n > STORE_WORD_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!strchr("abcdefghijklmnopqrstuvwxyz0123456789_-", w[i]))
                        return false;
        return true;
}

static bool reason_is_valid(const char *reason) {
        size_t n = strnlen(reason, STORE_HOLD_REASON_BYTES + 1);
        if (n > STORE_HOLD_REASON_BYTES)
                return false;
        ssize_t cps = utf8_count(reason, n);
        return cps >= 0 && cps <= STORE_HOLD_REASON_MAX;
}

/* An id fit to print in a message, whatever the row held. */
static const char *id_for_message(const char *id, char buf[static STORE_VM_ID_MAX + 4]) {
        if (!id)
                return "(null)";
        size_t i = 0;
        for (; id[i] && i < STORE_VM_ID_MAX; i++)
                buf[i] = strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-", id[i]) ? id[i]
                                                                                                            : '?';
        if (id[i])
                buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
        buf[i] = 0;
        return buf;
}

static bool optional_string_ok(const char *s) {
        return !s || (s[0] && text_is_valid(s, STORE_STRING_MAX));
}

/* Returns 0, -ERANGE for a value SQLite cannot hold, -EINVAL for any other broken rule. */
static int vm_check(const StoreVm *vm, char *err, size_t errlen) {
        char buf[STORE_VM_ID_MAX + 4];
        const char *idm;

        if (!vm)
                return -EINVAL;
        if (memchr(vm->id, 0, sizeof(vm->id)) == NULL || !store_vm_id_is_valid(vm->id)) {
                seterr(err, errlen, "VM id '%s' is not 1-%d characters of [A-Za-z0-9._-]",
                       id_for_message(memchr(vm->id, 0, sizeof(vm->id)) ? vm->id : "", buf), STORE_VM_ID_MAX);
                return -EINVAL;
        }
        idm = vm->id;
        if (memchr(vm->driver, 0, sizeof(vm->driver)) == NULL || !store_driver_is_valid(vm->driver)) {
                seterr(err, errlen, "VM '%s': driver is not one of qemu, firecracker, cloud-hypervisor, libvirt", idm);
                return -EINVAL;
        }
        if (!optional_string_ok(vm->socket) || !optional_string_ok(vm->uri) || !optional_string_ok(vm->domain)) {
                seterr(err, errlen, "VM '%s': socket, uri and domain must be non-empty UTF-8 of at most %d bytes", idm,
                       STORE_STRING_MAX);
                return -EINVAL;
        }
        if (strcmp(vm->driver, "libvirt") == 0) {
                if (!vm->uri || !vm->domain) {
                        seterr(err, errlen, "VM '%s': a libvirt VM needs a uri and a domain", idm);
                        return -EINVAL;
                }
        } else if (!vm->socket || vm->socket[0] != '/') {
                seterr(err, errlen, "VM '%s': a %s VM needs an absolute socket path", idm, vm->driver);
                return -EINVAL;
        }
        if (vm->expected_uid < -1 || vm->expected_uid >= (int64_t) UINT32_MAX) {
                seterr(err, errlen, "VM '%s': expected_uid %" PRIi64 " is neither -1 nor a uid", idm, vm->expected_uid);
                return -ERANGE;
        }
        if (vm->shares < 1) {
                seterr(err, errlen, "VM '%s': shares must be at least 1", idm);
                return -EINVAL;
        }
        const struct {
                const char *name;
                uint64_t v;
        } sizes[] = {
                { "assigned", vm->assigned },
                { "floor", vm->floor },
                { "last_target", vm->last_target },
                { "park_prev", vm->park_prev },
                { "unparked_until", vm->unparked_until },
                { "created", vm->created },
        };
        for (size_t i = 0; i < ELEMENTSOF(sizes); i++)
                if (sizes[i].v > STORE_U64_MAX) {
                        seterr(err, errlen, "VM '%s': %s %" PRIu64 " is above 2^63-1", idm, sizes[i].name, sizes[i].v);
                        return -ERANGE;
                }
        return 0;
}

bool store_vm_is_valid(const StoreVm *vm, char *err, size_t errlen) {
        return vm_check(vm, err, errlen) == 0;
}

/* targets: a JSON object of VM ids to integers ≥ 0 (jansson refuses integers above INT64_MAX). */
static bool targets_are_valid(const char *text, size_t len) {
        if (len > STORE_TARGETS_MAX || memchr(text, 0, len))
                return false;
        json_error_t jerr;
        json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        bool ok = json_is_object(j);
        const char *key;
        json_t *v;
        if (ok)
                json_object_foreach(j, key, v) {
                        if (!store_vm_id_is_valid(key) || !json_is_integer(v) || json_integer_value(v) < 0) {
                                ok = false;
                                break;
                        }
                }
        json_decref(j);
        return ok;
}

/* reasons: a JSON object of VM ids to words. */
static bool reasons_are_valid(const char *text, size_t len) {
        if (len > STORE_TARGETS_MAX || memchr(text, 0, len))
                return false;
        json_t *j = json_loadb(text, len, JSON_REJECT_DUPLICATES, NULL);
        bool ok = json_is_object(j);
        const char *key;
        json_t *v;
        if (ok)
                json_object_foreach(j, key, v) {
                        if (!store_vm_id_is_valid(key) || !json_is_string(v) ||
                            json_string_length(v) > STORE_WORD_MAX || !word_is_valid(json_string_value(v))) {
                                ok = false;
                                break;
                        }
                }
        json_decref(j);
        return ok;
}

/* ---- statements ---- */

static void stmt_resetp(sqlite3_stmt **st) {
        if (*st) {
                sqlite3_reset(*st);
                sqlite3_clear_bindings(*st);
        }
}
#define _cleanup_stmt_ _cleanup_(stmt_resetp)

/* Runs a statement that returns no rows. */
static int step_done(Store *s, sqlite3_stmt *st, const char *what, char *err, size_t errlen) {
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
                return 0;
        if (rc == SQLITE_ROW) {
                seterr(err, errlen, "%s: %s: unexpected row", s->path, what);
                return -EIO;
        }
        return sql_fail(s, rc, what, err, errlen);
}

static int run_simple(Store *s, int idx, const char *what, char *err, size_t errlen) {
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[idx];
        return step_done(s, st, what, err, errlen);
}

static int tx_begin(Store *s, char *err, size_t errlen) {
        return run_simple(s, STMT_BEGIN, "begin transaction", err, errlen);
}

static int tx_commit(Store *s, char *err, size_t errlen) {
        return run_simple(s, STMT_COMMIT, "commit", err, errlen);
}

static void tx_rollback(Store *s) {
        /* SQLite rolls back by itself on some errors (e.g. SQLITE_FULL): only if one is open. */
        if (!sqlite3_get_autocommit(s->db))
                (void) run_simple(s, STMT_ROLLBACK, "rollback", NULL, 0);
}

/* Binds a value known to be ≤ STORE_U64_MAX. */
static int bind_u64(sqlite3_stmt *st, int i, uint64_t v) {
        assert(v <= STORE_U64_MAX);
        return sqlite3_bind_int64(st, i, (sqlite3_int64) v);
}

static int bind_text(sqlite3_stmt *st, int i, const char *v) {
        return v ? sqlite3_bind_text(st, i, v, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i);
}

/* ---- reading rows ---- */

static bool col_u64(sqlite3_stmt *st, int i, uint64_t *ret) {
        if (sqlite3_column_type(st, i) != SQLITE_INTEGER)
                return false;
        sqlite3_int64 v = sqlite3_column_int64(st, i);
        if (v < 0)
                return false;
        *ret = (uint64_t) v;
        return true;
}

static bool col_i64(sqlite3_stmt *st, int i, int64_t *ret) {
        if (sqlite3_column_type(st, i) != SQLITE_INTEGER)
                return false;
        *ret = sqlite3_column_int64(st, i);
        return true;
}

/* A TEXT column of at most max bytes without NUL; *ret points into the statement (valid until the
 * next step or reset), NULL for SQL NULL when nullable. */
static bool col_text(sqlite3_stmt *st, int i, size_t max, bool nullable, const char **ret, size_t *ret_len) {
        int type = sqlite3_column_type(st, i);
        if (type == SQLITE_NULL && nullable) {
                *ret = NULL;
                *ret_len = 0;
                return true;
        }
        if (type != SQLITE_TEXT)
                return false;
        const char *p = (const char *) sqlite3_column_text(st, i);
        int n = sqlite3_column_bytes(st, i);
        if (!p || n < 0 || (size_t) n > max || memchr(p, 0, (size_t) n))
                return false;
        *ret = p;
        *ret_len = (size_t) n;
        return true;
}

/* Explains a bad row: the table, the row (a VM id, or a journal sequence number), the column and,
 * made printable and short, the value it holds. Returns -EBADMSG. */
static int bad_row(Store *s, sqlite3_stmt *st, int col, const char *row, const char *field, char *err, size_t errlen) {
        char value[48] = "NULL";
        if (sqlite3_column_type(st, col) != SQLITE_NULL) {
                const unsigned char *v = sqlite3_column_text(st, col);
                int n = sqlite3_column_bytes(st, col);
                size_t k = 0;
                value[k++] = '\'';
                for (int i = 0; v && i < n && k < 36; i++)
                        value[k++] = v[i] >= 0x20 && v[i] < 0x7f && v[i] != '\'' ? (char) v[i] : '?';
                if (v && n > 0 && k >= 36)
                        value[k++] = '.', value[k++] = '.', value[k++] = '.';
                value[k++] = '\'';
                value[k] = 0;
        }
        seterr(err, errlen, "%s: bad state row %s: %s is %s", s->path, row, field, value);
        return -EBADMSG;
}

static const char *vm_row_name(const char *id, char buf[static STORE_VM_ID_MAX + 16]) {
        char b[STORE_VM_ID_MAX + 4];
        snprintf(buf, STORE_VM_ID_MAX + 16, "vm '%s'", id_for_message(id, b));
        return buf;
}

/* Copies an optional text column into a new string (or NULL). */
static int col_strdup(sqlite3_stmt *st, int i, char **ret) {
        const char *p;
        size_t n;
        if (!col_text(st, i, STORE_STRING_MAX, true, &p, &n))
                return -EBADMSG;
        if (!p) {
                *ret = NULL;
                return 0;
        }
        char *c = strndup(p, n);
        if (!c)
                return -ENOMEM;
        *ret = c;
        return 0;
}

static int vm_from_row(Store *s, sqlite3_stmt *st, StoreVm *ret, char *err, size_t errlen) {
        static const char *const names[] = { "socket", "uri", "domain" };
        StoreVm vm = {};
        const char *p;
        size_t n;
        int64_t shares, parked;
        int r;

        char row[STORE_VM_ID_MAX + 16];

        /* Types are checked before any value is read: reading converts, and then the type is lost. */
        if (!col_text(st, 0, STORE_VM_ID_MAX, false, &p, &n) || !store_vm_id_is_valid(p))
                return bad_row(s, st, 0, vm_row_name((const char *) sqlite3_column_text(st, 0), row), "id", err,
                               errlen);
        memcpy(vm.id, p, n + 1);
        vm_row_name(vm.id, row);
        if (!col_text(st, 1, STORE_DRIVER_MAX, false, &p, &n) || !store_driver_is_valid(p))
                return bad_row(s, st, 1, row, "driver", err, errlen);
        memcpy(vm.driver, p, n + 1);
        char **strs[] = { &vm.socket, &vm.uri, &vm.domain };
        for (size_t i = 0; i < ELEMENTSOF(strs); i++) {
                r = col_strdup(st, 2 + (int) i, strs[i]);
                if (r == -ENOMEM) {
                        store_vm_done(&vm);
                        return r;
                }
                if (r < 0) {
                        store_vm_done(&vm);
                        return bad_row(s, st, 2 + (int) i, row, names[i], err, errlen);
                }
        }
        const char *field = NULL;
        int col = 5;
        if (!col_i64(st, col, &vm.expected_uid))
                field = "expected_uid";
        else if (!col_u64(st, ++col, &vm.assigned))
                field = "assigned";
        else if (!col_u64(st, ++col, &vm.floor))
                field = "floor";
        else if (!col_i64(st, ++col, &shares) || shares < 1 || shares > (int64_t) UINT32_MAX)
                field = "shares";
        else if (!col_u64(st, ++col, &vm.last_target))
                field = "last_target";
        else if (!col_i64(st, ++col, &parked) || (parked != 0 && parked != 1))
                field = "parked";
        else if (!col_u64(st, ++col, &vm.park_prev))
                field = "park_prev";
        else if (!col_u64(st, ++col, &vm.unparked_until))
                field = "unparked_until";
        else if (!col_u64(st, ++col, &vm.created))
                field = "created";
        if (field) {
                store_vm_done(&vm);
                return bad_row(s, st, col, row, field, err, errlen);
        }
        vm.shares = (uint32_t) shares;
        vm.parked = parked == 1;

        char why[256];
        if (vm_check(&vm, why, sizeof(why)) < 0) {
                seterr(err, errlen, "%s: bad state row %s: %s", s->path, row, why);
                store_vm_done(&vm);
                return -EBADMSG;
        }
        *ret = vm;
        return 0;
}

/* ---- open and close ---- */

DEFINE_TRIVIAL_CLEANUP_FUNC(Store *, store_close);

/* Checks one of the store's files (the database, its -wal or its -shm) before SQLite opens it:
 * it must not be a symbolic link (SQLite would follow it, and create or write the file where it
 * points), must be a regular file owned by our uid, and is made 0600 if it was readable or
 * writable by others (files of older versions were 0644). The database itself is also refused,
 * before anything is changed or created next to it, if it is not a SQLite database: SQLite would
 * refuse it too, but this way nothing of ours (not even a -wal or -shm file) appears next to it.
 * An empty or missing file is fine (a new database). Sets *ret_exists. */
static int check_state_file(const char *path, bool is_db, bool *ret_exists, char *err, size_t errlen) {
        _cleanup_close_ int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK | O_NOFOLLOW);
        if (fd < 0) {
                if (errno == ENOENT) {
                        *ret_exists = false;
                        return 0;
                }
                int r = negative_errno();
                if (r == -ELOOP)
                        seterr(err, errlen, "%s is a symbolic link; refusing to use it", path);
                else
                        seterr(err, errlen, "Failed to open %s: %s", path, strerror(-r));
                return r;
        }
        struct stat st;
        if (fstat(fd, &st) < 0) {
                int r = negative_errno();
                seterr(err, errlen, "Failed to stat %s: %s", path, strerror(-r));
                return r;
        }
        if (!S_ISREG(st.st_mode)) {
                seterr(err, errlen, "%s is not a regular file; refusing to use it", path);
                return -EBADMSG;
        }
        if (st.st_uid != geteuid()) {
                seterr(err, errlen, "%s is owned by uid %u, not by this process's uid %u; refusing to use it", path,
                       (unsigned) st.st_uid, (unsigned) geteuid());
                return -EPERM;
        }
        if (is_db && st.st_size > 0) {
                char head[sizeof(sqlite_magic)];
                ssize_t n = pread(fd, head, sizeof(head), 0);
                if (n < 0) {
                        int r = negative_errno();
                        seterr(err, errlen, "Failed to read %s: %s", path, strerror(-r));
                        return r;
                }
                if ((size_t) n < sizeof(head) || memcmp(head, sqlite_magic, sizeof(head)) != 0) {
                        seterr(err, errlen, "%s is not a SQLite database; refusing to use or overwrite it", path);
                        return -EBADMSG;
                }
        }
        if (st.st_mode & 0077) {
                if (fchmod(fd, 0600) < 0) {
                        int r = negative_errno();
                        seterr(err, errlen, "Failed to make %s private (mode 0600): %s", path, strerror(-r));
                        return r;
                }
                log_notice("%s had mode %04o: made it 0600, the state is for ballastd alone", path,
                           (unsigned) (st.st_mode & 07777));
        }
        *ret_exists = true;
        return 0;
}

/* Checks the database and its -wal and -shm files (check_state_file()), and creates a missing
 * database as an empty 0600 file, so that SQLite never creates it with its own 0644 (and the -wal
 * and -shm files, which SQLite gives the database's mode, are 0600 too). */
static int check_files(Store *s, char *err, size_t errlen) {
        static const char *const suffixes[] = { "", "-wal", "-shm" };
        bool db_exists = false;
        for (size_t i = 0; i < ELEMENTSOF(suffixes); i++) {
                _cleanup_free_ char *path = NULL;
                bool e;
                if (asprintf(&path, "%s%s", s->path, suffixes[i]) < 0)
                        return -ENOMEM;
                int r = check_state_file(path, i == 0, &e, err, errlen);
                if (r < 0)
                        return r;
                if (i == 0)
                        db_exists = e;
        }
        if (db_exists)
                return 0;
        _cleanup_close_ int fd = open(s->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
        if (fd < 0 || fchmod(fd, 0600) < 0) {
                int r = negative_errno();
                seterr(err, errlen, "Failed to create %s: %s", s->path, strerror(-r));
                return r;
        }
        return 0;
}

/* Prepares sql (no parameters: a PRAGMA or a SELECT) and steps to its first row: the statement
 * in *ret (the caller finalizes it), or a negative errno (no row is -EBADMSG, a corrupt answer). */
static int query_row(Store *s, const char *sql, sqlite3_stmt **ret, char *err, size_t errlen) {
        sqlite3_stmt *st = NULL;
        int rc = sqlite3_prepare_v2(s->db, sql, -1, &st, NULL);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, sql, err, errlen);
        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW) {
                int r = sql_fail(s, rc == SQLITE_DONE ? SQLITE_CORRUPT : rc, sql, err, errlen);
                sqlite3_finalize(st);
                return r;
        }
        *ret = st;
        return 0;
}

/* Reads one integer. */
static int query_int(Store *s, const char *sql, int64_t *ret, char *err, size_t errlen) {
        sqlite3_stmt *st;
        int r = query_row(s, sql, &st, err, errlen);
        if (r < 0)
                return r;
        *ret = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        return 0;
}

/* Reads one text value into buf. */
static int query_text(Store *s, const char *sql, char *buf, size_t len, char *err, size_t errlen) {
        sqlite3_stmt *st;
        int r = query_row(s, sql, &st, err, errlen);
        if (r < 0)
                return r;
        const unsigned char *t = sqlite3_column_text(st, 0);
        snprintf(buf, len, "%s", t ? (const char *) t : "");
        sqlite3_finalize(st);
        return 0;
}

static int exec_sql(Store *s, const char *sql, const char *what, char *err, size_t errlen) {
        int rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
        return rc == SQLITE_OK ? 0 : sql_fail(s, rc, what, err, errlen);
}

static int migrate(Store *s, char *err, size_t errlen) {
        int64_t version;
        int r;

        r = exec_sql(s, "BEGIN IMMEDIATE", "begin migration", err, errlen);
        if (r < 0)
                return r;
        /* Read again under the write lock: only now is the answer stable. */
        r = query_int(s, "PRAGMA user_version", &version, err, errlen);
        if (r < 0)
                goto fail;
        if (version < 0 || version > STORE_SCHEMA_VERSION) {
                seterr(err, errlen,
                       "%s has schema version %" PRIi64 " (this ballastd knows 0 to %d); refusing to use it", s->path,
                       version, STORE_SCHEMA_VERSION);
                r = version < 0 ? -EBADMSG : -EPROTONOSUPPORT;
                goto fail;
        }
        for (int64_t v = version; v < STORE_SCHEMA_VERSION; v++) {
                char what[64], pragma[96];
                snprintf(what, sizeof(what), "schema migration %" PRIi64 " to %" PRIi64, v, v + 1);
                r = exec_sql(s, migrations[v], what, err, errlen);
                if (r < 0)
                        goto fail;
                /* PRAGMA takes no bound parameters; these are our own integer constants. */
                snprintf(pragma, sizeof(pragma), "PRAGMA application_id = %d; PRAGMA user_version = %" PRIi64,
                         (int) STORE_APPLICATION_ID, v + 1);
                r = exec_sql(s, pragma, what, err, errlen);
                if (r < 0)
                        goto fail;
        }
        r = exec_sql(s, "COMMIT", "commit migration", err, errlen);
        if (r < 0)
                goto fail;
        return 0;
fail:
        if (!sqlite3_get_autocommit(s->db))
                (void) sqlite3_exec(s->db, "ROLLBACK", NULL, NULL, NULL);
        return r;
}

/* Looks at the database without writing to it: refuses foreign, newer and corrupt files. */
static int inspect(Store *s, char *err, size_t errlen) {
        int64_t app_id, version, objects;
        char why[512];
        int r;

        r = query_int(s, "PRAGMA application_id", &app_id, why, sizeof(why));
        if (r >= 0)
                r = query_int(s, "PRAGMA user_version", &version, why, sizeof(why));
        if (r >= 0)
                r = query_int(s, "SELECT count(*) FROM sqlite_master", &objects, why, sizeof(why));
        if (r < 0) {
                if (r == -EBADMSG)
                        seterr(err, errlen, "%s is not a usable SQLite database; refusing to use or overwrite it (%s)",
                               s->path, why);
                else
                        seterr(err, errlen, "%s", why);
                return r;
        }
        if (app_id == 0 && version == 0 && objects == 0)
                return 0; /* new */
        if (app_id != STORE_APPLICATION_ID) {
                seterr(err, errlen,
                       "%s is a SQLite database of another program (application_id %" PRIi64
                       "); refusing to use or overwrite it",
                       s->path, app_id);
                return -EBADMSG;
        }
        if (version > STORE_SCHEMA_VERSION) {
                seterr(err, errlen,
                       "%s has schema version %" PRIi64 ", newer than this ballastd's %d; refusing to use it "
                       "(run the newer ballastd, or move the file away)",
                       s->path, version, STORE_SCHEMA_VERSION);
                return -EPROTONOSUPPORT;
        }
        if (version < 1) {
                seterr(err, errlen,
                       "%s has ballast's application_id but schema version %" PRIi64 "; refusing to use it", s->path,
                       version);
                return -EBADMSG;
        }
        /* Corruption found now is refused with the path; found later it would fail random calls. */
        char check[256];
        r = query_text(s, "PRAGMA quick_check(1)", check, sizeof(check), why, sizeof(why));
        for (char *c = check; *c; c++)
                if (*c == '\n')
                        *c = ' '; /* one line */
        if (r < 0 || strcmp(check, "ok") != 0) {
                seterr(err, errlen, "%s is corrupt; refusing to use or overwrite it (%s)", s->path,
                       r < 0 ? why : check);
                return r < 0 && r != -EBADMSG ? r : -EBADMSG;
        }
        return 0;
}

/* ---- the checkpointer ---- */

/* Runs after every commit, on the committing (loop) thread, with the WAL's size in pages: wakes
 * the checkpointer when the WAL is big enough, and reports a failed checkpoint once. Never waits
 * on anything but the checkpointer's mutex, which the thread holds only for a few instructions. */
static int store_wal_hook(void *userdata, sqlite3 *db, const char *name, int pages) {
        Store *s = userdata;
        (void) db, (void) name;
        /* `pages` counts the whole WAL, checkpointed or not: ask again only when it has grown by
         * STORE_CKPT_PAGES since the last request, or since it restarted from the beginning. */
        if ((unsigned) pages < s->wal_pages_mark)
                s->wal_pages_mark = 0;
        if ((unsigned) pages < s->wal_pages_mark + STORE_CKPT_PAGES)
                return SQLITE_OK;
        s->wal_pages_mark = (unsigned) pages;
        pthread_mutex_lock(&s->ckpt_lock);
        if (!s->ckpt_wanted) {
                s->ckpt_wanted = true;
                pthread_cond_signal(&s->ckpt_cond);
        }
        int rc = s->ckpt_rc, shown = s->ckpt_rc_shown;
        s->ckpt_rc_shown = rc;
        pthread_mutex_unlock(&s->ckpt_lock);
        if (rc != shown && rc != SQLITE_OK)
                log_warning("%s: checkpoint failed: %s; the WAL grows until one succeeds", s->path, sqlite3_errstr(rc));
        return SQLITE_OK;
}

static void *ckpt_main(void *userdata) {
        Store *s = userdata;
        pthread_mutex_lock(&s->ckpt_lock);
        while (!s->ckpt_stop) {
                if (!s->ckpt_wanted) {
                        struct timespec deadline;
                        clock_gettime(CLOCK_MONOTONIC, &deadline);
                        deadline.tv_sec += STORE_CKPT_INTERVAL_S;
                        int k = pthread_cond_timedwait(&s->ckpt_cond, &s->ckpt_lock, &deadline);
                        if (s->ckpt_stop)
                                break;
                        if (k != ETIMEDOUT && !s->ckpt_wanted)
                                continue; /* spurious */
                }
                s->ckpt_wanted = false;
                pthread_mutex_unlock(&s->ckpt_lock);

                /* PASSIVE copies what it can without waiting for anyone: the loop's reads and
                 * commits go on beside it (WAL), and its fsyncs stall only this thread. It copies
                 * the WAL as it was when it began; commits made meanwhile are left for another
                 * round, so it goes again until a round finds nothing new (such a round costs no
                 * fsync). Each round has less to do than the one before. */
                int log = -1, done = -1, prev = -1, rc = SQLITE_OK;
                bool caught_up = false;
                for (int round = 0; round < STORE_CKPT_ROUNDS && !caught_up; round++) {
                        rc = sqlite3_wal_checkpoint_v2(s->ckpt_db, NULL, SQLITE_CHECKPOINT_PASSIVE, &log, &done);
                        if (rc != SQLITE_OK || log <= 0) {
                                caught_up = true; /* nothing to do, or nothing this can do */
                                break;
                        }
                        caught_up = done >= log && log == prev;
                        prev = log;
                }
                /* Under a steady stream of commits the rounds may not find the WAL still: then
                 * the next wake-up tries again. Past STORE_WAL_PAGES_MAX the WAL is bounded the
                 * hard way, with writers held back (RESTART: the loop's commits wait for it). */
                if (rc == SQLITE_OK && !caught_up && log >= STORE_WAL_PAGES_MAX) {
                        rc = sqlite3_wal_checkpoint_v2(s->ckpt_db, NULL, SQLITE_CHECKPOINT_RESTART, &log, &done);
                        caught_up = rc == SQLITE_OK && done >= log;
                }
                /* A WAL checkpointed to its end is started again from its beginning by the next
                 * commit, which first writes a new WAL header and fsyncs it (so that a power loss
                 * cannot mix old and new frames). That commit is made here, rewriting page 1 as it
                 * is, so that the fsync is this thread's too. A loop commit that comes meanwhile
                 * waits for it (store_busy()); one that comes first restarts the WAL itself. */
                if (caught_up && rc == SQLITE_OK && log > 0) {
                        rc = sqlite3_exec(
                                s->ckpt_db,
                                "BEGIN IMMEDIATE; PRAGMA user_version = " STRINGIFY(STORE_SCHEMA_VERSION) "; COMMIT",
                                NULL, NULL, NULL);
                        if (rc != SQLITE_OK && !sqlite3_get_autocommit(s->ckpt_db))
                                (void) sqlite3_exec(s->ckpt_db, "ROLLBACK", NULL, NULL, NULL);
                }

                pthread_mutex_lock(&s->ckpt_lock);
                /* BUSY: another checkpoint (a tool's) was running; the next wake-up will do. */
                s->ckpt_rc = rc == SQLITE_BUSY ? SQLITE_OK : rc;
        }
        pthread_mutex_unlock(&s->ckpt_lock);
        return NULL;
}

/* Opens the checkpointer's connection and starts its thread, then takes checkpoints away from the
 * loop's connection (the WAL hook replaces SQLite's automatic checkpoints). */
static int ckpt_start(Store *s, char *err, size_t errlen) {
        pthread_condattr_t attr;
        int k;
        if (!sqlite3_threadsafe()) {
                /* A SQLite built without threads: checkpoints stay on the loop, as SQLite does them. */
                return 0;
        }
        if ((k = pthread_condattr_init(&attr)) != 0)
                return -k;
        k = pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        if (k == 0)
                k = pthread_cond_init(&s->ckpt_cond, &attr);
        pthread_condattr_destroy(&attr);
        if (k != 0)
                return -k;
        if ((k = pthread_mutex_init(&s->ckpt_lock, NULL)) != 0) {
                pthread_cond_destroy(&s->ckpt_cond);
                return -k;
        }
        s->ckpt_sync_init = true;

        int rc = sqlite3_open_v2(s->db_path, &s->ckpt_db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW, NULL);
        if (rc != SQLITE_OK) {
                seterr(err, errlen, "%s: open for checkpoints: %s", s->path,
                       s->ckpt_db ? sqlite3_errmsg(s->ckpt_db) : sqlite3_errstr(rc));
                return rc == SQLITE_NOMEM ? -ENOMEM : -EIO;
        }
        sqlite3_extended_result_codes(s->ckpt_db, 1);
        sqlite3_db_config(s->ckpt_db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
        sqlite3_db_config(s->ckpt_db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
        sqlite3_db_config(s->ckpt_db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL);
        /* The loop's connection is the last to close, and checkpoints then. */
        sqlite3_db_config(s->ckpt_db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
        /* For a RESTART checkpoint, which waits for the writer. */
        sqlite3_busy_timeout(s->ckpt_db, STORE_BUSY_TIMEOUT_MS);
        /* Checkpoints fsync the WAL before copying it and the database after. */
        rc = sqlite3_exec(s->ckpt_db, "PRAGMA synchronous = NORMAL", NULL, NULL, NULL);
        if (rc != SQLITE_OK) {
                seterr(err, errlen, "%s: checkpoint connection: %s", s->path, sqlite3_errmsg(s->ckpt_db));
                return -EIO;
        }

        /* The thread takes no signals: the daemon handles them on its loop (signalfd), and a
         * signal sent to the process must never land here and kill it by default action. The
         * thread inherits the mask it is created with. */
        sigset_t all, old;
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        k = pthread_create(&s->ckpt_thread, NULL, ckpt_main, s);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (k != 0) {
                seterr(err, errlen, "%s: cannot start the checkpoint thread: %s", s->path, strerror(k));
                return -k;
        }
        s->ckpt_started = true;
        sqlite3_wal_hook(s->db, store_wal_hook, s);
        return 0;
}

static void ckpt_stop(Store *s) {
        if (s->ckpt_started) {
                pthread_mutex_lock(&s->ckpt_lock);
                s->ckpt_stop = true;
                pthread_cond_signal(&s->ckpt_cond);
                pthread_mutex_unlock(&s->ckpt_lock);
                pthread_join(s->ckpt_thread, NULL);
                s->ckpt_started = false;
        }
        if (s->db)
                sqlite3_wal_hook(s->db, NULL, NULL);
        sqlite3_close(s->ckpt_db);
        s->ckpt_db = NULL;
        if (s->ckpt_sync_init) {
                pthread_cond_destroy(&s->ckpt_cond);
                pthread_mutex_destroy(&s->ckpt_lock);
                s->ckpt_sync_init = false;
        }
}

/* The loop's busy handler: the lock it waits for is held for a few milliseconds at most (the
 * checkpointer restarting the WAL), so it looks again every 50 us rather than SQLite's 1, 2, 5,
 * 10 ms steps, up to STORE_BUSY_TIMEOUT_MS. */
#define STORE_BUSY_STEP_US 50
static int store_busy(void *userdata, int count) {
        (void) userdata;
        if ((long) count * STORE_BUSY_STEP_US >= (long) STORE_BUSY_TIMEOUT_MS * 1000)
                return 0;
        struct timespec ts = { .tv_nsec = STORE_BUSY_STEP_US * 1000 };
        (void) nanosleep(&ts, NULL);
        return 1;
}

static int store_open_db(Store *s, char *err, size_t errlen) {
        int rc, r;

        /* Not SQLITE_OPEN_CREATE: check_files() made the file. NOFOLLOW: a link put in its place
         * since is refused, not followed. */
        rc = sqlite3_open_v2(s->db_path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW, NULL);
        if (rc == SQLITE_CANTOPEN_SYMLINK) {
                seterr(err, errlen, "%s is a symbolic link; refusing to use it", s->path);
                return -ELOOP;
        }
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "open", err, errlen);
        sqlite3_extended_result_codes(s->db, 1);
        /* The file is untrusted input: no schema tricks, no triggers or views from it running our
         * functions, no extensions. */
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_DEFENSIVE, 1, NULL);
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, NULL);
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_ENABLE_LOAD_EXTENSION, 0, NULL);
        /* Until it is known to be ours, closing must not checkpoint into the file. */
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1, NULL);
        sqlite3_busy_handler(s->db, store_busy, s);

        r = inspect(s, err, errlen);
        if (r < 0)
                return r;

        char mode[32];
        r = query_text(s, "PRAGMA journal_mode = WAL", mode, sizeof(mode), err, errlen);
        if (r < 0)
                return r;
        if (strcmp(mode, "wal") != 0) {
                seterr(err, errlen, "%s: the file system does not support WAL (journal mode is '%s')", s->path, mode);
                return -EOPNOTSUPP;
        }
        /* NORMAL in WAL mode: a commit is in the WAL (written, not fsynced) when it returns, which
         * survives the death of the process; only a power loss can take the newest commits. */
        /* A 512 KiB page cache instead of SQLite's 2 MiB: the registry of 1,000 VMs and the bounded
         * journal are a few hundred KiB, and the daemon's RSS is a product goal (docs/benchmarks.md). */
        r = exec_sql(s, "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA cache_size = -512",
                     "set pragmas", err, errlen);
        if (r < 0)
                return r;
        char pragma[64];
        snprintf(pragma, sizeof(pragma), "PRAGMA journal_size_limit = %d", STORE_WAL_SIZE_LIMIT);
        r = exec_sql(s, pragma, "set journal_size_limit", err, errlen);
        if (r < 0)
                return r;

        r = migrate(s, err, errlen);
        if (r < 0)
                return r;
        sqlite3_db_config(s->db, SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 0, NULL);

        for (int i = 0; i < _STMT_MAX; i++) {
                rc = sqlite3_prepare_v3(s->db, stmt_sql[i], -1, SQLITE_PREPARE_PERSISTENT, &s->stmt[i], NULL);
                if (rc != SQLITE_OK)
                        return sql_fail(s, rc, "prepare", err, errlen);
        }
        return ckpt_start(s, err, errlen);
}

/* The state directory (s->lock_fd, opened without following a link) must be ours and writable
 * by nobody else: whoever can write to it can replace state.db. SQLite is then given the
 * directory's real path, so that SQLITE_OPEN_NOFOLLOW only refuses a link put in later. */
static int check_dir(Store *s, char *err, size_t errlen) {
        struct stat st;
        if (fstat(s->lock_fd, &st) < 0) {
                int r = negative_errno();
                seterr(err, errlen, "Failed to stat state directory %s: %s", s->dir, strerror(-r));
                return r;
        }
        if (st.st_uid != geteuid()) {
                seterr(err, errlen,
                       "State directory %s is owned by uid %u, not by this process's uid %u; refusing to use it",
                       s->dir, (unsigned) st.st_uid, (unsigned) geteuid());
                return -EPERM;
        }
        if (st.st_mode & (S_IWGRP | S_IWOTH)) {
                seterr(err, errlen,
                       "State directory %s is writable by its group or others (mode %04o); refusing to use it", s->dir,
                       (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        _cleanup_free_ char *real = realpath(s->dir, NULL);
        if (!real) {
                int r = negative_errno();
                seterr(err, errlen, "Failed to resolve state directory %s: %s", s->dir, strerror(-r));
                return r;
        }
        if (asprintf(&s->db_path, "%s/%s", real, STORE_DB_NAME) < 0) {
                s->db_path = NULL;
                return -ENOMEM;
        }
        return 0;
}

int store_open(const char *dir, Store **ret, char *err, size_t errlen) {
        int r;

        if (!dir || !dir[0] || !ret) {
                seterr(err, errlen, "No state directory given");
                return -EINVAL;
        }
        _cleanup_(store_closep) Store *s = calloc(1, sizeof(Store));
        if (!s)
                return -ENOMEM;
        s->lock_fd = -EBADF;
        s->journal_max = STORE_JOURNAL_MAX_DEFAULT;
        s->dir = strdup(dir);
        if (!s->dir || asprintf(&s->path, "%s/%s", dir, STORE_DB_NAME) < 0) {
                s->path = NULL;
                return -ENOMEM;
        }

        if (mkdir(dir, 0700) < 0 && errno != EEXIST) {
                r = negative_errno();
                seterr(err, errlen, "Failed to create state directory %s: %s", dir, strerror(-r));
                return r;
        }
        s->lock_fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (s->lock_fd < 0) {
                r = negative_errno();
                struct stat st;
                /* With O_DIRECTORY, a link fails as ENOTDIR, not ELOOP. */
                if (r == -ELOOP || (r == -ENOTDIR && lstat(dir, &st) == 0 && S_ISLNK(st.st_mode))) {
                        seterr(err, errlen, "State directory %s is a symbolic link; refusing to use it", dir);
                        return -ELOOP;
                }
                seterr(err, errlen, "Failed to open state directory %s: %s", dir, strerror(-r));
                return r;
        }
        /* Two daemons on one state would each command the VMs: the second is refused. The lock is
         * on the directory, not the database file, because closing any descriptor of the database
         * would drop SQLite's own POSIX locks on it. */
        if (flock(s->lock_fd, LOCK_EX | LOCK_NB) < 0) {
                r = negative_errno();
                if (r == -EWOULDBLOCK) {
                        seterr(err, errlen, "State directory %s is in use by another process", dir);
                        return -EBUSY;
                }
                seterr(err, errlen, "Failed to lock state directory %s: %s", dir, strerror(-r));
                return r;
        }

        r = check_dir(s, err, errlen);
        if (r < 0)
                return r;
        r = check_files(s, err, errlen);
        if (r < 0)
                return r;
        r = store_open_db(s, err, errlen);
        if (r < 0)
                return r;

        *ret = TAKE_PTR(s);
        return 0;
}

Store *store_close(Store *s) {
        if (!s)
                return NULL;
        /* The checkpointer first: the loop's connection, closed last, checkpoints the WAL into the
         * database and removes it. */
        ckpt_stop(s);
        for (int i = 0; i < _STMT_MAX; i++)
                sqlite3_finalize(s->stmt[i]);
        /* sqlite3_close() fails only with unfinalized statements, and there are none left. */
        sqlite3_close(s->db);
        safe_close(s->lock_fd);
        free(s->path);
        free(s->db_path);
        free(s->dir);
        free(s);
        return NULL;
}

const char *store_path(const Store *s) {
        return s ? s->path : NULL;
}

static int journal_trim(Store *s, char *err, size_t errlen) {
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_JOURNAL_TRIM];
        int rc = bind_u64(st, 1, s->journal_max);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        return step_done(s, st, "trim journal", err, errlen);
}

int store_set_journal_max(Store *s, uint64_t max, char *err, size_t errlen) {
        if (!s)
                return -EINVAL;
        if (max < 1 || max > STORE_U64_MAX) {
                seterr(err, errlen, "journal_max %" PRIu64 " is out of range (1 to 2^63-1)", max);
                return max < 1 ? -EINVAL : -ERANGE;
        }
        uint64_t old = s->journal_max;
        s->journal_max = max;
        int r = journal_trim(s, err, errlen);
        if (r < 0)
                s->journal_max = old;
        return r;
}

uint64_t store_get_journal_max(const Store *s) {
        return s ? s->journal_max : 0;
}

/* ---- VMs ---- */

void store_vm_done(StoreVm *vm) {
        if (!vm)
                return;
        free(vm->socket);
        free(vm->uri);
        free(vm->domain);
        vm->socket = vm->uri = vm->domain = NULL;
}

StoreVm *store_vm_array_free(StoreVm *vms, size_t n) {
        if (!vms)
                return NULL;
        for (size_t i = 0; i < n; i++)
                store_vm_done(&vms[i]);
        free(vms);
        return NULL;
}

static int bind_vm(sqlite3_stmt *st, const StoreVm *vm, bool with_created) {
        int rc = SQLITE_OK;
        rc = rc ?: sqlite3_bind_text(st, 1, vm->id, -1, SQLITE_STATIC);
        rc = rc ?: sqlite3_bind_text(st, 2, vm->driver, -1, SQLITE_STATIC);
        rc = rc ?: bind_text(st, 3, vm->socket);
        rc = rc ?: bind_text(st, 4, vm->uri);
        rc = rc ?: bind_text(st, 5, vm->domain);
        rc = rc ?: sqlite3_bind_int64(st, 6, vm->expected_uid);
        rc = rc ?: bind_u64(st, 7, vm->assigned);
        rc = rc ?: bind_u64(st, 8, vm->floor);
        rc = rc ?: sqlite3_bind_int64(st, 9, vm->shares);
        rc = rc ?: bind_u64(st, 10, vm->last_target);
        rc = rc ?: sqlite3_bind_int(st, 11, vm->parked ? 1 : 0);
        rc = rc ?: bind_u64(st, 12, vm->park_prev);
        rc = rc ?: bind_u64(st, 13, vm->unparked_until);
        if (with_created)
                rc = rc ?: bind_u64(st, 14, vm->created);
        return rc;
}

/* Checks vm and binds it to st (the insert, with its creation time, or the update). */
static int vm_check_bind(Store *s, sqlite3_stmt *st, const StoreVm *vm, bool insert, char *err, size_t errlen) {
        int r = vm_check(vm, err, errlen);
        if (r < 0)
                return r;
        int rc = bind_vm(st, vm, insert);
        return rc == SQLITE_OK ? 0 : sql_fail(s, rc, "bind", err, errlen);
}

int store_vm_put(Store *s, const StoreVm *vm, char *err, size_t errlen) {
        if (!s || !vm)
                return -EINVAL;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_VM_INSERT];
        int r = vm_check_bind(s, st, vm, true, err, errlen);
        if (r < 0)
                return r;
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE)
                return 0;
        if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
                seterr(err, errlen, "VM '%s' already exists", vm->id);
                return -EEXIST;
        }
        return sql_fail(s, rc, "insert VM", err, errlen);
}

static int changed_one(Store *s, const char *id, char *err, size_t errlen) {
        if (sqlite3_changes(s->db) > 0)
                return 0;
        char buf[STORE_VM_ID_MAX + 4];
        seterr(err, errlen, "No VM '%s'", id_for_message(id, buf));
        return -ENOENT;
}

int store_vm_update(Store *s, const StoreVm *vm, char *err, size_t errlen) {
        if (!s || !vm)
                return -EINVAL;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_VM_UPDATE];
        int r = vm_check_bind(s, st, vm, false, err, errlen);
        if (r < 0)
                return r;
        r = step_done(s, st, "update VM", err, errlen);
        return r < 0 ? r : changed_one(s, vm->id, err, errlen);
}

static int check_id(const char *id, char *err, size_t errlen) {
        if (store_vm_id_is_valid(id))
                return 0;
        seterr(err, errlen, "Invalid VM id");
        return -EINVAL;
}

int store_vm_set_target(Store *s, const char *id, uint64_t target, char *err, size_t errlen) {
        if (!s)
                return -EINVAL;
        int r = check_id(id, err, errlen);
        if (r < 0)
                return r;
        if (target > STORE_U64_MAX) {
                seterr(err, errlen, "VM '%s': target %" PRIu64 " is above 2^63-1", id, target);
                return -ERANGE;
        }
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_VM_SET_TARGET];
        int rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        rc = rc ?: bind_u64(st, 2, target);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        r = step_done(s, st, "set VM target", err, errlen);
        return r < 0 ? r : changed_one(s, id, err, errlen);
}

int store_vm_set_targets(Store *s, const StoreTarget *t, size_t n, char *err, size_t errlen) {
        if (!s || (!t && n))
                return -EINVAL;
        if (n == 0)
                return 0;
        int r = tx_begin(s, err, errlen);
        if (r < 0)
                return r;
        int first = 0;
        for (size_t i = 0; i < n; i++) {
                char e[256] = "";
                int k = store_vm_set_target(s, t[i].id, t[i].target, e, sizeof e);
                if (k == -ENOENT || k == -ERANGE || k == -EINVAL) {
                        if (first == 0) {
                                first = k;
                                seterr(err, errlen, "%s", e);
                        }
                } else if (k < 0) {
                        seterr(err, errlen, "%s", e);
                        tx_rollback(s);
                        return k;
                }
        }
        r = tx_commit(s, err, errlen);
        if (r < 0) {
                tx_rollback(s);
                return r;
        }
        return first;
}

int store_vm_set_park(Store *s, const char *id, bool parked, uint64_t park_prev, uint64_t unparked_until, char *err,
                      size_t errlen) {
        if (!s)
                return -EINVAL;
        int r = check_id(id, err, errlen);
        if (r < 0)
                return r;
        if (park_prev > STORE_U64_MAX || unparked_until > STORE_U64_MAX) {
                seterr(err, errlen, "VM '%s': park_prev or unparked_until is above 2^63-1", id);
                return -ERANGE;
        }
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_VM_SET_PARK];
        int rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        rc = rc ?: sqlite3_bind_int(st, 2, parked ? 1 : 0);
        rc = rc ?: bind_u64(st, 3, park_prev);
        rc = rc ?: bind_u64(st, 4, unparked_until);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        r = step_done(s, st, "set VM parking state", err, errlen);
        return r < 0 ? r : changed_one(s, id, err, errlen);
}

int store_vm_delete(Store *s, const char *id, char *err, size_t errlen) {
        if (!s)
                return -EINVAL;
        int r = check_id(id, err, errlen);
        if (r < 0)
                return r;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_VM_DELETE];
        int rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        r = step_done(s, st, "delete VM", err, errlen);
        return r < 0 ? r : changed_one(s, id, err, errlen);
}

int store_vm_get(Store *s, const char *id, StoreVm *ret, char *err, size_t errlen) {
        if (!s || !ret)
                return -EINVAL;
        int r = check_id(id, err, errlen);
        if (r < 0)
                return r;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_VM_GET];
        int rc = sqlite3_bind_text(st, 1, id, -1, SQLITE_STATIC);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
                seterr(err, errlen, "No VM '%s'", id);
                return -ENOENT;
        }
        if (rc != SQLITE_ROW)
                return sql_fail(s, rc, "read VM", err, errlen);
        return vm_from_row(s, st, ret, err, errlen);
}

static int vm_row(Store *s, sqlite3_stmt *st, void *ret, char *err, size_t errlen) {
        return vm_from_row(s, st, ret, err, errlen);
}

static void vm_array_free(void *a, size_t n) {
        store_vm_array_free(a, n);
}

int store_vm_load_all(Store *s, StoreVm **ret, size_t *ret_n, char *err, size_t errlen) {
        if (!s || !ret || !ret_n)
                return -EINVAL;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_VM_ALL];
        return read_rows(s, st, sizeof(StoreVm), vm_row, vm_array_free, "read VMs", (void **) ret, ret_n, err, errlen);
}

/* ---- the hold ---- */

int store_hold_set(Store *s, uint64_t bytes, uint64_t until, const char *reason, uint64_t created, char *err,
                   size_t errlen) {
        if (!s)
                return -EINVAL;
        if (!reason)
                reason = "";
        if (!reason_is_valid(reason)) {
                seterr(err, errlen, "Hold reason is not UTF-8 of at most %d characters", STORE_HOLD_REASON_MAX);
                return -EINVAL;
        }
        if (bytes > STORE_U64_MAX || until > STORE_U64_MAX || created > STORE_U64_MAX) {
                seterr(err, errlen, "Hold bytes, until or created is above 2^63-1");
                return -ERANGE;
        }
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_HOLD_SET];
        int rc = bind_u64(st, 1, bytes);
        rc = rc ?: bind_u64(st, 2, until);
        rc = rc ?: sqlite3_bind_text(st, 3, reason, -1, SQLITE_STATIC);
        rc = rc ?: bind_u64(st, 4, created);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        return step_done(s, st, "set hold", err, errlen);
}

int store_hold_clear(Store *s, char *err, size_t errlen) {
        if (!s)
                return -EINVAL;
        int r = run_simple(s, STMT_HOLD_CLEAR, "clear hold", err, errlen);
        if (r < 0)
                return r;
        return sqlite3_changes(s->db) > 0 ? 1 : 0;
}

int store_hold_get(Store *s, StoreHold *ret, char *err, size_t errlen) {
        if (!s || !ret)
                return -EINVAL;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_HOLD_GET];
        int rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
                seterr(err, errlen, "No hold");
                return -ENOENT;
        }
        if (rc != SQLITE_ROW)
                return sql_fail(s, rc, "read hold", err, errlen);

        StoreHold h = {};
        const char *reason, *field = NULL;
        size_t n;
        int col = 0;
        if (!col_u64(st, col, &h.bytes))
                field = "bytes";
        else if (!col_u64(st, ++col, &h.until))
                field = "until";
        else if (!col_text(st, ++col, STORE_HOLD_REASON_BYTES, false, &reason, &n) || !reason_is_valid(reason))
                field = "reason";
        else if (!col_u64(st, ++col, &h.created))
                field = "created";
        if (field)
                return bad_row(s, st, col, "hold", field, err, errlen);
        memcpy(h.reason, reason, n + 1);
        *ret = h;
        return 0;
}

/* ---- the journal ---- */

StoreJournalEntry *store_journal_free_array(StoreJournalEntry *entries, size_t n) {
        if (!entries)
                return NULL;
        for (size_t i = 0; i < n; i++) {
                free(entries[i].targets);
                free(entries[i].reasons);
        }
        free(entries);
        return NULL;
}

static int journal_insert(Store *s, const StoreJournalEntry *e, const char *targets, const char *reasons, char *err,
                          size_t errlen) {
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_JOURNAL_INSERT];
        int rc = bind_u64(st, 1, e->time);
        rc = rc ?: sqlite3_bind_text(st, 2, e->trigger, -1, SQLITE_STATIC);
        rc = rc ?: sqlite3_bind_text(st, 3, e->state, -1, SQLITE_STATIC);
        rc = rc ?: bind_u64(st, 4, e->available);
        rc = rc ?: bind_u64(st, 5, e->requested);
        rc = rc ?: bind_u64(st, 6, e->planned);
        rc = rc ?: sqlite3_bind_text(st, 7, targets, -1, SQLITE_STATIC);
        rc = rc ?: sqlite3_bind_text(st, 8, reasons, -1, SQLITE_STATIC);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        return step_done(s, st, "append to journal", err, errlen);
}

int store_journal_append(Store *s, const StoreJournalEntry *e, char *err, size_t errlen) {
        if (!s || !e)
                return -EINVAL;
        if (memchr(e->trigger, 0, sizeof(e->trigger)) == NULL || !word_is_valid(e->trigger) ||
            memchr(e->state, 0, sizeof(e->state)) == NULL || !word_is_valid(e->state)) {
                seterr(err, errlen, "Journal trigger and state must be 1-%d characters of [a-z0-9_-]", STORE_WORD_MAX);
                return -EINVAL;
        }
        const char *targets = e->targets ? e->targets : "{}";
        if (!targets_are_valid(targets, strnlen(targets, STORE_TARGETS_MAX + 1))) {
                seterr(err, errlen,
                       "Journal targets must be a JSON object of VM ids to integers >= 0, at most %zu bytes",
                       STORE_TARGETS_MAX);
                return -EINVAL;
        }
        const char *reasons = e->reasons ? e->reasons : "{}";
        if (!reasons_are_valid(reasons, strnlen(reasons, STORE_TARGETS_MAX + 1))) {
                seterr(err, errlen, "Journal reasons must be a JSON object of VM ids to 1-%d characters of [a-z0-9_-]",
                       STORE_WORD_MAX);
                return -EINVAL;
        }
        if (e->time > STORE_U64_MAX || e->available > STORE_U64_MAX || e->requested > STORE_U64_MAX ||
            e->planned > STORE_U64_MAX) {
                seterr(err, errlen, "Journal time, available, requested or planned is above 2^63-1");
                return -ERANGE;
        }

        int r = tx_begin(s, err, errlen);
        if (r < 0)
                return r;
        r = journal_insert(s, e, targets, reasons, err, errlen);
        if (r >= 0)
                r = journal_trim(s, err, errlen);
        if (r >= 0)
                r = tx_commit(s, err, errlen);
        if (r < 0)
                tx_rollback(s);
        return r;
}

static int journal_from_row(Store *s, sqlite3_stmt *st, StoreJournalEntry *ret, char *err, size_t errlen) {
        StoreJournalEntry e = {};
        const char *trigger, *state, *targets, *reasons, *field = NULL;
        size_t nt, ns, n, nr;
        int col = 0;

        if (!col_u64(st, col, &e.time))
                field = "time";
        else if (!col_text(st, ++col, STORE_WORD_MAX, false, &trigger, &nt) || !word_is_valid(trigger))
                field = "trigger";
        else if (!col_text(st, ++col, STORE_WORD_MAX, false, &state, &ns) || !word_is_valid(state))
                field = "state";
        else if (!col_u64(st, ++col, &e.available))
                field = "available";
        else if (!col_u64(st, ++col, &e.requested))
                field = "requested";
        else if (!col_u64(st, ++col, &e.planned))
                field = "planned";
        else if (!col_text(st, ++col, STORE_TARGETS_MAX, false, &targets, &n) || !targets_are_valid(targets, n))
                field = "targets";
        else if (!col_text(st, ++col, STORE_TARGETS_MAX, false, &reasons, &nr) || !reasons_are_valid(reasons, nr))
                field = "reasons";
        if (field) {
                char row[48];
                snprintf(row, sizeof(row), "journal #%lld", (long long) sqlite3_column_int64(st, 8));
                return bad_row(s, st, col, row, field, err, errlen);
        }
        memcpy(e.trigger, trigger, nt + 1);
        memcpy(e.state, state, ns + 1);
        e.seq = (uint64_t) sqlite3_column_int64(st, 8);
        e.targets = strndup(targets, n);
        e.reasons = strndup(reasons, nr);
        if (!e.targets || !e.reasons) {
                free(e.targets);
                free(e.reasons);
                return -ENOMEM;
        }
        *ret = e;
        return 0;
}

static int journal_row(Store *s, sqlite3_stmt *st, void *ret, char *err, size_t errlen) {
        return journal_from_row(s, st, ret, err, errlen);
}

static void journal_array_free(void *a, size_t n) {
        store_journal_free_array(a, n);
}

int store_journal_list(Store *s, size_t limit, StoreJournalEntry **ret, size_t *ret_n, char *err, size_t errlen) {
        if (!s || !ret || !ret_n)
                return -EINVAL;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_JOURNAL_LIST];
        int rc = sqlite3_bind_int64(st, 1, (sqlite3_int64) MIN(limit, (size_t) INT64_MAX));
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        return read_rows(s, st, sizeof(StoreJournalEntry), journal_row, journal_array_free, "read journal",
                         (void **) ret, ret_n, err, errlen);
}

int store_journal_keys(Store *s, size_t limit, StoreJournalKey *ret, size_t *ret_n, char *err, size_t errlen) {
        if (!s || !ret || !ret_n)
                return -EINVAL;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_JOURNAL_KEYS];
        int rc = sqlite3_bind_int64(st, 1, (sqlite3_int64) MIN(limit, (size_t) INT64_MAX));
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        size_t n = 0;
        while (n < limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
                if (!col_u64(st, 0, &ret[n].seq) || !col_u64(st, 1, &ret[n].time)) {
                        char row[48];
                        snprintf(row, sizeof(row), "journal #%lld", (long long) sqlite3_column_int64(st, 0));
                        return bad_row(s, st, 1, row, "time", err, errlen);
                }
                n++;
        }
        if (n < limit && rc != SQLITE_DONE)
                return sql_fail(s, rc, "read journal", err, errlen);
        *ret_n = n;
        return 0;
}

int store_journal_get(Store *s, uint64_t seq, StoreJournalEntry *ret, char *err, size_t errlen) {
        if (!s || !ret || seq > STORE_U64_MAX)
                return -EINVAL;
        _cleanup_stmt_ sqlite3_stmt *st = s->stmt[STMT_JOURNAL_GET];
        int rc = sqlite3_bind_int64(st, 1, (sqlite3_int64) seq);
        if (rc != SQLITE_OK)
                return sql_fail(s, rc, "bind", err, errlen);
        rc = sqlite3_step(st);
        if (rc == SQLITE_DONE) {
                seterr(err, errlen, "journal entry #%" PRIu64 " is gone", seq);
                return -ENOENT;
        }
        if (rc != SQLITE_ROW)
                return sql_fail(s, rc, "read journal", err, errlen);
        return journal_from_row(s, st, ret, err, errlen);
}
