/* dist.c: qie-train on several ranks (train.h, docs/train.md "Several GPUs", docs/distributed.md).
 *
 *   strategy   --distributed ddp|zero2|zero3|fsdp, or the accelerate spellings: --use_deepspeed
 *              --deepspeed_config_file F (zero_optimization.stage and the batch keys of the JSON,
 *              "auto" = the trainer's value), --use_fsdp --fsdp_sharding_strategy FULL_SHARD (=
 *              zero3) | SHARD_GRAD_OP (= zero2) | NO_SHARD (= ddp). spec/trainer_behaviour.md §7.
 *   shards     this rank's part of the flat parameter buffer: one segment [0, N) for none/DDP,
 *              one per range (ckpt_range_slices: block-major ranges padded so range/W is a
 *              multiple of 64) for ZeRO-2/3. master, m, v (and ZeRO-3's gradient) hold the
 *              segments back to back (style.md "Parameter buffer": m, v and master exist for the
 *              local shard only).
 *   hooks      dit.h DitHook. DDP / ZeRO-2: grad_end reduces each range (all-reduce avg /
 *              reduce-scatter avg, in place) as soon as the last backward of the step has finished
 *              it; on NCCL that runs on the communication stream, gated by an event, while the
 *              backward goes on with the blocks below (llm.c zero.cuh). ZeRO-3: param_acquire
 *              all-gathers block l into one of two slots just before it is used and prefetches the
 *              next block in the model's order into the other; the bf16 values are made from the
 *              fp32 master shard (bf16(master) is exactly what AdamW would have written to a
 *              resident bf16 shard, so no bf16 shard is kept: 2 B/param/W saved, and at world 1
 *              this is --param_residency block). grad_begin hands out one of two range-sized f32
 *              slots, grad_end reduce-scatters it (SUM, the loss gradient already carries 1/W)
 *              into the f32 gradient shard. Accumulation across micro-batches without an f32 add
 *              kernel: later passes preload the shard's running sum into their own part of the
 *              slot, so the reduce-scatter adds it back.
 *   one process  ZeRO-3 at world 1 (--param_residency block) runs no collective: the next
 *              range's bf16 weights are made on a second queue (opctx_fork) while this range
 *              computes, and the gradient goes straight into the shard: f32, or, with
 *              --gradient_dtype bf16 (auto: one micro-batch per step on CUDA), bf16 (DitHook
 *              grads_act: every op accumulates in fp32 and rounds once into it). Under autocast the
 *              reference's weight gradients are bf16 GEMM outputs widened into fp32 .grad, so for
 *              one micro-batch the bf16 shard holds the same values; it saves 2 B per parameter.
 *              (Several micro-batches add in bf16: auto keeps f32 for them.)
 *   lockstep   every rank must make the same collective calls. ZeRO-3 gathers inside every DiT
 *              pass, so a rank whose micro-batch has fewer DiT calls (skipped samples, several
 *              shape groups) runs idle passes: the hook sequence without the compute.
 *   checkpoints  qie-zero/1 (ckpt_shard.h) in checkpoint-N/: every rank writes its rank file into
 *              OUTPUT_DIR/.checkpoint-N.tmp, rank 0 adds layout.json, config.json, transformer/
 *              (ckpt_merge: diffusers weights, from_pretrained loads them), trainer_state.json and
 *              the marker, then renames. Readable at any world size; the single-process format
 *              (optimizer/ by name) is read too. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "fsutil.h"
#include "err.h"
#include "log.h"
#include "train.h"

/* ---- strategy --------------------------------------------------------------------------------- */

const char *dst_strategy_name(TrainStrategy s) {
    switch (s) {
    case TS_NONE: return "none";
    case TS_DDP: return "ddp";
    case TS_ZERO2: return "zero2";
    case TS_ZERO3: return "zero3";
    }
    return "?";
}

static const cJSON *jget_(const cJSON *o, const char *k) { return o ? cJSON_GetObjectItemCaseSensitive(o, k) : NULL; }

