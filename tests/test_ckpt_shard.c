/* test_ckpt_shard.c: sharded checkpoints (ckpt_shard.h, docs/distributed.md).
 *   - ShardInfo arithmetic;
 *   - a flat buffer (master, exp_avg, exp_avg_sq) written as W=4 rank files, ZeRO-2 style (one
 *     segment per rank) and ZeRO-3 style (one segment per layout range), read back at W'=2 and 3,
 *     across file boundaries: the same elements;
 *   - damaged checkpoints fail with a message naming the file: a missing, truncated or renamed
 *     rank file, a leftover of another world size, mixed runs, a weights-only file asked for
 *     moments, a layout that is not the model's, an edited layout.json;
 *   - ckpt_merge of the tests/golden/dit/ut1 transformer: sharded and single-file output, bf16 of
 *     the master weights, the diffusers index, --exclude_frozen_parameters, stale files removed.
 * Helper modes for t_merge.sh:
 *   test_ckpt_shard --make-ckpt MODEL_DIR OUT_DIR W [zero3] [frozen]   rank files of a model
 *   test_ckpt_shard --compare MERGED_DIR MODEL_DIR [frozen]             merged == bf16(model) */
#include <dirent.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt_shard.h"
#include "dit.h"
#include "err.h"
#include "log.h"
#include "safetensors.h"
#include "testlib.h"

static float fval_(int which, size_t i) { return (float)which * 1000.0f + (float)i * 0.25f + 0.125f; }

static void rm_rf_(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "rm -rf %s failed\n", dir);
}

/* Writes the flat buffers of n elements as W rank files; segs_of(rank) gives each rank's segments. */
typedef int (*SegsFn)(size_t n, int world, int rank, CkptSeg *segs, void *arg);

static int write_ranks_(char *err, const char *dir, size_t n, int world, uint64_t hash, int moments, SegsFn fn,
                        void *arg) {
    CkptSeg segs[256];
    for (int r = 0; r < world; r++) {
        int ns = fn(n, world, r, segs, arg);
        size_t tot = 0;
        for (int k = 0; k < ns; k++) tot += segs[k].end - segs[k].start;
        float *b[3];
        for (int w = 0; w < 3; w++) {
            b[w] = malloc((tot ? tot : 1) * sizeof(float));
            size_t at = 0;
            for (int k = 0; k < ns; k++)
                for (size_t i = segs[k].start; i < segs[k].end; i++) b[w][at++] = fval_(w, i);
        }
        CkptShard s = {world, r, n, hash, 42, ns, segs, b[0], moments ? b[1] : NULL, moments ? b[2] : NULL};
        int rc = ckpt_shard_write(err, dir, &s);
        for (int w = 0; w < 3; w++) free(b[w]);
        if (rc) return rc;
    }
    return 0;
}

static int zero2_segs_(size_t n, int world, int rank, CkptSeg *segs, void *arg) {
    (void)arg;
    segs[0] = ckpt_slice(n, world, rank);
    return 1;
}

static int zero3_segs_(size_t n, int world, int rank, CkptSeg *segs, void *arg) {
    (void)n;
    const DitLayout *lay = arg;
    ckpt_range_slices(lay, world, rank, segs);
    return lay->nranges;
}

