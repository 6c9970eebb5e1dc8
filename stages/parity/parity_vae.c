/* parity_vae.c: qie-parity vae. Reads `pixels` (f32, or bf16, [B, 3, H, W] in [-1, 1]) from
 * --in, encodes the batch with the VAE of --model on --device, and writes to --out, all f32 with
 * diffusers' shapes (AutoencoderKLQwenImage.encode(x[:, :, None]).latent_dist):
 *   mean     [B, z, 1, H/8, W/8]
 *   logvar   [B, z, 1, H/8, W/8]   clamped to [-30, 20]
 *   latents  [B, z, 1, H/8, W/8]   (mean - latents_mean) / latents_std  (spec/model.md §2.5) */
#include <stdlib.h>
#include <string.h>

#include "err.h"
#include "log.h"
#include "ops.h"
#include "parity.h"
#include "safetensors.h"
#include "vae.h"

int parity_vae(char *err, const ParityArgs *a) {
    OpCtx ctx;
    SafeTensors *in = NULL;
    VaeModel *m = NULL;
    StWriter *w = NULL;
    float *px = NULL, *mean = NULL, *logvar = NULL, *lat = NULL;
    int rc = opctx_init(err, &ctx, a->device ? a->device : "cpu");
    if (rc) return rc;
    if ((rc = st_open(err, a->in_path, &in))) goto out;
    const StTensor *t = st_find(in, "pixels");
    if (!t || t->ndim != 4 || (t->dtype != QIE_DT_F32 && t->dtype != QIE_DT_BF16)) {
        qie_seterr(err, "%s: needs a tensor 'pixels', f32 or bf16 [B, C, H, W]", a->in_path);
        rc = QIE_EFORMAT;
        goto out;
    }
    if ((rc = vae_load(err, &ctx, a->model_dir, &m))) goto out;
    const VaeConfig *cfg = vae_config(m);
    const int B = (int)t->shape[0], C = (int)t->shape[1], H = (int)t->shape[2], W = (int)t->shape[3];
    const int f = vae_config_factor(cfg), z = cfg->z_dim;
    if (C != cfg->input_channels || t->shape[0] > 4096 || t->shape[2] > 65536 || t->shape[3] > 65536) {
        qie_seterr(err, "%s: pixels [%d,%d,%d,%d]: expected [B, %d, H, W]", a->in_path, B, C, H, W, cfg->input_channels);
        rc = QIE_EFORMAT;
        goto out;
    }
    const size_t n = t->numel, nl = (size_t)B * z * (size_t)(H / f) * (size_t)(W / f);
    px = malloc(n * sizeof(float));
    mean = malloc((nl ? nl : 1) * sizeof(float));
    logvar = malloc((nl ? nl : 1) * sizeof(float));
    lat = malloc((nl ? nl : 1) * sizeof(float));
    if (!px || !mean || !logvar || !lat) { qie_seterr(err, "parity vae: out of memory"); rc = QIE_ENOMEM; goto out; }
    for (size_t i = 0; i < n; i++) {
        if (t->dtype == QIE_DT_F32) memcpy(&px[i], (const char *)t->data + 4 * i, 4);
        else {
            uint16_t h;
            memcpy(&h, (const char *)t->data + 2 * i, 2);
            px[i] = bf16_to_f32(h);
        }
    }
    log_info("vae %s on %s: %d images of %dx%d, %zu parameters", a->model_dir, opctx_device_name(&ctx), B, W, H,
             vae_param_count(m));
    if ((rc = vae_encode(err, m, px, B, H, W, mean, logvar))) goto out;
    vae_normalize(cfg, lat, mean, B, (H / f) * (W / f));
    const uint64_t shape[5] = {(uint64_t)B, (uint64_t)z, 1, (uint64_t)(H / f), (uint64_t)(W / f)};
    if ((rc = st_writer_create(err, &w))) goto out;
    if ((rc = st_writer_add(err, w, "mean", QIE_DT_F32, 5, shape, mean, nl * sizeof(float)))) goto out;
    if ((rc = st_writer_add(err, w, "logvar", QIE_DT_F32, 5, shape, logvar, nl * sizeof(float)))) goto out;
    if ((rc = st_writer_add(err, w, "latents", QIE_DT_F32, 5, shape, lat, nl * sizeof(float)))) goto out;
    if ((rc = st_writer_set_metadata(err, w, "device", opctx_device_name(&ctx)))) goto out;
    rc = st_writer_write(err, w, a->out_path);
out:
    st_writer_destroy(&w);
    free(px);
    free(mean);
    free(logvar);
    free(lat);
    vae_destroy(&m);
    st_close(&in);
    opctx_free(&ctx);
    return rc;
}
