// qwen_attention.cu: CUDA twin of op_qwen_attention (bf16 in/out, fp32 scores and softmax).
//
// kernel1 (hd % 4 != 0): a block serves QA_WARPS consecutive query rows of one head, one warp per row. The
// block walks the union of its rows' key ranges in tiles of 32 keys staged in shared memory as
// fp32 (K padded to hd+1 columns so that lane = key reads are conflict-free). Per tile each lane
// scores one key against the row's query (broadcast from shared memory), the warp does an online
// softmax update (running max m, sum l), and each lane accumulates up to 4 output features
// (d = lane + 32t) from the 32 probabilities shuffled across the warp. Causal LLM rows stop at
// their own hi; ViT window rows stay inside their window. No tensor cores: attention is ~15 % of
// the encoder's FLOPs at L ≈ 500 (model.md §6.4), the GEMMs go through cuBLASLt.
#include <cuda_bf16.h>
#include <math.h>

#include "check_cuda.h"
#include "qwen_attention.h"

typedef __nv_bfloat16 bf16;

#define QA_WARPS 8
#define QA_TILE 32
#define FULL_MASK 0xffffffffu

// keys [t0, t0 + QA_TILE) of kv head g into the shared K and V tiles as f32 (rows past bhi zero),
// the whole block cooperating; KP is the K tile's row stride
template <int KP>
static __device__ __forceinline__ void load_kv_tile_(float (*Ks)[KP], float (*Vs)[QWEN_ATTN_MAX_HD],
                                                     const __nv_bfloat16 *k, const __nv_bfloat16 *v, int t0, int bhi,
                                                     size_t ldkv, int g, int hd) {
    for (int e = threadIdx.x; e < QA_TILE * hd; e += blockDim.x) {
        int j = e / hd, d = e - j * hd, key = t0 + j;
        float kv = 0.0f, vv = 0.0f;
        if (key < bhi) {
            size_t off = (size_t)key * ldkv + (size_t)g * hd + d;
            kv = __bfloat162float(k[off]);
            vv = __bfloat162float(v[off]);
        }
        Ks[j][d] = kv;
        Vs[j][d] = vv;
    }
}

