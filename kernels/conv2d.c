/* conv2d.c: the fp32 reference of op_conv2d and its dispatcher (conv2d.h has the contract).
 * Per output pixel the k×k×Cin patch is gathered into one contiguous row (zeros where it hangs
 * over the padding), in the same (ky, kx, ci) order as the weight rows, so each output channel
 * is one dot product: an im2col of one row, readable and vectorisable. */
#include "dot.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv2d.h"


void conv2d_forward_cpu(float *out, const float *inp, const float *w, const float *bias, const float *residual,
                        const Conv2dShape *s) {
    const int Ho = conv2d_out_h(s), Wo = conv2d_out_w(s), k = s->k, Cin = s->Cin, Cout = s->Cout;
    const int K = k * k * Cin;
    float *col = malloc((size_t)K * sizeof(float));
    if (!col) {
        fprintf(stderr, "conv2d_forward_cpu: out of memory for %d floats\n", K);
        exit(EXIT_FAILURE);
    }
    for (int b = 0; b < s->B; b++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                for (int ky = 0; ky < k; ky++) {
                    const int iy = oy * s->stride + ky - s->pad_t;
                    for (int kx = 0; kx < k; kx++) {
                        const int ix = ox * s->stride + kx - s->pad_l;
                        float *dst = col + (size_t)(ky * k + kx) * Cin;
                        if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W)
                            memset(dst, 0, (size_t)Cin * sizeof(float));
                        else
                            memcpy(dst, inp + (((size_t)b * s->H + iy) * s->W + ix) * Cin, (size_t)Cin * sizeof(float));
                    }
                }
                const size_t o = (((size_t)b * Ho + oy) * Wo + ox) * Cout;
                for (int co = 0; co < Cout; co++) {
                    float v = dot_f32(col, w + (size_t)co * K, K) + (bias ? bias[co] : 0.0f);
                    out[o + co] = residual ? v + residual[o + co] : v;
                }
            }
    free(col);
}

size_t op_conv2d_workspace(const OpCtx *c, const Conv2dShape *s) {
    if (c->dev != QIE_DEV_CUDA) return 0;
    if (s->k == 1 && s->stride == 1 && !(s->pad_t | s->pad_b | s->pad_l | s->pad_r)) return 0;
    return (size_t)conv2d_out_w(s) * s->k * s->k * s->Cin * op_act_size(c);
}

void op_conv2d(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, const void *residual,
               const Conv2dShape *s, void *ws, size_t ws_bytes) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { conv2d_forward(c, out, inp, w, bias, residual, s, ws, ws_bytes); return; }
#endif
    (void)c; (void)ws; (void)ws_bytes;
    conv2d_forward_cpu(out, inp, w, bias, residual, s);
}
