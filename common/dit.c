/* dit.c: QwenImageTransformer2DModel forward and backward over kernels/ops.h (spec/model.md 1.4-1.11).
 * The same code runs on the CPU (fp32 reference) and on CUDA (bf16 activations); every op call names
 * the upstream step it implements. Activations live in one arena sized per call shape.
 *
 * Stream layout: the image stream hx [B, N_img, D] and the text stream he [B, N_txt, D] are kept
 * apart (each has its own weights); attention runs on the joint sequence [B, S, D], S = N_txt + N_img,
 * TEXT FIRST (diffusers QwenDoubleStreamAttnProcessor2_0 concatenates [txt, img]). The fused q/k
 * norm + RoPE op scatters each stream's q, k, v into it; the output projections read each stream's
 * rows back, one GEMM per sample (rows of a sample are contiguous, streams interleave across samples).
 *
 * Gradient checkpointing (m->grad_ckpt): the forward keeps only each block's input residuals
 * (hx[l], he[l]) and one block's activation set; the backward recomputes block l into that set
 * before differentiating it (torch.utils.checkpoint per block, as the reference trainer runs).
 * With m->keep_attn the forward also keeps each block's attention output O and log-sum-exp, and
 * the recompute skips the attention itself (the dearest op of a block; the kept values are the
 * ones the recompute would produce, bit for bit).
 *
 * Parameter hook (dit.h DitHook): every use of a range's parameters or gradients is bracketed
 * (acquire/release, grad_begin/grad_end), so ZeRO-3 can gather block l just before it runs and
 * reduce-scatter its gradient right after; without a hook the brackets do nothing. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adaln.h"
#include "attention.h"
#include "dit.h"
#include "err.h"
#include "gelu.h"
#include "layernorm.h"
#include "rmsnorm.h"
#include "rope.h"
#include "timestep.h"

typedef struct {
    void *mod;                  /* [Bm, 6D]: shift1 scale1 gate1 shift2 scale2 gate2 (spec 1.6) */
    float *ln1_mean, *ln1_rstd; /* [R] */
    void *a1;                   /* [R, D]   LN1 + modulation */
    void *qkv;                  /* [R, 3D]  fused q|k|v projection */
    float *qk_rstd;             /* [R, 2H] */
    void *y;                    /* [R, D]   attention output projection */
    void *hm;                   /* [R, D]   residual after the attention sub-block */
    float *ln2_mean, *ln2_rstd; /* [R] */
    void *a2;                   /* [R, D] */
    void *u;                    /* [R, 4D]  MLP pre-activation */
    void *g;                    /* [R, 4D]  GELU output */
    void *mm;                   /* [R, D]   MLP output */
} StreamActs;

typedef struct {
    StreamActs s[2];            /* 0: image, 1: text */
    void *Q, *K, *V, *O;        /* [B, S, D] joint, text first */
    float *lse;                 /* [B, H, S] */
} BlockActs;

struct DitActs {
    DitShape sh;
    int B, Bm, N[2], S, n0;     /* N[0] image tokens, N[1] text tokens; n0 target tokens */
    int has_mask;
    void *arena;
    size_t cap, used;
    void **h[2];                /* [L+1] residual streams (image, text) */
    void **Okeep;               /* keep_attn: [L] attention outputs [B, S, D] */
    float **lsekeep;            /* keep_attn: [L] log-sum-exp [B, H, S] */
    BlockActs *blk;
    int nblk;
    /* top level */
    void *txtn;                 /* [B·N_t, J] RMSNorm(txt) */
    float *txt_rstd;            /* [B·N_t] */
    void *sinus, *t1, *t1s, *temb, *stemb; /* [Bm, 256], [Bm, D] x4 */
    void *mod_out;              /* [B, 2D]: scale | shift (spec 1.8: scale first) */
    float *lno_mean, *lno_rstd; /* [B·N_i] */
    void *a_out, *out;          /* [B·N_i, D], [B·N_i, out_dim] */
    float *key_valid;           /* [B, S] or NULL */
    float *cs[2];               /* RoPE tables [N, d/2, 2]: image, text */
    DitShape rope_sh;           /* the shape the tables in cs were made for ... */
    float *rope_cs[2];          /* ... at these addresses (NULL: none made since the arena was made) */
    /* backward scratch */
    void *dh[2], *d_mod[2], *dA, *d_qkv, *d_y, *d_u, *dQ, *dK, *dV, *dO;
    void *d_stemb, *d_tmp, *d_temb, *d_t1s, *d_txtn, *d_modout, *d_aout;
    const void *x, *txt;        /* borrowed inputs of the last forward */
    int have_fwd;
};

/* ---- helpers ------------------------------------------------------------------------------ */

static inline void *at_(const Dit *m, const void *p, size_t elems) {
    return (char *)p + elems * op_act_size(m->ctx);
}

void *dit_param(const Dit *m, int layer, int t) {
    return m->params ? at_(m, m->params, m->lay.tensors[dit_tensor_index(&m->lay, layer, t)].offset) : NULL;
}

float *dit_grad(const Dit *m, int layer, int t) {
    return m->grads ? m->grads + m->lay.tensors[dit_tensor_index(&m->lay, layer, t)].offset : NULL;
}

