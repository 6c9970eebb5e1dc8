/* encode_vae.c: qie-encode-vae's loop (encode_vae.h has the contract). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_names.h"
#include "encode_vae.h"
#include "err.h"
#include "log.h"

int enc_image_pixels(char *err, const RecTensor *t, int factor, float **px, int *H, int *W) {
    int h, w;
    if ((t->dtype == QIE_DT_BF16 || t->dtype == QIE_DT_F32) && t->ndim == 3 && t->shape[0] == 3) {
        h = (int)(t->shape[1] > 1 << 20 ? -1 : t->shape[1]);
        w = (int)(t->shape[2] > 1 << 20 ? -1 : t->shape[2]);
    } else if (t->dtype == QIE_DT_U8 && t->ndim == 3 && t->shape[2] == 3) {
        h = (int)(t->shape[0] > 1 << 20 ? -1 : t->shape[0]);
        w = (int)(t->shape[1] > 1 << 20 ? -1 : t->shape[1]);
    } else {
        qie_seterr(err, "%s: %s with %d dims: expected bf16/f32 [3, H, W] or u8 [H, W, 3]", t->name,
                   dtype_name(t->dtype) ? dtype_name(t->dtype) : "?", t->ndim);
        return QIE_EFORMAT;
    }
    if (h <= 0 || w <= 0 || h % factor || w % factor) {
        qie_seterr(err, "%s: %dx%d (WxH): sides must be positive multiples of %d", t->name, w, h, factor);
        return QIE_EFORMAT;
    }
    const size_t hw = (size_t)h * (size_t)w, n = 3 * hw;
    float *p = malloc(n * sizeof(float));
    if (!p) {
        qie_seterr(err, "%s: out of memory for %dx%d", t->name, w, h);
        return QIE_ENOMEM;
    }
    if (t->dtype == QIE_DT_U8) {
        /* data_pipeline.md §1.3: the reference casts u8 to bf16, then /255 and -0.5 each round to
         * bf16, and ·2 is exact; HWC -> CHW */
        float lut[256];
        for (int u = 0; u < 256; u++) {
            float v = bf16_to_f32(f32_to_bf16((float)u / 255.0f));
            v = bf16_to_f32(f32_to_bf16(v - 0.5f));
            lut[u] = 2.0f * v;
        }
        const uint8_t *s = t->data;
        for (size_t i = 0; i < hw; i++)
            for (int c = 0; c < 3; c++) p[c * hw + i] = lut[s[3 * i + c]];
    } else if (t->dtype == QIE_DT_BF16) {
        const uint16_t *s = t->data;
        for (size_t i = 0; i < n; i++) p[i] = bf16_to_f32(s[i]);
    } else {
        memcpy(p, t->data, n * sizeof(float));
    }
    for (size_t i = 0; i < n; i++)
        if (!isfinite(p[i])) {
            qie_seterr(err, "%s: value %g at element %zu (NaN or Inf in the pixels)", t->name, p[i], i);
            free(p);
            return QIE_EFORMAT;
        }
    *px = p;
    *H = h;
    *W = w;
    return 0;
}

/* one image to encode */
typedef struct {
    int slot, k;  /* record in the window; k = -1 for the target, else the source index */
    int H, W;
    float *px;    /* [3, H, W] */
} Job;

typedef struct {
    Record r;
    void *bytes;  /* the record's own copy of its encoded bytes (tensors may borrow from it) */
    int ok;
} Slot;

static int job_cmp_(const void *a, const void *b) {
    const Job *x = a, *y = b;
    if (x->H != y->H) return x->H < y->H ? -1 : 1;
    if (x->W != y->W) return x->W < y->W ? -1 : 1;
    if (x->slot != y->slot) return x->slot < y->slot ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}

