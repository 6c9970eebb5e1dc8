/* matmul.c: the fp32 reference of op_matmul / op_matmul_backward and their dispatchers.
 * Loops are ordered so that the inner dimension is contiguous in both operands; eight partial
 * sums let gcc vectorise the dot products without -ffast-math. */
#include "dot.h"
#include "matmul.h"


void matmul_forward_cpu(float *out, const float *inp, const float *w, const float *bias, int M, int K, int N) {
    for (int m = 0; m < M; m++) {
        const float *a = inp + (size_t)m * K;
        float *o = out + (size_t)m * N;
        for (int n = 0; n < N; n++) o[n] = dot_f32(a, w + (size_t)n * K, K) + (bias ? bias[n] : 0.0f);
    }
}

void matmul_backward_cpu(float *d_inp, float *d_w, float *d_bias, const float *d_out, const float *inp, const float *w,
                         int M, int K, int N) {
    if (d_inp) {
        for (int m = 0; m < M; m++) {
            float *di = d_inp + (size_t)m * K;
            for (int k = 0; k < K; k++) di[k] = 0.0f;
            const float *g = d_out + (size_t)m * N;
            for (int n = 0; n < N; n++) {
                const float gn = g[n], *wr = w + (size_t)n * K;
                for (int k = 0; k < K; k++) di[k] += gn * wr[k];
            }
        }
    }
    if (d_w) {
        for (int m = 0; m < M; m++) {
            const float *a = inp + (size_t)m * K, *g = d_out + (size_t)m * N;
            for (int n = 0; n < N; n++) {
                const float gn = g[n];
                float *dw = d_w + (size_t)n * K;
                for (int k = 0; k < K; k++) dw[k] += gn * a[k];
            }
        }
    }
    if (d_bias)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) d_bias[n] += d_out[(size_t)m * N + n];
}

void op_matmul(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, int M, int K, int N) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { matmul_forward(c, out, inp, w, bias, M, K, N); return; }
#endif
    (void)c;
    matmul_forward_cpu(out, inp, w, bias, M, K, N);
}

void op_matmul_backward(OpCtx *c, void *d_inp, float *d_w, float *d_bias, const void *d_out, const void *inp,
                        const void *w, int M, int K, int N) {
    op_matmul_backward_g(c, d_inp, d_w, d_bias, QIE_DT_F32, d_out, inp, w, M, K, N);
}

void op_matmul_backward_g(OpCtx *c, void *d_inp, void *d_w, void *d_bias, QieDtype gdt, const void *d_out,
                          const void *inp, const void *w, int M, int K, int N) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { matmul_backward(c, d_inp, d_w, d_bias, gdt, d_out, inp, w, M, K, N); return; }
#endif
    (void)c;
    op_cpu_grads_f32(gdt, "op_matmul_backward");
    matmul_backward_cpu(d_inp, d_w, d_bias, d_out, inp, w, M, K, N);
}