/* a DeepSpeed number-or-"auto" key that must agree with the trainer's value */
static int ds_agree_(char *err, const cJSON *root, const char *key, int64_t want, const char *flag) {
    const cJSON *v = jget_(root, key);
    if (!v || cJSON_IsNull(v) || (cJSON_IsString(v) && !strcmp(v->valuestring, "auto"))) return 0;
    if (!cJSON_IsNumber(v)) {
        qie_seterr(err, "DeepSpeed config: \"%s\" must be a number or \"auto\"", key);
        return QIE_EINVAL;
    }
    if ((int64_t)v->valuedouble != want) {
        qie_seterr(err, "DeepSpeed config: \"%s\" is %g but the run has %lld (%s)\nhint: set it to \"auto\" or change %s",
                   key, v->valuedouble, (long long)want, flag, flag);
        return QIE_EINVAL;
    }
    return 0;
}

int dst_parse_deepspeed(char *err, const char *path, const TrainConfig *c, int *stage) {
    char *txt = train_read_file(err, path, NULL);
    if (!txt) {
        qie_preferr(err, "--deepspeed_config_file");
        return QIE_ENOTFOUND;
    }
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    int rc = 0;
    if (!root || !cJSON_IsObject(root)) {
        qie_seterr(err, "--deepspeed_config_file %s: not a JSON object", path);
        rc = QIE_EFORMAT;
        goto done;
    }
    const cJSON *zo = jget_(root, "zero_optimization"), *st = jget_(zo, "stage");
    *stage = 0; /* DeepSpeed's default */
    if (st) {
        if (!cJSON_IsNumber(st) || st->valuedouble < 0 || st->valuedouble > 3) {
            qie_seterr(err, "--deepspeed_config_file %s: zero_optimization.stage must be 0, 1, 2 or 3", path);
            rc = QIE_EINVAL;
            goto done;
        }
        *stage = (int)st->valuedouble;
    }
    const int64_t mb = c->train_batch_size, ga = c->gradient_accumulation_steps;
    if ((rc = ds_agree_(err, root, "train_micro_batch_size_per_gpu", mb, "--train_batch_size")) ||
        (rc = ds_agree_(err, root, "gradient_accumulation_steps", ga, "--gradient_accumulation_steps")) ||
        (rc = ds_agree_(err, root, "train_batch_size", mb * ga * c->world,
                        "--train_batch_size x --gradient_accumulation_steps x processes"))) {
        qie_preferr(err, "%s", path);
        goto done;
    }
    const cJSON *fp16 = jget_(jget_(root, "fp16"), "enabled");
    if (cJSON_IsTrue(fp16)) {
        qie_seterr(err, "--deepspeed_config_file %s: fp16.enabled is true; qie computes in bf16 with fp32 master "
                   "weights\nhint: use \"bf16\": {\"enabled\": true} (the reference's configs do)", path);
        rc = QIE_EUNSUPPORTED;
        goto done;
    }
    const cJSON *gc = jget_(root, "gradient_clipping");
    if (gc && !cJSON_IsNull(gc))
        log_info0("DeepSpeed gradient_clipping %s: qie clips with the plain-mode rule of --max_grad_norm on every "
                  "backend (decisions.md)", cJSON_IsNumber(gc) ? "set" : "\"auto\"");
    const char *offl[2] = {"offload_optimizer", "offload_param"};
    for (int i = 0; i < 2; i++) {
        const cJSON *dev = jget_(jget_(zo, offl[i]), "device");
        if (cJSON_IsString(dev) && strcmp(dev->valuestring, "none"))
            log_warn("DeepSpeed %s.device %s: not supported, the state stays on the GPU", offl[i], dev->valuestring);
    }
    if (jget_(root, "optimizer") || jget_(root, "scheduler"))
        log_warn("DeepSpeed optimizer/scheduler sections are ignored: the trainer's AdamW and --lr_scheduler are used "
                 "(as in the reference)");
done:
    cJSON_Delete(root);
    return rc;
}

