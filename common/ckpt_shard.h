/* ckpt_shard.h: sharded training checkpoints (ZeRO / FSDP) and their consolidation into a
 * diffusers transformer (docs/distributed.md "Sharded checkpoints"; trainer_behaviour.md §5.5,
 * decisions.md "consolidated weights").
 *
 * A sharded checkpoint is a folder (normally OUTPUT_DIR/checkpoint-N) holding
 *   rank-RRRRR-of-WWWWW.safetensors   one per rank, written by that rank: its part of the flat fp32
 *                                     master parameter buffer and of the AdamW moments, as 1-D F32
 *                                     tensors "master", "exp_avg", "exp_avg_sq" (the moments may be
 *                                     absent: weights only). The part is a list of [start, end)
 *                                     segments of the flat buffer, stored back to back; __metadata__
 *                                     records qie_format, world, rank, num_params, names_hash,
 *                                     segments ("s-e,s-e,...") and optionally step.
 *   layout.json                       rank 0: the flat buffer's table: every tensor's diffusers name,
 *                                     element offset and shape (and "frozen": true for tensors that
 *                                     were not trained), num_params, names_hash.
 *   config.json                       rank 0: the transformer's config.json, unchanged.
 * The segments of all rank files tile [0, num_params) exactly: one segment per rank for ZeRO-1/2
 * (ckpt_slice of the whole buffer), one per parameter range for ZeRO-3/FSDP (ckpt_slice of each
 * range), one file holding everything for DDP (world 1). A reader rebuilds any [start, end) from
 * whichever files overlap it, so a run can resume on another number of GPUs and qie-merge can
 * stream the tensors out (llm.c ShardInfo arithmetic).
 *
 * names_hash: FNV-1a 64 over, for each tensor in buffer order, "<name>\t<offset>\t<d0>x<d1>...\n",
 * then "num_params=<N>\n"; written as 16 lower-case hex digits. It ties rank files to a layout:
 * resuming with another model config or another qie layout is refused instead of scrambling.
 *
 * defines: CkptSeg, ckpt_slice, ckpt_range_slices, ckpt_layout_hash, ckpt_layout_write, CkptShard,
 *          ckpt_shard_write, ckpt_shard_path, CkptReader, ckpt_reader_*, CkptLayout,
 *          ckpt_layout_read/free, ckpt_merge */
#ifndef QIE_COMMON_CKPT_SHARD_H
#define QIE_COMMON_CKPT_SHARD_H

#include <stddef.h>
#include <stdint.h>

#include "dit.h"

