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
 * 8-wide int32 multiplies that SSE2 lacks. Those are the portable loops. On x86-64 with AVX2 +
 * FMA (checked at run time with __builtin_cpu_supports, so also under ASan), hand-written AVX2
 * loops replace them (see "x86-64 AVX2 apply loops" below): register 8x8 transposes, the u8
 * taps two at a time with pmaddwd on split 16-bit coefficients, the same bytes.
 * resample_target_bf16 is the target path fused: u8 in, bf16 out, only the cropped outputs,
 * in bands whose float rows stay in L2. */
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

/* output rows [y0, y1) of n floats; dst points at output row y0 */
HOT static void vpass_f32_(const float *src, int n, int row0, float *dst, const Coeffs *c,
                           int y0, int y1) {
    for (int yy = y0; yy < y1; yy++) {
        const float *k = c->kf + (size_t)yy * c->ksize;
        const float *s0 = src + (size_t)(c->xmin[yy] - row0) * n;
        const int cnt = c->xcnt[yy];
        float *d = dst + (size_t)(yy - y0) * n; /* dst is output row y0 */
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

/* ---- x86-64 AVX2 apply loops (picked at run time; the loops above are the fallback) ----
 *
 * The same arithmetic as the loops above, lane for lane: results are bit-identical (checked
 * against them on random sizes, and against the goldens).
 *   hpass_f32: 8x8 register transposes in and out of the row-block layout (the scalar
 *     transposes were ~80% of the pass); per output the same tap order, unfused groups of 4
 *     then fused tail.
 *   hpass_u8: the 8 rows x 3 channels block is transposed into 16-bit pairs (pixel x, pixel
 *     x+1) so that one pmaddwd applies two taps; each 22-bit coefficient k is split as
 *     k = hi * 2^15 + lo (hi = k >> 15 arithmetic, lo = k & 0x7fff, both int16), and
 *     acc = 2^21 + (sum px*hi << 15) + sum px*lo is the same int32 sum as Pillow's (exact modulo
 *     2^32, like Pillow's own int32 accumulator). Clip with packssdw/packuswb = clip8.
 *   vpass_u8: rows j, j+1 interleaved into the same 16-bit pairs, 16 columns at a time. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(QIE_NO_SIMD) /* -DQIE_NO_SIMD: portable only */
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#define AVX2 __attribute__((target("avx2,fma")))

static int simd_state_ = -1; /* -1 undecided, 0 off, 1 AVX2 */

static int use_avx2_(void) {
    int s = __atomic_load_n(&simd_state_, __ATOMIC_RELAXED);
    if (s < 0) {
        __builtin_cpu_init();
        s = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
        __atomic_store_n(&simd_state_, s, __ATOMIC_RELAXED);
    }
    return s;
}

int resample_set_simd(int on) {
    __atomic_store_n(&simd_state_, on ? -1 : 0, __ATOMIC_RELAXED);
    return on ? use_avx2_() : 0;
}

AVX2 static inline void tr8x8_ps_(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}

/* T: (sw + 2 + dw) * 8 floats. pad3 (only for finite inputs >= 0, the target path): with
 * ksize == 3, every output runs all 3 taps, the ones past xcnt with weight 0 on zero padding or
 * in-row values: fma(t, +0, acc) = acc for finite t >= 0 and acc >= +0, so the value is the
 * same and the loop has no data-dependent trip count. */
/* 8 bytes p[0], p[3], ..., p[21] (one channel of 8 RGB pixels) as v / 255.0f: the same
 * correctly rounded quotient as the scalar division. Reads p[0 .. 27]. */
AVX2 static inline __m256 u8x8_div255_(const uint8_t *p) {
    const __m128i m = _mm_setr_epi8(0, 3, 6, 9, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m128i lo = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)p), m);
    __m128i hi = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 12)), m);
    __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpacklo_epi32(lo, hi)));
    return _mm256_div_ps(f, _mm256_set1_ps(255.0f));
}

/* T: (sw + 2 + dw) * 8 floats. src rows of sw floats; or, with src_u8, channel ch of (sw, 3)
 * u8 rows, read as v / 255.0f (lut: the same quotients, for the tail).
 * pad3 (only for finite inputs >= 0, the target path): with
 * ksize == 3, every output runs all 3 taps, the ones past xcnt with weight 0 on zero padding or
 * in-row values: fma(t, +0, acc) = acc for finite t >= 0 and acc >= +0, so the value is the
 * same and the loop has no data-dependent trip count. */
