/* qie-init: writes a randomly initialised Qwen-Image-Edit model in the diffusers layout, so that
 * tests, the demo and first runs need no download (init_model.h has the layout and the init rule).
 * main only parses, resolves the config and maps the result to an exit status: 0 written, 1 error,
 * 2 bad usage. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "err.h"
#include "init_model.h"
#include "log.h"

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    const char *out = NULL, *config = NULL, *variant = NULL, *dtype_s = NULL, *shard = NULL, *log_level = NULL;
    int64_t seed = 0;
    double std = 0.02;
    int overwrite = 0;
    const CliOpt opts[] = {
        {"out", CLI_STR, &out, NULL, "model folder to write (diffusers layout)", 0, 0},
        {"config", CLI_STR, &config, "tiny", "tiny (model.md §5 dit-tiny + vae-tiny + te-tiny, small BPE), real (released shapes, ~28 G params) or a JSON file {base, variant, transformer, vae, text_encoder}", 0, 0},
        {"variant", CLI_STR, &variant, "edit", "edit (QwenImageEditPipeline) | edit-2509 | edit-2511 (QwenImageEditPlusPipeline; 2511: zero_cond_t)", 0, 0},
        {"seed", CLI_INT, &seed, "0", "seed of every weight (the model is a pure function of config, seed, dtype)", 0, 9.2e18},
        {"std", CLI_FLOAT, &std, "0.02", "std of the normal weights (biases 0, norm gains 1)", 0, 10},
        {"dtype", CLI_STR, &dtype_s, "bf16", "bf16 (the released dtype) or f32", 0, 0},
        {"max_shard_size", CLI_STR, &shard, "10GB", "shard size of the transformer and text encoder files (diffusers syntax)", 0, 0},
        {"overwrite", CLI_BOOL, &overwrite, "false", "replace a model already in --out", 0, 0},
        {"log_level", CLI_STR, &log_level, "info", "debug|info|warn|error|quiet", 0, 0},
    };
    const CliSpec spec = {
        "qie-init", "--out DIR [--config tiny|real|FILE] [--variant edit|edit-2509|edit-2511] [--seed N]",
        "Writes a randomly initialised Qwen-Image-Edit model (model_index.json, transformer/, vae/,\n"
        "text_encoder/, tokenizer/, processor/, scheduler/) that qie's loaders and diffusers'\n"
        "from_pretrained both load. Deterministic from --seed.",
        opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("init");
    int rc = cli_parse(err, &spec, argc, argv, NULL, NULL);
    if (rc == 1) return 0;
    LogLevel lv = LOG_INFO;
    if (!rc && log_parse_level(log_level, &lv)) {
        qie_seterr(err, "--log_level: '%s' is not debug|info|warn|error|quiet", log_level);
        rc = QIE_EINVAL;
    }
    InitOptions o = {(uint64_t)seed, std, QIE_DT_BF16, shard};
    if (!rc && !strcmp(dtype_s, "f32")) o.dtype = QIE_DT_F32;
    else if (!rc && strcmp(dtype_s, "bf16")) {
        qie_seterr(err, "--dtype '%s': bf16 or f32", dtype_s);
        rc = QIE_EINVAL;
    }
    if (!rc && !out) {
        qie_seterr(err, "--out DIR is required");
        rc = QIE_EINVAL;
    }
    InitConfig c;
    InitVariant var = INIT_EDIT;
    if (!rc && init_variant_parse(variant, &var)) {
        qie_seterr(err, "--variant '%s': edit, edit-2509 or edit-2511", variant);
        rc = QIE_EINVAL;
    }
    if (!rc) {
        rc = strcmp(config, "tiny") && strcmp(config, "real") ? init_config_file(err, config, &c)
                                                               : init_config_preset(err, config, &c);
        /* --variant applies unless the config file names one */
        if (!rc && (!strcmp(config, "tiny") || !strcmp(config, "real") || c.variant == INIT_EDIT)) {
            c.variant = var;
            if (var == INIT_EDIT_2511) c.dit.zero_cond_t = 1;
        }
    }
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    log_set_level(lv);
    cli_dump(&spec);
    InitCounts n;
    if ((rc = init_count(err, &c, &n))) goto fail;
    log_info("%s: transformer %llu, vae %llu, text encoder %llu parameters", config, (unsigned long long)n.transformer,
             (unsigned long long)n.vae, (unsigned long long)n.text_encoder);
    if ((rc = init_write_model(err, &c, &o, out, overwrite))) goto fail;
    static const char *const vnames[] = {"edit", "edit-2509", "edit-2511"};
    fprintf(stderr, "qie-init: wrote %s (%s, %s, seed %lld)\n", out, config, vnames[c.variant], (long long)seed);
    return 0;
fail:
    log_error("%s", err);
    return 1;
}
