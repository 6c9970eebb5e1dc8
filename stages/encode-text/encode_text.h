/* encode_text.h: qie-encode-text's logic, without option parsing and endpoints (main.c), so tests
 * can drive it. docs/text-encoder.md is the user-facing description.
 *
 * Per record (record.h; names from cache_names.h), with --train_mode:
 *   in   "text"                      the instruction (must not be empty)
 *        qwen_image_edit_plus:       "source_cond.k" u8 [h, w, 3], k = 0..nsources-1 (qie-decode's
 *                                    384²-area images for the vision tower; none for 0 sources)
 *        qwen_image_edit:            "source_pixels.0" u8 [h, w, 3] (the one source, as the VAE
 *                                    sees it; the vision tower gets the same image, model.md §3.4)
 *   out  "prompt_embeds"             bf16 [L, hidden] (CACHE_T_PROMPT_EMBEDS) + attr "prompt_len" = L
 *        "prompt_embeds_empty"       bf16 [Le, hidden], the empty prompt with the same images, when
 *                                    text_drop_ratio > 0 (CACHE_T_PROMPT_EMBEDS_EMPTY, decisions.md
 *                                    caption dropout) + attr "prompt_empty_len" = Le
 *        "source_cond.k" are dropped unless keep_cond (only the vision tower reads them);
 *        "source_pixels.k" stay (the VAE encoder reads them).
 * Bad records (empty text, text longer than the model allows, an image the processor refuses,
 * missing or malformed condition images, a record train_mode attr that disagrees) are rejected:
 * one warning line naming the record id and the reason, counted, left out; the stream goes on.
 * Batching: records are read in windows; their prompts are sorted by token count and packed into
 * forwards of at most max_batch_tokens tokens (samples are packed without padding); output order
 * is input order. */
#ifndef QIE_STAGES_ENCODE_TEXT_H
#define QIE_STAGES_ENCODE_TEXT_H

#include <stdint.h>

#include "endpoint.h"
#include "progress.h"
#include "qwenvl.h"
#include "record.h"

typedef struct {
    QwenVLMode mode;          /* --train_mode */
    double text_drop_ratio;   /* > 0: also "prompt_embeds_empty" */
    int max_batch_tokens;     /* LLM tokens per forward (one prompt always fits) */
    int window;               /* records read ahead and batched together */
    int keep_cond;            /* keep "source_cond.k" */
    int prep_threads;         /* CPU threads for tokenizer + processor (>= 1) */
    Progress *progress;       /* may be NULL */
} TextEncOptions;

typedef struct {
    uint64_t records_in, records_out, rejected, prompts, tokens, forwards;
} TextEncStats;

/* The condition images of record r for `mode` into im[0..*n) (borrowed from r). QIE_EINVAL with a
 * reason in err when one is missing or not u8 [h, w, 3]. cap: capacity of im. */
int te_record_images(char *err, const Record *r, QwenVLMode mode, QwenVLImage *im, int cap, int *n);

/* Reads records from `in` until the end of the stream, encodes them with `m` and writes them to
 * `out`. Returns 0 at a clean end of stream, else the first endpoint or model error (rejected
 * records are not errors: they are counted in st->rejected). */
int te_run(char *err, const TextEncOptions *o, QwenVL *m, Endpoint *in, Endpoint *out, TextEncStats *st);

#endif
