/* tokenizer.c: Qwen2 byte-level BPE (tokenizer.h has the contract and the reference). */
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "err.h"
#include "unicode_tables.h"

/* tokenizer.json of real vocabularies is ~10 MB */
#define TOK_MAX_FILE ((size_t)256 << 20)

/* ---- small open-addressing hash maps ------------------------------------------------------ */

typedef struct {
    uint8_t *bytes; /* owned */
    uint32_t len;
    int32_t id;
} TokEntry_;

typedef struct {
    uint64_t key; /* (left id << 32) | right id */
    int32_t rank;
    int32_t id;   /* merged token */
} TokMerge_;

typedef struct {
    uint8_t *bytes;
    uint32_t len;
    int32_t id;
} TokAdded_;

struct Tokenizer {
    TokEntry_ *vocab; /* hash table by bytes; id < 0 marks an empty slot */
    size_t vocab_cap, vocab_n;
    TokMerge_ *merges; /* hash table by key; rank < 0 marks an empty slot */
    size_t merges_cap, merges_n;
    int32_t byte_id[256]; /* id of each single byte; -1 when absent */
    TokAdded_ *added;
    int nadded;
    uint8_t added_first[256]; /* 1 when some added token starts with this byte */
    uint64_t *comp_keys;      /* NFC composition pairs (a << 32 | b), sorted */
    uint32_t *comp_vals;
    size_t ncomp;
    int32_t max_id;
};

static uint64_t fnv1a_(const uint8_t *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 1099511628211ull;
    return h;
}

static uint64_t mix64_(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static const TokEntry_ *vocab_find_(const Tokenizer *t, const uint8_t *p, size_t n) {
    if (!t->vocab_cap) return NULL;
    size_t m = t->vocab_cap - 1;
    for (size_t i = fnv1a_(p, n) & m;; i = (i + 1) & m) {
        const TokEntry_ *e = &t->vocab[i];
        if (e->id < 0) return NULL;
        if (e->len == n && !memcmp(e->bytes, p, n)) return e;
    }
}

/* takes ownership of bytes on success */
static int vocab_put_(Tokenizer *t, uint8_t *bytes, size_t n, int32_t id) {
    size_t m = t->vocab_cap - 1;
    for (size_t i = fnv1a_(bytes, n) & m;; i = (i + 1) & m) {
        TokEntry_ *e = &t->vocab[i];
        if (e->id < 0) {
            e->bytes = bytes;
            e->len = (uint32_t)n;
            e->id = id;
            t->vocab_n++;
            if (id > t->max_id) t->max_id = id;
            if (n == 1) t->byte_id[bytes[0]] = id;
            return 0;
        }
        if (e->len == n && !memcmp(e->bytes, bytes, n)) return 1; /* duplicate: keep the first */
    }
}

static const TokMerge_ *merge_find_(const Tokenizer *t, int32_t a, int32_t b) {
    if (!t->merges_cap) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t m = t->merges_cap - 1;
    for (size_t i = mix64_(key) & m;; i = (i + 1) & m) {
        const TokMerge_ *e = &t->merges[i];
        if (e->rank < 0) return NULL;
        if (e->key == key) return e;
    }
}

static void merge_put_(Tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t m = t->merges_cap - 1;
    for (size_t i = mix64_(key) & m;; i = (i + 1) & m) {
        TokMerge_ *e = &t->merges[i];
        if (e->rank < 0) {
            e->key = key;
            e->rank = rank;
            e->id = id;
            t->merges_n++;
            return;
        }
        if (e->key == key) return; /* a repeated merge keeps its first (lowest) rank */
    }
}

static size_t pow2_at_least_(size_t n) {
    size_t c = 16;
    while (c < n) c <<= 1;
    return c;
}

/* ---- UTF-8 and the byte-level alphabet ------------------------------------------------------ */

/* Strict UTF-8 decode of one code point at p (n bytes left). Returns its length, 0 if invalid. */
static size_t utf8_decode_(const uint8_t *p, size_t n, uint32_t *cp) {
    if (!n) return 0;
    uint8_t c = p[0];
    if (c < 0x80) { *cp = c; return 1; }
    if (c >= 0xC2 && c <= 0xDF) {
        if (n < 2 || (p[1] & 0xC0) != 0x80) return 0;
        *cp = ((uint32_t)(c & 0x1F) << 6) | (p[1] & 0x3F);
        return 2;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        uint32_t v = ((uint32_t)(c & 0x0F) << 12) | ((uint32_t)(p[1] & 0x3F) << 6) | (p[2] & 0x3F);
        if (v < 0x800 || (v >= 0xD800 && v <= 0xDFFF)) return 0;
        *cp = v;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80) return 0;
        uint32_t v = ((uint32_t)(c & 0x07) << 18) | ((uint32_t)(p[1] & 0x3F) << 12) |
                     ((uint32_t)(p[2] & 0x3F) << 6) | (p[3] & 0x3F);
        if (v < 0x10000 || v > 0x10FFFF) return 0;
        *cp = v;
        return 4;
    }
    return 0;
}

