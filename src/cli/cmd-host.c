/* SPDX-License-Identifier: MIT */
/* ballastctl host — the memory scope as ballastd sees it (GET /v1/host). */
#include <getopt.h>
#include <stdio.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"

static const char host_usage[] =
        "Usage: ballastctl host [options]\n"
        "\n"
        "Shows the memory scope ballastd watches (the host or a cgroup): total and available memory,\n"
        "PSI, the pressure state and its watermarks, what is being reclaimed, and the manual hold set\n"
        "by 'ballastctl reclaim'.\n"
        "\n"
        "Options:\n" CTL_API_USAGE_OPTIONS;

static void show_reclaim(json_t *rc) {
        char a[FORMAT_SIZE_MAX], h[FORMAT_SIZE_MAX], q[FORMAT_SIZE_MAX], p[FORMAT_SIZE_MAX];
        if (!json_is_object(rc)) {
                cli_field("reclaim", "-");
                return;
        }
        cli_field("reclaim", "automatic %s, hold %s, requested %s, planned %s",
                  cli_json_size(a, sizeof(a), json_object_get(rc, "automatic_bytes")),
                  cli_json_size(h, sizeof(h), json_object_get(rc, "hold_bytes")),
                  cli_json_size(q, sizeof(q), json_object_get(rc, "requested_bytes")),
                  cli_json_size(p, sizeof(p), json_object_get(rc, "planned_bytes")));
        cli_field("", "commanded %s, shortfall %s", cli_json_size(a, sizeof(a), json_object_get(rc, "commanded_bytes")),
                  cli_json_size(q, sizeof(q), json_object_get(rc, "shortfall_bytes")));
        json_t *eff = json_object_get(rc, "efficiency");
        char e[32] = "";
        if (json_is_number(eff))
                snprintf(e, sizeof e, " (%.0f%%)", 100.0 * json_number_value(eff));
        cli_field("", "host got back %s of %s the guests gave up%s; returnable %s",
                  cli_json_size(h, sizeof(h), json_object_get(rc, "reached_bytes")),
                  cli_json_size(p, sizeof(p), json_object_get(rc, "guest_reached_bytes")), e,
                  cli_json_size(a, sizeof(a), json_object_get(rc, "returnable_bytes")));
}

static void show_hold(json_t *hold) {
        char b[FORMAT_SIZE_MAX], left[32];
        if (!json_is_object(hold)) {
                cli_field("hold", "none");
                return;
        }
        json_t *rem = json_object_get(hold, "remaining_s");
        const char *reason = json_string_value(json_object_get(hold, "reason"));
        cli_field("hold", "%s, %s left (until %s)%s%s", cli_json_size(b, sizeof(b), json_object_get(hold, "bytes")),
                  json_is_number(rem) ? cli_format_seconds(left, sizeof(left), json_number_value(rem)) : "?",
                  cli_json_str(json_object_get(hold, "until")), reason && reason[0] ? ", reason: " : "", reason ?: "");
}

static int host_show(json_t *h) {
        char t[FORMAT_SIZE_MAX], a[FORMAT_SIZE_MAX], pct[32] = "";
        json_t *total = json_object_get(h, "total_bytes"), *avail = json_object_get(h, "available_bytes");

        cli_field("scope", "%s", cli_json_str(json_object_get(h, "scope")));
        cli_field("total", "%s", cli_json_size(t, sizeof(t), total));
        if (json_is_integer(total) && json_integer_value(total) > 0 && json_is_integer(avail))
                snprintf(pct, sizeof(pct), " (%.1f%%)",
                         100.0 * (double) json_integer_value(avail) / (double) json_integer_value(total));
        cli_field("available", "%s%s", cli_json_size(a, sizeof(a), avail), pct);

        json_t *psi = json_object_get(h, "psi");
        if (json_is_object(psi)) {
                json_t *some = json_object_get(psi, "some_avg10"), *full = json_object_get(psi, "full_avg10");
                cli_field("psi", "some %.2f, full %.2f (avg10)", json_number_value(some), json_number_value(full));
        } else
                cli_field("psi", "not available");

        json_t *since = json_object_get(h, "state_since"), *tr = json_object_get(h, "transitions");
        cli_field("state", "%s%s%s, %lld transitions", cli_json_str(json_object_get(h, "state")),
                  json_is_string(since) ? " since " : "", json_string_value(since) ?: "",
                  (long long) json_integer_value(tr));

        json_t *wm = json_object_get(h, "watermarks");
        cli_field("watermarks", "low %s, high %s, critical %s",
                  cli_json_size(t, sizeof(t), json_object_get(wm, "low_bytes")),
                  cli_json_size(a, sizeof(a), json_object_get(wm, "high_bytes")),
                  cli_json_size(pct, sizeof(pct), json_object_get(wm, "critical_bytes")));

        show_reclaim(json_object_get(h, "reclaim"));
        show_hold(json_object_get(h, "hold"));
        cli_field("vms", "%lld", (long long) json_integer_value(json_object_get(h, "vm_count")));
        json_t *age = json_object_get(h, "sample_age_ms");
        if (json_is_number(age))
                cli_field("sample age", "%.0f ms", json_number_value(age));
        return EXIT_OK;
}

int cmd_host(int argc, char **argv) {
        static const struct option opts[] = {
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl host";
        int c, r;
        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = ctl_api_common_option(c, optarg, host_usage)) >= 0)
                        return r;
        if (optind < argc)
                return cli_usage_error("host takes no arguments");
        return ctl_api_run("GET", "/v1/host", NULL, host_show);
}
