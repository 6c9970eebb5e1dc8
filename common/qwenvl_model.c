/* qwenvl_model.c: Qwen2.5-VL weights (one ctx allocation), vision tower and LLM forward, and
 * qwenvl_encode (model.md §3.5-3.7). Written once against kernels/ops.h: fp32 on the CPU, bf16
 * on CUDA. Upstream references: transformers modeling_qwen2_5_vl.py
 * (Qwen2_5_VisionTransformerPretrainedModel.forward, Qwen2_5_VLModel.get_rope_index,
 * Qwen2_5_VLTextModel) and vision_utils.py (get_vision_window_index). */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "matmul.h"
#include "progress.h"
#include "qwen_attention.h"
#include "qwen_ops.h"
#include "qwenvl.h"
#include "rng.h"
#include "safetensors.h"

typedef struct {
    void *ln1;    /* [D] input_layernorm */
    void *qkv_w;  /* [(nh + 2 nkv)·hd, D]: q_proj | k_proj | v_proj rows, one GEMM */
    void *qkv_b;  /* [(nh + 2 nkv)·hd] */
    void *o_w;    /* [D, nh·hd], no bias */
    void *ln2;    /* [D] post_attention_layernorm */
    void *gu_w;   /* [2F, D]: gate_proj | up_proj rows */
    void *down_w; /* [D, F] */
} LlmLayer_;

typedef struct {
    void *norm1, *norm2;    /* [Dv] */
    void *qkv_w, *qkv_b;    /* [3Dv, Dv], [3Dv] */
    void *proj_w, *proj_b;  /* [Dv, Dv], [Dv] */
    void *gu_w, *gu_b;      /* [2Fv, Dv], [2Fv]: gate | up */
    void *down_w, *down_b;  /* [Dv, Fv], [Dv] */
} VitBlock_;

/* a grow-only scratch buffer in ctx memory */
typedef struct {
    void *p;
    size_t cap;
} Arena_;

struct QwenVL {
    QwenVLConfig cfg;
    Tokenizer *tok;
    OpCtx *ctx;
    void *params; /* one allocation, act dtype */
    size_t nparams;
    void *embed, *norm;              /* [V, D], [D] */
    LlmLayer_ *L;
    void *patch_w;                   /* [Dv, 3·2·14·14] */
    VitBlock_ *V;
    void *m_ln, *m0_w, *m0_b, *m2_w, *m2_b; /* merger: [Dv], [4Dv, 4Dv], [4Dv], [D, 4Dv], [D] */
    Arena_ act, f32, i32;
    /* cos/sin of (integer position · inv_freq[g]) for positions 0..n-1, computed once and grown:
     * the same fp32 products and cosf/sinf as computing them per token, without the cost */
    float *llm_cos, *llm_sin; /* [n_llm, head_dim/2] */
    int n_llm;
    float *vit_cos, *vit_sin; /* [n_vit, v_head_dim/4] */
    int n_vit;
};

/* grows a (cos, sin) table of rows 0..need-1 over `nf` frequencies inv[0..nf) */
static int trig_table_(float **cs, float **sn, int *have, int need, const float *inv, int nf) {
    if (need <= *have) return 0;
    int n = need + need / 2 + 64;
    float *c = realloc(*cs, (size_t)n * nf * sizeof *c), *s = NULL;
    if (!c) return QIE_ENOMEM;
    *cs = c;
    s = realloc(*sn, (size_t)n * nf * sizeof *s);
    if (!s) return QIE_ENOMEM;
    *sn = s;
    for (int p = *have; p < n; p++)
        for (int g = 0; g < nf; g++) {
            float a = (float)p * inv[g];
            c[(size_t)p * nf + g] = cosf(a);
            s[(size_t)p * nf + g] = sinf(a);
        }
    *have = n;
    return 0;
}

const QwenVLConfig *qwenvl_config(const QwenVL *m) { return &m->cfg; }
const Tokenizer *qwenvl_tokenizer(const QwenVL *m) { return m->tok; }
size_t qwenvl_param_count(const QwenVL *m) { return m->nparams; }

/* ---- parameter table ------------------------------------------------------------------------ */

#define MAX_PARTS 3
typedef struct {
    void **dst;
    size_t numel;
    int nparts;
    char name[MAX_PARTS][192];
    size_t part_numel[MAX_PARTS];
} ParamSpec_;

typedef struct {
    ParamSpec_ *v;
    int n, cap;
} SpecList_;

static int spec_add_(SpecList_ *l, void **dst, int nparts, ...) {
    if (l->n == l->cap) {
        int cap = l->cap ? 2 * l->cap : 256;
        ParamSpec_ *p = realloc(l->v, (size_t)cap * sizeof *p);
        if (!p) return QIE_ENOMEM;
        l->v = p;
        l->cap = cap;
    }
    ParamSpec_ *s = &l->v[l->n++];
    memset(s, 0, sizeof *s);
    s->dst = dst;
    s->nparts = nparts;
    va_list ap;
    va_start(ap, nparts);
    for (int i = 0; i < nparts; i++) {
        const char *nm = va_arg(ap, const char *);
        size_t ne = va_arg(ap, size_t);
        snprintf(s->name[i], sizeof s->name[i], "%s", nm);
        s->part_numel[i] = ne;
        s->numel += ne;
    }
    va_end(ap);
    return 0;
}

/* Block-major order (embedding, LLM layers, final norm, then the vision tower), so that a later
 * per-block prefetch or sharding can take contiguous ranges. */