int dst_resolve(char *err, const DistFlags *f, TrainConfig *c) {
    TrainStrategy s = c->world > 1 ? TS_DDP : TS_NONE; /* accelerate's plain multi-GPU = DDP */
    const char *how = c->world > 1 ? "ddp (several processes, no sharding asked for)" : "none";
    int rc;
    if (f->use_deepspeed || f->deepspeed_config_file) {
        int stage = -1;
        if (f->deepspeed_config_file && (rc = dst_parse_deepspeed(err, f->deepspeed_config_file, c, &stage))) return rc;
        if (f->zero_stage >= 0) {
            if (stage >= 0 && f->deepspeed_config_file && stage != f->zero_stage)
                log_warn("--zero_stage %lld overrides the config's stage %d", (long long)f->zero_stage, stage);
            stage = (int)f->zero_stage;
        }
        if (stage < 0) {
            qie_seterr(err, "--use_deepspeed needs --deepspeed_config_file (its zero_optimization.stage) or --zero_stage");
            return QIE_EINVAL;
        }
        s = stage == 0 ? TS_DDP : stage <= 2 ? TS_ZERO2 : TS_ZERO3;
        how = stage == 0 ? "deepspeed stage 0 = ddp" : stage == 1 ? "deepspeed stage 1 = zero2 (gradients sharded too)"
              : stage == 2 ? "deepspeed stage 2 = zero2" : "deepspeed stage 3 = zero3";
    }
    if (f->use_fsdp || f->fsdp_sharding_strategy) {
        const char *v = f->fsdp_sharding_strategy ? f->fsdp_sharding_strategy : "FULL_SHARD";
        if (!strcmp(v, "FULL_SHARD") || !strcmp(v, "1")) s = TS_ZERO3, how = "fsdp FULL_SHARD = zero3";
        else if (!strcmp(v, "SHARD_GRAD_OP") || !strcmp(v, "2")) s = TS_ZERO2, how = "fsdp SHARD_GRAD_OP = zero2";
        else if (!strcmp(v, "NO_SHARD") || !strcmp(v, "3")) s = TS_DDP, how = "fsdp NO_SHARD = ddp";
        else if (!strcmp(v, "HYBRID_SHARD") || !strcmp(v, "4") || !strcmp(v, "HYBRID_SHARD_ZERO2") || !strcmp(v, "5")) {
            qie_seterr(err, "--fsdp_sharding_strategy %s: hybrid sharding is not supported by qie\nhint: FULL_SHARD or "
                       "SHARD_GRAD_OP (one group over every GPU)", v);
            return QIE_EUNSUPPORTED;
        } else {
            qie_seterr(err, "--fsdp_sharding_strategy %s: not FULL_SHARD, SHARD_GRAD_OP or NO_SHARD", v);
            return QIE_EINVAL;
        }
        if (f->fsdp_layer_cls && strcmp(f->fsdp_layer_cls, "QwenImageTransformerBlock"))
            log_warn("--fsdp_transformer_layer_cls_to_wrap %s: qie always shards per QwenImageTransformerBlock",
                     f->fsdp_layer_cls);
    }
    if (f->distributed && strcmp(f->distributed, "auto")) {
        if (!strcmp(f->distributed, "none")) s = TS_NONE;
        else if (!strcmp(f->distributed, "ddp")) s = TS_DDP;
        else if (!strcmp(f->distributed, "zero2") || !strcmp(f->distributed, "shard_grad_op")) s = TS_ZERO2;
        else if (!strcmp(f->distributed, "zero3") || !strcmp(f->distributed, "fsdp") ||
                 !strcmp(f->distributed, "full_shard")) s = TS_ZERO3;
        else {
            qie_seterr(err, "--distributed %s: not none, ddp, zero2, zero3 or fsdp", f->distributed);
            return QIE_EINVAL;
        }
        how = f->distributed;
    }
    const char *res = f->param_residency ? f->param_residency : "auto";
    if (!strcmp(res, "auto")) /* one GPU, nothing asked for: block (as fast as full, 9 GiB less at 8 layers) */
        res = s == TS_NONE && c->world == 1 && !(f->distributed && strcmp(f->distributed, "auto")) && c->device &&
                      !strncmp(c->device, "cuda", 4) ? "block" : "full";
    if (strcmp(res, "full")) {
        if (strcmp(res, "block")) {
            qie_seterr(err, "--param_residency %s: not auto, full or block", f->param_residency);
            return QIE_EINVAL;
        }
        if (s == TS_NONE && c->world == 1) s = TS_ZERO3, how = "--param_residency block (zero3 on one process)";
        else if (s != TS_ZERO3) {
            qie_seterr(err, "--param_residency block needs zero3/FULL_SHARD (or one process); this run is %s",
                       dst_strategy_name(s));
            return QIE_EINVAL;
        }
    }
    if (s == TS_NONE && c->world > 1) {
        qie_seterr(err, "--distributed none with %d processes\nhint: ddp, zero2 or zero3", c->world);
        return QIE_EINVAL;
    }
    if ((s == TS_ZERO2 || s == TS_ZERO3) && DIT_MAX_WORLD % c->world) {
        log_warn("%s needs a process count dividing %d (equal shards of every block); %d processes: falling back to "
                 "ddp", dst_strategy_name(s), DIT_MAX_WORLD, c->world);
        s = TS_DDP;
        how = "ddp (fallback)";
    }
    c->strategy = s;
    c->strategy_name = how;
    c->param_residency_block = s == TS_ZERO3;
    const char *gd = f->gradient_dtype ? f->gradient_dtype : "auto";
    const int one = s == TS_ZERO3 && c->world == 1;
    if (!strcmp(gd, "auto")) {
        c->grad_compute_dtype = one && c->gradient_accumulation_steps == 1;
    } else if (!strcmp(gd, "fp32") || !strcmp(gd, "f32")) {
        c->grad_compute_dtype = 0;
    } else if (!strcmp(gd, "bf16")) {
        if (!one) {
            qie_seterr(err, "--gradient_dtype bf16 needs --param_residency block on one process; this run is %s on %d",
                       dst_strategy_name(s), c->world);
            return QIE_EINVAL;
        }
        c->grad_compute_dtype = 1;
    } else {
        qie_seterr(err, "--gradient_dtype %s: not auto, fp32 or bf16", gd);
        return QIE_EINVAL;
    }
    return 0;
}

