/* train_loop.c: the run (train.h). Setup, then per optimizer step:
 *   1. the step's micro-batches: min(GA, batches left in the epoch) of them (decisions.md: the
 *      epoch-end partial group is averaged over the micro-batches it really has);
 *   2. per micro-batch: load and validate the samples, the host draws (σ index, dropout), then per
 *      group of samples sharing image shapes the objective on the device (kernels/objective.h:
 *      posterior samples, ε, x_σ, v), the DiT, the loss and its gradient (on the device too,
 *      scaled 1/(B·N_tgt·64·k) so the gradients are the reference's mean) into the backward;
 *      the micro-batches' losses stay on the device and are read once per step;
 *   3. global norm of the trainable gradients, the plain-mode clipping threshold
 *      (decisions.md), AdamW on the fp32 master with the clip factor folded in, LR schedule;
 *   4. logs, progress, checkpoint.
 * Exact resume: the state is (master, m, v, global_step, micro, epoch, batch_pos, seed); every
 * random draw is a pure function of (seed, micro-batch slot), the data order of (seed, epoch). */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "adamw.h"
#include "fsutil.h"
#include "err.h"
#include "global_norm.h"
#include "log.h"
#include "objective.h"
#include "progress.h"
#include "rng.h"
#include "safetensors.h"
#include "train.h"

typedef struct {
    size_t off, size;
    int group; /* 0: learning_rate, 1: learning_rate / 2 */
} Segment;

typedef struct {
    void *p;
    size_t cap;
} DevBuf;

/* a trainable segment's part in this rank's shard: local (master, m, v) and global offsets */
typedef struct {
    size_t loc, glob, n;
    int group;
} Piece;

typedef struct {
    const TrainConfig *cfg;
    OpCtx ctx;
    int round;                 /* compute dtype is bf16: round where the reference's tensors are bf16 */
    Dit *dit;
    char *config_json;
    float *h_master, *h_m, *h_v; /* host copies of this rank's shard [dist.nloc] (CPU: the live buffers) */
    float *h_full;             /* the loaded weights [num_params], until they are sliced */
    float *d_master, *d_m, *d_v;
    Dist dist;                 /* ranks, shards, collectives (dist.c) */
    Piece *pc;                 /* trainable pieces of this rank's shard */
    int npc;
    unsigned char *frozen;     /* per layout tensor: 1 when not trained (layout.json) */
    float *scratch;
    Segment *seg;
    int nseg;
    Dataset *ds;
    Draws *drw;
    SmpEpoch ep;
    TrainState st;
    int64_t M;                 /* optimizer steps of the run (LR horizon) */
    double base_lr;
    int T;
    float *sig, *ts;           /* σ grid and timesteps for sig_L */
    int64_t sig_L;
    DevBuf dx, dtxt, dgrad;
    DevBuf dtxt32, dv, dmean, dlogvar, deps, dnoise; /* the objective's inputs and target on the device */
    double *d_loss;            /* [gradient_accumulation_steps] per micro-batch loss, then the loss op's scratch */
    TbWriter *tb;
    FILE *jsonl;
    Progress prog;
    char last_ckpt[4400];
    double step_flops;         /* model FLOPs of this rank's passes in the step (3x forward) */
    char **bad_ids;            /* reported once each */
    size_t nbad;
} Trainer;

/* ---- small helpers ------------------------------------------------------------------------- */

static void *devbuf_(Trainer *t, DevBuf *b, size_t bytes) {
    if (bytes > b->cap) {
        op_free(&t->ctx, b->p);
        b->p = op_alloc(&t->ctx, bytes);
        b->cap = bytes;
    }
    return b->p;
}

static int matches_(const char *name, const CliStrs *s) {
    for (int i = 0; i < s->n; i++)
        if (strstr(name, s->v[i])) return 1;
    return 0;
}

/* trainable segments in buffer order (each tensor extended over the padding after it) */
static int segments_(char *err, Trainer *t) {
    const DitLayout *lay = &t->dit->lay;
    const TrainConfig *c = t->cfg;
    CliStrs all = {1, {"."}};
    const CliStrs *g0 = c->trainable_modules.n ? &c->trainable_modules : &all;
    t->seg = calloc((size_t)lay->ntensors, sizeof *t->seg);
    t->frozen = calloc((size_t)lay->ntensors, 1);
    if (!t->seg || !t->frozen) return QIE_ENOMEM;
    size_t ntrain = 0, nlow = 0;
    for (int k = 0; k < lay->ntensors; k++) {
        const DitTensorInfo *ti = &lay->tensors[k];
        int g = matches_(ti->name, g0) ? 0 : matches_(ti->name, &c->trainable_modules_low_learning_rate) ? 1 : -1;
        t->frozen[k] = g < 0;
        if (g < 0) continue;
        size_t end = k + 1 < lay->ntensors ? lay->tensors[k + 1].offset : lay->num_params;
        ntrain += ti->numel;
        if (g == 1) nlow += ti->numel;
        Segment *s = t->nseg ? &t->seg[t->nseg - 1] : NULL;
        if (s && s->group == g && s->off + s->size == ti->offset) s->size = end - s->off;
        else t->seg[t->nseg++] = (Segment){ti->offset, end - ti->offset, g};
    }
    if (!ntrain) {
        qie_seterr(err, "--trainable_modules: no parameter name contains any of the given substrings");
        return QIE_EINVAL;
    }
    log_info0("trainable: %zu of %zu parameters (%zu at learning_rate/2), %d segment(s)", ntrain, lay->num_real, nlow,
              t->nseg);
    /* the same segments cut to this rank's shard (every rank: the whole buffer unless ZeRO) */
    const Dist *d = &t->dist;
    t->pc = calloc((size_t)(t->nseg + d->nsegs), sizeof *t->pc);
    if (!t->pc) return QIE_ENOMEM;
    for (int i = 0; i < t->nseg; i++)
        for (int k = 0; k < d->nsegs; k++) {
            size_t a = t->seg[i].off > d->segs[k].start ? t->seg[i].off : d->segs[k].start;
            size_t b = t->seg[i].off + t->seg[i].size < d->segs[k].end ? t->seg[i].off + t->seg[i].size : d->segs[k].end;
            if (a >= b) continue;
            Piece *p = t->npc ? &t->pc[t->npc - 1] : NULL;
            Piece q = {d->loc[k] + (a - d->segs[k].start), a, b - a, t->seg[i].group};
            /* two sorted disjoint families meet in at most nseg + nsegs - 1 pieces */
            if (p && p->group == q.group && p->glob + p->n == q.glob && p->loc + p->n == q.loc) p->n += q.n;
            else t->pc[t->npc++] = q;
        }
    return 0;
}

static const float *sigmas_for_(Trainer *t, int64_t L) {
    if (L != t->sig_L) {
        sch_sigmas(t->sig, t->ts, t->T, L);
        t->sig_L = L;
    }
    return t->sig;
}

static void report_bad_(Trainer *t, const char *id, const char *why) {
    for (size_t i = 0; i < t->nbad; i++)
        if (!strcmp(t->bad_ids[i], id)) return;
    char **b = realloc(t->bad_ids, sizeof *b * (t->nbad + 1));
    if (b) {
        t->bad_ids = b;
        b[t->nbad++] = strdup(id);
    }
    log_warn("sample %s skipped: %s", id, why);
}

