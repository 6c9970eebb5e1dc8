// colreduce.cuh: deterministic column sums over token groups, shared by the AdaLN, RMSNorm and
// q/k-norm backward kernels (the d_shift / d_scale / d_gate / d_weight reductions of
// spec/model.md 1.11). Two stages, no atomics, so the result does not depend on scheduling:
//   1. colreduce_partial_kernel1: block (32 columns x 8 token lanes) sums a chunk of tokens of one
//      group into partial[chunk][group][col] (two sums at once: F returns float2);
//   2. colreduce_final_kernel1: sums the chunks in a fixed order (8 interleaved lanes, then the
//      lanes) and writes bf16 (overwrite), adds into f32 (accumulate), or with bacc adds into bf16
//      (a weight gradient kept in bf16).
// A group g is modulation row g of an AdaMod (tokens of sample g % B, of set g / B), or, with
// AdaMod {1, rows, dim, 1, ...}, all rows at once.
#ifndef QIE_KERNELS_COLREDUCE_CUH
#define QIE_KERNELS_COLREDUCE_CUH

#include <cuda_bf16.h>

#include "check_cuda.h"
#include "layernorm.h"

#define COLRED_CHUNK 64

// token range [lo, hi) of group g, and the sample b it belongs to
static __device__ __forceinline__ void colred_group_(const AdaMod &m, int g, int *b, int *lo, int *hi) {
    *b = g % m.B;
    int set = g / m.B, n0 = m.n0 < m.N ? m.n0 : m.N;
    *lo = (m.sets == 2 && set == 1) ? n0 : 0;
    *hi = (m.sets == 2 && set == 0) ? n0 : m.N;
}

// F: float2 operator()(size_t row, int col) const, row = b·N + n
template <class F>
__global__ void colreduce_partial_kernel1(float2 *part, F f, AdaMod m, int groups) {
    int col = blockIdx.x * 32 + threadIdx.x, g = blockIdx.y, ch = blockIdx.z;
    int b, lo, hi;
    colred_group_(m, g, &b, &lo, &hi);
    int t0 = lo + ch * COLRED_CHUNK, t1 = min(hi, t0 + COLRED_CHUNK);
    float2 acc = make_float2(0.0f, 0.0f);
    if (col < m.D)
        for (int t = t0 + threadIdx.y; t < t1; t += 8) {
            float2 v = f((size_t)b * m.N + t, col);
            acc.x += v.x;
            acc.y += v.y;
        }
    __shared__ float2 sh[8][33];
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && col < m.D) {
        for (int y = 1; y < 8; y++) {
            acc.x += sh[y][threadIdx.x].x;
            acc.y += sh[y][threadIdx.x].y;
        }
        part[((size_t)ch * groups + g) * m.D + col] = acc;
    }
}

// out0/out1: bf16 rows of stride ld (overwrite, or += with bacc) when acc0/acc1 are NULL; else
// acc0/acc1 f32 (+=). Block (32 columns x 8 lanes) of one group: lane y sums chunks y, y + 8, ...,
// then lane 0 adds the 8 lane sums in order (a fixed order: the same bits every run).
static __global__ void colreduce_final_kernel1(__nv_bfloat16 *out0, __nv_bfloat16 *out1, float *acc0, float *acc1, int ld,
                                        const float2 *part, int groups, int D, int nchunks, int bacc) {
    int col = blockIdx.x * 32 + threadIdx.x, g = blockIdx.y;
    float2 s = make_float2(0.0f, 0.0f);
    if (col < D)
        for (int ch = threadIdx.y; ch < nchunks; ch += 8) {
            float2 v = part[((size_t)ch * groups + g) * D + col];
            s.x += v.x;
            s.y += v.y;
        }
    __shared__ float2 sh[8][33];
    sh[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y != 0 || col >= D) return;
    for (int y = 1; y < 8; y++) {
        s.x += sh[y][threadIdx.x].x;
        s.y += sh[y][threadIdx.x].y;
    }
    if (acc0) acc0[(size_t)g * ld + col] += s.x;
    else if (out0) out0[(size_t)g * ld + col] = __float2bfloat16_rn(bacc ? __bfloat162float(out0[(size_t)g * ld + col]) + s.x : s.x);
    if (acc1) acc1[(size_t)g * ld + col] += s.y;
    else if (out1) out1[(size_t)g * ld + col] = __float2bfloat16_rn(bacc ? __bfloat162float(out1[(size_t)g * ld + col]) + s.y : s.y);
}

// Runs both stages on stream s with a stream-ordered scratch buffer.
template <class F>
static void colreduce_(cudaStream_t s, F f, const AdaMod &m, __nv_bfloat16 *out0, __nv_bfloat16 *out1, float *acc0,
                       float *acc1, int ld, int bacc = 0) {
    int groups = m.sets * m.B, nchunks = (m.N + COLRED_CHUNK - 1) / COLRED_CHUNK;
    if (nchunks < 1) nchunks = 1;
    float2 *part;
    size_t bytes = (size_t)nchunks * groups * m.D * sizeof(float2);
    CUDA_CHECK(cudaMallocAsync((void **)&part, bytes, s));
    dim3 grid((m.D + 31) / 32, groups, nchunks), block(32, 8);
    colreduce_partial_kernel1<<<grid, block, 0, s>>>(part, f, m, groups);
    CUDA_CHECK(cudaGetLastError());
    colreduce_final_kernel1<<<dim3((m.D + 31) / 32, groups), block, 0, s>>>(out0, out1, acc0, acc1, ld, part, groups, m.D,
                                                                           nchunks, bacc);
    CUDA_CHECK(cudaGetLastError());
    CUDA_CHECK(cudaFreeAsync(part, s));
}

// Column sums added into a weight gradient of dtype gdt (ops.h "_g"): g0/g1 f32, or bf16 rounded
// once per call. g1 may be NULL.
template <class F>
static void colreduce_grad_(cudaStream_t s, F f, const AdaMod &m, void *g0, void *g1, QieDtype gdt, int ld) {
    const int f32 = gdt == QIE_DT_F32;
    colreduce_(s, f, m, f32 ? nullptr : (__nv_bfloat16 *)g0, f32 ? nullptr : (__nv_bfloat16 *)g1,
               f32 ? (float *)g0 : nullptr, f32 ? (float *)g1 : nullptr, ld, !f32);
}

static __device__ __forceinline__ float warp_sum_(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

#endif