static size_t utf8_encode_(uint32_t cp, uint8_t *o) {
    if (cp < 0x80) { o[0] = (uint8_t)cp; return 1; }
    if (cp < 0x800) { o[0] = (uint8_t)(0xC0 | (cp >> 6)); o[1] = (uint8_t)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | (cp >> 12));
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | (cp >> 18));
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* GPT-2 bytes_to_unicode: printable Latin-1 bytes map to themselves, the other 68 bytes to
 * U+0100.. in byte order. Inverse: code point -> byte, -1 if not in the alphabet. */
static int byte_of_cp_(uint32_t cp) {
    static int16_t inv[324];
    static int ready = 0;
    if (!ready) { /* idempotent; racing threads write the same values */
        int16_t tmp[324];
        for (int i = 0; i < 324; i++) tmp[i] = -1;
        int n = 0;
        for (int b = 0; b < 256; b++) {
            int keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            if (keep) tmp[b] = (int16_t)b;
            else tmp[256 + n++] = (int16_t)b;
        }
        memcpy(inv, tmp, sizeof tmp);
        ready = 1;
    }
    return cp < 324 ? inv[cp] : -1;
}

/* byte-level unicode string (UTF-8) -> raw bytes; malloc'd. QIE_EFORMAT for a character outside
 * the 256-character alphabet. */
static int bl_to_bytes_(const char *s, uint8_t **out, size_t *nout) {
    size_t n = strlen(s);
    uint8_t *b = malloc(n ? n : 1);
    if (!b) return QIE_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t l = utf8_decode_((const uint8_t *)s + i, n - i, &cp);
        int v = l ? byte_of_cp_(cp) : -1;
        if (v < 0) { free(b); return QIE_EFORMAT; }
        b[k++] = (uint8_t)v;
        i += l;
    }
    *out = b;
    *nout = k;
    return 0;
}

/* ---- Unicode properties -------------------------------------------------------------------- */

static int in_ranges_(const uint32_t *r, size_t npairs, uint32_t cp) {
    size_t lo = 0, hi = npairs;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[2 * mid]) hi = mid;
        else if (cp > r[2 * mid + 1]) lo = mid + 1;
        else return 1;
    }
    return 0;
}

static int is_L_(uint32_t cp) {
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges_(UT_L, sizeof UT_L / sizeof *UT_L / 2, cp);
}
static int is_N_(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges_(UT_N, sizeof UT_N / sizeof *UT_N / 2, cp);
}
static int is_ws_(uint32_t cp) {
    if (cp < 0x80) return cp == ' ' || (cp >= 0x9 && cp <= 0xD);
    for (size_t i = 0; i < sizeof UT_WS / sizeof *UT_WS; i++)
        if (UT_WS[i] == cp) return 1;
    return 0;
}
static int is_crlf_(uint32_t cp) { return cp == '\r' || cp == '\n'; }
/* [^\s\p{L}\p{N}] */
static int is_punct_(uint32_t cp) { return !is_ws_(cp) && !is_L_(cp) && !is_N_(cp); }

static int ccc_(uint32_t cp) {
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = sizeof UT_CCC / sizeof *UT_CCC / 3;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < UT_CCC[3 * mid]) hi = mid;
        else if (cp > UT_CCC[3 * mid + 1]) lo = mid + 1;
        else return (int)UT_CCC[3 * mid + 2];
    }
    return 0;
}

/* ---- NFC (UAX #15: canonical decomposition, canonical ordering, canonical composition) ---- */

enum { HANGUL_S = 0xAC00, HANGUL_L = 0x1100, HANGUL_V = 0x1161, HANGUL_T = 0x11A7,
       HANGUL_LN = 19, HANGUL_VN = 21, HANGUL_TN = 28, HANGUL_NN = 21 * 28, HANGUL_SN = 19 * 21 * 28 };

