/* decode_stage.h: one metadata entry -> one qie record, and the threaded loop over a metadata
 * file. This is qie-decode without its option parsing and endpoints (stages/decode/main.c), so
 * tests can drive it directly. docs/decode.md is the user-facing description.
 *
 * Per entry (trainer_behaviour.md §1, §3; data_pipeline.md §1):
 *   target  decode (Pillow-exact, image.h) -> float32 /255 -> bucket plan (bucket.h) ->
 *           torch antialiased bilinear resize in float32 -> centre crop -> (x-0.5)/0.5 -> bf16
 *           => "target_pixels" bf16 [3, H, W]
 *   sources qwen_image_edit (exactly one source): Pillow LANCZOS to the preferred resolution
 *             closest to the source's true aspect ratio (decisions.md fix)
 *             => "source_pixels.0" u8 [h, w, 3]; the same image feeds the vision tower
 *           qwen_image_edit_plus (one or more): LANCZOS from the original to
 *             calculate_dimensions(1024^2, W/H) => "source_pixels.k" u8 [h, w, 3] and to
 *             calculate_dimensions(384^2, W/H)  => "source_cond.k"   u8 [h, w, 3]
 *           Sources stay u8: the VAE input is bf16(bf16(bf16(u/255) - 0.5) * 2) per element,
 *           which the encoder computes exactly from u8, at half the bytes of bf16.
 * Bad entries are rejects (counted, reported, skipped), never run failures. */
#ifndef QIE_STAGES_DECODE_DECODE_STAGE_H
#define QIE_STAGES_DECODE_DECODE_STAGE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "metadata.h"
#include "progress.h"
#include "record.h"

/* Bump when the meaning of decode output changes for the same inputs and settings: it is part
 * of every record id, so caches keyed by id never mix old and new samples. */
#define DEC_ID_VERSION 1
/* Philox sub-stream of the --random_hw_adapt draws (kernels/rng.h): "hwad" */
#define DEC_HW_SUBSEQ 0x68776164ull

typedef enum { DEC_EDIT = 0, DEC_EDIT_PLUS = 1 } DecTrainMode;

typedef struct {
    DecTrainMode train_mode;
    int sample_size;          /* --image_sample_size */
    int enable_bucket;        /* --enable_bucket; off: square key 1.0 */
    int random_hw_adapt;      /* --random_hw_adapt */
    uint64_t seed;            /* --seed: the hw-adapt draws when no draws file is given */
    const double *hw_draws;   /* borrowed: injected down-scale factor per metadata index, or NULL */
    int64_t n_hw_draws;
    int64_t max_pixels;       /* decoded images and resize sizes above this are rejected */
    int64_t vae_area;         /* edit_plus source VAE-input area (reference: 1024*1024) */
    int64_t cond_area;        /* edit_plus source condition-image area (reference: 384*384) */
    const char *data_root;    /* --train_data_dir; NULL when absent */
} DecodeOpts;

/* The down-scale factor d of entry `index`: 1 without --random_hw_adapt; the injected draw when
 * hw_draws is set; else numpy's choice() rule applied to a 53-bit uniform made (as numpy's
 * random_sample does) from Philox (seed, DEC_HW_SUBSEQ) values 2*index and 2*index+1. One draw
 * per sample = one per batch of the edit trainer, whose only legal batch size is 1; keying it by
 * metadata index makes it independent of -j, --shard and output order. */
double dec_downscale(const DecodeOpts *o, int64_t index);

/* Builds the record of one entry (json, len: the entry's bytes). `r` must be rec_init'ed.
 * Returns 0, or a non-zero code with the reject reason in err and the path it concerns (target,
 * failing source, or "" when the entry had none) in path_out. Every failure here is a reject:
 * the caller reports it and goes on. */
int dec_build_sample(char *err, const DecodeOpts *o, int64_t index, const char *json, size_t len,
                     Record *r, char *path_out, size_t path_cap);

/* The record id: hex SHA-256 (64 chars + NUL) of DEC_ID_VERSION, the record schema version,
 * train mode, sample size, enable_bucket, the effective down-scale factor, the resolved target
 * and source paths and the text, each length-prefixed. */
void dec_sample_id(const DecodeOpts *o, const MetaEntry *e, double d, char out[65]);

/* SHA-256 of a buffer as 64 hex chars + NUL (FIPS 180-4; no dependency). */
void dec_sha256_hex(const void *data, size_t len, char out[65]);

/* Reads injected hw-adapt draws: tensor "random_hw_adapt" (F64 or F32, shape [N]) of a
 * safetensors file; every value must be one of the choices for sample_size. *out is malloc'd
 * (caller frees). */
int dec_load_hw_draws(char *err, const char *path, int sample_size, double **out, int64_t *n);

/* The id of an entry without decoding its images: parses the entry, checks its source count for
 * the mode and hashes what dec_sample_id hashes (the id depends only on paths, text, settings
 * and the hw-adapt draw). Returns 0, or the code dec_build_sample would reject the entry with. */
int dec_entry_id(char *err, const DecodeOpts *o, int64_t index, const char *json, size_t len, char id[65]);

/* A set of record ids ("ids already done": `qie-cache ls DIR --ids_only`), for --skip_ids. */
typedef struct DecIdSet DecIdSet;
/* One id per line (blank lines ignored, surrounding blanks trimmed). *out must be NULL; free with
 * dec_ids_free. 0, an errno, or QIE_ENOMEM. */
int dec_ids_load(char *err, const char *path, DecIdSet **out);
int dec_ids_has(const DecIdSet *s, const char *id);
size_t dec_ids_count(const DecIdSet *s);
void dec_ids_free(DecIdSet **s); /* NULL-safe; nulls *s */

/* Where encoded records go: called under the output lock, one record's bytes at a time. */
typedef int (*DecSinkFn)(char *err, void *ctx, const void *buf, size_t len);

typedef struct {
    DecodeOpts opts;
    int jobs;                 /* decode threads, >= 1 */
    int64_t shard_i, shard_n; /* this run takes entries with index % shard_n == shard_i */
    DecSinkFn sink;
    void *sink_ctx;
    FILE *rejects;            /* JSON lines {"index","path","reason"}; may be NULL */
    Progress *progress;       /* may be NULL */
    const DecIdSet *skip;     /* borrowed: entries whose id is in it are skipped before their
                                 images are decoded (a re-run sends only what is missing); NULL */
} DecodeRun;

typedef struct {
    int64_t entries;  /* entries of this shard */
    int64_t emitted;  /* records written */
    int64_t rejected;
    int64_t skipped;  /* in run->skip: already done elsewhere */
} DecodeStats;

/* Decodes every entry of this shard with run->jobs threads. Output order is the metadata order
 * for jobs == 1 and unspecified otherwise; every good entry is emitted exactly once. Returns 0
 * when the loop completed (rejects included), or the first fatal error: the sink failed, the
 * rejects file could not be written, threads could not start. */
int dec_run(char *err, const DecodeRun *run, const MetaFile *m, DecodeStats *stats);

#endif
