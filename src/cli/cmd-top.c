/* SPDX-License-Identifier: MIT */
/* ballastctl top — a live view of the host and the VMs (GET /v1/host and GET /v1/vms every
 * interval), drawn with plain ANSI escape sequences on the alternate screen; the keyboard in
 * non-canonical mode sorts and quits. Every line is cut to the terminal's width, and what does not
 * fit in its height is counted, never wrapped. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cli/api-client.h"
#include "cli/cli-util.h"
#include "cli/commands.h"
#include "shared/strutil.h"

/* Below this the screen only says it is too small. */
#define TOP_MIN_COLS 30
#define TOP_MIN_ROWS 6
/* The bar column appears when at least this many columns are left for it. */
#define TOP_BAR_MIN  10

static const char top_usage[] =
        "Usage: ballastctl top [--interval DURATION] [--sort KEY] [options]\n"
        "\n"
        "A live view of ballastd's host and VMs, refreshed every interval: available memory, the\n"
        "watermarks, the pressure state, PSI and the manual hold; for each VM its status, the reason\n"
        "of the last plan, the memory its guest has available, and a bar of its floor, target and\n"
        "actual size against its assigned memory:\n"
        "  #  held by the guest   +  still to give up (above the target)\n"
        "  -  coming back (below the target)   .  reclaimed   |  the floor\n"
        "\n"
        "Keys: n a t c r s  sort by name, assigned, target, actual (current), reclaimed, status;\n"
        "      i  invert the order;  space  refresh now;  q  quit (also Ctrl-C).\n"
        "Each refresh waits at most 3s for the daemon unless --timeout says otherwise.\n"
        "\n"
        "Options:\n"
        "  --interval DURATION    how often to refresh, 100ms to 1h (default 1s)\n"
        "  --sort KEY             the initial order: name, assigned, target, actual, reclaimed,\n"
        "                         status (default name)\n" CTL_API_USAGE_OPTIONS;

typedef enum TopSort {
        TOP_SORT_NAME,
        TOP_SORT_ASSIGNED,
        TOP_SORT_TARGET,
        TOP_SORT_ACTUAL,
        TOP_SORT_RECLAIMED,
        TOP_SORT_STATUS,
        _TOP_SORT_MAX,
        _TOP_SORT_INVALID = -EINVAL,
} TopSort;

static const char *const top_sort_table[_TOP_SORT_MAX] = {
        [TOP_SORT_NAME] = "name",     [TOP_SORT_ASSIGNED] = "assigned",   [TOP_SORT_TARGET] = "target",
        [TOP_SORT_ACTUAL] = "actual", [TOP_SORT_RECLAIMED] = "reclaimed", [TOP_SORT_STATUS] = "status",
};
/* The key of each order, in the same order. */
static const char top_sort_keys[_TOP_SORT_MAX] = { 'n', 'a', 't', 'c', 'r', 's' };

static TopSort top_sort_from_string(const char *s) {
        for (int i = 0; i < _TOP_SORT_MAX; i++)
                if (strcmp(s, top_sort_table[i]) == 0)
                        return (TopSort) i;
        return _TOP_SORT_INVALID;
}

typedef struct Top {
        usec_t interval;
        TopSort sort;
        bool reverse;
        json_t *host, *vms; /* the last good answers (owned), NULL before the first */
        char error[512];    /* the last refresh's error, "" when it worked */
        uint64_t refreshed; /* realtime usec of the last good refresh */
        bool color;
} Top;

static volatile sig_atomic_t top_quit = 0, top_resized = 0;

static void top_on_signal(int sig) {
        if (sig == SIGWINCH)
                top_resized = 1;
        else
                top_quit = 1;
}

/* ---- the API ---- */

static int top_refresh(Top *t) {
        json_t *host = NULL, *vms = NULL;
        char err[512] = "";
        cli_capture_errors(err, sizeof err);
        int r = ctl_api_request("GET", "/v1/host", NULL, &host);
        if (r == 0)
                r = ctl_api_request("GET", "/v1/vms", NULL, &vms);
        cli_capture_errors(NULL, 0);
        if (r != 0) {
                json_decref(host);
                snprintf(t->error, sizeof t->error, "%s", err[0] ? err : "ballastd did not answer");
                return r;
        }
        json_decref(t->host);
        json_decref(t->vms);
        t->host = host;
        t->vms = vms;
        t->error[0] = '\0';
        t->refreshed = now_usec(CLOCK_REALTIME);
        return 0;
}

