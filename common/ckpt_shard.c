/* ckpt_shard.c: see ckpt_shard.h and docs/distributed.md "Sharded checkpoints". */
#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_shard.h"
#include "fsutil.h"
#include "err.h"
#include "log.h"
#include "safetensors.h"

/* layout.json of a 20 B-parameter model is a few hundred KB; anything near this is not ours */
#define CKPT_MAX_JSON ((size_t)1 << 30)

#define OUT_PREFIX "diffusion_pytorch_model"

/* ---- arithmetic and the hash ------------------------------------------------------------- */

CkptSeg ckpt_slice(size_t n, int world, int rank) {
    CkptSeg s = {n * (size_t)rank / (size_t)world, n * (size_t)(rank + 1) / (size_t)world};
    return s;
}

void ckpt_range_slices(const DitLayout *lay, int world, int rank, CkptSeg *segs) {
    for (int i = 0; i < lay->nranges; i++) {
        CkptSeg s = ckpt_slice(lay->ranges[i].size, world, rank);
        segs[i] = (CkptSeg){lay->ranges[i].offset + s.start, lay->ranges[i].offset + s.end};
    }
}

typedef struct {
    uint64_t h;
} Fnv;

static void fnv_(Fnv *f, const char *s) {
    for (; *s; s++) {
        f->h ^= (unsigned char)*s;
        f->h *= 0x100000001b3ull;
    }
}

static void fnv_tensor_(Fnv *f, const char *name, size_t offset, int ndim, const uint64_t *shape) {
    char b[64];
    fnv_(f, name);
    snprintf(b, sizeof b, "\t%zu\t", offset);
    fnv_(f, b);
    for (int d = 0; d < ndim; d++) {
        snprintf(b, sizeof b, d ? "x%" PRIu64 : "%" PRIu64, shape[d]);
        fnv_(f, b);
    }
    fnv_(f, "\n");
}

static uint64_t fnv_end_(Fnv *f, size_t num_params) {
    char b[64];
    snprintf(b, sizeof b, "num_params=%zu\n", num_params);
    fnv_(f, b);
    return f->h;
}

uint64_t ckpt_layout_hash(const DitLayout *lay) {
    Fnv f = {0xcbf29ce484222325ull};
    for (int i = 0; i < lay->ntensors; i++) {
        const DitTensorInfo *t = &lay->tensors[i];
        uint64_t sh[2] = {(uint64_t)t->shape[0], (uint64_t)t->shape[1]};
        fnv_tensor_(&f, t->name, t->offset, t->ndim, sh);
    }
    return fnv_end_(&f, lay->num_params);
}

static uint64_t table_hash_(const CkptLayout *l) {
    Fnv f = {0xcbf29ce484222325ull};
    for (int i = 0; i < l->ntensors; i++)
        fnv_tensor_(&f, l->tensors[i].name, l->tensors[i].offset, l->tensors[i].ndim, l->tensors[i].shape);
    return fnv_end_(&f, l->num_params);
}

/* ---- small files -------------------------------------------------------------------------- */

static int write_atomic_(char *err, const char *path, const void *buf, size_t n) {
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp-XXXXXX", path) >= (int)sizeof tmp) {
        qie_seterr(err, "%s: path too long", path);
        return ENAMETOOLONG;
    }
    const char *slash = strrchr(path, '/');
    snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
    if (slash == path) snprintf(dir, sizeof dir, "/");
    int fd = mkstemp(tmp), e = 0;
    if (fd < 0) {
        e = errno;
        qie_seterr(err, "create %s: %s", tmp, strerror(e));
        return e;
    }
    const char *p = buf;
    size_t left = n;
    if (fchmod(fd, 0644)) e = errno;
    while (!e && left) {
        ssize_t w = write(fd, p, left);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            e = w < 0 ? errno : EIO;
            break;
        }
        p += w;
        left -= (size_t)w;
    }
    if (!e && fsync(fd)) e = errno;
    if (close(fd) && !e) e = errno;
    if (!e && rename(tmp, path)) e = errno;
    if (e) {
        unlink(tmp);
        qie_seterr(err, "write %s: %s", path, strerror(e));
        return e;
    }
    return fs_sync_dir(err, dir);
}

/* ---- layout.json -------------------------------------------------------------------------- */

