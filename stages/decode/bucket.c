/* bucket.c: bucket, resize, crop and source sizes, as VideoX-Fun's edit trainer computes them.
 * Python semantics that matter here: int/int true division is correctly rounded (a C double
 * division of the exact integers gives the same value while they stay below 2^53), int()
 * truncates toward zero, round() is half-to-even (rint under the default rounding mode). */
#include "bucket.h"

#include <math.h>

#include "err.h"

/* ASPECT_RATIO_512 (videox_fun/data/bucket_sampler.py), dict order: ties of the nearest-key
 * search go to the earlier entry, so the order is part of the behaviour. */
const BucketKey bucket_keys[BUCKET_NKEYS] = {
    {0.25, 256, 1024}, {0.26, 256, 992}, {0.27, 256, 960}, {0.28, 256, 928},
    {0.32, 288, 896},  {0.33, 288, 864}, {0.35, 288, 832}, {0.4, 320, 800},
    {0.42, 320, 768},  {0.48, 352, 736}, {0.5, 352, 704},  {0.52, 352, 672},
    {0.57, 384, 672},  {0.6, 384, 640},  {0.68, 416, 608}, {0.72, 416, 576},
    {0.78, 448, 576},  {0.82, 448, 544}, {0.88, 480, 544}, {0.94, 480, 512},
    {1.0, 512, 512},   {1.07, 512, 480}, {1.13, 544, 480}, {1.21, 544, 448},
    {1.29, 576, 448},  {1.38, 576, 416}, {1.46, 608, 416}, {1.67, 640, 384},
    {1.75, 672, 384},  {2.0, 704, 352},  {2.09, 736, 352}, {2.4, 768, 320},
    {2.5, 800, 320},   {2.89, 832, 288}, {3.0, 864, 288},  {3.11, 896, 288},
    {3.62, 928, 256},  {3.75, 960, 256}, {3.88, 992, 256}, {4.0, 1024, 256},
};

/* PREFERRED_QWENIMAGE_RESOLUTIONS (pipeline_qwenimage_edit.py), (w, h), list order. */
const int bucket_preferred[BUCKET_NPREFERRED][2] = {
    {672, 1568}, {688, 1504}, {720, 1456}, {752, 1392}, {800, 1328}, {832, 1248},
    {880, 1184}, {944, 1104}, {1024, 1024}, {1104, 944}, {1184, 880}, {1248, 832},
    {1328, 800}, {1392, 752}, {1456, 720}, {1504, 688}, {1568, 672},
};

int bucket_hw_choices(int sample_size, double *d, double *p) {
    static const double all[BUCKET_MAX_HW_CHOICES] = {1, 1.25, 1.5, 2, 2.5, 3};
    int n;
    if (sample_size >= 1536) n = 6;
    else if (sample_size >= 1024) n = 4;
    else if (sample_size >= 768) n = 3;
    else n = 1; /* 512 <= S < 768 gives [1] + image_ratio(=[]) and S < 512 gives [1] */
    for (int i = 0; i < n; i++) d[i] = all[i];
    /* _create_special_list: 0.90 first, the remainder (1.0 - 0.90, not exactly 0.1) split */
    if (n == 1) {
        p[0] = 1.0;
    } else {
        double rest = (1.0 - 0.90) / (double)(n - 1);
        p[0] = 0.90;
        for (int i = 1; i < n; i++) p[i] = rest;
    }
    return n;
}

double bucket_hw_pick(int sample_size, double u) {
    double d[BUCKET_MAX_HW_CHOICES], p[BUCKET_MAX_HW_CHOICES], cdf[BUCKET_MAX_HW_CHOICES];
    int n = bucket_hw_choices(sample_size, d, p);
    /* numpy: cdf = p.cumsum(); cdf /= cdf[-1]; searchsorted(cdf, u, side='right').
     * cumsum is a plain left-to-right running sum in double. */
    double acc = 0;
    for (int i = 0; i < n; i++) { acc += p[i]; cdf[i] = acc; }
    for (int i = 0; i < n; i++) cdf[i] /= acc;
    int idx = 0;
    while (idx < n && cdf[idx] <= u) idx++; /* side='right': first cdf > u */
    if (idx >= n) idx = n - 1;              /* u < 1 always; guard anyway */
    return d[idx];
}