static const uint32_t *dec_find_(uint32_t cp) {
    size_t lo = 0, hi = sizeof UT_DEC / sizeof *UT_DEC / 3;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < UT_DEC[3 * mid]) hi = mid;
        else if (cp > UT_DEC[3 * mid]) lo = mid + 1;
        else return &UT_DEC[3 * mid];
    }
    return NULL;
}

/* full canonical decomposition of cp appended at out[*k]; returns -1 when cap is exceeded */
static int decompose_(uint32_t cp, uint32_t *out, size_t *k, size_t cap) {
    if (cp >= HANGUL_S && cp < HANGUL_S + HANGUL_SN) {
        uint32_t s = cp - HANGUL_S, t = s % HANGUL_TN;
        if (*k + 3 > cap) return -1;
        out[(*k)++] = HANGUL_L + s / HANGUL_NN;
        out[(*k)++] = HANGUL_V + (s % HANGUL_NN) / HANGUL_TN;
        if (t) out[(*k)++] = HANGUL_T + t;
        return 0;
    }
    const uint32_t *d = cp >= 0xC0 ? dec_find_(cp) : NULL;
    if (!d) {
        if (*k + 1 > cap) return -1;
        out[(*k)++] = cp;
        return 0;
    }
    if (decompose_(d[1], out, k, cap)) return -1;
    uint32_t b = d[2] & 0x7fffffffu;
    return b ? decompose_(b, out, k, cap) : 0;
}

static int compose_pair_(const Tokenizer *t, uint32_t a, uint32_t b, uint32_t *c) {
    if (a >= HANGUL_L && a < HANGUL_L + HANGUL_LN && b >= HANGUL_V && b < HANGUL_V + HANGUL_VN) {
        *c = HANGUL_S + ((a - HANGUL_L) * HANGUL_VN + (b - HANGUL_V)) * HANGUL_TN;
        return 1;
    }
    if (a >= HANGUL_S && a < HANGUL_S + HANGUL_SN && (a - HANGUL_S) % HANGUL_TN == 0 && b > HANGUL_T &&
        b < HANGUL_T + HANGUL_TN) {
        *c = a + (b - HANGUL_T);
        return 1;
    }
    uint64_t key = ((uint64_t)a << 32) | b;
    size_t lo = 0, hi = t->ncomp;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (key < t->comp_keys[mid]) hi = mid;
        else if (key > t->comp_keys[mid]) lo = mid + 1;
        else { *c = t->comp_vals[mid]; return 1; }
    }
    return 0;
}

