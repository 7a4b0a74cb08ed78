/* SPDX-License-Identifier: MIT */
/* The state store (B7): round trips of every record, errors, reopening, survival of a SIGKILL,
 * journal bounds, schema versions, refusal of foreign/corrupt/newer files, and validation of rows
 * edited behind the store's back. Each test runs in its own mkdtemp directory, removed by the
 * teardown whether the test passed or not. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "shared/macro.h"
#include "store/store.h"

#define P62 (UINT64_C(1) << 62)
#define P63 (UINT64_C(1) << 63)

typedef struct Fx {
        char tmp[256]; /* the mkdtemp directory */
        char dir[512]; /* the state directory inside it (created by store_open) */
        char db[1024]; /* dir/state.db */
        Store *s;
        char err[1024];
} Fx;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st, (void) flag, (void) ftw;
        return remove(path);
}

static int setup(void **state) {
        Fx *f = calloc(1, sizeof(Fx));
        if (!f)
                return -1;
        snprintf(f->tmp, sizeof(f->tmp), "%s/ballast-test-store-XXXXXX", getenv("TMPDIR") ?: "/tmp");
        if (!mkdtemp(f->tmp)) {
                free(f);
                return -1;
        }
        snprintf(f->dir, sizeof(f->dir), "%s/state", f->tmp);
        snprintf(f->db, sizeof(f->db), "%s/state.db", f->dir);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fx *f = *state;
        f->s = store_close(f->s);
        int r = nftw(f->tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS);
        free(f);
        return r == 0 ? 0 : -1;
}

static void fx_open(Fx *f) {
        f->err[0] = 0;
        int r = store_open(f->dir, &f->s, f->err, sizeof(f->err));
        if (r < 0)
                fail_msg("store_open(%s) = %d: %s", f->dir, r, f->err);
}

static void fx_reopen(Fx *f) {
        f->s = store_close(f->s);
        fx_open(f);
}

/* A valid VM whose strings are literals (the store only reads them). */
static StoreVm vm_make(const char *id, const char *driver) {
        StoreVm vm = {
                .expected_uid = 107,
                .assigned = 512 * MiB,
                .floor = 192 * MiB,
                .shares = 1000,
                .last_target = 512 * MiB,
                .created = UINT64_C(1767225600000000),
        };
        snprintf(vm.id, sizeof(vm.id), "%s", id);
        snprintf(vm.driver, sizeof(vm.driver), "%s", driver);
        if (strcmp(driver, "libvirt") == 0) {
                vm.uri = (char *) "qemu:///system";
                vm.domain = (char *) "0b6a1f8e-7c1d-4a57-9a43-5e1b2c3d4e5f";
                vm.expected_uid = -1;
        } else
                vm.socket = (char *) "/run/ballast-test/qmp.sock";
        return vm;
}

static bool str_eq(const char *a, const char *b) {
        return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

static void assert_vm_equal(const StoreVm *a, const StoreVm *b) {
        assert_string_equal(a->id, b->id);
        assert_string_equal(a->driver, b->driver);
        if (!str_eq(a->socket, b->socket) || !str_eq(a->uri, b->uri) || !str_eq(a->domain, b->domain))
                fail_msg("VM %s: strings differ", a->id);
        assert_int_equal(a->expected_uid, b->expected_uid);
        assert_int_equal(a->assigned, b->assigned);
        assert_int_equal(a->floor, b->floor);
        assert_int_equal(a->shares, b->shares);
        assert_int_equal(a->last_target, b->last_target);
        assert_int_equal(a->parked, b->parked);
        assert_int_equal(a->park_prev, b->park_prev);
        assert_int_equal(a->unparked_until, b->unparked_until);
        assert_int_equal(a->created, b->created);
}

static void assert_vm_stored(Fx *f, const StoreVm *expect) {
        StoreVm got;
        int r = store_vm_get(f->s, expect->id, &got, f->err, sizeof(f->err));
        if (r < 0)
                fail_msg("store_vm_get(%s) = %d: %s", expect->id, r, f->err);
        assert_vm_equal(&got, expect);
        store_vm_done(&got);
}

static StoreJournalEntry entry_make(uint64_t time, const char *trigger, const char *targets) {
        StoreJournalEntry e = {
                .time = time,
                .available = 20 * GiB,
                .requested = 2 * GiB,
                .planned = GiB + time,
                .targets = (char *) targets,
        };
        snprintf(e.trigger, sizeof(e.trigger), "%s", trigger);
        snprintf(e.state, sizeof(e.state), "pressure");
        return e;
}

static void journal_append_n(Fx *f, uint64_t from, uint64_t to) {
        for (uint64_t t = from; t <= to; t++) {
                char targets[64];
                snprintf(targets, sizeof(targets), "{\"vm1\": %" PRIu64 "}", t);
                StoreJournalEntry e = entry_make(t, "timer", targets);
                int r = store_journal_append(f->s, &e, f->err, sizeof(f->err));
                if (r < 0)
                        fail_msg("store_journal_append(%" PRIu64 ") = %d: %s", t, r, f->err);
        }
}

/* Runs SQL on the database through its own connection, as a tool or an attacker would. */
static void db_exec(const char *path, const char *sql) {
        sqlite3 *db = NULL;
        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL), SQLITE_OK);
        char *msg = NULL;
        int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
        if (rc != SQLITE_OK) {
                char copy[512];
                snprintf(copy, sizeof(copy), "%s", msg ?: "?");
                sqlite3_free(msg);
                sqlite3_close(db);
                fail_msg("%s: %s", sql, copy);
        }
        sqlite3_close(db);
}

static int64_t db_int(const char *path, const char *sql) {
        sqlite3 *db = NULL;
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        int64_t v = sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        sqlite3_close(db);
        return v;
}

static void db_text(const char *path, const char *sql, char *buf, size_t len) {
        sqlite3 *db = NULL;
        sqlite3_stmt *st = NULL;
        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
        assert_int_equal(sqlite3_step(st), SQLITE_ROW);
        snprintf(buf, len, "%s", (const char *) sqlite3_column_text(st, 0));
        sqlite3_finalize(st);
        sqlite3_close(db);
}

/* The whole file, for before/after comparisons; *ret_n bytes, caller frees. */
static char *file_read(const char *path, size_t *ret_n) {
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        char *buf = NULL;
        size_t n = 0, cap = 0;
        for (;;) {
                if (n == cap) {
                        cap = cap ? cap * 2 : 4096;
                        buf = realloc(buf, cap);
                        assert_non_null(buf);
                }
                size_t k = fread(buf + n, 1, cap - n, fp);
                if (k == 0)
                        break;
                n += k;
        }
        fclose(fp);
        *ret_n = n;
        return buf;
}

static void file_write(const char *path, const void *data, size_t n) {
        FILE *fp = fopen(path, "wb");
        assert_non_null(fp);
        assert_int_equal(fwrite(data, 1, n, fp), n);
        assert_int_equal(fclose(fp), 0);
}

static bool exists(const char *path) {
        return access(path, F_OK) == 0;
}

/* Opening must fail with `expect`, name the path, leave *ret alone and leave the file as it was. */
static void assert_open_refused(Fx *f, int expect, const char *needle) {
        size_t before_n, after_n;
        _cleanup_free_ char *before = file_read(f->db, &before_n);
        Store *s = (Store *) 0x1;
        f->err[0] = 0;
        int r = store_open(f->dir, &s, f->err, sizeof(f->err));
        print_message("refused (%d): %s\n", r, f->err);
        assert_int_equal(r, expect);
        assert_ptr_equal(s, (Store *) 0x1);
        assert_non_null(strstr(f->err, f->db));
        if (needle)
                assert_non_null(strstr(f->err, needle));
        _cleanup_free_ char *after = file_read(f->db, &after_n);
        assert_int_equal(before_n, after_n);
        assert_memory_equal(before, after, before_n);
}

/* ---- tests ---- */

