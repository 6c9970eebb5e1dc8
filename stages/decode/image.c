/* image.c: format sniffing, file reading, limits and dispatch for image.h. The pixel work is in
 * image_jpeg.c, image_png.c, image_webp.c and image_other.c. */
#include "image.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "err.h"
#include "image_internal.h"

/* A file this large is not a training image; refusing it keeps one bad path from taking a
 * worker's memory. The pixel limit is the real guard (decoded size), this one bounds the read. */
#define IMG_MAX_FILE_BYTES ((size_t)1 << 30)
/* img_probe reads this much first; JPEG headers with big EXIF/ICC segments may need more. */
#define IMG_PROBE_HEAD (64 * 1024)

ImgFormat img_sniff_(const uint8_t *b, size_t n) {
    if (n >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return IMG_FMT_JPEG;
    if (n >= 8 && memcmp(b, "\x89PNG\r\n\x1a\n", 8) == 0) return IMG_FMT_PNG;
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0)
        return IMG_FMT_WEBP;
    if (n >= 6 && (memcmp(b, "GIF87a", 6) == 0 || memcmp(b, "GIF89a", 6) == 0))
        return IMG_FMT_GIF;
    if (n >= 4 && (memcmp(b, "II*\0", 4) == 0 || memcmp(b, "MM\0*", 4) == 0)) return IMG_FMT_TIFF;
    if (n >= 2 && b[0] == 'B' && b[1] == 'M') return IMG_FMT_BMP;
    return IMG_FMT_UNKNOWN;
}

const char *img_format_name_(ImgFormat f) {
    switch (f) {
    case IMG_FMT_JPEG: return "JPEG";
    case IMG_FMT_PNG: return "PNG";
    case IMG_FMT_WEBP: return "WebP";
    case IMG_FMT_BMP: return "BMP";
    case IMG_FMT_GIF: return "GIF";
    case IMG_FMT_TIFF: return "TIFF";
    case IMG_FMT_UNKNOWN: break;
    }
    return "unknown";
}

static int64_t limit_of_(const ImgLimits *lim) {
    return (lim && lim->max_pixels > 0) ? lim->max_pixels : IMG_PILLOW_MAX_PIXELS;
}

int img_check_dims_(char *err, const char *name, int64_t w, int64_t h, const ImgLimits *lim) {
    if (w <= 0 || h <= 0) {
        qie_seterr(err, "%s: image has size %lldx%lld", name, (long long)w, (long long)h);
        return QIE_EFORMAT;
    }
    int64_t max = limit_of_(lim);
    /* (h, w, 3) must stay indexable with int row strides in the resamplers */
    if (w > (1 << 29) || h > (1 << 29) || w * h > max || w * h > (int64_t)1 << 40) {
        qie_seterr(err, "%s: image size %lldx%lld (%lld pixels) exceeds the limit of %lld pixels",
                   name, (long long)w, (long long)h, (long long)(w * h), (long long)max);
        return QIE_ELIMIT;
    }
    return 0;
}

int img_alloc_(char *err, const char *name, int w, int h, Image *out) {
    size_t n = (size_t)w * (size_t)h * 3;
    uint8_t *px = malloc(n);
    if (!px) {
        qie_seterr(err, "%s: malloc %zu bytes for %dx%d RGB", name, n, w, h);
        return QIE_ENOMEM;
    }
    out->w = w;
    out->h = h;
    out->px = px;
    return 0;
}

void img_free(Image *im) {
    if (!im) return;
    free(im->px);
    memset(im, 0, sizeof *im);
}

/* Reads up to max bytes of fd from offset 0 into a new buffer. */
static int read_fd_(char *err, const char *path, int fd, size_t max, uint8_t **out, size_t *len) {
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        qie_seterr(err, "fstat %s: %s", path, strerror(e));
        return e;
    }
    if (S_ISDIR(st.st_mode)) {
        qie_seterr(err, "read %s: %s", path, strerror(EISDIR));
        return EISDIR;
    }
    if (st.st_size > 0 && (uint64_t)st.st_size > IMG_MAX_FILE_BYTES && max > IMG_MAX_FILE_BYTES) {
        qie_seterr(err, "%s: file is %lld bytes, larger than the %zu-byte limit", path,
                   (long long)st.st_size, IMG_MAX_FILE_BYTES);
        return QIE_ELIMIT;
    }
    /* st_size is a hint only (pipes, files growing under us): read until EOF or max */
    size_t cap = st.st_size > 0 ? (size_t)st.st_size : 65536;
    if (cap > max) cap = max;
    uint8_t *buf = malloc(cap ? cap : 1);
    if (!buf) {
        qie_seterr(err, "%s: malloc %zu bytes", path, cap);
        return QIE_ENOMEM;
    }
    size_t n = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= max) break;
            size_t ncap = cap * 2 > max ? max : cap * 2;
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                qie_seterr(err, "%s: realloc %zu bytes", path, ncap);
                return QIE_ENOMEM;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = pread(fd, buf + n, cap - n, (off_t)n);
        if (r < 0) {
            if (errno == EINTR) continue;
            int e = errno;
            free(buf);
            qie_seterr(err, "read %s: %s", path, strerror(e));
            return e;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int read_file_(char *err, const char *path, size_t max, uint8_t **out, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        qie_seterr(err, "open %s: %s", path, strerror(e));
        return e;
    }
    int rc = read_fd_(err, path, fd, max, out, len);
    close(fd); /* read-only: a close error loses nothing */
    return rc;
}