/* ---- collectives with an error record (hooks return nothing) ---------------------------------- */

static void fail_(Dist *d, int rc, const char *e) {
    if (d->rc) return;
    d->rc = rc;
    snprintf(d->err, sizeof d->err, "%s", e);
}

int dst_error(char *err, const Dist *d) {
    if (d->rc) snprintf(err, QIE_ERR_LEN, "%s", d->err);
    return d->rc;
}

static void join_(Dist *d) {
    char e[QIE_ERR_LEN];
    int rc = d->coll ? coll_join(e, d->coll) : 0;
    if (rc) fail_(d, rc, e);
}

static size_t rsize_(const Dist *d, int r) { return d->dit->lay.ranges[r].size; }
static size_t shsize_(const Dist *d, int r) { return d->dit->lay.ranges[r].size / (size_t)d->world; }

/* ---- DDP / ZeRO-2: reduce a range as soon as its gradient is complete --------------------------- */

static void reduce_range_(Dist *d, int r) {
    char e[QIE_ERR_LEN];
    int rc = 0;
    if (d->rc) return;
    float *g = d->dit->grads;
    const DitRange *R = &d->dit->lay.ranges[r];
    if (d->strat == TS_DDP) rc = coll_all_reduce(e, d->coll, g + R->offset, R->size, QIE_DT_F32, COLL_AVG);
    else rc = coll_reduce_scatter(e, d->coll, g + d->segs[r].start, g + R->offset, shsize_(d, r), QIE_DT_F32, COLL_AVG);
    if (rc) fail_(d, rc, e);
}

static void reduce_grad_end_(void *ud, int r) {
    Dist *d = ud;
    if (!d->reduce_now) return;
    reduce_range_(d, r);
    d->reduced = 1;
}

void dst_reduce_rest(Dist *d) {
    if (d->strat != TS_DDP && d->strat != TS_ZERO2) return;
    if (!d->reduced) /* this rank's last micro-batch ran no backward: the same calls, in the backward's order */
        for (int r = d->dit->lay.nranges - 1; r >= 0; r--) reduce_range_(d, r);
    d->reduced = 1;
    join_(d);
}

/* ---- ZeRO-3 provider ----------------------------------------------------------------------------- */

/* slot s := range r: this rank's bf16(master) part in place, then all-gather (async on NCCL) */
static void gather_(Dist *d, int r, int s) {
    d->slot_r[s] = r;
    if (d->rc) return;
    const size_t sh = shsize_(d, r), es = op_act_size(d->ctx);
    char *dst = d->slot[s], *mine = dst + (size_t)d->rank * sh * es;
    if (d->side_ok) { /* one process: after the compute queue is done with the slot's last range */
        op_wait_for(&d->side, d->ctx);
        op_f32_to_act(&d->side, dst, d->master + d->loc[r], sh);
        d->side_pending[s] = 1;
        return;
    }
    op_f32_to_act(d->ctx, mine, d->master + d->loc[r], sh);
    char e[QIE_ERR_LEN];
    int rc = coll_all_gather(e, d->coll, dst, mine, sh, d->ctx->act);
    if (rc) fail_(d, rc, e);
}

