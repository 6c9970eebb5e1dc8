/* train.h: qie-train, the Qwen-Image-Edit trainer (docs/train.md). Everything around the model:
 * data order, the flow-matching objective, AdamW with fp32 master weights, the LR schedule,
 * clipping, checkpoints and resume, logs. The model itself is common/dit.h.
 *
 * Files (each a module with its own prefix; main.c only parses and maps rc to an exit status):
 *   sampler.c     mt19937 + torch randperm, bucketed batches per epoch, sharding (smp_)
 *   schedule.c    LR multipliers, the clipping threshold, the σ grid, densities, weights (sch_)
 *   draws.c       every random draw: Philox streams, or replayed from a safetensors file (drw_)
 *   data.c        the dataset: an LMDB cache or a record stream, validated samples (ds_)
 *   objective.c   posterior sample, normalise, pack, noise, target, loss and its gradient (obj_)
 *   checkpoint.c  atomic checkpoint-N folders, latest, pruning, load (ckpt_)
 *   tb_writer.c   TensorBoard event files written by hand (tb_)
 *   dist.c        several ranks: strategy flags (DeepSpeed JSON, FSDP), collectives, shards, the
 *                 ZeRO-3 parameter provider, sharded checkpoints (dst_)
 *   train_loop.c  the run: setup, the step, logging, NaN handling (train_)
 *
 * Spec: spec/trainer_behaviour.md §3.6, §4, §5, §6; spec/decisions.md wins where they differ. */
#ifndef QIE_STAGES_TRAIN_H
#define QIE_STAGES_TRAIN_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ckpt_shard.h"
#include "cli.h"
#include "coll.h"
#include "dit.h"
#include "err.h"
#include "record.h"

#define TRAIN_LATENT_CH 16 /* VAE z_dim */
#define TRAIN_MAX_SOURCES 8

/* ---- configuration (filled by main.c from the option table) ------------------------------- */

typedef enum { WS_NONE = 0, WS_SIGMA_SQRT, WS_LOGIT_NORMAL, WS_MODE, WS_COSMAP } WeightingScheme;
/* How the step is spread over ranks (dist.c):
 *   TS_NONE   one process, no collectives (the single-GPU trainer)
 *   TS_DDP    every rank holds everything; gradients all-reduced (avg) per block range
 *   TS_ZERO2  DeepSpeed ZeRO-2 / FSDP SHARD_GRAD_OP: gradients reduce-scattered, fp32 master and
 *             AdamW moments sharded per range, bf16 weights all-gathered after the update
 *   TS_ZERO3  ZeRO-3 / FSDP FULL_SHARD: also the bf16 weights sharded, each block all-gathered
 *             just before its forward and its backward (dit.h DitHook) */
typedef enum { TS_NONE = 0, TS_DDP, TS_ZERO2, TS_ZERO3 } TrainStrategy;
typedef enum {
    LRS_CONSTANT = 0, LRS_CONSTANT_WITH_WARMUP, LRS_LINEAR, LRS_COSINE, LRS_COSINE_WITH_RESTARTS, LRS_POLYNOMIAL
} LrSchedule;

typedef struct {
    /* model and data */
    const char *model;          /* --pretrained_model_name_or_path */
    const char *transformer_path;
    const char *in_url;         /* --in */
    const char *output_dir;
    const char *logging_dir;
    const char *tracker_project_name;
    const char *device;
    const char *draws_path;     /* --draws: replay every random draw from this file (golden tests) */
    int plus;                   /* --train_mode qwen_image_edit_plus */
    /* optimisation */
    double learning_rate, adam_beta1, adam_beta2, adam_weight_decay, adam_epsilon, max_grad_norm;
    int64_t abnormal_norm_clip_start, initial_grad_norm_ratio;
    int scale_lr;
    LrSchedule lr_scheduler;
    int64_t lr_warmup_steps;
    int64_t train_batch_size, gradient_accumulation_steps, num_train_epochs, max_train_steps; /* -1: none */
    int64_t seed;               /* -1: draw one */
    int gradient_checkpointing;
    int recompute_attention;    /* with checkpointing: false keeps attention outputs (Dit.keep_attn) */
    CliStrs trainable_modules, trainable_modules_low_learning_rate;
    /* objective */
    int uniform_sampling;
    WeightingScheme weighting_scheme;
    double logit_mean, logit_std, mode_scale, text_drop_ratio;
    int64_t train_sampling_steps;
    /* checkpoints and logs */
    int64_t checkpointing_steps, checkpoints_total_limit; /* -1: no limit */
    const char *resume_from_checkpoint;
    const char *max_shard_size;
    int report_tensorboard;
    int report_model_info;
    int progress;
    int64_t stop_after_steps;   /* -1: none; else stop (with a checkpoint) after this many steps of this run */
    /* distribution (dist.c; docs/train.md "Several GPUs"). world/rank come from the launcher's
     * environment (dist_env.h); strategy from --distributed or the accelerate spellings. */
    int rank, world, local_rank;
    TrainStrategy strategy;
    const char *strategy_name;  /* as the user asked for it (logs) */
    int param_residency_block;  /* --param_residency block: bf16 weights materialised per block */
    int grad_compute_dtype;     /* --gradient_dtype: 1 = ZeRO-3 on one process keeps the step's gradient in the
                                   compute dtype (bf16 on CUDA), 0 = f32 (dst_resolve decides "auto") */
    const char *master_addr;    /* rendezvous (NULL: 127.0.0.1) */
    int master_port;
    double rdzv_timeout_s, coll_timeout_s;
    const char *init_weights;   /* NULL: load them; "random": seeded N(0, 0.02)-like values (benchmarks) */
    int skip_final_save;        /* --final_save false: no final checkpoint nor weights (benchmarks) */
} TrainConfig;

