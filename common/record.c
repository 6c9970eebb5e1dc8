/* record.c: building, encoding and decoding the sample record (schema in record.h). */
#include "record.h"
#include "err.h"

#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void rec_init(Record *r) {
    memset(r, 0, sizeof *r);
    r->v = QIE_RECORD_VERSION;
    r->index = -1;
}

static void rec_tensor_free_(RecTensor *t) {
    free(t->name);
    free(t->owned_);
}

void rec_free(Record *r) {
    if (!r) return;
    free(r->id);
    free(r->text);
    free(r->type);
    free(r->target);
    for (int i = 0; i < r->nsources; i++) free(r->sources[i]);
    free(r->sources);
    for (int i = 0; i < r->nattrs; i++) {
        free(r->attrs[i].name);
        free(r->attrs[i].s);
    }
    free(r->attrs);
    for (int i = 0; i < r->ntensors; i++) rec_tensor_free_(&r->tensors[i]);
    free(r->tensors);
    rec_init(r);
}

static int set_str_(char **dst, const char *s) {
    char *c = s ? strdup(s) : NULL;
    if (s && !c) return QIE_ENOMEM;
    free(*dst);
    *dst = c;
    return 0;
}

int rec_set_id(Record *r, const char *id) { return set_str_(&r->id, id); }
int rec_set_text(Record *r, const char *text) { return set_str_(&r->text, text); }
int rec_set_type(Record *r, const char *type) { return set_str_(&r->type, type); }
int rec_set_target(Record *r, const char *path) { return set_str_(&r->target, path); }

int rec_add_source(Record *r, const char *path) {
    char **s = realloc(r->sources, (size_t)(r->nsources + 1) * sizeof *s);
    if (!s) return QIE_ENOMEM;
    r->sources = s;
    if (!(s[r->nsources] = strdup(path))) return QIE_ENOMEM;
    r->nsources++;
    return 0;
}

static RecAttr *attr_slot_(Record *r, const char *name) {
    for (int i = 0; i < r->nattrs; i++)
        if (!strcmp(r->attrs[i].name, name)) {
            free(r->attrs[i].s);
            r->attrs[i].s = NULL;
            return &r->attrs[i];
        }
    RecAttr *a = realloc(r->attrs, (size_t)(r->nattrs + 1) * sizeof *a);
    if (!a) return NULL;
    r->attrs = a;
    RecAttr *slot = &a[r->nattrs];
    memset(slot, 0, sizeof *slot);
    if (!(slot->name = strdup(name))) return NULL;
    r->nattrs++;
    return slot;
}

int rec_set_attr_int(Record *r, const char *name, int64_t v) {
    RecAttr *a = attr_slot_(r, name);
    if (!a) return QIE_ENOMEM;
    a->type = REC_ATTR_INT;
    a->i = v;
    return 0;
}

int rec_set_attr_float(Record *r, const char *name, double v) {
    RecAttr *a = attr_slot_(r, name);
    if (!a) return QIE_ENOMEM;
    a->type = REC_ATTR_FLOAT;
    a->f = v;
    return 0;
}

int rec_set_attr_str(Record *r, const char *name, const char *v) {
    RecAttr *a = attr_slot_(r, name);
    if (!a) return QIE_ENOMEM;
    a->type = REC_ATTR_STR;
    return (a->s = strdup(v)) ? 0 : QIE_ENOMEM;
}

const RecAttr *rec_attr(const Record *r, const char *name) {
    for (int i = 0; i < r->nattrs; i++)
        if (!strcmp(r->attrs[i].name, name)) return &r->attrs[i];
    return NULL;
}

int64_t rec_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] && n > INT64_MAX / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

const RecTensor *rec_tensor(const Record *r, const char *name) {
    for (int i = 0; i < r->ntensors; i++)
        if (!strcmp(r->tensors[i].name, name)) return &r->tensors[i];
    return NULL;
}

int rec_remove_tensor(Record *r, const char *name) {
    for (int i = 0; i < r->ntensors; i++)
        if (!strcmp(r->tensors[i].name, name)) {
            rec_tensor_free_(&r->tensors[i]);
            memmove(&r->tensors[i], &r->tensors[i + 1], (size_t)(r->ntensors - i - 1) * sizeof *r->tensors);
            r->ntensors--;
            return 0;
        }
    return QIE_ENOTFOUND;
}

