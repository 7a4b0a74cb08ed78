/* SPDX-License-Identifier: MIT */
/* A protocol-faithful fake Cloud Hypervisor API server for tests, after Cloud Hypervisor's API (docs/drivers.md):
 * the /api/v1/ routes a balloon controller uses (vmm.ping, vm.info, vm.resize, vm.boot,
 * vm.counters) on the same micro-http framing as Firecracker (tests/peers/fc-peer.c, whose mh_*
 * layer this file includes), error bodies as JSON arrays of the error chain (v47 and later) or as
 * Rust Debug text (--legacy: v46), "VM not created" as 404 (v53) or 500 (before), unknown routes
 * as 404 ["Not Found"], and a simulated guest whose balloon moves toward desired_balloon in 1 MiB
 * steps at a configurable pace. Like Cloud Hypervisor, num_pages is desired_balloon >> 12
 * truncated to 32 bits (no range check) and memory_actual_size = R − balloon actual.
 *
 *   chv-peer PATH [--mem BYTES] [--zone BYTES] [--balloon BYTES] [--no-balloon] [--deflate-on-oom]
 *                 [--free-page-reporting] [--not-created|--not-booted] [--legacy]
 *                 [--pace-mib-per-s N] [--floor BYTES]
 *                 [--hang|--garbage|--close-mid-reply|--oversized|--flood-continue|--flood-headers|
 *                  --flood-chunked] [--fault-path PATH] [--ready-fd FD]
 *
 * --zone adds one NUMA memory zone of that size to R; --balloon is the boot-time balloon size;
 * --floor: the guest cannot go below that many bytes (inflation stalls there); --not-booted: the
 * VM is created, and runs after PUT /api/v1/vm.boot. Faults as in fc-peer. */
#define FC_PEER_NO_MAIN
/* Only the micro-http layer is used here; the Firecracker API comes along unused. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#include "fc-peer.c"
#pragma GCC diagnostic pop

#define CHV_PEER_MiB  (UINT64_C(1) << 20)
#define CHV_PEER_PAGE ((uint64_t) 4096)

typedef enum ChvPeerState {
        CHV_NOT_CREATED,
        CHV_CREATED,
        CHV_RUNNING,
} ChvPeerState;

typedef struct ChvPeerConfig {
        const char *socket_path;
        int listen_fd;
        int ready_fd;
        uint64_t mem;  /* memory.size, bytes */
        uint64_t zone; /* one zone of this size, 0: none */
        uint64_t balloon;
        bool no_balloon;
        bool deflate_on_oom, free_page_reporting;
        ChvPeerState state;
        bool legacy; /* v46: plain-text errors, 500 for "not created" */
        uint64_t pace_mib_s;
        uint64_t floor;
        PeerFault fault;
        const char *fault_path;
} ChvPeerConfig;

_unused_ static void chv_peer_config_init(ChvPeerConfig *c) {
        *c = (ChvPeerConfig){
                .listen_fd = -1,
                .ready_fd = -1,
                .mem = UINT64_C(1) << 30,
                .state = CHV_RUNNING,
                .pace_mib_s = 256,
        };
}

typedef struct ChvPeer {
        const ChvPeerConfig *cfg;
        MhServer mh;
        ChvPeerState state;
        uint64_t balloon_size; /* config.balloon.size: the target, as last requested */
        uint32_t target_pages; /* what the guest was told (truncated like Cloud Hypervisor) */
        uint64_t actual_pages; /* what the guest has given */
        usec_t next_step, step_period;
} ChvPeer;

static uint64_t chv_peer_ram(const ChvPeer *p) {
        return p->cfg->mem + p->cfg->zone;
}

static uint64_t chv_peer_max_balloon_pages(const ChvPeer *p) {
        uint64_t r = chv_peer_ram(p);
        return (r - MIN(r, p->cfg->floor)) / CHV_PEER_PAGE;
}

static void chv_peer_tick(MhServer *s, usec_t now) {
        ChvPeer *p = s->userdata;
        if (p->state != CHV_RUNNING || p->cfg->no_balloon)
                return;
        while (p->cfg->pace_mib_s > 0 && p->actual_pages != p->target_pages && now >= p->next_step) {
                uint64_t a = p->actual_pages, t = p->target_pages, step = CHV_PEER_MiB / CHV_PEER_PAGE;
                if (t > a) {
                        uint64_t hi = MIN(t, chv_peer_max_balloon_pages(p));
                        a += MIN(step, hi - MIN(hi, a));
                } else
                        a -= MIN(step, a - t);
                p->next_step += p->step_period;
                if (a == p->actual_pages)
                        break;
                p->actual_pages = a;
        }
}

