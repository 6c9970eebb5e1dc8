/* dit.h: QwenImageTransformer2DModel (Qwen-Image-Edit, -2509, -2511), forward and backward, written
 * once against kernels/ops.h (spec/model.md section 1). The CPU backend is the readable fp32
 * reference CI runs; the CUDA backend runs the same code with bf16 activations and weights, fp32
 * accumulation and fp32 weight gradients.
 *
 * What it is: config (config.json), the parameter layout (one buffer, block-major, padded for
 * sharding, with a diffusers-name table), the loader, and dit_forward / dit_backward with their
 * activation arena (optionally gradient-checkpointed: only block inputs kept, each block recomputed
 * in the backward).
 * What it is not: the loss, the optimizer, data or checkpoints (the trainer owns those; this file
 * gives them the layout: dit_tensor(), the ranges, dit_writer_add).
 *
 * Parameter buffer (style.md "Parameter buffer"): params are act-typed (f32 on CPU, bf16 on CUDA:
 * the compute copy of the trainer's fp32 master), grads f32, same element offsets. Order:
 *   range 0      inputs:  img_in.{weight,bias}, txt_norm.weight, txt_in.*, time_text_embed.*
 *   range 1+l    block l: the 32 tensors of transformer_blocks.l (DitBlockTensor order)
 *   range L+1    outputs: norm_out.linear.*, proj_out.*
 * Each tensor starts at a multiple of DIT_TENSOR_ALIGN elements (cuBLASLt wants 16-byte aligned
 * operands); each range is padded to a multiple of DIT_MAX_WORLD · 64 elements, so range/world is a
 * multiple of 64 for every world size dividing DIT_MAX_WORLD: FSDP gathers a block with one
 * all-gather of equal shards. Padding is zero and stays zero (its gradient is 0). Within a block the
 * q/k/v weights (and biases) of each stream are adjacent, so each stream's QKV is one GEMM of
 * width 3D (DIT_B_TO_Q_W points at the fused [3D, D] matrix).
 *
 * defines: DitConfig, dit_config_*, DitTensorInfo, DitRange, DitLayout, dit_layout_*, dit_tensor,
 *          dit_load_weights, dit_writer_add, DitShape, Dit, dit_create/destroy, dit_forward,
 *          dit_backward, dit_zero_grad, dit_param, dit_grad, dit_flops_forward, DitHook, dit_set_hook,
 *          dit_create2, dit_range_of_layer */
#ifndef QIE_COMMON_DIT_H
#define QIE_COMMON_DIT_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"
#include "ops.h"
#include "safetensors.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DIT_MAX_WORLD 64
#define DIT_RANGE_ALIGN ((size_t)DIT_MAX_WORLD * 64) /* elements */
#define DIT_TENSOR_ALIGN 16                          /* elements */
#define DIT_MAX_IMAGES 16                            /* images per sample (target + conditions) */

/* ---- config (spec 1.1) -------------------------------------------------------------------- */

typedef struct {
    int patch_size;     /* 2 */
    int in_channels;    /* 64 = out_channels · patch² */
    int out_channels;   /* 16 */
    int num_layers;     /* 60 */
    int head_dim;       /* attention_head_dim, 128 */
    int num_heads;      /* 24 */
    int joint_dim;      /* joint_attention_dim J, 3584 */
    int axes[3];        /* axes_dims_rope, 16/56/56 */
    int zero_cond_t;    /* Edit-2511 */
    int D;              /* derived: num_heads · head_dim */
    int out_dim;        /* derived: proj_out width = patch² · out_channels */
} DitConfig;

/* Reads config.json. path: a config.json, a component folder holding one, or a model folder with
 * transformer/config.json. Unknown keys are ignored; use_additional_t_cond, use_layer3d_rope,
 * guidance_embeds must be false (QIE_EUNSUPPORTED). Validates (dit_config_validate). */
int dit_config_load(char *err, const char *path, DitConfig *cfg);
/* Fills the derived fields and checks the constraints of spec 1.1 and what the kernels need
 * (sum(axes) = head_dim, each even; head_dim ≤ 128 and a multiple of 8; D a multiple of 16). */
