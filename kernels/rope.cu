// rope.cu: CUDA twins of rope.c: RoPE on interleaved pairs, and the fused per-head q/k RMSNorm +
// RoPE + joint scatter (forward and backward). One warp per (token, q|k, head); lane j owns the
// pairs j, j+32, ... so the rotation never crosses lanes. d_wq / d_wk are deterministic column
// sums (colreduce.cuh) over all (token, head) rows.
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "colreduce.cuh"
#include "rmsnorm.h"
#include "rope.h"

typedef __nv_bfloat16 bf16;

__global__ void rope_forward_kernel1(bf16 *out, const bf16 *inp, const float *cs, int B, int N, int H, int d,
                                     int inverse) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; // pair index
    size_t npairs = (size_t)B * N * H * d / 2;
    if (i >= npairs) return;
    int p = (int)(i % (d / 2));
    int n = (int)((i / ((size_t)H * d / 2)) % N);
    float c = cs[(size_t)n * d + 2 * p], s = cs[(size_t)n * d + 2 * p + 1];
    if (inverse) s = -s;
    float a = __bfloat162float(inp[2 * i]), b = __bfloat162float(inp[2 * i + 1]);
    out[2 * i] = __float2bfloat16_rn(a * c - b * s);
    out[2 * i + 1] = __float2bfloat16_rn(a * s + b * c);
}

struct QkvGeom {
    int B, N, H, d, S, off;
    __device__ size_t jrow(size_t row) const { return (row / N) * S + off + row % N; }
};

// item = (row · 2 + which) · H + h; which 0 = q, 1 = k
__global__ void qkv_norm_rope_forward_kernel1(bf16 *Q, bf16 *K, float *rstd, const bf16 *qkv, const bf16 *wq,
                                              const bf16 *wk, const float *cs, QkvGeom g) {
    size_t item = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    const int D = g.H * g.d;
    if (item >= (size_t)g.B * g.N * 2 * g.H) return;
    int h = (int)(item % g.H), which = (int)((item / g.H) % 2);
    size_t row = item / (2 * g.H);
    const bf16 *x = qkv + row * 3 * D + (size_t)which * D + (size_t)h * g.d;
    const bf16 *w = which ? wk : wq;
    float ss = 0.0f;
    for (int p = lane; p < g.d / 2; p += 32) {
        float a = __bfloat162float(x[2 * p]), b = __bfloat162float(x[2 * p + 1]);
        ss += a * a + b * b;
    }
    float r = rsqrtf(warp_sum_(ss) / g.d + QIE_RMS_EPS);
    if (lane == 0) rstd[row * 2 * g.H + (size_t)which * g.H + h] = r;
    bf16 *dst = (which ? K : Q) + g.jrow(row) * D + (size_t)h * g.d;
    const float *t = cs + (row % g.N) * g.d;
    for (int p = lane; p < g.d / 2; p += 32) {
        // RMSNorm in fp32, rounded to the act dtype (the q/k the reference rotates), then RoPE in fp32
        float a = __bfloat162float(__float2bfloat16_rn(__bfloat162float(x[2 * p]) * r * __bfloat162float(w[2 * p])));
        float b = __bfloat162float(
            __float2bfloat16_rn(__bfloat162float(x[2 * p + 1]) * r * __bfloat162float(w[2 * p + 1])));
        float c = t[2 * p], s = t[2 * p + 1];
        dst[2 * p] = __float2bfloat16_rn(a * c - b * s);
        dst[2 * p + 1] = __float2bfloat16_rn(a * s + b * c);
    }
}

// v is not normalised or rotated: a copy into (forward) or out of (backward) the joint sequence
__global__ void qkv_copy_v_kernel1(bf16 *V, const bf16 *qkv, QkvGeom g) {
    const int D = g.H * g.d;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)g.B * g.N * D) return;
    size_t row = i / D;
    int col = (int)(i % D);
    V[g.jrow(row) * D + col] = qkv[row * 3 * D + 2 * D + col];
}

__global__ void qkv_copy_dv_kernel1(bf16 *d_qkv, const bf16 *dV, QkvGeom g) {
    const int D = g.H * g.d;
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)g.B * g.N * D) return;
    size_t row = i / D;
    int col = (int)(i % D);
    d_qkv[row * 3 * D + 2 * D + col] = dV[g.jrow(row) * D + col];
}

