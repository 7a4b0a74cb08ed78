/* SPDX-License-Identifier: MIT */
/* ballastctl vms, vm add|rm|show — the VMs registered with ballastd (GET|POST /v1/vms,
 * GET|DELETE /v1/vms/{id}). The other vm verbs are the launcher's (cmd-vm.c). */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"
#include "shared/unix-sock.h"

#define VM_ID_MAX 64

static const char vms_usage[] = "Usage: ballastctl vms [options]\n"
                                "\n"
                                "Lists the VMs registered with ballastd: their driver and status, assigned memory,\n"
                                "floor, the target last commanded, the size the hypervisor reports, and why the\n"
                                "last plan chose it. FLOOR is the effective floor (the floor fraction applied).\n"
                                "\n"
                                "Options:\n" CTL_API_USAGE_OPTIONS;

static const char vm_add_usage[] =
        "Usage: ballastctl vm add ID --driver DRIVER --socket PATH --assigned SIZE [options]\n"
        "       ballastctl vm add ID --driver libvirt --domain NAME [--uri URI] --assigned SIZE [options]\n"
        "\n"
        "Registers a VM with ballastd, which connects to its hypervisor in the background (the VM is\n"
        "'connecting' until its first actual size is read). ID: 1-64 of A-Z a-z 0-9 . _ -\n"
        "\n"
        "Options:\n"
        "  --driver DRIVER        qemu, firecracker, cloud-hypervisor or libvirt\n"
        "  --socket PATH          the hypervisor's API socket (QMP, Firecracker or Cloud Hypervisor API);\n"
        "                         an absolute path\n"
        "  --uri URI              libvirt: connection URI (e.g. qemu:///system)\n"
        "  --domain NAME          libvirt: domain name or UUID\n"
        "  --expected-uid UID     uid the hypervisor must run as (number or user name; default any)\n"
        "  --assigned SIZE        the VM's full memory, e.g. 512M or 4G (required)\n"
        "  --floor SIZE           never shrink the guest below this (default 0: the floor fraction)\n"
        "  --shares N             weight when memory is taken back, 1-1000000 (default 1000)\n" CTL_API_USAGE_OPTIONS;

static const char vm_rm_usage[] = "Usage: ballastctl vm rm ID [options]\n"
                                  "\n"
                                  "Gives the VM its full memory back (best effort) and unregisters it from ballastd.\n"
                                  "The VM itself keeps running.\n"
                                  "\n"
                                  "Options:\n" CTL_API_USAGE_OPTIONS;

static const char vm_show_usage[] = "Usage: ballastctl vm show ID [options]\n"
                                    "\n"
                                    "Shows one VM as registered with ballastd, with its sizes and status.\n"
                                    "\n"
                                    "Options:\n" CTL_API_USAGE_OPTIONS;

static bool vm_id_is_valid(const char *s) {
        size_t n = strlen(s);
        if (n == 0 || n > VM_ID_MAX)
                return false;
        return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-") == n;
}

static int vms_show(json_t *answer) {
        json_t *vms = json_object_get(answer, "vms"), *vm;
        size_t i;
        if (!json_is_array(vms))
                return cli_error(EXIT_FAIL, "ballastd's answer has no \"vms\" list");
        if (json_array_size(vms) == 0) {
                printf("no VMs registered\n");
                return EXIT_OK;
        }
        /* Sizes right-aligned: ASSIGNED, FLOOR, TARGET, ACTUAL. */
        _cleanup_(cli_table_freep) CliTable *t =
                cli_table_new(8, 0x78, "ID", "DRIVER", "STATUS", "ASSIGNED", "FLOOR", "TARGET", "ACTUAL", "REASON");
        if (!t)
                return cli_error(EXIT_FAIL, "out of memory");
        json_array_foreach(vms, i, vm) {
                char as[FORMAT_SIZE_MAX], fl[FORMAT_SIZE_MAX], tg[FORMAT_SIZE_MAX], ac[FORMAT_SIZE_MAX];
                json_t *fl_v = json_object_get(vm, "effective_floor_bytes");
                if (!json_is_integer(fl_v))
                        fl_v = json_object_get(vm, "floor_bytes");
                if (cli_table_add(t, cli_json_str(json_object_get(vm, "id")),
                                  cli_json_str(json_object_get(vm, "driver")),
                                  cli_json_str(json_object_get(vm, "status")),
                                  cli_json_size(as, sizeof(as), json_object_get(vm, "assigned_bytes")),
                                  cli_json_size(fl, sizeof(fl), fl_v),
                                  cli_json_size(tg, sizeof(tg), json_object_get(vm, "target_bytes")),
                                  cli_json_size(ac, sizeof(ac), json_object_get(vm, "actual_bytes")),
                                  cli_json_str(json_object_get(vm, "reason"))) < 0)
                        return cli_error(EXIT_FAIL, "out of memory");
        }
        cli_table_print(t, stdout);
        return EXIT_OK;
}

