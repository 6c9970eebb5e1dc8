/* test_text_stage.c: qie-encode-text's loop (stages/encode-text) on records built from the golden
 * cases (scripts/golden/text.py): each record carries a case's prompt and its images as qie-decode
 * writes them (source_cond.k for Plus, source_pixels.0 for v1). The stage's bf16 prompt_embeds
 * must equal the diffusers fp32 reference rounded to bf16, within one bf16 step of the reference's
 * magnitude (|e - r| <= 2^-8 · |r| + 1e-4 · max|r|); prompt_embeds_empty likewise against the
 * pipeline's "" prompt with the same images. Bad records (empty text, a missing or malformed
 * condition image, a disagreeing train_mode attr) are rejected and counted, the others come out
 * in input order. */
#include "cache_names.h"
#include "encode-text/encode_text.h"
#include "endpoint.h"
#include "err.h"
#include "ops.h"
#include "qwenvl.h"
#include "safetensors.h"
#include "testlib.h"

#include <unistd.h>

static char err[QIE_ERR_LEN];

typedef struct {
    SafeTensors *in, *out;
} Case;

static int case_open(const char *name, Case *c) {
    char p[1024];
    memset(c, 0, sizeof *c);
    snprintf(p, sizeof p, "%s/text/case_%s.in.safetensors", test_golden_dir(), name);
    if (st_open(err, p, &c->in)) return -1;
    snprintf(p, sizeof p, "%s/text/case_%s.out.safetensors", test_golden_dir(), name);
    return st_open(err, p, &c->out);
}

/* record of sample i of a case; `text` overrides the prompt when not NULL */
static void make_record(Record *r, const Case *c, int i, const char *id, const char *text, int plus) {
    rec_init(r);
    rec_set_id(r, id);
    char key[64];
    snprintf(key, sizeof key, "prompt.%d", i);
    rec_set_text(r, text ? text : st_metadata(c->in, key));
    rec_set_attr_str(r, "train_mode", plus ? "qwen_image_edit_plus" : "qwen_image_edit");
    for (int k = 0;; k++) {
        snprintf(key, sizeof key, "image.%d.%d", i, k);
        const StTensor *t = st_find(c->in, key);
        if (!t) break;
        rec_add_source(r, "src.png");
        char name[64];
        cache_name_k(name, sizeof name, plus ? CACHE_T_SOURCE_COND : CACHE_T_SOURCE_PIXELS, k);
        int64_t shape[3] = {(int64_t)t->shape[0], (int64_t)t->shape[1], 3};
        rec_set_tensor(err, r, name, QIE_DT_U8, 3, shape, t->data, 1);
    }
}

/* bf16 [L, D] record tensor vs row i of the golden f32 [B, Lmax, D] */
static void compare(const Record *r, const char *tname, const char *attr, const Case *c, int i, const char *what) {
    const RecTensor *t = rec_tensor(r, tname);
    const RecAttr *a = rec_attr(r, attr);
    const StTensor *g = st_find(c->out, "prompt_embeds"), *mk = st_find(c->out, "prompt_embeds_mask");
    CHECK(t && a && g && mk, "%s: %s / %s present", what, tname, attr);
    if (!t || !a || !g || !mk) return;
    int64_t L = 0, Lm = (int64_t)g->shape[1], D = (int64_t)g->shape[2];
    for (int64_t k = 0; k < Lm; k++) {
        int64_t v;
        memcpy(&v, (const char *)mk->data + 8 * (i * Lm + k), 8);
        L += v;
    }
    CHECK(t->dtype == QIE_DT_BF16 && t->ndim == 2 && t->shape[0] == L && t->shape[1] == D && a->i == L,
          "%s: shape [%lld, %lld] len %lld, want [%lld, %lld]", what, (long long)t->shape[0], (long long)t->shape[1],
          (long long)a->i, (long long)L, (long long)D);
    if (t->shape[0] != L || t->shape[1] != D) return;
    const float *ref = (const float *)g->data + (size_t)i * Lm * D;
    double mx = 0, worst = 0;
    for (int64_t k = 0; k < L * D; k++) mx = fmax(mx, fabs(ref[k]));
    int bad = 0;
    for (int64_t k = 0; k < L * D; k++) {
        uint16_t h;
        memcpy(&h, (const char *)t->data + 2 * k, 2);
        double d = fabs((double)bf16_to_f32(h) - ref[k]), tol = fabs(ref[k]) / 256.0 + 1e-4 * mx;
        if (d > tol) bad++;
        worst = fmax(worst, d / (fabs(ref[k]) + 1e-4 * mx));
    }
    printf("  %-26s [%lld, %lld] bf16 vs golden: worst |d|/(|r|+1e-4·max) %.3g, %d beyond one bf16 step\n", what,
           (long long)L, (long long)D, worst, bad);
    CHECK(bad == 0, "%s: %d values beyond tolerance", what, bad);
}

