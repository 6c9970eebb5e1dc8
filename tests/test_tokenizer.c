/* test_tokenizer.c: common/tokenizer.c against HF tokenizers (scripts/golden/text.py).
 *
 * Two vocabularies, one corpus (multilingual, emoji, code, whitespace runs, numbers, strings that
 * need NFC, added tokens inline and half-written):
 *   - the tiny trained BPE of the te-tiny model (tests/golden/text/model/tokenizer), loaded from
 *     vocab.json + merges.txt and again from tokenizer.json alone;
 *   - the slice of the real Qwen2 vocabulary that the corpus touches (tests/golden/text/
 *     qwen2_vocab; ids as released), against ids that HF tokenizers produced with the FULL
 *     vocabulary. Every id must match exactly. */
#include "err.h"
#include "safetensors.h"
#include "testlib.h"
#include "tokenizer.h"

#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char err[QIE_ERR_LEN];

static int corpus_check(const Tokenizer *t, const char *fixture, const char *what) {
    char path[1024];
    snprintf(path, sizeof path, "%s/text/%s", test_golden_dir(), fixture);
    SafeTensors *st = NULL;
    int rc = st_open(err, path, &st);
    CHECK(rc == 0, "%s", err);
    if (rc) return 0;
    const char *ns = st_metadata(st, "n");
    int n = ns ? atoi(ns) : 0;
    CHECK(n > 40, "corpus of %d strings", n);
    int bad = 0;
    for (int i = 0; i < n; i++) {
        char key[32];
        snprintf(key, sizeof key, "text.%d", i);
        const char *text = st_metadata(st, key);
        snprintf(key, sizeof key, "ids.%d", i);
        const StTensor *ref = st_find(st, key);
        CHECK(text && ref && ref->dtype == QIE_DT_I32, "%s entry %d", what, i);
        if (!text || !ref) continue;
        int32_t *ids = NULL;
        size_t nid = 0;
        rc = tok_encode(err, t, text, strlen(text), &ids, &nid);
        CHECK(rc == 0, "%s: %s", what, err);
        int same = rc == 0 && nid == ref->numel;
        for (size_t k = 0; same && k < nid; k++) {
            int32_t r;
            memcpy(&r, (const char *)ref->data + 4 * k, 4);
            if (ids[k] != r) {
                fprintf(stderr, "%s[%d] token %zu: %d vs HF %d\n", what, i, k, ids[k], r);
                same = 0;
            }
        }
        if (!same) {
            bad++;
            fprintf(stderr, "%s[%d] mismatch (%zu vs %llu ids): '%.80s'\n", what, i, nid,
                    (unsigned long long)ref->numel, text);
        }
        CHECK(same, "%s string %d", what, i);
        free(ids);
    }
    printf("  %s: %d strings, %d mismatched\n", what, n, bad);
    st_close(&st);
    return n;
}

static void test_tiny_vocab(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/text/model/tokenizer", test_golden_dir());
    Tokenizer *t = NULL;
    CHECK_RC(tok_create(err, dir, &t), err);
    if (!t) return;
    CHECK(tok_token_id(t, "<|endoftext|>") == 630 && tok_token_id(t, "<|image_pad|>") == 642,
          "added ids %d %d", tok_token_id(t, "<|endoftext|>"), tok_token_id(t, "<|image_pad|>"));
    CHECK(tok_vocab_size(t) == 652, "vocab size %zu", tok_vocab_size(t));
    corpus_check(t, "tokenizer_tiny.safetensors", "tiny");
    tok_destroy(&t);
    CHECK(t == NULL);
}

/* tokenizer.json alone: the vocabulary and merges come from its "model" */
static void test_tiny_from_tokenizer_json(void) {
    char tmp[512], src[1024], dst[1024];
    test_tmpdir(tmp, sizeof tmp);
    snprintf(src, sizeof src, "%s/text/model/tokenizer/tokenizer.json", test_golden_dir());
    snprintf(dst, sizeof dst, "%s/tokenizer.json", tmp);
    char *abs = realpath(src, NULL); /* a symlink needs an absolute target */
    CHECK(abs && symlink(abs, dst) == 0);
    free(abs);
    Tokenizer *t = NULL;
    CHECK_RC(tok_create(err, tmp, &t), err);
    if (t) corpus_check(t, "tokenizer_tiny.safetensors", "tiny(tokenizer.json)");
    tok_destroy(&t);
    unlink(dst);
    rmdir(tmp);
}

static void test_real_qwen2_vocab(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/text/qwen2_vocab", test_golden_dir());
    Tokenizer *t = NULL;
    CHECK_RC(tok_create(err, dir, &t), err);
    if (!t) return;
    CHECK(tok_token_id(t, "<|endoftext|>") == 151643 && tok_token_id(t, "<|image_pad|>") == 151655 &&
          tok_token_id(t, "<|file_sep|>") == 151664);
    corpus_check(t, "tokenizer_qwen2.safetensors", "qwen2");
    tok_destroy(&t);
}

static void test_nfc_units(void) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/text/model/tokenizer", test_golden_dir());
    Tokenizer *t = NULL;
    CHECK_RC(tok_create(err, dir, &t), err);
    if (!t) return;
    struct { uint32_t in[6]; int nin; uint32_t out[6]; int nout; } cases[] = {
        {{'e', 0x301}, 2, {0xE9}, 1},                         /* compose */
        {{0x212B}, 1, {0xC5}, 1},                              /* singleton: ANGSTROM -> Å */
        {{0x1100, 0x1161, 0x11A8}, 3, {0xAC01}, 1},           /* Hangul L V T */
        {{'q', 0x307, 0x323}, 3, {'q', 0x323, 0x307}, 3},     /* reorder by ccc, no composite */
        {{0x1E0B, 0x323}, 2, {0x1E0D, 0x307}, 2},             /* ḋ + dot below -> ḍ + dot above */
        {{0x344}, 1, {0x308, 0x301}, 2},                      /* excluded non-starter decomposition */
        {{'A', 0x30A, 0x301}, 3, {0x1FA}, 1},                 /* Å + acute -> Ǻ */
    };
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        uint32_t out[32];
        size_t n = 0;
        CHECK_RC(tok_nfc(t, cases[c].in, (size_t)cases[c].nin, out, 32, &n), err);
        int ok = (int)n == cases[c].nout;
        for (int k = 0; ok && k < cases[c].nout; k++) ok = out[k] == cases[c].out[k];
        CHECK(ok, "nfc case %zu: got %zu code points (first U+%04X)", c, n, n ? out[0] : 0);
    }
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(tok_encode(err, t, "bad \xC3\x28 utf8", 12, &ids, &n) == QIE_EFORMAT && ids == NULL);
    CHECK(tok_encode(err, t, "", 0, &ids, &n) == 0 && n == 0);
    free(ids);
    Tokenizer *none = NULL;
    CHECK(tok_create(err, "/nonexistent-qie-dir", &none) == QIE_ENOTFOUND && none == NULL);
    tok_destroy(&t);
}

int main(void) {
    TEST_RUN(test_tiny_vocab);
    TEST_RUN(test_tiny_from_tokenizer_json);
    TEST_RUN(test_real_qwen2_vocab);
    TEST_RUN(test_nfc_units);
    return TEST_DONE();
}
