/* SPDX-License-Identifier: MIT */
#include "shared/unix-sock.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "shared/macro.h"

static int fill_addr(const char *path, struct sockaddr_un *sa, socklen_t *ret_len, char *err, size_t errlen) {
        size_t n = strlen(path);
        *sa = (struct sockaddr_un){ .sun_family = AF_UNIX };
        if (n == 0 || n >= sizeof(sa->sun_path)) {
                snprintf(err, errlen, "socket path '%s' is %s (Unix socket paths must be 1..%zu bytes)", path,
                         n == 0 ? "empty" : "too long", sizeof(sa->sun_path) - 1);
                return -ENAMETOOLONG;
        }
        memcpy(sa->sun_path, path, n);
        *ret_len = (socklen_t) (offsetof(struct sockaddr_un, sun_path) + n + 1);
        return 0;
}

/* Validates path into *sa and creates a non-blocking stream socket; fd or negative errno. */
static int usock_prepare(const char *path, struct sockaddr_un *sa, socklen_t *salen, char *err, size_t errlen) {
        int r = fill_addr(path, sa, salen, err, errlen);
        if (r < 0)
                return r;
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                r = negative_errno();
                snprintf(err, errlen, "socket(): %s", strerror(-r));
                return r;
        }
        return fd;
}

int usock_connect(const char *path, char *err, size_t errlen) {
        struct sockaddr_un sa;
        socklen_t salen;
        int r;
        _cleanup_close_ int fd = usock_prepare(path, &sa, &salen, err, errlen);
        if (fd < 0)
                return fd;
        if (connect(fd, (struct sockaddr *) &sa, salen) < 0) {
                r = negative_errno();
                /* Unix sockets never return EINPROGRESS; EAGAIN means the backlog is full. */
                snprintf(err, errlen, "cannot connect to '%s': %s", path, strerror(-r));
                return r;
        }
        return TAKE_FD(fd);
}

int usock_check_peer(int fd, uid_t expected_uid, pid_t *ret_pid, uid_t *ret_uid, char *err, size_t errlen) {
        struct ucred uc;
        socklen_t len = sizeof(uc);

        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) < 0) {
                int r = negative_errno();
                snprintf(err, errlen, "cannot read peer credentials (SO_PEERCRED): %s", strerror(-r));
                return r;
        }
        if (ret_pid)
                *ret_pid = uc.pid;
        if (ret_uid)
                *ret_uid = uc.uid;
        if (uc.pid == 0) {
                snprintf(err, errlen,
                         "refusing peer with unknown pid (pid 0, uid %u; expected uid %d): "
                         "the hypervisor runs in another pid namespace or credentials are unavailable",
                         (unsigned) uc.uid, expected_uid == UID_ANY ? -1 : (int) expected_uid);
                return -EPERM;
        }
        if (expected_uid != UID_ANY && uc.uid != expected_uid) {
                snprintf(err, errlen, "refusing peer: socket peer uid %u (pid %d) does not match expected uid %u",
                         (unsigned) uc.uid, (int) uc.pid, (unsigned) expected_uid);
                return -EPERM;
        }
        return 0;
}

int usock_listen(const char *path, int mode, char *err, size_t errlen) {
        struct sockaddr_un sa;
        socklen_t salen;
        int r;
        _cleanup_close_ int fd = usock_prepare(path, &sa, &salen, err, errlen);
        if (fd < 0)
                return fd;
        (void) unlink(path);
        if (bind(fd, (struct sockaddr *) &sa, salen) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot bind '%s': %s", path, strerror(-r));
                return r;
        }
        if (mode >= 0 && chmod(path, (mode_t) mode) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot chmod '%s': %s", path, strerror(-r));
                return r;
        }
        if (listen(fd, 128) < 0) {
                r = negative_errno();
                snprintf(err, errlen, "cannot listen on '%s': %s", path, strerror(-r));
                return r;
        }
        return TAKE_FD(fd);
}