int dit_config_validate(char *err, DitConfig *cfg);

/* ---- parameter layout --------------------------------------------------------------------- */

typedef enum {
    DIT_IMG_IN_W, DIT_IMG_IN_B, DIT_TXT_NORM_W, DIT_TXT_IN_W, DIT_TXT_IN_B,
    DIT_T_LIN1_W, DIT_T_LIN1_B, DIT_T_LIN2_W, DIT_T_LIN2_B,
    DIT_NUM_IN_TENSORS
} DitInTensor;

typedef enum {
    DIT_B_IMG_MOD_W, DIT_B_IMG_MOD_B, DIT_B_TXT_MOD_W, DIT_B_TXT_MOD_B,
    DIT_B_TO_Q_W, DIT_B_TO_K_W, DIT_B_TO_V_W, DIT_B_TO_Q_B, DIT_B_TO_K_B, DIT_B_TO_V_B,
    DIT_B_ADD_Q_W, DIT_B_ADD_K_W, DIT_B_ADD_V_W, DIT_B_ADD_Q_B, DIT_B_ADD_K_B, DIT_B_ADD_V_B,
    DIT_B_NORM_Q, DIT_B_NORM_K, DIT_B_NORM_ADD_Q, DIT_B_NORM_ADD_K,
    DIT_B_TO_OUT_W, DIT_B_TO_OUT_B, DIT_B_TO_ADD_OUT_W, DIT_B_TO_ADD_OUT_B,
    DIT_B_IMG_FC1_W, DIT_B_IMG_FC1_B, DIT_B_IMG_FC2_W, DIT_B_IMG_FC2_B,
    DIT_B_TXT_FC1_W, DIT_B_TXT_FC1_B, DIT_B_TXT_FC2_W, DIT_B_TXT_FC2_B,
    DIT_NUM_BLOCK_TENSORS
} DitBlockTensor;

typedef enum { DIT_NORM_OUT_W, DIT_NORM_OUT_B, DIT_PROJ_OUT_W, DIT_PROJ_OUT_B, DIT_NUM_OUT_TENSORS } DitOutTensor;

typedef struct {
    char name[96];      /* diffusers state-dict name */
    int layer;          /* block index; -1 for the top level */
    int ndim;           /* 1 or 2 */
    int64_t shape[2];   /* [out, in] for weights */
    size_t offset;      /* elements into the parameter (and gradient) buffer */
    size_t numel;
} DitTensorInfo;

typedef struct {
    size_t offset, size; /* elements; size % DIT_RANGE_ALIGN == 0 */
} DitRange;

typedef struct {
    DitConfig cfg;
    int ntensors;           /* 13 + 32·L, in buffer order */
    DitTensorInfo *tensors;
    int nranges;            /* L + 2: inputs, blocks, outputs */
    DitRange *ranges;
    size_t num_params;      /* padded buffer length (elements) */
    size_t num_real;        /* real parameters (spec 6.1) */
} DitLayout;

/* lay is caller-owned; dit_layout_free releases what init allocated (safe on a zeroed struct). */
int dit_layout_init(char *err, DitLayout *lay, const DitConfig *cfg);
void dit_layout_free(DitLayout *lay);
/* Index into lay->tensors: layer -1 with a DitInTensor, 0..L-1 with a DitBlockTensor, L with a
 * DitOutTensor. */
static inline int dit_tensor_index(const DitLayout *lay, int layer, int t) {
    if (layer < 0) return t;
    if (layer >= lay->cfg.num_layers) return DIT_NUM_IN_TENSORS + DIT_NUM_BLOCK_TENSORS * lay->cfg.num_layers + t;
    return DIT_NUM_IN_TENSORS + DIT_NUM_BLOCK_TENSORS * layer + t;
}
static inline const DitTensorInfo *dit_tensor(const DitLayout *lay, int layer, int t) {
    return &lay->tensors[dit_tensor_index(lay, layer, t)];
}
/* By diffusers name (a "model.diffusion_model." or "transformer." prefix is stripped); -1 if none. */
int dit_layout_find(const DitLayout *lay, const char *name);

