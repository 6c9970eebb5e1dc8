/* init_model.c: qie-init's configs, the tensor lists of the three models, and the writer.
 *
 * Each component is a list of (name, shape) built by a walk that mirrors the reference module's
 * __init__ (diffusers QwenImageTransformer2DModel via common/dit.h's layout, diffusers
 * AutoencoderKLQwenImage, transformers Qwen2_5_VLForConditionalGeneration). The list is then
 * written shard by shard: only one shard's tensors are in memory at a time, so `--config real`
 * (~28 G parameters) needs a shard's worth of RAM, not the model's. */
#include "init_model.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "rng.h"
#include "safetensors.h"

#define INIT_DIFFUSERS_VERSION "0.36.0"

/* ---- tensor lists ---------------------------------------------------------------------------- */

typedef struct {
    char name[160];
    int ndim;
    uint64_t shape[5];
    uint64_t numel;
    char kind; /* 'w': N(0, std²), 'b': zeros (biases), '1': ones (norm gains) */
} InitTensor;

typedef struct {
    InitTensor *v;
    int n, cap;
    int oom;
} InitList;

static void list_free_(InitList *l) {
    free(l->v);
    memset(l, 0, sizeof *l);
}

/* add_(l, ndim, d0, .., fmt, ...): one tensor; its init kind follows from the name (the rule
 * diffusers' and transformers' _init_weights apply: Linear/Conv weights normal, biases zero,
 * RMSNorm gains one) */
static void add_(InitList *l, int ndim, const int *dims, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void add_(InitList *l, int ndim, const int *dims, const char *fmt, ...) {
    if (l->oom) return;
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        InitTensor *v = realloc(l->v, (size_t)cap * sizeof *v);
        if (!v) { l->oom = 1; return; }
        l->v = v;
        l->cap = cap;
    }
    InitTensor *t = &l->v[l->n++];
    memset(t, 0, sizeof *t);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++) {
        t->shape[i] = (uint64_t)dims[i];
        t->numel *= (uint64_t)dims[i];
    }
    size_t n = strlen(t->name);
    int ends_bias = n > 5 && !strcmp(t->name + n - 5, ".bias");
    int ends_gamma = n > 6 && !strcmp(t->name + n - 6, ".gamma");
    t->kind = ends_bias ? 'b' : ends_gamma || ndim == 1 ? '1' : 'w';
}

#define D1(a) (const int[]){(a)}
#define D2(a, b) (const int[]){(a), (b)}
#define D3(a, b, c) (const int[]){(a), (b), (c)}
#define D4(a, b, c, d) (const int[]){(a), (b), (c), (d)}
#define D5(a, b, c, d, e) (const int[]){(a), (b), (c), (d), (e)}

/* transformer: the names and shapes of common/dit.h's layout (the loader's own table) */
static int dit_list_(char *err, const DitConfig *cfg, InitList *l) {
    DitLayout lay;
    memset(&lay, 0, sizeof lay);
    int rc = dit_layout_init(err, &lay, cfg);
    if (rc) return rc;
    for (int i = 0; i < lay.ntensors; i++) {
        const DitTensorInfo *ti = &lay.tensors[i];
        int d[2] = {(int)ti->shape[0], (int)ti->shape[1]};
        add_(l, ti->ndim, d, "%s", ti->name);
    }
    dit_layout_free(&lay);
    return 0;
}

/* QwenImageResidualBlock(cin, cout) */
static void vae_res_(InitList *l, const char *p, int cin, int cout) {
    add_(l, 4, D4(cin, 1, 1, 1), "%s.norm1.gamma", p);
    add_(l, 5, D5(cout, cin, 3, 3, 3), "%s.conv1.weight", p);
    add_(l, 1, D1(cout), "%s.conv1.bias", p);
    add_(l, 4, D4(cout, 1, 1, 1), "%s.norm2.gamma", p);
    add_(l, 5, D5(cout, cout, 3, 3, 3), "%s.conv2.weight", p);
    add_(l, 1, D1(cout), "%s.conv2.bias", p);
    if (cin != cout) {
        add_(l, 5, D5(cout, cin, 1, 1, 1), "%s.conv_shortcut.weight", p);
        add_(l, 1, D1(cout), "%s.conv_shortcut.bias", p);
    }
}

/* QwenImageMidBlock(C, num_layers=1) */
static void vae_mid_(InitList *l, const char *p, int C) {
    char b[128];
    snprintf(b, sizeof b, "%s.resnets.0", p);
    vae_res_(l, b, C, C);
    add_(l, 3, D3(C, 1, 1), "%s.attentions.0.norm.gamma", p);
    add_(l, 4, D4(3 * C, C, 1, 1), "%s.attentions.0.to_qkv.weight", p);
    add_(l, 1, D1(3 * C), "%s.attentions.0.to_qkv.bias", p);
    add_(l, 4, D4(C, C, 1, 1), "%s.attentions.0.proj.weight", p);
    add_(l, 1, D1(C), "%s.attentions.0.proj.bias", p);
    snprintf(b, sizeof b, "%s.resnets.1", p);
    vae_res_(l, b, C, C);
}

/* AutoencoderKLQwenImage: QwenImageEncoder3d, quant_conv, post_quant_conv, QwenImageDecoder3d
 * (diffusers autoencoder_kl_qwenimage.py; spec model.md §2.6, §2.7) */
