/* safetensors.h: read, validate and write safetensors files and sharded checkpoints.
 *
 * Format and validity rules: spec/data_pipeline.md section 8, which follows the reference Rust
 * crate (huggingface/safetensors, safetensors/src/tensor.rs: SafeTensors::read_metadata,
 * Metadata::validate, prepare). What this module is:
 *   - a reader that mmaps a file read-only and accepts exactly the headers read_metadata
 *     accepts, with the differences listed below; everything it returns is borrowed from the map;
 *   - StModel: one tensor namespace over a single file or the shards named by a
 *     `*.safetensors.index.json` (huggingface/diffusers layout);
 *   - a writer whose files are byte-identical to `safetensors.torch.save_file(t, path,
 *     metadata={"format": "pt"})`, and whose sharded output is what diffusers' save_pretrained
 *     writes (huggingface_hub split_state_dict_into_shards_factory, index via
 *     json.dumps(indent=2, sort_keys=True)).
 * What it is not: a dtype converter (data is raw little-endian bytes, possibly unaligned).
 *
 * Reader differences from the Rust crate, all on inputs no writer produces:
 *   - duplicate tensor names are an error (serde keeps the last one silently);
 *   - a NUL character (\u0000) in a tensor name or metadata string is QIE_EUNSUPPORTED.
 * Everything else follows serde_json + the derived Deserialize exactly, checked by running the
 * fuzz corpus through both readers: strict UTF-8, JSON whitespace around the object, nesting up
 * to 127, unknown entry fields skipped (but still parsed: a number out of f64 range fails), an
 * entry also accepted as [dtype, shape, data_offsets], duplicate __metadata__ keys keep the last.
 * Integers (shape, data_offsets) are parsed exactly as u64, so there is no 2^53 precision loss;
 * that is why the header has its own small JSON parser rather than cJSON (cJSON reads numbers
 * as doubles and ignores trailing garbage). Index files are read with cJSON.
 *
 * defines: SafeTensors, StTensor, st_open/st_parse_header/st_close, StModel, st_model_*,
 *          StWriter, st_writer_*, st_parse_size */
#ifndef QIE_COMMON_SAFETENSORS_H
#define QIE_COMMON_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The reference reader refuses headers longer than this (MAX_HEADER_SIZE). */
#define ST_MAX_HEADER 100000000ull

/* One tensor of an open file. Every pointer is borrowed from the SafeTensors that returned it
 * and valid until st_close (for StModel: st_model_close). */
typedef struct StTensor {
    const char *name;       /* NUL-terminated, UTF-8 */
    QieDtype dtype;
    int ndim;               /* 0 for a scalar */
    const uint64_t *shape;  /* ndim dims (NULL when ndim == 0) */
    uint64_t numel;         /* product of shape; 1 for a scalar, 0 if any dim is 0 */
    const void *data;       /* into the map: little-endian, row-major, NOT necessarily aligned
                             * to the dtype (files from other writers may pad oddly) */
    size_t nbytes;          /* end - begin of data_offsets */
    uint64_t offset;        /* data_offsets begin, relative to the byte buffer */
} StTensor;

typedef struct SafeTensors SafeTensors;

/* Opens and validates `path` (mmap, read-only). *out must be NULL; on success the caller owns
 * *out and frees it with st_close. Returns 0, QIE_EFORMAT for a malformed file,
 * QIE_EUNSUPPORTED (NUL in a name), QIE_ENOMEM or an errno. */
int st_open(char *err, const char *path, SafeTensors **out);

/* Parses and validates a whole file image held in memory: [8-byte N][header][data], len bytes.
 * buf is borrowed: it must outlive *out and stay unchanged. Same codes as st_open. This is the
 * entry point the fuzzer drives. */
int st_parse_header(char *err, const void *buf, size_t len, SafeTensors **out);

/* Frees what st_open/st_parse_header returned and unmaps the file; NULL and *st == NULL are
 * no-ops; sets *st to NULL. */
void st_close(SafeTensors **st);

/* Tensors in file order (ascending data_offsets). i < st_count(st), else NULL. */
size_t st_count(const SafeTensors *st);
const StTensor *st_tensor_at(const SafeTensors *st, size_t i);
/* By exact name (binary search); NULL if absent. */
const StTensor *st_find(const SafeTensors *st, const char *name);

/* __metadata__: value for key, or NULL. Pairs are sorted by key; i < st_metadata_count. All
 * strings borrowed, valid until st_close. */
const char *st_metadata(const SafeTensors *st, const char *key);
size_t st_metadata_count(const SafeTensors *st);
int st_metadata_at(const SafeTensors *st, size_t i, const char **key, const char **value);

/* Header length N and the whole file size. */
uint64_t st_header_len(const SafeTensors *st);
size_t st_file_size(const SafeTensors *st);

