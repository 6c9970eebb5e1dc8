/* test_dit_ops: the transformer's CPU reference ops (layernorm+modulate, gate, rmsnorm, gelu-tanh,
 * rope, fused q/k norm + rope, masked attention, timestep sinusoid) against double-precision loops
 * (forwards) and central finite differences of L = Σ out·G (backwards, every input element).
 * Finite differences run on the fp32 ops with h = 1e-2 on O(1) inputs: the tolerance 2e-3 of
 * max|grad| covers the O(h²) truncation and fp32 rounding of L. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "adaln.h"
#include "attention.h"
#include "err.h"
#include "gelu.h"
#include "layernorm.h"
#include "ops.h"
#include "rmsnorm.h"
#include "rng.h"
#include "rope.h"
#include "testlib.h"
#include "timestep.h"

#define FD_TOL 2e-3
#define FD_H 1e-2f

static char err[QIE_ERR_LEN];

static float *rnd_(size_t n, uint64_t sub, float scale) {
    float *x = malloc(n * sizeof(float));
    rng_normal_cpu(x, n, 7, sub, 0);
    for (size_t i = 0; i < n; i++) x[i] *= scale;
    return x;
}

/* A forward under test: reads inputs in[0..], writes out (nout floats). */
typedef void (*FwdFn)(void *ctx, float **in, float *out);

static double loss_(FwdFn f, void *ctx, float **in, float *out, const float *G, size_t nout) {
    f(ctx, in, out);
    double L = 0;
    for (size_t i = 0; i < nout; i++) L += (double)out[i] * G[i];
    return L;
}

/* max |fd − analytic| / max|analytic| over input `which` (n elements) */
static double fd_err_(FwdFn f, void *ctx, float **in, int which, size_t n, const float *an, const float *G,
                      size_t nout) {
    float *out = malloc(nout * sizeof(float));
    double m = 0, s = 1e-6;
    for (size_t i = 0; i < n; i++) s = fmax(s, fabs(an[i]));
    for (size_t i = 0; i < n; i++) {
        float x0 = in[which][i];
        in[which][i] = x0 + FD_H;
        double lp = loss_(f, ctx, in, out, G, nout);
        in[which][i] = x0 - FD_H;
        double lm = loss_(f, ctx, in, out, G, nout);
        in[which][i] = x0;
        double fd = (lp - lm) / (2.0 * FD_H);
        m = fmax(m, fabs(fd - an[i]));
    }
    free(out);
    return m / s;
}

/* ---- layernorm + modulation ---------------------------------------------------------------- */

typedef struct {
    AdaMod m;
    int plain;
} LnCtx;

static void ln_fwd_(void *ctx, float **in, float *out) {
    LnCtx *c = ctx;
    size_t R = (size_t)c->m.B * c->m.N;
    float *mean = malloc(R * 4), *rstd = malloc(R * 4);
    /* in[1] holds the modulation matrix: shift at column 0, scale at column D */
    layernorm_modulate_forward_cpu(out, mean, rstd, in[0], c->plain ? NULL : in[1], c->plain ? NULL : in[1] + c->m.D,
                                   &c->m);
    free(mean);
    free(rstd);
}