static void vae_list_(const VaeConfig *c, InitList *l) {
    const int L = c->ndim_mult, z = c->z_dim, base = c->base_dim;
    int dims[VAE_MAX_LEVELS + 1];
    char p[128];
    dims[0] = base;
    for (int i = 0; i < L; i++) dims[i + 1] = base * c->dim_mult[i];
    add_(l, 5, D5(dims[0], c->input_channels, 3, 3, 3), "encoder.conv_in.weight");
    add_(l, 1, D1(dims[0]), "encoder.conv_in.bias");
    int k = 0;
    for (int i = 0; i < L; i++) {
        int in = dims[i];
        for (int r = 0; r < c->num_res_blocks; r++, k++) {
            snprintf(p, sizeof p, "encoder.down_blocks.%d", k);
            vae_res_(l, p, in, dims[i + 1]);
            in = dims[i + 1];
        }
        if (i != L - 1) { /* QwenImageResample downsample2d / downsample3d */
            const int C = dims[i + 1];
            add_(l, 4, D4(C, C, 3, 3), "encoder.down_blocks.%d.resample.1.weight", k);
            add_(l, 1, D1(C), "encoder.down_blocks.%d.resample.1.bias", k);
            if (c->temperal_downsample[i]) {
                add_(l, 5, D5(C, C, 3, 1, 1), "encoder.down_blocks.%d.time_conv.weight", k);
                add_(l, 1, D1(C), "encoder.down_blocks.%d.time_conv.bias", k);
            }
            k++;
        }
    }
    const int C = dims[L];
    vae_mid_(l, "encoder.mid_block", C);
    add_(l, 4, D4(C, 1, 1, 1), "encoder.norm_out.gamma");
    add_(l, 5, D5(2 * z, C, 3, 3, 3), "encoder.conv_out.weight");
    add_(l, 1, D1(2 * z), "encoder.conv_out.bias");
    add_(l, 5, D5(2 * z, 2 * z, 1, 1, 1), "quant_conv.weight");
    add_(l, 1, D1(2 * z), "quant_conv.bias");
    add_(l, 5, D5(z, z, 1, 1, 1), "post_quant_conv.weight");
    add_(l, 1, D1(z), "post_quant_conv.bias");
    /* decoder: dims = base·[mult[-1]] + base·reversed(mult); temperal_upsample = reversed */
    int dd[VAE_MAX_LEVELS + 1];
    dd[0] = base * c->dim_mult[L - 1];
    for (int i = 0; i < L; i++) dd[i + 1] = base * c->dim_mult[L - 1 - i];
    add_(l, 5, D5(dd[0], z, 3, 3, 3), "decoder.conv_in.weight");
    add_(l, 1, D1(dd[0]), "decoder.conv_in.bias");
    vae_mid_(l, "decoder.mid_block", dd[0]);
    for (int i = 0; i < L; i++) {
        int in = i > 0 ? dd[i] / 2 : dd[i];
        const int out = dd[i + 1];
        for (int r = 0; r < c->num_res_blocks + 1; r++) {
            snprintf(p, sizeof p, "decoder.up_blocks.%d.resnets.%d", i, r);
            vae_res_(l, p, in, out);
            in = out;
        }
        if (i != L - 1) {
            add_(l, 4, D4(out / 2, out, 3, 3), "decoder.up_blocks.%d.upsamplers.0.resample.1.weight", i);
            add_(l, 1, D1(out / 2), "decoder.up_blocks.%d.upsamplers.0.resample.1.bias", i);
            if (c->temperal_downsample[L - 2 - i]) { /* upsample3d */
                add_(l, 5, D5(2 * out, out, 3, 1, 1), "decoder.up_blocks.%d.upsamplers.0.time_conv.weight", i);
                add_(l, 1, D1(2 * out), "decoder.up_blocks.%d.upsamplers.0.time_conv.bias", i);
            }
        }
    }
    add_(l, 4, D4(dd[L], 1, 1, 1), "decoder.norm_out.gamma");
    add_(l, 5, D5(3, dd[L], 3, 3, 3), "decoder.conv_out.weight");
    add_(l, 1, D1(3), "decoder.conv_out.bias");
}

/* Qwen2_5_VLForConditionalGeneration, transformers 5 names (common/qwenvl_model.c reads these and
 * the legacy model.* / visual.* ones) */