int cmd_vms(int argc, char **argv) {
        static const struct option opts[] = {
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl vms";
        int c, r;
        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = ctl_api_common_option(c, optarg, vms_usage)) >= 0)
                        return r;
        if (optind < argc)
                return cli_usage_error("vms takes no arguments");
        return ctl_api_run("GET", "/v1/vms", NULL, vms_show);
}

static int add_string(json_t *o, const char *key, const char *opt, const char *value) {
        json_t *s = json_string(value);
        if (!s)
                return cli_usage_error("%s is not valid UTF-8", opt);
        json_object_set_new(o, key, s);
        return 0;
}

static int vm_added(json_t *vm) {
        char as[FORMAT_SIZE_MAX], fl[FORMAT_SIZE_MAX];
        printf("VM %s registered: %s, assigned %s, floor %s, shares %lld; status %s\n",
               cli_json_str(json_object_get(vm, "id")), cli_json_str(json_object_get(vm, "driver")),
               cli_json_size(as, sizeof(as), json_object_get(vm, "assigned_bytes")),
               cli_json_size(fl, sizeof(fl), json_object_get(vm, "floor_bytes")),
               (long long) json_integer_value(json_object_get(vm, "shares")),
               cli_json_str(json_object_get(vm, "status")));
        return EXIT_OK;
}

enum {
        OPT_ADD_DRIVER = CTL_OPT_LOCAL,
        OPT_ADD_SOCKET,
        OPT_ADD_URI,
        OPT_ADD_DOMAIN,
        OPT_ADD_UID,
        OPT_ADD_ASSIGNED,
        OPT_ADD_FLOOR,
        OPT_ADD_SHARES,
};

static const char *const vm_add_drivers[] = { "qemu", "firecracker", "cloud-hypervisor", "libvirt" };

typedef struct VmAddArgs {
        const char *id;
        const char *driver, *sock, *uri, *domain;
        uint64_t assigned, floor_bytes, shares;
        bool have_floor, have_shares, have_uid;
        uid_t uid;
} VmAddArgs;

/* Applies one option of vm add (c, with its argument arg) to a. Returns -1 to go on, or the exit
 * code. */
static int vm_add_option(int c, const char *arg, VmAddArgs *a) {
        int r;
        switch (c) {
        case OPT_ADD_DRIVER:
                a->driver = arg;
                break;
        case OPT_ADD_SOCKET:
                a->sock = arg;
                break;
        case OPT_ADD_URI:
                a->uri = arg;
                break;
        case OPT_ADD_DOMAIN:
                a->domain = arg;
                break;
        case OPT_ADD_UID:
                if ((r = cli_parse_uid("--expected-uid", arg, &a->uid)) != 0)
                        return r;
                a->have_uid = a->uid != UID_ANY;
                break;
        case OPT_ADD_ASSIGNED:
                if ((r = cli_parse_size("--assigned", arg, &a->assigned)) != 0)
                        return r;
                break;
        case OPT_ADD_FLOOR:
                if ((r = cli_parse_size("--floor", arg, &a->floor_bytes)) != 0)
                        return r;
                a->have_floor = true;
                break;
        case OPT_ADD_SHARES:
                if (parse_u64(arg, &a->shares) < 0 || a->shares < 1 || a->shares > 1000000)
                        return cli_usage_error("invalid --shares '%s' (1-1000000)", arg);
                a->have_shares = true;
                break;
        default:
                return ctl_api_common_option(c, arg, vm_add_usage);
        }
        return -1;
}

