/* qie-encode-vae: records in, records out with the VAE posterior of the target and of every
 * source image added (encode_vae.h has the record contract; docs/vae.md the usage). main only
 * parses, opens the model and the endpoints, runs enc_run and maps its result to an exit code. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "encode_vae.h"
#include "endpoint.h"
#include "err.h"
#include "log.h"
#include "ops.h"
#include "progress.h"
#include "vae.h"

int main(int argc, char **argv) {
    char err[QIE_ERR_LEN] = "";
    const char *model = NULL, *in_url = NULL, *out_url = NULL, *device = NULL, *dtype = NULL;
    LogLevel lv = LOG_INFO;
    int64_t mini_batch = 1;
    int keep_pixels = 0, progress = 1;
    const CliOpt opts[] = {
        {"model", CLI_STR, &model, NULL, "model folder holding vae/ (diffusers layout), or the vae folder itself", 0, 0},
        {"device", CLI_STR, &device, "cpu", "cpu, cuda or cuda:N (one process per GPU)", 0, 0},
        {"vae_mini_batch", CLI_INT, &mini_batch, "1", "images of one size per encoder call (also records read ahead)", 1, 1024},
        {"keep_pixels", CLI_BOOL, &keep_pixels, "false", "keep target_pixels / source_pixels.k in the output records", 0, 0},
        {"posterior_dtype", CLI_STR, &dtype, "bf16", "dtype of the mean/logvar tensors: bf16 (what the bf16 reference samples from) or f32", 0, 0},
        CLI_ENCODER_ROWS(&in_url, &out_url, &progress, &lv),
    };
    const CliSpec spec = {
        "qie-encode-vae", "--model DIR [--in URL] [--out URL] [--device cpu|cuda[:N]] [--vae_mini_batch N]",
        "Encodes each record's target_pixels and source_pixels.k with the Qwen-Image VAE encoder and\n"
        "adds target_mean/target_logvar and source_mean.k/source_logvar.k ([16,1,H/8,W/8]); the\n"
        "pixels are dropped unless --keep_pixels. Bad records are reported, counted and skipped.\n"
        "Several GPUs: one process per GPU, all reading one producer bound with ?peers=N:\n"
        "  qie-decode ... --out '@tcp://0.0.0.0:5555?peers=2'\n"
        "  qie-encode-vae --device cuda:0 --in '>tcp://host:5555' ...   (and cuda:1)",
        opts, (int)(sizeof opts / sizeof *opts), 0};
    log_init("encode-vae");
    int rc = cli_parse(err, &spec, argc, argv, NULL, NULL);
    if (rc == 1) return 0;
    EncOptions o = {(int)mini_batch, keep_pixels, QIE_DT_BF16, NULL};
    if (!rc && !strcmp(dtype, "f32")) o.out_dtype = QIE_DT_F32;
    else if (!rc && strcmp(dtype, "bf16")) {
        qie_seterr(err, "--posterior_dtype '%s': expected bf16 or f32", dtype);
        rc = QIE_EINVAL;
    }
    if (!rc && !model) {
        qie_seterr(err, "--model DIR is required (a diffusers model folder with vae/)");
        rc = QIE_EINVAL;
    }
    if (rc) {
        log_error("%s", err);
        return 2;
    }
    cli_dump(&spec);

    OpCtx ctx;
    VaeModel *m = NULL;
    Endpoint *in = NULL, *out = NULL;
    Progress prog;
    EncStats st = {0};
    int ctx_ok = 0;
    if ((rc = opctx_init(err, &ctx, device))) goto fail;
    ctx_ok = 1;
    if ((rc = vae_load(err, &ctx, model, &m))) goto fail;
    log_info("vae: %zu parameters on %s, weights hash %s", vae_param_count(m), device, vae_weights_hash(m));
    if ((rc = ep_open(err, in_url, EP_READ, &in))) goto fail;
    if ((rc = ep_open(err, out_url, EP_WRITE, &out))) goto fail;
    progress_init(&prog, "encode-vae", 0, progress && lv <= LOG_INFO);
    o.progress = &prog;
    rc = enc_run(err, &o, m, in, out, &st);
    progress_end(&prog);
    if (rc) goto fail;
    if ((rc = ep_finish(err, out, 1, NULL))) goto fail;
    log_info("%llu records in, %llu out, %llu rejected, %llu images encoded", (unsigned long long)st.records_in,
             (unsigned long long)st.records_out, (unsigned long long)st.rejected, (unsigned long long)st.images);
    ep_close(&out);
    ep_close(&in);
    vae_destroy(&m);
    opctx_free(&ctx);
    return 0;
fail:
    log_error("%s", err);
    if (out) ep_finish(err, out, 0, "qie-encode-vae failed");
    ep_close(&out);
    ep_close(&in);
    vae_destroy(&m);
    if (ctx_ok) opctx_free(&ctx);
    return 1;
}
