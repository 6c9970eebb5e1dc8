/* qwen_ops.h: the small ops of the Qwen2.5-VL text encoder (model.md §3.5-3.7), ops.h contract:
 * CPU fp32 references in qwen_ops.c, bf16 CUDA twins in qwen_ops.cu. Forward only (the encoder
 * is frozen). Where upstream rounds to bf16 between steps, the CUDA twin rounds at the same
 * places (named per op), so that bf16 results track transformers' bf16 forward.
 *
 * defines: op_qwen_rmsnorm, op_qwen_rope, op_qwen_swiglu, op_qwen_gelu_erf, op_qwen_gather_rows,
 *          op_qwen_scatter_rows, qwen_upload_i32, qwen_upload_bf16, qwen_*_cpu */
#ifndef QIE_KERNELS_QWEN_OPS_H
#define QIE_KERNELS_QWEN_OPS_H

#include <stdint.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Qwen2RMSNorm: out[r] = w · act( x · rsqrt(mean(x²) + eps) ), statistics fp32; CUDA rounds the
 * normalised row to bf16 BEFORE the gain (model.md §3.6). out, inp act [rows, dim]; w act [dim].
 * out may equal inp. */
void op_qwen_rmsnorm(OpCtx *c, void *out, const void *inp, const void *w, int rows, int dim, float eps);

/* Rotate-half RoPE in place on `nheads` heads of `hd` features, starting at column 0 of each row
 * of x (act, row stride ld elements): x' = x·cos + rot(x)·sin, rot(x) = [-x[hd/2:], x[:hd/2]].
 * cos, sin f32 [rows, hd]. bf16_math selects the CUDA rounding:
 *   0 (ViT, apply_rotary_pos_emb_vision): fp32 math, one rounding at the end;
 *   1 (LLM M-RoPE, apply_rotary_pos_emb): cos/sin rounded to bf16, each product rounded, the
 *     sum rounded (all-bf16 tensor arithmetic). The CPU path is fp32 either way. */
void op_qwen_rope(OpCtx *c, void *x, int ld, int rows, int nheads, int hd, const float *cos, const float *sin,
                  int bf16_math);

/* out[r, f] = SiLU(gu[r, f]) · gu[r, F + f]: gu act [rows, 2F] (gate | up, one GEMM), out act
 * [rows, F]. CUDA rounds SiLU's output to bf16 before the product (act_fn(gate) * up). */
void op_qwen_swiglu(OpCtx *c, void *out, const void *gu, int rows, int F);

/* Exact GELU in place, 0.5·x·(1 + erf(x/√2)) (nn.GELU(), the patch merger). */
void op_qwen_gelu_erf(OpCtx *c, void *x, size_t n);

/* out[i, :] = inp[idx[i], :] for i < n; idx int32 [n] in ctx memory (qwen_upload_i32).
 * Embedding lookup (inp = the table) and the ViT window permutation. out must not alias inp. */
void op_qwen_gather_rows(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim);
/* out[idx[i], :] = inp[i, :] for i < n (vision rows into the image-pad rows). */
void op_qwen_scatter_rows(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim);

/* host int32 -> ctx memory (a plain copy) */
void qwen_upload_i32(OpCtx *c, int32_t *d_dst, const int32_t *h_src, size_t n);
/* host bf16 -> act: a copy on CUDA (act is bf16), widening to f32 on CPU. Weight loading; h_src
 * may be unaligned (safetensors maps). */
void qwen_upload_bf16(OpCtx *c, void *d_dst, const void *h_src, size_t n);

void qwen_rmsnorm_cpu(float *out, const float *inp, const float *w, int rows, int dim, float eps);
void qwen_rope_cpu(float *x, int ld, int rows, int nheads, int hd, const float *cos, const float *sin);

#ifdef QIE_CUDA
void qwen_rmsnorm_forward(OpCtx *c, void *out, const void *inp, const void *w, int rows, int dim, float eps);
void qwen_rope_forward(OpCtx *c, void *x, int ld, int rows, int nheads, int hd, const float *cos, const float *sin,
                       int bf16_math);
void qwen_swiglu_forward(OpCtx *c, void *out, const void *gu, int rows, int F);
void qwen_gelu_erf_forward(OpCtx *c, void *x, size_t n);
void qwen_gather_rows_forward(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim);
void qwen_scatter_rows_forward(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim);
void qwen_copy_h2d_(OpCtx *c, void *d_dst, const void *h_src, size_t bytes);
#endif

#ifdef __cplusplus
}
#endif
#endif
