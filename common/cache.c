/* cache.c: the LMDB latent cache (layout and rules in cache.h, user docs in docs/cache.md).
 *
 * What this file is: environment setup, the meta/settings rule, the batched idempotent writer
 * (spec 5.4 step 4, 7.2 MAP_FULL recovery, 7.3 sync policy) and the readers (snapshot reads, the
 * grp index, streaming iterators). What it is not: statistics and verification walk the records
 * with this API from stages/cache/, since the trainer does not need them. */
#include "cache.h"
#include "cache_names.h"
#include "err.h"
#include "log.h"
#include "progress.h"

#include <errno.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CACHE_DEFAULT_MAP ((uint64_t)1 << 40) /* 1 TiB: virtual, the file stays sparse (7.2) */
#define CACHE_MAX_MAP ((uint64_t)1 << 52)
#define CACHE_NDBS 4
#define GRP_KEY_LEN 20 /* h u32, w u32, nsources u32, seq u64; all big-endian so memcmp sorts */
#define GRP_VAL_HDR 9  /* flags u8, bytes u64 */

typedef struct {
    char *key; /* without the "cfg." prefix */
    char *val;
    int pending; /* seen in a queued record or call, not yet in meta */
} CacheSetting;

typedef struct {
    void *buf;
    size_t len;
} CachePending;

struct Cache {
    MDB_env *env;
    MDB_dbi dbi_meta, dbi_rec, dbi_id, dbi_grp;
    char *dir;
    CacheOptions opt;
    MDB_txn *rtxn; /* the read txn, kept across cache_read_end (reset) so begin is a cheap renew */
    int rtxn_active;
    int need_empty;
    CacheSetting *set;
    int nset, capset;
    CachePending *pend;
    size_t npend, cappend;
    uint64_t pend_bytes;
    double last_sync;
    CachePutStats st;
};

struct CacheIter {
    Cache *c;
    CacheFilter f;
    enum { ITER_SEQ, ITER_GROUP, ITER_IDS, ITER_IDRANGE } mode;
    uint64_t seq_end; /* next_seq when the iterator began: later records are not yielded */
    uint64_t seq_pos;
    unsigned char last[CACHE_MAX_ID + 1]; /* last key visited (group or id range) */
    size_t last_len;
    int started;
    size_t ids_pos;
};

/* ---- small helpers ---- */

static void put_be32_(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (24 - 8 * i)); }
static void put_be64_(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (56 - 8 * i)); }
static uint32_t get_be32_(const unsigned char *p) { uint32_t v = 0; for (int i = 0; i < 4; i++) v = v << 8 | p[i]; return v; }
static uint64_t get_be64_(const unsigned char *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v = v << 8 | p[i]; return v; }

/* Fills err with "DIR: what: <mdb_strerror>" and maps the code to qie's convention: errno
 * values stay, LMDB's format codes become QIE_EFORMAT, the rest QIE_EIO. */
static int mdb_fail_(char *err, int rc, const char *dir, const char *what) {
    qie_seterr(err, "%s: %s: %s", dir, what, mdb_strerror(rc));
    if (rc > 0) return rc;
    if (rc == MDB_INVALID || rc == MDB_CORRUPTED || rc == MDB_PAGE_NOTFOUND || rc == MDB_INCOMPATIBLE) return QIE_EFORMAT;
    if (rc == MDB_VERSION_MISMATCH) return QIE_EVERSION;
    return QIE_EIO;
}

/* Every LMDB return code goes through one of these; MDB_NOTFOUND is tested by hand before. */
#define MDB_CHECK(call, what) do { if ((rc = (call)) != 0) { rc = mdb_fail_(err, rc, c->dir, what); goto fail; } } while (0)

static void grp_key_(unsigned char *k, int32_t h, int32_t w, int nsources, uint64_t seq) {
    put_be32_(k, (uint32_t)h);
    put_be32_(k + 4, (uint32_t)w);
    put_be32_(k + 8, (uint32_t)nsources);
    put_be64_(k + 12, seq);
}

/* A setting's canonical text, so that an int attr 1024, a float 1024.0 and "--setting k=1024"
 * compare equal: ints in decimal, floats in the shortest form that reads back the same. */
static char *attr_text_(const RecAttr *a) {
    char *s = NULL;
    if (a->type == REC_ATTR_INT) {
        if (asprintf(&s, "%lld", (long long)a->i) < 0) s = NULL;
    } else if (a->type == REC_ATTR_FLOAT) {
        char b[64];
        for (int p = 1; p <= 17; p++) {
            snprintf(b, sizeof b, "%.*g", p, a->f);
            if (strtod(b, NULL) == a->f) break;
        }
        s = strdup(b);
    } else {
        s = strdup(a->s ? a->s : "");
    }
    return s;
}

void cache_options_init(CacheOptions *o) {
    memset(o, 0, sizeof *o);
    o->sync = CACHE_SYNC_META;
    o->sync_every_s = 30;
    o->batch_records = 64;
    o->batch_bytes = (uint64_t)256 << 20;
    o->skip_existing = 1;
}

void cache_filter_init(CacheFilter *f) {
    memset(f, 0, sizeof *f);
    f->nsources = -1;
}

const char *cache_dir(const Cache *c) { return c->dir; }
int cache_need_empty(const Cache *c) { return c->need_empty; }
const CachePutStats *cache_put_stats(const Cache *c) { return &c->st; }

/* ---- records ---- */

unsigned cache_record_flags(const Record *r) {
    unsigned f = 0;
    int lat = rec_tensor(r, CACHE_T_TARGET_MEAN) && rec_tensor(r, CACHE_T_TARGET_LOGVAR);
    for (int k = 0; lat && k < r->nsources; k++) {
        char a[64], b[64];
        cache_name_k(a, sizeof a, CACHE_T_SOURCE_MEAN, k);
        cache_name_k(b, sizeof b, CACHE_T_SOURCE_LOGVAR, k);
        lat = rec_tensor(r, a) && rec_tensor(r, b);
    }
    if (lat) f |= CACHE_F_LATENTS;
    if (rec_tensor(r, CACHE_T_PROMPT_EMBEDS)) f |= CACHE_F_PROMPT;
    if (rec_tensor(r, CACHE_T_PROMPT_EMBEDS_EMPTY)) f |= CACHE_F_EMPTY;
    return f;
}

int cache_flags_complete(unsigned flags, int need_empty) {
    unsigned need = CACHE_F_LATENTS | CACHE_F_PROMPT | (need_empty ? CACHE_F_EMPTY : 0);
    return (flags & need) == need;
}

int cache_record_complete(const Record *r, int need_empty, char *missing, size_t cap) {
    char name[64];
    const char *miss = NULL;
    if (!rec_tensor(r, CACHE_T_TARGET_MEAN)) miss = CACHE_T_TARGET_MEAN;
    else if (!rec_tensor(r, CACHE_T_TARGET_LOGVAR)) miss = CACHE_T_TARGET_LOGVAR;
    for (int k = 0; !miss && k < r->nsources; k++) {
        cache_name_k(name, sizeof name, CACHE_T_SOURCE_MEAN, k);
        if (rec_tensor(r, name)) cache_name_k(name, sizeof name, CACHE_T_SOURCE_LOGVAR, k);
        if (!rec_tensor(r, name)) miss = name;
    }
    if (!miss && !rec_tensor(r, CACHE_T_PROMPT_EMBEDS)) miss = CACHE_T_PROMPT_EMBEDS;
    if (!miss && need_empty && !rec_tensor(r, CACHE_T_PROMPT_EMBEDS_EMPTY)) miss = CACHE_T_PROMPT_EMBEDS_EMPTY;
    if (missing && cap) snprintf(missing, cap, "%s", miss ? miss : "");
    return miss == NULL;
}

/* ---- environment ---- */

/* mdb_txn_begin, adopting a map grown by another process (spec 7.2: MDB_MAP_RESIZED, then
 * mdb_env_set_mapsize(env, 0) and retry). */
