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
void matmul_backward(OpCtx *c, void *d_inp, void *d_w, void *d_bias, QieDtype gdt, const void *d_out, const void *inp,
                     const void *w, int M, int K, int N);
/* General bf16 GEMM with fp32 accumulation, row-major view (matmul, conv2d and the VAE attention):
 *   D[M,N] = alpha · op(A)[M,K] · op(B)[K,N] + beta · C[M,N] (+ bias[N])
 * where op(A) = A [M,K] (lda) or, with ta, Aᵀ of A [K,M]; op(B) = B [K,N] (ldb) or, with tb,
 * Bᵀ of B [N,K]. C may be NULL (beta ignored) or alias D. d_f32 selects an f32 D (C ignored). */
void matmul_gemm(OpCtx *c, int M, int N, int K, float alpha, const void *A, int lda, int ta, const void *B, int ldb,
                  int tb, const void *C, int ldc, float beta, void *D, int ldd, int d_f32, const void *bias);
#endif

#ifdef __cplusplus
}
#endif
#endif
