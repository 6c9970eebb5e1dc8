/* test_train.c: qie-train (stages/train) against PyTorch and against itself.
 *
 * Golden (tests/golden/train, scripts/golden/train.py, fp32 CPU on both sides):
 *   run A  one full step, batch 2 (two text lengths, a dropped caption, clipping active): loss,
 *          first-step gradients (QIE_TRAIN_DUMP_GRADS) and updated weights;
 *   run B  10 AdamW steps with accumulation 2 over 3 records (epoch-end partial groups), linear
 *          warmup, two lr groups and a frozen tensor, cosmap weighting, decaying and abnormal-norm
 *          clipping: the 10 losses and the final fp32 master weights.
 * Tolerances (measured on x86-64 gcc -O2 when the fixture was made, then ~10x margin):
 *   loss: relative 1e-5 (measured ≤ 8e-8: the fp32 sums differ from torch's in order only);
 *   gradients: |Δ| ≤ 1e-4·max|g| + 1e-7 per tensor (measured ≤ 1.8e-5·max|g|, in the timestep MLP);
 *   weights: |Δ| ≤ 2e-5 absolute after 1 step at lr 1e-3 and after 10 steps at lr ≤ 2e-3 (measured
 *   ≤ 1e-6): Adam normalises the gradient, so an element whose gradient is ~eps can move by a
 *   sizable fraction of lr on a tiny gradient difference; none does here.
 * Self-consistency: N steps, stop, resume, M steps == N+M steps, bit for bit (optimizer state and
 * weights); checkpoint marker and `latest`; NaN stops the run with TRAIN_ENONFINITE; bad records
 * are left out. Units: randperm = torch, σ grid = diffusers, LR lambdas, clip threshold, AdamW,
 * global norm, packing, CRC32C, TensorBoard framing, bucketed sampler.
 *
 * `test_train --make-demo FILE [N]` writes the demo record stream t_train.sh trains on. */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "adamw.h"
#include "cache_names.h"
#include "cjson/cJSON.h"
#include "endpoint.h"
#include "err.h"
#include "global_norm.h"
#include "log.h"
#include "rng.h"
#include "safetensors.h"
#include "testlib.h"
#include "train/train.h"

static char golden_[512];
static const char *gpath_(const char *f) {
    snprintf(golden_, sizeof golden_, "%s/train/%s", test_golden_dir(), f);
    return golden_;
}

/* ---- configs ------------------------------------------------------------------------------- */

/* main.c's defaults */
static void cfg_init_(TrainConfig *c, const char *out) {
    memset(c, 0, sizeof *c);
    static char model[512], in[512];
    snprintf(model, sizeof model, "%s/train/model", test_golden_dir());
    c->model = model;
    c->output_dir = out;
    c->logging_dir = "logs";
    c->tracker_project_name = "text2image-fine-tune";
    c->device = "cpu";
    c->max_shard_size = "10GB";
    c->learning_rate = 1e-4;
    c->adam_beta1 = 0.9;
    c->adam_beta2 = 0.999;
    c->adam_weight_decay = 1e-2;
    c->adam_epsilon = 1e-8;
    c->max_grad_norm = 1.0;
    c->abnormal_norm_clip_start = 1000;
    c->initial_grad_norm_ratio = 5;
    c->lr_scheduler = LRS_CONSTANT;
    c->lr_warmup_steps = 500;
    c->train_batch_size = 1;
    c->gradient_accumulation_steps = 1;
    c->num_train_epochs = 100;
    c->max_train_steps = -1;
    c->seed = -1;
    c->mode_scale = 1.29;
    c->logit_std = 1.0;
    c->text_drop_ratio = 0.1;
    c->train_sampling_steps = 1000;
    c->checkpointing_steps = 500;
    c->checkpoints_total_limit = -1;
    c->stop_after_steps = -1;
    c->report_tensorboard = 1;
    c->world = 1;
    (void)in;
}

