/* objective.c: the flow-matching objective of one sample (trainer_behaviour.md §4.2, §4.7;
 * model.md §1.3, §2.5), as VideoX-Fun train_edit.py computes it. The arithmetic is the op family
 * kernels/objective.{h,c,cu}: these are its CPU reference pieces under the trainer's names (the
 * step itself runs the fused op_objective_* on the trainer's device, train_loop.c). */
#include "objective.h"
#include "train.h"

void obj_pack(float *out, const float *z, int C, int h, int w) { objective_pack_cpu(out, z, C, h, w); }

void obj_latent(float *out, const float *mean, const float *logvar, const float *eps, int C, int h, int w) {
    objective_latent_cpu(out, mean, logvar, eps, C, h, w);
}

void obj_round(float *x, size_t n, int round) { objective_round_cpu(x, n, round); }

void obj_noisy(float *xs, float *v, const float *x0, const float *eps, float sigma, size_t n, int round) {
    objective_noisy_cpu(xs, v, x0, eps, sigma, n, round);
}

double obj_loss(float *d_pred, const float *pred, const float *v, float w, size_t n, float scale) {
    return objective_loss_cpu(d_pred, pred, v, w, n, scale);
}