/* collects the VAE images of one record; on a bad record, sets err and returns QIE_EFORMAT */
static int record_jobs_(char *err, const Record *r, int slot, int factor, Job **jobs, int *njobs, int *cap) {
    char name[64];
    int first = *njobs, rc = 0;
    for (int k = -1;; k++) {
        if (k < 0) snprintf(name, sizeof name, "%s", CACHE_T_TARGET_PIXELS);
        else cache_name_k(name, sizeof name, CACHE_T_SOURCE_PIXELS, k);
        const RecTensor *t = rec_tensor(r, name);
        if (!t) {
            if (k < 0) {
                qie_seterr(err, "no %s tensor (was it decoded by qie-decode, or are the pixels already dropped?)",
                           CACHE_T_TARGET_PIXELS);
                rc = QIE_EFORMAT;
            } else if (k < r->nsources) {
                qie_seterr(err, "source %d of %d has no %s tensor", k, r->nsources, name);
                rc = QIE_EFORMAT;
            }
            break;
        }
        if (*njobs == *cap) {
            int nc = *cap ? *cap * 2 : 16;
            Job *nj = realloc(*jobs, (size_t)nc * sizeof(Job));
            if (!nj) { qie_seterr(err, "out of memory"); rc = QIE_ENOMEM; break; }
            *jobs = nj;
            *cap = nc;
        }
        Job *j = &(*jobs)[*njobs];
        j->slot = slot;
        j->k = k;
        j->px = NULL;
        if ((rc = enc_image_pixels(err, t, factor, &j->px, &j->H, &j->W))) break;
        (*njobs)++;
    }
    if (rc) /* the record is rejected: drop the images it already queued */
        while (*njobs > first) free((*jobs)[--*njobs].px);
    return rc;
}

static int put_posterior_(char *err, const EncOptions *o, Record *r, int k, int z, int h, int w, const float *mean,
                          const float *logvar) {
    char nm[64], nl[64];
    if (k < 0) {
        snprintf(nm, sizeof nm, "%s", CACHE_T_TARGET_MEAN);
        snprintf(nl, sizeof nl, "%s", CACHE_T_TARGET_LOGVAR);
    } else {
        cache_name_k(nm, sizeof nm, CACHE_T_SOURCE_MEAN, k);
        cache_name_k(nl, sizeof nl, CACHE_T_SOURCE_LOGVAR, k);
    }
    const int64_t shape[4] = {z, 1, h, w};
    const size_t n = (size_t)z * h * w;
    for (int i = 0; i < 2; i++) {
        void *data = NULL;
        const float *src = i ? logvar : mean;
        int rc = rec_new_tensor(err, r, i ? nl : nm, o->out_dtype, 4, shape, &data);
        if (rc) return rc;
        if (o->out_dtype == QIE_DT_F32) memcpy(data, src, n * sizeof(float));
        else
            for (size_t e = 0; e < n; e++) ((uint16_t *)data)[e] = f32_to_bf16(src[e]);
    }
    return 0;
}

/* encodes the window's jobs, grouped by size, in batches of at most mini_batch */
static int encode_jobs_(char *err, const EncOptions *o, VaeModel *m, Slot *slots, Job *jobs, int njobs) {
    const VaeConfig *cfg = vae_config(m);
    const int f = vae_config_factor(cfg), z = cfg->z_dim;
    qsort(jobs, (size_t)njobs, sizeof *jobs, job_cmp_);
    float *px = NULL, *mean = NULL, *logvar = NULL;
    int rc = 0;
    for (int j0 = 0; j0 < njobs && !rc;) {
        int n = 1;
        while (j0 + n < njobs && n < o->mini_batch && jobs[j0 + n].H == jobs[j0].H && jobs[j0 + n].W == jobs[j0].W) n++;
        const int H = jobs[j0].H, W = jobs[j0].W, h = H / f, w = W / f;
        const size_t per = (size_t)3 * H * W, lat = (size_t)z * h * w;
        float *np_ = realloc(px, (size_t)n * per * sizeof(float));
        if (np_) px = np_;
        float *nm = np_ ? realloc(mean, (size_t)n * lat * sizeof(float)) : NULL;
        if (nm) mean = nm;
        float *nl = nm ? realloc(logvar, (size_t)n * lat * sizeof(float)) : NULL;
        if (nl) logvar = nl;
        if (!nl) { qie_seterr(err, "out of memory for %d images of %dx%d", n, W, H); rc = QIE_ENOMEM; break; }
        for (int i = 0; i < n; i++) memcpy(px + i * per, jobs[j0 + i].px, per * sizeof(float));
        if ((rc = vae_encode(err, m, px, n, H, W, mean, logvar))) break;
        for (int i = 0; i < n && !rc; i++) {
            const Job *jb = &jobs[j0 + i];
            rc = put_posterior_(err, o, &slots[jb->slot].r, jb->k, z, h, w, mean + i * lat, logvar + i * lat);
        }
        log_debug("encoded %d images of %dx%d", n, W, H);
        j0 += n;
    }
    free(px);
    free(mean);
    free(logvar);
    return rc;
}

