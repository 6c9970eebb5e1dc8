/* ops.c: the OpCtx, memory and conversions; CPU paths here, CUDA paths in ops.cu. */
#include "ops.h"
#include "err.h"

#include <pthread.h>
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
int opctx_fork_cuda_(char *err, OpCtx *side);
void op_wait_for_cuda_(OpCtx *waiter, OpCtx *from);
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

int opctx_fork(char *err, OpCtx *side, const OpCtx *c) {
    *side = *c;
    side->forked = 1;
    side->stream = side->event = NULL;
#ifdef QIE_CUDA
    if (IS_CUDA(c)) return opctx_fork_cuda_(err, side);
#endif
    (void)err;
    return 0;
}

void op_wait_for(OpCtx *waiter, OpCtx *from) {
#ifdef QIE_CUDA
    if (IS_CUDA(waiter)) op_wait_for_cuda_(waiter, from);
#endif
    (void)waiter;
    (void)from;
}

/* ---- allocation accounting: (pointer, bytes) of every live op_alloc ---- */

typedef struct {
    void *p;
    size_t bytes;
} Alloc_;
static pthread_mutex_t mem_lock_ = PTHREAD_MUTEX_INITIALIZER;
static Alloc_ *mem_tab_;
static size_t mem_n_, mem_cap_, mem_cur_, mem_peak_;

static void mem_note_(void *p, size_t bytes) {
    pthread_mutex_lock(&mem_lock_);
    if (mem_n_ == mem_cap_) {
        size_t cap = mem_cap_ ? 2 * mem_cap_ : 256;
        Alloc_ *t = realloc(mem_tab_, cap * sizeof *t);
        if (!t) { /* accounting is advisory: a full table only stops counting */
            pthread_mutex_unlock(&mem_lock_);
            return;
        }
        mem_tab_ = t;
        mem_cap_ = cap;
    }
    mem_tab_[mem_n_++] = (Alloc_){p, bytes};
    mem_cur_ += bytes;
    if (mem_cur_ > mem_peak_) mem_peak_ = mem_cur_;
    pthread_mutex_unlock(&mem_lock_);
}

static void mem_forget_(void *p) {
    pthread_mutex_lock(&mem_lock_);
    for (size_t i = mem_n_; i-- > 0;)
        if (mem_tab_[i].p == p) {
            mem_cur_ -= mem_tab_[i].bytes;
            mem_tab_[i] = mem_tab_[--mem_n_];
            break;
        }
    pthread_mutex_unlock(&mem_lock_);
}

size_t op_mem_peak(void) {
    pthread_mutex_lock(&mem_lock_);
    size_t v = mem_peak_;
    pthread_mutex_unlock(&mem_lock_);
    return v;
}

const char *opctx_device_name(const OpCtx *c) { return c->dev == QIE_DEV_CUDA ? "cuda" : "cpu"; }

size_t op_act_size(const OpCtx *c) { return dtype_size(c->act); }

void op_cpu_grads_f32(QieDtype gdt, const char *op) {
    if (gdt == QIE_DT_F32) return;
    fprintf(stderr, "%s: the CPU backend takes f32 weight gradients, not %s\n", op, dtype_name(gdt));
    abort();
}

void *op_alloc(OpCtx *c, size_t bytes) {
    if (!bytes) return NULL;
#ifdef QIE_CUDA
    if (IS_CUDA(c)) {
        void *d = op_alloc_cuda_(c, bytes);
        mem_note_(d, bytes);
        return d;
    }
#endif
    (void)c;
    /* 64-byte aligned so that vector loads never split a cache line at the start */
    void *p = NULL;
    if (posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63)) {
        fprintf(stderr, "op_alloc: out of memory for %zu bytes\n", bytes);
        exit(EXIT_FAILURE);
    }
    memset(p, 0, bytes);
    mem_note_(p, bytes);
    return p;
}

void op_free(OpCtx *c, void *p) {
    if (!p) return;
    mem_forget_(p);
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