AVX2 static void hpass_f32_avx2_(const float *src, const uint8_t *src_u8, int ch,
                                 const float *lut, int sw, int nrows, float *dst, int dw,
                                 const Coeffs *c, float *T, int pad3) {
    float *O = T + ((size_t)sw + 2) * HROWS;
    pad3 = pad3 && c->ksize == 3;
    if (pad3) memset(T + (size_t)sw * HROWS, 0, sizeof(float) * 2 * HROWS);
    for (int y0 = 0; y0 < nrows; y0 += HROWS) {
        int nr = nrows - y0 < HROWS ? nrows - y0 : HROWS;
        int x = 0;
        if (src_u8) {
            const uint8_t *rows[HROWS];
            for (int r = 0; r < HROWS; r++)
                rows[r] = src_u8 + (size_t)(y0 + (r < nr ? r : 0)) * sw * 3 + ch;
            for (; x + 10 <= sw; x += 8) { /* x + 10: the 28-byte reads stay in the row */
                __m256 v[8];
                for (int r = 0; r < 8; r++) v[r] = u8x8_div255_(rows[r] + 3 * x);
                tr8x8_ps_(v);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(T + (size_t)(x + i) * 8, v[i]);
            }
            for (; x < sw; x++)
                for (int r = 0; r < 8; r++) T[(size_t)x * 8 + r] = lut[rows[r][3 * x]];
        } else {
            const float *rows[HROWS];
            for (int r = 0; r < HROWS; r++) rows[r] = src + (size_t)(y0 + (r < nr ? r : 0)) * sw;
            for (; x + 8 <= sw; x += 8) {
                __m256 v[8];
                for (int r = 0; r < 8; r++) v[r] = _mm256_loadu_ps(rows[r] + x);
                tr8x8_ps_(v);
                for (int i = 0; i < 8; i++) _mm256_storeu_ps(T + (size_t)(x + i) * 8, v[i]);
            }
            for (; x < sw; x++)
                for (int r = 0; r < 8; r++) T[(size_t)x * 8 + r] = rows[r][x];
        }
        if (pad3) {
            for (int xx = 0; xx < dw; xx++) {
                const float *k = c->kf + (size_t)xx * 3;
                const float *t = T + (size_t)c->xmin[xx] * 8;
                __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(t), _mm256_set1_ps(k[0]));
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(t + 8), _mm256_set1_ps(k[1]), acc);
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(t + 16), _mm256_set1_ps(k[2]), acc);
                _mm256_storeu_ps(O + (size_t)xx * 8, acc);
            }
        }
        for (int xx = 0; xx < (pad3 ? 0 : dw); xx++) {
            const float *k = c->kf + (size_t)xx * c->ksize;
            const float *t = T + (size_t)c->xmin[xx] * 8;
            const int cnt = c->xcnt[xx];
            __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(t), _mm256_set1_ps(k[0]));
            int j = 1;
            for (; j + 4 <= cnt; j += 4)
                for (int q = j; q < j + 4; q++)
                    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(t + (size_t)q * 8),
                                                           _mm256_set1_ps(k[q])));
            for (; j < cnt; j++)
                acc = _mm256_fmadd_ps(_mm256_loadu_ps(t + (size_t)j * 8), _mm256_set1_ps(k[j]),
                                      acc);
            _mm256_storeu_ps(O + (size_t)xx * 8, acc);
        }
        int xx = 0;
        for (; xx + 8 <= dw; xx += 8) {
            __m256 v[8];
            for (int i = 0; i < 8; i++) v[i] = _mm256_loadu_ps(O + (size_t)(xx + i) * 8);
            tr8x8_ps_(v);
            for (int r = 0; r < nr; r++) _mm256_storeu_ps(dst + (size_t)(y0 + r) * dw + xx, v[r]);
        }
        for (; xx < dw; xx++)
            for (int r = 0; r < nr; r++) dst[(size_t)(y0 + r) * dw + xx] = O[(size_t)xx * 8 + r];
    }
}

/* One output row of the v-pass (vpass_f32_'s arithmetic: first product, unfused groups of
 * 4, fused tail) from cnt rows at s0 (stride n), normalised to bf16 as normalize_bf16_row_. */
