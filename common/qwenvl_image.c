/* qwenvl_image.c: the Qwen2-VL image processor as transformers runs it without torchvision
 * (Qwen2VLImageProcessorPil, model.md §3.4): smart_resize, Pillow BICUBIC on uint8 RGB,
 * rescale in float64 then float32, normalise in float32, 14-px patches of 2 identical frames. */
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "qwenvl.h"

int qwenvl_smart_resize(int h, int w, int factor, int64_t min_pixels, int64_t max_pixels, int *hb, int *wb) {
    if (h < 1 || w < 1 || factor < 1) return QIE_EINVAL;
    double hi = h > w ? h : w, lo = h > w ? w : h;
    if (hi / lo > 200.0) return QIE_EINVAL; /* "absolute aspect ratio must be smaller than 200" */
    /* Python round(): half to even, which nearbyint does in the default rounding mode */
    int64_t hbar = (int64_t)nearbyint((double)h / factor) * factor;
    int64_t wbar = (int64_t)nearbyint((double)w / factor) * factor;
    if (hbar * wbar > max_pixels) {
        double beta = sqrt((double)((int64_t)h * w) / (double)max_pixels);
        hbar = (int64_t)floor((double)h / beta / factor) * factor;
        wbar = (int64_t)floor((double)w / beta / factor) * factor;
        if (hbar < factor) hbar = factor;
        if (wbar < factor) wbar = factor;
    } else if (hbar * wbar < min_pixels) {
        double beta = sqrt((double)min_pixels / (double)((int64_t)h * w));
        hbar = (int64_t)ceil((double)h * beta / factor) * factor;
        wbar = (int64_t)ceil((double)w * beta / factor) * factor;
    }
    if (hbar < factor || wbar < factor || hbar > INT_MAX / 4 || wbar > INT_MAX / 4) return QIE_EINVAL;
    *hb = (int)hbar;
    *wb = (int)wbar;
    return 0;
}

/* ---- Pillow Resample.c, BICUBIC, 8 bits per channel --------------------------------------- */

#define PIL_PRECISION_BITS (32 - 8 - 2)

static double bicubic_filter_(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* precompute_coeffs + normalize_coeffs_8bpc; box = [0, inSize]. Returns ksize, 0 on ENOMEM. */
static int coeffs_(int in_size, int out_size, int **bounds_out, int32_t **kk_out) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *kk = malloc((size_t)out_size * ksize * sizeof *kk);
    int *bounds = malloc((size_t)out_size * 2 * sizeof *bounds);
    int32_t *ik = malloc((size_t)out_size * ksize * sizeof *ik);
    if (!kk || !bounds || !ik) {
        free(kk);
        free(bounds);
        free(ik);
        return 0;
    }
    double inv_filterscale = 1.0 / filterscale;
    for (int xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0;
        int xmin = (int)(center - support + 0.5), xmax = (int)(center + support + 0.5), x;
        if (xmin < 0) xmin = 0;
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double *k = &kk[(size_t)xx * ksize];
        for (x = 0; x < xmax; x++) {
            double wv = bicubic_filter_((x + xmin - center + 0.5) * inv_filterscale);
            k[x] = wv;
            ww += wv;
        }
        if (ww != 0.0)
            for (x = 0; x < xmax; x++) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        bounds[xx * 2] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * ksize; i++)
        ik[i] = kk[i] < 0 ? (int32_t)(-0.5 + kk[i] * (1 << PIL_PRECISION_BITS))
                          : (int32_t)(0.5 + kk[i] * (1 << PIL_PRECISION_BITS));
    free(kk);
    *bounds_out = bounds;
    *kk_out = ik;
    return ksize;
}

