/* parity_text.c: qie-parity text: the diffusers pipelines' encode_prompt on a file of prompts and
 * images, for outside checks and the golden tests (scripts/golden/text.py writes the same names).
 *
 * Input (.safetensors): __metadata__ "train_mode" (qwen_image_edit | qwen_image_edit_plus),
 * "prompt.<i>" for i = 0.. (the batch; "n" optional), tensors "image.<i>.<k>" u8 [H, W, 3]: the
 * condition images of sample i in order (v1: exactly one per sample).
 * Output: "input_ids" i64 [B, S] (the processor's ids, right-padded with <|endoftext|> to the
 * longest), "prompt_embeds" f32 [B, L, D] (rows 64.. of the final norm, zero rows after each
 * sample's length), "prompt_embeds_mask" i64 [B, L] (1 on real rows; diffusers returns None when
 * all are 1, this file always carries the mask). Each sample uses its own images (decisions.md);
 * the Plus pipeline itself only takes one prompt per call. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "ops.h"
#include "parity.h"
#include "qwenvl.h"
#include "safetensors.h"

#define PT_MAX_BATCH 256
#define PT_MAX_IMAGES 64

int parity_text(char *err, const ParityArgs *a) {
    int rc = 0, B = 0;
    SafeTensors *st = NULL;
    OpCtx ctx;
    int have_ctx = 0;
    QwenVL *m = NULL;
    QwenVLSample *samples = NULL;
    QwenVLImage *imgs = NULL;
    QwenVLPrep *preps = NULL;
    float **embs = NULL;
    int *lens = NULL;
    int64_t *ids = NULL, *mask = NULL;
    float *pe = NULL;
    StWriter *w = NULL;
    if ((rc = st_open(err, a->in_path, &st))) return rc;
    QwenVLMode mode;
    const char *tm = st_metadata(st, "train_mode");
    if (!tm || qwenvl_mode_parse(tm, &mode)) {
        qie_seterr(err, "%s: __metadata__ train_mode must be qwen_image_edit or qwen_image_edit_plus (got %s)", a->in_path,
                   tm ? tm : "nothing");
        rc = QIE_EINVAL;
        goto out;
    }
    for (B = 0; B < PT_MAX_BATCH; B++) {
        char key[32];
        snprintf(key, sizeof key, "prompt.%d", B);
        if (!st_metadata(st, key)) break;
    }
    if (!B) {
        qie_seterr(err, "%s: no prompt.0 in __metadata__", a->in_path);
        rc = QIE_EINVAL;
        goto out;
    }
    samples = calloc((size_t)B, sizeof *samples);
    imgs = calloc((size_t)B * PT_MAX_IMAGES, sizeof *imgs);
    preps = calloc((size_t)B, sizeof *preps);
    embs = calloc((size_t)B, sizeof *embs);
    lens = calloc((size_t)B, sizeof *lens);
    if (!samples || !imgs || !preps || !embs || !lens) { rc = QIE_ENOMEM; goto out; }
    for (int i = 0; i < B; i++) {
        char key[64];
        snprintf(key, sizeof key, "prompt.%d", i);
        samples[i].text = st_metadata(st, key);
        samples[i].images = imgs + (size_t)i * PT_MAX_IMAGES;
        for (int k = 0; k < PT_MAX_IMAGES; k++) {
            snprintf(key, sizeof key, "image.%d.%d", i, k);
            const StTensor *t = st_find(st, key);
            if (!t) break;
            if (t->dtype != QIE_DT_U8 || t->ndim != 3 || t->shape[2] != 3) {
                qie_seterr(err, "%s: %s must be u8 [H, W, 3]", a->in_path, key);
                rc = QIE_EINVAL;
                goto out;
            }
            imgs[(size_t)i * PT_MAX_IMAGES + k] = (QwenVLImage){t->data, (int)t->shape[0], (int)t->shape[1]};
            samples[i].nimages = k + 1;
        }
    }
    if ((rc = opctx_init(err, &ctx, a->device))) goto out;
    have_ctx = 1;
    if ((rc = qwenvl_create(err, a->model_dir, &ctx, &m))) goto out;
    const QwenVLConfig *c = qwenvl_config(m);
    for (int i = 0; i < B; i++)
        if ((rc = qwenvl_prepare(err, c, qwenvl_tokenizer(m), mode, &samples[i], &preps[i]))) {
            qie_preferr(err, "sample %d", i);
            goto out;
        }
    if ((rc = qwenvl_encode(err, m, preps, B, embs, lens))) goto out;
    int S = 0, L = 0, D = c->hidden;
    for (int i = 0; i < B; i++) {
        if (preps[i].n > S) S = preps[i].n;
        if (lens[i] > L) L = lens[i];
    }
    ids = malloc((size_t)B * S * sizeof *ids);
    mask = calloc((size_t)B * L, sizeof *mask);
    pe = calloc((size_t)B * L * D, sizeof *pe);
    if (!ids || !mask || !pe) { rc = QIE_ENOMEM; goto out; }
    for (int i = 0; i < B; i++) {
        for (int s = 0; s < S; s++) ids[(size_t)i * S + s] = s < preps[i].n ? preps[i].ids[s] : c->pad_id;
        for (int r = 0; r < lens[i]; r++) mask[(size_t)i * L + r] = 1;
        memcpy(pe + (size_t)i * L * D, embs[i], (size_t)lens[i] * D * sizeof *pe);
    }
    uint64_t s_ids[2] = {(uint64_t)B, (uint64_t)S}, s_pe[3] = {(uint64_t)B, (uint64_t)L, (uint64_t)D},
             s_m[2] = {(uint64_t)B, (uint64_t)L};
    if ((rc = st_writer_create(err, &w)) ||
        (rc = st_writer_add(err, w, "input_ids", QIE_DT_I64, 2, s_ids, ids, (size_t)B * S * sizeof *ids)) ||
        (rc = st_writer_add(err, w, "prompt_embeds", QIE_DT_F32, 3, s_pe, pe, (size_t)B * L * D * sizeof *pe)) ||
        (rc = st_writer_add(err, w, "prompt_embeds_mask", QIE_DT_I64, 2, s_m, mask, (size_t)B * L * sizeof *mask)) ||
        (rc = st_writer_set_metadata(err, w, "train_mode", tm)) ||
        (rc = st_writer_set_metadata(err, w, "device", opctx_device_name(&ctx))) ||
        (rc = st_writer_write(err, w, a->out_path)))
        goto out;
    log_info("text: %d prompts, %d ids, embeds [%d, %d, %d] -> %s", B, S, B, L, D, a->out_path);
out:
    if (rc == QIE_ENOMEM) qie_seterr(err, "qie-parity text: out of memory");
    st_writer_destroy(&w);
    free(ids);
    free(mask);
    free(pe);
    for (int i = 0; embs && i < B; i++) free(embs[i]);
    for (int i = 0; preps && i < B; i++) qwenvl_prep_free(&preps[i]);
    free(embs);
    free(lens);
    free(preps);
    free(samples);
    free(imgs);
    qwenvl_destroy(&m);
    if (have_ctx) opctx_free(&ctx);
    st_close(&st);
    return rc;
}