// d(pre-rope) = rope⁻¹(dY); g = d·w; dx = r·g − x·r³·mean(g·x)
__global__ void qkv_norm_rope_backward_kernel1(bf16 *d_qkv, const bf16 *dQ, const bf16 *dK, const bf16 *qkv,
                                               const float *rstd, const bf16 *wq, const bf16 *wk, const float *cs,
                                               QkvGeom g) {
    size_t item = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    const int D = g.H * g.d;
    if (item >= (size_t)g.B * g.N * 2 * g.H) return;
    int h = (int)(item % g.H), which = (int)((item / g.H) % 2);
    size_t row = item / (2 * g.H);
    const size_t xo = row * 3 * D + (size_t)which * D + (size_t)h * g.d;
    const bf16 *x = qkv + xo, *w = which ? wk : wq;
    const bf16 *dy = (which ? dK : dQ) + g.jrow(row) * D + (size_t)h * g.d;
    const float *t = cs + (row % g.N) * g.d;
    const float r = rstd[row * 2 * g.H + (size_t)which * g.H + h];
    float a = 0.0f;
    for (int p = lane; p < g.d / 2; p += 32) {
        float c = t[2 * p], s = t[2 * p + 1], y0 = __bfloat162float(dy[2 * p]), y1 = __bfloat162float(dy[2 * p + 1]);
        float n0 = y0 * c + y1 * s, n1 = -y0 * s + y1 * c;
        a += n0 * __bfloat162float(w[2 * p]) * __bfloat162float(x[2 * p]) +
             n1 * __bfloat162float(w[2 * p + 1]) * __bfloat162float(x[2 * p + 1]);
    }
    a = warp_sum_(a) / g.d;
    for (int p = lane; p < g.d / 2; p += 32) {
        float c = t[2 * p], s = t[2 * p + 1], y0 = __bfloat162float(dy[2 * p]), y1 = __bfloat162float(dy[2 * p + 1]);
        float n0 = y0 * c + y1 * s, n1 = -y0 * s + y1 * c;
        float x0 = __bfloat162float(x[2 * p]), x1 = __bfloat162float(x[2 * p + 1]);
        d_qkv[xo + 2 * p] = __float2bfloat16_rn(r * n0 * __bfloat162float(w[2 * p]) - x0 * r * r * r * a);
        d_qkv[xo + 2 * p + 1] = __float2bfloat16_rn(r * n1 * __bfloat162float(w[2 * p + 1]) - x1 * r * r * r * a);
    }
}

// d_w[e] += Σ_(row, h) rope⁻¹(dY)[e] · x[e] · r   (.x for q, .y for k)
struct QkWGrad {
    const bf16 *dQ, *dK, *qkv;
    const float *rstd, *cs;
    QkvGeom g;
    __device__ float dn_(const bf16 *dy, const float *t, int e) const {
        int p = e / 2;
        float c = t[2 * p], s = t[2 * p + 1], y0 = __bfloat162float(dy[2 * p]), y1 = __bfloat162float(dy[2 * p + 1]);
        return (e & 1) ? -y0 * s + y1 * c : y0 * c + y1 * s;
    }
    __device__ float2 operator()(size_t it, int e) const {
        const int D = g.H * g.d;
        size_t row = it / g.H;
        int h = (int)(it % g.H);
        const float *t = cs + (row % g.N) * g.d;
        size_t jo = g.jrow(row) * D + (size_t)h * g.d, xo = row * 3 * D + (size_t)h * g.d;
        float q = dn_(dQ + jo, t, e) * __bfloat162float(qkv[xo + e]) * rstd[row * 2 * g.H + h];
        float k = dn_(dK + jo, t, e) * __bfloat162float(qkv[xo + D + e]) * rstd[row * 2 * g.H + g.H + h];
        return make_float2(q, k);
    }
};

extern "C" void rope_forward(OpCtx *c, void *out, const void *inp, const float *cs, int B, int N, int H, int d,
                             int inverse) {
    size_t np = (size_t)B * N * H * d / 2;
    if (!np) return;
    rope_forward_kernel1<<<(unsigned)((np + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)inp, cs, B, N, H, d, inverse);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void qkv_norm_rope_forward(OpCtx *c, void *Q, void *K, void *V, float *rstd, const void *qkv,
                                      const void *wq, const void *wk, const float *cs, int B, int N, int H, int d,
                                      int S, int off) {
    cudaStream_t s = (cudaStream_t)c->stream;
    QkvGeom g = {B, N, H, d, S, off};
    size_t items = (size_t)B * N * 2 * H, nv = (size_t)B * N * H * d;
    if (!items) return;
    qkv_norm_rope_forward_kernel1<<<(unsigned)((items + 7) / 8), 256, 0, s>>>(
        (bf16 *)Q, (bf16 *)K, rstd, (const bf16 *)qkv, (const bf16 *)wq, (const bf16 *)wk, cs, g);
    CUDA_CHECK(cudaGetLastError());
    qkv_copy_v_kernel1<<<(unsigned)((nv + 255) / 256), 256, 0, s>>>((bf16 *)V, (const bf16 *)qkv, g);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void qkv_norm_rope_backward(OpCtx *c, void *d_qkv, void *d_wq, void *d_wk, QieDtype gdt, const void *dQ,
                                       const void *dK,
                                       const void *dV, const void *qkv, const float *rstd, const void *wq,
                                       const void *wk, const float *cs, int B, int N, int H, int d, int S, int off) {
    cudaStream_t s = (cudaStream_t)c->stream;
    QkvGeom g = {B, N, H, d, S, off};
    size_t items = (size_t)B * N * 2 * H, nv = (size_t)B * N * H * d;
    if (!items) return;
    qkv_norm_rope_backward_kernel1<<<(unsigned)((items + 7) / 8), 256, 0, s>>>(
        (bf16 *)d_qkv, (const bf16 *)dQ, (const bf16 *)dK, (const bf16 *)qkv, rstd, (const bf16 *)wq,
        (const bf16 *)wk, cs, g);
    CUDA_CHECK(cudaGetLastError());
    qkv_copy_dv_kernel1<<<(unsigned)((nv + 255) / 256), 256, 0, s>>>((bf16 *)d_qkv, (const bf16 *)dV, g);
    CUDA_CHECK(cudaGetLastError());
    if (d_wq || d_wk) {
        AdaMod all = {1, B * N * H, d, 1, B * N * H, d};
        colreduce_grad_(s, QkWGrad{(const bf16 *)dQ, (const bf16 *)dK, (const bf16 *)qkv, rstd, cs, g}, all, d_wq, d_wk,
                        gdt, d);
    }
}
