/* test_safetensors.c: common/safetensors.c against the Python package's own files.
 *
 * Golden files come from scripts/golden/safetensors_fixtures.py (tests/golden/safetensors/):
 * every fixture is read and compared with expected.json; then qie's writer is fed the same
 * tensors and must reproduce the Python-written bytes exactly, single file and sharded. The
 * other direction: test_qie_written compares qie's output with tests/golden/safetensors/
 * qie_written/, which the fixture script loads with the Python package (regenerate with
 * QIE_REGEN_GOLDEN=1). Hostile headers must fail with a message, never crash: run this under
 * ASan too (make SAN=1). */
#include "dtype.h"
#include "err.h"
#include "safetensors.h"
#include "testlib.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <unistd.h>

static char err[QIE_ERR_LEN];

/* ---- helpers ------------------------------------------------------------------------------ */

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            char *q = realloc(buf, cap + 1);
            if (!q) { free(buf); fclose(f); return NULL; }
            buf = q;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static int files_equal(const char *a, const char *b) {
    size_t la = 0, lb = 0;
    char *x = slurp(a, &la), *y = slurp(b, &lb);
    int eq = x && y && la == lb && !memcmp(x, y, la);
    if (x && y && !eq) {
        size_t i = 0;
        while (i < la && i < lb && x[i] == y[i]) i++;
        fprintf(stderr, "  %s vs %s: %zu vs %zu bytes, first difference at byte %zu\n", a, b, la, lb, i);
    }
    free(x);
    free(y);
    return eq;
}

static void rm_rf(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char p[4096];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (unlink(p)) rm_rf(p);
    }
    closedir(d);
    rmdir(dir);
}

static int count_files(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) n += de->d_name[0] != '.';
    closedir(d);
    return n;
}

