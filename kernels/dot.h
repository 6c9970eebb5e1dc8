/* dot.h: the fp32 dot product of the CPU reference ops. Eight partial sums let gcc vectorise it
 * without -ffast-math; the summation order is fixed, so results are reproducible. */
#ifndef QIE_KERNELS_DOT_H
#define QIE_KERNELS_DOT_H

static inline float dot_f32(const float *a, const float *b, int K) {
    float s[8] = {0};
    int k = 0;
    for (; k + 8 <= K; k += 8)
        for (int l = 0; l < 8; l++) s[l] += a[k + l] * b[k + l];
    float t = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; k < K; k++) t += a[k] * b[k];
    return t;
}

#endif
