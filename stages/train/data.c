/* data.c: the trainer's dataset (train.h). Two sources:
 *   lmdb://DIR[?expect=K=V&bucket=HxW&sources=N]  the latent cache (docs/cache.md): the grp index
 *        lists the records, and one scan validates each (a short read transaction per 256
 *        records, so the writer is never held up);
 *   anything else ep_open reads (-, FILE, tcp://...): the stream is read whole into memory
 *        (meant for tests and small sets);
 *   synthetic://HxW[?count=N&sources=S&txt=L]  N records of bucket HxW (pixels) with S sources of
 *        the same size and L text rows, values from a hash of (record, element): the GPU
 *        benchmarks' input, no cache needed (scripts/gpu_dist_check.sh).
 * A record that lacks a part or whose shapes disagree (train_mode, bucket, text width) is
 * reported and left out; the run never stops for one. */
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "cache_names.h"
#include "endpoint.h"
#include "err.h"
#include "log.h"
#include "train.h"

typedef struct {
    char *id;
    int64_t index;
    uint64_t seq;     /* cache */
    void *buf;        /* stream: the record's bytes */
    size_t len;
    int32_t h, w;
    int nsrc;
} DsEntry;

struct Dataset {
    Cache *cache;
    int synth, synth_L;         /* synthetic://: text rows */
    DsEntry *e;
    SmpItem *items;
    uint32_t n, cap;
    int joint_dim, plus, need_empty;
};

void sample_free(Sample *s) {
    if (!s) return;
    free(s->mean);
    free(s->logvar);
    for (int k = 0; k < TRAIN_MAX_SOURCES; k++) {
        free(s->smean[k]);
        free(s->slogvar[k]);
    }
    free(s->txt);
    free(s->txt_empty);
    memset(s, 0, sizeof *s);
}

/* A latent [C, 1, h, w] or [C, h, w]: 0 and its h, w, or QIE_EFORMAT. */
static int latent_shape_(const RecTensor *t, int *h, int *w) {
    if (!t || (t->dtype != QIE_DT_F32 && t->dtype != QIE_DT_BF16 && t->dtype != QIE_DT_F16)) return QIE_EFORMAT;
    if (t->ndim == 4 && t->shape[0] == TRAIN_LATENT_CH && t->shape[1] == 1) {
        *h = (int)t->shape[2];
        *w = (int)t->shape[3];
    } else if (t->ndim == 3 && t->shape[0] == TRAIN_LATENT_CH) {
        *h = (int)t->shape[1];
        *w = (int)t->shape[2];
    } else {
        return QIE_EFORMAT;
    }
    return (*h > 0 && *w > 0 && *h % 2 == 0 && *w % 2 == 0) ? 0 : QIE_EFORMAT;
}

static int same_shape_(const RecTensor *a, const RecTensor *b) {
    if (!a || !b || a->ndim != b->ndim) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return 1;
}

static int text_shape_(const RecTensor *t, int J, int *L) {
    if (!t || t->ndim != 2 || t->shape[1] != J || t->shape[0] < 1) return QIE_EFORMAT;
    if (t->dtype != QIE_DT_BF16 && t->dtype != QIE_DT_F32 && t->dtype != QIE_DT_F16) return QIE_EFORMAT;
    *L = (int)t->shape[0];
    return 0;
}

