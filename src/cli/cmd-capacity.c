/* SPDX-License-Identifier: MIT */
/* ballastctl capacity SIZE — how many more VMs of SIZE fit now (GET /v1/capacity). */
#include <getopt.h>
#include <stdio.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"

static const char capacity_usage[] =
        "Usage: ballastctl capacity SIZE [options]\n"
        "\n"
        "The admission hint: how many more VMs of SIZE (e.g. 512M) the scope can take now. A new VM is\n"
        "counted at its full size; the scope keeps its low watermark free; reclaim can add what the\n"
        "registered VMs could return to the host above their floors. Both parts are shown.\n"
        "\n"
        "Options:\n" CTL_API_USAGE_OPTIONS;

static int capacity_show(json_t *c) {
        char s[FORMAT_SIZE_MAX], f[FORMAT_SIZE_MAX], r[FORMAT_SIZE_MAX], v[FORMAT_SIZE_MAX], o[FORMAT_SIZE_MAX];
        cli_field("fit", "%lld more VMs of %s", (long long) json_integer_value(json_object_get(c, "fit")),
                  cli_json_size(s, sizeof(s), json_object_get(c, "size_bytes")));
        cli_field("", "%lld in free memory alone", (long long) json_integer_value(json_object_get(c, "fit_free")));
        cli_field("free", "%s above the low watermark (%s kept free)",
                  cli_json_size(f, sizeof(f), json_object_get(c, "free_bytes")),
                  cli_json_size(v, sizeof(v), json_object_get(c, "reserve_bytes")));
        cli_field("returnable", "%s (reclaim above the VMs' floors)",
                  cli_json_size(r, sizeof(r), json_object_get(c, "returnable_bytes")));
        cli_field("overhead", "%s per VM beside guest RAM (its hypervisor's own, as measured here)",
                  cli_json_size(o, sizeof(o), json_object_get(c, "overhead_bytes")));
        cli_field("state", "%s, %lld VMs", cli_json_str(json_object_get(c, "state")),
                  (long long) json_integer_value(json_object_get(c, "vm_count")));
        return EXIT_OK;
}

int cmd_capacity(int argc, char **argv) {
        static const struct option opts[] = {
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl capacity";
        int c, r;
        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = ctl_api_common_option(c, optarg, capacity_usage)) >= 0)
                        return r;
        if (optind + 1 != argc)
                return cli_usage_error("capacity takes one argument, the VM size (e.g. 512M)");
        uint64_t size;
        if (parse_size(argv[optind], &size) < 0 || size == 0)
                return cli_usage_error("bad size '%s' (bytes, or with a K/M/G/T suffix)", argv[optind]);
        char path[64];
        snprintf(path, sizeof path, "/v1/capacity?size=%llu", (unsigned long long) size);
        return ctl_api_run("GET", path, NULL, capacity_show);
}