static void te_list_(const InitTeConfig *c, InitList *l) {
    const char *lp = "model.language_model.", *vp = "model.visual.";
    const int D = c->hidden, hd = c->hidden / c->heads, nq = c->heads * hd, nk = c->kv_heads * hd, F = c->ffn;
    const int Dv = c->v_hidden, Fv = c->v_ffn, M = 4 * Dv; /* 2x2 spatial merge */
    add_(l, 2, D2(c->vocab, D), "%sembed_tokens.weight", lp);
    for (int i = 0; i < c->layers; i++) {
        add_(l, 1, D1(D), "%slayers.%d.input_layernorm.weight", lp, i);
        add_(l, 2, D2(nq, D), "%slayers.%d.self_attn.q_proj.weight", lp, i);
        add_(l, 1, D1(nq), "%slayers.%d.self_attn.q_proj.bias", lp, i);
        add_(l, 2, D2(nk, D), "%slayers.%d.self_attn.k_proj.weight", lp, i);
        add_(l, 1, D1(nk), "%slayers.%d.self_attn.k_proj.bias", lp, i);
        add_(l, 2, D2(nk, D), "%slayers.%d.self_attn.v_proj.weight", lp, i);
        add_(l, 1, D1(nk), "%slayers.%d.self_attn.v_proj.bias", lp, i);
        add_(l, 2, D2(D, nq), "%slayers.%d.self_attn.o_proj.weight", lp, i);
        add_(l, 1, D1(D), "%slayers.%d.post_attention_layernorm.weight", lp, i);
        add_(l, 2, D2(F, D), "%slayers.%d.mlp.gate_proj.weight", lp, i);
        add_(l, 2, D2(F, D), "%slayers.%d.mlp.up_proj.weight", lp, i);
        add_(l, 2, D2(D, F), "%slayers.%d.mlp.down_proj.weight", lp, i);
    }
    add_(l, 1, D1(D), "%snorm.weight", lp);
    add_(l, 5, D5(Dv, 3, 2, 14, 14), "%spatch_embed.proj.weight", vp);
    for (int j = 0; j < c->v_depth; j++) {
        add_(l, 1, D1(Dv), "%sblocks.%d.norm1.weight", vp, j);
        add_(l, 1, D1(Dv), "%sblocks.%d.norm2.weight", vp, j);
        add_(l, 2, D2(3 * Dv, Dv), "%sblocks.%d.attn.qkv.weight", vp, j);
        add_(l, 1, D1(3 * Dv), "%sblocks.%d.attn.qkv.bias", vp, j);
        add_(l, 2, D2(Dv, Dv), "%sblocks.%d.attn.proj.weight", vp, j);
        add_(l, 1, D1(Dv), "%sblocks.%d.attn.proj.bias", vp, j);
        add_(l, 2, D2(Fv, Dv), "%sblocks.%d.mlp.gate_proj.weight", vp, j);
        add_(l, 1, D1(Fv), "%sblocks.%d.mlp.gate_proj.bias", vp, j);
        add_(l, 2, D2(Fv, Dv), "%sblocks.%d.mlp.up_proj.weight", vp, j);
        add_(l, 1, D1(Fv), "%sblocks.%d.mlp.up_proj.bias", vp, j);
        add_(l, 2, D2(Dv, Fv), "%sblocks.%d.mlp.down_proj.weight", vp, j);
        add_(l, 1, D1(Dv), "%sblocks.%d.mlp.down_proj.bias", vp, j);
    }
    add_(l, 1, D1(Dv), "%smerger.ln_q.weight", vp);
    add_(l, 2, D2(M, M), "%smerger.mlp.0.weight", vp);
    add_(l, 1, D1(M), "%smerger.mlp.0.bias", vp);
    add_(l, 2, D2(D, M), "%smerger.mlp.2.weight", vp);
    add_(l, 1, D1(D), "%smerger.mlp.2.bias", vp);
    /* never used by qie (the prompt encoder stops at the final norm), but the class has it and
     * tie_word_embeddings is false: without it transformers would re-initialise it and warn */
    add_(l, 2, D2(c->vocab, D), "lm_head.weight");
}

/* ---- configs ---------------------------------------------------------------------------------- */

static void te_tiny_(InitTeConfig *t) {
    memset(t, 0, sizeof *t);
    t->hidden = 64, t->layers = 2, t->heads = 4, t->kv_heads = 2, t->ffn = 128, t->max_pos = 32768;
    t->mrope[0] = 2, t->mrope[1] = 3, t->mrope[2] = 3;
    t->v_depth = 4, t->v_hidden = 32, t->v_heads = 2, t->v_ffn = 64;
    t->v_full[0] = 1, t->v_full[1] = 3, t->n_full = 2;
    t->added_base = init_tokenizer_base_size();
    t->vocab = (t->added_base + 22 + 63) / 64 * 64; /* rows rounded up, as the released 152064 */
}

static void te_real_(InitTeConfig *t) {
    memset(t, 0, sizeof *t);
    t->hidden = 3584, t->layers = 28, t->heads = 28, t->kv_heads = 4, t->ffn = 18944, t->max_pos = 128000;
    t->mrope[0] = 16, t->mrope[1] = 24, t->mrope[2] = 24;
    t->v_depth = 32, t->v_hidden = 1280, t->v_heads = 16, t->v_ffn = 3420;
    t->v_full[0] = 7, t->v_full[1] = 15, t->v_full[2] = 23, t->v_full[3] = 31, t->n_full = 4;
    t->added_base = 151643, t->vocab = 152064;
}

int init_variant_parse(const char *s, InitVariant *v) {
    if (!strcmp(s, "edit") || !strcmp(s, "qwen_image_edit")) *v = INIT_EDIT;
    else if (!strcmp(s, "edit-2509") || !strcmp(s, "qwen_image_edit_plus")) *v = INIT_EDIT_PLUS;
    else if (!strcmp(s, "edit-2511")) *v = INIT_EDIT_2511;
    else return QIE_EINVAL;
    return 0;
}

