/* log.h: levelled logging to stderr. Each line: "qie-<stage>[pid] LEVEL message".
 * The level is checked before the arguments are formatted (serverLog style). */
#ifndef QIE_COMMON_LOG_H
#define QIE_COMMON_LOG_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_QUIET = 4 } LogLevel;

extern LogLevel log_level_;
extern int log_rank_; /* -1 when not distributed; otherwise rank for log_info0 */

void log_init(const char *stage);          /* stage name without the "qie-" prefix */
void log_set_level(LogLevel level);
int log_parse_level(const char *s, LogLevel *out); /* "debug|info|warn|error|quiet"; 0 or QIE_EINVAL */
void log_set_rank(int rank);
void log_write_(LogLevel level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_level_ <= LOG_DEBUG) log_write_(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) do { if (log_level_ <= LOG_INFO) log_write_(LOG_INFO, __VA_ARGS__); } while (0)
#define log_warn(...) do { if (log_level_ <= LOG_WARN) log_write_(LOG_WARN, __VA_ARGS__); } while (0)
#define log_error(...) do { if (log_level_ <= LOG_ERROR) log_write_(LOG_ERROR, __VA_ARGS__); } while (0)
/* rank 0 only (or not distributed) */
#define log_info0(...) do { if (log_rank_ <= 0 && log_level_ <= LOG_INFO) log_write_(LOG_INFO, __VA_ARGS__); } while (0)

#ifdef __cplusplus
}
#endif
#endif