/* Parses vm add's options and ID into a. Returns -1 to go on, or the exit code. */
static int vm_add_parse(int argc, char **argv, VmAddArgs *a) {
        static const struct option opts[] = {
                { "driver", required_argument, NULL, OPT_ADD_DRIVER },
                { "socket", required_argument, NULL, OPT_ADD_SOCKET },
                { "uri", required_argument, NULL, OPT_ADD_URI },
                { "domain", required_argument, NULL, OPT_ADD_DOMAIN },
                { "expected-uid", required_argument, NULL, OPT_ADD_UID },
                { "assigned", required_argument, NULL, OPT_ADD_ASSIGNED },
                { "floor", required_argument, NULL, OPT_ADD_FLOOR },
                { "shares", required_argument, NULL, OPT_ADD_SHARES },
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl vm add";
        int c, r;

        *a = (VmAddArgs){ .uid = UID_ANY };
        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = vm_add_option(c, optarg, a)) >= 0)
                        return r;
        if (optind + 1 != argc)
                return cli_usage_error("vm add needs exactly one ID");
        a->id = argv[optind];
        if (!vm_id_is_valid(a->id))
                return cli_usage_error("invalid VM id '%s' (1-64 of A-Z a-z 0-9 . _ -)", a->id);
        return -1;
}

/* Checks that the options fit together: a known driver with its way to reach the VM, and sizes
 * that make sense. Returns 0, or the exit code after saying why. */
static int vm_add_check(const VmAddArgs *a) {
        const char *const *drivers = vm_add_drivers;
        if (!a->driver)
                return cli_usage_error("vm add needs --driver (%s, %s, %s or %s)", drivers[0], drivers[1], drivers[2],
                                       drivers[3]);
        bool known = false;
        for (size_t i = 0; i < ELEMENTSOF(vm_add_drivers); i++)
                known = known || strcmp(a->driver, drivers[i]) == 0;
        if (!known)
                return cli_usage_error("unknown --driver '%s' (%s, %s, %s or %s)", a->driver, drivers[0], drivers[1],
                                       drivers[2], drivers[3]);
        if (strcmp(a->driver, "libvirt") == 0) {
                if (a->sock)
                        return cli_usage_error("--driver libvirt takes --uri and --domain, not --socket");
                if (!a->domain || !a->domain[0])
                        return cli_usage_error("--driver libvirt needs --domain NAME");
        } else {
                if (a->uri || a->domain)
                        return cli_usage_error("--uri and --domain are for --driver libvirt; %s takes --socket",
                                               a->driver);
                if (!a->sock)
                        return cli_usage_error("--driver %s needs --socket PATH", a->driver);
                if (a->sock[0] != '/')
                        return cli_usage_error("--socket must be an absolute path (ballastd opens it), not '%s'",
                                               a->sock);
        }
        if (a->assigned == 0)
                return cli_usage_error("vm add needs --assigned SIZE (the VM's full memory)");
        if (a->assigned < ((uint64_t) 1 << 20))
                return cli_usage_error("--assigned must be at least 1M");
        if (a->have_floor && a->floor_bytes > a->assigned)
                return cli_usage_error("--floor must not exceed --assigned");
        return 0;
}

/* Builds the POST /v1/vms request body from a. Returns 0 with it (owned) in ret, or the exit code
 * after saying why. */