__global__ void __launch_bounds__(QA_WARPS * 32)
qwen_attention_kernel1(bf16 *out, const bf16 *q, int ldq, const bf16 *k, const bf16 *v, int ldkv, int N, int nh,
                       int rep, int hd, const int32_t *lo, const int32_t *hi, float scale) {
    __shared__ float Ks[QA_TILE][QWEN_ATTN_MAX_HD + 1];
    __shared__ float Vs[QA_TILE][QWEN_ATTN_MAX_HD];
    __shared__ float Qs[QA_WARPS][QWEN_ATTN_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.y, g = h / rep;
    const int r0 = blockIdx.x * QA_WARPS, i = r0 + warp;
    int blo = 0x7fffffff, bhi = 0;
    for (int w = 0; w < QA_WARPS; w++) {
        int r = r0 + w;
        if (r < N) { blo = min(blo, lo[r]); bhi = max(bhi, hi[r]); }
    }
    int qlo = 0, qhi = 0;
    if (i < N) {
        qlo = lo[i];
        qhi = hi[i];
        for (int d = lane; d < hd; d += 32) Qs[warp][d] = __bfloat162float(q[(size_t)i * ldq + (size_t)h * hd + d]) * scale;
    }
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    float m = -INFINITY, l = 0.0f;
    for (int t0 = blo; t0 < bhi; t0 += QA_TILE) {
        __syncthreads(); // the previous tile is consumed; Qs is visible on the first pass
        load_kv_tile_(Ks, Vs, k, v, t0, bhi, ldkv, g, hd);
        __syncthreads();
        if (i >= N) continue;
        int key = t0 + lane;
        bool valid = key >= qlo && key < qhi;
        if (!__any_sync(FULL_MASK, valid)) continue;
        float s = -INFINITY;
        if (valid) {
            float dot = 0.0f;
            for (int d = 0; d < hd; d++) dot += Qs[warp][d] * Ks[lane][d];
            s = dot;
        }
        float tmax = s;
        for (int off = 16; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(FULL_MASK, tmax, off));
        float mnew = fmaxf(m, tmax); // finite: at least one lane is valid
        float alpha = __expf(m - mnew);
        float p = valid ? __expf(s - mnew) : 0.0f;
        float ps = p;
        for (int off = 16; off > 0; off >>= 1) ps += __shfl_xor_sync(FULL_MASK, ps, off);
        l = l * alpha + ps;
#pragma unroll
        for (int t = 0; t < 4; t++) acc[t] *= alpha;
        for (int j = 0; j < QA_TILE; j++) {
            float pj = __shfl_sync(FULL_MASK, p, j);
#pragma unroll
            for (int t = 0; t < 4; t++) {
                int d = lane + 32 * t;
                if (d < hd) acc[t] += pj * Vs[j][d];
            }
        }
        m = mnew;
    }
    if (i < N) {
        float inv = 1.0f / l;
#pragma unroll
        for (int t = 0; t < 4; t++) {
            int d = lane + 32 * t;
            if (d < hd) out[(size_t)i * nh * hd + (size_t)h * hd + d] = __float2bfloat16_rn(acc[t] * inv);
        }
    }
}

// kernel2: kernel1 with register blocking. A warp serves QB = 4 consecutive query rows, a block
// QA2_WARPS warps; every K element read from shared memory feeds 4 dot products and every V
// element 4 accumulators. K rows are padded to hd + 4 floats so that lane = key float4 reads are
// 16-byte aligned and conflict-free (lane l starts at bank 4·l mod 32 in each quarter-warp
// phase); Q rows are read as float4 broadcasts. Needs hd % 4 == 0 (128, 80, 16 here).
#define QA2_WARPS 4
#define QB 4
#define KPAD (QWEN_ATTN_MAX_HD + 4)

__global__ void __launch_bounds__(QA2_WARPS * 32)
qwen_attention_kernel2(bf16 *out, const bf16 *q, int ldq, const bf16 *k, const bf16 *v, int ldkv, int N, int nh,
                       int rep, int hd, const int32_t *lo, const int32_t *hi, float scale) {
    __shared__ __align__(16) float Ks[QA_TILE][KPAD];
    __shared__ __align__(16) float Vs[QA_TILE][QWEN_ATTN_MAX_HD];
    __shared__ __align__(16) float Qs[QA2_WARPS * QB][QWEN_ATTN_MAX_HD];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int h = blockIdx.y, g = h / rep;
    const int r0 = blockIdx.x * QA2_WARPS * QB, i0 = r0 + warp * QB;
    int blo = 0x7fffffff, bhi = 0;
    for (int w = 0; w < QA2_WARPS * QB; w++) {
        int r = r0 + w;
        if (r < N) { blo = min(blo, lo[r]); bhi = max(bhi, hi[r]); }
    }
    int qlo[QB], qhi[QB];
#pragma unroll
    for (int b = 0; b < QB; b++) {
        int i = i0 + b;
        qlo[b] = i < N ? lo[i] : 0;
        qhi[b] = i < N ? hi[i] : 0; // an empty range: rows past N never count
        for (int d = lane; d < hd; d += 32)
            Qs[warp * QB + b][d] = i < N ? __bfloat162float(q[(size_t)i * ldq + (size_t)h * hd + d]) * scale : 0.0f;
    }
    float acc[QB][4], m[QB], l[QB];
#pragma unroll
    for (int b = 0; b < QB; b++) {
        m[b] = -INFINITY;
        l[b] = 0.0f;
#pragma unroll
        for (int t = 0; t < 4; t++) acc[b][t] = 0.0f;
    }
    const int h4 = hd / 4;
    for (int t0 = blo; t0 < bhi; t0 += QA_TILE) {
        __syncthreads();
        load_kv_tile_(Ks, Vs, k, v, t0, bhi, ldkv, g, hd);
        __syncthreads();
        if (i0 >= N) continue;
        int key = t0 + lane;
        bool valid[QB], any = false;
#pragma unroll
        for (int b = 0; b < QB; b++) {
            valid[b] = key >= qlo[b] && key < qhi[b];
            any |= valid[b];
        }
        if (!__any_sync(FULL_MASK, any)) continue;
        float s[QB] = {0.0f, 0.0f, 0.0f, 0.0f};
        const float4 *kr = (const float4 *)&Ks[lane][0];
        for (int d4 = 0; d4 < h4; d4++) {
            float4 kk = kr[d4];
#pragma unroll
            for (int b = 0; b < QB; b++) {
                float4 qq = ((const float4 *)&Qs[warp * QB + b][0])[d4];
                s[b] += qq.x * kk.x + qq.y * kk.y + qq.z * kk.z + qq.w * kk.w;
            }
        }
        float p[QB];
#pragma unroll
        for (int b = 0; b < QB; b++) {
            float sb = valid[b] ? s[b] : -INFINITY, tmax = sb;
            for (int off = 16; off > 0; off >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(FULL_MASK, tmax, off));
            if (tmax == -INFINITY) { // no key of this tile for row b: leave its state alone
                p[b] = 0.0f;
                continue;
            }
            float mnew = fmaxf(m[b], tmax), alpha = __expf(m[b] - mnew);
            p[b] = valid[b] ? __expf(sb - mnew) : 0.0f;
            float ps = p[b];
            for (int off = 16; off > 0; off >>= 1) ps += __shfl_xor_sync(FULL_MASK, ps, off);
            l[b] = l[b] * alpha + ps;
#pragma unroll
            for (int t = 0; t < 4; t++) acc[b][t] *= alpha;
            m[b] = mnew;
        }
        for (int j = 0; j < QA_TILE; j++) {
            float vv[4];
#pragma unroll
            for (int t = 0; t < 4; t++) {
                int d = lane + 32 * t;
                vv[t] = d < hd ? Vs[j][d] : 0.0f;
            }
#pragma unroll
            for (int b = 0; b < QB; b++) {
                float pj = __shfl_sync(FULL_MASK, p[b], j);
#pragma unroll
                for (int t = 0; t < 4; t++) acc[b][t] += pj * vv[t];
            }
        }
    }
#pragma unroll
    for (int b = 0; b < QB; b++) {
        int i = i0 + b;
        if (i >= N) continue;
        float inv = 1.0f / l[b];
#pragma unroll
        for (int t = 0; t < 4; t++) {
            int d = lane + 32 * t;
            if (d < hd) out[(size_t)i * nh * hd + (size_t)h * hd + d] = __float2bfloat16_rn(acc[b][t] * inv);
        }
    }
}

extern "C" void qwen_attention_forward(OpCtx *c, void *out, const void *q, int ldq, const void *k, const void *v,
                                       int ldkv, int N, int nh, int nkv, int hd, const int32_t *lo, const int32_t *hi,
                                       float scale) {
    if (N <= 0) return;
    if (hd > QWEN_ATTN_MAX_HD || hd <= 0 || nkv <= 0 || nh % nkv) {
        fprintf(stderr, "qwen_attention_forward: unsupported shape hd=%d nh=%d nkv=%d\n", hd, nh, nkv);
        exit(EXIT_FAILURE);
    }
    if (hd % 4 == 0) {
        const int rows = QA2_WARPS * QB;
        dim3 grid((unsigned)((N + rows - 1) / rows), (unsigned)nh);
        qwen_attention_kernel2<<<grid, QA2_WARPS * 32, 0, (cudaStream_t)c->stream>>>(
            (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)k, (const bf16 *)v, ldkv, N, nh, nh / nkv, hd, lo, hi, scale);
    } else {
        dim3 grid((unsigned)((N + QA_WARPS - 1) / QA_WARPS), (unsigned)nh);
        qwen_attention_kernel1<<<grid, QA_WARPS * 32, 0, (cudaStream_t)c->stream>>>(
            (bf16 *)out, (const bf16 *)q, ldq, (const bf16 *)k, (const bf16 *)v, ldkv, N, nh, nh / nkv, hd, lo, hi, scale);
    }
    CUDA_CHECK(cudaGetLastError());
}
