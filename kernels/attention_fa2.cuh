// attention_fa2.cuh: FlashAttention-2 style kernels for head dims 64 and 128 on warp-level bf16
// tensor-core MMAs (mma.sync.m16n8k16, inline PTX; sm_80 and later, so the same code serves
// sm_80/sm_89/sm_90a). Included once, by attention.cu.
//
// Shared-memory tiles are [rows][D] bf16 with a 16-byte-chunk XOR swizzle (chunk c of row r at
// chunk c ^ (r & 7)), filled by cp.async (rows past S zero-filled) and read by ldmatrix (x4, .trans
// where the tile is the k-major B operand), so both the 16-byte stores and the 8-row ldmatrix
// phases are free of bank conflicts.
//
//   fa_fwd_kernel<D, MT, NW>: CTA = NW warps × MT m-tiles of 16 query rows; K/V tiles of 64 keys,
//     double-buffered (cp.async for tile j+1 overlaps tile j). S = Q·Kᵀ and O += P·V in registers
//     (the S accumulators become the A operand of P·V directly), online softmax in base 2 with the
//     scale folded into log2(e), the row sum kept per thread and reduced across the quad at the end.
//   fa_bwd_dkdv_kernel<D, NW>: CTA = 16·NW keys (16 per warp), loops over 64-query tiles (Q, dO, lse,
//     δ double-buffered): Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ, Pᵀ = exp2(Sᵀ·s·log2e − lse·log2e), dSᵀ = Pᵀ∘(dPᵀ−δ),
//     dV += Pᵀ·dO, dK += dSᵀ·Q; all in one warp's registers, no cross-warp traffic.
//   fa_bwd_dq_kernel<D, NW>: CTA = 16·NW queries, loops over 64-key tiles: recomputes S, dP, P, dS and
//     dQ += dS·K. Separate from dK/dV, so dQ needs no atomics and the backward is deterministic.
//   fa_bwd_dkdv_kernel<D, 8, true> (opt-in, QIE_ATT_BWD=fused): FlashAttention-2's single pass: the
//     warps' dSᵀ go through shared memory, each warp forms a 16-query × D/2 block of dS·K over the
//     CTA's 128 keys and adds it into an fp32 dQ buffer with atomics (no recomputation; the order
//     of the additions, so dQ's last bits, vary from run to run).
// Masking: a per-call bitmask of valid keys (bit j of word j/32: key j < S and key_valid != 0),
// two words per 64-key tile; a tile whose 64 bits are all set skips the masking arithmetic.
//
// Measured (tests/gpu/test_attention_gpu, H200, B 1, S 8448, H 24, d 128, median of 7 calls):
//   forward  <128, 2, 4>: 2.75-2.83 ms = 310-320 TFLOP/s (4·S²·d·H); <128,1,4> and <128,1,8> ~295.
//   backward (δ + dK/dV<128,8> + dQ<128,4>): 9.5-9.6 ms = 228-231 TFLOP/s (2.5× forward FLOPs),
//            dK/dV 5.3 ms and dQ 4.0 ms (ncu); both kernels are bound by shared-memory bandwidth
//            (L1/TEX ~81%: every warp streams whole Q/dO or K/V tiles through ldmatrix).
//            The fused atomic variant: 9.06 ms = 242 TFLOP/s.  Generic WMMA kernels: 34 / 30 TFLOP/s.
#pragma once
#include <cuda_bf16.h>
#include <stdint.h>

#include "mma_sm80.cuh"

namespace fa2 {

typedef __nv_bfloat16 bf16;

constexpr int BN = 64;   // keys per K/V tile (forward, dQ) / queries per Q tile (dK/dV)

__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}

// byte offset of (row r, 16-byte chunk c) in a swizzled [rows][D] bf16 tile
template <int D>
__device__ __forceinline__ uint32_t swz(int r, int c) {
    return (uint32_t)(r * (D * 2) + ((c ^ (r & 7)) << 4));
}

