/* test_objective_gpu.c: the objective ops (kernels/objective.h) on CUDA against their CPU reference
 * with bf16 rounding (round = 1), on random inputs: a batch of 2 samples in one model-input buffer,
 * each a target and 2 sources of different sizes, logvars beyond the clamp, predictions with
 * masked (|e| > 50) elements. Prints the max errors. Also (no GPU needed) the fused CPU ops equal
 * the trainer's pieces composed (latent -> round -> pack -> round(noise) -> noisy) bit for bit.
 * Expected on CUDA: x_σ, the sources and v equal the reference in (almost) every element, at most
 * one bf16 ulp apart where expf's last ulp differs; the loss within 1e-6 relative; the gradient
 * within one bf16 ulp; device Philox normals (rng.h) within 1e-6 of the CPU's. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "err.h"
#include "log.h"
#include "objective.h"
#include "ops.h"
#include "rng.h"
#include "testlib.h"

#define C_ 16
#define F_ 64
#define B_ 2
#define NSRC 2
static const int TH = 8, TW = 12;               /* target latent */
static const int SH[NSRC] = {6, 10}, SW[NSRC] = {10, 4}; /* sources of different sizes */

typedef struct {
    float *mean[1 + NSRC], *logvar[1 + NSRC], *eps[1 + NSRC], *noise;
    float sigma, w;
} In;

static float *rnd_(size_t n, uint64_t sub, float scale, float shift) {
    float *x = malloc(sizeof *x * n);
    rng_normal_cpu(x, n, 99, sub, 0);
    for (size_t i = 0; i < n; i++) x[i] = x[i] * scale + shift;
    return x;
}

static size_t img_n_(int k) { return (size_t)C_ * (k ? SH[k - 1] * SW[k - 1] : TH * TW); }
static size_t tok_(int k) { return (size_t)(k ? SH[k - 1] * SW[k - 1] : TH * TW) / 4; }

static void make_(In *in, int b) {
    for (int k = 0; k <= NSRC; k++) {
        size_t n = img_n_(k);
        in->mean[k] = rnd_(n, 100 * b + 10 * k + 1, 1.0f, 0.0f);
        in->logvar[k] = rnd_(n, 100 * b + 10 * k + 2, 20.0f, -5.0f); /* some below −30, some above 20 */
        in->eps[k] = rnd_(n, 100 * b + 10 * k + 3, 1.0f, 0.0f);
    }
    in->noise = rnd_(tok_(0) * F_, 100 * b + 4, 1.0f, 0.0f);
    in->sigma = bf16_to_f32(f32_to_bf16(b ? 0.8125f : 0.3371f));
    in->w = b ? 1.0f : 2.5f;
}

static void free_(In *in) {
    for (int k = 0; k <= NSRC; k++) {
        free(in->mean[k]);
        free(in->logvar[k]);
        free(in->eps[k]);
    }
    free(in->noise);
}

/* the whole model input of one sample on the CPU: [Ntot, 64] (x_σ then the sources) and v */
static void cpu_sample_(const In *in, float *x, float *v, int round) {
    objective_target_cpu(x, v, in->mean[0], in->logvar[0], in->eps[0], in->noise, in->sigma, C_, TH, TW, round);
    size_t row = tok_(0);
    for (int k = 1; k <= NSRC; k++) {
        objective_source_cpu(x + row * F_, in->mean[k], in->logvar[k], in->eps[k], C_, SH[k - 1], SW[k - 1], round);
        row += tok_(k);
    }
}

static void test_fused_equals_pieces(void) {
    for (int round = 0; round <= 1; round++) {
        In in;
        make_(&in, round);
        size_t Ntot = tok_(0) + tok_(1) + tok_(2), N = tok_(0);
        float *x = malloc(sizeof *x * Ntot * F_), *v = malloc(sizeof *v * N * F_);
        float *lat = malloc(sizeof *lat * 4 * img_n_(0)), *x0 = malloc(sizeof *x0 * N * F_),
              *noise = malloc(sizeof *noise * N * F_), *xs = malloc(sizeof *xs * Ntot * F_), *v2 = malloc(sizeof *v2 * N * F_);
        cpu_sample_(&in, x, v, round);
        objective_latent_cpu(lat, in.mean[0], in.logvar[0], in.eps[0], C_, TH, TW);
        objective_round_cpu(lat, img_n_(0), round);
        objective_pack_cpu(x0, lat, C_, TH, TW);
        memcpy(noise, in.noise, sizeof *noise * N * F_);
        objective_round_cpu(noise, N * F_, round);
        objective_noisy_cpu(xs, v2, x0, noise, in.sigma, N * F_, round);
        size_t row = N;
        for (int k = 1; k <= NSRC; k++) {
            objective_latent_cpu(lat, in.mean[k], in.logvar[k], in.eps[k], C_, SH[k - 1], SW[k - 1]);
            objective_round_cpu(lat, img_n_(k), round);
            objective_pack_cpu(xs + row * F_, lat, C_, SH[k - 1], SW[k - 1]);
            row += tok_(k);
        }
        CHECK(!memcmp(x, xs, sizeof *x * Ntot * F_), "round %d: fused model input differs from the pieces", round);
        CHECK(!memcmp(v, v2, sizeof *v * N * F_), "round %d: fused v differs from the pieces", round);
        free(x), free(v), free(lat), free(x0), free(noise), free(xs), free(v2);
        free_(&in);
    }
}

