// global_norm.cu: deterministic Σ x² (global_norm.h). Kernel 1: GLOBAL_NORM_BLOCKS blocks walk the
// buffer grid-stride, each thread accumulating in double (the loop is memory-bound, so fp64 costs
// nothing on H100) and each block writing one partial. Kernel 2: one block sums the partials in a
// fixed order. The fixed grid (not sized by n) is what makes the result reproducible.
#include <cuda_bf16.h>

#include "block_sum.cuh"
#include "check_cuda.h"
#include "global_norm.h"

__device__ __forceinline__ double widen_(float v) { return v; }
__device__ __forceinline__ double widen_(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__global__ void global_norm_kernel1(float *partials, const T *x, size_t n) {
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = widen_(x[i]);
        s += v * v;
    }
    s = block_sum_double(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = (float)s;
}

__global__ void global_norm_final_kernel1(float *out, const float *partials, int nparts) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partials[i];
    s = block_sum_double(s);
    if (threadIdx.x == 0) *out = (float)s;
}

extern "C" double global_norm_squared(OpCtx *c, float *scratch, const void *x, QieDtype dt, size_t n) {
    if (!n) return 0.0;
    cudaStream_t st = (cudaStream_t)c->stream;
    if (dt == QIE_DT_BF16)
        global_norm_kernel1<<<GLOBAL_NORM_BLOCKS, 512, 0, st>>>(scratch + 1, (const __nv_bfloat16 *)x, n);
    else
        global_norm_kernel1<<<GLOBAL_NORM_BLOCKS, 512, 0, st>>>(scratch + 1, (const float *)x, n);
    CUDA_CHECK(cudaGetLastError());
    global_norm_final_kernel1<<<1, 512, 0, st>>>(scratch, scratch + 1, GLOBAL_NORM_BLOCKS);
    CUDA_CHECK(cudaGetLastError());
    float h = 0.0f;
    CUDA_CHECK(cudaMemcpyAsync(&h, scratch, sizeof h, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    return (double)h;
}
