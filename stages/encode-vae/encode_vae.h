/* encode_vae.h: qie-encode-vae's logic, without option parsing and endpoints (main.c), so tests
 * can drive it. docs/vae.md is the user-facing description.
 *
 * Per record (record.h; names from cache_names.h):
 *   in   "target_pixels"   bf16 [3, H, W] in [-1, 1] (qie-decode: exactly the reference's VAE input)
 *        "source_pixels.k" u8 [H, W, 3] (qie-decode; the VAE input is data_pipeline.md §1.3's
 *                          bf16(2·bf16(bf16(u/255) − 0.5))), or bf16/f32 [3, H, W] in [-1, 1]
 *   out  "target_mean", "target_logvar", "source_mean.k", "source_logvar.k":
 *        [z, 1, H/8, W/8] (cache layout [C, F, H, W]), bf16 by default or f32; logvar clamped
 *        to [-30, 20]; attr "cfg.vae_hash" = the weights' hash; the pixel tensors are dropped
 *        unless keep_pixels (source_cond.k, the vision-tower image, stays).
 * A record whose target is missing, or any of whose VAE images has a bad dtype or layout, sides
 * that are not multiples of 8, or a NaN, is rejected: one warning line naming its id and the
 * reason, counted, and left out of the output; the stream goes on.
 * Batching: records are read in windows of vae_mini_batch; their images are grouped by size and
 * each group is encoded in batches of at most vae_mini_batch; output order is input order. */
#ifndef QIE_STAGES_ENCODE_VAE_H
#define QIE_STAGES_ENCODE_VAE_H

#include <stdint.h>

#include "endpoint.h"
#include "progress.h"
#include "record.h"
#include "vae.h"

typedef struct {
    int mini_batch;      /* --vae_mini_batch: images per encoder call, records per window */
    int keep_pixels;     /* --keep_pixels */
    QieDtype out_dtype;  /* QIE_DT_BF16 (default) or QIE_DT_F32 */
    Progress *progress;  /* may be NULL */
} EncOptions;

typedef struct {
    uint64_t records_in, records_out, rejected, images;
} EncStats;

/* VAE input of one image tensor as f32 [3, H, W] into a new malloc'd buffer (*px; caller frees).
 * Accepts bf16/f32 [3, H, W] and u8 [H, W, 3]. QIE_EFORMAT with a reason in err for another
 * dtype or layout, sides that are not positive multiples of `factor`, or a NaN/Inf value. */
int enc_image_pixels(char *err, const RecTensor *t, int factor, float **px, int *H, int *W);

/* Reads records from `in` until the end of the stream, encodes them with `m` and writes them to
 * `out`. Returns 0 at a clean end of stream, else the first endpoint or model error (rejected
 * records are not errors: they are counted in st->rejected). */
int enc_run(char *err, const EncOptions *o, VaeModel *m, Endpoint *in, Endpoint *out, EncStats *st);

#endif