AVX2 static void vrow_bf16_avx2_(const float *s0, size_t n, const float *k, int cnt,
                                 uint16_t *dst, int w) {
    const __m256 half = _mm256_set1_ps(0.5f), two = _mm256_set1_ps(2.0f);
    const __m256i rnd = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    int i = 0;
    for (; i + 8 <= w; i += 8) {
        const float *p = s0 + i;
        __m256 acc = _mm256_mul_ps(_mm256_loadu_ps(p), _mm256_set1_ps(k[0]));
        int j = 1;
        if (cnt == 2) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + n), _mm256_set1_ps(k[1]), acc);
            j = 2;
        } else if (cnt == 3) {
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + n), _mm256_set1_ps(k[1]), acc);
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + 2 * n), _mm256_set1_ps(k[2]), acc);
            j = 3;
        }
        for (; j + 4 <= cnt; j += 4)
            for (int q = j; q < j + 4; q++)
                acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(p + (size_t)q * n),
                                                       _mm256_set1_ps(k[q])));
        for (; j < cnt; j++)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(p + (size_t)j * n), _mm256_set1_ps(k[j]), acc);
        __m256i u = _mm256_castps_si256(_mm256_mul_ps(_mm256_sub_ps(acc, half), two));
        u = _mm256_add_epi32(u, _mm256_add_epi32(rnd, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        u = _mm256_srli_epi32(u, 16);
        _mm_storeu_si128((__m128i *)(dst + i), _mm_packus_epi32(_mm256_castsi256_si128(u),
                                                                _mm256_extracti128_si256(u, 1)));
    }
    for (; i < w; i++) {
        float v = (taps_f32_(s0 + i, (int)n, k, cnt) - 0.5f) * 2.0f;
        uint32_t u;
        memcpy(&u, &v, 4);
        u += 0x7fffu + ((u >> 16) & 1u);
        dst[i] = (uint16_t)(u >> 16);
    }
}

/* Coefficients of c as int16 pairs for pmaddwd: (n, npairs) hi and lo words, taps 2m and
 * 2m+1 in the low and high halves. Returns -1 when some hi part does not fit int16 (|k| >=
 * 2^30: never for real filters; the caller then uses the portable loops). */
static int pairs_make_(const Coeffs *c, int32_t **hi_out, int32_t **lo_out, int *np_out) {
    int np = (c->ksize + 1) / 2;
    int32_t *hi = malloc(sizeof(int32_t) * (size_t)c->n * np);
    int32_t *lo = malloc(sizeof(int32_t) * (size_t)c->n * np);
    if (!hi || !lo) {
        free(hi);
        free(lo);
        return -2;
    }
    for (int xx = 0; xx < c->n; xx++) {
        const int32_t *k = c->ki + (size_t)xx * c->ksize;
        for (int m = 0; m < np; m++) {
            int32_t h2[2], l2[2];
            for (int e = 0; e < 2; e++) {
                int j = 2 * m + e;
                int32_t kj = j < c->xcnt[xx] ? k[j] : 0;
                h2[e] = kj >> 15; /* arithmetic: kj = h*2^15 + l, 0 <= l < 2^15 */
                l2[e] = kj & 0x7fff;
                if (h2[e] < -32768 || h2[e] > 32767) {
                    free(hi);
                    free(lo);
                    return -1;
                }
            }
            hi[(size_t)xx * np + m] = (int32_t)((uint32_t)(uint16_t)h2[0] | (uint32_t)(uint16_t)h2[1] << 16);
            lo[(size_t)xx * np + m] = (int32_t)((uint32_t)(uint16_t)l2[0] | (uint32_t)(uint16_t)l2[1] << 16);
        }
    }
    *hi_out = hi;
    *lo_out = lo;
    *np_out = np;
    return 0;
}

