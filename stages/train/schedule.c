/* schedule.c: the scalar schedules of a step: LR multipliers (diffusers get_scheduler), the
 * clipping threshold (VideoX-Fun train_edit.py, plain backend), the σ grid with dynamic shift
 * (FlowMatchEulerDiscreteScheduler), the timestep densities and loss weights (diffusers
 * training_utils). Float widths follow the reference: Python doubles stay double, numpy float32
 * arrays are float. */
#include <math.h>
#include <string.h>

#include "err.h"
#include "train.h"

int sch_parse_lr(const char *s, LrSchedule *out) {
    static const char *names[] = {"constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts",
                                  "polynomial"};
    for (int i = 0; i < (int)(sizeof names / sizeof *names); i++)
        if (!strcmp(s, names[i])) {
            *out = (LrSchedule)i;
            return 0;
        }
    return QIE_EINVAL;
}

int sch_parse_weighting(const char *s, WeightingScheme *out) {
    static const char *names[] = {"none", "sigma_sqrt", "logit_normal", "mode", "cosmap"};
    for (int i = 0; i < (int)(sizeof names / sizeof *names); i++)
        if (!strcmp(s, names[i])) {
            *out = (WeightingScheme)i;
            return 0;
        }
    return QIE_EINVAL;
}

/* diffusers optimization.py, the lr_lambda of each get_*_schedule_with_warmup */
double sch_lr_lambda(LrSchedule s, int64_t n, int64_t W, int64_t M, double base_lr) {
    double cur = (double)n, w = (double)W, m = (double)M;
    if (s == LRS_CONSTANT) return 1.0;
    if (n < W) return cur / (w > 1.0 ? w : 1.0);
    double progress = (cur - w) / ((m - w) > 1.0 ? (m - w) : 1.0);
    switch (s) {
    case LRS_CONSTANT_WITH_WARMUP:
        return 1.0;
    case LRS_LINEAR: {
        double r = (m - cur) / ((m - w) > 1.0 ? (m - w) : 1.0);
        return r > 0.0 ? r : 0.0;
    }
    case LRS_COSINE: { /* num_cycles 0.5 */
        double r = 0.5 * (1.0 + cos(M_PI * 0.5 * 2.0 * progress));
        return r > 0.0 ? r : 0.0;
    }
    case LRS_COSINE_WITH_RESTARTS: { /* num_cycles 1 */
        if (progress >= 1.0) return 0.0;
        double r = 0.5 * (1.0 + cos(M_PI * fmod(1.0 * progress, 1.0)));
        return r > 0.0 ? r : 0.0;
    }
    case LRS_POLYNOMIAL: { /* lr_end 1e-7, power 1 */
        const double lr_end = 1e-7;
        if (n > M) return lr_end / base_lr;
        double decay_steps = m - w, pct_remaining = 1.0 - (cur - w) / decay_steps;
        return ((base_lr - lr_end) * pct_remaining + lr_end) / base_lr;
    }
    default:
        return 1.0;
    }
}

double sch_clip_threshold(double max_grad_norm, double ratio, int64_t start, int64_t step, double norm) {
    /* train_edit.py linear_decay(max·ratio, max, start, global_step) */
    double c0 = max_grad_norm * ratio, c;
    if (step >= start) {
        c = max_grad_norm;
    } else {
        int64_t s = step > 0 ? step : 0;
        c = c0 + (max_grad_norm - c0) / (double)start * (double)s;
    }
    if (norm / c > 5.0 && step > start) {
        double r = norm / c;
        c = c / (r < 10.0 ? r : 10.0);
    }
    return c;
}

/* FlowMatchEulerDiscreteScheduler config of Qwen-Image-Edit (scheduler_config.json) */
#define SCH_BASE_SEQ 256
#define SCH_MAX_SEQ 8192
#define SCH_BASE_SHIFT 0.5
#define SCH_MAX_SHIFT 0.9
#define SCH_SHIFT_TERMINAL 0.02
#define SCH_NUM_TRAIN_TIMESTEPS 1000

double sch_mu(int64_t seq_len) { /* calculate_shift */
    double m = (SCH_MAX_SHIFT - SCH_BASE_SHIFT) / (SCH_MAX_SEQ - SCH_BASE_SEQ);
    double b = SCH_BASE_SHIFT - m * SCH_BASE_SEQ;
    return (double)seq_len * m + b;
}

void sch_sigmas(float *sigmas, float *timesteps, int T, int64_t seq_len) {
    /* np.linspace(1.0, 1/T, T) in float64, then astype(float32) */
    double start = 1.0, stop = 1.0 / T, step = T > 1 ? (stop - start) / (T - 1) : 0.0;
    for (int i = 0; i < T; i++) sigmas[i] = (float)(i == T - 1 && T > 1 ? stop : start + i * step);
    /* _time_shift_exponential(mu, 1.0, t) = e^mu / (e^mu + (1/t - 1)^1), numpy float32 */
    float e = (float)exp(sch_mu(seq_len));
    for (int i = 0; i < T; i++) sigmas[i] = e / (e + (1.0f / sigmas[i] - 1.0f));
    /* stretch_shift_to_terminal */
    float scale = (1.0f - sigmas[T - 1]) / (float)(1.0 - SCH_SHIFT_TERMINAL);
    for (int i = 0; i < T; i++) sigmas[i] = 1.0f - (1.0f - sigmas[i]) / scale;
    for (int i = 0; i < T; i++) timesteps[i] = sigmas[i] * (float)SCH_NUM_TRAIN_TIMESTEPS;
}

double sch_density(WeightingScheme ws, double u0, double z, double logit_mean, double logit_std, double mode_scale) {
    switch (ws) {
    case WS_LOGIT_NORMAL: {
        double x = logit_mean + logit_std * z;
        return 1.0 / (1.0 + exp(-x));
    }
    case WS_MODE: {
        double c = cos(M_PI * u0 / 2.0);
        return 1.0 - u0 - mode_scale * (c * c - 1.0 + u0);
    }
    default:
        return u0;
    }
}

float sch_weight(WeightingScheme ws, float sigma) {
    if (ws == WS_SIGMA_SQRT) return powf(sigma, -2.0f);
    if (ws == WS_COSMAP) {
        float bot = (1.0f - 2.0f * sigma) + 2.0f * (sigma * sigma); /* 1 - 2*s + 2*s**2 */
        return 2.0f / ((float)M_PI * bot);
    }
    return 1.0f;
}
