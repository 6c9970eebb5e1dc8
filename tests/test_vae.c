/* test_vae: the VAE encoder's CPU path.
 *   - ops against double-precision loops: conv2d (3×3 pad 1, stride-2 downsample with
 *     right/bottom padding, 1×1, residual, padded input channels), the channel RMS norm (+SiLU),
 *     the attention, the input transpose and the posterior clamp;
 *   - golden: the vae-tiny model of scripts/golden/vae.py at 40x24 and 24x56 (batch 2) against
 *     diffusers in fp32: every intermediate of the tap, mean, logvar, latents;
 *   - qie-parity vae's entry point on the same files;
 *   - loading errors: a missing tensor, a tensor of the wrong shape, a bad config.
 * Tolerance: 1e-5 of max|reference| per tensor (issue 5); the measured errors are printed. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conv2d.h"
#include "err.h"
#include "ops.h"
#include "parity/parity.h"
#include "rng.h"
#include "safetensors.h"
#include "testlib.h"
#include "vae.h"
#include "vae_ops.h"

static char err[QIE_ERR_LEN];

static float *randn_(size_t n, uint64_t sub, float scale) {
    float *x = malloc(n * sizeof(float));
    rng_normal_cpu(x, n, 99, sub, 0);
    for (size_t i = 0; i < n; i++) x[i] *= scale;
    return x;
}

/* max |a - b| / max |b| */
static double rel_(const float *a, const double *b, size_t n) {
    double m = 0, s = 1e-30;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs(b[i]));
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i] - b[i]));
    return m / s;
}

static void conv_case_(OpCtx *c, int B, int H, int W, int Cin, int Cout, int k, int stride, int pt, int pb, int pl,
                       int pr, int with_res, const char *what) {
    Conv2dShape s = {B, H, W, Cin, Cout, k, stride, pt, pb, pl, pr};
    const int Ho = conv2d_out_h(&s), Wo = conv2d_out_w(&s);
    const size_t ni = (size_t)B * H * W * Cin, nw = (size_t)Cout * k * k * Cin, no = (size_t)B * Ho * Wo * Cout;
    float *x = randn_(ni, 1, 1), *w = randn_(nw, 2, 0.2f), *b = randn_(Cout, 3, 1), *r = randn_(no, 4, 1);
    float *y = malloc(no * sizeof(float));
    double *ref = malloc(no * sizeof(double));
    op_conv2d(c, y, x, w, b, with_res ? r : NULL, &s, NULL, 0);
    /* the direct definition: zero outside the image, PyTorch cross-correlation */
    for (int bb = 0; bb < B; bb++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++)
                for (int co = 0; co < Cout; co++) {
                    double acc = b[co];
                    for (int ky = 0; ky < k; ky++)
                        for (int kx = 0; kx < k; kx++) {
                            const int iy = oy * stride + ky - pt, ix = ox * stride + kx - pl;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            for (int ci = 0; ci < Cin; ci++)
                                acc += (double)x[(((size_t)bb * H + iy) * W + ix) * Cin + ci] *
                                       w[(((size_t)co * k + ky) * k + kx) * Cin + ci];
                        }
                    const size_t o = (((size_t)bb * Ho + oy) * Wo + ox) * Cout + co;
                    ref[o] = acc + (with_res ? r[o] : 0.0);
                }
    double e = rel_(y, ref, no);
    printf("  conv2d %-28s %dx%d -> %dx%d  rel err %.2e\n", what, H, W, Ho, Wo, e);
    CHECK(e < 1e-6, "%s", what);
    free(x); free(w); free(b); free(r); free(y); free(ref);
}