static int build_specs_(QwenVL *m, const char *lp, const char *vp, SpecList_ *l) {
    const QwenVLConfig *c = &m->cfg;
    size_t D = (size_t)c->hidden, hd = (size_t)c->head_dim, nq = (size_t)c->heads * hd, nk = (size_t)c->kv_heads * hd;
    size_t F = (size_t)c->ffn, Dv = (size_t)c->v_hidden, Fv = (size_t)c->v_ffn;
    size_t pd = (size_t)c->in_ch * c->tpatch * c->patch * c->patch, mg = (size_t)c->merge * c->merge;
    char a[192], b[192], d[192];
    int rc = 0;
#define NM(buf, ...) (snprintf(buf, sizeof buf, __VA_ARGS__), buf)
    rc |= spec_add_(l, &m->embed, 1, NM(a, "%sembed_tokens.weight", lp), (size_t)c->vocab * D);
    for (int i = 0; i < c->layers && !rc; i++) {
        LlmLayer_ *L = &m->L[i];
        rc |= spec_add_(l, &L->ln1, 1, NM(a, "%slayers.%d.input_layernorm.weight", lp, i), D);
        rc |= spec_add_(l, &L->qkv_w, 3, NM(a, "%slayers.%d.self_attn.q_proj.weight", lp, i), nq * D,
                        NM(b, "%slayers.%d.self_attn.k_proj.weight", lp, i), nk * D,
                        NM(d, "%slayers.%d.self_attn.v_proj.weight", lp, i), nk * D);
        rc |= spec_add_(l, &L->qkv_b, 3, NM(a, "%slayers.%d.self_attn.q_proj.bias", lp, i), nq,
                        NM(b, "%slayers.%d.self_attn.k_proj.bias", lp, i), nk,
                        NM(d, "%slayers.%d.self_attn.v_proj.bias", lp, i), nk);
        rc |= spec_add_(l, &L->o_w, 1, NM(a, "%slayers.%d.self_attn.o_proj.weight", lp, i), D * nq);
        rc |= spec_add_(l, &L->ln2, 1, NM(a, "%slayers.%d.post_attention_layernorm.weight", lp, i), D);
        rc |= spec_add_(l, &L->gu_w, 2, NM(a, "%slayers.%d.mlp.gate_proj.weight", lp, i), F * D,
                        NM(b, "%slayers.%d.mlp.up_proj.weight", lp, i), F * D);
        rc |= spec_add_(l, &L->down_w, 1, NM(a, "%slayers.%d.mlp.down_proj.weight", lp, i), D * F);
    }
    rc |= spec_add_(l, &m->norm, 1, NM(a, "%snorm.weight", lp), D);
    rc |= spec_add_(l, &m->patch_w, 1, NM(a, "%spatch_embed.proj.weight", vp), Dv * pd);
    for (int j = 0; j < c->v_depth && !rc; j++) {
        VitBlock_ *V = &m->V[j];
        rc |= spec_add_(l, &V->norm1, 1, NM(a, "%sblocks.%d.norm1.weight", vp, j), Dv);
        rc |= spec_add_(l, &V->qkv_w, 1, NM(a, "%sblocks.%d.attn.qkv.weight", vp, j), 3 * Dv * Dv);
        rc |= spec_add_(l, &V->qkv_b, 1, NM(a, "%sblocks.%d.attn.qkv.bias", vp, j), 3 * Dv);
        rc |= spec_add_(l, &V->proj_w, 1, NM(a, "%sblocks.%d.attn.proj.weight", vp, j), Dv * Dv);
        rc |= spec_add_(l, &V->proj_b, 1, NM(a, "%sblocks.%d.attn.proj.bias", vp, j), Dv);
        rc |= spec_add_(l, &V->norm2, 1, NM(a, "%sblocks.%d.norm2.weight", vp, j), Dv);
        rc |= spec_add_(l, &V->gu_w, 2, NM(a, "%sblocks.%d.mlp.gate_proj.weight", vp, j), Fv * Dv,
                        NM(b, "%sblocks.%d.mlp.up_proj.weight", vp, j), Fv * Dv);
        rc |= spec_add_(l, &V->gu_b, 2, NM(a, "%sblocks.%d.mlp.gate_proj.bias", vp, j), Fv,
                        NM(b, "%sblocks.%d.mlp.up_proj.bias", vp, j), Fv);
        rc |= spec_add_(l, &V->down_w, 1, NM(a, "%sblocks.%d.mlp.down_proj.weight", vp, j), Dv * Fv);
        rc |= spec_add_(l, &V->down_b, 1, NM(a, "%sblocks.%d.mlp.down_proj.bias", vp, j), Dv);
    }
    rc |= spec_add_(l, &m->m_ln, 1, NM(a, "%smerger.ln_q.weight", vp), Dv);
    rc |= spec_add_(l, &m->m0_w, 1, NM(a, "%smerger.mlp.0.weight", vp), mg * Dv * mg * Dv);
    rc |= spec_add_(l, &m->m0_b, 1, NM(a, "%smerger.mlp.0.bias", vp), mg * Dv);
    rc |= spec_add_(l, &m->m2_w, 1, NM(a, "%smerger.mlp.2.weight", vp), D * mg * Dv);
    rc |= spec_add_(l, &m->m2_b, 1, NM(a, "%smerger.mlp.2.bias", vp), D);
#undef NM
    return rc ? QIE_ENOMEM : 0;
}

static size_t align64_(size_t n) { return (n + 63) & ~(size_t)63; }