static int validate_(char *err, InitConfig *c) {
    InitTeConfig *t = &c->te;
    if (c->dit.joint_dim != t->hidden) {
        qie_seterr(err, "transformer joint_attention_dim %d != text encoder hidden_size %d (model.md §5.1)",
                   c->dit.joint_dim, t->hidden);
        return QIE_EINVAL;
    }
    c->dit.zero_cond_t = c->variant == INIT_EDIT_2511;
    int rc = dit_config_validate(err, &c->dit);
    if (rc) return rc;
    if (c->dit.out_channels != c->vae.z_dim) {
        qie_seterr(err, "transformer out_channels %d != vae z_dim %d", c->dit.out_channels, c->vae.z_dim);
        return QIE_EINVAL;
    }
    if (c->vae.base_dim < 1 || c->vae.ndim_mult < 2 || c->vae.ndim_mult > VAE_MAX_LEVELS || c->vae.num_res_blocks < 1 ||
        c->vae.z_dim < 1 || c->vae.z_dim > VAE_MAX_Z) {
        qie_seterr(err, "vae config: base_dim %d, %d levels, %d res blocks, z_dim %d out of range", c->vae.base_dim,
                   c->vae.ndim_mult, c->vae.num_res_blocks, c->vae.z_dim);
        return QIE_EINVAL;
    }
    if (t->heads < 1 || t->kv_heads < 1 || t->hidden % t->heads || t->heads % t->kv_heads || t->layers < 1 ||
        t->mrope[0] + t->mrope[1] + t->mrope[2] != t->hidden / t->heads / 2 || t->v_heads < 1 ||
        t->v_hidden % t->v_heads || (t->v_hidden / t->v_heads) % 4 || t->v_depth < 1 || t->v_depth > INIT_MAX_VIT_DEPTH ||
        t->ffn < 1 || t->v_ffn < 1) {
        qie_seterr(err, "text encoder config: hidden %d / %d heads / %d KV heads, mrope %d+%d+%d (must sum to head_dim/2), "
                   "vision %d / %d heads (head dim a multiple of 4), depth %d",
                   t->hidden, t->heads, t->kv_heads, t->mrope[0], t->mrope[1], t->mrope[2], t->v_hidden, t->v_heads,
                   t->v_depth);
        return QIE_EINVAL;
    }
    if (t->vocab < t->added_base + 22) {
        qie_seterr(err, "text encoder vocab_size %d < %d tokenizer ids", t->vocab, t->added_base + 22);
        return QIE_EINVAL;
    }
    return 0;
}

int init_config_preset(char *err, const char *name, InitConfig *c) {
    memset(c, 0, sizeof *c);
    vae_config_default(&c->vae);
    if (!strcmp(name, "tiny")) {
        /* model.md §5.2 dit-tiny, §5.3 vae-tiny, §5.4 te-tiny (vocabulary: init_tokenizer.c) */
        DitConfig d = {2, 64, 16, 2, 32, 2, 64, {8, 12, 12}, 0, 0, 0};
        c->dit = d;
        c->vae.base_dim = 8;
        c->vae.num_res_blocks = 1;
        te_tiny_(&c->te);
    } else if (!strcmp(name, "real")) {
        DitConfig d = {2, 64, 16, 60, 128, 24, 3584, {16, 56, 56}, 0, 0, 0};
        c->dit = d;
        te_real_(&c->te);
    } else {
        qie_seterr(err, "--config '%s': tiny, real or a JSON file", name);
        return QIE_EINVAL;
    }
    c->name = name;
    return validate_(err, c);
}

/* integer key of o into *dst when present */
static int jint_(char *err, const cJSON *o, const char *key, int *dst) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL;
    if (!v) return 0;
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble) {
        qie_seterr(err, "config: \"%s\" must be an integer", key);
        return QIE_EINVAL;
    }
    *dst = v->valueint;
    return 0;
}

/* integer array of o into dst[0..*n) when present (cap entries at most) */
static int jints_(char *err, const cJSON *o, const char *key, int *dst, int cap, int *n) {
    const cJSON *v = o ? cJSON_GetObjectItemCaseSensitive(o, key) : NULL, *e;
    if (!v) return 0;
    int k = 0;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) > cap) goto bad;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) && !cJSON_IsBool(e)) goto bad;
        dst[k++] = cJSON_IsBool(e) ? cJSON_IsTrue(e) : e->valueint;
    }
    if (n) *n = k;
    return 0;
bad:
    qie_seterr(err, "config: \"%s\" must be a list of at most %d integers", key, cap);
    return QIE_EINVAL;
}

int init_config_file(char *err, const char *path, InitConfig *c) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        qie_seterr(err, "--config %s: %s", path, strerror(e));
        return e;
    }
    char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_ParseWithLength(buf, n);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        qie_seterr(err, "--config %s: not a JSON object", path);
        return QIE_EFORMAT;
    }
    const cJSON *base = cJSON_GetObjectItemCaseSensitive(j, "base"), *var = cJSON_GetObjectItemCaseSensitive(j, "variant");
    int rc = init_config_preset(err, cJSON_IsString(base) ? base->valuestring : "tiny", c);
    if (rc) goto out;
    if (var && (!cJSON_IsString(var) || init_variant_parse(var->valuestring, &c->variant))) {
        qie_seterr(err, "--config %s: \"variant\" must be edit, edit-2509 or edit-2511", path);
        rc = QIE_EINVAL;
        goto out;
    }
    const cJSON *tr = cJSON_GetObjectItemCaseSensitive(j, "transformer"), *va = cJSON_GetObjectItemCaseSensitive(j, "vae"),
                *te = cJSON_GetObjectItemCaseSensitive(j, "text_encoder");
    const cJSON *vc = te ? cJSON_GetObjectItemCaseSensitive(te, "vision_config") : NULL;
    int jd = -1, nm = 0, ntd = 0, td[VAE_MAX_LEVELS];
    if ((rc = jint_(err, tr, "num_layers", &c->dit.num_layers)) ||
        (rc = jint_(err, tr, "attention_head_dim", &c->dit.head_dim)) ||
        (rc = jint_(err, tr, "num_attention_heads", &c->dit.num_heads)) ||
        (rc = jint_(err, tr, "joint_attention_dim", &jd)) || (rc = jints_(err, tr, "axes_dims_rope", c->dit.axes, 3, NULL)) ||
        (rc = jint_(err, va, "base_dim", &c->vae.base_dim)) || (rc = jint_(err, va, "num_res_blocks", &c->vae.num_res_blocks)) ||
        (rc = jints_(err, va, "dim_mult", c->vae.dim_mult, VAE_MAX_LEVELS, &nm)) ||
        (rc = jints_(err, va, "temperal_downsample", td, VAE_MAX_LEVELS, &ntd)) ||
        (rc = jint_(err, te, "hidden_size", &c->te.hidden)) || (rc = jint_(err, te, "num_hidden_layers", &c->te.layers)) ||
        (rc = jint_(err, te, "num_attention_heads", &c->te.heads)) ||
        (rc = jint_(err, te, "num_key_value_heads", &c->te.kv_heads)) ||
        (rc = jint_(err, te, "intermediate_size", &c->te.ffn)) || (rc = jint_(err, te, "vocab_size", &c->te.vocab)) ||
        (rc = jint_(err, te, "max_position_embeddings", &c->te.max_pos)) ||
        (rc = jints_(err, te, "mrope_section", c->te.mrope, 3, NULL)) || (rc = jint_(err, vc, "depth", &c->te.v_depth)) ||
        (rc = jint_(err, vc, "hidden_size", &c->te.v_hidden)) || (rc = jint_(err, vc, "num_heads", &c->te.v_heads)) ||
        (rc = jint_(err, vc, "intermediate_size", &c->te.v_ffn)) ||
        (rc = jints_(err, vc, "fullatt_block_indexes", c->te.v_full, INIT_MAX_VIT_DEPTH, &c->te.n_full)))
        goto out;
    if (nm) {
        c->vae.ndim_mult = nm;
        if (!ntd) /* the released pattern: no temporal step at the first level */
            for (int i = 0; i + 1 < nm; i++) c->vae.temperal_downsample[i] = i > 0;
    }
    for (int i = 0; i < ntd; i++) c->vae.temperal_downsample[i] = td[i];
    if (ntd && ntd != c->vae.ndim_mult - 1) {
        qie_seterr(err, "--config %s: temperal_downsample needs len(dim_mult) - 1 = %d entries", path, c->vae.ndim_mult - 1);
        rc = QIE_EINVAL;
        goto out;
    }
    c->dit.joint_dim = jd > 0 ? jd : c->te.hidden;
    c->name = path;
    rc = validate_(err, c);
