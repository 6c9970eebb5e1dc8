/* vae.h: the Qwen-Image VAE encoder (AutoencoderKLQwenImage, spec/model.md §2) for still images,
 * written once against kernels/ops.h: fp32 on the CPU (the reference CI runs), bf16 with fp32
 * accumulation on CUDA.
 *
 * What it is: the encoder + quant_conv as the 2-D network of spec §2.4 (each 3×3×3 causal conv
 * reduced at load time to its last temporal tap, each 1×1×1 conv to its centre, time_conv never
 * loaded), on NHWC activations, and the posterior split of §2.5 (mean, logvar clamped to
 * [-30, 20]). What it is not: video (several frames), the decoder, tiling, attn_scales other than
 * [] (the mid-block attention is the only one; no released config has others).
 *
 * Files: vae_config.c (config.json, cJSON), vae_weights.c (the parameter table, ONE contiguous
 * parameter buffer, safetensors loading), vae_forward.c (buffers and the forward pass).
 *
 * defines: VaeConfig, VaeModel, VaeTapFn, vae_config_default/load, vae_load, vae_create_random,
 *          vae_destroy, vae_encode, vae_normalize, vae_set_tap and accessors */
#ifndef QIE_COMMON_VAE_H
#define QIE_COMMON_VAE_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VAE_MAX_LEVELS 8
#define VAE_MAX_Z 64
/* conv_in's input channels are padded to this with zeros so that its GEMM K (9·8) is aligned */
#define VAE_CIN_PAD 8

typedef struct {
    int base_dim;                          /* 96 */
    int z_dim;                             /* 16: the encoder emits 2·z_dim channels */
    int ndim_mult;                         /* len(dim_mult), 4 */
    int dim_mult[VAE_MAX_LEVELS];          /* 1, 2, 4, 4 */
    int num_res_blocks;                    /* 2 */
    int temperal_downsample[VAE_MAX_LEVELS]; /* F, T, T: ndim_mult - 1 entries (names only) */
    int input_channels;                    /* 3 */
    float latents_mean[VAE_MAX_Z];         /* z_dim values (0 when config.json has none) */
    float latents_std[VAE_MAX_Z];          /* z_dim values (1 when config.json has none) */
} VaeConfig;

typedef struct VaeModel VaeModel;

/* Debug tap: called after named points of the forward with the activation act [B, h, w, C]
 * (device memory on CUDA, ctx->act). Names: "conv_in", "down.<i>", "mid", "enc_out",
 * "quant_conv" (scripts/golden/vae.py dumps the same points as inter.<name>). */
typedef void (*VaeTapFn)(void *user, const char *name, const void *act, int B, int h, int w, int C);

/* The real Qwen-Image config (spec §2.1). */
void vae_config_default(VaeConfig *cfg);
/* Parses a diffusers config.json (AutoencoderKLQwenImage keys). QIE_EFORMAT for malformed
 * JSON or a key of the wrong type/range, QIE_EUNSUPPORTED for attn_scales other than [] or
 * more than 8 input channels, an errno when the file cannot be read. */
int vae_config_load(char *err, const char *path, VaeConfig *cfg);
/* Spatial factor 2^(ndim_mult-1): input sides must be multiples of it. */
int vae_config_factor(const VaeConfig *cfg);

/* Loads the VAE from `dir`: a model folder holding vae/ (config.json + safetensors, single file
 * or sharded), or that vae/ folder itself. Weights may be bf16, f16 or f32. The model keeps a
 * pointer to ctx, which must outlive it. *out must be NULL; free with vae_destroy.
 * Errors: those of vae_config_load and st_model_open, QIE_ENOTFOUND (a tensor is missing),
 * QIE_EMISMATCH (a tensor has another shape), QIE_EUNSUPPORTED (a dtype other than bf16/f16/f32). */
int vae_load(char *err, OpCtx *ctx, const char *dir, VaeModel **out);
/* A model with seeded random weights in the real shapes (for benchmarks): conv weights
 * N(0, 1/fan_in), biases N(0, 0.01), gammas 1 + N(0, 0.01) (Philox, kernels/rng.h). */
int vae_create_random(char *err, OpCtx *ctx, const VaeConfig *cfg, uint64_t seed, VaeModel **out);
/* Frees the model, its parameter buffer and its activation buffers; NULL-safe, nulls *m. */
void vae_destroy(VaeModel **m);

/* Borrowed, valid until vae_destroy. */
const VaeConfig *vae_config(const VaeModel *m);
/* Parameters actually used (2-D effective, without the zero padding of conv_in's channels). */
size_t vae_param_count(const VaeModel *m);
/* Hex FNV-1a 64 of the stored bytes of every tensor the encoder reads, in table order ("random"
 * for vae_create_random): the cache's cfg.vae_hash. Borrowed. */
const char *vae_weights_hash(const VaeModel *m);

/* Encodes B images of one size.
 *   pixels  host f32 [B, 3, H, W] in [-1, 1] (exact bf16 values when the reference rounds its
 *           input to bf16; they are rounded to bf16 on CUDA in any case)
 *   mean    host f32 [B, z, H/f, W/f]        (f = vae_config_factor)
 *   logvar  host f32 [B, z, H/f, W/f], clamped to [-30, 20]
 * H and W must be positive multiples of f (QIE_EINVAL otherwise). Activation buffers grow to
 * the largest B·H·W seen (failure to allocate is fatal, like op_alloc). Synchronous. */
int vae_encode(char *err, VaeModel *m, const float *pixels, int B, int H, int W, float *mean, float *logvar);

/* latents[b,c,p] = (mean[b,c,p] - latents_mean[c]) / latents_std[c] (spec §2.5), in fp32:
 * the normalised latent the DiT sees. latents may alias mean. */
void vae_normalize(const VaeConfig *cfg, float *latents, const float *mean, int B, int hw);

/* Installs (fn != NULL) or removes the debug tap. */
void vae_set_tap(VaeModel *m, VaeTapFn fn, void *user);

#ifdef __cplusplus
}
#endif
#endif
