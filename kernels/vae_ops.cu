// vae_ops.cu: CUDA twins of vae_ops.c on bf16 activations (vae_ops.h has the contract).
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>

#include "check_cuda.h"
#include "conv2d.h"
#include "matmul.h"
#include "vae_ops.h"

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float rbf(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float warp_sum_(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max_(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One warp per pixel row. The rounding steps follow QwenImageRMS_norm.forward on bf16:
// F.normalize(x.float()).to(bf16), then (· scale) -> bf16, (· gamma) -> bf16, SiLU -> bf16.
// In place is safe: each lane reads its own elements before writing them.
__global__ void rmsnorm_channels_kernel1(bf16 *out, const bf16 *inp, const bf16 *gamma, int M, int C, float scale,
                                         int silu) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= M) return;
    const bf16 *x = inp + (int64_t)row * C;
    bf16 *y = out + (int64_t)row * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float v = __bfloat162float(x[i]);
        ss += v * v;
    }
    ss = warp_sum_(ss);
    const float denom = fmaxf(sqrtf(ss), 1e-12f);
    for (int i = lane; i < C; i += 32) {
        float v = rbf(__bfloat162float(x[i]) / denom);
        v = rbf(v * scale);
        v = rbf(v * __bfloat162float(gamma[i]));
        if (silu) v = v / (1.0f + expf(-v));
        y[i] = __float2bfloat16_rn(v);
    }
}

// C % 8 == 0 and C ≤ 8·32·CPL: a group of G lanes per row (32/G rows per warp), each lane holding
// CPL 16-byte chunks (8 channels) in registers between the sum and the scaling: one read of x,
// 16-byte loads and stores. The same per-element arithmetic as kernel1 (bit-identical except for
// the order of the sum of squares).
template <int G, int CPL>
__global__ void rmsnorm_channels_kernel2(bf16 *out, const bf16 *inp, const bf16 *gamma, int M, int C, float scale,
                                         int silu) {
    const int lane = threadIdx.x % 32, sub = lane % G;
    const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / G;
    const int C8 = C / 8;
    const bool live = row < M;
    uint4 v[CPL];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < CPL; j++) {
        const int ch = sub + j * G;
        v[j] = make_uint4(0, 0, 0, 0);
        if (live && ch < C8) v[j] = ((const uint4 *)(inp + row * C))[ch];
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&v[j];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(h[e]);
            ss += f.x * f.x + f.y * f.y;
        }
    }
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (!live) return;
    const float denom = fmaxf(sqrtf(ss), 1e-12f);
#pragma unroll
    for (int j = 0; j < CPL; j++) {
        const int ch = sub + j * G;
        if (ch >= C8) continue;
        const uint4 gv = ((const uint4 *)gamma)[ch];
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&v[j], *g = (const __nv_bfloat162 *)&gv;
        uint4 r;
        __nv_bfloat162 *o2 = (__nv_bfloat162 *)&r;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(h[e]), gf = __bfloat1622float2(g[e]);
            float a = rbf(f.x / denom), b = rbf(f.y / denom);
            a = rbf(a * scale);
            b = rbf(b * scale);
            a = rbf(a * gf.x);
            b = rbf(b * gf.y);
            if (silu) {
                a = a / (1.0f + expf(-a));
                b = b / (1.0f + expf(-b));
            }
            o2[e] = __floats2bfloat162_rn(a, b);
        }
        ((uint4 *)(out + row * C))[ch] = r;
    }
}

template <int G, int CPL>
static void rmsnorm2_launch_(OpCtx *c, void *out, const void *inp, const void *gamma, int M, int C, float scale,
                             int silu) {
    const int threads = 256;
    const int64_t rows_per_block = threads / G;
    const unsigned blocks = (unsigned)((M + rows_per_block - 1) / rows_per_block);
    rmsnorm_channels_kernel2<G, CPL><<<blocks, threads, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)inp, (const bf16 *)gamma, M, C, scale, silu);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void rmsnorm_channels_forward(OpCtx *c, void *out, const void *inp, const void *gamma, int M, int C,
                                         int silu) {
    if (M <= 0) return;
    const float scale = (float)sqrt((double)C);
    const bool al = ((uintptr_t)out % 16 == 0) && ((uintptr_t)inp % 16 == 0) && ((uintptr_t)gamma % 16 == 0);
    if (al && C % 8 == 0 && C <= 8 * 32 * 2) {
        const int C8 = C / 8;
        if (C8 <= 8) rmsnorm2_launch_<8, 1>(c, out, inp, gamma, M, C, scale, silu);
        else if (C8 <= 16) rmsnorm2_launch_<16, 1>(c, out, inp, gamma, M, C, scale, silu);
        else if (C8 <= 32) rmsnorm2_launch_<32, 1>(c, out, inp, gamma, M, C, scale, silu);
        else rmsnorm2_launch_<32, 2>(c, out, inp, gamma, M, C, scale, silu);
        return;
    }
    const int warps = 8;
    rmsnorm_channels_kernel1<<<(M + warps - 1) / warps, warps * 32, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)inp, (const bf16 *)gamma, M, C, scale, silu);
    CUDA_CHECK(cudaGetLastError());
}

