/* qwenvl_config.c: text_encoder/config.json (legacy flat Qwen2.5-VL layout or transformers 5's
 * text_config / vision_config) and processor/preprocessor_config.json -> QwenVLConfig. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fsutil.h"
#include "err.h"
#include "qwenvl.h"

static int is_dir_(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* <dir>/text_encoder when it exists, else dir itself; the sibling folder `name` of it */
void qwenvl_paths_(const char *dir, char *te, size_t cap, char *tok, char *proc) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s/text_encoder", dir);
    if (is_dir_(buf)) {
        snprintf(te, cap, "%s", buf);
        snprintf(tok, cap, "%s/tokenizer", dir);
        snprintf(proc, cap, "%s/processor", dir);
    } else {
        snprintf(te, cap, "%s", dir);
        snprintf(tok, cap, "%s/../tokenizer", dir);
        snprintf(proc, cap, "%s/../processor", dir);
    }
}

static cJSON *load_json_(char *err, const char *path, int *rc) {
    char *buf = NULL;
    size_t n = 0;
    if ((*rc = fs_read_file(err, path, (size_t)16 << 20, &buf, &n))) {
        if (*rc == ENOENT) *rc = QIE_ENOTFOUND;
        return NULL;
    }
    cJSON *j = cJSON_ParseWithLength(buf, n);
    free(buf);
    if (!j) {
        *rc = QIE_EFORMAT;
        qie_seterr(err, "%s: malformed JSON", path);
    }
    return j;
}

/* key lookup in the first object that has it */
static const cJSON *get_(const cJSON *a, const cJSON *b, const char *key) {
    const cJSON *v = a ? cJSON_GetObjectItemCaseSensitive(a, key) : NULL;
    if ((!v || cJSON_IsNull(v)) && b) v = cJSON_GetObjectItemCaseSensitive(b, key);
    return v && !cJSON_IsNull(v) ? v : NULL;
}

static int get_int_(char *err, const cJSON *a, const cJSON *b, const char *key, int def, int *out, const char *path) {
    const cJSON *v = get_(a, b, key);
    if (!v) {
        if (def == INT32_MIN) {
            qie_seterr(err, "%s: missing \"%s\"", path, key);
            return QIE_EFORMAT;
        }
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v)) {
        qie_seterr(err, "%s: \"%s\" is not a number", path, key);
        return QIE_EFORMAT;
    }
    *out = v->valueint;
    return 0;
}

static double get_num_(const cJSON *a, const cJSON *b, const char *key, double def) {
    const cJSON *v = get_(a, b, key);
    return cJSON_IsNumber(v) ? v->valuedouble : def;
}

#define REQ INT32_MIN

