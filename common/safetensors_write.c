/* safetensors_write.c: StWriter, the single-file and sharded safetensors writer.
 *
 * Byte compatibility targets (checked by tests/test_safetensors.c against files the Python
 * packages wrote, scripts/golden/safetensors_fixtures.py):
 *   - one file: safetensors `prepare` + `serialize_to_file` (safetensors/src/tensor.rs): tensors
 *     sorted by Dtype (enum order, descending) then name, header = serde_json::to_string of the
 *     map {"__metadata__": {...}, name: {"dtype", "shape", "data_offsets"}, ...} padded with
 *     spaces to a multiple of 8, then the data in the same order. With several metadata keys
 *     the reference emits them in HashMap (random) order; qie sorts them by key.
 *   - shards: huggingface_hub split_state_dict_into_shards_factory (greedy in insertion order)
 *     and diffusers ModelMixin.save_pretrained (index = json.dumps(indent=2, sort_keys=True)
 *     + "\n", ensure_ascii). */
#include "safetensors.h"
#include "fsutil.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *name;
    QieDtype dtype;
    int ndim;
    uint64_t *shape;
    const void *data; /* borrowed */
    size_t nbytes;
} StwTensor;

struct StWriter {
    StwTensor *t;
    size_t n, cap;
    char **meta; /* key, value, key, value... kept sorted by key */
    size_t nmeta, capmeta;
};

/* ---- growable byte buffer ----------------------------------------------------------------- */

typedef struct {
    char *p;
    size_t len, cap;
    int oom;
} StwBuf;

static void buf_put_(StwBuf *b, const void *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->len + n + 1) c *= 2;
        char *q = realloc(b->p, c);
        if (!q) { b->oom = 1; return; }
        b->p = q;
        b->cap = c;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void buf_str_(StwBuf *b, const char *s) { buf_put_(b, s, strlen(s)); }

static void buf_u64_(StwBuf *b, uint64_t v) {
    char tmp[24];
    int k = snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)v);
    buf_put_(b, tmp, (size_t)k);
}

/* serde_json's format_escaped_str: '"' and '\\', the five short control escapes, other
 * controls as \u00xx (lower-case hex), everything else raw UTF-8. */
static void buf_json_serde_(StwBuf *b, const char *s) {
    static const char hex[] = "0123456789abcdef";
    buf_put_(b, "\"", 1);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        switch (*p) {
        case '"': buf_put_(b, "\\\"", 2); break;
        case '\\': buf_put_(b, "\\\\", 2); break;
        case '\b': buf_put_(b, "\\b", 2); break;
        case '\f': buf_put_(b, "\\f", 2); break;
        case '\n': buf_put_(b, "\\n", 2); break;
        case '\r': buf_put_(b, "\\r", 2); break;
        case '\t': buf_put_(b, "\\t", 2); break;
        default:
            if (*p < 0x20) {
                char e[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
                buf_put_(b, e, 6);
            } else {
                buf_put_(b, p, 1);
            }
        }
    }
    buf_put_(b, "\"", 1);
}

/* Python json.dumps with ensure_ascii=True: printable ASCII raw (except '"' and '\\'), the
 * five short escapes, everything else \uxxxx (lower-case hex, UTF-16 surrogate pairs above
 * U+FFFF). s is valid UTF-8 (checked when the tensor was added). */
static void buf_json_py_(StwBuf *b, const char *s) {
    buf_put_(b, "\"", 1);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned cp = *p;
        int extra = cp < 0x80 ? 0 : cp < 0xe0 ? 1 : cp < 0xf0 ? 2 : 3;
        if (extra) cp &= 0x3f >> extra;
        for (int k = 1; k <= extra; k++) cp = cp << 6 | (p[k] & 0x3f);
        p += 1 + extra;
        char e[16];
        switch (cp) {
        case '"': buf_put_(b, "\\\"", 2); continue;
        case '\\': buf_put_(b, "\\\\", 2); continue;
        case '\b': buf_put_(b, "\\b", 2); continue;
        case '\f': buf_put_(b, "\\f", 2); continue;
        case '\n': buf_put_(b, "\\n", 2); continue;
        case '\r': buf_put_(b, "\\r", 2); continue;
        case '\t': buf_put_(b, "\\t", 2); continue;
        }
        if (cp >= 0x20 && cp < 0x7f) {
            char c = (char)cp;
            buf_put_(b, &c, 1);
        } else if (cp < 0x10000) {
            snprintf(e, sizeof e, "\\u%04x", cp);
            buf_put_(b, e, 6);
        } else {
            unsigned v = cp - 0x10000;
            snprintf(e, sizeof e, "\\u%04x\\u%04x", 0xd800 + (v >> 10), 0xdc00 + (v & 0x3ff));
            buf_put_(b, e, 12);
        }
    }
    buf_put_(b, "\"", 1);
}