int img_decode_mem(char *err, const void *buf, size_t len, const char *name,
                   const ImgLimits *lim, Image *out) {
    if (!name) name = "<memory>";
    memset(out, 0, sizeof *out);
    if (!buf || len == 0) {
        qie_seterr(err, "%s: empty file", name);
        return QIE_EFORMAT;
    }
    const uint8_t *b = buf;
    ImgFormat f = img_sniff_(b, len);
    switch (f) {
    case IMG_FMT_JPEG: return img_jpeg_decode_(err, b, len, name, lim, out);
    case IMG_FMT_PNG: return img_png_decode_(err, b, len, name, lim, out);
    case IMG_FMT_WEBP: return img_webp_decode_(err, b, len, name, lim, out);
    case IMG_FMT_BMP:
    case IMG_FMT_GIF:
    case IMG_FMT_TIFF: return img_other_decode_(err, b, len, name, f, lim, out);
    case IMG_FMT_UNKNOWN: break;
    }
    qie_seterr(err, "%s: not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)",
               name);
    return QIE_EFORMAT;
}

int img_decode_file(char *err, const char *path, const ImgLimits *lim, Image *out) {
    memset(out, 0, sizeof *out);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = read_file_(err, path, IMG_MAX_FILE_BYTES + 1, &buf, &len);
    if (rc) return rc;
    if (len > IMG_MAX_FILE_BYTES) {
        qie_seterr(err, "%s: file larger than the %zu-byte limit", path, IMG_MAX_FILE_BYTES);
        rc = QIE_ELIMIT;
    } else {
        rc = img_decode_mem(err, buf, len, path, lim, out);
    }
    free(buf);
    return rc;
}

static int probe_buf_(char *err, const uint8_t *b, size_t n, const char *path, int *w, int *h) {
    ImgFormat f = img_sniff_(b, n);
    switch (f) {
    case IMG_FMT_JPEG: return img_jpeg_probe_(err, b, n, path, w, h);
    case IMG_FMT_PNG: return img_png_probe_(err, b, n, path, w, h);
    case IMG_FMT_WEBP: return img_webp_probe_(err, b, n, path, w, h);
    case IMG_FMT_BMP:
    case IMG_FMT_GIF:
    case IMG_FMT_TIFF: return QIE_EEOF; /* FFmpeg probes from the whole file */
    case IMG_FMT_UNKNOWN: break;
    }
    if (n == 0) {
        qie_seterr(err, "%s: empty file", path);
        return QIE_EFORMAT;
    }
    qie_seterr(err, "%s: not an image in a supported format (JPEG, PNG, WebP, BMP, GIF, TIFF)",
               path);
    return QIE_EFORMAT;
}

int img_probe(char *err, const char *path, const ImgLimits *lim, int *w, int *h) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        qie_seterr(err, "open %s: %s", path, strerror(e));
        return e;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = read_fd_(err, path, fd, IMG_PROBE_HEAD, &buf, &len);
    if (rc == 0) rc = probe_buf_(err, buf, len, path, w, h);
    if (rc == QIE_EEOF && len == IMG_PROBE_HEAD) {
        /* header longer than the first read: take the whole file and ask again */
        free(buf);
        buf = NULL;
        rc = read_fd_(err, path, fd, IMG_MAX_FILE_BYTES, &buf, &len);
        if (rc == 0) rc = probe_buf_(err, buf, len, path, w, h);
    }
    if (rc == QIE_EEOF) {
        ImgFormat f = img_sniff_(buf, len);
        if (f == IMG_FMT_BMP || f == IMG_FMT_GIF || f == IMG_FMT_TIFF) {
            rc = img_other_probe_(err, buf, len, path, f, w, h);
        } else {
            qie_seterr(err, "%s: %s header is truncated", path, img_format_name_(f));
            rc = QIE_EFORMAT;
        }
    }
    close(fd);
    free(buf);
    if (rc == 0) rc = img_check_dims_(err, path, *w, *h, lim);
    return rc;
}