int ckpt_layout_write(char *err, const char *dir, const DitLayout *lay, const char *config_json,
                      const unsigned char *frozen) {
    char path[PATH_MAX], hx[24];
    snprintf(hx, sizeof hx, "%016" PRIx64, ckpt_layout_hash(lay));
    /* one tensor per line: readable, and diffs of two layouts are line diffs */
    size_t cap = 256 + (size_t)lay->ntensors * 256 + (size_t)lay->nranges * 48, n = 0;
    char *b = malloc(cap);
    if (!b) {
        qie_seterr(err, "ckpt_layout_write: out of memory");
        return QIE_ENOMEM;
    }
#define OUT(...) n += (size_t)snprintf(b + n, cap - n, __VA_ARGS__)
    OUT("{\n  \"format\": \"%s\",\n  \"num_params\": %zu,\n  \"names_hash\": \"%s\",\n  \"ranges\": [", CKPT_SHARD_FORMAT,
        lay->num_params, hx);
    for (int i = 0; i < lay->nranges; i++) OUT("%s[%zu, %zu]", i ? ", " : "", lay->ranges[i].offset, lay->ranges[i].size);
    OUT("],\n  \"tensors\": [\n");
    for (int i = 0; i < lay->ntensors; i++) {
        const DitTensorInfo *t = &lay->tensors[i];
        OUT("    {\"name\": \"%s\", \"offset\": %zu, \"shape\": [%lld", t->name, t->offset, (long long)t->shape[0]);
        if (t->ndim == 2) OUT(", %lld", (long long)t->shape[1]);
        OUT("]%s}%s\n", frozen && frozen[i] ? ", \"frozen\": true" : "", i + 1 < lay->ntensors ? "," : "");
    }
    OUT("  ]\n}\n");
#undef OUT
    int rc = 0;
    if (n >= cap) {
        qie_seterr(err, "ckpt_layout_write: table too large");
        rc = QIE_ELIMIT;
    }
    if (!rc && snprintf(path, sizeof path, "%s/layout.json", dir) >= (int)sizeof path) rc = ENAMETOOLONG;
    if (!rc) rc = write_atomic_(err, path, b, n);
    free(b);
    if (!rc && config_json) {
        snprintf(path, sizeof path, "%s/config.json", dir);
        rc = write_atomic_(err, path, config_json, strlen(config_json));
    }
    if (rc) qie_preferr(err, "ckpt_layout_write %s", dir);
    return rc;
}

void ckpt_layout_free(CkptLayout *l) {
    free(l->tensors);
    memset(l, 0, sizeof *l);
}

static int json_size_(const cJSON *v, size_t *out) {
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > 9007199254740992.0 ||
        v->valuedouble != (double)(uint64_t)v->valuedouble)
        return -1;
    *out = (size_t)v->valuedouble;
    return 0;
}

static int parse_hash_(const char *s, uint64_t *out) {
    if (!s || strlen(s) != 16) return -1;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 16);
    if (errno || *end) return -1;
    *out = v;
    return 0;
}

