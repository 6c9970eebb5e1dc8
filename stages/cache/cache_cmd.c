/* cache_cmd.c: qie-cache put, cat, ls, stats and verify over common/cache.h. */
#include "cache_cmd.h"
#include "cache_names.h"
#include "err.h"
#include "log.h"
#include "progress.h"

#include <cJSON.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- put ---- */

int cache_cmd_put(char *err, Cache *c, Endpoint *in, int progress, CachePutReport *rep) {
    int rc = 0, frc, stream_failed = 0;
    char ferr[QIE_ERR_LEN];
    Progress pg;
    progress_init(&pg, "put", 0, progress);
    memset(rep, 0, sizeof *rep);
    for (;;) {
        const void *buf;
        size_t len;
        rc = ep_read(err, in, &buf, &len);
        if (rc == QIE_EEOF) { rc = 0; break; }
        if (rc) { stream_failed = 1; break; }
        rep->read++;
        rc = cache_put(err, c, buf, len);
        if (rc == QIE_EFORMAT || rc == QIE_EVERSION) {
            /* one bad record must not cost the run: report where it was and go on */
            log_warn("record %" PRIu64 " of the input (%zu bytes) skipped: %s", rep->read - 1, len, err);
            rep->bad++;
            rc = 0;
            continue;
        }
        if (rc) break;
        progress_update(&pg, rep->read);
    }
    progress_end(&pg);
    /* whatever arrived whole is committed, even when the stream failed: a re-run skips it.
     * After a cache error the batch stays queued but committing it again would fail the same way. */
    if (!rc || stream_failed) {
        frc = cache_flush(rc ? ferr : err, c, 1);
        if (frc && rc) log_error("%s", ferr);
        if (!rc) rc = frc;
    }
    const CachePutStats *st = cache_put_stats(c);
    log_info("%s: %" PRIu64 " read, %" PRIu64 " stored, %" PRIu64 " merged, %" PRIu64 " skipped (already cached), %" PRIu64
             " bad; %.1f MB in %" PRIu64 " commits%s", cache_dir(c), rep->read, st->stored, st->merged, st->skipped, rep->bad,
             st->bytes / 1e6, st->commits, st->grows ? " (map grown)" : "");
    return rc;
}

/* ---- cat ---- */

int cache_cmd_cat(char *err, Cache *c, const CacheFilter *f, Endpoint *out, uint64_t *n) {
    CacheIter *it = NULL;
    int rc = cache_iter_begin(err, c, f, &it);
    *n = 0;
    while (!rc) {
        const void *buf;
        size_t len;
        rc = cache_iter_next(err, it, &buf, &len, NULL);
        if (rc == QIE_EEOF) { rc = 0; break; }
        if (!rc && !(rc = ep_write(err, out, buf, len))) (*n)++;
    }
    cache_iter_destroy(&it);
    return rc;
}

/* ---- ls ---- */

int cache_cmd_ls(char *err, Cache *c, const CacheFilter *f, int ids_only, FILE *out) {
    CacheList l;
    int rc = cache_list(err, c, f, &l);
    if (rc) return rc;
    for (size_t i = 0; i < l.n; i++) {
        const CacheItem *it = &l.items[i];
        if (ids_only) fprintf(out, "%s\n", it->id);
        else
            fprintf(out, "%s\t%dx%d\t%d\t%" PRIu64 "\t%s\n", it->id, it->bucket[0], it->bucket[1], it->nsources, it->bytes,
                    it->complete ? "complete" : "incomplete");
    }
    cache_list_free(&l);
    return 0;
}

/* ---- stats ---- */

typedef struct {
    char name[64];
    QieDtype dt;
    int ndim;
    int64_t mn[QIE_REC_MAX_DIMS], mx[QIE_REC_MAX_DIMS];
    uint64_t count;
} TensorSum;

typedef struct {
    char name[64];
    uint64_t count;
} NameCount;

typedef struct {
    uint64_t records, bytes, complete, undecodable;
    uint64_t hist[65]; /* source counts; the last slot holds 64 and more */
    TensorSum ts[256];
    int nts;
    NameCount miss[64];
    int nmiss;
    cJSON *settings;
    char *settings_text;
    size_t stlen;
} StatsAcc;