/* ---- the writer object -------------------------------------------------------------------- */

int st_writer_create(char *err, StWriter **out) {
    if (!out || *out) {
        qie_seterr(err, "st_writer_create: bad arguments");
        return QIE_EINVAL;
    }
    StWriter *w = calloc(1, sizeof *w);
    if (!w) {
        qie_seterr(err, "st_writer_create: out of memory");
        return QIE_ENOMEM;
    }
    int rc = st_writer_set_metadata(err, w, "format", "pt");
    if (rc) {
        st_writer_destroy(&w);
        return rc;
    }
    *out = w;
    return 0;
}

void st_writer_destroy(StWriter **pw) {
    if (!pw || !*pw) return;
    StWriter *w = *pw;
    for (size_t i = 0; i < w->n; i++) {
        free(w->t[i].name);
        free(w->t[i].shape);
    }
    for (size_t i = 0; i < 2 * w->nmeta; i++) free(w->meta[i]);
    free(w->t);
    free(w->meta);
    free(w);
    *pw = NULL;
}

static int classic_(QieDtype dt) {
    switch (dt) {
    case QIE_DT_BOOL: case QIE_DT_U8: case QIE_DT_I8: case QIE_DT_F8_E5M2: case QIE_DT_F8_E4M3:
    case QIE_DT_I16: case QIE_DT_U16: case QIE_DT_F16: case QIE_DT_BF16: case QIE_DT_I32:
    case QIE_DT_U32: case QIE_DT_F32: case QIE_DT_F64: case QIE_DT_I64: case QIE_DT_U64:
        return 1;
    default:
        return 0;
    }
}