/* the flags of run NAME from the fixture's metadata */
static int cfg_golden_(TrainConfig *c, const char *name, const char *out) {
    static char in[512], draws[512];
    static char strs[2][8][64];
    char p[512];
    cfg_init_(c, out);
    snprintf(in, sizeof in, "%s/train/recs_%s.qie", test_golden_dir(), name);
    snprintf(draws, sizeof draws, "%s/train/draws_%s.safetensors", test_golden_dir(), name);
    c->in_url = in;
    c->draws_path = draws;
    snprintf(p, sizeof p, "%s/train/expect_%s.safetensors", test_golden_dir(), name);
    char err[QIE_ERR_LEN];
    SafeTensors *st = NULL;
    if (st_open(err, p, &st)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    cJSON *j = cJSON_Parse(st_metadata(st, "flags"));
    st_close(&st);
    if (!j) return -1;
#define GI(k) c->k = (int64_t)cJSON_GetObjectItem(j, #k)->valuedouble
#define GF(k) c->k = cJSON_GetObjectItem(j, #k)->valuedouble
    GI(train_batch_size); GI(gradient_accumulation_steps); GI(max_train_steps); GF(learning_rate);
    GF(adam_weight_decay); GF(adam_epsilon); GF(adam_beta1); GF(adam_beta2); GF(max_grad_norm);
    GI(initial_grad_norm_ratio); GI(abnormal_norm_clip_start); GI(lr_warmup_steps); GF(text_drop_ratio); GI(seed);
    sch_parse_lr(cJSON_GetObjectItem(j, "lr_scheduler")->valuestring, &c->lr_scheduler);
    sch_parse_weighting(cJSON_GetObjectItem(j, "weighting_scheme")->valuestring, &c->weighting_scheme);
    const char *lists[2] = {"trainable_modules", "trainable_modules_low_learning_rate"};
    CliStrs *dst[2] = {&c->trainable_modules, &c->trainable_modules_low_learning_rate};
    for (int l = 0; l < 2; l++) {
        const cJSON *a = cJSON_GetObjectItem(j, lists[l]);
        dst[l]->n = 0;
        for (int i = 0; i < cJSON_GetArraySize(a) && i < 8; i++) {
            snprintf(strs[l][i], 64, "%s", cJSON_GetArrayItem(a, i)->valuestring);
            dst[l]->v[dst[l]->n++] = strs[l][i];
        }
    }
    cJSON_Delete(j);
    c->progress = 0;
    return 0;
}

/* master.<name> of checkpoint DIR/checkpoint-N/optimizer */
static StModel *open_opt_(const char *out, int step) {
    char p[1024], err[QIE_ERR_LEN];
    snprintf(p, sizeof p, "%s/checkpoint-%d/optimizer", out, step);
    StModel *m = NULL;
    if (st_model_open(err, p, &m)) {
        fprintf(stderr, "%s\n", err);
        return NULL;
    }
    return m;
}

static int losses_(const char *out, double *loss, int cap) {
    char p[1024];
    snprintf(p, sizeof p, "%s/logs/metrics.jsonl", out);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    char line[2048];
    int n = 0;
    while (fgets(line, sizeof line, f) && n < cap) {
        cJSON *j = cJSON_Parse(line);
        if (j) loss[n++] = cJSON_GetObjectItem(j, "loss")->valuedouble;
        cJSON_Delete(j);
    }
    fclose(f);
    return n;
}

static float tf32_(const StTensor *t, size_t i) {
    float v;
    memcpy(&v, (const char *)t->data + 4 * i, 4);
    return v;
}

/* compares every `prefix_e + name` of the expectation with `prefix_g + name` of got */
static void compare_(const char *what, const SafeTensors *exp, const char *prefix_e, const StModel *gm,
                     const SafeTensors *gs, const char *prefix_g, double abs_tol, double rel_to_max) {
    double worst = 0.0, worst_rel = 0.0;
    const char *wname = "";
    size_t nt = 0;
    for (size_t i = 0; i < st_count(exp); i++) {
        const StTensor *e = st_tensor_at(exp, i);
        size_t pl = strlen(prefix_e);
        if (strncmp(e->name, prefix_e, pl)) continue;
        char n[256];
        snprintf(n, sizeof n, "%s%s", prefix_g, e->name + pl);
        const StTensor *g = gm ? st_model_find(gm, n) : st_find(gs, n);
        CHECK(g && g->numel == e->numel, "%s: %s missing or wrong size", what, n);
        if (!g || g->numel != e->numel) continue;
        double mx = 0.0, md = 0.0;
        for (size_t k = 0; k < e->numel; k++) {
            double a = tf32_(e, k), b = tf32_(g, k);
            if (fabs(a) > mx) mx = fabs(a);
            if (fabs(a - b) > md) md = fabs(a - b);
        }
        double tol = abs_tol + rel_to_max * mx;
        CHECK(md <= tol, "%s %s: max |diff| %.3g > %.3g", what, e->name + pl, md, tol);
        if (md > worst) {
            worst = md;
            wname = e->name + pl;
        }
        if (mx > 0 && md / mx > worst_rel) worst_rel = md / mx;
        nt++;
    }
    printf("  %s: %zu tensors, max |diff| %.3g (%s), max |diff|/max|x| %.3g\n", what, nt, worst, wname, worst_rel);
}

static void tmpdir_(char *out, size_t cap) { test_tmpdir(out, cap); }

static void rmrf_(const char *p) { train_rmtree(p); }

/* ---- golden ---------------------------------------------------------------------------------- */

static void test_golden_a(void) {
    char out[512], err[QIE_ERR_LEN] = "", gp[600];
    tmpdir_(out, sizeof out);
    TrainConfig c;
    CHECK(cfg_golden_(&c, "a", out) == 0);
    snprintf(gp, sizeof gp, "%s/grads.safetensors", out);
    setenv("QIE_TRAIN_DUMP_GRADS", gp, 1);
    CHECK_RC(train_run(err, &c), err);
    unsetenv("QIE_TRAIN_DUMP_GRADS");
    SafeTensors *exp = NULL, *gr = NULL;
    CHECK_RC(st_open(err, gpath_("expect_a.safetensors"), &exp), err);
    CHECK_RC(st_open(err, gp, &gr), err);
    double loss[4];
    int n = losses_(out, loss, 4);
    CHECK(n == 1);
    float el = tf32_(st_find(exp, "loss"), 0);
    printf("  loss: qie %.8f torch %.8f (rel %.2g)\n", loss[0], el, fabs(loss[0] - el) / el);
    CHECK(fabs(loss[0] - el) <= 1e-5 * el, "loss %.8f vs %.8f", loss[0], el);
    if (gr) compare_("grads (step 1, before clipping)", exp, "grad.", NULL, gr, "grad.", 1e-7, 1e-4);
    StModel *om = open_opt_(out, 1);
    CHECK(om != NULL);
    if (om) compare_("weights after 1 step", exp, "weight.", om, NULL, "master.", 2e-5, 0);
    st_model_close(&om);
    st_close(&gr);
    st_close(&exp);
    rmrf_(out);
}

static void test_golden_b(void) {
    char out[512], err[QIE_ERR_LEN] = "";
    tmpdir_(out, sizeof out);
    TrainConfig c;
    CHECK(cfg_golden_(&c, "b", out) == 0);
    c.checkpointing_steps = 4;
    c.checkpoints_total_limit = 2;
    CHECK_RC(train_run(err, &c), err);
    SafeTensors *exp = NULL;
    CHECK_RC(st_open(err, gpath_("expect_b.safetensors"), &exp), err);
    double loss[16];
    int n = losses_(out, loss, 16);
    CHECK(n == 10, "%d losses", n);
    const StTensor *el = st_find(exp, "loss");
    double worst = 0;
    for (int i = 0; i < n && i < 10; i++) {
        double e = tf32_(el, (size_t)i), r = fabs(loss[i] - e) / e;
        if (r > worst) worst = r;
        CHECK(r <= 1e-5, "step %d loss %.8f vs %.8f", i + 1, loss[i], e);
    }
    printf("  10 losses: max relative diff %.2g (first %.6f, last %.6f)\n", worst, loss[0], loss[n - 1]);
    StModel *om = open_opt_(out, 10);
    CHECK(om != NULL);
    if (om) compare_("weights after 10 steps", exp, "weight.", om, NULL, "master.", 2e-5, 0);
    st_model_close(&om);
    st_close(&exp);
    /* checkpoints_total_limit 2: checkpoint-4 pruned before checkpoint-10 was written */
    char p[700];
    snprintf(p, sizeof p, "%s/checkpoint-4", out);
    CHECK(access(p, F_OK) != 0, "checkpoint-4 should have been pruned");
    snprintf(p, sizeof p, "%s/checkpoint-8", out);
    CHECK(ckpt_complete(p));
    snprintf(p, sizeof p, "%s/transformer/config.json", out);
    CHECK(access(p, F_OK) == 0);
    rmrf_(out);
}

static int files_equal_(const char *a, const char *b) {
    size_t na, nb;
    char err[QIE_ERR_LEN];
    char *x = train_read_file(err, a, &na), *y = train_read_file(err, b, &nb);
    int eq = x && y && na == nb && !memcmp(x, y, na);
    free(x);
    free(y);
    return eq;
}

/* every regular file under checkpoint-N, compared byte for byte (trainer_state.json aside: it
 * names the run's own settings only, compared field by field through the optimizer files) */
static void same_tree_(const char *a, const char *b, const char *sub) {
    char pa[1024], pb[1024];
    snprintf(pa, sizeof pa, "%s/%s", a, sub);
    snprintf(pb, sizeof pb, "%s/%s", b, sub);
    DIR *d = opendir(pa);
    CHECK(d != NULL, "%s", pa);
    if (!d) return;
    struct dirent *de;
    int n = 0;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.') continue;
        char fa[1300], fb[1300];
        snprintf(fa, sizeof fa, "%s/%s", pa, de->d_name);
        snprintf(fb, sizeof fb, "%s/%s", pb, de->d_name);
        CHECK(files_equal_(fa, fb), "%s differs from %s", fa, fb);
        n++;
    }
    closedir(d);
    CHECK(n > 0);
}

