/* AVX2 body of pkv_mla656_quantize (built with the Makefile's *_avx2 flags; fp8.c
 * calls it only on CPUs with AVX2). The same arithmetic as the portable and
 * AVX-512 bodies, 8 lanes at a time, so all three give the same bytes. */
#include <string.h>

#include "fp8.h"

#if defined(__AVX2__)
#include <immintrin.h>

/* 8 floats (already divided by the scale) -> 8 e4m3 codes in 32-bit lanes. */
static inline __m256i encode8(__m256 y) {
    const __m256i u = _mm256_castps_si256(y);
    const __m256i a = _mm256_min_epu32(_mm256_and_si256(u, _mm256_set1_epi32(0x7fffffff)),
                                       _mm256_set1_epi32(0x43e00000)); /* min(|y|, 448) */
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(a, 20), _mm256_set1_epi32(1));
    const __m256i r = _mm256_add_epi32(a, _mm256_set1_epi32(0x7ffff - (120 << 23)));
    const __m256i normal = _mm256_srli_epi32(_mm256_add_epi32(r, lsb), 20);
    const __m256i sub = _mm256_sub_epi32(
        _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(a), _mm256_set1_ps(16384.0f))),
        _mm256_set1_epi32(0x46800000));
    const __m256i is_sub = _mm256_cmpgt_epi32(_mm256_set1_epi32(0x3c800000), a); /* a >= 0 */
    const __m256i code = _mm256_blendv_epi8(normal, sub, is_sub);
    const __m256i sign = _mm256_and_si256(_mm256_srli_epi32(u, 24), _mm256_set1_epi32(0x80));
    return _mm256_or_si256(code, sign);
}

/* Four vectors of 32-bit codes (each <= 0xff) -> 32 bytes in order. */
static inline __m256i pack32(__m256i c0, __m256i c1, __m256i c2, __m256i c3) {
    const __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(c0, c1), _mm256_packus_epi32(c2, c3));
    return _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline uint32_t absmax(const float *x, int n8) {
    const __m256i mask = _mm256_set1_epi32(0x7fffffff);
    __m256i m = _mm256_setzero_si256();
    for (int i = 0; i < n8; i++)
        m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_loadu_si256((const __m256i *)(const void *)(x + 8 * i)), mask));
    __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0xb1));
    return (uint32_t)_mm_cvtsi128_si32(h);
}

int fp8_quantize_avx2(const float *x, uint8_t *row, int pow2_scale) {
    uint32_t amax[5];
    for (int t = 0; t < 4; t++) amax[t] = absmax(x + t * PKV_MLA656_TILE, PKV_MLA656_TILE / 8);
    amax[4] = absmax(x + PKV_MLA656_LATENT, (PKV_MLA656_DIM - PKV_MLA656_LATENT) / 8);
    for (int t = 0; t < 5; t++) RETURN_IF(amax[t] >= 0x7f800000u, PKV_ERR_NONFINITE);

    for (int t = 0; t < 4; t++) {
        const float scale = fp8_tile_scale(amax[t], pow2_scale);
        const float *xt = x + t * PKV_MLA656_TILE;
        uint8_t *ct = row + t * PKV_MLA656_TILE;
        if (scale == 0.0f) {
            memset(ct, 0, PKV_MLA656_TILE);
        } else {
            /* pow2: multiplying by the exact reciprocal equals dividing (see fp8.c) */
            const __m256 vs = _mm256_set1_ps(pow2_scale ? 1.0f / scale : scale);
            for (int i = 0; i < PKV_MLA656_TILE; i += 32) {
                __m256i c[4];
                for (int j = 0; j < 4; j++) {
                    const __m256 v = _mm256_loadu_ps(xt + i + 8 * j);
                    c[j] = encode8(pow2_scale ? _mm256_mul_ps(v, vs) : _mm256_div_ps(v, vs));
                }
                _mm256_storeu_si256((__m256i *)(void *)(ct + i), pack32(c[0], c[1], c[2], c[3]));
            }
        }
        memcpy(row + PKV_MLA656_SCALES + 4 * t, &scale, 4); /* x86: little endian */
    }
    for (int i = 0; i < PKV_MLA656_DIM - PKV_MLA656_LATENT; i += 16) {
        __m256i h[2];
        for (int j = 0; j < 2; j++) {
            /* bfloat16, nearest even (inputs are finite here) */
            const __m256i u = _mm256_loadu_si256((const __m256i *)(const void *)(x + PKV_MLA656_LATENT + i + 8 * j));
            __m256i r = _mm256_add_epi32(u, _mm256_set1_epi32(0x7fff));
            r = _mm256_add_epi32(r, _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1)));
            h[j] = _mm256_srli_epi32(r, 16);
        }
        const __m256i p = _mm256_permute4x64_epi64(_mm256_packus_epi32(h[0], h[1]), 0xd8);
        _mm256_storeu_si256((__m256i *)(void *)(row + PKV_MLA656_ROPE + 2 * i), p);
    }
    return PKV_OK;
}
#else
int fp8_quantize_avx2(const float *x, uint8_t *row, int pow2_scale) {
    (void)x; (void)row; (void)pow2_scale;
    return PKV_ERR_INVALID; /* never called: fp8.c dispatches here only on AVX2 builds */
}
#endif
