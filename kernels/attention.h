/* attention.h: joint (text + image) non-causal multi-head attention with a key padding mask
 * (spec/model.md 1.6, 1.11; diffusers QwenDoubleStreamAttnProcessor2_0 -> SDPA):
 *     O = softmax(Q·Kᵀ / sqrt(d) + M) · V,   M[b, ·, j] = −∞ where key_valid[b, j] == 0
 * Q, K, V, O act [B, S, H, d] (= [B, S, D], head h owns features h·d .. h·d+d−1); lse f32 [B, H, S]
 * is the natural-log log-sum-exp of each scaled, masked score row, saved for the backward
 * (flash-attention style: P is recomputed, never stored). key_valid f32 [B, S] (1 = attend,
 * 0 = padding) or NULL (no mask). A row whose keys are all masked gives O = 0 and lse = −inf.
 * CPU: plain loops (the reference). CUDA: a flash-attention kernel (tiles in shared memory,
 * online softmax, bf16 tensor cores, fp32 accumulation) for forward and backward.
 *
 * defines: op_attention(_backward), attention_*_cpu */
#ifndef QIE_KERNELS_ATTENTION_H
#define QIE_KERNELS_ATTENTION_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

void op_attention(OpCtx *c, void *O, float *lse, const void *Q, const void *K, const void *V, const float *key_valid,
                  int B, int S, int H, int d);
/* dQ, dK, dV act (OVERWRITTEN). Uses P = exp(s·QKᵀ − lse), δ = rowsum(dO∘O) (spec 1.11). */
void op_attention_backward(OpCtx *c, void *dQ, void *dK, void *dV, const void *dO, const void *Q, const void *K,
                           const void *V, const void *O, const float *lse, const float *key_valid, int B, int S,
                           int H, int d);

void attention_forward_cpu(float *O, float *lse, const float *Q, const float *K, const float *V,
                           const float *key_valid, int B, int S, int H, int d);
void attention_backward_cpu(float *dQ, float *dK, float *dV, const float *dO, const float *Q, const float *K,
                            const float *V, const float *O, const float *lse, const float *key_valid, int B, int S,
                            int H, int d);
#ifdef QIE_CUDA
void attention_forward(OpCtx *c, void *O, float *lse, const void *Q, const void *K, const void *V,
                       const float *key_valid, int B, int S, int H, int d);
void attention_backward(OpCtx *c, void *dQ, void *dK, void *dV, const void *dO, const void *Q, const void *K,
                        const void *V, const void *O, const float *lse, const float *key_valid, int B, int S, int H,
                        int d);
#endif

#ifdef __cplusplus
}
#endif
#endif
