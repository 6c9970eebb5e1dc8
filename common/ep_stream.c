/* ep_stream.c: the framed record stream over a pipe (-) or a file.
 *
 * Frame = 16-byte header + payload:  "QIEF" | u32 LE kind | u64 LE payload length.
 *   kind 1 RECORD  payload = one msgpack record
 *   kind 2 END     payload = u64 LE number of records in the stream
 *   kind 3 ABORT   payload = UTF-8 reason (the writer failed; readers must fail too)
 * A stream that stops without END is a failed upstream (QIE_EPEER), never a silent success.
 * Files are written to PATH.tmp.<pid> and renamed to PATH after fsync only on a good END, so a
 * crash never leaves a file that looks complete. */
#include "ep_internal.h"
#include "fsutil.h"
#include "err.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FRAME_MAGIC "QIEF"
#define FRAME_RECORD 1u
#define FRAME_END 2u
#define FRAME_ABORT 3u
/* A record larger than this is treated as corruption rather than an allocation request. */
#define FRAME_MAX ((uint64_t)16 << 30)

typedef struct {
    int fd;
    int own_fd;
    EpMode mode;
    char *path;     /* final path of a written file; NULL for pipes */
    char *tmp_path; /* where it is written until finish */
    char *name;     /* for messages */
    unsigned char *buf;
    size_t cap;
    int done;       /* reader: END or ABORT seen */
} StreamEp;

static void put_u32_(unsigned char *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static void put_u64_(unsigned char *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i)); }
static uint32_t get_u32_(const unsigned char *p) { uint32_t v = 0; for (int i = 3; i >= 0; i--) v = v << 8 | p[i]; return v; }
static uint64_t get_u64_(const unsigned char *p) { uint64_t v = 0; for (int i = 7; i >= 0; i--) v = v << 8 | p[i]; return v; }

/* Reads exactly n bytes: returns n, or fewer at end of file, or -errno. */
static ssize_t read_full_(int fd, void *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    return (ssize_t)got;
}

static int write_full_(int fd, const void *buf, size_t n) {
    size_t put = 0;
    while (put < n) {
        ssize_t w = write(fd, (const char *)buf + put, n - put);
        if (w < 0) {
            if (errno == EINTR) continue;
            return errno;
        }
        put += (size_t)w;
    }
    return 0;
}

static int stream_read_(char *err, void *state, const void **buf, size_t *len) {
    StreamEp *s = state;
    if (s->done) return QIE_EEOF;
    unsigned char hdr[16];
    ssize_t n = read_full_(s->fd, hdr, sizeof hdr);
    if (n < 0) {
        qie_seterr(err, "%s: read: %s", s->name, strerror((int)-n));
        return (int)-n;
    }
    if (n == 0) {
        qie_seterr(err, "%s: the stream ended without an end-of-stream mark (the upstream stage failed or the file is truncated)", s->name);
        return QIE_EPEER;
    }
    if (n < 16) {
        qie_seterr(err, "%s: truncated frame header (%zd of 16 bytes)", s->name, n);
        return QIE_EPEER;
    }
    if (memcmp(hdr, FRAME_MAGIC, 4)) {
        qie_seterr(err, "%s: not a qie record stream (bad frame magic)", s->name);
        return QIE_EFORMAT;
    }
    uint32_t kind = get_u32_(hdr + 4);
    uint64_t plen = get_u64_(hdr + 8);
    if (plen > FRAME_MAX) {
        qie_seterr(err, "%s: frame of %llu bytes is over the limit", s->name, (unsigned long long)plen);
        return QIE_EFORMAT;
    }
    if (plen + 1 > s->cap) {
        /* 64-byte aligned so that tensor payloads (aligned within the record) stay aligned */
        void *nb = NULL;
        size_t cap = (size_t)plen + 1;
        if (posix_memalign(&nb, 64, cap)) {
            qie_seterr(err, "%s: out of memory for a %llu-byte frame", s->name, (unsigned long long)plen);
            return QIE_ENOMEM;
        }
        free(s->buf);
        s->buf = nb;
        s->cap = cap;
    }
    n = read_full_(s->fd, s->buf, (size_t)plen);
    if (n < 0) {
        qie_seterr(err, "%s: read: %s", s->name, strerror((int)-n));
        return (int)-n;
    }
    if ((uint64_t)n < plen) {
        qie_seterr(err, "%s: truncated frame (%zd of %llu bytes)", s->name, n, (unsigned long long)plen);
        return QIE_EPEER;
    }
    switch (kind) {
    case FRAME_RECORD:
        *buf = s->buf;
        *len = (size_t)plen;
        return 0;
    case FRAME_END:
        s->done = 1;
        return QIE_EEOF;
    case FRAME_ABORT:
        s->done = 1;
        s->buf[plen] = 0;
        qie_seterr(err, "%s: the upstream stage failed: %s", s->name, (char *)s->buf);
        return QIE_EPEER;
    default:
        qie_seterr(err, "%s: unknown frame kind %u", s->name, kind);
        return QIE_EFORMAT;
    }
}

