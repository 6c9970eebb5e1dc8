/* vae_forward.c: the encoder's forward pass for stills (spec/model.md §2.3, §2.4), on NHWC
 * activations, written once against kernels/ops.h (CPU fp32 or CUDA bf16).
 *
 * Buffers: four activations of act_cap elements (x = buf[0] is the running activation; a
 * step writes into another buffer and swaps), one workspace (im2col chunks on CUDA, attention
 * score chunks), and f32 mean/logvar. act_cap is the largest [pixels · channels] of any level:
 * level l (resolution H/2^l) holds dims[l] and dims[l+1] channels, level 0 also the padded input,
 * the last level the qkv rows (3C). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv2d.h"
#include "err.h"
#include "vae_ops.h"
#include "vae_internal.h"

/* CUDA workspace budget: im2col chunks and attention score chunks are sized to fit in it */
#define VAE_WS_BUDGET ((size_t)512 << 20)

void vae_free_buffers_(VaeModel *m) {
    for (int i = 0; i < 4; i++) { op_free(m->ctx, m->buf[i]); m->buf[i] = NULL; }
    op_free(m->ctx, m->ws);
    op_free(m->ctx, m->d_mean);
    op_free(m->ctx, m->d_logvar);
    m->ws = NULL;
    m->d_mean = m->d_logvar = NULL;
    m->act_cap = m->ws_bytes = m->out_cap = 0;
#ifdef QIE_CUDA
    vae_pinned_free(m->pin);
#endif
    m->pin = NULL;
    m->pin_bytes = 0;
}

static void swap_(void **a, void **b) {
    void *t = *a;
    *a = *b;
    *b = t;
}

static void tap_(VaeModel *m, const char *name, const void *x, int B, int h, int w, int C) {
    if (m->tap) {
        op_sync(m->ctx);
        m->tap(m->tap_user, name, x, B, h, w, C);
    }
}

/* grows the buffers for B images of H×W */
static void reserve_(VaeModel *m, int B, int H, int W) {
    const VaeConfig *c = &m->cfg;
    const int L = c->ndim_mult;
    int dims[VAE_MAX_LEVELS + 1];
    dims[0] = c->base_dim;
    for (int l = 0; l < L; l++) dims[l + 1] = c->base_dim * c->dim_mult[l];
    size_t cap = 0, ws = 0;
    for (int l = 0; l < L; l++) {
        const size_t px = (size_t)B * (size_t)(H >> l) * (size_t)(W >> l);
        size_t ch = (size_t)(dims[l] > dims[l + 1] ? dims[l] : dims[l + 1]);
        if (l == 0 && ch < VAE_CIN_PAD) ch = VAE_CIN_PAD;
        if (l == 0 && ch < (size_t)c->input_channels) ch = (size_t)c->input_channels;
        if (l == L - 1 && ch < 3 * (size_t)dims[L]) ch = 3 * (size_t)dims[L];
        if (px * ch > cap) cap = px * ch;
        /* the biggest im2col of the level: one of its 3×3 convs over all of it */
        const size_t full = px * 9 * (size_t)(dims[l] > dims[l + 1] ? dims[l] : dims[l + 1]) * op_act_size(m->ctx);
        if (full > ws) ws = full;
    }
    const int hl = H >> (L - 1), wl = W >> (L - 1);
    const size_t att = (size_t)hl * wl * op_vae_attention_workspace(m->ctx, hl * wl); /* all rows of one image */
    if (att > ws) ws = att;
    if (m->ctx->dev != QIE_DEV_CUDA) ws = 0;
    else if (ws > VAE_WS_BUDGET) {
        /* chunked: at least one output row of the widest im2col and one attention query row */
        const size_t row = (size_t)W * 9 * (size_t)dims[L] * op_act_size(m->ctx);
        const size_t arow = op_vae_attention_workspace(m->ctx, hl * wl);
        ws = VAE_WS_BUDGET;
        if (row > ws) ws = row;
        if (arow > ws) ws = arow;
    }
    const size_t outn = (size_t)B * c->z_dim * hl * wl;
    if (cap > m->act_cap) {
        for (int i = 0; i < 4; i++) {
            op_free(m->ctx, m->buf[i]);
            m->buf[i] = op_alloc(m->ctx, cap * op_act_size(m->ctx));
        }
        m->act_cap = cap;
    }
    if (ws > m->ws_bytes) {
        op_free(m->ctx, m->ws);
        m->ws = op_alloc(m->ctx, ws);
        m->ws_bytes = ws;
    }
    if (outn > m->out_cap) {
        op_free(m->ctx, m->d_mean);
        op_free(m->ctx, m->d_logvar);
        m->d_mean = op_alloc(m->ctx, outn * sizeof(float));
        m->d_logvar = op_alloc(m->ctx, outn * sizeof(float));
        m->out_cap = outn;
    }
}

static void conv_(VaeModel *m, void *out, const void *inp, const void *w, const void *b, const void *res, int B, int H,
                  int W, int cin, int cout, int k, int stride, int pad_lo, int pad_hi) {
    Conv2dShape s = {B, H, W, cin, cout, k, stride, pad_lo, pad_hi, pad_lo, pad_hi};
    op_conv2d(m->ctx, out, inp, w, b, res, &s, m->ws, m->ws_bytes);
}

/* QwenImageResidualBlock.forward: h = shortcut(x); x = conv1(SiLU(norm1(x)));
 * x = conv2(SiLU(norm2(x))) + h. x is buf[0]; result in buf[0]. */