/* What the model reads and writes: the range's base from the hook (DitHook) when one handed it
 * out, else the resident buffer. */
static void *param_(const Dit *m, int layer, int t) {
    const int r = dit_range_of_layer(&m->lay, layer);
    if (!m->rp[r]) return dit_param(m, layer, t);
    return at_(m, m->rp[r], m->lay.tensors[dit_tensor_index(&m->lay, layer, t)].offset - m->lay.ranges[r].offset);
}

/* the dtype of the gradients of a layer's range: the hook's (grads_act: the compute dtype) or f32 */
static QieDtype gdt_(const Dit *m, int layer) {
    const int r = dit_range_of_layer(&m->lay, layer);
    return m->rg[r] && m->hook.grads_act ? m->ctx->act : QIE_DT_F32;
}

static void *grad_(const Dit *m, int layer, int t) {
    const int r = dit_range_of_layer(&m->lay, layer);
    if (!m->rg[r]) return dit_grad(m, layer, t);
    const size_t rel = m->lay.tensors[dit_tensor_index(&m->lay, layer, t)].offset - m->lay.ranges[r].offset;
    return (char *)m->rg[r] + rel * dtype_size(gdt_(m, layer));
}

#define P(l, t) param_(m, (l), (t))
#define G(l, t) grad_(m, (l), (t))
#define GD(l) gdt_(m, (l))

/* hook brackets (no-ops without a hook) */
static void acquire_(Dit *m, int r, DitPhase ph) {
    if (m->hook.param_acquire) m->rp[r] = m->hook.param_acquire(m->hook.ud, r, ph);
}
static void release_(Dit *m, int r, DitPhase ph) {
    if (m->hook.param_release) m->hook.param_release(m->hook.ud, r, ph);
    m->rp[r] = NULL;
}
static void grad_begin_(Dit *m, int r) {
    if (m->hook.grad_begin) m->rg[r] = m->hook.grad_begin(m->hook.ud, r);
}
static void grad_end_(Dit *m, int r) {
    if (m->hook.grad_end) m->hook.grad_end(m->hook.ud, r);
    m->rg[r] = NULL;
}

/* Arena carving: with base == NULL only sizes are summed. 256-byte aligned slices. */
typedef struct {
    char *base;
    size_t off;
} Carve;

static void *take_(Carve *c, size_t bytes) {
    size_t o = (c->off + 255) & ~(size_t)255;
    c->off = o + bytes;
    return c->base ? c->base + o : NULL;
}

static void carve_(Dit *m, struct DitActs *a, Carve *c) {
    const DitConfig *cf = &m->cfg;
    const size_t es = op_act_size(m->ctx), D = cf->D, L = cf->num_layers, B = a->B, Bm = a->Bm, S = a->S;
    const size_t R[2] = {B * a->N[0], B * a->N[1]};
    const size_t Rmax = R[0] > R[1] ? R[0] : R[1];
    const int keep_all = m->train; /* residuals per block boundary kept for the backward */
    const int keep_attn = a->Okeep != NULL;
    for (size_t l = 0; keep_attn && l < L; l++) {
        a->Okeep[l] = take_(c, B * S * D * es);
        a->lsekeep[l] = take_(c, B * cf->num_heads * S * 4);
    }
    for (int s = 0; s < 2; s++) {
        if (keep_all) {
            for (size_t l = 0; l <= L; l++) a->h[s][l] = take_(c, R[s] * D * es);
        } else { /* inference: ping-pong */
            void *p0 = take_(c, R[s] * D * es), *p1 = take_(c, R[s] * D * es);
            for (size_t l = 0; l <= L; l++) a->h[s][l] = (l & 1) ? p1 : p0;
        }
    }
    for (int k = 0; k < a->nblk; k++) {
        BlockActs *b = &a->blk[k];
        for (int s = 0; s < 2; s++) {
            StreamActs *t = &b->s[s];
            t->mod = take_(c, (s ? B : Bm) * 6 * D * es);
            t->ln1_mean = take_(c, R[s] * 4);
            t->ln1_rstd = take_(c, R[s] * 4);
            t->a1 = take_(c, R[s] * D * es);
            t->qkv = take_(c, R[s] * 3 * D * es);
            t->qk_rstd = take_(c, R[s] * 2 * cf->num_heads * 4);
            t->y = take_(c, R[s] * D * es);
            t->hm = take_(c, R[s] * D * es);
            t->ln2_mean = take_(c, R[s] * 4);
            t->ln2_rstd = take_(c, R[s] * 4);
            t->a2 = take_(c, R[s] * D * es);
            t->u = take_(c, R[s] * 4 * D * es);
            t->g = take_(c, R[s] * 4 * D * es);
            t->mm = take_(c, R[s] * D * es);
        }
        b->Q = take_(c, B * S * D * es);
        b->K = take_(c, B * S * D * es);
        b->V = take_(c, B * S * D * es);
        if (!keep_attn) {
            b->O = take_(c, B * S * D * es);
            b->lse = take_(c, B * cf->num_heads * S * 4);
        }
    }
    a->txtn = take_(c, R[1] * cf->joint_dim * es);
    a->txt_rstd = take_(c, R[1] * 4);
    a->sinus = take_(c, Bm * QIE_TSTEP_CH * es);
    a->t1 = take_(c, Bm * D * es);
    a->t1s = take_(c, Bm * D * es);
    a->temb = take_(c, Bm * D * es);
    a->stemb = take_(c, Bm * D * es);
    a->mod_out = take_(c, B * 2 * D * es);
    a->lno_mean = take_(c, R[0] * 4);
    a->lno_rstd = take_(c, R[0] * 4);
    a->a_out = take_(c, R[0] * D * es);
    a->out = take_(c, R[0] * cf->out_dim * es);
    a->key_valid = a->has_mask ? take_(c, B * S * 4) : NULL;
    a->cs[0] = take_(c, (size_t)a->N[0] * cf->head_dim * 4);
    a->cs[1] = take_(c, (size_t)a->N[1] * cf->head_dim * 4);
    if (m->train) {
        for (int s = 0; s < 2; s++) {
            a->dh[s] = take_(c, R[s] * D * es);
            a->d_mod[s] = take_(c, (s ? B : Bm) * 6 * D * es);
        }
        a->dA = take_(c, Rmax * D * es);
        a->d_qkv = take_(c, Rmax * 3 * D * es);
        a->d_y = take_(c, Rmax * D * es);
        a->d_u = take_(c, Rmax * 4 * D * es);
        a->dQ = take_(c, B * S * D * es);
        a->dK = take_(c, B * S * D * es);
        a->dV = take_(c, B * S * D * es);
        a->dO = take_(c, B * S * D * es);
        a->d_stemb = take_(c, Bm * D * es);
        a->d_tmp = take_(c, Bm * D * es);
        a->d_temb = take_(c, Bm * D * es);
        a->d_t1s = take_(c, Bm * D * es);
        a->d_txtn = take_(c, R[1] * cf->joint_dim * es);
        a->d_modout = take_(c, B * 2 * D * es);
        a->d_aout = take_(c, R[0] * D * es);
    }
}

