/* image_png.c: PNG through libspng 0.7 (data_pipeline.md §2.2, §3).
 *
 * SPNG_FMT_RGB8 with flags 0 is Pillow's convert('RGB') for every colour type and depth:
 * palette looked up, tRNS and alpha dropped (no compositing), 1/2/4-bit gray bit-replicated,
 * 16-bit samples reduced to their high byte, no gamma. The one exception is 16-bit grayscale
 * without alpha: Pillow opens it as mode I (I;16 from 10.3) and convert('RGB') *clips* (v > 255
 * -> 255), so it is decoded as 16-bit and clipped here. */
#include <spng.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "image_internal.h"

/* Ancillary chunks are not needed; these bound what a hostile file can make libspng buffer. */
#define PNG_CHUNK_MAX ((size_t)64 << 20)
#define PNG_CACHE_MAX ((size_t)128 << 20)

static uint32_t be32_(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* IHDR is the first chunk: signature (8) + length (4) + "IHDR" (4) + width (4) + height (4). */
int img_png_probe_(char *err, const uint8_t *buf, size_t len, const char *name, int *w, int *h) {
    if (len < 24) return QIE_EEOF;
    if (memcmp(buf + 12, "IHDR", 4) != 0) {
        qie_seterr(err, "%s: PNG does not start with IHDR", name);
        return QIE_EFORMAT;
    }
    uint32_t pw = be32_(buf + 16), ph = be32_(buf + 20);
    /* PNG allows up to 2^31-1; anything above int range fails the limit check anyway */
    *w = pw > 0x7fffffffu ? 0x7fffffff : (int)pw;
    *h = ph > 0x7fffffffu ? 0x7fffffff : (int)ph;
    return 0;
}

int img_png_decode_(char *err, const uint8_t *buf, size_t len, const char *name,
                    const ImgLimits *lim, Image *out) {
    int rc = 0, e;
    uint16_t *g16 = NULL;
    spng_ctx *ctx = spng_ctx_new(0);
    if (!ctx) {
        qie_seterr(err, "%s: spng_ctx_new failed", name);
        return QIE_ENOMEM;
    }
    /* the pixel limit below is the real guard; libspng's own width/height caps stay wide */
    if ((e = spng_set_image_limits(ctx, 0x7fffffffu, 0x7fffffffu)) ||
        (e = spng_set_chunk_limits(ctx, PNG_CHUNK_MAX, PNG_CACHE_MAX)) ||
        (e = spng_set_png_buffer(ctx, buf, len))) {
        qie_seterr(err, "%s: libspng setup: %s", name, spng_strerror(e));
        rc = QIE_EFORMAT;
        goto fail;
    }
    struct spng_ihdr ihdr;
    if ((e = spng_get_ihdr(ctx, &ihdr))) {
        qie_seterr(err, "%s: PNG header: %s", name, spng_strerror(e));
        rc = QIE_EFORMAT;
        goto fail;
    }
    int64_t iw = ihdr.width, ih = ihdr.height;
    if ((rc = img_check_dims_(err, name, iw, ih, lim))) goto fail;
    int w = (int)iw, h = (int)ih;
    size_t npx = (size_t)w * (size_t)h;
    if ((rc = img_alloc_(err, name, w, h, out))) goto fail;
    int gray16 = ihdr.color_type == SPNG_COLOR_TYPE_GRAYSCALE && ihdr.bit_depth == 16;
    int fmt = gray16 ? SPNG_FMT_PNG : SPNG_FMT_RGB8;
    size_t need = 0;
    if ((e = spng_decoded_image_size(ctx, fmt, &need))) {
        qie_seterr(err, "%s: PNG decoded size: %s", name, spng_strerror(e));
        rc = QIE_EFORMAT;
        goto fail;
    }
    if (need != npx * (gray16 ? 2 : 3)) {
        qie_seterr(err, "%s: PNG decoded size %zu, expected %zu", name, need,
                   npx * (gray16 ? 2 : 3));
        rc = QIE_EFORMAT;
        goto fail;
    }
    void *dst = out->px;
    if (gray16) {
        g16 = malloc(need);
        if (!g16) {
            qie_seterr(err, "%s: malloc %zu bytes for 16-bit gray", name, need);
            rc = QIE_ENOMEM;
            goto fail;
        }
        dst = g16;
    }
    /* errors here include truncation (SPNG_EOF / IDAT stream errors): Pillow raises too */
    if ((e = spng_decode_image(ctx, dst, need, fmt, 0))) {
        qie_seterr(err, "%s: PNG decode: %s", name, spng_strerror(e));
        rc = QIE_EFORMAT;
        goto fail;
    }
    if (gray16) {
        /* SPNG_FMT_PNG is host-endian for 16-bit samples */
        for (size_t i = 0; i < npx; i++) {
            uint8_t v = g16[i] > 255 ? 255 : (uint8_t)g16[i];
            out->px[3 * i] = out->px[3 * i + 1] = out->px[3 * i + 2] = v;
        }
    }
    free(g16);
    spng_ctx_free(ctx);
    return 0;
fail:
    free(g16);
    img_free(out);
    spng_ctx_free(ctx);
    return rc;
}
