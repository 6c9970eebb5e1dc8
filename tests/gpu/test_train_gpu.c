/* test_train_gpu.c: the CUDA twins of the trainer's kernels against their CPU references (built with
 * make CUDA=1, run by make test-gpu on a GPU host).
 *   adamw_update vs adamw_update_cpu: bit-identical fp32 master and moments (IEEE-rounded
 *     __fmul_rn/__fdiv_rn/__fsqrt_rn in the same order as the C), bf16 copy = round(master);
 *   global_norm_squared vs global_norm_squared_cpu: relative 1e-6 (fp32 partials), and the same
 *     value twice (no atomics);
 *   the same two with bf16 gradients (--gradient_dtype bf16), odd lengths and an unaligned start
 *     (the vector and the scalar kernels both run);
 *   a conversion on a forked queue ordered by op_wait_for (the block-weight prefetch). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adamw.h"
#include "err.h"
#include "dtype.h"
#include "global_norm.h"
#include "log.h"
#include "ops.h"
#include "rng.h"
#include "testlib.h"

#ifdef QIE_CUDA
static OpCtx ctx_;

static void test_adamw_twin(void) {
    const size_t n = 100003;
    float *h[6];
    for (int i = 0; i < 6; i++) h[i] = malloc(sizeof(float) * n);
    rng_normal_cpu(h[0], n, 1, 0, 0); /* master */
    rng_normal_cpu(h[1], n, 1, 1, 0); /* grads */
    rng_normal_cpu(h[2], n, 1, 2, 0); /* m */
    rng_uniform_cpu(h[3], n, 1, 3, 0); /* v >= 0 */
    for (size_t i = 0; i < n; i++) h[2][i] *= 0.01f, h[3][i] *= 1e-4f;
    float *d[4];
    for (int i = 0; i < 4; i++) {
        d[i] = op_alloc(&ctx_, sizeof(float) * n);
        op_upload_f32(&ctx_, d[i], h[i], n);
    }
    void *d_bf = op_alloc(&ctx_, 2 * n);
    AdamWArgs a;
    adamw_args(&a, 3e-4, 0.9, 0.999, 1e-8, 0.03, 7, 0.37);
    adamw_update_cpu(h[0], NULL, h[1], h[2], h[3], n, &a);
    op_adamw_update(&ctx_, d[0], d_bf, d[1], d[2], d[3], n, &a);
    op_sync(&ctx_);
    op_download_f32(&ctx_, h[4], d[0], n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += memcmp(&h[4][i], &h[0][i], 4) != 0;
    CHECK(bad == 0, "%zu of %zu master elements differ from the CPU reference", bad, n);
    op_download_f32(&ctx_, h[4], d[2], n);
    op_download_f32(&ctx_, h[5], d[3], n);
    CHECK(!memcmp(h[4], h[2], 4 * n) && !memcmp(h[5], h[3], 4 * n), "moments differ");
    op_download_act(&ctx_, h[4], d_bf, n);
    bad = 0;
    for (size_t i = 0; i < n; i++) bad += h[4][i] != bf16_to_f32(f32_to_bf16(h[0][i]));
    CHECK(bad == 0, "%zu bf16 copies are not round(master)", bad);
    double ref = global_norm_squared_cpu(h[1], n);
    float *scratch = op_alloc(&ctx_, sizeof(float) * (GLOBAL_NORM_BLOCKS + 1));
    double got = op_global_norm_squared(&ctx_, scratch, d[1], n), again = op_global_norm_squared(&ctx_, scratch, d[1], n);
    printf("  global norm²: cpu %.9g cuda %.9g (rel %.2g)\n", ref, got, fabs(got - ref) / ref);
    CHECK(fabs(got - ref) <= 1e-6 * ref);
    CHECK(got == again, "not deterministic");
    for (int i = 0; i < 4; i++) op_free(&ctx_, d[i]);
    op_free(&ctx_, d_bf);
    op_free(&ctx_, scratch);
    for (int i = 0; i < 6; i++) free(h[i]);
}