static int txn_begin_(char *err, Cache *c, unsigned flags, MDB_txn **txn) {
    int rc;
    for (int tries = 0;; tries++) {
        rc = mdb_txn_begin(c->env, NULL, flags, txn);
        if (rc == MDB_MAP_RESIZED && tries < 3) {
            if ((rc = mdb_env_set_mapsize(c->env, 0)))
                return mdb_fail_(err, rc, c->dir, "mdb_env_set_mapsize(0) to adopt the grown map");
            continue;
        }
        if (rc) return mdb_fail_(err, rc, c->dir, (flags & MDB_RDONLY) ? "mdb_txn_begin(read)" : "mdb_txn_begin(write)");
        return 0;
    }
}

static CacheSetting *setting_find_(Cache *c, const char *key) {
    for (int i = 0; i < c->nset; i++)
        if (!strcmp(c->set[i].key, key)) return &c->set[i];
    return NULL;
}

static int setting_add_(Cache *c, const char *key, const char *val, int pending) {
    if (c->nset == c->capset) {
        int cap = c->capset ? 2 * c->capset : 16;
        CacheSetting *s = realloc(c->set, (size_t)cap * sizeof *s);
        if (!s) return QIE_ENOMEM;
        c->set = s;
        c->capset = cap;
    }
    CacheSetting *s = &c->set[c->nset];
    s->key = strdup(key);
    s->val = strdup(val);
    s->pending = pending;
    if (!s->key || !s->val) {
        free(s->key);
        free(s->val);
        return QIE_ENOMEM;
    }
    c->nset++;
    return 0;
}

static void update_need_empty_(Cache *c) {
    CacheSetting *s = setting_find_(c, CACHE_CFG_TEXT_DROP_RATIO);
    c->need_empty = s && strtod(s->val, NULL) > 0;
}

/* Reads every meta "cfg.*" into c->set (replacing what was loaded before). */
static int load_settings_(char *err, Cache *c, MDB_txn *txn) {
    int rc;
    MDB_cursor *cur = NULL;
    for (int i = 0; i < c->nset; i++) { free(c->set[i].key); free(c->set[i].val); }
    c->nset = 0;
    MDB_CHECK(mdb_cursor_open(txn, c->dbi_meta, &cur), "mdb_cursor_open(meta)");
    MDB_val k = {strlen(CACHE_CFG_PREFIX), (void *)CACHE_CFG_PREFIX}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0) {
        size_t pl = strlen(CACHE_CFG_PREFIX);
        if (k.mv_size < pl || memcmp(k.mv_data, CACHE_CFG_PREFIX, pl)) break;
        char *key = strndup((const char *)k.mv_data + pl, k.mv_size - pl), *val = strndup(v.mv_data, v.mv_size);
        rc = key && val ? setting_add_(c, key, val, 0) : QIE_ENOMEM;
        free(key);
        free(val);
        if (rc) { qie_seterr(err, "%s: out of memory reading the settings", c->dir); goto fail; }
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    if (rc && rc != MDB_NOTFOUND) MDB_CHECK(rc, "mdb_cursor_get(meta)");
    rc = 0;
    update_need_empty_(c);
fail:
    mdb_cursor_close(cur);
    return rc;
}

static int meta_put_str_(MDB_txn *txn, MDB_dbi dbi, const char *key, const char *val) {
    MDB_val k = {strlen(key), (void *)key}, v = {strlen(val), (void *)val};
    return mdb_put(txn, dbi, &k, &v, 0);
}

/* Opens the four sub-databases; a writer creates them in an empty environment. Refuses an
 * environment that holds anything else: a foreign LMDB must never be written into. */
static int open_dbis_(char *err, Cache *c) {
    int rc, ro = c->opt.readonly;
    MDB_txn *txn = NULL;
    if ((rc = txn_begin_(err, c, ro ? MDB_RDONLY : 0, &txn))) return rc;
    rc = mdb_dbi_open(txn, "meta", 0, &c->dbi_meta);
    if (rc == MDB_NOTFOUND || rc == MDB_INCOMPATIBLE) {
        MDB_dbi main_dbi;
        MDB_stat ms;
        MDB_CHECK(mdb_dbi_open(txn, NULL, 0, &main_dbi), "mdb_dbi_open(main)");
        MDB_CHECK(mdb_stat(txn, main_dbi, &ms), "mdb_stat(main)");
        if (ms.ms_entries || rc == MDB_INCOMPATIBLE) {
            qie_seterr(err, "%s: an LMDB environment that is not a qie cache (no 'meta' sub-database)\n"
                       "hint: point lmdb:// at an empty or new folder, or at a cache written by qie-cache", c->dir);
            rc = QIE_EFORMAT;
            goto fail;
        }
        if (ro) {
            qie_seterr(err, "%s: an empty LMDB environment (no record was ever committed)", c->dir);
            rc = QIE_ENOTFOUND;
            goto fail;
        }
        MDB_CHECK(mdb_dbi_open(txn, "meta", MDB_CREATE, &c->dbi_meta), "mdb_dbi_open(meta, create)");
        MDB_CHECK(mdb_dbi_open(txn, "rec", MDB_CREATE, &c->dbi_rec), "mdb_dbi_open(rec, create)");
        MDB_CHECK(mdb_dbi_open(txn, "id", MDB_CREATE, &c->dbi_id), "mdb_dbi_open(id, create)");
        MDB_CHECK(mdb_dbi_open(txn, "grp", MDB_CREATE, &c->dbi_grp), "mdb_dbi_open(grp, create)");
        char rv[16];
        snprintf(rv, sizeof rv, "%d", QIE_RECORD_VERSION);
        MDB_CHECK(meta_put_str_(txn, c->dbi_meta, "format", CACHE_FORMAT), "mdb_put(meta format)");
        MDB_CHECK(meta_put_str_(txn, c->dbi_meta, "record_v", rv), "mdb_put(meta record_v)");
    } else {
        if (rc) MDB_CHECK(rc, "mdb_dbi_open(meta)");
        const char *names[3] = {"rec", "id", "grp"};
        MDB_dbi *dbis[3] = {&c->dbi_rec, &c->dbi_id, &c->dbi_grp};
        for (int i = 0; i < 3; i++) {
            rc = mdb_dbi_open(txn, names[i], 0, dbis[i]);
            if (rc == MDB_NOTFOUND) {
                qie_seterr(err, "%s: the cache has no '%s' sub-database (corrupt, or not written by qie)", c->dir, names[i]);
                rc = QIE_EFORMAT;
                goto fail;
            }
            MDB_CHECK(rc, "mdb_dbi_open");
        }
        MDB_val k = {6, "format"}, v;
        rc = mdb_get(txn, c->dbi_meta, &k, &v);
        if (rc == MDB_NOTFOUND) {
            qie_seterr(err, "%s: the cache's meta has no 'format' entry (not a qie cache)", c->dir);
            rc = QIE_EFORMAT;
            goto fail;
        }
        MDB_CHECK(rc, "mdb_get(meta format)");
        if (v.mv_size != strlen(CACHE_FORMAT) || memcmp(v.mv_data, CACHE_FORMAT, v.mv_size)) {
            qie_seterr(err, "%s: cache format '%.*s' (this qie reads %s)", c->dir, (int)(v.mv_size > 64 ? 64 : v.mv_size),
                       (const char *)v.mv_data, CACHE_FORMAT);
            rc = QIE_EVERSION;
            goto fail;
        }
        MDB_val rk = {8, "record_v"};
        rc = mdb_get(txn, c->dbi_meta, &rk, &v);
        if (rc == MDB_NOTFOUND) {
            qie_seterr(err, "%s: the cache's meta has no 'record_v' entry (corrupt)", c->dir);
            rc = QIE_EFORMAT;
            goto fail;
        }
        MDB_CHECK(rc, "mdb_get(meta record_v)");
        char rv[16];
        snprintf(rv, sizeof rv, "%d", QIE_RECORD_VERSION);
        if (v.mv_size != strlen(rv) || memcmp(v.mv_data, rv, v.mv_size)) {
            qie_seterr(err, "%s: records of schema version %.*s (this qie writes and reads %s)\nhint: rebuild the cache",
                       c->dir, (int)(v.mv_size > 16 ? 16 : v.mv_size), (const char *)v.mv_data, rv);
            rc = QIE_EVERSION;
            goto fail;
        }
    }
    if ((rc = load_settings_(err, c, txn))) goto fail;
    /* the handles become usable by other transactions only once this one commits (7.6) */
    rc = mdb_txn_commit(txn);
    txn = NULL;
    MDB_CHECK(rc, "mdb_txn_commit(open)");
    return 0;
fail:
    if (txn) mdb_txn_abort(txn);
    return rc;
}

