/* vae.c: the VAE encoder's parameter table, its ONE parameter buffer, and loading.
 *
 * walk_() visits every tensor the 2-D encoder uses in forward order (conv_in, down_blocks 0..,
 * mid_block, norm_out, conv_out, quant_conv) and is the single source of truth for names,
 * shapes and layout: pass 0 sizes the buffer (each tensor's range starts at a multiple of 64
 * elements, so every pointer is 128-byte aligned for cuBLASLt), pass 1 fills the table and
 * points the graph's fields into the buffer (llm.c fill_in_parameter_sizes +
 * malloc_and_point_parameters, with the count derived from the config instead of a constant).
 * Weights are converted to fp32 on the host, sliced and permuted (spec/model.md §2.4), then
 * uploaded once as ctx->act. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "err.h"
#include "rng.h"
#include "safetensors.h"
#include "vae_internal.h"

typedef struct {
    VaeModel *m;
    int pass;    /* 0: size, 1: fill the table and point */
    size_t off;  /* elements */
    int n;       /* tensors */
} Walk;

static void *take_(Walk *w, VaeParamKind kind, int cout, int cin, int k, int cin_pad, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));

static void *take_(Walk *w, VaeParamKind kind, int cout, int cin, int k, int cin_pad, const char *fmt, ...) {
    const size_t numel = kind == VAE_P_VEC ? (size_t)cout : (size_t)cout * k * k * cin_pad;
    void *p = NULL;
    if (w->pass == 1) {
        VaeParamInfo *pi = &w->m->info[w->n];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(pi->name, sizeof pi->name, fmt, ap);
        va_end(ap);
        pi->kind = kind;
        pi->cout = cout;
        pi->cin = cin;
        pi->k = k;
        pi->cin_pad = cin_pad;
        pi->offset = w->off;
        pi->numel = numel;
        p = (char *)w->m->params + w->off * op_act_size(w->m->ctx);
    }
    w->off += (numel + 63) & ~(size_t)63;
    w->n++;
    return p;
}

static void res_(Walk *w, VaeRes *r, int cin, int cout, const char *prefix) {
    r->cin = cin;
    r->cout = cout;
    r->norm1 = take_(w, VAE_P_VEC, cin, 0, 0, 0, "%s.norm1.gamma", prefix);
    r->conv1_w = take_(w, VAE_P_CONV3D, cout, cin, 3, cin, "%s.conv1.weight", prefix);
    r->conv1_b = take_(w, VAE_P_VEC, cout, 0, 0, 0, "%s.conv1.bias", prefix);
    r->norm2 = take_(w, VAE_P_VEC, cout, 0, 0, 0, "%s.norm2.gamma", prefix);
    r->conv2_w = take_(w, VAE_P_CONV3D, cout, cout, 3, cout, "%s.conv2.weight", prefix);
    r->conv2_b = take_(w, VAE_P_VEC, cout, 0, 0, 0, "%s.conv2.bias", prefix);
    r->sc_w = r->sc_b = NULL;
    if (cin != cout) {
        r->sc_w = take_(w, VAE_P_CONV3D, cout, cin, 1, cin, "%s.conv_shortcut.weight", prefix);
        r->sc_b = take_(w, VAE_P_VEC, cout, 0, 0, 0, "%s.conv_shortcut.bias", prefix);
    }
}

