/* SPDX-License-Identifier: MIT */
/* The API load of bench/soak: CLIENTS threads, each opening a fresh connection to ballastd's Unix
 * socket for every request (the API answers one request per connection), together RATE requests a
 * second on a fixed schedule (each client every CLIENTS / RATE seconds, at a random phase), for
 * SECONDS (0: until stdin closes).
 *
 *   soak-load SOCKET CLIENTS RATE SECONDS PREFIX COUNT
 *
 * PREFIX and COUNT name the VMs the requests may address: PREFIX0000 … PREFIX(COUNT-1), which the
 * caller keeps registered and healthy for the whole run. The mix, per 1,000 requests: reads
 * (GET /v1/health 300, /v1/host 150, /v1/vms/ID 310, /v1/vms/ID/stats 40, /v1/history?limit=20
 * 50, and the two big answers, /metrics and /v1/vms, 1 each: about 520 and 670 KB at 1,000 VMs, so
 * once a second each, far more often than a scraper or a dashboard asks) and writes
 * (PATCH /v1/vms/ID shares 140, POST /v1/memory/reclaim as a dry run 8).
 *
 * A request's latency runs from connect() to the end of the answer. Every second one line on
 * stdout: "tick T COUNT ERRORS P50_US P99_US MAX_US READ_P99_US WRITE_P99_US"; at the end
 * "total COUNT ERRORS P50_US P99_US P999_US MAX_US READ_P99_US WRITE_P99_US". An error is an
 * answer other than 2xx, or none within 10 s; the first 20 are described on stderr. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define SOAK_BUCKET_US 10
#define SOAK_BUCKETS   100000 /* 10 µs buckets up to 1 s; the last one holds everything above */
#define SOAK_TIMEOUT_S 10
#define MIN_SZ(a, b)   ((a) < (b) ? (a) : (b))
#define MIN_U64(a, b)  ((a) < (b) ? (a) : (b))
#define MAX_U64(a, b)  ((a) > (b) ? (a) : (b))

typedef struct SoakHist {
        uint32_t b[SOAK_BUCKETS];
        uint64_t count, max_us;
} SoakHist;

typedef struct SoakStats {
        SoakHist all, read, write;
        uint64_t errors;
} SoakStats;

static const char *soak_socket, *soak_prefix;
static unsigned soak_count, soak_clients;
static double soak_rate;
static atomic_bool soak_stop;
static atomic_int soak_errors_told;
static pthread_mutex_t soak_lock = PTHREAD_MUTEX_INITIALIZER;
static SoakStats soak_tick, soak_total;

static uint64_t soak_now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static void soak_hist_add(SoakHist *h, uint64_t us) {
        uint64_t i = us / SOAK_BUCKET_US;
        h->b[i < SOAK_BUCKETS ? i : SOAK_BUCKETS - 1]++;
        h->count++;
        if (us > h->max_us)
                h->max_us = us;
}

static void soak_hist_merge(SoakHist *to, const SoakHist *from) {
        for (size_t i = 0; i < SOAK_BUCKETS; i++)
                to->b[i] += from->b[i];
        to->count += from->count;
        if (from->max_us > to->max_us)
                to->max_us = from->max_us;
}

/* The upper edge of the bucket holding the q-quantile (permille), in µs; 0 when empty. */
static uint64_t soak_hist_quantile(const SoakHist *h, unsigned permille) {
        if (!h->count)
                return 0;
        uint64_t want = (h->count * permille + 999) / 1000, seen = 0;
        for (size_t i = 0; i < SOAK_BUCKETS; i++) {
                seen += h->b[i];
                if (seen >= want)
                        return i == SOAK_BUCKETS - 1 ? h->max_us : (i + 1) * SOAK_BUCKET_US;
        }
        return h->max_us;
}

typedef struct SoakReq {
        char buf[512];
        size_t len;
        bool write;
        char what[200];
} SoakReq;

