/* safetensors.c: the reader (header parser and validator) and StModel (sharded checkpoints).
 * The writer is in safetensors_write.c. Rules: spec/data_pipeline.md section 8; each check
 * below names the reference function it mirrors (safetensors/src/tensor.rs). */
#include "safetensors.h"
#include "fsutil.h"
#include "err.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* serde_json's recursion limit (remaining_depth 128, refused when it reaches 0): at most 127
 * nested arrays/objects, counting the header object itself. */
#define ST_JSON_MAX_DEPTH 127
/* An index file is a few hundred KB even for 60-block models; refuse absurd ones before
 * reading them into memory. */
#define ST_MAX_INDEX_BYTES (256u << 20)

struct SafeTensors {
    const uint8_t *base; /* the whole file image: [N][header][data] */
    size_t len;
    void *map;           /* owned mmap, or NULL when base is borrowed (st_parse_header) */
    size_t map_len;
    uint64_t n;          /* header length */
    StTensor *tensors;   /* file order */
    size_t count;
    size_t *by_name;     /* indices into tensors, sorted by name */
    uint64_t *dims;      /* every shape, back to back */
    char *arena;         /* decoded names and metadata strings */
    const char **meta;   /* key0, value0, key1, ... sorted by key */
    size_t nmeta;
};

/* ---- dtype spelling --------------------------------------------------------------------- */

/* The safetensors names, in the reference Dtype enum's declaration order: its derived Ord, and
 * hence the writer's sort, uses that order (st_dtype_rank_). */
static const struct { QieDtype dt; const char *name; } st_dtypes_[] = {
    {QIE_DT_BOOL, "BOOL"},       {QIE_DT_F4, "F4"},
    {QIE_DT_F6_E2M3, "F6_E2M3"}, {QIE_DT_F6_E3M2, "F6_E3M2"},
    {QIE_DT_U8, "U8"},           {QIE_DT_I8, "I8"},
    {QIE_DT_F8_E5M2, "F8_E5M2"}, {QIE_DT_F8_E4M3, "F8_E4M3"},
    {QIE_DT_F8_E8M0, "F8_E8M0"}, {QIE_DT_F8_E4M3FNUZ, "F8_E4M3FNUZ"},
    {QIE_DT_F8_E5M2FNUZ, "F8_E5M2FNUZ"},
    {QIE_DT_I16, "I16"},         {QIE_DT_U16, "U16"},
    {QIE_DT_F16, "F16"},         {QIE_DT_BF16, "BF16"},
    {QIE_DT_I32, "I32"},         {QIE_DT_U32, "U32"},
    {QIE_DT_F32, "F32"},         {QIE_DT_C64, "C64"},
    {QIE_DT_F64, "F64"},         {QIE_DT_I64, "I64"},
    {QIE_DT_U64, "U64"},
};
#define ST_NDTYPES (sizeof st_dtypes_ / sizeof st_dtypes_[0])
_Static_assert(ST_NDTYPES == QIE_DT_COUNT, "every QieDtype needs a safetensors name");

const char *st_dtype_name(QieDtype dt) {
    for (size_t i = 0; i < ST_NDTYPES; i++)
        if (st_dtypes_[i].dt == dt) return st_dtypes_[i].name;
    return NULL;
}

int st_dtype_parse(const char *s, size_t len, QieDtype *out) {
    for (size_t i = 0; i < ST_NDTYPES; i++) {
        const char *n = st_dtypes_[i].name;
        if (strlen(n) == len && !memcmp(n, s, len)) { *out = st_dtypes_[i].dt; return 0; }
    }
    return QIE_EINVAL;
}

int st_dtype_rank_(QieDtype dt) {
    for (size_t i = 0; i < ST_NDTYPES; i++)
        if (st_dtypes_[i].dt == dt) return (int)i;
    return -1;
}

/* Names come from untrusted files: in error messages they are cut to 64 bytes and control
 * characters become '?', so a message stays one printable line. */
static const char *st_show_(char *buf, const char *s) {
    size_t i = 0;
    for (; s[i] && i < 64; i++) buf[i] = ((unsigned char)s[i] < 0x20 || s[i] == 0x7f) ? '?' : s[i];
    if (s[i]) { memcpy(buf + i, "...", 3); i += 3; }
    buf[i] = 0;
    return buf;
}
#define ST_SHOW(s) st_show_((char[72]){0}, (s))

/* ---- UTF-8 -------------------------------------------------------------------------------- */

/* Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF), as Rust's str::from_utf8, which the
 * reference applies to the whole header. Returns the offset of the first bad byte, or len. */
size_t st_utf8_check_(const uint8_t *s, size_t len) {
    size_t i = 0;
    while (i < len) {
        uint8_t c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        uint8_t lo = 0x80, hi = 0xbf;
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c == 0xe0) { need = 2; lo = 0xa0; }
        else if (c == 0xed) { need = 2; hi = 0x9f; } /* excludes surrogates */
        else if (c >= 0xe1 && c <= 0xef) need = 2;
        else if (c == 0xf0) { need = 3; lo = 0x90; }
        else if (c >= 0xf1 && c <= 0xf3) need = 3;
        else if (c == 0xf4) { need = 3; hi = 0x8f; }
        else return i;
        if (len - i - 1 < need) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += need + 1;
    }
    return len;
}

/* ---- the header's JSON ------------------------------------------------------------------------
 * A parser for exactly what serde_json accepts (RFC 8259, recursion limit 128, trailing
 * whitespace only), building nothing but what the header needs. Decoded strings go into one
 * arena of n+1 bytes: a decoded string plus its NUL is never longer than its quoted form. */

typedef struct {
    const uint8_t *p, *start, *end;
    char *err;
    char *arena;
    size_t top, cap;
} StJson;

