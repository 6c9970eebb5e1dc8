/* make_demo_data: writes the demo dataset: a few dozen generated images of several sizes and
 * aspect ratios, edit pairs (source -> target) and a metadata JSON in VideoX-Fun's format,
 * with one multi-source entry and one deliberately broken entry.
 *   make_demo_data --out DIR [--n 24] [--seed 1]
 * The "edit" is learnable and visible: the target is the source with its colours rotated
 * (R,G,B) -> (G,B,R) and a bright square drawn where the text says. Deterministic from --seed. */
#include <errno.h>
#include <spng.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <turbojpeg.h>

#include "cli.h"
#include "err.h"
#include "log.h"
#include "philox.h"

static uint32_t rnd_(uint64_t seed, uint64_t *ctr) {
    uint64_t i = (*ctr)++;
    return philox_block(seed, 7, i / 4).v[i % 4];
}

/* smooth colour field with a few blobs: something a VAE and a DiT can see */
static void paint_(uint8_t *px, int w, int h, uint64_t seed, uint64_t *ctr) {
    float c0[3], c1[3];
    for (int k = 0; k < 3; k++) { c0[k] = rnd_(seed, ctr) % 256; c1[k] = rnd_(seed, ctr) % 256; }
    int nb = 2 + rnd_(seed, ctr) % 3;
    int bx[5], by[5], br[5];
    uint8_t bc[5][3];
    for (int b = 0; b < nb; b++) {
        bx[b] = rnd_(seed, ctr) % w;
        by[b] = rnd_(seed, ctr) % h;
        br[b] = 4 + rnd_(seed, ctr) % (1 + (w < h ? w : h) / 3);
        for (int k = 0; k < 3; k++) bc[b][k] = (uint8_t)(rnd_(seed, ctr) % 256);
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            float t = (float)(x + y) / (float)(w + h);
            uint8_t *p = px + ((size_t)y * w + x) * 3;
            for (int k = 0; k < 3; k++) p[k] = (uint8_t)(c0[k] * (1 - t) + c1[k] * t);
            for (int b = 0; b < nb; b++) {
                int dx = x - bx[b], dy = y - by[b];
                if (dx * dx + dy * dy < br[b] * br[b]) memcpy(p, bc[b], 3);
            }
        }
}

static void edit_(const uint8_t *src, uint8_t *dst, int w, int h, int corner) {
    for (size_t i = 0; i < (size_t)w * h; i++) {
        dst[i * 3 + 0] = src[i * 3 + 1];
        dst[i * 3 + 1] = src[i * 3 + 2];
        dst[i * 3 + 2] = src[i * 3 + 0];
    }
    int s = (w < h ? w : h) / 4, x0 = corner & 1 ? w - s : 0, y0 = corner & 2 ? h - s : 0;
    for (int y = y0; y < y0 + s; y++)
        for (int x = x0; x < x0 + s; x++) memset(dst + ((size_t)y * w + x) * 3, 250, 3);
}

static int write_jpeg_(char *err, const char *path, const uint8_t *px, int w, int h) {
    tjhandle tj = tjInitCompress();
    unsigned char *buf = NULL;
    unsigned long len = 0;
    int rc = 0;
    if (!tj || tjCompress2(tj, px, w, 0, h, TJPF_RGB, &buf, &len, TJSAMP_420, 90, 0)) {
        qie_seterr(err, "%s: jpeg compress: %s", path, tjGetErrorStr2(tj));
        rc = QIE_EIO;
    } else {
        FILE *f = fopen(path, "wb");
        if (!f || fwrite(buf, 1, len, f) != len || fclose(f)) {
            rc = errno ? errno : QIE_EIO;
            qie_seterr(err, "%s: write: %s", path, strerror(rc));
        }
    }
    tjFree(buf);
    if (tj) tjDestroy(tj);
    return rc;
}

