/* dit_layout.c: the transformer's config (config.json via cJSON), its parameter layout (names
 * table, block-major ranges padded for sharding), the weight loader and the checkpoint-writer
 * helper. Names and shapes: spec/model.md 1.2. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "dit.h"
#include "fsutil.h"
#include "err.h"

/* ---- config ----------------------------------------------------------------------------- */

static int is_file_(const char *p) {
    struct stat s;
    return stat(p, &s) == 0 && S_ISREG(s.st_mode);
}

static int json_int_(char *err, const cJSON *root, const char *key, int *dst, int required) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) {
        if (!required) return 0;
        qie_seterr(err, "config.json: missing \"%s\"", key);
        return QIE_EFORMAT;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != (double)(int)v->valuedouble) {
        qie_seterr(err, "config.json: \"%s\" must be an integer", key);
        return QIE_EFORMAT;
    }
    *dst = (int)v->valuedouble;
    return 0;
}

static int json_bool_(char *err, const cJSON *root, const char *key, int *dst) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, key);
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsBool(v)) {
        qie_seterr(err, "config.json: \"%s\" must be true or false", key);
        return QIE_EFORMAT;
    }
    *dst = cJSON_IsTrue(v);
    return 0;
}

int dit_config_validate(char *err, DitConfig *c) {
    if (c->patch_size != 2 || c->num_layers < 1 || c->head_dim < 8 || c->num_heads < 1 || c->joint_dim < 1 ||
        c->out_channels < 1) {
        qie_seterr(err, "transformer config: patch_size must be 2 and sizes positive (patch %d, layers %d, heads %d "
                   "x %d, J %d, out %d)", c->patch_size, c->num_layers, c->num_heads, c->head_dim, c->joint_dim,
                   c->out_channels);
        return QIE_EINVAL;
    }
    c->D = c->num_heads * c->head_dim;
    c->out_dim = c->patch_size * c->patch_size * c->out_channels;
    if (c->in_channels != c->out_dim) {
        qie_seterr(err, "transformer config: in_channels %d != out_channels · patch² = %d (spec 1.1)", c->in_channels,
                   c->out_dim);
        return QIE_EINVAL;
    }
    if (c->axes[0] + c->axes[1] + c->axes[2] != c->head_dim || c->axes[0] % 2 || c->axes[1] % 2 || c->axes[2] % 2 ||
        c->axes[0] <= 0 || c->axes[1] <= 0 || c->axes[2] <= 0) {
        qie_seterr(err, "transformer config: axes_dims_rope [%d, %d, %d] must be even and sum to attention_head_dim %d",
                   c->axes[0], c->axes[1], c->axes[2], c->head_dim);
        return QIE_EINVAL;
    }
    /* kernel limits: the CUDA flash attention handles head dims that are multiples of 8 up to 128
     * (16-byte tile loads, tiles padded to 16); the fused QKV GEMM needs each q/k/v block
     * DIT_TENSOR_ALIGN-aligned in the buffer */
    if (c->head_dim % 8 || c->head_dim > 128 || c->D % DIT_TENSOR_ALIGN) {
        qie_seterr(err, "transformer config: attention_head_dim %d must be a multiple of 8 and <= 128, and the width "
                   "%d a multiple of %d", c->head_dim, c->D, DIT_TENSOR_ALIGN);
        return QIE_EUNSUPPORTED;
    }
    return 0;
}