static void test_resume_exact(void) {
    /* run B's settings but with the Philox draws (no --draws) and stratified uniform σ: 10 steps
     * in one run vs 3 + stop + resume 4 + stop + resume 3 */
    char one[512], two[512], err[QIE_ERR_LEN] = "";
    tmpdir_(one, sizeof one);
    tmpdir_(two, sizeof two);
    TrainConfig c;
    cfg_golden_(&c, "b", one);
    c.draws_path = NULL;
    c.uniform_sampling = 1;
    c.checkpointing_steps = 5;
    CHECK_RC(train_run(err, &c), err);
    cfg_golden_(&c, "b", two);
    c.draws_path = NULL;
    c.uniform_sampling = 1;
    c.checkpointing_steps = 5;
    c.stop_after_steps = 3;
    CHECK_RC(train_run(err, &c), err);
    char p[700];
    snprintf(p, sizeof p, "%s/checkpoint-3", two);
    CHECK(ckpt_complete(p), "stop_after_steps should leave checkpoint-3");
    c.resume_from_checkpoint = "latest";
    c.stop_after_steps = 4;
    CHECK_RC(train_run(err, &c), err);
    c.stop_after_steps = -1;
    CHECK_RC(train_run(err, &c), err);
    char a[700], b[700];
    snprintf(a, sizeof a, "%s/checkpoint-10", one);
    snprintf(b, sizeof b, "%s/checkpoint-10", two);
    same_tree_(a, b, "optimizer");
    same_tree_(a, b, "transformer");
    same_tree_(one, two, "transformer");
    /* the losses of the resumed pieces continue the single run's */
    double l1[16], l2[16];
    int n1 = losses_(one, l1, 16), n2 = losses_(two, l2, 16);
    CHECK(n1 == 10 && n2 == 10, "%d / %d losses", n1, n2);
    for (int i = 0; i < n1 && i < n2; i++) CHECK(l1[i] == l2[i], "step %d: %.9g vs %.9g", i + 1, l1[i], l2[i]);
    /* an explicit path works too, and `latest` skips an incomplete folder */
    snprintf(p, sizeof p, "%s/checkpoint-99", two);
    mkdir(p, 0777);
    char res[1024];
    CHECK_RC(ckpt_resolve(err, two, "latest", res, sizeof res), err);
    CHECK(strstr(res, "checkpoint-10") != NULL, "latest = %s", res);
    CHECK(ckpt_resolve(err, two, p, res, sizeof res) == QIE_ENOTFOUND);
    CHECK_RC(ckpt_resolve(err, two, "checkpoint-5", res, sizeof res), err);
    rmrf_(one);
    rmrf_(two);
}

/* ---- records built here (NaN, bad shapes, demo) -------------------------------------------- */

static void put_f32_(Record *r, const char *name, int ndim, const int64_t *shape, float scale, float bias, uint64_t seed,
                     uint64_t sub) {
    float *d;
    char err[QIE_ERR_LEN];
    rec_new_tensor(err, r, name, QIE_DT_F32, ndim, shape, (void **)&d);
    int64_t n = rec_numel(ndim, shape);
    rng_normal_cpu(d, (size_t)n, seed, sub, 0);
    for (int64_t i = 0; i < n; i++) d[i] = d[i] * scale + bias;
}

static void put_text_(Record *r, const char *name, int L, uint64_t seed, uint64_t sub) {
    uint16_t *d;
    char err[QIE_ERR_LEN];
    int64_t shape[2] = {L, 16};
    rec_new_tensor(err, r, name, QIE_DT_BF16, 2, shape, (void **)&d);
    float *f = malloc(sizeof *f * (size_t)L * 16);
    rng_normal_cpu(f, (size_t)L * 16, seed, sub, 0);
    for (int i = 0; i < L * 16; i++) d[i] = f32_to_bf16(f[i]);
    free(f);
}

/* sample i of a demo-like set: target latent h x w, one source 8x8 (latent), text 6..9 rows.
 * The latents share a smooth per-channel pattern, so a model can learn them: the loss falls. */
