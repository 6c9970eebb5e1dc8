/* vae_internal.h: the VaeModel struct, shared by vae.c (parameter table, loading) and
 * vae_forward.c (buffers, forward). Not part of the API: include vae.h. */
#ifndef QIE_COMMON_VAE_INTERNAL_H
#define QIE_COMMON_VAE_INTERNAL_H

#include "vae.h"

/* Kinds of stored tensors and how each becomes its 2-D compute form (spec/model.md §2.4):
 *   VAE_P_CONV3D  [Cout, Cin, kt, k, k] causal conv: the last temporal tap, permuted to
 *                 [Cout, k, k, Cin(pad)]
 *   VAE_P_CONV2D  [Cout, Cin, k, k] nn.Conv2d: permuted to [Cout, k, k, Cin]
 *   VAE_P_VEC     [C] bias or [C, 1, 1(, 1)] gamma: [C] */
typedef enum { VAE_P_CONV3D = 0, VAE_P_CONV2D = 1, VAE_P_VEC = 2 } VaeParamKind;

typedef struct {
    char name[96];     /* the safetensors name */
    VaeParamKind kind;
    int cout, cin, k;  /* VEC: cout = C */
    int cin_pad;       /* stored row stride in channels (VAE_CIN_PAD for conv_in, else cin) */
    size_t offset;     /* elements into the parameter buffer (multiple of 64) */
    size_t numel;      /* cout·k·k·cin_pad (VEC: cout) */
} VaeParamInfo;

/* residual block res(cin -> cout): pointers into the parameter buffer (ctx->act) */
typedef struct {
    int cin, cout;
    void *norm1;            /* [cin] */
    void *conv1_w, *conv1_b; /* [cout, 3, 3, cin], [cout] */
    void *norm2;            /* [cout] */
    void *conv2_w, *conv2_b; /* [cout, 3, 3, cout], [cout] */
    void *sc_w, *sc_b;      /* [cout, 1, 1, cin], [cout]; NULL when cin == cout */
} VaeRes;

typedef enum { VAE_L_RES = 0, VAE_L_DOWN = 1 } VaeLayerKind;

/* one entry of encoder.down_blocks */
typedef struct {
    VaeLayerKind kind;
    VaeRes res;              /* VAE_L_RES */
    int c;                   /* VAE_L_DOWN: channels */
    void *down_w, *down_b;   /* VAE_L_DOWN: [c, 3, 3, c], [c] (resample.1, stride 2) */
} VaeLayer;

#define VAE_MAX_LAYERS (VAE_MAX_LEVELS * 9)

struct VaeModel {
    VaeConfig cfg;
    OpCtx *ctx;
    /* ONE parameter buffer (ctx->act, device memory on CUDA) and its table */
    void *params;
    size_t params_numel;
    int ntensors;
    VaeParamInfo *info;
    size_t nparams_used;
    char hash[24];
    /* the graph, pointing into params (spec §2.3) */
    void *conv_in_w, *conv_in_b; /* [dims0, 3, 3, VAE_CIN_PAD], [dims0] */
    int nlayers;
    VaeLayer layers[VAE_MAX_LAYERS];
    VaeRes mid0, mid1;
    void *attn_norm;             /* [C] */
    void *qkv_w, *qkv_b;         /* [3C, C], [3C] */
    void *proj_w, *proj_b;       /* [C, 1, 1, C], [C] */
    void *norm_out;              /* [C] */
    void *conv_out_w, *conv_out_b; /* [2z, 3, 3, C], [2z] */
    void *quant_w, *quant_b;     /* [2z, 1, 1, 2z], [2z] */
    /* activation buffers (vae_forward.c): four of act_cap elements, a workspace, f32 outputs */
    void *buf[4];
    size_t act_cap;
    void *ws;
    size_t ws_bytes;
    float *d_mean, *d_logvar;
    size_t out_cap;
    void *pin;                   /* CUDA: pinned host staging for the pixel upload / latent download */
    size_t pin_bytes;
    VaeTapFn tap;
    void *tap_user;
};

/* vae_forward.c */
void vae_free_buffers_(VaeModel *m);

#endif