int tok_nfc(const Tokenizer *t, const uint32_t *in, size_t n, uint32_t *out, size_t cap, size_t *nout) {
    int quick = 1; /* everything below U+0300 is NFC-stable: copy */
    for (size_t i = 0; i < n && quick; i++) quick = in[i] < 0x300;
    if (quick) {
        if (n > cap) return QIE_ELIMIT;
        memcpy(out, in, n * sizeof *in);
        *nout = n;
        return 0;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (decompose_(in[i], out, &k, cap)) return QIE_ELIMIT;
    /* canonical ordering: stable sort of each run of non-starters by ccc */
    for (size_t i = 1; i < k; i++) {
        int ci = ccc_(out[i]);
        if (!ci) continue;
        for (size_t j = i; j > 0; j--) {
            int cj = ccc_(out[j - 1]);
            if (cj <= ci) break;
            uint32_t tmp = out[j - 1];
            out[j - 1] = out[j];
            out[j] = tmp;
        }
    }
    /* composition: a character combines with the last starter unless blocked by a character in
     * between whose ccc is 0 or >= its own */
    size_t w = 0;
    long starter = -1;
    int last_cc = 0;
    for (size_t i = 0; i < k; i++) {
        uint32_t ch = out[i], comp;
        int cc = ccc_(ch);
        if (starter >= 0) {
            int adjacent = (size_t)starter == w - 1;
            if ((adjacent || (last_cc != 0 && last_cc < cc)) && compose_pair_(t, out[starter], ch, &comp)) {
                out[starter] = comp;
                continue;
            }
        }
        if (cc == 0) starter = (long)w;
        last_cc = cc;
        out[w++] = ch;
    }
    *nout = w;
    return 0;
}

/* ---- pre-tokenizer: the Qwen2 regex by hand ------------------------------------------------ */

/* Length (in code points) of the regex match at position i of cp[0..n). Alternatives are tried
 * in order, as Oniguruma does; each comment gives the alternative and how it backtracks. */
static size_t pretok_match_(const uint32_t *cp, size_t n, size_t i) {
    uint32_t c0 = cp[i];
    uint32_t c1 = i + 1 < n ? cp[i + 1] : 0;
    int has1 = i + 1 < n;
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d): ASCII apostrophe; case-insensitive (ſ U+017F folds to s) */
    if (c0 == '\'' && has1) {
        uint32_t l1 = c1 < 0x80 ? (c1 | 0x20) : c1;
        if (l1 == 's' || c1 == 0x17F || l1 == 't' || l1 == 'm' || l1 == 'd') return 2;
        if (i + 2 < n) {
            uint32_t c2 = cp[i + 2], l2 = c2 < 0x80 ? (c2 | 0x20) : c2;
            if ((l1 == 'r' && l2 == 'e') || (l1 == 'v' && l2 == 'e') || (l1 == 'l' && l2 == 'l')) return 3;
        }
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ : with the optional character when it is allowed and a letter
     * follows, else (the optional matching empty) a letter run from i */
    if (!is_crlf_(c0) && !is_L_(c0) && !is_N_(c0) && has1 && is_L_(c1)) {
        size_t j = i + 1;
        while (j < n && is_L_(cp[j])) j++;
        return j - i;
    }
    if (is_L_(c0)) {
        size_t j = i;
        while (j < n && is_L_(cp[j])) j++;
        return j - i;
    }
    /* \p{N}: one digit */
    if (is_N_(c0)) return 1;
    /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
    {
        size_t j = i;
        if (c0 == ' ' && has1 && is_punct_(c1)) j = i + 1;
        if (is_punct_(cp[j])) {
            while (j < n && is_punct_(cp[j])) j++;
            while (j < n && is_crlf_(cp[j])) j++;
            return j - i;
        }
    }
    /* the rest start with whitespace (c0 is neither L, N nor punctuation) */
    size_t j = i;
    while (j < n && is_ws_(cp[j])) j++;
    /* \s*[\r\n]+ : \s* backtracks to the last CR/LF of the whitespace run; [\r\n]+ ends there */
    for (size_t k = j; k > i; k--)
        if (is_crlf_(cp[k - 1])) return k - i;
    /* \s+(?!\S) : the whole run at the end of the text, else the run minus its last character */
    if (j == n) return j - i;
    if (j - i >= 2) return j - i - 1;
    /* \s+ */
    return j - i;
}

/* ---- BPE (tokenizers Word::merge_all: a min-heap of (rank, position)) ------------------------ */

typedef struct { int32_t rank, pos, id; } HeapItem_;

static int heap_less_(const HeapItem_ *a, const HeapItem_ *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push_(HeapItem_ *h, size_t *n, HeapItem_ v) {
    size_t i = (*n)++;
    h[i] = v;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!heap_less_(&h[i], &h[p])) break;
        HeapItem_ t = h[i]; h[i] = h[p]; h[p] = t;
        i = p;
    }
}

static HeapItem_ heap_pop_(HeapItem_ *h, size_t *n) {
    HeapItem_ top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && heap_less_(&h[l], &h[m])) m = l;
        if (r < *n && heap_less_(&h[r], &h[m])) m = r;
        if (m == i) break;
        HeapItem_ t = h[i]; h[i] = h[m]; h[m] = t;
        i = m;
    }
    return top;
}

typedef struct {
    int32_t *ids; size_t n, cap;
} IdBuf_;

static int ids_push_(IdBuf_ *b, int32_t id) {
    if (b->n == b->cap) {
        size_t cap = b->cap ? 2 * b->cap : 64;
        int32_t *p = realloc(b->ids, cap * sizeof *p);
        if (!p) return QIE_ENOMEM;
        b->ids = p;
        b->cap = cap;
    }
    b->ids[b->n++] = id;
    return 0;
}

typedef struct { int32_t id, prev, next; } Sym_;

