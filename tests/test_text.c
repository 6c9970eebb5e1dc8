/* test_text.c: the Qwen2.5-VL prompt encoder (common/qwenvl*.c, CPU fp32 path) against the real
 * diffusers pipelines (scripts/golden/text.py, te-tiny with a small real-format tokenizer).
 *
 * Per golden case (v1 batch of 2; Plus with 1, 2, 3 images of different sizes, some resized by
 * the processor; a Plus batch of 2; the empty prompt; no image) it runs `qie-parity text`'s
 * entry point and requires
 *   input_ids            identical (the processor's ids, padded)
 *   prompt_embeds_mask   identical
 *   prompt_embeds        |c - ref| <= 1e-4 · max|ref| (fp32 vs fp32; summation order differs)
 *   processor rows       per-row sums within 2e-3 (sums of 1176 values ~1e3: catches one wrong
 *                        pixel after the bicubic resize, ~4e-3 per grey level)
 * plus: a sample gives the same bits alone and packed in a batch; bad input is refused with one
 * line; smart_resize on the spec's examples. */
#include "err.h"
#include "parity/parity.h"
#include "qwenvl.h"
#include "safetensors.h"
#include "testlib.h"

#include <stdint.h>
#include <unistd.h>

static char err[QIE_ERR_LEN];
static char model_dir[1024];

static const char *CASES[] = {"edit_b2", "plus_1img", "plus_2img", "plus_3img", "plus_b2", "plus_empty", "plus_noimg"};
#define NCASES (int)(sizeof CASES / sizeof *CASES)
#define EMB_TOL 1e-4

static double worst_rel = 0.0, worst_abs = 0.0;

static void case_path(char *out, size_t cap, const char *name, const char *io) {
    snprintf(out, cap, "%s/text/case_%s.%s.safetensors", test_golden_dir(), name, io);
}

