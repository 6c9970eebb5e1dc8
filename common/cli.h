/* cli.h: one option table per stage drives parsing, --help, range checks and the startup dump.
 *
 * Accepted spellings (those of VideoX-Fun / accelerate users): --name value, --name=value, and
 * boolean --flag (or --flag=true|false|1|0). Dashes and underscores in names are the same
 * (--train-batch-size == --train_batch_size). An unknown flag is an error naming it. Options of
 * the reference that do not apply to a stage are declared CLI_IGNORED: accepted (with or without
 * a value) and reported once as ignored, never silently dropped. */
#ifndef QIE_COMMON_CLI_H
#define QIE_COMMON_CLI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    CLI_BOOL,    /* int* : 0/1 */
    CLI_INT,     /* int64_t* within [min, max] */
    CLI_FLOAT,   /* double* within [min, max] */
    CLI_STR,     /* const char** (points into argv or def; never freed) */
    CLI_STRS,    /* CliStrs*: one or more values ("nargs='+'"): --x a b c, or repeated --x a --x b */
    CLI_IGNORED, /* takes a value unless the next token starts with "--"; reported once */
    CLI_IGNORED_FLAG, /* takes no value; reported once */
    CLI_LOG_LEVEL, /* LogLevel*: debug|info|warn|error|quiet, applied with log_set_level as parsed */
} CliType;

typedef struct {
    int n;
    const char *v[64];
} CliStrs;

typedef struct {
    const char *name;   /* without leading dashes, underscores as written by the reference */
    CliType type;
    void *dst;          /* NULL for CLI_IGNORED* */
    const char *def;    /* default as text (applied by cli_parse before parsing); NULL: none */
    const char *help;
    double min, max;    /* for CLI_INT / CLI_FLOAT when min < max */
} CliOpt;

/* The rows the encoder stages (qie-encode-vae, qie-encode-text) share: where records come from
 * and go, progress, log level, and the reference's launch-line options that do not concern them. */
#define CLI_ENCODER_ROWS(in_url, out_url, progress, log_level)                                                   \
    {"in", CLI_STR, (in_url), "-", "where records come from: -, FILE, tcp://, ipc://, '>tcp://HOST:PORT' (one of several encoders)", 0, 0}, \
    {"out", CLI_STR, (out_url), "-", "where records go: -, FILE, tcp://, ipc://, lmdb://DIR", 0, 0},                  \
    {"progress", CLI_BOOL, (progress), "true", "report progress on stderr", 0, 0},                                    \
    {"log_level", CLI_LOG_LEVEL, (log_level), "info", "debug|info|warn|error|quiet", 0, 0},                            \
    {"pretrained_model_name_or_path", CLI_IGNORED, NULL, NULL, "ignored (use --model)", 0, 0},                        \
    {"mixed_precision", CLI_IGNORED, NULL, NULL, "ignored: cpu is fp32, cuda is bf16", 0, 0},                         \
    {"output_dir", CLI_IGNORED, NULL, NULL, "ignored", 0, 0}

typedef struct {
    const char *prog;    /* "qie-cat" */
    const char *usage;   /* one line after the program name, e.g. "[options]" */
    const char *about;   /* a paragraph for --help */
    const CliOpt *opts;
    int nopts;
    int npositional_max; /* positional arguments allowed (0: none) */
} CliSpec;

/* Parses argv (argv[0] skipped). Returns 0; 1 when --help was printed (exit 0); or QIE_EINVAL
 * with err naming the offending flag or value. Positional arguments go to pos[] (at most
 * npositional_max), their count to *npos. */
int cli_parse(char *err, const CliSpec *spec, int argc, char **argv, const char **pos, int *npos);

/* Prints --help (every option, its default and help) to stdout. */
void cli_usage(const CliSpec *spec);

/* Logs the resolved settings at info level, one line each ("  --name = value"). */
void cli_dump(const CliSpec *spec);

/* Parses sizes like "80GB", "500MB", "10KiB", "123" (bytes): decimal units (KB=1e3) and binary
 * ones (KiB=1024), as huggingface's max_shard_size does. 0 or QIE_EINVAL. */
int cli_parse_size(const char *s, uint64_t *out);

#ifdef __cplusplus
}
#endif
#endif
