/* test_record: the record codec (round trip, alignment, zero-copy, merge, bad input) and the
 * bf16/f16 conversions it carries. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dtype.h"
#include "err.h"
#include "record.h"
#include "testlib.h"

static char err[QIE_ERR_LEN];

static void make_record_(Record *r, float *x, size_t nx) {
    rec_init(r);
    rec_set_id(r, "sample-0001");
    r->index = 7;
    rec_set_text(r, "make the sky purple, 请");
    rec_set_type(r, "image");
    r->bucket[0] = 1024;
    r->bucket[1] = 768;
    rec_set_target(r, "train/0001.jpg");
    rec_add_source(r, "src/0001a.jpg");
    rec_add_source(r, "src/0001b.png");
    rec_set_attr_int(r, "orig_w", 1999);
    rec_set_attr_float(r, "ratio", 0.75);
    rec_set_attr_str(r, "train_mode", "qwen_image_edit_plus");
    for (size_t i = 0; i < nx; i++) x[i] = (float)i * 0.5f - 3.0f;
    int64_t s1[3] = {3, 5, (int64_t)(nx / 15)};
    rec_set_tensor(err, r, "latents", QIE_DT_F32, 3, s1, x, 1);
    uint16_t h[6] = {1, 2, 3, 4, 5, 6};
    int64_t s2[2] = {2, 3};
    rec_set_tensor(err, r, "emb", QIE_DT_BF16, 2, s2, h, 1);
    uint8_t u[7] = {9, 8, 7, 6, 5, 4, 3};
    int64_t s3[1] = {7};
    rec_set_tensor(err, r, "pix", QIE_DT_U8, 1, s3, u, 1);
    int64_t s0[2] = {0, 4};
    rec_set_tensor(err, r, "empty", QIE_DT_I64, 2, s0, NULL, 1);
}

static void test_round_trip(void) {
    float x[60];
    Record r, d;
    make_record_(&r, x, 60);
    void *buf;
    size_t len;
    CHECK_RC(rec_encode(err, &r, &buf, &len), err);
    /* decode from a 64-byte aligned copy: payloads must be borrowed, not copied */
    void *al = NULL;
    CHECK(posix_memalign(&al, 64, len) == 0);
    memcpy(al, buf, len);
    rec_init(&d);
    CHECK_RC(rec_decode(err, &d, al, len), err);
    CHECK(!strcmp(d.id, "sample-0001"));
    CHECK(d.index == 7 && d.bucket[0] == 1024 && d.bucket[1] == 768);
    CHECK(!strcmp(d.text, r.text) && !strcmp(d.type, "image") && !strcmp(d.target, "train/0001.jpg"));
    CHECK(d.nsources == 2 && !strcmp(d.sources[1], "src/0001b.png"));
    const RecAttr *a = rec_attr(&d, "orig_w");
    CHECK(a && a->type == REC_ATTR_INT && a->i == 1999);
    a = rec_attr(&d, "ratio");
    CHECK(a && a->type == REC_ATTR_FLOAT && a->f == 0.75);
    a = rec_attr(&d, "train_mode");
    CHECK(a && a->type == REC_ATTR_STR && !strcmp(a->s, "qwen_image_edit_plus"));
    const RecTensor *t = rec_tensor(&d, "latents");
    CHECK(t && t->dtype == QIE_DT_F32 && t->ndim == 3 && t->shape[2] == 4 && t->nbytes == 240);
    CHECK(t && !memcmp(t->data, x, 240));
    CHECK(t && (uintptr_t)t->data % QIE_REC_ALIGN == 0, "payload not 64-byte aligned");
    CHECK(t && (const char *)t->data > (const char *)al && (const char *)t->data < (const char *)al + len, "payload was copied");
    t = rec_tensor(&d, "empty");
    CHECK(t && t->nbytes == 0 && t->shape[0] == 0 && t->shape[1] == 4);
    t = rec_tensor(&d, "pix");
    CHECK(t && t->nbytes == 7 && ((const uint8_t *)t->data)[6] == 3);
    /* re-encoding the decoded record gives the same bytes */
    void *buf2;
    size_t len2;
    CHECK_RC(rec_encode(err, &d, &buf2, &len2), err);
    CHECK(len2 == len && !memcmp(buf, buf2, len));
    /* decoding at an odd address copies misaligned payloads instead of borrowing them */
    char *odd = malloc(len + 1);
    memcpy(odd + 1, buf, len);
    Record o;
    rec_init(&o);
    CHECK_RC(rec_decode(err, &o, odd + 1, len), err);
    t = rec_tensor(&o, "latents");
    CHECK(t && (uintptr_t)t->data % 4 == 0 && !memcmp(t->data, x, 240));
    rec_free(&o);
    free(odd);
    free(buf2);
    free(buf);
    free(al);
    rec_free(&d);
    rec_free(&r);
}

