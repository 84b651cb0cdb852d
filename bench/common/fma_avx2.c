/* Register-only FP32 FMA loop on 256-bit vectors with the AVX2 encoding, for
 * CPUs without AVX-512 (its 16 registers hold 14 chains and the two constants;
 * with AVX-512VL bench_fma256 in fma_avx512.c runs 16). Returns the FLOPs. */
#include <immintrin.h>

#include "bench.h"

#define R14(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)

double bench_fma256_vex(long iters, float *sink) {
#define INIT(i) __m256 a##i = _mm256_set1_ps(1e-3f * (float)(i));
    R14(INIT)
#undef INIT
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, b, c);
        R14(STEP)
#undef STEP
#define KEEP(i) __asm__ volatile("" : "+x"(a##i));
        R14(KEEP)
#undef KEEP
    }
    __m256 s = _mm256_setzero_ps();
#define SUM(i) s = _mm256_add_ps(s, a##i);
    R14(SUM)
#undef SUM
    float t[8];
    _mm256_storeu_ps(t, s);
    *sink = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    return (double)iters * 14 * 8 * 2;
}