static uint64_t fnv1a64(const void *p, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= ((const uint8_t *)p)[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static cJSON *expected(void) {
    static cJSON *e;
    if (e) return e;
    char p[1024];
    size_t n;
    snprintf(p, sizeof p, "%s/safetensors/expected.json", test_golden_dir());
    char *t = slurp(p, &n);
    if (!t) { fprintf(stderr, "cannot read %s\n", p); exit(2); }
    e = cJSON_ParseWithLength(t, n);
    free(t);
    if (!e) { fprintf(stderr, "bad JSON in %s\n", p); exit(2); }
    return e;
}

static void golden_path(char *out, size_t cap, const char *rel) {
    snprintf(out, cap, "%s/safetensors/%s", test_golden_dir(), rel);
}

static double decode(const StTensor *t, size_t i) {
    const uint8_t *p = (const uint8_t *)t->data + i * dtype_size(t->dtype);
    uint16_t h;
    float f;
    double d;
    switch (t->dtype) {
    case QIE_DT_F16: memcpy(&h, p, 2); return f16_to_f32(h);
    case QIE_DT_BF16: memcpy(&h, p, 2); return bf16_to_f32(h);
    case QIE_DT_F32: memcpy(&f, p, 4); return f;
    case QIE_DT_F64: memcpy(&d, p, 8); return d;
    default: return NAN;
    }
}

/* Compares one tensor with its expected.json entry. */
static void check_tensor(const StTensor *t, const cJSON *e) {
    CHECK(t != NULL);
    if (!t) return;
    const char *dt = cJSON_GetStringValue(cJSON_GetObjectItem(e, "dtype"));
    CHECK(dt && !strcmp(st_dtype_name(t->dtype), dt), "%s: %s vs %s", t->name, st_dtype_name(t->dtype), dt);
    const cJSON *shape = cJSON_GetObjectItem(e, "shape");
    CHECK(cJSON_GetArraySize(shape) == t->ndim, "%s: ndim", t->name);
    uint64_t numel = 1;
    for (int d = 0; d < t->ndim && d < cJSON_GetArraySize(shape); d++) {
        CHECK(t->shape[d] == (uint64_t)cJSON_GetArrayItem(shape, d)->valuedouble, "%s dim %d", t->name, d);
        numel *= t->shape[d];
    }
    CHECK(t->numel == numel, "%s numel", t->name);
    CHECK(t->nbytes == (size_t)cJSON_GetObjectItem(e, "nbytes")->valuedouble, "%s nbytes", t->name);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fnv1a64(t->data, t->nbytes));
    CHECK(!strcmp(hex, cJSON_GetStringValue(cJSON_GetObjectItem(e, "fnv1a64"))), "%s checksum", t->name);
    const char *head = cJSON_GetStringValue(cJSON_GetObjectItem(e, "head"));
    char got[40] = "";
    for (size_t i = 0; i < t->nbytes && i < 16; i++)
        snprintf(got + 2 * i, 3, "%02x", ((const uint8_t *)t->data)[i]);
    CHECK(head && !strcmp(got, head), "%s head %s vs %s", t->name, got, head);
    const cJSON *vals = cJSON_GetObjectItem(e, "values"), *v;
    size_t i = 0;
    cJSON_ArrayForEach(v, vals) {
        double x = decode(t, i++);
        if (cJSON_IsNumber(v)) CHECK(x == v->valuedouble, "%s[%zu] %.9g vs %.9g", t->name, i - 1, x, v->valuedouble);
        else if (!strcmp(v->valuestring, "nan")) CHECK(isnan(x), "%s[%zu]", t->name, i - 1);
        else CHECK(isinf(x) && (x < 0) == (v->valuestring[0] == '-'), "%s[%zu] %s", t->name, i - 1, v->valuestring);
    }
}

/* ---- reading the fixtures ----------------------------------------------------------------- */

static void test_read_fixtures(void) {
    const cJSON *file;
    int nfiles = 0;
    cJSON_ArrayForEach(file, cJSON_GetObjectItem(expected(), "files")) {
        char p[1024];
        golden_path(p, sizeof p, file->string);
        SafeTensors *st = NULL;
        CHECK_RC(st_open(err, p, &st), err);
        if (!st) continue;
        nfiles++;
        const cJSON *tensors = cJSON_GetObjectItem(file, "tensors"), *te;
        CHECK((int)st_count(st) == cJSON_GetArraySize(tensors), "%s count", p);
        cJSON_ArrayForEach(te, tensors) check_tensor(st_find(st, te->string), te);
        /* file order is ascending offsets, contiguous, and every tensor is findable */
        uint64_t off = 0;
        for (size_t i = 0; i < st_count(st); i++) {
            const StTensor *t = st_tensor_at(st, i);
            CHECK(t->offset == off && st_find(st, t->name) == t, "%s", t->name);
            off += t->nbytes;
        }
        CHECK(st_tensor_at(st, st_count(st)) == NULL);
        CHECK(st_find(st, "no.such.tensor") == NULL);
        CHECK(st_header_len(st) % 8 == 0);
        const cJSON *meta = cJSON_GetObjectItem(file, "metadata"), *m;
        CHECK((int)st_metadata_count(st) == cJSON_GetArraySize(meta));
        cJSON_ArrayForEach(m, meta) {
            const char *v = st_metadata(st, m->string);
            CHECK(v && !strcmp(v, m->valuestring), "metadata %s", m->string);
        }
        st_close(&st);
        CHECK(st == NULL);
    }
    CHECK(nfiles >= 7, "%d files", nfiles);
    st_close(NULL); /* NULL-safe */
}

/* qie's writer, fed the tensors of a Python-written file, must write the same bytes. */
static void test_write_matches_python(void) {
    char src[1024], tmp[512], out[1024];
    golden_path(src, sizeof src, "all_dtypes.safetensors");
    test_tmpdir(tmp, sizeof tmp);
    snprintf(out, sizeof out, "%s/all_dtypes.safetensors", tmp);
    SafeTensors *st = NULL;
    StWriter *w = NULL;
    CHECK_RC(st_open(err, src, &st), err);
    CHECK_RC(st_writer_create(err, &w), err);
    if (st && w) {
        /* add in reverse file order: the writer must sort like the reference */
        for (size_t i = st_count(st); i-- > 0;) {
            const StTensor *t = st_tensor_at(st, i);
            CHECK_RC(st_writer_add(err, w, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes), err);
        }
        CHECK_RC(st_writer_write(err, w, out), err);
        CHECK(files_equal(src, out));
        CHECK(count_files(tmp) == 1, "temp file left behind");
        struct stat sb;
        CHECK(!stat(out, &sb) && (sb.st_mode & 0777) == 0644);
    }
    st_writer_destroy(&w);
    CHECK(w == NULL);
    st_writer_destroy(NULL);
    st_close(&st);
    rm_rf(tmp);
}

static void test_sharded_read(void) {
    const cJSON *sh = cJSON_GetObjectItem(expected(), "sharded");
    const cJSON *files = cJSON_GetObjectItem(expected(), "files");
    char dir[1024], idx[1100];
    golden_path(dir, sizeof dir, "sharded");
    snprintf(idx, sizeof idx, "%s/%s.safetensors.index.json", dir,
             cJSON_GetStringValue(cJSON_GetObjectItem(sh, "prefix")));
    for (int via_index = 0; via_index < 2; via_index++) {
        StModel *m = NULL;
        CHECK_RC(st_model_open(err, via_index ? idx : dir, &m), err);
        if (!m) continue;
        const cJSON *order = cJSON_GetObjectItem(sh, "order"), *nm;
        CHECK((int)st_model_count(m) == cJSON_GetArraySize(order));
        CHECK((int)st_model_shard_count(m) == cJSON_GetObjectItem(sh, "nshards")->valueint);
        cJSON_ArrayForEach(nm, order) {
            const StTensor *t = st_model_find(m, nm->valuestring);
            CHECK(t != NULL, "%s", nm->valuestring);
            /* find its shard's expected entry */
            for (size_t s = 0; t && s < st_model_shard_count(m); s++) {
                if (st_find(st_model_shard(m, s), t->name) != t) continue;
                char key[512];
                snprintf(key, sizeof key, "sharded/%s", st_model_shard_name(m, s));
                const cJSON *fe = cJSON_GetObjectItem(cJSON_GetObjectItem(files, key), "tensors");
                check_tensor(t, cJSON_GetObjectItem(fe, t->name));
            }
        }
        for (size_t i = 0; i < st_model_count(m); i++)
            CHECK(st_model_find(m, st_model_tensor_at(m, i)->name) == st_model_tensor_at(m, i));
        CHECK(st_model_find(m, "absent") == NULL);
        st_model_close(&m);
        CHECK(m == NULL);
    }
    /* a single file opens as a one-shard model */
    char one[1024];
    golden_path(one, sizeof one, "all_dtypes.safetensors");
    StModel *m = NULL;
    CHECK_RC(st_model_open(err, one, &m), err);
    CHECK(st_model_shard_count(m) == 1 && st_model_find(m, "scalar.f32") != NULL);
    CHECK(m && !strcmp(st_model_shard_name(m, 0), "all_dtypes.safetensors"));
    st_model_close(&m);
    st_model_close(NULL);
}

/* The same tensors, in the same insertion order, through st_writer_write_sharded: every shard
 * and the index must match what huggingface_hub + safetensors + diffusers' json.dumps wrote. */
static void test_sharded_write_matches_python(void) {
    const cJSON *sh = cJSON_GetObjectItem(expected(), "sharded");
    char dir[1024], tmp[512], a[1400], b[1400];
    golden_path(dir, sizeof dir, "sharded");
    test_tmpdir(tmp, sizeof tmp);
    StModel *m = NULL;
    StWriter *w = NULL;
    CHECK_RC(st_model_open(err, dir, &m), err);
    CHECK_RC(st_writer_create(err, &w), err);
    if (m && w) {
        const cJSON *nm;
        cJSON_ArrayForEach(nm, cJSON_GetObjectItem(sh, "order")) {
            const StTensor *t = st_model_find(m, nm->valuestring);
            if (t) CHECK_RC(st_writer_add(err, w, t->name, t->dtype, t->ndim, t->shape, t->data, t->nbytes), err);
        }
        int ns = 0;
        CHECK_RC(st_writer_write_sharded(err, w, tmp, cJSON_GetStringValue(cJSON_GetObjectItem(sh, "prefix")),
                                         cJSON_GetStringValue(cJSON_GetObjectItem(sh, "max_shard_size")), &ns), err);
        CHECK(ns == cJSON_GetObjectItem(sh, "nshards")->valueint, "%d shards", ns);
        const cJSON *f;
        cJSON_ArrayForEach(f, cJSON_GetObjectItem(sh, "files")) {
            snprintf(a, sizeof a, "%s/%s", dir, f->valuestring);
            snprintf(b, sizeof b, "%s/%s", tmp, f->valuestring);
            CHECK(files_equal(a, b), "%s", f->valuestring);
        }
        CHECK(count_files(tmp) == cJSON_GetArraySize(cJSON_GetObjectItem(sh, "files")));
        /* and it reads back */
        StModel *r = NULL;
        CHECK_RC(st_model_open(err, tmp, &r), err);
        CHECK(st_model_count(r) == st_model_count(m));
        st_model_close(&r);

        /* one shard: <prefix>.safetensors and no index, as diffusers does */
        char tmp2[512];
        test_tmpdir(tmp2, sizeof tmp2);
        CHECK_RC(st_writer_write_sharded(err, w, tmp2, "model", "80GB", &ns), err);
        CHECK(ns == 1 && count_files(tmp2) == 1);
        snprintf(b, sizeof b, "%s/model.safetensors", tmp2);
        SafeTensors *st = NULL;
        CHECK_RC(st_open(err, b, &st), err);
        CHECK(st_count(st) == st_model_count(m));
        st_close(&st);
        CHECK_RC(st_model_open(err, tmp2, &r), err);
        st_model_close(&r);
        /* every tensor bigger than the limit: one shard each */
        CHECK_RC(st_writer_write_sharded(err, w, tmp2, "tiny", "1", &ns), err);
        /* 9 tensors over 1 byte get a shard each; the empty one opens the only shared shard */
        CHECK(ns == 10, "%d", ns);
        rm_rf(tmp2);
    }
    st_writer_destroy(&w);
    st_model_close(&m);
    rm_rf(tmp);
}

static void test_parse_size(void) {
    static const struct { const char *s; uint64_t v; } ok[] = {
        {"80GB", 80000000000ull}, {"500MB", 500000000ull}, {"10KB", 10000ull}, {"5GiB", 5ull << 30},
        {"1TB", 1000000000000ull}, {" 2 mb ", 2000000ull}, {"0.2KB", 200}, {"1.5GB", 1500000000ull},
        {"123", 123}, {"7B", 7}, {"3kib", 3072}, {"1.1GB", 1100000000ull}, {"0KB", 0},
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        uint64_t v = 1;
        CHECK_RC(st_parse_size(err, ok[i].s, &v), err);
        CHECK(v == ok[i].v, "%s -> %llu", ok[i].s, (unsigned long long)v);
    }
    static const char *bad[] = {"", "GB", "1.GB.", "-1GB", "1e3KB", "abc", "99999999999TB", "1 2GB", ".5"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        uint64_t v;
        CHECK(st_parse_size(err, bad[i], &v) == QIE_EINVAL, "\"%s\" accepted", bad[i]);
    }
}

/* ---- qie-written golden (loaded by the Python script) ------------------------------------- */

static void test_qie_written(void) {
    static const struct { const char *name; QieDtype dt; int ndim; uint64_t shape[3]; const char *torch; } T[] = {
        {"transformer_blocks.0.attn.to_q.weight", QIE_DT_BF16, 2, {8, 6}, "torch.bfloat16"},
        {"transformer_blocks.0.attn.to_q.bias", QIE_DT_F32, 1, {8}, "torch.float32"},
        {"name with \"quotes\", \\backslash\\ and \x7f", QIE_DT_U8, 1, {5}, "torch.uint8"},
        {"unicode.\xc3\xa9\xe2\x9c\x93\xf0\x9f\x98\x80", QIE_DT_I16, 2, {2, 3}, "torch.int16"},
        {"ctl.\x01\x1f\t\n", QIE_DT_I8, 1, {3}, "torch.int8"},
        {"big", QIE_DT_F64, 2, {5, 8}, "torch.float64"},
        {"scalar", QIE_DT_F16, 0, {0}, "torch.float16"},
        {"empty", QIE_DT_BF16, 3, {2, 0, 4}, "torch.bfloat16"},
        {"flags", QIE_DT_BOOL, 1, {4}, "torch.bool"},
        {"f8", QIE_DT_F8_E4M3, 2, {3, 3}, "torch.float8_e4m3fn"},
        {"counts", QIE_DT_U64, 1, {3}, "torch.uint64"},
        {"idx", QIE_DT_I32, 2, {4, 4}, "torch.int32"},
    };
    enum { NT = sizeof T / sizeof *T };
    const char *prefix = "qie_model", *maxs = "0.15KB";
    uint8_t *data[NT];
    char tmp[1024], gold[1024], a[1400], b[1400];
    int regen = getenv("QIE_REGEN_GOLDEN") != NULL;
    golden_path(gold, sizeof gold, "qie_written");
    if (regen) {
        rm_rf(gold);
        CHECK(mkdir(gold, 0755) == 0, "mkdir %s: %s", gold, strerror(errno));
        snprintf(tmp, sizeof tmp, "%s", gold);
    } else {
        test_tmpdir(tmp, sizeof tmp);
    }
    StWriter *w = NULL;
    CHECK_RC(st_writer_create(err, &w), err);
    CHECK_RC(st_writer_set_metadata(err, w, "qie.step", "12"), err);
    CHECK_RC(st_writer_set_metadata(err, w, "qie.note", "caf\xc3\xa9 \"quoted\"\n"), err);
    CHECK_RC(st_writer_set_metadata(err, w, "a.first", ""), err);
    for (int i = 0; i < NT; i++) {
        uint64_t numel = 1;
        for (int d = 0; d < T[i].ndim; d++) numel *= T[i].shape[d];
        size_t nb = (size_t)numel * dtype_size(T[i].dt);
        data[i] = malloc(nb ? nb : 1);
        /* the pattern the fixture script checks; bools must be 0/1 and f8 anything */
        for (size_t k = 0; k < nb; k++) data[i][k] = (uint8_t)((31 * k + 7 * (size_t)i + 3) & 0xff);
        if (T[i].dt == QIE_DT_BOOL)
            for (size_t k = 0; k < nb; k++) data[i][k] = (uint8_t)((31 * k + 7 * (size_t)i + 3) & 0xff) & 1;
        CHECK_RC(st_writer_add(err, w, T[i].name, T[i].dt, T[i].ndim, T[i].shape, data[i], nb), err);
    }
    int ns = 0;
    CHECK_RC(st_writer_write_sharded(err, w, tmp, prefix, maxs, &ns), err);
    CHECK(ns > 2, "%d shards", ns);

    /* spec.json: what the Python side needs to check the files (cJSON's output is stable) */
    cJSON *spec = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(spec, "tensors");
    cJSON_AddStringToObject(spec, "prefix", prefix);
    cJSON_AddStringToObject(spec, "max_shard_size", maxs);
    cJSON *meta = cJSON_AddObjectToObject(spec, "metadata");
    cJSON_AddStringToObject(meta, "a.first", "");
    cJSON_AddStringToObject(meta, "format", "pt");
    cJSON_AddStringToObject(meta, "qie.note", "caf\xc3\xa9 \"quoted\"\n");
    cJSON_AddStringToObject(meta, "qie.step", "12");
    for (int i = 0; i < NT; i++) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "name", T[i].name);
        cJSON_AddStringToObject(o, "torch_dtype", T[i].torch);
        cJSON *sh = cJSON_AddArrayToObject(o, "shape");
        for (int d = 0; d < T[i].ndim; d++) cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)T[i].shape[d]));
        cJSON_AddItemToArray(arr, o);
    }
    char *text = cJSON_Print(spec);
    snprintf(a, sizeof a, "%s/spec.json", tmp);
    FILE *f = fopen(a, "w");
    CHECK(f && fputs(text, f) >= 0 && fputs("\n", f) >= 0 && fclose(f) == 0);
    free(text);
    cJSON_Delete(spec);

    /* read back: values and metadata */
    StModel *m = NULL;
    CHECK_RC(st_model_open(err, tmp, &m), err);
    for (int i = 0; m && i < NT; i++) {
        const StTensor *t = st_model_find(m, T[i].name);
        CHECK(t && t->dtype == T[i].dt && t->ndim == T[i].ndim, "%s", T[i].name);
        if (t) CHECK(!t->nbytes || !memcmp(t->data, data[i], t->nbytes), "%s bytes", T[i].name);
    }
    if (m) {
        const SafeTensors *s0 = st_model_shard(m, 0);
        CHECK(st_metadata_count(s0) == 4);
        CHECK(st_metadata(s0, "qie.note") && !strcmp(st_metadata(s0, "qie.note"), "caf\xc3\xa9 \"quoted\"\n"));
        CHECK(st_metadata(s0, "format") && !strcmp(st_metadata(s0, "format"), "pt"));
    }
    st_model_close(&m);

    if (!regen) {
        DIR *d = opendir(gold);
        CHECK(d != NULL, "%s missing: run QIE_REGEN_GOLDEN=1 %s", gold, "build/tests/test_safetensors");
        struct dirent *de;
        int n = 0;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.') continue;
            n++;
            snprintf(a, sizeof a, "%s/%s", gold, de->d_name);
            snprintf(b, sizeof b, "%s/%s", tmp, de->d_name);
            CHECK(files_equal(a, b), "%s", de->d_name);
        }
        if (d) closedir(d);
        CHECK(n == count_files(tmp), "%d golden files vs %d written", n, count_files(tmp));
        rm_rf(tmp);
    }
    st_writer_destroy(&w);
    for (int i = 0; i < NT; i++) free(data[i]);
}

