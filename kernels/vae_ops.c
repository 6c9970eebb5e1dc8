/* vae_ops.c: fp32 references and dispatchers of the VAE ops (vae_ops.h has the contract). */
#include "dot.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "vae_ops.h"

#ifdef QIE_CUDA
#define CUDA_PATH(c, call) do { if ((c)->dev == QIE_DEV_CUDA) { call; return; } } while (0)
#else
#define CUDA_PATH(c, call) (void)(c)
#endif

void rmsnorm_channels_forward_cpu(float *out, const float *inp, const float *gamma, int M, int C, int silu) {
    /* F.normalize: x / clamp_min(‖x‖₂, eps); then · self.scale (C**0.5) · gamma */
    const float scale = (float)sqrt((double)C);
    for (int m = 0; m < M; m++) {
        const float *x = inp + (size_t)m * C;
        float *y = out + (size_t)m * C;
        float ss = 0.0f;
        for (int i = 0; i < C; i++) ss += x[i] * x[i];
        const float denom = fmaxf(sqrtf(ss), 1e-12f);
        for (int i = 0; i < C; i++) {
            float v = x[i] / denom * scale * gamma[i];
            y[i] = silu ? v / (1.0f + expf(-v)) : v;
        }
    }
}

void op_rmsnorm_channels(OpCtx *c, void *out, const void *inp, const void *gamma, int M, int C, int silu) {
    CUDA_PATH(c, rmsnorm_channels_forward(c, out, inp, gamma, M, C, silu));
    rmsnorm_channels_forward_cpu(out, inp, gamma, M, C, silu);
}

/* eight partial sums so that gcc vectorises without -ffast-math (as matmul.c) */

void vae_attention_forward_cpu(float *out, const float *qkv, int B, int N, int C) {
    const float scale = (float)(1.0 / sqrt((double)C));
    const size_t ld = (size_t)3 * C;
    float *p = malloc((size_t)N * sizeof(float));
    if (!p) {
        fprintf(stderr, "vae_attention_forward_cpu: out of memory for %d floats\n", N);
        exit(EXIT_FAILURE);
    }
    for (int b = 0; b < B; b++) {
        const float *base = qkv + (size_t)b * N * ld;
        for (int i = 0; i < N; i++) {
            const float *q = base + (size_t)i * ld;
            float mx = -INFINITY;
            for (int j = 0; j < N; j++) {
                p[j] = dot_f32(q, base + (size_t)j * ld + C, C) * scale;
                mx = fmaxf(mx, p[j]);
            }
            float sum = 0.0f;
            for (int j = 0; j < N; j++) {
                p[j] = expf(p[j] - mx);
                sum += p[j];
            }
            float *o = out + ((size_t)b * N + i) * C;
            for (int d = 0; d < C; d++) o[d] = 0.0f;
            for (int j = 0; j < N; j++) {
                const float *v = base + (size_t)j * ld + 2 * C;
                const float pj = p[j] / sum;
                for (int d = 0; d < C; d++) o[d] += pj * v[d];
            }
        }
    }
    free(p);
}

size_t op_vae_attention_workspace(const OpCtx *c, int N) {
    /* one query row of fp32 scores plus its bf16 probabilities (rows padded to 8, 256 bytes
     * for aligning the second array): vae_ops.cu vae_attention_forward */
    return c->dev == QIE_DEV_CUDA ? (size_t)((N + 7) & ~7) * 6 + 256 : 0;
}

void op_vae_attention(OpCtx *c, void *out, const void *qkv, int B, int N, int C, void *ws, size_t ws_bytes) {
    CUDA_PATH(c, vae_attention_forward(c, out, qkv, B, N, C, ws, ws_bytes));
    (void)ws; (void)ws_bytes;
    vae_attention_forward_cpu(out, qkv, B, N, C);
}

void nchw_to_nhwc_cpu(float *out, const float *inp, int B, int C, int HW, int Cpad) {
    for (int b = 0; b < B; b++)
        for (int p = 0; p < HW; p++) {
            float *o = out + ((size_t)b * HW + p) * Cpad;
            for (int ch = 0; ch < Cpad; ch++) o[ch] = ch < C ? inp[((size_t)b * C + ch) * HW + p] : 0.0f;
        }
}

void op_nchw_to_nhwc(OpCtx *c, void *out, const void *inp, int B, int C, int HW, int Cpad) {
    CUDA_PATH(c, nchw_to_nhwc_forward(c, out, inp, B, C, HW, Cpad));
    nchw_to_nhwc_cpu(out, inp, B, C, HW, Cpad);
}

void vae_posterior_cpu(float *mean, float *logvar, const float *inp, int B, int HW, int z) {
    for (int b = 0; b < B; b++)
        for (int p = 0; p < HW; p++) {
            const float *x = inp + ((size_t)b * HW + p) * 2 * z;
            for (int ch = 0; ch < z; ch++) {
                const size_t o = ((size_t)b * z + ch) * HW + p;
                mean[o] = x[ch];
                const float v = x[z + ch];
                logvar[o] = v != v ? v : fminf(fmaxf(v, -30.0f), 20.0f); /* torch.clamp keeps NaN */
            }
        }
}

void op_vae_posterior(OpCtx *c, float *mean, float *logvar, const void *inp, int B, int HW, int z) {
    CUDA_PATH(c, vae_posterior_forward(c, mean, logvar, inp, B, HW, z));
    vae_posterior_cpu(mean, logvar, inp, B, HW, z);
}