/* one tensor (any float dtype) into act memory at dst */
static int upload_tensor_(char *err, OpCtx *ctx, void *dst, const StTensor *t) {
    if (t->dtype == QIE_DT_BF16) {
        qwen_upload_bf16(ctx, dst, t->data, t->numel);
        return 0;
    }
    float *tmp = malloc(t->numel * sizeof *tmp);
    if (!tmp) {
        qie_seterr(err, "%s: out of memory converting %llu elements", t->name, (unsigned long long)t->numel);
        return QIE_ENOMEM;
    }
    const unsigned char *s = t->data;
    for (uint64_t i = 0; i < t->numel; i++) {
        if (t->dtype == QIE_DT_F32) {
            memcpy(&tmp[i], s + 4 * i, 4);
        } else if (t->dtype == QIE_DT_F16) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            tmp[i] = f16_to_f32(h);
        } else {
            free(tmp);
            qie_seterr(err, "%s: dtype %s is not a float type the loader reads (bf16, f16, f32)", t->name,
                       dtype_name(t->dtype));
            return QIE_EUNSUPPORTED;
        }
    }
    op_upload_act(ctx, dst, tmp, t->numel);
    free(tmp);
    return 0;
}

static int load_weights_(char *err, QwenVL *m, const char *te_dir) {
    StModel *sm = NULL;
    SpecList_ specs = {0};
    int rc = st_model_open(err, te_dir, &sm);
    if (rc) return rc;
    const char *lp = "model.language_model.", *vp = "model.visual.";
    if (!st_model_find(sm, "model.language_model.embed_tokens.weight")) {
        lp = "model.";
        vp = "visual.";
    }
    if ((rc = build_specs_(m, lp, vp, &specs))) {
        qie_seterr(err, "weights: out of memory");
        goto out;
    }
    size_t total = 0;
    for (int i = 0; i < specs.n; i++) total += align64_(specs.v[i].numel);
    m->params = op_alloc(m->ctx, total * op_act_size(m->ctx));
    size_t off = 0, count = 0;
    for (int i = 0; i < specs.n; i++) {
        ParamSpec_ *s = &specs.v[i];
        char *base = (char *)m->params + off * op_act_size(m->ctx);
        *s->dst = base;
        size_t sub = 0;
        for (int k = 0; k < s->nparts; k++) {
            const StTensor *t = st_model_find(sm, s->name[k]);
            if (!t) {
                qie_seterr(err, "%s: tensor %s is missing", te_dir, s->name[k]);
                rc = QIE_EMISMATCH;
                goto out;
            }
            if (t->numel != s->part_numel[k]) {
                qie_seterr(err, "%s: tensor %s has %llu elements, the config implies %zu", te_dir, s->name[k],
                           (unsigned long long)t->numel, s->part_numel[k]);
                rc = QIE_EMISMATCH;
                goto out;
            }
            if ((rc = upload_tensor_(err, m->ctx, base + sub * op_act_size(m->ctx), t))) goto out;
            sub += t->numel;
        }
        off += align64_(s->numel);
        count += s->numel;
    }
    m->nparams = count;
out:
    free(specs.v);
    st_model_close(&sm);
    return rc;
}

int qwenvl_create(char *err, const char *dir, OpCtx *ctx, QwenVL **out) {
    QwenVL *m = calloc(1, sizeof *m);
    if (!m) return QIE_ENOMEM;
    m->ctx = ctx;
    char te[4096], tokd[4096], procd[4096];
    qwenvl_paths_(dir, te, sizeof te, tokd, procd);
    int rc = qwenvl_config_load(err, dir, &m->cfg);
    if (rc) goto fail;
    if ((rc = tok_create(err, tokd, &m->tok))) goto fail;
    QwenVLConfig *c = &m->cfg;
    int32_t ip = tok_token_id(m->tok, "<|image_pad|>"), vs = tok_token_id(m->tok, "<|vision_start|>"),
            ve = tok_token_id(m->tok, "<|vision_end|>");
    if (ip != c->image_token_id || vs != c->vision_start_id || ve != c->vision_end_id) {
        qie_seterr(err, "%s: tokenizer ids of <|image_pad|>/<|vision_start|>/<|vision_end|> (%d/%d/%d) differ from the "
                   "config's (%d/%d/%d)", dir, ip, vs, ve, c->image_token_id, c->vision_start_id, c->vision_end_id);
        rc = QIE_EMISMATCH;
        goto fail;
    }
    c->pad_id = tok_token_id(m->tok, "<|endoftext|>");
    if ((int)tok_vocab_size(m->tok) > c->vocab) {
        qie_seterr(err, "%s: tokenizer has %zu ids, the embedding %d rows", dir, tok_vocab_size(m->tok), c->vocab);
        rc = QIE_EMISMATCH;
        goto fail;
    }
    m->L = calloc((size_t)c->layers, sizeof *m->L);
    m->V = calloc((size_t)c->v_depth, sizeof *m->V);
    if (!m->L || !m->V) { rc = QIE_ENOMEM; qie_seterr(err, "out of memory"); goto fail; }
    if ((rc = load_weights_(err, m, te))) goto fail;
    *out = m;
    return 0;
fail:
    qwenvl_destroy(&m);
    return rc;
}

