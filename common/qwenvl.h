/* qwenvl.h: Qwen2.5-VL as the Qwen-Image-Edit prompt encoder (model.md §3; trainer_behaviour.md
 * §4.3): the diffusers pipelines' encode_prompt, written once against kernels/ops.h, so it runs on
 * the CPU (fp32 reference) and on CUDA (bf16 compute, fp32 accumulation).
 *
 * What it computes, per sample (QwenImageEditPipeline / QwenImageEditPlusPipeline
 * ._get_qwen_prompt_embeds with the sample's own condition images, decisions.md):
 *   template (v1 or Plus) -> Qwen2 tokens (common/tokenizer.h) -> each <|image_pad|> expanded to
 *   that image's gh·gw/4 tokens -> processor rows (smart_resize, Pillow BICUBIC, rescale,
 *   normalise, 14-px patches, 2 frames) -> vision tower (window/full blocks, 2-D rotary, patch
 *   merger) -> LLM (M-RoPE positions, causal, GQA) -> final norm -> rows [64:] (drop_idx).
 * Samples of a batch are packed end to end without padding (the attention op takes per-row key
 * ranges), so the result of a sample does not depend on its batch.
 * What it is not: a generator (no lm_head, no KV cache), a video encoder, or a trainer.
 *
 * Files: <model>/text_encoder/config.json + safetensors (one file, sharded + index; legacy names
 * `model.*`/`visual.*` or transformers-5 names `model.language_model.*`/`model.visual.*`),
 * <model>/tokenizer/ and <model>/processor/preprocessor_config.json (optional: the released
 * values are the defaults). `model` may also be the text_encoder folder itself, with
 * tokenizer/ and processor/ beside it.
 *
 * defines: QwenVLConfig, qwenvl_config_load, QwenVLMode, QwenVLImage, QwenVLSample, QwenVLPrep,
 *          qwenvl_prepare/qwenvl_prep_free, QwenVL, qwenvl_create/qwenvl_destroy, qwenvl_encode,
 *          qwenvl_smart_resize, qwenvl_resize_bicubic, qwenvl_patch_rows, QWENVL_DROP_IDX */
#ifndef QIE_COMMON_QWENVL_H
#define QIE_COMMON_QWENVL_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"
#include "tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Template rows dropped from the front of every sample (prompt_template_encode_start_idx, the
 * same for both pipelines). */
#define QWENVL_DROP_IDX 64
#define QWENVL_MAX_LAYERS 128
#define QWENVL_PATCH_DIM_MAX (3 * 2 * 14 * 14)

typedef struct {
    /* LLM (text_config) */
    int hidden, layers, heads, kv_heads, head_dim, ffn, vocab, max_pos;
    int mrope[3];           /* rotary pairs per axis (t, h, w); sum = head_dim / 2 */
    double rope_theta, rms_eps;
    /* vision tower (vision_config) */
    int v_depth, v_hidden, v_heads, v_head_dim, v_ffn, v_out;
    int patch, tpatch, merge, window, in_ch;
    double v_rope_theta;
    unsigned char v_full[QWENVL_MAX_LAYERS]; /* 1: full attention (fullatt_block_indexes) */
    /* token ids (config, cross-checked with the tokenizer) */
    int32_t image_token_id, vision_start_id, vision_end_id, pad_id;
    /* processor (preprocessor_config.json) */
    int64_t min_pixels, max_pixels;
    double rescale;
    float mean[3], std[3];
    int resample; /* PIL filter id: 3 = BICUBIC (the only one implemented) */
} QwenVLConfig;

/* Reads the configs of model folder `dir` (see the file header). 0, QIE_ENOTFOUND, QIE_EFORMAT
 * (missing or inconsistent keys) or QIE_EUNSUPPORTED (e.g. an activation other than silu). */
int qwenvl_config_load(char *err, const char *dir, QwenVLConfig *cfg);

typedef enum { QWENVL_EDIT = 0, QWENVL_EDIT_PLUS = 1 } QwenVLMode;

/* "qwen_image_edit" / "qwen_image_edit_plus" -> mode; 0 or QIE_EINVAL */
int qwenvl_mode_parse(const char *s, QwenVLMode *out);

typedef struct {
    const uint8_t *pix; /* [h, w, 3] RGB, borrowed */
    int h, w;
} QwenVLImage;

typedef struct {
    const char *text;          /* the instruction (may be ""); UTF-8 */
    int nimages;               /* v1: exactly 1; Plus: 0.. */
    const QwenVLImage *images; /* borrowed */
} QwenVLSample;

/* Everything a sample needs before the model runs: produced on the CPU, cheap next to the
 * model, and where bad input is found. Caller-owned; qwenvl_prep_free releases it. */
