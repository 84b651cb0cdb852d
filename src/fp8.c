/* FP8 e4m3 conversion and FlashMLA's 656-byte MLA rows (layout in fp8.h).
 * Quantizing is on the store path of every decoded token, so the encode works
 * branch-free on float bit patterns; fp8_avx2.c and fp8_avx512.c run the same
 * arithmetic 8/16 lanes wide (same bytes, tested), chosen by the CPU module (cpu.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu.h"
#include "fp8.h"

static inline uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

/* Explicit little-endian byte order: the row layout is fixed, the host's is not. */
static inline void store_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
static inline uint32_t load_le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline void store_le16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static inline uint16_t load_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

#define E4M3_MAX_BITS 0x43e00000u    /* 448.0f */
#define E4M3_MIN_NORMAL 0x3c800000u  /* 2^-6 */
#define E4M3_SUB_MAGIC 0x46800000u   /* 2^14: its float ulp is 2^-9, the subnormal step */

/* Every e4m3 value as a constant table (OCP definition: E == 0 gives M/8 * 2^-6,
 * else (8 + M) * 2^E / 1024; S.1111.111 is NaN), so decoding is one load. */
#define E4M3_MAG(c) (((c) >> 3 & 15) == 0 ? (float)((c) & 7) / 512.0f \
                     : (float)(8 + ((c) & 7)) * (float)(1u << ((c) >> 3 & 15)) / 1024.0f)
#define E4M3(c) (((c) & 0x7f) == 0x7f ? NAN : ((c) & 0x80 ? -E4M3_MAG((c) & 0x7f) : E4M3_MAG(c)))
#define E4M3_8(c) E4M3(c), E4M3(c + 1), E4M3(c + 2), E4M3(c + 3), E4M3(c + 4), E4M3(c + 5), \
                  E4M3(c + 6), E4M3(c + 7)
#define E4M3_64(c) E4M3_8(c), E4M3_8(c + 8), E4M3_8(c + 16), E4M3_8(c + 24), E4M3_8(c + 32), \
                   E4M3_8(c + 40), E4M3_8(c + 48), E4M3_8(c + 56)
static const float e4m3_value[256] = {E4M3_64(0u), E4M3_64(64u), E4M3_64(128u), E4M3_64(192u)};

float fp8_e4m3_to_f32(uint8_t code) { return e4m3_value[code]; }

static inline uint8_t e4m3_encode(float x) {
    const uint32_t u = f32_bits(x), a = u & 0x7fffffffu;
    const uint32_t sign = (u >> 24) & 0x80u;
    /* normal range: round the 23-bit mantissa to 3 bits, nearest even; a carry
     * into the exponent is the correct next binade */
    const uint32_t normal = ((a + 0x7ffffu + ((a >> 20) & 1u)) >> 20) - (120u << 3);
    /* subnormal range: adding 2^14 rounds to a multiple of 2^-9 in hardware (RNE) */
    const uint32_t sub = f32_bits(bits_f32(a) + 16384.0f) - E4M3_SUB_MAGIC;
    uint32_t code = a < E4M3_MIN_NORMAL ? sub : normal;
    code = a >= E4M3_MAX_BITS ? 0x7eu : code; /* saturate: e4m3fn has no infinity */
    return (uint8_t)(sign | code);
}

uint8_t fp8_f32_to_e4m3(float x) { return e4m3_encode(x); }

/* 2^ceil(log2(max(s, 1e-4))), exactly, on the bits: s >= 1e-4 is a normal float,
 * so rounding up to a power of two is clearing the mantissa and, unless it was
 * already zero, adding one to the exponent (s <= FLT_MAX / 448 cannot overflow). */
static float pow2_round_up(float s) {
    if (s < 1e-4f) s = 1e-4f;
    const uint32_t u = f32_bits(s);
    const uint32_t e = u & 0x7f800000u;
    return bits_f32((u & 0x007fffffu) ? e + 0x00800000u : e);
}

float fp8_tile_scale(uint32_t amax_bits, int pow2) {
    if (amax_bits == 0) return 0.0f;
    const float scale = bits_f32(amax_bits) / 448.0f;
    return pow2 ? pow2_round_up(scale) : scale;
}

/* Which quantize body this CPU runs: 2 AVX-512 F/BW, 1 AVX2, 0 portable. The
 * bodies by what they need (the CPU module's feature bits) and the level whose
 * name caps them (PKV_ISA=avx2 runs the AVX2 body on an AVX-512 CPU). */