static int cmp_tensor_off_(const void *a, const void *b) {
    const CkptTensor *x = *(const CkptTensor *const *)a, *y = *(const CkptTensor *const *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

int ckpt_layout_read(char *err, const char *dir, CkptLayout *l) {
    memset(l, 0, sizeof *l);
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/layout.json", dir);
    char *txt = NULL;
    if (fs_read_file(err, path, CKPT_MAX_JSON, &txt, NULL)) return QIE_ENOTFOUND;
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    int rc = QIE_EFORMAT;
    const CkptTensor **by_off = NULL;
    const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
    const cJSON *np = cJSON_GetObjectItemCaseSensitive(root, "num_params");
    const cJSON *nh = cJSON_GetObjectItemCaseSensitive(root, "names_hash");
    const cJSON *ts = cJSON_GetObjectItemCaseSensitive(root, "tensors");
    if (!cJSON_IsObject(root) || !cJSON_IsString(fmt) || json_size_(np, &l->num_params) ||
        !cJSON_IsString(nh) || parse_hash_(nh->valuestring, &l->names_hash) || !cJSON_IsArray(ts)) {
        qie_seterr(err, "%s: not a qie layout (needs format, num_params, names_hash, tensors)", path);
        goto done;
    }
    if (strcmp(fmt->valuestring, CKPT_SHARD_FORMAT)) {
        qie_seterr(err, "%s: format \"%s\", this qie reads \"%s\"", path, fmt->valuestring, CKPT_SHARD_FORMAT);
        rc = QIE_EVERSION;
        goto done;
    }
    l->ntensors = cJSON_GetArraySize(ts);
    l->tensors = calloc((size_t)(l->ntensors ? l->ntensors : 1), sizeof *l->tensors);
    by_off = malloc((size_t)(l->ntensors ? l->ntensors : 1) * sizeof *by_off);
    if (!l->tensors || !by_off) {
        qie_seterr(err, "%s: out of memory", path);
        rc = QIE_ENOMEM;
        goto done;
    }
    int i = 0;
    const cJSON *t;
    cJSON_ArrayForEach(t, ts) {
        CkptTensor *d = &l->tensors[i];
        const cJSON *nm = cJSON_GetObjectItemCaseSensitive(t, "name");
        const cJSON *off = cJSON_GetObjectItemCaseSensitive(t, "offset");
        const cJSON *sh = cJSON_GetObjectItemCaseSensitive(t, "shape");
        const cJSON *fz = cJSON_GetObjectItemCaseSensitive(t, "frozen");
        if (!cJSON_IsString(nm) || !*nm->valuestring || strlen(nm->valuestring) >= sizeof d->name ||
            json_size_(off, &d->offset) || !cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > 4) {
            qie_seterr(err, "%s: tensor entry %d is malformed (name, offset, shape of at most 4 dims)", path, i);
            goto done;
        }
        for (const char *c = nm->valuestring; *c; c++)
            if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f || *c == '"' || *c == '\\') {
                qie_seterr(err, "%s: tensor name \"%s\": only printable ASCII without quotes or backslashes", path,
                           nm->valuestring);
                goto done;
            }
        snprintf(d->name, sizeof d->name, "%s", nm->valuestring);
        d->frozen = cJSON_IsTrue(fz);
        d->numel = 1;
        const cJSON *x;
        cJSON_ArrayForEach(x, sh) {
            size_t v;
            if (json_size_(x, &v)) {
                qie_seterr(err, "%s: %s: bad shape", path, d->name);
                goto done;
            }
            d->shape[d->ndim++] = v;
            d->numel *= v;
        }
        if (d->offset > l->num_params || d->numel > l->num_params - d->offset) {
            qie_seterr(err, "%s: %s [%zu, %zu) lies outside the %zu-element buffer", path, d->name, d->offset,
                       d->offset + d->numel, l->num_params);
            goto done;
        }
        by_off[i] = d;
        i++;
    }
    qsort(by_off, (size_t)l->ntensors, sizeof *by_off, cmp_tensor_off_);
    for (int k = 1; k < l->ntensors; k++)
        if (by_off[k - 1]->offset + by_off[k - 1]->numel > by_off[k]->offset) {
            qie_seterr(err, "%s: tensors %s and %s overlap", path, by_off[k - 1]->name, by_off[k]->name);
            goto done;
        }
    if (table_hash_(l) != l->names_hash) {
        qie_seterr(err, "%s: names_hash %016" PRIx64 " does not match its table (%016" PRIx64 "): edited or damaged",
                   path, l->names_hash, table_hash_(l));
        goto done;
    }
    rc = 0;
done:
    free(by_off);
    cJSON_Delete(root);
    if (rc) ckpt_layout_free(l);
    return rc;
}

/* ---- rank files --------------------------------------------------------------------------- */

void ckpt_shard_path(char *out, size_t cap, const char *dir, int rank, int world) {
    snprintf(out, cap, "%s/rank-%05d-of-%05d.safetensors", dir, rank, world);
}

int ckpt_shard_write(char *err, const char *dir, const CkptShard *s) {
    if (!s || s->world < 1 || s->rank < 0 || s->rank >= s->world || s->world > 99999 || s->nsegs < 1 ||
        s->nsegs > CKPT_SHARD_MAX_SEGS || !s->segs || !s->master || !s->exp_avg != !s->exp_avg_sq) {
        qie_seterr(err, "ckpt_shard_write: bad arguments");
        return QIE_EINVAL;
    }
    size_t total = 0;
    for (int i = 0; i < s->nsegs; i++) {
        const CkptSeg *g = &s->segs[i];
        if (g->start > g->end || g->end > s->num_params || (i && g->start < s->segs[i - 1].end)) {
            qie_seterr(err, "ckpt_shard_write: segment %d [%zu, %zu) is not ascending, disjoint and inside [0, %zu)",
                       i, g->start, g->end, s->num_params);
            return QIE_EINVAL;
        }
        total += g->end - g->start;
    }
    /* "s-e,s-e,...": up to 2·20+2 characters per segment */
    size_t cap = (size_t)s->nsegs * 44 + 1, n = 0;
    char *segtxt = malloc(cap);
    StWriter *w = NULL;
    int rc = segtxt ? st_writer_create(err, &w) : QIE_ENOMEM;
    if (!segtxt) qie_seterr(err, "ckpt_shard_write: out of memory");
    if (rc) goto done;
    for (int i = 0; i < s->nsegs; i++)
        n += (size_t)snprintf(segtxt + n, cap - n, "%s%zu-%zu", i ? "," : "", s->segs[i].start, s->segs[i].end);
    char v[64];
    uint64_t shape[1] = {total};
    if ((rc = st_writer_set_metadata(err, w, "qie_format", CKPT_SHARD_FORMAT))) goto done;
    snprintf(v, sizeof v, "%d", s->world);
    if ((rc = st_writer_set_metadata(err, w, "world", v))) goto done;
    snprintf(v, sizeof v, "%d", s->rank);
    if ((rc = st_writer_set_metadata(err, w, "rank", v))) goto done;
    snprintf(v, sizeof v, "%zu", s->num_params);
    if ((rc = st_writer_set_metadata(err, w, "num_params", v))) goto done;
    snprintf(v, sizeof v, "%016" PRIx64, s->names_hash);
    if ((rc = st_writer_set_metadata(err, w, "names_hash", v))) goto done;
    if ((rc = st_writer_set_metadata(err, w, "segments", segtxt))) goto done;
    if (s->step >= 0) {
        snprintf(v, sizeof v, "%" PRId64, s->step);
        if ((rc = st_writer_set_metadata(err, w, "step", v))) goto done;
    }
    if ((rc = st_writer_add(err, w, "master", QIE_DT_F32, 1, shape, s->master, total * 4))) goto done;
    if (s->exp_avg && ((rc = st_writer_add(err, w, "exp_avg", QIE_DT_F32, 1, shape, s->exp_avg, total * 4)) ||
                       (rc = st_writer_add(err, w, "exp_avg_sq", QIE_DT_F32, 1, shape, s->exp_avg_sq, total * 4))))
        goto done;
    char path[PATH_MAX];
    ckpt_shard_path(path, sizeof path, dir, s->rank, s->world);
    rc = st_writer_write(err, w, path);
done:
    if (rc) qie_preferr(err, "ckpt_shard_write (rank %d of %d)", s->rank, s->world);
    st_writer_destroy(&w);
    free(segtxt);
    return rc;
}

/* ---- reader ------------------------------------------------------------------------------- */

typedef struct {
    size_t start, end;
    size_t at;  /* element offset inside the file's tensors */
    int file;
} RdSeg;

struct CkptReader {
    int world;
    size_t num_params;
    uint64_t names_hash;
    int64_t step;
    int has_moments;
    SafeTensors **files;           /* [world] */
    const StTensor *(*t)[3];       /* [world][CkptWhich] */
    RdSeg *segs;
    size_t nsegs;
};

int ckpt_reader_world(const CkptReader *r) { return r->world; }
size_t ckpt_reader_num_params(const CkptReader *r) { return r->num_params; }
uint64_t ckpt_reader_names_hash(const CkptReader *r) { return r->names_hash; }
int ckpt_reader_has_moments(const CkptReader *r) { return r->has_moments; }
int64_t ckpt_reader_step(const CkptReader *r) { return r->step; }

void ckpt_reader_close(CkptReader **rp) {
    if (!rp || !*rp) return;
    CkptReader *r = *rp;
    if (r->files)
        for (int i = 0; i < r->world; i++) st_close(&r->files[i]);
    free(r->files);
    free(r->t);
    free(r->segs);
    free(r);
    *rp = NULL;
}

static int cmp_rdseg_(const void *a, const void *b) {
    const RdSeg *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* Finds the world size of the rank files in dir: 0, QIE_ENOTFOUND or QIE_EMISMATCH. */
static int scan_world_(char *err, const char *dir, int *world) {
    DIR *d = opendir(dir);
    if (!d) {
        int e = errno;
        qie_seterr(err, "open checkpoint folder %s: %s", dir, strerror(e));
        return e == ENOENT ? QIE_ENOTFOUND : e;
    }
    int w = 0, rc = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        int r, ww, len = 0;
        if (sscanf(de->d_name, "rank-%5d-of-%5d.safetensors%n", &r, &ww, &len) != 2 || len != 31 ||
            de->d_name[len])
            continue;
        if (w && ww != w) {
            qie_seterr(err, "%s holds rank files of %d and of %d ranks: a leftover of another run?\nhint: keep only "
                       "the rank-*-of-%05d files of the run that wrote this checkpoint", dir, w, ww, w);
            rc = QIE_EMISMATCH;
            break;
        }
        w = ww;
    }
    closedir(d);
    if (!rc && !w) {
        qie_seterr(err, "%s has no rank-RRRRR-of-WWWWW.safetensors files: not a qie sharded checkpoint", dir);
        rc = QIE_ENOTFOUND;
    }
    *world = w;
    return rc;
}

static int meta_int_(const SafeTensors *st, const char *key, long long lo, long long hi, long long *out) {
    const char *v = st_metadata(st, key);
    if (!v || !*v) return -1;
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || *end || x < lo || x > hi) return -1;
    *out = x;
    return 0;
}