/* (acc_hi << 15) + acc_lo + 2^21 >> 22, clipped to u8: 24 lanes -> out[0..23] */
AVX2 static inline void finish24_(const __m256i h[3], const __m256i l[3], uint8_t out[32]) {
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    __m128i q[6];
    for (int v = 0; v < 3; v++) {
        __m256i a = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(h[v], 15), l[v]), half);
        a = _mm256_srai_epi32(a, PRECISION_BITS);
        q[2 * v] = _mm256_castsi256_si128(a);
        q[2 * v + 1] = _mm256_extracti128_si256(a, 1);
    }
    __m128i p01 = _mm_packs_epi32(q[0], q[1]), p23 = _mm_packs_epi32(q[2], q[3]);
    __m128i p45 = _mm_packs_epi32(q[4], q[5]);
    _mm_storeu_si128((__m128i *)out, _mm_packus_epi16(p01, p23));
    _mm_storel_epi64((__m128i *)(out + 16), _mm_packus_epi16(p45, p45));
}

/* T2: (sw + 1) * 24 int32 + 16 bytes of slack, then dw * 32 bytes of results */
AVX2 static void hpass_u8_avx2_(const uint8_t *src, int sw, int nrows, uint8_t *dst, int dw,
                                const Coeffs *c, const int32_t *khi, const int32_t *klo,
                                int np, int32_t *T2) {
    enum { L = HROWS * 3 };
    uint8_t *O8 = (uint8_t *)(T2 + ((size_t)sw + 2) * L);
    const __m128i shuf = _mm_setr_epi8(0, -1, 3, -1, 1, -1, 4, -1, 2, -1, 5, -1, -1, -1, -1, -1);
    /* the 16-byte load at 3x stays inside the row while 3x + 16 <= 3 sw */
    int xfast = sw - 6 > 0 ? sw - 6 : 0;
    for (int y0 = 0; y0 < nrows; y0 += HROWS) {
        int nr = nrows - y0 < HROWS ? nrows - y0 : HROWS;
        const uint8_t *rows[HROWS];
        for (int r = 0; r < HROWS; r++) rows[r] = src + (size_t)(y0 + (r < nr ? r : 0)) * sw * 3;
        int x = 0;
        for (; x < xfast; x++) {
            int32_t *tx = T2 + (size_t)x * L;
            /* each 16-byte store spills 4 bytes into the next slot, rewritten right after */
            for (int r = 0; r < HROWS; r++) {
                __m128i b = _mm_loadu_si128((const __m128i *)(rows[r] + 3 * x));
                _mm_storeu_si128((__m128i *)(tx + 3 * r), _mm_shuffle_epi8(b, shuf));
            }
        }
        for (; x < sw; x++) {
            int32_t *tx = T2 + (size_t)x * L;
            for (int r = 0; r < HROWS; r++)
                for (int ch = 0; ch < 3; ch++) {
                    uint32_t a = rows[r][3 * x + ch];
                    uint32_t b = x + 1 < sw ? rows[r][3 * x + 3 + ch] : 0;
                    tx[3 * r + ch] = (int32_t)(a | b << 16);
                }
        }
        for (int xx = 0; xx < dw; xx++) {
            const int32_t *t = T2 + (size_t)c->xmin[xx] * L;
            const int32_t *kh = khi + (size_t)xx * np, *kl = klo + (size_t)xx * np;
            const int npx = (c->xcnt[xx] + 1) / 2;
            /* six named accumulators: with arrays gcc kept them in memory */
            __m256i h0 = _mm256_setzero_si256(), h1 = h0, h2 = h0, l0 = h0, l1 = h0, l2 = h0;
            for (int m = 0; m < npx; m++) {
                const __m256i vh = _mm256_set1_epi32(kh[m]), vl = _mm256_set1_epi32(kl[m]);
                const int32_t *tm = t + (size_t)(2 * m) * L;
                __m256i a0 = _mm256_loadu_si256((const __m256i *)tm);
                __m256i a1 = _mm256_loadu_si256((const __m256i *)(tm + 8));
                __m256i a2 = _mm256_loadu_si256((const __m256i *)(tm + 16));
                h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(a0, vh));
                l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(a0, vl));
                h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(a1, vh));
                l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(a1, vl));
                h2 = _mm256_add_epi32(h2, _mm256_madd_epi16(a2, vh));
                l2 = _mm256_add_epi32(l2, _mm256_madd_epi16(a2, vl));
            }
            const __m256i h[3] = {h0, h1, h2}, l[3] = {l0, l1, l2};
            finish24_(h, l, O8 + (size_t)xx * 32);
        }
        /* write-back row by row, long after the stores above (reading them back right away
         * stalls on store forwarding); 4-byte moves whose 4th byte the next output rewrites */
        for (int r = 0; r < nr; r++) {
            uint8_t *d = dst + (size_t)(y0 + r) * dw * 3;
            const uint8_t *o = O8 + 3 * r;
            int xx = 0;
            for (; xx + 1 < dw; xx++) memcpy(d + 3 * xx, o + (size_t)xx * 32, 4);
            memcpy(d + 3 * xx, o + (size_t)xx * 32, 3);
        }
    }
}

