/* bench_vae: images/s of the VAE encoder in the real configuration (spec/model.md §2.1) with
 * seeded random weights in the real shapes, on --device (cuda by default).
 *
 *   make CUDA=1 BUILD=build-cuda build-cuda/tests/bench/bench_vae
 *   build-cuda/tests/bench/bench_vae [--device cuda] [--size 1024] [--batch 1] [--iters 10] [--conv_sweep 1]
 *
 * --conv_sweep 1 (CUDA builds) first times each k×k convolution shape of the encoder at --size and
 * --batch on every path (im2col + cuBLASLt, each implicit-GEMM tile configuration) and prints a
 * table: ms per call (best of 5 after a warm-up) and TFLOP/s (2·M·Cout·K).
 *
 * Prints the resolved settings, one line per timed run, then "images/s" and a per-section
 * breakdown of one extra run (taken through the forward's debug tap, which synchronises at each
 * point: the sum is slightly above an untapped run). scripts/bench_vae_ref.py times diffusers on
 * the same work; scripts/bench_vae.sh runs both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv2d.h"
#include "err.h"
#include "ops.h"
#include "progress.h"
#include "rng.h"
#include "vae.h"

typedef struct {
    double t_last;
    int n;
    char names[64][16];
    double ms[64];
} Sections;

static void tap_(void *user, const char *name, const void *act, int B, int h, int w, int C) {
    (void)act; (void)B; (void)h; (void)w; (void)C;
    Sections *s = user;
    double t = progress_now();
    if (s->n < 64) {
        snprintf(s->names[s->n], sizeof s->names[s->n], "%s", name);
        s->ms[s->n++] = (t - s->t_last) * 1e3;
    }
    s->t_last = t;
}

#ifdef QIE_CUDA
static void conv_sweep_(OpCtx *ctx, int size, int B) {
    /* (level side divisor, Cin, Cout, stride): the real encoder's k×k convs */
    static const int shapes[][4] = {{1, 8, 96, 1},    {1, 96, 96, 1},    {1, 96, 96, 2},   {2, 96, 192, 1},
                                    {2, 192, 192, 1}, {2, 192, 192, 2},  {4, 192, 384, 1}, {4, 384, 384, 1},
                                    {4, 384, 384, 2}, {8, 384, 384, 1},  {8, 384, 32, 1}};
    const int ns = (int)(sizeof shapes / sizeof shapes[0]), nv = conv2d_variant_count();
    size_t in_max = 0, out_max = 0, w_max = 0;
    for (int i = 0; i < ns; i++) {
        const size_t hw = (size_t)(size / shapes[i][0]) * (size / shapes[i][0]) * B;
        if (hw * shapes[i][1] > in_max) in_max = hw * shapes[i][1];
        if (hw * shapes[i][2] > out_max) out_max = hw * shapes[i][2];
        if ((size_t)9 * shapes[i][1] * shapes[i][2] > w_max) w_max = (size_t)9 * shapes[i][1] * shapes[i][2];
    }
    float *h = malloc((in_max > w_max ? in_max : w_max) * sizeof(float));
    rng_normal_cpu(h, in_max > w_max ? in_max : w_max, 77, 0, 0);
    void *x = op_alloc(ctx, in_max * 2), *w = op_alloc(ctx, w_max * 2), *y = op_alloc(ctx, out_max * 2);
    void *bias = op_alloc(ctx, 384 * 2);
    op_upload_act(ctx, x, h, in_max);
    for (size_t i = 0; i < w_max; i++) h[i] *= 0.02f;
    op_upload_act(ctx, w, h, w_max);
    op_upload_act(ctx, bias, h, 384);
    const size_t ws_bytes = (size_t)512 << 20;
    void *ws = op_alloc(ctx, ws_bytes);
    printf("conv sweep (ms per call, best of 5; TFLOP/s):\n");
    for (int i = 0; i < ns; i++) {
        const int side = size / shapes[i][0], st = shapes[i][3];
        Conv2dShape s = {B, side, side, shapes[i][1], shapes[i][2], 3, st, st == 2 ? 0 : 1, 1, st == 2 ? 0 : 1, 1};
        const double flop = 2.0 * B * conv2d_out_h(&s) * conv2d_out_w(&s) * s.Cout * 9.0 * s.Cin;
        printf("  %4dx%-4d %3d->%-3d s%d:", side, side, s.Cin, s.Cout, st);
        for (int v = -1; v < nv; v++) {
            conv2d_set_variant(v);
            op_conv2d(ctx, y, x, w, bias, NULL, &s, ws, ws_bytes);
            op_sync(ctx);
            double best = 1e30;
            for (int r = 0; r < 5; r++) {
                double t0 = progress_now();
                op_conv2d(ctx, y, x, w, bias, NULL, &s, ws, ws_bytes);
                op_sync(ctx);
                double dt = progress_now() - t0;
                if (dt < best) best = dt;
            }
            printf(" [%d] %.3f %.0f", v, best * 1e3, flop / best * 1e-12);
        }
        printf("\n");
    }
    conv2d_set_variant(-2);
    printf("  variants:");
    for (int v = -1; v < nv; v++) printf(" [%d] %s", v, conv2d_variant_name(v));
    printf("\n");
    free(h);
    op_free(ctx, x); op_free(ctx, w); op_free(ctx, y); op_free(ctx, bias); op_free(ctx, ws);
}
#endif

