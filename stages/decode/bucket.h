/* bucket.h: the size arithmetic of the VideoX-Fun edit trainer, reproduced exactly.
 *
 * Everything here is integer/double arithmetic on image sizes; no pixels. Each function names
 * the upstream code it mirrors (trainer_behaviour.md §3, VideoX-Fun scripts/qwenimage/
 * train_edit.py collate_fn and training step, videox_fun/data/bucket_sampler.py):
 *
 *   target:  ASPECT_RATIO_512 scaled by S/512/d, floored to 16; nearest key by h/w (dict order,
 *            first minimum wins); cover resize with int() truncation; centre crop offsets with
 *            Python round (half to even)
 *   hw adapt: the discrete down-scale choice of --random_hw_adapt and numpy's choice() rule
 *   sources: Edit v1 preferred resolutions (true aspect ratio, decisions.md) and Edit-plus
 *            calculate_dimensions(area, W/H)
 *
 * scripts/golden/decode_buckets.py runs the Python originals; tests/test_decode_bucket.c
 * compares every number. */
#ifndef QIE_STAGES_DECODE_BUCKET_H
#define QIE_STAGES_DECODE_BUCKET_H

#include <stdint.h>

#define BUCKET_NKEYS 40        /* entries of ASPECT_RATIO_512 */
#define BUCKET_MAX_HW_CHOICES 6
#define BUCKET_NPREFERRED 17   /* PREFERRED_QWENIMAGE_RESOLUTIONS */
#define BUCKET_VAE_AREA (1024 * 1024)   /* pipeline_qwenimage_edit_plus VAE_IMAGE_SIZE */
#define BUCKET_COND_AREA (384 * 384)    /* pipeline_qwenimage_edit_plus CONDITION_IMAGE_SIZE */

typedef struct {
    double key;      /* float(k) of the dict key, h/w */
    int h512, w512;  /* [h, w] at scale 512 */
} BucketKey;

/* ASPECT_RATIO_512 in dict order (borrowed, static). */
extern const BucketKey bucket_keys[BUCKET_NKEYS];
/* PREFERRED_QWENIMAGE_RESOLUTIONS as (w, h) pairs in list order. */
extern const int bucket_preferred[BUCKET_NPREFERRED][2];

/* How one target image becomes a bucket: resize to (resize_h, resize_w), then crop
 * (bucket_h, bucket_w) at (crop_top, crop_left). int64 because extreme aspect ratios give
 * resize sides beyond int range before --max_pixels rejects them. */
typedef struct {
    int key_index;            /* index into bucket_keys; -1 when not bucketed */
    int bucket_h, bucket_w;
    int64_t resize_h, resize_w;
    int64_t crop_top, crop_left;
} TargetPlan;

/* Down-scale choices of get_random_downsample_ratio for sample size S: values and
 * probabilities (0.9, then the rest split evenly, computed as upstream does in double).
 * Returns the number of choices (1..BUCKET_MAX_HW_CHOICES). */
int bucket_hw_choices(int sample_size, double *d, double *p);

/* numpy RandomState.choice(values, p=probs) given its uniform draw u in [0, 1):
 * cdf = cumsum(p); cdf /= cdf[-1]; index = searchsorted(cdf, u, side='right'). */
double bucket_hw_pick(int sample_size, double u);

/* 1 when d is one of bucket_hw_choices(S) exactly. */
int bucket_hw_valid(int sample_size, double d);

/* Target plan for a decoded h x w image. enable_bucket=0 forces the square key 1.0 (qie's
 * fix for the reference's retry loop, decisions.md). d is the down-scale factor (1 without
 * --random_hw_adapt). Errors: QIE_EINVAL for non-positive sizes or a bucket side of 0. */
int bucket_target_plan(char *err, int64_t h, int64_t w, int sample_size, double d,
                       int enable_bucket, TargetPlan *out);

/* Edit v1 source size: min over (|W/H - w/h|, w, h) of the preferred list, floored to 16. */
void bucket_v1_source_size(int64_t src_w, int64_t src_h, int *out_w, int *out_h);

/* calculate_dimensions(area, W/H): w = sqrt(area*r), h = w/r, each round(x/32)*32 with Python
 * round. The result may be 0 for extreme ratios (the caller rejects such a source). */
void bucket_calc_dims(int64_t area, int64_t src_w, int64_t src_h, int64_t *out_w, int64_t *out_h);

#endif