out:
    cJSON_Delete(j);
    if (rc) qie_preferr(err, "%s", path);
    return rc;
}

int init_count(char *err, const InitConfig *c, InitCounts *n) {
    InitList l[3];
    memset(l, 0, sizeof l);
    memset(n, 0, sizeof *n);
    int rc = dit_list_(err, &c->dit, &l[0]);
    vae_list_(&c->vae, &l[1]);
    te_list_(&c->te, &l[2]);
    uint64_t *dst[3] = {&n->transformer, &n->vae, &n->text_encoder};
    for (int k = 0; k < 3; k++) {
        if (l[k].oom && !rc) { qie_seterr(err, "out of memory"); rc = QIE_ENOMEM; }
        for (int i = 0; i < l[k].n; i++) *dst[k] += l[k].v[i].numel;
        list_free_(&l[k]);
    }
    return rc;
}

/* ---- writing ---------------------------------------------------------------------------------- */

static int mkdir_(char *err, const char *path) {
    if (mkdir(path, 0755) && errno != EEXIST) {
        int e = errno;
        qie_seterr(err, "mkdir %s: %s", path, strerror(e));
        return e;
    }
    return 0;
}

static int write_text_(char *err, const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f) {
        int e = errno;
        qie_seterr(err, "open %s: %s", path, strerror(e));
        return e;
    }
    int bad = fputs(text, f) < 0;
    if (fclose(f) || bad) {
        qie_seterr(err, "write %s failed", path);
        return QIE_EIO;
    }
    return 0;
}

/* Values of tensor t (index ti of component comp) in o->dtype into dst. The draws are element i of
 * Philox stream (seed, comp<<32 | ti): independent of sharding and of the other tensors. */
static int fill_(char *err, const InitTensor *t, uint64_t comp, int ti, const InitOptions *o, void *dst, float *scratch,
                 size_t scratch_n) {
    const size_t es = dtype_size(o->dtype);
    for (uint64_t done = 0; done < t->numel; done += scratch_n) {
        size_t n = t->numel - done < scratch_n ? (size_t)(t->numel - done) : scratch_n;
        if (t->kind == 'w') {
            if (rng_normal_cpu(scratch, n, o->seed, comp << 32 | (uint64_t)ti, done)) {
                qie_seterr(err, "%s: rng_normal_cpu failed", t->name);
                return QIE_EINVAL;
            }
            for (size_t i = 0; i < n; i++) scratch[i] *= (float)o->std;
        } else {
            float v = t->kind == '1' ? 1.0f : 0.0f;
            for (size_t i = 0; i < n; i++) scratch[i] = v;
        }
        char *d = (char *)dst + done * es;
        if (o->dtype == QIE_DT_BF16) {
            for (size_t i = 0; i < n; i++) {
                uint16_t h = f32_to_bf16(scratch[i]);
                memcpy(d + 2 * i, &h, 2);
            }
        } else {
            memcpy(d, scratch, n * sizeof(float));
        }
    }
    return 0;
}

static int cmp_names_(const void *a, const void *b) {
    return strcmp((*(const InitTensor *const *)a)->name, (*(const InitTensor *const *)b)->name);
}

/* The shards of one component in dir, as save_pretrained names them: <prefix>.safetensors, or
 * <prefix>-0000k-of-0000n.safetensors + <prefix>.safetensors.index.json (json.dumps(indent=2,
 * sort_keys=True), written last). Tensors go into shards in list order; a shard closes before the
 * tensor that would take it past max_shard (huggingface_hub's split_state_dict_into_shards). */
