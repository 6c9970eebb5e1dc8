/* test_vae_stage: qie-encode-vae's logic (stages/encode-vae/encode_vae.c) in process, with the
 * golden vae-tiny model on the CPU and small synthetic records:
 *   - enc_image_pixels: the u8 source path of data_pipeline.md §1.3, bf16/f32 [3,H,W], and its
 *     rejections (layout, sides not multiples of 8, NaN/Inf);
 *   - enc_run over file endpoints: good records get target_/source_ mean and logvar equal to a
 *     direct vae_encode of the same pixels, pixels dropped, cfg.vae_hash set, input order kept;
 *     bad records (no pixels, odd size, NaN, a missing source, garbage bytes) are counted and
 *     left out; --vae_mini_batch 1 and 3 give the same bytes; keep_pixels and f32 output.
 * `test_vae_stage --gen FILE` writes the same synthetic stream (4 good records, 5 bad) for
 * tests/t_encode_vae.sh and exits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache_names.h"
#include "encode-vae/encode_vae.h"
#include "endpoint.h"
#include "err.h"
#include "ops.h"
#include "rng.h"
#include "testlib.h"
#include "vae.h"

static char err[QIE_ERR_LEN];

#define NGOOD 4
#define NBAD 5

static void px_bf16_(Record *r, const char *name, int H, int W, uint64_t seed) {
    int64_t shape[3] = {3, H, W};
    void *d = NULL;
    rec_new_tensor(err, r, name, QIE_DT_BF16, 3, shape, &d);
    float *tmp = malloc(sizeof(float) * 3 * H * W);
    rng_uniform_cpu(tmp, (size_t)3 * H * W, seed, 1, 0);
    for (int i = 0; i < 3 * H * W; i++) ((uint16_t *)d)[i] = f32_to_bf16(2 * tmp[i] - 1);
    free(tmp);
}

static void px_u8_(Record *r, const char *name, int H, int W, uint64_t seed) {
    int64_t shape[3] = {H, W, 3};
    void *d = NULL;
    rec_new_tensor(err, r, name, QIE_DT_U8, 3, shape, &d);
    for (int i = 0; i < 3 * H * W; i++) ((uint8_t *)d)[i] = (uint8_t)(rng_u32_at(seed, 2, (uint64_t)i) & 0xff);
}

/* record i of the synthetic stream; *good says whether the stage must accept it */
static void make_record_(int i, Record *r, int *good) {
    char id[32];
    rec_init(r);
    snprintf(id, sizeof id, "rec-%d", i);
    rec_set_id(r, id);
    rec_set_text(r, "a caption");
    rec_set_type(r, "image");
    r->index = i;
    *good = 1;
    switch (i) {
    case 0: /* target + one u8 source */
        rec_add_source(r, "s0.png");
        px_bf16_(r, "target_pixels", 16, 24, 10);
        px_u8_(r, "source_pixels.0", 24, 16, 11);
        break;
    case 1: /* no pixels at all */
        rec_add_source(r, "s0.png");
        *good = 0;
        break;
    case 2: /* two sources of different sizes, one the size of record 0's target */
        rec_add_source(r, "s0.png");
        rec_add_source(r, "s1.png");
        px_bf16_(r, "target_pixels", 24, 16, 20);
        px_u8_(r, "source_pixels.0", 16, 24, 21);
        px_u8_(r, "source_pixels.1", 8, 8, 22);
        break;
    case 3: /* a side that is not a multiple of 8 */
        px_bf16_(r, "target_pixels", 20, 16, 30);
        *good = 0;
        break;
    case 4: /* NaN in the target */
        px_bf16_(r, "target_pixels", 16, 16, 40);
        ((uint16_t *)rec_tensor(r, "target_pixels")->data)[77] = 0x7fc0;
        *good = 0;
        break;
    case 5: /* target only */
        px_bf16_(r, "target_pixels", 16, 24, 50);
        break;
    case 6: /* says two sources, carries one */
        rec_add_source(r, "s0.png");
        rec_add_source(r, "s1.png");
        px_bf16_(r, "target_pixels", 16, 24, 60);
        px_u8_(r, "source_pixels.0", 16, 24, 61);
        *good = 0;
        break;
    case 7: /* a source in the wrong layout: u8 [3, H, W] */
        rec_add_source(r, "s0.png");
        px_bf16_(r, "target_pixels", 16, 24, 70);
        {
            int64_t shape[3] = {3, 16, 24};
            void *d = NULL;
            rec_new_tensor(err, r, "source_pixels.0", QIE_DT_U8, 3, shape, &d);
        }
        *good = 0;
        break;
    default: /* 8: target + source + the VL image, which the stage keeps */
        rec_add_source(r, "s0.png");
        px_bf16_(r, "target_pixels", 8, 16, 80);
        px_u8_(r, "source_pixels.0", 16, 8, 81);
        px_u8_(r, "source_cond.0", 14, 14, 82);
        break;
    }
}

