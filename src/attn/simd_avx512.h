/* Small AVX-512 helpers shared by the kernels compiled with ISA_AVX512 flags
 * (kernel_avx512.c, kernel_amx_avx512.c). */
#ifndef PKV_ATTN_SIMD_AVX512_H
#define PKV_ATTN_SIMD_AVX512_H

#include <immintrin.h>
#include <stdint.h>

#ifndef AI
#define AI static inline __attribute__((always_inline))
#endif
#ifndef UNROLL
#define UNROLL _Pragma("GCC unroll 16")
#endif

/* ---- 16x16 transpose of 32-bit elements ---- */
AI void transpose16(__m512 r[16]) {
    __m512 t[16];
    UNROLL for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    UNROLL for (int i = 0; i < 4; i++) {
        r[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xee);
        r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xee);
    }
    /* r[4q + k] holds, in 128-bit lane L, rows 4q..4q+3 of column 4L + k */
    UNROLL for (int k = 0; k < 4; k++) {
        const __m512 xlo = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x44);
        const __m512 xhi = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xee);
        const __m512 ylo = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x44);
        const __m512 yhi = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xee);
        t[k] = _mm512_shuffle_f32x4(xlo, ylo, 0x88);
        t[4 + k] = _mm512_shuffle_f32x4(xlo, ylo, 0xdd);
        t[8 + k] = _mm512_shuffle_f32x4(xhi, yhi, 0x88);
        t[12 + k] = _mm512_shuffle_f32x4(xhi, yhi, 0xdd);
    }
    UNROLL for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* 32 dims [c, c+32) of a bf16 row; lanes >= n read as 0. */
AI __m512i bf16x32(const void *row, int32_t c, int32_t n) {
    const __mmask32 k = n >= 32 ? (__mmask32)0xffffffffu : (__mmask32)((1u << (n > 0 ? n : 0)) - 1u);
    return _mm512_maskz_loadu_epi16(k, (const uint16_t *)row + c);
}

/* 32 e4m3 codes -> their exact values as bf16: rebias the exponent (7 -> 127);
 * the 8 subnormal codes (m * 2^-9) come from a table; the NaN codes 0x7f and
 * 0xff (e4m3fn has no infinity) become bf16 NaN, as the oracle reads them. */
AI __m512i e4m3x32_bf16(__m256i b) {
    const __m512i w = _mm512_cvtepu8_epi16(b);
    const __m512i mag = _mm512_and_si512(w, _mm512_set1_epi16(0x7f));
    const __m512i sign = _mm512_slli_epi16(_mm512_and_si512(w, _mm512_set1_epi16(0x80)), 8);
    __m512i v = _mm512_add_epi16(_mm512_slli_epi16(mag, 4), _mm512_set1_epi16(120 << 7));
    const __m512i sub = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                         0x3c60, 0x3c40, 0x3c20, 0x3c00, 0x3bc0, 0x3b80, 0x3b00, 0);
    v = _mm512_mask_permutexvar_epi16(v, _mm512_cmplt_epu16_mask(mag, _mm512_set1_epi16(8)), mag, sub);
    v = _mm512_mask_mov_epi16(v, _mm512_cmpeq_epi16_mask(mag, _mm512_set1_epi16(0x7f)), _mm512_set1_epi16(0x7fc0));
    return _mm512_or_si512(v, sign);
}

#endif
