/* attention.c: fp32 reference of masked joint attention (forward saves the row log-sum-exp; the
 * backward recomputes P from it, as the CUDA flash kernel does) and the dispatchers. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"

static float dot_(const float *a, const float *b, int n) {
    float s = 0.0f;
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

void attention_forward_cpu(float *O, float *lse, const float *Q, const float *K, const float *V,
                           const float *key_valid, int B, int S, int H, int d) {
    const int D = H * d;
    const float scale = 1.0f / sqrtf((float)d);
    float *p = malloc(sizeof(float) * (size_t)S);
    if (!p) abort();
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < S; i++) {
                const float *q = Q + ((size_t)b * S + i) * D + h * d;
                float mx = -INFINITY;
                for (int j = 0; j < S; j++) {
                    if (key_valid && key_valid[(size_t)b * S + j] == 0.0f) { p[j] = -INFINITY; continue; }
                    p[j] = scale * dot_(q, K + ((size_t)b * S + j) * D + h * d, d);
                    if (p[j] > mx) mx = p[j];
                }
                float *o = O + ((size_t)b * S + i) * D + h * d;
                memset(o, 0, sizeof(float) * d);
                float *l = &lse[((size_t)b * H + h) * S + i];
                if (mx == -INFINITY) { *l = -INFINITY; continue; }
                float sum = 0.0f;
                for (int j = 0; j < S; j++) {
                    p[j] = p[j] == -INFINITY ? 0.0f : expf(p[j] - mx);
                    sum += p[j];
                }
                for (int j = 0; j < S; j++) {
                    if (p[j] == 0.0f) continue;
                    const float *v = V + ((size_t)b * S + j) * D + h * d;
                    float w = p[j] / sum;
                    for (int e = 0; e < d; e++) o[e] += w * v[e];
                }
                *l = mx + logf(sum);
            }
    free(p);
}

void attention_backward_cpu(float *dQ, float *dK, float *dV, const float *dO, const float *Q, const float *K,
                            const float *V, const float *O, const float *lse, const float *key_valid, int B, int S,
                            int H, int d) {
    const int D = H * d;
    const float scale = 1.0f / sqrtf((float)d);
    const size_t n = (size_t)B * S * D;
    memset(dQ, 0, n * sizeof(float));
    memset(dK, 0, n * sizeof(float));
    memset(dV, 0, n * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < S; i++) {
                const size_t ri = ((size_t)b * S + i) * D + h * d;
                const float l = lse[((size_t)b * H + h) * S + i];
                if (l == -INFINITY) continue;
                const float delta = dot_(dO + ri, O + ri, d); /* δ = rowsum(dO∘O) */
                for (int j = 0; j < S; j++) {
                    if (key_valid && key_valid[(size_t)b * S + j] == 0.0f) continue;
                    const size_t rj = ((size_t)b * S + j) * D + h * d;
                    float pij = expf(scale * dot_(Q + ri, K + rj, d) - l);
                    float dp = dot_(dO + ri, V + rj, d);
                    float ds = pij * (dp - delta) * scale;
                    for (int e = 0; e < d; e++) {
                        dV[rj + e] += pij * dO[ri + e];
                        dQ[ri + e] += ds * K[rj + e];
                        dK[rj + e] += ds * Q[ri + e];
                    }
                }
            }
}

void op_attention(OpCtx *c, void *O, float *lse, const void *Q, const void *K, const void *V, const float *key_valid,
                  int B, int S, int H, int d) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { attention_forward(c, O, lse, Q, K, V, key_valid, B, S, H, d); return; }
#endif
    (void)c;
    attention_forward_cpu(O, lse, Q, K, V, key_valid, B, S, H, d);
}

void op_attention_backward(OpCtx *c, void *dQ, void *dK, void *dV, const void *dO, const void *Q, const void *K,
                           const void *V, const void *O, const float *lse, const float *key_valid, int B, int S,
                           int H, int d) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) {
        attention_backward(c, dQ, dK, dV, dO, Q, K, V, O, lse, key_valid, B, S, H, d);
        return;
    }
#endif
    (void)c;
    attention_backward_cpu(dQ, dK, dV, dO, Q, K, V, O, lse, key_valid, B, S, H, d);
}