/* ---- sampler.c ----------------------------------------------------------------------------- */

/* The 32-bit Mersenne Twister, as std::mt19937 and torch's CPU generator use it. */
typedef struct {
    uint32_t mt[624];
    int i;
} Mt19937;
void mt_seed(Mt19937 *g, uint32_t seed);
uint32_t mt_next(Mt19937 *g);
/* torch.randperm(n, generator=torch.Generator().manual_seed(seed)) on the CPU (n < 2^24):
 * Fisher–Yates from the identity, z = mt() mod (n − i), swap(perm[i], perm[i + z]). */
void smp_randperm(uint32_t *perm, uint32_t n, uint64_t seed);

typedef struct {
    uint32_t key;     /* bucket key (h, w, nsources) id: items sharing it may share a batch */
} SmpItem;

/* One epoch's batches for this rank: batch j has items idx[off[j] .. off[j+1]). */
typedef struct {
    int64_t epoch;
    size_t nbatches;
    size_t *off;
    uint32_t *idx;
} SmpEpoch;

/* Batches of epoch e (trainer_behaviour.md §3.6, decisions.md "data order"): perm =
 * randperm(n, seed + e); each index joins its bucket (key); a bucket holding batch items is
 * emitted as a batch; what is left in the buckets at the end of the epoch is dropped; the batch
 * stream is dealt round-robin to ranks (rank r takes r, r + world, ...), a trailing incomplete
 * round dropped. ep is caller-owned (smp_epoch_free). */
int smp_epoch_build(char *err, SmpEpoch *ep, const SmpItem *items, uint32_t n, int batch, uint64_t seed,
                    int64_t epoch, int rank, int world);
void smp_epoch_free(SmpEpoch *ep);

/* ---- schedule.c ---------------------------------------------------------------------------- */

int sch_parse_lr(const char *s, LrSchedule *out);
int sch_parse_weighting(const char *s, WeightingScheme *out);
/* diffusers get_scheduler multiplier before update n+1 (n = completed optimizer steps), with W
 * warmup and M total steps (trainer_behaviour.md §4.10). */
double sch_lr_lambda(LrSchedule s, int64_t n, int64_t W, int64_t M, double base_lr);
/* The plain-mode clipping threshold (decisions.md: on every backend): linear decay from
 * ratio·max to max over `start` steps, and above start a norm more than 5× the threshold shrinks
 * it by min(norm/threshold, 10). step = completed optimizer steps. */
double sch_clip_threshold(double max_grad_norm, double ratio, int64_t start, int64_t step, double norm);
/* The σ grid of FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=linspace(1, 1/T, T),
 * mu=μ(L)) with Qwen-Image-Edit's scheduler config (§4.6): sigmas[T] and timesteps[T] float32. */
void sch_sigmas(float *sigmas, float *timesteps, int T, int64_t seq_len);
double sch_mu(int64_t seq_len);
/* u in [0, 1) for the index, from a uniform draw u0 and a normal draw z (§4.5). */
double sch_density(WeightingScheme ws, double u0, double z, double logit_mean, double logit_std, double mode_scale);
/* w(σ) of compute_loss_weighting_for_sd3. */
float sch_weight(WeightingScheme ws, float sigma);

/* ---- draws.c ------------------------------------------------------------------------------ */