/* ---- one micro-batch ----------------------------------------------------------------------- */

typedef struct {
    int ok;
    int N, Ntot;           /* target tokens, all image tokens */
    uint64_t slot;         /* the draws' sample slot, micro-batch and row (draws.c) */
    int64_t m;
    int b;
    float sigma;           /* σ in the compute dtype */
    float sigma_w;         /* loss weight */
    float tmodel;          /* t/1000 */
    int64_t idx;
    const float *txt;      /* borrowed from the sample */
    int L;
} Prepared;

/* The host half of a sample's objective: the σ index, σ, the weight, the timestep, the caption
 * dropout. The tensors (posterior samples, ε, x_σ, v) are made on the device by build_. */
static int prepare_(char *err, Trainer *t, Sample *s, int64_t m, int b, uint64_t slot, int stratum, int nstrata,
                    Prepared *p) {
    const TrainConfig *c = t->cfg;
    int rc = 0;
    p->N = (s->h / 2) * (s->w / 2);
    p->Ntot = p->N;
    for (int k = 0; k < s->nsrc; k++) p->Ntot += (s->sh[k] / 2) * (s->sw[k] / 2);
    p->slot = slot;
    p->m = m;
    p->b = b;
    /* the σ index (train_edit.py order: VAE sample first, then ε, then the index; the draws are
     * keyed by purpose, so the order they are taken in does not matter) */
    if (drw_replaying(t->drw)) {
        if ((rc = drw_sigma_index(err, t->drw, m, b, &p->idx))) return rc;
    } else if (c->uniform_sampling) {
        /* decisions.md: stratified over the step's samples, strata shuffled each step */
        double u = drw_uniform(t->drw, DRW_SIGMA_U, slot);
        p->idx = (int64_t)floor((stratum + u) * (double)t->T / nstrata);
    } else {
        double u0 = drw_uniform(t->drw, DRW_SIGMA_U, slot), z = 0.0;
        if (c->weighting_scheme == WS_LOGIT_NORMAL) {
            float zf;
            drw_normal(err, t->drw, DRW_SIGMA_Z, slot, 0, m, b, &zf, 1);
            z = zf;
        }
        double u = sch_density(c->weighting_scheme, u0, z, c->logit_mean, c->logit_std, c->mode_scale);
        p->idx = (int64_t)(u * 1000.0); /* num_train_timesteps, as the reference (§4.5) */
    }
    if (p->idx < 0) p->idx = 0;
    if (p->idx >= t->T) p->idx = t->T - 1;
    const float *sig = sigmas_for_(t, p->N);
    float sigma = sig[p->idx];
    if (t->round) sigma = bf16_to_f32(f32_to_bf16(sigma));
    p->sigma = sigma;
    p->tmodel = t->ts[p->idx] / 1000.0f;
    p->sigma_w = sch_weight(c->weighting_scheme, sigma);
    /* caption dropout from the cached empty-prompt embedding */
    int drop = 0;
    if (drw_replaying(t->drw)) {
        if (c->text_drop_ratio > 0 && (rc = drw_text_drop(err, t->drw, m, b, &drop))) return rc;
    } else if (c->text_drop_ratio > 0) {
        drop = drw_uniform(t->drw, DRW_DROP, slot) < c->text_drop_ratio;
    }
    if (drop && !s->txt_empty) {
        qie_seterr(err, "no prompt_embeds_empty for caption dropout");
        return QIE_EFORMAT;
    }
    p->txt = drop ? s->txt_empty : s->txt;
    p->L = drop ? s->L_empty : s->L;
    p->ok = 1;
    return 0;
}

/* n normals of (purpose, img) for sample p into b (f32 on the device): on the host into the CPU
 * buffer itself; on CUDA drawn there (Philox), or replayed from the file and uploaded. */
static int draw_(char *err, Trainer *t, DevBuf *b, int purpose, const Prepared *p, int img, size_t n, const float **out) {
    float *d = devbuf_(t, b, n * sizeof(float));
    *out = d;
    if (t->ctx.dev == QIE_DEV_CPU) return drw_normal(err, t->drw, purpose, p->slot, img, p->m, p->b, d, n);
#ifdef QIE_CUDA
    /* draws.c's Philox stream of (purpose, img, slot): the device draws the same normals (rng.h) */
    if (!drw_replaying(t->drw)) return rng_normal(d, n, t->st.seed, drw_subseq(purpose, img, p->slot), 0, t->ctx.stream);
#endif
    float *h = malloc(sizeof *h * n);
    if (!h) {
        qie_seterr(err, "out of memory");
        return QIE_ENOMEM;
    }
    int rc = drw_normal(err, t->drw, purpose, p->slot, img, p->m, p->b, h, n);
    if (!rc) op_objective_upload(&t->ctx, d, h, n);
    free(h);
    return rc;
}

/* a host f32 array where the ops can read it: itself on CPU, an async upload into b on CUDA */
static const float *onto_(Trainer *t, DevBuf *b, const float *h, size_t n) {
    if (t->ctx.dev == QIE_DEV_CPU) return h;
    float *d = devbuf_(t, b, n * sizeof(float));
    op_objective_upload(&t->ctx, d, h, n);
    return d;
}

/* The device half of a sample's objective (objective.h): x [Ntot, 64] act gets x_σ then the
 * packed clean sources, v [N, 64] f32 the target. */
static int build_(char *err, Trainer *t, const Sample *s, const Prepared *p, void *x, float *v) {
    const int C = TRAIN_LATENT_CH, F = 4 * C;
    const size_t es = op_act_size(&t->ctx);
    size_t big = (size_t)C * s->h * s->w;
    for (int k = 0; k < s->nsrc; k++)
        if ((size_t)C * s->sh[k] * s->sw[k] > big) big = (size_t)C * s->sh[k] * s->sw[k];
    /* sized once for the sample's largest image: no reallocation between its images */
    devbuf_(t, &t->deps, big * sizeof(float));
    if (t->ctx.dev != QIE_DEV_CPU) {
        devbuf_(t, &t->dmean, big * sizeof(float));
        devbuf_(t, &t->dlogvar, big * sizeof(float));
    }
    const float *eps, *noise;
    size_t n = (size_t)C * s->h * s->w;
    int rc;
    /* the target: posterior sample, normalise, pack; ε; x_σ and v */
    if ((rc = draw_(err, t, &t->deps, DRW_POST, p, 0, n, &eps))) return rc;
    if ((rc = draw_(err, t, &t->dnoise, DRW_NOISE, p, 0, (size_t)p->N * F, &noise))) return rc;
    op_objective_target(&t->ctx, x, v, onto_(t, &t->dmean, s->mean, n), onto_(t, &t->dlogvar, s->logvar, n), eps, noise,
                        p->sigma, C, s->h, s->w);
    /* the sources, clean, after the target tokens */
    size_t row = (size_t)p->N;
    for (int k = 0; k < s->nsrc; k++) {
        n = (size_t)C * s->sh[k] * s->sw[k];
        if ((rc = draw_(err, t, &t->deps, DRW_POST, p, 1 + k, n, &eps))) return rc;
        op_objective_source(&t->ctx, (char *)x + row * F * es, onto_(t, &t->dmean, s->smean[k], n),
                            onto_(t, &t->dlogvar, s->slogvar[k], n), eps, C, s->sh[k], s->sw[k]);
        row += (size_t)(s->sh[k] / 2) * (s->sw[k] / 2);
    }
    return 0;
}