static void soak_pick(SoakReq *r, unsigned *seed) {
        unsigned x = (unsigned) rand_r(seed) % 1000;
        unsigned vm = (unsigned) rand_r(seed) % soak_count;
        char id[80];
        snprintf(id, sizeof id, "%s%04u", soak_prefix, vm);
        const char *path = NULL;
        char pathbuf[160], body[160];
        body[0] = '\0';
        const char *method = "GET";
        r->write = false;
        if (x < 300)
                path = "/v1/health";
        else if (x < 450)
                path = "/v1/host";
        else if (x < 760)
                snprintf(pathbuf, sizeof pathbuf, "/v1/vms/%s", id), path = pathbuf;
        else if (x < 800)
                snprintf(pathbuf, sizeof pathbuf, "/v1/vms/%s/stats", id), path = pathbuf;
        else if (x < 850)
                path = "/v1/history?limit=20";
        else if (x < 851)
                path = "/metrics";
        else if (x < 852)
                path = "/v1/vms";
        else if (x < 992) {
                method = "PATCH";
                snprintf(pathbuf, sizeof pathbuf, "/v1/vms/%s", id), path = pathbuf;
                snprintf(body, sizeof body, "{\"shares\": %u}", 900 + (unsigned) rand_r(seed) % 201);
                r->write = true;
        } else {
                method = "POST";
                path = "/v1/memory/reclaim";
                snprintf(body, sizeof body, "{\"reclaim_bytes\": %u, \"dry_run\": true}",
                         (1u + (unsigned) rand_r(seed) % 512) << 20);
                r->write = true;
        }
        int n;
        if (body[0])
                n = snprintf(r->buf, sizeof r->buf,
                             "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
                             "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                             method, path, strlen(body), body);
        else
                n = snprintf(r->buf, sizeof r->buf, "%s %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
                             method, path);
        r->len = (size_t) n;
        snprintf(r->what, sizeof r->what, "%s %s", method, path);
}

/* One request on a fresh connection: the HTTP status, or -errno. */
static int soak_do(const SoakReq *r) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        struct timeval tv = { .tv_sec = SOAK_TIMEOUT_S };
        (void) setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        (void) setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        snprintf(sa.sun_path, sizeof sa.sun_path, "%s", soak_socket);
        int status = 0;
        if (connect(fd, (struct sockaddr *) &sa, sizeof sa) < 0) {
                status = -errno;
                goto out;
        }
        for (size_t off = 0; off < r->len;) {
                ssize_t k = send(fd, r->buf + off, r->len - off, MSG_NOSIGNAL);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        status = -errno;
                        goto out;
                }
                off += (size_t) k;
        }
        /* Read to EOF (every answer closes the connection); the status is in the first line. */
        char head[16], buf[65536];
        size_t got = 0;
        for (;;) {
                ssize_t k = recv(fd, buf, sizeof buf, 0);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        status = -errno;
                        goto out;
                }
                if (k == 0)
                        break;
                if (got < sizeof head) {
                        size_t c = MIN_SZ(sizeof head - got, (size_t) k);
                        memcpy(head + got, buf, c);
                }
                got += (size_t) k;
        }
        if (got >= 12 && memcmp(head, "HTTP/1.", 7) == 0)
                status = atoi(head + 9);
        else
                status = -EPROTO;
out:
        close(fd);
        return status;
}

static void *soak_client(void *arg) {
        unsigned seed = (unsigned) (uintptr_t) arg * 2654435761u + (unsigned) getpid();
        uint64_t period = (uint64_t) (soak_clients / soak_rate * 1e6);
        uint64_t next = soak_now_us() + (uint64_t) rand_r(&seed) % (period ? period : 1);
        while (!atomic_load(&soak_stop)) {
                uint64_t now = soak_now_us();
                if (now < next) {
                        uint64_t d = next - now;
                        struct timespec ts = { .tv_sec = (time_t) (d / 1000000),
                                               .tv_nsec = (long) (d % 1000000) * 1000 };
                        nanosleep(&ts, NULL);
                        continue;
                }
                /* Behind schedule (a slow answer): go on from now, no burst to catch up. */
                next = MAX_U64(next + period, now);
                SoakReq r;
                soak_pick(&r, &seed);
                uint64_t t0 = soak_now_us();
                int st = soak_do(&r);
                uint64_t us = soak_now_us() - t0;
                bool bad = st < 200 || st > 299;
                pthread_mutex_lock(&soak_lock);
                soak_hist_add(&soak_tick.all, us);
                soak_hist_add(r.write ? &soak_tick.write : &soak_tick.read, us);
                if (bad)
                        soak_tick.errors++;
                pthread_mutex_unlock(&soak_lock);
                if (bad && atomic_fetch_add(&soak_errors_told, 1) < 20) {
                        if (st < 0)
                                fprintf(stderr, "soak-load: %s: %s after %" PRIu64 " us\n", r.what, strerror(-st), us);
                        else
                                fprintf(stderr, "soak-load: %s: HTTP %d after %" PRIu64 " us\n", r.what, st, us);
                }
        }
        return NULL;
}