static void test_bad_input(void) {
    float x[60];
    Record r, d;
    make_record_(&r, x, 60);
    void *buf;
    size_t len;
    CHECK_RC(rec_encode(err, &r, &buf, &len), err);
    rec_init(&d);
    /* every truncation is an error, never a crash */
    int all_failed = 1;
    for (size_t cut = 0; cut < len; cut += (cut < 64 ? 1 : 7))
        if (rec_decode(err, &d, buf, cut) == 0) all_failed = 0;
    CHECK(all_failed, "a truncated record decoded");
    CHECK(rec_decode(err, &d, buf, len - 1) == QIE_EFORMAT);
    CHECK(strstr(err, "truncated") != NULL, "%s", err);
    /* trailing garbage */
    char *big = malloc(len + 3);
    memcpy(big, buf, len);
    memset(big + len, 0xc0, 3);
    CHECK(rec_decode(err, &d, big, len + 3) == QIE_EFORMAT);
    free(big);
    /* a newer schema version is refused as such */
    Record v2;
    make_record_(&v2, x, 60);
    v2.v = 2;
    void *b2;
    size_t l2;
    CHECK_RC(rec_encode(err, &v2, &b2, &l2), err);
    CHECK(rec_decode(err, &d, b2, l2) == QIE_EVERSION);
    CHECK(strstr(err, "version 2") != NULL, "%s", err);
    free(b2);
    rec_free(&v2);
    /* hand-made msgpack: not a map; a map without v; unknown key; wrong payload size */
    const unsigned char not_map[] = {0x93, 1, 2, 3};
    CHECK(rec_decode(err, &d, not_map, sizeof not_map) == QIE_EFORMAT);
    const unsigned char no_v[] = {0x81, 0xa2, 'i', 'd', 0xa1, 'x'};
    CHECK(rec_decode(err, &d, no_v, sizeof no_v) == QIE_EFORMAT);
    const unsigned char unknown[] = {0x83, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0xa1, 'x', 0xa3, 'z', 'z', 'z', 0x01};
    CHECK(rec_decode(err, &d, unknown, sizeof unknown) == QIE_EFORMAT);
    CHECK(strstr(err, "zzz") != NULL, "%s", err);
    const unsigned char ok_min[] = {0x82, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0xa1, 'x'};
    CHECK_RC(rec_decode(err, &d, ok_min, sizeof ok_min), err);
    /* tensor {dtype f32, shape [2], data: 4 bytes} -> size mismatch */
    const unsigned char badsz[] = {0x83, 0xa1, 'v', 0x01, 0xa2, 'i', 'd', 0xa1, 'x', 0xa7, 't', 'e', 'n', 's', 'o', 'r', 's',
                                   0x81, 0xa1, 't', 0x83, 0xa5, 'd', 't', 'y', 'p', 'e', 0xa3, 'f', '3', '2',
                                   0xa5, 's', 'h', 'a', 'p', 'e', 0x91, 0x02, 0xa4, 'd', 'a', 't', 'a', 0xc4, 0x04, 0, 0, 0, 0};
    CHECK(rec_decode(err, &d, badsz, sizeof badsz) == QIE_EFORMAT);
    CHECK(strstr(err, "do not match") != NULL, "%s", err);
    /* same with a valid size decodes */
    unsigned char good[sizeof badsz + 16];
    memcpy(good, badsz, sizeof badsz - 6);
    const unsigned char tail[] = {0xc4, 0x08, 0, 0, 0x80, 0x3f, 0, 0, 0, 0x40};
    memcpy(good + sizeof badsz - 6, tail, sizeof tail);
    CHECK_RC(rec_decode(err, &d, good, sizeof badsz - 6 + sizeof tail), err);
    CHECK(d.ntensors == 1 && ((const float *)d.tensors[0].data)[0] == 1.0f);
    /* unknown dtype */
    unsigned char bad_dt[sizeof badsz + 16];
    memcpy(bad_dt, good, sizeof badsz - 6 + sizeof tail);
    bad_dt[28] = 'x';
    CHECK(rec_decode(err, &d, bad_dt, sizeof badsz - 6 + sizeof tail) == QIE_EFORMAT);
    rec_free(&d);
    free(buf);
    rec_free(&r);
}