static int quantize_body(void) {
    static const struct { uint64_t needs; int level; } bodies[3] = {
        {0, PKV_ISA_SCALAR},
        {PKV_CPU_AVX | PKV_CPU_AVX2, PKV_ISA_AVX2},
        {PKV_CPU_AVX | PKV_CPU_AVX2 | PKV_CPU_AVX512F | PKV_CPU_AVX512BW, PKV_ISA_AVX512},
    };
    static int cached = -1; /* racing first calls store the same value */
    int best = __atomic_load_n(&cached, __ATOMIC_RELAXED);
    if (best >= 0) return best;
    const uint64_t f = pkv__cpu_detect();
    const int cap = pkv__isa_cap();
    best = 0;
    for (int i = 0; i < 3; i++)
        if ((f & bodies[i].needs) == bodies[i].needs && bodies[i].level <= cap) best = i;
    __atomic_store_n(&cached, best, __ATOMIC_RELAXED);
    return best;
}

int fp8_quantize_portable(const float *x, uint8_t *row, int pow2_scale) {
    /* Finite non-negative floats order like their bit patterns, so one integer max
     * per tile gives both amax and the non-finite check. */
    uint32_t amax[PKV_MLA656_LATENT / PKV_MLA656_TILE + 1];
    for (int t = 0; t < 5; t++) {
        const int n = t < 4 ? PKV_MLA656_TILE : PKV_MLA656_DIM - PKV_MLA656_LATENT;
        const float *xt = x + t * PKV_MLA656_TILE;
        uint32_t m = 0;
        for (int i = 0; i < n; i++) {
            const uint32_t a = f32_bits(xt[i]) & 0x7fffffffu;
            m = a > m ? a : m;
        }
        amax[t] = m;
    }
    for (int t = 0; t < 5; t++) RETURN_IF(amax[t] >= 0x7f800000u, PKV_ERR_NONFINITE);

    for (int t = 0; t < 4; t++) {
        const float scale = fp8_tile_scale(amax[t], pow2_scale);
        const float *xt = x + t * PKV_MLA656_TILE;
        uint8_t *ct = row + t * PKV_MLA656_TILE;
        if (scale == 0.0f) {
            /* all-zero tile (or amax so small that amax/448 underflows): codes 0 */
            memset(ct, 0, PKV_MLA656_TILE);
        } else if (pow2_scale) {
            /* 1/2^k is exact, so x * 2^-k rounds to the same float as x / 2^k */
            const float inv = 1.0f / scale;
            for (int i = 0; i < PKV_MLA656_TILE; i++) ct[i] = e4m3_encode(xt[i] * inv);
        } else {
            for (int i = 0; i < PKV_MLA656_TILE; i++) ct[i] = e4m3_encode(xt[i] / scale);
        }
        store_le32(row + PKV_MLA656_SCALES + 4 * t, f32_bits(scale));
    }
    for (int i = 0; i < PKV_MLA656_DIM - PKV_MLA656_LATENT; i++)
        store_le16(row + PKV_MLA656_ROPE + 2 * i, pkv_f32_to_bf16(x[PKV_MLA656_LATENT + i]));
    return PKV_OK;
}

int pkv_mla656_quantize(const float *x, uint8_t *row, int pow2_scale) {
    RETURN_IF(x == NULL || row == NULL, PKV_ERR_NULL);
    switch (quantize_body()) {
    case 2: return fp8_quantize_avx512(x, row, pow2_scale);
    case 1: return fp8_quantize_avx2(x, row, pow2_scale);
    default: return fp8_quantize_portable(x, row, pow2_scale);
    }
}

int pkv_mla656_dequantize(const uint8_t *row, float *x) {
    RETURN_IF(row == NULL || x == NULL, PKV_ERR_NULL);
    for (int t = 0; t < 4; t++) {
        /* fp8 (4 significant bits) * scale (24) is rounded once: exact in double, so
         * the float product equals the oracle's double value rounded to float */
        const float scale = bits_f32(load_le32(row + PKV_MLA656_SCALES + 4 * t));
        for (int i = 0; i < PKV_MLA656_TILE; i++) {
            const int k = t * PKV_MLA656_TILE + i;
            x[k] = e4m3_value[row[k]] * scale;
        }
    }
    for (int i = 0; i < PKV_MLA656_DIM - PKV_MLA656_LATENT; i++)
        x[PKV_MLA656_LATENT + i] = pkv_bf16_to_f32(load_le16(row + PKV_MLA656_ROPE + 2 * i));
    return PKV_OK;
}

void fp8_mla656_dequant_f64(const uint8_t *row, double *x) {
    for (int t = 0; t < 4; t++) {
        const double scale = (double)bits_f32(load_le32(row + PKV_MLA656_SCALES + 4 * t));
        for (int i = 0; i < PKV_MLA656_TILE; i++) {
            const int k = t * PKV_MLA656_TILE + i;
            x[k] = (double)e4m3_value[row[k]] * scale;
        }
    }
    for (int i = 0; i < PKV_MLA656_DIM - PKV_MLA656_LATENT; i++)
        x[PKV_MLA656_LATENT + i] = (double)pkv_bf16_to_f32(load_le16(row + PKV_MLA656_ROPE + 2 * i));
}
