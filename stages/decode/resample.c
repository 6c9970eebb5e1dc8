/* resample.c: Pillow LANCZOS (u8, bit-exact) and torch antialiased bilinear (f32) resizers.
 *
 * One coefficient generator (coeffs_make_) with Pillow's geometry, run either in double as
 * Pillow's Resample.c precompute_coeffs does or in float32 with the promotions of torch's
 * UpSampleKernel.cpp _compute_indices_min_size_weights_aa<float> (their xmin/xsize can differ
 * in the last bit of a rounding, and torch's weights are float sums). Two apply loops:
 *
 *   u8  : acc = 2^21 + sum(px * k), k = round(w * 2^22) (half away from zero); out = clip(acc>>22)
 *         Horizontal pass first, over only the source rows the vertical pass reads, into an
 *         8-bit intermediate (Pillow ImagingResampleInner). Integer sums: any order is exact.
 *   f32 : out = px0 * w0, then the other taps in order (torch interpolate_aa_single_dim, with
 *         the rounding of its x86 builds: see taps_f32_). Width first, then height, no
 *         intermediate rounding. The vectorised loops keep that order per output element:
 *         lanes run across outputs, never across taps.
 *
 * Speed: the horizontal passes transpose a block of 8 rows so the taps of one output column
 * become contiguous 8-row (x3 channel) vectors; the vertical passes run across a row in fixed
 * 32-element chunks. Fixed trip counts let gcc -O2 (very-cheap vectoriser) vectorise them; on
 * x86-64 the hot loops are also built for AVX2 (target_clones, picked at load time), which gives
 * 8-wide int32 multiplies that SSE2 lacks. */
#include "resample.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"

#define PRECISION_BITS (32 - 8 - 2) /* Pillow: 8 bits result, 2 for overshoot, int32 */
#define HROWS 8                     /* rows per transposed block in horizontal passes */
#define VCHUNK 32                   /* elements per chunk in vertical passes */
#define MAX_SIDE (1 << 24)          /* keeps every index product in range */

/* x86-64-v3 = AVX2 + FMA: 8-wide int32 multiplies, and fmaf as one instruction (elsewhere it
 * is a libm call: correct, slower). Off under ASan, whose start-up and ifunc resolvers mix
 * badly. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__)
#define HOT __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HOT
#endif

typedef enum { FILTER_LANCZOS, FILTER_TRIANGLE } Filter;

typedef struct {
    int n;        /* output size */
    int ksize;    /* coefficient stride per output */
    int *xmin;    /* (n) first input index */
    int *xcnt;    /* (n) taps */
    int32_t *ki;  /* (n, ksize) fixed point, u8 path; zero past xcnt */
    float *kf;    /* (n, ksize) float32, f32 path; zero past xcnt */
} Coeffs;

/* ---- filters: Pillow Resample.c (double) and torch HelperInterpLinear::aa_filter<float> ---- */

static double sinc_(double x) {
    if (x == 0.0) return 1.0;
    x = x * M_PI;
    return sin(x) / x;
}