/* ---- create / destroy ------------------------------------------------------------------- */

static void acts_free_(Dit *m) {
    struct DitActs *a = m->acts;
    if (!a) return;
    op_free(m->ctx, a->arena);
    free(a->h[0]);
    free(a->h[1]);
    free(a->Okeep);
    free(a->lsekeep);
    free(a->blk);
    free(a);
    m->acts = NULL;
}

int dit_create(char *err, OpCtx *ctx, const DitConfig *cfg, int train, int grad_ckpt, Dit **out) {
    return dit_create2(err, ctx, cfg, train, grad_ckpt, 0, out);
}

int dit_create2(char *err, OpCtx *ctx, const DitConfig *cfg, int train, int grad_ckpt, unsigned flags, Dit **out) {
    Dit *m = calloc(1, sizeof *m);
    if (!m) {
        qie_seterr(err, "dit_create: out of memory");
        return QIE_ENOMEM;
    }
    m->cfg = *cfg;
    int rc = dit_config_validate(err, &m->cfg);
    if (!rc) rc = dit_layout_init(err, &m->lay, &m->cfg);
    if (rc) {
        free(m);
        return rc;
    }
    m->ctx = ctx;
    m->train = train;
    m->grad_ckpt = grad_ckpt;
    m->rp = calloc((size_t)m->lay.nranges, sizeof *m->rp);
    m->rg = calloc((size_t)m->lay.nranges, sizeof *m->rg);
    if (!m->rp || !m->rg) {
        free(m->rp);
        free(m->rg);
        dit_layout_free(&m->lay);
        free(m);
        qie_seterr(err, "dit_create: out of memory");
        return QIE_ENOMEM;
    }
    if (!(flags & DIT_CREATE_NO_PARAMS)) m->params = op_alloc(ctx, m->lay.num_params * op_act_size(ctx));
    if (train && !(flags & DIT_CREATE_NO_GRADS)) m->grads = op_alloc(ctx, m->lay.num_params * sizeof(float));
    *out = m;
    return 0;
}

void dit_set_hook(Dit *m, const DitHook *h) {
    if (h) m->hook = *h;
    else memset(&m->hook, 0, sizeof m->hook);
}

void dit_destroy(Dit **pm) {
    Dit *m = pm ? *pm : NULL;
    if (!m) return;
    acts_free_(m);
    op_free(m->ctx, m->params);
    op_free(m->ctx, m->grads);
    free(m->rp);
    free(m->rg);
    dit_layout_free(&m->lay);
    free(m);
    *pm = NULL;
}

void dit_set_params(Dit *m, const float *h_params) {
    if (m->params) op_upload_act(m->ctx, m->params, h_params, m->lay.num_params);
}