int cache_open(char *err, const char *dir, const CacheOptions *opt, Cache **out) {
    int rc;
    Cache *c = calloc(1, sizeof *c);
    if (!c || !(c->dir = strdup(dir))) {
        free(c);
        qie_seterr(err, "cache %s: out of memory", dir);
        return QIE_ENOMEM;
    }
    if (opt) c->opt = *opt;
    else cache_options_init(&c->opt);
    int ro = c->opt.readonly;
    struct stat st;
    if (!ro && mkdir(dir, 0755) && errno != EEXIST) {
        rc = errno;
        qie_seterr(err, "mkdir %s: %s", dir, strerror(rc));
        goto fail;
    }
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        qie_seterr(err, "%s: no cache here (not a folder)", dir);
        rc = ro ? QIE_ENOTFOUND : QIE_EINVAL;
        goto fail;
    }
    if (ro) {
        char p[4096];
        snprintf(p, sizeof p, "%s/data.mdb", dir);
        if (stat(p, &st)) {
            qie_seterr(err, "%s: no cache here (no data.mdb)", dir);
            rc = QIE_ENOTFOUND;
            goto fail;
        }
    }
    MDB_CHECK(mdb_env_create(&c->env), "mdb_env_create");
    MDB_CHECK(mdb_env_set_maxdbs(c->env, CACHE_NDBS), "mdb_env_set_maxdbs");
    /* trainers with many dataloader processes per GPU outgrow the default 126 slots (7.5) */
    MDB_CHECK(mdb_env_set_maxreaders(c->env, 1022), "mdb_env_set_maxreaders");
    unsigned flags = MDB_NOTLS; /* a read txn is kept reset across calls and may change threads */
    if (ro) {
        flags |= MDB_RDONLY | MDB_NORDAHEAD; /* random access over a cache larger than RAM (7.5) */
    } else {
        MDB_CHECK(mdb_env_set_mapsize(c->env, c->opt.map_size ? c->opt.map_size : CACHE_DEFAULT_MAP), "mdb_env_set_mapsize");
        if (c->opt.sync == CACHE_SYNC_META) flags |= MDB_NOMETASYNC;
        else if (c->opt.sync == CACHE_SYNC_NONE) flags |= MDB_NOSYNC;
    }
    rc = mdb_env_open(c->env, dir, flags, 0644);
    if (rc == MDB_INVALID) {
        qie_seterr(err, "%s: data.mdb is not an LMDB environment (corrupt, or a foreign file)", dir);
        rc = QIE_EFORMAT;
        goto fail;
    }
    if (rc == MDB_VERSION_MISMATCH) {
        qie_seterr(err, "%s: written by another LMDB version (%s)", dir, mdb_strerror(rc));
        rc = QIE_EVERSION;
        goto fail;
    }
    MDB_CHECK(rc, "mdb_env_open");
    /* slots left by killed readers pin old pages and make the file grow (7.5) */
    int dead = 0;
    MDB_CHECK(mdb_reader_check(c->env, &dead), "mdb_reader_check");
    if (dead) log_info("%s: cleared %d stale reader slot(s) left by dead processes", dir, dead);
    if ((rc = open_dbis_(err, c))) goto fail;
    for (int i = 0; i < c->opt.nexpect; i++)
        if ((rc = cache_expect(err, c, c->opt.expect[i]))) goto fail;
    c->opt.nexpect = 0; /* the strings are the caller's: do not keep pointers to them */
    c->last_sync = progress_now();
    *out = c;
    return 0;
fail:
    cache_close(&c);
    return rc;
}

static void pending_clear_(Cache *c) {
    for (size_t i = 0; i < c->npend; i++) free(c->pend[i].buf);
    c->npend = 0;
    c->pend_bytes = 0;
}

void cache_close(Cache **cp) {
    if (!cp || !*cp) return;
    Cache *c = *cp;
    if (c->rtxn) mdb_txn_abort(c->rtxn);
    if (c->env) {
        /* under MDB_NOMETASYNC/NOSYNC a clean close still leaves the cache durable */
        if (!c->opt.readonly) mdb_env_sync(c->env, 1);
        mdb_env_close(c->env);
    }
    pending_clear_(c);
    free(c->pend);
    for (int i = 0; i < c->nset; i++) { free(c->set[i].key); free(c->set[i].val); }
    free(c->set);
    free(c->dir);
    free(c);
    *cp = NULL;
}

/* ---- settings ---- */

int cache_setting(char *err, Cache *c, const char *key, char *val, size_t cap) {
    const CacheSetting *s = setting_find_(c, key);
    if (!s || s->pending) {
        qie_seterr(err, "%s: the cache records no setting '%s'", c->dir, key);
        return QIE_ENOTFOUND;
    }
    snprintf(val, cap, "%s", s->val);
    return 0;
}

int cache_expect(char *err, Cache *c, const char *kv) {
    const char *eq = strchr(kv, '=');
    if (!eq || eq == kv) {
        qie_seterr(err, "expect '%s': not KEY=VALUE", kv);
        return QIE_EINVAL;
    }
    char key[256];
    snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
    const CacheSetting *s = setting_find_(c, key);
    if (!s || s->pending) {
        qie_seterr(err, "%s: expected %s='%s', but the cache records no setting '%s'\n"
                   "hint: qie-cache stats %s lists the settings the cache was built with", c->dir, key, eq + 1, key, c->dir);
        return QIE_EMISMATCH;
    }
    if (strcmp(s->val, eq + 1)) {
        qie_seterr(err, "%s: the cache was built with %s='%s', not '%s'\n"
                   "hint: rebuild the cache with these settings, or point at the cache that has them", c->dir, key, s->val, eq + 1);
        return QIE_EMISMATCH;
    }
    return 0;
}

/* Checks key=val against what the cache knows, or queues it to be established at the next
 * commit. `who` names the record or call for the message. */
static int setting_check_(char *err, Cache *c, const char *key, const char *val, const char *who) {
    CacheSetting *s = setting_find_(c, key);
    if (!s) {
        if (setting_add_(c, key, val, 1)) {
            qie_seterr(err, "%s: out of memory", c->dir);
            return QIE_ENOMEM;
        }
        return 0;
    }
    if (strcmp(s->val, val)) {
        qie_seterr(err, "%s: %s has %s='%s', but the cache %s '%s'\n"
                   "hint: a cache holds latents of one set of settings; write these to another folder", c->dir, who,
                   key, val, s->pending ? "got earlier in this run" : "was built with", s->val);
        return QIE_EMISMATCH;
    }
    return 0;
}

int cache_set_setting(char *err, Cache *c, const char *key, const char *value) {
    if (c->opt.readonly) {
        qie_seterr(err, "%s: opened read-only", c->dir);
        return QIE_EINVAL;
    }
    int rc = setting_check_(err, c, key, value, "the writer's settings");
    if (rc) return rc;
    return cache_flush(err, c, 0);
}

