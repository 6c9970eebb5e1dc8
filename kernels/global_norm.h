/* global_norm.h: Σ x² over an f32 buffer (the gradients), the building block of gradient-norm
 * clipping: the trainer sums the squares of every trainable segment (and, distributed, of every
 * shard) before the square root. CPU reference in global_norm.c, CUDA twin in global_norm.cu.
 *
 * Deterministic on both backends: the CPU sums in double in index order; the CUDA launcher uses
 * a fixed grid of GLOBAL_NORM_BLOCKS blocks (partials in a fixed order, then one block sums
 * them), never atomics, so the same gradients give the same norm bit for bit on every run
 * (exact resume needs it). */
#ifndef QIE_KERNELS_GLOBAL_NORM_H
#define QIE_KERNELS_GLOBAL_NORM_H

#include <stddef.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define GLOBAL_NORM_BLOCKS 512

double global_norm_squared_cpu(const float *x, size_t n);

/* Σ x[i]² for x on ctx's device, returned on the host (synchronises the stream on CUDA).
 * scratch: f32 [GLOBAL_NORM_BLOCKS + 1] on ctx's device (unused on CPU; may be NULL there). */
double op_global_norm_squared(OpCtx *c, float *scratch, const float *x, size_t n);
/* The same over x of dtype dt (QIE_DT_F32 or QIE_DT_BF16), each element widened exactly. */
double op_global_norm_squared_dt(OpCtx *c, float *scratch, const void *x, QieDtype dt, size_t n);
#ifdef QIE_CUDA
double global_norm_squared(OpCtx *c, float *scratch, const void *x, QieDtype dt, size_t n);
#endif

#ifdef __cplusplus
}
#endif
#endif
