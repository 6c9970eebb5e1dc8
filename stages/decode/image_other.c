/* image_other.c: BMP, GIF and TIFF through FFmpeg 5.1 (data_pipeline.md §2.5).
 *
 * Best effort, not a parity path: the first frame is decoded and converted to RGB24 by swscale
 * at the same size (a pure pixel-format conversion: exact for rgb24/bgr24/bgra/pal8/gray
 * sources). Pillow-specific behaviour (GIF transparency and disposal, TIFF photometric
 * oddities, 16-bit TIFF) is not reproduced; the golden set checks simple BMP/GIF/TIFF only.
 * The file is read from memory through a custom AVIOContext and the format is forced from
 * the sniffed magic, so FFmpeg never probes by extension. */
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
#include <stdio.h>
#include <string.h>

#include "err.h"
#include "image_internal.h"

typedef struct {
    const uint8_t *p;
    size_t n, pos;
} MemIO;

static int mem_read_(void *opaque, uint8_t *buf, int size) {
    MemIO *m = opaque;
    if (m->pos >= m->n) return AVERROR_EOF;
    size_t k = m->n - m->pos;
    if (k > (size_t)size) k = (size_t)size;
    memcpy(buf, m->p + m->pos, k);
    m->pos += k;
    return (int)k;
}

static int64_t mem_seek_(void *opaque, int64_t off, int whence) {
    MemIO *m = opaque;
    int64_t base;
    switch (whence & ~AVSEEK_FORCE) {
    case AVSEEK_SIZE: return (int64_t)m->n;
    case SEEK_SET: base = 0; break;
    case SEEK_CUR: base = (int64_t)m->pos; break;
    case SEEK_END: base = (int64_t)m->n; break;
    default: return AVERROR(EINVAL);
    }
    if (base + off < 0 || base + off > (int64_t)m->n) return AVERROR(EINVAL);
    m->pos = (size_t)(base + off);
    return (int64_t)m->pos;
}

static const char *demuxer_(ImgFormat f) {
    switch (f) {
    case IMG_FMT_BMP: return "bmp_pipe";
    case IMG_FMT_GIF: return "gif";
    case IMG_FMT_TIFF: return "tiff_pipe";
    default: return NULL;
    }
}

typedef struct {
    MemIO mem;
    AVIOContext *io;
    AVFormatContext *fmt;
    AVCodecContext *dec;
    AVPacket *pkt;
    AVFrame *frame;
} Ff;

static void ff_close_(Ff *ff) {
    av_frame_free(&ff->frame);
    av_packet_free(&ff->pkt);
    avcodec_free_context(&ff->dec);
    avformat_close_input(&ff->fmt); /* custom IO: does not free pb */
    if (ff->io) av_freep(&ff->io->buffer);
    avio_context_free(&ff->io);
}

static int ff_err_(char *err, const char *name, const char *call, int e) {
    char s[AV_ERROR_MAX_STRING_SIZE];
    av_strerror(e, s, sizeof s);
    qie_seterr(err, "%s: %s: %s", name, call, s);
    return e == AVERROR(ENOMEM) ? QIE_ENOMEM : QIE_EFORMAT;
}

