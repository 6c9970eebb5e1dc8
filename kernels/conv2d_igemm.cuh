// conv2d_igemm.cuh: implicit-GEMM k×k convolution on bf16 tensor cores (mma.sync.m16n8k16,
// ldmatrix, cp.async multistage; sm_80 and later, so the same code serves sm_80/sm_89/sm_90a).
// Included once, by conv2d.cu.
//
// The GEMM is out[M = B·Ho·Wo, Cout] = A[M, K] · Wᵀ with K = k·k·Cin in the weight rows'
// (ky, kx, ci) order; A is never materialised: each 16-byte chunk (8 channels) of an A tile row is
// fetched by cp.async straight from the NHWC input at (b, oy·s + ky − pad_t, ox·s + kx − pad_l,
// c8·8), zero-filled (src-size 0) where that hangs over the padding, past M or past K. Needs
// Cin % 8 == 0 (a chunk never straddles two taps) and Cout % 8 == 0 (paired bf16 stores).
//
//   CTA tile BM×BN, WM×WN warps of (BM/WM)×(BN/WN), K tiles of 32, ST stages in shared memory
//   (rows of 32 + 8 bf16 = 80 bytes: 8 consecutive rows hit 8 distinct 16-byte bank groups, so
//   ldmatrix phases are conflict-free without a swizzle).
//   Epilogue: fp32 accumulator + bias + residual, one bf16 rounding (what cuBLASLt's bias
//   epilogue with beta = 1 on C did before).
//   Grid: 1-D, the N tiles of one M tile adjacent, so they share the A rows through L2.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "mma_sm80.cuh"

