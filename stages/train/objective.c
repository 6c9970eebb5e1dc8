/* objective.c: the flow-matching objective of one sample (trainer_behaviour.md §4.2, §4.7;
 * model.md §1.3, §2.5), as VideoX-Fun train_edit.py computes it. Host code: the tensors involved
 * are the DiT's input and output rows ([N, 64] per image), small next to the model. */
#include <math.h>

#include "dtype.h"
#include "train.h"

/* Qwen-Image VAE config latents_mean / latents_std (trainer_behaviour.md §4.1) */
static const double lat_mean_[TRAIN_LATENT_CH] = {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                                                  0.4134,  -0.0715, 0.5517,  -0.3632, -0.1922, -0.9497, 0.2503, -0.2921};
static const double lat_std_[TRAIN_LATENT_CH] = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                                 3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};

void obj_pack(float *out, const float *z, int C, int h, int w) {
    const int wp = w / 2, F = 4 * C;
    for (int y2 = 0; y2 < h / 2; y2++)
        for (int x2 = 0; x2 < wp; x2++) {
            float *o = out + ((size_t)y2 * wp + x2) * F;
            for (int c = 0; c < C; c++)
                for (int dy = 0; dy < 2; dy++)
                    for (int dx = 0; dx < 2; dx++)
                        o[c * 4 + dy * 2 + dx] = z[((size_t)c * h + 2 * y2 + dy) * w + 2 * x2 + dx];
        }
}

void obj_latent(float *out, const float *mean, const float *logvar, const float *eps, int C, int h, int w) {
    const size_t hw = (size_t)h * w;
    for (int c = 0; c < C; c++) {
        /* torch.tensor(list) is float32; the trainer multiplies by 1/std formed in float32 */
        const float mu = (float)lat_mean_[c % TRAIN_LATENT_CH], inv = 1.0f / (float)lat_std_[c % TRAIN_LATENT_CH];
        for (size_t i = c * hw; i < (c + 1) * hw; i++) {
            float lv = logvar[i] < -30.0f ? -30.0f : logvar[i] > 20.0f ? 20.0f : logvar[i];
            float z = mean[i] + expf(0.5f * lv) * eps[i];
            out[i] = (z - mu) * inv;
        }
    }
}

static inline float r_(float x, int round) { return round ? bf16_to_f32(f32_to_bf16(x)) : x; }

void obj_round(float *x, size_t n, int round) {
    if (round)
        for (size_t i = 0; i < n; i++) x[i] = r_(x[i], 1);
}

void obj_noisy(float *xs, float *v, const float *x0, const float *eps, float sigma, size_t n, int round) {
    const float a = r_(1.0f - sigma, round);
    for (size_t i = 0; i < n; i++) {
        xs[i] = r_(r_(a * x0[i], round) + r_(sigma * eps[i], round), round);
        v[i] = r_(eps[i] - x0[i], round);
    }
}

double obj_loss(float *d_pred, const float *pred, const float *v, float w, size_t n, float scale) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        float e = pred[i] - v[i];
        float m = fabsf(e) <= 50.0f ? 1.0f : 0.0f; /* masked but still counted in the mean [Q 9] */
        s += (double)(e * e * m * w);              /* NaN·0 stays NaN, as in torch: a NaN is never hidden */
        d_pred[i] = 2.0f * w * m * e * scale;
    }
    return s;
}