/* Fills h_params (host f32 [lay->num_params], padding zeroed) from a checkpoint (bf16, f16 or f32
 * on disk). Every layout tensor must be present with its shape (QIE_ENOTFOUND / QIE_EMISMATCH);
 * tensors the layout does not know are QIE_EMISMATCH (a different model). */
int dit_load_weights(char *err, const DitLayout *lay, const StModel *st, float *h_params);

/* Adds every layout tensor to w as `prefix + diffusers name`, data in dt (QIE_DT_F32 or BF16)
 * taken from h_buf at the tensor's offset (host, lay->num_params elements of dt). h_buf is
 * borrowed by the writer (st_writer_add). */
int dit_writer_add(char *err, StWriter *w, const DitLayout *lay, const char *prefix, QieDtype dt, const void *h_buf);

/* ---- the model ---------------------------------------------------------------------------- */

/* Geometry of one call. Every sample of a batch shares img_shapes (upstream builds RoPE from
 * sample 0 only; the trainer batches by bucket), text may be padded (mask). */
typedef struct {
    int B;
    int N_txt;                         /* padded text length */
    int n_images;                      /* target first */
    int img_shapes[DIT_MAX_IMAGES][3]; /* frames, height, width in patches */
} DitShape;

/* Parameter hook (ZeRO-3 / FSDP FULL_SHARD, and single-process block residency): who owns a
 * range's parameters and gradients while the model runs. Range r = 0 inputs, 1 + l block l,
 * L + 1 outputs (lay.ranges). Without a hook (the default) every range lives in the resident
 * m->params / m->grads and nothing below is called, so behaviour is unchanged.
 * The model touches one range at a time and brackets every use:
 *   forward   acquire(0) .. release(0), acquire(1) .. release(1), ..., acquire(L+1) .. release(L+1)
 *   backward  acquire(L+1) grad_begin(L+1) .. grad_end(L+1) release(L+1), then L, ..., 1, then 0
 *             (with gradient checkpointing a block is recomputed inside its acquire/release)
 * so a provider can gather range r just before it is used, prefetch the next one in that order,
 * and reduce a range's gradient as soon as grad_end says it is complete (overlapping the rest of
 * the backward). A callback left NULL means "the resident buffer" for that part. */
typedef enum { DIT_PHASE_FORWARD = 0, DIT_PHASE_BACKWARD = 1 } DitPhase;
typedef struct {
    void *ud;
    /* act memory (ctx's device) holding range r with the buffer's relative layout: tensor k of r
     * at (lay.tensors[k].offset - lay.ranges[r].offset) elements. Valid until release(r). */
    const void *(*param_acquire)(void *ud, int r, DitPhase ph);
    void (*param_release)(void *ud, int r, DitPhase ph);
    /* memory of the same relative layout that range r's gradients ACCUMULATE into during this
     * backward (the provider zeroes or preloads it): f32, or the compute dtype when grads_act is
     * set (bf16 on CUDA: fp32 accumulation inside each op, one rounding per op). Valid until
     * grad_end(r). */
    void *(*grad_begin)(void *ud, int r);
    int grads_act;
    void (*grad_end)(void *ud, int r); /* range r's gradients of this backward are complete */
} DitHook;

typedef struct {
    DitConfig cfg;
    DitLayout lay;
    OpCtx *ctx;                 /* borrowed */
    void *params;               /* act [lay.num_params], on ctx's device */
    float *grads;               /* f32 [lay.num_params], on ctx's device; NULL until dit_backward
                                   is first needed (allocated by dit_create when train != 0) */
    int train;                  /* keep what the backward needs */
    int grad_ckpt;              /* recompute each block in the backward */
    int keep_attn;              /* with grad_ckpt: keep each block's attention output and log-sum-exp
                                   (B·S·(D·act + H·4) bytes per layer) so the recompute skips the
                                   attention; set before the first dit_forward (0 by default) */
    struct DitActs *acts;       /* activation arena (dit.c) */
    DitHook hook;               /* dit_set_hook; zeroed: resident buffers */
    const void **rp;            /* [L+2] range bases handed out by hook.param_acquire (dit.c) */
    void **rg;                  /* [L+2] range bases handed out by hook.grad_begin */
} Dit;

