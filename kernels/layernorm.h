/* layernorm.h: LayerNorm without affine (eps 1e-6) fused with the AdaLN modulation of
 * QwenImageTransformer2DModel (spec/model.md 1.6, 1.8, 1.9):
 *     out[b, n, :] = LN(inp[b, n, :]) · (1 + scale[r]) + shift[r],   r = adamod_row(m, b, n)
 * The modulation rows come straight out of the img_mod/txt_mod/norm_out GEMM ([rows, ld] act), so
 * shift and scale are pointers to a chunk of that matrix. shift = scale = NULL is a plain LayerNorm.
 * Statistics (mean, rstd) are fp32 and saved for the backward. ops.h has the buffer contract.
 *
 * defines: AdaMod, adamod_row, op_layernorm_modulate(_backward), layernorm_modulate_*_cpu */
#ifndef QIE_KERNELS_LAYERNORM_H
#define QIE_KERNELS_LAYERNORM_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QIE_LN_EPS 1e-6f

/* Which modulation row token (b, n) of a [B, N, D] stream reads: row b (set 0), or row B + b
 * (set 1) when sets == 2 and n >= n0. Set 1 is the zero_cond_t "σ = 0" parameter set of the
 * condition-image tokens (spec 1.9); every other stream has sets == 1. */
typedef struct {
    int B, N, D;
    int sets; /* 1 or 2 */
    int n0;   /* first token of set 1 (only read when sets == 2) */
    int ld;   /* row stride of the modulation matrix, elements (6D for the blocks, 2D for norm_out) */
} AdaMod;

#ifdef __cplusplus
#define QIE_HD_ __host__ __device__
#else
#define QIE_HD_
#endif
static inline QIE_HD_ int adamod_row(const AdaMod *m, int b, int n) {
    return (m->sets == 2 && n >= m->n0) ? m->B + b : b;
}

/* mean, rstd: f32 [B*N]; out, inp act [B*N, D]; shift, scale act rows (stride m->ld) or NULL. */
void op_layernorm_modulate(OpCtx *c, void *out, float *mean, float *rstd, const void *inp, const void *shift,
                           const void *scale, const AdaMod *m);
/* Backward. d_inp is ACCUMULATED (+=): it is the residual-stream gradient, which also receives the
 * identity path of the residual add. d_shift / d_scale (act, stride m->ld, may be NULL) are
 * OVERWRITTEN for all m->sets * B rows (Σ over that row's tokens; 0 for a set without tokens). */
void op_layernorm_modulate_backward(OpCtx *c, void *d_inp, void *d_shift, void *d_scale, const void *d_out,
                                    const void *inp, const float *mean, const float *rstd, const void *scale,
                                    const AdaMod *m);

void layernorm_modulate_forward_cpu(float *out, float *mean, float *rstd, const float *inp, const float *shift,
                                    const float *scale, const AdaMod *m);
void layernorm_modulate_backward_cpu(float *d_inp, float *d_shift, float *d_scale, const float *d_out,
                                     const float *inp, const float *mean, const float *rstd, const float *scale,
                                     const AdaMod *m);
#ifdef QIE_CUDA
void layernorm_modulate_forward(OpCtx *c, void *out, float *mean, float *rstd, const void *inp, const void *shift,
                                const void *scale, const AdaMod *m);
void layernorm_modulate_backward(OpCtx *c, void *d_inp, void *d_shift, void *d_scale, const void *d_out,
                                 const void *inp, const float *mean, const float *rstd, const void *scale,
                                 const AdaMod *m);
#endif

#ifdef __cplusplus
}
#endif
#endif