int qwenvl_config_load(char *err, const char *dir, QwenVLConfig *c) {
    char te[4096], tokd[4096], procd[4096], path[4200];
    qwenvl_paths_(dir, te, sizeof te, tokd, procd);
    memset(c, 0, sizeof *c);
    snprintf(path, sizeof path, "%s/config.json", te);
    int rc = 0;
    cJSON *root = load_json_(err, path, &rc), *pj = NULL;
    if (!root) return rc;
    const cJSON *tc = cJSON_GetObjectItemCaseSensitive(root, "text_config");
    if (!cJSON_IsObject(tc)) tc = NULL;
    const cJSON *vc = cJSON_GetObjectItemCaseSensitive(root, "vision_config");
    if (!cJSON_IsObject(vc)) {
        qie_seterr(err, "%s: no vision_config", path);
        rc = QIE_EFORMAT;
        goto out;
    }
    if ((rc = get_int_(err, tc, root, "hidden_size", REQ, &c->hidden, path)) ||
        (rc = get_int_(err, tc, root, "num_hidden_layers", REQ, &c->layers, path)) ||
        (rc = get_int_(err, tc, root, "num_attention_heads", REQ, &c->heads, path)) ||
        (rc = get_int_(err, tc, root, "num_key_value_heads", c->heads, &c->kv_heads, path)) ||
        (rc = get_int_(err, tc, root, "intermediate_size", REQ, &c->ffn, path)) ||
        (rc = get_int_(err, tc, root, "vocab_size", REQ, &c->vocab, path)) ||
        (rc = get_int_(err, tc, root, "max_position_embeddings", 128000, &c->max_pos, path)) ||
        (rc = get_int_(err, root, tc, "image_token_id", 151655, &c->image_token_id, path)) ||
        (rc = get_int_(err, root, tc, "vision_start_token_id", 151652, &c->vision_start_id, path)) ||
        (rc = get_int_(err, root, tc, "vision_end_token_id", 151653, &c->vision_end_id, path)))
        goto out;
    if (c->heads <= 0 || c->kv_heads <= 0 || c->hidden % c->heads || c->heads % c->kv_heads) {
        qie_seterr(err, "%s: %d heads / %d KV heads do not divide hidden %d", path, c->heads, c->kv_heads, c->hidden);
        rc = QIE_EFORMAT;
        goto out;
    }
    if ((rc = get_int_(err, tc, root, "head_dim", c->hidden / c->heads, &c->head_dim, path))) goto out;
    c->rms_eps = get_num_(tc, root, "rms_norm_eps", 1e-6);
    /* rope: transformers 5 rope_parameters {rope_theta, mrope_section}; legacy rope_theta +
     * rope_scaling {type: mrope|default, mrope_section} */
    const cJSON *rp = get_(tc, root, "rope_parameters");
    if (!cJSON_IsObject(rp)) rp = get_(tc, root, "rope_scaling");
    c->rope_theta = get_num_(rp, NULL, "rope_theta", get_num_(tc, root, "rope_theta", 1000000.0));
    const cJSON *ms = rp ? cJSON_GetObjectItemCaseSensitive(rp, "mrope_section") : NULL;
    if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) != 3) {
        qie_seterr(err, "%s: no mrope_section [t, h, w] in rope_parameters / rope_scaling", path);
        rc = QIE_EFORMAT;
        goto out;
    }
    for (int i = 0; i < 3; i++) c->mrope[i] = cJSON_GetArrayItem(ms, i)->valueint;
    if (c->mrope[0] + c->mrope[1] + c->mrope[2] != c->head_dim / 2 || c->head_dim > 128 || c->head_dim % 2) {
        qie_seterr(err, "%s: mrope_section %d+%d+%d must sum to head_dim/2 = %d (head_dim <= 128)", path, c->mrope[0],
                   c->mrope[1], c->mrope[2], c->head_dim / 2);
        rc = QIE_EFORMAT;
        goto out;
    }
    const cJSON *act = get_(tc, root, "hidden_act");
    if (act && (!cJSON_IsString(act) || strcmp(act->valuestring, "silu"))) {
        qie_seterr(err, "%s: hidden_act must be silu", path);
        rc = QIE_EUNSUPPORTED;
        goto out;
    }
    /* vision tower */
    if ((rc = get_int_(err, vc, NULL, "depth", REQ, &c->v_depth, path)) ||
        (rc = get_int_(err, vc, NULL, "hidden_size", REQ, &c->v_hidden, path)) ||
        (rc = get_int_(err, vc, NULL, "num_heads", REQ, &c->v_heads, path)) ||
        (rc = get_int_(err, vc, NULL, "intermediate_size", REQ, &c->v_ffn, path)) ||
        (rc = get_int_(err, vc, NULL, "out_hidden_size", c->hidden, &c->v_out, path)) ||
        (rc = get_int_(err, vc, NULL, "patch_size", 14, &c->patch, path)) ||
        (rc = get_int_(err, vc, NULL, "temporal_patch_size", 2, &c->tpatch, path)) ||
        (rc = get_int_(err, vc, NULL, "spatial_merge_size", 2, &c->merge, path)) ||
        (rc = get_int_(err, vc, NULL, "window_size", 112, &c->window, path)))
        goto out;
    if ((rc = get_int_(err, vc, NULL, "in_channels", 0, &c->in_ch, path))) goto out;
    if (!c->in_ch && (rc = get_int_(err, vc, NULL, "in_chans", 3, &c->in_ch, path))) goto out;
    const cJSON *vrp = cJSON_GetObjectItemCaseSensitive(vc, "rope_parameters");
    c->v_rope_theta = get_num_(cJSON_IsObject(vrp) ? vrp : NULL, NULL, "rope_theta", 10000.0);
    if (c->v_heads <= 0 || c->v_hidden % c->v_heads || (c->v_hidden / c->v_heads) % 4 || c->v_hidden / c->v_heads > 128 ||
        c->v_out != c->hidden || c->in_ch != 3 || c->v_depth > QWENVL_MAX_LAYERS || c->merge < 1 ||
        c->in_ch * c->tpatch * c->patch * c->patch > QWENVL_PATCH_DIM_MAX * 4 || c->window % (c->patch * c->merge)) {
        qie_seterr(err, "%s: unsupported vision_config (heads %d, hidden %d, out %d vs LLM %d, channels %d)", path,
                   c->v_heads, c->v_hidden, c->v_out, c->hidden, c->in_ch);
        rc = QIE_EFORMAT;
        goto out;
    }
    c->v_head_dim = c->v_hidden / c->v_heads;
    const cJSON *fa = cJSON_GetObjectItemCaseSensitive(vc, "fullatt_block_indexes"), *e;
    cJSON_ArrayForEach(e, fa) {
        if (cJSON_IsNumber(e) && e->valueint >= 0 && e->valueint < c->v_depth) c->v_full[e->valueint] = 1;
    }
    const cJSON *vact = cJSON_GetObjectItemCaseSensitive(vc, "hidden_act");
    if (vact && (!cJSON_IsString(vact) || strcmp(vact->valuestring, "silu"))) {
        qie_seterr(err, "%s: vision hidden_act must be silu", path);
        rc = QIE_EUNSUPPORTED;
        goto out;
    }
    c->pad_id = -1;
    /* processor: the released values unless preprocessor_config.json says otherwise */
    c->min_pixels = 3136;
    c->max_pixels = 12845056;
    c->rescale = 1.0 / 255.0;
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    memcpy(c->mean, mean, sizeof mean);
    memcpy(c->std, stdv, sizeof stdv);
    c->resample = 3;
    snprintf(path, sizeof path, "%s/preprocessor_config.json", procd);
    FILE *pf = fopen(path, "rb");
    if (pf) {
        fclose(pf);
        if (!(pj = load_json_(err, path, &rc))) goto out;
        const cJSON *size = cJSON_GetObjectItemCaseSensitive(pj, "size");
        c->min_pixels = (int64_t)get_num_(pj, NULL, "min_pixels", get_num_(size, NULL, "shortest_edge", 3136));
        c->max_pixels = (int64_t)get_num_(pj, NULL, "max_pixels", get_num_(size, NULL, "longest_edge", 12845056));
        c->rescale = get_num_(pj, NULL, "rescale_factor", 1.0 / 255.0);
        c->resample = (int)get_num_(pj, NULL, "resample", 3);
        const cJSON *im = cJSON_GetObjectItemCaseSensitive(pj, "image_mean"), *is = cJSON_GetObjectItemCaseSensitive(pj, "image_std");
        for (int i = 0; i < 3; i++) {
            if (cJSON_IsArray(im) && cJSON_GetArraySize(im) == 3) c->mean[i] = (float)cJSON_GetArrayItem(im, i)->valuedouble;
            if (cJSON_IsArray(is) && cJSON_GetArraySize(is) == 3) c->std[i] = (float)cJSON_GetArrayItem(is, i)->valuedouble;
        }
        int ps = 0;
        if (!get_int_(err, pj, NULL, "patch_size", c->patch, &ps, path) && ps != c->patch) {
            qie_seterr(err, "%s: patch_size %d differs from the vision tower's %d", path, ps, c->patch);
            rc = QIE_EFORMAT;
            goto out;
        }
        if (cJSON_GetObjectItemCaseSensitive(pj, "do_resize") && !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(pj, "do_resize"))) {
            qie_seterr(err, "%s: do_resize false is not supported", path);
            rc = QIE_EUNSUPPORTED;
            goto out;
        }
        if (c->resample != 3) {
            qie_seterr(err, "%s: resample %d: only 3 (BICUBIC) is implemented", path, c->resample);
            rc = QIE_EUNSUPPORTED;
            goto out;
        }
    }
