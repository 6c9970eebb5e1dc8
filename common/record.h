/* record.h: the one sample record that every qie stage reads and writes.
 *
 * A record is ONE msgpack map, and these exact bytes cross every boundary: a pipe or file frame,
 * a ZeroMQ message, an LMDB value. Schema version 1 (docs/record.md is the full description):
 *
 *   "v"        uint     schema version; a reader rejects any other value (QIE_EVERSION)
 *   "id"       str      stable key: same metadata entry + same shaping settings => same id
 *   "index"    int      position of the entry in the metadata (-1 when unknown)
 *   "text"     str      the caption / edit instruction
 *   "type"     str      "image" (the edit trainer trains on images only)
 *   "bucket"   [h, w]   uints, the target bucket in pixels
 *   "target"   str      path of the target image as written in the metadata
 *   "sources"  [str]    paths of the source (condition) images
 *   "attrs"    map      optional: str -> int | float | str (small per-stage facts: sizes, lengths)
 *   "tensors"  map      str -> {"dtype": str, "shape": [uint...], "data": bin}
 *                       optional "pad": bin before "data", so that data starts 64-byte aligned
 *                       relative to the start of the record (lets LMDB and file readers use it
 *                       in place). dtype is one of dtype.h's names (u8 f32 bf16 f16 i32 i64 ...).
 * Unknown top-level keys are an error (a typo must not be silently dropped).
 *
 * Decoding is zero-copy for tensor payloads: RecTensor.data points into the buffer given to
 * rec_decode when that pointer is aligned for the dtype; otherwise the payload is copied into
 * the record's own storage. Strings are always copied (they are small). */
#ifndef QIE_COMMON_RECORD_H
#define QIE_COMMON_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

#define QIE_RECORD_VERSION 1
#define QIE_REC_MAX_DIMS 8
#define QIE_REC_ALIGN 64

typedef struct {
    char *name;
    QieDtype dtype;
    int ndim;
    int64_t shape[QIE_REC_MAX_DIMS];
    const void *data; /* borrowed (see rec_decode) or owned (rec_set_tensor copies) */
    size_t nbytes;
    void *owned_;     /* non-NULL when the record owns the payload */
} RecTensor;

typedef enum { REC_ATTR_INT = 0, REC_ATTR_FLOAT = 1, REC_ATTR_STR = 2 } RecAttrType;

typedef struct {
    char *name;
    RecAttrType type;
    int64_t i;
    double f;
    char *s;
} RecAttr;

typedef struct {
    uint32_t v;
    char *id;
    int64_t index;
    char *text;
    char *type;
    int32_t bucket[2]; /* h, w; 0,0 when not bucketed yet */
    char *target;
    int nsources;
    char **sources;
    int nattrs;
    RecAttr *attrs;
    int ntensors;
    RecTensor *tensors;
} Record;

/* Caller-owned struct: rec_init zeroes it (v = QIE_RECORD_VERSION, index = -1);
 * rec_free releases everything the record owns and leaves it initialised. NULL is a no-op. */
void rec_init(Record *r);
void rec_free(Record *r);

/* Setters copy their arguments. 0 or QIE_ENOMEM. */
int rec_set_id(Record *r, const char *id);
int rec_set_text(Record *r, const char *text);
int rec_set_type(Record *r, const char *type);
int rec_set_target(Record *r, const char *path);
int rec_add_source(Record *r, const char *path);
int rec_set_attr_int(Record *r, const char *name, int64_t v);
int rec_set_attr_float(Record *r, const char *name, double v);
int rec_set_attr_str(Record *r, const char *name, const char *v);

/* Adds or replaces tensor `name`. copy=1 copies `data`; copy=0 borrows it (caller keeps it alive
 * until the record is encoded or freed). Returns 0, QIE_EINVAL (bad dims/dtype) or QIE_ENOMEM. */
int rec_set_tensor(char *err, Record *r, const char *name, QieDtype dt, int ndim,
                   const int64_t *shape, const void *data, int copy);
/* Allocates an owned, zeroed payload for tensor `name` and returns it through *data_out. */
int rec_new_tensor(char *err, Record *r, const char *name, QieDtype dt, int ndim,
                   const int64_t *shape, void **data_out);
/* Borrowed pointers into the record; NULL when absent. */
const RecTensor *rec_tensor(const Record *r, const char *name);
const RecAttr *rec_attr(const Record *r, const char *name);
int rec_remove_tensor(Record *r, const char *name); /* 0 or QIE_ENOTFOUND */

/* Number of elements; -1 on overflow. */
int64_t rec_numel(int ndim, const int64_t *shape);

/* Encodes r into a new malloc'd buffer (*buf_out, *len_out; caller frees with free()).
 * Tensors with 64-byte aligned payloads are the rule (see "pad" above). */
int rec_encode(char *err, const Record *r, void **buf_out, size_t *len_out);

/* rec_encode without copying payloads that do not exist yet: a tensor added with
 * rec_set_tensor(..., data = NULL, copy = 0) gets its bytes reserved in *buf_out, not written,
 * and payloads[i] (one slot per tensor, in r->tensors order) points at tensor i's payload in
 * the buffer (64-byte aligned relative to its start); payloads[i] is NULL for tensors that had
 * data. Once the caller has written every reserved payload, the buffer holds the same bytes
 * rec_encode gives for the filled record. (qie-decode builds its tensors in place this way.) */
int rec_encode_reserve(char *err, const Record *r, void **buf_out, size_t *len_out, void **payloads);

/* Decodes buf into r (which must be rec_init'ed or freshly rec_free'd). Tensor payloads may
 * borrow from buf: buf must outlive r's use of them. Errors: QIE_EFORMAT (malformed, truncated,
 * trailing bytes, sizes that disagree with shapes), QIE_EVERSION. On error r is left freed. */
int rec_decode(char *err, Record *r, const void *buf, size_t len);

/* Copies everything from src that dst lacks or that src overrides: the merge of a record that
 * arrives in parts (latents from one encoder, embeddings from another). Tensors and attrs of src
 * replace those of the same name in dst; scalar fields are taken from src when set there.
 * Ids must match (QIE_EMISMATCH otherwise). Payloads are copied. */
int rec_merge(char *err, Record *dst, const Record *src);

/* One-line human summary (for qie-cat --print): id, index, bucket, sources, tensors. */
void rec_summary(const Record *r, char *out, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
