/* elementwise.c: fp32 references and dispatchers of the elementwise ops. */
#include <math.h>

#include "elementwise.h"

#ifdef QIE_CUDA
#define CUDA_PATH(c, call) do { if ((c)->dev == QIE_DEV_CUDA) { call; return; } } while (0)
#else
#define CUDA_PATH(c, call) (void)(c)
#endif

void op_add(OpCtx *c, void *out, const void *a, const void *b, size_t n) {
    CUDA_PATH(c, add_forward(c, out, a, b, n));
    float *o = out;
    const float *x = a, *y = b;
    for (size_t i = 0; i < n; i++) o[i] = x[i] + y[i];
}

void op_add_inplace(OpCtx *c, void *acc, const void *x, size_t n) { op_add(c, acc, acc, x, n); }

void op_scale(OpCtx *c, void *x, float s, size_t n) {
    CUDA_PATH(c, scale_forward(c, x, s, n));
    float *v = x;
    for (size_t i = 0; i < n; i++) v[i] *= s;
}

void op_silu(OpCtx *c, void *out, const void *inp, size_t n) {
    CUDA_PATH(c, silu_forward(c, out, inp, n));
    float *o = out;
    const float *x = inp;
    for (size_t i = 0; i < n; i++) o[i] = x[i] / (1.0f + expf(-x[i]));
}

void op_silu_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n) {
    CUDA_PATH(c, silu_backward(c, d_inp, d_out, inp, n));
    float *di = d_inp;
    const float *g = d_out, *x = inp;
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-x[i]));
        di[i] = g[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}
