/* parity_transformer.c: qie-parity transformer. Reads
 *   hidden_states [B,S_img,C]  encoder_hidden_states [B,S_txt,J]  encoder_hidden_states_mask [B,S_txt]
 *   (optional; any of f32/bf16/f16/bool/u8/i32/i64, nonzero = valid)  timestep [B]
 *   img_shapes i64/i32 [B,N_img,3] (frames, height, width in patches, target first; equal across the
 *   batch, as upstream's RoPE assumes)  grad_output [B,S_img,C_out] (optional)
 * runs common/dit.c on --device and writes `output` and, with grad_output, the gradient of
 * sum(output · grad_output) for every parameter (`grad.<diffusers name>`) and for both inputs
 * (`grad.hidden_states`, `grad.encoder_hidden_states`), all f32. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dit.h"
#include "err.h"
#include "log.h"
#include "ops.h"
#include "parity.h"
#include "safetensors.h"

/* Reads a float tensor of the expected rank into a fresh f32 array; dims[] receives the shape. */
static int read_f32_(char *err, const SafeTensors *st, const char *name, int ndim, int64_t *dims, float **out) {
    const StTensor *t = st_find(st, name);
    if (!t) {
        qie_seterr(err, "inputs lack %s", name);
        return QIE_ENOTFOUND;
    }
    if (t->ndim != ndim) {
        qie_seterr(err, "input %s has %d dims, expected %d", name, t->ndim, ndim);
        return QIE_EMISMATCH;
    }
    for (int i = 0; i < ndim; i++) dims[i] = (int64_t)t->shape[i];
    float *f = malloc(sizeof(float) * (t->numel ? t->numel : 1));
    if (!f) {
        qie_seterr(err, "%s: out of memory", name);
        return QIE_ENOMEM;
    }
    const uint8_t *p = t->data;
    for (uint64_t i = 0; i < t->numel; i++) {
        switch (t->dtype) {
        case QIE_DT_F32: memcpy(&f[i], p + 4 * i, 4); break;
        case QIE_DT_F64: { double v; memcpy(&v, p + 8 * i, 8); f[i] = (float)v; break; }
        case QIE_DT_BF16: { uint16_t h; memcpy(&h, p + 2 * i, 2); f[i] = bf16_to_f32(h); break; }
        case QIE_DT_F16: { uint16_t h; memcpy(&h, p + 2 * i, 2); f[i] = f16_to_f32(h); break; }
        case QIE_DT_BOOL: case QIE_DT_U8: f[i] = p[i]; break;
        case QIE_DT_I32: { int32_t v; memcpy(&v, p + 4 * i, 4); f[i] = (float)v; break; }
        case QIE_DT_I64: { int64_t v; memcpy(&v, p + 8 * i, 8); f[i] = (float)v; break; }
        default:
            free(f);
            qie_seterr(err, "input %s: dtype %s not supported", name, st_dtype_name(t->dtype));
            return QIE_EUNSUPPORTED;
        }
    }
    *out = f;
    return 0;
}

static int add_f32_(char *err, StWriter *w, const char *name, int ndim, const int64_t *dims, const float *data) {
    uint64_t shape[4];
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)(shape[i] = (uint64_t)dims[i]);
    return st_writer_add(err, w, name, QIE_DT_F32, ndim, shape, data, n * sizeof(float));
}