static int load_model_(char *err, const char *dir, DitLayout *lay, float **params, char **config) {
    DitConfig cfg;
    StModel *st = NULL;
    int rc = dit_config_load(err, dir, &cfg);
    if (!rc) rc = dit_layout_init(err, lay, &cfg);
    if (rc) return rc;
    char p[4200];
    snprintf(p, sizeof p, "%s/config.json", dir);
    FILE *f = fopen(p, "rb");
    if (!f) {
        qie_seterr(err, "open %s", p);
        return QIE_ENOTFOUND;
    }
    *config = calloc(1 << 16, 1);
    size_t got = fread(*config, 1, (1 << 16) - 1, f);
    (void)got;
    fclose(f);
    *params = malloc(lay->num_params * sizeof(float));
    if ((rc = st_model_open(err, dir, &st))) return rc;
    rc = dit_load_weights(err, lay, st, *params);
    st_model_close(&st);
    return rc;
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_slice(void) {
    const size_t ns[] = {0, 1, 7, 4096, 12388};
    for (size_t k = 0; k < sizeof ns / sizeof *ns; k++)
        for (int w = 1; w <= 8; w++) {
            size_t at = 0;
            for (int r = 0; r < w; r++) {
                CkptSeg s = ckpt_slice(ns[k], w, r);
                CHECK(s.start == at && s.end >= s.start);
                if (ns[k] % (size_t)w == 0) CHECK(s.end - s.start == ns[k] / (size_t)w);
                at = s.end;
            }
            CHECK(at == ns[k]);
        }
}

static void check_read_(const CkptReader *rd, size_t n, int world2, const char *what) {
    char err[QIE_ERR_LEN] = "";
    int bad = 0;
    for (int r = 0; r < world2; r++) {
        CkptSeg s = ckpt_slice(n, world2, r);
        size_t len = s.end - s.start;
        float *b = malloc((len ? len : 1) * sizeof(float));
        for (int w = 0; w < 3 && !bad; w++) {
            int rc = ckpt_reader_read(err, rd, (CkptWhich)w, s.start, s.end, b);
            if (rc) {
                CHECK(0, "%s: %s", what, err);
                bad = 1;
                break;
            }
            for (size_t i = 0; i < len; i++)
                if (b[i] != fval_(w, s.start + i)) {
                    CHECK(0, "%s: W'=%d rank %d buffer %d element %zu", what, world2, r, w, s.start + i);
                    bad = 1;
                    break;
                }
        }
        free(b);
    }
    if (!bad) CHECK(1);
}

static void test_roundtrip_zero2(void) {
    char dir[256], err[QIE_ERR_LEN] = "";
    test_tmpdir(dir, sizeof dir);
    const size_t n = 12388; /* not divisible by 3 or 4: unequal slices */
    CHECK_RC(write_ranks_(err, dir, n, 4, 0x1234, 1, zero2_segs_, NULL), err);
    CkptReader *rd = NULL;
    CHECK_RC(ckpt_reader_open(err, dir, &rd), err);
    if (!rd) return;
    CHECK(ckpt_reader_world(rd) == 4 && ckpt_reader_num_params(rd) == n && ckpt_reader_has_moments(rd) &&
          ckpt_reader_names_hash(rd) == 0x1234 && ckpt_reader_step(rd) == 42);
    for (int w2 = 1; w2 <= 5; w2++) check_read_(rd, n, w2, "zero2");
    /* a range over three files, and several segments at once */
    float b[5000];
    CHECK_RC(ckpt_reader_read(err, rd, CKPT_MASTER, 3000, 7000, b), err);
    CHECK(b[0] == fval_(0, 3000) && b[3999] == fval_(0, 6999));
    CkptSeg segs[2] = {{10, 20}, {9000, 9005}};
    CHECK_RC(ckpt_reader_read_segs(err, rd, CKPT_EXP_AVG_SQ, segs, 2, b), err);
    CHECK(b[0] == fval_(2, 10) && b[10] == fval_(2, 9000) && b[14] == fval_(2, 9004));
    CHECK(ckpt_reader_read(err, rd, CKPT_MASTER, 5, n + 1, b) == QIE_EINVAL);
    ckpt_reader_close(&rd);
    CHECK(rd == NULL);
    ckpt_reader_close(&rd);
    rm_rf_(dir);
}

static void test_roundtrip_zero3(void) {
    char dir[256], err[QIE_ERR_LEN] = "";
    DitConfig cfg;
    DitLayout lay = {0};
    char mdir[512];
    snprintf(mdir, sizeof mdir, "%s/dit/ut1/transformer", test_golden_dir());
    CHECK_RC(dit_config_load(err, mdir, &cfg), err);
    CHECK_RC(dit_layout_init(err, &lay, &cfg), err);
    if (!lay.tensors) return;
    test_tmpdir(dir, sizeof dir);
    CHECK_RC(write_ranks_(err, dir, lay.num_params, 4, ckpt_layout_hash(&lay), 1, zero3_segs_, &lay), err);
    CkptReader *rd = NULL;
    CHECK_RC(ckpt_reader_open(err, dir, &rd), err);
    if (rd) {
        CHECK_RC(ckpt_reader_check(err, rd, &lay), err);
        for (int w2 = 1; w2 <= 3; w2++) check_read_(rd, lay.num_params, w2, "zero3 -> zero2");
        /* a new rank at W'=3, ZeRO-3 again: its per-range segments */
        CkptSeg segs[64];
        ckpt_range_slices(&lay, 3, 1, segs);
        size_t tot = 0;
        for (int k = 0; k < lay.nranges; k++) tot += segs[k].end - segs[k].start;
        float *b = malloc(tot * sizeof(float));
        CHECK_RC(ckpt_reader_read_segs(err, rd, CKPT_EXP_AVG, segs, lay.nranges, b), err);
        CHECK(b[0] == fval_(1, segs[0].start) && b[tot - 1] == fval_(1, segs[lay.nranges - 1].end - 1));
        free(b);
        /* another model's layout is refused */
        DitConfig c2 = cfg;
        c2.num_layers = 3;
        DitLayout l2 = {0};
        CHECK_RC(dit_layout_init(err, &l2, &c2), err);
        CHECK(ckpt_reader_check(err, rd, &l2) == QIE_EMISMATCH && strstr(err, "hint:"), "%s", err);
        dit_layout_free(&l2);
        ckpt_reader_close(&rd);
    }
    rm_rf_(dir);
    dit_layout_free(&lay);
}

static void test_damaged(void) {
    char dir[256], err[QIE_ERR_LEN] = "", p[512], q[600];
    test_tmpdir(dir, sizeof dir);
    const size_t n = 1000;
    CkptReader *rd = NULL;
    CHECK(ckpt_reader_open(err, dir, &rd) == QIE_ENOTFOUND && strstr(err, "no rank-"), "%s", err);
    CHECK_RC(write_ranks_(err, dir, n, 4, 7, 1, zero2_segs_, NULL), err);
    /* missing */
    ckpt_shard_path(p, sizeof p, dir, 2, 4);
    snprintf(q, sizeof q, "%s.away", p);
    CHECK(rename(p, q) == 0);
    CHECK(ckpt_reader_open(err, dir, &rd) == QIE_ENOTFOUND && strstr(err, "rank-00002-of-00004") &&
          strstr(err, "present: 0,1,3"), "%s", err);
    CHECK(rd == NULL);
    /* truncated */
    CHECK(rename(q, p) == 0);
    CHECK(truncate(p, 100) == 0);
    CHECK(ckpt_reader_open(err, dir, &rd) == QIE_EFORMAT && strstr(err, "rank-00002-of-00004"), "%s", err);
    /* renamed: rank 1's file under rank 2's name */
    ckpt_shard_path(q, sizeof q, dir, 1, 4);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", q, p);
    CHECK(system(cmd) == 0);
    CHECK(ckpt_reader_open(err, dir, &rd) == QIE_EMISMATCH && strstr(err, "says it is rank 1"), "%s", err);
    /* a leftover of a W=2 run */
    rm_rf_(dir);
    CHECK(mkdir(dir, 0777) == 0);
    CHECK_RC(write_ranks_(err, dir, n, 4, 7, 1, zero2_segs_, NULL), err);
    CHECK_RC(write_ranks_(err, dir, n, 2, 7, 1, zero2_segs_, NULL), err);
    CHECK(ckpt_reader_open(err, dir, &rd) == QIE_EMISMATCH && strstr(err, "leftover"), "%s", err);
    /* mixed runs: rank 3 of another layout */
    rm_rf_(dir);
    CHECK(mkdir(dir, 0777) == 0);
    CHECK_RC(write_ranks_(err, dir, n, 4, 7, 1, zero2_segs_, NULL), err);
    {
        CkptSeg s = ckpt_slice(n, 4, 3);
        float b[250] = {0};
        CkptShard sh = {4, 3, n, 8, -1, 1, &s, b, NULL, NULL};
        CHECK_RC(ckpt_shard_write(err, dir, &sh), err);
    }
    CHECK(ckpt_reader_open(err, dir, &rd) == QIE_EMISMATCH && strstr(err, "different runs"), "%s", err);
    /* a gap: rank 3 covers less */
    {
        CkptSeg s = {750, 990};
        float b[250] = {0};
        CkptShard sh = {4, 3, n, 7, 42, 1, &s, b, b, b};
        CHECK_RC(ckpt_shard_write(err, dir, &sh), err);
    }
    CHECK(ckpt_reader_open(err, dir, &rd) == QIE_EFORMAT && strstr(err, "[990, 1000) are in no rank file"), "%s", err);
    /* weights only */
    rm_rf_(dir);
    CHECK(mkdir(dir, 0777) == 0);
    CHECK_RC(write_ranks_(err, dir, n, 2, 7, 0, zero2_segs_, NULL), err);
    CHECK_RC(ckpt_reader_open(err, dir, &rd), err);
    if (rd) {
        float b[4];
        CHECK(!ckpt_reader_has_moments(rd));
        CHECK_RC(ckpt_reader_read(err, rd, CKPT_MASTER, 0, 4, b), err);
        CHECK(ckpt_reader_read(err, rd, CKPT_EXP_AVG, 0, 4, b) == QIE_ENOTFOUND && strstr(err, "weights only"), "%s",
              err);
        ckpt_reader_close(&rd);
    }
    /* writer argument checks */
    {
        CkptSeg s[2] = {{10, 20}, {15, 30}};
        float b[30];
        CkptShard sh = {2, 0, n, 7, -1, 2, s, b, NULL, NULL};
        CHECK(ckpt_shard_write(err, dir, &sh) == QIE_EINVAL && strstr(err, "disjoint"), "%s", err);
    }
    rm_rf_(dir);
}

static void test_layout_json(void) {
    char dir[256], err[QIE_ERR_LEN] = "", mdir[512];
    snprintf(mdir, sizeof mdir, "%s/dit/ut1/transformer", test_golden_dir());
    DitConfig cfg;
    DitLayout lay = {0};
    CHECK_RC(dit_config_load(err, mdir, &cfg), err);
    CHECK_RC(dit_layout_init(err, &lay, &cfg), err);
    if (!lay.tensors) return;
    test_tmpdir(dir, sizeof dir);
    unsigned char *frozen = calloc((size_t)lay.ntensors, 1);
    frozen[3] = 1;
    CHECK_RC(ckpt_layout_write(err, dir, &lay, "{\"x\": 1}\n", frozen), err);
    CkptLayout l = {0};
    CHECK_RC(ckpt_layout_read(err, dir, &l), err);
    CHECK(l.ntensors == lay.ntensors && l.num_params == lay.num_params && l.names_hash == ckpt_layout_hash(&lay));
    int same = 1;
    for (int i = 0; i < l.ntensors && l.tensors; i++)
        same &= !strcmp(l.tensors[i].name, lay.tensors[i].name) && l.tensors[i].offset == lay.tensors[i].offset &&
                l.tensors[i].numel == lay.tensors[i].numel && l.tensors[i].frozen == (i == 3);
    CHECK(same);
    ckpt_layout_free(&l);
    /* an edited offset breaks the hash */
    char p[512], cmd[1200];
    snprintf(p, sizeof p, "%s/layout.json", dir);
    snprintf(cmd, sizeof cmd, "sed -i 's/\"offset\": 544,/\"offset\": 545,/' '%s'", p);
    CHECK(system(cmd) == 0);
    CHECK(ckpt_layout_read(err, dir, &l) == QIE_EFORMAT && strstr(err, "names_hash"), "%s", err);
    free(frozen);
    rm_rf_(dir);
    dit_layout_free(&lay);
}

static int write_model_ckpt_(char *err, const char *model, const char *dir, int world, int zero3, int frozen_first) {
    DitLayout lay = {0};
    float *params = NULL;
    char *config = NULL;
    int rc = load_model_(err, model, &lay, &params, &config);
    CkptSeg segs[256];
    for (int r = 0; !rc && r < world; r++) {
        int ns = 1;
        if (zero3) {
            ckpt_range_slices(&lay, world, r, segs);
            ns = lay.nranges;
        } else {
            segs[0] = ckpt_slice(lay.num_params, world, r);
        }
        size_t tot = 0;
        for (int k = 0; k < ns; k++) tot += segs[k].end - segs[k].start;
        float *b = malloc((tot ? tot : 1) * sizeof(float));
        size_t at = 0;
        for (int k = 0; k < ns; k++) {
            memcpy(b + at, params + segs[k].start, (segs[k].end - segs[k].start) * sizeof(float));
            at += segs[k].end - segs[k].start;
        }
        CkptShard s = {world, r, lay.num_params, ckpt_layout_hash(&lay), 7, ns, segs, b, b, b};
        rc = ckpt_shard_write(err, dir, &s);
        free(b);
    }
    unsigned char *frozen = calloc((size_t)lay.ntensors, 1);
    if (frozen_first) frozen[0] = frozen[1] = 1; /* img_in.{weight,bias} */
    if (!rc) rc = ckpt_layout_write(err, dir, &lay, config, frozen);
    free(frozen);
    free(params);
    free(config);
    dit_layout_free(&lay);
    return rc;
}

/* merged (bf16) == bf16(model) for every tensor; skip_first: img_in.* absent */
static int compare_(char *err, const char *merged, const char *model, int skip_first) {
    StModel *a = NULL, *b = NULL;
    int rc = st_model_open(err, merged, &a);
    if (!rc) rc = st_model_open(err, model, &b);
    size_t expect = b ? st_model_count(b) - (skip_first ? 2 : 0) : 0;
    if (!rc && st_model_count(a) != expect) {
        qie_seterr(err, "%zu tensors merged, expected %zu", st_model_count(a), expect);
        rc = QIE_EMISMATCH;
    }
    for (size_t i = 0; !rc && i < st_model_count(b); i++) {
        const StTensor *tb = st_model_tensor_at(b, i), *ta = st_model_find(a, tb->name);
        if (skip_first && !strncmp(tb->name, "img_in.", 7)) {
            if (ta) rc = QIE_EMISMATCH, qie_seterr(err, "%s should be excluded", tb->name);
            continue;
        }
        if (!ta || ta->dtype != QIE_DT_BF16 || ta->numel != tb->numel || ta->ndim != tb->ndim) {
            qie_seterr(err, "%s: missing or not bf16 of the same shape", tb->name);
            rc = QIE_EMISMATCH;
            break;
        }
        for (uint64_t k = 0; k < tb->numel; k++) {
            uint16_t h;
            float f;
            memcpy(&h, (const char *)ta->data + 2 * k, 2);
            if (tb->dtype == QIE_DT_F32) memcpy(&f, (const char *)tb->data + 4 * k, 4);
            else {
                uint16_t g;
                memcpy(&g, (const char *)tb->data + 2 * k, 2);
                f = bf16_to_f32(g);
            }
            if (h != f32_to_bf16(f)) {
                qie_seterr(err, "%s[%llu] differs", tb->name, (unsigned long long)k);
                rc = QIE_EMISMATCH;
                break;
            }
        }
    }
    st_model_close(&a);
    st_model_close(&b);
    return rc;
}

static int count_files_(const char *dir, const char *prefix) {
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *de;
    while (d && (de = readdir(d))) n += !strncmp(de->d_name, prefix, strlen(prefix));
    if (d) closedir(d);
    return n;
}

static void test_merge(void) {
    char dir[256], out[300], err[QIE_ERR_LEN] = "", mdir[512], p[600];
    snprintf(mdir, sizeof mdir, "%s/dit/ut1/transformer", test_golden_dir());
    test_tmpdir(dir, sizeof dir);
    snprintf(out, sizeof out, "%s/out", dir);
    CHECK_RC(write_model_ckpt_(err, mdir, dir, 3, 1, 1), err);
    int ns = 0;
    CHECK_RC(ckpt_merge(err, dir, out, "100KB", 0, &ns), err);
    CHECK(ns > 1, "%d shards", ns);
    snprintf(p, sizeof p, "%s/diffusion_pytorch_model.safetensors.index.json", out);
    CHECK(access(p, F_OK) == 0);
    CHECK_RC(compare_(err, out, mdir, 0), err);
    snprintf(p, sizeof p, "%s/config.json", out);
    CHECK(access(p, F_OK) == 0);
    /* again into the same folder as one file: the old shards and index go */
    CHECK_RC(ckpt_merge(err, dir, out, "80GB", 0, &ns), err);
    CHECK(ns == 1);
    CHECK(count_files_(out, "diffusion_pytorch_model") == 1, "%d files", count_files_(out, "diffusion_pytorch_model"));
    CHECK_RC(compare_(err, out, mdir, 0), err);
    CHECK_RC(ckpt_merge(err, dir, out, "80GB", 1, &ns), err);
    CHECK_RC(compare_(err, out, mdir, 1), err);
    /* no config.json */
    snprintf(p, sizeof p, "%s/config.json", dir);
    unlink(p);
    CHECK(ckpt_merge(err, dir, out, "80GB", 0, &ns) == QIE_ENOTFOUND && strstr(err, "config.json"), "%s", err);
    rm_rf_(dir);
}

int main(int argc, char **argv) {
    log_init("test-ckpt-shard");
    char err[QIE_ERR_LEN] = "";
    if (argc >= 5 && !strcmp(argv[1], "--make-ckpt")) {
        int zero3 = argc > 5 && !strcmp(argv[5], "zero3"), frozen = argc > 6 && !strcmp(argv[6], "frozen");
        int rc = write_model_ckpt_(err, argv[2], argv[3], atoi(argv[4]), zero3, frozen);
        if (rc) fprintf(stderr, "%s\n", err);
        return rc ? 1 : 0;
    }
    if (argc >= 4 && !strcmp(argv[1], "--compare")) {
        int rc = compare_(err, argv[2], argv[3], argc > 4 && !strcmp(argv[4], "frozen"));
        if (rc) fprintf(stderr, "%s\n", err);
        return rc ? 1 : 0;
    }
    log_set_level(LOG_WARN);
    TEST_RUN(test_slice);
    TEST_RUN(test_roundtrip_zero2);
    TEST_RUN(test_roundtrip_zero3);
    TEST_RUN(test_damaged);
    TEST_RUN(test_layout_json);
    TEST_RUN(test_merge);
    return TEST_DONE();
}
