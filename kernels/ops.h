/* ops.h: the one interface that models (DiT, VAE, Qwen2.5-VL) are written against, once.
 *
 * An OpCtx names a backend: CPU (plain C, fp32 everything: the readable reference that CI runs)
 * or CUDA (bf16 activations and compute weights, fp32 accumulation, fp32 gradients of weights
 * and fp32 master weights). Model code holds `void *` activation buffers whose element type is
 * ctx->act and calls op_* functions; each op family lives in kernels/<op>.{h,c,cu}:
 *   <op>.c   the fp32 reference (<op>_forward_cpu, ...) and the op_<op> dispatcher
 *   <op>.cu  the CUDA launchers (<op>_forward, ...) and kernels, built with make CUDA=1
 * A dispatcher calls the CUDA twin when ctx->dev == QIE_DEV_CUDA (QIE_CUDA builds only).
 *
 * Conventions for every op:
 *   - "act" buffers are ctx->act (f32 on CPU, bf16 on CUDA); "f32" buffers are always float;
 *     buffers are device memory on CUDA (op_alloc), host memory on CPU.
 *   - Linear weights are [out, in] (PyTorch order); tensors are row-major.
 *   - Weight/bias gradients are f32 and ACCUMULATE (+=): gradient accumulation and weights
 *     shared across uses come for free; callers zero them (op_zero) at the start of a step.
 *     The "_g" forms take them in bf16 too (CUDA), still accumulated.
 *   - Input gradients (d_inp) are act and are OVERWRITTEN unless the op says otherwise.
 *   - Ops run asynchronously on ctx->stream on CUDA; op_sync waits. Ops return void and treat
 *     CUDA failures as fatal (check_cuda.h): after one the device state is unknown. */
#ifndef QIE_KERNELS_OPS_H
#define QIE_KERNELS_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { QIE_DEV_CPU = 0, QIE_DEV_CUDA = 1 } QieDevice;

typedef struct {
    QieDevice dev;
    QieDtype act;          /* QIE_DT_F32 on CPU, QIE_DT_BF16 on CUDA */
    int device_index;      /* CUDA device ordinal */
    void *stream;          /* cudaStream_t */
    void *cublaslt;        /* cublasLtHandle_t */
    void *workspace;       /* cuBLASLt workspace (device) */
    size_t workspace_bytes;
    void *event;           /* cudaEvent_t marking this ctx's stream for op_wait_for */
    int forked;            /* made by opctx_fork: owns its stream and event only */
} OpCtx;

/* dev_name: "cpu" or "cuda" / "cuda:N". QIE_EUNSUPPORTED for cuda in a CPU-only build. */
int opctx_init(char *err, OpCtx *c, const char *dev_name);
void opctx_free(OpCtx *c);
const char *opctx_device_name(const OpCtx *c);
/* A second queue on c's device for work that overlaps c's own (prefetching the next block's
 * weights while this one computes): *side is c with its own stream and event, sharing the
 * cuBLASLt handle (GEMMs stay on c). Release with opctx_free. On the CPU a plain copy. */
int opctx_fork(char *err, OpCtx *side, const OpCtx *c);
/* Work queued on waiter from now on starts after everything queued on from so far (an event;
 * the host does not wait). No-op on the CPU, where every op is synchronous. */
void op_wait_for(OpCtx *waiter, OpCtx *from);

/* Memory on the ctx's device, zero-filled; NULL only when bytes == 0 (failure is fatal). */
void *op_alloc(OpCtx *c, size_t bytes);
void op_free(OpCtx *c, void *p); /* NULL is a no-op */
/* The most bytes op_alloc held at once since the process started, over every context and device
 * (torch.cuda.max_memory_allocated's measure: buffers, not the CUDA context). */
size_t op_mem_peak(void);
void op_zero(OpCtx *c, void *p, size_t bytes);
void op_sync(OpCtx *c);
size_t op_act_size(const OpCtx *c); /* bytes per activation element */
/* The CPU kernels take f32 weight gradients only (the CPU's compute dtype is f32, so the trainer
 * never hands them another): anything else is a programming error, reported and fatal. */
void op_cpu_grads_f32(QieDtype gdt, const char *op);

/* Host f32 <-> device act (converting to/from bf16 on CUDA; round to nearest even). */
void op_upload_act(OpCtx *c, void *d_dst, const float *h_src, size_t n);
void op_download_act(OpCtx *c, float *h_dst, const void *d_src, size_t n);
/* Host f32 <-> device f32. */
void op_upload_f32(OpCtx *c, float *d_dst, const float *h_src, size_t n);
void op_download_f32(OpCtx *c, float *h_dst, const float *d_src, size_t n);
/* device -> device copy of bytes (same device) */
void op_copy(OpCtx *c, void *dst, const void *src, size_t bytes);
/* device act <-> device f32 */
void op_act_to_f32(OpCtx *c, float *dst, const void *src, size_t n);
void op_f32_to_act(OpCtx *c, void *dst, const float *src, size_t n);

/* ---- matmul (kernels/matmul.{c,cu}) ----
 * out[M,N] = inp[M,K] · w[N,K]ᵀ + bias[N]   (bias may be NULL; act in, act out). */
void op_matmul(OpCtx *c, void *out, const void *inp, const void *w, const void *bias, int M, int K, int N);
/* Backward of op_matmul. Any output may be NULL to skip it.
 *   d_inp[M,K]   = d_out · w                (act, overwritten)
 *   d_w[N,K]    += d_outᵀ · inp             (f32, accumulated)
 *   d_bias[N]   += Σ_rows d_out             (f32, accumulated) */
void op_matmul_backward(OpCtx *c, void *d_inp, float *d_w, float *d_bias, const void *d_out, const void *inp,
                        const void *w, int M, int K, int N);
/* The same with d_w and d_bias of dtype gdt: QIE_DT_F32, or (CUDA only) QIE_DT_BF16, accumulated
 * in fp32 and rounded once per call (the trainer's bf16 gradient shard). The same "_g" form
 * exists for every op with a weight gradient (op_rmsnorm_backward_g, op_qkv_norm_rope_backward_g). */
void op_matmul_backward_g(OpCtx *c, void *d_inp, void *d_w, void *d_bias, QieDtype gdt, const void *d_out,
                          const void *inp, const void *w, int M, int K, int N);

/* ---- elementwise (kernels/elementwise.{c,cu}) ---- */
void op_add(OpCtx *c, void *out, const void *a, const void *b, size_t n);      /* out = a + b */
void op_add_inplace(OpCtx *c, void *acc, const void *x, size_t n);             /* acc += x */
void op_scale(OpCtx *c, void *x, float s, size_t n);                           /* x *= s */
void op_silu(OpCtx *c, void *out, const void *inp, size_t n);
void op_silu_backward(OpCtx *c, void *d_inp, const void *d_out, const void *inp, size_t n); /* overwrite */

#ifdef __cplusplus
}
#endif
#endif
