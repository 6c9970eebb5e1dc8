// vae_ops.cu: CUDA twins of vae_ops.c on bf16 activations (vae_ops.h has the contract).
#include <cuda_bf16.h>
#include <math.h>
#include <stdint.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "check_cuda.h"
#include "conv2d.h"
#include "matmul.h"
#include "vae_ops.h"

typedef __nv_bfloat16 bf16;

static __device__ __forceinline__ float rbf(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }

__device__ __forceinline__ float warp_sum_(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max_(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// One warp per pixel row. The rounding steps follow QwenImageRMS_norm.forward on bf16:
// F.normalize(x.float()).to(bf16), then (· scale) -> bf16, (· gamma) -> bf16, SiLU -> bf16.
// In place is safe: each lane reads its own elements before writing them.
__global__ void rmsnorm_channels_kernel1(bf16 *out, const bf16 *inp, const bf16 *gamma, int M, int C, float scale,
                                         int silu) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= M) return;
    const bf16 *x = inp + (int64_t)row * C;
    bf16 *y = out + (int64_t)row * C;
    float ss = 0.0f;
    for (int i = lane; i < C; i += 32) {
        float v = __bfloat162float(x[i]);
        ss += v * v;
    }
    ss = warp_sum_(ss);
    const float denom = fmaxf(sqrtf(ss), 1e-12f);
    for (int i = lane; i < C; i += 32) {
        float v = rbf(__bfloat162float(x[i]) / denom);
        v = rbf(v * scale);
        v = rbf(v * __bfloat162float(gamma[i]));
        if (silu) v = v / (1.0f + expf(-v));
        y[i] = __float2bfloat16_rn(v);
    }
}

// C % 8 == 0 and C ≤ 8·32·CPL: a group of G lanes per row (32/G rows per warp), each lane holding
// CPL 16-byte chunks (8 channels) in registers between the sum and the scaling: one read of x,
// 16-byte loads and stores. The same per-element arithmetic as kernel1 (bit-identical except for
// the order of the sum of squares).
template <int G, int CPL>
__global__ void rmsnorm_channels_kernel2(bf16 *out, const bf16 *inp, const bf16 *gamma, int M, int C, float scale,
                                         int silu) {
    const int lane = threadIdx.x % 32, sub = lane % G;
    const int64_t row = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) / G;
    const int C8 = C / 8;
    const bool live = row < M;
    uint4 v[CPL];
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < CPL; j++) {
        const int ch = sub + j * G;
        v[j] = make_uint4(0, 0, 0, 0);
        if (live && ch < C8) v[j] = ((const uint4 *)(inp + row * C))[ch];
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&v[j];
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(h[e]);
            ss += f.x * f.x + f.y * f.y;
        }
    }
#pragma unroll
    for (int o = G / 2; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (!live) return;
    const float denom = fmaxf(sqrtf(ss), 1e-12f);
#pragma unroll
    for (int j = 0; j < CPL; j++) {
        const int ch = sub + j * G;
        if (ch >= C8) continue;
        const uint4 gv = ((const uint4 *)gamma)[ch];
        const __nv_bfloat162 *h = (const __nv_bfloat162 *)&v[j], *g = (const __nv_bfloat162 *)&gv;
        uint4 r;
        __nv_bfloat162 *o2 = (__nv_bfloat162 *)&r;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const float2 f = __bfloat1622float2(h[e]), gf = __bfloat1622float2(g[e]);
            float a = rbf(f.x / denom), b = rbf(f.y / denom);
            a = rbf(a * scale);
            b = rbf(b * scale);
            a = rbf(a * gf.x);
            b = rbf(b * gf.y);
            if (silu) {
                a = a / (1.0f + expf(-a));
                b = b / (1.0f + expf(-b));
            }
            o2[e] = __floats2bfloat162_rn(a, b);
        }
        ((uint4 *)(out + row * C))[ch] = r;
    }
}

