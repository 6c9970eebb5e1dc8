// rmsnorm.cu: CUDA twin of rmsnorm.c. One warp per row; d_w is a deterministic column sum over
// all rows (colreduce.cuh), accumulated into the f32 gradient.
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "colreduce.cuh"
#include "rmsnorm.h"

typedef __nv_bfloat16 bf16;

__global__ void rmsnorm_forward_kernel1(bf16 *out, float *rstd, const bf16 *inp, const bf16 *w, int rows, int dim) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const bf16 *x = inp + (size_t)row * dim;
    float ss = 0.0f;
    for (int i = lane; i < dim; i += 32) {
        float v = __bfloat162float(x[i]);
        ss += v * v;
    }
    float r = rsqrtf(warp_sum_(ss) / dim + QIE_RMS_EPS);
    if (lane == 0 && rstd) rstd[row] = r;
    for (int i = lane; i < dim; i += 32)
        out[(size_t)row * dim + i] = __float2bfloat16_rn(__bfloat162float(x[i]) * r * __bfloat162float(w[i]));
}

__global__ void rmsnorm_backward_kernel1(bf16 *d_inp, const bf16 *d_out, const bf16 *inp, const float *rstd,
                                         const bf16 *w, int rows, int dim) {
    int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    const bf16 *x = inp + (size_t)row * dim, *dy = d_out + (size_t)row * dim;
    const float r = rstd[row];
    float a = 0.0f;
    for (int i = lane; i < dim; i += 32) a += __bfloat162float(dy[i]) * __bfloat162float(w[i]) * __bfloat162float(x[i]);
    a = warp_sum_(a) / dim;
    for (int i = lane; i < dim; i += 32)
        d_inp[(size_t)row * dim + i] = __float2bfloat16_rn(r * __bfloat162float(dy[i]) * __bfloat162float(w[i]) -
                                                           __bfloat162float(x[i]) * r * r * r * a);
}

struct RmsWGrad {
    const bf16 *dy, *x;
    const float *rstd;
    int dim;
    __device__ float2 operator()(size_t row, int i) const {
        return make_float2(__bfloat162float(dy[row * dim + i]) * __bfloat162float(x[row * dim + i]) * rstd[row], 0.0f);
    }
};

extern "C" void rmsnorm_forward(OpCtx *c, void *out, float *rstd, const void *inp, const void *w, int rows, int dim) {
    if (!rows) return;
    rmsnorm_forward_kernel1<<<(rows + 7) / 8, 256, 0, (cudaStream_t)c->stream>>>((bf16 *)out, rstd, (const bf16 *)inp,
                                                                                 (const bf16 *)w, rows, dim);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void rmsnorm_backward(OpCtx *c, void *d_inp, void *d_w, QieDtype gdt, const void *d_out, const void *inp,
                                 const float *rstd, const void *w, int rows, int dim) {
    cudaStream_t s = (cudaStream_t)c->stream;
    if (!rows) return;
    if (d_inp) {
        rmsnorm_backward_kernel1<<<(rows + 7) / 8, 256, 0, s>>>((bf16 *)d_inp, (const bf16 *)d_out, (const bf16 *)inp,
                                                                rstd, (const bf16 *)w, rows, dim);
        CUDA_CHECK(cudaGetLastError());
    }
    if (d_w) {
        AdaMod all = {1, rows, dim, 1, rows, dim};
        colreduce_grad_(s, RmsWGrad{(const bf16 *)d_out, (const bf16 *)inp, rstd, dim}, all, d_w, nullptr, gdt, dim);
    }
}
