// adaln.cu: CUDA twin of adaln.c (gated residual). Elementwise forward; the backward's d_gate is a
// deterministic column sum (colreduce.cuh).
#include <cuda_bf16.h>

#include "adaln.h"
#include "check_cuda.h"
#include "colreduce.cuh"

typedef __nv_bfloat16 bf16;

__global__ void gate_residual_forward_kernel1(bf16 *out, const bf16 *h, const bf16 *y, const bf16 *gate, AdaMod m) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)m.B * m.N * m.D) return;
    size_t row = i / m.D;
    int col = (int)(i % m.D);
    float g = __bfloat162float(gate[(size_t)adamod_row(&m, (int)(row / m.N), (int)(row % m.N)) * m.ld + col]);
    out[i] = __float2bfloat16_rn(__bfloat162float(h[i]) + g * __bfloat162float(y[i]));
}

__global__ void gate_residual_dy_kernel1(bf16 *d_y, const bf16 *d_out, const bf16 *gate, AdaMod m) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (size_t)m.B * m.N * m.D) return;
    size_t row = i / m.D;
    int col = (int)(i % m.D);
    float g = __bfloat162float(gate[(size_t)adamod_row(&m, (int)(row / m.N), (int)(row % m.N)) * m.ld + col]);
    d_y[i] = __float2bfloat16_rn(__bfloat162float(d_out[i]) * g);
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
    gate_residual_forward_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)h, (const bf16 *)y, (const bf16 *)gate, *m);
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
        gate_residual_dy_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((bf16 *)d_y, (const bf16 *)d_out,
                                                                             (const bf16 *)gate, *m);
        CUDA_CHECK(cudaGetLastError());
    }
}
