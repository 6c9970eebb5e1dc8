/* rope.c: fp32 references of RoPE and of the fused q/k RMSNorm + RoPE + joint scatter, and their
 * dispatchers. The fused reference is literally rmsnorm_forward_cpu then the rotation, so it reads
 * as the spec does. */
#include <math.h>
#include <string.h>

#include "rmsnorm.h"
#include "rope.h"

void rope_table_cpu(float *cs, const int *pos, int N, const int axes[3]) {
    const int half = (axes[0] + axes[1] + axes[2]) / 2;
    float inv[512]; /* QwenEmbedRope.rope_params: 1.0 / theta ** (arange(0, dim, 2).float() / dim), fp32 */
    for (int a = 0, k = 0; a < 3; a++)
        for (int j = 0; j < axes[a] / 2 && k < 512; j++, k++) inv[k] = 1.0f / powf(QIE_ROPE_THETA, (float)(2 * j) / (float)axes[a]);
    for (int n = 0; n < N; n++) {
        int k = 0;
        for (int a = 0; a < 3; a++)
            for (int j = 0; j < axes[a] / 2; j++, k++) {
                float th = (float)pos[n * 3 + a] * inv[k];
                cs[((size_t)n * half + k) * 2 + 0] = cosf(th);
                cs[((size_t)n * half + k) * 2 + 1] = sinf(th);
            }
    }
}

static void rotate_(float *out, const float *x, const float *cs, int d, int inverse) {
    for (int k = 0; k < d / 2; k++) {
        float co = cs[2 * k], si = inverse ? -cs[2 * k + 1] : cs[2 * k + 1];
        float a = x[2 * k], b = x[2 * k + 1];
        out[2 * k] = a * co - b * si;
        out[2 * k + 1] = a * si + b * co;
    }
}

void rope_forward_cpu(float *out, const float *inp, const float *cs, int B, int N, int H, int d, int inverse) {
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++)
            for (int h = 0; h < H; h++) {
                size_t o = (((size_t)b * N + n) * H + h) * d;
                rotate_(out + o, inp + o, cs + (size_t)n * d, d, inverse);
            }
}

void qkv_norm_rope_forward_cpu(float *Q, float *K, float *V, float *rstd, const float *qkv, const float *wq,
                               const float *wk, const float *cs, int B, int N, int H, int d, int S, int off) {
    const int D = H * d;
    float tmp[1024];
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            size_t row = (size_t)b * N + n, jrow = (size_t)b * S + off + n;
            const float *src = qkv + row * 3 * D;
            for (int h = 0; h < H; h++) {
                rmsnorm_forward_cpu(tmp, &rstd[row * 2 * H + h], src + h * d, wq, 1, d);
                rotate_(Q + jrow * D + h * d, tmp, cs + (size_t)n * d, d, 0);
                rmsnorm_forward_cpu(tmp, &rstd[row * 2 * H + H + h], src + D + h * d, wk, 1, d);
                rotate_(K + jrow * D + h * d, tmp, cs + (size_t)n * d, d, 0);
            }
            memcpy(V + jrow * D, src + 2 * D, sizeof(float) * D);
        }
}

void qkv_norm_rope_backward_cpu(float *d_qkv, float *d_wq, float *d_wk, const float *dQ, const float *dK,
                                const float *dV, const float *qkv, const float *rstd, const float *wq,
                                const float *wk, const float *cs, int B, int N, int H, int d, int S, int off) {
    const int D = H * d;
    float tmp[1024];
    for (int b = 0; b < B; b++)
        for (int n = 0; n < N; n++) {
            size_t row = (size_t)b * N + n, jrow = (size_t)b * S + off + n;
            const float *src = qkv + row * 3 * D;
            float *dst = d_qkv + row * 3 * D;
            for (int h = 0; h < H; h++) {
                rotate_(tmp, dQ + jrow * D + h * d, cs + (size_t)n * d, d, 1);
                rmsnorm_backward_cpu(dst + h * d, d_wq, tmp, src + h * d, &rstd[row * 2 * H + h], wq, 1, d);
                rotate_(tmp, dK + jrow * D + h * d, cs + (size_t)n * d, d, 1);
                rmsnorm_backward_cpu(dst + D + h * d, d_wk, tmp, src + D + h * d, &rstd[row * 2 * H + H + h], wk, 1, d);
            }
            memcpy(dst + 2 * D, dV + jrow * D, sizeof(float) * D);
        }
}

void op_rope(OpCtx *c, void *out, const void *inp, const float *cs, int B, int N, int H, int d, int inverse) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { rope_forward(c, out, inp, cs, B, N, H, d, inverse); return; }
#endif
    (void)c;
    rope_forward_cpu(out, inp, cs, B, N, H, d, inverse);
}

void op_qkv_norm_rope(OpCtx *c, void *Q, void *K, void *V, float *rstd, const void *qkv, const void *wq,
                      const void *wk, const float *cs, int B, int N, int H, int d, int S, int off) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { qkv_norm_rope_forward(c, Q, K, V, rstd, qkv, wq, wk, cs, B, N, H, d, S, off); return; }
#endif
    (void)c;
    qkv_norm_rope_forward_cpu(Q, K, V, rstd, qkv, wq, wk, cs, B, N, H, d, S, off);
}

void op_qkv_norm_rope_backward(OpCtx *c, void *d_qkv, float *d_wq, float *d_wk, const void *dQ, const void *dK,
                               const void *dV, const void *qkv, const float *rstd, const void *wq, const void *wk,
                               const float *cs, int B, int N, int H, int d, int S, int off) {
    op_qkv_norm_rope_backward_g(c, d_qkv, d_wq, d_wk, QIE_DT_F32, dQ, dK, dV, qkv, rstd, wq, wk, cs, B, N, H, d, S, off);
}

void op_qkv_norm_rope_backward_g(OpCtx *c, void *d_qkv, void *d_wq, void *d_wk, QieDtype gdt, const void *dQ,
                                 const void *dK, const void *dV, const void *qkv, const float *rstd, const void *wq,
                                 const void *wk, const float *cs, int B, int N, int H, int d, int S, int off) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) {
        qkv_norm_rope_backward(c, d_qkv, d_wq, d_wk, gdt, dQ, dK, dV, qkv, rstd, wq, wk, cs, B, N, H, d, S, off);
        return;
    }
#endif
    (void)c;
    op_cpu_grads_f32(gdt, "op_qkv_norm_rope_backward");
    qkv_norm_rope_backward_cpu(d_qkv, d_wq, d_wk, dQ, dK, dV, qkv, rstd, wq, wk, cs, B, N, H, d, S, off);
}