/* BPE of one pre-tokenized piece (raw bytes). Scratch buffers are grown by the caller. */
static int bpe_piece_(char *err, const Tokenizer *t, const uint8_t *p, size_t n, Sym_ *sym, HeapItem_ *heap,
                      IdBuf_ *out) {
    const TokEntry_ *whole = vocab_find_(t, p, n);
    if (whole && n == 1) return ids_push_(out, whole->id);
    for (size_t i = 0; i < n; i++) {
        int32_t id = t->byte_id[p[i]];
        if (id < 0) {
            qie_seterr(err, "tokenizer: byte 0x%02x has no vocabulary entry", p[i]);
            return QIE_ENOTFOUND;
        }
        sym[i].id = id;
        sym[i].prev = (int32_t)i - 1;
        sym[i].next = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const TokMerge_ *m = merge_find_(t, sym[i].id, sym[i + 1].id);
        if (m) heap_push_(heap, &hn, (HeapItem_){m->rank, (int32_t)i, m->id});
    }
    while (hn) {
        HeapItem_ top = heap_pop_(heap, &hn);
        Sym_ *s = &sym[top.pos];
        if (s->id < 0 || s->next < 0) continue; /* merged away, or now at the end */
        const TokMerge_ *m = merge_find_(t, s->id, sym[s->next].id);
        if (!m || m->rank != top.rank || m->id != top.id) continue; /* stale entry */
        Sym_ *r = &sym[s->next];
        s->id = top.id;
        s->next = r->next;
        if (r->next >= 0) sym[r->next].prev = top.pos;
        r->id = -1;
        if (s->prev >= 0) {
            const TokMerge_ *ml = merge_find_(t, sym[s->prev].id, s->id);
            if (ml) heap_push_(heap, &hn, (HeapItem_){ml->rank, s->prev, ml->id});
        }
        if (s->next >= 0) {
            const TokMerge_ *mr = merge_find_(t, s->id, sym[s->next].id);
            if (mr) heap_push_(heap, &hn, (HeapItem_){mr->rank, top.pos, mr->id});
        }
    }
    int rc = 0;
    for (int32_t i = 0; i >= 0 && !rc; i = sym[i].next) rc = ids_push_(out, sym[i].id);
    return rc;
}

/* NFC + pre-tokenize + BPE of a segment between added tokens */
static int encode_segment_(char *err, const Tokenizer *t, const uint8_t *s, size_t len, IdBuf_ *out) {
    int rc = 0;
    uint32_t *cps = malloc((len + 1) * sizeof *cps), *nfc = malloc((4 * len + 1) * sizeof *nfc);
    uint8_t *bytes = malloc(4 * (4 * len + 1));
    size_t *boff = malloc((4 * len + 2) * sizeof *boff);
    Sym_ *sym = NULL;
    HeapItem_ *heap = NULL;
    if (!cps || !nfc || !bytes || !boff) { rc = QIE_ENOMEM; goto done; }
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t l = utf8_decode_(s + i, len - i, &cps[n]);
        if (!l) {
            qie_seterr(err, "tokenizer: invalid UTF-8 at byte %zu", i);
            rc = QIE_EFORMAT;
            goto done;
        }
        i += l;
        n++;
    }
    size_t m;
    if ((rc = tok_nfc(t, cps, n, nfc, 4 * len + 1, &m))) goto done;
    size_t nb = 0;
    for (size_t i = 0; i < m; i++) {
        boff[i] = nb;
        nb += utf8_encode_(nfc[i], bytes + nb);
    }
    boff[m] = nb;
    /* pieces never exceed the segment: size the scratch once. The heap holds the n-1 first
     * pairs plus at most two new pairs per merge. */
    sym = malloc((nb + 1) * sizeof *sym);
    heap = malloc((3 * nb + 4) * sizeof *heap);
    if (!sym || !heap) { rc = QIE_ENOMEM; goto done; }
    for (size_t i = 0; i < m && !rc;) {
        size_t l = pretok_match_(nfc, m, i);
        rc = bpe_piece_(err, t, bytes + boff[i], boff[i + l] - boff[i], sym, heap, out);
        i += l;
    }
done:
    free(cps);
    free(nfc);
    free(bytes);
    free(boff);
    free(sym);
    free(heap);
    return rc;
}

int tok_encode(char *err, const Tokenizer *t, const char *text, size_t len, int32_t **ids, size_t *n) {
    IdBuf_ out = {0};
    int rc = 0;
    const uint8_t *s = (const uint8_t *)text;
    size_t seg = 0, i = 0;
    while (i < len && !rc) {
        int best = -1;
        if (t->added_first[s[i]]) {
            for (int a = 0; a < t->nadded; a++) {
                const TokAdded_ *ad = &t->added[a];
                if (ad->len <= len - i && !memcmp(s + i, ad->bytes, ad->len) &&
                    (best < 0 || ad->len > t->added[best].len))
                    best = a;
            }
        }
        if (best < 0) { i++; continue; }
        if (i > seg) rc = encode_segment_(err, t, s + seg, i - seg, &out);
        if (!rc) rc = ids_push_(&out, t->added[best].id);
        i += t->added[best].len;
        seg = i;
    }
    if (!rc && len > seg) rc = encode_segment_(err, t, s + seg, len - seg, &out);
    if (rc) {
        if (rc == QIE_ENOMEM) qie_seterr(err, "tokenizer: out of memory for %zu bytes of text", len);
        free(out.ids);
        return rc;
    }
    *ids = out.ids;
    *n = out.n;
    return 0;
}

