/* adamw.c: the fp32 reference of op_adamw_update and its dispatcher (adamw.h has the formula).
 * The statement order follows torch/optim/adamw.py `_single_tensor_adam` (weight decay first,
 * then the moments, then addcdiv), so that the CPU result matches torch.optim.AdamW on fp32
 * CPU tensors to the last bit in most elements (tests/test_train.c measures it). */
#include "adamw.h"

#include <math.h>
#include <stdint.h>

#include "dtype.h"

void adamw_args(AdamWArgs *a, double lr, double beta1, double beta2, double eps, double weight_decay, long t,
                double grad_scale) {
    double bc1 = 1.0 - pow(beta1, (double)t), bc2 = 1.0 - pow(beta2, (double)t);
    a->lr_decay = (float)(1.0 - lr * weight_decay);
    a->beta1_c = (float)(1.0 - beta1);
    a->beta2 = (float)beta2;
    a->beta2_c = (float)(1.0 - beta2);
    a->step_size = (float)(lr / bc1);
    a->bc2_sqrt = (float)sqrt(bc2);
    a->eps = (float)eps;
    a->grad_scale = (float)grad_scale;
}

void adamw_update_cpu(float *master, float *params, const float *grads, float *m, float *v, size_t n,
                      const AdamWArgs *a) {
    const float scale = a->grad_scale;
    for (size_t i = 0; i < n; i++) {
        float g = scale == 1.0f ? grads[i] : grads[i] * scale;
        float p = master[i] * a->lr_decay;
        float mi = m[i] + a->beta1_c * (g - m[i]);
        float vi = v[i] * a->beta2 + (a->beta2_c * g) * g;
        float denom = sqrtf(vi) / a->bc2_sqrt + a->eps;
        p = p + (-a->step_size) * (mi / denom);
        m[i] = mi;
        v[i] = vi;
        master[i] = p;
        if (params && params != master) params[i] = p;
    }
}

void op_adamw_update(OpCtx *c, float *master, void *params, const float *grads, float *m, float *v, size_t n,
                     const AdamWArgs *a) {
    op_adamw_update_dt(c, master, params, grads, QIE_DT_F32, m, v, n, a);
}

void op_adamw_update_dt(OpCtx *c, float *master, void *params, const void *grads, QieDtype gdt, float *m, float *v,
                        size_t n, const AdamWArgs *a) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { adamw_update(c, master, params, grads, gdt, m, v, n, a); return; }
#endif
    (void)c;
    if (gdt == QIE_DT_F32) {
        adamw_update_cpu(master, (float *)params, grads, m, v, n, a);
        return;
    }
    float g[1024]; /* bf16 gradients widened a chunk at a time */
    const uint16_t *gb = grads;
    for (size_t i = 0; i < n; i += 1024) {
        size_t k = n - i < 1024 ? n - i : 1024;
        for (size_t j = 0; j < k; j++) g[j] = bf16_to_f32(gb[i + j]);
        adamw_update_cpu(master + i, params ? (float *)params + i : NULL, g, m + i, v + i, k, a);
    }
}
