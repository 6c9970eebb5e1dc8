// adamw.cu: CUDA twin of adamw_update_cpu (adamw.h has the formula). One thread per element;
// the arithmetic is the CPU reference's, statement for statement, so both backends give the same
// fp32 master for the same gradients (nvcc does not contract a·b + c into an FMA across the
// __fmul_rn/__fadd_rn intrinsics used here, which keeps the rounding of the reference).
#include <cuda_bf16.h>

#include "adamw.h"
#include "check_cuda.h"

__device__ __forceinline__ float widen_(float g) { return g; }
__device__ __forceinline__ float widen_(__nv_bfloat16 g) { return __bfloat162float(g); }

template <typename G>
__global__ void adamw_kernel1(float *master, __nv_bfloat16 *params, const G *grads, float *m, float *v, size_t n,
                              AdamWArgs a) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float g0 = widen_(grads[i]);
    float g = a.grad_scale == 1.0f ? g0 : __fmul_rn(g0, a.grad_scale);
    float p = __fmul_rn(master[i], a.lr_decay);
    float mi = __fadd_rn(m[i], __fmul_rn(a.beta1_c, __fsub_rn(g, m[i])));
    float vi = __fadd_rn(__fmul_rn(v[i], a.beta2), __fmul_rn(__fmul_rn(a.beta2_c, g), g));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), a.bc2_sqrt), a.eps);
    p = __fadd_rn(p, __fmul_rn(-a.step_size, __fdiv_rn(mi, denom)));
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (params) params[i] = __float2bfloat16_rn(p);
}

extern "C" void adamw_update(OpCtx *c, float *master, void *params, const void *grads, QieDtype gdt, float *m,
                             float *v, size_t n, const AdamWArgs *a) {
    if (!n) return;
    unsigned grid = (unsigned)((n + 511) / 512);
    cudaStream_t st = (cudaStream_t)c->stream;
    if (gdt == QIE_DT_BF16)
        adamw_kernel1<<<grid, 512, 0, st>>>(master, (__nv_bfloat16 *)params, (const __nv_bfloat16 *)grads, m, v, n, *a);
    else
        adamw_kernel1<<<grid, 512, 0, st>>>(master, (__nv_bfloat16 *)params, (const float *)grads, m, v, n, *a);
    CUDA_CHECK(cudaGetLastError());
}
