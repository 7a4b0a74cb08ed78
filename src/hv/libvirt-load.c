/* SPDX-License-Identifier: MIT */
/* Loads the libvirt driver module on first use (see libvirt.h). */
#include "hv/libvirt.h"

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "shared/log.h"

static const LibvirtModule *module;
static char module_error[PATH_MAX + 256];

const char *libvirt_module_error(void) {
        return module_error[0] ? module_error : "no error";
}

/* Whether the running program lives under the build tree it was built in. */
static bool running_from_build_tree(void) {
        char exe[PATH_MAX];
        ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
        if (n <= 0)
                return false;
        exe[n] = 0;
        size_t b = strlen(BALLAST_BUILDDIR);
        return strncmp(exe, BALLAST_BUILDDIR, b) == 0 && exe[b] == '/';
}

static int try_dir(const char *dir, char *tried, size_t tried_len) {
        char path[PATH_MAX];
        if ((size_t) snprintf(path, sizeof path, "%s/%s", dir, LIBVIRT_MODULE_FILE) >= sizeof path)
                return -ENAMETOOLONG;
        if (access(path, F_OK) < 0) {
                size_t k = strlen(tried);
                snprintf(tried + k, tried_len - k, "%s%s", k ? ", " : "", dir);
                return -ENOENT;
        }
        void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
                snprintf(module_error, sizeof module_error, "cannot load the libvirt driver: %s", dlerror());
                return -ELIBACC;
        }
        const LibvirtModule *m = dlsym(h, "ballast_libvirt_module");
        if (!m || m->abi != LIBVIRT_MODULE_ABI || !m->version || strcmp(m->version, BALLAST_VERSION) != 0) {
                snprintf(module_error, sizeof module_error,
                         "%s is not the libvirt driver of this ballast (version %s, driver ABI %u)", path,
                         BALLAST_VERSION, (unsigned) LIBVIRT_MODULE_ABI);
                dlclose(h);
                return -ELIBACC;
        }
        module = m; /* never unloaded: its worker threads and libvirt's own state live in it */
        log_debug("libvirt driver loaded from %s", path);
        return 0;
}

static int load(void) {
        if (module)
                return 0;
        char tried[3 * PATH_MAX] = "";
        const char *dirs[3];
        size_t n = 0;
        const char *e = getenv("BALLAST_MODULE_DIR");
        if (e && *e)
                dirs[n++] = e;
        if (running_from_build_tree())
                dirs[n++] = BALLAST_BUILDDIR "/src";
        dirs[n++] = BALLAST_MODULEDIR;
        for (size_t i = 0; i < n; i++) {
                int r = try_dir(dirs[i], tried, sizeof tried);
                if (r != -ENOENT && r != -ENAMETOOLONG)
                        return r;
        }
        snprintf(module_error, sizeof module_error, "the libvirt driver module %s is not installed (looked in %s)",
                 LIBVIRT_MODULE_FILE, tried);
        return -ELIBACC;
}

int libvirt_hv_new(Ev *ev, const LibvirtConfig *cfg, Hv **ret) {
        int r = load();
        if (r < 0)
                return r;
        return module->hv_new(ev, cfg, ret);
}

void libvirt_hv_counters(Hv *hv, LibvirtCounters *ret) {
        if (!module) {
                *ret = (LibvirtCounters){ 0 };
                return;
        }
        module->hv_counters(hv, ret);
}