int cache_meta_each(char *err, Cache *c, void (*fn)(void *ctx, const char *key, const char *val), void *ctx) {
    int rc, began = 0;
    MDB_cursor *cur = NULL;
    if (!c->rtxn_active) {
        if ((rc = cache_read_begin(err, c))) return rc;
        began = 1;
    }
    MDB_CHECK(mdb_cursor_open(c->rtxn, c->dbi_meta, &cur), "mdb_cursor_open(meta)");
    MDB_val k, v;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0) {
        if (k.mv_size == 8 && !memcmp(k.mv_data, "next_seq", 8)) continue; /* binary */
        char *ks = strndup(k.mv_data, k.mv_size), *vs = strndup(v.mv_data, v.mv_size);
        if (ks && vs) fn(ctx, ks, vs);
        free(ks);
        free(vs);
    }
    if (rc != MDB_NOTFOUND) MDB_CHECK(rc, "mdb_cursor_get(meta)");
    rc = 0;
fail:
    mdb_cursor_close(cur);
    if (began) cache_read_end(c);
    return rc;
}

/* ---- writing ---- */

int cache_put(char *err, Cache *c, const void *buf, size_t len) {
    int rc;
    if (c->opt.readonly) {
        qie_seterr(err, "%s: opened read-only", c->dir);
        return QIE_EINVAL;
    }
    Record r;
    rec_init(&r);
    /* validate before queueing, so a bad record is refused alone and never reaches a txn */
    if ((rc = rec_decode(err, &r, buf, len))) return rc;
    if (strlen(r.id) > CACHE_MAX_ID) {
        qie_seterr(err, "record id of %zu bytes: over LMDB's %d-byte key limit", strlen(r.id), CACHE_MAX_ID);
        rc = QIE_EFORMAT;
        goto out;
    }
    char who[600];
    snprintf(who, sizeof who, "record '%.200s'", r.id);
    size_t pl = strlen(CACHE_CFG_PREFIX);
    for (int i = 0; i < r.nattrs; i++) {
        if (strncmp(r.attrs[i].name, CACHE_CFG_PREFIX, pl)) continue;
        char *val = attr_text_(&r.attrs[i]);
        rc = val ? setting_check_(err, c, r.attrs[i].name + pl, val, who) : QIE_ENOMEM;
        free(val);
        if (rc) goto out;
    }
    if (c->npend == c->cappend) {
        size_t cap = c->cappend ? 2 * c->cappend : 64;
        CachePending *p = realloc(c->pend, cap * sizeof *p);
        if (!p) { rc = QIE_ENOMEM; goto nomem; }
        c->pend = p;
        c->cappend = cap;
    }
    void *copy = malloc(len ? len : 1);
    if (!copy) { rc = QIE_ENOMEM; goto nomem; }
    memcpy(copy, buf, len);
    c->pend[c->npend].buf = copy;
    c->pend[c->npend].len = len;
    c->npend++;
    c->pend_bytes += len;
    rec_free(&r);
    if ((int64_t)c->npend >= c->opt.batch_records || c->pend_bytes >= c->opt.batch_bytes) return cache_flush(err, c, 0);
    return 0;
nomem:
    qie_seterr(err, "%s: out of memory queueing a %zu-byte record", c->dir, len);
out:
    rec_free(&r);
    return rc;
}

int cache_put_record(char *err, Cache *c, const Record *r) {
    void *buf;
    size_t len;
    int rc = rec_encode(err, r, &buf, &len);
    if (rc) return rc;
    rc = cache_put(err, c, buf, len);
    free(buf);
    return rc;
}

/* Does `old` already hold every tensor of `in`, with the same dtype and shape? Then a re-run's
 * record adds nothing and is skipped (the resume rule). */
static int covers_(const Record *old, const Record *in) {
    for (int i = 0; i < in->ntensors; i++) {
        const RecTensor *a = &in->tensors[i], *b = rec_tensor(old, a->name);
        if (!b || b->dtype != a->dtype || b->ndim != a->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape))
            return 0;
    }
    return 1;
}

static void grp_val_(unsigned char *v, unsigned flags, uint64_t bytes, const char *id) {
    v[0] = (unsigned char)flags;
    put_be64_(v + 1, bytes);
    memcpy(v + GRP_VAL_HDR, id, strlen(id));
}

/* One write transaction for the whole queued batch. Returns MDB_MAP_FULL untouched (the caller
 * grows the map and calls again: the batch is still queued), else 0 or a mapped error. */