/* vpass_u8_ for output rows [y0, y1), 16 columns a step; the tail columns scalar. */
AVX2 static void vpass_u8_avx2_(const uint8_t *src, int n, int row0, uint8_t *dst,
                                const Coeffs *c, const int32_t *khi, const int32_t *klo,
                                int np, int y0, int y1) {
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1));
    for (int yy = y0; yy < y1; yy++) {
        const int32_t *k = c->ki + (size_t)yy * c->ksize;
        const int32_t *kh = khi + (size_t)yy * np, *kl = klo + (size_t)yy * np;
        const uint8_t *s0 = src + (size_t)(c->xmin[yy] - row0) * n;
        const int cnt = c->xcnt[yy];
        uint8_t *d = dst + (size_t)yy * n;
        int i0 = 0;
        for (; i0 + 16 <= n; i0 += 16) {
            __m256i h0 = _mm256_setzero_si256(), h1 = h0, l0 = h0, l1 = h0;
            int j = 0;
            for (; j + 2 <= cnt; j += 2) {
                __m128i a = _mm_loadu_si128((const __m128i *)(s0 + (size_t)j * n + i0));
                __m128i b = _mm_loadu_si128((const __m128i *)(s0 + (size_t)(j + 1) * n + i0));
                __m256i p0 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b));
                __m256i p1 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b));
                const __m256i vh = _mm256_set1_epi32(kh[j / 2]), vl = _mm256_set1_epi32(kl[j / 2]);
                h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(p0, vh));
                h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(p1, vh));
                l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(p0, vl));
                l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(p1, vl));
            }
            if (j < cnt) { /* last odd tap: its pair partner has coefficient 0 */
                __m128i a = _mm_loadu_si128((const __m128i *)(s0 + (size_t)j * n + i0));
                __m256i p0 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, _mm_setzero_si128()));
                __m256i p1 = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, _mm_setzero_si128()));
                const __m256i vh = _mm256_set1_epi32(kh[j / 2]), vl = _mm256_set1_epi32(kl[j / 2]);
                h0 = _mm256_add_epi32(h0, _mm256_madd_epi16(p0, vh));
                h1 = _mm256_add_epi32(h1, _mm256_madd_epi16(p1, vh));
                l0 = _mm256_add_epi32(l0, _mm256_madd_epi16(p0, vl));
                l1 = _mm256_add_epi32(l1, _mm256_madd_epi16(p1, vl));
            }
            __m256i a0 = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(h0, 15), l0), half);
            __m256i a1 = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(h1, 15), l1), half);
            a0 = _mm256_srai_epi32(a0, PRECISION_BITS);
            a1 = _mm256_srai_epi32(a1, PRECISION_BITS);
            __m128i w0 = _mm_packs_epi32(_mm256_castsi256_si128(a0), _mm256_extracti128_si256(a0, 1));
            __m128i w1 = _mm_packs_epi32(_mm256_castsi256_si128(a1), _mm256_extracti128_si256(a1, 1));
            _mm_storeu_si128((__m128i *)(d + i0), _mm_packus_epi16(w0, w1));
        }
        for (; i0 < n; i0++) {
            int32_t acc = 1 << (PRECISION_BITS - 1);
            for (int j = 0; j < cnt; j++) acc += s0[(size_t)j * n + i0] * k[j];
            d[i0] = clip8_(acc);
        }
    }
}
#else
int resample_set_simd(int on) {
    (void)on;
    return 0;
}
#endif

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
#define TBAND_IN_ROWS 40 /* resample_target_bf16: its three float buffers in L2 */
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

/* The u8 passes with their scratch: the portable loops or the AVX2 ones (with the pmaddwd
 * coefficient pairs). */
typedef struct {
    const Coeffs *ch, *cv;
    int32_t *T;              /* portable hpass scratch, or AVX2 T2 */
    int32_t *hhi, *hlo, *vhi, *vlo;
    int hnp, vnp, simd;
} U8Pass;