/* safetensors dtype spelling ("BF16") <-> QieDtype. st_dtype_parse: 0 or QIE_EINVAL. */
const char *st_dtype_name(QieDtype dt);
int st_dtype_parse(const char *s, size_t len, QieDtype *out);

/* ---- sharded checkpoints -------------------------------------------------------------- */

typedef struct StModel StModel;

/* Opens a checkpoint. path is one of:
 *   - a `*.safetensors.index.json` file: every shard it names is opened from its directory;
 *   - a `*.safetensors` file;
 *   - a directory holding diffusion_pytorch_model.safetensors.index.json,
 *     model.safetensors.index.json, diffusion_pytorch_model.safetensors or model.safetensors
 *     (first found wins), else exactly one *.safetensors.index.json, else exactly one
 *     *.safetensors.
 * The index must be {"weight_map": {name: shard_file, ...}, ...}; a shard name containing '/'
 * or "..", or that is empty, is QIE_EFORMAT (it must not leave the directory). Every weight_map
 * entry must exist in its shard, and every shard tensor must be in the weight_map under that
 * shard (QIE_EMISMATCH otherwise): the index and the shards tell one story.
 * *out must be NULL; the caller frees it with st_model_close. */
int st_model_open(char *err, const char *path, StModel **out);
void st_model_close(StModel **m);

/* All tensors, shard by shard in index order, file order within a shard. Borrowed. */
size_t st_model_count(const StModel *m);
const StTensor *st_model_tensor_at(const StModel *m, size_t i);
/* By name across shards (binary search); NULL if absent. */
const StTensor *st_model_find(const StModel *m, const char *name);
/* Shards in sorted file-name order; names borrowed. */
size_t st_model_shard_count(const StModel *m);
const SafeTensors *st_model_shard(const StModel *m, size_t i);
const char *st_model_shard_name(const StModel *m, size_t i);

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct StWriter StWriter;

/* *out must be NULL; freed with st_writer_destroy (NULL-safe, nulls the pointer). The writer
 * starts with metadata {"format": "pt"} (spec 8, "Compatibility"). */
int st_writer_create(char *err, StWriter **out);
void st_writer_destroy(StWriter **w);

/* Adds a tensor. name and shape are copied; data is BORROWED and must stay valid and unchanged
 * until the last st_writer_write* call. nbytes must equal numel * dtype_size (checked). Only the
 * classic dtypes may be written (spec 8: "Only emit the classic ones"): others are
 * QIE_EUNSUPPORTED. Names must be valid UTF-8. Insertion order is the sharding order. A
 * duplicate name is found (sorting, not by a scan per add) and refused, QIE_EINVAL, by the
 * write calls. */
int st_writer_add(char *err, StWriter *w, const char *name, QieDtype dt, int ndim,
                  const uint64_t *shape, const void *data, size_t nbytes);

/* Sets (or replaces) a __metadata__ entry; both strings are copied. */
int st_writer_set_metadata(char *err, StWriter *w, const char *key, const char *value);

/* Writes every tensor into one file at path: to a temp file in the same directory, fsync,
 * rename, fsync of the directory, so a reader sees the old file or the whole new one. */
int st_writer_write(char *err, StWriter *w, const char *path);

/* Writes a checkpoint into dir (which must exist) the way diffusers save_pretrained does:
 * tensors are split in insertion order into shards of at most max_shard_size bytes of tensor
 * data (a bigger tensor gets a shard of its own; st_parse_size syntax), written as
 * <prefix>-00001-of-0000M.safetensors plus <prefix>.safetensors.index.json (written last);
 * one shard is written as <prefix>.safetensors with no index. Older files in dir are left
 * alone. *nshards (may be NULL) receives the number of shard files. */
int st_writer_write_sharded(char *err, StWriter *w, const char *dir, const char *prefix,
                            const char *max_shard_size, int *nshards);

/* "80GB", "500MB", "10KB", "1.5GB", "5GiB", "123" (bytes): case-insensitive units
 * TB/GB/MB/KB = 10^12/10^9/10^6/10^3 as huggingface_hub parse_size_to_int, TiB/GiB/MiB/KiB
 * = 2^40.. as transformers convert_file_size_to_int, B or no unit = bytes; surrounding blanks
 * allowed; a fractional value is truncated toward zero after scaling, as int(value * unit).
 * 0 or QIE_EINVAL. */
int st_parse_size(char *err, const char *s, uint64_t *out);

/* ---- internal, shared by safetensors.c and safetensors_write.c --------------------------- */

/* Position in the reference Dtype enum (its Ord); -1 for an invalid dtype. */
int st_dtype_rank_(QieDtype dt);
/* Offset of the first byte that breaks strict UTF-8 (as Rust's str::from_utf8), or len. */
size_t st_utf8_check_(const uint8_t *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif
