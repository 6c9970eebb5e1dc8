/* qwen_ops.c: fp32 references and dispatchers of qwen_ops.h. */
#include <math.h>
#include <string.h>

#include "dtype.h"
#include "qwen_ops.h"

#ifdef QIE_CUDA
#define CUDA_PATH(c, call) do { if ((c)->dev == QIE_DEV_CUDA) { call; return; } } while (0)
#else
#define CUDA_PATH(c, call) (void)(c)
#endif

void qwen_rmsnorm_cpu(float *out, const float *inp, const float *w, int rows, int dim, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *x = inp + (size_t)r * dim;
        float *o = out + (size_t)r * dim;
        float ss = 0.0f;
        for (int i = 0; i < dim; i++) ss += x[i] * x[i];
        float rs = 1.0f / sqrtf(ss / (float)dim + eps);
        for (int i = 0; i < dim; i++) o[i] = w[i] * (x[i] * rs);
    }
}

void op_qwen_rmsnorm(OpCtx *c, void *out, const void *inp, const void *w, int rows, int dim, float eps) {
    CUDA_PATH(c, qwen_rmsnorm_forward(c, out, inp, w, rows, dim, eps));
    qwen_rmsnorm_cpu(out, inp, w, rows, dim, eps);
}

void qwen_rope_cpu(float *x, int ld, int rows, int nheads, int hd, const float *cos, const float *sin) {
    int h2 = hd / 2;
    for (int r = 0; r < rows; r++) {
        const float *cr = cos + (size_t)r * hd, *sr = sin + (size_t)r * hd;
        for (int h = 0; h < nheads; h++) {
            float *v = x + (size_t)r * ld + (size_t)h * hd;
            for (int i = 0; i < h2; i++) {
                float a = v[i], b = v[i + h2];
                v[i] = a * cr[i] - b * sr[i];
                v[i + h2] = b * cr[i + h2] + a * sr[i + h2];
            }
        }
    }
}

void op_qwen_rope(OpCtx *c, void *x, int ld, int rows, int nheads, int hd, const float *cos, const float *sin,
                  int bf16_math) {
    CUDA_PATH(c, qwen_rope_forward(c, x, ld, rows, nheads, hd, cos, sin, bf16_math));
    (void)bf16_math;
    qwen_rope_cpu(x, ld, rows, nheads, hd, cos, sin);
}

void op_qwen_swiglu(OpCtx *c, void *out, const void *gu, int rows, int F) {
    CUDA_PATH(c, qwen_swiglu_forward(c, out, gu, rows, F));
    float *o = out;
    const float *g = gu;
    for (int r = 0; r < rows; r++)
        for (int f = 0; f < F; f++) {
            float a = g[(size_t)r * 2 * F + f], u = g[(size_t)r * 2 * F + F + f];
            o[(size_t)r * F + f] = a / (1.0f + expf(-a)) * u;
        }
}

void op_qwen_gelu_erf(OpCtx *c, void *x, size_t n) {
    CUDA_PATH(c, qwen_gelu_erf_forward(c, x, n));
    float *v = x;
    for (size_t i = 0; i < n; i++) v[i] = 0.5f * v[i] * (1.0f + erff(v[i] * 0.70710678118654752f));
}

void op_qwen_gather_rows(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim) {
    CUDA_PATH(c, qwen_gather_rows_forward(c, out, inp, idx, n, dim));
    for (int i = 0; i < n; i++)
        memcpy((float *)out + (size_t)i * dim, (const float *)inp + (size_t)idx[i] * dim, (size_t)dim * sizeof(float));
}

void op_qwen_scatter_rows(OpCtx *c, void *out, const void *inp, const int32_t *idx, int n, int dim) {
    CUDA_PATH(c, qwen_scatter_rows_forward(c, out, inp, idx, n, dim));
    for (int i = 0; i < n; i++)
        memcpy((float *)out + (size_t)idx[i] * dim, (const float *)inp + (size_t)i * dim, (size_t)dim * sizeof(float));
}

void qwen_upload_i32(OpCtx *c, int32_t *d_dst, const int32_t *h_src, size_t n) {
    CUDA_PATH(c, qwen_copy_h2d_(c, d_dst, h_src, n * sizeof *h_src));
    memcpy(d_dst, h_src, n * sizeof *h_src);
}

void qwen_upload_bf16(OpCtx *c, void *d_dst, const void *h_src, size_t n) {
    CUDA_PATH(c, qwen_copy_h2d_(c, d_dst, h_src, n * sizeof(uint16_t)));
    float *o = d_dst;
    const unsigned char *s = h_src;
    for (size_t i = 0; i < n; i++) {
        uint16_t v;
        memcpy(&v, s + 2 * i, 2);
        o[i] = bf16_to_f32(v);
    }
}
