// qwen_ops.cu: CUDA twins of qwen_ops.c on bf16 activations (fp32 math, bf16 rounding where the
// transformers bf16 forward rounds; qwen_ops.h names each place).
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "qwen_ops.h"

typedef __nv_bfloat16 bf16;

static cudaStream_t stream_(OpCtx *c) { return (cudaStream_t)c->stream; }
__device__ __forceinline__ float bfr(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

// one block per row; fp32 sum of squares reduced across the block
__global__ void qwen_rmsnorm_kernel1(bf16 *out, const bf16 *inp, const bf16 *w, int dim, float eps) {
    const bf16 *x = inp + (size_t)blockIdx.x * dim;
    bf16 *o = out + (size_t)blockIdx.x * dim;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        float v = __bfloat162float(x[i]);
        ss += v * v;
    }
    __shared__ float red[32];
    for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.0f;
        for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        if (threadIdx.x == 0) red[0] = v;
    }
    __syncthreads();
    float rs = rsqrtf(red[0] / (float)dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        o[i] = __float2bfloat16_rn(__bfloat162float(w[i]) * bfr(__bfloat162float(x[i]) * rs));
}

extern "C" void qwen_rmsnorm_forward(OpCtx *c, void *out, const void *inp, const void *w, int rows, int dim, float eps) {
    if (rows <= 0) return;
    qwen_rmsnorm_kernel1<<<rows, 256, 0, stream_(c)>>>((bf16 *)out, (const bf16 *)inp, (const bf16 *)w, dim, eps);
    CUDA_CHECK(cudaGetLastError());
}

// one thread per (row, head, pair i < hd/2)
__global__ void qwen_rope_kernel1(bf16 *x, int ld, int rows, int nheads, int hd, const float *cos, const float *sin,
                                  int bf16_math) {
    int h2 = hd / 2;
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t total = (size_t)rows * nheads * h2;
    if (t >= total) return;
    int i = (int)(t % h2);
    size_t rh = t / h2;
    int h = (int)(rh % nheads);
    size_t r = rh / nheads;
    bf16 *v = x + r * ld + (size_t)h * hd;
    const float *cr = cos + r * hd, *sr = sin + r * hd;
    float a = __bfloat162float(v[i]), b = __bfloat162float(v[i + h2]);
    float c0 = cr[i], c1 = cr[i + h2], s0 = sr[i], s1 = sr[i + h2];
    float o0, o1;
    if (bf16_math) { // (q * cos) + (rotate_half(q) * sin), every tensor op rounded to bf16
        c0 = bfr(c0); c1 = bfr(c1); s0 = bfr(s0); s1 = bfr(s1);
        o0 = bfr(a * c0) + bfr(-b * s0);
        o1 = bfr(b * c1) + bfr(a * s1);
    } else {
        o0 = a * c0 - b * s0;
        o1 = b * c1 + a * s1;
    }
    v[i] = __float2bfloat16_rn(o0);
    v[i + h2] = __float2bfloat16_rn(o1);
}

extern "C" void qwen_rope_forward(OpCtx *c, void *x, int ld, int rows, int nheads, int hd, const float *cos,
                                  const float *sin, int bf16_math) {
    size_t total = (size_t)rows * nheads * (hd / 2);
    if (!total) return;
    qwen_rope_kernel1<<<(unsigned)((total + 255) / 256), 256, 0, stream_(c)>>>((bf16 *)x, ld, rows, nheads, hd, cos, sin,
                                                                               bf16_math);
    CUDA_CHECK(cudaGetLastError());
}

__global__ void qwen_swiglu_kernel1(bf16 *out, const bf16 *gu, int rows, int F) {
    size_t t = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= (size_t)rows * F) return;
    size_t r = t / F;
    int f = (int)(t % F);
    float g = __bfloat162float(gu[r * 2 * F + f]), u = __bfloat162float(gu[r * 2 * F + F + f]);
    out[t] = __float2bfloat16_rn(bfr(g / (1.0f + expf(-g))) * u);
}

extern "C" void qwen_swiglu_forward(OpCtx *c, void *out, const void *gu, int rows, int F) {
    size_t n = (size_t)rows * F;
    if (!n) return;
    qwen_swiglu_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, stream_(c)>>>((bf16 *)out, (const bf16 *)gu, rows, F);
    CUDA_CHECK(cudaGetLastError());
}

__global__ void qwen_gelu_erf_kernel1(bf16 *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = __bfloat162float(x[i]);
    x[i] = __float2bfloat16_rn(0.5f * v * (1.0f + erff(v * 0.70710678118654752f)));
}

extern "C" void qwen_gelu_erf_forward(OpCtx *c, void *x, size_t n) {
    if (!n) return;
    qwen_gelu_erf_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, stream_(c)>>>((bf16 *)x, n);
    CUDA_CHECK(cudaGetLastError());
}

// one block per output row; 16-byte copies when rows and bases allow it (vec)
__global__ void qwen_gather_rows_kernel1(bf16 *out, const bf16 *inp, const int32_t *idx, int dim, int scatter, int vec) {
    size_t i = blockIdx.x, j = (size_t)idx[i];
    size_t src = scatter ? i : j, dst = scatter ? j : i;
    if (vec) {
        const uint4 *s = (const uint4 *)(inp + src * dim);
        uint4 *d = (uint4 *)(out + dst * dim);
        for (int k = threadIdx.x; k < dim / 8; k += blockDim.x) d[k] = s[k];
    } else {
        for (int k = threadIdx.x; k < dim; k += blockDim.x) out[dst * dim + k] = inp[src * dim + k];
    }
}

static int vec_ok_(const void *a, const void *b, int dim) {
    return (dim & 7) == 0 && (((uintptr_t)a | (uintptr_t)b) & 15) == 0;
}

extern "C" void qwen_gather_rows_forward(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim) {
    if (n <= 0) return;
    qwen_gather_rows_kernel1<<<n, 128, 0, stream_(c)>>>((bf16 *)out, (const bf16 *)inp, idx, dim, 0, vec_ok_(out, inp, dim));
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void qwen_scatter_rows_forward(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim) {
    if (n <= 0) return;
    qwen_gather_rows_kernel1<<<n, 128, 0, stream_(c)>>>((bf16 *)out, (const bf16 *)inp, idx, dim, 1, vec_ok_(out, inp, dim));
    CUDA_CHECK(cudaGetLastError());
}

// synchronous: callers free or reuse the host buffer right after
extern "C" void qwen_copy_h2d_(OpCtx *c, void *d_dst, const void *h_src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaMemcpyAsync(d_dst, h_src, bytes, cudaMemcpyHostToDevice, stream_(c)));
    CUDA_CHECK(cudaStreamSynchronize(stream_(c)));
}