int ckpt_reader_open(char *err, const char *dir, CkptReader **out) {
    if (!out || *out) {
        qie_seterr(err, "ckpt_reader_open: bad arguments");
        return QIE_EINVAL;
    }
    int W = 0, rc = scan_world_(err, dir, &W);
    if (rc) return rc;
    CkptReader *r = calloc(1, sizeof *r);
    if (r) {
        r->world = W;
        r->step = -1;
        r->files = calloc((size_t)W, sizeof *r->files);
        r->t = calloc((size_t)W, sizeof *r->t);
    }
    if (!r || !r->files || !r->t) {
        qie_seterr(err, "ckpt_reader_open: out of memory");
        ckpt_reader_close(&r);
        return QIE_ENOMEM;
    }
    char path[PATH_MAX];
    size_t cap = 0;
    int moments = 0;
    for (int i = 0; i < W; i++) {
        ckpt_shard_path(path, sizeof path, dir, i, W);
        if (access(path, F_OK)) {
            char have[256] = "";
            size_t m = 0;
            for (int k = 0; k < W && m + 16 < sizeof have; k++) {
                char p2[PATH_MAX];
                ckpt_shard_path(p2, sizeof p2, dir, k, W);
                if (!access(p2, F_OK)) m += (size_t)snprintf(have + m, sizeof have - m, "%s%d", m ? "," : "", k);
            }
            qie_seterr(err, "%s is missing (this checkpoint was written by %d ranks; present: %s): the save did not "
                       "complete or the file was deleted", path, W, m ? have : "none");
            rc = QIE_ENOTFOUND;
            goto fail;
        }
        if ((rc = st_open(err, path, &r->files[i]))) {
            rc = rc == QIE_ENOMEM ? rc : QIE_EFORMAT;
            goto fail;
        }
        const SafeTensors *st = r->files[i];
        const char *fmt = st_metadata(st, "qie_format"), *hs = st_metadata(st, "names_hash"),
                   *sg = st_metadata(st, "segments");
        long long world, rank, np, step;
        uint64_t h;
        if (!fmt || strcmp(fmt, CKPT_SHARD_FORMAT) || meta_int_(st, "world", 1, 99999, &world) ||
            meta_int_(st, "rank", 0, 99998, &rank) || meta_int_(st, "num_params", 0, LLONG_MAX, &np) ||
            parse_hash_(hs, &h) || !sg) {
            qie_seterr(err, "%s: not a %s rank file (metadata qie_format, world, rank, num_params, names_hash, "
                       "segments)", path, CKPT_SHARD_FORMAT);
            rc = fmt && strcmp(fmt, CKPT_SHARD_FORMAT) ? QIE_EVERSION : QIE_EFORMAT;
            goto fail;
        }
        if (world != W || rank != i) {
            qie_seterr(err, "%s says it is rank %lld of %lld: renamed or copied from another checkpoint?", path, rank,
                       world);
            rc = QIE_EMISMATCH;
            goto fail;
        }
        if (i == 0) {
            r->num_params = (size_t)np;
            r->names_hash = h;
        } else if ((size_t)np != r->num_params || h != r->names_hash) {
            qie_seterr(err, "%s: num_params %lld / names_hash %s differ from rank 0's %zu / %016" PRIx64
                       ": rank files of different runs", path, np, hs, r->num_params, r->names_hash);
            rc = QIE_EMISMATCH;
            goto fail;
        }
        if (!meta_int_(st, "step", 0, LLONG_MAX, &step)) {
            if (i == 0) r->step = step;
            else if (step != r->step) {
                qie_seterr(err, "%s: step %lld, rank 0 says %" PRId64 ": rank files of different saves", path, step,
                           r->step);
                rc = QIE_EMISMATCH;
                goto fail;
            }
        }
        static const char *const names[3] = {"master", "exp_avg", "exp_avg_sq"};
        for (int k = 0; k < 3; k++) r->t[i][k] = st_find(st, names[k]);
        int has = r->t[i][1] && r->t[i][2];
        if (i == 0) moments = has;
        else if (has != moments) moments = 0; /* mixed: treated as weights only */
        /* segments */
        size_t total = 0;
        for (const char *p = sg; *p;) {
            char *end;
            errno = 0;
            unsigned long long a = strtoull(p, &end, 10), b;
            if (errno || end == p || *end != '-') goto badseg;
            p = end + 1;
            b = strtoull(p, &end, 10);
            if (errno || end == p || (*end && *end != ',') || a > b || b > r->num_params) goto badseg;
            p = *end ? end + 1 : end;
            if (r->nsegs == cap) {
                cap = cap ? 2 * cap : 64;
                RdSeg *ns = realloc(r->segs, cap * sizeof *ns);
                if (!ns) {
                    qie_seterr(err, "ckpt_reader_open: out of memory");
                    rc = QIE_ENOMEM;
                    goto fail;
                }
                r->segs = ns;
            }
            r->segs[r->nsegs++] = (RdSeg){(size_t)a, (size_t)b, total, i};
            total += (size_t)(b - a);
        }
        for (int k = 0; k < 3; k++) {
            const StTensor *t = r->t[i][k];
            if (!t) {
                if (k == 0) {
                    qie_seterr(err, "%s: no \"master\" tensor", path);
                    rc = QIE_EFORMAT;
                    goto fail;
                }
                continue;
            }
            if (t->dtype != QIE_DT_F32 || t->ndim != 1 || t->numel != total) {
                qie_seterr(err, "%s: \"%s\" must be F32 of %zu elements (its segments), it is %s %" PRIu64, path,
                           names[k], total, st_dtype_name(t->dtype), t->numel);
                rc = QIE_EFORMAT;
                goto fail;
            }
        }
        continue;
    badseg:
        qie_seterr(err, "%s: malformed segments \"%.80s\" (s-e,s-e,... within [0, %zu))", path, sg, r->num_params);
        rc = QIE_EFORMAT;
        goto fail;
    }
    r->has_moments = moments;
    /* the segments of all ranks must tile [0, num_params) */
    qsort(r->segs, r->nsegs, sizeof *r->segs, cmp_rdseg_);
    size_t at = 0;
    for (size_t k = 0; k < r->nsegs; k++) {
        const RdSeg *g = &r->segs[k];
        if (g->start == g->end) continue;
        if (g->start != at) {
            qie_seterr(err, "%s: elements [%zu, %zu) are %s (rank %d's segment starts at %zu): a damaged checkpoint",
                       dir, g->start < at ? g->start : at, g->start < at ? at : g->start,
                       g->start < at ? "in two rank files" : "in no rank file", g->file, g->start);
            rc = QIE_EFORMAT;
            goto fail;
        }
        at = g->end;
    }
    if (at != r->num_params) {
        qie_seterr(err, "%s: elements [%zu, %zu) are in no rank file: a damaged checkpoint", dir, at, r->num_params);
        rc = QIE_EFORMAT;
        goto fail;
    }
    *out = r;
    return 0;
fail:
    ckpt_reader_close(&r);
    return rc;
}