/* ---- loading ---------------------------------------------------------------------------- */

static int file_exists_(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f) fclose(f);
    return f != NULL;
}

static int load_json_(char *err, const char *path, cJSON **out) {
    char *buf;
    size_t len;
    int rc = fs_read_file(err, path, TOK_MAX_FILE, &buf, &len);
    if (rc) return rc;
    *out = cJSON_ParseWithLength(buf, len);
    free(buf);
    if (!*out) {
        qie_seterr(err, "%s: malformed JSON", path);
        return QIE_EFORMAT;
    }
    return 0;
}

static int vocab_from_json_(char *err, Tokenizer *t, const cJSON *v, const char *what) {
    size_t n = (size_t)cJSON_GetArraySize(v);
    t->vocab_cap = pow2_at_least_(2 * n + 16);
    t->vocab = malloc(t->vocab_cap * sizeof *t->vocab);
    if (!t->vocab) return QIE_ENOMEM;
    for (size_t i = 0; i < t->vocab_cap; i++) t->vocab[i].id = -1;
    const cJSON *e;
    cJSON_ArrayForEach(e, v) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble > 2e9) {
            qie_seterr(err, "%s: vocabulary entry '%s' has no valid id", what, e->string ? e->string : "?");
            return QIE_EFORMAT;
        }
        uint8_t *b;
        size_t bl;
        int rc = bl_to_bytes_(e->string, &b, &bl);
        if (rc == QIE_EFORMAT) { /* not byte-level text (e.g. an added token copied in): skip */
            continue;
        }
        if (rc) return rc;
        if (vocab_put_(t, b, bl, (int32_t)e->valueint)) free(b);
    }
    return 0;
}

/* one merge "a b" (byte-level text) */
static int merge_add_(char *err, Tokenizer *t, const char *a, const char *b, int32_t rank, const char *what) {
    uint8_t *ba = NULL, *bb = NULL, *cat = NULL;
    size_t la, lb;
    int rc = bl_to_bytes_(a, &ba, &la);
    if (!rc) rc = bl_to_bytes_(b, &bb, &lb);
    if (rc) {
        free(ba);
        if (rc == QIE_EFORMAT) qie_seterr(err, "%s: merge %d ('%s' '%s') is not byte-level text", what, rank, a, b);
        return rc;
    }
    const TokEntry_ *ea = vocab_find_(t, ba, la), *eb = vocab_find_(t, bb, lb);
    cat = malloc(la + lb + 1);
    if (!cat) { free(ba); free(bb); return QIE_ENOMEM; }
    memcpy(cat, ba, la);
    memcpy(cat + la, bb, lb);
    const TokEntry_ *ec = vocab_find_(t, cat, la + lb);
    if (!ea || !eb || !ec) {
        qie_seterr(err, "%s: merge %d ('%s' '%s') names a token missing from the vocabulary", what, rank, a, b);
        rc = QIE_EFORMAT;
    } else {
        merge_put_(t, ea->id, eb->id, rank, ec->id);
    }
    free(ba);
    free(bb);
    free(cat);
    return rc;
}

static int merges_alloc_(Tokenizer *t, size_t n) {
    t->merges_cap = pow2_at_least_(2 * n + 16);
    t->merges = malloc(t->merges_cap * sizeof *t->merges);
    if (!t->merges) return QIE_ENOMEM;
    for (size_t i = 0; i < t->merges_cap; i++) t->merges[i].rank = -1;
    return 0;
}

static int merges_from_txt_(char *err, Tokenizer *t, char *buf, const char *what) {
    size_t lines = 1;
    for (char *p = buf; *p; p++) lines += *p == '\n';
    int rc = merges_alloc_(t, lines);
    if (rc) return rc;
    int32_t rank = 0;
    char *save = NULL;
    for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        size_t l = strlen(line);
        if (l && line[l - 1] == '\r') line[--l] = 0;
        if (!l || !strncmp(line, "#version", 8)) continue;
        char *sp = strchr(line, ' ');
        if (!sp || sp == line || !sp[1] || strchr(sp + 1, ' ')) {
            qie_seterr(err, "%s: line '%.60s' is not 'a b'", what, line);
            return QIE_EFORMAT;
        }
        *sp = 0;
        if ((rc = merge_add_(err, t, line, sp + 1, rank++, what))) return rc;
    }
    return 0;
}

