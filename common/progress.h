/* progress.h: one progress reporter for every stage. On a terminal: a line on stderr rewritten
 * in place (done/total, rate, ETA). Otherwise: JSON lines on stderr at most every `every_s`
 * seconds ({"progress":"decode","done":N,"total":T,"rate":R,"eta_s":E}), which logs and
 * launchers can parse. */
#ifndef QIE_COMMON_PROGRESS_H
#define QIE_COMMON_PROGRESS_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    char what[32];
    uint64_t total; /* 0: unknown */
    uint64_t done;
    double t0, last;
    double every_s;
    int tty;
    int enabled;
    char note[96]; /* shown after the counts: "loss 0.123 lr 1e-4" */
} Progress;

/* Caller-owned. enabled=0 makes every call a no-op (e.g. --quiet). */
void progress_init(Progress *p, const char *what, uint64_t total, int enabled);
void progress_update(Progress *p, uint64_t done);
/* Sets the note shown with the next line (copied; NULL clears it). */
void progress_set_note(Progress *p, const char *note);
/* Prints the final line (always, when enabled) and a newline on a terminal. */
void progress_end(Progress *p);
double progress_now(void); /* monotonic seconds */

#ifdef __cplusplus
}
#endif
#endif