int ckpt_reader_check(char *err, const CkptReader *r, const DitLayout *lay) {
    uint64_t h = ckpt_layout_hash(lay);
    if (r->num_params != lay->num_params || r->names_hash != h) {
        qie_seterr(err, "the checkpoint's parameter layout (%zu elements, names_hash %016" PRIx64 ") is not this "
                   "model's (%zu, %016" PRIx64 ")\nhint: resume with the transformer config the checkpoint was trained "
                   "with (its config.json), and a qie with the same layout", r->num_params, r->names_hash,
                   lay->num_params, h);
        return QIE_EMISMATCH;
    }
    return 0;
}

int ckpt_reader_read(char *err, const CkptReader *r, CkptWhich which, size_t start, size_t end, float *dst) {
    if (start > end || end > r->num_params || (int)which < 0 || which > CKPT_EXP_AVG_SQ) {
        qie_seterr(err, "ckpt_reader_read: [%zu, %zu) outside [0, %zu)", start, end, r->num_params);
        return QIE_EINVAL;
    }
    if (which != CKPT_MASTER && !r->has_moments) {
        qie_seterr(err, "this checkpoint holds weights only (no AdamW moments): it cannot resume an optimizer");
        return QIE_ENOTFOUND;
    }
    /* the last segment starting at or before `start` (segments tile the buffer: it holds start) */
    size_t lo = 0, hi = r->nsegs;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (r->segs[mid].start <= start) lo = mid;
        else hi = mid;
    }
    for (size_t k = lo; start < end && k < r->nsegs; k++) {
        const RdSeg *g = &r->segs[k];
        if (g->end <= start) continue;
        size_t a = start, b = end < g->end ? end : g->end;
        const StTensor *t = r->t[g->file][which];
        /* file data may be unaligned for float: memcpy */
        memcpy(dst, (const char *)t->data + (g->at + (a - g->start)) * 4, (b - a) * 4);
        dst += b - a;
        start = b;
    }
    return 0;
}

