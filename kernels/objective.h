/* objective.h: the trainer's flow-matching objective (docs/train.md "What one step does", steps
 * 1, 4 and 7; trainer_behaviour.md §4.2, §4.7; model.md §1.3, §2.5). CPU reference in objective.c
 * (stages/train/objective.c's obj_* are thin wrappers of it), CUDA twin in objective.cu.
 *
 * Per element, with c the latent channel and mu/inv the Qwen-Image VAE latents_mean and
 * 1/latents_std in fp32 (objective_norm_consts):
 *   latent   x  = (mean + exp(½·clamp(logvar, −30, 20))·ε − mu[c])·inv[c]
 *   pack     [C, h, w] -> [(h/2)(w/2), 4C]: token y2·(w/2) + x2, feature c·4 + dy·2 + dx
 *   target   x0 = r(x); n = r(noise); x_σ = r(r(r(1 − σ)·x0) + r(σ·n)); v = r(n − x0)
 *   loss     e = v̂ − v, m = |e| ≤ 50, Σ (double)(e·e·m·w); d_v̂ = 2·w·m·e·scale
 * r() rounds to bf16 when the compute dtype is bf16 (round = 1; the op_* dispatchers take it from
 * ctx->act: 0 on CPU, 1 on CUDA) and is the identity otherwise. The arithmetic is fp32 with one
 * rounding per operation in this order on both backends (the CUDA twin uses __fmul_rn & co., so
 * no FMA contraction); only expf may differ in the last ulp between libm and CUDA.
 *
 * Buffers: "f32" are float on ctx's device; x, xs, pred and d_pred are act (f32 on CPU, bf16 on
 * CUDA); the loss accumulator and scratch are double on ctx's device. Ops are asynchronous on
 * ctx->stream; op_objective_read synchronises. */
#ifndef QIE_KERNELS_OBJECTIVE_H
#define QIE_KERNELS_OBJECTIVE_H

#include <stddef.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define OBJECTIVE_LATENT_CH 16    /* VAE z_dim: the channel of element i is (i / hw) mod 16 */
#define OBJECTIVE_LOSS_BLOCKS 256 /* doubles of scratch op_objective_loss needs on CUDA */

/* latents_mean[c] and 1/latents_std[c] as the trainer forms them in fp32 */
void objective_norm_consts(float mu[OBJECTIVE_LATENT_CH], float inv[OBJECTIVE_LATENT_CH]);

/* ---- CPU reference: the pieces (host code of the trainer, unchanged) ---- */
void objective_latent_cpu(float *out, const float *mean, const float *logvar, const float *eps, int C, int h, int w);
void objective_pack_cpu(float *out, const float *z, int C, int h, int w);
void objective_round_cpu(float *x, size_t n, int round);
void objective_noisy_cpu(float *xs, float *v, const float *x0, const float *eps, float sigma, size_t n, int round);
double objective_loss_cpu(float *d_pred, const float *pred, const float *v, float w, size_t n, float scale);

/* ---- CPU reference: the fused per-image ops (bit-identical to the pieces composed) ---- */
/* A clean source: x [(h/2)(w/2), 4C] = pack(r(latent)). */
void objective_source_cpu(float *x, const float *mean, const float *logvar, const float *eps, int C, int h, int w,
                          int round);
/* The target: x0 = pack(r(latent)), then xs = x_σ and v [(h/2)(w/2), 4C] from noise (packed). */
void objective_target_cpu(float *xs, float *v, const float *mean, const float *logvar, const float *eps,
                          const float *noise, float sigma, int C, int h, int w, int round);

/* ---- dispatchers ---- */
void op_objective_source(OpCtx *c, void *x, const float *mean, const float *logvar, const float *eps, int C, int h,
                         int w);
void op_objective_target(OpCtx *c, void *xs, float *v, const float *mean, const float *logvar, const float *eps,
                         const float *noise, float sigma, int C, int h, int w);
/* One sample's loss: *acc += Σ w·m·e² / div (the sum in double; on CUDA a fixed grid of
 * OBJECTIVE_LOSS_BLOCKS partials summed in order by one thread: deterministic), and
 * d_pred[0, n) = 2·w·m·e·scale (the elements past n are not touched). acc: one double;
 * scratch: OBJECTIVE_LOSS_BLOCKS doubles (CUDA; may be NULL on CPU). */
void op_objective_loss(OpCtx *c, void *d_pred, const void *pred, const float *v, float w, size_t n, float scale,
                       double div, double *acc, double *scratch);
/* Host f32 -> device f32 without waiting for the stream (CPU: memcpy). h must be pageable memory
 * (malloc): the copy has taken it when the call returns, so it may be freed or reused at once. */
void op_objective_upload(OpCtx *c, float *d, const float *h, size_t n);
/* Device doubles -> host (synchronises the stream on CUDA). */
void op_objective_read(OpCtx *c, double *h, const double *d, size_t n);

#ifdef QIE_CUDA
void objective_source(OpCtx *c, void *x, const float *mean, const float *logvar, const float *eps, int C, int h, int w);
void objective_target(OpCtx *c, void *xs, float *v, const float *mean, const float *logvar, const float *eps,
                      const float *noise, float sigma, int C, int h, int w);
void objective_loss(OpCtx *c, void *d_pred, const void *pred, const float *v, float w, size_t n, float scale, double div,
                    double *acc, double *scratch);
void objective_upload(OpCtx *c, float *d, const float *h, size_t n);
void objective_read(OpCtx *c, double *h, const double *d, size_t n);
#endif

#ifdef __cplusplus
}
#endif
#endif