static void prepared_free_(Prepared *p) { memset(p, 0, sizeof *p); }

static int same_images_(const Sample *a, const Sample *b) {
    if (a->h != b->h || a->w != b->w || a->nsrc != b->nsrc) return 0;
    for (int k = 0; k < a->nsrc; k++)
        if (a->sh[k] != b->sh[k] || a->sw[k] != b->sw[k]) return 0;
    return 1;
}

/* Runs one micro-batch; *acc (on the device, zeroed by the caller) gets its mean loss, *nvalid the
 * samples used. */
static int micro_(char *err, Trainer *t, const uint32_t *items, int B, int j, int k, const int *strata, int nstrata,
                  int last, double *acc, int *nvalid) {
    const TrainConfig *c = t->cfg;
    const int64_t m = t->st.micro;
    const int F = 4 * TRAIN_LATENT_CH, J = t->dit->cfg.joint_dim, OD = t->dit->cfg.out_dim;
    Sample *s = calloc((size_t)B, sizeof *s);
    Prepared *p = calloc((size_t)B, sizeof *p);
    int *done = calloc((size_t)B, sizeof *done), rc = 0, nv = 0;
    float *h_txt = NULL, *h_mask = NULL, *h_t = NULL;
    if (!s || !p || !done) {
        rc = QIE_ENOMEM;
        goto done;
    }
    for (int b = 0; b < B; b++) {
        char why[QIE_ERR_LEN];
        uint64_t slot = (uint64_t)m * (uint64_t)c->train_batch_size * (uint64_t)c->world +
                        (uint64_t)c->rank * (uint64_t)c->train_batch_size + (uint64_t)b;
        int r2 = ds_load(why, t->ds, items[b], &s[b]);
        if (!r2) r2 = prepare_(why, t, &s[b], m, b, slot, strata ? strata[j * B + b] : 0, nstrata, &p[b]);
        if (r2 == QIE_ENOMEM || (r2 && drw_replaying(t->drw) && r2 != QIE_EFORMAT)) {
            snprintf(err, QIE_ERR_LEN, "%s", why);
            rc = r2;
            goto done;
        }
        if (r2) report_bad_(t, ds_id(t->ds, items[b]), why);
        else nv++;
    }
    *nvalid = nv;
    int N = 0, ngroups = 0, gi = 0, gmax = 0;
    for (int b = 0; b < B; b++)
        if (p[b].ok) N = p[b].N;
    for (int b0 = 0; b0 < B; b0++) { /* groups of samples with identical image shapes */
        if (!p[b0].ok || done[b0]) continue;
        ngroups++;
        for (int b = b0; b < B; b++)
            if (p[b].ok && same_images_(&s[b0], &s[b])) done[b] = 1;
    }
    memset(done, 0, sizeof *done * (size_t)B);
    /* ZeRO-3 gathers inside every DiT pass: every rank makes as many passes as the busiest one */
    if (t->dist.strat == TS_ZERO3 && (rc = dst_max_int(err, &t->dist, ngroups, &gmax))) goto done;
    /* ZeRO-3 sums the ranks' gradients (reduce-scatter SUM): the 1/world of the mean is here */
    const float scale = nv ? 1.0f / ((float)nv * (float)N * (float)F * (float)k *
                                     (t->dist.strat == TS_ZERO3 ? (float)c->world : 1.0f)) : 0.0f;
    /* groups of samples with identical image shapes go through the DiT together */
    for (int b0 = 0; b0 < B; b0++) {
        if (!p[b0].ok || done[b0]) continue;
        int grp[4096], G = 0, Lmax = 0, Lmin = 1 << 30;
        for (int b = b0; b < B && G < 4096; b++)
            if (p[b].ok && !done[b] && same_images_(&s[b0], &s[b])) {
                grp[G++] = b;
                done[b] = 1;
                if (p[b].L > Lmax) Lmax = p[b].L;
                if (p[b].L < Lmin) Lmin = p[b].L;
            }
        const int Ntot = p[b0].Ntot;
        DitShape sh = {.B = G, .N_txt = Lmax, .n_images = 1 + s[b0].nsrc};
        sh.img_shapes[0][0] = 1;
        sh.img_shapes[0][1] = s[b0].h / 2;
        sh.img_shapes[0][2] = s[b0].w / 2;
        for (int q = 0; q < s[b0].nsrc; q++) {
            sh.img_shapes[1 + q][0] = 1;
            sh.img_shapes[1 + q][1] = s[b0].sh[q] / 2;
            sh.img_shapes[1 + q][2] = s[b0].sw[q] / 2;
        }
        h_txt = calloc((size_t)G * Lmax * J, sizeof *h_txt);
        h_mask = malloc(sizeof *h_mask * (size_t)G * Lmax);
        h_t = realloc(h_t, sizeof *h_t * (size_t)G);
        if (!h_txt || !h_mask || !h_t) {
            rc = QIE_ENOMEM;
            qie_seterr(err, "out of memory");
            goto done;
        }
        for (int g = 0; g < G; g++) {
            const Prepared *pp = &p[grp[g]];
            memcpy(h_txt + (size_t)g * Lmax * J, pp->txt, sizeof *h_txt * (size_t)pp->L * J);
            for (int l = 0; l < Lmax; l++) h_mask[(size_t)g * Lmax + l] = l < pp->L ? 1.0f : 0.0f;
            h_t[g] = pp->tmodel;
        }
        const size_t es = op_act_size(&t->ctx), Ng = (size_t)p[b0].N;
        void *d_x = devbuf_(t, &t->dx, (size_t)G * Ntot * F * es), *d_txt = devbuf_(t, &t->dtxt, (size_t)G * Lmax * J * es);
        float *d_v = devbuf_(t, &t->dv, sizeof(float) * (size_t)G * Ng * F);
        /* the objective on the device: x_σ, the sources and v of every sample of the group */
        for (int g = 0; g < G; g++)
            if ((rc = build_(err, t, &s[grp[g]], &p[grp[g]], (char *)d_x + (size_t)g * Ntot * F * es,
                             d_v + (size_t)g * Ng * F)))
                goto done;
        /* the text without a stream synchronisation (op_upload_act waits for the stream) */
        if (t->ctx.dev == QIE_DEV_CPU) {
            op_upload_act(&t->ctx, d_txt, h_txt, (size_t)G * Lmax * J);
        } else {
            float *d32 = devbuf_(t, &t->dtxt32, sizeof(float) * (size_t)G * Lmax * J);
            op_objective_upload(&t->ctx, d32, h_txt, (size_t)G * Lmax * J);
            op_f32_to_act(&t->ctx, d_txt, d32, (size_t)G * Lmax * J);
        }
        const void *d_out = NULL;
        if ((rc = dit_forward(err, t->dit, &sh, d_x, d_txt, Lmin == Lmax ? NULL : h_mask, h_t, &d_out))) goto done;
        if ((rc = dst_error(err, &t->dist))) goto done;
        void *d_grad = devbuf_(t, &t->dgrad, (size_t)G * Ntot * OD * es);
        op_zero(&t->ctx, d_grad, (size_t)G * Ntot * OD * es); /* the source tokens get no gradient */
        for (int g = 0; g < G; g++) {
            const Prepared *pp = &p[grp[g]];
            /* v̂ = output[:, :N_tgt] (out_dim = 64 = the packed latent width) */
            op_objective_loss(&t->ctx, (char *)d_grad + (size_t)g * Ntot * OD * es,
                              (const char *)d_out + (size_t)g * Ntot * OD * es, d_v + (size_t)g * Ng * F, pp->sigma_w,
                              (size_t)pp->N * F, scale, (double)nv * N * F, acc, t->d_loss + t->cfg->gradient_accumulation_steps);
        }
        /* DDP / ZeRO-2: the step's last backward reduces each range as it completes */
        t->dist.reduce_now = last && ++gi == ngroups;
        if ((rc = dit_backward(err, t->dit, d_grad, NULL, NULL))) goto done;
        t->dist.reduce_now = 0;
        dst_pass_done(&t->dist);
        if ((rc = dst_error(err, &t->dist))) goto done;
        t->step_flops += 3.0 * dit_flops_forward(&t->dit->cfg, &sh);
        free(h_txt);
        free(h_mask);
        h_txt = h_mask = NULL;
    }
    for (int i = ngroups; i < gmax; i++) dst_idle_pass(&t->dist);
    rc = dst_error(err, &t->dist);
done:
    for (int b = 0; b < B && s && p; b++) {
        sample_free(&s[b]);
        prepared_free_(&p[b]);
    }
    free(s);
    free(p);
    free(done);
    free(h_txt);
    free(h_mask);
    free(h_t);
    return rc;
}