static int write_component_(char *err, const InitList *l, uint64_t comp, const InitOptions *o, const char *dir,
                            const char *prefix, const char *max_shard) {
    uint64_t limit = UINT64_MAX, total = 0;
    int rc = 0;
    if (max_shard && (rc = st_parse_size(err, max_shard, &limit))) return rc;
    const size_t es = dtype_size(o->dtype);
    int *shard_of = calloc((size_t)l->n + 1, sizeof *shard_of);
    const InitTensor **sorted = calloc((size_t)l->n + 1, sizeof *sorted);
    const size_t scratch_n = (size_t)1 << 22;
    float *scratch = malloc(scratch_n * sizeof *scratch);
    void **bufs = calloc((size_t)l->n + 1, sizeof *bufs);
    StWriter *w = NULL;
    FILE *f = NULL;
    char path[4300];
    if (!shard_of || !sorted || !scratch || !bufs) { rc = QIE_ENOMEM; qie_seterr(err, "out of memory"); goto out; }
    int nshards = 0;
    uint64_t cur = 0;
    for (int i = 0; i < l->n; i++) {
        uint64_t b = l->v[i].numel * es;
        if (nshards == 0 || (cur > 0 && cur + b > limit)) { nshards++; cur = 0; }
        cur += b;
        total += b;
        shard_of[i] = nshards - 1;
    }
    for (int s = 0, i0 = 0; s < nshards; s++) {
        if ((rc = st_writer_create(err, &w))) goto out;
        int i = i0;
        for (; i < l->n && shard_of[i] == s; i++) {
            const InitTensor *t = &l->v[i];
            if (!(bufs[i] = malloc(t->numel > 0 ? t->numel * es : 1))) {
                rc = QIE_ENOMEM;
                qie_seterr(err, "%s: out of memory (%llu elements)", t->name, (unsigned long long)t->numel);
                goto out;
            }
            if ((rc = fill_(err, t, comp, i, o, bufs[i], scratch, scratch_n)) ||
                (rc = st_writer_add(err, w, t->name, o->dtype, t->ndim, t->shape, bufs[i], t->numel * es)))
                goto out;
        }
        if (nshards == 1) snprintf(path, sizeof path, "%s/%s.safetensors", dir, prefix);
        else snprintf(path, sizeof path, "%s/%s-%05d-of-%05d.safetensors", dir, prefix, s + 1, nshards);
        if ((rc = st_writer_write(err, w, path))) goto out;
        st_writer_destroy(&w);
        for (int k = i0; k < i; k++) { free(bufs[k]); bufs[k] = NULL; }
        i0 = i;
    }
    if (nshards > 1) {
        for (int i = 0; i < l->n; i++) sorted[i] = &l->v[i];
        qsort(sorted, (size_t)l->n, sizeof *sorted, cmp_names_);
        snprintf(path, sizeof path, "%s/%s.safetensors.index.json", dir, prefix);
        if (!(f = fopen(path, "w"))) {
            rc = errno;
            qie_seterr(err, "open %s: %s", path, strerror(rc));
            goto out;
        }
        fprintf(f, "{\n  \"metadata\": {\n    \"total_size\": %llu\n  },\n  \"weight_map\": {\n", (unsigned long long)total);
        for (int i = 0; i < l->n; i++) {
            int s = shard_of[sorted[i] - l->v];
            fprintf(f, "    \"%s\": \"%s-%05d-of-%05d.safetensors\"%s\n", sorted[i]->name, prefix, s + 1, nshards,
                    i + 1 < l->n ? "," : "");
        }
        fputs("  }\n}", f);
        int bad = ferror(f);
        if (fclose(f) || bad) { rc = QIE_EIO; qie_seterr(err, "write %s failed", path); }
        f = NULL;
    }
out:
    if (bufs)
        for (int i = 0; i < l->n; i++) free(bufs[i]);
    st_writer_destroy(&w);
    free(bufs);
    free(scratch);
    free(sorted);
    free(shard_of);
    return rc;
}

/* "[1, 2, 3]" or "[false, true]" */
static void ints_(char *s, size_t cap, const int *v, int n, int as_bool) {
    size_t k = (size_t)snprintf(s, cap, "[");
    for (int i = 0; i < n && k < cap; i++) {
        if (as_bool) k += (size_t)snprintf(s + k, cap - k, "%s%s", i ? ", " : "", v[i] ? "true" : "false");
        else k += (size_t)snprintf(s + k, cap - k, "%s%d", i ? ", " : "", v[i]);
    }
    if (k < cap) snprintf(s + k, cap - k, "]");
}

static void floats_(char *s, size_t cap, const float *v, int n) {
    size_t k = (size_t)snprintf(s, cap, "[");
    for (int i = 0; i < n && k < cap; i++) k += (size_t)snprintf(s + k, cap - k, "%s%.4f", i ? ", " : "", (double)v[i]);
    if (k < cap) snprintf(s + k, cap - k, "]");
}

