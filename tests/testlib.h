/* testlib.h: the smallest test harness that does the job.
 *
 * A test file defines test functions and a main() that calls TEST_RUN(fn) for each, then
 * returns TEST_DONE(). Every CHECK counts: a failing one prints file:line, the expression and
 * an optional message. The last line printed is "N passed, N failed" (tests/run.sh sums them). */
#ifndef QIE_TESTS_TESTLIB_H
#define QIE_TESTS_TESTLIB_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_passed_ = 0, test_failed_ = 0;
static const char *test_name_ = "";

#define CHECK(cond, ...)                                                                     \
    do {                                                                                     \
        if (cond) {                                                                          \
            test_passed_++;                                                                  \
        } else {                                                                             \
            test_failed_++;                                                                  \
            fprintf(stderr, "FAIL %s (%s:%d): %s", test_name_, __FILE__, __LINE__, #cond); \
            fprintf(stderr, " " __VA_ARGS__);                                                \
            fprintf(stderr, "\n");                                                           \
        }                                                                                    \
    } while (0)

/* CHECK_RC: an int-returning call that must return 0; prints the err buffer otherwise. */
#define CHECK_RC(call, errbuf)                                                          \
    do {                                                                                \
        int rc_ = (call);                                                               \
        CHECK(rc_ == 0, "rc=%d (%s) err=%s", rc_, qie_strerror(rc_), (errbuf));         \
    } while (0)

#define CHECK_NEAR(a, b, tol)                                                          \
    do {                                                                               \
        double a_ = (a), b_ = (b);                                                     \
        CHECK(fabs(a_ - b_) <= (tol), "%.9g vs %.9g (tol %.3g)", a_, b_, (double)(tol)); \
    } while (0)

#define TEST_RUN(fn)                                                        \
    do {                                                                    \
        int f0_ = test_failed_;                                             \
        test_name_ = #fn;                                                   \
        fn();                                                               \
        printf("%s %s\n", test_failed_ == f0_ ? "ok  " : "FAIL", #fn);      \
        fflush(stdout);                                                     \
    } while (0)

#define TEST_DONE() \
    (printf("%d passed, %d failed\n", test_passed_, test_failed_), test_failed_ ? 1 : 0)

/* Directory of committed fixtures, overridable for out-of-tree runs. */
static inline const char *test_golden_dir(void) {
    const char *d = getenv("QIE_GOLDEN_DIR");
    return d ? d : "tests/golden";
}

/* A fresh scratch directory under $TMPDIR (or /tmp); the caller removes it if it wants to. */
static inline void test_tmpdir(char *out, size_t cap) {
    const char *t = getenv("TMPDIR");
    snprintf(out, cap, "%s/qie-test-XXXXXX", t ? t : "/tmp");
    if (!mkdtemp(out)) { perror("mkdtemp"); exit(2); }
}

#endif
