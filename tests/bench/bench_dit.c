/* bench_dit: one transformer training step (forward + backward) at the real block dimensions, the
 * C/CUDA twin of /work/shared/bench/reference_transformer_step.py (which measured 206 model
 * TFLOP/s on an H100 for diffusers + torch, bf16 autocast, gradient checkpointing, text mask).
 *
 * Setup mirrored from the reference: D = 3072 (24 heads x 128), J = 3584, LAYERS layers (default
 * 8), a 1024² target + one 1024² source (two 64x64 token grids = 8192 image tokens), 256 text
 * tokens with an all-ones mask, batch 1, gradient checkpointing, random weights, σ ~ U(0,1).
 * Model FLOPs = 3 x forward, forward per layer = 24·D²·S + 4·S²·D (S = 8448), as the reference.
 * The step is the trainer's: forward, backward, the global gradient norm (clipping) and AdamW on
 * fp32 master weights and moments, which also writes the bf16 compute copy, as the reference's
 * step (clip_grad_norm_ + fused AdamW). --no-optimizer times forward + backward alone.
 *
 * Not a test (no fixed verdict) and not built by the Makefile. Build and run on a GPU host:
 *   make CUDA=1 BUILD=build-cuda-dit build-cuda-dit/lib/libqie.a
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -DQIE_CUDA -Icommon -Ikernels -I/usr/local/cuda/include \
 *       tests/bench/bench_dit.c build-cuda-dit/lib/libqie.a \
 *       $(pkg-config --libs libzmq msgpack libcjson lmdb) -L/usr/local/cuda/lib64 \
 *       -lcublasLt -lcublas -lcudart -lstdc++ -lpthread -lm -o build-cuda-dit/bench_dit
 *   build-cuda-dit/bench_dit [--layers 8] [--res 1024] [--txt 256] [--steps 6] [--no-ckpt] [--ops]
 * Prints one JSON line, like the reference (--ops first times attention and the fc1 GEMM alone). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "adamw.h"
#include "attention.h"
#include "dit.h"
#include "err.h"
#include "global_norm.h"
#include "ops.h"
#include "rng.h"

#ifdef QIE_CUDA
#include <cuda_runtime.h>
#endif

static double now_(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_d_(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static size_t used_bytes_(void) {
#ifdef QIE_CUDA
    size_t fr = 0, tot = 0;
    if (cudaMemGetInfo(&fr, &tot) == cudaSuccess) return tot - fr;
#endif
    return 0;
}

/* fills n act elements at p with N(0, std²) from a Philox stream, through an f32 scratch */
static void fill_(OpCtx *c, void *p, size_t n, float std, uint64_t sub, float *scratch, size_t cap) {
#ifdef QIE_CUDA
    for (size_t o = 0; o < n; o += cap) {
        size_t k = n - o < cap ? n - o : cap;
        rng_normal(scratch, k, 1234, sub, o, c->stream); /* o: a multiple of cap, so of 4 */
        op_f32_to_act(c, (char *)p + o * op_act_size(c), scratch, k);
    }
    op_scale(c, p, std, n);
#else
    (void)c; (void)p; (void)n; (void)std; (void)sub; (void)scratch; (void)cap;
#endif
}

