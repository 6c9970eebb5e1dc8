/* vae_ops.h: the VAE encoder's ops other than convolution (conv2d.h): the channel RMS norm
 * (+ fused SiLU), the single-head mid-block attention, the NCHW -> NHWC input transpose and
 * the posterior split. CPU fp32 references and dispatchers in vae_ops.c; CUDA twins in
 * vae_ops.cu (bf16 activations, fp32 arithmetic inside each op). Activations are NHWC, i.e.
 * [M pixels, C channels] rows, so "per pixel over the channels" is per row.
 *
 * defines: op_rmsnorm_channels, op_vae_attention, op_vae_attention_workspace, op_nchw_to_nhwc,
 *          op_vae_posterior (+ their _cpu references) */
#ifndef QIE_KERNELS_VAE_OPS_H
#define QIE_KERNELS_VAE_OPS_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* QwenImageRMS_norm (spec/model.md §2.2), per row of inp [M, C]:
 *   y = x / max(‖x‖₂, 1e-12) · sqrt(C) · gamma[c],  then SiLU(y) when silu != 0.
 * On CUDA the rounding steps of the bf16 reference are kept: the L2 normalisation in fp32 rounded
 * to bf16, then ·sqrt(C) rounded, ·gamma rounded, SiLU rounded (autoencoder_kl_qwenimage.py
 * QwenImageRMS_norm.forward). out may alias inp. gamma is act [C]. */
void rmsnorm_channels_forward_cpu(float *out, const float *inp, const float *gamma, int M, int C, int silu);
void op_rmsnorm_channels(OpCtx *c, void *out, const void *inp, const void *gamma, int M, int C, int silu);

/* QwenImageAttentionBlock's core (single head, no mask, scale 1/sqrt(C)), per image b:
 *   qkv act [B, N, 3C]: q = columns [0,C), k = [C,2C), v = [2C,3C) of each row (token = pixel)
 *   out act [B, N, C] = softmax(q·kᵀ/sqrt(C)) · v
 * CUDA: scores for a sub-chunk of query rows in fp32 (cuBLASLt; sized to about a third of L2 so the
 * softmax reads them from L2), softmax in fp32 rounded to bf16 (as flash attention's P) into a
 * block of P rows, then P·V for the block with fp32 accumulation; ws holds one sub-chunk of fp32
 * scores and one block of P: op_vae_attention_workspace(N) bytes at least (one query row), more
 * makes blocks larger. */
void vae_attention_forward_cpu(float *out, const float *qkv, int B, int N, int C);
size_t op_vae_attention_workspace(const OpCtx *c, int N);
void op_vae_attention(OpCtx *c, void *out, const void *qkv, int B, int N, int C, void *ws, size_t ws_bytes);

/* out act [B, HW, Cpad] = inp act [B, C, HW] transposed; channels C..Cpad-1 are zero (padding
 * the input channels lets conv_in's GEMM have an aligned K; zero taps add exactly nothing). */
void nchw_to_nhwc_cpu(float *out, const float *inp, int B, int C, int HW, int Cpad);
void op_nchw_to_nhwc(OpCtx *c, void *out, const void *inp, int B, int C, int HW, int Cpad);

/* DiagonalGaussianDistribution's split (diffusers models/autoencoders/vae.py), NHWC -> NCHW:
 *   inp act [B, HW, 2z];  mean f32 [B, z, HW] = channels [0,z);
 *   logvar f32 [B, z, HW] = clamp(channels [z,2z), -30, 20). mean/logvar: device f32 buffers. */
void vae_posterior_cpu(float *mean, float *logvar, const float *inp, int B, int HW, int z);
void op_vae_posterior(OpCtx *c, float *mean, float *logvar, const void *inp, int B, int HW, int z);

#ifdef QIE_CUDA
void rmsnorm_channels_forward(OpCtx *c, void *out, const void *inp, const void *gamma, int M, int C, int silu);
void vae_attention_forward(OpCtx *c, void *out, const void *qkv, int B, int N, int C, void *ws, size_t ws_bytes);
void nchw_to_nhwc_forward(OpCtx *c, void *out, const void *inp, int B, int C, int HW, int Cpad);
void vae_posterior_forward(OpCtx *c, float *mean, float *logvar, const void *inp, int B, int HW, int z);
/* The encoder's transfers through one pinned host staging buffer *pin of *pin_bytes (grown when
 * needed; release with vae_pinned_free):
 *   vae_upload_pixels_forward: host f32 [n] -> device bf16 [n], converted on the host (round to
 *     nearest even as op_upload_act's device conversion, NaN -> 0x7fff as __float2bfloat16_rn) in
 *     chunks whose copies overlap the conversion of the next; asynchronous on c's stream.
 *   vae_download_pair_forward: device f32 d0, d1 [n] -> host h0, h1; returns synchronised. */
void vae_upload_pixels_forward(OpCtx *c, void *d_dst, const float *h_src, size_t n, void **pin, size_t *pin_bytes);
void vae_download_pair_forward(OpCtx *c, float *h0, const float *d0, float *h1, const float *d1, size_t n, void **pin,
                               size_t *pin_bytes);
void vae_pinned_free(void *pin);
#endif

#ifdef __cplusplus
}
#endif
#endif