static void test_conv2d(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    conv_case_(&c, 2, 5, 7, 6, 5, 3, 1, 1, 1, 1, 1, 0, "3x3 pad 1");
    conv_case_(&c, 1, 6, 10, 9, 4, 3, 2, 0, 1, 0, 1, 0, "3x3 stride 2 pad (0,1)");
    conv_case_(&c, 1, 7, 5, 4, 4, 3, 2, 0, 1, 0, 1, 0, "3x3 stride 2, odd sides");
    conv_case_(&c, 2, 3, 4, 11, 13, 1, 1, 0, 0, 0, 0, 1, "1x1 + residual");
    conv_case_(&c, 1, 4, 4, 8, 3, 3, 1, 1, 1, 1, 1, 1, "3x3 + residual");
    /* conv_in's padded channels: zero inputs against zero weights leave the sum exact */
    const int H = 4, W = 3;
    float *x3 = randn_((size_t)H * W * 3, 5, 1), *w3 = randn_(4 * 9 * 3, 6, 1);
    float *x8 = calloc((size_t)H * W * 8, 4), *w8 = calloc(4 * 9 * 8, 4), y3[48], y8[48];
    for (int p = 0; p < H * W; p++) memcpy(x8 + p * 8, x3 + p * 3, 12);
    for (int r = 0; r < 36; r++) memcpy(w8 + r * 8, w3 + r * 3, 12);
    Conv2dShape s3 = {1, H, W, 3, 4, 3, 1, 1, 1, 1, 1}, s8 = s3;
    s8.Cin = 8;
    op_conv2d(&c, y3, x3, w3, NULL, NULL, &s3, NULL, 0);
    op_conv2d(&c, y8, x8, w8, NULL, NULL, &s8, NULL, 0);
    double d = 0;
    for (int i = 0; i < 48; i++) d = fmax(d, fabs(y3[i] - y8[i]));
    /* only the order of the fp32 partial sums differs */
    CHECK(d < 1e-5, "padded channels change the result by %g", d);
    free(x3); free(w3); free(x8); free(w8);
    opctx_free(&c);
}

static void test_rmsnorm(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    const int M = 9, C = 24;
    float *x = randn_((size_t)M * C, 7, 3), *g = randn_(C, 8, 1), *y = malloc(sizeof(float) * M * C);
    double *ref = malloc(sizeof(double) * M * C);
    memset(x + 2 * C, 0, sizeof(float) * C); /* an all-zero pixel: the 1e-12 clamp, output 0 */
    for (int silu = 0; silu < 2; silu++) {
        op_rmsnorm_channels(&c, y, x, g, M, C, silu);
        for (int m = 0; m < M; m++) {
            double ss = 0;
            for (int i = 0; i < C; i++) ss += (double)x[m * C + i] * x[m * C + i];
            double d = fmax(sqrt(ss), 1e-12);
            for (int i = 0; i < C; i++) {
                double v = x[m * C + i] / d * sqrt((double)C) * g[i];
                ref[m * C + i] = silu ? v / (1 + exp(-v)) : v;
            }
        }
        double e = rel_(y, ref, (size_t)M * C);
        printf("  rmsnorm silu=%d rel err %.2e\n", silu, e);
        CHECK(e < 1e-6);
        CHECK(y[2 * C] == 0.0f && y[3 * C - 1] == 0.0f, "zero pixel");
    }
    /* in place */
    op_rmsnorm_channels(&c, x, x, g, M, C, 1);
    CHECK(rel_(x, ref, (size_t)M * C) < 1e-6, "in place");
    free(x); free(g); free(y); free(ref);
    opctx_free(&c);
}

static void test_attention(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    const int B = 2, N = 15, C = 12;
    float *qkv = randn_((size_t)B * N * 3 * C, 9, 1), *o = malloc(sizeof(float) * B * N * C);
    double *ref = malloc(sizeof(double) * B * N * C), *p = malloc(sizeof(double) * N);
    op_vae_attention(&c, o, qkv, B, N, C, NULL, 0);
    for (int b = 0; b < B; b++)
        for (int i = 0; i < N; i++) {
            const float *q = qkv + ((size_t)b * N + i) * 3 * C;
            double mx = -1e300, sum = 0;
            for (int j = 0; j < N; j++) {
                const float *k = qkv + ((size_t)b * N + j) * 3 * C + C;
                double s = 0;
                for (int d = 0; d < C; d++) s += (double)q[d] * k[d];
                p[j] = s / sqrt((double)C);
                mx = fmax(mx, p[j]);
            }
            for (int j = 0; j < N; j++) sum += (p[j] = exp(p[j] - mx));
            for (int d = 0; d < C; d++) {
                double acc = 0;
                for (int j = 0; j < N; j++) acc += p[j] / sum * qkv[((size_t)b * N + j) * 3 * C + 2 * C + d];
                ref[((size_t)b * N + i) * C + d] = acc;
            }
        }
    double e = rel_(o, ref, (size_t)B * N * C);
    printf("  attention rel err %.2e\n", e);
    CHECK(e < 1e-6);
    free(qkv); free(o); free(ref); free(p);
    opctx_free(&c);
}

