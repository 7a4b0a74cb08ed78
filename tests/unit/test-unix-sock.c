/* SPDX-License-Identifier: MIT */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/macro.h"
#include "shared/unix-sock.h"

typedef struct Dir {
        char path[64];
} Dir;

static int setup_dir(void **state) {
        Dir *d = calloc(1, sizeof(Dir));
        if (!d)
                return -1;
        snprintf(d->path, sizeof(d->path), "/tmp/ballast-usock-XXXXXX");
        if (!mkdtemp(d->path)) {
                free(d);
                return -1;
        }
        *state = d;
        return 0;
}

static int teardown_dir(void **state) {
        Dir *d = *state;
        char p[128];
        snprintf(p, sizeof(p), "%s/s", d->path);
        (void) unlink(p);
        (void) rmdir(d->path);
        free(d);
        return 0;
}

static void test_path_too_long(void **state) {
        (void) state;
        char path[200], err[256] = "";
        memset(path, 'a', sizeof(path) - 1);
        path[0] = '/';
        path[sizeof(path) - 1] = 0;
        assert_int_equal(usock_connect(path, err, sizeof(err)), -ENAMETOOLONG);
        assert_non_null(strstr(err, "too long"));
        err[0] = 0;
        assert_int_equal(usock_listen(path, 0600, err, sizeof(err)), -ENAMETOOLONG);
        assert_non_null(strstr(err, "too long"));
        /* 107 bytes is the longest that fits (108 with the NUL). */
        path[108] = 0;
        err[0] = 0;
        assert_int_equal(usock_connect(path, err, sizeof(err)), -ENAMETOOLONG);
        assert_true(strlen(err) > 0);
        err[0] = 0;
        assert_int_equal(usock_connect("", err, sizeof(err)), -ENAMETOOLONG);
        assert_non_null(strstr(err, "empty"));
}

static void test_connect_to_nothing(void **state) {
        Dir *d = *state;
        char p[128], err[256] = "";
        snprintf(p, sizeof(p), "%s/s", d->path);
        int r = usock_connect(p, err, sizeof(err));
        assert_true(r == -ENOENT || r == -ECONNREFUSED);
        assert_non_null(strstr(err, p));

        /* A socket file nobody listens on: bind, close. */
        int fd = usock_listen(p, 0600, err, sizeof(err));
        assert_true(fd >= 0);
        close(fd);
        err[0] = 0;
        r = usock_connect(p, err, sizeof(err));
        assert_int_equal(r, -ECONNREFUSED);
        assert_true(strlen(err) > 0);
}

static void test_listen_connect_check_peer(void **state) {
        Dir *d = *state;
        char p[128], err[256] = "";
        snprintf(p, sizeof(p), "%s/s", d->path);
        /* A stale socket file is replaced. */
        int fd = usock_listen(p, 0600, err, sizeof(err));
        assert_true(fd >= 0);
        close(fd);
        _cleanup_close_ int lfd = usock_listen(p, 0640, err, sizeof(err));
        assert_true(lfd >= 0);
        struct stat st;
        assert_int_equal(stat(p, &st), 0);
        assert_true(S_ISSOCK(st.st_mode));
        assert_int_equal(st.st_mode & 0777, 0640);

        _cleanup_close_ int cfd = usock_connect(p, err, sizeof(err));
        assert_true(cfd >= 0);
        _cleanup_close_ int afd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        assert_true(afd >= 0);

        pid_t pid = 0;
        uid_t uid = 12345;
        assert_int_equal(usock_check_peer(cfd, geteuid(), &pid, &uid, err, sizeof(err)), 0);
        assert_int_equal(pid, getpid());
        assert_int_equal(uid, geteuid());
        assert_int_equal(usock_check_peer(afd, UID_ANY, NULL, NULL, err, sizeof(err)), 0);

        /* A wrong expectation is refused and both uids are named. */
        uid_t other = geteuid() == 0 ? 4242 : 0;
        err[0] = 0;
        uid = 12345;
        assert_int_equal(usock_check_peer(cfd, other, NULL, &uid, err, sizeof(err)), -EPERM);
        assert_int_equal(uid, geteuid());
        char want[32];
        snprintf(want, sizeof(want), "%u", (unsigned) other);
        assert_non_null(strstr(err, want));
        snprintf(want, sizeof(want), "uid %u", (unsigned) geteuid());
        assert_non_null(strstr(err, want));
}

static void test_check_peer_not_socket(void **state) {
        (void) state;
        int p[2];
        char err[256] = "";
        assert_int_equal(pipe(p), 0);
        assert_int_equal(usock_check_peer(p[0], UID_ANY, NULL, NULL, err, sizeof(err)), -ENOTSOCK);
        assert_non_null(strstr(err, "SO_PEERCRED"));
        close(p[0]);
        close(p[1]);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_path_too_long),
                cmocka_unit_test_setup_teardown(test_connect_to_nothing, setup_dir, teardown_dir),
                cmocka_unit_test_setup_teardown(test_listen_connect_check_peer, setup_dir, teardown_dir),
                cmocka_unit_test(test_check_peer_not_socket),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