int ckpt_reader_read_segs(char *err, const CkptReader *r, CkptWhich which, const CkptSeg *segs, int nsegs,
                          float *dst) {
    for (int i = 0; i < nsegs; i++) {
        int rc = ckpt_reader_read(err, r, which, segs[i].start, segs[i].end, dst);
        if (rc) return rc;
        dst += segs[i].end - segs[i].start;
    }
    return 0;
}

/* ---- merge (zero_to_bf16) ----------------------------------------------------------------- */

/* a and b point at slots of sel[] (themselves pointers to tensors): order by name */
static int cmp_slot_name_(const void *a, const void *b) {
    const CkptTensor **x = *(const CkptTensor ***)a, **y = *(const CkptTensor ***)b;
    return strcmp((*x)->name, (*y)->name);
}

/* Removes OUT_PREFIX* files of dir that are not in keep[0..nkeep). */
static void remove_stale_(const char *dir, char (*keep)[64], int nkeep) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (strncmp(de->d_name, OUT_PREFIX, strlen(OUT_PREFIX)) || !strstr(de->d_name, ".safetensors")) continue;
        int kept = 0;
        for (int i = 0; i < nkeep && !kept; i++) kept = !strcmp(de->d_name, keep[i]);
        if (kept) continue;
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (!unlink(p)) log_info("removed %s (left by an earlier export)", p);
    }
    closedir(d);
}