// rows [0, R) of a tile whose first row is g (row stride ld elements) -> swizzled smem; rows ≥ nvalid zero
template <int R, int D, int NT>
__device__ __forceinline__ void load_tile(uint32_t sm, const bf16 *g, size_t ld, int nvalid) {
    constexpr int CH = D / 8;
    static_assert((R * CH) % NT == 0, "tile chunks must divide among the threads");
#pragma unroll
    for (int it = 0; it < R * CH / NT; it++) {
        const int i = it * NT + threadIdx.x, r = i / CH, c = i % CH;
        const bool ok = r < nvalid;
        cp_async16(sm + swz<D>(r, c), g + (size_t)(ok ? r : 0) * ld + c * 8, ok ? 16 : 0);
    }
}

// A operand (16 rows × 16 cols at column chunk pair kk) of a row-major swizzled tile, rows r0..r0+15
template <int D>
__device__ __forceinline__ void lda(uint32_t (&a)[4], uint32_t base, int r0, int kk, int lane) {
    ldsm_x4(a, base + swz<D>(r0 + (lane & 15), kk * 2 + (lane >> 4)));
}
// B operands of two n-tiles (rows n0..n0+15 of a [n][k] tile, k chunk pair kk): b[0..1] n-tile n0, b[2..3] n0+8
template <int D>
__device__ __forceinline__ void ldb(uint32_t (&b)[4], uint32_t base, int n0, int kk, int lane) {
    ldsm_x4(b, base + swz<D>(n0 + (lane & 7) + ((lane >> 4) << 3), kk * 2 + ((lane >> 3) & 1)));
}
// B operands from a [k][n] tile (rows k0..k0+15, n columns chunk pair np): b[0..1] n-tile 2np, b[2..3] 2np+1
template <int D>
__device__ __forceinline__ void ldb_t(uint32_t (&b)[4], uint32_t base, int k0, int np, int lane) {
    ldsm_x4_t(b, base + swz<D>(k0 + (lane & 7) + (((lane >> 3) & 1) << 3), np * 2 + (lane >> 4)));
}

// Two 16×64 products over the head dim, sharing one k loop (both backward kernels): x = A·Bᵀ and
// y = A2·B2ᵀ, where A, A2 are this warp's 16 rows (from r0) of [rows][D] tiles and B, B2 the 64 rows
// of [n][D] tiles. x and y are overwritten.
template <int D>
__device__ __forceinline__ void mma_pair_16x64(float (&x)[8][4], float (&y)[8][4], uint32_t a, uint32_t a2, uint32_t b,
                                               uint32_t b2, int r0, int lane) {
    constexpr int KS = D / 16;
#pragma unroll
    for (int n = 0; n < 8; n++)
#pragma unroll
        for (int e = 0; e < 4; e++) x[n][e] = y[n][e] = 0.0f;
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        uint32_t fa[4], fa2[4];
        lda<D>(fa, a, r0, kk, lane);
        lda<D>(fa2, a2, r0, kk, lane);
#pragma unroll
        for (int np = 0; np < 4; np++) {
            uint32_t fb[4], fb2[4];
            ldb<D>(fb, b, np * 16, kk, lane);
            ldb<D>(fb2, b2, np * 16, kk, lane);
            mma16816(x[2 * np], fa, fb[0], fb[1]);
            mma16816(x[2 * np + 1], fa, fb[2], fb[3]);
            mma16816(y[2 * np], fa2, fb2[0], fb2[1]);
            mma16816(y[2 * np + 1], fa2, fb2[2], fb2[3]);
        }
    }
}

// key-validity bits for the 64-key tile: bit (8n + 2t + e) → is key valid
__device__ __forceinline__ bool key_ok(uint32_t w0, uint32_t w1, int key) {
    return ((key < 32 ? w0 >> key : w1 >> (key - 32)) & 1u) != 0;
}

