/* image_jpeg.c: JPEG through TurboJPEG 2.1 (data_pipeline.md §2.1, §3).
 *
 * tjDecompress2(TJPF_RGB, flags 0) is libjpeg's default path (accurate integer IDCT, fancy
 * upsampling): the same pixels Pillow gets when it links the same libjpeg-turbo. No
 * TJFLAG_FASTUPSAMPLE / TJFLAG_FASTDCT / DCT scaling: each changes pixels. */
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>

#include "err.h"
#include "image_internal.h"

static unsigned be16_(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

/* Walks the markers to the first SOFn, as PIL's JpegImageFile._open does (it skips junk
 * between markers too). Size is what SOF stores: EXIF orientation is not applied. */
int img_jpeg_probe_(char *err, const uint8_t *buf, size_t len, const char *name, int *w, int *h) {
    size_t i = 2; /* past SOI; img_sniff_ checked FF D8 FF */
    for (;;) {
        if (i + 2 > len) return QIE_EEOF;
        if (buf[i] != 0xFF) { i++; continue; }
        unsigned m = buf[i + 1];
        if (m == 0xFF) { i++; continue; }          /* fill byte */
        if (m == 0x00) { i += 2; continue; }       /* escaped FF in junk */
        if (m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7)) { i += 2; continue; }
        if (m == 0xD9 || m == 0xDA) {
            qie_seterr(err, "%s: JPEG has no frame header (SOF) before %s", name,
                       m == 0xDA ? "SOS" : "EOI");
            return QIE_EFORMAT;
        }
        if (i + 4 > len) return QIE_EEOF;
        size_t seg = be16_(buf + i + 2);
        if (seg < 2) {
            qie_seterr(err, "%s: JPEG marker 0x%02X has bad length %zu", name, m, seg);
            return QIE_EFORMAT;
        }
        int sof = m >= 0xC0 && m <= 0xCF && m != 0xC4 && m != 0xC8 && m != 0xCC;
        if (sof) {
            if (i + 9 > len) return QIE_EEOF;
            *h = (int)be16_(buf + i + 5);
            *w = (int)be16_(buf + i + 7);
            return 0;
        }
        i += 2 + seg;
    }
}

/* Pillow Convert.c cmyk2rgb on the "CMYK;I" (inverted) raw mode Pillow always uses for
 * 4-component JPEGs. In terms of the bytes TJPF_CMYK returns:
 *   R = clip8(k - muldiv255(255 - c, k)), same with m for G and y for B,
 *   muldiv255(a, b) = (t + (t >> 8)) >> 8 with t = a*b + 128. */
static void cmyk_to_rgb_(const uint8_t *in, uint8_t *out, size_t npx) {
    for (size_t i = 0; i < npx; i++) {
        int k = in[4 * i + 3];
        for (int c = 0; c < 3; c++) {
            int t = (255 - in[4 * i + c]) * k + 128;
            int v = k - (((t >> 8) + t) >> 8);
            out[3 * i + c] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
    }
}

int img_jpeg_decode_(char *err, const uint8_t *buf, size_t len, const char *name,
                     const ImgLimits *lim, Image *out) {
    int rc = 0;
    uint8_t *cmyk = NULL;
    tjhandle tj = tjInitDecompress();
    if (!tj) {
        qie_seterr(err, "%s: tjInitDecompress: %s", name, tjGetErrorStr2(NULL));
        return QIE_ENOMEM;
    }
    int w = 0, h = 0, subsamp = 0, cs = 0;
    if (tjDecompressHeader3(tj, buf, (unsigned long)len, &w, &h, &subsamp, &cs) != 0) {
        qie_seterr(err, "%s: JPEG header: %s", name, tjGetErrorStr2(tj));
        rc = QIE_EFORMAT;
        goto fail;
    }
    if ((rc = img_check_dims_(err, name, w, h, lim))) goto fail;
    /* libjpeg has no CMYK->RGB converter; YCCK is turned into CMYK by libjpeg itself */
    int four = cs == TJCS_CMYK || cs == TJCS_YCCK;
    if ((rc = img_alloc_(err, name, w, h, out))) goto fail;
    uint8_t *dst = out->px;
    if (four) {
        cmyk = malloc((size_t)w * (size_t)h * 4);
        if (!cmyk) {
            qie_seterr(err, "%s: malloc %zu bytes for CMYK", name, (size_t)w * (size_t)h * 4);
            rc = QIE_ENOMEM;
            goto fail;
        }
        dst = cmyk;
    }
    if (tjDecompress2(tj, buf, (unsigned long)len, dst, w, 0, h, four ? TJPF_CMYK : TJPF_RGB,
                      0) != 0) {
        const char *msg = tjGetErrorStr2(tj);
        /* -1 also reports libjpeg warnings, after a complete decode. Pillow raises on a
         * truncated file (the source manager's "Premature end of JPEG file", which is the
         * first warning a truncation emits) and tolerates other corruption warnings. */
        if (tjGetErrorCode(tj) != TJERR_WARNING || strstr(msg, "Premature end of JPEG file")) {
            qie_seterr(err, "%s: JPEG decode: %s%s", name, msg,
                       tjGetErrorCode(tj) == TJERR_WARNING ? " (file is truncated)" : "");
            rc = QIE_EFORMAT;
            goto fail;
        }
    }
    if (four) cmyk_to_rgb_(cmyk, out->px, (size_t)w * (size_t)h);
    free(cmyk);
    tjDestroy(tj); /* returns -1 only for a bad handle */
    return 0;
fail:
    free(cmyk);
    img_free(out);
    tjDestroy(tj);
    return rc;
}