static void u8pass_free_(U8Pass *p) {
    free(p->T);
    free(p->hhi);
    free(p->hlo);
    free(p->vhi);
    free(p->vlo);
}

static int u8pass_init_(char *err, U8Pass *p, const Coeffs *ch, const Coeffs *cv, int sw, int dw) {
    memset(p, 0, sizeof *p);
    p->ch = ch;
    p->cv = cv;
#ifdef HAVE_AVX2_PATH
    if (use_avx2_()) {
        int r1 = ch ? pairs_make_(ch, &p->hhi, &p->hlo, &p->hnp) : 0;
        int r2 = r1 ? r1 : cv ? pairs_make_(cv, &p->vhi, &p->vlo, &p->vnp) : 0;
        if (r1 == -2 || r2 == -2) goto nomem;
        p->simd = !r1 && !r2;
        if (!p->simd) { /* out-of-range coefficients: the portable loops */
            u8pass_free_(p);
            memset(p, 0, sizeof *p);
            p->ch = ch;
            p->cv = cv;
        }
    }
#endif
    if (ch) {
        size_t tn = p->simd ? sizeof(int32_t) * ((size_t)sw + 2) * HROWS * 3 + (size_t)dw * 32
                            : sizeof(int32_t) * ((size_t)sw + dw) * HROWS * 3;
        if (!(p->T = malloc(tn))) goto nomem;
    }
    return 0;
nomem:
    u8pass_free_(p);
    qie_seterr(err, "resample_lanczos_u8: out of memory for %dx -> %dx scratch", sw, dw);
    return QIE_ENOMEM;
}

static void u8pass_h_(const U8Pass *p, const uint8_t *src, int sw, int nrows, uint8_t *dst,
                      int dw) {
#ifdef HAVE_AVX2_PATH
    if (p->simd) {
        hpass_u8_avx2_(src, sw, nrows, dst, dw, p->ch, p->hhi, p->hlo, p->hnp, p->T);
        return;
    }
#endif
    hpass_u8_(src, sw, nrows, dst, dw, p->ch, p->T);
}

static void u8pass_v_(const U8Pass *p, const uint8_t *src, int n, int row0, uint8_t *dst, int y0,
                      int y1) {
#ifdef HAVE_AVX2_PATH
    if (p->simd) {
        vpass_u8_avx2_(src, n, row0, dst, p->cv, p->vhi, p->vlo, p->vnp, y0, y1);
        return;
    }
#endif
    vpass_u8_(src, n, row0, dst, p->cv, y0, y1);
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
    U8Pass up = {0};
    uint8_t *tmp = NULL;
    if (need_v && (rc = coeffs_make_(err, &cv, sh, dh, FILTER_LANCZOS, 0))) goto done;
    if (need_h && (rc = coeffs_make_(err, &ch, sw, dw, FILTER_LANCZOS, 0))) goto done;
    if ((rc = u8pass_init_(err, &up, need_h ? &ch : NULL, need_v ? &cv : NULL, sw, dw))) goto done;
    if (!need_h) {
        u8pass_v_(&up, src, sw * 3, 0, dst, 0, dh);
        goto done;
    }
    if (!need_v) {
        /* dh == sh: Pillow's vertical window is every row, and the result is final */
        u8pass_h_(&up, src, sw, sh, dst, dw);
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
        u8pass_h_(&up, src + (size_t)r0 * sw * 3, sw, r1 - r0, tmp, dw);
        u8pass_v_(&up, tmp, dw * 3, r0, dst, y0, y1);
    }
done:
    u8pass_free_(&up);
    free(tmp);
    coeffs_free_(&ch);
    coeffs_free_(&cv);
    return rc;
}

