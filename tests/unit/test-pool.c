/* SPDX-License-Identifier: MIT */
/* src/pool/pool.c without VMs or a daemon: names, settings refused before anything is written,
 * the state file's errors, a run root another user could write to, and a release that cannot
 * reach ballastd. The library never prints: what goes wrong comes back in err or in the log
 * callback (stdout and stderr are checked to stay empty). Each test has its own run root
 * (BALLAST_RUN_DIR) in a mkdtemp directory; the real VMs are tests/e2e/test_parking.py's. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "pool/pool.h"
#include "shared/macro.h"

typedef struct Fx {
        char tmp[256], run[300], api[300], out[300];
        char err[1024];
        char said[4096]; /* the log callback's lines */
        int saved_out, saved_err;
} Fx;

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
        (void) st, (void) flag, (void) ftw;
        return remove(path);
}

static void say(void *userdata, const char *line) {
        Fx *f = userdata;
        size_t n = strlen(f->said);
        snprintf(f->said + n, sizeof f->said - n, "%s\n", line);
}

static int setup(void **state) {
        Fx *f = calloc(1, sizeof(Fx));
        if (!f)
                return -1;
        snprintf(f->tmp, sizeof f->tmp, "%s/ballast-test-pool-XXXXXX", getenv("TMPDIR") ?: "/tmp");
        if (!mkdtemp(f->tmp)) {
                free(f);
                return -1;
        }
        snprintf(f->run, sizeof f->run, "%s/run", f->tmp);
        snprintf(f->api, sizeof f->api, "%s/no-daemon.sock", f->tmp);
        snprintf(f->out, sizeof f->out, "%s/printed", f->tmp);
        setenv("BALLAST_RUN_DIR", f->run, 1);
        /* Whatever the library would print lands in f->out. */
        fflush(NULL);
        f->saved_out = dup(STDOUT_FILENO);
        f->saved_err = dup(STDERR_FILENO);
        int fd = open(f->out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0 || f->saved_out < 0 || f->saved_err < 0)
                return -1;
        dup2(fd, STDOUT_FILENO);
        dup2(fd, STDERR_FILENO);
        close(fd);
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fx *f = *state;
        fflush(NULL);
        dup2(f->saved_out, STDOUT_FILENO);
        dup2(f->saved_err, STDERR_FILENO);
        close(f->saved_out);
        close(f->saved_err);
        /* Shown (a failed assertion's message is there too), and a failure of its own. */
        char buf[4096] = "";
        FILE *in = fopen(f->out, "re");
        size_t printed = in ? fread(buf, 1, sizeof buf - 1, in) : 0;
        if (in)
                fclose(in);
        (void) nftw(f->tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        free(f);
        if (printed)
                fprintf(stderr, "printed during the test (the pool library must not print):\n%s\n", buf);
        return printed == 0 ? 0 : -1;
}

static void open_pool(Fx *f, Pool *p, const char *name) {
        assert_int_equal(pool_init(p, name, f->api, 2 * USEC_PER_SEC, f->err, sizeof f->err), 0);
        p->log = say;
        p->log_userdata = f;
}

static void write_file(const char *path, const char *text) {
        FILE *o = fopen(path, "we");
        assert_non_null(o);
        fputs(text, o);
        assert_int_equal(fclose(o), 0);
}

static void test_names(void **state) {
        Fx *f = *state;
        Pool p;
        assert_int_equal(pool_init(&p, "../x", f->api, USEC_PER_SEC, f->err, sizeof f->err), -EINVAL);
        assert_non_null(strstr(f->err, "invalid pool name '../x'"));
        assert_int_equal(pool_init(&p, "abcdefghijklmnopqrstuvwxy", f->api, USEC_PER_SEC, f->err, sizeof f->err),
                         -EINVAL); /* 25 > POOL_NAME_MAX */
        assert_true(pool_name_is_valid("sandbox_1.a-b"));
        open_pool(f, &p, "sb");
        assert_string_equal(strrchr(p.state, '/'), "/pool-sb.json");
        assert_int_equal(strncmp(p.state, f->run, strlen(f->run)), 0);
}

/* Refused settings write nothing; a missing pool is -ENOENT for status and acquire; a drain of
 * nothing stops nothing and succeeds. */
static void test_refused_and_missing(void **state) {
        Fx *f = *state;
        Pool p;
        open_pool(f, &p, "sb");
        size_t started = 99;
        assert_int_equal(pool_fill(&p, &(PoolSettings){ .memory = 256 << 20, .have_memory = true }, &started, f->err,
                                   sizeof f->err),
                         -EINVAL);
        assert_non_null(strstr(f->err, "--count is required"));
        assert_int_equal(started, 0);
        PoolSettings s = {
                .count = 1,
                .have_count = true,
                .memory = 64 << 20,
                .have_memory = true,
                .park_size = 128 << 20,
                .have_park = true,
        };
        assert_int_equal(pool_fill(&p, &s, &started, f->err, sizeof f->err), -EINVAL);
        assert_non_null(strstr(f->err, "park size is larger"));
        assert_int_equal(access(p.state, F_OK), -1);

        int e = 0;
        assert_null(pool_status(&p, &e, f->err, sizeof f->err));
        assert_int_equal(e, -ENOENT);
        PoolAcquired a;
        assert_int_equal(pool_acquire(&p, false, &a, f->err, sizeof f->err), -ENOENT);
        assert_non_null(strstr(f->err, "pool fill sb --count N"));
        json_t *stopped = NULL;
        assert_int_equal(pool_drain(&p, &stopped, f->err, sizeof f->err), 0);
        assert_int_equal(json_array_size(stopped), 0);
        json_decref(stopped);
        assert_string_equal(f->said, "");
}

static void test_bad_state_file(void **state) {
        Fx *f = *state;
        Pool p;
        open_pool(f, &p, "sb");
        assert_int_equal(mkdir(f->run, 0700), 0);
        write_file(p.state, "{\"pool\": \"sb\"}\n");
        int e = 0;
        assert_null(pool_status(&p, &e, f->err, sizeof f->err));
        assert_int_equal(e, -EBADMSG);
        assert_non_null(strstr(f->err, "is not a pool state file"));
        write_file(p.state, "{\"pool\": ");
        assert_null(pool_status(&p, &e, f->err, sizeof f->err));
        assert_int_equal(e, -EBADMSG);
        assert_non_null(strstr(f->err, "cannot read"));
}

/* A run root others can write to is refused before the pool puts a lock or a state there (a
 * planted pool-NAME.json would otherwise choose which VMs a drain stops). */
static void test_run_root_others_can_write(void **state) {
        Fx *f = *state;
        Pool p;
        open_pool(f, &p, "sb");
        assert_int_equal(mkdir(f->run, 0700), 0);
        assert_int_equal(chmod(f->run, 0777), 0);
        size_t started;
        PoolSettings s = { .count = 1, .have_count = true };
        assert_int_equal(pool_fill(&p, &s, &started, f->err, sizeof f->err), -EPERM);
        assert_non_null(strstr(f->err, f->run));
        assert_int_equal(access(p.lock, F_OK), -1);
        assert_int_equal(access(p.state, F_OK), -1);
}

/* A release without ballastd: the member is stopped (no VM of that name: nothing to stop) and
 * forgotten; that ballastd could not be told is said in the log, not printed. */
static void test_release_without_daemon(void **state) {
        Fx *f = *state;
        Pool p;
        open_pool(f, &p, "sb");
        assert_int_equal(mkdir(f->run, 0700), 0);
        write_file(p.state, "{\"pool\": \"sb\", \"version\": 1, \"count\": 1, \"memory_bytes\": 268435456,"
                            " \"members\": [{\"vm\": \"sb-0\", \"state\": \"parked\", \"since_us\": 1}]}\n");
        assert_int_equal(pool_release(&p, "sb-9", false, f->err, sizeof f->err), -ESRCH);
        assert_non_null(strstr(f->err, "no VM named 'sb-9'"));
        assert_int_equal(pool_release(&p, "sb-0", false, f->err, sizeof f->err), 0);
        assert_non_null(strstr(f->said, "pool sb: VM sb-0: cannot reach ballastd at"));
        int e = 0;
        json_t *s = pool_status(&p, &e, f->err, sizeof f->err);
        assert_non_null(s);
        assert_int_equal(json_array_size(json_object_get(s, "members")), 0);
        assert_true(json_is_string(json_object_get(s, "daemon_error")));
        assert_int_equal(pool_u64(s, "count"), 1);
        json_decref(s);
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        const struct CMUnitTest tests[] = {
                T(test_names),
                T(test_refused_and_missing),
                T(test_bad_state_file),
                T(test_run_root_others_can_write),
                T(test_release_without_daemon),
        };
#undef T
        return cmocka_run_group_tests(tests, NULL, NULL);
}