// ---------------------------------------------------------------------------------------------
// forward
template <int D, int MT, int NW>
__global__ void __launch_bounds__(NW * 32, NW == 4 ? 2 : 1)
    fa_fwd_kernel(bf16 *__restrict__ O, float *__restrict__ lse, const bf16 *__restrict__ Q,
                  const bf16 *__restrict__ K, const bf16 *__restrict__ V, const uint32_t *__restrict__ kbits, int S,
                  int H, float sl2) {
    constexpr int NT = NW * 32, BM = 16 * MT * NW, DT = D / 8, KS = D / 16;
    constexpr bool QREG = MT == 1;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sQ = smem_u32(smem), sK = sQ + BM * D * 2, sV = sK + 2 * BN * D * 2;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BM;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t ld = (size_t)H * D;
    const bf16 *Kg = K + (size_t)b * S * ld + (size_t)h * D, *Vg = V + (size_t)b * S * ld + (size_t)h * D;
    const int nt = (S + BN - 1) / BN;
    const uint32_t *kb = kbits + (size_t)b * nt * 2;

    load_tile<BM, D, NT>(sQ, Q + ((size_t)b * S + q0) * ld + (size_t)h * D, ld, S - q0);
    load_tile<BN, D, NT>(sK, Kg, ld, S);
    load_tile<BN, D, NT>(sV, Vg, ld, S);
    cp_async_commit();

    float o[MT][DT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int i = 0; i < DT; i++) o[mt][i][0] = o[mt][i][1] = o[mt][i][2] = o[mt][i][3] = 0.0f;
    float m[MT][2], l[MT][2];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) m[mt][0] = m[mt][1] = -INFINITY, l[mt][0] = l[mt][1] = 0.0f;
    uint32_t qf[QREG ? KS : 1][4];
    const int rw = warp * 16 * MT; // first row of this warp in the Q tile

    for (int j = 0; j < nt; j++) {
        const uint32_t w0 = __ldg(kb + 2 * j), w1 = __ldg(kb + 2 * j + 1);
        cp_async_wait<0>();
        __syncthreads();
        if (j + 1 < nt) {
            const int st = (j + 1) & 1, k0 = (j + 1) * BN;
            load_tile<BN, D, NT>(sK + st * BN * D * 2, Kg + (size_t)k0 * ld, ld, S - k0);
            load_tile<BN, D, NT>(sV + st * BN * D * 2, Vg + (size_t)k0 * ld, ld, S - k0);
        }
        cp_async_commit();
        if (QREG && j == 0) {
#pragma unroll
            for (int kk = 0; kk < KS; kk++) lda<D>(qf[QREG ? kk : 0], sQ, rw, kk, lane);
        }
        const uint32_t cK = sK + (j & 1) * BN * D * 2, cV = sV + (j & 1) * BN * D * 2;
        float s[MT][8][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int n = 0; n < 8; n++) s[mt][n][0] = s[mt][n][1] = s[mt][n][2] = s[mt][n][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KS; kk++) {
            uint32_t a[MT][4];
            if (!QREG) {
#pragma unroll
                for (int mt = 0; mt < MT; mt++) lda<D>(a[mt], sQ, rw + mt * 16, kk, lane);
            } else {
#pragma unroll
                for (int i = 0; i < 4; i++) a[0][i] = qf[QREG ? kk : 0][i];
            }
#pragma unroll
            for (int np = 0; np < 4; np++) {
                uint32_t bb[4];
                ldb<D>(bb, cK, np * 16, kk, lane);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816(s[mt][2 * np], a[mt], bb[0], bb[1]);
                    mma16816(s[mt][2 * np + 1], a[mt], bb[2], bb[3]);
                }
            }
        }
        if ((w0 & w1) != 0xffffffffu) { // some key of the tile is masked or past S
#pragma unroll
            for (int n = 0; n < 8; n++)
#pragma unroll
                for (int e = 0; e < 2; e++)
                    if (!key_ok(w0, w1, 8 * n + 2 * t + e)) {
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) s[mt][n][e] = s[mt][n][e + 2] = -INFINITY;
                    }
        }
        // online softmax (rows g and g+8 of each m-tile; the quad's four threads share a row)