/* ---- one optimizer step -------------------------------------------------------------------- */

typedef struct {
    double loss, norm, clip_threshold, coef, lr, seconds, tflops;
    int samples;
} StepInfo;

/* the reduced gradient of a piece (of dtype t->dist.gdt): in the full buffer (none/DDP/ZeRO-2), or
 * ZeRO-3's shard */
static const void *grads_at_(const Trainer *t, const Piece *p) {
    if (t->dist.strat == TS_ZERO3) return (const char *)t->dist.gshard + p->loc * dtype_size(t->dist.gdt);
    return t->dit->grads + p->glob;
}

static int next_epoch_(char *err, Trainer *t) {
    const TrainConfig *c = t->cfg;
    int rc = smp_epoch_build(err, &t->ep, ds_items(t->ds), ds_count(t->ds), (int)c->train_batch_size,
                             t->st.seed, t->st.epoch, c->rank, c->world);
    if (!rc && !t->ep.nbatches) {
        qie_seterr(err, "epoch %lld has no batch: %u usable records cannot fill a batch of %lld in any bucket "
                   "(x %d ranks)\nhint: lower --train_batch_size", (long long)t->st.epoch, ds_count(t->ds),
                   (long long)c->train_batch_size, c->world);
        rc = QIE_EINVAL;
    }
    return rc;
}

static int step_(char *err, Trainer *t, StepInfo *si) {
    const TrainConfig *c = t->cfg;
    double t0 = progress_now();
    int rc;
    if (t->st.batch_pos >= (int64_t)t->ep.nbatches) {
        t->st.epoch++;
        t->st.batch_pos = 0;
        if ((rc = next_epoch_(err, t))) return rc;
    }
    const int B = (int)c->train_batch_size;
    int64_t left = (int64_t)t->ep.nbatches - t->st.batch_pos;
    int k = (int)(left < c->gradient_accumulation_steps ? left : c->gradient_accumulation_steps);
    /* stratified σ: the step's k·B·world samples each get a stratum; this rank's are at
     * (j·world + rank)·B + b of a Fisher–Yates permutation keyed by the step */
    int nstrata = k * B * c->world, *strata = NULL;
    if (c->uniform_sampling && !drw_replaying(t->drw)) {
        int *perm = malloc(sizeof *perm * (size_t)nstrata);
        strata = malloc(sizeof *strata * (size_t)k * B);
        if (!perm || !strata) {
            free(perm);
            free(strata);
            return QIE_ENOMEM;
        }
        for (int i = 0; i < nstrata; i++) perm[i] = i;
        for (int i = nstrata - 1; i > 0; i--) {
            int z = (int)(drw_u32(t->drw, DRW_STRATA, (uint64_t)t->st.global_step, (uint64_t)i) % (uint32_t)(i + 1));
            int tmp = perm[i];
            perm[i] = perm[z];
            perm[z] = tmp;
        }
        for (int j = 0; j < k; j++)
            for (int b = 0; b < B; b++) strata[j * B + b] = perm[(j * c->world + c->rank) * B + b];
        free(perm);
    }
    dit_zero_grad(t->dit);
    dst_step_begin(&t->dist);
    t->step_flops = 0.0;
    double loss = 0.0;
    int keff = 0, samples = 0;
    /* the micro-batches' losses stay on the device until the step's one read */
    op_zero(&t->ctx, t->d_loss, sizeof(double) * (size_t)k);
    int *nvs = calloc((size_t)k, sizeof *nvs);
    double *ls = calloc((size_t)k, sizeof *ls);
    if (!nvs || !ls) {
        free(strata);
        free(nvs);
        free(ls);
        return QIE_ENOMEM;
    }
    for (int j = 0; j < k; j++) {
        size_t bi = (size_t)(t->st.batch_pos + j);
        rc = micro_(err, t, t->ep.idx + t->ep.off[bi], (int)(t->ep.off[bi + 1] - t->ep.off[bi]), j, k, strata, nstrata,
                    j == k - 1, t->d_loss + j, &nvs[j]);
        t->st.micro++;
        if (rc) {
            free(strata);
            free(nvs);
            free(ls);
            return rc;
        }
    }
    free(strata);
    op_objective_read(&t->ctx, ls, t->d_loss, (size_t)k);
    for (int j = 0; j < k; j++)
        if (nvs[j]) {
            keff++;
            loss += ls[j];
            samples += nvs[j];
        }
    free(nvs);
    free(ls);
    t->st.batch_pos += k;
    /* the gradients of every rank: reductions the backward did not start, then wait for them */
    dst_reduce_rest(&t->dist);
    if ((rc = dst_error(err, &t->dist))) return rc;
    /* the step's statistics over all ranks (the rescale of partial groups is global too) */
    int kall = k;
    if (t->dist.coll) {
        float v[3] = {(float)loss, (float)keff, (float)samples};
        if ((rc = dst_allreduce_host(err, &t->dist, v, 3))) return rc;
        loss = v[0];
        keff = (int)v[1];
        samples = (int)v[2];
        kall = k * c->world;
    }
    if (!keff) {
        log_warn("step %lld: every sample of its %d micro-batch(es) was skipped; no update", (long long)t->st.global_step + 1, k);
        si->samples = 0;
        return 0;
    }
    const double rescale = (double)kall / keff; /* the gradients were scaled 1/k: average over what ran */
    loss /= keff;
    double sq = 0.0;
    if (t->dist.strat == TS_NONE || t->dist.strat == TS_DDP) { /* the whole (reduced) gradient on every rank */
        for (int i = 0; i < t->nseg; i++)
            sq += op_global_norm_squared(&t->ctx, t->scratch, t->dit->grads + t->seg[i].off, t->seg[i].size);
    } else { /* Σ g² of this rank's shard, summed over the ranks */
        for (int i = 0; i < t->npc; i++)
            sq += op_global_norm_squared_dt(&t->ctx, t->scratch, grads_at_(t, &t->pc[i]), t->dist.gdt, t->pc[i].n);
        if ((rc = dst_sum_double(err, &t->dist, sq, &sq))) return rc;
    }
    double norm = sqrt(sq) * rescale;
    const char *dump = getenv("QIE_TRAIN_DUMP_GRADS"); /* debugging the golden tests: the first step's gradients */
    if (dump && t->st.global_step == 0 && t->ctx.dev == QIE_DEV_CPU && t->dit->grads) {
        StWriter *w = NULL;
        char e2[QIE_ERR_LEN];
        if (st_writer_create(e2, &w) || dit_writer_add(e2, w, &t->dit->lay, "grad.", QIE_DT_F32, t->dit->grads) ||
            st_writer_write(e2, w, dump))
            log_warn("QIE_TRAIN_DUMP_GRADS: %s", e2);
        st_writer_destroy(&w);
    }
    si->loss = loss;
    si->norm = norm;
    if (!isfinite(loss) || !isfinite(norm)) {
        qie_seterr(err, "%s is %s at step %lld (epoch %lld, micro-batch %lld)", isfinite(loss) ? "the gradient norm" : "the loss",
                   isnan(isfinite(loss) ? norm : loss) ? "NaN" : "infinite", (long long)t->st.global_step + 1,
                   (long long)t->st.epoch, (long long)t->st.micro);
        return TRAIN_ENONFINITE;
    }
    /* clipping (decisions.md: the plain-mode rule on every backend); torch clip_grad_norm_ */
    double coef = 1.0, thr = 0.0;
    if (c->max_grad_norm > 0) {
        thr = sch_clip_threshold(c->max_grad_norm, (double)c->initial_grad_norm_ratio, c->abnormal_norm_clip_start,
                                 t->st.global_step, norm);
        coef = thr / (norm + 1e-6);
        if (coef > 1.0) coef = 1.0;
    }
    /* torch multiplies in fp32 twice when both apply; one product is within an ulp of that */
    double gscale = rescale == 1.0 ? (double)(float)coef : (double)((float)rescale * (float)coef);
    double lam = sch_lr_lambda(c->lr_scheduler, t->st.global_step, c->lr_warmup_steps, t->M, t->base_lr);
    const size_t es = op_act_size(&t->ctx);
    for (int i = 0; i < t->npc; i++) {
        const Piece *pc = &t->pc[i];
        double lr = t->base_lr * (pc->group ? 0.5 : 1.0) * lam;
        AdamWArgs a;
        adamw_args(&a, lr, c->adam_beta1, c->adam_beta2, c->adam_epsilon, c->adam_weight_decay, (long)t->st.global_step + 1,
                   gscale);
        /* ZeRO-3 keeps no bf16 copy: the next gather makes it from the master */
        void *params = t->dit->params ? (char *)t->dit->params + pc->glob * es : NULL;
        op_adamw_update_dt(&t->ctx, t->d_master + pc->loc, params, grads_at_(t, pc), t->dist.gdt, t->d_m + pc->loc,
                           t->d_v + pc->loc, pc->n, &a);
    }
    if ((rc = dst_after_update(err, &t->dist))) return rc; /* ZeRO-2: every rank's new weights */
    /* no stream sync here: the next step's host work (samples, draws, text) overlaps this update;
     * its first upload waits for it */
    t->st.global_step++;
    si->coef = coef;
    si->clip_threshold = thr;
    si->lr = t->base_lr * lam;
    si->samples = samples;
    si->seconds = progress_now() - t0;
    si->tflops = si->seconds > 0 ? t->step_flops / si->seconds * 1e-12 : 0.0;
    return 0;
}