static const void *z3_acquire_(void *ud, int r, DitPhase ph) {
    Dist *d = ud;
    int s = d->slot_r[0] == r ? 0 : d->slot_r[1] == r ? 1 : -1;
    if (s < 0) gather_(d, r, s = d->mru ^ 1);
    join_(d); /* the compute stream waits for the gather (an event, no host sync) */
    if (d->side_pending[s]) {
        op_wait_for(d->ctx, &d->side);
        d->side_pending[s] = 0;
    }
    /* prefetch the next range in the model's order (dit.h DitHook); the forward's last range is
     * the backward's first, so it stays where it is */
    const int nr = d->dit->lay.nranges, nx = ph == DIT_PHASE_FORWARD ? (r + 1 < nr ? r + 1 : -1) : r - 1;
    if (nx >= 0 && d->slot_r[0] != nx && d->slot_r[1] != nx) gather_(d, nx, s ^ 1);
    d->mru = s;
    return d->slot[s];
}

static size_t gsize_(const Dist *d) { return dtype_size(d->gdt); }

static void *z3_grad_begin_(void *ud, int r) {
    Dist *d = ud;
    if (d->world == 1) return (char *)d->gshard + d->loc[r] * gsize_(d); /* the shard is the range */
    const int s = d->gnext;
    d->gnext ^= 1;
    if (d->gpend[s] >= 0) { /* the reduce-scatter still reading this slot must be done */
        join_(d);
        d->gpend[0] = d->gpend[1] = -1;
    }
    op_zero(d->ctx, d->gslot[s], rsize_(d, r) * sizeof(float));
    if (d->accumulate) /* the running sum of earlier passes comes back through the reduce-scatter */
        op_copy(d->ctx, d->gslot[s] + (size_t)d->rank * shsize_(d, r), (float *)d->gshard + d->loc[r],
                shsize_(d, r) * sizeof(float));
    d->gcur = s;
    return d->gslot[s];
}

static void z3_grad_end_(void *ud, int r) {
    Dist *d = ud;
    if (d->world == 1) return;
    d->gpend[d->gcur] = r;
    if (d->rc) return;
    char e[QIE_ERR_LEN];
    int rc = coll_reduce_scatter(e, d->coll, (float *)d->gshard + d->loc[r], d->gslot[d->gcur], shsize_(d, r), QIE_DT_F32,
                                 COLL_SUM);
    if (rc) fail_(d, rc, e);
}

void dst_pass_done(Dist *d) {
    if (d->strat != TS_ZERO3) return;
    join_(d);
    d->gpend[0] = d->gpend[1] = -1;
    d->accumulate = 1;
}

void dst_idle_pass(Dist *d) {
    if (d->strat != TS_ZERO3) return;
    const int nr = d->dit->lay.nranges;
    for (int r = 0; r < nr; r++) z3_acquire_(d, r, DIT_PHASE_FORWARD);
    for (int r = nr - 1; r >= 0; r--) {
        z3_acquire_(d, r, DIT_PHASE_BACKWARD);
        z3_grad_begin_(d, r);
        z3_grad_end_(d, r);
    }
    dst_pass_done(d);
}

void dst_step_begin(Dist *d) {
    d->accumulate = 0;
    d->reduced = 0;
    d->reduce_now = 0;
    if (d->strat == TS_ZERO3) op_zero(d->ctx, d->gshard, d->nloc * gsize_(d)); /* a step with no pass */
}

int dst_after_update(char *err, Dist *d) {
    if (d->strat == TS_ZERO3) d->slot_r[0] = d->slot_r[1] = -1; /* the master changed */
    if (d->strat != TS_ZERO2) return 0;
    const size_t es = op_act_size(d->ctx);
    char *p = d->dit->params;
    for (int r = 0; r < d->dit->lay.nranges; r++) {
        const size_t sh = shsize_(d, r);
        int rc = coll_all_gather(err, d->coll, p + d->dit->lay.ranges[r].offset * es, p + d->segs[r].start * es, sh,
                                 d->ctx->act);
        if (rc) return rc;
    }
    return coll_join(err, d->coll);
}