#pragma unroll
        for (int mt = 0; mt < MT; mt++)
#pragma unroll
            for (int r = 0; r < 2; r++) {
                float mx = m[mt][r];
#pragma unroll
                for (int n = 0; n < 8; n++) mx = fmaxf(mx, fmaxf(s[mt][n][2 * r], s[mt][n][2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float msc = mx == -INFINITY ? 0.0f : mx * sl2;
                const float alpha = ex2(m[mt][r] * sl2 - msc);
                m[mt][r] = mx;
                float rs = 0.0f;
#pragma unroll
                for (int n = 0; n < 8; n++) {
                    const float p0 = ex2(fmaf(s[mt][n][2 * r], sl2, -msc));
                    const float p1 = ex2(fmaf(s[mt][n][2 * r + 1], sl2, -msc));
                    s[mt][n][2 * r] = p0;
                    s[mt][n][2 * r + 1] = p1;
                    rs += p0 + p1;
                }
                l[mt][r] = l[mt][r] * alpha + rs;
#pragma unroll
                for (int i = 0; i < DT; i++) o[mt][i][2 * r] *= alpha, o[mt][i][2 * r + 1] *= alpha;
            }
        // O += P · V
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t pa[MT][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
            }
#pragma unroll
            for (int np = 0; np < DT / 2; np++) {
                uint32_t bb[4];
                ldb_t<D>(bb, cV, kk * 16, np, lane);
#pragma unroll
                for (int mt = 0; mt < MT; mt++) {
                    mma16816(o[mt][2 * np], pa[mt], bb[0], bb[1]);
                    mma16816(o[mt][2 * np + 1], pa[mt], bb[2], bb[3]);
                }
            }
        }
    }
    cp_async_wait<0>();
    // epilogue: O / l (bf16), lse = (m·s·log2e + log2 l)·ln 2
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int r = 0; r < 2; r++) {
            float lt = l[mt][r];
            lt += __shfl_xor_sync(0xffffffffu, lt, 1);
            lt += __shfl_xor_sync(0xffffffffu, lt, 2);
            const int q = q0 + rw + mt * 16 + g + 8 * r;
            if (q < S) {
                const float inv = lt > 0.0f ? 1.0f / lt : 0.0f;
                bf16 *orow = O + ((size_t)b * S + q) * ld + (size_t)h * D + 2 * t;
#pragma unroll
                for (int i = 0; i < DT; i++)
                    *(uint32_t *)(orow + 8 * i) = pack_bf16(o[mt][i][2 * r] * inv, o[mt][i][2 * r + 1] * inv);
                if (t == 0)
                    lse[((size_t)b * H + h) * S + q] =
                        lt > 0.0f ? (m[mt][r] * sl2 + __log2f(lt)) * 0.6931471805599453f : -INFINITY;
            }
        }
}