/* ---- sizes and sorting ---- */

static int64_t vm_num(json_t *vm, const char *key) {
        json_t *v = json_object_get(vm, key);
        return json_is_integer(v) ? (int64_t) json_integer_value(v) : -1;
}

static int64_t vm_sort_value(json_t *vm, TopSort s) {
        switch (s) {
        case TOP_SORT_ASSIGNED:
                return vm_num(vm, "assigned_bytes");
        case TOP_SORT_TARGET:
                return vm_num(vm, "target_bytes");
        case TOP_SORT_ACTUAL:
                return vm_num(vm, "actual_bytes");
        case TOP_SORT_RECLAIMED: {
                int64_t a = vm_num(vm, "assigned_bytes"), c = vm_num(vm, "actual_bytes");
                return a >= 0 && c >= 0 ? a - c : -1;
        }
        default:
                return 0;
        }
}

static int top_compare(const void *pa, const void *pb, void *userdata) {
        const Top *t = userdata;
        json_t *a = *(json_t *const *) pa, *b = *(json_t *const *) pb;
        int c = 0;
        if (t->sort == TOP_SORT_STATUS)
                c = strcmp(cli_json_str(json_object_get(a, "status")), cli_json_str(json_object_get(b, "status")));
        else if (t->sort != TOP_SORT_NAME) {
                int64_t x = vm_sort_value(a, t->sort), y = vm_sort_value(b, t->sort);
                /* Sizes: the largest first. */
                c = x < y ? 1 : x > y ? -1 : 0;
        }
        if (c == 0) /* then by id, always ascending within a tie */
                return strcmp(cli_json_str(json_object_get(a, "id")), cli_json_str(json_object_get(b, "id")));
        return t->reverse ? -c : c;
}

/* ---- drawing ---- */

/* One screen line being built: cut at `cols` columns (the text is ASCII or sanitized UTF-8;
 * each character is one column). Escape sequences added with line_sgr() take no column. */
typedef struct Line {
        char buf[2048];
        size_t len;
        int cols, used;
} Line;

static void line_init(Line *l, int cols) {
        l->len = 0;
        l->cols = cols;
        l->used = 0;
        l->buf[0] = '\0';
}

static void line_put(Line *l, const char *s) {
        for (; *s; s++) {
                bool cont = ((unsigned char) *s & 0xc0) == 0x80;
                if ((!cont && l->used >= l->cols) || l->len + 1 >= sizeof l->buf)
                        break;
                l->buf[l->len++] = *s;
                if (!cont)
                        l->used++;
        }
        l->buf[l->len] = '\0';
}

static void line_printf(Line *l, const char *fmt, ...) _printf_(2, 3);
static void line_printf(Line *l, const char *fmt, ...) {
        char tmp[1024];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(tmp, sizeof tmp, fmt, ap);
        va_end(ap);
        line_put(l, tmp);
}

static void line_sgr(Line *l, const Top *t, const char *sgr) {
        if (!t->color || l->len + strlen(sgr) + 4 >= sizeof l->buf)
                return;
        l->len += (size_t) snprintf(l->buf + l->len, sizeof l->buf - l->len, "\x1b[%sm", sgr);
}

static void line_emit(FILE *f, Line *l) {
        fputs(l->buf, f);
        fputs("\x1b[0m\x1b[K\r\n", f);
}

static const char *size_c(char *buf, size_t len, json_t *v) {
        return cli_json_size_compact(buf, len, v);
}

/* The bar of one VM: `width` characters for 0..assigned. */
static void vm_bar(char *out, int width, json_t *vm) {
        int64_t assigned = vm_num(vm, "assigned_bytes"), floor = vm_num(vm, "effective_floor_bytes"),
                target = vm_num(vm, "target_bytes"), actual = vm_num(vm, "actual_bytes");
        if (floor < 0)
                floor = vm_num(vm, "floor_bytes");
        if (assigned <= 0 || width <= 0) {
                memset(out, ' ', (size_t) MAX(width, 0));
                out[MAX(width, 0)] = '\0';
                return;
        }
#define POS(x) ((int) (((__int128) CLAMP((x), 0, assigned) * width + assigned / 2) / assigned))
        int pt = target >= 0 ? POS(target) : -1, pa = actual >= 0 ? POS(actual) : -1;
        if (pa < 0)
                pa = pt;
        for (int i = 0; i < width; i++) {
                char c = '.';
                if (pa >= 0 && pt >= 0) {
                        if (i < MIN(pa, pt))
                                c = '#';
                        else if (i < pa) /* actual above target: still to give up */
                                c = '+';
                        else if (i < pt) /* actual below target: coming back */
                                c = '-';
                }
                out[i] = c;
        }
        if (floor > 0) {
                int pf = POS(floor);
                out[MIN(pf, width - 1)] = '|';
        }
#undef POS
        out[width] = '\0';
}

