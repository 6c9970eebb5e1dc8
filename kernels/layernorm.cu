// layernorm.cu: CUDA twin of layernorm.c (LayerNorm without affine fused with AdaLN modulation).
// One warp per token row; statistics in fp32 (two passes over the row, which stays in L1/L2);
// the backward's d_shift/d_scale are deterministic column sums (colreduce.cuh).
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "colreduce.cuh"
#include "layernorm.h"
#include "vec8.cuh"

typedef __nv_bfloat16 bf16;

__global__ void layernorm_modulate_forward_kernel1(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                                                   const bf16 *shift, const bf16 *scale, AdaMod m) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= m.B * m.N) return;
    const int D = m.D;
    const bf16 *x = inp + (size_t)row * D;
    float s = 0.0f;
    for (int i = lane; i < D; i += 32) s += __bfloat162float(x[i]);
    float mu = warp_sum_(s) / D, v = 0.0f;
    for (int i = lane; i < D; i += 32) {
        float t = __bfloat162float(x[i]) - mu;
        v += t * t;
    }
    float r = rsqrtf(warp_sum_(v) / D + QIE_LN_EPS);
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
    int mr = adamod_row(&m, row / m.N, row % m.N);
    const bf16 *sh = shift ? shift + (size_t)mr * m.ld : nullptr, *sc = scale ? scale + (size_t)mr * m.ld : nullptr;
    bf16 *y = out + (size_t)row * D;
    for (int i = lane; i < D; i += 32) {
        float n = (__bfloat162float(x[i]) - mu) * r;
        if (sc) n *= 1.0f + __bfloat162float(sc[i]);
        if (sh) n += __bfloat162float(sh[i]);
        y[i] = __float2bfloat16_rn(n);
    }
}

// d_inp += r·(dn − mean(dn) − n·mean(dn·n)), dn = dy·(1 + scale)
__global__ void layernorm_modulate_backward_kernel1(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, const float *mean,
                                                    const float *rstd, const bf16 *scale, AdaMod m) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= m.B * m.N) return;
    const int D = m.D;
    const bf16 *x = inp + (size_t)row * D, *dy = d_out + (size_t)row * D;
    const float mu = mean[row], r = rstd[row];
    const bf16 *sc = scale ? scale + (size_t)adamod_row(&m, row / m.N, row % m.N) * m.ld : nullptr;
    float a = 0.0f, b = 0.0f;
    for (int i = lane; i < D; i += 32) {
        float n = (__bfloat162float(x[i]) - mu) * r, dn = __bfloat162float(dy[i]);
        if (sc) dn *= 1.0f + __bfloat162float(sc[i]);
        a += dn;
        b += dn * n;
    }
    a = warp_sum_(a) / D;
    b = warp_sum_(b) / D;
    bf16 *dx = d_inp + (size_t)row * D;
    for (int i = lane; i < D; i += 32) {
        float n = (__bfloat162float(x[i]) - mu) * r, dn = __bfloat162float(dy[i]);
        if (sc) dn *= 1.0f + __bfloat162float(sc[i]);
        dx[i] = __float2bfloat16_rn(__bfloat162float(dx[i]) + r * (dn - a - n * b));
    }
}

// The same two kernels with each lane moving 8 contiguous elements per access (D % 8 == 0 and
// every row / modulation chunk 16-byte aligned: vec8.cuh). The per-element arithmetic is the
// scalar kernels'; the row sums are added in another order.
__global__ void layernorm_modulate_forward_kernel8(bf16 *out, float *mean, float *rstd, const bf16 *inp,
                                                   const bf16 *shift, const bf16 *scale, AdaMod m) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= m.B * m.N) return;
    const int D = m.D;
    const bf16 *x = inp + (size_t)row * D;
    float s = 0.0f, f[8];
    for (int i = 8 * lane; i < D; i += 256) {
        vec8_load(f, x + i);
#pragma unroll
        for (int k = 0; k < 8; k++) s += f[k];
    }
    float mu = warp_sum_(s) / D, v = 0.0f;
    for (int i = 8 * lane; i < D; i += 256) {
        vec8_load(f, x + i);
#pragma unroll
        for (int k = 0; k < 8; k++) v += (f[k] - mu) * (f[k] - mu);
    }
    float r = rsqrtf(warp_sum_(v) / D + QIE_LN_EPS);
    if (lane == 0) {
        mean[row] = mu;
        rstd[row] = r;
    }
    int mr = adamod_row(&m, row / m.N, row % m.N);
    const bf16 *sh = shift ? shift + (size_t)mr * m.ld : nullptr, *sc = scale ? scale + (size_t)mr * m.ld : nullptr;
    bf16 *y = out + (size_t)row * D;
    for (int i = 8 * lane; i < D; i += 256) {
        float a[8], b[8];
        vec8_load(f, x + i);
        if (sc) vec8_load(a, sc + i);
        if (sh) vec8_load(b, sh + i);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float n = (f[k] - mu) * r;
            if (sc) n *= 1.0f + a[k];
            if (sh) n += b[k];
            f[k] = n;
        }
        vec8_store(y + i, f);
    }
}