/* ---- small host-side collectives (statistics, agreement) ----------------------------------------- */

int dst_allreduce_host(char *err, Dist *d, float *v, int n) {
    if (!d->coll || d->world == 1) return 0;
    if (coll_backend(d->coll) == COLL_CPU) return coll_all_reduce(err, d->coll, v, (size_t)n, QIE_DT_F32, COLL_SUM);
    op_upload_f32(d->ctx, d->dscratch, v, (size_t)n);
    int rc = coll_all_reduce(err, d->coll, d->dscratch, (size_t)n, QIE_DT_F32, COLL_SUM);
    if (!rc) rc = coll_join(err, d->coll);
    if (!rc) op_download_f32(d->ctx, v, d->dscratch, (size_t)n);
    return rc;
}

int dst_max_int(char *err, Dist *d, int v, int *max) {
    *max = v;
    if (!d->coll || d->world == 1) return 0;
    float all[DIT_MAX_WORLD], mine = (float)v;
    int rc;
    if (coll_backend(d->coll) == COLL_CPU) {
        rc = coll_all_gather(err, d->coll, all, &mine, 1, QIE_DT_F32);
    } else {
        op_upload_f32(d->ctx, d->dscratch + 2 * DIT_MAX_WORLD, &mine, 1);
        rc = coll_all_gather(err, d->coll, d->dscratch, d->dscratch + 2 * DIT_MAX_WORLD, 1, QIE_DT_F32);
        if (!rc) rc = coll_join(err, d->coll);
        if (!rc) op_download_f32(d->ctx, all, d->dscratch, (size_t)d->world);
    }
    for (int r = 0; rc == 0 && r < d->world; r++)
        if ((int)all[r] > *max) *max = (int)all[r];
    return rc;
}

/* Σ over ranks of a double, in rank order, to ~48 bits: each rank's value travels as two floats
 * (hi, lo) through an all-gather and every rank adds them up in double the same way. */
int dst_sum_double(char *err, Dist *d, double v, double *sum) {
    *sum = v;
    if (!d->coll || d->world == 1) return 0;
    float all[2 * DIT_MAX_WORLD], mine[2] = {(float)v, (float)(v - (double)(float)v)};
    int rc;
    if (coll_backend(d->coll) == COLL_CPU) {
        rc = coll_all_gather(err, d->coll, all, mine, 2, QIE_DT_F32);
    } else {
        op_upload_f32(d->ctx, d->dscratch + 2 * DIT_MAX_WORLD, mine, 2);
        rc = coll_all_gather(err, d->coll, d->dscratch, d->dscratch + 2 * DIT_MAX_WORLD, 2, QIE_DT_F32);
        if (!rc) rc = coll_join(err, d->coll);
        if (!rc) op_download_f32(d->ctx, all, d->dscratch, 2 * (size_t)d->world);
    }
    double acc = 0.0;
    for (int r = 0; r < d->world; r++) acc += (double)all[2 * r] + (double)all[2 * r + 1];
    if (!rc) *sum = acc;
    return rc;
}

/* Every rank learns whether any rank failed (a barrier too); the failed rank keeps its own err. */
int dst_agree(char *err, Dist *d, int rc) {
    if (!d->coll || d->world == 1) return rc;
    float f = rc ? 1.0f : 0.0f;
    char e[QIE_ERR_LEN];
    int rc2 = dst_allreduce_host(e, d, &f, 1);
    if (rc) return rc;
    if (rc2) {
        snprintf(err, QIE_ERR_LEN, "%s", e);
        return rc2;
    }
    if (f > 0) {
        qie_seterr(err, "%g other rank(s) failed (their logs say why)", f);
        return QIE_EPEER;
    }
    return 0;
}

/* ---- setup -------------------------------------------------------------------------------------- */