/* QwenImageEncoder3d.__init__ + AutoencoderKLQwenImage.quant_conv (spec §2.3, §2.6) */
static void walk_(Walk *w) {
    VaeModel *m = w->m;
    const VaeConfig *c = &m->cfg;
    const int L = c->ndim_mult;
    int dims[VAE_MAX_LEVELS + 1];
    dims[0] = c->base_dim;
    for (int l = 0; l < L; l++) dims[l + 1] = c->base_dim * c->dim_mult[l];
    char pre[96];
    m->conv_in_w = take_(w, VAE_P_CONV3D, dims[0], c->input_channels, 3, VAE_CIN_PAD, "encoder.conv_in.weight");
    m->conv_in_b = take_(w, VAE_P_VEC, dims[0], 0, 0, 0, "encoder.conv_in.bias");
    int i = 0;
    m->nlayers = 0;
    for (int l = 0; l < L; l++) {
        int in = dims[l];
        const int out = dims[l + 1];
        for (int r = 0; r < c->num_res_blocks; r++, i++) {
            VaeLayer *ly = &m->layers[m->nlayers++];
            ly->kind = VAE_L_RES;
            snprintf(pre, sizeof pre, "encoder.down_blocks.%d", i);
            res_(w, &ly->res, in, out, pre);
            in = out;
        }
        if (l != L - 1) { /* downsample2d or downsample3d: the same 2-D op for stills */
            VaeLayer *ly = &m->layers[m->nlayers++];
            ly->kind = VAE_L_DOWN;
            ly->c = out;
            ly->down_w = take_(w, VAE_P_CONV2D, out, out, 3, out, "encoder.down_blocks.%d.resample.1.weight", i);
            ly->down_b = take_(w, VAE_P_VEC, out, 0, 0, 0, "encoder.down_blocks.%d.resample.1.bias", i);
            i++;
        }
    }
    const int C = dims[L], z2 = 2 * c->z_dim;
    res_(w, &m->mid0, C, C, "encoder.mid_block.resnets.0");
    m->attn_norm = take_(w, VAE_P_VEC, C, 0, 0, 0, "encoder.mid_block.attentions.0.norm.gamma");
    m->qkv_w = take_(w, VAE_P_CONV2D, 3 * C, C, 1, C, "encoder.mid_block.attentions.0.to_qkv.weight");
    m->qkv_b = take_(w, VAE_P_VEC, 3 * C, 0, 0, 0, "encoder.mid_block.attentions.0.to_qkv.bias");
    m->proj_w = take_(w, VAE_P_CONV2D, C, C, 1, C, "encoder.mid_block.attentions.0.proj.weight");
    m->proj_b = take_(w, VAE_P_VEC, C, 0, 0, 0, "encoder.mid_block.attentions.0.proj.bias");
    res_(w, &m->mid1, C, C, "encoder.mid_block.resnets.1");
    m->norm_out = take_(w, VAE_P_VEC, C, 0, 0, 0, "encoder.norm_out.gamma");
    m->conv_out_w = take_(w, VAE_P_CONV3D, z2, C, 3, C, "encoder.conv_out.weight");
    m->conv_out_b = take_(w, VAE_P_VEC, z2, 0, 0, 0, "encoder.conv_out.bias");
    m->quant_w = take_(w, VAE_P_CONV3D, z2, z2, 1, z2, "quant_conv.weight");
    m->quant_b = take_(w, VAE_P_VEC, z2, 0, 0, 0, "quant_conv.bias");
}

/* Sizes the table and the buffer, allocates both, points the graph. */
static int build_(char *err, OpCtx *ctx, const VaeConfig *cfg, VaeModel **out) {
    VaeModel *m = calloc(1, sizeof *m);
    if (!m) { qie_seterr(err, "vae: out of memory"); return QIE_ENOMEM; }
    m->cfg = *cfg;
    m->ctx = ctx;
    Walk w = {m, 0, 0, 0};
    walk_(&w);
    m->ntensors = w.n;
    m->params_numel = w.off;
    m->info = calloc((size_t)w.n, sizeof *m->info);
    if (!m->info) { free(m); qie_seterr(err, "vae: out of memory"); return QIE_ENOMEM; }
    m->params = op_alloc(ctx, m->params_numel * op_act_size(ctx));
    Walk w1 = {m, 1, 0, 0};
    walk_(&w1);
    for (int i = 0; i < m->ntensors; i++) {
        const VaeParamInfo *pi = &m->info[i];
        m->nparams_used += pi->kind == VAE_P_VEC ? (size_t)pi->cout : (size_t)pi->cout * pi->k * pi->k * pi->cin;
    }
    *out = m;
    return 0;
}

/* element i of a stored tensor as f32 (the map may be unaligned for the dtype) */
static float ld_(const StTensor *t, size_t i) {
    const unsigned char *p = (const unsigned char *)t->data;
    uint16_t h;
    float f;
    switch (t->dtype) {
    case QIE_DT_BF16: memcpy(&h, p + 2 * i, 2); return bf16_to_f32(h);
    case QIE_DT_F16: memcpy(&h, p + 2 * i, 2); return f16_to_f32(h);
    default: memcpy(&f, p + 4 * i, 4); return f;
    }
}