static int json_fail_(StJson *j, const char *what) {
    qie_seterr(j->err, "header byte %zu: %s", (size_t)(j->p - j->start), what);
    return QIE_EFORMAT;
}

static void json_ws_(StJson *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int json_expect_(StJson *j, char c, const char *what) {
    json_ws_(j);
    if (j->p >= j->end || *j->p != (uint8_t)c) return json_fail_(j, what);
    j->p++;
    return 0;
}

static int json_hex4_(StJson *j, unsigned *out) {
    if (j->end - j->p < 4) return json_fail_(j, "truncated \\u escape");
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        uint8_t c = j->p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= c - '0';
        else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
        else return json_fail_(j, "bad hex digit in \\u escape");
    }
    j->p += 4;
    *out = v;
    return 0;
}

/* Decodes a string into the arena; *off is where it starts (NUL-terminated there). A NUL in
 * the decoded string is QIE_EUNSUPPORTED: qie's names are C strings. */
static int json_string_(StJson *j, size_t *off) {
    json_ws_(j);
    if (j->p >= j->end || *j->p != '"') return json_fail_(j, "expected a string");
    j->p++;
    *off = j->top;
    for (;;) {
        if (j->p >= j->end) return json_fail_(j, "unterminated string");
        uint8_t c = *j->p;
        if (c == '"') { j->p++; break; }
        if (c < 0x20) return json_fail_(j, "control character in string");
        if (c != '\\') { j->arena[j->top++] = (char)c; j->p++; continue; }
        if (j->end - j->p < 2) return json_fail_(j, "unterminated escape");
        c = j->p[1];
        j->p += 2;
        unsigned cp;
        switch (c) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u': {
            int rc = json_hex4_(j, &cp);
            if (rc) return rc;
            if (cp >= 0xdc00 && cp <= 0xdfff) return json_fail_(j, "lone trailing surrogate");
            if (cp >= 0xd800 && cp <= 0xdbff) { /* must pair: serde_json refuses lone ones */
                unsigned lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u')
                    return json_fail_(j, "lone leading surrogate");
                j->p += 2;
                if ((rc = json_hex4_(j, &lo))) return rc;
                if (lo < 0xdc00 || lo > 0xdfff) return json_fail_(j, "lone leading surrogate");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            }
            break;
        }
        default: return json_fail_(j, "invalid escape");
        }
        if (cp == 0) {
            qie_seterr(j->err, "header byte %zu: \\u0000 in a string is not supported",
                       (size_t)(j->p - j->start));
            return QIE_EUNSUPPORTED;
        }
        /* encode; the escape took >= 2 input bytes per output byte up to 3, 12 for 4 */
        char *o = j->arena + j->top;
        if (cp < 0x80) { o[0] = (char)cp; j->top += 1; }
        else if (cp < 0x800) {
            o[0] = (char)(0xc0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3f)); j->top += 2;
        } else if (cp < 0x10000) {
            o[0] = (char)(0xe0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
            o[2] = (char)(0x80 | (cp & 0x3f)); j->top += 3;
        } else {
            o[0] = (char)(0xf0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
            o[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); o[3] = (char)(0x80 | (cp & 0x3f));
            j->top += 4;
        }
    }
    /* raw UTF-8 was validated up front; a raw NUL is a control character, refused above */
    j->arena[j->top++] = 0;
    return 0;
}

/* Skips a JSON number; *is_u64 tells whether it is a plain non-negative integer that fits a
 * u64 (what serde accepts for usize: no sign, fraction or exponent). */
static int json_number_(StJson *j, int *is_u64, uint64_t *val) {
    const uint8_t *p = j->p, *e = j->end;
    int plain = 1;
    uint64_t v = 0;
    if (p < e && *p == '-') { plain = 0; p++; }
    if (p >= e || *p < '0' || *p > '9') return json_fail_(j, "invalid number");
    if (*p == '0') {
        p++;
    } else {
        while (p < e && *p >= '0' && *p <= '9') {
            unsigned d = *p - '0';
            if (v > (UINT64_MAX - d) / 10) plain = 0; /* serde falls back to f64: not a usize */
            else v = v * 10 + d;
            p++;
        }
    }
    if (p < e && *p == '.') {
        plain = 0;
        p++;
        if (p >= e || *p < '0' || *p > '9') { j->p = p; return json_fail_(j, "invalid number"); }
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        plain = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') { j->p = p; return json_fail_(j, "invalid number"); }
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (!plain) {
        /* serde buffers every value of a flattened map as Content, so even an ignored number
         * is converted, and one beyond f64's range is an error ("number out of range"). */
        size_t n = (size_t)(p - j->p);
        char *tok = malloc(n + 1);
        if (!tok) return json_fail_(j, "out of memory");
        memcpy(tok, j->p, n);
        tok[n] = 0;
        double d = strtod(tok, NULL);
        free(tok);
        if (isinf(d)) return json_fail_(j, "number out of range");
    }
    j->p = p;
    *is_u64 = plain;
    *val = v;
    return 0;
}

static int json_u64_(StJson *j, uint64_t *out, const char *what) {
    json_ws_(j);
    const uint8_t *at = j->p;
    int plain = 0, rc;
    if (j->p >= j->end || (*j->p != '-' && (*j->p < '0' || *j->p > '9'))) {
        qie_seterr(j->err, "header byte %zu: %s: expected an integer", (size_t)(at - j->start), what);
        return QIE_EFORMAT;
    }
    if ((rc = json_number_(j, &plain, out))) return rc;
    if (!plain) {
        qie_seterr(j->err, "header byte %zu: %s: not a non-negative integer below 2^64",
                   (size_t)(at - j->start), what);
        return QIE_EFORMAT;
    }
    return 0;
}

static int json_literal_(StJson *j, const char *lit) {
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n)) return json_fail_(j, "invalid value");
    j->p += n;
    return 0;
}