/* Every random draw of a step comes from here. Default: Philox streams keyed by
 * (seed, purpose, global sample slot), so the RNG state is the slot counter alone and resume is
 * exact by construction. With a draws file (safetensors, scripts/golden/train.py writes it), each
 * draw is read from a named tensor instead; a missing one is an error. Names, for micro-batch m
 * (0-based over the run) and the batch's samples b:
 *   noise.m            f32 [B, N_tgt, 64]        flow-matching ε (packed)
 *   post.target.m      f32 [B, 16, 1, h, w]      posterior ε of the target latent
 *   post.source.K.m    f32 [B, 16, 1, hK, wK]    posterior ε of source K
 *   sigma_index.m      i64 [B]                   index into the σ grid
 *   text_drop.m        i64 [B]                   1: use the empty-prompt embedding */
typedef struct Draws Draws;
int drw_open(char *err, const char *path, uint64_t seed, Draws **out); /* path NULL: Philox */
void drw_close(Draws **d);
int drw_replaying(const Draws *d);
/* the Philox subsequence of (purpose, image, sample slot) under the run's seed */
uint64_t drw_subseq(int purpose, int img, uint64_t slot);
enum { DRW_NOISE = 1, DRW_POST = 2, DRW_SIGMA_U = 3, DRW_SIGMA_Z = 4, DRW_DROP = 5, DRW_STRATA = 6 };
/* n normals of (purpose, slot, img) into out; img: 0 target, 1+K source K (DRW_POST only).
 * In replay mode (m, b) name the tensor row. */
int drw_normal(char *err, Draws *d, int purpose, uint64_t slot, int img, int64_t m, int b, float *out, size_t n);
double drw_uniform(Draws *d, int purpose, uint64_t slot);
uint32_t drw_u32(Draws *d, int purpose, uint64_t slot, uint64_t i);
/* replay mode only: the recorded index / dropout decision (QIE_ENOTFOUND if absent) */
int drw_sigma_index(char *err, Draws *d, int64_t m, int b, int64_t *idx);
int drw_text_drop(char *err, Draws *d, int64_t m, int b, int *drop);

/* ---- data.c ------------------------------------------------------------------------------- */

/* One validated sample, host f32. */
typedef struct {
    char id[128];
    int h, w;                                /* target latent size (bucket / 8) */
    float *mean, *logvar;                    /* [16, h, w] */
    int nsrc;
    int sh[TRAIN_MAX_SOURCES], sw[TRAIN_MAX_SOURCES];
    float *smean[TRAIN_MAX_SOURCES], *slogvar[TRAIN_MAX_SOURCES];
    int L, L_empty;                          /* text rows */
    float *txt, *txt_empty;                  /* [L, J], [L_empty, J] (NULL if absent) */
} Sample;
void sample_free(Sample *s);

typedef struct Dataset Dataset;
/* Opens --in: lmdb://DIR[?expect=K=V&...] (the cache: only complete records of this train mode
 * are listed, the rest reported) or a record stream / file (read whole into memory). Items are
 * sorted by (record index, id) so the order does not depend on commit order. */
int ds_open(char *err, const char *url, int joint_dim, int plus, int need_empty, Dataset **out);
void ds_close(Dataset **d);
uint32_t ds_count(const Dataset *d);
const SmpItem *ds_items(const Dataset *d);
const char *ds_id(const Dataset *d, uint32_t i);
/* FNV-1a of the sorted id list: a checkpoint refuses to resume on other data (by default). */
uint64_t ds_fingerprint(const Dataset *d);
/* Loads item i into s (freed first). QIE_EFORMAT with err naming the problem when the record is
 * unusable (missing part, wrong shape): the caller reports and skips it. */
int ds_load(char *err, Dataset *d, uint32_t i, Sample *s);

/* ---- objective.c -------------------------------------------------------------------------- */

/* Packs z [C, h, w] into [(h/2)(w/2), 4C] (model.md §1.3: token y2·wp + x2, feature c·4+dy·2+dx). */
void obj_pack(float *out, const float *z, int C, int h, int w);
/* Posterior sample and normalisation (model.md §2.5, train_edit.py): z = μ + exp(½·clamp(logvar,
 * −30, 20))·n, x = (z − latents_mean[c])·(1/latents_std[c]), all fp32; out [C, h, w]. */
