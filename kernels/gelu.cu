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

// V elements per thread: 8 (16-byte accesses: n % 8 == 0, aligned, vec8.cuh) or 1 (any n);
// nv = n / V groups
template <int V>
__global__ void gelu_tanh_forward_kernel(bf16 *out, const bf16 *inp, size_t nv) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nv) return;
    float x[V];
    vec_load<V>(x, inp + V * i);
#pragma unroll
    for (int k = 0; k < V; k++) x[k] = gelu_(x[k]);
    vec_store<V>(out + V * i, x);
}

template <int V>
__global__ void gelu_tanh_backward_kernel(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, size_t nv) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nv) return;
    float x[V], d[V];
    vec_load<V>(x, inp + V * i);
    vec_load<V>(d, d_out + V * i);
#pragma unroll
    for (int k = 0; k < V; k++) d[k] *= gelu_grad_(x[k]);
    vec_store<V>(d_inp + V * i, d);
}

extern "C" void gelu_tanh_forward(OpCtx *c, void *out, const void *inp, size_t n) {
    if (!n) return;
    const int v8 = n % 8 == 0 && vec8_ok(out) && vec8_ok(inp);
    const size_t nv = v8 ? n / 8 : n;
    auto k = v8 ? gelu_tanh_forward_kernel<8> : gelu_tanh_forward_kernel<1>;
    k<<<(unsigned)((nv + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>((bf16 *)out, (const bf16 *)inp, nv);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void gelu_tanh_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n) {
    if (!n) return;
    const int v8 = n % 8 == 0 && vec8_ok(d_inp) && vec8_ok(d_out) && vec8_ok(inp);
    const size_t nv = v8 ? n / 8 : n;
    auto k = v8 ? gelu_tanh_backward_kernel<8> : gelu_tanh_backward_kernel<1>;
    k<<<(unsigned)((nv + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>((bf16 *)d_inp, (const bf16 *)d_out,
                                                                         (const bf16 *)inp, nv);
    CUDA_CHECK(cudaGetLastError());
}
