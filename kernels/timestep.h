/* timestep.h: the 256-channel timestep sinusoid of QwenTimestepProjEmbeddings (diffusers
 * Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0, scale=1000); spec/model.md 1.5):
 *     ω_j = exp(fp32(−ln 10000 · j) / 128),  a_j = 1000 · (t · ω_j),  out = [cos a | sin a]
 * t arrives from the host (the trainer draws σ there), so the sinusoid is computed on the host in
 * fp32 and uploaded as act; there is no CUDA kernel for 256·B numbers.
 * defines: QIE_TSTEP_CH, timestep_sinusoid_cpu, op_timestep_sinusoid */
#ifndef QIE_KERNELS_TIMESTEP_H
#define QIE_KERNELS_TIMESTEP_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QIE_TSTEP_CH 256

/* out f32 [n, 256] (host). t: n timesteps as given (already rounded to the act dtype by the caller). */
void timestep_sinusoid_cpu(float *out, const float *t, int n);
/* d_out act [n, 256] on the ctx's device; h_t host. */
void op_timestep_sinusoid(OpCtx *c, void *d_out, const float *h_t, int n);

#ifdef __cplusplus
}
#endif
#endif