__global__ void layernorm_modulate_backward_kernel8(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, const float *mean,
                                                    const float *rstd, const bf16 *scale, AdaMod m) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= m.B * m.N) return;
    const int D = m.D;
    const bf16 *x = inp + (size_t)row * D, *dy = d_out + (size_t)row * D;
    const float mu = mean[row], r = rstd[row];
    const bf16 *sc = scale ? scale + (size_t)adamod_row(&m, row / m.N, row % m.N) * m.ld : nullptr;
    float a = 0.0f, b = 0.0f, xf[8], df[8], sf[8];
    for (int i = 8 * lane; i < D; i += 256) {
        vec8_load(xf, x + i);
        vec8_load(df, dy + i);
        if (sc) vec8_load(sf, sc + i);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float n = (xf[k] - mu) * r, dn = df[k];
            if (sc) dn *= 1.0f + sf[k];
            a += dn;
            b += dn * n;
        }
    }
    a = warp_sum_(a) / D;
    b = warp_sum_(b) / D;
    bf16 *dx = d_inp + (size_t)row * D;
    for (int i = 8 * lane; i < D; i += 256) {
        float of[8];
        vec8_load(xf, x + i);
        vec8_load(df, dy + i);
        vec8_load(of, dx + i);
        if (sc) vec8_load(sf, sc + i);
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float n = (xf[k] - mu) * r, dn = df[k];
            if (sc) dn *= 1.0f + sf[k];
            of[k] = of[k] + r * (dn - a - n * b);
        }
        vec8_store(dx + i, of);
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
    if (ln_vec8_(m, out, inp, NULL, shift, scale))
        layernorm_modulate_forward_kernel8<<<(rows + 7) / 8, 256, 0, (cudaStream_t)c->stream>>>(
            (bf16 *)out, mean, rstd, (const bf16 *)inp, (const bf16 *)shift, (const bf16 *)scale, *m);
    else
        layernorm_modulate_forward_kernel1<<<(rows + 7) / 8, 256, 0, (cudaStream_t)c->stream>>>(
            (bf16 *)out, mean, rstd, (const bf16 *)inp, (const bf16 *)shift, (const bf16 *)scale, *m);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void layernorm_modulate_backward(OpCtx *c, void *d_inp, void *d_shift, void *d_scale, const void *d_out,
                                            const void *inp, const float *mean, const float *rstd, const void *scale,
                                            const AdaMod *m) {
    cudaStream_t s = (cudaStream_t)c->stream;
    int rows = m->B * m->N;
    if (rows) {
        if (ln_vec8_(m, d_inp, d_out, inp, NULL, scale))
            layernorm_modulate_backward_kernel8<<<(rows + 7) / 8, 256, 0, s>>>(
                (bf16 *)d_inp, (const bf16 *)d_out, (const bf16 *)inp, mean, rstd, (const bf16 *)scale, *m);
        else
            layernorm_modulate_backward_kernel1<<<(rows + 7) / 8, 256, 0, s>>>(
                (bf16 *)d_inp, (const bf16 *)d_out, (const bf16 *)inp, mean, rstd, (const bf16 *)scale, *m);
        CUDA_CHECK(cudaGetLastError());
    }
    if (d_shift || d_scale) {
        LnModGrad f{(const bf16 *)d_out, (const bf16 *)inp, mean, rstd, m->D};
        colreduce_(s, f, *m, (bf16 *)d_shift, (bf16 *)d_scale, nullptr, nullptr, m->ld);
    }
}