int dst_init(char *err, Dist *d, const TrainConfig *c, OpCtx *ctx, Dit *dit) {
    memset(d, 0, sizeof *d);
    d->strat = c->strategy;
    d->world = c->world;
    d->rank = c->rank;
    d->ctx = ctx;
    d->dit = dit;
    d->slot_r[0] = d->slot_r[1] = d->gpend[0] = d->gpend[1] = -1;
    d->mru = 1;
    const DitLayout *lay = &dit->lay;
    const int sharded = d->strat == TS_ZERO2 || d->strat == TS_ZERO3;
    d->nsegs = sharded ? lay->nranges : 1;
    d->segs = calloc((size_t)d->nsegs, sizeof *d->segs);
    d->loc = calloc((size_t)d->nsegs, sizeof *d->loc);
    if (!d->segs || !d->loc) return QIE_ENOMEM;
    if (sharded) ckpt_range_slices(lay, d->world, d->rank, d->segs);
    else d->segs[0] = (CkptSeg){0, lay->num_params};
    for (int k = 0; k < d->nsegs; k++) {
        d->loc[k] = d->nloc;
        d->nloc += d->segs[k].end - d->segs[k].start;
    }
    d->gdt = QIE_DT_F32;
    if (d->strat == TS_NONE) return 0;
    if (d->world == 1 && d->strat == TS_ZERO3) { /* no collective at all (header: one process) */
        int rc = opctx_fork(err, &d->side, ctx);
        if (rc) return rc;
        d->side_ok = 1;
        if (c->grad_compute_dtype) d->gdt = ctx->act;
        goto hooks;
    }
    CollConfig cc = {
        .backend = ctx->dev == QIE_DEV_CUDA ? COLL_NCCL : COLL_CPU,
        .world = c->world,
        .rank = c->rank,
        .master_addr = c->master_addr ? c->master_addr : "127.0.0.1",
        .master_port = c->master_port > 0 ? c->master_port : 29500,
        .rdzv_timeout_s = c->rdzv_timeout_s,
        .timeout_s = c->coll_timeout_s,
        .device = ctx->device_index,
        .stream = ctx->stream,
    };
    int rc = coll_create(err, &cc, &d->coll);
    if (rc) {
        qie_preferr(err, "rank %d of %d: collectives", c->rank, c->world);
        return rc;
    }
    d->dscratch = op_alloc(ctx, 3 * DIT_MAX_WORLD * sizeof(float));
hooks:;
    DitHook h = {.ud = d};
    if (d->strat == TS_ZERO3) {
        for (int r = 0; r < lay->nranges; r++)
            if (lay->ranges[r].size > d->maxrange) d->maxrange = lay->ranges[r].size;
        for (int s = 0; s < 2; s++) {
            d->slot[s] = op_alloc(ctx, d->maxrange * op_act_size(ctx));
            if (d->world > 1) d->gslot[s] = op_alloc(ctx, d->maxrange * sizeof(float));
        }
        d->gshard = op_alloc(ctx, d->nloc * gsize_(d));
        h.param_acquire = z3_acquire_;
        h.grad_begin = z3_grad_begin_;
        h.grad_end = z3_grad_end_;
        h.grads_act = d->gdt != QIE_DT_F32;
    } else {
        h.grad_end = reduce_grad_end_;
    }
    dit_set_hook(dit, &h);
    log_info0("distributed: %s on %d process(es), %s collectives; this rank holds %zu of %zu parameters' master and "
              "moments%s%s", dst_strategy_name(d->strat), d->world, d->coll ? coll_backend_name(coll_backend(d->coll)) : "no",
              d->nloc, lay->num_params, d->strat == TS_ZERO3 ? ", no resident bf16 weights (made per block)" : "",
              d->gdt != QIE_DT_F32 ? ", gradients in bf16" : "");
    return 0;
}

void dst_free(Dist *d) {
    if (!d->ctx) return;
    for (int s = 0; s < 2; s++) {
        op_free(d->ctx, d->slot[s]);
        op_free(d->ctx, d->gslot[s]);
    }
    op_free(d->ctx, d->gshard);
    op_free(d->ctx, d->dscratch);
    if (d->side_ok) opctx_free(&d->side);
    if (d->dit) dit_set_hook(d->dit, NULL);
    coll_destroy(&d->coll);
    free(d->segs);
    free(d->loc);
    memset(d, 0, sizeof *d);
}

/* full [N] -> this rank's segments back to back */
void dst_slice(const Dist *d, float *dst, const float *full) {
    for (int k = 0; k < d->nsegs; k++)
        memcpy(dst + d->loc[k], full + d->segs[k].start, (d->segs[k].end - d->segs[k].start) * sizeof(float));
}

/* ---- checkpoints -------------------------------------------------------------------------------- */