/* Checks a record against what the trainer needs; why gets the first problem. */
static int validate_(const Dataset *d, const Record *r, char *why, size_t cap) {
    int h, w, L;
    char name[64];
    if (d->plus ? r->nsources > TRAIN_MAX_SOURCES : r->nsources != 1) {
        snprintf(why, cap, "%d source images (train_mode %s takes %s)", r->nsources,
                 d->plus ? "qwen_image_edit_plus" : "qwen_image_edit", d->plus ? "at most 8" : "exactly 1");
        return QIE_EFORMAT;
    }
    const RecTensor *m = rec_tensor(r, CACHE_T_TARGET_MEAN), *lv = rec_tensor(r, CACHE_T_TARGET_LOGVAR);
    if (!m || !lv) {
        snprintf(why, cap, "no %s", !m ? CACHE_T_TARGET_MEAN : CACHE_T_TARGET_LOGVAR);
        return QIE_EFORMAT;
    }
    if (latent_shape_(m, &h, &w) || !same_shape_(m, lv)) {
        snprintf(why, cap, "target latent is not [16, 1, h, w] with even h, w (or logvar differs)");
        return QIE_EFORMAT;
    }
    if (r->bucket[0] && (r->bucket[0] != 8 * h || r->bucket[1] != 8 * w)) {
        snprintf(why, cap, "target latent %dx%d does not match bucket %dx%d / 8", h, w, r->bucket[0], r->bucket[1]);
        return QIE_EFORMAT;
    }
    for (int k = 0; k < r->nsources; k++) {
        cache_name_k(name, sizeof name, CACHE_T_SOURCE_MEAN, k);
        const RecTensor *sm = rec_tensor(r, name);
        cache_name_k(name, sizeof name, CACHE_T_SOURCE_LOGVAR, k);
        const RecTensor *sl = rec_tensor(r, name);
        if (!sm || !sl || latent_shape_(sm, &h, &w) || !same_shape_(sm, sl)) {
            snprintf(why, cap, "source %d latent missing or not [16, 1, h, w] with even h, w", k);
            return QIE_EFORMAT;
        }
    }
    if (text_shape_(rec_tensor(r, CACHE_T_PROMPT_EMBEDS), d->joint_dim, &L)) {
        snprintf(why, cap, "%s missing or not [L, %d]", CACHE_T_PROMPT_EMBEDS, d->joint_dim);
        return QIE_EFORMAT;
    }
    if (d->need_empty && text_shape_(rec_tensor(r, CACHE_T_PROMPT_EMBEDS_EMPTY), d->joint_dim, &L)) {
        snprintf(why, cap, "%s missing or not [L, %d] (caption dropout needs it)", CACHE_T_PROMPT_EMBEDS_EMPTY,
                 d->joint_dim);
        return QIE_EFORMAT;
    }
    return 0;
}

static int push_(char *err, Dataset *d, const Record *r, uint64_t seq, const void *buf, size_t len) {
    if (d->n == d->cap) {
        uint32_t cap = d->cap ? 2 * d->cap : 256;
        DsEntry *e = realloc(d->e, sizeof *e * cap);
        if (!e) goto oom;
        d->e = e;
        d->cap = cap;
    }
    DsEntry *e = &d->e[d->n];
    memset(e, 0, sizeof *e);
    e->id = strdup(r->id ? r->id : "");
    e->index = r->index;
    e->seq = seq;
    e->h = r->bucket[0];
    e->w = r->bucket[1];
    e->nsrc = r->nsources;
    if (!e->id) goto oom;
    if (buf) {
        e->buf = malloc(len);
        if (!e->buf) {
            free(e->id);
            goto oom;
        }
        memcpy(e->buf, buf, len);
        e->len = len;
    }
    if (!e->h) { /* not bucketed: the latent gives it */
        int h = 0, w = 0;
        latent_shape_(rec_tensor(r, CACHE_T_TARGET_MEAN), &h, &w);
        e->h = 8 * h;
        e->w = 8 * w;
    }
    d->n++;
    return 0;
oom:
    qie_seterr(err, "dataset: out of memory");
    return QIE_ENOMEM;
}

typedef struct {
    uint64_t bad, no_empty;
    char first[3][200];
} Skips;

static void skip_(Skips *s, const char *id, const char *why) {
    if (strstr(why, CACHE_T_PROMPT_EMBEDS_EMPTY)) s->no_empty++;
    if (s->bad < 3) snprintf(s->first[s->bad], sizeof s->first[0], "%.64s: %s", id, why);
    log_debug("record %s left out: %s", id, why);
    s->bad++;
}