void obj_latent(float *out, const float *mean, const float *logvar, const float *eps, int C, int h, int w);
/* bf16 rounding of the reference's bf16 tensors when the compute dtype is bf16 (round = 1). */
void obj_round(float *x, size_t n, int round);
/* x_σ = (1 − σ)·x0 + σ·ε and v = ε − x0, elementwise in the compute dtype (§4.7). */
void obj_noisy(float *xs, float *v, const float *x0, const float *eps, float sigma, size_t n, int round);
/* Masked, weighted MSE of one sample (§4.7 step 6): returns Σ w·m·e² (double) and writes
 * d_pred = 2·w·m·e·scale (scale = 1/(B·N·64·accumulation)). */
double obj_loss(float *d_pred, const float *pred, const float *v, float w, size_t n, float scale);

/* ---- checkpoint.c ------------------------------------------------------------------------- */

typedef struct {
    int64_t global_step;   /* optimizer steps done */
    int64_t micro;         /* micro-batches consumed (the RNG slot counter) */
    int64_t epoch;         /* current epoch */
    int64_t batch_pos;     /* batches of this epoch consumed by this rank */
    uint64_t seed;
    uint64_t data_fingerprint;
    uint32_t data_count;
    int64_t max_train_steps, train_batch_size, gradient_accumulation_steps, world;
} TrainState;

/* "latest" (highest complete checkpoint-N in dir) or an explicit path -> path of the checkpoint;
 * QIE_ENOTFOUND when latest finds none. */
int ckpt_resolve(char *err, const char *output_dir, const char *spec, char *path, size_t cap);
/* Is dir a complete checkpoint (has its completion marker)? */
int ckpt_complete(const char *dir);
/* Deletes the oldest complete checkpoints so that at most limit−1 remain (before a save) and
 * removes stale temp folders of crashed saves. */
int ckpt_prune(char *err, const char *output_dir, int64_t limit);
/* Writes OUTPUT_DIR/checkpoint-N atomically: a temp folder, every file fsync'ed, the marker
 * last, a rename, the parent fsync'ed. master/m/v host f32 [lay->num_params]. */
int ckpt_save(char *err, const char *output_dir, const char *config_json, const DitLayout *lay, const float *master,
              const float *m, const float *v, const TrainState *st, const char *max_shard_size, const char *state_json_extra);
/* Writes the final weights: OUTPUT_DIR/transformer (atomically, replacing an older one). */
int ckpt_save_weights(char *err, const char *dir, const char *config_json, const DitLayout *lay, const float *master,
                      const char *max_shard_size);
/* Loads a checkpoint into master/m/v (host f32, lay order) and st. */
int ckpt_load(char *err, const char *path, const DitLayout *lay, float *master, float *m, float *v, TrainState *st);
/* The two halves of ckpt_load: trainer_state.json, and optimizer/ (the single-process format). */
int ckpt_load_state(char *err, const char *path, TrainState *st);
int ckpt_load_optimizer(char *err, const char *path, const DitLayout *lay, float *master, float *m, float *v);
/* Pieces of an atomic save that dist.c puts together: dir/trainer_state.json; then fsync of tmp,
 * the marker, rename(tmp, final), fsync of output_dir. */
int ckpt_write_state(char *err, const char *dir, const TrainState *st, const char *extra);
int ckpt_commit(char *err, const char *output_dir, const char *tmp, const char *final, int64_t step);
/* OUTPUT_DIR/transformer from a sharded checkpoint (ckpt_merge into a temp folder, then rename). */
int ckpt_save_weights_merged(char *err, const char *dir, const char *ckpt_dir, const char *max_shard_size);

/* ---- dist.c -------------------------------------------------------------------------------- */

/* The flags that pick a strategy (main.c fills them; dst_resolve decides). */
typedef struct {
    const char *distributed;             /* --distributed none|ddp|zero2|zero3|fsdp|auto (NULL: auto) */
    int use_deepspeed;
    const char *deepspeed_config_file;
    int64_t zero_stage;                  /* --zero_stage (accelerate), -1: absent */
    int use_fsdp;
    const char *fsdp_sharding_strategy;  /* FULL_SHARD|SHARD_GRAD_OP|NO_SHARD (or accelerate's 1|2|3) */
    const char *fsdp_layer_cls;          /* --fsdp_transformer_layer_cls_to_wrap */
    const char *param_residency;         /* full|block */
    const char *gradient_dtype;          /* auto|fp32|bf16 */
} DistFlags;
/* Sets c->strategy, c->strategy_name, c->param_residency_block from the flags and c->world
 * (c->train_batch_size and c->gradient_accumulation_steps are checked against a DeepSpeed JSON). */
int dst_resolve(char *err, const DistFlags *f, TrainConfig *c);
/* zero_optimization.stage of a DeepSpeed config, after checking the keys that matter against c. */
int dst_parse_deepspeed(char *err, const char *path, const TrainConfig *c, int *stage);
const char *dst_strategy_name(TrainStrategy s);

