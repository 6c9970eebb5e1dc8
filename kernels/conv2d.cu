// conv2d.cu: CUDA launchers of op_conv2d (conv2d.h has the contract) and the general bf16
// cuBLASLt GEMM that conv2d and the VAE attention share.
//   1×1, stride 1, no padding: the NHWC activation IS the GEMM's [pixels, Cin] operand: one GEMM.
//   Cin % 8 == 0, Cout % 8 == 0 and Cout ≤ 256 (the VAE's k×k convs at levels 0-1, conv_in's padded
//   8 included, and conv_out): the implicit-GEMM kernel of conv2d_igemm.cuh (no workspace; bias and
//   residual in its epilogue; tile configuration autotuned per shape).
//   otherwise: im2col of a chunk of output pixels into the workspace as [rows, k·k·Cin] in the
//   weight rows' (ky, kx, ci) order, then one GEMM per chunk; bias and the residual ride in the
//   GEMM's epilogue (bias) and its C operand (beta = 1), so the output is written once.
#include <cublasLt.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <stdlib.h>

#include "check_cuda.h"
#include "conv2d.h"
#include "matmul.h"
#include "conv2d_igemm.cuh"

typedef __nv_bfloat16 bf16;

struct Im2col {
    int H, W, Cin, Ho, Wo, k, stride, pad_t, pad_l;
};

// One thread moves 8 channels (16 bytes) of one tap of one output pixel: Cin % 8 == 0.
// Consecutive threads walk channels, then taps, so reads of a tap and writes of a row coalesce.
__global__ void im2col_kernel1(uint4 *col, const uint4 *inp, Im2col g, int64_t row0, int64_t rows) {
    const int c8n = g.Cin / 8, per_row = g.k * g.k * c8n;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * per_row) return;
    const int64_t r = i / per_row;
    const int rem = (int)(i - r * per_row), tap = rem / c8n, c8 = rem - tap * c8n;
    const int64_t pix = row0 + r;
    const int ox = (int)(pix % g.Wo);
    const int64_t t = pix / g.Wo;
    const int oy = (int)(t % g.Ho), b = (int)(t / g.Ho);
    const int iy = oy * g.stride + tap / g.k - g.pad_t, ix = ox * g.stride + tap % g.k - g.pad_l;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) v = inp[(((int64_t)b * g.H + iy) * g.W + ix) * c8n + c8];
    col[i] = v;
}

// Any Cin: one element per thread.
__global__ void im2col_kernel2(bf16 *col, const bf16 *inp, Im2col g, int64_t row0, int64_t rows) {
    const int per_row = g.k * g.k * g.Cin;
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= rows * per_row) return;
    const int64_t r = i / per_row;
    const int rem = (int)(i - r * per_row), tap = rem / g.Cin, ci = rem - tap * g.Cin;
    const int64_t pix = row0 + r;
    const int ox = (int)(pix % g.Wo);
    const int64_t t = pix / g.Wo;
    const int oy = (int)(t % g.Ho), b = (int)(t / g.Ho);
    const int iy = oy * g.stride + tap / g.k - g.pad_t, ix = ox * g.stride + tap % g.k - g.pad_l;
    bf16 v = __float2bfloat16(0.0f);
    if (iy >= 0 && iy < g.H && ix >= 0 && ix < g.W) v = inp[(((int64_t)b * g.H + iy) * g.W + ix) * g.Cin + ci];
    col[i] = v;
}

