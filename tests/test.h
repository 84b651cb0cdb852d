/* Minimal test harness: typed asserts that print both sides, counted per binary.
 * Each test binary calls TEST_MAIN-style functions and ends with test_report(). */
#ifndef PKV_TEST_H
#define PKV_TEST_H

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pagedkv.h"

/* atomic: tests may check from several threads */
static _Atomic long test_checks_ = 0, test_fails_ = 0;

#define TEST_FAIL_(...)                                                                    \
    do {                                                                                   \
        test_fails_++;                                                                     \
        fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);                                    \
        fprintf(stderr, __VA_ARGS__);                                                      \
        fputc('\n', stderr);                                                               \
        if (test_fails_ > 50) { fprintf(stderr, "too many failures\n"); exit(1); }        \
    } while (0)

#define CHECK(cond)                                                                        \
    do { test_checks_++; if (!(cond)) TEST_FAIL_("CHECK(%s) failed", #cond); } while (0)

#define CHECK_INT(a, b)                                                                    \
    do {                                                                                   \
        long long a_ = (long long)(a), b_ = (long long)(b);                                \
        test_checks_++;                                                                    \
        if (a_ != b_) TEST_FAIL_("%s == %s failed: %lld vs %lld", #a, #b, a_, b_);         \
    } while (0)

/* A status call expected to return code b; prints both names on mismatch. */
#define CHECK_STATUS(a, b)                                                                 \
    do {                                                                                   \
        int a_ = (a), b_ = (b);                                                            \
        test_checks_++;                                                                    \
        if (a_ != b_)                                                                      \
            TEST_FAIL_("%s: got %d (%s), want %d (%s)", #a, a_, pkv_strerror(a_), b_,      \
                       pkv_strerror(b_));                                                  \
    } while (0)

#define CHECK_OK(a) CHECK_STATUS(a, PKV_OK)

#define CHECK_NEAR(a, b, tol)                                                              \
    do {                                                                                   \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);                     \
        test_checks_++;                                                                    \
        if (!(fabs(a_ - b_) <= t_))                                                        \
            TEST_FAIL_("%s ~ %s failed: %.9g vs %.9g (tol %.3g)", #a, #b, a_, b_, t_);      \
    } while (0)

/* Ends a test binary: prints "name: N checks, N failed" and returns the exit code. */
static inline int test_report(const char *name) {
    printf("%s: %ld checks, %ld failed\n", name, test_checks_, test_fails_);
    return test_fails_ ? 1 : 0;
}

/* Scales operation counts: PKV_TEST_SCALE=0.1 runs a tenth (sanitizer builds). */
static inline long test_scaled(long n) {
    const char *s = getenv("PKV_TEST_SCALE");
    double f = s ? atof(s) : 1.0;
    long m = (long)(n * f);
    return m < 1 ? 1 : m;
}

/* Deterministic PRNG (splitmix64) so every failing run can be replayed by seed. */
typedef struct test_rng { uint64_t s; } test_rng;
static inline uint64_t test_next(test_rng *r) {
    uint64_t z = (r->s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static inline uint32_t test_below(test_rng *r, uint32_t n) { return n ? (uint32_t)(test_next(r) % n) : 0; }
static inline double test_uniform(test_rng *r) { return (test_next(r) >> 11) * (1.0 / 9007199254740992.0); }
static inline double test_normal(test_rng *r) {
    double u = test_uniform(r), v = test_uniform(r);
    if (u < 1e-300) u = 1e-300;
    return sqrt(-2.0 * log(u)) * cos(6.283185307179586 * v);
}

#endif