static usec_t chv_peer_next_wakeup(MhServer *s) {
        ChvPeer *p = s->userdata;
        bool stuck = p->target_pages > p->actual_pages && p->actual_pages >= chv_peer_max_balloon_pages(p);
        if (p->state != CHV_RUNNING || p->cfg->no_balloon || p->cfg->pace_mib_s == 0 ||
            p->actual_pages == p->target_pages || stuck)
                return USEC_INFINITY;
        return p->next_step;
}

/* An error: the chain as a JSON array (v47+), or its Debug rendering as text (legacy). */
static void chv_peer_error(ChvPeer *p, MhClient *c, int status, const char *debug, const char *const *chain) {
        if (p->cfg->legacy) {
                char h[256];
                int n = snprintf(h, sizeof(h),
                                 "HTTP/1.1 %d \r\nServer: Cloud Hypervisor API\r\nConnection: keep-alive\r\n"
                                 "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                                 status, strlen(debug));
                mh_out(c, h, (size_t) n);
                mh_out(c, debug, strlen(debug));
                return;
        }
        json_t *a = json_array();
        for (size_t i = 0; chain[i]; i++)
                json_array_append_new(a, json_string(chain[i]));
        char *b = json_dumps(a, JSON_COMPACT);
        mh_respond(&p->mh, c, status, b);
        free(b);
        json_decref(a);
}

/* "VM is not created": 404 from v53, 500 before. */
static void chv_peer_not_created(ChvPeer *p, MhClient *c, const char *what, const char *debug) {
        const char *chain[] = { "Error from API", what, "VM is not created", NULL };
        chv_peer_error(p, c, p->cfg->legacy ? 500 : 404, debug, chain);
}

static void chv_peer_info(ChvPeer *p, MhClient *c) {
        if (p->state == CHV_NOT_CREATED) {
                chv_peer_not_created(p, c, "The VM info is not available", "ApiError(VmInfo(VmNotCreated))");
                return;
        }
        char zones[128] = "";
        if (p->cfg->zone)
                snprintf(zones, sizeof(zones), ",\"zones\":[{\"id\":\"mem0\",\"size\":%" PRIu64 "}]", p->cfg->zone);
        char balloon[256] = "";
        if (!p->cfg->no_balloon) {
                if (p->cfg->legacy)
                        snprintf(balloon, sizeof(balloon),
                                 ",\"balloon\":{\"size\":%" PRIu64 ",\"deflate_on_oom\":%s,\"free_page_reporting\":%s}",
                                 p->balloon_size, p->cfg->deflate_on_oom ? "true" : "false",
                                 p->cfg->free_page_reporting ? "true" : "false");
                else
                        snprintf(balloon, sizeof(balloon),
                                 ",\"balloon\":{\"id\":null,\"pci_segment\":0,\"pci_device_id\":null,\"size\":%" PRIu64
                                 ",\"deflate_on_oom\":%s,\"free_page_reporting\":%s}",
                                 p->balloon_size, p->cfg->deflate_on_oom ? "true" : "false",
                                 p->cfg->free_page_reporting ? "true" : "false");
        }
        uint64_t r = chv_peer_ram(p), actual = r - MIN(r, p->actual_pages * CHV_PEER_PAGE);
        bool running = p->state == CHV_RUNNING;
        mh_respondf(&p->mh, c, 200,
                    "{\"config\":{\"cpus\":{\"boot_vcpus\":1,\"max_vcpus\":1},\"memory\":{\"size\":%" PRIu64
                    ",\"mergeable\":false,\"hotplug_method\":\"Acpi\",\"shared\":false,\"hugepages\":false,"
                    "\"prefault\":false,\"reserve\":false,\"thp\":true%s},\"payload\":{\"kernel\":\"/vmlinux\"}%s},"
                    "\"state\":\"%s\",\"memory_actual_size\":%" PRIu64 "%s}",
                    p->cfg->mem, zones, balloon, running ? "Running" : "Created", running ? actual : r,
                    running ? ",\"device_tree\":{\"__balloon\":{\"id\":\"__balloon\",\"resources\":[],\"children\":[],"
                              "\"pci_bdf\":\"0000:00:05.0\"}}"
                            : "");
}

static void chv_peer_resize(ChvPeer *p, MhClient *c, const MhRequest *r) {
        if (r->body_len == 0) {
                const char *chain[] = { "Bad Request", NULL };
                chv_peer_error(p, c, 400, "BadRequest", chain);
                return;
        }
        PeerField f[] = {
                { "desired_vcpus", PEER_U32 },
                { "desired_ram", PEER_U64 },
                { "desired_balloon", PEER_U64 },
        };
        char msg[512];
        if (peer_deserialize(r, "VmResizeData", f, ELEMENTSOF(f), false, msg, sizeof(msg)) < 0) {
                const char *chain[] = { "Failed to deserialize JSON", msg, NULL };
                char debug[600];
                snprintf(debug, sizeof(debug), "SerdeJsonDeserialize(Error(\"%s\"))", msg);
                chv_peer_error(p, c, 400, debug, chain);
                return;
        }
        if (p->state == CHV_NOT_CREATED) {
                chv_peer_not_created(p, c, "The VM could not be resized", "ApiError(VmResize(VmNotCreated))");
                return;
        }
        if (!f[2].seen) {
                mh_respond(&p->mh, c, 204, NULL);
                return;
        }
        if (p->cfg->no_balloon) {
                if (p->state == CHV_CREATED) { /* silently ignored before boot */
                        mh_respond(&p->mh, c, 204, NULL);
                        return;
                }
                const char *chain[] = { "Error from API", "The VM could not be resized", "Error from device manager",
                                        "Missing virtio-balloon, can't proceed as expected", NULL };
                chv_peer_error(p, c, 500, "ApiError(VmResize(DeviceManager(MissingVirtioBalloon)))", chain);
                return;
        }
        p->balloon_size = f[2].u;
        if (p->state == CHV_RUNNING) {
                p->target_pages = (uint32_t) (f[2].u >> 12); /* no range check, as in Cloud Hypervisor */
                p->next_step = now_mono() + p->step_period;
        }
        mh_respond(&p->mh, c, 204, NULL);
}

static void chv_peer_boot(ChvPeer *p, MhClient *c) {
        if (p->state == CHV_NOT_CREATED) {
                chv_peer_not_created(p, c, "The VM could not boot", "ApiError(VmBoot(VmNotCreated))");
                return;
        }
        if (p->state == CHV_RUNNING) {
                const char *chain[] = { "Error from API", "The VM could not boot", "VM is already running", NULL };
                chv_peer_error(p, c, 500, "ApiError(VmBoot(VmAlreadyRunning))", chain);
                return;
        }
        p->state = CHV_RUNNING;
        p->target_pages = (uint32_t) (p->balloon_size >> 12);
        p->next_step = now_mono() + p->step_period;
        mh_respond(&p->mh, c, 204, NULL);
}

static void chv_peer_on_request(MhServer *s, MhClient *c, const MhRequest *r) {
        ChvPeer *p = s->userdata;
        static const struct {
                const char *name;
                bool get, put;
        } routes[] = {
                { "vmm.ping", true, false },  { "vm.info", true, false },      { "vm.counters", true, false },
                { "vm.resize", false, true }, { "vm.boot", false, true },      { "vm.shutdown", false, true },
                { "vm.create", false, true }, { "vmm.shutdown", false, true },
        };

        chv_peer_tick(s, now_mono()); /* live values */
        const char *name = strncmp(r->path, "/api/v1/", 8) == 0 ? r->path + 8 : NULL;
        size_t i = 0;
        for (; name && i < ELEMENTSOF(routes); i++)
                if (strcmp(routes[i].name, name) == 0)
                        break;
        if (!name || i == ELEMENTSOF(routes)) {
                const char *chain[] = { "Not Found", NULL };
                if (p->cfg->legacy)
                        mh_respond(s, c, 404, NULL);
                else
                        chv_peer_error(p, c, 404, "NotFound", chain);
                return;
        }
        bool get = strcmp(r->method, "GET") == 0, put = strcmp(r->method, "PUT") == 0;
        if ((get && !routes[i].get) || (put && !routes[i].put)) {
                const char *chain[] = { "Bad Request", NULL };
                chv_peer_error(p, c, 400, "BadRequest", chain);
                return;
        }
        if (!get && !put) { /* PATCH/DELETE: 400 without a body on most routes */
                mh_respond(s, c, 400, NULL);
                return;
        }
        if (strcmp(name, "vmm.ping") == 0)
                mh_respondf(
                        s, c, 200,
                        "{\"build_version\":\"%s\",\"version\":\"%s\",\"pid\":%d,\"features\":[\"kvm\",\"io_uring\"]}",
                        p->cfg->legacy ? "v46.0" : "v53.0", p->cfg->legacy ? "46.0.0" : "53.0.0", (int) getpid());
        else if (strcmp(name, "vm.info") == 0)
                chv_peer_info(p, c);
        else if (strcmp(name, "vm.resize") == 0)
                chv_peer_resize(p, c, r);
        else if (strcmp(name, "vm.boot") == 0)
                chv_peer_boot(p, c);
        else if (strcmp(name, "vm.counters") == 0) {
                if (p->state != CHV_RUNNING) {
                        const char *chain[] = { "Error from API", "The VM counters are not available",
                                                "VM is not running", NULL };
                        chv_peer_error(p, c, 500, "ApiError(VmInfo(VmNotRunning))", chain);
                } else
                        mh_respond(s, c, 200,
                                   "{\"_disk0\":{\"read_bytes\":0,\"write_bytes\":0,\"read_ops\":0,"
                                   "\"write_ops\":0}}");
        } else
                mh_respond(s, c, 204, NULL); /* the lifecycle routes are accepted and ignored */
}

static int chv_peer_serve(const ChvPeerConfig *cfg) {
        ChvPeer p = { .cfg = cfg, .state = cfg->state };
        p.mh = (MhServer){
                .server_name = "Cloud Hypervisor API",
                .max_payload = (size_t) 4 << 20,
                .fault = cfg->fault,
                .fault_path = cfg->fault_path,
                .on_request = chv_peer_on_request,
                .tick = chv_peer_tick,
                .next_wakeup = chv_peer_next_wakeup,
                .userdata = &p,
        };
        p.step_period = cfg->pace_mib_s > 0 ? MAX(USEC_PER_SEC / cfg->pace_mib_s, (usec_t) 1) : USEC_INFINITY;
        p.balloon_size = cfg->no_balloon ? 0 : cfg->balloon;
        if (p.state == CHV_RUNNING) {
                p.target_pages = (uint32_t) (p.balloon_size >> 12);
                p.next_step = now_mono() + p.step_period;
        }
        return mh_serve(&p.mh, cfg->socket_path, cfg->listen_fd, cfg->ready_fd);
}

#ifndef CHV_PEER_NO_MAIN
static void chv_peer_usage(FILE *f) {
        fprintf(f,
                "usage: chv-peer PATH [--mem BYTES] [--zone BYTES] [--balloon BYTES] [--no-balloon]\n"
                "                [--deflate-on-oom] [--free-page-reporting] [--not-created|--not-booted] [--legacy]\n"
                "                [--pace-mib-per-s N] [--floor BYTES]\n"
                "                [--hang|--garbage|--close-mid-reply|--oversized|--flood-continue|\n"
                "                 --flood-headers|--flood-chunked] [--fault-path PATH] [--ready-fd FD]\n");
}

int main(int argc, char **argv) {
        ChvPeerConfig cfg;
        chv_peer_config_init(&cfg);
        for (int i = 1; i < argc; i++) {
                const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
                uint64_t x;
                int r = 0;
                if (strcmp(a, "--help") == 0) {
                        chv_peer_usage(stdout);
                        return 0;
                } else if (peer_fault_flag(a, &cfg.fault))
                        continue;
                else if (strcmp(a, "--no-balloon") == 0)
                        cfg.no_balloon = true;
                else if (strcmp(a, "--deflate-on-oom") == 0)
                        cfg.deflate_on_oom = true;
                else if (strcmp(a, "--free-page-reporting") == 0)
                        cfg.free_page_reporting = true;
                else if (strcmp(a, "--not-created") == 0)
                        cfg.state = CHV_NOT_CREATED;
                else if (strcmp(a, "--not-booted") == 0)
                        cfg.state = CHV_CREATED;
                else if (strcmp(a, "--legacy") == 0)
                        cfg.legacy = true;
                else if (a[0] != '-' && !cfg.socket_path)
                        cfg.socket_path = a;
                else {
                        i++;
                        if (strcmp(a, "--mem") == 0 || strcmp(a, "--zone") == 0 || strcmp(a, "--balloon") == 0 ||
                            strcmp(a, "--floor") == 0) {
                                if (!v || parse_size(v, &x) < 0) {
                                        fprintf(stderr, "chv-peer: invalid size for %s: '%s'\n", a, v ?: "");
                                        return 2;
                                }
                                *(a[2] == 'm'   ? &cfg.mem
                                  : a[2] == 'z' ? &cfg.zone
                                  : a[2] == 'b' ? &cfg.balloon
                                                : &cfg.floor) = x;
                        } else if (strcmp(a, "--pace-mib-per-s") == 0)
                                r = peer_u64_arg(a, v, 1000000, &cfg.pace_mib_s);
                        else if (strcmp(a, "--ready-fd") == 0) {
                                r = peer_u64_arg(a, v, INT32_MAX, &x);
                                cfg.ready_fd = (int) x;
                        } else if (strcmp(a, "--fault-path") == 0 && v)
                                cfg.fault_path = v;
                        else {
                                chv_peer_usage(stderr);
                                return 2;
                        }
                        if (r < 0)
                                return 2;
                }
        }
        if (!cfg.socket_path || cfg.mem < CHV_PEER_PAGE) {
                chv_peer_usage(stderr);
                return 2;
        }
        peer_signals();
        return chv_peer_serve(&cfg) < 0 ? 1 : 0;
}
#endif