static double filter_d_(Filter f, double x) {
    if (f == FILTER_LANCZOS) {
        if (-3.0 <= x && x < 3.0) return sinc_(x) * sinc_(x / 3);
        return 0.0;
    }
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

static float triangle_f_(float x) {
    x = fabsf(x);
    return x < 1.0f ? (float)(1.0 - x) : 0.0f;
}

static void coeffs_free_(Coeffs *c) {
    free(c->xmin);
    free(c->xcnt);
    free(c->ki);
    free(c->kf);
    memset(c, 0, sizeof *c);
}

/* Coefficients for resizing an axis of `in` samples to `out`.
 * torch_f32 = 0: Pillow precompute_coeffs + normalize_coeffs_8bpc (fills ki).
 * torch_f32 = 1: torch _compute_index_ranges_weights for scalar_t = float (fills kf); the casts
 * below are where torch rounds float/double intermediates. */
static int coeffs_make_(char *err, Coeffs *c, int in, int out, Filter f, int torch_f32) {
    memset(c, 0, sizeof *c);
    const double fsupport = f == FILTER_LANCZOS ? 3.0 : 1.0;
    double scale_d = 0, support_d = 0, ss = 0;
    float scale_f = 0, support_f = 0, invscale_f = 0;
    int ksize;
    if (!torch_f32) {
        scale_d = (double)in / out;
        double filterscale = scale_d < 1.0 ? 1.0 : scale_d;
        support_d = fsupport * filterscale;
        ss = 1.0 / filterscale;
        ksize = (int)ceil(support_d) * 2 + 1;
    } else {
        scale_f = (float)in / (float)out;
        support_f = scale_f >= 1.0 ? (float)(fsupport * scale_f) : (float)fsupport;
        invscale_f = scale_f >= 1.0 ? (float)(1.0 / scale_f) : 1.0f;
        ksize = (int)ceil(support_f) * 2 + 1;
    }
    c->n = out;
    c->ksize = ksize;
    c->xmin = malloc(sizeof(int) * (size_t)out);
    c->xcnt = malloc(sizeof(int) * (size_t)out);
    double *kd = calloc((size_t)ksize, sizeof(double));
    if (torch_f32) c->kf = calloc((size_t)out * (size_t)ksize, sizeof(float));
    else c->ki = calloc((size_t)out * (size_t)ksize, sizeof(int32_t));
    if (!c->xmin || !c->xcnt || !kd || (!c->kf && !c->ki)) {
        free(kd);
        coeffs_free_(c);
        qie_seterr(err, "resample: malloc coefficients (%d -> %d, %d taps)", in, out, ksize);
        return QIE_ENOMEM;
    }
    for (int xx = 0; xx < out; xx++) {
        int xmin, xcnt;
        if (!torch_f32) {
            double center = (xx + 0.5) * scale_d;
            xmin = (int)(center - support_d + 0.5);
            if (xmin < 0) xmin = 0;
            int xmax = (int)(center + support_d + 0.5);
            if (xmax > in) xmax = in;
            xcnt = xmax - xmin;
            if (xcnt > ksize) xcnt = ksize; /* cannot happen; keeps the buffer safe */
            double ww = 0.0;
            for (int x = 0; x < xcnt; x++) {
                double w = filter_d_(f, (x + xmin - center + 0.5) * ss);
                kd[x] = w;
                ww += w;
            }
            int32_t *k = c->ki + (size_t)xx * ksize;
            for (int x = 0; x < xcnt; x++) {
                double w = ww != 0.0 ? kd[x] / ww : kd[x];
                k[x] = w < 0 ? (int32_t)(-0.5 + w * (1 << PRECISION_BITS))
                             : (int32_t)(0.5 + w * (1 << PRECISION_BITS));
            }
        } else {
            float center = (float)(scale_f * (xx + 0.5));
            long long lo = (long long)((double)(center - support_f) + 0.5);
            long long hi = (long long)((double)(center + support_f) + 0.5);
            xmin = lo < 0 ? 0 : (int)lo;
            long long cnt = (hi < in ? hi : in) - xmin;
            xcnt = cnt < 0 ? 0 : cnt > ksize ? ksize : (int)cnt;
            float *k = c->kf + (size_t)xx * ksize;
            float total = 0.0f;
            for (int j = 0; j < xcnt; j++) {
                float d = (float)(j + xmin) - center;
                float w = triangle_f_((float)(((double)d + 0.5) * (double)invscale_f));
                k[j] = w;
                total += w;
            }
            if (total != 0.0f)
                for (int j = 0; j < xcnt; j++) k[j] /= total;
        }
        /* every output reads at least one valid tap; weight 0 if the range came out empty */
        if (xcnt < 1) {
            xcnt = 1;
            if (xmin > in - 1) xmin = in - 1;
        }
        c->xmin[xx] = xmin;
        c->xcnt[xx] = xcnt;
    }
    free(kd);
    return 0;
}

static inline uint8_t clip8_(int32_t acc) {
    int32_t v = acc >> PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

/* ---- u8 apply (Pillow ImagingResampleHorizontal_8bpc / Vertical_8bpc, 3 bands) ---- */

/* nrows rows of (sw, 3) u8 starting at src -> (dw, 3) rows at dst.
 * T: scratch (sw + dw, HROWS*3): transposed source block, then transposed results. */
HOT static void hpass_u8_(const uint8_t *src, int sw, int nrows, uint8_t *dst, int dw,
                          const Coeffs *c, int32_t *T) {
    enum { L = HROWS * 3 };
    int32_t *O = T + (size_t)sw * L; /* (dw, L) results, written back row by row */
    for (int y0 = 0; y0 < nrows; y0 += HROWS) {
        int nr = nrows - y0 < HROWS ? nrows - y0 : HROWS;
        const uint8_t *rows[HROWS];
        for (int r = 0; r < HROWS; r++) rows[r] = src + (size_t)(y0 + (r < nr ? r : 0)) * sw * 3;
        /* x outer: each T entry is built from 8 streaming row reads and stored in one go */
        for (int x = 0; x < sw; x++) {
            int32_t *tx = T + (size_t)x * L;
            for (int r = 0; r < HROWS; r++)
                for (int ch = 0; ch < 3; ch++) tx[r * 3 + ch] = rows[r][x * 3 + ch];
        }
        for (int xx = 0; xx < dw; xx++) {
            const int32_t *k = c->ki + (size_t)xx * c->ksize;
            const int32_t *t = T + (size_t)c->xmin[xx] * L;
            int32_t acc[L];
            for (int l = 0; l < L; l++) acc[l] = 1 << (PRECISION_BITS - 1);
            for (int j = 0; j < c->xcnt[xx]; j++) {
                int32_t kj = k[j];
                for (int l = 0; l < L; l++) acc[l] += t[j * L + l] * kj;
            }
            for (int l = 0; l < L; l++) O[(size_t)xx * L + l] = acc[l];
        }
        for (int r = 0; r < nr; r++) {
            uint8_t *d = dst + (size_t)(y0 + r) * dw * 3;
            for (int xx = 0; xx < dw; xx++)
                for (int ch = 0; ch < 3; ch++)
                    d[xx * 3 + ch] = clip8_(O[(size_t)xx * L + r * 3 + ch]);
        }
    }
}

/* Vertical pass for output rows [y0, y1): rows of n u8 elements; src row 0 is source row row0,
 * so output row yy reads src rows xmin[yy] - row0 ... */
HOT static void vpass_u8_(const uint8_t *src, int n, int row0, uint8_t *dst, const Coeffs *c,
                          int y0, int y1) {
    for (int yy = y0; yy < y1; yy++) {
        const int32_t *k = c->ki + (size_t)yy * c->ksize;
        const uint8_t *s0 = src + (size_t)(c->xmin[yy] - row0) * n;
        const int cnt = c->xcnt[yy];
        uint8_t *d = dst + (size_t)yy * n;
        int i0 = 0;
        for (; i0 + VCHUNK <= n; i0 += VCHUNK) {
            int32_t acc[VCHUNK];
            for (int l = 0; l < VCHUNK; l++) acc[l] = 1 << (PRECISION_BITS - 1);
            for (int j = 0; j < cnt; j++) {
                const uint8_t *p = s0 + (size_t)j * n + i0;
                int32_t kj = k[j];
                for (int l = 0; l < VCHUNK; l++) acc[l] += p[l] * kj;
            }
            for (int l = 0; l < VCHUNK; l++) d[i0 + l] = clip8_(acc[l]);
        }
        for (; i0 < n; i0++) {
            int32_t acc = 1 << (PRECISION_BITS - 1);
            for (int j = 0; j < cnt; j++) acc += s0[(size_t)j * n + i0] * k[j];
            d[i0] = clip8_(acc);
        }
    }
}

/* ---- f32 apply (torch basic_loop_aa_horizontal / vertical, interpolate_aa_single_dim) ---- */

/* nrows rows of sw floats (row stride sw) -> rows of dw floats. T: scratch (sw + dw, HROWS). */
/* One output of torch's interpolate_aa_single_dim as its x86 builds compute it (matched bit
 * for bit against torch 2.15 with AVX2 kernels and torch 2.11 with AVX-512 kernels): the first
 * product, then the remaining taps in
 * groups of 4 as separately rounded products added in order (the compiler's 4-wide unrolled
 * body), then the leftover taps as fused multiply-adds (its scalar tail, with `out += t * w`
 * contracted). Plain sequential float math differs from it by ~1 ulp on ~25% of outputs. */
static inline float taps_f32_(const float *s, int stride, const float *k, int cnt) {
    float acc = s[0] * k[0];
    int j = 1;
    for (; j + 4 <= cnt; j += 4)
        for (int q = j; q < j + 4; q++) acc = acc + s[(size_t)q * stride] * k[q];
    for (; j < cnt; j++) acc = __builtin_fmaf(s[(size_t)j * stride], k[j], acc);
    return acc;
}

/* The vectorised loops below apply taps_f32_ to 8 rows / 32 columns at once. */
HOT static void hpass_f32_(const float *src, int sw, int nrows, float *dst, int dw,
                           const Coeffs *c, float *T) {
    float *O = T + (size_t)sw * HROWS; /* (dw, HROWS) results, written back row by row */
    for (int y0 = 0; y0 < nrows; y0 += HROWS) {
        int nr = nrows - y0 < HROWS ? nrows - y0 : HROWS;
        const float *rows[HROWS];
        for (int r = 0; r < HROWS; r++) rows[r] = src + (size_t)(y0 + (r < nr ? r : 0)) * sw;
        for (int x = 0; x < sw; x++)
            for (int r = 0; r < HROWS; r++) T[(size_t)x * HROWS + r] = rows[r][x];
        for (int xx = 0; xx < dw; xx++) {
            const float *k = c->kf + (size_t)xx * c->ksize;
            const float *t = T + (size_t)c->xmin[xx] * HROWS;
            const int cnt = c->xcnt[xx];
            float acc[HROWS];
            for (int l = 0; l < HROWS; l++) acc[l] = t[l] * k[0];
            int j = 1;
            for (; j + 4 <= cnt; j += 4)
                for (int q = j; q < j + 4; q++) {
                    float kq = k[q];
                    for (int l = 0; l < HROWS; l++) acc[l] = acc[l] + t[q * HROWS + l] * kq;
                }
            for (; j < cnt; j++) {
                float kj = k[j];
                for (int l = 0; l < HROWS; l++)
                    acc[l] = __builtin_fmaf(t[j * HROWS + l], kj, acc[l]);
            }
            for (int l = 0; l < HROWS; l++) O[(size_t)xx * HROWS + l] = acc[l];
        }
        for (int r = 0; r < nr; r++) {
            float *d = dst + (size_t)(y0 + r) * dw;
            for (int xx = 0; xx < dw; xx++) d[xx] = O[(size_t)xx * HROWS + r];
        }
    }
}

HOT static void vpass_f32_(const float *src, int n, int row0, float *dst, const Coeffs *c,
                           int y0, int y1) {
    for (int yy = y0; yy < y1; yy++) {
        const float *k = c->kf + (size_t)yy * c->ksize;
        const float *s0 = src + (size_t)(c->xmin[yy] - row0) * n;
        const int cnt = c->xcnt[yy];
        float *d = dst + (size_t)yy * n;
        int i0 = 0;
        for (; i0 + VCHUNK <= n; i0 += VCHUNK) {
            float acc[VCHUNK];
            for (int l = 0; l < VCHUNK; l++) acc[l] = s0[i0 + l] * k[0];
            int j = 1;
            for (; j + 4 <= cnt; j += 4)
                for (int q = j; q < j + 4; q++) {
                    const float *p = s0 + (size_t)q * n + i0;
                    float kq = k[q];
                    for (int l = 0; l < VCHUNK; l++) acc[l] = acc[l] + p[l] * kq;
                }
            for (; j < cnt; j++) {
                const float *p = s0 + (size_t)j * n + i0;
                float kj = k[j];
                for (int l = 0; l < VCHUNK; l++) acc[l] = __builtin_fmaf(p[l], kj, acc[l]);
            }
            for (int l = 0; l < VCHUNK; l++) d[i0 + l] = acc[l];
        }
        for (; i0 < n; i0++) d[i0] = taps_f32_(s0 + i0, n, k, cnt);
    }
}

/* ---- public ---- */

static int check_sizes_(char *err, const char *fn, const void *src, int sw, int sh,
                        const void *dst, int dw, int dh) {
    if (!src || !dst || sw <= 0 || sh <= 0 || dw <= 0 || dh <= 0 || sw > MAX_SIDE ||
        sh > MAX_SIDE || dw > MAX_SIDE || dh > MAX_SIDE ||
        (int64_t)sw * sh > ((int64_t)1 << 31) / 4 || (int64_t)dw * dh > ((int64_t)1 << 31) / 4) {
        qie_seterr(err, "%s: bad sizes %dx%d -> %dx%d (or NULL buffer)", fn, sw, sh, dw, dh);
        return QIE_EINVAL;
    }
    return 0;
}

/* Output rows per band of the banded two-pass resize: about BAND_IN_ROWS source rows each, so
 * the intermediate stays cache-sized (and is never a whole-image allocation) while the rows
 * two bands share, h-passed twice, stay a few percent. */
#define BAND_IN_ROWS 128
static int band_rows_(int sh, int dh) {
    double r = BAND_IN_ROWS * (double)dh / sh;
    return r < 1 ? 1 : r > dh ? dh : (int)r;
}

/* Source rows [*r0, *r1) that output rows [y0, y1) read. */
static void band_src_rows_(const Coeffs *cv, int y0, int y1, int *r0, int *r1) {
    *r0 = cv->xmin[y0];
    *r1 = 0;
    for (int y = y0; y < y1; y++) {
        if (cv->xmin[y] < *r0) *r0 = cv->xmin[y];
        if (cv->xmin[y] + cv->xcnt[y] > *r1) *r1 = cv->xmin[y] + cv->xcnt[y];
    }
}

/* Largest band span, to size the intermediate once. */
static int band_max_rows_(const Coeffs *cv, int band) {
    int m = 0;
    for (int y0 = 0; y0 < cv->n; y0 += band) {
        int r0, r1;
        band_src_rows_(cv, y0, y0 + band < cv->n ? y0 + band : cv->n, &r0, &r1);
        if (r1 - r0 > m) m = r1 - r0;
    }
    return m;
}

/* Pillow's ImagingResampleInner computes the horizontal pass once over the source rows the
 * vertical pass reads; here it runs band by band over the same rows. Each h-passed row is a
 * pure function of its source row, so the bytes are the same. */
int resample_lanczos_u8(char *err, const uint8_t *src, int sw, int sh, uint8_t *dst, int dw,
                        int dh) {
    int rc = check_sizes_(err, "resample_lanczos_u8", src, sw, sh, dst, dw, dh);
    if (rc) return rc;
    int need_h = dw != sw, need_v = dh != sh;
    if (!need_h && !need_v) {
        memcpy(dst, src, (size_t)sw * sh * 3);
        return 0;
    }
    Coeffs cv = {0}, ch = {0};
    uint8_t *tmp = NULL;
    int32_t *T = NULL;
    if (need_v && (rc = coeffs_make_(err, &cv, sh, dh, FILTER_LANCZOS, 0))) goto done;
    if (!need_h) {
        vpass_u8_(src, sw * 3, 0, dst, &cv, 0, dh);
        goto done;
    }
    if ((rc = coeffs_make_(err, &ch, sw, dw, FILTER_LANCZOS, 0))) goto done;
    size_t tn = sizeof(int32_t) * ((size_t)sw + dw) * HROWS * 3;
    T = malloc(tn);
    if (!T) {
        qie_seterr(err, "resample_lanczos_u8: malloc %zu bytes", tn);
        rc = QIE_ENOMEM;
        goto done;
    }
    if (!need_v) {
        /* dh == sh: Pillow's vertical window is every row, and the result is final */
        hpass_u8_(src, sw, sh, dst, dw, &ch, T);
        goto done;
    }
    int band = band_rows_(sh, dh), maxr = band_max_rows_(&cv, band);
    tmp = malloc((size_t)dw * maxr * 3);
    if (!tmp) {
        qie_seterr(err, "resample_lanczos_u8: malloc intermediate %dx%d", dw, maxr);
        rc = QIE_ENOMEM;
        goto done;
    }
    for (int y0 = 0; y0 < dh; y0 += band) {
        int y1 = y0 + band < dh ? y0 + band : dh, r0, r1;
        band_src_rows_(&cv, y0, y1, &r0, &r1);
        hpass_u8_(src + (size_t)r0 * sw * 3, sw, r1 - r0, tmp, dw, &ch, T);
        vpass_u8_(tmp, dw * 3, r0, dst, &cv, y0, y1);
    }
done:
    free(T);
    free(tmp);
    coeffs_free_(&ch);
    coeffs_free_(&cv);
    return rc;
}

/* torch resamples the width of every row into a full intermediate, then the height; banding
 * computes the same rows (the same values) a band at a time. */
int resample_bilinear_aa_f32(char *err, const float *src, int sw, int sh, float *dst, int dw,
                             int dh) {
    int rc = check_sizes_(err, "resample_bilinear_aa_f32", src, sw, sh, dst, dw, dh);
    if (rc) return rc;
    int need_h = dw != sw, need_v = dh != sh;
    if (!need_h && !need_v) {
        memcpy(dst, src, sizeof(float) * (size_t)sw * sh * 3);
        return 0;
    }
    Coeffs cv = {0}, ch = {0};
    float *tmp = NULL, *T = NULL;
    if (need_v && (rc = coeffs_make_(err, &cv, sh, dh, FILTER_TRIANGLE, 1))) goto done;
    if (!need_h) {
        for (int p = 0; p < 3; p++)
            vpass_f32_(src + (size_t)p * sh * sw, sw, 0, dst + (size_t)p * dh * dw, &cv, 0, dh);
        goto done;
    }
    if ((rc = coeffs_make_(err, &ch, sw, dw, FILTER_TRIANGLE, 1))) goto done;
    size_t tn = sizeof(float) * ((size_t)sw + dw) * HROWS;
    T = malloc(tn);
    if (!T) {
        qie_seterr(err, "resample_bilinear_aa_f32: malloc %zu bytes", tn);
        rc = QIE_ENOMEM;
        goto done;
    }
    if (!need_v) {
        for (int p = 0; p < 3; p++)
            hpass_f32_(src + (size_t)p * sh * sw, sw, sh, dst + (size_t)p * dh * dw, dw, &ch, T);
        goto done;
    }
    int band = band_rows_(sh, dh), maxr = band_max_rows_(&cv, band);
    tmp = malloc(sizeof(float) * (size_t)dw * maxr);
    if (!tmp) {
        qie_seterr(err, "resample_bilinear_aa_f32: malloc intermediate %dx%d", dw, maxr);
        rc = QIE_ENOMEM;
        goto done;
    }
    for (int p = 0; p < 3; p++) {
        const float *sp = src + (size_t)p * sh * sw;
        float *dp = dst + (size_t)p * dh * dw;
        for (int y0 = 0; y0 < dh; y0 += band) {
            int y1 = y0 + band < dh ? y0 + band : dh, r0, r1;
            band_src_rows_(&cv, y0, y1, &r0, &r1);
            hpass_f32_(sp + (size_t)r0 * sw, sw, r1 - r0, tmp, dw, &ch, T);
            vpass_f32_(tmp, dw, r0, dp, &cv, y0, y1);
        }
    }
done:
    free(T);
    free(tmp);
    coeffs_free_(&ch);
    coeffs_free_(&cv);
    return rc;
}

void resample_u8_to_chw_f32(const uint8_t *src, int w, int h, float *dst) {
    /* a table of the 256 quotients: the same correctly rounded v / 255.0f, without a division
     * per sample (the strided loads keep gcc from vectorising the divide) */
    float lut[256];
    for (int v = 0; v < 256; v++) lut[v] = (float)v / 255.0f;
    size_t n = (size_t)w * h;
    float *d0 = dst, *d1 = dst + n, *d2 = dst + 2 * n;
    for (size_t i = 0; i < n; i++) {
        d0[i] = lut[src[3 * i]];
        d1[i] = lut[src[3 * i + 1]];
        d2[i] = lut[src[3 * i + 2]];
    }
}
