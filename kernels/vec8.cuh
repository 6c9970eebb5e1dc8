// vec8.cuh: eight bf16 values moved as one 16-byte access, for the memory-bound elementwise and
// row kernels (a warp of 2-byte accesses moves 64 bytes; of 16-byte accesses, 512). Callers check
// vec8_ok() on every pointer (and that rows are whole multiples of 8) and keep a scalar kernel for
// the rest; the arithmetic per element is the scalar kernel's.
#ifndef QIE_KERNELS_VEC8_CUH
#define QIE_KERNELS_VEC8_CUH

#include <stdint.h>

#include <cuda_bf16.h>

static inline bool vec8_ok(const void *p) { return ((uintptr_t)p & 15) == 0; }

static __device__ __forceinline__ void vec8_load(float f[8], const __nv_bfloat16 *p) {
    uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) {
        f[2 * k] = __low2float(h[k]);
        f[2 * k + 1] = __high2float(h[k]);
    }
}

static __device__ __forceinline__ void vec8_store(__nv_bfloat16 *p, const float f[8]) {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int k = 0; k < 4; k++) h[k] = __floats2bfloat162_rn(f[2 * k], f[2 * k + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
}

// V = 1 or 8 elements: one kernel body serves the vector and the scalar (fallback) paths
template <int V>
static __device__ __forceinline__ void vec_load(float *f, const __nv_bfloat16 *p) {
    if (V == 8) vec8_load(f, p);
    else f[0] = __bfloat162float(*p);
}

template <int V>
static __device__ __forceinline__ void vec_store(__nv_bfloat16 *p, const float *f) {
    if (V == 8) vec8_store(p, f);
    else *p = __float2bfloat16_rn(f[0]);
}

#endif