/* Skips any value (fields of a tensor entry that serde ignores). depth: containers already open. */
static int json_skip_(StJson *j, int depth) {
    json_ws_(j);
    if (j->p >= j->end) return json_fail_(j, "expected a value");
    int rc, plain;
    uint64_t v;
    size_t off;
    switch (*j->p) {
    case '"':
        rc = json_string_(j, &off);
        j->top = off; /* discard */
        return rc;
    case 't': return json_literal_(j, "true");
    case 'f': return json_literal_(j, "false");
    case 'n': return json_literal_(j, "null");
    case '[': case '{': {
        uint8_t close = *j->p == '[' ? ']' : '}';
        int obj = close == '}';
        if (depth + 1 > ST_JSON_MAX_DEPTH) return json_fail_(j, "nested too deeply");
        j->p++;
        json_ws_(j);
        if (j->p < j->end && *j->p == close) { j->p++; return 0; }
        for (;;) {
            if (obj) {
                if ((rc = json_string_(j, &off))) return rc;
                j->top = off;
                if ((rc = json_expect_(j, ':', "expected ':'"))) return rc;
            }
            if ((rc = json_skip_(j, depth + 1))) return rc;
            json_ws_(j);
            if (j->p < j->end && *j->p == ',') { j->p++; continue; }
            if (j->p < j->end && *j->p == close) { j->p++; return 0; }
            return json_fail_(j, obj ? "expected ',' or '}'" : "expected ',' or ']'");
        }
    }
    default:
        return json_number_(j, &plain, &v);
    }
}

/* ---- header model ------------------------------------------------------------------------- */

typedef struct {
    size_t name;            /* arena offsets */
    QieDtype dtype;
    size_t ndim, dims;      /* dims: index into the dims array */
    uint64_t begin, end;
} StEntry_;

typedef struct {
    StJson j;
    StEntry_ *e;
    size_t ne, cape;
    uint64_t *dims;
    size_t nd, capd;
    size_t *meta; /* triples: key and value (arena offsets), position */
    size_t nm, capm;
    int has_meta;
} StParse_;