// ---------------------------------------------------------------------------------------------
// backward, dK and dV: CTA = 16·NW keys, loop over 64-query tiles
template <int D, int NW, bool FUSED>
__global__ void __launch_bounds__(NW * 32, NW == 4 ? 2 : 1)
    fa_bwd_dkdv_kernel(bf16 *__restrict__ dK, bf16 *__restrict__ dV, float *__restrict__ dQacc,
                       const bf16 *__restrict__ Q, const bf16 *__restrict__ K, const bf16 *__restrict__ V,
                       const bf16 *__restrict__ dO, const float *__restrict__ lse2, const float *__restrict__ delta,
                       const uint32_t *__restrict__ kbits, int S, int Sp, int H, float sl2, float scale) {
    constexpr int NT = NW * 32, BK = 16 * NW, DT = D / 8;
    static_assert(!FUSED || NW == 8, "the fused variant splits 64 queries x D over 8 warps");
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sK = smem_u32(smem), sV = sK + BK * D * 2, sQ = sV + BK * D * 2, sdO = sQ + 2 * BN * D * 2;
    float *sL = (float *)(smem + (size_t)(2 * BK + 4 * BN) * D * 2), *sDl = sL + 2 * BN;
    const uint32_t sdS = smem_u32(sDl + 2 * BN); // FUSED: dSᵀ [BK keys][64 queries] bf16, swizzled
    const int b = blockIdx.z, h = blockIdx.y, k0 = blockIdx.x * BK;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t ld = (size_t)H * D;
    const bf16 *Qg = Q + (size_t)b * S * ld + (size_t)h * D, *dOg = dO + (size_t)b * S * ld + (size_t)h * D;
    const float *L = lse2 + ((size_t)b * H + h) * Sp, *Dl = delta + ((size_t)b * H + h) * Sp;

    load_tile<BK, D, NT>(sK, K + ((size_t)b * S + k0) * ld + (size_t)h * D, ld, S - k0);
    load_tile<BK, D, NT>(sV, V + ((size_t)b * S + k0) * ld + (size_t)h * D, ld, S - k0);
    auto load_q = [&](int i) {
        const int st = i & 1, qq = i * BN;
        load_tile<BN, D, NT>(sQ + st * BN * D * 2, Qg + (size_t)qq * ld, ld, S - qq);
        load_tile<BN, D, NT>(sdO + st * BN * D * 2, dOg + (size_t)qq * ld, ld, S - qq);
        if (threadIdx.x < 32) {
            const int c = threadIdx.x & 15;
            const float *src = threadIdx.x < 16 ? L : Dl;
            float *dst = threadIdx.x < 16 ? sL : sDl;
            cp_async16(smem_u32(dst + st * BN + c * 4), src + qq + c * 4, 16);
        }
    };
    load_q(0);
    cp_async_commit();

    float dk[DT][4], dv[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dk[i][e] = dv[i][e] = 0.0f;
    const int rw = warp * 16;
    const int nq = (S + BN - 1) / BN; // every tile starts below S
    bool rok[2] = {true, true};       // FUSED: the rows' keys are valid (else dS = 0, kept out of dQ)
    if (FUSED) {
        const int nkw = (S + BN - 1) / BN * 2;
#pragma unroll
        for (int r = 0; r < 2; r++) {
            const int key = k0 + rw + g + 8 * r;
            rok[r] = key < S && ((__ldg(kbits + (size_t)b * nkw + (key >> 5)) >> (key & 31)) & 1u);
        }
    }
    for (int i = 0; i < nq; i++) {
        cp_async_wait<0>();
        __syncthreads();
        if (i + 1 < nq) load_q(i + 1);
        cp_async_commit();
        const int st = i & 1;
        const uint32_t cQ = sQ + st * BN * D * 2, cdO = sdO + st * BN * D * 2;
        const float *cL = sL + st * BN, *cD = sDl + st * BN;
        float sT[8][4], dpT[8][4]; /* Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ */
        mma_pair_16x64<D>(sT, dpT, sK, sV, cQ, cdO, rw, lane);
        // Pᵀ (rows: keys g, g+8; columns: queries 8n+2t+e) and dSᵀ = Pᵀ∘(dPᵀ − δ)
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int c = 8 * n + 2 * t + e;
                const float Lc = cL[c], Dc = cD[c];
                float p0 = ex2(fmaf(sT[n][e], sl2, -Lc)), p1 = ex2(fmaf(sT[n][e + 2], sl2, -Lc));
                if (FUSED) p0 = rok[0] ? p0 : 0.0f, p1 = rok[1] ? p1 : 0.0f;
                sT[n][e] = p0;
                sT[n][e + 2] = p1;
                dpT[n][e] = p0 * (dpT[n][e] - Dc);
                dpT[n][e + 2] = p1 * (dpT[n][e + 2] - Dc);
            }
        // dV += Pᵀ · dO, dK += dSᵀ · Q
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t pa[4], da[4];
            pa[0] = pack_bf16(sT[2 * kk][0], sT[2 * kk][1]);
            pa[1] = pack_bf16(sT[2 * kk][2], sT[2 * kk][3]);
            pa[2] = pack_bf16(sT[2 * kk + 1][0], sT[2 * kk + 1][1]);
            pa[3] = pack_bf16(sT[2 * kk + 1][2], sT[2 * kk + 1][3]);
            da[0] = pack_bf16(dpT[2 * kk][0], dpT[2 * kk][1]);
            da[1] = pack_bf16(dpT[2 * kk][2], dpT[2 * kk][3]);
            da[2] = pack_bf16(dpT[2 * kk + 1][0], dpT[2 * kk + 1][1]);
            da[3] = pack_bf16(dpT[2 * kk + 1][2], dpT[2 * kk + 1][3]);
            if (FUSED) { // dSᵀ rows g, g+8 of the warp, query chunks 2kk, 2kk+1
                const int r0 = rw + g, r1 = rw + g + 8;
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sdS + swz<64>(r0, 2 * kk) + 4 * t), "r"(da[0]) : "memory");
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sdS + swz<64>(r1, 2 * kk) + 4 * t), "r"(da[1]) : "memory");
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sdS + swz<64>(r0, 2 * kk + 1) + 4 * t), "r"(da[2]) : "memory");
                asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(sdS + swz<64>(r1, 2 * kk + 1) + 4 * t), "r"(da[3]) : "memory");
            }