#ifdef QIE_CUDA
static OpCtx ctx_;

static float *up_(const float *h, size_t n) {
    float *d = op_alloc(&ctx_, sizeof *d * n);
    op_objective_upload(&ctx_, d, h, n);
    return d;
}

static double bf16_ulps_(float a, float b) { /* distance in bf16 steps at b's magnitude */
    if (a == b) return 0.0;
    float m = fabsf(b) > 1e-30f ? fabsf(b) : 1e-30f;
    return fabs((double)a - b) / (ldexp(1.0, ilogbf(m) - 7));
}

static void test_objective_twin(void) {
    const size_t N = tok_(0), Ntot = tok_(0) + tok_(1) + tok_(2), es = op_act_size(&ctx_);
    In in[B_];
    float *hx = malloc(sizeof(float) * B_ * Ntot * F_), *hv = malloc(sizeof(float) * B_ * N * F_);
    float *gx = malloc(sizeof(float) * B_ * Ntot * F_), *gv = malloc(sizeof(float) * B_ * N * F_);
    void *dx = op_alloc(&ctx_, es * B_ * Ntot * F_);
    float *dv = op_alloc(&ctx_, sizeof(float) * B_ * N * F_);
    float *dev[B_][3 * (1 + NSRC) + 1];
    for (int b = 0; b < B_; b++) {
        make_(&in[b], b);
        cpu_sample_(&in[b], hx + b * Ntot * F_, hv + b * N * F_, 1);
        int q = 0;
        for (int k = 0; k <= NSRC; k++) {
            dev[b][q++] = up_(in[b].mean[k], img_n_(k));
            dev[b][q++] = up_(in[b].logvar[k], img_n_(k));
            dev[b][q++] = up_(in[b].eps[k], img_n_(k));
        }
        dev[b][q] = up_(in[b].noise, N * F_);
        op_objective_target(&ctx_, (char *)dx + b * Ntot * F_ * es, dv + b * N * F_, dev[b][0], dev[b][1], dev[b][2],
                            dev[b][q], in[b].sigma, C_, TH, TW);
        size_t row = N;
        for (int k = 1; k <= NSRC; k++) {
            op_objective_source(&ctx_, (char *)dx + (b * Ntot + row) * F_ * es, dev[b][3 * k], dev[b][3 * k + 1],
                                dev[b][3 * k + 2], C_, SH[k - 1], SW[k - 1]);
            row += tok_(k);
        }
    }
    op_download_act(&ctx_, gx, dx, B_ * Ntot * F_);
    op_download_f32(&ctx_, gv, dv, B_ * N * F_);
    size_t bad_x = 0, bad_v = 0;
    double ux = 0, uv = 0, ax = 0, av = 0;
    for (size_t i = 0; i < B_ * Ntot * F_; i++) {
        double u = bf16_ulps_(gx[i], hx[i]);
        bad_x += u != 0.0;
        if (u > ux) ux = u;
        if (fabs(gx[i] - hx[i]) > ax) ax = fabs(gx[i] - hx[i]);
    }
    for (size_t i = 0; i < B_ * N * F_; i++) {
        double u = bf16_ulps_(gv[i], hv[i]);
        bad_v += u != 0.0;
        if (u > uv) uv = u;
        if (fabs(gv[i] - hv[i]) > av) av = fabs(gv[i] - hv[i]);
    }
    printf("  model input: %zu of %zu differ, max %.3g bf16 ulp, max abs %.3g\n", bad_x, (size_t)B_ * Ntot * F_, ux, ax);
    printf("  v:           %zu of %zu differ, max %.3g bf16 ulp, max abs %.3g\n", bad_v, (size_t)B_ * N * F_, uv, av);
    CHECK(ux <= 1.0 && bad_x * 100 <= (size_t)B_ * Ntot * F_, "model input");
    CHECK(uv <= 1.0 && bad_v * 100 <= (size_t)B_ * N * F_, "v");

    /* the loss on the reference's v (so that only the loss op is measured); predictions of the
     * whole [B, Ntot, 64] output, some 100 away (masked) */
    float *pred = rnd_(B_ * Ntot * F_, 7, 1.5f, 0.0f), *hd = calloc(B_ * Ntot * F_, sizeof(float)),
          *gd = malloc(sizeof(float) * B_ * Ntot * F_);
    for (size_t i = 0; i < B_ * Ntot * F_; i += 37) pred[i] += 100.0f;
    for (size_t i = 0; i < B_ * Ntot * F_; i++) pred[i] = bf16_to_f32(f32_to_bf16(pred[i]));
    void *dpred = op_alloc(&ctx_, es * B_ * Ntot * F_), *dd = op_alloc(&ctx_, es * B_ * Ntot * F_);
    op_upload_act(&ctx_, dpred, pred, B_ * Ntot * F_);
    op_objective_upload(&ctx_, dv, hv, B_ * N * F_);
    double *dacc = op_alloc(&ctx_, sizeof(double) * (1 + OBJECTIVE_LOSS_BLOCKS)), acc = 0.0, got[2];
    const float scale = 1.0f / (2.0f * N * F_ * 3.0f);
    const double div = 2.0 * N * F_;
    for (int rep = 0; rep < 2; rep++) {
        op_zero(&ctx_, dacc, sizeof(double));
        for (int b = 0; b < B_; b++)
            op_objective_loss(&ctx_, (char *)dd + b * Ntot * F_ * es, (const char *)dpred + b * Ntot * F_ * es,
                              dv + b * N * F_, in[b].w, N * F_, scale, div, dacc, dacc + 1);
        op_objective_read(&ctx_, &got[rep], dacc, 1);
    }
    for (int b = 0; b < B_; b++)
        acc += objective_loss_cpu(hd + b * Ntot * F_, pred + b * Ntot * F_, hv + b * N * F_, in[b].w, N * F_, scale) / div;
    op_download_act(&ctx_, gd, dd, B_ * Ntot * F_);
    double ud = 0, ad = 0;
    size_t bad_d = 0, masked = 0;
    for (int b = 0; b < B_; b++)
        for (size_t i = 0; i < N * F_; i++) {
            size_t o = b * Ntot * F_ + i;
            float ref = bf16_to_f32(f32_to_bf16(hd[o]));
            double u = bf16_ulps_(gd[o], ref);
            bad_d += u != 0.0;
            masked += hd[o] == 0.0f;
            if (u > ud) ud = u;
            if (fabs(gd[o] - ref) > ad) ad = fabs(gd[o] - ref);
        }
    printf("  loss: cpu %.12g cuda %.12g (rel %.2g), twice the same: %s\n", acc, got[0], fabs(got[0] - acc) / acc,
           got[0] == got[1] ? "yes" : "no");
    printf("  d_pred: %zu of %zu differ, max %.3g bf16 ulp, max abs %.3g; %zu masked\n", bad_d, (size_t)B_ * N * F_, ud,
           ad, masked);
    CHECK(fabs(got[0] - acc) <= 1e-6 * acc);
    CHECK(got[0] == got[1], "the loss is not deterministic");
    CHECK(ud <= 1.0, "d_pred");
    CHECK(masked > 0, "no masked element");

    /* device Philox normals (the trainer draws ε there) vs the CPU's */
    const size_t nr = 100003;
    float *hr = malloc(sizeof *hr * nr), *gr = malloc(sizeof *gr * nr), *dr = op_alloc(&ctx_, sizeof *dr * nr);
    rng_normal_cpu(hr, nr, 42, (2ull << 56) | 12345, 0);
    CHECK(rng_normal(dr, nr, 42, (2ull << 56) | 12345, 0, ctx_.stream) == 0);
    op_download_f32(&ctx_, gr, dr, nr);
    double ar = 0;
    for (size_t i = 0; i < nr; i++)
        if (fabs(gr[i] - hr[i]) > ar) ar = fabs(gr[i] - hr[i]);
    printf("  normals: max abs %.3g\n", ar);
    CHECK(ar <= 1e-5);

    for (int b = 0; b < B_; b++) {
        for (int q = 0; q < 3 * (1 + NSRC) + 1; q++) op_free(&ctx_, dev[b][q]);
        free_(&in[b]);
    }
    op_free(&ctx_, dx), op_free(&ctx_, dv), op_free(&ctx_, dpred), op_free(&ctx_, dd), op_free(&ctx_, dacc);
    op_free(&ctx_, dr);
    free(hx), free(hv), free(gx), free(gv), free(pred), free(hd), free(gd), free(hr), free(gr);
}
#endif

int main(void) {
    log_init("test-objective-gpu");
    log_set_level(LOG_ERROR);
    TEST_RUN(test_fused_equals_pieces);
#ifdef QIE_CUDA
    char err[QIE_ERR_LEN];
    if (opctx_init(err, &ctx_, "cuda")) {
        printf("no GPU (%s): only the CPU check\n", err);
        return TEST_DONE();
    }
    TEST_RUN(test_objective_twin);
    opctx_free(&ctx_);
#else
    printf("CPU-only build: only the CPU check\n");
#endif
    return TEST_DONE();
}