int dit_create_from_dir(char *err, OpCtx *ctx, const char *dir, int train, int grad_ckpt, Dit **out) {
    DitConfig cfg;
    int rc = dit_config_load(err, dir, &cfg);
    if (rc) return rc;
    /* weights: the folder holding config.json (transformer/ inside a pipeline folder) */
    char wdir[4096];
    snprintf(wdir, sizeof wdir, "%s/transformer/config.json", dir);
    FILE *f = fopen(wdir, "r");
    if (f) {
        fclose(f);
        snprintf(wdir, sizeof wdir, "%s/transformer", dir);
    } else {
        snprintf(wdir, sizeof wdir, "%s", dir);
    }
    StModel *st = NULL;
    if ((rc = st_model_open(err, wdir, &st))) return rc;
    Dit *m = NULL;
    float *h = NULL;
    if ((rc = dit_create(err, ctx, &cfg, train, grad_ckpt, &m))) goto fail;
    h = malloc(m->lay.num_params * sizeof(float));
    if (!h) {
        qie_seterr(err, "dit_create_from_dir: out of memory for %zu parameters", m->lay.num_params);
        rc = QIE_ENOMEM;
        goto fail;
    }
    if ((rc = dit_load_weights(err, &m->lay, st, h))) goto fail;
    dit_set_params(m, h);
    free(h);
    st_model_close(&st);
    *out = m;
    return 0;
fail:
    free(h);
    dit_destroy(&m);
    st_model_close(&st);
    return rc;
}

void dit_zero_grad(Dit *m) {
    if (m->grads) op_zero(m->ctx, m->grads, m->lay.num_params * sizeof(float));
}

size_t dit_activation_bytes(const Dit *m) { return m->acts ? m->acts->used : 0; }

double dit_flops_forward(const DitConfig *cfg, const DitShape *sh) {
    /* spec 6.2 / reference_transformer_step.py: per layer 24·D²·S + 4·S²·D, per sample */
    double S = sh->N_txt, D = cfg->D;
    for (int i = 0; i < sh->n_images; i++) S += (double)sh->img_shapes[i][0] * sh->img_shapes[i][1] * sh->img_shapes[i][2];
    return sh->B * cfg->num_layers * (24.0 * D * D * S + 4.0 * S * S * D);
}

/* Sizes the arena for this shape (reallocating only when it grows). */
static int acts_prepare_(char *err, Dit *m, const DitShape *sh, int has_mask) {
    const DitConfig *cf = &m->cfg;
    if (sh->B < 1 || sh->N_txt < 1 || sh->n_images < 1 || sh->n_images > DIT_MAX_IMAGES) {
        qie_seterr(err, "dit_forward: bad shape (B %d, N_txt %d, %d images; at most %d)", sh->B, sh->N_txt,
                   sh->n_images, DIT_MAX_IMAGES);
        return QIE_EINVAL;
    }
    int N_img = 0;
    for (int i = 0; i < sh->n_images; i++) {
        const int *s = sh->img_shapes[i];
        if (s[0] < 1 || s[1] < 1 || s[2] < 1) {
            qie_seterr(err, "dit_forward: image %d has shape (%d, %d, %d)", i, s[0], s[1], s[2]);
            return QIE_EINVAL;
        }
        N_img += s[0] * s[1] * s[2];
    }
    struct DitActs *a = m->acts;
    const int keep_attn = m->train && m->grad_ckpt && m->keep_attn;
    if (!a) {
        a = m->acts = calloc(1, sizeof *a);
        if (a) {
            a->h[0] = calloc((size_t)cf->num_layers + 1, sizeof(void *));
            a->h[1] = calloc((size_t)cf->num_layers + 1, sizeof(void *));
            a->nblk = (m->train && !m->grad_ckpt) ? cf->num_layers : 1;
            a->blk = calloc((size_t)a->nblk, sizeof(BlockActs));
            if (keep_attn) {
                a->Okeep = calloc((size_t)cf->num_layers, sizeof(void *));
                a->lsekeep = calloc((size_t)cf->num_layers, sizeof(float *));
            }
        }
        if (!a || !a->h[0] || !a->h[1] || !a->blk || (keep_attn && (!a->Okeep || !a->lsekeep))) {
            acts_free_(m);
            qie_seterr(err, "dit_forward: out of memory");
            return QIE_ENOMEM;
        }
    }
    a->sh = *sh;
    a->B = sh->B;
    a->Bm = cf->zero_cond_t ? 2 * sh->B : sh->B;
    a->N[0] = N_img;
    a->N[1] = sh->N_txt;
    a->S = N_img + sh->N_txt;
    a->n0 = sh->img_shapes[0][0] * sh->img_shapes[0][1] * sh->img_shapes[0][2];
    a->has_mask = has_mask;
    Carve c = {NULL, 0};
    carve_(m, a, &c);
    if (c.off > a->cap) {
        op_free(m->ctx, a->arena);
        a->arena = op_alloc(m->ctx, c.off);
        a->cap = c.off;
        a->rope_cs[0] = a->rope_cs[1] = NULL;
    }
    a->used = c.off;
    c.base = a->arena;
    c.off = 0;
    carve_(m, a, &c);
    return 0;
}

/* RoPE positions (spec 1.7): image idx token (f, y, x) -> (idx + f, y − (h − ⌊h/2⌋), x − (w − ⌊w/2⌋));
 * text token k -> m0 + k on all axes, m0 = max over images of max(⌊h/2⌋, ⌊w/2⌋). */