/* Finds or appends the slot for `name`, releasing what an old tensor of that name owned. */
static RecTensor *tensor_slot_(Record *r, const char *name) {
    for (int i = 0; i < r->ntensors; i++)
        if (!strcmp(r->tensors[i].name, name)) {
            free(r->tensors[i].owned_);
            r->tensors[i].owned_ = NULL;
            return &r->tensors[i];
        }
    RecTensor *t = realloc(r->tensors, (size_t)(r->ntensors + 1) * sizeof *t);
    if (!t) return NULL;
    r->tensors = t;
    RecTensor *slot = &t[r->ntensors];
    memset(slot, 0, sizeof *slot);
    if (!(slot->name = strdup(name))) return NULL;
    r->ntensors++;
    return slot;
}

static int tensor_size_(char *err, const char *name, QieDtype dt, int ndim, const int64_t *shape, size_t *nbytes) {
    if (!dtype_name(dt) || !dtype_size(dt)) { /* sub-byte dtypes cannot travel in records */
        qie_seterr(err, "tensor '%s': invalid dtype %d", name, (int)dt);
        return QIE_EINVAL;
    }
    if (ndim < 0 || ndim > QIE_REC_MAX_DIMS) {
        qie_seterr(err, "tensor '%s': %d dims (at most %d)", name, ndim, QIE_REC_MAX_DIMS);
        return QIE_EINVAL;
    }
    int64_t n = rec_numel(ndim, shape);
    if (n < 0 || (uint64_t)n > SIZE_MAX / dtype_size(dt)) {
        qie_seterr(err, "tensor '%s': bad or overflowing shape", name);
        return QIE_EINVAL;
    }
    *nbytes = (size_t)n * dtype_size(dt);
    return 0;
}

int rec_set_tensor(char *err, Record *r, const char *name, QieDtype dt, int ndim, const int64_t *shape,
                   const void *data, int copy) {
    size_t nbytes;
    int rc = tensor_size_(err, name, dt, ndim, shape, &nbytes);
    if (rc) return rc;
    void *owned = NULL;
    if (copy) {
        if (!(owned = malloc(nbytes ? nbytes : 1))) goto nomem;
        if (nbytes) memcpy(owned, data, nbytes);
    }
    RecTensor *t = tensor_slot_(r, name);
    if (!t) { free(owned); goto nomem; }
    t->dtype = dt;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->nbytes = nbytes;
    t->owned_ = owned;
    t->data = copy ? owned : data;
    return 0;
nomem:
    qie_seterr(err, "tensor '%s': out of memory for %zu bytes", name, nbytes);
    return QIE_ENOMEM;
}

int rec_new_tensor(char *err, Record *r, const char *name, QieDtype dt, int ndim, const int64_t *shape,
                   void **data_out) {
    size_t nbytes;
    int rc = tensor_size_(err, name, dt, ndim, shape, &nbytes);
    if (rc) return rc;
    void *p = calloc(1, nbytes ? nbytes : 1);
    if (!p) {
        qie_seterr(err, "tensor '%s': out of memory for %zu bytes", name, nbytes);
        return QIE_ENOMEM;
    }
    if ((rc = rec_set_tensor(err, r, name, dt, ndim, shape, p, 0))) { free(p); return rc; }
    ((RecTensor *)rec_tensor(r, name))->owned_ = p;
    *data_out = p;
    return 0;
}

/* ---- encoding ---- */