int qwenvl_create_random(char *err, OpCtx *ctx, const QwenVLConfig *cfg, const char *tok_dir, uint64_t seed,
                         QwenVL **out) {
    QwenVL *m = calloc(1, sizeof *m);
    SpecList_ specs = {0};
    float *ones = NULL, *chunk = NULL;
    if (!m) return QIE_ENOMEM;
    m->ctx = ctx;
    m->cfg = *cfg;
    int rc = tok_create(err, tok_dir, &m->tok);
    if (rc) goto fail;
    m->cfg.image_token_id = tok_token_id(m->tok, "<|image_pad|>");
    m->cfg.vision_start_id = tok_token_id(m->tok, "<|vision_start|>");
    m->cfg.vision_end_id = tok_token_id(m->tok, "<|vision_end|>");
    m->cfg.pad_id = tok_token_id(m->tok, "<|endoftext|>");
    m->L = calloc((size_t)cfg->layers, sizeof *m->L);
    m->V = calloc((size_t)cfg->v_depth, sizeof *m->V);
    if (!m->L || !m->V || build_specs_(m, "", "", &specs)) { rc = QIE_ENOMEM; goto fail; }
    size_t total = 0, as = op_act_size(ctx), maxd = 0;
    for (int i = 0; i < specs.n; i++) total += align64_(specs.v[i].numel);
    m->params = op_alloc(ctx, total * as);
    const size_t CH = (size_t)1 << 26;
#ifdef QIE_CUDA
    if (ctx->dev == QIE_DEV_CUDA) chunk = op_alloc(ctx, CH * sizeof(float));
#endif
    size_t off = 0;
    for (int i = 0; i < specs.n; i++) {
        ParamSpec_ *s = &specs.v[i];
        *s->dst = (char *)m->params + off * as;
        off += align64_(s->numel);
        m->nparams += s->numel;
        if (strstr(s->name[0], "norm") || strstr(s->name[0], "ln_q")) {
            if (s->numel > maxd) maxd = s->numel;
            continue;
        }
        for (size_t done = 0; done < s->numel; done += CH) {
            size_t n = s->numel - done < CH ? s->numel - done : CH;
            char *dst = (char *)*s->dst + done * as;
#ifdef QIE_CUDA
            if (ctx->dev == QIE_DEV_CUDA) {
                if ((rc = rng_normal(chunk, n, seed, (uint64_t)i, done, ctx->stream))) {
                    qie_seterr(err, "random text encoder: rng_normal failed");
                    goto fail;
                }
                op_f32_to_act(ctx, dst, chunk, n);
            } else
#endif
                if ((rc = rng_normal_cpu((float *)dst, n, seed, (uint64_t)i, done))) {
                qie_seterr(err, "random text encoder: rng_normal_cpu failed");
                goto fail;
            }
            op_scale(ctx, dst, 0.02f, n);
        }
    }
    ones = malloc((maxd ? maxd : 1) * sizeof *ones);
    if (!ones) { rc = QIE_ENOMEM; goto fail; }
    for (size_t k = 0; k < maxd; k++) ones[k] = 1.0f;
    for (int i = 0; i < specs.n; i++)
        if (strstr(specs.v[i].name[0], "norm") || strstr(specs.v[i].name[0], "ln_q"))
            op_upload_act(ctx, *specs.v[i].dst, ones, specs.v[i].numel);
    op_sync(ctx);
    op_free(ctx, chunk);
    free(ones);
    free(specs.v);
    *out = m;
    return 0;
fail:
    if (rc == QIE_ENOMEM) qie_seterr(err, "random text encoder: out of memory");
    op_free(ctx, chunk);
    free(ones);
    free(specs.v);
    qwenvl_destroy(&m);
    return rc;
}

void qwenvl_destroy(QwenVL **mp) {
    if (!mp || !*mp) return;
    QwenVL *m = *mp;
    if (m->ctx) {
        op_free(m->ctx, m->params);
        op_free(m->ctx, m->act.p);
        op_free(m->ctx, m->f32.p);
        op_free(m->ctx, m->i32.p);
    }
    tok_destroy(&m->tok);
    free(m->L);
    free(m->V);
    free(m->llm_cos);
    free(m->llm_sin);
    free(m->vit_cos);
    free(m->vit_sin);
    free(m);
    *mp = NULL;
}

/* ---- scratch -------------------------------------------------------------------------------- */

static void arena_reserve_(OpCtx *c, Arena_ *a, size_t bytes) {
    if (bytes <= a->cap) return;
    op_free(c, a->p);
    a->cap = bytes + bytes / 4;
    a->p = op_alloc(c, a->cap);
}

/* carves `n` elements of `esize` bytes from a bump cursor (64-element aligned) */
static void *carve_(char *base, size_t *cur, size_t n, size_t esize) {
    void *p = base + *cur * esize;
    *cur += align64_(n);
    return p;
}

static void *off_(const QwenVL *m, void *p, size_t elems) { return (char *)p + elems * op_act_size(m->ctx); }

/* QWENVL_PROFILE: time spent in attention vs the rest (synchronising around each call) */
static int prof_on_(void) {
    static int on = -1;
    if (on < 0) on = getenv("QWENVL_PROFILE") != NULL;
    return on;
}
static double prof_attn_s_ = 0;
static double prof_mark_(OpCtx *ctx) {
    if (!prof_on_()) return 0;
    op_sync(ctx);
    return progress_now();
}

/* ---- vision tower ------------------------------------------------------------------------ */

typedef struct {
    int P, U;           /* patches, merged units over all images */
    int32_t *perm;      /* [P] window order: new row i <- processor row perm[i] */
    int32_t *unperm;    /* [U] final unit j <- merged row unperm[j] (argsort of the window index) */
    int32_t *wlo, *whi; /* [P] window of each (window-ordered) row */
    int32_t *flo, *fhi; /* [P] image of each row */
    float *cos, *sin;   /* [P, hd_v] 2-D rotary tables in window order */
} VitPlan_;

