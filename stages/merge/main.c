/* qie-merge: the zero_to_bf16 step (trainer_behaviour.md §5.5; decisions.md "consolidated
 * weights"): a sharded qie checkpoint (ckpt_shard.h) -> a diffusers transformer folder that
 * QwenImageTransformer2DModel.from_pretrained loads: config.json, bf16 safetensors split at
 * --max_shard_size, the diffusers index. The work is ckpt_merge (common/ckpt_shard.c), which the
 * trainer can call too; this file only parses. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_shard.h"
#include "cli.h"
#include "err.h"
#include "log.h"

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    LogLevel lv = LOG_INFO;
    const char *max_shard_size = NULL, *tag = NULL;
    int exclude_frozen = 0, safe = 1, debug = 0;
    const CliOpt opts[] = {
        {"max_shard_size", CLI_STR, &max_shard_size, "80GB",
         "largest output file (bytes of bf16 tensor data; 80GB = 80·10⁹, GiB = 2³⁰)", 0, 0},
        {"safe_serialization", CLI_BOOL, &safe, "true", "accepted for compatibility: output is always safetensors", 0, 0},
        {"exclude_frozen_parameters", CLI_BOOL, &exclude_frozen, "false",
         "leave out the tensors the run did not train (marked frozen in layout.json)", 0, 0},
        {"tag", CLI_STR, &tag, NULL, "accepted for compatibility (-t): qie checkpoints have one layout, no tags", 0, 0},
        {"debug", CLI_BOOL, &debug, "false", "the same as --log_level debug (-d)", 0, 0},
        {"log_level", CLI_LOG_LEVEL, &lv, "info", "debug|info|warn|error|quiet", 0, 0},
    };
    const CliSpec spec = {
        "qie-merge", "CHECKPOINT_DIR OUTPUT_DIR [options]",
        "Turns a sharded qie checkpoint (rank-*-of-*.safetensors + layout.json + config.json, written by\n"
        "a multi-GPU qie-train) into a bf16 diffusers transformer:\n"
        "  qie-merge output/checkpoint-500 output/checkpoint-500-outputs\n"
        "  python -c 'from diffusers import QwenImageTransformer2DModel as T; "
        "T.from_pretrained(\"output/checkpoint-500-outputs\")'\n"
        "Memory: one output shard at a time. Resuming a run needs no merge (any GPU count reads the shards).",
        opts, (int)(sizeof opts / sizeof *opts), 2};
    log_init("merge");
    /* zero_to_bf16.py's short flags */
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-t")) argv[i] = "--tag";
        else if (!strcmp(argv[i], "-d")) argv[i] = "--debug";
    }
    const char *pos[2];
    int npos = 0;
    int rc = cli_parse(err, &spec, argc, argv, pos, &npos);
    if (rc == 1) return 0;
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    if (debug) log_set_level(LOG_DEBUG);
    if (npos != 2) {
        log_error("expected CHECKPOINT_DIR and OUTPUT_DIR\nhint: qie-merge output/checkpoint-N output/checkpoint-N-outputs");
        return 2;
    }
    if (tag) log_warn("--tag %s ignored: qie checkpoints have a single layout (rank files in the folder itself)", tag);
    if (!safe) log_warn("--safe_serialization false ignored: qie writes safetensors only");
    uint64_t max;
    if (st_parse_size(err, max_shard_size, &max) || max == 0) {
        log_error("--max_shard_size %s: expected a size such as 80GB, 500MB or 5GiB", max_shard_size);
        return 2;
    }
    int nshards = 0;
    rc = ckpt_merge(err, pos[0], pos[1], max_shard_size, exclude_frozen, &nshards);
    if (rc) {
        log_error("%s", err);
        return 1;
    }
    log_info("%s: %d shard%s, config.json%s", pos[1], nshards, nshards == 1 ? "" : "s",
             nshards > 1 ? ", diffusion_pytorch_model.safetensors.index.json" : "");
    return 0;
}
