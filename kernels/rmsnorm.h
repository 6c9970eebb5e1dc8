/* rmsnorm.h: RMSNorm with a gain (diffusers RMSNorm; spec/model.md 1.6 "Details", 1.11):
 *     r = 1 / sqrt(mean(x²) + 1e-6),   y = x · r · w          (statistics fp32)
 * Used for txt_norm (rows B·N_t, dim J). The per-head q/k norms are fused with RoPE (rope.h).
 *
 * defines: QIE_RMS_EPS, op_rmsnorm(_backward), rmsnorm_*_cpu */
#ifndef QIE_KERNELS_RMSNORM_H
#define QIE_KERNELS_RMSNORM_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QIE_RMS_EPS 1e-6f

/* out, inp act [rows, dim]; w act [dim]; rstd f32 [rows] (saved for the backward). */
void op_rmsnorm(OpCtx *c, void *out, float *rstd, const void *inp, const void *w, int rows, int dim);
/* d_inp act (OVERWRITTEN); d_w f32 [dim] (ACCUMULATED), may be NULL. */
void op_rmsnorm_backward(OpCtx *c, void *d_inp, float *d_w, const void *d_out, const void *inp, const float *rstd,
                         const void *w, int rows, int dim);
/* d_w of dtype gdt (ops.h "_g"). */
void op_rmsnorm_backward_g(OpCtx *c, void *d_inp, void *d_w, QieDtype gdt, const void *d_out, const void *inp,
                           const float *rstd, const void *w, int rows, int dim);

void rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *w, int rows, int dim);
void rmsnorm_backward_cpu(float *d_inp, float *d_w, const float *d_out, const float *inp, const float *rstd,
                          const float *w, int rows, int dim);
#ifdef QIE_CUDA
void rmsnorm_forward(OpCtx *c, void *out, float *rstd, const void *inp, const void *w, int rows, int dim);
void rmsnorm_backward(OpCtx *c, void *d_inp, void *d_w, QieDtype gdt, const void *d_out, const void *inp, const float *rstd,
                      const void *w, int rows, int dim);
#endif

#ifdef __cplusplus
}
#endif
#endif