static void ln_case_(int sets, int plain) {
    LnCtx c = {{2, 5, 12, sets, 3, 3 * 12}, plain};
    const size_t R = 10, D = 12, nmod = (size_t)sets * 2 * c.m.ld;
    float *x = rnd_(R * D, 1, 1.5f), *mod = rnd_(nmod, 2, 0.5f), *G = rnd_(R * D, 3, 1.0f);
    for (size_t i = 0; i < R * D; i++) x[i] += 0.3f; /* nonzero mean */
    float *out = malloc(R * D * 4), *mean = malloc(R * 4), *rstd = malloc(R * 4);
    float *dx = calloc(R * D, 4), *dmod = malloc(nmod * 4);
    for (size_t i = 0; i < nmod; i++) dmod[i] = 1e9f; /* overwritten where it matters */
    float *in[2] = {x, mod};
    ln_fwd_(&c, in, out);
    /* forward against double */
    double fe = 0;
    for (int b = 0; b < 2; b++)
        for (int n = 0; n < 5; n++) {
            const float *xr = x + ((size_t)b * 5 + n) * D;
            double mu = 0, var = 0;
            for (size_t i = 0; i < D; i++) mu += xr[i];
            mu /= D;
            for (size_t i = 0; i < D; i++) var += (xr[i] - mu) * (xr[i] - mu);
            var /= D;
            int r = adamod_row(&c.m, b, n);
            for (size_t i = 0; i < D; i++) {
                double v = (xr[i] - mu) / sqrt(var + 1e-6);
                if (!plain) v = v * (1 + mod[r * c.m.ld + D + i]) + mod[r * c.m.ld + i];
                fe = fmax(fe, fabs(v - out[((size_t)b * 5 + n) * D + i]));
            }
        }
    CHECK(fe < 1e-5, "layernorm forward (sets %d plain %d): %.3g", sets, plain, fe);
    layernorm_modulate_forward_cpu(out, mean, rstd, x, plain ? NULL : mod, plain ? NULL : mod + D, &c.m);
    layernorm_modulate_backward_cpu(dx, plain ? NULL : dmod, plain ? NULL : dmod + D, G, x, mean, rstd,
                                    plain ? NULL : mod + D, &c.m);
    double ex = fd_err_(ln_fwd_, &c, in, 0, R * D, dx, G, R * D);
    CHECK(ex < FD_TOL, "layernorm d_inp (sets %d plain %d): %.3g", sets, plain, ex);
    if (!plain) {
        /* only shift/scale columns (0..2D) of each row are parameters here */
        float *an = calloc(nmod, 4);
        for (int r = 0; r < sets * 2; r++)
            for (size_t i = 0; i < 2 * D; i++) an[r * c.m.ld + i] = dmod[r * c.m.ld + i];
        double em = fd_err_(ln_fwd_, &c, in, 1, nmod, an, G, R * D);
        CHECK(em < FD_TOL, "layernorm d_shift/d_scale (sets %d): %.3g", sets, em);
        free(an);
        /* accumulation: a second backward adds the same d_inp again */
        float *dx2 = malloc(R * D * 4);
        memcpy(dx2, dx, R * D * 4);
        layernorm_modulate_backward_cpu(dx2, dmod, dmod + D, G, x, mean, rstd, mod + D, &c.m);
        double acc = 0;
        for (size_t i = 0; i < R * D; i++) acc = fmax(acc, fabs(dx2[i] - 2 * dx[i]));
        CHECK(acc < 1e-5, "d_inp accumulates");
        free(dx2);
    }
    free(x); free(mod); free(G); free(out); free(mean); free(rstd); free(dx); free(dmod);
}

static void test_layernorm(void) {
    ln_case_(1, 1);
    ln_case_(1, 0);
    ln_case_(2, 0); /* zero_cond_t: tokens n >= 3 use row B + b */
}

/* ---- gated residual ------------------------------------------------------------------------ */

static void gate_fwd_(void *ctx, float **in, float *out) { gate_residual_forward_cpu(out, in[0], in[1], in[2], ctx); }

