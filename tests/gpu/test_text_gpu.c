/* test_text_gpu: the Qwen2.5-VL encoder's CUDA path. Needs a GPU (make CUDA=1).
 *
 * 1. Each qwen op's CUDA twin against its CPU reference on the same bf16-rounded random inputs:
 *    attention (GQA, causal packed samples, ViT windows, hd 80 and 128), RoPE (both rounding
 *    modes), RMSNorm, SwiGLU, exact GELU, row gather/scatter.
 *    Tolerance: max|gpu - cpu| <= 2e-2 · max|cpu| (a few bf16 roundings of the output; inputs are
 *    identical, so only rounding of intermediates and accumulation order differ).
 * 2. Every golden case of tests/test_text.c through `qie-parity text --device cuda` against the
 *    diffusers fp32 reference: ids and mask identical; embeddings with
 *    ‖gpu - ref‖ / ‖ref‖ <= 5e-2 and max|gpu - ref| <= 0.15 · max|ref|. Calibration: the same
 *    pipeline run by torch in bf16 (te.to(bfloat16), CPU) sits at 2.1-3.1 % norm error and
 *    max|d| 0.14-0.26 (max|ref| 4.7) from the fp32 golden on these cases; qie's CUDA path
 *    measured 2.2-3.1 % and 0.14-0.33 on an H200. te-tiny's weights (~1.5/sqrt(fan_in)) make
 *    every layer change the result, which also makes bf16 noise larger than at real scale. */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "err.h"
#include "ops.h"
#include "parity/parity.h"
#include "qwen_attention.h"
#include "qwen_ops.h"
#include "rng.h"
#include "safetensors.h"
#include "gpulib.h"
#include "testlib.h"

static char err[QIE_ERR_LEN];
static OpCtx cpu, gpu;

static float *rand_(size_t n, uint64_t sub) {
    float *x = malloc(n * sizeof(float));
    rng_normal_cpu(x, n, 321, sub, 0);
    return x;
}

static int32_t *up_i32_(const int32_t *h, size_t n) {
    int32_t *d = op_alloc(&gpu, n * sizeof *d);
    qwen_upload_i32(&gpu, d, h, n);
    return d;
}

static float *up_f32_(const float *h, size_t n) {
    float *d = op_alloc(&gpu, n * sizeof *d);
    op_upload_f32(&gpu, d, h, n);
    return d;
}

static void check_attention(int N, int nh, int nkv, int hd, int mode, const char *what) {
    int W = (nh + 2 * nkv) * hd;
    float *qkv = rand_((size_t)N * W, 10 + hd);
    int32_t *lo = malloc(N * sizeof *lo), *hi = malloc(N * sizeof *hi);
    for (int i = 0; i < N; i++) {
        if (mode == 0) { /* two packed causal samples */
            int s = i < N / 3 ? 0 : N / 3;
            lo[i] = s;
            hi[i] = i + 1;
        } else { /* windows of 64 (last one shorter) */
            lo[i] = i / 64 * 64;
            hi[i] = lo[i] + 64 < N ? lo[i] + 64 : N;
        }
    }
    void *d_qkv = gpu_up_rounded(&gpu, qkv, (size_t)N * W);
    float *ref = malloc((size_t)N * nh * hd * sizeof(float)), *got = malloc((size_t)N * nh * hd * sizeof(float));
    float scale = 1.0f / sqrtf((float)hd);
    op_qwen_attention(&cpu, ref, qkv, W, qkv + nh * hd, qkv + (nh + nkv) * hd, W, N, nh, nkv, hd, lo, hi, scale);
    int32_t *d_lo = up_i32_(lo, N), *d_hi = up_i32_(hi, N);
    void *d_out = op_alloc(&gpu, (size_t)N * nh * hd * 2);
    char *base = d_qkv;
    op_qwen_attention(&gpu, d_out, d_qkv, W, base + (size_t)nh * hd * 2, base + (size_t)(nh + nkv) * hd * 2, W, N, nh, nkv,
                      hd, d_lo, d_hi, scale);
    op_download_act(&gpu, got, d_out, (size_t)N * nh * hd);
    double e = gpu_rel_err(got, ref, (size_t)N * nh * hd);
    printf("  attention %-34s rel err %.3g\n", what, e);
    CHECK(e < 2e-2, "%s: %.3g", what, e);
    op_free(&gpu, d_qkv);
    op_free(&gpu, d_lo);
    op_free(&gpu, d_hi);
    op_free(&gpu, d_out);
    free(qkv); free(lo); free(hi); free(ref); free(got);
}

