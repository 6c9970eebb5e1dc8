/* objective.c: the fp32 reference of the objective ops and their dispatchers (objective.h has the
 * formulas). The pieces are the trainer's original host code; the fused per-image ops evaluate
 * the same per-element expressions (the static inline helpers below, shared by both), so
 * objective_target_cpu equals latent -> round -> pack -> round(noise) -> noisy bit for bit. */
#include "objective.h"

#include <math.h>
#include <string.h>

#include "dtype.h"

/* Qwen-Image VAE config latents_mean / latents_std (trainer_behaviour.md §4.1) */
static const double lat_mean_[OBJECTIVE_LATENT_CH] = {-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653,
                                                      -0.1517, 1.5508,  0.4134,  -0.0715, 0.5517,  -0.3632,
                                                      -0.1922, -0.9497, 0.2503,  -0.2921};
static const double lat_std_[OBJECTIVE_LATENT_CH] = {2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                                                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160};

void objective_norm_consts(float mu[OBJECTIVE_LATENT_CH], float inv[OBJECTIVE_LATENT_CH]) {
    /* torch.tensor(list) is float32; the trainer multiplies by 1/std formed in float32 */
    for (int c = 0; c < OBJECTIVE_LATENT_CH; c++) {
        mu[c] = (float)lat_mean_[c];
        inv[c] = 1.0f / (float)lat_std_[c];
    }
}

static inline float latent_(float mean, float logvar, float eps, float mu, float inv) {
    float lv = logvar < -30.0f ? -30.0f : logvar > 20.0f ? 20.0f : logvar;
    float z = mean + expf(0.5f * lv) * eps;
    return (z - mu) * inv;
}

static inline float r_(float x, int round) { return round ? bf16_to_f32(f32_to_bf16(x)) : x; }

/* index into [C, h, w] of packed element (token, feature) */
static inline size_t unpack_(size_t tok, int f, int h, int w) {
    const int wp = w / 2, c = f / 4, dy = (f / 2) & 1, dx = f & 1;
    const size_t y2 = tok / (size_t)wp, x2 = tok % (size_t)wp;
    return ((size_t)c * h + 2 * y2 + dy) * w + 2 * x2 + dx;
}

void objective_pack_cpu(float *out, const float *z, int C, int h, int w) {
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

void objective_latent_cpu(float *out, const float *mean, const float *logvar, const float *eps, int C, int h, int w) {
    float mu[OBJECTIVE_LATENT_CH], inv[OBJECTIVE_LATENT_CH];
    objective_norm_consts(mu, inv);
    const size_t hw = (size_t)h * w;
    for (int c = 0; c < C; c++)
        for (size_t i = c * hw; i < (c + 1) * hw; i++)
            out[i] = latent_(mean[i], logvar[i], eps[i], mu[c % OBJECTIVE_LATENT_CH], inv[c % OBJECTIVE_LATENT_CH]);
}

void objective_round_cpu(float *x, size_t n, int round) {
    if (round)
        for (size_t i = 0; i < n; i++) x[i] = r_(x[i], 1);
}

static inline void noisy_(float *xs, float *v, float x0, float eps, float a, float sigma, int round) {
    *xs = r_(r_(a * x0, round) + r_(sigma * eps, round), round);
    *v = r_(eps - x0, round);
}

void objective_noisy_cpu(float *xs, float *v, const float *x0, const float *eps, float sigma, size_t n, int round) {
    const float a = r_(1.0f - sigma, round);
    for (size_t i = 0; i < n; i++) noisy_(&xs[i], &v[i], x0[i], eps[i], a, sigma, round);
}

double objective_loss_cpu(float *d_pred, const float *pred, const float *v, float w, size_t n, float scale) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) {
        float e = pred[i] - v[i];
        float m = fabsf(e) <= 50.0f ? 1.0f : 0.0f; /* masked but still counted in the mean [Q 9] */
        s += (double)(e * e * m * w);              /* NaN·0 stays NaN, as in torch: a NaN is never hidden */
        d_pred[i] = 2.0f * w * m * e * scale;
    }
    return s;
}

void objective_source_cpu(float *x, const float *mean, const float *logvar, const float *eps, int C, int h, int w,
                          int round) {
    float mu[OBJECTIVE_LATENT_CH], inv[OBJECTIVE_LATENT_CH];
    objective_norm_consts(mu, inv);
    const int F = 4 * C;
    const size_t N = (size_t)(h / 2) * (w / 2);
    for (size_t t = 0; t < N; t++)
        for (int f = 0; f < F; f++) {
            size_t i = unpack_(t, f, h, w);
            int c = (f / 4) % OBJECTIVE_LATENT_CH;
            x[t * F + f] = r_(latent_(mean[i], logvar[i], eps[i], mu[c], inv[c]), round);
        }
}

void objective_target_cpu(float *xs, float *v, const float *mean, const float *logvar, const float *eps,
                          const float *noise, float sigma, int C, int h, int w, int round) {
    float mu[OBJECTIVE_LATENT_CH], inv[OBJECTIVE_LATENT_CH];
    objective_norm_consts(mu, inv);
    const int F = 4 * C;
    const size_t N = (size_t)(h / 2) * (w / 2);
    const float a = r_(1.0f - sigma, round);
    for (size_t t = 0; t < N; t++)
        for (int f = 0; f < F; f++) {
            size_t i = unpack_(t, f, h, w), o = t * F + f;
            int c = (f / 4) % OBJECTIVE_LATENT_CH;
            float x0 = r_(latent_(mean[i], logvar[i], eps[i], mu[c], inv[c]), round);
            noisy_(&xs[o], &v[o], x0, r_(noise[o], round), a, sigma, round);
        }
}

/* ---- dispatchers ---- */

void op_objective_source(OpCtx *c, void *x, const float *mean, const float *logvar, const float *eps, int C, int h,
                         int w) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { objective_source(c, x, mean, logvar, eps, C, h, w); return; }
#endif
    objective_source_cpu((float *)x, mean, logvar, eps, C, h, w, c->act == QIE_DT_BF16);
}

void op_objective_target(OpCtx *c, void *xs, float *v, const float *mean, const float *logvar, const float *eps,
                         const float *noise, float sigma, int C, int h, int w) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { objective_target(c, xs, v, mean, logvar, eps, noise, sigma, C, h, w); return; }
#endif
    objective_target_cpu((float *)xs, v, mean, logvar, eps, noise, sigma, C, h, w, c->act == QIE_DT_BF16);
}

void op_objective_loss(OpCtx *c, void *d_pred, const void *pred, const float *v, float w, size_t n, float scale,
                       double div, double *acc, double *scratch) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { objective_loss(c, d_pred, pred, v, w, n, scale, div, acc, scratch); return; }
#endif
    (void)c;
    (void)scratch;
    *acc += objective_loss_cpu((float *)d_pred, (const float *)pred, v, w, n, scale) / div;
}

void op_objective_upload(OpCtx *c, float *d, const float *h, size_t n) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { objective_upload(c, d, h, n); return; }
#endif
    (void)c;
    if (n) memcpy(d, h, n * sizeof *d);
}

void op_objective_read(OpCtx *c, double *h, const double *d, size_t n) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) { objective_read(c, h, d, n); return; }
#endif
    (void)c;
    if (n) memcpy(h, d, n * sizeof *h);
}