static void make_record_(Record *r, int i, int h, int w, float nan_at) {
    char id[32];
    snprintf(id, sizeof id, "demo%04d", i);
    rec_init(r);
    rec_set_id(r, id);
    r->index = i;
    r->bucket[0] = 8 * h;
    r->bucket[1] = 8 * w;
    rec_set_text(r, "demo");
    rec_set_type(r, "image");
    rec_set_target(r, "t.png");
    rec_add_source(r, "s.png");
    int64_t ts[4] = {16, 1, h, w}, ss[4] = {16, 1, 8, 8};
    put_f32_(r, CACHE_T_TARGET_MEAN, 4, ts, 0.3f, 0.0f, 5, 1000 + i);
    float *m = (float *)rec_tensor(r, CACHE_T_TARGET_MEAN)->data;
    for (int c = 0; c < 16; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++) m[(c * h + y) * w + x] += 2.0f * sinf(0.7f * c + 0.5f * y) * cosf(0.3f * x + 0.2f * c);
    if (nan_at >= 0) m[(int)nan_at] = NAN;
    put_f32_(r, CACHE_T_TARGET_LOGVAR, 4, ts, 0.2f, -5.0f, 5, 2000 + i);
    put_f32_(r, "source_mean.0", 4, ss, 1.0f, 0.0f, 5, 3000 + i);
    put_f32_(r, "source_logvar.0", 4, ss, 0.2f, -5.0f, 5, 4000 + i);
    put_text_(r, CACHE_T_PROMPT_EMBEDS, 6 + i % 4, 5, 5000 + i);
    put_text_(r, CACHE_T_PROMPT_EMBEDS_EMPTY, 4, 5, 6000 + i);
}

static int write_records_(const char *path, int n, int nan_record, int bad_record) {
    char err[QIE_ERR_LEN];
    Endpoint *ep = NULL;
    if (ep_open(err, path, EP_WRITE, &ep)) {
        fprintf(stderr, "%s\n", err);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        Record r;
        int h = i % 2 ? 12 : 16, w = i % 2 ? 16 : 12;
        make_record_(&r, i, h, w, i == nan_record ? 5.0f : -1.0f);
        if (i == bad_record) { /* a latent that disagrees with its bucket */
            r.bucket[0] = 8 * 20;
        }
        if (i == bad_record + 1) rec_remove_tensor(&r, CACHE_T_PROMPT_EMBEDS); /* a missing part */
        if (ep_write_record(err, ep, &r)) {
            fprintf(stderr, "%s\n", err);
            rec_free(&r);
            ep_close(&ep);
            return -1;
        }
        rec_free(&r);
    }
    int rc = ep_finish(err, ep, 1, NULL);
    ep_close(&ep);
    return rc;
}

static void test_bad_records_and_nan(void) {
    char dir[512], recs[700], err[QIE_ERR_LEN] = "";
    tmpdir_(dir, sizeof dir);
    snprintf(recs, sizeof recs, "%s/recs.qie", dir);
    CHECK(write_records_(recs, 8, -1, 2) == 0);
    Dataset *ds = NULL;
    CHECK_RC(ds_open(err, recs, 16, 0, 1, &ds), err);
    CHECK(ds && ds_count(ds) == 6, "%u usable of 8 (2 bad)", ds ? ds_count(ds) : 0);
    ds_close(&ds);
    TrainConfig c;
    char out[700];
    snprintf(out, sizeof out, "%s/out", dir);
    cfg_init_(&c, out);
    c.in_url = recs;
    c.max_train_steps = 3;
    c.seed = 3;
    c.progress = 0;
    CHECK_RC(train_run(err, &c), err);
    /* a NaN in one latent: the run stops with TRAIN_ENONFINITE and a message */
    snprintf(recs, sizeof recs, "%s/nan.qie", dir);
    CHECK(write_records_(recs, 2, 1, -5) == 0);
    snprintf(out, sizeof out, "%s/out-nan", dir);
    cfg_init_(&c, out);
    c.in_url = recs;
    c.max_train_steps = 4;
    c.seed = 3;
    c.progress = 0;
    int rc = train_run(err, &c);
    CHECK(rc == TRAIN_ENONFINITE, "rc %d: %s", rc, err);
    CHECK(strstr(err, "NaN") != NULL, "%s", err);
    rmrf_(dir);
}

/* ---- units ----------------------------------------------------------------------------------- */

static void test_randperm(void) {
    char err[QIE_ERR_LEN];
    SafeTensors *st = NULL;
    CHECK_RC(st_open(err, gpath_("misc.safetensors"), &st), err);
    if (!st) return;
    int nperm = 0;
    for (size_t i = 0; i < st_count(st); i++) {
        const StTensor *t = st_tensor_at(st, i);
        unsigned long long seed;
        unsigned n;
        if (sscanf(t->name, "perm.%llu.%u", &seed, &n) != 2) continue;
        uint32_t *p = malloc(sizeof *p * n);
        smp_randperm(p, n, seed);
        int ok = 1;
        for (unsigned k = 0; k < n; k++) {
            int64_t v;
            memcpy(&v, (const char *)t->data + 8 * k, 8);
            if (v != p[k]) ok = 0;
        }
        CHECK(ok, "randperm(%u, seed %llu) differs from torch", n, seed);
        free(p);
        nperm++;
    }
    CHECK(nperm == 4);
    /* σ grids (diffusers FlowMatchEulerDiscreteScheduler, Qwen config) */
    float sig[1000], ts[1000];
    int L[3] = {12, 4096, 6889};
    for (int l = 0; l < 3; l++) {
        char n1[64], n2[64];
        snprintf(n1, sizeof n1, "sigmas.%d", L[l]);
        snprintf(n2, sizeof n2, "timesteps.%d", L[l]);
        const StTensor *es = st_find(st, n1), *et = st_find(st, n2);
        CHECK(es && et);
        if (!es || !et) continue;
        sch_sigmas(sig, ts, 1000, L[l]);
        float md = 0, mt = 0;
        for (int i = 0; i < 1000; i++) {
            float a = tf32_(es, (size_t)i), b = tf32_(et, (size_t)i);
            if (fabsf(a - sig[i]) > md) md = fabsf(a - sig[i]);
            if (fabsf(b - ts[i]) > mt) mt = fabsf(b - ts[i]);
        }
        CHECK(md <= 1.2e-7f && mt <= 1.2e-4f, "L=%d: sigma max diff %.3g, timestep %.3g", L[l], md, mt);
    }
    st_close(&st);
    /* spec §4.6 values (float64 there) */
    sch_sigmas(sig, ts, 1000, 6889);
    CHECK_NEAR(sig[0], 1.0, 1e-6);
    CHECK_NEAR(sig[1], 0.999573, 2e-6);
    CHECK_NEAR(sig[500], 0.702639, 2e-6);
    CHECK_NEAR(sig[999], 0.02, 1e-6);
    sch_sigmas(sig, ts, 1000, 4096);
    CHECK_NEAR(sig[500], 0.672767, 2e-6);
    CHECK_NEAR(sch_mu(4096), 0.693548, 1e-6);
}