static int flush_txn_(char *err, Cache *c, CachePutStats *d) {
    int rc;
    MDB_txn *txn = NULL;
    Record in, old;
    rec_init(&in);
    rec_init(&old);
    void *nbuf = NULL;
    unsigned char gk[GRP_KEY_LEN], ogk[GRP_KEY_LEN], gv[GRP_VAL_HDR + CACHE_MAX_ID];
#define PUT_CHECK(call, what) do { if ((rc = (call)) != 0) { if (rc == MDB_MAP_FULL) goto fail; rc = mdb_fail_(err, rc, c->dir, what); goto fail; } } while (0)
    if ((rc = txn_begin_(err, c, 0, &txn))) return rc;
    /* settings first: another writer may have established one since we loaded the meta */
    for (int i = 0; i < c->nset; i++) {
        CacheSetting *s = &c->set[i];
        if (!s->pending) continue;
        char mk[300];
        snprintf(mk, sizeof mk, "%s%s", CACHE_CFG_PREFIX, s->key);
        MDB_val k = {strlen(mk), mk}, v;
        rc = mdb_get(txn, c->dbi_meta, &k, &v);
        if (rc == MDB_NOTFOUND) {
            PUT_CHECK(meta_put_str_(txn, c->dbi_meta, mk, s->val), "mdb_put(meta setting)");
        } else {
            MDB_CHECK(rc, "mdb_get(meta setting)");
            if (v.mv_size != strlen(s->val) || memcmp(v.mv_data, s->val, v.mv_size)) {
                qie_seterr(err, "%s: setting %s='%s' of this writer, but another writer established '%.*s'", c->dir, s->key,
                           s->val, (int)(v.mv_size > 200 ? 200 : v.mv_size), (const char *)v.mv_data);
                rc = QIE_EMISMATCH;
                goto fail;
            }
        }
    }
    uint64_t next_seq = 1;
    MDB_val nk = {8, "next_seq"}, nv;
    rc = mdb_get(txn, c->dbi_meta, &nk, &nv);
    if (rc == 0 && nv.mv_size == 8) next_seq = get_be64_(nv.mv_data);
    else if (rc != MDB_NOTFOUND) {
        if (rc == 0) { qie_seterr(err, "%s: meta next_seq is not 8 bytes (corrupt)", c->dir); rc = QIE_EFORMAT; goto fail; }
        MDB_CHECK(rc, "mdb_get(meta next_seq)");
    }
    for (size_t i = 0; i < c->npend; i++) {
        const CachePending *p = &c->pend[i];
        if ((rc = rec_decode(err, &in, p->buf, p->len))) goto fail; /* validated in cache_put */
        MDB_val ik = {strlen(in.id), in.id}, iv;
        rc = mdb_get(txn, c->dbi_id, &ik, &iv);
        if (rc == MDB_NOTFOUND) {
            uint64_t seq = next_seq++;
            unsigned char sk[8];
            put_be64_(sk, seq);
            MDB_val rk = {8, sk}, rv = {p->len, p->buf};
            /* seq only grows, so APPEND: no page splits, full leaf pages (7.6) */
            PUT_CHECK(mdb_put(txn, c->dbi_rec, &rk, &rv, MDB_APPEND), "mdb_put(rec, append)");
            MDB_val sv = {8, sk};
            PUT_CHECK(mdb_put(txn, c->dbi_id, &ik, &sv, MDB_NOOVERWRITE), "mdb_put(id)");
            grp_key_(gk, in.bucket[0], in.bucket[1], in.nsources, seq);
            grp_val_(gv, cache_record_flags(&in), p->len, in.id);
            MDB_val gkv = {GRP_KEY_LEN, gk}, gvv = {GRP_VAL_HDR + strlen(in.id), gv};
            PUT_CHECK(mdb_put(txn, c->dbi_grp, &gkv, &gvv, 0), "mdb_put(grp)");
            d->stored++;
            d->bytes += p->len;
            continue;
        }
        MDB_CHECK(rc, "mdb_get(id)");
        if (iv.mv_size != 8) {
            qie_seterr(err, "%s: index entry of id '%s' is not a seq (corrupt)", c->dir, in.id);
            rc = QIE_EFORMAT;
            goto fail;
        }
        uint64_t seq = get_be64_(iv.mv_data);
        unsigned char sk[8];
        put_be64_(sk, seq);
        MDB_val rk = {8, sk}, rv;
        rc = mdb_get(txn, c->dbi_rec, &rk, &rv);
        if (rc == MDB_NOTFOUND) {
            qie_seterr(err, "%s: id '%s' points at seq %llu, which holds no record (corrupt index)", c->dir, in.id, (unsigned long long)seq);
            rc = QIE_EFORMAT;
            goto fail;
        }
        MDB_CHECK(rc, "mdb_get(rec)");
        char derr[QIE_ERR_LEN];
        int old_ok = rec_decode(derr, &old, rv.mv_data, rv.mv_size) == 0;
        if (!old_ok) log_warn("%s: stored record '%s' does not decode (%s): replacing it", c->dir, in.id, derr);
        if (old_ok && c->opt.skip_existing && covers_(&old, &in)) {
            rec_free(&old);
            rec_free(&in);
            d->skipped++;
            continue;
        }
        const void *val = p->buf;
        size_t vlen = p->len;
        if (old_ok) {
            grp_key_(ogk, old.bucket[0], old.bucket[1], old.nsources, seq);
            /* a record arriving in parts: latents from one encoder, embeddings from another */
            if ((rc = rec_merge(err, &old, &in))) goto fail;
            if ((rc = rec_encode(err, &old, &nbuf, &vlen))) goto fail;
            val = nbuf;
            grp_key_(gk, old.bucket[0], old.bucket[1], old.nsources, seq);
            grp_val_(gv, cache_record_flags(&old), vlen, in.id);
        } else {
            /* the old grp entry cannot be named without the old record: find it by seq */
            MDB_cursor *cur = NULL;
            MDB_CHECK(mdb_cursor_open(txn, c->dbi_grp, &cur), "mdb_cursor_open(grp)");
            MDB_val k, v;
            int found = 0;
            while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0)
                if (k.mv_size == GRP_KEY_LEN && get_be64_((unsigned char *)k.mv_data + 12) == seq) {
                    memcpy(ogk, k.mv_data, GRP_KEY_LEN);
                    found = 1;
                    break;
                }
            mdb_cursor_close(cur);
            if (rc && rc != MDB_NOTFOUND) MDB_CHECK(rc, "mdb_cursor_get(grp)");
            if (!found) grp_key_(ogk, in.bucket[0], in.bucket[1], in.nsources, seq);
            grp_key_(gk, in.bucket[0], in.bucket[1], in.nsources, seq);
            grp_val_(gv, cache_record_flags(&in), vlen, in.id);
        }
        /* `old` borrows from the map pages this put may free: release it first */
        rec_free(&old);
        MDB_val nv2 = {vlen, (void *)val};
        PUT_CHECK(mdb_put(txn, c->dbi_rec, &rk, &nv2, 0), "mdb_put(rec, merge)");
        if (memcmp(ogk, gk, GRP_KEY_LEN)) {
            MDB_val ok = {GRP_KEY_LEN, ogk};
            rc = mdb_del(txn, c->dbi_grp, &ok, NULL);
            if (rc != MDB_NOTFOUND) PUT_CHECK(rc, "mdb_del(grp)");
        }
        MDB_val gkv = {GRP_KEY_LEN, gk}, gvv = {GRP_VAL_HDR + strlen(in.id), gv};
        PUT_CHECK(mdb_put(txn, c->dbi_grp, &gkv, &gvv, 0), "mdb_put(grp)");
        free(nbuf);
        nbuf = NULL;
        rec_free(&in);
        d->merged++;
        d->bytes += vlen;
    }
    unsigned char nsb[8];
    put_be64_(nsb, next_seq);
    MDB_val nsv = {8, nsb};
    PUT_CHECK(mdb_put(txn, c->dbi_meta, &nk, &nsv, 0), "mdb_put(meta next_seq)");
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc == MDB_MAP_FULL) goto fail;
    /* LMDB reports a short write as EIO ("short write, filesystem full?"): name the likely cause */
    if (rc == ENOSPC || rc == EDQUOT || rc == EFBIG || rc == EIO) {
        qie_seterr(err, "%s: commit of %zu records (%.1f MB): %s (disk full or file size limit?); "
                   "every record committed before this batch stays in the cache", c->dir, c->npend, c->pend_bytes / 1e6, strerror(rc));
        goto fail;
    }
    MDB_CHECK(rc, "mdb_txn_commit");
    d->commits++;
#undef PUT_CHECK
fail:
    if (txn) mdb_txn_abort(txn);
    free(nbuf);
    rec_free(&in);
    rec_free(&old);
    return rc;
}

/* Doubles the map after MDB_MAP_FULL (7.2: abort, grow, redo the batch). No txn is active. */
static int grow_map_(char *err, Cache *c) {
    int rc;
    MDB_envinfo info;
    MDB_CHECK(mdb_env_info(c->env, &info), "mdb_env_info");
    uint64_t cur = info.me_mapsize, next = cur * 2;
    if (next > CACHE_MAX_MAP) {
        qie_seterr(err, "%s: the map is full at %llu bytes and will not grow further", c->dir, (unsigned long long)cur);
        return QIE_ELIMIT;
    }
    MDB_CHECK(mdb_env_set_mapsize(c->env, next), "mdb_env_set_mapsize(grow)");
    log_info("%s: map full at %.1f MB: grown to %.1f MB, redoing the batch", c->dir, cur / 1e6, next / 1e6);
    c->st.grows++;
fail:
    return rc;
}

int cache_flush(char *err, Cache *c, int sync) {
    int rc;
    if (c->opt.readonly) {
        qie_seterr(err, "%s: opened read-only", c->dir);
        return QIE_EINVAL;
    }
    cache_read_end(c); /* set_mapsize needs no active txn in this process */
    int pending_set = 0;
    for (int i = 0; i < c->nset; i++) pending_set |= c->set[i].pending;
    if (c->npend || pending_set) {
        CachePutStats d;
        for (;;) {
            memset(&d, 0, sizeof d);
            rc = flush_txn_(err, c, &d);
            if (rc != MDB_MAP_FULL) break;
            if ((rc = grow_map_(err, c))) return rc;
        }
        if (rc) return rc;
        c->st.stored += d.stored;
        c->st.merged += d.merged;
        c->st.skipped += d.skipped;
        c->st.bytes += d.bytes;
        c->st.commits += d.commits;
        pending_clear_(c);
        for (int i = 0; i < c->nset; i++) c->set[i].pending = 0;
        update_need_empty_(c);
    }
    double now = progress_now();
    if (sync || (c->opt.sync != CACHE_SYNC_FULL && c->opt.sync_every_s > 0 && now - c->last_sync >= c->opt.sync_every_s)) {
        MDB_CHECK(mdb_env_sync(c->env, 1), "mdb_env_sync");
        c->last_sync = now;
    }
    return 0;
fail:
    return rc;
}