static void test_merge(void) {
    Record a, b;
    rec_init(&a);
    rec_init(&b);
    rec_set_id(&a, "s1");
    rec_set_id(&b, "s1");
    a.bucket[0] = 64;
    a.bucket[1] = 32;
    float m[4] = {1, 2, 3, 4}, e[2] = {5, 6};
    int64_t s4[1] = {4}, s2[1] = {2};
    rec_set_tensor(err, &a, "target_mean", QIE_DT_F32, 1, s4, m, 0);
    rec_set_tensor(err, &b, "prompt_embeds", QIE_DT_F32, 1, s2, e, 0);
    rec_set_attr_int(&b, "prompt_len", 2);
    CHECK_RC(rec_merge(err, &a, &b), err);
    CHECK(a.ntensors == 2 && rec_tensor(&a, "prompt_embeds") && rec_attr(&a, "prompt_len"));
    CHECK(a.bucket[0] == 64);
    /* the merged payload is a copy: b can go away */
    rec_free(&b);
    CHECK(((const float *)rec_tensor(&a, "prompt_embeds")->data)[1] == 6.0f);
    rec_init(&b);
    rec_set_id(&b, "other");
    CHECK(rec_merge(err, &a, &b) == QIE_EMISMATCH);
    CHECK(rec_remove_tensor(&a, "target_mean") == 0 && a.ntensors == 1);
    CHECK(rec_remove_tensor(&a, "nope") == QIE_ENOTFOUND);
    char line[256];
    rec_summary(&a, line, sizeof line);
    CHECK(strstr(line, "prompt_embeds:f32[2]") != NULL, "%s", line);
    rec_free(&a);
    rec_free(&b);
}

/* Reference values computed with torch: torch.tensor(x).to(torch.bfloat16 / torch.float16). */
static void test_half_conversions(void) {
    struct { float f; uint16_t bf, h; } cases[] = {
        {1.0f, 0x3f80, 0x3c00},
        {-2.5f, 0xc020, 0xc100},
        {1.00390625f, 0x3f80, 0x3c04},        /* 1 + 2^-8: bf16 tie -> even (down) */
        {1.01171875f, 0x3f82, 0x3c0c},        /* 1 + 3*2^-8: bf16 tie -> even (up) */
        {65504.0f, 0x4780, 0x7bff},
        {65520.0f, 0x4780, 0x7c00},           /* f16 overflow to inf */
        {5.9604645e-08f, 0x3380, 0x0001},     /* smallest f16 subnormal */
        {2.9802322e-08f, 0x3300, 0x0000},     /* half of it: tie to even -> 0 */
        {1e-3f, 0x3a83, 0x1419},
        {3.14159265f, 0x4049, 0x4248},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        CHECK(f32_to_bf16(cases[i].f) == cases[i].bf, "bf16(%g) = %04x, want %04x", cases[i].f, f32_to_bf16(cases[i].f), cases[i].bf);
        CHECK(f32_to_f16(cases[i].f) == cases[i].h, "f16(%g) = %04x, want %04x", cases[i].f, f32_to_f16(cases[i].f), cases[i].h);
    }
    /* every finite f16 survives f16 -> f32 -> f16, and every bf16 survives bf16 -> f32 -> bf16 */
    int bad_h = 0, bad_b = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        uint16_t v = (uint16_t)h;
        if ((v & 0x7c00) == 0x7c00 && (v & 0x3ff)) continue; /* NaN payloads are not preserved */
        if (f32_to_f16(f16_to_f32(v)) != v) bad_h++;
        if ((v & 0x7f80) == 0x7f80 && (v & 0x7f)) continue;
        if (f32_to_bf16(bf16_to_f32(v)) != v) bad_b++;
    }
    CHECK(bad_h == 0, "%d f16 values do not round-trip", bad_h);
    CHECK(bad_b == 0, "%d bf16 values do not round-trip", bad_b);
    CHECK(f32_to_bf16(bf16_to_f32(0x7fc0)) == 0x7fc0);
    float nan = NAN;
    CHECK((f32_to_bf16(nan) & 0x7f80) == 0x7f80 && (f32_to_bf16(nan) & 0x7f));
    CHECK(f32_to_f16(-0.0f) == 0x8000);
    QieDtype dt;
    CHECK(dtype_parse("bf16", 4, &dt) == 0 && dt == QIE_DT_BF16 && dtype_size(dt) == 2);
    CHECK(dtype_parse("f3", 2, &dt) == QIE_EINVAL);
}

int main(void) {
    TEST_RUN(test_round_trip);
    TEST_RUN(test_bad_input);
    TEST_RUN(test_merge);
    TEST_RUN(test_half_conversions);
    return TEST_DONE();
}
