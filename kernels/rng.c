/* rng.c: CPU reference fills from Philox streams (see rng.h). */
#include "rng.h"
#include "philox.h"
#include "err.h"

#include <math.h>

uint32_t rng_u32_at(uint64_t seed, uint64_t subseq, uint64_t i) {
    return philox_block(seed, subseq, i / 4).v[i % 4];
}

int rng_uniform_cpu(float *out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset) {
    if (offset % 4) return QIE_EINVAL;
    for (size_t i = 0; i < n; i += 4) {
        Philox4 b = philox_block(seed, subseq, (offset + i) / 4);
        for (size_t l = 0; l < 4 && i + l < n; l++) out[i + l] = philox_u01(b.v[l]);
    }
    return 0;
}

/* Box-Muller: u1 in (0, 1] keeps log finite. Written with the float functions CUDA has. */
static inline void box_muller_(uint32_t a, uint32_t b, float *z0, float *z1) {
    float u1 = 1.0f - philox_u01(a), u2 = philox_u01(b);
    float r = sqrtf(-2.0f * logf(u1)), th = 6.2831853071795864f * u2;
    *z0 = r * cosf(th);
    *z1 = r * sinf(th);
}

int rng_normal_cpu(float *out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset) {
    if (offset % 4) return QIE_EINVAL;
    for (size_t i = 0; i < n; i += 4) {
        Philox4 b = philox_block(seed, subseq, (offset + i) / 4);
        float z[4];
        box_muller_(b.v[0], b.v[1], &z[0], &z[1]);
        box_muller_(b.v[2], b.v[3], &z[2], &z[3]);
        for (size_t l = 0; l < 4 && i + l < n; l++) out[i + l] = z[l];
    }
    return 0;
}