/* T: (sw + 2 + dw) * HROWS floats */
static void f32_h_(int simd, const float *src, int sw, int nrows, float *dst, int dw,
                   const Coeffs *c, float *T, int nonneg) {
#ifdef HAVE_AVX2_PATH
    if (simd) {
        hpass_f32_avx2_(src, NULL, 0, NULL, sw, nrows, dst, dw, c, T, nonneg);
        return;
    }
#endif
    (void)simd, (void)nonneg;
    hpass_f32_(src, sw, nrows, dst, dw, c, T);
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
    int simd = 0;
#ifdef HAVE_AVX2_PATH
    simd = use_avx2_();
#endif
    Coeffs cv = {0}, ch = {0};
    float *tmp = NULL, *T = NULL;
    if (need_v && (rc = coeffs_make_(err, &cv, sh, dh, FILTER_TRIANGLE, 1))) goto done;
    if (!need_h) {
        for (int p = 0; p < 3; p++)
            vpass_f32_(src + (size_t)p * sh * sw, sw, 0, dst + (size_t)p * dh * dw, &cv, 0, dh);
        goto done;
    }
    if ((rc = coeffs_make_(err, &ch, sw, dw, FILTER_TRIANGLE, 1))) goto done;
    size_t tn = sizeof(float) * ((size_t)sw + 2 + dw) * HROWS;
    T = malloc(tn);
    if (!T) {
        qie_seterr(err, "resample_bilinear_aa_f32: malloc %zu bytes", tn);
        rc = QIE_ENOMEM;
        goto done;
    }
    if (!need_v) {
        for (int p = 0; p < 3; p++)
            f32_h_(simd, src + (size_t)p * sh * sw, sw, sh, dst + (size_t)p * dh * dw, dw, &ch, T, 0);
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
            f32_h_(simd, sp + (size_t)r0 * sw, sw, r1 - r0, tmp, dw, &ch, T, 0);
            vpass_f32_(tmp, dw, r0, dp + (size_t)y0 * dw, &cv, y0, y1);
        }
    }
done:
    free(T);
    free(tmp);
    coeffs_free_(&ch);
    coeffs_free_(&cv);
    return rc;
}

/* (x - 0.5f) / 0.5f rounded to bf16 (nearest even), for one row. Division by 0.5 is exact, so
 * (x - 0.5f) * 2.0f is the same float; the values are finite (x in [0, 1] up to filter
 * overshoot), so f32_to_bf16's NaN branch can go. Vector extensions, 8 at a time (GCC's -O2
 * cost model leaves the plain loop scalar). */
typedef float V8f_ __attribute__((vector_size(32)));
typedef uint32_t V8u_ __attribute__((vector_size(32)));
typedef uint16_t V8h_ __attribute__((vector_size(16)));

HOT static void normalize_bf16_row_(const float *restrict src, uint16_t *restrict dst, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        V8f_ v;
        V8u_ u;
        memcpy(&v, src + i, sizeof v);
        v = (v - 0.5f) * 2.0f;
        memcpy(&u, &v, sizeof u);
        u += 0x7fffu + ((u >> 16) & 1u);
        V8h_ h = __builtin_convertvector(u >> 16, V8h_);
        memcpy(dst + i, &h, sizeof h);
    }
    for (; i < n; i++) {
        float v = (src[i] - 0.5f) * 2.0f;
        uint32_t u;
        memcpy(&u, &v, 4);
        u += 0x7fffu + ((u >> 16) & 1u);
        dst[i] = (uint16_t)(u >> 16);
    }
}

/* The outputs [off, off + n) of c, as a Coeffs of n outputs (borrowed arrays). */
static Coeffs coeffs_view_(const Coeffs *c, int off, int n) {
    Coeffs v = *c;
    v.n = n;
    v.xmin += off;
    v.xcnt += off;
    v.kf += (size_t)off * c->ksize;
    v.ki = NULL;
    return v;
}