static void test_schedules(void) {
    /* diffusers optimization.py values */
    CHECK(sch_lr_lambda(LRS_CONSTANT_WITH_WARMUP, 0, 100, 1000, 1e-4) == 0.0); /* update 1 at lr 0 */
    CHECK_NEAR(sch_lr_lambda(LRS_CONSTANT_WITH_WARMUP, 50, 100, 1000, 1e-4), 0.5, 1e-15);
    CHECK(sch_lr_lambda(LRS_CONSTANT_WITH_WARMUP, 100, 100, 1000, 1e-4) == 1.0);
    CHECK(sch_lr_lambda(LRS_CONSTANT, 0, 100, 1000, 1e-4) == 1.0);
    CHECK_NEAR(sch_lr_lambda(LRS_LINEAR, 550, 100, 1000, 1e-4), 0.5, 1e-15);
    CHECK_NEAR(sch_lr_lambda(LRS_COSINE, 550, 100, 1000, 1e-4), 0.5, 1e-12);
    CHECK_NEAR(sch_lr_lambda(LRS_COSINE, 1000, 100, 1000, 1e-4), 0.0, 1e-12);
    CHECK_NEAR(sch_lr_lambda(LRS_COSINE_WITH_RESTARTS, 550, 100, 1000, 1e-4), 0.5, 1e-12);
    CHECK_NEAR(sch_lr_lambda(LRS_COSINE_WITH_RESTARTS, 775, 100, 1000, 1e-4), 0.5 * (1 + cos(M_PI * 0.75)), 1e-12);
    CHECK_NEAR(sch_lr_lambda(LRS_POLYNOMIAL, 550, 100, 1000, 1e-4), ((1e-4 - 1e-7) * 0.5 + 1e-7) / 1e-4, 1e-12);
    CHECK_NEAR(sch_lr_lambda(LRS_POLYNOMIAL, 2000, 100, 1000, 1e-4), 1e-3, 1e-12);
    /* clipping threshold: 0.25 at step 0 -> 0.05 at step 1000 with the doc's 0.05 (spec §4.8) */
    CHECK_NEAR(sch_clip_threshold(0.05, 5, 1000, 0, 1.0), 0.25, 1e-12);
    CHECK_NEAR(sch_clip_threshold(0.05, 5, 1000, 500, 1.0), 0.15, 1e-12);
    CHECK_NEAR(sch_clip_threshold(0.05, 5, 1000, 1000, 0.2), 0.05, 1e-12);       /* norm/c = 4: kept */
    CHECK_NEAR(sch_clip_threshold(0.05, 5, 1000, 1001, 0.35), 0.05 / 7, 1e-12);  /* 7x: shrunk by 7 */
    CHECK_NEAR(sch_clip_threshold(0.05, 5, 1000, 1001, 1.0), 0.005, 1e-12);      /* capped at /10 */
    CHECK_NEAR(sch_clip_threshold(1.0, 1, 1000, 0, 0.5), 1.0, 1e-12);            /* ratio 1: fixed */
    CHECK_NEAR(sch_weight(WS_SIGMA_SQRT, 0.5f), 4.0, 1e-6);
    CHECK_NEAR(sch_weight(WS_COSMAP, 0.5f), 2.0 / (M_PI * 0.5), 1e-6);
    CHECK(sch_weight(WS_LOGIT_NORMAL, 0.3f) == 1.0f);
    CHECK_NEAR(sch_density(WS_LOGIT_NORMAL, 0.3, 0.0, 0.0, 1.0, 1.29), 0.5, 1e-12);
    CHECK_NEAR(sch_density(WS_MODE, 0.0, 0.0, 0.0, 1.0, 1.29), 1.0, 1e-12);
    CHECK_NEAR(sch_density(WS_NONE, 0.25, 0.0, 0.0, 1.0, 1.29), 0.25, 1e-12);
}

static void test_clip_threshold_quirk(void) {
    /* the abnormal rule needs step > start (strictly), as train_edit.py */
    CHECK_NEAR(sch_clip_threshold(0.05, 5, 1000, 1000, 1.0), 0.05, 1e-12);
}

static void test_adamw_norm(void) {
    float master[8] = {1, -2, 0.5f, 0, 3, 0, 0, 0}, m[8] = {0}, v[8] = {0}, g[8] = {0.1f, -0.2f, 0, 1e-3f, 4, 0, 0, 0};
    float params[8];
    AdamWArgs a;
    adamw_args(&a, 1e-2, 0.9, 0.999, 1e-8, 0.1, 1, 0.5);
    adamw_update_cpu(master, params, g, m, v, 8, &a);
    /* step 1: m̂/sqrt(v̂) = sign(g): p = p(1 − lr·wd) − lr·sign(g) (to eps) */
    CHECK_NEAR(master[0], 1.0 * (1 - 1e-3) - 1e-2, 1e-6);
    CHECK_NEAR(master[1], -2.0 * (1 - 1e-3) + 1e-2, 1e-6);
    CHECK_NEAR(master[2], 0.5 * (1 - 1e-3), 1e-7);
    CHECK(master[5] == 0 && m[5] == 0 && v[5] == 0 && params[5] == 0); /* padding stays 0 */
    CHECK(memcmp(master, params, sizeof master) == 0);
    CHECK_NEAR(m[4], 0.1 * 4 * 0.5, 1e-6); /* grad_scale applied before the moments */
    CHECK_NEAR(global_norm_squared_cpu(g, 8), 0.01 + 0.04 + 1e-6 + 16, 1e-6);
    OpCtx c;
    char err[QIE_ERR_LEN];
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    CHECK_NEAR(op_global_norm_squared(&c, NULL, g, 8), 16.050001, 1e-6);
    opctx_free(&c);
}