int dit_config_load(char *err, const char *path, DitConfig *cfg) {
    char p[4096];
    struct stat s;
    if (stat(path, &s) != 0) {
        int e = errno;
        qie_seterr(err, "transformer config %s: %s", path, strerror(e));
        return e;
    }
    if (S_ISDIR(s.st_mode)) {
        snprintf(p, sizeof p, "%s/transformer/config.json", path);
        if (!is_file_(p)) snprintf(p, sizeof p, "%s/config.json", path);
    } else {
        snprintf(p, sizeof p, "%s", path);
    }
    char *txt = NULL;
    int rc = fs_read_file(err, p, (size_t)1 << 24, &txt, NULL);
    if (rc) return rc;
    cJSON *root = cJSON_Parse(txt);
    free(txt);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        qie_seterr(err, "%s: not a JSON object", p);
        return QIE_EFORMAT;
    }
    /* defaults: diffusers QwenImageTransformer2DModel.__init__ */
    DitConfig c = {2, 64, 16, 60, 128, 24, 3584, {16, 56, 56}, 0, 0, 0};
    int out_set = 0, guidance = 0, add_t = 0, l3d = 0;
    const cJSON *oc = cJSON_GetObjectItemCaseSensitive(root, "out_channels");
    if ((rc = json_int_(err, root, "patch_size", &c.patch_size, 0)) ||
        (rc = json_int_(err, root, "in_channels", &c.in_channels, 0)) ||
        (rc = json_int_(err, root, "out_channels", &c.out_channels, 0)) ||
        (rc = json_int_(err, root, "num_layers", &c.num_layers, 0)) ||
        (rc = json_int_(err, root, "attention_head_dim", &c.head_dim, 0)) ||
        (rc = json_int_(err, root, "num_attention_heads", &c.num_heads, 0)) ||
        (rc = json_int_(err, root, "joint_attention_dim", &c.joint_dim, 0)) ||
        (rc = json_bool_(err, root, "zero_cond_t", &c.zero_cond_t)) ||
        (rc = json_bool_(err, root, "guidance_embeds", &guidance)) ||
        (rc = json_bool_(err, root, "use_additional_t_cond", &add_t)) ||
        (rc = json_bool_(err, root, "use_layer3d_rope", &l3d)))
        goto done;
    out_set = oc && cJSON_IsNumber(oc);
    if (!out_set) c.out_channels = c.in_channels / 4; /* "out_channels or in_channels" then packed */
    const cJSON *ax = cJSON_GetObjectItemCaseSensitive(root, "axes_dims_rope");
    if (ax) {
        if (!cJSON_IsArray(ax) || cJSON_GetArraySize(ax) != 3) {
            qie_seterr(err, "%s: axes_dims_rope must be a list of 3 integers", p);
            rc = QIE_EFORMAT;
            goto done;
        }
        for (int i = 0; i < 3; i++) {
            const cJSON *v = cJSON_GetArrayItem(ax, i);
            if (!cJSON_IsNumber(v)) {
                qie_seterr(err, "%s: axes_dims_rope must be a list of 3 integers", p);
                rc = QIE_EFORMAT;
                goto done;
            }
            c.axes[i] = (int)v->valuedouble;
        }
    }
    if (guidance || add_t || l3d) {
        qie_seterr(err, "%s: guidance_embeds / use_additional_t_cond / use_layer3d_rope are not supported "
                   "(Qwen-Image-Layered and guidance-distilled variants; spec 1.1)", p);
        rc = QIE_EUNSUPPORTED;
        goto done;
    }
    rc = dit_config_validate(err, &c);
    if (rc) qie_preferr(err, "%s", p);
    else *cfg = c;
done:
    cJSON_Delete(root);
    return rc;
}

/* ---- layout ----------------------------------------------------------------------------- */

static const char *const in_names_[DIT_NUM_IN_TENSORS] = {
    "img_in.weight", "img_in.bias", "txt_norm.weight", "txt_in.weight", "txt_in.bias",
    "time_text_embed.timestep_embedder.linear_1.weight", "time_text_embed.timestep_embedder.linear_1.bias",
    "time_text_embed.timestep_embedder.linear_2.weight", "time_text_embed.timestep_embedder.linear_2.bias",
};

