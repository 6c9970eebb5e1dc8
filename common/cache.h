/* cache.h: the LMDB latent cache. One writer (at a time) puts records, any number of trainer
 * processes read them at once. qie-cache (stages/cache), the lmdb:// endpoint (ep_lmdb.c) and
 * qie-train all go through this API; docs/cache.md is the user-facing description.
 *
 * On disk (an LMDB environment in DIR: data.mdb + lock.mdb), four named sub-databases:
 *   meta   str key -> str value   "format" = "qie-cache/1", "record_v" = record schema version,
 *                                 "next_seq" = u64 BE, "cfg.<key>" = the settings (see below)
 *   rec    seq (u64 BE) -> the record's bytes: one msgpack map, the same bytes as on a pipe
 *          (record.h). New ids are appended with MDB_APPEND; a merge rewrites the value in place.
 *   id     record id (bytes, <= 511) -> seq (u64 BE); written with MDB_NOOVERWRITE (dedup, 5.4)
 *   grp    (h u32 BE, w u32 BE, nsources u32 BE, seq u64 BE) -> flags u8 + id bytes: the
 *          per-(bucket, nsources) index, so a sampler lists a group with one range scan and
 *          never reads a value (spec 7.6 "by_bucket")
 * A record and its three index entries are written in one transaction, so a reader never sees
 * a record without its index or the reverse, and a killed writer loses only the batch it had
 * not committed (which a re-run redoes, skipping every committed id).
 *
 * Settings: record attrs named "cfg.<key>" (cache_names.h) and cache_set_setting() establish
 * meta "cfg.<key>" the first time a key is seen; every later record or call must carry the same
 * value, else QIE_EMISMATCH. Readers check CacheOptions.expect ("key=value") at open.
 *
 * Threads: a Cache belongs to one thread at a time. Never open the same DIR twice in one
 * process (LMDB's locks are per process: closing one handle drops the other's locks). */
#ifndef QIE_COMMON_CACHE_H
#define QIE_COMMON_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "record.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CACHE_FORMAT "qie-cache/1"
#define CACHE_MAX_EXPECT 32
#define CACHE_MAX_ID 511 /* LMDB's key limit (mdb_env_get_maxkeysize) */

/* grp value flags: what the record holds (completeness is judged against the meta at read time,
 * because text_drop_ratio may be established after a record was written) */
#define CACHE_F_LATENTS 1u /* target_mean+logvar and source_mean.K+logvar.K for every source */
#define CACHE_F_PROMPT 2u  /* prompt_embeds */
#define CACHE_F_EMPTY 4u   /* prompt_embeds_empty */

typedef struct Cache Cache;
typedef struct CacheIter CacheIter;

typedef enum {
    CACHE_SYNC_FULL = 0, /* fsync every commit: nothing committed is lost by an OS crash */
    CACHE_SYNC_META = 1, /* MDB_NOMETASYNC + mdb_env_sync every sync_every_s (spec 7.3 default) */
    CACHE_SYNC_NONE = 2, /* MDB_NOSYNC, mdb_env_sync at flush_sync/close only */
} CacheSync;

typedef struct {
    int readonly;          /* 1: MDB_RDONLY|MDB_NOTLS|MDB_NORDAHEAD, mdb_reader_check at open */
    uint64_t map_size;     /* writer: initial map size (default 1 TiB; sparse); doubles on MAP_FULL */
    CacheSync sync;        /* writer (default CACHE_SYNC_META) */
    double sync_every_s;   /* writer, META/NONE: mdb_env_sync at most this often (default 30) */
    int batch_records;     /* writer: commit after this many records (default 64) */
    uint64_t batch_bytes;  /* writer: ... or this many bytes (default 256 MB) */
    int skip_existing;     /* writer (default 1): a record whose id is cached and whose tensors
                              the stored record already has is skipped; 0: merged, replacing */
    int nexpect;
    const char *expect[CACHE_MAX_EXPECT]; /* "key=value", checked against meta cfg.key at open */
} CacheOptions;

typedef struct {
    uint64_t stored;  /* new ids */
    uint64_t merged;  /* records merged into a cached id (parts, or skip_existing=0) */
    uint64_t skipped; /* already cached */
    uint64_t bytes;   /* value bytes written */
    uint64_t commits;
    uint64_t grows;   /* map growths after MDB_MAP_FULL */
} CachePutStats;

typedef struct {
    int32_t bucket[2];        /* h, w; 0,0: any bucket */
    int nsources;             /* -1: any */
    int complete_only;        /* only records complete for training */
    const char *id_from;      /* inclusive id range in byte order; NULL: open end */
    const char *id_to;
    const char *const *ids;   /* explicit ids, in this order (borrowed); NULL: not used */
    size_t nids;
} CacheFilter;

typedef struct {
    uint64_t seq;
    int32_t bucket[2];
    int nsources;
    unsigned flags;     /* CACHE_F_* */
    int complete;       /* complete for training under this cache's meta */
    uint64_t bytes;     /* the record's size */
    const char *id;     /* into the owning CacheList */
} CacheItem;

typedef struct {
    size_t n;
    CacheItem *items;
    char *arena_;
} CacheList;

typedef struct {
    int32_t bucket[2];
    int nsources;
    uint64_t count;
    uint64_t complete;
} CacheGroup;

void cache_options_init(CacheOptions *o);
void cache_filter_init(CacheFilter *f);

