/* SPDX-License-Identifier: MIT */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Sentinel for "do not check the peer's uid". */
#define UID_ANY ((uid_t) -1)

/* Starts a non-blocking connect to the Unix socket at path. Returns the fd (O_NONBLOCK|O_CLOEXEC,
 * owned by the caller) or a negative errno with a reason in err: -ENAMETOOLONG (path ≥ 108 bytes),
 * -ENOENT / -ECONNREFUSED (nobody listening), -EAGAIN (listener backlog full: retry later). */
int usock_connect(const char *path, char *err, size_t errlen);

/* Checks the connected peer with SO_PEERCRED (B1.2). Returns 0 when the peer's uid equals
 * expected_uid (or expected_uid is UID_ANY and the pid is known), -EPERM with a message naming both
 * uids otherwise; pid 0 (peer in another pid namespace or unknown) is refused too. The peer's pid
 * and uid go to ret_pid/ret_uid when non-NULL, on success or -EPERM. */
int usock_check_peer(int fd, uid_t expected_uid, pid_t *ret_pid, uid_t *ret_uid, char *err, size_t errlen);

/* Creates a listening Unix socket at path (unlinking a stale one), mode applied with fchmod before
 * listen. Returns the fd or a negative errno. */
int usock_listen(const char *path, int mode, char *err, size_t errlen);