// ---- implicit GEMM: tile configurations and their launcher ----
template <int BM, int BN, int WM, int WN, int ST>
static void igemm_launch_(const cig::Params &p0, cudaStream_t st) {
    constexpr int smem = cig::smem_bytes<BM, BN, ST>();
    static uint64_t attr_set = 0; // per instantiation, a bit per device; setting it twice is harmless
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    const uint64_t bit = (uint64_t)1 << (dev & 63);
    if (!(attr_set & bit)) {
        CUDA_CHECK(cudaFuncSetAttribute(cig::conv_igemm_kernel<BM, BN, WM, WN, ST>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
        attr_set |= bit;
    }
    cig::Params p = p0;
    p.ntn = (p.Cout + BN - 1) / BN;
    const int64_t grid = (int64_t)((p.M + BM - 1) / BM) * p.ntn;
    cig::conv_igemm_kernel<BM, BN, WM, WN, ST><<<(unsigned)grid, WM * WN * 32, smem, st>>>(p);
    CUDA_CHECK(cudaGetLastError());
}

// variant v: BM×BN tile, WM×WN warps, stages (shared memory ≤ 92 KB, so sm_89's 99 KB fits too)
#define CONV_IGEMM_VARIANTS 7
static const char *const igemm_names_[CONV_IGEMM_VARIANTS] = {
    "128x128 w2x2 s4", "128x96 w2x2 s4", "128x64 w2x2 s4", "128x32 w4x1 s4",
    "256x128 w4x2 s3", "256x96 w4x2 s3", "64x96 w2x2 s4"};

static void igemm_run_(int v, const cig::Params &p, cudaStream_t st) {
    switch (v) {
    case 0: igemm_launch_<128, 128, 2, 2, 4>(p, st); break;
    case 1: igemm_launch_<128, 96, 2, 2, 4>(p, st); break;
    case 2: igemm_launch_<128, 64, 2, 2, 4>(p, st); break;
    case 3: igemm_launch_<128, 32, 4, 1, 4>(p, st); break;
    case 4: igemm_launch_<256, 128, 4, 2, 3>(p, st); break;
    case 5: igemm_launch_<256, 96, 4, 2, 3>(p, st); break;
    default: igemm_launch_<64, 96, 2, 2, 4>(p, st); break;
    }
}

// the default choice per shape (QIE_CONV_AUTOTUNE=0): the N tile divides Cout where it can
static int igemm_pick_(const Conv2dShape *s) {
    if (s->Cout % 128 == 0) return 0;
    if (s->Cout % 96 == 0) return 1;
    if (s->Cout % 64 == 0) return 2;
    return 3;
}

static int conv_variant_ = -2; // -2 auto, -1 im2col + cuBLASLt, 0.. a forced implicit-GEMM variant

extern "C" int conv2d_set_variant(int v) {
    if (v < -2 || v >= CONV_IGEMM_VARIANTS) return -1;
    conv_variant_ = v;
    return 0;
}
extern "C" int conv2d_variant_count(void) { return CONV_IGEMM_VARIANTS; }
extern "C" const char *conv2d_variant_name(int v) {
    return v == -1 ? "im2col+cuBLASLt" : v >= 0 && v < CONV_IGEMM_VARIANTS ? igemm_names_[v] : "auto";
}

// Autotune: the first call of each shape (per device) times every variant once (after one warm-up
// launch) on the caller's stream and keeps the fastest. Every variant accumulates over K in the
// same order (K tiles of 32, m16n8k16 steps inside), so all of them give bit-identical outputs:
// the choice changes speed only. Skipped where out aliases the residual (a repeated launch would
// add it twice) and with QIE_CONV_AUTOTUNE=0.
struct TuneEntry {
    int dev, B, H, W, Cin, Cout, k, stride, pt, pl, v;
};
#define CONV_TUNE_CAP 128
static TuneEntry tune_[CONV_TUNE_CAP];
static int ntune_ = 0;

static int igemm_choose_(const Conv2dShape *s, const cig::Params &p, cudaStream_t st, bool may_repeat) {
    static int enabled = -1;
    if (enabled < 0) {
        const char *e = getenv("QIE_CONV_AUTOTUNE");
        enabled = !(e && e[0] == '0');
    }
    if (!enabled || !may_repeat) return igemm_pick_(s);
    int dev = 0;
    CUDA_CHECK(cudaGetDevice(&dev));
    for (int i = 0; i < ntune_; i++) {
        const TuneEntry &t = tune_[i];
        if (t.dev == dev && t.B == s->B && t.H == s->H && t.W == s->W && t.Cin == s->Cin && t.Cout == s->Cout &&
            t.k == s->k && t.stride == s->stride && t.pt == s->pad_t && t.pl == s->pad_l)
            return t.v;
    }
    cudaStreamCaptureStatus cap = cudaStreamCaptureStatusNone;
    CUDA_CHECK(cudaStreamIsCapturing(st, &cap));
    if (cap != cudaStreamCaptureStatusNone) return igemm_pick_(s);
    cudaEvent_t e0, e1;
    CUDA_CHECK(cudaEventCreate(&e0));
    CUDA_CHECK(cudaEventCreate(&e1));
    int best = igemm_pick_(s);
    float best_ms = 1e30f;
    for (int v = 0; v < CONV_IGEMM_VARIANTS; v++) {
        igemm_run_(v, p, st); // warm-up (module load, caches)
        CUDA_CHECK(cudaEventRecord(e0, st));
        igemm_run_(v, p, st);
        CUDA_CHECK(cudaEventRecord(e1, st));
        CUDA_CHECK(cudaEventSynchronize(e1));
        float ms = 0.0f;
        CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
        if (ms < best_ms) {
            best_ms = ms;
            best = v;
        }
    }
    CUDA_CHECK(cudaEventDestroy(e0));
    CUDA_CHECK(cudaEventDestroy(e1));
    if (ntune_ < CONV_TUNE_CAP)
        tune_[ntune_++] = {dev, s->B, s->H, s->W, s->Cin, s->Cout, s->k, s->stride, s->pad_t, s->pad_l, best};
    if (getenv("QIE_CONV_TUNE_LOG"))
        fprintf(stderr, "[conv2d] B%d %dx%d %d->%d k%d s%d: %s (%.3f ms)\n", s->B, s->H, s->W, s->Cin, s->Cout,
                s->k, s->stride, igemm_names_[best], best_ms);
    return best;
}

extern "C" void conv2d_forward(OpCtx *c, void *out, const void *inp, const void *w, const void *bias,
                               const void *residual, const Conv2dShape *s, void *ws, size_t ws_bytes) {
    const int Ho = conv2d_out_h(s), Wo = conv2d_out_w(s);
    const int64_t Mtot = (int64_t)s->B * Ho * Wo;
    const float beta = residual ? 1.0f : 0.0f;
    if (Mtot <= 0) return;
    const bool is_1x1 = s->k == 1 && s->stride == 1 && !(s->pad_t | s->pad_b | s->pad_l | s->pad_r);
    const int64_t K64 = (int64_t)s->k * s->k * s->Cin;
    const bool igemm_ok = s->Cin % 8 == 0 && s->Cout % 8 == 0 && Mtot < INT32_MAX / 2 && K64 < INT32_MAX / 2;
    // automatic choice, from the H200 sweep (bench_vae --conv_sweep 1, 1024² batch 1): the
    // mma.sync kernel wins for Cout ≤ 192 (96->96 at 1024²: 0.91 ms vs 1.45 im2col+cuBLASLt; 192->192
    // at 512²: 0.70 vs 0.75); cuBLASLt's Hopper GEMM wins for Cout = 384 (384->384 at 256²: 0.47 vs
    // 0.67), where K = 9·Cin is long and the im2col pass is small next to the GEMM
    const bool use_igemm = conv_variant_ >= 0 ? igemm_ok
                           : conv_variant_ == -1 || is_1x1 ? false
                           : igemm_ok && (s->Cout <= 256 || ws_bytes < (size_t)K64 * sizeof(bf16));
    if (use_igemm) {
        cig::Params p;
        p.inp = (const bf16 *)inp;
        p.w = (const bf16 *)w;
        p.bias = (const bf16 *)bias;
        p.res = (const bf16 *)residual;
        p.out = (bf16 *)out;
        p.H = s->H; p.W = s->W; p.Cin = s->Cin; p.Ho = Ho; p.Wo = Wo; p.Cout = s->Cout;
        p.k = s->k; p.stride = s->stride; p.pad_t = s->pad_t; p.pad_l = s->pad_l;
        p.M = (int)Mtot; p.K = (int)K64; p.C8 = s->Cin / 8; p.ntn = 1;
        cudaStream_t st = (cudaStream_t)c->stream;
        const bool may_repeat = !residual || residual != out;
        igemm_run_(conv_variant_ >= 0 ? conv_variant_ : igemm_choose_(s, p, st, may_repeat), p, st);
        return;
    }
    if (is_1x1) {
        matmul_gemm(c, (int)Mtot, s->Cout, s->Cin, 1.0f, inp, s->Cin, 0, w, s->Cin, 1, residual, s->Cout, beta, out,
                     s->Cout, 0, bias);
        return;
    }
    const int K = s->k * s->k * s->Cin;
    int64_t chunk = (int64_t)(ws_bytes / ((size_t)K * sizeof(bf16)));
    if (chunk < 1) {
        fprintf(stderr, "conv2d_forward: workspace of %zu bytes is below one im2col row (%d elements)\n", ws_bytes, K);
        exit(EXIT_FAILURE);
    }
    if (chunk > Mtot) chunk = Mtot;
    if (chunk > INT32_MAX / 2) chunk = INT32_MAX / 2;
    const Im2col g = {s->H, s->W, s->Cin, Ho, Wo, s->k, s->stride, s->pad_t, s->pad_l};
    cudaStream_t st = (cudaStream_t)c->stream;
    for (int64_t m0 = 0; m0 < Mtot; m0 += chunk) {
        const int64_t rows = Mtot - m0 < chunk ? Mtot - m0 : chunk;
        if (s->Cin % 8 == 0) {
            const int64_t n = rows * (K / 8);
            im2col_kernel1<<<(unsigned)((n + 255) / 256), 256, 0, st>>>((uint4 *)ws, (const uint4 *)inp, g, m0, rows);
        } else {
            const int64_t n = rows * K;
            im2col_kernel2<<<(unsigned)((n + 255) / 256), 256, 0, st>>>((bf16 *)ws, (const bf16 *)inp, g, m0, rows);
        }
        CUDA_CHECK(cudaGetLastError());
        const bf16 *res = residual ? (const bf16 *)residual + m0 * s->Cout : NULL;
        matmul_gemm(c, (int)rows, s->Cout, K, 1.0f, ws, K, 0, w, K, 1, res, s->Cout, beta,
                     (bf16 *)out + m0 * s->Cout, s->Cout, 0, bias);
    }
}
