/* SPDX-License-Identifier: MIT */
/* fs_rm_rf never follows a symbolic link nor crosses a mount point; fs_check_private_dir and
 * fs_check_safe_parent refuse directories another user could subvert. Each test works in its own
 * mkdtemp directory, removed (without following links) by the teardown. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "shared/fs-util.h"
#include "shared/macro.h"

#define NOBODY 65534

typedef struct Fx {
        char tmp[256];
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
        snprintf(f->tmp, sizeof(f->tmp), "%s/ballast-test-fs-util-XXXXXX", getenv("TMPDIR") ?: "/tmp");
        if (!mkdtemp(f->tmp)) {
                free(f);
                return -1;
        }
        *state = f;
        return 0;
}

static int teardown(void **state) {
        Fx *f = *state;
        (void) nftw(f->tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
        free(f);
        return 0;
}

/* f->tmp/REL, formatted. */
_printf_(3, 4) static const char *p(Fx *f, char buf[static PATH_MAX], const char *fmt, ...) {
        char rel[PATH_MAX / 2];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(rel, sizeof(rel), fmt, ap);
        va_end(ap);
        snprintf(buf, PATH_MAX, "%s/%s", f->tmp, rel);
        return buf;
}

static void touch(const char *path) {
        int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, "keep\n", 5), 5);
        close(fd);
}

static bool exists(const char *path) {
        struct stat st;
        return lstat(path, &st) == 0;
}

/* A directory of the "victim": two files and a subdirectory with one more. */
static void make_victim(Fx *f) {
        char b[PATH_MAX];
        assert_int_equal(mkdir(p(f, b, "victim"), 0755), 0);
        touch(p(f, b, "victim/precious"));
        touch(p(f, b, "victim/other"));
        assert_int_equal(mkdir(p(f, b, "victim/sub"), 0755), 0);
        touch(p(f, b, "victim/sub/deep"));
}

static void assert_victim_intact(Fx *f) {
        char b[PATH_MAX];
        assert_true(exists(p(f, b, "victim/precious")));
        assert_true(exists(p(f, b, "victim/other")));
        assert_true(exists(p(f, b, "victim/sub/deep")));
}

static void test_rm_rf_tree(void **state) {
        Fx *f = *state;
        char b[PATH_MAX], t[PATH_MAX];
        make_victim(f);
        assert_int_equal(mkdir(p(f, b, "top"), 0700), 0);
        assert_int_equal(mkdir(p(f, b, "top/a"), 0700), 0);
        assert_int_equal(mkdir(p(f, b, "top/a/b"), 0500), 0); /* not writable by its owner */
        touch(p(f, b, "top/file"));
        touch(p(f, b, "top/a/file"));
        assert_int_equal(mkfifo(p(f, b, "top/a/fifo"), 0600), 0);
        /* Links to the victim, at every depth, and a dangling one. */
        assert_int_equal(symlink(p(f, t, "victim"), p(f, b, "top/link")), 0);
        assert_int_equal(symlink(p(f, t, "victim"), p(f, b, "top/a/link")), 0);
        assert_int_equal(symlink("../../victim/sub", p(f, b, "top/a/rel")), 0);
        assert_int_equal(symlink(p(f, t, "nowhere"), p(f, b, "top/dangling")), 0);

        assert_int_equal(fs_rm_rf(p(f, b, "top")), 0);
        assert_false(exists(p(f, b, "top")));
        assert_victim_intact(f);
        assert_true(exists(p(f, b, "victim")));
        /* Missing: nothing to do. */
        assert_int_equal(fs_rm_rf(p(f, b, "top")), 0);
}

/* The run directory's entry itself replaced by a link to the victim: only the link goes. */
static void test_rm_rf_top_is_symlink(void **state) {
        Fx *f = *state;
        char b[PATH_MAX], t[PATH_MAX];
        make_victim(f);
        assert_int_equal(symlink(p(f, t, "victim"), p(f, b, "vm1")), 0);
        int r = fs_rm_rf(p(f, b, "vm1"));
        assert_victim_intact(f);
        assert_int_equal(r, 0);
        assert_false(exists(p(f, b, "vm1")));

        /* The same through a trailing slash, which would make the kernel follow the link. */
        assert_int_equal(symlink(p(f, t, "victim"), p(f, b, "vm2")), 0);
        assert_int_equal(fs_rm_rf(p(f, b, "vm2/")), 0);
        assert_false(exists(p(f, b, "vm2")));
        assert_victim_intact(f);
}