/* --ops: the big pieces of one block alone, at the bench's S (where the step time goes) */
static void ops_breakdown_(OpCtx *c, int S, int reps) {
    const int D = 3072, H = 24, d = 128;
    const size_t n = (size_t)S * D;
    void *q = op_alloc(c, n * 2), *k = op_alloc(c, n * 2), *v = op_alloc(c, n * 2), *o = op_alloc(c, n * 2);
    void *dq = op_alloc(c, n * 2), *dk = op_alloc(c, n * 2), *dv = op_alloc(c, n * 2), *w = op_alloc(c, (size_t)4 * D * D * 2);
    void *u = op_alloc(c, 4 * n * 2);
    float *lse = op_alloc(c, (size_t)H * S * 4), *gw = op_alloc(c, (size_t)4 * D * D * 4), *gb = op_alloc(c, (size_t)4 * D * 4);
    float *scratch = op_alloc(c, 4 * n * 4);
    fill_(c, q, n, 1, 11, scratch, 4 * n);
    fill_(c, k, n, 1, 12, scratch, 4 * n);
    fill_(c, v, n, 1, 13, scratch, 4 * n);
    fill_(c, w, (size_t)4 * D * D, 0.02f, 14, scratch, 4 * n);
    const double fa = 4.0 * S * (double)S * D;
    struct { const char *name; double flops; } r[5] = {{"attention fwd", fa}, {"attention bwd", 2.5 * fa},
        {"gemm fc1 fwd [S,D]x[4D,D]", 8.0 * S * D * (double)D}, {"gemm fc1 bwd (dX, dW f32)", 16.0 * S * D * (double)D},
        {"fc1 bwd incl. bias grad", 16.0 * S * D * (double)D}};
    for (int which = 0; which < 5; which++) {
        double best = 1e30;
        for (int it = 0; it < reps + 1; it++) {
            op_sync(c);
            double t0 = now_();
            switch (which) {
            case 0: op_attention(c, o, lse, q, k, v, NULL, 1, S, H, d); break;
            case 1: op_attention_backward(c, dq, dk, dv, o, q, k, v, o, lse, NULL, 1, S, H, d); break;
            case 2: op_matmul(c, u, q, w, NULL, S, D, 4 * D); break;
            case 3: op_matmul_backward(c, q, gw, NULL, u, q, w, S, D, 4 * D); break;
            default: op_matmul_backward(c, q, gw, gb, u, q, w, S, D, 4 * D); break;
            }
            op_sync(c);
            double t = now_() - t0;
            if (it && t < best) best = t;
        }
        printf("{\"op\": \"%s\", \"S\": %d, \"ms\": %.3f, \"tflops\": %.1f}\n", r[which].name, S, best * 1e3,
               r[which].flops / best / 1e12);
    }
    void *ps[] = {q, k, v, o, dq, dk, dv, w, u, lse, gw, gb, scratch};
    for (size_t i = 0; i < sizeof ps / sizeof *ps; i++) op_free(c, ps[i]);
}

