/* matmul.h: GEMMs of linear layers (ops.h has the contract). CPU reference in matmul.c;
 * cuBLASLt launchers in matmul.cu (bf16 in/out, fp32 accumulation, bias epilogue; weight
 * gradients written in fp32 with beta = 1). */
#ifndef QIE_KERNELS_MATMUL_H
#define QIE_KERNELS_MATMUL_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

void matmul_forward_cpu(float *out, const float *inp, const float *w, const float *bias, int M, int K, int N);
void matmul_backward_cpu(float *d_inp, float *d_w, float *d_bias, const float *d_out, const float *inp, const float *w,
                         int M, int K, int N);
#ifdef QIE_CUDA
void matmul_forward(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, int M, int K, int N);
void matmul_backward(OpCtx *c, void *d_inp, float *d_w, float *d_bias, const void *d_out, const void *inp,
                     const void *w, int M, int K, int N);
#endif

#ifdef __cplusplus
}
#endif
#endif