static int open_cache_(char *err, Dataset *d, const char *url, Skips *sk) {
    char *dir = strdup(url + strlen("lmdb://")), *save = NULL;
    if (!dir) return QIE_ENOMEM;
    char *q = strchr(dir, '?');
    CacheOptions o;
    cache_options_init(&o);
    o.readonly = 1;
    CacheFilter f;
    cache_filter_init(&f);
    int rc = 0;
    if (q) {
        *q++ = 0;
        for (char *p = strtok_r(q, "&", &save); p; p = strtok_r(NULL, "&", &save)) {
            if (!strncmp(p, "expect=", 7) && o.nexpect < CACHE_MAX_EXPECT) o.expect[o.nexpect++] = p + 7;
            else if (!strncmp(p, "bucket=", 7) && sscanf(p + 7, "%dx%d", &f.bucket[0], &f.bucket[1]) == 2) continue;
            else if (!strncmp(p, "sources=", 8)) f.nsources = atoi(p + 8);
            else if (!strcmp(p, "complete=1")) continue;
            else {
                qie_seterr(err, "--in %s: unknown query part '%s'\nhint: the trainer takes expect=K=V, bucket=HxW, sources=N",
                           url, p);
                free(dir);
                return QIE_EINVAL;
            }
        }
    }
    CacheList l = {0};
    Record r;
    rec_init(&r);
    if ((rc = cache_open(err, dir, &o, &d->cache))) goto done;
    if ((rc = cache_list(err, d->cache, &f, &l))) goto done;
    for (size_t i = 0; i < l.n; i++) {
        const CacheItem *it = &l.items[i];
        if (!it->complete) {
            skip_(sk, it->id, "incomplete for training (a latent or prompt embedding is missing)");
            continue;
        }
        if (i % 256 == 0) {
            cache_read_end(d->cache);
            if ((rc = cache_read_begin(err, d->cache))) goto done;
        }
        char why[200];
        int r2 = cache_get(why, d->cache, it->seq, &r, 0);
        if (!r2) r2 = validate_(d, &r, why, sizeof why);
        if (r2) skip_(sk, it->id, why);
        else if ((rc = push_(err, d, &r, it->seq, NULL, 0))) goto done;
        rec_free(&r);
    }
done:
    if (d->cache) cache_read_end(d->cache);
    rec_free(&r);
    cache_list_free(&l);
    free(dir);
    return rc;
}

static int open_stream_(char *err, Dataset *d, const char *url, Skips *sk) {
    Endpoint *ep = NULL;
    int rc = ep_open(err, url, EP_READ, &ep);
    if (rc) return rc;
    Record r;
    rec_init(&r);
    for (;;) {
        const void *buf;
        size_t len;
        if ((rc = ep_read(err, ep, &buf, &len))) {
            if (rc == QIE_EEOF) rc = 0;
            break;
        }
        char why[200];
        if (rec_decode(why, &r, buf, len)) {
            skip_(sk, "?", why);
            continue;
        }
        if (validate_(d, &r, why, sizeof why)) skip_(sk, r.id ? r.id : "?", why);
        else if ((rc = push_(err, d, &r, 0, buf, len))) break;
        rec_free(&r);
    }
    rec_free(&r);
    ep_close(&ep);
    return rc;
}

static int open_synthetic_(char *err, Dataset *d, const char *url) {
    int H = 0, W = 0, n = 64, S = 1, L = 256;
    const char *q = strchr(url, '?');
    if (sscanf(url + strlen("synthetic://"), "%dx%d", &H, &W) != 2 || H < 16 || W < 16 || H % 16 || W % 16) {
        qie_seterr(err, "synthetic://HxW: H and W must be multiples of 16 (pixels), e.g. synthetic://1328x1328");
        return QIE_EINVAL;
    }
    for (const char *p = q; p && *p; p = strchr(p + 1, '&')) {
        const char *k = p + 1;
        if (!strncmp(k, "count=", 6)) n = atoi(k + 6);
        else if (!strncmp(k, "sources=", 8)) S = atoi(k + 8);
        else if (!strncmp(k, "txt=", 4)) L = atoi(k + 4);
    }
    if (n < 1 || S < 0 || S > TRAIN_MAX_SOURCES || L < 1 || (!d->plus && S != 1)) {
        qie_seterr(err, "synthetic: count >= 1, txt >= 1, sources 0..8 (exactly 1 for qwen_image_edit)");
        return QIE_EINVAL;
    }
    d->synth = 1;
    d->synth_L = L;
    d->e = calloc((size_t)n, sizeof *d->e);
    if (!d->e) return QIE_ENOMEM;
    for (int i = 0; i < n; i++) {
        char id[32];
        snprintf(id, sizeof id, "synthetic-%06d", i);
        d->e[i] = (DsEntry){strdup(id), i, 0, NULL, 0, H / 8, W / 8, S};
        if (!d->e[i].id) return QIE_ENOMEM;
        d->n++;
    }
    return 0;
}

static float *synth_fill_(size_t n, uint64_t key, float scale, float bias) {
    float *o = malloc(sizeof *o * (n ? n : 1));
    if (!o) return NULL;
    for (size_t i = 0; i < n; i++) {
        uint64_t z = key * 0x9E3779B97F4A7C15ull + i;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        o[i] = bias + scale * (2.0f * (float)(z >> 40) * (1.0f / 16777216.0f) - 1.0f);
    }
    return o;
}

