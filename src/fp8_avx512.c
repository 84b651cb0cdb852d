/* AVX-512 body of pkv_mla656_quantize (built with the Makefile's *_avx512 flags;
 * fp8.c calls it only when the CPU and OS support AVX-512 F/BW). Bit-for-bit the
 * same results as the portable body in fp8.c: the same float division by the
 * scale and the same integer rounding of the bit patterns, 16 lanes at a time. */
#include <string.h>

#include "fp8.h"

#if defined(__AVX512F__) && defined(__AVX512BW__)
#include <immintrin.h>

/* 16 floats (already divided by the scale) -> 16 e4m3 codes; the same arithmetic
 * as e4m3_encode in fp8.c, arranged to save instructions (this is the hot loop):
 * saturation clamps |y| to 448 first; the normal path folds the exponent rebias
 * into the rounding constant (valid for lanes >= 2^-6, the others are replaced);
 * the subnormal lanes are replaced by a masked subtract. */
static inline __m128i encode16(__m512 y) {
    const __m512i u = _mm512_castps_si512(y);
    const __m512i a = _mm512_min_epu32(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                       _mm512_set1_epi32(0x43e00000)); /* min(|y|, 448) */
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(a, 20), _mm512_set1_epi32(1));
    const __m512i r = _mm512_add_epi32(a, _mm512_set1_epi32(0x7ffff - (120 << 23)));
    __m512i code = _mm512_srli_epi32(_mm512_add_epi32(r, lsb), 20);
    const __mmask16 is_sub = _mm512_cmplt_epu32_mask(a, _mm512_set1_epi32(0x3c800000));
    const __m512i sub = _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(a), _mm512_set1_ps(16384.0f)));
    code = _mm512_mask_sub_epi32(code, is_sub, sub, _mm512_set1_epi32(0x46800000));
    /* code | ((u >> 24) & 0x80): ternary logic A | (B & C) = 0xF8 */
    code = _mm512_ternarylogic_epi32(code, _mm512_srli_epi32(u, 24), _mm512_set1_epi32(0x80), 0xF8);
    return _mm512_cvtepi32_epi8(code);
}

static inline uint32_t absmax(const float *x, int n16) {
    const __m512i mask = _mm512_set1_epi32(0x7fffffff);
    __m512i m = _mm512_setzero_si512();
    for (int i = 0; i < n16; i++)
        m = _mm512_max_epu32(m, _mm512_and_si512(_mm512_loadu_si512((const void *)(x + 16 * i)), mask));
    return (uint32_t)_mm512_reduce_max_epu32(m);
}

int fp8_quantize_avx512(const float *x, uint8_t *row, int pow2_scale) {
    uint32_t amax[5];
    for (int t = 0; t < 4; t++) amax[t] = absmax(x + t * PKV_MLA656_TILE, PKV_MLA656_TILE / 16);
    amax[4] = absmax(x + PKV_MLA656_LATENT, (PKV_MLA656_DIM - PKV_MLA656_LATENT) / 16);
    for (int t = 0; t < 5; t++) RETURN_IF(amax[t] >= 0x7f800000u, PKV_ERR_NONFINITE);

    for (int t = 0; t < 4; t++) {
        const float scale = fp8_tile_scale(amax[t], pow2_scale);
        uint8_t *ct = row + t * PKV_MLA656_TILE;
        if (scale == 0.0f) {
            memset(ct, 0, PKV_MLA656_TILE);
        } else if (pow2_scale) {
            const __m512 inv = _mm512_set1_ps(1.0f / scale); /* exact: see fp8.c */
            for (int i = 0; i < PKV_MLA656_TILE; i += 16) {
                const __m512 y = _mm512_mul_ps(_mm512_loadu_ps(x + t * PKV_MLA656_TILE + i), inv);
                _mm_storeu_si128((__m128i *)(void *)(ct + i), encode16(y));
            }
        } else {
            const __m512 vs = _mm512_set1_ps(scale);
            for (int i = 0; i < PKV_MLA656_TILE; i += 16) {
                const __m512 y = _mm512_div_ps(_mm512_loadu_ps(x + t * PKV_MLA656_TILE + i), vs);
                _mm_storeu_si128((__m128i *)(void *)(ct + i), encode16(y));
            }
        }
        memcpy(row + PKV_MLA656_SCALES + 4 * t, &scale, 4); /* x86: little endian */
    }
    for (int i = 0; i < PKV_MLA656_DIM - PKV_MLA656_LATENT; i += 16) {
        /* bfloat16, nearest even (inputs are finite here) */
        const __m512i u = _mm512_loadu_si512((const void *)(x + PKV_MLA656_LATENT + i));
        __m512i r = _mm512_add_epi32(u, _mm512_set1_epi32(0x7fff));
        r = _mm512_add_epi32(r, _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
        _mm256_storeu_si256((__m256i *)(void *)(row + PKV_MLA656_ROPE + 2 * i),
                            _mm512_cvtepi32_epi16(_mm512_srli_epi32(r, 16)));
    }
    return PKV_OK;
}
#else
int fp8_quantize_avx512(const float *x, uint8_t *row, int pow2_scale) {
    (void)x; (void)row; (void)pow2_scale;
    return PKV_ERR_INVALID; /* never called: fp8.c dispatches here only on AVX-512 builds */
}
#endif