// Row softmax of fp32 scores into bf16 probabilities, one block per row (N up to any size).
__global__ void softmax_rows_kernel1(bf16 *p, const float *s, int N, int ld) {
    const float *x = s + (int64_t)blockIdx.x * ld;
    bf16 *y = p + (int64_t)blockIdx.x * ld;
    __shared__ float red[32];
    const int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < N; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = warp_max_(mx);
    if (lane == 0) red[wid] = mx;
    __syncthreads();
    mx = lane < nw ? red[lane] : -INFINITY;
    mx = warp_max_(mx);
    __syncthreads();
    float sum = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) sum += expf(x[i] - mx);
    sum = warp_sum_(sum);
    if (lane == 0) red[wid] = sum;
    __syncthreads();
    sum = lane < nw ? red[lane] : 0.0f;
    sum = warp_sum_(sum);
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < N; i += blockDim.x) y[i] = __float2bfloat16_rn(expf(x[i] - mx) * inv);
}

// Per image and chunk of query rows: S = Q·Kᵀ/sqrt(C) (fp32), P = softmax(S) (bf16), O = P·V.
// Score rows have a leading dimension rounded up to 8 so every bf16 row starts 16-byte aligned.
extern "C" void vae_attention_forward(OpCtx *c, void *out, const void *qkv, int B, int N, int C, void *ws,
                                      size_t ws_bytes) {
    const int ld = (N + 7) & ~7;
    int64_t chunk = ws_bytes > 256 ? (int64_t)((ws_bytes - 256) / ((size_t)ld * 6)) : 0;
    if (chunk < 1) {
        fprintf(stderr, "vae_attention_forward: workspace of %zu bytes is below one score row (N=%d)\n", ws_bytes, N);
        exit(EXIT_FAILURE);
    }
    if (chunk > N) chunk = N;
    float *S = (float *)ws;
    bf16 *P = (bf16 *)((char *)ws + (((size_t)chunk * ld * 4 + 255) & ~(size_t)255));
    const float alpha = (float)(1.0 / sqrt((double)C));
    const bf16 *base = (const bf16 *)qkv;
    for (int b = 0; b < B; b++) {
        const bf16 *img = base + (int64_t)b * N * 3 * C;
        for (int q0 = 0; q0 < N; q0 += (int)chunk) {
            const int rows = N - q0 < chunk ? N - q0 : (int)chunk;
            // S[rows, N] = Q[rows, C] · K[N, C]ᵀ · alpha
            matmul_gemm(c, rows, N, C, alpha, img + (int64_t)q0 * 3 * C, 3 * C, 0, img + C, 3 * C, 1, NULL, ld, 0.0f,
                         S, ld, 1, NULL);
            softmax_rows_kernel1<<<rows, 256, 0, (cudaStream_t)c->stream>>>(P, S, N, ld);
            CUDA_CHECK(cudaGetLastError());
            // O[rows, C] = P[rows, N] · V[N, C]
            matmul_gemm(c, rows, C, N, 1.0f, P, ld, 0, img + 2 * C, 3 * C, 0, NULL, C, 0.0f,
                         (bf16 *)out + ((int64_t)b * N + q0) * C, C, 0, NULL);
        }
    }
}

__global__ void nchw_to_nhwc_kernel1(bf16 *out, const bf16 *inp, int C, int HW, int Cpad, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int ch = (int)(i % Cpad);
    const int64_t t = i / Cpad;
    const int p = (int)(t % HW);
    const int64_t b = t / HW;
    out[i] = ch < C ? inp[(b * C + ch) * HW + p] : __float2bfloat16(0.0f);
}

extern "C" void nchw_to_nhwc_forward(OpCtx *c, void *out, const void *inp, int B, int C, int HW, int Cpad) {
    const int64_t n = (int64_t)B * HW * Cpad;
    if (!n) return;
    nchw_to_nhwc_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)inp, C, HW, Cpad, n);
    CUDA_CHECK(cudaGetLastError());
}

__global__ void vae_posterior_kernel1(float *mean, float *logvar, const bf16 *inp, int HW, int z, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; // over [B, z, HW]
    if (i >= n) return;
    const int p = (int)(i % HW);
    const int64_t t = i / HW;
    const int ch = (int)(t % z);
    const int64_t b = t / z;
    const bf16 *x = inp + (b * HW + p) * 2 * z;
    mean[i] = __bfloat162float(x[ch]);
    const float v = __bfloat162float(x[z + ch]);
    logvar[i] = v != v ? v : fminf(fmaxf(v, -30.0f), 20.0f);
}

extern "C" void vae_posterior_forward(OpCtx *c, float *mean, float *logvar, const void *inp, int B, int HW, int z) {
    const int64_t n = (int64_t)B * z * HW;
    if (!n) return;
    vae_posterior_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        mean, logvar, (const bf16 *)inp, HW, z, n);
    CUDA_CHECK(cudaGetLastError());
}
