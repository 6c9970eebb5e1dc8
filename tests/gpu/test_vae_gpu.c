/* test_vae_gpu: the VAE encoder's CUDA path. Needs a GPU.
 *   - each op's CUDA twin against its CPU reference on the same bf16-rounded inputs: conv2d
 *     (3×3 pad 1 with the vector and the scalar im2col, stride-2 downsample, 1×1 + residual,
 *     chunked im2col through a small workspace; each shape on every path: automatic, im2col +
 *     cuBLASLt and each implicit-GEMM variant, output poisoned with NaN first; odd sides, Cin 8
 *     and 24, partial N tiles), channel RMS norm (+SiLU; vector and scalar kernels), attention (one
 *     chunk and several, N not a multiple of 8), NCHW->NHWC, posterior;
 *   - golden: vae-tiny (scripts/golden/vae.py) on cuda against diffusers' fp32 outputs;
 *   - the real configuration (random weights) at 48x32: cuda against the CPU fp32 path.
 * Tolerances (max |a-b| / max |ref|): 1e-2 for one op (bf16 output rounding is 2^-9 = 2e-3 of a
 * value, plus the inputs' rounding through sums), 5e-2 for whole encoders (two dozen bf16
 * layers; the measured numbers are printed, and the bf16 reference itself differs from fp32 by
 * the same order). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "conv2d.h"
#include "err.h"
#include "ops.h"
#include "rng.h"
#include "safetensors.h"
#include "gpulib.h"
#include "testlib.h"
#include "vae.h"
#include "vae_ops.h"

static char err[QIE_ERR_LEN];
static OpCtx cpu, gpu;

/* random host values rounded to bf16, and their device copy */
static float *rand_(size_t n, uint64_t sub, float scale, void **dev) {
    float *x = malloc(n * sizeof(float));
    rng_normal_cpu(x, n, 321, sub, 0);
    for (size_t i = 0; i < n; i++) x[i] = bf16_to_f32(f32_to_bf16(x[i] * scale));
    *dev = op_alloc(&gpu, n * 2);
    op_upload_act(&gpu, *dev, x, n);
    return x;
}

static void conv_case_(int B, int H, int W, int Cin, int Cout, int k, int stride, int plo, int phi, int res,
                       size_t ws_bytes, const char *what) {
    Conv2dShape s = {B, H, W, Cin, Cout, k, stride, plo, phi, plo, phi};
    const size_t no = (size_t)B * conv2d_out_h(&s) * conv2d_out_w(&s) * Cout;
    void *dx, *dw, *db, *dr;
    float *x = rand_((size_t)B * H * W * Cin, 1, 1, &dx), *w = rand_((size_t)Cout * k * k * Cin, 2, 0.1f, &dw);
    float *b = rand_(Cout, 3, 1, &db), *r = rand_(no, 4, 1, &dr);
    float *y = malloc(no * sizeof(float));
    op_conv2d(&cpu, y, x, w, b, res ? r : NULL, &s, NULL, 0);
    if (!ws_bytes) ws_bytes = op_conv2d_workspace(&gpu, &s) * 64;
    void *ws = op_alloc(&gpu, ws_bytes ? ws_bytes : 16), *dy = op_alloc(&gpu, no * 2);
    /* poison the output (bf16 NaN): an element the kernel leaves unwritten fails the check */
    float *nan = malloc(no * sizeof(float));
    for (size_t i = 0; i < no; i++) nan[i] = NAN;
    op_upload_act(&gpu, dy, nan, no);
    free(nan);
    /* every path: automatic, im2col + cuBLASLt, then each implicit-GEMM variant (k×k with
     * Cin % 8 == 0 and Cout % 8 == 0; the variants serve 1×1 convs too when forced) */
    const int nv = conv2d_variant_count();
    const int vmax = (Cin % 8 == 0 && Cout % 8 == 0) ? nv : -1;
    for (int v = -2; v < vmax; v++) {
        conv2d_set_variant(v);
        op_conv2d(&gpu, dy, dx, dw, db, res ? dr : NULL, &s, ws, ws_bytes);
        conv2d_set_variant(-2);
        float *yg = gpu_down_act(&gpu, dy, no);
        size_t bad = 0;
        for (size_t i = 0; i < no; i++) bad += !isfinite(yg[i]);
        double e = gpu_rel_err(yg, y, no);
        printf("  conv2d %-40s %-16s rel err %.3g%s\n", what, conv2d_variant_name(v), e, bad ? " NON-FINITE" : "");
        CHECK(e < 1e-2 && !bad, "%s, %s: %zu non-finite", what, conv2d_variant_name(v), bad);
        free(yg);
        { /* re-poison between variants */
            float *p2 = malloc(no * sizeof(float));
            for (size_t i = 0; i < no; i++) p2[i] = NAN;
            op_upload_act(&gpu, dy, p2, no);
            free(p2);
        }
    }
    free(x); free(w); free(b); free(r); free(y);
    op_free(&gpu, dx); op_free(&gpu, dw); op_free(&gpu, db); op_free(&gpu, dr); op_free(&gpu, ws); op_free(&gpu, dy);
}