static void pack_str_(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

static size_t bin_header_len_(size_t n) { return n < 256 ? 2 : n < 65536 ? 3 : 5; }

/* payloads == NULL: rec_encode. Otherwise rec_encode_reserve: a tensor with data == NULL gets
 * its bin header and nbytes of reserved (unwritten) space, reported in payloads[i]. */
static int encode_(char *err, const Record *r, void **buf_out, size_t *len_out, void **payloads) {
    if (!r->id || !*r->id) {
        qie_seterr(err, "record encode: the record has no id");
        return QIE_EINVAL;
    }
    size_t cap = 4096 + (r->text ? strlen(r->text) : 0) + (r->target ? strlen(r->target) : 0);
    for (int i = 0; i < r->nsources; i++) cap += strlen(r->sources[i]) + 8;
    for (int i = 0; i < r->nattrs; i++) cap += strlen(r->attrs[i].name) + (r->attrs[i].s ? strlen(r->attrs[i].s) : 0) + 24;
    for (int i = 0; i < r->ntensors; i++) cap += r->tensors[i].nbytes + strlen(r->tensors[i].name) + 160;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    /* one allocation of the right size: msgpack_sbuffer would otherwise double from 8 KiB */
    if (!(sb.data = malloc(cap))) {
        qie_seterr(err, "record encode '%s': out of memory for %zu bytes", r->id, cap);
        return QIE_ENOMEM;
    }
    sb.alloc = cap;
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);

    int nkeys = 8 + (r->nattrs > 0) + (r->ntensors > 0);
    msgpack_pack_map(&pk, (size_t)nkeys);
    pack_str_(&pk, "v");
    msgpack_pack_uint32(&pk, r->v);
    pack_str_(&pk, "id");
    pack_str_(&pk, r->id);
    pack_str_(&pk, "index");
    msgpack_pack_int64(&pk, r->index);
    pack_str_(&pk, "text");
    pack_str_(&pk, r->text ? r->text : "");
    pack_str_(&pk, "type");
    pack_str_(&pk, r->type ? r->type : "image");
    pack_str_(&pk, "bucket");
    msgpack_pack_array(&pk, 2);
    msgpack_pack_uint32(&pk, (uint32_t)r->bucket[0]);
    msgpack_pack_uint32(&pk, (uint32_t)r->bucket[1]);
    pack_str_(&pk, "target");
    pack_str_(&pk, r->target ? r->target : "");
    pack_str_(&pk, "sources");
    msgpack_pack_array(&pk, (size_t)r->nsources);
    for (int i = 0; i < r->nsources; i++) pack_str_(&pk, r->sources[i]);
    if (r->nattrs) {
        pack_str_(&pk, "attrs");
        msgpack_pack_map(&pk, (size_t)r->nattrs);
        for (int i = 0; i < r->nattrs; i++) {
            const RecAttr *a = &r->attrs[i];
            pack_str_(&pk, a->name);
            if (a->type == REC_ATTR_INT) msgpack_pack_int64(&pk, a->i);
            else if (a->type == REC_ATTR_FLOAT) msgpack_pack_double(&pk, a->f);
            else pack_str_(&pk, a->s ? a->s : "");
        }
    }
    if (r->ntensors) {
        pack_str_(&pk, "tensors");
        msgpack_pack_map(&pk, (size_t)r->ntensors);
        for (int i = 0; i < r->ntensors; i++) {
            const RecTensor *t = &r->tensors[i];
            pack_str_(&pk, t->name);
            msgpack_pack_map(&pk, 4);
            pack_str_(&pk, "dtype");
            pack_str_(&pk, dtype_name(t->dtype));
            pack_str_(&pk, "shape");
            msgpack_pack_array(&pk, (size_t)t->ndim);
            for (int d = 0; d < t->ndim; d++) msgpack_pack_uint64(&pk, (uint64_t)t->shape[d]);
            /* "pad" (fixstr 4) + bin8 header (2) + k bytes, then "data" (fixstr 5) + bin header */
            size_t after = sb.size + 4 + 2 + 5 + bin_header_len_(t->nbytes);
            size_t k = (QIE_REC_ALIGN - after % QIE_REC_ALIGN) % QIE_REC_ALIGN;
            static const char zeros[QIE_REC_ALIGN];
            pack_str_(&pk, "pad");
            msgpack_pack_bin_with_body(&pk, zeros, k);
            pack_str_(&pk, "data");
            if (payloads && !t->data && t->nbytes) {
                msgpack_pack_bin(&pk, t->nbytes);
                if (sb.size + t->nbytes > sb.alloc) { /* cannot happen: cap is an upper bound */
                    sb.size = cap + 1;
                    break;
                }
                payloads[i] = (void *)(uintptr_t)sb.size; /* an offset until the end */
                sb.size += t->nbytes;
            } else {
                if (payloads) payloads[i] = NULL;
                msgpack_pack_bin_with_body(&pk, t->nbytes ? t->data : zeros, t->nbytes);
            }
        }
    }
    if (sb.size > cap) { /* the estimate is an upper bound; a realloc means it was wrong */
        msgpack_sbuffer_destroy(&sb);
        qie_seterr(err, "record encode '%s': size estimate exceeded (bug)", r->id);
        return QIE_EINVAL;
    }
    if (!sb.data) {
        qie_seterr(err, "record encode '%s': out of memory", r->id);
        return QIE_ENOMEM;
    }
    if (payloads)
        for (int i = 0; i < r->ntensors; i++)
            if (payloads[i]) payloads[i] = sb.data + (uintptr_t)payloads[i];
    *buf_out = sb.data;
    *len_out = sb.size;
    return 0;
}