int ckpt_merge(char *err, const char *ckpt_dir, const char *out_dir, const char *max_shard_size, int exclude_frozen,
               int *nshards) {
    CkptLayout lay = {0};
    CkptReader *rd = NULL;
    const CkptTensor **sel = NULL, ***slots = NULL; /* slots: pointers into sel, sorted by name */
    size_t *shard_of = NULL, *pend = NULL;
    char *config = NULL, *idx = NULL;
    char (*names)[64] = NULL;
    uint16_t *buf = NULL;
    float *f32 = NULL;
    StWriter *w = NULL;
    char path[PATH_MAX];
    uint64_t max;
    int rc = st_parse_size(err, max_shard_size, &max);
    if (rc) goto done;
    if ((rc = ckpt_layout_read(err, ckpt_dir, &lay))) goto done;
    if ((rc = ckpt_reader_open(err, ckpt_dir, &rd))) goto done;
    if (ckpt_reader_num_params(rd) != lay.num_params || ckpt_reader_names_hash(rd) != lay.names_hash) {
        qie_seterr(err, "%s: the rank files (%zu elements, %016" PRIx64 ") and layout.json (%zu, %016" PRIx64 ") "
                   "belong to different runs", ckpt_dir, ckpt_reader_num_params(rd), ckpt_reader_names_hash(rd),
                   lay.num_params, lay.names_hash);
        rc = QIE_EMISMATCH;
        goto done;
    }
    snprintf(path, sizeof path, "%s/config.json", ckpt_dir);
    if (fs_read_file(err, path, CKPT_MAX_JSON, &config, NULL)) {
        qie_preferr(err, "the transformer's config.json (from_pretrained needs it)");
        rc = QIE_ENOTFOUND;
        goto done;
    }

    /* select, then plan shards exactly as st_writer_write_sharded / huggingface
     * split_state_dict_into_shards_factory: greedy in layout order on bf16 bytes; a tensor
     * bigger than max gets a shard of its own at once, the open shard is numbered when it closes */
    int n = 0, ns = 0, npend = 0;
    size_t maxnumel = 0;
    uint64_t total = 0, cur = 0;
    sel = malloc((size_t)(lay.ntensors + 1) * sizeof *sel);
    slots = malloc((size_t)(lay.ntensors + 1) * sizeof *slots);
    shard_of = malloc((size_t)(lay.ntensors + 1) * sizeof *shard_of);
    pend = malloc((size_t)(lay.ntensors + 1) * sizeof *pend);
    if (!sel || !slots || !shard_of || !pend) goto oom;
    for (int i = 0; i < lay.ntensors; i++) {
        if (exclude_frozen && lay.tensors[i].frozen) continue;
        sel[n++] = &lay.tensors[i];
    }
    if (!n) {
        qie_seterr(err, "%s: no tensors to export%s", ckpt_dir, exclude_frozen ? " (all are frozen)" : "");
        rc = QIE_EINVAL;
        goto done;
    }
    for (int i = 0; i < n; i++) {
        uint64_t sz = (uint64_t)sel[i]->numel * 2;
        total += sz;
        if (sel[i]->numel > maxnumel) maxnumel = sel[i]->numel;
        if (sz > max) {
            shard_of[i] = (size_t)ns++;
            continue;
        }
        if (cur + sz > max) {
            for (int k = 0; k < npend; k++) shard_of[pend[k]] = (size_t)ns;
            ns++;
            npend = 0;
            cur = 0;
        }
        pend[npend++] = (size_t)i;
        cur += sz;
    }
    if (npend) {
        for (int k = 0; k < npend; k++) shard_of[pend[k]] = (size_t)ns;
        ns++;
    }
    if (ns > 99999) {
        qie_seterr(err, "%d shards do not fit the 5-digit shard names: raise --max_shard_size", ns);
        rc = QIE_ELIMIT;
        goto done;
    }
    names = calloc((size_t)ns + 1, sizeof *names);
    f32 = malloc((maxnumel ? maxnumel : 1) * sizeof *f32);
    if (!names || !f32) goto oom;

    if ((rc = fs_mkdirs(err, out_dir))) goto done;
    snprintf(path, sizeof path, "%s/config.json", out_dir);
    if ((rc = write_atomic_(err, path, config, strlen(config)))) goto done;

    for (int s = 0; s < ns; s++) {
        if (ns == 1) snprintf(names[s], sizeof names[s], OUT_PREFIX ".safetensors");
        else snprintf(names[s], sizeof names[s], OUT_PREFIX "-%05d-of-%05d.safetensors", s + 1, ns);
        size_t elems = 0;
        for (int i = 0; i < n; i++)
            if (shard_of[i] == (size_t)s) elems += sel[i]->numel;
        buf = malloc((elems ? elems : 1) * sizeof *buf);
        if (!buf || (rc = st_writer_create(err, &w))) {
            if (!buf) goto oom;
            goto done;
        }
        size_t at = 0;
        for (int i = 0; i < n; i++) {
            if (shard_of[i] != (size_t)s) continue;
            const CkptTensor *t = sel[i];
            if ((rc = ckpt_reader_read(err, rd, CKPT_MASTER, t->offset, t->offset + t->numel, f32))) goto done;
            for (size_t k = 0; k < t->numel; k++) buf[at + k] = f32_to_bf16(f32[k]);
            if ((rc = st_writer_add(err, w, t->name, QIE_DT_BF16, t->ndim, t->shape, buf + at, t->numel * 2))) goto done;
            at += t->numel;
        }
        snprintf(path, sizeof path, "%s/%s", out_dir, names[s]);
        if ((rc = st_writer_write(err, w, path))) goto done;
        log_info("wrote %s (%zu parameters)", path, elems);
        st_writer_destroy(&w);
        free(buf);
        buf = NULL;
    }
    int nkeep = ns;
    if (ns > 1) {
        /* the index as json.dumps(indent=2, sort_keys=True): names are printable ASCII without
         * quotes or backslashes (ckpt_layout_read), so no escaping is needed */
        for (int i = 0; i < n; i++) slots[i] = &sel[i];
        qsort(slots, (size_t)n, sizeof *slots, cmp_slot_name_);
        size_t cap = 128 + (size_t)n * (sizeof lay.tensors[0].name + 64), len = 0;
        if (!(idx = malloc(cap))) goto oom;
        len += (size_t)snprintf(idx + len, cap - len, "{\n  \"metadata\": {\n    \"total_size\": %" PRIu64
                                "\n  },\n  \"weight_map\": {", total);
        for (int i = 0; i < n; i++) {
            len += (size_t)snprintf(idx + len, cap - len, "%s\"%s\": \"%s\"", i ? ",\n    " : "\n    ",
                                    (*slots[i])->name, names[shard_of[slots[i] - sel]]);
        }
        len += (size_t)snprintf(idx + len, cap - len, "\n  }\n}\n");
        snprintf(path, sizeof path, "%s/" OUT_PREFIX ".safetensors.index.json", out_dir);
        if ((rc = write_atomic_(err, path, idx, len))) goto done;
        snprintf(names[nkeep++], sizeof names[0], OUT_PREFIX ".safetensors.index.json");
    }
    remove_stale_(out_dir, names, nkeep);
    if (nshards) *nshards = ns;
    goto done;
oom:
    qie_seterr(err, "out of memory");
    rc = QIE_ENOMEM;
done:
    if (rc) qie_preferr(err, "merge %s -> %s", ckpt_dir, out_dir);
    st_writer_destroy(&w);
    free(buf);
    free(f32);
    free(names);
    free(idx);
    free(config);
    free(sel);
    free(slots);
    free(shard_of);
    free(pend);
    ckpt_reader_close(&rd);
    ckpt_layout_free(&lay);
    return rc;
}