static void test_open_creates_private_dir(void **state) {
        Fx *f = *state;
        fx_open(f);
        struct stat st;
        assert_int_equal(stat(f->dir, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0700);
        assert_true(exists(f->db));
        assert_string_equal(store_path(f->s), f->db);
        assert_int_equal(store_get_journal_max(f->s), STORE_JOURNAL_MAX_DEFAULT);

        /* A second store on the same directory is refused while the first is open. */
        Store *s2 = NULL;
        assert_int_equal(store_open(f->dir, &s2, f->err, sizeof(f->err)), -EBUSY);
        assert_null(s2);
        assert_non_null(strstr(f->err, f->dir));
        fx_reopen(f);

        /* Not a directory; a missing parent; no directory at all. */
        char path[PATH_MAX + 16];
        snprintf(path, sizeof(path), "%s/file", f->tmp);
        file_write(path, "x", 1);
        assert_int_equal(store_open(path, &s2, f->err, sizeof(f->err)), -ENOTDIR);
        snprintf(path, sizeof(path), "%s/missing/state", f->tmp);
        assert_int_equal(store_open(path, &s2, f->err, sizeof(f->err)), -ENOENT);
        assert_int_equal(store_open(NULL, &s2, f->err, sizeof(f->err)), -EINVAL);
        assert_int_equal(store_open("", &s2, NULL, 0), -EINVAL);
        assert_null(s2);
        assert_null(store_close(NULL));
}

static void test_schema_version(void **state) {
        Fx *f = *state;
        fx_open(f);
        assert_int_equal(db_int(f->db, "PRAGMA user_version"), 2);
        assert_int_equal(db_int(f->db, "PRAGMA user_version"), STORE_SCHEMA_VERSION);
        assert_int_equal(db_int(f->db, "PRAGMA application_id"), STORE_APPLICATION_ID);
        char mode[16];
        db_text(f->db, "PRAGMA journal_mode", mode, sizeof(mode));
        assert_string_equal(mode, "wal");
        assert_int_equal(db_int(f->db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
                                       "('vm', 'hold', 'journal')"),
                         3);
        /* Reopening does not migrate again. */
        fx_reopen(f);
        assert_int_equal(db_int(f->db, "PRAGMA user_version"), 2);
}

/* A version 1 store (no journal reasons) is migrated on open; its entries read with no reasons. */
/* An entry's key names it for good: keys come newest first, an entry read by its sequence number
 * is the one listed, a trimmed one is gone (-ENOENT), and a sequence number is never reused (the
 * API keeps what it serialised of an entry under its key). */
static void test_journal_keys_and_get(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreJournalKey keys[8];
        size_t n = 99;
        assert_int_equal(store_journal_keys(f->s, 8, keys, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 0);
        journal_append_n(f, 1, 5);
        assert_int_equal(store_journal_keys(f->s, 3, keys, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 3);
        StoreJournalEntry *es;
        size_t ne;
        assert_int_equal(store_journal_list(f->s, 3, &es, &ne, f->err, sizeof(f->err)), 0);
        assert_int_equal(ne, 3);
        for (size_t i = 0; i < n; i++) {
                assert_int_equal(keys[i].seq, es[i].seq);
                assert_int_equal(keys[i].time, es[i].time);
                if (i > 0)
                        assert_true(keys[i].seq < keys[i - 1].seq);
                StoreJournalEntry e;
                assert_int_equal(store_journal_get(f->s, keys[i].seq, &e, f->err, sizeof(f->err)), 0);
                assert_int_equal(e.seq, keys[i].seq);
                assert_int_equal(e.time, es[i].time);
                assert_string_equal(e.trigger, es[i].trigger);
                assert_string_equal(e.targets, es[i].targets);
                assert_string_equal(e.reasons, es[i].reasons);
                free(e.targets);
                free(e.reasons);
        }
        es = store_journal_free_array(es, ne);
        uint64_t newest = keys[0].seq, oldest_kept = keys[2].seq;
        assert_int_equal(store_set_journal_max(f->s, 2, f->err, sizeof(f->err)), 0);
        StoreJournalEntry e;
        assert_int_equal(store_journal_get(f->s, oldest_kept, &e, f->err, sizeof(f->err)), -ENOENT);
        journal_append_n(f, 6, 6);
        assert_int_equal(store_journal_keys(f->s, 8, keys, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 2);
        assert_true(keys[0].seq > newest);
        assert_int_equal(keys[1].seq, newest);
}

static void test_migration_1_to_2(void **state) {
        Fx *f = *state;
        fx_open(f);
        journal_append_n(f, 1, 2);
        f->s = store_close(f->s);
        db_exec(f->db, "ALTER TABLE journal DROP COLUMN reasons; PRAGMA user_version = 1");
        fx_open(f);
        assert_int_equal(db_int(f->db, "PRAGMA user_version"), 2);
        StoreJournalEntry *es;
        size_t n;
        assert_int_equal(store_journal_list(f->s, 10, &es, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 2);
        assert_string_equal(es[0].targets, "{\"vm1\": 2}");
        assert_string_equal(es[0].reasons, "{}");
        es = store_journal_free_array(es, n);
        StoreJournalEntry e = entry_make(3, "api", "{\"vm1\": 3}");
        e.reasons = (char *) "{\"vm1\": \"no-gain\"}";
        assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_journal_list(f->s, 1, &es, &n, f->err, sizeof(f->err)), 0);
        assert_string_equal(es[0].reasons, "{\"vm1\": \"no-gain\"}");
        store_journal_free_array(es, n);
}

static void test_vm_round_trip(void **state) {
        Fx *f = *state;
        fx_open(f);

        StoreVm q = vm_make("vm-q.1", "qemu");
        StoreVm fc = vm_make("fc_2", "firecracker");
        fc.socket = (char *) "/run/fc/api.sock";
        fc.expected_uid = 0;
        fc.shares = 1;
        fc.parked = true;
        fc.park_prev = 3 * GiB;
        fc.last_target = 128 * MiB;
        StoreVm chv = vm_make("Chv3", "cloud-hypervisor");
        chv.expected_uid = -1;
        chv.shares = UINT32_MAX;
        chv.unparked_until = UINT64_C(1767225660000000);
        chv.floor = 0;
        StoreVm lv = vm_make("lv", "libvirt");
        lv.socket = (char *) "/ignored/but/kept.sock";

        const StoreVm *all[] = { &q, &fc, &chv, &lv };
        for (size_t i = 0; i < ELEMENTSOF(all); i++) {
                int r = store_vm_put(f->s, all[i], f->err, sizeof(f->err));
                if (r < 0)
                        fail_msg("put %s: %d %s", all[i]->id, r, f->err);
        }
        for (size_t i = 0; i < ELEMENTSOF(all); i++)
                assert_vm_stored(f, all[i]);

        /* load_all: every VM, sorted by id (byte order). */
        StoreVm *vms = NULL;
        size_t n = 0;
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 4);
        assert_vm_equal(&vms[0], &chv);
        assert_vm_equal(&vms[1], &fc);
        assert_vm_equal(&vms[2], &lv);
        assert_vm_equal(&vms[3], &q);
        vms = store_vm_array_free(vms, n);
        assert_null(vms);

        /* update replaces everything but created. */
        StoreVm q2 = q;
        q2.socket = (char *) "/run/other/qmp.sock";
        q2.expected_uid = 1000;
        q2.assigned = 2 * GiB;
        q2.floor = 256 * MiB;
        q2.shares = 5;
        q2.last_target = GiB;
        q2.created = 1; /* ignored */
        assert_int_equal(store_vm_update(f->s, &q2, f->err, sizeof(f->err)), 0);
        q2.created = q.created;
        assert_vm_stored(f, &q2);

        /* set_target and set_park touch only their columns. */
        assert_int_equal(store_vm_set_target(f->s, "vm-q.1", 768 * MiB, f->err, sizeof(f->err)), 0);
        q2.last_target = 768 * MiB;
        assert_vm_stored(f, &q2);
        /* Many at once: a VM that is not there (or a bad target) is skipped and named, the others
         * recorded; none at all is no transaction. */
        StoreTarget ts[] = { { "ghost", MiB }, { "vm-q.1", 700 * MiB }, { "vm-q.1", UINT64_MAX } };
        f->err[0] = 0;
        assert_int_equal(store_vm_set_targets(f->s, ts, 3, f->err, sizeof(f->err)), -ENOENT);
        assert_non_null(strstr(f->err, "ghost"));
        q2.last_target = 700 * MiB;
        assert_vm_stored(f, &q2);
        assert_int_equal(store_vm_set_targets(f->s, ts + 1, 1, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_vm_set_targets(f->s, NULL, 0, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_vm_set_targets(f->s, NULL, 1, f->err, sizeof(f->err)), -EINVAL);
        ts[1].target = 768 * MiB;
        assert_int_equal(store_vm_set_targets(f->s, ts + 1, 1, f->err, sizeof(f->err)), 0);
        q2.last_target = 768 * MiB;
        assert_vm_stored(f, &q2);
        assert_int_equal(store_vm_set_park(f->s, "vm-q.1", true, 768 * MiB, 0, f->err, sizeof(f->err)), 0);
        q2.parked = true;
        q2.park_prev = 768 * MiB;
        assert_vm_stored(f, &q2);
        assert_int_equal(store_vm_set_park(f->s, "vm-q.1", false, 0, 99, f->err, sizeof(f->err)), 0);
        q2.parked = false;
        q2.park_prev = 0;
        q2.unparked_until = 99;
        assert_vm_stored(f, &q2);

        /* delete */
        assert_int_equal(store_vm_delete(f->s, "fc_2", f->err, sizeof(f->err)), 0);
        StoreVm got = { .socket = (char *) "sentinel" };
        assert_int_equal(store_vm_get(f->s, "fc_2", &got, f->err, sizeof(f->err)), -ENOENT);
        assert_string_equal(got.socket, "sentinel");
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 3);
        vms = store_vm_array_free(vms, n);

        /* An empty registry is NULL, 0. */
        assert_int_equal(store_vm_delete(f->s, "vm-q.1", NULL, 0), 0);
        assert_int_equal(store_vm_delete(f->s, "Chv3", NULL, 0), 0);
        assert_int_equal(store_vm_delete(f->s, "lv", NULL, 0), 0);
        vms = (StoreVm *) 0x1;
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), 0);
        assert_null(vms);
        assert_int_equal(n, 0);
        store_vm_done(NULL);
        assert_null(store_vm_array_free(NULL, 3));
}

static void test_vm_exists_and_missing(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreVm vm = vm_make("vm1", "qemu");
        assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);

        StoreVm dup = vm_make("vm1", "firecracker");
        f->err[0] = 0;
        assert_int_equal(store_vm_put(f->s, &dup, f->err, sizeof(f->err)), -EEXIST);
        assert_non_null(strstr(f->err, "vm1"));
        assert_vm_stored(f, &vm); /* unchanged */

        StoreVm ghost = vm_make("ghost", "qemu");
        f->err[0] = 0;
        assert_int_equal(store_vm_update(f->s, &ghost, f->err, sizeof(f->err)), -ENOENT);
        assert_non_null(strstr(f->err, "ghost"));
        assert_int_equal(store_vm_set_target(f->s, "ghost", MiB, f->err, sizeof(f->err)), -ENOENT);
        assert_int_equal(store_vm_set_park(f->s, "ghost", true, MiB, 0, f->err, sizeof(f->err)), -ENOENT);
        assert_int_equal(store_vm_delete(f->s, "ghost", f->err, sizeof(f->err)), -ENOENT);
        StoreVm got;
        assert_int_equal(store_vm_get(f->s, "ghost", &got, f->err, sizeof(f->err)), -ENOENT);
        /* Deleting twice. */
        assert_int_equal(store_vm_delete(f->s, "vm1", f->err, sizeof(f->err)), 0);
        assert_int_equal(store_vm_delete(f->s, "vm1", f->err, sizeof(f->err)), -ENOENT);
        /* Ids that cannot exist are -EINVAL, not -ENOENT. */
        assert_int_equal(store_vm_get(f->s, "a/b", &got, f->err, sizeof(f->err)), -EINVAL);
        assert_int_equal(store_vm_set_target(f->s, NULL, MiB, f->err, sizeof(f->err)), -EINVAL);
}

static void check_put_refused(Fx *f, const StoreVm *vm, int expect) {
        f->err[0] = 0;
        int r = store_vm_put(f->s, vm, f->err, sizeof(f->err));
        if (r != expect)
                fail_msg("put of a bad VM: %d, expected %d (%s)", r, expect, f->err);
        assert_true(f->err[0] != 0);
        assert_false(store_vm_is_valid(vm, NULL, 0));
}

static void test_vm_invalid(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreVm vm = vm_make("ok", "qemu");
        assert_true(store_vm_is_valid(&vm, NULL, 0));

        vm = vm_make("", "qemu");
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("a b", "qemu");
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("a/b", "qemu");
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("ok", "qemu");
        memset(vm.id, 'a', sizeof(vm.id)); /* 65 bytes, no NUL */
        check_put_refused(f, &vm, -EINVAL);
        memset(vm.id, 'a', STORE_VM_ID_MAX);
        vm.id[STORE_VM_ID_MAX] = 0; /* exactly 64: fine */
        assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);

        vm = vm_make("x", "xen");
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("x", "QEMU");
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("x", "qemu");
        vm.socket = NULL;
        check_put_refused(f, &vm, -EINVAL);
        vm.socket = (char *) "relative/qmp.sock";
        check_put_refused(f, &vm, -EINVAL);
        vm.socket = (char *) "/run/\xff.sock"; /* not UTF-8 */
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("x", "libvirt");
        vm.domain = NULL;
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("x", "libvirt");
        vm.uri = (char *) "";
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("x", "qemu");
        vm.shares = 0;
        check_put_refused(f, &vm, -EINVAL);
        vm = vm_make("x", "qemu");
        vm.expected_uid = -2;
        check_put_refused(f, &vm, -ERANGE);
        vm.expected_uid = UINT32_MAX;
        check_put_refused(f, &vm, -ERANGE);
        vm.expected_uid = UINT32_MAX - 1;
        assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);

        /* update validates the same way. */
        vm.shares = 0;
        assert_int_equal(store_vm_update(f->s, &vm, f->err, sizeof(f->err)), -EINVAL);

        StoreVm *vms;
        size_t n;
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 2);
        store_vm_array_free(vms, n);
}

