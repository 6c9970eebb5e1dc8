// adamw.cu: CUDA twin of adamw_update_cpu (adamw.h has the formula). One thread per element;
// the arithmetic is the CPU reference's, statement for statement, so both backends give the same
// fp32 master for the same gradients (nvcc does not contract a·b + c into an FMA across the
// __fmul_rn/__fadd_rn intrinsics used here, which keeps the rounding of the reference).
#include <cuda_bf16.h>

#include "adamw.h"
#include "check_cuda.h"

__device__ __forceinline__ float widen_(float g) { return g; }
__device__ __forceinline__ float widen_(__nv_bfloat16 g) { return __bfloat162float(g); }

/* one element: the new master from (master, m, v, g); m and v updated in place */
__device__ __forceinline__ float adamw_one_(float master, float g0, float &m, float &v, const AdamWArgs &a) {
    float g = a.grad_scale == 1.0f ? g0 : __fmul_rn(g0, a.grad_scale);
    float p = __fmul_rn(master, a.lr_decay);
    float mi = __fadd_rn(m, __fmul_rn(a.beta1_c, __fsub_rn(g, m)));
    float vi = __fadd_rn(__fmul_rn(v, a.beta2), __fmul_rn(__fmul_rn(a.beta2_c, g), g));
    float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), a.bc2_sqrt), a.eps);
    m = mi;
    v = vi;
    return __fadd_rn(p, __fmul_rn(-a.step_size, __fdiv_rn(mi, denom)));
}

template <typename G>
__global__ void adamw_kernel1(float *master, __nv_bfloat16 *params, const G *grads, float *m, float *v, size_t n,
                              AdamWArgs a) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float mi = m[i], vi = v[i];
    float p = adamw_one_(master[i], widen_(grads[i]), mi, vi, a);
    m[i] = mi;
    v[i] = vi;
    master[i] = p;
    if (params) params[i] = __float2bfloat16_rn(p);
}

/* The same, four elements per thread with 16-byte loads and stores (the kernel is memory-bound:
 * 26-30 bytes per parameter); every pointer 16-byte aligned, n4 = n / 4. */
__device__ __forceinline__ float4 widen4_(const float *g, size_t i) { return reinterpret_cast<const float4 *>(g)[i]; }
__device__ __forceinline__ float4 widen4_(const __nv_bfloat16 *g, size_t i) {
    uint2 u = reinterpret_cast<const uint2 *>(g)[i];
    __nv_bfloat162 lo = *reinterpret_cast<__nv_bfloat162 *>(&u.x), hi = *reinterpret_cast<__nv_bfloat162 *>(&u.y);
    return make_float4(__low2float(lo), __high2float(lo), __low2float(hi), __high2float(hi));
}

template <typename G>
__global__ void adamw_kernel4(float *master, __nv_bfloat16 *params, const G *grads, float *m, float *v, size_t n4,
                              AdamWArgs a) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n4) return;
    float4 p = reinterpret_cast<float4 *>(master)[i], mm = reinterpret_cast<float4 *>(m)[i],
           vv = reinterpret_cast<float4 *>(v)[i], g = widen4_(grads, i);
    p.x = adamw_one_(p.x, g.x, mm.x, vv.x, a);
    p.y = adamw_one_(p.y, g.y, mm.y, vv.y, a);
    p.z = adamw_one_(p.z, g.z, mm.z, vv.z, a);
    p.w = adamw_one_(p.w, g.w, mm.w, vv.w, a);
    reinterpret_cast<float4 *>(master)[i] = p;
    reinterpret_cast<float4 *>(m)[i] = mm;
    reinterpret_cast<float4 *>(v)[i] = vv;
    if (params) {
        uint2 u;
        *reinterpret_cast<__nv_bfloat162 *>(&u.x) = __floats2bfloat162_rn(p.x, p.y);
        *reinterpret_cast<__nv_bfloat162 *>(&u.y) = __floats2bfloat162_rn(p.z, p.w);
        reinterpret_cast<uint2 *>(params)[i] = u;
    }
}

template <typename G>
static void launch_(cudaStream_t st, float *master, __nv_bfloat16 *params, const G *grads, float *m, float *v, size_t n,
                    const AdamWArgs *a) {
    const uintptr_t al = (uintptr_t)master | (uintptr_t)m | (uintptr_t)v | ((uintptr_t)grads * (4 / sizeof(G))) |
                         ((uintptr_t)params * 2);
    size_t done = 0;
    if (!(al & 15) && n >= 4) {
        const size_t n4 = n / 4;
        adamw_kernel4<<<(unsigned)((n4 + 255) / 256), 256, 0, st>>>(master, params, grads, m, v, n4, *a);
        CUDA_CHECK(cudaGetLastError());
        done = 4 * n4;
    }
    if (done < n) {
        adamw_kernel1<<<(unsigned)((n - done + 511) / 512), 512, 0, st>>>(master + done, params ? params + done : NULL,
                                                                        grads + done, m + done, v + done, n - done, *a);
        CUDA_CHECK(cudaGetLastError());
    }
}

extern "C" void adamw_update(OpCtx *c, float *master, void *params, const void *grads, QieDtype gdt, float *m,
                             float *v, size_t n, const AdamWArgs *a) {
    if (!n) return;
    cudaStream_t st = (cudaStream_t)c->stream;
    if (gdt == QIE_DT_BF16) launch_(st, master, (__nv_bfloat16 *)params, (const __nv_bfloat16 *)grads, m, v, n, a);
    else launch_(st, master, (__nv_bfloat16 *)params, (const float *)grads, m, v, n, a);
}
