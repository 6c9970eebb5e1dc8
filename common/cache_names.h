/* cache_names.h: the tensor and attr names that the stages and the latent cache agree on.
 *
 * Every stage that produces or consumes cached tensors spells them through these constants, so
 * that a typo is a compile error rather than a record the trainer silently calls incomplete.
 * Per-source names carry the source index K (0..nsources-1) as a ".K" suffix: use
 * cache_name_k() to build them. docs/cache.md lists who writes what. */
#ifndef QIE_COMMON_CACHE_NAMES_H
#define QIE_COMMON_CACHE_NAMES_H

#include <stdio.h>

/* decode output (u8/bf16 pixels); the encoders drop them, so a cache normally holds none */
#define CACHE_T_TARGET_PIXELS "target_pixels"
#define CACHE_T_SOURCE_PIXELS "source_pixels"   /* + ".K" */
#define CACHE_T_SOURCE_COND "source_cond"       /* + ".K": the VL-sized condition image */

/* VAE posterior of the target: f32 or bf16 [C, F, H, W] */
#define CACHE_T_TARGET_MEAN "target_mean"
#define CACHE_T_TARGET_LOGVAR "target_logvar"
/* VAE posterior of source K, same layout */
#define CACHE_T_SOURCE_MEAN "source_mean"       /* + ".K" */
#define CACHE_T_SOURCE_LOGVAR "source_logvar"   /* + ".K" */

/* text encoder output: bf16 [L, D] */
#define CACHE_T_PROMPT_EMBEDS "prompt_embeds"
/* caption-dropout embedding (the empty prompt, still with the source image tokens: spec 7.6) */
#define CACHE_T_PROMPT_EMBEDS_EMPTY "prompt_embeds_empty"

/* Settings travel as record attrs named "cfg.<key>" (docs/cache.md, "Settings"). The cache
 * stores the first value it sees for each key in its meta sub-database and refuses any record
 * that carries a different one (QIE_EMISMATCH). Keys the stages use: */
#define CACHE_CFG_PREFIX "cfg."
#define CACHE_CFG_MODEL "model"                     /* model identity, e.g. "Qwen-Image-Edit-2509" */
#define CACHE_CFG_VAE_HASH "vae_hash"               /* hash of the VAE weights */
#define CACHE_CFG_TEXT_ENCODER_HASH "text_encoder_hash"
#define CACHE_CFG_TRAIN_MODE "train_mode"
#define CACHE_CFG_IMAGE_SAMPLE_SIZE "image_sample_size"
#define CACHE_CFG_BUCKETS "buckets"                 /* bucket settings, one canonical string */
#define CACHE_CFG_RESIZE "resize"                   /* resize filters */
#define CACHE_CFG_TEXT_DROP_RATIO "text_drop_ratio" /* > 0: prompt_embeds_empty is required */

/* "source_mean" + 3 -> "source_mean.3" into out (cap >= 64 is always enough for these names) */
static inline void cache_name_k(char *out, size_t cap, const char *base, int k) {
    snprintf(out, cap, "%s.%d", base, k);
}

#endif
