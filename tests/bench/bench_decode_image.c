/* bench_decode_image.c: per-core speed of the decode stage's pixel core (not a test).
 *
 *   target: JPEG decode (image.c) -> u8 to CHW f32 / 255 -> torch-style bilinear-aa resize
 *   source: JPEG decode -> Pillow LANCZOS resize (u8)
 * One thread, best-of-N mean over `iters` runs after a warm-up; the file is read once (page
 * cache effects out). Built and run by scripts/bench_decode_image.sh next to the Python
 * reference (PIL + torch, one thread).
 *
 * usage: bench_decode_image TARGET.jpg TW TH SOURCE.jpg SW SH [iters] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "decode/image.h"
#include "decode/resample.h"
#include "err.h"

static double now_(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
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

typedef enum { ONLY_DECODE, TARGET, SOURCE } Kind;

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
    printf("C   %-44s %7.2f ms  %7.1f images/s/core\n", label, best * 1e3, 1.0 / best);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s TARGET.jpg TW TH SOURCE.jpg SW SH [iters]\n", argv[0]);
        return 2;
    }
    int tw = atoi(argv[2]), th = atoi(argv[3]), sw = atoi(argv[5]), sh = atoi(argv[6]);
    int iters = argc > 7 ? atoi(argv[7]) : 30;
    char l1[128], l2[128], l3[128];
    snprintf(l1, sizeof l1, "target decode only");
    snprintf(l2, sizeof l2, "target decode + f32 bilinear-aa -> %dx%d", tw, th);
    snprintf(l3, sizeof l3, "source decode + LANCZOS u8 -> %dx%d", sw, sh);
    int bad = bench_(l1, ONLY_DECODE, argv[1], 0, 0, iters);
    bad |= bench_(l2, TARGET, argv[1], tw, th, iters);
    bad |= bench_(l3, SOURCE, argv[4], sw, sh, iters);
    return bad;
}
