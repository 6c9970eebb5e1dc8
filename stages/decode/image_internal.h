/* image_internal.h: what image.c shares with its per-format decoders (image_jpeg.c,
 * image_png.c, image_webp.c, image_other.c). Not part of the stage's API.
 *
 * Every decoder takes the whole encoded file in memory and a name for messages, checks the
 * stored size with img_check_dims_ before allocating, and fills *out only on success.
 * A probe returns QIE_EEOF when buf ended before the header did: img_probe then reads the rest
 * of the file and asks again. */
#ifndef QIE_STAGES_DECODE_IMAGE_INTERNAL_H
#define QIE_STAGES_DECODE_IMAGE_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

typedef enum {
    IMG_FMT_UNKNOWN = 0,
    IMG_FMT_JPEG,
    IMG_FMT_PNG,
    IMG_FMT_WEBP,
    IMG_FMT_BMP,
    IMG_FMT_GIF,
    IMG_FMT_TIFF,
} ImgFormat;

/* Bytes img_sniff_ needs to tell every format apart. */
#define IMG_SNIFF_LEN 12

ImgFormat img_sniff_(const uint8_t *buf, size_t len);
const char *img_format_name_(ImgFormat f);

/* 0, QIE_EFORMAT for w or h <= 0, QIE_ELIMIT for w*h above the limit (or above what fits an
 * int-indexed (h, w, 3) buffer). Message: "<name>: ...". */
int img_check_dims_(char *err, const char *name, int64_t w, int64_t h, const ImgLimits *lim);

/* malloc an (h, w, 3) buffer into out (dims already checked). */
int img_alloc_(char *err, const char *name, int w, int h, Image *out);

int img_jpeg_probe_(char *err, const uint8_t *buf, size_t len, const char *name, int *w, int *h);
int img_jpeg_decode_(char *err, const uint8_t *buf, size_t len, const char *name,
                     const ImgLimits *lim, Image *out);
int img_png_probe_(char *err, const uint8_t *buf, size_t len, const char *name, int *w, int *h);
int img_png_decode_(char *err, const uint8_t *buf, size_t len, const char *name,
                    const ImgLimits *lim, Image *out);
int img_webp_probe_(char *err, const uint8_t *buf, size_t len, const char *name, int *w, int *h);
int img_webp_decode_(char *err, const uint8_t *buf, size_t len, const char *name,
                     const ImgLimits *lim, Image *out);
/* BMP/GIF/TIFF through FFmpeg; probe needs the whole file. */
int img_other_probe_(char *err, const uint8_t *buf, size_t len, const char *name, ImgFormat f,
                     int *w, int *h);
int img_other_decode_(char *err, const uint8_t *buf, size_t len, const char *name, ImgFormat f,
                      const ImgLimits *lim, Image *out);

#endif