int rec_encode(char *err, const Record *r, void **buf_out, size_t *len_out) {
    return encode_(err, r, buf_out, len_out, NULL);
}

int rec_encode_reserve(char *err, const Record *r, void **buf_out, size_t *len_out, void **payloads) {
    return encode_(err, r, buf_out, len_out, payloads);
}

/* ---- decoding ---- */

static int key_is_(const msgpack_object *k, const char *s) {
    size_t n = strlen(s);
    return k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && !memcmp(k->via.str.ptr, s, n);
}

static char *dup_obj_str_(const msgpack_object *o) {
    char *s = malloc(o->via.str.size + 1);
    if (!s) return NULL;
    memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = 0;
    return s;
}

static int obj_uint_(const msgpack_object *o, uint64_t *out) {
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER) return -1;
    *out = o->via.u64;
    return 0;
}

static int obj_int_(const msgpack_object *o, int64_t *out) {
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > INT64_MAX) return -1;
        *out = (int64_t)o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *out = o->via.i64; return 0; }
    return -1;
}

/* msgpack-c sizes a container's zone allocation from its declared count before it looks at
 * the bytes, so a 10-byte record claiming 2^32 map entries would ask for 128 GiB. This walk
 * checks that every declared count fits in the bytes left (each item takes at least one byte)
 * and that nesting stays within msgpack-c's limit, before msgpack-c sees the buffer. */
static int mp_prevalidate_(const unsigned char *p, size_t len) {
    uint64_t stack[32];
    int depth = 0;
    stack[depth++] = 1;
    size_t off = 0;
    while (depth) {
        if (stack[depth - 1] == 0) { depth--; continue; }
        stack[depth - 1]--;
        if (off >= len) return -1;
        unsigned b = p[off++];
        uint64_t skip = 0, items = 0;
        int container = 0;
        size_t need = 0; /* size bytes following the tag */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) { /* one byte */
        } else if (b >= 0x80 && b <= 0x8f) { items = 2ull * (b & 0x0f); container = 1;
        } else if (b >= 0x90 && b <= 0x9f) { items = b & 0x0f; container = 1;
        } else if (b >= 0xa0 && b <= 0xbf) { skip = b & 0x1f;
        } else {
            uint64_t n = 0;
            switch (b) {
            case 0xc4: case 0xd9: need = 1; break;
            case 0xc5: case 0xda: need = 2; break;
            case 0xc6: case 0xdb: need = 4; break;
            case 0xc7: need = 1; break;
            case 0xc8: need = 2; break;
            case 0xc9: need = 4; break;
            case 0xca: skip = 4; break;
            case 0xcb: skip = 8; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xce: case 0xd2: skip = 4; break;
            case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: skip = 2; break;
            case 0xd5: skip = 3; break;
            case 0xd6: skip = 5; break;
            case 0xd7: skip = 9; break;
            case 0xd8: skip = 17; break;
            case 0xdc: case 0xde: need = 2; break;
            case 0xdd: case 0xdf: need = 4; break;
            default: return -1; /* 0xc1 */
            }
            if (need) {
                if (len - off < need) return -1;
                for (size_t i = 0; i < need; i++) n = n << 8 | p[off + i];
                off += need;
                if (b == 0xdc || b == 0xdd) { items = n; container = 1; }
                else if (b == 0xde || b == 0xdf) { items = 2 * n; container = 1; }
                else if (b >= 0xc7 && b <= 0xc9) skip = n + 1; /* ext: type byte + data */
                else skip = n;
            }
        }
        if (container) {
            if (items > len - off) return -1;
            if (items) {
                if (depth == 32) return -1;
                stack[depth++] = items;
            }
        } else {
            if (skip > len - off) return -1;
            off += skip;
        }
    }
    return 0;
}