static void test_bf16_grads_twin(void) {
    const size_t n = 65539;
    OpCtx cpu;
    char err[QIE_ERR_LEN];
    CHECK_RC(opctx_init(err, &cpu, "cpu"), err);
    float *h[5];
    for (int i = 0; i < 5; i++) h[i] = malloc(sizeof(float) * n);
    uint16_t *hg = malloc(2 * n);
    rng_normal_cpu(h[0], n, 1, 10, 0);
    rng_normal_cpu(h[1], n, 1, 11, 0);
    rng_normal_cpu(h[2], n, 1, 12, 0);
    rng_uniform_cpu(h[3], n, 1, 13, 0);
    for (size_t i = 0; i < n; i++) h[2][i] *= 0.01f, h[3][i] *= 1e-4f, hg[i] = f32_to_bf16(h[1][i]);
    for (int off = 0; off < 2; off++) { /* off 1: every pointer 4 bytes past alignment -> scalar kernel */
        const size_t k = n - off;
        float *d[4];
        for (int i = 0; i < 4; i++) {
            d[i] = op_alloc(&ctx_, sizeof(float) * n);
            op_upload_f32(&ctx_, d[i], h[i], n);
        }
        uint16_t *dg = op_alloc(&ctx_, 2 * n);
        op_upload_act(&ctx_, dg, h[1], n); /* round to nearest even on the device: the bits of hg */
        void *dbf = op_alloc(&ctx_, 2 * n);
        float *cm = malloc(sizeof(float) * n), *c1 = malloc(sizeof(float) * n), *c2 = malloc(sizeof(float) * n);
        memcpy(cm, h[0], sizeof(float) * n);
        memcpy(c1, h[2], sizeof(float) * n);
        memcpy(c2, h[3], sizeof(float) * n);
        AdamWArgs a;
        adamw_args(&a, 1e-4, 0.9, 0.999, 1e-8, 0.01, 3, 0.5);
        op_adamw_update_dt(&cpu, cm + off, NULL, hg + off, QIE_DT_BF16, c1 + off, c2 + off, k, &a);
        op_adamw_update_dt(&ctx_, d[0] + off, (uint16_t *)dbf + off, dg + off, QIE_DT_BF16, d[2] + off, d[3] + off, k, &a);
        op_sync(&ctx_);
        op_download_f32(&ctx_, h[4], d[0], n);
        CHECK(!memcmp(h[4], cm, sizeof(float) * n), "offset %d: bf16-gradient AdamW master differs from the CPU", off);
        op_download_f32(&ctx_, h[4], d[3], n);
        CHECK(!memcmp(h[4], c2, sizeof(float) * n), "offset %d: second moment differs", off);
        float *scratch = op_alloc(&ctx_, sizeof(float) * (GLOBAL_NORM_BLOCKS + 1));
        double ref = op_global_norm_squared_dt(&cpu, NULL, hg + off, QIE_DT_BF16, k);
        double got = op_global_norm_squared_dt(&ctx_, scratch, dg + off, QIE_DT_BF16, k);
        CHECK(fabs(got - ref) <= 1e-6 * ref, "offset %d: bf16 norm² %.9g vs %.9g", off, got, ref);
        for (int i = 0; i < 4; i++) op_free(&ctx_, d[i]);
        op_free(&ctx_, dg);
        op_free(&ctx_, dbf);
        op_free(&ctx_, scratch);
        free(cm);
        free(c1);
        free(c2);
    }
    /* a conversion on a forked queue, ordered after the main queue's upload and before its read */
    OpCtx side;
    CHECK_RC(opctx_fork(err, &side, &ctx_), err);
    float *src = op_alloc(&ctx_, sizeof(float) * n);
    void *dst = op_alloc(&ctx_, 2 * n);
    op_upload_f32(&ctx_, src, h[1], n);
    op_wait_for(&side, &ctx_);
    op_f32_to_act(&side, (uint16_t *)dst + 1, src + 1, n - 1); /* unaligned: the element-wise path too */
    op_f32_to_act(&side, dst, src, 1);
    op_wait_for(&ctx_, &side);
    op_download_act(&ctx_, h[4], dst, n);
    size_t bad = 0;
    for (size_t i = 0; i < n; i++) bad += h[4][i] != bf16_to_f32(hg[i]);
    CHECK(bad == 0, "%zu of %zu rounded values differ", bad, n);
    op_free(&ctx_, src);
    op_free(&ctx_, dst);
    opctx_free(&side);
    opctx_free(&cpu);
    for (int i = 0; i < 5; i++) free(h[i]);
    free(hg);
}
#endif

int main(void) {
    log_init("test-train-gpu");
    (void)test_name_;
    log_set_level(LOG_ERROR);
#ifdef QIE_CUDA
    char err[QIE_ERR_LEN];
    if (opctx_init(err, &ctx_, "cuda")) {
        printf("no GPU (%s): nothing checked\n", err);
        return TEST_DONE();
    }
    TEST_RUN(test_adamw_twin);
    TEST_RUN(test_bf16_grads_twin);
    opctx_free(&ctx_);
#else
    printf("CPU-only build: nothing checked\n");
#endif
    return TEST_DONE();
}