static int merges_from_json_(char *err, Tokenizer *t, const cJSON *m, const char *what) {
    int rc = merges_alloc_(t, (size_t)cJSON_GetArraySize(m));
    if (rc) return rc;
    int32_t rank = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, m) {
        if (cJSON_IsString(e)) { /* "a b" */
            char *s = strdup(e->valuestring), *sp = s ? strchr(s, ' ') : NULL;
            if (!s) return QIE_ENOMEM;
            if (!sp) {
                free(s);
                qie_seterr(err, "%s: merge %d is not 'a b'", what, rank);
                return QIE_EFORMAT;
            }
            *sp = 0;
            rc = merge_add_(err, t, s, sp + 1, rank++, what);
            free(s);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) { /* ["a", "b"] (tokenizers >= 0.20) */
            rc = merge_add_(err, t, cJSON_GetArrayItem(e, 0)->valuestring, cJSON_GetArrayItem(e, 1)->valuestring,
                            rank++, what);
        } else {
            qie_seterr(err, "%s: merge %d is neither 'a b' nor [a, b]", what, rank);
            return QIE_EFORMAT;
        }
        if (rc) return rc;
    }
    return 0;
}

static int added_add_(Tokenizer *t, const char *content, int32_t id) {
    size_t l = strlen(content);
    if (!l) return 0;
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].len == l && !memcmp(t->added[i].bytes, content, l)) return 0;
    TokAdded_ *a = realloc(t->added, (size_t)(t->nadded + 1) * sizeof *a);
    if (!a) return QIE_ENOMEM;
    t->added = a;
    uint8_t *b = malloc(l);
    if (!b) return QIE_ENOMEM;
    memcpy(b, content, l);
    t->added[t->nadded++] = (TokAdded_){b, (uint32_t)l, id};
    t->added_first[b[0]] = 1;
    if (id > t->max_id) t->max_id = id;
    return 0;
}

static int build_comp_(Tokenizer *t) {
    size_t n = 0, ndec = sizeof UT_DEC / sizeof *UT_DEC / 3;
    for (size_t i = 0; i < ndec; i++) n += !(UT_DEC[3 * i + 2] >> 31) && (UT_DEC[3 * i + 2] & 0x7fffffffu);
    t->comp_keys = malloc((n + 1) * sizeof *t->comp_keys);
    t->comp_vals = malloc((n + 1) * sizeof *t->comp_vals);
    if (!t->comp_keys || !t->comp_vals) return QIE_ENOMEM;
    size_t k = 0;
    for (size_t i = 0; i < ndec; i++) {
        uint32_t b = UT_DEC[3 * i + 2];
        if ((b >> 31) || !b) continue;
        t->comp_keys[k] = ((uint64_t)UT_DEC[3 * i + 1] << 32) | b;
        t->comp_vals[k++] = UT_DEC[3 * i];
    }
    /* insertion sort: ~1000 entries, once per tokenizer */
    for (size_t i = 1; i < k; i++) {
        uint64_t key = t->comp_keys[i];
        uint32_t val = t->comp_vals[i];
        size_t j = i;
        while (j > 0 && t->comp_keys[j - 1] > key) {
            t->comp_keys[j] = t->comp_keys[j - 1];
            t->comp_vals[j] = t->comp_vals[j - 1];
            j--;
        }
        t->comp_keys[j] = key;
        t->comp_vals[j] = val;
    }
    t->ncomp = k;
    return 0;
}