static void test_gate(void) {
    AdaMod m = {2, 4, 8, 2, 1, 16};
    const size_t n = 2 * 4 * 8, ng = 4 * 16;
    float *h = rnd_(n, 10, 1), *y = rnd_(n, 11, 1), *g = rnd_(ng, 12, 1), *G = rnd_(n, 13, 1);
    float *out = malloc(n * 4), *dy = malloc(n * 4), *dg = malloc(ng * 4);
    float *in[3] = {h, y, g};
    gate_fwd_(&m, in, out);
    double fe = 0;
    for (int b = 0; b < 2; b++)
        for (int t = 0; t < 4; t++)
            for (int i = 0; i < 8; i++) {
                size_t k = ((size_t)b * 4 + t) * 8 + i;
                fe = fmax(fe, fabs(out[k] - (h[k] + (double)g[adamod_row(&m, b, t) * 16 + i] * y[k])));
            }
    CHECK(fe < 1e-6);
    gate_residual_backward_cpu(dy, dg, G, y, g, &m);
    CHECK(fd_err_(gate_fwd_, &m, in, 1, n, dy, G, n) < FD_TOL);
    float *an = calloc(ng, 4);
    for (int r = 0; r < 4; r++)
        for (int i = 0; i < 8; i++) an[r * 16 + i] = dg[r * 16 + i];
    CHECK(fd_err_(gate_fwd_, &m, in, 2, ng, an, G, n) < FD_TOL);
    free(h); free(y); free(g); free(G); free(out); free(dy); free(dg); free(an);
}

/* ---- rmsnorm ------------------------------------------------------------------------------- */

static void rms_fwd_(void *ctx, float **in, float *out) {
    (void)ctx;
    rmsnorm_forward_cpu(out, NULL, in[0], in[1], 6, 20);
}

static void test_rmsnorm(void) {
    const int R = 6, Dm = 20;
    float *x = rnd_(R * Dm, 20, 1), *w = rnd_(Dm, 21, 0.3f), *G = rnd_(R * Dm, 22, 1);
    for (int i = 0; i < Dm; i++) w[i] += 1;
    float *out = malloc(R * Dm * 4), *rstd = malloc(R * 4), *dx = malloc(R * Dm * 4), *dw = calloc(Dm, 4);
    rmsnorm_forward_cpu(out, rstd, x, w, R, Dm);
    double fe = 0;
    for (int r = 0; r < R; r++) {
        double ss = 0;
        for (int i = 0; i < Dm; i++) ss += (double)x[r * Dm + i] * x[r * Dm + i];
        double rs = 1 / sqrt(ss / Dm + 1e-6);
        for (int i = 0; i < Dm; i++) fe = fmax(fe, fabs(out[r * Dm + i] - x[r * Dm + i] * rs * w[i]));
    }
    CHECK(fe < 1e-5);
    rmsnorm_backward_cpu(dx, dw, G, x, rstd, w, R, Dm);
    float *in[2] = {x, w};
    double ex = fd_err_(rms_fwd_, NULL, in, 0, R * Dm, dx, G, R * Dm), ew = fd_err_(rms_fwd_, NULL, in, 1, Dm, dw, G, R * Dm);
    CHECK(ex < FD_TOL && ew < FD_TOL, "d_inp %.3g d_w %.3g", ex, ew);
    free(x); free(w); free(G); free(out); free(rstd); free(dx); free(dw);
}

/* ---- gelu ---------------------------------------------------------------------------------- */