static const char *const block_names_[DIT_NUM_BLOCK_TENSORS] = {
    "img_mod.1.weight", "img_mod.1.bias", "txt_mod.1.weight", "txt_mod.1.bias",
    "attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight", "attn.to_q.bias", "attn.to_k.bias", "attn.to_v.bias",
    "attn.add_q_proj.weight", "attn.add_k_proj.weight", "attn.add_v_proj.weight",
    "attn.add_q_proj.bias", "attn.add_k_proj.bias", "attn.add_v_proj.bias",
    "attn.norm_q.weight", "attn.norm_k.weight", "attn.norm_added_q.weight", "attn.norm_added_k.weight",
    "attn.to_out.0.weight", "attn.to_out.0.bias", "attn.to_add_out.weight", "attn.to_add_out.bias",
    "img_mlp.net.0.proj.weight", "img_mlp.net.0.proj.bias", "img_mlp.net.2.weight", "img_mlp.net.2.bias",
    "txt_mlp.net.0.proj.weight", "txt_mlp.net.0.proj.bias", "txt_mlp.net.2.weight", "txt_mlp.net.2.bias",
};

static const char *const out_names_[DIT_NUM_OUT_TENSORS] = {
    "norm_out.linear.weight", "norm_out.linear.bias", "proj_out.weight", "proj_out.bias",
};

static void in_shape_(const DitConfig *c, int t, int64_t s[2]) {
    const int64_t D = c->D;
    switch (t) {
    case DIT_IMG_IN_W: s[0] = D; s[1] = c->in_channels; break;
    case DIT_TXT_NORM_W: s[0] = c->joint_dim; s[1] = 0; break;
    case DIT_TXT_IN_W: s[0] = D; s[1] = c->joint_dim; break;
    case DIT_T_LIN1_W: s[0] = D; s[1] = 256; break;
    case DIT_T_LIN2_W: s[0] = D; s[1] = D; break;
    default: s[0] = D; s[1] = 0; break; /* the biases */
    }
}

static void block_shape_(const DitConfig *c, int t, int64_t s[2]) {
    const int64_t D = c->D;
    s[1] = 0;
    switch (t) {
    case DIT_B_IMG_MOD_W: case DIT_B_TXT_MOD_W: s[0] = 6 * D; s[1] = D; break;
    case DIT_B_IMG_MOD_B: case DIT_B_TXT_MOD_B: s[0] = 6 * D; break;
    case DIT_B_NORM_Q: case DIT_B_NORM_K: case DIT_B_NORM_ADD_Q: case DIT_B_NORM_ADD_K: s[0] = c->head_dim; break;
    case DIT_B_IMG_FC1_W: case DIT_B_TXT_FC1_W: s[0] = 4 * D; s[1] = D; break;
    case DIT_B_IMG_FC1_B: case DIT_B_TXT_FC1_B: s[0] = 4 * D; break;
    case DIT_B_IMG_FC2_W: case DIT_B_TXT_FC2_W: s[0] = D; s[1] = 4 * D; break;
    case DIT_B_TO_Q_W: case DIT_B_TO_K_W: case DIT_B_TO_V_W: case DIT_B_ADD_Q_W: case DIT_B_ADD_K_W:
    case DIT_B_ADD_V_W: case DIT_B_TO_OUT_W: case DIT_B_TO_ADD_OUT_W: s[0] = D; s[1] = D; break;
    default: s[0] = D; break; /* D-wide biases */
    }
}

static void out_shape_(const DitConfig *c, int t, int64_t s[2]) {
    const int64_t D = c->D;
    switch (t) {
    case DIT_NORM_OUT_W: s[0] = 2 * D; s[1] = D; break;
    case DIT_NORM_OUT_B: s[0] = 2 * D; s[1] = 0; break;
    case DIT_PROJ_OUT_W: s[0] = c->out_dim; s[1] = D; break;
    default: s[0] = c->out_dim; s[1] = 0; break;
    }
}

void dit_layout_free(DitLayout *lay) {
    free(lay->tensors);
    free(lay->ranges);
    lay->tensors = NULL;
    lay->ranges = NULL;
}