static void test_writer_errors(void) {
    StWriter *w = NULL;
    uint64_t shape[2] = {2, 2};
    float x[4] = {0};
    char tmp[512], p[1024];
    test_tmpdir(tmp, sizeof tmp);
    snprintf(p, sizeof p, "%s/x.safetensors", tmp);
    CHECK_RC(st_writer_create(err, &w), err);
    CHECK(st_writer_add(err, w, "a", QIE_DT_F32, 2, shape, x, 15) == QIE_EINVAL);
    CHECK(strstr(err, "a") != NULL);
    CHECK(st_writer_add(err, w, "a", QIE_DT_C64, 1, shape, x, 16) == QIE_EUNSUPPORTED);
    CHECK(st_writer_add(err, w, "a", QIE_DT_F4, 1, shape, x, 1) == QIE_EUNSUPPORTED);
    CHECK(st_writer_add(err, w, "bad\xff", QIE_DT_F32, 2, shape, x, 16) == QIE_EINVAL);
    CHECK(st_writer_add(err, w, "__metadata__", QIE_DT_F32, 2, shape, x, 16) == QIE_EINVAL);
    uint64_t huge[2] = {UINT64_MAX / 2, 3};
    CHECK(st_writer_add(err, w, "h", QIE_DT_F32, 2, huge, x, 16) == QIE_EINVAL);
    CHECK_RC(st_writer_add(err, w, "a", QIE_DT_F32, 2, shape, x, 16), err);
    CHECK_RC(st_writer_add(err, w, "a", QIE_DT_F32, 2, shape, x, 16), err);
    CHECK(st_writer_write(err, w, p) == QIE_EINVAL && strstr(err, "duplicate"), "%s", err);
    CHECK(st_writer_write_sharded(err, w, tmp, "m", "10KB", NULL) == QIE_EINVAL);
    CHECK(st_writer_write_sharded(err, w, tmp, "m", "ten", NULL) == QIE_EINVAL);
    CHECK(st_writer_write_sharded(err, w, tmp, "../m", "10KB", NULL) == QIE_EINVAL);
    CHECK(count_files(tmp) == 0, "a failed write left files");
    st_writer_destroy(&w);
    CHECK_RC(st_writer_create(err, &w), err);
    snprintf(p, sizeof p, "%s/no/such/dir/x.safetensors", tmp);
    CHECK(st_writer_write(err, w, p) == ENOENT, "%s", err);
    /* an empty writer makes a valid file holding only metadata */
    snprintf(p, sizeof p, "%s/empty.safetensors", tmp);
    CHECK_RC(st_writer_write(err, w, p), err);
    SafeTensors *st = NULL;
    CHECK_RC(st_open(err, p, &st), err);
    CHECK(st_count(st) == 0 && st_metadata(st, "format"));
    st_close(&st);
    st_writer_destroy(&w);
    rm_rf(tmp);
}