static void vit_plan_free_(VitPlan_ *p) {
    free(p->perm); free(p->unperm); free(p->wlo); free(p->whi); free(p->flo); free(p->fhi);
    free(p->cos); free(p->sin);
    memset(p, 0, sizeof *p);
}

/* get_vision_window_index + get_vision_position_ids + the rotary embedding, on the host */
static int vit_plan_(QwenVL *mdl, const int *gh, const int *gw, int nimg, VitPlan_ *p) {
    const QwenVLConfig *c = &mdl->cfg;
    memset(p, 0, sizeof *p);
    int m = c->merge, mu = m * m, hd = c->v_head_dim, ws = c->window / c->patch / c->merge;
    for (int k = 0; k < nimg; k++) p->P += gh[k] * gw[k];
    p->U = p->P / mu;
    size_t P = (size_t)p->P;
    p->perm = malloc(P * sizeof *p->perm);
    p->unperm = malloc((size_t)(p->U ? p->U : 1) * sizeof *p->unperm);
    p->wlo = malloc(P * sizeof(int32_t));
    p->whi = malloc(P * sizeof(int32_t));
    p->flo = malloc(P * sizeof(int32_t));
    p->fhi = malloc(P * sizeof(int32_t));
    p->cos = malloc(P * hd * sizeof(float));
    p->sin = malloc(P * hd * sizeof(float));
    if (!p->perm || !p->unperm || !p->wlo || !p->whi || !p->flo || !p->fhi || !p->cos || !p->sin) {
        vit_plan_free_(p);
        return QIE_ENOMEM;
    }
    /* inv_freq = 1 / theta^(arange(0, hd/2, 2) / (hd/2)), fp32 as torch computes it */
    int q = hd / 4, maxside = 0;
    float inv[64];
    for (int j = 0; j < q; j++) inv[j] = 1.0f / powf((float)c->v_rope_theta, (float)(2 * j) / (float)(hd / 2));
    for (int k = 0; k < nimg; k++) maxside = gh[k] > maxside ? gh[k] : gw[k] > maxside ? gw[k] : maxside;
    if (trig_table_(&mdl->vit_cos, &mdl->vit_sin, &mdl->n_vit, maxside + 1, inv, q)) {
        vit_plan_free_(p);
        return QIE_ENOMEM;
    }
    const float *tc = mdl->vit_cos, *ts = mdl->vit_sin;
    int i = 0, ubase = 0;
    for (int k = 0; k < nimg; k++) {
        int hm = gh[k] / m, wm = gw[k] / m, pbase = ubase * mu;
        int img_lo = pbase, img_hi = pbase + gh[k] * gw[k];
        for (int wy = 0; wy * ws < hm; wy++)
            for (int wx = 0; wx * ws < wm; wx++) {
                int y1 = (wy + 1) * ws < hm ? (wy + 1) * ws : hm, x1 = (wx + 1) * ws < wm ? (wx + 1) * ws : wm;
                int wstart = i, wlen = (y1 - wy * ws) * (x1 - wx * ws) * mu;
                for (int uy = wy * ws; uy < y1; uy++)
                    for (int ux = wx * ws; ux < x1; ux++) {
                        int u = uy * wm + ux; /* unit index within the image, row-major */
                        p->unperm[ubase + u] = i / mu;
                        for (int s = 0; s < mu; s++, i++) {
                            p->perm[i] = (ubase + u) * mu + s;
                            p->wlo[i] = wstart;
                            p->whi[i] = wstart + wlen;
                            p->flo[i] = img_lo;
                            p->fhi[i] = img_hi;
                            int y = uy * m + s / m, x = ux * m + s % m;
                            float *cr = p->cos + (size_t)i * hd, *sr = p->sin + (size_t)i * hd;
                            for (int j = 0; j < q; j++) {
                                cr[j] = cr[j + 2 * q] = tc[(size_t)y * q + j];
                                sr[j] = sr[j + 2 * q] = ts[(size_t)y * q + j];
                                cr[q + j] = cr[3 * q + j] = tc[(size_t)x * q + j];
                                sr[q + j] = sr[3 * q + j] = ts[(size_t)x * q + j];
                            }
                        }
                    }
            }
        ubase += hm * wm;
    }
    return 0;
}