#define BAD(...) do { qie_seterr(err, __VA_ARGS__); rc = QIE_EFORMAT; goto fail; } while (0)
#define NOMEM() do { qie_seterr(err, "record decode: out of memory"); rc = QIE_ENOMEM; goto fail; } while (0)

static int decode_tensor_(char *err, Record *r, const msgpack_object *key, const msgpack_object *val) {
    int rc = 0;
    char name[256];
    if (key->type != MSGPACK_OBJECT_STR || key->via.str.size == 0 || key->via.str.size >= sizeof name) {
        qie_seterr(err, "record decode: a tensor name is not a string of 1..255 bytes");
        return QIE_EFORMAT;
    }
    memcpy(name, key->via.str.ptr, key->via.str.size);
    name[key->via.str.size] = 0;
    if (rec_tensor(r, name)) BAD("record decode: tensor '%s' appears twice", name);
    if (val->type != MSGPACK_OBJECT_MAP) BAD("record decode: tensor '%s' is not a map", name);
    const msgpack_object *dto = NULL, *shape = NULL, *data = NULL;
    for (uint32_t i = 0; i < val->via.map.size; i++) {
        const msgpack_object_kv *kv = &val->via.map.ptr[i];
        if (key_is_(&kv->key, "dtype")) dto = &kv->val;
        else if (key_is_(&kv->key, "shape")) shape = &kv->val;
        else if (key_is_(&kv->key, "data")) data = &kv->val;
        else if (key_is_(&kv->key, "pad")) continue;
        else BAD("record decode: tensor '%s' has an unknown key", name);
    }
    if (!dto || dto->type != MSGPACK_OBJECT_STR) BAD("record decode: tensor '%s' has no dtype string", name);
    if (!shape || shape->type != MSGPACK_OBJECT_ARRAY) BAD("record decode: tensor '%s' has no shape array", name);
    if (!data || data->type != MSGPACK_OBJECT_BIN) BAD("record decode: tensor '%s' has no bin data", name);
    QieDtype dt;
    if (dtype_parse(dto->via.str.ptr, dto->via.str.size, &dt))
        BAD("record decode: tensor '%s' has unknown dtype '%.*s'", name, (int)dto->via.str.size, dto->via.str.ptr);
    if (shape->via.array.size > QIE_REC_MAX_DIMS) BAD("record decode: tensor '%s' has too many dims", name);
    int64_t dims[QIE_REC_MAX_DIMS];
    for (uint32_t d = 0; d < shape->via.array.size; d++) {
        uint64_t u;
        if (obj_uint_(&shape->via.array.ptr[d], &u) || u > (uint64_t)INT64_MAX)
            BAD("record decode: tensor '%s' has a bad dim", name);
        dims[d] = (int64_t)u;
    }
    int ndim = (int)shape->via.array.size;
    int64_t n = rec_numel(ndim, dims);
    if (n < 0 || (uint64_t)n > SIZE_MAX / dtype_size(dt) || (size_t)n * dtype_size(dt) != data->via.bin.size)
        BAD("record decode: tensor '%s': %u data bytes do not match its dtype and shape", name, data->via.bin.size);
    const void *p = data->via.bin.ptr;
    int aligned = ((uintptr_t)p % dtype_size(dt)) == 0;
    if ((rc = rec_set_tensor(err, r, name, dt, ndim, dims, p, !aligned))) return rc;
    return 0;
fail:
    return rc;
}