int tok_create(char *err, const char *dir, Tokenizer **out) {
    char p_vocab[4096], p_merges[4096], p_tj[4096], p_cfg[4096], p_added[4096];
    snprintf(p_vocab, sizeof p_vocab, "%s/vocab.json", dir);
    snprintf(p_merges, sizeof p_merges, "%s/merges.txt", dir);
    snprintf(p_tj, sizeof p_tj, "%s/tokenizer.json", dir);
    snprintf(p_cfg, sizeof p_cfg, "%s/tokenizer_config.json", dir);
    snprintf(p_added, sizeof p_added, "%s/added_tokens.json", dir);
    Tokenizer *t = calloc(1, sizeof *t);
    if (!t) return QIE_ENOMEM;
    t->max_id = -1;
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    cJSON *tj = NULL, *j = NULL;
    char *mbuf = NULL;
    size_t mlen;
    int rc = build_comp_(t);
    if (rc) goto fail;
    int have_tj = file_exists_(p_tj);
    if (have_tj && (rc = load_json_(err, p_tj, &tj))) goto fail;
    if (file_exists_(p_vocab) && file_exists_(p_merges)) {
        if ((rc = load_json_(err, p_vocab, &j))) goto fail;
        if (!cJSON_IsObject(j)) {
            qie_seterr(err, "%s: not a JSON object", p_vocab);
            rc = QIE_EFORMAT;
            goto fail;
        }
        if ((rc = vocab_from_json_(err, t, j, p_vocab))) goto fail;
        if ((rc = fs_read_file(err, p_merges, TOK_MAX_FILE, &mbuf, &mlen))) goto fail;
        if ((rc = merges_from_txt_(err, t, mbuf, p_merges))) goto fail;
    } else if (tj) {
        const cJSON *model = cJSON_GetObjectItemCaseSensitive(tj, "model");
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, "vocab");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(model, "merges");
        if (!cJSON_IsString(type) || strcmp(type->valuestring, "BPE") || !cJSON_IsObject(v) || !cJSON_IsArray(m)) {
            qie_seterr(err, "%s: model is not a BPE with vocab and merges", p_tj);
            rc = QIE_EFORMAT;
            goto fail;
        }
        if ((rc = vocab_from_json_(err, t, v, p_tj))) goto fail;
        if ((rc = merges_from_json_(err, t, m, p_tj))) goto fail;
    } else {
        qie_seterr(err, "tokenizer folder %s: neither vocab.json + merges.txt nor tokenizer.json", dir);
        rc = QIE_ENOTFOUND;
        goto fail;
    }
    /* added tokens */
    const cJSON *e;
    const cJSON *at = tj ? cJSON_GetObjectItemCaseSensitive(tj, "added_tokens") : NULL;
    if (cJSON_IsArray(at)) {
        cJSON_ArrayForEach(e, at) {
            const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id"), *c = cJSON_GetObjectItemCaseSensitive(e, "content");
            if (cJSON_IsNumber(id) && cJSON_IsString(c) && (rc = added_add_(t, c->valuestring, (int32_t)id->valueint)))
                goto fail;
        }
    } else if (file_exists_(p_cfg)) {
        cJSON_Delete(j);
        j = NULL;
        if ((rc = load_json_(err, p_cfg, &j))) goto fail;
        const cJSON *atd = cJSON_GetObjectItemCaseSensitive(j, "added_tokens_decoder");
        cJSON_ArrayForEach(e, atd) {
            const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "content");
            if (cJSON_IsString(c) && (rc = added_add_(t, c->valuestring, (int32_t)strtol(e->string, NULL, 10))))
                goto fail;
        }
    }
    if (!t->nadded && file_exists_(p_added)) {
        cJSON_Delete(j);
        j = NULL;
        if ((rc = load_json_(err, p_added, &j))) goto fail;
        cJSON_ArrayForEach(e, j) {
            if (cJSON_IsNumber(e) && (rc = added_add_(t, e->string, (int32_t)e->valueint))) goto fail;
        }
    }
    cJSON_Delete(tj);
    cJSON_Delete(j);
    free(mbuf);
    *out = t;
    return 0;
fail:
    if (rc == QIE_ENOMEM) qie_seterr(err, "tokenizer %s: out of memory", dir);
    cJSON_Delete(tj);
    cJSON_Delete(j);
    free(mbuf);
    tok_destroy(&t);
    return rc;
}

void tok_destroy(Tokenizer **tp) {
    if (!tp || !*tp) return;
    Tokenizer *t = *tp;
    for (size_t i = 0; i < t->vocab_cap; i++)
        if (t->vocab[i].id >= 0) free(t->vocab[i].bytes);
    free(t->vocab);
    free(t->merges);
    for (int i = 0; i < t->nadded; i++) free(t->added[i].bytes);
    free(t->added);
    free(t->comp_keys);
    free(t->comp_vals);
    free(t);
    *tp = NULL;
}

int32_t tok_token_id(const Tokenizer *t, const char *token) {
    size_t l = strlen(token);
    for (int i = 0; i < t->nadded; i++)
        if (t->added[i].len == l && !memcmp(t->added[i].bytes, token, l)) return t->added[i].id;
    const TokEntry_ *e = vocab_find_(t, (const uint8_t *)token, l);
    return e ? e->id : -1;
}

size_t tok_vocab_size(const Tokenizer *t) { return (size_t)(t->max_id + 1); }
