// ops.cu: the CUDA half of ops.c: context (stream, cuBLASLt handle, workspace), memory, and
// f32 <-> bf16 conversion kernels.
#include <cublasLt.h>
#include <cuda_bf16.h>

#include "check_cuda.h"
#include "ops.h"

extern "C" {
#include "err.h"
}

#define CUBLASLT_WORKSPACE (32u << 20)

// the context's own queue and the event that marks it (op_wait_for)
static void queue_(OpCtx *c) {
    cudaStream_t s;
    CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    c->stream = s;
    cudaEvent_t ev;
    CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    c->event = ev;
}

extern "C" int opctx_init_cuda_(char *err, OpCtx *c, int index) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || index >= n) {
        qie_seterr(err, "cuda:%d: %d CUDA devices are visible", index, n);
        return QIE_EUNSUPPORTED;
    }
    CUDA_CHECK(cudaSetDevice(index));
    queue_(c);
    cublasLtHandle_t h;
    CUBLAS_CHECK(cublasLtCreate(&h));
    c->cublaslt = h;
    CUDA_CHECK(cudaMalloc(&c->workspace, CUBLASLT_WORKSPACE));
    c->workspace_bytes = CUBLASLT_WORKSPACE;
    return 0;
}

extern "C" int opctx_fork_cuda_(char *err, OpCtx *side) {
    (void)err;
    queue_(side);
    return 0;
}

extern "C" void op_wait_for_cuda_(OpCtx *waiter, OpCtx *from) {
    CUDA_CHECK(cudaEventRecord((cudaEvent_t)from->event, (cudaStream_t)from->stream));
    CUDA_CHECK(cudaStreamWaitEvent((cudaStream_t)waiter->stream, (cudaEvent_t)from->event, 0));
}

extern "C" void opctx_free_cuda_(OpCtx *c) {
    if (c->stream) CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)c->stream));
    if (c->event) CUDA_CHECK(cudaEventDestroy((cudaEvent_t)c->event));
    if (!c->forked) { /* a fork shares the handle and workspace of its parent */
        if (c->workspace) CUDA_CHECK(cudaFree(c->workspace));
        if (c->cublaslt) CUBLAS_CHECK(cublasLtDestroy((cublasLtHandle_t)c->cublaslt));
    }
    if (c->stream) CUDA_CHECK(cudaStreamDestroy((cudaStream_t)c->stream));
}

extern "C" void *op_alloc_cuda_(OpCtx *c, size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes));
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, (cudaStream_t)c->stream));
    return p;
}

extern "C" void op_free_cuda_(OpCtx *c, void *p) {
    CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)c->stream));
    CUDA_CHECK(cudaFree(p));
}

extern "C" void op_zero_cuda_(OpCtx *c, void *p, size_t bytes) {
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, (cudaStream_t)c->stream));
}

extern "C" void op_sync_cuda_(OpCtx *c) { CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)c->stream)); }

__global__ void bf16_to_f32_kernel1(float *dst, const __nv_bfloat16 *src, size_t n) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) dst[i] = __bfloat162float(src[i]);
}

static unsigned grid_(size_t n) { return (unsigned)((n + 255) / 256); }

// f32 -> bf16 in float4 steps over a grid-stride loop (any n: the tail element by element; any
// alignment: element by element).
__global__ void f32_to_bf16_kernel4(__nv_bfloat16 *dst, const float *src, size_t n) {
    const size_t n4 = (((uintptr_t)src | (uintptr_t)dst) & 15) ? 0 : n / 4, stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n4; i += stride) {
        float4 v = reinterpret_cast<const float4 *>(src)[i];
        reinterpret_cast<__nv_bfloat162 *>(dst)[2 * i] = __floats2bfloat162_rn(v.x, v.y);
        reinterpret_cast<__nv_bfloat162 *>(dst)[2 * i + 1] = __floats2bfloat162_rn(v.z, v.w);
    }
    for (size_t i = 4 * n4 + (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        dst[i] = __float2bfloat16_rn(src[i]);
}

extern "C" void op_f32_to_act_cuda_(OpCtx *c, void *dst, const float *src, size_t n) {
    if (!n) return;
    size_t g = (n + 4 * 512 - 1) / (4 * 512);
    f32_to_bf16_kernel4<<<(unsigned)(g > 4096 ? 4096 : g), 512, 0, (cudaStream_t)c->stream>>>((__nv_bfloat16 *)dst, src, n);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void op_act_to_f32_cuda_(OpCtx *c, float *dst, const void *src, size_t n) {
    if (!n) return;
    bf16_to_f32_kernel1<<<grid_(n), 256, 0, (cudaStream_t)c->stream>>>(dst, (const __nv_bfloat16 *)src, n);
    CUDA_CHECK(cudaGetLastError());
}

// Host f32 -> device bf16 through a temporary f32 device buffer: one conversion kernel, so the
// rounding is the device's round-to-nearest-even, identical to dtype.h's f32_to_bf16.
extern "C" void op_upload_act_cuda_(OpCtx *c, void *d_dst, const float *h_src, size_t n) {
    if (!n) return;
    float *tmp;
    cudaStream_t s = (cudaStream_t)c->stream;
    CUDA_CHECK(cudaMallocAsync((void **)&tmp, n * sizeof(float), s));
    CUDA_CHECK(cudaMemcpyAsync(tmp, h_src, n * sizeof(float), cudaMemcpyHostToDevice, s));
    op_f32_to_act_cuda_(c, d_dst, tmp, n);
    CUDA_CHECK(cudaFreeAsync(tmp, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
}

extern "C" void op_download_act_cuda_(OpCtx *c, float *h_dst, const void *d_src, size_t n) {
    if (!n) return;
    float *tmp;
    cudaStream_t s = (cudaStream_t)c->stream;
    CUDA_CHECK(cudaMallocAsync((void **)&tmp, n * sizeof(float), s));
    op_act_to_f32_cuda_(c, tmp, d_src, n);
    CUDA_CHECK(cudaMemcpyAsync(h_dst, tmp, n * sizeof(float), cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaFreeAsync(tmp, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
}

// kind 1: host -> device, 2: device -> host, 3: device -> device
extern "C" void op_copy_cuda_(OpCtx *c, void *dst, const void *src, size_t bytes, int kind) {
    cudaMemcpyKind k = kind == 1 ? cudaMemcpyHostToDevice : kind == 2 ? cudaMemcpyDeviceToHost : cudaMemcpyDeviceToDevice;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, k, (cudaStream_t)c->stream));
    if (kind != 3) CUDA_CHECK(cudaStreamSynchronize((cudaStream_t)c->stream));
}