static int grow_(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 16;
    while (c < need) c *= 2;
    void *q = realloc(*p, c * elem);
    if (!q) return QIE_ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

/* "__metadata__": Option<HashMap<String, String>> in the reference: null or string->string. */
static int parse_metadata_(StParse_ *s) {
    StJson *j = &s->j;
    int rc;
    json_ws_(j);
    if (j->p < j->end && *j->p == 'n') return json_literal_(j, "null");
    if ((rc = json_expect_(j, '{', "__metadata__ must be an object of strings"))) return rc;
    json_ws_(j);
    if (j->p < j->end && *j->p == '}') { j->p++; return 0; }
    for (;;) {
        size_t k, v;
        if ((rc = json_string_(j, &k))) return rc;
        if ((rc = json_expect_(j, ':', "expected ':'"))) return rc;
        json_ws_(j);
        if (j->p >= j->end || *j->p != '"') {
            qie_seterr(j->err, "header byte %zu: __metadata__ value of \"%s\" is not a string",
                       (size_t)(j->p - j->start), ST_SHOW(j->arena + k));
            return QIE_EFORMAT;
        }
        if ((rc = json_string_(j, &v))) return rc;
        if (grow_((void **)&s->meta, &s->capm, s->nm + 3, sizeof *s->meta)) return QIE_ENOMEM;
        size_t pos = s->nm / 3;
        s->meta[s->nm++] = k;
        s->meta[s->nm++] = v;
        s->meta[s->nm++] = pos;
        json_ws_(j);
        if (j->p < j->end && *j->p == ',') { j->p++; continue; }
        if (j->p < j->end && *j->p == '}') { j->p++; return 0; }
        return json_fail_(j, "expected ',' or '}' in __metadata__");
    }
}

static int parse_dtype_(StJson *j, const char *nm, QieDtype *out) {
    size_t d;
    int rc;
    json_ws_(j);
    const uint8_t *at = j->p;
    if ((rc = json_string_(j, &d))) return rc;
    if (st_dtype_parse(j->arena + d, j->top - d - 1, out)) {
        qie_seterr(j->err, "header byte %zu: tensor \"%s\": unknown dtype \"%s\"",
                   (size_t)(at - j->start), ST_SHOW(nm), ST_SHOW(j->arena + d));
        return QIE_EFORMAT;
    }
    j->top = d;
    return 0;
}

static int parse_shape_(StParse_ *s, StEntry_ *t) {
    StJson *j = &s->j;
    int rc;
    if ((rc = json_expect_(j, '[', "shape must be an array"))) return rc;
    t->dims = s->nd;
    json_ws_(j);
    if (j->p < j->end && *j->p == ']') {
        j->p++;
    } else {
        for (;;) {
            uint64_t v;
            if ((rc = json_u64_(j, &v, "shape"))) return rc;
            if (grow_((void **)&s->dims, &s->capd, s->nd + 1, sizeof *s->dims)) return QIE_ENOMEM;
            s->dims[s->nd++] = v;
            json_ws_(j);
            if (j->p < j->end && *j->p == ',') { j->p++; continue; }
            if (j->p < j->end && *j->p == ']') { j->p++; break; }
            return json_fail_(j, "expected ',' or ']' in shape");
        }
    }
    t->ndim = s->nd - t->dims;
    return 0;
}

/* (usize, usize): exactly two */
static int parse_offsets_(StJson *j, StEntry_ *t) {
    int rc;
    if ((rc = json_expect_(j, '[', "data_offsets must be an array of two integers"))) return rc;
    if ((rc = json_u64_(j, &t->begin, "data_offsets"))) return rc;
    if ((rc = json_expect_(j, ',', "data_offsets must hold exactly two integers"))) return rc;
    if ((rc = json_u64_(j, &t->end, "data_offsets"))) return rc;
    return json_expect_(j, ']', "data_offsets must hold exactly two integers");
}

/* One TensorInfo {dtype, shape, data_offsets}: unknown fields skipped, duplicates and missing
 * fields refused (serde derive without deny_unknown_fields). */
static int parse_tensor_(StParse_ *s, size_t name) {
    StJson *j = &s->j;
    const char *nm = j->arena + name;
    int rc, have_dt = 0, have_shape = 0, have_off = 0;
    StEntry_ t = {.name = name};
    json_ws_(j);
    if (j->p < j->end && *j->p == '[') {
        /* serde's derived struct visitor also takes a sequence: [dtype, shape, data_offsets] */
        j->p++;
        if ((rc = parse_dtype_(j, nm, &t.dtype))) return rc;
        if ((rc = json_expect_(j, ',', "tensor entry as an array needs [dtype, shape, data_offsets]"))) return rc;
        if ((rc = parse_shape_(s, &t))) return rc;
        if ((rc = json_expect_(j, ',', "tensor entry as an array needs [dtype, shape, data_offsets]"))) return rc;
        if ((rc = parse_offsets_(j, &t))) return rc;
        if ((rc = json_expect_(j, ']', "tensor entry as an array needs [dtype, shape, data_offsets]"))) return rc;
        goto done;
    }
    if (j->p >= j->end || *j->p != '{') {
        qie_seterr(j->err, "header byte %zu: tensor \"%s\": entry is not an object",
                   (size_t)(j->p - j->start), ST_SHOW(nm));
        return QIE_EFORMAT;
    }
    j->p++;
    json_ws_(j);
    if (j->p < j->end && *j->p == '}') j->p++;
    else for (;;) {
        size_t k;
        const uint8_t *at = j->p;
        if ((rc = json_string_(j, &k))) return rc;
        if ((rc = json_expect_(j, ':', "expected ':'"))) return rc;
        const char *key = j->arena + k;
        int which = !strcmp(key, "dtype") ? 1 : !strcmp(key, "shape") ? 2
                  : !strcmp(key, "data_offsets") ? 3 : 0;
        j->top = k; /* field names are not kept */
        if ((which == 1 && have_dt) || (which == 2 && have_shape) || (which == 3 && have_off)) {
            qie_seterr(j->err, "header byte %zu: tensor \"%s\": duplicate field",
                       (size_t)(at - j->start), ST_SHOW(nm));
            return QIE_EFORMAT;
        }
        if (which == 1) {
            if ((rc = parse_dtype_(j, nm, &t.dtype))) return rc;
            have_dt = 1;
        } else if (which == 2) {
            if ((rc = parse_shape_(s, &t))) return rc;
            have_shape = 1;
        } else if (which == 3) {
            if ((rc = parse_offsets_(j, &t))) return rc;
            have_off = 1;
        } else if ((rc = json_skip_(j, 2))) {
            return rc;
        }
        json_ws_(j);
        if (j->p < j->end && *j->p == ',') { j->p++; continue; }
        if (j->p < j->end && *j->p == '}') { j->p++; break; }
        return json_fail_(j, "expected ',' or '}' in tensor entry");
    }
    if (!have_dt || !have_shape || !have_off) {
        qie_seterr(j->err, "tensor \"%s\": missing field `%s`", ST_SHOW(nm),
                   !have_dt ? "dtype" : !have_shape ? "shape" : "data_offsets");
        return QIE_EFORMAT;
    }
done:
    if (grow_((void **)&s->e, &s->cape, s->ne + 1, sizeof *s->e)) return QIE_ENOMEM;
    s->e[s->ne++] = t;
    return 0;
}

static int parse_header_json_(StParse_ *s) {
    StJson *j = &s->j;
    int rc;
    if ((rc = json_expect_(j, '{', "header is not a JSON object"))) return rc;
    json_ws_(j);
    if (j->p < j->end && *j->p == '}') j->p++;
    else for (;;) {
        size_t k;
        const uint8_t *at = j->p;
        if ((rc = json_string_(j, &k))) return rc;
        if ((rc = json_expect_(j, ':', "expected ':'"))) return rc;
        if (!strcmp(j->arena + k, "__metadata__")) {
            if (s->has_meta) {
                qie_seterr(j->err, "header byte %zu: duplicate field `__metadata__`",
                           (size_t)(at - j->start));
                return QIE_EFORMAT;
            }
            s->has_meta = 1;
            j->top = k;
            if ((rc = parse_metadata_(s))) return rc;
        } else if ((rc = parse_tensor_(s, k))) {
            return rc;
        }
        json_ws_(j);
        if (j->p < j->end && *j->p == ',') { j->p++; continue; }
        if (j->p < j->end && *j->p == '}') { j->p++; break; }
        return json_fail_(j, "expected ',' or '}'");
    }
    json_ws_(j);
    if (j->p != j->end) return json_fail_(j, "trailing characters after the header object");
    return 0;
}

/* ---- validation --------------------------------------------------------------------------- */

/* qsort_r (glibc) comparators: the context is the array the indices point into. */
static int cmp_offsets_(const void *a, const void *b, void *ctx) {
    const StEntry_ *v = ctx;
    size_t i = *(const size_t *)a, k = *(const size_t *)b;
    if (v[i].begin != v[k].begin) return v[i].begin < v[k].begin ? -1 : 1;
    if (v[i].end != v[k].end) return v[i].end < v[k].end ? -1 : 1;
    return i < k ? -1 : i > k;
}

static int cmp_names_(const void *a, const void *b, void *ctx) {
    const StTensor *t = ctx;
    return strcmp(t[*(const size_t *)a].name, t[*(const size_t *)b].name);
}

/* metadata triples (key, value, position in the header) */
static int cmp_meta_(const void *a, const void *b, void *ctx) {
    const size_t *x = a, *y = b;
    int c = strcmp((const char *)ctx + x[0], (const char *)ctx + y[0]);
    if (c) return c;
    return x[2] < y[2] ? -1 : x[2] > y[2]; /* header order, so that the last duplicate wins */
}

void st_close(SafeTensors **pst) {
    if (!pst || !*pst) return;
    SafeTensors *st = *pst;
    if (st->map) munmap(st->map, st->map_len);
    free(st->tensors);
    free(st->by_name);
    free(st->dims);
    free(st->arena);
    free(st->meta);
    free(st);
    *pst = NULL;
}

/* Parses, validates and builds the SafeTensors over buf (borrowed). */
static int st_build_(char *err, const uint8_t *buf, size_t len, SafeTensors **out) {
    /* read_metadata: N, its bound, and the header within the buffer */
    if (len < 8) {
        qie_seterr(err, "file is %zu bytes, shorter than the 8-byte header length", len);
        return QIE_EFORMAT;
    }
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = n << 8 | buf[i];
    if (n > ST_MAX_HEADER) {
        qie_seterr(err, "header length %llu exceeds the limit of %llu bytes",
                   (unsigned long long)n, ST_MAX_HEADER);
        return QIE_EFORMAT;
    }
    if (n > len - 8) {
        qie_seterr(err, "header length %llu runs past the end of the %zu-byte file",
                   (unsigned long long)n, len);
        return QIE_EFORMAT;
    }
    const uint8_t *hdr = buf + 8;
    size_t bad = st_utf8_check_(hdr, (size_t)n);
    if (bad != n) {
        qie_seterr(err, "header byte %zu: invalid UTF-8", bad);
        return QIE_EFORMAT;
    }

    int rc = 0;
    SafeTensors *st = calloc(1, sizeof *st);
    StParse_ s = {.j = {.p = hdr, .start = hdr, .end = hdr + n, .err = err}};
    size_t *order = NULL;
    if (!st || !(s.j.arena = malloc((size_t)n + 1))) { rc = QIE_ENOMEM; goto nomem; }
    s.j.cap = (size_t)n + 1;
    if ((rc = parse_header_json_(&s))) goto fail;

    /* Metadata::validate, entries sorted by data_offsets */
    order = malloc((s.ne ? s.ne : 1) * sizeof *order);
    if (!order) { rc = QIE_ENOMEM; goto nomem; }
    for (size_t i = 0; i < s.ne; i++) order[i] = i;
    if (s.ne) qsort_r(order, s.ne, sizeof *order, cmp_offsets_, s.e);
    uint64_t start = 0;
    for (size_t i = 0; i < s.ne; i++) {
        const StEntry_ *e = &s.e[order[i]];
        const char *nm = s.j.arena + e->name;
        if (e->begin != start || e->end < e->begin) {
            qie_seterr(err, "tensor \"%s\": data_offsets [%llu, %llu] do not continue at %llu "
                       "(gap, overlap or not starting at 0)", ST_SHOW(nm), (unsigned long long)e->begin,
                       (unsigned long long)e->end, (unsigned long long)start);
            rc = QIE_EFORMAT;
            goto fail;
        }
        start = e->end;
        uint64_t numel = 1, bits = dtype_bits(e->dtype);
        for (size_t d = 0; d < e->ndim; d++) {
            uint64_t v = s.dims[e->dims + d];
            if (v && numel > UINT64_MAX / v) goto overflow;
            numel *= v;
        }
        if (numel && bits > UINT64_MAX / numel) goto overflow;
        if (numel * bits % 8) {
            qie_seterr(err, "tensor \"%s\": %llu elements of %s are not a whole number of bytes",
                       ST_SHOW(nm), (unsigned long long)numel, st_dtype_name(e->dtype));
            rc = QIE_EFORMAT;
            goto fail;
        }
        if (e->end - e->begin != numel * bits / 8) {
            qie_seterr(err, "tensor \"%s\": data_offsets span %llu bytes but %llu %s elements "
                       "need %llu", ST_SHOW(nm), (unsigned long long)(e->end - e->begin),
                       (unsigned long long)numel, st_dtype_name(e->dtype),
                       (unsigned long long)(numel * bits / 8));
            rc = QIE_EFORMAT;
            goto fail;
        }
        continue;
    overflow:
        qie_seterr(err, "tensor \"%s\": shape times dtype size overflows 64 bits", ST_SHOW(nm));
        rc = QIE_EFORMAT;
        goto fail;
    }
    /* buffer_end + N_LEN + n == buffer_len */
    if (start != len - 8 - n) {
        qie_seterr(err, "tensor data ends at byte %llu of a %llu-byte data buffer: the file "
                   "must end exactly where the last tensor does", (unsigned long long)start,
                   (unsigned long long)(len - 8 - n));
        rc = QIE_EFORMAT;
        goto fail;
    }

    /* Build the public view in file order. */
    st->base = buf;
    st->len = len;
    st->n = n;
    st->count = s.ne;
    st->tensors = calloc(s.ne ? s.ne : 1, sizeof *st->tensors);
    st->by_name = malloc((s.ne ? s.ne : 1) * sizeof *st->by_name);
    if (!st->tensors || !st->by_name) { rc = QIE_ENOMEM; goto nomem; }
    st->dims = s.dims;
    s.dims = NULL;
    st->arena = s.j.arena;
    s.j.arena = NULL;
    const uint8_t *data = buf + 8 + n;
    for (size_t i = 0; i < s.ne; i++) {
        const StEntry_ *e = &s.e[order[i]];
        StTensor *t = &st->tensors[i];
        t->name = st->arena + e->name;
        t->dtype = e->dtype;
        t->ndim = (int)e->ndim; /* < n / 2 <= 5e7: each dim takes a digit and a comma */
        t->shape = e->ndim ? st->dims + e->dims : NULL;
        t->numel = 1;
        for (size_t d = 0; d < e->ndim; d++) t->numel *= st->dims[e->dims + d];
        t->data = data + e->begin;
        t->nbytes = (size_t)(e->end - e->begin);
        t->offset = e->begin;
        st->by_name[i] = i;
    }
    if (s.ne) qsort_r(st->by_name, s.ne, sizeof *st->by_name, cmp_names_, st->tensors);
    for (size_t i = 1; i < s.ne; i++) {
        if (!strcmp(st->tensors[st->by_name[i]].name, st->tensors[st->by_name[i - 1]].name)) {
            qie_seterr(err, "duplicate tensor name \"%s\"", ST_SHOW(st->tensors[st->by_name[i]].name));
            rc = QIE_EFORMAT;
            goto fail;
        }
    }

    /* Metadata sorted by key; HashMap insertion keeps the last of duplicate keys. */
    size_t np = s.nm / 3;
    if (np) {
        qsort_r(s.meta, np, 3 * sizeof *s.meta, cmp_meta_, st->arena);
        st->meta = malloc(2 * np * sizeof *st->meta);
        if (!st->meta) { rc = QIE_ENOMEM; goto nomem; }
        for (size_t i = 0; i < np; i++) {
            if (i + 1 < np && !strcmp(st->arena + s.meta[3 * i], st->arena + s.meta[3 * i + 3]))
                continue;
            st->meta[2 * st->nmeta] = st->arena + s.meta[3 * i];
            st->meta[2 * st->nmeta + 1] = st->arena + s.meta[3 * i + 1];
            st->nmeta++;
        }
    }
    free(order);
    free(s.e);
    free(s.meta);
    *out = st;
    return 0;

nomem:
    qie_seterr(err, "out of memory parsing a %llu-byte header", (unsigned long long)n);
fail:
    free(order);
    free(s.e);
    free(s.dims);
    free(s.meta);
    free(s.j.arena);
    st_close(&st);
    return rc;
}

int st_parse_header(char *err, const void *buf, size_t len, SafeTensors **out) {
    if (!out || *out || (!buf && len)) {
        qie_seterr(err, "st_parse_header: bad arguments");
        return QIE_EINVAL;
    }
    int rc = st_build_(err, buf, len, out);
    if (rc) qie_preferr(err, "st_parse_header <memory>");
    return rc;
}

int st_open(char *err, const char *path, SafeTensors **out) {
    if (!path || !out || *out) {
        qie_seterr(err, "st_open: bad arguments");
        return QIE_EINVAL;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        qie_seterr(err, "st_open %s: open: %s", path, strerror(e));
        return e;
    }
    struct stat sb;
    if (fstat(fd, &sb)) {
        int e = errno;
        qie_seterr(err, "st_open %s: fstat: %s", path, strerror(e));
        close(fd);
        return e;
    }
    if (!S_ISREG(sb.st_mode)) {
        qie_seterr(err, "st_open %s: not a regular file", path);
        close(fd);
        return QIE_EFORMAT;
    }
    size_t len = (size_t)sb.st_size;
    if (len < 8) {
        qie_seterr(err, "st_open %s: file is %zu bytes, shorter than the 8-byte header length",
                   path, len);
        close(fd);
        return QIE_EFORMAT;
    }
    /* MAP_PRIVATE, read-only: tensors are borrowed straight from the page cache. A file
     * truncated by someone else while mapped would SIGBUS; qie's writer only ever renames new
     * files into place, so it never does that to a reader. */
    void *map = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        qie_seterr(err, "st_open %s: mmap %zu bytes: %s", path, len, strerror(e));
        close(fd);
        return e;
    }
    if (close(fd)) { /* the map keeps its own reference to the file */
        int e = errno;
        qie_seterr(err, "st_open %s: close: %s", path, strerror(e));
        munmap(map, len);
        return e;
    }
    int rc = st_build_(err, map, len, out);
    if (rc) {
        qie_preferr(err, "st_open %s", path);
        munmap(map, len);
        return rc;
    }
    (*out)->map = map;
    (*out)->map_len = len;
    return 0;
}