static int write_png_(char *err, const char *path, const uint8_t *px, int w, int h) {
    spng_ctx *ctx = spng_ctx_new(SPNG_CTX_ENCODER);
    FILE *f = fopen(path, "wb");
    int rc = 0;
    if (!ctx || !f) {
        qie_seterr(err, "%s: cannot create", path);
        rc = QIE_EIO;
        goto done;
    }
    struct spng_ihdr ihdr = {.width = (uint32_t)w, .height = (uint32_t)h, .bit_depth = 8, .color_type = SPNG_COLOR_TYPE_TRUECOLOR};
    if ((rc = spng_set_png_file(ctx, f)) || (rc = spng_set_ihdr(ctx, &ihdr)) ||
        (rc = spng_encode_image(ctx, px, (size_t)w * h * 3, SPNG_FMT_PNG, SPNG_ENCODE_FINALIZE))) {
        qie_seterr(err, "%s: png encode: %s", path, spng_strerror(rc));
        rc = QIE_EIO;
    }
done:
    spng_ctx_free(ctx);
    if (f && fclose(f) && !rc) rc = errno;
    return rc;
}

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    const char *out = NULL;
    int64_t n = 24, seed = 1;
    const CliOpt opts[] = {
        {"out", CLI_STR, &out, NULL, "output folder (created)", 0, 0},
        {"n", CLI_INT, &n, "24", "number of edit pairs", 1, 10000},
        {"seed", CLI_INT, &seed, "1", "seed", 0, 1e18},
    };
    const CliSpec spec = {"make_demo_data", "--out DIR [--n N] [--seed S]", NULL, opts, 3, 0};
    log_init("demo-data");
    int rc = cli_parse(err, &spec, argc, argv, NULL, NULL);
    if (rc == 1) return 0;
    if (rc || !out) { log_error("%s", rc ? err : "--out is required"); return 2; }
    char path[4096];
    snprintf(path, sizeof path, "%s/train", out);
    if ((mkdir(out, 0755) && errno != EEXIST) || (mkdir(path, 0755) && errno != EEXIST)) {
        log_error("mkdir %s: %s", path, strerror(errno));
        return 1;
    }
    snprintf(path, sizeof path, "%s/source", out);
    if (mkdir(path, 0755) && errno != EEXIST) { log_error("mkdir %s: %s", path, strerror(errno)); return 1; }
    /* sizes spanning portrait, landscape and square buckets, some not multiples of 16 */
    static const int sizes[][2] = {{96, 96}, {128, 80}, {80, 128}, {112, 64}, {72, 120}, {100, 100}, {144, 96}, {90, 60}};
    static const char *corners[] = {"top left", "top right", "bottom left", "bottom right"};
    snprintf(path, sizeof path, "%s/metadata.json", out);
    FILE *meta = fopen(path, "w");
    if (!meta) { log_error("create %s: %s", path, strerror(errno)); return 1; }
    fprintf(meta, "[\n");
    uint64_t ctr = 0;
    size_t npx = 160 * 160 * 3;
    uint8_t *src = malloc(npx), *src2 = malloc(npx), *dst = malloc(npx);
    for (int64_t i = 0; i < n; i++) {
        int w = sizes[i % 8][0], h = sizes[i % 8][1], corner = (int)(rnd_((uint64_t)seed, &ctr) % 4);
        paint_(src, w, h, (uint64_t)seed, &ctr);
        edit_(src, dst, w, h, corner);
        const char *ext = i % 3 == 2 ? "png" : "jpg";
        char tp[4096], sp[4096], sp2[4096];
        snprintf(tp, sizeof tp, "%s/train/%04lld.%s", out, (long long)i, ext);
        snprintf(sp, sizeof sp, "%s/source/%04lld.%s", out, (long long)i, ext);
        rc = i % 3 == 2 ? write_png_(err, tp, dst, w, h) || write_png_(err, sp, src, w, h)
                        : write_jpeg_(err, tp, dst, w, h) || write_jpeg_(err, sp, src, w, h);
        if (rc) { log_error("%s", err); return 1; }
        int multi = i == 1; /* one entry with two sources */
        if (multi) {
            paint_(src2, 64, 64, (uint64_t)seed + 1, &ctr);
            snprintf(sp2, sizeof sp2, "%s/source/%04lld-b.jpg", out, (long long)i);
            if (write_jpeg_(err, sp2, src2, 64, 64)) { log_error("%s", err); return 1; }
        }
        fprintf(meta, "  {\"file_path\": \"train/%04lld.%s\", \"source_file_path\": [\"source/%04lld.%s\"%s%s%s], "
                      "\"text\": \"rotate the colours and add a white square in the %s corner\", \"type\": \"image\", "
                      "\"width\": %d, \"height\": %d},\n",
                (long long)i, ext, (long long)i, ext, multi ? ", \"source/" : "", multi ? "0001-b.jpg" : "", multi ? "\"" : "",
                corners[corner], w, h);
    }
    /* the broken entry: a target file that is not an image */
    snprintf(path, sizeof path, "%s/train/broken.jpg", out);
    FILE *b = fopen(path, "w");
    if (!b || fputs("this is not a JPEG", b) < 0 || fclose(b)) { log_error("write %s failed", path); return 1; }
    fprintf(meta, "  {\"file_path\": \"train/broken.jpg\", \"source_file_path\": [\"source/0000.jpg\"], "
                  "\"text\": \"a deliberately broken entry\", \"type\": \"image\"}\n]\n");
    if (fclose(meta)) { log_error("write metadata: %s", strerror(errno)); return 1; }
    free(src);
    free(src2);
    free(dst);
    log_info("wrote %lld edit pairs (+1 broken entry) and %s/metadata.json", (long long)n, out);
    return 0;
}
