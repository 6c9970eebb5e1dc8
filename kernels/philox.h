/* philox.h: Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC11),
 * the counter-based generator qie uses everywhere a draw must be reproducible on CPU and GPU.
 * One definition compiled by both gcc and nvcc, so the 32-bit stream is identical by
 * construction (tests check the Random123 known-answer vectors).
 *
 * A stream is (seed, subsequence); element i of it is lane i%4 of the block at counter
 * {i/4 + offset_lo, offset_hi, subseq_lo, subseq_hi} under key {seed_lo, seed_hi}. */
#ifndef QIE_KERNELS_PHILOX_H
#define QIE_KERNELS_PHILOX_H

#include <stdint.h>

#ifdef __CUDACC__
#define QIE_HD __host__ __device__ __forceinline__
#else
#define QIE_HD static inline
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

typedef struct {
    uint32_t v[4];
} Philox4;

QIE_HD void philox_round_(uint32_t c[4], const uint32_t k[2]) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * c[0], p1 = (uint64_t)PHILOX_M1 * c[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0, hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c[1] ^ k[0], n2 = hi0 ^ c[3] ^ k[1];
    c[0] = n0;
    c[1] = lo1;
    c[2] = n2;
    c[3] = lo0;
}

/* The raw block function: 10 rounds. */
QIE_HD Philox4 philox4x32_10(const uint32_t ctr[4], const uint32_t key[2]) {
    uint32_t c[4] = {ctr[0], ctr[1], ctr[2], ctr[3]}, k[2] = {key[0], key[1]};
    for (int r = 0; r < 10; r++) {
        philox_round_(c, k);
        if (r < 9) {
            k[0] += PHILOX_W0;
            k[1] += PHILOX_W1;
        }
    }
    Philox4 out = {{c[0], c[1], c[2], c[3]}};
    return out;
}

/* Block `block` of stream (seed, subseq). */
QIE_HD Philox4 philox_block(uint64_t seed, uint64_t subseq, uint64_t block) {
    uint32_t ctr[4] = {(uint32_t)block, (uint32_t)(block >> 32), (uint32_t)subseq, (uint32_t)(subseq >> 32)};
    uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    return philox4x32_10(ctr, key);
}

/* 24 random bits -> float in [0, 1), exactly representable, the same on every device. */
QIE_HD float philox_u01(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

#endif
