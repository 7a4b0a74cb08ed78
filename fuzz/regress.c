/* SPDX-License-Identifier: MIT */
/* Runs a libFuzzer target over stored inputs without clang or libFuzzer, so every fuzz target is
 * also a plain regression test: `fuzz-foo-regress DIR_OR_FILE...`. Exit 0 when every input ran,
 * 77 (skipped) when there was nothing to run. */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int run_file(const char *path) {
        FILE *f = fopen(path, "rbe");
        if (!f) {
                fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
                return -1;
        }
        size_t alloc = 4096, len = 0;
        uint8_t *buf = malloc(alloc);
        for (;;) {
                if (!buf) {
                        fclose(f);
                        return -1;
                }
                len += fread(buf + len, 1, alloc - len, f);
                if (len < alloc)
                        break;
                alloc *= 2;
                uint8_t *n = realloc(buf, alloc);
                if (!n)
                        free(buf);
                buf = n;
        }
        int err = ferror(f);
        fclose(f);
        if (err) {
                free(buf);
                fprintf(stderr, "cannot read %s\n", path);
                return -1;
        }
        /* Exact-size copy so that ASan sees reads past the end of the input. */
        uint8_t *exact = malloc(len ? len : 1);
        if (!exact) {
                free(buf);
                return -1;
        }
        memcpy(exact, buf, len);
        free(buf);
        LLVMFuzzerTestOneInput(exact, len);
        free(exact);
        return 0;
}

static int cmp(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

static int run_path(const char *path, unsigned *ran) {
        struct stat st;
        if (stat(path, &st) < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -1;
        }
        if (!S_ISDIR(st.st_mode)) {
                if (run_file(path) < 0)
                        return -1;
                (*ran)++;
                return 0;
        }
        struct dirent **names;
        int n = scandir(path, &names, NULL, NULL);
        if (n < 0) {
                fprintf(stderr, "%s: %s\n", path, strerror(errno));
                return -1;
        }
        char **list = calloc((size_t) n + 1, sizeof(char *));
        int k = 0, r = 0;
        for (int i = 0; i < n; i++) {
                if (names[i]->d_name[0] != '.' && list && asprintf(&list[k], "%s/%s", path, names[i]->d_name) >= 0)
                        k++;
                free(names[i]);
        }
        free(names);
        if (!list)
                return -1;
        qsort(list, (size_t) k, sizeof(char *), cmp); /* a stable order makes failures reproducible */
        for (int i = 0; i < k; i++) {
                if (r == 0 && run_path(list[i], ran) < 0)
                        r = -1;
                free(list[i]);
        }
        free(list);
        return r;
}

int main(int argc, char **argv) {
        unsigned ran = 0;
        for (int i = 1; i < argc; i++)
                if (run_path(argv[i], &ran) < 0)
                        return 1;
        printf("ran %u inputs\n", ran);
        return ran > 0 ? 0 : 77;
}
