/* image_webp.c: WebP through libwebp (data_pipeline.md §2.3, §3).
 *
 * Pillow 9.4/9.5 decodes every WebP with WebPAnimDecoder (RGBA, default options: fancy
 * upsampling on, non-premultiplied) and convert('RGB') drops alpha. For a still image frame 1
 * is a plain decode, so stills go straight through WebPDecode(MODE_RGB) (same upsampler, same
 * RGB, no canvas copy). Animations take frame 1 from WebPAnimDecoder, composited on its
 * transparent-black canvas as Pillow gets it. FFmpeg 5.1 cannot decode animated WebP. */
#include <stdlib.h>
#include <string.h>
#include <webp/decode.h>
#include <webp/demux.h>

#include "err.h"
#include "image_internal.h"

static const char *vp8_status_(VP8StatusCode s) {
    switch (s) {
    case VP8_STATUS_OK: return "ok";
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "user abort";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "not enough data (file is truncated)";
    }
    return "unknown status";
}

/* Canvas size for animations (VP8X), frame size for stills: what PIL reports as .size. */
int img_webp_probe_(char *err, const uint8_t *buf, size_t len, const char *name, int *w, int *h) {
    WebPBitstreamFeatures f;
    VP8StatusCode s = WebPGetFeatures(buf, len, &f);
    if (s == VP8_STATUS_NOT_ENOUGH_DATA) return QIE_EEOF;
    if (s != VP8_STATUS_OK) {
        qie_seterr(err, "%s: WebP header: %s", name, vp8_status_(s));
        return QIE_EFORMAT;
    }
    *w = f.width;
    *h = f.height;
    return 0;
}

static int decode_anim_(char *err, const uint8_t *buf, size_t len, const char *name,
                        const ImgLimits *lim, Image *out) {
    WebPAnimDecoderOptions opt;
    if (!WebPAnimDecoderOptionsInit(&opt)) {
        qie_seterr(err, "%s: WebPAnimDecoderOptionsInit: libwebpdemux version mismatch", name);
        return QIE_EUNSUPPORTED;
    }
    opt.color_mode = MODE_RGBA; /* as Pillow: non-premultiplied, so RGB is kept as stored */
    opt.use_threads = 0;        /* the stage runs one worker per core */
    WebPData data = {buf, len};
    WebPAnimDecoder *dec = WebPAnimDecoderNew(&data, &opt);
    if (!dec) {
        qie_seterr(err, "%s: WebPAnimDecoderNew failed (corrupt or truncated animation)", name);
        return QIE_EFORMAT;
    }
    int rc = 0;
    WebPAnimInfo info;
    uint8_t *rgba = NULL;
    int ts = 0;
    if (!WebPAnimDecoderGetInfo(dec, &info)) {
        qie_seterr(err, "%s: WebPAnimDecoderGetInfo failed", name);
        rc = QIE_EFORMAT;
        goto done;
    }
    if ((rc = img_check_dims_(err, name, info.canvas_width, info.canvas_height, lim))) goto done;
    if (!WebPAnimDecoderGetNext(dec, &rgba, &ts)) {
        qie_seterr(err, "%s: WebP animation frame 1: decode failed (corrupt or truncated)", name);
        rc = QIE_EFORMAT;
        goto done;
    }
    if ((rc = img_alloc_(err, name, (int)info.canvas_width, (int)info.canvas_height, out)))
        goto done;
    size_t npx = (size_t)info.canvas_width * info.canvas_height;
    for (size_t i = 0; i < npx; i++) memcpy(out->px + 3 * i, rgba + 4 * i, 3);
done:
    WebPAnimDecoderDelete(dec); /* owns rgba */
    return rc;
}

int img_webp_decode_(char *err, const uint8_t *buf, size_t len, const char *name,
                     const ImgLimits *lim, Image *out) {
    WebPDecoderConfig cfg;
    if (!WebPInitDecoderConfig(&cfg)) {
        qie_seterr(err, "%s: WebPInitDecoderConfig: libwebp version mismatch", name);
        return QIE_EUNSUPPORTED;
    }
    VP8StatusCode s = WebPGetFeatures(buf, len, &cfg.input);
    if (s != VP8_STATUS_OK) {
        qie_seterr(err, "%s: WebP header: %s", name, vp8_status_(s));
        return QIE_EFORMAT;
    }
    if (cfg.input.has_animation) return decode_anim_(err, buf, len, name, lim, out);
    int rc = img_check_dims_(err, name, cfg.input.width, cfg.input.height, lim);
    if (rc) return rc;
    if ((rc = img_alloc_(err, name, cfg.input.width, cfg.input.height, out))) return rc;
    cfg.options.use_threads = 0;
    cfg.output.colorspace = MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = out->px;
    cfg.output.u.RGBA.stride = out->w * 3;
    cfg.output.u.RGBA.size = (size_t)out->w * (size_t)out->h * 3;
    s = WebPDecode(buf, len, &cfg);
    WebPFreeDecBuffer(&cfg.output); /* external memory: frees nothing of ours */
    if (s != VP8_STATUS_OK) {
        qie_seterr(err, "%s: WebP decode: %s", name, vp8_status_(s));
        img_free(out);
        return QIE_EFORMAT;
    }
    return 0;
}