static void test_conv2d_gpu(void) {
    conv_case_(2, 17, 12, 96, 96, 3, 1, 1, 1, 0, 0, "3x3 96->96");
    conv_case_(1, 16, 24, 8, 96, 3, 1, 1, 1, 0, 0, "3x3 8->96 (conv_in, padded)");
    conv_case_(1, 9, 7, 3, 16, 3, 1, 1, 1, 0, 0, "3x3 Cin=3 (scalar im2col)");
    conv_case_(2, 16, 10, 64, 64, 3, 2, 0, 1, 0, 0, "3x3 stride 2 pad (0,1)");
    conv_case_(2, 11, 13, 64, 128, 1, 1, 0, 0, 1, 0, "1x1 + residual");
    conv_case_(1, 20, 20, 32, 48, 3, 1, 1, 1, 1, 3 * 9 * 32 * 2 + 10, "3x3 + residual, 3-row chunks");
    /* implicit-GEMM edges: taps straddling K tiles (Cin 24), Cout not a multiple of the N tile,
     * odd sides with stride 2, wide K, a narrow Cout with the residual, M past several tiles */
    conv_case_(1, 9, 11, 24, 40, 3, 1, 1, 1, 1, 0, "3x3 24->40 + residual, odd");
    conv_case_(1, 33, 35, 192, 384, 3, 2, 0, 1, 0, 0, "3x3 192->384 stride 2, 33x35");
    conv_case_(1, 13, 9, 384, 32, 3, 1, 1, 1, 1, 0, "3x3 384->32 + residual");
    conv_case_(3, 40, 37, 96, 192, 3, 1, 1, 1, 0, 0, "3x3 96->192, B=3 40x37");
    conv_case_(2, 31, 29, 8, 96, 3, 1, 1, 1, 0, 0, "3x3 8->96 B=2 31x29");
}

static void rmsnorm_case_(int M, int C) {
    void *dx, *dg;
    float *x = rand_((size_t)M * C, 5, 2, &dx), *g = rand_(C, 6, 1, &dg), *y = malloc(sizeof(float) * M * C);
    void *dy = op_alloc(&gpu, (size_t)M * C * 2);
    for (int silu = 0; silu < 2; silu++) {
        op_rmsnorm_channels(&cpu, y, x, g, M, C, silu);
        op_rmsnorm_channels(&gpu, dy, dx, dg, M, C, silu);
        float *yg = gpu_down_act(&gpu, dy, (size_t)M * C);
        double e = gpu_rel_err(yg, y, (size_t)M * C);
        printf("  rmsnorm M=%d C=%d silu=%d rel err %.3g\n", M, C, silu, e);
        CHECK(e < 1e-2);
        free(yg);
    }
    /* in place (out == inp) gives the same as out of place */
    op_rmsnorm_channels(&gpu, dy, dx, dg, M, C, 1);
    op_rmsnorm_channels(&gpu, dx, dx, dg, M, C, 1);
    float *a = gpu_down_act(&gpu, dy, (size_t)M * C), *b = gpu_down_act(&gpu, dx, (size_t)M * C);
    CHECK(!memcmp(a, b, sizeof(float) * M * C), "rmsnorm in place, C=%d", C);
    free(a); free(b);
    free(x); free(g); free(y);
    op_free(&gpu, dx); op_free(&gpu, dg); op_free(&gpu, dy);
}

