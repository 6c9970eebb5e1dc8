/* qwenvl_prompt.c: one sample -> token ids, M-RoPE positions and processor rows
 * (model.md §3.3, §3.4, §3.7; the pipelines' _get_qwen_prompt_embeds up to the model call). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "qwenvl.h"

/* pipeline_qwenimage_edit(_plus).py prompt_template_encode, verbatim */
static const char TEMPLATE_HEAD_[] =
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new "
    "image that meets the user's requirements while maintaining consistency with the original input where "
    "appropriate.<|im_end|>\n<|im_start|>user\n";
static const char TEMPLATE_TAIL_[] = "<|im_end|>\n<|im_start|>assistant\n";
static const char VISION_[] = "<|vision_start|><|image_pad|><|vision_end|>";

void qwenvl_prep_free(QwenVLPrep *p) {
    if (!p) return;
    free(p->ids);
    free(p->pos);
    free(p->gh);
    free(p->gw);
    free(p->rows);
    memset(p, 0, sizeof *p);
}

/* the vision special tokens must come from the template only: a prompt that spells one would
 * shift the image <-> pad pairing (the processor would then fail or mis-assign images) */
static int text_has_vision_token_(const char *t) {
    static const char *bad[] = {"<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        if (strstr(t, bad[i])) return 1;
    return 0;
}

int qwenvl_prepare(char *err, const QwenVLConfig *cfg, const Tokenizer *tok, QwenVLMode mode,
                   const QwenVLSample *s, QwenVLPrep *p) {
    memset(p, 0, sizeof *p);
    int rc = 0, n = s->nimages;
    char *txt = NULL;
    int32_t *raw = NULL;
    uint8_t *resized = NULL;
    const char *text = s->text ? s->text : "";
    if (mode == QWENVL_EDIT && n != 1) {
        qie_seterr(err, "qwen_image_edit takes exactly one condition image, got %d (use qwen_image_edit_plus)", n);
        return QIE_EINVAL;
    }
    if (n < 0 || n > 64) {
        qie_seterr(err, "%d condition images (at most 64)", n);
        return QIE_EINVAL;
    }
    if (text_has_vision_token_(text)) {
        qie_seterr(err, "the prompt contains a vision special token (<|image_pad|>, <|vision_start|>, ...)");
        return QIE_EINVAL;
    }
    /* 1. images: smart_resize, BICUBIC, rows */
    p->nimages = n;
    p->gh = calloc((size_t)(n ? n : 1), sizeof *p->gh);
    p->gw = calloc((size_t)(n ? n : 1), sizeof *p->gw);
    if (!p->gh || !p->gw) goto nomem;
    int factor = cfg->patch * cfg->merge, dim = cfg->in_ch * cfg->tpatch * cfg->patch * cfg->patch;
    int hb[64], wb[64];
    size_t np = 0;
    for (int k = 0; k < n; k++) {
        const QwenVLImage *im = &s->images[k];
        if (!im->pix || qwenvl_smart_resize(im->h, im->w, factor, cfg->min_pixels, cfg->max_pixels, &hb[k], &wb[k])) {
            qie_seterr(err, "condition image %d (%dx%d): the processor refuses it (empty, or aspect ratio over 200)", k,
                       im->w, im->h);
            rc = QIE_EINVAL;
            goto fail;
        }
        p->gh[k] = hb[k] / cfg->patch;
        p->gw[k] = wb[k] / cfg->patch;
        np += (size_t)p->gh[k] * p->gw[k];
    }
    p->np = (int)np;
    if (np) {
        p->rows = malloc(np * dim * sizeof *p->rows);
        if (!p->rows) goto nomem;
    }
    size_t r = 0;
    for (int k = 0; k < n; k++) {
        const QwenVLImage *im = &s->images[k];
        const uint8_t *src = im->pix;
        if (hb[k] != im->h || wb[k] != im->w) {
            free(resized);
            resized = malloc((size_t)hb[k] * wb[k] * 3);
            if (!resized) goto nomem;
            if ((rc = qwenvl_resize_bicubic(err, im->pix, im->w, im->h, resized, wb[k], hb[k]))) goto fail;
            src = resized;
        }
        qwenvl_patch_rows(cfg, src, hb[k], wb[k], p->rows + r * dim);
        r += (size_t)p->gh[k] * p->gw[k];
    }
    /* 2. template */
    size_t tl = strlen(text), cap = sizeof TEMPLATE_HEAD_ + sizeof TEMPLATE_TAIL_ + tl + (size_t)n * 80 + 16;
    txt = malloc(cap);
    if (!txt) goto nomem;
    size_t o = (size_t)snprintf(txt, cap, "%s", TEMPLATE_HEAD_);
    if (mode == QWENVL_EDIT) o += (size_t)snprintf(txt + o, cap - o, "%s", VISION_);
    else
        for (int k = 0; k < n; k++) o += (size_t)snprintf(txt + o, cap - o, "Picture %d: %s", k + 1, VISION_);
    memcpy(txt + o, text, tl);
    o += tl;
    o += (size_t)snprintf(txt + o, cap - o, "%s", TEMPLATE_TAIL_);
    /* 3. tokens, image pads expanded (the processor's replacement of <|image_pad|>) */
    size_t nraw = 0;
    if ((rc = tok_encode(err, tok, txt, o, &raw, &nraw))) {
        qie_preferr(err, "prompt");
        if (rc != QIE_ENOMEM) rc = QIE_EINVAL;
        goto fail;
    }
    size_t total = nraw;
    int npad = 0;
    for (size_t i = 0; i < nraw; i++)
        if (raw[i] == cfg->image_token_id) npad++;
    if (npad != n) {
        qie_seterr(err, "template has %d <|image_pad|> tokens for %d images (tokenizer/config mismatch?)", npad, n);
        rc = QIE_EFORMAT;
        goto fail;
    }
    int m2 = cfg->merge * cfg->merge;
    for (int k = 0; k < n; k++) total += (size_t)(p->gh[k] * p->gw[k] / m2) - 1;
    if (total > (size_t)cfg->max_pos) {
        qie_seterr(err, "prompt of %zu tokens (with %d image tokens) is longer than max_position_embeddings %d", total,
                   (int)(total - nraw + (size_t)n), cfg->max_pos);
        rc = QIE_EINVAL;
        goto fail;
    }
    if (total <= QWENVL_DROP_IDX) {
        qie_seterr(err, "prompt of %zu tokens: nothing is left after the %d-token template prefix", total, QWENVL_DROP_IDX);
        rc = QIE_EINVAL;
        goto fail;
    }
    p->n = (int)total;
    p->ids = malloc(total * sizeof *p->ids);
    p->pos = malloc(3 * total * sizeof *p->pos);
    if (!p->ids || !p->pos) goto nomem;
    /* 4. ids and M-RoPE positions (get_rope_index): text runs continue from the running
     * position; an image at position s gets (s, s + y, s + x) per merged token (y, x) and
     * moves the running position to s + max(Hm, Wm) */
    int32_t *pt = p->pos, *ph = p->pos + total, *pw = p->pos + 2 * total;
    size_t w = 0;
    int32_t cur = 0;
    int img = 0;
    for (size_t i = 0; i < nraw; i++) {
        if (raw[i] != cfg->image_token_id) {
            p->ids[w] = raw[i];
            pt[w] = ph[w] = pw[w] = cur++;
            w++;
            continue;
        }
        int hm = p->gh[img] / cfg->merge, wm = p->gw[img] / cfg->merge;
        for (int y = 0; y < hm; y++)
            for (int x = 0; x < wm; x++) {
                p->ids[w] = cfg->image_token_id;
                pt[w] = cur;
                ph[w] = cur + y;
                pw[w] = cur + x;
                w++;
            }
        cur += hm > wm ? hm : wm;
        img++;
    }
    free(txt);
    free(raw);
    free(resized);
    return 0;
nomem:
    qie_seterr(err, "prompt preparation: out of memory");
    rc = QIE_ENOMEM;
fail:
    free(txt);
    free(raw);
    free(resized);
    qwenvl_prep_free(p);
    return rc;
}

typedef struct {
    const QwenVLConfig *cfg;
    const Tokenizer *tok;
    QwenVLMode mode;
    const QwenVLSample *s;
    QwenVLPrep *p;
    int *rcs;
    char *errs;
    int n, stride, first;
} PrepWork_;

static void *prep_worker_(void *arg) {
    const PrepWork_ *w = arg;
    char local[QIE_ERR_LEN];
    for (int i = w->first; i < w->n; i += w->stride) {
        char *e = w->errs ? w->errs + (size_t)i * QIE_ERR_LEN : local;
        e[0] = 0;
        w->rcs[i] = qwenvl_prepare(e, w->cfg, w->tok, w->mode, &w->s[i], &w->p[i]);
    }
    return NULL;
}

int qwenvl_prepare_many(const QwenVLConfig *cfg, const Tokenizer *tok, QwenVLMode mode, const QwenVLSample *s, int n,
                        QwenVLPrep *p, int *rcs, char *errs, int threads) {
    if (threads > n) threads = n;
    if (threads < 1) threads = 1;
    if (threads > 64) threads = 64;
    pthread_t th[64];
    PrepWork_ w[64];
    int started = 0;
    for (int t = 0; t < threads; t++) {
        w[t] = (PrepWork_){cfg, tok, mode, s, p, rcs, errs, n, threads, t};
        if (t == 0) continue; /* the caller's thread takes slice 0 */
        if (pthread_create(&th[t], NULL, prep_worker_, &w[t])) break;
        started = t;
    }
    /* slices whose thread did not start run here too */
    prep_worker_(&w[0]);
    for (int t = started + 1; t < threads; t++) prep_worker_(&w[t]);
    for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
    return 0;
}
