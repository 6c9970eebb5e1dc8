/* bench_vae: images/s of the VAE encoder in the real configuration (spec/model.md §2.1) with
 * seeded random weights in the real shapes, on --device (cuda by default).
 *
 *   make CUDA=1 BUILD=build-cuda build-cuda/tests/bench/bench_vae
 *   build-cuda/tests/bench/bench_vae [--device cuda] [--size 1024] [--batch 1] [--iters 10]
 *
 * Prints the resolved settings, one line per timed run, then "images/s" and a per-section
 * breakdown of one extra run (taken through the forward's debug tap, which synchronises at each
 * point: the sum is slightly above an untapped run). scripts/bench_vae_ref.py times diffusers on
 * the same work; scripts/bench_vae.sh runs both. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

int main(int argc, char **argv) {
    const char *device = "cuda";
    int size = 1024, batch = 1, iters = 10;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--size")) size = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else { fprintf(stderr, "usage: bench_vae [--device cuda] [--size 1024] [--batch 1] [--iters 10]\n"); return 2; }
    }
    if (size < 8 || size % 8 || batch < 1 || iters < 1) { fprintf(stderr, "bad --size/--batch/--iters\n"); return 2; }
    char err[QIE_ERR_LEN] = "";
    OpCtx ctx;
    if (opctx_init(err, &ctx, device)) { fprintf(stderr, "%s\n", err); return 1; }
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
