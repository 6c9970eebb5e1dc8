/* ep_lmdb.c: lmdb://DIR[?query] endpoints over the latent cache (cache.h, docs/cache.md).
 *
 * --out lmdb://DIR  every record goes through cache_put (batched commits, merge by id, skip of
 *                   what is cached); finish commits the last batch and syncs. An aborted stream
 *                   still commits what arrived: each record is whole on its own, and a re-run
 *                   skips it.
 * --in lmdb://DIR   streams the records (cache_iter_*), ending with QIE_EEOF.
 *
 * Query (parts joined by '&'; repeatable ones may be given several times):
 *   read:  bucket=HxW  sources=N  complete=1  ids=FILE  from=ID  to=ID  expect=KEY=VALUE
 *   write: batch=N  batch_mb=N  skip_existing=0|1  sync=full|meta|none  map_size=SIZE
 *          set=KEY=VALUE (a setting for every record)  expect=KEY=VALUE */
#include "cache.h"
#include "cli.h"
#include "ep_internal.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    Cache *cache;
    CacheIter *it;
    EpMode mode;
    char **ids;
    size_t nids;
    char *query; /* owns the strings the filter (from, to), expects and settings point into */
} LmdbEp;

static int lmdb_read_(char *err, void *state, const void **buf, size_t *len) {
    LmdbEp *s = state;
    return cache_iter_next(err, s->it, buf, len, NULL);
}

static int lmdb_write_(char *err, void *state, const void *buf, size_t len) {
    LmdbEp *s = state;
    return cache_put(err, s->cache, buf, len);
}

static int lmdb_finish_(char *err, void *state, int ok, const char *reason, uint64_t count) {
    LmdbEp *s = state;
    int rc = cache_flush(err, s->cache, 1);
    const CachePutStats *st = cache_put_stats(s->cache);
    if (!ok) log_warn("%s: the stream was aborted (%s); kept the %llu records that arrived whole", cache_dir(s->cache),
                      reason ? reason : "no reason", (unsigned long long)count);
    log_info("%s: %llu stored, %llu merged, %llu skipped (already cached), %.1f MB in %llu commits", cache_dir(s->cache),
             (unsigned long long)st->stored, (unsigned long long)st->merged, (unsigned long long)st->skipped, st->bytes / 1e6,
             (unsigned long long)st->commits);
    return rc;
}

static void lmdb_close_(void *state) {
    LmdbEp *s = state;
    if (!s) return;
    cache_iter_destroy(&s->it);
    cache_close(&s->cache);
    cache_ids_free(s->ids, s->nids);
    free(s->query);
    free(s);
}

static const EpOps lmdb_ops_ = {"lmdb", lmdb_read_, lmdb_write_, lmdb_finish_, lmdb_close_};

int ep_lmdb_open(char *err, const char *url, EpMode mode, const EpOps **ops, void **state) {
    int rc = 0;
    LmdbEp *s = calloc(1, sizeof *s);
    char *dir = NULL;
    const char *sets[CACHE_MAX_EXPECT];
    int nsets = 0;
    if (!s) return QIE_ENOMEM;
    s->mode = mode;
    const char *q = strchr(url, '?');
    dir = strndup(url, q ? (size_t)(q - url) : strlen(url));
    s->query = strdup(q ? q + 1 : "");
    if (!dir || !s->query) { rc = QIE_ENOMEM; goto fail; }
    if (!*dir) {
        qie_seterr(err, "lmdb://: no folder (write lmdb://DIR)");
        rc = QIE_EINVAL;
        goto fail;
    }
    CacheOptions opt;
    cache_options_init(&opt);
    opt.readonly = mode == EP_READ;
    CacheFilter f;
    cache_filter_init(&f);
    char *save = NULL;
    for (char *part = strtok_r(s->query, "&", &save); part; part = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(part, '=');
        if (!eq) {
            qie_seterr(err, "lmdb://%s: query part '%s' is not KEY=VALUE", dir, part);
            rc = QIE_EINVAL;
            goto fail;
        }
        *eq = 0;
        const char *k = part, *v = eq + 1;
        int rd = mode == EP_READ, bad = 0;
        uint64_t size;
        if (!strcmp(k, "expect")) {
            if (opt.nexpect >= CACHE_MAX_EXPECT) bad = 1;
            else opt.expect[opt.nexpect++] = v;
        } else if (rd && !strcmp(k, "bucket")) {
            bad = sscanf(v, "%dx%d", &f.bucket[0], &f.bucket[1]) != 2 || f.bucket[0] <= 0 || f.bucket[1] <= 0;
        } else if (rd && !strcmp(k, "sources")) {
            bad = sscanf(v, "%d", &f.nsources) != 1 || f.nsources < 0;
        } else if (rd && !strcmp(k, "complete")) {
            f.complete_only = !strcmp(v, "1") || !strcmp(v, "true");
        } else if (rd && !strcmp(k, "ids")) {
            if ((rc = cache_ids_load(err, v, &s->ids, &s->nids))) goto fail;
            f.ids = (const char *const *)s->ids;
            f.nids = s->nids;
        } else if (rd && !strcmp(k, "from")) {
            f.id_from = v;
        } else if (rd && !strcmp(k, "to")) {
            f.id_to = v;
        } else if (!rd && !strcmp(k, "batch")) {
            opt.batch_records = atoi(v);
            bad = opt.batch_records < 1;
        } else if (!rd && !strcmp(k, "batch_mb")) {
            opt.batch_bytes = (uint64_t)(atof(v) * 1e6);
            bad = opt.batch_bytes < 1;
        } else if (!rd && !strcmp(k, "skip_existing")) {
            opt.skip_existing = strcmp(v, "0") && strcmp(v, "false");
        } else if (!rd && !strcmp(k, "sync")) {
            if (!strcmp(v, "full")) opt.sync = CACHE_SYNC_FULL;
            else if (!strcmp(v, "meta")) opt.sync = CACHE_SYNC_META;
            else if (!strcmp(v, "none")) opt.sync = CACHE_SYNC_NONE;
            else bad = 1;
        } else if (!rd && !strcmp(k, "map_size")) {
            bad = cli_parse_size(v, &size) != 0;
            opt.map_size = size;
        } else if (!rd && !strcmp(k, "set")) {
            if (nsets >= CACHE_MAX_EXPECT || !strchr(v, '=')) bad = 1;
            else sets[nsets++] = v;
        } else {
            qie_seterr(err, "lmdb://%s: unknown query key '%s' for %s\nhint: read: bucket sources complete ids from to expect; "
                       "write: batch batch_mb skip_existing sync map_size set expect", dir, k, rd ? "reading" : "writing");
            rc = QIE_EINVAL;
            goto fail;
        }
        if (bad) {
            qie_seterr(err, "lmdb://%s: bad value '%s' for '%s'", dir, v, k);
            rc = QIE_EINVAL;
            goto fail;
        }
    }
    if ((rc = cache_open(err, dir, &opt, &s->cache))) goto fail;
    for (int i = 0; i < nsets; i++) {
        char *eq = strchr(sets[i], '=');
        *eq = 0;
        rc = cache_set_setting(err, s->cache, sets[i], eq + 1);
        *eq = '=';
        if (rc) goto fail;
    }
    if (mode == EP_READ) {
        if ((rc = cache_iter_begin(err, s->cache, &f, &s->it))) goto fail;
    }
    free(dir);
    *ops = &lmdb_ops_;
    *state = s;
    return 0;
fail:
    if (rc == QIE_ENOMEM) qie_seterr(err, "lmdb://%s: out of memory", url);
    free(dir);
    lmdb_close_(s);
    return rc;
}
