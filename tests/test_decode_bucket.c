/* test_decode_bucket.c: qie-decode's size arithmetic against scripts/golden/decode_buckets.py,
 * which runs VideoX-Fun's own expressions. Every number must match exactly. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "decode/bucket.h"
#include "err.h"
#include "testlib.h"

static cJSON *load_json_(const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/decode/buckets/%s", test_golden_dir(), name);
    FILE *f = fopen(path, "rb");
    if (!f) { fprintf(stderr, "cannot open %s\n", path); return NULL; }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) { fclose(f); free(buf); return NULL; }
    fclose(f);
    buf[n] = 0;
    cJSON *j = cJSON_ParseWithLength(buf, (size_t)n);
    free(buf);
    return j;
}

static double num_(const cJSON *row, int i) { return cJSON_GetArrayItem(row, i)->valuedouble; }

static void test_targets(void) {
    cJSON *j = load_json_("targets.json");
    CHECK(j != NULL, "targets.json");
    if (!j) return;
    int rows = 0, bad = 0;
    char err[QIE_ERR_LEN];
    cJSON *row;
    cJSON_ArrayForEach(row, j) {
        int64_t h = (int64_t)num_(row, 0), w = (int64_t)num_(row, 1);
        int S = (int)num_(row, 2);
        double d = num_(row, 3);
        TargetPlan p;
        int rc = bucket_target_plan(err, h, w, S, d, 1, &p);
        int ok = rc == 0 && p.bucket_h == (int)num_(row, 4) && p.bucket_w == (int)num_(row, 5) &&
                 p.resize_h == (int64_t)num_(row, 6) && p.resize_w == (int64_t)num_(row, 7) &&
                 p.crop_top == (int64_t)num_(row, 8) && p.crop_left == (int64_t)num_(row, 9);
        if (!ok && bad++ < 10) {
            char *s = cJSON_PrintUnformatted(row);
            fprintf(stderr, "target row %s: got rc=%d bucket %dx%d resize %lldx%lld crop %lld,%lld\n",
                    s, rc, p.bucket_h, p.bucket_w, (long long)p.resize_h, (long long)p.resize_w,
                    (long long)p.crop_top, (long long)p.crop_left);
            free(s);
        }
        rows++;
    }
    CHECK(rows > 1000, "rows=%d", rows);
    CHECK(bad == 0, "%d of %d target rows differ", bad, rows);
    cJSON_Delete(j);
}

static void test_sources(void) {
    cJSON *j = load_json_("sources.json");
    CHECK(j != NULL, "sources.json");
    if (!j) return;
    int rows = 0, bad = 0;
    cJSON *row;
    cJSON_ArrayForEach(row, j) {
        int64_t W = (int64_t)num_(row, 0), H = (int64_t)num_(row, 1);
        int v1w, v1h;
        int64_t vw, vh, cw, ch;
        bucket_v1_source_size(W, H, &v1w, &v1h);
        bucket_calc_dims(BUCKET_VAE_AREA, W, H, &vw, &vh);
        bucket_calc_dims(BUCKET_COND_AREA, W, H, &cw, &ch);
        int ok = v1w == (int)num_(row, 2) && v1h == (int)num_(row, 3) &&
                 vw == (int64_t)num_(row, 4) && vh == (int64_t)num_(row, 5) &&
                 cw == (int64_t)num_(row, 6) && ch == (int64_t)num_(row, 7);
        if (!ok && bad++ < 10) {
            char *s = cJSON_PrintUnformatted(row);
            fprintf(stderr, "source row %s: got v1 %dx%d vae %lldx%lld cond %lldx%lld\n", s, v1w,
                    v1h, (long long)vw, (long long)vh, (long long)cw, (long long)ch);
            free(s);
        }
        rows++;
    }
    CHECK(rows >= 300, "rows=%d", rows);
    CHECK(bad == 0, "%d of %d source rows differ", bad, rows);
    cJSON_Delete(j);
}

static void test_hw_choice(void) {
    cJSON *j = load_json_("hw_choice.json");
    CHECK(j != NULL, "hw_choice.json");
    if (!j) return;
    int rows = 0, bad = 0;
    cJSON *row;
    cJSON_ArrayForEach(row, j) {
        int S = (int)num_(row, 0);
        double u = num_(row, 1), want = num_(row, 2);
        double got = bucket_hw_pick(S, u);
        if (got != want && bad++ < 10)
            fprintf(stderr, "hw choice S=%d u=%.17g: got %g want %g\n", S, u, got, want);
        if (!bucket_hw_valid(S, got)) bad++;
        rows++;
    }
    CHECK(rows > 200, "rows=%d", rows);
    CHECK(bad == 0, "%d of %d choice rows differ", bad, rows);
    cJSON_Delete(j);
}

/* the table of trainer_behaviour.md §3.3 */
static void test_hw_table(void) {
    double d[BUCKET_MAX_HW_CHOICES], p[BUCKET_MAX_HW_CHOICES];
    CHECK(bucket_hw_choices(511, d, p) == 1 && d[0] == 1 && p[0] == 1);
    CHECK(bucket_hw_choices(767, d, p) == 1);
    CHECK(bucket_hw_choices(768, d, p) == 3 && d[2] == 1.5 && p[1] == p[2]);
    CHECK(bucket_hw_choices(1328, d, p) == 4 && d[3] == 2.0 && p[0] == 0.9);
    CHECK(bucket_hw_choices(1536, d, p) == 6 && d[5] == 3.0);
    CHECK(bucket_hw_valid(1328, 1.25) && !bucket_hw_valid(1328, 2.5) && !bucket_hw_valid(512, 1.25));
    /* §3.3 example: S = 1328, key 1.0 -> 1328, 1056, 880, 656 */
    static const int want[4] = {1328, 1056, 880, 656};
    for (int i = 0; i < 4; i++) {
        TargetPlan tp;
        char err[QIE_ERR_LEN];
        CHECK_RC(bucket_target_plan(err, 1000, 1000, 1328, d[i], 1, &tp), err);
        CHECK(tp.bucket_h == want[i] && tp.bucket_w == want[i], "d=%g -> %d", d[i], tp.bucket_h);
    }
}

