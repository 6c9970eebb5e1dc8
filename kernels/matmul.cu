// matmul.cu: cuBLASLt GEMMs: matmul_gemm (a general row-major bf16 GEMM with fp32 accumulation,
// also used by the convolutions and the VAE attention) and op_matmul / op_matmul_backward on it.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "colreduce.cuh"
#include "matmul.h"

// Row-major D[M,N] is column-major Dᶜ (N×M) to cuBLAS: D = op(A)·op(B) is issued as
// Dᶜ = op'(Bᶜ)·op'(Aᶜ) with m' = N, n' = M.
extern "C" void matmul_gemm(OpCtx *c, int M, int N, int K, float alpha, const void *A, int lda, int ta,
                             const void *B, int ldb, int tb, const void *C, int ldc, float beta, void *D, int ldd,
                             int d_f32, const void *bias) {
    cublasLtHandle_t h = (cublasLtHandle_t)c->cublaslt;
    cublasLtMatmulDesc_t op;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N, opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    const cudaDataType_t dt = d_f32 ? CUDA_R_32F : CUDA_R_16BF;
    cublasLtMatrixLayout_t la, lb, lc, ld;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, tb ? K : N, tb ? N : K, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, ta ? M : K, ta ? K : M, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, dt, N, M, ldd));
    if (d_f32) { /* an f32 D accumulates into itself (beta as given) */
        C = D;
        ldc = ldd;
    } else if (!C) {
        C = D;
        ldc = ldd;
        beta = 0.0f;
    }
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lc, dt, N, M, ldc));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = c->workspace_bytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, lc, ld, pref, 1, &heur, &found));
    if (!found) {
        fprintf(stderr, "[cuBLASLt] matmul_gemm: no algorithm for M=%d N=%d K=%d ta=%d tb=%d\n", M, N, K, ta, tb);
        exit(EXIT_FAILURE);
    }
    CUBLAS_CHECK(cublasLtMatmul(h, op, &alpha, B, la, A, lb, &beta, C, lc, D, ld, &heur.algo, c->workspace, ws,
                                (cudaStream_t)c->stream));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lc));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(op));
}

// d_bias[n] += Σ_m d_out[m, n] as a deterministic two-stage column sum (colreduce.cuh): chunks of
// 64 rows in parallel, then the chunks in order. (One thread per column walking all rows ran on
// N/256 blocks, a dozen SMs: ~1.5 ms of every 1024² block's backward.)
struct BiasGrad {
    const __nv_bfloat16 *dy;
    int N;
    __device__ float2 operator()(size_t row, int col) const { return make_float2(__bfloat162float(dy[row * N + col]), 0.0f); }
};

extern "C" void matmul_forward(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, int M, int K,
                               int N) {
    matmul_gemm(c, M, N, K, 1.0f, inp, K, 0, w, K, 1, NULL, N, 0.0f, out, N, 0, bias);
}

// d_w, d_bias f32, or bf16 (gdt): a bf16 d_w is C and D of the GEMM with beta 1 (fp32 accumulation,
// one rounding), a bf16 d_bias the column sum added in fp32 and rounded.
extern "C" void matmul_backward(OpCtx *c, void *d_inp, void *d_w, void *d_bias, QieDtype gdt, const void *d_out,
                                const void *inp, const void *w, int M, int K, int N) {
    const int f32 = gdt == QIE_DT_F32;
    if (d_inp) matmul_gemm(c, M, K, N, 1.0f, d_out, N, 0, w, K, 0, NULL, K, 0.0f, d_inp, K, 0, NULL);
    if (d_w) matmul_gemm(c, N, K, M, 1.0f, d_out, N, 1, inp, K, 0, f32 ? NULL : d_w, K, 1.0f, d_w, K, f32, NULL);
    if (d_bias && M > 0) {
        const AdaMod all = {1, M, N, 1, M, N};
        colreduce_grad_((cudaStream_t)c->stream, BiasGrad{(const __nv_bfloat16 *)d_out, N}, all, d_bias, nullptr, gdt, N);
    }
}