static void run_stage(const char *model, Record *recs, int n, QwenVLMode mode, double drop, Record *outr, int *nout,
                      TextEncStats *st) {
    char tmp[512], pin[600], pout[600];
    test_tmpdir(tmp, sizeof tmp);
    snprintf(pin, sizeof pin, "%s/in.qie", tmp);
    snprintf(pout, sizeof pout, "%s/out.qie", tmp);
    Endpoint *w = NULL;
    CHECK_RC(ep_open(err, pin, EP_WRITE, &w), err);
    for (int i = 0; i < n && w; i++) CHECK_RC(ep_write_record(err, w, &recs[i]), err);
    if (w) CHECK_RC(ep_finish(err, w, 1, NULL), err);
    ep_close(&w);
    OpCtx ctx;
    QwenVL *m = NULL;
    CHECK_RC(opctx_init(err, &ctx, "cpu"), err);
    CHECK_RC(qwenvl_create(err, model, &ctx, &m), err);
    Endpoint *in = NULL, *out = NULL;
    CHECK_RC(ep_open(err, pin, EP_READ, &in), err);
    CHECK_RC(ep_open(err, pout, EP_WRITE, &out), err);
    /* a small token budget and window: several forwards and windows */
    TextEncOptions o = {mode, drop, 400, 3, 0, 2, NULL};
    memset(st, 0, sizeof *st);
    if (m && in && out) CHECK_RC(te_run(err, &o, m, in, out, st), err);
    if (out) CHECK_RC(ep_finish(err, out, 1, NULL), err);
    ep_close(&out);
    ep_close(&in);
    qwenvl_destroy(&m);
    opctx_free(&ctx);
    Endpoint *rd = NULL;
    *nout = 0;
    CHECK_RC(ep_open(err, pout, EP_READ, &rd), err);
    for (;;) {
        Record r;
        rec_init(&r);
        int rc = rd ? ep_read_record(err, rd, &r) : QIE_EEOF;
        if (rc) {
            CHECK(rc == QIE_EEOF, "%s", err);
            rec_free(&r);
            break;
        }
        /* copy out of the endpoint's buffer */
        rec_init(&outr[*nout]);
        rec_set_id(&outr[*nout], r.id);
        CHECK_RC(rec_merge(err, &outr[*nout], &r), err);
        (*nout)++;
        rec_free(&r);
    }
    ep_close(&rd);
    unlink(pin);
    unlink(pout);
    rmdir(tmp);
}