static void shape_str_(const StTensor *t, char *s, size_t cap) {
    size_t n = 0;
    n += (size_t)snprintf(s + n, cap - n, "[");
    for (int d = 0; d < t->ndim && n < cap; d++)
        n += (size_t)snprintf(s + n, cap - n, "%s%llu", d ? "," : "", (unsigned long long)t->shape[d]);
    if (n < cap) snprintf(s + n, cap - n, "]");
}

/* Checks one stored tensor against its table entry and writes its compute form into dst. */
static int convert_(char *err, const VaeParamInfo *pi, const StTensor *t, float *dst) {
    if (t->dtype != QIE_DT_BF16 && t->dtype != QIE_DT_F16 && t->dtype != QIE_DT_F32) {
        qie_seterr(err, "vae tensor %s: dtype %s (bf16, f16 or f32 expected)", pi->name, st_dtype_name(t->dtype));
        return QIE_EUNSUPPORTED;
    }
    int ok;
    const uint64_t *s = t->shape;
    const uint64_t k = (uint64_t)pi->k;
    if (pi->kind == VAE_P_VEC)
        ok = t->ndim >= 1 && s[0] == (uint64_t)pi->cout && t->numel == (uint64_t)pi->cout;
    else if (pi->kind == VAE_P_CONV3D)
        ok = t->ndim == 5 && s[0] == (uint64_t)pi->cout && s[1] == (uint64_t)pi->cin && s[2] == k && s[3] == k && s[4] == k;
    else
        ok = t->ndim == 4 && s[0] == (uint64_t)pi->cout && s[1] == (uint64_t)pi->cin && s[2] == k && s[3] == k;
    if (!ok) {
        char got[96];
        shape_str_(t, got, sizeof got);
        if (pi->kind == VAE_P_VEC)
            qie_seterr(err, "vae tensor %s: shape %s, expected %d elements", pi->name, got, pi->cout);
        else
            qie_seterr(err, "vae tensor %s: shape %s, expected [%d,%d,%s%d,%d]", pi->name, got, pi->cout, pi->cin,
                       pi->kind == VAE_P_CONV3D ? (pi->k == 3 ? "3," : "1,") : "", pi->k, pi->k);
        return QIE_EMISMATCH;
    }
    if (pi->kind == VAE_P_VEC) {
        for (int i = 0; i < pi->cout; i++) dst[i] = ld_(t, (size_t)i);
        return 0;
    }
    /* stored [co, ci, (kt,) ky, kx]; the 3-D causal conv keeps its last temporal tap, the only
     * one that meets a real frame when a still is encoded (spec §2.4) */
    const size_t kt = pi->kind == VAE_P_CONV3D ? k : 1, tap = kt - 1, kk = k * k;
    for (int co = 0; co < pi->cout; co++)
        for (int ci = 0; ci < pi->cin; ci++)
            for (size_t yx = 0; yx < kk; yx++) {
                const size_t src = (((size_t)co * pi->cin + ci) * kt + tap) * kk + yx;
                dst[((size_t)co * kk + yx) * pi->cin_pad + ci] = ld_(t, src);
            }
    return 0;
}

static uint64_t fnv1a_(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return h;
}

/* host f32 staging -> the parameter buffer (rounded to bf16 on CUDA) */
static void upload_(VaeModel *m, const float *stage) {
    op_upload_act(m->ctx, m->params, stage, m->params_numel);
    op_sync(m->ctx);
}