static void test_layout_posterior(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    float in[2 * 3 * 4], out[2 * 4 * 8];
    for (int i = 0; i < 24; i++) in[i] = (float)i;
    op_nchw_to_nhwc(&c, out, in, 2, 3, 4, 8);
    int ok = 1;
    for (int b = 0; b < 2; b++)
        for (int p = 0; p < 4; p++)
            for (int ch = 0; ch < 8; ch++)
                ok &= out[(b * 4 + p) * 8 + ch] == (ch < 3 ? in[(b * 3 + ch) * 4 + p] : 0.0f);
    CHECK(ok, "nchw -> nhwc");
    /* [B=1, HW=2, 2z=4]: logvar clamped to [-30, 20], NaN kept */
    float x[8] = {1, 2, -40, 25, 3, 4, 5, NAN}, mean[4], lv[4];
    op_vae_posterior(&c, mean, lv, x, 1, 2, 2);
    CHECK(mean[0] == 1 && mean[1] == 3 && mean[2] == 2 && mean[3] == 4, "mean layout");
    CHECK(lv[0] == -30 && lv[1] == 5 && lv[2] == 20 && isnan(lv[3]), "logvar clamp");
    opctx_free(&c);
}

/* ---- golden ---- */

typedef struct {
    const SafeTensors *g;
    int ntaps;
    double worst;
} TapCheck;

/* compares a tap (NHWC) with the golden intermediate (NCHW) */
static void tap_check_(void *user, const char *name, const void *act, int B, int h, int w, int C) {
    TapCheck *tc = user;
    char key[64];
    snprintf(key, sizeof key, "inter.%s", name);
    const StTensor *t = st_find(tc->g, key);
    CHECK(t != NULL, "%s missing from the golden file", key);
    if (!t) return;
    CHECK(t->ndim == 4 && t->shape[0] == (uint64_t)B && t->shape[1] == (uint64_t)C && t->shape[2] == (uint64_t)h &&
              t->shape[3] == (uint64_t)w, "%s shape", key);
    if (t->numel != (uint64_t)B * C * h * w) return;
    const float *x = act;
    double *ref = malloc(t->numel * sizeof(double));
    float *got = malloc(t->numel * sizeof(float));
    for (int b = 0; b < B; b++)
        for (int ch = 0; ch < C; ch++)
            for (int p = 0; p < h * w; p++) {
                float v;
                const size_t i = ((size_t)b * C + ch) * h * w + p;
                memcpy(&v, (const char *)t->data + 4 * i, 4);
                ref[i] = v;
                got[i] = x[((size_t)b * h * w + p) * C + ch];
            }
    double e = rel_(got, ref, t->numel);
    printf("    %-18s [%d,%d,%d,%d] rel err %.2e\n", key, B, C, h, w, e);
    CHECK(e < 1e-5, "%s", key);
    tc->ntaps++;
    if (e > tc->worst) tc->worst = e;
    free(ref);
    free(got);
}

static double cmp_file_(const SafeTensors *g, const char *name, const float *got, size_t n) {
    const StTensor *t = st_find(g, name);
    CHECK(t && t->numel == n && t->dtype == QIE_DT_F32, "golden %s", name);
    if (!t || t->numel != n) return 1;
    double *ref = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) {
        float v;
        memcpy(&v, (const char *)t->data + 4 * i, 4);
        ref[i] = v;
    }
    double e = rel_(got, ref, n);
    free(ref);
    return e;
}

static const char *sizes_[2] = {"vae_h40_w24", "vae_h24_w56"};