static void test_uint64_edges(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreVm vm = vm_make("big", "qemu");
        vm.assigned = P62;
        vm.floor = P62;
        vm.last_target = P62;
        vm.park_prev = P62;
        vm.unparked_until = (uint64_t) INT64_MAX;
        vm.created = (uint64_t) INT64_MAX;
        assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);
        assert_vm_stored(f, &vm);

        StoreVm over = vm_make("over", "qemu");
        uint64_t *fields[] = { &over.assigned,  &over.floor,          &over.last_target,
                               &over.park_prev, &over.unparked_until, &over.created };
        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                StoreVm o = vm_make("over", "qemu");
                over = o;
                *fields[i] = P63;
                assert_int_equal(store_vm_put(f->s, &over, f->err, sizeof(f->err)), -ERANGE);
                *fields[i] = UINT64_MAX;
                assert_int_equal(store_vm_put(f->s, &over, f->err, sizeof(f->err)), -ERANGE);
                assert_int_equal(store_vm_update(f->s, &over, f->err, sizeof(f->err)), -ERANGE);
        }
        StoreVm got;
        assert_int_equal(store_vm_get(f->s, "over", &got, f->err, sizeof(f->err)), -ENOENT);

        assert_int_equal(store_vm_set_target(f->s, "big", P63, f->err, sizeof(f->err)), -ERANGE);
        assert_int_equal(store_vm_set_target(f->s, "big", UINT64_MAX, f->err, sizeof(f->err)), -ERANGE);
        assert_vm_stored(f, &vm); /* unchanged */
        assert_int_equal(store_vm_set_target(f->s, "big", P63 - 1, f->err, sizeof(f->err)), 0);
        vm.last_target = P63 - 1;
        assert_vm_stored(f, &vm);
        assert_int_equal(store_vm_set_park(f->s, "big", true, P63, 0, f->err, sizeof(f->err)), -ERANGE);
        assert_int_equal(store_vm_set_park(f->s, "big", true, 0, P63, f->err, sizeof(f->err)), -ERANGE);

        assert_int_equal(store_hold_set(f->s, P62, P62, "edge", P62, f->err, sizeof(f->err)), 0);
        StoreHold h;
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), 0);
        assert_int_equal(h.bytes, P62);
        assert_int_equal(store_hold_set(f->s, P63, 0, "edge", 0, f->err, sizeof(f->err)), -ERANGE);
        assert_int_equal(store_hold_set(f->s, 0, P63, "edge", 0, f->err, sizeof(f->err)), -ERANGE);
        assert_int_equal(store_hold_set(f->s, 0, 0, "edge", UINT64_MAX, f->err, sizeof(f->err)), -ERANGE);

        StoreJournalEntry e = entry_make(P62, "api", "{\"big\": 9223372036854775807}");
        e.available = e.requested = e.planned = P62;
        assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), 0);
        e.available = P63;
        assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), -ERANGE);
        e = entry_make(P63, "api", NULL);
        assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), -ERANGE);
        e = entry_make(1, "api", "{\"big\": 9223372036854775808}");
        assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), -EINVAL);

        StoreJournalEntry *es;
        size_t n;
        assert_int_equal(store_journal_list(f->s, 10, &es, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 1);
        assert_int_equal(es[0].time, P62);
        assert_int_equal(es[0].available, P62);
        assert_int_equal(es[0].planned, P62);
        assert_string_equal(es[0].targets, "{\"big\": 9223372036854775807}");
        store_journal_free_array(es, n);

        assert_int_equal(store_set_journal_max(f->s, 0, f->err, sizeof(f->err)), -EINVAL);
        assert_int_equal(store_set_journal_max(f->s, P63, f->err, sizeof(f->err)), -ERANGE);
        assert_int_equal(store_get_journal_max(f->s), STORE_JOURNAL_MAX_DEFAULT);
}