#pragma unroll
            for (int np = 0; np < DT / 2; np++) {
                uint32_t bo[4], bq[4];
                ldb_t<D>(bo, cdO, kk * 16, np, lane);
                mma16816(dv[2 * np], pa, bo[0], bo[1]);
                mma16816(dv[2 * np + 1], pa, bo[2], bo[3]);
                ldb_t<D>(bq, cQ, kk * 16, np, lane);
                mma16816(dk[2 * np], da, bq[0], bq[1]);
                mma16816(dk[2 * np + 1], da, bq[2], bq[3]);
            }
        }
        if (FUSED) {
            __syncthreads(); // every warp's dSᵀ is in shared memory
            const int qm = warp & 3, dh = warp >> 2;
            float acc[DT / 2][4];
#pragma unroll
            for (int n = 0; n < DT / 2; n++) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.0f;
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                uint32_t a[4]; // dS [16 queries][16 keys] from the stored dSᵀ
                ldsm_x4_t(a, sdS + swz<64>(kk * 16 + (lane & 7) + ((lane >> 4) << 3), qm * 2 + ((lane >> 3) & 1)));
#pragma unroll
                for (int np = 0; np < DT / 4; np++) {
                    uint32_t bk[4];
                    ldb_t<D>(bk, sK, kk * 16, dh * (DT / 4) + np, lane);
                    mma16816(acc[2 * np], a, bk[0], bk[1]);
                    mma16816(acc[2 * np + 1], a, bk[2], bk[3]);
                }
            }
#pragma unroll
            for (int r = 0; r < 2; r++) {
                const int q = i * BN + qm * 16 + g + 8 * r;
                if (q >= S) continue;
                float *row = dQacc + ((size_t)b * S + q) * ld + (size_t)h * D + dh * (D / 2) + 2 * t;
#pragma unroll
                for (int n = 0; n < DT / 2; n++) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                    atomicAdd((float2 *)(row + 8 * n), make_float2(acc[n][2 * r], acc[n][2 * r + 1]));
#else
                    atomicAdd(row + 8 * n, acc[n][2 * r]);
                    atomicAdd(row + 8 * n + 1, acc[n][2 * r + 1]);
#endif
                }
            }
        }
    }
    cp_async_wait<0>();
    // epilogue: keys that are masked or past S get zero (their P is never used by any query)
    const int nkw = (S + BN - 1) / BN * 2;
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int key = k0 + rw + g + 8 * r;
        if (key >= S) continue;
        const bool ok = (__ldg(kbits + (size_t)b * nkw + (key >> 5)) >> (key & 31)) & 1u;
        bf16 *krow = dK + ((size_t)b * S + key) * ld + (size_t)h * D + 2 * t;
        bf16 *vrow = dV + ((size_t)b * S + key) * ld + (size_t)h * D + 2 * t;
