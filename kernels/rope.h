/* rope.h: the 3-axis rotary embedding of QwenImageTransformer2DModel (spec/model.md 1.7) and the
 * fused attention-input op of a dual-stream block (spec 1.6):
 *
 *   rope_table_cpu   per-token (cos θ, sin θ) tables from signed integer positions (frame,
 *                    height, width): θ = fp32(p · inv_a[j]), inv_a[j] = 1/10000^(2j/dim_a), axes
 *                    laid out frame | height | width over the d/2 complex slots (diffusers
 *                    QwenEmbedRope.rope_params + _compute_video_freqs).
 *   op_rope          x'[2k] = x[2k]·cos − x[2k+1]·sin, x'[2k+1] = x[2k]·sin + x[2k+1]·cos
 *                    (apply_rotary_emb_qwen, use_real=False: interleaved pairs); inverse = 1
 *                    rotates by −θ, which is the backward.
 *   op_qkv_norm_rope one stream's fused to_q/to_k/to_v GEMM output [B·N, 3D] -> per-head RMSNorm
 *                    of q and k (norm_q/norm_k or norm_added_q/norm_added_k), RoPE on q and k, and
 *                    the scatter of q, k, v into the joint [B, S, D] sequence at row `off` (text
 *                    first: off = 0 for text, N_t for image).
 * Tables: cs f32 [N, d/2, 2], row n for token n of the stream (the same for every sample).
 *
 * defines: rope_table_cpu, op_rope, op_qkv_norm_rope(_backward), *_cpu */
#ifndef QIE_KERNELS_ROPE_H
#define QIE_KERNELS_ROPE_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QIE_ROPE_THETA 10000.0f

/* pos: int32 [N, 3] (frame, height, width positions, signed); axes: dims summing to d, each even.
 * Writes cs [N, d/2, 2] (host memory; upload with op_upload_f32). */
void rope_table_cpu(float *cs, const int *pos, int N, const int axes[3]);

/* out, inp act [B, N, H, d] (out may alias inp); cs f32 [N, d/2, 2]. */
void op_rope(OpCtx *c, void *out, const void *inp, const float *cs, int B, int N, int H, int d, int inverse);

/* Forward: rstd f32 [B·N, 2H] (q heads then k heads) saved for the backward; wq, wk act [d]. */
void op_qkv_norm_rope(OpCtx *c, void *Q, void *K, void *V, float *rstd, const void *qkv, const void *wq,
                      const void *wk, const float *cs, int B, int N, int H, int d, int S, int off);
/* Backward: d_qkv act [B·N, 3D] OVERWRITTEN; d_wq, d_wk f32 [d] ACCUMULATED. */
void op_qkv_norm_rope_backward(OpCtx *c, void *d_qkv, float *d_wq, float *d_wk, const void *dQ, const void *dK,
                               const void *dV, const void *qkv, const float *rstd, const void *wq, const void *wk,
                               const float *cs, int B, int N, int H, int d, int S, int off);
/* d_wq, d_wk of dtype gdt (ops.h "_g"). */
void op_qkv_norm_rope_backward_g(OpCtx *c, void *d_qkv, void *d_wq, void *d_wk, QieDtype gdt, const void *dQ,
                                 const void *dK, const void *dV, const void *qkv, const float *rstd, const void *wq,
                                 const void *wk, const float *cs, int B, int N, int H, int d, int S, int off);

void rope_forward_cpu(float *out, const float *inp, const float *cs, int B, int N, int H, int d, int inverse);
void qkv_norm_rope_forward_cpu(float *Q, float *K, float *V, float *rstd, const float *qkv, const float *wq,
                               const float *wk, const float *cs, int B, int N, int H, int d, int S, int off);
void qkv_norm_rope_backward_cpu(float *d_qkv, float *d_wq, float *d_wk, const float *dQ, const float *dK,
                                const float *dV, const float *qkv, const float *rstd, const float *wq,
                                const float *wk, const float *cs, int B, int N, int H, int d, int S, int off);
#ifdef QIE_CUDA
void rope_forward(OpCtx *c, void *out, const void *inp, const float *cs, int B, int N, int H, int d, int inverse);
void qkv_norm_rope_forward(OpCtx *c, void *Q, void *K, void *V, float *rstd, const void *qkv, const void *wq,
                           const void *wk, const float *cs, int B, int N, int H, int d, int S, int off);
void qkv_norm_rope_backward(OpCtx *c, void *d_qkv, void *d_wq, void *d_wk, QieDtype gdt, const void *dQ, const void *dK,
                            const void *dV, const void *qkv, const float *rstd, const void *wq, const void *wk,
                            const float *cs, int B, int N, int H, int d, int S, int off);
#endif

#ifdef __cplusplus
}
#endif
#endif
