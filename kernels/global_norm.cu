// global_norm.cu: deterministic Σ x² (global_norm.h). Kernel 1: GLOBAL_NORM_BLOCKS blocks walk the
// buffer grid-stride, each thread accumulating in double (the loop is memory-bound, so fp64 costs
// nothing on H100) and each block writing one partial. Kernel 2: one block sums the partials in a
// fixed order. The fixed grid (not sized by n) is what makes the result reproducible.
#include "check_cuda.h"
#include "global_norm.h"

__device__ double block_sum_(double v) {
    __shared__ double sh[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    v = threadIdx.x < (blockDim.x >> 5) ? sh[lane] : 0.0;
    if (warp == 0)
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    return v;
}

__global__ void global_norm_kernel1(float *partials, const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        double v = x[i];
        s += v * v;
    }
    s = block_sum_(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = (float)s;
}

__global__ void global_norm_final_kernel1(float *out, const float *partials, int nparts) {
    double s = 0.0;
    for (int i = threadIdx.x; i < nparts; i += blockDim.x) s += partials[i];
    s = block_sum_(s);
    if (threadIdx.x == 0) *out = (float)s;
}

extern "C" double global_norm_squared(OpCtx *c, float *scratch, const float *x, size_t n) {
    if (!n) return 0.0;
    cudaStream_t st = (cudaStream_t)c->stream;
    global_norm_kernel1<<<GLOBAL_NORM_BLOCKS, 512, 0, st>>>(scratch + 1, x, n);
    CUDA_CHECK(cudaGetLastError());
    global_norm_final_kernel1<<<1, 512, 0, st>>>(scratch, scratch + 1, GLOBAL_NORM_BLOCKS);
    CUDA_CHECK(cudaGetLastError());
    float h = 0.0f;
    CUDA_CHECK(cudaMemcpyAsync(&h, scratch, sizeof h, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
    return (double)h;
}