static int is_file_(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

int vae_load(char *err, OpCtx *ctx, const char *dir, VaeModel **out) {
    char vdir[4096], cfg_path[4200];
    snprintf(vdir, sizeof vdir, "%s/vae", dir);
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", vdir);
    if (!is_file_(cfg_path)) { /* the vae/ folder itself */
        snprintf(vdir, sizeof vdir, "%s", dir);
        snprintf(cfg_path, sizeof cfg_path, "%s/config.json", vdir);
    }
    VaeConfig cfg;
    int rc = vae_config_load(err, cfg_path, &cfg);
    if (rc) return rc;
    StModel *st = NULL;
    if ((rc = st_model_open(err, vdir, &st))) {
        qie_preferr(err, "vae weights");
        return rc;
    }
    VaeModel *m = NULL;
    float *stage = NULL;
    if ((rc = build_(err, ctx, &cfg, &m))) goto fail;
    stage = calloc(m->params_numel, sizeof(float));
    if (!stage) { qie_seterr(err, "vae: out of memory for %zu staging floats", m->params_numel); rc = QIE_ENOMEM; goto fail; }
    uint64_t h = 0xcbf29ce484222325ull;
    for (int i = 0; i < m->ntensors; i++) {
        const VaeParamInfo *pi = &m->info[i];
        const StTensor *t = st_model_find(st, pi->name);
        if (!t) {
            qie_seterr(err, "vae weights in %s: tensor %s is missing", vdir, pi->name);
            rc = QIE_ENOTFOUND;
            goto fail;
        }
        if ((rc = convert_(err, pi, t, stage + pi->offset))) goto fail;
        h = fnv1a_(h, t->data, t->nbytes);
    }
    snprintf(m->hash, sizeof m->hash, "%016llx", (unsigned long long)h);
    upload_(m, stage);
    free(stage);
    st_model_close(&st);
    *out = m;
    return 0;
fail:
    free(stage);
    vae_destroy(&m);
    st_model_close(&st);
    return rc;
}

int vae_create_random(char *err, OpCtx *ctx, const VaeConfig *cfg, uint64_t seed, VaeModel **out) {
    VaeModel *m = NULL;
    int rc = build_(err, ctx, cfg, &m);
    if (rc) return rc;
    float *stage = calloc(m->params_numel, sizeof(float));
    float *tmp = NULL;
    size_t tmp_cap = 0;
    if (!stage) { rc = QIE_ENOMEM; goto fail; }
    for (int i = 0; i < m->ntensors; i++) {
        const VaeParamInfo *pi = &m->info[i];
        const size_t n = pi->kind == VAE_P_VEC ? (size_t)pi->cout : (size_t)pi->cout * pi->k * pi->k * pi->cin;
        if (n > tmp_cap) {
            free(tmp);
            tmp_cap = n;
            if (!(tmp = malloc(n * sizeof(float)))) { rc = QIE_ENOMEM; goto fail; }
        }
        if ((rc = rng_normal_cpu(tmp, n, seed, (uint64_t)i, 0))) goto fail;
        float *dst = stage + pi->offset;
        if (pi->kind == VAE_P_VEC) {
            const int gamma = strstr(pi->name, "gamma") != NULL;
            for (size_t j = 0; j < n; j++) dst[j] = gamma ? 1.0f + 0.01f * tmp[j] : 0.01f * tmp[j];
            continue;
        }
        const float sc = 1.0f / sqrtf((float)(pi->cin * pi->k * pi->k));
        for (size_t r = 0; r < (size_t)pi->cout * pi->k * pi->k; r++)
            for (int ci = 0; ci < pi->cin; ci++) dst[r * pi->cin_pad + ci] = sc * tmp[r * pi->cin + ci];
    }
    snprintf(m->hash, sizeof m->hash, "random");
    upload_(m, stage);
    free(stage);
    free(tmp);
    *out = m;
    return 0;
fail:
    if (rc == QIE_ENOMEM) qie_seterr(err, "vae_create_random: out of memory");
    free(stage);
    free(tmp);
    vae_destroy(&m);
    return rc;
}

void vae_destroy(VaeModel **mp) {
    if (!mp || !*mp) return;
    VaeModel *m = *mp;
    vae_free_buffers_(m);
    op_free(m->ctx, m->params);
    free(m->info);
    free(m);
    *mp = NULL;
}

const VaeConfig *vae_config(const VaeModel *m) { return &m->cfg; }
size_t vae_param_count(const VaeModel *m) { return m->nparams_used; }
const char *vae_weights_hash(const VaeModel *m) { return m->hash; }

void vae_set_tap(VaeModel *m, VaeTapFn fn, void *user) {
    m->tap = fn;
    m->tap_user = user;
}

void vae_normalize(const VaeConfig *cfg, float *latents, const float *mean, int B, int hw) {
    for (int b = 0; b < B; b++)
        for (int c = 0; c < cfg->z_dim; c++) {
            const size_t o = ((size_t)b * cfg->z_dim + c) * hw;
            for (int p = 0; p < hw; p++) latents[o + p] = (mean[o + p] - cfg->latents_mean[c]) / cfg->latents_std[c];
        }
}