#pragma unroll
        for (int i = 0; i < DT; i++) {
            *(uint32_t *)(krow + 8 * i) =
                ok ? pack_bf16(dk[i][2 * r] * scale, dk[i][2 * r + 1] * scale) : 0u;
            *(uint32_t *)(vrow + 8 * i) = ok ? pack_bf16(dv[i][2 * r], dv[i][2 * r + 1]) : 0u;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backward, dQ: CTA = 16·NW queries, loop over 64-key tiles
template <int D, int NW>
__global__ void __launch_bounds__(NW * 32, NW == 4 ? 2 : 1)
    fa_bwd_dq_kernel(bf16 *__restrict__ dQ, const bf16 *__restrict__ Q, const bf16 *__restrict__ K,
                     const bf16 *__restrict__ V, const bf16 *__restrict__ dO, const float *__restrict__ lse2,
                     const float *__restrict__ delta, const uint32_t *__restrict__ kbits, int S, int Sp, int H,
                     float sl2, float scale) {
    constexpr int NT = NW * 32, BM = 16 * NW, DT = D / 8;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sQ = smem_u32(smem), sdO = sQ + BM * D * 2, sK = sdO + BM * D * 2, sV = sK + 2 * BN * D * 2;
    const int b = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * BM;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
    const size_t ld = (size_t)H * D;
    const bf16 *Kg = K + (size_t)b * S * ld + (size_t)h * D, *Vg = V + (size_t)b * S * ld + (size_t)h * D;
    const int nt = (S + BN - 1) / BN;
    const uint32_t *kb = kbits + (size_t)b * nt * 2;
    const int rw = warp * 16;

    load_tile<BM, D, NT>(sQ, Q + ((size_t)b * S + q0) * ld + (size_t)h * D, ld, S - q0);
    load_tile<BM, D, NT>(sdO, dO + ((size_t)b * S + q0) * ld + (size_t)h * D, ld, S - q0);
    load_tile<BN, D, NT>(sK, Kg, ld, S);
    load_tile<BN, D, NT>(sV, Vg, ld, S);
    cp_async_commit();
    float Lr[2], Dr[2];
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const size_t idx = ((size_t)b * H + h) * Sp + q0 + rw + g + 8 * r; // < Sp: Sp is a multiple of BM
        Lr[r] = lse2[idx];
        Dr[r] = delta[idx];
    }
    float dq[DT][4];
#pragma unroll
    for (int i = 0; i < DT; i++)
#pragma unroll
        for (int e = 0; e < 4; e++) dq[i][e] = 0.0f;

    for (int j = 0; j < nt; j++) {
        const uint32_t w0 = __ldg(kb + 2 * j), w1 = __ldg(kb + 2 * j + 1);
        cp_async_wait<0>();
        __syncthreads();
        if (j + 1 < nt) {
            const int st = (j + 1) & 1, k0 = (j + 1) * BN;
            load_tile<BN, D, NT>(sK + st * BN * D * 2, Kg + (size_t)k0 * ld, ld, S - k0);
            load_tile<BN, D, NT>(sV + st * BN * D * 2, Vg + (size_t)k0 * ld, ld, S - k0);
        }
        cp_async_commit();
        const uint32_t cK = sK + (j & 1) * BN * D * 2, cV = sV + (j & 1) * BN * D * 2;
        float s[8][4], dp[8][4]; /* S = Q·Kᵀ, dP = dO·Vᵀ */
        mma_pair_16x64<D>(s, dp, sQ, sdO, cK, cV, rw, lane);
        const bool full = (w0 & w1) == 0xffffffffu;
#pragma unroll
        for (int n = 0; n < 8; n++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool ok = full || key_ok(w0, w1, 8 * n + 2 * t + e);
#pragma unroll
                for (int r = 0; r < 2; r++) {
                    const float p = ok ? ex2(fmaf(s[n][e + 2 * r], sl2, -Lr[r])) : 0.0f;
                    s[n][e + 2 * r] = p * (dp[n][e + 2 * r] - Dr[r]);
                }
            }
        // dQ += dS · K   (K tile is [key][d]: the k-major B operand)
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            uint32_t da[4];
            da[0] = pack_bf16(s[2 * kk][0], s[2 * kk][1]);
            da[1] = pack_bf16(s[2 * kk][2], s[2 * kk][3]);
            da[2] = pack_bf16(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            da[3] = pack_bf16(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int np = 0; np < DT / 2; np++) {
                uint32_t bk[4];
                ldb_t<D>(bk, cK, kk * 16, np, lane);
                mma16816(dq[2 * np], da, bk[0], bk[1]);
                mma16816(dq[2 * np + 1], da, bk[2], bk[3]);
            }
        }
    }
    cp_async_wait<0>();
#pragma unroll
    for (int r = 0; r < 2; r++) {
        const int q = q0 + rw + g + 8 * r;
        if (q >= S) continue;
        bf16 *row = dQ + ((size_t)b * S + q) * ld + (size_t)h * D + 2 * t;
#pragma unroll
        for (int i = 0; i < DT; i++) *(uint32_t *)(row + 8 * i) = pack_bf16(dq[i][2 * r] * scale, dq[i][2 * r + 1] * scale);
    }
}

