/* qie-train: fine-tunes the Qwen-Image-Edit transformer from the latent cache (or a record
 * stream). This file parses the options (every flag of VideoX-Fun's train_edit.py, plus qie's
 * own), checks them and maps the result of train_run to an exit status: 0 done, 1 error,
 * 2 bad usage, 3 a NaN/Inf loss stopped the run. docs/train.md describes every flag. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "dist_env.h"
#include "err.h"
#include "log.h"
#include "rendezvous.h"
#include "train.h"

#ifdef QIE_CUDA
#define TRAIN_DEFAULT_DEVICE "cuda"
#else
#define TRAIN_DEFAULT_DEVICE "cpu"
#endif

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    TrainConfig c;
    memset(&c, 0, sizeof c);
    c.seed = -1;
    c.max_train_steps = -1;
    c.checkpoints_total_limit = -1;
    c.stop_after_steps = -1;
    c.world = 1;
    const char *train_mode = NULL, *lr_scheduler = NULL, *weighting = NULL, *mixed = NULL, *report_to = NULL,
               *log_level = NULL;
    int use_came = 0, use_8bit_adam = 0, use_ema = 0, final_save = 1;
    DistFlags df = {0};
    df.zero_stage = -1;
    const char *init_weights = NULL;
    CliStrs val_prompts = {0}, val_images = {0}, fix_size = {0};
    const CliOpt opts[] = {
        /* qie */
        {"in", CLI_STR, &c.in_url, NULL, "the training data: lmdb://CACHE[?expect=K=V] or a record stream (-, FILE, tcp://)", 0, 0},
        {"device", CLI_STR, &c.device, TRAIN_DEFAULT_DEVICE, "cpu (fp32 reference) or cuda[:N] (bf16 compute)", 0, 0},
        {"text_drop_ratio", CLI_FLOAT, &c.text_drop_ratio, "0.1", "caption dropout: probability of the cached empty-prompt embedding", 0, 1},
        {"max_shard_size", CLI_STR, &c.max_shard_size, "10GB", "shard size of saved safetensors (diffusers syntax)", 0, 0},
        {"draws", CLI_STR, &c.draws_path, NULL, "replay every random draw from this safetensors file (golden tests)", 0, 0},
        {"stop_after_steps", CLI_INT, &c.stop_after_steps, NULL, "leave after N steps of this run, with a checkpoint (time-limited jobs; resume later)", 1, 1e15},
        {"progress", CLI_BOOL, &c.progress, "true", "progress line (terminal) or JSON progress lines on stderr", 0, 0},
        {"log_level", CLI_STR, &log_level, "info", "debug|info|warn|error|quiet", 0, 0},
        {"distributed", CLI_STR, &df.distributed, "auto", "auto|none|ddp|zero2|zero3|fsdp (fsdp = zero3); auto: ddp with several processes, or what --use_deepspeed/--use_fsdp say", 0, 0},
        {"param_residency", CLI_STR, &df.param_residency, "auto", "full: a resident bf16 copy of the weights; block: made per block from the fp32 master (zero3; on one process it selects zero3); auto: block on one GPU, else full", 0, 0},
        {"gradient_dtype", CLI_STR, &df.gradient_dtype, "auto", "the step's gradient with --param_residency block on one process: bf16 (the reference's own bf16 weight gradients under autocast; 2 B/param less), fp32, or auto (bf16 when --gradient_accumulation_steps is 1)", 0, 0},
        {"init_weights", CLI_STR, &init_weights, NULL, "random: seeded random weights instead of loading them (benchmarks; needs only config.json)", 0, 0},
        {"final_save", CLI_BOOL, &final_save, "true", "write the final checkpoint and OUTPUT_DIR/transformer (false: benchmarks)", 0, 0},
        /* the reference's flags that qie-train implements */
        {"pretrained_model_name_or_path", CLI_STR, &c.model, NULL, "model root (with transformer/) or a transformer folder", 0, 0},
        {"transformer_path", CLI_STR, &c.transformer_path, NULL, "safetensors file or folder whose weights replace the model's", 0, 0},
        {"output_dir", CLI_STR, &c.output_dir, "sd-model-finetuned", "checkpoints, logs and final weights", 0, 0},
        {"seed", CLI_INT, &c.seed, NULL, "master seed (absent: one is drawn, logged and stored in checkpoints)", 0, 4294967295.0},
        {"train_batch_size", CLI_INT, &c.train_batch_size, "1", "samples per micro-batch (one bucket each)", 1, 4096},
        {"num_train_epochs", CLI_INT, &c.num_train_epochs, "100", "epochs, unless --max_train_steps", 1, 1e9},
        {"max_train_steps", CLI_INT, &c.max_train_steps, NULL, "optimizer steps (overrides the epochs)", 0, 1e15},
        {"gradient_accumulation_steps", CLI_INT, &c.gradient_accumulation_steps, "1", "micro-batches per optimizer step", 1, 1e6},
        {"gradient_checkpointing", CLI_BOOL, &c.gradient_checkpointing, "false", "recompute each DiT block in the backward", 0, 0},
        {"recompute_attention", CLI_BOOL, &c.recompute_attention, "false", "with --gradient_checkpointing: recompute the attention too (false keeps each block's attention output, 2·S·D bytes per layer, and skips it in the recompute)", 0, 0},
        {"learning_rate", CLI_FLOAT, &c.learning_rate, "1e-4", "lr of the trainable_modules group", 0, 1e3},
        {"scale_lr", CLI_BOOL, &c.scale_lr, "false", "lr *= accumulation * batch * processes", 0, 0},
        {"lr_scheduler", CLI_STR, &lr_scheduler, "constant", "constant|constant_with_warmup|linear|cosine|cosine_with_restarts|polynomial", 0, 0},
        {"lr_warmup_steps", CLI_INT, &c.lr_warmup_steps, "500", "warmup in optimizer steps (update 1 uses lr 0)", 0, 1e15},
        {"adam_beta1", CLI_FLOAT, &c.adam_beta1, "0.9", "AdamW beta1", 0, 1},
        {"adam_beta2", CLI_FLOAT, &c.adam_beta2, "0.999", "AdamW beta2", 0, 1},
        {"adam_weight_decay", CLI_FLOAT, &c.adam_weight_decay, "1e-2", "decoupled weight decay (all parameters)", 0, 1e3},
        {"adam_epsilon", CLI_FLOAT, &c.adam_epsilon, "1e-08", "AdamW epsilon", 0, 1},
        {"max_grad_norm", CLI_FLOAT, &c.max_grad_norm, "1.0", "clipping threshold after the decay (<= 0: no clipping)", -1, 1e9},
        {"abnormal_norm_clip_start", CLI_INT, &c.abnormal_norm_clip_start, "1000", "steps of the threshold decay; after them a norm > 5x the threshold shrinks it", 0, 1e15},
        {"initial_grad_norm_ratio", CLI_INT, &c.initial_grad_norm_ratio, "5", "the threshold starts at ratio * max_grad_norm (1: fixed clipping)", 1, 1e6},
        {"trainable_modules", CLI_STRS, &c.trainable_modules, NULL, "substrings of trainable parameter names (absent: all)", 0, 0},
        {"trainable_modules_low_learning_rate", CLI_STRS, &c.trainable_modules_low_learning_rate, NULL, "substrings trained at learning_rate / 2", 0, 0},
        {"mixed_precision", CLI_STR, &mixed, NULL, "no|fp16|bf16: the backend decides (CPU fp32, CUDA bf16); fp16 is refused", 0, 0},
        {"train_mode", CLI_STR, &train_mode, "qwen_image_edit", "qwen_image_edit (one source) or qwen_image_edit_plus", 0, 0},
        {"uniform_sampling", CLI_BOOL, &c.uniform_sampling, "false", "stratified uniform timestep index over each step's samples", 0, 0},
        {"train_sampling_steps", CLI_INT, &c.train_sampling_steps, "1000", "length of the sigma grid", 2, 100000},
        {"weighting_scheme", CLI_STR, &weighting, "none", "none|sigma_sqrt|logit_normal|mode|cosmap", 0, 0},
        {"logit_mean", CLI_FLOAT, &c.logit_mean, "0.0", "logit_normal mean", -1e3, 1e3},
        {"logit_std", CLI_FLOAT, &c.logit_std, "1.0", "logit_normal std", 0, 1e3},
        {"mode_scale", CLI_FLOAT, &c.mode_scale, "1.29", "mode density scale", -1e3, 1e3},
        {"checkpointing_steps", CLI_INT, &c.checkpointing_steps, "500", "save OUTPUT_DIR/checkpoint-N every N steps (0: only at the end)", 0, 1e15},
        {"checkpoints_total_limit", CLI_INT, &c.checkpoints_total_limit, NULL, "keep at most this many checkpoints", 1, 1e9},
        {"resume_from_checkpoint", CLI_STR, &c.resume_from_checkpoint, NULL, "latest, a checkpoint folder, or a name in output_dir", 0, 0},
        {"logging_dir", CLI_STR, &c.logging_dir, "logs", "TensorBoard and metrics.jsonl folder, inside output_dir", 0, 0},
        {"report_to", CLI_STR, &report_to, "tensorboard", "tensorboard or none", 0, 0},
        {"tracker_project_name", CLI_STR, &c.tracker_project_name, "text2image-fine-tune", "TensorBoard run folder", 0, 0},
        {"report_model_info", CLI_BOOL, &c.report_model_info, "false", "also log gradients/norm_sum and gradients/actual_max_grad_norm", 0, 0},
        {"use_came", CLI_BOOL, &use_came, "false", "CAME optimizer: not supported by qie (refused)", 0, 0},
        {"use_8bit_adam", CLI_BOOL, &use_8bit_adam, "false", "8-bit AdamW: not supported by qie (refused)", 0, 0},
        {"use_ema", CLI_BOOL, &use_ema, "false", "EMA of the transformer: not supported by qie yet (refused)", 0, 0},
        /* the reference's flags that belong to other stages or do nothing: accepted, reported */
        {"validation_prompts", CLI_STRS, &val_prompts, NULL, "ignored: validation is not part of qie-train", 0, 0},
        {"validation_image_paths", CLI_STRS, &val_images, NULL, "ignored: validation is not part of qie-train", 0, 0},
        {"fix_sample_size", CLI_STRS, &fix_size, NULL, "ignored: a qie-decode option", 0, 0},
        {"validation_epochs", CLI_IGNORED, NULL, NULL, "validation is not part of qie-train", 0, 0},
        {"validation_steps", CLI_IGNORED, NULL, NULL, "validation is not part of qie-train", 0, 0},
        {"train_data_dir", CLI_IGNORED, NULL, NULL, "qie-decode reads the data; the trainer reads --in", 0, 0},
        {"train_data_meta", CLI_IGNORED, NULL, NULL, "qie-decode reads the metadata", 0, 0},
        {"image_sample_size", CLI_IGNORED, NULL, NULL, "a qie-decode option", 0, 0},
        {"random_ratio_crop", CLI_IGNORED_FLAG, NULL, NULL, "a qie-decode option", 0, 0},
        {"random_hw_adapt", CLI_IGNORED_FLAG, NULL, NULL, "a qie-decode option", 0, 0},
        {"enable_bucket", CLI_IGNORED_FLAG, NULL, NULL, "the cache is always bucketed", 0, 0},
        {"vae_mini_batch", CLI_IGNORED, NULL, NULL, "the VAE runs in the encoder stage", 0, 0},
        {"vae_path", CLI_IGNORED, NULL, NULL, "the VAE runs in the encoder stage", 0, 0},
        {"multi_stream", CLI_IGNORED_FLAG, NULL, NULL, "the VAE runs in the encoder stage", 0, 0},
        {"low_vram", CLI_IGNORED_FLAG, NULL, NULL, "the VAE and text encoder run in other stages", 0, 0},
        {"enable_text_encoder_in_dataloader", CLI_IGNORED_FLAG, NULL, NULL, "the text encoder runs in its own stage", 0, 0},
        {"dataloader_num_workers", CLI_IGNORED, NULL, NULL, "the cache needs no loader workers", 0, 0},
        {"allow_tf32", CLI_IGNORED_FLAG, NULL, NULL, "no fp32 GEMMs on CUDA (bf16 compute)", 0, 0},
        /* accelerate's launcher flags: the strategy (dist.c), the rest accepted */
        {"use_deepspeed", CLI_BOOL, &df.use_deepspeed, "false", "DeepSpeed ZeRO: the stage comes from --deepspeed_config_file (or --zero_stage)", 0, 0},
        {"deepspeed_config_file", CLI_STR, &df.deepspeed_config_file, NULL, "DeepSpeed JSON: zero_optimization.stage, batch keys (\"auto\" = the trainer's)", 0, 0},
        {"zero_stage", CLI_INT, &df.zero_stage, NULL, "DeepSpeed ZeRO stage 0..3 (overrides the config's)", 0, 3},
        {"use_fsdp", CLI_BOOL, &df.use_fsdp, "false", "FSDP: --fsdp_sharding_strategy FULL_SHARD (= zero3, default) or SHARD_GRAD_OP (= zero2)", 0, 0},
        {"fsdp_sharding_strategy", CLI_STR, &df.fsdp_sharding_strategy, NULL, "FULL_SHARD|SHARD_GRAD_OP|NO_SHARD (or 1|2|3)", 0, 0},
        {"fsdp_transformer_layer_cls_to_wrap", CLI_STR, &df.fsdp_layer_cls, NULL, "accepted: qie shards per QwenImageTransformerBlock", 0, 0},
        {"fsdp_auto_wrap_policy", CLI_IGNORED, NULL, NULL, "qie shards per transformer block", 0, 0},
        {"fsdp_state_dict_type", CLI_IGNORED, NULL, NULL, "qie writes sharded checkpoints plus transformer/", 0, 0},
        {"fsdp_backward_prefetch", CLI_IGNORED, NULL, NULL, "qie always prefetches the next block", 0, 0},
        {"fsdp_forward_prefetch", CLI_IGNORED, NULL, NULL, "qie always prefetches the next block", 0, 0},
        {"fsdp_cpu_ram_efficient_loading", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"fsdp_offload_params", CLI_IGNORED, NULL, NULL, "no offload", 0, 0},
        {"fsdp_use_orig_params", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"fsdp_sync_module_states", CLI_IGNORED, NULL, NULL, "every rank loads the same weights", 0, 0},
        {"zero3_save_16bit_model", CLI_IGNORED, NULL, NULL, "qie always writes transformer/ in every checkpoint", 0, 0},
        {"zero3_init_flag", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"deepspeed_multinode_launcher", CLI_IGNORED, NULL, NULL, "qie-launch / srun / mpirun start the ranks", 0, 0},
        {"gradient_clipping", CLI_IGNORED, NULL, NULL, "qie clips with --max_grad_norm's rule on every backend", 0, 0},
        {"hub_token", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"revision", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"variant", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"max_train_samples", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"cache_dir", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"random_flip", CLI_IGNORED_FLAG, NULL, NULL, "the reference never flips", 0, 0},
        {"non_ema_revision", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"push_to_hub", CLI_IGNORED_FLAG, NULL, NULL, NULL, 0, 0},
        {"hub_model_id", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"prediction_type", CLI_IGNORED, NULL, NULL, "always flow velocity", 0, 0},
        {"local_rank", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"noise_offset", CLI_IGNORED, NULL, NULL, "no effect in the reference", 0, 0},
        {"input_perturbation", CLI_IGNORED, NULL, NULL, "no effect in the reference", 0, 0},
        {"snr_loss", CLI_IGNORED_FLAG, NULL, NULL, "no effect in the reference", 0, 0},
        {"config_path", CLI_IGNORED, NULL, NULL, NULL, 0, 0},
        {"tokenizer_max_length", CLI_IGNORED, NULL, NULL, "the text encoder runs in its own stage", 0, 0},
    };
    const CliSpec spec = {"qie-train", "--pretrained_model_name_or_path DIR --in lmdb://CACHE [options]",
                          "Fine-tunes the Qwen-Image-Edit transformer (flow matching, AdamW with fp32 master weights)\n"
                          "from cached VAE latents and text embeddings. Checkpoints go to OUTPUT_DIR/checkpoint-N,\n"
                          "the final weights to OUTPUT_DIR/transformer (diffusers layout). See docs/train.md.",
                          opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("train");
    int rc = cli_parse(err, &spec, argc, argv, NULL, NULL);
    if (rc == 1) return 0;
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    LogLevel lv;
    if (log_parse_level(log_level, &lv)) {
        log_error("--log_level: '%s' is not debug|info|warn|error|quiet", log_level);
        return 2;
    }
    log_set_level(lv);
    if (val_prompts.n || val_images.n || fix_size.n)
        log_warn("--validation_prompts / --validation_image_paths / --fix_sample_size are accepted for compatibility "
                 "and ignored by qie-train");
    const char *bad = NULL;
    if (!c.model) bad = "--pretrained_model_name_or_path is required";
    else if (!c.in_url) bad = "--in is required (lmdb://CACHE or a record stream)\nhint: build the cache with qie-cache";
    else if (use_came || use_8bit_adam || use_ema)
        bad = "--use_came, --use_8bit_adam and --use_ema are not supported (qie trains with AdamW, fp32 states)";
    if (bad) {
        log_error("%s", bad);
        return 2;
    }
    if (!strcmp(train_mode, "qwen_image_edit")) c.plus = 0;
    else if (!strcmp(train_mode, "qwen_image_edit_plus")) c.plus = 1;
    else {
        log_warn("--train_mode %s: treated as qwen_image_edit_plus (as the reference does)", train_mode);
        c.plus = 1;
    }
    if (sch_parse_lr(lr_scheduler, &c.lr_scheduler)) {
        log_error("--lr_scheduler %s: not one of constant, constant_with_warmup, linear, cosine, cosine_with_restarts, "
                  "polynomial%s", lr_scheduler, !strcmp(lr_scheduler, "piecewise_constant") ? " (piecewise_constant "
                  "needs step rules the reference cannot pass)" : "");
        return 2;
    }
    if (sch_parse_weighting(weighting, &c.weighting_scheme)) {
        log_error("--weighting_scheme %s: not one of none, sigma_sqrt, logit_normal, mode, cosmap", weighting);
        return 2;
    }
    int cuda = !strncmp(c.device, "cuda", 4);
    if (mixed && !strcmp(mixed, "fp16")) {
        log_error("--mixed_precision fp16 is not supported (bf16 on CUDA, fp32 on the CPU)");
        return 2;
    }
    if (mixed && strcmp(mixed, "no") && strcmp(mixed, "bf16")) {
        log_error("--mixed_precision %s: not one of no, fp16, bf16", mixed);
        return 2;
    }
    if (mixed && cuda && !strcmp(mixed, "no")) {
        log_error("--mixed_precision no: the CUDA backend computes in bf16 (with fp32 master weights)\n"
                  "hint: --device cpu is the fp32 reference");
        return 2;
    }
    if (mixed && !cuda && !strcmp(mixed, "bf16"))
        log_info("--mixed_precision bf16: the CPU backend computes in fp32 (master weights and states are fp32 everywhere)");
    if (strcmp(report_to, "tensorboard") && strcmp(report_to, "none") && strcmp(report_to, "all")) {
        log_warn("--report_to %s: qie writes TensorBoard files and metrics.jsonl only; using tensorboard", report_to);
    }
    c.report_tensorboard = strcmp(report_to, "none") != 0;
    c.skip_final_save = !final_save;
    if (init_weights && strcmp(init_weights, "random")) {
        log_error("--init_weights %s: only random is known", init_weights);
        return 2;
    }
    c.init_weights = init_weights;
    /* who am I: torchrun / qie-launch, Slurm, Open MPI, PMI variables (dist_env.h) */
    DistEnv de;
    if (dist_env_parse(err, &de)) {
        log_error("%s", err);
        return 2;
    }
    c.world = de.world;
    c.rank = de.rank;
    c.local_rank = de.local_rank;
    c.master_addr = de.master_addr;
    c.master_port = de.master_port;
    c.rdzv_timeout_s = de.rdzv_timeout_s;
    c.coll_timeout_s = de.coll_timeout_s;
    log_set_rank(de.world > 1 ? de.rank : -1);
    if (dst_resolve(err, &df, &c)) {
        log_error("%s", err);
        return 2;
    }
    if (de.rank == 0) cli_dump(&spec);
    if (c.strategy != TS_NONE)
        log_info0("distributed: %s (%s), %d process(es) from %s", dst_strategy_name(c.strategy), c.strategy_name, c.world,
                  dist_source_name(de.source));
    rc = train_run(err, &c);
    if (rc == TRAIN_ENONFINITE) {
        log_error("%s", err);
        return 3;
    }
    if (rc == QIE_EPEER || rc == QIE_ETIMEOUT) { /* another rank failed: docs/distributed.md, exit 86 */
        log_error("%s", err);
        return RDZV_EXIT_PEER;
    }
    if (rc) {
        log_error("%s", err);
        return 1;
    }
    return 0;
}
