/* global_norm.c: the reference of op_global_norm_squared and its dispatcher. Four double partial
 * sums keep the loop vectorisable without changing the order between runs. */
#include "global_norm.h"

#include <stdint.h>

#include "dtype.h"

double global_norm_squared_cpu(const float *x, size_t n) {
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) s[l] += (double)x[i + l] * (double)x[i + l];
    for (; i < n; i++) s[0] += (double)x[i] * (double)x[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

double op_global_norm_squared(OpCtx *c, float *scratch, const float *x, size_t n) {
    return op_global_norm_squared_dt(c, scratch, x, QIE_DT_F32, n);
}

double op_global_norm_squared_dt(OpCtx *c, float *scratch, const void *x, QieDtype dt, size_t n) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) return global_norm_squared(c, scratch, x, dt, n);
#endif
    (void)c;
    (void)scratch;
    if (dt == QIE_DT_F32) return global_norm_squared_cpu(x, n);
    double s = 0.0;
    const uint16_t *b = x;
    for (size_t i = 0; i < n; i++) {
        double v = bf16_to_f32(b[i]);
        s += v * v;
    }
    return s;
}