static int write_configs_(char *err, const InitConfig *c, const char *dir) {
    char path[4300], t[8192], a[1024], b[1024];
    int rc;
    const DitConfig *x = &c->dit;
    /* transformer: QwenImageTransformer2DModel.__init__'s keys */
    ints_(a, sizeof a, x->axes, 3, 0);
    snprintf(t, sizeof t,
             "{\n  \"_class_name\": \"QwenImageTransformer2DModel\",\n  \"_diffusers_version\": \"%s\",\n"
             "  \"attention_head_dim\": %d,\n  \"axes_dims_rope\": %s,\n  \"guidance_embeds\": false,\n"
             "  \"in_channels\": %d,\n  \"joint_attention_dim\": %d,\n  \"num_attention_heads\": %d,\n"
             "  \"num_layers\": %d,\n  \"out_channels\": %d,\n  \"patch_size\": %d%s\n}\n",
             INIT_DIFFUSERS_VERSION, x->head_dim, a, x->in_channels, x->joint_dim, x->num_heads, x->num_layers,
             x->out_channels, x->patch_size, x->zero_cond_t ? ",\n  \"zero_cond_t\": true" : "");
    snprintf(path, sizeof path, "%s/transformer/config.json", dir);
    if ((rc = write_text_(err, path, t))) return rc;
    /* vae: AutoencoderKLQwenImage.__init__'s keys */
    const VaeConfig *v = &c->vae;
    ints_(a, sizeof a, v->dim_mult, v->ndim_mult, 0);
    ints_(b, sizeof b, v->temperal_downsample, v->ndim_mult - 1, 1);
    char mean[512], stdv[512];
    floats_(mean, sizeof mean, v->latents_mean, v->z_dim);
    floats_(stdv, sizeof stdv, v->latents_std, v->z_dim);
    snprintf(t, sizeof t,
             "{\n  \"_class_name\": \"AutoencoderKLQwenImage\",\n  \"_diffusers_version\": \"%s\",\n"
             "  \"attn_scales\": [],\n  \"base_dim\": %d,\n  \"dim_mult\": %s,\n  \"dropout\": 0.0,\n"
             "  \"input_channels\": %d,\n  \"latents_mean\": %s,\n  \"latents_std\": %s,\n  \"num_res_blocks\": %d,\n"
             "  \"temperal_downsample\": %s,\n  \"z_dim\": %d\n}\n",
             INIT_DIFFUSERS_VERSION, v->base_dim, a, v->input_channels, mean, stdv, v->num_res_blocks, b, v->z_dim);
    snprintf(path, sizeof path, "%s/vae/config.json", dir);
    if ((rc = write_text_(err, path, t))) return rc;
    /* text encoder: what transformers 5 writes for Qwen2.5-VL (text_config / vision_config) */
    const InitTeConfig *e = &c->te;
    const int ab = e->added_base;
    ints_(a, sizeof a, e->mrope, 3, 0);
    ints_(b, sizeof b, e->v_full, e->n_full, 0);
    snprintf(t, sizeof t,
             "{\n  \"architectures\": [\"Qwen2_5_VLForConditionalGeneration\"],\n  \"dtype\": \"bfloat16\",\n"
             "  \"image_token_id\": %d,\n  \"model_type\": \"qwen2_5_vl\",\n  \"text_config\": {\n"
             "    \"attention_dropout\": 0.0,\n    \"bos_token_id\": %d,\n    \"eos_token_id\": %d,\n"
             "    \"hidden_act\": \"silu\",\n    \"hidden_size\": %d,\n    \"initializer_range\": 0.02,\n"
             "    \"intermediate_size\": %d,\n    \"max_position_embeddings\": %d,\n    \"max_window_layers\": %d,\n"
             "    \"model_type\": \"qwen2_5_vl_text\",\n    \"num_attention_heads\": %d,\n    \"num_hidden_layers\": %d,\n"
             "    \"num_key_value_heads\": %d,\n    \"rms_norm_eps\": 1e-06,\n    \"rope_parameters\": {\n"
             "      \"mrope_section\": %s,\n      \"rope_theta\": 1000000.0,\n      \"rope_type\": \"default\"\n    },\n"
             "    \"sliding_window\": null,\n    \"use_cache\": true,\n    \"use_sliding_window\": false,\n"
             "    \"vocab_size\": %d\n  },\n  \"tie_word_embeddings\": false,\n  \"video_token_id\": %d,\n"
             "  \"vision_config\": {\n    \"depth\": %d,\n    \"fullatt_block_indexes\": %s,\n    \"hidden_act\": \"silu\",\n"
             "    \"hidden_size\": %d,\n    \"in_channels\": 3,\n    \"initializer_range\": 0.02,\n"
             "    \"intermediate_size\": %d,\n    \"model_type\": \"qwen2_5_vl_vision\",\n    \"num_heads\": %d,\n"
             "    \"out_hidden_size\": %d,\n    \"patch_size\": 14,\n    \"spatial_merge_size\": 2,\n"
             "    \"temporal_patch_size\": 2,\n    \"tokens_per_second\": 2,\n    \"window_size\": 112\n  },\n"
             "  \"vision_end_token_id\": %d,\n  \"vision_start_token_id\": %d\n}\n",
             ab + 12, ab, ab + 2, e->hidden, e->ffn, e->max_pos, e->layers, e->heads, e->layers, e->kv_heads, a, e->vocab,
             ab + 13, e->v_depth, b, e->v_hidden, e->v_ffn, e->v_heads, e->hidden, ab + 10, ab + 9);
    snprintf(path, sizeof path, "%s/text_encoder/config.json", dir);
    if ((rc = write_text_(err, path, t))) return rc;
    snprintf(t, sizeof t, "{\n  \"bos_token_id\": %d,\n  \"eos_token_id\": [%d, %d],\n  \"pad_token_id\": %d\n}\n", ab,
             ab + 2, ab, ab);
    snprintf(path, sizeof path, "%s/text_encoder/generation_config.json", dir);
    if ((rc = write_text_(err, path, t))) return rc;
    /* the Qwen2-VL image processor with the released values (model.md §3.4) */
    snprintf(path, sizeof path, "%s/processor/preprocessor_config.json", dir);
    if ((rc = write_text_(err, path,
                          "{\n  \"do_convert_rgb\": true,\n  \"do_normalize\": true,\n  \"do_rescale\": true,\n"
                          "  \"do_resize\": true,\n  \"image_mean\": [0.48145466, 0.4578275, 0.40821073],\n"
                          "  \"image_processor_type\": \"Qwen2VLImageProcessor\",\n"
                          "  \"image_std\": [0.26862954, 0.26130258, 0.27577711],\n  \"max_pixels\": 12845056,\n"
                          "  \"merge_size\": 2,\n  \"min_pixels\": 3136,\n  \"patch_size\": 14,\n"
                          "  \"processor_class\": \"Qwen2VLProcessor\",\n  \"resample\": 3,\n"
                          "  \"rescale_factor\": 0.00392156862745098,\n  \"size\": {\n    \"longest_edge\": 12845056,\n"
                          "    \"shortest_edge\": 3136\n  },\n  \"temporal_patch_size\": 2\n}\n")))
        return rc;
    /* FlowMatchEulerDiscreteScheduler as released with Qwen-Image (trainer_behaviour.md §4.6) */
    snprintf(path, sizeof path, "%s/scheduler/scheduler_config.json", dir);
    snprintf(t, sizeof t,
             "{\n  \"_class_name\": \"FlowMatchEulerDiscreteScheduler\",\n  \"_diffusers_version\": \"%s\",\n"
             "  \"base_image_seq_len\": 256,\n  \"base_shift\": 0.5,\n  \"invert_sigmas\": false,\n"
             "  \"max_image_seq_len\": 8192,\n  \"max_shift\": 0.9,\n  \"num_train_timesteps\": 1000,\n"
             "  \"shift\": 1.0,\n  \"shift_terminal\": 0.02,\n  \"stochastic_sampling\": false,\n"
             "  \"time_shift_type\": \"exponential\",\n  \"use_beta_sigmas\": false,\n  \"use_dynamic_shifting\": true,\n"
             "  \"use_exponential_sigmas\": false,\n  \"use_karras_sigmas\": false\n}\n",
             INIT_DIFFUSERS_VERSION);
    return write_text_(err, path, t);
}

