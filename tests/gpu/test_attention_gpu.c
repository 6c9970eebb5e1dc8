/* test_attention_gpu: the CUDA attention kernels (kernels/attention.cu) against the CPU reference
 * (kernels/attention.c), and their speed. Needs a GPU.
 *   1. small shapes, full reference: generic path (d 16, 24) and the FlashAttention-2 path
 *      (d 64, 128; odd S, B 2, key masks, a sample whose keys are all masked), each FA2 shape under
 *      every kernel variant (QIE_ATT_FWD / QIE_ATT_BKV / QIE_ATT_BQ); outputs are poisoned (NaN)
 *      before each call, so an unwritten element fails; the backward run twice must agree bit for bit.
 *   2. the DiT shape S 8448 (4096 + 4096 image + 256 text tokens, 106 text keys masked), H 24,
 *      d 128: O, lse, dQ of sampled query rows and dK, dV of sampled key rows against fp32 sums on
 *      the CPU (the key-row sums use the GPU's lse, itself checked on the sampled rows);
 *   3. timings at that shape (median of several calls; FLOPs: forward 4·S²·d·H, backward 2.5×),
 *      for each variant and the generic WMMA kernels as the baseline.
 * Metric: relative L2 error ‖a − ref‖ / ‖ref‖ (max |a − ref| / max |ref| beside it); tolerance
 * 1e-2 (bf16 inputs and outputs, fp32 accumulation), lse 1e-3; equal infinities count as equal. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attention.h"
#include "err.h"
#include "ops.h"
#include "rng.h"
#include "gpulib.h"
#include "testlib.h"

#define TOL 1e-2

static char err[QIE_ERR_LEN];
static OpCtx gpu;

static double now_(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double l2_err_(const float *a, const float *ref, size_t n, double *maxrel) {
    double e = 0, r = 0, m = 0, s = 1e-12;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (isinf(ref[i]) || isinf(a[i]) || isnan(a[i])) {
            if (!(a[i] == ref[i])) bad = 1;
            continue;
        }
        double dlt = (double)a[i] - ref[i];
        e += dlt * dlt;
        r += (double)ref[i] * ref[i];
        m = fmax(m, fabs(dlt));
        s = fmax(s, fabs(ref[i]));
    }
    if (maxrel) *maxrel = bad ? INFINITY : m / s;
    if (bad) return INFINITY;
    return r > 0 ? sqrt(e / r) : sqrt(e);
}

static void report_(const char *what, const float *a, const float *ref, size_t n, double tol) {
    double mr, e = l2_err_(a, ref, n, &mr);
    printf("    %-6s rel L2 %.2e  max %.2e  %s\n", what, e, mr, e <= tol ? "OK" : "NOT OK");
    CHECK(e <= tol, "%s: %.3g", what, e);
}

static void poison_act_(void *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    op_upload_act(&gpu, d, h, n);
    free(h);
}

static void poison_f32_(float *d, size_t n) {
    float *h = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = NAN;
    op_upload_f32(&gpu, d, h, n);
    free(h);
}

static void clear_variant_(void);
/* variants 0-3: kernel shapes (deterministic backward); 4: QIE_ATT_BWD=fused (atomic dQ) */
static void set_variant_(int v) {
    char buf[8];
    clear_variant_();
    if (v == 4) {
        setenv("QIE_ATT_BWD", "fused", 1);
        return;
    }
    snprintf(buf, sizeof buf, "%d", v % 3);
    setenv("QIE_ATT_FWD", buf, 1);
    setenv("QIE_ATT_BKV", (v & 1) ? "8" : "4", 1);
    setenv("QIE_ATT_BQ", (v & 2) ? "8" : "4", 1);
}
static void clear_variant_(void) {
    unsetenv("QIE_ATT_FWD");
    unsetenv("QIE_ATT_BKV");
    unsetenv("QIE_ATT_BQ");
    unsetenv("QIE_ATT_IMPL");
    unsetenv("QIE_ATT_BWD");
}