#define NREC (NGOOD + NBAD)

static int write_stream_(const char *path) {
    Endpoint *out = NULL;
    int rc = ep_open(err, path, EP_WRITE, &out);
    for (int i = 0; !rc && i < NREC; i++) {
        Record r;
        int good;
        make_record_(i, &r, &good);
        rc = ep_write_record(err, out, &r);
        rec_free(&r);
        if (!rc && i == 3) rc = ep_write(err, out, "\x81\xa1v\x07", 4); /* garbage: version 7 */
    }
    if (!rc) rc = ep_finish(err, out, 1, NULL);
    ep_close(&out);
    return rc;
}

static void test_pixels(void) {
    Record r;
    rec_init(&r);
    px_u8_(&r, "source_pixels.0", 8, 16, 1);
    const RecTensor *t = rec_tensor(&r, "source_pixels.0");
    float *px = NULL;
    int H = 0, W = 0;
    CHECK_RC(enc_image_pixels(err, t, 8, &px, &H, &W), err);
    CHECK(H == 8 && W == 16);
    int ok = 1;
    const uint8_t *u = t->data;
    for (int y = 0; px && y < 8; y++)
        for (int x = 0; x < 16; x++)
            for (int c = 0; c < 3; c++) {
                /* §1.3 written out: v = bf16(u/255); v2 = bf16(v - 0.5); v3 = 2·v2 */
                float v = bf16_to_f32(f32_to_bf16(u[(y * 16 + x) * 3 + c] / 255.0f));
                float v3 = 2 * bf16_to_f32(f32_to_bf16(v - 0.5f));
                ok &= px[(c * 8 + y) * 16 + x] == v3;
            }
    CHECK(ok, "u8 HWC -> the reference's bf16 CHW values");
    free(px);
    /* the end points: 0 -> -1, 255 -> 1 exactly; 128 -> 2·bf16(bf16(128/255) - 0.5) */
    ((uint8_t *)t->data)[0] = 0;
    ((uint8_t *)t->data)[1] = 255;
    CHECK_RC(enc_image_pixels(err, t, 8, &px, &H, &W), err);
    CHECK(px && px[0] == -1.0f && px[8 * 16] == 1.0f, "0 -> -1, 255 -> 1");
    free(px);
    px_bf16_(&r, "target_pixels", 16, 8, 2);
    t = rec_tensor(&r, "target_pixels");
    CHECK_RC(enc_image_pixels(err, t, 8, &px, &H, &W), err);
    CHECK(px && H == 16 && W == 8 && px[5] == bf16_to_f32(((const uint16_t *)t->data)[5]), "bf16 passthrough");
    free(px);
    px_bf16_(&r, "odd", 16, 12, 3);
    CHECK(enc_image_pixels(err, rec_tensor(&r, "odd"), 8, &px, &H, &W) == QIE_EFORMAT, "12 wide");
    printf("  odd: %s\n", err);
    px_bf16_(&r, "inf", 8, 8, 4);
    ((uint16_t *)rec_tensor(&r, "inf")->data)[3] = 0x7f80;
    CHECK(enc_image_pixels(err, rec_tensor(&r, "inf"), 8, &px, &H, &W) == QIE_EFORMAT, "Inf");
    printf("  inf: %s\n", err);
    int64_t shape[2] = {8, 8};
    void *d;
    rec_new_tensor(err, &r, "flat", QIE_DT_F32, 2, shape, &d);
    CHECK(enc_image_pixels(err, rec_tensor(&r, "flat"), 8, &px, &H, &W) == QIE_EFORMAT, "2-D");
    printf("  flat: %s\n", err);
    rec_free(&r);
}