int st_writer_add(char *err, StWriter *w, const char *name, QieDtype dt, int ndim,
                  const uint64_t *shape, const void *data, size_t nbytes) {
    if (!w || !name || ndim < 0 || (ndim && !shape) || (nbytes && !data)) {
        qie_seterr(err, "st_writer_add %s: bad arguments", name ? name : "(null)");
        return QIE_EINVAL;
    }
    if (!classic_(dt)) {
        qie_seterr(err, "st_writer_add %s: dtype %s is not one of the classic safetensors dtypes "
                   "qie writes", name, st_dtype_name(dt) ? st_dtype_name(dt) : "(invalid)");
        return QIE_EUNSUPPORTED;
    }
    size_t nlen = strlen(name);
    if (st_utf8_check_((const uint8_t *)name, nlen) != nlen) {
        qie_seterr(err, "st_writer_add: tensor name is not valid UTF-8");
        return QIE_EINVAL;
    }
    if (!strcmp(name, "__metadata__")) {
        qie_seterr(err, "st_writer_add: \"__metadata__\" is reserved");
        return QIE_EINVAL;
    }
    uint64_t numel = 1, es = dtype_size(dt);
    for (int d = 0; d < ndim; d++) {
        if (shape[d] && numel > UINT64_MAX / shape[d]) goto size_bad;
        numel *= shape[d];
    }
    if (numel && es > UINT64_MAX / numel) goto size_bad;
    if (numel * es != nbytes) goto size_bad;

    if (w->n == w->cap) {
        size_t c = w->cap ? 2 * w->cap : 64;
        StwTensor *q = realloc(w->t, c * sizeof *q);
        if (!q) goto nomem;
        w->t = q;
        w->cap = c;
    }
    StwTensor *t = &w->t[w->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->shape = malloc((ndim ? (size_t)ndim : 1) * sizeof *t->shape);
    if (!t->name || !t->shape) {
        free(t->name);
        free(t->shape);
        goto nomem;
    }
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->dtype = dt;
    t->ndim = ndim;
    t->data = data;
    t->nbytes = nbytes;
    w->n++;
    return 0;
size_bad:
    qie_seterr(err, "st_writer_add %s: %zu bytes do not match the shape and dtype %s", name,
               nbytes, st_dtype_name(dt));
    return QIE_EINVAL;
nomem:
    qie_seterr(err, "st_writer_add %s: out of memory", name);
    return QIE_ENOMEM;
}

int st_writer_set_metadata(char *err, StWriter *w, const char *key, const char *value) {
    if (!w || !key || !value) {
        qie_seterr(err, "st_writer_set_metadata: bad arguments");
        return QIE_EINVAL;
    }
    if (st_utf8_check_((const uint8_t *)key, strlen(key)) != strlen(key) ||
        st_utf8_check_((const uint8_t *)value, strlen(value)) != strlen(value)) {
        qie_seterr(err, "st_writer_set_metadata %s: not valid UTF-8", key);
        return QIE_EINVAL;
    }
    size_t i = 0;
    while (i < w->nmeta && strcmp(w->meta[2 * i], key) < 0) i++;
    char *v = strdup(value);
    if (!v) goto nomem;
    if (i < w->nmeta && !strcmp(w->meta[2 * i], key)) {
        free(w->meta[2 * i + 1]);
        w->meta[2 * i + 1] = v;
        return 0;
    }
    char *k = strdup(key);
    if (!k) { free(v); goto nomem; }
    if (w->nmeta == w->capmeta) {
        size_t c = w->capmeta ? 2 * w->capmeta : 4;
        char **q = realloc(w->meta, 2 * c * sizeof *q);
        if (!q) { free(k); free(v); goto nomem; }
        w->meta = q;
        w->capmeta = c;
    }
    memmove(&w->meta[2 * i + 2], &w->meta[2 * i], 2 * (w->nmeta - i) * sizeof *w->meta);
    w->meta[2 * i] = k;
    w->meta[2 * i + 1] = v;
    w->nmeta++;
    return 0;
nomem:
    qie_seterr(err, "st_writer_set_metadata %s: out of memory", key);
    return QIE_ENOMEM;
}

/* ---- one file ----------------------------------------------------------------------------- */

/* prepare(): Dtype descending (enum order), then name ascending (bytewise). */
static int cmp_write_order_(const void *a, const void *b) {
    const StwTensor *x = *(const StwTensor *const *)a, *y = *(const StwTensor *const *)b;
    int rx = st_dtype_rank_(x->dtype), ry = st_dtype_rank_(y->dtype);
    if (rx != ry) return rx > ry ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int cmp_name_ptr_(const void *a, const void *b) {
    return strcmp((*(const StwTensor *const *)a)->name, (*(const StwTensor *const *)b)->name);
}

static int write_all_(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        /* a few GB per call at most: Linux caps single writes near 2 GiB anyway */
        ssize_t r = write(fd, c, n < (1u << 30) ? n : (1u << 30));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno;
        if (r == 0) return QIE_EIO;
        c += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Writes bytes produced by `emit` to path through a same-directory temp file, then fsync,
 * rename and fsync of the directory. */
typedef int (*StwEmit)(char *err, int fd, void *ctx);

static int write_atomic_(char *err, const char *path, StwEmit emit, void *ctx) {
    char tmp[PATH_MAX], dir[PATH_MAX];
    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
    if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= (int)sizeof tmp) {
        qie_seterr(err, "%s: path too long", path);
        return ENAMETOOLONG;
    }
    int fd = mkstemp(tmp), rc = 0, e;
    if (fd < 0) {
        e = errno;
        qie_seterr(err, "mkstemp %s: %s", tmp, strerror(e));
        return e;
    }
    /* mkstemp makes the file 0600; checkpoints are meant to be shared like any output */
    if (fchmod(fd, 0644)) { e = errno; qie_seterr(err, "fchmod %s: %s", tmp, strerror(e)); rc = e; goto fail; }
    if ((rc = emit(err, fd, ctx))) goto fail;
    if (fsync(fd)) { e = errno; qie_seterr(err, "fsync %s: %s", tmp, strerror(e)); rc = e; goto fail; }
    if (close(fd)) {
        e = errno;
        fd = -1;
        qie_seterr(err, "close %s: %s", tmp, strerror(e));
        rc = e;
        goto fail;
    }
    fd = -1;
    if (rename(tmp, path)) { e = errno; qie_seterr(err, "rename %s -> %s: %s", tmp, path, strerror(e)); rc = e; goto fail; }
    /* the rename is durable only once the directory entry is */
    return fs_sync_dir(err, dir);
fail:
    if (fd >= 0) close(fd); /* already failing: the first error is the one to report */
    unlink(tmp);
    return rc;
}

typedef struct {
    const StWriter *w;
    StwTensor **order;
    size_t n;
    StwBuf hdr;
} StwFile;

/* Builds the 8-byte N and header for f->order (sorted here). */
static int build_header_(char *err, StwFile *f) {
    qsort(f->order, f->n, sizeof *f->order, cmp_write_order_);
    for (size_t i = 1; i < f->n; i++) {
        if (!strcmp(f->order[i]->name, f->order[i - 1]->name)) {
            qie_seterr(err, "duplicate tensor name \"%s\"", f->order[i]->name);
            return QIE_EINVAL;
        }
    }
    StwBuf *b = &f->hdr;
    buf_put_(b, "\0\0\0\0\0\0\0\0", 8);
    buf_str_(b, "{");
    const StWriter *w = f->w;
    if (w->nmeta) {
        buf_str_(b, "\"__metadata__\":{");
        for (size_t i = 0; i < w->nmeta; i++) {
            if (i) buf_str_(b, ",");
            buf_json_serde_(b, w->meta[2 * i]);
            buf_str_(b, ":");
            buf_json_serde_(b, w->meta[2 * i + 1]);
        }
        buf_str_(b, "}");
    }
    uint64_t off = 0;
    for (size_t i = 0; i < f->n; i++) {
        const StwTensor *t = f->order[i];
        if (i || w->nmeta) buf_str_(b, ",");
        buf_json_serde_(b, t->name);
        buf_str_(b, ":{\"dtype\":\"");
        buf_str_(b, st_dtype_name(t->dtype));
        buf_str_(b, "\",\"shape\":[");
        for (int d = 0; d < t->ndim; d++) {
            if (d) buf_str_(b, ",");
            buf_u64_(b, t->shape[d]);
        }
        buf_str_(b, "],\"data_offsets\":[");
        buf_u64_(b, off);
        buf_str_(b, ",");
        off += t->nbytes;
        buf_u64_(b, off);
        buf_str_(b, "]}");
    }
    buf_str_(b, "}");
    while (!b->oom && (b->len - 8) % 8) buf_str_(b, " ");
    if (b->oom) {
        qie_seterr(err, "out of memory building the header");
        return QIE_ENOMEM;
    }
    uint64_t n = b->len - 8;
    if (n > ST_MAX_HEADER) {
        qie_seterr(err, "header of %llu bytes exceeds the %llu-byte limit readers enforce",
                   (unsigned long long)n, ST_MAX_HEADER);
        return QIE_ELIMIT;
    }
    for (int i = 0; i < 8; i++) b->p[i] = (char)(n >> (8 * i) & 0xff);
    return 0;
}

static int emit_file_(char *err, int fd, void *ctx) {
    StwFile *f = ctx;
    int rc = write_all_(fd, f->hdr.p, f->hdr.len);
    for (size_t i = 0; !rc && i < f->n; i++)
        if (f->order[i]->nbytes) rc = write_all_(fd, f->order[i]->data, f->order[i]->nbytes);
    if (rc) qie_seterr(err, "write: %s", qie_strerror(rc));
    return rc;
}

/* Writes tensors[0..n) (pointers into w->t) as one file. */
static int write_file_(char *err, const StWriter *w, StwTensor **tensors, size_t n, const char *path) {
    StwFile f = {.w = w, .n = n};
    f.order = malloc((n ? n : 1) * sizeof *f.order);
    if (!f.order) {
        qie_seterr(err, "%s: out of memory", path);
        return QIE_ENOMEM;
    }
    memcpy(f.order, tensors, n * sizeof *f.order);
    int rc = build_header_(err, &f);
    if (!rc) rc = write_atomic_(err, path, emit_file_, &f);
    if (rc) qie_preferr(err, "%s", path);
    free(f.order);
    free(f.hdr.p);
    return rc;
}

static StwTensor **all_ptrs_(const StWriter *w) {
    StwTensor **v = malloc((w->n ? w->n : 1) * sizeof *v);
    if (v) for (size_t i = 0; i < w->n; i++) v[i] = &w->t[i];
    return v;
}

int st_writer_write(char *err, StWriter *w, const char *path) {
    if (!w || !path) {
        qie_seterr(err, "st_writer_write: bad arguments");
        return QIE_EINVAL;
    }
    StwTensor **all = all_ptrs_(w);
    if (!all) {
        qie_seterr(err, "st_writer_write %s: out of memory", path);
        return QIE_ENOMEM;
    }
    int rc = write_file_(err, w, all, w->n, path);
    if (rc) qie_preferr(err, "st_writer_write");
    free(all);
    return rc;
}

/* ---- sharded ------------------------------------------------------------------------------ */

int st_parse_size(char *err, const char *s, uint64_t *out) {
    static const struct { const char *unit; uint64_t mult; } units[] = {
        {"TIB", 1ull << 40}, {"GIB", 1ull << 30}, {"MIB", 1ull << 20}, {"KIB", 1ull << 10},
        {"TB", 1000000000000ull}, {"GB", 1000000000ull}, {"MB", 1000000ull}, {"KB", 1000ull},
        {"B", 1},
    };
    if (!s || !out) {
        qie_seterr(err, "st_parse_size: bad arguments");
        return QIE_EINVAL;
    }
    const char *b = s, *e = s + strlen(s);
    while (b < e && (*b == ' ' || *b == '\t')) b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t')) e--;
    uint64_t mult = 1;
    for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
        size_t ul = strlen(units[i].unit);
        if ((size_t)(e - b) > ul && !strncasecmp(e - ul, units[i].unit, ul)) {
            mult = units[i].mult;
            e -= ul;
            break;
        }
    }
    while (e > b && (e[-1] == ' ' || e[-1] == '\t')) e--;
    /* digits, optionally one '.' and more digits */
    const char *p = b;
    uint64_t ip = 0;
    int frac = 0, ok = p < e, big = 0;
    for (; p < e && *p >= '0' && *p <= '9'; p++) {
        if (ip > (UINT64_MAX - 9) / 10) big = 1;
        else ip = ip * 10 + (uint64_t)(*p - '0');
    }
    if (p == b) ok = 0;
    if (p < e && *p == '.') {
        frac = 1;
        for (p++; p < e && *p >= '0' && *p <= '9'; p++) {}
    }
    if (p != e) ok = 0;
    if (!ok) {
        qie_seterr(err, "size \"%s\": expected a number and a unit (TB GB MB KB TiB GiB MiB KiB B)", s);
        return QIE_EINVAL;
    }
    if (!frac) {
        if (big || (ip && mult > UINT64_MAX / ip)) {
            qie_seterr(err, "size \"%s\" does not fit 64 bits", s);
            return QIE_EINVAL;
        }
        *out = ip * mult;
        return 0;
    }
    /* int(float(value) * multiplier), as huggingface_hub computes it */
    char num[64];
    if ((size_t)(e - b) >= sizeof num) {
        qie_seterr(err, "size \"%s\": number too long", s);
        return QIE_EINVAL;
    }
    memcpy(num, b, (size_t)(e - b));
    num[e - b] = 0;
    double v = strtod(num, NULL) * (double)mult;
    if (!(v >= 0) || v >= 18446744073709551616.0) {
        qie_seterr(err, "size \"%s\" does not fit 64 bits", s);
        return QIE_EINVAL;
    }
    *out = (uint64_t)v;
    return 0;
}

typedef struct {
    StwBuf json;
} StwIndex;

static int emit_index_(char *err, int fd, void *ctx) {
    StwIndex *x = ctx;
    int rc = write_all_(fd, x->json.p, x->json.len);
    if (rc) qie_seterr(err, "write: %s", qie_strerror(rc));
    return rc;
}

int st_writer_write_sharded(char *err, StWriter *w, const char *dir, const char *prefix,
                            const char *max_shard_size, int *nshards) {
    if (!w || !dir || !prefix || !*prefix || strchr(prefix, '/') || !max_shard_size) {
        qie_seterr(err, "st_writer_write_sharded: bad arguments");
        return QIE_EINVAL;
    }
    uint64_t max;
    int rc = st_parse_size(err, max_shard_size, &max);
    if (rc) {
        qie_preferr(err, "st_writer_write_sharded");
        return rc;
    }
    StwTensor **all = all_ptrs_(w);
    size_t *shard_of = malloc((w->n ? w->n : 1) * sizeof *shard_of);
    size_t *first = malloc((w->n + 1) * sizeof *first); /* shard s = all[first[s]..first[s+1]) */
    size_t *pend = malloc((w->n ? w->n : 1) * sizeof *pend); /* the open shard's tensors */
    StwTensor **sorted = all_ptrs_(w);
    StwIndex idx = {0};
    char path[PATH_MAX];
    if (!all || !shard_of || !first || !sorted || !pend) {
        qie_seterr(err, "st_writer_write_sharded: out of memory");
        rc = QIE_ENOMEM;
        goto out;
    }

    /* split_state_dict_into_shards_factory: greedy in insertion order; a tensor bigger than
     * max is appended to the shard list at once, alone, while the open shard is appended (and
     * so numbered) only when it closes. Shards are therefore not contiguous in insertion
     * order: all[] is permuted into shard order below (stable within a shard). */
    size_t ns = 0, npend = 0;
    uint64_t cur = 0, total = 0;
    for (size_t i = 0; i < w->n; i++) {
        uint64_t sz = w->t[i].nbytes;
        total += sz;
        if (sz > max) { shard_of[i] = ns++; continue; }
        if (cur + sz > max) {
            for (size_t k = 0; k < npend; k++) shard_of[pend[k]] = ns;
            ns++;
            npend = 0;
            cur = 0;
        }
        pend[npend++] = i;
        cur += sz;
    }
    if (npend) {
        for (size_t k = 0; k < npend; k++) shard_of[pend[k]] = ns;
        ns++;
    }
    if (ns == 0) ns = 1; /* no tensors: one file holding only the metadata */
    qsort(sorted, w->n, sizeof *sorted, cmp_name_ptr_);
    for (size_t i = 1; i < w->n; i++) {
        if (!strcmp(sorted[i]->name, sorted[i - 1]->name)) {
            qie_seterr(err, "duplicate tensor name \"%s\"", sorted[i]->name);
            rc = QIE_EINVAL;
            goto out;
        }
    }
    /* counting sort into shard order */
    for (size_t s = 0; s <= ns; s++) first[s] = 0;
    for (size_t i = 0; i < w->n; i++) first[shard_of[i] + 1]++;
    for (size_t s = 0; s < ns; s++) first[s + 1] += first[s];
    {
        size_t *fill = malloc((ns ? ns : 1) * sizeof *fill);
        if (!fill) { rc = QIE_ENOMEM; qie_seterr(err, "out of memory"); goto out; }
        memcpy(fill, first, ns * sizeof *fill);
        for (size_t i = 0; i < w->n; i++) all[fill[shard_of[i]]++] = &w->t[i];
        free(fill);
    }

    if (ns == 1) {
        if (snprintf(path, sizeof path, "%s/%s.safetensors", dir, prefix) >= (int)sizeof path) {
            qie_seterr(err, "path too long");
            rc = ENAMETOOLONG;
            goto out;
        }
        rc = write_file_(err, w, all, w->n, path);
        goto out;
    }
    if (ns > 99999) {
        qie_seterr(err, "%zu shards do not fit the 5-digit shard names", ns);
        rc = QIE_ELIMIT;
        goto out;
    }
    for (size_t s = 0; s < ns; s++) {
        if (snprintf(path, sizeof path, "%s/%s-%05zu-of-%05zu.safetensors", dir, prefix, s + 1, ns)
            >= (int)sizeof path) {
            qie_seterr(err, "path too long");
            rc = ENAMETOOLONG;
            goto out;
        }
        if ((rc = write_file_(err, w, all + first[s], first[s + 1] - first[s], path))) goto out;
    }

    /* the index, written last so that a complete index implies complete shards */
    StwBuf *b = &idx.json;
    buf_str_(b, "{\n  \"metadata\": {\n    \"total_size\": ");
    buf_u64_(b, total);
    buf_str_(b, "\n  },\n  \"weight_map\": {");
    for (size_t i = 0; i < w->n; i++) {
        size_t k = (size_t)(sorted[i] - w->t);
        snprintf(path, sizeof path, "%s-%05zu-of-%05zu.safetensors", prefix, shard_of[k] + 1, ns);
        buf_str_(b, i ? ",\n    " : "\n    ");
        buf_json_py_(b, sorted[i]->name);
        buf_str_(b, ": ");
        buf_json_py_(b, path);
    }
    buf_str_(b, "\n  }\n}\n");
    if (b->oom) {
        qie_seterr(err, "out of memory building the index");
        rc = QIE_ENOMEM;
        goto out;
    }
    if (snprintf(path, sizeof path, "%s/%s.safetensors.index.json", dir, prefix) >= (int)sizeof path) {
        qie_seterr(err, "path too long");
        rc = ENAMETOOLONG;
        goto out;
    }
    if ((rc = write_atomic_(err, path, emit_index_, &idx))) qie_preferr(err, "%s", path);
out:
    if (!rc && nshards) *nshards = (int)ns;
    if (rc) qie_preferr(err, "st_writer_write_sharded %s/%s", dir, prefix);
    free(all);
    free(shard_of);
    free(pend);
    free(first);
    free(sorted);
    free(idx.json.p);
    return rc;
}
