/* layernorm.c: fp32 reference of the LayerNorm + AdaLN modulation op and its dispatcher.
 * Statistics in fp32 with a two-pass variance (biased, as torch.nn.LayerNorm). */
#include <math.h>
#include <string.h>

#include "layernorm.h"

void layernorm_modulate_forward_cpu(float *out, float *mean, float *rstd, const float *inp, const float *shift,
                                    const float *scale, const AdaMod *m) {
    const int D = m->D;
    for (int b = 0; b < m->B; b++)
        for (int n = 0; n < m->N; n++) {
            size_t row = (size_t)b * m->N + n;
            const float *x = inp + row * D;
            float *y = out + row * D;
            float mu = 0.0f, var = 0.0f;
            for (int i = 0; i < D; i++) mu += x[i];
            mu /= D;
            for (int i = 0; i < D; i++) var += (x[i] - mu) * (x[i] - mu);
            var /= D;
            float r = 1.0f / sqrtf(var + QIE_LN_EPS);
            mean[row] = mu;
            rstd[row] = r;
            int mr = adamod_row(m, b, n);
            const float *sh = shift ? shift + (size_t)mr * m->ld : NULL, *sc = scale ? scale + (size_t)mr * m->ld : NULL;
            for (int i = 0; i < D; i++) {
                float v = (x[i] - mu) * r;
                if (sc) v = v * (1.0f + sc[i]);
                if (sh) v += sh[i];
                y[i] = v;
            }
        }
}

void layernorm_modulate_backward_cpu(float *d_inp, float *d_shift, float *d_scale, const float *d_out,
                                     const float *inp, const float *mean, const float *rstd, const float *scale,
                                     const AdaMod *m) {
    const int D = m->D, rows = m->sets * m->B;
    for (int r = 0; r < rows; r++) {
        if (d_shift) memset(d_shift + (size_t)r * m->ld, 0, sizeof(float) * D);
        if (d_scale) memset(d_scale + (size_t)r * m->ld, 0, sizeof(float) * D);
    }
    for (int b = 0; b < m->B; b++)
        for (int n = 0; n < m->N; n++) {
            size_t row = (size_t)b * m->N + n;
            const float *x = inp + row * D, *dy = d_out + row * D;
            float *dx = d_inp + row * D;
            const float mu = mean[row], r = rstd[row];
            int mr = adamod_row(m, b, n);
            const float *sc = scale ? scale + (size_t)mr * m->ld : NULL;
            float *dsh = d_shift ? d_shift + (size_t)mr * m->ld : NULL, *dsc = d_scale ? d_scale + (size_t)mr * m->ld : NULL;
            /* dn = dy·(1 + s); dx = r·(dn − mean(dn) − n·mean(dn·n))   (spec 1.11) */
            float mdn = 0.0f, mdnn = 0.0f;
            for (int i = 0; i < D; i++) {
                float nv = (x[i] - mu) * r, dn = sc ? dy[i] * (1.0f + sc[i]) : dy[i];
                mdn += dn;
                mdnn += dn * nv;
                if (dsh) dsh[i] += dy[i];
                if (dsc) dsc[i] += dy[i] * nv;
            }
            mdn /= D;
            mdnn /= D;
            for (int i = 0; i < D; i++) {
                float nv = (x[i] - mu) * r, dn = sc ? dy[i] * (1.0f + sc[i]) : dy[i];
                dx[i] += r * (dn - mdn - nv * mdnn);
            }
        }
}

void op_layernorm_modulate(OpCtx *c, void *out, float *mean, float *rstd, const void *inp, const void *shift,
                           const void *scale, const AdaMod *m) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { layernorm_modulate_forward(c, out, mean, rstd, inp, shift, scale, m); return; }
#endif
    (void)c;
    layernorm_modulate_forward_cpu(out, mean, rstd, inp, shift, scale, m);
}

void op_layernorm_modulate_backward(OpCtx *c, void *d_inp, void *d_shift, void *d_scale, const void *d_out,
                                    const void *inp, const float *mean, const float *rstd, const void *scale,
                                    const AdaMod *m) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) {
        layernorm_modulate_backward(c, d_inp, d_shift, d_scale, d_out, inp, mean, rstd, scale, m);
        return;
    }
#endif
    (void)c;
    layernorm_modulate_backward_cpu(d_inp, d_shift, d_scale, d_out, inp, mean, rstd, scale, m);
}
