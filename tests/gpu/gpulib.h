/* gpulib.h: what the GPU tests share: random inputs on both sides (the host copy rounded to what
 * the device holds, so CPU references see the GPU's inputs), downloads, and the error measure. */
#ifndef QIE_TESTS_GPULIB_H
#define QIE_TESTS_GPULIB_H

#include <math.h>
#include <stdlib.h>

#include "ops.h"
#include "rng.h"

/* max |a - b| / max |b| */
static inline double gpu_rel_err(const float *a, const float *b, size_t n) {
    double m = 0, s = 1e-30;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs(b[i]));
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs((double)a[i] - b[i]));
    return m / s;
}

/* uploads h as act and rounds the host copy to what the device holds */
static inline void *gpu_up_rounded(OpCtx *g, float *h, size_t n) {
    void *d = op_alloc(g, n * op_act_size(g));
    op_upload_act(g, d, h, n);
    op_download_act(g, h, d, n);
    return d;
}

/* N(0, scale²) from Philox (seed, sub): the device copy in *d, the rounded host copy returned */
static inline float *gpu_rand_rounded(OpCtx *g, size_t n, uint64_t seed, uint64_t sub, float scale, void **d) {
    float *h = malloc(n * sizeof(float));
    rng_normal_cpu(h, n, seed, sub, 0);
    for (size_t i = 0; i < n; i++) h[i] *= scale;
    *d = gpu_up_rounded(g, h, n);
    return h;
}

static inline float *gpu_down_act(OpCtx *g, const void *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    op_download_act(g, h, d, n);
    return h;
}

static inline float *gpu_down_f32(OpCtx *g, const float *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    op_download_f32(g, h, d, n);
    return h;
}

#endif
