/* conv2d.h: 2-D convolution over NHWC activations (the VAE's convs after the still-image
 * reduction of spec/model.md §2.4). CPU fp32 reference and dispatcher in conv2d.c; CUDA
 * launchers in conv2d.cu (bf16 in/out, fp32 accumulation): 1×1 convs are one cuBLASLt GEMM,
 * k×k convs with Cin % 8 == 0, Cout % 8 == 0 and Cout ≤ 256 an implicit-GEMM tensor-core kernel
 * (conv2d_igemm.cuh: no workspace, bias and residual fused), other k×k convs an im2col into the
 * caller's workspace (in chunks of output pixels) + GEMM.
 *
 * Layouts (row-major, last index fastest):
 *   inp      act [B, H, W, Cin]
 *   w        act [Cout, k, k, Cin]   (PyTorch's [Cout, Cin, k, k] permuted once, at load time)
 *   bias     act [Cout] or NULL
 *   residual act [B, Ho, Wo, Cout] or NULL: added after the bias (the res-block skip)
 *   out      act [B, Ho, Wo, Cout], Ho = (H + pad_t + pad_b - k) / stride + 1 (same for W);
 *            must not alias inp; may alias residual.
 * Zero padding is per side, so downsample2d's ZeroPad2d((0,1,0,1)) is pad_b = pad_r = 1.
 *
 * defines: Conv2dShape, conv2d_out_h/w, conv2d_forward_cpu, op_conv2d, op_conv2d_workspace */
#ifndef QIE_KERNELS_CONV2D_H
#define QIE_KERNELS_CONV2D_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int B, H, W, Cin;   /* input */
    int Cout, k, stride;
    int pad_t, pad_b, pad_l, pad_r;
} Conv2dShape;

static inline int conv2d_out_h(const Conv2dShape *s) { return (s->H + s->pad_t + s->pad_b - s->k) / s->stride + 1; }
static inline int conv2d_out_w(const Conv2dShape *s) { return (s->W + s->pad_l + s->pad_r - s->k) / s->stride + 1; }

void conv2d_forward_cpu(float *out, const float *inp, const float *w, const float *bias, const float *residual,
                        const Conv2dShape *s);

/* Workspace bytes op_conv2d needs at least (one output row's im2col on CUDA; 0 on CPU and for
 * 1×1 stride-1 convs). More workspace means fewer, larger GEMMs. */
size_t op_conv2d_workspace(const OpCtx *c, const Conv2dShape *s);

void op_conv2d(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, const void *residual,
               const Conv2dShape *s, void *ws, size_t ws_bytes);

#ifdef QIE_CUDA
void conv2d_forward(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, const void *residual,
                    const Conv2dShape *s, void *ws, size_t ws_bytes);
/* Tests and benchmarks: force the k×k path process-wide. v = -2: automatic (the default);
 * -1: im2col + cuBLASLt; 0 .. conv2d_variant_count()-1: that implicit-GEMM tile configuration
 * (also for 1×1 convs, which otherwise stay on cuBLASLt). Returns 0, or -1 for a bad v. */
int conv2d_set_variant(int v);
int conv2d_variant_count(void);
const char *conv2d_variant_name(int v);
#endif

#ifdef __cplusplus
}
#endif
#endif