static void test_hold(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreHold h = { .bytes = 42 };
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), -ENOENT);
        assert_int_equal(h.bytes, 42);
        assert_int_equal(store_hold_clear(f->s, f->err, sizeof(f->err)), 0);

        assert_int_equal(store_hold_set(f->s, 2 * GiB, 1000, "load test", 900, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), 0);
        assert_int_equal(h.bytes, 2 * GiB);
        assert_int_equal(h.until, 1000);
        assert_string_equal(h.reason, "load test");
        assert_int_equal(h.created, 900);

        /* One at a time: a new hold replaces the old one. */
        assert_int_equal(store_hold_set(f->s, GiB, 2000, NULL, 1900, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), 0);
        assert_int_equal(h.bytes, GiB);
        assert_int_equal(h.until, 2000);
        assert_string_equal(h.reason, "");
        assert_int_equal(db_int(f->db, "SELECT count(*) FROM hold"), 1);

        /* Reasons: 256 characters (even of two bytes each) fit, 257 do not, nor bad UTF-8. */
        char reason[2 * 257 + 1];
        reason[0] = 0;
        for (int i = 0; i < 256; i++)
                strcat(reason, "\xc3\xa9"); /* é */
        assert_int_equal(store_hold_set(f->s, MiB, 1, reason, 1, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), 0);
        assert_string_equal(h.reason, reason);
        strcat(reason, "\xc3\xa9");
        assert_int_equal(store_hold_set(f->s, MiB, 1, reason, 1, f->err, sizeof(f->err)), -EINVAL);
        memset(reason, 'r', 257);
        reason[257] = 0;
        assert_int_equal(store_hold_set(f->s, MiB, 1, reason, 1, f->err, sizeof(f->err)), -EINVAL);
        reason[256] = 0;
        assert_int_equal(store_hold_set(f->s, MiB, 1, reason, 1, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_hold_set(f->s, MiB, 1, "bad \xc3(", 1, f->err, sizeof(f->err)), -EINVAL);
        assert_int_equal(store_hold_set(f->s, MiB, 1, "surrogate \xed\xa0\x80", 1, f->err, sizeof(f->err)), -EINVAL);
        assert_int_equal(store_hold_set(f->s, MiB, 1, "overlong \xc0\xaf", 1, f->err, sizeof(f->err)), -EINVAL);
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), 0);
        assert_int_equal(strlen(h.reason), 256);

        assert_int_equal(store_hold_clear(f->s, f->err, sizeof(f->err)), 1);
        assert_int_equal(store_hold_clear(f->s, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), -ENOENT);
}

static void test_journal_order_and_limit(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreJournalEntry *es = (StoreJournalEntry *) 0x1;
        size_t n = 99;
        assert_int_equal(store_journal_list(f->s, 10, &es, &n, f->err, sizeof(f->err)), 0);
        assert_null(es);
        assert_int_equal(n, 0);

        journal_append_n(f, 1, 10);
        /* Order is append order, not time order. */
        StoreJournalEntry late = entry_make(5, "psi", NULL);
        snprintf(late.state, sizeof(late.state), "critical");
        assert_int_equal(store_journal_append(f->s, &late, f->err, sizeof(f->err)), 0);

        assert_int_equal(store_journal_list(f->s, 3, &es, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 3);
        assert_int_equal(es[0].time, 5);
        assert_string_equal(es[0].trigger, "psi");
        assert_string_equal(es[0].state, "critical");
        assert_string_equal(es[0].targets, "{}");
        assert_string_equal(es[0].reasons, "{}");
        assert_int_equal(es[1].time, 10);
        assert_string_equal(es[1].trigger, "timer");
        assert_string_equal(es[1].state, "pressure");
        assert_int_equal(es[1].available, 20 * GiB);
        assert_int_equal(es[1].requested, 2 * GiB);
        assert_int_equal(es[1].planned, GiB + 10);
        assert_string_equal(es[1].targets, "{\"vm1\": 10}");
        assert_int_equal(es[2].time, 9);
        es = store_journal_free_array(es, n);

        assert_int_equal(store_journal_list(f->s, SIZE_MAX, &es, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 11);
        for (size_t i = 1; i < n; i++)
                assert_int_equal(es[i].time, 11 - i);
        es = store_journal_free_array(es, n);

        es = (StoreJournalEntry *) 0x1;
        assert_int_equal(store_journal_list(f->s, 0, &es, &n, f->err, sizeof(f->err)), 0);
        assert_null(es);
        assert_int_equal(n, 0);

        /* Malformed entries are refused and not stored. */
        const char *bad_targets[] = { "[]",
                                      "{\"vm1\": -1}",
                                      "{\"vm1\": 1.5}",
                                      "{\"vm1\": \"1\"}",
                                      "{\"a b\": 1}",
                                      "{\"vm1\": 1, \"vm1\": 2}",
                                      "{",
                                      "" };
        for (size_t i = 0; i < ELEMENTSOF(bad_targets); i++) {
                StoreJournalEntry e = entry_make(1, "api", bad_targets[i]);
                f->err[0] = 0;
                assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), -EINVAL);
                assert_true(f->err[0] != 0);
        }
        const char *bad_words[] = { "", "Timer", "a b", "x\xc3\xa9" };
        for (size_t i = 0; i < ELEMENTSOF(bad_words); i++) {
                StoreJournalEntry e = entry_make(1, bad_words[i], "{}");
                assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), -EINVAL);
                e = entry_make(1, "api", "{}");
                snprintf(e.state, sizeof(e.state), "%s", bad_words[i]);
                assert_int_equal(store_journal_append(f->s, &e, f->err, sizeof(f->err)), -EINVAL);
        }
        const char *bad_reasons[] = { "[]",
                                      "{\"vm1\": 1}",
                                      "{\"vm1\": \"\"}",
                                      "{\"vm1\": \"No Gain\"}",
                                      "{\"a b\": \"floor\"}",
                                      "{\"vm1\": \"floor\", \"vm1\": \"hold\"}",
                                      "{\"vm1\": \"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
                                      "{" };
        for (size_t i = 0; i < ELEMENTSOF(bad_reasons); i++) {
                StoreJournalEntry e = entry_make(1, "api", "{\"vm1\": 1}");
                e.reasons = (char *) bad_reasons[i];
                f->err[0] = 0;
                if (store_journal_append(f->s, &e, f->err, sizeof(f->err)) != -EINVAL)
                        fail_msg("reasons %s accepted", bad_reasons[i]);
                assert_true(f->err[0] != 0);
        }
        StoreJournalEntry with_reasons = entry_make(11, "api", "{\"vm1\": 1, \"vm2\": 2}");
        with_reasons.reasons = (char *) "{\"vm1\": \"reclaim\", \"vm2\": \"dead-band\"}";
        assert_int_equal(store_journal_append(f->s, &with_reasons, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_journal_list(f->s, 1, &es, &n, f->err, sizeof(f->err)), 0);
        assert_string_equal(es[0].reasons, "{\"vm1\": \"reclaim\", \"vm2\": \"dead-band\"}");
        es = store_journal_free_array(es, n);
        StoreJournalEntry unterminated = entry_make(1, "api", "{}");
        memset(unterminated.trigger, 'a', sizeof(unterminated.trigger));
        assert_int_equal(store_journal_append(f->s, &unterminated, f->err, sizeof(f->err)), -EINVAL);
        assert_int_equal(db_int(f->db, "SELECT count(*) FROM journal"), 12);
}