static void soak_print(const char *tag, double t, const SoakStats *s, bool total) {
        if (total)
                printf("%s %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                       "\n",
                       tag, s->all.count, s->errors, soak_hist_quantile(&s->all, 500), soak_hist_quantile(&s->all, 990),
                       soak_hist_quantile(&s->all, 999), s->all.max_us, soak_hist_quantile(&s->read, 990),
                       soak_hist_quantile(&s->write, 990));
        else
                printf("%s %.3f %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
                       tag, t, s->all.count, s->errors, soak_hist_quantile(&s->all, 500),
                       soak_hist_quantile(&s->all, 990), s->all.max_us, soak_hist_quantile(&s->read, 990),
                       soak_hist_quantile(&s->write, 990));
        fflush(stdout);
}

static bool soak_stdin_closed(void) {
        struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
        if (poll(&p, 1, 0) <= 0)
                return false;
        char c[256];
        return read(STDIN_FILENO, c, sizeof c) <= 0;
}

int main(int argc, char **argv) {
        if (argc != 7) {
                fprintf(stderr, "usage: soak-load SOCKET CLIENTS RATE SECONDS PREFIX COUNT\n");
                return 2;
        }
        soak_socket = argv[1];
        soak_clients = (unsigned) strtoul(argv[2], NULL, 10);
        soak_rate = strtod(argv[3], NULL);
        double seconds = strtod(argv[4], NULL);
        soak_prefix = argv[5];
        soak_count = (unsigned) strtoul(argv[6], NULL, 10);
        if (!soak_clients || soak_rate <= 0 || !soak_count ||
            strlen(soak_socket) >= sizeof((struct sockaddr_un){}).sun_path) {
                fprintf(stderr, "soak-load: bad arguments\n");
                return 2;
        }
        static SoakStats snap;
        pthread_t *th = calloc(soak_clients, sizeof *th);
        if (!th)
                return 1;
        for (unsigned i = 0; i < soak_clients; i++)
                if (pthread_create(&th[i], NULL, soak_client, (void *) (uintptr_t) (i + 1)) != 0) {
                        fprintf(stderr, "soak-load: cannot start client %u\n", i);
                        return 1;
                }
        uint64_t start = soak_now_us(), next = start + 1000000;
        while (seconds <= 0 || soak_now_us() - start < (uint64_t) (seconds * 1e6)) {
                uint64_t now = soak_now_us();
                if (now < next) {
                        struct timespec ts = { .tv_sec = 0, .tv_nsec = (long) MIN_U64(next - now, 100000) * 1000 };
                        nanosleep(&ts, NULL);
                        if (seconds <= 0 && soak_stdin_closed())
                                break;
                        continue;
                }
                next += 1000000;
                pthread_mutex_lock(&soak_lock);
                snap = soak_tick;
                memset(&soak_tick, 0, sizeof soak_tick);
                pthread_mutex_unlock(&soak_lock);
                soak_print("tick", (double) (now - start) / 1e6, &snap, false);
                soak_hist_merge(&soak_total.all, &snap.all);
                soak_hist_merge(&soak_total.read, &snap.read);
                soak_hist_merge(&soak_total.write, &snap.write);
                soak_total.errors += snap.errors;
        }
        atomic_store(&soak_stop, true);
        for (unsigned i = 0; i < soak_clients; i++)
                pthread_join(th[i], NULL);
        free(th);
        soak_hist_merge(&soak_total.all, &soak_tick.all);
        soak_hist_merge(&soak_total.read, &soak_tick.read);
        soak_hist_merge(&soak_total.write, &soak_tick.write);
        soak_total.errors += soak_tick.errors;
        soak_print("total", 0, &soak_total, true);
        return 0;
}