/* ---- hostile input ------------------------------------------------------------------------ */

/* [N = strlen(json) or n_override][json][data] */
static uint8_t *mk(const char *json, size_t dlen, int64_t n_override, size_t *len) {
    size_t jl = strlen(json);
    *len = 8 + jl + dlen;
    uint8_t *b = calloc(1, *len + 1);
    uint64_t n = n_override >= 0 ? (uint64_t)n_override : jl;
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)(n >> (8 * i));
    memcpy(b + 8, json, jl);
    for (size_t i = 0; i < dlen; i++) b[8 + jl + i] = (uint8_t)i;
    return b;
}

/* Parses [N][json][dlen bytes] from an exact-size heap copy, so ASan sees any read past the
 * end; returns the code. */
static int parse(const char *json, size_t dlen, int64_t n) {
    size_t len;
    uint8_t *b = mk(json, dlen, n, &len);
    uint8_t *exact = malloc(len ? len : 1);
    memcpy(exact, b, len);
    free(b);
    SafeTensors *st = NULL;
    err[0] = 0;
    int rc = st_parse_header(err, exact, len, &st);
    st_close(&st);
    free(exact);
    return rc;
}

#define F32E(name, b, e) "\"" name "\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[" #b "," #e "]}"

static void test_hostile_headers(void) {
    static const struct { const char *why, *json; size_t dlen; int64_t n; int rc; } cases[] = {
        {"N huge", "{}", 0, (int64_t)1 << 62, QIE_EFORMAT},
        {"N over limit", "{}", 0, 100000001, QIE_EFORMAT},
        {"N past EOF", "{}", 0, 3, QIE_EFORMAT},
        {"N = 0", "", 0, 0, QIE_EFORMAT},
        {"N = 0 with data", "", 4, 0, QIE_EFORMAT},
        {"not JSON", "hello", 0, -1, QIE_EFORMAT},
        {"array", "[]", 0, -1, QIE_EFORMAT},
        {"string", "\"x\"", 0, -1, QIE_EFORMAT},
        {"truncated object", "{\"a\":", 0, -1, QIE_EFORMAT},
        {"trailing garbage", "{}x", 0, -1, QIE_EFORMAT},
        {"two objects", "{}{}", 0, -1, QIE_EFORMAT},
        {"trailing comma", "{" F32E("a", 0, 4) ",}", 4, -1, QIE_EFORMAT},
        {"missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"missing shape", "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, -1, QIE_EFORMAT},
        {"bad dtype", "{\"a\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"lower-case dtype", "{\"a\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"dtype not string", "{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"negative dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"float dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.0],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"exponent dim", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"leading zero", "{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"dim > 2^64", "{\"a\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"huge dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"numel*bits overflow", "{\"a\":{\"dtype\":\"F64\",\"shape\":[576460752303423488],\"data_offsets\":[0,0]}}", 0, -1, QIE_EFORMAT},
        {"numel*size wraps to 0", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 0, -1, QIE_EFORMAT},
        {"shape not array", "{\"a\":{\"dtype\":\"F32\",\"shape\":1,\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"offsets 3 long", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,4]}}", 4, -1, QIE_EFORMAT},
        {"offsets 1 long", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4, -1, QIE_EFORMAT},
        {"offsets negative", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, -1, QIE_EFORMAT},
        {"end < begin", "{" F32E("a", 4, 0) "}", 4, -1, QIE_EFORMAT},
        {"size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"overlap", "{" F32E("a", 0, 4) "," F32E("b", 2, 6) "}", 6, -1, QIE_EFORMAT},
        {"same range twice", "{" F32E("a", 0, 4) "," F32E("b", 0, 4) "}", 4, -1, QIE_EFORMAT},
        {"gap", "{" F32E("a", 0, 4) "," F32E("b", 8, 12) "}", 12, -1, QIE_EFORMAT},
        {"not at 0", "{" F32E("a", 4, 8) "}", 8, -1, QIE_EFORMAT},
        {"short of EOF", "{" F32E("a", 0, 4) "}", 5, -1, QIE_EFORMAT},
        {"past EOF", "{" F32E("a", 0, 4) "}", 3, -1, QIE_EFORMAT},
        {"duplicate name", "{" F32E("a", 0, 4) "," F32E("a", 4, 8) "}", 8, -1, QIE_EFORMAT},
        {"duplicate name, escaped", "{" F32E("a", 0, 4) ",\"\\u0061\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, -1, QIE_EFORMAT},
        {"duplicate field", "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"metadata number", "{\"__metadata__\":{\"format\":1}}", 0, -1, QIE_EFORMAT},
        {"metadata null value", "{\"__metadata__\":{\"format\":null}}", 0, -1, QIE_EFORMAT},
        {"metadata nested", "{\"__metadata__\":{\"a\":{}}}", 0, -1, QIE_EFORMAT},
        {"metadata array", "{\"__metadata__\":[\"a\"]}", 0, -1, QIE_EFORMAT},
        {"metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", 0, -1, QIE_EFORMAT},
        {"entry array too short", "{\"a\":[\"F32\",[1]]}", 4, -1, QIE_EFORMAT},
        {"entry array too long", "{\"a\":[\"F32\",[1],[0,4],1]}", 4, -1, QIE_EFORMAT},
        {"ignored number out of f64 range", "{\"a\":{\"x\":1e999,\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"entry string", "{\"a\":\"F32\"}", 0, -1, QIE_EFORMAT},
        {"raw control char in name", "{\"a\x01\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"bad escape", "{\"a\\x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"lone surrogate", "{\"\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"invalid UTF-8", "{\"\xc3\x28\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"overlong UTF-8", "{\"\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"UTF-8 surrogate", "{\"\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EFORMAT},
        {"NUL in name", "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, -1, QIE_EUNSUPPORTED},
        {"sub-byte size", "{\"a\":{\"dtype\":\"F4\",\"shape\":[3],\"data_offsets\":[0,1]}}", 1, -1, QIE_EFORMAT},
        {"F6 not whole bytes", "{\"a\":{\"dtype\":\"F6_E2M3\",\"shape\":[3],\"data_offsets\":[0,2]}}", 2, -1, QIE_EFORMAT},
        {"unterminated string", "{\"abc", 0, -1, QIE_EFORMAT},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc = parse(cases[i].json, cases[i].dlen, cases[i].n);
        CHECK(rc == cases[i].rc, "%s: rc=%d (%s) err=%s", cases[i].why, rc, qie_strerror(rc), err);
        if (rc) CHECK(strlen(err) > 10 && strstr(err, "st_parse_header"), "%s: message \"%s\"", cases[i].why, err);
    }
    /* nesting: serde_json allows 127 levels; in an unknown field of an entry (2 levels open) */
    static const int depths[] = {100, 125, 126, 200};
    for (size_t di = 0; di < 4; di++) {
        int depth = depths[di];
        char *j = malloc(4096);
        int k = sprintf(j, "{\"a\":{\"x\":");
        for (int d = 0; d < depth; d++) j[k++] = '[';
        for (int d = 0; d < depth; d++) j[k++] = ']';
        sprintf(j + k, ",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
        int rc = parse(j, 4, -1);
        CHECK(rc == (depth <= 125 ? 0 : QIE_EFORMAT), "depth %d: rc=%d %s", depth, rc, err);
        free(j);
    }
    /* a NUL byte inside the header is a control character outside strings: invalid JSON */
    {
        size_t len;
        uint8_t *b = mk("{} ", 0, -1, &len);
        b[9] = 0;
        SafeTensors *st = NULL;
        CHECK(st_parse_header(err, b, len, &st) == QIE_EFORMAT && !st);
        free(b);
    }
    /* short buffers */
    SafeTensors *st = NULL;
    for (size_t n = 0; n < 8; n++) {
        uint8_t *b = calloc(1, n ? n : 1);
        CHECK(st_parse_header(err, b, n, &st) == QIE_EFORMAT && !st, "%zu bytes", n);
        free(b);
    }
    CHECK(st_parse_header(err, NULL, 0, &st) == QIE_EFORMAT);
    CHECK(st_parse_header(err, "x", 1, NULL) == QIE_EINVAL);
}

/* Inputs the reference accepts, and so must qie. */
static void test_lenient_headers(void) {
    static const struct { const char *why, *json; size_t dlen; size_t count; } cases[] = {
        {"empty object", "{}", 0, 0},
        {"leading/trailing whitespace", " \t\r\n{" F32E("a", 0, 4) "}\n\t  ", 4, 1},
        {"unpadded header", "{" F32E("a", 0, 4) "}", 4, 1},
        {"unknown fields skipped", "{\"a\":{\"x\":[1,{\"y\":null}],\"dtype\":\"F32\",\"z\":-1.5e3,\"shape\":[1],\"w\":true,\"data_offsets\":[0,4]}}", 4, 1},
        {"metadata null", "{\"__metadata__\":null," F32E("a", 0, 4) "}", 4, 1},
        {"escaped __metadata__ key", "{\"\\u005f_metadata__\":{\"k\":\"v\"}}", 0, 0},
        {"zero dim beside a huge one", "{\"a\":{\"dtype\":\"F32\",\"shape\":[0,18446744073709551615],\"data_offsets\":[0,0]}}", 0, 1},
        {"scalar", "{\"s\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[0,8]}}", 8, 1},
        {"zero-size tensors share an offset", "{\"e\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[0,0]},\"f\":{\"dtype\":\"F32\",\"shape\":[3,0],\"data_offsets\":[0,0]}," F32E("a", 0, 4) "}", 4, 3},
        {"entries out of order", "{" F32E("b", 4, 8) "," F32E("a", 0, 4) "}", 8, 2},
        {"empty name", "{" F32E("", 0, 4) "}", 4, 1},
        {"F4 whole bytes", "{\"a\":{\"dtype\":\"F4\",\"shape\":[2,3],\"data_offsets\":[0,3]}}", 3, 1},
        {"F6 whole bytes", "{\"a\":{\"dtype\":\"F6_E3M2\",\"shape\":[4],\"data_offsets\":[0,3]}}", 3, 1},
        {"entry as [dtype, shape, offsets]", "{\"a\":[\"F32\",[1],[0,4]]}", 4, 1},
        {"surrogate pair", "{\"\\ud83d\\ude00\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, 1},
        {"duplicate metadata key: last wins", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\",\"j\":\"0\"}}", 0, 0},
        {"no tensors, data left over", "{}", 0, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        SafeTensors *st = NULL;
        size_t len;
        uint8_t *b = mk(cases[i].json, cases[i].dlen, -1, &len);
        int rc = st_parse_header(err, b, len, &st);
        CHECK(rc == 0, "%s: rc=%d err=%s", cases[i].why, rc, err);
        CHECK(st_count(st) == cases[i].count, "%s", cases[i].why);
        if (st && i == 1) {
            const StTensor *t = st_find(st, "a");
            CHECK(t && t->data == b + 8 + strlen(cases[i].json) && t->nbytes == 4);
        }
        if (st && i == 6) CHECK(st_tensor_at(st, 0)->numel == 0 && st_tensor_at(st, 0)->shape[1] == UINT64_MAX);
        if (st && i == 7) CHECK(st_find(st, "s")->ndim == 0 && st_find(st, "s")->numel == 1);
        if (st && i == 14) CHECK(st_find(st, "\xf0\x9f\x98\x80") != NULL);
        if (st && i == 5) CHECK(st_metadata(st, "k") && !strcmp(st_metadata(st, "k"), "v"));
        if (st && i == 15) {
            const char *k, *v;
            CHECK(st_metadata_count(st) == 2 && !strcmp(st_metadata(st, "k"), "2"));
            CHECK(st_metadata_at(st, 0, &k, &v) == 0 && !strcmp(k, "j") && !strcmp(v, "0"));
            CHECK(st_metadata_at(st, 2, &k, &v) == QIE_ENOTFOUND);
        }
        st_close(&st);
        free(b);
    }
}

static int write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

static void test_hostile_files(void) {
    char tmp[512], p[1024];
    test_tmpdir(tmp, sizeof tmp);
    SafeTensors *st = NULL;
    snprintf(p, sizeof p, "%s/none.safetensors", tmp);
    CHECK(st_open(err, p, &st) == ENOENT && strstr(err, p), "%s", err);
    CHECK(st_open(err, tmp, &st) == QIE_EFORMAT, "directory: %s", err);
    /* empty and short files (mmap of 0 bytes would fail: refused before) */
    for (size_t n = 0; n < 8; n++) {
        CHECK(write_bytes(p, "\x02\0\0\0\0\0\0\0", n) == 0);
        CHECK(st_open(err, p, &st) == QIE_EFORMAT && !st, "%zu bytes", n);
    }
    /* a real file, truncated at every length */
    char src[1024];
    size_t len;
    golden_path(src, sizeof src, "sharded/diffusion_pytorch_model-00002-of-00005.safetensors");
    char *whole = slurp(src, &len);
    CHECK(whole != NULL);
    for (size_t n = 0; whole && n < len; n++) {
        CHECK(write_bytes(p, whole, n) == 0);
        CHECK(st_open(err, p, &st) == QIE_EFORMAT && !st, "truncated to %zu", n);
    }
    if (whole) {
        CHECK(write_bytes(p, whole, len) == 0);
        CHECK_RC(st_open(err, p, &st), err);
        st_close(&st);
        /* one extra byte at the end */
        FILE *f = fopen(p, "ab");
        CHECK(f && fputc(0, f) == 0 && fclose(f) == 0);
        CHECK(st_open(err, p, &st) == QIE_EFORMAT && strstr(err, "end"), "%s", err);
    }
    free(whole);
    rm_rf(tmp);
}

static void write_text(const char *dir, const char *name, const char *text) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    CHECK(write_bytes(p, text, strlen(text)) == 0);
}

static void test_hostile_index(void) {
    char tmp[512], p[1100], src[1024];
    test_tmpdir(tmp, sizeof tmp);
    /* two shards copied from the golden set */
    for (int s = 1; s <= 2; s++) {
        char name[128];
        size_t len;
        snprintf(name, sizeof name, "diffusion_pytorch_model-%05d-of-00005.safetensors", s);
        snprintf(src, sizeof src, "%s/safetensors/sharded/%s", test_golden_dir(), name);
        char *b = slurp(src, &len);
        snprintf(p, sizeof p, "%s/%s", tmp, name);
        CHECK(b && write_bytes(p, b, len) == 0);
        free(b);
    }
    const char *S1 = "diffusion_pytorch_model-00001-of-00005.safetensors";
    const char *S2 = "diffusion_pytorch_model-00002-of-00005.safetensors";
    char good[2048];
    snprintf(good, sizeof good, "{\"metadata\":{\"total_size\":1},\"weight_map\":{\"blocks.0.big\":\"%s\","
             "\"proj_in.weight\":\"%s\",\"proj_in.bias\":\"%s\",\"blocks.0.attn.to_q.weight\":\"%s\"}}", S1, S2, S2, S2);
    struct { const char *why; char text[2100]; int rc; } c[16];
    int nc = 0;
#define CASE(w, r, ...) do { c[nc].why = w; c[nc].rc = r; snprintf(c[nc].text, sizeof c[nc].text, __VA_ARGS__); nc++; } while (0)
    CASE("good", 0, "%s", good);
    CASE("dot-dot", QIE_EFORMAT, "{\"weight_map\":{\"blocks.0.big\":\"../%s\"}}", S1);
    CASE("dot-dot bare", QIE_EFORMAT, "{\"weight_map\":{\"blocks.0.big\":\"..\"}}");
    CASE("slash", QIE_EFORMAT, "{\"weight_map\":{\"blocks.0.big\":\"/etc/passwd\"}}");
    CASE("empty shard name", QIE_EFORMAT, "{\"weight_map\":{\"blocks.0.big\":\"\"}}");
    CASE("value not string", QIE_EFORMAT, "{\"weight_map\":{\"blocks.0.big\":1}}");
    CASE("no weight_map", QIE_EFORMAT, "{\"metadata\":{}}");
    CASE("weight_map array", QIE_EFORMAT, "{\"weight_map\":[]}");
    CASE("not JSON", QIE_EFORMAT, "{\"weight_map\":");
    CASE("trailing garbage", QIE_EFORMAT, "%s}", good);
    CASE("missing shard file", ENOENT, "{\"weight_map\":{\"x\":\"nope.safetensors\"}}");
    CASE("tensor not in its shard", QIE_EMISMATCH, "{\"weight_map\":{\"blocks.0.big\":\"%s\",\"proj_in.weight\":\"%s\","
         "\"proj_in.bias\":\"%s\",\"blocks.0.attn.to_q.weight\":\"%s\"}}", S2, S2, S2, S2);
    CASE("shard tensor not listed", QIE_EMISMATCH, "{\"weight_map\":{\"blocks.0.big\":\"%s\",\"proj_in.weight\":\"%s\"}}", S1, S2);
    CASE("name listed twice", QIE_EMISMATCH, "{\"weight_map\":{\"blocks.0.big\":\"%s\",\"blocks.0.big\":\"%s\","
         "\"proj_in.weight\":\"%s\",\"proj_in.bias\":\"%s\",\"blocks.0.attn.to_q.weight\":\"%s\"}}", S1, S1, S2, S2, S2);
    CASE("empty weight_map", 0, "{\"weight_map\":{}}");
    for (int i = 0; i < nc; i++) {
        write_text(tmp, "m.safetensors.index.json", c[i].text);
        snprintf(p, sizeof p, "%s/m.safetensors.index.json", tmp);
        StModel *m = NULL;
        int rc = st_model_open(err, p, &m);
        CHECK(rc == c[i].rc, "%s: rc=%d (%s) err=%s", c[i].why, rc, qie_strerror(rc), err);
        if (!rc && i == 0) CHECK(st_model_count(m) == 4 && st_model_find(m, "blocks.0.big"));
        if (rc) CHECK(m == NULL && strstr(err, "st_model_open"), "%s", err);
        st_model_close(&m);
    }
    /* a directory with no default names and one index resolves to it */
    write_text(tmp, "m.safetensors.index.json", good);
    StModel *m = NULL;
    CHECK_RC(st_model_open(err, tmp, &m), err);
    st_model_close(&m);
    /* two indexes: ambiguous */
    write_text(tmp, "n.safetensors.index.json", good);
    CHECK(st_model_open(err, tmp, &m) == QIE_EINVAL, "%s", err);
    rm_rf(tmp);
    test_tmpdir(tmp, sizeof tmp);
    CHECK(st_model_open(err, tmp, &m) == QIE_ENOTFOUND, "%s", err);
    rm_rf(tmp);
}

int main(void) {
    TEST_RUN(test_read_fixtures);
    TEST_RUN(test_write_matches_python);
    TEST_RUN(test_sharded_read);
    TEST_RUN(test_sharded_write_matches_python);
    TEST_RUN(test_parse_size);
    TEST_RUN(test_qie_written);
    TEST_RUN(test_writer_errors);
    TEST_RUN(test_hostile_headers);
    TEST_RUN(test_lenient_headers);
    TEST_RUN(test_hostile_files);
    TEST_RUN(test_hostile_index);
    cJSON_Delete(expected());
    return TEST_DONE();
}