static int rm_txn_(char *err, Cache *c, const char *id) {
    int rc;
    MDB_txn *txn = NULL;
    MDB_cursor *cur = NULL;
    if ((rc = txn_begin_(err, c, 0, &txn))) return rc;
    MDB_val ik = {strlen(id), (void *)id}, iv;
    rc = mdb_get(txn, c->dbi_id, &ik, &iv);
    if (rc == MDB_NOTFOUND) {
        qie_seterr(err, "%s: no record with id '%s'", c->dir, id);
        rc = QIE_ENOTFOUND;
        goto fail;
    }
    MDB_CHECK(rc, "mdb_get(id)");
    if (iv.mv_size != 8) {
        qie_seterr(err, "%s: index entry of id '%s' is not a seq (corrupt)", c->dir, id);
        rc = QIE_EFORMAT;
        goto fail;
    }
    uint64_t seq = get_be64_(iv.mv_data);
    unsigned char sk[8];
    put_be64_(sk, seq);
    MDB_val rk = {8, sk};
    /* a delete copies pages too, so it can meet MDB_MAP_FULL: returned raw, like flush_txn_ */
#define DEL_CHECK(call, what) do { if ((rc = (call)) != 0) { if (rc == MDB_MAP_FULL) goto fail; rc = mdb_fail_(err, rc, c->dir, what); goto fail; } } while (0)
    rc = mdb_del(txn, c->dbi_rec, &rk, NULL);
    if (rc != MDB_NOTFOUND) DEL_CHECK(rc, "mdb_del(rec)");
    DEL_CHECK(mdb_del(txn, c->dbi_id, &ik, NULL), "mdb_del(id)");
    /* the grp key holds the bucket; scanning by seq also works when the record was unreadable */
    MDB_CHECK(mdb_cursor_open(txn, c->dbi_grp, &cur), "mdb_cursor_open(grp)");
    MDB_val k, v;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) == 0)
        if (k.mv_size == GRP_KEY_LEN && get_be64_((unsigned char *)k.mv_data + 12) == seq) {
            DEL_CHECK(mdb_cursor_del(cur, 0), "mdb_cursor_del(grp)");
            break;
        }
    if (rc && rc != MDB_NOTFOUND) MDB_CHECK(rc, "mdb_cursor_get(grp)");
    mdb_cursor_close(cur);
    cur = NULL;
    rc = mdb_txn_commit(txn);
    txn = NULL;
    if (rc != MDB_MAP_FULL) MDB_CHECK(rc, "mdb_txn_commit(rm)");
#undef DEL_CHECK
fail:
    if (cur) mdb_cursor_close(cur);
    if (txn) mdb_txn_abort(txn);
    return rc;
}

int cache_rm(char *err, Cache *c, const char *id) {
    int rc;
    if (c->opt.readonly) {
        qie_seterr(err, "%s: opened read-only", c->dir);
        return QIE_EINVAL;
    }
    cache_read_end(c);
    for (;;) {
        rc = rm_txn_(err, c, id);
        if (rc != MDB_MAP_FULL) break;
        if ((rc = grow_map_(err, c))) break;
    }
    return rc;
}

/* ---- reading ---- */

int cache_read_begin(char *err, Cache *c) {
    int rc;
    if (c->rtxn_active) return 0;
    if (c->rtxn) {
        rc = mdb_txn_renew(c->rtxn);
        if (rc == MDB_MAP_RESIZED) { /* the writer grew the map: adopt it (7.2) */
            mdb_txn_abort(c->rtxn);
            c->rtxn = NULL;
            MDB_CHECK(mdb_env_set_mapsize(c->env, 0), "mdb_env_set_mapsize(0) to adopt the grown map");
        } else {
            MDB_CHECK(rc, "mdb_txn_renew");
        }
    }
    if (!c->rtxn && (rc = txn_begin_(err, c, MDB_RDONLY, &c->rtxn))) return rc;
    c->rtxn_active = 1;
    /* text_drop_ratio may have been established since open: judge completeness by this snapshot */
    MDB_val k = {strlen(CACHE_CFG_PREFIX CACHE_CFG_TEXT_DROP_RATIO), CACHE_CFG_PREFIX CACHE_CFG_TEXT_DROP_RATIO}, v;
    rc = mdb_get(c->rtxn, c->dbi_meta, &k, &v);
    if (rc == 0) {
        char b[64];
        snprintf(b, sizeof b, "%.*s", (int)(v.mv_size > 63 ? 63 : v.mv_size), (const char *)v.mv_data);
        c->need_empty = strtod(b, NULL) > 0;
    } else if (rc != MDB_NOTFOUND) {
        MDB_CHECK(rc, "mdb_get(meta text_drop_ratio)");
    }
    return 0;
fail:
    return rc;
}

void cache_read_end(Cache *c) {
    if (c && c->rtxn_active) {
        mdb_txn_reset(c->rtxn);
        c->rtxn_active = 0;
    }
}

int cache_count(char *err, Cache *c, uint64_t *n) {
    int rc, began = 0;
    if (!c->rtxn_active) {
        if ((rc = cache_read_begin(err, c))) return rc;
        began = 1;
    }
    MDB_stat ms;
    MDB_CHECK(mdb_stat(c->rtxn, c->dbi_rec, &ms), "mdb_stat(rec)");
    *n = ms.ms_entries;
fail:
    if (began) cache_read_end(c);
    return rc;
}

static int seq_in_txn_(char *err, Cache *c, const char *id, uint64_t *seq) {
    int rc;
    MDB_val k = {strlen(id), (void *)id}, v;
    rc = mdb_get(c->rtxn, c->dbi_id, &k, &v);
    if (rc == MDB_NOTFOUND) {
        qie_seterr(err, "%s: no record with id '%s'", c->dir, id);
        return QIE_ENOTFOUND;
    }
    MDB_CHECK(rc, "mdb_get(id)");
    if (v.mv_size != 8) {
        qie_seterr(err, "%s: index entry of id '%s' is not a seq (corrupt)", c->dir, id);
        return QIE_EFORMAT;
    }
    *seq = get_be64_(v.mv_data);
fail:
    return rc;
}

int cache_seq(char *err, Cache *c, const char *id, uint64_t *seq) {
    int rc, began = 0;
    if (!c->rtxn_active) {
        if ((rc = cache_read_begin(err, c))) return rc;
        began = 1;
    }
    rc = seq_in_txn_(err, c, id, seq);
    if (began) cache_read_end(c);
    return rc;
}

int cache_get_raw(char *err, Cache *c, uint64_t seq, const void **buf, size_t *len) {
    int rc;
    if (!c->rtxn_active) {
        qie_seterr(err, "%s: cache_get_raw outside a read transaction (call cache_read_begin)", c->dir);
        return QIE_EINVAL;
    }
    unsigned char sk[8];
    put_be64_(sk, seq);
    MDB_val k = {8, sk}, v;
    rc = mdb_get(c->rtxn, c->dbi_rec, &k, &v);
    if (rc == MDB_NOTFOUND) {
        qie_seterr(err, "%s: no record at seq %llu", c->dir, (unsigned long long)seq);
        return QIE_ENOTFOUND;
    }
    MDB_CHECK(rc, "mdb_get(rec)");
    *buf = v.mv_data;
    *len = v.mv_size;
fail:
    return rc;
}

int cache_get(char *err, Cache *c, uint64_t seq, Record *r, int copy) {
    int rc, began = 0;
    const void *buf;
    size_t len;
    if (!c->rtxn_active) {
        if (!copy) {
            qie_seterr(err, "%s: a borrowed cache_get needs a read transaction (call cache_read_begin)", c->dir);
            return QIE_EINVAL;
        }
        if ((rc = cache_read_begin(err, c))) return rc;
        began = 1;
    }
    if ((rc = cache_get_raw(err, c, seq, &buf, &len))) goto out;
    if (!copy) {
        if ((rc = rec_decode(err, r, buf, len))) qie_preferr(err, "%s: seq %llu", c->dir, (unsigned long long)seq);
        goto out;
    }
    Record tmp;
    rec_init(&tmp);
    if ((rc = rec_decode(err, &tmp, buf, len))) {
        qie_preferr(err, "%s: seq %llu", c->dir, (unsigned long long)seq);
        goto out;
    }
    /* rec_merge copies every payload: r then owns all it holds */
    rec_free(r);
    if (rec_set_id(r, tmp.id)) rc = QIE_ENOMEM;
    else rc = rec_merge(err, r, &tmp);
    rec_free(&tmp);
    if (rc) rec_free(r);
out:
    if (began) cache_read_end(c);
    return rc;
}