template <int G, int CPL>
static void rmsnorm2_launch_(OpCtx *c, void *out, const void *inp, const void *gamma, int M, int C, float scale,
                             int silu) {
    const int threads = 256;
    const int64_t rows_per_block = threads / G;
    const unsigned blocks = (unsigned)((M + rows_per_block - 1) / rows_per_block);
    rmsnorm_channels_kernel2<G, CPL><<<blocks, threads, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)inp, (const bf16 *)gamma, M, C, scale, silu);
    CUDA_CHECK(cudaGetLastError());
}

extern "C" void rmsnorm_channels_forward(OpCtx *c, void *out, const void *inp, const void *gamma, int M, int C,
                                         int silu) {
    if (M <= 0) return;
    const float scale = (float)sqrt((double)C);
    const bool al = ((uintptr_t)out % 16 == 0) && ((uintptr_t)inp % 16 == 0) && ((uintptr_t)gamma % 16 == 0);
    if (al && C % 8 == 0 && C <= 8 * 32 * 2) {
        const int C8 = C / 8;
        if (C8 <= 8) rmsnorm2_launch_<8, 1>(c, out, inp, gamma, M, C, scale, silu);
        else if (C8 <= 16) rmsnorm2_launch_<16, 1>(c, out, inp, gamma, M, C, scale, silu);
        else if (C8 <= 32) rmsnorm2_launch_<32, 1>(c, out, inp, gamma, M, C, scale, silu);
        else rmsnorm2_launch_<32, 2>(c, out, inp, gamma, M, C, scale, silu);
        return;
    }
    const int warps = 8;
    rmsnorm_channels_kernel1<<<(M + warps - 1) / warps, warps * 32, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)inp, (const bf16 *)gamma, M, C, scale, silu);
    CUDA_CHECK(cudaGetLastError());
}

// Row softmax of fp32 scores into bf16 probabilities, one block per row (N up to any size).
__global__ void softmax_rows_kernel1(bf16 *p, int ldp, const float *s, int N, int ld) {
    const float *x = s + (int64_t)blockIdx.x * ld;
    bf16 *y = p + (int64_t)blockIdx.x * ldp;
    __shared__ float red[32];
    const int lane = threadIdx.x % 32, wid = threadIdx.x / 32, nw = blockDim.x / 32;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < N; i += blockDim.x) mx = fmaxf(mx, x[i]);
    mx = warp_max_(mx);
    if (lane == 0) red[wid] = mx;
    __syncthreads();
    mx = lane < nw ? red[lane] : -INFINITY;
    mx = warp_max_(mx);
    __syncthreads();
    float sum = 0.0f;
    for (int i = threadIdx.x; i < N; i += blockDim.x) sum += expf(x[i] - mx);
    sum = warp_sum_(sum);
    if (lane == 0) red[wid] = sum;
    __syncthreads();
    sum = lane < nw ? red[lane] : 0.0f;
    sum = warp_sum_(sum);
    const float inv = 1.0f / sum;
    for (int i = threadIdx.x; i < N; i += blockDim.x) y[i] = __float2bfloat16_rn(expf(x[i] - mx) * inv);
}

