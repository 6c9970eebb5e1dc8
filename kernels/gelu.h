/* gelu.h: tanh-approximate GELU (torch GELU(approximate="tanh"); spec/model.md 1.6, 1.11):
 *     y = 0.5·x·(1 + tanh(sqrt(2/π)·(x + 0.044715·x³)))
 * defines: op_gelu_tanh(_backward), gelu_tanh_*_cpu */
#ifndef QIE_KERNELS_GELU_H
#define QIE_KERNELS_GELU_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

void op_gelu_tanh(OpCtx *c, void *out, const void *inp, size_t n);
/* d_inp OVERWRITTEN; may alias d_out. */
void op_gelu_tanh_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n);

void gelu_tanh_forward_cpu(float *out, const float *inp, size_t n);
void gelu_tanh_backward_cpu(float *d_inp, const float *d_out, const float *inp, size_t n);
#ifdef QIE_CUDA
void gelu_tanh_forward(OpCtx *c, void *out, const void *inp, size_t n);
void gelu_tanh_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n);
#endif

#ifdef __cplusplus
}
#endif
#endif