static void test_gelu(void) {
    float x[11] = {-6, -3, -1.5f, -0.7f, -1e-3f, 0, 1e-3f, 0.7f, 1.5f, 3, 6}, y[11], dx[11], g[11];
    for (int i = 0; i < 11; i++) g[i] = 1;
    gelu_tanh_forward_cpu(y, x, 11);
    gelu_tanh_backward_cpu(dx, g, x, 11);
    for (int i = 0; i < 11; i++) {
        double v = x[i], f = 0.5 * v * (1 + tanh(sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
        CHECK_NEAR(y[i], f, 1e-6);
        double h = 1e-4, a = v + h, b = v - h;
        double fd = (0.5 * a * (1 + tanh(sqrt(2 / M_PI) * (a + 0.044715 * a * a * a))) -
                     0.5 * b * (1 + tanh(sqrt(2 / M_PI) * (b + 0.044715 * b * b * b)))) / (2 * h);
        CHECK_NEAR(dx[i], fd, 1e-5);
    }
}

/* ---- rope ---------------------------------------------------------------------------------- */

static void test_rope(void) {
    /* table: spec 1.7 worked example, first target token (0, −2, −2) with axes 4/6/6 */
    const int axes[3] = {4, 6, 6}, d = 16;
    int pos[6] = {0, -2, -2, 1, 0, 5};
    float cs[2 * 16];
    rope_table_cpu(cs, pos, 2, axes);
    int k = 0;
    double te = 0;
    for (int a = 0; a < 3; a++)
        for (int j = 0; j < axes[a] / 2; j++, k++)
            for (int n = 0; n < 2; n++) {
                double th = pos[n * 3 + a] / pow(10000.0, 2.0 * j / axes[a]);
                te = fmax(te, fabs(cs[(n * 8 + k) * 2] - cos(th)) + fabs(cs[(n * 8 + k) * 2 + 1] - sin(th)));
            }
    CHECK(te < 1e-6, "table %.3g", te);
    /* rotation: forward vs complex multiply in double; inverse undoes it; the inverse is the
     * transpose, so <rope(x), g> = <x, rope⁻¹(g)> (the backward) */
    const int B = 2, N = 2, H = 3;
    const size_t n = (size_t)B * N * H * d;
    float *x = rnd_(n, 30, 1), *g = rnd_(n, 31, 1), *y = malloc(n * 4), *z = malloc(n * 4), *gi = malloc(n * 4);
    rope_forward_cpu(y, x, cs, B, N, H, d, 0);
    double fe = 0;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < N; t++)
            for (int h = 0; h < H; h++)
                for (int p = 0; p < d / 2; p++) {
                    size_t o = (((size_t)b * N + t) * H + h) * d + 2 * p;
                    double c = cs[(t * 8 + p) * 2], s = cs[(t * 8 + p) * 2 + 1];
                    fe = fmax(fe, fabs(y[o] - (x[o] * c - x[o + 1] * s)) + fabs(y[o + 1] - (x[o] * s + x[o + 1] * c)));
                }
    CHECK(fe < 1e-6);
    rope_forward_cpu(z, y, cs, B, N, H, d, 1);
    double ie = 0, l1 = 0, l2 = 0;
    for (size_t i = 0; i < n; i++) ie = fmax(ie, fabs(z[i] - x[i]));
    CHECK(ie < 1e-5);
    rope_forward_cpu(gi, g, cs, B, N, H, d, 1);
    for (size_t i = 0; i < n; i++) l1 += (double)y[i] * g[i], l2 += (double)x[i] * gi[i];
    CHECK(fabs(l1 - l2) < 1e-4 * fmax(1, fabs(l1)), "%.9g vs %.9g", l1, l2);
    free(x); free(g); free(y); free(z); free(gi);
}

/* fused q/k RMSNorm + RoPE + joint scatter: finite differences through the whole op */
typedef struct {
    int B, N, H, d, S, off;
    const float *cs;
} QkvCtx;

static void qkv_fwd_(void *ctx, float **in, float *out) {
    QkvCtx *c = ctx;
    const size_t J = (size_t)c->B * c->S * c->H * c->d;
    float *rstd = malloc((size_t)c->B * c->N * 2 * c->H * 4);
    memset(out, 0, 3 * J * 4);
    qkv_norm_rope_forward_cpu(out, out + J, out + 2 * J, rstd, in[0], in[1], in[2], c->cs, c->B, c->N, c->H, c->d,
                              c->S, c->off);
    free(rstd);
}

static void test_qkv_norm_rope(void) {
    const int axes[3] = {2, 2, 4};
    QkvCtx c = {2, 3, 2, 8, 5, 2, NULL};
    int pos[9] = {0, -1, -1, 0, -1, 0, 1, 0, 1};
    float cs[3 * 8];
    rope_table_cpu(cs, pos, 3, axes);
    c.cs = cs;
    const size_t D = 16, R = 6, J = (size_t)c.B * c.S * D;
    float *qkv = rnd_(R * 3 * D, 40, 1), *wq = rnd_(8, 41, 0.3f), *wk = rnd_(8, 42, 0.3f), *G = rnd_(3 * J, 43, 1);
    for (int i = 0; i < 8; i++) wq[i] += 1, wk[i] += 1;
    float *out = malloc(3 * J * 4), *rstd = malloc(R * 2 * 2 * 4), *dqkv = malloc(R * 3 * D * 4);
    float *dwq = calloc(8, 4), *dwk = calloc(8, 4);
    float *in[3] = {qkv, wq, wk};
    qkv_fwd_(&c, in, out);
    qkv_norm_rope_forward_cpu(out, out + J, out + 2 * J, rstd, qkv, wq, wk, cs, c.B, c.N, c.H, c.d, c.S, c.off);
    /* v is a plain copy into rows off.. of each sample */
    CHECK(!memcmp(out + 2 * J + (size_t)(1 * c.S + c.off + 2) * D, qkv + (size_t)(1 * 3 + 2) * 3 * D + 2 * D, D * 4));
    qkv_norm_rope_backward_cpu(dqkv, dwq, dwk, G, G + J, G + 2 * J, qkv, rstd, wq, wk, cs, c.B, c.N, c.H, c.d, c.S,
                               c.off);
    double e0 = fd_err_(qkv_fwd_, &c, in, 0, R * 3 * D, dqkv, G, 3 * J);
    double e1 = fd_err_(qkv_fwd_, &c, in, 1, 8, dwq, G, 3 * J), e2 = fd_err_(qkv_fwd_, &c, in, 2, 8, dwk, G, 3 * J);
    CHECK(e0 < FD_TOL && e1 < FD_TOL && e2 < FD_TOL, "d_qkv %.3g d_wq %.3g d_wk %.3g", e0, e1, e2);
    free(qkv); free(wq); free(wk); free(G); free(out); free(rstd); free(dqkv); free(dwq); free(dwk);
}

/* ---- attention ----------------------------------------------------------------------------- */

typedef struct {
    int B, S, H, d;
    const float *mask;
} AttCtx;

static void att_fwd_(void *ctx, float **in, float *out) {
    AttCtx *c = ctx;
    float *lse = malloc((size_t)c->B * c->H * c->S * 4);
    attention_forward_cpu(out, lse, in[0], in[1], in[2], c->mask, c->B, c->S, c->H, c->d);
    free(lse);
}

static void test_attention(void) {
    AttCtx c = {2, 7, 2, 8, NULL};
    float mask[14] = {1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 0, 0, 1, 1}; /* sample 1: keys 1, 3, 4 padded */
    c.mask = mask;
    const size_t n = (size_t)c.B * c.S * c.H * c.d;
    float *q = rnd_(n, 50, 1), *k = rnd_(n, 51, 1), *v = rnd_(n, 52, 1), *G = rnd_(n, 53, 1);
    float *o = malloc(n * 4), *lse = malloc((size_t)c.B * c.H * c.S * 4);
    float *dq = malloc(n * 4), *dk = malloc(n * 4), *dv = malloc(n * 4);
    attention_forward_cpu(o, lse, q, k, v, mask, c.B, c.S, c.H, c.d);
    /* double-loop forward */
    double fe = 0;
    const int D = c.H * c.d;
    for (int b = 0; b < c.B; b++)
        for (int h = 0; h < c.H; h++)
            for (int i = 0; i < c.S; i++) {
                double s[7], mx = -1e300, sum = 0;
                for (int j = 0; j < c.S; j++) {
                    s[j] = 0;
                    for (int e = 0; e < c.d; e++) s[j] += (double)q[(b * c.S + i) * D + h * c.d + e] * k[(b * c.S + j) * D + h * c.d + e];
                    s[j] /= sqrt((double)c.d);
                    if (mask[b * c.S + j] == 0) s[j] = -1e300;
                    mx = fmax(mx, s[j]);
                }
                for (int j = 0; j < c.S; j++) sum += s[j] > -1e299 ? exp(s[j] - mx) : 0;
                fe = fmax(fe, fabs(lse[(b * c.H + h) * c.S + i] - (mx + log(sum))));
                for (int e = 0; e < c.d; e++) {
                    double acc = 0;
                    for (int j = 0; j < c.S; j++)
                        if (s[j] > -1e299) acc += exp(s[j] - mx) / sum * v[(b * c.S + j) * D + h * c.d + e];
                    fe = fmax(fe, fabs(acc - o[(b * c.S + i) * D + h * c.d + e]));
                }
            }
    CHECK(fe < 1e-5, "attention forward %.3g", fe);
    attention_backward_cpu(dq, dk, dv, G, q, k, v, o, lse, mask, c.B, c.S, c.H, c.d);
    float *in[3] = {q, k, v};
    double eq = fd_err_(att_fwd_, &c, in, 0, n, dq, G, n), ek = fd_err_(att_fwd_, &c, in, 1, n, dk, G, n),
           ev = fd_err_(att_fwd_, &c, in, 2, n, dv, G, n);
    CHECK(eq < FD_TOL && ek < FD_TOL && ev < FD_TOL, "dQ %.3g dK %.3g dV %.3g", eq, ek, ev);
    /* padded keys get exactly zero dK, dV */
    double z = 0;
    for (int e = 0; e < D; e++) z += fabs(dk[(1 * c.S + 3) * D + e]) + fabs(dv[(1 * c.S + 3) * D + e]);
    CHECK(z == 0);
    /* no mask == all-ones mask */
    float ones[14], *o2 = malloc(n * 4);
    for (int i = 0; i < 14; i++) ones[i] = 1;
    attention_forward_cpu(o, lse, q, k, v, ones, c.B, c.S, c.H, c.d);
    attention_forward_cpu(o2, lse, q, k, v, NULL, c.B, c.S, c.H, c.d);
    CHECK(!memcmp(o, o2, n * 4));
    free(q); free(k); free(v); free(G); free(o); free(o2); free(lse); free(dq); free(dk); free(dv);
}

/* ---- timestep ------------------------------------------------------------------------------- */

static void test_timestep(void) {
    float t[3] = {0.0f, 0.98828125f, 0.5f}, out[3 * 256];
    timestep_sinusoid_cpu(out, t, 3);
    double e = 0;
    for (int i = 0; i < 3; i++)
        for (int j = 0; j < 128; j++) {
            double a = 1000.0 * t[i] * exp(-log(10000.0) * j / 128.0);
            /* fp32 argument rounding: |a| up to 1000, so allow a few ulp of a */
            e = fmax(e, fabs(out[i * 256 + j] - cos(a)) + fabs(out[i * 256 + 128 + j] - sin(a)));
        }
    CHECK(e < 5e-4, "%.3g", e);
    CHECK(out[0] == 1.0f && out[128] == 0.0f && out[127] == 1.0f && out[255] == 0.0f); /* σ = 0: [1…, 0…] */
    /* the op on the CPU backend is the same numbers */
    OpCtx c;
    CHECK_RC(opctx_init(err, &c, "cpu"), err);
    float out2[3 * 256];
    op_timestep_sinusoid(&c, out2, t, 3);
    CHECK(!memcmp(out, out2, sizeof out));
    opctx_free(&c);
}

int main(void) {
    TEST_RUN(test_layernorm);
    TEST_RUN(test_gate);
    TEST_RUN(test_rmsnorm);
    TEST_RUN(test_gelu);
    TEST_RUN(test_rope);
    TEST_RUN(test_qkv_norm_rope);
    TEST_RUN(test_attention);
    TEST_RUN(test_timestep);
    return TEST_DONE();
}
