/* global_norm.c: the reference of op_global_norm_squared and its dispatcher. Four double partial
 * sums keep the loop vectorisable without changing the order between runs. */
#include "global_norm.h"

double global_norm_squared_cpu(const float *x, size_t n) {
    double s[4] = {0, 0, 0, 0};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int l = 0; l < 4; l++) s[l] += (double)x[i + l] * (double)x[i + l];
    for (; i < n; i++) s[0] += (double)x[i] * (double)x[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

double op_global_norm_squared(OpCtx *c, float *scratch, const float *x, size_t n) {
#ifdef QIE_CUDA
    if (c->dev == QIE_DEV_CUDA) return global_norm_squared(c, scratch, x, n);
#endif
    (void)c;
    (void)scratch;
    return global_norm_squared_cpu(x, n);
}
