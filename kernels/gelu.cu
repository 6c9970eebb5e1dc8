// gelu.cu: CUDA twin of gelu.c (tanh GELU), fp32 math on bf16 storage.
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "gelu.h"

typedef __nv_bfloat16 bf16;
#define GELU_C 0.7978845608028654f

__global__ void gelu_tanh_forward_kernel1(bf16 *out, const bf16 *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = __bfloat162float(inp[i]);
    out[i] = __float2bfloat16_rn(0.5f * x * (1.0f + tanhf(GELU_C * (x + 0.044715f * x * x * x))));
}

__global__ void gelu_tanh_backward_kernel1(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float x = __bfloat162float(inp[i]), T = tanhf(GELU_C * (x + 0.044715f * x * x * x));
    float g = 0.5f * (1.0f + T) + 0.5f * x * (1.0f - T * T) * GELU_C * (1.0f + 3.0f * 0.044715f * x * x);
    d_inp[i] = __float2bfloat16_rn(__bfloat162float(d_out[i]) * g);
}

extern "C" void gelu_tanh_forward(OpCtx *c, void *out, const void *inp, size_t n) {
    if (!n) return;
    gelu_tanh_forward_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>((bf16 *)out,
                                                                                                (const bf16 *)inp, n);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void gelu_tanh_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n) {
    if (!n) return;
    gelu_tanh_backward_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)d_inp, (const bf16 *)d_out, (const bf16 *)inp, n);
    CUDA_CHECK(cudaGetLastError());
}
