// layernorm.cu: CUDA twin of layernorm.c (LayerNorm without affine fused with AdaLN modulation).
// One warp per token row; statistics in fp32 (two passes over the row, which stays in L1/L2);
// the backward's d_shift/d_scale are deterministic column sums (colreduce.cuh).
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "colreduce.cuh"
#include "layernorm.h"
#include "vec8.cuh"

typedef __nv_bfloat16 bf16;

// V elements per lane per access: 8 (16-byte accesses, D % 8 == 0 and every row / modulation
// chunk 16-byte aligned: vec8.cuh) or 1 (any D).
template <int V>
__global__ void layernorm_modulate_forward_kernel(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                                                  const bf16 *shift, const bf16 *scale, AdaMod m) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= m.B * m.N) return;
    const int D = m.D;
    const bf16 *x = inp + (size_t)row * D;
    float s = 0.0f, f[V];
    for (int i = V * lane; i < D; i += 32 * V) {
        vec_load<V>(f, x + i);
#pragma unroll
        for (int k = 0; k < V; k++) s += f[k];
    }
    float mu = warp_sum_(s) / D, v = 0.0f;
    for (int i = V * lane; i < D; i += 32 * V) {
        vec_load<V>(f, x + i);
#pragma unroll
        for (int k = 0; k < V; k++) v += (f[k] - mu) * (f[k] - mu);
    }
    float r = rsqrtf(warp_sum_(v) / D + QIE_LN_EPS);
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
    int mr = adamod_row(&m, row / m.N, row % m.N);
    const bf16 *sh = shift ? shift + (size_t)mr * m.ld : nullptr, *sc = scale ? scale + (size_t)mr * m.ld : nullptr;
    bf16 *y = out + (size_t)row * D;
    for (int i = V * lane; i < D; i += 32 * V) {
        float a[V], b[V];
        vec_load<V>(f, x + i);
        if (sc) vec_load<V>(a, sc + i);
        if (sh) vec_load<V>(b, sh + i);
#pragma unroll
        for (int k = 0; k < V; k++) {
            float n = (f[k] - mu) * r;
            if (sc) n *= 1.0f + a[k];
            if (sh) n += b[k];
            f[k] = n;
        }
        vec_store<V>(y + i, f);
    }
}

// n = (x − μ)·r and dn = dy·(1 + scale) of the V elements at i
template <int V>
__device__ __forceinline__ void ln_bwd_terms_(float *n, float *dn, const bf16 *x, const bf16 *dy, const bf16 *sc, int i,
                                              float mu, float r) {
    float sf[V];
    vec_load<V>(n, x + i);
    vec_load<V>(dn, dy + i);
    if (sc) vec_load<V>(sf, sc + i);
#pragma unroll
    for (int k = 0; k < V; k++) {
        n[k] = (n[k] - mu) * r;
        if (sc) dn[k] *= 1.0f + sf[k];
    }
}

// d_inp += r·(dn − mean(dn) − n·mean(dn·n)), dn = dy·(1 + scale)
template <int V>
__global__ void layernorm_modulate_backward_kernel(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, const float *mean,
                                                   const float *rstd, const bf16 *scale, AdaMod m) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= m.B * m.N) return;
    const int D = m.D;
    const bf16 *x = inp + (size_t)row * D, *dy = d_out + (size_t)row * D;
    const float mu = mean[row], r = rstd[row];
    const bf16 *sc = scale ? scale + (size_t)adamod_row(&m, row / m.N, row % m.N) * m.ld : nullptr;
    float a = 0.0f, b = 0.0f, n[V], dn[V];
    for (int i = V * lane; i < D; i += 32 * V) {
        ln_bwd_terms_<V>(n, dn, x, dy, sc, i, mu, r);
#pragma unroll
        for (int k = 0; k < V; k++) {
            a += dn[k];
            b += dn[k] * n[k];
        }
    }
    a = warp_sum_(a) / D;
    b = warp_sum_(b) / D;
    bf16 *dx = d_inp + (size_t)row * D;
    for (int i = V * lane; i < D; i += 32 * V) {
        float of[V];
        ln_bwd_terms_<V>(n, dn, x, dy, sc, i, mu, r);
        vec_load<V>(of, dx + i);
#pragma unroll
        for (int k = 0; k < V; k++) of[k] = of[k] + r * (dn[k] - a - n[k] * b);
        vec_store<V>(dx + i, of);
    }
}

static bool ln_vec8_(const AdaMod *m, const void *a, const void *b, const void *c, const void *shift, const void *scale) {
    return m->D % 8 == 0 && m->ld % 8 == 0 && vec8_ok(a) && vec8_ok(b) && (!c || vec8_ok(c)) &&
           (!shift || vec8_ok(shift)) && (!scale || vec8_ok(scale));
}

struct LnModGrad {
    const bf16 *dy, *x;
    const float *mean, *rstd;
    int D;
    __device__ float2 operator()(size_t row, int i) const {
        float g = __bfloat162float(dy[row * D + i]);
        return make_float2(g, g * (__bfloat162float(x[row * D + i]) - mean[row]) * rstd[row]);
    }
};

extern "C" void layernorm_modulate_forward(OpCtx *c, void *out, float *mean, float *rstd, const void *inp,
                                           const void *shift, const void *scale, const AdaMod *m) {
    int rows = m->B * m->N;
    if (!rows) return;
    auto k = ln_vec8_(m, out, inp, NULL, shift, scale) ? layernorm_modulate_forward_kernel<8> : layernorm_modulate_forward_kernel<1>;
    k<<<(rows + 7) / 8, 256, 0, (cudaStream_t)c->stream>>>((bf16 *)out, mean, rstd, (const bf16 *)inp,
                                                            (const bf16 *)shift, (const bf16 *)scale, *m);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void layernorm_modulate_backward(OpCtx *c, void *d_inp, void *d_shift, void *d_scale, const void *d_out,
                                            const void *inp, const float *mean, const float *rstd, const void *scale,
                                            const AdaMod *m) {
    cudaStream_t s = (cudaStream_t)c->stream;
    int rows = m->B * m->N;
    if (rows) {
        auto k = ln_vec8_(m, d_inp, d_out, inp, NULL, scale) ? layernorm_modulate_backward_kernel<8>
                                                              : layernorm_modulate_backward_kernel<1>;
        k<<<(rows + 7) / 8, 256, 0, s>>>((bf16 *)d_inp, (const bf16 *)d_out, (const bf16 *)inp, mean, rstd,
                                         (const bf16 *)scale, *m);
        CUDA_CHECK(cudaGetLastError());
    }
    if (d_shift || d_scale) {
        LnModGrad f{(const bf16 *)d_out, (const bf16 *)inp, mean, rstd, m->D};
        colreduce_(s, f, *m, (bf16 *)d_shift, (bf16 *)d_scale, nullptr, nullptr, m->ld);
    }
}