int init_write_model(char *err, const InitConfig *c, const InitOptions *o, const char *dir, int overwrite) {
    char path[4300];
    struct stat st;
    int rc;
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    if (!overwrite && stat(path, &st) == 0) {
        qie_seterr(err, "%s already holds a model (model_index.json); pass --overwrite to replace it", dir);
        return QIE_EINVAL;
    }
    if (o->dtype != QIE_DT_BF16 && o->dtype != QIE_DT_F32) {
        qie_seterr(err, "dtype %s: bf16 or f32", dtype_name(o->dtype));
        return QIE_EINVAL;
    }
    /* model_index.json goes last: a folder without it is an interrupted init, not a model */
    if (overwrite) unlink(path);
    if ((rc = mkdir_(err, dir))) return rc;
    const char *subs[] = {"transformer", "vae", "text_encoder", "tokenizer", "processor", "scheduler"};
    for (size_t i = 0; i < sizeof subs / sizeof *subs; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, subs[i]);
        if ((rc = mkdir_(err, path))) return rc;
    }
    if ((rc = write_configs_(err, c, dir))) return rc;
    int nids = 0;
    snprintf(path, sizeof path, "%s/tokenizer", dir);
    if ((rc = init_tokenizer_write(err, path, c->te.added_base, &nids))) return rc;
    snprintf(path, sizeof path, "%s/processor", dir);
    if ((rc = init_tokenizer_write(err, path, c->te.added_base, &nids))) return rc;

    InitList l;
    memset(&l, 0, sizeof l);
    /* component numbers key the RNG streams: 1 transformer, 2 vae, 3 text encoder */
    if ((rc = dit_list_(err, &c->dit, &l))) goto out;
    snprintf(path, sizeof path, "%s/transformer", dir);
    if (l.oom) goto oom;
    if ((rc = write_component_(err, &l, 1, o, path, "diffusion_pytorch_model", o->max_shard_size))) goto out;
    list_free_(&l);
    vae_list_(&c->vae, &l);
    snprintf(path, sizeof path, "%s/vae", dir);
    if (l.oom) goto oom;
    if ((rc = write_component_(err, &l, 2, o, path, "diffusion_pytorch_model", NULL))) goto out;
    list_free_(&l);
    te_list_(&c->te, &l);
    snprintf(path, sizeof path, "%s/text_encoder", dir);
    if (l.oom) goto oom;
    if ((rc = write_component_(err, &l, 3, o, path, "model", o->max_shard_size))) goto out;
    list_free_(&l);

    char t[2048];
    const char *cls = c->variant == INIT_EDIT ? "QwenImageEditPipeline" : "QwenImageEditPlusPipeline";
    snprintf(t, sizeof t,
             "{\n  \"_class_name\": \"%s\",\n  \"_diffusers_version\": \"%s\",\n"
             "  \"_qie_init\": \"%s\",\n"
             "  \"processor\": [\"transformers\", \"Qwen2VLProcessor\"],\n"
             "  \"scheduler\": [\"diffusers\", \"FlowMatchEulerDiscreteScheduler\"],\n"
             "  \"text_encoder\": [\"transformers\", \"Qwen2_5_VLForConditionalGeneration\"],\n"
             "  \"tokenizer\": [\"transformers\", \"Qwen2Tokenizer\"],\n"
             "  \"transformer\": [\"diffusers\", \"QwenImageTransformer2DModel\"],\n"
             "  \"vae\": [\"diffusers\", \"AutoencoderKLQwenImage\"]\n}\n",
             cls, INIT_DIFFUSERS_VERSION, c->name ? c->name : "");
    snprintf(path, sizeof path, "%s/model_index.json", dir);
    rc = write_text_(err, path, t);
    goto out;
oom:
    qie_seterr(err, "out of memory");
    rc = QIE_ENOMEM;
out:
    list_free_(&l);
    return rc;
}