/* ---- checkpoints --------------------------------------------------------------------------- */

static int host_state_(Trainer *t) {
    if (t->ctx.dev == QIE_DEV_CPU) return 0;
    size_t n = t->dist.nloc;
    if (!t->h_m) t->h_m = malloc(n * sizeof(float)); /* CUDA: host moments only when saving */
    if (!t->h_v) t->h_v = malloc(n * sizeof(float));
    if (!t->h_m || !t->h_v) return QIE_ENOMEM;
    op_download_f32(&t->ctx, t->h_master, t->d_master, n);
    op_download_f32(&t->ctx, t->h_m, t->d_m, n);
    op_download_f32(&t->ctx, t->h_v, t->d_v, n);
    return 0;
}

static int save_(char *err, Trainer *t) {
    const TrainConfig *c = t->cfg;
    char path[4200];
    snprintf(path, sizeof path, "%s/checkpoint-%lld", c->output_dir, (long long)t->st.global_step);
    const int sharded = t->dist.strat != TS_NONE;
    if (ckpt_complete(path) && !strcmp(path, t->last_ckpt) && (!sharded || dst_is_sharded_ckpt(path)))
        return 0; /* this state is saved already */
    int rc = sharded ? 0 : ckpt_prune(err, c->output_dir, c->checkpoints_total_limit);
    if (rc || (rc = host_state_(t))) return rc;
    char extra[1024];
    snprintf(extra, sizeof extra,
             "{\"learning_rate\": %.9g, \"lr_scheduler\": %d, \"lr_warmup_steps\": %lld, \"max_grad_norm\": %.9g, "
             "\"device\": \"%s\", \"strategy\": \"%s\"}",
             t->base_lr, (int)c->lr_scheduler, (long long)c->lr_warmup_steps, c->max_grad_norm, opctx_device_name(&t->ctx),
             dst_strategy_name(t->dist.strat));
    double t0 = progress_now();
    /* several ranks (any strategy but none): the sharded format, every rank writing its part */
    if (sharded) rc = dst_save(err, &t->dist, c, t->config_json, t->frozen, t->h_master, t->h_m, t->h_v, &t->st, extra);
    else rc = ckpt_save(err, c->output_dir, t->config_json, &t->dit->lay, t->h_master, t->h_m, t->h_v, &t->st,
                        c->max_shard_size, extra);
    if (rc) return rc;
    snprintf(t->last_ckpt, sizeof t->last_ckpt, "%s", path);
    log_info0("saved %s (%.1f s)", path, progress_now() - t0);
    return 0;
}

/* ---- setup --------------------------------------------------------------------------------- */