static void res_forward_(VaeModel *m, const VaeRes *r, int B, int H, int W) {
    OpCtx *c = m->ctx;
    void **x = &m->buf[0], **t1 = &m->buf[1], **t2 = &m->buf[2], **hs = &m->buf[3];
    const int M = B * H * W;
    const void *skip = *x;
    if (r->sc_w) {
        conv_(m, *hs, *x, r->sc_w, r->sc_b, NULL, B, H, W, r->cin, r->cout, 1, 1, 0, 0);
        skip = *hs;
    }
    op_rmsnorm_channels(c, *t1, *x, r->norm1, M, r->cin, 1);
    conv_(m, *t2, *t1, r->conv1_w, r->conv1_b, NULL, B, H, W, r->cin, r->cout, 3, 1, 1, 1);
    op_rmsnorm_channels(c, *t1, *t2, r->norm2, M, r->cout, 1);
    /* conv2 + the skip fused: the residual is added to the fp32 accumulator (one bf16 rounding
     * on CUDA where the reference rounds twice; fp32 on the CPU is the reference's order) */
    conv_(m, *t2, *t1, r->conv2_w, r->conv2_b, skip, B, H, W, r->cout, r->cout, 3, 1, 1, 1);
    swap_(x, t2);
}

int vae_encode(char *err, VaeModel *m, const float *pixels, int B, int H, int W, float *mean, float *logvar) {
    const VaeConfig *c = &m->cfg;
    const int f = vae_config_factor(c), L = c->ndim_mult;
    if (B < 1 || H < f || W < f || H % f || W % f) {
        qie_seterr(err, "vae_encode: %d images of %dx%d: sides must be positive multiples of %d", B, W, H, f);
        return QIE_EINVAL;
    }
    if ((size_t)B * (size_t)H * (size_t)W > ((size_t)1 << 31) / (size_t)c->base_dim) {
        qie_seterr(err, "vae_encode: %d images of %dx%d: too many pixels for one batch", B, W, H);
        return QIE_ELIMIT;
    }
    OpCtx *ctx = m->ctx;
    reserve_(m, B, H, W);
    void **x = &m->buf[0], **t1 = &m->buf[1], **t2 = &m->buf[2];
    const int cin = c->input_channels, d0 = c->base_dim;

    /* input: host f32 NCHW -> act NHWC with channels padded to VAE_CIN_PAD */
#ifdef QIE_CUDA
    if (ctx->dev == QIE_DEV_CUDA) /* bf16 from the host through pinned memory: half the bytes */
        vae_upload_pixels_forward(ctx, *t1, pixels, (size_t)B * cin * H * W, &m->pin, &m->pin_bytes);
    else
#endif
        op_upload_act(ctx, *t1, pixels, (size_t)B * cin * H * W);
    op_nchw_to_nhwc(ctx, *t2, *t1, B, cin, H * W, VAE_CIN_PAD);
    conv_(m, *x, *t2, m->conv_in_w, m->conv_in_b, NULL, B, H, W, VAE_CIN_PAD, d0, 3, 1, 1, 1);
    tap_(m, "conv_in", *x, B, H, W, d0);

    int h = H, w = W, C = d0;
    char name[32];
    for (int i = 0; i < m->nlayers; i++) {
        const VaeLayer *ly = &m->layers[i];
        if (ly->kind == VAE_L_RES) {
            res_forward_(m, &ly->res, B, h, w);
            C = ly->res.cout;
        } else {
            /* QwenImageResample downsample: ZeroPad2d((0,1,0,1)) + Conv2d(3, stride 2) */
            conv_(m, *t1, *x, ly->down_w, ly->down_b, NULL, B, h, w, ly->c, ly->c, 3, 2, 0, 1);
            swap_(x, t1);
            h /= 2;
            w /= 2;
        }
        snprintf(name, sizeof name, "down.%d", i);
        tap_(m, name, *x, B, h, w, C);
    }

    /* mid block: res, attention, res */
    const int M = B * h * w, N = h * w;
    res_forward_(m, &m->mid0, B, h, w);
    op_rmsnorm_channels(ctx, *t1, *x, m->attn_norm, M, C, 0);
    op_matmul(ctx, *t2, *t1, m->qkv_w, m->qkv_b, M, C, 3 * C);
    op_vae_attention(ctx, *t1, *t2, B, N, C, m->ws, m->ws_bytes);
    conv_(m, *t2, *t1, m->proj_w, m->proj_b, *x, B, h, w, C, C, 1, 1, 0, 0); /* proj(o) + identity */
    swap_(x, t2);
    res_forward_(m, &m->mid1, B, h, w);
    tap_(m, "mid", *x, B, h, w, C);

    /* head: norm_out, SiLU, conv_out, then quant_conv */
    const int z2 = 2 * c->z_dim;
    op_rmsnorm_channels(ctx, *t1, *x, m->norm_out, M, C, 1);
    conv_(m, *t2, *t1, m->conv_out_w, m->conv_out_b, NULL, B, h, w, C, z2, 3, 1, 1, 1);
    tap_(m, "enc_out", *t2, B, h, w, z2);
    conv_(m, *t1, *t2, m->quant_w, m->quant_b, NULL, B, h, w, z2, z2, 1, 1, 0, 0);
    tap_(m, "quant_conv", *t1, B, h, w, z2);

    op_vae_posterior(ctx, m->d_mean, m->d_logvar, *t1, B, N, c->z_dim);
#ifdef QIE_CUDA
    if (ctx->dev == QIE_DEV_CUDA) {
        vae_download_pair_forward(ctx, mean, m->d_mean, logvar, m->d_logvar, (size_t)B * c->z_dim * N, &m->pin,
                                  &m->pin_bytes);
    } else
#endif
    {
        op_download_f32(ctx, mean, m->d_mean, (size_t)B * c->z_dim * N);
        op_download_f32(ctx, logvar, m->d_logvar, (size_t)B * c->z_dim * N);
        op_sync(ctx);
    }
    (void)L;
    return 0;
}