static void test_journal_trim(void **state) {
        Fx *f = *state;
        fx_open(f);
        assert_int_equal(store_set_journal_max(f->s, 5, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_get_journal_max(f->s), 5);
        journal_append_n(f, 1, 12);
        assert_int_equal(db_int(f->db, "SELECT count(*) FROM journal"), 5);

        StoreJournalEntry *es;
        size_t n;
        assert_int_equal(store_journal_list(f->s, 100, &es, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 5);
        for (size_t i = 0; i < n; i++)
                assert_int_equal(es[i].time, 12 - i);
        es = store_journal_free_array(es, n);

        /* Lowering the bound trims at once; raising it keeps what is there. */
        assert_int_equal(store_set_journal_max(f->s, 3, f->err, sizeof(f->err)), 0);
        assert_int_equal(db_int(f->db, "SELECT count(*) FROM journal"), 3);
        assert_int_equal(db_int(f->db, "SELECT min(time_usec) FROM journal"), 10);
        assert_int_equal(store_set_journal_max(f->s, 1000, f->err, sizeof(f->err)), 0);
        journal_append_n(f, 13, 14);
        assert_int_equal(db_int(f->db, "SELECT count(*) FROM journal"), 5);

        /* The default bound, 10000, over a reopen (the bound is not stored: a fresh Store has the
         * default again). */
        fx_reopen(f);
        assert_int_equal(store_get_journal_max(f->s), STORE_JOURNAL_MAX_DEFAULT);
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        journal_append_n(f, 15, 15 + STORE_JOURNAL_MAX_DEFAULT);
        clock_gettime(CLOCK_MONOTONIC, &b);
        print_message("%d journal appends: %.1f ms\n", STORE_JOURNAL_MAX_DEFAULT + 1,
                      (double) (b.tv_sec - a.tv_sec) * 1e3 + (double) (b.tv_nsec - a.tv_nsec) / 1e6);
        assert_int_equal(db_int(f->db, "SELECT count(*) FROM journal"), STORE_JOURNAL_MAX_DEFAULT);
        assert_int_equal(db_int(f->db, "SELECT max(time_usec) FROM journal"), 15 + STORE_JOURNAL_MAX_DEFAULT);
        assert_int_equal(db_int(f->db, "SELECT min(time_usec) FROM journal"), 16);
        assert_int_equal(store_journal_list(f->s, 1, &es, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 1);
        assert_int_equal(es[0].time, 15 + STORE_JOURNAL_MAX_DEFAULT);
        store_journal_free_array(es, n);
}

static void test_reopen_keeps_everything(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreVm a = vm_make("a", "qemu"), b = vm_make("b", "libvirt");
        b.parked = true;
        b.park_prev = GiB;
        assert_int_equal(store_vm_put(f->s, &a, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_vm_put(f->s, &b, f->err, sizeof(f->err)), 0);
        assert_int_equal(store_vm_set_target(f->s, "a", 300 * MiB, f->err, sizeof(f->err)), 0);
        a.last_target = 300 * MiB;
        assert_int_equal(store_hold_set(f->s, GiB, 5000, "why not", 4000, f->err, sizeof(f->err)), 0);
        journal_append_n(f, 1, 3);

        for (int round = 0; round < 2; round++) {
                fx_reopen(f);
                assert_vm_stored(f, &a);
                assert_vm_stored(f, &b);
                StoreHold h;
                assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), 0);
                assert_int_equal(h.bytes, GiB);
                assert_int_equal(h.until, 5000);
                assert_string_equal(h.reason, "why not");
                assert_int_equal(h.created, 4000);
                StoreJournalEntry *es;
                size_t n;
                assert_int_equal(store_journal_list(f->s, 10, &es, &n, f->err, sizeof(f->err)), 0);
                assert_int_equal(n, 3);
                assert_int_equal(es[0].time, 3);
                assert_string_equal(es[2].targets, "{\"vm1\": 1}");
                store_journal_free_array(es, n);
        }
        /* A clean close leaves no WAL behind. */
        f->s = store_close(f->s);
        char wal[PATH_MAX + 8];
        snprintf(wal, sizeof(wal), "%s-wal", f->db);
        assert_false(exists(wal));
}

/* The child writes and dies by SIGKILL without closing anything: every call that returned must be
 * in the database (WAL, synchronous=NORMAL). */
static void test_survives_sigkill(void **state) {
        Fx *f = *state;
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                Store *s = NULL;
                char err[512];
                StoreVm vm = vm_make("survivor", "firecracker");
                StoreJournalEntry e = entry_make(77, "api", "{\"survivor\": 268435456}");
                bool ok = store_open(f->dir, &s, err, sizeof(err)) == 0 &&
                          store_vm_put(s, &vm, err, sizeof(err)) == 0 &&
                          store_vm_set_target(s, "survivor", 256 * MiB, err, sizeof(err)) == 0 &&
                          store_vm_set_park(s, "survivor", true, 512 * MiB, 0, err, sizeof(err)) == 0 &&
                          store_hold_set(s, 3 * GiB, 123456, "before the crash", 100, err, sizeof(err)) == 0 &&
                          store_journal_append(s, &e, err, sizeof(err)) == 0;
                char c = ok ? 'k' : 'e';
                if (write(p[1], &c, 1) != 1)
                        _exit(2);
                for (;;)
                        pause(); /* killed here, the store still open */
        }
        close(p[1]);
        struct pollfd pfd = { .fd = p[0], .events = POLLIN };
        char c = 0;
        int ready = poll(&pfd, 1, 30000);
        ssize_t got = ready == 1 ? read(p[0], &c, 1) : -1;
        close(p[0]);
        assert_int_equal(kill(pid, SIGKILL), 0);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_int_equal(got, 1);
        assert_int_equal(c, 'k');
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);

        /* The commits are in the WAL, never checkpointed: reopening must recover them. */
        char wal[PATH_MAX + 8];
        snprintf(wal, sizeof(wal), "%s-wal", f->db);
        struct stat st;
        assert_int_equal(stat(wal, &st), 0);
        assert_true(st.st_size > 0);

        fx_open(f);
        StoreVm expect = vm_make("survivor", "firecracker");
        expect.last_target = 256 * MiB;
        expect.parked = true;
        expect.park_prev = 512 * MiB;
        assert_vm_stored(f, &expect);
        StoreHold h;
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), 0);
        assert_int_equal(h.bytes, 3 * GiB);
        assert_int_equal(h.until, 123456);
        assert_string_equal(h.reason, "before the crash");
        StoreJournalEntry *es;
        size_t n;
        assert_int_equal(store_journal_list(f->s, 10, &es, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 1);
        assert_int_equal(es[0].time, 77);
        store_journal_free_array(es, n);
}