static void tensor_sum_add_(StatsAcc *a, const RecTensor *t) {
    TensorSum *s = NULL;
    for (int i = 0; i < a->nts && !s; i++)
        if (!strcmp(a->ts[i].name, t->name) && a->ts[i].dt == t->dtype && a->ts[i].ndim == t->ndim) s = &a->ts[i];
    if (!s) {
        if (a->nts == (int)(sizeof a->ts / sizeof *a->ts)) return;
        s = &a->ts[a->nts++];
        snprintf(s->name, sizeof s->name, "%s", t->name);
        s->dt = t->dtype;
        s->ndim = t->ndim;
        for (int d = 0; d < t->ndim; d++) s->mn[d] = s->mx[d] = t->shape[d];
    }
    for (int d = 0; d < t->ndim; d++) {
        if (t->shape[d] < s->mn[d]) s->mn[d] = t->shape[d];
        if (t->shape[d] > s->mx[d]) s->mx[d] = t->shape[d];
    }
    s->count++;
}

static void name_count_add_(NameCount *nc, int *n, int cap, const char *name) {
    for (int i = 0; i < *n; i++)
        if (!strcmp(nc[i].name, name)) { nc[i].count++; return; }
    if (*n == cap) return;
    snprintf(nc[*n].name, sizeof nc[*n].name, "%s", name);
    nc[(*n)++].count = 1;
}

static void stats_setting_(void *ctx, const char *key, const char *val) {
    StatsAcc *a = ctx;
    cJSON_AddStringToObject(a->settings, key, val);
}

static void shape_text_(const TensorSum *s, char *out, size_t cap) {
    size_t n = 0;
    n += (size_t)snprintf(out + n, cap - n, "[");
    for (int d = 0; d < s->ndim && n < cap; d++) {
        if (s->mn[d] == s->mx[d]) n += (size_t)snprintf(out + n, cap - n, "%s%" PRId64, d ? "," : "", s->mn[d]);
        else n += (size_t)snprintf(out + n, cap - n, "%s%" PRId64 "..%" PRId64, d ? "," : "", s->mn[d], s->mx[d]);
    }
    if (n < cap) snprintf(out + n, cap - n, "]");
}

