/* rng.h: filling buffers from Philox streams (kernels/philox.h). CPU reference in rng.c, CUDA
 * twin in rng.cu. Element i of a fill is element (offset + i) of stream (seed, subseq):
 *   uniform: philox_u01 of the 32-bit value, bit-identical on CPU and GPU;
 *   normal:  Box-Muller on the pair of lanes (0,1) and (2,3) of each block; identical up to the
 *            last-ulp differences of logf/sinf/cosf between libm and CUDA.
 * `offset` must be a multiple of 4 so fills line up with blocks (QIE_EINVAL otherwise). */
#ifndef QIE_KERNELS_RNG_H
#define QIE_KERNELS_RNG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int rng_uniform_cpu(float *out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset);
int rng_normal_cpu(float *out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset);
uint32_t rng_u32_at(uint64_t seed, uint64_t subseq, uint64_t i);

#ifdef QIE_CUDA
/* d_out is device memory; stream is a cudaStream_t (void* keeps CUDA headers out of C files). */
int rng_uniform(float *d_out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset, void *stream);
int rng_normal(float *d_out, size_t n, uint64_t seed, uint64_t subseq, uint64_t offset, void *stream);
#endif

#ifdef __cplusplus
}
#endif
#endif
