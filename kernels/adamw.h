/* adamw.h: the AdamW update of the trainer (torch.optim.AdamW semantics, decoupled weight decay),
 * on fp32 master weights with fp32 moments. CPU reference in adamw.c, CUDA twin in adamw.cu.
 *
 * Per element i, with g = grads[i]·grad_scale (the clipping factor, applied in fp32 as
 * torch's clip_grad_norm_ multiplies the gradients in place before the step):
 *   p  = master[i]·(1 − lr·wd)
 *   m  = m + (1 − β1)·(g − m)              torch lerp_(g, 1 − β1), weight < 0.5 branch
 *   v  = v·β2 + ((1 − β2)·g)·g             torch mul_(β2).addcmul_(g, g, 1 − β2)
 *   p  = p − (lr/bc1)·m / (sqrt(v)/sqrt(bc2) + eps)
 * bc1 = 1 − β1^t, bc2 = 1 − β2^t with t the 1-based step count; the scalars are formed in double
 * on the host and rounded to float once, as torch's single-tensor path does with Python floats.
 * The compute copy params[i] (ctx->act: f32 on CPU, bf16 on CUDA, rounded to nearest even) is
 * written from the new master; params may equal master on CPU (then it is not written twice).
 * Padding elements (gradient 0, master 0, moments 0) stay 0. */
#ifndef QIE_KERNELS_ADAMW_H
#define QIE_KERNELS_ADAMW_H

#include <stddef.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    float lr_decay;   /* 1 − lr·wd */
    float beta1_c;    /* 1 − β1 */
    float beta2;      /* β2 */
    float beta2_c;    /* 1 − β2 */
    float step_size;  /* lr / bc1 */
    float bc2_sqrt;   /* sqrt(bc2) */
    float eps;
    float grad_scale; /* clipping factor (1: none) */
} AdamWArgs;

/* Fills the float scalars from the hyper-parameters (double, as Python computes them). t >= 1. */
void adamw_args(AdamWArgs *a, double lr, double beta1, double beta2, double eps, double weight_decay, long t,
                double grad_scale);

void adamw_update_cpu(float *master, float *params, const float *grads, float *m, float *v, size_t n,
                      const AdamWArgs *a);
/* Dispatcher: master, m, v, grads f32 and params act, all on ctx's device. */
void op_adamw_update(OpCtx *c, float *master, void *params, const float *grads, float *m, float *v, size_t n,
                     const AdamWArgs *a);
/* The same with gradients of dtype gdt (QIE_DT_F32 or QIE_DT_BF16: the trainer's bf16 gradient
 * shard, widened exactly to f32 before the formula above). */
void op_adamw_update_dt(OpCtx *c, float *master, void *params, const void *grads, QieDtype gdt, float *m, float *v,
                        size_t n, const AdamWArgs *a);
#ifdef QIE_CUDA
void adamw_update(OpCtx *c, float *master, void *params, const void *grads, QieDtype gdt, float *m, float *v,
                  size_t n, const AdamWArgs *a);
#endif

#ifdef __cplusplus
}
#endif
#endif