static void test_not_a_database(void **state) {
        Fx *f = *state;
        assert_int_equal(mkdir(f->dir, 0700), 0);
        char text[4096];
        for (size_t i = 0; i < sizeof(text); i++)
                text[i] = "this is not a database\n"[i % 23];
        file_write(f->db, text, sizeof(text));
        assert_open_refused(f, -EBADMSG, "not a SQLite database");
        char side[PATH_MAX + 8];
        snprintf(side, sizeof(side), "%s-wal", f->db);
        assert_false(exists(side));
        snprintf(side, sizeof(side), "%s-shm", f->db);
        assert_false(exists(side));

        /* Shorter than a header. */
        file_write(f->db, "SQLite", 6);
        assert_open_refused(f, -EBADMSG, NULL);

        /* SQLite's magic, then garbage: SQLite itself refuses it. */
        char fake[8192];
        memset(fake, 0xab, sizeof(fake));
        memcpy(fake, "SQLite format 3", 16);
        file_write(f->db, fake, sizeof(fake));
        assert_open_refused(f, -EBADMSG, NULL);

        /* A directory where the file should be. */
        assert_int_equal(unlink(f->db), 0);
        assert_int_equal(mkdir(f->db, 0700), 0);
        Store *s = NULL;
        assert_int_equal(store_open(f->dir, &s, f->err, sizeof(f->err)), -EBADMSG);
        assert_null(s);
        assert_int_equal(rmdir(f->db), 0);

        /* An empty file is a new database. */
        file_write(f->db, "", 0);
        fx_open(f);
}

static void test_corrupt_database(void **state) {
        Fx *f = *state;
        fx_open(f);
        /* Enough rows for several b-tree pages, then damage the pages past the first. */
        for (int i = 0; i < 40; i++) {
                char id[16];
                snprintf(id, sizeof(id), "vm%02d", i);
                StoreVm vm = vm_make(id, "qemu");
                assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);
        }
        journal_append_n(f, 1, 200);
        f->s = store_close(f->s);

        size_t n;
        _cleanup_free_ char *data = file_read(f->db, &n);
        assert_true(n >= 4 * 4096);
        memset(data + 4096 + 100, 0x5a, n - 4096 - 200);
        file_write(f->db, data, n);
        assert_open_refused(f, -EBADMSG, "corrupt");
}

static void test_newer_version_refused(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreVm vm = vm_make("vm1", "qemu");
        assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);
        f->s = store_close(f->s);
        db_exec(f->db, "PRAGMA user_version = 99");
        assert_open_refused(f, -EPROTONOSUPPORT, "99");
        assert_int_equal(db_int(f->db, "PRAGMA user_version"), 99);
}

static void test_foreign_database_refused(void **state) {
        Fx *f = *state;
        assert_int_equal(mkdir(f->dir, 0700), 0);
        db_exec(f->db, "CREATE TABLE vm (x); INSERT INTO vm VALUES (1)");
        assert_open_refused(f, -EBADMSG, "another program");
        db_exec(f->db, "PRAGMA application_id = 7; PRAGMA user_version = 1");
        assert_open_refused(f, -EBADMSG, "another program");
}

/* Rows edited behind the store's back are untrusted: each bad one fails the read, naming it. */
static void test_corrupt_rows(void **state) {
        Fx *f = *state;
        fx_open(f);
        StoreVm good = vm_make("good", "qemu");
        assert_int_equal(store_vm_put(f->s, &good, f->err, sizeof(f->err)), 0);

        db_exec(f->db, "INSERT INTO vm VALUES ('bad1', 'xen', '/run/x.sock', NULL, NULL, -1, 1024, 0, 1000, 1024, "
                       "0, 0, 0, 0)");
        StoreVm *vms = (StoreVm *) 0x1;
        size_t n = 77;
        f->err[0] = 0;
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), -EBADMSG);
        print_message("bad row: %s\n", f->err);
        assert_ptr_equal(vms, (StoreVm *) 0x1);
        assert_int_equal(n, 77);
        assert_non_null(strstr(f->err, "'bad1'"));
        assert_non_null(strstr(f->err, "driver"));
        StoreVm got;
        assert_int_equal(store_vm_get(f->s, "bad1", &got, f->err, sizeof(f->err)), -EBADMSG);
        assert_vm_stored(f, &good);
        db_exec(f->db, "DELETE FROM vm WHERE id = 'bad1'");
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), 0);
        assert_int_equal(n, 1);
        vms = store_vm_array_free(vms, n);

        /* Each column's damage, on the good row (the CHECK constraints are bypassed as a hand edit
         * would). */
        static const struct {
                const char *set, *field;
        } damage[] = {
                { "assigned = -5", "assigned" },
                { "floor = 'abc'", "floor" },
                { "last_target = 1.5", "last_target" },
                { "shares = 0", "shares" },
                { "shares = 4294967296", "shares" },
                { "parked = 2", "parked" },
                { "park_prev = X'00'", "park_prev" },
                { "expected_uid = -7", "expected_uid" },
                { "created_usec = 'x'", "created" },
                { "socket = CAST(X'2fff' AS TEXT)", "socket" },
                { "socket = 'rel/ative'", "absolute socket" },
                { "socket = NULL", "absolute socket" },
                { "socket = '/a' || char(0) || 'b'", "socket" },
                { "uri = ''", "uri" },
                { "domain = X'41'", "domain" },
                { "driver = 7", "driver" },
                { "driver = 'libvirt'", "uri and a domain" },
        };
        for (size_t i = 0; i < ELEMENTSOF(damage); i++) {
                char sql[256];
                snprintf(sql, sizeof(sql), "PRAGMA ignore_check_constraints = 1; UPDATE vm SET %s WHERE id = 'good'",
                         damage[i].set);
                db_exec(f->db, sql);
                f->err[0] = 0;
                int r = store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err));
                if (r != -EBADMSG || !strstr(f->err, "good") || !strstr(f->err, damage[i].field))
                        fail_msg("%s: load_all = %d, \"%s\"", damage[i].set, r, f->err);
                assert_int_equal(store_vm_get(f->s, "good", &got, f->err, sizeof(f->err)), -EBADMSG);
                /* Repair. */
                db_exec(f->db, "DELETE FROM vm");
                assert_int_equal(store_vm_put(f->s, &good, f->err, sizeof(f->err)), 0);
        }

        /* A bad id is named as far as it can be printed. */
        db_exec(f->db, "INSERT INTO vm VALUES ('a/b', 'qemu', '/s', NULL, NULL, -1, 1, 0, 1, 1, 0, 0, 0, 0)");
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), -EBADMSG);
        assert_non_null(strstr(f->err, "'a?b'"));
        db_exec(f->db, "DELETE FROM vm WHERE id = 'a/b'");
        db_exec(f->db, "INSERT INTO vm VALUES (X'3132', 'qemu', '/s', NULL, NULL, -1, 1, 0, 1, 1, 0, 0, 0, 0)");
        assert_int_equal(store_vm_load_all(f->s, &vms, &n, f->err, sizeof(f->err)), -EBADMSG);
        assert_non_null(strstr(f->err, "'12'"));
        db_exec(f->db, "DELETE FROM vm WHERE id = X'3132'");

        /* The hold. */
        assert_int_equal(store_hold_set(f->s, GiB, 10, "r", 1, f->err, sizeof(f->err)), 0);
        db_exec(f->db, "PRAGMA ignore_check_constraints = 1; UPDATE hold SET bytes = -1");
        StoreHold h = { .bytes = 5 };
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), -EBADMSG);
        assert_non_null(strstr(f->err, "bytes"));
        assert_int_equal(h.bytes, 5);
        db_exec(f->db, "UPDATE hold SET bytes = 1, reason = CAST(X'c328' AS TEXT)");
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), -EBADMSG);
        assert_non_null(strstr(f->err, "reason"));
        db_exec(f->db, "UPDATE hold SET reason = hex(zeroblob(150))");
        assert_int_equal(store_hold_get(f->s, &h, f->err, sizeof(f->err)), -EBADMSG);

        /* The journal. */
        journal_append_n(f, 1, 3);
        static const char *const jdamage[] = {
                "targets = '[1]'",
                "targets = '{\"vm1\": -3}'",
                "targets = '{\"vm1\": 1'",
                "trigger_name = 'Bad Word'",
                "state = ''",
                "time_usec = -1",
                "planned = 'x'",
                "reasons = '{\"vm1\": 7}'",
                "reasons = 'x'",
        };
        for (size_t i = 0; i < ELEMENTSOF(jdamage); i++) {
                char sql[256];
                snprintf(sql, sizeof(sql),
                         "PRAGMA ignore_check_constraints = 1; UPDATE journal SET %s WHERE time_usec = 2", jdamage[i]);
                db_exec(f->db, sql);
                StoreJournalEntry *es = (StoreJournalEntry *) 0x1;
                f->err[0] = 0;
                int r = store_journal_list(f->s, 10, &es, &n, f->err, sizeof(f->err));
                if (r != -EBADMSG || es != (StoreJournalEntry *) 0x1)
                        fail_msg("%s: journal_list = %d, \"%s\"", jdamage[i], r, f->err);
                /* The newest entry alone is still readable. */
                assert_int_equal(store_journal_list(f->s, 1, &es, &n, f->err, sizeof(f->err)), 0);
                assert_int_equal(n, 1);
                store_journal_free_array(es, n);
                db_exec(f->db, "DELETE FROM journal");
                journal_append_n(f, 1, 3);
        }
}