static void test_pack(void) {
    float z[16 * 4 * 6], out[16 * 4 * 6];
    for (int i = 0; i < 16 * 4 * 6; i++) z[i] = (float)i;
    obj_pack(out, z, 16, 4, 6);
    /* token (y2, x2) = (1, 2), feature c·4 + dy·2 + dx = (3, 1, 0) */
    int tok = 1 * 3 + 2, f = 3 * 4 + 1 * 2 + 0;
    CHECK(out[tok * 64 + f] == z[(3 * 4 + 2 * 1 + 1) * 6 + 2 * 2 + 0]);
    /* posterior: logvar clamped at 20, normalisation per channel */
    float mean[16 * 2 * 2] = {0}, lv[16 * 2 * 2], eps[16 * 2 * 2], lat[16 * 2 * 2];
    for (int i = 0; i < 64; i++) {
        lv[i] = 100.0f;
        eps[i] = 0.0f;
    }
    obj_latent(lat, mean, lv, eps, 16, 2, 2);
    CHECK_NEAR(lat[0], (0 + 0.7571) / 2.8184, 1e-6);
    float xs[4], v[4], x0[4] = {1, 2, 3, 4}, e[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    obj_noisy(xs, v, x0, e, 0.25f, 4, 0);
    CHECK(xs[0] == 0.75f * 1 + 0.25f * 0.5f && v[1] == 0.5f - 2);
    float pred[3] = {0, 100, 1}, vv[3] = {1, 0, 1}, d[3];
    double s = obj_loss(d, pred, vv, 2.0f, 3, 0.5f);
    CHECK(s == 2.0); /* (−1)²·2 + masked + 0 */
    CHECK(d[0] == 2.0f * 2.0f * -1.0f * 0.5f && d[1] == 0.0f);
}

static void test_sampler(void) {
    SmpItem it[10];
    for (int i = 0; i < 10; i++) it[i].key = (uint32_t)(i % 3 == 0);
    SmpEpoch ep = {0};
    char err[QIE_ERR_LEN];
    CHECK_RC(smp_epoch_build(err, &ep, it, 10, 2, 42, 0, 0, 1), err);
    /* key 1: 4 items -> 2 batches; key 0: 6 items -> 3 batches */
    CHECK(ep.nbatches == 5, "%zu", ep.nbatches);
    for (size_t j = 0; j < ep.nbatches; j++) CHECK(it[ep.idx[ep.off[j]]].key == it[ep.idx[ep.off[j] + 1]].key);
    SmpEpoch r0 = {0}, r1 = {0};
    smp_epoch_build(err, &r0, it, 10, 2, 42, 0, 0, 2);
    smp_epoch_build(err, &r1, it, 10, 2, 42, 0, 1, 2);
    CHECK(r0.nbatches == 2 && r1.nbatches == 2); /* 5 batches, 2 ranks: a trailing round dropped */
    CHECK(r0.idx[0] == ep.idx[0] && r1.idx[0] == ep.idx[2] && r0.idx[2] == ep.idx[4]);
    SmpEpoch e1 = {0};
    smp_epoch_build(err, &e1, it, 10, 2, 42, 1, 0, 1);
    CHECK(memcmp(e1.idx, ep.idx, sizeof *ep.idx * 10) != 0); /* another epoch, another order */
    smp_epoch_free(&ep);
    smp_epoch_free(&r0);
    smp_epoch_free(&r1);
    smp_epoch_free(&e1);
    Mt19937 g;
    mt_seed(&g, 5489u);
    uint32_t x = 0;
    for (int i = 0; i < 10000; i++) x = mt_next(&g);
    CHECK(x == 4123659995u, "mt19937 10000th output %u", x); /* the C++ standard's check value */
}

static void test_tb(void) {
    CHECK(tb_crc32c("123456789", 9) == 0xE3069283u);
    char dir[512], err[QIE_ERR_LEN] = "";
    tmpdir_(dir, sizeof dir);
    TbWriter *w = NULL;
    CHECK_RC(tb_open(err, dir, &w), err);
    CHECK_RC(tb_scalar(err, w, "train_loss", 0.5f, 7, 1.0), err);
    tb_close(&w);
    DIR *d = opendir(dir);
    struct dirent *de;
    char path[1024] = "";
    while (d && (de = readdir(d)))
        if (strstr(de->d_name, "tfevents")) snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
    if (d) closedir(d);
    size_t n = 0;
    uint8_t *b = (uint8_t *)train_read_file(err, path, &n);
    CHECK(b != NULL);
    int recs = 0;
    for (size_t o = 0; b && o + 12 <= n;) {
        uint64_t len;
        uint32_t c1, c2;
        memcpy(&len, b + o, 8);
        memcpy(&c1, b + o + 8, 4);
        uint32_t k = tb_crc32c(b + o, 8);
        CHECK(c1 == ((k >> 15) | (k << 17)) + 0xa282ead8u);
        memcpy(&c2, b + o + 12 + len, 4);
        k = tb_crc32c(b + o + 12, len);
        CHECK(c2 == ((k >> 15) | (k << 17)) + 0xa282ead8u);
        if (recs == 1) CHECK(memmem(b + o + 12, len, "train_loss", 10) != NULL);
        o += 16 + len;
        recs++;
    }
    CHECK(recs == 2);
    free(b);
    rmrf_(dir);
}

/* ---- several ranks (dist.c) ------------------------------------------------------------------ */

/* Full f32 weights of DIR: a checkpoint of either format (master) or a transformer folder. */
static int full_weights_(char *err, const DitLayout *lay, const char *dir, float *out) {
    char p[1200];
    snprintf(p, sizeof p, "%s/layout.json", dir);
    struct stat sb;
    if (!stat(p, &sb)) {
        CkptReader *r = NULL;
        int rc = ckpt_reader_open(err, dir, &r);
        if (!rc) rc = ckpt_reader_check(err, r, lay);
        if (!rc) rc = ckpt_reader_read(err, r, CKPT_MASTER, 0, lay->num_params, out);
        ckpt_reader_close(&r);
        return rc;
    }
    snprintf(p, sizeof p, "%s/optimizer", dir);
    if (!stat(p, &sb)) {
        float *m = malloc(lay->num_params * sizeof *m), *v = malloc(lay->num_params * sizeof *v);
        int rc = m && v ? ckpt_load_optimizer(err, dir, lay, out, m, v) : QIE_ENOMEM;
        free(m);
        free(v);
        return rc;
    }
    StModel *st = NULL;
    int rc = st_model_open(err, dir, &st);
    if (!rc) rc = dit_load_weights(err, lay, st, out);
    st_model_close(&st);
    return rc;
}

/* test_train --max-diff MODEL A B: max |A - B| over the weights (t_dist.sh) */
static int max_diff_main_(const char *model, const char *a, const char *b) {
    char err[QIE_ERR_LEN];
    DitConfig dc;
    DitLayout lay = {0};
    if (dit_config_load(err, model, &dc) || dit_layout_init(err, &lay, &dc)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    float *x = malloc(lay.num_params * sizeof *x), *y = malloc(lay.num_params * sizeof *y);
    if (!x || !y || full_weights_(err, &lay, a, x) || full_weights_(err, &lay, b, y)) {
        fprintf(stderr, "%s\n", err);
        return 2;
    }
    double md = 0, mw = 0;
    int where = 0;
    for (int k = 0; k < lay.ntensors; k++)
        for (size_t i = 0; i < lay.tensors[k].numel; i++) {
            size_t o = lay.tensors[k].offset + i;
            double d = fabs((double)x[o] - y[o]);
            if (d > md) md = d, where = k;
            if (fabs(x[o]) > mw) mw = fabs(x[o]);
        }
    printf("%.3g %s (max |w| %.3g)\n", md, lay.tensors[where].name, mw);
    free(x);
    free(y);
    dit_layout_free(&lay);
    return 0;
}

static void test_dist_flags(void) {
    char dir[512], p[700], err[QIE_ERR_LEN];
    tmpdir_(dir, sizeof dir);
    TrainConfig c;
    cfg_init_(&c, dir);
    c.world = 4;
    c.train_batch_size = 1;
    c.gradient_accumulation_steps = 2;
    DistFlags f = {0};
    f.zero_stage = -1;
    /* the reference's config/zero_stage2_config.json and zero_stage3_config.json (§7.1, §7.2) */
    snprintf(p, sizeof p, "%s/z2.json", dir);
    const char *z2 = "{\"bf16\": {\"enabled\": true}, \"train_micro_batch_size_per_gpu\": 1, \"train_batch_size\": \"auto\", "
                     "\"gradient_accumulation_steps\": \"auto\", \"dump_state\": true, \"zero_optimization\": {\"stage\": 2, "
                     "\"overlap_comm\": true, \"contiguous_gradients\": true, \"sub_group_size\": 1e9, \"reduce_bucket_size\": 5e8}}";
    CHECK_RC(train_write_file(err, p, z2, strlen(z2)), err);
    f.use_deepspeed = 1;
    f.deepspeed_config_file = p;
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_ZERO2, "%d", (int)c.strategy);
    snprintf(p, sizeof p, "%s/z3.json", dir);
    const char *z3 = "{\"bf16\": {\"enabled\": true}, \"train_micro_batch_size_per_gpu\": 1, \"train_batch_size\": 8, "
                     "\"gradient_accumulation_steps\": \"auto\", \"gradient_clipping\": \"auto\", \"zero_optimization\": "
                     "{\"stage\": 3, \"stage3_gather_16bit_weights_on_model_save\": \"auto\", \"offload_optimizer\": "
                     "{\"device\": \"none\"}}}";
    CHECK_RC(train_write_file(err, p, z3, strlen(z3)), err);
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_ZERO3 && c.param_residency_block);
    c.gradient_accumulation_steps = 3; /* train_batch_size 8 != 1 x 3 x 4 */
    CHECK(dst_resolve(err, &f, &c) == QIE_EINVAL && strstr(err, "train_batch_size"), "%s", err);
    c.gradient_accumulation_steps = 2;
    f.zero_stage = 0; /* --zero_stage wins */
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_DDP);
    snprintf(p, sizeof p, "%s/fp16.json", dir);
    const char *h = "{\"fp16\": {\"enabled\": true}, \"zero_optimization\": {\"stage\": 2}}";
    CHECK_RC(train_write_file(err, p, h, strlen(h)), err);
    f.zero_stage = -1;
    CHECK(dst_resolve(err, &f, &c) == QIE_EUNSUPPORTED);
    /* FSDP spellings */
    memset(&f, 0, sizeof f);
    f.zero_stage = -1;
    f.use_fsdp = 1;
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_ZERO3, "FULL_SHARD is the default");
    f.fsdp_sharding_strategy = "SHARD_GRAD_OP";
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_ZERO2);
    f.fsdp_sharding_strategy = "3";
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_DDP);
    f.fsdp_sharding_strategy = "HYBRID_SHARD";
    CHECK(dst_resolve(err, &f, &c) == QIE_EUNSUPPORTED);
    /* --distributed; world 3 cannot shard blocks equally: ddp */
    memset(&f, 0, sizeof f);
    f.zero_stage = -1;
    f.distributed = "fsdp";
    c.world = 3;
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_DDP, "world 3 falls back to ddp");
    c.world = 1;
    f.distributed = NULL;
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_NONE);
    c.device = "cuda"; /* auto residency: block on one GPU unless --distributed says otherwise */
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_ZERO3 && c.param_residency_block, "one GPU: block by default");
    f.distributed = "none";
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_NONE, "--distributed none keeps the resident weights");
    f.distributed = NULL;
    f.param_residency = "full";
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_NONE);
    c.device = "cpu";
    f.param_residency = "block"; /* one process: zero3 with the weights made per block */
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.strategy == TS_ZERO3 && c.param_residency_block);
    CHECK(c.grad_compute_dtype == (c.gradient_accumulation_steps == 1), "--gradient_dtype auto");
    f.gradient_dtype = "fp32";
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(!c.grad_compute_dtype);
    f.gradient_dtype = "bf16";
    CHECK_RC(dst_resolve(err, &f, &c), err);
    CHECK(c.grad_compute_dtype);
    f.gradient_dtype = "fp16";
    CHECK(dst_resolve(err, &f, &c) == QIE_EINVAL, "--gradient_dtype fp16 refused");
    f.param_residency = NULL;
    f.gradient_dtype = "bf16";
    CHECK(dst_resolve(err, &f, &c) == QIE_EINVAL, "bf16 gradients need block residency");
    f.gradient_dtype = NULL;
    f.param_residency = "block";
    f.distributed = "zero2";
    CHECK(dst_resolve(err, &f, &c) == QIE_EINVAL);
    f.distributed = "bogus";
    f.param_residency = NULL;
    CHECK(dst_resolve(err, &f, &c) == QIE_EINVAL);
    rmrf_(dir);
}

