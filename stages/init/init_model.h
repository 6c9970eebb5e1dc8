/* init_model.h: qie-init's logic, without option parsing (stages/init/main.c), so tests can drive
 * it. Writes a randomly initialised Qwen-Image-Edit model in the diffusers folder layout:
 *
 *   model_index.json          QwenImageEditPipeline | QwenImageEditPlusPipeline (--variant)
 *   transformer/              config.json + diffusion_pytorch_model[-0000k-of-0000n].safetensors
 *                             (+ .index.json when sharded): every name of common/dit.h's layout
 *   vae/                      config.json + diffusion_pytorch_model.safetensors: the WHOLE
 *                             AutoencoderKLQwenImage state dict (encoder with its time_convs,
 *                             quant_conv, post_quant_conv, decoder), so diffusers loads it without
 *                             "missing keys"; the C loader (common/vae.c) reads the encoder only
 *   text_encoder/             config.json + model[-0000k-of-0000n].safetensors: the transformers 5
 *                             names of Qwen2_5_VLForConditionalGeneration (model.language_model.*,
 *                             model.visual.*, lm_head.weight)
 *   tokenizer/, processor/    a small byte-level BPE in the Qwen2Tokenizer file format
 *                             (init_tokenizer.c) + processor/preprocessor_config.json
 *   scheduler/                FlowMatchEulerDiscreteScheduler, the released Qwen-Image values
 *
 * Weights: N(0, std²) (std 0.02 by default), biases 0, norm gains 1 — what each loader expects of
 * a fresh model (diffusers/transformers' own _init_weights use the same rule). Draws are Philox
 * (kernels/rng.h) keyed by (seed, component, tensor index), so a model is a pure function of
 * (config, seed, dtype) and does not depend on the shard size.
 * What it is not: a converter or a downloader; the weights carry no knowledge. */
#ifndef QIE_STAGES_INIT_MODEL_H
#define QIE_STAGES_INIT_MODEL_H

#include <stdint.h>

#include "dit.h"
#include "dtype.h"
#include "vae.h"

#define INIT_MAX_VIT_DEPTH 128

typedef enum { INIT_EDIT = 0, INIT_EDIT_PLUS = 1, INIT_EDIT_2511 = 2 } InitVariant;

/* Qwen2.5-VL text encoder shapes (model.md §3.1, §5.4) */
typedef struct {
    int hidden, layers, heads, kv_heads, ffn, vocab, max_pos;
    int mrope[3];
    int v_depth, v_hidden, v_heads, v_ffn;
    int v_full[INIT_MAX_VIT_DEPTH]; /* fullatt_block_indexes */
    int n_full;
    int added_base;                 /* id of <|endoftext|>: the first added token */
} InitTeConfig;

typedef struct {
    DitConfig dit;
    VaeConfig vae;
    InitTeConfig te;
    InitVariant variant;
    const char *name;   /* "tiny", "real" or the config file: goes into model_index.json */
} InitConfig;

typedef struct {
    uint64_t seed;
    double std;               /* weight std (0.02) */
    QieDtype dtype;           /* QIE_DT_BF16 (released dtype) or QIE_DT_F32 */
    const char *max_shard_size; /* transformer and text encoder shards ("10GB") */
} InitOptions;

/* Presets: "tiny" = model.md §5 dit-tiny + vae-tiny + te-tiny with a 320-id vocabulary (256 bytes,
 * 42 merges, the 22 Qwen2.5 added tokens from id 298); "real" = the released shapes (60 blocks,
 * 96-channel VAE, Qwen2.5-VL-7B; the small tokenizer's added tokens keep their real ids 151643..).
 * QIE_EINVAL for another name. */
int init_config_preset(char *err, const char *name, InitConfig *c);

/* A JSON config file: {"base": "tiny"|"real", "transformer": {...}, "vae": {...},
 * "text_encoder": {..., "vision_config": {...}}} with the diffusers / transformers key names;
 * what it does not set comes from the base. Validated (the same rules as the loaders). */
int init_config_file(char *err, const char *path, InitConfig *c);

/* "edit" | "edit-2509" | "edit-2511" (aliases: qwen_image_edit, qwen_image_edit_plus) */
int init_variant_parse(const char *s, InitVariant *v);

/* Writes the model into dir (created; must not hold a model_index.json unless overwrite). */
int init_write_model(char *err, const InitConfig *c, const InitOptions *o, const char *dir, int overwrite);

/* The tokenizer files (vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json,
 * added_tokens.json) into dir, with the added tokens from added_base. *nids = largest id + 1. */
int init_tokenizer_write(char *err, const char *dir, int added_base, int *nids);
/* Ids of the small vocabulary before the added tokens (256 bytes + merges). */
int init_tokenizer_base_size(void);

/* Parameter counts of what init_write_model writes, per component (for the summary line). */
typedef struct {
    uint64_t transformer, vae, text_encoder;
} InitCounts;
int init_count(char *err, const InitConfig *c, InitCounts *n);

#endif
