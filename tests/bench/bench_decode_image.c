/* bench_decode_image.c: per-core speed of the decode stage's pixel core (not a test).
 *
 *   target: JPEG decode (image.c) -> u8 to CHW f32 / 255 -> torch-style bilinear-aa resize;
 *           and qie-decode's fused path (resample_target_bf16: the same resize, then
 *           normalise and bf16, no full-size float intermediates)
 *   source: JPEG decode -> Pillow LANCZOS resize (u8)
 * One thread, best-of-3 mean CPU time over `iters` runs after a warm-up (CPU time, so that
 * other jobs on a shared machine do not count); the file is read once (page
 * cache effects out). Built and run by scripts/bench_decode_image.sh next to the Python
 * reference (PIL + torch, one thread).
 *
 * usage: bench_decode_image TARGET.jpg TW TH SOURCE.jpg SW SH [iters]
 * BENCH_PORTABLE=1 in the environment: the portable resize loops instead of the AVX2 ones
 * (resample_set_simd(0)), to compare both in one run.
 * usage: bench_decode_image --check [N]: AVX2 vs portable loops on N random resizes (same bytes). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "decode/image.h"
#include "decode/resample.h"
#include "err.h"

static double now_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts); /* CPU time: the machine is shared */
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static unsigned char *slurp_(const char *p, size_t *n) {
    FILE *f = fopen(p, "rb");
    if (!f) return NULL;
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); return NULL; }
    long sz = ftell(f);
    if (sz <= 0 || fseek(f, 0, SEEK_SET) != 0) { fclose(f); return NULL; }
    unsigned char *b = malloc((size_t)sz);
    if (b && fread(b, 1, (size_t)sz, f) != (size_t)sz) { free(b); b = NULL; }
    fclose(f);
    *n = (size_t)sz;
    return b;
}

typedef enum { ONLY_DECODE, TARGET, TARGET_BF16, SOURCE } Kind;

/* One pass of `kind` on the encoded buffer; returns 0 or an error code. */
static int run_(char *err, Kind kind, const unsigned char *buf, size_t n, const char *name,
                int dw, int dh) {
    Image im;
    int rc = img_decode_mem(err, buf, n, name, NULL, &im);
    if (rc) return rc;
    if (kind == TARGET) {
        float *x = malloc(sizeof(float) * (size_t)im.w * im.h * 3);
        float *y = malloc(sizeof(float) * (size_t)dw * dh * 3);
        if (!x || !y) rc = QIE_ENOMEM;
        if (!rc) {
            resample_u8_to_chw_f32(im.px, im.w, im.h, x);
            rc = resample_bilinear_aa_f32(err, x, im.w, im.h, y, dw, dh);
        }
        free(x);
        free(y);
    } else if (kind == TARGET_BF16) { /* qie-decode's target path: fused, crop-free bucket */
        uint16_t *y = malloc(sizeof(uint16_t) * (size_t)dw * dh * 3);
        rc = y ? resample_target_bf16(err, im.px, im.w, im.h, dw, dh, 0, 0, dw, dh, y) : QIE_ENOMEM;
        free(y);
    } else if (kind == SOURCE) {
        unsigned char *y = malloc((size_t)dw * dh * 3);
        rc = y ? resample_lanczos_u8(err, im.px, im.w, im.h, y, dw, dh) : QIE_ENOMEM;
        free(y);
    }
    img_free(&im);
    return rc;
}

static int bench_(const char *label, Kind kind, const char *path, int dw, int dh, int iters) {
    char err[QIE_ERR_LEN] = "";
    size_t n = 0;
    unsigned char *buf = slurp_(path, &n);
    if (!buf) { fprintf(stderr, "cannot read %s\n", path); return 1; }
    int rc = run_(err, kind, buf, n, path, dw, dh); /* warm-up */
    double best = 1e30;
    for (int rep = 0; rep < 3 && !rc; rep++) {
        double t0 = now_();
        for (int i = 0; i < iters && !rc; i++) rc = run_(err, kind, buf, n, path, dw, dh);
        double dt = (now_() - t0) / iters;
        if (dt < best) best = dt;
    }
    free(buf);
    if (rc) { fprintf(stderr, "%s: %s\n", label, err); return 1; }
    const char *pe = getenv("BENCH_PORTABLE");
    printf("C%s  %-44s %7.2f ms  %7.1f images/s/core\n", pe && *pe && strcmp(pe, "0") ? "p" : " ",
           label, best * 1e3, 1.0 / best);
    return 0;
}

