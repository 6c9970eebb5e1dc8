// objective.cu: CUDA twin of the objective ops (objective.h has the formulas). One thread per
// packed element for the latents (reading the unpacked [C, h, w] posterior), the arithmetic of
// objective.c in the same order with IEEE-rounded intrinsics (__fmul_rn & co., so nvcc does not
// contract into FMAs), bf16 rounding where the reference's tensors are bf16. The loss is
// deterministic: OBJECTIVE_LOSS_BLOCKS blocks walk the buffer grid-stride, accumulating in double,
// each block writes one partial; one thread sums the partials in order into the accumulator.
#include <cuda_bf16.h>

#include "block_sum.cuh"
#include "check_cuda.h"
#include "objective.h"

typedef struct {
    float mu[OBJECTIVE_LATENT_CH], inv[OBJECTIVE_LATENT_CH];
} NormConsts;

static NormConsts consts_(void) {
    NormConsts k;
    objective_norm_consts(k.mu, k.inv);
    return k;
}

__device__ __forceinline__ float rb_(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float latent_(float mean, float logvar, float eps, float mu, float inv) {
    float lv = logvar < -30.0f ? -30.0f : logvar > 20.0f ? 20.0f : logvar;
    float z = __fadd_rn(mean, __fmul_rn(expf(__fmul_rn(0.5f, lv)), eps));
    return __fmul_rn(__fsub_rn(z, mu), inv);
}

// packed element o = tok·F + f -> its index in [C, h, w] and its channel
__device__ __forceinline__ size_t unpack_(size_t o, int F, int h, int w, int *ch) {
    const size_t tok = o / F;
    const int f = (int)(o % F), wp = w / 2, c = f / 4, dy = (f / 2) & 1, dx = f & 1;
    const size_t y2 = tok / wp, x2 = tok % wp;
    *ch = c % OBJECTIVE_LATENT_CH;
    return ((size_t)c * h + 2 * y2 + dy) * w + 2 * x2 + dx;
}

__global__ void objective_source_kernel1(__nv_bfloat16 *x, const float *mean, const float *logvar, const float *eps,
                                         int F, int h, int w, size_t n, NormConsts k) {
    size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n) return;
    int c;
    size_t i = unpack_(o, F, h, w, &c);
    x[o] = __float2bfloat16_rn(latent_(mean[i], logvar[i], eps[i], k.mu[c], k.inv[c]));
}

__global__ void objective_target_kernel1(__nv_bfloat16 *xs, float *v, const float *mean, const float *logvar,
                                         const float *eps, const float *noise, float sigma, float a, int F, int h,
                                         int w, size_t n, NormConsts k) {
    size_t o = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= n) return;
    int c;
    size_t i = unpack_(o, F, h, w, &c);
    float x0 = rb_(latent_(mean[i], logvar[i], eps[i], k.mu[c], k.inv[c]));
    float e = rb_(noise[o]);
    xs[o] = __float2bfloat16_rn(__fadd_rn(rb_(__fmul_rn(a, x0)), rb_(__fmul_rn(sigma, e))));
    v[o] = rb_(__fsub_rn(e, x0));
}

__global__ void objective_loss_kernel1(double *partials, __nv_bfloat16 *d_pred, const __nv_bfloat16 *pred,
                                       const float *v, float w, size_t n, float scale) {
    double s = 0.0;
    const float w2 = __fmul_rn(2.0f, w);
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        float e = __fsub_rn(__bfloat162float(pred[i]), v[i]);
        float m = fabsf(e) <= 50.0f ? 1.0f : 0.0f;
        s += (double)__fmul_rn(__fmul_rn(__fmul_rn(e, e), m), w);
        d_pred[i] = __float2bfloat16_rn(__fmul_rn(__fmul_rn(__fmul_rn(w2, m), e), scale));
    }
    s = block_sum_double(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

__global__ void objective_loss_final_kernel1(double *acc, const double *partials, int nparts, double div) {
    double s = 0.0;
    for (int i = 0; i < nparts; i++) s += partials[i];
    *acc += s / div;
}

extern "C" void objective_source(OpCtx *c, void *x, const float *mean, const float *logvar, const float *eps, int C,
                                 int h, int w) {
    const size_t n = (size_t)(h / 2) * (w / 2) * 4 * C;
    if (!n) return;
    objective_source_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        (__nv_bfloat16 *)x, mean, logvar, eps, 4 * C, h, w, n, consts_());
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void objective_target(OpCtx *c, void *xs, float *v, const float *mean, const float *logvar,
                                 const float *eps, const float *noise, float sigma, int C, int h, int w) {
    const size_t n = (size_t)(h / 2) * (w / 2) * 4 * C;
    if (!n) return;
    /* a = r(1 − σ), formed on the host in fp32 as the reference does */
    const float a = bf16_to_f32(f32_to_bf16(1.0f - sigma));
    objective_target_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        (__nv_bfloat16 *)xs, v, mean, logvar, eps, noise, sigma, a, 4 * C, h, w, n, consts_());
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void objective_loss(OpCtx *c, void *d_pred, const void *pred, const float *v, float w, size_t n,
                               float scale, double div, double *acc, double *scratch) {
    cudaStream_t st = (cudaStream_t)c->stream;
    objective_loss_kernel1<<<OBJECTIVE_LOSS_BLOCKS, 256, 0, st>>>(scratch, (__nv_bfloat16 *)d_pred,
                                                                 (const __nv_bfloat16 *)pred, v, w, n, scale);
    CUDA_CHECK(cudaGetLastError());
    objective_loss_final_kernel1<<<1, 1, 0, st>>>(acc, scratch, OBJECTIVE_LOSS_BLOCKS, div);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void objective_upload(OpCtx *c, float *d, const float *h, size_t n) {
    if (!n) return;
    CUDA_CHECK(cudaMemcpyAsync(d, h, n * sizeof *d, cudaMemcpyHostToDevice, (cudaStream_t)c->stream));
}

extern "C" void objective_read(OpCtx *c, double *h, const double *d, size_t n) {
    if (!n) return;
    cudaStream_t st = (cudaStream_t)c->stream;
    CUDA_CHECK(cudaMemcpyAsync(h, d, n * sizeof *h, cudaMemcpyDeviceToHost, st));
    CUDA_CHECK(cudaStreamSynchronize(st));
}
