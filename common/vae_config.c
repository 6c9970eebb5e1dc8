/* vae_config.c: VaeConfig from a diffusers config.json (AutoencoderKLQwenImage.__init__'s keys,
 * spec/model.md §2.1). Missing keys take the upstream defaults, as register_to_config does. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsutil.h"
#include "err.h"
#include "vae.h"

static const float latents_mean_[16] = {-0.7571f, -0.7089f, -0.9113f, 0.1075f, -0.1745f, 0.9653f, -0.1517f, 1.5508f,
                                        0.4134f,  -0.0715f, 0.5517f,  -0.3632f, -0.1922f, -0.9497f, 0.2503f, -0.2921f};
static const float latents_std_[16] = {2.8184f, 1.4541f, 2.3275f, 2.6558f, 1.2196f, 1.7708f, 2.6052f, 2.0743f,
                                       3.2687f, 2.1526f, 2.8652f, 1.5579f, 1.6382f, 1.1253f, 2.8251f, 1.9160f};

void vae_config_default(VaeConfig *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->base_dim = 96;
    cfg->z_dim = 16;
    cfg->ndim_mult = 4;
    const int mult[4] = {1, 2, 4, 4};
    memcpy(cfg->dim_mult, mult, sizeof mult);
    cfg->num_res_blocks = 2;
    cfg->temperal_downsample[0] = 0;
    cfg->temperal_downsample[1] = 1;
    cfg->temperal_downsample[2] = 1;
    cfg->input_channels = 3;
    memcpy(cfg->latents_mean, latents_mean_, sizeof latents_mean_);
    memcpy(cfg->latents_std, latents_std_, sizeof latents_std_);
}

int vae_config_factor(const VaeConfig *cfg) { return 1 << (cfg->ndim_mult - 1); }

/* an integer-valued number in [lo, hi] */
static int get_int_(const cJSON *j, int lo, int hi, int *out) {
    if (!cJSON_IsNumber(j)) return -1;
    double v = j->valuedouble;
    if (v != (double)(int)v || v < lo || v > hi) return -1;
    *out = (int)v;
    return 0;
}

int vae_config_load(char *err, const char *path, VaeConfig *cfg) {
    char *text = NULL;
    size_t len = 0;
    int rc = fs_read_file(err, path, (size_t)1 << 20, &text, &len); /* a config.json, not a weights file */
    if (rc) return rc;
    vae_config_default(cfg);
    const char *bad = NULL;
    cJSON *root = cJSON_ParseWithLength(text, len);
    free(text);
    if (!cJSON_IsObject(root)) {
        qie_seterr(err, "%s: not a JSON object", path);
        cJSON_Delete(root);
        return QIE_EFORMAT;
    }
    const cJSON *j;
    if ((j = cJSON_GetObjectItemCaseSensitive(root, "base_dim")) && get_int_(j, 1, 4096, &cfg->base_dim)) bad = "base_dim";
    if ((j = cJSON_GetObjectItemCaseSensitive(root, "z_dim")) && get_int_(j, 1, VAE_MAX_Z, &cfg->z_dim)) bad = "z_dim";
    if ((j = cJSON_GetObjectItemCaseSensitive(root, "num_res_blocks")) && get_int_(j, 1, 8, &cfg->num_res_blocks))
        bad = "num_res_blocks";
    if ((j = cJSON_GetObjectItemCaseSensitive(root, "input_channels")) && get_int_(j, 1, 1 << 20, &cfg->input_channels))
        bad = "input_channels";
    if ((j = cJSON_GetObjectItemCaseSensitive(root, "dim_mult"))) {
        int n = cJSON_GetArraySize(j);
        if (!cJSON_IsArray(j) || n < 1 || n > VAE_MAX_LEVELS) bad = "dim_mult";
        else {
            cfg->ndim_mult = n;
            for (int i = 0; i < n; i++)
                if (get_int_(cJSON_GetArrayItem(j, i), 1, 64, &cfg->dim_mult[i])) bad = "dim_mult";
        }
    }
    if ((j = cJSON_GetObjectItemCaseSensitive(root, "temperal_downsample"))) {
        int n = cJSON_GetArraySize(j);
        if (!cJSON_IsArray(j) || n != cfg->ndim_mult - 1) bad = "temperal_downsample (needs len(dim_mult) - 1 booleans)";
        else
            for (int i = 0; i < n; i++) {
                const cJSON *b = cJSON_GetArrayItem(j, i);
                if (!cJSON_IsBool(b)) bad = "temperal_downsample";
                else cfg->temperal_downsample[i] = cJSON_IsTrue(b);
            }
    }
    const char *stats[2] = {"latents_mean", "latents_std"};
    float *dst[2] = {cfg->latents_mean, cfg->latents_std};
    for (int s = 0; s < 2; s++) {
        j = cJSON_GetObjectItemCaseSensitive(root, stats[s]);
        if (!j || cJSON_IsNull(j)) { /* none: identity normalisation */
            for (int i = 0; i < VAE_MAX_Z; i++) dst[s][i] = s ? 1.0f : 0.0f;
            continue;
        }
        if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) != cfg->z_dim) { bad = stats[s]; continue; }
        for (int i = 0; i < cfg->z_dim; i++) {
            const cJSON *v = cJSON_GetArrayItem(j, i);
            if (!cJSON_IsNumber(v) || (s && v->valuedouble == 0)) bad = stats[s];
            else dst[s][i] = (float)v->valuedouble;
        }
    }
    rc = 0;
    if (bad) {
        qie_seterr(err, "%s: bad or out-of-range '%s'", path, bad);
        rc = QIE_EFORMAT;
    } else if ((j = cJSON_GetObjectItemCaseSensitive(root, "attn_scales")) &&
               !(cJSON_IsArray(j) && cJSON_GetArraySize(j) == 0)) {
        qie_seterr(err, "%s: attn_scales other than [] (attention inside the down blocks) is not supported", path);
        rc = QIE_EUNSUPPORTED;
    } else if (cfg->input_channels > VAE_CIN_PAD) {
        qie_seterr(err, "%s: input_channels %d: at most %d are supported", path, cfg->input_channels, VAE_CIN_PAD);
        rc = QIE_EUNSUPPORTED;
    }
    if (!rc && (j = cJSON_GetObjectItemCaseSensitive(root, "_class_name")) && cJSON_IsString(j) &&
        strcmp(j->valuestring, "AutoencoderKLQwenImage")) {
        qie_seterr(err, "%s: _class_name is %s, not AutoencoderKLQwenImage", path, j->valuestring);
        rc = QIE_EUNSUPPORTED;
    }
    cJSON_Delete(root);
    return rc;
}