int cache_get_id(char *err, Cache *c, const char *id, Record *r, int copy) {
    int rc, began = 0;
    uint64_t seq;
    if (!c->rtxn_active && copy) {
        if ((rc = cache_read_begin(err, c))) return rc;
        began = 1;
    }
    if (!c->rtxn_active) {
        qie_seterr(err, "%s: a borrowed cache_get_id needs a read transaction (call cache_read_begin)", c->dir);
        return QIE_EINVAL;
    }
    if (!(rc = seq_in_txn_(err, c, id, &seq))) rc = cache_get(err, c, seq, r, copy);
    if (began) cache_read_end(c);
    return rc;
}

static int grp_match_(const CacheFilter *f, const unsigned char *k) {
    if ((f->bucket[0] || f->bucket[1]) &&
        ((int32_t)get_be32_(k) != f->bucket[0] || (int32_t)get_be32_(k + 4) != f->bucket[1]))
        return 0;
    return f->nsources < 0 || (int)get_be32_(k + 8) == f->nsources;
}

/* Positions cur at the first grp key of f's range: a bucket prefix when f names one. */
static int grp_first_(MDB_cursor *cur, const CacheFilter *f, MDB_val *k, MDB_val *v) {
    if (!(f->bucket[0] || f->bucket[1])) return mdb_cursor_get(cur, k, v, MDB_FIRST);
    unsigned char pk[GRP_KEY_LEN]; /* only read during the call: k then points into the map */
    grp_key_(pk, f->bucket[0], f->bucket[1], f->nsources < 0 ? 0 : f->nsources, 0);
    k->mv_size = GRP_KEY_LEN;
    k->mv_data = pk;
    return mdb_cursor_get(cur, k, v, MDB_SET_RANGE);
}

/* past the last key f can match: sorted by bucket, so stop when the bucket changes */
static int grp_past_(const CacheFilter *f, const unsigned char *k) {
    if (!(f->bucket[0] || f->bucket[1])) return 0;
    uint64_t want = (uint64_t)(uint32_t)f->bucket[0] << 32 | (uint32_t)f->bucket[1];
    uint64_t have = (uint64_t)get_be32_(k) << 32 | get_be32_(k + 4);
    return have > want;
}

int cache_list(char *err, Cache *c, const CacheFilter *f, CacheList *out) {
    int rc, began = 0;
    MDB_cursor *cur = NULL;
    CacheFilter any;
    if (!f) { cache_filter_init(&any); f = &any; }
    memset(out, 0, sizeof *out);
    size_t cap = 0, acap = 0, alen = 0;
    size_t *idoff = NULL;
    if (!c->rtxn_active) {
        if ((rc = cache_read_begin(err, c))) return rc;
        began = 1;
    }
    MDB_CHECK(mdb_cursor_open(c->rtxn, c->dbi_grp, &cur), "mdb_cursor_open(grp)");
    MDB_val k, v;
    for (rc = grp_first_(cur, f, &k, &v); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const unsigned char *kk = k.mv_data, *vv = v.mv_data;
        if (k.mv_size != GRP_KEY_LEN || v.mv_size < GRP_VAL_HDR) {
            qie_seterr(err, "%s: malformed grp index entry (corrupt)", c->dir);
            rc = QIE_EFORMAT;
            goto fail;
        }
        if (grp_past_(f, kk)) break;
        if (!grp_match_(f, kk)) continue;
        unsigned flags = vv[0];
        int complete = cache_flags_complete(flags, c->need_empty);
        if (f->complete_only && !complete) continue;
        size_t idlen = v.mv_size - GRP_VAL_HDR;
        if (out->n == cap) {
            cap = cap ? 2 * cap : 256;
            CacheItem *it = realloc(out->items, cap * sizeof *it);
            size_t *io = realloc(idoff, cap * sizeof *io);
            if (it) out->items = it;
            if (io) idoff = io;
            if (!it || !io) goto nomem;
        }
        if (alen + idlen + 1 > acap) {
            acap = (alen + idlen + 1) * 2 + 4096;
            char *a = realloc(out->arena_, acap);
            if (!a) goto nomem;
            out->arena_ = a;
        }
        memcpy(out->arena_ + alen, vv + GRP_VAL_HDR, idlen);
        out->arena_[alen + idlen] = 0;
        CacheItem *it = &out->items[out->n];
        it->seq = get_be64_(kk + 12);
        it->bucket[0] = (int32_t)get_be32_(kk);
        it->bucket[1] = (int32_t)get_be32_(kk + 4);
        it->nsources = (int)get_be32_(kk + 8);
        it->flags = flags;
        it->complete = complete;
        it->bytes = get_be64_(vv + 1);
        idoff[out->n++] = alen;
        alen += idlen + 1;
    }
    if (rc && rc != MDB_NOTFOUND) MDB_CHECK(rc, "mdb_cursor_get(grp)");
    rc = 0;
    /* the arena moved while growing: point the ids only now */
    for (size_t i = 0; i < out->n; i++) out->items[i].id = out->arena_ + idoff[i];
    goto done;
nomem:
    qie_seterr(err, "%s: out of memory listing the index", c->dir);
    rc = QIE_ENOMEM;
fail:
    cache_list_free(out);
done:
    free(idoff);
    mdb_cursor_close(cur);
    if (began) cache_read_end(c);
    return rc;
}

void cache_list_free(CacheList *l) {
    if (!l) return;
    free(l->items);
    free(l->arena_);
    memset(l, 0, sizeof *l);
}

int cache_groups(char *err, Cache *c, CacheGroup **out, int *n) {
    CacheList l;
    int rc = cache_list(err, c, NULL, &l);
    if (rc) return rc;
    CacheGroup *g = NULL;
    int ng = 0;
    for (size_t i = 0; i < l.n; i++) {
        const CacheItem *it = &l.items[i];
        /* the list is sorted by (bucket, nsources): a group is a run */
        if (!ng || g[ng - 1].bucket[0] != it->bucket[0] || g[ng - 1].bucket[1] != it->bucket[1] || g[ng - 1].nsources != it->nsources) {
            CacheGroup *ng2 = realloc(g, (size_t)(ng + 1) * sizeof *g);
            if (!ng2) {
                free(g);
                cache_list_free(&l);
                qie_seterr(err, "%s: out of memory", c->dir);
                return QIE_ENOMEM;
            }
            g = ng2;
            memset(&g[ng], 0, sizeof *g);
            g[ng].bucket[0] = it->bucket[0];
            g[ng].bucket[1] = it->bucket[1];
            g[ng].nsources = it->nsources;
            ng++;
        }
        g[ng - 1].count++;
        g[ng - 1].complete += (uint64_t)it->complete;
    }
    cache_list_free(&l);
    *out = g;
    *n = ng;
    return 0;
}

/* ---- iterators ---- */

int cache_iter_begin(char *err, Cache *c, const CacheFilter *f, CacheIter **out) {
    int rc;
    CacheIter *it = calloc(1, sizeof *it);
    if (!it) {
        qie_seterr(err, "%s: out of memory", c->dir);
        return QIE_ENOMEM;
    }
    it->c = c;
    if (f) it->f = *f;
    else cache_filter_init(&it->f);
    if (it->f.ids) it->mode = ITER_IDS;
    else if (it->f.id_from || it->f.id_to) it->mode = ITER_IDRANGE;
    else if (it->f.bucket[0] || it->f.bucket[1] || it->f.nsources >= 0) it->mode = ITER_GROUP;
    else it->mode = ITER_SEQ;
    it->seq_pos = 1;
    it->seq_end = UINT64_MAX;
    cache_read_end(c);
    if ((rc = cache_read_begin(err, c))) { free(it); return rc; }
    MDB_val k = {8, "next_seq"}, v;
    rc = mdb_get(c->rtxn, c->dbi_meta, &k, &v);
    if (rc == 0 && v.mv_size == 8) it->seq_end = get_be64_(v.mv_data);
    else if (rc == 0 || rc == MDB_NOTFOUND) it->seq_end = 1; /* nothing committed yet */
    else {
        rc = mdb_fail_(err, rc, c->dir, "mdb_get(meta next_seq)");
        cache_read_end(c);
        free(it);
        return rc;
    }
    cache_read_end(c);
    *out = it;
    return 0;
}