static int same_rope_shape_(const DitShape *x, const DitShape *y) {
    if (x->N_txt != y->N_txt || x->n_images != y->n_images) return 0;
    for (int i = 0; i < x->n_images; i++)
        for (int k = 0; k < 3; k++)
            if (x->img_shapes[i][k] != y->img_shapes[i][k]) return 0;
    return 1;
}

/* The tables depend on the image shapes and the text length only: a bucketed run makes them
 * once per shape instead of once per step (half a million sin/cos at 1024²). */
static int rope_tables_(char *err, Dit *m) {
    struct DitActs *a = m->acts;
    if (a->rope_cs[0] == a->cs[0] && a->rope_cs[1] == a->cs[1] && a->rope_cs[0] && same_rope_shape_(&a->rope_sh, &a->sh))
        return 0;
    const int half = m->cfg.head_dim / 2;
    int *pos = malloc(sizeof(int) * 3 * (size_t)(a->N[0] > a->N[1] ? a->N[0] : a->N[1]));
    float *cs = malloc(sizeof(float) * 2 * half * (size_t)(a->N[0] > a->N[1] ? a->N[0] : a->N[1]));
    if (!pos || !cs) {
        free(pos);
        free(cs);
        qie_seterr(err, "dit_forward: out of memory for RoPE tables");
        return QIE_ENOMEM;
    }
    int n = 0, m0 = 0;
    for (int i = 0; i < a->sh.n_images; i++) {
        const int F = a->sh.img_shapes[i][0], h = a->sh.img_shapes[i][1], w = a->sh.img_shapes[i][2];
        for (int f = 0; f < F; f++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++, n++) {
                    pos[3 * n + 0] = i + f;
                    pos[3 * n + 1] = y - (h - h / 2);
                    pos[3 * n + 2] = x - (w - w / 2);
                }
        if (h / 2 > m0) m0 = h / 2;
        if (w / 2 > m0) m0 = w / 2;
    }
    rope_table_cpu(cs, pos, a->N[0], m->cfg.axes);
    op_upload_f32(m->ctx, a->cs[0], cs, (size_t)a->N[0] * 2 * half);
    for (int k = 0; k < a->N[1]; k++) pos[3 * k] = pos[3 * k + 1] = pos[3 * k + 2] = m0 + k;
    rope_table_cpu(cs, pos, a->N[1], m->cfg.axes);
    op_upload_f32(m->ctx, a->cs[1], cs, (size_t)a->N[1] * 2 * half);
    free(pos);
    free(cs);
    a->rope_sh = a->sh;
    a->rope_cs[0] = a->cs[0];
    a->rope_cs[1] = a->cs[1];
    return 0;
}

static AdaMod stream_mod_(const Dit *m, int s) {
    const struct DitActs *a = m->acts;
    AdaMod am = {a->B, a->N[s], m->cfg.D, 1, a->N[s], 6 * m->cfg.D};
    if (s == 0 && m->cfg.zero_cond_t) { /* spec 1.9: condition-image tokens use the σ = 0 set */
        am.sets = 2;
        am.n0 = a->n0;
    }
    return am;
}

/* ---- block forward (spec 1.6) ------------------------------------------------------------- */

/* each stream's tensors of a block, [0] image, [1] text */
static const int mod_w[2] = {DIT_B_IMG_MOD_W, DIT_B_TXT_MOD_W}, qkv_w[2] = {DIT_B_TO_Q_W, DIT_B_ADD_Q_W},
                 qkv_b[2] = {DIT_B_TO_Q_B, DIT_B_ADD_Q_B}, nq[2] = {DIT_B_NORM_Q, DIT_B_NORM_ADD_Q},
                 nk[2] = {DIT_B_NORM_K, DIT_B_NORM_ADD_K}, ow[2] = {DIT_B_TO_OUT_W, DIT_B_TO_ADD_OUT_W},
                 fc1[2] = {DIT_B_IMG_FC1_W, DIT_B_TXT_FC1_W}, fc2[2] = {DIT_B_IMG_FC2_W, DIT_B_TXT_FC2_W};