// Row softmax with the row held in registers: VPT float4 per thread, 256 threads, so rows of up to
// 1024·VPT scores (ld % 4 == 0, 16-byte aligned rows). One read of S (from L2 when the chunk was
// just written there), fp32 max / sum / exp as kernel1, one 8-byte store per 4 probabilities.
template <int VPT>
__global__ void __launch_bounds__(256) softmax_rows_kernel2(bf16 *p, int ldp, const float *s, int N, int ld) {
    const float4 *x = (const float4 *)(s + (int64_t)blockIdx.x * ld);
    uint2 *y = (uint2 *)(p + (int64_t)blockIdx.x * ldp);
    __shared__ float red[8];
    const int lane = threadIdx.x % 32, wid = threadIdx.x / 32;
    float4 v[VPT];
    float mx = -INFINITY;
#pragma unroll
    for (int j = 0; j < VPT; j++) {
        const int i4 = threadIdx.x + j * 256, i = 4 * i4;
        v[j] = make_float4(-INFINITY, -INFINITY, -INFINITY, -INFINITY);
        if (i < N) {
            v[j] = x[i4];
            if (i + 1 >= N) v[j].y = -INFINITY;
            if (i + 2 >= N) v[j].z = -INFINITY;
            if (i + 3 >= N) v[j].w = -INFINITY;
        }
        mx = fmaxf(mx, fmaxf(fmaxf(v[j].x, v[j].y), fmaxf(v[j].z, v[j].w)));
    }
    mx = warp_max_(mx);
    if (lane == 0) red[wid] = mx;
    __syncthreads();
    mx = red[lane % 8];
    mx = warp_max_(mx);
    __syncthreads();
    float sum = 0.0f;
#pragma unroll
    for (int j = 0; j < VPT; j++) {
        v[j].x = expf(v[j].x - mx);
        v[j].y = expf(v[j].y - mx);
        v[j].z = expf(v[j].z - mx);
        v[j].w = expf(v[j].w - mx);
        sum += (v[j].x + v[j].y) + (v[j].z + v[j].w);
    }
    sum = warp_sum_(sum);
    if (lane == 0) red[wid] = sum;
    __syncthreads();
    sum = lane < 8 ? red[lane] : 0.0f;
    sum = warp_sum_(sum);
    const float inv = 1.0f / sum;
#pragma unroll
    for (int j = 0; j < VPT; j++) {
        const int i4 = threadIdx.x + j * 256;
        if (4 * i4 >= ld) break;
        uint2 r;
        __nv_bfloat162 *o = (__nv_bfloat162 *)&r;
        o[0] = __floats2bfloat162_rn(v[j].x * inv, v[j].y * inv);
        o[1] = __floats2bfloat162_rn(v[j].z * inv, v[j].w * inv);
        y[i4] = r;
    }
}

static void softmax_rows_(OpCtx *c, bf16 *P, int ldp, const float *S, int rows, int N, int ld) {
    cudaStream_t st = (cudaStream_t)c->stream;
    if (N <= 1024) softmax_rows_kernel2<1><<<rows, 256, 0, st>>>(P, ldp, S, N, ld);
    else if (N <= 4096) softmax_rows_kernel2<4><<<rows, 256, 0, st>>>(P, ldp, S, N, ld);
    else if (N <= 8192) softmax_rows_kernel2<8><<<rows, 256, 0, st>>>(P, ldp, S, N, ld);
    else if (N <= 16384) softmax_rows_kernel2<16><<<rows, 256, 0, st>>>(P, ldp, S, N, ld);
    else softmax_rows_kernel1<<<rows, 256, 0, st>>>(P, ldp, S, N, ld);
    CUDA_CHECK(cudaGetLastError());
}