static void test_set_target_timing(void **state) {
        Fx *f = *state;
        fx_open(f);
        for (int i = 0; i < 100; i++) {
                char id[16];
                snprintf(id, sizeof(id), "vm%03d", i);
                StoreVm vm = vm_make(id, "qemu");
                assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);
        }
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int i = 0; i < 1000; i++) {
                char id[16];
                snprintf(id, sizeof(id), "vm%03d", i % 100);
                int r = store_vm_set_target(f->s, id, 256 * MiB + (uint64_t) i * MiB, f->err, sizeof(f->err));
                if (r < 0)
                        fail_msg("set_target: %d %s", r, f->err);
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        double ms = (double) (b.tv_sec - a.tv_sec) * 1e3 + (double) (b.tv_nsec - a.tv_nsec) / 1e6;
        print_message("1000 store_vm_set_target calls: %.1f ms (%.1f us each)\n", ms, ms);
        StoreVm got;
        assert_int_equal(store_vm_get(f->s, "vm099", &got, f->err, sizeof(f->err)), 0);
        assert_int_equal(got.last_target, 256 * MiB + 999 * MiB);
        store_vm_done(&got);
}

/* ---- the state directory and files: no links, ours alone, 0600 ---- */

#define NOBODY 65534

static mode_t mode_of(const char *path) {
        struct stat st;
        if (lstat(path, &st) < 0)
                fail_msg("lstat %s: %s", path, strerror(errno));
        return st.st_mode & 07777;
}

/* Opening must fail with `expect` and an err naming `path` and saying `why`. */
static void assert_refused(Fx *f, int expect, const char *path, const char *why) {
        Store *s = (Store *) 0x1;
        f->err[0] = 0;
        int r = store_open(f->dir, &s, f->err, sizeof(f->err));
        print_message("refused (%d): %s\n", r, f->err);
        if (r == 0)
                s = store_close(s);
        assert_int_equal(r, expect);
        assert_ptr_equal(s, (Store *) 0x1);
        assert_non_null(strstr(f->err, path));
        assert_non_null(strstr(f->err, why));
}

/* A dangling link at state.db would make SQLite create the database where it points. */
static void test_symlinks_refused(void **state) {
        Fx *f = *state;
        char target[PATH_MAX], side[PATH_MAX + 8];
        assert_int_equal(mkdir(f->dir, 0700), 0);
        snprintf(target, sizeof(target), "%s/elsewhere.db", f->tmp);
        assert_int_equal(symlink(target, f->db), 0);
        assert_refused(f, -ELOOP, f->db, "symbolic link");
        assert_false(exists(target));
        snprintf(side, sizeof(side), "%s-wal", target);
        assert_false(exists(side));

        /* A link to a real database is refused just the same. */
        assert_int_equal(unlink(f->db), 0);
        fx_open(f);
        f->s = store_close(f->s);
        assert_int_equal(rename(f->db, target), 0);
        assert_int_equal(symlink(target, f->db), 0);
        assert_refused(f, -ELOOP, f->db, "symbolic link");
        assert_int_equal(unlink(f->db), 0);

        /* The -wal and -shm files: SQLite would follow them too. */
        for (int i = 0; i < 2; i++) {
                snprintf(side, sizeof(side), "%s%s", f->db, i ? "-shm" : "-wal");
                assert_int_equal(symlink(target, side), 0);
                assert_refused(f, -ELOOP, side, "symbolic link");
                assert_int_equal(unlink(side), 0);
        }

        /* The state directory itself. */
        char real[PATH_MAX];
        snprintf(real, sizeof(real), "%s/real", f->tmp);
        assert_int_equal(rename(f->dir, real), 0);
        assert_int_equal(symlink(real, f->dir), 0);
        assert_refused(f, -ELOOP, f->dir, "symbolic link");
        assert_int_equal(unlink(f->dir), 0);
}

static void test_owner_and_mode_refused(void **state) {
        Fx *f = *state;
        fx_open(f);
        f->s = store_close(f->s);

        assert_int_equal(chmod(f->dir, 0777), 0);
        assert_refused(f, -EPERM, f->dir, "writable");
        assert_int_equal(chmod(f->dir, 0700), 0);

        if (geteuid() != 0)
                skip(); /* giving a file to another user needs root */
        assert_int_equal(chown(f->dir, NOBODY, NOBODY), 0);
        assert_refused(f, -EPERM, f->dir, "owned by uid 65534");
        assert_int_equal(chown(f->dir, 0, 0), 0);
        assert_int_equal(chown(f->db, NOBODY, NOBODY), 0);
        assert_refused(f, -EPERM, f->db, "owned by uid 65534");
        assert_int_equal(chown(f->db, 0, 0), 0);
        fx_open(f);
}

/* New files are 0600 whatever the umask; old 0644 ones (and their -wal and -shm) become 0600. */
static void test_files_private(void **state) {
        Fx *f = *state;
        char wal[PATH_MAX + 8], shm[PATH_MAX + 8];
        snprintf(wal, sizeof(wal), "%s-wal", f->db);
        snprintf(shm, sizeof(shm), "%s-shm", f->db);
        mode_t old = umask(022);
        fx_open(f);
        StoreVm vm = vm_make("vm1", "qemu");
        assert_int_equal(store_vm_put(f->s, &vm, f->err, sizeof(f->err)), 0);
        assert_int_equal(mode_of(f->db), 0600);
        assert_int_equal(mode_of(wal), 0600);
        assert_int_equal(mode_of(shm), 0600);
        f->s = store_close(f->s);

        /* A store left open by a dead process keeps its -wal and -shm: make all three 0644. */
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                Store *s = NULL;
                char err[512];
                StoreVm v2 = vm_make("vm2", "qemu");
                _exit(store_open(f->dir, &s, err, sizeof(err)) == 0 && store_vm_put(s, &v2, err, sizeof(err)) == 0 ? 0
                                                                                                                   : 1);
        }
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        assert_true(exists(wal) && exists(shm));
        assert_int_equal(chmod(f->db, 0644), 0);
        assert_int_equal(chmod(wal, 0644), 0);
        assert_int_equal(chmod(shm, 0644), 0);
        fx_open(f);
        umask(old);
        assert_int_equal(mode_of(f->db), 0600);
        assert_int_equal(mode_of(wal), 0600);
        assert_int_equal(mode_of(shm), 0600);
        StoreVm got;
        assert_int_equal(store_vm_get(f->s, "vm2", &got, f->err, sizeof(f->err)), 0);
        store_vm_done(&got);
}

