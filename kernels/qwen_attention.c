/* qwen_attention.c: fp32 reference of op_qwen_attention (two passes per row: max, then the
 * normalised weighted sum), and its dispatcher. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "qwen_attention.h"

void qwen_attention_forward_cpu(float *out, const float *q, int ldq, const float *k, const float *v, int ldkv, int N,
                                int nh, int nkv, int hd, const int32_t *lo, const int32_t *hi, float scale) {
    int rep = nh / nkv;
    float *p = malloc((size_t)(N > 0 ? N : 1) * sizeof *p);
    if (!p) {
        fprintf(stderr, "qwen_attention_forward_cpu: out of memory for %d scores\n", N);
        exit(EXIT_FAILURE);
    }
    for (int i = 0; i < N; i++) {
        int j0 = lo[i], j1 = hi[i];
        for (int h = 0; h < nh; h++) {
            const float *qi = q + (size_t)i * ldq + (size_t)h * hd;
            int g = h / rep;
            float m = -INFINITY;
            for (int j = j0; j < j1; j++) {
                const float *kj = k + (size_t)j * ldkv + (size_t)g * hd;
                float s = 0.0f;
                for (int d = 0; d < hd; d++) s += qi[d] * kj[d];
                s *= scale;
                p[j - j0] = s;
                if (s > m) m = s;
            }
            float sum = 0.0f;
            for (int j = j0; j < j1; j++) sum += p[j - j0] = expf(p[j - j0] - m);
            float *o = out + (size_t)i * nh * hd + (size_t)h * hd;
            for (int d = 0; d < hd; d++) o[d] = 0.0f;
            for (int j = j0; j < j1; j++) {
                const float *vj = v + (size_t)j * ldkv + (size_t)g * hd;
                float w = p[j - j0] / sum;
                for (int d = 0; d < hd; d++) o[d] += w * vj[d];
            }
        }
    }
    free(p);
}

void op_qwen_attention(OpCtx *c, void *out, const void *q, int ldq, const void *k, const void *v, int ldkv, int N,
                       int nh, int nkv, int hd, const int32_t *lo, const int32_t *hi, float scale) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) {
        qwen_attention_forward(c, out, q, ldq, k, v, ldkv, N, nh, nkv, hd, lo, hi, scale);
        return;
    }
#endif
    (void)c;
    qwen_attention_forward_cpu(out, q, ldq, k, v, ldkv, N, nh, nkv, hd, lo, hi, scale);
}