static void test_rmsnorm_gpu(void) {
    rmsnorm_case_(1000, 384); /* 2 chunks per lane */
    rmsnorm_case_(1001, 96);  /* 16 lanes per row, 12 live */
    rmsnorm_case_(333, 192);  /* 32 lanes, 24 live */
    rmsnorm_case_(77, 64);    /* 8 lanes */
    rmsnorm_case_(50, 12);    /* C % 8 != 0: the scalar kernel */
}

static void attn_case_(int B, int N, int C, size_t ws_bytes, const char *what) {
    void *dq;
    float *qkv = rand_((size_t)B * N * 3 * C, 7, 1, &dq), *o = malloc(sizeof(float) * B * N * C);
    vae_attention_forward_cpu(o, qkv, B, N, C);
    void *ws = op_alloc(&gpu, ws_bytes), *dout = op_alloc(&gpu, (size_t)B * N * C * 2);
    op_vae_attention(&gpu, dout, dq, B, N, C, ws, ws_bytes);
    float *og = gpu_down_act(&gpu, dout, (size_t)B * N * C);
    double e = gpu_rel_err(og, o, (size_t)B * N * C);
    printf("  attention %-30s rel err %.3g\n", what, e);
    CHECK(e < 1e-2, "%s", what);
    free(qkv); free(o); free(og);
    op_free(&gpu, dq); op_free(&gpu, ws); op_free(&gpu, dout);
}

static void test_attention_gpu(void) {
    attn_case_(2, 300, 64, op_vae_attention_workspace(&gpu, 300) * 300, "B=2 N=300 C=64, one chunk");
    attn_case_(1, 1023, 384, op_vae_attention_workspace(&gpu, 1023) * 100, "N=1023 C=384, 100-row chunks");
    attn_case_(3, 15, 32, op_vae_attention_workspace(&gpu, 15), "N=15 (odd), 1-row chunks");
}

static void test_layout_gpu(void) {
    const int B = 2, C = 3, HW = 77, Cp = 8;
    void *dx;
    float *x = rand_((size_t)B * C * HW, 8, 1, &dx), *y = malloc(sizeof(float) * B * HW * Cp);
    void *dy = op_alloc(&gpu, (size_t)B * HW * Cp * 2);
    op_nchw_to_nhwc(&cpu, y, x, B, C, HW, Cp);
    op_nchw_to_nhwc(&gpu, dy, dx, B, C, HW, Cp);
    float *yg = gpu_down_act(&gpu, dy, (size_t)B * HW * Cp);
    CHECK(!memcmp(y, yg, sizeof(float) * B * HW * Cp), "nchw -> nhwc exact");
    const int z = 16, n = B * HW * 2 * z;
    void *dp;
    float *p = rand_((size_t)n, 9, 20, &dp), *m = malloc(sizeof(float) * n / 2), *l = malloc(sizeof(float) * n / 2);
    float *mg = malloc(sizeof(float) * n / 2), *lg = malloc(sizeof(float) * n / 2);
    float *dm = op_alloc(&gpu, sizeof(float) * n / 2), *dl = op_alloc(&gpu, sizeof(float) * n / 2);
    op_vae_posterior(&cpu, m, l, p, B, HW, z);
    op_vae_posterior(&gpu, dm, dl, dp, B, HW, z);
    op_download_f32(&gpu, mg, dm, n / 2);
    op_download_f32(&gpu, lg, dl, n / 2);
    CHECK(!memcmp(m, mg, sizeof(float) * n / 2) && !memcmp(l, lg, sizeof(float) * n / 2), "posterior exact");
    free(x); free(y); free(yg); free(p); free(m); free(l); free(mg); free(lg);
    op_free(&gpu, dx); op_free(&gpu, dy); op_free(&gpu, dp); op_free(&gpu, dm); op_free(&gpu, dl);
}

static double cmp_golden_(const SafeTensors *g, const char *name, const float *got, size_t n) {
    const StTensor *t = st_find(g, name);
    CHECK(t && t->numel == n, "golden %s", name);
    if (!t || t->numel != n) return 1;
    float *ref = malloc(n * sizeof(float));
    memcpy(ref, t->data, n * sizeof(float));
    double e = gpu_rel_err(got, ref, n);
    free(ref);
    return e;
}