/* recompute: the backward's checkpoint recompute (the attention is skipped when it was kept) */
static void block_forward_(Dit *m, int l, BlockActs *b, int recompute) {
    OpCtx *c = m->ctx;
    struct DitActs *a = m->acts;
    if (a->Okeep) {
        b->O = a->Okeep[l];
        b->lse = a->lsekeep[l];
    }
    const int D = m->cfg.D, H = m->cfg.num_heads, d = m->cfg.head_dim, B = a->B, S = a->S;
    for (int s = 0; s < 2; s++) {
        StreamActs *t = &b->s[s];
        const AdaMod am = stream_mod_(m, s);
        const int R = B * a->N[s], Bm = s ? B : a->Bm;
        /* img_mod.1 / txt_mod.1 (SiLU(temb) computed once per forward; txt uses temb[0:B]) */
        op_matmul(c, t->mod, a->stemb, P(l, mod_w[s]), P(l, mod_w[s] + 1), Bm, D, 6 * D);
        /* LN1 · (1 + scale1) + shift1 */
        op_layernorm_modulate(c, t->a1, t->ln1_mean, t->ln1_rstd, a->h[s][l], t->mod, at_(m, t->mod, D), &am);
        /* to_q|to_k|to_v (add_*_proj for text) as one GEMM; q/k RMSNorm, RoPE, joint scatter */
        op_matmul(c, t->qkv, t->a1, P(l, qkv_w[s]), P(l, qkv_b[s]), R, D, 3 * D);
        op_qkv_norm_rope(c, b->Q, b->K, b->V, t->qk_rstd, t->qkv, P(l, nq[s]), P(l, nk[s]), a->cs[s], B, a->N[s], H,
                         d, S, s ? 0 : a->N[1]);
    }
    if (!(recompute && a->Okeep)) op_attention(c, b->O, b->lse, b->Q, b->K, b->V, a->key_valid, B, S, H, d);
    for (int s = 0; s < 2; s++) {
        StreamActs *t = &b->s[s];
        const AdaMod am = stream_mod_(m, s);
        const int N = a->N[s], R = B * N, off = s ? 0 : a->N[1];
        /* to_out.0 / to_add_out on this stream's rows of O */
        for (int bb = 0; bb < B; bb++)
            op_matmul(c, at_(m, t->y, (size_t)bb * N * D), at_(m, b->O, ((size_t)bb * S + off) * D), P(l, ow[s]),
                      P(l, ow[s] + 1), N, D, D);
        op_gate_residual(c, t->hm, a->h[s][l], t->y, at_(m, t->mod, 2 * D), &am); /* h + gate1·attn */
        op_layernorm_modulate(c, t->a2, t->ln2_mean, t->ln2_rstd, t->hm, at_(m, t->mod, 3 * D), at_(m, t->mod, 4 * D),
                              &am);
        op_matmul(c, t->u, t->a2, P(l, fc1[s]), P(l, fc1[s] + 1), R, D, 4 * D);
        op_gelu_tanh(c, t->g, t->u, (size_t)R * 4 * D);
        op_matmul(c, t->mm, t->g, P(l, fc2[s]), P(l, fc2[s] + 1), R, 4 * D, D);
        op_gate_residual(c, a->h[s][l + 1], t->hm, t->mm, at_(m, t->mod, 5 * D), &am); /* + gate2·mlp */
    }
}

/* ---- block backward ------------------------------------------------------------------------ */

/* a->dh[s] holds d h[s][l+1] on entry and d h[s][l] on return. */
static void block_backward_(Dit *m, int l, BlockActs *b) {
    OpCtx *c = m->ctx;
    struct DitActs *a = m->acts;
    const int D = m->cfg.D, H = m->cfg.num_heads, d = m->cfg.head_dim, B = a->B, S = a->S;
    for (int s = 0; s < 2; s++) {
        StreamActs *t = &b->s[s];
        const AdaMod am = stream_mod_(m, s);
        const int N = a->N[s], R = B * N, off = s ? 0 : a->N[1];
        void *dmod = a->d_mod[s];
        /* h' = hm + gate2·mlp(LN2(hm)·(1+scale2)+shift2) */
        op_gate_residual_backward(c, a->d_y, at_(m, dmod, 5 * D), a->dh[s], t->mm, at_(m, t->mod, 5 * D), &am);
        op_matmul_backward_g(c, a->d_u, G(l, fc2[s]), G(l, fc2[s] + 1), GD(l), a->d_y, t->g, P(l, fc2[s]), R, 4 * D, D);
        op_gelu_tanh_backward(c, a->d_u, a->d_u, t->u, (size_t)R * 4 * D);
        op_matmul_backward_g(c, a->dA, G(l, fc1[s]), G(l, fc1[s] + 1), GD(l), a->d_u, t->a2, P(l, fc1[s]), R, D, 4 * D);
        op_layernorm_modulate_backward(c, a->dh[s], at_(m, dmod, 3 * D), at_(m, dmod, 4 * D), a->dA, t->hm,
                                       t->ln2_mean, t->ln2_rstd, at_(m, t->mod, 4 * D), &am);
        /* hm = h + gate1·out_proj(O rows of this stream) */
        op_gate_residual_backward(c, a->d_y, at_(m, dmod, 2 * D), a->dh[s], t->y, at_(m, t->mod, 2 * D), &am);
        for (int bb = 0; bb < B; bb++)
            op_matmul_backward_g(c, at_(m, a->dO, ((size_t)bb * S + off) * D), G(l, ow[s]), G(l, ow[s] + 1), GD(l),
                                 at_(m, a->d_y, (size_t)bb * N * D), at_(m, b->O, ((size_t)bb * S + off) * D),
                                 P(l, ow[s]), N, D, D);
    }
    op_attention_backward(c, a->dQ, a->dK, a->dV, a->dO, b->Q, b->K, b->V, b->O, b->lse, a->key_valid, B, S, H, d);
    for (int s = 0; s < 2; s++) {
        StreamActs *t = &b->s[s];
        const AdaMod am = stream_mod_(m, s);
        const int R = B * a->N[s], Bm = s ? B : a->Bm;
        void *dmod = a->d_mod[s];
        op_qkv_norm_rope_backward_g(c, a->d_qkv, G(l, nq[s]), G(l, nk[s]), GD(l), a->dQ, a->dK, a->dV, t->qkv,
                                    t->qk_rstd, P(l, nq[s]), P(l, nk[s]), a->cs[s], B, a->N[s], H, d, S,
                                    s ? 0 : a->N[1]);
        op_matmul_backward_g(c, a->dA, G(l, qkv_w[s]), G(l, qkv_b[s]), GD(l), a->d_qkv, t->a1, P(l, qkv_w[s]), R, D,
                             3 * D);
        op_layernorm_modulate_backward(c, a->dh[s], dmod, at_(m, dmod, D), a->dA, a->h[s][l], t->ln1_mean,
                                       t->ln1_rstd, at_(m, t->mod, D), &am);
        /* every chunk of d_mod is now written: back through img_mod.1 / txt_mod.1 into d SiLU(temb) */
        op_matmul_backward_g(c, a->d_tmp, G(l, mod_w[s]), G(l, mod_w[s] + 1), GD(l), dmod, a->stemb, P(l, mod_w[s]),
                             Bm, D, 6 * D);
        op_add_inplace(c, a->d_stemb, a->d_tmp, (size_t)Bm * D);
    }
}

