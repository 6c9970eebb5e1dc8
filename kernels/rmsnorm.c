/* rmsnorm.c: fp32 reference of RMSNorm and its dispatcher. */
#include <math.h>

#include "rmsnorm.h"

void rmsnorm_forward_cpu(float *out, float *rstd, const float *inp, const float *w, int rows, int dim) {
    for (int r = 0; r < rows; r++) {
        const float *x = inp + (size_t)r * dim;
        float *y = out + (size_t)r * dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += x[i] * x[i];
        float rs = 1.0f / sqrtf(ss / dim + QIE_RMS_EPS);
        if (rstd) rstd[r] = rs;
        for (int i = 0; i < dim; i++) y[i] = x[i] * rs * w[i];
    }
}

/* g = dy·w;  dx = r·g − x·r³·mean(g·x);  dw += Σ_rows dy·x·r   (spec 1.11) */
void rmsnorm_backward_cpu(float *d_inp, float *d_w, const float *d_out, const float *inp, const float *rstd,
                          const float *w, int rows, int dim) {
    for (int r = 0; r < rows; r++) {
        const float *x = inp + (size_t)r * dim, *dy = d_out + (size_t)r * dim;
        const float rs = rstd[r];
        float mgx = 0.0f;
        for (int i = 0; i < dim; i++) mgx += dy[i] * w[i] * x[i];
        mgx /= dim;
        if (d_w)
            for (int i = 0; i < dim; i++) d_w[i] += dy[i] * x[i] * rs;
        if (d_inp) {
            float *dx = d_inp + (size_t)r * dim;
            for (int i = 0; i < dim; i++) dx[i] = rs * dy[i] * w[i] - x[i] * rs * rs * rs * mgx;
        }
    }
}

void op_rmsnorm(OpCtx *c, void *out, float *rstd, const void *inp, const void *w, int rows, int dim) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { rmsnorm_forward(c, out, rstd, inp, w, rows, dim); return; }
#endif
    (void)c;
    rmsnorm_forward_cpu(out, rstd, inp, w, rows, dim);
}

void op_rmsnorm_backward(OpCtx *c, void *d_inp, float *d_w, const void *d_out, const void *inp, const float *rstd,
                         const void *w, int rows, int dim) {
    op_rmsnorm_backward_g(c, d_inp, d_w, QIE_DT_F32, d_out, inp, rstd, w, rows, dim);
}

void op_rmsnorm_backward_g(OpCtx *c, void *d_inp, void *d_w, QieDtype gdt, const void *d_out, const void *inp,
                           const float *rstd, const void *w, int rows, int dim) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { rmsnorm_backward(c, d_inp, d_w, gdt, d_out, inp, rstd, w, rows, dim); return; }
#endif
    (void)c;
    op_cpu_grads_f32(gdt, "op_rmsnorm_backward");
    rmsnorm_backward_cpu(d_inp, d_w, d_out, inp, rstd, w, rows, dim);
}