int cache_cmd_stats(char *err, Cache *c, int json, FILE *out) {
    int rc;
    StatsAcc *a = calloc(1, sizeof *a);
    CacheIter *it = NULL;
    CacheGroup *g = NULL;
    int ng = 0;
    cJSON *root = NULL;
    if (!a) return QIE_ENOMEM;
    a->settings = cJSON_CreateObject();
    if ((rc = cache_meta_each(err, c, stats_setting_, a))) goto out;
    if ((rc = cache_groups(err, c, &g, &ng))) goto out;
    if ((rc = cache_iter_begin(err, c, NULL, &it))) goto out;
    Record r;
    rec_init(&r);
    int need_empty = 0;
    for (;;) {
        const void *buf;
        size_t len;
        rc = cache_iter_next(err, it, &buf, &len, NULL);
        if (rc == QIE_EEOF) { rc = 0; break; }
        if (rc) break;
        need_empty = cache_need_empty(c);
        a->records++;
        a->bytes += len;
        char derr[QIE_ERR_LEN];
        if (rec_decode(derr, &r, buf, len)) { a->undecodable++; continue; }
        a->hist[r.nsources < 64 ? r.nsources : 64]++;
        for (int i = 0; i < r.ntensors; i++) tensor_sum_add_(a, &r.tensors[i]);
        char miss[64];
        if (cache_record_complete(&r, need_empty, miss, sizeof miss)) a->complete++;
        else name_count_add_(a->miss, &a->nmiss, 64, miss);
    }
    rec_free(&r);
    cache_iter_destroy(&it);
    if (rc) goto out;
    need_empty = cache_need_empty(c);
    if (json) {
        root = cJSON_CreateObject();
        cJSON_AddStringToObject(root, "cache", cache_dir(c));
        cJSON_AddNumberToObject(root, "records", (double)a->records);
        cJSON_AddNumberToObject(root, "bytes", (double)a->bytes);
        cJSON_AddNumberToObject(root, "complete", (double)a->complete);
        cJSON_AddBoolToObject(root, "needs_prompt_embeds_empty", need_empty);
        cJSON_AddNumberToObject(root, "undecodable", (double)a->undecodable);
        cJSON *inc = cJSON_AddObjectToObject(root, "incomplete_missing");
        for (int i = 0; i < a->nmiss; i++) cJSON_AddNumberToObject(inc, a->miss[i].name, (double)a->miss[i].count);
        cJSON_AddItemToObject(root, "settings", a->settings);
        a->settings = NULL;
        cJSON *ga = cJSON_AddArrayToObject(root, "groups");
        for (int i = 0; i < ng; i++) {
            cJSON *o = cJSON_CreateObject();
            int hw[2] = {g[i].bucket[0], g[i].bucket[1]};
            cJSON_AddItemToObject(o, "bucket", cJSON_CreateIntArray(hw, 2));
            cJSON_AddNumberToObject(o, "sources", g[i].nsources);
            cJSON_AddNumberToObject(o, "count", (double)g[i].count);
            cJSON_AddNumberToObject(o, "complete", (double)g[i].complete);
            cJSON_AddItemToArray(ga, o);
        }
        cJSON *h = cJSON_AddObjectToObject(root, "sources_histogram");
        for (int k = 0; k <= 64; k++)
            if (a->hist[k]) {
                char key[16];
                snprintf(key, sizeof key, "%d", k);
                cJSON_AddNumberToObject(h, key, (double)a->hist[k]);
            }
        cJSON *ta = cJSON_AddArrayToObject(root, "tensors");
        for (int i = 0; i < a->nts; i++) {
            const TensorSum *s = &a->ts[i];
            cJSON *o = cJSON_CreateObject();
            cJSON_AddStringToObject(o, "name", s->name);
            cJSON_AddStringToObject(o, "dtype", dtype_name(s->dt));
            cJSON *mn = cJSON_AddArrayToObject(o, "shape_min"), *mx = cJSON_AddArrayToObject(o, "shape_max");
            for (int d = 0; d < s->ndim; d++) {
                cJSON_AddItemToArray(mn, cJSON_CreateNumber((double)s->mn[d]));
                cJSON_AddItemToArray(mx, cJSON_CreateNumber((double)s->mx[d]));
            }
            cJSON_AddNumberToObject(o, "count", (double)s->count);
            cJSON_AddItemToArray(ta, o);
        }
        char *txt = cJSON_Print(root);
        if (!txt) { rc = QIE_ENOMEM; goto out; }
        fprintf(out, "%s\n", txt);
        free(txt);
        goto out;
    }
    fprintf(out, "cache %s\n", cache_dir(c));
    fprintf(out, "records: %" PRIu64 "\n", a->records);
    fprintf(out, "bytes: %" PRIu64 " (%.1f MB, %.2f MB/record)\n", a->bytes, a->bytes / 1e6,
            a->records ? a->bytes / 1e6 / (double)a->records : 0.0);
    fprintf(out, "complete for training: %" PRIu64 " of %" PRIu64 " (prompt_embeds_empty %s)\n", a->complete, a->records,
            need_empty ? "required: text_drop_ratio > 0" : "not required");
    for (int i = 0; i < a->nmiss; i++) fprintf(out, "  incomplete, missing %s: %" PRIu64 "\n", a->miss[i].name, a->miss[i].count);
    if (a->undecodable) fprintf(out, "undecodable: %" PRIu64 " (run qie-cache verify)\n", a->undecodable);
    fprintf(out, "settings:\n");
    for (cJSON *s = a->settings->child; s; s = s->next) fprintf(out, "  %s = %s\n", s->string, s->valuestring);
    fprintf(out, "groups (bucket HxW, sources: records, complete):\n");
    for (int i = 0; i < ng; i++)
        fprintf(out, "  %dx%d sources=%d: %" PRIu64 ", %" PRIu64 "\n", g[i].bucket[0], g[i].bucket[1], g[i].nsources,
                g[i].count, g[i].complete);
    fprintf(out, "sources histogram:\n");
    for (int k = 0; k <= 64; k++)
        if (a->hist[k]) fprintf(out, "  %d%s: %" PRIu64 "\n", k, k == 64 ? "+" : "", a->hist[k]);
    fprintf(out, "tensors (name dtype shape: records):\n");
    for (int i = 0; i < a->nts; i++) {
        char sh[256];
        shape_text_(&a->ts[i], sh, sizeof sh);
        fprintf(out, "  %s %s %s: %" PRIu64 "\n", a->ts[i].name, dtype_name(a->ts[i].dt), sh, a->ts[i].count);
    }
out:
    if (rc == QIE_ENOMEM) qie_seterr(err, "stats: out of memory");
    cJSON_Delete(root);
    if (a) cJSON_Delete(a->settings);
    free(a);
    free(g);
    return rc;
}

/* ---- verify ---- */

static int item_seq_cmp_(const void *a, const void *b) {
    uint64_t x = ((const CacheItem *)a)->seq, y = ((const CacheItem *)b)->seq;
    return x < y ? -1 : x > y;
}

/* Checks beyond rec_decode's size-against-shape: each posterior pair agrees, latents are f32
 * or bf16, the prompt embedding is 2-D. Returns 0 or writes the problem into why. */