int resample_target_bf16(char *err, const uint8_t *src, int sw, int sh, int rw, int rh,
                         int crop_left, int crop_top, int bw, int bh, uint16_t *dst) {
    int rc = check_sizes_(err, "resample_target_bf16", src, sw, sh, dst, rw, rh);
    if (rc) return rc;
    if (bw <= 0 || bh <= 0 || crop_left < 0 || crop_top < 0 || crop_left > rw - bw ||
        crop_top > rh - bh) {
        qie_seterr(err, "resample_target_bf16: crop %dx%d at (%d, %d) outside %dx%d", bw, bh,
                   crop_left, crop_top, rw, rh);
        return QIE_EINVAL;
    }
    float lut[256];
    for (int v = 0; v < 256; v++) lut[v] = (float)v / 255.0f;
    int need_h = rw != sw, need_v = rh != sh, simd = 0;
#ifdef HAVE_AVX2_PATH
    simd = use_avx2_();
#endif
    Coeffs cvf = {0}, chf = {0}, cv = {0}, ch = {0};
    float *in = NULL, *tmp = NULL, *out = NULL, *T = NULL;
    if (need_v) {
        if ((rc = coeffs_make_(err, &cvf, sh, rh, FILTER_TRIANGLE, 1))) goto done;
        cv = coeffs_view_(&cvf, crop_top, bh);
    }
    if (need_h) {
        if ((rc = coeffs_make_(err, &chf, sw, rw, FILTER_TRIANGLE, 1))) goto done;
        ch = coeffs_view_(&chf, crop_left, bw);
    }
    /* bands of output rows, small enough that the band's float rows stay in L2; the source
     * rows [r0, r1) they read (just their own rows when there is no v-pass). Channels inside
     * the band loop: the band's u8 rows are read from cache for channels 1 and 2. */
    int band = need_v ? band_rows_(sh, rh) * TBAND_IN_ROWS / BAND_IN_ROWS : TBAND_IN_ROWS;
    if (band < 1) band = 1;
    if (band > bh) band = bh;
    int maxr = need_v ? band_max_rows_(&cv, band) : band;
    in = malloc(sizeof(float) * (size_t)sw * maxr);  /* source rows of one channel, as floats */
    tmp = malloc(sizeof(float) * (size_t)bw * maxr); /* after the h-pass */
    out = malloc(sizeof(float) * (size_t)bw);        /* one row after the v-pass */
    T = need_h ? malloc(sizeof(float) * ((size_t)sw + 2 + bw) * HROWS) : NULL;
    if (!in || !tmp || !out || (need_h && !T)) {
        qie_seterr(err, "resample_target_bf16: out of memory (%dx%d -> %dx%d)", sw, sh, rw, rh);
        rc = QIE_ENOMEM;
        goto done;
    }
    for (int y0 = 0; y0 < bh; y0 += band) {
        int y1 = y0 + band < bh ? y0 + band : bh, r0, r1;
        if (need_v) band_src_rows_(&cv, y0, y1, &r0, &r1);
        else r0 = crop_top + y0, r1 = crop_top + y1;
        const int nr = r1 - r0;
        for (int p = 0; p < 3; p++) {
            const float *hrows = in; /* nr rows of bw floats */
#ifdef HAVE_AVX2_PATH
            if (need_h && simd) { /* the h-pass reads the u8 rows itself */
                hpass_f32_avx2_(NULL, src + (size_t)r0 * sw * 3, p, lut, sw, nr, tmp, bw, &ch, T, 1);
                hrows = tmp;
                goto vpass;
            }
#endif
            /* torch: u8 / 255 in float32 (a table of the same quotients) */
            const int x0 = need_h ? 0 : crop_left, nx = need_h ? sw : bw;
            for (int y = 0; y < nr; y++) {
                const uint8_t *s = src + ((size_t)(r0 + y) * sw + x0) * 3 + p;
                float *d = in + (size_t)y * nx;
                for (int x = 0; x < nx; x++) d[x] = lut[s[3 * x]];
            }
            if (need_h) {
                f32_h_(simd, in, sw, nr, tmp, bw, &ch, T, 1); /* values in [0, 1] */
                hrows = tmp;
            }
#ifdef HAVE_AVX2_PATH
        vpass:
#endif
            for (int y = y0; y < y1; y++) {
                const float *row = hrows + (size_t)(y - y0) * bw; /* no v-pass: r0 = y0 + top */
#ifdef HAVE_AVX2_PATH
                if (need_v && simd) {
                    vrow_bf16_avx2_(hrows + (size_t)(cv.xmin[y] - r0) * bw, (size_t)bw,
                                    cv.kf + (size_t)y * cv.ksize, cv.xcnt[y],
                                    dst + ((size_t)p * bh + y) * (size_t)bw, bw);
                    continue;
                }
#endif
                if (need_v) {
                    vpass_f32_(hrows, bw, r0, out, &cv, y, y + 1);
                    row = out;
                }
                normalize_bf16_row_(row, dst + ((size_t)p * bh + y) * (size_t)bw, bw);
            }
        }
    }
done:
    free(in);
    free(tmp);
    free(out);
    free(T);
    coeffs_free_(&chf);
    coeffs_free_(&cvf);
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