size_t st_count(const SafeTensors *st) { return st ? st->count : 0; }

const StTensor *st_tensor_at(const SafeTensors *st, size_t i) {
    return st && i < st->count ? &st->tensors[i] : NULL;
}

const StTensor *st_find(const SafeTensors *st, const char *name) {
    if (!st || !name) return NULL;
    size_t lo = 0, hi = st->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const StTensor *t = &st->tensors[st->by_name[mid]];
        int c = strcmp(name, t->name);
        if (!c) return t;
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

const char *st_metadata(const SafeTensors *st, const char *key) {
    if (!st || !key) return NULL;
    size_t lo = 0, hi = st->nmeta;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(key, st->meta[2 * mid]);
        if (!c) return st->meta[2 * mid + 1];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

size_t st_metadata_count(const SafeTensors *st) { return st ? st->nmeta : 0; }

int st_metadata_at(const SafeTensors *st, size_t i, const char **key, const char **value) {
    if (!st || i >= st->nmeta) return QIE_ENOTFOUND;
    if (key) *key = st->meta[2 * i];
    if (value) *value = st->meta[2 * i + 1];
    return 0;
}

uint64_t st_header_len(const SafeTensors *st) { return st ? st->n : 0; }
size_t st_file_size(const SafeTensors *st) { return st ? st->len : 0; }

/* ---- StModel ------------------------------------------------------------------------------ */

struct StModel {
    size_t nshards;
    SafeTensors **shards;
    char **shard_names;
    const StTensor **all;     /* shard order, then file order */
    const StTensor **by_name; /* sorted by name */
    size_t count;
};

void st_model_close(StModel **pm) {
    if (!pm || !*pm) return;
    StModel *m = *pm;
    for (size_t i = 0; i < m->nshards; i++) {
        st_close(&m->shards[i]);
        free(m->shard_names[i]);
    }
    free(m->shards);
    free(m->shard_names);
    free(m->all);
    free(m->by_name);
    free(m);
    *pm = NULL;
}

static int ends_with_(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

static int cmp_tensor_ptr_names_(const void *a, const void *b) {
    return strcmp((*(const StTensor *const *)a)->name, (*(const StTensor *const *)b)->name);
}

static int cmp_str_ptr_(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* A shard file name from an index must stay in the index's directory. */
static int shard_name_ok_(const char *s) {
    return *s && !strchr(s, '/') && !strstr(s, "..");
}

static int path_join_(char *err, char *out, const char *dir, const char *name) {
    int k = snprintf(out, PATH_MAX, "%s/%s", dir, name);
    if (k < 0 || k >= PATH_MAX) {
        qie_seterr(err, "path too long: %s/%s", dir, name);
        return ENAMETOOLONG;
    }
    return 0;
}

/* Resolves a directory to the file st_model_open should read (see the header for the order). */
static int resolve_dir_(char *err, const char *dir, char *out) {
    static const char *const known[] = {
        "diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
        "diffusion_pytorch_model.safetensors", "model.safetensors",
    };
    struct stat sb;
    int rc;
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        if ((rc = path_join_(err, out, dir, known[i]))) return rc;
        if (!stat(out, &sb) && S_ISREG(sb.st_mode)) return 0;
    }
    /* else exactly one index, else exactly one .safetensors */
    for (int pass = 0; pass < 2; pass++) {
        const char *suf = pass == 0 ? ".safetensors.index.json" : ".safetensors";
        DIR *d = opendir(dir);
        if (!d) {
            int e = errno;
            qie_seterr(err, "opendir %s: %s", dir, strerror(e));
            return e;
        }
        int found = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            if (de->d_name[0] == '.' || !ends_with_(de->d_name, suf)) continue;
            if (found++ == 0 && (rc = path_join_(err, out, dir, de->d_name))) {
                closedir(d);
                return rc;
            }
        }
        closedir(d);
        if (found == 1) return 0;
        if (found > 1) {
            qie_seterr(err, "%s holds %d *%s files and no diffusers/transformers default name: "
                       "pass the file to open", dir, found, suf);
            return QIE_EINVAL;
        }
    }
    qie_seterr(err, "%s holds no *.safetensors or *.safetensors.index.json", dir);
    return QIE_ENOTFOUND;
}

/* Fills m->all and m->by_name from the open shards; a name in two shards is an error. */
static int model_index_tensors_(char *err, StModel *m) {
    size_t n = 0;
    for (size_t i = 0; i < m->nshards; i++) n += st_count(m->shards[i]);
    m->all = malloc((n ? n : 1) * sizeof *m->all);
    m->by_name = malloc((n ? n : 1) * sizeof *m->by_name);
    if (!m->all || !m->by_name) {
        qie_seterr(err, "out of memory");
        return QIE_ENOMEM;
    }
    for (size_t i = 0, k = 0; i < m->nshards; i++)
        for (size_t t = 0; t < st_count(m->shards[i]); t++) m->all[k++] = st_tensor_at(m->shards[i], t);
    m->count = n;
    memcpy(m->by_name, m->all, n * sizeof *m->all);
    if (n) qsort(m->by_name, n, sizeof *m->by_name, cmp_tensor_ptr_names_);
    for (size_t i = 1; i < n; i++) {
        if (!strcmp(m->by_name[i]->name, m->by_name[i - 1]->name)) {
            qie_seterr(err, "tensor \"%s\" is in two shards", ST_SHOW(m->by_name[i]->name));
            return QIE_EMISMATCH;
        }
    }
    return 0;
}

static int open_shard_(char *err, StModel *m, const char *dir, const char *name) {
    char path[PATH_MAX];
    int rc = path_join_(err, path, dir, name);
    if (rc) return rc;
    size_t i = m->nshards;
    if (!(m->shard_names[i] = strdup(name))) {
        qie_seterr(err, "out of memory");
        return QIE_ENOMEM;
    }
    m->nshards++; /* counted now so that close frees the name even if the open fails */
    return st_open(err, path, &m->shards[i]);
}

static int model_open_index_(char *err, StModel *m, const char *path) {
    char *text = NULL, dir[PATH_MAX];
    const char **names = NULL, **files = NULL, **uniq = NULL;
    cJSON *root = NULL;
    size_t len = 0, nw = 0;
    int rc;

    const char *slash = strrchr(path, '/');
    if (!slash) snprintf(dir, sizeof dir, ".");
    else if (slash == path) snprintf(dir, sizeof dir, "/");
    else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);

    if ((rc = fs_read_file(err, path, ST_MAX_INDEX_BYTES, &text, &len))) return rc;
    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        qie_seterr(err, "%s: invalid JSON near byte %zu", path, end ? (size_t)(end - text) : 0);
        rc = QIE_EFORMAT;
        goto out;
    }
    for (const char *p = end; p && p < text + len; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            qie_seterr(err, "%s: trailing characters after the JSON object", path);
            rc = QIE_EFORMAT;
            goto out;
        }
    }
    const cJSON *wm = cJSON_IsObject(root) ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(wm)) {
        qie_seterr(err, "%s: no \"weight_map\" object", path);
        rc = QIE_EFORMAT;
        goto out;
    }
    nw = (size_t)cJSON_GetArraySize(wm);
    names = malloc((nw ? nw : 1) * sizeof *names);
    files = malloc((nw ? nw : 1) * sizeof *files);
    uniq = malloc((nw ? nw : 1) * sizeof *uniq);
    if (!names || !files || !uniq) { rc = QIE_ENOMEM; qie_seterr(err, "out of memory"); goto out; }
    size_t k = 0;
    for (const cJSON *it = wm->child; it; it = it->next, k++) {
        if (!cJSON_IsString(it) || !it->valuestring || !it->string) {
            qie_seterr(err, "%s: weight_map value of \"%s\" is not a string", path,
                       ST_SHOW(it->string ? it->string : ""));
            rc = QIE_EFORMAT;
            goto out;
        }
        if (!shard_name_ok_(it->valuestring)) {
            qie_seterr(err, "%s: shard name \"%s\" of \"%s\" is empty or leaves the directory "
                       "('/' or \"..\")", path, ST_SHOW(it->valuestring), ST_SHOW(it->string));
            rc = QIE_EFORMAT;
            goto out;
        }
        names[k] = it->string;
        files[k] = it->valuestring;
        uniq[k] = it->valuestring;
    }
    size_t nu = 0;
    if (nw) {
        qsort(uniq, nw, sizeof *uniq, cmp_str_ptr_);
        for (size_t i = 0; i < nw; i++)
            if (!nu || strcmp(uniq[i], uniq[nu - 1])) uniq[nu++] = uniq[i];
    }
    m->shards = calloc(nu ? nu : 1, sizeof *m->shards);
    m->shard_names = calloc(nu ? nu : 1, sizeof *m->shard_names);
    if (!m->shards || !m->shard_names) { rc = QIE_ENOMEM; qie_seterr(err, "out of memory"); goto out; }
    for (size_t i = 0; i < nu; i++)
        if ((rc = open_shard_(err, m, dir, uniq[i]))) goto out;

    /* every weight_map entry is in its shard... */
    for (size_t i = 0; i < nw; i++) {
        const char **hit = bsearch(&files[i], (const char **)m->shard_names, nu, sizeof *uniq,
                                   cmp_str_ptr_);
        const SafeTensors *sh = hit ? m->shards[hit - (const char **)m->shard_names] : NULL;
        if (!sh || !st_find(sh, names[i])) {
            qie_seterr(err, "%s: tensor \"%s\" is not in its shard %s", path, ST_SHOW(names[i]), ST_SHOW(files[i]));
            rc = QIE_EMISMATCH;
            goto out;
        }
    }
    if ((rc = model_index_tensors_(err, m))) goto out;
    /* ...and, names being unique on both sides, equal counts mean every shard tensor is listed. */
    if (m->count != nw) {
        qie_seterr(err, "%s: the shards hold %zu tensors but weight_map lists %zu (missing or "
                   "duplicate entries)", path, m->count, nw);
        rc = QIE_EMISMATCH;
        goto out;
    }