static void test_golden_gpu(void) {
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/vae/model", test_golden_dir());
    VaeModel *m = NULL;
    CHECK_RC(vae_load(err, &gpu, dir, &m), err);
    if (!m) return;
    const char *files[2] = {"vae_h40_w24", "vae_h24_w56"};
    for (int f = 0; f < 2; f++) {
        snprintf(path, sizeof path, "%s/vae/%s.safetensors", test_golden_dir(), files[f]);
        SafeTensors *g = NULL;
        CHECK_RC(st_open(err, path, &g), err);
        if (!g) continue;
        const StTensor *px = st_find(g, "pixels");
        const int B = (int)px->shape[0], H = (int)px->shape[2], W = (int)px->shape[3], z = vae_config(m)->z_dim;
        const size_t nl = (size_t)B * z * (H / 8) * (W / 8);
        float *pix = malloc(px->numel * 4), *mean = malloc(nl * 4), *lv = malloc(nl * 4), *lat = malloc(nl * 4);
        memcpy(pix, px->data, px->numel * 4);
        CHECK_RC(vae_encode(err, m, pix, B, H, W, mean, lv), err);
        vae_normalize(vae_config(m), lat, mean, B, (H / 8) * (W / 8));
        double em = cmp_golden_(g, "mean", mean, nl), el = cmp_golden_(g, "logvar", lv, nl);
        double ez = cmp_golden_(g, "latents", lat, nl);
        printf("  golden %s on cuda: mean rel err %.3g, logvar %.3g, latents %.3g\n", files[f], em, el, ez);
        CHECK(em < 5e-2 && el < 5e-2 && ez < 5e-2, "%s", files[f]);
        free(pix); free(mean); free(lv); free(lat);
        st_close(&g);
    }
    vae_destroy(&m);
}

static void test_real_config_gpu(void) {
    VaeConfig cfg;
    vae_config_default(&cfg);
    VaeModel *mc = NULL, *mg = NULL;
    CHECK_RC(vae_create_random(err, &cpu, &cfg, 5, &mc), err);
    CHECK_RC(vae_create_random(err, &gpu, &cfg, 5, &mg), err);
    if (!mc || !mg) { vae_destroy(&mc); vae_destroy(&mg); return; }
    const int B = 1, H = 48, W = 32, z = cfg.z_dim;
    const size_t np = (size_t)B * 3 * H * W, nl = (size_t)B * z * (H / 8) * (W / 8);
    float *px = malloc(np * 4), *m1 = malloc(nl * 4), *l1 = malloc(nl * 4), *m2 = malloc(nl * 4), *l2 = malloc(nl * 4);
    rng_uniform_cpu(px, np, 11, 0, 0);
    for (size_t i = 0; i < np; i++) px[i] = bf16_to_f32(f32_to_bf16(2 * px[i] - 1));
    CHECK_RC(vae_encode(err, mc, px, B, H, W, m1, l1), err);
    CHECK_RC(vae_encode(err, mg, px, B, H, W, m2, l2), err);
    double em = gpu_rel_err(m2, m1, nl), el = gpu_rel_err(l2, l1, nl);
    printf("  real config, random weights, 48x32: cuda vs cpu mean rel err %.3g, logvar %.3g\n", em, el);
    CHECK(em < 5e-2 && el < 5e-2);
    free(px); free(m1); free(l1); free(m2); free(l2);
    vae_destroy(&mc);
    vae_destroy(&mg);
}

int main(void) {
    if (opctx_init(err, &cpu, "cpu") || opctx_init(err, &gpu, "cuda")) {
        fprintf(stderr, "test_vae_gpu: %s\n", err);
        return 1;
    }
    TEST_RUN(test_conv2d_gpu);
    TEST_RUN(test_rmsnorm_gpu);
    TEST_RUN(test_attention_gpu);
    TEST_RUN(test_layout_gpu);
    TEST_RUN(test_golden_gpu);
    TEST_RUN(test_real_config_gpu);
    opctx_free(&gpu);
    opctx_free(&cpu);
    return TEST_DONE();
}