static int load_model_(char *err, Trainer *t) {
    const TrainConfig *c = t->cfg;
    DitConfig dc;
    int rc = dit_config_load(err, c->model, &dc);
    if (rc) return rc;
    char cfgp[4200], wdir[4096];
    snprintf(wdir, sizeof wdir, "%.4000s/transformer", c->model);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", wdir);
    FILE *f = fopen(cfgp, "r");
    if (f) fclose(f);
    else snprintf(wdir, sizeof wdir, "%s", c->model);
    snprintf(cfgp, sizeof cfgp, "%s/config.json", wdir);
    if (!(t->config_json = train_read_file(err, cfgp, NULL))) return QIE_ENOTFOUND;
    if (dc.out_channels != TRAIN_LATENT_CH || dc.out_dim != 4 * TRAIN_LATENT_CH || dc.in_channels != 4 * TRAIN_LATENT_CH) {
        qie_seterr(err, "%s: in_channels %d / out_channels %d; the trainer needs 64 / 16 (VAE latents of 16 channels)",
                   cfgp, dc.in_channels, dc.out_channels);
        return QIE_EUNSUPPORTED;
    }
    /* ZeRO-3 never holds the whole model: no resident bf16 weights nor f32 gradients */
    unsigned flags = c->strategy == TS_ZERO3 ? DIT_CREATE_NO_PARAMS | DIT_CREATE_NO_GRADS : 0;
    if ((rc = dit_create2(err, &t->ctx, &dc, 1, c->gradient_checkpointing, flags, &t->dit))) return rc;
    t->dit->keep_attn = c->gradient_checkpointing && !c->recompute_attention;
    if (c->init_weights) return 0; /* made per shard later (random_weights_) */
    size_t n = t->dit->lay.num_params;
    if (!(t->h_full = calloc(n, sizeof(float)))) return QIE_ENOMEM;
    StModel *st = NULL;
    const char *src = c->transformer_path ? c->transformer_path : wdir;
    if ((rc = st_model_open(err, src, &st))) return rc;
    rc = dit_load_weights(err, &t->dit->lay, st, t->h_full);
    st_model_close(&st);
    if (rc) qie_preferr(err, "weights %s", src);
    return rc;
}

/* --init_weights random (benchmarks): every real element of this rank's shard from a hash of
 * (seed, element index), so ranks agree without loading anything: matrices uniform with std 0.02,
 * norm gains 1, biases 0; padding stays 0. */
static void random_weights_(Trainer *t, uint64_t seed) {
    const DitLayout *lay = &t->dit->lay;
    const Dist *d = &t->dist;
    const float a = 0.02f * 1.7320508f;
    for (int k = 0; k < lay->ntensors; k++) {
        const DitTensorInfo *ti = &lay->tensors[k];
        const int norm = ti->ndim == 1 && strstr(ti->name, "norm") && !strstr(ti->name, "bias") &&
                         !strstr(ti->name, "linear");
        for (int q = 0; q < d->nsegs; q++) {
            size_t lo = ti->offset > d->segs[q].start ? ti->offset : d->segs[q].start;
            size_t hi = ti->offset + ti->numel < d->segs[q].end ? ti->offset + ti->numel : d->segs[q].end;
            float *dst = t->h_master + d->loc[q] - d->segs[q].start;
            for (size_t i = lo; i < hi; i++) {
                if (ti->ndim != 2) {
                    dst[i] = norm ? 1.0f : 0.0f;
                    continue;
                }
                uint64_t z = (seed * 0x9E3779B97F4A7C15ull) ^ (i + 0x632BE59BD9B4E019ull);
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
                z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
                z ^= z >> 31;
                dst[i] = a * (2.0f * (float)(z >> 40) * (1.0f / 16777216.0f) - 1.0f);
            }
        }
    }
}

static uint64_t fresh_seed_(void) {
    uint64_t s = 0;
    if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) s = (uint64_t)time(NULL) ^ ((uint64_t)clock() << 20);
    return s % 4294967296ull; /* torch-style seeds fit 32 bits of mt19937 */
}

static int resume_(char *err, Trainer *t) {
    const TrainConfig *c = t->cfg;
    if (!c->resume_from_checkpoint) return 0;
    char path[4096];
    int rc = ckpt_resolve(err, c->output_dir, c->resume_from_checkpoint, path, sizeof path);
    if (rc == QIE_ENOTFOUND && !strcmp(c->resume_from_checkpoint, "latest")) {
        log_info0("--resume_from_checkpoint latest: %s; starting a new run", err);
        return 0;
    }
    if (rc) return rc;
    TrainState s;
    if (!t->h_m) t->h_m = calloc(t->dist.nloc, sizeof(float));
    if (!t->h_v) t->h_v = calloc(t->dist.nloc, sizeof(float));
    if (!t->h_m || !t->h_v) return QIE_ENOMEM;
    if ((rc = ckpt_load_state(err, path, &s))) return rc;
    /* either format at any world size: the single-process optimizer/ by name, or qie-zero/1 shards */
    if (t->dist.strat == TS_NONE && !dst_is_sharded_ckpt(path))
        rc = ckpt_load_optimizer(err, path, &t->dit->lay, t->h_master, t->h_m, t->h_v);
    else
        rc = dst_load(err, &t->dist, path, t->h_master, t->h_m, t->h_v);
    if (rc) return rc;
    if (s.train_batch_size != c->train_batch_size) {
        qie_seterr(err, "%s was written with --train_batch_size %lld; this run has %lld\n"
                   "hint: resume with the same batch size", path, (long long)s.train_batch_size,
                   (long long)c->train_batch_size);
        return QIE_EMISMATCH;
    }
    /* another process count: the counters are per rank; the data consumed is (counter · world) */
    if (s.world != c->world) {
        int64_t gm = s.micro * s.world, gb = s.batch_pos * s.world;
        if (gm % c->world || gb % c->world) {
            qie_seterr(err, "%s: %lld micro-batches of %lld process(es) cannot be split evenly over %d\n"
                       "hint: resume on a process count that divides %lld", path, (long long)gm, (long long)s.world,
                       c->world, (long long)gm);
            return QIE_EMISMATCH;
        }
        log_info0("%s was written by %lld process(es); continuing on %d", path, (long long)s.world, c->world);
        s.micro = gm / c->world;
        s.batch_pos = gb / c->world;
    }
    if (s.gradient_accumulation_steps * s.world != c->gradient_accumulation_steps * c->world)
        log_warn("the global batch changed: %lld process(es) x %lld micro-batches per step then, %d x %lld now",
                 (long long)s.world, (long long)s.gradient_accumulation_steps, c->world,
                 (long long)c->gradient_accumulation_steps);
    s.world = c->world;
    if (s.data_fingerprint != t->st.data_fingerprint || s.data_count != t->st.data_count)
        log_warn("%s was trained on other data (%u records then, %u now): the data order will not continue the "
                 "old run's", path, s.data_count, t->st.data_count);
    s.gradient_accumulation_steps = c->gradient_accumulation_steps;
    if (c->seed >= 0 && (uint64_t)c->seed != s.seed)
        log_warn("--seed %lld differs from the checkpoint's %llu; the checkpoint's is used (exact resume)",
                 (long long)c->seed, (unsigned long long)s.seed);
    uint64_t fp = t->st.data_fingerprint;
    uint32_t cnt = t->st.data_count;
    t->st = s;
    t->st.data_fingerprint = fp;
    t->st.data_count = cnt;
    snprintf(t->last_ckpt, sizeof t->last_ckpt, "%s", path);
    log_info0("resumed from %s: step %lld, epoch %lld, batch %lld of the epoch", path, (long long)s.global_step,
              (long long)s.epoch, (long long)s.batch_pos);
    return 0;
}

