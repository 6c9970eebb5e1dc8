/* qwen_attention.h: softmax attention over per-row key ranges, with grouped KV heads (GQA), for
 * the Qwen2.5-VL encoder (model.md §3.5 step 4, §3.6). One op serves three masks, because each
 * query row names its own key range [lo[i], hi[i]):
 *   - LLM, packed samples, causal:     lo = first row of the sample, hi = i + 1;
 *   - ViT window blocks:               lo/hi = the window of row i (window order);
 *   - ViT full-attention blocks:       lo/hi = the image of row i.
 * Packing samples without padding makes the key-padding mask unnecessary: a sample never sees
 * another's rows. Scores and softmax in fp32 (the eager path upcasts; SDPA accumulates in fp32).
 *
 * defines: op_qwen_attention, qwen_attention_forward_cpu, qwen_attention_forward */
#ifndef QIE_KERNELS_QWEN_ATTENTION_H
#define QIE_KERNELS_QWEN_ATTENTION_H

#include <stdint.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out[i, h·hd + d] = Σ_{j ∈ [lo_i, hi_i)} softmax_j(scale · q_i,h · k_j,g) · v_j,g[d],  g = h / (nh / nkv).
 * q act [N, ldq] (head h at column h·hd); k, v act [N, ldkv] (KV head g at column g·hd; they may
 * point into one fused qkv buffer); out act [N, nh·hd], dense. lo, hi int32 [N] in ctx memory,
 * lo < hi. hd even and <= 128 (QWEN_ATTN_MAX_HD); nh a multiple of nkv. */
#define QWEN_ATTN_MAX_HD 128
void op_qwen_attention(OpCtx *c, void *out, const void *q, int ldq, const void *k, const void *v, int ldkv, int N,
                       int nh, int nkv, int hd, const int32_t *lo, const int32_t *hi, float scale);

void qwen_attention_forward_cpu(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int N,
                                int nh, int nkv, int hd, const int32_t *lo, const int32_t *hi, float scale);
#ifdef QIE_CUDA
void qwen_attention_forward(OpCtx *c, void *out, const void *q, int ldq, const void *k, const void *v, int ldkv, int N,
                            int nh, int nkv, int hd, const int32_t *lo, const int32_t *hi, float scale);
#endif

#ifdef __cplusplus
}
#endif
#endif