/* mask kinds: 0 none; 1 sample 1 masks keys 3..39; 2 sample 0 masks keys 100..199, sample 1 all keys */
static float *make_mask_(int kind, int B, int S) {
    if (!kind) return NULL;
    float *m = malloc((size_t)B * S * 4);
    for (int b = 0; b < B; b++)
        for (int j = 0; j < S; j++) {
            int off = kind == 1 ? (b == 1 && j >= 3 && j < 40) : (b == 0 ? (j >= 100 && j < 200) : 1);
            m[(size_t)b * S + j] = off ? 0.0f : 1.0f;
        }
    return m;
}

/* ---- 1. small shapes against the full CPU reference ---------------------------------------- */
static void full_case_(int B, int S, int H, int d, int mask_kind) {
    const size_t n = (size_t)B * S * H * d, nl = (size_t)B * H * S;
    void *dq, *dk, *dv, *dgo;
    float *q = gpu_rand_rounded(&gpu, n, 29, 1, 1, &dq), *k = gpu_rand_rounded(&gpu, n, 29, 2, 1, &dk), *v = gpu_rand_rounded(&gpu, n, 29, 3, 1, &dv), *go = gpu_rand_rounded(&gpu, n, 29, 4, 1, &dgo);
    float *mask = make_mask_(mask_kind, B, S), *dmask = NULL;
    if (mask) {
        dmask = op_alloc(&gpu, (size_t)B * S * 4);
        op_upload_f32(&gpu, dmask, mask, (size_t)B * S);
    }
    float *o = malloc(n * 4), *lse = malloc(nl * 4), *gq = malloc(n * 4), *gk = malloc(n * 4), *gv = malloc(n * 4);
    attention_forward_cpu(o, lse, q, k, v, mask, B, S, H, d);
    attention_backward_cpu(gq, gk, gv, go, q, k, v, o, lse, mask, B, S, H, d);
    void *d_o = op_alloc(&gpu, n * 2), *d_gq = op_alloc(&gpu, n * 2), *d_gk = op_alloc(&gpu, n * 2), *d_gv = op_alloc(&gpu, n * 2);
    float *d_lse = op_alloc(&gpu, nl * 4);
    const int fa2 = d == 64 || d == 128, nvar = fa2 ? 5 : 1;
    for (int var = 0; var < nvar; var++) {
        if (fa2) set_variant_(var);
        poison_act_(d_o, n); poison_f32_(d_lse, nl);
        poison_act_(d_gq, n); poison_act_(d_gk, n); poison_act_(d_gv, n);
        op_attention(&gpu, d_o, d_lse, dq, dk, dv, dmask, B, S, H, d);
        op_attention_backward(&gpu, d_gq, d_gk, d_gv, dgo, dq, dk, dv, d_o, d_lse, dmask, B, S, H, d);
        op_sync(&gpu);
        printf("  B %d S %d H %d d %d mask %d%s", B, S, H, d, mask_kind, fa2 ? "" : " (generic)\n");
        if (fa2 && var < 4) printf(" variant fwd %d bkv %d bq %d\n", var % 3, (var & 1) ? 8 : 4, (var & 2) ? 8 : 4);
        if (fa2 && var == 4) printf(" default fwd, fused backward (atomic dQ)\n");
        float *t, *a2, *b2;
        report_("O", t = gpu_down_act(&gpu, d_o, n), o, n, TOL); free(t);
        report_("lse", t = gpu_down_f32(&gpu, d_lse, nl), lse, nl, 1e-3); free(t);
        report_("dQ", t = gpu_down_act(&gpu, d_gq, n), gq, n, TOL); free(t);
        report_("dK", t = gpu_down_act(&gpu, d_gk, n), gk, n, TOL); free(t);
        a2 = gpu_down_act(&gpu, d_gv, n);
        report_("dV", a2, gv, n, TOL);
        /* determinism: a second backward must give the same bits */
        t = gpu_down_act(&gpu, d_gq, n);
        op_attention_backward(&gpu, d_gq, d_gk, d_gv, dgo, dq, dk, dv, d_o, d_lse, dmask, B, S, H, d);
        b2 = gpu_down_act(&gpu, d_gq, n);
        int same = !memcmp(t, b2, n * 4);
        free(b2);
        b2 = gpu_down_act(&gpu, d_gv, n);
        same = same && !memcmp(a2, b2, n * 4);
        printf("    backward repeat: %s\n", same ? "bit-identical" : "DIFFERS");
        if (fa2 && var < 4) CHECK(same, "deterministic backward");
        free(t); free(a2); free(b2);
    }
    clear_variant_();
    free(q); free(k); free(v); free(go); free(mask); free(o); free(lse); free(gq); free(gk); free(gv);
    op_free(&gpu, dq); op_free(&gpu, dk); op_free(&gpu, dv); op_free(&gpu, dgo); op_free(&gpu, dmask);
    op_free(&gpu, d_o); op_free(&gpu, d_gq); op_free(&gpu, d_gk); op_free(&gpu, d_gv); op_free(&gpu, d_lse);
}