static int vm_add_body(const VmAddArgs *a, json_t **ret) {
        json_t *body = json_object();
        int r;
        if ((r = add_string(body, "id", "ID", a->id)) != 0 ||
            (r = add_string(body, "driver", "--driver", a->driver)) != 0 ||
            (a->sock && (r = add_string(body, "socket", "--socket", a->sock)) != 0) ||
            (a->uri && (r = add_string(body, "uri", "--uri", a->uri)) != 0) ||
            (a->domain && (r = add_string(body, "domain", "--domain", a->domain)) != 0)) {
                json_decref(body);
                return r;
        }
        if (a->have_uid)
                json_object_set_new(body, "expected_uid", json_integer((json_int_t) a->uid));
        json_object_set_new(body, "assigned_bytes", json_integer((json_int_t) a->assigned));
        if (a->have_floor)
                json_object_set_new(body, "floor_bytes", json_integer((json_int_t) a->floor_bytes));
        if (a->have_shares)
                json_object_set_new(body, "shares", json_integer((json_int_t) a->shares));
        *ret = body;
        return 0;
}

int cmd_vm_add(int argc, char **argv) {
        VmAddArgs a;
        json_t *body;
        int r = vm_add_parse(argc, argv, &a);
        if (r >= 0)
                return r;
        if ((r = vm_add_check(&a)) != 0 || (r = vm_add_body(&a, &body)) != 0)
                return r;
        return ctl_api_run("POST", "/v1/vms", body, vm_added);
}

/* Parses the options of vm rm / vm show and builds "/v1/vms/ID" in path. Returns -1 to go on, or
 * the exit code. */
static int vm_id_command(int argc, char **argv, const char *verb, const char *usage, char *path, size_t len) {
        static const struct option opts[] = {
                CTL_API_LONG_OPTIONS,
                {},
        };
        int c, r;
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0)
                if ((r = ctl_api_common_option(c, optarg, usage)) >= 0)
                        return r;
        if (optind + 1 != argc)
                return cli_usage_error("vm %s needs exactly one ID", verb);
        if (!vm_id_is_valid(argv[optind]))
                return cli_usage_error("invalid VM id '%s' (1-64 of A-Z a-z 0-9 . _ -)", argv[optind]);
        /* The id's characters are all unreserved in a URL path: no escaping needed. */
        snprintf(path, len, "/v1/vms/%s", argv[optind]);
        return -1;
}

static int vm_removed(json_t *answer) {
        printf("VM %s unregistered\n", cli_json_str(json_object_get(answer, "deleted")));
        return EXIT_OK;
}

int cmd_vm_rm(int argc, char **argv) {
        static char prog[] = "ballastctl vm rm";
        char path[32 + VM_ID_MAX];
        ctl_api_command(argv, prog);
        int r = vm_id_command(argc, argv, "rm", vm_rm_usage, path, sizeof(path));
        if (r >= 0)
                return r;
        return ctl_api_run("DELETE", path, NULL, vm_removed);
}

static void show_size(const char *key, json_t *v) {
        char b[FORMAT_SIZE_MAX];
        if (json_is_integer(v))
                cli_field(key, "%s (%" PRIu64 ")", cli_json_size(b, sizeof(b), v), (uint64_t) json_integer_value(v));
        else
                cli_field(key, "%s", cli_json_size(b, sizeof(b), v));
}

static void show_scalar(const char *key, json_t *v) {
        if (json_is_string(v))
                cli_field(key, "%s", cli_json_str(v));
        else if (!v || json_is_null(v))
                cli_field(key, "-");
        else {
                char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
                cli_field(key, "%s", s ?: "?");
                free(s);
        }
}

/* A field the table below does not name, labelled like the others: "host_rss_bytes" reads
 * "host rss" and is shown as a size. */
static void field_label(const char *key, char *buf, size_t len, bool *ret_size) {
        size_t n = strlen(key);
        *ret_size = n > 6 && strcmp(key + n - 6, "_bytes") == 0;
        snprintf(buf, len, "%.*s", (int) (*ret_size ? n - 6 : n), key);
        for (char *c = buf; *c; c++)
                if (*c == '_')
                        *c = ' ';
}

