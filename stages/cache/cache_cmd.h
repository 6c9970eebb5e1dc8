/* cache_cmd.h: qie-cache's subcommands, apart from main.c so that tests can drive them.
 * Each takes an open Cache (common/cache.h) and writes its report to `out`. */
#ifndef QIE_STAGES_CACHE_CMD_H
#define QIE_STAGES_CACHE_CMD_H

#include <stdint.h>
#include <stdio.h>

#include "cache.h"
#include "endpoint.h"

typedef struct {
    uint64_t read;     /* records read from --in */
    uint64_t bad;      /* malformed ones, reported with their position and skipped */
} CachePutReport;

/* Records from `in` into the writer `c` until the end of the stream; a malformed record is
 * logged with its position and skipped. Commits and syncs what arrived even when the stream
 * fails (every record is whole on its own). */
int cache_cmd_put(char *err, Cache *c, Endpoint *in, int progress, CachePutReport *rep);
/* Records matching f to `out` (not finished here). */
int cache_cmd_cat(char *err, Cache *c, const CacheFilter *f, Endpoint *out, uint64_t *n);
/* One line per index entry: id, HxW, nsources, bytes, complete (yes/no); ids_only: ids only. */
int cache_cmd_ls(char *err, Cache *c, const CacheFilter *f, int ids_only, FILE *out);
/* Counts, bytes, groups, source-count histogram, tensor dtype/shape summary, completeness,
 * settings; as text or JSON. */
int cache_cmd_stats(char *err, Cache *c, int json, FILE *out);
/* Decodes every record and checks it against its index entries; one line per bad record on
 * `out`. *nbad = number of bad records (the command fails when > 0). */
int cache_cmd_verify(char *err, Cache *c, FILE *out, uint64_t *nbad);

/* Test and benchmark helpers (hidden subcommands "gen" and "bench-read"). */
typedef struct {
    int64_t count, start;   /* records start .. start+count-1, ids "s%06lld" */
    int64_t size;           /* approximate record size in bytes (prompt_embeds fills it up) */
    int64_t sources_max;    /* record i has i % (sources_max + 1) sources */
    int64_t bad_every;      /* every Nth record is garbage bytes instead (0: none) */
    int64_t seed;
    const char *parts;      /* "all", "latents" or "prompt" */
    const char *buckets;    /* "64x64,64x96,96x64" */
    int empty;              /* also prompt_embeds_empty */
    int64_t delay_ms;       /* sleep between records: a slow producer for the concurrency test */
    int nsettings;
    const char *settings[32]; /* "key=value": carried as cfg.key attrs */
} CacheGenOptions;
int cache_cmd_gen(char *err, const CacheGenOptions *o, Endpoint *out);
/* Random access like the trainer's bucket sampler: a random group, a random record in it. */
int cache_cmd_bench_read(char *err, Cache *c, int64_t reads, int64_t seed, FILE *out);

#endif
