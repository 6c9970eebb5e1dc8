/* test_rng: Philox-4x32-10 against the Random123 known-answer vectors, and the fills. */
#include <math.h>

#include "err.h"
#include "philox.h"
#include "rng.h"
#include "testlib.h"

static void test_known_answers(void) {
    /* Random123 kat_vectors, philox4x32 with 10 rounds */
    struct { uint32_t ctr[4], key[2], out[4]; } kat[] = {
        {{0, 0, 0, 0}, {0, 0}, {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8}},
        {{0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}, {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd}},
        {{0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}, {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1}},
    };
    for (int i = 0; i < 3; i++) {
        Philox4 o = philox4x32_10(kat[i].ctr, kat[i].key);
        for (int l = 0; l < 4; l++) CHECK(o.v[l] == kat[i].out[l], "vector %d lane %d: %08x want %08x", i, l, o.v[l], kat[i].out[l]);
    }
}

static void test_fills(void) {
    float u[1001], u2[997], z[4000];
    CHECK(rng_uniform_cpu(u, 1001, 42, 3, 0) == 0);
    /* an offset fill continues the same stream */
    CHECK(rng_uniform_cpu(u2, 997, 42, 3, 4) == 0);
    int same = 1;
    for (int i = 0; i < 997; i++) same &= u2[i] == u[i + 4];
    CHECK(same);
    CHECK(rng_uniform_cpu(u2, 10, 42, 3, 2) == QIE_EINVAL);
    CHECK(u[5] == philox_u01(rng_u32_at(42, 3, 5)));
    double mean = 0;
    int in_range = 1;
    for (int i = 0; i < 1001; i++) { mean += u[i]; in_range &= u[i] >= 0 && u[i] < 1; }
    CHECK(in_range && fabs(mean / 1001 - 0.5) < 0.05);
    CHECK(rng_normal_cpu(z, 4000, 7, 0, 0) == 0);
    double m = 0, v = 0;
    for (int i = 0; i < 4000; i++) m += z[i];
    m /= 4000;
    for (int i = 0; i < 4000; i++) v += (z[i] - m) * (z[i] - m);
    v /= 4000;
    CHECK(fabs(m) < 0.06 && fabs(v - 1) < 0.08, "mean %g var %g", m, v);
    /* different subsequences differ */
    float a[4], b[4];
    rng_uniform_cpu(a, 4, 1, 0, 0);
    rng_uniform_cpu(b, 4, 1, 1, 0);
    CHECK(a[0] != b[0]);
}

int main(void) {
    TEST_RUN(test_known_answers);
    TEST_RUN(test_fills);
    return TEST_DONE();
}