int bucket_hw_valid(int sample_size, double dv) {
    double d[BUCKET_MAX_HW_CHOICES], p[BUCKET_MAX_HW_CHOICES];
    int n = bucket_hw_choices(sample_size, d, p);
    for (int i = 0; i < n; i++)
        if (d[i] == dv) return 1;
    return 0;
}

/* int(x / 16) * 16 of `x / 512 * S / d` (left to right, as the collate_fn writes it). */
static int bucket_side_(int x512, int sample_size, double d) {
    double v = (double)x512 / 512.0 * (double)sample_size / d;
    return (int)(v / 16.0) * 16;
}

int bucket_target_plan(char *err, int64_t h, int64_t w, int sample_size, double d,
                       int enable_bucket, TargetPlan *out) {
    if (h <= 0 || w <= 0 || sample_size <= 0 || !(d >= 1.0)) {
        qie_seterr(err, "bucket_target_plan: bad size %lldx%lld (S=%d, d=%g)", (long long)w,
                   (long long)h, sample_size, d);
        return QIE_EINVAL;
    }
    int k = 20; /* key 1.0 */
    if (enable_bucket) {
        /* get_closest_ratio: min(keys, key=|float(k) - h/w|), first minimum wins */
        double ar = (double)h / (double)w, best = INFINITY;
        for (int i = 0; i < BUCKET_NKEYS; i++) {
            double diff = fabs(bucket_keys[i].key - ar);
            if (diff < best) { best = diff; k = i; }
        }
    }
    int th = bucket_side_(bucket_keys[k].h512, sample_size, d);
    int tw = bucket_side_(bucket_keys[k].w512, sample_size, d);
    if (th <= 0 || tw <= 0) {
        qie_seterr(err, "bucket_target_plan: S=%d/d=%g gives an empty bucket %dx%d", sample_size,
                   d, tw, th);
        return QIE_EINVAL;
    }
    out->key_index = enable_bucket ? k : -1;
    out->bucket_h = th;
    out->bucket_w = tw;
    /* cover: th/h > tw/w compares correctly rounded quotients, as Python does; the sizes are
     * int(w*th/h): exact integer product, then one correctly rounded division, then truncation */
    if ((double)th / (double)h > (double)tw / (double)w) {
        out->resize_h = th;
        out->resize_w = (int64_t)((double)(w * th) / (double)h);
    } else {
        out->resize_h = (int64_t)((double)(h * tw) / (double)w);
        out->resize_w = tw;
    }
    if (out->resize_h < th || out->resize_w < tw) {
        /* cannot happen (the cover rule guarantees it); torchvision would pad instead */
        qie_seterr(err, "bucket_target_plan: resize %lldx%lld smaller than bucket %dx%d",
                   (long long)out->resize_w, (long long)out->resize_h, tw, th);
        return QIE_EINVAL;
    }
    /* torchvision CenterCrop: int(round((H - th) / 2.0)), Python round = half to even */
    out->crop_top = (int64_t)rint((double)(out->resize_h - th) / 2.0);
    out->crop_left = (int64_t)rint((double)(out->resize_w - tw) / 2.0);
    return 0;
}

void bucket_v1_source_size(int64_t src_w, int64_t src_h, int *out_w, int *out_h) {
    /* min((abs(aspect_ratio - w / h), w, h) for w, h in PREFERRED): tuple order, so ties go
     * to the smaller w, then the smaller h */
    double ar = (double)src_w / (double)src_h;
    int bi = 0;
    double best = INFINITY;
    for (int i = 0; i < BUCKET_NPREFERRED; i++) {
        int w = bucket_preferred[i][0], h = bucket_preferred[i][1];
        double diff = fabs(ar - (double)w / (double)h);
        int better = diff < best ||
                     (diff == best && (w < bucket_preferred[bi][0] ||
                                       (w == bucket_preferred[bi][0] && h < bucket_preferred[bi][1])));
        if (better) { best = diff; bi = i; }
    }
    /* multiple_of = vae_scale_factor * 2 = 16 */
    *out_w = bucket_preferred[bi][0] / 16 * 16;
    *out_h = bucket_preferred[bi][1] / 16 * 16;
}

void bucket_calc_dims(int64_t area, int64_t src_w, int64_t src_h, int64_t *out_w, int64_t *out_h) {
    double r = (double)src_w / (double)src_h;
    double w = sqrt((double)area * r);
    double h = w / r;
    *out_w = (int64_t)rint(w / 32.0) * 32;
    *out_h = (int64_t)rint(h / 32.0) * 32;
}