namespace cig {

typedef __nv_bfloat16 bf16;

struct Params {
    const bf16 *inp, *w, *bias, *res;
    bf16 *out;
    int H, W, Cin, Ho, Wo, Cout, k, stride, pad_t, pad_l;
    int M, K, C8, ntn; // M = B·Ho·Wo, K = k·k·Cin, C8 = Cin/8, ntn = N tiles
};

constexpr int BK = 32, LDS = BK + 8;

template <int BM, int BN, int ST>
constexpr int smem_bytes() { return ST * (BM + BN) * LDS * 2; }

template <int BM, int BN, int WM, int WN, int ST>
__global__ void __launch_bounds__(WM *WN * 32) conv_igemm_kernel(Params p) {
    constexpr int NT = WM * WN * 32;
    constexpr int TM = BM / WM, TN = BN / WN;
    constexpr int MI = TM / 16, NI = TN / 8;
    static_assert(TM % 16 == 0 && TN % 16 == 0, "warp tile: multiples of 16");
    static_assert((BM * 4) % NT == 0, "A tile chunks must divide among the threads");
    constexpr int A_IT = BM * 4 / NT;
    constexpr int B_IT = (BN * 4 + NT - 1) / NT;

    extern __shared__ __align__(16) unsigned char smem_raw[];
    bf16 *sA = (bf16 *)smem_raw;           // [ST][BM][LDS]
    bf16 *sB = sA + (size_t)ST * BM * LDS; // [ST][BN][LDS]
    const uint32_t sa0 = smem_u32(sA), sb0 = smem_u32(sB);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WN, wn = warp % WN;
    const int mt = (int)(blockIdx.x / (unsigned)p.ntn), nt = (int)(blockIdx.x % (unsigned)p.ntn);
    const int m0 = mt * BM, n0 = nt * BN;

    // this thread's A rows: fixed over the K loop; its 16-byte chunk column within a K tile is tid & 3
    const int kcl = tid & 3;
    const bf16 *a_img[A_IT];
    int a_iy[A_IT], a_ix[A_IT];
#pragma unroll
    for (int i = 0; i < A_IT; i++) {
        const int m = m0 + (tid >> 2) + i * (NT / 4);
        if (m < p.M) {
            const int ox = m % p.Wo, t = m / p.Wo, oy = t % p.Ho, b = t / p.Ho;
            a_iy[i] = oy * p.stride - p.pad_t;
            a_ix[i] = ox * p.stride - p.pad_l;
            a_img[i] = p.inp + (int64_t)b * p.H * p.W * p.Cin;
        } else {
            a_iy[i] = -(1 << 28); // every tap out of range: zeros
            a_ix[i] = 0;
            a_img[i] = p.inp;
        }
    }

    const int KT = (p.K + BK - 1) / BK;

    auto load_stage = [&](int stage, int kt) {
        // A: chunk kc of K = (tap, c8), tap = ky·k + kx
        const int kc = kt * 4 + kcl;
        const bool kok = kc * 8 < p.K;
        const int tap = kc / p.C8, c8 = kc - tap * p.C8, ky = tap / p.k, kx = tap - ky * p.k;
        const uint32_t sa = sa0 + (uint32_t)(stage * BM * LDS) * 2;
#pragma unroll
        for (int i = 0; i < A_IT; i++) {
            const int r = (tid >> 2) + i * (NT / 4);
            const int iy = a_iy[i] + ky, ix = a_ix[i] + kx;
            const bool ok = kok && (unsigned)iy < (unsigned)p.H && (unsigned)ix < (unsigned)p.W;
            const bf16 *src = ok ? a_img[i] + ((int64_t)iy * p.W + ix) * p.Cin + c8 * 8 : p.inp;
            cp_async16(sa + (uint32_t)(r * LDS + kcl * 8) * 2, src, ok ? 16 : 0);
        }
        // B: weight rows n0.., K chunks kt·4..
        const uint32_t sb = sb0 + (uint32_t)(stage * BN * LDS) * 2;
#pragma unroll
        for (int i = 0; i < B_IT; i++) {
            const int idx = tid + i * NT;
            if (BN * 4 % NT == 0 || idx < BN * 4) {
                const int r = idx >> 2, c = idx & 3, n = n0 + r, kcb = kt * 4 + c;
                const bool ok = n < p.Cout && kcb * 8 < p.K;
                const bf16 *src = ok ? p.w + (int64_t)n * p.K + kcb * 8 : p.w;
                cp_async16(sb + (uint32_t)(r * LDS + c * 8) * 2, src, ok ? 16 : 0);
            }
        }
    };

    float acc[MI][NI][4];
#pragma unroll
    for (int i = 0; i < MI; i++)
#pragma unroll
        for (int j = 0; j < NI; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

#pragma unroll
    for (int s = 0; s < ST - 1; s++) {
        if (s < KT) load_stage(s, s);
        cp_async_commit();
    }

    for (int kt = 0; kt < KT; kt++) {
        cp_async_wait<ST - 2>();
        __syncthreads(); // tile kt landed for every thread; stage (kt-1)%ST free for all
        {
            const int nk = kt + ST - 1;
            if (nk < KT) load_stage(nk % ST, nk);
            cp_async_commit();
        }
        const int stage = kt % ST;
        const uint32_t sa = sa0 + (uint32_t)(stage * BM * LDS) * 2;
        const uint32_t sb = sb0 + (uint32_t)(stage * BN * LDS) * 2;
#pragma unroll
        for (int kk = 0; kk < BK / 16; kk++) {
            uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
            for (int mi = 0; mi < MI; mi++) {
                const int r = wm * TM + mi * 16 + (lane & 15);
                ldsm_x4(af[mi], sa + (uint32_t)(r * LDS + kk * 16 + (lane >> 4) * 8) * 2);
            }
#pragma unroll
            for (int nj = 0; nj < NI / 2; nj++) {
                const int r = wn * TN + nj * 16 + (lane & 7) + ((lane >> 4) << 3);
                uint32_t b[4];
                ldsm_x4(b, sb + (uint32_t)(r * LDS + kk * 16 + ((lane >> 3) & 1) * 8) * 2);
                bfr[2 * nj][0] = b[0];
                bfr[2 * nj][1] = b[1];
                bfr[2 * nj + 1][0] = b[2];
                bfr[2 * nj + 1][1] = b[3];
            }
#pragma unroll
            for (int mi = 0; mi < MI; mi++)
#pragma unroll
                for (int ni = 0; ni < NI; ni++) mma16816(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
        }
    }
    cp_async_wait<0>();

    // epilogue: thread holds rows (lane>>2) and +8 of each m16 tile, columns 2·(lane&3), +1 of each n8 tile
#pragma unroll
    for (int ni = 0; ni < NI; ni++) {
        const int col = n0 + wn * TN + ni * 8 + (lane & 3) * 2;
        if (col >= p.Cout) continue;
        float b0 = 0.0f, b1 = 0.0f;
        if (p.bias) {
            b0 = __bfloat162float(p.bias[col]);
            b1 = __bfloat162float(p.bias[col + 1]);
        }
#pragma unroll
        for (int mi = 0; mi < MI; mi++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int row = m0 + wm * TM + mi * 16 + (lane >> 2) + h * 8;
                if (row >= p.M) continue;
                float v0 = acc[mi][ni][2 * h] + b0, v1 = acc[mi][ni][2 * h + 1] + b1;
                const int64_t o = (int64_t)row * p.Cout + col;
                if (p.res) {
                    const __nv_bfloat162 r2 = *(const __nv_bfloat162 *)(p.res + o);
                    v0 += __bfloat162float(r2.x);
                    v1 += __bfloat162float(r2.y);
                }
                *(__nv_bfloat162 *)(p.out + o) = __floats2bfloat162_rn(v0, v1);
            }
    }
}

} // namespace cig