static void test_attention_gpu(void) {
    check_attention(300, 28, 4, 128, 0, "LLM GQA 28/4 hd128 causal packed");
    check_attention(200, 4, 2, 16, 0, "te-tiny GQA 4/2 hd16 causal");
    check_attention(300, 16, 16, 80, 1, "ViT 16 heads hd80 windows");
    check_attention(150, 2, 2, 16, 1, "ViT te-tiny hd16 windows");
}

static void test_small_ops_gpu(void) {
    const int R = 97, C = 200, hd = 80, nh = 3, ld = 3 * 80 + 40;
    float *x = rand_((size_t)R * C, 1), *w = rand_(C, 2);
    for (int i = 0; i < C; i++) w[i] = 1.0f + 0.1f * w[i];
    void *dx = gpu_up_rounded(&gpu, x, (size_t)R * C), *dw = gpu_up_rounded(&gpu, w, C), *dy = op_alloc(&gpu, (size_t)R * C * 2);
    float *ref = malloc((size_t)R * C * 2 * sizeof(float)), *got = malloc((size_t)R * C * 2 * sizeof(float));
    op_qwen_rmsnorm(&cpu, ref, x, w, R, C, 1e-6f);
    op_qwen_rmsnorm(&gpu, dy, dx, dw, R, C, 1e-6f);
    op_download_act(&gpu, got, dy, (size_t)R * C);
    double e = gpu_rel_err(got, ref, (size_t)R * C);
    printf("  rmsnorm rel err %.3g\n", e);
    CHECK(e < 2e-2);
    /* rope on 3 heads inside rows of stride ld, both rounding modes */
    float *cs = malloc((size_t)R * hd * sizeof(float)), *sn = malloc((size_t)R * hd * sizeof(float));
    for (int r = 0; r < R; r++)
        for (int i = 0; i < hd; i++) {
            cs[r * hd + i] = cosf(0.37f * r * (i % 40 + 1));
            sn[r * hd + i] = sinf(0.37f * r * (i % 40 + 1));
        }
    float *dcs = up_f32_(cs, (size_t)R * hd), *dsn = up_f32_(sn, (size_t)R * hd);
    for (int mode = 0; mode < 2; mode++) {
        float *q = rand_((size_t)R * ld, 5 + mode);
        void *dq = gpu_up_rounded(&gpu, q, (size_t)R * ld);
        op_qwen_rope(&cpu, q, ld, R, nh, hd, cs, sn, mode);
        op_qwen_rope(&gpu, dq, ld, R, nh, hd, dcs, dsn, mode);
        float *g = malloc((size_t)R * ld * sizeof(float));
        op_download_act(&gpu, g, dq, (size_t)R * ld);
        e = gpu_rel_err(g, q, (size_t)R * ld);
        printf("  rope (bf16_math=%d) rel err %.3g\n", mode, e);
        CHECK(e < 2e-2);
        op_free(&gpu, dq);
        free(q);
        free(g);
    }
    /* swiglu + gelu */
    float *gu = rand_((size_t)R * 2 * C, 7);
    void *dgu = gpu_up_rounded(&gpu, gu, (size_t)R * 2 * C), *dsw = op_alloc(&gpu, (size_t)R * C * 2);
    op_qwen_swiglu(&cpu, ref, gu, R, C);
    op_qwen_swiglu(&gpu, dsw, dgu, R, C);
    op_download_act(&gpu, got, dsw, (size_t)R * C);
    e = gpu_rel_err(got, ref, (size_t)R * C);
    printf("  swiglu rel err %.3g\n", e);
    CHECK(e < 2e-2);
    memcpy(ref, gu, (size_t)R * C * sizeof(float));
    op_qwen_gelu_erf(&cpu, ref, (size_t)R * C);
    op_qwen_gelu_erf(&gpu, dgu, (size_t)R * C);
    op_download_act(&gpu, got, dgu, (size_t)R * C);
    e = gpu_rel_err(got, ref, (size_t)R * C);
    printf("  gelu_erf rel err %.3g\n", e);
    CHECK(e < 2e-2);
    /* gather / scatter: exact copies (dims 200 vectorised, 13 not) */
    for (int dim = 200; dim >= 13; dim -= 187) {
        int32_t idx[50];
        for (int i = 0; i < 50; i++) idx[i] = (i * 37) % R;
        int32_t *didx = up_i32_(idx, 50);
        float *src = rand_((size_t)R * dim, 9);
        void *ds = gpu_up_rounded(&gpu, src, (size_t)R * dim), *dg = op_alloc(&gpu, (size_t)R * dim * 2);
        op_qwen_gather_rows(&gpu, dg, ds, didx, 50, dim);
        float *h = malloc((size_t)R * dim * sizeof(float));
        op_download_act(&gpu, h, dg, (size_t)50 * dim);
        int ok = 1;
        for (int i = 0; i < 50; i++) ok &= !memcmp(h + (size_t)i * dim, src + (size_t)idx[i] * dim, dim * sizeof(float));
        CHECK(ok, "gather dim %d", dim);
        op_zero(&gpu, ds, (size_t)R * dim * 2);
        op_qwen_scatter_rows(&gpu, ds, dg, didx, 50, dim);
        op_download_act(&gpu, h, ds, (size_t)R * dim);
        ok = 1;
        for (int i = 0; i < 50; i++) ok &= !memcmp(h + (size_t)idx[i] * dim, src + (size_t)idx[i] * dim, dim * sizeof(float));
        CHECK(ok, "scatter dim %d", dim);
        op_free(&gpu, didx); op_free(&gpu, ds); op_free(&gpu, dg);
        free(src); free(h);
    }
    op_free(&gpu, dx); op_free(&gpu, dw); op_free(&gpu, dy); op_free(&gpu, dcs); op_free(&gpu, dsn);
    op_free(&gpu, dgu); op_free(&gpu, dsw);
    free(x); free(w); free(ref); free(got); free(cs); free(sn); free(gu);
}

