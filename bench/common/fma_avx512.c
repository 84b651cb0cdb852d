/* Register-only loops, one per instruction kind the AVX-512 and AMX kernels
 * execute (built with the Makefile's *_avx512 flags): FP32 FMA on 512- and on
 * 256-bit vectors, vdpbf16ps, and AMX tdpbf16ps. 16 independent chains written
 * out (no loop over an array the compiler might keep in memory), an empty asm
 * per chain and iteration so nothing is folded away. Each returns the FLOPs
 * done; *sink keeps the result alive. */
#include <immintrin.h>
#include <string.h>

#include "bench.h"

#define R16(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)
#define KEEP(i) __asm__ volatile("" : "+v"(a##i));
#define SUM(i) s = s + a##i;

double bench_fma512(long iters, float *sink) {
#define INIT(i) __m512 a##i = _mm512_set1_ps(1e-3f * (float)(i));
    R16(INIT)
#undef INIT
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (long it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, b, c);
        R16(STEP)
#undef STEP
        R16(KEEP)
    }
    __m512 s = _mm512_setzero_ps();
    R16(SUM)
    *sink = _mm512_reduce_add_ps(s);
    return (double)iters * 16 * 16 * 2;
}

/* 256-bit FMA with the 32 registers of AVX-512VL (the AVX2 encoding has 16,
 * too few for 16 chains and two constants). */
double bench_fma256(long iters, float *sink) {
#define INIT(i) __m256 a##i = _mm256_set1_ps(1e-3f * (float)(i));
    R16(INIT)
#undef INIT
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (long it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, b, c);
        R16(STEP)
#undef STEP
        R16(KEEP)
    }
    __m256 s = _mm256_setzero_ps();
    R16(SUM)
    float t[8];
    _mm256_storeu_ps(t, s);
    *sink = t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
    return (double)iters * 16 * 8 * 2;
}

/* vdpbf16ps: 16 lanes x 2 bf16 products, each a multiply and an add: 64 FLOPs. */
double bench_dpbf16(long iters, float *sink) {
#define INIT(i) __m512 a##i = _mm512_set1_ps(1e-3f * (float)(i));
    R16(INIT)
#undef INIT
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3f80), y = (__m512bh)_mm512_set1_epi16(0x3300);
    for (long it = 0; it < iters; it++) {
#define STEP(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
        R16(STEP)
#undef STEP
        R16(KEEP)
    }
    __m512 s = _mm512_setzero_ps();
    R16(SUM)
    *sink = _mm512_reduce_add_ps(s);
    return (double)iters * 16 * 64;
}

typedef struct tilecfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

/* tdpbf16ps on 16x32 bf16 A and B tiles into 16x16 float C tiles: 16 * 16 * 32
 * products, 16384 FLOPs each; four C tiles (0-3) are independent chains. Only
 * call it where pkv_cpu_features() has PKV_CPU_AMX_BF16 (which also asked the
 * OS for the tile state). */
double bench_amx_bf16(long iters, float *sink) {
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    _tile_loadconfig(&cfg);
    static uint16_t ab[2][16 * 32] __attribute__((aligned(64)));
    for (int i = 0; i < 16 * 32; i++) ab[0][i] = ab[1][i] = 0x3300; /* small values: no overflow */
    float c[16 * 16] __attribute__((aligned(64)));
    memset(c, 0, sizeof c);
    _tile_loadd(0, c, 64);
    _tile_loadd(1, c, 64);
    _tile_loadd(2, c, 64);
    _tile_loadd(3, c, 64);
    _tile_loadd(4, ab[0], 64);
    _tile_loadd(5, ab[1], 64);
    _tile_loadd(6, ab[0], 64);
    _tile_loadd(7, ab[1], 64);
    for (long it = 0; it < iters; it++) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, 64);
    _tile_release();
    *sink = c[0];
    return (double)iters * 4 * 16384;
}