// Per image: for each block of `big` query rows, sub-chunks of `sub` rows each get
// S = Q·Kᵀ/sqrt(C) (fp32, sized to stay in L2) and P = softmax(S) (bf16, into the block's P);
// then O = P·V for the whole block (one GEMM with many output tiles). Score rows have a leading
// dimension rounded up to 8 so every bf16 row starts 16-byte aligned.
extern "C" void vae_attention_forward(OpCtx *c, void *out, const void *qkv, int B, int N, int C, void *ws,
                                      size_t ws_bytes) {
    const int ld = (N + 7) & ~7;
    const size_t srow = (size_t)ld * 4, prow = (size_t)ld * 2;
    int64_t fit = ws_bytes > 256 ? (int64_t)((ws_bytes - 256) / (srow + prow)) : 0;
    if (fit < 1) {
        fprintf(stderr, "vae_attention_forward: workspace of %zu bytes is below one score row (N=%d)\n", ws_bytes, N);
        exit(EXIT_FAILURE);
    }
    static int l2 = -1;
    if (l2 < 0) {
        int dev = 0, v = 0;
        CUDA_CHECK(cudaGetDevice(&dev));
        if (cudaDeviceGetAttribute(&v, cudaDevAttrL2CacheSize, dev) != cudaSuccess || v <= 0) v = 40 << 20;
        l2 = v;
    }
    // S of one sub-chunk takes about a third of L2 (the P writes and K stream through the rest)
    int64_t sub = (int64_t)(l2 / 3) / (int64_t)srow;
    if (sub >= 128) sub &= ~(int64_t)63;
    if (sub < 1) sub = 1;
    if (sub > fit) sub = fit;
    if (sub > N) sub = N;
    int64_t big = (int64_t)((ws_bytes - 256 - (size_t)sub * srow) / prow);
    if (big > N) big = N;
    big = big / sub * sub;
    if (big < sub) big = sub;
    // equal blocks: ceil(N / big) of them, each a multiple of sub rows
    {
        const int64_t nb = (N + big - 1) / big;
        int64_t e = (N + nb - 1) / nb;
        e = (e + sub - 1) / sub * sub;
        if (e < big) big = e;
    }
    float *S = (float *)ws;
    bf16 *P = (bf16 *)((char *)ws + (((size_t)sub * srow + 255) & ~(size_t)255));
    const float alpha = (float)(1.0 / sqrt((double)C));
    const bf16 *base = (const bf16 *)qkv;
    for (int b = 0; b < B; b++) {
        const bf16 *img = base + (int64_t)b * N * 3 * C;
        for (int q0 = 0; q0 < N; q0 += (int)big) {
            const int rows = N - q0 < big ? N - q0 : (int)big;
            for (int r0 = 0; r0 < rows; r0 += (int)sub) {
                const int sr = rows - r0 < sub ? rows - r0 : (int)sub;
                // S[sr, N] = Q[sr, C] · K[N, C]ᵀ · alpha
                matmul_gemm(c, sr, N, C, alpha, img + (int64_t)(q0 + r0) * 3 * C, 3 * C, 0, img + C, 3 * C, 1, NULL,
                             ld, 0.0f, S, ld, 1, NULL);
                softmax_rows_(c, P + (int64_t)r0 * ld, ld, S, sr, N, ld);
            }
            // O[rows, C] = P[rows, N] · V[N, C]
            matmul_gemm(c, rows, C, N, 1.0f, P, ld, 0, img + 2 * C, 3 * C, 0, NULL, C, 0.0f,
                         (bf16 *)out + ((int64_t)b * N + q0) * C, C, 0, NULL);
        }
    }
}

__global__ void nchw_to_nhwc_kernel1(bf16 *out, const bf16 *inp, int C, int HW, int Cpad, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const int ch = (int)(i % Cpad);
    const int64_t t = i / Cpad;
    const int p = (int)(t % HW);
    const int64_t b = t / HW;
    out[i] = ch < C ? inp[(b * C + ch) * HW + p] : __float2bfloat16(0.0f);
}

extern "C" void nchw_to_nhwc_forward(OpCtx *c, void *out, const void *inp, int B, int C, int HW, int Cpad) {
    const int64_t n = (int64_t)B * HW * Cpad;
    if (!n) return;
    nchw_to_nhwc_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        (bf16 *)out, (const bf16 *)inp, C, HW, Cpad, n);
    CUDA_CHECK(cudaGetLastError());
}

__global__ void vae_posterior_kernel1(float *mean, float *logvar, const bf16 *inp, int HW, int z, int64_t n) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; // over [B, z, HW]
    if (i >= n) return;
    const int p = (int)(i % HW);
    const int64_t t = i / HW;
    const int ch = (int)(t % z);
    const int64_t b = t / z;
    const bf16 *x = inp + (b * HW + p) * 2 * z;
    mean[i] = __bfloat162float(x[ch]);
    const float v = __bfloat162float(x[z + ch]);
    logvar[i] = v != v ? v : fminf(fmaxf(v, -30.0f), 20.0f);
}

extern "C" void vae_posterior_forward(OpCtx *c, float *mean, float *logvar, const void *inp, int B, int HW, int z) {
    const int64_t n = (int64_t)B * z * HW;
    if (!n) return;
    vae_posterior_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, (cudaStream_t)c->stream>>>(
        mean, logvar, (const bf16 *)inp, HW, z, n);
    CUDA_CHECK(cudaGetLastError());
}

// ---- host <-> device transfers of the encoder's input and outputs through pinned staging ----