/* Opens the container and the first video stream's decoder; decodes frame 1 into ff->frame. */
static int ff_first_frame_(char *err, Ff *ff, const uint8_t *buf, size_t len, const char *name,
                           ImgFormat f) {
    int e;
    const AVInputFormat *ifmt = av_find_input_format(demuxer_(f));
    if (!ifmt) {
        qie_seterr(err, "%s: %s: FFmpeg has no %s demuxer", name, img_format_name_(f),
                   demuxer_(f));
        return QIE_EUNSUPPORTED;
    }
    ff->mem = (MemIO){buf, len, 0};
    uint8_t *iobuf = av_malloc(32768);
    if (!iobuf) return ff_err_(err, name, "av_malloc", AVERROR(ENOMEM));
    ff->io = avio_alloc_context(iobuf, 32768, 0, &ff->mem, mem_read_, NULL, mem_seek_);
    if (!ff->io) {
        av_free(iobuf);
        return ff_err_(err, name, "avio_alloc_context", AVERROR(ENOMEM));
    }
    ff->fmt = avformat_alloc_context();
    if (!ff->fmt) return ff_err_(err, name, "avformat_alloc_context", AVERROR(ENOMEM));
    ff->fmt->pb = ff->io;
    ff->fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    if ((e = avformat_open_input(&ff->fmt, NULL, ifmt, NULL)) < 0) {
        ff->fmt = NULL; /* freed by avformat_open_input on failure */
        return ff_err_(err, name, "avformat_open_input", e);
    }
    int si = av_find_best_stream(ff->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, NULL, 0);
    if (si < 0) return ff_err_(err, name, "av_find_best_stream", si);
    AVCodecParameters *par = ff->fmt->streams[si]->codecpar;
    const AVCodec *codec = avcodec_find_decoder(par->codec_id);
    if (!codec) {
        qie_seterr(err, "%s: FFmpeg has no decoder for this %s", name, img_format_name_(f));
        return QIE_EUNSUPPORTED;
    }
    ff->dec = avcodec_alloc_context3(codec);
    ff->pkt = av_packet_alloc();
    ff->frame = av_frame_alloc();
    if (!ff->dec || !ff->pkt || !ff->frame) return ff_err_(err, name, "alloc", AVERROR(ENOMEM));
    if ((e = avcodec_parameters_to_context(ff->dec, par)) < 0)
        return ff_err_(err, name, "avcodec_parameters_to_context", e);
    ff->dec->thread_count = 1; /* one worker per core */
    if ((e = avcodec_open2(ff->dec, codec, NULL)) < 0)
        return ff_err_(err, name, "avcodec_open2", e);
    int flushing = 0;
    for (;;) {
        e = avcodec_receive_frame(ff->dec, ff->frame);
        if (e == 0) return 0;
        if (e == AVERROR_EOF) {
            qie_seterr(err, "%s: %s has no decodable frame", name, img_format_name_(f));
            return QIE_EFORMAT;
        }
        if (e != AVERROR(EAGAIN)) return ff_err_(err, name, "avcodec_receive_frame", e);
        if (flushing) {
            qie_seterr(err, "%s: %s decoder returned no frame", name, img_format_name_(f));
            return QIE_EFORMAT;
        }
        e = av_read_frame(ff->fmt, ff->pkt);
        if (e == AVERROR_EOF) {
            flushing = 1;
            if ((e = avcodec_send_packet(ff->dec, NULL)) < 0)
                return ff_err_(err, name, "avcodec_send_packet", e);
            continue;
        }
        if (e < 0) return ff_err_(err, name, "av_read_frame", e);
        if (ff->pkt->stream_index == si) e = avcodec_send_packet(ff->dec, ff->pkt);
        av_packet_unref(ff->pkt);
        if (e < 0) return ff_err_(err, name, "avcodec_send_packet", e);
    }
}

int img_other_probe_(char *err, const uint8_t *buf, size_t len, const char *name, ImgFormat f,
                     int *w, int *h) {
    Ff ff = {0};
    int rc = ff_first_frame_(err, &ff, buf, len, name, f);
    if (rc == 0) {
        *w = ff.frame->width;
        *h = ff.frame->height;
    }
    ff_close_(&ff);
    return rc;
}

int img_other_decode_(char *err, const uint8_t *buf, size_t len, const char *name, ImgFormat f,
                      const ImgLimits *lim, Image *out) {
    Ff ff = {0};
    struct SwsContext *sws = NULL;
    int rc = ff_first_frame_(err, &ff, buf, len, name, f);
    if (rc) goto done;
    AVFrame *fr = ff.frame;
    if ((rc = img_check_dims_(err, name, fr->width, fr->height, lim))) goto done;
    if (fr->format < 0) {
        qie_seterr(err, "%s: %s frame has no pixel format", name, img_format_name_(f));
        rc = QIE_EFORMAT;
        goto done;
    }
    /* same size, so only the format conversion runs; BITEXACT/ACCURATE_RND keep it plain */
    sws = sws_getContext(fr->width, fr->height, fr->format, fr->width, fr->height,
                         AV_PIX_FMT_RGB24,
                         SWS_POINT | SWS_ACCURATE_RND | SWS_BITEXACT | SWS_FULL_CHR_H_INT |
                             SWS_FULL_CHR_H_INP,
                         NULL, NULL, NULL);
    if (!sws) {
        qie_seterr(err, "%s: sws_getContext: cannot convert %s to rgb24", name,
                   av_get_pix_fmt_name(fr->format) ? av_get_pix_fmt_name(fr->format) : "?");
        rc = QIE_EUNSUPPORTED;
        goto done;
    }
    if ((rc = img_alloc_(err, name, fr->width, fr->height, out))) goto done;
    uint8_t *dst[4] = {out->px, NULL, NULL, NULL};
    int dst_stride[4] = {out->w * 3, 0, 0, 0};
    int got = sws_scale(sws, (const uint8_t *const *)fr->data, fr->linesize, 0, fr->height, dst,
                        dst_stride);
    if (got != fr->height) {
        qie_seterr(err, "%s: sws_scale returned %d rows of %d", name, got, fr->height);
        rc = QIE_EFORMAT;
        img_free(out);
    }
done:
    sws_freeContext(sws);
    ff_close_(&ff);
    return rc;
}
