/* qie-encode-text: records in, records out with the Qwen2.5-VL prompt embeddings added
 * (encode_text.h has the record contract; docs/text-encoder.md the usage). main only parses,
 * opens the model and the endpoints, runs te_run and maps its result to an exit code. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "encode_text.h"
#include "endpoint.h"
#include "err.h"
#include "log.h"
#include "ops.h"
#include "progress.h"
#include "qwenvl.h"

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    const char *model = NULL, *in_url = NULL, *out_url = NULL, *device = NULL, *mode_s = NULL;
    LogLevel lv = LOG_INFO;
    double drop = 0.0;
    int64_t max_tokens = 16384, window = 64, prep_threads = 8;
    int keep_cond = 0, progress = 1;
    const CliOpt opts[] = {
        {"model", CLI_STR, &model, NULL, "model folder holding text_encoder/, tokenizer/, processor/ (diffusers layout)", 0, 0},
        {"train_mode", CLI_STR, &mode_s, "qwen_image_edit_plus", "qwen_image_edit (one source, VAE-size image) or qwen_image_edit_plus (source_cond.k)", 0, 0},
        {"device", CLI_STR, &device, "cpu", "cpu (fp32 reference), cuda or cuda:N (bf16; one process per GPU)", 0, 0},
        {"text_drop_ratio", CLI_FLOAT, &drop, "0", "> 0: also store prompt_embeds_empty (the empty prompt with the same images)", 0, 1},
        {"max_batch_tokens", CLI_INT, &max_tokens, "16384", "LLM tokens per forward (prompts sorted by length, packed without padding)", 1, 1e9},
        {"window", CLI_INT, &window, "64", "records read ahead and batched together", 1, 1e6},
        {"keep_cond", CLI_BOOL, &keep_cond, "false", "keep source_cond.k (only the vision tower reads them)", 0, 0},
        {"prep_threads", CLI_INT, &prep_threads, "8", "CPU threads for the tokenizer and the image processor", 1, 64},
        CLI_ENCODER_ROWS(&in_url, &out_url, &progress, &lv),
    };
    const CliSpec spec = {
        "qie-encode-text", "--model DIR --train_mode MODE [--in URL] [--out URL] [--device cpu|cuda[:N]]",
        "Encodes each record's text with its own condition images through Qwen2.5-VL, as the diffusers\n"
        "Qwen-Image-Edit(-Plus) pipelines' encode_prompt does, and adds prompt_embeds (bf16 [L, 3584],\n"
        "attr prompt_len), plus prompt_embeds_empty (attr prompt_empty_len) when --text_drop_ratio > 0.\n"
        "Bad records are reported, counted and skipped. Several GPUs: one process per GPU reading one\n"
        "producer bound with ?peers=N (see qie-encode-vae --help).",
        opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("encode-text");
    int rc = cli_parse(err, &spec, argc, argv, NULL, NULL);
    if (rc == 1) return 0;
    TextEncOptions o = {QWENVL_EDIT_PLUS, drop, (int)max_tokens, (int)window, keep_cond, (int)prep_threads, NULL};
    if (!rc && qwenvl_mode_parse(mode_s, &o.mode)) {
        qie_seterr(err, "--train_mode '%s': expected qwen_image_edit or qwen_image_edit_plus", mode_s);
        rc = QIE_EINVAL;
    }
    if (!rc && !model) {
        qie_seterr(err, "--model DIR is required (a diffusers model folder with text_encoder/, tokenizer/, processor/)");
        rc = QIE_EINVAL;
    }
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    cli_dump(&spec);

    OpCtx ctx;
    QwenVL *m = NULL;
    Endpoint *in = NULL, *out = NULL;
    Progress prog;
    TextEncStats st = {0};
    int ctx_ok = 0;
    double t0 = progress_now();
    if ((rc = opctx_init(err, &ctx, device))) goto fail;
    ctx_ok = 1;
    if ((rc = qwenvl_create(err, model, &ctx, &m))) goto fail;
    log_info("text encoder: %zu parameters on %s, loaded in %.1f s", qwenvl_param_count(m), device, progress_now() - t0);
    if ((rc = ep_open(err, in_url, EP_READ, &in))) goto fail;
    if ((rc = ep_open(err, out_url, EP_WRITE, &out))) goto fail;
    progress_init(&prog, "encode-text", 0, progress && lv <= LOG_INFO);
    o.progress = &prog;
    rc = te_run(err, &o, m, in, out, &st);
    progress_end(&prog);
    if (rc) goto fail;
    if ((rc = ep_finish(err, out, 1, NULL))) goto fail;
    log_info("%llu records in, %llu out, %llu rejected; %llu prompts, %llu tokens in %llu forwards",
             (unsigned long long)st.records_in, (unsigned long long)st.records_out, (unsigned long long)st.rejected,
             (unsigned long long)st.prompts, (unsigned long long)st.tokens, (unsigned long long)st.forwards);
    ep_close(&out);
    ep_close(&in);
    qwenvl_destroy(&m);
    opctx_free(&ctx);
    return 0;
fail:
    log_error("%s", err);
    if (out) ep_finish(err, out, 0, "qie-encode-text failed");
    ep_close(&out);
    ep_close(&in);
    qwenvl_destroy(&m);
    if (ctx_ok) opctx_free(&ctx);
    return 1;
}
