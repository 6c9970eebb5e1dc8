/* image.h: decode a still image to 8-bit RGB exactly as Pillow's
 * `Image.open(p).convert('RGB')` does (data_pipeline.md §2-3).
 *
 * Format is chosen by magic bytes, never by extension:
 *   JPEG  TurboJPEG tjDecompress2(TJPF_RGB, flags 0): bit-exact with Pillow linking the same
 *         libjpeg-turbo. 4-component (CMYK/YCCK) files decode as TJPF_CMYK and go through
 *         Pillow's naive CMYK->RGB (stored bytes are Adobe-inverted; Pillow assumes so always).
 *   PNG   libspng SPNG_FMT_RGB8, flags 0 (all bit depths and colour types; palette looked up,
 *         tRNS and alpha dropped, 16-bit -> high byte), except 16-bit grayscale, which Pillow
 *         clips (v > 255 -> 255) instead of taking the high byte.
 *   WebP  libwebp RGB for stills; the first frame of an animation (WebPAnimDecoder, frame 1
 *         on a transparent-black canvas), alpha dropped.
 *   BMP, GIF, TIFF  FFmpeg (first frame, converted to RGB24 by swscale). Best effort: exact for
 *         the simple cases in the golden set, not checked against Pillow beyond them.
 * Alpha is dropped without compositing. EXIF orientation, ICC profiles, gAMA/cHRM/sRGB are
 * ignored, as in the reference. Truncated files are errors (Pillow raises); so are zero or
 * absurd dimensions and anything above the pixel limit (Pillow's DecompressionBombError).
 *
 * Errors: QIE_EFORMAT (corrupt, truncated, not an image), QIE_ELIMIT (pixel limit),
 * QIE_EUNSUPPORTED (format known but not handled), QIE_ENOMEM, or a positive errno from file
 * I/O. `err` always names the file (or the name passed for memory buffers).
 *
 * defines: Image, ImgLimits, IMG_PILLOW_MAX_PIXELS, img_probe, img_decode_file,
 *          img_decode_mem, img_free */
#ifndef QIE_STAGES_DECODE_IMAGE_H
#define QIE_STAGES_DECODE_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Pillow raises DecompressionBombError above 2 * MAX_IMAGE_PIXELS = 2 * 89,478,485. */
#define IMG_PILLOW_MAX_PIXELS ((int64_t)178956970)

typedef struct {
    int w, h;
    uint8_t *px; /* (h, w, 3) u8 RGB interleaved, rows packed (stride w*3); malloc'd, img_free */
} Image;

typedef struct {
    int64_t max_pixels; /* w*h above this -> QIE_ELIMIT; <= 0 means IMG_PILLOW_MAX_PIXELS */
} ImgLimits;

/* Stored size as PIL `Image.open(p).size`: no EXIF transpose, canvas size for animated WebP.
 * Reads only the header where the format allows it (JPEG, PNG, WebP). lim may be NULL
 * (Pillow's limit). Fails like Image.open: not an image, bad header, above the limit. */
int img_probe(char *err, const char *path, const ImgLimits *lim, int *w, int *h);

/* Decode a whole file. On success *out owns a new pixel buffer (free with img_free); on failure
 * *out is left zeroed. lim may be NULL. */
int img_decode_file(char *err, const char *path, const ImgLimits *lim, Image *out);

/* Same from memory; buf is borrowed for the duration of the call only. name_for_errors is used
 * in messages (may be NULL: "<memory>"). */
int img_decode_mem(char *err, const void *buf, size_t len, const char *name_for_errors,
                   const ImgLimits *lim, Image *out);

/* Frees im->px and zeroes *im. NULL-safe, and safe on a zeroed Image. */
void img_free(Image *im);

#ifdef __cplusplus
}
#endif
#endif
