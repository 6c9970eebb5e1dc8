/* timestep.c: the timestep sinusoid (host fp32, then uploaded). Follows diffusers
 * get_timestep_embedding step by step so fp32 rounding matches: exponent in fp32, divided by
 * half_dim; exp; t·ω; ·scale; [sin | cos] flipped to [cos | sin]. */
#include <math.h>
#include <stdlib.h>

#include "timestep.h"

void timestep_sinusoid_cpu(float *out, const float *t, int n) {
    const int half = QIE_TSTEP_CH / 2;
    const float neg_log = -logf(10000.0f); /* -math.log(10000) rounded to fp32 by torch */
    for (int i = 0; i < n; i++)
        for (int j = 0; j < half; j++) {
            float e = (neg_log * (float)j) / (float)half;
            float a = 1000.0f * (t[i] * expf(e));
            out[(size_t)i * QIE_TSTEP_CH + j] = cosf(a);
            out[(size_t)i * QIE_TSTEP_CH + half + j] = sinf(a);
        }
}

void op_timestep_sinusoid(OpCtx *c, void *d_out, const float *h_t, int n) {
    float *tmp = malloc(sizeof(float) * (size_t)n * QIE_TSTEP_CH);
    if (!tmp) abort();
    timestep_sinusoid_cpu(tmp, h_t, n);
    op_upload_act(c, d_out, tmp, (size_t)n * QIE_TSTEP_CH);
    free(tmp);
}