static const char *status_sgr(const char *status) {
        if (strcmp(status, "ok") == 0)
                return "32";
        if (strcmp(status, "error") == 0)
                return "31";
        if (strcmp(status, "stalled") == 0)
                return "33";
        if (strcmp(status, "parked") == 0)
                return "36";
        return "0";
}

static const char *state_sgr(const char *state) {
        if (strcmp(state, "healthy") == 0)
                return "32";
        if (strcmp(state, "critical") == 0)
                return "1;31";
        return "1;33";
}

static void draw_host(FILE *f, const Top *t, int cols) {
        json_t *h = t->host;
        char a[32], b[32], c[32], d[32], pct[32] = "";
        Line l;

        line_init(&l, cols);
        char clock[32] = "-";
        if (t->refreshed) {
                time_t s = (time_t) (t->refreshed / USEC_PER_SEC);
                struct tm tm;
                strftime(clock, sizeof clock, "%H:%M:%S", localtime_r(&s, &tm));
        }
        line_sgr(&l, t, "1");
        line_printf(&l, "ballast top");
        line_sgr(&l, t, "0");
        char iv[32];
        line_printf(&l, "  %s  %s  every %s", cli_json_str(json_object_get(h, "scope")), clock,
                    format_duration(iv, sizeof iv, t->interval));
        line_emit(f, &l);

        json_t *total = json_object_get(h, "total_bytes"), *avail = json_object_get(h, "available_bytes");
        if (json_is_integer(total) && json_integer_value(total) > 0 && json_is_integer(avail))
                snprintf(pct, sizeof pct, " (%.1f%%)",
                         100.0 * (double) json_integer_value(avail) / (double) json_integer_value(total));
        const char *state = cli_json_str(json_object_get(h, "state"));
        line_init(&l, cols);
        line_printf(&l, "available %s of %s%s  state ", size_c(a, sizeof a, avail), size_c(b, sizeof b, total), pct);
        line_sgr(&l, t, state_sgr(state));
        line_put(&l, state);
        line_sgr(&l, t, "0");
        json_t *psi = json_object_get(h, "psi");
        if (json_is_object(psi))
                line_printf(&l, "  psi some %.2f full %.2f", json_number_value(json_object_get(psi, "some_avg10")),
                            json_number_value(json_object_get(psi, "full_avg10")));
        else
                line_put(&l, "  psi -");
        line_emit(f, &l);

        json_t *wm = json_object_get(h, "watermarks"), *hold = json_object_get(h, "hold");
        line_init(&l, cols);
        line_printf(&l, "watermarks low %s high %s critical %s  hold ",
                    size_c(a, sizeof a, json_object_get(wm, "low_bytes")),
                    size_c(b, sizeof b, json_object_get(wm, "high_bytes")),
                    size_c(c, sizeof c, json_object_get(wm, "critical_bytes")));
        if (json_is_object(hold)) {
                json_t *rem = json_object_get(hold, "remaining_s");
                const char *why = json_string_value(json_object_get(hold, "reason"));
                line_printf(&l, "%s, %s left%s%s", size_c(a, sizeof a, json_object_get(hold, "bytes")),
                            json_is_number(rem) ? cli_format_seconds(d, sizeof d, json_number_value(rem)) : "?",
                            why && why[0] ? ": " : "", why ?: "");
        } else
                line_put(&l, "none");
        line_emit(f, &l);

        json_t *rc = json_object_get(h, "reclaim");
        line_init(&l, cols);
        line_printf(&l, "reclaim requested %s planned %s commanded %s reached %s shortfall %s",
                    size_c(a, sizeof a, json_object_get(rc, "requested_bytes")),
                    size_c(b, sizeof b, json_object_get(rc, "planned_bytes")),
                    size_c(c, sizeof c, json_object_get(rc, "commanded_bytes")),
                    size_c(d, sizeof d, json_object_get(rc, "reached_bytes")),
                    size_c(pct, sizeof pct, json_object_get(rc, "shortfall_bytes")));
        line_emit(f, &l);
}