static void test_golden_cuda(void) {
    static const char *cases[] = {"edit_b2", "plus_1img", "plus_2img", "plus_3img", "plus_b2", "plus_empty", "plus_noimg"};
    char model[1024];
    snprintf(model, sizeof model, "%s/text/model", test_golden_dir());
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char in[1024], ref[1024], tmp[512], out[1024];
        snprintf(in, sizeof in, "%s/text/case_%s.in.safetensors", test_golden_dir(), cases[c]);
        snprintf(ref, sizeof ref, "%s/text/case_%s.out.safetensors", test_golden_dir(), cases[c]);
        test_tmpdir(tmp, sizeof tmp);
        snprintf(out, sizeof out, "%s/out.safetensors", tmp);
        ParityArgs a = {model, in, out, "cuda"};
        CHECK_RC(parity_text(err, &a), err);
        SafeTensors *so = NULL, *sr = NULL;
        CHECK_RC(st_open(err, out, &so), err);
        CHECK_RC(st_open(err, ref, &sr), err);
        if (so && sr) {
            const char *same[] = {"input_ids", "prompt_embeds_mask"};
            for (int t = 0; t < 2; t++) {
                const StTensor *x = st_find(so, same[t]), *y = st_find(sr, same[t]);
                CHECK(x && y && x->nbytes == y->nbytes && !memcmp(x->data, y->data, x->nbytes), "%s %s", cases[c], same[t]);
            }
            const StTensor *e = st_find(so, "prompt_embeds"), *r = st_find(sr, "prompt_embeds");
            CHECK(e && r && e->numel == r->numel);
            if (e && r && e->numel == r->numel) {
                const float *ev = e->data, *rv = r->data;
                double num = 0, den = 0, md = 0, mx = 0;
                for (uint64_t i = 0; i < r->numel; i++) {
                    double d = (double)ev[i] - rv[i];
                    num += d * d;
                    den += (double)rv[i] * rv[i];
                    md = fmax(md, fabs(d));
                    mx = fmax(mx, fabs(rv[i]));
                }
                double nrel = sqrt(num / (den > 0 ? den : 1));
                printf("  cuda %-11s norm rel %.3g  max|d| %.3g (max|ref| %.3g)  %s\n", cases[c], nrel, md, mx,
                       nrel <= 5e-2 && md <= 0.15 * mx ? "OK" : "NOT OK");
                CHECK(nrel <= 5e-2 && md <= 0.15 * mx, "%s", cases[c]);
            }
        }
        st_close(&so);
        st_close(&sr);
        unlink(out);
        rmdir(tmp);
    }
}

int main(void) {
    if (opctx_init(err, &cpu, "cpu") || opctx_init(err, &gpu, "cuda")) {
        fprintf(stderr, "no GPU: %s\n", err);
        return 1;
    }
    TEST_RUN(test_attention_gpu);
    TEST_RUN(test_small_ops_gpu);
    TEST_RUN(test_golden_cuda);
    opctx_free(&gpu);
    opctx_free(&cpu);
    return TEST_DONE();
}
