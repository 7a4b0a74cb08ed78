/* SPDX-License-Identifier: MIT */
#include "shared/fs-util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shared/macro.h"
#include "shared/strutil.h"

/* Deeper than anything we create: a deeper tree is someone else's doing, and not worth a stack. */
#define RM_RF_DEPTH_MAX 32

_printf_(3, 4) static void fs_seterr(char *err, size_t errlen, const char *fmt, ...) {
        if (!err || errlen == 0)
                return;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
}

static bool name_is_one_component(const char *name) {
        return name && name[0] && !strchr(name, '/') && strcmp(name, ".") != 0 && strcmp(name, "..") != 0;
}

static int rm_rf_entry(int dir_fd, const char *name, dev_t dev, unsigned depth);

/* Removes everything in the directory fd (consumed). */
static int rm_rf_children(int fd, dev_t dev, unsigned depth) {
        DIR *d = fdopendir(fd);
        if (!d) {
                int r = negative_errno();
                safe_close(fd);
                return r;
        }
        int r = 0;
        struct dirent *de;
        for (;;) {
                errno = 0;
                de = readdir(d);
                if (!de) {
                        if (errno != 0 && r == 0)
                                r = negative_errno();
                        break;
                }
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                        continue;
                int k = rm_rf_entry(dirfd(d), de->d_name, dev, depth + 1);
                if (k < 0 && r == 0)
                        r = k;
        }
        closedir(d);
        return r;
}

static int rm_rf_entry(int dir_fd, const char *name, dev_t dev, unsigned depth) {
        struct stat st;
        if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0)
                return errno == ENOENT ? 0 : negative_errno();
        if (!S_ISDIR(st.st_mode)) {
                /* Files, sockets, fifos and symbolic links: unlinking a link never touches its target. */
                if (unlinkat(dir_fd, name, 0) < 0 && errno != ENOENT)
                        return negative_errno();
                return 0;
        }
        if (st.st_dev != dev)
                return -EXDEV; /* a mount point: neither entered nor removed */
        if (depth >= RM_RF_DEPTH_MAX)
                return -ELOOP;
        /* O_NOFOLLOW|O_DIRECTORY: if the entry was swapped for a link since the fstatat, this fails
         * instead of opening the link's target. */
        int fd = openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
        if (fd < 0)
                return errno == ENOENT ? 0 : negative_errno();
        struct stat st2;
        if (fstat(fd, &st2) < 0) {
                int r = negative_errno();
                safe_close(fd);
                return r;
        }
        if (st2.st_dev != dev) {
                safe_close(fd);
                return -EXDEV;
        }
        int r = rm_rf_children(fd, dev, depth);
        if (unlinkat(dir_fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
                r = negative_errno();
        return r;
}

int fs_rm_rf_at(int dir_fd, const char *name) {
        if (dir_fd < 0 || !name_is_one_component(name))
                return -EINVAL;
        struct stat st;
        if (fstat(dir_fd, &st) < 0)
                return negative_errno();
        return rm_rf_entry(dir_fd, name, st.st_dev, 0);
}

int fs_rm_rf(const char *path) {
        char buf[PATH_MAX];
        if (!path || strscpy(buf, sizeof(buf), path) >= sizeof(buf))
                return path ? -ENAMETOOLONG : -EINVAL;
        /* "dir/" would make the kernel follow a link at dir: the last component is taken bare. */
        size_t n = strlen(buf);
        while (n > 1 && buf[n - 1] == '/')
                buf[--n] = '\0';
        char *slash = strrchr(buf, '/');
        const char *name;
        _cleanup_close_ int parent = -EBADF;
        if (!slash) {
                name = buf;
                parent = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        } else {
                *slash = '\0';
                name = slash + 1;
                parent = open(slash == buf ? "/" : buf, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        }
        if (!name_is_one_component(name))
                return -EINVAL;
        if (parent < 0)
                return errno == ENOENT ? 0 : negative_errno();
        return fs_rm_rf_at(parent, name);
}

int fs_check_private_dir(const char *path, uid_t uid, char *err, size_t errlen) {
        struct stat st;
        if (!path)
                return -EINVAL;
        if (lstat(path, &st) < 0) {
                int r = negative_errno();
                fs_seterr(err, errlen, "cannot inspect '%s': %s", path, strerror(-r));
                return r;
        }
        if (S_ISLNK(st.st_mode)) {
                fs_seterr(err, errlen, "refusing to use '%s': it is a symbolic link, not a directory", path);
                return -ELOOP;
        }
        if (!S_ISDIR(st.st_mode)) {
                fs_seterr(err, errlen, "refusing to use '%s': it is not a directory", path);
                return -ENOTDIR;
        }
        if (st.st_uid != uid) {
                fs_seterr(err, errlen, "refusing to use '%s': it is owned by uid %u, not by uid %u", path,
                          (unsigned) st.st_uid, (unsigned) uid);
                return -EPERM;
        }
        if (st.st_mode & (S_IWGRP | S_IWOTH)) {
                fs_seterr(err, errlen, "refusing to use '%s': it is writable by its group or others (mode %04o)", path,
                          (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        return 0;
}

int fs_check_safe_parent(const char *path, uid_t uid, char *err, size_t errlen) {
        struct stat st;
        if (!path)
                return -EINVAL;
        if (stat(path, &st) < 0) {
                int r = negative_errno();
                fs_seterr(err, errlen, "cannot inspect '%s': %s", path, strerror(-r));
                return r;
        }
        if (!S_ISDIR(st.st_mode)) {
                fs_seterr(err, errlen, "refusing to use '%s': it is not a directory", path);
                return -ENOTDIR;
        }
        if (st.st_uid != uid && st.st_uid != 0) {
                fs_seterr(err, errlen, "refusing to use '%s': it is owned by uid %u (only uid %u or root may own it)",
                          path, (unsigned) st.st_uid, (unsigned) uid);
                return -EPERM;
        }
        if ((st.st_mode & (S_IWGRP | S_IWOTH)) && !(st.st_mode & S_ISVTX)) {
                fs_seterr(err, errlen,
                          "refusing to use '%s': other users may rename its entries (writable by group or others, "
                          "not sticky: mode %04o)",
                          path, (unsigned) (st.st_mode & 07777));
                return -EPERM;
        }
        return 0;
}

int fs_mkdir_p(const char *path, mode_t mode, bool parents_only, char *err, size_t errlen) {
        char buf[PATH_MAX];
        if (strscpy(buf, sizeof buf, path) >= sizeof buf) {
                fs_seterr(err, errlen, "path too long: '%.64s…'", path);
                return -ENAMETOOLONG;
        }
        size_t n = strlen(buf);
        while (n > 1 && buf[n - 1] == '/')
                buf[--n] = '\0';
        for (char *p = buf + 1;; p++) {
                bool end = *p == '\0';
                if (!end && *p != '/')
                        continue;
                if (end && parents_only)
                        return 0;
                *p = '\0';
                if (mkdir(buf, mode) == 0) {
                        if (chmod(buf, mode) < 0) {
                                int r = negative_errno();
                                fs_seterr(err, errlen, "cannot chmod '%s': %s", buf, strerror(-r));
                                return r;
                        }
                } else if (errno != EEXIST) {
                        int r = negative_errno();
                        fs_seterr(err, errlen, "cannot create directory '%s': %s", buf, strerror(-r));
                        return r;
                }
                if (end)
                        return 0;
                *p = '/';
        }
}
