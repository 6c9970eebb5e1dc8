/* gelu.c: fp32 reference of the tanh GELU and its dispatcher. */
#include <math.h>

#include "gelu.h"

#define GELU_C 0.7978845608028654f /* sqrt(2/π) */

void gelu_tanh_forward_cpu(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i];
        out[i] = 0.5f * x * (1.0f + tanhf(GELU_C * (x + 0.044715f * x * x * x)));
    }
}

/* dy/dx = 0.5(1+T) + 0.5·x·(1−T²)·c·(1 + 3·0.044715·x²),  T = tanh(c(x + 0.044715x³)) */
void gelu_tanh_backward_cpu(float *d_inp, const float *d_out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], T = tanhf(GELU_C * (x + 0.044715f * x * x * x));
        float g = 0.5f * (1.0f + T) + 0.5f * x * (1.0f - T * T) * GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
        d_inp[i] = d_out[i] * g;
    }
}

void op_gelu_tanh(OpCtx *c, void *out, const void *inp, size_t n) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { gelu_tanh_forward(c, out, inp, n); return; }
#endif
    (void)c;
    gelu_tanh_forward_cpu(out, inp, n);
}

void op_gelu_tanh_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { gelu_tanh_backward(c, d_inp, d_out, inp, n); return; }
#endif
    (void)c;
    gelu_tanh_backward_cpu(d_inp, d_out, inp, n);
}
