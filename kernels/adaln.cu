// adaln.cu: CUDA twin of adaln.c (gated residual). Elementwise forward; the backward's d_gate is a
// deterministic column sum (colreduce.cuh).
#include <cuda_bf16.h>

#include "adaln.h"
#include "check_cuda.h"
#include "colreduce.cuh"
#include "vec8.cuh"

typedef __nv_bfloat16 bf16;

// V columns of one row per thread: 8 (16-byte accesses: m.D % 8 == 0, aligned, vec8.cuh) or 1;
// iv indexes groups of V
template <int V>
__global__ void gate_residual_forward_kernel(bf16 *out, const bf16 *h, const bf16 *y, const bf16 *gate, AdaMod m) {
    size_t iv = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (iv >= (size_t)m.B * m.N * m.D / V) return;
    size_t i = V * iv, row = i / m.D;
    int col = (int)(i % m.D);
    float g[V], a[V], b[V];
    vec_load<V>(g, gate + (size_t)adamod_row(&m, (int)(row / m.N), (int)(row % m.N)) * m.ld + col);
    vec_load<V>(a, h + i);
    vec_load<V>(b, y + i);
#pragma unroll
    for (int k = 0; k < V; k++) a[k] = a[k] + g[k] * b[k];
    vec_store<V>(out + i, a);
}

template <int V>
__global__ void gate_residual_dy_kernel(bf16 *d_y, const bf16 *d_out, const bf16 *gate, AdaMod m) {
    size_t iv = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (iv >= (size_t)m.B * m.N * m.D / V) return;
    size_t i = V * iv, row = i / m.D;
    int col = (int)(i % m.D);
    float g[V], d[V];
    vec_load<V>(g, gate + (size_t)adamod_row(&m, (int)(row / m.N), (int)(row % m.N)) * m.ld + col);
    vec_load<V>(d, d_out + i);
#pragma unroll
    for (int k = 0; k < V; k++) d[k] *= g[k];
    vec_store<V>(d_y + i, d);
}

static bool gate_vec8_(const AdaMod *m, const void *a, const void *b, const void *c, const void *gate) {
    return m->D % 8 == 0 && m->ld % 8 == 0 && vec8_ok(a) && vec8_ok(b) && (!c || vec8_ok(c)) && vec8_ok(gate);
}

struct GateGrad {
    const bf16 *dout, *y;
    int D;
    __device__ float2 operator()(size_t row, int i) const {
        return make_float2(__bfloat162float(dout[row * D + i]) * __bfloat162float(y[row * D + i]), 0.0f);
    }
};

extern "C" void gate_residual_forward(OpCtx *c, void *out, const void *h, const void *y, const void *gate,
                                      const AdaMod *m) {
    size_t n = (size_t)m->B * m->N * m->D;
    if (!n) return;
    const int v8 = gate_vec8_(m, out, h, y, gate);
    const size_t nv = v8 ? n / 8 : n;
    auto k = v8 ? gate_residual_forward_kernel<8> : gate_residual_forward_kernel<1>;
    k<<<(unsigned)((nv + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>((bf16 *)out, (const bf16 *)h, (const bf16 *)y,
                                                                         (const bf16 *)gate, *m);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void gate_residual_backward(OpCtx *c, void *d_y, void *d_gate, const void *d_out, const void *y,
                                       const void *gate, const AdaMod *m) {
    cudaStream_t s = (cudaStream_t)c->stream;
    size_t n = (size_t)m->B * m->N * m->D;
    // d_gate first: d_y may be written over a buffer the caller reuses, d_out is read by both
    if (d_gate) colreduce_(s, GateGrad{(const bf16 *)d_out, (const bf16 *)y, m->D}, *m, (bf16 *)d_gate, nullptr,
                           nullptr, nullptr, m->ld);
    if (d_y && n) {
        const int v8 = gate_vec8_(m, d_y, d_out, NULL, gate);
        const size_t nv = v8 ? n / 8 : n;
        auto k = v8 ? gate_residual_dy_kernel<8> : gate_residual_dy_kernel<1>;
        k<<<(unsigned)((nv + 255) / 256), 256, 0, s>>>((bf16 *)d_y, (const bf16 *)d_out, (const bf16 *)gate, *m);
        CUDA_CHECK(cudaGetLastError());
    }
}