int main(int argc, char **argv) {
    const char *device = "cuda";
    int size = 1024, batch = 1, iters = 10, sweep = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--conv_sweep")) sweep = atoi(argv[i + 1]);
        else { fprintf(stderr, "usage: bench_vae [--device cuda] [--size 1024] [--batch 1] [--iters 10] [--conv_sweep 0|1]\n"); return 2; }
    }
    if (size < 8 || size % 8 || batch < 1 || iters < 1) { fprintf(stderr, "bad --size/--batch/--iters\n"); return 2; }
    char err[QIE_ERR_LEN] = "";
    OpCtx ctx;
    if (opctx_init(err, &ctx, device)) { fprintf(stderr, "%s\n", err); return 1; }
#ifdef QIE_CUDA
    if (sweep && ctx.dev == QIE_DEV_CUDA) conv_sweep_(&ctx, size, batch);
#else
    (void)sweep;
#endif
    VaeConfig cfg;
    vae_config_default(&cfg);
    VaeModel *m = NULL;
    if (vae_create_random(err, &ctx, &cfg, 1234, &m)) { fprintf(stderr, "%s\n", err); return 1; }
    const size_t np = (size_t)batch * 3 * size * size, nl = (size_t)batch * cfg.z_dim * (size / 8) * (size / 8);
    float *px = malloc(np * sizeof(float)), *mean = malloc(nl * sizeof(float)), *lv = malloc(nl * sizeof(float));
    if (!px || !mean || !lv) { fprintf(stderr, "out of memory\n"); return 1; }
    rng_uniform_cpu(px, np, 5, 0, 0);
    for (size_t i = 0; i < np; i++) px[i] = 2 * px[i] - 1;
    printf("bench_vae: device %s, %dx%d, batch %d, %d iters, real config (%zu parameters, random)\n", device, size,
           size, batch, iters, vae_param_count(m));
    int rc = vae_encode(err, m, px, batch, size, size, mean, lv); /* warm-up: allocations, cuBLASLt */
    double best = 1e30, total = 0;
    for (int it = 0; !rc && it < iters; it++) {
        double t0 = progress_now();
        rc = vae_encode(err, m, px, batch, size, size, mean, lv);
        double dt = progress_now() - t0;
        total += dt;
        if (dt < best) best = dt;
        printf("  run %d: %.2f ms (%.2f ms/image)\n", it, dt * 1e3, dt * 1e3 / batch);
    }
    if (rc) { fprintf(stderr, "%s\n", err); return 1; }
    printf("images/s: %.2f (mean), %.2f (best); %.2f ms/image mean (host->device pixels and device->host latents "
           "included)\n", batch * iters / total, batch / best, total * 1e3 / (batch * iters));
    Sections s = {0};
    vae_set_tap(m, tap_, &s);
    s.t_last = progress_now();
    rc = vae_encode(err, m, px, batch, size, size, mean, lv);
    printf("sections of one tapped run (ms, cumulative order):");
    for (int i = 0; i < s.n; i++) printf(" %s %.2f", s.names[i], s.ms[i]);
    printf("\n");
    free(px); free(mean); free(lv);
    vae_destroy(&m);
    opctx_free(&ctx);
    return rc ? 1 : 0;
}
