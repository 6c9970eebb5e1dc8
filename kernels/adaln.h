/* adaln.h: the gated residual of the AdaLN blocks (spec/model.md 1.6, 1.11):
 *     out[b, n, :] = h[b, n, :] + gate[r] · y[b, n, :],   r = adamod_row(m, b, n)
 * gate is a chunk of the modulation matrix (act, row stride m->ld). The modulation itself
 * (LN(x)·(1+scale)+shift) is fused into the LayerNorm: layernorm.h.
 *
 * defines: op_gate_residual(_backward), gate_residual_*_cpu */
#ifndef QIE_KERNELS_ADALN_H
#define QIE_KERNELS_ADALN_H

#include "layernorm.h"
#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out may alias h (in place). All act [B*N, D]. */
void op_gate_residual(OpCtx *c, void *out, const void *h, const void *y, const void *gate, const AdaMod *m);
/* Backward. The residual path is the identity (d_h = d_out: callers keep using d_out).
 *   d_y[b, n]  = d_out[b, n] · gate[r]            (act, OVERWRITTEN; may alias nothing else)
 *   d_gate[r]  = Σ_{tokens of row r} d_out · y    (act, OVERWRITTEN for all m->sets * B rows) */
void op_gate_residual_backward(OpCtx *c, void *d_y, void *d_gate, const void *d_out, const void *y, const void *gate,
                               const AdaMod *m);

void gate_residual_forward_cpu(float *out, const float *h, const float *y, const float *gate, const AdaMod *m);
void gate_residual_backward_cpu(float *d_y, float *d_gate, const float *d_out, const float *y, const float *gate,
                                const AdaMod *m);
#ifdef QIE_CUDA
void gate_residual_forward(OpCtx *c, void *out, const void *h, const void *y, const void *gate, const AdaMod *m);
void gate_residual_backward(OpCtx *c, void *d_y, void *d_gate, const void *d_out, const void *y, const void *gate,
                            const AdaMod *m);
#endif

#ifdef __cplusplus
}
#endif
#endif