/* rows: processor rows of every image [P, patch_dim] (host f32); writes [U, D] act into out */
static int vision_forward_(char *err, QwenVL *m, const QwenVLPrep *preps, int n, const int *gh, const int *gw, int nimg,
                           void *out) {
    const QwenVLConfig *c = &m->cfg;
    OpCtx *ctx = m->ctx;
    VitPlan_ pl;
    double tv0 = prof_mark_(ctx);
    if (vit_plan_(m, gh, gw, nimg, &pl)) {
        qie_seterr(err, "vision tower: out of memory");
        return QIE_ENOMEM;
    }
    size_t P = (size_t)pl.P, U = (size_t)pl.U, Dv = (size_t)c->v_hidden, Fv = (size_t)c->v_ffn, hd = (size_t)c->v_head_dim;
    size_t pd = (size_t)c->in_ch * c->tpatch * c->patch * c->patch, mu = (size_t)c->merge * c->merge, D = (size_t)c->hidden;
    /* scratch: act, f32, i32 */
    size_t n_act = align64_(P * pd) + align64_(P * Dv) * 4 + align64_(P * 3 * Dv) + align64_(P * 2 * Fv) +
                   align64_(P * Fv) + align64_(U * mu * Dv) + align64_(U * D) + 64 * 8;
    size_t n_f32 = 2 * align64_(P * hd) + 64;
    size_t n_i32 = 5 * align64_(P) + align64_(U) + 64;
    arena_reserve_(ctx, &m->act, n_act * op_act_size(ctx));
    arena_reserve_(ctx, &m->f32, n_f32 * sizeof(float));
    arena_reserve_(ctx, &m->i32, n_i32 * sizeof(int32_t));
    size_t ca = 0, cf = 0, ci = 0;
    size_t as = op_act_size(ctx);
    void *b_rows = carve_(m->act.p, &ca, P * pd, as), *b_a = carve_(m->act.p, &ca, P * Dv, as);
    void *x = carve_(m->act.p, &ca, P * Dv, as), *h = carve_(m->act.p, &ca, P * Dv, as);
    void *att = carve_(m->act.p, &ca, P * Dv, as), *qkv = carve_(m->act.p, &ca, P * 3 * Dv, as);
    void *gu = carve_(m->act.p, &ca, P * 2 * Fv, as), *sw = carve_(m->act.p, &ca, P * Fv, as);
    void *mt = carve_(m->act.p, &ca, U * mu * Dv, as), *mo = carve_(m->act.p, &ca, U * D, as);
    float *d_cos = carve_(m->f32.p, &cf, P * hd, 4), *d_sin = carve_(m->f32.p, &cf, P * hd, 4);
    int32_t *d_perm = carve_(m->i32.p, &ci, P, 4), *d_wlo = carve_(m->i32.p, &ci, P, 4), *d_whi = carve_(m->i32.p, &ci, P, 4);
    int32_t *d_flo = carve_(m->i32.p, &ci, P, 4), *d_fhi = carve_(m->i32.p, &ci, P, 4), *d_unp = carve_(m->i32.p, &ci, U, 4);
    /* each sample's processor rows straight into place: no packed host copy */
    for (size_t i = 0, r = 0; i < (size_t)n; r += (size_t)preps[i].np, i++)
        if (preps[i].np) op_upload_act(ctx, off_(m, b_rows, r * pd), preps[i].rows, (size_t)preps[i].np * pd);
    op_upload_f32(ctx, d_cos, pl.cos, P * hd);
    op_upload_f32(ctx, d_sin, pl.sin, P * hd);
    qwen_upload_i32(ctx, d_perm, pl.perm, P);
    qwen_upload_i32(ctx, d_wlo, pl.wlo, P);
    qwen_upload_i32(ctx, d_whi, pl.whi, P);
    qwen_upload_i32(ctx, d_flo, pl.flo, P);
    qwen_upload_i32(ctx, d_fhi, pl.fhi, P);
    qwen_upload_i32(ctx, d_unp, pl.unperm, U);
    int Pi = (int)P, Dvi = (int)Dv, Fvi = (int)Fv, hdi = (int)hd;
    float scale = 1.0f / sqrtf((float)hd);
    if (prof_on_()) {
        double tu = prof_mark_(ctx);
        log_info("vision: plan + uploads %.1f ms", (tu - tv0) * 1e3);
    }
    /* patch embed (Conv3d with stride = kernel = a GEMM over the rows), then window order */
    op_matmul(ctx, b_a, b_rows, m->patch_w, NULL, Pi, (int)pd, Dvi);
    op_qwen_gather_rows(ctx, x, b_a, d_perm, Pi, Dvi);
    for (int j = 0; j < c->v_depth; j++) {
        const VitBlock_ *B = &m->V[j];
        int full = c->v_full[j];
        op_qwen_rmsnorm(ctx, h, x, B->norm1, Pi, Dvi, 1e-6f);
        op_matmul(ctx, qkv, h, B->qkv_w, B->qkv_b, Pi, Dvi, 3 * Dvi);
        /* q: columns [0, Dv), k: [Dv, 2Dv); heads of hd each; rotation in fp32 */
        op_qwen_rope(ctx, qkv, 3 * Dvi, Pi, c->v_heads, hdi, d_cos, d_sin, 0);
        op_qwen_rope(ctx, off_(m, qkv, Dv), 3 * Dvi, Pi, c->v_heads, hdi, d_cos, d_sin, 0);
        double ta = prof_mark_(ctx);
        op_qwen_attention(ctx, att, qkv, 3 * Dvi, off_(m, qkv, Dv), off_(m, qkv, 2 * Dv), 3 * Dvi, Pi, c->v_heads,
                          c->v_heads, hdi, full ? d_flo : d_wlo, full ? d_fhi : d_whi, scale);
        if (prof_on_()) prof_attn_s_ += prof_mark_(ctx) - ta;
        op_matmul(ctx, h, att, B->proj_w, B->proj_b, Pi, Dvi, Dvi);
        op_add_inplace(ctx, x, h, P * Dv);
        op_qwen_rmsnorm(ctx, h, x, B->norm2, Pi, Dvi, 1e-6f);
        op_matmul(ctx, gu, h, B->gu_w, B->gu_b, Pi, Dvi, 2 * Fvi);
        op_qwen_swiglu(ctx, sw, gu, Pi, Fvi);
        op_matmul(ctx, h, sw, B->down_w, B->down_b, Pi, Fvi, Dvi);
        op_add_inplace(ctx, x, h, P * Dv);
    }
    /* patch merger: RMSNorm, 4 rows -> one, Linear, exact GELU, Linear; then undo the window order */
    op_qwen_rmsnorm(ctx, h, x, m->m_ln, Pi, Dvi, 1e-6f);
    op_matmul(ctx, mt, h, m->m0_w, m->m0_b, (int)U, (int)(mu * Dv), (int)(mu * Dv));
    op_qwen_gelu_erf(ctx, mt, U * mu * Dv);
    op_matmul(ctx, mo, mt, m->m2_w, m->m2_b, (int)U, (int)(mu * Dv), (int)D);
    op_qwen_gather_rows(ctx, out, mo, d_unp, (int)U, (int)D);
    vit_plan_free_(&pl);
    return 0;
}