static void trainer_free_(Trainer *t) {
    dst_free(&t->dist); /* says goodbye to the other ranks before the model goes */
    if (t->ctx.dev == QIE_DEV_CUDA) {
        op_free(&t->ctx, t->d_master);
        op_free(&t->ctx, t->d_m);
        op_free(&t->ctx, t->d_v);
    }
    op_free(&t->ctx, t->scratch);
    op_free(&t->ctx, t->dx.p);
    op_free(&t->ctx, t->dtxt.p);
    op_free(&t->ctx, t->dgrad.p);
    op_free(&t->ctx, t->dtxt32.p);
    op_free(&t->ctx, t->dv.p);
    op_free(&t->ctx, t->dmean.p);
    op_free(&t->ctx, t->dlogvar.p);
    op_free(&t->ctx, t->deps.p);
    op_free(&t->ctx, t->dnoise.p);
    op_free(&t->ctx, t->d_loss);
    dit_destroy(&t->dit);
    free(t->h_master);
    free(t->h_m);
    free(t->h_v);
    free(t->h_full);
    free(t->config_json);
    free(t->seg);
    free(t->pc);
    free(t->frozen);
    free(t->sig);
    free(t->ts);
    ds_close(&t->ds);
    drw_close(&t->drw);
    smp_epoch_free(&t->ep);
    tb_close(&t->tb);
    if (t->jsonl) fclose(t->jsonl);
    for (size_t i = 0; i < t->nbad; i++) free(t->bad_ids[i]);
    free(t->bad_ids);
    opctx_free(&t->ctx);
}

static void log_step_(Trainer *t, const StepInfo *si) {
    const TrainConfig *c = t->cfg;
    int64_t s = t->st.global_step;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double wall = ts.tv_sec + ts.tv_nsec * 1e-9, sps = si->seconds > 0 ? si->samples / si->seconds : 0;
    char e[QIE_ERR_LEN];
    if (t->tb) {
        int rc = tb_scalar(e, t->tb, "train_loss", (float)si->loss, s, wall);
        if (!rc) rc = tb_scalar(e, t->tb, "lr", (float)si->lr, s, wall);
        if (!rc) rc = tb_scalar(e, t->tb, "grad_norm", (float)si->norm, s, wall);
        if (!rc) rc = tb_scalar(e, t->tb, "samples_per_s", (float)sps, s, wall);
        if (!rc && c->report_model_info) {
            rc = tb_scalar(e, t->tb, "gradients/norm_sum", (float)si->norm, s, wall);
            if (!rc) rc = tb_scalar(e, t->tb, "gradients/actual_max_grad_norm", (float)si->clip_threshold, s, wall);
        }
        if (!rc) rc = tb_flush(e, t->tb);
        if (rc) {
            log_warn("%s; TensorBoard logging stops", e);
            tb_close(&t->tb);
        }
    }
    if (t->jsonl) {
        fprintf(t->jsonl,
                "{\"step\":%lld,\"epoch\":%lld,\"loss\":%.8g,\"lr\":%.8g,\"grad_norm\":%.8g,\"max_grad_norm\":%.8g,"
                "\"clip_coef\":%.8g,\"samples\":%d,\"samples_per_s\":%.4g,\"step_s\":%.4g,\"model_tflops\":%.4g,"
                "\"peak_mem_gib\":%.3f,\"time\":%.3f}\n",
                (long long)s, (long long)t->st.epoch, si->loss, si->lr, si->norm, si->clip_threshold, si->coef, si->samples,
                sps, si->seconds, si->tflops, op_mem_peak() / 1073741824.0, wall);
        fflush(t->jsonl);
    }
}

/* ---- the run ------------------------------------------------------------------------------- */