static void drop_pixels_(Record *r) {
    char name[64];
    rec_remove_tensor(r, CACHE_T_TARGET_PIXELS);
    for (int k = 0;; k++) {
        cache_name_k(name, sizeof name, CACHE_T_SOURCE_PIXELS, k);
        if (rec_remove_tensor(r, name)) break;
    }
}

int enc_run(char *err, const EncOptions *o, VaeModel *m, Endpoint *in, Endpoint *out, EncStats *st) {
    const int window = o->mini_batch > 0 ? o->mini_batch : 1;
    const int factor = vae_config_factor(vae_config(m));
    Slot *slots = calloc((size_t)window, sizeof *slots);
    Job *jobs = NULL;
    int njobs = 0, cap = 0, rc = 0, eof = 0;
    char why[QIE_ERR_LEN];
    if (!slots) { qie_seterr(err, "out of memory"); return QIE_ENOMEM; }
    for (int i = 0; i < window; i++) rec_init(&slots[i].r);
    while (!eof && !rc) {
        int n = 0;
        /* read a window */
        while (n < window) {
            const void *buf;
            size_t len;
            rc = ep_read(err, in, &buf, &len);
            if (rc == QIE_EEOF) { rc = 0; eof = 1; break; }
            if (rc) break;
            Slot *s = &slots[n];
            s->bytes = malloc(len ? len : 1);
            if (!s->bytes) { qie_seterr(err, "out of memory for a record of %zu bytes", len); rc = QIE_ENOMEM; break; }
            memcpy(s->bytes, buf, len);
            st->records_in++;
            n++;
            int drc = rec_decode(why, &s->r, s->bytes, len);
            s->ok = drc == 0;
            if (!s->ok) {
                log_warn("record #%llu of the stream rejected: %s", (unsigned long long)st->records_in, why);
                st->rejected++;
                continue;
            }
            if ((drc = record_jobs_(why, &s->r, n - 1, factor, &jobs, &njobs, &cap))) {
                if (drc == QIE_ENOMEM) { snprintf(err, QIE_ERR_LEN, "%s", why); rc = drc; break; }
                log_warn("record %s rejected: %s", s->r.id ? s->r.id : "(no id)", why);
                s->ok = 0;
                st->rejected++;
            }
        }
        if (!rc && njobs) rc = encode_jobs_(err, o, m, slots, jobs, njobs);
        st->images += rc ? 0 : (uint64_t)njobs;
        for (int i = 0; i < njobs; i++) free(jobs[i].px);
        njobs = 0;
        /* write the window in input order */
        for (int i = 0; i < n; i++) {
            Slot *s = &slots[i];
            if (!rc && s->ok) {
                if (!o->keep_pixels) drop_pixels_(&s->r);
                rc = rec_set_attr_str(&s->r, CACHE_CFG_PREFIX CACHE_CFG_VAE_HASH, vae_weights_hash(m));
                if (rc) qie_seterr(err, "out of memory");
                if (!rc && !(rc = ep_write_record(err, out, &s->r))) st->records_out++;
            }
            rec_free(&s->r);
            free(s->bytes);
            s->bytes = NULL;
        }
        if (o->progress) progress_update(o->progress, st->records_in);
    }
    free(jobs);
    free(slots);
    return rc;
}
