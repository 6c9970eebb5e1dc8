// matmul.cu: cuBLASLt GEMMs for op_matmul / op_matmul_backward. Row-major [rows, cols] buffers
// are column-major [cols, rows] to cuBLAS, so each row-major product is issued transposed:
//   out[M,N] = inp[M,K]·wᵀ  ->  outᶜ(N×M) = wᶜ(K×N)ᵀ · inpᶜ(K×M)
#include <cublasLt.h>
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "matmul.h"

// D = alpha·op(A)·op(B) + beta·C (C == D), column-major; optional bias epilogue over the m rows.
static void lt_gemm_(OpCtx *c, bool ta, bool tb, int m, int n, int k, const void *A, int lda, const void *B, int ldb,
                     void *D, int ldd, cudaDataType_t dtype_d, float beta, const void *bias) {
    cublasLtHandle_t h = (cublasLtHandle_t)c->cublaslt;
    cublasLtMatmulDesc_t op;
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    cublasOperation_t opa = ta ? CUBLAS_OP_T : CUBLAS_OP_N, opb = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof opa));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof opb));
    if (bias) {
        cublasLtEpilogue_t ep = CUBLASLT_EPILOGUE_BIAS;
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_EPILOGUE, &ep, sizeof ep));
        CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    }
    cublasLtMatrixLayout_t la, lb, ld;
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la, CUDA_R_16BF, ta ? k : m, ta ? m : k, lda));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16BF, tb ? n : k, tb ? k : n, ldb));
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld, dtype_d, m, n, ldd));
    cublasLtMatmulPreference_t pref;
    CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = c->workspace_bytes;
    CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
    cublasLtMatmulHeuristicResult_t heur;
    int found = 0;
    CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(h, op, la, lb, ld, ld, pref, 1, &heur, &found));
    if (!found) {
        fprintf(stderr, "[cuBLASLt] no algorithm for m=%d n=%d k=%d ta=%d tb=%d bias=%d\n", m, n, k, ta, tb, bias != NULL);
        exit(EXIT_FAILURE);
    }
    float alpha = 1.0f;
    CUBLAS_CHECK(cublasLtMatmul(h, op, &alpha, A, la, B, lb, &beta, D, ld, D, ld, &heur.algo, c->workspace, ws,
                                (cudaStream_t)c->stream));
    CUBLAS_CHECK(cublasLtMatmulPreferenceDestroy(pref));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(la));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(lb));
    CUBLAS_CHECK(cublasLtMatrixLayoutDestroy(ld));
    CUBLAS_CHECK(cublasLtMatmulDescDestroy(op));
}

// d_bias[n] += Σ_m d_out[m, n]: one thread per column, rows walked in order (coalesced across
// the warp, deterministic).
__global__ void bias_grad_kernel1(float *d_bias, const __nv_bfloat16 *d_out, int M, int N) {
    int n = blockIdx.x * blockDim.x + threadIdx.x;
    if (n >= N) return;
    float s = 0.0f;
    for (int m = 0; m < M; m++) s += __bfloat162float(d_out[(size_t)m * N + n]);
    d_bias[n] += s;
}

extern "C" void matmul_forward(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, int M, int K,
                               int N) {
    lt_gemm_(c, true, false, N, M, K, w, K, inp, K, out, N, CUDA_R_16BF, 0.0f, bias);
}

extern "C" void matmul_backward(OpCtx *c, void *d_inp, float *d_w, float *d_bias, const void *d_out, const void *inp,
                                const void *w, int M, int K, int N) {
    if (d_inp) lt_gemm_(c, false, false, K, M, N, w, K, d_out, N, d_inp, K, CUDA_R_16BF, 0.0f, NULL);
    if (d_w) lt_gemm_(c, false, true, K, N, M, inp, K, d_out, N, d_w, K, CUDA_R_32F, 1.0f, NULL);
    if (d_bias) {
        bias_grad_kernel1<<<(N + 255) / 256, 256, 0, (cudaStream_t)c->stream>>>(d_bias, (const __nv_bfloat16 *)d_out, M, N);
        CUDA_CHECK(cudaGetLastError());
    }
}
