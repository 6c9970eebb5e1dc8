/* encode_text.c: qie-encode-text's loop (encode_text.h has the record contract). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache_names.h"
#include "dtype.h"
#include "encode_text.h"
#include "err.h"
#include "log.h"

#define TE_MAX_IMAGES 64

int te_record_images(char *err, const Record *r, QwenVLMode mode, QwenVLImage *im, int cap, int *n) {
    const char *base = mode == QWENVL_EDIT ? CACHE_T_SOURCE_PIXELS : CACHE_T_SOURCE_COND;
    int want = mode == QWENVL_EDIT ? 1 : r->nsources;
    if (mode == QWENVL_EDIT && r->nsources != 1) {
        qie_seterr(err, "qwen_image_edit takes exactly one source, the record has %d (use qwen_image_edit_plus)",
                   r->nsources);
        return QIE_EINVAL;
    }
    if (want > cap) {
        qie_seterr(err, "%d condition images (at most %d)", want, cap);
        return QIE_EINVAL;
    }
    for (int k = 0; k < want; k++) {
        char name[64];
        cache_name_k(name, sizeof name, base, k);
        const RecTensor *t = rec_tensor(r, name);
        if (!t) {
            qie_seterr(err, "condition image \"%s\" is missing (the record has %d sources)", name, r->nsources);
            return QIE_EINVAL;
        }
        if (t->dtype != QIE_DT_U8 || t->ndim != 3 || t->shape[2] != 3 || t->shape[0] < 1 || t->shape[1] < 1 ||
            t->shape[0] > 1 << 20 || t->shape[1] > 1 << 20) {
            qie_seterr(err, "condition image \"%s\" must be u8 [h, w, 3] (qie-decode's layout), got %s with %d dims", name,
                       dtype_name(t->dtype), t->ndim);
            return QIE_EINVAL;
        }
        im[k] = (QwenVLImage){t->data, (int)t->shape[0], (int)t->shape[1]};
    }
    *n = want;
    return 0;
}

typedef struct {
    void *buf;   /* the record's bytes (tensor payloads of rec borrow from it) */
    Record rec;
    int ok;      /* 0: rejected */
    int njobs;
} Slot_;

typedef struct {
    int slot;
    int empty;   /* 0: the record's text, 1: the empty prompt */
    QwenVLPrep prep;
    float *emb;
    int len;
} Job_;

static int cmp_job_len_(const void *a, const void *b) {
    const Job_ *x = *(Job_ *const *)a, *y = *(Job_ *const *)b;
    return (x->prep.n > y->prep.n) - (x->prep.n < y->prep.n);
}

static void reject_(Slot_ *s, const char *why, TextEncStats *st) {
    log_warn("reject %s: %s", s->rec.id ? s->rec.id : "(no id)", why);
    s->ok = 0;
    st->rejected++;
}

/* embeds f32 [len, D] -> bf16 record tensor + length attr */
static int attach_(char *err, Record *r, const char *name, const char *attr, const float *e, int len, int D) {
    int64_t shape[2] = {len, D};
    void *p = NULL;
    int rc = rec_new_tensor(err, r, name, QIE_DT_BF16, 2, shape, &p);
    if (rc) return rc;
    uint16_t *o = p;
    for (size_t i = 0; i < (size_t)len * D; i++) o[i] = f32_to_bf16(e[i]);
    if ((rc = rec_set_attr_int(r, attr, len))) qie_seterr(err, "record attr %s: out of memory", attr);
    return rc;
}