void cache_iter_destroy(CacheIter **itp) {
    if (!itp || !*itp) return;
    cache_read_end((*itp)->c);
    free(*itp);
    *itp = NULL;
}

/* The filters the chosen order cannot apply by key: bucket/nsources outside ITER_GROUP, and
 * complete_only anywhere but the grp index. Decodes (zero-copy) only when one is asked for. */
static int iter_match_(char *err, CacheIter *it, const void *buf, size_t len, int *ok) {
    const CacheFilter *f = &it->f;
    int need_shape = it->mode != ITER_GROUP && (f->bucket[0] || f->bucket[1] || f->nsources >= 0);
    *ok = 1;
    if (!need_shape && !f->complete_only) return 0;
    Record r;
    rec_init(&r);
    int rc = rec_decode(err, &r, buf, len);
    if (rc) return rc;
    if ((f->bucket[0] || f->bucket[1]) && (r.bucket[0] != f->bucket[0] || r.bucket[1] != f->bucket[1])) *ok = 0;
    if (f->nsources >= 0 && r.nsources != f->nsources) *ok = 0;
    if (f->complete_only && !cache_record_complete(&r, it->c->need_empty, NULL, 0)) *ok = 0;
    rec_free(&r);
    return 0;
}

static int iter_step_(char *err, CacheIter *it, MDB_cursor *cur, uint64_t *seq, int *eof) {
    Cache *c = it->c;
    const CacheFilter *f = &it->f;
    MDB_val k, v;
    int rc;
    *eof = 0;
    switch (it->mode) {
    case ITER_SEQ: {
        unsigned char sk[8];
        put_be64_(sk, it->seq_pos);
        k.mv_size = 8;
        k.mv_data = sk;
        rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
        if (rc == MDB_NOTFOUND) { *eof = 1; return 0; }
        MDB_CHECK(rc, "mdb_cursor_get(rec)");
        *seq = get_be64_(k.mv_data);
        if (*seq >= it->seq_end) { *eof = 1; return 0; }
        it->seq_pos = *seq + 1;
        return 0;
    }
    case ITER_GROUP:
    case ITER_IDRANGE:
        if (!it->started) {
            if (it->mode == ITER_GROUP) rc = grp_first_(cur, f, &k, &v);
            else if (f->id_from) {
                k.mv_size = strlen(f->id_from);
                k.mv_data = (void *)f->id_from;
                rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            } else rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST);
            it->started = 1;
        } else {
            k.mv_size = it->last_len;
            k.mv_data = it->last;
            rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
            if (rc == 0 && k.mv_size == it->last_len && !memcmp(k.mv_data, it->last, it->last_len))
                rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
        }
        for (; rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (k.mv_size > CACHE_MAX_ID) break;
            memcpy(it->last, k.mv_data, k.mv_size);
            it->last_len = k.mv_size;
            if (it->mode == ITER_IDRANGE) {
                if (f->id_to) {
                    size_t tl = strlen(f->id_to), m = tl < k.mv_size ? tl : k.mv_size;
                    int cmp = memcmp(k.mv_data, f->id_to, m);
                    if (cmp > 0 || (cmp == 0 && k.mv_size > tl)) { *eof = 1; return 0; }
                }
                if (v.mv_size != 8) {
                    qie_seterr(err, "%s: index entry is not a seq (corrupt)", c->dir);
                    return QIE_EFORMAT;
                }
                *seq = get_be64_(v.mv_data);
                return 0;
            }
            if (k.mv_size != GRP_KEY_LEN || v.mv_size < GRP_VAL_HDR) {
                qie_seterr(err, "%s: malformed grp index entry (corrupt)", c->dir);
                return QIE_EFORMAT;
            }
            if (grp_past_(f, k.mv_data)) { *eof = 1; return 0; }
            if (!grp_match_(f, k.mv_data)) continue;
            uint64_t s = get_be64_((unsigned char *)k.mv_data + 12);
            if (s >= it->seq_end) continue;
            if (f->complete_only && !cache_flags_complete(((unsigned char *)v.mv_data)[0], c->need_empty)) continue;
            *seq = s;
            return 0;
        }
        if (rc == MDB_NOTFOUND) { *eof = 1; return 0; }
        MDB_CHECK(rc, "mdb_cursor_get(index)");
        return 0;
    case ITER_IDS:
        if (it->ids_pos >= f->nids) { *eof = 1; return 0; }
        rc = seq_in_txn_(err, c, f->ids[it->ids_pos], seq);
        if (rc == QIE_ENOTFOUND) qie_preferr(err, "id list entry %zu", it->ids_pos + 1);
        it->ids_pos++;
        return rc;
    }
    return 0;
fail:
    return rc;
}

int cache_iter_next(char *err, CacheIter *it, const void **buf, size_t *len, uint64_t *seq_out) {
    Cache *c = it->c;
    int rc;
    MDB_cursor *cur = NULL;
    /* a fresh snapshot per record: the previous buffer dies here, and no old page stays pinned */
    cache_read_end(c);
    if ((rc = cache_read_begin(err, c))) return rc;
    MDB_dbi dbi = it->mode == ITER_SEQ ? c->dbi_rec : it->mode == ITER_GROUP ? c->dbi_grp : c->dbi_id;
    MDB_CHECK(mdb_cursor_open(c->rtxn, dbi, &cur), "mdb_cursor_open");
    for (;;) {
        uint64_t seq = 0;
        int eof, ok;
        if ((rc = iter_step_(err, it, cur, &seq, &eof))) goto fail;
        if (eof) { rc = QIE_EEOF; goto fail; }
        rc = cache_get_raw(err, c, seq, buf, len);
        if (rc == QIE_ENOTFOUND && it->mode != ITER_IDS) continue; /* removed meanwhile */
        if (rc) goto fail;
        if ((rc = iter_match_(err, it, *buf, *len, &ok))) {
            qie_preferr(err, "%s: seq %llu", c->dir, (unsigned long long)seq);
            goto fail;
        }
        if (!ok) continue;
        if (seq_out) *seq_out = seq;
        break;
    }
fail:
    if (cur) mdb_cursor_close(cur);
    return rc;
}

/* ---- id lists ---- */

int cache_ids_load(char *err, const char *path, char ***ids_out, size_t *n_out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        qie_seterr(err, "open %s: %s", path, strerror(e));
        return e;
    }
    char **ids = NULL, *line = NULL;
    size_t n = 0, cap = 0, lcap = 0;
    ssize_t got;
    int rc = 0;
    while ((got = getline(&line, &lcap, f)) >= 0) {
        while (got > 0 && (line[got - 1] == '\n' || line[got - 1] == '\r')) line[--got] = 0;
        if (!got || line[0] == '#') continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **p = realloc(ids, cap * sizeof *p);
            if (!p) { rc = QIE_ENOMEM; break; }
            ids = p;
        }
        if (!(ids[n] = strdup(line))) { rc = QIE_ENOMEM; break; }
        n++;
    }
    if (!rc && ferror(f)) {
        rc = QIE_EIO;
        qie_seterr(err, "read %s: I/O error", path);
    } else if (rc) {
        qie_seterr(err, "%s: out of memory", path);
    }
    free(line);
    fclose(f);
    if (rc) {
        cache_ids_free(ids, n);
        return rc;
    }
    *ids_out = ids;
    *n_out = n;
    return 0;
}

void cache_ids_free(char **ids, size_t n) {
    for (size_t i = 0; ids && i < n; i++) free(ids[i]);
    free(ids);
}