/* ---- model forward / backward (spec 1.4) -------------------------------------------------- */

int dit_forward(char *err, Dit *m, const DitShape *sh, const void *x, const void *txt, const float *txt_mask,
                const float *t, const void **out) {
    int rc = acts_prepare_(err, m, sh, txt_mask != NULL);
    if (rc) return rc;
    OpCtx *c = m->ctx;
    struct DitActs *a = m->acts;
    const DitConfig *cf = &m->cfg;
    const int L = cf->num_layers, D = cf->D, B = a->B, S = a->S;
    a->x = x;
    a->txt = txt;
    if ((rc = rope_tables_(err, m))) return rc;
    if (txt_mask) { /* key_valid [B, S]: text keys from the mask, image keys always valid (spec 1.6) */
        float *kv = malloc(sizeof(float) * (size_t)B * S);
        if (!kv) {
            qie_seterr(err, "dit_forward: out of memory");
            return QIE_ENOMEM;
        }
        for (int b = 0; b < B; b++)
            for (int j = 0; j < S; j++) kv[(size_t)b * S + j] = j < a->N[1] ? (txt_mask[(size_t)b * a->N[1] + j] != 0.0f) : 1.0f;
        op_upload_f32(c, a->key_valid, kv, (size_t)B * S);
        free(kv);
    }
    /* 1. img_in */
    acquire_(m, 0, DIT_PHASE_FORWARD);
    op_matmul(c, a->h[0][0], x, P(-1, DIT_IMG_IN_W), P(-1, DIT_IMG_IN_B), B * a->N[0], cf->in_channels, D);
    /* 2-3. t cast to the activation dtype (spec 1.10); zero_cond_t appends B zeros (spec 1.9) */
    float tt[2 * 4096];
    if (a->Bm > (int)(sizeof tt / sizeof *tt)) {
        qie_seterr(err, "dit_forward: batch %d too large", B);
        return QIE_ELIMIT;
    }
    for (int b = 0; b < a->Bm; b++) {
        float v = b < B ? t[b] : 0.0f;
        tt[b] = c->act == QIE_DT_BF16 ? bf16_to_f32(f32_to_bf16(v)) : v;
    }
    /* 4. txt_in(RMSNorm(e)) */
    op_rmsnorm(c, a->txtn, a->txt_rstd, txt, P(-1, DIT_TXT_NORM_W), B * a->N[1], cf->joint_dim);
    op_matmul(c, a->h[1][0], a->txtn, P(-1, DIT_TXT_IN_W), P(-1, DIT_TXT_IN_B), B * a->N[1], cf->joint_dim, D);
    /* 5. temb = linear_2(SiLU(linear_1(sinusoid(t)))); every consumer takes SiLU(temb) */
    op_timestep_sinusoid(c, a->sinus, tt, a->Bm);
    op_matmul(c, a->t1, a->sinus, P(-1, DIT_T_LIN1_W), P(-1, DIT_T_LIN1_B), a->Bm, QIE_TSTEP_CH, D);
    op_silu(c, a->t1s, a->t1, (size_t)a->Bm * D);
    op_matmul(c, a->temb, a->t1s, P(-1, DIT_T_LIN2_W), P(-1, DIT_T_LIN2_B), a->Bm, D, D);
    op_silu(c, a->stemb, a->temb, (size_t)a->Bm * D);
    release_(m, 0, DIT_PHASE_FORWARD);
    /* 7. blocks */
    for (int l = 0; l < L; l++) {
        acquire_(m, 1 + l, DIT_PHASE_FORWARD);
        block_forward_(m, l, &a->blk[a->nblk == L ? l : 0], 0);
        release_(m, 1 + l, DIT_PHASE_FORWARD);
    }
    /* 8-9. norm_out (scale first, then shift; temb[0:B]) and proj_out */
    acquire_(m, L + 1, DIT_PHASE_FORWARD);
    op_matmul(c, a->mod_out, a->stemb, P(L, DIT_NORM_OUT_W), P(L, DIT_NORM_OUT_B), B, D, 2 * D);
    const AdaMod mo = {B, a->N[0], D, 1, a->N[0], 2 * D};
    op_layernorm_modulate(c, a->a_out, a->lno_mean, a->lno_rstd, a->h[0][L], at_(m, a->mod_out, D), a->mod_out, &mo);
    op_matmul(c, a->out, a->a_out, P(L, DIT_PROJ_OUT_W), P(L, DIT_PROJ_OUT_B), B * a->N[0], D, cf->out_dim);
    release_(m, L + 1, DIT_PHASE_FORWARD);
    a->have_fwd = 1;
    *out = a->out;
    return 0;
}