static int process_window_(char *err, const TextEncOptions *o, QwenVL *m, Slot_ *slots, int ns, Endpoint *out,
                           TextEncStats *st) {
    const QwenVLConfig *cfg = qwenvl_config(m);
    const Tokenizer *tok = qwenvl_tokenizer(m);
    int per = o->text_drop_ratio > 0 ? 2 : 1, rc = 0, nj = 0;
    Job_ *jobs = calloc((size_t)ns * per, sizeof *jobs);
    Job_ **order = calloc((size_t)ns * per, sizeof *order);
    QwenVLPrep *bp = calloc((size_t)ns * per, sizeof *bp);
    float **be = calloc((size_t)ns * per, sizeof *be);
    int *bl = calloc((size_t)ns * per, sizeof *bl);
    if (!jobs || !order || !bp || !be || !bl) {
        qie_seterr(err, "encode-text: out of memory for a window of %d records", ns);
        rc = QIE_ENOMEM;
        goto out;
    }
    /* 1. validate, then prepare (tokens, positions, processor rows) on prep_threads threads:
     * rejects happen here */
    QwenVLImage *ims = calloc((size_t)ns * TE_MAX_IMAGES, sizeof *ims);
    QwenVLSample *smp = calloc((size_t)ns * per, sizeof *smp);
    int *rcs = calloc((size_t)ns * per, sizeof *rcs);
    char *errs = malloc((size_t)ns * per * QIE_ERR_LEN);
    if (!ims || !smp || !rcs || !errs) {
        free(ims); free(smp); free(rcs); free(errs);
        qie_seterr(err, "encode-text: out of memory for a window of %d records", ns);
        rc = QIE_ENOMEM;
        goto out;
    }
    for (int i = 0; i < ns; i++) {
        Slot_ *s = &slots[i];
        if (!s->ok) continue;
        char why[QIE_ERR_LEN];
        const RecAttr *tm = rec_attr(&s->rec, "train_mode");
        const char *want = o->mode == QWENVL_EDIT ? "qwen_image_edit" : "qwen_image_edit_plus";
        if (tm && tm->type == REC_ATTR_STR && strcmp(tm->s, want)) {
            snprintf(why, sizeof why, "record train_mode %s, this stage runs --train_mode %s", tm->s, want);
            reject_(s, why, st);
            continue;
        }
        if (!s->rec.text || !s->rec.text[0]) {
            reject_(s, "empty text (caption dropout is done by the trainer from prompt_embeds_empty)", st);
            continue;
        }
        QwenVLImage *im = ims + (size_t)i * TE_MAX_IMAGES;
        int nim = 0;
        if (te_record_images(why, &s->rec, o->mode, im, TE_MAX_IMAGES, &nim)) {
            reject_(s, why, st);
            continue;
        }
        for (int e = 0; e < per; e++) {
            jobs[nj].slot = i;
            jobs[nj].empty = e;
            smp[nj] = (QwenVLSample){e ? "" : s->rec.text, nim, im};
            nj++;
        }
    }
    qwenvl_prepare_many(cfg, tok, o->mode, smp, nj, bp, rcs, errs, o->prep_threads);
    for (int k = 0; k < nj; k++) {
        jobs[k].prep = bp[k];
        memset(&bp[k], 0, sizeof bp[k]);
        Slot_ *s = &slots[jobs[k].slot];
        if (rcs[k] == QIE_ENOMEM && !rc) {
            snprintf(err, QIE_ERR_LEN, "%s", errs + (size_t)k * QIE_ERR_LEN);
            rc = QIE_ENOMEM;
        } else if (rcs[k] && s->ok) {
            reject_(s, errs + (size_t)k * QIE_ERR_LEN, st);
        }
        if (!rcs[k]) s->njobs++;
    }
    free(ims);
    free(smp);
    free(rcs);
    free(errs);
    if (rc) goto out;
    /* drop the jobs of records rejected half-way (the empty prompt may have failed after the text) */
    int w = 0;
    for (int k = 0; k < nj; k++) {
        if (slots[jobs[k].slot].ok) jobs[w++] = jobs[k];
        else qwenvl_prep_free(&jobs[k].prep);
    }
    nj = w;
    for (int k = 0; k < nj; k++) order[k] = &jobs[k];
    /* 2. batches by length under the token budget */
    qsort(order, (size_t)nj, sizeof *order, cmp_job_len_);
    for (int a = 0; a < nj;) {
        int b = a;
        long tokens = 0;
        while (b < nj && (b == a || tokens + order[b]->prep.n <= o->max_batch_tokens)) tokens += order[b++]->prep.n;
        for (int k = a; k < b; k++) bp[k - a] = order[k]->prep;
        if ((rc = qwenvl_encode(err, m, bp, b - a, be, bl))) goto out;
        for (int k = a; k < b; k++) {
            order[k]->emb = be[k - a];
            order[k]->len = bl[k - a];
        }
        st->forwards++;
        st->tokens += (uint64_t)tokens;
        st->prompts += (uint64_t)(b - a);
        a = b;
    }
    /* 3. attach and write in input order */
    for (int k = 0; k < nj; k++) {
        Job_ *j = &jobs[k];
        Record *r = &slots[j->slot].rec;
        rc = j->empty ? attach_(err, r, CACHE_T_PROMPT_EMBEDS_EMPTY, "prompt_empty_len", j->emb, j->len, cfg->hidden)
                      : attach_(err, r, CACHE_T_PROMPT_EMBEDS, "prompt_len", j->emb, j->len, cfg->hidden);
        if (rc) goto out;
    }
    for (int i = 0; i < ns; i++) {
        Slot_ *s = &slots[i];
        if (!s->ok) continue;
        if (!o->keep_cond)
            for (int k = 0;; k++) { /* every source_cond.k: those of the sources, and any beyond */
                char name[64];
                cache_name_k(name, sizeof name, CACHE_T_SOURCE_COND, k);
                if (rec_remove_tensor(&s->rec, name) && k >= s->rec.nsources) break;
            }
        if ((rc = ep_write_record(err, out, &s->rec))) goto out;
        st->records_out++;
    }
out:
    for (int k = 0; jobs && k < nj; k++) {
        qwenvl_prep_free(&jobs[k].prep);
        free(jobs[k].emb);
    }
    free(jobs);
    free(order);
    free(bp);
    free(be);
    free(bl);
    return rc;
}