out:
    cJSON_Delete(root);
    free(names);
    free(files);
    free(uniq);
    free(text);
    return rc;
}

int st_model_open(char *err, const char *path, StModel **out) {
    if (!path || !out || *out) {
        qie_seterr(err, "st_model_open: bad arguments");
        return QIE_EINVAL;
    }
    char file[PATH_MAX];
    struct stat sb;
    int rc;
    if (stat(path, &sb)) {
        int e = errno;
        qie_seterr(err, "st_model_open %s: %s", path, strerror(e));
        return e;
    }
    if (S_ISDIR(sb.st_mode)) {
        if ((rc = resolve_dir_(err, path, file))) {
            qie_preferr(err, "st_model_open %s", path);
            return rc;
        }
    } else if (snprintf(file, sizeof file, "%s", path) >= (int)sizeof file) {
        qie_seterr(err, "st_model_open: path too long");
        return ENAMETOOLONG;
    }
    StModel *m = calloc(1, sizeof *m);
    if (!m) {
        qie_seterr(err, "st_model_open %s: out of memory", path);
        return QIE_ENOMEM;
    }
    if (ends_with_(file, ".json")) {
        rc = model_open_index_(err, m, file);
    } else {
        const char *base = strrchr(file, '/');
        m->shards = calloc(1, sizeof *m->shards);
        m->shard_names = calloc(1, sizeof *m->shard_names);
        if (!m->shards || !m->shard_names) {
            qie_seterr(err, "out of memory");
            rc = QIE_ENOMEM;
        } else if (!(m->shard_names[0] = strdup(base ? base + 1 : file))) {
            qie_seterr(err, "out of memory");
            rc = QIE_ENOMEM;
        } else {
            m->nshards = 1;
            rc = st_open(err, file, &m->shards[0]);
            if (!rc) rc = model_index_tensors_(err, m);
        }
    }
    if (rc) {
        qie_preferr(err, "st_model_open %s", path);
        st_model_close(&m);
        return rc;
    }
    *out = m;
    return 0;
}

size_t st_model_count(const StModel *m) { return m ? m->count : 0; }

const StTensor *st_model_tensor_at(const StModel *m, size_t i) {
    return m && i < m->count ? m->all[i] : NULL;
}

const StTensor *st_model_find(const StModel *m, const char *name) {
    if (!m || !name) return NULL;
    size_t lo = 0, hi = m->count;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, m->by_name[mid]->name);
        if (!c) return m->by_name[mid];
        if (c < 0) hi = mid;
        else lo = mid + 1;
    }
    return NULL;
}

size_t st_model_shard_count(const StModel *m) { return m ? m->nshards : 0; }

const SafeTensors *st_model_shard(const StModel *m, size_t i) {
    return m && i < m->nshards ? m->shards[i] : NULL;
}

const char *st_model_shard_name(const StModel *m, size_t i) {
    return m && i < m->nshards ? m->shard_names[i] : NULL;
}