int dst_save(char *err, Dist *d, const TrainConfig *c, const char *config_json, const unsigned char *frozen,
             const float *master, const float *m, const float *v, const TrainState *st, const char *extra) {
    const DitLayout *lay = &d->dit->lay;
    char tmp[4096], final[4096], p[4200];
    snprintf(final, sizeof final, "%s/checkpoint-%lld", c->output_dir, (long long)st->global_step);
    snprintf(tmp, sizeof tmp, "%s/.checkpoint-%lld.tmp", c->output_dir, (long long)st->global_step);
    int rc = 0;
    if (d->rank == 0) {
        rc = ckpt_prune(err, c->output_dir, c->checkpoints_total_limit);
        train_rmtree(tmp);
        if (!rc) rc = fs_mkdirs(err, tmp);
    }
    if ((rc = dst_agree(err, d, rc))) goto fail;
    /* DDP: every rank holds the same state, rank 0 writes it as one file (world 1) */
    const int ddp = d->strat == TS_DDP || d->strat == TS_NONE;
    if (!ddp || d->rank == 0) {
        CkptShard s = {ddp ? 1 : d->world, ddp ? 0 : d->rank, lay->num_params, ckpt_layout_hash(lay),
                       st->global_step, d->nsegs, d->segs, master, m, v};
        rc = ckpt_shard_write(err, tmp, &s);
    }
    if ((rc = dst_agree(err, d, rc))) goto fail;
    if (d->rank == 0) {
        snprintf(p, sizeof p, "%s/transformer", tmp);
        if (!(rc = ckpt_layout_write(err, tmp, lay, config_json, frozen)) &&
            !(rc = ckpt_merge(err, tmp, p, c->max_shard_size, 0, NULL)) && !(rc = ckpt_write_state(err, tmp, st, extra)))
            rc = ckpt_commit(err, c->output_dir, tmp, final, st->global_step);
    }
    if ((rc = dst_agree(err, d, rc))) goto fail;
    return 0;
fail:
    qie_preferr(err, "checkpoint %s", final);
    if (d->rank == 0) train_rmtree(tmp);
    return rc;
}

int dst_is_sharded_ckpt(const char *path) {
    char p[4200];
    snprintf(p, sizeof p, "%s/layout.json", path);
    struct stat sb;
    return stat(p, &sb) == 0;
}

/* Reads the checkpoint's master and moments into this rank's segments (either format). */
int dst_load(char *err, const Dist *d, const char *path, float *master, float *m, float *v) {
    const DitLayout *lay = &d->dit->lay;
    int rc;
    if (!dst_is_sharded_ckpt(path)) { /* the single-process format: full buffers by name, then slice */
        const size_t n = lay->num_params;
        float *fm = malloc(n * sizeof *fm), *f1 = malloc(n * sizeof *f1), *f2 = malloc(n * sizeof *f2);
        if (!fm || !f1 || !f2) rc = QIE_ENOMEM;
        else rc = ckpt_load_optimizer(err, path, lay, fm, f1, f2);
        if (!rc) {
            dst_slice(d, master, fm);
            dst_slice(d, m, f1);
            dst_slice(d, v, f2);
        }
        free(fm);
        free(f1);
        free(f2);
        return rc;
    }
    CkptReader *rd = NULL;
    if ((rc = ckpt_reader_open(err, path, &rd)) || (rc = ckpt_reader_check(err, rd, lay))) goto done;
    if (!ckpt_reader_has_moments(rd)) {
        qie_seterr(err, "%s holds weights only (no AdamW moments): it cannot be resumed", path);
        rc = QIE_EFORMAT;
        goto done;
    }
    if ((rc = ckpt_reader_read_segs(err, rd, CKPT_MASTER, d->segs, d->nsegs, master)) ||
        (rc = ckpt_reader_read_segs(err, rd, CKPT_EXP_AVG, d->segs, d->nsegs, m)) ||
        (rc = ckpt_reader_read_segs(err, rd, CKPT_EXP_AVG_SQ, d->segs, d->nsegs, v)))
        goto done;
    if (ckpt_reader_world(rd) != d->world)
        log_info0("%s was written by %d rank(s); re-sharded for %d", path, ckpt_reader_world(rd), d->world);
done:
    ckpt_reader_close(&rd);
    if (rc) qie_preferr(err, "checkpoint %s", path);
    return rc;
}