// FUSED: dQ = bf16(scale · dQacc)
__global__ void fa_dq_convert_kernel(bf16 *dQ, const float *acc, size_t n, float scale) {
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 4;
    if (i >= n) return; // n is a multiple of 4 (d = 64, 128)
    const float4 v = *(const float4 *)(acc + i);
    uint2 o;
    o.x = pack_bf16(v.x * scale, v.y * scale);
    o.y = pack_bf16(v.z * scale, v.w * scale);
    *(uint2 *)(dQ + i) = o;
}

// ---------------------------------------------------------------------------------------------
// helpers: key bitmask; δ = rowsum(dO∘O) and lse·log2e, padded to Sp (δ = 0, lse2 = +inf, so P = 0)
__global__ void fa_keybits_kernel(uint32_t *bits, const float *kv, int B, int S, int nw) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= B * nw) return;
    const int b = i / nw, w = i % nw;
    uint32_t v = 0;
    for (int k = 0; k < 32; k++) {
        const int j = w * 32 + k;
        if (j < S && (!kv || kv[(size_t)b * S + j] != 0.0f)) v |= 1u << k;
    }
    bits[i] = v;
}

// one warp per (b, q, h), q < Sp
template <int D>
__global__ void fa_delta_kernel(float *delta, float *lse2, const bf16 *dO, const bf16 *O, const float *lse, int B,
                                int S, int Sp, int H) {
    const size_t item = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x & 31;
    if (item >= (size_t)B * Sp * H) return;
    const int h = (int)(item % H);
    const size_t bq = item / H;
    const int b = (int)(bq / Sp), q = (int)(bq % Sp);
    const size_t o = ((size_t)b * H + h) * Sp + q;
    if (q >= S) {
        if (!lane) delta[o] = 0.0f, lse2[o] = INFINITY;
        return;
    }
    const size_t base = ((size_t)b * S + q) * H * D + (size_t)h * D;
    float s = 0.0f;
#pragma unroll
    for (int e = lane * 2; e < D; e += 64) {
        const __nv_bfloat162 a = *(const __nv_bfloat162 *)(dO + base + e), c = *(const __nv_bfloat162 *)(O + base + e);
        s += __bfloat162float(a.x) * __bfloat162float(c.x) + __bfloat162float(a.y) * __bfloat162float(c.y);
    }
#pragma unroll
    for (int k = 16; k > 0; k >>= 1) s += __shfl_xor_sync(0xffffffffu, s, k);
    if (!lane) {
        const float l = lse[((size_t)b * H + h) * S + q];
        delta[o] = s;
        lse2[o] = l == -INFINITY ? INFINITY : l * 1.4426950408889634f;
    }
}

} // namespace fa2