/* One process, --distributed ddp and zero3 (= --param_residency block: no resident bf16 weights,
 * each block made from the fp32 master when used, on the side queue) against the plain trainer:
 * the same bits. The world-1 collectives are copies and zero3's per-pass gradient slots add in
 * the same order as the resident buffer. Also zero3 with the gradient kept in the compute dtype
 * (--gradient_dtype bf16: f32 on the CPU, so only the slot and its rounding pass are exercised)
 * and the plain trainer with --recompute_attention (kept attention outputs are the recompute's
 * bits). Then a zero3 checkpoint resumed by the plain trainer (and vice versa). */
static void test_dist_world1(void) {
    enum { NV = 5 };
    char d[NV][512], err[QIE_ERR_LEN] = "";
    for (int i = 0; i < NV; i++) tmpdir_(d[i], sizeof d[i]);
    TrainStrategy st[NV] = {TS_NONE, TS_DDP, TS_ZERO3, TS_ZERO3, TS_NONE};
    const char *names[NV] = {"plain", "ddp", "zero3", "zero3 + compute-dtype gradients", "plain + recompute_attention"};
    for (int i = 0; i < NV; i++) {
        TrainConfig c;
        cfg_golden_(&c, "b", d[i]);
        c.draws_path = NULL;
        c.uniform_sampling = 1;
        c.gradient_checkpointing = 1; /* zero3 recomputes inside acquire/release */
        c.checkpointing_steps = 5;
        c.strategy = st[i];
        c.param_residency_block = st[i] == TS_ZERO3;
        c.grad_compute_dtype = i == 3;
        c.recompute_attention = i == 4;
        CHECK_RC(train_run(err, &c), err);
    }
    DitConfig dc;
    DitLayout lay = {0};
    CHECK_RC(dit_config_load(err, gpath_("model"), &dc), err);
    CHECK_RC(dit_layout_init(err, &lay, &dc), err);
    float *w[NV];
    for (int i = 0; i < NV; i++) {
        char p[NV * 512 + 32];
        snprintf(p, sizeof p, "%s/checkpoint-10", d[i]);
        w[i] = calloc(lay.num_params, sizeof(float));
        CHECK_RC(full_weights_(err, &lay, p, w[i]), err);
    }
    for (int i = 1; i < NV; i++) {
        size_t bad = 0;
        for (size_t k = 0; k < lay.num_params; k++) bad += w[i][k] != w[0][k];
        CHECK(bad == 0, "%s: %zu of %zu weights differ from the plain trainer", names[i], bad, lay.num_params);
    }
    same_tree_(d[0], d[2], "transformer");
    /* cross-format resume: plain checkpoint-5 continued by zero3, and zero3's by the plain trainer */
    for (int i = 0; i < 2; i++) {
        char o[512], from[700];
        tmpdir_(o, sizeof o);
        snprintf(from, sizeof from, "%s/checkpoint-5", i ? d[2] : d[0]);
        TrainConfig c;
        cfg_golden_(&c, "b", o);
        c.draws_path = NULL;
        c.uniform_sampling = 1;
        c.checkpointing_steps = 5;
        c.resume_from_checkpoint = from;
        c.strategy = i ? TS_NONE : TS_ZERO3;
        c.param_residency_block = !i;
        CHECK_RC(train_run(err, &c), err);
        char p[700];
        snprintf(p, sizeof p, "%s/checkpoint-10", o);
        float *x = calloc(lay.num_params, sizeof(float));
        CHECK_RC(full_weights_(err, &lay, p, x), err);
        size_t bad = 0;
        for (size_t k = 0; k < lay.num_params; k++) bad += x[k] != w[0][k];
        CHECK(bad == 0, "resume %s -> %s: %zu weights differ", i ? "zero3" : "plain", i ? "plain" : "zero3", bad);
        free(x);
        rmrf_(o);
    }
    for (int i = 0; i < NV; i++) {
        free(w[i]);
        rmrf_(d[i]);
    }
    dit_layout_free(&lay);
}

int main(int argc, char **argv) {
    if (argc >= 3 && !strcmp(argv[1], "--make-demo")) return write_records_(argv[2], argc > 3 ? atoi(argv[3]) : 24, -1, -5) ? 1 : 0;
    if (argc == 5 && !strcmp(argv[1], "--max-diff")) return max_diff_main_(argv[2], argv[3], argv[4]);
    log_init("test-train");
    log_set_level(getenv("QIE_TEST_VERBOSE") ? LOG_INFO : LOG_ERROR);
    TEST_RUN(test_randperm);
    TEST_RUN(test_schedules);
    TEST_RUN(test_clip_threshold_quirk);
    TEST_RUN(test_adamw_norm);
    TEST_RUN(test_pack);
    TEST_RUN(test_sampler);
    TEST_RUN(test_tb);
    TEST_RUN(test_golden_a);
    TEST_RUN(test_golden_b);
    TEST_RUN(test_resume_exact);
    TEST_RUN(test_bad_records_and_nan);
    TEST_RUN(test_dist_flags);
    TEST_RUN(test_dist_world1);
    return TEST_DONE();
}
