/* elementwise.h: add, scale, SiLU (ops.h has the contract). */
#ifndef QIE_KERNELS_ELEMENTWISE_H
#define QIE_KERNELS_ELEMENTWISE_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#ifdef QIE_CUDA
void add_forward(OpCtx *c, void *out, const void *a, const void *b, size_t n);
void scale_forward(OpCtx *c, void *x, float s, size_t n);
void silu_forward(OpCtx *c, void *out, const void *inp, size_t n);
void silu_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n);
#endif

#ifdef __cplusplus
}
#endif
#endif