int rec_decode(char *err, Record *r, const void *buf, size_t len) {
    int rc = 0;
    msgpack_unpacked up;
    msgpack_unpacked_init(&up);
    rec_free(r);
    size_t off = 0;
    if (mp_prevalidate_(buf, len)) BAD("record decode: truncated or malformed msgpack (%zu bytes)", len);
    msgpack_unpack_return ur = msgpack_unpack_next(&up, buf, len, &off);
    if (ur == MSGPACK_UNPACK_CONTINUE) BAD("record decode: truncated record (%zu bytes)", len);
    if (ur != MSGPACK_UNPACK_SUCCESS) BAD("record decode: not msgpack (%zu bytes)", len);
    if (off != len) BAD("record decode: %zu trailing bytes after the record", len - off);
    const msgpack_object *root = &up.data;
    if (root->type != MSGPACK_OBJECT_MAP) BAD("record decode: the record is not a msgpack map");
    int have_v = 0, have_id = 0;
    /* the version first, so that a newer schema gets QIE_EVERSION rather than a key error */
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object_kv *kv = &root->via.map.ptr[i];
        if (!key_is_(&kv->key, "v")) continue;
        uint64_t v;
        if (obj_uint_(&kv->val, &v)) BAD("record decode: 'v' is not an unsigned integer");
        if (v != QIE_RECORD_VERSION) {
            qie_seterr(err, "record decode: schema version %" PRIu64 " (this qie reads %d)", v, QIE_RECORD_VERSION);
            rc = QIE_EVERSION;
            goto fail;
        }
        have_v = 1;
    }
    if (!have_v) BAD("record decode: no schema version 'v'");
    for (uint32_t i = 0; i < root->via.map.size; i++) {
        const msgpack_object *k = &root->via.map.ptr[i].key, *val = &root->via.map.ptr[i].val;
        if (key_is_(k, "v")) {
            continue;
        } else if (key_is_(k, "id") || key_is_(k, "text") || key_is_(k, "type") || key_is_(k, "target")) {
            if (val->type != MSGPACK_OBJECT_STR) BAD("record decode: '%.*s' is not a string", (int)k->via.str.size, k->via.str.ptr);
            char *s = dup_obj_str_(val);
            if (!s) NOMEM();
            char **dst = key_is_(k, "id") ? &r->id : key_is_(k, "text") ? &r->text : key_is_(k, "type") ? &r->type : &r->target;
            if (*dst) { free(s); BAD("record decode: duplicate key '%.*s'", (int)k->via.str.size, k->via.str.ptr); }
            *dst = s;
            if (dst == &r->id) have_id = 1;
        } else if (key_is_(k, "index")) {
            if (obj_int_(val, &r->index)) BAD("record decode: 'index' is not an integer");
        } else if (key_is_(k, "bucket")) {
            uint64_t h, w;
            if (val->type != MSGPACK_OBJECT_ARRAY || val->via.array.size != 2 || obj_uint_(&val->via.array.ptr[0], &h) ||
                obj_uint_(&val->via.array.ptr[1], &w) || h > INT32_MAX || w > INT32_MAX)
                BAD("record decode: 'bucket' is not [h, w]");
            r->bucket[0] = (int32_t)h;
            r->bucket[1] = (int32_t)w;
        } else if (key_is_(k, "sources")) {
            if (val->type != MSGPACK_OBJECT_ARRAY) BAD("record decode: 'sources' is not an array");
            for (uint32_t j = 0; j < val->via.array.size; j++) {
                const msgpack_object *s = &val->via.array.ptr[j];
                if (s->type != MSGPACK_OBJECT_STR) BAD("record decode: a source path is not a string");
                char *p = dup_obj_str_(s);
                if (!p) NOMEM();
                rc = rec_add_source(r, p);
                free(p);
                if (rc) NOMEM();
            }
        } else if (key_is_(k, "attrs")) {
            if (val->type != MSGPACK_OBJECT_MAP) BAD("record decode: 'attrs' is not a map");
            for (uint32_t j = 0; j < val->via.map.size; j++) {
                const msgpack_object *ak = &val->via.map.ptr[j].key, *av = &val->via.map.ptr[j].val;
                if (ak->type != MSGPACK_OBJECT_STR || ak->via.str.size == 0 || ak->via.str.size > 255)
                    BAD("record decode: an attr name is not a short string");
                char *name = dup_obj_str_(ak);
                if (!name) NOMEM();
                if (rec_attr(r, name)) { free(name); BAD("record decode: duplicate attr"); }
                int64_t iv;
                if (!obj_int_(av, &iv)) rc = rec_set_attr_int(r, name, iv);
                else if (av->type == MSGPACK_OBJECT_FLOAT64 || av->type == MSGPACK_OBJECT_FLOAT32) rc = rec_set_attr_float(r, name, av->via.f64);
                else if (av->type == MSGPACK_OBJECT_STR) {
                    char *s = dup_obj_str_(av);
                    rc = s ? rec_set_attr_str(r, name, s) : QIE_ENOMEM;
                    free(s);
                } else { free(name); BAD("record decode: attr of an unsupported type"); }
                free(name);
                if (rc) NOMEM();
            }
        } else if (key_is_(k, "tensors")) {
            if (val->type != MSGPACK_OBJECT_MAP) BAD("record decode: 'tensors' is not a map");
            for (uint32_t j = 0; j < val->via.map.size; j++)
                if ((rc = decode_tensor_(err, r, &val->via.map.ptr[j].key, &val->via.map.ptr[j].val))) goto fail;
        } else {
            if (k->type == MSGPACK_OBJECT_STR)
                BAD("record decode: unknown key '%.*s'", (int)(k->via.str.size > 64 ? 64 : k->via.str.size), k->via.str.ptr);
            BAD("record decode: a key is not a string");
        }
    }
    if (!have_id || !*r->id) BAD("record decode: no id");
    msgpack_unpacked_destroy(&up);
    return 0;
