/* draws.c: the random draws of the objective (train.h has the contract).
 *
 * Philox mode: draw `purpose` of global sample slot s (micro-batch counter · batch + b; with
 * ranks, the global batch position) is the Philox stream (seed, subseq = purpose << 56 |
 * img << 48 | s), element 0 onwards. Nothing is carried from one draw to the next, so a resumed
 * run needs only the slot counter to continue the same streams, and the CUDA twin of rng.h can
 * produce the same numbers on the device.
 * Replay mode: the draws a golden test recorded from PyTorch (names in train.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "philox.h"
#include "rng.h"
#include "safetensors.h"
#include "train.h"

struct Draws {
    uint64_t seed;
    SafeTensors *st;
};

int drw_open(char *err, const char *path, uint64_t seed, Draws **out) {
    Draws *d = calloc(1, sizeof *d);
    if (!d) {
        qie_seterr(err, "draws: out of memory");
        return QIE_ENOMEM;
    }
    d->seed = seed;
    if (path) {
        int rc = st_open(err, path, &d->st);
        if (rc) {
            qie_preferr(err, "--draws");
            free(d);
            return rc;
        }
    }
    *out = d;
    return 0;
}

void drw_close(Draws **pd) {
    if (!pd || !*pd) return;
    st_close(&(*pd)->st);
    free(*pd);
    *pd = NULL;
}

int drw_replaying(const Draws *d) { return d->st != NULL; }

uint64_t drw_subseq(int purpose, int img, uint64_t slot) {
    return ((uint64_t)purpose << 56) | ((uint64_t)(img & 0xff) << 48) | (slot & 0xffffffffffffull);
}

/* row b of tensor `name` (dtype f32 or i64) */
static int row_(char *err, Draws *d, const char *name, int b, QieDtype dt, size_t n, void *out) {
    const StTensor *t = st_find(d->st, name);
    if (!t) {
        qie_seterr(err, "--draws: no tensor '%s' (the run needs more draws than the file holds)", name);
        return QIE_ENOTFOUND;
    }
    size_t rows = t->ndim ? (size_t)t->shape[0] : 1, es = dtype_size(dt);
    if (t->dtype != dt || (size_t)b >= rows || t->numel != rows * n) {
        qie_seterr(err, "--draws: tensor '%s' is %s with %llu elements; need %s rows of %zu (row %d)", name,
                   dtype_name(t->dtype), (unsigned long long)t->numel, dtype_name(dt), n, b);
        return QIE_EMISMATCH;
    }
    memcpy(out, (const char *)t->data + (size_t)b * n * es, n * es);
    return 0;
}

int drw_normal(char *err, Draws *d, int purpose, uint64_t slot, int img, int64_t m, int b, float *out, size_t n) {
    if (!d->st) {
        rng_normal_cpu(out, n, d->seed, drw_subseq(purpose, img, slot), 0);
        return 0;
    }
    char name[96];
    if (purpose == DRW_NOISE) snprintf(name, sizeof name, "noise.%lld", (long long)m);
    else if (img == 0) snprintf(name, sizeof name, "post.target.%lld", (long long)m);
    else snprintf(name, sizeof name, "post.source.%d.%lld", img - 1, (long long)m);
    return row_(err, d, name, b, QIE_DT_F32, n, out);
}

double drw_uniform(Draws *d, int purpose, uint64_t slot) {
    return (double)philox_u01(rng_u32_at(d->seed, drw_subseq(purpose, 0, slot), 0));
}

uint32_t drw_u32(Draws *d, int purpose, uint64_t slot, uint64_t i) {
    return rng_u32_at(d->seed, drw_subseq(purpose, 0, slot), i);
}

int drw_sigma_index(char *err, Draws *d, int64_t m, int b, int64_t *idx) {
    char name[64];
    snprintf(name, sizeof name, "sigma_index.%lld", (long long)m);
    return row_(err, d, name, b, QIE_DT_I64, 1, idx);
}

int drw_text_drop(char *err, Draws *d, int64_t m, int b, int *drop) {
    char name[64];
    int64_t v = 0;
    snprintf(name, sizeof name, "text_drop.%lld", (long long)m);
    int rc = row_(err, d, name, b, QIE_DT_I64, 1, &v);
    *drop = v != 0;
    return rc;
}