#define DIT_CREATE_NO_PARAMS 1u /* dit_create2: no resident params (a hook provides every range) */
#define DIT_CREATE_NO_GRADS 2u  /* dit_create2: no resident grads (a hook provides every range) */

/* Allocates params (zeroed) and, with train, grads. *out must be NULL; free with dit_destroy
 * (NULL-safe). ctx must outlive the model. */
int dit_create(char *err, OpCtx *ctx, const DitConfig *cfg, int train, int grad_ckpt, Dit **out);
/* dit_create with flags (DIT_CREATE_*): ZeRO-3 leaves out the full-size buffers it never uses. */
int dit_create2(char *err, OpCtx *ctx, const DitConfig *cfg, int train, int grad_ckpt, unsigned flags, Dit **out);
void dit_destroy(Dit **m);
/* Installs a parameter hook (copied), or removes it (NULL). A model without resident params or
 * grads (DIT_CREATE_NO_*) needs the matching callbacks before dit_forward / dit_backward. */
void dit_set_hook(Dit *m, const DitHook *h);
/* The range of a layer as in dit_tensor_index: -1 -> 0, 0..L-1 -> 1 + l, L -> L + 1. */
static inline int dit_range_of_layer(const DitLayout *lay, int layer) {
    return layer < 0 ? 0 : layer >= lay->cfg.num_layers ? lay->cfg.num_layers + 1 : layer + 1;
}
/* Uploads host f32 parameters (dit_load_weights' output) into m->params (rounded to act). */
void dit_set_params(Dit *m, const float *h_params);
/* Loads config + weights from a model folder (as dit_config_load) and creates the model. */
int dit_create_from_dir(char *err, OpCtx *ctx, const char *dir, int train, int grad_ckpt, Dit **out);
void dit_zero_grad(Dit *m);

/* Pointers into the resident buffers for (layer, tensor) as in dit_tensor_index (NULL-based
 * when the model was created without them). */
void *dit_param(const Dit *m, int layer, int t);
float *dit_grad(const Dit *m, int layer, int t);

/* Forward (spec 1.4). Inputs are on ctx's device, act:
 *   x    [B, N_img, in_channels] packed latents (target tokens first), N_img = Σ F·h·w
 *   txt  [B, N_txt, J] text-encoder states
 * host inputs: txt_mask f32 [B, N_txt] (1 valid, 0 padding) or NULL; t f32 [B] (σ; rounded once
 * to the act dtype, spec 1.10). x and txt are BORROWED until the matching dit_backward returns.
 * *out (borrowed, act [B, N_img, out_dim], valid until the next dit_forward/dit_destroy). */
int dit_forward(char *err, Dit *m, const DitShape *sh, const void *x, const void *txt, const float *txt_mask,
                const float *t, const void **out);
/* Backward of the last dit_forward (which must have run with m->train). d_out act
 * [B, N_img, out_dim]. Parameter gradients ACCUMULATE into m->grads (dit_zero_grad between steps).
 * d_x [B, N_img, in_channels] and d_txt [B, N_txt, J] (act, overwritten) may be NULL. */
int dit_backward(char *err, Dit *m, const void *d_out, void *d_x, void *d_txt);

/* Bytes of the activation arena the last dit_forward sized. */
size_t dit_activation_bytes(const Dit *m);
/* Model FLOPs of one forward for this shape (spec 6.2: 2 per multiply-add, GEMMs + attention). */
double dit_flops_forward(const DitConfig *cfg, const DitShape *sh);

#ifdef __cplusplus
}
#endif
#endif