int parity_transformer(char *err, const ParityArgs *a) {
    OpCtx ctx;
    int rc = opctx_init(err, &ctx, a->device);
    if (rc) return rc;
    SafeTensors *in = NULL;
    StWriter *w = NULL;
    Dit *m = NULL;
    float *x = NULL, *e = NULL, *mask = NULL, *t = NULL, *shp = NULL, *go = NULL, *h_out = NULL, *h_grads = NULL;
    float *h_dx = NULL, *h_de = NULL;
    void *d_x = NULL, *d_e = NULL, *d_go = NULL, *d_dx = NULL, *d_de = NULL;
    int64_t dx[3], de[3], dm[2], dt[1], ds[3], dg[3];
    if ((rc = st_open(err, a->in_path, &in))) goto done;
    int want_grad = st_find(in, "grad_output") != NULL;
    if ((rc = read_f32_(err, in, "hidden_states", 3, dx, &x)) ||
        (rc = read_f32_(err, in, "encoder_hidden_states", 3, de, &e)) ||
        (rc = read_f32_(err, in, "timestep", 1, dt, &t)) || (rc = read_f32_(err, in, "img_shapes", 3, ds, &shp)))
        goto done;
    if (st_find(in, "encoder_hidden_states_mask") &&
        (rc = read_f32_(err, in, "encoder_hidden_states_mask", 2, dm, &mask)))
        goto done;
    const int B = (int)dx[0];
    DitShape sh = {.B = B, .N_txt = (int)de[1], .n_images = (int)ds[1]};
    if (de[0] != B || dt[0] != B || ds[0] != B || ds[2] != 3 || (mask && (dm[0] != B || dm[1] != de[1])) ||
        sh.n_images < 1 || sh.n_images > DIT_MAX_IMAGES) {
        qie_seterr(err, "%s: inconsistent input shapes (batch %d; img_shapes [%lld, %lld, %lld])", a->in_path, B,
                   (long long)ds[0], (long long)ds[1], (long long)ds[2]);
        rc = QIE_EMISMATCH;
        goto done;
    }
    long long n_img = 0;
    for (int i = 0; i < sh.n_images; i++) {
        for (int k = 0; k < 3; k++) sh.img_shapes[i][k] = (int)shp[i * 3 + k];
        for (int b = 1; b < B; b++)
            for (int k = 0; k < 3; k++)
                if (shp[((size_t)b * sh.n_images + i) * 3 + k] != shp[i * 3 + k]) {
                    qie_seterr(err, "%s: img_shapes differ across the batch (sample %d image %d); upstream builds "
                               "RoPE from sample 0 only, so qie requires equal shapes (batch by bucket)",
                               a->in_path, b, i);
                    rc = QIE_EUNSUPPORTED;
                    goto done;
                }
        n_img += (long long)sh.img_shapes[i][0] * sh.img_shapes[i][1] * sh.img_shapes[i][2];
    }
    if (n_img != dx[1]) {
        qie_seterr(err, "%s: img_shapes cover %lld tokens, hidden_states has %lld", a->in_path, n_img, (long long)dx[1]);
        rc = QIE_EMISMATCH;
        goto done;
    }
    if ((rc = dit_create_from_dir(err, &ctx, a->model_dir, want_grad, 0, &m))) goto done;
    const DitConfig *cf = &m->cfg;
    if (dx[2] != cf->in_channels || de[2] != cf->joint_dim) {
        qie_seterr(err, "%s: hidden_states width %lld / encoder_hidden_states width %lld do not match the model "
                   "(%d / %d)", a->in_path, (long long)dx[2], (long long)de[2], cf->in_channels, cf->joint_dim);
        rc = QIE_EMISMATCH;
        goto done;
    }
    log_info("transformer: %d layers, D %d, %s, B %d, N_img %lld, N_txt %d, %s%s", cf->num_layers, cf->D,
             cf->zero_cond_t ? "zero_cond_t" : "plain", B, n_img, sh.N_txt, opctx_device_name(&ctx),
             want_grad ? ", with gradients" : "");
    const size_t nx = (size_t)B * dx[1] * dx[2], ne = (size_t)B * de[1] * de[2], no = (size_t)B * dx[1] * cf->out_dim;
    const size_t es = op_act_size(&ctx);
    d_x = op_alloc(&ctx, nx * es);
    d_e = op_alloc(&ctx, ne * es);
    op_upload_act(&ctx, d_x, x, nx);
    op_upload_act(&ctx, d_e, e, ne);
    const void *d_out = NULL;
    if ((rc = dit_forward(err, m, &sh, d_x, d_e, mask, t, &d_out))) goto done;
    h_out = malloc(no * sizeof(float));
    if (!h_out) { rc = QIE_ENOMEM; qie_seterr(err, "out of memory"); goto done; }
    op_download_act(&ctx, h_out, d_out, no);
    if ((rc = st_writer_create(err, &w))) goto done;
    const int64_t od[3] = {B, dx[1], cf->out_dim};
    if ((rc = add_f32_(err, w, "output", 3, od, h_out))) goto done;
    if (want_grad) {
        if ((rc = read_f32_(err, in, "grad_output", 3, dg, &go))) goto done;
        if (dg[0] != od[0] || dg[1] != od[1] || dg[2] != od[2]) {
            qie_seterr(err, "%s: grad_output must be [%lld, %lld, %lld]", a->in_path, (long long)od[0],
                       (long long)od[1], (long long)od[2]);
            rc = QIE_EMISMATCH;
            goto done;
        }
        d_go = op_alloc(&ctx, no * es);
        d_dx = op_alloc(&ctx, nx * es);
        d_de = op_alloc(&ctx, ne * es);
        op_upload_act(&ctx, d_go, go, no);
        dit_zero_grad(m);
        if ((rc = dit_backward(err, m, d_go, d_dx, d_de))) goto done;
        h_grads = malloc(m->lay.num_params * sizeof(float));
        h_dx = malloc(nx * sizeof(float));
        h_de = malloc(ne * sizeof(float));
        if (!h_grads || !h_dx || !h_de) { rc = QIE_ENOMEM; qie_seterr(err, "out of memory"); goto done; }
        op_download_f32(&ctx, h_grads, m->grads, m->lay.num_params);
        op_download_act(&ctx, h_dx, d_dx, nx);
        op_download_act(&ctx, h_de, d_de, ne);
        if ((rc = dit_writer_add(err, w, &m->lay, "grad.", QIE_DT_F32, h_grads)) ||
            (rc = add_f32_(err, w, "grad.hidden_states", 3, dx, h_dx)) ||
            (rc = add_f32_(err, w, "grad.encoder_hidden_states", 3, de, h_de)))
            goto done;
    }
    rc = st_writer_write(err, w, a->out_path);
done:
    st_writer_destroy(&w);
    st_close(&in);
    op_free(&ctx, d_x);
    op_free(&ctx, d_e);
    op_free(&ctx, d_go);
    op_free(&ctx, d_dx);
    op_free(&ctx, d_de);
    dit_destroy(&m);
    opctx_free(&ctx);
    free(x); free(e); free(mask); free(t); free(shp); free(go); free(h_out); free(h_grads); free(h_dx); free(h_de);
    return rc;
}