static inline uint8_t clip8_(int v) {
    v >>= PIL_PRECISION_BITS; /* arithmetic shift, as Pillow's lookup index */
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

int qwenvl_resize_bicubic(char *err, const uint8_t *src, int sw, int sh, uint8_t *dst, int dw, int dh) {
    if (sw < 1 || sh < 1 || dw < 1 || dh < 1) {
        qie_seterr(err, "bicubic resize %dx%d -> %dx%d: empty size", sw, sh, dw, dh);
        return QIE_EINVAL;
    }
    int need_h = dw != sw, need_v = dh != sh, rc = 0;
    int *bh = NULL, *bv = NULL;
    int32_t *kh = NULL, *kv = NULL;
    uint8_t *tmp = NULL;
    int ksv = coeffs_(sh, dh, &bv, &kv);
    if (!ksv) goto nomem;
    int yfirst = bv[0], ylast = bv[(dh - 1) * 2] + bv[(dh - 1) * 2 + 1];
    const uint8_t *cur = src;
    int cur_h = sh;
    if (need_h) {
        int ksh = coeffs_(sw, dw, &bh, &kh);
        if (!ksh) goto nomem;
        for (int i = 0; i < dh; i++) bv[i * 2] -= yfirst;
        cur_h = ylast - yfirst;
        tmp = malloc((size_t)dw * cur_h * 3);
        if (!tmp) goto nomem;
        for (int yy = 0; yy < cur_h; yy++) {
            const uint8_t *line = src + (size_t)(yy + yfirst) * sw * 3;
            uint8_t *out = tmp + (size_t)yy * dw * 3;
            for (int xx = 0; xx < dw; xx++) {
                int xmin = bh[xx * 2], xmax = bh[xx * 2 + 1];
                const int32_t *k = &kh[(size_t)xx * ksh];
                int s0 = 1 << (PIL_PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int x = 0; x < xmax; x++) {
                    const uint8_t *p = line + (size_t)(x + xmin) * 3;
                    s0 += p[0] * k[x];
                    s1 += p[1] * k[x];
                    s2 += p[2] * k[x];
                }
                out[xx * 3] = clip8_(s0);
                out[xx * 3 + 1] = clip8_(s1);
                out[xx * 3 + 2] = clip8_(s2);
            }
        }
        cur = tmp;
    }
    int cw = need_h ? dw : sw;
    if (need_v) {
        for (int yy = 0; yy < dh; yy++) {
            int ymin = bv[yy * 2], ymax = bv[yy * 2 + 1];
            const int32_t *k = &kv[(size_t)yy * ksv];
            uint8_t *out = dst + (size_t)yy * cw * 3;
            for (int xx = 0; xx < cw; xx++) {
                int s0 = 1 << (PIL_PRECISION_BITS - 1), s1 = s0, s2 = s0;
                for (int y = 0; y < ymax; y++) {
                    const uint8_t *p = cur + ((size_t)(y + ymin) * cw + xx) * 3;
                    s0 += p[0] * k[y];
                    s1 += p[1] * k[y];
                    s2 += p[2] * k[y];
                }
                out[xx * 3] = clip8_(s0);
                out[xx * 3 + 1] = clip8_(s1);
                out[xx * 3 + 2] = clip8_(s2);
            }
        }
    } else {
        /* no vertical pass: the horizontal result (rows yfirst.. = all rows) or a plain copy */
        memcpy(dst, cur, (size_t)cw * dh * 3);
    }
    (void)cur_h;
    goto done;
nomem:
    qie_seterr(err, "bicubic resize %dx%d -> %dx%d: out of memory", sw, sh, dw, dh);
    rc = QIE_ENOMEM;
done:
    free(bh);
    free(bv);
    free(kh);
    free(kv);
    free(tmp);
    return rc;
}

/* Qwen2VLImageProcessorPil: rescale (float64 product, cast to float32), normalise ((x - mean) /
 * std in float32), then patchify: rows ordered (y/m, x/m, y%m, x%m) over patch coordinates,
 * row content (c, t, py, px), the frame repeated temporal_patch_size times. */
void qwenvl_patch_rows(const QwenVLConfig *cfg, const uint8_t *img, int h, int w, float *rows) {
    int p = cfg->patch, m = cfg->merge, tp = cfg->tpatch, C = cfg->in_ch;
    int gh = h / p, gw = w / p, dim = C * tp * p * p;
    float lut[3][256];
    for (int c = 0; c < C && c < 3; c++)
        for (int v = 0; v < 256; v++) {
            float x = (float)((double)v * cfg->rescale);
            lut[c][v] = (x - cfg->mean[c]) / cfg->std[c];
        }
    size_t r = 0;
    for (int by = 0; by < gh / m; by++)
        for (int bx = 0; bx < gw / m; bx++)
            for (int iy = 0; iy < m; iy++)
                for (int ix = 0; ix < m; ix++, r++) {
                    int y0 = (by * m + iy) * p, x0 = (bx * m + ix) * p;
                    float *row = rows + r * dim;
                    for (int c = 0; c < C; c++)
                        for (int t = 0; t < tp; t++)
                            for (int py = 0; py < p; py++)
                                for (int px = 0; px < p; px++)
                                    row[((c * tp + t) * p + py) * p + px] =
                                        lut[c][img[((size_t)(y0 + py) * w + (x0 + px)) * 3 + c]];
                }
}
