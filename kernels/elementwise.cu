// elementwise.cu: CUDA twins of elementwise.c on bf16, computed in fp32.
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "elementwise.h"

typedef __nv_bfloat16 bf16;

static unsigned grid_(size_t n) { return (unsigned)((n + 255) / 256); }

__global__ void add_kernel1(bf16 *o, const bf16 *a, const bf16 *b, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) o[i] = __float2bfloat16_rn(__bfloat162float(a[i]) + __bfloat162float(b[i]));
}

__global__ void scale_kernel1(bf16 *x, float s, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] = __float2bfloat16_rn(__bfloat162float(x[i]) * s);
}

__global__ void silu_kernel1(bf16 *o, const bf16 *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = __bfloat162float(x[i]);
        o[i] = __float2bfloat16_rn(v / (1.0f + expf(-v)));
    }
}

__global__ void silu_backward_kernel1(bf16 *di, const bf16 *g, const bf16 *x, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float v = __bfloat162float(x[i]), s = 1.0f / (1.0f + expf(-v));
        di[i] = __float2bfloat16_rn(__bfloat162float(g[i]) * s * (1.0f + v * (1.0f - s)));
    }
}

#define LAUNCH(kernel, n, ...)                                                          \
    do {                                                                                \
        if (!(n)) return;                                                               \
        kernel<<<grid_(n), 256, 0, (cudaStream_t)c->stream>>>(__VA_ARGS__);             \
        CUDA_CHECK(cudaGetLastError());                                                 \
    } while (0)

extern "C" void add_forward(OpCtx *c, void *out, const void *a, const void *b, size_t n) {
    LAUNCH(add_kernel1, n, (bf16 *)out, (const bf16 *)a, (const bf16 *)b, n);
}
extern "C" void scale_forward(OpCtx *c, void *x, float s, size_t n) { LAUNCH(scale_kernel1, n, (bf16 *)x, s, n); }
extern "C" void silu_forward(OpCtx *c, void *out, const void *inp, size_t n) {
    LAUNCH(silu_kernel1, n, (bf16 *)out, (const bf16 *)inp, n);
}
extern "C" void silu_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n) {
    LAUNCH(silu_backward_kernel1, n, (bf16 *)d_inp, (const bf16 *)d_out, (const bf16 *)inp, n);
}