static void test_rm_rf_at(void **state) {
        Fx *f = *state;
        char b[PATH_MAX], t[PATH_MAX];
        make_victim(f);
        assert_int_equal(mkdir(p(f, b, "d"), 0700), 0);
        touch(p(f, b, "d/x"));
        assert_int_equal(symlink(p(f, t, "victim"), p(f, b, "l")), 0);
        int fd = open(f->tmp, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        assert_true(fd >= 0);
        assert_int_equal(fs_rm_rf_at(fd, "d"), 0);
        assert_int_equal(fs_rm_rf_at(fd, "l"), 0);
        assert_int_equal(fs_rm_rf_at(fd, "missing"), 0);
        assert_int_equal(fs_rm_rf_at(fd, ".."), -EINVAL);
        assert_int_equal(fs_rm_rf_at(fd, "a/b"), -EINVAL);
        close(fd);
        assert_false(exists(p(f, b, "d")));
        assert_false(exists(p(f, b, "l")));
        assert_victim_intact(f);
}

/* A file system mounted below is left alone, and said so. */
static void test_rm_rf_mount_point(void **state) {
        Fx *f = *state;
        char b[PATH_MAX];
        assert_int_equal(mkdir(p(f, b, "top"), 0700), 0);
        assert_int_equal(mkdir(p(f, b, "top/mnt"), 0700), 0);
        if (mount("ballast-test", p(f, b, "top/mnt"), "tmpfs", MS_NOSUID | MS_NODEV, "size=64k") < 0) {
                print_message("cannot mount a tmpfs (%s): skipped\n", strerror(errno));
                skip();
        }
        touch(p(f, b, "top/mnt/inside"));
        touch(p(f, b, "top/outside"));
        int r = fs_rm_rf(p(f, b, "top"));
        bool inside = exists(p(f, b, "top/mnt/inside"));
        bool outside = exists(p(f, b, "top/outside"));
        assert_int_equal(umount2(p(f, b, "top/mnt"), MNT_DETACH), 0);
        assert_int_equal(r, -EXDEV);
        assert_true(inside);
        assert_false(outside);
}

static void test_check_private_dir(void **state) {
        Fx *f = *state;
        char b[PATH_MAX], t[PATH_MAX];
        uid_t me = geteuid();

        assert_int_equal(mkdir(p(f, b, "ok"), 0700), 0);
        assert_int_equal(fs_check_private_dir(p(f, b, "ok"), me, f->err, sizeof(f->err)), 0);
        assert_int_equal(chmod(p(f, b, "ok"), 0755), 0);
        assert_int_equal(fs_check_private_dir(p(f, b, "ok"), me, f->err, sizeof(f->err)), 0);

        assert_int_equal(fs_check_private_dir(p(f, b, "missing"), me, f->err, sizeof(f->err)), -ENOENT);

        assert_int_equal(symlink(p(f, t, "ok"), p(f, b, "link")), 0);
        f->err[0] = 0;
        assert_int_equal(fs_check_private_dir(p(f, b, "link"), me, f->err, sizeof(f->err)), -ELOOP);
        print_message("%s\n", f->err);
        assert_non_null(strstr(f->err, p(f, b, "link")));
        assert_non_null(strstr(f->err, "symbolic link"));

        touch(p(f, b, "file"));
        assert_int_equal(fs_check_private_dir(p(f, b, "file"), me, f->err, sizeof(f->err)), -ENOTDIR);
        assert_non_null(strstr(f->err, p(f, b, "file")));

        assert_int_equal(mkdir(p(f, b, "open"), 0700), 0);
        assert_int_equal(chmod(p(f, b, "open"), 0777), 0);
        assert_int_equal(fs_check_private_dir(p(f, b, "open"), me, f->err, sizeof(f->err)), -EPERM);
        print_message("%s\n", f->err);
        assert_non_null(strstr(f->err, p(f, b, "open")));
        assert_non_null(strstr(f->err, "writable"));
        assert_int_equal(chmod(p(f, b, "open"), 0770), 0);
        assert_int_equal(fs_check_private_dir(p(f, b, "open"), me, f->err, sizeof(f->err)), -EPERM);

        /* Another user's directory (made so by root; otherwise asked for another uid). */
        assert_int_equal(mkdir(p(f, b, "theirs"), 0700), 0);
        uid_t asker = me + 1;
        if (me == 0) {
                assert_int_equal(chown(p(f, b, "theirs"), NOBODY, NOBODY), 0);
                asker = me;
        }
        assert_int_equal(fs_check_private_dir(p(f, b, "theirs"), asker, f->err, sizeof(f->err)), -EPERM);
        print_message("%s\n", f->err);
        assert_non_null(strstr(f->err, p(f, b, "theirs")));
        assert_non_null(strstr(f->err, "owned by uid"));
}

static void test_check_safe_parent(void **state) {
        Fx *f = *state;
        char b[PATH_MAX];
        uid_t me = geteuid();

        assert_int_equal(mkdir(p(f, b, "mine"), 0755), 0);
        assert_int_equal(fs_check_safe_parent(p(f, b, "mine"), me, f->err, sizeof(f->err)), 0);
        assert_int_equal(mkdir(p(f, b, "sticky"), 0700), 0);
        assert_int_equal(chmod(p(f, b, "sticky"), 01777), 0);
        assert_int_equal(fs_check_safe_parent(p(f, b, "sticky"), me, f->err, sizeof(f->err)), 0);
        assert_int_equal(fs_check_safe_parent("/", me, f->err, sizeof(f->err)), 0);

        assert_int_equal(mkdir(p(f, b, "open"), 0700), 0);
        assert_int_equal(chmod(p(f, b, "open"), 0777), 0);
        assert_int_equal(fs_check_safe_parent(p(f, b, "open"), me, f->err, sizeof(f->err)), -EPERM);
        print_message("%s\n", f->err);
        assert_non_null(strstr(f->err, p(f, b, "open")));

        if (me != 0)
                skip(); /* making a directory another user's needs root */
        assert_int_equal(mkdir(p(f, b, "theirs"), 0755), 0);
        assert_int_equal(chown(p(f, b, "theirs"), NOBODY, NOBODY), 0);
        assert_int_equal(fs_check_safe_parent(p(f, b, "theirs"), me, f->err, sizeof(f->err)), -EPERM);
        print_message("%s\n", f->err);
        assert_non_null(strstr(f->err, "owned by uid"));
}

/* fs_mkdir_p: the missing directories get exactly the mode asked (not narrowed by the umask),
 * existing ones keep theirs, parents_only leaves the last component, and a file in the way is an
 * error naming it. */
static void test_mkdir_p(void **state) {
        Fx *f = *state;
        char a[PATH_MAX], b[PATH_MAX];
        struct stat st;
        mode_t old = umask(077);
        assert_int_equal(fs_mkdir_p(p(f, a, "x/y/z"), 0755, false, f->err, sizeof f->err), 0);
        umask(old);
        assert_int_equal(stat(p(f, b, "x"), &st), 0);
        assert_int_equal(st.st_mode & 07777, 0755);
        assert_int_equal(stat(a, &st), 0);
        assert_true(S_ISDIR(st.st_mode));
        assert_int_equal(st.st_mode & 07777, 0755);
        /* Existing: untouched, and again 0. */
        assert_int_equal(chmod(p(f, b, "x/y"), 0700), 0);
        assert_int_equal(fs_mkdir_p(p(f, a, "x/y/z/"), 0755, false, f->err, sizeof f->err), 0);
        assert_int_equal(stat(b, &st), 0);
        assert_int_equal(st.st_mode & 07777, 0700);
        /* parents_only: the socket's directory, not the socket. */
        assert_int_equal(fs_mkdir_p(p(f, a, "s/t/api.sock"), 0750, true, f->err, sizeof f->err), 0);
        assert_int_equal(stat(p(f, b, "s/t"), &st), 0);
        assert_int_equal(st.st_mode & 07777, 0750);
        assert_int_equal(lstat(a, &st), -1);
        assert_int_equal(errno, ENOENT);
        /* A file in the way. */
        touch(p(f, b, "file"));
        assert_int_equal(fs_mkdir_p(p(f, a, "file/sub"), 0755, false, f->err, sizeof f->err), -ENOTDIR);
        assert_non_null(strstr(f->err, "file/sub"));
}

int main(void) {
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
        const struct CMUnitTest tests[] = {
                T(test_rm_rf_tree),        T(test_rm_rf_top_is_symlink), T(test_rm_rf_at), T(test_rm_rf_mount_point),
                T(test_check_private_dir), T(test_check_safe_parent),    T(test_mkdir_p),
        };
#undef T
        return cmocka_run_group_tests(tests, NULL, NULL);
}