/* ---- who syncs: the store's commits must never wait for an fsync of the database ---- */

/* Every fdatasync() and fsync() of this process: SQLite, a shared library, calls them through the
 * dynamic linker, so these definitions take the place of libc's. A call on the watched file is
 * counted by thread: the watching (test, "loop") thread or any other. */
static pthread_mutex_t sync_lock = PTHREAD_MUTEX_INITIALIZER;
static char sync_path[PATH_MAX];
static pid_t sync_tid;
static unsigned sync_by_caller, sync_by_others;

static void sync_note(int fd) {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof(target) - 1);
        if (n < 0)
                return;
        target[n] = 0;
        pthread_mutex_lock(&sync_lock);
        if (sync_path[0] && strcmp(target, sync_path) == 0) {
                if ((pid_t) syscall(SYS_gettid) == sync_tid)
                        sync_by_caller++;
                else
                        sync_by_others++;
        }
        pthread_mutex_unlock(&sync_lock);
}

int fdatasync(int fd) {
        sync_note(fd);
        return (int) syscall(SYS_fdatasync, fd);
}

int fsync(int fd) {
        sync_note(fd);
        return (int) syscall(SYS_fsync, fd);
}

static void sync_watch(const char *path) {
        pthread_mutex_lock(&sync_lock);
        if (path) {
                assert_non_null(realpath(path, sync_path));
                sync_tid = (pid_t) syscall(SYS_gettid);
        } else
                sync_path[0] = 0;
        sync_by_caller = sync_by_others = 0;
        pthread_mutex_unlock(&sync_lock);
}

static void sync_counts(unsigned *ret_caller, unsigned *ret_others) {
        pthread_mutex_lock(&sync_lock);
        *ret_caller = sync_by_caller;
        *ret_others = sync_by_others;
        pthread_mutex_unlock(&sync_lock);
}

/* Thousands of commits: enough WAL for several checkpoints. Each checkpoint fsyncs the database
 * file; none of those may happen on the committing thread (the daemon's event loop), and they
 * must happen on another one. */
static void test_checkpoints_off_the_caller(void **state) {
        Fx *f = *state;
        fx_open(f);
        char targets[2048];
        size_t n = 0;
        n += (size_t) snprintf(targets + n, sizeof(targets) - n, "{");
        for (int i = 0; i < 40; i++)
                n += (size_t) snprintf(targets + n, sizeof(targets) - n, "%s\"vm%03d\": %d", i ? ", " : "", i,
                                       268435456 + i);
        snprintf(targets + n, sizeof(targets) - n, "}");

        sync_watch(f->db);
        for (uint64_t t = 1; t <= 3000; t++) {
                StoreJournalEntry e = entry_make(t, "timer", targets);
                int r = store_journal_append(f->s, &e, f->err, sizeof(f->err));
                if (r < 0)
                        fail_msg("store_journal_append(%" PRIu64 ") = %d: %s", t, r, f->err);
        }
        unsigned caller, others;
        sync_counts(&caller, &others);
        print_message("fsyncs of %s after 3000 commits: %u on the committing thread, %u on others\n", f->db, caller,
                      others);
        assert_int_equal(caller, 0);

        /* The checkpointer syncs the database by itself (it was woken long ago). */
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (;;) {
                sync_counts(&caller, &others);
                if (others > 0)
                        break;
                clock_gettime(CLOCK_MONOTONIC, &now);
                if (now.tv_sec - start.tv_sec > 30)
                        fail_msg("no checkpoint synced %s within 30 s", f->db);
                struct pollfd none;
                (void) poll(&none, 0, 10);
        }
        assert_int_equal(caller, 0);
        sync_watch(NULL);
}

/* The daemon blocks SIGTERM after opening its store and takes it on its loop (signalfd): a store
 * thread that did not block it could be the one the kernel gives a SIGTERM to, and die of it
 * with the whole process. Every thread but the caller must block every signal. */
static void test_signals_stay_with_the_caller(void **state) {
        Fx *f = *state;
        sigset_t term, old;
        sigemptyset(&term);
        sigaddset(&term, SIGTERM);
        /* As a daemon starts: SIGTERM not blocked (whatever the test runner had). */
        assert_int_equal(pthread_sigmask(SIG_UNBLOCK, &term, &old), 0);
        fx_open(f);
        pid_t me = (pid_t) syscall(SYS_gettid);
        /* A new thread starts with every signal blocked and sets the mask it inherited when it
         * first runs: look once every other thread has gone to sleep (the checkpointer waits for
         * work at once). */
        unsigned others = 0;
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        for (bool settled = false; !settled;) {
                DIR *d = opendir("/proc/self/task");
                assert_non_null(d);
                settled = true;
                others = 0;
                struct dirent *de;
                while ((de = readdir(d))) {
                        if (de->d_name[0] == '.' || atoi(de->d_name) == me)
                                continue;
                        char path[PATH_MAX], line[256];
                        snprintf(path, sizeof(path), "/proc/self/task/%s/status", de->d_name);
                        FILE *fp = fopen(path, "re");
                        if (!fp)
                                continue; /* gone meanwhile */
                        unsigned long long blocked = 0;
                        char st = '?';
                        while (fgets(line, sizeof(line), fp)) {
                                (void) sscanf(line, "State: %c", &st);
                                (void) sscanf(line, "SigBlk: %llx", &blocked);
                        }
                        fclose(fp);
                        others++;
                        if (st != 'S') {
                                settled = false;
                                continue;
                        }
                        for (int sig = 1; sig < 32; sig++)
                                if (sig != SIGKILL && sig != SIGSTOP && !(blocked & (1ULL << (sig - 1))))
                                        fail_msg("thread %s does not block signal %d (%s): mask %016llx", de->d_name,
                                                 sig, strsignal(sig), blocked);
                }
                closedir(d);
                clock_gettime(CLOCK_MONOTONIC, &now);
                if (!settled && now.tv_sec - start.tv_sec > 10)
                        fail_msg("the store's threads did not settle within 10 s");
                if (!settled) {
                        struct pollfd none;
                        (void) poll(&none, 0, 1);
                }
        }
        assert_true(others >= 1); /* the checkpointer */
        assert_int_equal(pthread_sigmask(SIG_SETMASK, &old, NULL), 0);
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        const struct CMUnitTest tests[] = {
                T(test_open_creates_private_dir),
                T(test_schema_version),
                T(test_journal_keys_and_get),
                T(test_migration_1_to_2),
                T(test_vm_round_trip),
                T(test_vm_exists_and_missing),
                T(test_vm_invalid),
                T(test_uint64_edges),
                T(test_hold),
                T(test_journal_order_and_limit),
                T(test_journal_trim),
                T(test_reopen_keeps_everything),
                T(test_survives_sigkill),
                T(test_not_a_database),
                T(test_corrupt_database),
                T(test_newer_version_refused),
                T(test_foreign_database_refused),
                T(test_corrupt_rows),
                T(test_set_target_timing),
                T(test_symlinks_refused),
                T(test_owner_and_mode_refused),
                T(test_files_private),
                T(test_checkpoints_off_the_caller),
                T(test_signals_stay_with_the_caller),
        };
#undef T
        return cmocka_run_group_tests(tests, NULL, NULL);
}
