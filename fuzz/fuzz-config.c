/* SPDX-License-Identifier: MIT */
/* Fuzzes ballastd's configuration parser: any bytes either parse or fail with a one-line reason,
 * and a configuration that parses dumps to a text that parses back to the same dump. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/config.h"

static char *dump(const DaemonConfig *c) {
        char *s = NULL;
        size_t n = 0;
        FILE *f = open_memstream(&s, &n);
        if (!f)
                abort();
        if (config_dump(c, f) < 0)
                abort();
        fclose(f);
        return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size > CONFIG_FILE_MAX + 1)
                return 0;
        /* Exact-size copy, not NUL-terminated: any read past the end is caught by ASan. */
        char *buf = malloc(size ? size : 1);
        if (!buf)
                return 0;
        memcpy(buf, data, size);

        DaemonConfig c;
        char err[CONFIG_ERR_MAX];
        err[0] = '\0';
        int r = config_parse_string(buf, size, "fuzz.conf", &c, err, sizeof(err));
        free(buf);
        if (r < 0) {
                /* Every failure explains itself in one line that names the file. */
                if (strncmp(err, "fuzz.conf:", 10) != 0 || strchr(err, '\n'))
                        abort();
                return 0;
        }

        char *first = dump(&c);
        config_done(&c);
        if (config_parse_string(first, strlen(first), "dump", &c, err, sizeof(err)) < 0) {
                fprintf(stderr, "the dump does not parse: %s\n%s", err, first);
                abort();
        }
        char *second = dump(&c);
        config_done(&c);
        if (strcmp(first, second) != 0) {
                fprintf(stderr, "the dump changed:\n%s---\n%s", first, second);
                abort();
        }
        free(first);
        free(second);
        return 0;
}
