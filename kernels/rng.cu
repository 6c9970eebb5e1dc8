// rng.cu: CUDA twin of rng.c. One thread per Philox block (4 outputs), so the mapping from
// element index to counter is the CPU reference's exactly.
#include "rng.h"
#include "philox.h"
#include "check_cuda.h"

extern "C" {
#include "err.h"
}

__global__ void rng_uniform_kernel1(float *out, size_t n, uint64_t seed, uint64_t subseq, uint64_t block0) {
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t i = b * 4;
    if (i >= n) return;
    Philox4 r = philox_block(seed, subseq, block0 + b);
    for (int l = 0; l < 4 && i + l < n; l++) out[i + l] = philox_u01(r.v[l]);
}

__device__ __forceinline__ void box_muller_dev(uint32_t a, uint32_t b, float *z0, float *z1) {
    float u1 = 1.0f - philox_u01(a), u2 = philox_u01(b);
    float r = sqrtf(-2.0f * logf(u1)), th = 6.2831853071795864f * u2;
    *z0 = r * cosf(th);
    *z1 = r * sinf(th);
}

__global__ void rng_normal_kernel1(float *out, size_t n, uint64_t seed, uint64_t subseq, uint64_t block0) {
    size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t i = b * 4;
    if (i >= n) return;
    Philox4 r = philox_block(seed, subseq, block0 + b);
    float z[4];
    box_muller_dev(r.v[0], r.v[1], &z[0], &z[1]);
    box_muller_dev(r.v[2], r.v[3], &z[2], &z[3]);
    for (int l = 0; l < 4 && i + l < n; l++) out[i + l] = z[l];
}

extern "C" int rng_uniform(float *d_out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset, void *stream) {
    if (offset % 4) return QIE_EINVAL;
    if (!n) return 0;
    size_t blocks = (n + 3) / 4;
    unsigned grid = (unsigned)((blocks + 255) / 256);
    rng_uniform_kernel1<<<grid, 256, 0, (cudaStream_t)stream>>>(d_out, n, seed, subseq, offset / 4);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}

extern "C" int rng_normal(float *d_out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset, void *stream) {
    if (offset % 4) return QIE_EINVAL;
    if (!n) return 0;
    size_t blocks = (n + 3) / 4;
    unsigned grid = (unsigned)((blocks + 255) / 256);
    rng_normal_kernel1<<<grid, 256, 0, (cudaStream_t)stream>>>(d_out, n, seed, subseq, offset / 4);
    CUDA_CHECK(cudaGetLastError());
    return 0;
}