fail:
    msgpack_unpacked_destroy(&up);
    rec_free(r);
    return rc;
}

/* ---- merge and summary ---- */

int rec_merge(char *err, Record *dst, const Record *src) {
    int rc;
    if (!dst->id || !src->id || strcmp(dst->id, src->id)) {
        qie_seterr(err, "record merge: ids differ ('%s' vs '%s')", dst->id ? dst->id : "", src->id ? src->id : "");
        return QIE_EMISMATCH;
    }
    if (src->index >= 0) dst->index = src->index;
    if (src->text && (rc = rec_set_text(dst, src->text))) goto nomem;
    if (src->type && (rc = rec_set_type(dst, src->type))) goto nomem;
    if (src->target && *src->target && (rc = rec_set_target(dst, src->target))) goto nomem;
    if (src->bucket[0] || src->bucket[1]) memcpy(dst->bucket, src->bucket, sizeof dst->bucket);
    if (src->nsources && !dst->nsources)
        for (int i = 0; i < src->nsources; i++)
            if ((rc = rec_add_source(dst, src->sources[i]))) goto nomem;
    for (int i = 0; i < src->nattrs; i++) {
        const RecAttr *a = &src->attrs[i];
        rc = a->type == REC_ATTR_INT ? rec_set_attr_int(dst, a->name, a->i)
           : a->type == REC_ATTR_FLOAT ? rec_set_attr_float(dst, a->name, a->f)
           : rec_set_attr_str(dst, a->name, a->s);
        if (rc) goto nomem;
    }
    for (int i = 0; i < src->ntensors; i++) {
        const RecTensor *t = &src->tensors[i];
        if ((rc = rec_set_tensor(err, dst, t->name, t->dtype, t->ndim, t->shape, t->data, 1))) return rc;
    }
    return 0;
nomem:
    qie_seterr(err, "record merge '%s': out of memory", dst->id);
    return QIE_ENOMEM;
}

void rec_summary(const Record *r, char *out, size_t cap) {
    size_t n = 0;
#define APPEND(...) do { if (n < cap) { int w_ = snprintf(out + n, cap - n, __VA_ARGS__); if (w_ > 0) n += (size_t)w_; } } while (0)
    APPEND("%s index=%" PRId64 " bucket=%dx%d sources=%d", r->id ? r->id : "?", r->index, r->bucket[0], r->bucket[1], r->nsources);
    for (int i = 0; i < r->ntensors; i++) {
        const RecTensor *t = &r->tensors[i];
        APPEND(" %s:%s[", t->name, dtype_name(t->dtype));
        for (int d = 0; d < t->ndim; d++) APPEND(d ? ",%" PRId64 : "%" PRId64, t->shape[d]);
        APPEND("]");
    }
    if (r->text) {
        size_t tl = strlen(r->text);
        APPEND(" text=\"%.*s%s\"", (int)(tl > 40 ? 40 : tl), r->text, tl > 40 ? "..." : "");
    }
#undef APPEND
}