static void test_golden(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s/vae/model", test_golden_dir());
    VaeModel *m = NULL;
    CHECK_RC(vae_load(err, &c, dir, &m), err);
    if (!m) { opctx_free(&c); return; }
    printf("  vae-tiny: %zu parameters (2-D), weights hash %s\n", vae_param_count(m), vae_weights_hash(m));
    CHECK(vae_param_count(m) == 101968, "spec 5.3: vae-tiny has 101,968 2-D encoder parameters, got %zu",
          vae_param_count(m));
    const VaeConfig *cfg = vae_config(m);
    for (int s = 0; s < 2; s++) {
        snprintf(path, sizeof path, "%s/vae/%s.safetensors", test_golden_dir(), sizes_[s]);
        SafeTensors *g = NULL;
        CHECK_RC(st_open(err, path, &g), err);
        if (!g) continue;
        const StTensor *px = st_find(g, "pixels");
        CHECK(px && px->ndim == 4 && px->dtype == QIE_DT_F32);
        if (!px) { st_close(&g); continue; }
        const int B = (int)px->shape[0], H = (int)px->shape[2], W = (int)px->shape[3];
        const int hw = (H / 8) * (W / 8);
        const size_t nl = (size_t)B * cfg->z_dim * hw;
        float *pix = malloc(px->numel * sizeof(float));
        memcpy(pix, px->data, px->numel * sizeof(float));
        float *mean = malloc(nl * sizeof(float)), *lv = malloc(nl * sizeof(float)), *lat = malloc(nl * sizeof(float));
        TapCheck tc = {g, 0, 0};
        vae_set_tap(m, tap_check_, &tc);
        printf("  %s\n", sizes_[s]);
        CHECK_RC(vae_encode(err, m, pix, B, H, W, mean, lv), err);
        CHECK(tc.ntaps == 11, "taps seen: %d", tc.ntaps);
        vae_normalize(cfg, lat, mean, B, hw);
        double em = cmp_file_(g, "mean", mean, nl), el = cmp_file_(g, "logvar", lv, nl), ez = cmp_file_(g, "latents", lat, nl);
        printf("    mean rel err %.2e, logvar %.2e, latents %.2e (worst intermediate %.2e)\n", em, el, ez, tc.worst);
        CHECK(em < 1e-5 && el < 1e-5 && ez < 1e-5, "%s outputs", sizes_[s]);
        /* the same model on a second call (buffers reused) gives the same bytes */
        vae_set_tap(m, NULL, NULL);
        float *mean2 = malloc(nl * sizeof(float));
        CHECK_RC(vae_encode(err, m, pix, B, H, W, mean2, lv), err);
        CHECK(!memcmp(mean, mean2, nl * sizeof(float)), "deterministic");
        free(mean2);
        free(pix); free(mean); free(lv); free(lat);
        st_close(&g);
    }
    /* sides that are not multiples of 8 */
    float dummy[3 * 8 * 12] = {0}, o[16 * 2];
    CHECK(vae_encode(err, m, dummy, 1, 8, 12, o, o) == QIE_EINVAL, "12 is not a multiple of 8");
    vae_destroy(&m);
    vae_destroy(&m); /* NULL-safe */
    opctx_free(&c);
}