int te_run(char *err, const TextEncOptions *o, QwenVL *m, Endpoint *in, Endpoint *out, TextEncStats *st) {
    int win = o->window > 0 ? o->window : 1, rc = 0, done = 0;
    Slot_ *slots = calloc((size_t)win, sizeof *slots);
    if (!slots) {
        qie_seterr(err, "encode-text: out of memory");
        return QIE_ENOMEM;
    }
    for (int i = 0; i < win; i++) rec_init(&slots[i].rec);
    while (!done && !rc) {
        int ns = 0;
        while (ns < win) {
            const void *buf;
            size_t len;
            rc = ep_read(err, in, &buf, &len);
            if (rc == QIE_EEOF) { rc = 0; done = 1; break; }
            if (rc) break;
            Slot_ *s = &slots[ns];
            /* a private copy: the endpoint's buffer is only valid until the next read */
            s->buf = malloc(len ? len : 1);
            if (!s->buf) { qie_seterr(err, "encode-text: out of memory for a %zu-byte record", len); rc = QIE_ENOMEM; break; }
            memcpy(s->buf, buf, len);
            st->records_in++;
            ns++;
            s->ok = 1;
            s->njobs = 0;
            if (rec_decode(err, &s->rec, s->buf, len)) {
                char why[QIE_ERR_LEN + 32];
                snprintf(why, sizeof why, "undecodable record: %s", err);
                reject_(s, why, st);
            }
        }
        if (!rc && ns) rc = process_window_(err, o, m, slots, ns, out, st);
        for (int i = 0; i < ns; i++) {
            rec_free(&slots[i].rec);
            free(slots[i].buf);
            slots[i].buf = NULL;
        }
        if (o->progress) progress_update(o->progress, st->records_in);
    }
    free(slots);
    return rc;
}