/* Opens (a writer creates DIR and the environment when missing) and checks the format and
 * opt->expect. Errors: QIE_ENOTFOUND (no cache at DIR, reader), QIE_EFORMAT (not an LMDB
 * environment, or one that is not a qie cache), QIE_EVERSION (another cache format or record
 * schema), QIE_EMISMATCH (an expect failed), errno, or an MDB_* code. *out must be NULL. */
int cache_open(char *err, const char *dir, const CacheOptions *opt, Cache **out);
/* Closes; a writer's unflushed records are dropped (call cache_flush first). NULL-safe. */
void cache_close(Cache **c);
const char *cache_dir(const Cache *c);

/* ---- settings ---- */

/* meta cfg.<key> into val. 0 or QIE_ENOTFOUND. */
int cache_setting(char *err, Cache *c, const char *key, char *val, size_t cap);
/* Checks "key=value" against the meta: 0, QIE_EMISMATCH (different or absent) or QIE_EINVAL. */
int cache_expect(char *err, Cache *c, const char *kv);
/* Writer: establishes cfg.<key> = value, or checks it against the stored value (QIE_EMISMATCH). */
int cache_set_setting(char *err, Cache *c, const char *key, const char *value);
/* Calls fn for every meta entry whose value is text (format, record_v and cfg.*), key order. */
int cache_meta_each(char *err, Cache *c, void (*fn)(void *ctx, const char *key, const char *val), void *ctx);
/* 1 when the meta says text_drop_ratio > 0 (then prompt_embeds_empty is needed) */
int cache_need_empty(const Cache *c);

/* ---- writing ---- */

/* Queues one record (bytes as on a pipe; copied) and commits when the batch is full.
 * QIE_EFORMAT / QIE_EVERSION: the record is malformed and was not queued (the writer stays
 * usable); QIE_EMISMATCH: its cfg.* attrs disagree with the cache; else a commit error (ENOSPC
 * and friends: what was committed before stays). */
int cache_put(char *err, Cache *c, const void *buf, size_t len);
int cache_put_record(char *err, Cache *c, const Record *r);
/* Commits the queued batch (nothing queued: no-op). sync=1 also forces it to disk. */
int cache_flush(char *err, Cache *c, int sync);
const CachePutStats *cache_put_stats(const Cache *c);
/* Removes id, its record and index entries in one transaction. 0 or QIE_ENOTFOUND. */
int cache_rm(char *err, Cache *c, const char *id);

/* ---- reading ---- */

/* A read transaction: a snapshot of committed records. Borrowed pointers below stay valid until
 * cache_read_end. Keep it short (spec 7.1): a long one stops the writer reusing pages. Adopts a
 * map grown by the writer (MDB_MAP_RESIZED) by itself. */
int cache_read_begin(char *err, Cache *c);
void cache_read_end(Cache *c);

/* Number of records (own snapshot when no read txn is open). */
int cache_count(char *err, Cache *c, uint64_t *n);
/* id -> seq. 0 or QIE_ENOTFOUND. */
int cache_seq(char *err, Cache *c, const char *id, uint64_t *seq);
/* The record's bytes. Needs cache_read_begin; borrowed: into the LMDB map, valid until
 * cache_read_end. 0 or QIE_ENOTFOUND. */
int cache_get_raw(char *err, Cache *c, uint64_t seq, const void **buf, size_t *len);
/* Decodes record seq into r. copy=0: tensor payloads borrow from the map (needs
 * cache_read_begin; valid until cache_read_end). copy=1: r owns everything (any time). */
int cache_get(char *err, Cache *c, uint64_t seq, Record *r, int copy);
int cache_get_id(char *err, Cache *c, const char *id, Record *r, int copy);

/* Index entries matching f (bucket/nsources/complete_only; id filters are ignored here), in
 * (bucket, nsources, seq) order, from the grp index alone: no value is read except for
 * CacheItem.bytes (the overflow page header). Free with cache_list_free. */
int cache_list(char *err, Cache *c, const CacheFilter *f, CacheList *out);
void cache_list_free(CacheList *l);
/* The distinct (bucket, nsources) groups with their counts; *out is malloc'd (free()). */
int cache_groups(char *err, Cache *c, CacheGroup **out, int *n);

/* Streams the records matching f. Each cache_iter_next renews the cache's read txn (the previous
 * buffer becomes invalid), so a long stream never pins old pages. Records committed after
 * cache_iter_begin are not yielded (except as newer versions of an id merged meanwhile).
 * Order: the ids list; else the id range in id order; else (bucket, nsources, seq) when f
 * names a bucket or nsources; else seq (commit) order. QIE_EEOF at the end. */
int cache_iter_begin(char *err, Cache *c, const CacheFilter *f, CacheIter **out);
int cache_iter_next(char *err, CacheIter *it, const void **buf, size_t *len, uint64_t *seq);
void cache_iter_destroy(CacheIter **it);

/* ---- records ---- */

/* CACHE_F_* flags of a record (cache_names.h's tensors). */
unsigned cache_record_flags(const Record *r);
/* 1 when r is complete for training; else 0 and the first missing tensor into missing. */
int cache_record_complete(const Record *r, int need_empty, char *missing, size_t cap);
int cache_flags_complete(unsigned flags, int need_empty);

/* Reads an id list (one per line; blank lines and '#' lines skipped). Free with cache_ids_free. */
int cache_ids_load(char *err, const char *path, char ***ids, size_t *n);
void cache_ids_free(char **ids, size_t n);

#ifdef __cplusplus
}
#endif
#endif