out:
    cJSON_Delete(root);
    cJSON_Delete(pj);
    return rc;
}

int qwenvl_mode_parse(const char *s, QwenVLMode *out) {
    if (!strcmp(s, "qwen_image_edit")) *out = QWENVL_EDIT;
    else if (!strcmp(s, "qwen_image_edit_plus")) *out = QWENVL_EDIT_PLUS;
    else return QIE_EINVAL;
    return 0;
}

void qwenvl_config_7b(QwenVLConfig *c) {
    memset(c, 0, sizeof *c);
    c->hidden = 3584, c->layers = 28, c->heads = 28, c->kv_heads = 4, c->head_dim = 128, c->ffn = 18944;
    c->vocab = 152064, c->max_pos = 128000;
    c->mrope[0] = 16, c->mrope[1] = 24, c->mrope[2] = 24;
    c->rope_theta = 1000000.0, c->rms_eps = 1e-6;
    c->v_depth = 32, c->v_hidden = 1280, c->v_heads = 16, c->v_head_dim = 80, c->v_ffn = 3420, c->v_out = 3584;
    c->patch = 14, c->tpatch = 2, c->merge = 2, c->window = 112, c->in_ch = 3, c->v_rope_theta = 10000.0;
    c->v_full[7] = c->v_full[15] = c->v_full[23] = c->v_full[31] = 1;
    c->image_token_id = 151655, c->vision_start_id = 151652, c->vision_end_id = 151653, c->pad_id = 151643;
    c->min_pixels = 3136, c->max_pixels = 12845056, c->rescale = 1.0 / 255.0, c->resample = 3;
    const float mean[3] = {0.48145466f, 0.4578275f, 0.40821073f}, stdv[3] = {0.26862954f, 0.26130258f, 0.27577711f};
    memcpy(c->mean, mean, sizeof mean);
    memcpy(c->std, stdv, sizeof stdv);
}
