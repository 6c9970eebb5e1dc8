/* log.c: see log.h. One fprintf per line so lines from concurrent stages do not interleave. */
#include "log.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

LogLevel log_level_ = LOG_INFO;
int log_rank_ = -1;
static char log_stage_[48] = "qie";

void log_init(const char *stage) {
    snprintf(log_stage_, sizeof log_stage_, "qie-%s", stage);
}

void log_set_level(LogLevel level) { log_level_ = level; }
void log_set_rank(int rank) { log_rank_ = rank; }

int log_parse_level(const char *s, LogLevel *out) {
    static const char *names[] = {"debug", "info", "warn", "error", "quiet"};
    for (int i = 0; i < 5; i++)
        if (!strcmp(s, names[i])) { *out = (LogLevel)i; return 0; }
    return QIE_EINVAL;
}

void log_write_(LogLevel level, const char *fmt, ...) {
    static const char *tags[] = {"debug", "info", "warn", "error", ""};
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (log_rank_ >= 0)
        fprintf(stderr, "%s[%d r%d] %s: %s\n", log_stage_, (int)getpid(), log_rank_, tags[level], msg);
    else
        fprintf(stderr, "%s[%d] %s: %s\n", log_stage_, (int)getpid(), tags[level], msg);
}