static void show_other(const char *key, json_t *v) {
        char label[64];
        bool size;
        field_label(key, label, sizeof label, &size);
        if (size) {
                show_size(label, v);
                return;
        }
        if (!json_is_object(v)) {
                if (json_is_true(v) || json_is_false(v))
                        cli_field(label, "%s", json_is_true(v) ? "yes" : "no");
                else
                        show_scalar(label, v);
                return;
        }
        /* An object (guest statistics): "available 190 MiB, total 512 MiB, fresh yes" on one line. */
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return;
        const char *k;
        json_t *x;
        bool first = true;
        json_object_foreach(v, k, x) {
                char sub[64], b[FORMAT_SIZE_MAX];
                bool sub_size;
                field_label(k, sub, sizeof sub, &sub_size);
                fprintf(f, "%s%s ", first ? "" : ", ", sub);
                if (sub_size)
                        fputs(cli_json_size(b, sizeof b, x), f);
                else if (json_is_boolean(x))
                        fputs(json_is_true(x) ? "yes" : "no", f);
                else if (json_is_string(x))
                        fputs(cli_json_str(x), f);
                else if (!x || json_is_null(x))
                        fputs("-", f);
                else {
                        _cleanup_free_ char *j = json_dumps(x, JSON_COMPACT | JSON_ENCODE_ANY);
                        fputs(j ?: "?", f);
                }
                first = false;
        }
        if (fclose(f) != 0)
                return;
        cli_field(label, "%s", first ? "-" : buf);
}

static int vm_show(json_t *vm) {
        /* The fields of the VM object (docs/api.md) in a reading order; any others follow as is. */
        static const struct {
                const char *field, *label;
                bool size;
        } fields[] = {
                { "id", "id", false },
                { "driver", "driver", false },
                { "socket", "socket", false },
                { "uri", "uri", false },
                { "domain", "domain", false },
                { "expected_uid", "expected uid", false },
                { "status", "status", false },
                { "assigned_bytes", "assigned", true },
                { "floor_bytes", "floor", true },
                { "effective_floor_bytes", "effective floor", true },
                { "shares", "shares", false },
                { "target_bytes", "target", true },
                { "actual_bytes", "actual", true },
                { "desired_bytes", "desired", true },
                { "reason", "reason", false },
                { "last_error", "last error", false },
                { "errors", "errors", false },
                { "updated", "updated", false },
        };
        if (!json_is_object(vm))
                return cli_error(EXIT_FAIL, "ballastd's answer is not a VM object");
        for (size_t i = 0; i < ELEMENTSOF(fields); i++) {
                json_t *v = json_object_get(vm, fields[i].field);
                if (!v && (strcmp(fields[i].field, "uri") == 0 || strcmp(fields[i].field, "domain") == 0 ||
                           strcmp(fields[i].field, "socket") == 0))
                        continue; /* the driver's address: socket, or uri and domain */
                if (strcmp(fields[i].field, "expected_uid") == 0 && (!v || json_is_null(v)))
                        cli_field(fields[i].label, "any");
                else if (fields[i].size)
                        show_size(fields[i].label, v);
                else
                        show_scalar(fields[i].label, v);
        }
        const char *key;
        json_t *v;
        json_object_foreach(vm, key, v) {
                bool known = false;
                for (size_t i = 0; i < ELEMENTSOF(fields) && !known; i++)
                        known = strcmp(key, fields[i].field) == 0;
                if (!known)
                        show_other(key, v);
        }
        return EXIT_OK;
}

int cmd_vm_show(int argc, char **argv) {
        static char prog[] = "ballastctl vm show";
        char path[32 + VM_ID_MAX];
        ctl_api_command(argv, prog);
        int r = vm_id_command(argc, argv, "show", vm_show_usage, path, sizeof(path));
        if (r >= 0)
                return r;
        return ctl_api_run("GET", path, NULL, vm_show);
}