/* direct encode of one record image, for comparison */
static void direct_(VaeModel *m, const RecTensor *t, float **mean, float **lv, int *n) {
    float *px = NULL;
    int H, W;
    CHECK_RC(enc_image_pixels(err, t, 8, &px, &H, &W), err);
    *n = 16 * (H / 8) * (W / 8);
    *mean = malloc(sizeof(float) * *n);
    *lv = malloc(sizeof(float) * *n);
    CHECK_RC(vae_encode(err, m, px, 1, H, W, *mean, *lv), err);
    free(px);
}

static int run_(VaeModel *m, const char *in_path, const char *out_path, int mb, int keep, QieDtype dt, EncStats *st) {
    Endpoint *in = NULL, *out = NULL;
    EncOptions o = {mb, keep, dt, NULL};
    memset(st, 0, sizeof *st);
    int rc = ep_open(err, in_path, EP_READ, &in);
    if (!rc) rc = ep_open(err, out_path, EP_WRITE, &out);
    if (!rc) rc = enc_run(err, &o, m, in, out, st);
    if (!rc) rc = ep_finish(err, out, 1, NULL);
    ep_close(&out);
    ep_close(&in);
    return rc;
}

static void test_run(void) {
    char tmp[256], in_path[300], out1[300], out3[300], outk[300], dir[512];
    test_tmpdir(tmp, sizeof tmp);
    snprintf(in_path, sizeof in_path, "%s/in.qie", tmp);
    snprintf(out1, sizeof out1, "%s/out1.qie", tmp);
    snprintf(out3, sizeof out3, "%s/out3.qie", tmp);
    snprintf(outk, sizeof outk, "%s/outk.qie", tmp);
    snprintf(dir, sizeof dir, "%s/vae/model", test_golden_dir());
    CHECK_RC(write_stream_(in_path), err);
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    VaeModel *m = NULL;
    CHECK_RC(vae_load(err, &c, dir, &m), err);
    if (!m) return;
    EncStats st;
    CHECK_RC(run_(m, in_path, out3, 3, 0, QIE_DT_BF16, &st), err);
    printf("  mini_batch 3: %llu in, %llu out, %llu rejected, %llu images\n", (unsigned long long)st.records_in,
           (unsigned long long)st.records_out, (unsigned long long)st.rejected, (unsigned long long)st.images);
    CHECK(st.records_in == NREC + 1 && st.records_out == NGOOD && st.rejected == NBAD + 1 && st.images == 8);
    CHECK_RC(run_(m, in_path, out1, 1, 0, QIE_DT_BF16, &st), err);
    CHECK(st.records_out == NGOOD && st.rejected == NBAD + 1);
    CHECK_RC(run_(m, in_path, outk, 2, 1, QIE_DT_F32, &st), err);

    Endpoint *a = NULL, *b = NULL, *k = NULL;
    CHECK_RC(ep_open(err, out3, EP_READ, &a), err);
    CHECK_RC(ep_open(err, out1, EP_READ, &b), err);
    CHECK_RC(ep_open(err, outk, EP_READ, &k), err);
    const int expect_idx[NGOOD] = {0, 2, 5, 8};
    Record ra, rb, rk, src;
    rec_init(&ra);
    rec_init(&rb);
    rec_init(&rk);
    for (int i = 0; a && b && k && i < NGOOD; i++) {
        CHECK_RC(ep_read_record(err, a, &ra), err);
        CHECK_RC(ep_read_record(err, b, &rb), err);
        CHECK_RC(ep_read_record(err, k, &rk), err);
        int good;
        make_record_(expect_idx[i], &src, &good);
        CHECK(ra.index == expect_idx[i], "order: %lld", (long long)ra.index);
        CHECK(!rec_tensor(&ra, "target_pixels") && !rec_tensor(&ra, "source_pixels.0"), "pixels dropped");
        CHECK(rec_tensor(&rk, "target_pixels") != NULL, "keep_pixels");
        if (expect_idx[i] == 8) CHECK(rec_tensor(&ra, "source_cond.0") != NULL, "source_cond kept");
        const RecAttr *h = rec_attr(&ra, "cfg.vae_hash");
        CHECK(h && h->type == REC_ATTR_STR && !strcmp(h->s, vae_weights_hash(m)), "cfg.vae_hash");
        char pn[64], mn[64], ln[64];
        for (int s = -1; s < src.nsources; s++) {
            if (s < 0) {
                snprintf(pn, sizeof pn, "%s", CACHE_T_TARGET_PIXELS);
                snprintf(mn, sizeof mn, "%s", CACHE_T_TARGET_MEAN);
                snprintf(ln, sizeof ln, "%s", CACHE_T_TARGET_LOGVAR);
            } else {
                cache_name_k(pn, sizeof pn, CACHE_T_SOURCE_PIXELS, s);
                cache_name_k(mn, sizeof mn, CACHE_T_SOURCE_MEAN, s);
                cache_name_k(ln, sizeof ln, CACHE_T_SOURCE_LOGVAR, s);
            }
            const RecTensor *ma = rec_tensor(&ra, mn), *la = rec_tensor(&ra, ln), *mb = rec_tensor(&rb, mn);
            const RecTensor *mk = rec_tensor(&rk, mn), *lk = rec_tensor(&rk, ln);
            CHECK(ma && la && mb && mk && lk, "%s: %s/%s present", ra.id, mn, ln);
            if (!ma || !la || !mb || !mk || !lk) continue;
            const RecTensor *p = rec_tensor(&src, pn);
            CHECK(ma->dtype == QIE_DT_BF16 && mk->dtype == QIE_DT_F32 && ma->ndim == 4 && ma->shape[0] == 16 &&
                      ma->shape[1] == 1, "%s dtype/shape", mn);
            CHECK(ma->nbytes == mb->nbytes && !memcmp(ma->data, mb->data, ma->nbytes), "%s: mini_batch 1 == 3", mn);
            float *dm, *dl;
            int n;
            direct_(m, p, &dm, &dl, &n);
            CHECK((int64_t)n == rec_numel(4, ma->shape), "%s size", mn);
            CHECK(!memcmp(mk->data, dm, sizeof(float) * n) && !memcmp(lk->data, dl, sizeof(float) * n),
                  "%s: f32 output == direct vae_encode", mn);
            int same = 1;
            for (int e = 0; e < n; e++)
                same &= ((const uint16_t *)ma->data)[e] == f32_to_bf16(dm[e]) &&
                        ((const uint16_t *)la->data)[e] == f32_to_bf16(dl[e]);
            CHECK(same, "%s: bf16 output == bf16(direct)", mn);
            free(dm);
            free(dl);
        }
        rec_free(&src);
    }
    CHECK(ep_read_record(err, a, &ra) == QIE_EEOF, "no more records");
    rec_free(&ra);
    rec_free(&rb);
    rec_free(&rk);
    ep_close(&a);
    ep_close(&b);
    ep_close(&k);
    vae_destroy(&m);
    opctx_free(&c);
    unlink(in_path);
    unlink(out1);
    unlink(out3);
    unlink(outk);
    rmdir(tmp);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "--gen")) {
        if (write_stream_(argv[2])) {
            fprintf(stderr, "test_vae_stage --gen: %s\n", err);
            return 1;
        }
        printf("%d records (%d good) and one undecodable\n", NREC, NGOOD);
        return 0;
    }
    TEST_RUN(test_pixels);
    TEST_RUN(test_run);
    return TEST_DONE();
}