/* This rank's view of the run (dist.c header comment). Caller-owned; dst_init / dst_free. */
typedef struct {
    TrainStrategy strat;
    int world, rank;
    Coll *coll;                /* NULL for TS_NONE */
    OpCtx *ctx;                /* borrowed */
    Dit *dit;                  /* borrowed; its hook points here */
    int nsegs;                 /* this rank's segments of the flat buffer ... */
    CkptSeg *segs;             /* ... [start, end) ascending (ZeRO: one per range) */
    size_t *loc;               /* segment k's offset in the local (back to back) buffers */
    size_t nloc;               /* Σ segment lengths: the length of master, m, v */
    const float *master;       /* device f32 [nloc] (ZeRO-3 makes the bf16 weights from it) */
    void *gshard;              /* ZeRO-3: device [nloc] of gdt, this rank's reduced gradient */
    QieDtype gdt;              /* f32, or the compute dtype (one process, --gradient_dtype) */
    void *slot[2];             /* ZeRO-3: two gathered ranges, act */
    int slot_r[2], mru;
    OpCtx side;                /* ZeRO-3 on one process: the queue that makes the next range's weights */
    int side_ok, side_pending[2];
    float *gslot[2];           /* ZeRO-3 on several ranks: two range gradients being computed / reduced, f32 */
    int gpend[2], gcur, gnext;
    size_t maxrange;
    float *dscratch;           /* device f32 [3·DIT_MAX_WORLD] for host-side collectives */
    int accumulate;            /* ZeRO-3: this pass adds to the step's gradient */
    int reduce_now;            /* DDP/ZeRO-2: this backward is the step's last: reduce per range */
    int reduced;
    int rc;                    /* first collective error inside a hook */
    char err[QIE_ERR_LEN];
} Dist;

int dst_init(char *err, Dist *d, const TrainConfig *c, OpCtx *ctx, Dit *dit);
void dst_free(Dist *d);
int dst_error(char *err, const Dist *d);     /* a hook's collective error, or 0 */
void dst_slice(const Dist *d, float *dst, const float *full);
void dst_step_begin(Dist *d);
void dst_pass_done(Dist *d);                 /* after each dit_backward */
void dst_idle_pass(Dist *d);                 /* ZeRO-3: a pass's collectives without its compute */
void dst_reduce_rest(Dist *d);               /* DDP/ZeRO-2: the reductions the backward did not do */
int dst_after_update(char *err, Dist *d);    /* ZeRO-2: all-gather the new weights */
int dst_allreduce_host(char *err, Dist *d, float *v, int n); /* SUM over ranks of host values */
int dst_max_int(char *err, Dist *d, int v, int *max);
int dst_sum_double(char *err, Dist *d, double v, double *sum); /* Σ over ranks, rank order, ~48 bits */
int dst_agree(char *err, Dist *d, int rc);   /* any rank failed -> every rank fails */
int dst_save(char *err, Dist *d, const TrainConfig *c, const char *config_json, const unsigned char *frozen,
             const float *master, const float *m, const float *v, const TrainState *st, const char *extra);
int dst_is_sharded_ckpt(const char *path);
int dst_load(char *err, const Dist *d, const char *path, float *master, float *m, float *v);

/* ---- tb_writer.c -------------------------------------------------------------------------- */

uint32_t tb_crc32c(const void *buf, size_t n);
typedef struct TbWriter TbWriter;
/* Creates dir (and parents) and events.out.tfevents.<time>.<host>.<pid>.qie in it. */
int tb_open(char *err, const char *dir, TbWriter **out);
int tb_scalar(char *err, TbWriter *w, const char *tag, float value, int64_t step, double wall_time);
int tb_flush(char *err, TbWriter *w);
void tb_close(TbWriter **w);

/* ---- train_loop.c ------------------------------------------------------------------------- */

/* Runs the training. Returns 0, a QIE_E* / errno code with err filled, or TRAIN_ENONFINITE
 * (a NaN/Inf loss or gradient norm stopped the run; err says where). */
#define TRAIN_ENONFINITE (-1900)
int train_run(char *err, const TrainConfig *cfg);

/* helpers shared by the modules */
int train_rmtree(const char *path);              /* rm -rf; 0 or errno */
int train_fsync_path(const char *path);          /* open + fsync (files and folders) */
int train_write_file(char *err, const char *path, const void *buf, size_t n); /* + fsync */
char *train_read_file(char *err, const char *path, size_t *n); /* malloc'd, NUL-terminated */

#endif