int dit_layout_init(char *err, DitLayout *lay, const DitConfig *cfg) {
    memset(lay, 0, sizeof *lay);
    lay->cfg = *cfg;
    const int L = cfg->num_layers;
    lay->ntensors = DIT_NUM_IN_TENSORS + DIT_NUM_BLOCK_TENSORS * L + DIT_NUM_OUT_TENSORS;
    lay->nranges = L + 2;
    lay->tensors = calloc((size_t)lay->ntensors, sizeof *lay->tensors);
    lay->ranges = calloc((size_t)lay->nranges, sizeof *lay->ranges);
    if (!lay->tensors || !lay->ranges) {
        dit_layout_free(lay);
        qie_seterr(err, "dit_layout_init: out of memory");
        return QIE_ENOMEM;
    }
    size_t off = 0;
    int k = 0;
    for (int r = 0; r < lay->nranges; r++) {
        lay->ranges[r].offset = off;
        int n = r == 0 ? DIT_NUM_IN_TENSORS : r == L + 1 ? DIT_NUM_OUT_TENSORS : DIT_NUM_BLOCK_TENSORS;
        for (int t = 0; t < n; t++, k++) {
            DitTensorInfo *ti = &lay->tensors[k];
            int64_t s[2];
            if (r == 0) {
                in_shape_(cfg, t, s);
                snprintf(ti->name, sizeof ti->name, "%s", in_names_[t]);
                ti->layer = -1;
            } else if (r == L + 1) {
                out_shape_(cfg, t, s);
                snprintf(ti->name, sizeof ti->name, "%s", out_names_[t]);
                ti->layer = -1;
            } else {
                block_shape_(cfg, t, s);
                snprintf(ti->name, sizeof ti->name, "transformer_blocks.%d.%s", r - 1, block_names_[t]);
                ti->layer = r - 1;
            }
            ti->ndim = s[1] ? 2 : 1;
            ti->shape[0] = s[0];
            ti->shape[1] = s[1];
            ti->numel = (size_t)s[0] * (size_t)(s[1] ? s[1] : 1);
            off = (off + DIT_TENSOR_ALIGN - 1) / DIT_TENSOR_ALIGN * DIT_TENSOR_ALIGN;
            ti->offset = off;
            off += ti->numel;
            lay->num_real += ti->numel;
        }
        off = (off + DIT_RANGE_ALIGN - 1) / DIT_RANGE_ALIGN * DIT_RANGE_ALIGN;
        lay->ranges[r].size = off - lay->ranges[r].offset;
    }
    lay->num_params = off;
    /* The fused QKV GEMMs read q, k, v weights (and biases) as one [3D, D] matrix: they must be
     * adjacent. True by construction when D is a multiple of DIT_TENSOR_ALIGN (validated). */
    for (int l = 0; l < L; l++) {
        const DitTensorInfo *q = dit_tensor(lay, l, DIT_B_TO_Q_W), *v = dit_tensor(lay, l, DIT_B_TO_V_W);
        const DitTensorInfo *qa = dit_tensor(lay, l, DIT_B_ADD_Q_B), *va = dit_tensor(lay, l, DIT_B_ADD_V_B);
        if (v->offset != q->offset + 2 * q->numel || va->offset != qa->offset + 2 * qa->numel) {
            dit_layout_free(lay);
            qie_seterr(err, "dit_layout_init: q/k/v tensors of block %d are not adjacent (width %d)", l, cfg->D);
            return QIE_EUNSUPPORTED;
        }
    }
    return 0;
}

static const char *strip_prefix_(const char *name) {
    static const char *const pre[] = {"model.diffusion_model.", "transformer.", "diffusion_model."};
    for (size_t i = 0; i < sizeof pre / sizeof *pre; i++) {
        size_t n = strlen(pre[i]);
        if (!strncmp(name, pre[i], n)) return name + n;
    }
    return name;
}

int dit_layout_find(const DitLayout *lay, const char *name) {
    name = strip_prefix_(name);
    if (!strncmp(name, "transformer_blocks.", 19)) {
        char *end;
        long l = strtol(name + 19, &end, 10);
        if (end == name + 19 || *end != '.' || l < 0 || l >= lay->cfg.num_layers) return -1;
        for (int t = 0; t < DIT_NUM_BLOCK_TENSORS; t++)
            if (!strcmp(end + 1, block_names_[t])) return dit_tensor_index(lay, (int)l, t);
        return -1;
    }
    for (int t = 0; t < DIT_NUM_IN_TENSORS; t++)
        if (!strcmp(name, in_names_[t])) return t;
    for (int t = 0; t < DIT_NUM_OUT_TENSORS; t++)
        if (!strcmp(name, out_names_[t])) return dit_tensor_index(lay, lay->cfg.num_layers, t);
    return -1;
}

