/* bench_text: prompts/s of the Qwen2.5-VL prompt encoder at the real 7B dimensions (model.md
 * §3.1) with seeded random weights, on the edit-plus work of the issue: each prompt has two
 * 384x384 condition images (calculate_dimensions(384², 1) = 384², processor 392² -> 196 tokens
 * each). The timed loop is what qie-encode-text does per window: tokenizer + processor on the CPU
 * (qwenvl_prepare), then packed forwards of --batch prompts (qwenvl_encode, output downloaded).
 * The tokenizer is the real-id Qwen2 vocabulary slice of tests/golden/text/qwen2_vocab (it
 * tokenizes the template exactly like the released one: 64 prefix tokens).
 *
 *   make CUDA=1 BUILD=build-cuda-te build-cuda-te/tests/bench/bench_text
 *   build-cuda-te/tests/bench/bench_text [--device cuda] [--prompts 32] [--batch 8] [--iters 3]
 *                                        [--prep_threads 8]
 *
 * scripts/bench_text_ref.py times transformers + diffusers encode_prompt (bf16, SDPA) on the same
 * work; compare the two "prompts/s" lines on the same GPU. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "ops.h"
#include "progress.h"
#include "qwenvl.h"
#include "rng.h"

static const char *PROMPTS[] = {
    "Replace the cat with a dog. Change the background to a beach at sunset.",
    "Put the hat from picture 2 on the man in picture 1",
    "把背景换成海滩，保留人物的姿势。",
    "Make the sky purple. 让天空变成紫色。",
    "Remove the text \"SALE 50%\" from the sign, and don't touch the people's faces.",
    "The quick brown fox jumps over the lazy dog 1234567890 times.",
};

int main(int argc, char **argv) {
    const char *device = "cuda", *tok_dir = "tests/golden/text/qwen2_vocab";
    int nprompts = 32, batch = 8, iters = 3, side = 384, threads = 8;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--device")) device = argv[i + 1];
        else if (!strcmp(argv[i], "--prompts")) nprompts = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch")) batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--iters")) iters = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--tokenizer")) tok_dir = argv[i + 1];
        else if (!strcmp(argv[i], "--side")) side = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--prep_threads")) threads = atoi(argv[i + 1]);
        else { fprintf(stderr, "unknown option %s\n", argv[i]); return 2; }
    }
    if (nprompts < 1 || batch < 1 || batch > 256 || iters < 1 || side < 28 || threads < 1) { fprintf(stderr, "bad options\n"); return 2; }
    char err[QIE_ERR_LEN] = "";
    OpCtx ctx;
    if (opctx_init(err, &ctx, device)) { fprintf(stderr, "%s\n", err); return 1; }
    QwenVLConfig cfg;
    qwenvl_config_7b(&cfg);
    QwenVL *m = NULL;
    double t0 = progress_now();
    if (qwenvl_create_random(err, &ctx, &cfg, tok_dir, 42, &m)) { fprintf(stderr, "%s\n", err); return 1; }
    printf("bench_text: device %s, %zu parameters (random, %.1f s), %d prompts x 2 images %dx%d, batch %d, "
           "%d prep threads, %d iters\n", device, qwenvl_param_count(m), progress_now() - t0, nprompts, side, side, batch,
           threads, iters);
    /* two images: smooth ramps + Philox noise */
    uint8_t *img[2];
    float *noise = malloc((size_t)side * side * 3 * sizeof(float));
    for (int k = 0; k < 2; k++) {
        img[k] = malloc((size_t)side * side * 3);
        rng_uniform_cpu(noise, (size_t)side * side * 3, 7, (uint64_t)k, 0);
        for (int i = 0; i < side * side * 3; i++) img[k][i] = (uint8_t)((i / 3 % side) * 200 / side + noise[i] * 55);
    }
    free(noise);
    QwenVLImage ims[2] = {{img[0], side, side}, {img[1], side, side}};
    QwenVLPrep *preps = calloc((size_t)nprompts, sizeof *preps);
    float **out = calloc((size_t)batch, sizeof *out);
    int *len = calloc((size_t)batch, sizeof *len);
    long tokens = 0;
    double best = 1e30;
    for (int it = -1; it < iters; it++) { /* it = -1: warm-up (cuBLASLt heuristics, arenas) */
        op_sync(&ctx);
        double ts = progress_now(), tprep = 0;
        tokens = 0;
        for (int a = 0; a < nprompts; a += batch) {
            int b = a + batch < nprompts ? a + batch : nprompts;
            double tp = progress_now();
            QwenVLSample s[256];
            int rcs[256];
            for (int i = a; i < b; i++) s[i - a] = (QwenVLSample){PROMPTS[i % (int)(sizeof PROMPTS / sizeof *PROMPTS)], 2, ims};
            qwenvl_prepare_many(&cfg, qwenvl_tokenizer(m), QWENVL_EDIT_PLUS, s, b - a, preps + a, rcs, NULL, threads);
            for (int i = a; i < b; i++) {
                if (rcs[i - a]) { fprintf(stderr, "prompt %d: prepare failed (%d)\n", i, rcs[i - a]); return 1; }
                tokens += preps[i].n;
            }
            tprep += progress_now() - tp;
            if (qwenvl_encode(err, m, preps + a, b - a, out, len)) { fprintf(stderr, "%s\n", err); return 1; }
            for (int i = a; i < b; i++) {
                free(out[i - a]);
                qwenvl_prep_free(&preps[i]);
            }
        }
        op_sync(&ctx);
        double dt = progress_now() - ts;
        if (it >= 0) {
            printf("  run %d: %.3f s, %.2f prompts/s (%.1f ms/prompt; CPU prep %.1f ms/prompt), %ld tokens\n", it, dt,
                   nprompts / dt, 1e3 * dt / nprompts, 1e3 * tprep / nprompts, tokens);
            if (dt < best) best = dt;
        }
    }
    printf("prompts/s: %.2f (best of %d; %ld LLM tokens per %d prompts)\n", nprompts / best, iters, tokens, nprompts);
    free(preps);
    free(out);
    free(len);
    free(img[0]);
    free(img[1]);
    qwenvl_destroy(&m);
    opctx_free(&ctx);
    return 0;
}