static void test_plus_stream(void) {
    char model[1024];
    snprintf(model, sizeof model, "%s/text/model", test_golden_dir());
    Case c1, c3, cb, ce;
    CHECK(case_open("plus_1img", &c1) == 0 && case_open("plus_3img", &c3) == 0 && case_open("plus_b2", &cb) == 0 &&
          case_open("plus_empty", &ce) == 0, "%s", err);
    Record recs[8], outr[8];
    int n = 0;
    make_record(&recs[n++], &c1, 0, "r0", NULL, 1);
    make_record(&recs[n++], &c1, 0, "bad-empty-text", "", 1);
    make_record(&recs[n++], &c3, 0, "r2", NULL, 1);
    make_record(&recs[n], &c3, 0, "bad-missing-cond", NULL, 1);
    rec_remove_tensor(&recs[n++], "source_cond.1");
    make_record(&recs[n++], &cb, 1, "r4", NULL, 1);
    make_record(&recs[n], &c1, 0, "bad-mode", NULL, 1);
    rec_set_attr_str(&recs[n++], "train_mode", "qwen_image_edit");
    make_record(&recs[n++], &ce, 0, "r6", "anything", 1); /* its empty prompt = the plus_empty golden */
    int nout = 0;
    TextEncStats st;
    run_stage(model, recs, n, QWENVL_EDIT_PLUS, 0.1, outr, &nout, &st);
    CHECK(st.records_in == 7 && st.rejected == 3 && st.records_out == 4 && nout == 4, "in %llu rejected %llu out %llu",
          (unsigned long long)st.records_in, (unsigned long long)st.rejected, (unsigned long long)st.records_out);
    CHECK(st.forwards >= 2, "forwards %llu", (unsigned long long)st.forwards);
    if (nout == 4) {
        CHECK(!strcmp(outr[0].id, "r0") && !strcmp(outr[1].id, "r2") && !strcmp(outr[2].id, "r4") && !strcmp(outr[3].id, "r6"),
              "order");
        compare(&outr[0], CACHE_T_PROMPT_EMBEDS, "prompt_len", &c1, 0, "plus_1img");
        compare(&outr[1], CACHE_T_PROMPT_EMBEDS, "prompt_len", &c3, 0, "plus_3img");
        compare(&outr[2], CACHE_T_PROMPT_EMBEDS, "prompt_len", &cb, 1, "plus_b2[1]");
        compare(&outr[3], CACHE_T_PROMPT_EMBEDS_EMPTY, "prompt_empty_len", &ce, 0, "plus_empty (empty prompt)");
        CHECK(rec_tensor(&outr[0], CACHE_T_PROMPT_EMBEDS_EMPTY) && !rec_tensor(&outr[0], "source_cond.0"),
              "empty embeds added, source_cond dropped");
    }
    for (int i = 0; i < n; i++) rec_free(&recs[i]);
    for (int i = 0; i < nout; i++) rec_free(&outr[i]);
    Case *cs[] = {&c1, &c3, &cb, &ce};
    for (int i = 0; i < 4; i++) { st_close(&cs[i]->in); st_close(&cs[i]->out); }
}

static void test_edit_stream(void) {
    char model[1024];
    snprintf(model, sizeof model, "%s/text/model", test_golden_dir());
    Case c;
    CHECK(case_open("edit_b2", &c) == 0, "%s", err);
    Record recs[3], outr[3];
    make_record(&recs[0], &c, 0, "e0", NULL, 0);
    make_record(&recs[1], &c, 1, "e1", NULL, 0);
    make_record(&recs[2], &c, 1, "bad-two-sources", NULL, 0);
    rec_add_source(&recs[2], "second.png");
    int nout = 0;
    TextEncStats st;
    run_stage(model, recs, 3, QWENVL_EDIT, 0.0, outr, &nout, &st);
    CHECK(nout == 2 && st.rejected == 1, "out %d rejected %llu", nout, (unsigned long long)st.rejected);
    if (nout == 2) {
        compare(&outr[0], CACHE_T_PROMPT_EMBEDS, "prompt_len", &c, 0, "edit_b2[0]");
        compare(&outr[1], CACHE_T_PROMPT_EMBEDS, "prompt_len", &c, 1, "edit_b2[1]");
        CHECK(!rec_tensor(&outr[0], CACHE_T_PROMPT_EMBEDS_EMPTY) && rec_tensor(&outr[0], "source_pixels.0"),
              "no empty embeds at ratio 0; source_pixels kept for the VAE");
    }
    for (int i = 0; i < 3; i++) rec_free(&recs[i]);
    for (int i = 0; i < nout; i++) rec_free(&outr[i]);
    st_close(&c.in);
    st_close(&c.out);
}

int main(void) {
    TEST_RUN(test_plus_stream);
    TEST_RUN(test_edit_stream);
    return TEST_DONE();
}