static int frame_write_(char *err, StreamEp *s, uint32_t kind, const void *p, size_t n) {
    unsigned char hdr[16];
    memcpy(hdr, FRAME_MAGIC, 4);
    put_u32_(hdr + 4, kind);
    put_u64_(hdr + 8, n);
    int rc = write_full_(s->fd, hdr, sizeof hdr);
    if (!rc && n) rc = write_full_(s->fd, p, n);
    if (rc == EPIPE) {
        qie_seterr(err, "%s: the downstream stage is gone (broken pipe)", s->name);
        return QIE_EPEER;
    }
    if (rc) qie_seterr(err, "%s: write: %s", s->name, strerror(rc));
    return rc;
}

static int stream_write_(char *err, void *state, const void *buf, size_t len) {
    return frame_write_(err, state, FRAME_RECORD, buf, len);
}

/* the folder holding `path` */
static int sync_parent_(char *err, const char *path) {
    char *copy = strdup(path);
    if (!copy) return QIE_ENOMEM;
    int rc = fs_sync_dir(err, dirname(copy));
    free(copy);
    return rc;
}

static int stream_finish_(char *err, void *state, int ok, const char *reason, uint64_t count) {
    StreamEp *s = state;
    int rc;
    if (ok) {
        unsigned char c[8];
        put_u64_(c, count);
        rc = frame_write_(err, s, FRAME_END, c, 8);
    } else {
        const char *why = reason ? reason : "aborted";
        rc = frame_write_(err, s, FRAME_ABORT, why, strlen(why));
        if (s->tmp_path) { /* a failed file is never renamed into place */
            unlink(s->tmp_path);
            return rc;
        }
    }
    if (rc) return rc;
    if (s->tmp_path) {
        if (fsync(s->fd)) {
            rc = errno;
            qie_seterr(err, "%s: fsync: %s", s->tmp_path, strerror(rc));
            return rc;
        }
        if (rename(s->tmp_path, s->path)) {
            rc = errno;
            qie_seterr(err, "rename %s -> %s: %s", s->tmp_path, s->path, strerror(rc));
            return rc;
        }
        free(s->tmp_path);
        s->tmp_path = NULL;
        return sync_parent_(err, s->path);
    }
    return 0;
}

static void stream_close_(void *state) {
    StreamEp *s = state;
    if (!s) return;
    if (s->own_fd && s->fd >= 0) close(s->fd);
    if (s->tmp_path) unlink(s->tmp_path);
    free(s->tmp_path);
    free(s->path);
    free(s->name);
    free(s->buf);
    free(s);
}

static const EpOps stream_ops_ = {"stream", stream_read_, stream_write_, stream_finish_, stream_close_};

int ep_stream_open(char *err, const char *url, EpMode mode, const EpOps **ops, void **state) {
    StreamEp *s = calloc(1, sizeof *s);
    if (!s) return QIE_ENOMEM;
    s->fd = -1;
    s->mode = mode;
    int rc = 0;
    if (!strcmp(url, "-")) {
        s->fd = mode == EP_READ ? 0 : 1;
        if (!(s->name = strdup(mode == EP_READ ? "stdin" : "stdout"))) goto nomem;
        if (mode == EP_WRITE && isatty(1)) {
            qie_seterr(err, "refusing to write binary records to a terminal\nhint: redirect to a file, pipe into another stage, or use qie-cat --print");
            rc = QIE_EINVAL;
            goto fail;
        }
    } else {
        const char *path = !strncmp(url, "file://", 7) ? url + 7 : url;
        if (!(s->name = strdup(path))) goto nomem;
        if (mode == EP_READ) {
            s->fd = open(path, O_RDONLY | O_CLOEXEC);
            if (s->fd < 0) {
                rc = errno;
                qie_seterr(err, "open %s: %s", path, strerror(rc));
                goto fail;
            }
        } else {
            if (!(s->path = strdup(path))) goto nomem;
            if (asprintf(&s->tmp_path, "%s.tmp.%d", path, (int)getpid()) < 0) { s->tmp_path = NULL; goto nomem; }
            s->fd = open(s->tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (s->fd < 0) {
                rc = errno;
                qie_seterr(err, "create %s: %s", s->tmp_path, strerror(rc));
                free(s->tmp_path);
                s->tmp_path = NULL;
                goto fail;
            }
        }
        s->own_fd = 1;
    }
    *ops = &stream_ops_;
    *state = s;
    return 0;
nomem:
    rc = QIE_ENOMEM;
    qie_seterr(err, "endpoint %s: out of memory", url);
fail:
    stream_close_(s);
    return rc;
}
