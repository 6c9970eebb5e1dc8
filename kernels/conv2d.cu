// conv2d.cu: CUDA launchers of op_conv2d (conv2d.h has the contract) and the general bf16
// cuBLASLt GEMM that conv2d and the VAE attention share.
//   1×1, stride 1, no padding: the NHWC activation IS the GEMM's [pixels, Cin] operand: one GEMM.
//   otherwise: im2col of a chunk of output pixels into the workspace as [rows, k·k·Cin] in the
//   weight rows' (ky, kx, ci) order, then one GEMM per chunk; bias and the residual ride in the
//   GEMM's epilogue (bias) and its C operand (beta = 1), so the output is written once.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <stdint.h>

#include "check_cuda.h"
#include "conv2d.h"

typedef __nv_bfloat16 bf16;

// Row-major D[M,N] is column-major Dᶜ (N×M): D = op(A)·op(B) is issued as
// Dᶜ = op'(Bᶜ)·op'(Aᶜ) with m' = N, n' = M (matmul.cu does the same for its one case).
extern "C" void conv2d_gemm_(OpCtx *c, int M, int N, int K, float alpha, const void *A, int lda, int ta,
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
        fprintf(stderr, "[cuBLASLt] conv2d_gemm_: no algorithm for M=%d N=%d K=%d ta=%d tb=%d\n", M, N, K, ta, tb);
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

struct Im2col {
    int H, W, Cin, Ho, Wo, k, stride, pad_t, pad_l;
};

// One thread moves 8 channels (16 bytes) of one tap of one output pixel: Cin % 8 == 0.
// Consecutive threads walk channels, then taps, so reads of a tap and writes of a row coalesce.
__global__ void im2col_kernel1(uint4 *col, const uint4 *inp, Im2col g, int64_t row0, int64_t rows) {
    const int c8n = g.Cin / 8, per_row = g.k * g.k * c8n;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * per_row) return;
    const int64_t r = i / per_row;
    const int rem = (int)(i - r * per_row), tap = rem / c8n, c8 = rem - tap * c8n;
    const int64_t pix = row0 + r;
    const int ox = (int)(pix % g.Wo);
    const int64_t t = pix / g.Wo;
    const int oy = (int)(t % g.Ho), b = (int)(t / g.Ho);
    const int iy = oy * g.stride + tap / g.k - g.pad_t, ix = ox * g.stride + tap % g.k - g.pad_l;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) v = inp[(((int64_t)b * g.H + iy) * g.W + ix) * c8n + c8];
    col[i] = v;
}

// Any Cin: one element per thread.
__global__ void im2col_kernel2(bf16 *col, const bf16 *inp, Im2col g, int64_t row0, int64_t rows) {
    const int per_row = g.k * g.k * g.Cin;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * per_row) return;
    const int64_t r = i / per_row;
    const int rem = (int)(i - r * per_row), tap = rem / g.Cin, ci = rem - tap * g.Cin;
    const int64_t pix = row0 + r;
    const int ox = (int)(pix % g.Wo);
    const int64_t t = pix / g.Wo;
    const int oy = (int)(t % g.Ho), b = (int)(t / g.Ho);
    const int iy = oy * g.stride + tap / g.k - g.pad_t, ix = ox * g.stride + tap % g.k - g.pad_l;
    bf16 v = __float2bfloat16(0.0f);
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) v = inp[(((int64_t)b * g.H + iy) * g.W + ix) * g.Cin + ci];
    col[i] = v;
}

extern "C" void conv2d_forward(OpCtx *c, void *out, const void *inp, const void *w, const void *bias,
                               const void *residual, const Conv2dShape *s, void *ws, size_t ws_bytes) {
    const int Ho = conv2d_out_h(s), Wo = conv2d_out_w(s);
    const int64_t Mtot = (int64_t)s->B * Ho * Wo;
    const float beta = residual ? 1.0f : 0.0f;
    if (s->k == 1 && s->stride == 1 && !(s->pad_t | s->pad_b | s->pad_l | s->pad_r)) {
        conv2d_gemm_(c, (int)Mtot, s->Cout, s->Cin, 1.0f, inp, s->Cin, 0, w, s->Cin, 1, residual, s->Cout, beta, out,
                     s->Cout, 0, bias);
        return;
    }
    const int K = s->k * s->k * s->Cin;
    int64_t chunk = (int64_t)(ws_bytes / ((size_t)K * sizeof(bf16)));
    if (chunk < 1) {
        fprintf(stderr, "conv2d_forward: workspace of %zu bytes is below one im2col row (%d elements)\n", ws_bytes, K);
        exit(EXIT_FAILURE);
    }
    if (chunk > Mtot) chunk = Mtot;
    if (chunk > INT32_MAX / 2) chunk = INT32_MAX / 2;
    const Im2col g = {s->H, s->W, s->Cin, Ho, Wo, s->k, s->stride, s->pad_t, s->pad_l};
    cudaStream_t st = (cudaStream_t)c->stream;
    for (int64_t m0 = 0; m0 < Mtot; m0 += chunk) {
        const int64_t rows = Mtot - m0 < chunk ? Mtot - m0 : chunk;
        if (s->Cin % 8 == 0) {
            const int64_t n = rows * (K / 8);
            im2col_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, st>>>((uint4 *)ws, (const uint4 *)inp, g, m0, rows);
        } else {
            const int64_t n = rows * K;
            im2col_kernel2<<<(unsigned)((n + 255) / 256), 256, 0, st>>>((bf16 *)ws, (const bf16 *)inp, g, m0, rows);
        }
        CUDA_CHECK(cudaGetLastError());
        const bf16 *res = residual ? (const bf16 *)residual + m0 * s->Cout : NULL;
        conv2d_gemm_(c, (int)rows, s->Cout, K, 1.0f, ws, K, 0, w, K, 1, res, s->Cout, beta,
                     (bf16 *)out + m0 * s->Cout, s->Cout, 0, bias);
    }
}