static void check_case(const char *name) {
    char in[1024], ref[1024], tmp[512], out[1024];
    case_path(in, sizeof in, name, "in");
    case_path(ref, sizeof ref, name, "out");
    test_tmpdir(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/out.safetensors", tmp);
    ParityArgs a = {model_dir, in, out, "cpu"};
    CHECK_RC(parity_text(err, &a), err);
    SafeTensors *so = NULL, *sr = NULL;
    CHECK_RC(st_open(err, out, &so), err);
    CHECK_RC(st_open(err, ref, &sr), err);
    if (!so || !sr) goto done;
    const char *names[] = {"input_ids", "prompt_embeds_mask"};
    for (int t = 0; t < 2; t++) {
        const StTensor *x = st_find(so, names[t]), *y = st_find(sr, names[t]);
        CHECK(x && y && x->nbytes == y->nbytes && x->ndim == y->ndim && !memcmp(x->shape, y->shape, 8 * (size_t)x->ndim) &&
                  !memcmp(x->data, y->data, x->nbytes),
              "%s: %s differs", name, names[t]);
    }
    const StTensor *e = st_find(so, "prompt_embeds"), *r = st_find(sr, "prompt_embeds");
    CHECK(e && r && e->numel == r->numel && e->ndim == 3 && r->ndim == 3 && e->shape[1] == r->shape[1], "%s: embeds shape", name);
    if (e && r && e->numel == r->numel) {
        const float *ev = e->data, *rv = r->data;
        double mx = 0, md = 0;
        for (uint64_t i = 0; i < r->numel; i++) {
            double d = fabs((double)ev[i] - rv[i]);
            if (fabs(rv[i]) > mx) mx = fabs(rv[i]);
            if (d > md) md = d;
        }
        double rel = md / (mx > 0 ? mx : 1);
        if (rel > worst_rel) worst_rel = rel;
        if (md > worst_abs) worst_abs = md;
        printf("  %-11s embeds [%llu, %llu, %llu]  max|diff| %.3g  max|ref| %.3g  rel %.3g  %s\n", name,
               (unsigned long long)r->shape[0], (unsigned long long)r->shape[1], (unsigned long long)r->shape[2], md, mx, rel,
               rel <= EMB_TOL ? "OK" : "NOT OK");
        CHECK(rel <= EMB_TOL, "%s: prompt_embeds rel %.3g", name, rel);
    }
done:
    st_close(&so);
    st_close(&sr);
    unlink(out);
    rmdir(tmp);
}

static void test_golden_cases(void) {
    for (int i = 0; i < NCASES; i++) check_case(CASES[i]);
    printf("  worst over the cases: max|diff| %.3g, rel %.3g (tolerance %.0e)\n", worst_abs, worst_rel, EMB_TOL);
}

/* image tensors of one case -> samples */
typedef struct {
    SafeTensors *st;
    QwenVLMode mode;
    int n;
    QwenVLSample s[8];
    QwenVLImage im[8][8];
} CaseIn;

static int case_load(const char *name, CaseIn *c) {
    char in[1024];
    case_path(in, sizeof in, name, "in");
    memset(c, 0, sizeof *c);
    if (st_open(err, in, &c->st)) return -1;
    if (qwenvl_mode_parse(st_metadata(c->st, "train_mode"), &c->mode)) return -1;
    for (c->n = 0; c->n < 8; c->n++) {
        char key[32];
        snprintf(key, sizeof key, "prompt.%d", c->n);
        const char *p = st_metadata(c->st, key);
        if (!p) break;
        c->s[c->n].text = p;
        c->s[c->n].images = c->im[c->n];
        for (int k = 0; k < 8; k++) {
            snprintf(key, sizeof key, "image.%d.%d", c->n, k);
            const StTensor *t = st_find(c->st, key);
            if (!t) break;
            c->im[c->n][k] = (QwenVLImage){t->data, (int)t->shape[0], (int)t->shape[1]};
            c->s[c->n].nimages = k + 1;
        }
    }
    return 0;
}

/* the processor rows (smart_resize + Pillow bicubic + normalisation) and grids */
static void test_processor_rows(void) {
    QwenVLConfig cfg;
    Tokenizer *tok = NULL;
    char td[1100];
    CHECK_RC(qwenvl_config_load(err, model_dir, &cfg), err);
    snprintf(td, sizeof td, "%s/tokenizer", model_dir);
    CHECK_RC(tok_create(err, td, &tok), err);
    if (!tok) return;
    int nrows = 0;
    for (int ci = 0; ci < NCASES; ci++) {
        CaseIn c;
        char ref[1024];
        if (case_load(CASES[ci], &c)) { CHECK(0, "load %s", CASES[ci]); continue; }
        case_path(ref, sizeof ref, CASES[ci], "out");
        SafeTensors *sr = NULL;
        CHECK_RC(st_open(err, ref, &sr), err);
        const StTensor *rs = sr ? st_find(sr, "pixel_values_rowsum") : NULL, *g = sr ? st_find(sr, "image_grid_thw") : NULL;
        size_t row = 0, img = 0;
        double md = 0;
        int grid_ok = 1;
        for (int i = 0; i < c.n; i++) {
            QwenVLPrep p;
            CHECK_RC(qwenvl_prepare(err, &cfg, tok, c.mode, &c.s[i], &p), err);
            for (int k = 0; k < p.nimages && g; k++, img++) {
                int64_t gv[3];
                memcpy(gv, (const char *)g->data + 24 * img, 24);
                grid_ok &= gv[0] == 1 && gv[1] == p.gh[k] && gv[2] == p.gw[k];
            }
            for (int r = 0; r < p.np && rs; r++, row++) {
                double s = 0;
                for (int k = 0; k < 1176; k++) s += p.rows[(size_t)r * 1176 + k];
                float rv;
                memcpy(&rv, (const char *)rs->data + 4 * row, 4);
                if (fabs(s - rv) > md) md = fabs(s - rv);
            }
            qwenvl_prep_free(&p);
        }
        if (rs) {
            CHECK(row == rs->numel, "%s: %zu rows vs %llu", CASES[ci], row, (unsigned long long)rs->numel);
            CHECK(md <= 2e-3, "%s: processor row sums differ by %.3g", CASES[ci], md);
            CHECK(grid_ok, "%s: image_grid_thw differs", CASES[ci]);
            nrows += (int)row;
        }
        st_close(&sr);
        st_close(&c.st);
    }
    printf("  %d processor rows checked\n", nrows);
    tok_destroy(&tok);
}

/* one sample alone == the same sample packed with others (no padding, per-row key ranges) */
static void test_batch_invariance(void) {
    OpCtx ctx;
    QwenVL *m = NULL;
    CHECK_RC(opctx_init(err, &ctx, "cpu"), err);
    CHECK_RC(qwenvl_create(err, model_dir, &ctx, &m), err);
    if (!m) return;
    CaseIn a, b;
    CHECK(case_load("plus_b2", &a) == 0 && case_load("plus_3img", &b) == 0);
    QwenVLPrep p[3];
    CHECK_RC(qwenvl_prepare(err, qwenvl_config(m), qwenvl_tokenizer(m), a.mode, &a.s[0], &p[0]), err);
    CHECK_RC(qwenvl_prepare(err, qwenvl_config(m), qwenvl_tokenizer(m), b.mode, &b.s[0], &p[1]), err);
    CHECK_RC(qwenvl_prepare(err, qwenvl_config(m), qwenvl_tokenizer(m), a.mode, &a.s[1], &p[2]), err);
    float *all[3], *one[1];
    int la[3], l1[1];
    CHECK_RC(qwenvl_encode(err, m, p, 3, all, la), err);
    CHECK_RC(qwenvl_encode(err, m, &p[1], 1, one, l1), err);
    int D = qwenvl_config(m)->hidden;
    CHECK(la[1] == l1[0] && !memcmp(all[1], one[0], (size_t)l1[0] * D * sizeof(float)), "packed vs alone");
    for (int i = 0; i < 3; i++) { free(all[i]); qwenvl_prep_free(&p[i]); }
    free(one[0]);
    st_close(&a.st);
    st_close(&b.st);
    qwenvl_destroy(&m);
    CHECK(m == NULL);
    opctx_free(&ctx);
}

static void test_bad_input(void) {
    QwenVLConfig cfg;
    Tokenizer *tok = NULL;
    char td[1100];
    CHECK_RC(qwenvl_config_load(err, model_dir, &cfg), err);
    snprintf(td, sizeof td, "%s/tokenizer", model_dir);
    CHECK_RC(tok_create(err, td, &tok), err);
    if (!tok) return;
    static uint8_t px[112 * 112 * 3];
    QwenVLImage ok = {px, 112, 112}, thin = {px, 1, 300}, empty = {px, 0, 10}, two[2] = {{px, 112, 112}, {px, 56, 56}};
    QwenVLPrep p;
    struct { QwenVLMode mode; const char *text; int n; const QwenVLImage *im; const char *what; } bad[] = {
        {QWENVL_EDIT_PLUS, "bad \xff utf8", 1, &ok, "invalid UTF-8"},
        {QWENVL_EDIT_PLUS, "sneaky <|image_pad|> token", 1, &ok, "vision token in the text"},
        {QWENVL_EDIT, "two images for v1", 2, two, "v1 with two images"},
        {QWENVL_EDIT, "no image for v1", 0, NULL, "v1 without an image"},
        {QWENVL_EDIT_PLUS, "thin", 1, &thin, "aspect ratio over 200"},
        {QWENVL_EDIT_PLUS, "empty", 1, &empty, "an empty image"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        QwenVLSample s = {bad[i].text, bad[i].n, bad[i].im};
        err[0] = 0;
        int rc = qwenvl_prepare(err, &cfg, tok, bad[i].mode, &s, &p);
        CHECK(rc == QIE_EINVAL && err[0] && !strchr(err, '\n'), "%s: rc %d err '%s'", bad[i].what, rc, err);
        CHECK(p.ids == NULL && p.rows == NULL);
    }
    /* longer than max_position_embeddings (2048 in te-tiny) */
    size_t n = 6000;
    char *longtxt = malloc(n + 1);
    for (size_t i = 0; i < n; i++) longtxt[i] = "a 1!"[i % 4];
    longtxt[n] = 0;
    QwenVLSample s = {longtxt, 1, &ok};
    int rc = qwenvl_prepare(err, &cfg, tok, QWENVL_EDIT_PLUS, &s, &p);
    CHECK(rc == QIE_EINVAL && strstr(err, "max_position_embeddings"), "too long: rc %d '%s'", rc, err);
    free(longtxt);
    /* the empty prompt is fine (caption dropout) */
    QwenVLSample e = {"", 1, &ok};
    CHECK_RC(qwenvl_prepare(err, &cfg, tok, QWENVL_EDIT_PLUS, &e, &p), err);
    qwenvl_prep_free(&p);
    tok_destroy(&tok);
}

static void test_smart_resize(void) {
    int hb, wb;
    CHECK(qwenvl_smart_resize(384, 384, 28, 3136, 12845056, &hb, &wb) == 0 && hb == 392 && wb == 392);
    CHECK(qwenvl_smart_resize(1024, 1024, 28, 3136, 12845056, &hb, &wb) == 0 && hb == 1036 && wb == 1036);
    CHECK(qwenvl_smart_resize(320, 448, 28, 3136, 12845056, &hb, &wb) == 0 && hb == 308 && wb == 448);
    CHECK(qwenvl_smart_resize(10, 10, 28, 3136, 12845056, &hb, &wb) == 0 && hb == 56 && wb == 56);
    CHECK(qwenvl_smart_resize(42, 70, 28, 3136, 12845056, &hb, &wb) == 0 && hb == 56 && wb == 56, "%d %d", hb, wb); /* 1.5 -> 2, 2.5 -> 2 */
    CHECK(qwenvl_smart_resize(8000, 8000, 28, 3136, 12845056, &hb, &wb) == 0 && hb == 3584 && wb == 3584);
    CHECK(qwenvl_smart_resize(1, 201, 28, 3136, 12845056, &hb, &wb) == QIE_EINVAL);
    CHECK(qwenvl_smart_resize(0, 5, 28, 3136, 12845056, &hb, &wb) == QIE_EINVAL);
}

int main(void) {
    snprintf(model_dir, sizeof model_dir, "%s/text/model", test_golden_dir());
    TEST_RUN(test_smart_resize);
    TEST_RUN(test_processor_rows);
    TEST_RUN(test_golden_cases);
    TEST_RUN(test_batch_invariance);
    TEST_RUN(test_bad_input);
    return TEST_DONE();
}
