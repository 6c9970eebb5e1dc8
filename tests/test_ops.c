/* test_ops: the CPU reference ops against double-precision loops and finite differences. */
#include <math.h>
#include <stdlib.h>

#include "err.h"
#include "ops.h"
#include "rng.h"
#include "testlib.h"

static char err[QIE_ERR_LEN];

static double max_rel_(const float *a, const double *b, size_t n) {
    double m = 0, scale = 1e-6;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(b[i]));
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i] - b[i]) / scale);
    return m;
}

static void test_matmul(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    const int M = 7, K = 37, N = 13; /* odd sizes: the tails of the unrolled loops run */
    float *x = malloc(sizeof(float) * M * K), *w = malloc(sizeof(float) * N * K), *b = malloc(sizeof(float) * N);
    float *y = malloc(sizeof(float) * M * N), *g = malloc(sizeof(float) * M * N);
    float *dx = malloc(sizeof(float) * M * K), *dw = calloc((size_t)N * K, sizeof(float)), *db = calloc(N, sizeof(float));
    double *ref = malloc(sizeof(double) * M * K * 2 + sizeof(double) * N * K);
    rng_normal_cpu(x, (size_t)M * K, 1, 0, 0);
    rng_normal_cpu(w, (size_t)N * K, 1, 1, 0);
    rng_normal_cpu(b, N, 1, 2, 0);
    rng_normal_cpu(g, (size_t)M * N, 1, 3, 0);
    op_matmul(&c, y, x, w, b, M, K, N);
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = b[n];
            for (int k = 0; k < K; k++) s += (double)x[m * K + k] * w[n * K + k];
            ref[m * N + n] = s;
        }
    CHECK(max_rel_(y, ref, (size_t)M * N) < 1e-6, "forward");
    /* backward twice: weight gradients accumulate, input gradients are overwritten */
    op_matmul_backward(&c, dx, dw, db, g, x, w, M, K, N);
    op_matmul_backward(&c, dx, dw, db, g, x, w, M, K, N);
    for (int m = 0; m < M; m++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int n = 0; n < N; n++) s += (double)g[m * N + n] * w[n * K + k];
            ref[m * K + k] = s;
        }
    CHECK(max_rel_(dx, ref, (size_t)M * K) < 1e-6, "d_inp");
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            double s = 0;
            for (int m = 0; m < M; m++) s += (double)g[m * N + n] * x[m * K + k];
            ref[n * K + k] = 2 * s;
        }
    CHECK(max_rel_(dw, ref, (size_t)N * K) < 1e-6, "d_w");
    for (int n = 0; n < N; n++) {
        double s = 0;
        for (int m = 0; m < M; m++) s += g[m * N + n];
        ref[n] = 2 * s;
    }
    CHECK(max_rel_(db, ref, N) < 1e-6, "d_bias");
    free(x); free(w); free(b); free(y); free(g); free(dx); free(dw); free(db); free(ref);
    opctx_free(&c);
}

static void test_silu(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    float x[9] = {-8, -2, -0.5f, -1e-3f, 0, 1e-3f, 0.5f, 2, 8}, y[9], g[9], dx[9];
    for (int i = 0; i < 9; i++) g[i] = 1.0f;
    op_silu(&c, y, x, 9);
    op_silu_backward(&c, dx, g, x, 9);
    for (int i = 0; i < 9; i++) {
        double h = 1e-3, xp = x[i] + h, xm = x[i] - h;
        double fd = (xp / (1 + exp(-xp)) - xm / (1 + exp(-xm))) / (2 * h);
        CHECK_NEAR(dx[i], fd, 1e-4);
        CHECK_NEAR(y[i], x[i] / (1 + exp(-(double)x[i])), 1e-6);
    }
    float a[3] = {1, 2, 3}, b[3] = {4, 5, 6};
    op_add_inplace(&c, a, b, 3);
    op_scale(&c, a, 0.5f, 3);
    CHECK(a[0] == 2.5f && a[2] == 4.5f);
    CHECK(opctx_init(err, &c, "tpu") == QIE_EINVAL);
#ifndef QIE_CUDA
    CHECK(opctx_init(err, &c, "cuda") == QIE_EUNSUPPORTED);
#endif
}

int main(void) {
    TEST_RUN(test_matmul);
    TEST_RUN(test_silu);
    return TEST_DONE();
}