/* without --enable_bucket: key 1.0 for any aspect ratio (cover + centre crop to a square) */
static void test_no_bucket(void) {
    TargetPlan tp;
    char err[QIE_ERR_LEN];
    CHECK_RC(bucket_target_plan(err, 300, 1200, 512, 1.0, 0, &tp), err);
    CHECK(tp.key_index == -1 && tp.bucket_h == 512 && tp.bucket_w == 512);
    CHECK(tp.resize_h == 512 && tp.resize_w == 2048 && tp.crop_top == 0 && tp.crop_left == 768);
    CHECK_RC(bucket_target_plan(err, 1000, 1000, 1024, 1.5, 0, &tp), err);
    CHECK(tp.bucket_h == 672 && tp.bucket_w == 672, "%d", tp.bucket_h);
    /* bad arguments */
    CHECK(bucket_target_plan(err, 0, 10, 512, 1.0, 1, &tp) == QIE_EINVAL);
    CHECK(bucket_target_plan(err, 10, 10, 512, 0.5, 1, &tp) == QIE_EINVAL);
    CHECK(bucket_target_plan(err, 10, 10, 8, 1.0, 1, &tp) == QIE_EINVAL); /* empty bucket */
}

/* round half to even in the crop offset (data_pipeline.md §4.4: 3.5 -> 4, 4.5 -> 4) */
static void test_crop_rounding(void) {
    TargetPlan tp;
    char err[QIE_ERR_LEN];
    /* S=512 key 1.0 -> 512x512; an image 512 x 519 resizes to 512 x 519, offset 3.5 -> 4 */
    CHECK_RC(bucket_target_plan(err, 512, 519, 512, 1.0, 0, &tp), err);
    CHECK(tp.resize_w == 519 && tp.crop_left == 4, "%lld %lld", (long long)tp.resize_w,
          (long long)tp.crop_left);
    CHECK_RC(bucket_target_plan(err, 512, 521, 512, 1.0, 0, &tp), err);
    CHECK(tp.resize_w == 521 && tp.crop_left == 4, "%lld", (long long)tp.crop_left);
}

int main(void) {
    TEST_RUN(test_targets);
    TEST_RUN(test_sources);
    TEST_RUN(test_hw_choice);
    TEST_RUN(test_hw_table);
    TEST_RUN(test_no_bucket);
    TEST_RUN(test_crop_rounding);
    return TEST_DONE();
}
