/* ops.c: the OpCtx, memory and conversions; CPU paths here, CUDA paths in ops.cu. */
#include "ops.h"
#include "err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef QIE_CUDA
/* ops.cu */
int opctx_init_cuda_(char *err, OpCtx *c, int index);
void opctx_free_cuda_(OpCtx *c);
void *op_alloc_cuda_(OpCtx *c, size_t bytes);
void op_free_cuda_(OpCtx *c, void *p);
void op_zero_cuda_(OpCtx *c, void *p, size_t bytes);
void op_sync_cuda_(OpCtx *c);
void op_upload_act_cuda_(OpCtx *c, void *d_dst, const float *h_src, size_t n);
void op_download_act_cuda_(OpCtx *c, float *h_dst, const void *d_src, size_t n);
void op_copy_cuda_(OpCtx *c, void *dst, const void *src, size_t bytes, int kind);
void op_act_to_f32_cuda_(OpCtx *c, float *dst, const void *src, size_t n);
void op_f32_to_act_cuda_(OpCtx *c, void *dst, const float *src, size_t n);
#define IS_CUDA(c) ((c)->dev == QIE_DEV_CUDA)
#else
#define IS_CUDA(c) 0
#endif

int opctx_init(char *err, OpCtx *c, const char *dev_name) {
    memset(c, 0, sizeof *c);
    if (!strcmp(dev_name, "cpu")) {
        c->dev = QIE_DEV_CPU;
        c->act = QIE_DT_F32;
        return 0;
    }
    if (!strncmp(dev_name, "cuda", 4)) {
        int index = 0;
        if (dev_name[4] == ':') index = atoi(dev_name + 5);
        else if (dev_name[4]) goto bad;
#ifdef QIE_CUDA
        c->dev = QIE_DEV_CUDA;
        c->act = QIE_DT_BF16;
        c->device_index = index;
        return opctx_init_cuda_(err, c, index);
#else
        (void)index;
        qie_seterr(err, "--device %s: this qie was built without CUDA (make CUDA=1)", dev_name);
        return QIE_EUNSUPPORTED;
#endif
    }
bad:
    qie_seterr(err, "--device '%s': expected cpu, cuda or cuda:N", dev_name);
    return QIE_EINVAL;
}

void opctx_free(OpCtx *c) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) opctx_free_cuda_(c);
#endif
    memset(c, 0, sizeof *c);
}

const char *opctx_device_name(const OpCtx *c) { return c->dev == QIE_DEV_CUDA ? "cuda" : "cpu"; }

size_t op_act_size(const OpCtx *c) { return dtype_size(c->act); }

void *op_alloc(OpCtx *c, size_t bytes) {
    if (!bytes) return NULL;
#ifdef QIE_CUDA
    if (IS_CUDA(c)) return op_alloc_cuda_(c, bytes);
#endif
    (void)c;
    /* 64-byte aligned so that vector loads never split a cache line at the start */
    void *p = NULL;
    if (posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63)) {
        fprintf(stderr, "op_alloc: out of memory for %zu bytes\n", bytes);
        exit(EXIT_FAILURE);
    }
    memset(p, 0, bytes);
    return p;
}

void op_free(OpCtx *c, void *p) {
    if (!p) return;
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_free_cuda_(c, p); return; }
#endif
    (void)c;
    free(p);
}

void op_zero(OpCtx *c, void *p, size_t bytes) {
    if (!bytes) return;
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_zero_cuda_(c, p, bytes); return; }
#endif
    (void)c;
    memset(p, 0, bytes);
}

void op_sync(OpCtx *c) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) op_sync_cuda_(c);
#endif
    (void)c;
}

void op_upload_act(OpCtx *c, void *d_dst, const float *h_src, size_t n) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_upload_act_cuda_(c, d_dst, h_src, n); return; }
#endif
    (void)c;
    memcpy(d_dst, h_src, n * sizeof(float));
}

void op_download_act(OpCtx *c, float *h_dst, const void *d_src, size_t n) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_download_act_cuda_(c, h_dst, d_src, n); return; }
#endif
    (void)c;
    memcpy(h_dst, d_src, n * sizeof(float));
}

void op_upload_f32(OpCtx *c, float *d_dst, const float *h_src, size_t n) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_copy_cuda_(c, d_dst, h_src, n * sizeof(float), 1); return; }
#endif
    (void)c;
    memcpy(d_dst, h_src, n * sizeof(float));
}

void op_download_f32(OpCtx *c, float *h_dst, const float *d_src, size_t n) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_copy_cuda_(c, h_dst, d_src, n * sizeof(float), 2); return; }
#endif
    (void)c;
    memcpy(h_dst, d_src, n * sizeof(float));
}

void op_copy(OpCtx *c, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_copy_cuda_(c, dst, src, bytes, 3); return; }
#endif
    (void)c;
    memmove(dst, src, bytes);
}

void op_act_to_f32(OpCtx *c, float *dst, const void *src, size_t n) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_act_to_f32_cuda_(c, dst, src, n); return; }
#endif
    (void)c;
    memmove(dst, src, n * sizeof(float));
}

void op_f32_to_act(OpCtx *c, void *dst, const float *src, size_t n) {
#ifdef QIE_CUDA
    if (IS_CUDA(c)) { op_f32_to_act_cuda_(c, dst, src, n); return; }
#endif
    (void)c;
    memmove(dst, src, n * sizeof(float));
}