/* Column widths of the VM table; the bar takes what is left. */
typedef struct Cols {
        int id, status, reason, size;
        int bar;
        bool guest, floor;
} Cols;

static Cols top_columns(json_t **vms, size_t n, int cols) {
        Cols c = { .id = 2, .status = 6, .reason = 6, .size = 6, .guest = true, .floor = true };
        for (size_t i = 0; i < n; i++) {
                c.id = MAX(c.id, (int) strlen(cli_json_str(json_object_get(vms[i], "id"))));
                c.status = MAX(c.status, (int) strlen(cli_json_str(json_object_get(vms[i], "status"))));
                c.reason = MAX(c.reason, (int) strlen(cli_json_str(json_object_get(vms[i], "reason"))));
        }
        c.id = MIN(c.id, 24);
        c.reason = MIN(c.reason, 14);
        /* id status reason assigned floor target actual guest-available, two blanks apart */
        int fixed = c.id + 2 + c.status + 2 + c.reason + 2 + 5 * (c.size + 2);
        if (cols - fixed - 2 < TOP_BAR_MIN) { /* drop the least needed columns first */
                c.guest = false;
                fixed -= c.size + 2;
        }
        if (cols - fixed - 2 < TOP_BAR_MIN) {
                c.floor = false;
                fixed -= c.size + 2;
        }
        c.bar = cols - fixed - 2;
        if (c.bar < TOP_BAR_MIN)
                c.bar = 0;
        return c;
}

static void draw_vm(FILE *f, const Top *t, const Cols *c, json_t *vm, int cols) {
        char s[5][32], bar[512];
        Line l;
        const char *status = cli_json_str(json_object_get(vm, "status"));
        json_t *guest = json_object_get(vm, "guest");
        line_init(&l, cols);
        line_printf(&l, "%-*.*s  ", c->id, c->id, cli_json_str(json_object_get(vm, "id")));
        line_sgr(&l, t, status_sgr(status));
        line_printf(&l, "%-*s", c->status, status);
        line_sgr(&l, t, "0");
        line_printf(&l, "  %-*.*s  %*s", c->reason, c->reason, cli_json_str(json_object_get(vm, "reason")), c->size,
                    size_c(s[0], sizeof s[0], json_object_get(vm, "assigned_bytes")));
        if (c->floor)
                line_printf(&l, "  %*s", c->size,
                            size_c(s[1], sizeof s[1], json_object_get(vm, "effective_floor_bytes")));
        line_printf(&l, "  %*s  %*s", c->size, size_c(s[2], sizeof s[2], json_object_get(vm, "target_bytes")), c->size,
                    size_c(s[3], sizeof s[3], json_object_get(vm, "actual_bytes")));
        if (c->guest)
                line_printf(&l, "  %*s", c->size, size_c(s[4], sizeof s[4], json_object_get(guest, "available_bytes")));
        if (c->bar > 0) {
                vm_bar(bar, MIN(c->bar, (int) sizeof bar - 1), vm);
                line_printf(&l, "  %s", bar);
        }
        line_emit(f, &l);
}