static void test_parity_entry(void) {
    char tmp[256], out[300], in[512], model[512];
    test_tmpdir(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/out.safetensors", tmp);
    snprintf(in, sizeof in, "%s/vae/%s.safetensors", test_golden_dir(), sizes_[1]);
    snprintf(model, sizeof model, "%s/vae/model/vae", test_golden_dir()); /* the vae/ folder itself */
    ParityArgs a = {model, in, out, "cpu"};
    CHECK_RC(parity_vae(err, &a), err);
    SafeTensors *o = NULL, *g = NULL;
    CHECK_RC(st_open(err, out, &o), err);
    CHECK_RC(st_open(err, in, &g), err);
    if (o && g) {
        const char *names[3] = {"mean", "logvar", "latents"};
        for (int i = 0; i < 3; i++) {
            const StTensor *t = st_find(o, names[i]), *r = st_find(g, names[i]);
            CHECK(t && r && t->ndim == 5 && r->ndim == 5 && !memcmp(t->shape, r->shape, 5 * sizeof(uint64_t)), "%s shape", names[i]);
            if (!t || !r || t->numel != r->numel) continue;
            double e = cmp_file_(g, names[i], (const float *)t->data, t->numel);
            printf("  qie-parity vae %s rel err %.2e\n", names[i], e);
            CHECK(e < 1e-5, "%s", names[i]);
        }
    }
    st_close(&o);
    st_close(&g);
    unlink(out);
    rmdir(tmp);
}

/* a model folder whose weights are the golden ones except for one tensor */
static int write_broken_(const char *dir, const char *drop, const char *reshape) {
    char src[512], path[600];
    snprintf(src, sizeof src, "%s/vae/model/vae/diffusion_pytorch_model.safetensors", test_golden_dir());
    SafeTensors *st = NULL;
    StWriter *w = NULL;
    int rc = st_open(err, src, &st);
    if (!rc) rc = st_writer_create(err, &w);
    for (size_t i = 0; !rc && i < st_count(st); i++) {
        const StTensor *t = st_tensor_at(st, i);
        if (drop && !strcmp(t->name, drop)) continue;
        uint64_t shape[8];
        memcpy(shape, t->shape, (size_t)t->ndim * sizeof(uint64_t));
        int nd = t->ndim;
        if (reshape && !strcmp(t->name, reshape)) { shape[0] = t->numel; nd = 1; }
        rc = st_writer_add(err, w, t->name, t->dtype, nd, shape, t->data, t->nbytes);
    }
    snprintf(path, sizeof path, "%s/diffusion_pytorch_model.safetensors", dir);
    if (!rc) rc = st_writer_write(err, w, path);
    st_writer_destroy(&w);
    st_close(&st);
    return rc;
}

static void copy_file_(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    char buf[4096];
    size_t n;
    while (a && b && (n = fread(buf, 1, sizeof buf, a)) > 0) CHECK(fwrite(buf, 1, n, b) == n);
    if (a) fclose(a);
    if (b) fclose(b);
}

static void test_load_errors(void) {
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    char tmp[256], cfg_src[512], cfg_dst[300], st_path[300];
    test_tmpdir(tmp, sizeof tmp);
    snprintf(cfg_src, sizeof cfg_src, "%s/vae/model/vae/config.json", test_golden_dir());
    snprintf(cfg_dst, sizeof cfg_dst, "%s/config.json", tmp);
    snprintf(st_path, sizeof st_path, "%s/diffusion_pytorch_model.safetensors", tmp);
    copy_file_(cfg_src, cfg_dst);
    VaeModel *m = NULL;

    CHECK_RC(write_broken_(tmp, "encoder.mid_block.attentions.0.proj.bias", NULL), err);
    CHECK(vae_load(err, &c, tmp, &m) == QIE_ENOTFOUND && m == NULL, "missing tensor");
    printf("  missing: %s\n", err);
    CHECK(strstr(err, "encoder.mid_block.attentions.0.proj.bias") != NULL);

    CHECK_RC(write_broken_(tmp, NULL, "encoder.down_blocks.2.conv1.weight"), err);
    CHECK(vae_load(err, &c, tmp, &m) == QIE_EMISMATCH && m == NULL, "wrong shape");
    vae_destroy(&m);
    printf("  reshaped: %s\n", err);

    FILE *f = fopen(cfg_dst, "w");
    fputs("{\"base_dim\": 8, \"attn_scales\": [0.5]}", f);
    fclose(f);
    CHECK(vae_load(err, &c, tmp, &m) == QIE_EUNSUPPORTED, "attn_scales");
    f = fopen(cfg_dst, "w");
    fputs("{\"base_dim\": \"eight\"}", f);
    fclose(f);
    CHECK(vae_load(err, &c, tmp, &m) == QIE_EFORMAT, "bad base_dim");
    printf("  config: %s\n", err);
    f = fopen(cfg_dst, "w");
    fputs("{\"base_dim\": 8,", f);
    fclose(f);
    CHECK(vae_load(err, &c, tmp, &m) == QIE_EFORMAT, "truncated JSON");
    unlink(cfg_dst);
    unlink(st_path);
    rmdir(tmp);
    CHECK(vae_load(err, &c, tmp, &m) == ENOENT, "no folder");

    /* the real config: the spec's parameter count (spec 2.6: 19,307,648 effective in 2-D) */
    VaeConfig rc;
    vae_config_default(&rc);
    CHECK_RC(vae_create_random(err, &c, &rc, 1, &m), err);
    CHECK(m && vae_param_count(m) == 19307648, "real config: %zu parameters", m ? vae_param_count(m) : 0);
    vae_destroy(&m);
    opctx_free(&c);
}

int main(void) {
    TEST_RUN(test_conv2d);
    TEST_RUN(test_rmsnorm);
    TEST_RUN(test_attention);
    TEST_RUN(test_layout_posterior);
    TEST_RUN(test_golden);
    TEST_RUN(test_parity_entry);
    TEST_RUN(test_load_errors);
    return TEST_DONE();
}
