/* tb_writer.c: TensorBoard event files, written by hand (no protobuf, no TensorFlow).
 *
 * A file is a sequence of TFRecords: u64 length (LE), u32 masked CRC32C of those 8 bytes, the
 * payload, u32 masked CRC32C of the payload; masked(c) = ((c >> 15) | (c << 17)) + 0xa282ead8
 * (tensorflow/core/lib/hash/crc32c.h Mask). Each payload is a serialized tensorflow.Event:
 *   Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
 *   Summary { repeated Value value = 1; }   Value { string tag = 1; float simple_value = 2; }
 * The first event carries file_version "brain.Event:2". scripts/golden/train.py reads a file back
 * with the tensorboard package (EventFileLoader) when it is installed. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fsutil.h"
#include "err.h"
#include "train.h"

static uint32_t crc_table_[256];

static void crc_init_(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1; /* Castagnoli, reflected */
        crc_table_[i] = c;
    }
}

uint32_t tb_crc32c(const void *buf, size_t n) {
    if (!crc_table_[1]) crc_init_();
    const uint8_t *p = buf;
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) c = crc_table_[(c ^ p[i]) & 0xff] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

static uint32_t masked_(const void *buf, size_t n) {
    uint32_t c = tb_crc32c(buf, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

struct TbWriter {
    FILE *f;
    char path[4096];
};

/* protobuf wire helpers into a fixed buffer */
typedef struct {
    uint8_t b[1024];
    size_t n;
} Pb;

static void pb_varint_(Pb *p, uint64_t v) {
    do {
        uint8_t byte = v & 0x7f;
        v >>= 7;
        p->b[p->n++] = byte | (v ? 0x80 : 0);
    } while (v);
}
static void pb_bytes_(Pb *p, int field, const void *s, size_t n) {
    pb_varint_(p, ((uint64_t)field << 3) | 2);
    pb_varint_(p, n);
    memcpy(p->b + p->n, s, n);
    p->n += n;
}
static void pb_fixed_(Pb *p, int field, const void *le, int bytes) { /* wire type 1 (8) or 5 (4) */
    pb_varint_(p, ((uint64_t)field << 3) | (bytes == 8 ? 1 : 5));
    memcpy(p->b + p->n, le, bytes); /* x86-64 and aarch64 are little-endian, as the wire format */
    p->n += bytes;
}

static int record_(char *err, TbWriter *w, const Pb *ev) {
    uint64_t len = ev->n;
    uint32_t c1 = masked_(&len, 8), c2 = masked_(ev->b, ev->n);
    if (fwrite(&len, 8, 1, w->f) != 1 || fwrite(&c1, 4, 1, w->f) != 1 || fwrite(ev->b, 1, ev->n, w->f) != ev->n ||
        fwrite(&c2, 4, 1, w->f) != 1) {
        qie_seterr(err, "tensorboard: write %s: %s", w->path, strerror(errno));
        return errno ? errno : QIE_EIO;
    }
    return 0;
}

int tb_open(char *err, const char *dir, TbWriter **out) {
    int rc = fs_mkdirs(err, dir);
    if (rc) return rc;
    TbWriter *w = calloc(1, sizeof *w);
    if (!w) return QIE_ENOMEM;
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    snprintf(w->path, sizeof w->path, "%s/events.out.tfevents.%lld.%s.%d.0", dir, (long long)time(NULL), host,
             (int)getpid());
    if (!(w->f = fopen(w->path, "wb"))) {
        qie_seterr(err, "tensorboard: create %s: %s", w->path, strerror(errno));
        rc = errno;
        free(w);
        return rc;
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double wall = ts.tv_sec + ts.tv_nsec * 1e-9;
    Pb ev = {.n = 0};
    pb_fixed_(&ev, 1, &wall, 8);
    pb_bytes_(&ev, 3, "brain.Event:2", 13);
    if ((rc = record_(err, w, &ev)) || (rc = tb_flush(err, w))) {
        tb_close(&w);
        return rc;
    }
    *out = w;
    return 0;
}

int tb_scalar(char *err, TbWriter *w, const char *tag, float value, int64_t step, double wall_time) {
    size_t tl = strlen(tag);
    if (tl > 512) tl = 512;
    Pb val = {.n = 0}, sum = {.n = 0}, ev = {.n = 0};
    pb_bytes_(&val, 1, tag, tl);
    pb_fixed_(&val, 2, &value, 4);
    pb_bytes_(&sum, 1, val.b, val.n);
    pb_fixed_(&ev, 1, &wall_time, 8);
    pb_varint_(&ev, 2 << 3);
    pb_varint_(&ev, (uint64_t)step);
    pb_bytes_(&ev, 5, sum.b, sum.n);
    return record_(err, w, &ev);
}

int tb_flush(char *err, TbWriter *w) {
    if (fflush(w->f)) {
        qie_seterr(err, "tensorboard: flush %s: %s", w->path, strerror(errno));
        return errno ? errno : QIE_EIO;
    }
    return 0;
}

void tb_close(TbWriter **pw) {
    if (!pw || !*pw) return;
    if ((*pw)->f) fclose((*pw)->f);
    free(*pw);
    *pw = NULL;
}