int main(int argc, char **argv) {
    int layers = 8, res = 1024, txt = 256, steps = 6, warm = 2, ckpt = 1, ops = 0, opt = 1, keep_attn = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--layers") && i + 1 < argc) layers = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--res") && i + 1 < argc) res = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--txt") && i + 1 < argc) txt = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-ckpt")) ckpt = 0;
        else if (!strcmp(argv[i], "--ops")) ops = 1;
        else if (!strcmp(argv[i], "--no-optimizer")) opt = 0;
        else if (!strcmp(argv[i], "--recompute-attention")) keep_attn = 0;
        else {
            fprintf(stderr, "usage: bench_dit [--layers 8] [--res 1024] [--txt 256] [--steps 6] [--no-ckpt] [--no-optimizer] [--recompute-attention] [--ops]\n");
            return 2;
        }
    }
    char err[QIE_ERR_LEN];
    OpCtx c;
    if (opctx_init(err, &c, "cuda")) {
        fprintf(stderr, "bench_dit needs a CUDA build and a GPU: %s\n", err);
        return 1;
    }
    if (ops) ops_breakdown_(&c, 2 * (res / 16) * (res / 16) + txt, 3);
    DitConfig cfg = {2, 64, 16, layers, 128, 24, 3584, {16, 56, 56}, 0, 0, 0};
    size_t mem0 = used_bytes_();
    Dit *m = NULL;
    if (dit_create(err, &c, &cfg, 1, ckpt, &m)) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    m->keep_attn = ckpt && keep_attn; /* as qie-train runs by default */
    const size_t cap = 64u << 20;
    float *scratch = op_alloc(&c, cap * sizeof(float));
    /* random weights: N(0, 0.02²); RMSNorm gains 1 + N(0, 0.02²) would not change the timing */
    fill_(&c, m->params, m->lay.num_params, 0.02f, 1, scratch, cap);
    const int hp = res / 16;
    DitShape sh = {.B = 1, .N_txt = txt, .n_images = 2, .img_shapes = {{1, hp, hp}, {1, hp, hp}}};
    const size_t n_img = (size_t)2 * hp * hp, nx = n_img * 64, ne = (size_t)txt * 3584, no = n_img * 64;
    void *x = op_alloc(&c, nx * 2), *e = op_alloc(&c, ne * 2), *g = op_alloc(&c, no * 2);
    fill_(&c, x, nx, 1.0f, 2, scratch, cap);
    fill_(&c, e, ne, 1.0f, 3, scratch, cap);
    fill_(&c, g, no, 1.0f / (float)no, 4, scratch, cap);
    op_free(&c, scratch);
    /* fp32 master (a copy of the bf16 weights) and AdamW moments, as the trainer holds them */
    const size_t np = m->lay.num_params;
    float *master = NULL, *mom = NULL, *var = NULL, *nscratch = NULL;
    if (opt) {
        master = op_alloc(&c, np * sizeof(float));
        mom = op_alloc(&c, np * sizeof(float));
        var = op_alloc(&c, np * sizeof(float));
        nscratch = op_alloc(&c, (GLOBAL_NORM_BLOCKS + 1) * sizeof(float));
        op_act_to_f32(&c, master, m->params, np);
    }
    float *mask = malloc(sizeof(float) * txt);
    for (int i = 0; i < txt; i++) mask[i] = 1.0f;
    double *times = malloc(sizeof(double) * (steps + warm));
    size_t peak = 0;
    srand(0);
    for (int s = 0; s < warm + steps; s++) {
        float t = (float)rand() / RAND_MAX;
        op_sync(&c);
        double t0 = now_();
        const void *out = NULL;
        dit_zero_grad(m);
        if (dit_forward(err, m, &sh, x, e, mask, &t, &out) || dit_backward(err, m, g, NULL, NULL)) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        if (opt) {
            double norm = sqrt(op_global_norm_squared(&c, nscratch, m->grads, np));
            AdamWArgs a;
            adamw_args(&a, 1e-5, 0.9, 0.999, 1e-10, 3e-2, s + 1, norm > 0.05 ? 0.05 / norm : 1.0);
            op_adamw_update(&c, master, m->params, m->grads, mom, var, np, &a);
        }
        op_sync(&c);
        times[s] = now_() - t0;
        size_t u = used_bytes_();
        if (u > peak) peak = u;
    }
    qsort(times + warm, steps, sizeof(double), cmp_d_);
    const double med = times[warm + steps / 2], fl = 3.0 * dit_flops_forward(&m->cfg, &sh);
    printf("{\"impl\": \"qie-dit\", \"keep_attn\": %d, \"optimizer\": %s, \"layers\": %d, \"grad_ckpt\": %s, \"text_mask\": true, \"res\": %d, \"n_src\": 1, "
           "\"txt\": %d, \"tokens\": %zu, \"step_s_median\": %.4f, \"step_s_min\": %.4f, \"model_tflops\": %.1f, "
           "\"step_s_per_layer\": %.5f, \"peak_mem_gib\": %.2f, \"params_gib\": %.2f, \"grads_gib\": %.2f, "
           "\"activations_gib\": %.2f}\n",
           m->keep_attn, opt ? "\"adamw-fp32-master\"" : "null", layers, ckpt ? "true" : "false", res, txt, n_img + txt, med, times[warm], fl / med / 1e12, med / layers,
           (peak - mem0) / 1073741824.0, m->lay.num_params * 2 / 1073741824.0, m->lay.num_params * 4 / 1073741824.0,
           dit_activation_bytes(m) / 1073741824.0);
    op_free(&c, master);
    op_free(&c, mom);
    op_free(&c, var);
    op_free(&c, nscratch);
    free(mask);
    free(times);
    op_free(&c, x);
    op_free(&c, e);
    op_free(&c, g);
    dit_destroy(&m);
    opctx_free(&c);
    return 0;
}
