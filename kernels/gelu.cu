// gelu.cu: CUDA twin of gelu.c (tanh GELU), fp32 math on bf16 storage.
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "gelu.h"
#include "vec8.cuh"

typedef __nv_bfloat16 bf16;
#define GELU_C 0.7978845608028654f

static __device__ __forceinline__ float gelu_(float x) {
    return 0.5f * x * (1.0f + tanhf(GELU_C * (x + 0.044715f * x * x * x)));
}

static __device__ __forceinline__ float gelu_grad_(float x) {
    float T = tanhf(GELU_C * (x + 0.044715f * x * x * x));
    return 0.5f * (1.0f + T) + 0.5f * x * (1.0f - T * T) * GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
}

__global__ void gelu_tanh_forward_kernel1(bf16 *out, const bf16 *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = __float2bfloat16_rn(gelu_(__bfloat162float(inp[i])));
}

__global__ void gelu_tanh_backward_kernel1(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    d_inp[i] = __float2bfloat16_rn(__bfloat162float(d_out[i]) * gelu_grad_(__bfloat162float(inp[i])));
}

// eight elements per thread (vec8.cuh), n8 = n / 8
__global__ void gelu_tanh_forward_kernel8(bf16 *out, const bf16 *inp, size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float x[8];
    vec8_load(x, inp + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; k++) x[k] = gelu_(x[k]);
    vec8_store(out + 8 * i, x);
}

__global__ void gelu_tanh_backward_kernel8(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, size_t n8) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n8) return;
    float x[8], d[8];
    vec8_load(x, inp + 8 * i);
    vec8_load(d, d_out + 8 * i);
#pragma unroll
    for (int k = 0; k < 8; k++) d[k] *= gelu_grad_(x[k]);
    vec8_store(d_inp + 8 * i, d);
}

extern "C" void gelu_tanh_forward(OpCtx *c, void *out, const void *inp, size_t n) {
    if (!n) return;
    cudaStream_t s = (cudaStream_t)c->stream;
    if (n % 8 == 0 && vec8_ok(out) && vec8_ok(inp))
        gelu_tanh_forward_kernel8<<<(unsigned)((n / 8 + 255) / 256), 256, 0, s>>>((bf16 *)out, (const bf16 *)inp, n / 8);
    else
        gelu_tanh_forward_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((bf16 *)out, (const bf16 *)inp, n);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void gelu_tanh_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n) {
    if (!n) return;
    cudaStream_t s = (cudaStream_t)c->stream;
    if (n % 8 == 0 && vec8_ok(d_inp) && vec8_ok(d_out) && vec8_ok(inp))
        gelu_tanh_backward_kernel8<<<(unsigned)((n / 8 + 255) / 256), 256, 0, s>>>((bf16 *)d_inp, (const bf16 *)d_out,
                                                                                   (const bf16 *)inp, n / 8);
    else
        gelu_tanh_backward_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, s>>>((bf16 *)d_inp, (const bf16 *)d_out,
                                                                               (const bf16 *)inp, n);
    CUDA_CHECK(cudaGetLastError());
}