static void test_attention_small(void) {
    full_case_(2, 77, 3, 16, 1);
    full_case_(1, 131, 2, 24, 0);
    full_case_(2, 200, 2, 128, 1);
    full_case_(1, 64, 2, 128, 0);
    full_case_(2, 333, 2, 64, 1);
    full_case_(1, 517, 4, 128, 0);
    full_case_(2, 1000, 3, 128, 2);
    full_case_(2, 190, 2, 64, 2);
}

/* ---- 2./3. the DiT shape ---------------------------------------------------------------------- */
static double dotf_(const float *a, const float *b, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += (double)a[i] * b[i];
    return s;
}

static void test_attention_dit_shape(void) {
    const int B = 1, S = 8448, H = 24, d = 128, D = H * d, NS = 48;
    const size_t n = (size_t)S * D, nl = (size_t)H * S;
    const float scale = 1.0f / sqrtf((float)d);
    void *dq, *dk, *dv, *dgo;
    float *q = gpu_rand_rounded(&gpu, n, 29, 11, 1, &dq), *k = gpu_rand_rounded(&gpu, n, 29, 12, 1, &dk), *v = gpu_rand_rounded(&gpu, n, 29, 13, 1, &dv), *go = gpu_rand_rounded(&gpu, n, 29, 14, 1, &dgo);
    float *mask = malloc(S * 4); /* text tokens first: 256 of them, the last 106 padding */
    for (int j = 0; j < S; j++) mask[j] = (j >= 150 && j < 256) ? 0.0f : 1.0f;
    float *dmask = op_alloc(&gpu, S * 4);
    op_upload_f32(&gpu, dmask, mask, S);
    void *d_o = op_alloc(&gpu, n * 2), *d_gq = op_alloc(&gpu, n * 2), *d_gk = op_alloc(&gpu, n * 2), *d_gv = op_alloc(&gpu, n * 2);
    float *d_lse = op_alloc(&gpu, nl * 4);
    poison_act_(d_o, n); poison_f32_(d_lse, nl);
    poison_act_(d_gq, n); poison_act_(d_gk, n); poison_act_(d_gv, n);
    op_attention(&gpu, d_o, d_lse, dq, dk, dv, dmask, B, S, H, d);
    op_attention_backward(&gpu, d_gq, d_gk, d_gv, dgo, dq, dk, dv, d_o, d_lse, dmask, B, S, H, d);
    op_sync(&gpu);
    float *O = gpu_down_act(&gpu, d_o, n), *L = gpu_down_f32(&gpu, d_lse, nl), *GQ = gpu_down_act(&gpu, d_gq, n), *GK = gpu_down_act(&gpu, d_gk, n), *GV = gpu_down_act(&gpu, d_gv, n);
    /* sampled rows: (head, row) pairs, a few of them text rows and masked keys */
    float *ro = malloc(NS * d * 4), *go_ = malloc(NS * d * 4), *rq = malloc(NS * d * 4), *gq_ = malloc(NS * d * 4);
    float *rk = malloc(NS * d * 4), *gk_ = malloc(NS * d * 4), *rv = malloc(NS * d * 4), *gv_ = malloc(NS * d * 4);
    float *rl = malloc(NS * 4), *gl = malloc(NS * 4);
    double *p = malloc(S * sizeof(double)), *delta = malloc(S * sizeof(double));
    for (int si = 0; si < NS; si++) {
        const int h = (si * 7) % H, i = si < 4 ? 150 + si * 30 : (int)((si * 2654435761u) % S);
        /* query row i: forward and dQ */
        const float *qi = q + (size_t)i * D + h * d, *doi = go + (size_t)i * D + h * d;
        double mx = -INFINITY;
        for (int j = 0; j < S; j++) {
            p[j] = mask[j] != 0.0f ? scale * dotf_(qi, k + (size_t)j * D + h * d, d) : -INFINITY;
            if (p[j] > mx) mx = p[j];
        }
        double sum = 0;
        for (int j = 0; j < S; j++) sum += (p[j] = p[j] == -INFINITY ? 0.0 : exp(p[j] - mx));
        double oacc[128] = {0}, dqa[128] = {0};
        for (int j = 0; j < S; j++) {
            if (p[j] == 0.0) continue;
            const float *vj = v + (size_t)j * D + h * d;
            for (int e = 0; e < d; e++) oacc[e] += p[j] / sum * vj[e];
        }
        double dl = 0;
        for (int e = 0; e < d; e++) dl += oacc[e] * doi[e];
        for (int j = 0; j < S; j++) {
            if (p[j] == 0.0) continue;
            const double pj = p[j] / sum, ds = pj * (dotf_(doi, v + (size_t)j * D + h * d, d) - dl) * scale;
            const float *kj = k + (size_t)j * D + h * d;
            for (int e = 0; e < d; e++) dqa[e] += ds * kj[e];
        }
        for (int e = 0; e < d; e++) {
            ro[si * d + e] = (float)oacc[e];
            go_[si * d + e] = O[(size_t)i * D + h * d + e];
            rq[si * d + e] = (float)dqa[e];
            gq_[si * d + e] = GQ[(size_t)i * D + h * d + e];
        }
        rl[si] = (float)(mx + log(sum));
        gl[si] = L[(size_t)h * S + i];
        /* key row j = i: dK, dV from every query's (GPU) lse and δ = dO·O */
        const int j = i;
        const float *kj = k + (size_t)j * D + h * d, *vj = v + (size_t)j * D + h * d;
        double dka[128] = {0}, dva[128] = {0};
        if (mask[j] != 0.0f)
            for (int r = 0; r < S; r++) {
                const float *qr = q + (size_t)r * D + h * d, *dor = go + (size_t)r * D + h * d;
                const double pr = exp(scale * dotf_(qr, kj, d) - L[(size_t)h * S + r]);
                const double dlr = dotf_(dor, O + (size_t)r * D + h * d, d);
                const double ds = pr * (dotf_(dor, vj, d) - dlr) * scale;
                for (int e = 0; e < d; e++) dva[e] += pr * dor[e], dka[e] += ds * qr[e];
            }
        for (int e = 0; e < d; e++) {
            rk[si * d + e] = (float)dka[e];
            gk_[si * d + e] = GK[(size_t)j * D + h * d + e];
            rv[si * d + e] = (float)dva[e];
            gv_[si * d + e] = GV[(size_t)j * D + h * d + e];
        }
    }
    (void)delta;
    printf("  B 1 S %d H %d d %d, text mask, %d sampled rows\n", S, H, d, NS);
    report_("O", go_, ro, (size_t)NS * d, TOL);
    report_("lse", gl, rl, NS, 1e-3);
    report_("dQ", gq_, rq, (size_t)NS * d, TOL);
    report_("dK", gk_, rk, (size_t)NS * d, TOL);
    report_("dV", gv_, rv, (size_t)NS * d, TOL);
    free(ro); free(go_); free(rq); free(gq_); free(rk); free(gk_); free(rv); free(gv_); free(rl); free(gl);
    free(p); free(delta); free(O); free(L); free(GQ); free(GK); free(GV);

    /* timings */
    const double ff = 4.0 * S * (double)S * d * H, fb = 2.5 * ff;
    const char *names[] = {"fwd0 4w x16 / bkv4 bq4", "fwd1 8w x16 / bkv8 bq4", "fwd2 4w x32 / bkv4 bq8",
                           "fwd0 4w x16 / bkv8 bq8", "default / fused bwd", "generic wmma"};
    printf("  timings at S %d H %d d %d (median of 7, ms and TFLOP/s)\n", S, H, d);
    for (int var = 0; var < 6; var++) {
        clear_variant_();
        if (var < 5) set_variant_(var);
        else setenv("QIE_ATT_IMPL", "wmma", 1);
        const int reps = var < 5 ? 7 : 3;
        for (int masked = 0; masked < 2; masked++) {
            double tf[7], tb[7];
            const float *mk = masked ? dmask : NULL;
            op_attention(&gpu, d_o, d_lse, dq, dk, dv, mk, B, S, H, d); /* warm-up */
            op_attention_backward(&gpu, d_gq, d_gk, d_gv, dgo, dq, dk, dv, d_o, d_lse, mk, B, S, H, d);
            op_sync(&gpu);
            for (int r = 0; r < reps; r++) {
                double t0 = now_();
                op_attention(&gpu, d_o, d_lse, dq, dk, dv, mk, B, S, H, d);
                op_sync(&gpu);
                double t1 = now_();
                op_attention_backward(&gpu, d_gq, d_gk, d_gv, dgo, dq, dk, dv, d_o, d_lse, mk, B, S, H, d);
                op_sync(&gpu);
                tf[r] = t1 - t0;
                tb[r] = now_() - t1;
            }
            for (int a = 0; a < reps; a++) /* sort */
                for (int b2 = a + 1; b2 < reps; b2++) {
                    if (tf[b2] < tf[a]) { double x = tf[a]; tf[a] = tf[b2]; tf[b2] = x; }
                    if (tb[b2] < tb[a]) { double x = tb[a]; tb[a] = tb[b2]; tb[b2] = x; }
                }
            const double mf = tf[reps / 2], mb = tb[reps / 2];
            printf("    %-24s %-6s fwd %7.3f ms %6.1f TFLOP/s   bwd %7.3f ms %6.1f TFLOP/s\n", names[var],
                   masked ? "mask" : "nomask", mf * 1e3, ff / mf / 1e12, mb * 1e3, fb / mb / 1e12);
        }
    }
    clear_variant_();
    free(q); free(k); free(v); free(go); free(mask);
    op_free(&gpu, dq); op_free(&gpu, dk); op_free(&gpu, dv); op_free(&gpu, dgo); op_free(&gpu, dmask);
    op_free(&gpu, d_o); op_free(&gpu, d_gq); op_free(&gpu, d_gk); op_free(&gpu, d_gv); op_free(&gpu, d_lse);
}

int main(void) {
    if (opctx_init(err, &gpu, "cuda")) {
        fprintf(stderr, "test_attention_gpu needs a CUDA build and a GPU: %s\n", err);
        return 1;
    }
    TEST_RUN(test_attention_small);
    TEST_RUN(test_attention_dit_shape);
    opctx_free(&gpu);
    return TEST_DONE();
}