static void pinned_reserve_(cudaStream_t s, void **pin, size_t *pin_bytes, size_t bytes) {
    if (bytes <= *pin_bytes) return;
    if (*pin) {
        CUDA_CHECK(cudaStreamSynchronize(s)); // copies from / to the old buffer may be in flight
        CUDA_CHECK(cudaFreeHost(*pin));
    }
    *pin = NULL;
    *pin_bytes = 0;
    CUDA_CHECK(cudaHostAlloc(pin, bytes, cudaHostAllocDefault));
    *pin_bytes = bytes;
}

// f32 -> bf16 bits, round to nearest even (dtype.h f32_to_bf16); NaN -> 0x7fff, the canonical NaN
// that __float2bfloat16_rn gives, so the device sees exactly what the former on-device conversion
// produced. Branchless so that the host compiler vectorises it.
static inline uint16_t f32_to_bf16_bits_(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    const uint32_t r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? 0x7fffu : r);
}

// one host thread's share of the upload: convert a slice chunk by chunk, starting each chunk's copy
// (c's stream; regions are disjoint, so the order of the copies does not matter) as soon as it is ready
typedef struct {
    const OpCtx *c;
    const float *src;
    uint16_t *h;
    bf16 *d;
    size_t n;
} UploadSlice;

static void *upload_slice_(void *arg) {
    const UploadSlice *u = (const UploadSlice *)arg;
    CUDA_CHECK(cudaSetDevice(u->c->device_index));
    cudaStream_t s = (cudaStream_t)u->c->stream;
    const size_t chunk = (size_t)1 << 17;
    for (size_t off = 0; off < u->n; off += chunk) {
        const size_t len = u->n - off < chunk ? u->n - off : chunk;
        const float *src = u->src + off;
        uint16_t *dst = u->h + off;
        for (size_t i = 0; i < len; i++) dst[i] = f32_to_bf16_bits_(src[i]);
        CUDA_CHECK(cudaMemcpyAsync(u->d + off, dst, len * sizeof(uint16_t), cudaMemcpyHostToDevice, s));
    }
    return NULL;
}

extern "C" void vae_upload_pixels_forward(OpCtx *c, void *d_dst, const float *h_src, size_t n, void **pin,
                                          size_t *pin_bytes) {
    if (!n) return;
    // the previous use of the staging buffer (a download) ended with a stream sync
    pinned_reserve_((cudaStream_t)c->stream, pin, pin_bytes, n * sizeof(uint16_t));
    // the conversion is bound by one core's memory bandwidth: split it over up to 8 threads
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nt = (int)(n / ((size_t)1 << 18));
    if (nt > 8) nt = 8;
    if (nt > ncpu) nt = (int)ncpu;
    if (nt < 1) nt = 1;
    UploadSlice sl[8];
    pthread_t th[8];
    const size_t per = ((n + nt - 1) / nt + 63) & ~(size_t)63;
    int started = 0;
    for (int t = 0; t < nt; t++) {
        const size_t off = (size_t)t * per < n ? (size_t)t * per : n;
        const size_t len = n - off < per ? n - off : per;
        sl[t] = UploadSlice{c, h_src + off, (uint16_t *)*pin + off, (bf16 *)d_dst + off, len};
    }
    for (int t = 1; t < nt; t++) {
        if (pthread_create(&th[t], NULL, upload_slice_, &sl[t]) != 0) break;
        started = t;
    }
    for (int t = started + 1; t < nt; t++) upload_slice_(&sl[t]); // threads that could not start
    upload_slice_(&sl[0]);
    for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
}

extern "C" void vae_download_pair_forward(OpCtx *c, float *h0, const float *d0, float *h1, const float *d1, size_t n,
                                          void **pin, size_t *pin_bytes) {
    if (!n) return;
    cudaStream_t s = (cudaStream_t)c->stream;
    pinned_reserve_(s, pin, pin_bytes, 2 * n * sizeof(float));
    float *h = (float *)*pin;
    CUDA_CHECK(cudaMemcpyAsync(h, d0, n * sizeof(float), cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaMemcpyAsync(h + n, d1, n * sizeof(float), cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
    memcpy(h0, h, n * sizeof(float));
    memcpy(h1, h + n, n * sizeof(float));
}

extern "C" void vae_pinned_free(void *pin) {
    if (pin) CUDA_CHECK(cudaFreeHost(pin));
}
