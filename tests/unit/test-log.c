/* SPDX-License-Identifier: MIT */
/* shared/log: the sink (what ballastd's journal receives: level, errno, position, the VM a message
 * is about, the sanitized text), the fallback to stderr when the sink refuses, and the level filter. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "shared/log.h"

static struct {
        int calls, level, error, line;
        char file[256], vm[128], msg[512];
        bool has_vm;
        int result;
} got;

static int sink(int level, int error, const char *file, int line, const char *vm, const char *msg) {
        got.calls++;
        got.level = level;
        got.error = error;
        got.line = line;
        snprintf(got.file, sizeof got.file, "%s", file);
        got.has_vm = vm != NULL;
        snprintf(got.vm, sizeof got.vm, "%s", vm ? vm : "");
        snprintf(got.msg, sizeof got.msg, "%s", msg);
        return got.result;
}

static void test_message_vm(void **state) {
        (void) state;
        char buf[16];
        assert_string_equal(log_message_vm("VM vm1: stalled", buf, sizeof buf), "vm1");
        assert_string_equal(log_message_vm("VM a-b registered (qemu ...)", buf, sizeof buf), "a-b");
        assert_string_equal(log_message_vm("VM x, y", buf, sizeof buf), "x");
        assert_string_equal(log_message_vm("VM last", buf, sizeof buf), "last");
        assert_null(log_message_vm("Re-adopting 3 registered VMs", buf, sizeof buf));
        assert_null(log_message_vm("VM : nothing", buf, sizeof buf));
        assert_null(log_message_vm("VMs are fine", buf, sizeof buf));
        assert_null(log_message_vm("VM 0123456789abcdef: too long for buf", buf, sizeof buf));
}

static void test_sink(void **state) {
        (void) state;
        log_set_max_level(LOG_LEVEL_INFO);
        log_set_sink(sink);
        got.result = 0;
        int line = __LINE__ + 1;
        assert_int_equal(log_warning_errno(ENOENT, "VM vm7: cannot connect: %m"), -ENOENT);
        assert_int_equal(got.calls, 1);
        assert_int_equal(got.level, LOG_LEVEL_WARNING);
        assert_int_equal(got.error, ENOENT);
        assert_int_equal(got.line, line);
        assert_non_null(strstr(got.file, "test-log.c"));
        assert_true(got.has_vm);
        assert_string_equal(got.vm, "vm7");
        assert_string_equal(got.msg, "VM vm7: cannot connect: No such file or directory");

        /* One line per entry, control characters escaped, no VM field when none is named. */
        log_info("two\nlines \x1b[31m");
        assert_int_equal(got.calls, 2);
        assert_false(got.has_vm);
        assert_int_equal(got.level, LOG_LEVEL_INFO);
        assert_null(strchr(got.msg, '\n'));
        assert_null(strchr(got.msg, '\x1b'));

        /* Below the level: the sink is not called. */
        log_debug("VM vm7: detail");
        assert_int_equal(got.calls, 2);

        /* A refusing sink: the line goes to stderr instead (and the call still returns -errno). */
        got.result = -ECONNREFUSED;
        assert_int_equal(log_error_errno(EIO, "fallback"), -EIO);
        assert_int_equal(got.calls, 3);
        log_set_sink(NULL);
        log_info("no sink");
        assert_int_equal(got.calls, 3);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_message_vm),
                cmocka_unit_test(test_sink),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
