// block_sum.cuh: Σ of one double per thread over a thread block (warp shuffles, then the warps'
// sums in warp order), the same order every run; the result is valid in thread 0. Used by the
// deterministic reductions (global_norm.cu, objective.cu).
#ifndef QIE_KERNELS_BLOCK_SUM_CUH
#define QIE_KERNELS_BLOCK_SUM_CUH

static __device__ __forceinline__ double block_sum_double(double v) {
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

#endif