static void draw(const Top *t, int cols, int rows) {
        _cleanup_free_ char *buf = NULL;
        size_t len = 0;
        FILE *f = open_memstream(&buf, &len);
        if (!f)
                return;
        fputs("\x1b[H", f);
        /* Lines end in CR LF: only rows − 1 of them, or the last would scroll the screen. The last
         * row is the status line, written without a newline. */
        int left = rows - 1;
        Line l;
        if (cols < TOP_MIN_COLS || rows < TOP_MIN_ROWS) {
                line_init(&l, cols);
                line_printf(&l, "too small (%dx%d)", cols, rows);
                fputs(l.buf, f);
                fputs("\x1b[K\x1b[J", f);
                left = 0;
        } else if (!t->host) {
                line_init(&l, cols);
                line_printf(&l, "waiting for ballastd at %s", ctl_api_path());
                line_emit(f, &l);
                left--;
        } else {
                draw_host(f, t, cols);
                left -= 4;
        }

        json_t *arr = json_object_get(t->vms, "vms");
        size_t n = json_array_size(arr);
        _cleanup_free_ json_t **vms = calloc(MAX(n, (size_t) 1), sizeof *vms);
        if (left >= 2 && vms) {
                for (size_t i = 0; i < n; i++)
                        vms[i] = json_array_get(arr, i);
                qsort_r(vms, n, sizeof *vms, top_compare, (void *) t);
                Cols c = top_columns(vms, n, cols);
                if (left >= 4) { /* a blank line when there is room */
                        line_init(&l, cols);
                        line_emit(f, &l);
                        left--;
                }
                line_init(&l, cols);
                line_sgr(&l, t, "7");
                line_printf(&l, "%-*s  %-*s  %-*s  %*s", c.id, "ID", c.status, "STATUS", c.reason, "REASON", c.size,
                            "ASSIGN");
                if (c.floor)
                        line_printf(&l, "  %*s", c.size, "FLOOR");
                line_printf(&l, "  %*s  %*s", c.size, "TARGET", c.size, "ACTUAL");
                if (c.guest)
                        line_printf(&l, "  %*s", c.size, "GUEST");
                if (c.bar > 0)
                        line_printf(&l, "  %-*s", c.bar, "# held + giving up - coming back . reclaimed | floor");
                line_emit(f, &l);
                left--; /* the header */
                size_t shown = 0;
                for (; shown < n && (int) shown < left - (shown + 1 < n ? 1 : 0); shown++)
                        draw_vm(f, t, &c, vms[shown], cols);
                if (shown < n) {
                        line_init(&l, cols);
                        line_printf(&l, "... %zu more VMs (a taller terminal shows them)", n - shown);
                        line_emit(f, &l);
                } else if (n == 0) {
                        line_init(&l, cols);
                        line_put(&l, "no VMs registered");
                        line_emit(f, &l);
                }
        }
        /* The status line, at the bottom. */
        if (left >= 0 && rows >= TOP_MIN_ROWS && cols >= TOP_MIN_COLS) {
                fputs("\x1b[J", f);
                fprintf(f, "\x1b[%d;1H", rows);
                line_init(&l, cols);
                if (t->error[0]) {
                        line_sgr(&l, t, "1;31");
                        line_printf(&l, "retrying: %s", t->error);
                } else {
                        line_printf(&l, "%zu VMs  sort: %s%s  keys: n a t c r s sort, i invert, q quit", n,
                                    top_sort_table[t->sort], t->reverse ? " (inverted)" : "");
                }
                fputs(l.buf, f);
                fputs("\x1b[0m\x1b[K", f);
        }
        if (fclose(f) != 0)
                return;
        (void) !write(STDOUT_FILENO, buf, len);
}

/* ---- the terminal ---- */

static struct termios top_saved;
static bool top_tty_raw = false;

static void top_term_restore(void) {
        if (!top_tty_raw)
                return;
        static const char leave[] = "\x1b[0m\x1b[?25h\x1b[?1049l";
        (void) !write(STDOUT_FILENO, leave, sizeof leave - 1);
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &top_saved);
        top_tty_raw = false;
}

static int top_term_setup(void) {
        if (tcgetattr(STDIN_FILENO, &top_saved) < 0)
                return -errno;
        struct termios raw = top_saved;
        raw.c_lflag &= ~(tcflag_t) (ICANON | ECHO); /* ISIG stays: Ctrl-C quits */
        raw.c_cc[VMIN] = 0;
        raw.c_cc[VTIME] = 0;
        if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) < 0)
                return -errno;
        top_tty_raw = true;
        static const char enter[] = "\x1b[?1049h\x1b[?25l\x1b[H\x1b[2J";
        (void) !write(STDOUT_FILENO, enter, sizeof enter - 1);
        return 0;
}

static void top_size(int *cols, int *rows) {
        struct winsize ws;
        if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
                *cols = ws.ws_col;
                *rows = ws.ws_row;
        } else {
                *cols = 80;
                *rows = 24;
        }
}

/* Handles the keys read; returns true when the screen should be refreshed from the daemon. */
static bool top_keys(Top *t, const char *keys, size_t n, bool *redraw) {
        bool refresh = false;
        for (size_t i = 0; i < n; i++) {
                char k = keys[i];
                if (k == 'q' || k == 'Q') {
                        top_quit = 1;
                        return false;
                }
                if (k == 'i') {
                        t->reverse = !t->reverse;
                        *redraw = true;
                } else if (k == ' ') {
                        refresh = true;
                } else if (k == 0x0c) { /* Ctrl-L */
                        *redraw = true;
                } else
                        for (int s = 0; s < _TOP_SORT_MAX; s++)
                                if (k == top_sort_keys[s]) {
                                        t->sort = (TopSort) s;
                                        *redraw = true;
                                }
        }
        return refresh;
}

