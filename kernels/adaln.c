/* adaln.c: fp32 reference of the gated residual and its dispatcher. */
#include <string.h>

#include "adaln.h"

void gate_residual_forward_cpu(float *out, const float *h, const float *y, const float *gate, const AdaMod *m) {
    const int D = m->D;
    for (int b = 0; b < m->B; b++)
        for (int n = 0; n < m->N; n++) {
            size_t row = (size_t)b * m->N + n;
            const float *g = gate + (size_t)adamod_row(m, b, n) * m->ld;
            for (int i = 0; i < D; i++) out[row * D + i] = h[row * D + i] + g[i] * y[row * D + i];
        }
}

void gate_residual_backward_cpu(float *d_y, float *d_gate, const float *d_out, const float *y, const float *gate,
                                const AdaMod *m) {
    const int D = m->D;
    if (d_gate)
        for (int r = 0; r < m->sets * m->B; r++) memset(d_gate + (size_t)r * m->ld, 0, sizeof(float) * D);
    for (int b = 0; b < m->B; b++)
        for (int n = 0; n < m->N; n++) {
            size_t row = (size_t)b * m->N + n;
            int mr = adamod_row(m, b, n);
            const float *g = gate + (size_t)mr * m->ld;
            for (int i = 0; i < D; i++) {
                if (d_gate) d_gate[(size_t)mr * m->ld + i] += d_out[row * D + i] * y[row * D + i];
                if (d_y) d_y[row * D + i] = d_out[row * D + i] * g[i];
            }
        }
}

void op_gate_residual(OpCtx *c, void *out, const void *h, const void *y, const void *gate, const AdaMod *m) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { gate_residual_forward(c, out, h, y, gate, m); return; }
#endif
    (void)c;
    gate_residual_forward_cpu(out, h, y, gate, m);
}

void op_gate_residual_backward(OpCtx *c, void *d_y, void *d_gate, const void *d_out, const void *y, const void *gate,
                               const AdaMod *m) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { gate_residual_backward(c, d_y, d_gate, d_out, y, gate, m); return; }
#endif
    (void)c;
    gate_residual_backward_cpu(d_y, d_gate, d_out, y, gate, m);
}