typedef struct {
    int32_t *ids;   /* [n] the processor's input_ids (image pads expanded) */
    int32_t *pos;   /* [3][n] M-RoPE position ids (t, h, w), model.md §3.7 */
    int n;
    int nimages;
    int *gh, *gw;   /* patch grid per image (after smart_resize) */
    float *rows;    /* [np, patch_dim] processor rows of all images, in order */
    int np;
} QwenVLPrep;

/* Builds the prep of one sample. Bad input returns QIE_EINVAL with one line in err: text that is
 * not valid UTF-8 or that contains a vision token itself, an image count the mode does not
 * accept, an image the processor refuses (a side of 0, aspect ratio > 200, more pixels than
 * max_pixels allows), a sequence longer than max_position_embeddings or not longer than
 * QWENVL_DROP_IDX. QIE_ENOMEM otherwise. `p` is zeroed first. */
int qwenvl_prepare(char *err, const QwenVLConfig *cfg, const Tokenizer *tok, QwenVLMode mode,
                   const QwenVLSample *s, QwenVLPrep *p);
void qwenvl_prep_free(QwenVLPrep *p);
/* qwenvl_prepare of n samples on up to `threads` threads (the tokenizer is read-only, samples
 * are independent). rcs[i] and errs[i] (QIE_ERR_LEN bytes each, may be NULL) get each sample's
 * result. Returns 0 (a thread that cannot start leaves its share to the caller's thread). */
int qwenvl_prepare_many(const QwenVLConfig *cfg, const Tokenizer *tok, QwenVLMode mode, const QwenVLSample *s, int n,
                        QwenVLPrep *p, int *rcs, char *errs, int threads);

typedef struct QwenVL QwenVL;

/* Loads config, tokenizer and weights of `dir` onto ctx (borrowed; must outlive the model).
 * Weights go into ONE ctx allocation (block-major: LLM embedding, layers, norm; then the vision
 * tower), with q/k/v and gate/up stored side by side so that each is one GEMM.
 * *out must be NULL; free with qwenvl_destroy. */
int qwenvl_create(char *err, const char *dir, OpCtx *ctx, QwenVL **out);
void qwenvl_destroy(QwenVL **m); /* NULL-safe; nulls *m */
/* A model with seeded random weights in cfg's shapes (benchmarks): every matrix and bias
 * N(0, 0.02²), norm gains 1; the token ids of cfg are taken from the tokenizer in tok_dir. */
int qwenvl_create_random(char *err, OpCtx *ctx, const QwenVLConfig *cfg, const char *tok_dir, uint64_t seed,
                         QwenVL **out);
/* The released Qwen2.5-VL-7B shapes (model.md §3.1) and processor values. */
void qwenvl_config_7b(QwenVLConfig *cfg);
const QwenVLConfig *qwenvl_config(const QwenVL *m);
const Tokenizer *qwenvl_tokenizer(const QwenVL *m);
size_t qwenvl_param_count(const QwenVL *m);

/* Runs n prepared samples as one packed batch. out[i] receives malloc'd f32 [len_i, hidden]
 * (caller frees), the final-norm rows QWENVL_DROP_IDX.. of sample i, and len[i] = n_i - 64.
 * Returns 0 or QIE_ENOMEM. */
int qwenvl_encode(char *err, QwenVL *m, const QwenVLPrep *preps, int n, float **out, int *len);

/* ---- image preprocessing pieces (exposed for tests) -------------------------------------- */

/* transformers smart_resize (factor = patch·merge): 0, or QIE_EINVAL when a side is < 1 or the
 * aspect ratio exceeds 200 (the reference raises there). */
int qwenvl_smart_resize(int h, int w, int factor, int64_t min_pixels, int64_t max_pixels, int *hb, int *wb);
/* Pillow Image.resize((dw, dh), BICUBIC) of RGB u8 [sh, sw, 3] -> [dh, dw, 3], bit-exact
 * (Resample.c: 22-bit fixed-point coefficients, horizontal then vertical pass, a pass skipped
 * when its size is unchanged). 0, QIE_EINVAL or QIE_ENOMEM. */
int qwenvl_resize_bicubic(char *err, const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh);
/* rescale + normalise + patchify one resized image [h, w, 3] into rows [(h/p)·(w/p), 3·tp·p·p]
 * in the processor's order (model.md §3.4). */
void qwenvl_patch_rows(const QwenVLConfig *cfg, const uint8_t *img, int h, int w, float *rows);

/* internal, shared by the qwenvl_*.c files: the text_encoder, tokenizer and processor folders
 * of model folder `dir` (each of capacity cap) */
void qwenvl_paths_(const char *dir, char *te, size_t cap, char *tok, char *proc);

#ifdef __cplusplus
}
#endif
#endif