static int top_loop(Top *t) {
        int cols, rows;
        usec_t next = 0;
        bool redraw = true;
        while (!top_quit) {
                usec_t now = now_mono();
                if (now >= next) {
                        (void) top_refresh(t);
                        next = now_mono() + t->interval;
                        redraw = true;
                }
                if (top_resized) {
                        top_resized = 0;
                        (void) !write(STDOUT_FILENO, "\x1b[2J", 4);
                        redraw = true;
                }
                if (redraw) {
                        top_size(&cols, &rows);
                        draw(t, cols, rows);
                        redraw = false;
                }
                struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN };
                now = now_mono();
                int ms = next > now ? (int) ((next - now + USEC_PER_MSEC - 1) / USEC_PER_MSEC) : 0;
                int k = poll(&p, 1, ms);
                if (k < 0 && errno != EINTR)
                        return cli_error(EXIT_FAIL, "poll: %s", strerror(errno));
                if (k > 0) {
                        if (p.revents & (POLLHUP | POLLERR | POLLNVAL))
                                break; /* the terminal went away */
                        char keys[64];
                        ssize_t got = read(STDIN_FILENO, keys, sizeof keys);
                        if (got == 0)
                                break;
                        if (got > 0 && top_keys(t, keys, (size_t) got, &redraw))
                                next = 0;
                }
        }
        return EXIT_OK;
}

int cmd_top(int argc, char **argv) {
        enum { OPT_INTERVAL = CTL_OPT_LOCAL, OPT_SORT };
        static const struct option opts[] = {
                { "interval", required_argument, NULL, OPT_INTERVAL },
                { "sort", required_argument, NULL, OPT_SORT },
                CTL_API_LONG_OPTIONS,
                {},
        };
        static char prog[] = "ballastctl top";
        Top t = { .interval = USEC_PER_SEC, .sort = TOP_SORT_NAME };
        int c, r;

        ctl_api_command(argv, prog);
        while ((c = getopt_long(argc, argv, "h", opts, NULL)) >= 0) {
                switch (c) {
                case OPT_INTERVAL:
                        if ((r = cli_parse_duration("--interval", optarg, &t.interval)) != 0)
                                return r;
                        if (t.interval < 100 * USEC_PER_MSEC || t.interval > 3600 * USEC_PER_SEC)
                                return cli_usage_error("--interval is 100ms to 1h, not '%s'", optarg);
                        break;
                case OPT_SORT:
                        t.sort = top_sort_from_string(optarg);
                        if (t.sort < 0)
                                return cli_usage_error("invalid --sort '%s' (name, assigned, target, actual, "
                                                       "reclaimed, status)",
                                                       optarg);
                        break;
                default:
                        if ((r = ctl_api_common_option(c, optarg, top_usage)) >= 0)
                                return r;
                }
        }
        if (optind < argc)
                return cli_usage_error("top takes no arguments");
        if (arg_json)
                return cli_usage_error("top is a terminal view; for JSON use 'ballastctl --json host' and "
                                       "'ballastctl --json vms'");
        if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
                return cli_error(EXIT_FAIL, "top needs a terminal (for a snapshot: 'ballastctl host' and "
                                            "'ballastctl vms')");

        /* Keys are read between requests: a daemon that hangs must not hold 'q' for the default
         * 10 s. An explicit --timeout is kept. */
        if (arg_api_timeout == CTL_API_TIMEOUT_DEFAULT)
                arg_api_timeout = 3 * USEC_PER_SEC;
        /* The daemon must answer once before the screen is taken: a wrong socket is an error. */
        if ((r = top_refresh(&t)) != 0) {
                json_decref(t.host);
                json_decref(t.vms);
                return cli_error(EXIT_FAIL, "%s", t.error);
        }
        const char *term = getenv("TERM");
        t.color = !getenv("NO_COLOR") && term && strcmp(term, "dumb") != 0;

        struct sigaction sa = { .sa_handler = top_on_signal }; /* no SA_RESTART: poll() wakes */
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGHUP, &sa, NULL);
        sigaction(SIGWINCH, &sa, NULL);
        signal(SIGPIPE, SIG_IGN);

        if ((r = top_term_setup()) < 0) {
                json_decref(t.host);
                json_decref(t.vms);
                return cli_error(EXIT_FAIL, "cannot set up the terminal: %s", strerror(-r));
        }
        r = top_loop(&t);
        top_term_restore();
        json_decref(t.host);
        json_decref(t.vms);
        return r;
}
