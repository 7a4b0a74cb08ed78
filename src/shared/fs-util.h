/* SPDX-License-Identifier: MIT */
#pragma once

/* File-system helpers for directories that other users might try to subvert: removing a tree
 * without ever following a symbolic link, and checking that a directory is private to us. */

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Removes `path` and, if it is a directory, everything below it. Nothing is ever followed: a
 * symbolic link, at the top or anywhere below, is removed itself and its target is left alone;
 * every step is relative to an open directory (openat with O_NOFOLLOW|O_DIRECTORY, fstatat with
 * AT_SYMLINK_NOFOLLOW, unlinkat), so a component swapped for a link mid-way is not followed
 * either. Directories on another file system than path's parent (mount points, st_dev) are not
 * entered or removed. Returns 0 (also when path did not exist), -EXDEV if a mount point was left
 * in place, or the first other negative errno met (the removal goes on past errors). */
int fs_rm_rf(const char *path);

/* The same for the entry `name` of the open directory dir_fd (name is one component). */
int fs_rm_rf_at(int dir_fd, const char *name);

/* Checks that `path` itself (not followed) is a directory owned by `uid` and not writable by its
 * group or others: one that no other user can replace or fill. Returns 0; -ENOENT if it does not
 * exist; -ELOOP (a symbolic link), -ENOTDIR (not a directory), -EPERM (owned by another uid, or
 * group/world-writable) or another negative errno, with a one-line explanation naming the path
 * in `err` (may be NULL). */
int fs_check_private_dir(const char *path, uid_t uid, char *err, size_t errlen);

/* Checks that no user but `uid` and root can rename or remove entries of the directory `path`
 * (followed): owned by uid or root, and either not writable by group and others or sticky (as
 * /tmp). Returns 0 or a negative errno (-EPERM, or from stat) with `err` as above. */
int fs_check_safe_parent(const char *path, uid_t uid, char *err, size_t errlen);

/* Creates the directories of `path` that are missing, each with exactly `mode` (set again after
 * mkdir(), so the umask does not narrow it); existing ones are left as they are. With
 * parents_only, the last component is not created (the path of a socket or a file to come).
 * Returns 0 or a negative errno, with a one-line explanation naming the directory in `err`
 * (may be NULL). */
int fs_mkdir_p(const char *path, mode_t mode, bool parents_only, char *err, size_t errlen);