/* ---- LLM and the batch ----------------------------------------------------------------------- */

int qwenvl_encode(char *err, QwenVL *m, const QwenVLPrep *preps, int n, float **out, int *len) {
    const QwenVLConfig *c = &m->cfg;
    OpCtx *ctx = m->ctx;
    int rc = 0;
    double tq0 = progress_now();
    for (int i = 0; i < n; i++) out[i] = NULL;
    size_t T = 0, P = 0, U = 0;
    int nimg = 0, mu = c->merge * c->merge;
    for (int i = 0; i < n; i++) {
        T += (size_t)preps[i].n;
        P += (size_t)preps[i].np;
        nimg += preps[i].nimages;
    }
    U = P / (size_t)mu;
    size_t D = (size_t)c->hidden, hd = (size_t)c->head_dim, nq = (size_t)c->heads * hd, nk = (size_t)c->kv_heads * hd;
    size_t F = (size_t)c->ffn, W = nq + 2 * nk;
    /* host-side inputs of the packed batch */
    int32_t *ids = malloc(T * sizeof *ids), *lo = malloc(T * sizeof *lo), *hi = malloc(T * sizeof *hi);
    int32_t *padrows = malloc((U ? U : 1) * sizeof *padrows);
    float *cosb = malloc(T * hd * sizeof *cosb), *sinb = malloc(T * hd * sizeof *sinb);
    int *gh = malloc((size_t)(nimg ? nimg : 1) * sizeof *gh), *gw = malloc((size_t)(nimg ? nimg : 1) * sizeof *gw);
    float *host = malloc(T * D * sizeof *host);
    if (!ids || !lo || !hi || !padrows || !cosb || !sinb || !gh || !gw || !host) {
        qie_seterr(err, "encode: out of memory for %zu tokens", T);
        rc = QIE_ENOMEM;
        goto done;
    }
    /* M-RoPE tables: feature i uses frequency g = i mod hd/2 on axis t, h or w by mrope_section;
     * inv_freq and the angle in fp32 as torch (Qwen2_5_VLRotaryEmbedding) */
    float inv[64];
    int h2 = (int)hd / 2, maxpos = 0;
    for (int g = 0; g < h2; g++) inv[g] = 1.0f / powf((float)c->rope_theta, (float)(2 * g) / (float)hd);
    for (int i = 0; i < n; i++)
        for (size_t r = 0; r < 3 * (size_t)preps[i].n; r++)
            if (preps[i].pos[r] > maxpos) maxpos = preps[i].pos[r];
    if (trig_table_(&m->llm_cos, &m->llm_sin, &m->n_llm, maxpos + 1, inv, h2)) {
        qie_seterr(err, "encode: out of memory for the rotary tables");
        rc = QIE_ENOMEM;
        goto done;
    }
    size_t t0 = 0, p0 = 0, u0 = 0;
    int k0 = 0;
    for (int i = 0; i < n; i++) {
        const QwenVLPrep *p = &preps[i];
        size_t L = (size_t)p->n;
        memcpy(ids + t0, p->ids, L * sizeof *ids);
        for (size_t r = 0; r < L; r++) {
            lo[t0 + r] = (int32_t)t0;
            hi[t0 + r] = (int32_t)(t0 + r + 1);
            if (p->ids[r] == c->image_token_id) padrows[u0++] = (int32_t)(t0 + r);
            float *cr = cosb + (t0 + r) * hd, *sr = sinb + (t0 + r) * hd;
            for (int g = 0; g < h2; g++) {
                int axis = g < c->mrope[0] ? 0 : g < c->mrope[0] + c->mrope[1] ? 1 : 2;
                size_t at = (size_t)p->pos[(size_t)axis * L + r] * h2 + g;
                cr[g] = cr[g + h2] = m->llm_cos[at];
                sr[g] = sr[g + h2] = m->llm_sin[at];
            }
        }
        for (int k = 0; k < p->nimages; k++) {
            gh[k0 + k] = p->gh[k];
            gw[k0 + k] = p->gw[k];
        }
        t0 += L;
        p0 += (size_t)p->np;
        k0 += p->nimages;
    }
    if (u0 != U) {
        qie_seterr(err, "encode: %zu image-pad tokens for %zu vision rows", u0, U);
        rc = QIE_EFORMAT;
        goto done;
    }
    /* QWENVL_PROFILE=1: synchronise and log the phases (benchmarks; costs the overlap) */
    static int prof = -1;
    if (prof < 0) prof = getenv("QWENVL_PROFILE") != NULL;
    double tp0 = prof ? (op_sync(ctx), progress_now()) : 0, tp1 = 0, tp2 = 0;
    /* vision rows first (they use the arenas as scratch), kept in a buffer of their own */
    void *vis = U ? op_alloc(ctx, U * D * op_act_size(ctx)) : NULL;
    if (U && (rc = vision_forward_(err, m, preps, n, gh, gw, nimg, vis))) {
        op_free(ctx, vis);
        goto done;
    }
    if (prof) {
        op_sync(ctx);
        tp1 = progress_now();
    }
    size_t as = op_act_size(ctx);
    size_t n_act = align64_(T * D) * 3 + align64_(T * W) + align64_(T * nq) + align64_(T * 2 * F) + align64_(T * F) + 64 * 8;
    arena_reserve_(ctx, &m->act, n_act * as);
    arena_reserve_(ctx, &m->f32, (2 * align64_(T * hd) + 64) * sizeof(float));
    arena_reserve_(ctx, &m->i32, (4 * align64_(T) + align64_(U) + 64) * sizeof(int32_t));
    size_t ca = 0, cf = 0, ci = 0;
    void *x = carve_(m->act.p, &ca, T * D, as), *h = carve_(m->act.p, &ca, T * D, as), *tmp = carve_(m->act.p, &ca, T * D, as);
    void *qkv = carve_(m->act.p, &ca, T * W, as), *att = carve_(m->act.p, &ca, T * nq, as);
    void *gu = carve_(m->act.p, &ca, T * 2 * F, as), *sw = carve_(m->act.p, &ca, T * F, as);
    float *d_cos = carve_(m->f32.p, &cf, T * hd, 4), *d_sin = carve_(m->f32.p, &cf, T * hd, 4);
    int32_t *d_ids = carve_(m->i32.p, &ci, T, 4), *d_lo = carve_(m->i32.p, &ci, T, 4), *d_hi = carve_(m->i32.p, &ci, T, 4);
    int32_t *d_pad = carve_(m->i32.p, &ci, U, 4);
    qwen_upload_i32(ctx, d_ids, ids, T);
    qwen_upload_i32(ctx, d_lo, lo, T);
    qwen_upload_i32(ctx, d_hi, hi, T);
    if (U) qwen_upload_i32(ctx, d_pad, padrows, U);
    op_upload_f32(ctx, d_cos, cosb, T * hd);
    op_upload_f32(ctx, d_sin, sinb, T * hd);
    int Ti = (int)T, Di = (int)D, Wi = (int)W, hdi = (int)hd, Fi = (int)F;
    float scale = 1.0f / sqrtf((float)hd);
    /* embeddings, with the vision rows in place of the image pads (masked_scatter) */
    op_qwen_gather_rows(ctx, x, m->embed, d_ids, Ti, Di);
    if (U) op_qwen_scatter_rows(ctx, x, vis, d_pad, (int)U, Di);
    for (int l = 0; l < c->layers; l++) {
        const LlmLayer_ *B = &m->L[l];
        op_qwen_rmsnorm(ctx, h, x, B->ln1, Ti, Di, (float)c->rms_eps);
        op_matmul(ctx, qkv, h, B->qkv_w, B->qkv_b, Ti, Di, Wi);
        op_qwen_rope(ctx, qkv, Wi, Ti, c->heads, hdi, d_cos, d_sin, 1);
        op_qwen_rope(ctx, off_(m, qkv, nq), Wi, Ti, c->kv_heads, hdi, d_cos, d_sin, 1);
        double ta = prof_mark_(ctx);
        op_qwen_attention(ctx, att, qkv, Wi, off_(m, qkv, nq), off_(m, qkv, nq + nk), Wi, Ti, c->heads, c->kv_heads, hdi,
                          d_lo, d_hi, scale);
        if (prof_on_()) prof_attn_s_ += prof_mark_(ctx) - ta;
        op_matmul(ctx, tmp, att, B->o_w, NULL, Ti, (int)nq, Di);
        op_add_inplace(ctx, x, tmp, T * D);
        op_qwen_rmsnorm(ctx, h, x, B->ln2, Ti, Di, (float)c->rms_eps);
        op_matmul(ctx, gu, h, B->gu_w, NULL, Ti, Di, 2 * Fi);
        op_qwen_swiglu(ctx, sw, gu, Ti, Fi);
        op_matmul(ctx, tmp, sw, B->down_w, NULL, Ti, Fi, Di);
        op_add_inplace(ctx, x, tmp, T * D);
    }
    op_qwen_rmsnorm(ctx, h, x, m->norm, Ti, Di, (float)c->rms_eps);
    if (prof) {
        op_sync(ctx);
        tp2 = progress_now();
    }
    op_download_act(ctx, host, h, T * D);
    if (prof) {
        log_info("qwenvl_encode: %d prompts, %zu tokens, %zu patches: host tables %.1f ms, vision %.1f ms, LLM %.1f ms, "
                 "download %.1f ms; attention (both) %.1f ms", n, T, P, (tp0 - tq0) * 1e3, (tp1 - tp0) * 1e3,
                 (tp2 - tp1) * 1e3, (progress_now() - tp2) * 1e3, prof_attn_s_ * 1e3);
        prof_attn_s_ = 0;
    }
    op_free(ctx, vis);
    t0 = 0;
    for (int i = 0; i < n; i++) {
        size_t L = (size_t)preps[i].n, keep = L - QWENVL_DROP_IDX;
        out[i] = malloc(keep * D * sizeof(float));
        if (!out[i]) {
            for (int j = 0; j < i; j++) { free(out[j]); out[j] = NULL; }
            qie_seterr(err, "encode: out of memory for the outputs");
            rc = QIE_ENOMEM;
            goto done;
        }
        memcpy(out[i], host + (t0 + QWENVL_DROP_IDX) * D, keep * D * sizeof(float));
        len[i] = (int)keep;
        t0 += L;
    }
done:
    free(ids); free(lo); free(hi); free(padrows); free(cosb); free(sinb); free(gh); free(gw); free(host);
    return rc;
}
