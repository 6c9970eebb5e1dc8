/* progress.c: see progress.h. */
#include "progress.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

double progress_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void progress_init(Progress *p, const char *what, uint64_t total, int enabled) {
    memset(p, 0, sizeof *p);
    snprintf(p->what, sizeof p->what, "%s", what);
    p->total = total;
    p->enabled = enabled;
    p->tty = isatty(2);
    p->every_s = p->tty ? 0.25 : 10.0;
    p->t0 = p->last = progress_now();
}

static void fmt_eta_(double s, char *out, size_t cap) {
    if (s < 0 || s > 1e7) { snprintf(out, cap, "?"); return; }
    int h = (int)(s / 3600), m = (int)(s / 60) % 60, sec = (int)s % 60;
    if (h) snprintf(out, cap, "%d:%02d:%02d", h, m, sec);
    else snprintf(out, cap, "%d:%02d", m, sec);
}

static void print_(Progress *p, int final) {
    double now = progress_now(), el = now - p->t0;
    double rate = el > 0 ? p->done / el : 0;
    double eta = (p->total && rate > 0) ? (p->total - (p->done < p->total ? p->done : p->total)) / rate : -1;
    if (p->tty) {
        char e[32];
        fmt_eta_(eta, e, sizeof e);
        if (p->total)
            fprintf(stderr, "\r%s: %llu/%llu (%.1f%%) %.2f/s ETA %s %s  ", p->what, (unsigned long long)p->done,
                    (unsigned long long)p->total, 100.0 * p->done / p->total, rate, e, p->note);
        else
            fprintf(stderr, "\r%s: %llu %.2f/s %s  ", p->what, (unsigned long long)p->done, rate, p->note);
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "{\"progress\":\"%s\",\"done\":%llu,\"total\":%llu,\"rate\":%.3f,\"eta_s\":%.1f,\"elapsed_s\":%.1f%s%s%s%s}\n",
                p->what, (unsigned long long)p->done, (unsigned long long)p->total, rate, eta, el, final ? ",\"final\":true" : "",
                p->note[0] ? ",\"note\":\"" : "", p->note, p->note[0] ? "\"" : "");
    }
    fflush(stderr);
}

void progress_set_note(Progress *p, const char *note) {
    snprintf(p->note, sizeof p->note, "%s", note ? note : "");
}

void progress_update(Progress *p, uint64_t done) {
    if (!p->enabled) return;
    p->done = done;
    double now = progress_now();
    if (now - p->last < p->every_s) return;
    p->last = now;
    print_(p, 0);
}

void progress_end(Progress *p) {
    if (!p->enabled) return;
    print_(p, 1);
}