static int record_shape_check_(const Record *r, char *why, size_t cap) {
    char m[64], l[64];
    for (int k = -1; k < r->nsources; k++) {
        if (k < 0) {
            snprintf(m, sizeof m, "%s", CACHE_T_TARGET_MEAN);
            snprintf(l, sizeof l, "%s", CACHE_T_TARGET_LOGVAR);
        } else {
            cache_name_k(m, sizeof m, CACHE_T_SOURCE_MEAN, k);
            cache_name_k(l, sizeof l, CACHE_T_SOURCE_LOGVAR, k);
        }
        const RecTensor *a = rec_tensor(r, m), *b = rec_tensor(r, l);
        if (!a && !b) continue;
        if (!a || !b) { snprintf(why, cap, "%s without %s", a ? m : l, a ? l : m); return 1; }
        if (a->dtype != b->dtype || a->ndim != b->ndim || memcmp(a->shape, b->shape, (size_t)a->ndim * sizeof *a->shape)) {
            snprintf(why, cap, "%s and %s differ in dtype or shape", m, l);
            return 1;
        }
        if (a->dtype != QIE_DT_F32 && a->dtype != QIE_DT_BF16) {
            snprintf(why, cap, "%s is %s (f32 or bf16 expected)", m, dtype_name(a->dtype));
            return 1;
        }
        if (a->ndim != 4) { snprintf(why, cap, "%s has %d dims ([C, F, H, W] expected)", m, a->ndim); return 1; }
    }
    const char *pe[2] = {CACHE_T_PROMPT_EMBEDS, CACHE_T_PROMPT_EMBEDS_EMPTY};
    for (int i = 0; i < 2; i++) {
        const RecTensor *t = rec_tensor(r, pe[i]);
        if (t && t->ndim != 2) { snprintf(why, cap, "%s has %d dims ([L, D] expected)", pe[i], t->ndim); return 1; }
    }
    return 0;
}

int cache_cmd_verify(char *err, Cache *c, FILE *out, uint64_t *nbad) {
    int rc;
    CacheList l = {0};
    uint64_t nrec = 0, count = 0;
    Record r;
    rec_init(&r);
    *nbad = 0;
    /* one snapshot for the index, the count and every record, so a writer committing meanwhile
     * cannot look like an inconsistency; the price is a read txn as long as the walk (7.1) */
    if ((rc = cache_read_begin(err, c))) return rc;
    if ((rc = cache_list(err, c, NULL, &l))) goto out;
    qsort(l.items, l.n, sizeof *l.items, item_seq_cmp_); /* seq order: sequential in the file */
    if ((rc = cache_count(err, c, &count))) goto out;
#define BAD(...) do { fprintf(out, __VA_ARGS__); fputc('\n', out); (*nbad)++; } while (0)
    for (size_t i = 0; i < l.n; i++) {
        const CacheItem *gi = &l.items[i];
        uint64_t seq = gi->seq;
        const void *buf;
        size_t len;
        char derr[QIE_ERR_LEN], why[256];
        rc = cache_get_raw(derr, c, seq, &buf, &len);
        if (rc == QIE_ENOTFOUND) {
            BAD("bucket index entry of id %s (seq %" PRIu64 ") has no record", gi->id, seq);
            continue;
        }
        if (rc) { memcpy(err, derr, QIE_ERR_LEN); goto out; }
        nrec++;
        if (rec_decode(derr, &r, buf, len)) { BAD("seq %" PRIu64 ": does not decode: %s", seq, derr); continue; }
        uint64_t iseq;
        rc = cache_seq(derr, c, r.id, &iseq);
        if (rc == QIE_ENOTFOUND) BAD("seq %" PRIu64 " id %s: not in the id index", seq, r.id);
        else if (rc) { memcpy(err, derr, QIE_ERR_LEN); goto out; }
        else if (iseq != seq) BAD("seq %" PRIu64 " id %s: the id index points at seq %" PRIu64, seq, r.id, iseq);
        rc = 0;
        if (gi->bucket[0] != r.bucket[0] || gi->bucket[1] != r.bucket[1] || gi->nsources != r.nsources ||
            gi->flags != cache_record_flags(&r) || gi->bytes != len || strcmp(gi->id, r.id))
            BAD("seq %" PRIu64 " id %s: the bucket index entry disagrees with the record", seq, r.id);
        if (record_shape_check_(&r, why, sizeof why)) BAD("seq %" PRIu64 " id %s: %s", seq, r.id, why);
        rec_free(&r); /* it borrows from the map */
    }
    if (count != nrec) BAD("the record table holds %" PRIu64 " records, the bucket index reaches %" PRIu64, count, nrec);
#undef BAD
    fprintf(out, "verify %s: %" PRIu64 " records, %" PRIu64 " bad\n", cache_dir(c), count, *nbad);
out:
    rec_free(&r);
    cache_list_free(&l);
    cache_read_end(c);
    return rc;
}
