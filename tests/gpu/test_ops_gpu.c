/* test_ops_gpu: every op's CUDA twin against its CPU reference on the same random inputs
 * (bf16 tolerance), plus Philox bit-identity between CPU and GPU. Needs a GPU. */
#include <math.h>
#include <stdlib.h>

#include "err.h"
#include "ops.h"
#include "rng.h"
#include "gpulib.h"
#include "testlib.h"

static char err[QIE_ERR_LEN];
static OpCtx cpu, gpu;

static float *rand_(size_t n, uint64_t sub) {
    float *x = malloc(n * sizeof(float));
    rng_normal_cpu(x, n, 123, sub, 0);
    return x;
}

static void *up_(const float *h, size_t n) {
    void *d = op_alloc(&gpu, n * op_act_size(&gpu));
    op_upload_act(&gpu, d, h, n);
    return d;
}

static void test_matmul_gpu(void) {
    const int M = 300, K = 256, N = 136;
    float *x = rand_((size_t)M * K, 1), *w = rand_((size_t)N * K, 2), *b = rand_(N, 3), *g = rand_((size_t)M * N, 4);
    /* the CPU reference sees the bf16-rounded inputs, so only accumulation differs */
    void *dx_ = up_(x, (size_t)M * K), *dw_ = up_(w, (size_t)N * K), *db_ = up_(b, N), *dg_ = up_(g, (size_t)M * N);
    op_download_act(&gpu, x, dx_, (size_t)M * K);
    op_download_act(&gpu, w, dw_, (size_t)N * K);
    op_download_act(&gpu, b, db_, N);
    op_download_act(&gpu, g, dg_, (size_t)M * N);
    float *y = malloc(sizeof(float) * M * N), *yg = malloc(sizeof(float) * M * N);
    op_matmul(&cpu, y, x, w, b, M, K, N);
    void *dy = op_alloc(&gpu, (size_t)M * N * 2);
    op_matmul(&gpu, dy, dx_, dw_, db_, M, K, N);
    op_download_act(&gpu, yg, dy, (size_t)M * N);
    double e = gpu_rel_err(yg, y, (size_t)M * N);
    printf("  matmul forward rel err %.3g\n", e);
    CHECK(e < 1e-2);
    float *gx = malloc(sizeof(float) * M * K), *gxg = malloc(sizeof(float) * M * K);
    float *gw = calloc((size_t)N * K, 4), *gwg = malloc(sizeof(float) * N * K), *gb = calloc(N, 4), *gbg = malloc(sizeof(float) * N);
    op_matmul_backward(&cpu, gx, gw, gb, g, x, w, M, K, N);
    void *d_gx = op_alloc(&gpu, (size_t)M * K * 2);
    float *d_gw = op_alloc(&gpu, (size_t)N * K * 4), *d_gb = op_alloc(&gpu, (size_t)N * 4);
    op_matmul_backward(&gpu, d_gx, d_gw, d_gb, dg_, dx_, dw_, M, K, N);
    op_download_act(&gpu, gxg, d_gx, (size_t)M * K);
    op_download_f32(&gpu, gwg, d_gw, (size_t)N * K);
    op_download_f32(&gpu, gbg, d_gb, N);
    double ex = gpu_rel_err(gxg, gx, (size_t)M * K), ew = gpu_rel_err(gwg, gw, (size_t)N * K), eb = gpu_rel_err(gbg, gb, N);
    printf("  matmul backward rel err: d_inp %.3g d_w %.3g d_bias %.3g\n", ex, ew, eb);
    CHECK(ex < 1e-2 && ew < 1e-4 && eb < 1e-4);
    /* bf16 weight gradients (op_matmul_backward_g): twice, so the second call accumulates into
     * bf16; against 2 x the fp32 reference, within bf16 rounding */
    void *d_gwb = op_alloc(&gpu, (size_t)N * K * 2), *d_gbb = op_alloc(&gpu, (size_t)N * 2);
    for (int i = 0; i < 2; i++) op_matmul_backward_g(&gpu, NULL, d_gwb, d_gbb, QIE_DT_BF16, dg_, dx_, dw_, M, K, N);
    op_download_act(&gpu, gwg, d_gwb, (size_t)N * K);
    op_download_act(&gpu, gbg, d_gbb, N);
    for (size_t i = 0; i < (size_t)N * K; i++) gw[i] *= 2.0f;
    for (int i = 0; i < N; i++) gb[i] *= 2.0f;
    ew = gpu_rel_err(gwg, gw, (size_t)N * K);
    eb = gpu_rel_err(gbg, gb, N);
    printf("  matmul backward, bf16 gradients accumulated twice: d_w %.3g d_bias %.3g\n", ew, eb);
    CHECK(ew < 8e-3 && eb < 8e-3);
    op_free(&gpu, d_gwb);
    op_free(&gpu, d_gbb);
    free(x); free(w); free(b); free(g); free(y); free(yg); free(gx); free(gxg); free(gw); free(gwg); free(gb); free(gbg);
    op_free(&gpu, dx_); op_free(&gpu, dw_); op_free(&gpu, db_); op_free(&gpu, dg_); op_free(&gpu, dy);
    op_free(&gpu, d_gx); op_free(&gpu, d_gw); op_free(&gpu, d_gb);
}

static void test_rng_gpu(void) {
    const size_t n = 100003;
    float *h = malloc(n * 4), *d = op_alloc(&gpu, n * 4), *hg = malloc(n * 4);
    rng_uniform_cpu(h, n, 99, 5, 8);
    rng_uniform(d, n, 99, 5, 8, gpu.stream);
    op_download_f32(&gpu, hg, d, n);
    size_t diff = 0;
    for (size_t i = 0; i < n; i++) diff += h[i] != hg[i];
    CHECK(diff == 0, "%zu uniforms differ", diff);
    rng_normal_cpu(h, n, 99, 5, 8);
    rng_normal(d, n, 99, 5, 8, gpu.stream);
    op_download_f32(&gpu, hg, d, n);
    double e = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs(h[i] - hg[i]));
    printf("  philox normal max |cpu-gpu| %.3g\n", e);
    CHECK(e < 1e-5);
    free(h); free(hg); op_free(&gpu, d);
}

int main(void) {
    if (opctx_init(err, &cpu, "cpu") || opctx_init(err, &gpu, "cuda")) {
        printf("%s\n0 passed, 1 failed\n", err);
        return 1;
    }
    TEST_RUN(test_matmul_gpu);
    TEST_RUN(test_rng_gpu);
    opctx_free(&gpu);
    return TEST_DONE();
}