int dit_backward(char *err, Dit *m, const void *d_out, void *d_x, void *d_txt) {
    struct DitActs *a = m->acts;
    if (!m->train || (!m->grads && !m->hook.grad_begin) || !a || !a->have_fwd) {
        qie_seterr(err, "dit_backward: needs a model created with train = 1 and a dit_forward before it");
        return QIE_EINVAL;
    }
    OpCtx *c = m->ctx;
    const DitConfig *cf = &m->cfg;
    const int L = cf->num_layers, D = cf->D, B = a->B;
    const size_t es = op_act_size(c);
    const int Ri = B * a->N[0], Rt = B * a->N[1];
    op_zero(c, a->dh[0], (size_t)Ri * D * es);
    op_zero(c, a->dh[1], (size_t)Rt * D * es);
    op_zero(c, a->d_stemb, (size_t)a->Bm * D * es);
    /* output head */
    acquire_(m, L + 1, DIT_PHASE_BACKWARD);
    grad_begin_(m, L + 1);
    op_matmul_backward_g(c, a->d_aout, G(L, DIT_PROJ_OUT_W), G(L, DIT_PROJ_OUT_B), GD(L), d_out, a->a_out,
                         P(L, DIT_PROJ_OUT_W), Ri, D, cf->out_dim);
    const AdaMod mo = {B, a->N[0], D, 1, a->N[0], 2 * D};
    op_layernorm_modulate_backward(c, a->dh[0], at_(m, a->d_modout, D), a->d_modout, a->d_aout, a->h[0][L],
                                   a->lno_mean, a->lno_rstd, a->mod_out, &mo);
    op_matmul_backward_g(c, a->d_tmp, G(L, DIT_NORM_OUT_W), G(L, DIT_NORM_OUT_B), GD(L), a->d_modout, a->stemb,
                         P(L, DIT_NORM_OUT_W), B, D, 2 * D);
    op_add_inplace(c, a->d_stemb, a->d_tmp, (size_t)B * D);
    grad_end_(m, L + 1);
    release_(m, L + 1, DIT_PHASE_BACKWARD);
    /* blocks, last to first; with checkpointing each block is recomputed from its saved inputs */
    for (int l = L - 1; l >= 0; l--) {
        BlockActs *b = &a->blk[a->nblk == L ? l : 0];
        acquire_(m, 1 + l, DIT_PHASE_BACKWARD);
        if (a->nblk != L) block_forward_(m, l, b, 1);
        grad_begin_(m, 1 + l);
        block_backward_(m, l, b);
        grad_end_(m, 1 + l);
        release_(m, 1 + l, DIT_PHASE_BACKWARD);
    }
    /* timestep MLP */
    acquire_(m, 0, DIT_PHASE_BACKWARD);
    grad_begin_(m, 0);
    op_silu_backward(c, a->d_temb, a->d_stemb, a->temb, (size_t)a->Bm * D);
    op_matmul_backward_g(c, a->d_t1s, G(-1, DIT_T_LIN2_W), G(-1, DIT_T_LIN2_B), GD(-1), a->d_temb, a->t1s,
                         P(-1, DIT_T_LIN2_W), a->Bm, D, D);
    op_silu_backward(c, a->d_t1s, a->d_t1s, a->t1, (size_t)a->Bm * D);
    op_matmul_backward_g(c, NULL, G(-1, DIT_T_LIN1_W), G(-1, DIT_T_LIN1_B), GD(-1), a->d_t1s, a->sinus,
                         P(-1, DIT_T_LIN1_W), a->Bm, QIE_TSTEP_CH, D);
    /* text input */
    op_matmul_backward_g(c, a->d_txtn, G(-1, DIT_TXT_IN_W), G(-1, DIT_TXT_IN_B), GD(-1), a->dh[1], a->txtn,
                         P(-1, DIT_TXT_IN_W), Rt, cf->joint_dim, D);
    op_rmsnorm_backward_g(c, d_txt, G(-1, DIT_TXT_NORM_W), GD(-1), a->d_txtn, a->txt, a->txt_rstd,
                          P(-1, DIT_TXT_NORM_W), Rt, cf->joint_dim);
    /* image input */
    op_matmul_backward_g(c, d_x, G(-1, DIT_IMG_IN_W), G(-1, DIT_IMG_IN_B), GD(-1), a->dh[0], a->x, P(-1, DIT_IMG_IN_W),
                         Ri, cf->in_channels, D);
    grad_end_(m, 0);
    release_(m, 0, DIT_PHASE_BACKWARD);
    return 0;
}