int train_run(char *err, const TrainConfig *c) {
    Trainer tr, *t = &tr;
    memset(t, 0, sizeof *t);
    t->cfg = c;
    t->sig_L = -1;
    int rc;
    char dev[64];
    /* one GPU per local rank (torchrun's LOCAL_RANK) unless --device names one */
    if (!strcmp(c->device, "cuda") && c->world > 1) snprintf(dev, sizeof dev, "cuda:%d", c->local_rank);
    else snprintf(dev, sizeof dev, "%s", c->device);
    if ((rc = opctx_init(err, &t->ctx, dev))) return rc;
    t->round = t->ctx.act == QIE_DT_BF16;
    if ((rc = load_model_(err, t))) goto done;
    if ((rc = dst_init(err, &t->dist, c, &t->ctx, t->dit))) goto done;
    /* this rank's shard of the master (none/DDP: all of it); moments start at 0 */
    if (t->dist.strat == TS_NONE || t->dist.strat == TS_DDP) {
        t->h_master = t->h_full;
        t->h_full = NULL;
    }
    if (!t->h_master && !(t->h_master = calloc(t->dist.nloc, sizeof(float)))) {
        rc = QIE_ENOMEM;
        goto done;
    }
    if (t->h_full) dst_slice(&t->dist, t->h_master, t->h_full);
    else if (c->init_weights) random_weights_(t, c->seed >= 0 ? (uint64_t)c->seed : 0);
    free(t->h_full);
    t->h_full = NULL;
    if (t->ctx.dev == QIE_DEV_CPU) {
        t->h_m = calloc(t->dist.nloc, sizeof(float));
        t->h_v = calloc(t->dist.nloc, sizeof(float));
        if (!t->h_m || !t->h_v) {
            rc = QIE_ENOMEM;
            goto done;
        }
    }
    if ((rc = segments_(err, t))) goto done;
    t->T = (int)c->train_sampling_steps;
    t->sig = malloc(sizeof *t->sig * t->T);
    t->ts = malloc(sizeof *t->ts * t->T);
    if (!t->sig || !t->ts) {
        rc = QIE_ENOMEM;
        goto done;
    }
    if ((rc = ds_open(err, c->in_url, t->dit->cfg.joint_dim, c->plus, c->text_drop_ratio > 0 && !c->draws_path, &t->ds)))
        goto done;
    if (!ds_count(t->ds)) {
        qie_seterr(err, "--in %s: no usable record", c->in_url);
        rc = QIE_EINVAL;
        goto done;
    }
    t->st.seed = c->seed >= 0 ? (uint64_t)c->seed : fresh_seed_();
    if (c->seed < 0 && t->dist.coll) { /* every rank takes rank 0's drawn seed (two exact 16-bit halves) */
        float v[2] = {c->rank ? 0.0f : (float)(t->st.seed >> 16), c->rank ? 0.0f : (float)(t->st.seed & 0xffff)};
        if ((rc = dst_allreduce_host(err, &t->dist, v, 2))) goto done;
        t->st.seed = ((uint64_t)v[0] << 16) | (uint64_t)v[1];
    }
    t->st.data_fingerprint = ds_fingerprint(t->ds);
    t->st.data_count = ds_count(t->ds);
    t->st.train_batch_size = c->train_batch_size;
    t->st.gradient_accumulation_steps = c->gradient_accumulation_steps;
    t->st.world = c->world;
    if ((rc = fs_mkdirs(err, c->output_dir))) goto done;
    if (c->rank == 0) rc = ckpt_prune(err, c->output_dir, 0); /* stale temp folders only */
    if ((rc = dst_agree(err, &t->dist, rc))) goto done;
    if ((rc = resume_(err, t))) goto done;
    if (c->seed < 0 && !t->last_ckpt[0]) log_info0("--seed not given: using %llu", (unsigned long long)t->st.seed);
    if ((rc = drw_open(err, c->draws_path, t->st.seed, &t->drw))) goto done;
    /* weights and optimizer state onto the device (this rank's shard) */
    size_t n = t->dist.nloc;
    if (t->ctx.dev == QIE_DEV_CPU) {
        t->d_master = t->h_master;
        t->d_m = t->h_m;
        t->d_v = t->h_v;
    } else {
        t->d_master = op_alloc(&t->ctx, n * sizeof(float));
        t->d_m = op_alloc(&t->ctx, n * sizeof(float));
        t->d_v = op_alloc(&t->ctx, n * sizeof(float));
        op_upload_f32(&t->ctx, t->d_master, t->h_master, n);
        if (t->h_m) op_upload_f32(&t->ctx, t->d_m, t->h_m, n);
        if (t->h_v) op_upload_f32(&t->ctx, t->d_v, t->h_v, n);
    }
    t->dist.master = t->d_master;
    if (t->dist.strat == TS_NONE || t->dist.strat == TS_DDP) {
        dit_set_params(t->dit, t->h_master);
    } else if (t->dist.strat == TS_ZERO2) { /* bf16 of my segments, then every rank's */
        const size_t es = op_act_size(&t->ctx);
        for (int k = 0; k < t->dist.nsegs; k++)
            op_f32_to_act(&t->ctx, (char *)t->dit->params + t->dist.segs[k].start * es, t->d_master + t->dist.loc[k],
                          t->dist.segs[k].end - t->dist.segs[k].start);
        if ((rc = dst_after_update(err, &t->dist))) goto done;
    }
    t->scratch = op_alloc(&t->ctx, (GLOBAL_NORM_BLOCKS + 1) * sizeof(float));
    t->d_loss = op_alloc(&t->ctx, sizeof(double) * ((size_t)c->gradient_accumulation_steps + OBJECTIVE_LOSS_BLOCKS));
    /* step accounting (trainer_behaviour.md §4.11; decisions.md: the horizon is the real count) */
    if ((rc = smp_epoch_build(err, &t->ep, ds_items(t->ds), ds_count(t->ds), (int)c->train_batch_size, t->st.seed, 0,
                              c->rank, c->world)))
        goto done;
    if (!t->ep.nbatches) {
        if ((rc = next_epoch_(err, t))) goto done;
    }
    int64_t spe = ((int64_t)t->ep.nbatches + c->gradient_accumulation_steps - 1) / c->gradient_accumulation_steps;
    t->M = c->max_train_steps >= 0 ? c->max_train_steps : c->num_train_epochs * spe;
    t->st.max_train_steps = t->M;
    t->base_lr = c->learning_rate * (c->scale_lr ? (double)(c->gradient_accumulation_steps * c->train_batch_size * c->world) : 1.0);
    if ((rc = next_epoch_(err, t))) goto done; /* the current epoch (resume: the saved one) */
    log_info0("%u records, %zu batch(es) of %lld per epoch, %lld step(s) per epoch, %lld step(s) in all (%lld epoch(s)), "
              "lr %.3g, device %s", ds_count(t->ds), t->ep.nbatches, (long long)c->train_batch_size, (long long)spe,
              (long long)t->M, (long long)((t->M + spe - 1) / spe), t->base_lr, opctx_device_name(&t->ctx));
    /* logs */
    char p[4200];
    snprintf(p, sizeof p, "%s/%s", c->output_dir, c->logging_dir);
    if ((rc = fs_mkdirs(err, p))) goto done;
    if (c->report_tensorboard && c->rank == 0) {
        snprintf(p, sizeof p, "%s/%s/%s", c->output_dir, c->logging_dir, c->tracker_project_name);
        if ((rc = tb_open(err, p, &t->tb))) goto done;
    }
    snprintf(p, sizeof p, "%s/%s/metrics.jsonl", c->output_dir, c->logging_dir);
    if (c->rank == 0 && !(t->jsonl = fopen(p, "a"))) log_warn("cannot open %s: %s", p, strerror(errno));
    int64_t start = t->st.global_step;
    progress_init(&t->prog, "train", (uint64_t)(t->M > start ? t->M - start : 0), c->progress && c->rank == 0);
    double run_t0 = progress_now(), first_loss = NAN, last_loss = NAN;
    const char *kill_at = getenv("QIE_TRAIN_KILL_AT"); /* fault injection for tests: "RANK:STEP" */
    while (t->st.global_step < t->M) {
        StepInfo si;
        memset(&si, 0, sizeof si);
        int kr = -1;
        long long ks = -1;
        if (kill_at && sscanf(kill_at, "%d:%lld", &kr, &ks) == 2 && kr == c->rank && ks == t->st.global_step) {
            log_warn("QIE_TRAIN_KILL_AT %s: rank %d kills itself", kill_at, c->rank);
            raise(SIGKILL);
        }
        if ((rc = step_(err, t, &si))) {
            if (rc == TRAIN_ENONFINITE)
                qie_preferr(err, "stopping, nothing saved for this step (last checkpoint: %s)\nhint: lower "
                            "--learning_rate or --max_grad_norm, check the data (qie-cache verify); error",
                            t->last_ckpt[0] ? t->last_ckpt : "none");
            goto done;
        }
        if (!si.samples) continue;
        if (isnan(first_loss)) first_loss = si.loss;
        last_loss = si.loss;
        if (t->prog.tty) snprintf(t->prog.what, sizeof t->prog.what, "loss %.4f lr %.2e", si.loss, si.lr);
        log_step_(t, &si);
        progress_update(&t->prog, (uint64_t)(t->st.global_step - start));
        if (!t->prog.tty)
            log_debug("step %lld loss %.6f lr %.3e grad_norm %.4g", (long long)t->st.global_step, si.loss, si.lr, si.norm);
        if (c->checkpointing_steps > 0 && t->st.global_step % c->checkpointing_steps == 0 && (rc = save_(err, t)))
            goto done;
        if (c->stop_after_steps > 0 && t->st.global_step - start >= c->stop_after_steps && t->st.global_step < t->M) {
            progress_end(&t->prog);
            if ((rc = save_(err, t))) goto done;
            log_info0("--stop_after_steps %lld: leaving at step %lld of %lld; resume with --resume_from_checkpoint latest",
                      (long long)c->stop_after_steps, (long long)t->st.global_step, (long long)t->M);
            goto done;
        }
    }
    progress_end(&t->prog);
    snprintf(p, sizeof p, "%s/transformer", c->output_dir);
    if (c->skip_final_save) {
        log_info0("--final_save false: no final checkpoint, no %s", p);
    } else if (t->dist.strat == TS_NONE) {
        /* the reference saves checkpoint-{global_step} once more at the end, then the weights */
        if (t->st.global_step > start && (rc = save_(err, t))) goto done;
        if ((rc = host_state_(t))) goto done;
        if ((rc = ckpt_save_weights(err, p, t->config_json, &t->dit->lay, t->h_master, c->max_shard_size))) goto done;
    } else { /* sharded: the final checkpoint (a no-op when saved), then rank 0 merges it */
        if ((rc = save_(err, t))) goto done;
        if (c->rank == 0) rc = ckpt_save_weights_merged(err, p, t->last_ckpt, c->max_shard_size);
        if ((rc = dst_agree(err, &t->dist, rc))) goto done;
    }
    log_info0("done: %lld step(s) in %.1f s, loss %.4g -> %.4g; weights in %s; peak %s memory held by qie %.2f GiB",
              (long long)(t->st.global_step - start), progress_now() - run_t0, first_loss, last_loss, p,
              opctx_device_name(&t->ctx), op_mem_peak() / 1073741824.0);
done:
    trainer_free_(t);
    return rc;
}