/* ---- load / save ------------------------------------------------------------------------ */

static int convert_(char *err, const StTensor *t, float *dst) {
    const uint8_t *p = t->data;
    switch (t->dtype) {
    case QIE_DT_F32:
        memcpy(dst, p, t->numel * 4); /* data may be unaligned: memcpy, never a cast */
        return 0;
    case QIE_DT_BF16:
    case QIE_DT_F16:
        for (uint64_t i = 0; i < t->numel; i++) {
            uint16_t h;
            memcpy(&h, p + 2 * i, 2);
            dst[i] = t->dtype == QIE_DT_BF16 ? bf16_to_f32(h) : f16_to_f32(h);
        }
        return 0;
    default:
        qie_seterr(err, "%s: dtype %s not supported for weights (bf16, f16, f32)", t->name, st_dtype_name(t->dtype));
        return QIE_EUNSUPPORTED;
    }
}

int dit_load_weights(char *err, const DitLayout *lay, const StModel *st, float *h_params) {
    memset(h_params, 0, lay->num_params * sizeof(float));
    char *seen = calloc((size_t)lay->ntensors, 1);
    if (!seen) {
        qie_seterr(err, "dit_load_weights: out of memory");
        return QIE_ENOMEM;
    }
    int rc = 0;
    for (size_t i = 0; i < st_model_count(st); i++) {
        const StTensor *t = st_model_tensor_at(st, i);
        int k = dit_layout_find(lay, t->name);
        if (k < 0) {
            qie_seterr(err, "checkpoint tensor %s is not a parameter of this transformer config (%d layers, width %d)",
                       t->name, lay->cfg.num_layers, lay->cfg.D);
            rc = QIE_EMISMATCH;
            goto done;
        }
        const DitTensorInfo *ti = &lay->tensors[k];
        int ok = t->ndim == ti->ndim && (uint64_t)ti->shape[0] == t->shape[0] &&
                 (ti->ndim == 1 || (uint64_t)ti->shape[1] == t->shape[1]);
        if (!ok) {
            qie_seterr(err, "checkpoint tensor %s: shape does not match the config (expected [%lld%s%lld])", t->name,
                       (long long)ti->shape[0], ti->ndim == 2 ? ", " : "", ti->ndim == 2 ? (long long)ti->shape[1] : 0LL);
            rc = QIE_EMISMATCH;
            goto done;
        }
        if (seen[k]) {
            qie_seterr(err, "checkpoint tensor %s appears twice (with and without a prefix?)", t->name);
            rc = QIE_EMISMATCH;
            goto done;
        }
        if ((rc = convert_(err, t, h_params + ti->offset))) goto done;
        seen[k] = 1;
    }
    for (int k = 0; k < lay->ntensors; k++)
        if (!seen[k]) {
            qie_seterr(err, "checkpoint lacks %s", lay->tensors[k].name);
            rc = QIE_ENOTFOUND;
            goto done;
        }
done:
    free(seen);
    return rc;
}

int dit_writer_add(char *err, StWriter *w, const DitLayout *lay, const char *prefix, QieDtype dt, const void *h_buf) {
    if (dt != QIE_DT_F32 && dt != QIE_DT_BF16) {
        qie_seterr(err, "dit_writer_add: dtype must be f32 or bf16");
        return QIE_EINVAL;
    }
    size_t es = dtype_size(dt);
    for (int k = 0; k < lay->ntensors; k++) {
        const DitTensorInfo *ti = &lay->tensors[k];
        char name[160];
        snprintf(name, sizeof name, "%s%s", prefix ? prefix : "", ti->name);
        uint64_t shape[2] = {(uint64_t)ti->shape[0], (uint64_t)ti->shape[1]};
        int rc = st_writer_add(err, w, name, dt, ti->ndim, shape, (const char *)h_buf + ti->offset * es, ti->numel * es);
        if (rc) return rc;
    }
    return 0;
}
