/* decode_stage.c: building one sample record per metadata entry, and the worker threads.
 * The pixel arithmetic lives in image.c (decode) and resample.c (filters); the size arithmetic
 * in bucket.c. What is here is the order of operations of the reference and the bookkeeping. */
#include "decode_stage.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bucket.h"
#include "dtype.h"
#include "err.h"
#include "image.h"
#include "log.h"
#include "resample.h"
#include "rng.h"
#include "safetensors.h"

/* names the resize filters and rounding of this decoder; change it when the pixels change */
#define DEC_RESIZE_ID "target:torch-bilinear-aa-f32,crop-half-even;source:pillow-lanczos-u8;v1"

/* ---------------------------------------------------------------------------------------------
 * SHA-256 (FIPS 180-4), only for ids: a few hundred bytes per entry. */

typedef struct {
    uint32_t h[8];
    uint64_t len;
    uint8_t buf[64];
    size_t nbuf;
} Sha256;

static const uint32_t sha_k_[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror_(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block_(Sha256 *s, const uint8_t *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror_(w[i - 15], 7) ^ ror_(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ror_(w[i - 2], 17) ^ ror_(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5],
             g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ror_(e, 6) ^ ror_(e, 11) ^ ror_(e, 25)) + ((e & f) ^ (~e & g)) + sha_k_[i] + w[i];
        uint32_t t2 = (ror_(a, 2) ^ ror_(a, 13) ^ ror_(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha_init_(Sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->len = 0;
    s->nbuf = 0;
}

static void sha_update_(Sha256 *s, const void *data, size_t n) {
    const uint8_t *p = data;
    s->len += n;
    while (n) {
        size_t take = 64 - s->nbuf < n ? 64 - s->nbuf : n;
        memcpy(s->buf + s->nbuf, p, take);
        s->nbuf += take;
        p += take;
        n -= take;
        if (s->nbuf == 64) { sha_block_(s, s->buf); s->nbuf = 0; }
    }
}

static void sha_final_hex_(Sha256 *s, char out[65]) {
    uint64_t bits = s->len * 8;
    uint8_t pad = 0x80, zero = 0, lenb[8];
    sha_update_(s, &pad, 1);
    while (s->nbuf != 56) sha_update_(s, &zero, 1);
    for (int i = 0; i < 8; i++) lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    sha_update_(s, lenb, 8);
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < 8; i++)
        for (int j = 0; j < 4; j++) {
            uint8_t byte = (uint8_t)(s->h[i] >> (24 - 8 * j));
            out[8 * i + 2 * j] = hex[byte >> 4];
            out[8 * i + 2 * j + 1] = hex[byte & 15];
        }
    out[64] = 0;
}

void dec_sha256_hex(const void *data, size_t len, char out[65]) {
    Sha256 s;
    sha_init_(&s);
    sha_update_(&s, data, len);
    sha_final_hex_(&s, out);
}

/* a field as "<name>:<byte length>:<bytes>\n", so no two field lists hash the same bytes */
static void sha_field_(Sha256 *s, const char *name, const char *v) {
    char pre[96];
    int n = snprintf(pre, sizeof pre, "%s:%zu:", name, strlen(v));
    sha_update_(s, pre, (size_t)n);
    sha_update_(s, v, strlen(v));
    sha_update_(s, "\n", 1);
}

void dec_sample_id(const DecodeOpts *o, const MetaEntry *e, double d, char out[65]) {
    Sha256 s;
    char v[64];
    sha_init_(&s);
    snprintf(v, sizeof v, "%d/%d", DEC_ID_VERSION, QIE_RECORD_VERSION);
    sha_field_(&s, "qie-decode", v);
    sha_field_(&s, "train_mode", o->train_mode == DEC_EDIT ? "qwen_image_edit" : "qwen_image_edit_plus");
    snprintf(v, sizeof v, "%d", o->sample_size);
    sha_field_(&s, "image_sample_size", v);
    sha_field_(&s, "enable_bucket", o->enable_bucket ? "1" : "0");
    if ((o->vae_area && o->vae_area != BUCKET_VAE_AREA) || (o->cond_area && o->cond_area != BUCKET_COND_AREA)) {
        /* only non-default areas enter the id, so ids made with the reference's sizes are stable */
        snprintf(v, sizeof v, "%lld/%lld", (long long)o->vae_area, (long long)o->cond_area);
        sha_field_(&s, "source_areas", v);
    }
    snprintf(v, sizeof v, "%.17g", d);
    sha_field_(&s, "downscale", v);
    sha_field_(&s, "target", e->file_path);
    snprintf(v, sizeof v, "%d", e->nsources);
    sha_field_(&s, "nsources", v);
    for (int k = 0; k < e->nsources; k++) sha_field_(&s, "source", e->sources[k]);
    sha_field_(&s, "text", e->text);
    sha_final_hex_(&s, out);
}

/* ---------------------------------------------------------------------------------------------
 * hw adapt */

double dec_downscale(const DecodeOpts *o, int64_t index) {
    if (!o->random_hw_adapt) return 1.0;
    if (o->hw_draws) return index < o->n_hw_draws ? o->hw_draws[index] : 1.0;
    /* numpy random_sample: (a >> 5) * 2^26 + (b >> 6), over 2^53 */
    uint32_t a = rng_u32_at(o->seed, DEC_HW_SUBSEQ, 2 * (uint64_t)index) >> 5;
    uint32_t b = rng_u32_at(o->seed, DEC_HW_SUBSEQ, 2 * (uint64_t)index + 1) >> 6;
    double u = ((double)a * 67108864.0 + (double)b) / 9007199254740992.0;
    return bucket_hw_pick(o->sample_size, u);
}

int dec_load_hw_draws(char *err, const char *path, int sample_size, double **out, int64_t *n) {
    SafeTensors *st = NULL;
    int rc = st_open(err, path, &st);
    if (rc) return rc;
    const StTensor *t = st_find(st, "random_hw_adapt");
    if (!t || t->ndim != 1 || (t->dtype != QIE_DT_F64 && t->dtype != QIE_DT_F32)) {
        qie_seterr(err, "%s: needs a tensor \"random_hw_adapt\" of dtype F64 or F32 and shape [N]", path);
        st_close(&st);
        return QIE_EFORMAT;
    }
    double *v = malloc((t->numel ? t->numel : 1) * sizeof *v);
    if (!v) { st_close(&st); qie_seterr(err, "%s: out of memory", path); return QIE_ENOMEM; }
    for (uint64_t i = 0; i < t->numel; i++) {
        if (t->dtype == QIE_DT_F64) {
            memcpy(&v[i], (const char *)t->data + 8 * i, 8); /* data may be unaligned */
        } else {
            float f;
            memcpy(&f, (const char *)t->data + 4 * i, 4);
            v[i] = f;
        }
        if (!bucket_hw_valid(sample_size, v[i])) {
            qie_seterr(err, "%s: random_hw_adapt[%llu] = %g is not a down-scale choice for "
                       "--image_sample_size %d", path, (unsigned long long)i, v[i], sample_size);
            free(v);
            st_close(&st);
            return QIE_EINVAL;
        }
    }
    *n = (int64_t)t->numel;
    *out = v;
    st_close(&st);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * one sample */

static void set_path_(char *out, size_t cap, const char *p) {
    if (cap) snprintf(out, cap, "%s", p ? p : "");
}

/* The pixels of a sample are made after its record is laid out, straight into the tensor
 * payloads: for the worker, inside the encoded record buffer (rec_encode_reserve: no copy of
 * the 14 MB of payloads, no zeroed tensor buffers); for dec_build_sample, into owned tensors.
 * The bytes are the same either way. Decoded images are held from planning to filling, up to
 * HOLD_BYTES in all; sources past that are decoded again when their turn comes. */
#define HOLD_BYTES ((size_t)256 << 20)

/* the source sizes of the mode, with the reference's failures (a reject reason in err) */
static int source_sizes_(char *err, const DecodeOpts *o, const Image *im, int k, int64_t sz[4]) {
    if (o->train_mode == DEC_EDIT) {
        int w, h;
        bucket_v1_source_size(im->w, im->h, &w, &h);
        sz[0] = w, sz[1] = h, sz[2] = sz[3] = 0;
        return 0;
    }
    int64_t vw, vh, cw, ch;
    bucket_calc_dims(o->vae_area ? o->vae_area : BUCKET_VAE_AREA, im->w, im->h, &vw, &vh);
    bucket_calc_dims(o->cond_area ? o->cond_area : BUCKET_COND_AREA, im->w, im->h, &cw, &ch);
    if (vw <= 0 || vh <= 0 || cw <= 0 || ch <= 0) {
        /* the reference's PIL resize raises on a zero side: the sample never trains */
        qie_seterr(err, "source %d: aspect ratio %dx%d too extreme: resize sizes %lldx%lld / %lldx%lld",
                   k, im->w, im->h, (long long)vw, (long long)vh, (long long)cw, (long long)ch);
        return QIE_ELIMIT;
    }
    if (vw * vh > o->max_pixels || cw * ch > o->max_pixels) {
        qie_seterr(err, "source %d: resize size %lldx%lld above --max_pixels", k, (long long)vw,
                   (long long)vh);
        return QIE_ELIMIT;
    }
    sz[0] = vw, sz[1] = vh, sz[2] = cw, sz[3] = ch;
    return 0;
}

/* Pillow `im.resize((w, h), Image.LANCZOS)` into dst (h, w, 3) */
static int lanczos_fill_(char *err, const Image *im, int64_t w, int64_t h, void *dst) {
    if (w == im->w && h == im->h) { /* Pillow's resize returns a copy for the same size */
        memcpy(dst, im->px, (size_t)w * (size_t)h * 3);
        return 0;
    }
    return resample_lanczos_u8(err, im->px, im->w, im->h, dst, (int)w, (int)h);
}

static int add_u8_tensor_(char *err, Record *r, const char *name, int64_t w, int64_t h) {
    int64_t shape[3] = {h, w, 3};
    return rec_set_tensor(err, r, name, QIE_DT_U8, 3, shape, NULL, 0);
}

/* the source-count rule of the mode (a reject reason in err) */
static int check_sources_(char *err, const DecodeOpts *o, const MetaEntry *e) {
    if (o->train_mode == DEC_EDIT && e->nsources != 1) {
        qie_seterr(err, "qwen_image_edit takes exactly one source image, this entry has %d%s",
                   e->nsources, e->nsources > 1 ? " (use --train_mode qwen_image_edit_plus)" : "");
        return QIE_EINVAL;
    }
    if (o->train_mode == DEC_EDIT_PLUS && e->nsources < 1) {
        qie_seterr(err, "qwen_image_edit_plus needs at least one source image, this entry has none");
        return QIE_EINVAL;
    }
    return 0;
}

int dec_entry_id(char *err, const DecodeOpts *o, int64_t index, const char *json, size_t len, char id[65]) {
    MetaEntry e;
    int rc = meta_entry_parse(err, json, len, o->data_root, &e);
    if (!rc && !(rc = check_sources_(err, o, &e))) dec_sample_id(o, &e, dec_downscale(o, index), id);
    meta_entry_free(&e);
    return rc;
}

/* dec_build_sample, and with buf_out the encoded record (its pixels made in place) */
static int build_(char *err, const DecodeOpts *o, int64_t index, const char *json, size_t len,
                  Record *r, char *path_out, size_t path_cap, void **buf_out, size_t *len_out) {
    MetaEntry e;
    Image *ims = NULL; /* [0] the target, [1 + k] source k */
    int64_t (*ssz)[4] = NULL;
    void **pay = NULL;
    ImgLimits lim = {o->max_pixels};
    set_path_(path_out, path_cap, "");
    int rc = meta_entry_parse(err, json, len, o->data_root, &e);
    if (e.file_path) set_path_(path_out, path_cap, e.file_path);
    if (rc) goto out;
    if ((rc = check_sources_(err, o, &e))) goto out;

    double d = dec_downscale(o, index);
    char id[65];
    dec_sample_id(o, &e, d, id);
    r->index = index;
    if ((rc = rec_set_id(r, id)) || (rc = rec_set_text(r, e.text)) || (rc = rec_set_type(r, "image")) ||
        (rc = rec_set_target(r, e.file_path_raw)))
        goto nomem;
    for (int k = 0; k < e.nsources; k++)
        if ((rc = rec_add_source(r, e.sources_raw[k]))) goto nomem;
    ims = calloc((size_t)e.nsources + 1, sizeof *ims);
    ssz = calloc((size_t)e.nsources + 1, sizeof *ssz);
    pay = calloc((size_t)2 * e.nsources + 1, sizeof *pay);
    if (!ims || !ssz || !pay) goto nomem;

    /* target */
    if ((rc = img_decode_file(err, e.file_path, &lim, &ims[0]))) goto out;
    const Image *tim = &ims[0];
    TargetPlan tp;
    if ((rc = bucket_target_plan(err, tim->h, tim->w, o->sample_size, d, o->enable_bucket, &tp))) goto out;
    if (tp.resize_h * tp.resize_w > o->max_pixels) {
        qie_seterr(err, "target %dx%d: the cover resize to %lldx%lld is above --max_pixels %lld",
                   tim->w, tim->h, (long long)tp.resize_w, (long long)tp.resize_h, (long long)o->max_pixels);
        rc = QIE_ELIMIT;
        goto out;
    }
    r->bucket[0] = tp.bucket_h;
    r->bucket[1] = tp.bucket_w;
    /* bf16(((x/255 resized) - 0.5) / 0.5): torch bilinear-aa cover resize, centre crop */
    int64_t tshape[3] = {3, tp.bucket_h, tp.bucket_w};
    if ((rc = rec_set_tensor(err, r, "target_pixels", QIE_DT_BF16, 3, tshape, NULL, 0))) goto out;
    /* cfg.* attrs are the settings that shape the pixels: the cache records them once and
       refuses records made with other ones (docs/cache.md) */
    if ((rc = rec_set_attr_str(r, "cfg.train_mode", o->train_mode == DEC_EDIT ? "qwen_image_edit"
                                                                              : "qwen_image_edit_plus")) ||
        (rc = rec_set_attr_int(r, "cfg.image_sample_size", o->sample_size)) ||
        (rc = rec_set_attr_int(r, "cfg.enable_bucket", o->enable_bucket)) ||
        (rc = rec_set_attr_str(r, "cfg.resize", DEC_RESIZE_ID)) ||
        (rc = rec_set_attr_int(r, "cfg.vae_image_area", o->vae_area ? o->vae_area : BUCKET_VAE_AREA)) ||
        (rc = rec_set_attr_int(r, "cfg.condition_image_area", o->cond_area ? o->cond_area : BUCKET_COND_AREA)) ||
        (rc = rec_set_attr_float(r, "downscale", d)) ||
        (rc = rec_set_attr_int(r, "target_h", tim->h)) || (rc = rec_set_attr_int(r, "target_w", tim->w)) ||
        (rc = rec_set_attr_int(r, "resize_h", tp.resize_h)) ||
        (rc = rec_set_attr_int(r, "resize_w", tp.resize_w)) ||
        (rc = rec_set_attr_int(r, "crop_top", tp.crop_top)) ||
        (rc = rec_set_attr_int(r, "crop_left", tp.crop_left)))
        goto nomem;
    size_t held = (size_t)tim->w * (size_t)tim->h * 3;

    /* sources, each resized from its original decode: sizes and tensors now, pixels below */
    for (int k = 0; k < e.nsources; k++) {
        Image *im = &ims[1 + k];
        char name[64];
        set_path_(path_out, path_cap, e.sources[k]);
        if ((rc = img_decode_file(err, e.sources[k], &lim, im))) goto out;
        if ((rc = source_sizes_(err, o, im, k, ssz[1 + k]))) goto out;
        snprintf(name, sizeof name, "source_pixels.%d", k);
        if ((rc = add_u8_tensor_(err, r, name, ssz[1 + k][0], ssz[1 + k][1]))) goto out;
        if (o->train_mode != DEC_EDIT) {
            snprintf(name, sizeof name, "source_cond.%d", k);
            if ((rc = add_u8_tensor_(err, r, name, ssz[1 + k][2], ssz[1 + k][3]))) goto out;
        }
        size_t b = (size_t)im->w * (size_t)im->h * 3;
        if (held + b > HOLD_BYTES) {
            free(im->px); /* decoded again below (w, h stay) */
            im->px = NULL;
        } else {
            held += b;
        }
    }
    set_path_(path_out, path_cap, e.file_path);

    /* lay out the record, then make the pixels where they go */
    if (buf_out) {
        if ((rc = rec_encode_reserve(err, r, buf_out, len_out, pay))) {
            set_path_(path_out, path_cap, e.file_path_raw); /* an encode failure rejects the entry too */
            goto out;
        }
    } else {
        for (int i = 0; i < r->ntensors; i++) {
            RecTensor *t = &r->tensors[i];
            int64_t shape[QIE_REC_MAX_DIMS];
            memcpy(shape, t->shape, sizeof shape);
            char *nm = strdup(t->name);
            if (!nm) goto nomem;
            rc = rec_new_tensor(err, r, nm, t->dtype, t->ndim, shape, &pay[i]);
            free(nm);
            if (rc) goto out;
        }
    }
    if ((rc = resample_target_bf16(err, tim->px, tim->w, tim->h, (int)tp.resize_w, (int)tp.resize_h,
                                   (int)tp.crop_left, (int)tp.crop_top, (int)tp.bucket_w,
                                   (int)tp.bucket_h, pay[0])))
        goto out;
    img_free(&ims[0]);
    int ti = 1;
    for (int k = 0; k < e.nsources; k++) {
        Image *im = &ims[1 + k];
        if (!im->px) {
            set_path_(path_out, path_cap, e.sources[k]);
            if ((rc = img_decode_file(err, e.sources[k], &lim, im))) goto out;
            set_path_(path_out, path_cap, e.file_path);
        }
        if ((rc = lanczos_fill_(err, im, ssz[1 + k][0], ssz[1 + k][1], pay[ti++]))) goto out;
        if (o->train_mode != DEC_EDIT &&
            (rc = lanczos_fill_(err, im, ssz[1 + k][2], ssz[1 + k][3], pay[ti++])))
            goto out;
        img_free(im);
    }
    goto out;
nomem:
    qie_seterr(err, "record: out of memory");
    if (!rc) rc = QIE_ENOMEM;
out:
    if (rc && buf_out && *buf_out) {
        free(*buf_out);
        *buf_out = NULL;
        *len_out = 0;
    }
    if (ims)
        for (int k = 0; k <= e.nsources; k++) img_free(&ims[k]);
    free(ims);
    free(ssz);
    free(pay);
    meta_entry_free(&e);
    return rc;
}

int dec_build_sample(char *err, const DecodeOpts *o, int64_t index, const char *json, size_t len,
                     Record *r, char *path_out, size_t path_cap) {
    return build_(err, o, index, json, len, r, path_out, path_cap, NULL, NULL);
}

/* ---------------------------------------------------------------------------------------------
 * the loop */

typedef struct {
    const DecodeRun *run;
    const MetaFile *m;
    pthread_mutex_t in_mu;  /* the metadata cursor */
    MetaCursor cur;
    pthread_mutex_t out_mu; /* sink, rejects, stats, progress, the first fatal error */
    DecodeStats stats;
    atomic_int stop;        /* set on the first fatal error; workers stop taking entries */
    int rc;
    char err[QIE_ERR_LEN];
} DecShared;

static void fatal_(DecShared *sh, int rc, const char *err) {
    /* under out_mu */
    if (!sh->rc) {
        sh->rc = rc;
        snprintf(sh->err, sizeof sh->err, "%s", err);
    }
    sh->stop = 1;
}

static int write_reject_(FILE *f, int64_t index, const char *path, const char *reason) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return QIE_ENOMEM;
    int ok = cJSON_AddNumberToObject(o, "index", (double)index) && cJSON_AddStringToObject(o, "path", path) &&
             cJSON_AddStringToObject(o, "reason", reason);
    char *s = ok ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) return QIE_ENOMEM;
    int rc = fprintf(f, "%s\n", s) < 0 ? QIE_EIO : 0;
    cJSON_free(s);
    return rc;
}

static void *dec_worker_(void *arg) {
    DecShared *sh = arg;
    const DecodeRun *run = sh->run;
    char err[QIE_ERR_LEN], path[4096];
    for (;;) {
        const char *js;
        size_t len;
        int64_t idx;
        pthread_mutex_lock(&sh->in_mu);
        int rc = sh->stop ? QIE_EEOF : meta_next(err, sh->m, &sh->cur, &js, &len, &idx);
        pthread_mutex_unlock(&sh->in_mu);
        if (rc == QIE_EEOF) break;
        if (rc) {
            pthread_mutex_lock(&sh->out_mu);
            fatal_(sh, rc, err);
            pthread_mutex_unlock(&sh->out_mu);
            break;
        }
        if (idx % run->shard_n != run->shard_i) continue;
        if (run->skip) {
            /* an entry that does not parse falls through to dec_build_sample, which rejects it
               with the same reason and reports it */
            char id[65];
            if (!dec_entry_id(err, &run->opts, idx, js, len, id) && dec_ids_has(run->skip, id)) {
                pthread_mutex_lock(&sh->out_mu);
                sh->stats.skipped++;
                if (run->progress)
                    progress_update(run->progress,
                                    (uint64_t)(sh->stats.emitted + sh->stats.rejected + sh->stats.skipped));
                pthread_mutex_unlock(&sh->out_mu);
                continue;
            }
        }

        Record r;
        rec_init(&r);
        err[0] = 0;
        void *buf = NULL;
        size_t blen = 0;
        int brc = build_(err, &run->opts, idx, js, len, &r, path, sizeof path, &buf, &blen);
        rec_free(&r);

        pthread_mutex_lock(&sh->out_mu);
        if (!sh->stop) {
            if (!brc) {
                if ((rc = run->sink(err, run->sink_ctx, buf, blen))) fatal_(sh, rc, err);
                else sh->stats.emitted++;
            } else {
                sh->stats.rejected++;
                log_warn("reject entry %lld (%s): %s", (long long)idx, path, err);
                if (run->rejects && (rc = write_reject_(run->rejects, idx, path, err))) {
                    char e2[QIE_ERR_LEN];
                    snprintf(e2, sizeof e2, "writing the rejects file: %s", qie_strerror(rc));
                    fatal_(sh, rc, e2);
                }
            }
            if (run->progress)
                progress_update(run->progress, (uint64_t)(sh->stats.emitted + sh->stats.rejected + sh->stats.skipped));
        }
        pthread_mutex_unlock(&sh->out_mu);
        free(buf);
    }
    return NULL;
}

int dec_run(char *err, const DecodeRun *run, const MetaFile *m, DecodeStats *stats) {
    if (run->jobs < 1 || run->shard_n < 1 || run->shard_i < 0 || run->shard_i >= run->shard_n || !run->sink) {
        qie_seterr(err, "dec_run: bad settings (jobs %d, shard %lld/%lld)", run->jobs,
                   (long long)run->shard_i, (long long)run->shard_n);
        return QIE_EINVAL;
    }
    int64_t n = meta_count(m);
    if (run->opts.random_hw_adapt && run->opts.hw_draws && run->opts.n_hw_draws < n) {
        qie_seterr(err, "the hw-adapt draws file has %lld values for %lld metadata entries",
                   (long long)run->opts.n_hw_draws, (long long)n);
        return QIE_EINVAL;
    }
    DecShared *sh = calloc(1, sizeof *sh);
    if (!sh) { qie_seterr(err, "dec_run: out of memory"); return QIE_ENOMEM; }
    sh->run = run;
    sh->m = m;
    sh->cur = (MetaCursor)META_CURSOR_INIT;
    sh->stats.entries = n > run->shard_i ? (n - run->shard_i + run->shard_n - 1) / run->shard_n : 0;
    pthread_mutex_init(&sh->in_mu, NULL);
    pthread_mutex_init(&sh->out_mu, NULL);
    pthread_t *th = calloc((size_t)run->jobs, sizeof *th);
    int started = 0, rc = 0;
    if (!th) { rc = QIE_ENOMEM; qie_seterr(err, "dec_run: out of memory"); goto out; }
    for (; started < run->jobs; started++) {
        int prc = pthread_create(&th[started], NULL, dec_worker_, sh);
        if (prc) {
            qie_seterr(err, "dec_run: pthread_create: %s", strerror(prc));
            pthread_mutex_lock(&sh->out_mu);
            fatal_(sh, prc, err);
            pthread_mutex_unlock(&sh->out_mu);
            break;
        }
    }
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    rc = sh->rc;
    if (rc) qie_seterr(err, "%s", sh->err);
out:
    *stats = sh->stats;
    free(th);
    pthread_mutex_destroy(&sh->in_mu);
    pthread_mutex_destroy(&sh->out_mu);
    free(sh);
    return rc;
}

/* ---------------------------------------------------------------------------------------------
 * id sets (--skip_ids) */

struct DecIdSet {
    char **ids; /* sorted */
    size_t n;
};

static int cmp_str_(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int dec_ids_load(char *err, const char *path, DecIdSet **out) {
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        qie_seterr(err, "open %s: %s", path, strerror(e));
        return e;
    }
    DecIdSet *s = calloc(1, sizeof *s);
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t got;
    int rc = s ? 0 : QIE_ENOMEM;
    while (!rc && (got = getline(&line, &lcap, f)) >= 0) {
        char *b = line, *e = line + got;
        while (b < e && (*b == ' ' || *b == '\t')) b++;
        while (e > b && (e[-1] == '\n' || e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t')) e--;
        if (b == e) continue;
        if (s->n == cap) {
            size_t nc = cap ? 2 * cap : 1024;
            char **v = realloc(s->ids, nc * sizeof *v);
            if (!v) { rc = QIE_ENOMEM; break; }
            s->ids = v;
            cap = nc;
        }
        if (!(s->ids[s->n] = strndup(b, (size_t)(e - b)))) { rc = QIE_ENOMEM; break; }
        s->n++;
    }
    if (!rc && ferror(f)) {
        rc = QIE_EIO;
        qie_seterr(err, "read %s failed", path);
    } else if (rc) {
        qie_seterr(err, "%s: out of memory", path);
    }
    free(line);
    fclose(f);
    if (rc) {
        dec_ids_free(&s);
        return rc;
    }
    if (s->n) qsort(s->ids, s->n, sizeof *s->ids, cmp_str_); /* ids is NULL for an empty file */
    *out = s;
    return 0;
}

int dec_ids_has(const DecIdSet *s, const char *id) {
    return s && s->n && bsearch(&id, s->ids, s->n, sizeof *s->ids, cmp_str_) != NULL;
}

size_t dec_ids_count(const DecIdSet *s) { return s ? s->n : 0; }

void dec_ids_free(DecIdSet **s) {
    if (!s || !*s) return;
    for (size_t i = 0; i < (*s)->n; i++) free((*s)->ids[i]);
    free((*s)->ids);
    free(*s);
    *s = NULL;
}