static int synth_load_(char *err, const Dataset *d, uint32_t i, Sample *s) {
    const DsEntry *e = &d->e[i];
    snprintf(s->id, sizeof s->id, "%s", e->id);
    s->h = e->h;
    s->w = e->w;
    const size_t nl = (size_t)TRAIN_LATENT_CH * e->h * e->w, nt = (size_t)d->synth_L * d->joint_dim;
    s->mean = synth_fill_(nl, 8ull * i, 1.0f, 0.0f);
    s->logvar = synth_fill_(nl, 8ull * i + 1, 0.5f, -6.0f);
    s->nsrc = e->nsrc;
    for (int k = 0; k < e->nsrc; k++) {
        s->sh[k] = e->h;
        s->sw[k] = e->w;
        s->smean[k] = synth_fill_(nl, 8ull * i + 2 + k, 1.0f, 0.0f);
        s->slogvar[k] = synth_fill_(nl, 8ull * i + 2 + k, 0.5f, -6.0f);
        if (!s->smean[k] || !s->slogvar[k]) goto oom;
    }
    s->L = s->L_empty = d->synth_L;
    s->txt = synth_fill_(nt, 1000003ull * (i + 1), 1.0f, 0.0f);
    s->txt_empty = synth_fill_(nt, 1000033ull * (i + 1), 1.0f, 0.0f);
    if (!s->mean || !s->logvar || !s->txt || !s->txt_empty) goto oom;
    return 0;
oom:
    qie_seterr(err, "synthetic record %u: out of memory", i);
    return QIE_ENOMEM;
}

static int entry_cmp_(const void *a, const void *b) {
    const DsEntry *x = a, *y = b;
    uint64_t ix = (uint64_t)x->index, iy = (uint64_t)y->index; /* -1 (unknown) sorts last */
    if (ix != iy) return ix < iy ? -1 : 1;
    return strcmp(x->id, y->id);
}

int ds_open(char *err, const char *url, int joint_dim, int plus, int need_empty, Dataset **out) {
    Dataset *d = calloc(1, sizeof *d);
    if (!d) return QIE_ENOMEM;
    d->joint_dim = joint_dim;
    d->plus = plus;
    d->need_empty = need_empty;
    Skips sk = {0};
    int rc = !strncmp(url, "lmdb://", 7) ? open_cache_(err, d, url, &sk)
             : !strncmp(url, "synthetic://", 12) ? open_synthetic_(err, d, url)
                                                  : open_stream_(err, d, url, &sk);
    if (rc) {
        qie_preferr(err, "--in %s", url);
        ds_close(&d);
        return rc;
    }
    if (sk.bad) {
        log_warn("%llu record(s) of %s left out; first: %s%s%s%s%s", (unsigned long long)sk.bad, url, sk.first[0],
                 sk.bad > 1 ? "; " : "", sk.bad > 1 ? sk.first[1] : "", sk.bad > 2 ? "; " : "", sk.bad > 2 ? sk.first[2] : "");
        if (sk.no_empty)
            log_warn("hint: %llu record(s) lack prompt_embeds_empty, which caption dropout needs: build the cache with "
                     "text_drop_ratio > 0, or train with --text_drop_ratio 0", (unsigned long long)sk.no_empty);
    }
    qsort(d->e, d->n, sizeof *d->e, entry_cmp_);
    for (uint32_t i = 1; i < d->n; i++)
        if (!strcmp(d->e[i].id, d->e[i - 1].id)) {
            qie_seterr(err, "--in %s: record id %s appears twice", url, d->e[i].id);
            ds_close(&d);
            return QIE_EFORMAT;
        }
    /* bucket keys: distinct (h, w, nsources), numbered in order of first appearance */
    d->items = calloc(d->n ? d->n : 1, sizeof *d->items);
    if (!d->items) {
        ds_close(&d);
        return QIE_ENOMEM;
    }
    uint32_t nkeys = 0, *rep = malloc(sizeof *rep * (d->n ? d->n : 1)); /* first item of each key */
    if (!rep) {
        ds_close(&d);
        return QIE_ENOMEM;
    }
    for (uint32_t i = 0; i < d->n; i++) {
        uint32_t k = 0;
        for (; k < nkeys; k++) {
            const DsEntry *a = &d->e[rep[k]], *b = &d->e[i];
            if (a->h == b->h && a->w == b->w && a->nsrc == b->nsrc) break;
        }
        if (k == nkeys) rep[nkeys++] = i;
        d->items[i].key = k;
    }
    free(rep);
    log_info0("data: %u usable records in %u bucket(s) from %s", d->n, nkeys, url);
    *out = d;
    return 0;
}