#ifdef __cplusplus
extern "C" {
#endif

#define CKPT_SHARD_FORMAT "qie-zero/1"
#define CKPT_SHARD_MAX_SEGS 65536 /* per rank file */

typedef struct {
    size_t start, end; /* elements of the flat buffer, [start, end) */
} CkptSeg;

/* ShardInfo arithmetic: rank's part of n elements, [n·rank/world, n·(rank+1)/world). Equal parts
 * when world divides n (always, for the padded DiT buffer and its ranges, when world divides
 * DIT_MAX_WORLD). */
CkptSeg ckpt_slice(size_t n, int world, int rank);
/* ZeRO-3/FSDP: rank's part of every range of lay (segs has lay->nranges entries). */
void ckpt_range_slices(const DitLayout *lay, int world, int rank, CkptSeg *segs);

/* names_hash of a layout (see above). */
uint64_t ckpt_layout_hash(const DitLayout *lay);

/* Rank 0: writes dir/layout.json and dir/config.json (config_json: the text of the transformer's
 * config.json). frozen: NULL, or one flag per lay->tensors entry (1: not trained). Each file goes
 * through a temp file, fsync and rename. */
int ckpt_layout_write(char *err, const char *dir, const DitLayout *lay, const char *config_json,
                      const unsigned char *frozen);

typedef struct {
    int world, rank;
    size_t num_params;
    uint64_t names_hash;         /* ckpt_layout_hash */
    int64_t step;                /* recorded when >= 0 */
    int nsegs;                   /* 1..CKPT_SHARD_MAX_SEGS */
    const CkptSeg *segs;         /* ascending, disjoint, within [0, num_params) */
    const float *master;         /* host f32 [Σ segment lengths]: the segments back to back */
    const float *exp_avg;        /* the same layout, or NULL (then exp_avg_sq must be NULL too) */
    const float *exp_avg_sq;
} CkptShard;

/* dir/rank-RRRRR-of-WWWWW.safetensors */
void ckpt_shard_path(char *out, size_t cap, const char *dir, int rank, int world);
/* Writes this rank's file (temp file, fsync, rename, fsync of dir). The buffers are only read. */
int ckpt_shard_write(char *err, const char *dir, const CkptShard *s);

typedef enum { CKPT_MASTER = 0, CKPT_EXP_AVG = 1, CKPT_EXP_AVG_SQ = 2 } CkptWhich;

typedef struct CkptReader CkptReader;

/* Opens every rank file of dir (mmap) and checks that they form one checkpoint: one world size W,
 * every rank 0..W-1 present, the same num_params and names_hash, segments that tile
 * [0, num_params). *out must be NULL; free with ckpt_reader_close. Returns 0, QIE_ENOTFOUND (no
 * rank files, or one missing: err names it), QIE_EFORMAT (a corrupt file, gaps or overlaps),
 * QIE_EMISMATCH (files of different runs). */
int ckpt_reader_open(char *err, const char *dir, CkptReader **out);
void ckpt_reader_close(CkptReader **r); /* NULL-safe; nulls the pointer */

int ckpt_reader_world(const CkptReader *r);
size_t ckpt_reader_num_params(const CkptReader *r);
uint64_t ckpt_reader_names_hash(const CkptReader *r);
int ckpt_reader_has_moments(const CkptReader *r); /* every file has exp_avg and exp_avg_sq */
int64_t ckpt_reader_step(const CkptReader *r);    /* -1 when not recorded */

/* QIE_EMISMATCH (with a hint) when the checkpoint was not written for this layout. */
int ckpt_reader_check(char *err, const CkptReader *r, const DitLayout *lay);

/* dst[0 .. end-start) = elements [start, end) of the flat buffer `which`. QIE_ENOTFOUND for the
 * moments of a weights-only checkpoint; QIE_EINVAL for a range outside [0, num_params). */
int ckpt_reader_read(char *err, const CkptReader *r, CkptWhich which, size_t start, size_t end, float *dst);
/* The same for several segments, stored back to back in dst (a new rank's CkptShard layout). */
int ckpt_reader_read_segs(char *err, const CkptReader *r, CkptWhich which, const CkptSeg *segs, int nsegs,
                          float *dst);

/* layout.json, as read back (merge needs no DitConfig: the file is the table). */
typedef struct {
    char name[160];
    size_t offset, numel;
    int ndim;
    uint64_t shape[4];
    int frozen;
} CkptTensor;

typedef struct {
    size_t num_params;
    uint64_t names_hash;  /* as recorded; ckpt_layout_read checks it against the table */
    int ntensors;
    CkptTensor *tensors;  /* buffer order */
} CkptLayout;

/* Reads and validates dir/layout.json (tensors inside [0, num_params), no overlaps, the recorded
 * hash equal to the table's). l is caller-owned; free with ckpt_layout_free (safe when zeroed). */
int ckpt_layout_read(char *err, const char *dir, CkptLayout *l);
void ckpt_layout_free(CkptLayout *l);

/* zero_to_bf16 (trainer_behaviour.md §5.5, with decisions.md's diffusers layout): reads the
 * master weights of the sharded checkpoint in ckpt_dir and writes out_dir (created if needed):
 * config.json, then diffusion_pytorch_model.safetensors, or diffusion_pytorch_model-0000k-of-
 * 0000n.safetensors + diffusion_pytorch_model.safetensors.index.json (written last) when the bf16
 * tensors exceed max_shard_size ("80GB"; huggingface's greedy split in layout order). Streaming:
 * one output shard in memory at a time. exclude_frozen leaves out tensors layout.json marks
 * frozen. Older diffusion_pytorch_model* files of out_dir that the new set does not contain are
 * removed afterwards (so from_pretrained cannot pick a stale index). *nshards may be NULL. */
int ckpt_merge(char *err, const char *ckpt_dir, const char *out_dir, const char *max_shard_size, int exclude_frozen,
               int *nshards);

#ifdef __cplusplus
}
#endif
#endif