/* --check [N]: the AVX2 loops against the portable ones (resample_set_simd) on N random
 * sizes, crops and images: every byte must agree. Prints the count; exit 1 on a difference. */
static uint32_t rs_ = 12345;
static int rnd_(void) { return (int)((rs_ = rs_ * 1664525u + 1013904223u) >> 8); }

static int check_(int iters) {
    char err[QIE_ERR_LEN] = "";
    int bad = 0, simd = resample_set_simd(1);
    for (int it = 0; it < iters && !bad; it++) {
        int m = it % 10 == 0 ? 1400 : 90;
        int sw = 1 + rnd_() % m, sh = 1 + rnd_() % m, dw = 1 + rnd_() % m, dh = 1 + rnd_() % m;
        if (it % 7 == 0) dw = sw;
        if (it % 11 == 0) dh = sh;
        int bw = it % 3 ? 1 + rnd_() % dw : dw, bh = it % 3 ? 1 + rnd_() % dh : dh;
        int cl = rnd_() % (dw - bw + 1), ct = rnd_() % (dh - bh + 1);
        size_t ns = (size_t)sw * sh * 3, nd = (size_t)dw * dh * 3, nb = (size_t)bw * bh * 3;
        uint8_t *src = malloc(ns), *a = malloc(nd), *b = malloc(nd);
        uint16_t *ta = malloc(nb * 2), *tb = malloc(nb * 2);
        float *fs = malloc(ns * 4), *fa = malloc(nd * 4), *fb = malloc(nd * 4);
        if (!src || !a || !b || !ta || !tb || !fs || !fa || !fb) { bad = 1; goto next; }
        int mode = rnd_() % 3;
        for (size_t i = 0; i < ns; i++)
            src[i] = (uint8_t)(mode == 0 ? rnd_() & 255 : mode == 1 ? ((rnd_() & 1) ? 255 : 0) : (int)(i * 7 / 3 % 256));
        resample_u8_to_chw_f32(src, sw, sh, fs);
        for (int pass = 0; pass < 2; pass++) {
            resample_set_simd(pass);
            if (resample_lanczos_u8(err, src, sw, sh, pass ? b : a, dw, dh) ||
                resample_bilinear_aa_f32(err, fs, sw, sh, pass ? fb : fa, dw, dh) ||
                resample_target_bf16(err, src, sw, sh, dw, dh, cl, ct, bw, bh, pass ? tb : ta)) {
                fprintf(stderr, "check: %s\n", err);
                bad = 1;
                goto next;
            }
        }
        if (memcmp(a, b, nd) || memcmp(fa, fb, nd * 4) || memcmp(ta, tb, nb * 2)) {
            fprintf(stderr, "check: AVX2 and portable loops differ: %dx%d -> %dx%d (crop %dx%d at %d,%d)\n",
                    sw, sh, dw, dh, bw, bh, cl, ct);
            bad = 1;
        }
    next:
        free(src), free(a), free(b), free(ta), free(tb), free(fs), free(fa), free(fb);
    }
    resample_set_simd(1);
    printf("check: %d random resizes, AVX2 loops %s, %s\n", iters, simd ? "on" : "not available",
           bad ? "DIFFERENCES" : "same bytes as the portable loops");
    return bad;
}

int main(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "--check")) return check_(argc > 2 ? atoi(argv[2]) : 300);
    if (argc < 7) {
        fprintf(stderr, "usage: %s TARGET.jpg TW TH SOURCE.jpg SW SH [iters]\n", argv[0]);
        return 2;
    }
    int tw = atoi(argv[2]), th = atoi(argv[3]), sw = atoi(argv[5]), sh = atoi(argv[6]);
    int iters = argc > 7 ? atoi(argv[7]) : 30;
    const char *pe = getenv("BENCH_PORTABLE");
    if (pe && *pe && strcmp(pe, "0") != 0) resample_set_simd(0);
    char l1[128], l2[128], l3[128], l4[128];
    snprintf(l1, sizeof l1, "target decode only");
    snprintf(l2, sizeof l2, "target decode + f32 bilinear-aa -> %dx%d", tw, th);
    snprintf(l3, sizeof l3, "source decode + LANCZOS u8 -> %dx%d", sw, sh);
    snprintf(l4, sizeof l4, "  same + normalise + bf16 (fused, qie's path)");
    int bad = bench_(l1, ONLY_DECODE, argv[1], 0, 0, iters);
    bad |= bench_(l2, TARGET, argv[1], tw, th, iters);
    bad |= bench_(l4, TARGET_BF16, argv[1], tw, th, iters);
    bad |= bench_(l3, SOURCE, argv[4], sw, sh, iters);
    return bad;
}