void ds_close(Dataset **pd) {
    Dataset *d = pd ? *pd : NULL;
    if (!d) return;
    for (uint32_t i = 0; i < d->n; i++) {
        free(d->e[i].id);
        free(d->e[i].buf);
    }
    free(d->e);
    free(d->items);
    cache_close(&d->cache);
    free(d);
    *pd = NULL;
}

uint32_t ds_count(const Dataset *d) { return d->n; }
const SmpItem *ds_items(const Dataset *d) { return d->items; }
const char *ds_id(const Dataset *d, uint32_t i) { return d->e[i].id; }

uint64_t ds_fingerprint(const Dataset *d) {
    uint64_t h = 1469598103934665603ull;
    for (uint32_t i = 0; i < d->n; i++)
        for (const char *p = d->e[i].id;; p++) {
            h = (h ^ (uint8_t)*p) * 1099511628211ull;
            if (!*p) break;
        }
    return h;
}

static float *to_f32_(const RecTensor *t) {
    size_t n = (size_t)rec_numel(t->ndim, t->shape);
    float *o = malloc(sizeof *o * (n ? n : 1));
    if (!o) return NULL;
    const uint8_t *p = t->data;
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == QIE_DT_F32) {
            memcpy(&o[i], p + 4 * i, 4);
        } else {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            o[i] = t->dtype == QIE_DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
    }
    return o;
}

static int fill_(char *err, const Dataset *d, const Record *r, Sample *s) {
    char why[200], name[64];
    if (validate_(d, r, why, sizeof why)) {
        qie_seterr(err, "record %s: %s", r->id, why);
        return QIE_EFORMAT;
    }
    snprintf(s->id, sizeof s->id, "%s", r->id);
    const RecTensor *m = rec_tensor(r, CACHE_T_TARGET_MEAN);
    latent_shape_(m, &s->h, &s->w);
    s->mean = to_f32_(m);
    s->logvar = to_f32_(rec_tensor(r, CACHE_T_TARGET_LOGVAR));
    s->nsrc = r->nsources;
    for (int k = 0; k < s->nsrc; k++) {
        cache_name_k(name, sizeof name, CACHE_T_SOURCE_MEAN, k);
        const RecTensor *sm = rec_tensor(r, name);
        latent_shape_(sm, &s->sh[k], &s->sw[k]);
        s->smean[k] = to_f32_(sm);
        cache_name_k(name, sizeof name, CACHE_T_SOURCE_LOGVAR, k);
        s->slogvar[k] = to_f32_(rec_tensor(r, name));
        if (!s->smean[k] || !s->slogvar[k]) goto oom;
    }
    const RecTensor *t = rec_tensor(r, CACHE_T_PROMPT_EMBEDS), *te = rec_tensor(r, CACHE_T_PROMPT_EMBEDS_EMPTY);
    s->L = (int)t->shape[0];
    s->txt = to_f32_(t);
    if (te && te->ndim == 2 && te->shape[1] == d->joint_dim) {
        s->L_empty = (int)te->shape[0];
        s->txt_empty = to_f32_(te);
        if (!s->txt_empty) goto oom;
    }
    if (!s->mean || !s->logvar || !s->txt) goto oom;
    return 0;
oom:
    qie_seterr(err, "record %s: out of memory", r->id);
    return QIE_ENOMEM;
}

int ds_load(char *err, Dataset *d, uint32_t i, Sample *s) {
    sample_free(s);
    Record r;
    rec_init(&r);
    int rc;
    if (d->synth) {
        if ((rc = synth_load_(err, d, i, s))) sample_free(s);
        return rc;
    }
    if (d->cache) {
        if ((rc = cache_read_begin(err, d->cache))) return rc;
        if (!(rc = cache_get(err, d->cache, d->e[i].seq, &r, 0))) rc = fill_(err, d, &r, s);
        cache_read_end(d->cache);
    } else {
        if (!(rc = rec_decode(err, &r, d->e[i].buf, d->e[i].len))) rc = fill_(err, d, &r, s);
    }
    rec_free(&r);
    if (rc) sample_free(s);
    return rc;
}
